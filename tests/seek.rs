//! Random access (re-wrap has its own tests, in rewrap.rs).

#[path = "support/data.rs"]
mod data;
#[path = "support/tamper.rs"]
mod tamper;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Seek, SeekFrom};
use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(feature = "tokio")]
use std::sync::{atomic::AtomicBool, Arc};

use kms_envelope::format::FormatError;
use kms_envelope::stream::ReadAt;

use kms_envelope::{AlgorithmSuite, Decryptor, Encryptor, Error, RawAesKeyring};

const FRAME: u32 = 65_536;

fn keyring() -> RawAesKeyring {
    RawAesKeyring::new("seek", "key", &[0x21; 32]).unwrap()
}

use data::pseudo_random as data;

/// Counts this thread's heap (live bytes, peak, bytes allocated), and on request looks for a
/// marker in every block this thread frees: the seekable reader works on the caller's thread,
/// so other tests running beside it do not disturb the figures.
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
    static ALLOCATED: Cell<usize> = const { Cell::new(0) };
    static SCAN: Cell<bool> = const { Cell::new(false) };
    static FREED_WITH_MARKER: Cell<usize> = const { Cell::new(0) };
}

/// Plaintext that must never be freed unzeroized.
const MARKER: &[u8; 16] = b"PLAINTEXT-MARK!!";

fn counted(size: usize, grow: bool) {
    let _ = LIVE.try_with(|live| {
        let now = if grow {
            live.get() + size as isize
        } else {
            live.get() - size as isize
        };
        live.set(now);
        if grow {
            let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
            let _ = ALLOCATED.try_with(|a| a.set(a.get() + size));
        }
    });
}

// SAFETY: forwards to the system allocator; only counts, and reads a block before freeing it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            counted(l.size(), true);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        if SCAN.try_with(Cell::get).unwrap_or(false) {
            // SAFETY: `p` is a live block of `l.size()` bytes until it is freed below.
            let block = unsafe { std::slice::from_raw_parts(p, l.size()) };
            if block.windows(MARKER.len()).any(|w| w == MARKER) {
                let _ = FREED_WITH_MARKER.try_with(|n| n.set(n.get() + 1));
            }
        }
        unsafe { System.dealloc(p, l) };
        counted(l.size(), false);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        if SCAN.try_with(Cell::get).unwrap_or(false) {
            // A move frees the old block: through `dealloc`, so that it is scanned.
            let q = unsafe { self.alloc(Layout::from_size_align_unchecked(new, l.align())) };
            if !q.is_null() {
                unsafe { std::ptr::copy_nonoverlapping(p, q, l.size().min(new)) };
                unsafe { self.dealloc(p, l) };
            }
            return q;
        }
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            counted(l.size(), false);
            counted(new, true);
        }
        q
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// This thread's heap while `f` runs: (peak growth above the start, bytes allocated).
fn heap_use<T>(f: impl FnOnce() -> T) -> (T, usize, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let before = ALLOCATED.with(Cell::get);
    let t = f();
    let peak = (PEAK.with(Cell::get) - base).max(0) as usize;
    (t, peak, ALLOCATED.with(Cell::get) - before)
}

/// A source that counts the bytes and calls it serves: the work a read costs.
struct CountingSource<'a> {
    bytes: &'a [u8],
    read: AtomicU64,
    calls: AtomicU64,
}

impl<'a> CountingSource<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        CountingSource {
            bytes,
            read: AtomicU64::new(0),
            calls: AtomicU64::new(0),
        }
    }
    fn take(&self) -> (u64, u64) {
        (
            self.read.swap(0, Ordering::SeqCst),
            self.calls.swap(0, Ordering::SeqCst),
        )
    }
}

impl ReadAt for CountingSource<'_> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.read.fetch_add(buf.len() as u64, Ordering::SeqCst);
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.bytes.read_exact_at(buf, offset)
    }
    fn size(&self) -> std::io::Result<u64> {
        self.bytes.size()
    }
}

#[test]
fn random_ranges_of_a_256_mib_message() {
    let kr = keyring();
    let pt = data((256 << 20) + 12_345);
    let msg = Encryptor::new(&kr)
        .frame_length(FRAME)
        .encrypt(&pt)
        .unwrap();
    let r = Decryptor::new(&kr).seekable(&msg[..]).unwrap();
    assert_eq!(r.plaintext_len().unwrap(), pt.len() as u64);
    assert_eq!(r.frames(), (pt.len() as u64).div_ceil(u64::from(FRAME)));
    let f = FRAME as u64;
    let len = pt.len() as u64;
    let mut ranges = vec![
        (0, 0),
        (0, 1),
        (f - 1, f + 1),
        (f, 2 * f),
        (5 * f + 17, 5 * f + 4113),
        (len - 12_345, len),
        (len - 1, len),
        (len - 100_000, len),
    ];
    let mut x = 99u64;
    for _ in 0..200 {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        let start = (x >> 11) % len;
        let size = (x >> 40) % 300_000;
        ranges.push((start, (start + size).min(len)));
    }
    for (start, end) in ranges {
        let mut out = vec![0u8; (end - start) as usize];
        let mut at = 0;
        while at < out.len() {
            let n = r.read_at(start + at as u64, &mut out[at..]).unwrap();
            assert!(n > 0, "short read inside the plaintext");
            at += n;
        }
        assert!(
            out[..] == pt[start as usize..end as usize],
            "range {start}..{end}"
        );
    }
    // Past the end: nothing, and no error.
    assert_eq!(r.read_at(len, &mut [0u8; 10]).unwrap(), 0);
    assert_eq!(r.read_at(len + 1_000_000, &mut [0u8; 10]).unwrap(), 0);
    // Read + Seek with a cursor.
    let mut r = Decryptor::new(&kr).seekable(&msg[..]).unwrap();
    assert_eq!(r.seek(SeekFrom::End(-10)).unwrap(), len - 10);
    let mut tail = Vec::new();
    r.read_to_end(&mut tail).unwrap();
    assert_eq!(tail, &pt[pt.len() - 10..]);
    r.seek(SeekFrom::Start(3 * f - 5)).unwrap();
    let mut ten = [0u8; 10];
    r.read_exact(&mut ten).unwrap();
    assert_eq!(ten, pt[(3 * f - 5) as usize..(3 * f + 5) as usize]);
    assert!(r.seek(SeekFrom::Current(-1_000_000_000)).is_err());
}

#[test]
fn concurrent_readers_share_no_cursor() {
    let kr = keyring();
    let pt = data(4 << 20);
    let msg = Encryptor::new(&kr).frame_length(4096).encrypt(&pt).unwrap();
    let r = Decryptor::new(&kr).seekable(msg).unwrap();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (r, pt) = (&r, &pt);
            s.spawn(move || {
                for i in 0..200u64 {
                    let off = (t * 1_000_003 + i * 20_011) % (pt.len() as u64 - 5000);
                    let mut out = [0u8; 5000];
                    let mut at = 0;
                    while at < out.len() {
                        at += r.read_at(off + at as u64, &mut out[at..]).unwrap();
                    }
                    assert_eq!(&out[..], &pt[off as usize..off as usize + 5000]);
                }
            });
        }
    });
}

#[test]
fn tampering_fails_only_reads_that_touch_the_frame() {
    let kr = keyring();
    let pt = data(10 * 4096 + 100);
    let msg = Encryptor::new(&kr).frame_length(4096).encrypt(&pt).unwrap();
    let layout = tamper::layout(&msg);
    let frames = &layout.blocks;
    let mut bad = msg.clone();
    bad[frames[3].ciphertext.start + 500] ^= 1; // inside frame 4 (index 3)
    let r = Decryptor::new(&kr).seekable(&bad[..]).unwrap();
    let mut buf = [0u8; 100];
    assert!(r.read_at(2 * 4096 + 10, &mut buf).is_ok());
    assert!(matches!(
        r.read_at(3 * 4096 + 10, &mut buf),
        Err(Error::DecryptionFailed)
    ));
    assert!(r.read_at(4 * 4096 + 10, &mut buf).is_ok());
    // Two frames swapped: both fail (each carries its own sequence number).
    let mut swapped = msg.clone();
    let (a, b) = (frames[1].span.clone(), frames[2].span.clone());
    swapped[a.clone()].copy_from_slice(&msg[b.clone()]);
    swapped[b].copy_from_slice(&msg[a]);
    let r = Decryptor::new(&kr).seekable(&swapped[..]).unwrap();
    assert!(r.read_at(4096, &mut buf).is_err());
    assert!(r.read_at(2 * 4096, &mut buf).is_err());
    assert!(r.read_at(0, &mut buf).is_ok());
    // Truncated at a frame boundary: the frame structure has no final frame; refused at once.
    let last = frames.last().unwrap();
    let cut = &msg[..last.span.start];
    assert!(matches!(
        Decryptor::new(&kr).seekable(cut),
        Err(Error::Format(FormatError::Truncated))
    ));
    // A byte after the end: the final frame's length leaves it over.
    let mut longer = msg.clone();
    longer.extend_from_slice(&[0u8; 1]);
    assert!(matches!(
        Decryptor::new(&kr).seekable(&longer[..]),
        Err(Error::Format(FormatError::TrailingBytes))
    ));
    // A final frame whose stated length is altered fails its tag.
    let mut shorter = msg.clone();
    shorter[last.length.end - 1] -= 1;
    shorter.pop();
    let r = Decryptor::new(&kr).seekable(&shorter[..]).unwrap();
    assert!(matches!(r.plaintext_len(), Err(Error::DecryptionFailed)));
}

#[test]
fn signed_messages_need_an_explicit_opt_in() {
    let kr = keyring();
    let pt = data(100_000);
    let msg = Encryptor::new(&kr)
        .suite(AlgorithmSuite::Aes256GcmHkdfSha512CommitKeyEcdsaP384)
        .frame_length(4096)
        .encrypt(&pt)
        .unwrap();
    let err = Decryptor::new(&kr).seekable(&msg[..]).unwrap_err();
    assert!(err.to_string().contains("signature"), "{err}");
    let r = Decryptor::new(&kr)
        .dangerous_release_unverified_signed_frames(true)
        .seekable(&msg[..])
        .unwrap();
    assert_eq!(r.plaintext_len().unwrap(), pt.len() as u64);
    let mut out = vec![0u8; 1000];
    let n = r.read_at(50_000, &mut out).unwrap();
    assert_eq!(&out[..n], &pt[50_000..50_000 + n]);
}

/// Issue 15 item 3: many small reads within one big frame cost one frame read and decryption
/// and the bytes returned, not a frame's worth of copying each.
#[test]
fn small_reads_in_a_big_frame_cost_one_frame_decryption() {
    let kr = keyring();
    let frame = 1u64 << 20;
    let slot = frame + 32;
    let pt = data(3 * (1 << 20) + 777);
    let msg = Encryptor::new(&kr)
        .frame_length(frame as u32)
        .encrypt(&pt)
        .unwrap();
    let source = CountingSource::new(&msg);
    let mut r = Decryptor::new(&kr).seekable(&source).unwrap();
    source.take();
    let mut buf = [0u8; 1024];
    let mut out = Vec::with_capacity(pt.len());
    let ((), _, allocated) = heap_use(|| {
        for _ in 0..frame / 1024 {
            r.read_exact(&mut buf).unwrap();
            out.extend_from_slice(&buf);
        }
    });
    assert_eq!(out, &pt[..frame as usize]);
    // Each frame decryption reads exactly one frame from the source: one decryption here.
    assert_eq!(
        source.take(),
        (slot, 1),
        "source bytes and calls for 1,024 reads"
    );
    assert!(
        allocated <= slot as usize + 4096,
        "1,024 reads of 1 KiB allocated {allocated} bytes: more than one frame"
    );
    // Reads at scattered offsets: one decryption per change of frame, never more.
    let offsets: Vec<u64> = (0..300u64).map(|i| (i * 10_007) % (3 * frame)).collect();
    let mut changes = 0;
    let mut last = None;
    let ((), _, allocated) = heap_use(|| {
        for &o in &offsets {
            let n = r.read_at(o, &mut buf[..100]).unwrap();
            assert_eq!(&buf[..n], &pt[o as usize..o as usize + n]);
            if last != Some(o / frame) {
                changes += 1;
                last = Some(o / frame);
            }
        }
    });
    let (read, calls) = source.take();
    assert!(
        calls <= changes,
        "{calls} frame reads for {changes} frame changes"
    );
    assert!(read <= changes * slot);
    assert!(
        allocated <= 4096,
        "reads into a cached-size frame allocated {allocated}"
    );
}

/// Issue 11 item 3 on the seekable reader: its heap is one frame whatever the read size or
/// pattern (a caller on one thread).
#[test]
fn seekable_memory_is_one_frame_for_any_read_size() {
    let kr = keyring();
    let frame = 1usize << 20;
    let pt = data(3 * frame + 4321);
    let msg = Encryptor::new(&kr)
        .frame_length(frame as u32)
        .encrypt(&pt)
        .unwrap();
    let mut out = vec![0u8; pt.len()];
    for size in [1usize, 4096, 65_536, 1 << 20, 16 << 20] {
        out.fill(0);
        let (r, peak, _) = heap_use(|| {
            let mut r = Decryptor::new(&kr).seekable(&msg[..]).unwrap();
            let mut at = 0;
            while at < out.len() {
                let end = (at + size).min(out.len());
                let n = r.read(&mut out[at..end]).unwrap();
                assert!(n > 0);
                at += n;
            }
            // Backwards, across frames.
            for o in [pt.len() as u64 - 10, 2 * frame as u64 + 7, frame as u64 / 2] {
                r.seek(SeekFrom::Start(o)).unwrap();
                let n = r.read(&mut out[..size.min(1000)]).unwrap();
                assert_eq!(&out[..n], &pt[o as usize..o as usize + n]);
            }
            r
        });
        drop(r);
        assert!(
            peak <= frame + 32 + (64 << 10),
            "read size {size}: peak heap {peak} bytes for {frame}-byte frames"
        );
    }
}

/// Issue 11 item 8: the frame cache is zeroized when replaced and when dropped; no read frees
/// a copy of the plaintext.
#[test]
fn plaintext_is_never_freed_unzeroized() {
    let kr = keyring();
    let pt: Vec<u8> = MARKER
        .iter()
        .copied()
        .cycle()
        .take(5 * 4096 + 300)
        .collect();
    let msg = Encryptor::new(&kr).frame_length(4096).encrypt(&pt).unwrap();
    SCAN.with(|s| s.set(true));
    FREED_WITH_MARKER.with(|n| n.set(0));
    {
        let mut r = Decryptor::new(&kr).seekable(&msg[..]).unwrap();
        let mut buf = [0u8; 700];
        for o in [0u64, 100, 5000, 9000, 300, 20_000, 20_400] {
            let n = r.read_at(o, &mut buf).unwrap();
            assert_eq!(&buf[..n], &pt[o as usize..o as usize + n]);
        }
        assert_eq!(r.plaintext_len().unwrap(), pt.len() as u64);
        r.seek(SeekFrom::Start(0)).unwrap();
        for _ in 0..40 {
            r.read_exact(&mut buf[..512]).unwrap();
        }
    }
    SCAN.with(|s| s.set(false));
    let freed = FREED_WITH_MARKER.with(Cell::get);
    assert_eq!(
        freed, 0,
        "{freed} heap blocks were freed still holding plaintext"
    );
}

/// Issue 15 item 4: the footer is found from the frame structure, never by guessing the
/// signature length from its bytes, so every valid signed message opens.
#[test]
fn ten_thousand_signed_messages_open_through_the_seekable_reader() {
    let kr = keyring();
    let failures = std::sync::Mutex::new(Vec::new());
    let threads = 4u64;
    std::thread::scope(|s| {
        for t in 0..threads {
            let (kr, failures) = (&kr, &failures);
            s.spawn(move || {
                let mut x = 0x5EED_0000 + t;
                for i in (t..10_000).step_by(threads as usize) {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let len = (x >> 33) as usize % 300;
                    let frame = 1 + (x >> 50) as u32 % 100;
                    let pt: Vec<u8> = (0..len).map(|k| (k as u64 * 31 + i) as u8).collect();
                    let msg = Encryptor::new(kr)
                        .suite(AlgorithmSuite::Aes256GcmHkdfSha512CommitKeyEcdsaP384)
                        .frame_length(frame)
                        .encrypt(&pt)
                        .unwrap();
                    let read = || -> Result<Vec<u8>, Error> {
                        let r = Decryptor::new(kr)
                            .dangerous_release_unverified_signed_frames(true)
                            .seekable(&msg[..])?;
                        let mut out = vec![0u8; r.plaintext_len()? as usize];
                        let mut at = 0;
                        while at < out.len() {
                            match r.read_at(at as u64, &mut out[at..])? {
                                0 => break,
                                n => at += n,
                            }
                        }
                        Ok(out)
                    };
                    match read() {
                        Ok(out) if out == pt => {}
                        other => failures.lock().unwrap().push(format!(
                            "message {i} (frame {frame}, {len} bytes): {other:?}"
                        )),
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} of 10,000 signed messages did not open: {:#?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
}

/// A source whose reads wait while its gate is closed: a read that cannot finish yet.
#[cfg(feature = "tokio")]
struct Gated {
    msg: Vec<u8>,
    open: Arc<AtomicBool>,
}

#[cfg(feature = "tokio")]
impl ReadAt for Gated {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        while !self.open.load(Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        self.msg.read_exact_at(buf, offset)
    }
    fn size(&self) -> std::io::Result<u64> {
        self.msg.size()
    }
}

/// Issue 11 item 6: reads dropped half-way (a timeout, `select!`), then a smaller buffer, a
/// seek: no panic, and the bytes are exactly right.
#[cfg(feature = "tokio")]
async fn cancelled_reads_leave_the_reader_usable() {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let kr = keyring();
    let pt = data(300_000);
    let msg = Encryptor::new(&kr)
        .frame_length(FRAME)
        .encrypt(&pt)
        .unwrap();
    let open = Arc::new(AtomicBool::new(true));
    let source = Gated {
        msg,
        open: open.clone(),
    };
    let mut r = Decryptor::new(&kr).seekable_async(source).await.unwrap();
    assert_eq!(r.plaintext_len(), pt.len() as u64);
    let mut big = vec![0u8; 200_000];
    // A timeout of zero drops the read while its frame is being read.
    open.store(false, Ordering::SeqCst);
    let timed_out = tokio::time::timeout(std::time::Duration::ZERO, r.read(&mut big)).await;
    assert!(timed_out.is_err(), "the read could not have finished");
    open.store(true, Ordering::SeqCst);
    let mut small = [0u8; 10];
    let n = r.read(&mut small).await.unwrap();
    assert!(n > 0);
    assert_eq!(&small[..n], &pt[..n]);
    let mut got = small[..n].to_vec();
    let mut chunk = [0u8; 7];
    while got.len() < 150_000 {
        let n = r.read(&mut chunk).await.unwrap();
        got.extend_from_slice(&chunk[..n]);
    }
    // `select!` drops a read of another frame; a seek follows at once.
    r.seek(SeekFrom::Start(250_000)).await.unwrap();
    open.store(false, Ordering::SeqCst);
    tokio::select! {
        biased;
        _ = r.read(&mut big) => panic!("the read could not have finished"),
        () = std::future::ready(()) => {}
    }
    open.store(true, Ordering::SeqCst);
    r.seek(SeekFrom::Start(1000)).await.unwrap();
    let n = r.read(&mut small[..3]).await.unwrap();
    assert_eq!(&small[..n], &pt[1000..1000 + n]);
    r.seek(SeekFrom::Start(got.len() as u64)).await.unwrap();
    r.read_to_end(&mut got).await.unwrap();
    assert!(got == pt, "the bytes read differ from the plaintext");
}

#[cfg(feature = "tokio")]
#[tokio::test]
async fn async_seek_on_a_current_thread_runtime() {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let kr = keyring();
    let pt = data(200_000);
    let msg = Encryptor::new(&kr).frame_length(4096).encrypt(&pt).unwrap();
    let mut r = Decryptor::new(&kr).seekable_async(msg).await.unwrap();
    r.seek(SeekFrom::Start(12_345)).await.unwrap();
    let mut buf = vec![0u8; 50_000];
    r.read_exact(&mut buf).await.unwrap();
    assert_eq!(buf, &pt[12_345..62_345]);
    cancelled_reads_leave_the_reader_usable().await;
}

#[cfg(feature = "tokio")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_async_reads_on_a_multi_thread_runtime() {
    cancelled_reads_leave_the_reader_usable().await;
}
