//! The header parser on arbitrary bytes: a header, "need more", or an error; never a panic.
#![no_main]

use kms_envelope::format::{Header, HeaderLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = HeaderLimits { max_encrypted_data_keys: 8, max_header_len: 1 << 16 };
    if let Ok(Some((header, used))) = Header::parse(data, &limits) {
        assert!(used <= data.len());
        // What parsed re-encodes to a header that parses to the same fields.
        let mut again = header.body_bytes.clone();
        again.clear();
        header.body.encode(&mut again).unwrap();
        again.extend_from_slice(&data[header.body_bytes.len()..used]);
        let (reparsed, _) = Header::parse(&again, &limits).unwrap().unwrap();
        assert_eq!(reparsed.body, header.body);
    }
});
