//! The public AWS Encryption SDK test vectors: where the full set and the curated subset are,
//! their manifests and keys files, and the keyring each key description names.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use kms_envelope::{
    EncryptionContext, Keyring, MultiKeyring, RawAesKeyring, RawRsaKeyring, RsaPadding,
};
use serde_json::Value;

/// Names a folder holding the full set; one that does not exist is an error, not a skip.
pub const DIR_ENV: &str = "ESDK_VECTORS_DIR";
/// Set to 1, a run without the full set passes on the subset alone.
pub const SKIP_ENV: &str = "KMS_ENVELOPE_SKIP_VECTORS";

/// The sets of the full folder: (folder, manifest, whether its vectors must decrypt).
pub const FULL_SETS: [(&str, &str, bool); 5] = [
    ("legacy-python-1.3.0", "manifest.json", true),
    ("net-4.0.1", "offline-manifest.json", true),
    ("net-4.0.0-valid", "offline-manifest.json", true),
    ("dafny-4.1.0", "offline-manifest.json", true),
    ("net-4.0.0-invalid", "offline-negative-manifest.json", false),
];

/// The curated subset in the repository (`scripts/curate-vectors.py` writes it).
pub fn subset_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/esdk-vectors")
}

/// The full set: `ESDK_VECTORS_DIR`, else `../shared/esdk-vectors` beside the crate.
///
/// # Errors
/// As [`locate`].
pub fn full_set_dir() -> Result<Option<PathBuf>, String> {
    locate(
        std::env::var_os(DIR_ENV),
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/esdk-vectors"),
        std::env::var_os(SKIP_ENV).is_some_and(|v| v == "1"),
    )
}

/// Where the full set is, from the value of `ESDK_VECTORS_DIR` and the folder beside the crate:
/// `Ok(None)` only when neither is there and `skip` (`KMS_ENVELOPE_SKIP_VECTORS=1`) says so.
///
/// # Errors
/// `ESDK_VECTORS_DIR` names a folder that does not exist (a typo must not pass as a skip), or
/// neither folder is there and the caller did not opt out.
pub fn locate(
    env: Option<std::ffi::OsString>,
    beside: &Path,
    skip: bool,
) -> Result<Option<PathBuf>, String> {
    if let Some(dir) = env.filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        return if dir.is_dir() {
            Ok(Some(dir))
        } else {
            Err(format!(
                "{DIR_ENV}={} is not a folder: point it at the ESDK vectors (README.md, \"Test vectors\")",
                dir.display()
            ))
        };
    }
    if beside.is_dir() {
        Ok(Some(beside.to_path_buf()))
    } else if skip {
        Ok(None)
    } else {
        Err(format!(
            "the full ESDK vector set is not at {}: set {DIR_ENV} to its folder (README.md, \
             \"Test vectors\"), or {SKIP_ENV}=1 to run the curated subset alone",
            beside.display()
        ))
    }
}

pub fn load_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn file_uri(set: &Path, uri: &str) -> PathBuf {
    set.join(uri.strip_prefix("file://").expect("file:// URI"))
}

fn material(key: &Value) -> String {
    match &key["material"] {
        Value::String(s) => s.clone(),
        Value::Array(lines) => {
            let sep = key["line-separator"].as_str().unwrap_or("\n");
            lines
                .iter()
                .map(|l| l.as_str().expect("line"))
                .collect::<Vec<_>>()
                .join(sep)
        }
        other => panic!("unexpected material {other}"),
    }
}

fn padding(desc: &Value) -> RsaPadding {
    match (
        desc["padding-algorithm"].as_str(),
        desc["padding-hash"].as_str(),
    ) {
        (Some("pkcs1"), _) => RsaPadding::Pkcs1,
        (Some("oaep-mgf1"), Some("sha1")) => RsaPadding::OaepSha1,
        (Some("oaep-mgf1"), Some("sha256")) => RsaPadding::OaepSha256,
        (Some("oaep-mgf1"), Some("sha384")) => RsaPadding::OaepSha384,
        (Some("oaep-mgf1"), Some("sha512")) => RsaPadding::OaepSha512,
        other => panic!("unknown padding {other:?}"),
    }
}

/// Builds the keyring a key description names, from the keys file's entries.
pub fn keyring(desc: &Value, keys: &Value) -> Arc<dyn Keyring> {
    match desc["type"].as_str().expect("type") {
        "raw" => {
            let entry = &keys["keys"][desc["key"].as_str().expect("key")];
            let name = entry["key-id"]
                .as_str()
                .or(desc["key"].as_str())
                .expect("key name");
            let namespace = desc["provider-id"].as_str().expect("provider-id");
            let text = material(entry);
            match desc["encryption-algorithm"].as_str() {
                Some("aes") => {
                    let key = base64::engine::general_purpose::STANDARD
                        .decode(text.trim())
                        .expect("base64 key");
                    Arc::new(RawAesKeyring::new(namespace, name, &key).expect("aes keyring"))
                }
                Some("rsa") => {
                    let (public, private) = match entry["type"].as_str() {
                        Some("private") => (None, Some(text.as_str())),
                        _ => (Some(text.as_str()), None),
                    };
                    Arc::new(
                        RawRsaKeyring::new(namespace, name, padding(desc), public, private)
                            .expect("rsa keyring"),
                    )
                }
                other => panic!("unknown algorithm {other:?}"),
            }
        }
        "multi-keyring" => {
            let generator = desc
                .get("generator")
                .filter(|g| !g.is_null())
                .map(|g| keyring(g, keys));
            let children = desc["childKeyrings"]
                .as_array()
                .map(|c| c.iter().map(|d| keyring(d, keys)).collect())
                .unwrap_or_default();
            Arc::new(MultiKeyring::new(generator, children).expect("multi"))
        }
        "required-encryption-context-cmm" => keyring(&desc["underlying"], keys),
        other => panic!("unsupported key description {other}"),
    }
}

/// One decrypt vector. `plaintext` is `None` for a vector that must fail.
pub struct Case {
    pub name: String,
    pub ciphertext: PathBuf,
    pub plaintext: Option<PathBuf>,
    pub keyring: Arc<dyn Keyring>,
    pub context: EncryptionContext,
}

impl Case {
    pub fn positive(&self) -> bool {
        self.plaintext.is_some()
    }
}

fn context_of(v: &Value) -> EncryptionContext {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().expect("string").to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// The tests of an `awses-decrypt` manifest (v1 to v5: `master-keys` or
/// `decryption-scenario` tests, both may appear in one manifest), sorted by name.
pub fn cases(set: &Path, manifest: &str) -> Vec<Case> {
    let manifest = load_json(&set.join(manifest));
    let keys = load_json(&file_uri(set, manifest["keys"].as_str().expect("keys")));
    let mut out = Vec::new();
    for (name, test) in manifest["tests"].as_object().expect("tests") {
        let case = if let Some(s) = test.get("decryption-scenario") {
            let positive = s["type"].as_str().is_none_or(|t| t == "positive-esdk");
            Case {
                name: name.clone(),
                ciphertext: file_uri(set, s["ciphertext"].as_str().expect("ct")),
                plaintext: positive.then(|| file_uri(set, s["result"].as_str().expect("result"))),
                keyring: keyring(&s["decryptKeyDescription"], &keys),
                context: context_of(&s["reproduced-encryption-context"]),
            }
        } else {
            let rings: Vec<_> = test["master-keys"]
                .as_array()
                .expect("master-keys")
                .iter()
                .map(|d| keyring(d, &keys))
                .collect();
            let keyring: Arc<dyn Keyring> = if rings.len() == 1 {
                rings.into_iter().next().expect("one")
            } else {
                Arc::new(MultiKeyring::new(None, rings).expect("multi"))
            };
            let plaintext = test["result"]["output"]["plaintext"]
                .as_str()
                .or(test["plaintext"].as_str())
                .map(|p| file_uri(set, p));
            Case {
                name: name.clone(),
                ciphertext: file_uri(set, test["ciphertext"].as_str().expect("ct")),
                plaintext,
                keyring,
                context: context_of(&test["encryption-context"]),
            }
        };
        out.push(case);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}
