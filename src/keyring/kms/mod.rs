//! The AWS KMS keyring: `GenerateDataKey` on a customer managed key, `Encrypt` under any
//! additional keys (another Region, say), `Decrypt` in strict or discovery mode, with
//! multi-Region key matching (FORMAT.md §10.1).

use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, OnceLock};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_kms::config::retry::RetryConfig;
use aws_sdk_kms::config::timeout::TimeoutConfig;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::Client;
use lru::LruCache;
use zeroize::Zeroizing;

use super::{Keyring, KMS_PROVIDER_ID};
use crate::error::untrusted;
use crate::format::{EncryptedDataKey, EncryptionContext};
use crate::materials::{DataKey, DecryptionMaterials, EncryptionMaterials};
use crate::Error;

/// What went wrong in a KMS call, in terms a user can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KmsErrorKind {
    /// The key policy or IAM policy does not allow the call.
    AccessDenied,
    /// The key is disabled.
    Disabled,
    /// The key is pending deletion, pending import, or otherwise unusable.
    InvalidState,
    /// No such key (or alias) in that account and Region.
    NotFound,
    /// KMS throttled the call, and the SDK's retries did not get through.
    Throttled,
    /// KMS could not decrypt the wrapped key: wrong key, other context, or corrupted.
    InvalidCiphertext,
    /// The call timed out.
    Timeout,
    /// KMS could not be reached.
    Network,
    /// No usable AWS credentials.
    Credentials,
    /// KMS answered with a key other than the one asked for, or an unusable response.
    BadResponse,
    /// Anything else KMS or the SDK reported.
    Other,
}

/// A failed KMS call: which operation, which key, what kind of failure, and KMS's own words.
///
/// The key may come from a message (discovery mode) and KMS's words may echo it, so both are
/// escaped with [`str::escape_debug`] when the error is made: no control character of a
/// message reaches a terminal through this error's `Display`.
#[derive(Debug, Clone)]
pub struct KmsError {
    /// The KMS operation (`GenerateDataKey`, `Encrypt`, `Decrypt`, `DescribeKey`, …).
    pub operation: &'static str,
    /// The key as it was named (escaped).
    pub key: String,
    /// The kind of failure.
    pub kind: KmsErrorKind,
    /// KMS's error code, when it answered with one (escaped).
    pub code: Option<String>,
    /// KMS's or the SDK's message (escaped).
    pub message: String,
}

impl KmsError {
    pub(crate) fn from_sdk<E, R>(operation: &'static str, key: &str, err: SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        let code = err.code().map(str::to_owned);
        let mut message = err.message().map(str::to_owned).unwrap_or_default();
        if message.is_empty() {
            message = error_chain(&err);
        }
        let kind = match (&err, code.as_deref()) {
            (SdkError::TimeoutError(_), _) => KmsErrorKind::Timeout,
            (_, Some("AccessDeniedException")) => KmsErrorKind::AccessDenied,
            (_, Some("DisabledException")) => KmsErrorKind::Disabled,
            (_, Some("KMSInvalidStateException")) => KmsErrorKind::InvalidState,
            (_, Some("NotFoundException")) => KmsErrorKind::NotFound,
            (_, Some("ThrottlingException" | "LimitExceededException")) => KmsErrorKind::Throttled,
            (_, Some("InvalidCiphertextException" | "IncorrectKeyException")) => {
                KmsErrorKind::InvalidCiphertext
            }
            (_, Some("UnrecognizedClientException" | "InvalidSignatureException"))
            | (_, Some("ExpiredTokenException")) => KmsErrorKind::Credentials,
            _ if message.to_lowercase().contains("credentials") => KmsErrorKind::Credentials,
            (SdkError::DispatchFailure(d), _) if d.is_timeout() => KmsErrorKind::Timeout,
            (SdkError::DispatchFailure(_), _) => KmsErrorKind::Network,
            _ => KmsErrorKind::Other,
        };
        KmsError {
            operation,
            key: untrusted(key.as_bytes()),
            kind,
            code: code.map(|c| untrusted(c.as_bytes())),
            message: untrusted(message.as_bytes()),
        }
    }

    fn bad_response(operation: &'static str, key: &str, message: String) -> Self {
        KmsError {
            operation,
            key: untrusted(key.as_bytes()),
            kind: KmsErrorKind::BadResponse,
            code: None,
            message: untrusted(message.as_bytes()),
        }
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

impl std::fmt::Display for KmsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let KmsError {
            operation: op, key, ..
        } = self;
        let hint = match self.kind {
            KmsErrorKind::AccessDenied => format!(
                "access denied: the key policy or the caller's IAM policy must allow kms:{op} on this key"
            ),
            KmsErrorKind::Disabled => {
                "the key is disabled: enable it (`kms-envelope key enable --key-id ...`)".to_owned()
            }
            KmsErrorKind::InvalidState => "the key is pending deletion or otherwise unusable: \
                 cancel the deletion (`kms-envelope key cancel-deletion --key-id ...`) and enable it"
                .to_owned(),
            KmsErrorKind::NotFound => {
                "no such key: check the key ID or alias, the account and the Region".to_owned()
            }
            KmsErrorKind::Throttled => "KMS throttled the request and the retries ran out: \
                 retry later, raise the retry attempts, or cache data keys"
                .to_owned(),
            KmsErrorKind::InvalidCiphertext => "KMS could not decrypt the wrapped data key: it was \
                 wrapped under another key or another encryption context, or it is corrupted"
                .to_owned(),
            KmsErrorKind::Timeout => {
                "the request timed out: check the endpoint and network, or raise the timeout".to_owned()
            }
            KmsErrorKind::Network => {
                "KMS could not be reached: check the endpoint URL, Region and network".to_owned()
            }
            KmsErrorKind::Credentials => "no usable AWS credentials: set AWS_PROFILE or \
                 AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or run on a machine with a role"
                .to_owned(),
            KmsErrorKind::BadResponse => "KMS returned an unusable response".to_owned(),
            KmsErrorKind::Other => "KMS reported an error".to_owned(),
        };
        write!(f, "KMS {op} with key {key}: {hint}")?;
        if !self.message.is_empty() {
            write!(f, " ({}", self.message)?;
            if let Some(code) = &self.code {
                write!(f, "; {code}")?;
            }
            f.write_str(")")?;
        }
        Ok(())
    }
}

impl std::error::Error for KmsError {}

/// A parsed KMS ARN: `arn:PARTITION:kms:REGION:ACCOUNT:key/ID` (or `alias/NAME`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsArn {
    /// `aws`, `aws-cn`, `aws-us-gov`, …
    pub partition: String,
    /// The Region.
    pub region: String,
    /// The account ID.
    pub account: String,
    /// `key` or `alias`.
    pub resource_type: String,
    /// The key ID (`mrk-…` for multi-Region keys) or alias name.
    pub resource_id: String,
}

impl KmsArn {
    /// Parses an ARN; `None` for anything that is not a KMS key or alias ARN.
    pub fn parse(arn: &str) -> Option<Self> {
        let mut parts = arn.splitn(6, ':');
        let (prefix, partition, service, region, account, resource) = (
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
        );
        let (resource_type, resource_id) = resource.split_once('/')?;
        let ok = prefix == "arn"
            && service == "kms"
            && !partition.is_empty()
            && !region.is_empty()
            && !account.is_empty()
            && matches!(resource_type, "key" | "alias")
            && !resource_id.is_empty();
        ok.then(|| KmsArn {
            partition: partition.to_owned(),
            region: region.to_owned(),
            account: account.to_owned(),
            resource_type: resource_type.to_owned(),
            resource_id: resource_id.to_owned(),
        })
    }

    /// Whether the Region is well formed: lowercase words joined by `-`, the first of two to
    /// four letters, at least one more word, and a number of one or two digits at the end
    /// (`us-east-1`, `cn-north-1`, `us-gov-west-1`, `us-isob-east-1`, `eusc-de-east-1`), at
    /// most 32 bytes. Every Region of every AWS partition has this shape.
    pub fn region_is_well_formed(&self) -> bool {
        let r = self.region.as_str();
        let words: Vec<&str> = r.split('-').collect();
        let letters = |w: &str, min: usize, max: usize| {
            (min..=max).contains(&w.len()) && w.bytes().all(|b| b.is_ascii_lowercase())
        };
        r.len() <= 32
            && words.len() >= 3
            && letters(words[0], 2, 4)
            && words[1..words.len() - 1].iter().all(|w| letters(w, 1, 16))
            && words.last().is_some_and(|n| {
                (1..=2).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_digit())
            })
    }

    /// Whether this names a multi-Region key.
    pub fn is_mrk(&self) -> bool {
        self.resource_type == "key" && self.resource_id.starts_with("mrk-")
    }

    /// The ESDK's MRK match for decrypt: equal, or both multi-Region keys that differ only in
    /// their Region.
    pub fn mrk_matches(&self, other: &KmsArn) -> bool {
        if self == other {
            return true;
        }
        self.is_mrk()
            && other.is_mrk()
            && self.partition == other.partition
            && self.account == other.account
            && self.resource_id == other.resource_id
    }
}

impl std::fmt::Display for KmsArn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "arn:{}:kms:{}:{}:{}/{}",
            self.partition, self.region, self.account, self.resource_type, self.resource_id
        )
    }
}

/// Why a KMS keyring refuses the key an `aws-kms` wrapped key names ([`Error::BadKmsArn`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KmsArnProblem {
    /// The provider info is not a KMS key ARN (`arn:PARTITION:kms:REGION:ACCOUNT:key/ID`):
    /// not UTF-8, not an ARN, or an alias. The ESDK's AWS KMS keyring specification makes
    /// this fail the decryption rather than skip the wrapped key.
    NotAKeyArn,
    /// The ARN's Region is not a well-formed AWS Region name
    /// (see [`KmsArn::region_is_well_formed`]).
    /// A Region from a message is used to pick a KMS client, so nothing else is accepted.
    MalformedRegion,
}

impl KmsArnProblem {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            KmsArnProblem::NotAKeyArn => {
                "which is not a KMS key ARN (arn:PARTITION:kms:REGION:ACCOUNT:key/ID)"
            }
            KmsArnProblem::MalformedRegion => "whose Region is not a well-formed AWS Region name",
        }
    }
}

/// Which wrapped keys a discovery keyring may try: a partition and a set of account IDs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryFilter {
    /// The partition (`aws` for the commercial Regions).
    pub partition: String,
    /// Accounts whose keys may be used.
    pub accounts: Vec<String>,
}

/// A dedicated runtime that drives every KMS call, so the keyring works the same from sync
/// code (no runtime at all) and from any async runtime, without blocking a caller's reactor.
struct CallRuntime(OnceLock<tokio::runtime::Runtime>);

impl CallRuntime {
    fn get(&self) -> &tokio::runtime::Runtime {
        self.0.get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("kms-envelope-kms")
                .enable_all()
                .build()
                .expect("a tokio runtime for KMS calls")
        })
    }

    async fn run<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> T {
        match self.get().spawn(fut).await {
            Ok(v) => v,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

impl Drop for CallRuntime {
    fn drop(&mut self) {
        // Dropping a runtime inside another runtime's task would panic; let it wind down alone.
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

struct Inner {
    base: SdkConfig,
    /// One client per Region, the most recently used [`KmsKeyring::MAX_REGION_CLIENTS`].
    clients: Mutex<LruCache<String, Client>>,
    generator: Option<String>,
    keys: Vec<String>,
    discovery: Option<Option<DiscoveryFilter>>,
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

/// Builds a [`KmsKeyring`].
#[derive(Debug, Default)]
pub struct KmsKeyringBuilder {
    generator: Option<String>,
    keys: Vec<String>,
    discovery: Option<Option<DiscoveryFilter>>,
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

    /// Discovery mode, for decrypting only: use whichever `aws-kms` key wrapped the data key,
    /// limited to `filter`'s partition and accounts when given. Without a filter, a message
    /// chooses the key, the account and the Region KMS is asked in.
    pub fn discovery(mut self, filter: Option<DiscoveryFilter>) -> Self {
        self.discovery = Some(filter);
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
    /// [`Error::InvalidArgument`] when no key is named and discovery is off, or discovery is
    /// combined with keys.
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
        if self.discovery.is_some() && (self.generator.is_some() || !self.keys.is_empty()) {
            return Err(Error::InvalidArgument(
                "a KMS keyring is either in discovery mode or names its keys, not both".into(),
            ));
        }
        if self.discovery.is_none() && self.generator.is_none() && self.keys.is_empty() {
            return Err(Error::InvalidArgument(
                "a KMS keyring needs a key (--key) or discovery mode (--discovery)".into(),
            ));
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

fn kms_context(ec: &EncryptionContext) -> HashMap<String, String> {
    ec.iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

impl KmsKeyring {
    /// How many per-Region KMS clients a keyring keeps (the most recently used). In discovery
    /// mode the Region comes from the message, so the number is bounded: a long-running
    /// service cannot be made to hold a client for every name an attacker writes. A client
    /// dropped here is made again when needed; the credentials cache of the AWS configuration
    /// is shared, but its connections may not be (unless the configuration names an HTTP
    /// client), so a service that uses more Regions than this pays for new connections.
    pub const MAX_REGION_CLIENTS: usize = 16;

    /// A builder.
    pub fn builder() -> KmsKeyringBuilder {
        KmsKeyringBuilder::default()
    }

    /// The client for `region`, or the default Region's for `None`.
    fn client(&self, region: Option<&str>) -> Client {
        let key = region.unwrap_or("");
        let mut clients = self.0.clients.lock().expect("client map");
        if let Some(c) = clients.get(key) {
            return c.clone();
        }
        let mut conf = aws_sdk_kms::config::Builder::from(&self.0.base);
        if let Some(r) = region {
            conf = conf.region(Region::new(r.to_owned()));
        }
        let client = Client::from_conf(conf.build());
        clients.put(key.to_owned(), client.clone());
        client
    }

    /// How many per-Region clients the keyring holds now.
    #[cfg(test)]
    fn client_count(&self) -> usize {
        self.0.clients.lock().expect("client map").len()
    }

    /// Whether the keyring holds a client for `region` (without making it more recent).
    #[cfg(test)]
    fn has_client(&self, region: &str) -> bool {
        self.0.clients.lock().expect("client map").contains(region)
    }

    /// Sends one KMS request on the keyring's runtime, naming the operation and key on failure.
    async fn call<T, E, R>(
        &self,
        operation: &'static str,
        key: &str,
        request: impl Future<Output = Result<T, SdkError<E, R>>> + Send + 'static,
    ) -> Result<T, KmsError>
    where
        T: Send + 'static,
        E: ProvideErrorMetadata + std::error::Error + Send + 'static,
        R: std::fmt::Debug + Send + 'static,
    {
        self.0
            .runtime
            .run(request)
            .await
            .map_err(|e| KmsError::from_sdk(operation, key, e))
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
        if self.0.discovery.is_some() {
            return Err(Error::Keyring(
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
                return Err(Error::Keyring(
                    "this KMS keyring has no generator key, so it cannot make a data key".into(),
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
                Some(filter) => {
                    let excluded = filter.as_ref().is_some_and(|f| {
                        f.partition != edk_arn.partition || !f.accounts.contains(&edk_arn.account)
                    });
                    if excluded {
                        attempts.push(Error::Keyring(format!(
                            "key {} is outside the discovery filter",
                            untrusted(edk_arn.to_string().as_bytes())
                        )));
                        continue;
                    }
                    edk_arn
                }
                None => match allowed.iter().find(|a| a.mrk_matches(&edk_arn)) {
                    Some(a) => a.clone(),
                    None => continue,
                },
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
mod tests {
    use super::*;

    #[test]
    fn arn_parsing_and_mrk_matching() {
        let a = KmsArn::parse("arn:aws:kms:us-west-2:111122223333:key/mrk-1234").unwrap();
        let b = KmsArn::parse("arn:aws:kms:us-east-1:111122223333:key/mrk-1234").unwrap();
        let c = KmsArn::parse("arn:aws:kms:us-east-1:111122223333:key/1234").unwrap();
        let d = KmsArn::parse("arn:aws:kms:us-west-2:111122223333:key/1234").unwrap();
        assert!(a.is_mrk() && a.mrk_matches(&b) && b.mrk_matches(&a));
        assert!(!c.mrk_matches(&d), "ordinary keys match only themselves");
        assert!(c.mrk_matches(&c));
        assert_eq!(
            a.to_string(),
            "arn:aws:kms:us-west-2:111122223333:key/mrk-1234"
        );
        let alias = KmsArn::parse("arn:aws:kms:us-west-2:111122223333:alias/app").unwrap();
        assert_eq!(alias.resource_type, "alias");
        for bad in [
            "alias/app",
            "arn:aws:s3:us-west-2:1:key/x",
            "arn:aws:kms::1:key/x",
            "1234",
        ] {
            assert!(KmsArn::parse(bad).is_none(), "{bad}");
        }
    }

    fn region(r: &str) -> KmsArn {
        KmsArn::parse(&format!("arn:aws:kms:{r}:111122223333:key/k")).unwrap()
    }

    #[test]
    fn regions_of_every_partition_are_well_formed_and_nothing_else() {
        for good in [
            "us-east-1",
            "eu-west-3",
            "ap-southeast-5",
            "il-central-1",
            "cn-north-1",
            "cn-northwest-1",
            "us-gov-west-1",
            "us-iso-east-1",
            "us-isob-east-1",
            "eu-isoe-west-1",
            "us-isof-south-1",
            "eusc-de-east-1",
        ] {
            assert!(region(good).region_is_well_formed(), "{good}");
        }
        for bad in [
            "US-EAST-1",
            "us-east",
            "us-east-123",
            "us-east-1\u{1b}[2J",
            "us_east_1",
            "us--east-1",
            "us-east-1-",
            "-us-east-1",
            "u-east-1",
            "useast-east-1",
            "us-east-1.evil.example",
            "localhost",
            "us-\u{e9}ast-1",
            "us-eastaaaaaaaaaaaaaaaaaaaaaaaaaaa-1",
        ] {
            assert!(!region(bad).region_is_well_formed(), "{bad:?}");
        }
    }

    /// A discovery keyring whose calls, if any were made, go to a closed loopback port.
    fn offline_discovery() -> KmsKeyring {
        let config = SdkConfig::builder()
            .region(Region::new("us-east-1"))
            .endpoint_url("http://127.0.0.1:9")
            .behavior_version(BehaviorVersion::latest())
            .build();
        KmsKeyring::builder()
            .sdk_config(config)
            .discovery(None)
            .build()
            .unwrap()
    }

    #[test]
    fn the_client_map_keeps_at_most_its_bound() {
        let keyring = offline_discovery();
        let regions: Vec<String> = (1..=KmsKeyring::MAX_REGION_CLIENTS + 9)
            .map(|n| format!("xx-test-{n}"))
            .collect();
        for r in &regions {
            keyring.client(Some(r));
        }
        assert_eq!(keyring.client_count(), KmsKeyring::MAX_REGION_CLIENTS);
        assert!(!keyring.has_client(&regions[0]), "the oldest went first");
        // Held now, oldest first: regions[9..]. Use the oldest again, then add a new one: the
        // least recently used (regions[10]) goes, not the one just used.
        let (touched, next_oldest) = (&regions[9], &regions[10]);
        keyring.client(Some(touched));
        keyring.client(Some("xx-test-new-1"));
        assert_eq!(keyring.client_count(), KmsKeyring::MAX_REGION_CLIENTS);
        assert!(keyring.has_client(touched), "the Region just used is kept");
        assert!(
            !keyring.has_client(next_oldest),
            "the least recently used is evicted"
        );
        assert!(keyring.has_client("xx-test-new-1"));
    }

    #[test]
    fn a_bad_arn_fails_the_kms_keyring_but_not_a_multi_keyring_s_next_child() {
        #[derive(Debug)]
        struct PlantBadArn;
        #[async_trait::async_trait]
        impl Keyring for PlantBadArn {
            async fn on_encrypt(&self, m: &mut EncryptionMaterials) -> Result<(), Error> {
                m.encrypted_data_keys.push(EncryptedDataKey {
                    provider_id: KMS_PROVIDER_ID.into(),
                    provider_info: b"not an arn".to_vec(),
                    ciphertext: vec![1; 40],
                });
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
        let kms: Arc<dyn Keyring> = Arc::new(offline_discovery());
        let aes: Arc<dyn Keyring> =
            Arc::new(crate::RawAesKeyring::new("ns", "k", &[9; 32]).unwrap());
        let writer = crate::MultiKeyring::new(Some(aes.clone()), vec![Arc::new(PlantBadArn)]);
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
}
