//! Round-trips a file through a streaming encryption and decryption under a raw AES key.
//!
//! `cargo run --release --example raw-file -- [IN]` (without IN, a 64 MiB sample is made).

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::time::Instant;

use kms_envelope::{DataKey, Decryptor, EncryptionContext, Encryptor, RawAesKeyring};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("kms-envelope-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let input = match std::env::args().nth(1) {
        Some(path) => path.into(),
        None => {
            let path = dir.join("sample.bin");
            let mut f = BufWriter::new(File::create(&path)?);
            for i in 0..64u32 * 1024 {
                f.write_all(&[(i % 251) as u8; 1024])?;
            }
            f.flush()?;
            path
        }
    };
    let size = std::fs::metadata(&input)?.len();

    // In production the wrapping key comes from KMS; here it is a random local key.
    let wrapping_key = DataKey::generate(32)?;
    let keyring = RawAesKeyring::new("demo", "local-key", wrapping_key.as_bytes())?;
    let context = EncryptionContext::new().with("purpose", "demo");

    let sealed = dir.join("sample.bin.encrypted");
    let start = Instant::now();
    let mut writer = Encryptor::new(&keyring)
        .context(context.clone())
        .writer(BufWriter::new(File::create(&sealed)?))?;
    std::io::copy(&mut BufReader::new(File::open(&input)?), &mut writer)?;
    writer.finish()?.flush()?;
    let enc = start.elapsed();

    let opened = dir.join("sample.bin.decrypted");
    let start = Instant::now();
    let mut reader = Decryptor::new(&keyring)
        .expected_context(context)
        .reader(BufReader::new(File::open(&sealed)?))?;
    std::io::copy(&mut reader, &mut BufWriter::new(File::create(&opened)?))?;
    let dec = start.elapsed();

    let same = std::fs::read(&input)? == std::fs::read(&opened)?;
    let mb = size as f64 / 1e6;
    println!("plaintext  {size} bytes");
    println!("ciphertext {} bytes", std::fs::metadata(&sealed)?.len());
    println!("encrypt    {:.0} MB/s", mb / enc.as_secs_f64());
    println!("decrypt    {:.0} MB/s", mb / dec.as_secs_f64());
    println!("round trip {}", if same { "OK" } else { "MISMATCH" });
    std::fs::remove_dir_all(&dir)?;
    if !same {
        return Err("decrypted file differs from the input".into());
    }
    Ok(())
}
