//! What keyrings exchange with the message layer: the data key and the materials around it,
//! and the data-key cache (feature `cache`).

#[cfg(feature = "cache")]
mod cache;
#[cfg(feature = "cache")]
pub use cache::{CacheLimits, CachingKeyring, DataKeyCache};

use zeroize::Zeroizing;

use crate::format::{AlgorithmSuite, EncryptedDataKey, EncryptionContext};
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
#[derive(Debug)]
#[non_exhaustive]
pub struct DecryptionMaterials {
    /// The message's suite.
    pub suite: AlgorithmSuite,
    /// The full encryption context (stored and reproduced pairs).
    pub context: EncryptionContext,
    /// Set by the first keyring that unwraps a data key.
    pub data_key: Option<DataKey>,
}

impl DecryptionMaterials {
    /// Materials with no data key yet.
    pub fn new(suite: AlgorithmSuite, context: EncryptionContext) -> Self {
        DecryptionMaterials {
            suite,
            context,
            data_key: None,
        }
    }

    /// Stores an unwrapped key after checking its length against the suite.
    ///
    /// # Errors
    /// When the key has the wrong length for the suite.
    pub fn set_data_key(&mut self, key: DataKey) -> Result<(), Error> {
        if key.len() != self.suite.key_len() {
            return Err(Error::Keyring(format!(
                "the unwrapped data key is {} bytes but suite {} needs {}",
                key.len(),
                self.suite,
                self.suite.key_len()
            )));
        }
        self.data_key = Some(key);
        Ok(())
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
