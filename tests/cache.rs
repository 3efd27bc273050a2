//! The data-key cache: each limit is enforced exactly, entries are partitioned, unsafe cases
//! bypass it, it holds under concurrent use, and a hit makes no KMS call (against moto).
#![cfg(all(feature = "cache", feature = "kms"))]

#[path = "support/keyrings.rs"]
mod keyrings;
mod support;

use std::io::Write;
use std::num::NonZeroUsize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use kms_envelope::format::EncryptedDataKey;
use kms_envelope::keyring::KmsKeyring;
use kms_envelope::materials::{
    CacheLimits, CachingKeyring, DataKeyCache, DecryptionMaterials, EncryptionMaterials,
};
use kms_envelope::{
    AlgorithmSuite, CommitmentPolicy, Decryptor, EncryptionContext, Encryptor, Error, Keyring,
    RawAesKeyring,
};

type Counting = keyrings::Counting<RawAesKeyring>;

fn counting() -> Arc<Counting> {
    Arc::new(Counting::new(keyrings::raw_aes("cache", "key", 8)))
}

fn caching(inner: &Arc<Counting>, capacity: usize, limits: CacheLimits) -> CachingKeyring {
    let cache = DataKeyCache::new(NonZeroUsize::new(capacity).unwrap());
    CachingKeyring::builder(inner.clone(), cache)
        .partition("test")
        .limits(limits)
        .build()
        .unwrap()
}

fn ctx(v: &str) -> EncryptionContext {
    EncryptionContext::new().with("tenant", v)
}

#[test]
fn message_byte_and_age_limits() {
    let inner = counting();
    let kr = caching(
        &inner,
        10,
        CacheLimits {
            max_messages: 3,
            ..CacheLimits::default()
        },
    );
    for _ in 0..10 {
        Encryptor::new(&kr)
            .context(ctx("a"))
            .encrypt(b"record")
            .unwrap();
    }
    assert_eq!(inner.encrypts(), 4, "ceil(10 / 3)");

    let inner = counting();
    let kr = caching(
        &inner,
        10,
        CacheLimits {
            max_bytes: 2500,
            ..CacheLimits::default()
        },
    );
    for _ in 0..10 {
        Encryptor::new(&kr)
            .context(ctx("a"))
            .encrypt(&[0u8; 1000])
            .unwrap();
    }
    assert_eq!(inner.encrypts(), 5, "two 1000-byte messages per key");
    // A message larger than the byte limit never uses the cache.
    Encryptor::new(&kr)
        .context(ctx("a"))
        .encrypt(&[0u8; 3000])
        .unwrap();
    assert_eq!(inner.encrypts(), 6);
    // A stream of undeclared length bypasses a byte-limited cache; declared, it is counted.
    let mut w = Encryptor::new(&kr)
        .context(ctx("a"))
        .writer(Vec::new())
        .unwrap();
    w.write_all(b"x").unwrap();
    w.finish().unwrap();
    assert_eq!(inner.encrypts(), 7);
    let enc = Encryptor::new(&kr).context(ctx("b")).plaintext_len(10);
    let mut w = enc.writer(Vec::new()).unwrap();
    assert!(w.write_all(&[0u8; 11]).is_err(), "more than declared");
    let mut w = enc.writer(Vec::new()).unwrap();
    w.write_all(&[0u8; 9]).unwrap();
    assert!(w.finish().is_err(), "less than declared");

    let inner = counting();
    let kr = caching(
        &inner,
        10,
        CacheLimits {
            max_age: Duration::from_millis(100),
            ..CacheLimits::default()
        },
    );
    Encryptor::new(&kr).context(ctx("a")).encrypt(b"1").unwrap();
    Encryptor::new(&kr).context(ctx("a")).encrypt(b"2").unwrap();
    assert_eq!(inner.encrypts(), 1);
    std::thread::sleep(Duration::from_millis(150));
    Encryptor::new(&kr).context(ctx("a")).encrypt(b"3").unwrap();
    assert_eq!(inner.encrypts(), 2, "expired");
}

#[test]
fn partitions_contexts_capacity_and_unsafe_suites() {
    let inner = counting();
    let cache = DataKeyCache::new(NonZeroUsize::new(2).unwrap());
    let a = CachingKeyring::builder(inner.clone(), cache.clone())
        .partition("a")
        .build()
        .unwrap();
    let b = CachingKeyring::builder(inner.clone(), cache.clone())
        .partition("b")
        .build()
        .unwrap();
    Encryptor::new(&a).context(ctx("x")).encrypt(b"1").unwrap();
    Encryptor::new(&b).context(ctx("x")).encrypt(b"1").unwrap();
    assert_eq!(inner.encrypts(), 2, "partitions do not share keys");
    Encryptor::new(&a).context(ctx("y")).encrypt(b"1").unwrap();
    assert_eq!(inner.encrypts(), 3, "contexts do not share keys");
    assert_eq!(cache.len(), 2, "capacity 2: the oldest entry was evicted");
    Encryptor::new(&a).context(ctx("x")).encrypt(b"1").unwrap();
    assert_eq!(inner.encrypts(), 4, "evicted entry is gone");

    let inner = counting();
    let kr = caching(&inner, 10, CacheLimits::default());
    for _ in 0..3 {
        Encryptor::new(&kr)
            .suite(AlgorithmSuite::Aes256GcmHkdfSha512CommitKeyEcdsaP384)
            .encrypt(b"signed")
            .unwrap();
        Encryptor::new(&kr)
            .suite(AlgorithmSuite::Aes256GcmIv12Tag16NoKdf)
            .dangerous_commitment_policy(CommitmentPolicy::ForbidEncryptAllowDecrypt)
            .encrypt(b"no kdf")
            .unwrap();
    }
    assert_eq!(inner.encrypts(), 6, "signed and no-KDF suites bypass");
}

#[test]
fn decrypt_side_cache_and_distinct_messages_under_one_key() {
    let inner = counting();
    let kr = caching(&inner, 10, CacheLimits::default());
    let m1 = Encryptor::new(&kr)
        .context(ctx("a"))
        .encrypt(b"one")
        .unwrap();
    let m2 = Encryptor::new(&kr)
        .context(ctx("a"))
        .encrypt(b"two")
        .unwrap();
    assert_ne!(m1, m2);
    assert_ne!(
        m1[1..35],
        m2[1..35],
        "each message has its own ID, so its own content key"
    );
    for _ in 0..5 {
        assert_eq!(Decryptor::new(&kr).decrypt(&m1).unwrap(), b"one");
        assert_eq!(Decryptor::new(&kr).decrypt(&m2).unwrap(), b"two");
    }
    assert_eq!(inner.decrypts(), 1, "same wrapped key and context");
}

#[test]
fn concurrent_use_keeps_the_limits_exactly() {
    let inner = counting();
    let kr = Arc::new(caching(
        &inner,
        200,
        CacheLimits {
            max_messages: 10,
            ..CacheLimits::default()
        },
    ));
    std::thread::scope(|s| {
        for _ in 0..8 {
            let kr = kr.clone();
            s.spawn(move || {
                for i in 0..100 {
                    let m = Encryptor::new(&*kr)
                        .context(ctx("shared"))
                        .encrypt(&[i as u8; 64])
                        .unwrap();
                    assert_eq!(Decryptor::new(&*kr).decrypt(&m).unwrap(), [i as u8; 64]);
                }
            });
        }
    });
    assert_eq!(inner.encrypts(), 80, "800 messages, 10 per data key");
    assert_eq!(inner.decrypts(), 80, "one unwrap per data key");
}

#[test]
fn a_slow_miss_does_not_hold_up_misses_of_other_entries() {
    let (release, rx) = std::sync::mpsc::channel::<()>();
    let rx = std::sync::Mutex::new(rx);
    let timed_out = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let t = timed_out.clone();
    // Data-key calls for `tenant=slow` wait until the test releases them.
    let gated = Arc::new(
        Counting::new(keyrings::raw_aes("cache", "key", 8)).before_encrypt(move |m| {
            if m.context.get("tenant") == Some("slow")
                && rx
                    .lock()
                    .unwrap()
                    .recv_timeout(Duration::from_secs(30))
                    .is_err()
            {
                t.store(true, Ordering::SeqCst);
            }
        }),
    );
    let cache = DataKeyCache::new(NonZeroUsize::new(8).unwrap());
    let kr = CachingKeyring::builder(gated.clone(), cache)
        .partition("test")
        .build()
        .unwrap();
    let (started_tx, started) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        let slow = s.spawn(|| {
            started_tx.send(()).unwrap();
            Encryptor::new(&kr)
                .context(ctx("slow"))
                .encrypt(b"a")
                .unwrap()
        });
        started.recv().unwrap();
        // Give the slow miss time to take its entry's lock (if it has not, this test passes
        // without showing anything, never fails wrongly).
        std::thread::sleep(Duration::from_millis(100));
        // A miss of another entry completes while the slow one still waits in the keyring.
        let fast = Encryptor::new(&kr)
            .context(ctx("fast"))
            .encrypt(b"b")
            .unwrap();
        assert_eq!(Decryptor::new(&kr).decrypt(&fast).unwrap(), b"b");
        release.send(()).unwrap();
        let slow = slow.join().unwrap();
        assert_eq!(Decryptor::new(&kr).decrypt(&slow).unwrap(), b"a");
    });
    assert!(
        !timed_out.load(Ordering::SeqCst),
        "the fast miss waited for the slow one"
    );
}

#[test]
fn a_cache_hit_makes_no_kms_call() {
    let m = support::moto();
    let config = support::sdk_config(&m.endpoint(), "us-east-1");
    let key = support::create_key(&aws_sdk_kms::Client::new(&config), false);
    let proxy = support::proxy::Proxy::start(m.port, |_| support::proxy::Fault::Forward);
    let kms = KmsKeyring::builder()
        .sdk_config(support::sdk_config(&proxy.endpoint(), "us-east-1"))
        .generator(&key)
        .build()
        .unwrap();
    let cache = DataKeyCache::new(NonZeroUsize::new(16).unwrap());
    let kr = CachingKeyring::builder(Arc::new(kms), cache)
        .partition("kms")
        .limits(CacheLimits {
            max_messages: 50,
            ..CacheLimits::default()
        })
        .build()
        .unwrap();
    let mut msgs = Vec::new();
    for i in 0..120u32 {
        msgs.push(
            Encryptor::new(&kr)
                .context(ctx("kms"))
                .encrypt(&i.to_be_bytes())
                .unwrap(),
        );
    }
    assert_eq!(proxy.count("GenerateDataKey"), 3, "ceil(120 / 50)");
    for (i, msg) in msgs.iter().enumerate() {
        assert_eq!(
            Decryptor::new(&kr).decrypt(msg).unwrap(),
            (i as u32).to_be_bytes()
        );
    }
    assert_eq!(proxy.count("Decrypt"), 3, "one Decrypt per data key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_tasks_share_one_keyring_cache_and_client() {
    let m = support::moto();
    let port = m.port;
    let (key, proxy) = tokio::task::spawn_blocking(move || {
        let config = support::sdk_config(&format!("http://127.0.0.1:{port}"), "us-east-1");
        let key = support::create_key(&aws_sdk_kms::Client::new(&config), false);
        (
            key,
            support::proxy::Proxy::start(port, |_| support::proxy::Fault::Forward),
        )
    })
    .await
    .unwrap();
    let endpoint = proxy.endpoint();
    let config = tokio::task::spawn_blocking(move || support::sdk_config(&endpoint, "us-east-1"))
        .await
        .unwrap();
    let kms = KmsKeyring::builder()
        .sdk_config(config)
        .generator(&key)
        .build_async()
        .await
        .unwrap();
    let kr = Arc::new(
        CachingKeyring::builder(
            Arc::new(kms),
            DataKeyCache::new(NonZeroUsize::new(256).unwrap()),
        )
        .partition("load")
        .limits(CacheLimits {
            max_messages: 16,
            ..CacheLimits::default()
        })
        .build()
        .unwrap(),
    );
    let mut tasks = Vec::new();
    for i in 0..64u32 {
        let kr = kr.clone();
        tasks.push(tokio::spawn(async move {
            let pt = vec![i as u8; 10_000 + i as usize];
            let msg = Encryptor::new(&*kr)
                .context(ctx("load"))
                .encrypt_async(&pt)
                .await
                .unwrap();
            let back = Decryptor::new(&*kr)
                .expected_context(ctx("load"))
                .decrypt_async(&msg)
                .await
                .unwrap();
            assert_eq!(back, pt);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        proxy.count("GenerateDataKey"),
        4,
        "64 messages, 16 per data key"
    );
    assert_eq!(proxy.count("Decrypt"), 4, "one Decrypt per data key");
}

/// A keyring that reports success without producing a data key (a buggy custom keyring).
#[derive(Debug)]
struct Empty;

#[async_trait::async_trait]
impl Keyring for Empty {
    async fn on_encrypt(&self, _: &mut EncryptionMaterials) -> Result<(), Error> {
        Ok(())
    }
    async fn on_decrypt(
        &self,
        _: &mut DecryptionMaterials,
        _: &[EncryptedDataKey],
    ) -> Result<(), Error> {
        Ok(())
    }
}

#[test]
fn a_keyring_that_produces_no_data_key_is_an_error_not_a_panic() {
    let cache = DataKeyCache::new(NonZeroUsize::new(4).unwrap());
    let kr = CachingKeyring::builder(Arc::new(Empty), cache.clone())
        .partition("t")
        .build()
        .unwrap();
    let err = Encryptor::new(&kr).encrypt(b"x").unwrap_err();
    assert!(matches!(err, Error::Keyring(_)), "{err:?}");
    let good = RawAesKeyring::new("cache", "key", &[8; 32]).unwrap();
    let msg = Encryptor::new(&good).encrypt(b"x").unwrap();
    let err = Decryptor::new(&kr).decrypt(&msg).unwrap_err();
    assert!(matches!(err, Error::Keyring(_)), "{err:?}");
    assert!(cache.is_empty());
}
