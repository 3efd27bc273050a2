//! Streaming throughput beside its baselines, in one run:
//! 1. the raw primitive: aws-lc-rs AES-256-GCM seal/open of one hot chunk per frame length,
//!    and over the same 256 MiB as the streams (out of place, no copies: the in-memory floor);
//! 2. this crate's streaming encrypt/decrypt of 256 MiB in memory, one thread and all cores,
//!    at 4 KiB, 64 KiB and 1 MiB frames, with each AEAD backend;
//! 3. the official `aws-esdk` crate on 64 MiB with a raw AES keyring, suite 0x0478, at the
//!    same frame lengths;
//! 4. 1 KiB messages per second under a raw AES keyring;
//! 5. `Decryptor::reader` and `Encryptor::writer` driven the way applications drive them: a
//!    256 MiB message read or written through buffers of 8 KiB to 4 MiB, one thread and all.
//!
//! `cargo bench --bench throughput` (a filter such as `-- stream/` runs a part).

#[path = "../tests/support/data.rs"]
mod data;

use std::io::{Read, Write};
use std::time::Duration;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use kms_envelope::{AeadBackend, Decryptor, Encryptor, RawAesKeyring};

const FRAMES: [(u32, &str); 3] = [(4096, "4KiB"), (65_536, "64KiB"), (1 << 20, "1MiB")];
const STREAM_LEN: usize = 256 << 20;
const ESDK_LEN: usize = 64 << 20;

use data::pseudo_random as data;

fn primitive(c: &mut Criterion) {
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7; 32]).unwrap());
    let mut g = c.benchmark_group("primitive");
    for (frame, name) in FRAMES {
        let mut buf = data(frame as usize);
        g.throughput(Throughput::Bytes(u64::from(frame)));
        g.bench_function(BenchmarkId::new("aws-lc-rs_seal", name), |b| {
            b.iter(|| {
                key.seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key([1; 12]),
                    Aad::from(&[0u8; 16]),
                    &mut buf,
                )
                .unwrap()
            })
        });
        let mut sealed = buf.clone();
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key([1; 12]),
                Aad::from(&[0u8; 16]),
                &mut sealed,
            )
            .unwrap();
        sealed.extend_from_slice(tag.as_ref());
        let mut work = sealed.clone();
        g.bench_function(BenchmarkId::new("aws-lc-rs_open", name), |b| {
            b.iter(|| {
                work.copy_from_slice(&sealed);
                key.open_in_place(
                    Nonce::assume_unique_for_key([1; 12]),
                    Aad::from(&[0u8; 16]),
                    &mut work,
                )
                .unwrap()
                .len()
            })
        });
    }
    g.finish();
}

/// The primitive over the same 256 MiB the streams process, 64 KiB at a time, out of place
/// from one buffer into another: no copies, no framing, only the cipher and the memory
/// traffic every in-memory stream pays (read the input once, write the output once). The
/// hot-chunk figures above stay in cache; this one is what one core can do on data in DRAM.
fn primitive_in_memory(c: &mut Criterion) {
    const CHUNK: usize = 65_536;
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7; 32]).unwrap());
    let src = data(STREAM_LEN);
    let mut sealed = vec![0u8; STREAM_LEN / CHUNK * (CHUNK + 16)];
    let mut back = vec![0u8; STREAM_LEN];
    let mut g = c.benchmark_group("primitive_256MiB");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    g.throughput(Throughput::Bytes(STREAM_LEN as u64));
    let seal_all = |sealed: &mut [u8]| {
        for (pt, out) in src.chunks(CHUNK).zip(sealed.chunks_mut(CHUNK + 16)) {
            key.seal_in_place_scatter(
                Nonce::assume_unique_for_key([1; 12]),
                Aad::from(&[0u8; 16]),
                &mut [],
                pt,
                out,
            )
            .unwrap();
        }
    };
    g.bench_function("aws-lc-rs_seal_out_of_place/64KiB", |b| {
        b.iter(|| seal_all(&mut sealed))
    });
    seal_all(&mut sealed);
    g.bench_function("aws-lc-rs_open_out_of_place/64KiB", |b| {
        b.iter(|| {
            for (ct, out) in sealed.chunks(CHUNK + 16).zip(back.chunks_mut(CHUNK)) {
                let (ct, tag) = ct.split_at(CHUNK);
                key.open_separate_gather(
                    Nonce::assume_unique_for_key([1; 12]),
                    Aad::from(&[0u8; 16]),
                    ct,
                    tag,
                    out,
                )
                .unwrap();
            }
        })
    });
    g.finish();
}

fn stream(c: &mut Criterion) {
    let kr = RawAesKeyring::new("bench", "key", &[3; 32]).unwrap();
    let pt = data(STREAM_LEN);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut g = c.benchmark_group("stream_256MiB");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    g.throughput(Throughput::Bytes(STREAM_LEN as u64));
    let mut out = Vec::with_capacity(STREAM_LEN + (8 << 20));
    let mut back = vec![0u8; STREAM_LEN];
    for &backend in AeadBackend::all() {
        for (frame, fname) in FRAMES {
            for threads in [1, cores] {
                let id = format!("{backend:?}/{fname}/{threads}t");
                let enc = Encryptor::new(&kr)
                    .frame_length(frame)
                    .backend(backend)
                    .threads(threads);
                g.bench_function(BenchmarkId::new("encrypt", &id), |b| {
                    b.iter(|| {
                        out.clear();
                        let mut w = enc.writer(&mut out).unwrap();
                        w.write_all(&pt).unwrap();
                        w.finish().unwrap();
                    })
                });
                // Made here, not by the encrypt benchmark, so a filter may run decrypt alone.
                let msg = enc.encrypt(&pt).unwrap();
                let dec = Decryptor::new(&kr).backend(backend).threads(threads);
                g.bench_function(BenchmarkId::new("decrypt", &id), |b| {
                    b.iter(|| {
                        let mut r = dec.reader(&msg[..]).unwrap();
                        r.read_exact(&mut back).unwrap();
                        assert_eq!(r.read(&mut [0u8; 1]).unwrap(), 0);
                    })
                });
            }
        }
    }
    g.finish();
}

fn esdk(c: &mut Criterion) {
    use aws_esdk::client as esdk_client;
    use aws_esdk::material_providers::client as mpl_client;
    use aws_esdk::material_providers::types::material_providers_config::MaterialProvidersConfig;
    use aws_esdk::material_providers::types::{AesWrappingAlg, EsdkAlgorithmSuiteId};
    use aws_esdk::types::aws_encryption_sdk_config::AwsEncryptionSdkConfig;

    let rt = tokio::runtime::Runtime::new().unwrap();
    let client =
        esdk_client::Client::from_conf(AwsEncryptionSdkConfig::builder().build().unwrap()).unwrap();
    let mpl =
        mpl_client::Client::from_conf(MaterialProvidersConfig::builder().build().unwrap()).unwrap();
    let keyring = rt
        .block_on(
            mpl.create_raw_aes_keyring()
                .key_name("key")
                .key_namespace("bench")
                .wrapping_key(vec![3u8; 32])
                .wrapping_alg(AesWrappingAlg::AlgAes256GcmIv12Tag16)
                .send(),
        )
        .unwrap();
    let ours = RawAesKeyring::new("bench", "key", &[3; 32]).unwrap();
    let pt = data(ESDK_LEN);
    let mut g = c.benchmark_group("esdk_64MiB");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Bytes(ESDK_LEN as u64));
    for (frame, fname) in FRAMES {
        let encrypt = || {
            rt.block_on(
                client
                    .encrypt()
                    .plaintext(pt.clone())
                    .keyring(keyring.clone())
                    .algorithm_suite_id(EsdkAlgorithmSuiteId::AlgAes256GcmHkdfSha512CommitKey)
                    .frame_length(i64::from(frame))
                    .send(),
            )
            .unwrap()
            .ciphertext
            .unwrap()
        };
        g.bench_function(BenchmarkId::new("aws-esdk_encrypt", fname), |b| {
            b.iter(encrypt)
        });
        let message = encrypt();
        g.bench_function(BenchmarkId::new("aws-esdk_decrypt", fname), |b| {
            b.iter(|| {
                rt.block_on(
                    client
                        .decrypt()
                        .ciphertext(message.clone())
                        .keyring(keyring.clone())
                        .send(),
                )
                .unwrap()
            })
        });
        // This crate on the same 64 MiB, one thread, same frame length: the ratio's numerator.
        let enc = Encryptor::new(&ours).frame_length(frame).threads(1);
        g.bench_function(BenchmarkId::new("kms-envelope_encrypt_1t", fname), |b| {
            b.iter(|| enc.encrypt(&pt).unwrap())
        });
        let ours_msg = enc.encrypt(&pt).unwrap();
        let dec = Decryptor::new(&ours).threads(1);
        g.bench_function(BenchmarkId::new("kms-envelope_decrypt_1t", fname), |b| {
            b.iter(|| dec.decrypt(&ours_msg).unwrap())
        });
    }
    g.finish();
}

fn small_messages(c: &mut Criterion) {
    let kr = RawAesKeyring::new("bench", "key", &[3; 32]).unwrap();
    let record = data(1024);
    let mut g = c.benchmark_group("messages_1KiB");
    g.throughput(Throughput::Elements(1));
    let enc = Encryptor::new(&kr);
    g.bench_function("raw_aes_encrypt", |b| {
        b.iter(|| enc.encrypt(&record).unwrap())
    });
    let msg = enc.encrypt(&record).unwrap();
    let dec = Decryptor::new(&kr);
    g.bench_function("raw_aes_decrypt", |b| b.iter(|| dec.decrypt(&msg).unwrap()));
    g.finish();
}

/// Time to read 4 KiB at a random offset of a 1 GiB message (64 KiB frames): one or two frame
/// decryptions whatever the message size.
fn random_read(c: &mut Criterion) {
    let kr = RawAesKeyring::new("bench", "key", &[3; 32]).unwrap();
    let len = 1usize << 30;
    let msg = Encryptor::new(&kr).encrypt(&data(len)).unwrap();
    let r = Decryptor::new(&kr).seekable(&msg[..]).unwrap();
    let mut g = c.benchmark_group("random_read_1GiB");
    g.throughput(Throughput::Bytes(4096));
    let mut x = 7u64;
    let mut buf = [0u8; 4096];
    g.bench_function("read_at_4KiB", |b| {
        b.iter(|| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let off = (x >> 20) % (len as u64 - 4096);
            let mut at = 0;
            while at < buf.len() {
                at += r.read_at(off + at as u64, &mut buf[at..]).unwrap();
            }
        })
    });
    g.finish();
}

/// The application's loop (`read` into one buffer until 0, `write_all` of one buffer at a
/// time) with buffer sizes from 8 KiB to 4 MiB: every size should run within 2x of the best.
/// 64 KiB frames (the default), aws-lc-rs. Few samples, so the whole group takes minutes.
fn buffer_sizes(c: &mut Criterion) {
    const SIZES: [(usize, &str); 4] = [
        (8 << 10, "8KiB"),
        (64 << 10, "64KiB"),
        (1 << 20, "1MiB"),
        (4 << 20, "4MiB"),
    ];
    let kr = RawAesKeyring::new("bench", "key", &[3; 32]).unwrap();
    let pt = data(STREAM_LEN);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut g = c.benchmark_group("buffers_256MiB");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    g.throughput(Throughput::Bytes(STREAM_LEN as u64));
    let mut out = Vec::with_capacity(STREAM_LEN + (8 << 20));
    for threads in [1, cores] {
        let enc = Encryptor::new(&kr).threads(threads);
        let msg = enc.encrypt(&pt).unwrap();
        let dec = Decryptor::new(&kr).threads(threads);
        for (size, name) in SIZES {
            let mut buf = vec![0u8; size];
            g.bench_function(
                BenchmarkId::new("reader", format!("{name}/{threads}t")),
                |b| {
                    b.iter(|| {
                        let mut r = dec.reader(&msg[..]).unwrap();
                        let mut total = 0;
                        loop {
                            match r.read(&mut buf).unwrap() {
                                0 => break,
                                n => total += n,
                            }
                        }
                        assert_eq!(total, STREAM_LEN);
                    })
                },
            );
            g.bench_function(
                BenchmarkId::new("writer", format!("{name}/{threads}t")),
                |b| {
                    b.iter(|| {
                        out.clear();
                        let mut w = enc.writer(&mut out).unwrap();
                        for chunk in pt.chunks(size) {
                            w.write_all(chunk).unwrap();
                        }
                        w.finish().unwrap();
                    })
                },
            );
        }
    }
    g.finish();
}

criterion_group!(
    benches,
    buffer_sizes,
    primitive,
    primitive_in_memory,
    stream,
    esdk,
    small_messages,
    random_read
);
criterion_main!(benches);
