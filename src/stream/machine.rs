//! The framing state machine: I/O-free, shared by every adaptor.
//!
//! [`FrameCipher`] seals and opens one body block given its position; [`Sealer`] and
//! [`Opener`] add the order (sequence numbers, final frame, signature) on top of it. Only a
//! [`Sealer`] seals, and only a fresh [`MessageId`] builds one.
//! Adaptors own the buffers and the I/O; they hand the machine whole blocks. Frame headers are
//! written and read by the frame codec (`format/frame.rs`), the only parser of them. The
//! order-dependent work (sequence numbers, the signature) is done here, in order; the
//! independent per-frame sealing and opening is handed to [`Workers::each`], which may run it
//! on a pool (`workers.rs`). See `docs/PIPELINE.md`.

use std::ops::Range;

use super::workers::Workers;
use crate::crypto::signature::{Signer, Verifier};
use crate::crypto::{random_bytes, AeadKey};
use crate::format::frame::{FrameHeader, FrameRead, SingleBlockHeader};
use crate::format::{
    frame_iv, AlgorithmSuite, BlockKind, BodyAad, ContentType, FormatError, FINAL_FRAME_PREFIX,
    IV_LEN, MAX_FRAMES, REGULAR_FRAME_PREFIX, TAG_LEN,
};
use crate::{Error, Limit};

/// The IV of the header tag: all zeros, in every message (FORMAT.md).
pub(crate) const HEADER_IV: [u8; IV_LEN] = [0; IV_LEN];

/// The message ID of a message being encrypted, drawn from the system CSPRNG. The only way to
/// a [`Sealer`], which takes it by value: it is not `Clone` and cannot be made from bytes, so
/// an ID read from a header, or kept from another message, can never seal. A fresh ID derives
/// a fresh content key, under which the header IV and each frame IV are then sealed once.
#[derive(Debug)]
pub(crate) struct MessageId(Vec<u8>);

impl MessageId {
    /// A new random ID of `suite`'s length.
    pub(crate) fn generate(suite: AlgorithmSuite) -> Result<Self, Error> {
        let mut id = vec![0u8; suite.message_id_len()];
        random_bytes(&mut id)?;
        Ok(MessageId(id))
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// One message's content key and block parameters. `Sync`: workers may share it. Built from a
/// parsed header it only opens: sealing is private to this module, through a [`Sealer`].
#[derive(Debug)]
pub(crate) struct FrameCipher {
    key: AeadKey,
    message_id: Vec<u8>,
    frame_length: u32,
}

impl FrameCipher {
    /// A cipher that opens the body of the message with this ID and frame length.
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

    /// Bytes of one regular frame on the wire.
    pub(crate) fn regular_frame_len(&self) -> usize {
        // Saturating: on 32-bit a frame length near `u32::MAX` cannot be buffered anyway.
        usize::try_from(FrameHeader::regular_frame_len(self.frame_length)).unwrap_or(usize::MAX)
    }

    /// Seals block `seq`. `frame` is `[prefix][plaintext][TAG_LEN spare]`, the prefix being
    /// [`REGULAR_FRAME_PREFIX`] or, for the last frame, [`FINAL_FRAME_PREFIX`] bytes; the frame
    /// header goes into the prefix and the tag into the spare bytes. With `src`, the plaintext
    /// is read from it (one pass, out of place) and the slot's plaintext bytes are only written;
    /// without, it is sealed in place.
    fn seal(
        &self,
        seq: u32,
        last: bool,
        frame: &mut [u8],
        src: Option<&[u8]>,
    ) -> Result<(), Error> {
        let prefix = if last {
            FINAL_FRAME_PREFIX
        } else {
            REGULAR_FRAME_PREFIX
        };
        let len = frame.len() - prefix - TAG_LEN;
        // `len` is at most the frame length (a `u32`): the callers lay the slots out so.
        let header = if last {
            FrameHeader::Final {
                seq,
                len: len as u32,
            }
        } else {
            FrameHeader::Regular { seq }
        };
        let (head, rest) = frame.split_at_mut(header.wire_len());
        header.write(head);
        let iv = frame_iv(seq);
        let aad = BodyAad::new(&self.message_id, header.kind(), seq, len as u64);
        let sealed = match src {
            Some(plaintext) => self.key.seal_into(&iv, aad.as_ref(), plaintext, rest),
            None => {
                let (body, tag) = rest.split_at_mut(len);
                self.key
                    .seal_in_place(&iv, aad.as_ref(), body)
                    .map(|t| tag.copy_from_slice(&t))
            }
        };
        sealed.map_err(|_| Error::Crypto("AES-GCM seal failed"))
    }

    /// Finds frame `seq` at the start of `buf` and opens it in place: random access.
    pub(crate) fn open_frame(&self, buf: &mut [u8], seq: u32) -> Result<Step, Error> {
        let step = locate_frame(buf, seq, self.frame_length)?;
        if let Step::Block(b) = &step {
            self.open(b, &mut buf[b.sealed.clone()])?;
        }
        Ok(step)
    }

    /// Opens a parsed block in place: `sealed` is exactly its ciphertext and tag.
    fn open(&self, block: &Block, sealed: &mut [u8]) -> Result<(), Error> {
        let aad = BodyAad::new(&self.message_id, block.kind, block.seq, block.len);
        self.key
            .open_in_place(&frame_iv(block.seq), aad.as_ref(), sealed)
            .map_err(|_| Error::DecryptionFailed)
    }

    /// Opens a parsed block into `out` (exactly its plaintext length); `sealed` is its
    /// ciphertext and tag. On failure `out` holds zeros.
    fn open_into(&self, block: &Block, sealed: &[u8], out: &mut [u8]) -> Result<(), Error> {
        let aad = BodyAad::new(&self.message_id, block.kind, block.seq, block.len);
        self.key
            .open_into(&frame_iv(block.seq), aad.as_ref(), sealed, out)
            .map_err(|_| Error::DecryptionFailed)
    }
}

/// Finds frame number `seq` at the start of `buf`: a regular frame, or the final one (its
/// block then ends before any footer). The frame codec checks its header (sequence number, IV,
/// the final frame's length, the frame count); nothing is decrypted. Asks for the whole frame.
pub(crate) fn locate_frame(buf: &[u8], seq: u32, frame_length: u32) -> Result<Step, Error> {
    let header = match FrameHeader::read(buf, seq, frame_length)? {
        FrameRead::NeedMore(n) => return Ok(Step::NeedMore(n)),
        FrameRead::Header(h) => h,
    };
    // Saturating: on 32-bit a frame length near `u32::MAX` cannot be buffered anyway.
    let end = usize::try_from(header.frame_wire_len(frame_length)).unwrap_or(usize::MAX);
    if buf.len() < end {
        return Ok(Step::NeedMore(end));
    }
    Ok(Step::Block(Block {
        consumed: end,
        sealed: header.wire_len()..end,
        kind: header.kind(),
        seq: header.seq(),
        len: u64::from(header.content_len(frame_length)),
        last: header.is_final(),
    }))
}

/// Encrypting side: the header tag, sequence numbers, the final frame, the signature.
#[derive(Debug)]
pub(crate) struct Sealer {
    cipher: FrameCipher,
    header_sealed: bool,
    next_seq: u32,
    signer: Option<Signer>,
}

impl Sealer {
    /// The sealer of one new message: `key` is the content key derived for `message_id`.
    pub(crate) fn new(
        key: AeadKey,
        message_id: MessageId,
        frame_length: u32,
        signer: Option<Signer>,
    ) -> Self {
        Sealer {
            cipher: FrameCipher::new(key, message_id.0, frame_length),
            header_sealed: false,
            next_seq: 1,
            signer,
        }
    }

    /// Seals the header's tag over `aad` under [`HEADER_IV`], appends it to `header` (the
    /// header up to its tag) and feeds the header to the signature. Once per message: a second
    /// header would reuse the header IV under the same content key.
    pub(crate) fn seal_header(&mut self, header: &mut Vec<u8>, aad: &[u8]) -> Result<(), Error> {
        if std::mem::replace(&mut self.header_sealed, true) {
            return Err(Error::Crypto("a message's header tag is sealed only once"));
        }
        let tag = self
            .cipher
            .key
            .seal_in_place(&HEADER_IV, aad, &mut [])
            .map_err(|_| Error::Crypto("AES-GCM seal failed"))?;
        header.extend_from_slice(&tag);
        if let Some(s) = &mut self.signer {
            s.update(header);
        }
        Ok(())
    }

    pub(crate) fn frame_length(&self) -> usize {
        self.cipher.frame_length() as usize
    }

    pub(crate) fn regular_frame_len(&self) -> usize {
        self.cipher.regular_frame_len()
    }

    /// Seals the next regular frames, laid out back to back as on the wire (each
    /// `[prefix][frame_length plaintext bytes][tag spare]`), on the workers. With `plaintext`,
    /// each slot is sealed from it, out of place; without, the slots' plaintext in place.
    pub(crate) fn seal_frames(
        &mut self,
        frames: &mut [u8],
        plaintext: Option<&[u8]>,
        workers: &Workers,
    ) -> Result<(), Error> {
        let slot = self.regular_frame_len();
        let frame = self.frame_length();
        debug_assert_eq!(frames.len() % slot, 0);
        let count = frames.len() / slot;
        debug_assert!(plaintext.is_none_or(|p| p.len() == count * frame));
        // The final frame takes a sequence number too, so regular ones stop one short.
        if u64::from(self.next_seq) + count as u64 > u64::from(MAX_FRAMES) {
            return Err(Error::Limit {
                what: Limit::FrameCount,
                max: MAX_FRAMES.into(),
            });
        }
        // The numbers are taken before sealing: a call after a failed one never reuses them.
        let base = self.next_seq;
        self.next_seq += count as u32;
        let mut slots: Vec<&mut [u8]> = frames.chunks_mut(slot).collect();
        let cipher = &self.cipher;
        workers.each(&mut slots, |i, slot| {
            let src = plaintext.map(|p| &p[i * frame..(i + 1) * frame]);
            cipher.seal(base + i as u32, false, slot, src)
        })?;
        if let Some(s) = &mut self.signer {
            s.update(frames);
        }
        Ok(())
    }

    /// Seals the final frame (`[FINAL_FRAME_PREFIX][at most frame_length bytes][tag spare]`)
    /// and returns the footer (empty for unsigned suites).
    pub(crate) fn seal_last(mut self, frame: &mut [u8]) -> Result<Vec<u8>, Error> {
        self.cipher.seal(self.next_seq, true, frame, None)?;
        let mut footer = Vec::new();
        if let Some(mut s) = self.signer.take() {
            s.update(frame);
            let sig = s
                .finish()
                .map_err(|_| Error::Crypto("ECDSA signing failed"))?;
            footer.extend_from_slice(&(sig.len() as u16).to_be_bytes());
            footer.extend_from_slice(&sig);
        }
        Ok(footer)
    }
}

/// A body block found in a buffer, its position and signature (if any) already checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Block {
    /// Bytes of the buffer the block (and, after the last block, the footer) takes.
    pub(crate) consumed: usize,
    /// Ciphertext and tag, relative to the buffer.
    sealed: Range<usize>,
    kind: BlockKind,
    seq: u32,
    len: u64,
    /// Whether this is the last block.
    pub(crate) last: bool,
}

impl Block {
    /// Where the plaintext is once the block is opened.
    pub(crate) fn plaintext(&self) -> Range<usize> {
        self.sealed.start..self.sealed.end - TAG_LEN
    }

    /// The same block in a buffer that starts `by` bytes earlier.
    pub(crate) fn shifted(mut self, by: usize) -> Self {
        self.sealed = self.sealed.start + by..self.sealed.end + by;
        self
    }
}

/// What the opener found at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// The buffer must hold at least this many bytes before a block can be parsed.
    NeedMore(usize),
    /// A complete block, ready to open.
    Block(Block),
}

/// Decrypting side: checks every block's position and, for signed suites, the signature;
/// then opens blocks (checking their tags), alone or many at once on a pool.
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

    /// Plaintext bytes of one regular frame (0 for a non-framed body).
    pub(crate) fn frame_length(&self) -> usize {
        match self.content_type {
            ContentType::Framed => self.cipher.frame_length() as usize,
            ContentType::NonFramed => 0,
        }
    }

    /// Bytes of one regular frame (0 for a non-framed body).
    pub(crate) fn regular_frame_len(&self) -> usize {
        match self.content_type {
            ContentType::Framed => self.cipher.regular_frame_len(),
            ContentType::NonFramed => 0,
        }
    }

    /// Finds the block at the start of `buf` and checks its place in the message; for the last
    /// block of a signed message, also the signature. Nothing is decrypted. After an error the
    /// opener must not be used again.
    pub(crate) fn parse(&mut self, buf: &[u8]) -> Result<Step, Error> {
        if self.done {
            return Err(FormatError::TrailingBytes.into());
        }
        match self.content_type {
            ContentType::Framed => self.parse_frame(buf),
            ContentType::NonFramed => self.parse_single_block(buf),
        }
    }

    /// Opens blocks parsed from `buf` (in order, each relative to `buf`), on the workers.
    /// On success every block's plaintext is authentic.
    pub(crate) fn open_blocks(
        &self,
        buf: &mut [u8],
        blocks: &[Block],
        workers: &Workers,
    ) -> Result<(), Error> {
        // Split the buffer into one disjoint slice per block, so they can be opened at once.
        let mut parts: Vec<(&mut [u8], &Block)> = Vec::with_capacity(blocks.len());
        let mut rest: &mut [u8] = buf;
        let mut offset = 0;
        for b in blocks {
            let tail = std::mem::take(&mut rest);
            let (_, tail) = tail.split_at_mut(b.sealed.start - offset);
            let (mine, tail) = tail.split_at_mut(b.sealed.len());
            parts.push((mine, b));
            offset = b.sealed.end;
            rest = tail;
        }
        let cipher = &self.cipher;
        workers.each(&mut parts, |_, (sealed, b)| cipher.open(b, sealed))
    }

    /// Opens regular frames parsed from `buf` (in order, each relative to `buf`) into `out`, one
    /// after the other, on the workers; `out` is exactly their plaintext length. On success
    /// every byte of `out` is authentic; on failure no block's unauthenticated plaintext is
    /// left in it (a failed block is zeroed, the others are authentic).
    pub(crate) fn open_blocks_into(
        &self,
        buf: &[u8],
        blocks: &[Block],
        out: &mut [u8],
        workers: &Workers,
    ) -> Result<(), Error> {
        let mut parts: Vec<(&mut [u8], &Block)> = Vec::with_capacity(blocks.len());
        let mut rest: &mut [u8] = out;
        for b in blocks {
            let (mine, tail) = std::mem::take(&mut rest).split_at_mut(b.len as usize);
            parts.push((mine, b));
            rest = tail;
        }
        debug_assert!(rest.is_empty());
        let cipher = &self.cipher;
        workers.each(&mut parts, |_, (out, b)| {
            cipher.open_into(b, &buf[b.sealed.clone()], out)
        })
    }

    /// Parses and opens the block at the start of `buf`: the single-block path.
    #[cfg(test)]
    pub(crate) fn open(&mut self, buf: &mut [u8]) -> Result<Option<Block>, Error> {
        match self.parse(buf)? {
            Step::NeedMore(_) => Ok(None),
            Step::Block(b) => {
                self.open_blocks(buf, std::slice::from_ref(&b), &Workers::Caller)?;
                Ok(Some(b))
            }
        }
    }

    fn parse_frame(&mut self, buf: &[u8]) -> Result<Step, Error> {
        let block = match locate_frame(buf, self.next_seq, self.cipher.frame_length())? {
            Step::Block(b) => b,
            need => return Ok(need),
        };
        if block.last {
            let (seq, start, end) = (block.seq, block.sealed.start, block.consumed);
            return self.parse_last(buf, BlockKind::FinalFrame, seq, start, end);
        }
        // The frame codec refused a regular frame that would leave no number for the final one.
        if let Some(v) = &mut self.verifier {
            v.update(&buf[..block.consumed]);
        }
        self.next_seq += 1;
        Ok(Step::Block(block))
    }

    fn parse_single_block(&mut self, buf: &[u8]) -> Result<Step, Error> {
        let header = match SingleBlockHeader::read(buf)? {
            FrameRead::NeedMore(n) => return Ok(Step::NeedMore(n)),
            FrameRead::Header(h) => h,
        };
        if header.len > self.max_body_len {
            return Err(Error::Limit {
                what: Limit::NonFramedBodyLength,
                max: self.max_body_len,
            });
        }
        let end = usize::try_from(header.block_wire_len()).unwrap_or(usize::MAX);
        let (kind, seq) = (BlockKind::SingleBlock, SingleBlockHeader::SEQ);
        self.parse_last(buf, kind, seq, SingleBlockHeader::WIRE_LEN, end)
    }

    /// The last block (`buf[..end]`, ciphertext from `ct_start`) and, for signed suites, the
    /// footer, whose signature is verified here, before anything is released.
    fn parse_last(
        &mut self,
        buf: &[u8],
        kind: BlockKind,
        seq: u32,
        ct_start: usize,
        end: usize,
    ) -> Result<Step, Error> {
        let mut consumed = end;
        if self.verifier.is_some() {
            if buf.len() < end + 2 {
                return Ok(Step::NeedMore(end + 2));
            }
            let sig_len = u16::from_be_bytes([buf[end], buf[end + 1]]) as usize;
            consumed = end + 2 + sig_len;
        }
        if buf.len() < consumed {
            return Ok(Step::NeedMore(consumed));
        }
        if let Some(mut v) = self.verifier.take() {
            v.update(&buf[..end]);
            v.verify(&buf[end + 2..consumed])
                .map_err(|_| Error::DecryptionFailed)?;
        }
        self.done = true;
        Ok(Step::Block(Block {
            consumed,
            sealed: ct_start..end,
            kind,
            seq,
            len: (end - ct_start - TAG_LEN) as u64,
            last: true,
        }))
    }
}

/// Test sealers under keys of their own, and the check of what they write.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::crypto::AeadBackend;
    use crate::format::framed_body_len;

    /// What opens a test sealer's output.
    pub(crate) struct TestKeys {
        key: Vec<u8>,
        message_id: Vec<u8>,
        frame_length: u32,
    }

    /// A sealer under a random content key and a fresh message ID: every test seals under keys
    /// of its own, so no (key, IV) pair repeats in the test process (`nonce-guard` checks).
    pub(crate) fn sealer(backend: AeadBackend, frame_length: u32) -> (Sealer, TestKeys) {
        let mut key = vec![0u8; 32];
        random_bytes(&mut key).unwrap();
        let id = MessageId::generate(AlgorithmSuite::Aes256GcmHkdfSha512CommitKey).unwrap();
        let keys = TestKeys {
            message_id: id.as_bytes().to_vec(),
            key,
            frame_length,
        };
        let aead = AeadKey::new(backend, &keys.key).unwrap();
        (Sealer::new(aead, id, frame_length, None), keys)
    }

    impl TestKeys {
        pub(crate) fn key(&self, backend: AeadBackend) -> AeadKey {
            AeadKey::new(backend, &self.key).unwrap()
        }

        pub(crate) fn opener(&self, backend: AeadBackend) -> Opener {
            let cipher = FrameCipher::new(
                self.key(backend),
                self.message_id.clone(),
                self.frame_length,
            );
            Opener::new(cipher, ContentType::Framed, None, 0)
        }

        /// Parses the whole of `body` and opens it on `workers`; returns the plaintext.
        pub(crate) fn open_all(
            &self,
            backend: AeadBackend,
            mut body: Vec<u8>,
            workers: &Workers,
        ) -> Vec<u8> {
            let mut opener = self.opener(backend);
            let mut blocks = Vec::new();
            let mut at = 0;
            while !opener.is_done() {
                match opener.parse(&body[at..]).unwrap() {
                    Step::NeedMore(_) => panic!("the whole body is present"),
                    Step::Block(b) => {
                        let n = b.consumed;
                        blocks.push(b.shifted(at));
                        at += n;
                    }
                }
            }
            assert_eq!(at, body.len());
            opener.open_blocks(&mut body, &blocks, workers).unwrap();
            blocks
                .iter()
                .flat_map(|b| body[b.plaintext()].to_vec())
                .collect()
        }

        /// Asserts that `body` is the one body these keys give for `plaintext`. AES-GCM is
        /// deterministic, and the opener checks every frame's number, IV, length and tag: a
        /// body it opens whole to `plaintext`, at the length of full frames and then a final
        /// frame with the rest, is byte for byte the only one. So tests compare outputs this
        /// way rather than seal the same (key, IV) pairs twice.
        pub(crate) fn assert_body_of(&self, body: &[u8], plaintext: &[u8], what: &str) {
            let len = framed_body_len(plaintext.len() as u64, self.frame_length);
            assert_eq!(body.len() as u64, len, "{what}: body length");
            let opened = self.open_all(AeadBackend::AwsLc, body.to_vec(), &Workers::Caller);
            assert!(opened == plaintext, "{what}: plaintext");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{self, TestKeys};
    use super::*;
    use crate::crypto::AeadBackend;

    /// Seals `pt` frame by frame, with or without a pool, under keys of its own.
    fn sealed_body(
        backend: AeadBackend,
        pt: &[u8],
        frame: usize,
        pool: &Workers,
    ) -> (Vec<u8>, TestKeys) {
        let (mut sealer, keys) = testing::sealer(backend, frame as u32);
        let full = pt.len() / frame;
        let mut body = Vec::new();
        for chunk in pt.chunks(frame).take(full) {
            body.resize(body.len() + REGULAR_FRAME_PREFIX, 0);
            body.extend_from_slice(chunk);
            body.resize(body.len() + TAG_LEN, 0);
        }
        sealer.seal_frames(&mut body, None, pool).unwrap();
        let mut last = vec![0u8; FINAL_FRAME_PREFIX];
        last.extend_from_slice(&pt[full * frame..]);
        last.resize(last.len() + TAG_LEN, 0);
        let footer = sealer.seal_last(&mut last).unwrap();
        body.extend_from_slice(&last);
        body.extend_from_slice(&footer);
        (body, keys)
    }

    #[test]
    fn backends_and_thread_counts_write_the_one_body() {
        let pt: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
        let pool = Workers::new(3);
        for &sealer in AeadBackend::all() {
            for workers in [&Workers::Caller, &pool] {
                let (body, keys) = sealed_body(sealer, &pt, 512, workers);
                let what = format!(
                    "{sealer:?} sealing, parallel: {}",
                    !matches!(workers, Workers::Caller)
                );
                keys.assert_body_of(&body, &pt, &what);
                for &opener in AeadBackend::all() {
                    assert_eq!(keys.open_all(opener, body.clone(), &pool), pt, "{what}");
                }
            }
        }
    }

    #[test]
    fn a_sealer_seals_one_header_tag() {
        let (mut sealer, keys) = testing::sealer(AeadBackend::AwsLc, 64);
        let mut header = b"header".to_vec();
        sealer.seal_header(&mut header, b"aad").unwrap();
        let mut tag = header[6..].to_vec();
        let key = keys.key(AeadBackend::AwsLc);
        key.open_in_place(&HEADER_IV, b"aad", &mut tag).unwrap();
        assert!(matches!(
            sealer.seal_header(&mut header, b"another header"),
            Err(Error::Crypto(_))
        ));
        assert_eq!(header.len(), 6 + TAG_LEN, "no second tag");
    }

    #[test]
    fn opener_asks_for_exactly_what_it_needs() {
        let (body, keys) = sealed_body(AeadBackend::AwsLc, &[5u8; 100], 64, &Workers::Caller);
        let mut opener = keys.opener(AeadBackend::AwsLc);
        let mut buf = body.clone();
        assert_eq!(opener.parse(&buf[..2]).unwrap(), Step::NeedMore(4));
        assert_eq!(
            opener.parse(&buf[..10]).unwrap(),
            Step::NeedMore(16 + 64 + 16)
        );
        let first = opener.open(&mut buf).unwrap().unwrap();
        assert_eq!((first.consumed, first.last), (96, false));
        let rest = &mut buf[96..];
        assert_eq!(
            opener.parse(&rest[..8]).unwrap(),
            Step::NeedMore(FINAL_FRAME_PREFIX)
        );
        assert_eq!(
            opener.parse(&rest[..30]).unwrap(),
            Step::NeedMore(24 + 36 + 16)
        );
        assert!(opener.open(rest).unwrap().unwrap().last);
        assert!(
            opener.parse(&[0u8; 4]).is_err(),
            "nothing after the last block"
        );
    }

    #[test]
    fn a_bad_tag_in_any_block_of_a_batch_fails_the_batch() {
        let pt = vec![1u8; 64 * 8];
        let (mut body, keys) = sealed_body(AeadBackend::AwsLc, &pt, 64, &Workers::Caller);
        body[96 * 5 + 20] ^= 1;
        let mut opener = keys.opener(AeadBackend::AwsLc);
        let mut blocks = Vec::new();
        let mut at = 0;
        for _ in 0..8 {
            let Step::Block(b) = opener.parse(&body[at..]).unwrap() else {
                panic!()
            };
            let n = b.consumed;
            blocks.push(b.shifted(at));
            at += n;
        }
        let pool = Workers::new(2);
        assert!(matches!(
            opener.open_blocks(&mut body, &blocks, &pool),
            Err(Error::DecryptionFailed)
        ));
    }

    #[test]
    fn a_message_over_the_frame_count_is_a_limit_error() {
        let (mut sealer, _keys) = testing::sealer(AeadBackend::AwsLc, 16);
        sealer.next_seq = MAX_FRAMES - 1;
        let slot = REGULAR_FRAME_PREFIX + 16 + TAG_LEN;
        let mut frames = vec![0u8; 2 * slot];
        let err = sealer
            .seal_frames(&mut frames, None, &Workers::Caller)
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Limit {
                    what: Limit::FrameCount,
                    max
                } if max == u64::from(MAX_FRAMES)
            ),
            "{err:?}"
        );
        assert_eq!(err.kind(), crate::ErrorKind::Limit);
        assert!(err.to_string().contains("Encryptor::frame_length"), "{err}");
    }

    #[test]
    fn a_non_framed_body_over_the_buffer_limit_is_a_limit_error() {
        // Only the block's prefix is parsed: no key is used.
        let key = AeadKey::new(AeadBackend::AwsLc, &[7; 32]).unwrap();
        let cipher = FrameCipher::new(key, vec![0; 32], 0);
        let mut opener = Opener::new(cipher, ContentType::NonFramed, None, 100);
        let mut prefix = crate::format::frame_iv(1).to_vec();
        prefix.extend_from_slice(&101u64.to_be_bytes());
        let err = opener.parse(&prefix).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Limit {
                    what: Limit::NonFramedBodyLength,
                    max: 100
                }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("Decryptor::max_buffered_len"),
            "{err}"
        );
    }
}
