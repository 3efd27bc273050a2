//! The real `kms-envelope` binary against moto: every subcommand, stdin/stdout, every exit
//! code, and the output rules (atomic, never over the input, never a partial file).
#![cfg(feature = "cli")]

mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Command as StdCommand, Stdio};

use serde_json::Value;
use support::cli::{cli, cli_at, std_cli_at};
use support::files::entries;

fn json(out: &[u8]) -> Value {
    serde_json::from_slice(out).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(out)))
}

/// Creates a key with an alias through the CLI and returns (key ID, alias).
fn key_with_alias(dir: &Path, alias: &str) -> String {
    let policy = dir.join("policy.json");
    let out = cli()
        .args(["key", "template", "--account", "123456789012"])
        .args(["--admin", "arn:aws:iam::123456789012:user/admin"])
        .args(["--user", "arn:aws:iam::123456789012:user/app"])
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::write(&policy, &out.stdout).unwrap();
    let created = cli()
        .args(["key", "create", "--policy"])
        .arg(format!("file://{}", policy.display()))
        .args([
            "--tags",
            "TagKey=Name,TagValue=demo_KMS",
            "--description",
            "cli test",
        ])
        .args(["--alias-name", alias])
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    json(&created.stdout)["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn seed_commands_and_round_trip_under_an_alias() {
    let dir = tempfile::tempdir().unwrap();
    let key_id = key_with_alias(dir.path(), "alias/cli-roundtrip");
    // Global flags go anywhere, as with the AWS CLI.
    let listed = cli()
        .args([
            "key",
            "list-aliases",
            "--key-id",
            &key_id,
            "--region",
            "us-east-1",
        ])
        .output()
        .unwrap();
    assert!(listed.status.success());
    assert_eq!(
        json(&listed.stdout)["Aliases"][0]["AliasName"],
        "alias/cli-roundtrip"
    );
    let all = cli()
        .args(["--region", "us-east-1", "key", "list-aliases"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&all.stdout).contains("alias/cli-roundtrip"));
    let described = cli()
        .args(["key", "describe", "--key-id", "alias/cli-roundtrip"])
        .output()
        .unwrap();
    assert_eq!(
        json(&described.stdout)["KeyMetadata"]["KeyId"],
        key_id.as_str()
    );

    let input = dir.path().join("data.bin");
    let pt: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
    std::fs::write(&input, &pt).unwrap();
    let sealed = dir.path().join("data.kms");
    cli()
        .args(["encrypt", "-i"])
        .arg(&input)
        .arg("-o")
        .arg(&sealed)
        .args([
            "--key",
            "alias/cli-roundtrip",
            "-c",
            "purpose=test",
            "-c",
            "owner=ops",
        ])
        .args([
            "--frame-length",
            "4096",
            "--suite",
            "0x0578",
            "--threads",
            "2",
        ])
        .assert()
        .success();
    let inspected = cli().args(["inspect", "-i"]).arg(&sealed).output().unwrap();
    assert!(inspected.status.success());
    let doc = json(&inspected.stdout);
    assert_eq!(doc["AlgorithmSuite"]["Id"], "0x0578");
    assert_eq!(doc["EncryptionContext"]["purpose"], "test");
    assert!(doc["EncryptionContext"]["aws-crypto-public-key"].is_string());
    assert_eq!(doc["EncryptedDataKeys"][0]["ProviderId"], "aws-kms");
    assert!(doc["EncryptedDataKeys"][0]["ProviderInfo"]
        .as_str()
        .unwrap()
        .ends_with(&key_id));
    assert_eq!(doc["FrameLength"], 4096);
    assert_eq!(doc["Frames"], 300_000 / 4096 + 1);
    assert_eq!(doc["PlaintextLength"], 300_000);
    assert_eq!(doc["MessageId"].as_str().unwrap().len(), 64);

    let out = dir.path().join("data.out");
    cli()
        .args(["decrypt", "-i"])
        .arg(&sealed)
        .arg("-o")
        .arg(&out)
        .args([
            "--key",
            "alias/cli-roundtrip",
            "-c",
            "purpose=test",
            "--threads",
            "3",
        ])
        .assert()
        .success();
    assert_eq!(std::fs::read(&out).unwrap(), pt);
    // Discovery, limited to this account, reads it too; another account does not.
    let out2 = dir.path().join("data.out2");
    cli()
        .args(["decrypt", "--discovery", "--account", "123456789012", "-i"])
        .arg(&sealed)
        .arg("-o")
        .arg(&out2)
        .assert()
        .success();
    assert_eq!(std::fs::read(&out2).unwrap(), pt);
    // Discovery without an account filter must be asked for by name, and warns.
    let r = cli()
        .args(["decrypt", "--discovery", "-i"])
        .arg(&sealed)
        .arg("-o")
        .arg(dir.path().join("unfiltered"))
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("--discovery-any-account"));
    assert!(!dir.path().join("unfiltered").exists());
    let any = dir.path().join("any");
    let r = cli()
        .args(["decrypt", "--discovery-any-account", "-i"])
        .arg(&sealed)
        .arg("-o")
        .arg(&any)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(String::from_utf8_lossy(&r.stderr).contains("warning"));
    assert_eq!(std::fs::read(&any).unwrap(), pt);
    let out3 = dir.path().join("data.out3");
    cli()
        .args(["decrypt", "--discovery", "--account", "999999999999", "-i"])
        .arg(&sealed)
        .arg("-o")
        .arg(&out3)
        .assert()
        .code(1);
    assert!(!out3.exists());
}

#[test]
fn stdin_to_stdout_with_a_raw_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("wrap.key");
    std::fs::write(&key, [7u8; 32]).unwrap();
    let spec = format!("backups:key-1:{}", key.display());
    let sealed = cli()
        .args([
            "encrypt",
            "-i",
            "-",
            "-o",
            "-",
            "--raw-aes-key",
            &spec,
            "-c",
            "a=b",
        ])
        .write_stdin(b"piped plaintext".to_vec())
        .output()
        .unwrap();
    assert!(
        sealed.status.success(),
        "{}",
        String::from_utf8_lossy(&sealed.stderr)
    );
    let opened = cli()
        .args(["decrypt", "-i", "-", "-o", "-", "--raw-aes-key", &spec])
        .write_stdin(sealed.stdout.clone())
        .output()
        .unwrap();
    assert!(opened.status.success());
    assert_eq!(opened.stdout, b"piped plaintext");
    let header_only = cli()
        .args(["inspect", "-i", "-"])
        .write_stdin(sealed.stdout)
        .output()
        .unwrap();
    assert_eq!(
        json(&header_only.stdout)["EncryptedDataKeys"][0]["ProviderId"],
        "backups"
    );
    // A key file of the wrong length is a usage error that says so.
    std::fs::write(&key, [7u8; 31]).unwrap();
    let bad = cli()
        .args(["encrypt", "-i", "-", "-o", "-", "--raw-aes-key", &spec])
        .write_stdin(b"x".to_vec())
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("exactly 32"));
}

#[test]
fn exit_codes_and_output_rules() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = d.join("k");
    std::fs::write(&key, [9u8; 32]).unwrap();
    let spec = format!("ns:name:{}", key.display());
    let input = d.join("in.bin");
    std::fs::write(&input, vec![1u8; 100_000]).unwrap();
    let sealed = d.join("in.kms");
    cli()
        .args(["encrypt", "--raw-aes-key", &spec, "-i"])
        .arg(&input)
        .arg("-o")
        .arg(&sealed)
        .assert()
        .success();

    // 2: usage — no key, bad context pair, IN == OUT, existing OUT without --force.
    cli()
        .args(["encrypt", "-o", "x", "-i"])
        .arg(&input)
        .assert()
        .code(2);
    cli()
        .args([
            "encrypt",
            "--raw-aes-key",
            &spec,
            "-c",
            "novalue",
            "-o",
            "x",
            "-i",
        ])
        .arg(&input)
        .assert()
        .code(2);
    let same = cli()
        .args(["encrypt", "--raw-aes-key", &spec, "--force", "-i"])
        .arg(&input)
        .arg("-o")
        .arg(&input)
        .output()
        .unwrap();
    assert_eq!(same.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&same.stderr).contains("is the input"));
    assert_eq!(
        std::fs::read(&input).unwrap(),
        vec![1u8; 100_000],
        "input untouched"
    );
    let exists = cli()
        .args(["encrypt", "--raw-aes-key", &spec, "-i"])
        .arg(&input)
        .arg("-o")
        .arg(&sealed)
        .output()
        .unwrap();
    assert_eq!(exists.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&exists.stderr).contains("--force"));
    cli()
        .args(["encrypt", "--raw-aes-key", &spec, "--force", "-i"])
        .arg(&input)
        .arg("-o")
        .arg(&sealed)
        .assert()
        .success();
    cli().arg("no-such-command").assert().code(2);

    // 1: a corrupted message, a context the message does not carry; no OUT either way.
    let mut bytes = std::fs::read(&sealed).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    let corrupt = d.join("corrupt.kms");
    std::fs::write(&corrupt, &bytes).unwrap();
    let before = entries(d);
    let out = d.join("out.bin");
    let r = cli()
        .args(["decrypt", "--raw-aes-key", &spec, "-i"])
        .arg(&corrupt)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("corrupt.kms"),
        "names the file"
    );
    cli()
        .args([
            "decrypt",
            "--raw-aes-key",
            &spec,
            "-c",
            "purpose=other",
            "-i",
        ])
        .arg(&sealed)
        .arg("-o")
        .arg(&out)
        .assert()
        .code(1);
    assert_eq!(entries(d), before, "no OUT and no temporary file");
    let garbage = d.join("garbage");
    std::fs::write(&garbage, b"this is not a message at all").unwrap();
    let r = cli()
        .args(["inspect", "-i"])
        .arg(&garbage)
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&r.stderr).contains("not a readable message"));

    // 3: KMS — a key that does not exist; a KMS endpoint that does not answer.
    let missing = "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000";
    let r = cli()
        .args(["encrypt", "--key", missing, "-i"])
        .arg(&input)
        .arg("-o")
        .arg(d.join("o3"))
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&r.stderr).contains(missing));
    assert!(!d.join("o3").exists(), "a KMS failure writes no output");
    let dead = format!("http://127.0.0.1:{}", support::free_port());
    cli_at(&dead)
        .args(["encrypt", "--key", missing, "-i"])
        .arg(&input)
        .arg("-o")
        .arg(d.join("o4"))
        .assert()
        .code(3);

    // 4: I/O — a missing input, an unreadable one (a directory) after OUT was opened.
    cli()
        .args(["encrypt", "--raw-aes-key", &spec, "-o", "x", "-i"])
        .arg(d.join("absent"))
        .assert()
        .code(4);
    let before = entries(d);
    cli()
        .args(["encrypt", "--raw-aes-key", &spec, "-i"])
        .arg(d)
        .arg("-o")
        .arg(d.join("o5"))
        .assert()
        .code(4);
    assert_eq!(
        entries(d),
        before,
        "a failed encryption leaves no OUT and no temporary file"
    );
}

#[test]
fn killed_encryption_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    std::fs::write(&key, [3u8; 32]).unwrap();
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let mut child = StdCommand::new(assert_cmd::cargo::cargo_bin("kms-envelope"))
        .args(["encrypt", "-q", "-i", "-", "--raw-aes-key"])
        .arg(format!("ns:n:{}", key.display()))
        .arg("-o")
        .arg(out_dir.join("out.kms"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for _ in 0..64 {
        stdin.write_all(&[5u8; 1 << 16]).unwrap();
    }
    stdin.flush().unwrap();
    // stdin stays open, so the encryption cannot finish: it is killed mid-output, once its
    // staging file holds frames (not after a fixed sleep, which could kill it before it began).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut staged = 0;
    while staged < 1 << 20 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
        staged = staged_bytes(child.id(), &out_dir);
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        staged >= 1 << 20,
        "output had not started: {staged} bytes staged"
    );
    assert!(entries(&out_dir).is_empty(), "left {:?}", entries(&out_dir));
}

/// Bytes in the largest file process `pid` has open in `dir`: its staging file, named or not
/// (an O_TMPFILE shows in /proc as `dir/#inode (deleted)`).
fn staged_bytes(pid: u32, dir: &Path) -> u64 {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    fds.flatten()
        .filter(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target.starts_with(&dir)))
        .filter_map(|fd| std::fs::metadata(fd.path()).ok())
        .map(|m| m.len())
        .max()
        .unwrap_or(0)
}

#[test]
fn key_subcommands() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key_id = key_with_alias(d, "alias/cli-keys");
    cli()
        .args([
            "key",
            "create-alias",
            "--alias-name",
            "alias/cli-keys-2",
            "--target-key-id",
            &key_id,
        ])
        .assert()
        .success();
    let r = cli()
        .args([
            "key",
            "create-alias",
            "--alias-name",
            "bad",
            "--target-key-id",
            &key_id,
        ])
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(2));
    let mine = cli()
        .args(["key", "list-aliases", "--key-id", &key_id])
        .output()
        .unwrap();
    assert_eq!(json(&mine.stdout)["Aliases"].as_array().unwrap().len(), 2);
    cli()
        .args(["key", "disable", "--key-id", &key_id])
        .assert()
        .success();
    let desc = cli()
        .args(["key", "describe", "--key-id", &key_id])
        .output()
        .unwrap();
    assert_eq!(json(&desc.stdout)["KeyMetadata"]["KeyState"], "Disabled");
    cli()
        .args(["key", "enable", "--key-id", &key_id])
        .assert()
        .success();
    let sched = cli()
        .args([
            "key",
            "schedule-deletion",
            "--key-id",
            &key_id,
            "--pending-window-in-days",
            "7",
        ])
        .output()
        .unwrap();
    assert!(json(&sched.stdout)["DeletionDate"].is_string());
    cli()
        .args([
            "key",
            "schedule-deletion",
            "--key-id",
            &key_id,
            "--pending-window-in-days",
            "3",
        ])
        .assert()
        .code(2);
    let cancel = cli()
        .args(["key", "cancel-deletion", "--key-id", &key_id])
        .output()
        .unwrap();
    assert!(json(&cancel.stdout)["KeyId"]
        .as_str()
        .unwrap()
        .ends_with(&key_id));
    let r = cli()
        .args(["key", "describe", "--key-id", "alias/none-such"])
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(3));

    // lint: clean exits 0, warnings exit 1, bad JSON exits 2 with line and column.
    let risky = d.join("risky.json");
    std::fs::write(&risky, r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*"}]}"#).unwrap();
    let r = cli()
        .args(["key", "lint"])
        .arg(format!("file://{}", risky.display()))
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&r.stdout).contains("warning:"));
    let broken = d.join("broken.json");
    std::fs::write(
        &broken,
        "{\n \"Version\": \"2012-10-17\",\n \"Statement\": [\n",
    )
    .unwrap();
    let r = cli().args(["key", "lint"]).arg(&broken).output().unwrap();
    assert_eq!(r.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("line 4"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    // create refuses a risky policy unless told.
    let r = cli()
        .args(["key", "create", "--policy"])
        .arg(format!("file://{}", risky.display()))
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(2));
    cli()
        .args(["key", "create", "--allow-policy-warnings", "--policy"])
        .arg(format!("file://{}", risky.display()))
        .assert()
        .success();
}

#[test]
fn range_reads_and_rewrap() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (old, new) = (d.join("old.key"), d.join("new.key"));
    std::fs::write(&old, [1u8; 32]).unwrap();
    std::fs::write(&new, [2u8; 32]).unwrap();
    let old_spec = format!("ns:old:{}", old.display());
    let new_spec = format!("ns:new:{}", new.display());
    let pt: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let input = d.join("in");
    std::fs::write(&input, &pt).unwrap();
    let sealed = d.join("in.kms");
    cli()
        .args([
            "encrypt",
            "--frame-length",
            "4096",
            "--raw-aes-key",
            &old_spec,
            "-i",
        ])
        .arg(&input)
        .arg("-o")
        .arg(&sealed)
        .assert()
        .success();
    for (range, want) in [
        ("5000-9000", &pt[5000..9000]),
        ("999990-", &pt[999_990..]),
        ("0-0", &pt[0..0]),
        ("4096-8192", &pt[4096..8192]),
    ] {
        let out = cli()
            .args([
                "decrypt",
                "--raw-aes-key",
                &old_spec,
                "--range",
                range,
                "-o",
                "-",
                "-i",
            ])
            .arg(&sealed)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{range}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, want, "{range}");
    }
    cli()
        .args([
            "decrypt",
            "--raw-aes-key",
            &old_spec,
            "--range",
            "10-2000000",
            "-o",
            "-",
            "-i",
        ])
        .arg(&sealed)
        .assert()
        .code(2);
    cli()
        .args([
            "decrypt",
            "--raw-aes-key",
            &old_spec,
            "--range",
            "9-3",
            "-o",
            "-",
            "-i",
        ])
        .arg(&sealed)
        .assert()
        .code(2);

    let rotated = d.join("rotated.kms");
    let done = cli()
        .args([
            "rewrap",
            "--unwrap-raw-aes-key",
            &old_spec,
            "--raw-aes-key",
            &new_spec,
            "--remove-key",
            "ns:old",
            "-i",
        ])
        .arg(&sealed)
        .arg("-o")
        .arg(&rotated)
        .assert()
        .success();
    let err = String::from_utf8_lossy(&done.get_output().stderr);
    assert!(err.contains("wrapped under:\n  ns:new\n"), "{err}");
    // A new message: another message ID, so the body is not the original's.
    let a = std::fs::read(&sealed).unwrap();
    let b = std::fs::read(&rotated).unwrap();
    let body = 244 * (4096 + 32) + 24 + 1_000_000 % 4096 + 16;
    assert_ne!(a[a.len() - body..], b[b.len() - body..]);
    assert_ne!(a[4..36], b[4..36], "a fresh message ID");
    let out = cli()
        .args(["decrypt", "--raw-aes-key", &new_spec, "-o", "-", "-i"])
        .arg(&rotated)
        .output()
        .unwrap();
    assert_eq!(out.stdout, pt);
    cli()
        .args(["decrypt", "--raw-aes-key", &old_spec, "-o", "-", "-i"])
        .arg(&rotated)
        .assert()
        .code(1);
    // No key that can unwrap: exit 1 and no output file.
    let none = d.join("none.kms");
    cli()
        .args([
            "rewrap",
            "--unwrap-raw-aes-key",
            &new_spec,
            "--raw-aes-key",
            &new_spec,
            "-i",
        ])
        .arg(&sealed)
        .arg("-o")
        .arg(&none)
        .assert()
        .code(1);
    assert!(!none.exists());
}

#[test]
fn a_full_output_device_leaves_nothing_and_the_input_intact() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = d.join("k");
    std::fs::write(&key, [6u8; 32]).unwrap();
    let input = d.join("in");
    let pt = vec![0x42u8; 3 << 20];
    std::fs::write(&input, &pt).unwrap();
    let out_dir = d.join("out");
    std::fs::create_dir(&out_dir).unwrap();
    // A 1 MiB file-size limit: writes past it fail (or SIGXFSZ ends the process).
    let status = StdCommand::new("sh")
        .arg("-c")
        .arg(r#"ulimit -f 1024; exec "$@""#)
        .arg("sh")
        .arg(assert_cmd::cargo::cargo_bin("kms-envelope"))
        .args(["encrypt", "-q", "--raw-aes-key"])
        .arg(format!("ns:n:{}", key.display()))
        .arg("-i")
        .arg(&input)
        .arg("-o")
        .arg(out_dir.join("out.kms"))
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!status.status.success());
    assert!(entries(&out_dir).is_empty(), "left {:?}", entries(&out_dir));
    assert_eq!(std::fs::read(&input).unwrap(), pt, "input untouched");
}

fn sh(script: &str) -> StdCommand {
    let mut c = StdCommand::new("sh");
    c.arg("-c").arg(script).arg("sh");
    c
}

/// A raw AES key file in `d` and its `--raw-aes-key` spec.
fn raw_key(d: &Path, byte: u8) -> String {
    let key = d.join(format!("raw-{byte}.key"));
    std::fs::write(&key, [byte; 32]).unwrap();
    format!("ns:name:{}", key.display())
}

fn seal(d: &Path, spec: &str, pt: &[u8], extra: &[&str], name: &str) -> std::path::PathBuf {
    let input = d.join(format!("{name}.pt"));
    std::fs::write(&input, pt).unwrap();
    let sealed = d.join(name);
    cli()
        .args(["encrypt", "-q", "--raw-aes-key", spec])
        .args(extra)
        .arg("-i")
        .arg(&input)
        .arg("-o")
        .arg(&sealed)
        .assert()
        .success();
    sealed
}

/// Decrypts `sealed` into the FIFO `fifo`, with and without `--force`, while a reader is already
/// there (as another local user's would be): each run exits 2 saying `why`, and the reader gets
/// nothing.
fn fifo_output_is_refused(fifo: &Path, spec: &str, sealed: &Path, why: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    for force in [false, true] {
        let mut reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(fifo)
            .unwrap();
        let mut c = std_cli_at(&support::moto().endpoint());
        c.args(["decrypt", "--raw-aes-key", spec, "-i"])
            .arg(sealed)
            .arg("-o")
            .arg(fifo);
        if force {
            c.arg("--force");
        }
        let r = finish_within(&mut c, 10);
        let mut got = Vec::new();
        let _ = std::io::Read::read_to_end(&mut reader, &mut got);
        assert!(got.is_empty(), "the FIFO got {} bytes", got.len());
        assert_eq!(r.status.code(), Some(2), "force {force}");
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(err.contains(why), "{err}");
    }
}

#[test]
fn force_replaces_only_regular_files() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let spec = raw_key(d, 4);
    let pt: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let sealed = seal(d, &spec, &pt, &[], "m.kms");

    // A FIFO is written through, never replaced: its reader gets the plaintext.
    let fifo = d.join("fifo");
    assert!(StdCommand::new("mkfifo")
        .args(["-m", "600"])
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).unwrap())
    };
    let r = cli()
        .args(["decrypt", "--force", "--raw-aes-key", &spec, "-i"])
        .arg(&sealed)
        .arg("-o")
        .arg(&fifo)
        .output()
        .unwrap();
    assert!(
        fifo.symlink_metadata().unwrap().file_type().is_fifo(),
        "the FIFO was replaced"
    );
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(
        reader.join().unwrap(),
        pt,
        "the FIFO's reader got the plaintext"
    );

    // A FIFO nobody reads is refused at once rather than waited on.
    let lonely = d.join("lonely.fifo");
    assert!(StdCommand::new("mkfifo")
        .args(["-m", "600"])
        .arg(&lonely)
        .status()
        .unwrap()
        .success());
    let r = finish_within(
        std_cli_at(&support::moto().endpoint())
            .args(["decrypt", "--raw-aes-key", &spec, "-i"])
            .arg(&sealed)
            .arg("-o")
            .arg(&lonely),
        10,
    );
    assert_eq!(r.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("nobody is reading"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );

    // A FIFO of our own that others may read is refused, --force or not: a reader already
    // there (as another local user's would be) gets nothing.
    let shared = d.join("shared.fifo");
    assert!(StdCommand::new("mkfifo")
        .args(["-m", "644"])
        .arg(&shared)
        .status()
        .unwrap()
        .success());
    fifo_output_is_refused(&shared, &spec, &sealed, "chmod go-r");

    // Decrypts the sealed message to `out`, with or without --force.
    let decrypt_to = |out: &Path, force: bool| {
        let mut c = cli();
        c.args(["decrypt", "--raw-aes-key", &spec, "-i"])
            .arg(&sealed)
            .arg("-o")
            .arg(out);
        if force {
            c.arg("--force");
        }
        c.output().unwrap()
    };
    let root = rustix::process::geteuid().is_root();
    if root {
        // A FIFO another user left at OUT is refused, --force or not: its reader gets nothing.
        let foreign = d.join("foreign.fifo");
        assert!(StdCommand::new("mkfifo")
            .arg(&foreign)
            .status()
            .unwrap()
            .success());
        std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).unwrap();
        fifo_output_is_refused(&foreign, &spec, &sealed, "owned by user 65534");
        assert!(foreign.symlink_metadata().unwrap().file_type().is_fifo());

        // A character device node (the null device's numbers, made here) is written through.
        let node = d.join("null");
        assert!(StdCommand::new("mknod")
            .arg(&node)
            .args(["c", "1", "3"])
            .status()
            .unwrap()
            .success());
        let before = node.symlink_metadata().unwrap();
        for force in [true, false] {
            let r = decrypt_to(&node, force);
            let after = node.symlink_metadata().unwrap();
            assert!(
                after.file_type().is_char_device(),
                "the device was replaced"
            );
            assert_eq!((after.rdev(), after.ino()), (before.rdev(), before.ino()));
            assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        }
    } else {
        eprintln!("not root: the foreign-FIFO and device-node cases are skipped");
    }

    // A symbolic link is refused, --force or not; neither it nor its target changes.
    let target = d.join("target");
    std::fs::write(&target, b"keep me").unwrap();
    let link = d.join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    for force in [true, false] {
        let r = decrypt_to(&link, force);
        assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read_link(&link).unwrap(), target);
        assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
        assert_eq!(r.status.code(), Some(2));
        assert!(
            String::from_utf8_lossy(&r.stderr).contains("symbolic link"),
            "{}",
            String::from_utf8_lossy(&r.stderr)
        );
    }
    // A directory is refused too; a regular file is still replaced with --force.
    let sub = d.join("sub");
    std::fs::create_dir(&sub).unwrap();
    cli()
        .args(["decrypt", "--force", "--raw-aes-key", &spec, "-i"])
        .arg(&sealed)
        .arg("-o")
        .arg(&sub)
        .assert()
        .code(2);
    assert!(sub.is_dir());
    let plain = d.join("plain");
    std::fs::write(&plain, b"old").unwrap();
    cli()
        .args(["decrypt", "--force", "--raw-aes-key", &spec, "-i"])
        .arg(&sealed)
        .arg("-o")
        .arg(&plain)
        .assert()
        .success();
    assert_eq!(std::fs::read(&plain).unwrap(), pt);
}

#[test]
fn force_replaces_a_file_whose_name_is_near_name_max() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let spec = raw_key(d, 5);
    let pt = b"long name".to_vec();
    let sealed = seal(d, &spec, &pt, &[], "n.kms");
    let out = d.join("x".repeat(250));
    std::fs::write(&out, b"old").unwrap();
    let r = cli()
        .args(["decrypt", "--force", "--raw-aes-key", &spec, "-i"])
        .arg(&sealed)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(std::fs::read(&out).unwrap(), pt);
    assert_eq!(
        entries(d).len(),
        4,
        "nothing left beside it: {:?}",
        entries(d)
    );
}

#[test]
fn without_proc_the_output_is_still_committed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let spec = raw_key(d, 6);
    let pt = vec![7u8; 300_000];
    let sealed = seal(d, &spec, &pt, &[], "p.kms");
    // A mount namespace of its own without /proc (root only).
    let usable = rustix::process::geteuid().is_root()
        && StdCommand::new("unshare")
            .args(["-m", "sh", "-c", "umount -l /proc"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if !usable {
        eprintln!("not root or no unshare: the no-/proc case is skipped");
        return;
    }
    let out = d.join("out");
    let mut c = StdCommand::new("unshare");
    c.args(["-m", "sh", "-c", r#"umount -l /proc && exec "$0" "$@""#])
        .arg(std_cli_at(&support::moto().endpoint()).get_program())
        .args(std_cli_at(&support::moto().endpoint()).get_args())
        .args(["decrypt", "-q", "--raw-aes-key", &spec, "-i"])
        .arg(&sealed)
        .arg("-o")
        .arg(&out);
    for (k, v) in std_cli_at(&support::moto().endpoint()).get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    let r = c.output().unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(std::fs::read(&out).unwrap(), pt);
    assert_eq!(entries(d), ["out", "p.kms", "p.kms.pt", "raw-6.key"]);
}

/// Runs `cmd` (stdin closed), failing the test if it is still running after `secs` seconds.
fn finish_within(cmd: &mut StdCommand, secs: u64) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let r = child.wait_with_output().unwrap();
            panic!(
                "still running after {secs} s: {}",
                String::from_utf8_lossy(&r.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Runs `cmd` and polls its peak resident set (VmHWM) until it exits: (status, peak KiB).
fn peak_rss(cmd: &mut StdCommand) -> (std::process::Output, u64) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    loop {
        if let Ok(s) = std::fs::read_to_string(&status) {
            if let Some(kib) = s.lines().find_map(|l| l.strip_prefix("VmHWM:")) {
                let kib = kib
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .unwrap_or(0);
                peak = peak.max(kib);
            }
        }
        if child.try_wait().unwrap().is_some() {
            return (child.wait_with_output().unwrap(), peak);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn same_contents(a: &Path, b: &Path) -> bool {
    use std::io::Read;
    let (mut a, mut b) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = a.read(&mut x).unwrap();
        let mut m = 0;
        while m < n {
            let k = b.read(&mut y[m..n]).unwrap();
            if k == 0 {
                return false;
            }
            m += k;
        }
        if x[..n] != y[..n] {
            return false;
        }
        if n == 0 {
            return b.read(&mut y).unwrap() == 0;
        }
    }
}

#[test]
fn signed_messages_decrypt_file_to_file_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let spec = raw_key(d, 5);
    // 256 MiB of varied bytes.
    let input = d.join("big");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut chunk = vec![0u8; 1 << 20];
        for _ in 0..256 {
            for w in chunk.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                w.copy_from_slice(&x.to_le_bytes());
            }
            f.write_all(&chunk).unwrap();
        }
        f.flush().unwrap();
    }
    let sealed = d.join("big.kms");
    cli()
        .args([
            "encrypt",
            "-q",
            "--suite",
            "0x0578",
            "--raw-aes-key",
            &spec,
            "-i",
        ])
        .arg(&input)
        .arg("-o")
        .arg(&sealed)
        .assert()
        .success();
    let out = d.join("big.out");
    let mut cmd = StdCommand::new(assert_cmd::cargo::cargo_bin("kms-envelope"));
    cmd.args(["decrypt", "-q", "--raw-aes-key", &spec, "-i"])
        .arg(&sealed)
        .arg("-o")
        .arg(&out);
    let (r, peak_kib) = peak_rss(&mut cmd);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(
        peak_kib < 64 << 10,
        "peak RSS {peak_kib} KiB for a 256 MiB signed message"
    );
    assert!(same_contents(&input, &out), "round trip");
    // A bad signature: exit 1, and no OUT.
    let mut bytes = std::fs::read(&sealed).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    std::fs::write(&sealed, &bytes).unwrap();
    drop(bytes);
    let bad = d.join("bad.out");
    cli()
        .args(["decrypt", "-q", "--raw-aes-key", &spec, "-i"])
        .arg(&sealed)
        .arg("-o")
        .arg(&bad)
        .assert()
        .code(1);
    assert!(!bad.exists());
}

#[test]
fn signed_messages_to_streams_and_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let spec = raw_key(d, 6);
    let pt: Vec<u8> = (0..3_000_000u32).map(|i| (i % 247) as u8).collect();
    let sealed = seal(d, &spec, &pt, &["--suite", "0x0578"], "s.kms");
    let mut tampered = std::fs::read(&sealed).unwrap();
    *tampered.last_mut().unwrap() ^= 1;
    let tampered_path = d.join("t.kms");
    std::fs::write(&tampered_path, &tampered).unwrap();
    let run = |msg: &Path, args: &[&str]| {
        cli()
            .args(["decrypt", "-q", "--raw-aes-key", &spec, "-o", "-"])
            .args(args)
            .arg("-i")
            .arg(msg)
            .output()
            .unwrap()
    };
    // To stdout: held up to --max-buffered-size, which the user can raise.
    let r = run(&sealed, &["--max-buffered-size", "1MiB"]);
    assert_eq!(r.status.code(), Some(2));
    assert!(r.stdout.is_empty(), "nothing released");
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains("--max-buffered-size") && err.contains("-o FILE"),
        "{err}"
    );
    let r = run(&sealed, &["--max-buffered-size", "4M"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(r.stdout, pt);
    let r = run(&sealed, &[]);
    assert!(r.status.success(), "the default limit holds 3 MB");
    assert_eq!(r.stdout, pt);
    let r = run(&tampered_path, &[]);
    assert_eq!(r.status.code(), Some(1));
    assert!(r.stdout.is_empty(), "nothing released before the signature");
    // Early release only when asked for by name; a bad signature still fails.
    let r = run(
        &sealed,
        &[
            "--max-buffered-size",
            "1MiB",
            "--dangerous-release-unverified",
        ],
    );
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(r.stdout, pt);
    let r = run(&tampered_path, &["--dangerous-release-unverified"]);
    assert_eq!(r.status.code(), Some(1));
    assert!(r.stdout.len() < pt.len());
    cli()
        .args(["decrypt", "--max-buffered-size", "lots", "-o", "-", "-i"])
        .arg(&sealed)
        .assert()
        .code(2);

    // --range on a signed message verifies the whole signature first.
    for (range, want) in [
        ("1000-5000", &pt[1000..5000]),
        ("2999990-", &pt[2_999_990..]),
        ("0-0", &pt[..0]),
    ] {
        let r = run(&sealed, &["--range", range]);
        assert!(
            r.status.success(),
            "{range}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        assert_eq!(r.stdout, want, "{range}");
        let r = run(&tampered_path, &["--range", range]);
        assert_eq!(r.status.code(), Some(1), "{range}");
        assert!(r.stdout.is_empty());
    }
    assert_eq!(
        run(&sealed, &["--range", "10-3000001"]).status.code(),
        Some(2)
    );
    assert_eq!(
        run(&sealed, &["--range", "3000001-"]).status.code(),
        Some(2)
    );
    let out = d.join("range.out");
    cli()
        .args([
            "decrypt",
            "-q",
            "--raw-aes-key",
            &spec,
            "--range",
            "70000-80000",
            "-i",
        ])
        .arg(&sealed)
        .arg("-o")
        .arg(&out)
        .assert()
        .success();
    assert_eq!(std::fs::read(&out).unwrap(), &pt[70_000..80_000]);
    let out = d.join("range-bad.out");
    cli()
        .args([
            "decrypt",
            "-q",
            "--raw-aes-key",
            &spec,
            "--range",
            "70000-80000",
            "-i",
        ])
        .arg(&tampered_path)
        .arg("-o")
        .arg(&out)
        .assert()
        .code(1);
    assert!(!out.exists());
    // With the dangerous flag, only the frames of the range are read.
    let r = run(
        &tampered_path,
        &["--range", "1000-5000", "--dangerous-release-unverified"],
    );
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(r.stdout, &pt[1000..5000]);
}

/// A keyring that writes whatever wrapped keys it is given: messages an attacker could craft.
#[derive(Debug)]
struct Forged(Vec<kms_envelope::format::EncryptedDataKey>);

#[async_trait::async_trait]
impl kms_envelope::Keyring for Forged {
    async fn on_encrypt(
        &self,
        m: &mut kms_envelope::materials::EncryptionMaterials,
    ) -> Result<(), kms_envelope::Error> {
        m.data_key_or_generate()?;
        m.encrypted_data_keys.extend(self.0.iter().cloned());
        Ok(())
    }
    async fn on_decrypt(
        &self,
        _: &mut kms_envelope::materials::DecryptionMaterials,
        _: &[kms_envelope::format::EncryptedDataKey],
    ) -> Result<(), kms_envelope::Error> {
        Err(kms_envelope::Error::NoUsableDataKey(Vec::new()))
    }
}

/// Bytes a terminal acts on: ESC, the C1 CSI (as UTF-8), BEL, and the right-to-left override.
fn has_terminal_controls(out: &[u8]) -> bool {
    let s = String::from_utf8_lossy(out);
    s.chars()
        .any(|c| (c.is_control() && c != '\n') || ('\u{202a}'..='\u{202e}').contains(&c))
}

#[test]
fn strings_from_a_message_are_escaped_on_the_terminal() {
    use kms_envelope::format::EncryptedDataKey;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let evil = "\x1b[2J\x1b[H\x1b[32mALL GOOD\x07\u{9b}31m\u{202e}\x7f";
    let edk = |id: &str, info: String| EncryptedDataKey {
        provider_id: id.to_owned(),
        provider_info: info.into_bytes(),
        ciphertext: vec![1; 184],
    };
    let keyring = Forged(vec![
        // Another account (outside any filter), with controls in the account and key ID.
        edk(
            "aws-kms",
            format!("arn:aws:kms:us-east-1:999999999999{evil}:key/k{evil}"),
        ),
        // This account, with controls in the Region and key ID: KMS is asked.
        edk(
            "aws-kms",
            format!("arn:aws:kms:us-east-1{evil}:123456789012:key/k{evil}"),
        ),
        edk(&format!("ns{evil}"), format!("name{evil}")),
    ]);
    let context =
        kms_envelope::EncryptionContext::new().with(format!("k{evil}"), format!("v{evil}"));
    let message = kms_envelope::Encryptor::new(&keyring)
        .context(context)
        .encrypt(b"forged")
        .unwrap();
    let msg = d.join("evil.kms");
    std::fs::write(&msg, &message).unwrap();
    let spec = raw_key(d, 8);
    let runs: Vec<(&str, Vec<String>)> = vec![
        (
            "discovery filter",
            vec![
                "--discovery".into(),
                "--account".into(),
                "123456789012".into(),
            ],
        ),
        ("any account", vec!["--discovery-any-account".into()]),
        ("raw key", vec!["--raw-aes-key".into(), spec.clone()]),
        (
            "context",
            vec![
                "--raw-aes-key".into(),
                spec.clone(),
                "-c".into(),
                format!("k{evil}=other{evil}"),
            ],
        ),
    ];
    for (what, args) in runs {
        let r = cli()
            .arg("decrypt")
            .args(&args)
            .arg("-o")
            .arg(d.join("out"))
            .arg("-i")
            .arg(&msg)
            .output()
            .unwrap();
        assert!(!r.status.success(), "{what}");
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!has_terminal_controls(&r.stderr), "{what}: {err:?}");
        // Shown escaped, not dropped (the raw key's error names none of the message's strings);
        // and one real newline ends the message.
        if what != "raw key" {
            assert!(err.contains(r"\u{1b}[2J"), "{what}: {err:?}");
        }
        assert!(
            err.ends_with('\n') && !err.ends_with("\n\n") && !err.contains(r"\u{a}"),
            "{what}: {err:?}"
        );
    }
    // clap's own errors quote the command line: escaped too, and still exit 2.
    let r = cli()
        .args(["decrypt", &format!("--bogus{evil}")])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(2), "{err}");
    assert!(!has_terminal_controls(&r.stderr), "{err:?}");
    assert!(
        err.contains("--bogus") && err.contains(r"\u{202e}"),
        "{err:?}"
    );
    let help = cli().args(["decrypt", "--help"]).output().unwrap();
    assert!(help.status.success() && String::from_utf8_lossy(&help.stdout).contains("Usage"));
    // inspect's JSON escapes them as well, and still reads back as the same strings.
    let r = cli().args(["inspect", "-i"]).arg(&msg).output().unwrap();
    assert!(r.status.success());
    assert!(
        !has_terminal_controls(&r.stdout),
        "{:?}",
        String::from_utf8_lossy(&r.stdout)
    );
    let doc = json(&r.stdout);
    assert_eq!(
        doc["EncryptedDataKeys"][2]["ProviderId"],
        format!("ns{evil}")
    );
    assert_eq!(
        doc["EncryptionContext"][format!("k{evil}")],
        format!("v{evil}")
    );
}

#[test]
fn closed_stdout_modes_and_fifo_inputs() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let spec = raw_key(d, 9);
    let pt = vec![0x5au8; 3 << 20];
    let sealed = seal(d, &spec, &pt, &[], "c.kms");
    let bin = assert_cmd::cargo::cargo_bin("kms-envelope");

    // A reader that has gone: quiet, exit 141 (as SIGPIPE), no panic, for every kind of output.
    let inspect: Vec<String> = vec!["inspect".into(), "-i".into(), sealed.display().to_string()];
    let decrypt: Vec<String> = vec![
        "decrypt".into(),
        "--raw-aes-key".into(),
        spec.clone(),
        "-o".into(),
        "-".into(),
        "-i".into(),
        sealed.display().to_string(),
    ];
    let template: Vec<String> = [
        "key",
        "template",
        "--account",
        "123456789012",
        "--admin",
        "arn:aws:iam::123456789012:user/a",
        "--user",
        "arn:aws:iam::123456789012:user/u",
    ]
    .map(String::from)
    .to_vec();
    for args in [inspect, decrypt, template] {
        // The pipe's only reader is closed before the command starts writing.
        let mut child = sh(r#"sleep 0.3; exec "$@""#)
            .arg(&bin)
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let r = child.wait_with_output().unwrap();
        assert_eq!(
            r.status.code(),
            Some(141),
            "{args:?}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        assert!(r.stderr.is_empty(), "{args:?}: quiet");
    }

    // A closed stdout ends the command even while its input stays open and idle: 100 kB of
    // the message, enough for the first plaintext written (and failing) while the reading
    // thread waits for the rest.
    let mut child = sh(r#"sleep 0.3; exec "$@""#)
        .arg(&bin)
        .args(["decrypt", "--raw-aes-key", &spec, "-o", "-", "-i", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let (done, wait_done) = std::sync::mpsc::channel::<()>();
    let feeder = {
        let (mut stdin, bytes) = (child.stdin.take().unwrap(), std::fs::read(&sealed).unwrap());
        std::thread::spawn(move || {
            let _ = stdin.write_all(&bytes[..100_000]);
            // Open, with nothing more to read, until the test is done with the command.
            let _ = wait_done.recv();
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let finished = child.try_wait().unwrap().is_some();
    if !finished {
        let _ = child.kill();
    }
    done.send(()).unwrap();
    let r = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    assert!(finished, "still running 10 s after its stdout closed");
    assert_eq!(
        r.status.code(),
        Some(141),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(r.stderr.is_empty());

    // A temporary output that cannot be created is an I/O error (4), not a usage error.
    let r = cli()
        .args(["decrypt", "--raw-aes-key", &spec, "-i"])
        .arg(&sealed)
        .arg("-o")
        .arg(d.join("no-such-dir").join("out"))
        .output()
        .unwrap();
    assert_eq!(
        r.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );

    // Outputs are 0600 whatever the umask, replaced ones too; the help says so.
    let fresh = d.join("fresh");
    let replaced = d.join("replaced");
    std::fs::write(&replaced, b"x").unwrap();
    std::fs::set_permissions(&replaced, std::fs::Permissions::from_mode(0o644)).unwrap();
    for (out, force) in [(&fresh, ""), (&replaced, "--force")] {
        let r = sh(r#"umask 000; exec "$@""#)
            .arg(&bin)
            .args(["decrypt", "--raw-aes-key", &spec, "-i"])
            .arg(&sealed)
            .arg("-o")
            .arg(out)
            .args([force].iter().filter(|f| !f.is_empty()))
            .output()
            .unwrap();
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        let mode = std::fs::metadata(out).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600, "{}", out.display());
    }
    let help = cli().args(["decrypt", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("0600"), "{help}");
    assert!(help.contains("mode 0600 and owned by you"), "{help}");
    // It also says what a killed process leaves where there are no unnamed files, and what a
    // signed non-framed body to a stream costs.
    assert!(
        help.contains("left behind") && help.contains("twice this size"),
        "{help}"
    );
    // Any fatal signal, not only SIGKILL, leaves the named file; a shared FIFO is refused.
    assert!(
        help.contains("SIGTERM") && help.contains("chmod go-r"),
        "{help}"
    );

    // --range on a FIFO says IN must be a regular file (and does not wait for a writer).
    let fifo = d.join("in.fifo");
    assert!(StdCommand::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let writer = {
        let (fifo, bytes) = (fifo.clone(), std::fs::read(&sealed).unwrap());
        std::thread::spawn(move || {
            use std::os::unix::fs::OpenOptionsExt;
            // Non-blocking, so that this thread ends even if nobody opens the FIFO to read.
            for _ in 0..100 {
                if let Ok(mut f) = std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
                    .open(&fifo)
                {
                    let _ = f.write_all(&bytes);
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        })
    };
    let r = cli()
        .args([
            "decrypt",
            "--raw-aes-key",
            &spec,
            "--range",
            "0-10",
            "-o",
            "-",
            "-i",
        ])
        .arg(&fifo)
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("regular file"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    writer.join().unwrap();
}

/// Runs `rewrap` with `args` into `dir/out.kms`; returns the exit code, stderr, and whether the
/// output exists.
fn rewrap_into(dir: &Path, args: &[&str], input: &Path) -> (Option<i32>, String, bool) {
    let out = dir.join("out.kms");
    let _ = std::fs::remove_file(&out);
    let r = cli()
        .arg("rewrap")
        .args(args)
        .arg("-i")
        .arg(input)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr).into_owned();
    (r.status.code(), err, out.exists())
}

#[test]
fn rewrap_checks_keys_and_leaves_no_output_for_a_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let spec = |name: &str, byte: u8| {
        let file = d.join(format!("{name}.key"));
        std::fs::write(&file, [byte; 32]).unwrap();
        format!("ns:{name}:{}", file.display())
    };
    let (old, other, new) = (spec("old", 1), spec("other", 2), spec("new", 3));
    let input = d.join("in");
    let pt: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(&input, &pt).unwrap();
    let sealed = d.join("in.kms");
    cli()
        .args(["encrypt", "--frame-length", "4096", "--raw-aes-key", &old])
        .args(["--raw-aes-key", &other, "-i"])
        .arg(&input)
        .arg("-o")
        .arg(&sealed)
        .assert()
        .success();
    let unwrap = ["--unwrap-raw-aes-key", old.as_str()];
    let add = ["--raw-aes-key", new.as_str()];

    // The unwrapping key is named, or discovery is limited to accounts.
    let (code, err, made) = rewrap_into(d, &add, &sealed);
    assert_eq!((code, made), (Some(2), false), "{err}");
    assert!(err.contains("--unwrap-key"), "{err}");
    let (code, _, made) = rewrap_into(d, &["--discovery", "--raw-aes-key", &new], &sealed);
    assert_eq!((code, made), (Some(2), false));

    // --remove-key matches exactly, and a name that matches nothing is an error.
    for wrong in ["ns", "ns:ol", "ns:old:x", "old"] {
        let (code, err, made) = rewrap_into(
            d,
            &[&unwrap[..], &add[..], &["--remove-key", wrong]].concat(),
            &sealed,
        );
        assert_eq!((code, made), (Some(2), false), "{wrong}: {err}");
        assert!(err.contains("ns:old, ns:other"), "{err}");
    }
    // A kept raw key must be supplied: ns:other is neither removed nor given.
    let (code, err, made) = rewrap_into(d, &[&unwrap[..], &add[..]].concat(), &sealed);
    assert_eq!((code, made), (Some(2), false), "{err}");
    assert!(err.contains("raw key ns:other"), "{err}");
    // Remove it, keep ns:old (its unwrapping key wraps the new data key), add ns:new.
    let (code, err, made) = rewrap_into(
        d,
        &[&unwrap[..], &add[..], &["--remove-key", "ns:other"]].concat(),
        &sealed,
    );
    assert_eq!((code, made), (Some(0), true), "{err}");
    assert!(
        err.contains("wrapped under:\n  ns:new\n  ns:old\n"),
        "{err}"
    );
    let rotated = d.join("rotated.kms");
    std::fs::rename(d.join("out.kms"), &rotated).unwrap();
    for (key, code) in [(&old, 0), (&new, 0), (&other, 1)] {
        let out = cli()
            .args(["decrypt", "--raw-aes-key", key, "-o", "-", "-i"])
            .arg(&rotated)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(code), "{key}");
        if code == 0 {
            assert_eq!(out.stdout, pt);
        }
    }

    // A bad input leaves no output: truncated, a bit flipped in the final frame, trailing
    // bytes, a bad signature.
    let msg = std::fs::read(&sealed).unwrap();
    let signed_in = d.join("signed.kms");
    cli()
        .args(["encrypt", "--suite", "0x0578", "--raw-aes-key", &old, "-i"])
        .arg(&input)
        .arg("-o")
        .arg(&signed_in)
        .assert()
        .success();
    let signed = std::fs::read(&signed_in).unwrap();
    let mut flipped = msg.clone();
    let n = flipped.len();
    flipped[n - 20] ^= 1;
    let mut bad_sig = signed.clone();
    let n = bad_sig.len();
    bad_sig[n - 5] ^= 1;
    let args = [
        &unwrap[..],
        &add[..],
        &["--remove-key", "ns:old", "--remove-key", "ns:other"],
    ]
    .concat();
    for (what, bytes) in [
        ("truncated", msg[..msg.len() / 2].to_vec()),
        ("truncated at the end", msg[..msg.len() - 1].to_vec()),
        ("flipped", flipped),
        ("trailing", [&msg[..], b"\0"].concat()),
        ("bad signature", bad_sig),
    ] {
        let bad = d.join("bad.kms");
        std::fs::write(&bad, &bytes).unwrap();
        let args: Vec<&str> = if what == "bad signature" {
            vec![
                unwrap[0],
                unwrap[1],
                add[0],
                add[1],
                "--remove-key",
                "ns:old",
            ]
        } else {
            args.clone()
        };
        let (code, err, made) = rewrap_into(d, &args, &bad);
        assert_eq!((code, made), (Some(1), false), "{what}: {err}");
    }
    // The signed input itself re-wraps, signed again.
    let (code, err, made) = rewrap_into(
        d,
        &[&unwrap[..], &add[..], &["--remove-key", "ns:old"]].concat(),
        &signed_in,
    );
    assert_eq!((code, made), (Some(0), true), "{err}");
    let out = std::fs::read(d.join("out.kms")).unwrap();
    assert_eq!(out[1..3], [0x05, 0x78], "0x0578 carries over");
}

#[test]
fn rewrap_of_a_signed_input_to_a_stream_needs_the_dangerous_flag() {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (old, new) = (raw_key(d, 1), raw_key(d, 2).replace("ns:name", "ns:new"));
    let pt: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let args = |input: &Path| {
        let mut c = cli();
        c.args([
            "rewrap",
            "--unwrap-raw-aes-key",
            &old,
            "--raw-aes-key",
            &new,
        ])
        .args(["--remove-key", "ns:name", "-o", "-", "-i"])
        .arg(input);
        c
    };
    let signed = seal(d, &old, &pt, &["--suite", "0x0578"], "signed");
    let out = args(&signed).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty(), "no frame released");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--dangerous-release-unverified"), "{err}");
    // A FIFO OUT is refused before it is opened: its waiting reader is never woken to see a
    // normal end of an empty stream.
    let fifo = d.join("out.fifo");
    assert!(StdCommand::new("mkfifo")
        .args(["-m", "600"])
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).unwrap())
    };
    let mut c = std_cli_at(&support::moto().endpoint());
    c.args([
        "rewrap",
        "--unwrap-raw-aes-key",
        &old,
        "--raw-aes-key",
        &new,
    ])
    .args(["--remove-key", "ns:name", "-i"])
    .arg(&signed)
    .arg("-o")
    .arg(&fifo);
    let out = finish_within(&mut c, 10);
    assert_eq!(out.status.code(), Some(2));
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(!reader.is_finished(), "the FIFO was opened");
    // Our own writer is the first the reader sees.
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(&fifo)
        .unwrap()
        .write_all(b"first")
        .unwrap();
    assert_eq!(reader.join().unwrap(), b"first");
    // Asked for by name, the stream is written; an unsigned input needs no flag.
    let unsigned = seal(d, &old, &pt, &[], "unsigned");
    for (input, extra) in [
        (&signed, &["--dangerous-release-unverified"][..]),
        (&unsigned, &[][..]),
    ] {
        let out = args(input).args(extra).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let msg = d.join("streamed.kms");
        std::fs::write(&msg, &out.stdout).unwrap();
        let back = cli()
            .args(["decrypt", "--raw-aes-key"])
            .arg(raw_key(d, 2).replace("ns:name", "ns:new"))
            .args(["-o", "-", "-i"])
            .arg(&msg)
            .output()
            .unwrap();
        assert_eq!(back.stdout, pt);
    }
}

#[test]
fn rewrap_under_discovery_keeps_no_kms_key_outside_the_filter_unasked() {
    use kms_envelope::format::EncryptedDataKey;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let old = raw_key(d, 1);
    let new = raw_key(d, 2).replace("ns:name", "ns:new");
    let foreign = "arn:aws:kms:us-east-1:999999999999:key/11111111-2222-3333-4444-555555555555";
    let alias = "arn:aws:kms:us-east-1:123456789012:alias/chosen";
    let write = |planted: &str, name: &str| {
        let raw =
            std::sync::Arc::new(kms_envelope::RawAesKeyring::new("ns", "name", &[1; 32]).unwrap())
                as std::sync::Arc<dyn kms_envelope::Keyring>;
        let forged = std::sync::Arc::new(Forged(vec![EncryptedDataKey {
            provider_id: "aws-kms".into(),
            provider_info: planted.as_bytes().to_vec(),
            ciphertext: vec![1; 184],
        }])) as std::sync::Arc<dyn kms_envelope::Keyring>;
        let multi = kms_envelope::MultiKeyring::new(Some(raw), vec![forged]).unwrap();
        let msg = kms_envelope::Encryptor::new(&multi)
            .encrypt(b"chosen keys")
            .unwrap();
        let path = d.join(name);
        std::fs::write(&path, msg).unwrap();
        path
    };
    let discovery = [
        "--discovery",
        "--account",
        "123456789012",
        "--unwrap-raw-aes-key",
        old.as_str(),
        "--raw-aes-key",
        new.as_str(),
    ];
    // A key of another account, planted by IN's author: named, and no KMS call made for it.
    let input = write(foreign, "foreign.kms");
    let (code, err, made) = rewrap_into(d, &discovery, &input);
    assert_eq!((code, made), (Some(2), false), "{err}");
    assert!(
        err.contains(foreign) && err.contains("--remove-key"),
        "{err}"
    );
    // Removed, the rest re-wraps; named with --key it would be kept deliberately.
    let (code, err, made) = rewrap_into(
        d,
        &[&discovery[..], &["--remove-key", foreign]].concat(),
        &input,
    );
    assert_eq!((code, made), (Some(0), true), "{err}");
    assert!(err.contains("removed") && err.contains(foreign), "{err}");
    // An alias ARN in IN is not a key of the filter: refused before anything is re-wrapped.
    let input = write(alias, "alias.kms");
    let (code, err, made) = rewrap_into(d, &discovery, &input);
    assert_eq!((code, made), (Some(2), false), "{err}");
    assert!(
        err.contains(alias) && err.contains("--remove-key it"),
        "{err}"
    );
    // A malformed Region picks a KMS client: refused even when its key ID is named.
    let id = "11111111-2222-3333-4444-555555555555";
    let odd = format!("arn:aws:kms:us-east-1.example.com:123456789012:key/{id}");
    let input = write(&odd, "odd.kms");
    let (code, err, made) = rewrap_into(d, &[&discovery[..], &["--key", id]].concat(), &input);
    assert_eq!((code, made), (Some(2), false), "{err}");
    assert!(
        err.contains(&odd) && err.contains("well-formed Region"),
        "{err}"
    );
}

#[test]
fn rewrap_keeps_a_kms_key_of_in_only_when_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let old = raw_key(d, 1);
    let new = raw_key(d, 2).replace("ns:name", "ns:new");
    let m = support::moto();
    let kms = support::kms_client(&m.endpoint(), "us-east-1");
    let planted = support::create_key(&kms, false);
    let id = planted.rsplit_once(":key/").unwrap().1.to_owned();
    // IN is wrapped under the raw key the caller unwraps with, and under a KMS key IN's author
    // added that the caller never names.
    let input = seal(d, &old, b"chosen keys", &["--key", &planted], "in.kms");
    let base = [
        "--unwrap-raw-aes-key",
        old.as_str(),
        "--raw-aes-key",
        new.as_str(),
    ];
    let (code, err, made) = rewrap_into(d, &base, &input);
    assert_eq!((code, made), (Some(2), false), "{err}");
    assert!(
        err.contains(&planted) && err.contains("--remove-key it, or name it with --key"),
        "{err}"
    );
    // Named by ARN or key ID, it is kept; removed, it is gone.
    for extra in [["--key", planted.as_str()], ["--key", id.as_str()]] {
        let (code, err, made) = rewrap_into(d, &[&base[..], &extra[..]].concat(), &input);
        assert_eq!((code, made), (Some(0), true), "{err}");
        assert!(err.contains(&planted), "{err}");
    }
    let (code, err, made) = rewrap_into(
        d,
        &[&base[..], &["--remove-key", planted.as_str()]].concat(),
        &input,
    );
    assert_eq!((code, made), (Some(0), true), "{err}");
    assert!(err.contains("removed") && err.contains(&planted), "{err}");
}

#[test]
fn an_unsyncable_directory_after_the_link_is_a_warning() {
    use std::os::unix::fs::PermissionsExt;
    if !rustix::process::geteuid().is_root()
        || StdCommand::new("setpriv").arg("--help").output().is_err()
    {
        eprintln!("not root or no setpriv: skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let spec = raw_key(d, 5);
    let sealed = seal(d, &spec, b"in place", &[], "m.kms");
    // Run as another user who can write into, but not read, OUT's directory (mode -wx).
    let perm =
        |p: &Path, m| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    perm(d, 0o755);
    for f in std::fs::read_dir(d).unwrap() {
        perm(&f.unwrap().path(), 0o644);
    }
    let out_dir = d.join("wx");
    std::fs::create_dir(&out_dir).unwrap();
    std::os::unix::fs::chown(&out_dir, Some(65534), Some(65534)).unwrap();
    perm(&out_dir, 0o300);
    let out = out_dir.join("out.txt");
    let r = StdCommand::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(assert_cmd::cargo::cargo_bin("kms-envelope"))
        .args(["decrypt", "--raw-aes-key", &spec, "-i"])
        .arg(&sealed)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(0), "{err}");
    assert!(
        err.contains("warning") && err.contains("could not be synced"),
        "{err}"
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"in place");
}

/// The exit codes `--help` lists (exit::TABLE) are the README's: each code, with the same words.
#[test]
fn help_and_readme_list_the_same_exit_codes() {
    // No KMS call: any endpoint will do.
    let help = cli_at("http://127.0.0.1:9").arg("--help").output().unwrap();
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    // The table as (code, meaning) pairs, whitespace folded, up to the sentence's end.
    let table = |text: &str| -> Vec<(String, String)> {
        let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
        let at = flat.find("Exit codes: ").expect("an exit-code table") + "Exit codes: ".len();
        let rest = &flat[at..];
        let end = rest.find(" (").or_else(|| rest.find('.')).unwrap();
        rest[..end]
            .split(", ")
            .map(|item| {
                let (code, what) = item.split_once(' ').unwrap();
                (
                    code.to_owned(),
                    what.replace("KMS or credential", "KMS/credential"),
                )
            })
            .collect()
    };
    let (from_help, from_readme) = (table(&help), table(&readme));
    let codes: Vec<&str> = from_help.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(codes, ["0", "1", "2", "3", "4", "141"], "{help}");
    assert_eq!(from_help, from_readme);
}

/// A header over a limit that no option raises is a refused message (exit 1), not a usage
/// error, and the message says so in the tool's terms rather than naming library setters.
#[test]
fn a_header_over_a_limit_is_a_refused_message() {
    let d = tempfile::tempdir().unwrap();
    let spec = raw_key(d.path(), 5);
    let pt = vec![7u8; 1000];
    let refused = |sealed: &Path, needle: &str| {
        for cmd in [
            vec!["decrypt", "--raw-aes-key", &spec, "-o", "-"],
            vec!["inspect"],
        ] {
            let out = cli().args(&cmd).arg("-i").arg(sealed).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{cmd:?}: {err}");
            assert!(err.contains(needle), "{cmd:?}: {err}");
            assert!(!err.contains("Decryptor::"), "{cmd:?}: {err}");
            assert!(out.stdout.is_empty() || cmd[0] == "inspect");
        }
    };

    // Frames of 100 MB: over the 64 MiB a reader accepts.
    let big = seal(
        d.path(),
        &spec,
        &pt,
        &["--frame-length", "100000000"],
        "big",
    );
    let out = cli()
        .args(["decrypt", "--raw-aes-key", &spec, "-o", "-", "-i"])
        .arg(&big)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("malformed or hostile"));

    // Nine wrapped keys where the reader takes eight: the header re-encoded with copies.
    let sealed = seal(d.path(), &spec, &pt, &[], "nine");
    let bytes = std::fs::read(&sealed).unwrap();
    let limits = kms_envelope::HeaderLimits::default();
    let (header, _) = kms_envelope::format::Header::parse(&bytes, &limits)
        .unwrap()
        .unwrap();
    let mut body = header.body.clone();
    let edk = body.encrypted_data_keys[0].clone();
    body.encrypted_data_keys.resize(9, edk);
    let mut forged = Vec::new();
    body.encode(&mut forged).unwrap();
    forged.extend_from_slice(&[0u8; 64]);
    let nine = d.path().join("nine.forged");
    std::fs::write(&nine, &forged).unwrap();
    refused(&nine, "more than 8 wrapped data keys");
}
