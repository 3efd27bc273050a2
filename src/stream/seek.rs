//! Random access to a framed message: read any byte range, decrypting only the frames that
//! cover it, each checked against its own tag (which binds its sequence number, so a frame
//! moved elsewhere fails). The header is read and verified once.

use std::io::{self, Read, Seek, SeekFrom};
use std::sync::{Mutex, OnceLock};

use super::machine::{FrameCipher, Step};
use super::message::unwrap_header;
use super::options::Decryptor;
use crate::format::{
    ContentType, FormatError, Header, HeaderBody, FINAL_FRAME_MARKER, FINAL_FRAME_PREFIX,
    REGULAR_FRAME_PREFIX, TAG_LEN,
};
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

fn eof_is_truncation(e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        FormatError::Truncated.into()
    } else {
        Error::Io(e)
    }
}

/// Decrypts any range of a framed message held in a [`ReadAt`] source. `Read` and `Seek` keep
/// a cursor; [`read_at`](Self::read_at) needs none and may be called from many threads.
pub struct SeekableReader<S> {
    source: S,
    header: HeaderBody,
    cipher: FrameCipher,
    header_len: u64,
    frame: u64,
    slot: u64,
    /// Regular frames, from the source's length (the final frame confirms it).
    regular: u64,
    claimed_len: u64,
    verified_len: OnceLock<u64>,
    /// The last frame decrypted, for sequential reads: (sequence number, plaintext).
    recent: Mutex<Option<(u64, Vec<u8>)>>,
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

impl<S: ReadAt> SeekableReader<S> {
    fn new(source: S, opts: &Decryptor<'_>) -> Result<Self, Error> {
        let limits = opts.header_limits();
        let total = source.size()?;
        let mut buf = vec![0u8; 4096.min(total as usize)];
        let (header, header_len) = loop {
            source
                .read_exact_at(&mut buf, 0)
                .map_err(eof_is_truncation)?;
            match Header::parse(&buf, &limits)? {
                Some((h, used)) => break (h, used as u64),
                None if buf.len() as u64 >= total => return Err(FormatError::Truncated.into()),
                None => buf.resize((buf.len() * 2).min(total as usize), 0),
            }
        };
        if header.body.content_type != ContentType::Framed {
            return Err(Error::InvalidArgument(
                "random access needs a framed message; this one is a single block".into(),
            ));
        }
        if header.body.suite.signature().is_some() && !opts.release_unverified_signed {
            return Err(Error::InvalidArgument(
                "seeking in a signed message releases plaintext before the signature over the \
                 whole message is checked: opt in with dangerous_release_unverified_signed_frames"
                    .into(),
            ));
        }
        let unwrapped = pollster::block_on(unwrap_header(&header, opts))?;
        let body = header.body;
        let frame = u64::from(body.frame_length);
        let slot = frame + (REGULAR_FRAME_PREFIX + TAG_LEN) as u64;
        let footer = match body.suite.signature() {
            Some(_) => Self::footer_len(&source, total)?,
            None => 0,
        };
        let body_len = total
            .checked_sub(header_len + footer + (FINAL_FRAME_PREFIX + TAG_LEN) as u64)
            .ok_or(FormatError::Truncated)?;
        let (regular, last) = (body_len / slot, body_len % slot);
        if last > frame {
            return Err(FormatError::BadFrame("the body does not end on a frame").into());
        }
        let cipher = FrameCipher::new(unwrapped.key, body.message_id.clone(), body.frame_length);
        Ok(SeekableReader {
            source,
            header: body,
            cipher,
            header_len,
            frame,
            slot,
            regular,
            claimed_len: regular * frame + last,
            verified_len: OnceLock::new(),
            recent: Mutex::new(None),
            cursor: 0,
        })
    }

    /// A signed message's footer length: the `u16` before the signature that matches the end.
    fn footer_len(source: &S, total: u64) -> Result<u64, Error> {
        for sig in 8..=160u64 {
            let Some(at) = total.checked_sub(2 + sig) else {
                break;
            };
            let mut len = [0u8; 2];
            source
                .read_exact_at(&mut len, at)
                .map_err(eof_is_truncation)?;
            if u64::from(u16::from_be_bytes(len)) == sig {
                return Ok(2 + sig);
            }
        }
        Err(FormatError::BadFooter.into())
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
        let last = self.open(self.regular)?;
        let len = self.regular * self.frame + last.len() as u64;
        Ok(*self.verified_len.get_or_init(|| len))
    }

    /// Decrypts and authenticates frame `index` (0-based) and returns its plaintext.
    fn open(&self, index: u64) -> Result<Vec<u8>, Error> {
        if let Some((i, pt)) = &*self.recent.lock().expect("frame cache") {
            if *i == index {
                return Ok(pt.clone());
            }
        }
        let last = index == self.regular;
        let len = if last {
            FINAL_FRAME_PREFIX as u64
                + (self.claimed_len - self.regular * self.frame)
                + TAG_LEN as u64
        } else {
            self.slot
        };
        let mut buf = vec![0u8; len as usize];
        let at = self.header_len + index * self.slot;
        self.source
            .read_exact_at(&mut buf, at)
            .map_err(eof_is_truncation)?;
        if last != (u32::from_be_bytes(buf[..4].try_into().expect("4 bytes")) == FINAL_FRAME_MARKER)
        {
            return Err(
                FormatError::BadFrame("the final frame is not where the length puts it").into(),
            );
        }
        let seq = u32::try_from(index + 1).map_err(|_| FormatError::BadFrame("too many frames"))?;
        let pt = match self.cipher.open_frame(&mut buf, seq)? {
            Step::Block(b) if b.consumed == buf.len() => buf[b.plaintext()].to_vec(),
            _ => return Err(FormatError::BadFrame("frame length mismatch").into()),
        };
        *self.recent.lock().expect("frame cache") = Some((index, pt.clone()));
        Ok(pt)
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
        let pt = self.open(index)?;
        let start = (offset - index * self.frame) as usize;
        let n = buf.len().min(pt.len() - start);
        buf[..n].copy_from_slice(&pt[start..start + n]);
        Ok(n)
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

impl<'k> Decryptor<'k> {
    /// Opens a framed message for random access: reads and verifies the header, unwraps the
    /// data key, and decrypts only the frames a read touches. Signed messages need
    /// [`dangerous_release_unverified_signed_frames`](Self::dangerous_release_unverified_signed_frames),
    /// because the signature covers the whole message and a range read never checks it.
    ///
    /// # Errors
    /// As [`reader`](Self::reader), and a non-framed or (without opting in) signed message.
    pub fn seekable<S: ReadAt>(&self, source: S) -> Result<SeekableReader<S>, Error> {
        SeekableReader::new(source, self)
    }
}

/// The async face of [`SeekableReader`]: `AsyncRead + AsyncSeek`, each frame read and
/// decrypted on tokio's blocking pool so the caller's reactor never waits on disk.
#[cfg(feature = "tokio")]
#[derive(Debug)]
pub struct AsyncSeekableReader<S> {
    inner: std::sync::Arc<SeekableReader<S>>,
    len: u64,
    cursor: u64,
    pending: Option<tokio::task::JoinHandle<Result<Vec<u8>, Error>>>,
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
        if self.pending.is_none() {
            if out.remaining() == 0 || self.cursor >= self.len {
                return Poll::Ready(Ok(()));
            }
            let (inner, at, want) = (self.inner.clone(), self.cursor, out.remaining());
            self.pending = Some(tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; want];
                let n = inner.read_at(at, &mut buf)?;
                buf.truncate(n);
                Ok(buf)
            }));
        }
        let handle = self.pending.as_mut().expect("set above");
        let done = std::task::ready!(std::future::Future::poll(std::pin::Pin::new(handle), cx));
        self.pending = None;
        let bytes = done.map_err(io::Error::other)??;
        out.put_slice(&bytes);
        self.cursor += bytes.len() as u64;
        Poll::Ready(Ok(()))
    }
}

#[cfg(feature = "tokio")]
impl<S: ReadAt + Send + Sync + 'static> tokio::io::AsyncSeek for AsyncSeekableReader<S> {
    fn start_seek(mut self: std::pin::Pin<&mut Self>, pos: SeekFrom) -> io::Result<()> {
        if self.pending.is_some() {
            return Err(io::Error::other("a read is in progress"));
        }
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
impl<'k> Decryptor<'k> {
    /// [`seekable`](Self::seekable) for async code: opens the message (header, data key and the
    /// final frame, so the length is authenticated) on tokio's blocking pool.
    ///
    /// # Errors
    /// As [`seekable`](Self::seekable), and a final frame that does not authenticate.
    pub async fn async_seekable<S: ReadAt + Send + Sync + 'static>(
        &self,
        source: S,
    ) -> Result<AsyncSeekableReader<S>, Error> {
        let inner = std::sync::Arc::new(tokio::task::block_in_place(|| self.seekable(source))?);
        let r = inner.clone();
        let len = tokio::task::spawn_blocking(move || r.plaintext_len())
            .await
            .map_err(|e| Error::Io(io::Error::other(e)))??;
        Ok(AsyncSeekableReader {
            inner,
            len,
            cursor: 0,
            pending: None,
        })
    }
}
