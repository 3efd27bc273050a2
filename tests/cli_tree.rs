//! `encrypt -r` / `decrypt -r`: the real binary against moto, its report, summary and exit
//! codes, and a run killed with SIGKILL then finished with --resume.
#![cfg(all(feature = "cli", feature = "tree"))]

mod support;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Command as StdCommand, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::Command;
use serde_json::Value;
use support::proxy::{Fault, Proxy};
use support::{create_key, kms_client, moto};

fn cli_at(endpoint: &str) -> Command {
    let mut c = StdCommand::new(assert_cmd::cargo::cargo_bin("kms-envelope"));
    env(&mut c, endpoint);
    Command::from_std(c)
}

fn env(c: &mut StdCommand, endpoint: &str) {
    c.env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_ENDPOINT_URL_KMS")
        .arg("--endpoint-url")
        .arg(endpoint);
}

fn cli() -> Command {
    cli_at(&moto().endpoint())
}

fn new_key() -> String {
    create_key(&kms_client(&moto().endpoint(), "us-east-1"), false)
}

fn write(path: &Path, data: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, data).unwrap();
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_tree_round_trips_with_a_report_and_context_path() {
    let key = new_key();
    let tmp = tempfile::tempdir().unwrap();
    let (src, enc, dec) = (
        tmp.path().join("src"),
        tmp.path().join("enc"),
        tmp.path().join("dec"),
    );
    write(&src.join("a/one.txt"), b"one");
    write(&src.join("b/c/two.txt"), b"two");
    write(&src.join("empty"), b"");
    assert!(StdCommand::new("mkfifo")
        .arg(src.join("fifo"))
        .status()
        .unwrap()
        .success());
    let report = tmp.path().join("report.jsonl");
    let out = cli()
        .args([
            "encrypt",
            "-r",
            "--key",
            &key,
            "--context-path",
            "path",
            "--jobs",
            "4",
        ])
        .arg("-i")
        .arg(&src)
        .arg("-o")
        .arg(&enc)
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("encrypted 3 files"), "{err}");
    assert!(err.contains("fifo: skipped"), "{err}");
    let lines: Vec<Value> = fs::read_to_string(&report)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    let one = lines
        .iter()
        .find(|l| l["source"].as_str().unwrap().ends_with("a/one.txt"))
        .unwrap();
    assert_eq!(one["status"], "done");
    assert_eq!(one["bytes"], 3);
    assert_eq!(one["wrapped_keys"][0], key.as_str());
    assert_eq!(one["message_id"].as_str().unwrap().len(), 64);
    assert!(one["destination"]
        .as_str()
        .unwrap()
        .ends_with("a/one.txt.kms"));
    let fifo = lines
        .iter()
        .find(|l| l["source"].as_str().unwrap().ends_with("fifo"))
        .unwrap();
    assert_eq!(fifo["status"], "skipped");

    let out = cli()
        .args(["decrypt", "-r", "--key", &key, "--context-path", "path"])
        .arg("-i")
        .arg(&enc)
        .arg("-o")
        .arg(&dec)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fs::read(dec.join("a/one.txt")).unwrap(), b"one");
    assert_eq!(fs::read(dec.join("b/c/two.txt")).unwrap(), b"two");
    assert_eq!(fs::read(dec.join("empty")).unwrap(), b"");
}

#[test]
fn a_failed_file_exits_1_and_the_rest_is_done() {
    let key = new_key();
    let tmp = tempfile::tempdir().unwrap();
    let (src, enc) = (tmp.path().join("src"), tmp.path().join("enc"));
    write(&src.join("good"), b"g");
    write(&src.join("bad"), b"b");
    fs::create_dir_all(&enc).unwrap();
    symlink(tmp.path().join("elsewhere"), enc.join("bad.kms")).unwrap();
    let out = cli()
        .args(["encrypt", "-r", "--key", &key, "--force"])
        .arg("-i")
        .arg(&src)
        .arg("-o")
        .arg(&enc)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("bad: the output exists and is a symbolic link"),
        "{err}"
    );
    assert!(err.contains("1 failed"), "{err}");
    assert!(enc.join("good.kms").is_file());
    assert!(!tmp.path().join("elsewhere").exists());
}

#[test]
fn usage_errors_exit_2() {
    let key = new_key();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    write(&src.join("f"), b"f");
    let o = tmp.path().join("o");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["encrypt", "--key", &key, "--suffix", ".x"],
            "--recursive",
        ),
        (
            vec!["encrypt", "-r", "--key", &key, "--cache-max-messages", "4"],
            "go together",
        ),
        (vec!["decrypt", "-r"], "name a key"),
        (vec!["decrypt", "-r", "--discovery"], "--account"),
        (
            vec![
                "encrypt",
                "-r",
                "--key",
                &key,
                "--context-path",
                "aws-crypto-x",
            ],
            "reserved",
        ),
    ];
    for (args, wanted) in cases {
        let out = cli()
            .args(&args)
            .arg("-i")
            .arg(&src)
            .arg("-o")
            .arg(&o)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(wanted), "{args:?}: {}", stderr(&out));
    }
    let out = cli()
        .args(["encrypt", "-r", "--key", &key, "-o", "-"])
        .arg("-i")
        .arg(&src)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(!o.exists(), "nothing written by a refused command");
}

#[test]
fn dry_run_lists_and_writes_nothing() {
    let key = new_key();
    let tmp = tempfile::tempdir().unwrap();
    let (src, enc) = (tmp.path().join("src"), tmp.path().join("enc"));
    write(&src.join("keep.txt"), b"k");
    write(&src.join("drop.log"), b"d");
    let out = cli()
        .args([
            "encrypt",
            "-r",
            "--key",
            &key,
            "--dry-run",
            "--include",
            "*.txt",
        ])
        .arg("-i")
        .arg(&src)
        .arg("-o")
        .arg(&enc)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("would write") && err.contains("keep.txt.kms"),
        "{err}"
    );
    assert!(!err.contains("drop.log"), "{err}");
    assert!(!enc.exists());
}

#[test]
fn the_cache_flags_share_data_keys() {
    let key = new_key();
    let proxy = Proxy::start(moto().port, |_| Fault::Forward);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    for i in 0..6 {
        write(&src.join(format!("f{i}")), b"x");
    }
    let out = cli_at(&proxy.endpoint())
        .args(["encrypt", "-r", "--key", &key, "--jobs", "1"])
        .args([
            "--cache-max-messages",
            "3",
            "--cache-max-age",
            "60",
            "--cache-max-bytes",
            "1000",
        ])
        .arg("-i")
        .arg(&src)
        .arg("-o")
        .arg(tmp.path().join("enc"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(proxy.count("GenerateDataKey"), 2, "6 files, 3 per data key");
}

#[test]
fn sigkill_then_resume_completes_the_tree() {
    let key = new_key();
    // 100 ms per data key: 60 files on two jobs take about three seconds.
    let slow = Proxy::start(moto().port, |req| {
        if req.operation == "GenerateDataKey" {
            Fault::Delay(Duration::from_millis(100))
        } else {
            Fault::Forward
        }
    });
    let tmp = tempfile::tempdir().unwrap();
    let (src, enc, dec) = (
        tmp.path().join("src"),
        tmp.path().join("enc"),
        tmp.path().join("dec"),
    );
    for i in 0..60 {
        write(
            &src.join(format!("d{}/f{i:02}", i % 3)),
            format!("file {i}").as_bytes(),
        );
    }
    let mut c = StdCommand::new(assert_cmd::cargo::cargo_bin("kms-envelope"));
    env(&mut c, &slow.endpoint());
    let mut child = c
        .args([
            "encrypt",
            "-r",
            "--key",
            &key,
            "--jobs",
            "2",
            "--sync-at-end",
            "-q",
        ])
        .arg("-i")
        .arg(&src)
        .arg("-o")
        .arg(&enc)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed once a manifest batch is written: after output has started, before the end.
    let manifest = enc.join(".kms-envelope-manifest");
    let deadline = Instant::now() + Duration::from_secs(60);
    while fs::metadata(&manifest).map_or(true, |m| m.len() == 0) {
        assert!(Instant::now() < deadline, "no manifest batch was written");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it was killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let out = cli()
        .args(["encrypt", "-r", "--key", &key, "--resume"])
        .arg("-i")
        .arg(&src)
        .arg("-o")
        .arg(&enc)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    let already: u64 = err
        .split(", ")
        .find_map(|p| p.strip_suffix(" already done"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{err}"));
    assert!(already > 0 && already < 60, "{err}");
    let out = cli()
        .args(["decrypt", "-r", "--key", &key])
        .arg("-i")
        .arg(&enc)
        .arg("-o")
        .arg(&dec)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("decrypted 60 files"),
        "{}",
        stderr(&out)
    );
    for i in 0..60 {
        let rel = format!("d{}/f{i:02}", i % 3);
        assert_eq!(
            fs::read(dec.join(&rel)).unwrap(),
            format!("file {i}").as_bytes()
        );
    }
}

#[test]
fn the_manifest_can_be_kept_outside_the_destination() {
    let key = new_key();
    let tmp = tempfile::tempdir().unwrap();
    let (src, enc, dec) = (
        tmp.path().join("src"),
        tmp.path().join("enc"),
        tmp.path().join("dec"),
    );
    write(&src.join("f"), b"f");
    let manifest = tmp.path().join("run.manifest");
    let out = cli()
        .args(["encrypt", "-r", "--key", &key, "--manifest"])
        .arg(&manifest)
        .arg("-i")
        .arg(&src)
        .arg("-o")
        .arg(&enc)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(manifest.is_file());
    assert_eq!(
        fs::read_dir(&enc).unwrap().count(),
        1,
        "only f.kms in the tree"
    );
    let out = cli()
        .args(["decrypt", "-r", "--key", &key])
        .arg("-i")
        .arg(&enc)
        .arg("-o")
        .arg(&dec)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("decrypted 1 files (1 bytes), 0 already done, 0 skipped"),
        "{}",
        stderr(&out)
    );
}
