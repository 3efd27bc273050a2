//! The raw RSA keyring: wraps data keys with RSA (PKCS#1 v1.5 or OAEP) under a key pair the
//! caller holds (ESDK-compatible; FORMAT.md §10.3). RSA binds no encryption context.
//!
//! Unwrapping must not be an oracle (Bleichenbacher 1998; Manger 2001 for OAEP): whoever can
//! submit messages learns nothing from how one wrapped key failed. Every failure (bad padding,
//! a key of the wrong length, a key that does not open the header) takes the same path: a random
//! stand-in of the suite's key length is chosen in constant time (`subtle`) in place of the
//! unwrapped bytes, tried against the header like a real key, refused, and the keyring goes on
//! to the message's next wrapped key; the message layer then reports `DecryptionFailed`. A
//! ciphertext that is not of the modulus length is passed over with no work at all: its length
//! is public, so skipping it tells its author nothing, and the answer is the same.
//! What this cannot hide is the time AWS-LC itself takes to return a padding error rather than
//! a plaintext (AWS-LC's own notes say its PKCS#1 v1.5 decryption API cannot fully avoid
//! Bleichenbacher's attack; aws-lc-rs offers no raw RSA operation to do the padding check
//! here, and `unsafe` is forbidden in this crate). PKCS#1 v1.5 is therefore for reading
//! existing messages; wrap new data keys with OAEP.

use aws_lc_rs::rsa::{
    OaepAlgorithm, OaepPrivateDecryptingKey, OaepPublicEncryptingKey, Pkcs1PrivateDecryptingKey,
    Pkcs1PublicEncryptingKey, PrivateDecryptingKey, PublicEncryptingKey, OAEP_SHA1_MGF1SHA1,
    OAEP_SHA256_MGF1SHA256, OAEP_SHA384_MGF1SHA384, OAEP_SHA512_MGF1SHA512,
};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};
use zeroize::Zeroizing;

use super::{check_namespace, Keyring};
use crate::crypto::random_bytes;
use crate::format::EncryptedDataKey;
use crate::materials::{DataKey, DecryptionMaterials, EncryptionMaterials};
use crate::Error;

/// RSA padding for key wrapping. OAEP uses the same hash for MGF1 and an empty label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RsaPadding {
    /// PKCS#1 v1.5: legacy, for reading messages that use it; prefer OAEP for new ones.
    ///
    /// PKCS#1 v1.5 encryption padding is open to Bleichenbacher-style attacks whenever a
    /// decrypting party's behaviour depends on whether the padding was valid. This keyring
    /// answers every unwrapping failure the same way, but the time AWS-LC takes to reject bad
    /// padding is beyond its reach (see the threat model). Do not use it for new keys.
    Pkcs1,
    /// OAEP with SHA-1.
    OaepSha1,
    /// OAEP with SHA-256.
    OaepSha256,
    /// OAEP with SHA-384.
    OaepSha384,
    /// OAEP with SHA-512.
    OaepSha512,
}

impl RsaPadding {
    fn oaep(self) -> Option<&'static OaepAlgorithm> {
        match self {
            RsaPadding::Pkcs1 => None,
            RsaPadding::OaepSha1 => Some(&OAEP_SHA1_MGF1SHA1),
            RsaPadding::OaepSha256 => Some(&OAEP_SHA256_MGF1SHA256),
            RsaPadding::OaepSha384 => Some(&OAEP_SHA384_MGF1SHA384),
            RsaPadding::OaepSha512 => Some(&OAEP_SHA512_MGF1SHA512),
        }
    }
}

enum Encrypting {
    Oaep(OaepPublicEncryptingKey),
    Pkcs1(Pkcs1PublicEncryptingKey),
}

enum Decrypting {
    Oaep(OaepPrivateDecryptingKey),
    Pkcs1(Pkcs1PrivateDecryptingKey),
}

impl Decrypting {
    /// The modulus length in bytes: the length of every RSA ciphertext under this key.
    fn modulus_len(&self) -> usize {
        match self {
            Decrypting::Oaep(k) => k.key_size_bytes(),
            Decrypting::Pkcs1(k) => k.key_size_bytes(),
        }
    }
}

/// Wraps data keys under an RSA public key and unwraps them with the private key. Either half
/// may be absent: a keyring with only the public key can encrypt but not decrypt.
///
/// Its unwrapping is no oracle only through the message layer, which checks each key against
/// the message's header. Called directly with materials from [`DecryptionMaterials::new`]
/// (no header check), [`Keyring::on_decrypt`] succeeds exactly when a wrapped key's padding is
/// valid around a key of the suite's length: with [`RsaPadding::Pkcs1`], a two-outcome
/// Bleichenbacher oracle for whoever sees the result (see [`Keyring::on_decrypt`]).
pub struct RawRsaKeyring {
    namespace: String,
    name: String,
    padding: RsaPadding,
    public: Option<Encrypting>,
    private: Option<Decrypting>,
}

impl std::fmt::Debug for RawRsaKeyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawRsaKeyring")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("padding", &self.padding)
            .field("can_encrypt", &self.public.is_some())
            .field("can_decrypt", &self.private.is_some())
            .finish()
    }
}

fn pem_der(pem_text: &str, want: &[&str]) -> Result<Zeroizing<Vec<u8>>, Error> {
    let parsed = pem::parse(pem_text)
        .map_err(|e| Error::Misuse(format!("cannot read the RSA key as PEM: {e}")))?;
    if !want.contains(&parsed.tag()) {
        return Err(Error::Misuse(format!(
            "expected a PEM block of type {}, found {:?}",
            want.join(" or "),
            parsed.tag()
        )));
    }
    Ok(Zeroizing::new(parsed.into_contents()))
}

impl RawRsaKeyring {
    /// A keyring from PEM keys: a PKCS#8 `PRIVATE KEY` and/or an X.509 `PUBLIC KEY`. With only
    /// the private key, the public half is derived from it.
    ///
    /// # Errors
    /// [`Error::Misuse`] when neither key is given, a key does not parse, or the
    /// namespace is reserved.
    pub fn new(
        namespace: &str,
        name: &str,
        padding: RsaPadding,
        public_pem: Option<&str>,
        private_pem: Option<&str>,
    ) -> Result<Self, Error> {
        check_namespace(namespace, name)?;
        let bad = |what: &str| Error::Misuse(format!("the RSA {what} key is not a usable RSA key"));
        let private = match private_pem {
            Some(p) => Some(
                PrivateDecryptingKey::from_pkcs8(&pem_der(p, &["PRIVATE KEY"])?)
                    .map_err(|_| bad("private"))?,
            ),
            None => None,
        };
        let public = match (public_pem, &private) {
            (Some(p), _) => Some(
                PublicEncryptingKey::from_der(&pem_der(p, &["PUBLIC KEY"])?)
                    .map_err(|_| bad("public"))?,
            ),
            (None, Some(k)) => Some(k.public_key()),
            (None, None) => {
                return Err(Error::Misuse(
                    "a raw RSA keyring needs a public key, a private key, or both".into(),
                ))
            }
        };
        let public = match (public, padding.oaep()) {
            (Some(k), Some(_)) => Some(Encrypting::Oaep(
                OaepPublicEncryptingKey::new(k).map_err(|_| bad("public"))?,
            )),
            (Some(k), None) => Some(Encrypting::Pkcs1(
                Pkcs1PublicEncryptingKey::new(k).map_err(|_| bad("public"))?,
            )),
            (None, _) => None,
        };
        let private = match (private, padding.oaep()) {
            (Some(k), Some(_)) => Some(Decrypting::Oaep(
                OaepPrivateDecryptingKey::new(k).map_err(|_| bad("private"))?,
            )),
            (Some(k), None) => Some(Decrypting::Pkcs1(
                Pkcs1PrivateDecryptingKey::new(k).map_err(|_| bad("private"))?,
            )),
            (None, _) => None,
        };
        Ok(RawRsaKeyring {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            padding,
            public,
            private,
        })
    }

    /// Decrypts one wrapped key into a key of `len` bytes, and whether that worked. On any
    /// failure (bad padding, a plaintext of another length) the key is a random stand-in, picked
    /// in constant time, so that what follows does the same work whatever went wrong.
    fn unwrap_key(
        &self,
        key: &Decrypting,
        ciphertext: &[u8],
        len: usize,
    ) -> Result<(DataKey, Choice), Error> {
        let mut chosen = Zeroizing::new(vec![0u8; len]);
        random_bytes(&mut chosen)?;
        let (decrypted, room) = match key {
            Decrypting::Oaep(k) => {
                let mut out = Zeroizing::new(vec![0u8; k.min_output_size().max(len)]);
                let n = match self.padding.oaep() {
                    Some(alg) => k.decrypt(alg, ciphertext, &mut out, None).map(|p| p.len()),
                    None => Err(aws_lc_rs::error::Unspecified),
                };
                (n, out)
            }
            Decrypting::Pkcs1(k) => {
                let mut out = Zeroizing::new(vec![0u8; k.min_output_size().max(len)]);
                let n = k.decrypt(ciphertext, &mut out).map(|p| p.len());
                (n, out)
            }
        };
        let (ok, n) = match decrypted {
            Ok(n) => (Choice::from(1), n as u64),
            Err(_) => (Choice::from(0), 0),
        };
        let ok = ok & n.ct_eq(&(len as u64));
        for (c, d) in chosen.iter_mut().zip(room.iter()) {
            c.conditional_assign(d, ok);
        }
        Ok((DataKey::new(chosen), ok))
    }
}

#[async_trait::async_trait]
impl Keyring for RawRsaKeyring {
    async fn on_encrypt(&self, materials: &mut EncryptionMaterials) -> Result<(), Error> {
        let public = self.public.as_ref().ok_or_else(|| {
            Error::Keyring(format!(
                "raw RSA key {}/{} has no public key, so it cannot encrypt",
                self.namespace, self.name
            ))
        })?;
        let key = materials.data_key_or_generate()?;
        let failed = || Error::Crypto("RSA key wrapping failed");
        let ciphertext = match public {
            Encrypting::Oaep(k) => {
                let mut out = vec![0u8; k.ciphertext_size()];
                let alg = self.padding.oaep().ok_or_else(failed)?;
                k.encrypt(alg, key.as_bytes(), &mut out, None)
                    .map_err(|_| failed())?
                    .to_vec()
            }
            Encrypting::Pkcs1(k) => {
                let mut out = vec![0u8; k.ciphertext_size()];
                k.encrypt(key.as_bytes(), &mut out)
                    .map_err(|_| failed())?
                    .to_vec()
            }
        };
        materials.encrypted_data_keys.push(EncryptedDataKey {
            provider_id: self.namespace.clone(),
            provider_info: self.name.as_bytes().to_vec(),
            ciphertext,
        });
        Ok(())
    }

    async fn on_decrypt(
        &self,
        materials: &mut DecryptionMaterials,
        edks: &[EncryptedDataKey],
    ) -> Result<(), Error> {
        let label = format!("raw RSA key {}/{}", self.namespace, self.name);
        let Some(private) = &self.private else {
            return Err(Error::NoUsableDataKey(vec![Error::Keyring(format!(
                "{label}: no private key configured"
            ))]));
        };
        let len = materials.suite.key_len();
        let mut tried = 0;
        for edk in edks {
            if edk.provider_id != self.namespace || edk.provider_info != self.name.as_bytes() {
                continue;
            }
            tried += 1;
            // A ciphertext not of the modulus length cannot be an RSA ciphertext: pass it over
            // before any work (its length is public, written by whoever made the message), and
            // still end in the same `DecryptionFailed` as any other wrapped key that fails.
            if edk.ciphertext.len() != private.modulus_len() {
                materials.refuse();
                continue;
            }
            let (key, unwrapped) = self.unwrap_key(private, &edk.ciphertext, len)?;
            if materials.offer(key, unwrapped) {
                return Ok(());
            }
        }
        Err(Error::NoUsableDataKey(vec![Error::Keyring(
            if tried == 0 {
                format!("{label}: the message has no data key wrapped under it")
            } else {
                format!(
                    "{label}: {tried} wrapped key(s) under it did not unwrap to this message's \
                     data key (another key pair, or an altered message)"
                )
            },
        )]))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
    use aws_lc_rs::rsa::KeySize;

    use super::*;
    use crate::keyring::planted::Planted;
    use crate::materials::test_count::take_header_checks;
    use crate::materials::MAX_KEY_OFFERS;
    use crate::{AlgorithmSuite, CommitmentPolicy, Decryptor, Encryptor, MultiKeyring};

    const NS: &str = "rsa-ns";
    const NAME: &str = "rsa-key";

    fn rsa() -> Arc<RawRsaKeyring> {
        let private = PrivateDecryptingKey::generate(KeySize::Rsa2048).unwrap();
        let der = AsDer::<Pkcs8V1Der>::as_der(&private).unwrap();
        let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", der.as_ref().to_vec()));
        let padding = RsaPadding::OaepSha256;
        Arc::new(RawRsaKeyring::new(NS, NAME, padding, None, Some(&pem)).unwrap())
    }

    /// A message under the non-committing suite 0x0178 (where a key that is not refused by its
    /// commitment costs a GCM pass over the header) with `planted` first, then, with `good`,
    /// the RSA keyring's own wrapped key.
    fn message(planted: Vec<Vec<u8>>, good: Option<Arc<RawRsaKeyring>>) -> Vec<u8> {
        let children: Vec<Arc<dyn Keyring>> = good.into_iter().map(|k| k as _).collect();
        // Planted as an attacker who copies the keyring's namespace and name would.
        let planted = planted.into_iter().map(|ciphertext| EncryptedDataKey {
            provider_id: NS.into(),
            provider_info: NAME.as_bytes().to_vec(),
            ciphertext,
        });
        let planted = Planted(planted.collect());
        let keyring = MultiKeyring::new(Some(Arc::new(planted)), children).unwrap();
        Encryptor::new(&keyring)
            .suite(AlgorithmSuite::Aes256GcmIv12Tag16HkdfSha256)
            .dangerous_commitment_policy(CommitmentPolicy::ForbidEncryptAllowDecrypt)
            .max_encrypted_data_keys(u16::MAX)
            .encrypt(b"rsa")
            .unwrap()
    }

    fn decrypt(rsa: &RawRsaKeyring, message: &[u8]) -> Result<Vec<u8>, Error> {
        take_header_checks();
        Decryptor::new(rsa)
            .dangerous_commitment_policy(CommitmentPolicy::RequireEncryptAllowDecrypt)
            .max_encrypted_data_keys(u16::MAX)
            .decrypt(message)
    }

    #[test]
    fn ciphertexts_not_of_the_modulus_length_cost_no_header_check() {
        let rsa = rsa();
        let short = vec![vec![0x01u8]; 200];
        let err = decrypt(&rsa, &message(short.clone(), None)).unwrap_err();
        assert!(matches!(err, Error::DecryptionFailed), "{err:?}");
        assert_eq!(
            take_header_checks(),
            0,
            "no header check for a 1-byte ciphertext"
        );
        let pt = decrypt(&rsa, &message(short, Some(rsa.clone())));
        assert_eq!(pt.as_deref().ok(), Some(&b"rsa"[..]), "{pt:?}");
        // The good key's offer, then the message layer's own open for the content key.
        assert_eq!(take_header_checks(), 2, "only the good key is checked");
    }

    #[test]
    fn header_checks_per_message_are_capped() {
        let rsa = rsa();
        // c = 1 is of the modulus length but decrypts to no valid OAEP block.
        let mut one = vec![0u8; 256];
        one[255] = 1;
        let planted = vec![one; MAX_KEY_OFFERS + 8];
        let err = decrypt(&rsa, &message(planted, None)).unwrap_err();
        assert!(matches!(err, Error::DecryptionFailed), "{err:?}");
        assert_eq!(take_header_checks(), MAX_KEY_OFFERS);
    }
}
