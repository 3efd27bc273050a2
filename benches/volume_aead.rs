//! The volume's block AEAD, alone: the 4 KiB seal rate of AES-256-GCM-SIV against AES-256-GCM
//! (aws-lc-rs, the calls `src/crypto/aead.rs` makes), and the cost of the random nonce each
//! volume seal draws from the OS. Decides the default (`VolumeAead`), see docs/VOLUME-FORMAT.md.
//!
//! `cargo bench --all-features --bench volume_aead`

use std::time::Duration;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, AES_256_GCM_SIV};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const BLOCK: usize = 4096;

fn seal_4k(c: &mut Criterion) {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).unwrap();
    let aad = [7u8; 53]; // the volume's AAD length
    let mut g = c.benchmark_group("volume_aead_seal_4KiB");
    g.throughput(Throughput::Bytes(BLOCK as u64));
    g.sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for (name, alg) in [("aes256_gcm_siv", &AES_256_GCM_SIV), ("aes256_gcm", &AES_256_GCM)] {
        let k = LessSafeKey::new(UnboundKey::new(alg, &key).unwrap());
        let mut block = vec![0x5au8; BLOCK];
        // A counter nonce here only so that the bench never repeats one; volumes draw them at
        // random (measured separately below).
        let mut n = 0u64;
        g.bench_function(name, |b| {
            b.iter(|| {
                n += 1;
                let mut nonce = [0u8; 12];
                nonce[4..].copy_from_slice(&n.to_be_bytes());
                k.seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(&aad[..]),
                    &mut block,
                )
                .unwrap()
            })
        });
    }
    g.finish();
    let mut g = c.benchmark_group("volume_nonce");
    g.sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    g.bench_function("getrandom_12_bytes", |b| {
        b.iter(|| {
            let mut nonce = [0u8; 12];
            getrandom::fill(&mut nonce).unwrap();
            nonce
        })
    });
    g.finish();
}

criterion_group!(benches, seal_4k);
criterion_main!(benches);
