//! The decrypting side's buffer discipline, shared by the sync and async readers: the header
//! buffer ([`HeaderBuffer`]), where body input goes, when plaintext may be released, and the
//! end-of-message checks. Frames open straight into the caller's buffer when it is large
//! enough (out of place, on the workers), otherwise in place and copied out. No I/O here:
//! blocking adaptors may lend a read function, run on the caller's thread while the workers
//! decrypt; blocking header reads are in `header_io.rs`. See `docs/PIPELINE.md`.

use std::collections::VecDeque;
use std::ops::Range;

use super::encoder::{reserve_zeroizing, Wiped};
use super::machine::{Block, Opener, Step};
use super::options::STREAM_BUFFER_LIMIT;
use super::workers::{batch_frames, Workers};
use crate::format::{FormatError, Header, HeaderLimits, HeaderStep};
use crate::{Error, Limit};

/// Bytes asked of the underlying reader at a time when nothing larger is needed.
pub(crate) const READ_CHUNK: usize = 64 * 1024;
/// Fewest ciphertext bytes in one batch for it to be opened on several threads.
const PARALLEL_MIN: usize = 512 * 1024;

/// A blocking read from the source, as `Read::read`.
pub(crate) type Fill<'a, 'f> = &'a mut (dyn FnMut(&mut [u8]) -> std::io::Result<usize> + 'f);

/// What a reader adaptor must do next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Need {
    /// `available()` holds plaintext to hand out.
    Output,
    /// Read from the source into `input_space()` and report with `input_filled`.
    Input,
    /// The message is complete and verified; every byte was handed out.
    Done,
}

/// Incrementally reads a header from a growing buffer. It parses again only once the bytes
/// the last parse asked for (the next length-prefixed field) are there, so a header that
/// arrives a byte at a time is parsed about once per field, not once per byte.
#[derive(Debug, Default)]
pub(crate) struct HeaderBuffer {
    buf: Vec<u8>,
    len: usize,
    /// Bytes the last parse needed to get further.
    need: usize,
    /// Parses run so far.
    parses: usize,
}

impl HeaderBuffer {
    /// Space to read header bytes into.
    pub(crate) fn input_space(&mut self) -> &mut [u8] {
        if self.buf.len() < self.need || self.buf.len() - self.len < 512 {
            self.buf.resize(self.need.max(self.len + 4096), 0);
        }
        &mut self.buf[self.len..]
    }

    /// Records `n` bytes read; `n == 0` is the end of input. Returns the header and the bytes
    /// read past it once it is complete.
    pub(crate) fn input_filled(
        &mut self,
        n: usize,
        limits: &HeaderLimits,
    ) -> Result<Option<(Header, Vec<u8>)>, Error> {
        self.len += n;
        if n > 0 && self.len < self.need {
            return Ok(None);
        }
        self.parses += 1;
        match Header::parse_step(&self.buf[..self.len], limits)? {
            HeaderStep::Done(header, used) => Ok(Some((header, self.buf[used..self.len].to_vec()))),
            HeaderStep::NeedMore(_) if n == 0 => Err(FormatError::Truncated.into()),
            HeaderStep::NeedMore(need) => {
                self.need = need;
                Ok(None)
            }
        }
    }

    /// How many times the header was parsed.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn parses(&self) -> usize {
        self.parses
    }
}

/// The body's buffer and release rules on top of the [`Opener`].
///
/// Memory: ciphertext is read a batch at a time (at most [`BATCH_LIMIT`](super::workers::BATCH_LIMIT) bytes, or one block),
/// and only once the buffered blocks are used up: with a blocking source, the next batch is
/// read into a second buffer while the workers open the current one. So two batches at most,
/// whatever the thread count and the caller's buffer size; work is linear in the message size
/// (a partial block moves once per batch).
pub(crate) struct BodyDecoder {
    opener: Opener,
    /// Unprocessed ciphertext is `buf[start..end]`; plaintext opened in place is handed out
    /// from `buf` too.
    buf: Wiped,
    start: usize,
    end: usize,
    /// How many bytes from `start` the opener asked for, when the last parse ran out of input.
    need: usize,
    /// Whether the last parse ran out of buffered input (rather than reaching its limit).
    short: bool,
    /// Input read while the last batch opened in place: the ciphertext goes on in
    /// `ahead[..n]`, and `buf` is kept until its plaintext is handed out.
    ahead: Wiped,
    ahead_len: Option<usize>,
    /// Plaintext ready to release: ranges of `held` when holding, else of `buf`.
    ready: VecDeque<Range<usize>>,
    /// Signed messages (unless the caller opted out) keep all plaintext here until the
    /// signature verifies.
    hold: bool,
    held: Wiped,
    max_held: usize,
    /// The last block is open; its plaintext waits until the source is known to end there.
    awaiting_eof: bool,
    last: Option<Range<usize>>,
    probe: [u8; 1],
    complete: bool,
    batch_frames: usize,
    /// Bytes of a batch of regular frames: the most a buffer is filled to (unless one block
    /// needs more).
    batch_bytes: usize,
    /// Whether two buffers (one opening, one reading ahead) fit [`STREAM_BUFFER_LIMIT`].
    read_ahead: bool,
    /// Bytes the last read asked of the source, and whether it gave fewer: a source that
    /// stops short (a pipe, a peer that waits) is not read ahead of, so that the plaintext
    /// already verified is handed out before the next read, which may block.
    asked: usize,
    source_short: bool,
    /// A read ahead that failed after its batch opened: reported once that plaintext is out.
    read_error: Option<std::io::Error>,
    /// Fewest frames the caller's buffer must take for frames to open straight into it: one
    /// per worker, so that the direct path does not leave the workers idle.
    direct_frames: usize,
    total_in: usize,
    /// Bytes of ciphertext moved between or within buffers (the partial block behind a batch).
    moved: usize,
    threads: usize,
    workers: Option<Workers>,
    blocks: Vec<Block>,
}

// By hand: the buffers hold plaintext, which has no place in logs.
impl std::fmt::Debug for BodyDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyDecoder")
            .field("buffered", &(self.end - self.start))
            .field("hold", &self.hold)
            .field("complete", &self.complete)
            .finish_non_exhaustive()
    }
}

impl BodyDecoder {
    pub(crate) fn new(
        opener: Opener,
        leftover: Vec<u8>,
        hold: bool,
        max_held: usize,
        threads: usize,
    ) -> Self {
        let end = leftover.len();
        let slot = opener.regular_frame_len();
        let batch_frames = batch_frames(slot, threads);
        let batch_bytes = if slot == 0 {
            READ_CHUNK
        } else {
            // Saturating: a frame length raised near `usize::MAX` on 32-bit must not wrap.
            batch_frames.saturating_mul(slot)
        };
        BodyDecoder {
            opener,
            buf: Wiped(leftover),
            start: 0,
            end,
            need: 0,
            short: true,
            ahead: Wiped::default(),
            ahead_len: None,
            ready: VecDeque::new(),
            hold,
            held: Wiped::default(),
            max_held,
            awaiting_eof: false,
            last: None,
            probe: [0],
            complete: false,
            batch_frames,
            batch_bytes,
            read_ahead: batch_bytes.saturating_mul(2) <= STREAM_BUFFER_LIMIT,
            asked: 0,
            source_short: false,
            read_error: None,
            direct_frames: batch_frames.min(threads).max(1),
            total_in: 0,
            moved: 0,
            threads,
            workers: None,
            blocks: Vec::new(),
        }
    }

    /// Plaintext that may be handed out now.
    pub(crate) fn available(&self) -> &[u8] {
        match self.ready.front() {
            Some(r) if self.hold => &self.held[r.clone()],
            Some(r) => &self.buf[r.clone()],
            None => &[],
        }
    }

    /// Marks `n` bytes of `available()` as handed out.
    pub(crate) fn consume(&mut self, n: usize) {
        if let Some(r) = self.ready.front_mut() {
            r.start += n.min(r.len());
            if r.start == r.end {
                self.ready.pop_front();
            }
        }
    }

    /// Processes buffered input as far as it goes. With `fill` (a blocking source, as in
    /// [`read_direct`](Self::read_direct)), the next input is read while a batch opens.
    pub(crate) fn advance(&mut self, mut fill: Option<Fill<'_, '_>>) -> Result<Need, Error> {
        loop {
            if !self.available().is_empty() {
                return Ok(Need::Output);
            }
            if self.ready.pop_front().is_some() {
                continue;
            }
            self.settle();
            if self.complete {
                return Ok(Need::Done);
            }
            if self.awaiting_eof {
                if self.end > self.start {
                    return Err(FormatError::TrailingBytes.into());
                }
                return Ok(Need::Input);
            }
            if self.opener.is_done() {
                self.complete = true;
                continue;
            }
            if let Some(e) = self.read_error.take() {
                return Err(e.into());
            }
            if !self.open_batch(fill.as_deref_mut())? {
                return Ok(Need::Input);
            }
        }
    }

    /// Once the plaintext of `buf` is handed out, the ciphertext read ahead becomes the buffer.
    fn settle(&mut self) {
        if self.ready.is_empty() || self.hold {
            if let Some(n) = self.ahead_len.take() {
                debug_assert!(self.last.is_none());
                std::mem::swap(&mut self.buf, &mut self.ahead);
                self.start = 0;
                self.end = n;
            }
        }
    }

    /// Parses the complete blocks buffered (a batch at most), opens them together in place
    /// (reading the next input beside, when `fill` is given and it is needed), and queues their
    /// plaintext. Returns false when not even one block is complete.
    fn open_batch(&mut self, fill: Option<Fill<'_, '_>>) -> Result<bool, Error> {
        let pos = self.parse_blocks(self.batch_frames)?;
        if self.blocks.is_empty() {
            return Ok(false);
        }
        match fill {
            Some(fill) if self.may_read_ahead() => self.open_reading_ahead(pos, None, fill)?,
            _ => {
                let workers = self.workers_for(pos);
                self.opener
                    .open_blocks(&mut self.buf, &self.blocks, &workers)?;
                self.start = pos;
            }
        }
        let blocks = std::mem::take(&mut self.blocks);
        let queued = blocks.iter().try_for_each(|b| self.queue(b));
        self.blocks = blocks;
        queued?;
        Ok(true)
    }

    /// Whether the next input should be read while the parsed blocks open: the buffer ran out
    /// before the next block, more blocks follow, two buffers fit the limit, and the source
    /// filled the last read whole.
    fn may_read_ahead(&self) -> bool {
        self.short
            && self.read_ahead
            && !self.source_short
            && self.read_error.is_none()
            && !self.blocks.last().is_some_and(|b| b.last)
    }

    /// Opens whole regular frames straight from the buffered ciphertext into `out` (out of
    /// place, on the workers: no copy of the plaintext after the decryption), when nothing
    /// waits to be handed out, plaintext needs no holding back, and `out` has room for a frame
    /// per worker. Returns how many bytes of `out` it filled: 0 when that path does not apply
    /// now, and the adaptor goes on with [`advance`](Self::advance).
    ///
    /// With `fill` (a blocking source) and the buffered blocks used up, the next input is read
    /// by `fill` on the caller's thread into a second buffer while the workers open this batch,
    /// so the reading and the decrypting overlap. `fill` reads like `Read::read`; its 0 (the
    /// end of input) is left for the next ordinary read to find.
    pub(crate) fn read_direct(
        &mut self,
        out: &mut [u8],
        fill: Option<Fill<'_, '_>>,
    ) -> Result<usize, Error> {
        if !self.can_read_direct(out.len()) {
            return Ok(0);
        }
        self.settle();
        let frame = self.opener.frame_length();
        let pos = self.parse_blocks(self.batch_frames.min(out.len() / frame))?;
        // The final frame waits for the end of input like anywhere else: it goes to the queue.
        let last = match self.blocks.last() {
            Some(b) if b.last => self.blocks.pop(),
            _ => None,
        };
        let n = self.blocks.len() * frame;
        if n > 0 {
            match fill {
                Some(fill) if last.is_none() && self.may_read_ahead() => {
                    self.open_reading_ahead(pos, Some(&mut out[..n]), fill)?;
                    // Nothing of `buf` waits to be handed out: go on in the input read ahead.
                    self.settle();
                    return Ok(n);
                }
                _ => {
                    let workers = self.workers_for(pos);
                    self.opener.open_blocks_into(
                        &self.buf,
                        &self.blocks,
                        &mut out[..n],
                        &workers,
                    )?;
                }
            }
        }
        if let Some(b) = last {
            self.opener
                .open_blocks(&mut self.buf, std::slice::from_ref(&b), &Workers::Caller)?;
            self.queue(&b)?;
        }
        self.start = pos;
        Ok(n)
    }

    /// Opens the parsed blocks (ending at `pos`), into `out` or in place, on the workers while
    /// `fill` reads the next batch of input into `ahead`, behind a copy of the partial block
    /// left after them. `buf` then holds no ciphertext; [`settle`](Self::settle) makes `ahead`
    /// the buffer once `buf`'s plaintext is handed out.
    fn open_reading_ahead(
        &mut self,
        pos: usize,
        out: Option<&mut [u8]>,
        fill: Fill<'_, '_>,
    ) -> Result<(), Error> {
        debug_assert!(self.ahead_len.is_none());
        let workers = self.workers_for(pos);
        let tail = self.end - pos;
        let target = self.fill_target(tail).max(tail + 1);
        self.grow(true, target);
        self.ahead[..tail].copy_from_slice(&self.buf[pos..self.end]);
        self.moved += tail;
        let (opener, blocks) = (&self.opener, &self.blocks);
        let buf = &mut self.buf;
        let space = &mut self.ahead[tail..target];
        let (opened, read) = workers.overlap(
            || match out {
                Some(out) => opener.open_blocks_into(buf, blocks, out, &workers),
                None => opener.open_blocks(buf, blocks, &workers),
            },
            || fill(space),
        );
        opened?;
        self.start = pos;
        self.end = pos;
        // The batch opened: its plaintext goes out first, a failed read is reported after it.
        let read = read.unwrap_or_else(|e| {
            self.read_error = Some(e);
            0
        });
        self.source_short = read < target - tail;
        self.total_in += read;
        self.ahead_len = Some(tail + read);
        Ok(())
    }

    /// Whether [`read_direct`](Self::read_direct) into `room` bytes may fill any.
    pub(crate) fn can_read_direct(&self, room: usize) -> bool {
        let frame = self.opener.frame_length();
        !self.hold
            && frame > 0
            && room / frame >= self.direct_frames
            && self.ready.is_empty()
            && !self.awaiting_eof
            && !self.opener.is_done()
            && self.read_error.is_none()
    }

    /// Parses up to `limit` complete blocks from the buffered ciphertext into `self.blocks`;
    /// returns where the parsed bytes end.
    fn parse_blocks(&mut self, limit: usize) -> Result<usize, Error> {
        self.blocks.clear();
        self.short = false;
        let mut pos = self.start;
        // Nothing new since the opener last asked for more: no block can be complete.
        if self.end - pos < self.need {
            self.short = true;
            return Ok(pos);
        }
        self.need = 0;
        while self.blocks.len() < limit {
            match self.opener.parse(&self.buf[pos..self.end])? {
                Step::NeedMore(n) => {
                    self.need = n;
                    self.short = true;
                    break;
                }
                Step::Block(b) => {
                    let (at, last) = (pos, b.last);
                    pos += b.consumed;
                    self.blocks.push(b.shifted(at));
                    if last {
                        break;
                    }
                }
            }
        }
        // Stopped at the limit with less than a regular frame left: the next block needs input
        // too (a final frame there is found after the read, which then reads the end).
        self.short |= self.end - pos < self.opener.regular_frame_len();
        Ok(pos)
    }

    /// The workers for opening `buf[start..pos]`: threads start only for a batch worth them,
    /// so small messages never start any.
    fn workers_for(&mut self, pos: usize) -> Workers {
        if self.workers.is_none() && pos - self.start >= PARALLEL_MIN {
            self.workers = Some(Workers::new(self.threads));
        }
        self.workers.clone().unwrap_or_default()
    }

    /// Queues an opened block's plaintext (held back, or kept until the end of input).
    fn queue(&mut self, b: &Block) -> Result<(), Error> {
        let pt = b.plaintext();
        if self.hold {
            if self.held.len() + pt.len() > self.max_held {
                return Err(Error::Limit {
                    what: Limit::BufferedPlaintext,
                    max: self.max_held as u64,
                });
            }
            let len = self.held.len() + pt.len();
            reserve_zeroizing(&mut self.held, len, self.max_held);
            self.held.extend_from_slice(&self.buf[pt]);
        } else if b.last {
            self.last = Some(pt);
        } else {
            self.ready.push_back(pt);
        }
        if b.last {
            if self.hold {
                self.last = Some(0..self.held.len());
            }
            // The final plaintext waits until the source confirms nothing follows.
            self.awaiting_eof = true;
        }
        Ok(())
    }

    /// How far to fill a buffer with ciphertext (from the start of the unparsed input, of which
    /// `buffered` bytes are there): a batch once the message has proved that large (small
    /// messages keep small buffers), ending on a frame boundary once it holds a frame, so that a
    /// full read leaves no partial frame to move; what the opener asked for, doubling as bytes
    /// arrive: a declared frame length alone never sizes a buffer.
    fn fill_target(&self, buffered: usize) -> usize {
        let slot = self.opener.regular_frame_len();
        let grown = self
            .total_in
            .clamp(READ_CHUNK, self.batch_bytes.max(READ_CHUNK));
        let target = if slot == 0 || grown < slot {
            grown
        } else {
            grown.next_multiple_of(slot).min(self.batch_bytes)
        };
        target.max(self.need.min(grown.max(buffered.saturating_mul(2))))
    }

    /// Where the adaptor should read input to. Only asked when less than a block is buffered
    /// (see [`advance`](Self::advance)): that partial block moves to the front, and the buffer
    /// is filled up to a batch.
    pub(crate) fn input_space(&mut self) -> &mut [u8] {
        if self.awaiting_eof {
            self.asked = 1;
            return &mut self.probe;
        }
        debug_assert!(self.ahead_len.is_none() && self.ready.is_empty());
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.moved += self.end - self.start;
            self.end -= self.start;
            self.start = 0;
        }
        let target = self.fill_target(self.end).max(self.end + 1);
        self.grow(false, target);
        self.asked = target - self.end;
        &mut self.buf[self.end..target]
    }

    /// Records `n` bytes read into `input_space()`; `0` means the source ended.
    pub(crate) fn input_filled(&mut self, n: usize) -> Result<(), Error> {
        if self.awaiting_eof {
            if n > 0 {
                return Err(FormatError::TrailingBytes.into());
            }
            self.awaiting_eof = false;
            self.ready.extend(self.last.take());
            return Ok(());
        }
        if n == 0 {
            return Err(FormatError::Truncated.into());
        }
        self.source_short = n < self.asked;
        self.end += n;
        self.total_in += n;
        Ok(())
    }

    /// Grows `buf` (or `ahead`) to at least `len` bytes, within a batch (or the one block that
    /// needs more), zeroizing what it leaves behind.
    fn grow(&mut self, ahead: bool, len: usize) {
        let v = if ahead {
            &mut self.ahead
        } else {
            &mut self.buf
        };
        reserve_zeroizing(v, len, self.batch_bytes.max(len));
        if v.len() < len {
            v.resize(len, 0);
        }
    }

    /// Bytes of ciphertext moved between or within the buffers so far.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn bytes_moved(&self) -> usize {
        self.moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{
        AlgorithmSuite, ContentType, EncryptedDataKey, EncryptionContext, HeaderBody,
    };

    /// A v2 header of about 1 MiB: eight wrapped keys with 64 KiB fields.
    fn large_header() -> Vec<u8> {
        let edk = |i: u8| EncryptedDataKey {
            provider_id: "big".into(),
            provider_info: vec![i; 65_535],
            ciphertext: vec![!i; 65_535],
        };
        let body = HeaderBody {
            suite: AlgorithmSuite::Aes256GcmHkdfSha512CommitKey,
            message_id: vec![7; 32],
            context: EncryptionContext::new().with("k", "v".repeat(60_000)),
            encrypted_data_keys: (0..8).map(edk).collect(),
            content_type: ContentType::Framed,
            frame_length: 4096,
            commitment: Some([9; 32]),
        };
        let mut bytes = Vec::new();
        body.encode(&mut bytes).unwrap();
        bytes.extend_from_slice(&[0xEE; 16]);
        bytes
    }

    #[test]
    fn a_header_read_a_byte_at_a_time_is_parsed_once_per_field() {
        let header = large_header();
        assert!(header.len() > 1_000_000, "{}", header.len());
        let limits = HeaderLimits {
            max_encrypted_data_keys: 8,
            max_header_len: 2 << 20,
        };
        let mut stream = header.clone();
        stream.extend_from_slice(b"body");
        let mut hb = HeaderBuffer::default();
        // About six stops per wrapped key and a dozen more: not one per byte.
        let bound = 8 * 6 + 16;
        let mut done = None;
        for &byte in &stream {
            hb.input_space()[0] = byte;
            let step = hb.input_filled(1, &limits).unwrap();
            assert!(hb.parses() <= bound, "{} parses", hb.parses());
            if let Some(d) = step {
                done = Some(d);
                break;
            }
        }
        let (parsed, leftover) = done.expect("the header completes");
        assert_eq!(parsed.to_bytes(), header);
        assert!(leftover.is_empty());
        assert!(hb.parses() >= 8, "{} parses", hb.parses());
    }

    #[test]
    fn a_truncated_header_still_fails_at_the_end_of_input() {
        let header = large_header();
        let limits = HeaderLimits {
            max_encrypted_data_keys: 8,
            max_header_len: 2 << 20,
        };
        let mut hb = HeaderBuffer::default();
        let mut rest = &header[..header.len() - 1];
        loop {
            let space = hb.input_space();
            let n = space.len().min(rest.len()).min(1000);
            space[..n].copy_from_slice(&rest[..n]);
            rest = &rest[n..];
            match hb.input_filled(n, &limits) {
                Ok(None) => assert!(n > 0),
                Ok(Some(_)) => panic!("a truncated header parsed"),
                Err(e) => {
                    assert!(matches!(e, Error::Format(FormatError::Truncated)), "{e}");
                    break;
                }
            }
        }
    }
}
