//! Cryptographic primitives: the AEAD backend, key derivation and commitment, signatures.
//! Nothing here parses bytes or talks to a keyring.

mod aead;
pub(crate) mod kdf;
pub(crate) mod signature;

pub use aead::AeadBackend;
pub(crate) use aead::AeadKey;

/// Fills `buf` from the operating system's CSPRNG (through AWS-LC).
pub(crate) fn random_bytes(buf: &mut [u8]) -> Result<(), crate::Error> {
    aws_lc_rs::rand::fill(buf)
        .map_err(|_| crate::Error::Crypto("the system random number generator failed"))
}
