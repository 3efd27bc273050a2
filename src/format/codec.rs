//! A small big-endian codec for the wire types: a cursor that reads and helpers that append.

use super::FormatError;

/// A cursor over a byte slice. Every read that runs past the end returns
/// [`FormatError::Truncated`], which incremental parsers turn into "need more bytes".
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// After a read ran past the end: the length the buffer needs for that read to succeed.
    wanted: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader {
            buf,
            pos: 0,
            wanted: 0,
        }
    }

    /// Bytes consumed so far.
    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    /// After [`FormatError::Truncated`]: how many bytes the buffer must hold (from its start)
    /// for the read that failed to succeed. Incremental parsers wait for that much.
    pub(crate) fn wanted(&self) -> usize {
        self.wanted
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        if self.remaining() < n {
            self.wanted = self.pos.saturating_add(n);
            return Err(FormatError::Truncated);
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], FormatError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, FormatError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// A `u16` length followed by that many bytes.
    pub(crate) fn vec16(&mut self) -> Result<&'a [u8], FormatError> {
        let len = self.u16()? as usize;
        self.take(len)
    }
}

/// Appends a `u16` length prefix and the bytes. The caller has checked that they fit.
pub(crate) fn put_vec16(out: &mut Vec<u8>, bytes: &[u8]) {
    debug_assert!(bytes.len() <= u16::MAX as usize);
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}
