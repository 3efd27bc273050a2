//! ECDSA message signatures for signed suites (FORMAT.md §7), hashed as the bytes stream by.

use aws_lc_rs::digest::{self, Context};
use aws_lc_rs::encoding::{AsBigEndian, EcPublicKeyCompressedBin};
use aws_lc_rs::signature::{
    EcdsaKeyPair, KeyPair, ParsedPublicKey, ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING,
    ECDSA_P384_SHA384_ASN1, ECDSA_P384_SHA384_ASN1_SIGNING,
};
use base64::Engine;

use crate::format::SignatureAlgorithm;

/// A signing or verification step failed. Carries no detail on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SignatureError;

fn digest_alg(alg: SignatureAlgorithm) -> &'static digest::Algorithm {
    match alg {
        SignatureAlgorithm::EcdsaP256Sha256 => &digest::SHA256,
        SignatureAlgorithm::EcdsaP384Sha384 => &digest::SHA384,
    }
}

/// Signs one message with a fresh ephemeral key pair.
pub(crate) struct Signer {
    alg: SignatureAlgorithm,
    key: EcdsaKeyPair,
    hash: Context,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A new key pair, and its public half as the `aws-crypto-public-key` context value
    /// (base64 of the compressed SEC1 point).
    pub(crate) fn generate(alg: SignatureAlgorithm) -> Result<(Self, String), SignatureError> {
        let signing = match alg {
            SignatureAlgorithm::EcdsaP256Sha256 => &ECDSA_P256_SHA256_ASN1_SIGNING,
            SignatureAlgorithm::EcdsaP384Sha384 => &ECDSA_P384_SHA384_ASN1_SIGNING,
        };
        let key = EcdsaKeyPair::generate(signing).map_err(|_| SignatureError)?;
        let point: EcPublicKeyCompressedBin<'_> =
            key.public_key().as_be_bytes().map_err(|_| SignatureError)?;
        let public = base64::engine::general_purpose::STANDARD.encode(point.as_ref());
        let hash = Context::new(digest_alg(alg));
        Ok((Signer { alg, key, hash }, public))
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        self.hash.update(bytes);
    }

    /// The DER signature over everything passed to `update`, at the fixed length the official
    /// SDKs emit (71 or 103 bytes) so that message sizes match theirs: about half of all
    /// signatures have that length, so this re-signs a few times at most.
    pub(crate) fn finish(self) -> Result<Vec<u8>, SignatureError> {
        let digest = self.hash.finish();
        let want = self.alg.fixed_signature_len();
        for _ in 0..128 {
            let sig = self.key.sign_digest(&digest).map_err(|_| SignatureError)?;
            if sig.as_ref().len() == want {
                return Ok(sig.as_ref().to_vec());
            }
        }
        Err(SignatureError)
    }
}

/// Verifies one message's signature against the key from its encryption context.
pub(crate) struct Verifier {
    key: ParsedPublicKey,
    hash: Context,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier(..)")
    }
}

impl Verifier {
    /// Parses the `aws-crypto-public-key` value.
    pub(crate) fn new(alg: SignatureAlgorithm, public_b64: &str) -> Result<Self, SignatureError> {
        let point = base64::engine::general_purpose::STANDARD
            .decode(public_b64)
            .map_err(|_| SignatureError)?;
        let verify = match alg {
            SignatureAlgorithm::EcdsaP256Sha256 => &ECDSA_P256_SHA256_ASN1,
            SignatureAlgorithm::EcdsaP384Sha384 => &ECDSA_P384_SHA384_ASN1,
        };
        let key = ParsedPublicKey::new(verify, point).map_err(|_| SignatureError)?;
        Ok(Verifier {
            key,
            hash: Context::new(digest_alg(alg)),
        })
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        self.hash.update(bytes);
    }

    /// Checks `signature` (DER) over everything passed to `update`.
    pub(crate) fn verify(self, signature: &[u8]) -> Result<(), SignatureError> {
        let digest = self.hash.finish();
        self.key
            .verify_digest_sig(&digest, signature)
            .map_err(|_| SignatureError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_then_verify_with_compressed_key() {
        for alg in [
            SignatureAlgorithm::EcdsaP256Sha256,
            SignatureAlgorithm::EcdsaP384Sha384,
        ] {
            let (mut signer, public) = Signer::generate(alg).unwrap();
            assert_eq!(
                public.len(),
                if alg == SignatureAlgorithm::EcdsaP256Sha256 {
                    44
                } else {
                    68
                }
            );
            signer.update(b"header");
            signer.update(b"body");
            let sig = signer.finish().unwrap();
            assert_eq!(sig.len(), alg.fixed_signature_len());
            let mut v = Verifier::new(alg, &public).unwrap();
            v.update(b"headerbody");
            v.verify(&sig).unwrap();
            let mut v = Verifier::new(alg, &public).unwrap();
            v.update(b"headerbodY");
            assert!(v.verify(&sig).is_err());
        }
        assert!(Verifier::new(SignatureAlgorithm::EcdsaP384Sha384, "not base64!").is_err());
    }
}
