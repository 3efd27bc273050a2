//! KMS round trips against moto on loopback: one `GenerateDataKey` (a 1 KiB message encrypted
//! under a KMS key) and one `Decrypt` (that message decrypted), beside the same message under a
//! raw AES keyring, which makes no network call.

#[path = "../tests/support/mod.rs"]
mod support;

use std::num::NonZeroUsize;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kms_envelope::keyring::KmsKeyring;
use kms_envelope::{CacheLimits, CachingKeyring, DataKeyCache};
use kms_envelope::{Decryptor, Encryptor, RawAesKeyring};

fn kms(c: &mut Criterion) {
    let m = support::moto();
    let config = support::sdk_config(&m.endpoint(), "us-east-1");
    let key = support::create_key(&aws_sdk_kms::Client::new(&config), false);
    let client = aws_sdk_kms::Client::new(&config);
    let keyring = KmsKeyring::builder()
        .sdk_config(config)
        .generator(&key)
        .build()
        .unwrap();
    let raw = RawAesKeyring::new("bench", "key", &[1; 32]).unwrap();
    let record = vec![0x5Au8; 1024];
    let msg = Encryptor::new(&keyring).encrypt(&record).unwrap();

    let mut g = c.benchmark_group("kms_1KiB_message");
    g.throughput(Throughput::Elements(1));
    g.bench_function("raw_aes_encrypt", |b| {
        b.iter(|| Encryptor::new(&raw).encrypt(&record).unwrap())
    });
    // The baseline: the SDK's own call, on a runtime the bench owns.
    let rt = tokio::runtime::Runtime::new().unwrap();
    g.bench_function("sdk_GenerateDataKey_direct", |b| {
        b.iter(|| {
            rt.block_on(
                client
                    .generate_data_key()
                    .key_id(&key)
                    .number_of_bytes(32)
                    .send(),
            )
            .unwrap()
        })
    });
    g.bench_function("kms_encrypt_GenerateDataKey", |b| {
        b.iter(|| Encryptor::new(&keyring).encrypt(&record).unwrap())
    });
    g.bench_function("kms_decrypt_Decrypt", |b| {
        b.iter(|| Decryptor::new(&keyring).decrypt(&msg).unwrap())
    });
    // With the data-key cache: one GenerateDataKey per 10,000 messages.
    let cached = CachingKeyring::builder(
        Arc::new(keyring.clone()),
        DataKeyCache::new(NonZeroUsize::new(64).unwrap()),
    )
    .partition("bench")
    .limits(CacheLimits {
        max_messages: 10_000,
        ..CacheLimits::default()
    })
    .build()
    .unwrap();
    g.bench_function("kms_encrypt_cached", |b| {
        b.iter(|| Encryptor::new(&cached).threads(1).encrypt(&record).unwrap())
    });
    let cached_msg = Encryptor::new(&cached).encrypt(&record).unwrap();
    g.bench_function("kms_decrypt_cached", |b| {
        b.iter(|| {
            Decryptor::new(&cached)
                .threads(1)
                .decrypt(&cached_msg)
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, kms);
criterion_main!(benches);
