//! The wire format: suites, encryption context, header, body blocks. No I/O, no keys.
//!
//! Everything here follows the AWS Encryption SDK message format; see `docs/FORMAT.md`.

mod body;
pub(crate) mod codec;
mod context;
pub(crate) mod frame;
mod header;
mod suite;

// The body's wire details (frame prefixes, IVs, AAD) are the crate's own: users read and write
// frames through `stream`, never by hand.
#[cfg(test)]
pub(crate) use body::framed_body_len;
pub(crate) use body::{
    frame_iv, BlockKind, BodyAad, FINAL_FRAME_PREFIX, MAX_FRAMES, REGULAR_FRAME_PREFIX,
};
pub(crate) use context::PUBLIC_KEY_FIELD;
pub use context::{EncryptionContext, RESERVED_PREFIX};
pub use header::{ContentType, EncryptedDataKey, Header, HeaderBody, HeaderLimits};
pub(crate) use header::{HeaderStep, COMMITMENT_LEN, IV_LEN, TAG_LEN};
pub use suite::{AlgorithmSuite, CommitmentPolicy, Kdf, SignatureAlgorithm};

/// The body's wire details are not part of the API: each of these must fail to compile.
///
/// ```compile_fail,E0603
/// let _ = kms_envelope::format::frame_iv(1);
/// ```
/// ```compile_fail,E0603
/// let _ = kms_envelope::format::FINAL_FRAME_PREFIX;
/// ```
/// ```compile_fail,E0603
/// let _ = kms_envelope::format::MAX_FRAMES;
/// ```
/// ```compile_fail,E0603
/// let _ = kms_envelope::format::BlockKind::Frame;
/// ```
/// ```compile_fail,E0603
/// use kms_envelope::format::BodyAad;
/// ```
/// What a user needs stays: the header, parsed with the default limits.
/// ```
/// use kms_envelope::format::{Header, HeaderLimits};
/// use kms_envelope::{Encryptor, RawAesKeyring};
/// let keyring = RawAesKeyring::new("ns", "key", &[7u8; 32])?;
/// let message = Encryptor::new(&keyring).encrypt(b"hello")?;
/// let (header, _len) = Header::parse(&message, &HeaderLimits::default())?.expect("whole header");
/// assert_eq!(header.body.encrypted_data_keys.len(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[cfg(doctest)]
pub struct InternalsArePrivate;

/// A malformed or unsupported message, found while parsing. Says what is wrong with the bytes.
/// A message over a configurable limit is [`Error::Limit`](crate::Error::Limit) instead.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FormatError {
    /// The input ended in the middle of a structure.
    Truncated,
    /// The header version byte is neither 1 nor 2.
    UnsupportedVersion(u8),
    /// A v1 header whose type byte is not 0x80.
    BadMessageType(u8),
    /// The suite ID is not an ESDK suite.
    UnknownSuite(u16),
    /// The header version does not match the suite (committing suites use v2 only).
    VersionSuiteMismatch {
        /// The version byte read.
        version: u8,
        /// The suite read.
        suite: AlgorithmSuite,
    },
    /// The encryption context field is malformed.
    BadContext(&'static str),
    /// The encryption context does not fit in 65,535 bytes.
    ContextTooLarge,
    /// The header names no wrapped data key.
    NoDataKeys,
    /// A wrapped key's provider, info or ciphertext does not fit in 65,535 bytes.
    DataKeyFieldTooLarge,
    /// A provider ID that is not UTF-8.
    BadProviderId,
    /// A content type other than 1 (non-framed) or 2 (framed).
    BadContentType(u8),
    /// The v1 reserved field is not zero.
    BadReserved,
    /// The v1 IV length is not 12.
    BadIvLength(u8),
    /// A frame length of 0 for a framed body, or not 0 for a non-framed one.
    BadFrameLength(u32),
    /// A v2 header without its key commitment.
    MissingCommitment,
    /// A body block is malformed (sequence number, IV or length).
    BadFrame(&'static str),
    /// Bytes follow the end of the message.
    TrailingBytes,
    /// The footer is malformed.
    BadFooter,
}

impl std::fmt::Display for FormatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use FormatError::*;
        match self {
            Truncated => write!(f, "the message is truncated: it ends before its final frame; check that the whole file was copied"),
            UnsupportedVersion(v) => write!(f, "unsupported message version {v}: this is not an AWS Encryption SDK message, or it is corrupted"),
            BadMessageType(t) => write!(f, "unsupported message type 0x{t:02X}: this is not an AWS Encryption SDK message, or it is corrupted"),
            UnknownSuite(id) => write!(f, "unknown algorithm suite 0x{id:04X}: the message is corrupted or not an AWS Encryption SDK message"),
            VersionSuiteMismatch { version, suite } => write!(f, "header version {version} cannot carry suite {suite}: the message is corrupted"),
            BadContext(why) => write!(f, "malformed encryption context in the header ({why})"),
            ContextTooLarge => write!(f, "the encryption context does not fit in 65,535 bytes: use fewer or shorter pairs"),
            NoDataKeys => write!(f, "the header holds no wrapped data key"),
            DataKeyFieldTooLarge => write!(f, "a wrapped data key field does not fit in 65,535 bytes"),
            BadProviderId => write!(f, "a wrapped data key's provider ID is not valid UTF-8"),
            BadContentType(t) => write!(f, "unknown content type {t}: the message is corrupted"),
            BadReserved => write!(f, "the v1 header's reserved field is not zero: the message is corrupted"),
            BadIvLength(n) => write!(f, "the v1 header's IV length is {n}, not 12: the message is corrupted"),
            BadFrameLength(n) => write!(f, "frame length {n} does not match the content type: the message is corrupted"),
            MissingCommitment => write!(f, "a v2 header needs its key commitment"),
            BadFrame(why) => write!(f, "malformed body ({why}): the message is corrupted"),
            TrailingBytes => write!(f, "bytes follow the end of the message: the input holds more than one message or is corrupted"),
            BadFooter => write!(f, "malformed signature footer: the message is corrupted"),
        }
    }
}

impl std::error::Error for FormatError {}
