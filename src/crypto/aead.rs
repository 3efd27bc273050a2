//! The AEAD backend: AES-GCM seal and open, in place or from one buffer into another, behind
//! one small type with two implementations (aws-lc-rs, and RustCrypto `aes-gcm` with the
//! `rustcrypto` feature).

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_192_GCM, AES_256_GCM};

use crate::format::{IV_LEN, TAG_LEN};

/// Which AES-GCM implementation seals and opens the frames. Both produce identical bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AeadBackend {
    /// aws-lc-rs (AWS-LC, assembly AES-GCM): the default and the fastest.
    #[default]
    AwsLc,
    /// RustCrypto `aes-gcm` (pure Rust).
    #[cfg(feature = "rustcrypto")]
    RustCrypto,
}

impl AeadBackend {
    /// Every backend compiled in.
    pub fn all() -> &'static [AeadBackend] {
        &[
            AeadBackend::AwsLc,
            #[cfg(feature = "rustcrypto")]
            AeadBackend::RustCrypto,
        ]
    }
}

/// Authentication failed. Carries no detail on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AeadError;

/// An AES-GCM key (128, 192 or 256 bits) bound to a backend. Holds no key bytes of its own;
/// each backend clears its key schedule and GHASH key when the key is dropped (aws-lc-rs:
/// AWS-LC's `OPENSSL_free` cleanses the `EVP_AEAD_CTX`; RustCrypto: `aes-gcm`'s `zeroize`
/// feature).
pub(crate) struct AeadKey(Inner);

enum Inner {
    AwsLc(LessSafeKey),
    #[cfg(feature = "rustcrypto")]
    RustCrypto(rustcrypto::Key),
}

impl std::fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AeadKey(..)")
    }
}

impl AeadKey {
    /// A key for `backend`; `key` must be 16, 24 or 32 bytes.
    pub(crate) fn new(backend: AeadBackend, key: &[u8]) -> Result<Self, AeadError> {
        match backend {
            AeadBackend::AwsLc => {
                let alg = match key.len() {
                    16 => &AES_128_GCM,
                    24 => &AES_192_GCM,
                    32 => &AES_256_GCM,
                    _ => return Err(AeadError),
                };
                let key = UnboundKey::new(alg, key).map_err(|_| AeadError)?;
                Ok(AeadKey(Inner::AwsLc(LessSafeKey::new(key))))
            }
            #[cfg(feature = "rustcrypto")]
            AeadBackend::RustCrypto => Ok(AeadKey(Inner::RustCrypto(rustcrypto::Key::new(key)?))),
        }
    }

    /// Encrypts `in_out` in place and returns the tag.
    pub(crate) fn seal_in_place(
        &self,
        iv: &[u8; IV_LEN],
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<[u8; TAG_LEN], AeadError> {
        match &self.0 {
            Inner::AwsLc(key) => {
                let tag = key
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(*iv),
                        Aad::from(aad),
                        in_out,
                    )
                    .map_err(|_| AeadError)?;
                let mut out = [0u8; TAG_LEN];
                out.copy_from_slice(tag.as_ref());
                Ok(out)
            }
            #[cfg(feature = "rustcrypto")]
            Inner::RustCrypto(key) => key.seal(iv, aad, in_out),
        }
    }

    /// Encrypts `plaintext` into `out`, which must be `plaintext.len() + TAG_LEN` bytes: the
    /// ciphertext, then the tag. One pass over the data, where a copy and an in-place seal
    /// would take two.
    pub(crate) fn seal_into(
        &self,
        iv: &[u8; IV_LEN],
        aad: &[u8],
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<(), AeadError> {
        if out.len() != plaintext.len() + TAG_LEN {
            return Err(AeadError);
        }
        match &self.0 {
            Inner::AwsLc(key) => key
                .seal_in_place_scatter(
                    Nonce::assume_unique_for_key(*iv),
                    Aad::from(aad),
                    &mut [],
                    plaintext,
                    out,
                )
                .map_err(|_| AeadError),
            #[cfg(feature = "rustcrypto")]
            Inner::RustCrypto(key) => {
                let (ct, tag) = out.split_at_mut(plaintext.len());
                tag.copy_from_slice(&key.seal_into(iv, aad, plaintext, ct)?);
                Ok(())
            }
        }
    }

    /// Decrypts `sealed` (ciphertext followed by its 16-byte tag) into `out`, which must be
    /// `sealed.len() - TAG_LEN` bytes. On failure `out` is zeroed: whatever a backend wrote
    /// there before the tag check failed is never left for the caller to see.
    pub(crate) fn open_into(
        &self,
        iv: &[u8; IV_LEN],
        aad: &[u8],
        sealed: &[u8],
        out: &mut [u8],
    ) -> Result<(), AeadError> {
        if sealed.len() != out.len() + TAG_LEN {
            return Err(AeadError);
        }
        let (ct, tag) = sealed.split_at(out.len());
        let result = match &self.0 {
            Inner::AwsLc(key) => key
                .open_separate_gather(
                    Nonce::assume_unique_for_key(*iv),
                    Aad::from(aad),
                    ct,
                    tag,
                    out,
                )
                .map_err(|_| AeadError),
            #[cfg(feature = "rustcrypto")]
            Inner::RustCrypto(key) => key.open_into(iv, aad, ct, tag, out),
        };
        if result.is_err() {
            out.fill(0);
        }
        result
    }

    /// Decrypts `in_out` (ciphertext followed by its 16-byte tag) in place. On success the
    /// plaintext is the first `in_out.len() - 16` bytes; on failure their content is unspecified
    /// and must not be released.
    pub(crate) fn open_in_place(
        &self,
        iv: &[u8; IV_LEN],
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<(), AeadError> {
        if in_out.len() < TAG_LEN {
            return Err(AeadError);
        }
        match &self.0 {
            Inner::AwsLc(key) => key
                .open_in_place(Nonce::assume_unique_for_key(*iv), Aad::from(aad), in_out)
                .map(|_| ())
                .map_err(|_| AeadError),
            #[cfg(feature = "rustcrypto")]
            Inner::RustCrypto(key) => key.open(iv, aad, in_out),
        }
    }
}

#[cfg(feature = "rustcrypto")]
mod rustcrypto {
    use aes_gcm::aead::inout::InOutBuf;
    use aes_gcm::aead::AeadInOut;
    use aes_gcm::aes::Aes192;
    use aes_gcm::{Aes128Gcm, Aes256Gcm, AesGcm, KeyInit};

    use super::{AeadError, IV_LEN, TAG_LEN};

    type Aes192Gcm = AesGcm<Aes192, aes_gcm::aead::consts::U12>;

    // The round keys and the GHASH key are cleared on drop only with `aes-gcm`'s `zeroize`
    // feature (Cargo.toml): without it, this does not compile.
    const _: () = {
        fn zeroized_on_drop<T: zeroize::ZeroizeOnDrop>() {}
        let _ = zeroized_on_drop::<Aes128Gcm>;
        let _ = zeroized_on_drop::<Aes192Gcm>;
        let _ = zeroized_on_drop::<Aes256Gcm>;
    };

    // Boxed: the key schedules are large and this keeps `AeadKey` small to move.
    pub(super) enum Key {
        Aes128(Box<Aes128Gcm>),
        Aes192(Box<Aes192Gcm>),
        Aes256(Box<Aes256Gcm>),
    }

    macro_rules! each {
        ($key:expr, $k:ident => $body:expr) => {
            match $key {
                Key::Aes128($k) => $body,
                Key::Aes192($k) => $body,
                Key::Aes256($k) => $body,
            }
        };
    }

    impl Key {
        pub(super) fn new(key: &[u8]) -> Result<Self, AeadError> {
            Ok(match key.len() {
                16 => Key::Aes128(Box::new(
                    Aes128Gcm::new_from_slice(key).map_err(|_| AeadError)?,
                )),
                24 => Key::Aes192(Box::new(
                    Aes192Gcm::new_from_slice(key).map_err(|_| AeadError)?,
                )),
                32 => Key::Aes256(Box::new(
                    Aes256Gcm::new_from_slice(key).map_err(|_| AeadError)?,
                )),
                _ => return Err(AeadError),
            })
        }

        pub(super) fn seal(
            &self,
            iv: &[u8; IV_LEN],
            aad: &[u8],
            in_out: &mut [u8],
        ) -> Result<[u8; TAG_LEN], AeadError> {
            let tag = each!(self, k => k
                .encrypt_inout_detached(iv.into(), aad, in_out.into())
                .map_err(|_| AeadError)?);
            Ok(tag.into())
        }

        pub(super) fn seal_into(
            &self,
            iv: &[u8; IV_LEN],
            aad: &[u8],
            plaintext: &[u8],
            out: &mut [u8],
        ) -> Result<[u8; TAG_LEN], AeadError> {
            let buf = InOutBuf::new(plaintext, out).map_err(|_| AeadError)?;
            let tag = each!(self, k => k
                .encrypt_inout_detached(iv.into(), aad, buf)
                .map_err(|_| AeadError)?);
            Ok(tag.into())
        }

        pub(super) fn open_into(
            &self,
            iv: &[u8; IV_LEN],
            aad: &[u8],
            ct: &[u8],
            tag: &[u8],
            out: &mut [u8],
        ) -> Result<(), AeadError> {
            let tag: &[u8; TAG_LEN] = tag.try_into().map_err(|_| AeadError)?;
            let buf = InOutBuf::new(ct, out).map_err(|_| AeadError)?;
            each!(self, k => k
                .decrypt_inout_detached(iv.into(), aad, buf, tag.into())
                .map_err(|_| AeadError))
        }

        pub(super) fn open(
            &self,
            iv: &[u8; IV_LEN],
            aad: &[u8],
            in_out: &mut [u8],
        ) -> Result<(), AeadError> {
            let (ct, tag) = in_out.split_at_mut(in_out.len() - TAG_LEN);
            let tag: &[u8; TAG_LEN] = (&*tag).try_into().map_err(|_| AeadError)?;
            each!(self, k => k
                .decrypt_inout_detached(iv.into(), aad, ct.into(), tag.into())
                .map_err(|_| AeadError))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_agree_and_detect_tampering() {
        for key_len in [16, 24, 32] {
            let key = vec![0x42u8; key_len];
            let iv = [9u8; IV_LEN];
            let mut outputs = Vec::new();
            for &backend in AeadBackend::all() {
                let k = AeadKey::new(backend, &key).unwrap();
                let mut buf = b"attack at dawn".to_vec();
                let tag = k.seal_in_place(&iv, b"aad", &mut buf).unwrap();
                buf.extend_from_slice(&tag);
                outputs.push(buf.clone());
                let mut ok = buf.clone();
                k.open_in_place(&iv, b"aad", &mut ok).unwrap();
                assert_eq!(&ok[..14], b"attack at dawn");
                let mut bad = buf.clone();
                bad[0] ^= 1;
                assert_eq!(k.open_in_place(&iv, b"aad", &mut bad), Err(AeadError));
                assert_eq!(
                    k.open_in_place(&iv, b"aae", &mut buf.clone()),
                    Err(AeadError)
                );
            }
            assert!(outputs.windows(2).all(|w| w[0] == w[1]));
        }
        assert!(AeadKey::new(AeadBackend::AwsLc, &[0; 20]).is_err());
    }

    #[test]
    fn out_of_place_matches_in_place_and_zeroes_on_failure() {
        let iv = [3u8; IV_LEN];
        let pt: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        for &backend in AeadBackend::all() {
            let k = AeadKey::new(backend, &[0x17; 32]).unwrap();
            let mut in_place = pt.clone();
            let tag = k.seal_in_place(&iv, b"aad", &mut in_place).unwrap();
            in_place.extend_from_slice(&tag);
            let mut sealed = vec![0u8; pt.len() + TAG_LEN];
            k.seal_into(&iv, b"aad", &pt, &mut sealed).unwrap();
            assert_eq!(sealed, in_place, "{backend:?}");
            let mut out = vec![0u8; pt.len()];
            k.open_into(&iv, b"aad", &sealed, &mut out).unwrap();
            assert_eq!(out, pt);
            sealed[500] ^= 1;
            let mut out = vec![0xAAu8; pt.len()];
            assert_eq!(k.open_into(&iv, b"aad", &sealed, &mut out), Err(AeadError));
            assert!(out.iter().all(|&b| b == 0), "{backend:?} left bytes behind");
            assert!(k.seal_into(&iv, b"", &pt, &mut [0u8; 10]).is_err());
            assert!(k.open_into(&iv, b"", &sealed, &mut [0u8; 10]).is_err());
        }
    }
}
