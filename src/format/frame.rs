//! The frame codec: the headers of body blocks (FORMAT.md §6) written and read in one place.
//!
//! A regular frame starts `u32 seq ‖ iv`, the final frame `marker ‖ u32 seq ‖ iv ‖ u32 len`,
//! a non-framed body `iv ‖ u64 len`. Reading checks everything the header alone can show: the
//! sequence number, the IV (always `frame_iv(seq)`), the final frame's length against the frame
//! length, and the frame count. Nothing is authenticated here, and nothing is allocated.

use super::body::{
    frame_iv, BlockKind, FINAL_FRAME_MARKER, FINAL_FRAME_PREFIX, MAX_FRAMES, MAX_NON_FRAMED_LEN,
    NON_FRAMED_PREFIX, REGULAR_FRAME_PREFIX,
};
use super::codec::Reader;
use super::header::TAG_LEN;
use super::FormatError;

/// The header of one frame of a framed body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameHeader {
    /// A regular frame: its content is exactly the message's frame length.
    Regular {
        /// Its sequence number (from 1).
        seq: u32,
    },
    /// The final frame: its content is `len` bytes, at most the frame length.
    Final {
        /// Its sequence number.
        seq: u32,
        /// Its content (plaintext) length.
        len: u32,
    },
}

/// What [`FrameHeader::read`] found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameRead<H> {
    /// The block needs at least this many bytes from the start of the buffer before its header
    /// can be read: the whole block when its length is already known (a regular frame),
    /// otherwise its header.
    NeedMore(usize),
    /// The complete, checked header.
    Header(H),
}

impl FrameHeader {
    /// Bytes of the longest frame header (the final frame's).
    pub(crate) const MAX_WIRE_LEN: usize = FINAL_FRAME_PREFIX;

    pub(crate) fn seq(&self) -> u32 {
        match *self {
            FrameHeader::Regular { seq } | FrameHeader::Final { seq, .. } => seq,
        }
    }

    pub(crate) fn is_final(&self) -> bool {
        matches!(self, FrameHeader::Final { .. })
    }

    /// The block kind, which picks the body AAD's content string.
    pub(crate) fn kind(&self) -> BlockKind {
        match self {
            FrameHeader::Regular { .. } => BlockKind::Frame,
            FrameHeader::Final { .. } => BlockKind::FinalFrame,
        }
    }

    /// Where the IV lies in this header.
    pub(crate) fn iv_offset(&self) -> usize {
        match self {
            FrameHeader::Regular { .. } => 4,
            FrameHeader::Final { .. } => 8,
        }
    }

    /// Bytes of this header on the wire.
    pub(crate) fn wire_len(&self) -> usize {
        match self {
            FrameHeader::Regular { .. } => REGULAR_FRAME_PREFIX,
            FrameHeader::Final { .. } => FINAL_FRAME_PREFIX,
        }
    }

    /// Plaintext (and ciphertext) bytes of the frame, in a message of `frame_length`.
    pub(crate) fn content_len(&self, frame_length: u32) -> u32 {
        match *self {
            FrameHeader::Regular { .. } => frame_length,
            FrameHeader::Final { len, .. } => len,
        }
    }

    /// Bytes of the whole frame on the wire: header, content and tag. In `u64`, so that no
    /// frame length overflows it on any platform.
    pub(crate) fn frame_wire_len(&self, frame_length: u32) -> u64 {
        (self.wire_len() + TAG_LEN) as u64 + u64::from(self.content_len(frame_length))
    }

    /// Bytes of one regular frame on the wire in a message of `frame_length`.
    pub(crate) fn regular_frame_len(frame_length: u32) -> u64 {
        FrameHeader::Regular { seq: 0 }.frame_wire_len(frame_length)
    }

    /// Bytes of a final frame of `len` content bytes on the wire.
    pub(crate) fn final_frame_len(len: u32) -> u64 {
        FrameHeader::Final { seq: 0, len }.frame_wire_len(len)
    }

    /// Writes the header into `out`, which is exactly [`wire_len`](Self::wire_len) bytes long.
    pub(crate) fn write(&self, out: &mut [u8]) {
        debug_assert_eq!(out.len(), self.wire_len());
        let (seq, rest) = match *self {
            FrameHeader::Regular { seq } => (seq, &mut out[..]),
            FrameHeader::Final { seq, len } => {
                out[..4].copy_from_slice(&FINAL_FRAME_MARKER.to_be_bytes());
                out[FINAL_FRAME_PREFIX - 4..].copy_from_slice(&len.to_be_bytes());
                (seq, &mut out[4..FINAL_FRAME_PREFIX - 4])
            }
        };
        rest[..4].copy_from_slice(&seq.to_be_bytes());
        rest[4..].copy_from_slice(&frame_iv(seq));
    }

    /// Reads the header of frame `seq` (the one expected next) at the start of `buf`, in a
    /// message of `frame_length`, checking each field as soon as it is there: a frame out of
    /// sequence is refused from its first four bytes.
    ///
    /// # Errors
    /// [`FormatError::BadFrame`] for a sequence number other than `seq`, a regular frame where
    /// the frame count is used up, an IV other than `frame_iv(seq)`, or a final frame longer
    /// than the frame length.
    pub(crate) fn read(
        buf: &[u8],
        seq: u32,
        frame_length: u32,
    ) -> Result<FrameRead<FrameHeader>, FormatError> {
        let mut r = Reader::new(buf);
        match Self::read_fields(&mut r, seq, frame_length) {
            Ok(header) => Ok(FrameRead::Header(header)),
            // Once the first word tells the kind: a regular frame's whole length is known, so
            // wait for all of it; the final frame states its length in its header.
            Err(FormatError::Truncated) => Ok(FrameRead::NeedMore(match buf.get(..4) {
                None => r.wanted(),
                Some(first) if first != FINAL_FRAME_MARKER.to_be_bytes() => {
                    usize::try_from(Self::regular_frame_len(frame_length)).unwrap_or(usize::MAX)
                }
                Some(_) => FINAL_FRAME_PREFIX,
            })),
            Err(e) => Err(e),
        }
    }

    fn read_fields(r: &mut Reader<'_>, seq: u32, frame_length: u32) -> Result<Self, FormatError> {
        let first = r.u32()?;
        if first != FINAL_FRAME_MARKER {
            if first != seq {
                return Err(FormatError::BadFrame("frame out of sequence"));
            }
            // The final frame takes a sequence number too, and it must not be the marker.
            if seq >= MAX_FRAMES {
                return Err(FormatError::BadFrame("too many frames"));
            }
            check_iv(r, seq)?;
            return Ok(FrameHeader::Regular { seq });
        }
        if r.u32()? != seq {
            return Err(FormatError::BadFrame("final frame out of sequence"));
        }
        if seq > MAX_FRAMES {
            return Err(FormatError::BadFrame("too many frames"));
        }
        check_iv(r, seq)?;
        let len = r.u32()?;
        if len > frame_length {
            return Err(FormatError::BadFrame(
                "final frame longer than the frame length",
            ));
        }
        Ok(FrameHeader::Final { seq, len })
    }
}

fn check_iv(r: &mut Reader<'_>, seq: u32) -> Result<(), FormatError> {
    if r.take(frame_iv(seq).len())? != frame_iv(seq) {
        return Err(FormatError::BadFrame("unexpected IV"));
    }
    Ok(())
}

/// The header of a non-framed body (legacy, read only): its IV is that of block 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SingleBlockHeader {
    /// The content (plaintext) length, at most [`MAX_NON_FRAMED_LEN`].
    pub(crate) len: u64,
}

impl SingleBlockHeader {
    /// The block's sequence number in its IV and AAD.
    pub(crate) const SEQ: u32 = 1;
    /// Bytes of the header on the wire.
    pub(crate) const WIRE_LEN: usize = NON_FRAMED_PREFIX;
    /// Where the IV lies in the header.
    pub(crate) const IV_OFFSET: usize = 0;

    /// Bytes of the whole block on the wire: header, content and tag.
    pub(crate) fn block_wire_len(&self) -> u64 {
        (Self::WIRE_LEN + TAG_LEN) as u64 + self.len
    }

    /// Reads the header at the start of `buf`.
    ///
    /// # Errors
    /// [`FormatError::BadFrame`] for an IV other than `frame_iv(1)` or a length over the
    /// AES-GCM limit (checked first: a hostile length must not overflow any offset).
    pub(crate) fn read(buf: &[u8]) -> Result<FrameRead<SingleBlockHeader>, FormatError> {
        let read = |r: &mut Reader<'_>| {
            check_iv(r, Self::SEQ)?;
            let len = u64::from_be_bytes(r.array()?);
            if len > MAX_NON_FRAMED_LEN {
                return Err(FormatError::BadFrame(
                    "non-framed body over the AES-GCM limit",
                ));
            }
            Ok(SingleBlockHeader { len })
        };
        match read(&mut Reader::new(buf)) {
            Ok(h) => Ok(FrameRead::Header(h)),
            // The header has a fixed length: wait for all of it.
            Err(FormatError::Truncated) => Ok(FrameRead::NeedMore(Self::WIRE_LEN)),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::format::IV_LEN;

    fn written(h: FrameHeader) -> Vec<u8> {
        let mut out = vec![0u8; h.wire_len()];
        h.write(&mut out);
        out
    }

    #[test]
    fn headers_read_back_as_written() {
        for h in [
            FrameHeader::Regular { seq: 1 },
            FrameHeader::Regular {
                seq: MAX_FRAMES - 1,
            },
            FrameHeader::Final { seq: 7, len: 0 },
            FrameHeader::Final { seq: 7, len: 4096 },
        ] {
            let bytes = written(h);
            assert_eq!(
                FrameHeader::read(&bytes, h.seq(), 4096).unwrap(),
                FrameRead::Header(h)
            );
        }
        let regular = written(FrameHeader::Regular { seq: 3 });
        assert_eq!(regular[..4], 3u32.to_be_bytes());
        assert_eq!(regular[4..], frame_iv(3));
        assert_eq!(FrameHeader::Regular { seq: 3 }.iv_offset(), 4);
        let last = written(FrameHeader::Final { seq: 3, len: 9 });
        assert_eq!(FrameHeader::Final { seq: 3, len: 9 }.iv_offset(), 8);
        assert_eq!(last[..4], FINAL_FRAME_MARKER.to_be_bytes());
        assert_eq!(last[8..20], frame_iv(3));
        assert_eq!(last[20..], 9u32.to_be_bytes());
    }

    #[test]
    fn every_field_is_checked() {
        let bad = |bytes: &[u8], seq: u32| match FrameHeader::read(bytes, seq, 4096) {
            Err(FormatError::BadFrame(why)) => why,
            other => panic!("{other:?}"),
        };
        let regular = written(FrameHeader::Regular { seq: 2 });
        assert_eq!(bad(&regular[..4], 3), "frame out of sequence");
        let mut iv = regular.clone();
        iv[15] ^= 1;
        assert_eq!(bad(&iv, 2), "unexpected IV");
        let mut iv = regular.clone();
        iv[4] ^= 0x80;
        assert_eq!(bad(&iv, 2), "unexpected IV");
        let last = written(FrameHeader::Final { seq: 2, len: 4096 });
        assert_eq!(bad(&last[..8], 3), "final frame out of sequence");
        let mut iv = last.clone();
        iv[10] ^= 1;
        assert_eq!(bad(&iv, 2), "unexpected IV");
        let long = written(FrameHeader::Final { seq: 2, len: 4097 });
        assert_eq!(bad(&long, 2), "final frame longer than the frame length");
        let full = written(FrameHeader::Regular { seq: MAX_FRAMES });
        assert_eq!(bad(&full, MAX_FRAMES), "too many frames");
        let mut block = frame_iv(1).to_vec();
        block.extend_from_slice(&(MAX_NON_FRAMED_LEN + 1).to_be_bytes());
        assert!(SingleBlockHeader::read(&block).is_err());
        block[3] = 1;
        block[12..].copy_from_slice(&5u64.to_be_bytes());
        assert!(SingleBlockHeader::read(&block).is_err(), "unexpected IV");
    }

    fn edge_u32() -> impl Strategy<Value = u32> {
        prop_oneof![
            Just(0u32),
            Just(1),
            Just(MAX_FRAMES - 1),
            Just(MAX_FRAMES),
            Just(FINAL_FRAME_MARKER),
            any::<u32>()
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

        /// On any bytes near a real header (a byte altered, cut short, another number
        /// expected), reading never panics, and what it accepts is exactly the header it
        /// would write: one canonical encoding, every check held.
        #[test]
        fn reading_accepts_only_what_writing_gives(
            last in any::<bool>(),
            seq in edge_u32(),
            len in edge_u32(),
            frame_length in edge_u32(),
            expected in prop_oneof![Just(None), edge_u32().prop_map(Some)],
            flip in prop::option::of((0usize..FINAL_FRAME_PREFIX, 1u8..=255)),
            cut in 0usize..=FINAL_FRAME_PREFIX,
        ) {
            let h = if last {
                FrameHeader::Final { seq, len }
            } else {
                FrameHeader::Regular { seq }
            };
            let mut bytes = written(h);
            if let Some((i, x)) = flip {
                let i = i % bytes.len();
                bytes[i] ^= x;
            }
            bytes.truncate(cut);
            let expected = expected.unwrap_or(seq);
            match FrameHeader::read(&bytes, expected, frame_length) {
                Ok(FrameRead::Header(got)) => {
                    prop_assert_eq!(got.seq(), expected);
                    prop_assert_eq!(&bytes[..got.wire_len()], &written(got)[..]);
                    prop_assert!(got.content_len(frame_length) <= frame_length);
                    prop_assert!(got.seq() < MAX_FRAMES || (got.is_final() && got.seq() == MAX_FRAMES));
                }
                Ok(FrameRead::NeedMore(n)) => prop_assert!(n > bytes.len()),
                Err(e) => prop_assert!(matches!(e, FormatError::BadFrame(_)), "{e:?}"),
            }
            let untouched = flip.is_none() && cut >= h.wire_len() && expected == seq;
            let valid = seq != FINAL_FRAME_MARKER && match h {
                FrameHeader::Regular { .. } => seq < MAX_FRAMES,
                FrameHeader::Final { .. } => seq <= MAX_FRAMES && len <= frame_length,
            };
            if untouched && valid {
                prop_assert_eq!(
                    FrameHeader::read(&bytes, seq, frame_length).unwrap(),
                    FrameRead::Header(h)
                );
            }
            let block = SingleBlockHeader::read(&bytes);
            if let Ok(FrameRead::Header(b)) = block {
                prop_assert!(b.len <= MAX_NON_FRAMED_LEN);
                prop_assert_eq!(&bytes[..IV_LEN], &frame_iv(1)[..]);
            }
        }
    }

    #[test]
    fn short_input_asks_for_the_block_or_its_header() {
        let need = |bytes: &[u8]| match FrameHeader::read(bytes, 1, 64).unwrap() {
            FrameRead::NeedMore(n) => n,
            h => panic!("{h:?}"),
        };
        let regular = written(FrameHeader::Regular { seq: 1 });
        assert_eq!(need(&regular[..2]), 4);
        assert_eq!(need(&regular[..10]), 16 + 64 + 16);
        let last = written(FrameHeader::Final { seq: 1, len: 5 });
        assert_eq!(need(&last[..4]), FINAL_FRAME_PREFIX);
        assert_eq!(need(&last[..23]), FINAL_FRAME_PREFIX);
        let mut block = frame_iv(1).to_vec();
        block.extend_from_slice(&5u64.to_be_bytes());
        for n in [0, 5, 12, 19] {
            assert_eq!(
                SingleBlockHeader::read(&block[..n]).unwrap(),
                FrameRead::NeedMore(NON_FRAMED_PREFIX)
            );
        }
        assert_eq!(
            SingleBlockHeader::read(&block).unwrap(),
            FrameRead::Header(SingleBlockHeader { len: 5 })
        );
    }
}
