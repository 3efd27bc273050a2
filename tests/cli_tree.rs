//! `encrypt -r` / `decrypt -r`: the real binary against moto, its report, summary and exit
//! codes, and a run killed with SIGKILL then finished with --resume.
#![cfg(all(feature = "cli", feature = "tree"))]

mod support;

use std::fs;
use std::os::unix::fs::{symlink, OpenOptionsExt, PermissionsExt};
use std::process::Stdio;

use serde_json::Value;
use support::cli::{cli, cli_at, run_io, run_io_ok, std_cli_at, stderr};
use support::files::{
    assert_files, kill_after_first_batch, mkfifo, slow_data_keys, spread_files, trees, write,
};
use support::proxy::{Fault, Proxy};
use support::{moto, new_key};

/// `OP -r --key KEY`, then `extra`.
fn recursive<'a>(op: &'a str, key: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    [&[op, "-r", "--key", key][..], extra].concat()
}

#[test]
fn a_tree_round_trips_with_a_report_and_context_path() {
    let key = new_key();
    let (tmp, src, enc, dec) = trees();
    write(&src.join("a/one.txt"), b"one");
    write(&src.join("b/c/two.txt"), b"two");
    write(&src.join("empty"), b"");
    mkfifo(&src.join("fifo"));
    let report = tmp.path().join("report.jsonl");
    let report_arg = report.to_str().unwrap();
    let err = run_io_ok(
        cli(),
        &recursive(
            "encrypt",
            &key,
            &[
                "--context-path",
                "path",
                "--jobs",
                "4",
                "--report",
                report_arg,
            ],
        ),
        &src,
        &enc,
    );
    assert!(err.contains("encrypted 3 files"), "{err}");
    assert!(err.contains("fifo: skipped"), "{err}");
    let lines: Vec<Value> = fs::read_to_string(&report)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    let line = |suffix: &str| {
        lines
            .iter()
            .find(|l| l["source"].as_str().unwrap().ends_with(suffix))
            .unwrap()
    };
    let one = line("a/one.txt");
    assert_eq!(one["status"], "done");
    assert_eq!(one["bytes"], 3);
    assert_eq!(one["wrapped_keys"][0], key.as_str());
    assert_eq!(one["message_id"].as_str().unwrap().len(), 64);
    assert!(one["destination"]
        .as_str()
        .unwrap()
        .ends_with("a/one.txt.kms"));
    assert_eq!(line("fifo")["status"], "skipped");

    run_io_ok(
        cli(),
        &recursive("decrypt", &key, &["--context-path", "path"]),
        &enc,
        &dec,
    );
    assert_eq!(fs::read(dec.join("a/one.txt")).unwrap(), b"one");
    assert_eq!(fs::read(dec.join("b/c/two.txt")).unwrap(), b"two");
    assert_eq!(fs::read(dec.join("empty")).unwrap(), b"");
}

#[test]
fn a_failed_file_exits_1_and_the_rest_is_done() {
    let key = new_key();
    let (tmp, src, enc, _) = trees();
    write(&src.join("good"), b"g");
    write(&src.join("bad"), b"b");
    fs::create_dir_all(&enc).unwrap();
    symlink(tmp.path().join("elsewhere"), enc.join("bad.kms")).unwrap();
    let out = run_io(cli(), &recursive("encrypt", &key, &["--force"]), &src, &enc);
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
        let out = run_io(cli(), &args, &src, &o);
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
    let (_tmp, src, enc, _) = trees();
    write(&src.join("keep.txt"), b"k");
    write(&src.join("drop.log"), b"d");
    let err = run_io_ok(
        cli(),
        &recursive("encrypt", &key, &["--dry-run", "--include", "*.txt"]),
        &src,
        &enc,
    );
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
    let (_tmp, src, enc, _) = trees();
    for i in 0..6 {
        write(&src.join(format!("f{i}")), b"x");
    }
    run_io_ok(
        cli_at(&proxy.endpoint()),
        &recursive(
            "encrypt",
            &key,
            &[
                "--jobs",
                "1",
                "--cache-max-messages",
                "3",
                "--cache-max-age",
                "60",
                "--cache-max-bytes",
                "1000",
            ],
        ),
        &src,
        &enc,
    );
    assert_eq!(proxy.count("GenerateDataKey"), 2, "6 files, 3 per data key");
}

#[test]
fn sigkill_then_resume_completes_the_tree() {
    let key = new_key();
    // 100 ms per data key: 60 files on two jobs take about three seconds.
    let slow = slow_data_keys();
    let (_tmp, src, enc, dec) = trees();
    let files = spread_files(&src, 60, 3);
    // The directories the killed run made are finished by the resumed one (review of the tree fixes, #5).
    for d in [src.clone(), src.join("d0"), src.join("d1"), src.join("d2")] {
        fs::set_permissions(&d, fs::Permissions::from_mode(0o750)).unwrap();
    }
    let child = std_cli_at(&slow.endpoint())
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
    kill_after_first_batch(child, &enc.join(".kms-envelope-manifest"));
    let err = run_io_ok(
        cli(),
        &recursive("encrypt", &key, &["--resume"]),
        &src,
        &enc,
    );
    let already: u64 = err
        .split(", ")
        .find_map(|p| p.strip_suffix(" already done"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{err}"));
    assert!(already > 0 && already < 60, "{err}");
    for d in [enc.clone(), enc.join("d0"), enc.join("d1"), enc.join("d2")] {
        let mode = fs::metadata(&d).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o750, "{d:?}");
    }
    let err = run_io_ok(cli(), &recursive("decrypt", &key, &[]), &enc, &dec);
    assert!(err.contains("decrypted 60 files"), "{err}");
    assert_files(&dec, &files);
}

#[test]
fn the_manifest_can_be_kept_outside_the_destination() {
    let key = new_key();
    let (tmp, src, enc, dec) = trees();
    write(&src.join("f"), b"f");
    let manifest = tmp.path().join("run.manifest");
    run_io_ok(
        cli(),
        &recursive("encrypt", &key, &["--manifest", manifest.to_str().unwrap()]),
        &src,
        &enc,
    );
    assert!(manifest.is_file());
    assert_eq!(
        fs::read_dir(&enc).unwrap().count(),
        1,
        "only f.kms in the tree"
    );
    let err = run_io_ok(cli(), &recursive("decrypt", &key, &[]), &enc, &dec);
    assert!(
        err.contains("decrypted 1 files (1 bytes), 0 already done, 0 skipped"),
        "{err}"
    );
}

/// `kms-envelope encrypt -r` with a raw AES key (no KMS needed), through `sh` so that `limits`
/// (shell `ulimit` arguments) apply to it; returns whether it succeeded and its stderr.
fn raw_encrypt(tmp: &std::path::Path, limits: &str, args: &[&str]) -> (bool, String) {
    let key = tmp.join("wrap.key");
    if !key.exists() {
        fs::write(&key, [7u8; 32]).unwrap();
    }
    let spec = format!("tree:key:{}", key.display());
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit {limits} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_kms-envelope"))
        .args(["encrypt", "-r", "--raw-aes-key", &spec])
        .args(args)
        .env("AWS_REGION", "us-east-1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.success(), err)
}

/// Third review L-a: `--jobs 128` needs more descriptors than a soft limit of 64 allows; the
/// CLI raises the soft limit to the hard one at start. When the hard limit itself is too low,
/// the files that fail say what to do.
#[test]
fn the_open_file_limit_is_raised_and_running_out_says_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    for i in 0..400 {
        write(&src.join(format!("d{}/f{i}", i % 4)), b"data");
    }
    let (src_s, tmp_s) = (src.to_str().unwrap(), tmp.path().to_str().unwrap());
    let dst = format!("{tmp_s}/raised");
    let (ok, err) = raw_encrypt(
        tmp.path(),
        "-Sn 64",
        &["-i", src_s, "-o", &dst, "--jobs", "128"],
    );
    assert!(ok, "{err}");
    assert!(err.contains("encrypted 400 files"), "{err}");

    let dst = format!("{tmp_s}/hard");
    let (ok, err) = raw_encrypt(
        tmp.path(),
        "-n 40",
        &["-i", src_s, "-o", &dst, "--jobs", "128"],
    );
    assert!(!ok, "{err}");
    assert!(err.contains("too many open files"), "{err}");
    assert!(err.contains("--jobs") && err.contains("ulimit -n"), "{err}");
}

/// Third review L-b: the cache limits are in the resume label. A run without the cache
/// promises a data key per file, so a resumed run without it redoes the files an earlier run
/// wrote under a shared key, and a run with other limits redoes them too.
#[test]
fn resume_redoes_files_written_under_other_cache_limits() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    write(&src.join("a"), b"one");
    write(&src.join("b"), b"two");
    let (src_s, tmp_s) = (src.to_str().unwrap(), tmp.path().to_str().unwrap());
    let dst = format!("{tmp_s}/dst");
    let cache = ["--cache-max-messages", "10", "--cache-max-age", "60"];
    let run = |extra: &[&str]| {
        let args = [&["-i", src_s, "-o", &dst, "--resume"][..], extra].concat();
        let (ok, err) = raw_encrypt(tmp.path(), "-Sn 1024", &args);
        assert!(ok, "{err}");
        err
    };
    let bytes = ["--cache-max-bytes", "1000"];
    let err = run(&[&cache[..], &bytes[..]].concat());
    assert!(err.contains("encrypted 2 files"), "{err}");
    let err = run(&[&cache[..], &bytes[..]].concat());
    assert!(
        err.contains("encrypted 0 files (0 bytes), 2 already done"),
        "{err}"
    );
    let err = run(&[&cache[..], &["--cache-max-bytes", "2000"][..]].concat());
    assert!(err.contains("encrypted 2 files"), "other limits: {err}");
    let err = run(&[]);
    assert!(err.contains("encrypted 2 files"), "no cache: {err}");
    let err = run(&[]);
    assert!(err.contains("2 already done"), "{err}");
}

/// Review of the tree fixes, #6: the resume label holds a fingerprint of each raw AES key,
/// not its file's path: the same file holding another key redoes every file (the stored
/// wrapped keys show only namespace and name), and the same key read from another path
/// resumes.
#[test]
fn resume_redoes_files_wrapped_under_another_raw_key() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    write(&src.join("a"), b"one");
    write(&src.join("b"), b"two");
    let (src_s, tmp_s) = (src.to_str().unwrap(), tmp.path().to_str().unwrap());
    let dst = format!("{tmp_s}/dst");
    let run = |dir: &std::path::Path| {
        let args = ["-i", src_s, "-o", &dst, "--resume"];
        let (ok, err) = raw_encrypt(dir, "-Sn 1024", &args);
        assert!(ok, "{err}");
        err
    };
    let err = run(tmp.path());
    assert!(err.contains("encrypted 2 files"), "{err}");
    fs::write(tmp.path().join("wrap.key"), [8u8; 32]).unwrap();
    let err = run(tmp.path());
    assert!(
        err.contains("encrypted 2 files"),
        "other key, same path: {err}"
    );
    let moved = tmp.path().join("moved");
    fs::create_dir(&moved).unwrap();
    fs::copy(tmp.path().join("wrap.key"), moved.join("wrap.key")).unwrap();
    let err = run(&moved);
    assert!(
        err.contains("2 already done"),
        "same key, other path: {err}"
    );
}

/// The soft limit on open files of the running process `pid`, from /proc.
fn soft_open_files(pid: u32) -> Option<u64> {
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Review of the tree fixes, #7: only `-r` runs raise the open-file limit, and only as far
/// as their jobs need (2 per directory level to MAX_DEPTH, 9 per job, 64 more: 594 for two
/// jobs, below the hard limit), since children such as a credential_process inherit it; a
/// single-file command leaves it as it was.
#[test]
fn only_tree_runs_raise_the_open_file_limit_and_only_as_needed() {
    use std::time::{Duration, Instant};
    let tmp = tempfile::tempdir().unwrap();
    let kms = new_key();
    // 100 ms per data key: the tree run below lasts about two seconds.
    let slow = slow_data_keys();
    let start = |args: &[&str]| {
        std::process::Command::new("sh")
            .arg("-c")
            .arg("ulimit -Sn 256 && exec \"$0\" \"$@\"")
            .arg(env!("CARGO_BIN_EXE_kms-envelope"))
            .args(["--endpoint-url", &slow.endpoint()])
            .args(args)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "us-east-1")
            .env_remove("AWS_PROFILE")
            .stdin(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    // The limit of the process once it is kms-envelope (the shell before it sets 256), until
    // it ends or `ready` holds.
    let watch = |child: &mut std::process::Child, ready: &dyn Fn(u64) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = None;
        while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            let comm = fs::read_to_string(format!("/proc/{}/comm", child.id()));
            if comm.is_ok_and(|c| c.trim() == "kms-envelope") {
                seen = soft_open_files(child.id()).or(seen);
            }
            if seen.is_some_and(ready) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        seen
    };
    let hard = soft_open_files(std::process::id()).unwrap();
    assert!(
        hard > 594,
        "the test needs a hard limit above 594, not {hard}"
    );

    // A single file from a stdin kept open: the process waits for input.
    let out = tmp.path().join("one.kms");
    let out = out.to_str().unwrap();
    let mut one = start(&["encrypt", "--key", &kms, "-i", "-", "-o", out]);
    std::thread::sleep(Duration::from_millis(1500));
    let soft = watch(&mut one, &|_| true);
    drop(one.stdin.take());
    assert!(one.wait().unwrap().success());
    assert_eq!(soft, Some(256), "a single-file command");

    let (_t, src, enc, _) = trees();
    spread_files(&src, 40, 2);
    let (src, enc) = (src.to_str().unwrap(), enc.to_str().unwrap());
    let mut tree = start(&[
        "encrypt", "-r", "--key", &kms, "--jobs", "2", "-q", "-i", src, "-o", enc,
    ]);
    let soft = watch(&mut tree, &|n| n != 256);
    assert!(tree.wait().unwrap().success());
    assert_eq!(soft, Some(594), "a tree run of two jobs");
}

/// Second review of the tree fixes, F1 and F2: a file reached only through a link to a
/// directory whose walk skipped a cycle is written (exit 0); a link over the link cap fails
/// the run (exit 1) with what to do.
#[test]
fn links_skipped_on_one_path_are_followed_on_another_and_the_link_cap_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let s1 = tmp.path().join("s1");
    write(&s1.join("A/f"), b"f");
    fs::create_dir(s1.join("A/P")).unwrap();
    symlink(s1.join("A"), s1.join("A/P/c")).unwrap();
    symlink(s1.join("A/P"), s1.join("q")).unwrap();
    let o1 = tmp.path().join("o1");
    let (s1_s, o1_s) = (s1.to_str().unwrap(), o1.to_str().unwrap());
    let args = [
        "-i",
        s1_s,
        "-o",
        o1_s,
        "--follow-symlinks",
        "--include",
        "q/**",
    ];
    let (ok, err) = raw_encrypt(tmp.path(), "-Sn 1024", &args);
    assert!(ok, "{err}");
    assert!(o1.join("q/c/f.kms").is_file(), "{err}");

    write(&tmp.path().join("ext/file"), b"data");
    let s2 = tmp.path().join("s2");
    fs::create_dir(&s2).unwrap();
    for i in 1..=5 {
        symlink(tmp.path().join("ext"), s2.join(format!("l{i}"))).unwrap();
    }
    let o2 = tmp.path().join("o2");
    let (s2_s, o2_s) = (s2.to_str().unwrap(), o2.to_str().unwrap());
    let args = [
        "-i",
        s2_s,
        "-o",
        o2_s,
        "--follow-symlinks",
        "--include",
        "l5/**",
    ];
    let (ok, err) = raw_encrypt(tmp.path(), "-Sn 1024", &args);
    assert!(!ok, "{err}");
    assert!(
        err.contains("l5: a link to a directory already entered"),
        "{err}"
    );
    assert!(err.contains("1 failed"), "{err}");
}

/// Second review of the tree fixes, F6: the raw key file is read once, for both the keyring
/// and the resume label's fingerprint: a key given through a FIFO (as `<(cat key)` gives it)
/// works, where a second read would wait for a writer that never comes.
#[test]
fn a_raw_key_through_a_fifo_is_read_once() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    write(&src.join("a"), b"one");
    let fifo = tmp.path().join("key.fifo");
    mkfifo(&fifo);
    let writer = {
        let fifo = fifo.clone();
        // Opening for writing waits for the reader; one key, then end of file.
        std::thread::spawn(move || fs::write(&fifo, [7u8; 32]).unwrap())
    };
    let dst = tmp.path().join("dst");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kms-envelope"))
        .args(["encrypt", "-r", "--raw-aes-key"])
        .arg(format!("tree:key:{}", fifo.display()))
        .arg("-i")
        .arg(&src)
        .arg("-o")
        .arg(&dst)
        .env("AWS_REGION", "us-east-1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            // Unblock the writer if the CLI never read the key (non-blocking: no wait for it).
            let _ = fs::OpenOptions::new()
                .read(true)
                .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
                .open(&fifo);
            panic!("still running after 30 s: the key file was read a second time");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    writer.join().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(dst.join("a.kms").is_file());
}

/// Second review of the tree fixes, F8: a note about the tree's root names it ".", not an
/// empty path.
#[test]
fn a_note_about_the_root_names_it_dot() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    write(&src.join("a"), b"one");
    let open = tmp.path().join("open");
    fs::create_dir(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
    let dst = open.join("dst");
    let (src_s, dst_s) = (src.to_str().unwrap(), dst.to_str().unwrap());
    let (ok, err) = raw_encrypt(tmp.path(), "-Sn 1024", &["-i", src_s, "-o", dst_s]);
    assert!(ok, "{err}");
    assert!(
        err.contains("note: .: skipped, the destination root"),
        "{err}"
    );
}
