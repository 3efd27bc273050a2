//! `kms-envelope volume ...`: the real binary against moto's KMS. Every command once, exit
//! codes, refusal of an existing output, images and snapshots round trip, a damaged block is
//! found by `check`, a bad snapshot leaves no volume, and `serve` answers qemu-io then flushes
//! and exits 0 on SIGTERM.
#![cfg(all(feature = "cli", feature = "volume"))]

mod support;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::cli::{cli, std_cli_at, stderr};
use support::files::entries;
use support::{moto, new_key};

/// A volume-sized sample: 1 MiB stripes of data, zeros, data, ... and a non-zero last block.
fn image(len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len).map(|i| (i * 131 % 251) as u8 + 1).collect();
    for (i, stripe) in v.chunks_mut(1 << 20).enumerate() {
        if i % 2 == 1 {
            stripe.fill(0);
        }
    }
    let n = v.len();
    v[n - 4096..].fill(0x77);
    v
}

/// Runs `volume ARGS` and returns the output.
fn volume(args: &[&str]) -> std::process::Output {
    cli().arg("volume").args(args).output().unwrap()
}

fn ok(args: &[&str]) -> std::process::Output {
    let out = volume(args);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    out
}

fn code(out: &std::process::Output) -> i32 {
    out.status.code().unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// No hidden staging file was left in `dir`.
fn no_leftovers(dir: &Path) {
    let left: Vec<_> = entries(dir)
        .into_iter()
        .filter(|n| n.starts_with(".kms-envelope"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn every_command_round_trips_and_refuses_what_it_must() {
    let key = new_key();
    let key2 = new_key();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (vol, disk, out, snap) = (
        d.join("vol"),
        d.join("disk.img"),
        d.join("out.img"),
        d.join("snap.kms"),
    );
    let data = image(4 << 20);
    fs::write(&disk, &data).unwrap();

    // create, info (JSON, no key), and refusal of an existing output without --force.
    ok(&[
        "create",
        "-o",
        s(&vol),
        "--size",
        "4M",
        "--block-size",
        "4096",
        "--key",
        &key,
    ]);
    let info: Value = serde_json::from_slice(&ok(&["info", "-i", s(&vol)]).stdout).unwrap();
    assert_eq!(info["size"], 4 << 20, "{info}");
    assert_eq!(info["block_size"], 4096, "{info}");
    let again = volume(&["create", "-o", s(&vol), "--size", "4M", "--key", &key]);
    assert_eq!(code(&again), 2, "{}", stderr(&again));
    assert!(stderr(&again).contains("exists"), "{}", stderr(&again));
    // A link at VOL is neither followed nor replaced, even with --force.
    let link = d.join("link");
    std::os::unix::fs::symlink(&disk, &link).unwrap();
    let linked = volume(&[
        "create",
        "-o",
        s(&link),
        "--size",
        "4M",
        "--key",
        &key,
        "--force",
    ]);
    assert_eq!(code(&linked), 2, "{}", stderr(&linked));
    assert_eq!(fs::read(&disk).unwrap(), data);

    // import over it with --force, export, and the bytes come back.
    ok(&[
        "import",
        "-i",
        s(&disk),
        "-o",
        s(&vol),
        "--key",
        &key,
        "--force",
    ]);
    ok(&["export", "-i", s(&vol), "-o", s(&out), "--key", &key]);
    assert!(
        fs::read(&out).unwrap() == data,
        "export differs from import"
    );
    let refused = volume(&["export", "-i", s(&vol), "-o", s(&out), "--key", &key]);
    assert_eq!(code(&refused), 2, "{}", stderr(&refused));

    // A wrong key does not open it (KMS refuses: exit 3 or 1, never success).
    let wrong = volume(&["check", "-i", s(&vol), "--key", &key2]);
    assert!(!wrong.status.success());

    // snapshot: an ESDK message that `decrypt` reads, whole and by range.
    ok(&[
        "snapshot",
        "-i",
        s(&vol),
        "-o",
        s(&snap),
        "--key",
        &key,
        "-c",
        "purpose=test",
    ]);
    let whole = d.join("whole");
    let o = cli()
        .args(["decrypt", "--key", &key, "-c", "purpose=test", "-c"])
        .arg(format!("kms-envelope:volume-size={}", 4 << 20))
        .args(["-i", s(&snap), "-o", s(&whole)])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(fs::read(&whole).unwrap() == data);
    let part = d.join("part");
    let o = cli()
        .args(["decrypt", "--key", &key, "--range", "1048000-2100000"])
        .args(["-i", s(&snap), "-o", s(&part)])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(fs::read(&part).unwrap() == data[1048000..2100000]);

    // restore: a new volume (new ID) with the same content, readable by the second key only
    // through its own slot once added.
    let restored = d.join("restored");
    ok(&[
        "restore",
        "-i",
        s(&snap),
        "-o",
        s(&restored),
        "--key",
        &key,
        "-c",
        "purpose=test",
    ]);
    let info2: Value = serde_json::from_slice(&ok(&["info", "-i", s(&restored)]).stdout).unwrap();
    assert_ne!(info["volume_id"], info2["volume_id"], "{info} {info2}");
    let out2 = d.join("out2.img");
    ok(&["export", "-i", s(&restored), "-o", s(&out2), "--key", &key]);
    assert!(fs::read(&out2).unwrap() == data);

    // add-key, then the second key opens it alone; remove-key of the first; rekey.
    ok(&[
        "add-key",
        "-i",
        s(&restored),
        "--key",
        &key,
        "--add-key",
        &key2,
    ]);
    ok(&["check", "-i", s(&restored), "--key", &key2]);
    ok(&[
        "remove-key",
        "-i",
        s(&restored),
        "--key",
        &key2,
        "--remove-key",
        &key,
    ]);
    assert!(!volume(&["check", "-i", s(&restored), "--key", &key])
        .status
        .success());
    let last = volume(&[
        "remove-key",
        "-i",
        s(&restored),
        "--key",
        &key2,
        "--remove-key",
        &key2,
    ]);
    assert!(!last.status.success(), "the last slot was removed");
    ok(&["rekey", "-i", s(&restored), "--key", &key2]);
    let checked = ok(&["check", "-i", s(&restored), "--key", &key2]);
    let report: Value = serde_json::from_slice(&checked.stdout).unwrap();
    assert_eq!(
        report["bad_blocks"].as_array().unwrap().len(),
        0,
        "{report}"
    );
    fs::remove_file(&out2).unwrap();
    ok(&["export", "-i", s(&restored), "-o", s(&out2), "--key", &key2]);
    assert!(fs::read(&out2).unwrap() == data);
    no_leftovers(d);
}

#[test]
fn check_lists_a_damaged_block_and_exits_1() {
    let key = new_key();
    let tmp = tempfile::tempdir().unwrap();
    let (vol, disk) = (tmp.path().join("vol"), tmp.path().join("disk.img"));
    fs::write(&disk, image(2 << 20)).unwrap();
    ok(&["import", "-i", s(&disk), "-o", s(&vol), "--key", &key]);
    // The data area ends the image: its last bytes are the last block's ciphertext.
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&vol)
        .unwrap();
    let end = f.metadata().unwrap().len();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, end - 100).unwrap();
    f.write_all_at(&[b[0] ^ 1], end - 100).unwrap();
    drop(f);
    let out = volume(&["check", "-i", s(&vol), "--key", &key]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let last = (2u64 << 20) / 4096 - 1;
    assert_eq!(report["bad_blocks"], serde_json::json!([last]), "{report}");
    assert!(stderr(&out).contains("1 of 512 blocks"), "{}", stderr(&out));
    // A snapshot of it fails with that block's index and leaves no output.
    let snap = tmp.path().join("snap");
    let out = volume(&["snapshot", "-i", s(&vol), "-o", s(&snap), "--key", &key]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains(&last.to_string()), "{}", stderr(&out));
    assert!(!snap.exists());
}

#[test]
fn a_truncated_or_altered_snapshot_leaves_no_volume() {
    let key = new_key();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (vol, disk, snap) = (d.join("vol"), d.join("disk.img"), d.join("snap"));
    fs::write(&disk, image(2 << 20)).unwrap();
    ok(&["import", "-i", s(&disk), "-o", s(&vol), "--key", &key]);
    ok(&[
        "snapshot",
        "-i",
        s(&vol),
        "-o",
        s(&snap),
        "--key",
        &key,
        "--frame-length",
        "65536",
    ]);
    let msg = fs::read(&snap).unwrap();
    let bad = d.join("bad");
    let restored = d.join("restored");
    let mut flipped = msg.clone();
    let at = msg.len() - 70_000;
    flipped[at] ^= 0x10;
    for (what, bytes) in [
        // Cut within the last frames but still longer than the volume: a message shorter than
        // the size it declares is refused before any write (see the test of a tiny snapshot).
        ("truncated", &msg[..msg.len() - 1_000]),
        ("altered", &flipped[..]),
    ] {
        fs::write(&bad, bytes).unwrap();
        let out = volume(&["restore", "-i", s(&bad), "-o", s(&restored), "--key", &key]);
        assert_eq!(code(&out), 1, "{what}: {}", stderr(&out));
        assert!(!restored.exists(), "{what}: a volume was left");
        no_leftovers(d);
    }
    // And a message that is not a snapshot needs --size.
    let plain = d.join("plain.kms");
    let o = cli()
        .args(["encrypt", "--key", &key, "-i", s(&disk), "-o", s(&plain)])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = volume(&[
        "restore",
        "-i",
        s(&plain),
        "-o",
        s(&restored),
        "--key",
        &key,
    ]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("--size"), "{}", stderr(&out));
    ok(&[
        "restore",
        "-i",
        s(&plain),
        "-o",
        s(&restored),
        "--key",
        &key,
        "--size",
        "2M",
    ]);
}

/// qemu-io, or a skip note (an error under CI=true: CI never passes without it).
fn qemu_io() -> Option<&'static str> {
    let found = Command::new("qemu-io")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Some("qemu-io");
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "qemu-io is missing and CI=true: install qemu-utils"
    );
    eprintln!("skipped: qemu-io is not installed (install qemu-utils to run the NBD tests)");
    None
}

#[test]
fn serve_refuses_tcp_that_is_not_asked_for_or_not_loopback() {
    let key = new_key();
    let tmp = tempfile::tempdir().unwrap();
    let vol = tmp.path().join("vol");
    ok(&["create", "-o", s(&vol), "--size", "1M", "--key", &key]);
    let unasked = volume(&[
        "serve",
        "-i",
        s(&vol),
        "--listen",
        "127.0.0.1:0",
        "--key",
        &key,
    ]);
    assert_eq!(code(&unasked), 2, "{}", stderr(&unasked));
    assert!(
        stderr(&unasked).contains("--insecure-tcp"),
        "{}",
        stderr(&unasked)
    );
    let wide = volume(&[
        "serve",
        "-i",
        s(&vol),
        "--listen",
        "0.0.0.0:0",
        "--insecure-tcp",
        "--key",
        &key,
    ]);
    assert_eq!(code(&wide), 2, "{}", stderr(&wide));
    assert!(stderr(&wide).contains("loopback"), "{}", stderr(&wide));
}

#[test]
fn serve_answers_qemu_io_and_flushes_on_sigterm() {
    let Some(qemu_io) = qemu_io() else { return };
    let key = new_key();
    let tmp = tempfile::tempdir().unwrap();
    let vol = tmp.path().join("vol");
    ok(&["create", "-o", s(&vol), "--size", "4M", "--key", &key]);
    // serve makes the directory, mode 0700 (the temporary directory may let others in).
    let sock = tmp.path().join("run/nbd.sock");
    let mut server = std_cli_at(&moto().endpoint())
        .args([
            "volume",
            "serve",
            "-i",
            s(&vol),
            "--socket",
            s(&sock),
            "--key",
            &key,
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "no socket after 30 s");
        if server.try_wait().unwrap().is_some() {
            let mut said = String::new();
            std::io::Read::read_to_string(&mut server.stderr.take().unwrap(), &mut said).unwrap();
            panic!("serve exited early: {said}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // A second server on the same volume is refused: the image is locked (exit 4).
    let second = volume(&["serve", "-i", s(&vol), "--socket", s(&sock), "--key", &key]);
    assert_eq!(code(&second), 4, "{}", stderr(&second));
    assert!(stderr(&second).contains("locked"), "{}", stderr(&second));
    let url = format!("nbd+unix:///?socket={}", s(&sock));
    let io = Command::new(qemu_io)
        .args(["-f", "raw", &url])
        .args(["-c", "write -P 0xab 4096 4k", "-c", "read -P 0xab 4096 4k"])
        .args(["-c", "write -P 0xcd 1M 8k", "-c", "read -P 0 2M 4k"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&io.stdout);
    assert!(io.status.success() && !said.contains("fail"), "{said}");
    // The writes were never flushed by the client: SIGTERM must flush them.
    let pid = server.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = server.wait().unwrap();
    assert_eq!(status.code(), Some(0), "serve did not exit 0 on SIGTERM");
    assert!(!sock.exists(), "the socket was left behind");
    let out = tmp.path().join("out.img");
    ok(&["export", "-i", s(&vol), "-o", s(&out), "--key", &key]);
    let got = fs::read(&out).unwrap();
    assert!(got[4096..8192].iter().all(|&b| b == 0xab));
    assert!(got[1 << 20..(1 << 20) + 8192].iter().all(|&b| b == 0xcd));
    assert!(got[..4096].iter().all(|&b| b == 0));
}

/// Encrypts one byte with `encrypt` under a raw AES key, declaring a `size`-byte volume of
/// 4 KiB blocks: a message of a few hundred bytes. Returns the key spec and the message path.
fn hostile_snapshot(d: &Path, size: u64) -> (String, std::path::PathBuf) {
    let (key, one, msg) = (d.join("k1"), d.join("one"), d.join("huge.kms"));
    fs::write(&key, [7u8; 32]).unwrap();
    fs::write(&one, [1u8]).unwrap();
    let spec = format!("ns:k1:{}", s(&key));
    let declared = format!("kms-envelope:volume-size={size}");
    let out = cli()
        .args([
            "encrypt",
            "-i",
            s(&one),
            "-o",
            s(&msg),
            "--raw-aes-key",
            &spec,
        ])
        .args(["-c", &declared, "-c", "kms-envelope:block-size=4096"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    (spec, msg)
}

/// Bytes the files of `dir` take on disk (allocated blocks, not their sparse length).
fn allocated(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap())
        .filter(|m| m.is_file())
        .map(|m| m.blocks() * 512)
        .sum()
}

#[test]
fn a_tiny_snapshot_declaring_a_huge_volume_is_refused_before_any_write() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // 64 GiB declared: its zero markers alone would be 512 MiB.
    let (spec, msg) = hostile_snapshot(d, 64 << 30);
    assert!(fs::metadata(&msg).unwrap().len() < 1024);
    let before = allocated(d);
    let r1 = d.join("r1");
    let out = volume(&[
        "restore",
        "-i",
        s(&msg),
        "-o",
        s(&r1),
        "--raw-aes-key",
        &spec,
    ]);
    assert_ne!(code(&out), 0, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("68719476736-byte volume") && err.contains("bytes long"),
        "{err}"
    );
    assert!(!r1.exists());
    no_leftovers(d);
    assert!(
        allocated(d) <= before + (1 << 20),
        "{} bytes written",
        allocated(d) - before
    );

    // From stdin the length is unknown: a size whose metadata outgrows the free space is
    // refused with what it needs (2^50 bytes of 4 KiB blocks: 8 TiB of metadata).
    let inputs = d.join("in");
    fs::create_dir(&inputs).unwrap();
    let (spec, msg) = hostile_snapshot(&inputs, 1 << 50);
    let out = cli()
        .args([
            "volume",
            "restore",
            "-i",
            "-",
            "-o",
            s(&r1),
            "--raw-aes-key",
            &spec,
        ])
        .write_stdin(fs::read(&msg).unwrap())
        .output()
        .unwrap();
    assert_ne!(code(&out), 0);
    let err = stderr(&out);
    assert!(err.contains("needs") && err.contains("bytes free"), "{err}");
    assert!(!r1.exists());
    no_leftovers(d);
    assert!(allocated(d) <= before + (1 << 20));
}

#[test]
fn an_output_naming_a_directory_or_no_key_is_refused_at_the_start() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let key = d.join("k1");
    fs::write(&key, [7u8; 32]).unwrap();
    let spec = format!("ns:k1:{}", s(&key));
    let slash = format!("{}/", s(&d.join("v")));
    let dots = format!("{}/..", s(&d.join("v")));
    for target in [slash, dots] {
        let target = target.as_str();
        let out = volume(&[
            "create",
            "-o",
            target,
            "--size",
            "1M",
            "--raw-aes-key",
            &spec,
        ]);
        assert_eq!(code(&out), 2, "{target}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("names a directory"),
            "{}",
            stderr(&out)
        );
    }
    assert!(!d.join("v").exists());
    no_leftovers(d);

    // No key: a volume's own message, no hint of --discovery.
    let out = volume(&["restore", "-i", s(&key), "-o", s(&d.join("r"))]);
    assert_eq!(code(&out), 2);
    let err = stderr(&out);
    assert!(
        err.contains("for the new volume's key slots") && !err.contains("--discovery --account"),
        "{err}"
    );
}

#[test]
fn a_snapshot_with_an_invalid_volume_size_is_said_not_to_be_a_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (key, img, msg) = (d.join("k1"), d.join("img"), d.join("m.kms"));
    fs::write(&key, [7u8; 32]).unwrap();
    fs::write(&img, vec![1u8; 8192]).unwrap();
    let spec = format!("ns:k1:{}", s(&key));
    let out = cli()
        .args([
            "encrypt",
            "-i",
            s(&img),
            "-o",
            s(&msg),
            "--raw-aes-key",
            &spec,
        ])
        .args([
            "-c",
            "kms-envelope:volume-size=4097",
            "-c",
            "kms-envelope:block-size=4096",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = volume(&[
        "restore",
        "-i",
        s(&msg),
        "-o",
        s(&d.join("r")),
        "--raw-aes-key",
        &spec,
    ]);
    assert_ne!(code(&out), 0);
    let err = stderr(&out);
    assert!(
        err.contains("not a volume snapshot") && !err.contains("bad volume options"),
        "{err}"
    );
    no_leftovers(d);
}

#[test]
fn a_signal_during_import_removes_the_hidden_volume() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let key = d.join("k1");
    fs::write(&key, [7u8; 32]).unwrap();
    let spec = format!("ns:k1:{}", s(&key));
    for (sig, exit) in [("TERM", 143), ("INT", 130), ("HUP", 129)] {
        let vol = d.join(format!("v{sig}"));
        // stdin stays open and empty: the import waits with its staging volume made.
        let mut child = Command::new(assert_cmd::cargo::cargo_bin("kms-envelope"))
            .args([
                "volume",
                "import",
                "-i",
                "-",
                "--size",
                "16M",
                "-o",
                s(&vol),
            ])
            .args(["--raw-aes-key", &spec])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let start = Instant::now();
        let staged = || {
            fs::read_dir(d).unwrap().any(|e| {
                e.unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(".kms-envelope-vol-")
            })
        };
        while !staged() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no staging volume appeared"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(200));
        let pid = child.id().to_string();
        assert!(Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .status()
            .unwrap()
            .success());
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(exit), "SIG{sig}");
        assert!(!vol.exists());
        no_leftovers(d);
    }
}

#[test]
fn serve_prints_the_socket_s_absolute_path_in_its_url() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let key = d.join("k1");
    fs::write(&key, [7u8; 32]).unwrap();
    let spec = format!("ns:k1:{}", s(&key));
    ok(&[
        "create",
        "-o",
        s(&d.join("vol")),
        "--size",
        "1M",
        "--raw-aes-key",
        &spec,
    ]);
    // A relative socket path, from the temporary directory.
    let mut server = Command::new(assert_cmd::cargo::cargo_bin("kms-envelope"))
        .current_dir(d)
        .args(["volume", "serve", "-i", "vol", "--socket", "run/nbd.sock"])
        .args(["--raw-aes-key", &spec])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let sock = d.join("run/nbd.sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sock.exists() && server.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "no socket after 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = server.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let mut said = String::new();
    std::io::Read::read_to_string(&mut server.stderr.take().unwrap(), &mut said).unwrap();
    server.wait().unwrap();
    let want = format!("nbd+unix:///?socket={}", s(&sock));
    assert!(said.contains(&want), "{said}");
}
