//! Where results go: a stream (stdout, or a FIFO or character device of the user's own named as
//! OUT, written through), or a regular file written atomically (an unnamed temporary file beside OUT, mode
//! 0600, fsync unless `--no-fsync`, then linked or renamed into place), so OUT is complete or
//! absent. Only a regular file is ever replaced, and only with `--force`; a symbolic link is
//! neither followed nor replaced.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, CWD};

/// Why OUT cannot be opened: the caller's choice of OUT (usage), or the system (I/O).
pub enum OpenError {
    Refused(String),
    Io(String),
}

/// The output side of `encrypt`/`decrypt`.
pub enum Output {
    /// Standard output, or an existing FIFO or character device: bytes reach the reader as
    /// they are written, so the caller applies the release rules of a stream.
    Stream(File),
    File(AtomicFile),
}

/// A file under construction. Usually (O_TMPFILE) it has no name until `commit`: if the
/// process dies, the kernel reclaims it and nothing is left behind. Where the file system has
/// no unnamed files (NFS, FUSE) or /proc is not mounted, it is a named `.kms-envelope-XXXXXX`
/// beside OUT, removed on any failure, but left behind if the process is ended by a signal
/// (SIGKILL, SIGTERM, SIGINT, SIGHUP: there is no handler).
pub struct AtomicFile {
    file: File,
    /// Bytes written, and how far writeback has been asked for.
    written: u64,
    flushed_to: u64,
    writeback: Option<Writeback>,
    dest: PathBuf,
    /// With `--force`: the regular file OUT was when it was checked, (device, inode).
    replaces: Option<(u64, u64)>,
    durable: bool,
    /// Only where the file system has no unnamed temporary files.
    named: Option<tempfile::TempPath>,
}

/// What an existing OUT is, as `lstat` and `fstat` name it.
fn kind(t: std::fs::FileType) -> &'static str {
    if t.is_symlink() {
        "a symbolic link"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else {
        "a regular file"
    }
}

impl Output {
    /// `durable`: fsync OUT (and its directory) before and after linking it into place.
    pub fn open(
        out: &Path,
        input: Option<&Path>,
        force: bool,
        durable: bool,
    ) -> Result<Output, OpenError> {
        if out == Path::new("-") {
            // A descriptor of our own: unbuffered (no plaintext left in std's stdout buffer),
            // and a closed stdout is an I/O error here rather than a panic later.
            let fd = io::stdout()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| OpenError::Io(format!("cannot write to standard output: {e}")))?;
            return Ok(Output::Stream(File::from(fd)));
        }
        if let (Some(input), Ok(out_meta)) = (input, std::fs::metadata(out)) {
            if let Ok(in_meta) = std::fs::metadata(input) {
                if in_meta.dev() == out_meta.dev() && in_meta.ino() == out_meta.ino() {
                    return Err(OpenError::Refused(format!(
                        "output {} is the input file: write to another path",
                        out.display()
                    )));
                }
            }
        }
        let replaces = match out.symlink_metadata() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(OpenError::Io(format!(
                    "cannot examine output {}: {e}",
                    out.display()
                )))
            }
            Ok(m) if m.file_type().is_file() => {
                if !force {
                    return Err(OpenError::Refused(format!(
                        "output {} exists: choose another path or pass --force to replace it",
                        out.display()
                    )));
                }
                Some((m.dev(), m.ino()))
            }
            Ok(m) if m.file_type().is_fifo() || m.file_type().is_char_device() => {
                // Checked before opening too: opening a FIFO wakes whoever waits on it.
                owned_by_me(out, kind(m.file_type()), m.uid())?;
                private_fifo(out, m.file_type().is_fifo(), m.mode())?;
                return write_through(out).map(Output::Stream);
            }
            Ok(m) if m.file_type().is_symlink() => {
                return Err(OpenError::Refused(format!(
                    "output {} is a symbolic link: kms-envelope neither follows nor replaces \
                     links; name the file itself, or write to standard output with -o -",
                    out.display()
                )))
            }
            Ok(m) => {
                return Err(OpenError::Refused(format!(
                    "output {} is {}: write to a new or regular file (--force replaces one), a \
                     FIFO or character device (written through), or -o - for standard output",
                    out.display(),
                    kind(m.file_type())
                )))
            }
        };
        let dir = parent_dir(out);
        let cannot = |e: &dyn std::fmt::Display| {
            OpenError::Io(format!(
                "cannot create a temporary file in {}: {e}",
                dir.display()
            ))
        };
        let unnamed = rustix::fs::openat(
            CWD,
            &dir,
            OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        );
        // The unnamed file is linked through /proc/self/fd, so without /proc it could not be
        // committed after all the work: fall back to a named file now instead.
        let unnamed = unnamed
            .ok()
            .filter(|fd| Path::new(&proc_fd_path(fd)).exists());
        let (file, named) = match unnamed {
            Some(fd) => (File::from(fd), None),
            None => {
                let tmp = tempfile::Builder::new()
                    .prefix(".kms-envelope-")
                    .tempfile_in(&dir)
                    .map_err(|e| cannot(&e))?;
                let (file, path) = tmp.into_parts();
                (file, Some(path))
            }
        };
        // Owner-only whatever the umask: the file may hold plaintext.
        rustix::fs::fchmod(&file, Mode::from_raw_mode(0o600)).map_err(|e| cannot(&e))?;
        Ok(Output::File(AtomicFile {
            file,
            written: 0,
            flushed_to: 0,
            writeback: None,
            dest: out.to_path_buf(),
            replaces,
            durable,
            named,
        }))
    }

    /// Whether OUT names a stream (`-`, or an existing FIFO or character device, not followed
    /// through a link), so that a refusal that depends on it comes before `open` wakes a reader.
    /// `open` checks the node again on its descriptor.
    pub fn names_a_stream(out: &Path) -> bool {
        out == Path::new("-")
            || out.symlink_metadata().is_ok_and(|m| {
                let t = m.file_type();
                t.is_fifo() || t.is_char_device()
            })
    }

    /// Whether bytes written reach a reader at once (so a signed message's plaintext must be
    /// held until its signature verifies), rather than an unnamed file that `commit` links.
    pub fn is_stream(&self) -> bool {
        matches!(self, Output::Stream(_))
    }

    pub fn writer(&mut self) -> &mut dyn Write {
        match self {
            Output::Stream(s) => s,
            Output::File(f) => f,
        }
    }

    /// Makes the output visible under its final name. Dropping an uncommitted output leaves
    /// nothing behind.
    pub fn commit(self) -> io::Result<()> {
        match self {
            Output::Stream(mut s) => s.flush(),
            Output::File(f) => f.commit(),
        }
    }
}

/// Opens an existing FIFO or character device to write through it, never following a link
/// and checking on the descriptor that it is still such a node (it may have been swapped
/// since `lstat`) and that it is ours: a FIFO another user left at OUT (in /tmp, say) would
/// hand them the plaintext. Non-blocking, so a FIFO nobody reads is refused rather than
/// waited on forever.
fn write_through(out: &Path) -> Result<File, OpenError> {
    let fd = rustix::fs::open(
        out,
        OFlags::WRONLY | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        rustix::io::Errno::NXIO => OpenError::Refused(format!(
            "output {} is a FIFO that nobody is reading: start its reader first",
            out.display()
        )),
        e => OpenError::Io(format!("cannot open output {}: {e}", out.display())),
    })?;
    let st = rustix::fs::fstat(&fd)
        .map_err(|e| OpenError::Io(format!("cannot examine output {}: {e}", out.display())))?;
    let what = match FileType::from_raw_mode(st.st_mode) {
        FileType::Fifo => "a FIFO",
        FileType::CharacterDevice => "a character device",
        _ => {
            return Err(OpenError::Refused(format!(
                "output {} changed while it was being opened: try again",
                out.display()
            )))
        }
    };
    owned_by_me(out, what, st.st_uid)?;
    private_fifo(out, what == "a FIFO", st.st_mode)?;
    // Writes block again from here on, as on standard output.
    rustix::fs::fcntl_getfl(&fd)
        .and_then(|fl| rustix::fs::fcntl_setfl(&fd, fl - OFlags::NONBLOCK))
        .map_err(|e| OpenError::Io(format!("cannot open output {}: {e}", out.display())))?;
    Ok(File::from(fd))
}

/// Refuses a node at OUT that another user owns (for root: one root did not make).
fn owned_by_me(out: &Path, what: &str, uid: u32) -> Result<(), OpenError> {
    let me = rustix::process::geteuid().as_raw();
    if uid == me {
        return Ok(());
    }
    Err(OpenError::Refused(format!(
        "output {} is {what} owned by user {uid}, not by you (user {me}): kms-envelope writes \
         only through nodes you own; remove it or write elsewhere",
        out.display()
    )))
}

/// Refuses a FIFO that group or others may open for reading: another local user's reader
/// would get the plaintext. A device is not affected (reading it does not return what was written).
fn private_fifo(out: &Path, fifo: bool, mode: u32) -> Result<(), OpenError> {
    if !fifo || mode & 0o044 == 0 {
        return Ok(());
    }
    Err(OpenError::Refused(format!(
        "output {} is a FIFO that other users may read (mode {:o}): `chmod go-r` it, or write \
         elsewhere",
        out.display(),
        mode & 0o7777
    )))
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
    /// With `--force`, checks just before the rename that OUT is still the regular file it was
    /// when it was opened, so that a node or link swapped in meanwhile is never replaced.
    fn check_replaced(&self) -> io::Result<()> {
        let Some((dev, ino)) = self.replaces else {
            return Ok(());
        };
        match self.dest.symlink_metadata() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Ok(m) if m.file_type().is_file() && (m.dev(), m.ino()) == (dev, ino) => Ok(()),
            Ok(m) => Err(io::Error::other(format!(
                "it was replaced by {} while being written; left as it is",
                kind(m.file_type())
            ))),
            Err(e) => Err(e),
        }
    }

    fn commit(mut self) -> io::Result<()> {
        if let Some(w) = self.writeback.take() {
            w.finish();
        }
        if self.durable {
            self.file.sync_all()?;
        }
        let force = self.replaces.is_some();
        match self.named.take() {
            Some(path) => {
                if force {
                    self.check_replaced()?;
                    path.persist(&self.dest).map_err(|e| e.error)?;
                } else {
                    path.persist_noclobber(&self.dest).map_err(|e| e.error)?;
                }
            }
            None => {
                let proc = proc_fd_path(&self.file);
                if force {
                    // Link under a fresh name beside OUT, then rename over it atomically.
                    let staging = link_staging(proc.as_str(), &self.dest)?;
                    if let Err(e) = self
                        .check_replaced()
                        .and_then(|()| std::fs::rename(&staging, &self.dest))
                    {
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
        // OUT is complete and in place: a directory that cannot be synced (one without read
        // permission, mode -wx) costs only the new name's durability, so warn and succeed.
        if self.durable {
            let dir = parent_dir(&self.dest);
            if let Err(e) = File::open(&dir).and_then(|d| d.sync_all()) {
                crate::term::warn(&format!(
                    "{} is written, but its directory {} could not be synced ({e}): after a \
                     power loss or OS crash the new name may be lost",
                    self.dest.display(),
                    dir.display()
                ));
            }
        }
        Ok(())
    }
}

/// The name under which `fd`'s file can be linked (`linkat` with AT_SYMLINK_FOLLOW).
fn proc_fd_path(fd: &impl AsRawFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// The directory OUT is in: `.` for a bare name, whose parent is the empty path.
fn parent_dir(out: &Path) -> PathBuf {
    match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Links the unnamed file `proc` (its `/proc/self/fd` path) beside `dest` under a short random
/// name: one derived from OUT's could pass NAME_MAX, and a predictable one could be taken
/// first by another local user to make the command fail.
fn link_staging(proc: &str, dest: &Path) -> io::Result<PathBuf> {
    let mut tries = 0;
    loop {
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).map_err(|e| io::Error::other(e.to_string()))?;
        let name: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let staging = dest.with_file_name(format!(".kms-envelope-{name}"));
        match rustix::fs::linkat(CWD, proc, CWD, &staging, AtFlags::SYMLINK_FOLLOW) {
            Ok(()) => return Ok(staging),
            Err(rustix::io::Errno::EXIST) if tries < 8 => tries += 1,
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_name_is_in_the_current_directory() {
        assert_eq!(parent_dir(Path::new("out.txt")), Path::new("."));
        assert_eq!(parent_dir(Path::new("./out.txt")), Path::new("."));
        assert_eq!(parent_dir(Path::new("a/out.txt")), Path::new("a"));
        assert_eq!(parent_dir(Path::new("/out.txt")), Path::new("/"));
    }
}
