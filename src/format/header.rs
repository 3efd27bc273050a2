//! The message header (v1 and v2): encode, incremental decode, and the checks of FORMAT.md §11.1.

use super::codec::{put_vec16, Reader};
use super::context::EncryptionContext;
use super::suite::AlgorithmSuite;
use super::FormatError;
use crate::error::{Error, Limit};

/// Tag length of every suite.
pub const TAG_LEN: usize = 16;
/// IV length of every suite.
pub const IV_LEN: usize = 12;
/// Length of the key commitment stored in a v2 header.
pub const COMMITMENT_LEN: usize = 32;

/// A data key wrapped by one keyring, as stored in the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptedDataKey {
    /// Who wrapped it: `aws-kms`, or a raw keyring's namespace.
    pub provider_id: String,
    /// Which key wrapped it: a KMS key ARN, or a raw keyring's name and parameters.
    pub provider_info: Vec<u8>,
    /// The wrapped data key.
    pub ciphertext: Vec<u8>,
}

impl EncryptedDataKey {
    /// Appends the wire encoding: provider ID, provider info and ciphertext, each with a `u16`
    /// length (also the volume header's key-slot encoding).
    pub(crate) fn encode(&self, out: &mut Vec<u8>) -> Result<(), FormatError> {
        for field in [
            self.provider_id.as_bytes(),
            &self.provider_info,
            &self.ciphertext,
        ] {
            if field.len() > u16::MAX as usize {
                return Err(FormatError::DataKeyFieldTooLarge);
            }
            put_vec16(out, field);
        }
        Ok(())
    }

    /// Reads one wrapped key in the wire encoding.
    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, FormatError> {
        let provider_id = std::str::from_utf8(r.vec16()?)
            .map_err(|_| FormatError::BadProviderId)?
            .to_owned();
        let provider_info = r.vec16()?.to_vec();
        let ciphertext = r.vec16()?.to_vec();
        Ok(EncryptedDataKey {
            provider_id,
            provider_info,
            ciphertext,
        })
    }
}

/// How the body is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentType {
    /// One block (legacy; read only).
    NonFramed,
    /// A sequence of frames, the only layout new messages use.
    Framed,
}

impl ContentType {
    fn byte(self) -> u8 {
        match self {
            ContentType::NonFramed => 1,
            ContentType::Framed => 2,
        }
    }
}

/// The fields of a header, without its authentication tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderBody {
    /// The algorithm suite; it fixes the header version.
    pub suite: AlgorithmSuite,
    /// 16 random bytes (v1) or 32 (v2).
    pub message_id: Vec<u8>,
    /// The encryption context stored in the message (required-only pairs are not stored).
    pub context: EncryptionContext,
    /// The wrapped data keys, in the order written.
    pub encrypted_data_keys: Vec<EncryptedDataKey>,
    /// Framed or not.
    pub content_type: ContentType,
    /// Plaintext bytes per regular frame; 0 for non-framed bodies.
    pub frame_length: u32,
    /// The key commitment (v2 only).
    pub commitment: Option<[u8; COMMITMENT_LEN]>,
}

/// Limits applied while a header is parsed, before anything is allocated for it.
#[derive(Debug, Clone, Copy)]
pub struct HeaderLimits {
    /// Most wrapped data keys accepted.
    pub max_encrypted_data_keys: u16,
    /// Most header bytes accepted (body and authentication).
    pub max_header_len: usize,
}

/// A parsed header: its fields, the exact bytes they were read from, and the authentication.
#[derive(Debug, Clone)]
pub struct Header {
    /// The fields.
    pub body: HeaderBody,
    /// The serialized fields, as read (authenticated as they are, never re-serialized).
    pub body_bytes: Vec<u8>,
    /// The header authentication IV (v1 stores it; v2 uses zeros).
    pub iv: [u8; IV_LEN],
    /// The header authentication tag.
    pub tag: [u8; TAG_LEN],
}

impl HeaderBody {
    /// The header version this body is written with.
    pub fn version(&self) -> u8 {
        self.suite.message_version()
    }

    /// Serializes the fields (everything the header tag covers).
    ///
    /// # Errors
    /// When the context or a wrapped key does not fit its `u16` length field, or there are
    /// more than 65,535 wrapped keys ([`Limit::WrappedDataKeys`]).
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        let v2 = self.version() == 2;
        out.push(self.version());
        if !v2 {
            out.push(0x80);
        }
        out.extend_from_slice(&self.suite.id().to_be_bytes());
        out.extend_from_slice(&self.message_id);
        let ec = self.context.serialize()?;
        put_vec16(out, &ec);
        if self.encrypted_data_keys.is_empty() {
            return Err(FormatError::NoDataKeys.into());
        }
        let count = u16::try_from(self.encrypted_data_keys.len()).map_err(|_| Error::Limit {
            what: Limit::WrappedDataKeys,
            max: u16::MAX.into(),
        })?;
        out.extend_from_slice(&count.to_be_bytes());
        for edk in &self.encrypted_data_keys {
            edk.encode(out)?;
        }
        out.push(self.content_type.byte());
        if !v2 {
            out.extend_from_slice(&[0, 0, 0, 0, IV_LEN as u8]);
        }
        out.extend_from_slice(&self.frame_length.to_be_bytes());
        if v2 {
            out.extend_from_slice(
                self.commitment
                    .as_ref()
                    .ok_or(FormatError::MissingCommitment)?,
            );
        }
        Ok(())
    }

    fn read(r: &mut Reader<'_>, limits: &HeaderLimits) -> Result<Self, Error> {
        let version = r.u8()?;
        if version != 1 && version != 2 {
            return Err(FormatError::UnsupportedVersion(version).into());
        }
        if version == 1 {
            let kind = r.u8()?;
            if kind != 0x80 {
                return Err(FormatError::BadMessageType(kind).into());
            }
        }
        let suite = AlgorithmSuite::from_id(r.u16()?)?;
        if suite.message_version() != version {
            return Err(FormatError::VersionSuiteMismatch { version, suite }.into());
        }
        let message_id = r.take(suite.message_id_len())?.to_vec();
        let context = EncryptionContext::parse(r.vec16()?)?;
        let count = r.u16()?;
        if count == 0 {
            return Err(FormatError::NoDataKeys.into());
        }
        if count > limits.max_encrypted_data_keys {
            return Err(Error::Limit {
                what: Limit::WrappedDataKeys,
                max: limits.max_encrypted_data_keys.into(),
            });
        }
        let mut encrypted_data_keys = Vec::with_capacity(count as usize);
        for _ in 0..count {
            encrypted_data_keys.push(EncryptedDataKey::read(r)?);
        }
        let content_type = match r.u8()? {
            1 => ContentType::NonFramed,
            2 => ContentType::Framed,
            other => return Err(FormatError::BadContentType(other).into()),
        };
        if version == 1 {
            if r.array::<4>()? != [0; 4] {
                return Err(FormatError::BadReserved.into());
            }
            let iv_len = r.u8()?;
            if iv_len as usize != IV_LEN {
                return Err(FormatError::BadIvLength(iv_len).into());
            }
        }
        let frame_length = r.u32()?;
        match (content_type, frame_length) {
            (ContentType::Framed, 0) | (ContentType::NonFramed, 1..) => {
                return Err(FormatError::BadFrameLength(frame_length).into())
            }
            _ => {}
        }
        let commitment = if version == 2 {
            Some(r.array::<COMMITMENT_LEN>()?)
        } else {
            None
        };
        Ok(HeaderBody {
            suite,
            message_id,
            context,
            encrypted_data_keys,
            content_type,
            frame_length,
            commitment,
        })
    }
}

/// How far a header parse got.
#[derive(Debug)]
pub(crate) enum HeaderStep {
    /// The header and the number of bytes it took.
    Done(Header, usize),
    /// The buffer must hold at least this many bytes before parsing again can get further.
    NeedMore(usize),
}

impl Header {
    /// Parses a header from the start of `buf`.
    ///
    /// Returns `Ok(None)` when `buf` holds only part of a header (read more and call again),
    /// or the header and the number of bytes it took.
    ///
    /// # Errors
    /// [`Error::Format`] for any malformed field; [`Error::Limit`] for a header larger than
    /// [`HeaderLimits::max_header_len`] ([`Limit::HeaderLength`]) or with more wrapped keys
    /// than [`HeaderLimits::max_encrypted_data_keys`] ([`Limit::WrappedDataKeys`]).
    pub fn parse(buf: &[u8], limits: &HeaderLimits) -> Result<Option<(Header, usize)>, Error> {
        Ok(match Self::parse_step(buf, limits)? {
            HeaderStep::Done(header, len) => Some((header, len)),
            HeaderStep::NeedMore(_) => None,
        })
    }

    /// As [`parse`](Self::parse), and when the header is incomplete, how many bytes the next
    /// field needs: a reader that waits for them parses once per field, not once per read.
    pub(crate) fn parse_step(buf: &[u8], limits: &HeaderLimits) -> Result<HeaderStep, Error> {
        let too_large = Error::Limit {
            what: Limit::HeaderLength,
            max: limits.max_header_len as u64,
        };
        let mut r = Reader::new(buf);
        match Self::read(&mut r, buf, limits) {
            Ok(_) if r.position() > limits.max_header_len => Err(too_large),
            Ok(header) => Ok(HeaderStep::Done(header, r.position())),
            Err(Error::Format(FormatError::Truncated))
                if buf.len() >= limits.max_header_len || r.wanted() > limits.max_header_len =>
            {
                Err(too_large)
            }
            Err(Error::Format(FormatError::Truncated)) => Ok(HeaderStep::NeedMore(r.wanted())),
            Err(e) => Err(e),
        }
    }

    fn read(r: &mut Reader<'_>, buf: &[u8], limits: &HeaderLimits) -> Result<Header, Error> {
        let body = HeaderBody::read(r, limits)?;
        let body_bytes = buf[..r.position()].to_vec();
        let iv = if body.version() == 1 {
            r.array()?
        } else {
            [0; IV_LEN]
        };
        let tag = r.array()?;
        Ok(Header {
            body,
            body_bytes,
            iv,
            tag,
        })
    }

    /// The serialized header: body, then (v1) the IV, then the tag.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.body_bytes.clone();
        if self.body.version() == 1 {
            out.extend_from_slice(&self.iv);
        }
        out.extend_from_slice(&self.tag);
        out
    }
}
