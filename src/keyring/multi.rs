//! The multi-keyring: one generator and any number of children, each adding a wrapped copy of
//! the same data key; on decrypt, each is tried in turn.

use std::sync::Arc;

use super::Keyring;
use crate::format::EncryptedDataKey;
use crate::materials::{DecryptionMaterials, EncryptionMaterials};
use crate::Error;

/// Combines keyrings: the generator makes the data key, every child wraps it too, so any one
/// of them can decrypt.
#[derive(Debug, Clone)]
pub struct MultiKeyring {
    generator: Option<Arc<dyn Keyring>>,
    children: Vec<Arc<dyn Keyring>>,
}

impl MultiKeyring {
    /// A multi-keyring. Without a generator it can decrypt, and encrypt only when an outer
    /// keyring has already made the data key.
    ///
    /// # Errors
    /// [`Error::Misuse`] when it holds no keyring at all.
    pub fn new(
        generator: Option<Arc<dyn Keyring>>,
        children: Vec<Arc<dyn Keyring>>,
    ) -> Result<Self, Error> {
        if generator.is_none() && children.is_empty() {
            return Err(Error::Misuse(
                "a multi-keyring needs a generator or at least one child keyring".into(),
            ));
        }
        Ok(MultiKeyring {
            generator,
            children,
        })
    }

    fn all(&self) -> impl Iterator<Item = &Arc<dyn Keyring>> {
        self.generator.iter().chain(self.children.iter())
    }
}

#[async_trait::async_trait]
impl Keyring for MultiKeyring {
    async fn on_encrypt(&self, materials: &mut EncryptionMaterials) -> Result<(), Error> {
        match &self.generator {
            Some(generator) => generator.on_encrypt(materials).await?,
            None if materials.data_key.is_none() => {
                return Err(Error::Keyring(
                    "a multi-keyring without a generator cannot make a data key: add a generator"
                        .into(),
                ))
            }
            None => {}
        }
        for child in &self.children {
            child.on_encrypt(materials).await?;
        }
        Ok(())
    }

    async fn on_decrypt(
        &self,
        materials: &mut DecryptionMaterials,
        edks: &[EncryptedDataKey],
    ) -> Result<(), Error> {
        let mut reasons = Vec::new();
        for keyring in self.all() {
            match keyring.on_decrypt(materials, edks).await {
                Ok(()) => return Ok(()),
                Err(Error::NoUsableDataKey(r)) => reasons.extend(r),
                Err(other) => reasons.push(other),
            }
        }
        Err(Error::NoUsableDataKey(reasons))
    }
}
