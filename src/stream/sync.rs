//! Blocking `std::io` adaptors over the framing state machine.

use std::io::{self, Read, Write};

use super::decoder::{BodyDecoder, Need};
use super::encoder::FrameEncoder;
use super::header_io::{read_header, read_retrying};
use super::message::{begin_decrypt, begin_encrypt};
use super::options::{Decryptor, Encryptor};
use crate::format::HeaderBody;
use crate::Error;

/// Encrypts everything written to it into `W`. Call [`finish`](Self::finish) at the end:
/// it writes the final frame (and the signature); without it the message is incomplete and
/// every reader will refuse it.
///
/// Frames are sealed a batch at a time (a few MiB at most, whatever the write size and the
/// thread count) and a sealed batch reaches `W` when the next batch is sealed (beside that
/// sealing, when several threads run), on `flush`, or on `finish`.
#[must_use = "call finish() to write the final frame; an unfinished message does not decrypt"]
#[derive(Debug)]
pub struct EncryptingWriter<W: Write> {
    inner: W,
    enc: FrameEncoder,
    poisoned: bool,
}

impl<W: Write> EncryptingWriter<W> {
    pub(crate) fn new(mut inner: W, header: &[u8], enc: FrameEncoder) -> Result<Self, Error> {
        inner.write_all(header)?;
        Ok(EncryptingWriter {
            inner,
            enc,
            poisoned: false,
        })
    }

    fn write_pending(&mut self) -> io::Result<()> {
        if !self.enc.pending().is_empty() {
            let result = self.inner.write_all(self.enc.pending());
            if result.is_err() {
                self.poisoned = true;
            }
            result?;
            self.enc.consume_pending();
        }
        Ok(())
    }

    /// Writes the final frame and the footer, flushes, and returns the inner writer.
    ///
    /// # Errors
    /// When writing fails, or after an earlier write failed (the message is then unusable).
    pub fn finish(mut self) -> Result<W, Error> {
        if !self.poisoned {
            self.write_pending()?;
        }
        let EncryptingWriter {
            mut inner,
            enc,
            poisoned,
        } = self;
        if poisoned {
            return Err(unfinishable());
        }
        inner.write_all(&enc.finish()?)?;
        inner.flush()?;
        Ok(inner)
    }

    /// The inner writer (writing to it directly corrupts the message).
    pub fn get_ref(&self) -> &W {
        &self.inner
    }
}

/// The error of `finish` after a failed write.
pub(crate) fn unfinishable() -> Error {
    Error::Misuse("an earlier write failed, so this message is incomplete: encrypt it again".into())
}

/// The error of a write or flush after a failed write.
pub(crate) fn poisoned() -> io::Error {
    Error::Misuse("an earlier write failed: this writer cannot go on".into()).into()
}

impl<W: Write> Write for EncryptingWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.poisoned {
            return Err(poisoned());
        }
        // Sealed frames are written out when the next batch is sealed (beside that sealing,
        // when the workers run), on flush, or on finish.
        let inner = &mut self.inner;
        let result = self
            .enc
            .write_draining(data, |pending| inner.write_all(pending))
            .map_err(io::Error::from);
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    /// Writes out the sealed frames and flushes the inner writer. A partly filled frame stays
    /// buffered: frames are sealed whole.
    fn flush(&mut self) -> io::Result<()> {
        if self.poisoned {
            return Err(poisoned());
        }
        self.write_pending()?;
        self.inner.flush()
    }
}

/// Decrypts a message read from `R`. Every byte it returns has been authenticated; a message
/// that ends early fails with [`io::ErrorKind::UnexpectedEof`], a tampered one with
/// [`io::ErrorKind::InvalidData`]. Reading to the end (`Ok(0)`) means the whole message,
/// including its signature, verified.
#[derive(Debug)]
pub struct DecryptingReader<R: Read> {
    inner: R,
    header: HeaderBody,
    body: BodyDecoder,
    poisoned: bool,
}

impl<R: Read> DecryptingReader<R> {
    pub(crate) fn new(mut inner: R, opts: &Decryptor<'_>) -> Result<Self, Error> {
        let (header, leftover) = read_header(&mut inner, &opts.header_limits())?;
        let opener = pollster::block_on(begin_decrypt(&header, opts))?;
        let hold = header.body.suite.signature().is_some() && !opts.release_unverified_signed;
        Ok(DecryptingReader {
            inner,
            body: BodyDecoder::new(opener, leftover, hold, opts.max_buffered_len, opts.threads),
            header: header.body,
            poisoned: false,
        })
    }

    /// The message header: suite, message ID, stored context, wrapped keys, frame length.
    pub fn header(&self) -> &HeaderBody {
        &self.header
    }

    /// The inner reader.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// The inner reader (reading from it directly loses the message's place).
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    fn step(&mut self, out: &mut [u8]) -> Result<usize, Error> {
        loop {
            let inner = &mut self.inner;
            let mut fill = |space: &mut [u8]| read_retrying(inner, space);
            let n = self.body.read_direct(out, Some(&mut fill))?;
            if n > 0 {
                return Ok(n);
            }
            match self.body.advance(Some(&mut fill))? {
                Need::Output => {
                    let avail = self.body.available();
                    let n = avail.len().min(out.len());
                    out[..n].copy_from_slice(&avail[..n]);
                    self.body.consume(n);
                    return Ok(n);
                }
                Need::Done => return Ok(0),
                Need::Input => {
                    let n = fill(self.body.input_space())?;
                    self.body.input_filled(n)?;
                }
            }
        }
    }
}

impl<R: Read> Read for DecryptingReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.poisoned {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "an earlier error ended this message; nothing more can be read",
            ));
        }
        if out.is_empty() {
            return Ok(0);
        }
        self.step(out).map_err(|e| {
            let e = io::Error::from(e);
            // A source that would block or timed out may be read again: the decoder stops at
            // a read, not in the middle of a block.
            self.poisoned = !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
            );
            e
        })
    }
}

impl<W: Write> EncryptingWriter<W> {
    /// [`Encryptor::writer`]: runs the keyring and writes the header to `inner` now.
    pub(crate) fn start(inner: W, opts: &Encryptor<'_>) -> Result<Self, Error> {
        let (header, sealer) = pollster::block_on(begin_encrypt(opts))?;
        EncryptingWriter::new(
            inner,
            &header,
            FrameEncoder::new(sealer, opts.threads, opts.plaintext_len),
        )
    }
}

/// [`Encryptor::encrypt`]: one message from a whole plaintext.
pub(crate) fn encrypt_whole(opts: &Encryptor<'_>, plaintext: &[u8]) -> Result<Vec<u8>, Error> {
    let opts = opts.clone().plaintext_len(plaintext.len() as u64);
    let (header, sealer) = pollster::block_on(begin_encrypt(&opts))?;
    FrameEncoder::new(sealer, opts.threads, opts.plaintext_len).encrypt_whole(&header, plaintext)
}

/// [`Decryptor::decrypt`]: a whole message, returned only once all of it verified.
pub(crate) fn decrypt_whole(opts: &Decryptor<'_>, message: &[u8]) -> Result<Vec<u8>, Error> {
    let mut reader = DecryptingReader::new(message, opts)?;
    // The plaintext is shorter than the message. The output is allocated zeroed (fresh
    // pages are then written once, as frames open straight into it) rather than grown by
    // `read_to_end`, which zeroes each stretch before the read fills it; then cut to length.
    let mut out = vec![0u8; message.len()];
    let mut filled = 0;
    loop {
        if filled == out.len() {
            // Only for a message that claims more plaintext than it has bytes: the reader
            // will refuse it, but it must be read to its end to say so.
            out.resize(filled + 4096, 0);
        }
        match reader.read(&mut out[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    out.truncate(filled);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use crate::{Decryptor, Encryptor, RawAesKeyring};

    /// A source that hands out at most `max` bytes per read, like a pipe.
    struct Trickle<'a> {
        rest: &'a [u8],
        max: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.max);
            self.rest.read(&mut buf[..n])
        }
    }

    /// The work beside the decryption is linear: the partial frame left behind a batch moves
    /// once per batch, so the bytes moved stay a fraction of the message whatever the read
    /// size, the thread count and the source's read size.
    #[test]
    fn ciphertext_moves_at_most_once_per_batch() {
        let kr = RawAesKeyring::new("n", "k", &[5; 32]).unwrap();
        let pt: Vec<u8> = (0..8_000_000u32).map(|i| (i % 251) as u8).collect();
        for threads in [1, 2] {
            let msg = Encryptor::new(&kr).threads(threads).encrypt(&pt).unwrap();
            let dec = Decryptor::new(&kr).threads(threads);
            for size in [4096, 65_536, 100_000, 1 << 20] {
                for max in [usize::MAX, 10_000] {
                    let src = Trickle { rest: &msg, max };
                    let mut r = dec.reader(src).unwrap();
                    let mut out = vec![0u8; size];
                    let mut total = 0;
                    loop {
                        match r.read(&mut out).unwrap() {
                            0 => break,
                            n => {
                                assert_eq!(out[..n], pt[total..total + n]);
                                total += n;
                            }
                        }
                    }
                    assert_eq!(total, pt.len());
                    let moved = r.body.bytes_moved();
                    let bound = if max == usize::MAX {
                        msg.len() / 16
                    } else {
                        msg.len() / 4
                    };
                    assert!(
                        moved <= bound,
                        "{threads} threads, {size}-byte reads, source reads of {max}: \
                         {moved} bytes moved for a {}-byte message",
                        msg.len()
                    );
                }
            }
        }
    }

    /// A peer that sent part of a message and waits: the source holds `msg[..stall]`, then
    /// says `WouldBlock` once, then gives the rest.
    struct Stalling<'a> {
        msg: &'a [u8],
        pos: usize,
        stall: usize,
        stalled: bool,
    }

    impl Read for Stalling<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.pos == self.stall && !self.stalled {
                self.stalled = true;
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            let end = if self.stalled {
                self.msg.len()
            } else {
                self.stall
            };
            let n = buf.len().min(end - self.pos);
            buf[..n].copy_from_slice(&self.msg[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    /// Plaintext that is verified is handed out while the source stalls, the stall is reported
    /// without ending the message, and a retry goes on; the final frame still waits for the end
    /// of input.
    #[test]
    fn a_stalled_source_gets_the_verified_plaintext_first_and_may_be_retried() {
        let kr = RawAesKeyring::new("n", "k", &[5; 32]).unwrap();
        let frame = 4096;
        let slot = frame + 4 + 12 + 16;
        let pt: Vec<u8> = (0..10 * frame + 1000).map(|i| (i % 251) as u8).collect();
        let msg = Encryptor::new(&kr)
            .frame_length(frame as u32)
            .encrypt(&pt)
            .unwrap();
        let body = 10 * slot + (4 + 4 + 12 + 4) + 1000 + 16;
        let header = msg.len() - body;
        // Stalled after three frames; and after the final frame, before the end of input.
        for (stall, before) in [(header + 3 * slot, 3 * frame), (msg.len(), 10 * frame)] {
            for threads in [1, 2] {
                let dec = Decryptor::new(&kr).threads(threads);
                for size in [1, 100, 4096, 1 << 20] {
                    let case = format!("stall at {stall}, {threads} threads, {size}-byte reads");
                    let src = Stalling {
                        msg: &msg,
                        pos: 0,
                        stall,
                        stalled: false,
                    };
                    let mut r = dec.reader(src).unwrap();
                    let mut out = vec![0u8; size];
                    let mut got = Vec::new();
                    let stalled = loop {
                        match r.read(&mut out) {
                            Ok(0) => panic!("{case}: the message ended at the stall"),
                            Ok(n) => got.extend_from_slice(&out[..n]),
                            Err(e) => break e,
                        }
                    };
                    assert_eq!(stalled.kind(), std::io::ErrorKind::WouldBlock, "{case}");
                    assert_eq!(got.len(), before, "{case}");
                    loop {
                        match r.read(&mut out).unwrap() {
                            0 => break,
                            n => got.extend_from_slice(&out[..n]),
                        }
                    }
                    assert!(got == pt, "{case}: the plaintext differs");
                }
            }
        }
    }

    /// A source that fills every read whole (as a file does) but times out once, on its
    /// `fail`-th read.
    struct TimesOutOnce<'a> {
        rest: &'a [u8],
        reads: usize,
        fail: usize,
    }

    impl Read for TimesOutOnce<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.reads += 1;
            if self.reads == self.fail {
                return Err(std::io::ErrorKind::TimedOut.into());
            }
            self.rest.read(buf)
        }
    }

    /// A read ahead that fails (here while a batch opens) loses nothing: the batch's plaintext
    /// comes out, the error follows, and a retry reads on to the end.
    #[test]
    fn a_failed_read_ahead_keeps_the_opened_batch_and_may_be_retried() {
        let kr = RawAesKeyring::new("n", "k", &[5; 32]).unwrap();
        let pt: Vec<u8> = (0..6_000_000u32).map(|i| (i % 251) as u8).collect();
        let msg = Encryptor::new(&kr).frame_length(4096).encrypt(&pt).unwrap();
        for threads in [1, 2] {
            let dec = Decryptor::new(&kr).threads(threads);
            for size in [65_536, 1 << 20] {
                for fail in 2..6 {
                    let case = format!("{threads} threads, {size}-byte reads, read {fail} fails");
                    let src = TimesOutOnce {
                        rest: &msg,
                        reads: 0,
                        fail,
                    };
                    let mut r = dec.reader(src).unwrap();
                    let mut out = vec![0u8; size];
                    let (mut got, mut errors) = (Vec::new(), 0);
                    loop {
                        match r.read(&mut out) {
                            Ok(0) => break,
                            Ok(n) => got.extend_from_slice(&out[..n]),
                            Err(e) => {
                                assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{case}");
                                errors += 1;
                            }
                        }
                    }
                    assert_eq!(errors, 1, "{case}");
                    assert!(got == pt, "{case}: the plaintext differs");
                }
            }
        }
    }
}
