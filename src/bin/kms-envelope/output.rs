//! Where results go: stdout, or a file written atomically (an unnamed temporary file beside
//! OUT, fsync unless `--no-fsync`, then linked or renamed into place), so OUT is complete or
//! absent.

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
    /// Bytes written, and how far writeback has been asked for.
    written: u64,
    flushed_to: u64,
    writeback: Option<Writeback>,
    dest: PathBuf,
    force: bool,
    durable: bool,
    /// Only where the file system has no unnamed temporary files.
    named: Option<tempfile::TempPath>,
}

impl Output {
    /// `durable`: fsync OUT (and its directory) before and after linking it into place.
    pub fn open(
        out: &Path,
        input: Option<&Path>,
        force: bool,
        durable: bool,
    ) -> Result<Output, String> {
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
            written: 0,
            flushed_to: 0,
            writeback: None,
            dest: out.to_path_buf(),
            force,
            durable,
            named,
        }))
    }

    pub fn writer(&mut self) -> &mut dyn Write {
        match self {
            Output::Stdout(s) => s,
            Output::File(f) => f,
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

/// Dirty bytes after which the kernel is asked to start writing them back.
const WRITEBACK_STEP: u64 = 16 << 20;

/// Starts writeback of ranges of a file, on a thread of its own: `posix_fadvise(DONTNEED)`
/// submits the dirty pages for writing without waiting for them, so the disk works while the
/// data is still being produced and the fsync in `commit` waits only for the tail; the
/// submission itself (file-system work) runs beside the writing rather than in it. Advice
/// only: durability still comes from that fsync, and a file system that ignores the advice
/// loses nothing but the overlap.
struct Writeback {
    ranges: std::sync::mpsc::Sender<(u64, u64)>,
    thread: std::thread::JoinHandle<()>,
}

impl Writeback {
    fn start(file: &File) -> Option<Writeback> {
        let file = file.try_clone().ok()?;
        let (ranges, rx) = std::sync::mpsc::channel::<(u64, u64)>();
        let thread = std::thread::Builder::new()
            .name("writeback".into())
            .spawn(move || {
                for (start, len) in rx {
                    let len = std::num::NonZeroU64::new(len);
                    let _ = rustix::fs::fadvise(&file, start, len, rustix::fs::Advice::DontNeed);
                }
            })
            .ok()?;
        Some(Writeback { ranges, thread })
    }

    /// Waits for the submissions asked for so far.
    fn finish(self) {
        drop(self.ranges);
        let _ = self.thread.join();
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.durable && self.written - self.flushed_to >= WRITEBACK_STEP {
            if self.writeback.is_none() {
                self.writeback = Writeback::start(&self.file);
            }
            if let Some(w) = &self.writeback {
                let _ = w
                    .ranges
                    .send((self.flushed_to, self.written - self.flushed_to));
            }
            self.flushed_to = self.written;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl AtomicFile {
    fn commit(mut self) -> io::Result<()> {
        if let Some(w) = self.writeback.take() {
            w.finish();
        }
        if self.durable {
            self.file.sync_all()?;
        }
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
        if let Some(dir) = self
            .dest
            .parent()
            .filter(|p| self.durable && !p.as_os_str().is_empty())
        {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}
