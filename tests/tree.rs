//! The `tree` module against moto's KMS: whole trees both ways, and a tree that changes under
//! the run (files removed or swapped for FIFOs, links planted in the destination, files
//! swapped between paths), KMS throttling through the fault proxy, and resume after a kill.
#![cfg(all(feature = "kms", feature = "tree"))]

mod support;

#[path = "support/data.rs"]
mod data;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use kms_envelope::keyring::KmsKeyring;
use kms_envelope::tree::{
    caching_keyring, decrypt_tree, encrypt_tree, Durability, FileReport, FileStatus, TreeOptions,
    TreeSummary,
};
use kms_envelope::CacheLimits;
use kms_envelope::{Decryptor, Encryptor, Error, Keyring};
use support::files::{
    assert_files, kill_after_first_batch, mkfifo, slow_data_keys, spread_files, trees, write,
    write_named,
};
use support::proxy::{Fault, Proxy};
use support::{kms_builder as builder, moto, new_key};

fn keyring(key: &str) -> KmsKeyring {
    builder(&moto().endpoint()).generator(key).build().unwrap()
}

/// Collects every report, by relative path.
#[derive(Default)]
struct Reports(Mutex<BTreeMap<PathBuf, FileReport>>);

impl Reports {
    fn record(&self, r: &FileReport) {
        self.0.lock().unwrap().insert(r.relative.clone(), r.clone());
    }
    fn get(&self, rel: &str) -> FileReport {
        self.0
            .lock()
            .unwrap()
            .get(Path::new(rel))
            .cloned()
            .unwrap_or_else(|| panic!("no report for {rel}: {:?}", self.0.lock().unwrap().keys()))
    }
    fn note(&self, rel: &str) -> String {
        let r = self.get(rel);
        r.note
            .clone()
            .unwrap_or_else(|| panic!("no note for {rel}: {r:?}"))
    }
    fn status(&self, rel: &str) -> FileStatus {
        self.get(rel).status
    }
}

type OnFile<'a> = &'a (dyn Fn(&FileReport) + Sync);

/// Runs one tree operation, which must not fail as a whole, recording every file's report.
fn collect(run: impl FnOnce(OnFile) -> Result<TreeSummary, Error>) -> (TreeSummary, Reports) {
    let reports = Reports::default();
    let summary = run(&|r| reports.record(r)).unwrap();
    (summary, reports)
}

fn encrypt(
    keyring: &dyn Keyring,
    src: &Path,
    dst: &Path,
    opts: &TreeOptions,
) -> (TreeSummary, Reports) {
    collect(|on_file| encrypt_tree(&Encryptor::new(keyring), src, dst, opts, on_file))
}

fn decrypt(
    keyring: &dyn Keyring,
    src: &Path,
    dst: &Path,
    opts: &TreeOptions,
) -> (TreeSummary, Reports) {
    collect(|on_file| decrypt_tree(&Decryptor::new(keyring), src, dst, opts, on_file))
}

/// The error of an encryption run refused as a whole.
fn refused(keyring: &dyn Keyring, src: &Path, dst: &Path, opts: &TreeOptions) -> Error {
    encrypt_tree(&Encryptor::new(keyring), src, dst, opts, &|_| {}).unwrap_err()
}

/// Every name under `dir` that a run left behind as a temporary file.
fn leftovers(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let t = e.file_type().unwrap();
        if t.is_dir() {
            out.extend(leftovers(&e.path()));
        } else if e.file_name().as_bytes().starts_with(b".kms-envelope-")
            && e.file_name() != ".kms-envelope-manifest"
        {
            out.push(e.path());
        }
    }
    out
}

#[test]
fn a_mixed_tree_round_trips_with_modes_times_and_notes() {
    let key = new_key();
    let kr = keyring(&key);
    let (_tmp, src, enc, dec) = trees();
    let mut files: BTreeMap<PathBuf, Vec<u8>> = BTreeMap::new();
    files.insert("top.txt".into(), b"top".to_vec());
    files.insert("empty".into(), Vec::new());
    files.insert("a/b/c/deep.bin".into(), data::pseudo_random(3 << 20));
    files.insert(
        "ünïcödé/日本語.txt".into(),
        "こんにちは".as_bytes().to_vec(),
    );
    files.insert(
        PathBuf::from(OsStr::from_bytes(b"latin1-caf\xe9")),
        b"not utf-8".to_vec(),
    );
    for (rel, data) in &files {
        write(&src.join(rel), data);
    }
    fs::create_dir_all(src.join("empty-dir")).unwrap();
    fs::set_permissions(src.join("top.txt"), fs::Permissions::from_mode(0o4750)).unwrap();
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    fs::File::options()
        .write(true)
        .open(src.join("top.txt"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    symlink(src.join("top.txt"), src.join("link-to-file")).unwrap();
    symlink(src.join("a"), src.join("link-to-dir")).unwrap();
    mkfifo(&src.join("a/fifo"));

    let (summary, reports) = encrypt(&kr, &src, &enc, &TreeOptions::new().jobs(4));
    assert_eq!(summary.failed, 0, "{summary:?}");
    assert_eq!(summary.done, files.len() as u64, "{summary:?}");
    assert_eq!(summary.skipped, 3, "two links and a FIFO: {summary:?}");
    assert!(reports.note("link-to-file").contains("symbolic link"));
    assert!(reports.note("a/fifo").contains("FIFO"));
    let top = reports.get("top.txt");
    assert_eq!(top.status, FileStatus::Done);
    assert_eq!(
        top.wrapped_keys,
        vec![key.clone()],
        "the wrapped key's ARN is reported"
    );
    assert_eq!(top.message_id.as_ref().map(Vec::len), Some(32));
    assert_eq!(
        top.destination.as_deref(),
        Some(enc.join("top.txt.kms").as_path())
    );
    assert!(enc.join("a/b/c/deep.bin.kms").is_file());
    assert!(
        enc.join("empty-dir").is_dir(),
        "an empty directory is mirrored"
    );
    assert!(!enc.join("link-to-file.kms").exists() && !enc.join("a/fifo.kms").exists());
    let meta = fs::metadata(enc.join("top.txt.kms")).unwrap();
    assert_eq!(
        meta.mode() & 0o7777,
        0o750,
        "setuid stripped, the rest carried"
    );
    assert_eq!(meta.modified().unwrap(), old, "mtime carried");
    assert!(leftovers(&enc).is_empty(), "{:?}", leftovers(&enc));

    // Modes carried as they were: preserve_mode (the default on decrypt is owner-only).
    let opts = TreeOptions::new().jobs(4).preserve_mode(true);
    let (summary, reports) = decrypt(&kr, &enc, &dec, &opts);
    assert_eq!(summary.failed, 0, "{summary:?}");
    assert_eq!(summary.done, files.len() as u64, "{summary:?}");
    // The manifest in the encrypted tree is ours and is not decrypted.
    assert_eq!(
        reports.status(".kms-envelope-manifest"),
        FileStatus::Skipped
    );
    for (rel, data) in &files {
        assert_eq!(&fs::read(dec.join(rel)).unwrap(), data, "{}", rel.display());
    }
    let meta = fs::metadata(dec.join("top.txt")).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o750);
    assert_eq!(meta.modified().unwrap(), old);
    assert!(dec.join("empty-dir").is_dir());
    assert_eq!(reports.get("top.txt.kms").message_id, top.message_id);
}

#[test]
fn follow_symlinks_follows_links_and_stops_at_cycles() {
    let kr = keyring(&new_key());
    let (tmp, src, enc, _) = trees();
    let outside = tmp.path().join("outside");
    write(&outside.join("shared.txt"), b"shared");
    write(&src.join("d/f.txt"), b"f");
    symlink(&outside, src.join("linked-dir")).unwrap();
    symlink(&src, src.join("d/loop")).unwrap();
    let (summary, reports) = encrypt(&kr, &src, &enc, &TreeOptions::new().follow_symlinks(true));
    assert_eq!(summary.failed, 0, "{summary:?}");
    assert_eq!(reports.status("linked-dir/shared.txt"), FileStatus::Done);
    assert!(enc.join("linked-dir/shared.txt.kms").is_file());
    assert_eq!(reports.status("d/loop"), FileStatus::Skipped);
    assert!(reports.note("d/loop").contains("cycle"));
}

#[test]
fn a_file_removed_or_replaced_by_a_fifo_after_the_walk_fails_alone() {
    let kr = keyring(&new_key());
    let (_tmp, src, enc, _) = trees();
    write_named(&src, &["a", "b", "c", "d"]);
    let reports = Reports::default();
    // One job: "b" and "c" are listed before "a" is done, and changed when it is.
    let summary = encrypt_tree(
        &Encryptor::new(&kr),
        &src,
        &enc,
        &TreeOptions::new().jobs(1),
        &|r| {
            if r.relative == Path::new("a") {
                fs::remove_file(src.join("b")).unwrap();
                fs::remove_file(src.join("c")).unwrap();
                mkfifo(&src.join("c"));
            }
            reports.record(r)
        },
    )
    .unwrap();
    assert_eq!((summary.done, summary.failed), (2, 2), "{summary:?}");
    assert!(reports.note("b").contains("removed"));
    assert!(
        reports.note("c").contains("FIFO"),
        "{:?}",
        reports.get("c").note
    );
    for name in ["b.kms", "c.kms"] {
        assert!(!enc.join(name).exists(), "no output for a failed file");
    }
    assert!(enc.join("d.kms").is_file());
    assert!(leftovers(&enc).is_empty());
}

#[test]
fn links_planted_in_the_destination_are_not_followed() {
    let kr = keyring(&new_key());
    let (tmp, src, enc, _) = trees();
    let elsewhere = tmp.path().join("elsewhere");
    write(&src.join("sub/secret"), b"s");
    write(&src.join("top"), b"t");
    fs::create_dir_all(&elsewhere).unwrap();
    write(&elsewhere.join("target"), b"untouched");
    fs::create_dir_all(&enc).unwrap();
    symlink(&elsewhere, enc.join("sub")).unwrap();
    symlink(elsewhere.join("target"), enc.join("top.kms")).unwrap();
    for force in [false, true] {
        let (summary, reports) = encrypt(&kr, &src, &enc, &TreeOptions::new().force(force));
        assert_eq!(summary.failed, 2, "force {force}: {summary:?}");
        assert!(reports.note("sub/secret").contains("symbolic link"));
        assert!(reports.note("top").contains("symbolic link"));
        assert_eq!(fs::read(elsewhere.join("target")).unwrap(), b"untouched");
        assert_eq!(
            fs::read_dir(&elsewhere).unwrap().count(),
            1,
            "nothing written through the link"
        );
        assert!(fs::symlink_metadata(enc.join("top.kms"))
            .unwrap()
            .file_type()
            .is_symlink());
    }
}

#[test]
fn existing_outputs_need_force_and_overlapping_trees_are_refused() {
    let kr = keyring(&new_key());
    let (tmp, src, enc, _) = trees();
    write(&src.join("f"), b"one");
    encrypt(&kr, &src, &enc, &TreeOptions::new());
    let first = fs::read(enc.join("f.kms")).unwrap();
    // A second plain run refuses the manifest; forced, it replaces the output.
    let err = refused(&kr, &src, &enc, &TreeOptions::new());
    assert!(err.to_string().contains("manifest"), "{err}");
    let (summary, _) = encrypt(&kr, &src, &enc, &TreeOptions::new().force(true));
    assert_eq!(summary.done, 1, "{summary:?}");
    assert_ne!(fs::read(enc.join("f.kms")).unwrap(), first);
    // Without force, with another manifest: the existing output fails its file.
    let (summary, reports) = encrypt(
        &kr,
        &src,
        &enc,
        &TreeOptions::new().manifest(tmp.path().join("m")),
    );
    assert_eq!(summary.failed, 1, "{summary:?}");
    assert!(reports.note("f").contains("exists"));
    fs::create_dir_all(src.join("x")).unwrap();
    for (s, d) in [
        (&src, src.join("inner")),
        (&src, src.clone()),
        (&src.join("x"), src.clone()),
    ] {
        let err = refused(&kr, s, &d, &TreeOptions::new());
        assert!(err.to_string().contains("overlap"), "{err}");
    }
    assert!(!src.join("inner").exists());
}

#[test]
fn dry_run_include_and_exclude() {
    let kr = keyring(&new_key());
    let (_tmp, src, enc, _) = trees();
    for rel in ["a.txt", "b.log", "keep/c.txt", "skip/d.txt"] {
        write(&src.join(rel), b"x");
    }
    let opts = TreeOptions::new().include("*.txt").exclude("skip");
    let (summary, reports) = encrypt(&kr, &src, &enc, &opts.clone().dry_run(true));
    assert_eq!(summary.planned, 2, "{summary:?}");
    assert_eq!(reports.status("keep/c.txt"), FileStatus::Planned);
    assert!(!enc.exists(), "a dry run writes nothing");
    let (summary, _) = encrypt(&kr, &src, &enc, &opts);
    assert_eq!(summary.done, 2, "{summary:?}");
    assert!(enc.join("a.txt.kms").is_file() && enc.join("keep/c.txt.kms").is_file());
    assert!(!enc.join("b.log.kms").exists() && !enc.join("skip").exists());
}

#[test]
fn context_path_makes_files_swapped_between_paths_fail() {
    let kr = keyring(&new_key());
    let (tmp, src, enc, dec) = trees();
    write(&src.join("a/x"), b"file x");
    write(&src.join("b/y"), b"file y");
    write(&src.join("c/z"), b"file z");
    let opts = TreeOptions::new().context_path("path");
    assert_eq!(encrypt(&kr, &src, &enc, &opts).0.done, 3);
    let (x, y) = (enc.join("a/x.kms"), enc.join("b/y.kms"));
    let held = tmp.path().join("held");
    fs::rename(&x, &held).unwrap();
    fs::rename(&y, &x).unwrap();
    fs::rename(&held, &y).unwrap();
    let (summary, reports) = decrypt(&kr, &enc, &dec, &opts);
    assert_eq!((summary.done, summary.failed), (1, 2), "{summary:?}");
    for rel in ["a/x.kms", "b/y.kms"] {
        let note = reports.note(rel);
        assert!(
            note.contains("path"),
            "a context mismatch on the path: {note}"
        );
    }
    assert!(!dec.join("a/x").exists() && !dec.join("b/y").exists());
    assert_eq!(fs::read(dec.join("c/z")).unwrap(), b"file z");
    // The binding is what catches it: without it the swapped files decrypt.
    let (summary, _) = decrypt(&kr, &enc, &tmp.path().join("dec2"), &TreeOptions::new());
    assert_eq!(summary.done, 3, "{summary:?}");
}

#[test]
fn throttling_is_retried_and_reported_per_file() {
    let key = new_key();
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    // The first file's three attempts are throttled (it fails), the second's first two (it
    // succeeds on its third), then everything passes.
    let proxy = Proxy::start(moto().port, move |req| {
        if req.operation == "GenerateDataKey" && s.fetch_add(1, Ordering::SeqCst) < 5 {
            Fault::Error(400, "ThrottlingException")
        } else {
            Fault::Forward
        }
    });
    let kr = builder(&proxy.endpoint()).generator(&key).build().unwrap();
    let (_tmp, src, enc, _) = trees();
    write_named(&src, &["1", "2", "3", "4"]);
    let (summary, reports) = encrypt(&kr, &src, &enc, &TreeOptions::new().jobs(1));
    assert_eq!((summary.done, summary.failed), (3, 1), "{summary:?}");
    let note = reports.note("1");
    assert!(note.to_lowercase().contains("throttl"), "{note}");
    assert!(!enc.join("1.kms").exists());
    assert_eq!(reports.status("2"), FileStatus::Done);
    assert_eq!(seen.load(Ordering::SeqCst), 3 + 3 + 1 + 1);
    // A resumed run redoes only the failed file.
    let (summary, _) = encrypt(&kr, &src, &enc, &TreeOptions::new().jobs(1).resume(true));
    assert_eq!((summary.done, summary.already_done), (1, 3), "{summary:?}");
}

#[test]
fn resume_skips_only_files_provably_done() {
    let key = new_key();
    let kr = keyring(&key);
    let (_tmp, src, enc, dec) = trees();
    for i in 1..=6 {
        write(
            &src.join(format!("f{i}")),
            format!("content {i}").as_bytes(),
        );
    }
    let opts = TreeOptions::new().context_path("path");
    assert_eq!(encrypt(&kr, &src, &enc, &opts).0.done, 6);
    // f1: source changed; f2: output cut short; f3: output replaced by another valid
    // encryption of the same file (as anyone allowed to encrypt could plant); f4: source
    // touched only; f5: output gone; f6 untouched.
    fs::write(src.join("f1"), b"content 1, changed").unwrap();
    let f2 = fs::read(enc.join("f2.kms")).unwrap();
    fs::write(enc.join("f2.kms"), &f2[..f2.len() - 1]).unwrap();
    let planted = Encryptor::new(&kr)
        .context(kms_envelope::EncryptionContext::new().with("path", "f3"))
        .encrypt(b"content 3")
        .unwrap();
    fs::write(enc.join("f3.kms"), planted).unwrap();
    let later = SystemTime::now() + Duration::from_secs(5);
    fs::File::options()
        .write(true)
        .open(src.join("f4"))
        .unwrap()
        .set_modified(later)
        .unwrap();
    fs::remove_file(enc.join("f5.kms")).unwrap();
    let (summary, reports) = encrypt(&kr, &src, &enc, &opts.clone().resume(true));
    assert_eq!((summary.done, summary.already_done), (5, 1), "{summary:?}");
    assert_eq!(reports.status("f6"), FileStatus::AlreadyDone);
    let (summary, _) = decrypt(&kr, &enc, &dec, &opts);
    assert_eq!(summary.done, 6, "{summary:?}");
    assert_eq!(fs::read(dec.join("f1")).unwrap(), b"content 1, changed");
    // Everything is done now; a run with another frame length or context key redoes it all.
    assert_eq!(
        encrypt(&kr, &src, &enc, &opts.clone().resume(true))
            .0
            .already_done,
        6
    );
    let (summary, _) = collect(|on_file| {
        let encryptor = Encryptor::new(&kr).frame_length(1024);
        encrypt_tree(&encryptor, &src, &enc, &opts.clone().resume(true), on_file)
    });
    assert_eq!((summary.done, summary.already_done), (6, 0), "{summary:?}");
    let (summary, _) = encrypt(&kr, &src, &enc, &TreeOptions::new().resume(true));
    assert_eq!(
        (summary.done, summary.already_done),
        (6, 0),
        "no context path: {summary:?}"
    );
}

#[test]
fn a_cache_with_limits_saves_kms_calls_unless_paths_are_bound() {
    let key = new_key();
    let proxy = Proxy::start(moto().port, |_| Fault::Forward);
    let inner: Arc<dyn Keyring> =
        Arc::new(builder(&proxy.endpoint()).generator(&key).build().unwrap());
    let limits = CacheLimits {
        max_age: Duration::from_secs(60),
        max_messages: 4,
        max_bytes: 1 << 20,
    };
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    for i in 0..10 {
        write(&src.join(format!("f{i}")), b"small");
    }
    let cached = caching_keyring(inner.clone(), limits).unwrap();
    let (summary, _) = encrypt(
        &cached,
        &src,
        &tmp.path().join("e1"),
        &TreeOptions::new().jobs(1),
    );
    assert_eq!(summary.done, 10);
    assert_eq!(
        proxy.count("GenerateDataKey"),
        3,
        "10 files, 4 per data key"
    );
    let cached = caching_keyring(inner, limits).unwrap();
    let opts = TreeOptions::new().jobs(1).context_path("path");
    encrypt(&cached, &src, &tmp.path().join("e2"), &opts);
    assert_eq!(
        proxy.count("GenerateDataKey"),
        3 + 10,
        "one per file with bound paths"
    );
}

/// Run by `a_killed_run_resumes`, in a child process that is killed mid-run.
#[test]
#[ignore = "a child of a_killed_run_resumes"]
fn child_runs_a_slow_tree() {
    let (Ok(endpoint), Ok(key), Ok(src), Ok(dst)) = (
        std::env::var("TREE_CHILD_ENDPOINT"),
        std::env::var("TREE_CHILD_KEY"),
        std::env::var("TREE_CHILD_SRC"),
        std::env::var("TREE_CHILD_DST"),
    ) else {
        return;
    };
    let kr = builder(&endpoint).generator(&key).build().unwrap();
    let opts = TreeOptions::new().jobs(2).durability(Durability::SyncFs);
    encrypt_tree(
        &Encryptor::new(&kr),
        Path::new(&src),
        Path::new(&dst),
        &opts,
        &|_| {},
    )
    .unwrap();
}

#[test]
fn a_killed_run_resumes() {
    let key = new_key();
    // Each data key takes 100 ms, so 80 files on two jobs take about four seconds.
    let slow = slow_data_keys();
    let (_tmp, src, enc, dec) = trees();
    let files = spread_files(&src, 80, 4);
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_runs_a_slow_tree",
            "--ignored",
            "--test-threads=1",
        ])
        .env("TREE_CHILD_ENDPOINT", slow.endpoint())
        .env("TREE_CHILD_KEY", &key)
        .env("TREE_CHILD_SRC", &src)
        .env("TREE_CHILD_DST", &enc)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed once the manifest holds a batch: some files are done, most are not.
    kill_after_first_batch(child, &enc.join(".kms-envelope-manifest"));
    let kr = keyring(&key);
    let (summary, _) = encrypt(&kr, &src, &enc, &TreeOptions::new().resume(true));
    assert!(summary.already_done > 0 && summary.done > 0, "{summary:?}");
    assert_eq!(summary.already_done + summary.done, 80, "{summary:?}");
    assert!(leftovers(&enc).is_empty(), "{:?}", leftovers(&enc));
    let (summary, _) = decrypt(&kr, &enc, &dec, &TreeOptions::new());
    assert_eq!((summary.done, summary.failed), (80, 0), "{summary:?}");
    assert_files(&dec, &files);
}

#[test]
fn a_manifest_others_could_write_or_a_fifo_is_refused() {
    let kr = keyring(&new_key());
    let (_tmp, src, enc, _) = trees();
    write(&src.join("f"), b"f");
    encrypt(&kr, &src, &enc, &TreeOptions::new());
    let manifest = enc.join(".kms-envelope-manifest");
    fs::set_permissions(&manifest, fs::Permissions::from_mode(0o666)).unwrap();
    let resume = TreeOptions::new().resume(true);
    let err = refused(&kr, &src, &enc, &resume);
    assert!(err.to_string().contains("writable only by you"), "{err}");
    fs::remove_file(&manifest).unwrap();
    mkfifo(&manifest);
    let err = refused(&kr, &src, &enc, &resume);
    assert!(err.to_string().contains("not a regular file"), "{err}");
}

#[test]
fn context_path_fails_a_name_that_is_not_utf8_alone() {
    let kr = keyring(&new_key());
    let (_tmp, src, enc, _) = trees();
    write(&src.join(OsStr::from_bytes(b"caf\xe9")), b"latin-1 name");
    write(&src.join("ok"), b"fine");
    let (summary, reports) = encrypt(&kr, &src, &enc, &TreeOptions::new().context_path("path"));
    assert_eq!((summary.done, summary.failed), (1, 1), "{summary:?}");
    let bad = reports
        .0
        .lock()
        .unwrap()
        .values()
        .find(|r| r.status == FileStatus::Failed)
        .cloned();
    assert!(bad.unwrap().note.unwrap().contains("not UTF-8"));
}

#[test]
fn resume_works_with_a_raw_aes_keyring_and_sees_another_key() {
    // A raw AES wrapped key's provider info ends with a per-message IV: not part of the key.
    let one = kms_envelope::RawAesKeyring::new("tree", "one", &[1; 32]).unwrap();
    let two = kms_envelope::RawAesKeyring::new("tree", "two", &[2; 32]).unwrap();
    let (_tmp, src, enc, _) = trees();
    write_named(&src, &["a", "b"]);
    assert_eq!(encrypt(&one, &src, &enc, &TreeOptions::new()).0.done, 2);
    let resume = TreeOptions::new().resume(true);
    let (summary, _) = encrypt(&one, &src, &enc, &resume);
    assert_eq!((summary.done, summary.already_done), (0, 2), "{summary:?}");
    let (summary, _) = encrypt(&two, &src, &enc, &resume);
    assert_eq!(
        (summary.done, summary.already_done),
        (2, 0),
        "another key: {summary:?}"
    );
}

#[test]
fn fail_fast_stops_at_the_first_failure() {
    let kr = keyring(&new_key());
    let (tmp, src, enc, _) = trees();
    write_named(&src, &["a", "b", "c", "d"]);
    fs::create_dir_all(&enc).unwrap();
    symlink(tmp.path().join("nowhere"), enc.join("b.kms")).unwrap();
    let opts = TreeOptions::new().jobs(1).fail_fast(true);
    let (summary, _) = encrypt(&kr, &src, &enc, &opts);
    assert!(summary.stopped, "{summary:?}");
    assert_eq!((summary.done, summary.failed), (1, 1), "{summary:?}");
    assert!(!enc.join("c.kms").exists() && !enc.join("d.kms").exists());
    let (summary, _) = encrypt(&kr, &src, &enc, &TreeOptions::new().jobs(1).resume(true));
    assert!(!summary.stopped);
    assert_eq!(
        (summary.done, summary.already_done, summary.failed),
        (2, 1, 1),
        "{summary:?}"
    );
}

#[test]
fn directories_are_owner_only_until_the_run_ends() {
    let kr = keyring(&new_key());
    let (_tmp, src, enc, _) = trees();
    write(&src.join("sub/f"), b"f");
    fs::set_permissions(&src, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(src.join("sub"), fs::Permissions::from_mode(0o751)).unwrap();
    let seen = Mutex::new(Vec::new());
    let summary = encrypt_tree(
        &Encryptor::new(&kr),
        &src,
        &enc,
        &TreeOptions::new(),
        &|_| {
            for d in [&enc, &enc.join("sub")] {
                seen.lock()
                    .unwrap()
                    .push(fs::metadata(d).unwrap().mode() & 0o7777);
            }
        },
    )
    .unwrap();
    assert_eq!(summary.done, 1);
    assert_eq!(
        *seen.lock().unwrap(),
        [0o700, 0o700],
        "while the run goes on"
    );
    assert_eq!(fs::metadata(&enc).unwrap().mode() & 0o7777, 0o755);
    assert_eq!(
        fs::metadata(enc.join("sub")).unwrap().mode() & 0o7777,
        0o751
    );
}
