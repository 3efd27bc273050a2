//! The crate's one error type.

use crate::format::{AlgorithmSuite, CommitmentPolicy, FormatError};

/// Everything that can go wrong, by kind. Every `Display` says what to do next.
///
/// Authentication failures of any sort (a frame or header tag, the key commitment, the
/// signature) are all [`Error::DecryptionFailed`], on purpose: the difference would only help
/// an attacker.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The message is malformed, unsupported or over a limit.
    Format(FormatError),
    /// The message did not authenticate: it was altered, or the key or context is wrong.
    DecryptionFailed,
    /// The commitment policy does not allow this suite.
    SuiteNotAllowed {
        /// The suite of the message or of the request.
        suite: AlgorithmSuite,
        /// The policy in force.
        policy: CommitmentPolicy,
        /// Whether this was an encryption (else a decryption).
        encrypting: bool,
    },
    /// A context key uses the reserved `aws-crypto-` prefix.
    ReservedContextKey(String),
    /// The message's encryption context does not hold a pair the caller requires.
    ContextMismatch {
        /// The key whose value differs.
        key: String,
    },
    /// A signed message's context has no (or a bad) verification key, or an unsigned one has one.
    BadPublicKeyField,
    /// No keyring could unwrap any of the message's data keys: why, one error per attempt.
    NoUsableDataKey(Vec<Error>),
    /// A KMS call failed (after the SDK's retries).
    #[cfg(feature = "kms")]
    Kms(crate::keyring::KmsError),
    /// An `aws-kms` wrapped key in the message names its key in a form a KMS keyring refuses to
    /// use. The message is corrupted or forged; nothing was asked of KMS.
    #[cfg(feature = "kms")]
    BadKmsArn {
        /// The provider info as the message gives it, escaped with [`str::escape_debug`] (and
        /// shortened) because it is untrusted.
        arn: String,
        /// What is wrong with it.
        problem: crate::keyring::KmsArnProblem,
    },
    /// A keyring failed to produce or wrap a data key.
    Keyring(String),
    /// An argument or option is out of range (the message says which).
    InvalidArgument(String),
    /// A cryptographic primitive failed unexpectedly.
    Crypto(&'static str),
    /// Reading or writing failed.
    Io(std::io::Error),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Format(e) => e.fmt(f),
            Error::DecryptionFailed => f.write_str(
                "decryption failed: the message was altered or truncated, or the key or the \
                 encryption context does not match the one it was encrypted with",
            ),
            Error::SuiteNotAllowed {
                suite,
                policy,
                encrypting: true,
            } => write!(
                f,
                "suite {suite} may not be used to encrypt under commitment policy {policy:?}: \
                 choose a key-committing suite (0x0478 or 0x0578)"
            ),
            Error::SuiteNotAllowed {
                suite,
                policy,
                encrypting: false,
            } => write!(
                f,
                "the message uses suite {suite}, which commitment policy {policy:?} refuses: \
                 to read legacy messages, decrypt with RequireEncryptAllowDecrypt"
            ),
            Error::ReservedContextKey(k) => write!(
                f,
                "encryption context key {k:?} uses the reserved prefix \"aws-crypto-\": rename it"
            ),
            Error::ContextMismatch { key } => write!(
                f,
                "the message's encryption context does not match the expected pair for key {key:?}"
            ),
            Error::BadPublicKeyField => f.write_str(
                "the message's signature key field (aws-crypto-public-key) is missing, malformed \
                 or present on an unsigned suite: the message is corrupted",
            ),
            Error::NoUsableDataKey(attempts) if attempts.is_empty() => f.write_str(
                "no configured key matches any of the message's wrapped data keys: check which \
                 key encrypted it (`inspect`) and configure that key",
            ),
            Error::NoUsableDataKey(attempts) => {
                f.write_str("no configured key could unwrap the message's data key: ")?;
                for (i, a) in attempts.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    a.fmt(f)?;
                }
                Ok(())
            }
            #[cfg(feature = "kms")]
            Error::Kms(e) => e.fmt(f),
            #[cfg(feature = "kms")]
            Error::BadKmsArn { arn, problem } => write!(
                f,
                "a wrapped data key names \"{arn}\" as its KMS key, {}: the message is corrupted \
                 or forged",
                problem.describe()
            ),
            Error::Keyring(msg) => f.write_str(msg),
            Error::InvalidArgument(msg) => f.write_str(msg),
            Error::Crypto(msg) => write!(f, "cryptographic failure: {msg}"),
            Error::Io(e) => write!(f, "I/O error: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Format(e) => Some(e),
            Error::Io(e) => Some(e),
            #[cfg(feature = "kms")]
            Error::Kms(e) => Some(e),
            _ => None,
        }
    }
}

impl From<FormatError> for Error {
    fn from(e: FormatError) -> Self {
        Error::Format(e)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        // An adaptor error that travelled through `std::io` comes back as itself.
        if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
            let kind = e.kind();
            return match e.into_inner().map(|b| b.downcast::<Error>()) {
                Some(Ok(inner)) => *inner,
                _ => Error::Io(std::io::Error::from(kind)),
            };
        }
        Error::Io(e)
    }
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        use std::io::ErrorKind;
        let kind = match &e {
            Error::Io(inner) => return std::io::Error::new(inner.kind(), e),
            Error::Format(FormatError::Truncated) => ErrorKind::UnexpectedEof,
            Error::InvalidArgument(_) => ErrorKind::InvalidInput,
            Error::Keyring(_) | Error::NoUsableDataKey(_) | Error::Crypto(_) => ErrorKind::Other,
            #[cfg(feature = "kms")]
            Error::Kms(_) => ErrorKind::Other,
            _ => ErrorKind::InvalidData,
        };
        std::io::Error::new(kind, e)
    }
}

/// How much of an untrusted string an error message quotes.
#[cfg_attr(not(feature = "kms"), allow(dead_code))] // only the KMS keyring quotes one so far
const QUOTED_MAX: usize = 1024;

/// A string from a message (an ARN, a provider ID, a Region, a context key or value) made safe
/// to put in an error message: control characters, bidirectional overrides and the like escaped
/// (`\u{1b}`), so that no `Display` of this crate carries a raw terminal escape from a message;
/// cut after [`QUOTED_MAX`] characters. Non-UTF-8 bytes are shown as `\xNN`.
#[cfg_attr(not(feature = "kms"), allow(dead_code))]
pub(crate) fn untrusted(bytes: &[u8]) -> String {
    let (shown, cut) = match std::str::from_utf8(bytes) {
        Ok(s) => match s.char_indices().nth(QUOTED_MAX) {
            Some((at, _)) => (s[..at].escape_debug().to_string(), true),
            None => (s.escape_debug().to_string(), false),
        },
        Err(_) => {
            let n = bytes.len().min(QUOTED_MAX);
            (bytes[..n].escape_ascii().to_string(), n < bytes.len())
        }
    };
    if cut {
        format!("{shown}... ({} bytes in all)", bytes.len())
    } else {
        shown
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrusted_strings_lose_their_control_characters() {
        assert_eq!(untrusted(b"key/\x1b[2J\x07"), "key/\\u{1b}[2J\\u{7}");
        assert_eq!(untrusted("\u{202e}\u{9b}x".as_bytes()), "\\u{202e}\\u{9b}x");
        assert_eq!(untrusted(b"\xff\x1b"), "\\xff\\x1b");
        let long = "a".repeat(QUOTED_MAX + 10);
        let shown = untrusted(long.as_bytes());
        assert!(shown.starts_with(&long[..QUOTED_MAX]), "{shown}");
        assert!(shown.ends_with(&format!("... ({} bytes in all)", QUOTED_MAX + 10)));
    }
}
