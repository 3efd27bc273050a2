//! Messages written here decrypt with the independent Python reference decrypter shipped with
//! the vectors (`esdk-vectors/tools/esdk_parse.py`), for every suite, several frame lengths, raw
//! AES and raw RSA wrapping, stored and required-only context.

#[path = "support/vectors.rs"]
mod vectors;

use std::path::PathBuf;
use std::process::Command;

use base64::Engine;
use kms_envelope::{
    AlgorithmSuite, CommitmentPolicy, EncryptionContext, Encryptor, Keyring, RawAesKeyring,
    RawRsaKeyring, RsaPadding,
};
use serde_json::json;

/// The full vector set holds the reference decrypter (`tools/`); the same lookup and opt-out
/// as the vectors test.
fn vectors_dir() -> Option<PathBuf> {
    let dir = vectors::full_set_dir().unwrap_or_else(|e| panic!("{e}"))?;
    let tool = dir.join("tools/esdk_parse.py");
    assert!(tool.is_file(), "{} is missing", tool.display());
    Some(dir)
}

const CHECK: &str = r#"
import sys, json, base64
sys.path.insert(0, sys.argv[1])
import esdk_parse as E
cases = json.load(open(sys.argv[2]))
ok = 0
for c in cases:
    b = open(c["ct"], "rb").read()
    h = E.parse_header(b)
    full = dict(h["ec"]); full.update(c["required"])
    if c["wrap"] == "aes":
        pdk = E.raw_aes_unwrap(h, base64.b64decode(c["key"]), c["name"], c["ns"], full)
    else:
        pdk = E.raw_rsa_unwrap(h, c["key"], c["name"], c["ns"], "oaep-mgf1", "sha256")
    out, _ = E.decrypt_message(b, pdk, c["required"])
    assert out == open(c["pt"], "rb").read(), c["ct"]
    ok += 1
print("reference decrypter:", ok, "passed, 0 failed")
"#;

#[test]
fn reference_decrypter_reads_our_messages() {
    let Some(dir) = vectors_dir() else {
        println!(
            "reference decrypter: {}=1 and no vector set, skipped",
            vectors::SKIP_ENV
        );
        return;
    };
    let keys: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("dafny-4.1.0/keys.json")).unwrap())
            .unwrap();
    let rsa_pem = keys["keys"]["rsa-4096-private"]["material"]
        .as_str()
        .unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let aes_key = [0x5Au8; 32];
    let aes = RawAesKeyring::new("ref-ns", "ref-key", &aes_key).unwrap();
    let rsa = RawRsaKeyring::new(
        "ref-rsa",
        "rsa-4096",
        RsaPadding::OaepSha256,
        None,
        Some(rsa_pem),
    )
    .unwrap();
    let mut cases = Vec::new();
    for (i, suite) in AlgorithmSuite::ALL.into_iter().enumerate() {
        let policy = if suite.is_committing() {
            CommitmentPolicy::RequireEncryptRequireDecrypt
        } else {
            CommitmentPolicy::ForbidEncryptAllowDecrypt
        };
        for (j, (frame, len)) in [(1u32, 5usize), (512, 10_240), (4096, 3000), (65_536, 0)]
            .into_iter()
            .enumerate()
        {
            let use_rsa = (i + j) % 3 == 0;
            let required = j % 2 == 1;
            let keyring: &dyn Keyring = if use_rsa { &rsa } else { &aes };
            let context = EncryptionContext::new()
                .with("purpose", "reference")
                .with("unicode_key_ловие", "v");
            let mut enc = Encryptor::new(keyring)
                .suite(suite)
                .dangerous_commitment_policy(policy)
                .frame_length(frame)
                .context(context);
            if required {
                enc = enc.require_context_keys(["purpose"]);
            }
            let pt: Vec<u8> = (0..len).map(|k| (k * 31 + i) as u8).collect();
            let msg = enc.encrypt(&pt).unwrap();
            let name = format!("{:04x}-{frame}-{len}", suite.id());
            let (ct_path, pt_path) = (tmp.path().join(&name), tmp.path().join(name + ".pt"));
            std::fs::write(&ct_path, &msg).unwrap();
            std::fs::write(&pt_path, &pt).unwrap();
            cases.push(json!({
                "ct": ct_path, "pt": pt_path,
                "wrap": if use_rsa { "rsa" } else { "aes" },
                "key": if use_rsa { rsa_pem.to_owned() }
                       else { base64::engine::general_purpose::STANDARD.encode(aes_key) },
                "name": if use_rsa { "rsa-4096" } else { "ref-key" },
                "ns": if use_rsa { "ref-rsa" } else { "ref-ns" },
                "required": if required { json!({"purpose": "reference"}) } else { json!({}) },
            }));
        }
    }
    let manifest = tmp.path().join("cases.json");
    std::fs::write(&manifest, serde_json::to_vec(&cases).unwrap()).unwrap();
    let out = Command::new("python3")
        .arg("-c")
        .arg(CHECK)
        .arg(dir.join("tools"))
        .arg(&manifest)
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "the reference decrypter refused a message"
    );
    assert!(
        stdout.contains(&format!("{} passed", cases.len())),
        "{stdout}"
    );
}
