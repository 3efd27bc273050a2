//! Decrypts the public AWS Encryption SDK test vectors (`../shared/esdk-vectors`, or
//! `ESDK_VECTORS_DIR`): every positive vector one-shot and streaming with read sizes 1, 7 and
//! 4096, and every known-bad vector must fail.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use kms_envelope::{
    CommitmentPolicy, Decryptor, EncryptionContext, Keyring, MultiKeyring, RawAesKeyring,
    RawRsaKeyring, RsaPadding,
};
use serde_json::Value;

fn vectors_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("ESDK_VECTORS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/esdk-vectors"));
    dir.is_dir().then_some(dir)
}

fn load_json(path: &Path) -> Value {
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

/// Builds the keyring a key description names.
fn keyring(desc: &Value, keys: &Value) -> Arc<dyn Keyring> {
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

struct Case {
    name: String,
    ciphertext: PathBuf,
    plaintext: Option<PathBuf>,
    keyring: Arc<dyn Keyring>,
    context: EncryptionContext,
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

fn cases(set: &Path, manifest: &str) -> Vec<Case> {
    let manifest = load_json(&set.join(manifest));
    let keys = load_json(&file_uri(set, manifest["keys"].as_str().expect("keys")));
    let mut out = Vec::new();
    for (name, test) in manifest["tests"].as_object().expect("tests") {
        let case = if let Some(s) = test.get("decryption-scenario") {
            Case {
                name: name.clone(),
                ciphertext: file_uri(set, s["ciphertext"].as_str().expect("ct")),
                plaintext: Some(file_uri(set, s["result"].as_str().expect("result"))),
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

/// A reader that hands out at most `n` bytes per call, to exercise incremental parsing.
struct Trickle<'a>(&'a [u8], usize);

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.0.len().min(buf.len()).min(self.1);
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

fn decrypt_all_ways(case: &Case, ciphertext: &[u8]) -> Result<Vec<u8>, String> {
    let dec = Decryptor::new(&*case.keyring)
        .dangerous_commitment_policy(CommitmentPolicy::RequireEncryptAllowDecrypt)
        .expected_context(case.context.clone());
    let one_shot = dec
        .decrypt(ciphertext)
        .map_err(|e| format!("one-shot: {e}"))?;
    for size in [1usize, 7, 4096] {
        let mut reader = dec
            .reader(Trickle(ciphertext, size))
            .map_err(|e| format!("stream {size}: {e}"))?;
        let mut out = Vec::new();
        let mut chunk = vec![0u8; size];
        loop {
            let n = reader
                .read(&mut chunk)
                .map_err(|e| format!("stream {size}: {e}"))?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&chunk[..n]);
        }
        if out != one_shot {
            return Err(format!("stream {size}: plaintext differs from one-shot"));
        }
    }
    let mut reader = dec
        .clone()
        .dangerous_release_unverified_signed_frames(true)
        .reader(Trickle(ciphertext, 7))
        .map_err(|e| format!("early release: {e}"))?;
    let mut out = Vec::new();
    reader
        .read_to_end(&mut out)
        .map_err(|e| format!("early release: {e}"))?;
    if out != one_shot {
        return Err("early release: plaintext differs".into());
    }
    Ok(one_shot)
}

#[test]
fn esdk_vectors() {
    let Some(dir) = vectors_dir() else {
        println!("esdk vectors: folder not found (set ESDK_VECTORS_DIR); skipped");
        assert!(
            std::env::var_os("CI").is_none(),
            "CI needs the ESDK vectors beside the clone"
        );
        return;
    };
    let sets = [
        ("legacy-python-1.3.0", "manifest.json", true),
        ("net-4.0.1", "offline-manifest.json", true),
        ("net-4.0.0-valid", "offline-manifest.json", true),
        ("dafny-4.1.0", "offline-manifest.json", true),
        ("net-4.0.0-invalid", "offline-negative-manifest.json", false),
    ];
    let (mut passed, mut failed) = (0usize, 0usize);
    let mut failures = Vec::new();
    let mut counts = HashMap::new();
    for (set, manifest, positive) in sets {
        let set_dir = dir.join(set);
        for case in cases(&set_dir, manifest) {
            let ciphertext = std::fs::read(&case.ciphertext).expect("ciphertext");
            let result = decrypt_all_ways(&case, &ciphertext);
            let ok = match (&result, positive, &case.plaintext) {
                (Ok(pt), true, Some(path)) => *pt == std::fs::read(path).expect("plaintext"),
                (Err(_), false, _) => true,
                _ => false,
            };
            *counts.entry(set).or_insert(0usize) += 1;
            if ok {
                passed += 1;
            } else {
                failed += 1;
                failures.push(format!(
                    "{set}/{}: {:?}",
                    case.name,
                    result.map(|p| p.len())
                ));
            }
        }
    }
    for f in failures.iter().take(20) {
        println!("FAILED {f}");
    }
    println!("per set: {counts:?}");
    println!("esdk vectors: {passed} passed, {failed} failed");
    assert_eq!(failed, 0, "{} vectors failed", failed);
    assert_eq!(passed, 1219, "expected 1,219 vectors");
}
