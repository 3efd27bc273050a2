//! The encrypting side's buffer discipline, shared by the sync and async writers: plaintext is
//! copied once into frame slots laid out as they go on the wire, a batch of full frames is
//! sealed in place (on a thread pool when there is one), then handed out to be written.

use std::sync::Arc;

use super::machine::Sealer;
use crate::format::{FINAL_FRAME_PREFIX, REGULAR_FRAME_PREFIX, TAG_LEN};
use crate::Error;

/// Bytes of frames sealed together on one thread.
const SERIAL_BATCH: usize = 256 * 1024;
/// Bytes of frames sealed or opened together across the pool.
const PARALLEL_BATCH: usize = 2 * 1024 * 1024;

/// How many frames of `slot` bytes go in one batch: enough for every thread to have work, and
/// a few MiB at most otherwise, so memory stays a few frames per worker.
pub(crate) fn batch_frames(slot: usize, threads: usize) -> usize {
    match (slot, threads) {
        (0, _) => 1,
        (_, 0 | 1) => (SERIAL_BATCH / slot).max(1),
        _ => (PARALLEL_BATCH / slot).max(2 * threads),
    }
}

/// Where batches run: on the caller's thread, on rayon's shared pool (when the count asked
/// for is its size, the default), or on a pool of the message's own.
#[derive(Debug, Clone, Default)]
pub(crate) enum Workers {
    #[default]
    Caller,
    Shared,
    Own(Arc<rayon::ThreadPool>),
}

impl Workers {
    pub(crate) fn new(threads: usize) -> Self {
        if threads <= 1 {
            return Workers::Caller;
        }
        if threads == rayon::current_num_threads() {
            return Workers::Shared;
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("kms-envelope-{i}"))
            .build()
            .map_or(Workers::Caller, |p| Workers::Own(Arc::new(p)))
    }
}

pub(crate) struct FrameEncoder {
    sealer: Sealer,
    frame: usize,
    slot: usize,
    batch_frames: usize,
    /// `full` sealed-or-to-seal frame slots, then the slot being filled.
    buf: Vec<u8>,
    full: usize,
    partial: usize,
    /// `buf[..sealed]` (or `direct[..sealed]`) is sealed and waits to be written.
    sealed: usize,
    /// Frames sealed straight from the caller's data; kept at its largest size so that it is
    /// zero-filled once, not for every batch.
    direct: Vec<u8>,
    sealed_direct: bool,
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
            buf: Vec::new(),
            full: 0,
            partial: 0,
            sealed: 0,
            direct: Vec::new(),
            sealed_direct: false,
            threads,
            workers: None,
            declared,
            taken: 0,
        }
    }

    /// Sealed bytes to write out; `write` takes no input until they are consumed.
    pub(crate) fn pending(&self) -> &[u8] {
        if self.sealed_direct {
            &self.direct[..self.sealed]
        } else {
            &self.buf[..self.sealed]
        }
    }

    /// Marks all pending bytes as written.
    pub(crate) fn consume_pending(&mut self) {
        if self.sealed > 0 {
            if !self.sealed_direct {
                self.buf.clear();
                self.full = 0;
            }
            self.sealed = 0;
            self.sealed_direct = false;
        }
    }

    /// Copies plaintext in; returns how much it took (0 only while output is pending).
    pub(crate) fn write(&mut self, data: &[u8]) -> Result<usize, Error> {
        if self.sealed > 0 {
            return Ok(0);
        }
        if let Some(limit) = self.declared {
            if self.taken + data.len() as u64 > limit {
                return Err(Error::InvalidArgument(format!(
                    "more plaintext than the {limit} bytes declared with plaintext_len"
                )));
            }
        }
        if self.full == 0 && self.partial == 0 && data.len() >= self.frame {
            return self.seal_direct(data);
        }
        let mut taken = 0;
        while taken < data.len() {
            if self.partial == 0 {
                // A new slot: room for the frame header in front of the plaintext.
                self.buf
                    .resize(self.full * self.slot + REGULAR_FRAME_PREFIX, 0);
            }
            let n = (self.frame - self.partial).min(data.len() - taken);
            self.buf.extend_from_slice(&data[taken..taken + n]);
            self.partial += n;
            taken += n;
            if self.partial == self.frame {
                self.buf.resize(self.buf.len() + TAG_LEN, 0);
                self.full += 1;
                self.partial = 0;
                if self.full == self.batch_frames {
                    self.seal_full(true)?;
                    break;
                }
            }
        }
        self.taken += taken as u64;
        Ok(taken)
    }

    /// With an empty batch and whole frames in `data`: copies and seals them in one pass, the
    /// copies spread over the workers with the sealing. The bytes are the same as frame by frame.
    fn seal_direct(&mut self, data: &[u8]) -> Result<usize, Error> {
        let count = (data.len() / self.frame).min(self.batch_frames);
        if count == self.batch_frames && self.workers.is_none() {
            self.workers = Some(Workers::new(self.threads));
        }
        let taken = count * self.frame;
        let len = count * self.slot;
        if self.direct.len() < len {
            self.direct.resize(len, 0);
        }
        let workers = self.workers.clone().unwrap_or_default();
        self.sealer
            .seal_frames(&mut self.direct[..len], Some(&data[..taken]), &workers)?;
        self.sealed = len;
        self.sealed_direct = true;
        self.taken += taken as u64;
        Ok(taken)
    }

    /// Seals the full frames; starts the pool only for a whole batch, so small messages never
    /// pay for threads.
    fn seal_full(&mut self, whole_batch: bool) -> Result<(), Error> {
        if whole_batch && self.workers.is_none() {
            self.workers = Some(Workers::new(self.threads));
        }
        let end = self.full * self.slot;
        let workers = self.workers.clone().unwrap_or_default();
        self.sealer
            .seal_frames(&mut self.buf[..end], None, &workers)?;
        self.sealed = end;
        Ok(())
    }

    /// Seals what is left: the full frames, then the final frame with the partial one's
    /// plaintext, then the footer. Returns the bytes to write last.
    pub(crate) fn finish(mut self) -> Result<Vec<u8>, Error> {
        debug_assert_eq!(self.sealed, 0, "pending output was written first");
        if let Some(limit) = self.declared.filter(|&l| l != self.taken) {
            return Err(Error::InvalidArgument(format!(
                "{} bytes of plaintext, not the {limit} declared with plaintext_len",
                self.taken
            )));
        }
        self.seal_full(false)?;
        let start = self.full * self.slot;
        let plaintext = if self.partial > 0 {
            &self.buf[start + REGULAR_FRAME_PREFIX..]
        } else {
            &[][..]
        };
        let mut last = Vec::with_capacity(FINAL_FRAME_PREFIX + plaintext.len() + TAG_LEN);
        last.resize(FINAL_FRAME_PREFIX, 0);
        last.extend_from_slice(plaintext);
        last.resize(last.len() + TAG_LEN, 0);
        let footer = self.sealer.seal_last(&mut last)?;
        self.buf.truncate(start);
        self.buf.extend_from_slice(&last);
        self.buf.extend_from_slice(&footer);
        Ok(self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{AeadBackend, AeadKey};
    use crate::stream::machine::FrameCipher;

    fn encode(pt: &[u8], frame: u32, threads: usize, piece: usize) -> Vec<u8> {
        let key = AeadKey::new(AeadBackend::AwsLc, &[4; 32]).unwrap();
        let sealer = Sealer::new(FrameCipher::new(key, vec![2; 32], frame), None);
        let mut enc = FrameEncoder::new(sealer, threads, None);
        let mut out = Vec::new();
        for chunk in pt.chunks(piece) {
            let mut rest = chunk;
            while !rest.is_empty() {
                let n = enc.write(rest).unwrap();
                rest = &rest[n..];
                out.extend_from_slice(enc.pending());
                enc.consume_pending();
            }
        }
        out.extend_from_slice(&enc.finish().unwrap());
        out
    }

    #[test]
    fn any_thread_count_and_write_size_gives_the_same_bytes() {
        let pt: Vec<u8> = (0..5_000_000u32).map(|i| (i % 249) as u8).collect();
        for frame in [4096u32, 65_536] {
            let slot = REGULAR_FRAME_PREFIX + frame as usize + TAG_LEN;
            // Around whole batches, where the pool takes over.
            let batch = batch_frames(slot, 3) * frame as usize;
            for len in [0, 1, frame as usize, batch - 1, batch, batch + 1, pt.len()] {
                let one = encode(&pt[..len], frame, 1, 1 << 20);
                assert_eq!(
                    encode(&pt[..len], frame, 2, 7_777),
                    one,
                    "F={frame} L={len}"
                );
                assert_eq!(
                    encode(&pt[..len], frame, 3, 1 << 20),
                    one,
                    "F={frame} L={len}"
                );
            }
        }
    }
}
