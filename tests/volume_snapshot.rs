//! Snapshots of a volume are standard ESDK messages: the official `aws-esdk` crate decrypts one
//! to the volume's content, a seekable read gets any part, `restore` makes a new volume with
//! the same content, a bad snapshot leaves no volume, and writers wait while a snapshot runs.
//! Raw images go in and out the same way (`import`, `export`).
#![cfg(feature = "volume")]

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aws_esdk::client as esdk_client;
use aws_esdk::material_providers::client as mpl_client;
use aws_esdk::material_providers::types::material_providers_config::MaterialProvidersConfig;
use aws_esdk::material_providers::types::{AesWrappingAlg, EsdkCommitmentPolicy};
use aws_esdk::types::aws_encryption_sdk_config::AwsEncryptionSdkConfig;
use kms_envelope::volume::{Volume, VolumeOptions, CONTEXT_BLOCK_SIZE, CONTEXT_VOLUME_SIZE};
use kms_envelope::{Decryptor, EncryptionContext, Encryptor, Error, RawAesKeyring};
use support::files::entries;

const SIZE: u64 = 3 << 20;
const KEY: [u8; 32] = [0x5C; 32];

fn keyring() -> RawAesKeyring {
    RawAesKeyring::new("snapshots", "key-1", &KEY).unwrap()
}

fn none(_: u64, _: u64) {}

/// A volume with data stripes, zero stripes and never-written blocks, and its content.
fn sample_volume(path: &Path) -> (Volume, Vec<u8>) {
    let volume = Volume::create(path, SIZE, &keyring(), VolumeOptions::default()).unwrap();
    let mut content = vec![0u8; SIZE as usize];
    for (i, at) in [0u64, 4096, 700_001, 1 << 20, 2_500_000]
        .into_iter()
        .enumerate()
    {
        let data: Vec<u8> = (0..100_000).map(|j| (i * 31 + j * 7) as u8 | 1).collect();
        let end = (at as usize + data.len()).min(SIZE as usize);
        volume.write_at(&data[..end - at as usize], at).unwrap();
        content[at as usize..end].copy_from_slice(&data[..end - at as usize]);
    }
    volume.write_zeroes(1 << 20, 8192).unwrap();
    content[1 << 20..(1 << 20) + 8192].fill(0);
    (volume, content)
}

fn snapshot(volume: &Volume, context: EncryptionContext) -> Vec<u8> {
    let kr = keyring();
    let enc = Encryptor::new(&kr).context(context);
    volume.snapshot(Vec::new(), &enc, &none).unwrap()
}

#[test]
fn the_official_esdk_decrypts_a_snapshot_to_the_volume_content() {
    let dir = tempfile::tempdir().unwrap();
    let (volume, content) = sample_volume(&dir.path().join("vol"));
    let message = snapshot(&volume, EncryptionContext::new().with("purpose", "backup"));
    let plaintext = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mpl =
            mpl_client::Client::from_conf(MaterialProvidersConfig::builder().build().unwrap())
                .unwrap();
        let theirs = mpl
            .create_raw_aes_keyring()
            .key_name("key-1")
            .key_namespace("snapshots")
            .wrapping_key(KEY.to_vec())
            .wrapping_alg(AesWrappingAlg::AlgAes256GcmIv12Tag16)
            .send()
            .await
            .unwrap();
        let config = AwsEncryptionSdkConfig::builder()
            .commitment_policy(EsdkCommitmentPolicy::RequireEncryptRequireDecrypt)
            .build()
            .unwrap();
        let esdk = esdk_client::Client::from_conf(config).unwrap();
        let context: HashMap<String, String> = [
            ("purpose", "backup".to_owned()),
            (CONTEXT_VOLUME_SIZE, SIZE.to_string()),
            (CONTEXT_BLOCK_SIZE, "4096".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        esdk.decrypt()
            .ciphertext(message.clone())
            .keyring(theirs)
            .encryption_context(context)
            .send()
            .await
            .unwrap()
            .plaintext
            .unwrap()
            .into_inner()
    });
    assert!(
        plaintext == content,
        "aws-esdk's plaintext differs from the volume"
    );

    // Any part, by random access, as `decrypt --range` reads it.
    let kr = keyring();
    let reader = Decryptor::new(&kr).seekable(message.as_slice()).unwrap();
    let mut part = vec![0u8; 300_000];
    let mut got = 0;
    while got < part.len() {
        got += reader
            .read_at(650_000 + got as u64, &mut part[got..])
            .unwrap();
    }
    assert!(part[..] == content[650_000..950_000]);
}

#[test]
fn restore_makes_a_new_volume_with_the_same_content() {
    let dir = tempfile::tempdir().unwrap();
    let (volume, content) = sample_volume(&dir.path().join("vol"));
    let message = snapshot(&volume, EncryptionContext::new());
    let kr = keyring();
    let other = RawAesKeyring::new("snapshots", "key-2", &[9; 32]).unwrap();
    let restored = Volume::restore(
        message.as_slice(),
        &Decryptor::new(&kr),
        &dir.path().join("restored"),
        &other,
        VolumeOptions::default(),
        &none,
    )
    .unwrap();
    assert_ne!(
        restored.id(),
        volume.id(),
        "restore must make a new volume ID"
    );
    assert_eq!(restored.size(), SIZE);
    let mut back = vec![0xEEu8; SIZE as usize];
    restored.read_at(&mut back, 0).unwrap();
    assert!(back == content);
    restored.close().unwrap();
    // Opened again under its own key only: a new volume key, wrapped by `other`.
    assert!(Volume::open(&dir.path().join("restored"), &kr).is_err());
    Volume::open(&dir.path().join("restored"), &other).unwrap();
    // An existing path is never written over.
    let again = Volume::restore(
        message.as_slice(),
        &Decryptor::new(&kr),
        &dir.path().join("vol"),
        &kr,
        VolumeOptions::default(),
        &none,
    );
    assert!(again.is_err());
}

#[test]
fn a_truncated_or_altered_snapshot_leaves_no_volume_behind() {
    let dir = tempfile::tempdir().unwrap();
    let (volume, _) = sample_volume(&dir.path().join("vol"));
    let message = snapshot(&volume, EncryptionContext::new());
    let mut altered = message.clone();
    let at = message.len() / 2;
    altered[at] ^= 0x01;
    let kr = keyring();
    let before = entries(dir.path());
    for (what, bytes) in [
        ("truncated at a frame", &message[..message.len() - 65_600]),
        ("truncated in the footer", &message[..message.len() - 1]),
        ("altered", &altered[..]),
    ] {
        let r = Volume::restore(
            bytes,
            &Decryptor::new(&kr),
            &dir.path().join("restored"),
            &kr,
            VolumeOptions::default(),
            &none,
        );
        assert!(r.is_err(), "{what}: restored");
        assert_eq!(entries(dir.path()), before, "{what}: something was left");
    }
    // A context that claims another size than the plaintext holds is refused the same way.
    let short = Encryptor::new(&kr)
        .context(
            EncryptionContext::new()
                .with(CONTEXT_VOLUME_SIZE, (SIZE + 4096).to_string())
                .with(CONTEXT_BLOCK_SIZE, "4096"),
        )
        .encrypt(&vec![1u8; SIZE as usize])
        .unwrap();
    let r = Volume::restore(
        short.as_slice(),
        &Decryptor::new(&kr),
        &dir.path().join("restored"),
        &kr,
        VolumeOptions::default(),
        &none,
    );
    assert!(matches!(r, Err(Error::Misuse(_))), "{:?}", r.err());
    assert_eq!(entries(dir.path()), before);
}

#[test]
fn writers_wait_while_a_snapshot_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (volume, content) = sample_volume(&dir.path().join("vol"));
    let kr = keyring();
    let enc = Encryptor::new(&kr);
    let written = AtomicBool::new(false);
    let message = std::thread::scope(|s| {
        let started = AtomicBool::new(false);
        let progress = |_: u64, _: u64| {
            if !started.swap(true, Ordering::SeqCst) {
                // A writer over the whole volume, while the snapshot is under way: it must
                // wait for the snapshot to end.
                s.spawn(|| {
                    volume.write_at(&vec![0xFF; SIZE as usize], 0).unwrap();
                    written.store(true, Ordering::SeqCst);
                });
                std::thread::sleep(Duration::from_millis(300));
                assert!(
                    !written.load(Ordering::SeqCst),
                    "a write went through mid-snapshot"
                );
            }
        };
        volume.snapshot(Vec::new(), &enc, &progress).unwrap()
    });
    assert!(written.load(Ordering::SeqCst));
    let plaintext = Decryptor::new(&kr).decrypt(&message).unwrap();
    assert!(
        plaintext == content,
        "the snapshot is not of one point in time"
    );
    let mut now = vec![0u8; 4096];
    volume.read_at(&mut now, 0).unwrap();
    assert!(now.iter().all(|&b| b == 0xFF));
}

#[test]
fn a_frame_length_across_blocks_or_a_reserved_context_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (volume, _) = sample_volume(&dir.path().join("vol"));
    let kr = keyring();
    let r = volume.snapshot(Vec::new(), &Encryptor::new(&kr).frame_length(6000), &none);
    assert!(matches!(r, Err(Error::Misuse(_))));
    let ctx = EncryptionContext::new().with(CONTEXT_VOLUME_SIZE, "1");
    let r = volume.snapshot(Vec::new(), &Encryptor::new(&kr).context(ctx), &none);
    assert!(matches!(r, Err(Error::Misuse(_))));
}

#[test]
fn import_and_export_round_trip_a_raw_image() {
    let dir = tempfile::tempdir().unwrap();
    let image: Vec<u8> = (0..SIZE as usize)
        .map(|i| if (i >> 20) == 1 { 0 } else { (i % 253) as u8 })
        .collect();
    let kr = keyring();
    let path = dir.path().join("vol");
    let volume = Volume::import(
        image.as_slice(),
        SIZE,
        &path,
        &kr,
        VolumeOptions::default(),
        &none,
    )
    .unwrap();
    let out = volume.export(Vec::new(), &none).unwrap();
    assert!(out == image);
    // An image shorter or longer than the size asked for is refused, and leaves nothing.
    let before = entries(dir.path());
    for len in [SIZE as usize - 1, SIZE as usize + 1] {
        let mut img = image.clone();
        img.resize(len, 7);
        let r = Volume::import(
            img.as_slice(),
            SIZE,
            &dir.path().join("other"),
            &kr,
            VolumeOptions::default(),
            &none,
        );
        assert!(r.is_err(), "{len}");
        assert_eq!(entries(dir.path()), before);
    }
}

#[test]
fn a_panic_during_import_leaves_no_hidden_volume() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("v");
    let image = vec![5u8; 1 << 20];
    let panics = |_: u64, _: u64| panic!("stop here");
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Volume::import(
            &image[..],
            1 << 20,
            &path,
            &keyring(),
            VolumeOptions::default(),
            &panics,
        )
    }));
    assert!(caught.is_err(), "the progress callback did not run");
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn a_restore_larger_than_its_maximum_is_refused_before_any_file_is_made() {
    let tmp = tempfile::tempdir().unwrap();
    let (volume, _) = sample_volume(&tmp.path().join("a"));
    let message = snapshot(&volume, EncryptionContext::new());
    let ring = keyring();
    let dec = Decryptor::new(&ring);
    let path = tmp.path().join("b");
    let max = volume.size() - 1;
    let Err(err) = Volume::restore_sized(
        &message[..],
        &dec,
        None,
        Some(max),
        &path,
        &ring,
        VolumeOptions::default(),
        &none,
    ) else {
        panic!("a size above the maximum was restored")
    };
    assert!(err.to_string().contains("bytes long"), "{err}");
    assert!(!path.exists());
    // At its maximum, it restores.
    Volume::restore_sized(
        &message[..],
        &dec,
        None,
        Some(volume.size()),
        &path,
        &ring,
        VolumeOptions::default(),
        &none,
    )
    .unwrap();
}
