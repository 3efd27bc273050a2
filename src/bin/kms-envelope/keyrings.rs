//! Keyrings from command-line arguments: KMS keys, raw AES keys, discovery.

use std::path::Path;
use std::sync::Arc;

use kms_envelope::keyring::{DiscoveryFilter, KmsKeyring};
use kms_envelope::{Keyring, MultiKeyring, RawAesKeyring};

use crate::args::{strip_file_uri, AwsArgs, KeyArgs};
use crate::exit::{failure, io_failure, usage, Failure};
use crate::files::inspect::hex;

/// The namespace, name and key of a `NAMESPACE:NAME:FILE` raw AES key argument.
fn read_raw_key(spec: &str) -> Result<(&str, &str, zeroize::Zeroizing<Vec<u8>>), Failure> {
    let mut parts = spec.splitn(3, ':');
    let (Some(ns), Some(name), Some(file)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(usage(format!(
            "--raw-aes-key {spec:?}: write it as NAMESPACE:NAME:FILE"
        )));
    };
    let path = Path::new(strip_file_uri(file));
    let key = zeroize::Zeroizing::new(
        std::fs::read(path).map_err(|e| io_failure("cannot read raw AES key file", path, e))?,
    );
    if key.len() != 32 {
        return Err(usage(format!(
            "--raw-aes-key: {} holds {} bytes; a raw AES-256 key file holds exactly 32",
            path.display(),
            key.len()
        )));
    }
    Ok((ns, name, key))
}

/// The keyring of a raw AES key argument and its `NAMESPACE:NAME:FINGERPRINT`, for a resume
/// label: the key file's path says nothing of the key in it, and the stored wrapped keys show
/// only namespace and name. Both come from one read of the file (a FIFO or a file replaced in
/// between would give the label another key). The fingerprint is 16 bytes of HMAC-SHA-256
/// under the key of a fixed string, which tells keys apart without revealing anything of them.
fn raw_aes_keyring(spec: &str) -> Result<(RawAesKeyring, String), Failure> {
    use aws_lc_rs::hmac;
    let (ns, name, key) = read_raw_key(spec)?;
    let ring = RawAesKeyring::new(ns, name, &key)
        .map_err(|e| usage(format!("--raw-aes-key {ns}:{name}: {e}")))?;
    let tag = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, &key),
        b"kms-envelope resume label: raw AES key fingerprint v1",
    );
    Ok((ring, format!("{ns}:{name}:{}", hex(&tag.as_ref()[..16]))))
}

/// What the KMS keys of a keyring do.
pub enum KmsMode {
    /// The first key makes the data key, the others wrap it too.
    Encrypt,
    /// The named keys unwrap the data key.
    Decrypt,
    /// Whichever KMS key wrapped the data key, within the filter if there is one.
    Discovery(Option<DiscoveryFilter>),
}

/// One keyring of all the keys in `keys` (a multi-keyring when there are several).
pub fn build_keyring(
    aws: &AwsArgs,
    keys: &KeyArgs,
    mode: KmsMode,
) -> Result<Arc<dyn Keyring>, Failure> {
    build_keyring_fingerprinted(aws, keys, mode).map(|(ring, _)| ring)
}

/// [`build_keyring`], with the fingerprint of each raw AES key (see [`raw_aes_keyring`]).
pub fn build_keyring_fingerprinted(
    aws: &AwsArgs,
    keys: &KeyArgs,
    mode: KmsMode,
) -> Result<(Arc<dyn Keyring>, Vec<String>), Failure> {
    let mut fingerprints = Vec::new();
    let mut rings: Vec<Arc<dyn Keyring>> = Vec::new();
    let discovery = matches!(mode, KmsMode::Discovery(_));
    if !keys.keys.is_empty() || discovery {
        let mut b = KmsKeyring::builder();
        if let Some(r) = &aws.region {
            b = b.region(r);
        }
        if let Some(u) = &aws.endpoint_url {
            b = b.endpoint_url(u);
        }
        if let Some(p) = &aws.profile {
            b = b.profile(p);
        }
        match mode {
            KmsMode::Discovery(Some(filter)) => b = b.discovery_filter(filter),
            KmsMode::Discovery(None) => b = b.discovery(),
            KmsMode::Encrypt => {
                let mut it = keys.keys.iter();
                if let Some(first) = it.next() {
                    b = b.generator(first);
                }
                for k in it {
                    b = b.key(k);
                }
            }
            KmsMode::Decrypt => {
                for k in &keys.keys {
                    b = b.key(k);
                }
            }
        }
        rings.push(Arc::new(b.build().map_err(|e| failure("KMS keyring", e))?));
    }
    for spec in &keys.raw_aes_keys {
        let (ring, fingerprint) = raw_aes_keyring(spec)?;
        rings.push(Arc::new(ring));
        fingerprints.push(fingerprint);
    }
    let ring: Arc<dyn Keyring> = match rings.len() {
        0 => return Err(usage("name a key: --key KEY (KMS), --raw-aes-key NAMESPACE:NAME:FILE, or --discovery --account ID to decrypt")),
        1 => rings.pop().expect("one"),
        _ => {
            let generator = rings.remove(0);
            Arc::new(MultiKeyring::new(Some(generator), rings).map_err(|e| failure("keyring", e))?)
        }
    };
    Ok((ring, fingerprints))
}

/// `NAMESPACE:NAME` of a `NAMESPACE:NAME:FILE` raw key argument.
pub fn raw_spec_name(spec: &str) -> Option<&str> {
    let (ns, rest) = spec.split_once(':')?;
    let (name, _) = rest.split_once(':')?;
    Some(&spec[..ns.len() + 1 + name.len()])
}
