//! Encrypted block volumes: random reads and writes under a KMS-wrapped volume key.
//!
//! A [`Volume`] is an image file holding a fixed-size block device. Each block is sealed with
//! AES-256-GCM-SIV (or AES-256-GCM) under a key derived from a random volume key, with a random
//! nonce and associated data binding the volume ID, the block index and the key generation; a
//! never-written or trimmed block is an authenticated zero marker, so a punched hole reads as
//! an error, never as zeros. The volume key is wrapped in key slots by keyrings (KMS, raw AES
//! or RSA, multi), LUKS-style. Writes go through a write-ahead journal: after a crash every
//! block reads as its old or its new content, and every write answered before a
//! [`Volume::flush`] survives. The on-disk format is described byte by byte in
//! `docs/VOLUME-FORMAT.md`.
//!
//! ```
//! use kms_envelope::volume::{Volume, VolumeOptions};
//! use kms_envelope::RawAesKeyring;
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("disk.kev");
//! let keyring = RawAesKeyring::new("volumes", "key-1", &[0x42; 32])?;
//! let volume = Volume::create(&path, 1 << 20, &keyring, VolumeOptions::default())?;
//! volume.write_at(b"hello, block", 4096 * 3 + 10)?;
//! volume.flush()?;
//! volume.close()?;
//!
//! let volume = Volume::open(&path, &keyring)?;
//! let mut buf = [0u8; 12];
//! volume.read_at(&mut buf, 4096 * 3 + 10)?;
//! assert_eq!(&buf, b"hello, block");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The volume key never enters a data-key cache: give these functions the keyring itself, not
//! a [`CachingKeyring`](crate::keyring::CachingKeyring) over it.

#[cfg(test)]
mod attack_tests;
#[cfg(test)]
mod crash_tests;
mod device;
mod disk;
mod journal;
mod keys;
mod layout;
pub mod nbd;
#[cfg(test)]
mod simdisk;
mod snapshot;

pub use device::BlockDevice;
pub use layout::VolumeAead;
pub use snapshot::{Progress, CONTEXT_BLOCK_SIZE, CONTEXT_VOLUME_SIZE};

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard};

use zeroize::Zeroizing;

pub(crate) use disk::{Disk, FileDisk, OpenDiskError};
use journal::{Journal, Pending};
use keys::GenKey;
use layout::{Entry, GenSlots, Header, Layout, ENTRY_LEN, HEADER_MAX, HEADER_OFFSETS, KIND_DATA};

use crate::stream::workers::Workers;
use crate::{Error, Keyring, Result, VolumeError};

/// Seals reserved in the header at a time: after a crash the count restarts above every seal
/// that can have been made.
const RESERVE_STEP: u64 = 1 << 20;
/// Per-block lock stripes: a read and a write of one block never overlap.
const STRIPES: usize = 1024;
/// Most blocks one internal request covers (locks, seals and journal slots at once).
const CHUNK_BLOCKS: u64 = 256;
/// Requests at least this large are sealed or opened on the worker pool.
const PARALLEL_BYTES: usize = 64 * 1024;
/// Rekey: blocks re-sealed between checkpoints that record the cursor in the header.
const REKEY_CURSOR_EVERY: u64 = 16 * CHUNK_BLOCKS;
/// Metadata pages (4 KiB of entries, 128 blocks at 32 B) kept in memory for reads: 16 MiB, the
/// entries of 2 GiB of 4 KiB blocks. Emptied at every checkpoint, which is when entries change.
const META_PAGE: u64 = 4096;
const META_PAGES_MAX: usize = 4096;
/// Most bad block indices a [`CheckReport`] lists (it counts them all).
const CHECK_LIST_MAX: usize = 100_000;

/// How a new volume is laid out: builder-style.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VolumeOptions {
    block_size: u32,
    journal_bytes: Option<u64>,
    aead: VolumeAead,
}

impl Default for VolumeOptions {
    fn default() -> Self {
        VolumeOptions {
            block_size: 4096,
            journal_bytes: None,
            aead: VolumeAead::default(),
        }
    }
}

impl VolumeOptions {
    /// The block size: a power of two from 512 to 65536 (default 4096).
    pub fn block_size(mut self, block_size: u32) -> Self {
        self.block_size = block_size;
        self
    }

    /// Journal capacity in bytes (default: size / 16, clamped to 4 MiB .. 64 MiB and to the
    /// size; at least 16 blocks). A larger journal checkpoints less often (each checkpoint
    /// costs three fdatasyncs) and keeps up to this much sealed data in memory while open.
    pub fn journal_bytes(mut self, bytes: u64) -> Self {
        self.journal_bytes = Some(bytes);
        self
    }

    /// The block AEAD (default AES-256-GCM-SIV).
    pub fn aead(mut self, aead: VolumeAead) -> Self {
        self.aead = aead;
        self
    }
}

/// One key slot as `info` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SlotInfo {
    /// Who wrapped the volume key: `aws-kms`, or a raw keyring's namespace.
    pub provider_id: String,
    /// Which key: a KMS key ARN, or a raw keyring's name (escaped: it is untrusted).
    pub provider_info: String,
}

/// One key generation as `info` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GenerationInfo {
    /// The generation number.
    pub gen: u32,
    /// Its key slots.
    pub slots: Vec<SlotInfo>,
}

/// What [`Volume::info`] reads from a header without any key: **unauthenticated**.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VolumeInfo {
    /// Always false from [`Volume::info`]: no MAC was checked.
    pub authenticated: bool,
    /// The volume ID.
    pub id: [u8; 32],
    /// Size in bytes.
    pub size: u64,
    /// Block size in bytes.
    pub block_size: u32,
    /// The block AEAD.
    pub aead: VolumeAead,
    /// Journal capacity in blocks.
    pub journal_slots: u32,
    /// The generation new writes use.
    pub write_gen: u32,
    /// The generation a rekey in progress moves from.
    pub rekey_from_gen: Option<u32>,
    /// How far the rekey in progress got (blocks).
    pub rekey_cursor: u64,
    /// The header's sequence number.
    pub header_seq: u64,
    /// The key generations and their slots.
    pub generations: Vec<GenerationInfo>,
    /// Bytes the image takes when fully written (it is sparse).
    pub image_len: u64,
    /// Where the metadata entries start (32 bytes per block).
    pub metadata_offset: u64,
    /// Where the data area starts: everything before it is fixed overhead.
    pub data_offset: u64,
}

/// What [`Volume::check`] found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct CheckReport {
    /// Blocks checked.
    pub blocks: u64,
    /// Blocks holding data that authenticated.
    pub data_blocks: u64,
    /// Blocks whose authenticated marker says zeros.
    pub zero_blocks: u64,
    /// Blocks that failed, counted.
    pub bad_count: u64,
    /// The indices of bad blocks, in order (the first 100,000).
    pub bad: Vec<u64>,
}

/// One generation's keys and the header they authenticate.
#[derive(Debug)]
struct KeyState {
    header: Header,
    keys: Vec<GenKey>,
    /// Which header copy holds `header.seq`.
    current_copy: usize,
}

impl KeyState {
    fn write_key(&self) -> &GenKey {
        self.key(self.header.write_gen)
            .expect("the write generation's key is held")
    }
    fn key(&self, gen: u32) -> Option<&GenKey> {
        self.keys.iter().find(|k| k.gen == gen)
    }
}

/// An open encrypted volume: positional reads and writes from many threads at once (`Send +
/// Sync`). The image is locked while it is open; [`Volume::close`] flushes and unlocks it, and
/// dropping it flushes on a best-effort basis.
pub struct Volume {
    disk: Arc<dyn Disk>,
    layout: Layout,
    id: [u8; 32],
    aead: VolumeAead,
    /// Readers and writers hold it shared; checkpoints and header updates exclusive.
    gate: RwLock<()>,
    /// Writers hold it shared; a snapshot or an export exclusive, so that it is of one point
    /// in time while reads go on (`snapshot.rs`).
    writers: RwLock<()>,
    stripes: Box<[Mutex<()>]>,
    journal: Mutex<Journal>,
    /// Metadata pages read from disk, by page number: a read then needs one `pread` (its data).
    /// Coherent because entries change on disk only in a checkpoint, which empties it.
    meta_cache: Mutex<HashMap<u64, Arc<[u8]>>>,
    state: RwLock<KeyState>,
    /// Seals made under the write generation, counted before they are made.
    seals: AtomicU64,
    /// The header's `seals_reserved`: seals past it need a header update first.
    reserved: AtomicU64,
    seal_limit: u64,
    /// Set by a failed write or checkpoint: what is durable is unknown until reopened.
    failed: AtomicBool,
    /// Set by close (and `abandon`): no flush at drop.
    closed: AtomicBool,
    workers: Workers,
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume")
            .field("id", &keys::hex(&self.id))
            .field("size", &self.layout.size)
            .field("block_size", &self.layout.block_size)
            .finish_non_exhaustive()
    }
}

/// Why an internal step must be retried after exclusive work.
enum Retry {
    JournalFull,
    Reserve,
    Fail(Error),
}

impl From<Error> for Retry {
    fn from(e: Error) -> Self {
        Retry::Fail(e)
    }
}

/// One block of an internal write.
#[derive(Clone, Copy)]
enum Block<'a> {
    Data(&'a [u8]),
    Zero,
    Skip,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn vol(e: VolumeError) -> Error {
    Error::Volume(e)
}

fn open_disk(path: &Path, create: bool) -> Result<Arc<dyn Disk>> {
    match FileDisk::open(path, create) {
        Ok(d) => Ok(Arc::new(d)),
        Err(OpenDiskError::Locked) => Err(vol(VolumeError::Locked)),
        Err(OpenDiskError::Io(e)) => Err(Error::Io(e)),
    }
}

impl Volume {
    /// Creates a volume of `size` bytes (a multiple of the block size) at `path`, which must
    /// not exist; the volume key is made by `keyring` (KMS GenerateDataKey for a KMS
    /// generator) and wrapped by each of its keys. Every block starts as an authenticated zero
    /// marker.
    ///
    /// # Errors
    /// An existing path, bad options ([`VolumeError::Malformed`]), a keyring failure, or I/O.
    pub fn create(
        path: &Path,
        size: u64,
        keyring: &dyn Keyring,
        options: VolumeOptions,
    ) -> Result<Volume> {
        // Check the geometry before creating anything.
        let slots = Layout::default_slots(size, options.block_size, options.journal_bytes);
        Layout::new(size, options.block_size, slots).map_err(|e| match e {
            VolumeError::Malformed(why) => Error::Misuse(format!("bad volume options: {why}")),
            other => vol(other),
        })?;
        let disk = open_disk(path, true)?;
        let made = Volume::create_on(disk, size, keyring, options);
        if made.is_err() {
            // No half-made image is left looking like a volume.
            let _ = std::fs::remove_file(path);
        }
        made
    }

    /// Opens the volume at `path` with any keyring that unwraps one of its key slots, locking
    /// the image; runs journal recovery before anything is served.
    ///
    /// **Give it strict keys, never a KMS discovery keyring**: the header is authenticated by
    /// the key it wraps, so a discovery keyring would open a volume substituted by whoever
    /// controls any KMS key it may call (see `docs/THREAT-MODEL.md`, Volumes).
    ///
    /// # Errors
    /// [`VolumeError::Locked`] if another process has it open; [`Error::NoUsableDataKey`] if
    /// the keyring opens no slot; [`VolumeError::HeaderInvalid`] or
    /// [`VolumeError::Malformed`] for a damaged image.
    pub fn open(path: &Path, keyring: &dyn Keyring) -> Result<Volume> {
        Volume::open_on(open_disk(path, false)?, keyring)
    }

    /// Reads the header of the volume at `path` without a key and without the lock. Nothing
    /// is authenticated: whoever can write the image chooses what this says.
    ///
    /// # Errors
    /// I/O, or an image with no header copy that parses.
    pub fn info(path: &Path) -> Result<VolumeInfo> {
        let file = std::fs::File::open(path)?;
        let mut best: Option<Header> = None;
        let mut first_err = None;
        for off in HEADER_OFFSETS {
            let mut buf = vec![0u8; HEADER_MAX];
            let n = read_full_at(&file, &mut buf, off)?;
            match Header::decode(&buf[..n]) {
                Ok((h, _, _)) if best.as_ref().is_none_or(|b| h.seq > b.seq) => best = Some(h),
                Ok(_) => {}
                Err(e) => first_err = first_err.or(Some(e)),
            }
        }
        let h = best.ok_or_else(|| vol(first_err.expect("two copies tried")))?;
        let layout = h.layout().map_err(vol)?;
        Ok(VolumeInfo {
            authenticated: false,
            id: h.volume_id,
            size: h.size,
            block_size: h.block_size,
            aead: h.aead,
            journal_slots: h.journal_slots,
            write_gen: h.write_gen,
            rekey_from_gen: (h.rekey_from_gen != 0).then_some(h.rekey_from_gen),
            rekey_cursor: h.rekey_cursor,
            header_seq: h.seq,
            generations: h
                .gens
                .iter()
                .map(|g| GenerationInfo {
                    gen: g.gen,
                    slots: g
                        .slots
                        .iter()
                        .map(|s| SlotInfo {
                            provider_id: crate::error::untrusted(s.provider_id.as_bytes()),
                            provider_info: crate::error::untrusted(&s.provider_info),
                        })
                        .collect(),
                })
                .collect(),
            image_len: layout.file_len,
            metadata_offset: layout.meta_offset,
            data_offset: layout.data_offset,
        })
    }

    /// [`Volume::create`] on any storage (the simulated disk of the crash tests).
    pub(crate) fn create_on(
        disk: Arc<dyn Disk>,
        size: u64,
        keyring: &dyn Keyring,
        options: VolumeOptions,
    ) -> Result<Volume> {
        let slots = Layout::default_slots(size, options.block_size, options.journal_bytes);
        let layout = Layout::new(size, options.block_size, slots).map_err(vol)?;
        let id = keys::new_volume_id()?;
        let (volume_key, wrapped) = keys::wrap_new(keyring, &id, 1)?;
        let key = GenKey::derive(options.aead, &id, 1, volume_key)?;
        let seal_limit = options.aead.seal_limit();
        if layout.blocks + RESERVE_STEP > seal_limit {
            return Err(Error::Misuse(format!(
                "{} blocks exceed what one key generation of {} may seal: use larger blocks",
                layout.blocks,
                options.aead.name()
            )));
        }
        disk.set_len(layout.file_len)?;
        let workers = Workers::Shared;
        write_zero_markers(&*disk, &layout, &key, &id, &workers)?;
        disk.sync()?;
        let header = Header {
            seq: 1,
            volume_id: id,
            size,
            block_size: options.block_size,
            aead: options.aead,
            journal_slots: slots,
            write_gen: 1,
            seals_reserved: layout.blocks + RESERVE_STEP,
            rekey_from_gen: 0,
            rekey_cursor: 0,
            gens: vec![GenSlots {
                gen: 1,
                slots: wrapped,
            }],
        };
        let mut state = KeyState {
            header,
            keys: vec![key],
            current_copy: 1,
        };
        write_header(&*disk, &mut state)?;
        Ok(Volume::assemble(
            disk,
            layout,
            state,
            layout.blocks,
            Journal::new(1, slots),
        ))
    }

    /// [`Volume::open`] on any storage (the simulated disk of the crash tests).
    pub(crate) fn open_on(disk: Arc<dyn Disk>, keyring: &dyn Keyring) -> Result<Volume> {
        let mut copies = Vec::new();
        let mut parse_err = None;
        for (copy, off) in HEADER_OFFSETS.into_iter().enumerate() {
            let mut buf = vec![0u8; HEADER_MAX];
            disk.read_at(&mut buf, off)?;
            match Header::decode(&buf) {
                Ok((h, body, mac)) => copies.push((copy, h, body.to_vec(), mac)),
                Err(e) => parse_err = parse_err.or(Some(e)),
            }
        }
        if copies.is_empty() {
            return Err(vol(parse_err.expect("two copies tried")));
        }
        copies.sort_by_key(|(_, h, _, _)| std::cmp::Reverse(h.seq));
        // Both copies always hold the same header except while an update is in flight, so
        // an older copy is only tried when the newer one is damaged (a torn write) or every
        // key it names refused the keyring: never after a keyring or KMS failure, which would
        // open a header that may predate acknowledged writes (and a rekey).
        let mut fallback = parse_err.is_some();
        let mut first_err = None;
        for (copy, header, body, mac) in copies {
            match unlock(&*disk, keyring, header, &body, &mac) {
                Ok(keys) => {
                    let state = KeyState {
                        header: keys.0,
                        keys: keys.1,
                        current_copy: copy,
                    };
                    return Volume::recover_and_assemble(disk, state, fallback);
                }
                Err((e, _refused @ false)) => return Err(e),
                Err((e, _)) => {
                    first_err = first_err.or(Some(e));
                    fallback = true;
                }
            }
        }
        Err(first_err.expect("one copy tried"))
    }

    /// Runs recovery and builds the volume; after a `fallback` to an older header copy the
    /// seal count starts a whole step above its reservation: the lost copy may have reserved
    /// (and a session used) one more step.
    fn recover_and_assemble(
        disk: Arc<dyn Disk>,
        state: KeyState,
        fallback: bool,
    ) -> Result<Volume> {
        let layout = state.header.layout().map_err(vol)?;
        let recovered = journal::recover(
            &*disk,
            &layout,
            state.write_key(),
            &state.keys,
            &state.header.volume_id,
        )?;
        let reserved = state.header.seals_reserved;
        let seals = if fallback {
            reserved + RESERVE_STEP
        } else {
            reserved
        };
        let slots = layout.slots;
        Ok(Volume::assemble(
            disk,
            layout,
            state,
            // Every reserved seal may have been made before a crash.
            seals,
            Journal::new(recovered.next_epoch, slots),
        ))
    }

    fn assemble(
        disk: Arc<dyn Disk>,
        layout: Layout,
        state: KeyState,
        seals: u64,
        journal: Journal,
    ) -> Volume {
        let aead = state.header.aead;
        Volume {
            disk,
            layout,
            id: state.header.volume_id,
            aead,
            gate: RwLock::new(()),
            writers: RwLock::new(()),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            journal: Mutex::new(journal),
            meta_cache: Mutex::new(HashMap::new()),
            reserved: AtomicU64::new(state.header.seals_reserved),
            state: RwLock::new(state),
            seals: AtomicU64::new(seals),
            seal_limit: aead.seal_limit(),
            failed: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            workers: Workers::Shared,
        }
    }

    /// The volume's size in bytes.
    pub fn size(&self) -> u64 {
        self.layout.size
    }

    /// The block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.layout.block_size
    }

    /// The volume ID (random, fixed at create).
    pub fn id(&self) -> [u8; 32] {
        self.id
    }

    /// The block AEAD.
    pub fn aead(&self) -> VolumeAead {
        self.aead
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.layout.size => Ok(()),
            _ => Err(vol(VolumeError::OutOfRange {
                offset,
                len,
                size: self.layout.size,
            })),
        }
    }

    fn check_failed(&self) -> Result<()> {
        if self.failed.load(Ordering::Acquire) {
            return Err(vol(VolumeError::Failed));
        }
        Ok(())
    }

    /// Runs `f`, marking the volume failed if it fails: a write that failed half-way leaves
    /// the journal in a state only recovery can sort out.
    fn or_fail<T>(&self, r: Result<T>) -> Result<T> {
        if r.is_err() {
            self.failed.store(true, Ordering::Release);
        }
        r
    }

    fn read_gate(&self) -> (RwLockReadGuard<'_, ()>, RwLockReadGuard<'_, KeyState>) {
        let g = self.gate.read().unwrap_or_else(PoisonError::into_inner);
        let s = self.state.read().unwrap_or_else(PoisonError::into_inner);
        (g, s)
    }

    /// Locks the stripes of blocks `first..first + n` (n ≤ [`STRIPES`]) in ascending stripe
    /// order, so that two multi-block requests never deadlock.
    fn lock_stripes(&self, first: u64, n: u64) -> Vec<MutexGuard<'_, ()>> {
        let mut idx: Vec<usize> = (first..first + n)
            .map(|i| (i % STRIPES as u64) as usize)
            .collect();
        idx.sort_unstable();
        idx.dedup();
        idx.into_iter().map(|s| lock(&self.stripes[s])).collect()
    }

    fn workers_for(&self, bytes: usize) -> &Workers {
        if bytes >= PARALLEL_BYTES {
            &self.workers
        } else {
            &Workers::Caller
        }
    }

    /// Reads `buf.len()` bytes at `offset`. Every block touched must authenticate.
    ///
    /// # Errors
    /// [`VolumeError::BadBlock`] (then `buf` holds zeros), [`VolumeError::OutOfRange`], I/O.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        let bs = u64::from(self.layout.block_size);
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let first = pos / bs;
            let chunk_end = ((first + CHUNK_BLOCKS) * bs).min(offset + buf.len() as u64);
            let part = &mut buf[done..done + (chunk_end - pos) as usize];
            let r = self.read_chunk(part, pos);
            if r.is_err() {
                buf.fill(0);
                return r;
            }
            done += (chunk_end - pos) as usize;
        }
        Ok(())
    }

    fn read_chunk(&self, part: &mut [u8], pos: u64) -> Result<()> {
        let bs = u64::from(self.layout.block_size);
        let first = pos / bs;
        let last = (pos + part.len() as u64 - 1) / bs;
        let n = last - first + 1;
        let (_g, st) = self.read_gate();
        self.check_failed()?;
        let _locks = self.lock_stripes(first, n);
        if pos % bs == 0 && part.len() as u64 == n * bs {
            return self.open_range(&st, first, part, None);
        }
        let mut whole = Zeroizing::new(vec![0u8; (n * bs) as usize]);
        self.open_range(&st, first, &mut whole, None)?;
        let skip = (pos - first * bs) as usize;
        part.copy_from_slice(&whole[skip..skip + part.len()]);
        Ok(())
    }

    /// Opens blocks `first..` into `out` (whole blocks); the caller holds their stripes. With
    /// `report`, failures are counted there instead of failing the call.
    fn open_range(
        &self,
        st: &KeyState,
        first: u64,
        out: &mut [u8],
        report: Option<&mut CheckReport>,
    ) -> Result<()> {
        let bs = self.layout.block_size as usize;
        let n = out.len() / bs;
        let out_len = out.len();
        // Latest versions still in the journal.
        let pending: Vec<Option<Pending>> = {
            let j = lock(&self.journal);
            (0..n as u64)
                .map(|k| j.lookup(first + k).cloned())
                .collect()
        };
        let mut entries = vec![0u8; n * ENTRY_LEN];
        let mut sealed = vec![0u8; n * bs];
        let home: Vec<usize> = (0..n).filter(|&k| pending[k].is_none()).collect();
        if let (Some(&lo), Some(&hi)) = (home.first(), home.last()) {
            let span = lo..hi + 1;
            self.read_entries(
                first + lo as u64,
                &mut entries[span.start * ENTRY_LEN..span.end * ENTRY_LEN],
            )?;
            let data_lo = home
                .iter()
                .copied()
                .find(|&k| entry_at(&entries, k).kind == KIND_DATA);
            let data_hi = home
                .iter()
                .rev()
                .copied()
                .find(|&k| entry_at(&entries, k).kind == KIND_DATA);
            if let (Some(lo), Some(hi)) = (data_lo, data_hi) {
                self.disk.read_at(
                    &mut sealed[lo * bs..(hi + 1) * bs],
                    self.layout.data_block_offset(first + lo as u64),
                )?;
            }
        }
        struct Job<'a> {
            index: u64,
            entry: Entry,
            sealed: &'a [u8],
            out: &'a mut [u8],
            ok: bool,
        }
        let mut jobs: Vec<Job<'_>> = out
            .chunks_mut(bs)
            .zip(sealed.chunks(bs))
            .enumerate()
            .map(|(k, (o, s))| match &pending[k] {
                Some(p) => Job {
                    index: first + k as u64,
                    entry: p.entry,
                    sealed: p.sealed(bs),
                    out: o,
                    ok: false,
                },
                None => Job {
                    index: first + k as u64,
                    entry: entry_at(&entries, k),
                    sealed: s,
                    out: o,
                    ok: false,
                },
            })
            .collect();
        let id = self.id;
        let block_size = self.layout.block_size;
        self.workers_for(out_len).each(&mut jobs, |_, job| {
            job.ok = match st.key(job.entry.gen) {
                Some(key) => {
                    key.open_block(&id, block_size, job.index, &job.entry, job.sealed, job.out)
                }
                None => {
                    job.out.fill(0);
                    false
                }
            };
            Ok(())
        })?;
        match report {
            Some(r) => {
                for job in &jobs {
                    r.blocks += 1;
                    if !job.ok {
                        r.bad_count += 1;
                        if r.bad.len() < CHECK_LIST_MAX {
                            r.bad.push(job.index);
                        }
                    } else if job.entry.kind == KIND_DATA {
                        r.data_blocks += 1;
                    } else {
                        r.zero_blocks += 1;
                    }
                }
                Ok(())
            }
            None => match jobs.iter().find(|j| !j.ok) {
                Some(bad) => {
                    let index = bad.index;
                    drop(jobs);
                    out.fill(0);
                    Err(vol(VolumeError::BadBlock { index }))
                }
                None => Ok(()),
            },
        }
    }

    /// Reads the home entries of blocks `first..` into `out`, through the page cache. The
    /// caller holds the gate shared (no checkpoint runs) and the blocks' stripes.
    fn read_entries(&self, first: u64, out: &mut [u8]) -> Result<()> {
        let meta_len = self.layout.blocks * ENTRY_LEN as u64;
        let start = first * ENTRY_LEN as u64;
        let mut done = 0usize;
        while done < out.len() {
            let at = start + done as u64;
            let page = at / META_PAGE;
            let cached = lock(&self.meta_cache).get(&page).cloned();
            let bytes = match cached {
                Some(b) => b,
                None => {
                    let off = page * META_PAGE;
                    let mut b = vec![0u8; META_PAGE.min(meta_len - off) as usize];
                    self.disk.read_at(&mut b, self.layout.meta_offset + off)?;
                    let b: Arc<[u8]> = b.into();
                    let mut c = lock(&self.meta_cache);
                    if c.len() >= META_PAGES_MAX {
                        c.clear();
                    }
                    c.insert(page, b.clone());
                    b
                }
            };
            let in_page = (at - page * META_PAGE) as usize;
            let n = (bytes.len() - in_page).min(out.len() - done);
            out[done..done + n].copy_from_slice(&bytes[in_page..in_page + n]);
            done += n;
        }
        Ok(())
    }

    /// Writes `data` at `offset`: whole blocks are sealed afresh, partial ones are
    /// read-modify-written under the block's lock. Durable after [`Volume::flush`].
    ///
    /// # Errors
    /// [`VolumeError::OutOfRange`], [`VolumeError::SealBudget`] (rekey), a partial write
    /// into a block that does not authenticate ([`VolumeError::BadBlock`]), I/O.
    pub fn write_at(&self, data: &[u8], offset: u64) -> Result<()> {
        self.check_range(offset, data.len() as u64)?;
        self.write_range(offset, data.len() as u64, Some(data))
    }

    /// Makes `len` bytes at `offset` read as zeros: whole blocks become authenticated zero
    /// markers (their data is no longer read), partial ones are written with zeros. Also TRIM.
    ///
    /// # Errors
    /// As [`Volume::write_at`].
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.check_range(offset, len)?;
        self.write_range(offset, len, None)
    }

    fn write_range(&self, offset: u64, len: u64, data: Option<&[u8]>) -> Result<()> {
        let _writing = self.writers.read().unwrap_or_else(PoisonError::into_inner);
        let bs = u64::from(self.layout.block_size);
        let chunk = CHUNK_BLOCKS.min(u64::from(self.layout.slots));
        let mut done = 0u64;
        while done < len {
            let pos = offset + done;
            let first = pos / bs;
            let end = ((first + chunk) * bs).min(offset + len);
            let part = data.map(|d| &d[done as usize..(end - offset) as usize]);
            self.retrying(|| self.write_chunk(pos, end - pos, part))?;
            done = end - offset;
        }
        Ok(())
    }

    /// Runs `step` until it needs no checkpoint or reservation first.
    fn retrying(&self, mut step: impl FnMut() -> Result<(), Retry>) -> Result<()> {
        loop {
            match step() {
                Ok(()) => return Ok(()),
                Err(Retry::JournalFull) => self.flush()?,
                Err(Retry::Reserve) => self.reserve_seals()?,
                Err(Retry::Fail(e)) => return Err(e),
            }
        }
    }

    fn write_chunk(&self, pos: u64, len: u64, data: Option<&[u8]>) -> Result<(), Retry> {
        let bs = u64::from(self.layout.block_size);
        let first = pos / bs;
        let last = (pos + len - 1) / bs;
        let n = last - first + 1;
        let (_g, st) = self.read_gate();
        self.check_failed()?;
        let _locks = self.lock_stripes(first, n);
        let head = pos % bs != 0;
        let tail = (pos + len) % bs != 0;
        let whole = !head && !tail;
        if whole {
            // Whole blocks: sealed from the caller's buffer, no copy.
            let blocks: Vec<Block<'_>> = match data {
                None => vec![Block::Zero; n as usize],
                Some(d) => d.chunks(bs as usize).map(Block::Data).collect(),
            };
            return self.commit(&st, first, &blocks);
        }
        let mut plain = Zeroizing::new(vec![0u8; (n * bs) as usize]);
        if head {
            self.open_range(&st, first, &mut plain[..bs as usize], None)?;
        }
        if tail && (n > 1 || !head) {
            let at = ((n - 1) * bs) as usize;
            self.open_range(&st, last, &mut plain[at..], None)?;
        }
        let skip = (pos - first * bs) as usize;
        match data {
            Some(d) => plain[skip..skip + d.len()].copy_from_slice(d),
            None => plain[skip..skip + len as usize].fill(0),
        }
        let blocks: Vec<Block<'_>> = plain.chunks(bs as usize).map(Block::Data).collect();
        self.commit(&st, first, &blocks)
    }

    /// Seals `blocks` (from index `first`) under the write generation and journals them. The
    /// caller holds the gate shared and the blocks' stripes.
    fn commit(&self, st: &KeyState, first: u64, blocks: &[Block<'_>]) -> Result<(), Retry> {
        let count = blocks.iter().filter(|b| !matches!(b, Block::Skip)).count();
        if count == 0 {
            return Ok(());
        }
        let n = count as u64;
        // Count the seals before making them: the header must already cover them.
        let before = self.seals.fetch_add(n, Ordering::AcqRel);
        if before + n > self.seal_limit {
            self.seals.fetch_sub(n, Ordering::AcqRel);
            return Err(Retry::Fail(vol(VolumeError::SealBudget {
                gen: st.header.write_gen,
            })));
        }
        if before + n > self.reserved.load(Ordering::Acquire) {
            self.seals.fetch_sub(n, Ordering::AcqRel);
            return Err(Retry::Reserve);
        }
        // Slots before sealing, so that a full journal wastes no work. A slot taken but never
        // published (a seal that failed) keeps an older epoch's record, which recovery ignores.
        let slot = match lock(&self.journal).take(n as u32) {
            Some(s) => s,
            None => {
                self.seals.fetch_sub(n, Ordering::AcqRel);
                return Err(Retry::JournalFull);
            }
        };
        let bs = self.layout.block_size as usize;
        let key = st.write_key();
        struct Job<'a> {
            index: u64,
            plain: Option<&'a [u8]>,
            out: &'a mut [u8],
            entry: Option<Entry>,
        }
        let data_count = blocks
            .iter()
            .filter(|b| matches!(b, Block::Data(_)))
            .count();
        let mut sealed = vec![0u8; data_count * bs];
        let mut outs = sealed.chunks_mut(bs);
        let mut jobs: Vec<Job<'_>> = Vec::with_capacity(count);
        for (k, b) in blocks.iter().enumerate() {
            let index = first + k as u64;
            match b {
                Block::Data(p) => jobs.push(Job {
                    index,
                    plain: Some(*p),
                    out: outs.next().expect("one buffer per data block"),
                    entry: None,
                }),
                Block::Zero => jobs.push(Job {
                    index,
                    plain: None,
                    out: &mut [],
                    entry: None,
                }),
                Block::Skip => {}
            }
        }
        let id = self.id;
        let block_size = self.layout.block_size;
        self.workers_for(data_count * bs)
            .each(&mut jobs, |_, job| {
                job.entry = Some(key.seal_block(&id, block_size, job.index, job.plain, job.out)?);
                Ok(())
            })?;
        let done: Vec<(u64, Entry, bool)> = jobs
            .into_iter()
            .map(|j| (j.index, j.entry.expect("sealed"), j.plain.is_some()))
            .collect();
        // "Data home": a block whose home entry on disk is a zero marker has no committed data
        // at home (the last committed epoch, applied, left that marker), so its sealed data goes
        // straight home now and the journal keeps only its entry. Until a commit names it, the
        // marker says zeros, its old content (docs/VOLUME-FORMAT.md, "Data home").
        let home = self.write_home(first, blocks.len(), &done, &sealed)?;
        let sealed: Arc<[u8]> = sealed.into();
        // Contiguous slots, data blocks first. Nothing else is written yet: the checkpoint
        // writes the epoch's slots from memory (an epoch not committed is never recovered, so
        // writing them earlier would make no write survive a crash that does not survive now).
        let (mut data_slot, mut zero_slot) = (slot, slot + data_count as u32);
        let mut data_at = 0;
        let mut pendings = Vec::with_capacity(count);
        for (index, entry, is_data) in done {
            let p = if is_data {
                data_slot += 1;
                data_at += bs;
                Pending {
                    slot: data_slot - 1,
                    entry,
                    sealed: Some((sealed.clone(), data_at - bs)),
                    home: home[(index - first) as usize],
                }
            } else {
                zero_slot += 1;
                Pending {
                    slot: zero_slot - 1,
                    entry,
                    sealed: None,
                    home: false,
                }
            };
            pendings.push((index, p));
        }
        let mut j = lock(&self.journal);
        for (index, p) in pendings {
            j.publish(index, p);
        }
        Ok(())
    }

    /// Writes the sealed data of the data blocks among `done` (from index `first`, `n` blocks)
    /// whose home entry is a zero marker to their home, in one `pwrite` per contiguous run;
    /// says which, by offset from `first`. A failed write fails the volume: a pending "data
    /// home" version of the block may have been overwritten in part.
    fn write_home(
        &self,
        first: u64,
        n: usize,
        done: &[(u64, Entry, bool)],
        sealed: &[u8],
    ) -> Result<Vec<bool>, Retry> {
        let bs = self.layout.block_size as usize;
        let mut home = vec![false; n];
        if sealed.is_empty() {
            return Ok(home);
        }
        let mut entries = vec![0u8; n * ENTRY_LEN];
        self.read_entries(first, &mut entries)?;
        // (index offset, position in `sealed`) of each data block going home, in order.
        let mut go = Vec::new();
        let mut at = 0;
        for &(index, _, is_data) in done {
            if !is_data {
                continue;
            }
            let k = (index - first) as usize;
            if entry_at(&entries, k).kind != KIND_DATA {
                home[k] = true;
                go.push((k, at));
            }
            at += bs;
        }
        let mut i = 0;
        while i < go.len() {
            let mut j = i + 1;
            while j < go.len() && go[j].0 == go[j - 1].0 + 1 && go[j].1 == go[j - 1].1 + bs {
                j += 1;
            }
            let (k, from) = go[i];
            let to = go[j - 1].1 + bs;
            let r = self.disk.write_at(
                &sealed[from..to],
                self.layout.data_block_offset(first + k as u64),
            );
            self.or_fail(r.map_err(Error::from))?;
            i = j;
        }
        Ok(home)
    }

    /// Makes every write answered before this call durable (a checkpoint: three fdatasyncs
    /// when there were writes, none otherwise).
    ///
    /// # Errors
    /// I/O: the flush failed and the volume must be reopened ([`VolumeError::Failed`]).
    pub fn flush(&self) -> Result<()> {
        let _g = self.gate.write().unwrap_or_else(PoisonError::into_inner);
        self.check_failed()?;
        let st = self.state.read().unwrap_or_else(PoisonError::into_inner);
        self.checkpoint_locked(&st)
    }

    /// A checkpoint; the caller holds the gate exclusively.
    fn checkpoint_locked(&self, st: &KeyState) -> Result<()> {
        let mut j = lock(&self.journal);
        if !j.is_empty() {
            lock(&self.meta_cache).clear();
        }
        let r = journal::checkpoint(&mut j, &*self.disk, &self.layout, st.write_key(), &self.id);
        self.or_fail(r)
    }

    /// Runs `change` on the header under the exclusive gate, after a checkpoint, then writes
    /// both header copies (each synced). A change that fails, or leaves a header that cannot
    /// be encoded (over 64 KiB, too many slots), is undone before any I/O and does not fail
    /// the volume.
    fn update_header<T>(
        &self,
        change: impl FnOnce(&mut KeyState, &Volume) -> Result<T>,
    ) -> Result<T> {
        let _g = self.gate.write().unwrap_or_else(PoisonError::into_inner);
        self.check_failed()?;
        let mut st = self.state.write().unwrap_or_else(PoisonError::into_inner);
        self.checkpoint_locked(&st)?;
        let saved = (
            st.header.clone(),
            st.keys.len(),
            self.seals.load(Ordering::Acquire),
        );
        let out = change(&mut st, self).and_then(|out| check_header_fits(&st.header).map(|_| out));
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                st.header = saved.0;
                st.keys.truncate(saved.1);
                self.seals.store(saved.2, Ordering::Release);
                return Err(e);
            }
        };
        let r = write_header(&*self.disk, &mut st);
        self.or_fail(r)?;
        self.reserved
            .store(st.header.seals_reserved, Ordering::Release);
        Ok(out)
    }

    fn reserve_seals(&self) -> Result<()> {
        self.update_header(|st, v| {
            let seals = v.seals.load(Ordering::Acquire);
            st.header.seals_reserved = seals.max(st.header.seals_reserved) + RESERVE_STEP;
            Ok(())
        })
    }

    /// Wraps the volume key (every generation's, during a rekey) with `keyring` too (KMS
    /// Encrypt for a KMS keyring) and adds the slots. Rewrites the header only.
    ///
    /// # Errors
    /// A keyring failure, a header that would pass 64 KiB or 255 slots, I/O.
    pub fn add_key(&self, keyring: &dyn Keyring) -> Result<()> {
        self.update_header(|st, v| {
            let mut added = Vec::new();
            for g in &st.header.gens {
                let key = st.key(g.gen).expect("every generation's key is held");
                added.push(keys::wrap_existing(
                    keyring,
                    &v.id,
                    g.gen,
                    key.volume_key(),
                )?);
            }
            for (g, slots) in st.header.gens.iter_mut().zip(added) {
                g.slots.extend(slots);
            }
            check_header_fits(&st.header)
        })
    }

    /// Removes every key slot that `keyring` unwraps; returns how many. Rewrites the header
    /// only, both copies (so the older copy keeps no removed slot). **This does not revoke**:
    /// whoever unwrapped the volume key once keeps it; use
    /// [`Volume::rekey`] to revoke (see `docs/THREAT-MODEL.md`).
    ///
    /// # Errors
    /// [`VolumeError::NoSuchKeySlot`] when it unwraps none; [`VolumeError::LastKeySlot`] when
    /// a generation would be left without a slot.
    pub fn remove_key(&self, keyring: &dyn Keyring) -> Result<usize> {
        self.update_header(|st, v| {
            let mut removed = 0;
            let mut kept_all = Vec::new();
            for g in &st.header.gens {
                let key = st.key(g.gen).expect("every generation's key is held");
                let mut kept = Vec::new();
                for slot in &g.slots {
                    let opens =
                        keys::unwrap(keyring, &v.id, g.gen, std::slice::from_ref(slot), |k| {
                            k.as_bytes() == key.volume_key().as_bytes()
                        })
                        .is_ok();
                    if opens {
                        removed += 1;
                    } else {
                        kept.push(slot.clone());
                    }
                }
                if kept.is_empty() {
                    return Err(vol(VolumeError::LastKeySlot));
                }
                kept_all.push(kept);
            }
            if removed == 0 {
                return Err(vol(VolumeError::NoSuchKeySlot));
            }
            for (g, kept) in st.header.gens.iter_mut().zip(kept_all) {
                g.slots = kept;
            }
            Ok(removed)
        })
    }

    /// Re-seals every block under a fresh volume key made by `keyring` (KMS GenerateDataKey),
    /// whose slots are then the only ones: revocation of every other key. The volume stays
    /// usable meanwhile; a crash or an error leaves it resumable: open it (with a key that
    /// opens both generations) and call `rekey` again, which continues where it stopped.
    /// `progress(done, total)` is called as blocks go.
    ///
    /// # Errors
    /// A keyring failure, a block that does not authenticate, I/O.
    pub fn rekey(&self, keyring: &dyn Keyring, progress: &dyn Fn(u64, u64)) -> Result<()> {
        self.rekey_steps(keyring, progress, None)
    }

    /// [`Volume::rekey`], stopping after `max_blocks` blocks when given (tests of resumption).
    pub(crate) fn rekey_steps(
        &self,
        keyring: &dyn Keyring,
        progress: &dyn Fn(u64, u64),
        max_blocks: Option<u64>,
    ) -> Result<()> {
        let resuming = self
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .header
            .rekey_from_gen
            != 0;
        if !resuming {
            self.update_header(|st, v| {
                // Checked again under the gate: another rekey may have started since.
                if st.header.rekey_from_gen != 0 {
                    return Err(vol(VolumeError::RekeyInProgress));
                }
                let new_gen = st.header.write_gen + 1;
                if new_gen > layout::MAX_GEN {
                    return Err(Error::Misuse(
                        "the volume has used every key generation".into(),
                    ));
                }
                let (volume_key, wrapped) = keys::wrap_new(keyring, &v.id, new_gen)?;
                let key = GenKey::derive(v.aead, &v.id, new_gen, volume_key)?;
                st.header.rekey_from_gen = st.header.write_gen;
                st.header.rekey_cursor = 0;
                st.header.write_gen = new_gen;
                st.header.seals_reserved = RESERVE_STEP;
                st.header.gens.push(GenSlots {
                    gen: new_gen,
                    slots: wrapped,
                });
                st.keys.push(key);
                v.seals.store(0, Ordering::Release);
                Ok(())
            })?;
        }
        let (from, mut cursor) = {
            let st = self.state.read().unwrap_or_else(PoisonError::into_inner);
            (st.header.rekey_from_gen, st.header.rekey_cursor)
        };
        let total = self.layout.blocks;
        let chunk = CHUNK_BLOCKS.min(u64::from(self.layout.slots));
        let mut since = 0u64;
        let mut budget = max_blocks;
        progress(cursor, total);
        while cursor < total {
            let n = chunk.min(total - cursor);
            let n = match budget {
                Some(0) => return Ok(()),
                Some(b) => n.min(b),
                None => n,
            };
            self.retrying(|| self.rekey_chunk(from, cursor, n))?;
            cursor += n;
            since += n;
            if let Some(b) = budget.as_mut() {
                *b -= n;
            }
            progress(cursor, total);
            if since >= REKEY_CURSOR_EVERY || budget == Some(0) {
                since = 0;
                let at = cursor;
                self.update_header(|st, _| {
                    st.header.rekey_cursor = at;
                    Ok(())
                })?;
            }
        }
        // Every block is under the new generation: drop the old one.
        self.update_header(|st, _| {
            let old = st.header.rekey_from_gen;
            st.header.gens.retain(|g| g.gen != old);
            st.keys.retain(|k| k.gen != old);
            st.header.rekey_from_gen = 0;
            st.header.rekey_cursor = 0;
            Ok(())
        })
    }

    /// Re-seals the blocks of `first..first + n` still under generation `from`.
    fn rekey_chunk(&self, from: u32, first: u64, n: u64) -> Result<(), Retry> {
        let bs = self.layout.block_size as usize;
        let (_g, st) = self.read_gate();
        self.check_failed()?;
        let _locks = self.lock_stripes(first, n);
        let gens: Vec<(u32, u8)> = {
            let mut entries = vec![0u8; n as usize * ENTRY_LEN];
            self.disk
                .read_at(&mut entries, self.layout.entry_offset(first))
                .map_err(Error::from)?;
            let j = lock(&self.journal);
            (0..n as usize)
                .map(|k| {
                    let e = j
                        .lookup(first + k as u64)
                        .map_or_else(|| entry_at(&entries, k), |p| p.entry);
                    (e.gen, e.kind)
                })
                .collect()
        };
        if gens.iter().all(|(g, _)| *g != from) {
            return Ok(());
        }
        let mut plain = Zeroizing::new(vec![0u8; n as usize * bs]);
        self.open_range(&st, first, &mut plain, None)?;
        let blocks: Vec<Block<'_>> = plain
            .chunks(bs)
            .zip(&gens)
            .map(|(p, (g, kind))| match (*g == from, *kind == KIND_DATA) {
                (false, _) => Block::Skip,
                (true, true) => Block::Data(p),
                (true, false) => Block::Zero,
            })
            .collect();
        self.commit(&st, first, &blocks)
    }

    /// Reads and authenticates every block; lists the ones that fail. `progress(done, total)`
    /// is called as blocks go.
    ///
    /// # Errors
    /// I/O only: bad blocks are in the report.
    pub fn check(&self, progress: &dyn Fn(u64, u64)) -> Result<CheckReport> {
        let mut report = CheckReport::default();
        let total = self.layout.blocks;
        let bs = self.layout.block_size as usize;
        let mut buf = Zeroizing::new(vec![0u8; CHUNK_BLOCKS as usize * bs]);
        let mut first = 0;
        while first < total {
            let n = CHUNK_BLOCKS.min(total - first);
            {
                let (_g, st) = self.read_gate();
                self.check_failed()?;
                let _locks = self.lock_stripes(first, n);
                self.open_range(&st, first, &mut buf[..n as usize * bs], Some(&mut report))?;
            }
            first += n;
            progress(first, total);
        }
        Ok(report)
    }

    /// Holds every writer off until the guard is dropped (reads go on): a snapshot's point in
    /// time.
    pub(crate) fn hold_writers(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.writers.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Flushes and unlocks the volume.
    ///
    /// # Errors
    /// When the final flush fails: then not every write may have survived.
    pub fn close(self) -> Result<()> {
        let r = self.finish();
        self.closed.store(true, Ordering::Release);
        r
    }

    /// The final flush, then the header's reservation cut back to the seals made: otherwise
    /// every session that writes would burn a whole [`RESERVE_STEP`] of the generation's
    /// budget (2^32 seals for AES-GCM: some 4096 sessions).
    fn finish(&self) -> Result<()> {
        self.flush()?;
        let made = self.seals.load(Ordering::Acquire);
        if made == self.reserved.load(Ordering::Acquire) {
            return Ok(());
        }
        self.update_header(|st, v| {
            // Under the exclusive gate no seal is in flight: the count is exact.
            st.header.seals_reserved = v.seals.load(Ordering::Acquire);
            Ok(())
        })
    }

    /// Drops the volume without flushing, as a crash would (tests).
    #[cfg(test)]
    pub(crate) fn abandon(self) {
        self.closed.store(true, Ordering::Release);
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        if !self.closed.load(Ordering::Acquire) && !self.failed.load(Ordering::Acquire) {
            let _ = self.finish();
        }
    }
}

impl BlockDevice for Volume {
    fn size(&self) -> u64 {
        self.layout.size
    }

    fn block_size(&self) -> u32 {
        self.layout.block_size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        Volume::read_at(self, buf, offset).map_err(io::Error::from)
    }

    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        Volume::write_at(self, data, offset).map_err(write_error)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        Volume::write_zeroes(self, offset, len).map_err(write_error)
    }

    fn flush(&self) -> io::Result<()> {
        Volume::flush(self).map_err(io::Error::from)
    }
}

/// A write past the end is "no space" (ENOSPC), as the trait says.
fn write_error(e: Error) -> io::Error {
    match e {
        Error::Volume(VolumeError::OutOfRange { .. }) => {
            io::Error::new(io::ErrorKind::StorageFull, e)
        }
        e => io::Error::from(e),
    }
}

fn entry_at(entries: &[u8], k: usize) -> Entry {
    Entry::decode(
        entries[k * ENTRY_LEN..(k + 1) * ENTRY_LEN]
            .try_into()
            .expect("32-byte entry"),
    )
}

fn check_header_fits(h: &Header) -> Result<()> {
    h.encode_body().map(|_| ()).map_err(vol)
}

/// Writes the header to both copies, the one not holding the current header first, each
/// with the next sequence number and synced: the two differ only while this runs, so an open
/// that falls back to the older copy (the newer one torn) never finds an older header there.
fn write_header(disk: &dyn Disk, st: &mut KeyState) -> Result<()> {
    for _ in 0..2 {
        st.header.seq += 1;
        let mut bytes = st.header.encode_body().map_err(vol)?;
        let mac = st.write_key().header_mac(&bytes);
        bytes.extend_from_slice(&mac);
        // The whole region: a longer header's tail (a removed slot, a dropped generation's
        // slots) must not stay behind in its slack.
        bytes.resize(HEADER_MAX, 0);
        let copy = 1 - st.current_copy;
        disk.write_at(&bytes, HEADER_OFFSETS[copy])?;
        disk.sync()?;
        st.current_copy = copy;
    }
    Ok(())
}

/// Unwraps the keys a header copy names and checks its MAC: the write generation's key must
/// verify it; during a rekey the other generation is unwrapped too. On failure, whether it
/// is a verdict on this copy (it does not parse, its MAC fails, or every slot refused the
/// keyring), the only failures after which an older copy may be tried.
fn unlock(
    disk: &dyn Disk,
    keyring: &dyn Keyring,
    header: Header,
    body: &[u8],
    mac: &[u8; layout::MAC_LEN],
) -> Result<(Header, Vec<GenKey>), (Error, bool)> {
    let layout = header.layout().map_err(|e| (vol(e), true))?;
    let id = header.volume_id;
    let write = header
        .gens
        .iter()
        .find(|g| g.gen == header.write_gen)
        .expect("checked by decode");
    let mut write_key = None;
    keys::unwrap_verdict(
        keyring,
        &id,
        write.gen,
        &write.slots,
        |k| match GenKey::derive(header.aead, &id, write.gen, k.duplicate()) {
            Ok(gk) if gk.header_verifies(body, mac) => {
                write_key = Some(gk);
                true
            }
            _ => false,
        },
    )?;
    let mut keys = vec![write_key.expect("accepted")];
    // The MAC verified: this copy is authentic, and no failure below is a reason to try another.
    let fail = |e: Error| (e, false);
    for g in header.gens.iter().filter(|g| g.gen != header.write_gen) {
        // Authenticated by the header's MAC: any key the slot unwraps is the generation's.
        let k = keys::unwrap(keyring, &id, g.gen, &g.slots, |_| true).map_err(fail)?;
        keys.push(GenKey::derive(header.aead, &id, g.gen, k).map_err(fail)?);
    }
    if disk.len().map_err(|e| fail(e.into()))? < layout.file_len {
        return Err(fail(vol(VolumeError::Malformed(
            "the image is shorter than its layout: it was truncated".into(),
        ))));
    }
    Ok((header, keys))
}

/// Seals a zero marker for every block into the metadata area (at create).
fn write_zero_markers(
    disk: &dyn Disk,
    layout: &Layout,
    key: &GenKey,
    id: &[u8; 32],
    workers: &Workers,
) -> Result<()> {
    const RUN: u64 = 64 * 1024;
    let mut first = 0;
    while first < layout.blocks {
        let n = RUN.min(layout.blocks - first);
        let mut buf = vec![0u8; n as usize * ENTRY_LEN];
        let mut parts: Vec<&mut [u8]> = buf.chunks_mut(ENTRY_LEN * 1024).collect();
        workers.each(&mut parts, |p, part| {
            for (k, e) in part.chunks_mut(ENTRY_LEN).enumerate() {
                let index = first + (p * 1024 + k) as u64;
                let entry = key.seal_block(id, layout.block_size, index, None, &mut [])?;
                e.copy_from_slice(&entry.encode());
            }
            Ok(())
        })?;
        disk.write_at(&buf, layout.entry_offset(first))?;
        first += n;
    }
    Ok(())
}

fn read_full_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Holds at compile time: a volume is shared across threads.
const _: () = {
    fn send_sync<T: Send + Sync>() {}
    let _ = send_sync::<Volume>;
};

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::RawAesKeyring;
    use std::sync::atomic::AtomicUsize;

    /// Storage in memory whose writes can be made to fail after a count (a crash mid-way).
    #[derive(Debug, Default)]
    pub(crate) struct MemDisk {
        bytes: Mutex<Vec<u8>>,
        /// Writes still allowed; `usize::MAX` for no limit.
        writes_left: AtomicUsize,
    }

    impl MemDisk {
        pub(crate) fn new() -> Arc<MemDisk> {
            Arc::new(MemDisk {
                bytes: Mutex::new(Vec::new()),
                writes_left: AtomicUsize::new(usize::MAX),
            })
        }
        pub(crate) fn fail_after(&self, writes: usize) {
            self.writes_left.store(writes, Ordering::SeqCst);
        }
        pub(crate) fn heal(&self) {
            self.writes_left.store(usize::MAX, Ordering::SeqCst);
        }
        pub(crate) fn poke(&self, offset: u64, data: &[u8]) {
            let mut b = lock(&self.bytes);
            b[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        }
        fn peek(&self, offset: u64, len: usize) -> Vec<u8> {
            lock(&self.bytes)[offset as usize..offset as usize + len].to_vec()
        }
    }

    impl Disk for MemDisk {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            let b = lock(&self.bytes);
            for (k, x) in buf.iter_mut().enumerate() {
                *x = b.get(offset as usize + k).copied().unwrap_or(0);
            }
            Ok(())
        }
        fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
            let left = self.writes_left.load(Ordering::SeqCst);
            if left == 0 {
                return Err(io::Error::other("simulated crash"));
            }
            if left != usize::MAX {
                self.writes_left.store(left - 1, Ordering::SeqCst);
            }
            let mut b = lock(&self.bytes);
            let end = offset as usize + data.len();
            if b.len() < end {
                b.resize(end, 0);
            }
            b[offset as usize..end].copy_from_slice(data);
            Ok(())
        }
        fn sync(&self) -> io::Result<()> {
            Ok(())
        }
        fn len(&self) -> io::Result<u64> {
            Ok(lock(&self.bytes).len() as u64)
        }
        fn set_len(&self, len: u64) -> io::Result<()> {
            lock(&self.bytes).resize(len as usize, 0);
            Ok(())
        }
    }

    fn ring() -> RawAesKeyring {
        RawAesKeyring::new("test", "vol", &[0x11; 32]).unwrap()
    }

    fn small(disk: &Arc<MemDisk>) -> Volume {
        let options = VolumeOptions::default().journal_bytes(64 * 4096);
        Volume::create_on(disk.clone(), 64 * 4096, &ring(), options).unwrap()
    }

    fn block(v: &Volume, index: u64) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; 4096];
        v.read_at(&mut buf, index * 4096)?;
        Ok(buf)
    }

    fn reopen(disk: &Arc<MemDisk>) -> Volume {
        disk.heal();
        Volume::open_on(disk.clone(), &ring()).unwrap()
    }

    fn recover_now(disk: &Arc<MemDisk>) -> journal::Recovered {
        disk.heal();
        let v = Volume::open_on(disk.clone(), &ring()).unwrap();
        let st = v.state.read().unwrap();
        let r = journal::recover(&**disk, &v.layout, st.write_key(), &st.keys, &v.id).unwrap();
        drop(st);
        v.abandon();
        r
    }

    #[test]
    fn a_committed_epoch_not_yet_applied_is_applied_at_open_latest_version_only() {
        let disk = MemDisk::new();
        let v = small(&disk);
        // Written once before, so that these writes go through journal slots (not data home).
        v.write_at(&[9; 2 * 4096], 5 * 4096).unwrap();
        v.flush().unwrap();
        let before = disk.peek(
            Layout::new(64 * 4096, 4096, 64)
                .unwrap()
                .data_block_offset(5),
            4096,
        );
        v.write_at(&[1; 4096], 5 * 4096).unwrap();
        v.write_at(&[2; 4096], 5 * 4096).unwrap();
        v.write_at(&[3; 4096], 6 * 4096).unwrap();
        // The checkpoint writes the slots (one run), the records and the superblock, then
        // fails before anything reaches home.
        disk.fail_after(3);
        assert!(v.flush().is_err());
        assert!(matches!(v.flush(), Err(Error::Volume(VolumeError::Failed))));
        v.abandon();
        let home = |i: u64| {
            disk.peek(
                Layout::new(64 * 4096, 4096, 64)
                    .unwrap()
                    .data_block_offset(i),
                4096,
            )
        };
        assert_eq!(home(5), before, "nothing applied yet");
        let v = reopen(&disk);
        assert_eq!(block(&v, 5).unwrap(), vec![2; 4096], "latest version only");
        assert_eq!(block(&v, 6).unwrap(), vec![3; 4096]);
        assert_eq!(block(&v, 7).unwrap(), vec![0; 4096]);
        v.abandon();
        // Applying again is harmless (idempotent): reopen once more.
        let r = recover_now(&disk);
        assert_eq!((r.applied, r.skipped), (2, 0));
        let v = reopen(&disk);
        assert_eq!(block(&v, 5).unwrap(), vec![2; 4096]);
    }

    #[test]
    fn a_first_write_goes_home_at_once_and_is_old_or_new_at_every_checkpoint_step() {
        let l = Layout::new(64 * 4096, 4096, 64).unwrap();
        // Checkpoint writes allowed before the cut: the records, the superblock (the commit),
        // then the entries' apply.
        for allowed in 0..3 {
            let disk = MemDisk::new();
            let v = small(&disk);
            let marker = disk.peek(l.entry_offset(5), ENTRY_LEN);
            v.write_at(&[7; 2 * 4096], 5 * 4096).unwrap();
            // The sealed data is home already, its entry still the marker; no slot data.
            assert_ne!(disk.peek(l.data_block_offset(5), 4096), vec![0; 4096]);
            assert_eq!(disk.peek(l.entry_offset(5), ENTRY_LEN), marker);
            assert_eq!(
                block(&v, 5).unwrap(),
                vec![7; 4096],
                "reads see the pending version"
            );
            // A second write in the same epoch takes the same path.
            v.write_at(&[8; 4096], 5 * 4096).unwrap();
            disk.fail_after(allowed);
            assert!(v.flush().is_err());
            v.abandon();
            assert_eq!(
                disk.peek(l.slot_data_offset(0), 3 * 4096),
                vec![0; 3 * 4096],
                "the journal holds no copy of first writes"
            );
            let v = reopen(&disk);
            let (b5, b6) = (block(&v, 5).unwrap(), block(&v, 6).unwrap());
            if allowed < 2 {
                // Not committed: the old content (zeros).
                assert_eq!((b5[0], b6[0]), (0, 0));
            } else {
                // Committed: the newest versions, from their home data.
                assert_eq!((b5, b6), (vec![8; 4096], vec![7; 4096]));
            }
            assert_eq!(v.check(&|_, _| {}).unwrap().bad_count, 0);
            // A trimmed block is a marker again: the next write goes home, the old data stays
            // unread until that write is committed.
            v.write_zeroes(5 * 4096, 4096).unwrap();
            v.flush().unwrap();
            v.write_at(&[3; 4096], 5 * 4096).unwrap();
            v.abandon();
            let v = reopen(&disk);
            assert_eq!(block(&v, 5).unwrap(), vec![0; 4096]);
            v.write_at(&[4; 4096], 5 * 4096).unwrap();
            v.close().unwrap();
            let v = reopen(&disk);
            assert_eq!(block(&v, 5).unwrap(), vec![4; 4096]);
        }
    }

    #[test]
    fn writes_not_committed_are_lost_and_old_content_stays() {
        let disk = MemDisk::new();
        let v = small(&disk);
        v.write_at(&[7; 4096], 0).unwrap();
        v.flush().unwrap();
        v.write_at(&[8; 4096], 0).unwrap();
        v.write_at(&[8; 4096], 4096).unwrap();
        // Slots and records are written, the superblock write fails: never committed.
        disk.fail_after(2);
        assert!(v.flush().is_err());
        v.abandon();
        let v = reopen(&disk);
        assert_eq!(block(&v, 0).unwrap(), vec![7; 4096]);
        assert_eq!(block(&v, 1).unwrap(), vec![0; 4096]);
    }

    #[test]
    fn a_reused_slot_that_does_not_open_is_skipped_and_a_digest_mismatch_skips_all() {
        let disk = MemDisk::new();
        let v = small(&disk);
        // Blocks 0..5 written once, so that the writes below go through journal slots.
        v.write_at(&[9; 5 * 4096], 0).unwrap();
        v.flush().unwrap();
        v.write_at(&[1; 4096], 0).unwrap();
        v.write_at(&[1; 4096], 4096).unwrap();
        v.flush().unwrap();
        // The next epoch's checkpoint overwrites slot 0's data, then fails before its record.
        v.write_at(&[2; 4096], 2 * 4096).unwrap();
        disk.fail_after(1);
        assert!(v.flush().is_err());
        v.abandon();
        let r = recover_now(&disk);
        assert_eq!(
            (r.applied, r.skipped),
            (1, 1),
            "slot 0 skipped, slot 1 re-applied"
        );
        let v = reopen(&disk);
        assert_eq!(
            block(&v, 0).unwrap(),
            vec![1; 4096],
            "never rolled to garbage"
        );
        assert_eq!(block(&v, 2).unwrap(), vec![9; 4096]);
        // Now a record of the last committed epoch is overwritten too: the digest no longer
        // matches, and nothing is re-applied.
        v.write_at(&[4; 4096], 4 * 4096).unwrap();
        v.flush().unwrap();
        v.write_at(&[3; 8192], 3 * 4096).unwrap();
        disk.fail_after(2);
        assert!(v.flush().is_err());
        v.abandon();
        let r = recover_now(&disk);
        assert_eq!((r.applied, r.skipped), (0, 0));
        let v = reopen(&disk);
        assert_eq!(block(&v, 0).unwrap(), vec![1; 4096]);
        assert_eq!(block(&v, 3).unwrap(), vec![9; 4096], "never flushed");
        assert_eq!(block(&v, 4).unwrap(), vec![4; 4096]);
    }

    #[test]
    fn a_full_journal_checkpoints_and_zero_markers_are_journaled_too() {
        let disk = MemDisk::new();
        let v = small(&disk);
        // 64 slots; write 200 blocks' worth in several requests.
        for round in 0..4u8 {
            v.write_at(&vec![round + 1; 50 * 4096], 0).unwrap();
        }
        v.write_zeroes(10 * 4096, 5 * 4096).unwrap();
        v.write_zeroes(20 * 4096 + 100, 10).unwrap();
        let mut expect = vec![4u8; 50 * 4096];
        expect[10 * 4096..15 * 4096].fill(0);
        expect[20 * 4096 + 100..20 * 4096 + 110].fill(0);
        let mut got = vec![0u8; 50 * 4096];
        v.read_at(&mut got, 0).unwrap();
        assert_eq!(got, expect);
        v.abandon();
        let v = reopen(&disk);
        let mut got = vec![0u8; 50 * 4096];
        v.read_at(&mut got, 0).unwrap();
        // Unflushed writes may be lost, but what was checkpointed by a full journal is kept.
        assert!(got[..4096].iter().all(|&b| b == got[0]));
        let r = v.check(&|_, _| {}).unwrap();
        assert_eq!(r.bad_count, 0);
    }

    #[test]
    fn seals_are_reserved_in_the_header_before_they_are_made_and_the_limit_holds() {
        let disk = MemDisk::new();
        let v = small(&disk);
        let made = v.seals.load(Ordering::SeqCst);
        assert_eq!(made, 64, "one zero marker per block at create");
        // Force a reservation on the next write.
        v.reserved.store(made + 1, Ordering::SeqCst);
        v.write_at(&[5; 8192], 0).unwrap();
        let reserved = v.state.read().unwrap().header.seals_reserved;
        assert!(reserved >= made + 2 + RESERVE_STEP, "{reserved}");
        v.abandon();
        let mut v = reopen(&disk);
        assert_eq!(
            v.seals.load(Ordering::SeqCst),
            reserved,
            "restarts at the reservation"
        );
        v.seal_limit = reserved + 2;
        v.write_at(&[1; 8192], 0).unwrap();
        let err = v.write_at(&[1; 4096], 0).unwrap_err();
        assert!(
            matches!(err, Error::Volume(VolumeError::SealBudget { gen: 1 })),
            "{err:?}"
        );
        assert!(err.to_string().contains("volume rekey"), "{err}");
        assert!(v.write_zeroes(0, 4096).is_err(), "zero markers count too");
        assert_eq!(block(&v, 0).unwrap(), vec![1; 4096]);
    }

    #[test]
    fn an_interrupted_rekey_resumes_after_reopen_and_the_volume_works_meanwhile() {
        let disk = MemDisk::new();
        let v = small(&disk);
        let content: Vec<u8> = (0..64 * 4096u32)
            .map(|i| (i / 4096 + i % 7) as u8)
            .collect();
        v.write_at(&content[..40 * 4096], 0).unwrap();
        v.flush().unwrap();
        let new = RawAesKeyring::new("test", "new", &[0x22; 32]).unwrap();
        // rekey needs a key that opens the old generation too, for the reopen: add it first.
        v.add_key(&new).unwrap();
        v.rekey_steps(&new, &|_, _| {}, Some(20)).unwrap();
        {
            let st = v.state.read().unwrap();
            assert_eq!((st.header.rekey_from_gen, st.header.write_gen), (1, 2));
            assert_eq!(st.header.rekey_cursor, 20);
        }
        // Usable meanwhile: reads of both generations, writes under the new one.
        v.write_at(&content[40 * 4096..], 40 * 4096).unwrap();
        v.abandon();
        let v = Volume::open_on(disk.clone(), &new).unwrap();
        let mut got = vec![0u8; 64 * 4096];
        v.read_at(&mut got, 0).unwrap();
        assert_eq!(&got[..40 * 4096], &content[..40 * 4096]);
        v.rekey(&new, &|_, _| {}).unwrap();
        {
            let st = v.state.read().unwrap();
            assert_eq!(st.header.gens.len(), 1);
            assert_eq!(st.header.rekey_from_gen, 0);
        }
        assert_eq!(v.check(&|_, _| {}).unwrap().bad_count, 0);
        v.close().unwrap();
        // The old key opens nothing now: its slot was only in generation 1.
        assert!(Volume::open_on(disk.clone(), &ring()).is_err());
        let v = Volume::open_on(disk.clone(), &new).unwrap();
        v.read_at(&mut got, 0).unwrap();
        assert_eq!(&got[..40 * 4096], &content[..40 * 4096]);
    }

    #[test]
    fn a_zeroed_or_swapped_entry_fails_only_its_block() {
        let disk = MemDisk::new();
        let v = small(&disk);
        v.write_at(&[9; 4096 * 3], 0).unwrap();
        v.flush().unwrap();
        // Another epoch, so that recovery at open does not write blocks 0..3 home again.
        v.write_at(&[9; 4096], 30 * 4096).unwrap();
        v.close().unwrap();
        let l = Layout::new(64 * 4096, 4096, 64).unwrap();
        // A never-written block's marker zeroed: an error, not zeros.
        disk.poke(l.entry_offset(10), &[0; ENTRY_LEN]);
        // Two written blocks' entries swapped.
        let e0 = disk.peek(l.entry_offset(0), ENTRY_LEN);
        let e1 = disk.peek(l.entry_offset(1), ENTRY_LEN);
        disk.poke(l.entry_offset(0), &e1);
        disk.poke(l.entry_offset(1), &e0);
        let v = reopen(&disk);
        for bad in [0, 1, 10] {
            let err = block(&v, bad).unwrap_err();
            assert!(matches!(err, Error::Volume(VolumeError::BadBlock { index }) if index == bad));
            assert_eq!(io::Error::from(err).kind(), io::ErrorKind::InvalidData);
        }
        assert_eq!(block(&v, 2).unwrap(), vec![9; 4096]);
        assert_eq!(block(&v, 11).unwrap(), vec![0; 4096]);
        let r = v.check(&|_, _| {}).unwrap();
        assert_eq!((r.bad_count, r.bad.clone()), (3, vec![0, 1, 10]));
        assert_eq!((r.data_blocks, r.zero_blocks), (2, 59));
        // A partial write into a bad block fails; a whole-block write replaces it.
        assert!(v.write_at(&[1; 10], 10 * 4096).is_err());
        v.write_at(&[1; 4096], 10 * 4096).unwrap();
        assert_eq!(block(&v, 10).unwrap(), vec![1; 4096]);
    }
}
