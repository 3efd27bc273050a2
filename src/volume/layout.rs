//! The volume's bytes on disk: header copies, metadata entries, journal superblocks and slot
//! records, and where each region starts. No I/O and no keys; every parser returns a typed
//! error on any input, never panics (see `docs/VOLUME-FORMAT.md`).

use crate::format::codec::Reader;
use crate::format::{EncryptedDataKey, FormatError};
use crate::VolumeError;

/// Every region starts on this boundary.
pub(crate) const REGION: u64 = 64 * 1024;
/// Where header copy A starts; copy B follows at [`REGION`].
pub(crate) const HEADER_OFFSETS: [u64; 2] = [0, REGION];
/// Most bytes of one header copy, its MAC included.
pub(crate) const HEADER_MAX: usize = REGION as usize;
/// Where the journal starts.
pub(crate) const JOURNAL_OFFSET: u64 = 2 * REGION;
/// Bytes of one journal superblock copy on disk (the encoding uses the first few).
pub(crate) const SUPERBLOCK_SPAN: u64 = 4096;
/// Bytes of one slot record.
pub(crate) const RECORD_LEN: usize = 48;
/// Bytes of one metadata entry.
pub(crate) const ENTRY_LEN: usize = 32;
/// Bytes of a MAC (HMAC-SHA-256).
pub(crate) const MAC_LEN: usize = 32;

/// The header's magic number.
pub(crate) const HEADER_MAGIC: &[u8; 8] = b"KEVOLUM1";
/// The journal superblock's magic number.
pub(crate) const JOURNAL_MAGIC: &[u8; 8] = b"KEVJRNL1";
/// The only header version.
pub(crate) const VERSION: u16 = 1;

/// Smallest and largest block sizes.
pub(crate) const MIN_BLOCK: u32 = 512;
/// See [`MIN_BLOCK`].
pub(crate) const MAX_BLOCK: u32 = 64 * 1024;
/// Fewest journal slots.
pub(crate) const MIN_SLOTS: u32 = 16;
/// Most journal bytes (slots × block size): the journal is mirrored in memory while open.
pub(crate) const MAX_JOURNAL_BYTES: u64 = 1 << 30;
/// Most key generations a header holds (two only while a rekey runs).
const MAX_GENS: u8 = 2;
/// Most key slots per generation.
pub(crate) const MAX_SLOTS: u16 = 255;
/// Largest generation number: an entry stores it in 24 bits.
pub(crate) const MAX_GEN: u32 = (1 << 24) - 1;

/// Metadata entry kind: the block is sealed in the data area.
pub(crate) const KIND_DATA: u8 = 0x01;
/// Metadata entry kind: the block reads as zeros (the entry seals the empty plaintext).
pub(crate) const KIND_ZERO: u8 = 0x02;

fn malformed(why: &str) -> VolumeError {
    VolumeError::Malformed(why.to_owned())
}

fn truncated(_: FormatError) -> VolumeError {
    malformed("truncated or malformed field")
}

/// Which AEAD seals the blocks (the header's `aead` byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum VolumeAead {
    /// AES-256-GCM-SIV (RFC 8452): nonce-misuse resistant, the default.
    #[default]
    GcmSiv,
    /// AES-256-GCM: 2^32 seals per key generation with random nonces.
    Gcm,
}

impl VolumeAead {
    pub(crate) fn byte(self) -> u8 {
        match self {
            VolumeAead::GcmSiv => 1,
            VolumeAead::Gcm => 2,
        }
    }

    fn from_byte(b: u8) -> Result<Self, VolumeError> {
        match b {
            1 => Ok(VolumeAead::GcmSiv),
            2 => Ok(VolumeAead::Gcm),
            _ => Err(malformed("unknown AEAD")),
        }
    }

    /// Most seals one key generation may make (see `docs/VOLUME-FORMAT.md`, "Seal budget").
    pub(crate) fn seal_limit(self) -> u64 {
        match self {
            // NIST SP 800-38D §8.3: random 96-bit IVs, at most 2^32 invocations per key.
            VolumeAead::Gcm => 1 << 32,
            // RFC 8452 §9: GCM-SIV derives a fresh key per nonce, so random nonces allow far
            // more than GCM's 2^32; 2^48 stays conservative (docs/VOLUME-FORMAT.md).
            VolumeAead::GcmSiv => 1 << 48,
        }
    }

    /// The name used in `info` and docs.
    pub fn name(self) -> &'static str {
        match self {
            VolumeAead::GcmSiv => "AES-256-GCM-SIV",
            VolumeAead::Gcm => "AES-256-GCM",
        }
    }
}

/// Where each region of a volume starts, from its size, block size and journal slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    pub(crate) size: u64,
    pub(crate) block_size: u32,
    pub(crate) blocks: u64,
    pub(crate) slots: u32,
    pub(crate) records_offset: u64,
    pub(crate) slot_data_offset: u64,
    pub(crate) meta_offset: u64,
    pub(crate) data_offset: u64,
    pub(crate) file_len: u64,
}

fn round_up(x: u64) -> Option<u64> {
    x.checked_add(REGION - 1).map(|v| v / REGION * REGION)
}

impl Layout {
    /// Checks the geometry and places the regions; any overflow or bad value is an error.
    pub(crate) fn new(size: u64, block_size: u32, slots: u32) -> Result<Layout, VolumeError> {
        if !block_size.is_power_of_two() || !(MIN_BLOCK..=MAX_BLOCK).contains(&block_size) {
            return Err(malformed(
                "the block size must be a power of two from 512 to 65536",
            ));
        }
        if size == 0 || size % u64::from(block_size) != 0 {
            return Err(malformed(
                "the size must be a positive multiple of the block size",
            ));
        }
        if slots < MIN_SLOTS || u64::from(slots) * u64::from(block_size) > MAX_JOURNAL_BYTES {
            return Err(malformed("the journal must hold 16 slots to 1 GiB"));
        }
        let blocks = size / u64::from(block_size);
        let too_big = || malformed("the volume is too large");
        let records_offset = JOURNAL_OFFSET + 2 * SUPERBLOCK_SPAN;
        let slot_data_offset =
            round_up(records_offset + u64::from(slots) * RECORD_LEN as u64).ok_or_else(too_big)?;
        let meta_offset = round_up(slot_data_offset + u64::from(slots) * u64::from(block_size))
            .ok_or_else(too_big)?;
        let meta_len = blocks.checked_mul(ENTRY_LEN as u64).ok_or_else(too_big)?;
        let data_offset = meta_offset
            .checked_add(meta_len)
            .and_then(round_up)
            .ok_or_else(too_big)?;
        let file_len = data_offset.checked_add(size).ok_or_else(too_big)?;
        // Offsets must also fit the platform's file offsets (i64).
        if file_len > i64::MAX as u64 {
            return Err(too_big());
        }
        Ok(Layout {
            size,
            block_size,
            blocks,
            slots,
            records_offset,
            slot_data_offset,
            meta_offset,
            data_offset,
            file_len,
        })
    }

    /// The default journal slots for a volume: clamp(size / 16, 4 MiB, 64 MiB) of journal (never
    /// more than the volume itself), or
    /// `journal_bytes` if given, in blocks, at least [`MIN_SLOTS`].
    pub(crate) fn default_slots(size: u64, block_size: u32, journal_bytes: Option<u64>) -> u32 {
        // Large: every checkpoint costs three fdatasyncs, so fewer of them is most of the speed
        // of sustained writes; the price is image space and up to this much RAM (the mirror).
        let bytes = journal_bytes.unwrap_or((size / 16).clamp(4 << 20, 64 << 20).min(size));
        let bytes = bytes.min(MAX_JOURNAL_BYTES);
        let slots = bytes / u64::from(block_size.max(1));
        (slots as u32).max(MIN_SLOTS)
    }

    pub(crate) fn superblock_offset(&self, copy: usize) -> u64 {
        JOURNAL_OFFSET + copy as u64 * SUPERBLOCK_SPAN
    }
    pub(crate) fn record_offset(&self, slot: u32) -> u64 {
        self.records_offset + u64::from(slot) * RECORD_LEN as u64
    }
    pub(crate) fn slot_data_offset(&self, slot: u32) -> u64 {
        self.slot_data_offset + u64::from(slot) * u64::from(self.block_size)
    }
    pub(crate) fn entry_offset(&self, index: u64) -> u64 {
        self.meta_offset + index * ENTRY_LEN as u64
    }
    pub(crate) fn data_block_offset(&self, index: u64) -> u64 {
        self.data_offset + index * u64::from(self.block_size)
    }
}

/// A block's metadata entry: `nonce[12] | tag[16] | kind u8 | gen u24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) nonce: [u8; 12],
    pub(crate) tag: [u8; 16],
    pub(crate) kind: u8,
    pub(crate) gen: u32,
}

impl Entry {
    pub(crate) fn encode(&self) -> [u8; ENTRY_LEN] {
        let mut out = [0u8; ENTRY_LEN];
        out[..12].copy_from_slice(&self.nonce);
        out[12..28].copy_from_slice(&self.tag);
        out[28] = self.kind;
        out[29..].copy_from_slice(&self.gen.to_be_bytes()[1..]);
        out
    }

    /// Any 32 bytes decode; [`Entry::is_valid`] says whether they can stand for a block.
    pub(crate) fn decode(b: &[u8; ENTRY_LEN]) -> Entry {
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&b[..12]);
        let mut tag = [0u8; 16];
        tag.copy_from_slice(&b[12..28]);
        Entry {
            nonce,
            tag,
            kind: b[28],
            gen: u32::from_be_bytes([0, b[29], b[30], b[31]]),
        }
    }

    /// Kind data or zero, and a generation: an all-zero entry (a punched hole) is not.
    pub(crate) fn is_valid(&self) -> bool {
        (self.kind == KIND_DATA || self.kind == KIND_ZERO) && self.gen != 0
    }
}

/// A journal slot record: `index u64 | entry[32] | epoch u64`; the index's top bit flags a
/// "data home" record, whose sealed data is at the block's home, not in the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) index: u64,
    pub(crate) entry: Entry,
    pub(crate) epoch: u64,
    pub(crate) home: bool,
}

/// The index bit of a "data home" record (indices are far below it).
const RECORD_HOME: u64 = 1 << 63;

impl Record {
    pub(crate) fn encode(&self) -> [u8; RECORD_LEN] {
        let mut out = [0u8; RECORD_LEN];
        let flag = if self.home { RECORD_HOME } else { 0 };
        out[..8].copy_from_slice(&(self.index | flag).to_be_bytes());
        out[8..40].copy_from_slice(&self.entry.encode());
        out[40..].copy_from_slice(&self.epoch.to_be_bytes());
        out
    }

    pub(crate) fn decode(b: &[u8; RECORD_LEN]) -> Record {
        let mut entry = [0u8; ENTRY_LEN];
        entry.copy_from_slice(&b[8..40]);
        let index = u64::from_be_bytes(b[..8].try_into().expect("8 bytes"));
        Record {
            index: index & !RECORD_HOME,
            entry: Entry::decode(&entry),
            epoch: u64::from_be_bytes(b[40..].try_into().expect("8 bytes")),
            home: index & RECORD_HOME != 0,
        }
    }
}

/// A journal superblock: `magic | epoch u64 | count u32 | sha256(records) | hmac[32]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Superblock {
    pub(crate) epoch: u64,
    pub(crate) count: u32,
    pub(crate) digest: [u8; 32],
}

/// Bytes of a superblock's encoding before its MAC.
pub(crate) const SUPERBLOCK_BODY: usize = 8 + 8 + 4 + 32;

impl Superblock {
    /// The bytes the MAC covers (the MAC key is the volume's own; the volume ID is added by
    /// the caller).
    pub(crate) fn body(&self) -> [u8; SUPERBLOCK_BODY] {
        let mut out = [0u8; SUPERBLOCK_BODY];
        out[..8].copy_from_slice(JOURNAL_MAGIC);
        out[8..16].copy_from_slice(&self.epoch.to_be_bytes());
        out[16..20].copy_from_slice(&self.count.to_be_bytes());
        out[20..].copy_from_slice(&self.digest);
        out
    }

    /// Parses a superblock and returns it with its MAC; `None` for anything that is not one.
    pub(crate) fn decode(b: &[u8]) -> Option<(Superblock, [u8; MAC_LEN])> {
        if b.len() < SUPERBLOCK_BODY + MAC_LEN || &b[..8] != JOURNAL_MAGIC {
            return None;
        }
        let mut digest = [0u8; 32];
        digest.copy_from_slice(&b[20..52]);
        let mut mac = [0u8; MAC_LEN];
        mac.copy_from_slice(&b[SUPERBLOCK_BODY..SUPERBLOCK_BODY + MAC_LEN]);
        Some((
            Superblock {
                epoch: u64::from_be_bytes(b[8..16].try_into().ok()?),
                count: u32::from_be_bytes(b[16..20].try_into().ok()?),
                digest,
            },
            mac,
        ))
    }
}

/// The wrapped copies of one generation's volume key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GenSlots {
    pub(crate) gen: u32,
    pub(crate) slots: Vec<EncryptedDataKey>,
}

/// One header copy's fields (its MAC is computed and checked by the caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) seq: u64,
    pub(crate) volume_id: [u8; 32],
    pub(crate) size: u64,
    pub(crate) block_size: u32,
    pub(crate) aead: VolumeAead,
    pub(crate) journal_slots: u32,
    pub(crate) write_gen: u32,
    pub(crate) seals_reserved: u64,
    pub(crate) rekey_from_gen: u32,
    pub(crate) rekey_cursor: u64,
    pub(crate) gens: Vec<GenSlots>,
}

impl Header {
    /// The layout the header describes.
    pub(crate) fn layout(&self) -> Result<Layout, VolumeError> {
        Layout::new(self.size, self.block_size, self.journal_slots)
    }

    /// The header's bytes up to its MAC (header_len counts the MAC too).
    pub(crate) fn encode_body(&self) -> Result<Vec<u8>, VolumeError> {
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(HEADER_MAGIC);
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.extend_from_slice(&[0; 4]); // header_len, set below
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.volume_id);
        out.extend_from_slice(&self.size.to_be_bytes());
        out.extend_from_slice(&self.block_size.to_be_bytes());
        out.push(self.aead.byte());
        out.extend_from_slice(&self.journal_slots.to_be_bytes());
        out.extend_from_slice(&self.write_gen.to_be_bytes());
        out.extend_from_slice(&self.seals_reserved.to_be_bytes());
        out.extend_from_slice(&self.rekey_from_gen.to_be_bytes());
        out.extend_from_slice(&self.rekey_cursor.to_be_bytes());
        if self.gens.is_empty() || self.gens.len() > MAX_GENS as usize {
            return Err(malformed("a header holds one or two key generations"));
        }
        out.push(self.gens.len() as u8);
        for g in &self.gens {
            out.extend_from_slice(&g.gen.to_be_bytes());
            if g.slots.is_empty() || g.slots.len() > MAX_SLOTS as usize {
                return Err(malformed("a generation holds 1 to 255 key slots"));
            }
            out.extend_from_slice(&(g.slots.len() as u16).to_be_bytes());
            for slot in &g.slots {
                slot.encode(&mut out)
                    .map_err(|_| malformed("a key slot field is too long"))?;
            }
        }
        let len = out.len() + MAC_LEN;
        if len > HEADER_MAX {
            return Err(malformed(
                "the key slots do not fit in the 64 KiB header: remove some",
            ));
        }
        out[10..14].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(out)
    }

    /// Parses a header copy from the start of `region` (up to 64 KiB); returns the header,
    /// the bytes its MAC covers, and the MAC. Never panics.
    pub(crate) fn decode(region: &[u8]) -> Result<(Header, &[u8], [u8; MAC_LEN]), VolumeError> {
        let mut r = Reader::new(region);
        if r.take(8).map_err(truncated)? != HEADER_MAGIC {
            return Err(malformed("no volume header magic"));
        }
        let version = r.u16().map_err(truncated)?;
        if version != VERSION {
            return Err(malformed(&format!("unknown volume version {version}")));
        }
        let len = r.u32().map_err(truncated)? as usize;
        if len > HEADER_MAX || len > region.len() || len < 14 + MAC_LEN {
            return Err(malformed("bad header length"));
        }
        let body = &region[..len - MAC_LEN];
        let mut mac = [0u8; MAC_LEN];
        mac.copy_from_slice(&region[len - MAC_LEN..len]);
        // Fields are read from the body only, so none can run into the MAC.
        let mut r = Reader::new(body);
        r.take(14).map_err(truncated)?;
        let u64 = |r: &mut Reader<'_>| r.array::<8>().map(u64::from_be_bytes).map_err(truncated);
        let seq = u64(&mut r)?;
        let volume_id = r.array::<32>().map_err(truncated)?;
        let size = u64(&mut r)?;
        let block_size = r.u32().map_err(truncated)?;
        let aead = VolumeAead::from_byte(r.u8().map_err(truncated)?)?;
        let journal_slots = r.u32().map_err(truncated)?;
        let write_gen = r.u32().map_err(truncated)?;
        let seals_reserved = u64(&mut r)?;
        let rekey_from_gen = r.u32().map_err(truncated)?;
        let rekey_cursor = u64(&mut r)?;
        let gen_count = r.u8().map_err(truncated)?;
        if gen_count == 0 || gen_count > MAX_GENS {
            return Err(malformed("a header holds one or two key generations"));
        }
        let mut gens = Vec::with_capacity(gen_count as usize);
        for _ in 0..gen_count {
            let gen = r.u32().map_err(truncated)?;
            let count = r.u16().map_err(truncated)?;
            if count == 0 || count > MAX_SLOTS {
                return Err(malformed("a generation holds 1 to 255 key slots"));
            }
            let mut slots = Vec::with_capacity(count as usize);
            for _ in 0..count {
                slots.push(EncryptedDataKey::read(&mut r).map_err(truncated)?);
            }
            gens.push(GenSlots { gen, slots });
        }
        if r.remaining() != 0 {
            return Err(malformed("bytes after the key slots"));
        }
        let header = Header {
            seq,
            volume_id,
            size,
            block_size,
            aead,
            journal_slots,
            write_gen,
            seals_reserved,
            rekey_from_gen,
            rekey_cursor,
            gens,
        };
        header.check()?;
        Ok((header, body, mac))
    }

    /// The rules between fields that any header must keep.
    fn check(&self) -> Result<(), VolumeError> {
        self.layout()?;
        let has = |gen: u32| self.gens.iter().any(|g| g.gen == gen);
        if self.write_gen == 0 || self.write_gen > MAX_GEN || !has(self.write_gen) {
            return Err(malformed("the write generation has no key slots"));
        }
        if self.gens.iter().any(|g| g.gen == 0 || g.gen > MAX_GEN) {
            return Err(malformed("bad key generation number"));
        }
        if self.gens.len() == 2 && self.gens[0].gen == self.gens[1].gen {
            return Err(malformed("a key generation is listed twice"));
        }
        let rekeying = self.rekey_from_gen != 0;
        if rekeying != (self.gens.len() == 2) || (rekeying && !has(self.rekey_from_gen)) {
            return Err(malformed(
                "the rekey state does not match the key generations",
            ));
        }
        if rekeying && self.rekey_from_gen == self.write_gen {
            return Err(malformed("a rekey must move to a new generation"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header() -> Header {
        Header {
            seq: 7,
            volume_id: [9; 32],
            size: 1 << 20,
            block_size: 4096,
            aead: VolumeAead::GcmSiv,
            journal_slots: 64,
            write_gen: 2,
            seals_reserved: 1 << 20,
            rekey_from_gen: 1,
            rekey_cursor: 17,
            gens: vec![
                GenSlots {
                    gen: 1,
                    slots: vec![EncryptedDataKey {
                        provider_id: "ns".into(),
                        provider_info: b"info".to_vec(),
                        ciphertext: vec![1; 60],
                    }],
                },
                GenSlots {
                    gen: 2,
                    slots: vec![
                        EncryptedDataKey {
                            provider_id: "aws-kms".into(),
                            provider_info: b"arn".to_vec(),
                            ciphertext: vec![2; 180],
                        };
                        2
                    ],
                },
            ],
        }
    }

    fn encoded(h: &Header) -> Vec<u8> {
        let mut bytes = h.encode_body().unwrap();
        bytes.extend_from_slice(&[0xAB; MAC_LEN]);
        bytes
    }

    #[test]
    fn header_round_trips_and_reports_its_mac() {
        let h = header();
        let mut bytes = encoded(&h);
        let body_len = bytes.len() - MAC_LEN;
        bytes.resize(HEADER_MAX, 0x55); // the rest of the region is ignored
        let (back, body, mac) = Header::decode(&bytes).unwrap();
        assert_eq!(back, h);
        assert_eq!(body.len(), body_len);
        assert_eq!(mac, [0xAB; MAC_LEN]);
    }

    #[test]
    fn inconsistent_headers_are_refused() {
        let mut h = header();
        h.rekey_from_gen = 0; // two gens but no rekey
        assert!(Header::decode(&encoded(&h)).is_err());
        let mut h = header();
        h.write_gen = 3;
        assert!(Header::decode(&encoded(&h)).is_err());
        let mut h = header();
        h.block_size = 4000;
        assert!(Header::decode(&encoded(&h)).is_err());
        let mut h = header();
        h.journal_slots = u32::MAX;
        assert!(Header::decode(&encoded(&h)).is_err());
        let mut h = header();
        h.size = u64::MAX - 4095;
        assert!(Header::decode(&encoded(&h)).is_err());
    }

    #[test]
    fn layout_regions_are_aligned_and_disjoint() {
        for bs in [512u32, 4096, 65536] {
            let l = Layout::new(1 << 24, bs, 64).unwrap();
            assert!(l.records_offset >= JOURNAL_OFFSET + 2 * SUPERBLOCK_SPAN);
            assert!(l.slot_data_offset >= l.record_offset(64));
            assert!(l.meta_offset >= l.slot_data_offset(64));
            assert!(l.data_offset >= l.entry_offset(l.blocks));
            for off in [l.slot_data_offset, l.meta_offset, l.data_offset] {
                assert_eq!(off % REGION, 0);
            }
            assert_eq!(l.file_len, l.data_offset + (1 << 24));
        }
        assert!(Layout::new(0, 4096, 64).is_err());
        assert!(Layout::new(4096, 256, 64).is_err());
        assert!(Layout::new(4096, 4096, 8).is_err());
        assert!(Layout::new(u64::MAX / 2 * 2, 65536, 16).is_err());
        assert_eq!(Layout::default_slots(1 << 30, 4096, None), 16384);
        assert_eq!(Layout::default_slots(16 << 20, 4096, None), 1024);
        assert_eq!(Layout::default_slots(1 << 20, 4096, None), 256);
        assert_eq!(Layout::default_slots(1 << 20, 65536, Some(4096)), MIN_SLOTS);
    }

    #[test]
    fn entries_and_records_round_trip_and_zero_entries_are_invalid() {
        let e = Entry {
            nonce: [1; 12],
            tag: [2; 16],
            kind: KIND_ZERO,
            gen: MAX_GEN,
        };
        assert_eq!(Entry::decode(&e.encode()), e);
        assert!(e.is_valid());
        assert!(!Entry::decode(&[0; ENTRY_LEN]).is_valid());
        let r = Record {
            index: (1 << 62) - 3,
            entry: e,
            epoch: 99,
            home: false,
        };
        assert_eq!(Record::decode(&r.encode()), r);
        let h = Record { home: true, ..r };
        assert_eq!(Record::decode(&h.encode()), h);
        assert_ne!(h.encode(), r.encode());
        let s = Superblock {
            epoch: 5,
            count: 12,
            digest: [7; 32],
        };
        let mut bytes = s.body().to_vec();
        bytes.extend_from_slice(&[3; MAC_LEN]);
        assert_eq!(Superblock::decode(&bytes), Some((s, [3; MAC_LEN])));
        assert_eq!(Superblock::decode(&bytes[..60]), None);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = Header::decode(&bytes);
            let _ = Superblock::decode(&bytes);
            let mut with_magic = HEADER_MAGIC.to_vec();
            with_magic.extend_from_slice(&bytes);
            let _ = Header::decode(&with_magic);
        }

        #[test]
        fn mutated_headers_never_panic(at in 0usize..1024, value in any::<u8>(), cut in 0usize..1024) {
            let mut bytes = encoded(&header());
            let at = at % bytes.len();
            bytes[at] = value;
            let _ = Header::decode(&bytes);
            bytes.truncate(cut % bytes.len());
            let _ = Header::decode(&bytes);
        }
    }
}
