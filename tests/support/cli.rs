//! The real `kms-envelope` binary aimed at moto (or at a proxy in front of it), with static test
//! credentials and nothing from the environment that could send it elsewhere.

use std::path::Path;
use std::process::{Command as StdCommand, Output};

use assert_cmd::Command;

/// The binary as a plain `std` command, for tests that spawn it and kill it.
pub fn std_cli_at(endpoint: &str) -> StdCommand {
    let mut c = StdCommand::new(assert_cmd::cargo::cargo_bin("kms-envelope"));
    c.env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_ENDPOINT_URL_KMS")
        .arg("--endpoint-url")
        .arg(endpoint);
    c
}

/// The binary aimed at `endpoint`.
pub fn cli_at(endpoint: &str) -> Command {
    Command::from_std(std_cli_at(endpoint))
}

/// The binary aimed at this test binary's moto.
pub fn cli() -> Command {
    cli_at(&super::moto().endpoint())
}

/// What a command wrote on standard error, as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `c` with `args` then `-i input -o output` and returns what it did.
pub fn run_io(mut c: Command, args: &[&str], input: &Path, output: &Path) -> Output {
    c.args(args)
        .arg("-i")
        .arg(input)
        .arg("-o")
        .arg(output)
        .output()
        .unwrap()
}

/// As [`run_io`], and asserts that the command succeeded; returns its standard error.
pub fn run_io_ok(c: Command, args: &[&str], input: &Path, output: &Path) -> String {
    let out = run_io(c, args, input, output);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    stderr(&out)
}
