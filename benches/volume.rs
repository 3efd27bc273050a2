//! Volumes against the unencrypted baseline, in one run: random 4 KiB reads and writes on 1 and
//! 2 threads, sequential 1 MiB reads and writes, each beside `pread`/`pwrite` of a raw file of
//! the same size with the same durability (a flush at the same points: after each batch of
//! random writes, after each sequential pass). The block AEADs' own 4 KiB seal rate is
//! `benches/volume_aead.rs`.
//!
//! `cargo bench --bench volume` (short settings: 10 samples, 2 s each), default features: with
//! `--all-features` the test-only `nonce-guard` records every seal and slows the volume. Groups:
//! `volume/random-4k-{read,write}/{ours,raw}/{1,2}`, `volume/seq-1m-{read,write}/{ours,raw}`.
//! Ratio = ours / raw of the medians, same run.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kms_envelope::volume::{Volume, VolumeOptions};
use kms_envelope::RawAesKeyring;

/// The device size: larger than a batch touches, small enough for a quick setup.
const SIZE: u64 = 256 << 20;
const BLOCK: usize = 4096;
/// Random operations per iteration; a write batch ends with one flush.
const BATCH: usize = 256;
/// Bytes per sequential pass (1 MiB requests), ended by one flush when writing.
const SEQ: u64 = 64 << 20;

/// What both sides offer: positional I/O and a durability barrier.
trait Dev: Sync {
    fn read(&self, buf: &mut [u8], offset: u64);
    fn write(&self, data: &[u8], offset: u64);
    fn flush(&self);
}

impl Dev for Volume {
    fn read(&self, buf: &mut [u8], offset: u64) {
        self.read_at(buf, offset).unwrap()
    }
    fn write(&self, data: &[u8], offset: u64) {
        self.write_at(data, offset).unwrap()
    }
    fn flush(&self) {
        Volume::flush(self).unwrap()
    }
}

/// The baseline: a raw file, `pread`/`pwrite`, `fdatasync` as the flush.
struct Raw(File);

impl Dev for Raw {
    fn read(&self, buf: &mut [u8], offset: u64) {
        self.0.read_exact_at(buf, offset).unwrap()
    }
    fn write(&self, data: &[u8], offset: u64) {
        self.0.write_all_at(data, offset).unwrap()
    }
    fn flush(&self) {
        self.0.sync_data().unwrap()
    }
}

/// A small xorshift: the offsets of a batch, the same for both sides.
fn offsets(seed: u64, n: usize) -> Vec<u64> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % (SIZE / BLOCK as u64)) * BLOCK as u64
        })
        .collect()
}

fn random_data(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    getrandom::fill(&mut v).unwrap();
    v
}

/// Writes the whole device once, so that every read finds data.
fn fill(dev: &dyn Dev) {
    let chunk = random_data(1 << 20);
    for off in (0..SIZE).step_by(chunk.len()) {
        dev.write(&chunk, off);
    }
    dev.flush();
}

/// Runs `op` over `offs` on `threads` threads, each taking an equal share.
fn spread(threads: usize, offs: &[u64], op: impl Fn(u64) + Sync) {
    if threads == 1 {
        offs.iter().for_each(|&o| op(o));
        return;
    }
    std::thread::scope(|s| {
        for part in offs.chunks(offs.len().div_ceil(threads)) {
            let op = &op;
            s.spawn(move || part.iter().for_each(|&o| op(o)));
        }
    });
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(std::env::var_os("BENCH_DIR").unwrap_or(".".into())).unwrap();
    let keyring = RawAesKeyring::new("bench", "volume", &[0x42; 32]).unwrap();
    let volume = Volume::create(
        &dir.path().join("vol"),
        SIZE,
        &keyring,
        VolumeOptions::default().block_size(BLOCK as u32),
    )
    .unwrap();
    let raw = Raw(open_raw(&dir.path().join("raw")));
    fill(&volume);
    fill(&raw);
    let sides: [(&str, &dyn Dev); 2] = [("ours", &volume), ("raw", &raw)];
    let block = random_data(BLOCK);

    let mut g = c.benchmark_group("volume/random-4k-write");
    g.throughput(Throughput::Elements(BATCH as u64));
    for threads in [1usize, 2] {
        for (name, dev) in sides {
            let mut seed = 1;
            g.bench_function(BenchmarkId::new(name, threads), |b| {
                b.iter(|| {
                    seed += 1;
                    spread(threads, &offsets(seed, BATCH), |o| dev.write(&block, o));
                    dev.flush();
                })
            });
        }
    }
    g.finish();

    let mut g = c.benchmark_group("volume/random-4k-read");
    g.throughput(Throughput::Elements(BATCH as u64));
    for threads in [1usize, 2] {
        for (name, dev) in sides {
            let mut seed = 7;
            g.bench_function(BenchmarkId::new(name, threads), |b| {
                b.iter(|| {
                    seed += 1;
                    spread(threads, &offsets(seed, BATCH), |o| {
                        let mut buf = [0u8; BLOCK];
                        dev.read(&mut buf, o);
                    });
                })
            });
        }
    }
    g.finish();

    let chunk = random_data(1 << 20);
    let mut g = c.benchmark_group("volume/seq-1m-write");
    g.throughput(Throughput::Bytes(SEQ));
    for (name, dev) in sides {
        g.bench_function(name, |b| {
            b.iter(|| {
                for off in (0..SEQ).step_by(chunk.len()) {
                    dev.write(&chunk, off);
                }
                dev.flush();
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("volume/seq-1m-read");
    g.throughput(Throughput::Bytes(SEQ));
    for (name, dev) in sides {
        let mut buf = vec![0u8; 1 << 20];
        g.bench_function(name, |b| {
            b.iter(|| {
                for off in (0..SEQ).step_by(buf.len()) {
                    dev.read(&mut buf, off);
                }
            })
        });
    }
    g.finish();

    volume.close().unwrap();
}

fn open_raw(path: &Path) -> File {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .unwrap();
    f.set_len(SIZE).unwrap();
    f
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
