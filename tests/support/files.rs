//! Trees of files for the directory-tree tests: where they go, how they are written, and a run
//! killed with SIGKILL once its manifest holds a batch.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::moto;
use super::proxy::{Fault, Proxy};

/// A temporary directory and, under it, the paths of a source, an encrypted and a decrypted
/// tree (none of them created yet). The directory goes when the first value is dropped.
pub fn trees() -> (TempDir, PathBuf, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let (src, enc, dec) = (
        tmp.path().join("src"),
        tmp.path().join("enc"),
        tmp.path().join("dec"),
    );
    (tmp, src, enc, dec)
}

/// Writes `data` at `path`, creating its parent directories.
pub fn write(path: &Path, data: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, data).unwrap();
}

/// Writes each name in `names` under `dir`, with the name as its content.
pub fn write_named(dir: &Path, names: &[&str]) {
    for name in names {
        write(&dir.join(name), name.as_bytes());
    }
}

/// Writes `count` small files spread over `dirs` directories under `src`; returns each one's
/// relative path and content, for [`assert_files`].
pub fn spread_files(src: &Path, count: usize, dirs: usize) -> Vec<(String, Vec<u8>)> {
    let files: Vec<(String, Vec<u8>)> = (0..count)
        .map(|i| {
            (
                format!("d{}/f{i:02}", i % dirs),
                format!("file {i}").into_bytes(),
            )
        })
        .collect();
    for (rel, data) in &files {
        write(&src.join(rel), data);
    }
    files
}

/// Asserts that each of `files` stands under `dir` with its content.
pub fn assert_files(dir: &Path, files: &[(String, Vec<u8>)]) {
    for (rel, data) in files {
        assert_eq!(&fs::read(dir.join(rel)).unwrap(), data, "{rel}");
    }
}

/// Makes a FIFO at `path`.
pub fn mkfifo(path: &Path) {
    assert!(Command::new("mkfifo").arg(path).status().unwrap().success());
}

/// A proxy in front of moto that holds every GenerateDataKey for 100 ms, so that a run over a
/// few dozen files lasts seconds and can be killed midway.
pub fn slow_data_keys() -> Proxy {
    Proxy::start(moto().port, |req| {
        if req.operation == "GenerateDataKey" {
            Fault::Delay(Duration::from_millis(100))
        } else {
            Fault::Forward
        }
    })
}

/// Kills `child` with SIGKILL once `manifest` holds a batch of files (lines with a message ID,
/// not only the directory lines written as directories are made): after output has started,
/// before the end (it fails the test if the run ends first or writes no batch within a minute).
pub fn kill_after_first_batch(mut child: Child, manifest: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !fs::read_to_string(manifest).is_ok_and(|m| m.contains("\"message_id\"")) {
        assert!(Instant::now() < deadline, "no manifest batch was written");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it was killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The names in `dir`, sorted.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}
