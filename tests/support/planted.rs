//! A keyring that plants a wrapped key of the test's choosing in a message: it makes the data key
//! when it comes first and adds its wrapped key beside the real ones, so that the header
//! authenticates with that key in place, as a message written by an attacker (or by a keyring
//! that wraps under some other key) would. It never unwraps.
#![allow(dead_code)]

use kms_envelope::format::EncryptedDataKey;
use kms_envelope::materials::{DecryptionMaterials, EncryptionMaterials};
use kms_envelope::{Error, Keyring};

#[derive(Debug)]
pub struct Planted(pub EncryptedDataKey);

#[async_trait::async_trait]
impl Keyring for Planted {
    async fn on_encrypt(&self, m: &mut EncryptionMaterials) -> Result<(), Error> {
        m.data_key_or_generate()?;
        m.encrypted_data_keys.push(self.0.clone());
        Ok(())
    }
    async fn on_decrypt(
        &self,
        _: &mut DecryptionMaterials,
        _: &[EncryptedDataKey],
    ) -> Result<(), Error> {
        Err(Error::NoUsableDataKey(Vec::new()))
    }
}
