//! Key derivation (FORMAT.md §9): the content key, and the key commitment for 0x0478/0x0578.

use hkdf::hmac::EagerHash;
use hkdf::Hkdf;
use sha2::{Sha256, Sha384, Sha512};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use crate::format::{AlgorithmSuite, Kdf, COMMITMENT_LEN};

/// The per-message keys derived from a data key.
pub(crate) struct DerivedKeys {
    /// The AES key that seals the header tag and every frame.
    pub(crate) content_key: Zeroizing<Vec<u8>>,
    /// The key commitment written in (or checked against) a v2 header.
    pub(crate) commitment: Option<[u8; COMMITMENT_LEN]>,
}

// HKDF keeps the PRK as HMAC's inner and outer hash states, which clear themselves on drop only
// with sha2's `zeroize` feature (Cargo.toml): without it, this does not compile.
const _: () = {
    fn zeroized_on_drop<T: zeroize::ZeroizeOnDrop>() {}
    let _ = zeroized_on_drop::<<Sha256 as EagerHash>::Core>;
    let _ = zeroized_on_drop::<<Sha384 as EagerHash>::Core>;
    let _ = zeroized_on_drop::<<Sha512 as EagerHash>::Core>;
};

/// HKDF-Extract. `Hkdf::new` would drop the PRK it returns without clearing it.
fn extract<H: EagerHash>(salt: Option<&[u8]>, ikm: &[u8]) -> Hkdf<H> {
    let (mut prk, hkdf) = Hkdf::<H>::extract(salt, ikm);
    prk.as_mut_slice().zeroize();
    hkdf
}

/// Derives the content key (and commitment) for `suite` from `data_key` and the message ID.
/// `data_key` has the suite's key length; the caller has checked it.
pub(crate) fn derive(suite: AlgorithmSuite, data_key: &[u8], message_id: &[u8]) -> DerivedKeys {
    let key_len = suite.key_len();
    let mut content_key = Zeroizing::new(vec![0u8; key_len]);
    let mut info = Vec::with_capacity(2 + 32);
    info.extend_from_slice(&suite.id().to_be_bytes());
    // Every expand below asks for at most 32 bytes, far under HKDF's 255-block limit.
    let commitment = match suite.kdf() {
        Kdf::Identity => {
            content_key.copy_from_slice(data_key);
            None
        }
        Kdf::HkdfSha256 => {
            info.extend_from_slice(message_id);
            let h = extract::<Sha256>(None, data_key);
            h.expand(&info, &mut content_key)
                .expect("short HKDF output");
            None
        }
        Kdf::HkdfSha384 => {
            info.extend_from_slice(message_id);
            let h = extract::<Sha384>(None, data_key);
            h.expand(&info, &mut content_key)
                .expect("short HKDF output");
            None
        }
        Kdf::HkdfSha512Commit => {
            info.extend_from_slice(b"DERIVEKEY");
            let h = extract::<Sha512>(Some(message_id), data_key);
            h.expand(&info, &mut content_key)
                .expect("short HKDF output");
            let mut commit = [0u8; COMMITMENT_LEN];
            h.expand(b"COMMITKEY", &mut commit)
                .expect("short HKDF output");
            Some(commit)
        }
    };
    DerivedKeys {
        content_key,
        commitment,
    }
}

/// HKDF-SHA-256 of `ikm` with `salt` and `info`, 32 bytes (the volume's block, header and
/// journal keys).
#[cfg(feature = "volume")]
pub(crate) fn hkdf_sha256(ikm: &[u8], salt: &[u8], info: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut out = Zeroizing::new([0u8; 32]);
    extract::<Sha256>(Some(salt), ikm)
        .expand(info, &mut *out)
        .expect("short HKDF output");
    out
}

/// Compares two commitments in constant time.
pub(crate) fn commitment_matches(a: &[u8; COMMITMENT_LEN], b: &[u8; COMMITMENT_LEN]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committing_derivation_separates_keys_and_commitment() {
        let suite = AlgorithmSuite::Aes256GcmHkdfSha512CommitKey;
        let a = derive(suite, &[1; 32], &[2; 32]);
        let b = derive(suite, &[1; 32], &[3; 32]);
        assert_ne!(*a.content_key, *b.content_key);
        assert_ne!(a.commitment, b.commitment);
        assert_ne!(&a.content_key[..], &a.commitment.unwrap()[..]);
        assert!(commitment_matches(
            &a.commitment.unwrap(),
            &a.commitment.unwrap()
        ));
        assert!(!commitment_matches(
            &a.commitment.unwrap(),
            &b.commitment.unwrap()
        ));
    }

    #[test]
    fn identity_and_lengths() {
        let id = derive(AlgorithmSuite::Aes192GcmIv12Tag16NoKdf, &[7; 24], &[0; 16]);
        assert_eq!(*id.content_key, vec![7; 24]);
        let h = derive(
            AlgorithmSuite::Aes128GcmIv12Tag16HkdfSha256,
            &[7; 16],
            &[0; 16],
        );
        assert_eq!(h.content_key.len(), 16);
        assert!(h.commitment.is_none());
    }
}
