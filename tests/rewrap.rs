//! Re-wrap is a re-encryption: a fresh data key and message ID, nothing sealed under the old
//! derived key, the key set exactly (input − removed) ∪ new, no data key from a cache, and no
//! finished output unless the whole input authenticated.

#[path = "support/data.rs"]
mod data;

#[path = "support/keyrings.rs"]
mod keyrings;
use keyrings::Planted;

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use kms_envelope::format::{EncryptedDataKey, Header, HeaderLimits};
use kms_envelope::materials::{
    CachingKeyring, DataKeyCache, DecryptionMaterials, EncryptionMaterials,
};
use kms_envelope::stream::{Rewrapped, DEFAULT_MAX_FRAME_LENGTH};
use kms_envelope::{
    AlgorithmSuite, CommitmentPolicy, Decryptor, EncryptionContext, Encryptor, Error, Keyring,
    MultiKeyring, RawAesKeyring,
};

use data::pseudo_random as data;

fn raw(name: &str, byte: u8) -> RawAesKeyring {
    RawAesKeyring::new("ns", name, &[byte; 32]).unwrap()
}

// From FORMAT.md, written out so this check of the crate's output shares none of its code:
// the context key of a signed message's public key, and the final frame's marker.
const PUBLIC_KEY_FIELD: &str = "aws-crypto-public-key";
const FINAL_FRAME_MARKER: u32 = 0xFFFF_FFFF;

/// A frame's AAD (FORMAT.md §6): `message_id ‖ content string ‖ u32 seq ‖ u64 length`.
fn body_aad(message_id: &[u8], final_frame: bool, seq: u32, len: u64) -> Vec<u8> {
    let content: &[u8] = if final_frame {
        b"AWSKMSEncryptionClient Final Frame"
    } else {
        b"AWSKMSEncryptionClient Frame"
    };
    [message_id, content, &seq.to_be_bytes(), &len.to_be_bytes()].concat()
}

fn limits() -> HeaderLimits {
    HeaderLimits {
        max_encrypted_data_keys: 8,
        max_header_len: 1 << 20,
    }
}

fn header(msg: &[u8]) -> (Header, usize) {
    Header::parse(msg, &limits()).unwrap().unwrap()
}

/// Records the data key each call leaves in the materials.
#[derive(Debug)]
struct Capture<K> {
    inner: K,
    keys: Mutex<Vec<Vec<u8>>>,
}

fn capture<K>(inner: K) -> Capture<K> {
    Capture {
        inner,
        keys: Mutex::new(Vec::new()),
    }
}

impl<K> Capture<K> {
    fn last(&self) -> Vec<u8> {
        self.keys.lock().unwrap().last().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl<K: Keyring> Keyring for Capture<K> {
    async fn on_encrypt(&self, m: &mut EncryptionMaterials) -> Result<(), Error> {
        self.inner.on_encrypt(m).await?;
        let key = m.data_key.as_ref().unwrap().as_bytes().to_vec();
        self.keys.lock().unwrap().push(key);
        Ok(())
    }
    async fn on_decrypt(
        &self,
        m: &mut DecryptionMaterials,
        e: &[EncryptedDataKey],
    ) -> Result<(), Error> {
        self.inner.on_decrypt(m, e).await?;
        let key = m.data_key().unwrap().as_bytes().to_vec();
        self.keys.lock().unwrap().push(key);
        Ok(())
    }
}

/// The 0x0478 content key, derived independently of the crate (FORMAT.md §9).
fn content_key(data_key: &[u8], message_id: &[u8]) -> LessSafeKey {
    let mut out = [0u8; 32];
    let mut info = 0x0478u16.to_be_bytes().to_vec();
    info.extend_from_slice(b"DERIVEKEY");
    hkdf::Hkdf::<sha2::Sha512>::new(Some(message_id), data_key)
        .expand(&info, &mut out)
        .unwrap();
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &out).unwrap())
}

fn opens(key: &LessSafeKey, iv: [u8; 12], aad: &[u8], ct: &[u8], tag: &[u8]) -> bool {
    let mut buf = [ct, tag].concat();
    key.open_in_place(Nonce::assume_unique_for_key(iv), Aad::from(aad), &mut buf)
        .is_ok()
}

/// One authentication tag of a message: (IV, AAD, ciphertext, tag).
type Tagged = ([u8; 12], Vec<u8>, Vec<u8>, Vec<u8>);

/// Every tag of a framed 0x0478 message, the header's first.
fn tags(msg: &[u8], required_only: &EncryptionContext) -> Vec<Tagged> {
    let (h, mut at) = header(msg);
    let mut aad = h.body_bytes.clone();
    aad.extend_from_slice(&required_only.serialize().unwrap());
    let mut out = vec![(h.iv, aad, Vec::new(), h.tag.to_vec())];
    let id = &h.body.message_id;
    let frame = h.body.frame_length as usize;
    let u32_at = |i: usize| u32::from_be_bytes(msg[i..i + 4].try_into().unwrap());
    loop {
        let final_frame = u32_at(at) == FINAL_FRAME_MARKER;
        if final_frame {
            at += 4;
        }
        let seq = u32_at(at);
        let iv: [u8; 12] = msg[at + 4..at + 16].try_into().unwrap();
        at += 16;
        let len = if final_frame {
            at += 4;
            u32_at(at - 4) as usize
        } else {
            frame
        };
        let aad = body_aad(id, final_frame, seq, len as u64);
        out.push((
            iv,
            aad,
            msg[at..at + len].to_vec(),
            msg[at + len..at + len + 16].to_vec(),
        ));
        at += len + 16;
        if final_frame {
            return out;
        }
    }
}

#[test]
fn a_rewrap_is_a_new_message_under_a_new_data_key() {
    let old = capture(raw("old", 1));
    let new = capture(raw("new", 2));
    let pt = data(300_000);
    let ctx = EncryptionContext::new()
        .with("k", "v")
        .with("tenant", "acme");
    let tenant = EncryptionContext::new().with("tenant", "acme");
    let msg = Encryptor::new(&old)
        .context(ctx)
        .require_context_keys(["tenant"])
        .frame_length(4096)
        .encrypt(&pt)
        .unwrap();
    let done = Decryptor::new(&old)
        .expected_context(tenant.clone())
        .rewrap(&msg[..])
        .unwrap()
        .remove("ns:old")
        .unwrap()
        .write(&new, Vec::new())
        .unwrap();
    let rotated = done.output;
    assert_eq!(
        done.keys
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["ns:new"]
    );
    let (h_old, _) = header(&msg);
    let (h_new, _) = header(&rotated);
    assert_ne!(
        h_new.body.message_id, h_old.body.message_id,
        "a fresh message ID"
    );
    assert_eq!(
        h_new.body.frame_length, 4096,
        "the frame length carries over"
    );
    assert_eq!(
        h_new.body.suite,
        AlgorithmSuite::Aes256GcmHkdfSha512CommitKey
    );
    assert_eq!(h_new.body.context.get("k"), Some("v"));
    assert_eq!(
        h_new.body.context.get("tenant"),
        None,
        "required-only stays so"
    );

    // The data keys: the old one as the old key unwraps it, the new one as the new key does.
    let old_dk = old.last();
    assert_eq!(
        Decryptor::new(&new)
            .expected_context(tenant.clone())
            .decrypt(&rotated)
            .unwrap(),
        pt,
        "the new key decrypts"
    );
    let new_dk = new.last();
    assert_ne!(old_dk, new_dk, "a fresh data key");
    assert!(
        Decryptor::new(&old)
            .expected_context(tenant.clone())
            .decrypt(&rotated)
            .is_err(),
        "the removed key cannot"
    );

    // No tag of the new message verifies under the old derived key; each verifies under the
    // new one (which shows the derivation and AADs here are right).
    let old_key = content_key(&old_dk, &h_old.body.message_id);
    let new_key = content_key(&new_dk, &h_new.body.message_id);
    let required_only = tenant;
    let all = tags(&rotated, &required_only);
    assert_eq!(
        all.len(),
        1 + 73 + 1,
        "header, 73 full frames, the final frame"
    );
    for (i, (iv, aad, ct, tag)) in all.iter().enumerate() {
        assert!(
            opens(&new_key, *iv, aad, ct, tag),
            "tag {i} under the new key"
        );
        assert!(
            !opens(&old_key, *iv, aad, ct, tag),
            "tag {i} under the old key"
        );
    }
    // And the check can fail: the input's own tags do verify under the old key.
    for (iv, aad, ct, tag) in tags(&msg, &required_only) {
        assert!(opens(&old_key, iv, &aad, &ct, &tag));
    }
}

fn rewrap_all(
    dec: &Decryptor<'_>,
    msg: &[u8],
    to: &dyn Keyring,
) -> Result<Rewrapped<Vec<u8>>, Error> {
    dec.rewrap(msg)?.remove("ns:old")?.write(to, Vec::new())
}

#[test]
fn no_output_unless_the_whole_input_authenticates() {
    let old = raw("old", 1);
    let new = raw("new", 2);
    let pt = data(200_000);
    let plain = Encryptor::new(&old)
        .frame_length(4096)
        .encrypt(&pt)
        .unwrap();
    let signed = Encryptor::new(&old)
        .frame_length(4096)
        .suite(AlgorithmSuite::Aes256GcmHkdfSha512CommitKeyEcdsaP384)
        .encrypt(&pt)
        .unwrap();
    let (_, header_len) = header(&plain);
    // The final frame of `plain` holds 200_000 % 4096 bytes, and 16 of tag, at its end.
    let final_ct = plain.len() - 16 - 200_000 % 4096;
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    for cut in [
        header_len + 10,
        plain.len() / 2,
        final_ct - 24,
        plain.len() - 1,
    ] {
        cases.push(("truncated", plain[..cut].to_vec()));
    }
    let mut flipped = plain.clone();
    flipped[final_ct + 3] ^= 1;
    cases.push(("a bit flipped in the final frame", flipped));
    cases.push(("trailing bytes", [&plain[..], b"x"].concat()));
    let mut bad_sig = signed.clone();
    let n = bad_sig.len();
    bad_sig[n - 5] ^= 1;
    cases.push(("a bad signature", bad_sig));
    cases.push(("a truncated signature", signed[..signed.len() - 1].to_vec()));
    for threads in [1, 2] {
        let dec = Decryptor::new(&old).threads(threads);
        for (what, input) in &cases {
            let mut out = Vec::new();
            let result = dec
                .rewrap(&input[..])
                .and_then(|r| r.remove("ns:old")?.write(&new, &mut out));
            let err = result.map(|_| ()).unwrap_err();
            assert!(
                matches!(err, Error::Format(_) | Error::DecryptionFailed),
                "{what}: {err}"
            );
            // Whatever reached the writer is no message any reader accepts.
            assert!(Decryptor::new(&new).decrypt(&out).is_err(), "{what}");
        }
        // The untouched inputs do re-wrap.
        for input in [&plain, &signed] {
            let done = rewrap_all(&dec, input, &new).unwrap();
            assert_eq!(Decryptor::new(&new).decrypt(&done.output).unwrap(), pt);
        }
    }
}

#[test]
fn remove_matches_exactly_and_a_kept_key_must_be_wrapped() {
    let (a, a2, b, c) = (raw("a", 1), raw("a2", 3), raw("b", 2), raw("c", 4));
    let both: Vec<Arc<dyn Keyring>> = vec![Arc::new(raw("a2", 3)), Arc::new(raw("b", 2))];
    let wrap = MultiKeyring::new(Some(Arc::new(raw("a", 1))), both).unwrap();
    let msg = Encryptor::new(&wrap).encrypt(b"three keys").unwrap();
    let dec = Decryptor::new(&a);
    let names = |keys: Vec<kms_envelope::stream::WrappingKey>| {
        keys.iter().map(ToString::to_string).collect::<Vec<_>>()
    };
    assert_eq!(
        names(dec.rewrap(&msg[..]).unwrap().input_keys()),
        ["ns:a", "ns:a2", "ns:b"]
    );
    // Exact: `ns:a` is not a prefix of `ns:a2`; a namespace alone, or a partial name, is no
    // key, and naming no key is an error.
    let r = dec.rewrap(&msg[..]).unwrap().remove("ns:a").unwrap();
    assert_eq!(names(r.kept_keys()), ["ns:a2", "ns:b"]);
    for spec in ["ns", "ns:", "a", "ns:nope", "ns:a22"] {
        let err = dec.rewrap(&msg[..]).unwrap().remove(spec).unwrap_err();
        assert!(matches!(err, Error::Misuse(_)), "{spec}: {err}");
        assert!(err.to_string().contains("ns:a, ns:a2, ns:b"), "{err}");
    }
    // Kept keys must be wrapped: `ns:b` is kept but `c` does not wrap under it.
    let r = dec
        .rewrap(&msg[..])
        .unwrap()
        .remove("ns:a")
        .unwrap()
        .remove("ns:a2")
        .unwrap();
    let mut out = Vec::new();
    let err = r.write(&c, &mut out).map(|_| ()).unwrap_err();
    assert!(matches!(err, Error::Misuse(_)), "{err}");
    assert!(err.to_string().contains("ns:b"), "{err}");
    assert!(out.is_empty(), "nothing written");
    // A removed key may not come back.
    let err = dec
        .rewrap(&msg[..])
        .unwrap()
        .remove("ns:a")
        .unwrap()
        .write(
            &MultiKeyring::new(
                Some(Arc::new(raw("a", 1))),
                vec![Arc::new(raw("a2", 3)), Arc::new(raw("b", 2))],
            )
            .unwrap(),
            Vec::new(),
        )
        .map(|_| ())
        .unwrap_err();
    assert!(err.to_string().contains("to be removed"), "{err}");
    // Kept keys wrapped and a new one added: the key set is (input − removed) ∪ new, and each
    // of those keys, and only those, decrypts.
    let kept: Vec<Arc<dyn Keyring>> = vec![Arc::new(raw("b", 2)), Arc::new(raw("c", 4))];
    let done = dec
        .rewrap(&msg[..])
        .unwrap()
        .remove("ns:a")
        .unwrap()
        .remove("ns:a2")
        .unwrap()
        .write(&MultiKeyring::new(None, kept).unwrap(), Vec::new())
        .unwrap();
    assert_eq!(names(done.keys), ["ns:b", "ns:c"]);
    for (k, ok) in [(&a, false), (&a2, false), (&b, true), (&c, true)] {
        assert_eq!(Decryptor::new(k).decrypt(&done.output).is_ok(), ok, "{k:?}");
    }
    // Removing every key and adding none leaves nothing to decrypt with: refused.
    let err = Decryptor::new(&b)
        .rewrap(&done.output[..])
        .unwrap()
        .remove("ns:b")
        .unwrap()
        .remove("ns:c")
        .unwrap()
        .write(
            &MultiKeyring::new(None, vec![Arc::new(raw("b", 2))]).unwrap(),
            Vec::new(),
        )
        .map(|_| ())
        .unwrap_err();
    assert!(err.to_string().contains("to be removed"), "{err}");
}

#[test]
fn the_data_key_cache_is_bypassed() {
    let counting = Arc::new(keyrings::Counting::new(raw("new", 2)));
    let cache = DataKeyCache::new(NonZeroUsize::new(4).unwrap());
    let caching = capture(
        CachingKeyring::builder(counting.clone(), cache.clone())
            .partition("p")
            .build()
            .unwrap(),
    );
    let ctx = EncryptionContext::new().with("tenant", "acme");
    // A cached data key for this context, and its wrapped key.
    let cached = Encryptor::new(&caching)
        .context(ctx.clone())
        .encrypt(b"a")
        .unwrap();
    let again = Encryptor::new(&caching)
        .context(ctx.clone())
        .encrypt(b"b")
        .unwrap();
    assert_eq!(counting.encrypts(), 1, "the second was a hit");
    assert_eq!(
        header(&again).0.body.encrypted_data_keys,
        header(&cached).0.body.encrypted_data_keys
    );
    let cached_dk = caching.last();
    // Re-wrap a message of that context through the caching keyring: it reaches the keyring
    // (a miss would too, but the entry is there and fresh), leaves the cache as it was, and the
    // data key is not the cached one.
    let old = raw("old", 1);
    let msg = Encryptor::new(&old)
        .context(ctx.clone())
        .encrypt(b"c")
        .unwrap();
    let done = Decryptor::new(&old)
        .rewrap(&msg[..])
        .unwrap()
        .remove("ns:old")
        .unwrap()
        .write(&caching, Vec::new())
        .unwrap();
    assert_eq!(counting.encrypts(), 2, "the cache was not consulted");
    assert_eq!(cache.len(), 1);
    assert_ne!(caching.last(), cached_dk, "not the cached data key");
    assert_ne!(
        header(&done.output).0.body.encrypted_data_keys[0],
        header(&cached).0.body.encrypted_data_keys[0]
    );
    // The cache entry is still there and still served: the re-wrap neither took nor filled it.
    Encryptor::new(&caching).context(ctx).encrypt(b"d").unwrap();
    assert_eq!(counting.encrypts(), 2);
}

/// A keyring that ignores the data key it is given (as a careless cache would).
#[derive(Debug)]
struct Replacing(Vec<EncryptedDataKey>);

#[async_trait::async_trait]
impl Keyring for Replacing {
    async fn on_encrypt(&self, m: &mut EncryptionMaterials) -> Result<(), Error> {
        if self.0.is_empty() {
            m.data_key = Some(kms_envelope::DataKey::from_slice(&[9; 32]));
            raw("new", 2).on_encrypt(m).await
        } else {
            m.encrypted_data_keys.extend(self.0.iter().cloned());
            Ok(())
        }
    }
    async fn on_decrypt(
        &self,
        _: &mut DecryptionMaterials,
        _: &[EncryptedDataKey],
    ) -> Result<(), Error> {
        unreachable!()
    }
}

#[test]
fn a_keyring_that_does_not_wrap_the_fresh_data_key_is_refused() {
    let old = raw("old", 1);
    let msg = Encryptor::new(&old).encrypt(b"x").unwrap();
    let err = rewrap_all(&Decryptor::new(&old), &msg, &Replacing(Vec::new())).unwrap_err();
    assert!(
        err.to_string().contains("replaced the fresh data key"),
        "{err}"
    );
    let old_edks = header(&msg).0.body.encrypted_data_keys;
    let err = rewrap_all(&Decryptor::new(&old), &msg, &Replacing(old_edks)).unwrap_err();
    assert!(
        err.to_string().contains("one of the input's wrapped keys"),
        "{err}"
    );
}

#[test]
fn signed_and_legacy_inputs_get_a_committing_suite_and_a_new_signature_key() {
    let old = raw("old", 1);
    let new = raw("new", 2);
    let pt = data(3 << 20);
    use AlgorithmSuite::*;
    for (input, output) in [
        (
            Aes256GcmHkdfSha512CommitKeyEcdsaP384,
            Aes256GcmHkdfSha512CommitKeyEcdsaP384,
        ),
        (
            Aes256GcmIv12Tag16HkdfSha384EcdsaP384,
            Aes256GcmHkdfSha512CommitKeyEcdsaP384,
        ),
        (Aes128GcmIv12Tag16HkdfSha256, Aes256GcmHkdfSha512CommitKey),
        (Aes256GcmIv12Tag16NoKdf, Aes256GcmHkdfSha512CommitKey),
    ] {
        let msg = Encryptor::new(&old)
            .suite(input)
            .dangerous_commitment_policy(if input.is_committing() {
                CommitmentPolicy::RequireEncryptRequireDecrypt
            } else {
                CommitmentPolicy::ForbidEncryptAllowDecrypt
            })
            .frame_length(65_536)
            .encrypt(&pt)
            .unwrap();
        // A buffer limit below the body: a signed body is not held whole to be re-wrapped
        // (tests/rewrap_memory.rs measures the heap).
        let done = Decryptor::new(&old)
            .dangerous_commitment_policy(CommitmentPolicy::RequireEncryptAllowDecrypt)
            .max_buffered_len(1 << 20)
            .rewrap(&msg[..])
            .unwrap()
            .remove("ns:old")
            .unwrap()
            .write(&new, Vec::new())
            .unwrap();
        let (h_in, _) = header(&msg);
        let (h, _) = header(&done.output);
        assert_eq!(h.body.suite, output, "{input}");
        let key = "aws-crypto-public-key";
        if output.signature().is_some() {
            assert_ne!(
                h.body.context.get(key),
                h_in.body.context.get(key),
                "a new signing key"
            );
        } else {
            assert_eq!(h.body.context.get(key), None);
        }
        assert_eq!(
            Decryptor::new(&new).decrypt(&done.output).unwrap(),
            pt,
            "{input}"
        );
    }
    // The caller may name the suite and frame length, but only a committing suite.
    let msg = Encryptor::new(&old).encrypt(&pt).unwrap();
    let done = Decryptor::new(&old)
        .rewrap(&msg[..])
        .unwrap()
        .remove("ns:old")
        .unwrap()
        .suite(Aes256GcmHkdfSha512CommitKeyEcdsaP384)
        .unwrap()
        .frame_length(4096)
        .write(&new, Vec::new())
        .unwrap();
    let (h, _) = header(&done.output);
    assert_eq!(
        (h.body.suite, h.body.frame_length),
        (Aes256GcmHkdfSha512CommitKeyEcdsaP384, 4096)
    );
    assert_eq!(Decryptor::new(&new).decrypt(&done.output).unwrap(), pt);
    assert!(Decryptor::new(&old)
        .rewrap(&msg[..])
        .unwrap()
        .suite(Aes256GcmIv12Tag16HkdfSha256)
        .is_err());
    // Random access works on the result as on any message.
    let r = Decryptor::new(&new)
        .dangerous_release_unverified_signed_frames(true)
        .seekable(done.output)
        .unwrap();
    let mut got = vec![0u8; 10_000];
    let n = r.read_at(1_000_000, &mut got).unwrap();
    assert_eq!(got[..n], pt[1_000_000..1_000_000 + n]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_esdk_reads_a_rewrapped_message() {
    use aws_esdk::client as esdk_client;
    use aws_esdk::material_providers::client as mpl_client;
    use aws_esdk::material_providers::types::material_providers_config::MaterialProvidersConfig;
    use aws_esdk::material_providers::types::{AesWrappingAlg, EsdkCommitmentPolicy};
    use aws_esdk::types::aws_encryption_sdk_config::AwsEncryptionSdkConfig;

    let old = raw("old", 1);
    let new = raw("new", 2);
    let mpl =
        mpl_client::Client::from_conf(MaterialProvidersConfig::builder().build().unwrap()).unwrap();
    let theirs = mpl
        .create_raw_aes_keyring()
        .key_name("new")
        .key_namespace("ns")
        .wrapping_key(vec![2u8; 32])
        .wrapping_alg(AesWrappingAlg::AlgAes256GcmIv12Tag16)
        .send()
        .await
        .unwrap();
    let config = AwsEncryptionSdkConfig::builder()
        .commitment_policy(EsdkCommitmentPolicy::RequireEncryptRequireDecrypt)
        .build()
        .unwrap();
    let client = esdk_client::Client::from_conf(config).unwrap();
    let ctx = EncryptionContext::new().with("purpose", "rewrap");
    let pt = data(100_000);
    for suite in [
        AlgorithmSuite::Aes256GcmHkdfSha512CommitKey,
        AlgorithmSuite::Aes256GcmHkdfSha512CommitKeyEcdsaP384,
    ] {
        let msg = Encryptor::new(&old)
            .suite(suite)
            .context(ctx.clone())
            .frame_length(4096)
            .encrypt(&pt)
            .unwrap();
        let done = tokio::task::block_in_place(|| {
            Decryptor::new(&old)
                .rewrap(&msg[..])
                .unwrap()
                .remove("ns:old")
                .unwrap()
                .write(&new, Vec::new())
                .unwrap()
        });
        let context: HashMap<String, String> = ctx
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let out = client
            .decrypt()
            .ciphertext(done.output)
            .keyring(theirs.clone())
            .encryption_context(context)
            .send()
            .await
            .unwrap_or_else(|e| panic!("aws-esdk refused the re-wrapped {suite}: {e:?}"));
        assert_eq!(out.plaintext.unwrap().into_inner(), pt, "{suite}");
    }
}

fn planted_kms(arn: &str) -> Arc<dyn Keyring> {
    Arc::new(Planted(EncryptedDataKey {
        provider_id: "aws-kms".into(),
        provider_info: arn.as_bytes().to_vec(),
        ciphertext: vec![7; 32],
    }))
}

#[test]
fn a_removed_multi_region_key_cannot_come_back_as_a_replica() {
    let east = "arn:aws:kms:us-east-1:111122223333:key/mrk-1234";
    let west = "arn:aws:kms:us-west-2:111122223333:key/mrk-1234";
    let old = Arc::new(raw("old", 1)) as Arc<dyn Keyring>;
    let msg =
        Encryptor::new(&MultiKeyring::new(Some(old.clone()), vec![planted_kms(east)]).unwrap())
            .encrypt(b"replicas")
            .unwrap();
    let job = || {
        Decryptor::new(&*old)
            .rewrap(&msg[..])
            .unwrap()
            .remove(east)
            .unwrap()
    };
    // The us-west-2 replica decrypts what us-east-1 wrapped: wrapping under it keeps the
    // removed key.
    let mut out = Vec::new();
    let err = job()
        .write(
            &MultiKeyring::new(Some(old.clone()), vec![planted_kms(west)]).unwrap(),
            &mut out,
        )
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(err, Error::Misuse(_)), "{err}");
    assert!(err.to_string().contains(west), "{err}");
    assert!(out.is_empty(), "nothing written");
    // Named by the other replica's ARN, the key is removed all the same; the removed set is
    // reported.
    let done = Decryptor::new(&*old)
        .rewrap(&msg[..])
        .unwrap()
        .remove(west)
        .unwrap()
        .write(&*old, Vec::new())
        .unwrap();
    let removed: Vec<String> = done.removed.iter().map(ToString::to_string).collect();
    assert_eq!(removed, [east]);
    let kept: Vec<String> = done.keys.iter().map(ToString::to_string).collect();
    assert_eq!(kept, ["ns:old"]);
}

#[test]
fn the_output_frame_length_stays_readable_by_default() {
    let key = raw("k", 1);
    let pt = data(100_000);
    let msg = Encryptor::new(&key)
        .frame_length(4096)
        .encrypt(&pt)
        .unwrap();
    let job = || Decryptor::new(&key).rewrap(&msg[..]).unwrap();
    // Above the limit a default reader applies: refused before anything is written.
    let mut out = Vec::new();
    let err = job()
        .frame_length(DEFAULT_MAX_FRAME_LENGTH + 1)
        .write(&key, &mut out)
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(err, Error::Misuse(_)), "{err}");
    assert!(out.is_empty());
    let done = job()
        .frame_length(DEFAULT_MAX_FRAME_LENGTH)
        .write(&key, Vec::new())
        .unwrap();
    assert_eq!(Decryptor::new(&key).decrypt(&done.output).unwrap(), pt);
    // Raised on purpose, it is allowed; so is a lower limit, which the input's frames obey.
    let done = job()
        .max_frame_length(u32::MAX)
        .frame_length(DEFAULT_MAX_FRAME_LENGTH + 1)
        .write(&key, Vec::new())
        .unwrap();
    assert_eq!(
        header(&done.output).0.body.frame_length,
        DEFAULT_MAX_FRAME_LENGTH + 1
    );
    // An input whose frames exceed the new limit (its reader's limit was raised) is written
    // with frames a default reader takes.
    let done = job()
        .max_frame_length(1024)
        .write(&key, Vec::new())
        .unwrap();
    assert_eq!(header(&done.output).0.body.frame_length, 1024);
    assert_eq!(Decryptor::new(&key).decrypt(&done.output).unwrap(), pt);
}

#[test]
fn an_expected_signature_key_is_not_carried_into_the_new_context() {
    let key = raw("k", 1);
    let msg = Encryptor::new(&key)
        .suite(AlgorithmSuite::Aes256GcmHkdfSha512CommitKeyEcdsaP384)
        .context(EncryptionContext::new().with("purpose", "test"))
        .encrypt(b"signed")
        .unwrap();
    let public = header(&msg)
        .0
        .body
        .context
        .get(PUBLIC_KEY_FIELD)
        .unwrap()
        .to_owned();
    // The caller expects the whole context it saw, the signature key included.
    let expected = EncryptionContext::new()
        .with("purpose", "test")
        .with(PUBLIC_KEY_FIELD, public.clone());
    let done = Decryptor::new(&key)
        .expected_context(expected)
        .rewrap(&msg[..])
        .unwrap()
        .write(&key, Vec::new())
        .unwrap();
    let (h, _) = header(&done.output);
    let new_public = h.body.context.get(PUBLIC_KEY_FIELD).unwrap();
    assert_ne!(new_public, public, "a new signature key");
    assert_eq!(h.body.context.get("purpose"), Some("test"));
    assert_eq!(
        Decryptor::new(&key).decrypt(&done.output).unwrap(),
        b"signed"
    );
}
