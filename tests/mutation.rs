//! Property test: any mutation of a valid message decrypts to the exact original or fails
//! with an error, in every adaptor; it never panics and never yields other bytes.

#[path = "support/adaptors.rs"]
mod adaptors;

use adaptors::{decrypt_everywhere, judge, Expect, Outcome, Shape};
use kms_envelope::{AlgorithmSuite, Decryptor, EncryptionContext, Encryptor, RawAesKeyring};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    /// Overwrite a big-endian u16 or u32 (length fields, counts, sequence numbers).
    SetU16(usize, u16),
    SetU32(usize, u32),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(i, b)| Mutation::Flip(i, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, v)| Mutation::Insert(i, v)),
        (any::<usize>(), 1usize..64).prop_map(|(i, n)| Mutation::Remove(i, n)),
        (
            any::<usize>(),
            prop_oneof![Just(0u16), Just(1), Just(0xFFFF), any::<u16>()]
        )
            .prop_map(|(i, v)| Mutation::SetU16(i, v)),
        (
            any::<usize>(),
            prop_oneof![Just(0u32), Just(1), Just(0xFFFF_FFFF), any::<u32>()]
        )
            .prop_map(|(i, v)| Mutation::SetU32(i, v)),
    ]
}

fn apply(msg: &[u8], m: &Mutation) -> Vec<u8> {
    let mut out = msg.to_vec();
    // Every message is far longer than four bytes.
    let at = |i: usize, width: usize| i % (msg.len() + 1 - width);
    match m {
        Mutation::Flip(i, b) => {
            let i = i % msg.len();
            out[i] ^= b;
        }
        Mutation::Truncate(i) => out.truncate(i % msg.len()),
        Mutation::Insert(i, v) => {
            let i = i % (msg.len() + 1);
            out.splice(i..i, v.iter().copied());
        }
        Mutation::Remove(i, n) => {
            let i = i % msg.len();
            let end = (i + n).min(msg.len());
            out.drain(i..end);
        }
        Mutation::SetU16(i, v) => {
            let i = at(*i, 2);
            out[i..i + 2].copy_from_slice(&v.to_be_bytes());
        }
        Mutation::SetU32(i, v) => {
            let i = at(*i, 4);
            out[i..i + 4].copy_from_slice(&v.to_be_bytes());
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn mutated_messages_fail_or_round_trip(
        signed in any::<bool>(),
        len in 0usize..600,
        frame in prop_oneof![Just(1u32), Just(16), Just(100), Just(4096)],
        m in mutation(),
        read_size in 1usize..300,
    ) {
        let kr = RawAesKeyring::new("prop", "key", &[0x44; 32]).unwrap();
        let ctx = EncryptionContext::new().with("k", "v");
        let suite = if signed {
            AlgorithmSuite::Aes256GcmHkdfSha512CommitKeyEcdsaP384
        } else {
            AlgorithmSuite::Aes256GcmHkdfSha512CommitKey
        };
        let pt: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let msg = Encryptor::new(&kr).suite(suite).frame_length(frame).context(ctx.clone())
            .encrypt(&pt).unwrap();
        let bad = apply(&msg, &m);
        let dec = Decryptor::new(&kr)
            .expected_context(ctx)
            .max_frame_length(1 << 20)
            .max_buffered_len(1 << 20);
        let expect = if bad == msg {
            Expect::Plaintext(&pt)
        } else {
            Expect::PlaintextOrRejected(&pt)
        };
        let shape = Shape::of(&msg).unwrap();
        for (adaptor, verdict) in judge(&decrypt_everywhere(&dec, &bad, shape), expect) {
            prop_assert!(verdict.passed_or_not_applicable(), "{}: {:?}", adaptor.name(), verdict);
        }
        // And the reader at a read size of the test's choosing.
        match adaptors::stream(&dec, &bad, bad.len().max(1), read_size) {
            Outcome::Plaintext(out) => prop_assert_eq!(&out, &pt),
            Outcome::Failed { released, .. } => {
                prop_assert!(bad != msg);
                prop_assert!(pt.starts_with(&released));
            }
            Outcome::NotApplicable(_) => unreachable!("the reader always applies"),
        }
    }
}
