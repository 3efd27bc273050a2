//! The run's manifest: one JSON line per finished file, appended in batches, each batch made
//! durable only after the outputs it names are (so a line never outlives its file).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use rustix::fs::{Mode, OFlags};

use super::fs::{DirId, Version};
use super::Durability;
use crate::Error;

/// The default manifest name, in the destination root.
pub(crate) const MANIFEST_NAME: &str = ".kms-envelope-manifest";

/// Lines held before a batch is written out (or after [`BATCH_AGE`]).
const BATCH_LINES: usize = 4096;
const BATCH_AGE: Duration = Duration::from_secs(1);

/// What the manifest says about one finished file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub source: Version,
    pub out_size: u64,
    /// The message ID of the output (encrypting) or of the source (decrypting).
    pub message_id: Vec<u8>,
    /// The run's description of its settings: another run's records never match.
    pub run: String,
}

struct State {
    file: File,
    pending: Vec<String>,
    since: Instant,
}

pub(crate) struct Manifest {
    state: Mutex<State>,
    previous: HashMap<Vec<u8>, Record>,
    /// The destination directories earlier runs made, by relative path: a resumed run gives
    /// them their modes and times if they are still the directories made.
    made_dirs: HashMap<Vec<u8>, DirId>,
    durability: Durability,
    /// The destination root, whose file system a batch syncs under [`Durability::SyncFs`].
    root: OwnedFd,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// A line of the manifest: a finished file, a destination directory a run made, or the mark
/// that a run gave the directories it made their modes and times.
enum Line {
    File(Vec<u8>, Record),
    Dir(Vec<u8>, DirId),
    DirsFinished,
}

/// The key of the [`Line::DirsFinished`] mark.
const DIRS_FINISHED: &str = "dirs_finished";

fn parse_line(line: &str) -> Option<Line> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let n = |k: &str| v.get(k)?.as_u64();
    if v.get(DIRS_FINISHED).is_some() {
        return Some(Line::DirsFinished);
    }
    if let Some(dir) = v.get("dir") {
        let born = v.get("born")?.as_array()?;
        let id = (
            n("dev")?,
            n("ino")?,
            born.first()?.as_i64()?,
            u32::try_from(born.get(1)?.as_u64()?).ok()?,
        );
        return Some(Line::Dir(b64().decode(dir.as_str()?).ok()?, id));
    }
    let pair = |k: &str| {
        let a = v.get(k)?.as_array()?;
        Some((a.first()?.as_i64()?, a.get(1)?.as_i64()?))
    };
    let path = b64().decode(v.get("path")?.as_str()?).ok()?;
    let message_id = b64().decode(v.get("message_id")?.as_str()?).ok()?;
    Some(Line::File(
        path,
        Record {
            source: Version {
                dev: n("dev")?,
                ino: n("ino")?,
                size: n("size")?,
                mtime: pair("mtime")?,
                ctime: pair("ctime")?,
            },
            out_size: n("out_size")?,
            message_id,
            run: v.get("run")?.as_str()?.to_owned(),
        },
    ))
}

/// Refuses a manifest that is not a regular file of ours that only we may write: its lines
/// decide which outputs a resumed run trusts, so whoever else could write them could make it
/// keep a file they planted.
fn trusted(file: &File, shown: &dyn Fn() -> String) -> Result<(), Error> {
    let st = rustix::fs::fstat(file).map_err(io::Error::from)?;
    let me = rustix::process::geteuid().as_raw();
    let regular =
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile;
    // One name only: lines appended through a second name would land in another file.
    if !regular || st.st_uid != me || st.st_mode & 0o022 != 0 || st.st_nlink != 1 {
        return Err(Error::Misuse(format!(
            "the manifest {} is not a regular file owned by you (user {me}), writable only \
             by you and with no other name: remove it and run again without resume",
            shown()
        )));
    }
    Ok(())
}

impl Manifest {
    /// Opens the manifest: `resume` reads the records of earlier runs and appends; otherwise an
    /// existing manifest is an error unless `force`, and is started afresh.
    pub(crate) fn open(
        root: &OwnedFd,
        path: Option<&Path>,
        resume: bool,
        force: bool,
        durability: Durability,
    ) -> Result<Manifest, Error> {
        // Non-blocking: a FIFO planted at the name must not hang the run (it is refused below).
        let flags =
            OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let mode = Mode::from_raw_mode(0o600);
        let open = |extra: OFlags| -> io::Result<OwnedFd> {
            Ok(match path {
                Some(p) => rustix::fs::open(p, flags | extra, mode)?,
                None => rustix::fs::openat(root, MANIFEST_NAME, flags | extra, mode)?,
            })
        };
        let shown = || {
            path.map_or_else(
                || format!("{MANIFEST_NAME} in the destination"),
                |p| p.display().to_string(),
            )
        };
        let mut previous = HashMap::new();
        let mut made_dirs = HashMap::new();
        let file = if resume {
            let file = File::from(open(OFlags::APPEND)?);
            trusted(&file, &shown)?;
            // A line cut short by a crash, or any line that does not parse, only means redo.
            for line in io::BufReader::new(&file).lines() {
                match parse_line(&line?) {
                    Some(Line::File(path, record)) => {
                        previous.insert(path, record);
                    }
                    Some(Line::Dir(path, id)) => {
                        made_dirs.insert(path, id);
                    }
                    // Finished since: their modes may have been changed by hand after.
                    Some(Line::DirsFinished) => made_dirs.clear(),
                    None => {}
                }
            }
            // A last line cut short by a crash would swallow this run's first line.
            let len = file.metadata()?.len();
            let mut last = [0u8];
            if len > 0 && file.read_at(&mut last, len - 1)? == 1 && last[0] != b'\n' {
                (&file).write_all(b"\n")?;
            }
            file
        } else {
            match open(OFlags::EXCL) {
                Ok(fd) => File::from(fd),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && force => {
                    // Truncated only once known to be ours alone: a hard link to another file
                    // (an input) or someone else's file must not be emptied.
                    let file = File::from(open(OFlags::empty())?);
                    trusted(&file, &shown)?;
                    if rustix::fs::fstat(&file).map_err(io::Error::from)?.st_nlink != 1 {
                        return Err(Error::Misuse(format!(
                            "the manifest {} has other names (hard links): not replaced; \
                             remove it and run again",
                            shown()
                        )));
                    }
                    rustix::fs::ftruncate(&file, 0).map_err(io::Error::from)?;
                    file
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(Error::Misuse(format!(
                        "the manifest {} of an earlier run exists: resume that run, or force a \
                         fresh one",
                        shown()
                    )))
                }
                Err(e) => return Err(e.into()),
            }
        };
        trusted(&file, &shown)?;
        Ok(Manifest {
            state: Mutex::new(State {
                file,
                pending: Vec::new(),
                since: Instant::now(),
            }),
            previous,
            made_dirs,
            durability,
            root: root.try_clone()?,
        })
    }

    /// What an earlier run recorded for `path` (the source's relative path, as bytes).
    pub(crate) fn previous(&self, path: &[u8]) -> Option<&Record> {
        self.previous.get(path)
    }

    /// Whether an earlier run recorded anything.
    pub(crate) fn has_previous(&self) -> bool {
        !self.previous.is_empty()
    }

    /// Whether an earlier run made the destination directory at `path` (relative, as bytes),
    /// and it is still that directory (`id`: device, inode, birth time).
    pub(crate) fn made_before(&self, path: &[u8], id: DirId) -> bool {
        self.made_dirs.get(path) == Some(&id)
    }

    /// Records a destination directory this run made. Written at once, not held for a batch
    /// (a deep tree's paths would pile up), and not synced: a lost line only leaves that
    /// directory 0700 after a crash, and a line that outlives its directory matches nothing.
    pub(crate) fn add_dir(&self, path: &[u8], id: DirId) -> io::Result<()> {
        let line = serde_json::json!({
            "dir": b64().encode(path),
            "dev": id.0,
            "ino": id.1,
            "born": [id.2, id.3],
        })
        .to_string();
        self.write_now(line)
    }

    /// Records that this run gave the directories it made (or finished for an earlier run)
    /// their modes and times: a later resume leaves them alone, as the user may have changed
    /// them since. Written at once, like [`Manifest::add_dir`].
    pub(crate) fn dirs_finished(&self) -> io::Result<()> {
        self.write_now(serde_json::json!({ DIRS_FINISHED: true }).to_string())
    }

    fn write_now(&self, mut line: String) -> io::Result<()> {
        line.push('\n');
        let mut state = self.state.lock().expect("manifest lock");
        state.file.write_all(line.as_bytes())
    }

    /// Records a finished file; written out with its batch.
    pub(crate) fn add(&self, path: &[u8], r: &Record) -> io::Result<()> {
        let line = serde_json::json!({
            "path": b64().encode(path),
            "dev": r.source.dev,
            "ino": r.source.ino,
            "size": r.source.size,
            "mtime": [r.source.mtime.0, r.source.mtime.1],
            "ctime": [r.source.ctime.0, r.source.ctime.1],
            "out_size": r.out_size,
            "message_id": b64().encode(&r.message_id),
            "run": r.run,
        })
        .to_string();
        let mut state = self.state.lock().expect("manifest lock");
        state.pending.push(line);
        if state.pending.len() >= BATCH_LINES || state.since.elapsed() >= BATCH_AGE {
            self.write_out(&mut state)?;
        }
        Ok(())
    }

    /// Writes out every pending line, durably unless durability is off.
    pub(crate) fn flush(&self) -> io::Result<()> {
        let mut state = self.state.lock().expect("manifest lock");
        self.write_out(&mut state)
    }

    fn write_out(&self, state: &mut State) -> io::Result<()> {
        state.since = Instant::now();
        if state.pending.is_empty() {
            return Ok(());
        }
        // The outputs first: a line must never be durable before the file it vouches for.
        if self.durability == Durability::SyncFs {
            super::fs::syncfs(self.root.as_fd())?;
        }
        let mut text = state.pending.join("\n");
        text.push('\n');
        state.file.write_all(text.as_bytes())?;
        if self.durability != Durability::None {
            state.file.sync_data()?;
        }
        state.pending.clear();
        Ok(())
    }
}
