//! Keyrings make, wrap and unwrap data keys. The message layer calls one once per message.
//!
//! Beside the trait: raw AES and RSA keyrings, a multi-keyring, the AWS KMS keyring (feature
//! `kms`) and a caching keyring over any of them (feature `cache`).
//!
//! The trait is async at its core so that the KMS keyring can await network calls; the sync
//! API drives it without needing a runtime of the caller's.

#[cfg(feature = "cache")]
mod caching;
#[cfg(feature = "kms")]
mod kms;
mod multi;
#[cfg(test)]
pub(crate) mod planted;
mod raw_aes;
mod raw_rsa;

#[cfg(feature = "cache")]
pub use caching::{CacheLimits, CachingKeyring, CachingKeyringBuilder, DataKeyCache};
#[cfg(feature = "kms")]
pub use kms::{
    load_aws_config, DiscoveryFilter, KmsArn, KmsArnProblem, KmsError, KmsErrorKind, KmsKeyring,
    KmsKeyringBuilder,
};
pub use multi::MultiKeyring;
pub use raw_aes::RawAesKeyring;
pub use raw_rsa::{RawRsaKeyring, RsaPadding};

use crate::format::EncryptedDataKey;
use crate::materials::{DecryptionMaterials, EncryptionMaterials};
use crate::Error;

/// Wraps data keys on encrypt and unwraps them on decrypt.
#[async_trait::async_trait]
pub trait Keyring: Send + Sync + std::fmt::Debug {
    /// Wraps the materials' data key (generating it first if there is none yet) and appends
    /// the wrapped copy to `materials.encrypted_data_keys`.
    ///
    /// # Errors
    /// When the key cannot be generated or wrapped.
    async fn on_encrypt(&self, materials: &mut EncryptionMaterials) -> Result<(), Error>;

    /// Unwraps the first of `edks` this keyring can and hands it to `materials`
    /// ([`DecryptionMaterials::set_data_key`]), which keeps it only if it opens the message.
    ///
    /// Only the message layer ([`Decryptor`](crate::Decryptor) and the readers) gives the
    /// materials the message's header to check each key against; then no answer says how one
    /// wrapped key failed. Materials made with [`DecryptionMaterials::new`] have no such check,
    /// so any key of the suite's length is kept: whoever calls `on_decrypt` that way (a wrapper
    /// keyring that makes fresh materials for its inner keyring, say) learns from success or
    /// failure whether a wrapped key unwrapped. For [`RawRsaKeyring`] with PKCS#1 v1.5 padding
    /// that is a two-outcome padding oracle (Bleichenbacher) if the caller lets a message's
    /// author see it: a wrapper must pass on the materials it was given.
    ///
    /// # Errors
    /// [`Error::NoUsableDataKey`] with one line per attempt when none can be unwrapped.
    async fn on_decrypt(
        &self,
        materials: &mut DecryptionMaterials,
        edks: &[EncryptedDataKey],
    ) -> Result<(), Error>;
}

#[async_trait::async_trait]
impl<K: Keyring + ?Sized> Keyring for std::sync::Arc<K> {
    async fn on_encrypt(&self, materials: &mut EncryptionMaterials) -> Result<(), Error> {
        (**self).on_encrypt(materials).await
    }
    async fn on_decrypt(
        &self,
        materials: &mut DecryptionMaterials,
        edks: &[EncryptedDataKey],
    ) -> Result<(), Error> {
        (**self).on_decrypt(materials, edks).await
    }
}

/// The namespace prefix that only the KMS keyrings may use.
pub(crate) const KMS_PROVIDER_ID: &str = "aws-kms";

/// Checks a raw keyring's namespace: non-empty, short enough, and not the KMS namespace.
pub(crate) fn check_namespace(namespace: &str, name: &str) -> Result<(), Error> {
    if namespace.starts_with(KMS_PROVIDER_ID) {
        return Err(Error::Misuse(format!(
            "key namespace {namespace:?} is reserved for KMS keyrings: choose another namespace"
        )));
    }
    if namespace.is_empty() || name.is_empty() {
        return Err(Error::Misuse(
            "a raw keyring needs a non-empty key namespace and key name".into(),
        ));
    }
    if namespace.len() > u16::MAX as usize || name.len() > u16::MAX as usize - 20 {
        return Err(Error::Misuse(
            "key namespace or name longer than 65,515 bytes".into(),
        ));
    }
    Ok(())
}
