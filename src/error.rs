//! The crate's one error type, and its coarse [`ErrorKind`].

use crate::format::{AlgorithmSuite, CommitmentPolicy, FormatError};

/// Everything that can go wrong, by kind. Every `Display` says what to do next, in terms of
/// this library's API (a setter to call, a key to configure); a program that wraps it adds its
/// own hints (command-line flags, say) from [`Error::kind`] and the variant.
///
/// Authentication failures of any sort (a frame or header tag, the key commitment, the
/// signature) are all [`Error::DecryptionFailed`], on purpose: the difference would only help
/// an attacker.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The message is malformed or unsupported.
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
    /// A named limit was reached: raise it with the setter [`Limit`] names if the input is
    /// trusted, or refuse the input.
    Limit {
        /// Which limit.
        what: Limit,
        /// The limit in force.
        max: u64,
    },
    /// The API was used in a way it does not allow: an option out of range, a contradictory
    /// configuration, a writer used after an error, less or more plaintext than declared. The
    /// message says which. Not caused by the bytes of a message being read.
    Misuse(String),
    /// A cryptographic primitive failed unexpectedly.
    Crypto(&'static str),
    /// Reading or writing failed.
    Io(std::io::Error),
    /// An encrypted volume refused a request or failed a check (see [`VolumeError`]).
    #[cfg(feature = "volume")]
    Volume(VolumeError),
}

/// What went wrong with an encrypted volume ([`crate::volume::Volume`]).
#[cfg(feature = "volume")]
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum VolumeError {
    /// A block did not authenticate (altered, moved, rolled to another generation, or its
    /// metadata entry is missing): its read fails, never with wrong bytes or zeros.
    BadBlock {
        /// The block's index.
        index: u64,
    },
    /// Another process (or another open in this one) holds the image.
    Locked,
    /// The image is not a volume of this format, or its header is malformed.
    Malformed(String),
    /// A key unwrapped the volume key but neither header copy authenticates under it.
    HeaderInvalid,
    /// The write generation has sealed as many blocks as its AEAD's bound allows.
    SealBudget {
        /// The generation that is used up.
        gen: u32,
    },
    /// A request reaches past the end of the volume.
    OutOfRange {
        /// The request's offset.
        offset: u64,
        /// The request's length.
        len: u64,
        /// The volume's size.
        size: u64,
    },
    /// An earlier write or flush failed, so what is durable is unknown until recovery runs.
    Failed,
    /// Removing these key slots would leave none.
    LastKeySlot,
    /// No key slot matches the key to remove.
    NoSuchKeySlot,
    /// A rekey is in progress, and this operation needs it finished.
    RekeyInProgress,
}

#[cfg(feature = "volume")]
impl std::fmt::Display for VolumeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VolumeError::BadBlock { index } => write!(
                f,
                "volume block {index} failed to authenticate (altered, moved, rolled back across \
                 a rekey, or its metadata is missing): restore the volume from a snapshot; \
                 `volume check` lists every bad block"
            ),
            VolumeError::Locked => f.write_str(
                "the volume image is locked by another process or open: is `volume serve` \
                 running? Stop it, or use that server",
            ),
            VolumeError::Malformed(why) => write!(
                f,
                "not a kms-envelope volume, or its header is corrupted ({why})"
            ),
            VolumeError::HeaderInvalid => f.write_str(
                "the volume header does not authenticate under the unwrapped volume key: the \
                 header was altered; restore the volume from a snapshot",
            ),
            VolumeError::SealBudget { gen } => write!(
                f,
                "key generation {gen} of this volume has sealed as many blocks as its AEAD \
                 allows: run `volume rekey` (Volume::rekey) before writing more"
            ),
            VolumeError::OutOfRange { offset, len, size } => write!(
                f,
                "{len} bytes at offset {offset} reach past the end of the {size}-byte volume"
            ),
            VolumeError::Failed => f.write_str(
                "an earlier write or flush of this volume failed: close and reopen it (recovery \
                 runs at open) before using it again",
            ),
            VolumeError::LastKeySlot => f.write_str(
                "that would remove the volume's last key slot and lock every key out: add \
                 another key first (add-key)",
            ),
            VolumeError::NoSuchKeySlot => {
                f.write_str("no key slot of the volume matches the key given to remove")
            }
            VolumeError::RekeyInProgress => f.write_str(
                "a rekey of this volume is in progress: finish it first (run `volume rekey` \
                 again; it resumes)",
            ),
        }
    }
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
                 to read legacy messages, allow it with \
                 Decryptor::dangerous_commitment_policy(RequireEncryptAllowDecrypt)"
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
                 key encrypted it (the header names each wrapped key's provider and key) and \
                 configure that key",
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
            Error::Limit { what, max } => what.describe(*max, f),
            Error::Misuse(msg) => f.write_str(msg),
            Error::Crypto(msg) => write!(f, "cryptographic failure: {msg}"),
            Error::Io(e) => write!(f, "I/O error: {e}"),
            #[cfg(feature = "volume")]
            Error::Volume(e) => e.fmt(f),
        }
    }
}

/// The named limits that [`Error::Limit`] reports, each with the setter that raises it.
///
/// Limits that no valid message can exceed (2^32 − 1 frames, a 64 GiB non-framed body) are
/// the format's, not settings: a message read over them is [`Error::Format`]; a message that
/// would be written over them is [`Limit::FrameCount`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Limit {
    /// Wrapped data keys in one message: `Decryptor::max_encrypted_data_keys` and
    /// `Encryptor::max_encrypted_data_keys` (default 8), or the format's 65,535.
    WrappedDataKeys,
    /// Header bytes read before the header is complete: `Decryptor::max_header_len`.
    HeaderLength,
    /// The frame length a message declares: `Decryptor::max_frame_length`.
    FrameLength,
    /// Frames in one message being written (2^32 − 1 with the final one): choose a larger
    /// `Encryptor::frame_length`.
    FrameCount,
    /// Plaintext of a signed message held back until its signature verifies:
    /// `Decryptor::max_buffered_len`.
    BufferedPlaintext,
    /// The body of a non-framed message, which is held until its tag verifies:
    /// `Decryptor::max_buffered_len`.
    NonFramedBodyLength,
}

impl Limit {
    fn describe(self, max: u64, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Limit::WrappedDataKeys => write!(
                f,
                "more than {max} wrapped data keys: if this is expected, raise the limit with \
                 Decryptor::max_encrypted_data_keys (or Encryptor::max_encrypted_data_keys)"
            ),
            Limit::HeaderLength => write!(
                f,
                "the header is larger than {max} bytes: if you trust this message, raise the \
                 limit with Decryptor::max_header_len"
            ),
            Limit::FrameLength => write!(
                f,
                "a frame length above the limit of {max} bytes: if you trust this message, \
                 raise the limit with Decryptor::max_frame_length"
            ),
            Limit::FrameCount => write!(
                f,
                "the message would need more than {max} frames: use a larger frame length \
                 (Encryptor::frame_length)"
            ),
            Limit::BufferedPlaintext => write!(
                f,
                "this signed message is larger than {max} bytes, the most that is held back \
                 until its signature verifies: raise Decryptor::max_buffered_len, or opt in to \
                 Decryptor::dangerous_release_unverified_signed_frames"
            ),
            Limit::NonFramedBodyLength => write!(
                f,
                "the message's single (non-framed) body is larger than {max} bytes, the most \
                 that is held until its tag verifies: if you trust this message, raise \
                 Decryptor::max_buffered_len"
            ),
        }
    }
}

/// What sort of failure an [`Error`] is, for a caller that reacts by kind (an exit code, a
/// retry, an alert) rather than by variant. New kinds may be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The message is malformed, unsupported, or names its KMS key in a refused form.
    Format,
    /// The message did not authenticate ([`Error::DecryptionFailed`]).
    Authentication,
    /// A suite or encryption-context rule refused the request or the message.
    Policy,
    /// No configured key could unwrap a data key, and KMS was not at fault.
    NoKey,
    /// A KMS call failed, or no key could be used because one did.
    Kms,
    /// A keyring failed to produce or wrap a data key.
    Keyring,
    /// A named limit ([`Error::Limit`]).
    Limit,
    /// The API was misused ([`Error::Misuse`]).
    Misuse,
    /// Reading or writing failed.
    Io,
    /// A cryptographic primitive failed unexpectedly.
    Crypto,
}

impl Error {
    /// The kind of failure.
    ///
    /// [`Error::NoUsableDataKey`] is [`ErrorKind::Kms`] when at least one of its attempts is a
    /// KMS call that failed for another reason than KMS refusing that wrapped key
    /// ([`KmsErrorKind::InvalidCiphertext`](crate::keyring::KmsErrorKind)): access denied, a
    /// disabled key, throttling, the network, credentials. Then fixing access or retrying may
    /// decrypt the message. Otherwise (no key matched, or each key that matched did not open
    /// it) it is [`ErrorKind::NoKey`]. The rule looks into nested multi-keyring attempts too.
    ///
    /// In discovery mode the message names the KMS key, so its author chooses between these two:
    /// a key that does not exist or that the caller may not use gives [`ErrorKind::Kms`]. Do not
    /// retry a message without bound on that kind alone.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Format(_) | Error::BadPublicKeyField => ErrorKind::Format,
            #[cfg(feature = "kms")]
            Error::BadKmsArn { .. } => ErrorKind::Format,
            Error::DecryptionFailed => ErrorKind::Authentication,
            Error::SuiteNotAllowed { .. } | Error::ContextMismatch { .. } => ErrorKind::Policy,
            // The caller named the key: an argument it must change, like any other misuse.
            Error::ReservedContextKey(_) => ErrorKind::Misuse,
            Error::NoUsableDataKey(attempts) => {
                if attempts.iter().any(Error::is_kms_outage) {
                    ErrorKind::Kms
                } else {
                    ErrorKind::NoKey
                }
            }
            // KMS answering that this key does not open this wrapped key is a verdict on the key,
            // not a failure of KMS: the same kind as a raw key that does not match.
            #[cfg(feature = "kms")]
            Error::Kms(e) if e.kind == crate::keyring::KmsErrorKind::InvalidCiphertext => {
                ErrorKind::NoKey
            }
            #[cfg(feature = "kms")]
            Error::Kms(_) => ErrorKind::Kms,
            Error::Keyring(_) => ErrorKind::Keyring,
            Error::Limit { .. } => ErrorKind::Limit,
            Error::Misuse(_) => ErrorKind::Misuse,
            Error::Crypto(_) => ErrorKind::Crypto,
            Error::Io(_) => ErrorKind::Io,
            #[cfg(feature = "volume")]
            Error::Volume(e) => match e {
                VolumeError::BadBlock { .. } | VolumeError::HeaderInvalid => {
                    ErrorKind::Authentication
                }
                VolumeError::Malformed(_) => ErrorKind::Format,
                VolumeError::SealBudget { .. } => ErrorKind::Limit,
                VolumeError::Locked | VolumeError::Failed => ErrorKind::Io,
                VolumeError::OutOfRange { .. }
                | VolumeError::LastKeySlot
                | VolumeError::NoSuchKeySlot
                | VolumeError::RekeyInProgress => ErrorKind::Misuse,
            },
        }
    }

    /// Whether a decryption attempt failed because of KMS itself, not the wrapped key.
    fn is_kms_outage(&self) -> bool {
        match self {
            #[cfg(feature = "kms")]
            Error::Kms(_) => self.kind() == ErrorKind::Kms,
            Error::NoUsableDataKey(_) => self.kind() == ErrorKind::Kms,
            _ => false,
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
            Error::Misuse(_) => ErrorKind::InvalidInput,
            #[cfg(feature = "volume")]
            Error::Volume(v) => match v {
                VolumeError::BadBlock { .. }
                | VolumeError::HeaderInvalid
                | VolumeError::Malformed(_) => ErrorKind::InvalidData,
                VolumeError::OutOfRange { .. } => ErrorKind::InvalidInput,
                VolumeError::Locked => ErrorKind::WouldBlock,
                VolumeError::SealBudget { .. } => ErrorKind::QuotaExceeded,
                _ => ErrorKind::Other,
            },
            // A limit is met by the data (a header, frame or message too large for the
            // settings), as tampering is: the caller may raise the limit if it trusts the data.
            Error::Limit { .. } => ErrorKind::InvalidData,
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
    use std::io::{Read, Write};
    use std::sync::Arc;

    use super::*;
    use crate::{Decryptor, Encryptor, Keyring, MultiKeyring, RawAesKeyring};

    fn aes(name: &str) -> Arc<dyn Keyring> {
        Arc::new(RawAesKeyring::new("ns", name, &[1; 32]).unwrap())
    }

    /// Checks that `err` is the limit `what` at `max`, of kind `Limit`, naming `setter`.
    fn assert_limit(err: &Error, what: Limit, max: u64, setter: &str) {
        assert!(
            matches!(err, Error::Limit { what: w, max: m } if *w == what && *m == max),
            "{err:?}"
        );
        assert_eq!(err.kind(), ErrorKind::Limit);
        assert!(err.to_string().contains(setter), "{err}");
        assert!(!err.to_string().contains("--"), "no CLI flag: {err}");
    }

    #[test]
    fn limits_met_by_a_message_are_limit_errors_with_their_max() {
        let k = aes("k");
        let msg = Encryptor::new(&*k)
            .frame_length(8192)
            .encrypt(&[0; 100])
            .unwrap();
        let err = Decryptor::new(&*k).max_header_len(50).decrypt(&msg);
        let err = err.unwrap_err();
        assert_limit(&err, Limit::HeaderLength, 50, "Decryptor::max_header_len");
        let limits = crate::HeaderLimits {
            max_encrypted_data_keys: 10,
            max_header_len: 60,
        };
        let err = crate::format::Header::parse(&msg, &limits).unwrap_err();
        assert_limit(&err, Limit::HeaderLength, 60, "Decryptor::max_header_len");

        let err = Decryptor::new(&*k).max_frame_length(4096).decrypt(&msg);
        let err = err.unwrap_err();
        assert_limit(
            &err,
            Limit::FrameLength,
            4096,
            "Decryptor::max_frame_length",
        );

        let multi = MultiKeyring::new(Some(aes("a")), vec![aes("b"), aes("c")]).unwrap();
        let three = Encryptor::new(&multi).encrypt(b"x").unwrap();
        let err = Decryptor::new(&multi)
            .max_encrypted_data_keys(2)
            .decrypt(&three);
        let err = err.unwrap_err();
        let setter = "Decryptor::max_encrypted_data_keys";
        assert_limit(&err, Limit::WrappedDataKeys, 2, setter);
        let err = Encryptor::new(&multi)
            .max_encrypted_data_keys(2)
            .encrypt(b"x");
        let err = err.unwrap_err();
        assert_limit(
            &err,
            Limit::WrappedDataKeys,
            2,
            "Encryptor::max_encrypted_data_keys",
        );

        let signed = Encryptor::new(&*k)
            .suite(AlgorithmSuite::Aes256GcmHkdfSha512CommitKeyEcdsaP384)
            .frame_length(64)
            .encrypt(&[0; 1000])
            .unwrap();
        let reader = Decryptor::new(&*k)
            .max_buffered_len(256)
            .reader(&signed[..]);
        let io = reader.unwrap().read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(io.kind(), std::io::ErrorKind::InvalidData, "{io}");
        let err = Error::from(io);
        assert_limit(
            &err,
            Limit::BufferedPlaintext,
            256,
            "Decryptor::max_buffered_len",
        );
    }

    #[test]
    fn api_misuse_is_misuse_and_invalid_input() {
        let k = aes("k");
        let misuse = |err: Error| {
            assert!(matches!(err, Error::Misuse(_)), "{err:?}");
            assert_eq!(err.kind(), ErrorKind::Misuse);
            let io = std::io::Error::from(err);
            assert_eq!(io.kind(), std::io::ErrorKind::InvalidInput, "{io}");
        };
        misuse(
            Encryptor::new(&*k)
                .frame_length(0)
                .encrypt(b"x")
                .unwrap_err(),
        );
        let declared = Encryptor::new(&*k).plaintext_len(10);
        let mut short = declared.writer(Vec::new()).unwrap();
        short.write_all(b"short").unwrap();
        misuse(short.finish().unwrap_err());

        // More than declared fails the write; the writer is then unusable, and says so.
        let mut writer = declared.writer(Vec::new()).unwrap();
        let first = writer.write(&[0; 11]).unwrap_err();
        assert_eq!(first.kind(), std::io::ErrorKind::InvalidInput, "{first}");
        misuse(Error::from(first));
        let again = writer.write(b"x").unwrap_err();
        misuse(Error::from(again));
        misuse(writer.finish().unwrap_err());
    }

    #[test]
    fn io_kinds_of_message_errors() {
        let k = aes("k");
        let msg = Encryptor::new(&*k).encrypt(&[3; 5000]).unwrap();
        let read = |m: &[u8]| {
            let mut out = Vec::new();
            let r = Decryptor::new(&*k).reader(m).and_then(|mut r| {
                r.read_to_end(&mut out)?;
                Ok(())
            });
            r.unwrap_err()
        };
        let truncated = read(&msg[..msg.len() - 10]);
        assert_eq!(truncated.kind(), ErrorKind::Format, "{truncated:?}");
        let io = std::io::Error::from(truncated);
        assert_eq!(io.kind(), std::io::ErrorKind::UnexpectedEof);
        let mut tampered = msg.clone();
        let at = tampered.len() - 20;
        tampered[at] ^= 1;
        let tampered = read(&tampered);
        assert_eq!(tampered.kind(), ErrorKind::Authentication, "{tampered:?}");
        let io = std::io::Error::from(tampered);
        assert_eq!(io.kind(), std::io::ErrorKind::InvalidData);
        let limit = Error::Limit {
            what: Limit::FrameLength,
            max: 1,
        };
        let io = std::io::Error::from(limit);
        assert_eq!(io.kind(), std::io::ErrorKind::InvalidData);
    }

    #[test]
    fn policy_and_no_key_kinds() {
        let k = aes("k");
        let legacy = Encryptor::new(&*k)
            .suite(AlgorithmSuite::Aes256GcmIv12Tag16HkdfSha256)
            .dangerous_commitment_policy(CommitmentPolicy::ForbidEncryptAllowDecrypt)
            .encrypt(b"x")
            .unwrap();
        let err = Decryptor::new(&*k).decrypt(&legacy).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Policy);
        assert!(
            err.to_string()
                .contains("Decryptor::dangerous_commitment_policy"),
            "{err}"
        );
        let msg = Encryptor::new(&*k).encrypt(b"x").unwrap();
        let err = Decryptor::new(&*aes("other")).decrypt(&msg).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NoKey, "{err:?}");
        assert_eq!(Error::NoUsableDataKey(Vec::new()).kind(), ErrorKind::NoKey);
    }

    #[cfg(feature = "kms")]
    #[test]
    fn no_usable_data_key_is_kms_when_kms_failed_not_when_it_refused_the_key() {
        use crate::keyring::{KmsError, KmsErrorKind};
        let kms = |kind| {
            Error::Kms(KmsError {
                operation: "Decrypt",
                key: "k".into(),
                kind,
                code: None,
                message: String::new(),
            })
        };
        let refused = kms(KmsErrorKind::InvalidCiphertext);
        let no_key = Error::NoUsableDataKey(vec![refused, Error::Keyring("outside".into())]);
        assert_eq!(no_key.kind(), ErrorKind::NoKey);
        for outage in [
            KmsErrorKind::Network,
            KmsErrorKind::AccessDenied,
            KmsErrorKind::Throttled,
        ] {
            let attempts = vec![Error::DecryptionFailed, kms(outage)];
            assert_eq!(Error::NoUsableDataKey(attempts).kind(), ErrorKind::Kms);
        }
        // A multi-keyring nests its children's attempts.
        let nested = Error::NoUsableDataKey(vec![kms(KmsErrorKind::Timeout)]);
        let outer = Error::NoUsableDataKey(vec![Error::DecryptionFailed, nested]);
        assert_eq!(outer.kind(), ErrorKind::Kms);
        assert_eq!(
            kms(KmsErrorKind::InvalidCiphertext).kind(),
            ErrorKind::NoKey
        );
        assert_eq!(kms(KmsErrorKind::AccessDenied).kind(), ErrorKind::Kms);
    }

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
