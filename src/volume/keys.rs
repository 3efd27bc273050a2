//! The volume's keys: one random volume key per generation, wrapped in key slots by keyrings;
//! the block, header and journal keys derived from it (HKDF-SHA-256); block seal and open; the
//! header and journal MACs (HMAC-SHA-256, verified in constant time).
//!
//! Freshness of every (key, nonce) pair sealed here: the block key is unique to (volume key,
//! volume ID); each seal draws a new 96-bit nonce from the OS CSPRNG, never a counter, and one
//! generation seals at most [`VolumeAead::seal_limit`] times (enforced by the volume).

use aws_lc_rs::hmac;

use super::layout::{Entry, VolumeAead, KIND_ZERO, MAC_LEN};
use crate::crypto::kdf::hkdf_sha256;
use crate::crypto::{random_bytes, AeadKey};
use crate::format::{AlgorithmSuite, EncryptedDataKey, EncryptionContext};
use crate::materials::{DataKey, DecryptionMaterials, EncryptionMaterials};
use crate::{Error, ErrorKind, Keyring, VolumeError};

/// The suite whose key length the volume key has (32 bytes); it never seals anything itself.
const SLOT_SUITE: AlgorithmSuite = AlgorithmSuite::Aes256GcmHkdfSha512CommitKey;
/// Encryption-context keys that bind each key slot to its volume and generation.
pub(crate) const CONTEXT_VOLUME_ID: &str = "kms-envelope:volume-id";
/// See [`CONTEXT_VOLUME_ID`].
pub(crate) const CONTEXT_GEN: &str = "kms-envelope:volume-gen";

const INFO_BLOCK: &[u8] = b"kms-envelope volume v1 block";
const INFO_HEADER: &[u8] = b"kms-envelope volume v1 header";
const INFO_JOURNAL: &[u8] = b"kms-envelope volume v1 journal";

/// Bytes of a block's associated data.
const AAD_LEN: usize = 4 + 32 + 4 + 8 + 4 + 1;

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The encryption context of a key slot (not stored: rebuilt from the header at open).
pub(crate) fn slot_context(volume_id: &[u8; 32], gen: u32) -> EncryptionContext {
    EncryptionContext::new()
        .with(CONTEXT_VOLUME_ID, hex(volume_id))
        .with(CONTEXT_GEN, gen.to_string())
}

/// One generation's keys. The volume key is kept (zeroized on drop) to wrap it again for
/// `add_key`; the AES and HMAC keys are freed by aws-lc-rs, which cleanses them.
pub(crate) struct GenKey {
    pub(crate) gen: u32,
    volume_key: DataKey,
    block: AeadKey,
    header_mac: hmac::Key,
    journal_mac: hmac::Key,
}

impl std::fmt::Debug for GenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GenKey(gen {}, redacted)", self.gen)
    }
}

impl GenKey {
    /// Derives generation `gen`'s keys from its volume key.
    pub(crate) fn derive(
        aead: VolumeAead,
        volume_id: &[u8; 32],
        gen: u32,
        volume_key: DataKey,
    ) -> Result<GenKey, Error> {
        let block_key = hkdf_sha256(volume_key.as_bytes(), volume_id, INFO_BLOCK);
        let block = match aead {
            VolumeAead::GcmSiv => AeadKey::new_gcm_siv(&*block_key),
            VolumeAead::Gcm => AeadKey::new(crate::AeadBackend::AwsLc, &*block_key),
        }
        .map_err(|_| Error::Crypto("the block key was refused"))?;
        let header = hkdf_sha256(volume_key.as_bytes(), volume_id, INFO_HEADER);
        let journal = hkdf_sha256(volume_key.as_bytes(), volume_id, INFO_JOURNAL);
        Ok(GenKey {
            gen,
            volume_key,
            block,
            header_mac: hmac::Key::new(hmac::HMAC_SHA256, &*header),
            journal_mac: hmac::Key::new(hmac::HMAC_SHA256, &*journal),
        })
    }

    pub(crate) fn volume_key(&self) -> &DataKey {
        &self.volume_key
    }

    /// Seals one block: `plaintext` (block_size bytes) into `out` for a data block, or nothing
    /// for a zero marker (`plaintext` None). A fresh random nonce each time.
    pub(crate) fn seal_block(
        &self,
        volume_id: &[u8; 32],
        block_size: u32,
        index: u64,
        plaintext: Option<&[u8]>,
        out: &mut [u8],
    ) -> Result<Entry, Error> {
        let mut nonce = [0u8; 12];
        random_bytes(&mut nonce)?;
        let kind = if plaintext.is_some() {
            super::layout::KIND_DATA
        } else {
            KIND_ZERO
        };
        let aad = block_aad(volume_id, block_size, index, self.gen, kind);
        let buf: &mut [u8] = match plaintext {
            Some(p) => {
                out.copy_from_slice(p);
                out
            }
            None => &mut [],
        };
        let tag = self
            .block
            .seal_in_place(&nonce, &aad, buf)
            .map_err(|_| Error::Crypto("sealing a volume block failed"))?;
        Ok(Entry {
            nonce,
            tag,
            kind,
            gen: self.gen,
        })
    }

    /// Opens a block sealed under this generation: `sealed` into `out` (block_size bytes) for a
    /// data entry, or checks a zero marker (`sealed` ignored) and fills `out` with zeros. On
    /// failure `out` holds zeros and the answer is `false`.
    pub(crate) fn open_block(
        &self,
        volume_id: &[u8; 32],
        block_size: u32,
        index: u64,
        entry: &Entry,
        sealed: &[u8],
        out: &mut [u8],
    ) -> bool {
        let aad = block_aad(volume_id, block_size, index, entry.gen, entry.kind);
        if entry.gen != self.gen || !entry.is_valid() {
            out.fill(0);
            return false;
        }
        if entry.kind == KIND_ZERO {
            out.fill(0);
            return self
                .block
                .open_detached(&entry.nonce, &aad, &[], &entry.tag, &mut [])
                .is_ok();
        }
        self.block
            .open_detached(&entry.nonce, &aad, sealed, &entry.tag, out)
            .is_ok()
    }

    pub(crate) fn header_mac(&self, body: &[u8]) -> [u8; MAC_LEN] {
        tag32(hmac::sign(&self.header_mac, body))
    }

    pub(crate) fn header_verifies(&self, body: &[u8], mac: &[u8; MAC_LEN]) -> bool {
        hmac::verify(&self.header_mac, body, mac).is_ok()
    }

    /// The journal superblock's MAC, over the volume ID and the superblock's body.
    pub(crate) fn journal_mac(&self, volume_id: &[u8; 32], body: &[u8]) -> [u8; MAC_LEN] {
        let mut ctx = hmac::Context::with_key(&self.journal_mac);
        ctx.update(volume_id);
        ctx.update(body);
        tag32(ctx.sign())
    }

    pub(crate) fn journal_verifies(
        &self,
        volume_id: &[u8; 32],
        body: &[u8],
        mac: &[u8; MAC_LEN],
    ) -> bool {
        let mut joined = Vec::with_capacity(32 + body.len());
        joined.extend_from_slice(volume_id);
        joined.extend_from_slice(body);
        hmac::verify(&self.journal_mac, &joined, mac).is_ok()
    }
}

fn tag32(tag: hmac::Tag) -> [u8; MAC_LEN] {
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(tag.as_ref());
    out
}

/// `"KEV1" | volume_id | block_size u32 | index u64 | gen u32 | kind u8`.
fn block_aad(
    volume_id: &[u8; 32],
    block_size: u32,
    index: u64,
    gen: u32,
    kind: u8,
) -> [u8; AAD_LEN] {
    let mut aad = [0u8; AAD_LEN];
    aad[..4].copy_from_slice(b"KEV1");
    aad[4..36].copy_from_slice(volume_id);
    aad[36..40].copy_from_slice(&block_size.to_be_bytes());
    aad[40..48].copy_from_slice(&index.to_be_bytes());
    aad[48..52].copy_from_slice(&gen.to_be_bytes());
    aad[52] = kind;
    aad
}

/// A fresh volume key from `keyring` (KMS GenerateDataKey for a KMS generator), with its slots.
pub(crate) fn wrap_new(
    keyring: &dyn Keyring,
    volume_id: &[u8; 32],
    gen: u32,
) -> Result<(DataKey, Vec<EncryptedDataKey>), Error> {
    let mut m = EncryptionMaterials::new(SLOT_SUITE, slot_context(volume_id, gen));
    pollster::block_on(keyring.on_encrypt(&mut m))?;
    let key = m
        .data_key
        .take()
        .filter(|k| k.len() == 32)
        .ok_or_else(|| Error::Keyring("the keyring made no 32-byte volume key".into()))?;
    check_slots(&m.encrypted_data_keys)?;
    Ok((key, m.encrypted_data_keys))
}

/// Slots for an existing volume key under `keyring` (KMS Encrypt for a KMS keyring).
pub(crate) fn wrap_existing(
    keyring: &dyn Keyring,
    volume_id: &[u8; 32],
    gen: u32,
    key: &DataKey,
) -> Result<Vec<EncryptedDataKey>, Error> {
    let mut m = EncryptionMaterials::new(SLOT_SUITE, slot_context(volume_id, gen));
    m.data_key = Some(key.duplicate());
    pollster::block_on(keyring.on_encrypt(&mut m))?;
    // A keyring must wrap the key it was given, never swap in one of its own.
    let same = m
        .data_key
        .as_ref()
        .is_some_and(|k| k.as_bytes() == key.as_bytes());
    if !same {
        return Err(Error::Keyring("the keyring replaced the volume key".into()));
    }
    check_slots(&m.encrypted_data_keys)?;
    Ok(m.encrypted_data_keys)
}

fn check_slots(slots: &[EncryptedDataKey]) -> Result<(), Error> {
    if slots.is_empty() {
        return Err(Error::Keyring("the keyring wrapped no key slot".into()));
    }
    Ok(())
}

/// Unwraps generation `gen`'s volume key from `slots`, one slot at a time, and keeps the first
/// key `accept` takes (the caller checks the header's MAC with it).
///
/// # Errors
/// [`Error::NoUsableDataKey`] when no slot unwraps; [`VolumeError::HeaderInvalid`] when a slot
/// unwrapped but no key was accepted.
pub(crate) fn unwrap(
    keyring: &dyn Keyring,
    volume_id: &[u8; 32],
    gen: u32,
    slots: &[EncryptedDataKey],
    accept: impl FnMut(&DataKey) -> bool,
) -> Result<DataKey, Error> {
    unwrap_verdict(keyring, volume_id, gen, slots, accept).map_err(|(e, _)| e)
}

/// [`unwrap`], saying with an error whether it is a refusal: every slot was declined by the
/// keyring (no key matched, or KMS said the key does not open it) or unwrapped a key `accept`
/// refused. Anything else (throttling, the network, access denied, a keyring fault) may go
/// away on a retry and says nothing about the slots.
pub(crate) fn unwrap_verdict(
    keyring: &dyn Keyring,
    volume_id: &[u8; 32],
    gen: u32,
    slots: &[EncryptedDataKey],
    mut accept: impl FnMut(&DataKey) -> bool,
) -> Result<DataKey, (Error, bool)> {
    let mut attempts = Vec::new();
    let mut refused = false;
    let mut declined_only = true;
    for slot in slots {
        let mut m = DecryptionMaterials::new(SLOT_SUITE, slot_context(volume_id, gen));
        match pollster::block_on(keyring.on_decrypt(&mut m, std::slice::from_ref(slot))) {
            Ok(()) => match m.take_data_key() {
                Some(key) if accept(&key) => return Ok(key),
                _ => refused = true,
            },
            Err(e) => {
                declined_only &= match &e {
                    Error::NoUsableDataKey(_) => e.kind() == ErrorKind::NoKey,
                    Error::DecryptionFailed => true,
                    e => kms_declined(e),
                };
                match e {
                    Error::NoUsableDataKey(inner) => attempts.extend(inner),
                    e => attempts.push(e),
                }
            }
        }
    }
    if refused {
        return Err((Error::Volume(VolumeError::HeaderInvalid), declined_only));
    }
    Err((Error::NoUsableDataKey(attempts), declined_only))
}

/// KMS answered that this key does not open the slot: a verdict, like a raw key's refusal.
fn kms_declined(e: &Error) -> bool {
    #[cfg(feature = "kms")]
    if let Error::Kms(k) = e {
        return k.kind == crate::keyring::KmsErrorKind::InvalidCiphertext;
    }
    let _ = e;
    false
}

/// A fresh random volume ID.
pub(crate) fn new_volume_id() -> Result<[u8; 32], Error> {
    let mut id = [0u8; 32];
    random_bytes(&mut id)?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RawAesKeyring;

    fn key(aead: VolumeAead, gen: u32) -> GenKey {
        GenKey::derive(aead, &[1; 32], gen, DataKey::generate(32).unwrap()).unwrap()
    }

    #[test]
    fn blocks_open_only_at_their_place_generation_and_kind() {
        for aead in [VolumeAead::GcmSiv, VolumeAead::Gcm] {
            let k = key(aead, 3);
            let id = [1; 32];
            let pt = vec![0x5a; 4096];
            let mut sealed = vec![0; 4096];
            let e = k.seal_block(&id, 4096, 9, Some(&pt), &mut sealed).unwrap();
            assert_ne!(sealed, pt);
            let mut out = vec![0; 4096];
            assert!(k.open_block(&id, 4096, 9, &e, &sealed, &mut out));
            assert_eq!(out, pt);
            // Another index, volume, generation or kind fails, and leaves zeros.
            assert!(!k.open_block(&id, 4096, 10, &e, &sealed, &mut out));
            assert_eq!(out, vec![0; 4096]);
            assert!(!k.open_block(&[2; 32], 4096, 9, &e, &sealed, &mut out));
            let other_gen = Entry { gen: 4, ..e };
            assert!(!k.open_block(&id, 4096, 9, &other_gen, &sealed, &mut out));
            let zero_kind = Entry {
                kind: KIND_ZERO,
                ..e
            };
            assert!(!k.open_block(&id, 4096, 9, &zero_kind, &sealed, &mut out));
            let mut flipped = sealed.clone();
            flipped[100] ^= 1;
            assert!(!k.open_block(&id, 4096, 9, &e, &flipped, &mut out));
            // Zero markers verify with the empty plaintext, at their index only.
            let z = k.seal_block(&id, 4096, 9, None, &mut []).unwrap();
            out.fill(7);
            assert!(k.open_block(&id, 4096, 9, &z, &[], &mut out));
            assert_eq!(out, vec![0; 4096]);
            assert!(!k.open_block(&id, 4096, 8, &z, &[], &mut out));
            let as_data = Entry { kind: 1, ..z };
            assert!(!k.open_block(&id, 4096, 9, &as_data, &sealed, &mut out));
            // Nonces are random: the same block sealed twice differs.
            let again = k.seal_block(&id, 4096, 9, Some(&pt), &mut out).unwrap();
            assert_ne!(again.nonce, e.nonce);
        }
    }

    #[test]
    fn header_and_journal_macs_verify_only_their_bytes() {
        let k = key(VolumeAead::GcmSiv, 1);
        let mac = k.header_mac(b"header");
        assert!(k.header_verifies(b"header", &mac));
        assert!(!k.header_verifies(b"headeR", &mac));
        assert!(!key(VolumeAead::GcmSiv, 1).header_verifies(b"header", &mac));
        let j = k.journal_mac(&[1; 32], b"sb");
        assert!(k.journal_verifies(&[1; 32], b"sb", &j));
        assert!(!k.journal_verifies(&[2; 32], b"sb", &j));
        assert_ne!(j, k.header_mac(b"sb"), "the two MAC keys differ");
    }

    #[test]
    fn slots_unwrap_only_for_their_volume_and_generation() {
        let ring = RawAesKeyring::new("ns", "k", &[4; 32]).unwrap();
        let id = [5; 32];
        let (key, slots) = wrap_new(&ring, &id, 1).unwrap();
        let got = unwrap(&ring, &id, 1, &slots, |_| true).unwrap();
        assert_eq!(got.as_bytes(), key.as_bytes());
        assert!(matches!(
            unwrap(&ring, &id, 2, &slots, |_| true),
            Err(Error::NoUsableDataKey(_))
        ));
        assert!(unwrap(&ring, &[6; 32], 1, &slots, |_| true).is_err());
        assert!(matches!(
            unwrap(&ring, &id, 1, &slots, |_| false),
            Err(Error::Volume(VolumeError::HeaderInvalid))
        ));
        let other = RawAesKeyring::new("ns", "other", &[4; 32]).unwrap();
        let more = wrap_existing(&other, &id, 1, &key).unwrap();
        let got = unwrap(&other, &id, 1, &more, |_| true).unwrap();
        assert_eq!(got.as_bytes(), key.as_bytes());
    }
}
