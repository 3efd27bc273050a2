//! Keyrings for tests: one that counts the calls reaching the keyring it wraps, and one that
//! plants a wrapped key of the test's choosing in a message.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};

use kms_envelope::format::EncryptedDataKey;
use kms_envelope::materials::{DecryptionMaterials, EncryptionMaterials};
use kms_envelope::{Error, Keyring, RawAesKeyring};

/// A raw AES keyring whose 32-byte key is `byte` repeated.
pub fn raw_aes(namespace: &str, name: &str, byte: u8) -> RawAesKeyring {
    RawAesKeyring::new(namespace, name, &[byte; 32]).expect("a raw AES keyring")
}

type Hook = Box<dyn Fn(&EncryptionMaterials) + Send + Sync>;

/// Counts the calls that reach the wrapped keyring, and runs an optional hook before each
/// encryption reaches it (to hold one up, say).
pub struct Counting<K> {
    pub inner: K,
    encrypts: AtomicUsize,
    decrypts: AtomicUsize,
    before_encrypt: Option<Hook>,
}

impl<K: std::fmt::Debug> std::fmt::Debug for Counting<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counting")
            .field("inner", &self.inner)
            .field("encrypts", &self.encrypts)
            .field("decrypts", &self.decrypts)
            .finish_non_exhaustive()
    }
}

impl<K> Counting<K> {
    pub fn new(inner: K) -> Self {
        Counting {
            inner,
            encrypts: AtomicUsize::new(0),
            decrypts: AtomicUsize::new(0),
            before_encrypt: None,
        }
    }
    /// Runs `hook` on each encryption's materials before they reach the wrapped keyring.
    pub fn before_encrypt(
        mut self,
        hook: impl Fn(&EncryptionMaterials) + Send + Sync + 'static,
    ) -> Self {
        self.before_encrypt = Some(Box::new(hook));
        self
    }
    pub fn encrypts(&self) -> usize {
        self.encrypts.load(Ordering::SeqCst)
    }
    pub fn decrypts(&self) -> usize {
        self.decrypts.load(Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl<K: Keyring> Keyring for Counting<K> {
    async fn on_encrypt(&self, m: &mut EncryptionMaterials) -> Result<(), Error> {
        self.encrypts.fetch_add(1, Ordering::SeqCst);
        if let Some(hook) = &self.before_encrypt {
            hook(m);
        }
        self.inner.on_encrypt(m).await
    }
    async fn on_decrypt(
        &self,
        m: &mut DecryptionMaterials,
        e: &[EncryptedDataKey],
    ) -> Result<(), Error> {
        self.decrypts.fetch_add(1, Ordering::SeqCst);
        self.inner.on_decrypt(m, e).await
    }
}

/// A keyring that plants a wrapped key of the test's choosing in a message: it makes the data key
/// when it comes first and adds its wrapped key beside the real ones, so that the header
/// authenticates with that key in place, as a message written by an attacker (or by a keyring
/// that wraps under some other key) would. It never unwraps.
#[derive(Debug)]
pub struct Planted(pub EncryptedDataKey);

#[async_trait::async_trait]
impl Keyring for Planted {
    async fn on_encrypt(&self, m: &mut EncryptionMaterials) -> Result<(), Error> {
        m.data_key_or_generate()?;
        m.encrypted_data_keys.push(self.0.clone());
        Ok(())
    }
    async fn on_decrypt(
        &self,
        _: &mut DecryptionMaterials,
        _: &[EncryptedDataKey],
    ) -> Result<(), Error> {
        Err(Error::NoUsableDataKey(Vec::new()))
    }
}
