//! The streaming reader and writer driven the way applications drive them, with read and write
//! sizes from one byte to megabytes and any thread count: the heap stays within
//! `STREAM_BUFFER_LIMIT` plus one frame, the reader reads ahead no more than that, and the space
//! it asks the source to fill stays linear in the message size. Counts, never timings.
//!
//! A test binary of its own: the counting allocator is global to the binary, and the tests take
//! a lock so that no two measure at once.

#[path = "support/data.rs"]
mod data;
#[path = "support/tamper.rs"]
mod tamper;

use std::io::{Read, Write};
use std::sync::Mutex;

use kms_envelope::stream::STREAM_BUFFER_LIMIT;
use kms_envelope::{Decryptor, Encryptor, RawAesKeyring};

#[path = "support/alloc.rs"]
mod alloc;
#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;
use alloc::peak_growth;

/// One test at a time: the counters are global, and another test's allocations would count.
static MEASURING: Mutex<()> = Mutex::new(());

fn measuring() -> std::sync::MutexGuard<'static, ()> {
    MEASURING.lock().unwrap_or_else(|e| e.into_inner())
}

fn keyring() -> RawAesKeyring {
    RawAesKeyring::new("memory", "key", &[0x3C; 32]).unwrap()
}

const MIB: usize = 1 << 20;
const SIZES: [usize; 4] = [1, 4096, 65_536, MIB];

/// The plaintext length for a read or write size: smaller for one-byte calls, so that the
/// test stays quick in debug builds, yet many batches long at every thread count.
fn message_len(size: usize) -> usize {
    if size == 1 {
        6 * MIB + 12_345
    } else {
        32 * MIB + 12_345
    }
}

/// A source over a message that records what the reader asked of it.
struct Source<'a> {
    rest: &'a [u8],
    /// Bytes handed out so far.
    given: usize,
    /// Sum of the buffer lengths the reader offered: the space it prepared for input.
    asked: usize,
}

impl Read for Source<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.asked += buf.len();
        let n = self.rest.read(buf)?;
        self.given += n;
        Ok(n)
    }
}

/// What one read of a whole message through `size`-byte reads showed.
struct ReadStats {
    heap: usize,
    /// Most ciphertext read beyond the frame of the next plaintext byte to return.
    ahead: usize,
    asked: usize,
}

fn read_through(msg: &[u8], pt_len: usize, frame: usize, threads: usize, size: usize) -> ReadStats {
    let kr = keyring();
    let dec = Decryptor::new(&kr).threads(threads);
    // Where each frame starts in the message (computed before the heap is measured).
    let starts: Vec<usize> = tamper::layout(msg)
        .blocks
        .iter()
        .map(|b| b.span.start)
        .collect();
    let mut out = vec![0u8; size];
    let mut src = Source {
        rest: msg,
        given: 0,
        asked: 0,
    };
    let (mut ahead, mut total) = (0, 0);
    let heap = peak_growth(|| {
        let mut r = dec.reader(&mut src).unwrap();
        loop {
            let n = r.read(&mut out).unwrap();
            if n == 0 {
                break;
            }
            total += n;
            let given = r.get_ref().given;
            // Where the frame holding the next byte starts in the message.
            let at = starts[(total / frame).min(starts.len() - 1)];
            ahead = ahead.max(given.saturating_sub(at));
        }
    });
    assert_eq!(total, pt_len);
    ReadStats {
        heap,
        ahead,
        asked: src.asked,
    }
}

fn check_reads(frame: usize, threads: usize, sizes: &[usize]) {
    let _one = measuring();
    let kr = keyring();
    for &size in sizes {
        let len = message_len(size);
        let pt = data::pseudo_random(len);
        let msg = Encryptor::new(&kr)
            .frame_length(frame as u32)
            .threads(threads)
            .encrypt(&pt)
            .unwrap();
        drop(pt);
        let s = read_through(&msg, len, frame, threads, size);
        let what = format!("frame {frame}, {threads} threads, {size}-byte reads");
        assert!(
            s.heap <= STREAM_BUFFER_LIMIT + frame,
            "{what}: the heap grew by {} bytes",
            s.heap
        );
        assert!(
            s.ahead <= STREAM_BUFFER_LIMIT,
            "{what}: read {} bytes ahead",
            s.ahead
        );
        // Linear work: the space prepared for input is about the message, not a multiple of it.
        assert!(
            s.asked <= 2 * msg.len() + STREAM_BUFFER_LIMIT,
            "{what}: asked the source for {} bytes of a {}-byte message",
            s.asked,
            msg.len()
        );
    }
}

#[test]
fn the_reader_stays_bounded_at_one_thread() {
    check_reads(65_536, 1, &SIZES);
}

#[test]
fn the_reader_stays_bounded_at_four_threads() {
    check_reads(65_536, 4, &SIZES);
}

/// Batches that grew with the thread count held 32 frames: here 32 MiB per buffer.
#[test]
fn the_reader_stays_bounded_with_many_threads_and_large_frames() {
    check_reads(MIB, 16, &[65_536, 4 * MIB]);
    // Frames larger than the limit: one at a time, no read-ahead beside.
    check_reads(8 * MIB, 4, &[65_536, 16 * MIB]);
}

/// A sink that only counts, so that the measured heap is the writer's own.
#[derive(Default)]
struct Sink(usize);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn check_writes(frame: usize, threads: usize, sizes: &[usize]) {
    let _one = measuring();
    let kr = keyring();
    for &size in sizes {
        let len = message_len(size);
        let pt = data::pseudo_random(len);
        let enc = Encryptor::new(&kr)
            .frame_length(frame as u32)
            .threads(threads);
        let expected = enc.encrypt(&pt).unwrap().len();
        let mut written = 0;
        let heap = peak_growth(|| {
            let mut w = enc.writer(Sink::default()).unwrap();
            for chunk in pt.chunks(size) {
                w.write_all(chunk).unwrap();
            }
            written = w.finish().unwrap().0;
        });
        assert_eq!(written, expected);
        assert!(
            heap <= STREAM_BUFFER_LIMIT + frame,
            "frame {frame}, {threads} threads, {size}-byte writes: the heap grew by {heap} bytes"
        );
    }
}

#[test]
fn the_writer_stays_bounded() {
    for threads in [1, 4] {
        check_writes(65_536, threads, &[1, 4096, 65_537, MIB, 4 * MIB]);
    }
    check_writes(MIB, 16, &[65_536, 4 * MIB]);
    check_writes(8 * MIB, 4, &[65_536, 16 * MIB]);
}

#[cfg(feature = "tokio")]
#[test]
fn the_async_reader_stays_bounded() {
    use tokio::io::AsyncReadExt;
    let _one = measuring();
    let kr = keyring();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for threads in [1, 4] {
        for size in SIZES {
            let len = message_len(size).min(16 * MIB);
            let pt = data::pseudo_random(len);
            let msg = Encryptor::new(&kr).threads(threads).encrypt(&pt).unwrap();
            drop(pt);
            let dec = Decryptor::new(&kr).threads(threads);
            let mut out = vec![0u8; size];
            let mut total = 0;
            let heap = peak_growth(|| {
                rt.block_on(async {
                    let mut r = dec.reader_async(&msg[..]).await.unwrap();
                    loop {
                        match r.read(&mut out).await.unwrap() {
                            0 => break,
                            n => total += n,
                        }
                    }
                })
            });
            assert_eq!(total, len);
            assert!(
                heap <= STREAM_BUFFER_LIMIT + 65_536,
                "{threads} threads, {size}-byte async reads: the heap grew by {heap} bytes"
            );
        }
    }
}

/// A small message declaring a large frame length: the reader allocates what arrives, not the
/// declared frame (an encrypter must not make every reader allocate 64 MiB per message).
#[test]
fn a_small_message_with_a_large_frame_length_allocates_what_arrives() {
    let _guard = measuring();
    let kr = keyring();
    let frame = 64 * MIB;
    let pt = data::pseudo_random(10_000);
    let msg = Encryptor::new(&kr)
        .frame_length(frame as u32)
        .encrypt(&pt)
        .unwrap();
    for threads in [1, 2] {
        let dec = Decryptor::new(&kr).threads(threads);
        let mut out = Vec::new();
        let streamed = peak_growth(|| {
            dec.reader(&msg[..]).unwrap().read_to_end(&mut out).unwrap();
        });
        assert_eq!(out, pt);
        let mut whole = Vec::new();
        let one_shot = peak_growth(|| whole = dec.decrypt(&msg).unwrap());
        assert_eq!(whole, pt);
        for (how, heap) in [("reader", streamed), ("decrypt", one_shot)] {
            assert!(
                heap < msg.len() + MIB,
                "{how}, {threads} threads: {heap} bytes of heap for a {}-byte message",
                msg.len()
            );
        }
    }
}
