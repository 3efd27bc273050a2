//! `inspect`'s layout walk on arbitrary bytes: a layout or an error, never a panic.
#![no_main]

use std::io::Cursor;

use kms_envelope::format::HeaderLimits;
use kms_envelope::stream::scan_layout;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = HeaderLimits { max_encrypted_data_keys: 8, max_header_len: 1 << 16 };
    if let Ok(layout) = scan_layout(&mut Cursor::new(data), &limits) {
        assert!(layout.header_len <= data.len() as u64);
    }
});
