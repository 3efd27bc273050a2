//! `inspect`: a message's header (and, for files, its layout) as JSON.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use kms_envelope::format::HeaderLimits;
use kms_envelope::stream::{scan_layout, DEFAULT_MAX_ENCRYPTED_DATA_KEYS, DEFAULT_MAX_HEADER_LEN};
use kms_envelope::Error;
use serde_json::{json, Value};

use crate::exit::{failure, io_failure, shown, Failure};
use crate::term::json_text;
use crate::term::to_stdout;

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn inspect(input: &Path) -> Result<(), Failure> {
    let limits = HeaderLimits {
        max_encrypted_data_keys: DEFAULT_MAX_ENCRYPTED_DATA_KEYS,
        max_header_len: DEFAULT_MAX_HEADER_LEN,
    };
    let name = shown(input);
    let bad = |e: Error| failure(&format!("{name} is not a readable message"), e);
    let (header, layout) = if input == Path::new("-") {
        let mut bytes = Vec::new();
        io::stdin()
            .lock()
            .take(DEFAULT_MAX_HEADER_LEN as u64)
            .read_to_end(&mut bytes)
            .map_err(|e| io_failure("cannot read", input, e))?;
        let (h, _) = kms_envelope::format::Header::parse(&bytes, &limits)
            .map_err(bad)?
            .ok_or_else(|| bad(kms_envelope::format::FormatError::Truncated.into()))?;
        (h.body, None)
    } else {
        let mut f = File::open(input).map_err(|e| io_failure("cannot open input", input, e))?;
        let layout = scan_layout(&mut f, &limits).map_err(bad)?;
        (layout.header.clone(), Some(layout))
    };
    let keys: Vec<Value> = header
        .encrypted_data_keys
        .iter()
        .map(|k| {
            let info = match std::str::from_utf8(&k.provider_info) {
                Ok(s) if !s.chars().any(char::is_control) => json!(s),
                _ => json!({ "Hex": hex(&k.provider_info) }),
            };
            json!({ "ProviderId": k.provider_id, "ProviderInfo": info, "CiphertextLength": k.ciphertext.len() })
        })
        .collect();
    let context: serde_json::Map<String, Value> = header
        .context
        .iter()
        .map(|(k, v)| (k.to_owned(), json!(v)))
        .collect();
    let mut doc = json!({
        "Version": header.version(),
        "AlgorithmSuite": { "Id": format!("0x{:04X}", header.suite.id()), "Name": header.suite.name() },
        "MessageId": hex(&header.message_id),
        "EncryptionContext": context,
        "EncryptedDataKeys": keys,
        "ContentType": match header.content_type {
            kms_envelope::format::ContentType::Framed => "framed",
            kms_envelope::format::ContentType::NonFramed => "non-framed",
        },
        "FrameLength": header.frame_length,
    });
    if let Some(l) = layout {
        doc["HeaderLength"] = json!(l.header_len);
        doc["Frames"] = json!(l.frames);
        doc["PlaintextLength"] = json!(l.plaintext_len);
        doc["Authenticated"] = json!(false);
    }
    to_stdout(&json_text(&doc))
}
