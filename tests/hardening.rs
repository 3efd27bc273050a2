//! Hostile input within bounded memory, and no key bytes in any `Debug` or `Display` (every
//! tamper case through every adaptor is in tamper.rs).

use std::io::Read;

use base64::Engine;
use kms_envelope::format::{EncryptedDataKey, HeaderLimits};
use kms_envelope::{
    AlgorithmSuite, DataKey, Decryptor, EncryptionContext, Encryptor, RawAesKeyring,
};

#[path = "support/alloc.rs"]
mod alloc;
#[path = "support/tamper.rs"]
mod tamper;
#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;
use alloc::peak_growth;

fn keyring() -> RawAesKeyring {
    RawAesKeyring::new("hard", "key", &[0x5C; 32]).unwrap()
}

/// A v2 header prefix up to the EDK count, with `count` written there.
fn header_with_edk_count(count: u16) -> Vec<u8> {
    let mut h = vec![2, 0x04, 0x78];
    h.extend_from_slice(&[0xAB; 32]);
    h.extend_from_slice(&[0, 0]); // empty context
    h.extend_from_slice(&count.to_be_bytes());
    h
}

#[test]
fn hostile_lengths_are_refused_within_bounded_memory() {
    let kr = keyring();
    let dec = Decryptor::new(&kr);
    // 65,535 wrapped keys: refused at the count, before any is read.
    let mut msg = header_with_edk_count(u16::MAX);
    msg.extend_from_slice(&vec![0u8; 1 << 20]);
    let grew = peak_growth(|| {
        let err = dec.decrypt(&msg).unwrap_err();
        assert!(err.to_string().contains("wrapped data keys"), "{err}");
    });
    assert!(grew < 4 << 20, "grew {grew} bytes");

    // A 65,535-byte context is legal: it round-trips.
    let big = EncryptionContext::new().with("k", "v".repeat(65_535 - 2 - 2 - 1 - 2));
    let m = Encryptor::new(&kr)
        .context(big.clone())
        .encrypt(b"x")
        .unwrap();
    assert_eq!(
        Decryptor::new(&kr)
            .expected_context(big)
            .decrypt(&m)
            .unwrap(),
        b"x"
    );

    // A frame length of 2^32 - 1: refused by the default limit before the body is read.
    let huge = Encryptor::new(&kr)
        .frame_length(u32::MAX)
        .encrypt(&[1u8; 100])
        .unwrap();
    let grew = peak_growth(|| {
        let err = Decryptor::new(&kr).decrypt(&huge).unwrap_err();
        assert!(err.to_string().contains("max_frame_length"), "{err}");
    });
    assert!(grew < 4 << 20, "grew {grew} bytes");
    // Raised on purpose, a short message with that frame length streams in small memory.
    let grew = peak_growth(|| {
        let pt = Decryptor::new(&kr)
            .max_frame_length(u32::MAX)
            .decrypt(&huge)
            .unwrap();
        assert_eq!(pt, [1u8; 100]);
    });
    assert!(grew < 4 << 20, "grew {grew} bytes");

    // A header whose length fields promise more than the limit allows.
    let limits = HeaderLimits {
        max_encrypted_data_keys: 8,
        max_header_len: 4096,
    };
    let mut long = header_with_edk_count(1);
    long.extend_from_slice(&[0xFF, 0xFF]); // provider ID of 65,535 bytes
    long.extend_from_slice(&vec![b'a'; 8192]);
    let err = kms_envelope::format::Header::parse(&long, &limits).unwrap_err();
    assert!(err.to_string().contains("larger than 4096"), "{err}");

    // A non-framed body claiming 2^36 bytes: refused by max_buffered_len, nothing allocated.
    let legacy = Encryptor::new(&kr)
        .suite(AlgorithmSuite::Aes256GcmIv12Tag16HkdfSha256)
        .dangerous_commitment_policy(kms_envelope::CommitmentPolicy::ForbidEncryptAllowDecrypt)
        .encrypt(b"abc")
        .unwrap();
    // A v1 header ends with a 12-byte IV and a 16-byte tag; the body fields lie before them.
    let hl = tamper::layout(&legacy).header.end;
    let mut nonframed = legacy[..hl].to_vec();
    nonframed[hl - 28 - 10] = 1; // content type: non-framed
    nonframed[hl - 28 - 4..hl - 28].copy_from_slice(&[0, 0, 0, 0]); // frame length 0
    nonframed.extend_from_slice(&[0u8; 11]);
    nonframed.push(1); // IV = seq 1
    nonframed.extend_from_slice(&(1u64 << 36).to_be_bytes());
    nonframed.extend_from_slice(&[0u8; 4096]);
    let grew = peak_growth(|| {
        assert!(Decryptor::new(&kr)
            .dangerous_commitment_policy(kms_envelope::CommitmentPolicy::RequireEncryptAllowDecrypt)
            .decrypt(&nonframed)
            .is_err());
    });
    assert!(grew < 4 << 20, "grew {grew} bytes");
}

#[test]
fn no_key_bytes_in_debug_or_display() {
    let key = [0xA7u8; 32];
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(key);
    let kr = RawAesKeyring::new("secret", "k", &key).unwrap();
    let dk = DataKey::from_slice(&key);
    let msg = Encryptor::new(&kr).encrypt(b"plaintext").unwrap();
    let mut reader = Decryptor::new(&kr).reader(&msg[..]).unwrap();
    let mut first = [0u8; 4];
    reader.read_exact(&mut first).unwrap(); // plaintext now sits in the reader's buffer
    let seekable = Decryptor::new(&kr).seekable(&msg[..]).unwrap();
    seekable.read_at(0, &mut [0u8; 4]).unwrap(); // a decrypted frame now sits in its cache
    let mut writer = Encryptor::new(&kr).writer(Vec::new()).unwrap();
    std::io::Write::write_all(&mut writer, b"ZQXJ plaintext").unwrap();
    let errors = [
        Decryptor::new(&kr)
            .decrypt(&msg[..msg.len() - 1])
            .unwrap_err(),
        Decryptor::new(&RawAesKeyring::new("secret", "other", &[1; 32]).unwrap())
            .decrypt(&msg)
            .unwrap_err(),
    ];
    let shown = [
        format!("{kr:?}"),
        format!("{dk:?}"),
        format!("{reader:?}"),
        format!("{seekable:?}"),
        format!("{writer:?}"),
        format!("{:?} {}", errors[0], errors[0]),
        format!("{:?} {}", errors[1], errors[1]),
        format!(
            "{:?}",
            EncryptedDataKey {
                provider_id: "p".into(),
                provider_info: vec![],
                ciphertext: vec![]
            }
        ),
    ];
    for s in shown {
        let lower = s.to_lowercase();
        assert!(
            !lower.contains(&hex) && !s.contains(&b64),
            "key material in: {s}"
        );
        assert!(!s.contains("167, 167, 167"), "key bytes in: {s}");
        assert!(!s.contains("112, 108, 97, 105"), "plaintext bytes in: {s}"); // "plai"
        assert!(!s.contains("90, 81, 88, 74"), "plaintext bytes in: {s}"); // "ZQXJ"
    }
    drop(writer);
}

#[test]
fn inspect_survives_a_non_framed_length_near_u64_max() {
    // Found by fuzzing `inspect`: the offset arithmetic overflowed.
    let crash = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/inspect-overflow.bin"
    ))
    .unwrap();
    let limits = HeaderLimits {
        max_encrypted_data_keys: 8,
        max_header_len: 1 << 16,
    };
    assert!(kms_envelope::stream::scan_layout(&mut std::io::Cursor::new(crash), &limits).is_err());
}
