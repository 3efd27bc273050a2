//! Snapshots as standard ESDK messages, and raw images in and out.
//!
//! [`Volume::snapshot`] streams the volume's content through the stream module's
//! [`Encryptor`] (parallel frames, bounded memory), so any official ESDK decrypts it and
//! `decrypt --range` reads any part of it; [`Volume::restore`] makes a new volume from such a
//! message. [`Volume::import`] and [`Volume::export`] do the same with an unencrypted raw image.
//!
//! **Point in time.** Writers are held off for the whole of a snapshot or an export (the
//! volume's snapshot lock, taken exclusively; reads go on): the message holds the volume as it
//! was when the call began. A writer blocked meanwhile (an NBD client) waits, it is not refused.
//!
//! **New volume, new key.** `restore` and `import` create a volume with a fresh ID and a fresh
//! volume key from the keyring given, whatever the snapshot was made from. The volume is built
//! under a hidden temporary name beside `path` and linked into place only when complete and
//! flushed, never over an existing path; on any failure it is removed, so a truncated or
//! altered snapshot leaves no volume behind; a panic removes it too (a process killed
//! meanwhile may leave the hidden `.kms-envelope-vol-*` file, which never has the final name;
//! the CLI removes it on SIGINT, SIGTERM and SIGHUP).
//!
//! **Zero blocks.** An all-zero block of the input is not written: the new volume's blocks are
//! authenticated zero markers from creation on, which, as NBD TRIM and WRITE_ZEROES do, shows
//! to whoever reads the image which blocks are zero (`docs/VOLUME-FORMAT.md`).
//!
//! The volume key never enters a data-key cache: the keyring given to `restore` and `import`
//! wraps the volume key itself and must not be a `CachingKeyring` (the CLI never wraps it in
//! one). The snapshot's own data key is an ordinary message data key, which may be cached.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::layout::Layout;
use super::{Volume, VolumeOptions};
use crate::stream::workers::Workers;
use crate::{Decryptor, EncryptionContext, Encryptor, Error, Keyring, Result, VolumeError};

/// Context key of a snapshot: the volume's size in bytes, in decimal.
pub const CONTEXT_VOLUME_SIZE: &str = "kms-envelope:volume-size";
/// Context key of a snapshot: the volume's block size in bytes, in decimal.
pub const CONTEXT_BLOCK_SIZE: &str = "kms-envelope:block-size";

/// Plaintext bytes moved per step: two such chunks are in memory at a time.
const CHUNK: usize = 8 << 20;
/// Bytes one worker reads or writes at a time within a chunk.
const PIECE: usize = 256 << 10;

/// How a caller follows long work: called with (bytes done, bytes in all).
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Sync);

impl Volume {
    /// Streams the volume's content to `out` as one ESDK message made by `encryptor`, with
    /// the encryption context [`CONTEXT_VOLUME_SIZE`] and [`CONTEXT_BLOCK_SIZE`] added to the
    /// encryptor's own; returns `out`. Writers wait until it returns (see the module docs).
    ///
    /// The encryptor's frame length must be a multiple of the block size (the default,
    /// 64 KiB, is), so that `decrypt --range` of a block reads whole frames only.
    ///
    /// # Errors
    /// A block that does not authenticate aborts the snapshot with its index; the message is
    /// then left without its final frame, so no reader accepts it. Also a context that already
    /// holds one of the two keys, a frame length that is not a multiple of the block size, a
    /// keyring failure, or a failed write.
    pub fn snapshot<W: Write>(
        &self,
        out: W,
        encryptor: &Encryptor<'_>,
        progress: Progress<'_>,
    ) -> Result<W> {
        let block_size = self.block_size();
        if encryptor.frame_length == 0 || encryptor.frame_length % block_size != 0 {
            return Err(Error::Misuse(format!(
                "a snapshot's frame length ({}) must be a multiple of the volume's block size \
                 ({block_size}): set Encryptor::frame_length to one (64 KiB or 1 MiB)",
                encryptor.frame_length
            )));
        }
        let mut enc = encryptor.clone();
        enc.context = snapshot_context(&encryptor.context, self.size(), block_size)?;
        let enc = enc.plaintext_len(self.size());
        let _writers_held = self.hold_writers();
        let mut writer = enc.writer(out)?;
        self.read_all(&mut writer, progress)?;
        writer.finish()
    }

    /// Writes the volume's content, unencrypted, to `out` (a raw disk image) and returns
    /// `out`. Writers wait until it returns, as for [`Volume::snapshot`].
    ///
    /// # Errors
    /// A block that does not authenticate, with its index (what was written before it stays
    /// in `out`: write to a temporary file and keep it only on success), or a failed write.
    pub fn export<W: Write>(&self, mut out: W, progress: Progress<'_>) -> Result<W> {
        let _writers_held = self.hold_writers();
        self.read_all(&mut out, progress)?;
        out.flush()?;
        Ok(out)
    }

    /// Creates a new volume at `path` (new ID, new volume key wrapped by `keyring`) holding
    /// the plaintext of the snapshot `input`, which `decryptor` decrypts. The size and block
    /// size come from the snapshot's context; `options` gives the rest (journal, AEAD), and
    /// its block size is replaced by the snapshot's.
    ///
    /// A message without the volume context (an image encrypted with `encrypt`) is restored
    /// with [`Volume::restore_sized`].
    ///
    /// # Errors
    /// A snapshot that does not decrypt, is truncated or altered, lacks or has malformed
    /// volume context, or whose plaintext length differs from the size its context declares;
    /// an existing `path`; a keyring or I/O failure. Nothing is left at `path` on error.
    pub fn restore<R: Read + Send>(
        input: R,
        decryptor: &Decryptor<'_>,
        path: &Path,
        keyring: &dyn Keyring,
        options: VolumeOptions,
        progress: Progress<'_>,
    ) -> Result<Volume> {
        Volume::restore_sized(
            input, decryptor, None, None, path, keyring, options, progress,
        )
    }

    /// As [`Volume::restore`], with the volume size given by the caller when the message has
    /// no [`CONTEXT_VOLUME_SIZE`] (then `options` gives the block size). When both are there
    /// they must agree.
    ///
    /// `max_size`, when given, is the largest volume accepted: a caller reading a file passes
    /// its length (a snapshot's plaintext is always shorter than its message), so that a small
    /// hostile message declaring a huge size is refused before anything is written. Whatever
    /// the size, the metadata and journal a new volume writes at creation must fit the free
    /// space of `path`'s file system.
    ///
    /// # Errors
    /// As [`Volume::restore`]; also a size that differs from the snapshot's, a size above
    /// `max_size`, or too little free space for the new volume's metadata and journal.
    #[allow(clippy::too_many_arguments)]
    pub fn restore_sized<R: Read + Send>(
        input: R,
        decryptor: &Decryptor<'_>,
        size: Option<u64>,
        max_size: Option<u64>,
        path: &Path,
        keyring: &dyn Keyring,
        options: VolumeOptions,
        progress: Progress<'_>,
    ) -> Result<Volume> {
        let mut reader = decryptor.reader(input)?;
        let context = &reader.header().context;
        let declared = context_number(context, CONTEXT_VOLUME_SIZE)?;
        let size = match (declared, size) {
            (Some(d), Some(s)) if d != s => {
                return Err(Error::Misuse(format!(
                    "the snapshot is of a {d}-byte volume, not of {s} bytes: leave the size out \
                     to restore it at its own size"
                )))
            }
            (Some(d), _) => d,
            (None, Some(s)) => s,
            (None, None) => {
                return Err(Error::Misuse(format!(
                    "the message has no {CONTEXT_VOLUME_SIZE} in its encryption context, so it \
                     is not a volume snapshot: give the volume size explicitly (--size) to \
                     restore it as a raw image"
                )))
            }
        };
        if let Some(max) = max_size.filter(|&m| size > m) {
            return Err(Error::Misuse(format!(
                "the message declares a {size}-byte volume but is only {max} bytes long, and a \
                 snapshot's plaintext is always shorter than its message: it is not a snapshot \
                 of this size"
            )));
        }
        let declared_block = context_number(context, CONTEXT_BLOCK_SIZE)?;
        let options = match declared_block {
            Some(b) => options.block_size(u32::try_from(b).map_err(|_| {
                Error::Misuse(format!(
                    "the snapshot's {CONTEXT_BLOCK_SIZE} ({b}) is not a block size: the message \
                     is not a volume snapshot"
                ))
            })?),
            None => options,
        };
        let slots = Layout::default_slots(size, options.block_size, options.journal_bytes);
        let layout = Layout::new(size, options.block_size, slots).map_err(|e| {
            let why = match e {
                VolumeError::Malformed(why) => why,
                other => other.to_string(),
            };
            if declared.is_some() || declared_block.is_some() {
                Error::Misuse(format!(
                    "the snapshot's {CONTEXT_VOLUME_SIZE} ({size}) and {CONTEXT_BLOCK_SIZE} ({}) \
                     are not a valid volume ({why}): the message is not a volume snapshot",
                    options.block_size
                ))
            } else {
                Error::Misuse(format!("bad volume options: {why}"))
            }
        })?;
        check_free_space(path, layout.data_offset)?;
        build_new(path, |staging| {
            let volume = Volume::create(staging, size, keyring, options)?;
            volume.fill_from(&mut reader, progress)?;
            // The message must end exactly here, its final frame and signature verified.
            let mut more = [0u8; 1];
            if reader.read(&mut more)? != 0 {
                return Err(Error::Misuse(format!(
                    "the snapshot holds more than the {size} bytes its volume size says: it is \
                     not a snapshot of this size"
                )));
            }
            volume.flush()?;
            Ok(volume)
        })
    }

    /// Creates a new volume at `path` (new ID, new volume key wrapped by `keyring`) of `size`
    /// bytes from the raw image `input`, which must hold exactly `size` bytes.
    ///
    /// # Errors
    /// An input shorter or longer than `size`, a size the options refuse (not a multiple of the
    /// block size), an existing `path`, a keyring or I/O failure. Nothing is left at `path`
    /// on error.
    pub fn import<R: Read + Send>(
        mut input: R,
        size: u64,
        path: &Path,
        keyring: &dyn Keyring,
        options: VolumeOptions,
        progress: Progress<'_>,
    ) -> Result<Volume> {
        build_new(path, |staging| {
            let volume = Volume::create(staging, size, keyring, options)?;
            volume.fill_from(&mut input, progress)?;
            let mut more = [0u8; 1];
            if read_full(&mut input, &mut more)? != 0 {
                return Err(Error::Misuse(format!(
                    "the image is longer than the {size} bytes asked for: give its size"
                )));
            }
            volume.flush()?;
            Ok(volume)
        })
    }

    /// Reads the whole volume in order into `out`: the next chunk is read (its blocks opened
    /// in parallel) on a thread of its own while the current one is written.
    fn read_all(&self, out: &mut dyn Write, progress: Progress<'_>) -> Result<()> {
        let size = self.size();
        let read = |offset: u64, buf: &mut [u8]| {
            let mut pieces: Vec<&mut [u8]> = buf.chunks_mut(PIECE).collect();
            Workers::Shared.each(&mut pieces, |i, piece| {
                self.read_at(piece, offset + (i * PIECE) as u64)
            })
        };
        let write = |_: u64, buf: &[u8]| Ok(out.write_all(buf)?);
        pipeline(size, read, write, "the volume reader stopped", progress)
    }

    /// Writes all of `input` (exactly the volume's size) into this new volume, skipping
    /// all-zero blocks (already zero markers): the next chunk is read on a thread of its own
    /// while the current one is sealed and written in parallel.
    fn fill_from(&self, input: &mut (dyn Read + Send), progress: Progress<'_>) -> Result<()> {
        let size = self.size();
        let block = self.block_size() as usize;
        let read = |offset: u64, buf: &mut [u8]| match read_full(input, buf) {
            Ok(got) if got == buf.len() => Ok(()),
            Ok(got) => Err(Error::Misuse(format!(
                "the input ends after {} bytes, before the volume's {size}: it is truncated, or \
                 not of this size",
                offset + got as u64
            ))),
            Err(e) => Err(e),
        };
        let write = |offset: u64, buf: &[u8]| {
            let mut pieces: Vec<&[u8]> = buf.chunks(PIECE).collect();
            Workers::Shared.each(&mut pieces, |i, piece| {
                write_nonzero_runs(self, piece, offset + (i * PIECE) as u64, block)
            })
        };
        pipeline(size, read, write, "the input reader stopped", progress)
    }
}

/// Moves `size` bytes in chunks of [`CHUNK`] from `read` to `write`, in order: `read` fills
/// the next chunk on a thread of its own while `write` takes the current one (two buffers, so
/// memory stays bounded); the first error of either ends the move.
fn pipeline(
    size: u64,
    mut read: impl FnMut(u64, &mut [u8]) -> Result<()> + Send,
    mut write: impl FnMut(u64, &[u8]) -> Result<()>,
    stopped: &str,
    progress: Progress<'_>,
) -> Result<()> {
    let chunks = size.div_ceil(CHUNK as u64);
    std::thread::scope(|s| {
        let (full_tx, full) = std::sync::mpsc::sync_channel::<Result<(Buf, usize)>>(1);
        let (empty, empty_rx) = std::sync::mpsc::sync_channel::<Buf>(2);
        for _ in 0..2 {
            let _ = empty.send(Zeroizing::new(vec![0u8; CHUNK]));
        }
        s.spawn(move || {
            for c in 0..chunks {
                let Ok(mut buf) = empty_rx.recv() else { return };
                let offset = c * CHUNK as u64;
                let n = (size - offset).min(CHUNK as u64) as usize;
                let got = read(offset, &mut buf[..n]).map(|()| (buf, n));
                let failed = got.is_err();
                if full_tx.send(got).is_err() || failed {
                    return;
                }
            }
        });
        let mut done = 0u64;
        for _ in 0..chunks {
            let (buf, n) = full.recv().map_err(|_| Error::Misuse(stopped.into()))??;
            write(done, &buf[..n])?;
            done += n as u64;
            progress(done, size);
            let _ = empty.send(buf);
        }
        Ok(())
    })
}

type Buf = Zeroizing<Vec<u8>>;

/// Writes the runs of blocks of `piece` (at `offset`) that are not all zeros, one write each.
fn write_nonzero_runs(volume: &Volume, piece: &[u8], offset: u64, block: usize) -> Result<()> {
    let mut run: Option<usize> = None;
    for (i, b) in piece.chunks(block).enumerate() {
        let zero = b.iter().all(|&x| x == 0);
        match (run, zero) {
            (None, false) => run = Some(i),
            (Some(start), true) => {
                volume.write_at(
                    &piece[start * block..i * block],
                    offset + (start * block) as u64,
                )?;
                run = None;
            }
            _ => {}
        }
    }
    if let Some(start) = run {
        volume.write_at(&piece[start * block..], offset + (start * block) as u64)?;
    }
    Ok(())
}

/// The caller's context with the two volume pairs added; refuses a context that sets them.
fn snapshot_context(
    caller: &EncryptionContext,
    size: u64,
    block_size: u32,
) -> Result<EncryptionContext> {
    let mut context = caller.clone();
    for key in [CONTEXT_VOLUME_SIZE, CONTEXT_BLOCK_SIZE] {
        if context.contains_key(key) {
            return Err(Error::Misuse(format!(
                "the context key {key} is the snapshot's own: leave it out of the context"
            )));
        }
    }
    context.insert(CONTEXT_VOLUME_SIZE, size.to_string());
    context.insert(CONTEXT_BLOCK_SIZE, block_size.to_string());
    Ok(context)
}

/// A decimal number from a snapshot's context; `None` when the key is absent.
fn context_number(context: &EncryptionContext, key: &str) -> Result<Option<u64>> {
    let Some(v) = context.get(key) else {
        return Ok(None);
    };
    // Digits only: `u64::from_str` would take a leading `+`, so two texts would mean one size.
    if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::Misuse(format!(
            "the snapshot's {key} is {:?}, not a number of bytes: the message is not a volume \
             snapshot",
            v.escape_debug().to_string()
        )));
    }
    v.parse()
        .map(Some)
        .map_err(|_| Error::Misuse(format!("the snapshot's {key} is too large")))
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(input: &mut (dyn Read + Send), buf: &mut [u8]) -> Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(got)
}

/// Refuses to start a volume whose creation writes `needed` bytes (metadata and journal, all
/// written before the first block of data) when `path`'s file system has less free.
fn check_free_space(path: &Path, needed: u64) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let st = rustix::fs::statvfs(dir).map_err(|e| Error::Io(e.into()))?;
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    if needed > free {
        return Err(Error::Io(std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            format!(
                "the new volume needs {needed} bytes of metadata and journal before any data, \
                 but {} has {free} bytes free: free space, or check the size the snapshot \
                 declares (--size states the size expected)",
                dir.display()
            ),
        )));
    }
    Ok(())
}

/// Builds a new volume under a hidden name beside `path` and links it into place once `build`
/// has succeeded (never over an existing path); removes it on any failure.
fn build_new(path: &Path, build: impl FnOnce(&Path) -> Result<Volume>) -> Result<Volume> {
    if path.symlink_metadata().is_ok() {
        return Err(Error::Io(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!(
                "{} exists: a new volume is never written over an existing path",
                path.display()
            ),
        )));
    }
    let staging = Staging(staging_path(path)?);
    let result = build(&staging.0).and_then(|volume| {
        // A hard link fails if `path` appeared meanwhile: the existing file is kept.
        std::fs::hard_link(&staging.0, path)?;
        Ok(volume)
    });
    drop(staging);
    result
}

/// The hidden name of a volume being built, removed when dropped: after success (the volume
/// is linked at its own name by then), on an error, and on a panic unwinding through.
struct Staging(PathBuf);

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A fresh hidden name in `path`'s directory: `.kms-envelope-vol-RANDOM`, or, when `path` is
/// itself such a hidden name (a caller staging too, as the CLI does), `PATH.RANDOM`, so that
/// the caller can remove what was staged for its name if it is interrupted.
fn staging_path(path: &Path) -> Result<PathBuf> {
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).map_err(|e| Error::Io(std::io::Error::other(e.to_string())))?;
    let name: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let own = path.file_name().map(|n| n.to_string_lossy());
    Ok(match own {
        Some(n) if n.starts_with(".kms-envelope-vol-") => {
            path.with_file_name(format!("{n}.{name}"))
        }
        _ => path.with_file_name(format!(".kms-envelope-vol-{name}")),
    })
}
