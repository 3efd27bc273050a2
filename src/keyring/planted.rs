//! For unit tests: a keyring that plants wrapped keys of the test's choosing in a message, as
//! an attacker (or a keyring wrapping under some other key) would. It makes the data key when
//! it comes first, so the header authenticates with the planted keys in place; it never
//! unwraps. (`tests/support/keyrings.rs` is its twin for the integration tests.)

use super::Keyring;
use crate::format::EncryptedDataKey;
use crate::materials::{DecryptionMaterials, EncryptionMaterials};
use crate::Error;

#[derive(Debug)]
pub(crate) struct Planted(pub(crate) Vec<EncryptedDataKey>);

#[async_trait::async_trait]
impl Keyring for Planted {
    async fn on_encrypt(&self, m: &mut EncryptionMaterials) -> Result<(), Error> {
        m.data_key_or_generate()?;
        m.encrypted_data_keys.extend(self.0.iter().cloned());
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
