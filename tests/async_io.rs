//! The tokio adaptors: same bytes, same checks as the blocking ones (tamper.rs runs the tamper
//! corpus through them).

use kms_envelope::{AlgorithmSuite, Decryptor, EncryptionContext, Encryptor, RawAesKeyring};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn keyring() -> RawAesKeyring {
    RawAesKeyring::new("async", "key", &[0x66; 32]).unwrap()
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 13 % 256) as u8).collect()
}

#[tokio::test]
async fn async_and_sync_messages_read_each_other() {
    let kr = keyring();
    let ctx = EncryptionContext::new().with("mode", "async");
    for suite in [
        AlgorithmSuite::Aes256GcmHkdfSha512CommitKey,
        AlgorithmSuite::Aes256GcmHkdfSha512CommitKeyEcdsaP384,
    ] {
        for len in [0usize, 1, 511, 512, 513, 10_000] {
            let pt = data(len);
            let enc = Encryptor::new(&kr)
                .context(ctx.clone())
                .suite(suite)
                .frame_length(512);
            // Async writer, fed in uneven pieces through a duplex pipe-like Vec.
            let mut w = enc.writer_async(Vec::new()).await.unwrap();
            for chunk in pt.chunks(97) {
                w.write_all(chunk).await.unwrap();
            }
            w.flush().await.unwrap();
            let from_async = w.finish().await.unwrap();
            let from_sync = enc.encrypt(&pt).unwrap();
            let dec = Decryptor::new(&kr).expected_context(ctx.clone());
            assert_eq!(dec.decrypt(&from_async).unwrap(), pt, "sync reads async");
            let mut r = dec.reader_async(&from_sync[..]).await.unwrap();
            let mut out = Vec::new();
            let mut buf = [0u8; 33];
            loop {
                let n = r.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
            }
            assert_eq!(out, pt, "async reads sync");
            assert_eq!(dec.decrypt_async(&from_async).await.unwrap(), pt);
            assert_eq!(
                dec.decrypt(&enc.encrypt_async(&pt).await.unwrap()).unwrap(),
                pt
            );
        }
    }
}

#[tokio::test]
async fn shutdown_without_finish_is_refused() {
    let kr = keyring();
    let mut w = Encryptor::new(&kr).writer_async(Vec::new()).await.unwrap();
    w.write_all(b"data").await.unwrap();
    let err = w.shutdown().await.unwrap_err();
    assert!(err.to_string().contains("finish()"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_seek_reads_ranges() {
    use tokio::io::AsyncSeekExt;
    let kr = keyring();
    let pt = data(300_000);
    let msg = Encryptor::new(&kr).frame_length(4096).encrypt(&pt).unwrap();
    let mut r = Decryptor::new(&kr)
        .seekable_async(msg.clone())
        .await
        .unwrap();
    assert_eq!(r.plaintext_len(), 300_000);
    r.seek(std::io::SeekFrom::Start(123_456)).await.unwrap();
    let mut buf = vec![0u8; 10_000];
    r.read_exact(&mut buf).await.unwrap();
    assert_eq!(buf, &pt[123_456..133_456]);
    r.seek(std::io::SeekFrom::End(-7)).await.unwrap();
    let mut tail = Vec::new();
    r.read_to_end(&mut tail).await.unwrap();
    assert_eq!(tail, &pt[pt.len() - 7..]);
    let mut bad = msg;
    let at = bad.len() - 1000;
    bad[at] ^= 1;
    assert!(
        Decryptor::new(&kr).seekable_async(bad).await.is_err(),
        "final frame altered"
    );
}
