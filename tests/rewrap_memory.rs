//! Re-wrap memory, measured: a counting allocator (one per test binary, hence this file).

#[path = "support/data.rs"]
mod data;

use std::sync::Mutex;

use kms_envelope::stream::DEFAULT_MAX_FRAME_LENGTH;
use kms_envelope::{AlgorithmSuite, CommitmentPolicy, Decryptor, Encryptor, RawAesKeyring};

use data::pseudo_random as data;

#[path = "support/alloc.rs"]
mod alloc;
#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;
use alloc::measure;

/// The tests share one heap count: one measurement at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const MIB: usize = 1 << 20;

#[test]
fn a_small_message_with_large_frames_gets_a_small_pump() {
    let _one = SERIAL.lock().unwrap();
    let old = RawAesKeyring::new("ns", "old", &[1; 32]).unwrap();
    let new = RawAesKeyring::new("ns", "new", &[2; 32]).unwrap();
    let pt = data(1000);
    for frame in [1 << 20, 4 << 20, DEFAULT_MAX_FRAME_LENGTH] {
        let msg = Encryptor::new(&old)
            .frame_length(frame)
            .threads(1)
            .encrypt(&pt)
            .unwrap();
        let (done, grew) = measure(|| {
            Decryptor::new(&old)
                .threads(1)
                .rewrap(&msg[..])
                .unwrap()
                .remove("ns:old")
                .unwrap()
                .write(&new, Vec::with_capacity(4096))
                .unwrap()
        });
        assert!(grew < MIB, "frame {frame}: the heap grew by {grew} bytes");
        assert_eq!(Decryptor::new(&new).decrypt(&done.output).unwrap(), pt);
    }
}

/// A signed body is not held whole to be re-wrapped (its frames go on as they verify, the
/// final one waiting for the signature): memory stays far below the message size.
#[test]
fn a_signed_message_is_rewrapped_in_bounded_memory() {
    let _one = SERIAL.lock().unwrap();
    let old = RawAesKeyring::new("ns", "old", &[1; 32]).unwrap();
    let new = RawAesKeyring::new("ns", "new", &[2; 32]).unwrap();
    let len = 48 * MIB;
    use AlgorithmSuite::*;
    for suite in [
        Aes256GcmHkdfSha512CommitKeyEcdsaP384,
        Aes256GcmIv12Tag16HkdfSha384EcdsaP384,
    ] {
        let msg = Encryptor::new(&old)
            .suite(suite)
            .dangerous_commitment_policy(if suite.is_committing() {
                CommitmentPolicy::RequireEncryptRequireDecrypt
            } else {
                CommitmentPolicy::ForbidEncryptAllowDecrypt
            })
            .encrypt(&data(len))
            .unwrap();
        for threads in [1, 4] {
            // The output goes to a sink that counts, so only the re-wrap's own memory shows.
            let (done, grew) = measure(|| {
                Decryptor::new(&old)
                    .dangerous_commitment_policy(CommitmentPolicy::RequireEncryptAllowDecrypt)
                    .threads(threads)
                    .rewrap(&msg[..])
                    .unwrap()
                    .remove("ns:old")
                    .unwrap()
                    .write(&new, Counted(0))
                    .unwrap()
            });
            eprintln!("{suite} threads {threads}: grew {grew}");
            assert!(done.output.0 > len as u64);
            assert!(
                grew < 24 * MIB,
                "{suite}, {threads} threads: the heap grew by {grew} bytes"
            );
        }
    }
}

/// Counts what is written, keeps nothing.
struct Counted(u64);

impl std::io::Write for Counted {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0 += b.len() as u64;
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
