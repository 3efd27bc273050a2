//! The full-API builders: every option of an encryption or a decryption, with safe defaults,
//! and every entry point a user calls on them. The adaptor modules hold the machinery; each
//! entry point here hands the options to one `pub(crate)` constructor there.

use std::io::{Read, Write};

#[cfg(feature = "tokio")]
use tokio::io::{AsyncRead, AsyncWrite};

#[cfg(feature = "tokio")]
use super::async_io::{self, AsyncDecryptingReader, AsyncEncryptingWriter};
use super::rewrap::Rewrap;
#[cfg(feature = "tokio")]
use super::seek::AsyncSeekableReader;
use super::seek::{ReadAt, SeekableReader};
use super::sync::{self, DecryptingReader, EncryptingWriter};
use crate::crypto::AeadBackend;
use crate::format::{AlgorithmSuite, CommitmentPolicy, EncryptionContext, HeaderLimits};
use crate::keyring::Keyring;
use crate::Error;

/// Default plaintext bytes per frame. Larger frames cost less per byte; smaller ones bound the
/// memory and the granularity of random access. 64 KiB runs within a few percent of the
/// AES-GCM primitive's peak (see `docs/PERFORMANCE.md`).
pub const DEFAULT_FRAME_LENGTH: u32 = 64 * 1024;
/// Default most wrapped data keys per message, on encrypt and decrypt.
pub const DEFAULT_MAX_ENCRYPTED_DATA_KEYS: u16 = 8;
/// Default most header bytes accepted on decrypt.
pub const DEFAULT_MAX_HEADER_LEN: usize = 1024 * 1024;
/// Default largest frame accepted on decrypt (memory per frame is about this much).
pub const DEFAULT_MAX_FRAME_LENGTH: u32 = 64 * 1024 * 1024;
/// Default most plaintext held in memory on decrypt: a non-framed body, or a signed message
/// held back until its signature verifies.
pub const DEFAULT_MAX_BUFFERED_LEN: usize = 64 * 1024 * 1024;

/// Most bytes of frames a streaming reader or writer buffers at once, read-ahead included,
/// whatever the thread count and the caller's buffer sizes: a batch of frames opened or sealed
/// together holds at most a quarter of it, and a reader or writer keeps two batches. A frame
/// larger than that is buffered alone (with no second buffer beside it once two would not
/// fit), so memory stays within this limit plus one frame. (A signed message held back until its signature verifies is bounded by
/// [`Decryptor::max_buffered_len`] instead.)
pub const STREAM_BUFFER_LIMIT: usize = 16 * 1024 * 1024;

/// The decryptor's defaults: 8 wrapped keys, 1 MiB of header.
///
/// ```
/// use kms_envelope::format::HeaderLimits;
/// use kms_envelope::stream::{DEFAULT_MAX_ENCRYPTED_DATA_KEYS, DEFAULT_MAX_HEADER_LEN};
/// let limits = HeaderLimits { max_header_len: 4096, ..HeaderLimits::default() };
/// assert_eq!(limits.max_encrypted_data_keys, DEFAULT_MAX_ENCRYPTED_DATA_KEYS);
/// assert_eq!(HeaderLimits::default().max_header_len, DEFAULT_MAX_HEADER_LEN);
/// ```
impl Default for HeaderLimits {
    fn default() -> Self {
        HeaderLimits {
            max_encrypted_data_keys: DEFAULT_MAX_ENCRYPTED_DATA_KEYS,
            max_header_len: DEFAULT_MAX_HEADER_LEN,
        }
    }
}

/// Encrypts messages: the keyring, the encryption context and the message parameters.
///
/// ```
/// use kms_envelope::{Encryptor, EncryptionContext, RawAesKeyring};
/// let keyring = RawAesKeyring::new("my-namespace", "my-key", &[7u8; 32])?;
/// let context = EncryptionContext::new().with("purpose", "example");
/// let message = Encryptor::new(&keyring).context(context).frame_length(4096).encrypt(b"hello")?;
/// assert!(message.len() > 5);
/// # Ok::<(), kms_envelope::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Encryptor<'k> {
    pub(crate) keyring: &'k dyn Keyring,
    pub(crate) context: EncryptionContext,
    pub(crate) required_keys: Vec<String>,
    pub(crate) suite: AlgorithmSuite,
    pub(crate) frame_length: u32,
    pub(crate) policy: CommitmentPolicy,
    pub(crate) backend: AeadBackend,
    pub(crate) max_encrypted_data_keys: u16,
    pub(crate) threads: usize,
    pub(crate) plaintext_len: Option<u64>,
}

/// The default worker count: the machine's cores. Asked once: on Linux the answer comes from
/// reading cgroup files, far too slow to repeat for every small message.
fn default_threads() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

impl<'k> Encryptor<'k> {
    /// An encryptor with the defaults: suite 0x0478, 64 KiB frames, an empty context.
    pub fn new(keyring: &'k dyn Keyring) -> Self {
        Encryptor {
            keyring,
            context: EncryptionContext::new(),
            required_keys: Vec::new(),
            suite: AlgorithmSuite::default(),
            frame_length: DEFAULT_FRAME_LENGTH,
            policy: CommitmentPolicy::default(),
            backend: AeadBackend::default(),
            max_encrypted_data_keys: DEFAULT_MAX_ENCRYPTED_DATA_KEYS,
            threads: default_threads(),
            plaintext_len: None,
        }
    }

    /// Declares the plaintext length up front. A data-key cache needs it to enforce its byte
    /// limit; the writer then refuses to write more or to finish with less.
    pub fn plaintext_len(mut self, len: u64) -> Self {
        self.plaintext_len = Some(len);
        self
    }

    /// Threads that seal frames (default: the machine's cores). Output is byte-for-byte the
    /// same whatever the count; a message of less than a batch of frames (about 2 MiB) never
    /// starts a thread.
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// The encryption context bound to the message.
    pub fn context(mut self, context: EncryptionContext) -> Self {
        self.context = context;
        self
    }

    /// Context keys that are authenticated but not stored in the message (the ESDK's
    /// required encryption context): the decryptor must supply those pairs again.
    pub fn require_context_keys<I, S>(mut self, keys: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.required_keys = keys.into_iter().map(Into::into).collect();
        self
    }

    /// The algorithm suite (default 0x0478; 0x0578 adds an ECDSA P-384 signature).
    pub fn suite(mut self, suite: AlgorithmSuite) -> Self {
        self.suite = suite;
        self
    }

    /// Plaintext bytes per frame, 1 to 2^32 − 1.
    pub fn frame_length(mut self, frame_length: u32) -> Self {
        self.frame_length = frame_length;
        self
    }

    /// **Dangerous.** The commitment policy (default: require committing suites). On encrypt
    /// only [`CommitmentPolicy::ForbidEncryptAllowDecrypt`] changes what is written: legacy,
    /// non-committing suites, whose messages do not commit to their data key (one crafted
    /// message can decrypt to different plaintexts under different keys). Only for readers
    /// older than ESDK 2.0.
    pub fn dangerous_commitment_policy(mut self, policy: CommitmentPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The AES-GCM implementation.
    pub fn backend(mut self, backend: AeadBackend) -> Self {
        self.backend = backend;
        self
    }

    /// Most wrapped data keys the keyring may produce (default 8).
    pub fn max_encrypted_data_keys(mut self, max: u16) -> Self {
        self.max_encrypted_data_keys = max;
        self
    }

    /// Starts a message written to `inner`: runs the keyring and writes the header now.
    ///
    /// # Errors
    /// Invalid options, a keyring failure, or a failed write of the header.
    pub fn writer<W: Write>(&self, inner: W) -> Result<EncryptingWriter<W>, Error> {
        EncryptingWriter::start(inner, self)
    }

    /// Encrypts `plaintext` into a new message.
    ///
    /// # Errors
    /// Invalid options or a keyring failure.
    pub fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>, Error> {
        sync::encrypt_whole(self, plaintext)
    }

    /// Starts a message written to an async `inner`: runs the keyring and writes the header.
    ///
    /// # Errors
    /// As [`writer`](Self::writer).
    #[cfg(feature = "tokio")]
    pub async fn writer_async<W: AsyncWrite + Unpin>(
        &self,
        inner: W,
    ) -> Result<AsyncEncryptingWriter<W>, Error> {
        AsyncEncryptingWriter::start(inner, self).await
    }

    /// Encrypts `plaintext` into a new message, from async code.
    ///
    /// # Errors
    /// As [`encrypt`](Self::encrypt).
    #[cfg(feature = "tokio")]
    pub async fn encrypt_async(&self, plaintext: &[u8]) -> Result<Vec<u8>, Error> {
        async_io::encrypt_whole_async(self, plaintext).await
    }
}

/// Legacy suites only under a name that says so: the old setter must fail to compile.
///
/// ```compile_fail,E0599
/// use kms_envelope::{CommitmentPolicy, Decryptor, RawAesKeyring};
/// let keyring = RawAesKeyring::new("ns", "key", &[7u8; 32]).unwrap();
/// let _ = Decryptor::new(&keyring).commitment_policy(CommitmentPolicy::RequireEncryptAllowDecrypt);
/// ```
/// ```compile_fail,E0599
/// use kms_envelope::{CommitmentPolicy, Encryptor, RawAesKeyring};
/// let keyring = RawAesKeyring::new("ns", "key", &[7u8; 32]).unwrap();
/// let _ = Encryptor::new(&keyring).commitment_policy(CommitmentPolicy::ForbidEncryptAllowDecrypt);
/// ```
#[cfg(doctest)]
pub struct LegacyIsDangerous;

/// Decrypts messages: the keyring, the context the caller expects, the policy and the limits.
///
/// ```
/// use kms_envelope::{Decryptor, Encryptor, EncryptionContext, RawAesKeyring};
/// let keyring = RawAesKeyring::new("my-namespace", "my-key", &[7u8; 32])?;
/// let context = EncryptionContext::new().with("purpose", "example");
/// let message = Encryptor::new(&keyring).context(context.clone()).encrypt(b"hello")?;
/// let plaintext = Decryptor::new(&keyring).expected_context(context).decrypt(&message)?;
/// assert_eq!(plaintext, b"hello");
/// # Ok::<(), kms_envelope::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Decryptor<'k> {
    pub(crate) keyring: &'k dyn Keyring,
    pub(crate) expected_context: EncryptionContext,
    pub(crate) policy: CommitmentPolicy,
    pub(crate) backend: AeadBackend,
    pub(crate) max_encrypted_data_keys: u16,
    pub(crate) max_header_len: usize,
    pub(crate) max_frame_length: u32,
    pub(crate) max_buffered_len: usize,
    pub(crate) release_unverified_signed: bool,
    pub(crate) threads: usize,
}

impl<'k> Decryptor<'k> {
    /// A decryptor with the defaults: committing suites only, the limits above.
    pub fn new(keyring: &'k dyn Keyring) -> Self {
        Decryptor {
            keyring,
            expected_context: EncryptionContext::new(),
            policy: CommitmentPolicy::default(),
            backend: AeadBackend::default(),
            max_encrypted_data_keys: DEFAULT_MAX_ENCRYPTED_DATA_KEYS,
            max_header_len: DEFAULT_MAX_HEADER_LEN,
            max_frame_length: DEFAULT_MAX_FRAME_LENGTH,
            max_buffered_len: DEFAULT_MAX_BUFFERED_LEN,
            release_unverified_signed: false,
            threads: default_threads(),
        }
    }

    /// The header limits these options set.
    pub(crate) fn header_limits(&self) -> HeaderLimits {
        HeaderLimits {
            max_encrypted_data_keys: self.max_encrypted_data_keys,
            max_header_len: self.max_header_len,
        }
    }

    /// Threads that open frames (default: the machine's cores). A message of a single frame
    /// never starts a thread.
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// Pairs the message must carry. A pair whose key the message stores must have the same
    /// value, or decryption fails before any key is unwrapped; a pair it does not store is
    /// taken as required-only context (authenticated by the header tag, so a wrong or missing
    /// pair fails decryption).
    pub fn expected_context(mut self, context: EncryptionContext) -> Self {
        self.expected_context = context;
        self
    }

    /// **Dangerous.** The commitment policy (default: committing suites only). Legacy
    /// (non-committing) messages need [`CommitmentPolicy::RequireEncryptAllowDecrypt`]; such a
    /// message does not commit to its data key, so one crafted message can decrypt to different
    /// plaintexts under different keys. Allow it only for messages from a trusted writer.
    pub fn dangerous_commitment_policy(mut self, policy: CommitmentPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The AES-GCM implementation.
    pub fn backend(mut self, backend: AeadBackend) -> Self {
        self.backend = backend;
        self
    }

    /// Most wrapped data keys accepted (default 8); more fail before any is tried.
    pub fn max_encrypted_data_keys(mut self, max: u16) -> Self {
        self.max_encrypted_data_keys = max;
        self
    }

    /// Most header bytes accepted (default 1 MiB).
    pub fn max_header_len(mut self, max: usize) -> Self {
        self.max_header_len = max;
        self
    }

    /// Largest frame length accepted (default 64 MiB); one frame is held in memory at a time.
    pub fn max_frame_length(mut self, max: u32) -> Self {
        self.max_frame_length = max;
        self
    }

    /// Most plaintext held in memory (default 64 MiB): a legacy non-framed body, or a signed
    /// message, which is held whole until its signature verifies.
    pub fn max_buffered_len(mut self, max: usize) -> Self {
        self.max_buffered_len = max;
        self
    }

    /// **Dangerous.** For signed messages, releases each regular frame once its own tag
    /// verifies, before the signature over the whole message has been checked. The frames are
    /// authentic under the data key, but anyone who can decrypt could have forged them; the
    /// signature is what proves they come from someone who could encrypt. The final frame is
    /// still held until the signature verifies, so the stream never ends successfully without it.
    pub fn dangerous_release_unverified_signed_frames(mut self, allow: bool) -> Self {
        self.release_unverified_signed = allow;
        self
    }

    /// Reads the header from `inner`, unwraps the data key and checks the header tag, then
    /// returns a reader of the authenticated plaintext.
    ///
    /// # Errors
    /// A malformed or truncated header, a key that cannot be unwrapped, a context mismatch,
    /// a policy refusal, or a header that does not authenticate.
    pub fn reader<R: Read>(&self, inner: R) -> Result<DecryptingReader<R>, Error> {
        DecryptingReader::new(inner, self)
    }

    /// Decrypts a whole message. Nothing is returned unless all of it verified.
    ///
    /// # Errors
    /// As [`reader`](Self::reader), plus any failure in the body.
    pub fn decrypt(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        sync::decrypt_whole(self, message)
    }

    /// Opens a framed message for random access: reads and verifies the header, unwraps the
    /// data key, and decrypts only the frames a read touches. Signed messages need
    /// [`dangerous_release_unverified_signed_frames`](Self::dangerous_release_unverified_signed_frames),
    /// because the signature covers the whole message and a range read never checks it.
    ///
    /// # Errors
    /// As [`reader`](Self::reader), a non-framed or (without opting in) signed message, and
    /// one whose frames do not end in a final frame and footer that fill it exactly (truncated,
    /// or bytes after its end): found when it is opened, from the frame prefixes near its end.
    pub fn seekable<S: ReadAt>(&self, source: S) -> Result<SeekableReader<S>, Error> {
        SeekableReader::new(source, self)
    }

    /// Starts re-wrapping the message read from `input`: reads its header, unwraps its data
    /// key with this decryptor's keyring and checks the header. The body is read, and
    /// authenticated to the end, by [`Rewrap::write`].
    ///
    /// The new message keeps the input's encryption context (less the old signature key;
    /// required-only pairs stay required-only), frame length and suite, except that a
    /// non-committing input becomes 0x0478 (0x0578 if it was signed).
    ///
    /// # Errors
    /// As [`reader`](Self::reader): a malformed header, no key that can unwrap, a context
    /// mismatch, a policy refusal, or a header that does not authenticate.
    pub fn rewrap<R: Read>(&self, input: R) -> Result<Rewrap<R>, Error> {
        Rewrap::new(input, self)
    }

    /// Reads and authenticates the header from an async `inner` and returns a reader of the
    /// authenticated plaintext.
    ///
    /// # Errors
    /// As [`reader`](Self::reader).
    #[cfg(feature = "tokio")]
    pub async fn reader_async<R: AsyncRead + Unpin>(
        &self,
        inner: R,
    ) -> Result<AsyncDecryptingReader<R>, Error> {
        AsyncDecryptingReader::open(inner, self).await
    }

    /// Decrypts a whole message from async code. Nothing is returned unless all of it verified.
    ///
    /// # Errors
    /// As [`decrypt`](Self::decrypt).
    #[cfg(feature = "tokio")]
    pub async fn decrypt_async(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        async_io::decrypt_whole_async(self, message).await
    }

    /// [`seekable`](Self::seekable) for async code: reads the header and the final frame (so
    /// the length is authenticated) on tokio's blocking pool and awaits the keyring, on any
    /// runtime flavour.
    ///
    /// # Errors
    /// As [`seekable`](Self::seekable), and a final frame that does not authenticate.
    #[cfg(feature = "tokio")]
    pub async fn seekable_async<S: ReadAt + Send + Sync + 'static>(
        &self,
        source: S,
    ) -> Result<AsyncSeekableReader<S>, Error> {
        AsyncSeekableReader::open(source, self).await
    }
}
