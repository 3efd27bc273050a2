//! Review attack tests (rev-v): each asserts the safe behaviour; the ones that fail on `vol`
//! 86d2367 demonstrate a finding.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::layout::{Header, HEADER_MAX, HEADER_OFFSETS};
use super::tests::MemDisk;
use super::*;
use crate::format::EncryptedDataKey;
use crate::materials::{DecryptionMaterials, EncryptionMaterials};
use crate::RawAesKeyring;

fn ring(name: &str, byte: u8) -> RawAesKeyring {
    RawAesKeyring::new("test", name, &[byte; 32]).unwrap()
}

fn opts() -> VolumeOptions {
    VolumeOptions::default().journal_bytes(64 * 4096)
}

fn peek(disk: &MemDisk, off: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    disk.read_at(&mut b, off).unwrap();
    b
}

fn block(v: &Volume, index: u64) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    v.read_at(&mut buf, index * 4096)?;
    Ok(buf)
}

/// A keyring whose first `fail` unwraps fail as a KMS throttle or network error would.
#[derive(Debug)]
struct Flaky {
    inner: RawAesKeyring,
    fail: AtomicUsize,
}

#[async_trait::async_trait]
impl Keyring for Flaky {
    async fn on_encrypt(&self, m: &mut EncryptionMaterials) -> Result<()> {
        self.inner.on_encrypt(m).await
    }
    async fn on_decrypt(
        &self,
        m: &mut DecryptionMaterials,
        edks: &[EncryptedDataKey],
    ) -> Result<()> {
        if self
            .fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(Error::Keyring("ThrottlingException (simulated)".into()));
        }
        self.inner.on_decrypt(m, edks).await
    }
}

/// F1: mid-rekey, before the first cursor update, the older header copy is the pre-rekey one.
/// Opening with the old key must not silently open that copy (it drops generation 2 and the
/// flushed writes made under it); a later header write then destroys generation 2's slots.
#[test]
fn f1_old_key_mid_rekey_must_not_open_the_pre_rekey_header() {
    let disk = MemDisk::new();
    let (a, b, c) = (ring("a", 0x11), ring("b", 0x22), ring("c", 0x33));
    let v = Volume::create_on(disk.clone(), 64 * 4096, &a, opts()).unwrap();
    v.write_at(&[1; 8 * 4096], 0).unwrap();
    v.flush().unwrap();
    v.rekey_steps(&b, &|_, _| {}, Some(0)).unwrap(); // interrupted before any cursor update
    v.write_at(&[0xEE; 4096], 3 * 4096).unwrap();
    v.flush().unwrap(); // acknowledged: must survive
    v.abandon();
    let mut seen = Vec::new();
    match Volume::open_on(disk.clone(), &a) {
        Err(e) => seen.push(format!("open with old key A: Err({e})")),
        Ok(v) => {
            let st = v.state.read().unwrap();
            seen.push(format!(
                "open with old key A: Ok, write_gen {} gens {:?} rekey_from {}",
                st.header.write_gen,
                st.header.gens.iter().map(|g| g.gen).collect::<Vec<_>>(),
                st.header.rekey_from_gen
            ));
            drop(st);
            seen.push(format!(
                "read block 3 (flushed 0xEE): {:?}",
                block(&v, 3).map(|b| b[0])
            ));
            // The operator, seeing no rekey in progress, starts one again.
            seen.push(format!("rekey(C): {:?}", v.rekey(&c, &|_, _| {})));
            seen.push(format!("close: {:?}", v.close()));
            seen.push(format!(
                "open with B: {:?}",
                Volume::open_on(disk.clone(), &b).map(|_| ())
            ));
            if let Ok(v) = Volume::open_on(disk.clone(), &c) {
                seen.push(format!(
                    "open with C, read block 3: {:?}",
                    block(&v, 3).map(|b| b[0])
                ));
                seen.push(format!("check bad: {:?}", v.check(&|_, _| {}).unwrap().bad));
            }
        }
    }
    let ok = seen[0].contains("Err(");
    assert!(ok, "{}", seen.join("\n"));
}

/// F1b: a transient keyring failure on the newest copy makes open fall back to the older copy
/// (here: the pre-rekey header), instead of reporting the error.
#[test]
fn f1b_transient_keyring_error_must_not_open_the_older_header() {
    let disk = MemDisk::new();
    let a = ring("a", 0x11);
    let v = Volume::create_on(disk.clone(), 64 * 4096, &a, opts()).unwrap();
    v.rekey_steps(&a, &|_, _| {}, Some(0)).unwrap();
    v.write_at(&[0xEE; 4096], 3 * 4096).unwrap();
    v.flush().unwrap();
    v.abandon();
    let flaky = Flaky {
        inner: ring("a", 0x11),
        fail: AtomicUsize::new(1),
    };
    match Volume::open_on(disk.clone(), &flaky) {
        Err(e) => eprintln!("open: Err({e}) (safe)"),
        Ok(v) => {
            let gen = v.state.read().unwrap().header.write_gen;
            panic!(
                "a throttled unwrap silently opened the older header: write_gen {gen}, block 3 = {:?}",
                block(&v, 3).map(|b| b[0])
            );
        }
    }
}

/// F1c: the seal counter goes backwards when open falls back to the older copy after a
/// reservation reached one copy only. (Adapted from the review: there a throttled unwrap made
/// the fallback, which F1b now refuses; here a crash between the two copy writes and a torn
/// newer copy do, the one fallback left.)
#[test]
fn f1c_seal_count_must_not_go_backwards_on_fallback() {
    let disk = MemDisk::new();
    let a = ring("a", 0x11);
    let v = Volume::create_on(disk.clone(), 64 * 4096, &a, opts()).unwrap();
    let made = v.seals.load(Ordering::SeqCst);
    v.reserved.store(made + 1, Ordering::SeqCst);
    let newer = HEADER_OFFSETS[1 - v.state.read().unwrap().current_copy];
    // The reservation's first header copy lands, the second write fails (a crash).
    disk.fail_after(1);
    assert!(v.write_at(&[5; 8192], 0).is_err());
    let r2 = Header::decode(&peek(&disk, newer, HEADER_MAX))
        .unwrap()
        .0
        .seals_reserved;
    assert!(r2 > made + 1);
    v.abandon();
    disk.heal();
    // That newer copy is then torn (its MAC no longer verifies).
    let region = peek(&disk, newer, HEADER_MAX);
    let (h, body, _) = Header::decode(&region).unwrap();
    assert_eq!(h.seals_reserved, r2);
    let mac_at = newer + body.len() as u64;
    let mut mac = peek(&disk, mac_at, 1);
    mac[0] ^= 1;
    disk.poke(mac_at, &mac);
    let v = Volume::open_on(disk.clone(), &a).expect("opened the older copy");
    let seals = v.seals.load(Ordering::SeqCst);
    assert!(
        seals >= r2,
        "count restarted at {seals}, below the {r2} reserved (and possibly made)"
    );
}

/// F1 (2): a keyring failure that is not a refusal is reported, not a reason to open another copy.
#[test]
fn f1d_throttled_open_reports_the_error_with_identical_copies() {
    let disk = MemDisk::new();
    let a = ring("a", 0x11);
    let v = Volume::create_on(disk.clone(), 64 * 4096, &a, opts()).unwrap();
    v.close().unwrap();
    let flaky = Flaky {
        inner: ring("a", 0x11),
        fail: AtomicUsize::new(1),
    };
    let err = Volume::open_on(disk.clone(), &flaky).unwrap_err();
    assert!(err.to_string().contains("Throttling"), "{err}");
    // A keyring with no matching slot is refused on both copies: no usable key.
    let err = Volume::open_on(disk.clone(), &ring("z", 0x99)).unwrap_err();
    assert!(matches!(err, Error::NoUsableDataKey(_)), "{err:?}");
    Volume::open_on(disk, &a).unwrap().close().unwrap();
}

/// F2: remove_key rewrites both copies, but only `header_len` bytes of each: the tail of the
/// previous, longer header stays in the 64 KiB region, removed slot included.
#[test]
fn f2_removed_slot_must_not_survive_in_the_header_region() {
    let disk = MemDisk::new();
    let a = ring("a", 0x11);
    let long = "a-removed-key-with-a-rather-long-name-to-be-realistic";
    let b = ring(long, 0x22);
    let v = Volume::create_on(disk.clone(), 64 * 4096, &a, opts()).unwrap();
    v.add_key(&b).unwrap();
    let slot_b = v.state.read().unwrap().header.gens[0].slots[1].clone();
    let key = v.state.read().unwrap().keys[0]
        .volume_key()
        .as_bytes()
        .to_vec();
    assert_eq!(v.remove_key(&b).unwrap(), 1);
    v.close().unwrap();
    // Both copies parse with one slot only...
    for off in HEADER_OFFSETS {
        let region = peek(&disk, off, HEADER_MAX);
        let (h, _, _) = Header::decode(&region).unwrap();
        assert_eq!(h.gens[0].slots.len(), 1);
    }
    // ...yet B's wrapped key (IV inside provider_info, and the ciphertext) is still on disk.
    let regions = peek(&disk, 0, 2 * HEADER_MAX);
    let find = |needle: &[u8]| regions.windows(needle.len()).position(|w| w == needle);
    let iv = &slot_b.provider_info[slot_b.provider_info.len() - 12..];
    let (ct_at, iv_at) = (find(&slot_b.ciphertext), find(iv));
    eprintln!("removed slot's ciphertext at {ct_at:?}, its IV at {iv_at:?} (header regions)");
    if let (Some(ct_at), Some(iv_at)) = (ct_at, iv_at) {
        // Rebuild the slot from the leftover bytes: provider ID, key name and lengths are
        // public; IV and ciphertext come from the image.
        let mut info = slot_b.provider_info[..slot_b.provider_info.len() - 12].to_vec();
        info.extend_from_slice(&regions[iv_at..iv_at + 12]);
        let rebuilt = EncryptedDataKey {
            provider_id: "test".into(),
            provider_info: info,
            ciphertext: regions[ct_at..ct_at + slot_b.ciphertext.len()].to_vec(),
        };
        let got = keys::unwrap(&b, &v_id(&disk), 1, &[rebuilt], |_| true).unwrap();
        assert_ne!(
            got.as_bytes(),
            &key[..],
            "the removed key B still unwraps the volume key from bytes left in the header region"
        );
    }
}

fn v_id(disk: &MemDisk) -> [u8; 32] {
    Header::decode(&peek(disk, 0, HEADER_MAX))
        .unwrap()
        .0
        .volume_id
}

/// F3: every open burns a whole reservation step (2^20) of the seal budget as soon as one
/// write is made, even after a clean close: an AES-GCM volume (2^32) runs out after 4096
/// sessions whatever it wrote.
#[test]
fn f3_clean_sessions_must_not_burn_the_seal_budget() {
    let disk = MemDisk::new();
    let a = ring("a", 0x11);
    let v = Volume::create_on(disk.clone(), 64 * 4096, &a, opts().aead(VolumeAead::Gcm)).unwrap();
    let start = v.state.read().unwrap().header.seals_reserved;
    v.close().unwrap();
    for _ in 0..3 {
        let v = Volume::open_on(disk.clone(), &a).unwrap();
        v.write_at(&[1; 4096], 0).unwrap();
        v.close().unwrap();
    }
    let v = Volume::open_on(disk.clone(), &a).unwrap();
    let end = v.state.read().unwrap().header.seals_reserved;
    // (The close now cuts create's reservation back too: the count may end below `start`.)
    let used = end.saturating_sub(start);
    assert!(
        used < 1 << 20,
        "3 sessions of 1 seal each reserved {used} seals ({} steps of 2^20); GCM allows 2^32",
        used >> 20
    );
    assert!(
        end >= 64 + 3,
        "the reservation covers every seal made: {end}"
    );
}

/// Concurrency: unaligned writes of disjoint bytes of one block from many threads (the RMW must
/// not lose updates), readers racing them (no spurious EIO), a tiny journal (checkpoints race).
#[test]
fn c1_unaligned_rmw_is_atomic_and_reads_never_fail() {
    let disk = MemDisk::new();
    let a = ring("a", 0x11);
    let v = Arc::new(
        Volume::create_on(
            disk.clone(),
            64 * 4096,
            &a,
            VolumeOptions::default().journal_bytes(16 * 4096),
        )
        .unwrap(),
    );
    let threads = 8usize;
    let rounds = 300u32;
    let mut hs = Vec::new();
    for t in 0..threads {
        let v = v.clone();
        hs.push(std::thread::spawn(move || {
            for r in 0..rounds {
                let val = (r % 250 + 1) as u8;
                // thread t owns bytes [t*100+1 .. t*100+51) of blocks 2 and 3 (spanning)
                v.write_at(&[val; 50], 2 * 4096 + t as u64 * 100 + 1)
                    .unwrap();
                v.write_at(&[val; 100], 3 * 4096 - 450 + t as u64 * 100)
                    .unwrap();
                let mut buf = vec![0u8; 777];
                v.read_at(&mut buf, 2 * 4096 + 3).unwrap();
                if r % 37 == 0 {
                    v.flush().unwrap();
                }
            }
        }));
    }
    for h in hs {
        h.join().unwrap();
    }
    let last = ((rounds - 1) % 250 + 1) as u8;
    let b2 = block(&v, 2).unwrap();
    for t in 0..threads {
        let s = t * 100 + 1;
        assert!(
            b2[s..s + 50].iter().all(|&x| x == last),
            "thread {t}'s bytes lost: {:?}",
            &b2[s..s + 50]
        );
    }
    let mut span = vec![0u8; 800];
    v.read_at(&mut span, 3 * 4096 - 450).unwrap();
    assert!(
        span.iter().all(|&x| x == last),
        "a spanning RMW lost an update"
    );
}

/// C2: two rekeys started at once both pass the "not resuming" check (read outside the gate);
/// the second pushes a third generation and the header write fails the whole volume. A reader
/// holding the gate (any in-flight read) keeps both waiting after their check.
#[test]
fn c2_concurrent_rekey_starts_must_not_fail_the_volume() {
    let disk = MemDisk::new();
    let a = ring("a", 0x11);
    let v = Arc::new(Volume::create_on(disk.clone(), 64 * 4096, &a, opts()).unwrap());
    let reader = v.gate.read().unwrap(); // an in-flight read, say
    let hs: Vec<_> = (0..2)
        .map(|_| {
            let v = v.clone();
            std::thread::spawn(move || {
                v.rekey(&ring("a", 0x11), &|_, _| {})
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(300));
    drop(reader);
    let rs: Vec<_> = hs.into_iter().map(|h| h.join().unwrap()).collect();
    let failed = v.failed.load(Ordering::SeqCst);
    let gens = v.state.read().unwrap().header.gens.len();
    eprintln!("C2 results {rs:?}; in-memory gens {gens}; failed {failed}");
    assert!(
        !failed,
        "results {rs:?}; in-memory gens {gens}; the volume is now Failed"
    );
    // One rekey ran to the end; the other either followed it or was told one is in progress.
    assert_eq!(gens, 1);
    assert!(rs.iter().any(|r| r.is_ok()), "{rs:?}");
    assert!(
        rs.iter()
            .all(|r| r.as_ref().is_ok() || r.as_ref().is_err_and(|e| e.contains("in progress"))),
        "{rs:?}"
    );
}

/// F2b: the end of a rekey rewrites both copies with a shorter header: slots of the dropped
/// generation (wrapped by keys the rekey meant to revoke) stay in the region's slack.
#[test]
fn f2b_dropped_generation_slots_must_not_survive_a_rekey() {
    let disk = MemDisk::new();
    let a = ring("a", 0x11);
    let revoked = ring("revoked-key-with-a-long-enough-name-for-the-demo", 0x44);
    let v = Volume::create_on(disk.clone(), 64 * 4096, &a, opts()).unwrap();
    v.add_key(&revoked).unwrap();
    let slot = v.state.read().unwrap().header.gens[0].slots[1].clone();
    let old_key = v.state.read().unwrap().keys[0]
        .volume_key()
        .as_bytes()
        .to_vec();
    v.rekey(&a, &|_, _| {}).unwrap(); // generation 2 has A's slot only
    v.close().unwrap();
    let regions = peek(&disk, 0, 2 * HEADER_MAX);
    let find = |needle: &[u8]| regions.windows(needle.len()).position(|w| w == needle);
    let iv = &slot.provider_info[slot.provider_info.len() - 12..];
    let (ct_at, iv_at) = (find(&slot.ciphertext), find(iv));
    eprintln!("revoked generation-1 slot: ciphertext at {ct_at:?}, IV at {iv_at:?}");
    if let (Some(ct_at), Some(iv_at)) = (ct_at, iv_at) {
        let mut info = slot.provider_info[..slot.provider_info.len() - 12].to_vec();
        info.extend_from_slice(&regions[iv_at..iv_at + 12]);
        let rebuilt = EncryptedDataKey {
            provider_id: "test".into(),
            provider_info: info,
            ciphertext: regions[ct_at..ct_at + slot.ciphertext.len()].to_vec(),
        };
        let got = keys::unwrap(&revoked, &v_id(&disk), 1, &[rebuilt], |_| true).unwrap();
        assert_ne!(
            got.as_bytes(),
            &old_key[..],
            "the revoked key unwraps generation 1's key"
        );
    }
}
