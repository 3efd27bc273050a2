//! Blocking reads of a message header: from a `Read` (the blocking reader, the layout scan) or
//! from any read function (the seekable reader reads its source at offsets). One read loop
//! over the sans-I/O [`HeaderBuffer`], so every blocking path parses a header the same way,
//! once per field. Also the retried read and the end-of-input mapping the blocking adaptors
//! share. The async reader drives [`HeaderBuffer`] itself.

use std::io;

use super::decoder::HeaderBuffer;
use crate::format::{FormatError, Header, HeaderLimits};
use crate::Error;

/// One read from a blocking source, retried when interrupted by a signal.
pub(crate) fn read_retrying<R: io::Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    retrying(&mut |buf: &mut [u8]| r.read(buf), buf)
}

fn retrying(
    read: &mut impl FnMut(&mut [u8]) -> io::Result<usize>,
    buf: &mut [u8],
) -> io::Result<usize> {
    loop {
        match read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Reads a header from a blocking source (retrying interrupted reads); returns it and the bytes
/// read past it.
pub(crate) fn read_header<R: io::Read>(
    r: &mut R,
    limits: &HeaderLimits,
) -> Result<(Header, Vec<u8>), Error> {
    read_header_with(|buf| r.read(buf), limits)
}

/// Reads a header through `read`, which reads like `Read::read` (0 is the end of input);
/// returns it and the bytes read past it. The buffer grows by what each field needs, never by
/// a length the header states beyond [`HeaderLimits::max_header_len`].
///
/// # Errors
/// A malformed or truncated header, one over the limits, or I/O.
pub(crate) fn read_header_with(
    mut read: impl FnMut(&mut [u8]) -> io::Result<usize>,
    limits: &HeaderLimits,
) -> Result<(Header, Vec<u8>), Error> {
    let mut hb = HeaderBuffer::default();
    loop {
        let n = retrying(&mut read, hb.input_space())?;
        if let Some(done) = hb.input_filled(n, limits)? {
            return Ok(done);
        }
    }
}

/// An I/O error, with the source ending early read as a truncated message.
pub(crate) fn eof_is_truncation(e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        FormatError::Truncated.into()
    } else {
        Error::Io(e)
    }
}
