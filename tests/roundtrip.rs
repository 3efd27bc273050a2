//! Round trips across lengths, frame lengths, suites and backends; context and policy rules.

#[path = "support/adaptors.rs"]
mod adaptors;
#[path = "support/data.rs"]
mod data;

use std::io::{Read, Write};

use adaptors::{decrypt_everywhere, encrypt_everywhere, judge, Expect, Shape};

use kms_envelope::{
    AeadBackend, AlgorithmSuite, CommitmentPolicy, Decryptor, EncryptionContext, Encryptor, Error,
    RawAesKeyring,
};

fn keyring() -> RawAesKeyring {
    RawAesKeyring::new("test-namespace", "test-key", &[0x11; 32]).unwrap()
}

use data::pseudo_random as data;

fn context() -> EncryptionContext {
    EncryptionContext::new()
        .with("purpose", "test")
        .with("unicode_key_ловие", "значение")
}

/// The plaintext a read of the whole stream in `read`-byte calls gives.
fn read_in_pieces(dec: &Decryptor<'_>, message: &[u8], read: usize) -> Vec<u8> {
    match adaptors::stream(dec, message, message.len().max(1), read) {
        adaptors::Outcome::Plaintext(pt) => pt,
        other => panic!("{other:?}"),
    }
}

#[test]
fn lengths_around_frame_boundaries_for_both_suites_and_backends() {
    let kr = keyring();
    let suites = [
        AlgorithmSuite::Aes256GcmHkdfSha512CommitKey,
        AlgorithmSuite::Aes256GcmHkdfSha512CommitKeyEcdsaP384,
    ];
    for &backend in AeadBackend::all() {
        for suite in suites {
            for frame in [1u32, 7, 512, 4096] {
                let f = frame as usize;
                let mut lengths = vec![0, 1, f.saturating_sub(1), f, f + 1, 10 * f];
                lengths.dedup();
                for len in lengths {
                    let pt = data(len);
                    let enc = Encryptor::new(&kr)
                        .context(context())
                        .suite(suite)
                        .frame_length(frame)
                        .backend(backend);
                    // Every writing adaptor makes a message of the same size, which every
                    // reading adaptor reads.
                    let msgs = encrypt_everywhere(&enc, &pt);
                    let msg = msgs[0].2.clone().unwrap();
                    let dec = Decryptor::new(&kr)
                        .expected_context(context())
                        .backend(backend);
                    let shape = Shape::of(&msg).unwrap();
                    for (adaptor, how, m) in msgs {
                        let m = m.unwrap_or_else(|e| panic!("{} {how}: {e}", adaptor.name()));
                        assert_eq!(m.len(), msg.len(), "same layout either way: {how}");
                        for (reader, verdict) in
                            judge(&decrypt_everywhere(&dec, &m, shape), Expect::Plaintext(&pt))
                        {
                            assert!(
                                verdict.passed_or_not_applicable(),
                                "{suite} F={frame} L={len} {how}, {}: {verdict:?}",
                                reader.name()
                            );
                        }
                    }
                    // The other backend reads it too.
                    for &other in AeadBackend::all() {
                        assert_eq!(dec.clone().backend(other).decrypt(&msg).unwrap(), pt);
                    }
                }
            }
        }
    }
}

#[test]
fn message_size_matches_the_format_formula() {
    // FORMAT.md §6: a regular frame is `u32 seq ‖ iv (12) ‖ ciphertext ‖ tag (16)`, the final
    // frame `marker ‖ u32 seq ‖ iv (12) ‖ u32 len ‖ ciphertext ‖ tag (16)`, holding the
    // remainder (possibly empty). Written out here so the test does not share the crate's sum.
    fn framed_body_len(plaintext_len: u64, frame_length: u32) -> u64 {
        let f = u64::from(frame_length);
        let (regular, last) = (plaintext_len / f, plaintext_len % f);
        regular * (4 + 12 + f + 16) + (4 + 4 + 12 + 4 + last + 16)
    }

    let kr = keyring();
    for (len, frame) in [
        (0usize, 4096u32),
        (4096, 4096),
        (10_000, 512),
        (100_000, 65_536),
    ] {
        let msg = Encryptor::new(&kr)
            .frame_length(frame)
            .encrypt(&data(len))
            .unwrap();
        let header = Decryptor::new(&kr)
            .reader(&msg[..])
            .unwrap()
            .header()
            .clone();
        let mut encoded = Vec::new();
        header.encode(&mut encoded).unwrap();
        let expected = encoded.len() as u64 + 16 + framed_body_len(len as u64, frame);
        assert_eq!(msg.len() as u64, expected, "L={len} F={frame}");
    }
}

#[test]
fn every_suite_round_trips_under_the_policy_that_allows_it() {
    let kr = keyring();
    for suite in AlgorithmSuite::ALL {
        let policy = if suite.is_committing() {
            CommitmentPolicy::RequireEncryptRequireDecrypt
        } else {
            CommitmentPolicy::ForbidEncryptAllowDecrypt
        };
        let pt = data(3000);
        let msg = Encryptor::new(&kr)
            .suite(suite)
            .dangerous_commitment_policy(policy)
            .frame_length(1000)
            .context(context())
            .encrypt(&pt)
            .unwrap();
        assert_eq!(msg[0], suite.message_version());
        let dec = Decryptor::new(&kr)
            .dangerous_commitment_policy(policy)
            .expected_context(context());
        assert_eq!(dec.decrypt(&msg).unwrap(), pt, "{suite}");
        if !suite.is_committing() {
            let strict = Decryptor::new(&kr).decrypt(&msg);
            assert!(
                matches!(strict, Err(Error::SuiteNotAllowed { .. })),
                "{suite}"
            );
        }
    }
}

#[test]
fn large_stream_in_bounded_pieces() {
    let kr = keyring();
    let pt = data(64 << 20);
    let enc = Encryptor::new(&kr).context(context());
    let mut w = enc.writer(Vec::with_capacity(pt.len() + 65_536)).unwrap();
    for chunk in pt.chunks(1 << 20) {
        w.write_all(chunk).unwrap();
    }
    let msg = w.finish().unwrap();
    let dec = Decryptor::new(&kr).expected_context(context());
    let mut r = dec.reader(&msg[..]).unwrap();
    let mut out = Vec::with_capacity(pt.len());
    r.read_to_end(&mut out).unwrap();
    assert!(out == pt, "64 MiB round trip");
}

#[test]
fn required_context_is_authenticated_but_not_stored() {
    let kr = keyring();
    let ctx = context().with("tenant", "acme");
    let msg = Encryptor::new(&kr)
        .context(ctx.clone())
        .require_context_keys(["tenant"])
        .encrypt(b"records")
        .unwrap();
    assert!(
        !msg.windows(6).any(|w| w == b"tenant"),
        "required pair is not stored"
    );
    let dec = Decryptor::new(&kr);
    assert!(dec.clone().decrypt(&msg).is_err(), "without the pair");
    let wrong = EncryptionContext::new().with("tenant", "other");
    assert!(matches!(
        dec.clone().expected_context(wrong).decrypt(&msg),
        Err(Error::NoUsableDataKey(_)) | Err(Error::DecryptionFailed)
    ));
    let right = EncryptionContext::new().with("tenant", "acme");
    assert_eq!(
        dec.clone().expected_context(right).decrypt(&msg).unwrap(),
        b"records"
    );
    let header = dec
        .expected_context(EncryptionContext::new().with("tenant", "acme"))
        .reader(&msg[..])
        .unwrap()
        .header()
        .clone();
    assert!(header.context.get("tenant").is_none());
    assert_eq!(header.context.get("purpose"), Some("test"));
}

#[test]
fn context_and_option_errors_are_typed() {
    let kr = keyring();
    let msg = Encryptor::new(&kr)
        .context(context())
        .encrypt(b"x")
        .unwrap();
    let wrong = EncryptionContext::new().with("purpose", "other");
    assert!(matches!(
        Decryptor::new(&kr).expected_context(wrong).decrypt(&msg),
        Err(Error::ContextMismatch { key }) if key == "purpose"
    ));
    let reserved = EncryptionContext::new().with("aws-crypto-public-key", "x");
    assert!(matches!(
        Encryptor::new(&kr).context(reserved).encrypt(b"x"),
        Err(Error::ReservedContextKey(_))
    ));
    assert!(matches!(
        Encryptor::new(&kr).frame_length(0).encrypt(b"x"),
        Err(Error::Misuse(_))
    ));
    assert!(matches!(
        Encryptor::new(&kr)
            .suite(AlgorithmSuite::Aes256GcmIv12Tag16HkdfSha256)
            .encrypt(b"x"),
        Err(Error::SuiteNotAllowed {
            encrypting: true,
            ..
        })
    ));
    assert!(matches!(
        Encryptor::new(&kr)
            .context(context())
            .require_context_keys(["absent"])
            .encrypt(b"x"),
        Err(Error::Misuse(_))
    ));
    let other = RawAesKeyring::new("test-namespace", "other-key", &[0x22; 32]).unwrap();
    let err = Decryptor::new(&other).decrypt(&msg).unwrap_err();
    assert!(matches!(err, Error::NoUsableDataKey(_)));
    assert!(err.to_string().contains("other-key"), "{err}");
}

#[test]
fn frame_length_limit_on_decrypt() {
    let kr = keyring();
    let msg = Encryptor::new(&kr)
        .frame_length(1 << 20)
        .encrypt(b"x")
        .unwrap();
    let err = Decryptor::new(&kr)
        .max_frame_length(1 << 16)
        .decrypt(&msg)
        .unwrap_err();
    assert!(err.to_string().contains("max_frame_length"), "{err}");
    let big = Encryptor::new(&kr)
        .frame_length(u32::MAX)
        .encrypt(&data(1000))
        .unwrap();
    assert!(
        Decryptor::new(&kr).decrypt(&big).is_err(),
        "default limit refuses 4 GiB frames"
    );
    let pt = Decryptor::new(&kr)
        .max_frame_length(u32::MAX)
        .decrypt(&big)
        .unwrap();
    assert_eq!(pt, data(1000));
}

#[test]
fn signed_messages_are_held_until_the_signature_verifies() {
    let kr = keyring();
    let pt = data(100_000);
    let msg = Encryptor::new(&kr)
        .suite(AlgorithmSuite::Aes256GcmHkdfSha512CommitKeyEcdsaP384)
        .frame_length(1024)
        .encrypt(&pt)
        .unwrap();
    // Break the signature: nothing at all may come out by default.
    let mut bad = msg.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let mut r = Decryptor::new(&kr).reader(&bad[..]).unwrap();
    let mut buf = vec![0u8; 4096];
    assert!(
        r.read(&mut buf).is_err(),
        "first read fails: nothing released"
    );
    // Over the hold limit, a clear error.
    let err = Decryptor::new(&kr)
        .max_buffered_len(10_000)
        .decrypt(&msg)
        .unwrap_err();
    assert!(err.to_string().contains("signature"), "{err}");
    // Opted in: regular frames flow, the stream still fails at the end.
    let mut r = Decryptor::new(&kr)
        .dangerous_release_unverified_signed_frames(true)
        .reader(&bad[..])
        .unwrap();
    let mut out = Vec::new();
    assert!(r.read_to_end(&mut out).is_err());
    assert!(!out.is_empty() && pt.starts_with(&out) && out.len() < pt.len());
}

#[test]
fn thread_counts_read_and_write_the_same_messages() {
    let kr = keyring();
    let pt = data(20 << 20);
    for frame in [4096u32, 65_536, 1 << 20] {
        let msgs: Vec<Vec<u8>> = [1usize, 2, 3]
            .iter()
            .map(|&t| {
                Encryptor::new(&kr)
                    .frame_length(frame)
                    .threads(t)
                    .encrypt(&pt)
                    .unwrap()
            })
            .collect();
        for msg in &msgs {
            for threads in [1usize, 2, 3] {
                let dec = Decryptor::new(&kr).threads(threads);
                assert!(
                    read_in_pieces(&dec, msg, 100_000) == pt,
                    "F={frame} T={threads}"
                );
            }
        }
        // A flipped bit deep in a parallel batch fails the read; what came before is genuine.
        let mut bad = msgs[1].clone();
        let at = bad.len() / 2;
        bad[at] ^= 1;
        let mut r = Decryptor::new(&kr).threads(2).reader(&bad[..]).unwrap();
        let mut out = Vec::new();
        assert!(r.read_to_end(&mut out).is_err());
        assert!(pt.starts_with(&out) && out.len() < at);
    }
}
