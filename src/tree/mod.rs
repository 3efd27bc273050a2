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
//! [`follow_symlinks`](TreeOptions::follow_symlinks) (then a link to a directory above it, or
//! to one already walked whole, is skipped with a note; a real directory is always walked
//! under its own path); FIFOs, sockets
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
mod resume;
mod run;
mod walk;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::keyring::Keyring;
use crate::keyring::{CacheLimits, CachingKeyring, DataKeyCache};
use crate::{Decryptor, Encryptor, Error};
use run::{run, Op};

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
    /// Follows symbolic links instead of skipping them; a link to a directory above it (a
    /// cycle) or already walked whole on another path is skipped with a note.
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
    /// label redoes every file. For a raw key, put in something that tells the key material
    /// apart (a keyed fingerprint, never the key): its wrapped keys store only namespace and
    /// name, so a resumed run under another key of the same name would keep the earlier files.
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
