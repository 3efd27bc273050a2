//! The streaming decryptor with a fixed raw AES key (the one the seed corpus was written
//! with), arbitrary input and arbitrary read sizes: plaintext or an error, never a panic, and
//! nothing released from a message that fails.
#![no_main]

use std::io::Read;

use kms_envelope::{CommitmentPolicy, Decryptor, RawAesKeyring};
use libfuzzer_sys::fuzz_target;

struct Trickle<'a>(&'a [u8], usize);

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.0.len().min(buf.len()).min(self.1);
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sizes, message)) = data.split_first() else { return };
    let keyring = RawAesKeyring::new("fuzz", "key", &[0x42; 32]).unwrap();
    let dec = Decryptor::new(&keyring)
        .dangerous_commitment_policy(CommitmentPolicy::RequireEncryptAllowDecrypt)
        .max_frame_length(1 << 20)
        .max_buffered_len(1 << 20)
        .threads(1 + usize::from(sizes >> 7));
    let read_size = 1 + usize::from(sizes & 0x7F) * 37;
    if let Ok(mut r) = dec.reader(Trickle(message, read_size)) {
        let mut out = vec![0u8; read_size];
        while let Ok(n) = r.read(&mut out) {
            if n == 0 {
                break;
            }
        }
    }
    let _ = dec.decrypt(message);
    if let Ok(r) = dec.seekable(message) {
        let mut buf = [0u8; 100];
        let _ = r.read_at(u64::from(sizes) * 1000, &mut buf);
        let _ = r.plaintext_len();
    }
});
