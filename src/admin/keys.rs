//! Key provisioning on KMS, the seed's commands: create a key with a policy, tags and a
//! description; aliases; describe; enable and disable; schedule and cancel deletion. Results are
//! JSON in the AWS CLI's shapes (`KeyMetadata`, `Aliases`).

use aws_config::SdkConfig;
use aws_sdk_kms::primitives::DateTimeFormat;
use aws_sdk_kms::types::{AliasListEntry, KeyMetadata, Tag};
use aws_sdk_kms::Client;
use serde_json::{json, Map, Value};

use crate::keyring::KmsError;
use crate::Error;

/// Manages KMS keys: the operations of the seed's walkthrough, from code.
#[derive(Debug, Clone)]
pub struct KeyAdmin {
    client: Client,
}

fn time(t: Option<&aws_sdk_kms::primitives::DateTime>) -> Value {
    t.and_then(|t| t.fmt(DateTimeFormat::DateTime).ok())
        .map_or(Value::Null, Value::String)
}

fn put(map: &mut Map<String, Value>, key: &str, value: Value) {
    if !value.is_null() {
        map.insert(key.to_owned(), value);
    }
}

/// `KeyMetadata` as the AWS CLI prints it.
#[allow(deprecated)] // CustomerMasterKeySpec: deprecated, but the AWS CLI still prints it.
pub fn key_metadata_json(m: &KeyMetadata) -> Value {
    let mut o = Map::new();
    let s = |v: Option<&str>| v.map_or(Value::Null, |x| Value::String(x.to_owned()));
    put(&mut o, "AWSAccountId", s(m.aws_account_id()));
    put(&mut o, "KeyId", json!(m.key_id()));
    put(&mut o, "Arn", s(m.arn()));
    put(&mut o, "CreationDate", time(m.creation_date()));
    put(&mut o, "Enabled", json!(m.enabled()));
    put(&mut o, "Description", s(m.description()));
    put(&mut o, "KeyUsage", s(m.key_usage().map(|u| u.as_str())));
    put(&mut o, "KeyState", s(m.key_state().map(|u| u.as_str())));
    put(&mut o, "DeletionDate", time(m.deletion_date()));
    put(&mut o, "Origin", s(m.origin().map(|u| u.as_str())));
    put(&mut o, "KeyManager", s(m.key_manager().map(|u| u.as_str())));
    put(
        &mut o,
        "CustomerMasterKeySpec",
        s(m.customer_master_key_spec().map(|u| u.as_str())),
    );
    put(&mut o, "KeySpec", s(m.key_spec().map(|u| u.as_str())));
    let algs: Vec<&str> = m
        .encryption_algorithms()
        .iter()
        .map(|a| a.as_str())
        .collect();
    if !algs.is_empty() {
        o.insert("EncryptionAlgorithms".into(), json!(algs));
    }
    put(&mut o, "MultiRegion", json!(m.multi_region()));
    Value::Object(o)
}

fn alias_json(a: &AliasListEntry) -> Value {
    let mut o = Map::new();
    let s = |v: Option<&str>| v.map_or(Value::Null, |x| Value::String(x.to_owned()));
    put(&mut o, "AliasName", s(a.alias_name()));
    put(&mut o, "AliasArn", s(a.alias_arn()));
    put(&mut o, "TargetKeyId", s(a.target_key_id()));
    put(&mut o, "CreationDate", time(a.creation_date()));
    put(&mut o, "LastUpdatedDate", time(a.last_updated_date()));
    Value::Object(o)
}

/// Checks an alias name: `alias/NAME`, not in the reserved `alias/aws/` space.
///
/// # Errors
/// [`Error::Misuse`] saying what is wrong.
pub fn check_alias_name(alias: &str) -> Result<(), Error> {
    let name = alias
        .strip_prefix("alias/")
        .ok_or_else(|| Error::Misuse(format!("alias {alias:?} must start with \"alias/\"")))?;
    if name.is_empty() || alias.starts_with("alias/aws/") {
        return Err(Error::Misuse(format!(
            "alias {alias:?} is empty or in the reserved alias/aws/ space"
        )));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/_-".contains(&b))
        || alias.len() > 256
    {
        return Err(Error::Misuse(format!(
            "alias {alias:?} may hold only letters, digits, '/', '_' and '-' (256 characters at most)"
        )));
    }
    Ok(())
}

impl KeyAdmin {
    /// An administrator using `config` (credentials, Region, endpoint).
    pub fn new(config: &SdkConfig) -> Self {
        KeyAdmin {
            client: Client::new(config),
        }
    }

    /// Creates a symmetric encryption key with `policy` (JSON), `description` and `tags`.
    /// Returns `{"KeyMetadata": …}`.
    ///
    /// # Errors
    /// [`Error::Kms`] when KMS refuses (a malformed policy, say).
    pub async fn create_key(
        &self,
        policy: Option<&str>,
        description: Option<&str>,
        tags: &[(String, String)],
    ) -> Result<Value, Error> {
        let tags = tags
            .iter()
            .map(|(k, v)| Tag::builder().tag_key(k).tag_value(v).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::Misuse(format!("bad tag: {e}")))?;
        let out = self
            .client
            .create_key()
            .set_policy(policy.map(str::to_owned))
            .set_description(description.map(str::to_owned))
            .set_tags((!tags.is_empty()).then_some(tags))
            .send()
            .await
            .map_err(|e| Error::Kms(KmsError::from_sdk("CreateKey", "(new key)", e)))?;
        Ok(json!({ "KeyMetadata": out.key_metadata().map(key_metadata_json) }))
    }

    /// Points `alias` (`alias/NAME`) at `target_key_id`.
    ///
    /// # Errors
    /// A bad alias name, or [`Error::Kms`] (alias exists, key not found, …).
    pub async fn create_alias(&self, alias: &str, target_key_id: &str) -> Result<(), Error> {
        check_alias_name(alias)?;
        self.client
            .create_alias()
            .alias_name(alias)
            .target_key_id(target_key_id)
            .send()
            .await
            .map_err(|e| Error::Kms(KmsError::from_sdk("CreateAlias", target_key_id, e)))?;
        Ok(())
    }

    /// Lists aliases, all or those of one key. Returns `{"Aliases": […]}`.
    ///
    /// # Errors
    /// [`Error::Kms`].
    pub async fn list_aliases(&self, key_id: Option<&str>) -> Result<Value, Error> {
        let mut aliases = Vec::new();
        let mut pages = self
            .client
            .list_aliases()
            .set_key_id(key_id.map(str::to_owned))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| {
                Error::Kms(KmsError::from_sdk(
                    "ListAliases",
                    key_id.unwrap_or("(all)"),
                    e,
                ))
            })?;
            aliases.extend(page.aliases().iter().map(alias_json));
        }
        Ok(json!({ "Aliases": aliases }))
    }

    /// Describes a key. Returns `{"KeyMetadata": …}`.
    ///
    /// # Errors
    /// [`Error::Kms`].
    pub async fn describe_key(&self, key_id: &str) -> Result<Value, Error> {
        let out = self
            .client
            .describe_key()
            .key_id(key_id)
            .send()
            .await
            .map_err(|e| Error::Kms(KmsError::from_sdk("DescribeKey", key_id, e)))?;
        Ok(json!({ "KeyMetadata": out.key_metadata().map(key_metadata_json) }))
    }

    /// Enables a key.
    ///
    /// # Errors
    /// [`Error::Kms`].
    pub async fn enable_key(&self, key_id: &str) -> Result<(), Error> {
        self.client
            .enable_key()
            .key_id(key_id)
            .send()
            .await
            .map_err(|e| Error::Kms(KmsError::from_sdk("EnableKey", key_id, e)))?;
        Ok(())
    }

    /// Disables a key: nothing can be encrypted or decrypted under it until it is enabled.
    ///
    /// # Errors
    /// [`Error::Kms`].
    pub async fn disable_key(&self, key_id: &str) -> Result<(), Error> {
        self.client
            .disable_key()
            .key_id(key_id)
            .send()
            .await
            .map_err(|e| Error::Kms(KmsError::from_sdk("DisableKey", key_id, e)))?;
        Ok(())
    }

    /// Schedules deletion after `pending_days` (7 to 30). Returns the AWS CLI's shape.
    ///
    /// # Errors
    /// A window outside 7–30 days, or [`Error::Kms`].
    pub async fn schedule_key_deletion(
        &self,
        key_id: &str,
        pending_days: i32,
    ) -> Result<Value, Error> {
        if !(7..=30).contains(&pending_days) {
            return Err(Error::Misuse(format!(
                "the deletion window must be 7 to 30 days, not {pending_days}"
            )));
        }
        let out = self
            .client
            .schedule_key_deletion()
            .key_id(key_id)
            .pending_window_in_days(pending_days)
            .send()
            .await
            .map_err(|e| Error::Kms(KmsError::from_sdk("ScheduleKeyDeletion", key_id, e)))?;
        let mut o = Map::new();
        put(&mut o, "KeyId", json!(out.key_id()));
        put(&mut o, "DeletionDate", time(out.deletion_date()));
        put(
            &mut o,
            "KeyState",
            json!(out.key_state().map(|s| s.as_str())),
        );
        put(
            &mut o,
            "PendingWindowInDays",
            json!(out.pending_window_in_days()),
        );
        Ok(Value::Object(o))
    }

    /// Cancels a scheduled deletion (the key stays disabled until enabled). Returns
    /// `{"KeyId": …}`.
    ///
    /// # Errors
    /// [`Error::Kms`].
    pub async fn cancel_key_deletion(&self, key_id: &str) -> Result<Value, Error> {
        let out = self
            .client
            .cancel_key_deletion()
            .key_id(key_id)
            .send()
            .await
            .map_err(|e| Error::Kms(KmsError::from_sdk("CancelKeyDeletion", key_id, e)))?;
        Ok(json!({ "KeyId": out.key_id() }))
    }
}
