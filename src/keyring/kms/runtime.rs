//! The keyring's own tokio runtime, which drives every KMS call, and its bounded set of
//! per-Region clients.

use std::future::Future;
use std::sync::OnceLock;

use aws_config::Region;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::Client;

use super::{KmsError, KmsKeyring};

/// A dedicated runtime that drives every KMS call, so the keyring works the same from sync
/// code (no runtime at all) and from any async runtime, without blocking a caller's reactor.
pub(super) struct CallRuntime(pub(super) OnceLock<tokio::runtime::Runtime>);

impl CallRuntime {
    pub(super) fn get(&self) -> &tokio::runtime::Runtime {
        self.0.get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("kms-envelope-kms")
                .enable_all()
                .build()
                .expect("a tokio runtime for KMS calls")
        })
    }

    pub(super) async fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> T {
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

impl KmsKeyring {
    /// How many per-Region KMS clients a keyring keeps (the most recently used). In discovery
    /// mode the Region comes from the message, so the number is bounded: a long-running
    /// service cannot be made to hold a client for every name an attacker writes. A client
    /// dropped here is made again when needed; the credentials cache of the AWS configuration
    /// is shared, but its connections may not be (unless the configuration names an HTTP
    /// client), so a service that uses more Regions than this pays for new connections.
    pub const MAX_REGION_CLIENTS: usize = 16;

    /// The client for `region`, or the default Region's for `None`.
    pub(super) fn client(&self, region: Option<&str>) -> Client {
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
    pub(super) fn client_count(&self) -> usize {
        self.0.clients.lock().expect("client map").len()
    }

    /// Whether the keyring holds a client for `region` (without making it more recent).
    #[cfg(test)]
    pub(super) fn has_client(&self, region: &str) -> bool {
        self.0.clients.lock().expect("client map").contains(region)
    }

    /// Sends one KMS request on the keyring's runtime, naming the operation and key on failure.
    pub(super) async fn call<T, E, R>(
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
}

#[cfg(test)]
mod tests {
    use super::super::tests::offline_discovery;
    use super::*;

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
}
