//! Crash harness (b): a volume on a simulated disk ([`SimDisk`]) runs a seeded random workload
//! and "dies" at a random disk operation (mid-write, mid-checkpoint, mid-recovery); the power is
//! cut (unsynced writes lost, reordered, torn at 512 B); the volume is reopened and EVERY block
//! must read without error as its value at the last flush that returned Ok, or as one of the
//! values written to it after that flush (or during it).
//!
//! Only a simulator can catch a missing fdatasync or a wrong write order: after a SIGKILL (harness
//! (a), `tests/volume_crash.rs`) the page cache keeps every write issued.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::disk::Disk;
use super::simdisk::{Cut, Rng, SimDisk};
use super::{Volume, VolumeOptions};
use crate::RawAesKeyring;

fn keyring() -> RawAesKeyring {
    RawAesKeyring::new("crash-test", "wrapping-key", &[0x42; 32]).unwrap()
}

fn create(disk: &Arc<SimDisk>, size: u64, block: u32) -> crate::Result<Volume> {
    let options = VolumeOptions::default()
        .block_size(block)
        .journal_bytes(16 * u64::from(block));
    Volume::create_on(disk.clone() as Arc<dyn Disk>, size, &keyring(), options)
}

fn open(disk: &Arc<SimDisk>) -> crate::Result<Volume> {
    Volume::open_on(disk.clone() as Arc<dyn Disk>, &keyring())
}

/// The shape of one run.
#[derive(Debug, Clone)]
struct Params {
    block: u32,
    blocks: u64,
    threads: u64,
    /// Workload steps per thread and session.
    steps: u64,
    sessions: u32,
    /// Rekey, add_key and remove_key among the writes.
    key_ops: bool,
    /// Syncs to turn into no-ops (the teeth test); applied to every disk of the run.
    fault: Option<Range<u64>>,
}

/// What one block held, and when its write returned Ok (None: the write failed, so it may or
/// may not have happened).
#[derive(Debug, Clone)]
struct Version {
    value: Vec<u8>,
    done: Option<u64>,
}

/// Counters for the report line.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    runs: u64,
    cuts: u64,
    died_mid_workload: u64,
    died_mid_recovery: u64,
    blocks_checked: u64,
    key_ops: u64,
    racing_reads: u64,
}

/// What the threads of a session share.
struct Session<'a> {
    vol: &'a Volume,
    disk: &'a SimDisk,
    block: u32,
    steps: u64,
    /// Whether thread 0 also runs rekey (whole or partial), add_key and remove_key.
    key_ops: bool,
    key_ops_done: AtomicU64,
    /// Ticks before each flush and after each write returns, so "returned before that flush
    /// began" is a comparison.
    clock: AtomicU64,
    /// The clock when the latest flush that returned Ok began.
    flushed_at: AtomicU64,
}

/// One thread's share of the workload: blocks `range`, which no other thread writes, so that
/// each block's versions are totally ordered.
fn workload(
    s: &Session<'_>,
    range: Range<u64>,
    history: &mut [Vec<Version>],
    seed: u64,
) -> Result<(), String> {
    let (vol, disk, clock, flushed_at) = (s.vol, s.disk, &s.clock, &s.flushed_at);
    let mut rng = Rng::new(seed);
    let bs = u64::from(s.block);
    let (lo, hi) = (range.start, range.end);
    let size = (hi - lo) * bs;
    for _ in 0..s.steps {
        // Key management rewrites the header and re-seals blocks; it must not change what any
        // block reads. Thread 0 only: one rekey at a time.
        if s.key_ops && range.start == 0 && rng.chance(1, 12) {
            let other = RawAesKeyring::new("crash-test", "second-key", &[0x24; 32]).unwrap();
            let r = match rng.below(6) {
                0 | 1 => vol.rekey_steps(&keyring(), &|_, _| {}, Some(1 + rng.below(16))),
                2 => vol.rekey(&keyring(), &|_, _| {}),
                3 | 4 => vol.add_key(&other),
                _ => match vol.remove_key(&other) {
                    Err(crate::Error::Volume(crate::VolumeError::NoSuchKeySlot)) => Ok(0),
                    r => r,
                }
                .map(drop),
            };
            match r {
                Ok(()) => {
                    s.key_ops_done.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Err(_) if disk.is_dead() => return Ok(()),
                Err(e) => return Err(format!("key management failed on a live disk: {e}")),
            }
        }
        if rng.chance(1, 8) {
            let start = clock.fetch_add(1, Ordering::SeqCst);
            match vol.flush() {
                Ok(()) => {
                    flushed_at.fetch_max(start, Ordering::SeqCst);
                    continue;
                }
                Err(_) if disk.is_dead() => return Ok(()),
                Err(e) => return Err(format!("flush failed on a live disk: {e}")),
            }
        }
        // (offset, len) relative to the thread's range; data None = write_zeroes.
        let (offset, len, zero) = match rng.below(10) {
            0..=4 => {
                let n = 1 + rng.below(3.min(hi - lo));
                let first = rng.below(hi - lo - n + 1);
                (first * bs, n * bs, false)
            }
            5..=7 => {
                let len = 1 + rng.below(2 * bs).min(size - 1);
                (rng.below(size - len + 1), len, false)
            }
            _ => {
                let len = 1 + rng.below(2 * bs).min(size - 1);
                let offset = if rng.chance(1, 2) {
                    rng.below(size / bs) * bs
                } else {
                    rng.below(size - len + 1)
                };
                (offset, len.min(size - offset), true)
            }
        };
        let mut data = vec![0u8; len as usize];
        if !zero {
            rng.fill(&mut data);
        }
        let at = lo * bs + offset;
        let result = if zero {
            vol.write_zeroes(at, len)
        } else {
            vol.write_at(&data, at)
        };
        let done = clock.fetch_add(1, Ordering::SeqCst);
        // The new value of every block the request touched.
        for b in at / bs..(at + len).div_ceil(bs) {
            let mut value = history[(b - lo) as usize].last().unwrap().value.clone();
            let from = at.max(b * bs);
            let to = (at + len).min((b + 1) * bs);
            value[(from - b * bs) as usize..(to - b * bs) as usize]
                .copy_from_slice(&data[(from - at) as usize..(to - at) as usize]);
            history[(b - lo) as usize].push(Version {
                value,
                done: result.is_ok().then_some(done),
            });
        }
        if let Err(e) = result {
            if disk.is_dead() {
                return Ok(());
            }
            return Err(format!("a write failed on a live disk: {e}"));
        }
    }
    Ok(())
}

/// Reads random blocks while the writers run; returns what it saw. An error is a failure
/// unless the disk has died (then the volume refuses everything, as it should).
fn reader(s: &Session<'_>, blocks: u64, seed: u64) -> Result<Vec<(u64, Vec<u8>)>, String> {
    let mut rng = Rng::new(seed);
    let bs = s.block as usize;
    let mut seen = Vec::new();
    for _ in 0..s.steps * 4 {
        let first = rng.below(blocks);
        let n = 1 + rng.below(2.min(blocks - first));
        let mut buf = vec![0u8; n as usize * bs];
        match s.vol.read_at(&mut buf, first * bs as u64) {
            Ok(()) => {
                for (k, block) in buf.chunks(bs).enumerate() {
                    seen.push((first + k as u64, block.to_vec()));
                }
            }
            Err(_) if s.disk.is_dead() => break,
            Err(e) => return Err(format!("a read racing the writers failed: {e}")),
        }
    }
    Ok(seen)
}

fn new_disk(image: SimDisk, params: &Params) -> Arc<SimDisk> {
    if let Some(range) = &params.fault {
        image.skip_syncs_after_writes_in(range.clone());
    }
    Arc::new(image)
}

/// Cuts the power in one of the ways, most often the random one.
fn cut(disk: &SimDisk, rng: &mut Rng, params: &Params, counts: &mut Counts) -> Arc<SimDisk> {
    counts.cuts += 1;
    let how = match rng.below(10) {
        0 => Cut::LoseAll,
        1 => Cut::KeepAll,
        _ => Cut::Random,
    };
    new_disk(disk.power_cut(how, rng), params)
}

/// One run: create, then `sessions` times: workload with a crash armed, power cut, maybe a
/// crash and a cut during recovery, reopen, check every block.
fn run(seed: u64, params: &Params, counts: &mut Counts) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let bs = params.block as usize;
    let disk = new_disk(SimDisk::new(), params);
    let mut vol = Some(
        create(&disk, params.blocks * u64::from(params.block), params.block)
            .map_err(|e| format!("create: {e}"))?,
    );
    let mut disk = disk;
    // What every block holds for sure at the start of a session (read after the last recovery).
    let mut base: Vec<Vec<u8>> = vec![vec![0u8; bs]; params.blocks as usize];
    counts.runs += 1;
    for session in 0..params.sessions {
        let v = vol.take().unwrap();
        let shared = Session {
            vol: &v,
            disk: &disk,
            block: params.block,
            steps: params.steps,
            key_ops: params.key_ops,
            key_ops_done: AtomicU64::new(0),
            clock: AtomicU64::new(2),
            // The base counts as flushed (it was read back after a recovery).
            flushed_at: AtomicU64::new(1),
        };
        let mut history: Vec<Vec<Version>> = base
            .iter()
            .map(|value| {
                vec![Version {
                    value: value.clone(),
                    done: Some(0),
                }]
            })
            .collect();
        // Dies somewhere in the session's disk operations, or not at all.
        disk.die_after(rng.below(params.steps * params.threads * 3 + 10));
        let per = params.blocks / params.threads;
        let reader_seed = rng.next_u64();
        let (outcome, reads) = std::thread::scope(|scope| {
            // With several writers, a reader too: a read racing a write of the same block must
            // see the old or the new value, never an error while the disk lives.
            let reader = (params.threads > 1).then(|| {
                let shared = &shared;
                scope.spawn(move || reader(shared, params.blocks, reader_seed))
            });
            let mut rest: &mut [Vec<Version>] = &mut history;
            let mut handles = Vec::new();
            for t in 0..params.threads {
                let lo = t * per;
                let hi = if t + 1 == params.threads {
                    params.blocks
                } else {
                    lo + per
                };
                let (mine, others) = rest.split_at_mut((hi - lo) as usize);
                rest = others;
                let thread_seed = rng.next_u64();
                let shared = &shared;
                handles.push(scope.spawn(move || workload(shared, lo..hi, mine, thread_seed)));
            }
            let outcome: Vec<Result<(), String>> =
                handles.into_iter().map(|h| h.join().unwrap()).collect();
            (outcome, reader.map(|r| r.join().unwrap()))
        });
        for result in outcome {
            result.map_err(|e| format!("session {session}: {e}"))?;
        }
        for (i, value) in reads
            .transpose()
            .map_err(|e| format!("session {session}: {e}"))?
            .into_iter()
            .flatten()
        {
            if !history[i as usize].iter().any(|v| v.value == value) {
                return Err(format!(
                    "session {session}: a concurrent read of block {i} saw a value never written"
                ));
            }
            counts.racing_reads += 1;
        }
        if disk.is_dead() {
            counts.died_mid_workload += 1;
        }
        // The cut comes first, so the volume's best-effort flush on drop reaches a dead disk.
        let mut after = cut(&disk, &mut rng, params, counts);
        let floor = shared.flushed_at.load(Ordering::SeqCst);
        counts.key_ops += shared.key_ops_done.load(Ordering::Relaxed);
        drop(v);
        // Sometimes the process dies again, during the recovery.
        if rng.chance(1, 3) {
            after.die_after(rng.below(40));
            if let Ok(v) = open(&after) {
                drop(v);
            }
            if after.is_dead() {
                counts.died_mid_recovery += 1;
            }
            after = cut(&after, &mut rng, params, counts);
        }
        let v = open(&after).map_err(|e| format!("session {session}: reopen: {e}"))?;
        for (i, versions) in history.iter().enumerate() {
            let mut got = vec![0u8; bs];
            v.read_at(&mut got, (i * bs) as u64).map_err(|e| {
                format!("session {session}: block {i} does not read after the cut: {e}")
            })?;
            // The last version whose write returned before the last good flush began must be
            // there, or a later one.
            let first_allowed = versions
                .iter()
                .rposition(|w| w.done.is_some_and(|d| d < floor))
                .unwrap_or(0);
            if !versions[first_allowed..].iter().any(|w| w.value == got) {
                let older = versions[..first_allowed].iter().any(|w| w.value == got);
                return Err(format!(
                    "session {session}: block {i} reads {} ({} versions, {} allowed)",
                    if older {
                        "a version older than the last flush (a flushed write was lost)"
                    } else {
                        "a value never written to it"
                    },
                    versions.len(),
                    versions.len() - first_allowed,
                ));
            }
            counts.blocks_checked += 1;
            base[i] = got;
        }
        vol = Some(v);
        disk = after;
    }
    Ok(())
}

/// Runs `runs` seeded runs from `first_seed`; returns the first failure with its seed.
fn harness(first_seed: u64, runs: u64, params: &Params, counts: &mut Counts) -> Result<(), String> {
    for seed in first_seed..first_seed + runs {
        run(seed, params, counts).map_err(|e| format!("seed {seed} ({params:?}): {e}"))?;
    }
    Ok(())
}

fn params(block: u32, blocks: u64, threads: u64) -> Params {
    Params {
        block,
        blocks,
        threads,
        steps: 24,
        sessions: 2,
        key_ops: false,
        fault: None,
    }
}

fn report(name: &str, counts: &Counts, started: std::time::Instant) {
    println!(
        "volume crash harness (b), {name}: {} power cuts in {} runs ({} died mid-workload, {} \
         mid-recovery, {} key operations completed), {} blocks checked old-or-new, {} reads \
         racing the writers checked, in {:.1} s",
        counts.cuts,
        counts.runs,
        counts.died_mid_workload,
        counts.died_mid_recovery,
        counts.key_ops,
        counts.blocks_checked,
        counts.racing_reads,
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn power_cuts_at_random_moments_keep_every_block_old_or_new_512() {
    let started = std::time::Instant::now();
    let mut counts = Counts::default();
    harness(0, 600, &params(512, 24, 1), &mut counts).unwrap();
    report("512 B blocks, 1 thread", &counts, started);
}

#[test]
fn power_cuts_at_random_moments_keep_every_block_old_or_new_4096() {
    let started = std::time::Instant::now();
    let mut counts = Counts::default();
    harness(10_000, 600, &params(4096, 24, 1), &mut counts).unwrap();
    report("4096 B blocks, 1 thread", &counts, started);
}

#[test]
fn power_cuts_with_two_writing_threads_keep_every_block_old_or_new() {
    let started = std::time::Instant::now();
    let mut counts = Counts::default();
    harness(20_000, 300, &params(512, 32, 2), &mut counts).unwrap();
    harness(30_000, 300, &params(4096, 32, 2), &mut counts).unwrap();
    report("two threads", &counts, started);
}

#[test]
fn power_cuts_during_rekey_and_key_slot_changes_keep_every_block_old_or_new() {
    let started = std::time::Instant::now();
    let mut counts = Counts::default();
    let mut p = params(512, 24, 1);
    p.key_ops = true;
    p.sessions = 3;
    harness(40_000, 300, &p, &mut counts).unwrap();
    let mut p = params(4096, 32, 2);
    p.key_ops = true;
    harness(50_000, 200, &p, &mut counts).unwrap();
    report(
        "rekey, add_key, remove_key among the writes",
        &counts,
        started,
    );
}

/// The harness has teeth: with the journal's commit sync gone (the fdatasync after the
/// superblock write turned into a no-op by the simulated disk), it must find a block that is
/// neither old nor new, or a flushed write lost.
#[test]
fn the_harness_fails_without_the_journal_commit_sync() {
    use super::layout::{JOURNAL_OFFSET, SUPERBLOCK_SPAN};
    let mut p = params(512, 24, 1);
    p.fault = Some(JOURNAL_OFFSET..JOURNAL_OFFSET + 2 * SUPERBLOCK_SPAN);
    let mut counts = Counts::default();
    let err = harness(0, 3000, &p, &mut counts).expect_err("a missing commit sync must be caught");
    println!(
        "volume crash harness (b) without the commit sync: caught after {} runs, {} cuts: {err}",
        counts.runs, counts.cuts
    );
}

/// The same for the sync after the home writes (step 3): without it the next epoch may reuse
/// the slots while the home writes are still volatile.
#[test]
fn the_harness_fails_without_the_sync_after_the_home_writes() {
    use super::layout::Layout;
    let mut p = params(512, 24, 1);
    let layout = Layout::new(p.blocks * u64::from(p.block), p.block, 16).unwrap();
    p.fault = Some(layout.meta_offset..u64::MAX);
    let mut counts = Counts::default();
    let err = harness(0, 3000, &p, &mut counts).expect_err("a missing apply sync must be caught");
    println!(
        "volume crash harness (b) without the sync after the home writes: caught after {} runs, \
         {} cuts: {err}",
        counts.runs, counts.cuts
    );
}

/// A rekey interrupted by a crash leaves one header copy naming the new generation and, until
/// its next header update, the other copy from before the rekey. A key the rekey is revoking
/// must not open the volume through that stale copy and then overwrite the newer one: the new
/// generation's key would be gone and every block already re-sealed under it lost.
#[test]
fn an_old_key_meeting_an_interrupted_rekey_does_not_destroy_the_new_generation() {
    use crate::keyring::Keyring;
    let old = keyring();
    let new = RawAesKeyring::new("crash-test", "rekey-target", &[0x77; 32]).unwrap();
    let both = crate::MultiKeyring::new(
        None,
        vec![
            Arc::new(keyring()) as Arc<dyn Keyring>,
            Arc::new(RawAesKeyring::new("crash-test", "rekey-target", &[0x77; 32]).unwrap()),
        ],
    )
    .unwrap();
    let (block, blocks) = (512u32, 64u64);
    let content = |i: u64| vec![i as u8 + 1; block as usize];
    let mut interrupted = 0;
    for n in 0.. {
        let disk = Arc::new(SimDisk::new());
        let vol = create(&disk, blocks * u64::from(block), block).unwrap();
        for i in 0..blocks {
            vol.write_at(&content(i), i * u64::from(block)).unwrap();
        }
        vol.flush().unwrap();
        // A SIGKILL at the n-th disk operation of the rekey: the page cache survives.
        disk.die_after(n);
        let finished = vol.rekey(&new, &|_, _| {}).is_ok();
        let after = Arc::new(disk.power_cut(Cut::KeepAll, &mut Rng::new(n)));
        drop(vol);
        if finished {
            break;
        }
        interrupted += 1;
        // Someone with the old key alone, who has not heard of the rekey, opens and writes.
        if let Ok(v) = Volume::open_on(after.clone() as Arc<dyn Disk>, &old) {
            let _ = v.write_at(&content(0), 0);
            let _ = v.close();
        }
        // The keys of both generations must still open it, every block intact, and the rekey
        // must finish.
        let v = Volume::open_on(after.clone() as Arc<dyn Disk>, &both).unwrap_or_else(|e| {
            panic!("rekey interrupted at disk operation {n}: the volume no longer opens: {e}")
        });
        for i in 0..blocks {
            let mut buf = vec![0u8; block as usize];
            v.read_at(&mut buf, i * u64::from(block))
                .unwrap_or_else(|e| {
                    panic!("rekey interrupted at disk operation {n}: block {i} lost: {e}")
                });
            assert_eq!(
                buf,
                content(i),
                "rekey interrupted at disk operation {n}: block {i}"
            );
        }
        v.rekey(&new, &|_, _| {}).unwrap();
        v.close().unwrap();
    }
    assert!(interrupted > 5, "{interrupted}");
}

/// Review of 7520542 (data home): scripted sequences, die at every disk op, several cuts.
#[derive(Clone, Copy, Debug)]
enum Op {
    W(u64, u8),
    W2(u64, u8),
    P(u64, u8),
    Z(u64),
    F,
    Reopen,
}

fn dh_script(script: &[Op], label: &str) {
    let bs = 512u32;
    let blocks = 16u64;
    let mut worst = 0u64;
    for n in 0..400u64 {
        for cutseed in 0..6u64 {
            let disk = Arc::new(SimDisk::new());
            let v = create(&disk, blocks * u64::from(bs), bs).unwrap();
            v.flush().unwrap();
            // committed[b], later[b]
            let mut committed: Vec<Vec<u8>> = vec![vec![0; bs as usize]; blocks as usize];
            let mut later: Vec<Vec<Vec<u8>>> = vec![Vec::new(); blocks as usize];
            disk.die_after(n);
            let mut v = Some(v);
            let mut died = false;
            for op in script {
                let Some(vol) = v.as_ref() else { break };
                let r = match *op {
                    Op::W(b, x) => {
                        later[b as usize].push(vec![x; bs as usize]);
                        vol.write_at(&vec![x; bs as usize], b * u64::from(bs))
                    }
                    Op::W2(b, x) => {
                        for k in 0..2 {
                            later[(b + k) as usize].push(vec![x; bs as usize]);
                        }
                        vol.write_at(&vec![x; 2 * bs as usize], b * u64::from(bs))
                    }
                    Op::P(b, x) => {
                        // partial write: first 100 bytes
                        let mut cur = vec![0u8; bs as usize];
                        if vol.read_at(&mut cur, b * u64::from(bs)).is_err() {
                            died = true;
                            break;
                        }
                        cur[..100].fill(x);
                        later[b as usize].push(cur);
                        vol.write_at(&[x; 100], b * u64::from(bs))
                    }
                    Op::Z(b) => {
                        later[b as usize].push(vec![0; bs as usize]);
                        vol.write_zeroes(b * u64::from(bs), u64::from(bs))
                    }
                    Op::F => {
                        let r = vol.flush();
                        if r.is_ok() {
                            for b in 0..blocks as usize {
                                if let Some(last) = later[b].last().cloned() {
                                    committed[b] = last;
                                }
                                later[b].clear();
                            }
                        }
                        r
                    }
                    Op::Reopen => {
                        let r = v.take().unwrap().close();
                        if r.is_ok() {
                            for b in 0..blocks as usize {
                                if let Some(last) = later[b].last().cloned() {
                                    committed[b] = last;
                                }
                                later[b].clear();
                            }
                            match open(&disk) {
                                Ok(nv) => {
                                    v = Some(nv);
                                    continue;
                                }
                                Err(_) => {
                                    died = true;
                                    break;
                                }
                            }
                        }
                        r
                    }
                };
                if r.is_err() {
                    died = true;
                    break;
                }
            }
            if let Some(vol) = v.take() {
                vol.abandon();
            }
            worst = worst.max(n);
            let mut rng = Rng::new(n * 1000 + cutseed);
            let how = match cutseed {
                0 => Cut::LoseAll,
                1 => Cut::KeepAll,
                _ => Cut::Random,
            };
            let d2 = Arc::new(disk.power_cut(how, &mut rng));
            let v2 = open(&d2).unwrap_or_else(|e| panic!("{label} n={n} cut={cutseed}: open {e}"));
            for b in 0..blocks as usize {
                let mut got = vec![0u8; bs as usize];
                let r = v2.read_at(&mut got, b as u64 * u64::from(bs));
                let ok = r.is_ok() && (got == committed[b] || later[b].contains(&got));
                assert!(
                    ok,
                    "{label} n={n} cut={cutseed} died={died} block {b}: read {:?} first byte {} committed {} later {:?}",
                    r.err(),
                    got[0],
                    committed[b][0],
                    later[b].iter().map(|x| x[0]).collect::<Vec<_>>()
                );
            }
            // Reopen again (re-applying the last epoch) and read again.
            v2.close().unwrap();
            let v3 = open(&d2).unwrap();
            for b in 0..blocks as usize {
                let mut got = vec![0u8; bs as usize];
                let r = v3.read_at(&mut got, b as u64 * u64::from(bs));
                assert!(
                    r.is_ok(),
                    "{label} n={n} second open block {b}: {:?}",
                    r.err()
                );
            }
            if !died {
                eprintln!("{label}: finished at n={n}");
                return;
            }
        }
    }
    panic!("{label}: never finished ({worst})");
}

#[test]
fn data_home_trims_and_first_writes_are_old_or_new_at_every_disk_operation() {
    use Op::*;
    dh_script(
        &[
            W(3, 1),
            F,
            Z(3),
            F,
            W(3, 2),
            W(3, 3),
            W2(4, 4),
            F,
            Z(3),
            W(3, 5),
            F,
            Z(3),
            F,
            W(3, 6),
            Z(3),
            W(3, 7),
            F,
            Reopen,
            W(3, 8),
            Z(4),
            F,
            W(4, 9),
            Reopen,
            Z(4),
            F,
            W(4, 10),
            F,
        ],
        "A",
    );
}

#[test]
fn data_home_partial_writes_and_reopens_are_old_or_new_at_every_disk_operation() {
    use Op::*;
    dh_script(
        &[
            P(2, 1),
            W(2, 2),
            F,
            Z(2),
            F,
            Reopen,
            P(2, 3),
            P(2, 4),
            F,
            Z(2),
            P(2, 5),
            F,
            Reopen,
            Z(2),
            F,
            Reopen,
            W(2, 6),
            Reopen,
            W(2, 7),
            F,
        ],
        "B",
    );
}

/// Review of 7520542: writers (write / trim / flush) and readers racing on 4 blocks of one
/// metadata page; every read must be a value some writer wrote (or zeros), never an error.
#[test]
fn data_home_and_the_entry_cache_under_racing_readers_and_writers() {
    let disk = Arc::new(SimDisk::new());
    let bs = 512usize;
    let v = Arc::new(create(&disk, 64 * bs as u64, bs as u32).unwrap());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut hs = Vec::new();
    for t in 0..2u64 {
        let v = v.clone();
        hs.push(std::thread::spawn(move || {
            let mut rng = Rng::new(t + 7);
            for i in 0..3000u64 {
                let b = rng.below(4);
                match rng.below(6) {
                    0 => v.write_zeroes(b * bs as u64, bs as u64).unwrap(),
                    1 => v.flush().unwrap(),
                    _ => {
                        let x = 1 + ((i + t) % 250) as u8;
                        let mut buf = vec![x; bs];
                        buf[..8].copy_from_slice(&b.to_be_bytes());
                        v.write_at(&buf, b * bs as u64).unwrap()
                    }
                }
            }
        }));
    }
    let mut rs = Vec::new();
    for t in 0..2u64 {
        let v = v.clone();
        let stop = stop.clone();
        rs.push(std::thread::spawn(move || {
            let mut rng = Rng::new(t + 70);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let b = rng.below(4);
                let mut got = vec![0u8; bs];
                v.read_at(&mut got, b * bs as u64)
                    .unwrap_or_else(|e| panic!("read block {b}: {e}"));
                let zeros = got.iter().all(|&c| c == 0);
                let ours = got[..8] == b.to_be_bytes() && got[8..].iter().all(|&c| c == got[8]);
                assert!(zeros || ours, "block {b} read wrong bytes");
                n += 1;
            }
            n
        }));
    }
    for h in hs {
        h.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let reads: u64 = rs.into_iter().map(|h| h.join().unwrap()).sum();
    eprintln!("racing reads: {reads}");
}
