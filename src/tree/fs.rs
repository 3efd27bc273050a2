//! The file-system side of a tree run, written for trees that others may write to while it
//! runs: every name is opened relative to its directory's descriptor without following links,
//! types are decided by `fstat` on the open descriptor, and outputs are unnamed (or `O_EXCL`,
//! mode 0600) temporary files linked into place, never over anything unless replacing is
//! allowed, and then only over a regular file.

use std::ffi::{CStr, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat, Timestamps, CWD};
use rustix::io::Errno;

/// Flags of every open on the source side: no link followed (unless asked), no FIFO waited on,
/// no terminal taken.
fn read_flags(follow: bool) -> OFlags {
    let base = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    if follow {
        base
    } else {
        base | OFlags::NOFOLLOW
    }
}

/// What a node is, in words for a report.
pub(crate) fn kind(t: FileType) -> &'static str {
    match t {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        _ => "a special file",
    }
}

/// Opens the directory `name` in `dir` (no link followed unless `follow`), and its `fstat`.
pub(crate) fn open_dir(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    follow: bool,
) -> rustix::io::Result<(OwnedFd, Stat)> {
    let fd = rustix::fs::openat(
        dir,
        name,
        read_flags(follow) | OFlags::DIRECTORY,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&fd)?;
    Ok((fd, st))
}

/// A directory's (device, inode, birth time): see [`dir_id`].
pub(crate) type DirId = (u64, u64, i64, u32);

/// Who a directory is for the walk's "entered already" set: (device, inode) and its birth
/// time, since ext4 gives a freed inode to the next directory made, which would otherwise
/// pass for one entered before it was removed. Where the file system keeps no birth time,
/// (device, inode) alone.
pub(crate) fn dir_id(fd: impl AsFd, st: &Stat) -> DirId {
    let born = rustix::fs::statx(fd, c"", AtFlags::EMPTY_PATH, rustix::fs::StatxFlags::BTIME)
        .ok()
        .filter(|x| x.stx_mask & rustix::fs::StatxFlags::BTIME.bits() != 0)
        .map_or((0, 0), |x| (x.stx_btime.tv_sec, x.stx_btime.tv_nsec));
    (st.st_dev, st.st_ino, born.0, born.1)
}

/// Opens `name` in `dir` for reading and returns it with its `fstat`, refusing anything but a
/// regular file: the walk saw a name, but whatever is there now is what counts.
pub(crate) fn open_regular(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    follow: bool,
) -> Result<(File, Stat), String> {
    let fd =
        rustix::fs::openat(dir, name, read_flags(follow), Mode::empty()).map_err(|e| match e {
            Errno::LOOP => "it became a symbolic link after the walk; not followed".to_string(),
            Errno::NOENT => "it was removed after the walk".to_string(),
            e => format!("cannot open it: {}", errno_text(e)),
        })?;
    let st = rustix::fs::fstat(&fd).map_err(|e| format!("cannot examine it: {e}"))?;
    let t = FileType::from_raw_mode(st.st_mode);
    if t != FileType::RegularFile {
        return Err(format!(
            "it is now {} (it changed after the walk); only regular files are processed",
            kind(t)
        ));
    }
    Ok((File::from(fd), st))
}

/// An error number in words; running out of descriptors also says what to do about it.
pub(crate) fn errno_text(e: Errno) -> String {
    match e {
        Errno::MFILE | Errno::NFILE => format!(
            "{e}: too many open files; run with fewer jobs (--jobs) or raise the limit on open \
             files (ulimit -n)"
        ),
        e => e.to_string(),
    }
}

/// An I/O error in words, as [`errno_text`].
pub(crate) fn io_text(e: &io::Error) -> String {
    match Errno::from_io_error(e) {
        Some(n) => errno_text(n),
        None => e.to_string(),
    }
}

/// A destination directory `name` in `parent`, made (mode 0700 until the end of the run) if
/// missing; an existing link or non-directory there is refused, not followed. Returns it, its
/// `fstat`, and whether this call made it.
pub(crate) fn make_dir(
    parent: BorrowedFd<'_>,
    name: &OsStr,
) -> Result<(OwnedFd, Stat, bool), String> {
    let made = match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
        Ok(()) => true,
        Err(Errno::EXIST) => false,
        Err(e) => {
            return Err(format!(
                "cannot create the destination directory: {}",
                errno_text(e)
            ))
        }
    };
    let fd = rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::LOOP | Errno::NOTDIR => {
            "the destination directory is a symbolic link or not a directory: it is not \
             followed; remove it and run again"
                .to_string()
        }
        e => format!("cannot open the destination directory: {}", errno_text(e)),
    })?;
    let st = trusted_dir(&fd)?;
    Ok((fd, st, made))
}

/// Opens the directory `name` in `parent` again, never through a link, and checks that it is
/// still the directory `id` (device, inode) the run entered.
pub(crate) fn reopen_dir(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    id: (u64, u64),
) -> Result<OwnedFd, String> {
    let fd = rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("cannot open it again: {}", errno_text(e)))?;
    let st = rustix::fs::fstat(&fd).map_err(errno_text)?;
    if (st.st_dev, st.st_ino) != id {
        return Err("it was replaced by another directory during the run: left as it is".into());
    }
    Ok(fd)
}

/// Refuses a destination directory that someone else could fill or swap entries in: it must
/// be owned by this process's effective user and not writable by group or others. A directory
/// that existed before the run (or was swapped in) is otherwise the attacker's.
pub(crate) fn trusted_dir(fd: impl AsFd) -> Result<Stat, String> {
    let st = rustix::fs::fstat(fd)
        .map_err(|e| format!("cannot examine the destination directory: {e}"))?;
    let me = rustix::process::geteuid().as_raw();
    if st.st_uid != me || st.st_mode & 0o022 != 0 {
        // A directory made under umask 002 (group-writable) is the common case: say the fix.
        return Err(format!(
            "the destination directory is owned by uid {} with mode {:o}: it must be owned by \
             uid {me} and not writable by group or others; fix it (`chmod go-w DIR`, and \
             `chown` if it is not yours) or remove it",
            st.st_uid,
            st.st_mode & 0o7777
        ));
    }
    Ok(st)
}

/// The source's mode without setuid and setgid: an output must not grant privileges.
pub(crate) fn carried_mode(st: &Stat) -> Mode {
    Mode::from_raw_mode(st.st_mode & 0o1777)
}

/// The mode of an output file. Decrypting, the source's mode is the ciphertext tree's, which
/// its writers control: plaintext is owner-only unless modes are preserved on request.
pub(crate) fn file_mode(st: &Stat, decrypting: bool, preserve: bool) -> Mode {
    let mode = carried_mode(st).as_raw_mode();
    Mode::from_raw_mode(if decrypting && !preserve {
        mode & 0o600
    } else {
        mode
    })
}

/// The mode of a destination directory: as [`file_mode`] (0700 when decrypting), and never
/// group- or other-writable, since others could then plant or swap entries in it.
pub(crate) fn dir_mode(st: &Stat, decrypting: bool, preserve: bool) -> Mode {
    let mode = carried_mode(st).as_raw_mode() & !0o022;
    Mode::from_raw_mode(if decrypting && !preserve {
        mode & 0o700
    } else {
        mode
    })
}

/// The source's access and modification times.
pub(crate) fn carried_times(st: &Stat) -> Timestamps {
    Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: st.st_atime,
            tv_nsec: st.st_atime_nsec as _,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: st.st_mtime,
            tv_nsec: st.st_mtime_nsec as _,
        },
    }
}

/// What identifies a version of a source file: a changed file changes one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Version {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
}

impl Version {
    pub(crate) fn of(st: &Stat) -> Version {
        Version {
            dev: st.st_dev,
            ino: st.st_ino,
            size: st.st_size as u64,
            mtime: (st.st_mtime, st.st_mtime_nsec as i64),
            ctime: (st.st_ctime, st.st_ctime_nsec as i64),
        }
    }
}

/// An output under construction in its destination directory: unnamed (`O_TMPFILE`) where the
/// file system allows, else a fresh `.kms-envelope-XXXX` name made with `O_EXCL`; mode 0600
/// until it is complete. Dropped without [`commit`](Self::commit), it leaves nothing (a named
/// one is unlinked; only a killed process leaves a named one behind).
pub(crate) struct TempOutput<'d> {
    pub file: File,
    dir: BorrowedFd<'d>,
    named: Option<OsString>,
    /// Whether the output is in place: until then a named file's contents are emptied before
    /// its name is removed, in case the name reaches another file.
    done: bool,
}

/// A random name for a temporary or staging file; a predictable one could be taken first.
fn random_name() -> io::Result<OsString> {
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).map_err(|e| io::Error::other(e.to_string()))?;
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    Ok(OsString::from(format!("{}{hex}", super::OWN_PREFIX)))
}

fn proc_fd_path(fd: &impl AsRawFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

impl<'d> TempOutput<'d> {
    pub(crate) fn new(dir: BorrowedFd<'d>) -> io::Result<TempOutput<'d>> {
        let mode = Mode::from_raw_mode(0o600);
        if let Ok(fd) = rustix::fs::openat(
            dir,
            c".",
            OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
            mode,
        ) {
            // Linked later through /proc: without /proc it could not be, so use a name instead.
            if std::path::Path::new(&proc_fd_path(&fd)).exists() {
                return Ok(TempOutput {
                    file: File::from(fd),
                    dir,
                    named: None,
                    done: false,
                });
            }
        }
        Self::named(dir)
    }

    /// A named temporary output, for file systems without unnamed files (or without /proc).
    fn named(dir: BorrowedFd<'d>) -> io::Result<TempOutput<'d>> {
        let mode = Mode::from_raw_mode(0o600);
        for _ in 0..8 {
            let name = random_name()?;
            match rustix::fs::openat(
                dir,
                name.as_os_str(),
                OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                mode,
            ) {
                Ok(fd) => {
                    return Ok(TempOutput {
                        file: File::from(fd),
                        dir,
                        named: Some(name),
                        done: false,
                    })
                }
                Err(Errno::EXIST) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(io::Error::other("no free temporary name after 8 tries"))
    }

    /// Gives the finished file its final mode and times, makes it durable if asked, and links
    /// it as `name`. An existing node there is an error unless `replace`, and even then only a
    /// regular file is replaced (a link planted there is replaced by the rename, not followed).
    pub(crate) fn commit(
        mut self,
        name: &OsStr,
        mode: Mode,
        times: &Timestamps,
        replace: bool,
        fsync: bool,
    ) -> Result<(), String> {
        let io = |what: &str, e: &dyn std::fmt::Display| format!("cannot {what} the output: {e}");
        rustix::fs::fchmod(&self.file, mode).map_err(|e| io("set the mode of", &e))?;
        rustix::fs::futimens(&self.file, times).map_err(|e| io("set the times of", &e))?;
        if fsync {
            self.file.sync_all().map_err(|e| io("sync", &e))?;
        }
        if replace {
            match rustix::fs::statat(self.dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile => {
                    return Err(format!(
                        "the output exists and is {}: only a regular file is replaced; remove it",
                        kind(FileType::from_raw_mode(st.st_mode))
                    ))
                }
                _ => {}
            }
        }
        let staged = match (&self.named, replace) {
            (Some(tmp), false) => {
                self.still_ours(tmp)?;
                let r =
                    rustix::fs::linkat(self.dir, tmp.as_os_str(), self.dir, name, AtFlags::empty());
                r.map_err(|e| exists_or(e, &io))?;
                self.done = true;
                return Ok(());
            }
            (Some(tmp), true) => tmp.clone(),
            (None, false) => {
                let proc = proc_fd_path(&self.file);
                let r =
                    rustix::fs::linkat(CWD, proc.as_str(), self.dir, name, AtFlags::SYMLINK_FOLLOW);
                return r.map_err(|e| exists_or(e, &io));
            }
            (None, true) => {
                let proc = proc_fd_path(&self.file);
                let mut staged = None;
                for _ in 0..8 {
                    let n = random_name().map_err(|e| io("name", &e))?;
                    match rustix::fs::linkat(
                        CWD,
                        proc.as_str(),
                        self.dir,
                        n.as_os_str(),
                        AtFlags::SYMLINK_FOLLOW,
                    ) {
                        Ok(()) => {
                            staged = Some(n);
                            break;
                        }
                        Err(Errno::EXIST) => continue,
                        Err(e) => return Err(io("link", &e)),
                    }
                }
                let n = staged.ok_or_else(|| io("name", &"no free staging name"))?;
                self.named = Some(n.clone());
                n
            }
        };
        self.still_ours(&staged)?;
        rustix::fs::renameat(self.dir, staged.as_os_str(), self.dir, name)
            .map_err(|e| io("rename into place", &e))?;
        self.named = None;
        self.done = true;
        Ok(())
    }

    /// Whether the temporary name still reaches the file written: whoever can write to the
    /// directory could have swapped it, and the link or rename would then publish their file.
    fn still_ours(&self, tmp: &OsStr) -> Result<(), String> {
        let ours =
            rustix::fs::fstat(&self.file).map_err(|e| format!("cannot examine the output: {e}"))?;
        match rustix::fs::statat(self.dir, tmp, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if (st.st_dev, st.st_ino) == (ours.st_dev, ours.st_ino) => Ok(()),
            _ => Err(
                "the temporary output's name was replaced by another file while it was \
                      written: not linked into place (someone else can write to the \
                      destination directory)"
                    .to_string(),
            ),
        }
    }
}

/// The error of a link that would not replace: says what to do.
fn exists_or(e: Errno, io: &dyn Fn(&str, &dyn std::fmt::Display) -> String) -> String {
    if e == Errno::EXIST {
        "the output appeared while it was written: left as it is; run again with force to \
         replace it"
            .to_string()
    } else {
        io("link", &e)
    }
}

impl Drop for TempOutput<'_> {
    fn drop(&mut self) {
        if let Some(name) = self.named.take() {
            if !self.done {
                // Emptied first: what was written must not survive under a name not ours.
                let _ = rustix::fs::ftruncate(&self.file, 0);
            }
            let _ = rustix::fs::unlinkat(self.dir, name.as_os_str(), AtFlags::empty());
        }
    }
}

/// What is at `name` in `dir` now, not following a link: `None` when nothing is.
pub(crate) fn existing(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<FileType>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The entries of a directory, `.` and `..` left out, sorted by name (so runs are repeatable),
/// with the type the directory claims for each (a hint: every open checks again).
pub(crate) fn list(dir: &OwnedFd) -> io::Result<Vec<(OsString, FileType)>> {
    let mut out = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let name: &CStr = entry.file_name();
        let bytes = name.to_bytes();
        if bytes == b"." || bytes == b".." {
            continue;
        }
        let mut t = entry.file_type();
        if t == FileType::Unknown {
            t = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
                .map(|st| FileType::from_raw_mode(st.st_mode))
                .unwrap_or(FileType::Unknown);
        }
        out.push((OsStr::from_bytes(bytes).to_os_string(), t));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Syncs the file system holding `fd`.
pub(crate) fn syncfs(fd: impl AsFd) -> io::Result<()> {
    rustix::fs::syncfs(fd).map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// L3: a named temporary output whose name is swapped for another file before it is
    /// linked is not published, and what was written is emptied.
    #[test]
    fn a_swapped_temporary_name_is_not_linked_into_place() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = File::open(tmp.path()).unwrap();
        let times = carried_times(&rustix::fs::fstat(&dir).unwrap());
        for replace in [false, true] {
            let mut t = TempOutput::named(dir.as_fd()).unwrap();
            t.file.write_all(b"plaintext").unwrap();
            let written = t.file.try_clone().unwrap();
            let name = t.named.clone().unwrap();
            std::fs::write(tmp.path().join("planted"), b"attacker's").unwrap();
            std::fs::rename(tmp.path().join("planted"), tmp.path().join(&name)).unwrap();
            let err = t.commit(
                OsStr::new("out"),
                Mode::from_raw_mode(0o600),
                &times,
                replace,
                false,
            );
            assert!(err.unwrap_err().contains("replaced"), "replace {replace}");
            assert!(!tmp.path().join("out").exists(), "replace {replace}");
            assert_eq!(written.metadata().unwrap().len(), 0, "emptied");
            let _ = std::fs::remove_file(tmp.path().join(&name));
        }
    }

    fn names(dir: &std::path::Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// The fallback for file systems without O_TMPFILE: never over anything without replace,
    /// only over a regular file with it, and no temporary name left behind either way.
    #[test]
    fn a_named_temporary_output_links_replaces_and_cleans_up() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = File::open(tmp.path()).unwrap();
        let times = carried_times(&rustix::fs::fstat(&dir).unwrap());
        let mode = Mode::from_raw_mode(0o640);
        let write = |data: &[u8]| {
            let mut t = TempOutput::named(dir.as_fd()).unwrap();
            t.file.write_all(data).unwrap();
            t
        };
        write(b"one")
            .commit(OsStr::new("out"), mode, &times, false, true)
            .unwrap();
        assert_eq!(std::fs::read(tmp.path().join("out")).unwrap(), b"one");
        let err = write(b"two").commit(OsStr::new("out"), mode, &times, false, false);
        assert!(err.unwrap_err().contains("appeared"));
        write(b"three")
            .commit(OsStr::new("out"), mode, &times, true, false)
            .unwrap();
        assert_eq!(std::fs::read(tmp.path().join("out")).unwrap(), b"three");
        std::os::unix::fs::symlink(tmp.path().join("elsewhere"), tmp.path().join("link")).unwrap();
        let err = write(b"four").commit(OsStr::new("link"), mode, &times, true, false);
        assert!(err.unwrap_err().contains("symbolic link"));
        assert!(!tmp.path().join("elsewhere").exists());
        drop(write(b"dropped"));
        assert_eq!(
            names(tmp.path()),
            ["link", "out"],
            "no temporary name is left"
        );
        let meta = std::fs::metadata(tmp.path().join("out")).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777,
            0o640
        );
    }
}
