//! No AES-GCM outside `src/crypto/aead.rs`. Its one key type is where the freshness of every
//! (key, IV) pair is watched (the `nonce-guard` mode) and where keys are zeroized; a second way
//! to seal would escape both. Holds in every build: it reads the source.

use std::path::Path;

/// Names only AES or AES-GCM code uses: aws-lc-rs's AEAD and cipher keys, algorithms and
/// calls; the RustCrypto `aes-gcm` crate and its types. Matched as whole identifiers.
const PRIMITIVES: &[&str] = &[
    "aes_gcm",
    "LessSafeKey",
    "UnboundKey",
    "SealingKey",
    "OpeningKey",
    "RandomizedNonceKey",
    "TlsRecordSealingKey",
    "TlsRecordOpeningKey",
    "UnboundCipherKey",
    "EncryptingKey",
    "DecryptingKey",
    "PaddedBlockEncryptingKey",
    "PaddedBlockDecryptingKey",
    "StreamingEncryptingKey",
    "StreamingDecryptingKey",
    "AES_128_GCM",
    "AES_192_GCM",
    "AES_256_GCM",
    "AES_128_GCM_SIV",
    "AES_256_GCM_SIV",
    "AES_128",
    "AES_192",
    "AES_256",
    "Aes128Gcm",
    "Aes192Gcm",
    "Aes256Gcm",
    "AesGcm",
    "assume_unique_for_key",
    "seal_in_place_append_tag",
    "seal_in_place_separate_tag",
    "seal_in_place_scatter",
    "open_separate_gather",
    "open_within",
    "encrypt_inout_detached",
    "decrypt_inout_detached",
    "encrypt_in_place_detached",
    "decrypt_in_place_detached",
];

/// Module paths of aws-lc-rs that hold AES (whitespace removed before matching).
const PATHS: &[&str] = &["aws_lc_rs::aead", "aws_lc_rs::cipher"];

/// The AES-GCM names used in `source`, with their line numbers.
fn uses(source: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (n, line) in source.lines().enumerate() {
        let words = line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
        found.extend(
            words
                .filter(|w| PRIMITIVES.contains(w))
                .map(|w| (n + 1, w.to_owned())),
        );
        let joined: String = line.split_whitespace().collect();
        found.extend(
            PATHS
                .iter()
                .filter(|p| joined.contains(*p))
                .map(|p| (n + 1, p.to_string())),
        );
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn aes_gcm_is_called_only_in_the_aead_module() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let home = src.join("crypto").join("aead.rs");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(
        files.contains(&home),
        "src/crypto/aead.rs moved: update this test"
    );
    let mut outside = Vec::new();
    for file in files.iter().filter(|f| **f != home) {
        let source = std::fs::read_to_string(file).unwrap();
        for (line, name) in uses(&source) {
            outside.push(format!("{}:{line}: {name}", file.display()));
        }
    }
    assert!(
        outside.is_empty(),
        "AES-GCM used outside src/crypto/aead.rs; seal and open through `AeadKey` instead:\n{}",
        outside.join("\n")
    );
}

#[test]
fn the_scan_finds_what_it_looks_for() {
    // The module that may use AES-GCM does, under the names listed.
    let home =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/crypto/aead.rs"))
            .unwrap();
    let names: Vec<String> = uses(&home).into_iter().map(|(_, n)| n).collect();
    for name in [
        "LessSafeKey",
        "UnboundKey",
        "AES_256_GCM",
        "aes_gcm",
        "Aes256Gcm",
    ] {
        assert!(
            names.iter().any(|n| n == name),
            "{name} not found in aead.rs"
        );
    }
    assert_eq!(
        uses("use aws_lc_rs :: aead::Aad;\nlet k = aes_gcm::Aes256Gcm::new(&key);").len(),
        3
    );
    // Calls through the one key type, and suite names, are not AES-GCM primitives.
    assert!(uses("key.seal_in_place(&iv, aad, &mut buf)?; // AES_256_GCM_IV12_TAG16").is_empty());
}
