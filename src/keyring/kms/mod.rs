//! The AWS KMS keyring: `GenerateDataKey` on a customer managed key, `Encrypt` under any
//! additional keys (another Region, say), `Decrypt` in strict or discovery mode, with
//! multi-Region key matching (FORMAT.md §10.1).

mod arn;
mod builder;
mod error;
mod runtime;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aws_config::SdkConfig;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::Client;
use lru::LruCache;
use zeroize::Zeroizing;

pub use arn::{KmsArn, KmsArnProblem};
use builder::Discovery;
pub use builder::{load_aws_config, DiscoveryFilter, KmsKeyringBuilder};
pub use error::{KmsError, KmsErrorKind};

use super::{Keyring, KMS_PROVIDER_ID};
use crate::error::untrusted;
use crate::format::{EncryptedDataKey, EncryptionContext};
use crate::materials::{DataKey, DecryptionMaterials, EncryptionMaterials};
use crate::Error;
use runtime::CallRuntime;

struct Inner {
    base: SdkConfig,
    /// One client per Region, the most recently used [`KmsKeyring::MAX_REGION_CLIENTS`].
    clients: Mutex<LruCache<String, Client>>,
    generator: Option<String>,
    keys: Vec<String>,
    discovery: Discovery,
    grant_tokens: Vec<String>,
    resolved: Mutex<HashMap<String, KmsArn>>,
    runtime: Arc<CallRuntime>,
}

/// Wraps data keys with AWS KMS. Cheap to clone; clones share clients and caches.
///
/// # Decrypting
///
/// Every `aws-kms` wrapped key of a message must name a KMS key ARN
/// (`arn:PARTITION:kms:REGION:ACCOUNT:key/ID`) with a well-formed Region, or decryption fails
/// with [`Error::BadKmsArn`] before any KMS call, even when another `aws-kms` wrapped key would
/// do: the ESDK's AWS KMS keyring specification makes a provider info that is not a valid key
/// ARN fail OnDecrypt rather than be skipped; the Region check is this crate's, because in
/// discovery mode the Region picks the KMS client. This fails this keyring only: inside a
/// [`MultiKeyring`](crate::MultiKeyring), as in the ESDK, the next child keyring still gets
/// its turn and may decrypt the message with its own wrapped key. A wrapped key that KMS unwraps to a key that does not
/// open the message is passed over for the next one.
///
/// **Strict mode resolves names (an extension to the ESDK specification).** The
/// specification's strict keyring accepts only key ARNs for decryption and compares the
/// wrapped key's ARN with them as strings. This keyring also accepts a key ID, an alias name
/// (`alias/app-data`) or an alias ARN: on its first decryption it asks KMS which key the name
/// stands for (`DescribeKey`, which needs `kms:DescribeKey`) and then matches wrapped keys
/// against that key ARN (multi-Region keys match their replicas). The answer is kept for the
/// keyring's lifetime. So when an alias is re-pointed to another key:
/// - a keyring that has already decrypted once goes on trusting the key the alias named then,
///   and cannot decrypt messages wrapped under the new target until it is rebuilt, although it
///   encrypts under the new target (`GenerateDataKey` resolves the alias on every call);
/// - a keyring built afterwards trusts only the new target, and no longer reads messages
///   wrapped under the old key alone.
///
/// Whoever may update the alias therefore chooses which key a newly built keyring accepts. For
/// decryption that must not depend on an alias, name keys by key ARN, as the specification
/// requires; a long-running service that follows alias changes should rebuild its keyring
/// when one is made.
///
/// ```no_run
/// use kms_envelope::keyring::KmsKeyring;
/// let keyring = KmsKeyring::builder()
///     .generator("alias/app-data")
///     .region("eu-west-1")
///     .build()?;
/// let message = kms_envelope::encrypt(&keyring, &Default::default(), b"secret")?;
/// # Ok::<(), kms_envelope::Error>(())
/// ```
#[derive(Clone)]
pub struct KmsKeyring(Arc<Inner>);

impl std::fmt::Debug for KmsKeyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmsKeyring")
            .field("generator", &self.0.generator)
            .field("keys", &self.0.keys)
            .field("discovery", &self.0.discovery)
            .field("region", &self.0.base.region())
            .finish_non_exhaustive()
    }
}

fn kms_context(ec: &EncryptionContext) -> HashMap<String, String> {
    ec.iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

impl KmsKeyring {
    /// A builder.
    pub fn builder() -> KmsKeyringBuilder {
        KmsKeyringBuilder::default()
    }

    fn client_for_key(&self, key: &str) -> Client {
        let arn = KmsArn::parse(key);
        self.client(arn.as_ref().map(|a| a.region.as_str()))
    }

    async fn generate(
        &self,
        key: &str,
        len: usize,
        ec: &EncryptionContext,
    ) -> Result<(DataKey, EncryptedDataKey), KmsError> {
        let client = self.client_for_key(key);
        let call = client
            .generate_data_key()
            .key_id(key)
            .number_of_bytes(len as i32)
            .set_encryption_context(Some(kms_context(ec)))
            .set_grant_tokens(Some(self.0.grant_tokens.clone()));
        let out = self.call("GenerateDataKey", key, call.send()).await?;
        let plaintext = out
            .plaintext
            .map(|b| Zeroizing::new(b.into_inner()))
            .ok_or_else(|| KmsError::bad_response("GenerateDataKey", key, "no plaintext".into()))?;
        if plaintext.len() != len {
            return Err(KmsError::bad_response(
                "GenerateDataKey",
                key,
                format!("a {}-byte data key, not {len}", plaintext.len()),
            ));
        }
        let edk = Self::edk("GenerateDataKey", key, out.key_id, out.ciphertext_blob)?;
        Ok((DataKey::new(plaintext), edk))
    }

    async fn wrap(
        &self,
        key: String,
        data_key: Zeroizing<Vec<u8>>,
        ec: HashMap<String, String>,
    ) -> Result<EncryptedDataKey, KmsError> {
        let client = self.client_for_key(&key);
        let call = client
            .encrypt()
            .key_id(&key)
            .plaintext(Blob::new(data_key.to_vec()))
            .set_encryption_context(Some(ec))
            .set_grant_tokens(Some(self.0.grant_tokens.clone()));
        drop(data_key);
        let out = self.call("Encrypt", &key, call.send()).await?;
        Self::edk("Encrypt", &key, out.key_id, out.ciphertext_blob)
    }

    fn edk(
        op: &'static str,
        key: &str,
        key_id: Option<String>,
        blob: Option<Blob>,
    ) -> Result<EncryptedDataKey, KmsError> {
        let arn = key_id
            .filter(|k| KmsArn::parse(k).is_some_and(|a| a.resource_type == "key"))
            .ok_or_else(|| KmsError::bad_response(op, key, "no key ARN in the response".into()))?;
        let ciphertext = blob
            .map(Blob::into_inner)
            .ok_or_else(|| KmsError::bad_response(op, key, "no ciphertext".into()))?;
        Ok(EncryptedDataKey {
            provider_id: KMS_PROVIDER_ID.to_owned(),
            provider_info: arn.into_bytes(),
            ciphertext,
        })
    }

    /// The ARN a configured key name stands for: itself when it is a key ARN, else what
    /// `DescribeKey` says (once; the answer is cached).
    async fn resolve(&self, key: &str) -> Result<KmsArn, KmsError> {
        if let Some(arn) = KmsArn::parse(key).filter(|a| a.resource_type == "key") {
            return Ok(arn);
        }
        if let Some(arn) = self.0.resolved.lock().expect("resolved").get(key) {
            return Ok(arn.clone());
        }
        let call = self.client_for_key(key).describe_key().key_id(key);
        let out = self.call("DescribeKey", key, call.send()).await?;
        let arn = out
            .key_metadata
            .and_then(|m| m.arn)
            .and_then(|a| KmsArn::parse(&a))
            .ok_or_else(|| KmsError::bad_response("DescribeKey", key, "no key ARN".into()))?;
        self.0
            .resolved
            .lock()
            .expect("resolved")
            .insert(key.to_owned(), arn.clone());
        Ok(arn)
    }

    async fn unwrap_with(
        &self,
        arn: &KmsArn,
        edk: &EncryptedDataKey,
        ec: &EncryptionContext,
    ) -> Result<DataKey, KmsError> {
        let key = arn.to_string();
        let call = self
            .client(Some(&arn.region))
            .decrypt()
            .key_id(&key)
            .ciphertext_blob(Blob::new(edk.ciphertext.clone()))
            .set_encryption_context(Some(kms_context(ec)))
            .set_grant_tokens(Some(self.0.grant_tokens.clone()));
        let out = self.call("Decrypt", &key, call.send()).await?;
        let plaintext = out.plaintext.map(|b| Zeroizing::new(b.into_inner()));
        if out.key_id.as_deref() != Some(key.as_str()) {
            return Err(KmsError::bad_response(
                "Decrypt",
                &key,
                format!(
                    "KMS answered for key \"{}\"",
                    untrusted(out.key_id.unwrap_or_default().as_bytes())
                ),
            ));
        }
        // Its length is checked with the header, like any unwrapped key.
        plaintext
            .map(DataKey::new)
            .ok_or_else(|| KmsError::bad_response("Decrypt", &key, "no plaintext".into()))
    }

    /// The key ARN of every `aws-kms` wrapped key, checked before any KMS call: the ESDK's AWS
    /// KMS keyring specification (OnDecrypt) has decryption fail, not skip the wrapped key,
    /// when the provider info is not a valid KMS key ARN. A Region from a message must be well
    /// formed too, because it picks a KMS client.
    fn message_arns(edks: &[EncryptedDataKey]) -> Result<Vec<(&EncryptedDataKey, KmsArn)>, Error> {
        edks.iter()
            .filter(|e| e.provider_id == KMS_PROVIDER_ID)
            .map(|edk| {
                let bad = |problem| Error::BadKmsArn {
                    arn: untrusted(&edk.provider_info),
                    problem,
                };
                let arn = std::str::from_utf8(&edk.provider_info)
                    .ok()
                    .and_then(KmsArn::parse)
                    .filter(|a| a.resource_type == "key")
                    .ok_or_else(|| bad(KmsArnProblem::NotAKeyArn))?;
                if !arn.region_is_well_formed() {
                    return Err(bad(KmsArnProblem::MalformedRegion));
                }
                Ok((edk, arn))
            })
            .collect()
    }

    fn configured(&self) -> impl Iterator<Item = &String> {
        self.0.generator.iter().chain(self.0.keys.iter())
    }
}

#[async_trait::async_trait]
impl Keyring for KmsKeyring {
    async fn on_encrypt(&self, materials: &mut EncryptionMaterials) -> Result<(), Error> {
        if self.0.discovery != Discovery::Off {
            return Err(Error::Misuse(
                "a discovery KMS keyring can only decrypt: name a key to encrypt".into(),
            ));
        }
        let ec = kms_context(&materials.context);
        let mut to_wrap: Vec<String> = self.0.keys.clone();
        match (&materials.data_key, &self.0.generator) {
            (None, Some(generator)) => {
                let (key, edk) = self
                    .generate(generator, materials.suite.key_len(), &materials.context)
                    .await
                    .map_err(Error::Kms)?;
                materials.data_key = Some(key);
                materials.encrypted_data_keys.push(edk);
            }
            (None, None) => {
                return Err(Error::Misuse(
                    "this KMS keyring has no generator key, so it cannot make a data key: name \
                     one with KmsKeyringBuilder::generator"
                        .into(),
                ))
            }
            (Some(_), Some(generator)) => to_wrap.insert(0, generator.clone()),
            (Some(_), None) => {}
        }
        let data_key = materials.data_key.as_ref().expect("set above");
        let calls = to_wrap.into_iter().map(|key| {
            let dk = Zeroizing::new(data_key.as_bytes().to_vec());
            self.wrap(key, dk, ec.clone())
        });
        for result in futures_util::future::join_all(calls).await {
            materials
                .encrypted_data_keys
                .push(result.map_err(Error::Kms)?);
        }
        Ok(())
    }

    async fn on_decrypt(
        &self,
        materials: &mut DecryptionMaterials,
        edks: &[EncryptedDataKey],
    ) -> Result<(), Error> {
        let candidates = Self::message_arns(edks)?;
        let mut attempts = Vec::new();
        // Resolve configured names to ARNs once, before looking at the message.
        let mut allowed = Vec::new();
        for key in self.configured() {
            match self.resolve(key).await {
                Ok(arn) => allowed.push(arn),
                Err(e) => attempts.push(Error::Kms(e)),
            }
        }
        for (edk, edk_arn) in candidates {
            let target = match &self.0.discovery {
                Discovery::Off => match allowed.iter().find(|a| a.mrk_matches(&edk_arn)) {
                    Some(a) => a.clone(),
                    None => continue,
                },
                Discovery::Filtered(f)
                    if f.partition != edk_arn.partition
                        || !f.accounts.contains(&edk_arn.account) =>
                {
                    attempts.push(Error::Keyring(format!(
                        "key {} is outside the discovery filter",
                        untrusted(edk_arn.to_string().as_bytes())
                    )));
                    continue;
                }
                Discovery::AnyAccount | Discovery::Filtered(_) => edk_arn,
            };
            match self.unwrap_with(&target, edk, &materials.context).await {
                // A key that does not open this message is refused like any other (the
                // message layer then answers DecryptionFailed); the next wrapped key is tried.
                Ok(key) => {
                    if materials.offer(key, subtle::Choice::from(1)) {
                        return Ok(());
                    }
                    attempts.push(Error::DecryptionFailed);
                }
                Err(e) => attempts.push(Error::Kms(e)),
            }
        }
        if attempts.is_empty() {
            let names: Vec<_> = self.configured().cloned().collect();
            attempts.push(Error::Keyring(format!(
                "the message has no data key wrapped under {}",
                if names.is_empty() {
                    "any KMS key".to_owned()
                } else {
                    names.join(", ")
                }
            )));
        }
        Err(Error::NoUsableDataKey(attempts))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::keyring::planted::Planted;
    use aws_config::{BehaviorVersion, Region};

    /// A discovery keyring whose calls, if any were made, go to a closed loopback port.
    pub(crate) fn offline_discovery() -> KmsKeyring {
        let config = SdkConfig::builder()
            .region(Region::new("us-east-1"))
            .endpoint_url("http://127.0.0.1:9")
            .behavior_version(BehaviorVersion::latest())
            .build();
        KmsKeyring::builder()
            .sdk_config(config)
            .discovery()
            .build()
            .unwrap()
    }

    #[test]
    fn a_bad_arn_fails_the_kms_keyring_but_not_a_multi_keyring_s_next_child() {
        let bad_arn = Planted(vec![EncryptedDataKey {
            provider_id: KMS_PROVIDER_ID.into(),
            provider_info: b"not an arn".to_vec(),
            ciphertext: vec![1; 40],
        }]);
        let kms: Arc<dyn Keyring> = Arc::new(offline_discovery());
        let aes: Arc<dyn Keyring> =
            Arc::new(crate::RawAesKeyring::new("ns", "k", &[9; 32]).unwrap());
        let writer = crate::MultiKeyring::new(Some(aes.clone()), vec![Arc::new(bad_arn)]);
        let message = crate::Encryptor::new(&writer.unwrap())
            .encrypt(b"next child")
            .unwrap();
        let err = crate::Decryptor::new(&*kms).decrypt(&message).unwrap_err();
        assert!(matches!(err, Error::BadKmsArn { .. }), "{err:?}");
        let multi = crate::MultiKeyring::new(None, vec![kms, aes]).unwrap();
        let pt = crate::Decryptor::new(&multi).decrypt(&message);
        assert_eq!(pt.as_deref().ok(), Some(&b"next child"[..]), "{pt:?}");
    }

    #[test]
    fn a_malformed_region_makes_no_client() {
        let keyring = offline_discovery();
        let edk = EncryptedDataKey {
            provider_id: KMS_PROVIDER_ID.into(),
            provider_info: b"arn:aws:kms:us-east-1\x1b[2J:111122223333:key/k".to_vec(),
            ciphertext: vec![1; 40],
        };
        let suite = crate::format::AlgorithmSuite::Aes256GcmHkdfSha512CommitKey;
        let mut materials = DecryptionMaterials::new(suite, EncryptionContext::new());
        let err = pollster::block_on(keyring.on_decrypt(&mut materials, &[edk])).unwrap_err();
        assert!(
            matches!(
                err,
                Error::BadKmsArn {
                    problem: KmsArnProblem::MalformedRegion,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(!err.to_string().contains('\x1b'), "{err}");
        assert_eq!(keyring.client_count(), 0);
    }

    #[test]
    fn a_keyring_without_keys_or_with_keys_and_discovery_is_misuse() {
        let filter = DiscoveryFilter {
            partition: "aws".into(),
            accounts: vec!["111122223333".into()],
        };
        let builders = [
            KmsKeyring::builder(),
            KmsKeyring::builder().generator("k").discovery(),
            KmsKeyring::builder().key("k").discovery_filter(filter),
        ];
        for builder in builders {
            let err = builder.build().unwrap_err();
            assert!(matches!(err, Error::Misuse(_)), "{err:?}");
            assert_eq!(err.kind(), crate::ErrorKind::Misuse);
            assert!(!err.to_string().contains("--"), "no CLI flag: {err}");
        }
        let err = crate::Encryptor::new(&offline_discovery())
            .encrypt(b"x")
            .unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Misuse, "{err:?}");
    }

    #[test]
    fn discovery_and_its_filter_replace_each_other() {
        let filter = DiscoveryFilter {
            partition: "aws".into(),
            accounts: vec!["111122223333".into()],
        };
        let b = KmsKeyring::builder()
            .discovery()
            .discovery_filter(filter.clone());
        assert_eq!(b.discovery, Discovery::Filtered(filter.clone()));
        let b = KmsKeyring::builder().discovery_filter(filter).discovery();
        assert_eq!(b.discovery, Discovery::AnyAccount);
        assert_eq!(KmsKeyring::builder().discovery, Discovery::Off);
    }

    #[test]
    fn kms_error_hints_name_no_cli_command() {
        for kind in [KmsErrorKind::Disabled, KmsErrorKind::InvalidState] {
            let e = KmsError {
                operation: "Decrypt",
                key: "k".into(),
                kind,
                code: None,
                message: String::new(),
            };
            let shown = e.to_string();
            assert!(
                !shown.contains("kms-envelope") && !shown.contains("--"),
                "{shown}"
            );
        }
    }
}
