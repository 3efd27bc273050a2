//! The tree module against someone who can write into the source or destination tree (the
//! findings of issue 13's security review). Tests run as root and play "another user" with
//! uid 65534 through chown, inside their own temporary directories.
#![cfg(feature = "tree")]

use std::collections::BTreeMap;
use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use kms_envelope::tree::{
    decrypt_tree, encrypt_tree, FileReport, FileStatus, TreeOptions, TreeSummary,
};
use kms_envelope::{Decryptor, Encryptor, Error, RawAesKeyring};

const OTHER: u32 = 65534;

fn keyring() -> RawAesKeyring {
    RawAesKeyring::new("tree-attacks", "key", &[7; 32]).unwrap()
}

type Reports = Mutex<BTreeMap<PathBuf, FileReport>>;

/// Runs a tree operation with a callback that keeps each report by relative path.
fn collect(
    run: impl FnOnce(&(dyn Fn(&FileReport) + Sync)) -> Result<TreeSummary, Error>,
) -> Result<(TreeSummary, Reports), Error> {
    let reports = Reports::default();
    let summary = run(&|r| {
        reports
            .lock()
            .unwrap()
            .insert(r.relative.clone(), r.clone());
    })?;
    Ok((summary, reports))
}

fn encrypt(src: &Path, dst: &Path, o: &TreeOptions) -> Result<Reports, Error> {
    let k = keyring();
    collect(|f| encrypt_tree(&Encryptor::new(&k), src, dst, o, f)).map(|(_, r)| r)
}

fn decrypt(src: &Path, dst: &Path, o: &TreeOptions) -> Result<Reports, Error> {
    let k = keyring();
    collect(|f| decrypt_tree(&Decryptor::new(&k), src, dst, o, f)).map(|(_, r)| r)
}

fn status(r: &Reports, rel: &str) -> FileStatus {
    r.lock()
        .unwrap()
        .get(Path::new(rel))
        .unwrap_or_else(|| panic!("no report for {rel}"))
        .status
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// A ciphertext tree `ct` of `plain` (files private/secret and top).
fn ciphertext_tree(base: &Path) -> PathBuf {
    let plain = base.join("plain");
    fs::create_dir_all(plain.join("private")).unwrap();
    fs::write(plain.join("private/secret"), b"secret").unwrap();
    fs::write(plain.join("top"), b"top").unwrap();
    let ct = base.join("ct");
    encrypt(&plain, &ct, &TreeOptions::new()).unwrap();
    ct
}

/// M1: a destination directory planted by another user (or writable by others) is refused:
/// its files fail and no plaintext lands in it; the rest of the tree is done.
#[test]
fn a_destination_directory_others_own_or_can_write_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ct = ciphertext_tree(tmp.path());
    for (uid, m) in [(OTHER, 0o777), (OTHER, 0o700), (0, 0o770)] {
        let out = tmp.path().join(format!("out-{uid}-{m:o}"));
        fs::create_dir_all(out.join("private")).unwrap();
        chown(out.join("private"), Some(uid), None).unwrap();
        fs::set_permissions(out.join("private"), fs::Permissions::from_mode(m)).unwrap();
        let r = decrypt(&ct, &out, &TreeOptions::new()).unwrap();
        assert_eq!(status(&r, "private/secret.kms"), FileStatus::Failed);
        let note = r.lock().unwrap()[Path::new("private/secret.kms")]
            .note
            .clone();
        assert!(note.unwrap().contains("owned by"), "uid {uid} mode {m:o}");
        assert!(!out.join("private/secret").exists(), "uid {uid} mode {m:o}");
        assert_eq!(status(&r, "top.kms"), FileStatus::Done);
    }
}

/// M1: the destination root may exist, but must pass the same check.
#[test]
fn a_destination_root_others_own_or_can_write_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ct = ciphertext_tree(tmp.path());
    // 0o775: made by `mkdir` under umask 002; the message says how to fix it.
    for (uid, m) in [(OTHER, 0o700), (0, 0o777), (0, 0o775)] {
        let out = tmp.path().join(format!("root-{uid}-{m:o}"));
        fs::create_dir(&out).unwrap();
        chown(&out, Some(uid), None).unwrap();
        fs::set_permissions(&out, fs::Permissions::from_mode(m)).unwrap();
        let err = decrypt(&ct, &out, &TreeOptions::new()).err();
        assert!(
            matches!(&err, Some(Error::Misuse(e)) if e.contains("chmod go-w")),
            "uid {uid} mode {m:o}: {err:?}"
        );
        assert!(!out.join("top").exists());
    }
    // Our own, owner-only, pre-existing root is fine.
    let out = tmp.path().join("ours");
    fs::create_dir(&out).unwrap();
    fs::set_permissions(&out, fs::Permissions::from_mode(0o700)).unwrap();
    let r = decrypt(&ct, &out, &TreeOptions::new()).unwrap();
    assert_eq!(status(&r, "top.kms"), FileStatus::Done);
}

/// M2: decrypting, the ciphertext tree's modes (which its writers choose) do not reach the
/// plaintext unless asked; directories never get group or other write, either way.
#[test]
fn decrypted_modes_are_owner_only_unless_preserved() {
    let tmp = tempfile::tempdir().unwrap();
    let ct = ciphertext_tree(tmp.path());
    fs::set_permissions(ct.join("top.kms"), fs::Permissions::from_mode(0o666)).unwrap();
    fs::set_permissions(ct.join("private"), fs::Permissions::from_mode(0o777)).unwrap();
    fs::set_permissions(&ct, fs::Permissions::from_mode(0o777)).unwrap();
    let out = tmp.path().join("out");
    let r = decrypt(&ct, &out, &TreeOptions::new()).unwrap();
    assert_eq!(status(&r, "top.kms"), FileStatus::Done);
    assert_eq!(mode(&out.join("top")), 0o600);
    assert_eq!(mode(&out.join("private/secret")), 0o600);
    assert_eq!(mode(&out.join("private")), 0o700);
    assert_eq!(mode(&out), 0o700);

    let kept = tmp.path().join("kept");
    decrypt(&ct, &kept, &TreeOptions::new().preserve_mode(true)).unwrap();
    assert_eq!(mode(&kept.join("top")), 0o666);
    assert_eq!(mode(&kept.join("private")), 0o755);
    assert_eq!(mode(&kept), 0o755);

    // Encrypting carries modes (it is ciphertext), but not group/other write on directories.
    let plain = tmp.path().join("plain");
    fs::set_permissions(plain.join("private"), fs::Permissions::from_mode(0o777)).unwrap();
    fs::set_permissions(plain.join("top"), fs::Permissions::from_mode(0o644)).unwrap();
    let ct2 = tmp.path().join("ct2");
    encrypt(&plain, &ct2, &TreeOptions::new()).unwrap();
    assert_eq!(mode(&ct2.join("private")), 0o755);
    assert_eq!(mode(&ct2.join("top.kms")), 0o644);
}

/// M3: a source tree far deeper than MAX_DEPTH neither overflows the stack nor runs out of
/// descriptors: the part below the cap is reported failed, the rest is done.
#[test]
fn a_very_deep_tree_is_cut_at_the_depth_cap() {
    use rustix::fs::{mkdirat, openat, Mode, OFlags};
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let mut dir =
        rustix::fs::open(&src, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
    // Made relative to a descriptor: the full path is longer than PATH_MAX.
    for depth in 1..=2000usize {
        if matches!(depth, 10 | 200 | 1000) {
            let f = openat(
                &dir,
                "f",
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL,
                Mode::from_raw_mode(0o600),
            )
            .unwrap();
            rustix::io::write(f.as_fd(), b"deep").unwrap();
        }
        mkdirat(&dir, "d", Mode::from_raw_mode(0o700)).unwrap();
        dir = openat(&dir, "d", OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
    }
    drop(dir);
    let rel = |levels: usize, name: &str| {
        let mut p = PathBuf::new();
        for _ in 0..levels {
            p.push("d");
        }
        p.push(name);
        p
    };
    let dst = tmp.path().join("dst");
    let k = keyring();
    let (summary, reports) =
        collect(|f| encrypt_tree(&Encryptor::new(&k), &src, &dst, &TreeOptions::new(), f)).unwrap();
    let r = reports.lock().unwrap();
    assert_eq!(r[&rel(9, "f")].status, FileStatus::Done);
    assert_eq!(r[&rel(199, "f")].status, FileStatus::Done);
    assert!(
        !r.contains_key(&rel(999, "f")),
        "beyond the cap is not entered"
    );
    // The directory at depth MAX_DEPTH + 1 is the one not entered.
    let cut = &rel(kms_envelope::tree::MAX_DEPTH, "d");
    assert_eq!(r[cut].status, FileStatus::Failed, "{:?}", r[cut].note);
    assert!(r[cut].note.as_ref().unwrap().contains("levels deep"));
    assert_eq!((summary.done, summary.failed), (2, 1));
}

/// L2: a suffix that is a path, or empty on decrypt, is refused before anything is done.
#[test]
fn a_suffix_that_is_not_a_plain_name_ending_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ct = ciphertext_tree(tmp.path());
    let plain = tmp.path().join("plain");
    for bad in ["/x", "a/b", "x\0", ".", ".."] {
        let out = tmp.path().join("enc");
        let err = encrypt(&plain, &out, &TreeOptions::new().suffix(bad)).err();
        assert!(matches!(err, Some(Error::Misuse(_))), "{bad:?}");
        assert!(!out.exists(), "{bad:?}");
    }
    for bad in ["", "/kms", "."] {
        let out = tmp.path().join("dec");
        let err = decrypt(&ct, &out, &TreeOptions::new().suffix(bad)).err();
        assert!(matches!(err, Some(Error::Misuse(_))), "{bad:?}");
        assert!(!out.exists(), "{bad:?}");
    }
}

/// L4: resume redoes files when a required-only context pair (stored in no header) or the
/// commitment policy differs from the earlier run's.
#[test]
fn resume_compares_required_only_context_and_commitment_policy() {
    use kms_envelope::{CommitmentPolicy, EncryptionContext};
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), b"data").unwrap();
    let dst = tmp.path().join("dst");
    let k = keyring();
    let run = |e: Encryptor<'_>, resume: bool| {
        let o = TreeOptions::new().resume(resume);
        let (_, reports) = collect(|f| encrypt_tree(&e, &src, &dst, &o, f)).unwrap();
        status(&reports, "f")
    };
    let with = |v: &str| {
        let ctx: EncryptionContext = [("tenant", "a"), ("req", v)].into_iter().collect();
        Encryptor::new(&k)
            .context(ctx)
            .require_context_keys(["req"])
    };
    assert_eq!(run(with("1"), false), FileStatus::Done);
    assert_eq!(run(with("1"), true), FileStatus::AlreadyDone);
    assert_eq!(
        run(with("2"), true),
        FileStatus::Done,
        "required-only pair changed"
    );
    let lax = with("2").dangerous_commitment_policy(CommitmentPolicy::RequireEncryptAllowDecrypt);
    assert_eq!(
        run(lax, true),
        FileStatus::Done,
        "commitment policy changed"
    );
}

/// L1: --report never follows a link, never overwrites an existing file without --force (and
/// then only a regular file with one name), and is refused inside either tree.
#[cfg(feature = "cli")]
#[test]
fn the_report_is_created_new_outside_the_trees() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("wrap.key");
    fs::write(&key, [7u8; 32]).unwrap();
    let spec = format!("tree:key:{}", key.display());
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), b"data").unwrap();
    let run = |dst: &str, report: &Path, force: bool| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_kms-envelope"));
        c.env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .args(["encrypt", "-r", "-i"])
            .arg(&src)
            .arg("-o")
            .arg(tmp.path().join(dst))
            .args(["--raw-aes-key", &spec, "--report"])
            .arg(report);
        if force {
            c.arg("--force");
        }
        c.output().unwrap()
    };
    // A link at the report's name is not followed, even with --force.
    let victim = tmp.path().join("victim");
    fs::write(&victim, b"keep").unwrap();
    let link = tmp.path().join("link.json");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    assert!(!run("d1", &link, false).status.success());
    assert!(!run("d2", &link, true).status.success());
    assert_eq!(fs::read(&victim).unwrap(), b"keep");
    // An existing file needs --force, and a second name (a hard link to an input) refuses it.
    let existing = tmp.path().join("r.json");
    fs::write(&existing, b"old").unwrap();
    assert!(!run("d3", &existing, false).status.success());
    assert_eq!(fs::read(&existing).unwrap(), b"old");
    fs::hard_link(&victim, tmp.path().join("hard.json")).unwrap();
    assert!(!run("d4", &tmp.path().join("hard.json"), true)
        .status
        .success());
    assert_eq!(fs::read(&victim).unwrap(), b"keep");
    // Inside a tree: refused.
    assert!(!run("d5", &src.join("r.json"), false).status.success());
    assert!(!src.join("r.json").exists());
    // A new file outside the trees works, 0600; --force replaces our own regular file.
    let out = run("d6", &tmp.path().join("new.json"), false);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode(&tmp.path().join("new.json")), 0o600);
    let out = run("d7", &existing, true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(fs::read_to_string(&existing).unwrap().contains("\"done\""));
}

/// L1: with force, a manifest that is a hard link to another file (an input) is not emptied;
/// a manifest inside either tree is refused.
#[test]
fn a_forced_manifest_is_replaced_only_if_it_has_one_name() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), b"precious").unwrap();
    let m = tmp.path().join("m");
    fs::hard_link(src.join("f"), &m).unwrap();
    let dst = tmp.path().join("dst");
    let err = encrypt(&src, &dst, &TreeOptions::new().force(true).manifest(&m)).err();
    assert!(matches!(err, Some(Error::Misuse(_))), "{err:?}");
    assert_eq!(fs::read(src.join("f")).unwrap(), b"precious");
    for inside in [src.join("m2"), dst.join("m3")] {
        let err = encrypt(&src, &dst, &TreeOptions::new().manifest(&inside)).err();
        assert!(matches!(err, Some(Error::Misuse(_))), "{inside:?}");
        assert!(!inside.exists());
    }
    // Our own manifest with one name is replaced.
    let own = tmp.path().join("own");
    fs::write(&own, b"old\n").unwrap();
    encrypt(&src, &dst, &TreeOptions::new().force(true).manifest(&own)).unwrap();
    assert!(!fs::read_to_string(&own).unwrap().contains("old"));
}

/// Second review L-b: a resume keeps an output only if the path binding and the mode rule are
/// this run's too: a file decrypted without `context_path` must not count as done for a run
/// that binds paths (its message carries no path, so that run refuses it).
#[test]
fn resume_compares_the_path_binding_and_the_mode_rule() {
    let tmp = tempfile::tempdir().unwrap();
    let ct = ciphertext_tree(tmp.path());
    let dst = tmp.path().join("dst");
    let first = decrypt(&ct, &dst, &TreeOptions::new()).unwrap();
    assert_eq!(status(&first, "top.kms"), FileStatus::Done);
    let again = decrypt(&ct, &dst, &TreeOptions::new().resume(true)).unwrap();
    assert_eq!(status(&again, "top.kms"), FileStatus::AlreadyDone);
    let bound = TreeOptions::new().resume(true).context_path("path");
    let bound = decrypt(&ct, &dst, &bound).unwrap();
    assert_eq!(
        status(&bound, "top.kms"),
        FileStatus::Failed,
        "path binding changed"
    );
    let preserved = TreeOptions::new().resume(true).preserve_mode(true);
    let preserved = decrypt(&ct, &dst, &preserved).unwrap();
    assert_ne!(
        status(&preserved, "top.kms"),
        FileStatus::AlreadyDone,
        "mode rule changed"
    );
    // Second review L-e: a manifest with a second name is refused on resume.
    fs::hard_link(
        dst.join(".kms-envelope-manifest"),
        tmp.path().join("second-name"),
    )
    .unwrap();
    let err = decrypt(&ct, &dst, &TreeOptions::new().resume(true)).unwrap_err();
    assert!(err.to_string().contains("no other name"), "{err}");
}

/// Third review L-d: a symbolic link at the destination root is refused (a dangling one
/// too), not followed to wherever it points.
#[test]
fn a_link_at_the_destination_root_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ct = ciphertext_tree(tmp.path());
    let elsewhere = tmp.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    fs::set_permissions(&elsewhere, fs::Permissions::from_mode(0o700)).unwrap();
    for (link, target, slash) in [
        ("link", elsewhere.clone(), ""),
        ("dangling", tmp.path().join("none"), ""),
        // Review of the tree fixes, #2: `link/` and `link/.` made open() follow the link.
        ("slash", elsewhere.clone(), "/"),
        ("slashdot", elsewhere.clone(), "/."),
        ("dangling-slash", tmp.path().join("none"), "/"),
    ] {
        let made = tmp.path().join(link);
        std::os::unix::fs::symlink(&target, &made).unwrap();
        let link = PathBuf::from(format!("{}{slash}", made.display()));
        let err = decrypt(&ct, &link, &TreeOptions::new()).err();
        assert!(
            matches!(&err, Some(Error::Misuse(e)) if e.contains("symbolic link")),
            "{link:?}: {err:?}"
        );
        assert!(!target.join("top").exists(), "{link:?}");
    }
    assert!(!tmp.path().join("none").exists());
}

/// Third review L-c: with follow_symlinks, a graph of directories with two links from each
/// to the next (2^n paths) is walked in time linear in its size: a link to a directory
/// walked whole is not followed again (with a note that says so); each real directory is
/// still walked under its own path.
#[test]
fn follow_symlinks_enters_each_directory_once() {
    const LEVELS: usize = 12;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    for i in 0..=LEVELS {
        let d = src.join(format!("d{i:02}"));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("f"), format!("level {i}")).unwrap();
        if i < LEVELS {
            for link in ["a", "b"] {
                std::os::unix::fs::symlink(format!("../d{:02}", i + 1), d.join(link)).unwrap();
            }
        }
    }
    let k = keyring();
    let o = TreeOptions::new().follow_symlinks(true);
    let dst = tmp.path().join("dst");
    let (summary, reports) =
        collect(|f| encrypt_tree(&Encryptor::new(&k), &src, &dst, &o, f)).unwrap();
    // d00/f, the chain d00/a/a/.../f of LEVELS files, and each real d01..dLEVELS.
    assert_eq!(summary.done, 2 * LEVELS as u64 + 1);
    assert_eq!(summary.failed, 0);
    assert!(dst.join("d00/a/a/a/f.kms").exists());
    assert!(dst.join("d05/f.kms").exists());
    let again: Vec<_> = reports
        .lock()
        .unwrap()
        .values()
        .filter(|r| {
            r.note
                .as_deref()
                .is_some_and(|n| n.contains("walked whole"))
        })
        .map(|r| r.relative.clone())
        .collect();
    // The `b` of d00 and of each directory on the chain but the last, and both links of
    // each real directory but the last.
    assert_eq!(again.len(), LEVELS + 2 * (LEVELS - 1), "{again:?}");
}

/// Review of the tree fixes, #3: a directory reached through a followed link and by its real
/// path is walked under both when include/exclude leaves something out on the first path (in
/// either order): neither path's files are dropped as "already entered".
#[test]
fn a_filtered_first_path_does_not_hide_the_other() {
    let tmp = tempfile::tempdir().unwrap();
    // `current` sorts before `releases` (the link is walked first), `zcurrent` after it.
    for (link, filter, wanted) in [
        ("current", "exclude", "releases/v3/data.txt"),
        ("current", "include", "releases/v3/data.txt"),
        ("zcurrent", "exclude", "zcurrent/data.txt"),
        ("zcurrent", "include", "zcurrent/data.txt"),
    ] {
        let base = tmp.path().join(format!("{link}-{filter}"));
        let src = base.join("src");
        fs::create_dir_all(src.join("releases/v3")).unwrap();
        fs::write(src.join("releases/v3/data.txt"), b"v3").unwrap();
        std::os::unix::fs::symlink("releases/v3", src.join(link)).unwrap();
        // Leave out the other path's file.
        let left_out = if wanted.starts_with("releases") {
            link.to_string()
        } else {
            "releases".to_string()
        };
        let o = TreeOptions::new().follow_symlinks(true);
        let o = if filter == "exclude" {
            o.exclude(format!("{left_out}/**"))
        } else {
            o.include(format!("{}/**", wanted.split('/').next().unwrap()))
        };
        let dst = base.join("dst");
        let r = encrypt(&src, &dst, &o).unwrap();
        assert_eq!(status(&r, wanted), FileStatus::Done, "{link} {filter}");
        assert!(
            dst.join(format!("{wanted}.kms")).exists(),
            "{link} {filter}"
        );
    }
}

/// Review of the tree fixes, #3: with files left out on every path, a directory is entered
/// through links a bounded number of times, so a graph of links with 2^n paths stays linear.
#[test]
fn filtered_link_graphs_stay_linear() {
    const LEVELS: usize = 16;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    for i in 0..=LEVELS {
        let d = src.join(format!("d{i:02}"));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("f"), b"f").unwrap();
        fs::write(d.join("x"), b"left out").unwrap();
        if i < LEVELS {
            for link in ["a", "b"] {
                std::os::unix::fs::symlink(format!("../d{:02}", i + 1), d.join(link)).unwrap();
            }
        }
    }
    let o = TreeOptions::new().follow_symlinks(true).exclude("**/x");
    let k = keyring();
    let dst = tmp.path().join("dst");
    let (summary, _) = collect(|f| encrypt_tree(&Encryptor::new(&k), &src, &dst, &o, f)).unwrap();
    // At most once by its real path and LINK_ENTRIES (4) times through links each.
    assert!(summary.done <= 5 * (LEVELS as u64 + 1), "{summary:?}");
    assert!(summary.done > LEVELS as u64 + 1, "{summary:?}");
}

/// Review of the tree fixes, #4: ext4 gives a freed inode to the next directory made; one
/// made during the run in the place of a removed one it walked is not taken for it.
#[test]
fn a_reused_inode_is_not_taken_for_a_directory_walked_before() {
    for _attempt in 0..5 {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        // `a` (empty, walked whole), then `b` (a broken link: its note is made by the walk
        // itself, in order), then `c`, a link to `new`, made when `b`'s note comes.
        fs::create_dir_all(src.join("a")).unwrap();
        std::os::unix::fs::symlink("none", src.join("b")).unwrap();
        std::os::unix::fs::symlink("new", src.join("c")).unwrap();
        let old_ino = std::os::unix::fs::MetadataExt::ino(&fs::metadata(src.join("a")).unwrap());
        let reused = Mutex::new(false);
        let k = keyring();
        let o = TreeOptions::new().follow_symlinks(true);
        let dst = tmp.path().join("dst");
        let (_, r) = collect(|f| {
            let hook = |r: &FileReport| {
                if r.relative == Path::new("b") {
                    fs::remove_dir(src.join("a")).unwrap();
                    fs::create_dir(src.join("new")).unwrap();
                    fs::write(src.join("new/f"), b"new").unwrap();
                    let ino = std::os::unix::fs::MetadataExt::ino(
                        &fs::metadata(src.join("new")).unwrap(),
                    );
                    *reused.lock().unwrap() = ino == old_ino;
                }
                f(r);
            };
            encrypt_tree(&Encryptor::new(&k), &src, &dst, &o, &hook)
        })
        .unwrap();
        if !*reused.lock().unwrap() {
            continue; // the file system gave another inode: nothing to test this time
        }
        assert_eq!(status(&r, "c/f"), FileStatus::Done);
        return;
    }
    panic!("no attempt reused the inode: the file system under the temporary directory does not");
}

/// Third review, info: at the end of a run only the directories it made get their source's
/// mode and times; one that was there before keeps its own, and one swapped in (by name)
/// during the run is left alone and reported, since it is not the directory the run made.
#[test]
fn only_directories_the_run_made_get_modes_and_times() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    for d in ["old", "new"] {
        fs::create_dir_all(src.join(d)).unwrap();
        fs::write(src.join(d).join("f"), b"data").unwrap();
        fs::set_permissions(src.join(d), fs::Permissions::from_mode(0o755)).unwrap();
    }
    let dst = tmp.path().join("dst");
    fs::create_dir_all(dst.join("old")).unwrap();
    for d in [&dst, &dst.join("old")] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o700)).unwrap();
    }
    let r = encrypt(&src, &dst, &TreeOptions::new()).unwrap();
    assert_eq!(status(&r, "old/f"), FileStatus::Done);
    assert_eq!(mode(&dst.join("old")), 0o700, "there before the run");
    assert_eq!(mode(&dst), 0o700, "there before the run");
    assert_eq!(mode(&dst.join("new")), 0o755, "made by the run");

    // `new` is renamed away and another directory takes its name once its file is done.
    let dst = tmp.path().join("swapped");
    let k = keyring();
    let swap = |r: &FileReport| {
        if r.relative == Path::new("new/f") {
            fs::rename(dst.join("new"), dst.join("moved")).unwrap();
            fs::create_dir(dst.join("new")).unwrap();
            fs::set_permissions(dst.join("new"), fs::Permissions::from_mode(0o700)).unwrap();
        }
    };
    let (_, reports) = collect(|f| {
        let both = |r: &FileReport| {
            swap(r);
            f(r);
        };
        encrypt_tree(&Encryptor::new(&k), &src, &dst, &TreeOptions::new(), &both)
    })
    .unwrap();
    assert_eq!(mode(&dst.join("new")), 0o700, "the swapped-in directory");
    let note = reports.lock().unwrap()[Path::new("new")].note.clone();
    assert!(note.unwrap().contains("replaced"));
    assert_eq!(mode(&dst.join("old")), 0o755, "made by this run");
}

/// Third review, info: ciphertexts named `..kms` and `...kms` would strip to `.` and `..`,
/// directories, not files: they fail with a message that says why.
#[test]
fn a_ciphertext_name_that_strips_to_dot_dot_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ct = ciphertext_tree(tmp.path());
    fs::copy(ct.join("top.kms"), ct.join("..kms")).unwrap();
    fs::copy(ct.join("top.kms"), ct.join("private/...kms")).unwrap();
    let out = tmp.path().join("out");
    let r = decrypt(&ct, &out, &TreeOptions::new()).unwrap();
    for name in ["..kms", "private/...kms"] {
        let report = r.lock().unwrap()[Path::new(name)].clone();
        assert_eq!(report.status, FileStatus::Failed, "{name}");
        assert!(
            report
                .note
                .as_deref()
                .unwrap()
                .contains("names a directory"),
            "{name}: {report:?}"
        );
    }
    assert_eq!(status(&r, "top.kms"), FileStatus::Done);
}

/// Review of the tree fixes, #1: the root is made and opened through its parent's
/// descriptor, and it gets the source root's mode at the end only if no one else can rename
/// entries in that parent (else what was filled may be a directory of ours renamed into the
/// name): in a parent others can write (not sticky) or own, it stays 0700 with a note.
#[test]
fn the_root_gets_its_mode_only_in_a_parent_others_cannot_rename_in() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), b"data").unwrap();
    fs::set_permissions(&src, fs::Permissions::from_mode(0o750)).unwrap();
    for (uid, m, given) in [
        (0, 0o755, true),
        (0, 0o1777, true),
        (0, 0o777, false),
        (0, 0o775, false),
        (OTHER, 0o755, false),
    ] {
        let parent = tmp.path().join(format!("parent-{uid}-{m:o}"));
        fs::create_dir(&parent).unwrap();
        fs::set_permissions(&parent, fs::Permissions::from_mode(m)).unwrap();
        chown(&parent, Some(uid), None).unwrap();
        let dst = parent.join("out");
        let r = encrypt(&src, &dst, &TreeOptions::new()).unwrap();
        assert_eq!(status(&r, "f"), FileStatus::Done, "{parent:?}");
        assert_eq!(mode(&dst), if given { 0o750 } else { 0o700 }, "{parent:?}");
        let root = r.lock().unwrap().get(Path::new("")).cloned();
        assert_eq!(
            root.is_some_and(|n| n.note.unwrap().contains("left owner-only")),
            !given,
            "{parent:?}"
        );
    }
}

/// Review of the tree fixes, #5: the manifest records the directories a run makes, so a
/// resumed run gives those still 0700 (as a killed run leaves them) their source's mode; one
/// removed and made again since (ext4 may give it the same inode: the birth time tells) is not
/// the directory made, and is left alone.
#[test]
fn a_resumed_run_finishes_the_directories_an_earlier_run_made() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    for d in ["kept", "remade"] {
        fs::create_dir_all(src.join(d)).unwrap();
        fs::write(src.join(d).join("f"), b"data").unwrap();
        fs::set_permissions(src.join(d), fs::Permissions::from_mode(0o750)).unwrap();
    }
    let dst = tmp.path().join("dst");
    let o = TreeOptions::new().resume(true);
    let r = encrypt(&src, &dst, &o).unwrap();
    assert_eq!(status(&r, "kept/f"), FileStatus::Done);
    // As a run killed before its end leaves them: 0700, and no mark that they were finished.
    unfinish(&dst);
    fs::set_permissions(dst.join("kept"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::remove_dir_all(dst.join("remade")).unwrap();
    fs::create_dir(dst.join("remade")).unwrap();
    fs::set_permissions(dst.join("remade"), fs::Permissions::from_mode(0o700)).unwrap();
    let r = encrypt(&src, &dst, &o).unwrap();
    assert_eq!(status(&r, "kept/f"), FileStatus::AlreadyDone);
    assert_eq!(status(&r, "remade/f"), FileStatus::Done);
    assert_eq!(mode(&dst.join("kept")), 0o750, "made by the earlier run");
    assert_eq!(mode(&dst.join("remade")), 0o700, "not the directory made");
}

/// Second review of the tree fixes, F1: a link skipped on one path (here a cycle) leaves its
/// parent not walked whole, so a later link to that parent is followed and the files the
/// include selects through it are written.
#[test]
fn a_link_skipped_as_a_cycle_does_not_mark_its_parent_walked_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("s1");
    fs::create_dir_all(src.join("A/P")).unwrap();
    fs::write(src.join("A/f"), b"f").unwrap();
    std::os::unix::fs::symlink(src.join("A"), src.join("A/P/c")).unwrap();
    std::os::unix::fs::symlink(src.join("A/P"), src.join("q")).unwrap();
    let o = TreeOptions::new().follow_symlinks(true).include("q/**");
    let dst = tmp.path().join("o1");
    let r = encrypt(&src, &dst, &o).unwrap();
    assert_eq!(status(&r, "q/c/f"), FileStatus::Done);
    assert!(dst.join("q/c/f.kms").is_file());
}

/// Second review of the tree fixes, F2: a link not entered because of the link cap may drop
/// files no earlier path took: it fails (not a skip), saying which link, why and what to do.
#[test]
fn a_link_over_the_link_cap_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let ext = tmp.path().join("ext");
    fs::create_dir(&ext).unwrap();
    fs::write(ext.join("file"), b"data").unwrap();
    let src = tmp.path().join("s2");
    fs::create_dir(&src).unwrap();
    for i in 1..=5 {
        std::os::unix::fs::symlink(&ext, src.join(format!("l{i}"))).unwrap();
    }
    let o = TreeOptions::new().follow_symlinks(true).include("l5/**");
    let k = keyring();
    let dst = tmp.path().join("o2");
    let (summary, r) = collect(|f| encrypt_tree(&Encryptor::new(&k), &src, &dst, &o, f)).unwrap();
    assert_eq!(summary.failed, 1, "{summary:?}");
    let report = r.lock().unwrap()[Path::new("l5")].clone();
    assert_eq!(report.status, FileStatus::Failed);
    let note = report.note.unwrap();
    assert!(
        note.contains("4 times") && note.contains("narrower links"),
        "{note}"
    );
}

/// Takes out of the default manifest in `dst` the marks that a run finished its directories,
/// as a run killed before its end leaves it.
fn unfinish(dst: &Path) {
    let manifest = dst.join(".kms-envelope-manifest");
    let text = fs::read_to_string(&manifest).unwrap();
    let kept: String = text
        .lines()
        .filter(|l| !l.contains("dirs_finished"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(kept.len(), text.len(), "no mark in {text}");
    fs::write(&manifest, kept).unwrap();
}

/// Second review of the tree fixes, F3: a resume after a complete run leaves alone the modes
/// of the directories that run made and finished: the user's later chmod stays.
#[test]
fn a_resume_after_a_complete_run_keeps_later_changes_to_directory_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("hidden")).unwrap();
    fs::write(src.join("hidden/f"), b"data").unwrap();
    fs::set_permissions(src.join("hidden"), fs::Permissions::from_mode(0o755)).unwrap();
    let dst = tmp.path().join("dst");
    let o = TreeOptions::new().resume(true);
    encrypt(&src, &dst, &o).unwrap();
    assert_eq!(mode(&dst.join("hidden")), 0o755);
    fs::set_permissions(dst.join("hidden"), fs::Permissions::from_mode(0o700)).unwrap();
    let r = encrypt(&src, &dst, &o).unwrap();
    assert_eq!(status(&r, "hidden/f"), FileStatus::AlreadyDone);
    assert_eq!(
        mode(&dst.join("hidden")),
        0o700,
        "the user's chmod after the run"
    );
}

/// Second review of the tree fixes, F4: a destination root made in a parent others can rename
/// entries in is not recorded as made, so a later resume (the parent closed since) does not
/// give it the source's mode either: what was filled may not be the directory made.
#[test]
fn a_root_made_in_an_open_parent_is_not_finished_by_a_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), b"data").unwrap();
    fs::set_permissions(&src, fs::Permissions::from_mode(0o750)).unwrap();
    let parent = tmp.path().join("open");
    fs::create_dir(&parent).unwrap();
    fs::set_permissions(&parent, fs::Permissions::from_mode(0o777)).unwrap();
    let dst = parent.join("out");
    let o = TreeOptions::new().resume(true);
    encrypt(&src, &dst, &o).unwrap();
    assert_eq!(mode(&dst), 0o700);
    // As a run killed before its end, then resumed once the parent is closed.
    unfinish(&dst);
    fs::set_permissions(&parent, fs::Permissions::from_mode(0o755)).unwrap();
    let r = encrypt(&src, &dst, &o).unwrap();
    assert_eq!(status(&r, "f"), FileStatus::AlreadyDone);
    assert_eq!(mode(&dst), 0o700, "not recorded as made");
}

/// Second review of the tree fixes, F5: a manifest whose last line was cut short by a crash
/// gets a newline before a resumed run appends: that run's first line stays whole.
#[test]
fn a_resume_after_a_cut_line_keeps_its_own_first_line_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("a"), b"a").unwrap();
    let dst = tmp.path().join("dst");
    let o = TreeOptions::new().resume(true);
    encrypt(&src, &dst, &o).unwrap();
    let manifest = dst.join(".kms-envelope-manifest");
    let cut = r#"{"path":"cut sho"#;
    let mut f = fs::OpenOptions::new().append(true).open(&manifest).unwrap();
    std::io::Write::write_all(&mut f, cut.as_bytes()).unwrap();
    drop(f);
    fs::write(src.join("b"), b"b").unwrap();
    let r = encrypt(&src, &dst, &o).unwrap();
    assert_eq!(status(&r, "b"), FileStatus::Done);
    let text = fs::read_to_string(&manifest).unwrap();
    assert!(text.lines().any(|l| l == cut), "{text}");
    let r = encrypt(&src, &dst, &o).unwrap();
    assert_eq!(status(&r, "b"), FileStatus::AlreadyDone, "{text}");
}
