//! `encrypt -r` and `decrypt -r`: whole directory trees through the library's `tree` module,
//! with a JSON-lines report, a summary, and exit code 1 when any file failed.

use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use kms_envelope::tree::{
    caching_keyring, decrypt_tree, encrypt_tree, Durability, FileReport, FileStatus, TreeOptions,
    TreeSummary, DEFAULT_JOBS, MAX_DEPTH,
};
use kms_envelope::CacheLimits;
use kms_envelope::{CommitmentPolicy, Decryptor, EncryptionContext, Keyring};
use serde_json::json;

use crate::args::AwsArgs;
use crate::exit::{failure, io_error, io_failure, usage, Code, Failure};
use crate::files::decrypt::DecryptArgs;
use crate::files::encrypt::{encryptor, EncryptArgs};
use crate::files::inspect::hex;
use crate::term::line_to_stderr;

/// The tree flags shared by `encrypt` and `decrypt`.
#[derive(Args, Clone, Default)]
pub(crate) struct TreeArgs {
    /// Process a directory tree: -i names the source directory, -o the destination (created if
    /// missing), which mirrors the source's relative paths with --suffix added (encrypt) or
    /// stripped (decrypt). Regular files only: links and special files are skipped with a
    /// note (docs/TREES.md).
    #[arg(short = 'r', long = "recursive")]
    pub recursive: bool,
    /// With -r: the suffix of encrypted files (default .kms).
    #[arg(long, value_name = "SUFFIX", requires = "recursive")]
    suffix: Option<String>,
    /// With -r: write one JSON line per file (source, destination, bytes, message ID,
    /// wrapped keys, status, error) to FILE.
    #[arg(long, value_name = "FILE", requires = "recursive")]
    report: Option<PathBuf>,
    /// With -r: skip the files an earlier run provably finished (its manifest in the
    /// destination; docs/TREES.md lists the checks) and redo the others.
    #[arg(long, requires = "recursive")]
    resume: bool,
    /// With -r: files in flight at once, hence concurrent KMS calls (default 16, at most
    /// 256: each file in flight holds up to four file descriptors; the command raises its
    /// open-file limit to the hard limit, `ulimit -Hn`).
    #[arg(long, value_name = "N", requires = "recursive",
          value_parser = clap::value_parser!(u16).range(1..=256))]
    jobs: Option<u16>,
    /// With -r: share data keys between files, at most N files per key (give all three
    /// --cache-max-* limits). Off by default: one data key per file is the format's promise.
    #[arg(long, value_name = "N", requires = "recursive")]
    cache_max_messages: Option<u64>,
    /// With -r: a shared data key is used for at most this many seconds.
    #[arg(long, value_name = "SECONDS", requires = "recursive")]
    cache_max_age: Option<u64>,
    /// With -r: a shared data key encrypts at most N plaintext bytes.
    #[arg(long, value_name = "N", requires = "recursive")]
    cache_max_bytes: Option<u64>,
    /// With -r: bind each file's path relative to the tree root into its encryption context
    /// under KEY; decrypting, the expected value is computed from where the file is, so files
    /// moved or swapped within the tree fail (docs/TREES.md says what it does not stop).
    #[arg(long, value_name = "KEY", requires = "recursive")]
    context_path: Option<String>,
    /// With -r: follow symbolic links (a link that makes a cycle, or to a directory already
    /// walked whole, is skipped with a note). Only in trees whose writers you trust: a link may
    /// name any file you can read.
    #[arg(long, requires = "recursive")]
    follow_symlinks: bool,
    /// With -r: process only files whose path (relative to -i) matches GLOB (repeatable).
    #[arg(long, value_name = "GLOB", requires = "recursive")]
    include: Vec<String>,
    /// With -r: leave out files and directories whose path matches GLOB (repeatable).
    #[arg(long, value_name = "GLOB", requires = "recursive")]
    exclude: Vec<String>,
    /// With -r, decrypting: give plaintext files and directories the ciphertext tree's modes
    /// (less setuid/setgid and group/other write on directories) instead of 0600 and 0700.
    /// Only for a ciphertext tree whose writers you trust: they choose those modes.
    #[arg(long, requires = "recursive")]
    preserve_mode: bool,
    /// With -r: list what would be done; write nothing.
    #[arg(long, requires = "recursive")]
    dry_run: bool,
    /// With -r: keep the run's manifest (what --resume trusts) in FILE rather than in
    /// DST/.kms-envelope-manifest, for a destination that other tools will read whole.
    #[arg(long, value_name = "FILE", requires = "recursive")]
    manifest: Option<PathBuf>,
    /// With -r: stop at the first file that fails.
    #[arg(long, requires = "recursive")]
    fail_fast: bool,
    /// With -r: instead of an fsync per file, one syncfs of the destination's file system
    /// before each manifest batch and before the command reports success.
    #[arg(long, requires = "recursive", conflicts_with = "no_fsync")]
    sync_at_end: bool,
}

impl TreeArgs {
    fn options(&self, force: bool, no_fsync: bool, label: String) -> TreeOptions {
        let mut o = TreeOptions::new()
            .force(force)
            .resume(self.resume)
            .dry_run(self.dry_run)
            .fail_fast(self.fail_fast)
            .follow_symlinks(self.follow_symlinks)
            .preserve_mode(self.preserve_mode)
            .run_label(label)
            .durability(if no_fsync {
                Durability::None
            } else if self.sync_at_end {
                Durability::SyncFs
            } else {
                Durability::PerFile
            });
        if let Some(s) = &self.suffix {
            o = o.suffix(s);
        }
        if let Some(m) = &self.manifest {
            o = o.manifest(m);
        }
        if let Some(j) = self.jobs {
            o = o.jobs(j.into());
        }
        if let Some(k) = &self.context_path {
            o = o.context_path(k);
        }
        for g in &self.include {
            o = o.include(g);
        }
        for g in &self.exclude {
            o = o.exclude(g);
        }
        o
    }

    /// The cache limits, when any is given: all three must be.
    fn cache(&self) -> Result<Option<CacheLimits>, Failure> {
        match (
            self.cache_max_messages,
            self.cache_max_age,
            self.cache_max_bytes,
        ) {
            (None, None, None) => Ok(None),
            (Some(max_messages), Some(age), Some(max_bytes)) => Ok(Some(CacheLimits {
                max_age: Duration::from_secs(age),
                max_messages,
                max_bytes,
            })),
            _ => Err(usage(
                "--cache-max-messages, --cache-max-age and --cache-max-bytes go together: give \
                 all three limits of a shared data key",
            )),
        }
    }
}

fn status_name(s: FileStatus) -> &'static str {
    match s {
        FileStatus::Done => "done",
        FileStatus::AlreadyDone => "already-done",
        FileStatus::Planned => "planned",
        FileStatus::Skipped => "skipped",
        FileStatus::Failed => "failed",
    }
}

/// Where reports go: the --report file, notes on stderr, and the progress line.
struct Sink {
    report: Option<Mutex<BufWriter<File>>>,
    report_error: Mutex<Option<io::Error>>,
    progress: Option<indicatif::ProgressBar>,
    /// Plaintext bytes of the files done so far, for the progress line.
    bytes: std::sync::atomic::AtomicU64,
    dry_run: bool,
}

impl Sink {
    fn new(aws: &AwsArgs, t: &TreeArgs, force: bool, trees: [&Path; 2]) -> Result<Sink, Failure> {
        let report = match &t.report {
            Some(p) => Some(Mutex::new(BufWriter::new(open_report(p, force, trees)?))),
            None => None,
        };
        let progress = (!aws.quiet && !t.dry_run && io::stderr().is_terminal()).then(|| {
            let pb = indicatif::ProgressBar::new_spinner();
            pb.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {pos} files, {msg} {elapsed}")
                    .expect("template"),
            );
            pb.enable_steady_tick(Duration::from_millis(200));
            pb
        });
        Ok(Sink {
            report,
            report_error: Mutex::new(None),
            progress,
            bytes: Default::default(),
            dry_run: t.dry_run,
        })
    }

    fn file(&self, r: &FileReport) {
        if let Some(report) = &self.report {
            let line = json!({
                "source": r.source.to_string_lossy(),
                "destination": r.destination.as_ref().map(|d| d.to_string_lossy()),
                "bytes": r.bytes,
                "message_id": r.message_id.as_deref().map(hex),
                "wrapped_keys": r.wrapped_keys,
                "status": status_name(r.status),
                "error": r.note,
            });
            let mut w = report.lock().expect("report lock");
            if let Err(e) = writeln!(w, "{line}") {
                self.report_error
                    .lock()
                    .expect("report lock")
                    .get_or_insert(e);
            }
        }
        // The root's own notes have an empty relative path.
        let shown = match r.relative.as_os_str().is_empty() {
            true => ".".into(),
            false => r.relative.to_string_lossy(),
        };
        match (r.status, &r.note) {
            (FileStatus::Planned, _) if self.dry_run => line_to_stderr(&format!(
                "would write {}",
                r.destination.as_deref().unwrap_or(Path::new("?")).display()
            )),
            (FileStatus::Failed, Some(n)) => self.line(&format!("kms-envelope: {shown}: {n}")),
            (FileStatus::Skipped, Some(n)) => {
                self.line(&format!("kms-envelope: note: {shown}: skipped, {n}"))
            }
            _ => {}
        }
        if let Some(pb) = &self.progress {
            pb.inc(1);
            if r.status == FileStatus::Done {
                let total = r.bytes
                    + self
                        .bytes
                        .fetch_add(r.bytes, std::sync::atomic::Ordering::Relaxed);
                pb.set_message(indicatif::HumanBytes(total).to_string());
            }
        }
    }

    fn line(&self, text: &str) {
        match &self.progress {
            Some(pb) => pb.suspend(|| line_to_stderr(text)),
            None => line_to_stderr(text),
        }
    }

    fn finish(self, verb: &str, s: &TreeSummary) -> Result<(), Failure> {
        if let Some(pb) = &self.progress {
            pb.finish_and_clear();
        }
        if let Some(report) = self.report {
            let flushed = report.into_inner().expect("report lock").flush();
            if let Some(e) = self.report_error.into_inner().expect("report lock") {
                return Err(io_error(format!("cannot write the report: {e}")));
            }
            flushed.map_err(|e| io_error(format!("cannot write the report: {e}")))?;
        }
        let (verb, n) = if self.dry_run {
            (format!("would have {verb}"), s.planned)
        } else {
            (verb.to_owned(), s.done)
        };
        line_to_stderr(&format!(
            "kms-envelope: {verb} {n} files ({} bytes), {} already done, {} skipped, {} failed{}",
            s.bytes,
            s.already_done,
            s.skipped,
            s.failed,
            if s.stopped {
                "; stopped at the first failure (--fail-fast)"
            } else {
                ""
            },
        ));
        if s.failed > 0 {
            return Err(Failure {
                code: Code::SOME_FILES_FAILED,
                message: format!(
                    "{} files failed (see above{})",
                    s.failed,
                    if s.stopped {
                        ""
                    } else {
                        ", the others are done"
                    }
                ),
            });
        }
        Ok(())
    }
}

/// `path` made absolute through its parent's real path (the report need not exist yet).
fn real_parent(path: &Path) -> io::Result<PathBuf> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("it names no file"))?;
    Ok(parent.canonicalize()?.join(name))
}

/// Opens the --report file: created new (mode 0600, no link followed), so it cannot overwrite
/// an input or be redirected; with --force an existing one is replaced only if it is a regular
/// file with no other name, owned by us. A report inside either tree is refused: the walk would
/// read it, or it would land among the outputs.
fn open_report(p: &Path, force: bool, trees: [&Path; 2]) -> Result<File, Failure> {
    use rustix::fs::{Mode, OFlags};
    let fail = |e: io::Error| io_failure("cannot create the report", p, e);
    let real = real_parent(p).map_err(fail)?;
    for tree in trees {
        if tree.canonicalize().is_ok_and(|t| real.starts_with(t)) {
            return Err(usage(format!(
                "the report {} is inside the tree {}: write it outside both trees",
                p.display(),
                tree.display()
            )));
        }
    }
    let base = OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let mode = Mode::from_raw_mode(0o600);
    match rustix::fs::open(p, base | OFlags::CREATE | OFlags::EXCL, mode) {
        Ok(fd) => return Ok(File::from(fd)),
        Err(rustix::io::Errno::EXIST) if force => {}
        Err(rustix::io::Errno::EXIST) => {
            return Err(usage(format!(
                "the report {} exists: pass --force to replace it, or name another file",
                p.display()
            )))
        }
        Err(e) => return Err(fail(e.into())),
    }
    // Not truncated on open: only once it is known to be a file of ours alone.
    let fd = rustix::fs::open(p, base, Mode::empty()).map_err(|e| fail(e.into()))?;
    let st = rustix::fs::fstat(&fd).map_err(|e| fail(e.into()))?;
    let regular = rustix::fs::FileType::from_raw_mode(st.st_mode).is_file();
    if !regular || st.st_nlink != 1 || st.st_uid != rustix::process::geteuid().as_raw() {
        return Err(usage(format!(
            "the report {} is not a regular file of yours with one name: not replaced; \
             remove it or name another file",
            p.display()
        )));
    }
    rustix::fs::ftruncate(&fd, 0).map_err(|e| fail(e.into()))?;
    Ok(File::from(fd))
}

fn check_paths(input: &Path, output: &Path) -> Result<(), Failure> {
    if input == Path::new("-") || output == Path::new("-") {
        return Err(usage(
            "-r works on directories: -i and -o name them (not -)",
        ));
    }
    Ok(())
}

/// The keyring, behind the run's data-key cache when the --cache-max-* limits ask for one.
fn with_cache(t: &TreeArgs, keyring: Arc<dyn Keyring>) -> Result<Arc<dyn Keyring>, Failure> {
    Ok(match t.cache()? {
        Some(limits) => {
            Arc::new(caching_keyring(keyring, limits).map_err(|e| failure("--cache-max-*", e))?)
        }
        None => keyring,
    })
}

/// Raises the soft limit on open files as far as a tree run of `jobs` may need, within the
/// hard limit (never lowering it): each file in flight holds its source, its output, a
/// connection and the directories of its queued successors, and the walk two descriptors per
/// level, so the common soft limit (1024) is too low for `--jobs 128` in a deep tree. Only
/// `-r` runs raise it, since children (a `credential_process`) inherit it. Failing to raise
/// it is harmless: the files that run out say what to do.
fn raise_open_file_limit(jobs: Option<u16>) {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let jobs = jobs.map_or(DEFAULT_JOBS, usize::from) as u64;
    let needed = 2 * MAX_DEPTH as u64 + 9 * jobs + 64;
    let mut limit = getrlimit(Resource::Nofile);
    let want = limit.maximum.map_or(needed, |max| needed.min(max));
    if limit.current.is_some_and(|current| current < want) {
        limit.current = Some(want);
        let _ = setrlimit(Resource::Nofile, limit);
    }
}

/// `encrypt -r`: the keyring and context are the single-file command's.
pub(crate) fn encrypt(
    aws: &AwsArgs,
    a: &EncryptArgs,
    keyring: Arc<dyn Keyring>,
    raw_fingerprints: &[String],
    context: EncryptionContext,
) -> Result<(), Failure> {
    let (input, out) = (&a.common.input.path, &a.common.out);
    check_paths(input, &out.output)?;
    raise_open_file_limit(a.tree.jobs);
    if a.threads.is_some() {
        return Err(usage(
            "--threads is per file: -r chooses threads itself (see --jobs)",
        ));
    }
    let t = &a.tree;
    let keyring = with_cache(t, keyring)?;
    let enc = encryptor(a, &*keyring, context);
    let keys = &a.common.keys;
    // The cache limits change what is written: under a cache, files share data keys. A run
    // without it promises a key per file, so it must not keep files written under one (and
    // a run with other limits keeps only what those limits allow). Decrypting, the cache
    // changes no output, so the decrypt label leaves it out.
    let cache = match t.cache()? {
        None => "off".to_owned(),
        Some(l) => format!(
            "messages:{},age:{}s,bytes:{}",
            l.max_messages,
            l.max_age.as_secs(),
            l.max_bytes
        ),
    };
    let label = format!(
        "keys={:?} raw={:?} cache={cache}",
        keys.keys, raw_fingerprints
    );
    let opts = t.options(out.force, out.no_fsync, label);
    let sink = Sink::new(aws, t, out.force, [input.as_path(), out.output.as_path()])?;
    let summary = encrypt_tree(&enc, input, &out.output, &opts, &|r| sink.file(r))
        .map_err(|e| failure("encrypt -r", e))?;
    sink.finish("encrypted", &summary)
}

/// `decrypt -r`: the keyring (keys, or a discovery filter) and context are the single-file
/// command's.
pub(crate) fn decrypt(
    aws: &AwsArgs,
    a: &DecryptArgs,
    keyring: Arc<dyn Keyring>,
    raw_fingerprints: &[String],
    context: EncryptionContext,
) -> Result<(), Failure> {
    let (input, out) = (&a.common.input.path, &a.common.out);
    check_paths(input, &out.output)?;
    raise_open_file_limit(a.tree.jobs);
    if a.range.is_some() || a.threads.is_some() {
        return Err(usage("--range and --threads are per file: not with -r"));
    }
    let t = &a.tree;
    let keyring = with_cache(t, keyring)?;
    // Outputs are linked into place only once the whole message (signature too) verified.
    let mut dec = Decryptor::new(&*keyring).expected_context(context);
    if a.legacy.allow_legacy_suites {
        dec = dec.dangerous_commitment_policy(CommitmentPolicy::RequireEncryptAllowDecrypt);
    }
    let keys = &a.common.keys;
    let label = format!(
        "keys={:?} raw={:?} discovery={} any={} accounts={:?} partition={}",
        keys.keys,
        raw_fingerprints,
        a.discovery,
        a.discovery_any_account,
        a.accounts.accounts,
        a.accounts.partition
    );
    let opts = t.options(out.force, out.no_fsync, label);
    let sink = Sink::new(aws, t, out.force, [input.as_path(), out.output.as_path()])?;
    let summary = decrypt_tree(&dec, input, &out.output, &opts, &|r| sink.file(r))
        .map_err(|e| failure("decrypt -r", e))?;
    sink.finish("decrypted", &summary)
}
