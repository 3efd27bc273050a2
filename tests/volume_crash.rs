//! Crash harness (a): a child process writing to a file-backed volume is killed with SIGKILL at
//! random moments, hundreds of times; after each kill the volume is reopened (journal recovery)
//! and every block must read without error as its content at the last flush the child logged,
//! or as a value the child wrote to it after that flush.
//!
//! The child is this test binary run again with `KEV_CRASH_CHILD` set. It writes a sequence of
//! writes drawn from a seed (aligned, unaligned, zeroes), flushes now and then, and appends the
//! step number to a log file after each flush returns; now and then it rekeys (with the same
//! keyring), adds or removes a second key slot. The page cache survives SIGKILL, so the
//! log tells exactly which writes were acknowledged as flushed. (A power cut is harness (b), in
//! `src/volume/crash_tests.rs`, on a simulated disk.)
#![cfg(all(feature = "volume", unix))]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kms_envelope::volume::{Volume, VolumeOptions};
use kms_envelope::{RawAesKeyring, VolumeError};

const THIS_TEST: &str = "sigkill_at_random_moments_keeps_every_flushed_write";
const CHILD_ENV: &str = "KEV_CRASH_CHILD";
const BLOCK: u32 = 4096;
const BLOCKS: u64 = 48;
/// The smallest journal (16 slots): checkpoints happen mid-run, so kills land inside them.
const JOURNAL: u64 = 16 * BLOCK as u64;
/// A child stops here if it was not killed first (then the round counts no kill).
const MAX_STEPS: u64 = 5000;
const KILLS: u32 = 220;

fn keyring() -> RawAesKeyring {
    RawAesKeyring::new("crash-test", "wrapping-key", &[0x5a; 32]).unwrap()
}

fn second_keyring() -> RawAesKeyring {
    RawAesKeyring::new("crash-test", "second-key", &[0xa5; 32]).unwrap()
}

/// SplitMix64: the child and the parent draw the same writes from a seed.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// One step of the child's workload.
enum Step {
    Write { offset: u64, data: Vec<u8> },
    Zeroes { offset: u64, len: u64 },
}

impl Step {
    /// Step `k` (from 1) of the round with `seed`; the same on both sides.
    fn draw(seed: u64, k: u64) -> (Step, bool) {
        let mut rng = Rng(seed ^ k.wrapping_mul(0xd6e8_feb8_6659_fd93));
        let size = BLOCKS * u64::from(BLOCK);
        let block = u64::from(BLOCK);
        let step = match rng.below(10) {
            // Aligned, one to four blocks.
            0..=5 => {
                let n = 1 + rng.below(4);
                let first = rng.below(BLOCKS - n + 1);
                let mut data = vec![0u8; (n * block) as usize];
                fill(&mut rng, &mut data);
                Step::Write {
                    offset: first * block,
                    data,
                }
            }
            // Unaligned, up to two blocks, may cross a boundary.
            6 | 7 => {
                let len = 1 + rng.below(2 * block);
                let offset = rng.below(size - len + 1);
                let mut data = vec![0u8; len as usize];
                fill(&mut rng, &mut data);
                Step::Write { offset, data }
            }
            // Zeroes, aligned or not.
            _ => {
                let len = 1 + rng.below(3 * block);
                let offset = if rng.below(2) == 0 {
                    rng.below(BLOCKS) * block
                } else {
                    rng.below(size)
                };
                Step::Zeroes {
                    offset,
                    len: len.min(size - offset),
                }
            }
        };
        let flush = rng.below(8) == 0;
        (step, flush)
    }

    fn apply_to(&self, image: &mut [u8]) {
        match self {
            Step::Write { offset, data } => {
                image[*offset as usize..*offset as usize + data.len()].copy_from_slice(data)
            }
            Step::Zeroes { offset, len } => {
                image[*offset as usize..(*offset + *len) as usize].fill(0)
            }
        }
    }

    fn blocks(&self) -> std::ops::Range<u64> {
        let (offset, len) = match self {
            Step::Write { offset, data } => (*offset, data.len() as u64),
            Step::Zeroes { offset, len } => (*offset, *len),
        };
        let b = u64::from(BLOCK);
        offset / b..(offset + len).div_ceil(b)
    }
}

fn fill(rng: &mut Rng, buf: &mut [u8]) {
    for chunk in buf.chunks_mut(8) {
        let word = rng.next_u64().to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
}

/// The child: opens the volume, runs the round's steps, logs each flush that returned.
fn child(spec: &str) -> ! {
    let mut parts = spec.split('|');
    let volume = PathBuf::from(parts.next().unwrap());
    let log = PathBuf::from(parts.next().unwrap());
    let seed: u64 = parts.next().unwrap().parse().unwrap();
    let keyring = keyring();
    let vol = Volume::open(&volume, &keyring).expect("child: open");
    let mut log = std::fs::OpenOptions::new().append(true).open(log).unwrap();
    log.write_all(b"open\n").unwrap();
    for k in 1..=MAX_STEPS {
        let (step, flush) = Step::draw(seed, k);
        match step {
            Step::Write { offset, data } => vol.write_at(&data, offset).expect("child: write"),
            Step::Zeroes { offset, len } => vol.write_zeroes(offset, len).expect("child: zeroes"),
        }
        // Now and then a key operation, so kills land inside header updates and rekeys too
        // (rekey with the same keyring: the parent reopens with it whatever the state).
        match Rng(seed ^ k.wrapping_mul(0x9e37_79b9_7f4a_7c15)).below(80) {
            0 => vol.rekey(&keyring, &|_, _| {}).expect("child: rekey"),
            1 => vol.add_key(&second_keyring()).expect("child: add_key"),
            2 => match vol.remove_key(&second_keyring()) {
                Ok(_) | Err(kms_envelope::Error::Volume(VolumeError::NoSuchKeySlot)) => {}
                Err(e) => panic!("child: remove_key: {e}"),
            },
            _ => {}
        }
        if flush {
            vol.flush().expect("child: flush");
            // One write(2) of a whole line: the parent reads only complete lines.
            log.write_all(format!("{k}\n").as_bytes()).unwrap();
        }
    }
    vol.close().expect("child: close");
    std::process::exit(0)
}

/// The last flushed step the child logged (0: none), how many flushes it logged, and whether
/// it got the volume open.
fn read_log(log: &Path) -> (u64, u64, bool) {
    let text = std::fs::read_to_string(log).unwrap();
    let mut opened = false;
    let (mut last, mut flushes) = (0, 0);
    for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
        let line = line.trim_end();
        if line == "open" {
            opened = true;
        } else {
            last = line.parse().unwrap();
            flushes += 1;
        }
    }
    (last, flushes, opened)
}

/// Reads every block of the volume; any read error fails the test with the block and round.
fn read_all(vol: &Volume, round: u32) -> Vec<u8> {
    let mut image = vec![0u8; (BLOCKS * u64::from(BLOCK)) as usize];
    for (i, block) in image.chunks_mut(BLOCK as usize).enumerate() {
        if let Err(e) = vol.read_at(block, i as u64 * u64::from(BLOCK)) {
            panic!("round {round}: block {i} does not read after the kill: {e}");
        }
    }
    image
}

/// Checks each block of `actual` is its content after step `flushed` of the round, or its
/// content after a later step that wrote it.
fn verify(base: &[u8], seed: u64, flushed: u64, actual: &[u8], round: u32) {
    let b = BLOCK as usize;
    let mut model = base.to_vec();
    for k in 1..=flushed {
        Step::draw(seed, k).0.apply_to(&mut model);
    }
    let mut pending: Vec<bool> = (0..BLOCKS as usize)
        .map(|i| model[i * b..(i + 1) * b] != actual[i * b..(i + 1) * b])
        .collect();
    let mut k = flushed;
    while pending.iter().any(|&p| p) && k < MAX_STEPS {
        k += 1;
        let (step, _) = Step::draw(seed, k);
        step.apply_to(&mut model);
        for i in step.blocks() {
            let i = i as usize;
            if pending[i] && model[i * b..(i + 1) * b] == actual[i * b..(i + 1) * b] {
                pending[i] = false;
            }
        }
    }
    let bad: Vec<usize> = (0..BLOCKS as usize).filter(|&i| pending[i]).collect();
    assert!(
        bad.is_empty(),
        "round {round} (seed {seed}, last logged flush after step {flushed}): blocks {bad:?} \
         are neither their flushed content nor a later write of the child"
    );
}

#[test]
fn sigkill_at_random_moments_keeps_every_flushed_write() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        child(&spec);
    }
    let started = Instant::now();
    // On tmpfs (when there is one) fdatasync costs nothing, so the child spends its time in
    // sealing, journal writes and checkpoints' home writes, and kills land inside them rather
    // than inside a sync; SIGKILL keeps the page cache either way, so nothing else changes.
    let dir = match Path::new("/dev/shm") {
        shm if shm.is_dir() && std::env::var_os("KEV_CRASH_ON_DISK").is_none() => {
            tempfile::tempdir_in(shm).unwrap()
        }
        _ => tempfile::tempdir().unwrap(),
    };
    let volume = dir.path().join("vol");
    let log = dir.path().join("log");
    let keyring = keyring();
    let options = VolumeOptions::default()
        .block_size(BLOCK)
        .journal_bytes(JOURNAL);
    Volume::create(&volume, BLOCKS * u64::from(BLOCK), &keyring, options)
        .unwrap()
        .close()
        .unwrap();
    let mut base = vec![0u8; (BLOCKS * u64::from(BLOCK)) as usize];
    let master = std::env::var("KEV_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0001u64);
    let mut rng = Rng(master);
    let (mut kills, mut rounds, mut flushed_total, mut unopened) = (0u32, 0u32, 0u64, 0u32);
    // The child's start-up (exec, open, recovery) takes a few milliseconds; the delays spread
    // kills over start-up, recovery, writes and checkpoints.
    while kills < KILLS {
        rounds += 1;
        let seed = rng.next_u64();
        std::fs::write(&log, b"").unwrap();
        let spec = format!("{}|{}|{seed}", volume.display(), log.display());
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([THIS_TEST, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, spec)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let delay = Duration::from_micros(500 + rng.below(60_000));
        std::thread::sleep(delay);
        let killed = match child.try_wait().unwrap() {
            Some(_) => false,
            None => {
                child.kill().unwrap();
                true
            }
        };
        let output = child.wait_with_output().unwrap();
        if !killed {
            // It finished (or failed) on its own: a failure is a bug, not a kill.
            assert!(
                output.status.success(),
                "round {rounds}: the child failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        } else {
            kills += 1;
        }
        let (flushed, flushes, opened) = read_log(&log);
        unopened += u32::from(!opened);
        flushed_total += flushes;
        let vol = Volume::open(&volume, &keyring)
            .unwrap_or_else(|e| panic!("round {rounds}: reopening after the kill failed: {e}"));
        let actual = read_all(&vol, rounds);
        verify(&base, seed, flushed, &actual, rounds);
        vol.close().unwrap();
        base = actual;
    }
    let info = Volume::info(&volume).unwrap();
    println!(
        "volume crash harness (a): {kills} SIGKILLs in {rounds} rounds ({unopened} during \
         start-up or recovery, {flushed_total} flushes logged, {} rekeys begun), every block \
         old-or-new and every logged flush kept, in {:.1} s",
        info.write_gen - 1,
        started.elapsed().as_secs_f64()
    );
}
