//! Random access (re-wrap has its own tests, in rewrap.rs).

#[path = "support/data.rs"]
mod data;

use std::io::{Read, Seek, SeekFrom};

use kms_envelope::{AlgorithmSuite, Decryptor, Encryptor, Error, RawAesKeyring};

const FRAME: u32 = 65_536;

fn keyring() -> RawAesKeyring {
    RawAesKeyring::new("seek", "key", &[0x21; 32]).unwrap()
}

use data::pseudo_random as data;

#[test]
fn random_ranges_of_a_256_mib_message() {
    let kr = keyring();
    let pt = data((256 << 20) + 12_345);
    let msg = Encryptor::new(&kr)
        .frame_length(FRAME)
        .encrypt(&pt)
        .unwrap();
    let r = Decryptor::new(&kr).seekable(&msg[..]).unwrap();
    assert_eq!(r.plaintext_len().unwrap(), pt.len() as u64);
    assert_eq!(r.frames(), (pt.len() as u64).div_ceil(u64::from(FRAME)));
    let f = FRAME as u64;
    let len = pt.len() as u64;
    let mut ranges = vec![
        (0, 0),
        (0, 1),
        (f - 1, f + 1),
        (f, 2 * f),
        (5 * f + 17, 5 * f + 4113),
        (len - 12_345, len),
        (len - 1, len),
        (len - 100_000, len),
    ];
    let mut x = 99u64;
    for _ in 0..200 {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        let start = (x >> 11) % len;
        let size = (x >> 40) % 300_000;
        ranges.push((start, (start + size).min(len)));
    }
    for (start, end) in ranges {
        let mut out = vec![0u8; (end - start) as usize];
        let mut at = 0;
        while at < out.len() {
            let n = r.read_at(start + at as u64, &mut out[at..]).unwrap();
            assert!(n > 0, "short read inside the plaintext");
            at += n;
        }
        assert!(
            out[..] == pt[start as usize..end as usize],
            "range {start}..{end}"
        );
    }
    // Past the end: nothing, and no error.
    assert_eq!(r.read_at(len, &mut [0u8; 10]).unwrap(), 0);
    assert_eq!(r.read_at(len + 1_000_000, &mut [0u8; 10]).unwrap(), 0);
    // Read + Seek with a cursor.
    let mut r = Decryptor::new(&kr).seekable(&msg[..]).unwrap();
    assert_eq!(r.seek(SeekFrom::End(-10)).unwrap(), len - 10);
    let mut tail = Vec::new();
    r.read_to_end(&mut tail).unwrap();
    assert_eq!(tail, &pt[pt.len() - 10..]);
    r.seek(SeekFrom::Start(3 * f - 5)).unwrap();
    let mut ten = [0u8; 10];
    r.read_exact(&mut ten).unwrap();
    assert_eq!(ten, pt[(3 * f - 5) as usize..(3 * f + 5) as usize]);
    assert!(r.seek(SeekFrom::Current(-1_000_000_000)).is_err());
}

#[test]
fn concurrent_readers_share_no_cursor() {
    let kr = keyring();
    let pt = data(4 << 20);
    let msg = Encryptor::new(&kr).frame_length(4096).encrypt(&pt).unwrap();
    let r = Decryptor::new(&kr).seekable(msg).unwrap();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (r, pt) = (&r, &pt);
            s.spawn(move || {
                for i in 0..200u64 {
                    let off = (t * 1_000_003 + i * 20_011) % (pt.len() as u64 - 5000);
                    let mut out = [0u8; 5000];
                    let mut at = 0;
                    while at < out.len() {
                        at += r.read_at(off + at as u64, &mut out[at..]).unwrap();
                    }
                    assert_eq!(&out[..], &pt[off as usize..off as usize + 5000]);
                }
            });
        }
    });
}

#[test]
fn tampering_fails_only_reads_that_touch_the_frame() {
    let kr = keyring();
    let pt = data(10 * 4096 + 100);
    let msg = Encryptor::new(&kr).frame_length(4096).encrypt(&pt).unwrap();
    let header_len = msg.len() - (10 * (4096 + 32) + 24 + 100 + 16);
    let mut bad = msg.clone();
    bad[header_len + 3 * (4096 + 32) + 500] ^= 1; // inside frame 4 (index 3)
    let r = Decryptor::new(&kr).seekable(&bad[..]).unwrap();
    let mut buf = [0u8; 100];
    assert!(r.read_at(2 * 4096 + 10, &mut buf).is_ok());
    assert!(matches!(
        r.read_at(3 * 4096 + 10, &mut buf),
        Err(Error::DecryptionFailed)
    ));
    assert!(r.read_at(4 * 4096 + 10, &mut buf).is_ok());
    // Two frames swapped: both fail (each carries its own sequence number).
    let mut swapped = msg.clone();
    let (a, b) = (header_len + 4096 + 32, header_len + 2 * (4096 + 32));
    let frame_a = msg[a..a + 4128].to_vec();
    swapped.copy_within(b..b + 4128, a);
    swapped[b..b + 4128].copy_from_slice(&frame_a);
    let r = Decryptor::new(&kr).seekable(&swapped[..]).unwrap();
    assert!(r.read_at(4096, &mut buf).is_err());
    assert!(r.read_at(2 * 4096, &mut buf).is_err());
    assert!(r.read_at(0, &mut buf).is_ok());
    // Truncated at a frame boundary: the length cannot be confirmed, the end is an error.
    let cut = &msg[..header_len + 10 * (4096 + 32)];
    let r = Decryptor::new(&kr).seekable(cut).unwrap();
    assert!(r.plaintext_len().is_err());
    assert!(r.read_at(0, &mut buf).is_ok(), "earlier frames still read");
    // A changed length in the final frame fails its tag.
    let mut longer = msg.clone();
    longer.extend_from_slice(&[0u8; 1]);
    let r = Decryptor::new(&kr).seekable(&longer[..]).unwrap();
    assert!(r.plaintext_len().is_err());
}

#[test]
fn signed_messages_need_an_explicit_opt_in() {
    let kr = keyring();
    let pt = data(100_000);
    let msg = Encryptor::new(&kr)
        .suite(AlgorithmSuite::Aes256GcmHkdfSha512CommitKeyEcdsaP384)
        .frame_length(4096)
        .encrypt(&pt)
        .unwrap();
    let err = Decryptor::new(&kr).seekable(&msg[..]).unwrap_err();
    assert!(err.to_string().contains("signature"), "{err}");
    let r = Decryptor::new(&kr)
        .dangerous_release_unverified_signed_frames(true)
        .seekable(&msg[..])
        .unwrap();
    assert_eq!(r.plaintext_len().unwrap(), pt.len() as u64);
    let mut out = vec![0u8; 1000];
    let n = r.read_at(50_000, &mut out).unwrap();
    assert_eq!(&out[..n], &pt[50_000..50_000 + n]);
}
