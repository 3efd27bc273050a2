//! The decrypting side's buffer discipline, shared by the sync and async readers: where input
//! goes, when plaintext may be released, and the end-of-message checks. Frames open straight
//! into the caller's buffer when it is large enough (out of place, on the workers), otherwise
//! in place and copied out. No I/O here: blocking adaptors may lend a read function, run on
//! their own thread while the workers decrypt.

use std::collections::VecDeque;
use std::ops::Range;

use super::encoder::{batch_frames, Workers};
use super::machine::{Block, Opener, Step};
use crate::format::{FormatError, Header, HeaderLimits};
use crate::Error;

/// Bytes asked of the underlying reader at a time when nothing larger is needed.
pub(crate) const READ_CHUNK: usize = 64 * 1024;
/// Fewest ciphertext bytes in one batch for it to be opened on several threads.
const PARALLEL_MIN: usize = 512 * 1024;

/// A blocking read from the source, as `Read::read`.
pub(crate) type Fill<'a> = &'a mut dyn FnMut(&mut [u8]) -> std::io::Result<usize>;

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

/// Incrementally reads a header from a growing buffer.
#[derive(Debug, Default)]
pub(crate) struct HeaderBuffer {
    buf: Vec<u8>,
    len: usize,
}

impl HeaderBuffer {
    /// Space to read header bytes into.
    pub(crate) fn input_space(&mut self) -> &mut [u8] {
        if self.buf.len() - self.len < 512 {
            self.buf.resize(self.len + 4096, 0);
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
        match Header::parse(&self.buf[..self.len], limits)? {
            Some((header, used)) => Ok(Some((header, self.buf[used..self.len].to_vec()))),
            None if n == 0 => Err(FormatError::Truncated.into()),
            None => Ok(None),
        }
    }
}

/// One read from a blocking source, retried when interrupted by a signal.
pub(crate) fn read_retrying<R: std::io::Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Reads a header from a blocking source (retrying interrupted reads); returns it and the bytes
/// read past it.
pub(crate) fn read_header<R: std::io::Read>(
    r: &mut R,
    limits: &HeaderLimits,
) -> Result<(Header, Vec<u8>), Error> {
    let mut hb = HeaderBuffer::default();
    loop {
        let n = read_retrying(r, hb.input_space())?;
        if let Some(done) = hb.input_filled(n, limits)? {
            return Ok(done);
        }
    }
}

/// The body's buffer and release rules on top of the [`Opener`].
pub(crate) struct BodyDecoder {
    opener: Opener,
    buf: Vec<u8>,
    /// Unprocessed ciphertext is `buf[start..end]`.
    start: usize,
    end: usize,
    /// How many bytes from `start` the opener asked for.
    need: usize,
    /// Plaintext ready to release: ranges of `held` when holding, else of `buf`.
    ready: VecDeque<Range<usize>>,
    /// Signed messages (unless the caller opted out) keep all plaintext here until the
    /// signature verifies.
    hold: bool,
    held: Vec<u8>,
    max_held: usize,
    /// The last block is open; its plaintext waits until the source is known to end there.
    awaiting_eof: bool,
    last: Option<Range<usize>>,
    probe: [u8; 1],
    complete: bool,
    batch_frames: usize,
    /// Largest read: a batch of frames, reached only as the message proves that large.
    max_read: usize,
    total_in: usize,
    /// Where the next input is read while a batch opens (blocking adaptors, with workers).
    spare: Vec<u8>,
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
        BodyDecoder {
            opener,
            buf: leftover,
            start: 0,
            end,
            need: 0,
            ready: VecDeque::new(),
            hold,
            held: Vec::new(),
            max_held,
            awaiting_eof: false,
            last: None,
            probe: [0],
            complete: false,
            batch_frames,
            max_read: READ_CHUNK.max(batch_frames * slot),
            total_in: 0,
            spare: Vec::new(),
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

    /// Processes buffered input as far as it goes.
    pub(crate) fn advance(&mut self) -> Result<Need, Error> {
        loop {
            if !self.available().is_empty() {
                return Ok(Need::Output);
            }
            if self.ready.pop_front().is_some() {
                continue;
            }
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
            if !self.open_batch()? {
                return Ok(Need::Input);
            }
        }
    }

    /// Parses the complete blocks buffered (a batch at most), opens them together, and queues
    /// their plaintext. Returns false when not even one block is complete.
    fn open_batch(&mut self) -> Result<bool, Error> {
        let pos = self.parse_blocks(self.batch_frames)?;
        if self.blocks.is_empty() {
            return Ok(false);
        }
        let workers = self.workers_for(pos);
        self.opener
            .open_blocks(&mut self.buf, &self.blocks, &workers)?;
        self.start = pos;
        let blocks = std::mem::take(&mut self.blocks);
        let queued = blocks.iter().try_for_each(|b| self.queue(b));
        self.blocks = blocks;
        queued?;
        Ok(true)
    }

    /// Opens whole regular frames straight from the buffered ciphertext into `out` (out of
    /// place, on the workers: no copy of the plaintext after the decryption), when nothing
    /// waits to be handed out, plaintext needs no holding back, and `out` has room for a frame.
    /// Returns how many bytes of `out` it filled: 0 when that path does not apply now, and the
    /// adaptor goes on with [`advance`](Self::advance).
    ///
    /// With `fill` (a blocking source) and workers running, the next input is read by `fill`
    /// on the caller's thread into a second buffer while the workers open this batch, so the
    /// reading and the decrypting overlap. `fill` reads like `Read::read`; its 0 (the end of
    /// input) is left for the next ordinary read to find.
    pub(crate) fn read_direct(
        &mut self,
        out: &mut [u8],
        fill: Option<Fill<'_>>,
    ) -> Result<usize, Error> {
        if !self.can_read_direct(out.len()) {
            return Ok(0);
        }
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
                Some(fill) if last.is_none() => {
                    self.open_direct_overlapped(pos, &mut out[..n], fill)?;
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

    /// Opens the parsed blocks (ending at `pos`) into `out` on the workers while `fill` reads
    /// the next input into the spare buffer, behind a copy of the unparsed tail; then the
    /// buffers swap.
    fn open_direct_overlapped(
        &mut self,
        pos: usize,
        out: &mut [u8],
        fill: Fill<'_>,
    ) -> Result<(), Error> {
        let workers = self.workers_for(pos);
        let tail = self.end - pos;
        // Ask for enough that a full read ends the buffer on a frame boundary: the next batch
        // then leaves no partial frame behind to copy (up to a frame per batch otherwise).
        let slot = self.opener.regular_frame_len();
        let want = self.total_in.clamp(READ_CHUNK, self.max_read);
        let chunk = (tail + want).next_multiple_of(slot) - tail;
        if self.spare.len() < tail + chunk {
            self.spare.resize(tail + chunk, 0);
        }
        self.spare[..tail].copy_from_slice(&self.buf[pos..self.end]);
        let (opener, buf, blocks) = (&self.opener, &self.buf, &self.blocks);
        let space = &mut self.spare[tail..tail + chunk];
        let (opened, read) = workers.overlap(
            || opener.open_blocks_into(buf, blocks, out, &workers),
            || fill(space),
        );
        opened?;
        let read = read?;
        std::mem::swap(&mut self.buf, &mut self.spare);
        self.start = 0;
        self.end = tail + read;
        self.total_in += read;
        Ok(())
    }

    /// Whether [`read_direct`](Self::read_direct) into `room` bytes may fill any.
    pub(crate) fn can_read_direct(&self, room: usize) -> bool {
        let frame = self.opener.frame_length();
        !self.hold
            && frame > 0
            && room >= frame
            && self.ready.is_empty()
            && !self.awaiting_eof
            && !self.opener.is_done()
    }

    /// Parses up to `limit` complete blocks from the buffered ciphertext into `self.blocks`;
    /// returns where the parsed bytes end.
    fn parse_blocks(&mut self, limit: usize) -> Result<usize, Error> {
        self.blocks.clear();
        let mut pos = self.start;
        while self.blocks.len() < limit {
            match self.opener.parse(&self.buf[pos..self.end])? {
                Step::NeedMore(n) => {
                    self.need = n;
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
                return Err(Error::InvalidArgument(format!(
                    "this signed message is larger than {} bytes, the most that is held back \
                     until its signature verifies: raise max_buffered_len, or opt in to \
                     dangerous_release_unverified_signed_frames",
                    self.max_held
                )));
            }
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

    /// Where the adaptor should read input to.
    pub(crate) fn input_space(&mut self) -> &mut [u8] {
        if self.awaiting_eof {
            return &mut self.probe;
        }
        let have = self.end - self.start;
        let chunk = self.total_in.clamp(READ_CHUNK, self.max_read);
        if self.start > 0 && (self.buf.len() - self.start < self.need.max(chunk)) {
            self.buf.copy_within(self.start..self.end, 0);
            self.start = 0;
            self.end = have;
        }
        let want = self.start + self.need.max(have + chunk);
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        &mut self.buf[self.end..]
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
        self.end += n;
        self.total_in += n;
        Ok(())
    }
}
