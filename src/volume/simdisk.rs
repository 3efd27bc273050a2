//! A simulated disk for crash tests: it loses, reorders and tears unsynced writes at a "power
//! cut", and can be armed to make the process "die" in the middle of any disk operation.
//!
//! Only a simulator can catch a missing `sync` or a wrong write order: after a SIGKILL the page
//! cache keeps every write issued, so a real file never shows those bugs on this machine.
//!
//! The model: a durable image plus the list of writes (and length changes) issued since the
//! last `sync`. Reads see everything issued. `sync` makes every write issued before it durable.
//! A power cut builds a new durable image from the old one plus any subset of the unsynced
//! writes, applied in any order (so where two overlap, either may win), each torn at 512-byte
//! sectors (a random subset of its sectors lands).

use std::io;
use std::sync::Mutex;

use super::disk::Disk;

/// The unit a power cut tears writes at: a disk sector.
pub(crate) const SECTOR: u64 = 512;

/// A small seeded generator (SplitMix64): reproducible runs from a printed seed, no dependency.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator whose whole sequence follows from `seed`.
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (`n > 0`); the tiny modulo bias does not matter here.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "Rng::below(0)");
        self.next_u64() % n
    }

    /// True with probability `num / den`.
    pub(crate) fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    /// Fills `buf` with random bytes.
    pub(crate) fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let word = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }

    /// Shuffles `items` in place (Fisher–Yates).
    pub(crate) fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// One operation issued since the last sync, not yet durable.
#[derive(Debug, Clone)]
enum Pending {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

/// How a power cut treats the writes issued since the last sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cut {
    /// Every unsynced write is lost.
    LoseAll,
    /// Every unsynced write lands, in order and whole (what a SIGKILL leaves: the page cache).
    KeepAll,
    /// Each unsynced write lands or not at random, in a random order, torn at 512-byte sectors.
    Random,
}

#[derive(Debug, Default)]
struct State {
    /// What survives a power cut for sure.
    durable: Vec<u8>,
    /// What reads see: `durable` plus every pending operation, in order.
    visible: Vec<u8>,
    pending: Vec<Pending>,
    /// Operations counted since the disk was armed.
    ops: u64,
    /// The process "dies" at the operation after this many (that one and all later ones fail).
    die_after: Option<u64>,
    dead: bool,
    /// Fault injection: a sync whose last preceding write started in this range does nothing
    /// (a missing fdatasync at that point of the code, or a disk that lies about it).
    skip_sync_after_write_in: Option<std::ops::Range<u64>>,
    last_write: Option<u64>,
    skipped_syncs: u64,
}

/// An in-memory [`Disk`] with power-cut and crash simulation.
#[derive(Debug, Default)]
pub(crate) struct SimDisk {
    state: Mutex<State>,
}

fn write_into(image: &mut Vec<u8>, data: &[u8], offset: u64) {
    let end = offset as usize + data.len();
    if image.len() < end {
        image.resize(end, 0);
    }
    image[offset as usize..end].copy_from_slice(data);
}

fn crashed() -> io::Error {
    io::Error::other("simulated crash: the process died during this disk operation")
}

impl SimDisk {
    /// An empty disk.
    pub(crate) fn new() -> SimDisk {
        SimDisk::default()
    }

    /// A disk whose durable content is `image`, with nothing pending.
    pub(crate) fn from_image(image: Vec<u8>) -> SimDisk {
        SimDisk {
            state: Mutex::new(State {
                visible: image.clone(),
                durable: image,
                ..State::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panicking test thread must not hide the disk from the checks that follow.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Arms the disk: the operation after the next `n` (counted from now) and every later one
    /// fail, as if the process died in that call. A write that "dies" may still have been issued
    /// (it joins the unsynced writes, so a later power cut may land it, torn or whole).
    pub(crate) fn die_after(&self, n: u64) {
        let mut s = self.lock();
        s.ops = 0;
        s.die_after = Some(n);
    }

    /// Whether the armed crash has happened.
    pub(crate) fn is_dead(&self) -> bool {
        self.lock().dead
    }

    /// Makes every later `sync` that follows a write starting in `range` a no-op that reports
    /// success: the crash harness must notice the sync it removes.
    pub(crate) fn skip_syncs_after_writes_in(&self, range: std::ops::Range<u64>) {
        self.lock().skip_sync_after_write_in = Some(range);
    }

    /// How many syncs the fault injection turned into no-ops.
    pub(crate) fn skipped_syncs(&self) -> u64 {
        self.lock().skipped_syncs
    }

    /// How many writes and length changes are not durable yet.
    pub(crate) fn pending(&self) -> usize {
        self.lock().pending.len()
    }

    /// The durable image (what survives any power cut).
    pub(crate) fn durable_image(&self) -> Vec<u8> {
        self.lock().durable.clone()
    }

    /// The image as reads see it now.
    pub(crate) fn visible_image(&self) -> Vec<u8> {
        self.lock().visible.clone()
    }

    /// Cuts the power: this disk dies for good (a volume still holding it can do nothing more),
    /// and the returned disk holds what survived, by `how`, with nothing pending. Cutting the
    /// same dead disk again draws another outcome of the same moment.
    pub(crate) fn power_cut(&self, how: Cut, rng: &mut Rng) -> SimDisk {
        let mut s = self.lock();
        s.dead = true;
        s.die_after = Some(0);
        let mut image = s.durable.clone();
        // Cloned, not taken: a test may cut the same moment several ways.
        let pending = s.pending.clone();
        match how {
            Cut::LoseAll => {}
            Cut::KeepAll => {
                for op in &pending {
                    match op {
                        Pending::Write { offset, data } => write_into(&mut image, data, *offset),
                        Pending::SetLen(len) => image.resize(*len as usize, 0),
                    }
                }
            }
            Cut::Random => {
                // Length changes: the latest one that survives decides (the volume only ever
                // sets the length once, at create, before its first sync).
                let keep_len = rng.below(4);
                let mut writes = Vec::new();
                let mut new_len = None;
                for op in pending {
                    match op {
                        Pending::SetLen(len) => {
                            if rng.chance(keep_len, 3) {
                                new_len = Some(len);
                            }
                        }
                        Pending::Write { offset, data } => writes.push((offset, data)),
                    }
                }
                if let Some(len) = new_len {
                    image.resize(len as usize, 0);
                }
                // Per cut, a random survival rate and tear rate, so that some cuts lose almost
                // nothing and others almost everything.
                let keep = rng.below(9);
                let tear = rng.below(5);
                rng.shuffle(&mut writes);
                for (offset, data) in writes {
                    if !rng.chance(keep, 8) {
                        continue;
                    }
                    if !rng.chance(tear, 4) {
                        write_into(&mut image, &data, offset);
                        continue;
                    }
                    // Torn: each piece between absolute sector boundaries lands or not.
                    let mut at = offset;
                    let end = offset + data.len() as u64;
                    while at < end {
                        let piece_end = ((at / SECTOR + 1) * SECTOR).min(end);
                        if rng.chance(1, 2) {
                            let from = (at - offset) as usize;
                            let to = (piece_end - offset) as usize;
                            write_into(&mut image, &data[from..to], at);
                        }
                        at = piece_end;
                    }
                }
            }
        }
        SimDisk::from_image(image)
    }

    /// Counts one operation; fails it if the disk is dead or this is the armed crash point.
    fn enter(s: &mut State) -> io::Result<()> {
        if s.dead {
            return Err(crashed());
        }
        s.ops += 1;
        if let Some(n) = s.die_after {
            if s.ops > n {
                s.dead = true;
                return Err(crashed());
            }
        }
        Ok(())
    }
}

impl Disk for SimDisk {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut s = self.lock();
        SimDisk::enter(&mut s)?;
        let len = s.visible.len() as u64;
        buf.fill(0);
        if offset < len {
            let n = (len - offset).min(buf.len() as u64) as usize;
            buf[..n].copy_from_slice(&s.visible[offset as usize..offset as usize + n]);
        }
        Ok(())
    }

    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        let mut s = self.lock();
        let dying = !s.dead;
        if let Err(e) = SimDisk::enter(&mut s) {
            // Died inside the call: the write may have reached the page cache, whole or in part,
            // so a later power cut may land it. (A disk dead before the call saw nothing.)
            if dying {
                s.pending.push(Pending::Write {
                    offset,
                    data: data.to_vec(),
                });
            }
            return Err(e);
        }
        write_into(&mut s.visible, data, offset);
        s.last_write = Some(offset);
        s.pending.push(Pending::Write {
            offset,
            data: data.to_vec(),
        });
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        let mut s = self.lock();
        SimDisk::enter(&mut s)?;
        if let (Some(range), Some(last)) = (&s.skip_sync_after_write_in, s.last_write) {
            if range.contains(&last) {
                s.skipped_syncs += 1;
                return Ok(());
            }
        }
        let pending = std::mem::take(&mut s.pending);
        for op in pending {
            match op {
                Pending::Write { offset, data } => write_into(&mut s.durable, &data, offset),
                Pending::SetLen(len) => s.durable.resize(len as usize, 0),
            }
        }
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        let mut s = self.lock();
        SimDisk::enter(&mut s)?;
        Ok(s.visible.len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut s = self.lock();
        SimDisk::enter(&mut s)?;
        s.visible.resize(len as usize, 0);
        s.pending.push(Pending::SetLen(len));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(disk: &SimDisk, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        disk.read_at(&mut buf, offset).unwrap();
        buf
    }

    #[test]
    fn reads_see_unsynced_writes_and_past_the_end_reads_zeros() {
        let disk = SimDisk::new();
        disk.write_at(b"abc", 10).unwrap();
        assert_eq!(disk.len().unwrap(), 13);
        assert_eq!(read(&disk, 9, 8), b"\0abc\0\0\0\0");
        assert_eq!(disk.pending(), 1);
        assert!(disk.durable_image().is_empty());
        disk.sync().unwrap();
        assert_eq!(disk.pending(), 0);
        assert_eq!(disk.durable_image(), disk.visible_image());
    }

    #[test]
    fn a_synced_write_survives_every_cut() {
        for seed in 0..300 {
            let mut rng = Rng::new(seed);
            let disk = SimDisk::new();
            disk.set_len(8192).unwrap();
            disk.write_at(&[0xaa; 4096], 1000).unwrap();
            disk.sync().unwrap();
            // Unsynced writes elsewhere, and one over the synced data.
            disk.write_at(&[0xbb; 2000], 6000).unwrap();
            for how in [Cut::Random, Cut::LoseAll, Cut::KeepAll] {
                let after = disk.power_cut(how, &mut rng);
                assert_eq!(read(&after, 1000, 4096), vec![0xaa; 4096], "seed {seed}");
                assert_eq!(after.len().unwrap(), 8192);
            }
        }
    }

    #[test]
    fn an_unsynced_write_may_or_may_not_survive_and_tears_only_at_sectors() {
        let (mut whole, mut lost, mut torn) = (0, 0, 0);
        for seed in 0..2000 {
            let mut rng = Rng::new(seed);
            let disk = SimDisk::from_image(vec![0u8; 8192]);
            // Starts mid-sector, so the first and last pieces are partial sectors.
            let (offset, len) = (300u64, 3000usize);
            disk.write_at(&vec![0xcc; len], offset).unwrap();
            let after = disk.power_cut(Cut::Random, &mut rng);
            let image = after.durable_image();
            let got = &image[offset as usize..offset as usize + len];
            if got.iter().all(|&b| b == 0xcc) {
                whole += 1;
            } else if got.iter().all(|&b| b == 0) {
                lost += 1;
            } else {
                torn += 1;
                // Every landed byte run is made of whole pieces between absolute 512 B
                // boundaries: the value only changes at a sector boundary (or the write's ends).
                for at in offset as usize + 1..offset as usize + len {
                    if image[at] != image[at - 1] {
                        assert_eq!(at % SECTOR as usize, 0, "seed {seed}: tear inside a sector");
                    }
                }
            }
            // Nothing outside the write changed.
            assert!(image[..offset as usize].iter().all(|&b| b == 0));
            assert!(image[offset as usize + len..].iter().all(|&b| b == 0));
        }
        assert!(
            whole > 100 && lost > 100 && torn > 100,
            "{whole} {lost} {torn}"
        );
    }

    #[test]
    fn overlapping_unsynced_writes_can_land_in_either_order() {
        let (mut first_wins, mut second_wins) = (0, 0);
        for seed in 0..500 {
            let mut rng = Rng::new(seed);
            let disk = SimDisk::from_image(vec![0u8; 512]);
            disk.write_at(&[1; 512], 0).unwrap();
            disk.write_at(&[2; 512], 0).unwrap();
            assert_eq!(read(&disk, 0, 512), vec![2; 512], "reads see the latest");
            match disk.power_cut(Cut::Random, &mut rng).durable_image()[0] {
                1 => first_wins += 1,
                2 => second_wins += 1,
                _ => {}
            }
        }
        assert!(
            first_wins > 10 && second_wins > 10,
            "{first_wins} {second_wins}"
        );
    }

    #[test]
    fn keep_all_is_what_a_sigkill_leaves_and_lose_all_is_the_last_sync() {
        let mut rng = Rng::new(1);
        let disk = SimDisk::from_image(vec![0u8; 1024]);
        disk.write_at(&[7; 100], 0).unwrap();
        disk.sync().unwrap();
        disk.write_at(&[8; 100], 50).unwrap();
        disk.write_at(&[9; 10], 60).unwrap();
        let visible = disk.visible_image();
        let durable = disk.durable_image();
        assert_eq!(
            disk.power_cut(Cut::KeepAll, &mut rng).durable_image(),
            visible
        );
        assert_eq!(
            disk.power_cut(Cut::LoseAll, &mut rng).durable_image(),
            durable
        );
    }

    #[test]
    fn an_armed_disk_dies_at_the_chosen_operation_and_stays_dead() {
        let disk = SimDisk::from_image(vec![0u8; 1024]);
        disk.die_after(2);
        disk.write_at(&[1; 4], 0).unwrap();
        disk.sync().unwrap();
        assert!(disk.write_at(&[2; 4], 0).is_err(), "third operation dies");
        assert!(disk.is_dead());
        let mut buf = [0u8; 4];
        assert!(disk.read_at(&mut buf, 0).is_err());
        assert!(disk.sync().is_err());
        assert!(disk.write_at(&[3; 4], 0).is_err());
        // The dying write may land; the ones after death never do.
        let after = disk.power_cut(Cut::KeepAll, &mut Rng::new(0));
        assert_eq!(after.durable_image()[0], 2);
        assert_eq!(
            disk.power_cut(Cut::LoseAll, &mut Rng::new(0))
                .durable_image()[0],
            1
        );
        // A power cut kills the old disk even when it was not armed.
        let other = SimDisk::new();
        let _ = other.power_cut(Cut::LoseAll, &mut Rng::new(0));
        assert!(other.write_at(&[1], 0).is_err());
    }

    /// A toy "atomic record" writer: the record goes to one of two slots, then a pointer byte
    /// names the slot. Correct only with a sync between the record and the pointer.
    fn toy_commit(
        disk: &SimDisk,
        record: &[u8; 1024],
        sync_before_pointer: bool,
    ) -> io::Result<()> {
        let mut ptr = [0u8; 1];
        disk.read_at(&mut ptr, 0)?;
        let slot = 1 - ptr[0] % 2;
        disk.write_at(record, 512 + u64::from(slot) * 1024)?;
        if sync_before_pointer {
            disk.sync()?;
        }
        disk.write_at(&[slot], 0)?;
        disk.sync()
    }

    /// Runs the toy writer under random crashes and power cuts; returns the first seed at which
    /// the slot named by the pointer did not hold a complete record.
    fn toy_harness(sync_before_pointer: bool) -> Option<u64> {
        for seed in 0..2000u64 {
            let mut rng = Rng::new(seed);
            let disk = SimDisk::from_image(vec![0u8; 512 + 2048]);
            let mut committed = [0u8; 1024];
            toy_commit(&disk, &committed, true).unwrap();
            disk.die_after(rng.below(12));
            for round in 1..4u8 {
                let record = [round; 1024];
                if toy_commit(&disk, &record, sync_before_pointer).is_err() {
                    break;
                }
                committed = record;
            }
            let after = disk.power_cut(Cut::Random, &mut rng);
            let image = after.durable_image();
            let slot = usize::from(image[0] % 2);
            let got = &image[512 + slot * 1024..512 + (slot + 1) * 1024];
            let whole = got.iter().all(|&b| b == got[0]);
            // The last commit that returned Ok must be there, or a later one, whole.
            if !whole || got[0] < committed[0] {
                return Some(seed);
            }
        }
        None
    }

    #[test]
    fn a_skipped_sync_leaves_the_writes_pending() {
        let disk = SimDisk::from_image(vec![0u8; 4096]);
        disk.skip_syncs_after_writes_in(1024..2048);
        disk.write_at(&[1; 10], 0).unwrap();
        disk.sync().unwrap();
        assert_eq!(disk.pending(), 0);
        disk.write_at(&[2; 10], 1500).unwrap();
        disk.sync().unwrap();
        assert_eq!((disk.pending(), disk.skipped_syncs()), (1, 1));
        let after = disk.power_cut(Cut::LoseAll, &mut Rng::new(0));
        assert_eq!(after.durable_image()[1500], 0);
    }

    #[test]
    fn the_simulator_catches_a_missing_sync_in_a_toy_writer() {
        assert_eq!(toy_harness(true), None, "the correct writer passes");
        let seed = toy_harness(false);
        assert!(seed.is_some(), "a missing sync must be caught");
    }
}
