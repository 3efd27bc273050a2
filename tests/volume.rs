//! Encrypted volumes through the public API: round trips at every block size and alignment,
//! many threads at once, reopen, locking, wrong keys, torn headers, key slots, rekey, zero
//! markers; and one volume under a KMS key (moto).
#![cfg(feature = "volume")]

mod support;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use kms_envelope::volume::{BlockDevice, Volume, VolumeAead, VolumeOptions};
use kms_envelope::{Error, ErrorKind, RawAesKeyring, VolumeError};

fn ring(name: &str) -> RawAesKeyring {
    RawAesKeyring::new("volume-test", name, &[name.len() as u8; 32]).unwrap()
}

fn poke(path: &Path, offset: u64, data: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(data, offset).unwrap();
}

fn peek(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset).unwrap();
    buf
}

/// A small deterministic generator, so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn round_trips_at_every_block_size_and_unaligned_ranges_against_a_model() {
    let dir = tempfile::tempdir().unwrap();
    for (k, bs) in [512u32, 1024, 2048, 4096, 8192, 16384, 32768, 65536]
        .into_iter()
        .enumerate()
    {
        for aead in [VolumeAead::GcmSiv, VolumeAead::Gcm] {
            let path = dir.path().join(format!("v{k}-{aead:?}"));
            let size = u64::from(bs) * 40;
            let options = VolumeOptions::default()
                .block_size(bs)
                .aead(aead)
                .journal_bytes(u64::from(bs) * 16);
            let v = Volume::create(&path, size, &ring("k"), options).unwrap();
            assert_eq!((v.size(), v.block_size(), v.aead()), (size, bs, aead));
            let mut model = vec![0u8; size as usize];
            let mut rng = Rng(0x9e3779b97f4a7c15 ^ u64::from(bs));
            for step in 0..60 {
                let off = rng.below(size);
                let len = rng.below((size - off).min(5 * u64::from(bs))) + 1;
                let (off, len) = (off as usize, len as usize);
                if step % 7 == 3 {
                    v.write_zeroes(off as u64, len as u64).unwrap();
                    model[off..off + len].fill(0);
                } else {
                    let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                    v.write_at(&data, off as u64).unwrap();
                    model[off..off + len].copy_from_slice(&data);
                }
                if step % 11 == 0 {
                    v.flush().unwrap();
                }
                let roff = rng.below(size) as usize;
                let rlen = rng.below((size as usize - roff).min(3 * bs as usize) as u64) as usize;
                let mut got = vec![0xEEu8; rlen];
                v.read_at(&mut got, roff as u64).unwrap();
                assert_eq!(got, model[roff..roff + rlen], "bs {bs} step {step}");
            }
            v.close().unwrap();
            let v = Volume::open(&path, &ring("k")).unwrap();
            let mut all = vec![0u8; size as usize];
            v.read_at(&mut all, 0).unwrap();
            assert!(all == model, "bs {bs} after reopen");
            assert_eq!(v.check(&|_, _| {}).unwrap().bad_count, 0);
            // Out of range: a typed error, and ENOSPC/EINVAL through the device trait.
            let err = v.read_at(&mut [0; 2], size - 1).unwrap_err();
            assert!(matches!(err, Error::Volume(VolumeError::OutOfRange { .. })));
            let dev: &dyn BlockDevice = &v;
            let e = dev.write_at(&[0; 2], size - 1).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::StorageFull);
            let e = dev.read_at(&mut [0; 2], size - 1).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        }
    }
}

#[test]
fn many_threads_on_distinct_and_the_same_blocks_see_no_spurious_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v");
    let options = VolumeOptions::default().journal_bytes(64 * 4096);
    let v = Arc::new(Volume::create(&path, 256 * 4096, &ring("k"), options).unwrap());
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let v = v.clone();
            std::thread::spawn(move || {
                let mut rng = Rng(u64::from(t) + 1);
                for i in 0..300u32 {
                    // Distinct: this thread's own block, checked on every read.
                    let own = u64::from(t) * 4096;
                    let fill = (i % 250) as u8 + 1;
                    v.write_at(&vec![fill; 4096], own).unwrap();
                    let mut back = vec![0u8; 4096];
                    v.read_at(&mut back, own).unwrap();
                    assert_eq!(back, vec![fill; 4096]);
                    // Shared: blocks 100..104, whole and unaligned, written by everyone.
                    let off = 100 * 4096 + rng.below(4 * 4096 - 8192);
                    v.write_at(&vec![t + 1; 8192], off).unwrap();
                    let mut shared = vec![0u8; 4096];
                    v.read_at(&mut shared, 101 * 4096).unwrap();
                    if i % 50 == 0 {
                        v.flush().unwrap();
                    }
                    if i % 37 == 0 {
                        v.write_zeroes(200 * 4096 + u64::from(t) * 4096, 4096)
                            .unwrap();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // Each shared block holds whole blocks-worth of single writers' bytes (each block of the
    // final state is one writer's, or zeros at the edges never written).
    let mut block = vec![0u8; 4096];
    for b in 100..104u64 {
        v.read_at(&mut block, b * 4096).unwrap();
        assert!(block.iter().all(|&x| x <= 8), "block {b}");
    }
    for t in 0..8u64 {
        v.read_at(&mut block, t * 4096).unwrap();
        assert_eq!(block, vec![(299 % 250) as u8 + 1; 4096]);
    }
    let v = Arc::try_unwrap(v).unwrap();
    v.close().unwrap();
    let v = Volume::open(&path, &ring("k")).unwrap();
    assert_eq!(v.check(&|_, _| {}).unwrap().bad_count, 0);
}

#[test]
fn the_same_block_written_whole_by_many_threads_ends_as_one_of_the_writes() {
    let dir = tempfile::tempdir().unwrap();
    let v = Arc::new(
        Volume::create(
            &dir.path().join("v"),
            64 * 4096,
            &ring("k"),
            VolumeOptions::default(),
        )
        .unwrap(),
    );
    let threads: Vec<_> = (1..=6u8)
        .map(|t| {
            let v = v.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 3 * 4096];
                for _ in 0..200 {
                    v.write_at(&vec![t; 3 * 4096], 4096).unwrap();
                    v.read_at(&mut buf, 4096).unwrap();
                    // Every block read is whole: one writer's bytes.
                    for b in buf.chunks(4096) {
                        assert!(b.iter().all(|&x| x == b[0]) && b[0] >= 1 && b[0] <= 6);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn a_second_open_is_refused_while_one_is_open_and_a_wrong_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v");
    let v = Volume::create(&path, 1 << 20, &ring("k"), VolumeOptions::default()).unwrap();
    let err = Volume::open(&path, &ring("k")).unwrap_err();
    assert!(matches!(err, Error::Volume(VolumeError::Locked)), "{err:?}");
    assert!(err.to_string().contains("volume serve"), "{err}");
    // info needs no lock and no key, and says it is unauthenticated.
    let info = Volume::info(&path).unwrap();
    assert!(!info.authenticated);
    assert_eq!(
        (info.size, info.block_size, info.id),
        (1 << 20, 4096, v.id())
    );
    assert_eq!(info.generations[0].slots[0].provider_id, "volume-test");
    // Overhead at 4 KiB: 32 bytes of metadata per block (0.78%), plus fixed regions.
    assert_eq!(info.data_offset - info.metadata_offset, 64 * 1024);
    v.close().unwrap();
    let err = Volume::open(&path, &ring("other")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoKey, "{err:?}");
    // An existing path is never overwritten by create.
    let err = Volume::create(&path, 1 << 20, &ring("k"), VolumeOptions::default());
    assert!(err.is_err());
    Volume::open(&path, &ring("k")).unwrap();
}

#[test]
fn either_header_copy_alone_opens_the_volume_and_a_forged_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v");
    let v = Volume::create(&path, 1 << 20, &ring("k"), VolumeOptions::default()).unwrap();
    v.write_at(b"data", 0).unwrap();
    v.add_key(&ring("second")).unwrap(); // a header update: the copies now differ
    v.close().unwrap();
    let saved: Vec<Vec<u8>> = [0u64, 65536]
        .iter()
        .map(|&o| peek(&path, o, 65536))
        .collect();
    for torn in [0u64, 65536] {
        poke(&path, torn, &[0x5A; 3000]); // a torn or garbage copy
        let v = Volume::open(&path, &ring("k")).unwrap();
        let mut buf = [0u8; 4];
        v.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"data");
        v.close().unwrap();
        poke(&path, 0, &saved[0]);
        poke(&path, 65536, &saved[1]);
    }
    // A changed size in both copies: the MAC fails, the key unwrapped (typed error).
    for off in [0u64, 65536] {
        let mut copy = peek(&path, off, 200);
        copy[22 + 32 + 5] ^= 0x20; // the size field: 1 MiB becomes 3 MiB
        poke(&path, off, &copy);
    }
    let err = Volume::open(&path, &ring("k")).unwrap_err();
    assert!(
        matches!(err, Error::Volume(VolumeError::HeaderInvalid)),
        "{err:?}"
    );
    assert_eq!(err.kind(), ErrorKind::Authentication);
    // Both garbage: not a volume.
    poke(&path, 0, &[0; 200]);
    poke(&path, 65536, &[0; 200]);
    let err = Volume::open(&path, &ring("k")).unwrap_err();
    assert!(
        matches!(err, Error::Volume(VolumeError::Malformed(_))),
        "{err:?}"
    );
}

#[test]
fn a_truncated_image_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v");
    Volume::create(&path, 1 << 20, &ring("k"), VolumeOptions::default())
        .unwrap()
        .close()
        .unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(f.metadata().unwrap().len() - 4096).unwrap();
    let err = Volume::open(&path, &ring("k")).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
}

#[test]
fn keys_are_added_and_removed_but_never_the_last() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v");
    let v = Volume::create(&path, 1 << 20, &ring("a"), VolumeOptions::default()).unwrap();
    v.write_at(b"kept", 8192).unwrap();
    v.flush().unwrap();
    let data_before = peek(&path, Volume::info(&path).unwrap().data_offset, 4096 * 4);
    v.add_key(&ring("bb")).unwrap();
    v.close().unwrap();
    // Adding a key rewrote the header only.
    assert_eq!(
        peek(&path, Volume::info(&path).unwrap().data_offset, 4096 * 4),
        data_before
    );
    assert_eq!(Volume::info(&path).unwrap().generations[0].slots.len(), 2);
    let v = Volume::open(&path, &ring("bb")).unwrap();
    assert_eq!(v.remove_key(&ring("a")).unwrap(), 1);
    let err = v.remove_key(&ring("a")).unwrap_err();
    assert!(matches!(err, Error::Volume(VolumeError::NoSuchKeySlot)));
    let err = v.remove_key(&ring("bb")).unwrap_err();
    assert!(
        matches!(err, Error::Volume(VolumeError::LastKeySlot)),
        "{err:?}"
    );
    v.close().unwrap();
    assert!(Volume::open(&path, &ring("a")).is_err());
    let v = Volume::open(&path, &ring("bb")).unwrap();
    let mut buf = [0u8; 4];
    v.read_at(&mut buf, 8192).unwrap();
    assert_eq!(&buf, b"kept");
}

#[test]
fn after_rekey_the_old_key_is_refused_and_an_old_block_copied_back_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v");
    let options = VolumeOptions::default().journal_bytes(16 * 4096);
    let v = Volume::create(&path, 300 * 4096, &ring("old"), options).unwrap();
    let content: Vec<u8> = (0..300 * 4096u32).map(|i| (i % 251) as u8).collect();
    v.write_at(&content[..200 * 4096], 0).unwrap();
    v.close().unwrap();
    let info = Volume::info(&path).unwrap();
    let old_entry = peek(&path, info.metadata_offset + 5 * 32, 32);
    let old_data = peek(&path, info.data_offset + 5 * 4096, 4096);

    let v = Volume::open(&path, &ring("old")).unwrap();
    let calls = std::cell::Cell::new(0u64);
    v.rekey(&ring("new"), &|done, total| {
        assert!(done <= total);
        calls.set(done);
    })
    .unwrap();
    assert_eq!(calls.get(), 300);
    v.close().unwrap();
    let info = Volume::info(&path).unwrap();
    assert_eq!(info.write_gen, 2);
    assert_eq!(info.generations.len(), 1);
    assert_eq!(info.rekey_from_gen, None);
    let err = Volume::open(&path, &ring("old")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoKey, "{err:?}");

    // An old-generation block put back (entry and data): an error, not the old bytes.
    poke(&path, info.metadata_offset + 5 * 32, &old_entry);
    poke(&path, info.data_offset + 5 * 4096, &old_data);
    let v = Volume::open(&path, &ring("new")).unwrap();
    let mut buf = vec![0u8; 4096];
    let err = v.read_at(&mut buf, 5 * 4096).unwrap_err();
    assert!(
        matches!(err, Error::Volume(VolumeError::BadBlock { index: 5 })),
        "{err:?}"
    );
    assert_eq!(buf, vec![0; 4096], "nothing released");
    v.read_at(&mut buf, 6 * 4096).unwrap();
    assert_eq!(buf, content[6 * 4096..7 * 4096]);
    v.read_at(&mut buf, 250 * 4096).unwrap();
    assert_eq!(buf, vec![0; 4096]);
    let report = v.check(&|_, _| {}).unwrap();
    assert_eq!(report.bad, vec![5]);
}

#[test]
fn a_never_written_block_reads_zeros_only_through_its_authenticated_marker() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v");
    Volume::create(&path, 1 << 20, &ring("k"), VolumeOptions::default())
        .unwrap()
        .close()
        .unwrap();
    let info = Volume::info(&path).unwrap();
    let v = Volume::open(&path, &ring("k")).unwrap();
    let mut buf = vec![1u8; 4096];
    v.read_at(&mut buf, 7 * 4096).unwrap();
    assert_eq!(buf, vec![0; 4096]);
    v.close().unwrap();
    // Punch the marker out (as a hole in the metadata area would read): an I/O error.
    poke(&path, info.metadata_offset + 7 * 32, &[0; 32]);
    let v = Volume::open(&path, &ring("k")).unwrap();
    let err = v.read_at(&mut buf, 7 * 4096).unwrap_err();
    assert!(
        matches!(err, Error::Volume(VolumeError::BadBlock { index: 7 })),
        "{err:?}"
    );
    let io = BlockDevice::read_at(&v, &mut buf, 7 * 4096).unwrap_err();
    assert_eq!(io.kind(), std::io::ErrorKind::InvalidData);
    v.read_at(&mut buf, 8 * 4096).unwrap();
}

#[cfg(feature = "kms")]
#[test]
fn a_volume_under_a_kms_key_round_trips_and_refuses_another_key() {
    use support::{kms_builder, moto, new_key};
    let m = moto();
    let key = new_key();
    let keyring = kms_builder(&m.endpoint()).generator(&key).build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v");
    let v = Volume::create(&path, 1 << 20, &keyring, VolumeOptions::default()).unwrap();
    v.write_at(b"under kms", 12345).unwrap();
    // add_key wraps the same volume key with KMS Encrypt under a second key.
    let second = new_key();
    let other = kms_builder(&m.endpoint())
        .generator(&second)
        .build()
        .unwrap();
    v.add_key(&other).unwrap();
    v.close().unwrap();
    let info = Volume::info(&path).unwrap();
    assert_eq!(info.generations[0].slots[0].provider_id, "aws-kms");
    assert_eq!(info.generations[0].slots[0].provider_info, key);
    for k in [&keyring, &other] {
        let v = Volume::open(&path, k).unwrap();
        let mut buf = [0u8; 9];
        v.read_at(&mut buf, 12345).unwrap();
        assert_eq!(&buf, b"under kms");
        v.close().unwrap();
    }
    let third = kms_builder(&m.endpoint())
        .generator(new_key())
        .build()
        .unwrap();
    assert!(Volume::open(&path, &third).is_err());
}

#[test]
fn bad_options_and_files_that_are_not_volumes_get_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v");
    for (size, bs) in [
        (0u64, 4096u32),
        (4097, 4096),
        (1 << 20, 3000),
        (1 << 20, 256),
    ] {
        let options = VolumeOptions::default().block_size(bs);
        let err = Volume::create(&path, size, &ring("k"), options).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Misuse, "{size} {bs}: {err:?}");
        assert!(!path.exists(), "nothing left behind");
    }
    std::fs::write(&path, vec![0x42u8; 300_000]).unwrap();
    let err = Volume::info(&path).unwrap_err();
    assert!(
        matches!(err, Error::Volume(VolumeError::Malformed(_))),
        "{err:?}"
    );
    let err = Volume::open(&path, &ring("k")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Format, "{err:?}");
    std::fs::write(&path, b"KEVOLUM1\x00\x07").unwrap();
    let err = Volume::info(&path).unwrap_err();
    assert!(
        err.to_string().contains("not a kms-envelope volume"),
        "{err}"
    );
}
