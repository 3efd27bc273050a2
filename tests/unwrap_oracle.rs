//! Unwrapping a data key is no oracle: however one wrapped key fails to unwrap (bad padding, a
//! key of the wrong length, a key that does not open the header), the answer is the same, and
//! the keyring goes on to the message's next wrapped key.

use std::sync::Arc;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{
    KeySize, OaepPublicEncryptingKey, Pkcs1PublicEncryptingKey, PrivateDecryptingKey,
    OAEP_SHA256_MGF1SHA256,
};
use kms_envelope::format::EncryptedDataKey;
use kms_envelope::materials::{DecryptionMaterials, EncryptionMaterials};
use kms_envelope::{
    Decryptor, EncryptionContext, Encryptor, Error, Keyring, MultiKeyring, RawAesKeyring,
    RawRsaKeyring, RsaPadding,
};

const NS: &str = "oracle-ns";
const NAME: &str = "oracle-key";

/// Makes the data key and plants a wrapped key of the test's choosing in front of the real
/// ones, so that the header authenticates with it in place (as an attacker's would once the
/// attacker encrypts the message).
#[derive(Debug)]
struct Planted(EncryptedDataKey);

#[async_trait::async_trait]
impl Keyring for Planted {
    async fn on_encrypt(&self, m: &mut EncryptionMaterials) -> Result<(), Error> {
        m.data_key_or_generate()?;
        m.encrypted_data_keys.push(self.0.clone());
        Ok(())
    }
    async fn on_decrypt(
        &self,
        _: &mut DecryptionMaterials,
        _: &[EncryptedDataKey],
    ) -> Result<(), Error> {
        Err(Error::NoUsableDataKey(Vec::new()))
    }
}

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

/// A message whose only wrapped key is `bad`, and one where `bad` comes before a good one.
fn messages(bad: Vec<u8>, good: Arc<dyn Keyring>) -> (Vec<u8>, Vec<u8>) {
    let enc = |k: &dyn Keyring| {
        Encryptor::new(k)
            .context(context())
            .encrypt(b"oracle")
            .unwrap()
    };
    let only_bad = enc(&planted(bad.clone()));
    let multi = MultiKeyring::new(Some(Arc::new(planted(bad))), vec![good]).unwrap();
    (only_bad, enc(&multi))
}

/// The error's variant and its text.
fn shown(err: Error) -> (std::mem::Discriminant<Error>, String) {
    (std::mem::discriminant(&err), err.to_string())
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

#[test]
fn rsa_unwrap_failures_all_look_the_same_and_the_next_wrapped_key_is_tried() {
    let private = PrivateDecryptingKey::generate(KeySize::Rsa2048).unwrap();
    let der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&private).unwrap();
    let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", der.as_ref().to_vec()));
    for padding in [RsaPadding::Pkcs1, RsaPadding::OaepSha256] {
        let rsa = Arc::new(RawRsaKeyring::new(NS, NAME, padding, None, Some(&pem)).unwrap());
        let mut answers = Vec::new();
        for (case, bad) in rsa_cases(padding, &private) {
            let (only_bad, bad_then_good) = messages(bad, rsa.clone());
            let err = Decryptor::new(&*rsa).decrypt(&only_bad).unwrap_err();
            assert!(
                matches!(err, Error::DecryptionFailed),
                "{padding:?}, {case}: {err:?}"
            );
            answers.push((case, shown(err)));
            let pt = Decryptor::new(&*rsa).decrypt(&bad_then_good);
            assert_eq!(
                pt.as_deref().ok(),
                Some(&b"oracle"[..]),
                "{padding:?}, {case}: the good wrapped key after it decrypts: {pt:?}"
            );
        }
        for (case, answer) in &answers[1..] {
            assert_eq!(
                answer, &answers[0].1,
                "{padding:?}: {case} answers differently from {}",
                answers[0].0
            );
        }
        let text = &answers[0].1 .1;
        assert!(!text.contains("16") && !text.contains("32"), "{text}");
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
