//! The worker pool and batching: where frames are sealed or opened many at a time (rayon), and
//! how many go in one batch. The only module of `stream` that knows of threads; the machine
//! hands it independent per-frame jobs, the encoder and decoder size their buffers by
//! [`batch_frames`]. See `docs/PIPELINE.md`.

use std::sync::Arc;

use rayon::prelude::*;

use super::options::STREAM_BUFFER_LIMIT;
use crate::Error;

/// Bytes of frames sealed together on one thread.
const SERIAL_BATCH: usize = 256 * 1024;
/// Bytes of frames sealed or opened together across the pool.
const PARALLEL_BATCH: usize = 2 * 1024 * 1024;

/// Most plaintext bytes of one batch: a reader or a writer keeps two batches at most (see
/// [`STREAM_BUFFER_LIMIT`]).
pub(crate) const BATCH_LIMIT: usize = STREAM_BUFFER_LIMIT / 4;

/// How many frames of `slot` bytes go in one batch: enough for every thread to have work, and
/// a few MiB at most otherwise; never more than [`BATCH_LIMIT`] bytes of frames on the wire
/// (so of plaintext too) unless a single frame is larger, whatever the thread count.
pub(crate) fn batch_frames(slot: usize, threads: usize) -> usize {
    let frames = match (slot, threads) {
        (0, _) => return 1,
        (_, 0 | 1) => SERIAL_BATCH / slot,
        _ => (PARALLEL_BATCH / slot).max(2 * threads),
    };
    // By the wire size: with small frames the per-frame overhead is most of a batch.
    frames.min(BATCH_LIMIT / slot).max(1)
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

    /// Runs `f` over each item (with its index), on the workers when there is more than one
    /// item; stops at the first error. The items must not depend on one another: the order
    /// they run in is not fixed.
    pub(crate) fn each<T: Send>(
        &self,
        items: &mut [T],
        f: impl Fn(usize, &mut T) -> Result<(), Error> + Sync,
    ) -> Result<(), Error> {
        let parallel = |items: &mut [T]| {
            items
                .par_iter_mut()
                .enumerate()
                .try_for_each(|(i, item)| f(i, item))
        };
        match self {
            Workers::Shared if items.len() > 1 => parallel(items),
            Workers::Own(pool) if items.len() > 1 => pool.install(|| parallel(items)),
            _ => items
                .iter_mut()
                .enumerate()
                .try_for_each(|(i, item)| f(i, item)),
        }
    }

    /// Runs `work` on the workers while `beside` runs on the caller's thread (which need not
    /// be `Send`: it is where the I/O happens); returns both results. With no workers, `beside`
    /// runs first.
    pub(crate) fn overlap<A: Send, B>(
        &self,
        work: impl FnOnce() -> A + Send,
        beside: impl FnOnce() -> B,
    ) -> (A, B) {
        let mut a = None;
        let b = match self {
            Workers::Caller => {
                let b = beside();
                a = Some(work());
                b
            }
            Workers::Shared => rayon::in_place_scope(|s| {
                s.spawn(|_| a = Some(work()));
                beside()
            }),
            Workers::Own(pool) => pool.in_place_scope(|s| {
                s.spawn(|_| a = Some(work()));
                beside()
            }),
        };
        (a.expect("the scope ran `work` to completion"), b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{REGULAR_FRAME_PREFIX, TAG_LEN};

    #[test]
    fn a_batch_of_small_frames_stays_within_the_limit_on_the_wire() {
        for frame in [1usize, 16, 100, 4096, 65_536, 1 << 20, 8 << 20] {
            let slot = REGULAR_FRAME_PREFIX + frame + TAG_LEN;
            for threads in [1, 2, 16, 1024, 1 << 20] {
                let n = batch_frames(slot, threads);
                assert!(
                    n == 1 || n * slot <= BATCH_LIMIT,
                    "{frame}-byte frames, {threads} threads: {n} frames of {slot} bytes"
                );
            }
        }
    }

    #[test]
    fn each_runs_every_item_once_and_reports_an_error() {
        let pool = Workers::new(3);
        for workers in [&Workers::Caller, &pool] {
            let mut items = vec![0usize; 100];
            workers
                .each(&mut items, |i, x| {
                    *x += i + 1;
                    Ok(())
                })
                .unwrap();
            assert!(items.iter().enumerate().all(|(i, &x)| x == i + 1));
            let failed = workers.each(&mut items, |i, _| {
                if i == 57 {
                    Err(Error::DecryptionFailed)
                } else {
                    Ok(())
                }
            });
            assert!(matches!(failed, Err(Error::DecryptionFailed)));
        }
    }
}
