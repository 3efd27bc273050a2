//! The decrypting side's buffer discipline, shared by the sync and async readers: where input
//! goes, when plaintext may be released, and the end-of-message checks. No I/O here.

use std::ops::Range;

use super::machine::{Opener, Step};
use crate::format::{FormatError, Header, HeaderLimits};
use crate::Error;

/// Bytes asked of the underlying reader at a time when nothing larger is needed.
pub(crate) const READ_CHUNK: usize = 64 * 1024;

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

/// The body's buffer and release rules on top of the [`Opener`].
#[derive(Debug)]
pub(crate) struct BodyDecoder {
    opener: Opener,
    buf: Vec<u8>,
    /// Unprocessed ciphertext is `buf[start..end]`.
    start: usize,
    end: usize,
    /// How many bytes from `start` the opener asked for.
    need: usize,
    /// Plaintext ready to release, in `buf` or in `held`.
    ready: Range<usize>,
    ready_in_held: bool,
    /// Signed messages (unless the caller opted out) keep all plaintext here until the
    /// signature verifies.
    hold: bool,
    held: Vec<u8>,
    max_held: usize,
    /// The last block is open; its plaintext waits until the source is known to end there.
    awaiting_eof: bool,
    probe: [u8; 1],
    pending: Range<usize>,
    complete: bool,
}

impl BodyDecoder {
    pub(crate) fn new(opener: Opener, leftover: Vec<u8>, hold: bool, max_held: usize) -> Self {
        let end = leftover.len();
        BodyDecoder {
            opener,
            buf: leftover,
            start: 0,
            end,
            need: 0,
            ready: 0..0,
            ready_in_held: false,
            hold,
            held: Vec::new(),
            max_held,
            awaiting_eof: false,
            probe: [0],
            pending: 0..0,
            complete: false,
        }
    }

    /// Plaintext that may be handed out now.
    pub(crate) fn available(&self) -> &[u8] {
        if self.ready_in_held {
            &self.held[self.ready.clone()]
        } else {
            &self.buf[self.ready.clone()]
        }
    }

    /// Marks `n` bytes of `available()` as handed out.
    pub(crate) fn consume(&mut self, n: usize) {
        self.ready.start += n.min(self.ready.len());
    }

    /// Processes buffered input as far as it goes.
    pub(crate) fn advance(&mut self) -> Result<Need, Error> {
        loop {
            if !self.ready.is_empty() {
                return Ok(Need::Output);
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
            match self.opener.open(&mut self.buf[self.start..self.end])? {
                Step::NeedMore(n) => {
                    self.need = n;
                    return Ok(Need::Input);
                }
                Step::Block {
                    consumed,
                    plaintext,
                    last,
                } => {
                    let pt = self.start + plaintext.start..self.start + plaintext.end;
                    self.start += consumed;
                    if self.hold {
                        if self.held.len() + pt.len() > self.max_held {
                            return Err(Error::InvalidArgument(format!(
                                "this signed message is larger than {} bytes, the most that is \
                                 held back until its signature verifies: raise max_buffered_len, \
                                 or opt in to dangerous_release_unverified_signed_frames",
                                self.max_held
                            )));
                        }
                        self.held.extend_from_slice(&self.buf[pt]);
                        if last {
                            self.ready = 0..self.held.len();
                            self.ready_in_held = true;
                        }
                    } else {
                        self.ready = pt;
                    }
                    if last {
                        // Hold the final plaintext until the source confirms nothing follows.
                        self.awaiting_eof = true;
                        self.stash_ready();
                    }
                }
            }
        }
    }

    /// While waiting for the end of input, keep the final plaintext out of `available()`.
    fn stash_ready(&mut self) {
        self.pending = std::mem::replace(&mut self.ready, 0..0);
    }

    /// Where the adaptor should read input to.
    pub(crate) fn input_space(&mut self) -> &mut [u8] {
        if self.awaiting_eof {
            return &mut self.probe;
        }
        let have = self.end - self.start;
        if self.start > 0 && (self.buf.len() - self.start < self.need.max(READ_CHUNK)) {
            self.buf.copy_within(self.start..self.end, 0);
            self.start = 0;
            self.end = have;
        }
        let want = self.start + self.need.max(have + READ_CHUNK);
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
            self.ready = std::mem::replace(&mut self.pending, 0..0);
            return Ok(());
        }
        if n == 0 {
            return Err(FormatError::Truncated.into());
        }
        self.end += n;
        Ok(())
    }
}
