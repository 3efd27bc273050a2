//! Where a message's parts lie, found by walking its frame headers with seeks: for `inspect`
//! and sizing, without any key. Nothing here is authenticated.

use std::io::{Read, Seek, SeekFrom};

use super::decoder::read_header;
use crate::format::{
    ContentType, FormatError, HeaderBody, HeaderLimits, FINAL_FRAME_MARKER, FINAL_FRAME_PREFIX,
    MAX_NON_FRAMED_LEN, NON_FRAMED_PREFIX, REGULAR_FRAME_PREFIX, TAG_LEN,
};
use crate::Error;

/// The shape of a message, read without a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageLayout {
    /// The header's fields.
    pub header: HeaderBody,
    /// Bytes of header (fields and authentication).
    pub header_len: u64,
    /// Body blocks: frames, including the final one (1 for a non-framed body).
    pub frames: u64,
    /// Plaintext bytes the message claims to hold.
    pub plaintext_len: u64,
    /// Bytes of footer (0 for unsigned suites).
    pub footer_len: u64,
}

fn read_exact_at<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<(), Error> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Error::Format(FormatError::Truncated)
        } else {
            Error::Io(e)
        }
    })
}

/// Reads the header and walks the body of a seekable message.
///
/// # Errors
/// A malformed header or body structure, a truncated message, bytes after its end, or I/O.
pub fn scan_layout<R: Read + Seek>(
    r: &mut R,
    limits: &HeaderLimits,
) -> Result<MessageLayout, Error> {
    r.seek(SeekFrom::Start(0))?;
    let (header, leftover) = read_header(r, limits)?;
    // Everything read so far is the header and what followed it in the last read.
    let header_len = r.stream_position()? - leftover.len() as u64;
    let end = r.seek(SeekFrom::End(0))?;
    let body = header.body;
    let mut at = header_len;
    let (mut frames, mut plaintext_len) = (0u64, 0u64);
    match body.content_type {
        ContentType::Framed => loop {
            r.seek(SeekFrom::Start(at))?;
            let mut first = [0u8; 4];
            read_exact_at(r, &mut first)?;
            frames += 1;
            if u32::from_be_bytes(first) == FINAL_FRAME_MARKER {
                let mut rest = [0u8; FINAL_FRAME_PREFIX - 4];
                read_exact_at(r, &mut rest)?;
                let len = u32::from_be_bytes(rest[16..20].try_into().expect("4 bytes"));
                if len > body.frame_length {
                    return Err(
                        FormatError::BadFrame("final frame longer than the frame length").into(),
                    );
                }
                plaintext_len += u64::from(len);
                at += (FINAL_FRAME_PREFIX + TAG_LEN) as u64 + u64::from(len);
                break;
            }
            if u32::from_be_bytes(first) as u64 != frames {
                return Err(FormatError::BadFrame("frame out of sequence").into());
            }
            plaintext_len += u64::from(body.frame_length);
            at += (REGULAR_FRAME_PREFIX + TAG_LEN) as u64 + u64::from(body.frame_length);
        },
        ContentType::NonFramed => {
            r.seek(SeekFrom::Start(at))?;
            let mut prefix = [0u8; NON_FRAMED_PREFIX];
            read_exact_at(r, &mut prefix)?;
            let len = u64::from_be_bytes(prefix[12..20].try_into().expect("8 bytes"));
            // Checked first: a hostile length must not overflow the offsets below.
            if len > MAX_NON_FRAMED_LEN {
                return Err(FormatError::BadFrame("non-framed body over the AES-GCM limit").into());
            }
            frames = 1;
            plaintext_len = len;
            at += NON_FRAMED_PREFIX as u64 + len + TAG_LEN as u64;
        }
    }
    let mut footer_len = 0;
    if body.suite.signature().is_some() {
        r.seek(SeekFrom::Start(at))?;
        let mut len = [0u8; 2];
        read_exact_at(r, &mut len)?;
        footer_len = 2 + u64::from(u16::from_be_bytes(len));
    }
    match (at + footer_len).cmp(&end) {
        std::cmp::Ordering::Less => return Err(FormatError::TrailingBytes.into()),
        std::cmp::Ordering::Greater => return Err(FormatError::Truncated.into()),
        std::cmp::Ordering::Equal => {}
    }
    Ok(MessageLayout {
        header: body,
        header_len,
        frames,
        plaintext_len,
        footer_len,
    })
}
