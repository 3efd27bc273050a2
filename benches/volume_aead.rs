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
    for (name, alg) in [
        ("aes256_gcm_siv", &AES_256_GCM_SIV),
        ("aes256_gcm", &AES_256_GCM),
    ] {
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

/// A quick check of the whole volume path against plain `pread`/`pwrite` of a file of the same
/// size (page cache, no fsync on either side; the volume's journal checkpoints are included).
/// The full matrix (threads, durability, sequential) is `benches/volume.rs`.
fn volume_quick(c: &mut Criterion) {
    use kms_envelope::volume::{Volume, VolumeOptions};
    use kms_envelope::RawAesKeyring;
    use std::os::unix::fs::FileExt;

    const SIZE: u64 = 256 << 20;
    let dir = tempfile::tempdir().unwrap();
    let keyring = RawAesKeyring::new("bench", "vol", &[3; 32]).unwrap();
    let vol = Volume::create(
        &dir.path().join("v"),
        SIZE,
        &keyring,
        VolumeOptions::default(),
    )
    .unwrap();
    let raw = std::fs::File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(dir.path().join("raw"))
        .unwrap();
    raw.set_len(SIZE).unwrap();
    let data = vec![0xa5u8; BLOCK];
    // Fill both, so that reads find data blocks.
    for i in 0..SIZE / 1_048_576 {
        vol.write_at(&vec![1u8; 1 << 20], i << 20).unwrap();
        raw.write_all_at(&vec![1u8; 1 << 20], i << 20).unwrap();
    }
    vol.flush().unwrap();
    let mut rng = 0x2545f4914f6cdd1du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % (SIZE / BLOCK as u64)) * BLOCK as u64
    };
    let mut g = c.benchmark_group("volume_quick_random_4KiB");
    g.throughput(Throughput::Bytes(BLOCK as u64));
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    let mut buf = vec![0u8; BLOCK];
    g.bench_function("raw_pread", |b| {
        b.iter(|| raw.read_exact_at(&mut buf, next()).unwrap())
    });
    g.bench_function("volume_read", |b| {
        b.iter(|| vol.read_at(&mut buf, next()).unwrap())
    });
    g.bench_function("raw_pwrite", |b| {
        b.iter(|| raw.write_all_at(&data, next()).unwrap())
    });
    g.bench_function("volume_write", |b| {
        b.iter(|| vol.write_at(&data, next()).unwrap())
    });
    g.finish();
    let mut g = c.benchmark_group("volume_quick_sequential_1MiB");
    g.throughput(Throughput::Bytes(1 << 20));
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    let mut big = vec![0u8; 1 << 20];
    let mut at = 0u64;
    g.bench_function("volume_read", |b| {
        b.iter(|| {
            vol.read_at(&mut big, at).unwrap();
            at = (at + (1 << 20)) % SIZE;
        })
    });
    g.bench_function("volume_write", |b| {
        b.iter(|| {
            vol.write_at(&big, at).unwrap();
            at = (at + (1 << 20)) % SIZE;
        })
    });
    g.finish();
}

/// Filling a fresh volume (import, restore, `qemu-img convert` into a new image): 16 MiB in
/// 1 MiB writes and a flush, against `pwrite` of the same into a fresh file with an fdatasync.
fn volume_fill(c: &mut Criterion) {
    use kms_envelope::volume::{Volume, VolumeOptions};
    use kms_envelope::RawAesKeyring;
    use std::os::unix::fs::FileExt;

    const SIZE: u64 = 16 << 20;
    let dir = tempfile::tempdir().unwrap();
    let keyring = RawAesKeyring::new("bench", "vol", &[3; 32]).unwrap();
    let chunk = vec![0x5au8; 1 << 20];
    let mut g = c.benchmark_group("volume_fill_16MiB");
    g.throughput(Throughput::Bytes(SIZE));
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(4));
    g.bench_function("raw_pwrite", |b| {
        b.iter_batched(
            || {
                let path = dir.path().join("raw");
                let _ = std::fs::remove_file(&path);
                let f = std::fs::File::create(&path).unwrap();
                f.set_len(SIZE).unwrap();
                f
            },
            |f| {
                for i in 0..SIZE >> 20 {
                    f.write_all_at(&chunk, i << 20).unwrap();
                }
                f.sync_data().unwrap();
            },
            criterion::BatchSize::PerIteration,
        )
    });
    g.bench_function("volume_write", |b| {
        b.iter_batched(
            || {
                let path = dir.path().join("v");
                let _ = std::fs::remove_file(&path);
                Volume::create(&path, SIZE, &keyring, VolumeOptions::default()).unwrap()
            },
            |v| {
                for i in 0..SIZE >> 20 {
                    v.write_at(&chunk, i << 20).unwrap();
                }
                v.flush().unwrap();
                v
            },
            criterion::BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, seal_4k, volume_quick, volume_fill);
criterion_main!(benches);
