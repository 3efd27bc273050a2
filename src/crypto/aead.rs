//! The AEAD backend: AES-GCM seal and open, in place or from one buffer into another, behind
//! one small type with two implementations (aws-lc-rs, and RustCrypto `aes-gcm` with the
//! `rustcrypto` feature).

use aws_lc_rs::aead::{
    Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_192_GCM, AES_256_GCM, AES_256_GCM_SIV,
};

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

/// An AES-GCM key (128, 192 or 256 bits) bound to a backend: the only place in the crate that
/// calls AES-GCM (`tests/aead_boundary.rs` holds that). Holds no key bytes of its own; each
/// backend clears its key schedule and GHASH key when the key is dropped (aws-lc-rs: AWS-LC's
/// `OPENSSL_free` cleanses the `EVP_AEAD_CTX`; RustCrypto: `aes-gcm`'s `zeroize` feature).
pub(crate) struct AeadKey {
    inner: Inner,
    #[cfg(feature = "nonce-guard")]
    fingerprint: guard::Fingerprint,
}

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
        let inner = match backend {
            AeadBackend::AwsLc => {
                let alg = match key.len() {
                    16 => &AES_128_GCM,
                    24 => &AES_192_GCM,
                    32 => &AES_256_GCM,
                    _ => return Err(AeadError),
                };
                let key = UnboundKey::new(alg, key).map_err(|_| AeadError)?;
                Inner::AwsLc(LessSafeKey::new(key))
            }
            #[cfg(feature = "rustcrypto")]
            AeadBackend::RustCrypto => Inner::RustCrypto(rustcrypto::Key::new(key)?),
        };
        Ok(AeadKey {
            inner,
            #[cfg(feature = "nonce-guard")]
            fingerprint: guard::fingerprint(b"AES-GCM", key),
        })
    }

    /// An AES-256-GCM-SIV key (RFC 8452; aws-lc-rs), for volume blocks sealed under random
    /// nonces: a repeated nonce there reveals only that two blocks were equal, never the key.
    /// `key` must be 32 bytes. Sealed and opened by the same calls as the GCM keys.
    #[cfg_attr(not(feature = "volume"), allow(dead_code))]
    pub(crate) fn new_gcm_siv(key: &[u8]) -> Result<Self, AeadError> {
        let unbound = UnboundKey::new(&AES_256_GCM_SIV, key).map_err(|_| AeadError)?;
        Ok(AeadKey {
            inner: Inner::AwsLc(LessSafeKey::new(unbound)),
            #[cfg(feature = "nonce-guard")]
            fingerprint: guard::fingerprint(b"AES-GCM-SIV", key),
        })
    }

    /// With `nonce-guard`: aborts the process if this key has sealed or opened `iv` before.
    fn before_seal(&self, iv: &[u8; IV_LEN]) {
        #[cfg(feature = "nonce-guard")]
        guard::record(&self.fingerprint, iv, guard::Use::Sealed);
        #[cfg(not(feature = "nonce-guard"))]
        let _ = iv;
    }

    /// With `nonce-guard`: remembers that this key opened `iv`, so that it never seals it.
    fn before_open(&self, iv: &[u8; IV_LEN]) {
        #[cfg(feature = "nonce-guard")]
        guard::record(&self.fingerprint, iv, guard::Use::Opened);
        #[cfg(not(feature = "nonce-guard"))]
        let _ = iv;
    }

    /// Encrypts `in_out` in place and returns the tag.
    pub(crate) fn seal_in_place(
        &self,
        iv: &[u8; IV_LEN],
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<[u8; TAG_LEN], AeadError> {
        self.before_seal(iv);
        match &self.inner {
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
        self.before_seal(iv);
        match &self.inner {
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
        self.open_detached(iv, aad, ct, tag, out)
    }

    /// Decrypts `ct` with its separate 16-byte `tag` into `out` (as long as `ct`). On failure
    /// `out` is zeroed, as by [`AeadKey::open_into`].
    pub(crate) fn open_detached(
        &self,
        iv: &[u8; IV_LEN],
        aad: &[u8],
        ct: &[u8],
        tag: &[u8],
        out: &mut [u8],
    ) -> Result<(), AeadError> {
        if ct.len() != out.len() || tag.len() != TAG_LEN {
            return Err(AeadError);
        }
        self.before_open(iv);
        let result = match &self.inner {
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
        self.before_open(iv);
        match &self.inner {
            Inner::AwsLc(key) => key
                .open_in_place(Nonce::assume_unique_for_key(*iv), Aad::from(aad), in_out)
                .map(|_| ())
                .map_err(|_| AeadError),
            #[cfg(feature = "rustcrypto")]
            Inner::RustCrypto(key) => key.open(iv, aad, in_out),
        }
    }
}

/// The `nonce-guard` checking mode: every (key, IV) pair this process seals or opens is
/// remembered, and sealing a pair seen before aborts. A second tag under one key and IV gives
/// away GHASH's key and with it every forgery, so a test that gets there must stop, not fail:
/// `abort`, not a panic that a test expecting `DecryptionFailed` from a worker could catch.
#[cfg(feature = "nonce-guard")]
mod guard {
    use std::collections::hash_map::{Entry, HashMap};
    use std::io::Write;
    use std::sync::{LazyLock, Mutex, PoisonError};

    use aws_lc_rs::hmac;
    use zeroize::Zeroizing;

    use super::IV_LEN;

    /// What the guard keeps of a key: HMAC-SHA-256 under a per-process random secret over the
    /// algorithm and the key, cut to 16 bytes. Keyed, so the table and the abort message say
    /// nothing about the key; never E_K(0), which is GHASH's key itself.
    pub(super) type Fingerprint = [u8; 16];

    #[derive(Debug, Clone, Copy)]
    pub(super) enum Use {
        Sealed,
        Opened,
    }

    static SECRET: LazyLock<hmac::Key> = LazyLock::new(|| {
        let mut secret = Zeroizing::new([0u8; 32]);
        if getrandom::fill(&mut *secret).is_err() {
            stop(format_args!("the system random number generator failed"));
        }
        hmac::Key::new(hmac::HMAC_SHA256, &*secret)
    });

    /// Every pair this process has used, with its first use.
    type Pairs = HashMap<(Fingerprint, [u8; IV_LEN]), Use>;

    static SEEN: LazyLock<Mutex<Pairs>> = LazyLock::new(Mutex::default);

    pub(super) fn fingerprint(algorithm: &[u8], key: &[u8]) -> Fingerprint {
        let mut mac = hmac::Context::with_key(&SECRET);
        // With the key length, names the algorithm: AES-128/192/256-GCM or AES-256-GCM-SIV.
        mac.update(algorithm);
        mac.update(&[key.len() as u8]);
        mac.update(key);
        mac.sign().as_ref()[..16]
            .try_into()
            .expect("HMAC-SHA-256 has 32 bytes")
    }

    /// Records `now` for the pair; a seal of a pair already sealed or opened aborts.
    pub(super) fn record(key: &Fingerprint, iv: &[u8; IV_LEN], now: Use) {
        let mut seen = SEEN.lock().unwrap_or_else(PoisonError::into_inner);
        match seen.entry((*key, *iv)) {
            Entry::Vacant(e) => {
                e.insert(now);
            }
            Entry::Occupied(e) => {
                if let Use::Sealed = now {
                    stop(format_args!(
                        "AES-GCM key {} would seal IV {} again: this process {} that pair \
                         before (two tags under one key and IV reveal the GHASH key)",
                        hex(key),
                        hex(iv),
                        match e.get() {
                            Use::Sealed => "sealed",
                            Use::Opened => "opened",
                        }
                    ));
                }
            }
        }
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn stop(why: std::fmt::Arguments<'_>) -> ! {
        // Straight to the stderr stream: `eprintln!` would go to libtest's capture buffer,
        // which dies with the process.
        let _ = writeln!(
            std::io::stderr(),
            "kms-envelope nonce-guard: {why}; aborting"
        );
        std::process::abort()
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

    /// A key of this test's own: under `nonce-guard`, two tests of this process sealing the
    /// same IV under one fixed key would abort it.
    fn random_key(len: usize) -> Vec<u8> {
        let mut key = vec![0u8; len];
        crate::crypto::random_bytes(&mut key).unwrap();
        key
    }

    #[test]
    fn backends_agree_and_detect_tampering() {
        // Each backend seals under an IV of its own and every backend opens the result: a tag
        // that verifies is the other backend computing the same bytes, and no pair is sealed twice.
        for key_len in [16, 24, 32] {
            let key = random_key(key_len);
            for (i, &sealer) in AeadBackend::all().iter().enumerate() {
                let iv = [i as u8; IV_LEN];
                let mut sealed = b"attack at dawn".to_vec();
                let tag = AeadKey::new(sealer, &key)
                    .unwrap()
                    .seal_in_place(&iv, b"aad", &mut sealed)
                    .unwrap();
                sealed.extend_from_slice(&tag);
                assert_ne!(&sealed[..14], b"attack at dawn");
                for &opener in AeadBackend::all() {
                    let k = AeadKey::new(opener, &key).unwrap();
                    let mut ok = sealed.clone();
                    k.open_in_place(&iv, b"aad", &mut ok).unwrap();
                    assert_eq!(&ok[..14], b"attack at dawn", "{sealer:?} -> {opener:?}");
                    let mut bad = sealed.clone();
                    bad[0] ^= 1;
                    assert_eq!(k.open_in_place(&iv, b"aad", &mut bad), Err(AeadError));
                    let mut other_aad = sealed.clone();
                    assert_eq!(k.open_in_place(&iv, b"aae", &mut other_aad), Err(AeadError));
                }
            }
        }
        assert!(AeadKey::new(AeadBackend::AwsLc, &[0; 20]).is_err());
    }

    #[test]
    fn out_of_place_matches_in_place_and_zeroes_on_failure() {
        let (iv_in, iv_out) = ([3u8; IV_LEN], [4u8; IV_LEN]);
        let pt: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        for &backend in AeadBackend::all() {
            let k = AeadKey::new(backend, &random_key(32)).unwrap();
            // Each way seals under its own IV and is opened the other way.
            let mut in_place = pt.clone();
            let tag = k.seal_in_place(&iv_in, b"aad", &mut in_place).unwrap();
            in_place.extend_from_slice(&tag);
            let mut sealed = vec![0u8; pt.len() + TAG_LEN];
            k.seal_into(&iv_out, b"aad", &pt, &mut sealed).unwrap();
            let mut out = vec![0u8; pt.len()];
            k.open_into(&iv_in, b"aad", &in_place, &mut out).unwrap();
            assert_eq!(out, pt, "{backend:?}");
            let mut opened = sealed.clone();
            k.open_in_place(&iv_out, b"aad", &mut opened).unwrap();
            assert_eq!(opened[..pt.len()], pt, "{backend:?}");
            sealed[500] ^= 1;
            let mut out = vec![0xAAu8; pt.len()];
            assert_eq!(
                k.open_into(&iv_out, b"aad", &sealed, &mut out),
                Err(AeadError)
            );
            assert!(out.iter().all(|&b| b == 0), "{backend:?} left bytes behind");
            assert!(k.seal_into(&[5; IV_LEN], b"", &pt, &mut [0u8; 10]).is_err());
            assert!(k.open_into(&iv_out, b"", &sealed, &mut [0u8; 10]).is_err());
        }
    }

    #[cfg(all(unix, feature = "nonce-guard"))]
    #[test]
    fn the_guard_aborts_when_a_pair_is_sealed_after_a_seal_or_an_open() {
        use crate::crypto::guard_child::{assert_aborted, assert_passed, case, run};
        const NAME: &str = "the_guard_aborts_when_a_pair_is_sealed_after_a_seal_or_an_open";
        let Some(case) = case() else {
            for (case, earlier) in [
                ("seal twice", "sealed"),
                ("same key bytes, other backend", "sealed"),
                ("seal after a failed open", "opened"),
            ] {
                assert_aborted(&run(module_path!(), NAME, case), earlier);
            }
            // The control: the same child, with fresh pairs only, runs to the end.
            assert_passed(&run(module_path!(), NAME, "fresh pairs"));
            return;
        };
        let bytes = random_key(32);
        let key = AeadKey::new(AeadBackend::AwsLc, &bytes).unwrap();
        let iv = [7u8; IV_LEN];
        match case.as_str() {
            "seal twice" => {
                key.seal_in_place(&iv, b"a", &mut []).unwrap();
                key.seal_into(&iv, b"b", &[], &mut [0; TAG_LEN]).unwrap();
            }
            "same key bytes, other backend" => {
                let backend = *AeadBackend::all().last().unwrap();
                let again = AeadKey::new(backend, &bytes).unwrap();
                key.seal_in_place(&iv, b"a", &mut []).unwrap();
                again.seal_in_place(&iv, b"b", &mut []).unwrap();
            }
            "seal after a failed open" => {
                // Opening counts even when the tag is wrong: the pair may be in use elsewhere.
                assert!(key.open_in_place(&iv, b"a", &mut [0; TAG_LEN]).is_err());
                key.seal_in_place(&iv, b"b", &mut []).unwrap();
            }
            "fresh pairs" => {
                let mut sealed = [0u8; TAG_LEN];
                sealed.copy_from_slice(&key.seal_in_place(&iv, b"a", &mut []).unwrap());
                key.open_in_place(&iv, b"a", &mut sealed).unwrap();
                key.open_in_place(&iv, b"a", &mut sealed.clone()).unwrap();
                key.seal_in_place(&[8; IV_LEN], b"a", &mut []).unwrap();
                let other = AeadKey::new(AeadBackend::AwsLc, &random_key(32)).unwrap();
                other.seal_in_place(&iv, b"a", &mut []).unwrap();
                let shorter = AeadKey::new(AeadBackend::AwsLc, &bytes[..16]).unwrap();
                shorter.seal_in_place(&iv, b"a", &mut []).unwrap();
            }
            _ => unreachable!("{case}"),
        }
    }
}
