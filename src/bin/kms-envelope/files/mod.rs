//! The file commands: encrypt, decrypt, rewrap and inspect a message, and what they share
//! (opening IN, the read/write pump, the progress bar, the failures of a write to OUT).

pub mod decrypt;
mod deliver;
pub mod encrypt;
pub mod inspect;
pub mod rewrap;

use std::fs::File;
use std::io::{self, BufReader, IsTerminal, Read, Write};
use std::path::Path;

use crate::args::AwsArgs;
use crate::exit::{closed_stdout, io_failure, usage, Code, Failure};
use crate::output::Output;
use deliver::HeldFull;
use zeroize::Zeroizing;

/// Makes OUT visible once all of it is written: the one commit of every file command.
fn commit(out: Output, path: &Path) -> Result<(), Failure> {
    out.commit().map_err(|e| write_failure(path, e))
}

/// A failed write to OUT: a closed pipe ends quietly; a full buffer of a signed message says
/// what to do; anything else is an I/O error.
fn write_failure(path: &Path, e: io::Error) -> Failure {
    if e.kind() == io::ErrorKind::BrokenPipe {
        return closed_stdout();
    }
    if let Some(full) = e.get_ref().and_then(|i| i.downcast_ref::<HeldFull>()) {
        return usage(format!(
            "{} is a signed message whose plaintext exceeds --max-buffered-size ({} bytes), the \
             most held in memory until its signature verifies when writing to a stream: decrypt \
             to a file with -o FILE (no limit: nothing appears until the signature verifies), \
             raise --max-buffered-size, or accept unverified plaintext with \
             --dangerous-release-unverified",
            full.what, full.limit
        ));
    }
    io_failure("cannot write", path, e)
}

fn open_input(path: &Path) -> Result<(Box<dyn Read + Send>, Option<u64>), Failure> {
    if path == Path::new("-") {
        return Ok((Box::new(io::stdin()), None));
    }
    let f = File::open(path).map_err(|e| io_failure("cannot open input", path, e))?;
    let len = f.metadata().ok().filter(|m| m.is_file()).map(|m| m.len());
    Ok((Box::new(BufReader::with_capacity(1 << 20, f)), len))
}

pub(crate) fn progress(
    aws: &AwsArgs,
    len: Option<u64>,
    what: &str,
) -> Option<indicatif::ProgressBar> {
    let len = len?;
    if aws.quiet || len < 8 << 20 || !io::stderr().is_terminal() {
        return None;
    }
    let pb = indicatif::ProgressBar::new(len);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} {bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .expect("template"),
    );
    pb.set_message(what.to_owned());
    Some(pb)
}

/// Bytes handed from the reading thread to the writing one at a time.
const PUMP_CHUNK: usize = 4 << 20;

/// Copies `reader` into `writer`, telling read failures from write failures. The reading runs
/// on a thread of its own, a chunk ahead of the writing, so that reading the input (and, when
/// decrypting, opening it) overlaps writing the output (and, when encrypting, sealing it).
/// Two chunks circulate between the threads: memory stays bounded. One read per chunk (the
/// decrypting reader answers a read with what it has opened, usually a batch of frames); the
/// writes go out as they come, through no buffer of std's that would keep plaintext. Chunks
/// hold plaintext, so they are zeroized when dropped, wherever that happens.
fn pump(
    reader: &mut (dyn Read + Send),
    writer: &mut dyn Write,
    on_read_error: impl Fn(io::Error) -> Failure,
    on_write_error: impl Fn(io::Error) -> Failure,
    pb: Option<&indicatif::ProgressBar>,
    stream: bool,
) -> Result<(), Failure> {
    use std::sync::mpsc::sync_channel;
    type Chunk = Zeroizing<Vec<u8>>;
    std::thread::scope(|s| {
        let (full_tx, full) = sync_channel::<io::Result<(Chunk, usize)>>(1);
        let (empty, empty_rx) = sync_channel::<Chunk>(2);
        for _ in 0..2 {
            empty
                .send(Zeroizing::new(vec![0u8; PUMP_CHUNK]))
                .expect("the receiver is alive");
        }
        s.spawn(move || {
            // Ends when the input ends or fails, or when the writing side hangs up.
            while let Ok(mut buf) = empty_rx.recv() {
                let read = loop {
                    match reader.read(&mut buf) {
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        other => break other,
                    }
                };
                let last = !matches!(read, Ok(n) if n > 0);
                if full_tx.send(read.map(|n| (buf, n))).is_err() || last {
                    return;
                }
            }
        });
        loop {
            let (buf, n) = match full.recv() {
                Ok(Ok((_, 0))) => return Ok(()),
                Ok(Ok(chunk)) => chunk,
                Ok(Err(e)) => return Err(on_read_error(e)),
                Err(_) => {
                    return Err(on_read_error(io::Error::other(
                        "the reading thread stopped",
                    )))
                }
            };
            if let Err(e) = writer.write_all(&buf[..n]) {
                let f = on_write_error(e);
                if f.code == Code::ClosedStdout && stream {
                    // The reader has gone. End now: leaving the scope would join the reading
                    // thread, which may be blocked on an idle input. Only for a stream OUT:
                    // a file's EPIPE (FUSE) returns, so its temporary file is removed.
                    if let Some(pb) = pb {
                        pb.finish_and_clear();
                    }
                    std::process::exit((f.code as u8).into());
                }
                return Err(f);
            }
            if let Some(pb) = pb {
                pb.inc(n as u64);
            }
            // The reader may have stopped already; then the chunk is not needed.
            let _ = empty.send(buf);
        }
    })
}
