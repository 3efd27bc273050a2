//! [`KmsKeyringBuilder`], discovery filters, and loading the AWS configuration.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, OnceLock};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_kms::config::retry::RetryConfig;
use aws_sdk_kms::config::timeout::TimeoutConfig;
use lru::LruCache;

use super::runtime::CallRuntime;
use super::{Inner, KmsKeyring};
use crate::Error;

/// Which wrapped keys a discovery keyring may try: a partition and a set of account IDs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryFilter {
    /// The partition (`aws` for the commercial Regions).
    pub partition: String,
    /// Accounts whose keys may be used.
    pub accounts: Vec<String>,
}

/// Which keys a KMS keyring decrypts with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) enum Discovery {
    /// Only the keys it names (strict mode).
    #[default]
    Off,
    /// Whichever key wrapped the data key, in any account: the message chooses.
    AnyAccount,
    /// Whichever key wrapped the data key, within the filter's partition and accounts.
    Filtered(DiscoveryFilter),
}

/// Builds a [`KmsKeyring`].
#[derive(Debug, Default)]
pub struct KmsKeyringBuilder {
    generator: Option<String>,
    keys: Vec<String>,
    pub(super) discovery: Discovery,
    region: Option<String>,
    endpoint_url: Option<String>,
    profile: Option<String>,
    sdk_config: Option<SdkConfig>,
    retry: Option<RetryConfig>,
    timeout: Option<TimeoutConfig>,
    grant_tokens: Vec<String>,
}

impl KmsKeyringBuilder {
    /// The key that makes data keys (`GenerateDataKey`): key ID, key ARN, alias name
    /// (`alias/app-data`) or alias ARN. On decrypt it is one of the keys allowed; a name that
    /// is not a key ARN is resolved once (see [`KmsKeyring`], "Strict mode resolves names").
    pub fn generator(mut self, key: impl Into<String>) -> Self {
        self.generator = Some(key.into());
        self
    }

    /// Another key that wraps each data key too (`Encrypt`), for example a replica in a
    /// second Region. On decrypt it is one of the keys allowed.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.keys.push(key.into());
        self
    }

    /// Discovery mode in any account, for decrypting only: use whichever `aws-kms` key wrapped
    /// the data key. **The message then chooses** the key, the account and the Region KMS is
    /// asked in: anyone who can write a message and owns a KMS key that the caller's
    /// credentials may use (a key policy that grants them `kms:Decrypt`) can make it decrypt.
    /// Prefer [`discovery_filter`](Self::discovery_filter) with the accounts you trust.
    /// Replaces an earlier `discovery_filter`.
    pub fn discovery(mut self) -> Self {
        self.discovery = Discovery::AnyAccount;
        self
    }

    /// Discovery mode limited to `filter`'s partition and accounts, for decrypting only: use
    /// whichever `aws-kms` key wrapped the data key if its ARN is in one of those accounts.
    /// Replaces an earlier [`discovery`](Self::discovery).
    pub fn discovery_filter(mut self, filter: DiscoveryFilter) -> Self {
        self.discovery = Discovery::Filtered(filter);
        self
    }

    /// The Region for keys not named by ARN (default: the standard AWS configuration).
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// A KMS endpoint to use instead of AWS's (a local KMS, a VPC endpoint).
    /// `AWS_ENDPOINT_URL_KMS` and `AWS_ENDPOINT_URL` are honoured without this.
    pub fn endpoint_url(mut self, url: impl Into<String>) -> Self {
        self.endpoint_url = Some(url.into());
        self
    }

    /// A named profile of the shared AWS configuration.
    pub fn profile(mut self, profile: impl Into<String>) -> Self {
        self.profile = Some(profile.into());
        self
    }

    /// A ready AWS configuration (credentials, Region, HTTP client) instead of the default
    /// chain. Region, endpoint, retry and timeout settings of this builder still apply.
    pub fn sdk_config(mut self, config: SdkConfig) -> Self {
        self.sdk_config = Some(config);
        self
    }

    /// The SDK's retry configuration (default: standard mode, 3 attempts).
    pub fn retry_config(mut self, retry: RetryConfig) -> Self {
        self.retry = Some(retry);
        self
    }

    /// The SDK's timeouts (connect, per attempt, per operation).
    pub fn timeout_config(mut self, timeout: TimeoutConfig) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Grant tokens passed on every KMS call.
    pub fn grant_tokens(mut self, tokens: impl IntoIterator<Item = String>) -> Self {
        self.grant_tokens = tokens.into_iter().collect();
        self
    }

    /// Builds the keyring, loading the AWS configuration. Works without a runtime.
    ///
    /// # Errors
    /// [`Error::Misuse`] when no key is named and discovery is off, or discovery is combined
    /// with keys.
    pub fn build(self) -> Result<KmsKeyring, Error> {
        let runtime = Arc::new(CallRuntime(OnceLock::new()));
        let rt = runtime.clone();
        std::thread::scope(|s| {
            s.spawn(|| rt.get().block_on(self.build_on(runtime)))
                .join()
                .expect("keyring construction does not panic")
        })
    }

    /// Builds the keyring from async code.
    ///
    /// # Errors
    /// As [`build`](Self::build).
    pub async fn build_async(self) -> Result<KmsKeyring, Error> {
        let runtime = Arc::new(CallRuntime(OnceLock::new()));
        runtime.clone().run(self.build_on(runtime)).await
    }

    async fn build_on(self, runtime: Arc<CallRuntime>) -> Result<KmsKeyring, Error> {
        let named = self.generator.is_some() || !self.keys.is_empty();
        match (&self.discovery, named) {
            (Discovery::Off, false) => {
                return Err(Error::Misuse(
                    "a KMS keyring needs a key (KmsKeyringBuilder::generator or ::key) or \
                     discovery mode (KmsKeyringBuilder::discovery_filter or ::discovery)"
                        .into(),
                ))
            }
            (Discovery::AnyAccount | Discovery::Filtered(_), true) => {
                return Err(Error::Misuse(
                    "a KMS keyring is either in discovery mode or names its keys, not both".into(),
                ))
            }
            _ => {}
        }
        let base = match self.sdk_config {
            Some(c) => c,
            None => load_aws_config(self.profile.as_deref(), None, None).await,
        };
        let mut b = base.to_builder();
        if let Some(r) = self.region {
            b.set_region(Some(Region::new(r)));
        }
        if let Some(u) = self.endpoint_url {
            b.set_endpoint_url(Some(u));
        }
        if let Some(r) = self.retry {
            b.set_retry_config(Some(r));
        }
        if let Some(t) = self.timeout {
            b.set_timeout_config(Some(t));
        }
        Ok(KmsKeyring(Arc::new(Inner {
            base: b.build(),
            clients: Mutex::new(LruCache::new(
                NonZeroUsize::new(KmsKeyring::MAX_REGION_CLIENTS).expect("a non-zero bound"),
            )),
            generator: self.generator,
            keys: self.keys,
            discovery: self.discovery,
            grant_tokens: self.grant_tokens,
            resolved: Mutex::new(HashMap::new()),
            runtime,
        })))
    }
}

/// Loads the standard AWS configuration (environment, profiles, instance roles), with an
/// optional profile, Region and endpoint in place of the defaults.
pub async fn load_aws_config(
    profile: Option<&str>,
    region: Option<&str>,
    endpoint_url: Option<&str>,
) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(p) = profile {
        loader = loader.profile_name(p);
    }
    if let Some(r) = region {
        loader = loader.region(Region::new(r.to_owned()));
    }
    if let Some(u) = endpoint_url {
        loader = loader.endpoint_url(u);
    }
    loader.load().await
}
