//! Cryptographic primitives: the AEAD backend, key derivation and commitment, signatures.
//! Nothing here parses bytes or talks to a keyring.

mod aead;
pub(crate) mod kdf;
pub(crate) mod signature;

pub use aead::AeadBackend;
pub(crate) use aead::AeadKey;

/// Fills `buf` from the operating system's CSPRNG (`getrandom(2)` on Linux). Not through
/// AWS-LC's generator: its first use in a process collects CPU-jitter entropy for ~35 ms (90%
/// of the time a command-line encryption of a small file took), and the kernel's generator is
/// the same source AWS-LC seeds from.
pub(crate) fn random_bytes(buf: &mut [u8]) -> Result<(), crate::Error> {
    getrandom::fill(buf)
        .map_err(|_| crate::Error::Crypto("the system random number generator failed"))
}

/// For tests of the `nonce-guard` mode, which must see the process abort: a test runs itself
/// again in a child process, which finds the case to run in an environment variable.
#[cfg(all(test, unix, feature = "nonce-guard"))]
pub(crate) mod guard_child {
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Output};

    const CASE: &str = "KMS_ENVELOPE_GUARD_CASE";

    /// The case to run, in a child started by [`run`].
    pub(crate) fn case() -> Option<String> {
        std::env::var(CASE).ok()
    }

    /// Runs test `name` of `module` (its `module_path!()`) in a child that sees `case`.
    pub(crate) fn run(module: &str, name: &str, case: &str) -> Output {
        // libtest names a test by its path without the crate's name. Output stays captured:
        // the guard must reach stderr all the same.
        let module = module.split_once("::").map_or("", |(_, m)| m);
        Command::new(std::env::current_exe().unwrap())
            .args([&format!("{module}::{name}"), "--exact"])
            .env(CASE, case)
            .output()
            .unwrap()
    }

    /// Asserts that the child died of SIGABRT after the guard said the pair was `earlier`
    /// ("sealed" or "opened") before.
    pub(crate) fn assert_aborted(out: &Output, earlier: &str) {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.signal(), Some(6), "SIGABRT expected\n{stderr}");
        let said = format!("this process {earlier} that pair before");
        assert!(
            stderr.contains("kms-envelope nonce-guard: AES-GCM key") && stderr.contains(&said),
            "{stderr}"
        );
    }

    /// Asserts that the child ran its one test to the end.
    pub(crate) fn assert_passed(out: &Output) {
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{stdout}"
        );
    }
}
