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

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
