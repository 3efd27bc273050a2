//! The framing state machine: I/O-free, shared by every adaptor.
//!
//! [`FrameCipher`] seals and opens one body block given its position; [`Sealer`] and
//! [`Opener`] add the order (sequence numbers, final frame, signature) on top of it.
//! Adaptors own the buffers and the I/O; they hand the machine whole blocks.

use std::ops::Range;

use crate::crypto::signature::{Signer, Verifier};
use crate::crypto::AeadKey;
use crate::format::{
    frame_iv, BlockKind, BodyAad, ContentType, FormatError, FINAL_FRAME_MARKER, FINAL_FRAME_PREFIX,
    IV_LEN, MAX_FRAMES, MAX_NON_FRAMED_LEN, NON_FRAMED_PREFIX, REGULAR_FRAME_PREFIX, TAG_LEN,
};
use crate::Error;

/// Bytes an adaptor keeps free before a frame's plaintext so that either frame header fits
/// in front of it without moving the plaintext.
pub(crate) const HEADROOM: usize = FINAL_FRAME_PREFIX;

/// One message's content key and block parameters. `Sync`: workers may share it.
#[derive(Debug)]
pub(crate) struct FrameCipher {
    key: AeadKey,
    message_id: Vec<u8>,
    frame_length: u32,
}

impl FrameCipher {
    pub(crate) fn new(key: AeadKey, message_id: Vec<u8>, frame_length: u32) -> Self {
        FrameCipher {
            key,
            message_id,
            frame_length,
        }
    }

    pub(crate) fn frame_length(&self) -> u32 {
        self.frame_length
    }

    /// Seals block `seq` in place. `frame` is `[HEADROOM][plaintext][TAG_LEN spare]`; the
    /// frame header is written into the headroom and the tag into the spare bytes. Returns the
    /// offset at which the encoded frame starts (it ends at `frame.len()`).
    pub(crate) fn seal(&self, seq: u32, last: bool, frame: &mut [u8]) -> Result<usize, Error> {
        let len = frame.len() - HEADROOM - TAG_LEN;
        let iv = frame_iv(seq);
        let (kind, start) = if last {
            (BlockKind::FinalFrame, 0)
        } else {
            (BlockKind::Frame, HEADROOM - REGULAR_FRAME_PREFIX)
        };
        let head = &mut frame[start..HEADROOM];
        if last {
            head[..4].copy_from_slice(&FINAL_FRAME_MARKER.to_be_bytes());
            head[4..8].copy_from_slice(&seq.to_be_bytes());
            head[8..8 + IV_LEN].copy_from_slice(&iv);
            head[8 + IV_LEN..].copy_from_slice(&(len as u32).to_be_bytes());
        } else {
            head[..4].copy_from_slice(&seq.to_be_bytes());
            head[4..].copy_from_slice(&iv);
        }
        let aad = BodyAad::new(&self.message_id, kind, seq, len as u64);
        let (body, tag) = frame[HEADROOM..].split_at_mut(len);
        let t = self
            .key
            .seal_in_place(&iv, aad.as_ref(), body)
            .map_err(|_| Error::Crypto("AES-GCM seal failed"))?;
        tag.copy_from_slice(&t);
        Ok(start)
    }

    /// Opens `ct_and_tag` in place as block `seq` of `kind` holding `len` plaintext bytes.
    fn open(
        &self,
        kind: BlockKind,
        seq: u32,
        len: u64,
        ct_and_tag: &mut [u8],
    ) -> Result<(), Error> {
        let aad = BodyAad::new(&self.message_id, kind, seq, len);
        self.key
            .open_in_place(&frame_iv(seq), aad.as_ref(), ct_and_tag)
            .map_err(|_| Error::DecryptionFailed)
    }
}

/// Encrypting side: sequence numbers, the final frame, the signature.
#[derive(Debug)]
pub(crate) struct Sealer {
    cipher: FrameCipher,
    next_seq: u32,
    signer: Option<Signer>,
}

impl Sealer {
    pub(crate) fn new(cipher: FrameCipher, signer: Option<Signer>) -> Self {
        Sealer {
            cipher,
            next_seq: 1,
            signer,
        }
    }

    pub(crate) fn frame_length(&self) -> usize {
        self.cipher.frame_length() as usize
    }

    /// Seals the next regular frame (`frame` laid out as for [`FrameCipher::seal`], with exactly
    /// `frame_length` plaintext bytes) and returns the encoded frame.
    pub(crate) fn seal_frame<'a>(&mut self, frame: &'a mut [u8]) -> Result<&'a [u8], Error> {
        debug_assert_eq!(frame.len(), HEADROOM + self.frame_length() + TAG_LEN);
        // The final frame takes a sequence number too, so regular ones stop one short.
        if self.next_seq >= MAX_FRAMES {
            return Err(Error::InvalidArgument(format!(
                "the message would need more than {MAX_FRAMES} frames: use a larger frame length"
            )));
        }
        let start = self.cipher.seal(self.next_seq, false, frame)?;
        self.next_seq += 1;
        let out = &frame[start..];
        if let Some(s) = &mut self.signer {
            s.update(out);
        }
        Ok(out)
    }

    /// Seals the final frame (`frame` with at most `frame_length` plaintext bytes) and returns
    /// the encoded frame and the footer (empty for unsigned suites).
    pub(crate) fn seal_last(mut self, frame: &mut [u8]) -> Result<(&[u8], Vec<u8>), Error> {
        self.cipher.seal(self.next_seq, true, frame)?;
        let mut footer = Vec::new();
        if let Some(mut s) = self.signer.take() {
            s.update(frame);
            let sig = s
                .finish()
                .map_err(|_| Error::Crypto("ECDSA signing failed"))?;
            footer.extend_from_slice(&(sig.len() as u16).to_be_bytes());
            footer.extend_from_slice(&sig);
        }
        Ok((frame, footer))
    }
}

/// What the opener needs next, or what it produced.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// The buffer must hold at least this many bytes before `open` can progress.
    NeedMore(usize),
    /// A block was authenticated and decrypted in place.
    Block {
        /// Bytes of the buffer the block (and, after the last block, the footer) took.
        consumed: usize,
        /// Where the block's plaintext now is in the buffer.
        plaintext: Range<usize>,
        /// Whether this was the last block; the message is complete once it is released.
        last: bool,
    },
}

/// Decrypting side: checks every block's position, tag and, for signed suites, the signature
/// before anything is released.
#[derive(Debug)]
pub(crate) struct Opener {
    cipher: FrameCipher,
    content_type: ContentType,
    next_seq: u32,
    verifier: Option<Verifier>,
    max_body_len: u64,
    done: bool,
}

impl Opener {
    pub(crate) fn new(
        cipher: FrameCipher,
        content_type: ContentType,
        verifier: Option<Verifier>,
        max_body_len: u64,
    ) -> Self {
        Opener {
            cipher,
            content_type,
            next_seq: 1,
            verifier,
            max_body_len,
            done: false,
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    /// Tries to open the block at the start of `buf`. On `Block`, the plaintext is authentic
    /// and may be released; on an error the machine must not be used again.
    pub(crate) fn open(&mut self, buf: &mut [u8]) -> Result<Step, Error> {
        if self.done {
            return Err(FormatError::TrailingBytes.into());
        }
        match self.content_type {
            ContentType::Framed => self.open_frame(buf),
            ContentType::NonFramed => self.open_single_block(buf),
        }
    }

    fn open_frame(&mut self, buf: &mut [u8]) -> Result<Step, Error> {
        if buf.len() < 4 {
            return Ok(Step::NeedMore(4));
        }
        let first = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes"));
        if first != FINAL_FRAME_MARKER {
            let frame_len = self.cipher.frame_length() as usize;
            let total = REGULAR_FRAME_PREFIX + frame_len + TAG_LEN;
            if first != self.next_seq {
                return Err(FormatError::BadFrame("frame out of sequence").into());
            }
            if buf.len() < total {
                return Ok(Step::NeedMore(total));
            }
            self.check_iv(&buf[4..4 + IV_LEN], first)?;
            if self.next_seq >= MAX_FRAMES {
                return Err(FormatError::BadFrame("too many frames").into());
            }
            if let Some(v) = &mut self.verifier {
                v.update(&buf[..total]);
            }
            self.cipher.open(
                BlockKind::Frame,
                first,
                frame_len as u64,
                &mut buf[REGULAR_FRAME_PREFIX..total],
            )?;
            self.next_seq += 1;
            return Ok(Step::Block {
                consumed: total,
                plaintext: REGULAR_FRAME_PREFIX..REGULAR_FRAME_PREFIX + frame_len,
                last: false,
            });
        }
        if buf.len() < FINAL_FRAME_PREFIX {
            return Ok(Step::NeedMore(FINAL_FRAME_PREFIX));
        }
        let seq = u32::from_be_bytes(buf[4..8].try_into().expect("4 bytes"));
        if seq != self.next_seq {
            return Err(FormatError::BadFrame("final frame out of sequence").into());
        }
        self.check_iv(&buf[8..8 + IV_LEN], seq)?;
        let len = u32::from_be_bytes(buf[20..24].try_into().expect("4 bytes"));
        if len > self.cipher.frame_length() {
            return Err(FormatError::BadFrame("final frame longer than the frame length").into());
        }
        let end = FINAL_FRAME_PREFIX + len as usize + TAG_LEN;
        self.finish_block(buf, BlockKind::FinalFrame, seq, FINAL_FRAME_PREFIX, end)
    }

    fn open_single_block(&mut self, buf: &mut [u8]) -> Result<Step, Error> {
        if buf.len() < NON_FRAMED_PREFIX {
            return Ok(Step::NeedMore(NON_FRAMED_PREFIX));
        }
        self.check_iv(&buf[..IV_LEN], 1)?;
        let len = u64::from_be_bytes(buf[IV_LEN..NON_FRAMED_PREFIX].try_into().expect("8 bytes"));
        if len > MAX_NON_FRAMED_LEN {
            return Err(FormatError::BadFrame("non-framed body over the AES-GCM limit").into());
        }
        if len > self.max_body_len {
            return Err(FormatError::FrameTooLarge {
                len,
                max: self.max_body_len,
            }
            .into());
        }
        let end = NON_FRAMED_PREFIX + len as usize + TAG_LEN;
        self.finish_block(buf, BlockKind::SingleBlock, 1, NON_FRAMED_PREFIX, end)
    }

    /// Opens the last block (`buf[..end]`, ciphertext from `ct_start`), then checks the footer
    /// of signed suites, all before releasing anything.
    fn finish_block(
        &mut self,
        buf: &mut [u8],
        kind: BlockKind,
        seq: u32,
        ct_start: usize,
        end: usize,
    ) -> Result<Step, Error> {
        let mut consumed = end;
        let mut signature = None;
        if self.verifier.is_some() {
            if buf.len() < end + 2 {
                return Ok(Step::NeedMore(end + 2));
            }
            let sig_len = u16::from_be_bytes([buf[end], buf[end + 1]]) as usize;
            consumed = end + 2 + sig_len;
            signature = Some(end + 2..consumed);
        }
        if buf.len() < consumed {
            return Ok(Step::NeedMore(consumed));
        }
        if let Some(v) = &mut self.verifier {
            v.update(&buf[..end]);
        }
        let len = (end - ct_start - TAG_LEN) as u64;
        self.cipher.open(kind, seq, len, &mut buf[ct_start..end])?;
        if let (Some(v), Some(range)) = (self.verifier.take(), signature) {
            v.verify(&buf[range]).map_err(|_| Error::DecryptionFailed)?;
        }
        self.done = true;
        Ok(Step::Block {
            consumed,
            plaintext: ct_start..end - TAG_LEN,
            last: true,
        })
    }

    fn check_iv(&self, iv: &[u8], seq: u32) -> Result<(), Error> {
        if iv != frame_iv(seq) {
            return Err(FormatError::BadFrame("unexpected IV").into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::AeadBackend;

    fn sealed_message(backend: AeadBackend, pt: &[u8], frame: usize) -> Vec<u8> {
        let key = AeadKey::new(backend, &[9; 32]).unwrap();
        let mut sealer = Sealer::new(FrameCipher::new(key, vec![1; 32], frame as u32), None);
        let mut out = Vec::new();
        let chunks = pt.chunks(frame);
        let mut last: &[u8] = &[];
        for chunk in chunks {
            if chunk.len() < frame {
                last = chunk;
                break;
            }
            let mut buf = vec![0u8; HEADROOM];
            buf.extend_from_slice(chunk);
            buf.resize(buf.len() + TAG_LEN, 0);
            out.extend_from_slice(sealer.seal_frame(&mut buf).unwrap());
        }
        let mut buf = vec![0u8; HEADROOM];
        buf.extend_from_slice(last);
        buf.resize(buf.len() + TAG_LEN, 0);
        let (frame, footer) = sealer.seal_last(&mut buf).unwrap();
        out.extend_from_slice(frame);
        out.extend_from_slice(&footer);
        out
    }

    #[test]
    fn backends_write_byte_identical_bodies_and_read_each_other() {
        let pt: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
        let bodies: Vec<_> = AeadBackend::all()
            .iter()
            .map(|&b| sealed_message(b, &pt, 512))
            .collect();
        assert!(bodies.windows(2).all(|w| w[0] == w[1]));
        for &backend in AeadBackend::all() {
            let key = AeadKey::new(backend, &[9; 32]).unwrap();
            let cipher = FrameCipher::new(key, vec![1; 32], 512);
            let mut opener = Opener::new(cipher, ContentType::Framed, None, 0);
            let mut body = bodies[0].clone();
            let mut at = 0;
            let mut out = Vec::new();
            loop {
                match opener.open(&mut body[at..]).unwrap() {
                    Step::NeedMore(_) => panic!("whole body is present"),
                    Step::Block {
                        consumed,
                        plaintext,
                        last,
                    } => {
                        out.extend_from_slice(&body[at + plaintext.start..at + plaintext.end]);
                        at += consumed;
                        if last {
                            break;
                        }
                    }
                }
            }
            assert_eq!(at, body.len());
            assert_eq!(out, pt);
        }
    }

    #[test]
    fn opener_asks_for_exactly_what_it_needs() {
        let body = sealed_message(AeadBackend::AwsLc, &[5u8; 100], 64);
        let key = AeadKey::new(AeadBackend::AwsLc, &[9; 32]).unwrap();
        let mut opener = Opener::new(
            FrameCipher::new(key, vec![1; 32], 64),
            ContentType::Framed,
            None,
            0,
        );
        let mut buf = body.clone();
        assert_eq!(opener.open(&mut buf[..2]).unwrap(), Step::NeedMore(4));
        assert_eq!(
            opener.open(&mut buf[..10]).unwrap(),
            Step::NeedMore(16 + 64 + 16)
        );
        assert!(matches!(
            opener.open(&mut buf).unwrap(),
            Step::Block {
                consumed: 96,
                last: false,
                ..
            }
        ));
        let rest = &mut buf[96..];
        assert_eq!(
            opener.open(&mut rest[..8]).unwrap(),
            Step::NeedMore(FINAL_FRAME_PREFIX)
        );
        assert_eq!(
            opener.open(&mut rest[..30]).unwrap(),
            Step::NeedMore(24 + 36 + 16)
        );
        assert!(matches!(
            opener.open(rest).unwrap(),
            Step::Block { last: true, .. }
        ));
        assert!(
            opener.open(&mut [0u8; 4]).is_err(),
            "nothing after the last block"
        );
    }
}
