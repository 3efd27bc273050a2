//! What keyrings exchange with the message layer: the data key and the materials around it.

/// The data-key cache moved to [`keyring`](crate::keyring); its old path still works.
#[cfg(feature = "cache")]
#[doc(no_inline)]
pub use crate::keyring::{CacheLimits, CachingKeyring, CachingKeyringBuilder, DataKeyCache};

use std::sync::Arc;

use subtle::Choice;
use zeroize::Zeroizing;

use crate::crypto::kdf::{commitment_matches, derive};
use crate::crypto::{AeadBackend, AeadKey};
use crate::format::{
    AlgorithmSuite, EncryptedDataKey, EncryptionContext, Header, COMMITMENT_LEN, IV_LEN, TAG_LEN,
};
use crate::Error;

/// A plaintext data key. Zeroized on drop, never `Clone`, and its `Debug` shows only its length.
pub struct DataKey(Zeroizing<Vec<u8>>);

impl DataKey {
    /// Takes ownership of key bytes (moved, not copied, so no stray copy is left behind).
    pub fn new(bytes: Zeroizing<Vec<u8>>) -> Self {
        DataKey(bytes)
    }

    /// Copies key bytes into a zeroizing buffer.
    pub fn from_slice(bytes: &[u8]) -> Self {
        DataKey(Zeroizing::new(bytes.to_vec()))
    }

    /// A fresh random key of `len` bytes.
    ///
    /// # Errors
    /// When the system's random number generator fails.
    pub fn generate(len: usize) -> Result<Self, Error> {
        let mut key = Zeroizing::new(vec![0u8; len]);
        crate::crypto::random_bytes(&mut key)?;
        Ok(DataKey(key))
    }

    /// The key bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Key length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the key is empty (never true for a usable key).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// An explicit copy, for keyrings and caches that must hand the same key on.
    pub fn duplicate(&self) -> Self {
        DataKey::from_slice(&self.0)
    }
}

impl zeroize::Zeroize for DataKey {
    fn zeroize(&mut self) {
        self.0.zeroize();
    }
}

/// The bytes are overwritten when a `DataKey` drops (its buffer is `Zeroizing`).
impl zeroize::ZeroizeOnDrop for DataKey {}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DataKey({} bytes, redacted)", self.0.len())
    }
}

/// The state passed through keyrings when a message is encrypted.
#[derive(Debug)]
#[non_exhaustive]
pub struct EncryptionMaterials {
    /// The message's suite.
    pub suite: AlgorithmSuite,
    /// The full encryption context: stored pairs, required-only pairs and, for signed suites,
    /// `aws-crypto-public-key`. Keyrings bind their wrapping to all of it.
    pub context: EncryptionContext,
    /// The data key, once the generator keyring has made it.
    pub data_key: Option<DataKey>,
    /// Each keyring appends its wrapped copy here.
    pub encrypted_data_keys: Vec<EncryptedDataKey>,
    /// The plaintext length, when known before encryption (one-shot calls, or declared with
    /// `Encryptor::plaintext_len`); caches use it to enforce their byte limits.
    pub plaintext_len: Option<u64>,
}

impl EncryptionMaterials {
    /// Materials with no data key yet.
    pub fn new(suite: AlgorithmSuite, context: EncryptionContext) -> Self {
        EncryptionMaterials {
            suite,
            context,
            data_key: None,
            encrypted_data_keys: Vec::new(),
            plaintext_len: None,
        }
    }

    /// The data key, generating a random one first if no keyring has yet (the generator role).
    ///
    /// # Errors
    /// When the random number generator fails.
    pub fn data_key_or_generate(&mut self) -> Result<&DataKey, Error> {
        if self.data_key.is_none() {
            self.data_key = Some(DataKey::generate(self.suite.key_len())?);
        }
        Ok(self.data_key.as_ref().expect("set above"))
    }
}

/// The state passed through keyrings when a message is decrypted.
///
/// The data key is private: a keyring hands one in with [`set_data_key`](Self::set_data_key),
/// which keeps it only if it opens the message's header, and reads it with
/// [`data_key`](Self::data_key). So every key held here (and so every key a data-key cache
/// keeps) has passed that check; a keyring cannot place one around it:
///
/// ```compile_fail
/// # use kms_envelope::materials::{DataKey, DecryptionMaterials};
/// # use kms_envelope::{AlgorithmSuite, EncryptionContext};
/// let suite = AlgorithmSuite::Aes256GcmHkdfSha512CommitKey;
/// let mut m = DecryptionMaterials::new(suite, EncryptionContext::new());
/// m.data_key = Some(DataKey::from_slice(&[0; 32]));
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub struct DecryptionMaterials {
    /// The message's suite.
    pub suite: AlgorithmSuite,
    /// The full encryption context (stored and reproduced pairs).
    pub context: EncryptionContext,
    /// Set by the first key a keyring offers that passes the check.
    data_key: Option<DataKey>,
    /// The message's header, which a key must open to be kept (set by the message layer).
    check: Option<Arc<HeaderCheck>>,
    /// Whether a keyring unwrapped a key that was then refused.
    rejected: bool,
    /// Keys offered so far, at most [`MAX_KEY_OFFERS`] of which are tried against the header.
    offers: usize,
}

/// Most unwrapped keys one message's materials try against its header. Each try is a GCM pass
/// over the whole header (up to `max_header_len`), and a message under attack can carry as many
/// wrapped keys as `max_encrypted_data_keys` allows (up to 65,535 when a caller raises it), so
/// the work per message is capped here, independently of both limits: at most this many header
/// passes. A genuine message needs one, since all its wrapped keys hold the same data key; a
/// message whose first sixteen wrapped keys that a keyring unwraps (or fails to) do not fit it
/// fails with [`Error::DecryptionFailed`] even if a later one would.
pub(crate) const MAX_KEY_OFFERS: usize = 16;

impl DecryptionMaterials {
    /// Materials with no data key yet, and no message to check keys against: any key of the
    /// suite's length is kept. Outside the message layer a keyring's answer then tells whether
    /// a wrapped key unwrapped (see [`Keyring::on_decrypt`](crate::Keyring::on_decrypt)).
    pub fn new(suite: AlgorithmSuite, context: EncryptionContext) -> Self {
        DecryptionMaterials {
            suite,
            context,
            data_key: None,
            check: None,
            rejected: false,
            offers: 0,
        }
    }

    /// Materials that keep only a key that opens `check`'s header.
    pub(crate) fn checked(
        suite: AlgorithmSuite,
        context: EncryptionContext,
        check: Arc<HeaderCheck>,
    ) -> Self {
        DecryptionMaterials {
            check: Some(check),
            ..DecryptionMaterials::new(suite, context)
        }
    }

    /// The data key, once a keyring's key has been accepted.
    pub fn data_key(&self) -> Option<&DataKey> {
        self.data_key.as_ref()
    }

    /// The accepted data key, taken out for the message layer.
    pub(crate) fn take_data_key(&mut self) -> Option<DataKey> {
        self.data_key.take()
    }

    /// Stores an unwrapped key if it has the suite's length and, when the message is known,
    /// opens the message's header (its key commitment, then its tag).
    ///
    /// # Errors
    /// [`Error::DecryptionFailed`] otherwise, whatever the reason, so that the answer tells
    /// nothing about the unwrapped bytes. The keyrings of this crate do not return it: they go
    /// on to the message's next wrapped key, as the ESDK keyrings do.
    pub fn set_data_key(&mut self, key: DataKey) -> Result<(), Error> {
        if self.offer(key, Choice::from(1)) {
            Ok(())
        } else {
            Err(Error::DecryptionFailed)
        }
    }

    /// Keeps `key` when `unwrapped` is set and the key has the suite's length and opens the
    /// header; returns whether it did. The header is tried even when `unwrapped` is not set, so
    /// that a keyring which hands in a random stand-in for a key it could not unwrap takes the
    /// same path, and the same time, as one whose key is merely wrong.
    pub(crate) fn offer(&mut self, key: DataKey, unwrapped: Choice) -> bool {
        // Past the cap, refuse without work: the count is the attacker's own, no secret.
        if self.offers >= MAX_KEY_OFFERS {
            self.refuse();
            return false;
        }
        self.offers += 1;
        let opens = key.len() == self.suite.key_len()
            && self
                .check
                .as_ref()
                .is_none_or(|c| c.open(key.as_bytes()).is_ok());
        if bool::from(unwrapped & Choice::from(u8::from(opens))) {
            self.data_key = Some(key);
            true
        } else {
            self.refuse();
            false
        }
    }

    /// Records a wrapped key passed over without any work because what made it unusable is
    /// public (a ciphertext of the wrong length): the message still ends in
    /// [`Error::DecryptionFailed`], as when any other wrapped key fails to unwrap.
    pub(crate) fn refuse(&mut self) {
        self.rejected = true;
    }

    /// Whether a keyring unwrapped a key that did not open the header. The message layer then
    /// reports [`Error::DecryptionFailed`], whatever the keyrings said, so that how one wrapped
    /// key failed to unwrap is never visible.
    pub(crate) fn rejected_a_key(&self) -> bool {
        self.rejected
    }
}

/// What a data key must open to belong to a message: its key commitment (committing suites)
/// and its header tag. Built once per message, before the keyrings run, so that a keyring can
/// try each wrapped key against the message itself and go on to the next when one does not fit.
pub(crate) struct HeaderCheck {
    suite: AlgorithmSuite,
    backend: AeadBackend,
    message_id: Vec<u8>,
    commitment: Option<[u8; COMMITMENT_LEN]>,
    /// The header tag's AAD: the header body as read, then the required-only pairs.
    aad: Vec<u8>,
    iv: [u8; IV_LEN],
    tag: [u8; TAG_LEN],
}

impl std::fmt::Debug for HeaderCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderCheck")
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

impl HeaderCheck {
    /// The check for `header`, whose tag covers `aad`.
    pub(crate) fn new(header: &Header, aad: Vec<u8>, backend: AeadBackend) -> Self {
        HeaderCheck {
            suite: header.body.suite,
            backend,
            message_id: header.body.message_id.clone(),
            commitment: header.body.commitment,
            aad,
            iv: header.iv,
            tag: header.tag,
        }
    }

    /// The message's content key, if `data_key` opens the header.
    ///
    /// # Errors
    /// [`Error::DecryptionFailed`] for a key of the wrong length, another commitment or a tag
    /// that does not verify.
    pub(crate) fn open(&self, data_key: &[u8]) -> Result<AeadKey, Error> {
        #[cfg(test)]
        test_count::header_checked();
        if data_key.len() != self.suite.key_len() {
            return Err(Error::DecryptionFailed);
        }
        let derived = derive(self.suite, data_key, &self.message_id);
        if let (Some(expected), Some(stored)) = (&derived.commitment, &self.commitment) {
            if !commitment_matches(expected, stored) {
                return Err(Error::DecryptionFailed);
            }
        }
        let key = AeadKey::new(self.backend, &derived.content_key)
            .map_err(|_| Error::Crypto("bad content key length"))?;
        let mut tag = self.tag;
        key.open_in_place(&self.iv, &self.aad, &mut tag)
            .map_err(|_| Error::DecryptionFailed)?;
        Ok(key)
    }
}

/// Counts header checks on this thread, so that tests bound work by counting, not timing (the
/// sync API runs keyrings on the caller's thread), and lets a test look around during one.
#[cfg(test)]
pub(crate) mod test_count {
    use std::cell::{Cell, RefCell};

    type Hook = Box<dyn Fn()>;

    thread_local! {
        static HEADER_CHECKS: Cell<usize> = const { Cell::new(0) };
        static ON_HEADER_CHECK: RefCell<Option<Hook>> = const { RefCell::new(None) };
    }

    pub(super) fn header_checked() {
        HEADER_CHECKS.with(|c| c.set(c.get() + 1));
        ON_HEADER_CHECK.with(|h| {
            if let Some(hook) = &*h.borrow() {
                hook();
            }
        });
    }

    /// Runs `hook` at each header check on this thread (`None` stops it).
    #[cfg(feature = "cache")] // only the caching keyring's tests need it
    pub(crate) fn on_header_check(hook: Option<Hook>) {
        ON_HEADER_CHECK.with(|h| *h.borrow_mut() = hook);
    }

    /// Header checks made on this thread since the last call.
    pub(crate) fn take_header_checks() -> usize {
        HEADER_CHECKS.with(|c| c.replace(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_keys_zeroize() {
        fn zeroized_on_drop<T: zeroize::ZeroizeOnDrop>() {}
        zeroized_on_drop::<DataKey>();
        let mut key = DataKey::from_slice(&[7; 32]);
        zeroize::Zeroize::zeroize(&mut key);
        assert!(key.as_bytes().iter().all(|&b| b == 0));
        assert!(
            key.is_empty(),
            "zeroizing also empties it, so it cannot be used by mistake"
        );
    }

    #[test]
    fn debug_never_shows_key_bytes() {
        let key = DataKey::from_slice(&[0xAB; 32]);
        let shown = format!("{key:?}");
        assert!(!shown.to_lowercase().contains("ab"), "{shown}");
        assert!(shown.contains("32 bytes"));
    }
}
