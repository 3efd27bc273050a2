//! The raw AES keyring: wraps data keys with AES-GCM under a key the caller holds
//! (ESDK-compatible; FORMAT.md §10.2).

use zeroize::Zeroizing;

use super::{check_namespace, Keyring};
use crate::crypto::{random_bytes, AeadBackend, AeadKey};
use crate::format::{EncryptedDataKey, IV_LEN, TAG_LEN};
use crate::materials::{DataKey, DecryptionMaterials, EncryptionMaterials};
use crate::Error;

/// Wraps data keys under a 128-, 192- or 256-bit AES key, bound to the encryption context.
pub struct RawAesKeyring {
    namespace: String,
    name: String,
    key: AeadKey,
}

impl std::fmt::Debug for RawAesKeyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawAesKeyring")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl RawAesKeyring {
    /// A keyring for `wrapping_key` (16, 24 or 32 bytes), identified in messages by
    /// `namespace` (the provider ID) and `name`.
    ///
    /// # Errors
    /// [`Error::Misuse`] for another key length or a reserved namespace.
    pub fn new(namespace: &str, name: &str, wrapping_key: &[u8]) -> Result<Self, Error> {
        check_namespace(namespace, name)?;
        let key = AeadKey::new(AeadBackend::AwsLc, wrapping_key).map_err(|_| {
            Error::Misuse(format!(
                "a raw AES wrapping key must be 16, 24 or 32 bytes, not {}",
                wrapping_key.len()
            ))
        })?;
        Ok(RawAesKeyring {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            key,
        })
    }

    /// The provider info prefix: key name ‖ tag length in bits ‖ IV length.
    fn info_prefix(&self) -> Vec<u8> {
        let mut info = Vec::with_capacity(self.name.len() + 8 + IV_LEN);
        info.extend_from_slice(self.name.as_bytes());
        info.extend_from_slice(&((TAG_LEN * 8) as u32).to_be_bytes());
        info.extend_from_slice(&(IV_LEN as u32).to_be_bytes());
        info
    }

    fn unwrap_key(&self, edk: &EncryptedDataKey, aad: &[u8]) -> Option<DataKey> {
        let prefix = self.info_prefix();
        if edk.provider_id != self.namespace
            || edk.provider_info.len() != prefix.len() + IV_LEN
            || !edk.provider_info.starts_with(&prefix)
        {
            return None;
        }
        let iv: [u8; IV_LEN] = edk.provider_info[prefix.len()..].try_into().ok()?;
        let mut buf = Zeroizing::new(edk.ciphertext.clone());
        self.key.open_in_place(&iv, aad, &mut buf).ok()?;
        let len = buf.len() - TAG_LEN;
        buf.truncate(len);
        Some(DataKey::new(buf))
    }
}

#[async_trait::async_trait]
impl Keyring for RawAesKeyring {
    async fn on_encrypt(&self, materials: &mut EncryptionMaterials) -> Result<(), Error> {
        let aad = materials.context.serialize()?;
        let key = materials.data_key_or_generate()?;
        let mut iv = [0u8; IV_LEN];
        random_bytes(&mut iv)?;
        let mut ciphertext = key.as_bytes().to_vec();
        let tag = self
            .key
            .seal_in_place(&iv, &aad, &mut ciphertext)
            .map_err(|_| Error::Crypto("AES-GCM key wrapping failed"))?;
        ciphertext.extend_from_slice(&tag);
        let mut provider_info = self.info_prefix();
        provider_info.extend_from_slice(&iv);
        materials.encrypted_data_keys.push(EncryptedDataKey {
            provider_id: self.namespace.clone(),
            provider_info,
            ciphertext,
        });
        Ok(())
    }

    async fn on_decrypt(
        &self,
        materials: &mut DecryptionMaterials,
        edks: &[EncryptedDataKey],
    ) -> Result<(), Error> {
        let aad = materials.context.serialize()?;
        let mut tried = 0;
        for edk in edks {
            if edk.provider_id != self.namespace {
                continue;
            }
            tried += 1;
            // AES-GCM authenticates the wrapped key, so a failure here is no oracle; a key that
            // does unwrap but does not fit the message is refused like any other, and the
            // next wrapped key is tried.
            if let Some(key) = self.unwrap_key(edk, &aad) {
                if materials.offer(key, subtle::Choice::from(1)) {
                    return Ok(());
                }
            }
        }
        Err(Error::NoUsableDataKey(vec![Error::Keyring(format!(
            "raw AES key {}/{}: {}",
            self.namespace,
            self.name,
            if tried == 0 {
                "the message has no data key wrapped under it".to_owned()
            } else {
                format!("{tried} candidate(s) did not unwrap (wrong key or encryption context)")
            }
        ))]))
    }
}
