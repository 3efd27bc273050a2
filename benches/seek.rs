//! The seekable reader against the one-shot decrypt of the same message, in one run: a message
//! of 256 MiB in 64 MiB frames (the frame length a writer, or an attacker, may choose), read
//! with `io::copy` (8 KiB reads) through `SeekableReader`. A read must cost the bytes it
//! returns plus one decryption per frame, not a frame's worth of copying per call.
//!
//! `cargo bench --all-features --bench seek`

#[path = "../tests/support/data.rs"]
mod data;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kms_envelope::{Decryptor, Encryptor, RawAesKeyring};

const LEN: usize = 256 << 20;
const FRAME: u32 = 64 << 20;

fn seekable_vs_one_shot(c: &mut Criterion) {
    let kr = RawAesKeyring::new("bench", "key", &[5; 32]).unwrap();
    let msg = Encryptor::new(&kr)
        .frame_length(FRAME)
        .encrypt(&data::pseudo_random(LEN))
        .unwrap();
    let dec = Decryptor::new(&kr);
    let mut g = c.benchmark_group("seek_64MiB_frames");
    g.throughput(Throughput::Bytes(LEN as u64));
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.bench_function("one_shot_decrypt", |b| {
        b.iter(|| dec.decrypt(&msg).unwrap())
    });
    g.bench_function("seekable_io_copy_8KiB", |b| {
        b.iter(|| {
            let mut r = dec.seekable(&msg[..]).unwrap();
            let n = std::io::copy(&mut r, &mut std::io::sink()).unwrap();
            assert_eq!(n, LEN as u64);
        })
    });
    g.finish();
}

criterion_group!(benches, seekable_vs_one_shot);
criterion_main!(benches);
