//! Encrypt a file under a KMS key, decrypt it back, and check the round trip.
//!
//! ```sh
//! cargo run --example file-encrypt -- --key alias/app-data IN OUT
//! ```
//! Credentials, Region and endpoint come from the usual AWS configuration; set
//! `AWS_ENDPOINT_URL` to use a local KMS such as moto's server.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};

use kms_envelope::keyring::KmsKeyring;
use kms_envelope::{Decryptor, EncryptionContext, Encryptor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Arguments: --key KEY IN OUT
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [flag, key, input, output] = args.as_slice() else {
        return Err("usage: file-encrypt --key KEY IN OUT".into());
    };
    if flag != "--key" {
        return Err("usage: file-encrypt --key KEY IN OUT".into());
    }

    // 1. A keyring: GenerateDataKey on this KMS key for each message.
    let keyring = KmsKeyring::builder().generator(key).build()?;

    // 2. An encryption context: not secret, but bound to the message and checked by KMS.
    let context = EncryptionContext::new()
        .with("file", input.as_str())
        .with("purpose", "example");

    // 3. Stream-encrypt IN into OUT, frame by frame; memory stays small for any size.
    let mut writer = Encryptor::new(&keyring)
        .context(context.clone())
        .writer(BufWriter::new(File::create(output)?))?;
    std::io::copy(&mut BufReader::new(File::open(input)?), &mut writer)?;
    writer.finish()?.flush()?; // writes the final frame: without it the message is incomplete

    // 4. Stream-decrypt OUT; every byte read has passed its frame's authentication tag.
    let mut reader = Decryptor::new(&keyring)
        .expected_context(context)
        .reader(BufReader::new(File::open(output)?))?;
    println!(
        "{output}: {} wrapped data key(s), suite {}",
        reader.header().encrypted_data_keys.len(),
        reader.header().suite
    );

    // 5. Compare with the original, chunk by chunk.
    let mut original = BufReader::new(File::open(input)?);
    let (mut a, mut b) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut a)?;
        if n == 0 {
            break;
        }
        original.read_exact(&mut b[..n])?;
        if a[..n] != b[..n] {
            return Err(format!("mismatch after {total} bytes").into());
        }
        total += n as u64;
    }
    if original.read(&mut b)? != 0 {
        return Err("the decrypted file is shorter than the original".into());
    }
    println!("round trip OK: {total} bytes");
    Ok(())
}
