//! Where a message's parts lie, found by walking its frame headers with seeks: for `inspect`
//! and sizing, without any key. Nothing here is authenticated.

use std::io::{Read, Seek, SeekFrom};

use super::decoder::read_header;
use super::machine::{locate_frame, Step};
use super::seek::{eof_is_truncation, ReadAt};
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

/// Where a framed body's final frame lies. Nothing here is authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FinalFrame {
    /// Its index (0-based): the number of regular frames before it.
    pub(crate) index: u64,
    /// The plaintext length its header states.
    pub(crate) len: u64,
    /// Bytes of footer after it (0 for unsigned suites).
    pub(crate) footer_len: u64,
}

/// Finds the final frame of a framed message of `total` bytes from the frame structure, reading
/// only the frame prefixes near the end: the final frame starts on a frame boundary, and every
/// boundary before it holds a regular frame's sequence number, so the first boundary (among those
/// the footer's `u16` length allows) that holds the final-frame marker is it. No guess at the
/// signature length: its `u16` must then match the bytes that are left exactly.
///
/// # Errors
/// A truncated message, frames out of sequence, a footer that does not fit, bytes after the end.
pub(crate) fn find_final_frame<S: ReadAt + ?Sized>(
    source: &S,
    total: u64,
    header_len: u64,
    body: &HeaderBody,
) -> Result<FinalFrame, Error> {
    let frame = u64::from(body.frame_length);
    let slot = frame + (REGULAR_FRAME_PREFIX + TAG_LEN) as u64;
    let (min_footer, max_footer) = match body.suite.signature() {
        Some(_) => (2, 2 + u64::from(u16::MAX)),
        None => (0, 0),
    };
    // The final frame starts at `header_len + n * slot` and takes FINAL_FRAME_PREFIX + len +
    // TAG_LEN bytes, len <= frame; the footer takes the rest.
    let latest = total
        .checked_sub(header_len + (FINAL_FRAME_PREFIX + TAG_LEN) as u64 + min_footer)
        .ok_or(FormatError::Truncated)?;
    let earliest = latest.saturating_sub(frame + max_footer - min_footer);
    for n in earliest.div_ceil(slot)..=latest / slot {
        let at = header_len + n * slot;
        let mut prefix = [0u8; FINAL_FRAME_PREFIX];
        source
            .read_exact_at(&mut prefix, at)
            .map_err(eof_is_truncation)?;
        let seq = u32::try_from(n + 1).map_err(|_| FormatError::BadFrame("too many frames"))?;
        // Checks the sequence number, and for the final frame its IV and length.
        let step = locate_frame(&prefix, seq, body.frame_length)?;
        if prefix[..4] != FINAL_FRAME_MARKER.to_be_bytes() {
            continue;
        }
        let Step::NeedMore(end) = step else {
            return Err(FormatError::BadFrame("final frame shorter than its prefix").into());
        };
        let footer_len = total
            .checked_sub(at + end as u64)
            .ok_or(FormatError::Truncated)?;
        if min_footer == 0 {
            if footer_len != 0 {
                return Err(FormatError::TrailingBytes.into());
            }
        } else {
            let mut sig_len = [0u8; 2];
            if footer_len < 2 {
                return Err(FormatError::Truncated.into());
            }
            source
                .read_exact_at(&mut sig_len, at + end as u64)
                .map_err(eof_is_truncation)?;
            match (2 + u64::from(u16::from_be_bytes(sig_len))).cmp(&footer_len) {
                std::cmp::Ordering::Less => return Err(FormatError::TrailingBytes.into()),
                std::cmp::Ordering::Greater => return Err(FormatError::Truncated.into()),
                std::cmp::Ordering::Equal => {}
            }
        }
        return Ok(FinalFrame {
            index: n,
            len: (end - FINAL_FRAME_PREFIX - TAG_LEN) as u64,
            footer_len,
        });
    }
    Err(FormatError::Truncated.into())
}
