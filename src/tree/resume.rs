//! What a resumed run checks before it trusts an earlier run's output: the run label, the
//! key set, and each output's header against the manifest's record.

use std::ffi::OsStr;
use std::fs::File;

use super::fs::{self, Version};
use super::run::{read_header, wrapped_keys, Op, Run};
use super::TreeOptions;
use crate::format::{EncryptedDataKey, HeaderBody, HeaderLimits, RESERVED_PREFIX};
use crate::{EncryptionContext, Encryptor, Error};

/// What a resumed run must share with the earlier one beyond what an output's header shows:
/// the direction, the commitment policy, and a hash of the whole context including the
/// required-only pairs (which no header stores), then the caller's label.
pub(super) fn run_label(op: Op<'_>, opts: &TreeOptions) -> String {
    use sha2::Digest;
    let (what, policy, context, required): (_, _, _, &[String]) = match op {
        Op::Encrypt(e) => ("encrypt", e.policy, &e.context, &e.required_keys),
        Op::Decrypt(d) => ("decrypt", d.policy, &d.expected_context, &[]),
    };
    let mut h = sha2::Sha256::new();
    // Length-prefixed, so no two contexts hash the same bytes.
    let mut field = |b: &[u8]| {
        h.update((b.len() as u64).to_be_bytes());
        h.update(b);
    };
    for (k, v) in context.iter() {
        field(k.as_bytes());
        field(v.as_bytes());
    }
    let mut required = required.to_vec();
    required.sort();
    for k in &required {
        field(b"required");
        field(k.as_bytes());
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    // What else decides an output's bytes or mode: the path binding and the mode rule.
    let path = opts.context_path.as_deref().map(str::escape_debug);
    let path = path.map_or_else(|| "-".to_owned(), |p| p.to_string());
    let modes = if opts.preserve_mode {
        "preserved"
    } else {
        "owner-only"
    };
    let caller = &opts.run_label;
    format!("{what} {policy:?} context-sha256={hex} context-path={path} modes={modes} {caller}")
}

/// The wrapped keys this run's keyring makes: one empty message is encrypted to see them.
pub(super) fn probe_key_set(e: &Encryptor<'_>) -> Result<Vec<(String, Vec<u8>)>, Error> {
    let message = e.encrypt(b"")?;
    let header = read_header(&mut &message[..])?;
    Ok(key_set(&header.encrypted_data_keys))
}

/// The keys that wrapped a message's data key, as (provider ID, key identity): the provider
/// info, less the per-message IV that ends a raw AES keyring's (name, tag bits 128, IV length
/// 12, IV), so that every message under one set of keys has the same set.
pub(super) fn key_set(edks: &[EncryptedDataKey]) -> Vec<(String, Vec<u8>)> {
    const RAW_AES_SHAPE: [u8; 8] = [0, 0, 0, 128, 0, 0, 0, 12];
    let identity = |k: &EncryptedDataKey| {
        let info = &k.provider_info;
        match info.len().checked_sub(20) {
            Some(name) if k.provider_id != "aws-kms" && info[name..name + 8] == RAW_AES_SHAPE => {
                info[..name + 8].to_vec()
            }
            _ => info.clone(),
        }
    };
    let mut set: Vec<_> = edks
        .iter()
        .map(|k| (k.provider_id.clone(), identity(k)))
        .collect();
    set.sort();
    set.dedup();
    set
}

impl Run<'_> {
    /// Whether an earlier run finished this file, by every rule of the module documentation;
    /// if so, the message ID and wrapped keys to report.
    pub(super) fn already_done(
        &self,
        dst: std::os::fd::BorrowedFd<'_>,
        out_name: &OsStr,
        src: &File,
        version: &Version,
        context: &EncryptionContext,
        path_key: &[u8],
    ) -> Option<(Vec<u8>, Vec<String>)> {
        let record = self.manifest.as_ref()?.previous(path_key)?;
        if record.run != self.label || record.source != *version {
            return None;
        }
        let (out, out_st) = fs::open_regular(dst, out_name, false).ok()?;
        if out_st.st_size as u64 != record.out_size {
            return None;
        }
        // Encrypting, the output is the message; decrypting, the source is.
        let message = match self.op {
            Op::Encrypt(_) => &out,
            Op::Decrypt(_) => src,
        };
        let layout = crate::stream::scan_layout(
            &mut &*message,
            &HeaderLimits {
                max_encrypted_data_keys: crate::stream::DEFAULT_MAX_ENCRYPTED_DATA_KEYS,
                max_header_len: crate::stream::DEFAULT_MAX_HEADER_LEN,
            },
        )
        .ok()?;
        let header = layout.header;
        if header.message_id != record.message_id
            || !stored_context_matches(&header, context, self.op)
        {
            return None;
        }
        if let Op::Encrypt(e) = self.op {
            if header.suite != e.suite
                || header.frame_length != e.frame_length
                || Some(key_set(&header.encrypted_data_keys)) != self.key_set
                || layout.plaintext_len != version.size
            {
                return None;
            }
        }
        Some((
            header.message_id.clone(),
            wrapped_keys(&header.encrypted_data_keys),
        ))
    }
}

/// Whether a message's stored context is what this run writes (encrypting: every pair but the
/// required-only ones, which are not stored) or accepts (decrypting: every expected pair it
/// stores has the expected value).
pub(super) fn stored_context_matches(
    header: &HeaderBody,
    context: &EncryptionContext,
    op: Op<'_>,
) -> bool {
    let stored: Vec<(&str, &str)> = header
        .context
        .iter()
        .filter(|(k, _)| !k.starts_with(RESERVED_PREFIX))
        .collect();
    match op {
        Op::Encrypt(e) => {
            let wanted: Vec<(&str, &str)> = context
                .iter()
                .filter(|(k, _)| !e.required_keys.iter().any(|r| r == k))
                .collect();
            stored == wanted
        }
        Op::Decrypt(_) => context
            .iter()
            .all(|(k, v)| header.context.get(k).is_none_or(|s| s == v)),
    }
}
