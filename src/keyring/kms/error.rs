//! What a failed KMS call means: [`KmsError`], [`KmsErrorKind`], and the mapping from the
//! SDK's errors to them.

use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};

use crate::error::untrusted;

/// What went wrong in a KMS call, in terms a user can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KmsErrorKind {
    /// The key policy or IAM policy does not allow the call.
    AccessDenied,
    /// The key is disabled.
    Disabled,
    /// The key is pending deletion, pending import, or otherwise unusable.
    InvalidState,
    /// No such key (or alias) in that account and Region.
    NotFound,
    /// KMS throttled the call, and the SDK's retries did not get through.
    Throttled,
    /// KMS could not decrypt the wrapped key: wrong key, other context, or corrupted.
    InvalidCiphertext,
    /// The call timed out.
    Timeout,
    /// KMS could not be reached.
    Network,
    /// No usable AWS credentials.
    Credentials,
    /// KMS answered with a key other than the one asked for, or an unusable response.
    BadResponse,
    /// Anything else KMS or the SDK reported.
    Other,
}

/// A failed KMS call: which operation, which key, what kind of failure, and KMS's own words.
///
/// The key may come from a message (discovery mode) and KMS's words may echo it, so both are
/// escaped with [`str::escape_debug`] when the error is made: no control character of a
/// message reaches a terminal through this error's `Display`.
#[derive(Debug, Clone)]
pub struct KmsError {
    /// The KMS operation (`GenerateDataKey`, `Encrypt`, `Decrypt`, `DescribeKey`, …).
    pub operation: &'static str,
    /// The key as it was named (escaped).
    pub key: String,
    /// The kind of failure.
    pub kind: KmsErrorKind,
    /// KMS's error code, when it answered with one (escaped).
    pub code: Option<String>,
    /// KMS's or the SDK's message (escaped).
    pub message: String,
}

impl KmsError {
    pub(crate) fn from_sdk<E, R>(operation: &'static str, key: &str, err: SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        let code = err.code().map(str::to_owned);
        let mut message = err.message().map(str::to_owned).unwrap_or_default();
        if message.is_empty() {
            message = error_chain(&err);
        }
        let kind = match (&err, code.as_deref()) {
            (SdkError::TimeoutError(_), _) => KmsErrorKind::Timeout,
            (_, Some("AccessDeniedException")) => KmsErrorKind::AccessDenied,
            (_, Some("DisabledException")) => KmsErrorKind::Disabled,
            (_, Some("KMSInvalidStateException")) => KmsErrorKind::InvalidState,
            (_, Some("NotFoundException")) => KmsErrorKind::NotFound,
            (_, Some("ThrottlingException" | "LimitExceededException")) => KmsErrorKind::Throttled,
            (_, Some("InvalidCiphertextException" | "IncorrectKeyException")) => {
                KmsErrorKind::InvalidCiphertext
            }
            (_, Some("UnrecognizedClientException" | "InvalidSignatureException"))
            | (_, Some("ExpiredTokenException")) => KmsErrorKind::Credentials,
            _ if message.to_lowercase().contains("credentials") => KmsErrorKind::Credentials,
            (SdkError::DispatchFailure(d), _) if d.is_timeout() => KmsErrorKind::Timeout,
            (SdkError::DispatchFailure(_), _) => KmsErrorKind::Network,
            _ => KmsErrorKind::Other,
        };
        KmsError {
            operation,
            key: untrusted(key.as_bytes()),
            kind,
            code: code.map(|c| untrusted(c.as_bytes())),
            message: untrusted(message.as_bytes()),
        }
    }

    pub(super) fn bad_response(operation: &'static str, key: &str, message: String) -> Self {
        KmsError {
            operation,
            key: untrusted(key.as_bytes()),
            kind: KmsErrorKind::BadResponse,
            code: None,
            message: untrusted(message.as_bytes()),
        }
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

impl std::fmt::Display for KmsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let KmsError {
            operation: op, key, ..
        } = self;
        let hint = match self.kind {
            KmsErrorKind::AccessDenied => format!(
                "access denied: the key policy or the caller's IAM policy must allow kms:{op} on this key"
            ),
            KmsErrorKind::Disabled => {
                "the key is disabled: enable it (KMS EnableKey, or `admin::KeyAdmin::enable_key`)"
                    .to_owned()
            }
            KmsErrorKind::InvalidState => "the key is pending deletion or otherwise unusable: \
                 cancel the deletion (KMS CancelKeyDeletion, or \
                 `admin::KeyAdmin::cancel_key_deletion`) and enable it"
                .to_owned(),
            KmsErrorKind::NotFound => {
                "no such key: check the key ID or alias, the account and the Region".to_owned()
            }
            KmsErrorKind::Throttled => "KMS throttled the request and the retries ran out: \
                 retry later, raise the retry attempts, or cache data keys"
                .to_owned(),
            KmsErrorKind::InvalidCiphertext => "KMS could not decrypt the wrapped data key: it was \
                 wrapped under another key or another encryption context, or it is corrupted"
                .to_owned(),
            KmsErrorKind::Timeout => {
                "the request timed out: check the endpoint and network, or raise the timeout".to_owned()
            }
            KmsErrorKind::Network => {
                "KMS could not be reached: check the endpoint URL, Region and network".to_owned()
            }
            KmsErrorKind::Credentials => "no usable AWS credentials: set AWS_PROFILE or \
                 AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or run on a machine with a role"
                .to_owned(),
            KmsErrorKind::BadResponse => "KMS returned an unusable response".to_owned(),
            KmsErrorKind::Other => "KMS reported an error".to_owned(),
        };
        write!(f, "KMS {op} with key {key}: {hint}")?;
        if !self.message.is_empty() {
            write!(f, " ({}", self.message)?;
            if let Some(code) = &self.code {
                write!(f, "; {code}")?;
            }
            f.write_str(")")?;
        }
        Ok(())
    }
}

impl std::error::Error for KmsError {}
