//! tokio `AsyncRead`/`AsyncWrite` adaptors over the same framing state machine and buffer
//! discipline as the blocking ones.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::decoder::{BodyDecoder, HeaderBuffer, Need};
use super::encoder::FrameEncoder;
use super::message::{begin_decrypt, begin_encrypt};
use super::options::{Decryptor, Encryptor};
use super::sync::{poisoned, unfinishable};
use crate::format::HeaderBody;
use crate::Error;

/// Encrypts everything written to it into `W`, asynchronously. Call
/// [`finish`](Self::finish) at the end; `shutdown` without it is refused, because the message
/// would lack its final frame.
#[must_use = "call finish() to write the final frame; an unfinished message does not decrypt"]
#[derive(Debug)]
pub struct AsyncEncryptingWriter<W> {
    inner: W,
    enc: FrameEncoder,
    /// Bytes of `enc.pending()` already written.
    written: usize,
    poisoned: bool,
}

impl<W: AsyncWrite + Unpin> AsyncEncryptingWriter<W> {
    /// Writes out sealed frames, if any wait, so that more input can be taken.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.enc.pending().len() {
            let rest = &self.enc.pending()[self.written..];
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, rest))
                .inspect_err(|_| self.poisoned = true)?;
            if n == 0 {
                self.poisoned = true;
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.enc.consume_pending();
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    /// Writes the final frame and the footer, flushes, and returns the inner writer.
    ///
    /// # Errors
    /// When writing fails, or after an earlier write failed.
    pub async fn finish(mut self) -> Result<W, Error> {
        std::future::poll_fn(|cx| self.poll_drain(cx)).await?;
        let AsyncEncryptingWriter {
            mut inner,
            enc,
            poisoned,
            ..
        } = self;
        if poisoned {
            return Err(unfinishable());
        }
        inner.write_all(&enc.finish()?).await?;
        inner.flush().await?;
        Ok(inner)
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for AsyncEncryptingWriter<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.poisoned {
            return Poll::Ready(Err(poisoned()));
        }
        ready!(this.poll_drain(cx))?;
        match this.enc.write(data) {
            Ok(n) => Poll::Ready(Ok(n)),
            Err(e) => {
                this.poisoned = true;
                Poll::Ready(Err(e.into()))
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "call finish() to complete an encrypted message; shutdown would leave it without its final frame",
        )))
    }
}

/// Decrypts a message read from `R`, asynchronously, with the same guarantees as
/// [`DecryptingReader`](super::DecryptingReader).
#[derive(Debug)]
pub struct AsyncDecryptingReader<R> {
    inner: R,
    header: HeaderBody,
    body: BodyDecoder,
    poisoned: bool,
}

impl<R: AsyncRead + Unpin> AsyncDecryptingReader<R> {
    /// The message header.
    pub fn header(&self) -> &HeaderBody {
        &self.header
    }

    /// The inner reader.
    pub fn into_inner(self) -> R {
        self.inner
    }

    fn poll_step(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<Result<(), Error>> {
        loop {
            if self.body.can_read_direct(out.remaining()) {
                let n = self.body.read_direct(out.initialize_unfilled(), None)?;
                if n > 0 {
                    out.advance(n);
                    return Poll::Ready(Ok(()));
                }
            }
            match self.body.advance(None)? {
                Need::Output => {
                    let avail = self.body.available();
                    let n = avail.len().min(out.remaining());
                    out.put_slice(&avail[..n]);
                    self.body.consume(n);
                    return Poll::Ready(Ok(()));
                }
                Need::Done => return Poll::Ready(Ok(())),
                Need::Input => {
                    let mut rb = ReadBuf::new(self.body.input_space());
                    ready!(Pin::new(&mut self.inner).poll_read(cx, &mut rb))?;
                    let n = rb.filled().len();
                    self.body.input_filled(n)?;
                }
            }
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for AsyncDecryptingReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.poisoned {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "an earlier error ended this message; nothing more can be read",
            )));
        }
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        this.poll_step(cx, out).map_err(|e| {
            this.poisoned = true;
            e.into()
        })
    }
}

impl<W: AsyncWrite + Unpin> AsyncEncryptingWriter<W> {
    /// [`Encryptor::writer_async`]: runs the keyring and writes the header to `inner`.
    pub(crate) async fn start(mut inner: W, opts: &Encryptor<'_>) -> Result<Self, Error> {
        let (header, sealer) = begin_encrypt(opts).await?;
        inner.write_all(&header).await?;
        Ok(AsyncEncryptingWriter {
            inner,
            enc: FrameEncoder::new(sealer, opts.threads, opts.plaintext_len),
            written: 0,
            poisoned: false,
        })
    }
}

impl<R: AsyncRead + Unpin> AsyncDecryptingReader<R> {
    /// [`Decryptor::reader_async`]: reads and authenticates the header from `inner`.
    pub(crate) async fn open(mut inner: R, opts: &Decryptor<'_>) -> Result<Self, Error> {
        let limits = opts.header_limits();
        let mut hb = HeaderBuffer::default();
        let (header, leftover) = loop {
            let n = inner.read(hb.input_space()).await?;
            if let Some(done) = hb.input_filled(n, &limits)? {
                break done;
            }
        };
        let opener = begin_decrypt(&header, opts).await?;
        let hold = header.body.suite.signature().is_some() && !opts.release_unverified_signed;
        Ok(AsyncDecryptingReader {
            inner,
            body: BodyDecoder::new(opener, leftover, hold, opts.max_buffered_len, opts.threads),
            header: header.body,
            poisoned: false,
        })
    }
}

/// [`Encryptor::encrypt_async`]: one message from a whole plaintext.
pub(crate) async fn encrypt_whole_async(
    opts: &Encryptor<'_>,
    plaintext: &[u8],
) -> Result<Vec<u8>, Error> {
    let opts = opts.clone().plaintext_len(plaintext.len() as u64);
    let (header, sealer) = begin_encrypt(&opts).await?;
    FrameEncoder::new(sealer, opts.threads, opts.plaintext_len).encrypt_whole(&header, plaintext)
}

/// [`Decryptor::decrypt_async`]: a whole message, returned only once all of it verified.
pub(crate) async fn decrypt_whole_async(
    opts: &Decryptor<'_>,
    message: &[u8],
) -> Result<Vec<u8>, Error> {
    let mut reader = AsyncDecryptingReader::open(message, opts).await?;
    let mut out = Vec::with_capacity(message.len());
    reader.read_to_end(&mut out).await?;
    Ok(out)
}
