//! Unwrapping a data key is no oracle: however one wrapped key fails to unwrap (bad padding, a
//! key of the wrong length, a key that does not open the header), the answer is the same, and
//! the keyring goes on to the message's next wrapped key.

#[path = "support/keyrings.rs"]
mod keyrings;
use keyrings::Planted;

use std::num::NonZeroUsize;
use std::sync::Arc;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{
    KeySize, OaepPublicEncryptingKey, Pkcs1PublicEncryptingKey, PrivateDecryptingKey,
    OAEP_SHA256_MGF1SHA256,
};
use kms_envelope::format::EncryptedDataKey;
use kms_envelope::materials::{
    CachingKeyring, DataKeyCache, DecryptionMaterials, EncryptionMaterials,
};
use kms_envelope::{
    AlgorithmSuite, CommitmentPolicy, Decryptor, EncryptionContext, Encryptor, Error, Keyring,
    MultiKeyring, RawAesKeyring, RawRsaKeyring, RsaPadding,
};

const NS: &str = "oracle-ns";
const NAME: &str = "oracle-key";

fn planted(ciphertext: Vec<u8>) -> Planted {
    Planted(EncryptedDataKey {
        provider_id: NS.into(),
        provider_info: NAME.as_bytes().to_vec(),
        ciphertext,
    })
}

fn context() -> EncryptionContext {
    EncryptionContext::new().with("purpose", "oracle")
}

/// Whether messages use the legacy, non-committing suite 0x0178 (where no commitment refuses
/// a wrong key before the header's tag is checked) rather than the default 0x0478.
#[derive(Debug, Clone, Copy)]
enum Suite {
    Committing,
    Legacy,
}

/// A message whose only wrapped key is `bad`, and one where `bad` comes before a good one.
fn messages(bad: Vec<u8>, good: Arc<dyn Keyring>, suite: Suite) -> (Vec<u8>, Vec<u8>) {
    let enc = |k: &dyn Keyring| {
        let e = Encryptor::new(k).context(context());
        match suite {
            Suite::Committing => e,
            Suite::Legacy => e
                .suite(AlgorithmSuite::Aes256GcmIv12Tag16HkdfSha256)
                .dangerous_commitment_policy(CommitmentPolicy::ForbidEncryptAllowDecrypt),
        }
        .encrypt(b"oracle")
        .unwrap()
    };
    let only_bad = enc(&planted(bad.clone()));
    let multi = MultiKeyring::new(Some(Arc::new(planted(bad))), vec![good]).unwrap();
    (only_bad, enc(&multi))
}

fn decrypt(keyring: &dyn Keyring, message: &[u8], suite: Suite) -> Result<Vec<u8>, Error> {
    let d = Decryptor::new(keyring);
    match suite {
        Suite::Committing => d,
        Suite::Legacy => {
            d.dangerous_commitment_policy(CommitmentPolicy::RequireEncryptAllowDecrypt)
        }
    }
    .decrypt(message)
}

/// The error's variant, its `Display` and its `Debug`: all that a caller could tell apart.
fn shown(err: Error) -> (std::mem::Discriminant<Error>, String, String) {
    (
        std::mem::discriminant(&err),
        err.to_string(),
        format!("{err:?}"),
    )
}

/// Three wrapped keys that each fail differently: bad padding, valid padding around a 16-byte
/// key, valid padding around a 32-byte key that is not the message's.
fn rsa_cases(padding: RsaPadding, private: &PrivateDecryptingKey) -> Vec<(&'static str, Vec<u8>)> {
    let public = private.public_key();
    let size = public.key_size_bytes();
    // c = 1 decrypts to m = 1: neither 00 02 ... (PKCS#1 v1.5) nor a valid OAEP block.
    let mut one = vec![0u8; size];
    one[size - 1] = 1;
    let wrap = |plaintext: &[u8]| -> Vec<u8> {
        let mut out = vec![0u8; size];
        match padding {
            RsaPadding::Pkcs1 => Pkcs1PublicEncryptingKey::new(public.clone())
                .unwrap()
                .encrypt(plaintext, &mut out)
                .unwrap()
                .to_vec(),
            _ => OaepPublicEncryptingKey::new(public.clone())
                .unwrap()
                .encrypt(&OAEP_SHA256_MGF1SHA256, plaintext, &mut out, None)
                .unwrap()
                .to_vec(),
        }
    };
    vec![
        ("bad padding", one),
        ("valid padding, 16-byte key", wrap(&[0x16; 16])),
        ("valid padding, 32-byte wrong key", wrap(&[0x32; 32])),
    ]
}

/// Decrypts with `keyring` a message whose only wrapped key is each of `cases` in turn, and one
/// where it comes before `good`'s: every bad case gives the same answer, the good key works.
fn assert_uniform(
    label: &str,
    keyring: &dyn Keyring,
    good: Arc<dyn Keyring>,
    suite: Suite,
    cases: Vec<(&'static str, Vec<u8>)>,
) {
    let mut answers = Vec::new();
    for (case, bad) in cases {
        let (only_bad, bad_then_good) = messages(bad, good.clone(), suite);
        let err = decrypt(keyring, &only_bad, suite).unwrap_err();
        assert!(
            matches!(err, Error::DecryptionFailed),
            "{label}, {suite:?}, {case}: {err:?}"
        );
        answers.push((case, shown(err)));
        let pt = decrypt(keyring, &bad_then_good, suite);
        assert_eq!(
            pt.as_deref().ok(),
            Some(&b"oracle"[..]),
            "{label}, {suite:?}, {case}: the good wrapped key after it decrypts: {pt:?}"
        );
    }
    assert_eq!(answers.len(), 3, "{label}");
    for (case, answer) in &answers[1..] {
        assert_eq!(
            answer, &answers[0].1,
            "{label}, {suite:?}: {case} answers differently from {}",
            answers[0].0
        );
    }
}

#[test]
fn rsa_unwrap_failures_all_look_the_same_and_the_next_wrapped_key_is_tried() {
    let private = PrivateDecryptingKey::generate(KeySize::Rsa2048).unwrap();
    let der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&private).unwrap();
    let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", der.as_ref().to_vec()));
    let aes: Arc<dyn Keyring> =
        Arc::new(RawAesKeyring::new("oracle-aes", NAME, &[0x5Au8; 32]).unwrap());
    for padding in [RsaPadding::Pkcs1, RsaPadding::OaepSha256] {
        let rsa: Arc<dyn Keyring> =
            Arc::new(RawRsaKeyring::new(NS, NAME, padding, None, Some(&pem)).unwrap());
        // RSA then AES: the AES child gets its turn after the RSA one refuses.
        let multi = MultiKeyring::new(None, vec![rsa.clone(), aes.clone()]).unwrap();
        let cache = DataKeyCache::new(NonZeroUsize::new(8).unwrap());
        let caching = CachingKeyring::builder(rsa.clone(), cache)
            .partition("oracle")
            .build()
            .unwrap();
        for suite in [Suite::Committing, Suite::Legacy] {
            let label = format!("{padding:?}, RSA alone");
            let cases = rsa_cases(padding, &private);
            assert_uniform(&label, &*rsa, rsa.clone(), suite, cases);
            let label = format!("{padding:?}, multi-keyring RSA then AES");
            let cases = rsa_cases(padding, &private);
            assert_uniform(&label, &multi, aes.clone(), suite, cases);
            let label = format!("{padding:?}, caching keyring over RSA");
            let cases = rsa_cases(padding, &private);
            assert_uniform(&label, &caching, rsa.clone(), suite, cases);
        }
    }
}

/// A raw AES wrapped key under the right wrapping key and context, around `key`.
fn aes_wrapped(wrapping_key: &[u8; 32], key: &[u8]) -> EncryptedDataKey {
    let iv = [7u8; 12];
    let mut info = NAME.as_bytes().to_vec();
    info.extend_from_slice(&128u32.to_be_bytes());
    info.extend_from_slice(&12u32.to_be_bytes());
    info.extend_from_slice(&iv);
    let sealer = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, wrapping_key).unwrap());
    let mut ciphertext = key.to_vec();
    let aad = context().serialize().unwrap();
    sealer
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(iv),
            Aad::from(aad),
            &mut ciphertext,
        )
        .unwrap();
    EncryptedDataKey {
        provider_id: NS.into(),
        provider_info: info,
        ciphertext,
    }
}

#[test]
fn aes_wrapped_keys_that_do_not_fit_the_message_are_passed_over() {
    let wrapping_key = [0xA5u8; 32];
    let aes = Arc::new(RawAesKeyring::new(NS, NAME, &wrapping_key).unwrap());
    for (case, key) in [
        ("a 16-byte key", vec![0x16u8; 16]),
        ("another message's 32-byte key", vec![0x32u8; 32]),
    ] {
        let bad = aes_wrapped(&wrapping_key, &key);
        let first = Planted(bad);
        let multi = MultiKeyring::new(Some(Arc::new(first)), vec![aes.clone()]).unwrap();
        let msg = Encryptor::new(&multi)
            .context(context())
            .encrypt(b"aes")
            .unwrap();
        let pt = Decryptor::new(&*aes).decrypt(&msg);
        assert_eq!(pt.as_deref().ok(), Some(&b"aes"[..]), "{case}: {pt:?}");
    }
}

/// A third-party keyring that offers a key, ignores its refusal and reports success anyway.
#[derive(Debug)]
struct IgnoresRefusal;

#[async_trait::async_trait]
impl Keyring for IgnoresRefusal {
    async fn on_encrypt(&self, _: &mut EncryptionMaterials) -> Result<(), Error> {
        Err(Error::Keyring("decrypt only".into()))
    }
    async fn on_decrypt(
        &self,
        m: &mut DecryptionMaterials,
        _: &[EncryptedDataKey],
    ) -> Result<(), Error> {
        let refused = m.set_data_key(kms_envelope::DataKey::from_slice(&[0x32; 32]));
        assert!(
            matches!(refused, Err(Error::DecryptionFailed)),
            "{refused:?}"
        );
        Ok(())
    }
}

#[test]
fn a_refused_key_then_success_without_a_key_is_decryption_failed() {
    let aes = RawAesKeyring::new(NS, NAME, &[0xA5u8; 32]).unwrap();
    let msg = Encryptor::new(&aes)
        .context(context())
        .encrypt(b"aes")
        .unwrap();
    let err = Decryptor::new(&IgnoresRefusal).decrypt(&msg).unwrap_err();
    assert!(matches!(err, Error::DecryptionFailed), "{err:?}");
}
