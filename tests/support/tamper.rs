//! One corpus of altered messages, each with what a decryptor must do with it: flips in the
//! header, in each frame's sequence number, IV, ciphertext and tag, in the final frame and the
//! footer; truncation at every structure boundary; frames reordered, repeated and dropped;
//! trailing bytes. Every offset comes from the message's own layout ([`layout`]).
#![allow(dead_code)]

use std::io::ErrorKind;
use std::ops::Range;

use kms_envelope::format::{ContentType, HeaderLimits};
use kms_envelope::stream::scan_layout;

/// One block of the body: a frame, or the single block of a non-framed body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// The whole block.
    pub span: Range<usize>,
    /// The sequence number (with the final-frame marker before it); empty for a non-framed body.
    pub sequence: Range<usize>,
    pub iv: Range<usize>,
    /// The stated plaintext length (final frame, non-framed body); empty for a regular frame.
    pub length: Range<usize>,
    pub ciphertext: Range<usize>,
    pub tag: Range<usize>,
    pub is_final: bool,
}

/// Where a message's parts lie.
#[derive(Debug, Clone)]
pub struct Layout {
    pub header: Range<usize>,
    pub blocks: Vec<Block>,
    /// Empty for unsigned suites.
    pub footer: Range<usize>,
    pub framed: bool,
}

impl Layout {
    /// Every structure boundary: header end, each block's end (the next one's start), the end.
    pub fn boundaries(&self) -> Vec<usize> {
        let mut out = vec![self.header.end];
        out.extend(self.blocks.iter().map(|b| b.span.end));
        if !self.footer.is_empty() {
            out.push(self.footer.end);
        }
        out
    }
}

/// The layout of a well-formed message, from `scan_layout` and the wire sizes of a block.
/// The only place in the tests that knows those sizes: the frame codec's accessors replace it.
pub fn layout(message: &[u8]) -> Layout {
    // Every suite has a 12-byte IV and a 16-byte tag; sequence numbers and the final-frame
    // length are u32, a non-framed length u64 (FORMAT.md, "Body").
    const IV: usize = 12;
    const TAG: usize = 16;
    let limits = HeaderLimits {
        max_encrypted_data_keys: u16::MAX,
        max_header_len: 1 << 20,
    };
    let l =
        scan_layout(&mut std::io::Cursor::new(message), &limits).expect("a well-formed message");
    let header_len = l.header_len as usize;
    let frame = l.header.frame_length as usize;
    // (sequence, iv, length) field sizes in wire order, the plaintext length, whether final.
    let block = |s: usize, sequence: usize, length: usize, iv_first: bool, len: usize, is_final| {
        let (sequence, iv, length) = if iv_first {
            (s..s, s..s + IV, s + IV..s + IV + length)
        } else {
            let iv = s + sequence..s + sequence + IV;
            (s..s + sequence, iv.clone(), iv.end..iv.end + length)
        };
        let ciphertext = length.end..length.end + len;
        let tag = ciphertext.end..ciphertext.end + TAG;
        Block {
            span: s..tag.end,
            sequence,
            iv,
            length,
            ciphertext,
            tag,
            is_final,
        }
    };
    let mut blocks: Vec<Block> = Vec::new();
    let mut at = header_len;
    match l.header.content_type {
        ContentType::NonFramed => {
            blocks.push(block(at, 0, 8, true, l.plaintext_len as usize, true))
        }
        ContentType::Framed => {
            for _ in 1..l.frames {
                let b = block(at, 4, 0, false, frame, false);
                at = b.span.end;
                blocks.push(b);
            }
            let last = l.plaintext_len as usize - (l.frames as usize - 1) * frame;
            blocks.push(block(at, 8, 4, false, last, true));
        }
    }
    let end = blocks.last().expect("a body").span.end;
    let footer = end..end + l.footer_len as usize;
    assert_eq!(footer.end, message.len(), "the layout covers the message");
    Layout {
        header: 0..header_len,
        blocks,
        footer,
        framed: l.header.content_type == ContentType::Framed,
    }
}

/// An altered message and what must happen to it.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub message: Vec<u8>,
    /// The `io::ErrorKind` the streaming reader must end with, where the corpus knows it.
    pub kind: Option<ErrorKind>,
    /// Only the signature is altered: adaptors that do not check it (the seekable reader, by
    /// its opt-in) may read the frames.
    pub signature_only: bool,
}

fn flip(message: &[u8], at: usize) -> Vec<u8> {
    let mut m = message.to_vec();
    m[at] ^= 0x01;
    m
}

/// The corpus for `message`, a well-formed message whose body has at least two frames.
pub fn corpus(message: &[u8]) -> Vec<Case> {
    let l = layout(message);
    let mut cases = Vec::new();
    let mut add = |name: String, m: Vec<u8>, kind: Option<ErrorKind>, signature_only: bool| {
        cases.push(Case {
            name,
            message: m,
            kind,
            signature_only,
        })
    };
    let h = l.header.clone();
    for (what, at) in [
        ("version", 0),
        ("suite ID", 1),
        ("message ID", 4),
        ("middle", h.end / 2),
        ("authentication tag", h.end - 1),
    ] {
        add(
            format!("header {what} flipped"),
            flip(message, at),
            None,
            false,
        );
    }
    for (k, b) in l.blocks.iter().enumerate() {
        let name = if b.is_final {
            "final frame".to_owned()
        } else {
            format!("frame {k}")
        };
        let parts = [
            ("sequence number", b.sequence.clone()),
            ("IV", b.iv.clone()),
            ("length", b.length.clone()),
            ("ciphertext", b.ciphertext.clone()),
            ("tag", b.tag.clone()),
        ];
        for (part, range) in parts.into_iter().filter(|(_, r)| !r.is_empty()) {
            for at in [range.start, range.end - 1] {
                // A damaged sequence number or length is a structure error or a short body.
                let kind =
                    matches!(part, "IV" | "ciphertext" | "tag").then_some(ErrorKind::InvalidData);
                add(
                    format!("{name} {part} flipped at {at}"),
                    flip(message, at),
                    kind,
                    false,
                );
            }
        }
    }
    if !l.footer.is_empty() {
        for at in [
            l.footer.start,
            l.footer.start + 1,
            l.footer.start + 2,
            l.footer.end - 1,
        ] {
            // The signature length: a wrong one is a truncation or trailing bytes.
            let only = at >= l.footer.start + 2;
            add(
                format!("footer flipped at {at}"),
                flip(message, at),
                None,
                only,
            );
        }
    }
    let boundaries = l.boundaries();
    let last = *boundaries.last().expect("an end");
    add(
        "empty".into(),
        Vec::new(),
        Some(ErrorKind::UnexpectedEof),
        false,
    );
    for &cut in &boundaries[..boundaries.len() - 1] {
        add(
            format!("cut at the boundary {cut}"),
            message[..cut].to_vec(),
            Some(ErrorKind::UnexpectedEof),
            false,
        );
        add(
            format!("cut one byte after the boundary {cut}"),
            message[..cut + 1].to_vec(),
            Some(ErrorKind::UnexpectedEof),
            false,
        );
    }
    add(
        "cut one byte short".into(),
        message[..last - 1].to_vec(),
        None,
        false,
    );
    add(
        "cut in the header".into(),
        message[..h.end / 2].to_vec(),
        Some(ErrorKind::UnexpectedEof),
        false,
    );
    add(
        "one trailing byte".into(),
        [message, &[0]].concat(),
        Some(ErrorKind::InvalidData),
        false,
    );
    add(
        "the message twice".into(),
        [message, message].concat(),
        Some(ErrorKind::InvalidData),
        false,
    );
    if l.framed && l.blocks.len() >= 3 {
        let (head, tail) = (
            &message[..h.end],
            &message[l.blocks.last().expect("final").span.end..],
        );
        let block = |k: usize| &message[l.blocks[k].span.clone()];
        let n = l.blocks.len();
        let build = |order: &[usize]| -> Vec<u8> {
            let mut m = head.to_vec();
            for &k in order {
                m.extend_from_slice(block(k));
            }
            m.extend_from_slice(tail);
            m
        };
        let regular: Vec<usize> = (0..n - 1).collect();
        let mut swapped = regular.clone();
        swapped.swap(0, 1);
        swapped.push(n - 1);
        add(
            "frames 0 and 1 swapped".into(),
            build(&swapped),
            None,
            false,
        );
        let mut repeated = vec![0];
        repeated.extend(&regular);
        repeated.push(n - 1);
        add("frame 0 repeated".into(), build(&repeated), None, false);
        let mut dropped: Vec<usize> = regular[1..].to_vec();
        dropped.push(n - 1);
        add("frame 0 dropped".into(), build(&dropped), None, false);
        add("final frame dropped".into(), build(&regular), None, false);
        let mut first = vec![n - 1];
        first.extend(&regular);
        add("final frame first".into(), build(&first), None, false);
    }
    cases
}
