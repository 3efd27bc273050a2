//! Random access to a framed message: the [`ReadAt`] sources, [`SeekableReader`] and its async
//! face. A read decrypts only the frames that cover it, each checked against its own tag (which
//! binds its sequence number, so a frame moved elsewhere fails). The header is read (through
//! `header_io.rs`) and verified once; the final frame, and so the footer, is found from the
//! frame structure near the end; frames are parsed by the frame codec and opened by the machine.

use std::io::{self, Read, Seek, SeekFrom};
use std::sync::{Mutex, OnceLock};

use std::ops::Range;

use zeroize::{Zeroize, Zeroizing};

use super::header_io::{eof_is_truncation, read_header_with};
use super::machine::{FrameCipher, Step};
use super::message::unwrap_header;
use super::options::Decryptor;
use crate::crypto::AeadKey;
use crate::format::frame::{FrameHeader, FrameRead};
use crate::format::{ContentType, FormatError, Header, HeaderBody, HeaderLimits};
use crate::Error;

/// A source that can be read at any offset without a shared cursor: files, and bytes in memory.
pub trait ReadAt {
    /// Fills `buf` from `offset`; fails with `UnexpectedEof` if the source ends first.
    ///
    /// # Errors
    /// I/O errors, or the source ending before `buf` is full.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// The source's length in bytes.
    ///
    /// # Errors
    /// I/O errors.
    fn size(&self) -> io::Result<u64>;
}

impl ReadAt for std::fs::File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let src = self
            .get(start..start.saturating_add(buf.len()))
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn size(&self) -> io::Result<u64> {
        Ok(<[u8]>::len(self) as u64)
    }
}

impl ReadAt for Vec<u8> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.as_slice().read_exact_at(buf, offset)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.as_slice().len() as u64)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for &T {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_exact_at(buf, offset)
    }
    fn size(&self) -> io::Result<u64> {
        (**self).size()
    }
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
    let slot = FrameHeader::regular_frame_len(body.frame_length);
    let (min_footer, max_footer) = match body.suite.signature() {
        Some(_) => (2, 2 + u64::from(u16::MAX)),
        None => (0, 0),
    };
    // The final frame starts at `header_len + n * slot` and takes FINAL_FRAME_PREFIX + len +
    // TAG_LEN bytes, len <= frame; the footer takes the rest.
    let latest = total
        .checked_sub(header_len + FrameHeader::final_frame_len(0) + min_footer)
        .ok_or(FormatError::Truncated)?;
    let earliest = latest.saturating_sub(frame + max_footer - min_footer);
    for n in earliest.div_ceil(slot)..=latest / slot {
        let at = header_len + n * slot;
        let mut prefix = [0u8; FrameHeader::MAX_WIRE_LEN];
        source
            .read_exact_at(&mut prefix, at)
            .map_err(eof_is_truncation)?;
        let seq = u32::try_from(n + 1).map_err(|_| FormatError::BadFrame("too many frames"))?;
        // The codec checks the sequence number and the IV, and the final frame's length.
        let header = match FrameHeader::read(&prefix, seq, body.frame_length)? {
            FrameRead::Header(h @ FrameHeader::Final { .. }) => h,
            _ => continue,
        };
        let end = header.frame_wire_len(body.frame_length);
        let footer_len = total.checked_sub(at + end).ok_or(FormatError::Truncated)?;
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
                .read_exact_at(&mut sig_len, at + end)
                .map_err(eof_is_truncation)?;
            match (2 + u64::from(u16::from_be_bytes(sig_len))).cmp(&footer_len) {
                std::cmp::Ordering::Less => return Err(FormatError::TrailingBytes.into()),
                std::cmp::Ordering::Greater => return Err(FormatError::Truncated.into()),
                std::cmp::Ordering::Equal => {}
            }
        }
        return Ok(FinalFrame {
            index: n,
            len: u64::from(header.content_len(body.frame_length)),
            footer_len,
        });
    }
    Err(FormatError::Truncated.into())
}

/// One decrypted frame: the frame as read, opened in place. Zeroized when replaced or dropped.
struct Frame {
    index: u64,
    buf: Zeroizing<Vec<u8>>,
    plaintext: Range<usize>,
}

impl Frame {
    fn plaintext(&self) -> &[u8] {
        &self.buf[self.plaintext.clone()]
    }
}

/// Copies what `buf` can take of `plaintext` from `start`.
fn copy_from(plaintext: &[u8], start: usize, buf: &mut [u8]) -> usize {
    let n = buf.len().min(plaintext.len().saturating_sub(start));
    buf[..n].copy_from_slice(&plaintext[start..start + n]);
    n
}

/// Decrypts any range of a framed message held in a [`ReadAt`] source. `Read` and `Seek` keep
/// a cursor; [`read_at`](Self::read_at) needs none and may be called from many threads.
///
/// A read costs the bytes it returns, plus one frame read and decryption when its frame is not
/// the one cached. Memory: the cached frame, plus one frame per `read_at` running at the same
/// time on another frame (one frame in all for a single caller, whatever the read sizes).
pub struct SeekableReader<S> {
    source: S,
    header: HeaderBody,
    cipher: FrameCipher,
    header_len: u64,
    frame: u64,
    slot: u64,
    /// Regular frames, found from the frame structure (the final frame's tag confirms it).
    regular: u64,
    claimed_len: u64,
    verified_len: OnceLock<u64>,
    /// The last frame decrypted, for sequential and nearby reads.
    recent: Mutex<Option<Frame>>,
    cursor: u64,
}

// By hand: the frame cache holds plaintext, which has no place in logs.
impl<S> std::fmt::Debug for SeekableReader<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeekableReader")
            .field("suite", &self.header.suite)
            .field("frames", &(self.regular + 1))
            .field("cursor", &self.cursor)
            .finish_non_exhaustive()
    }
}

/// Reads and parses the header at the start of `source`: (header, its length, the source's length).
fn read_header_at<S: ReadAt>(
    source: &S,
    limits: &HeaderLimits,
    allow_signed: bool,
) -> Result<(Header, u64, u64), Error> {
    let total = source.size()?;
    let mut at = 0u64;
    let (header, leftover) = read_header_with(
        |buf| {
            let n = buf
                .len()
                .min(usize::try_from(total - at).unwrap_or(usize::MAX));
            match source.read_exact_at(&mut buf[..n], at) {
                // A source shorter than its size: the header is truncated, as at its end.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
                Err(e) => Err(e),
                Ok(()) => {
                    at += n as u64;
                    Ok(n)
                }
            }
        },
        limits,
    )?;
    let header_len = at - leftover.len() as u64;
    if header.body.content_type != ContentType::Framed {
        return Err(Error::Misuse(
            "random access needs a framed message; this one is a single block".into(),
        ));
    }
    if header.body.suite.signature().is_some() && !allow_signed {
        return Err(Error::Misuse(
            "seeking in a signed message releases plaintext before the signature over the \
             whole message is checked: opt in with \
             Decryptor::dangerous_release_unverified_signed_frames"
                .into(),
        ));
    }
    Ok((header, header_len, total))
}

impl<S: ReadAt> SeekableReader<S> {
    /// [`Decryptor::seekable`]: reads and verifies the header and unwraps the data key.
    pub(crate) fn new(source: S, opts: &Decryptor<'_>) -> Result<Self, Error> {
        let (header, header_len, total) = read_header_at(
            &source,
            &opts.header_limits(),
            opts.release_unverified_signed,
        )?;
        let unwrapped = pollster::block_on(unwrap_header(&header, opts))?;
        Self::with_key(source, header.body, header_len, total, unwrapped.key)
    }

    /// Finishes opening once the header has verified: finds the final frame.
    fn with_key(
        source: S,
        body: HeaderBody,
        header_len: u64,
        total: u64,
        key: AeadKey,
    ) -> Result<Self, Error> {
        let last = find_final_frame(&source, total, header_len, &body)?;
        let frame = u64::from(body.frame_length);
        let slot = FrameHeader::regular_frame_len(body.frame_length);
        let cipher = FrameCipher::new(key, body.message_id.clone(), body.frame_length);
        Ok(SeekableReader {
            source,
            header: body,
            cipher,
            header_len,
            frame,
            slot,
            regular: last.index,
            claimed_len: last.index * frame + last.len,
            verified_len: OnceLock::new(),
            recent: Mutex::new(None),
            cursor: 0,
        })
    }

    /// The message header.
    pub fn header(&self) -> &HeaderBody {
        &self.header
    }

    /// Number of frames, the final one included.
    pub fn frames(&self) -> u64 {
        self.regular + 1
    }

    /// The plaintext length, after authenticating the final frame that states it (once).
    ///
    /// # Errors
    /// A truncated or altered final frame.
    pub fn plaintext_len(&self) -> Result<u64, Error> {
        if let Some(len) = self.verified_len.get() {
            return Ok(*len);
        }
        let last = self.with_frame(self.regular, <[u8]>::len)?;
        let len = self.regular * self.frame + last as u64;
        Ok(*self.verified_len.get_or_init(|| len))
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Option<Frame>> {
        // The cache is replaced whole, never left half-written: a poisoned lock is still sound.
        self.recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `f` on the cached plaintext of frame `index`, if that frame is cached.
    #[cfg(feature = "tokio")] // only the async reader serves reads from the cache this way
    fn cached<R>(&self, index: u64, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        match &*self.cache() {
            Some(c) if c.index == index => Some(f(c.plaintext())),
            _ => None,
        }
    }

    /// Runs `f` on the plaintext of frame `index` (0-based), decrypting and authenticating the
    /// frame first unless it is the one cached; the frame then becomes the cached one.
    fn with_frame<R>(&self, index: u64, f: impl FnOnce(&[u8]) -> R) -> Result<R, Error> {
        let spare = {
            let mut cache = self.cache();
            match &*cache {
                Some(c) if c.index == index => return Ok(f(c.plaintext())),
                // Reused for the next frame: no allocation per frame, and one frame in memory.
                _ => cache.take().map(|c| c.buf),
            }
        };
        let frame = self.decrypt(index, spare)?;
        let r = f(frame.plaintext());
        // Whatever another thread cached meanwhile is dropped, and so zeroized.
        *self.cache() = Some(frame);
        Ok(r)
    }

    /// Reads frame `index` into `spare` (or a new buffer) and opens it in place.
    fn decrypt(&self, index: u64, spare: Option<Zeroizing<Vec<u8>>>) -> Result<Frame, Error> {
        let len = if index == self.regular {
            // At most the frame length, a `u32`: `find_final_frame` checked it.
            FrameHeader::final_frame_len((self.claimed_len - self.regular * self.frame) as u32)
        } else {
            self.slot
        } as usize;
        let mut buf = match spare {
            // Never grown in place: a reallocation would free the old plaintext unzeroized.
            Some(mut b) if b.capacity() >= len => {
                if b.len() > len {
                    b[len..].zeroize();
                }
                b.resize(len, 0);
                b
            }
            _ => Zeroizing::new(vec![0u8; len]),
        };
        let at = self.header_len + index * self.slot;
        self.source
            .read_exact_at(&mut buf, at)
            .map_err(eof_is_truncation)?;
        let seq = u32::try_from(index + 1).map_err(|_| FormatError::BadFrame("too many frames"))?;
        match self.cipher.open_frame(&mut buf, seq)? {
            Step::Block(b) if b.consumed == len && b.last == (index == self.regular) => Ok(Frame {
                index,
                plaintext: b.plaintext(),
                buf,
            }),
            _ => {
                Err(FormatError::BadFrame("the final frame is not where the length puts it").into())
            }
        }
    }

    /// Reads plaintext at `offset` into `buf`, from the one frame that holds `offset`; returns
    /// the bytes read, 0 at or past the (authenticated) end.
    ///
    /// # Errors
    /// A frame that does not authenticate, a truncated message, or I/O.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, Error> {
        if buf.is_empty() {
            return Ok(0);
        }
        if offset >= self.claimed_len {
            // Reaching the end is when the final frame, and so the length, is checked.
            self.plaintext_len()?;
            return Ok(0);
        }
        let index = offset / self.frame;
        let start = (offset - index * self.frame) as usize;
        self.with_frame(index, |pt| copy_from(pt, start, buf))
    }
}

impl<S: ReadAt> Read for SeekableReader<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.read_at(self.cursor, buf)?;
        self.cursor += n as u64;
        Ok(n)
    }
}

impl<S: ReadAt> Seek for SeekableReader<S> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let target = match pos {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::Current(d) => self.cursor.checked_add_signed(d),
            SeekFrom::End(d) => self.plaintext_len()?.checked_add_signed(d),
        };
        self.cursor = target.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the plaintext",
            )
        })?;
        Ok(self.cursor)
    }
}

/// The async face of [`SeekableReader`]: `AsyncRead + AsyncSeek`. A frame not yet cached is
/// read and decrypted on tokio's blocking pool, so the caller's reactor never waits on disk;
/// reads within the cached frame are copied at once. Works on every runtime flavour, and a
/// read future dropped half-way (a timeout, `select!`) leaves the reader usable.
#[cfg(feature = "tokio")]
#[derive(Debug)]
pub struct AsyncSeekableReader<S> {
    inner: std::sync::Arc<SeekableReader<S>>,
    len: u64,
    cursor: u64,
    /// A read running on the blocking pool: the offset it reads at, and its plaintext.
    pending: Option<(u64, PendingRead)>,
}

/// A read on the blocking pool: the plaintext it read.
#[cfg(feature = "tokio")]
type PendingRead = tokio::task::JoinHandle<Result<Zeroizing<Vec<u8>>, Error>>;

/// Runs blocking work (file reads, decryption) on tokio's blocking pool.
#[cfg(feature = "tokio")]
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Io(io::Error::other(e)))?
}

#[cfg(feature = "tokio")]
impl<S: ReadAt + Send + Sync + 'static> AsyncSeekableReader<S> {
    /// The plaintext length (authenticated when the reader was opened).
    pub fn plaintext_len(&self) -> u64 {
        self.len
    }

    /// The synchronous reader underneath, for `read_at` from any thread.
    pub fn get_ref(&self) -> &SeekableReader<S> {
        &self.inner
    }
}

#[cfg(feature = "tokio")]
impl<S: ReadAt + Send + Sync + 'static> tokio::io::AsyncRead for AsyncSeekableReader<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        out: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        use std::task::Poll;
        let this = &mut *self;
        if let Some((at, handle)) = &mut this.pending {
            let done = std::task::ready!(std::future::Future::poll(std::pin::Pin::new(handle), cx));
            let at = *at;
            this.pending = None;
            let bytes = done.map_err(io::Error::other)??;
            // The buffer may be smaller than the one the read started with (the first future
            // was dropped): the rest stays in the frame cache for the next read.
            if at == this.cursor {
                let n = bytes.len().min(out.remaining());
                out.put_slice(&bytes[..n]);
                this.cursor += n as u64;
                return Poll::Ready(Ok(()));
            }
        }
        if out.remaining() == 0 || this.cursor >= this.len {
            return Poll::Ready(Ok(()));
        }
        let inner = &this.inner;
        let index = this.cursor / inner.frame;
        let start = (this.cursor - index * inner.frame) as usize;
        let hit = inner.cached(index, |pt| {
            let n = out.remaining().min(pt.len().saturating_sub(start));
            out.put_slice(&pt[start..start + n]);
            n
        });
        if let Some(n) = hit {
            this.cursor += n as u64;
            return Poll::Ready(Ok(()));
        }
        // At most the rest of the frame: a huge caller buffer must not size an allocation.
        let want = out.remaining().min((inner.frame - start as u64) as usize);
        let (inner, at) = (inner.clone(), this.cursor);
        this.pending = Some((
            at,
            tokio::task::spawn_blocking(move || {
                let mut buf = Zeroizing::new(vec![0u8; want]);
                let n = inner.read_at(at, &mut buf)?;
                buf.truncate(n);
                Ok(buf)
            }),
        ));
        self.poll_read(cx, out)
    }
}

#[cfg(feature = "tokio")]
impl<S: ReadAt + Send + Sync + 'static> tokio::io::AsyncSeek for AsyncSeekableReader<S> {
    fn start_seek(mut self: std::pin::Pin<&mut Self>, pos: SeekFrom) -> io::Result<()> {
        let target = match pos {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::Current(d) => self.cursor.checked_add_signed(d),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
        };
        self.cursor = target.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the plaintext",
            )
        })?;
        // A read abandoned half-way is for another offset now: its result is dropped (zeroized).
        self.pending = None;
        Ok(())
    }

    fn poll_complete(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<u64>> {
        std::task::Poll::Ready(Ok(self.cursor))
    }
}

#[cfg(feature = "tokio")]
impl<S: ReadAt + Send + Sync + 'static> AsyncSeekableReader<S> {
    /// [`Decryptor::seekable_async`]: reads the header and the final frame on tokio's blocking
    /// pool and awaits the keyring.
    pub(crate) async fn open(source: S, opts: &Decryptor<'_>) -> Result<Self, Error> {
        let (limits, allow_signed) = (opts.header_limits(), opts.release_unverified_signed);
        let (source, header, header_len, total) = blocking(move || {
            let (header, header_len, total) = read_header_at(&source, &limits, allow_signed)?;
            Ok((source, header, header_len, total))
        })
        .await?;
        let key = unwrap_header(&header, opts).await?.key;
        let inner = std::sync::Arc::new(
            blocking(move || SeekableReader::with_key(source, header.body, header_len, total, key))
                .await?,
        );
        let r = inner.clone();
        let len = blocking(move || r.plaintext_len()).await?;
        Ok(AsyncSeekableReader {
            inner,
            len,
            cursor: 0,
            pending: None,
        })
    }
}
