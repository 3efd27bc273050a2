//! Cryptographic primitives: the AEAD backend, key derivation and commitment, signatures.
//! Nothing here parses bytes or talks to a keyring.

mod aead;
pub(crate) mod kdf;
pub(crate) mod signature;

pub use aead::AeadBackend;
pub(crate) use aead::AeadKey;

/// Fills `buf` from the operating system's CSPRNG (`getrandom(2)` on Linux). Not through
/// AWS-LC's generator: its first use in a process collects CPU-jitter entropy for ~35 ms (90%
/// of the time a command-line encryption of a small file took), and the kernel's generator is
/// the same source AWS-LC seeds from.
pub(crate) fn random_bytes(buf: &mut [u8]) -> Result<(), crate::Error> {
    getrandom::fill(buf)
        .map_err(|_| crate::Error::Crypto("the system random number generator failed"))
}
