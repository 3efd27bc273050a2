//! The encrypting side's buffer discipline, shared by the sync and async writers: whole frames
//! of a large write are sealed straight from the caller's data into frame slots laid out as
//! they go on the wire (out of place: the copy is the encryption); smaller writes are gathered
//! into slots and sealed in place. Batches of frames are sealed on the workers
//! (`workers.rs`) when there are any, and blocking writers write one batch out while the next
//! is sealed. Also the zeroizing buffers both sides use. No I/O: writers lend a drain function.
//! See `docs/PIPELINE.md`.

use zeroize::Zeroize;

use super::machine::Sealer;
use super::options::STREAM_BUFFER_LIMIT;
use super::workers::{batch_frames, Workers};
use crate::format::{FINAL_FRAME_PREFIX, REGULAR_FRAME_PREFIX, TAG_LEN};
use crate::Error;

/// Room left after the last slot of a buffer for the final frame's longer prefix and the
/// signature, so that finishing does not move the buffer.
const FINISH_ROOM: usize = 256;

/// A buffer that holds plaintext at times: what was ever written to it (everything below its
/// length: buffers are cleared only once what they held is sealed) is zeroized on drop.
#[derive(Default)]
pub(crate) struct Wiped(pub(crate) Vec<u8>);

impl Drop for Wiped {
    fn drop(&mut self) {
        self.0.as_mut_slice().zeroize();
    }
}

impl std::ops::Deref for Wiped {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl std::ops::DerefMut for Wiped {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

/// Makes room for `len` bytes in `v`, growing by doubling up to `ceiling`. When the
/// allocation has to move, the old one is zeroized before it is freed: it may hold plaintext.
pub(crate) fn reserve_zeroizing(v: &mut Vec<u8>, len: usize, ceiling: usize) {
    if len > v.capacity() {
        let mut moved = Vec::with_capacity(len.max((2 * v.capacity()).min(ceiling)));
        moved.extend_from_slice(v);
        v.zeroize();
        *v = moved;
    }
}

pub(crate) struct FrameEncoder {
    sealer: Sealer,
    frame: usize,
    slot: usize,
    batch_frames: usize,
    /// Two buffers of frame slots laid out as on the wire: `bufs[cur]` gathers plaintext
    /// (`full` slots, then `partial` bytes of the next) or takes frames sealed straight from
    /// the caller's data, while the other may hold a sealed batch waiting to be written, so
    /// that the writing of one overlaps the sealing of the next. Their length only grows (each
    /// is zero-filled once, not for every batch).
    bufs: [Wiped; 2],
    cur: usize,
    full: usize,
    partial: usize,
    /// Sealed output waiting to be written: `bufs[i][..n]`.
    pending: Option<(usize, usize)>,
    /// Whether two batches fit [`STREAM_BUFFER_LIMIT`]; otherwise one buffer serves (its
    /// batch is written out before the next is gathered).
    double: bool,
    threads: usize,
    workers: Option<Workers>,
    /// The declared plaintext length, and how much has come so far.
    declared: Option<u64>,
    taken: u64,
}

// By hand: the buffer holds plaintext, which has no place in logs.
impl std::fmt::Debug for FrameEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameEncoder")
            .field("frame_length", &self.frame)
            .field("threads", &self.threads)
            .finish_non_exhaustive()
    }
}

impl FrameEncoder {
    pub(crate) fn new(sealer: Sealer, threads: usize, declared: Option<u64>) -> Self {
        let frame = sealer.frame_length();
        let slot = sealer.regular_frame_len();
        let batch_frames = batch_frames(slot, threads);
        FrameEncoder {
            sealer,
            frame,
            slot,
            batch_frames,
            bufs: [Wiped::default(), Wiped::default()],
            cur: 0,
            full: 0,
            partial: 0,
            pending: None,
            // Saturating: a frame length raised near `usize::MAX` on 32-bit must not wrap.
            double: batch_frames.saturating_mul(slot).saturating_mul(2) <= STREAM_BUFFER_LIMIT,
            threads,
            workers: None,
            declared,
            taken: 0,
        }
    }

    /// Sealed bytes to write out.
    pub(crate) fn pending(&self) -> &[u8] {
        match self.pending {
            Some((i, n)) => &self.bufs[i][..n],
            None => &[],
        }
    }

    /// Marks all pending bytes as written.
    pub(crate) fn consume_pending(&mut self) {
        self.pending = None;
    }

    fn check_declared(&self, more: usize) -> Result<(), Error> {
        match self.declared {
            Some(limit) if self.taken + more as u64 > limit => Err(Error::Misuse(format!(
                "more plaintext than the {limit} bytes declared with Encryptor::plaintext_len"
            ))),
            _ => Ok(()),
        }
    }

    /// Whether plaintext may go into `bufs[cur]` now: with one buffer, only once its sealed
    /// batch is written out.
    fn can_take(&self) -> bool {
        self.pending.is_none() || (self.double && self.pending.is_some_and(|(i, _)| i != self.cur))
    }

    /// Grows `bufs[i]` to at least `len` bytes (zero-filled once), within a batch.
    fn grow(&mut self, i: usize, len: usize) {
        let ceiling = self.batch_frames * self.slot + FINISH_ROOM;
        let v = &mut self.bufs[i];
        reserve_zeroizing(v, len, ceiling.max(len));
        if v.len() < len {
            v.resize(len, 0);
        }
    }

    /// Takes plaintext; returns how much it took (0 only while output is pending).
    pub(crate) fn write(&mut self, data: &[u8]) -> Result<usize, Error> {
        if self.pending.is_some() {
            return Ok(0);
        }
        self.write_draining_opt(data, None::<fn(&[u8]) -> std::io::Result<()>>)
    }

    /// For blocking adaptors: as [`write`](Self::write), with the pending output written by
    /// `drain` when the next batch is sealed (beside the sealing, when the workers run) or
    /// when room is needed. Never returns 0 for non-empty `data`.
    pub(crate) fn write_draining(
        &mut self,
        data: &[u8],
        drain: impl FnOnce(&[u8]) -> std::io::Result<()>,
    ) -> Result<usize, Error> {
        if !self.can_take() {
            drain(self.pending())?;
            self.consume_pending();
            return self.write(data);
        }
        self.write_draining_opt(data, Some(drain))
    }

    fn write_draining_opt(
        &mut self,
        data: &[u8],
        drain: Option<impl FnOnce(&[u8]) -> std::io::Result<()>>,
    ) -> Result<usize, Error> {
        if !self.can_take() {
            return Ok(0);
        }
        self.check_declared(data.len())?;
        if self.full == 0 && self.partial == 0 && data.len() >= self.frame {
            // Whole frames, nothing gathered before them: sealed straight from `data`.
            let count = (data.len() / self.frame).min(self.batch_frames);
            let taken = count * self.frame;
            self.seal_batch(count, Some(&data[..taken]), drain)?;
            self.taken += taken as u64;
            return Ok(taken);
        }
        let mut taken = 0;
        while taken < data.len() {
            let n = (self.frame - self.partial).min(data.len() - taken);
            let at = self.full * self.slot + REGULAR_FRAME_PREFIX + self.partial;
            self.grow(self.cur, at + n + TAG_LEN + FINISH_ROOM);
            self.bufs[self.cur][at..at + n].copy_from_slice(&data[taken..taken + n]);
            self.partial += n;
            taken += n;
            if self.partial == self.frame {
                self.full += 1;
                self.partial = 0;
                if self.full == self.batch_frames {
                    self.taken += taken as u64;
                    self.seal_batch(self.full, None, drain)?;
                    return Ok(taken);
                }
            }
        }
        self.taken += taken as u64;
        Ok(taken)
    }

    /// Seals `count` frames into `bufs[cur]` (from `plaintext`, out of place, or the gathered
    /// slots in place), on the workers while `drain` writes out the pending batch (if any, and
    /// if given) on the caller's thread. Then that batch is pending and, with two buffers, the
    /// other one gathers. Starts the pool only for a whole batch, so that small messages never
    /// pay for threads.
    fn seal_batch(
        &mut self,
        count: usize,
        plaintext: Option<&[u8]>,
        drain: Option<impl FnOnce(&[u8]) -> std::io::Result<()>>,
    ) -> Result<(), Error> {
        if count == self.batch_frames && self.workers.is_none() {
            self.workers = Some(Workers::new(self.threads));
        }
        let len = count * self.slot;
        let i = self.cur;
        self.grow(i, len);
        let workers = self.workers.clone().unwrap_or_default();
        let [first, second] = &mut self.bufs;
        let (target, other) = if i == 0 {
            (first, &*second)
        } else {
            (second, &*first)
        };
        let out = match (self.pending, drain) {
            (Some((j, n)), Some(drain)) if j != i => Some((&other[..n], drain)),
            _ => None,
        };
        let drained_any = out.is_some();
        let sealer = &mut self.sealer;
        let (sealed, drained) = workers.overlap(
            || sealer.seal_frames(&mut target[..len], plaintext, &workers),
            || out.map_or(Ok(()), |(bytes, drain)| drain(bytes)),
        );
        drained?;
        sealed?;
        if drained_any {
            self.pending = None;
        }
        debug_assert!(
            self.pending.is_none(),
            "the pending batch was written first"
        );
        self.pending = Some((i, len));
        self.full = 0;
        if self.double {
            self.cur = 1 - i;
        }
        Ok(())
    }

    /// Encrypts all of `plaintext` as one message behind `header`: the whole frames are sealed
    /// straight into the message (out of place, on the workers when there are a batch's worth),
    /// then the final frame and the footer follow. The bytes are those of the streaming path.
    pub(crate) fn encrypt_whole(
        mut self,
        header: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, Error> {
        self.check_declared(plaintext.len())?;
        let count = plaintext.len() / self.frame;
        let (taken, body) = (count * self.frame, count * self.slot);
        // Allocated zeroed, not resized: fresh pages from the allocator are then written once,
        // by the sealing, rather than zeroed first.
        let mut out = vec![0u8; header.len() + body];
        out[..header.len()].copy_from_slice(header);
        if count >= self.batch_frames {
            self.workers = Some(Workers::new(self.threads));
        }
        let workers = self.workers.clone().unwrap_or_default();
        self.sealer.seal_frames(
            &mut out[header.len()..],
            Some(&plaintext[..taken]),
            &workers,
        )?;
        self.taken = taken as u64;
        // Less than a frame is left: it is gathered, not sealed, until `finish`.
        self.write(&plaintext[taken..])?;
        out.extend_from_slice(&self.finish()?);
        Ok(out)
    }

    /// Seals what is left: the full frames, then the final frame with the partial one's
    /// plaintext, then the footer. Returns the bytes to write last.
    pub(crate) fn finish(mut self) -> Result<Vec<u8>, Error> {
        debug_assert!(self.pending.is_none(), "pending output was written first");
        if let Some(limit) = self.declared.filter(|&l| l != self.taken) {
            return Err(Error::Misuse(format!(
                "{} bytes of plaintext, not the {limit} declared with Encryptor::plaintext_len",
                self.taken
            )));
        }
        let i = self.cur;
        let start = self.full * self.slot;
        let partial = self.partial;
        // The final frame is sealed where the partial one was gathered: its plaintext moves
        // behind the final frame's longer prefix (less than a frame, once per message).
        let end = start + FINAL_FRAME_PREFIX + partial + TAG_LEN;
        self.grow(i, end);
        if self.full > 0 {
            let workers = self.workers.clone().unwrap_or_default();
            self.sealer
                .seal_frames(&mut self.bufs[i][..start], None, &workers)?;
        }
        if partial > 0 {
            let from = start + REGULAR_FRAME_PREFIX;
            self.bufs[i].copy_within(from..from + partial, start + FINAL_FRAME_PREFIX);
        }
        let footer = self.sealer.seal_last(&mut self.bufs[i][start..end])?;
        let mut out = std::mem::take(&mut self.bufs[i].0);
        out.truncate(end);
        out.extend_from_slice(&footer);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::AeadBackend;
    use crate::stream::machine::testing::{self, TestKeys};

    /// Encodes `pt` under keys of its own; returns the body and what checks it.
    fn encode(pt: &[u8], frame: u32, threads: usize, piece: usize) -> (Vec<u8>, TestKeys) {
        let (sealer, keys) = testing::sealer(AeadBackend::AwsLc, frame);
        let mut enc = FrameEncoder::new(sealer, threads, None);
        let mut out = Vec::new();
        for chunk in pt.chunks(piece) {
            let mut rest = chunk;
            while !rest.is_empty() {
                // As the blocking writer does: pending output is drained beside the sealing.
                let n = enc
                    .write_draining(rest, |p| {
                        out.extend_from_slice(p);
                        Ok(())
                    })
                    .unwrap();
                assert!(n > 0);
                rest = &rest[n..];
            }
        }
        out.extend_from_slice(enc.pending());
        enc.consume_pending();
        out.extend_from_slice(&enc.finish().unwrap());
        (out, keys)
    }

    /// Encodes `pt` and checks that it is the one body for its keys (`assert_body_of`): the
    /// same bytes for any thread count and write size, without sealing a pair twice.
    fn check(pt: &[u8], frame: u32, threads: usize, piece: usize) {
        let (body, keys) = encode(pt, frame, threads, piece);
        let what = format!("F={frame} L={} T={threads} W={piece}", pt.len());
        keys.assert_body_of(&body, pt, &what);
    }

    #[test]
    fn the_whole_message_path_writes_the_streaming_bytes() {
        let pt: Vec<u8> = (0..3_000_000u32).map(|i| (i % 241) as u8).collect();
        for frame in [4096u32, 65_536] {
            for len in [0, 1, frame as usize, 3 * frame as usize + 5, pt.len()] {
                check(&pt[..len], frame, 1, 1 << 20);
                for threads in [1, 2] {
                    let (sealer, keys) = testing::sealer(AeadBackend::AwsLc, frame);
                    let whole = FrameEncoder::new(sealer, threads, Some(len as u64))
                        .encrypt_whole(b"HEADER", &pt[..len])
                        .unwrap();
                    assert_eq!(&whole[..6], b"HEADER");
                    let what = format!("F={frame} L={len} T={threads}");
                    keys.assert_body_of(&whole[6..], &pt[..len], &what);
                }
            }
        }
    }

    #[test]
    fn a_failed_drain_beside_the_sealing_is_reported() {
        let (sealer, _) = testing::sealer(AeadBackend::AwsLc, 65_536);
        let mut enc = FrameEncoder::new(sealer, 2, None);
        let data = vec![7u8; 3 << 20];
        assert!(enc.write_draining(&data, |_| Ok(())).unwrap() > 0);
        let err = enc
            .write_draining(&data, |_| Err(std::io::Error::other("disk full")))
            .unwrap_err();
        assert!(err.to_string().contains("disk full"), "{err}");
    }

    #[test]
    fn any_thread_count_and_write_size_gives_the_same_bytes() {
        let pt: Vec<u8> = (0..5_000_000u32).map(|i| (i % 249) as u8).collect();
        for frame in [4096u32, 65_536] {
            let slot = REGULAR_FRAME_PREFIX + frame as usize + TAG_LEN;
            // Around whole batches, where the pool takes over.
            let batch = batch_frames(slot, 3) * frame as usize;
            for len in [0, 1, frame as usize, batch - 1, batch, batch + 1, pt.len()] {
                check(&pt[..len], frame, 1, 1 << 20);
                check(&pt[..len], frame, 2, 7_777);
                check(&pt[..len], frame, 3, 1 << 20);
                // Writes of more than a batch: sealed while the previous batch drains.
                check(&pt[..len], frame, 2, 4 << 20);
            }
        }
    }
}
