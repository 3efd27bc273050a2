//! What a re-wrap costs beside a decrypt and an encrypt of the same 256 MiB message, in one
//! run: a re-wrap decrypts the body and encrypts it again under a fresh data key (in this
//! format a header cannot be re-authenticated under the same data key), so it should cost
//! about their sum. Raw AES keyrings (no KMS), 64 KiB frames, suite 0x0478, into a sink.
//!
//! `cargo bench --bench rewrap` (`-- /1thread` or `-- /all` runs one thread count).

#[path = "../tests/support/data.rs"]
mod data;

use std::io::{self, Read, Write};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kms_envelope::{Decryptor, Encryptor, RawAesKeyring};

const LEN: usize = 256 << 20;
/// The application's buffer for the streaming decrypt and encrypt, as the re-wrap uses.
const BUF: usize = 4 << 20;

fn rewrap(c: &mut Criterion) {
    let old = RawAesKeyring::new("bench", "old", &[1; 32]).unwrap();
    let new = RawAesKeyring::new("bench", "new", &[2; 32]).unwrap();
    let pt = data::pseudo_random(LEN);
    let msg = Encryptor::new(&old).encrypt(&pt).unwrap();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut g = c.benchmark_group("rewrap_256MiB");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(6));
    g.throughput(Throughput::Bytes(LEN as u64));
    for (threads, name) in [(1, "1thread"), (cores, "all")] {
        g.bench_function(BenchmarkId::new("decrypt", name), |b| {
            let mut buf = vec![0u8; BUF];
            b.iter(|| {
                let mut r = Decryptor::new(&old)
                    .threads(threads)
                    .reader(&msg[..])
                    .unwrap();
                while r.read(&mut buf).unwrap() > 0 {}
            })
        });
        g.bench_function(BenchmarkId::new("encrypt", name), |b| {
            b.iter(|| {
                let mut w = Encryptor::new(&new)
                    .threads(threads)
                    .writer(io::sink())
                    .unwrap();
                for chunk in pt.chunks(BUF) {
                    w.write_all(chunk).unwrap();
                }
                w.finish().unwrap()
            })
        });
        g.bench_function(BenchmarkId::new("rewrap", name), |b| {
            b.iter(|| {
                Decryptor::new(&old)
                    .threads(threads)
                    .rewrap(&msg[..])
                    .unwrap()
                    .remove("bench:old")
                    .unwrap()
                    .write(&new, io::sink())
                    .unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, rewrap);
criterion_main!(benches);
