//! The walk: a depth-first pass over the source with its own stack, making the destination
//! directories as it goes, and the end of the run that gives them their modes and times.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::SyncSender;
use std::sync::Arc;

use globset::GlobSet;
use rustix::fs::{FileType, Stat};

use super::fs;
use super::run::{Op, Run};
use super::{Durability, FileStatus, MAX_DEPTH, OWN_PREFIX};

/// A source directory, its destination twin (absent in a dry run, or why it could not be
/// made), and its path from the root.
pub(super) struct DirPair {
    pub(super) src: OwnedFd,
    pub(super) dst: Option<Result<OwnedFd, String>>,
    /// Where `dst` is in [`Run::dirs`] (meaningful only when `dst` is `Some(Ok(_))`).
    pub(super) index: usize,
    pub(super) rel: Vec<OsString>,
}

/// A destination directory the walk entered, kept until `finish_dirs`: its parent's index in
/// [`Run::dirs`] and its own name rather than a full path, so the list grows with the number
/// of directories, not with their depth (the root is entry 0, its own parent).
pub(super) struct DstDir {
    pub(super) parent: usize,
    pub(super) name: Box<OsStr>,
    /// The (device, inode) the directory had when entered: reopened by name at the end, it
    /// must still be the same directory.
    pub(super) id: (u64, u64),
    /// The mode and times to give it at the end: only for a directory this run made, never
    /// one that was there before.
    pub(super) finish: Option<(rustix::fs::Mode, rustix::fs::Timestamps)>,
}

pub(super) use super::fs::DirId;

/// How many times one directory may be entered through followed links while each walk of it
/// has left something out: it is entered again since another path may take what this one
/// left, but boundedly. Real directories beneath are walked on each entry, so a directory at
/// depth d is walked at most 1 + 4·d times: that factor of the tree's size, not exponential.
const LINK_ENTRIES: u32 = 4;

/// What the walk knows of a directory it entered through a followed link, or walked whole.
#[derive(Default)]
pub(super) struct Seen {
    /// Walked to the end with nothing left out (by include/exclude, or a subdirectory not
    /// entered on that path): another path through a link would give nothing more.
    complete: bool,
    /// Times entered through a followed link.
    by_link: u32,
}

/// A directory being walked and the entries of it not yet seen.
pub(super) struct Frame {
    pub(super) dir: Arc<DirPair>,
    pub(super) entries: std::vec::IntoIter<(OsString, FileType)>,
    pub(super) id: DirId,
    /// Whether include/exclude left out something beneath it on this path.
    pub(super) filtered: bool,
}

/// What [`Run::descend`] did with a subdirectory.
pub(super) enum Descent {
    /// Opened: walk it.
    Entered(Arc<DirPair>, DirId),
    /// Not entered, and no path to it would give more (walked whole before, or the
    /// destination itself): its parent can still be walked whole.
    NothingMore,
    /// Not entered on this path (a cycle, the link cap, the depth limit, an error): its
    /// parent is not walked whole, so a link to the parent on another path is followed.
    LeftOut,
}

pub(super) struct Job {
    pub(super) dir: Arc<DirPair>,
    pub(super) name: OsString,
    pub(super) follow: bool,
}

impl Run<'_> {
    pub(super) fn matches(set: &Option<GlobSet>, rel: &Path) -> bool {
        set.as_ref().is_some_and(|s| s.is_match(rel))
    }

    /// Lists a directory for the walk, reporting it failed if it cannot be listed.
    pub(super) fn frame(&self, dir: Arc<DirPair>, id: DirId) -> Option<Frame> {
        match fs::list(&dir.src) {
            Ok(entries) => Some(Frame {
                dir,
                entries: entries.into_iter(),
                id,
                filtered: false,
            }),
            Err(e) => {
                let rel = join_rel(&dir.rel, OsStr::new(""));
                let why = format!("cannot list it: {}", fs::io_text(&e));
                self.note(rel, FileStatus::Failed, why);
                None
            }
        }
    }

    /// Walks the tree depth first with a stack of its own, not the thread's: a tree of any
    /// depth cannot overflow it, and [`MAX_DEPTH`] bounds the directories held open.
    pub(super) fn walk(&self, root: Arc<DirPair>, root_id: DirId, tx: &SyncSender<Job>) {
        // The id of each directory on the stack, to tell a cycle in a note, and what is
        // known of the directories entered through links or walked whole: through links (or
        // mounts) a graph of a few directories can have exponentially many paths, so a link
        // to a directory walked whole is not followed again. A real directory is always
        // entered: its outputs are under its own path, whatever a link reached before.
        let mut ancestors = vec![root_id];
        let mut entered: HashMap<DirId, Seen> = HashMap::new();
        let mut stack: Vec<Frame> = self.frame(root, root_id).into_iter().collect();
        while let Some(top) = stack.last_mut() {
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            let Some((name, t)) = top.entries.next() else {
                let done = stack.pop().expect("not empty");
                ancestors.pop();
                if done.filtered {
                    // Its parent was not walked whole either on this path.
                    if let Some(up) = stack.last_mut() {
                        up.filtered = true;
                    }
                } else {
                    entered.entry(done.id).or_default().complete = true;
                }
                continue;
            };
            let dir = top.dir.clone();
            let rel = join_rel(&dir.rel, &name);
            if name.as_bytes().starts_with(OWN_PREFIX.as_bytes()) {
                self.note(
                    rel,
                    FileStatus::Skipped,
                    "a temporary file or manifest of kms-envelope's own".into(),
                );
                continue;
            }
            if Self::matches(&self.exclude, &rel) {
                top.filtered = true;
                continue;
            }
            let (t, follow) = match t {
                FileType::Symlink if self.opts.follow_symlinks => {
                    match rustix::fs::statat(
                        &dir.src,
                        name.as_os_str(),
                        rustix::fs::AtFlags::empty(),
                    ) {
                        Ok(st) => (FileType::from_raw_mode(st.st_mode), true),
                        Err(e) => {
                            self.note(rel, FileStatus::Skipped, format!("a broken link: {e}"));
                            continue;
                        }
                    }
                }
                t => (t, false),
            };
            match t {
                FileType::Directory => {
                    let seen = (&ancestors[..], &mut entered);
                    let walked = match self.descend(&dir, name, follow, seen) {
                        Descent::Entered(child, id) => match self.frame(child, id) {
                            Some(frame) => {
                                stack.push(frame);
                                ancestors.push(id);
                                true
                            }
                            None => false,
                        },
                        Descent::NothingMore => true,
                        Descent::LeftOut => false,
                    };
                    if !walked {
                        // Not walked on this path (a cycle, the link cap, the depth limit, an
                        // error): another path to the parent may still reach what it holds.
                        stack.last_mut().expect("not empty").filtered = true;
                    }
                }
                FileType::RegularFile | FileType::Unknown => {
                    if self.include.is_some() && !Self::matches(&self.include, &rel) {
                        stack.last_mut().expect("not empty").filtered = true;
                        continue;
                    }
                    let job = Job { dir, name, follow };
                    if tx.send(job).is_err() {
                        return;
                    }
                }
                FileType::Symlink => self.note(
                    rel,
                    FileStatus::Skipped,
                    "a symbolic link: not followed (follow_symlinks to follow links)".into(),
                ),
                t => self.note(
                    rel,
                    FileStatus::Skipped,
                    format!("{}: special files are skipped", fs::kind(t)),
                ),
            }
        }
    }

    /// Opens a subdirectory and its destination twin for the walk, or reports why not.
    pub(super) fn descend(
        &self,
        parent: &DirPair,
        name: OsString,
        follow: bool,
        (ancestors, entered): (&[DirId], &mut HashMap<DirId, Seen>),
    ) -> Descent {
        let rel = join_rel(&parent.rel, &name);
        if parent.rel.len() >= MAX_DEPTH {
            self.note(
                rel,
                FileStatus::Failed,
                format!("it is more than {MAX_DEPTH} levels deep: not entered"),
            );
            return Descent::LeftOut;
        }
        let (fd, st) = match fs::open_dir(parent.src.as_fd(), &name, follow) {
            Ok(x) => x,
            Err(e) => {
                let why = match e {
                    rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => {
                        "it changed into something else than a directory after the walk".into()
                    }
                    e => format!("cannot open the directory: {}", fs::errno_text(e)),
                };
                self.note(rel, FileStatus::Failed, why);
                return Descent::LeftOut;
            }
        };
        let id = fs::dir_id(&fd, &st);
        if ancestors.contains(&id) {
            self.note(
                rel,
                FileStatus::Skipped,
                "a link back to a directory above it (a cycle): not entered".into(),
            );
            return Descent::LeftOut;
        }
        if follow {
            let seen = entered.entry(id).or_default();
            if seen.complete {
                self.note(
                    rel,
                    FileStatus::Skipped,
                    "a link to a directory already walked whole on another path: not entered \
                     again"
                        .into(),
                );
                return Descent::NothingMore;
            }
            if seen.by_link >= LINK_ENTRIES {
                // Failed, not skipped: files beneath it that no earlier path took are missing.
                self.note(
                    rel,
                    FileStatus::Failed,
                    format!(
                        "a link to a directory already entered {LINK_ENTRIES} times through \
                         links, each time with something left out (include/exclude, a cycle, \
                         a limit): not entered again, so files beneath it may be missing from \
                         this path; use narrower links (or include/exclude patterns), or run \
                         without following symbolic links"
                    ),
                );
                return Descent::LeftOut;
            }
            seen.by_link += 1;
        }
        if Some((st.st_dev, st.st_ino)) == self.dst_root_id {
            self.note(
                rel,
                FileStatus::Skipped,
                "the destination tree itself: not entered".into(),
            );
            return Descent::NothingMore;
        }
        let mut index = 0;
        let dst = parent.dst.as_ref().map(|d| match d {
            Ok(p) => fs::make_dir(p.as_fd(), &name).map(|(dst, dst_st, made)| {
                let made = self.made_dir(&rel, made, fs::dir_id(&dst, &dst_st));
                let mut dirs = self.dirs.lock().expect("dirs lock");
                index = dirs.len();
                dirs.push(DstDir {
                    parent: parent.index,
                    name: name.as_os_str().into(),
                    id: (dst_st.st_dev, dst_st.st_ino),
                    finish: made.then(|| (self.dir_mode(&st), fs::carried_times(&st))),
                });
                dst
            }),
            Err(e) => Err(e.clone()),
        });
        let mut comps = parent.rel.clone();
        comps.push(name);
        let child = Arc::new(DirPair {
            src: fd,
            dst,
            index,
            rel: comps,
        });
        Descent::Entered(child, id)
    }

    /// Whether the destination directory at `rel` (`id`) is ours to finish: made by this run
    /// (then recorded in the manifest, so that a resumed run finishes it if this one is cut
    /// short), or by an earlier run of the manifest and still the same directory.
    pub(super) fn made_dir(&self, rel: &Path, made: bool, id: DirId) -> bool {
        let Some(m) = &self.manifest else {
            return made;
        };
        let path = rel.as_os_str().as_bytes();
        if !made {
            return m.made_before(path, id);
        }
        if let Err(e) = m.add_dir(path, id) {
            // Only a resumed run would miss it: it would leave the directory 0700.
            let why = format!("the manifest could not record the directory: {e}");
            self.note(rel.to_path_buf(), FileStatus::Failed, why);
        }
        true
    }

    pub(super) fn dir_mode(&self, st: &Stat) -> rustix::fs::Mode {
        fs::dir_mode(
            st,
            matches!(self.op, Op::Decrypt(_)),
            self.opts.preserve_mode,
        )
    }

    /// Gives the destination directories this run made their source's mode and times,
    /// children before parents (a directory made read-only must already be filled). Each is
    /// reopened by name beneath its parent, never through a link, and must still be the
    /// directory entered (device and inode): one swapped in during the run is left alone.
    pub(super) fn finish_dirs(&self, root: &OwnedFd) {
        let dirs = std::mem::take(&mut *self.dirs.lock().expect("dirs lock"));
        // The open directories from the root to the current one (a walk in the list's order),
        // so that each is opened once and at most one path's worth is open at a time.
        let mut chain: Vec<(usize, Result<OwnedFd, String>)> = Vec::new();
        for (i, d) in dirs.iter().enumerate() {
            while chain.last().is_some_and(|(j, _)| *j != d.parent) {
                let (j, fd) = chain.pop().expect("not empty");
                self.finish_dir(&dirs, j, fd);
            }
            let fd = match chain.last() {
                None => fs::reopen_dir(root.as_fd(), OsStr::new("."), d.id),
                Some((_, Ok(parent))) => fs::reopen_dir(parent.as_fd(), &d.name, d.id),
                Some((_, Err(_))) => Err("its parent directory could not be reopened".into()),
            };
            chain.push((i, fd));
        }
        while let Some((j, fd)) = chain.pop() {
            self.finish_dir(&dirs, j, fd);
        }
    }

    pub(super) fn finish_dir(&self, dirs: &[DstDir], i: usize, fd: Result<OwnedFd, String>) {
        let Some((mode, times)) = &dirs[i].finish else {
            return; // there before the run: its mode and times are not ours to change
        };
        let set = |fd: OwnedFd| -> rustix::io::Result<()> {
            rustix::fs::fchmod(&fd, *mode)?;
            rustix::fs::futimens(&fd, times)?;
            if self.opts.durability == Durability::PerFile {
                rustix::fs::fsync(&fd)?;
            }
            Ok(())
        };
        let result = fd.and_then(|fd| set(fd).map_err(fs::errno_text));
        if let Err(e) = result {
            let mut names = Vec::new();
            let mut j = i;
            while j != 0 {
                names.push(&*dirs[j].name);
                j = dirs[j].parent;
            }
            let rel: PathBuf = names.into_iter().rev().collect();
            self.note(
                rel,
                FileStatus::Failed,
                format!("cannot set the directory's mode and times: {e}"),
            );
        }
    }
}

pub(super) fn join_rel(dir: &[OsString], name: &OsStr) -> PathBuf {
    let mut p = PathBuf::new();
    for c in dir {
        p.push(c);
    }
    p.push(name);
    p
}
