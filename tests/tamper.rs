//! Every alteration of a message fails, and no plaintext that did not verify is released: the
//! kit's tamper corpus through every adaptor, every bit and every cut one-shot and streaming.

#[path = "support/adaptors.rs"]
mod adaptors;
#[path = "support/tamper.rs"]
mod tamper;

use std::io::{ErrorKind, Read};

use adaptors::{decrypt_everywhere, judge, Adaptor, Expect, Outcome, Shape, Verdict};
use kms_envelope::{AlgorithmSuite, Decryptor, EncryptionContext, Encryptor, Error, RawAesKeyring};

const FRAME: u32 = 64;

fn keyring() -> RawAesKeyring {
    RawAesKeyring::new("tamper", "key", &[0x33; 32]).unwrap()
}

fn context() -> EncryptionContext {
    EncryptionContext::new().with("case", "tamper")
}

fn plaintext(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 256) as u8).collect()
}

fn seal(suite: AlgorithmSuite, pt: &[u8]) -> Vec<u8> {
    Encryptor::new(&keyring())
        .suite(suite)
        .frame_length(FRAME)
        .context(context())
        .encrypt(pt)
        .unwrap()
}

/// Decrypts `msg` one-shot and streaming. Both must fail; the stream may release only a
/// prefix of the true plaintext. Returns the streaming error's kind.
fn assert_rejected(msg: &[u8], pt: &[u8], what: &str) -> ErrorKind {
    let kr = keyring();
    let dec = Decryptor::new(&kr).expected_context(context());
    assert!(dec.decrypt(msg).is_err(), "one-shot accepted {what}");
    let mut out = Vec::new();
    let kind = match dec.reader(msg) {
        Err(e) => std::io::Error::from(e).kind(),
        Ok(mut r) => {
            let mut buf = [0u8; 100];
            loop {
                match r.read(&mut buf) {
                    Ok(0) => panic!("stream accepted {what}"),
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                    Err(e) => break e.kind(),
                }
            }
        }
    };
    assert!(
        pt.starts_with(&out),
        "{what}: released bytes that are not the plaintext"
    );
    kind
}

/// Where each frame starts, and the body's end, from the kit's layout.
fn frame_offsets(msg: &[u8]) -> Vec<usize> {
    let layout = tamper::layout(msg);
    let mut out: Vec<usize> = layout.blocks.iter().map(|b| b.span.start).collect();
    out.push(layout.blocks.last().expect("a body").span.end);
    out
}

/// The corpus of every suite's message, through every adaptor: each case fails in each (the
/// seekable reader of a signed message, opted in, never reads the signature: an altered
/// signature alone is no failure there), releases nothing but a prefix of the plaintext, and
/// every adaptor with `io` errors ends with the error kind the case names.
#[test]
fn the_tamper_corpus_fails_in_every_adaptor() {
    let kr = keyring();
    let dec = Decryptor::new(&kr).expected_context(context());
    let mut counted = 0;
    for suite in [
        AlgorithmSuite::Aes256GcmHkdfSha512CommitKey,
        AlgorithmSuite::Aes256GcmHkdfSha512CommitKeyEcdsaP384,
    ] {
        let pt = plaintext(4 * FRAME as usize + 10);
        let msg = seal(suite, &pt);
        let shape = Shape::of(&msg).unwrap();
        for (adaptor, verdict) in judge(
            &decrypt_everywhere(&dec, &msg, shape),
            Expect::Plaintext(&pt),
        ) {
            assert!(
                verdict.passed_or_not_applicable(),
                "{suite} intact, {}: {verdict:?}",
                adaptor.name()
            );
        }
        for case in tamper::corpus(&msg) {
            let attempts = decrypt_everywhere(&dec, &case.message, shape);
            for (adaptor, verdict) in judge(
                &attempts,
                Expect::Rejected {
                    original: Some(&pt),
                },
            ) {
                let excused = case.signature_only && adaptor == Adaptor::Seekable;
                match verdict {
                    Verdict::Pass | Verdict::NotApplicable(_) => {}
                    Verdict::Fail(_) if excused => {}
                    other => panic!("{suite}, {}: {}: {other:?}", case.name, adaptor.name()),
                }
            }
            if let Some(kind) = case.kind {
                for a in attempts.iter().filter(|a| a.adaptor != Adaptor::Seekable) {
                    let Outcome::Failed { kind: got, .. } = &a.outcome else {
                        panic!("{}: {} accepted", case.name, a.how)
                    };
                    assert_eq!(*got, Some(kind), "{suite}, {}: {}", case.name, a.how);
                }
            }
            counted += 1;
        }
    }
    println!("tamper corpus: {counted} cases through every adaptor");
    assert!(counted > 100, "{counted}");
}

#[test]
fn every_bit_position_flip_fails() {
    for suite in [
        AlgorithmSuite::Aes256GcmHkdfSha512CommitKey,
        AlgorithmSuite::Aes256GcmHkdfSha512CommitKeyEcdsaP384,
    ] {
        let pt = plaintext(3 * FRAME as usize + 5);
        let msg = seal(suite, &pt);
        for i in 0..msg.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = msg.clone();
                bad[i] ^= bit;
                assert_rejected(&bad, &pt, &format!("{suite}: flip {bit:#x} at {i}"));
            }
        }
    }
}

#[test]
fn sampled_flips_of_a_large_message_fail() {
    let pt = plaintext(1 << 20);
    let msg = Encryptor::new(&keyring())
        .frame_length(4096)
        .context(context())
        .encrypt(&pt)
        .unwrap();
    let mut x = 12345usize;
    for _ in 0..300 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let i = (x >> 17) % msg.len();
        let mut bad = msg.clone();
        bad[i] ^= 0x04;
        assert_rejected(&bad, &pt, &format!("flip at {i}"));
    }
}

#[test]
fn every_truncation_fails_and_frame_boundaries_read_as_eof() {
    for suite in [
        AlgorithmSuite::Aes256GcmHkdfSha512CommitKey,
        AlgorithmSuite::Aes256GcmHkdfSha512CommitKeyEcdsaP384,
    ] {
        let pt = plaintext(4 * FRAME as usize);
        let msg = seal(suite, &pt);
        for cut in 0..msg.len() {
            assert_rejected(&msg[..cut], &pt, &format!("{suite}: cut at {cut}"));
        }
        if suite.signature().is_none() {
            let offsets = frame_offsets(&msg);
            assert_eq!(*offsets.last().unwrap(), msg.len());
            for &cut in &offsets[..offsets.len() - 1] {
                let kind = assert_rejected(&msg[..cut], &pt, &format!("cut at frame {cut}"));
                assert_eq!(kind, ErrorKind::UnexpectedEof, "cut at {cut}");
            }
        }
    }
}

#[test]
fn reordered_duplicated_and_dropped_frames_fail() {
    let pt = plaintext(4 * FRAME as usize + 10);
    let msg = seal(AlgorithmSuite::Aes256GcmHkdfSha512CommitKey, &pt);
    let offs = frame_offsets(&msg);
    let frame = |k: usize| msg[offs[k]..offs[k + 1]].to_vec();
    let head = msg[..offs[0]].to_vec();
    let build = |order: &[usize]| {
        let mut m = head.clone();
        for &k in order {
            m.extend_from_slice(&frame(k));
        }
        m
    };
    // Frames 0..=3 regular, 4 final.
    for order in [
        vec![1, 0, 2, 3, 4],
        vec![0, 1, 1, 2, 3, 4],
        vec![0, 2, 3, 4],
        vec![0, 1, 2, 3],
        vec![0, 1, 2, 3, 4, 4],
        vec![4, 0, 1, 2, 3],
    ] {
        let kind = assert_rejected(&build(&order), &pt, &format!("order {order:?}"));
        assert_ne!(kind, ErrorKind::Other, "{order:?}");
    }
    assert_eq!(
        Decryptor::new(&keyring())
            .expected_context(context())
            .decrypt(&build(&[0, 1, 2, 3, 4]))
            .unwrap(),
        pt
    );
}

#[test]
fn final_marker_suite_version_and_trailing_bytes() {
    let pt = plaintext(2 * FRAME as usize + 3);
    let msg = seal(AlgorithmSuite::Aes256GcmHkdfSha512CommitKey, &pt);
    let offs = frame_offsets(&msg);
    // Turn the last regular frame into a "final" one and back.
    let mut bad = msg.clone();
    bad[offs[1]..offs[1] + 4].copy_from_slice(&[0xFF; 4]);
    assert_rejected(&bad, &pt, "regular frame marked final");
    let mut bad = msg.clone();
    bad[offs[2]..offs[2] + 4].copy_from_slice(&3u32.to_be_bytes());
    assert_rejected(&bad, &pt, "final marker removed");
    for (at, value) in [(0usize, 1u8), (1, 0x05), (2, 0x79)] {
        let mut bad = msg.clone();
        bad[at] = value;
        assert_rejected(&bad, &pt, &format!("byte {at} = {value:#x}"));
    }
    let mut long = msg.clone();
    long.push(0);
    let kind = assert_rejected(&long, &pt, "trailing byte");
    assert_eq!(kind, ErrorKind::InvalidData);
    let mut two = msg.clone();
    two.extend_from_slice(&msg);
    assert_rejected(&two, &pt, "two messages back to back");
}

#[test]
fn wrapped_key_swap_and_context_change_fail() {
    let kr = keyring();
    let pt = plaintext(100);
    let a = seal(AlgorithmSuite::Aes256GcmHkdfSha512CommitKey, &pt);
    let b = seal(AlgorithmSuite::Aes256GcmHkdfSha512CommitKey, &pt);
    let ha = Decryptor::new(&kr)
        .expected_context(context())
        .reader(&a[..])
        .unwrap()
        .header()
        .clone();
    let hb = Decryptor::new(&kr)
        .expected_context(context())
        .reader(&b[..])
        .unwrap()
        .header()
        .clone();
    let (ea, eb) = (&ha.encrypted_data_keys[0], &hb.encrypted_data_keys[0]);
    // Put b's whole wrapped key (IV and ciphertext) into a: it unwraps, to the wrong key.
    let mut swapped = a.clone();
    for (from, to) in [
        (&ea.provider_info, &eb.provider_info),
        (&ea.ciphertext, &eb.ciphertext),
    ] {
        let pos = a.windows(from.len()).position(|w| w == &from[..]).unwrap();
        swapped[pos..pos + to.len()].copy_from_slice(to);
    }
    assert!(matches!(
        Decryptor::new(&kr)
            .expected_context(context())
            .decrypt(&swapped),
        Err(Error::DecryptionFailed)
    ));
    let dec = Decryptor::new(&kr).expected_context(context());
    let shape = Shape::of(&a).unwrap();
    let attempts = decrypt_everywhere(&dec, &swapped, shape);
    for (adaptor, verdict) in judge(&attempts, Expect::Rejected { original: None }) {
        assert!(
            verdict.passed_or_not_applicable(),
            "{}: {verdict:?}",
            adaptor.name()
        );
    }
    // The context in the header is authenticated: change one value byte.
    let pos = a.windows(6).position(|w| w == b"tamper").unwrap();
    let mut changed = a.clone();
    changed[pos] = b'T';
    assert!(Decryptor::new(&kr).decrypt(&changed).is_err());
    // A decryptor expecting another value refuses before unwrapping.
    let other = EncryptionContext::new().with("case", "other");
    assert!(matches!(
        Decryptor::new(&kr).expected_context(other).decrypt(&a),
        Err(Error::ContextMismatch { .. })
    ));
}

/// A source that hands out at most `max` bytes per read, varying below that.
struct Trickle<'a> {
    rest: &'a [u8],
    max: usize,
    turn: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.turn += 1;
        let n = (self.max - self.turn * 7919 % (self.max / 2))
            .min(buf.len())
            .min(self.rest.len());
        buf[..n].copy_from_slice(&self.rest[..n]);
        self.rest = &self.rest[n..];
        Ok(n)
    }
}

/// Large reads take the path that opens frames straight into the caller's buffer, on the
/// workers, while the next input is read: every byte it ever leaves in that buffer is either
/// the true plaintext at its position or untouched (or zeroed), whatever the damage, read size
/// or source.
#[test]
fn frames_opened_into_the_callers_buffer_are_never_unauthenticated() {
    const BIG: u32 = 65_536;
    let pt = plaintext(6 << 20 | 12_345);
    let msg = Encryptor::new(&keyring())
        .frame_length(BIG)
        .context(context())
        .encrypt(&pt)
        .unwrap();
    let offsets = frame_offsets(&msg);
    let mut flipped = msg.clone();
    flipped[offsets[40] + 3000] ^= 0x10;
    let trailing = [&msg[..], &[0]].concat();
    let cases: [(&str, &[u8], Option<ErrorKind>); 5] = [
        ("intact", &msg, None),
        (
            "bit flipped in frame 40",
            &flipped,
            Some(ErrorKind::InvalidData),
        ),
        (
            "cut at frame 70",
            &msg[..offsets[70]],
            Some(ErrorKind::UnexpectedEof),
        ),
        (
            "cut in the final frame",
            &msg[..msg.len() - 9],
            Some(ErrorKind::UnexpectedEof),
        ),
        ("trailing byte", &trailing, Some(ErrorKind::InvalidData)),
    ];
    let kr = keyring();
    for (what, m, expected) in cases {
        for threads in [1, 2] {
            let dec = Decryptor::new(&kr)
                .expected_context(context())
                .threads(threads);
            for (read, source_max) in [
                (BIG as usize, m.len()),
                (1 << 20, 300_000),
                (5 << 20, m.len()),
            ] {
                let case = format!("{what}, {threads} threads, reads of {read}");
                let source = Trickle {
                    rest: m,
                    max: source_max,
                    turn: 0,
                };
                let mut r = dec.reader(source).unwrap();
                let mut at = 0;
                let mut buf = vec![0u8; read];
                let outcome = loop {
                    buf.fill(0xEE);
                    let result = r.read(&mut buf);
                    let stray = buf
                        .iter()
                        .enumerate()
                        .filter(|&(i, &b)| b != 0xEE && b != 0 && pt.get(at + i) != Some(&b))
                        .count();
                    assert_eq!(stray, 0, "{case}: bytes that are not the plaintext");
                    match result {
                        Ok(0) => break None,
                        Ok(n) => {
                            assert!(buf[..n] == pt[at..at + n], "{case}: wrong plaintext");
                            at += n;
                        }
                        Err(e) => break Some(e.kind()),
                    }
                };
                assert_eq!(outcome, expected, "{case}");
                if outcome.is_none() {
                    assert_eq!(at, pt.len(), "{case}");
                }
            }
        }
    }
}
