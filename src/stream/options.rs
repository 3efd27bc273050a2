//! The full-API builders: every option of an encryption or a decryption, with safe defaults.

use crate::crypto::AeadBackend;
use crate::format::{AlgorithmSuite, CommitmentPolicy, EncryptionContext};
use crate::keyring::Keyring;

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

    /// The commitment policy (default: require committing suites).
    pub fn commitment_policy(mut self, policy: CommitmentPolicy) -> Self {
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
}

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
    pub(crate) fn header_limits(&self) -> crate::format::HeaderLimits {
        crate::format::HeaderLimits {
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

    /// The commitment policy. Legacy (non-committing) messages need
    /// [`CommitmentPolicy::RequireEncryptAllowDecrypt`].
    pub fn commitment_policy(mut self, policy: CommitmentPolicy) -> Self {
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
}
