//! One run: its state, the work queue, and what happens to each file.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Condvar, Mutex};

use globset::{Glob, GlobSet, GlobSetBuilder};
use rustix::fs::FileType;

use super::fs::{self, Version};
use super::manifest::{Manifest, Record};
use super::resume::{probe_key_set, run_label};
use super::walk::{join_rel, DirPair, DstDir, Job};
use super::{
    Durability, FileReport, FileStatus, TreeOptions, TreeSummary, BIG_FILE, BIG_FILES_AT_ONCE,
    COPY_BUFFER,
};
use crate::format::{EncryptedDataKey, HeaderBody, HeaderLimits, RESERVED_PREFIX};
use crate::{Decryptor, EncryptionContext, Encryptor, Error};

#[derive(Clone, Copy)]
pub(super) enum Op<'a> {
    Encrypt(&'a Encryptor<'a>),
    Decrypt(&'a Decryptor<'a>),
}

/// A counting semaphore for the large files in flight.
pub(super) struct Permits {
    pub(super) free: Mutex<usize>,
    pub(super) freed: Condvar,
}

impl Permits {
    pub(super) fn acquire(&self) -> PermitGuard<'_> {
        let mut free = self.free.lock().expect("permits lock");
        while *free == 0 {
            free = self.freed.wait(free).expect("permits lock");
        }
        *free -= 1;
        PermitGuard(self)
    }
}

pub(super) struct PermitGuard<'a>(&'a Permits);

impl Drop for PermitGuard<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().expect("permits lock") += 1;
        self.0.freed.notify_one();
    }
}

pub(super) struct Run<'a> {
    pub(super) op: Op<'a>,
    pub(super) opts: &'a TreeOptions,
    pub(super) src_root: PathBuf,
    pub(super) dst_root: PathBuf,
    pub(super) dst_root_id: Option<(u64, u64)>,
    pub(super) include: Option<GlobSet>,
    pub(super) exclude: Option<GlobSet>,
    pub(super) manifest: Option<Manifest>,
    /// The wrapped keys (provider ID, info) this run's keyring produces, when resuming.
    pub(super) key_set: Option<Vec<(String, Vec<u8>)>>,
    pub(super) label: String,
    pub(super) on_file: &'a (dyn Fn(&FileReport) + Sync),
    pub(super) summary: Mutex<TreeSummary>,
    pub(super) stop: AtomicBool,
    pub(super) big: Permits,
    /// Destination directories entered, in the walk's order (a parent before its children).
    pub(super) dirs: Mutex<Vec<DstDir>>,
}

pub(super) fn globs(patterns: &[String]) -> Result<Option<GlobSet>, Error> {
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
pub(super) fn resolved(path: &Path) -> std::io::Result<PathBuf> {
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

/// How the destination root was come by: whether it gets its source's mode and times.
#[derive(Clone, Copy)]
pub(super) struct RootMade {
    /// Made by this run (else there before it: its mode and times are not ours to change,
    /// unless an earlier run of the manifest made it).
    made: bool,
    /// Its parent lets no one but us (or root) rename entries in it. Otherwise what the run
    /// opened may be a directory of ours renamed into the name, so it is left 0700.
    parent_closed: bool,
}

/// Makes (mode 0700) or opens the destination root through its parent's descriptor: its last
/// component is never followed as a link, even written `link/` (where `O_NOFOLLOW` would look
/// at nothing), and the directory made is the one opened, unless the parent lets others rename
/// entries in it, which [`RootMade`] tells.
fn open_destination_root(destination: &Path) -> Result<(OwnedFd, RootMade), Error> {
    let shown = destination.display();
    // `file_name` drops a trailing `/` or `/.`, and is None for `..`, `.` and `/`.
    let Some(name) = destination.file_name() else {
        return Err(Error::Misuse(format!(
            "the destination {shown} does not end in a directory name: name it by its path \
             (for example ../out rather than . or ..)"
        )));
    };
    let parent = match destination.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let parent_fd = rustix::fs::open(
        parent,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| {
        Error::Misuse(format!(
            "cannot open {}, the directory the destination {shown} is in: {}",
            parent.display(),
            fs::errno_text(e)
        ))
    })?;
    let (fd, _, made) = fs::make_dir(parent_fd.as_fd(), name)
        .map_err(|e| Error::Misuse(format!("{shown}: {e}")))?;
    // Renamed in between mkdirat and openat, a full directory would be found here.
    let entries = match made {
        true => fs::list(&fd).map_err(|e| {
            Error::Misuse(format!(
                "cannot list the destination {shown}: {}",
                fs::io_text(&e)
            ))
        })?,
        false => Vec::new(),
    };
    if !entries.is_empty() {
        return Err(Error::Misuse(format!(
            "the destination {shown} was made by this run but is not empty when opened: \
             another directory was renamed into its name; check its parent directory and \
             who can write to it"
        )));
    }
    let st = rustix::fs::fstat(&parent_fd).map_err(std::io::Error::from)?;
    let me = rustix::process::geteuid().as_raw();
    // Sticky: others cannot rename or remove our entries; else they need write access.
    let parent_closed = (st.st_uid == me || st.st_uid == 0)
        && (st.st_mode & 0o022 == 0 || st.st_mode & 0o1000 != 0);
    Ok((
        fd,
        RootMade {
            made,
            parent_closed,
        },
    ))
}

pub(super) fn run(
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
    let (dst_root_fd, root_made) = match opts.dry_run {
        true => (None, None),
        false => {
            let (fd, made) = open_destination_root(destination)?;
            (Some(fd), Some(made))
        }
    };
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
    let src_root_id = fs::dir_id(&src_root_fd, &src_st);
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
    if let (Some(id), Some(fd), Some(how)) = (dst_root_id, &dst_root_fd, root_made) {
        let st = rustix::fs::fstat(fd).map_err(std::io::Error::from)?;
        let this = fs::dir_id(fd, &st);
        // Recorded as made only where no one else can rename entries in its parent: else a
        // later resume would finish a directory that may not be the one made.
        let ours = match how.parent_closed {
            true => run.made_dir(Path::new(""), how.made, this),
            false => {
                how.made
                    || run
                        .manifest
                        .as_ref()
                        .is_some_and(|m| m.made_before(b"", this))
            }
        };
        let finish = (ours && how.parent_closed)
            .then(|| (run.dir_mode(&src_st), fs::carried_times(&src_st)));
        if ours && !how.parent_closed {
            run.note(
                PathBuf::new(),
                FileStatus::Skipped,
                "the destination root was made by this run (or the one resumed) but left \
                 owner-only (0700) with \
                 its own times: others can rename entries in its parent directory, so the \
                 directory filled may not be the one made; check it, then `chmod` it"
                    .into(),
            );
        }
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
        run.walk(root, src_root_id, &tx);
        drop(tx);
    });
    if let Some(fd) = &dst_root_fd {
        run.finish_dirs(fd);
        // Only after a whole walk: a run stopped early did not reach (so did not finish)
        // every directory an earlier run made.
        if let (Some(m), false) = (&run.manifest, run.stop.load(Ordering::SeqCst)) {
            m.dirs_finished()?;
        }
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

/// Reads a message's header (no key needed; not authenticated).
pub(super) fn read_header(r: &mut impl Read) -> Result<HeaderBody, Error> {
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

pub(super) fn wrapped_keys(edks: &[EncryptedDataKey]) -> Vec<String> {
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

/// The context a file's message carries (or must carry): the base, plus its path if bound.
pub(super) fn file_context(
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
pub(super) struct Outcome {
    pub(super) bytes: u64,
    pub(super) header: HeaderBody,
}

impl Run<'_> {
    pub(super) fn report(&self, r: FileReport) {
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

    pub(super) fn note(&self, rel: PathBuf, status: FileStatus, note: String) {
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
    pub(super) fn work(&self, rx: &Mutex<Receiver<Job>>) {
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
    pub(super) fn out_name(&self, name: &OsStr) -> Result<OsString, (FileStatus, String)> {
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

    pub(super) fn file(&self, job: &Job, buf: &mut [u8]) -> FileReport {
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

    pub(super) fn file_inner(
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
}

pub(super) fn encrypt_file(
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
    let bytes = pump(src, &mut writer, buf)?;
    writer.finish()?;
    let header = read_header(&mut ReadAtStart { file: out, at: 0 })?;
    Ok(Outcome { bytes, header })
}

/// Copies `from` into `to` through `buf` (the job's own, larger than `io::copy`'s), reading
/// again when interrupted; returns the bytes copied.
fn pump(mut from: impl Read, mut to: impl Write, buf: &mut [u8]) -> std::io::Result<u64> {
    let mut bytes = 0u64;
    loop {
        let n = match from.read(buf) {
            Ok(0) => return Ok(bytes),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        bytes += n as u64;
    }
}

/// Reads a file from its start without moving its offset.
pub(super) struct ReadAtStart<'f> {
    pub(super) file: &'f File,
    pub(super) at: u64,
}

impl Read for ReadAtStart<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

pub(super) fn decrypt_file(
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
    let bytes = pump(&mut reader, &mut *out, buf)?;
    Ok(Outcome {
        bytes,
        header: reader.header().clone(),
    })
}
