//! How decrypted plaintext reaches OUT: held back until a signed message's signature verifies
//! when OUT is a stream, and cut to `--range`.

use std::io::{self, Write};

use zeroize::Zeroizing;

use super::decrypt::DecryptArgs;
use super::{commit, write_failure};
use crate::exit::{shown, usage, Failure};
use crate::output::Output;

/// A signed message's plaintext outgrew [`Held`]'s limit.
#[derive(Debug)]
pub struct HeldFull {
    pub what: String,
    pub limit: usize,
}

impl std::fmt::Display for HeldFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "more than {} bytes to hold", self.limit)
    }
}

impl std::error::Error for HeldFull {}

/// Plaintext held in memory until a signed message's signature verifies, up to a limit;
/// zeroized when dropped, and on every growth (the old allocation is wiped, not just freed).
struct Held {
    buf: Zeroizing<Vec<u8>>,
    limit: usize,
    what: String,
}

impl Held {
    fn new(limit: usize, what: String) -> Held {
        Held {
            buf: Zeroizing::new(Vec::new()),
            limit,
            what,
        }
    }
}

impl Write for Held {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let need = self.buf.len() + data.len();
        if need > self.limit {
            return Err(io::Error::other(HeldFull {
                what: self.what.clone(),
                limit: self.limit,
            }));
        }
        if need > self.buf.capacity() {
            let cap = need.max(self.buf.capacity() * 2).min(self.limit);
            let mut grown = Zeroizing::new(Vec::with_capacity(cap));
            grown.extend_from_slice(&self.buf);
            self.buf = grown;
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Passes on only the bytes at plaintext offsets `start..end` of what is written through it.
struct RangeFilter<'w> {
    inner: &'w mut dyn Write,
    at: u64,
    start: u64,
    end: u64,
}

impl Write for RangeFilter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let (from, to) = (self.at, self.at + data.len() as u64);
        let (a, b) = (from.max(self.start), to.min(self.end));
        if a < b {
            self.inner
                .write_all(&data[(a - from) as usize..(b - from) as usize])?;
        }
        self.at = to;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Runs `produce` into OUT under the release rules, then commits OUT. A signed message whose
/// signature is not yet checked (`signed`) goes to a stream OUT only after `produce` has
/// succeeded, held in memory up to --max-buffered-size, unless --dangerous-release-unverified.
/// With `range`, only those plaintext bytes are kept, and the range must lie within it.
pub fn deliver(
    a: &DecryptArgs,
    mut out: Output,
    signed: bool,
    range: Option<(u64, Option<u64>)>,
    produce: impl FnOnce(&mut dyn Write) -> Result<(), Failure>,
) -> Result<(), Failure> {
    let hold = signed && out.is_stream() && !a.dangerous_release_unverified;
    let mut held = Held::new(a.max_buffered_size, shown(&a.common.input.path));
    {
        let sink: &mut dyn Write = if hold { &mut held } else { out.writer() };
        match range {
            None => produce(sink)?,
            Some((start, end)) => {
                let mut filter = RangeFilter {
                    inner: sink,
                    at: 0,
                    start,
                    end: end.unwrap_or(u64::MAX),
                };
                produce(&mut filter)?;
                if filter.at < start || end.is_some_and(|end| filter.at < end) {
                    return Err(usage(format!(
                        "--range {start}-{} reaches past the end of the plaintext ({} bytes)",
                        end.map_or(String::new(), |e| e.to_string()),
                        filter.at
                    )));
                }
            }
        }
    }
    if hold {
        out.writer()
            .write_all(&held.buf)
            .map_err(|e| write_failure(&a.common.out.output, e))?;
    }
    commit(out, &a.common.out.output)
}
