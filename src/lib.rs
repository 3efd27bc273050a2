//! Envelope encryption under AWS KMS keys, in the AWS Encryption SDK message format.
//!
//! A keyring makes a fresh data key per message and stores it wrapped in the message header;
//! the data is encrypted locally with AES-GCM in authenticated frames. Messages are readable by
//! every official AWS Encryption SDK, and theirs by this crate.
//!
//! # Simple tier
//!
//! ```
//! use kms_envelope::{decrypt, encrypt, EncryptionContext, RawAesKeyring};
//!
//! let keyring = RawAesKeyring::new("backups", "wrapping-key-1", &[0x42; 32])?;
//! let context = EncryptionContext::new().with("volume", "vol-0abc");
//! let message = encrypt(&keyring, &context, b"disk block")?;
//! assert_eq!(decrypt(&keyring, &context, &message)?, b"disk block");
//! # Ok::<(), kms_envelope::Error>(())
//! ```
//!
//! # Full tier: streaming
//!
//! ```
//! use std::io::{Read, Write};
//! use kms_envelope::{AlgorithmSuite, Decryptor, Encryptor, EncryptionContext, RawAesKeyring};
//!
//! let keyring = RawAesKeyring::new("backups", "wrapping-key-1", &[0x42; 32])?;
//! let context = EncryptionContext::new().with("db", "orders");
//! let mut writer = Encryptor::new(&keyring)
//!     .context(context.clone())
//!     .suite(AlgorithmSuite::Aes256GcmHkdfSha512CommitKeyEcdsaP384)
//!     .frame_length(4096)
//!     .writer(Vec::new())?;
//! writer.write_all(&vec![7u8; 10_000])?;
//! let message = writer.finish()?;
//!
//! let mut reader = Decryptor::new(&keyring).expected_context(context).reader(&message[..])?;
//! let mut plaintext = Vec::new();
//! reader.read_to_end(&mut plaintext)?;
//! assert_eq!(plaintext, vec![7u8; 10_000]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Keyrings and errors
//!
//! The keyrings are in [`keyring`] and at the root: raw AES and RSA keys, a multi-keyring,
//! AWS KMS (`KmsKeyring::builder`, feature `kms`) and a data-key cache over any of them
//! (`CachingKeyring::builder`, feature `cache`). Every fallible call returns [`Error`];
//! [`Error::kind`] sorts it into an [`ErrorKind`] (a malformed message, a failed
//! authentication, a named [`Limit`], API misuse, KMS, ...) for callers that react by kind.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

#[cfg(feature = "kms")]
pub mod admin;
pub mod crypto;
mod error;
pub mod format;
pub mod keyring;
pub mod materials;
pub mod stream;
#[cfg(feature = "tree")]
pub mod tree;
#[cfg(feature = "volume")]
pub mod volume;

pub use crypto::AeadBackend;
#[cfg(feature = "volume")]
pub use error::VolumeError;
pub use error::{Error, ErrorKind, Limit, Result};
pub use format::{AlgorithmSuite, CommitmentPolicy, EncryptionContext, HeaderLimits};
#[cfg(feature = "kms")]
pub use keyring::{
    load_aws_config, DiscoveryFilter, KmsError, KmsErrorKind, KmsKeyring, KmsKeyringBuilder,
};
#[cfg(feature = "cache")]
pub use keyring::{CacheLimits, CachingKeyring, CachingKeyringBuilder, DataKeyCache};
pub use keyring::{Keyring, MultiKeyring, RawAesKeyring, RawRsaKeyring, RsaPadding};
pub use materials::DataKey;
#[cfg(feature = "tokio")]
pub use stream::AsyncSeekableReader;
pub use stream::{DecryptingReader, Decryptor, EncryptingWriter, Encryptor};
pub use stream::{ReadAt, Rewrap, Rewrapped, SeekableReader, WrappingKey};

/// Encrypts `plaintext` under `keyring` with `context`, with the default suite (0x0478) and
/// frame length.
///
/// # Errors
/// A reserved context key, or a keyring failure.
pub fn encrypt(
    keyring: &dyn Keyring,
    context: &EncryptionContext,
    plaintext: &[u8],
) -> Result<Vec<u8>> {
    Encryptor::new(keyring)
        .context(context.clone())
        .encrypt(plaintext)
}

/// Decrypts `message` with `keyring`, requiring every pair of `context` to match the
/// message's encryption context. Committing suites only; see [`Decryptor`] for legacy ones.
///
/// # Errors
/// A malformed, altered or truncated message, a context mismatch, or no usable key.
pub fn decrypt(
    keyring: &dyn Keyring,
    context: &EncryptionContext,
    message: &[u8],
) -> Result<Vec<u8>> {
    Decryptor::new(keyring)
        .expected_context(context.clone())
        .decrypt(message)
}
