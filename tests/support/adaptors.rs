//! Every way the library reads and writes a message, run on one input: the one-shot calls, the
//! streaming reader and writer at several read and write sizes, the same with worker threads
//! ("parallel"), the tokio adaptors and the seekable reader. Each run gives one [`Attempt`];
//! [`judge`] sums them up per adaptor.
#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};

use kms_envelope::{Decryptor, Encryptor, Error};

/// The five adaptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Adaptor {
    OneShot,
    Stream,
    Parallel,
    Async,
    Seekable,
}

impl Adaptor {
    pub const ALL: [Adaptor; 5] = [
        Adaptor::OneShot,
        Adaptor::Stream,
        Adaptor::Parallel,
        Adaptor::Async,
        Adaptor::Seekable,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Adaptor::OneShot => "one-shot",
            Adaptor::Stream => "reader",
            Adaptor::Parallel => "parallel",
            Adaptor::Async => "async",
            Adaptor::Seekable => "seekable",
        }
    }
}

/// What one run gave.
#[derive(Debug)]
pub enum Outcome {
    Plaintext(Vec<u8>),
    /// `released`: what a streaming adaptor handed out before the error.
    Failed {
        error: String,
        kind: Option<ErrorKind>,
        released: Vec<u8>,
    },
    NotApplicable(&'static str),
}

/// One run: the adaptor, how it was driven, what it gave.
#[derive(Debug)]
pub struct Attempt {
    pub adaptor: Adaptor,
    pub how: String,
    pub outcome: Outcome,
}

/// What the runner needs to know of the message beforehand (the intact one, for an altered copy).
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub framed: bool,
    pub signed: bool,
}

impl Shape {
    /// Read from the message's header and frame structure, without a key.
    pub fn of(message: &[u8]) -> Option<Shape> {
        let limits = kms_envelope::format::HeaderLimits {
            max_encrypted_data_keys: u16::MAX,
            max_header_len: 1 << 20,
        };
        let layout =
            kms_envelope::stream::scan_layout(&mut std::io::Cursor::new(message), &limits).ok()?;
        Some(Shape {
            framed: layout.header.content_type == kms_envelope::format::ContentType::Framed,
            signed: layout.header.suite.signature().is_some(),
        })
    }
}

/// Read sizes for the streaming reader: one byte, an odd size, a page.
pub const READ_SIZES: [usize; 3] = [1, 7, 4096];
/// Threads of the parallel adaptor, and its read size (large reads open frames straight into
/// the caller's buffer).
pub const PARALLEL_THREADS: usize = 3;
pub const PARALLEL_READ: usize = 1 << 16;

/// A source that hands out at most `max` bytes per read, to exercise incremental parsing.
pub struct Trickle<'a> {
    pub rest: &'a [u8],
    pub max: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.rest.len().min(buf.len()).min(self.max);
        buf[..n].copy_from_slice(&self.rest[..n]);
        self.rest = &self.rest[n..];
        Ok(n)
    }
}

fn failed(e: impl std::fmt::Display, kind: Option<ErrorKind>, released: Vec<u8>) -> Outcome {
    Outcome::Failed {
        error: e.to_string(),
        kind,
        released,
    }
}

fn error_kind(e: Error) -> (String, Option<ErrorKind>) {
    let text = e.to_string();
    (text, Some(std::io::Error::from(e).kind()))
}

/// Reads a whole stream in `read`-byte calls from a source giving `source_max` bytes a call.
pub fn stream(dec: &Decryptor<'_>, message: &[u8], source_max: usize, read: usize) -> Outcome {
    let mut r = match dec.reader(Trickle {
        rest: message,
        max: source_max,
    }) {
        Ok(r) => r,
        Err(e) => {
            let (text, kind) = error_kind(e);
            return failed(text, kind, Vec::new());
        }
    };
    let mut out = Vec::new();
    let mut buf = vec![0u8; read];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Outcome::Plaintext(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => return failed(&e, Some(e.kind()), out),
        }
    }
}

#[cfg(feature = "tokio")]
fn asynced(dec: &Decryptor<'_>, message: &[u8]) -> Vec<Attempt> {
    use tokio::io::AsyncReadExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let whole = match rt.block_on(dec.decrypt_async(message)) {
        Ok(pt) => Outcome::Plaintext(pt),
        Err(e) => {
            let (text, kind) = error_kind(e);
            failed(text, kind, Vec::new())
        }
    };
    let reader = rt.block_on(async {
        let mut r = match dec.reader_async(message).await {
            Ok(r) => r,
            Err(e) => {
                let (text, kind) = error_kind(e);
                return failed(text, kind, Vec::new());
            }
        };
        let mut out = Vec::new();
        let mut buf = [0u8; 7];
        loop {
            match r.read(&mut buf).await {
                Ok(0) => return Outcome::Plaintext(out),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) => return failed(&e, Some(e.kind()), out),
            }
        }
    });
    vec![
        Attempt {
            adaptor: Adaptor::Async,
            how: "decrypt_async".into(),
            outcome: whole,
        },
        Attempt {
            adaptor: Adaptor::Async,
            how: "async reader, reads of 7".into(),
            outcome: reader,
        },
    ]
}

#[cfg(not(feature = "tokio"))]
fn asynced(_: &Decryptor<'_>, _: &[u8]) -> Vec<Attempt> {
    vec![Attempt {
        adaptor: Adaptor::Async,
        how: "async".into(),
        outcome: Outcome::NotApplicable("built without the tokio feature"),
    }]
}

/// Reads the whole plaintext with `read_at` in 1000-byte pieces (across frame boundaries), then
/// asks for the authenticated length.
fn seekable(dec: &Decryptor<'_>, message: &[u8], shape: Shape) -> Attempt {
    let how = if shape.signed {
        "seekable, signed: opted in, signature not checked"
    } else {
        "seekable, reads of 1000"
    };
    let attempt = |outcome| Attempt {
        adaptor: Adaptor::Seekable,
        how: how.into(),
        outcome,
    };
    if !shape.framed {
        return attempt(Outcome::NotApplicable(
            "non-framed body: nothing to seek by frame",
        ));
    }
    // A signed message opens only by opting in: the seekable reader never reads the signature.
    let dec = dec
        .clone()
        .dangerous_release_unverified_signed_frames(shape.signed);
    let r = match dec.seekable(message) {
        Ok(r) => r,
        Err(e) => return attempt(failed(e, None, Vec::new())),
    };
    let mut out = Vec::new();
    let mut buf = [0u8; 1000];
    loop {
        match r.read_at(out.len() as u64, &mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => return attempt(failed(e, None, out)),
        }
    }
    match r.plaintext_len() {
        Ok(len) if len == out.len() as u64 => attempt(Outcome::Plaintext(out)),
        Ok(len) => attempt(failed(
            format!("read {} bytes of a {len}-byte plaintext", out.len()),
            None,
            out,
        )),
        Err(e) => attempt(failed(e, None, out)),
    }
}

/// Decrypts `message` through every adaptor with the options of `dec` (its thread count aside).
pub fn decrypt_everywhere(dec: &Decryptor<'_>, message: &[u8], shape: Shape) -> Vec<Attempt> {
    let one = dec.clone().threads(1);
    let mut out = vec![Attempt {
        adaptor: Adaptor::OneShot,
        how: "decrypt".into(),
        outcome: match one.decrypt(message) {
            Ok(pt) => Outcome::Plaintext(pt),
            Err(e) => {
                let (text, kind) = error_kind(e);
                failed(text, kind, Vec::new())
            }
        },
    }];
    for size in READ_SIZES {
        out.push(Attempt {
            adaptor: Adaptor::Stream,
            how: format!("reads of {size}"),
            outcome: stream(&one, message, size, size),
        });
    }
    if shape.signed {
        out.push(Attempt {
            adaptor: Adaptor::Stream,
            how: "reads of 7, unverified frames released early".into(),
            outcome: stream(
                &one.clone().dangerous_release_unverified_signed_frames(true),
                message,
                7,
                7,
            ),
        });
    }
    out.push(Attempt {
        adaptor: Adaptor::Parallel,
        how: format!("{PARALLEL_THREADS} threads, reads of {PARALLEL_READ}"),
        outcome: stream(
            &dec.clone().threads(PARALLEL_THREADS),
            message,
            message.len().max(1),
            PARALLEL_READ,
        ),
    });
    out.extend(asynced(&one, message));
    out.push(seekable(&one, message, shape));
    out
}

/// Encrypts `plaintext` through every adaptor that writes: one-shot, the writer in uneven
/// pieces and in 4096-byte writes, the writer with worker threads, the tokio writer and
/// `encrypt_async`. The seekable adaptor only reads.
pub fn encrypt_everywhere(
    enc: &Encryptor<'_>,
    plaintext: &[u8],
) -> Vec<(Adaptor, String, Result<Vec<u8>, String>)> {
    let write = |enc: &Encryptor<'_>, sizes: &dyn Fn(usize) -> usize| -> Result<Vec<u8>, String> {
        let mut w = enc.writer(Vec::new()).map_err(|e| e.to_string())?;
        let (mut rest, mut turn) = (plaintext, 0);
        while !rest.is_empty() {
            let n = sizes(turn).min(rest.len());
            w.write_all(&rest[..n]).map_err(|e| e.to_string())?;
            rest = &rest[n..];
            turn += 1;
        }
        w.finish().map_err(|e| e.to_string())
    };
    let one = enc.clone().threads(1);
    let mut out = vec![
        (
            Adaptor::OneShot,
            "encrypt".to_owned(),
            one.encrypt(plaintext).map_err(|e| e.to_string()),
        ),
        (
            Adaptor::Stream,
            "writes of 1, 4, 13, 40 ...".to_owned(),
            write(&one, &|turn| 3usize.pow(turn.min(12) as u32) / 2 * 3 + 1),
        ),
        (
            Adaptor::Stream,
            "writes of 4096".to_owned(),
            write(&one, &|_| 4096),
        ),
        (
            Adaptor::Parallel,
            format!("{PARALLEL_THREADS} threads, writes of {PARALLEL_READ}"),
            write(&enc.clone().threads(PARALLEL_THREADS), &|_| PARALLEL_READ),
        ),
    ];
    out.extend(encrypt_async(&one, plaintext));
    out
}

#[cfg(feature = "tokio")]
fn encrypt_async(
    enc: &Encryptor<'_>,
    plaintext: &[u8],
) -> Vec<(Adaptor, String, Result<Vec<u8>, String>)> {
    use tokio::io::AsyncWriteExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let whole = rt
        .block_on(enc.encrypt_async(plaintext))
        .map_err(|e| e.to_string());
    let writer = rt.block_on(async {
        let mut w = enc
            .writer_async(Vec::new())
            .await
            .map_err(|e| e.to_string())?;
        for piece in plaintext.chunks(4093) {
            w.write_all(piece).await.map_err(|e| e.to_string())?;
        }
        w.finish().await.map_err(|e| e.to_string())
    });
    vec![
        (Adaptor::Async, "encrypt_async".to_owned(), whole),
        (
            Adaptor::Async,
            "async writer, writes of 4093".to_owned(),
            writer,
        ),
    ]
}

#[cfg(not(feature = "tokio"))]
fn encrypt_async(_: &Encryptor<'_>, _: &[u8]) -> Vec<(Adaptor, String, Result<Vec<u8>, String>)> {
    Vec::new()
}

/// An adaptor's verdict over its attempts.
#[derive(Debug)]
pub enum Verdict {
    Pass,
    Fail(String),
    NotApplicable(&'static str),
}

impl Verdict {
    /// Passed, or did not apply (the seekable reader on a non-framed body, the async adaptor
    /// in a build without tokio).
    pub fn passed_or_not_applicable(&self) -> bool {
        !matches!(self, Verdict::Fail(_))
    }
}

/// What every attempt must give.
#[derive(Debug, Clone, Copy)]
pub enum Expect<'a> {
    /// This plaintext, exactly.
    Plaintext(&'a [u8]),
    /// An error; what was released before it must be a prefix of `original` (nothing at all
    /// when `original` is `None`).
    Rejected { original: Option<&'a [u8]> },
    /// Either this plaintext, or an error after a prefix of it (a mutation that may leave the
    /// message intact).
    PlaintextOrRejected(&'a [u8]),
}

/// Sums `attempts` up per adaptor, in [`Adaptor::ALL`] order. An adaptor whose attempts were
/// all not applicable is not applicable; one failing attempt fails it.
pub fn judge(attempts: &[Attempt], expect: Expect<'_>) -> Vec<(Adaptor, Verdict)> {
    Adaptor::ALL
        .iter()
        .filter_map(|&adaptor| {
            let mine: Vec<_> = attempts.iter().filter(|a| a.adaptor == adaptor).collect();
            if mine.is_empty() {
                return None;
            }
            if let Some(reason) = mine.iter().find_map(|a| match a.outcome {
                Outcome::NotApplicable(r) => Some(r),
                _ => None,
            }) {
                return Some((adaptor, Verdict::NotApplicable(reason)));
            }
            let problem = mine.iter().find_map(|a| {
                let wrong = match (&a.outcome, expect) {
                    (Outcome::Plaintext(pt), Expect::Plaintext(want))
                    | (Outcome::Plaintext(pt), Expect::PlaintextOrRejected(want))
                        if pt == want =>
                    {
                        None
                    }
                    (Outcome::Plaintext(pt), Expect::PlaintextOrRejected(_)) => {
                        Some(format!("{} bytes that differ from the plaintext", pt.len()))
                    }
                    (Outcome::Failed { released, .. }, Expect::PlaintextOrRejected(pt)) => {
                        (!pt.starts_with(released)).then(|| {
                            format!(
                                "released {} bytes that are not the plaintext",
                                released.len()
                            )
                        })
                    }
                    (Outcome::Plaintext(pt), Expect::Plaintext(_)) => {
                        Some(format!("{} bytes that differ from the plaintext", pt.len()))
                    }
                    (Outcome::Failed { error, .. }, Expect::Plaintext(_)) => Some(error.clone()),
                    (Outcome::Plaintext(_), Expect::Rejected { .. }) => Some("accepted".into()),
                    (Outcome::Failed { released, .. }, Expect::Rejected { original }) => {
                        let ok = match original {
                            Some(pt) => pt.starts_with(released),
                            None => released.is_empty(),
                        };
                        (!ok).then(|| {
                            format!(
                                "released {} bytes that are not the plaintext",
                                released.len()
                            )
                        })
                    }
                    (Outcome::NotApplicable(_), _) => None,
                };
                wrong.map(|w| format!("{}: {w}", a.how))
            });
            Some((
                adaptor,
                match problem {
                    Some(p) => Verdict::Fail(p),
                    None => Verdict::Pass,
                },
            ))
        })
        .collect()
}
