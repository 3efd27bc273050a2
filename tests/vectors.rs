//! The public AWS Encryption SDK test vectors through every adaptor (one-shot, reader, parallel,
//! async, seekable): each positive vector must decrypt to its plaintext in each, each negative
//! one must fail in each. The curated subset in tests/data/esdk-vectors always runs; the full set
//! is found in `ESDK_VECTORS_DIR`, else `../shared/esdk-vectors` (README.md, "Test vectors").

#[path = "support/adaptors.rs"]
mod adaptors;
#[path = "support/vectors.rs"]
mod vectors;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use adaptors::{decrypt_everywhere, encrypt_everywhere, judge, Adaptor, Expect, Shape, Verdict};
use kms_envelope::{CommitmentPolicy, Decryptor, Encryptor};

/// Counts per adaptor, and per vector (a vector passes when every applicable adaptor does).
#[derive(Default)]
struct Tally {
    per_adaptor: BTreeMap<Adaptor, (usize, usize, usize)>,
    passed: usize,
    failed: usize,
    failures: Vec<String>,
    suites: BTreeSet<u16>,
}

impl Tally {
    /// Runs one vector through every adaptor.
    fn run(&mut self, set: &str, case: &vectors::Case) {
        let ciphertext = std::fs::read(&case.ciphertext).expect("ciphertext");
        let plaintext = case
            .plaintext
            .as_ref()
            .map(|p| std::fs::read(p).expect("plaintext"));
        // Legacy suites must decrypt: the vectors are mostly non-committing.
        let dec = Decryptor::new(&*case.keyring)
            .dangerous_commitment_policy(CommitmentPolicy::RequireEncryptAllowDecrypt)
            .expected_context(case.context.clone());
        // A negative vector's header may not parse; it is framed then (all of today's are).
        let shape = Shape::of(&ciphertext).unwrap_or(Shape {
            framed: true,
            signed: false,
        });
        if let Some(suite) = ciphertext.get(1..3).filter(|_| ciphertext[0] == 2) {
            self.suites.insert(u16::from_be_bytes([suite[0], suite[1]]));
        } else if let Some(suite) = ciphertext.get(2..4) {
            self.suites.insert(u16::from_be_bytes([suite[0], suite[1]]));
        }
        let attempts = decrypt_everywhere(&dec, &ciphertext, shape);
        let expect = match &plaintext {
            Some(pt) => Expect::Plaintext(pt),
            None => Expect::Rejected { original: None },
        };
        let mut ok = true;
        for (adaptor, verdict) in judge(&attempts, expect) {
            let counts = self.per_adaptor.entry(adaptor).or_default();
            match verdict {
                Verdict::Pass => counts.0 += 1,
                Verdict::Fail(why) => {
                    counts.1 += 1;
                    ok = false;
                    self.failures
                        .push(format!("{set}/{} {}: {why}", case.name, adaptor.name()));
                }
                Verdict::NotApplicable(_) => counts.2 += 1,
            }
        }
        if ok {
            self.passed += 1;
        } else {
            self.failed += 1;
        }
    }

    fn print(&self, what: &str) {
        for f in self.failures.iter().take(20) {
            println!("FAILED {f}");
        }
        for adaptor in Adaptor::ALL {
            let (p, f, na) = self.per_adaptor.get(&adaptor).copied().unwrap_or_default();
            println!(
                "{what}: {} {p} passed, {f} failed, {na} not applicable",
                adaptor.name()
            );
        }
        println!("{what}: {} passed, {} failed", self.passed, self.failed);
    }
}

/// Every adaptor ran every vector, apart from the seekable reader on non-framed bodies.
fn assert_every_adaptor_ran(tally: &Tally, vectors: usize) {
    for adaptor in Adaptor::ALL {
        let (p, f, na) = tally.per_adaptor.get(&adaptor).copied().unwrap_or_default();
        assert_eq!(p + f + na, vectors, "{}", adaptor.name());
        if adaptor != Adaptor::Seekable && (adaptor != Adaptor::Async || cfg!(feature = "tokio")) {
            assert_eq!(na, 0, "{} skipped vectors", adaptor.name());
        }
    }
}

#[test]
fn esdk_vector_subset() {
    let dir = vectors::subset_dir();
    let mut tally = Tally::default();
    let cases = vectors::cases(&dir, "manifest.json");
    for case in &cases {
        tally.run("subset", case);
    }
    tally.print("esdk vector subset");
    assert_eq!(tally.failed, 0, "{} vectors failed", tally.failed);
    assert_eq!(
        cases.len(),
        148,
        "scripts/curate-vectors.py chose 148 vectors"
    );
    assert_every_adaptor_ran(&tally, cases.len());
    assert_eq!(tally.suites.len(), 11, "every suite: {:?}", tally.suites);
    let negatives = cases.iter().filter(|c| !c.positive()).count();
    assert_eq!(negatives, 11);
}

/// The other way: each subset vector's plaintext, encrypted with its keyring and context through
/// every adaptor that writes, decrypts to the same plaintext. Keyrings that hold only a private
/// RSA key cannot encrypt; they are counted apart.
#[test]
fn esdk_vector_subset_keyrings_encrypt_through_every_adaptor() {
    let dir = vectors::subset_dir();
    let (mut checked, mut cannot) = (0usize, 0usize);
    for case in vectors::cases(&dir, "manifest.json") {
        let Some(path) = &case.plaintext else {
            continue;
        };
        let pt = std::fs::read(path).expect("plaintext");
        let enc = Encryptor::new(&*case.keyring)
            .context(case.context.clone())
            .frame_length(1000);
        let runs = encrypt_everywhere(&enc, &pt);
        if runs.iter().all(|(_, _, r)| r.is_err()) {
            cannot += 1;
            continue;
        }
        let dec = Decryptor::new(&*case.keyring).expected_context(case.context.clone());
        for (adaptor, how, result) in runs {
            let msg =
                result.unwrap_or_else(|e| panic!("{} {}: {how}: {e}", case.name, adaptor.name()));
            assert_eq!(
                dec.decrypt(&msg).expect("decrypts"),
                pt,
                "{} {how}",
                case.name
            );
        }
        checked += 1;
    }
    println!("esdk vector subset: {checked} keyrings encrypted through every adaptor, {cannot} cannot encrypt");
    assert!(checked >= 100, "{checked}");
}

#[test]
fn esdk_vectors() {
    let dir = match vectors::full_set_dir() {
        Err(e) => panic!("{e}"),
        Ok(Some(dir)) => dir,
        Ok(None) => {
            println!(
                "esdk vectors: full set not found; {}=1, so only the subset ran",
                vectors::SKIP_ENV
            );
            return;
        }
    };
    let mut tally = Tally::default();
    let mut total = 0;
    for (set, manifest, positive) in vectors::FULL_SETS {
        let set_dir: &Path = &dir.join(set);
        for case in vectors::cases(set_dir, manifest) {
            assert_eq!(case.positive(), positive, "{set}/{}", case.name);
            tally.run(set, &case);
            total += 1;
        }
    }
    tally.print("esdk vectors");
    assert_eq!(tally.failed, 0, "{} vectors failed", tally.failed);
    assert_eq!(total, 1219, "expected 1,219 vectors");
    assert_every_adaptor_ran(&tally, total);
}

/// The runner reports what it must: a wrong plaintext, or an accepted message expected to
/// fail, fails every adaptor that ran.
#[test]
fn the_runner_reports_failures() {
    let dir = vectors::subset_dir();
    let cases = vectors::cases(&dir, "manifest.json");
    let case = cases
        .iter()
        .find(|c| c.positive())
        .expect("a positive vector");
    let ciphertext = std::fs::read(&case.ciphertext).unwrap();
    let dec = Decryptor::new(&*case.keyring)
        .dangerous_commitment_policy(CommitmentPolicy::RequireEncryptAllowDecrypt)
        .expected_context(case.context.clone());
    let shape = Shape::of(&ciphertext).unwrap();
    let attempts = decrypt_everywhere(&dec, &ciphertext, shape);
    for expect in [
        Expect::Plaintext(b"not the plaintext"),
        Expect::Rejected { original: None },
    ] {
        for (adaptor, verdict) in judge(&attempts, expect) {
            assert!(
                matches!(verdict, Verdict::Fail(_) | Verdict::NotApplicable(_)),
                "{}: {verdict:?}",
                adaptor.name()
            );
        }
    }
}

/// The full set is `ESDK_VECTORS_DIR`, then the folder beside the crate; a named folder that is
/// not there is an error, and so is finding neither, unless the caller opted out by name.
#[test]
fn the_full_set_is_found_or_the_run_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let (there, absent) = (tmp.path().join("there"), tmp.path().join("absent"));
    std::fs::create_dir(&there).unwrap();
    let named = |p: &Path| Some(p.as_os_str().to_owned());
    assert_eq!(
        vectors::locate(named(&there), &absent, false),
        Ok(Some(there.clone()))
    );
    for skip in [false, true] {
        let err = vectors::locate(named(&absent), &there, skip).unwrap_err();
        assert!(
            err.contains(vectors::DIR_ENV) && err.contains("absent"),
            "{err}"
        );
    }
    assert_eq!(
        vectors::locate(None, &there, false),
        Ok(Some(there.clone()))
    );
    assert_eq!(
        vectors::locate(Some("".into()), &there, false),
        Ok(Some(there.clone()))
    );
    let err = vectors::locate(None, &absent, false).unwrap_err();
    assert!(err.contains(vectors::SKIP_ENV), "{err}");
    assert_eq!(vectors::locate(None, &absent, true), Ok(None));
}
