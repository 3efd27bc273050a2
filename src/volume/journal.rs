//! The write-ahead journal: every block write lands in a journal slot first; a checkpoint makes
//! the slots durable, commits them with a MACed superblock, then writes each block's latest
//! version home. Recovery at open re-applies the last committed epoch (latest record per index
//! only). The reasoning is in `docs/VOLUME-FORMAT.md`, "Journal".

use std::collections::HashMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::disk::Disk;
use super::keys::GenKey;
use super::layout::{
    Entry, Layout, Record, Superblock, ENTRY_LEN, KIND_DATA, MAC_LEN, RECORD_LEN, SUPERBLOCK_BODY,
};
use crate::Error;

/// Most bytes written home in one `pwrite` when runs of blocks are contiguous.
const APPLY_RUN: usize = 4 << 20;

/// A block's latest version in the current epoch: its slot, its entry, and (for data) the
/// sealed bytes, kept in memory so that reads and the checkpoint need not read the slot back.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub(crate) slot: u32,
    pub(crate) entry: Entry,
    /// The sealed chunk this block's bytes are in, and where.
    pub(crate) sealed: Option<(Arc<[u8]>, usize)>,
    /// The sealed data was written to the block's home at write time (its home entry was a
    /// zero marker): the checkpoint writes no slot data for it, only the entry.
    pub(crate) home: bool,
}

impl Pending {
    pub(crate) fn sealed(&self, block_size: usize) -> &[u8] {
        match &self.sealed {
            Some((chunk, at)) => &chunk[*at..*at + block_size],
            None => &[],
        }
    }
}

/// The current epoch's state (held in a mutex, briefly).
#[derive(Debug)]
pub(crate) struct Journal {
    pub(crate) epoch: u64,
    next: u32,
    slots: u32,
    records: Vec<[u8; RECORD_LEN]>,
    map: HashMap<u64, Pending>,
}

impl Journal {
    pub(crate) fn new(epoch: u64, slots: u32) -> Journal {
        Journal {
            epoch,
            next: 0,
            slots,
            records: vec![[0; RECORD_LEN]; slots as usize],
            map: HashMap::new(),
        }
    }

    /// Takes `n` consecutive slots; `None` when the journal is too full (checkpoint first).
    pub(crate) fn take(&mut self, n: u32) -> Option<u32> {
        let first = self.next;
        if first.checked_add(n)? > self.slots {
            return None;
        }
        self.next += n;
        Some(first)
    }

    /// Records that `slot` holds `index`'s new version (the caller wrote it to disk already).
    pub(crate) fn publish(&mut self, index: u64, pending: Pending) {
        let record = Record {
            index,
            entry: pending.entry,
            epoch: self.epoch,
            home: pending.home,
        };
        self.records[pending.slot as usize] = record.encode();
        self.map.insert(index, pending);
    }

    pub(crate) fn lookup(&self, index: u64) -> Option<&Pending> {
        self.map.get(&index)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.next == 0
    }
}

/// Checkpoint: (0) write the epoch's slots from memory, (1) sync them, (2) write and sync the
/// superblock (the commit point), (3) write each block's latest version home and sync, (4) start
/// the next epoch. No writer may run meanwhile (the caller holds the gate exclusively).
pub(crate) fn checkpoint(
    journal: &mut Journal,
    disk: &dyn Disk,
    layout: &Layout,
    key: &GenKey,
    volume_id: &[u8; 32],
) -> Result<(), Error> {
    if journal.is_empty() {
        return Ok(());
    }
    let bs = layout.block_size as usize;
    // 0. The epoch's slots, from memory: each index's latest data (older versions are never
    // recovered) in runs of consecutive slots, and every record.
    let mut by_slot: Vec<&Pending> = journal
        .map
        .values()
        .filter(|p| p.sealed.is_some() && !p.home)
        .collect();
    by_slot.sort_unstable_by_key(|p| p.slot);
    let mut run: Vec<u8> = Vec::new();
    let mut run_start = 0u32;
    for p in by_slot {
        let contiguous = !run.is_empty() && run_start as usize + run.len() / bs == p.slot as usize;
        if !contiguous || run.len() + bs > APPLY_RUN {
            if !run.is_empty() {
                disk.write_at(&run, layout.slot_data_offset(run_start))?;
            }
            run.clear();
            run_start = p.slot;
        }
        run.extend_from_slice(p.sealed(bs));
    }
    if !run.is_empty() {
        disk.write_at(&run, layout.slot_data_offset(run_start))?;
    }
    disk.write_at(
        journal.records[..journal.next as usize].as_flattened(),
        layout.record_offset(0),
    )?;
    // 1. Slots durable.
    disk.sync()?;
    let mut digest = Sha256::new();
    for r in &journal.records[..journal.next as usize] {
        digest.update(r);
    }
    let sb = Superblock {
        epoch: journal.epoch,
        count: journal.next,
        digest: digest.finalize().into(),
    };
    let mut bytes = sb.body().to_vec();
    bytes.extend_from_slice(&key.journal_mac(volume_id, &sb.body()));
    disk.write_at(
        &bytes,
        layout.superblock_offset((journal.epoch % 2) as usize),
    )?;
    disk.sync()?;
    // A "data home" block's data is home already: only its entry is written.
    let mut latest: Vec<(u64, Entry, &[u8])> = journal
        .map
        .iter()
        .map(|(&i, p)| (i, p.entry, if p.home { &[][..] } else { p.sealed(bs) }))
        .collect();
    latest.sort_unstable_by_key(|(i, _, _)| *i);
    apply(disk, layout, &latest)?;
    disk.sync()?;
    journal.epoch += 1;
    journal.next = 0;
    journal.map.clear();
    Ok(())
}

/// Writes blocks home, sorted by index: data runs and entry runs coalesced into few writes. A
/// data block given no bytes has its data home already (a "data home" record).
fn apply(disk: &dyn Disk, layout: &Layout, blocks: &[(u64, Entry, &[u8])]) -> Result<(), Error> {
    let bs = layout.block_size as usize;
    let mut run: Vec<u8> = Vec::new();
    let mut run_start = 0u64;
    for (i, entry, sealed) in blocks
        .iter()
        .filter(|(_, e, d)| e.kind == KIND_DATA && !d.is_empty())
    {
        let contiguous = !run.is_empty() && run_start + (run.len() / bs) as u64 == *i;
        if !contiguous || run.len() + bs > APPLY_RUN {
            if !run.is_empty() {
                disk.write_at(&run, layout.data_block_offset(run_start))?;
            }
            run.clear();
            run_start = *i;
        }
        debug_assert_eq!(sealed.len(), bs, "{entry:?}");
        run.extend_from_slice(sealed);
    }
    if !run.is_empty() {
        disk.write_at(&run, layout.data_block_offset(run_start))?;
    }
    run.clear();
    for (i, entry, _) in blocks {
        let contiguous = !run.is_empty() && run_start + (run.len() / ENTRY_LEN) as u64 == *i;
        if !contiguous || run.len() >= APPLY_RUN {
            if !run.is_empty() {
                disk.write_at(&run, layout.entry_offset(run_start))?;
            }
            run.clear();
            run_start = *i;
        }
        run.extend_from_slice(&entry.encode());
    }
    if !run.is_empty() {
        disk.write_at(&run, layout.entry_offset(run_start))?;
    }
    Ok(())
}

/// What recovery did, for tests and `check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Recovered {
    /// The epoch the next writes use.
    pub(crate) next_epoch: u64,
    /// Blocks written home from the journal.
    pub(crate) applied: u64,
    /// Latest records whose slot did not open (already applied and overwritten).
    pub(crate) skipped: u64,
}

/// Recovery at open: re-applies the last committed epoch, latest record per index only. A
/// digest mismatch skips everything, a slot that does not open skips that index: both mean the
/// epoch was applied before its slots were reused (see the module docs).
pub(crate) fn recover(
    disk: &dyn Disk,
    layout: &Layout,
    write_key: &GenKey,
    keys: &[GenKey],
    volume_id: &[u8; 32],
) -> Result<Recovered, Error> {
    let mut best: Option<Superblock> = None;
    for copy in 0..2 {
        let mut buf = [0u8; SUPERBLOCK_BODY + MAC_LEN];
        disk.read_at(&mut buf, layout.superblock_offset(copy))?;
        let Some((sb, mac)) = Superblock::decode(&buf) else {
            continue;
        };
        if write_key.journal_verifies(volume_id, &buf[..SUPERBLOCK_BODY], &mac)
            && best.is_none_or(|b| sb.epoch > b.epoch)
        {
            best = Some(sb);
        }
    }
    let Some(sb) = best else {
        return Ok(Recovered {
            next_epoch: 1,
            ..Recovered::default()
        });
    };
    let mut out = Recovered {
        next_epoch: sb.epoch.saturating_add(1),
        ..Recovered::default()
    };
    if sb.count == 0 || sb.count > layout.slots {
        return Ok(out);
    }
    let mut records = vec![0u8; sb.count as usize * RECORD_LEN];
    disk.read_at(&mut records, layout.record_offset(0))?;
    if <[u8; 32]>::from(Sha256::digest(&records)) != sb.digest {
        return Ok(out);
    }
    let mut latest: HashMap<u64, (u32, Entry, bool)> = HashMap::new();
    for (slot, raw) in records.chunks_exact(RECORD_LEN).enumerate() {
        let r = Record::decode(raw.try_into().expect("48-byte chunks"));
        if r.epoch == sb.epoch && r.index < layout.blocks {
            latest.insert(r.index, (slot as u32, r.entry, r.home));
        }
    }
    let mut order: Vec<(u64, (u32, Entry, bool))> = latest.into_iter().collect();
    order.sort_unstable_by_key(|(i, _)| *i);
    let bs = layout.block_size as usize;
    let mut sealed = vec![0u8; bs];
    let mut plain = Zeroizing::new(vec![0u8; bs]);
    let mut good: Vec<(u64, Entry, Vec<u8>)> = Vec::new();
    for (index, (slot, entry, home)) in order {
        let Some(key) = keys.iter().find(|k| k.gen == entry.gen) else {
            out.skipped += 1;
            continue;
        };
        // A "data home" record's data is at the block's home (written and synced before the
        // commit); it opens there unless a later write replaced it (then skipped, like a slot).
        if entry.kind == KIND_DATA {
            let at = if home {
                layout.data_block_offset(index)
            } else {
                layout.slot_data_offset(slot)
            };
            disk.read_at(&mut sealed, at)?;
        }
        let body = if entry.kind == KIND_DATA {
            &sealed[..]
        } else {
            &[]
        };
        if key.open_block(
            volume_id,
            layout.block_size,
            index,
            &entry,
            body,
            &mut plain,
        ) {
            let data = if home { Vec::new() } else { body.to_vec() };
            good.push((index, entry, data));
        } else {
            out.skipped += 1;
        }
        // Write home in bounded batches.
        if good.len() * bs >= APPLY_RUN {
            out.applied += apply_owned(disk, layout, &mut good)?;
        }
    }
    out.applied += apply_owned(disk, layout, &mut good)?;
    disk.sync()?;
    Ok(out)
}

fn apply_owned(
    disk: &dyn Disk,
    layout: &Layout,
    good: &mut Vec<(u64, Entry, Vec<u8>)>,
) -> Result<u64, Error> {
    let view: Vec<(u64, Entry, &[u8])> = good.iter().map(|(i, e, d)| (*i, *e, &d[..])).collect();
    apply(disk, layout, &view)?;
    let n = good.len() as u64;
    good.clear();
    Ok(n)
}
