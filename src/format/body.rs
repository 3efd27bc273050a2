//! The message body: frame layout, per-frame IVs and body AAD (FORMAT.md §6), and the footer.

use super::header::IV_LEN;

/// The sequence-number value that marks the final frame.
pub const FINAL_FRAME_MARKER: u32 = 0xFFFF_FFFF;
/// Bytes before a regular frame's ciphertext: `u32 seq ‖ iv`.
pub const REGULAR_FRAME_PREFIX: usize = 4 + IV_LEN;
/// Bytes before the final frame's ciphertext: `marker ‖ u32 seq ‖ iv ‖ u32 len`.
pub const FINAL_FRAME_PREFIX: usize = 4 + 4 + IV_LEN + 4;
/// Bytes before a non-framed body's ciphertext: `iv ‖ u64 len`.
pub const NON_FRAMED_PREFIX: usize = IV_LEN + 8;
/// Largest non-framed body AES-GCM allows (2^36 − 32 bytes).
pub const MAX_NON_FRAMED_LEN: u64 = 0xF_FFFF_FFE0;
/// Largest frame count: sequence numbers run from 1 and never reach the marker.
pub const MAX_FRAMES: u32 = 0xFFFF_FFFE;

/// The three kinds of body block, each with its own AAD content string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// A regular frame.
    Frame,
    /// The final frame.
    FinalFrame,
    /// A non-framed body.
    SingleBlock,
}

impl BlockKind {
    fn content_string(self) -> &'static [u8] {
        match self {
            BlockKind::Frame => b"AWSKMSEncryptionClient Frame",
            BlockKind::FinalFrame => b"AWSKMSEncryptionClient Final Frame",
            BlockKind::SingleBlock => b"AWSKMSEncryptionClient Single Block",
        }
    }
}

/// The deterministic IV of block `seq`: eight zero bytes and the big-endian sequence number.
pub fn frame_iv(seq: u32) -> [u8; IV_LEN] {
    let mut iv = [0u8; IV_LEN];
    iv[8..].copy_from_slice(&seq.to_be_bytes());
    iv
}

/// The AAD of one body block, built on the stack: no allocation per frame.
pub struct BodyAad {
    buf: [u8; 32 + 35 + 4 + 8],
    len: usize,
}

impl BodyAad {
    /// `message_id ‖ content string ‖ u32 seq ‖ u64 plaintext length`.
    pub fn new(message_id: &[u8], kind: BlockKind, seq: u32, plaintext_len: u64) -> Self {
        let mut buf = [0u8; 32 + 35 + 4 + 8];
        let mut len = 0;
        for part in [
            message_id,
            kind.content_string(),
            &seq.to_be_bytes(),
            &plaintext_len.to_be_bytes(),
        ] {
            buf[len..len + part.len()].copy_from_slice(part);
            len += part.len();
        }
        BodyAad { buf, len }
    }
}

impl AsRef<[u8]> for BodyAad {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Ciphertext bytes of a framed body (without header or footer) for `plaintext_len` bytes in
/// frames of `frame_length`, laid out as this crate writes it (full frames, then a final frame
/// holding the remainder, possibly empty). Only the tests need it today.
#[cfg(test)]
pub fn framed_body_len(plaintext_len: u64, frame_length: u32) -> u64 {
    use super::header::TAG_LEN;
    let f = u64::from(frame_length.max(1));
    let regular = plaintext_len / f;
    let last = plaintext_len % f;
    regular * (REGULAR_FRAME_PREFIX + TAG_LEN) as u64 + plaintext_len - last
        + (FINAL_FRAME_PREFIX + TAG_LEN) as u64
        + last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iv_and_aad_layout() {
        assert_eq!(frame_iv(0x0102_0304)[8..], [1, 2, 3, 4]);
        let aad = BodyAad::new(&[7; 32], BlockKind::FinalFrame, 20, 512);
        let aad = aad.as_ref();
        assert_eq!(aad.len(), 32 + 34 + 12);
        assert_eq!(&aad[32..66], b"AWSKMSEncryptionClient Final Frame");
        assert_eq!(&aad[66..70], &20u32.to_be_bytes());
        assert_eq!(&aad[70..], &512u64.to_be_bytes());
    }

    #[test]
    fn body_length_formula() {
        assert_eq!(framed_body_len(0, 4096), 40);
        assert_eq!(framed_body_len(4096, 4096), 32 + 4096 + 40);
        assert_eq!(framed_body_len(4097, 4096), 32 + 4096 + 40 + 1);
    }
}
