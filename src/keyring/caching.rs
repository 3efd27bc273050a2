//! A data-key cache (ESDK-style caching): reuse one data key for several messages, within
//! limits, so that hot paths encrypting many small records do not call KMS for each.
//!
//! Safe because every message still derives its own content key (HKDF salted with a fresh
//! message ID). That is also why suites without a KDF are never cached, nor signed suites,
//! whose per-message signing key is part of the context.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lru::LruCache;

use crate::format::{EncryptedDataKey, EncryptionContext, Kdf, PUBLIC_KEY_FIELD};
use crate::keyring::Keyring;
use crate::materials::{DataKey, DecryptionMaterials, EncryptionMaterials};
use crate::Error;

/// How long and how much one cached data key may be used (see [`CachingKeyringBuilder`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// Entries older than this are not used (and are dropped).
    pub max_age: Duration,
    /// Messages encrypted under one data key, at most.
    pub max_messages: u64,
    /// Plaintext bytes encrypted under one data key, at most. Messages whose length is not
    /// declared up front bypass the cache unless this is `u64::MAX`.
    pub max_bytes: u64,
}

impl Default for CacheLimits {
    fn default() -> Self {
        CacheLimits {
            max_age: Duration::from_secs(300),
            max_messages: MAX_MESSAGES_PER_KEY,
            max_bytes: u64::MAX,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum EntryKey {
    Encrypt {
        partition: Arc<str>,
        suite: u16,
        context: Vec<u8>,
    },
    Decrypt {
        partition: Arc<str>,
        suite: u16,
        context: Vec<u8>,
        edks: Vec<u8>,
    },
}

struct Entry {
    key: DataKey,
    edks: Vec<EncryptedDataKey>,
    created: Instant,
    messages: u64,
    bytes: u64,
}

/// Cached data keys, shared by any number of [`CachingKeyring`]s and threads. Evicted and
/// expired keys are zeroized as they are dropped.
pub struct DataKeyCache {
    entries: Mutex<LruCache<EntryKey, Entry>>,
    /// One lock per entry being filled, held while its miss calls the keyring, so that
    /// concurrent misses of one entry make one keyring call, not many, and the limits hold
    /// exactly under load; misses of different entries do not wait for each other.
    filling: Mutex<HashMap<EntryKey, Arc<FillLock>>>,
}

type FillLock = futures_util::lock::Mutex<()>;

/// Held while one entry's miss is filled; the entry's lock leaves the map with its last user.
struct Filling<'a> {
    cache: &'a DataKeyCache,
    key: &'a EntryKey,
    _guard: futures_util::lock::OwnedMutexGuard<()>,
}

impl Drop for Filling<'_> {
    fn drop(&mut self) {
        let mut filling = self.cache.filling.lock().expect("cache lock");
        // Two references: the map's and this guard's. More means others wait for it.
        if filling
            .get(self.key)
            .is_some_and(|l| Arc::strong_count(l) <= 2)
        {
            filling.remove(self.key);
        }
    }
}

impl std::fmt::Debug for DataKeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let len = self.entries.lock().map(|e| e.len()).unwrap_or(0);
        f.debug_struct("DataKeyCache")
            .field("entries", &len)
            .finish()
    }
}

impl DataKeyCache {
    /// A cache holding at most `capacity` data keys (least recently used are evicted).
    pub fn new(capacity: NonZeroUsize) -> Arc<Self> {
        Arc::new(DataKeyCache {
            entries: Mutex::new(LruCache::new(capacity)),
            filling: Mutex::new(HashMap::new()),
        })
    }

    /// Keeps an entry (evicting the least recently used one when full).
    fn keep(&self, key: &EntryKey, entry: Entry) {
        self.entries
            .lock()
            .expect("cache lock")
            .put(key.clone(), entry);
    }

    /// Waits until no other task fills `key`, then holds it.
    async fn fill<'a>(&'a self, key: &'a EntryKey) -> Filling<'a> {
        let lock = self
            .filling
            .lock()
            .expect("cache lock")
            .entry(key.clone())
            .or_default()
            .clone();
        Filling {
            cache: self,
            key,
            _guard: lock.lock_owned().await,
        }
    }

    /// Data keys held now.
    pub fn len(&self) -> usize {
        self.entries.lock().expect("cache lock").len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Wraps a keyring with a [`DataKeyCache`]: a hit costs no call to the wrapped keyring.
#[derive(Debug, Clone)]
pub struct CachingKeyring {
    inner: Arc<dyn Keyring>,
    cache: Arc<DataKeyCache>,
    partition: Arc<str>,
    limits: CacheLimits,
}

fn serialized_edks(edks: &[EncryptedDataKey]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in edks {
        for field in [e.provider_id.as_bytes(), &e.provider_info, &e.ciphertext] {
            out.extend_from_slice(&(field.len() as u32).to_be_bytes());
            out.extend_from_slice(field);
        }
    }
    out
}

/// A copy of the data key the wrapped keyring just produced, to keep.
fn produced(data_key: Option<&DataKey>) -> Result<DataKey, Error> {
    data_key.map(DataKey::duplicate).ok_or_else(|| {
        Error::Keyring("the wrapped keyring succeeded without producing a data key".into())
    })
}

fn cacheable(suite: crate::AlgorithmSuite, context: &EncryptionContext) -> bool {
    suite.kdf() != Kdf::Identity && !context.contains_key(PUBLIC_KEY_FIELD)
}

/// Builds a [`CachingKeyring`]: [`CachingKeyring::builder`], the limits, then
/// [`build`](Self::build).
#[derive(Debug)]
#[must_use]
pub struct CachingKeyringBuilder {
    inner: Arc<dyn Keyring>,
    cache: Arc<DataKeyCache>,
    partition: Option<String>,
    limits: CacheLimits,
}

impl CachingKeyringBuilder {
    /// The cache partition: caching keyrings share a cached data key only when they name the
    /// same partition, so keyrings that must not share keys use different ones. Without this,
    /// the keyring gets a random partition of its own (its clones share it).
    pub fn partition(mut self, partition: impl Into<String>) -> Self {
        self.partition = Some(partition.into());
        self
    }

    /// All the limits at once (default: [`CacheLimits::default`]).
    pub fn limits(mut self, limits: CacheLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Entries older than this are not used (and are dropped). Default: 5 minutes.
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.limits.max_age = max_age;
        self
    }

    /// Messages encrypted under one data key, at most: 1 to 2^32 (the default).
    pub fn max_messages(mut self, max_messages: u64) -> Self {
        self.limits.max_messages = max_messages;
        self
    }

    /// Plaintext bytes encrypted under one data key, at most (default: no limit). Messages
    /// whose length is not declared up front (`Encryptor::plaintext_len`) bypass the cache
    /// unless this is `u64::MAX`.
    pub fn max_bytes(mut self, max_bytes: u64) -> Self {
        self.limits.max_bytes = max_bytes;
        self
    }

    /// The keyring.
    ///
    /// # Errors
    /// [`Error::Misuse`] for `max_messages` of 0 or above 2^32 (the ESDK's bound), or a
    /// `max_age` of zero; [`Error::Crypto`] if no random partition can be drawn.
    pub fn build(self) -> Result<CachingKeyring, Error> {
        let limits = self.limits;
        if !(1..=MAX_MESSAGES_PER_KEY).contains(&limits.max_messages) {
            return Err(Error::Misuse(format!(
                "CachingKeyringBuilder::max_messages must be between 1 and 2^32, not {}",
                limits.max_messages
            )));
        }
        if limits.max_age.is_zero() {
            return Err(Error::Misuse(
                "CachingKeyringBuilder::max_age must be above zero: a zero age caches nothing"
                    .into(),
            ));
        }
        let partition = match self.partition {
            Some(p) => p,
            None => {
                let mut id = [0u8; 16];
                crate::crypto::random_bytes(&mut id)?;
                // Not a name a caller would choose: the prefix keeps it apart from named ones.
                let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
                format!("\0random:{hex}")
            }
        };
        Ok(CachingKeyring {
            inner: self.inner,
            cache: self.cache,
            partition: Arc::from(partition),
            limits,
        })
    }
}

/// The most messages one cached data key may encrypt (the ESDK's bound, 2^32).
const MAX_MESSAGES_PER_KEY: u64 = 1 << 32;

impl CachingKeyring {
    /// A builder for a keyring that caches `inner`'s data keys in `cache`:
    /// `CachingKeyring::builder(inner, cache).partition("app").max_messages(1000).build()?`.
    pub fn builder(inner: Arc<dyn Keyring>, cache: Arc<DataKeyCache>) -> CachingKeyringBuilder {
        CachingKeyringBuilder {
            inner,
            cache,
            partition: None,
            limits: CacheLimits::default(),
        }
    }

    fn fresh(&self, e: &Entry, now: Instant) -> bool {
        now.duration_since(e.created) < self.limits.max_age
    }

    /// Uses a cached data key for one more message of `bytes`, if one is within its limits.
    fn take_encrypt_hit(
        &self,
        key: &EntryKey,
        bytes: u64,
        materials: &mut EncryptionMaterials,
    ) -> bool {
        let mut entries = self.cache.entries.lock().expect("cache lock");
        let Some(e) = entries.get_mut(key) else {
            return false;
        };
        let usable = self.fresh(e, Instant::now())
            && e.messages < self.limits.max_messages
            && e.bytes.saturating_add(bytes) <= self.limits.max_bytes;
        if !usable {
            entries.pop(key); // used up or stale: its key is zeroized as it drops
            return false;
        }
        e.messages += 1;
        e.bytes += bytes;
        materials.data_key = Some(e.key.duplicate());
        materials.encrypted_data_keys.extend(e.edks.iter().cloned());
        true
    }

    fn take_decrypt_hit(
        &self,
        key: &EntryKey,
        materials: &mut DecryptionMaterials,
    ) -> Result<bool, Error> {
        // Copy the key under the cache's lock, check it against the header (HKDF and a GCM
        // pass over up to a whole header) after releasing it, so that other messages wait for
        // no check but their own.
        let cached = {
            let mut entries = self.cache.entries.lock().expect("cache lock");
            let Some(e) = entries.get(key) else {
                return Ok(false);
            };
            if !self.fresh(e, Instant::now()) {
                entries.pop(key);
                return Ok(false);
            }
            e.key.duplicate()
        };
        materials.set_data_key(cached)?;
        Ok(true)
    }
}

#[async_trait::async_trait]
impl Keyring for CachingKeyring {
    async fn on_encrypt(&self, materials: &mut EncryptionMaterials) -> Result<(), Error> {
        let len = materials.plaintext_len;
        let bounded = self.limits.max_bytes == u64::MAX || len.is_some();
        // A request that brings its own data key (a multi-keyring's child; a re-wrap, whose
        // fresh key must never be swapped for a cached one) is passed through: the cache is
        // neither consulted nor filled.
        if materials.data_key.is_some()
            || !bounded
            || !cacheable(materials.suite, &materials.context)
        {
            return self.inner.on_encrypt(materials).await;
        }
        let bytes = len.unwrap_or(0);
        if bytes > self.limits.max_bytes {
            return self.inner.on_encrypt(materials).await;
        }
        let key = EntryKey::Encrypt {
            partition: self.partition.clone(),
            suite: materials.suite.id(),
            context: materials.context.serialize()?,
        };
        if self.take_encrypt_hit(&key, bytes, materials) {
            return Ok(());
        }
        let _filling = self.cache.fill(&key).await;
        if self.take_encrypt_hit(&key, bytes, materials) {
            return Ok(());
        }
        let now = Instant::now();
        let before = materials.encrypted_data_keys.len();
        self.inner.on_encrypt(materials).await?;
        // A data key good for one message only is not worth keeping.
        if self.limits.max_messages > 1 {
            let entry = Entry {
                key: produced(materials.data_key.as_ref())?,
                edks: materials.encrypted_data_keys[before..].to_vec(),
                created: now,
                messages: 1,
                bytes,
            };
            self.cache.keep(&key, entry);
        }
        Ok(())
    }

    async fn on_decrypt(
        &self,
        materials: &mut DecryptionMaterials,
        edks: &[EncryptedDataKey],
    ) -> Result<(), Error> {
        if !cacheable(materials.suite, &materials.context) {
            return self.inner.on_decrypt(materials, edks).await;
        }
        let key = EntryKey::Decrypt {
            partition: self.partition.clone(),
            suite: materials.suite.id(),
            context: materials.context.serialize()?,
            edks: serialized_edks(edks),
        };
        if self.take_decrypt_hit(&key, materials)? {
            return Ok(());
        }
        let _filling = self.cache.fill(&key).await;
        if self.take_decrypt_hit(&key, materials)? {
            return Ok(());
        }
        let now = Instant::now();
        self.inner.on_decrypt(materials, edks).await?;
        let entry = Entry {
            // Only a key that passed the materials' check is held there, so only such is kept.
            key: produced(materials.data_key())?,
            edks: Vec::new(),
            created: now,
            messages: 0,
            bytes: 0,
        };
        self.cache.keep(&key, entry);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use super::*;
    use crate::materials::test_count::on_header_check;
    use crate::{Decryptor, Encryptor, RawAesKeyring};

    #[test]
    fn a_cache_hit_is_checked_outside_the_cache_lock() {
        let aes: Arc<dyn Keyring> = Arc::new(RawAesKeyring::new("ns", "key", &[7; 32]).unwrap());
        let cache = DataKeyCache::new(NonZeroUsize::new(4).unwrap());
        let caching = CachingKeyring::builder(aes.clone(), cache.clone())
            .build()
            .unwrap();
        let message = Encryptor::new(&*aes).encrypt(b"cached").unwrap();
        // The first decryption fills the cache; the second is a hit.
        assert_eq!(
            Decryptor::new(&caching).decrypt(&message).unwrap(),
            b"cached"
        );
        assert_eq!(cache.len(), 1);
        let locked_during_check = Rc::new(RefCell::new(Vec::new()));
        let (seen, c) = (locked_during_check.clone(), cache.clone());
        on_header_check(Some(Box::new(move || {
            seen.borrow_mut().push(c.entries.try_lock().is_err());
        })));
        let hit = Decryptor::new(&caching).decrypt(&message);
        on_header_check(None);
        assert_eq!(hit.unwrap(), b"cached");
        let locked = locked_during_check.borrow();
        assert!(!locked.is_empty(), "the hit's key was checked");
        assert!(
            locked.iter().all(|l| !l),
            "checked under the lock: {locked:?}"
        );
    }

    #[test]
    fn the_builder_refuses_limits_out_of_range() {
        let aes: Arc<dyn Keyring> = Arc::new(RawAesKeyring::new("ns", "key", &[7; 32]).unwrap());
        let cache = DataKeyCache::new(NonZeroUsize::new(4).unwrap());
        let builder = || CachingKeyring::builder(aes.clone(), cache.clone());
        for bad in [
            builder().max_messages(0),
            builder().max_messages((1 << 32) + 1),
            builder().max_age(Duration::ZERO),
        ] {
            let err = bad.build().unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::Misuse, "{err:?}");
        }
        let kr = builder()
            .max_age(Duration::from_secs(1))
            .max_messages(1 << 32)
            .max_bytes(10)
            .build()
            .unwrap();
        let expected = CacheLimits {
            max_age: Duration::from_secs(1),
            max_messages: 1 << 32,
            max_bytes: 10,
        };
        assert_eq!(kr.limits, expected);
    }

    #[test]
    fn keyrings_without_a_partition_share_no_keys() {
        let aes: Arc<dyn Keyring> = Arc::new(RawAesKeyring::new("ns", "key", &[7; 32]).unwrap());
        let cache = DataKeyCache::new(NonZeroUsize::new(4).unwrap());
        let a = CachingKeyring::builder(aes.clone(), cache.clone())
            .build()
            .unwrap();
        let b = CachingKeyring::builder(aes.clone(), cache.clone())
            .build()
            .unwrap();
        assert_ne!(a.partition, b.partition);
        Encryptor::new(&a).encrypt(b"1").unwrap();
        Encryptor::new(&a.clone()).encrypt(b"2").unwrap();
        assert_eq!(cache.len(), 1, "a clone shares its keyring's partition");
        Encryptor::new(&b).encrypt(b"3").unwrap();
        assert_eq!(cache.len(), 2, "another keyring has a partition of its own");
    }
}
