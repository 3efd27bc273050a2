//! Where a message's parts lie, found by walking its frame headers with seeks, without any
//! key: [`scan_layout`] and [`MessageLayout`] (for `inspect`, sizing, and tests that need a
//! frame's offsets). Frame headers are read and checked by the frame codec
//! (`format/frame.rs`), the IV included. Nothing here is authenticated.

use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;

use super::header_io::{eof_is_truncation, read_header};
use crate::format::frame::{FrameHeader, FrameRead, SingleBlockHeader};
use crate::format::{ContentType, FormatError, HeaderBody, HeaderLimits, IV_LEN, TAG_LEN};
use crate::Error;

/// The shape of a message, read without a key.
///
/// Every offset it gives ([`frame`](Self::frame), [`footer_offset`](Self::footer_offset)) is
/// computed from these fields by the same frame codec that reads messages. Only
/// [`scan_layout`] makes one (`#[non_exhaustive]`), so the fields always describe a message that
/// scanned: a hand-built layout could claim spans no message has.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
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

/// Where one body block lies in a message, in bytes from the message's start. Nothing here is
/// authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FrameSpan {
    /// The block's index (0-based); its sequence number is `index + 1`.
    pub index: u64,
    /// Whether this is the final frame (or the one block of a non-framed body).
    pub last: bool,
    /// The whole block: its header, ciphertext and tag.
    pub block: Range<u64>,
    /// Its IV, inside its header.
    pub iv: Range<u64>,
    /// Its ciphertext, as long as its plaintext.
    pub ciphertext: Range<u64>,
    /// Its authentication tag, which ends the block.
    pub tag: Range<u64>,
}

impl MessageLayout {
    /// Where body block `index` (0-based; the final frame is `frames - 1`) lies, or `None` past
    /// the last block (or for fields that describe no message).
    pub fn frame(&self, index: u64) -> Option<FrameSpan> {
        let fl = self.header.frame_length;
        let last = index.checked_add(1)? == self.frames;
        let (start, header_len, iv_offset, content) = match self.header.content_type {
            ContentType::NonFramed if index == 0 && last => (
                self.header_len,
                SingleBlockHeader::WIRE_LEN,
                SingleBlockHeader::IV_OFFSET,
                self.plaintext_len,
            ),
            ContentType::NonFramed => return None,
            ContentType::Framed if index >= self.frames => return None,
            ContentType::Framed => {
                let seq = u32::try_from(index + 1).ok()?;
                let header = if last {
                    let len = self
                        .plaintext_len
                        .checked_sub(index.checked_mul(u64::from(fl))?)?;
                    FrameHeader::Final {
                        seq,
                        len: u32::try_from(len).ok()?,
                    }
                } else {
                    FrameHeader::Regular { seq }
                };
                let start = index
                    .checked_mul(FrameHeader::regular_frame_len(fl))?
                    .checked_add(self.header_len)?;
                let content = u64::from(header.content_len(fl));
                (start, header.wire_len(), header.iv_offset(), content)
            }
        };
        let iv = start.checked_add(iv_offset as u64)?;
        let ct = start.checked_add(header_len as u64)?;
        let tag = ct.checked_add(content)?;
        let end = tag.checked_add(TAG_LEN as u64)?;
        Some(FrameSpan {
            index,
            last,
            block: start..end,
            iv: iv..iv + IV_LEN as u64,
            ciphertext: ct..tag,
            tag: tag..end,
        })
    }

    /// Every body block, in order.
    pub fn frame_spans(&self) -> impl Iterator<Item = FrameSpan> + '_ {
        (0..self.frames).map_while(|i| self.frame(i))
    }

    /// Where the footer starts (the message's length, for unsigned suites): the end of the
    /// last block.
    pub fn footer_offset(&self) -> Option<u64> {
        let last = self.frames.checked_sub(1)?;
        Some(self.frame(last)?.block.end)
    }
}

/// Reads what the source holds of `buf` from `at`, `end` being its length: fewer bytes at its
/// end, for the frame codec to find the header short.
fn read_at_most<'b, R: Read + Seek>(
    r: &mut R,
    at: u64,
    end: u64,
    buf: &'b mut [u8],
) -> Result<&'b [u8], Error> {
    let n = buf
        .len()
        .min(usize::try_from(end.saturating_sub(at)).unwrap_or(usize::MAX));
    r.seek(SeekFrom::Start(at))?;
    r.read_exact(&mut buf[..n]).map_err(eof_is_truncation)?;
    Ok(&buf[..n])
}

/// Reads the header and walks the body of a seekable message.
///
/// # Errors
/// A malformed header or body structure (a frame out of sequence, an IV other than the one its
/// sequence number gives, a final frame longer than the frame length), a truncated message,
/// bytes after its end, or I/O.
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
    let mut prefix = [0u8; FrameHeader::MAX_WIRE_LEN];
    match body.content_type {
        ContentType::Framed => loop {
            let seq =
                u32::try_from(frames + 1).map_err(|_| FormatError::BadFrame("too many frames"))?;
            let bytes = read_at_most(r, at, end, &mut prefix)?;
            let FrameRead::Header(frame) = FrameHeader::read(bytes, seq, body.frame_length)? else {
                return Err(FormatError::Truncated.into());
            };
            frames += 1;
            plaintext_len += u64::from(frame.content_len(body.frame_length));
            at += frame.frame_wire_len(body.frame_length);
            if frame.is_final() {
                break;
            }
        },
        ContentType::NonFramed => {
            let bytes = read_at_most(r, at, end, &mut prefix[..SingleBlockHeader::WIRE_LEN])?;
            let FrameRead::Header(block) = SingleBlockHeader::read(bytes)? else {
                return Err(FormatError::Truncated.into());
            };
            frames = 1;
            plaintext_len = block.len;
            // The codec bounded the length: the offset cannot overflow.
            at += block.block_wire_len();
        }
    }
    let mut footer_len = 0;
    if body.suite.signature().is_some() {
        r.seek(SeekFrom::Start(at))?;
        let mut len = [0u8; 2];
        r.read_exact(&mut len).map_err(eof_is_truncation)?;
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

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;
    use crate::format::{frame_iv, AlgorithmSuite};
    use crate::stream::{DEFAULT_MAX_ENCRYPTED_DATA_KEYS, DEFAULT_MAX_HEADER_LEN};
    use crate::{Decryptor, Encryptor, RawAesKeyring};

    const LIMITS: HeaderLimits = HeaderLimits {
        max_encrypted_data_keys: DEFAULT_MAX_ENCRYPTED_DATA_KEYS,
        max_header_len: DEFAULT_MAX_HEADER_LEN,
    };

    fn scan(msg: &[u8]) -> Result<MessageLayout, Error> {
        scan_layout(&mut Cursor::new(msg), &LIMITS)
    }

    /// Messages of 3 full frames and a final one of 5 bytes, unsigned and signed.
    fn messages(kr: &RawAesKeyring) -> Vec<(Vec<u8>, Vec<u8>)> {
        let pt: Vec<u8> = (0..3 * 100 + 5).map(|i| i as u8).collect();
        [
            AlgorithmSuite::Aes256GcmHkdfSha512CommitKey,
            AlgorithmSuite::Aes256GcmHkdfSha512CommitKeyEcdsaP384,
        ]
        .into_iter()
        .map(|suite| {
            let enc = Encryptor::new(kr).suite(suite).frame_length(100);
            (enc.encrypt(&pt).unwrap(), pt.clone())
        })
        .collect()
    }

    #[test]
    fn frame_spans_tile_the_body_and_point_at_each_part() {
        let kr = RawAesKeyring::new("n", "k", &[3; 32]).unwrap();
        for (msg, pt) in messages(&kr) {
            let layout = scan(&msg).unwrap();
            assert_eq!(layout.frames, 4);
            let spans: Vec<FrameSpan> = layout.frame_spans().collect();
            assert_eq!(spans.len(), 4);
            let mut at = layout.header_len;
            for (i, span) in spans.iter().enumerate() {
                assert_eq!(span.index, i as u64);
                assert_eq!(span.last, i == 3);
                assert_eq!(span.block.start, at);
                assert_eq!(span.tag.end, span.block.end);
                assert_eq!(span.ciphertext.end, span.tag.start);
                assert_eq!(span.tag.end - span.tag.start, TAG_LEN as u64);
                let len = if span.last { 5 } else { 100 };
                assert_eq!(span.ciphertext.end - span.ciphertext.start, len);
                let iv = &msg[span.iv.start as usize..span.iv.end as usize];
                assert_eq!(iv, frame_iv(i as u32 + 1));
                at = span.block.end;
            }
            assert_eq!(layout.frame(4), None);
            assert_eq!(layout.footer_offset(), Some(at));
            assert_eq!(at + layout.footer_len, msg.len() as u64);
            // The spans locate what authenticates: a flipped ciphertext or tag byte fails.
            let dec = Decryptor::new(&kr);
            assert_eq!(dec.decrypt(&msg).unwrap(), pt);
            for span in &spans {
                for byte in [span.ciphertext.start, span.tag.end - 1] {
                    let mut bad = msg.clone();
                    bad[byte as usize] ^= 1;
                    assert!(dec.decrypt(&bad).is_err(), "frame {}", span.index);
                }
            }
        }
    }

    #[test]
    fn a_frame_whose_iv_was_altered_is_refused() {
        let kr = RawAesKeyring::new("n", "k", &[4; 32]).unwrap();
        for (msg, _) in messages(&kr) {
            let layout = scan(&msg).unwrap();
            for span in layout.frame_spans() {
                for byte in [span.iv.start, span.iv.end - 1] {
                    let mut bad = msg.clone();
                    bad[byte as usize] ^= 0x40;
                    let err = scan(&bad).unwrap_err();
                    assert!(
                        matches!(err, Error::Format(FormatError::BadFrame("unexpected IV"))),
                        "frame {}, byte {byte}: {err}",
                        span.index
                    );
                }
            }
        }
    }
}
