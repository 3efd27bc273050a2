//! EFS-style directory trees: encrypt or decrypt every regular file of a tree into a mirror
//! tree, many files at once, resumable, with a report per file.
//!
//! ```no_run
//! use std::path::Path;
//! use kms_envelope::tree::{encrypt_tree, TreeOptions};
//! use kms_envelope::{Encryptor, RawAesKeyring};
//!
//! // A `KmsKeyring` in production; the tree code is the same for any keyring.
//! let keyring = RawAesKeyring::new("backups", "wrapping-key-1", &[0x42; 32])?;
//! let options = TreeOptions::new().jobs(32).context_path("path");
//! let summary = encrypt_tree(
//!     &Encryptor::new(&keyring),
//!     Path::new("/srv/share"),
//!     Path::new("/backup/share"),
//!     &options,
//!     &|file| eprintln!("{:?} {}", file.status, file.source.display()),
//! )?;
//! assert_eq!(summary.failed, 0);
//! # Ok::<(), kms_envelope::Error>(())
//! ```
//!
//! # What a run does
//! Every regular file `SRC/rel` becomes `DST/rel` + suffix (`.kms` by default; stripped on
//! decrypt, where files without it are skipped with a note). Directories are mirrored (empty
//! ones too); modes (without setuid and setgid, and never group or other write on
//! directories) and access and modification times are carried over, owners are not; but
//! decrypting, plaintext is 0600 (directories 0700) unless
//! [`preserve_mode`](TreeOptions::preserve_mode), since the ciphertext's writers choose its
//! modes. Directories deeper than [`MAX_DEPTH`] are reported failed and not entered. Symbolic links are skipped with a note unless
//! [`follow_symlinks`](TreeOptions::follow_symlinks) (then each directory is entered once:
//! reached again, through a cycle or another path, it is skipped with a note); FIFOs, sockets
//! and devices are skipped with a note.
//! [`include`](TreeOptions::include)/[`exclude`](TreeOptions::exclude) globs match the path
//! relative to the source root (`*` crosses `/` too); an excluded directory is not entered.
//!
//! # Concurrency and memory
//! [`jobs`](TreeOptions::jobs) files are in flight at once, each on a thread of its own that
//! waits for its keyring call, so as many KMS calls overlap. Files under 1 MiB are encrypted on
//! their own thread; at most two larger ones at a time go through the multi-core pipeline
//! (the crate's one worker pool). Memory is therefore bounded by `jobs` × 1 MiB plus two
//! pipelines ([`STREAM_BUFFER_LIMIT`](crate::stream::STREAM_BUFFER_LIMIT) each), whatever
//! the tree; the walk holds one directory's names and the open directories of one path, and
//! each destination directory entered costs a few hundred bytes until the end of the run
//! (its parent's index and its name, whatever its depth; `docs/TREES.md` has the figure).
//!
//! # A tree others can write to
//! Every name is opened relative to its directory's descriptor with `O_NOFOLLOW | O_NONBLOCK`,
//! and what it is is decided by `fstat` on the open descriptor: a file replaced by a link or a
//! FIFO after the walk is reported as failed (a FIFO never blocks the run), never followed.
//! Every destination directory, the root included, must be owned by the effective user and
//! writable by neither group nor others, or it is refused (the root fails the run, any other
//! its files); the root is not opened through a link. Only the directories the run made get
//! their source's mode and times at the end, each reopened beneath its parent and checked to
//! be the same directory (device and inode). The destination side is opened the same way: a link planted where a directory or an
//! output goes is refused, not followed. Outputs are written to unnamed (`O_TMPFILE`) or
//! `O_EXCL` mode-0600 temporary files in their directory and linked into place, which fails
//! if anything is there; with [`force`](TreeOptions::force) (or a redo under
//! [`resume`](TreeOptions::resume)) only a regular file is replaced, by a rename that
//! replaces a link rather than following it. A source that changes while it is read (size,
//! modification or change time) fails instead of leaving a mixed output. A destination inside
//! the source, or a source inside the destination, is refused. Not stopped: a hard link in
//! the source to a file the tree's writers may not read (Linux's `protected_hardlinks`
//! forbids making one), and with `follow_symlinks`, a link to any file the run can read
//! (`docs/TREES.md` has the whole list).
//!
//! # `context_path`
//! With [`context_path`](TreeOptions::context_path)`("KEY")`, each file's encryption context
//! holds `KEY` = its path relative to the source root, `/`-separated, suffix stripped (a name
//! that is not UTF-8 fails that file). On decrypt the expected value is computed from where
//! the file is, never read from its header, so a file moved or swapped with another file of
//! the tree fails to decrypt. It does **not** stop: an older version of the same file put
//! back in its place; a file deleted; a swap between two trees that share relative paths
//! (bind a tree ID into the base context too for that); a file planted by anyone who may
//! encrypt under the key. It also makes a data-key cache miss for every file: the context is
//! part of the cache key, rightly, since KMS binds it to the wrapped key.
//!
//! # Durability and resume
//! Each output is whole or absent (a crash leaves no partial output under its name). With
//! [`Durability::PerFile`] (the default) each output and its directory entry are fsynced
//! before the file counts as done; with [`Durability::SyncFs`] one `syncfs` of the
//! destination's file system runs before each manifest batch and before the run returns, so
//! the run reports success only once everything is on disk; [`Durability::None`] leaves it
//! to the kernel. The manifest (`DST/.kms-envelope-manifest` by default) gets a line per
//! finished file, written in batches made durable after the outputs they name. With
//! [`resume`](TreeOptions::resume) a file is skipped only if the manifest records it as done
//! under the same direction, commitment policy, whole context (required-only pairs too, by
//! hash) and [`run_label`](TreeOptions::run_label), the source's size, modification and
//! change times, device and inode are unchanged, the output is a regular file of the recorded
//! size whose structure is complete and, encrypting, whose message ID is the recorded one and
//! whose context, suite, frame length and set of wrapped keys match this run (the key set is
//! learnt from one encryption of an empty message at the start); decrypting, the source's
//! message ID is the recorded one and its context matches. Everything else is redone.
//! Without `resume`, an existing output fails its file unless `force`.

mod fs;
mod manifest;

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex};

use globset::{Glob, GlobSet, GlobSetBuilder};
use rustix::fs::{FileType, Stat};

use crate::format::{EncryptedDataKey, HeaderBody, HeaderLimits, RESERVED_PREFIX};
use crate::keyring::Keyring;
use crate::keyring::{CacheLimits, CachingKeyring, DataKeyCache};
use crate::{Decryptor, EncryptionContext, Encryptor, Error};
use fs::Version;
use manifest::{Manifest, Record};

/// The suffix of encrypted files unless another is chosen.
pub const DEFAULT_SUFFIX: &str = ".kms";
/// Files in flight at once unless another number is chosen.
pub const DEFAULT_JOBS: usize = 16;
/// Names this module makes (temporary files, the manifest) start with this; a walk skips them.
pub(crate) const OWN_PREFIX: &str = ".kms-envelope-";
/// Files of at least this size go through the multi-core pipeline, a few at a time.
const BIG_FILE: u64 = 1 << 20;
/// Large files in flight at once: each holds up to `STREAM_BUFFER_LIMIT` of frames.
const BIG_FILES_AT_ONCE: usize = 2;
/// Directories deeper than this are reported failed and not entered: the walk holds two
/// descriptors per level, so depth must not be the tree's writers' to choose.
pub const MAX_DEPTH: usize = 256;
/// Read size from a source.
const COPY_BUFFER: usize = 128 * 1024;

/// When outputs reach the disk (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// fsync each output and its directory before it counts as done.
    #[default]
    PerFile,
    /// One `syncfs` of the destination before each manifest batch and at the end.
    SyncFs,
    /// No syncing: a power loss may lose outputs the report called done.
    None,
}

/// The options of a tree run. Every option has a safe default.
#[derive(Debug, Clone)]
pub struct TreeOptions {
    suffix: String,
    include: Vec<String>,
    exclude: Vec<String>,
    jobs: usize,
    context_path: Option<String>,
    follow_symlinks: bool,
    force: bool,
    resume: bool,
    dry_run: bool,
    fail_fast: bool,
    durability: Durability,
    manifest: Option<PathBuf>,
    run_label: String,
    preserve_mode: bool,
}

impl Default for TreeOptions {
    fn default() -> Self {
        TreeOptions {
            suffix: DEFAULT_SUFFIX.to_owned(),
            include: Vec::new(),
            exclude: Vec::new(),
            jobs: DEFAULT_JOBS,
            context_path: None,
            follow_symlinks: false,
            force: false,
            resume: false,
            dry_run: false,
            fail_fast: false,
            durability: Durability::default(),
            manifest: None,
            run_label: String::new(),
            preserve_mode: false,
        }
    }
}

impl TreeOptions {
    /// The defaults: suffix `.kms`, 16 jobs, no links followed, per-file fsync.
    pub fn new() -> Self {
        Self::default()
    }
    /// The suffix added on encrypt and required (and stripped) on decrypt.
    pub fn suffix(mut self, suffix: impl Into<String>) -> Self {
        self.suffix = suffix.into();
        self
    }
    /// Only files matching one of these globs (relative to the source root) are processed.
    pub fn include(mut self, glob: impl Into<String>) -> Self {
        self.include.push(glob.into());
        self
    }
    /// Files and directories matching one of these globs are left out.
    pub fn exclude(mut self, glob: impl Into<String>) -> Self {
        self.exclude.push(glob.into());
        self
    }
    /// Files in flight at once (at least 1), hence the most concurrent keyring calls. Each
    /// file in flight or queued (two per job) holds up to four file descriptors: keep `jobs`
    /// well under a sixth of the process's descriptor limit.
    pub fn jobs(mut self, jobs: usize) -> Self {
        self.jobs = jobs.max(1);
        self
    }
    /// Binds each file's relative path into its encryption context under `key`.
    pub fn context_path(mut self, key: impl Into<String>) -> Self {
        self.context_path = Some(key.into());
        self
    }
    /// Follows symbolic links instead of skipping them; each directory is entered once (a
    /// second path to it, a cycle included, is skipped with a note).
    pub fn follow_symlinks(mut self, follow: bool) -> Self {
        self.follow_symlinks = follow;
        self
    }
    /// Replaces existing regular output files (and an earlier run's manifest).
    pub fn force(mut self, force: bool) -> Self {
        self.force = force;
        self
    }
    /// Skips files an earlier run finished (under the rules of the module documentation).
    pub fn resume(mut self, resume: bool) -> Self {
        self.resume = resume;
        self
    }
    /// Decrypting, gives plaintext files and directories their ciphertext's mode (less
    /// setuid, setgid, and group and other write on directories) instead of owner-only 0600
    /// and 0700: the ciphertext tree's writers choose those modes, so only for trusted trees.
    pub fn preserve_mode(mut self, preserve: bool) -> Self {
        self.preserve_mode = preserve;
        self
    }
    /// Reports what would be done, writing nothing.
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }
    /// Stops scheduling files after the first failure.
    pub fn fail_fast(mut self, fail_fast: bool) -> Self {
        self.fail_fast = fail_fast;
        self
    }
    /// When outputs are made durable.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }
    /// Where the manifest is kept (default `DST/.kms-envelope-manifest`).
    pub fn manifest(mut self, path: impl Into<PathBuf>) -> Self {
        self.manifest = Some(path.into());
        self
    }
    /// A description of the settings the library cannot see (the keys or discovery filter a
    /// keyring was built with): recorded in the manifest, and a resumed run with another
    /// label redoes every file.
    pub fn run_label(mut self, label: impl Into<String>) -> Self {
        self.run_label = label.into();
        self
    }
}

/// What became of one file (or of a directory that could not be walked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileStatus {
    /// Encrypted or decrypted into place.
    Done,
    /// Left as it is: an earlier run finished it (resume).
    AlreadyDone,
    /// Would be processed (dry run).
    Planned,
    /// Not a file this run processes (a link, a special file, a name without the suffix); see
    /// the note.
    Skipped,
    /// Failed; see the note. Nothing was left at the destination name.
    Failed,
}

/// One file's record, handed to the callback as the file is finished.
#[derive(Debug, Clone)]
pub struct FileReport {
    /// The path relative to the source root.
    pub relative: PathBuf,
    /// The source path.
    pub source: PathBuf,
    /// The output path, when there is one.
    pub destination: Option<PathBuf>,
    /// Plaintext bytes.
    pub bytes: u64,
    /// The message ID of the output (encrypting) or of the source (decrypting).
    pub message_id: Option<Vec<u8>>,
    /// The wrapped data keys of the message: KMS key ARNs, or `provider:info` for raw keyrings.
    pub wrapped_keys: Vec<String>,
    /// What happened.
    pub status: FileStatus,
    /// Why it was skipped or failed.
    pub note: Option<String>,
}

/// Counts over a whole run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TreeSummary {
    /// Files processed.
    pub done: u64,
    /// Files an earlier run finished.
    pub already_done: u64,
    /// Files a dry run would process.
    pub planned: u64,
    /// Entries skipped with a note.
    pub skipped: u64,
    /// Files (or directories) that failed.
    pub failed: u64,
    /// Plaintext bytes of the files processed.
    pub bytes: u64,
    /// Whether [`fail_fast`](TreeOptions::fail_fast) stopped the run early.
    pub stopped: bool,
}

/// A caching keyring for one tree run, with explicit limits: files encrypted in a row then
/// share a data key (fewer KMS calls) within `limits`. Off unless chosen: one data key per
/// file is the format's promise, and a shared one means a compromise of one data key exposes
/// every file encrypted under it. Each file still gets its own content key (HKDF with its
/// message ID). With [`TreeOptions::context_path`] every file misses. The cache is the run's
/// own (a fresh partition), so no key is shared with another keyring.
///
/// # Errors
/// [`Error::Misuse`] when a limit is out of range ([`CachingKeyring::builder`]).
pub fn caching_keyring(
    inner: Arc<dyn Keyring>,
    limits: CacheLimits,
) -> Result<CachingKeyring, Error> {
    // 64 entries: a run uses one context (or, with context_path, one per file, all misses).
    let capacity = std::num::NonZeroUsize::new(64).expect("non-zero");
    CachingKeyring::builder(inner, DataKeyCache::new(capacity))
        .limits(limits)
        .build()
}

/// Encrypts every regular file under `source` into `destination`, calling `on_file` for each.
///
/// # Errors
/// Only for the run as a whole: a bad option or glob, a root that cannot be opened, a
/// destination inside the source, an earlier manifest without `resume` or `force`. A file's
/// failure is in its report and in [`TreeSummary::failed`].
pub fn encrypt_tree(
    encryptor: &Encryptor<'_>,
    source: &Path,
    destination: &Path,
    options: &TreeOptions,
    on_file: &(dyn Fn(&FileReport) + Sync),
) -> Result<TreeSummary, Error> {
    run(
        Op::Encrypt(encryptor),
        source,
        destination,
        options,
        on_file,
    )
}

/// Decrypts every file ending in the suffix under `source` into `destination`.
///
/// # Errors
/// As [`encrypt_tree`].
pub fn decrypt_tree(
    decryptor: &Decryptor<'_>,
    source: &Path,
    destination: &Path,
    options: &TreeOptions,
    on_file: &(dyn Fn(&FileReport) + Sync),
) -> Result<TreeSummary, Error> {
    run(
        Op::Decrypt(decryptor),
        source,
        destination,
        options,
        on_file,
    )
}

#[derive(Clone, Copy)]
enum Op<'a> {
    Encrypt(&'a Encryptor<'a>),
    Decrypt(&'a Decryptor<'a>),
}

/// A source directory, its destination twin (absent in a dry run, or why it could not be
/// made), and its path from the root.
struct DirPair {
    src: OwnedFd,
    dst: Option<Result<OwnedFd, String>>,
    /// Where `dst` is in [`Run::dirs`] (meaningful only when `dst` is `Some(Ok(_))`).
    index: usize,
    rel: Vec<OsString>,
}

/// A destination directory the walk entered, kept until `finish_dirs`: its parent's index in
/// [`Run::dirs`] and its own name rather than a full path, so the list grows with the number
/// of directories, not with their depth (the root is entry 0, its own parent).
struct DstDir {
    parent: usize,
    name: Box<OsStr>,
    /// The (device, inode) the directory had when entered: reopened by name at the end, it
    /// must still be the same directory.
    id: (u64, u64),
    /// The mode and times to give it at the end: only for a directory this run made, never
    /// one that was there before.
    finish: Option<(rustix::fs::Mode, rustix::fs::Timestamps)>,
}

/// A directory's (device, inode).
type DirId = (u64, u64);

/// A directory being walked and the entries of it not yet seen.
struct Frame {
    dir: Arc<DirPair>,
    entries: std::vec::IntoIter<(OsString, FileType)>,
}

struct Job {
    dir: Arc<DirPair>,
    name: OsString,
    follow: bool,
}

/// A counting semaphore for the large files in flight.
struct Permits {
    free: Mutex<usize>,
    freed: Condvar,
}

impl Permits {
    fn acquire(&self) -> PermitGuard<'_> {
        let mut free = self.free.lock().expect("permits lock");
        while *free == 0 {
            free = self.freed.wait(free).expect("permits lock");
        }
        *free -= 1;
        PermitGuard(self)
    }
}

struct PermitGuard<'a>(&'a Permits);

impl Drop for PermitGuard<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().expect("permits lock") += 1;
        self.0.freed.notify_one();
    }
}

struct Run<'a> {
    op: Op<'a>,
    opts: &'a TreeOptions,
    src_root: PathBuf,
    dst_root: PathBuf,
    dst_root_id: Option<(u64, u64)>,
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
    manifest: Option<Manifest>,
    /// The wrapped keys (provider ID, info) this run's keyring produces, when resuming.
    key_set: Option<Vec<(String, Vec<u8>)>>,
    label: String,
    on_file: &'a (dyn Fn(&FileReport) + Sync),
    summary: Mutex<TreeSummary>,
    stop: AtomicBool,
    big: Permits,
    /// Destination directories entered, in the walk's order (a parent before its children).
    dirs: Mutex<Vec<DstDir>>,
}

fn globs(patterns: &[String]) -> Result<Option<GlobSet>, Error> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut set = GlobSetBuilder::new();
    for p in patterns {
        set.add(
            Glob::new(p).map_err(|e| {
                Error::Misuse(format!("bad glob pattern {p:?}: {e}; fix the pattern"))
            })?,
        );
    }
    set.build()
        .map(Some)
        .map_err(|e| Error::Misuse(format!("bad glob patterns: {e}")))
}

/// `path`, made absolute and free of links, even if its last components do not exist yet.
fn resolved(path: &Path) -> std::io::Result<PathBuf> {
    match path.canonicalize() {
        Ok(p) => Ok(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
                return Err(e);
            };
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            Ok(resolved(parent)?.join(name))
        }
        Err(e) => Err(e),
    }
}

fn run(
    op: Op<'_>,
    source: &Path,
    destination: &Path,
    opts: &TreeOptions,
    on_file: &(dyn Fn(&FileReport) + Sync),
) -> Result<TreeSummary, Error> {
    let base = match op {
        Op::Encrypt(e) => &e.context,
        Op::Decrypt(d) => &d.expected_context,
    };
    let decrypting = matches!(op, Op::Decrypt(_));
    let suffix = opts.suffix.as_str();
    if suffix.contains(['/', '\0'])
        || suffix == "."
        || suffix == ".."
        || (decrypting && suffix.is_empty())
    {
        return Err(Error::Misuse(format!(
            "the suffix {suffix:?} is not usable: it must not contain '/' or NUL, be \".\" or \
             \"..\", or be empty when decrypting; choose another suffix"
        )));
    }
    if let Some(key) = &opts.context_path {
        if base.contains_key(key) || key.starts_with(RESERVED_PREFIX) {
            return Err(Error::Misuse(format!(
                "the context-path key {key:?} is already in the context or reserved: choose \
                 another key"
            )));
        }
    }
    let src_root_fd = rustix::fs::open(
        source,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| {
        Error::Misuse(format!(
            "cannot open the source directory {}: {}",
            source.display(),
            fs::errno_text(e)
        ))
    })?;
    let (src_c, dst_c) = (resolved(source)?, resolved(destination)?);
    if dst_c.starts_with(&src_c) || src_c.starts_with(&dst_c) {
        return Err(Error::Misuse(format!(
            "the destination {} and the source {} overlap: the destination must be outside \
             the source tree, and the source outside the destination",
            destination.display(),
            source.display()
        )));
    }
    if let Some(m) = &opts.manifest {
        // Inside a tree, the walk would read it or it would land among the outputs.
        let m_c = resolved(m)?;
        if m_c.starts_with(&src_c) || m_c.starts_with(&dst_c) {
            return Err(Error::Misuse(format!(
                "the manifest {} is inside the source or destination tree: keep it outside \
                 both (the default one in the destination is handled apart)",
                m.display()
            )));
        }
    }
    let mut created_root = false;
    let dst_root_fd = if opts.dry_run {
        None
    } else {
        // Owner-only until the run ends and gives it the source root's mode, like every
        // directory it makes.
        let made = std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
            .create(destination);
        match made {
            Ok(()) => created_root = true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(Error::Misuse(format!(
                    "cannot create the destination directory {}: {e}",
                    destination.display()
                )))
            }
        }
        // Not through a link: one planted at the root would take every output elsewhere.
        Some(
            rustix::fs::open(
                destination,
                rustix::fs::OFlags::RDONLY
                    | rustix::fs::OFlags::DIRECTORY
                    | rustix::fs::OFlags::NOFOLLOW
                    | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .map_err(|e| {
                // O_NOFOLLOW | O_DIRECTORY fails on a link with ENOTDIR or ELOOP: look.
                let link = std::fs::symlink_metadata(destination)
                    .is_ok_and(|m| m.file_type().is_symlink());
                Error::Misuse(if link {
                    format!(
                        "the destination {} is a symbolic link: it is not followed; name the \
                         directory it points to instead",
                        destination.display()
                    )
                } else {
                    format!(
                        "the destination {} is not a directory that can be opened: {}",
                        destination.display(),
                        fs::errno_text(e)
                    )
                })
            })?,
        )
    };
    if let Some(fd) = &dst_root_fd {
        fs::trusted_dir(fd)
            .map_err(|e| Error::Misuse(format!("{}: {e}", destination.display())))?;
    }
    let dst_root_id = match &dst_root_fd {
        Some(fd) => {
            let st = rustix::fs::fstat(fd).map_err(std::io::Error::from)?;
            Some((st.st_dev, st.st_ino))
        }
        None => None,
    };
    let manifest = match &dst_root_fd {
        Some(fd) => Some(Manifest::open(
            fd,
            opts.manifest.as_deref(),
            opts.resume,
            opts.force,
            opts.durability,
        )?),
        None => None,
    };
    let key_set = match (op, &manifest) {
        (Op::Encrypt(e), Some(m)) if opts.resume && m.has_previous() => Some(probe_key_set(e)?),
        _ => None,
    };
    let label = run_label(op, opts);
    let src_st = rustix::fs::fstat(&src_root_fd).map_err(std::io::Error::from)?;
    let root = Arc::new(DirPair {
        src: src_root_fd,
        dst: dst_root_fd
            .as_ref()
            .map(|fd| fd.try_clone().map_err(|e| e.to_string())),
        index: 0,
        rel: Vec::new(),
    });
    let run = Run {
        op,
        opts,
        src_root: source.to_path_buf(),
        dst_root: destination.to_path_buf(),
        dst_root_id,
        include: globs(&opts.include)?,
        exclude: globs(&opts.exclude)?,
        manifest,
        key_set,
        label,
        on_file,
        summary: Mutex::new(TreeSummary::default()),
        stop: AtomicBool::new(false),
        big: Permits {
            free: Mutex::new(BIG_FILES_AT_ONCE),
            freed: Condvar::new(),
        },
        dirs: Mutex::new(Vec::new()),
    };
    if let Some(id) = dst_root_id {
        let finish = created_root.then(|| (run.dir_mode(&src_st), fs::carried_times(&src_st)));
        run.dirs.lock().expect("dirs lock").push(DstDir {
            parent: 0,
            name: OsStr::new("").into(),
            id,
            finish,
        });
    }
    let (tx, rx) = sync_channel::<Job>(opts.jobs * 2);
    let rx = Mutex::new(rx);
    std::thread::scope(|s| {
        for _ in 0..opts.jobs {
            s.spawn(|| run.work(&rx));
        }
        run.walk(root, (src_st.st_dev, src_st.st_ino), &tx);
        drop(tx);
    });
    if let Some(fd) = &dst_root_fd {
        run.finish_dirs(fd);
        if opts.durability == Durability::SyncFs {
            fs::syncfs(fd)?;
        }
    }
    if let Some(m) = &run.manifest {
        m.flush()?;
    }
    let mut summary = run.summary.into_inner().expect("summary lock");
    summary.stopped = run.stop.load(Ordering::SeqCst);
    Ok(summary)
}

/// What a resumed run must share with the earlier one beyond what an output's header shows:
/// the direction, the commitment policy, and a hash of the whole context including the
/// required-only pairs (which no header stores), then the caller's label.
fn run_label(op: Op<'_>, opts: &TreeOptions) -> String {
    use sha2::Digest;
    let (what, policy, context, required): (_, _, _, &[String]) = match op {
        Op::Encrypt(e) => ("encrypt", e.policy, &e.context, &e.required_keys),
        Op::Decrypt(d) => ("decrypt", d.policy, &d.expected_context, &[]),
    };
    let mut h = sha2::Sha256::new();
    // Length-prefixed, so no two contexts hash the same bytes.
    let mut field = |b: &[u8]| {
        h.update((b.len() as u64).to_be_bytes());
        h.update(b);
    };
    for (k, v) in context.iter() {
        field(k.as_bytes());
        field(v.as_bytes());
    }
    let mut required = required.to_vec();
    required.sort();
    for k in &required {
        field(b"required");
        field(k.as_bytes());
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    // What else decides an output's bytes or mode: the path binding and the mode rule.
    let path = opts.context_path.as_deref().map(str::escape_debug);
    let path = path.map_or_else(|| "-".to_owned(), |p| p.to_string());
    let modes = if opts.preserve_mode {
        "preserved"
    } else {
        "owner-only"
    };
    let caller = &opts.run_label;
    format!("{what} {policy:?} context-sha256={hex} context-path={path} modes={modes} {caller}")
}

/// The wrapped keys this run's keyring makes: one empty message is encrypted to see them.
fn probe_key_set(e: &Encryptor<'_>) -> Result<Vec<(String, Vec<u8>)>, Error> {
    let message = e.encrypt(b"")?;
    let header = read_header(&mut &message[..])?;
    Ok(key_set(&header.encrypted_data_keys))
}

/// The keys that wrapped a message's data key, as (provider ID, key identity): the provider
/// info, less the per-message IV that ends a raw AES keyring's (name, tag bits 128, IV length
/// 12, IV), so that every message under one set of keys has the same set.
fn key_set(edks: &[EncryptedDataKey]) -> Vec<(String, Vec<u8>)> {
    const RAW_AES_SHAPE: [u8; 8] = [0, 0, 0, 128, 0, 0, 0, 12];
    let identity = |k: &EncryptedDataKey| {
        let info = &k.provider_info;
        match info.len().checked_sub(20) {
            Some(name) if k.provider_id != "aws-kms" && info[name..name + 8] == RAW_AES_SHAPE => {
                info[..name + 8].to_vec()
            }
            _ => info.clone(),
        }
    };
    let mut set: Vec<_> = edks
        .iter()
        .map(|k| (k.provider_id.clone(), identity(k)))
        .collect();
    set.sort();
    set.dedup();
    set
}

/// Reads a message's header (no key needed; not authenticated).
fn read_header(r: &mut impl Read) -> Result<HeaderBody, Error> {
    let limits = HeaderLimits {
        max_encrypted_data_keys: crate::stream::DEFAULT_MAX_ENCRYPTED_DATA_KEYS,
        max_header_len: crate::stream::DEFAULT_MAX_HEADER_LEN,
    };
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 4096];
    loop {
        if let Some((header, _)) = crate::format::Header::parse(&buf, &limits)? {
            return Ok(header.body);
        }
        let n = r.read(&mut chunk)?;
        if n == 0 {
            return Err(Error::Format(crate::format::FormatError::Truncated));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn wrapped_keys(edks: &[EncryptedDataKey]) -> Vec<String> {
    edks.iter()
        .map(|k| {
            let info = String::from_utf8_lossy(&k.provider_info);
            if k.provider_id == "aws-kms" {
                info.into_owned()
            } else {
                format!("{}:{info}", k.provider_id)
            }
        })
        .collect()
}

fn join_rel(dir: &[OsString], name: &OsStr) -> PathBuf {
    let mut p = PathBuf::new();
    for c in dir {
        p.push(c);
    }
    p.push(name);
    p
}

/// The context a file's message carries (or must carry): the base, plus its path if bound.
fn file_context(
    base: &EncryptionContext,
    key: Option<&String>,
    rel: &Path,
) -> Result<EncryptionContext, String> {
    let mut context = base.clone();
    if let Some(key) = key {
        let Some(value) = rel.to_str() else {
            return Err(
                "its path is not UTF-8, so it cannot be bound into the encryption context: \
                 rename it, or run without context_path"
                    .to_string(),
            );
        };
        context.insert(key.clone(), value);
    }
    Ok(context)
}

/// What one file's processing produced.
struct Outcome {
    bytes: u64,
    header: HeaderBody,
}

impl Run<'_> {
    fn report(&self, r: FileReport) {
        {
            let mut s = self.summary.lock().expect("summary lock");
            match r.status {
                FileStatus::Done => {
                    s.done += 1;
                    s.bytes += r.bytes;
                }
                FileStatus::AlreadyDone => s.already_done += 1,
                FileStatus::Planned => s.planned += 1,
                FileStatus::Skipped => s.skipped += 1,
                FileStatus::Failed => s.failed += 1,
            }
        }
        if r.status == FileStatus::Failed && self.opts.fail_fast {
            self.stop.store(true, Ordering::SeqCst);
        }
        (self.on_file)(&r);
    }

    fn note(&self, rel: PathBuf, status: FileStatus, note: String) {
        self.report(FileReport {
            source: self.src_root.join(&rel),
            relative: rel,
            destination: None,
            bytes: 0,
            message_id: None,
            wrapped_keys: Vec::new(),
            status,
            note: Some(note),
        });
    }

    fn matches(set: &Option<GlobSet>, rel: &Path) -> bool {
        set.as_ref().is_some_and(|s| s.is_match(rel))
    }

    /// Lists a directory for the walk, reporting it failed if it cannot be listed.
    fn frame(&self, dir: Arc<DirPair>) -> Option<Frame> {
        match fs::list(&dir.src) {
            Ok(entries) => Some(Frame {
                dir,
                entries: entries.into_iter(),
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
    fn walk(&self, root: Arc<DirPair>, root_id: (u64, u64), tx: &SyncSender<Job>) {
        // The (device, inode) of each directory on the stack, to tell a cycle in a note, and
        // of every directory entered in the run: through links (or mounts) a graph of a few
        // directories can have exponentially many paths, so each is entered once.
        let mut ancestors = vec![root_id];
        let mut entered = HashSet::from([root_id]);
        let mut stack: Vec<Frame> = self.frame(root).into_iter().collect();
        while let Some(top) = stack.last_mut() {
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            let Some((name, t)) = top.entries.next() else {
                stack.pop();
                ancestors.pop();
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
                    if let Some((child, id)) = self.descend(&dir, name, follow, seen) {
                        if let Some(frame) = self.frame(child) {
                            stack.push(frame);
                            ancestors.push(id);
                        }
                    }
                }
                FileType::RegularFile | FileType::Unknown => {
                    if self.include.is_some() && !Self::matches(&self.include, &rel) {
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
    fn descend(
        &self,
        parent: &DirPair,
        name: OsString,
        follow: bool,
        (ancestors, entered): (&[DirId], &mut HashSet<DirId>),
    ) -> Option<(Arc<DirPair>, DirId)> {
        let rel = join_rel(&parent.rel, &name);
        if parent.rel.len() >= MAX_DEPTH {
            self.note(
                rel,
                FileStatus::Failed,
                format!("it is more than {MAX_DEPTH} levels deep: not entered"),
            );
            return None;
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
                return None;
            }
        };
        let id = (st.st_dev, st.st_ino);
        if ancestors.contains(&id) {
            self.note(
                rel,
                FileStatus::Skipped,
                "a link back to a directory above it (a cycle): not entered".into(),
            );
            return None;
        }
        if !entered.insert(id) {
            self.note(
                rel,
                FileStatus::Skipped,
                "a directory already entered on another path (links or mounts reach it \
                 twice): not entered again"
                    .into(),
            );
            return None;
        }
        if Some(id) == self.dst_root_id {
            self.note(
                rel,
                FileStatus::Skipped,
                "the destination tree itself: not entered".into(),
            );
            return None;
        }
        let mut index = 0;
        let dst = parent.dst.as_ref().map(|d| match d {
            Ok(p) => fs::make_dir(p.as_fd(), &name).map(|(dst, dst_st, made)| {
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
        Some((child, id))
    }

    fn dir_mode(&self, st: &Stat) -> rustix::fs::Mode {
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
    fn finish_dirs(&self, root: &OwnedFd) {
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

    fn finish_dir(&self, dirs: &[DstDir], i: usize, fd: Result<OwnedFd, String>) {
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

    fn work(&self, rx: &Mutex<Receiver<Job>>) {
        let mut buf = vec![0u8; COPY_BUFFER];
        loop {
            let job = match rx.lock().expect("queue lock").recv() {
                Ok(job) => job,
                Err(_) => return,
            };
            if self.stop.load(Ordering::SeqCst) {
                continue; // drained without work, so the walk is never blocked
            }
            let report = self.file(&job, &mut buf);
            self.report(report);
        }
    }

    /// The output name of a source name, or why there is none (skipped, or failed).
    fn out_name(&self, name: &OsStr) -> Result<OsString, (FileStatus, String)> {
        let suffix = self.opts.suffix.as_bytes();
        match self.op {
            Op::Encrypt(_) => {
                let mut out = name.to_os_string();
                out.push(&self.opts.suffix);
                Ok(out)
            }
            Op::Decrypt(_) => {
                let b = name.as_bytes();
                match b.strip_suffix(suffix) {
                    // `..kms` would name the parent directory: a name only an attacker makes.
                    Some(stem @ (b"." | b"..")) => Err((
                        FileStatus::Failed,
                        format!(
                            "its name without {:?} is {:?}, which names a directory, not a \
                             file: not decrypted; rename it if it is a message you want",
                            self.opts.suffix,
                            OsStr::from_bytes(stem)
                        ),
                    )),
                    Some(stem) if !stem.is_empty() => Ok(OsStr::from_bytes(stem).to_os_string()),
                    _ => Err((
                        FileStatus::Skipped,
                        format!(
                            "its name does not end in {:?} (or is only that): not decrypted",
                            self.opts.suffix
                        ),
                    )),
                }
            }
        }
    }

    fn file(&self, job: &Job, buf: &mut [u8]) -> FileReport {
        let rel = join_rel(&job.dir.rel, &job.name);
        let mut report = FileReport {
            source: self.src_root.join(&rel),
            relative: rel.clone(),
            destination: None,
            bytes: 0,
            message_id: None,
            wrapped_keys: Vec::new(),
            status: FileStatus::Failed,
            note: None,
        };
        let out_name = match self.out_name(&job.name) {
            Ok(n) => n,
            Err((status, note)) => {
                report.status = status;
                report.note = Some(note);
                return report;
            }
        };
        let out_rel = join_rel(&job.dir.rel, &out_name);
        report.destination = Some(self.dst_root.join(&out_rel));
        match self.file_inner(job, &rel, &out_rel, &out_name, buf, &mut report) {
            Ok(status) => report.status = status,
            Err(note) => {
                report.status = FileStatus::Failed;
                report.note = Some(note);
            }
        }
        report
    }

    fn file_inner(
        &self,
        job: &Job,
        rel: &Path,
        out_rel: &Path,
        out_name: &OsStr,
        buf: &mut [u8],
        report: &mut FileReport,
    ) -> Result<FileStatus, String> {
        // The path bound into the context is the plaintext file's: the output's on decrypt.
        let plain_rel = match self.op {
            Op::Encrypt(_) => rel,
            Op::Decrypt(_) => out_rel,
        };
        let base = match self.op {
            Op::Encrypt(e) => &e.context,
            Op::Decrypt(d) => &d.expected_context,
        };
        let context = file_context(base, self.opts.context_path.as_ref(), plain_rel)?;
        let (src, st) = fs::open_regular(job.dir.src.as_fd(), &job.name, job.follow)?;
        let version = Version::of(&st);
        report.bytes = version.size;
        let Some(dst) = &job.dir.dst else {
            return Ok(FileStatus::Planned);
        };
        let dst = dst.as_ref().map_err(Clone::clone)?.as_fd();
        let path_key = rel.as_os_str().as_bytes();
        let existing =
            fs::existing(dst, out_name).map_err(|e| format!("cannot examine the output: {e}"))?;
        if let Some(t) = existing {
            if t != FileType::RegularFile {
                return Err(format!(
                    "the output exists and is {}: it is neither followed nor replaced; remove it",
                    fs::kind(t)
                ));
            }
            if self.opts.resume {
                if let Some(done) =
                    self.already_done(dst, out_name, &src, &version, &context, path_key)
                {
                    report.message_id = Some(done.0);
                    report.wrapped_keys = done.1;
                    return Ok(FileStatus::AlreadyDone);
                }
            } else if !self.opts.force {
                return Err(
                    "the output exists: pass force to replace it, or resume to finish an \
                     earlier run"
                        .into(),
                );
            }
        }
        if let Op::Decrypt(_) = self.op {
            // The resume check may have read the source: decrypt it from its start.
            (&src)
                .seek(std::io::SeekFrom::Start(0))
                .map_err(|e| format!("cannot read it: {e}"))?;
        }
        let _big = (version.size >= BIG_FILE).then(|| self.big.acquire());
        let threads = if version.size >= BIG_FILE {
            rayon::current_num_threads() // the crate's one shared pool
        } else {
            1
        };
        let mut temp = fs::TempOutput::new(dst)
            .map_err(|e| format!("cannot create a temporary output: {}", fs::io_text(&e)))?;
        let outcome = match self.op {
            Op::Encrypt(e) => {
                encrypt_file(e, context, threads, &src, &version, &mut temp.file, buf)
            }
            Op::Decrypt(d) => decrypt_file(d, context, threads, &src, &mut temp.file, buf),
        }
        .map_err(|e| e.to_string())?;
        // A source changed while it was read would leave an output of no version of it.
        let after = rustix::fs::fstat(&src).map_err(|e| format!("cannot examine it: {e}"))?;
        if Version::of(&after) != version {
            return Err("it changed while it was read: run again to process it".into());
        }
        report.bytes = outcome.bytes;
        report.message_id = Some(outcome.header.message_id.clone());
        report.wrapped_keys = wrapped_keys(&outcome.header.encrypted_data_keys);
        let out_size = temp
            .file
            .metadata()
            .map_err(|e| format!("cannot examine the output: {e}"))?
            .len();
        let durable = self.opts.durability == Durability::PerFile;
        let replace = existing.is_some();
        let mode = fs::file_mode(
            &st,
            matches!(self.op, Op::Decrypt(_)),
            self.opts.preserve_mode,
        );
        temp.commit(out_name, mode, &fs::carried_times(&st), replace, durable)?;
        if durable {
            rustix::fs::fsync(dst)
                .map_err(|e| format!("cannot sync the output's directory: {e}"))?;
        }
        if let Some(m) = &self.manifest {
            let record = Record {
                source: version,
                out_size,
                message_id: outcome.header.message_id,
                run: self.label.clone(),
            };
            m.add(path_key, &record)
                .map_err(|e| format!("done, but the manifest could not be written: {e}"))?;
        }
        Ok(FileStatus::Done)
    }

    /// Whether an earlier run finished this file, by every rule of the module documentation;
    /// if so, the message ID and wrapped keys to report.
    fn already_done(
        &self,
        dst: std::os::fd::BorrowedFd<'_>,
        out_name: &OsStr,
        src: &File,
        version: &Version,
        context: &EncryptionContext,
        path_key: &[u8],
    ) -> Option<(Vec<u8>, Vec<String>)> {
        let record = self.manifest.as_ref()?.previous(path_key)?;
        if record.run != self.label || record.source != *version {
            return None;
        }
        let (out, out_st) = fs::open_regular(dst, out_name, false).ok()?;
        if out_st.st_size as u64 != record.out_size {
            return None;
        }
        // Encrypting, the output is the message; decrypting, the source is.
        let message = match self.op {
            Op::Encrypt(_) => &out,
            Op::Decrypt(_) => src,
        };
        let layout = crate::stream::scan_layout(
            &mut &*message,
            &HeaderLimits {
                max_encrypted_data_keys: crate::stream::DEFAULT_MAX_ENCRYPTED_DATA_KEYS,
                max_header_len: crate::stream::DEFAULT_MAX_HEADER_LEN,
            },
        )
        .ok()?;
        let header = layout.header;
        if header.message_id != record.message_id
            || !stored_context_matches(&header, context, self.op)
        {
            return None;
        }
        if let Op::Encrypt(e) = self.op {
            if header.suite != e.suite
                || header.frame_length != e.frame_length
                || Some(key_set(&header.encrypted_data_keys)) != self.key_set
                || layout.plaintext_len != version.size
            {
                return None;
            }
        }
        Some((
            header.message_id.clone(),
            wrapped_keys(&header.encrypted_data_keys),
        ))
    }
}

/// Whether a message's stored context is what this run writes (encrypting: every pair but the
/// required-only ones, which are not stored) or accepts (decrypting: every expected pair it
/// stores has the expected value).
fn stored_context_matches(header: &HeaderBody, context: &EncryptionContext, op: Op<'_>) -> bool {
    let stored: Vec<(&str, &str)> = header
        .context
        .iter()
        .filter(|(k, _)| !k.starts_with(RESERVED_PREFIX))
        .collect();
    match op {
        Op::Encrypt(e) => {
            let wanted: Vec<(&str, &str)> = context
                .iter()
                .filter(|(k, _)| !e.required_keys.iter().any(|r| r == k))
                .collect();
            stored == wanted
        }
        Op::Decrypt(_) => context
            .iter()
            .all(|(k, v)| header.context.get(k).is_none_or(|s| s == v)),
    }
}

fn encrypt_file(
    e: &Encryptor<'_>,
    context: EncryptionContext,
    threads: usize,
    src: &File,
    version: &Version,
    out: &mut File,
    buf: &mut [u8],
) -> Result<Outcome, Error> {
    let mut writer = e
        .clone()
        .context(context)
        .plaintext_len(version.size)
        .threads(threads)
        .writer(&mut *out)?;
    let mut bytes = 0u64;
    loop {
        let n = match (&*src).read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        writer.write_all(&buf[..n])?;
        bytes += n as u64;
    }
    writer.finish()?;
    let header = read_header(&mut ReadAtStart { file: out, at: 0 })?;
    Ok(Outcome { bytes, header })
}

/// Reads a file from its start without moving its offset.
struct ReadAtStart<'f> {
    file: &'f File,
    at: u64,
}

impl Read for ReadAtStart<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

fn decrypt_file(
    d: &Decryptor<'_>,
    context: EncryptionContext,
    threads: usize,
    src: &File,
    out: &mut File,
    buf: &mut [u8],
) -> Result<Outcome, Error> {
    let mut reader = d
        .clone()
        .expected_context(context)
        .threads(threads)
        // Frames go to the unnamed temporary output, which is linked into place only once the
        // reader has reached its end, signature verified: nothing unverified is ever visible,
        // and a signed message needs no buffer of its size.
        .dangerous_release_unverified_signed_frames(true)
        .reader(src)?;
    let mut bytes = 0u64;
    loop {
        let n = match reader.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        out.write_all(&buf[..n])?;
        bytes += n as u64;
    }
    Ok(Outcome {
        bytes,
        header: reader.header().clone(),
    })
}
