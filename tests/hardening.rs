//! Hostile input within bounded memory, every tamper case through every adaptor, and no key
//! bytes in any `Debug` or `Display`.

use std::io::Read;

use base64::Engine;
use kms_envelope::format::{EncryptedDataKey, HeaderLimits};
use kms_envelope::{
    AlgorithmSuite, DataKey, Decryptor, EncryptionContext, Encryptor, Error, RawAesKeyring,
};

#[path = "support/alloc.rs"]
mod alloc;
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
    let r = Decryptor::new(&kr)
        .dangerous_commitment_policy(kms_envelope::CommitmentPolicy::RequireEncryptAllowDecrypt)
        .reader(&legacy[..])
        .unwrap();
    let mut header = Vec::new();
    r.header().encode(&mut header).unwrap();
    let hl = header.len() + 12 + 16;
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

fn all_adaptors(
    kr: &RawAesKeyring,
    msg: &[u8],
    pt: &[u8],
) -> Vec<(&'static str, Result<Vec<u8>, String>)> {
    let one = Decryptor::new(kr).threads(1);
    let par = Decryptor::new(kr).threads(3);
    let stream = |d: &Decryptor<'_>| -> Result<Vec<u8>, String> {
        let mut r = d.reader(msg).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        r.read_to_end(&mut out).map_err(|e| e.to_string())?;
        Ok(out)
    };
    let seek = || -> Result<Vec<u8>, String> {
        let r = one.seekable(msg).map_err(|e| e.to_string())?;
        let mut out = vec![0u8; pt.len()];
        let mut at = 0;
        while at < out.len() {
            let n = r
                .read_at(at as u64, &mut out[at..])
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("short".into());
            }
            at += n;
        }
        r.plaintext_len().map_err(|e| e.to_string())?;
        Ok(out)
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let asynced = rt
        .block_on(one.decrypt_async(msg))
        .map_err(|e| e.to_string());
    vec![
        ("one-shot", one.decrypt(msg).map_err(|e| e.to_string())),
        ("sync stream", stream(&one)),
        ("parallel stream", stream(&par)),
        ("async", asynced),
        ("seekable", seek()),
    ]
}

#[test]
fn every_tamper_case_through_every_adaptor() {
    let kr = keyring();
    let pt: Vec<u8> = (0..40_000u32).map(|i| (i * 7) as u8).collect();
    let msg = Encryptor::new(&kr).frame_length(1024).encrypt(&pt).unwrap();
    for (name, result) in all_adaptors(&kr, &msg, &pt) {
        assert_eq!(
            result.as_deref(),
            Ok(&pt[..]),
            "{name} reads the good message"
        );
    }
    let body_start = msg.len() - (39 * (1024 + 32) + 24 + 64 + 16);
    let frame = |k: usize| body_start + k * (1024 + 32);
    let other = Encryptor::new(&kr).frame_length(1024).encrypt(&pt).unwrap();
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    cases.push((
        "truncated at a frame boundary".into(),
        msg[..frame(20)].to_vec(),
    ));
    cases.push((
        "truncated inside a frame".into(),
        msg[..frame(20) + 100].to_vec(),
    ));
    cases.push((
        "truncated in the final frame".into(),
        msg[..msg.len() - 5].to_vec(),
    ));
    let mut swapped = msg.clone();
    swapped[frame(3)..frame(4)].copy_from_slice(&msg[frame(4)..frame(5)]);
    swapped[frame(4)..frame(5)].copy_from_slice(&msg[frame(3)..frame(4)]);
    cases.push(("frames reordered".into(), swapped));
    let mut dup = msg.clone();
    dup[frame(6)..frame(7)].copy_from_slice(&msg[frame(5)..frame(6)]);
    cases.push(("frame duplicated".into(), dup));
    let mut marker = msg.clone();
    marker[frame(39)..frame(39) + 4].copy_from_slice(&40u32.to_be_bytes());
    cases.push(("final-frame marker removed".into(), marker));
    let mut header_key = msg.clone();
    let at = msg.windows(4).position(|w| w == b"key\0").unwrap() + 20;
    header_key[at] ^= 1;
    cases.push(("wrapped key altered".into(), header_key));
    let mut swapped_key = msg.clone();
    swapped_key[at - 20..at + 28].copy_from_slice(&other[at - 20..at + 28]);
    cases.push(("wrapped key from another message".into(), swapped_key));
    for (at, byte, what) in [(0usize, 1u8, "version"), (2, 0x79, "suite ID")] {
        let mut m = msg.clone();
        m[at] = byte;
        cases.push((format!("{what} changed"), m));
    }
    let mut trailing = msg.clone();
    trailing.extend_from_slice(b"garbage");
    cases.push(("trailing garbage".into(), trailing));
    for (what, bad) in cases {
        for (name, result) in all_adaptors(&kr, &bad, &pt) {
            // The seekable reader never looks past what a read needs, so trailing bytes only
            // show as a final frame that does not authenticate.
            assert!(result.is_err(), "{name} accepted: {what}");
        }
    }
    // A context change: refused by every decryptor that expects the pair.
    let m = Encryptor::new(&kr)
        .context(EncryptionContext::new().with("a", "1"))
        .encrypt(&pt)
        .unwrap();
    let err = Decryptor::new(&kr)
        .expected_context(EncryptionContext::new().with("a", "2"))
        .decrypt(&m)
        .unwrap_err();
    assert!(matches!(err, Error::ContextMismatch { .. }));
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
