//! Where results go: stdout, or a file written atomically (an unnamed temporary file beside
//! OUT, fsync, then linked or renamed into place), so OUT is complete or absent.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, CWD};

/// The output side of `encrypt`/`decrypt`.
pub enum Output {
    Stdout(io::Stdout),
    File(AtomicFile),
}

/// A file under construction. Until `commit`, it has no name: if the process dies, the
/// kernel reclaims it and nothing is left behind.
pub struct AtomicFile {
    file: File,
    dest: PathBuf,
    force: bool,
    /// Only where the file system has no unnamed temporary files.
    named: Option<tempfile::TempPath>,
}

impl Output {
    pub fn open(out: &Path, input: Option<&Path>, force: bool) -> Result<Output, String> {
        if out == Path::new("-") {
            return Ok(Output::Stdout(io::stdout()));
        }
        if let (Some(input), Ok(out_meta)) = (input, std::fs::metadata(out)) {
            use std::os::unix::fs::MetadataExt;
            if let Ok(in_meta) = std::fs::metadata(input) {
                if in_meta.dev() == out_meta.dev() && in_meta.ino() == out_meta.ino() {
                    return Err(format!(
                        "output {} is the input file: write to another path",
                        out.display()
                    ));
                }
            }
        }
        if !force && out.symlink_metadata().is_ok() {
            return Err(format!(
                "output {} exists: choose another path or pass --force to replace it",
                out.display()
            ));
        }
        let dir = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let unnamed = rustix::fs::openat(
            CWD,
            &dir,
            rustix::fs::OFlags::TMPFILE | rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::from_raw_mode(0o600),
        );
        let (file, named) = match unnamed {
            Ok(fd) => (File::from(fd), None),
            Err(_) => {
                let tmp = tempfile::Builder::new()
                    .prefix(".kms-envelope-")
                    .tempfile_in(&dir)
                    .map_err(|e| {
                        format!("cannot create a temporary file in {}: {e}", dir.display())
                    })?;
                let (file, path) = tmp.into_parts();
                (file, Some(path))
            }
        };
        Ok(Output::File(AtomicFile {
            file,
            dest: out.to_path_buf(),
            force,
            named,
        }))
    }

    pub fn writer(&mut self) -> &mut dyn Write {
        match self {
            Output::Stdout(s) => s,
            Output::File(f) => &mut f.file,
        }
    }

    /// Makes the output visible under its final name. Dropping an uncommitted output leaves
    /// nothing behind.
    pub fn commit(self) -> io::Result<()> {
        match self {
            Output::Stdout(mut s) => s.flush(),
            Output::File(f) => f.commit(),
        }
    }
}

impl AtomicFile {
    fn commit(self) -> io::Result<()> {
        self.file.sync_all()?;
        match self.named {
            Some(path) => {
                if self.force {
                    path.persist(&self.dest).map_err(|e| e.error)?;
                } else {
                    path.persist_noclobber(&self.dest).map_err(|e| e.error)?;
                }
            }
            None => {
                let proc = format!("/proc/self/fd/{}", self.file.as_raw_fd());
                if self.force {
                    // Link under a fresh name beside OUT, then rename over it atomically.
                    let staging = self.dest.with_file_name(format!(
                        ".{}.kms-envelope-{}",
                        self.dest
                            .file_name()
                            .map(|n| n.to_string_lossy())
                            .unwrap_or_default(),
                        std::process::id()
                    ));
                    rustix::fs::linkat(CWD, proc.as_str(), CWD, &staging, AtFlags::SYMLINK_FOLLOW)?;
                    if let Err(e) = std::fs::rename(&staging, &self.dest) {
                        let _ = std::fs::remove_file(&staging);
                        return Err(e);
                    }
                } else {
                    rustix::fs::linkat(
                        CWD,
                        proc.as_str(),
                        CWD,
                        &self.dest,
                        AtFlags::SYMLINK_FOLLOW,
                    )?;
                }
            }
        }
        if let Some(dir) = self.dest.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}
