//! The KMS keyring against moto's real KMS endpoint, and through a fault proxy for the errors
//! moto cannot produce.
#![cfg(feature = "kms")]

mod support;

#[path = "support/keyrings.rs"]
mod keyrings;
use keyrings::Planted;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kms::config::retry::RetryConfig;
use aws_sdk_kms::config::timeout::TimeoutConfig;
use kms_envelope::format::EncryptedDataKey;
use kms_envelope::keyring::{DiscoveryFilter, KmsArnProblem, KmsErrorKind};
use kms_envelope::{
    Decryptor, EncryptionContext, Encryptor, Error, Keyring, MultiKeyring, RawAesKeyring,
};
use support::proxy::{Fault, Proxy};
use support::{block_on, create_key, kms_builder as builder, kms_client, moto};

const ACCOUNT: &str = "123456789012";

fn context() -> EncryptionContext {
    EncryptionContext::new().with("purpose", "kms-test")
}

/// Finds the innermost KMS error of a failed decryption.
fn kms_kind(err: &Error) -> Option<KmsErrorKind> {
    match err {
        Error::Kms(e) => Some(e.kind),
        Error::NoUsableDataKey(attempts) => attempts.iter().find_map(kms_kind),
        _ => None,
    }
}

#[test]
fn alias_encrypt_decrypt_and_provider_info_is_the_key_arn() {
    let m = moto();
    let client = kms_client(&m.endpoint(), "us-east-1");
    let arn = create_key(&client, false);
    let alias = format!("alias/test-{}", support::free_port());
    block_on(
        client
            .create_alias()
            .alias_name(&alias)
            .target_key_id(&arn)
            .send(),
    )
    .unwrap();

    let keyring = builder(&m.endpoint()).generator(&alias).build().unwrap();
    let pt = vec![9u8; 100_000];
    let msg = Encryptor::new(&keyring)
        .context(context())
        .encrypt(&pt)
        .unwrap();
    let reader = Decryptor::new(&keyring)
        .expected_context(context())
        .reader(&msg[..])
        .unwrap();
    let edk = &reader.header().encrypted_data_keys[0];
    assert_eq!(edk.provider_id, "aws-kms");
    assert_eq!(std::str::from_utf8(&edk.provider_info).unwrap(), arn);
    assert_eq!(
        Decryptor::new(&keyring)
            .expected_context(context())
            .decrypt(&msg)
            .unwrap(),
        pt
    );
    // A keyring naming the key by ARN, or by bare key ID, reads it too.
    let by_arn = builder(&m.endpoint()).key(&arn).build().unwrap();
    assert_eq!(Decryptor::new(&by_arn).decrypt(&msg).unwrap(), pt);
    let key_id = arn.rsplit('/').next().unwrap();
    let by_id = builder(&m.endpoint()).key(key_id).build().unwrap();
    assert_eq!(Decryptor::new(&by_id).decrypt(&msg).unwrap(), pt);
}

#[test]
fn two_regions_each_key_decrypts_alone() {
    let m = moto();
    let east = create_key(&kms_client(&m.endpoint(), "us-east-1"), false);
    let west = create_key(&kms_client(&m.endpoint(), "us-west-2"), false);
    assert!(west.contains(":us-west-2:"));
    let both = builder(&m.endpoint())
        .generator(&east)
        .key(&west)
        .build()
        .unwrap();
    let msg = Encryptor::new(&both)
        .context(context())
        .encrypt(b"replicated")
        .unwrap();
    let header = Decryptor::new(&both)
        .reader(&msg[..])
        .unwrap()
        .header()
        .clone();
    let infos: Vec<_> = header
        .encrypted_data_keys
        .iter()
        .map(|e| String::from_utf8(e.provider_info.clone()).unwrap())
        .collect();
    assert_eq!(infos, [east.clone(), west.clone()]);
    for key in [&east, &west] {
        let alone = builder(&m.endpoint()).key(key).build().unwrap();
        assert_eq!(
            Decryptor::new(&alone).decrypt(&msg).unwrap(),
            b"replicated",
            "{key}"
        );
    }
}

#[test]
fn multi_region_keys_match_their_replicas_in_other_regions() {
    let m = moto();
    let primary = create_key(&kms_client(&m.endpoint(), "us-east-1"), true);
    assert!(primary.contains("key/mrk-"), "{primary}");
    let writer = builder(&m.endpoint()).generator(&primary).build().unwrap();
    let msg = Encryptor::new(&writer).encrypt(b"mrk").unwrap();
    // moto cannot replicate keys, so name the replica ARN it would have: the keyring must
    // match it to the primary's wrapped key and ask the us-west-2 endpoint, with that ARN.
    let replica = primary.replace(":us-east-1:", ":us-west-2:");
    let proxy = Proxy::start(m.port, |_| Fault::Forward);
    let reader = builder(&proxy.endpoint()).key(&replica).build().unwrap();
    let err = Decryptor::new(&reader).decrypt(&msg).unwrap_err();
    assert_eq!(kms_kind(&err), Some(KmsErrorKind::NotFound), "{err}");
    assert!(err.to_string().contains(&replica), "{err}");
    let asked = proxy
        .log
        .lock()
        .unwrap()
        .iter()
        .find(|r| r.operation == "Decrypt")
        .cloned()
        .unwrap();
    assert!(
        asked.body.contains(&replica),
        "Decrypt names the replica: {}",
        asked.body
    );
    // The same swap on an ordinary key is no match at all: nothing is asked of KMS.
    let plain = create_key(&kms_client(&m.endpoint(), "us-east-1"), false);
    let msg = Encryptor::new(&builder(&m.endpoint()).generator(&plain).build().unwrap())
        .encrypt(b"plain")
        .unwrap();
    let elsewhere = plain.replace(":us-east-1:", ":us-west-2:");
    let err = Decryptor::new(&builder(&m.endpoint()).key(&elsewhere).build().unwrap())
        .decrypt(&msg)
        .unwrap_err();
    assert!(
        err.to_string().contains("no data key wrapped under"),
        "{err}"
    );
    // (moto 5 refuses Decrypt with an explicit KeyId for its own multi-Region keys, so the
    // primary's successful round trip cannot be shown here; the rules are unit-tested.)
}

#[test]
fn discovery_with_matching_and_excluding_filters() {
    let m = moto();
    let key = create_key(&kms_client(&m.endpoint(), "us-east-1"), false);
    let msg = Encryptor::new(&builder(&m.endpoint()).generator(&key).build().unwrap())
        .context(context())
        .encrypt(b"discover me")
        .unwrap();
    let open = builder(&m.endpoint()).discovery().build().unwrap();
    assert_eq!(Decryptor::new(&open).decrypt(&msg).unwrap(), b"discover me");
    let matching = builder(&m.endpoint())
        .discovery_filter(DiscoveryFilter {
            partition: "aws".into(),
            accounts: vec![ACCOUNT.into()],
        })
        .build()
        .unwrap();
    assert_eq!(
        Decryptor::new(&matching).decrypt(&msg).unwrap(),
        b"discover me"
    );
    let excluding = builder(&m.endpoint())
        .discovery_filter(DiscoveryFilter {
            partition: "aws".into(),
            accounts: vec!["999999999999".into()],
        })
        .build()
        .unwrap();
    let err = Decryptor::new(&excluding).decrypt(&msg).unwrap_err();
    assert!(
        err.to_string().contains("outside the discovery filter"),
        "{err}"
    );
    assert!(
        Encryptor::new(&open).encrypt(b"x").is_err(),
        "discovery cannot encrypt"
    );
}

#[test]
fn wrong_context_unknown_key_and_mismatched_key_id_give_clear_errors() {
    let m = moto();
    let client = kms_client(&m.endpoint(), "us-east-1");
    let key = create_key(&client, false);
    let keyring = builder(&m.endpoint()).generator(&key).build().unwrap();
    // The required-only pair goes to KMS with Decrypt: a wrong value makes KMS refuse.
    let msg = Encryptor::new(&keyring)
        .context(context().with("tenant", "acme"))
        .require_context_keys(["tenant"])
        .encrypt(b"bound to the context")
        .unwrap();
    let err = Decryptor::new(&keyring)
        .expected_context(EncryptionContext::new().with("tenant", "evil"))
        .decrypt(&msg)
        .unwrap_err();
    assert_eq!(
        kms_kind(&err),
        Some(KmsErrorKind::InvalidCiphertext),
        "{err}"
    );
    let ok = Decryptor::new(&keyring)
        .expected_context(EncryptionContext::new().with("tenant", "acme"))
        .decrypt(&msg)
        .unwrap();
    assert_eq!(ok, b"bound to the context");

    let missing =
        format!("arn:aws:kms:us-east-1:{ACCOUNT}:key/00000000-0000-0000-0000-000000000000");
    let err = Encryptor::new(&builder(&m.endpoint()).generator(&missing).build().unwrap())
        .encrypt(b"x")
        .unwrap_err();
    assert_eq!(kms_kind(&err), Some(KmsErrorKind::NotFound), "{err}");
    assert!(err.to_string().contains(&missing), "names the key: {err}");

    // Point the message's wrapped key at another key: KMS refuses the KeyId for this blob.
    let other = create_key(&client, false);
    let mut forged = Encryptor::new(&keyring).encrypt(b"x").unwrap();
    let at = forged
        .windows(key.len())
        .position(|w| w == key.as_bytes())
        .unwrap();
    forged[at..at + key.len()].copy_from_slice(other.as_bytes());
    let err = Decryptor::new(&builder(&m.endpoint()).key(&other).build().unwrap())
        .decrypt(&forged)
        .unwrap_err();
    assert!(kms_kind(&err).is_some(), "a KMS refusal: {err}");
    assert!(err.to_string().contains(&other), "{err}");
}

fn faulty(op: &'static str, kind: &'static str, first_n: usize) -> (Proxy, Arc<AtomicUsize>) {
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    let proxy = Proxy::start(moto().port, move |req| {
        if req.operation == op && s.fetch_add(1, Ordering::SeqCst) < first_n {
            let status = if kind == "InternalFailure" { 500 } else { 400 };
            Fault::Error(status, kind)
        } else {
            Fault::Forward
        }
    });
    (proxy, seen)
}

#[test]
fn key_state_errors_through_the_proxy() {
    let m = moto();
    let key = create_key(&kms_client(&m.endpoint(), "us-east-1"), false);
    let msg = Encryptor::new(&builder(&m.endpoint()).generator(&key).build().unwrap())
        .encrypt(b"state")
        .unwrap();
    for (kind, expected, words) in [
        ("DisabledException", KmsErrorKind::Disabled, "disabled"),
        (
            "KMSInvalidStateException",
            KmsErrorKind::InvalidState,
            "pending deletion",
        ),
        (
            "AccessDeniedException",
            KmsErrorKind::AccessDenied,
            "kms:Decrypt",
        ),
    ] {
        let (proxy, _) = faulty("Decrypt", kind, usize::MAX);
        let keyring = builder(&proxy.endpoint()).key(&key).build().unwrap();
        let err = Decryptor::new(&keyring).decrypt(&msg).unwrap_err();
        assert_eq!(kms_kind(&err), Some(expected), "{err}");
        let text = err.to_string();
        assert!(text.contains(words) && text.contains(&key), "{text}");
        let err = Encryptor::new(
            &builder(&faulty("GenerateDataKey", kind, usize::MAX).0.endpoint())
                .generator(&key)
                .build()
                .unwrap(),
        )
        .encrypt(b"x")
        .unwrap_err();
        assert_eq!(kms_kind(&err), Some(expected), "{err}");
    }
}

#[test]
fn throttling_is_retried_and_then_reported() {
    let m = moto();
    let key = create_key(&kms_client(&m.endpoint(), "us-east-1"), false);
    // Two throttles, then through: the SDK's retries carry it.
    let (proxy, seen) = faulty("GenerateDataKey", "ThrottlingException", 2);
    let keyring = builder(&proxy.endpoint()).generator(&key).build().unwrap();
    let msg = Encryptor::new(&keyring).encrypt(b"eventually").unwrap();
    assert_eq!(seen.load(Ordering::SeqCst), 3);
    assert_eq!(
        Decryptor::new(&keyring).decrypt(&msg).unwrap(),
        b"eventually"
    );
    // Server errors are retried too.
    let (proxy, _) = faulty("Decrypt", "InternalFailure", 1);
    let keyring = builder(&proxy.endpoint()).key(&key).build().unwrap();
    assert_eq!(
        Decryptor::new(&keyring).decrypt(&msg).unwrap(),
        b"eventually"
    );
    // Throttled on every attempt: a clear error after the retries.
    let (proxy, seen) = faulty("Decrypt", "ThrottlingException", usize::MAX);
    let keyring = builder(&proxy.endpoint()).key(&key).build().unwrap();
    let err = Decryptor::new(&keyring).decrypt(&msg).unwrap_err();
    assert_eq!(kms_kind(&err), Some(KmsErrorKind::Throttled), "{err}");
    assert_eq!(seen.load(Ordering::SeqCst), 3, "three attempts");
}

#[test]
fn resets_and_timeouts() {
    let m = moto();
    let key = create_key(&kms_client(&m.endpoint(), "us-east-1"), false);
    let resets = Arc::new(AtomicUsize::new(0));
    let r = resets.clone();
    let proxy = Proxy::start(m.port, move |req| {
        if req.operation == "GenerateDataKey" && r.fetch_add(1, Ordering::SeqCst) == 0 {
            Fault::Reset
        } else {
            Fault::Forward
        }
    });
    let keyring = builder(&proxy.endpoint()).generator(&key).build().unwrap();
    assert!(Encryptor::new(&keyring).encrypt(b"after a reset").is_ok());
    let slow = Proxy::start(m.port, |_| Fault::Delay(Duration::from_secs(3)));
    let keyring = builder(&slow.endpoint())
        .generator(&key)
        .timeout_config(
            TimeoutConfig::builder()
                .operation_attempt_timeout(Duration::from_millis(200))
                .build(),
        )
        .retry_config(RetryConfig::standard().with_max_attempts(1))
        .build()
        .unwrap();
    let err = Encryptor::new(&keyring).encrypt(b"x").unwrap_err();
    assert_eq!(kms_kind(&err), Some(KmsErrorKind::Timeout), "{err}");
}

#[test]
fn kms_calls_per_message() {
    let m = moto();
    let key = create_key(&kms_client(&m.endpoint(), "us-east-1"), false);
    let second = create_key(&kms_client(&m.endpoint(), "us-west-2"), false);
    let proxy = Proxy::start(m.port, |_| Fault::Forward);
    let one = builder(&proxy.endpoint()).generator(&key).build().unwrap();
    let two = builder(&proxy.endpoint())
        .generator(&key)
        .key(&second)
        .build()
        .unwrap();
    let msg = Encryptor::new(&one).encrypt(b"a").unwrap();
    Encryptor::new(&two).encrypt(b"b").unwrap();
    assert_eq!(
        (proxy.count("GenerateDataKey"), proxy.count("Encrypt")),
        (2, 1)
    );
    Decryptor::new(&one).decrypt(&msg).unwrap();
    Decryptor::new(&one).decrypt(&msg).unwrap();
    assert_eq!(proxy.count("Decrypt"), 2, "one Decrypt per message");
    assert_eq!(proxy.count("DescribeKey"), 0, "a key ARN needs no lookup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_and_sync_kms_messages_interoperate() {
    let m = moto();
    let endpoint = m.endpoint();
    let key =
        tokio::task::spawn_blocking(move || create_key(&kms_client(&endpoint, "us-east-1"), false))
            .await
            .unwrap();
    let keyring = builder(&m.endpoint())
        .generator(&key)
        .build_async()
        .await
        .unwrap();
    let from_async = Encryptor::new(&keyring)
        .context(context())
        .encrypt_async(b"async")
        .await
        .unwrap();
    let kr = keyring.clone();
    let from_sync = tokio::task::spawn_blocking(move || {
        assert_eq!(Decryptor::new(&kr).decrypt(&from_async).unwrap(), b"async");
        Encryptor::new(&kr)
            .context(context())
            .encrypt(b"sync")
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(
        Decryptor::new(&keyring)
            .decrypt_async(&from_sync)
            .await
            .unwrap(),
        b"sync"
    );
}

fn kms_edk(provider_info: &[u8], ciphertext: Vec<u8>) -> EncryptedDataKey {
    EncryptedDataKey {
        provider_id: "aws-kms".into(),
        provider_info: provider_info.to_vec(),
        ciphertext,
    }
}

/// A message under `first`, with `planted` wrapped key(s) after its own.
fn with_planted(first: Arc<dyn Keyring>, planted: Vec<EncryptedDataKey>) -> Vec<u8> {
    let children: Vec<Arc<dyn Keyring>> = planted
        .into_iter()
        .map(|e| Arc::new(Planted(e)) as Arc<dyn Keyring>)
        .collect();
    let multi = MultiKeyring::new(Some(first), children).unwrap();
    Encryptor::new(&multi)
        .context(context())
        .encrypt(b"planted")
        .unwrap()
}

#[test]
fn provider_info_that_is_not_a_key_arn_fails_decryption_as_the_esdk_spec_says() {
    let m = moto();
    let key = create_key(&kms_client(&m.endpoint(), "us-east-1"), false);
    let proxy = Proxy::start(m.port, |_| Fault::Forward);
    let strict = builder(&proxy.endpoint()).key(&key).build().unwrap();
    let discovery = builder(&proxy.endpoint()).discovery().build().unwrap();
    let writer: Arc<dyn Keyring> =
        Arc::new(builder(&m.endpoint()).generator(&key).build().unwrap());
    let alias = format!("arn:aws:kms:us-east-1:{ACCOUNT}:alias/app");
    for info in [&b"not-an-arn"[..], alias.as_bytes(), &[0xFF, 0xFE, 0x00]] {
        // The good wrapped key comes first: still a failure, before any KMS call.
        let msg = with_planted(writer.clone(), vec![kms_edk(info, vec![1; 40])]);
        for keyring in [&strict, &discovery] {
            let got = Decryptor::new(keyring).decrypt(&msg);
            assert!(got.is_err(), "{info:?} was skipped: {got:?}");
            let err = got.unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::BadKmsArn {
                        problem: KmsArnProblem::NotAKeyArn,
                        ..
                    }
                ),
                "{err:?}"
            );
            assert!(err.to_string().contains("not a KMS key ARN"), "{err}");
        }
    }
    assert_eq!(proxy.log.lock().unwrap().len(), 0, "KMS was never asked");
    // The same keyrings still read a message without such a key.
    let clean = with_planted(writer, Vec::new());
    assert_eq!(Decryptor::new(&strict).decrypt(&clean).unwrap(), b"planted");
    assert_eq!(
        Decryptor::new(&discovery).decrypt(&clean).unwrap(),
        b"planted"
    );
}

#[test]
fn a_malformed_region_from_a_message_is_refused_before_any_kms_call() {
    let m = moto();
    let key = create_key(&kms_client(&m.endpoint(), "us-east-1"), false);
    let id = key.rsplit('/').next().unwrap();
    let proxy = Proxy::start(m.port, |_| Fault::Forward);
    let discovery = builder(&proxy.endpoint()).discovery().build().unwrap();
    let writer: Arc<dyn Keyring> = Arc::new(RawAesKeyring::new("ns", "k", &[3; 32]).unwrap());
    for region in [
        "us-east-1.evil.example",
        "US-EAST-1",
        "us-east-1\u{1b}[2J",
        "x",
    ] {
        let arn = format!("arn:aws:kms:{region}:{ACCOUNT}:key/{id}");
        let msg = with_planted(writer.clone(), vec![kms_edk(arn.as_bytes(), vec![1; 40])]);
        let err = Decryptor::new(&discovery).decrypt(&msg).unwrap_err();
        assert!(
            matches!(
                err,
                Error::BadKmsArn {
                    problem: KmsArnProblem::MalformedRegion,
                    ..
                }
            ),
            "{region:?}: {err:?}"
        );
    }
    assert_eq!(proxy.log.lock().unwrap().len(), 0, "KMS was never asked");
}

#[test]
fn a_kms_wrapped_key_of_another_message_is_passed_over_for_the_next() {
    let m = moto();
    let key = create_key(&kms_client(&m.endpoint(), "us-east-1"), false);
    let keyring = builder(&m.endpoint()).generator(&key).build().unwrap();
    let other = Encryptor::new(&keyring)
        .context(context())
        .encrypt(b"other")
        .unwrap();
    let copied = Decryptor::new(&keyring)
        .reader(&other[..])
        .unwrap()
        .header()
        .encrypted_data_keys[0]
        .clone();
    // The copied key comes first: KMS unwraps it (same key, same context) to the other
    // message's data key, which does not open this header; the message's own key comes next.
    let multi = MultiKeyring::new(
        Some(Arc::new(Planted(copied))),
        vec![Arc::new(keyring.clone())],
    )
    .unwrap();
    let msg = Encryptor::new(&multi)
        .context(context())
        .encrypt(b"mine")
        .unwrap();
    let proxy = Proxy::start(m.port, |_| Fault::Forward);
    let reader = builder(&proxy.endpoint()).key(&key).build().unwrap();
    assert_eq!(Decryptor::new(&reader).decrypt(&msg).unwrap(), b"mine");
    assert_eq!(proxy.count("Decrypt"), 2, "both wrapped keys were tried");
}

#[test]
fn strings_from_a_message_reach_no_error_message_raw() {
    const ESC: &str = "\u{1b}[2J\u{1b}[H\u{1b}[32mALL GOOD";
    let m = moto();
    let key = create_key(&kms_client(&m.endpoint(), "us-east-1"), false);
    let id = key.rsplit('/').next().unwrap();
    let filtered = builder(&m.endpoint())
        .discovery_filter(DiscoveryFilter {
            partition: "aws".into(),
            accounts: vec![ACCOUNT.into()],
        })
        .build()
        .unwrap();
    let aes = RawAesKeyring::new("ns", "k", &[3; 32]).unwrap();
    let writer: Arc<dyn Keyring> = Arc::new(RawAesKeyring::new("ns", "k", &[3; 32]).unwrap());
    let planted = |provider_id: &str, info: String| {
        let mut edk = kms_edk(info.as_bytes(), vec![1; 40]);
        edk.provider_id = provider_id.to_owned();
        with_planted(writer.clone(), vec![edk])
    };
    let cases: Vec<(&str, Vec<u8>, &dyn Keyring)> = vec![
        (
            "ARN outside the discovery filter",
            planted(
                "aws-kms",
                format!("arn:aws:kms:us-east-1:999{ESC}:key/{id}"),
            ),
            &filtered,
        ),
        (
            "ARN that KMS is asked about",
            planted(
                "aws-kms",
                format!("arn:aws:kms:us-east-1:{ACCOUNT}:key/{id}{ESC}"),
            ),
            &filtered,
        ),
        (
            "Region",
            planted(
                "aws-kms",
                format!("arn:aws:kms:us-east-1{ESC}:{ACCOUNT}:key/{id}"),
            ),
            &filtered,
        ),
        (
            "provider info that is no ARN",
            planted("aws-kms", format!("arn:aws:kms{ESC}")),
            &filtered,
        ),
    ];
    for (field, msg, keyring) in cases {
        let err = Decryptor::new(keyring).decrypt(&msg).unwrap_err();
        let text = err.to_string();
        assert!(!text.contains('\u{1b}'), "{field}: {text:?}");
    }
    // A context key of the message, named by the caller's expectation: named, but escaped.
    let msg = Encryptor::new(&aes)
        .context(EncryptionContext::new().with(format!("k{ESC}"), "v"))
        .encrypt(b"x")
        .unwrap();
    let err = Decryptor::new(&aes)
        .expected_context(EncryptionContext::new().with(format!("k{ESC}"), "other"))
        .decrypt(&msg)
        .unwrap_err();
    let text = err.to_string();
    assert!(!text.contains('\u{1b}'), "{text:?}");
    assert!(
        text.contains(r"k\u{1b}[2J"),
        "the key is named, escaped: {text:?}"
    );
}

#[test]
fn rewrap_to_another_kms_key_survives_the_old_key_being_disabled() {
    let m = moto();
    let client = kms_client(&m.endpoint(), "us-east-1");
    let (old, new) = (create_key(&client, false), create_key(&client, false));
    let msg = Encryptor::new(&builder(&m.endpoint()).generator(&old).build().unwrap())
        .encrypt(b"rotated")
        .unwrap();
    let rotated = Decryptor::new(&builder(&m.endpoint()).key(&old).build().unwrap())
        .rewrap(&msg[..])
        .unwrap()
        .remove(&old)
        .unwrap()
        .write(
            &builder(&m.endpoint()).key(&new).build().unwrap(),
            Vec::new(),
        )
        .unwrap()
        .output;
    // moto does not enforce key state: the proxy answers for it, as KMS would for a disabled key.
    let old_id = old.rsplit('/').next().unwrap().to_owned();
    let proxy = Proxy::start(m.port, move |req| {
        if req.operation == "Decrypt" && req.body.contains(&old_id) {
            Fault::Error(400, "DisabledException")
        } else {
            Fault::Forward
        }
    });
    let both = builder(&proxy.endpoint())
        .key(&old)
        .key(&new)
        .build()
        .unwrap();
    assert_eq!(Decryptor::new(&both).decrypt(&rotated).unwrap(), b"rotated");
    assert_eq!(proxy.count("Decrypt"), 1, "only the new key was asked");
    let err = Decryptor::new(&both).decrypt(&msg).unwrap_err();
    assert_eq!(kms_kind(&err), Some(KmsErrorKind::Disabled), "{err}");
}

#[test]
fn a_kept_kms_key_wraps_the_new_data_key_with_kms_encrypt() {
    let m = moto();
    let client = kms_client(&m.endpoint(), "us-east-1");
    let (a, b, c) = (
        create_key(&client, false),
        create_key(&client, false),
        create_key(&client, false),
    );
    let msg = Encryptor::new(
        &builder(&m.endpoint())
            .generator(&a)
            .key(&b)
            .build()
            .unwrap(),
    )
    .context(context())
    .encrypt(b"kept and added")
    .unwrap();
    let proxy = Proxy::start(m.port, |_| Fault::Forward);
    let at = |keys: &[&String]| {
        keys.iter()
            .fold(builder(&proxy.endpoint()), |k, key| k.key(*key))
            .build()
            .unwrap()
    };
    // Remove B by its key ID; keep A (KMS Encrypt of the new data key); add C.
    let b_id = b.rsplit('/').next().unwrap();
    let job = Decryptor::new(&at(&[&a]))
        .rewrap(&msg[..])
        .unwrap()
        .remove(b_id)
        .unwrap();
    let kept: Vec<String> = job.kept_keys().iter().map(ToString::to_string).collect();
    assert_eq!(kept, std::slice::from_ref(&a));
    let done = job.write(&at(&[&a, &c]), Vec::new()).unwrap();
    assert_eq!(proxy.count("Encrypt"), 2, "A and C wrap the new data key");
    assert_eq!(
        proxy.count("GenerateDataKey"),
        0,
        "the data key is made locally"
    );
    let mut keys: Vec<String> = done.keys.iter().map(ToString::to_string).collect();
    keys.sort();
    let mut want = vec![a.clone(), c.clone()];
    want.sort();
    assert_eq!(keys, want);
    for (key, ok) in [(&a, true), (&b, false), (&c, true)] {
        let got = Decryptor::new(&at(&[key])).decrypt(&done.output);
        assert_eq!(got.is_ok(), ok, "{key}: {got:?}");
    }

    // A kept key that cannot be used (no kms:Encrypt on it) is an error, not a silent drop.
    let a_id = a.rsplit('/').next().unwrap().to_owned();
    let denied = Proxy::start(m.port, move |req| {
        if req.operation == "Encrypt" && req.body.contains(&a_id) {
            Fault::Error(400, "AccessDeniedException")
        } else {
            Fault::Forward
        }
    });
    let keyring = |keys: &[&String]| {
        keys.iter()
            .fold(builder(&denied.endpoint()), |k, key| k.key(*key))
            .build()
            .unwrap()
    };
    let mut out = Vec::new();
    let err = Decryptor::new(&keyring(&[&a]))
        .rewrap(&msg[..])
        .unwrap()
        .remove(&b)
        .unwrap()
        .write(&keyring(&[&a, &c]), &mut out)
        .map(|_| ())
        .unwrap_err();
    assert!(kms_kind(&err).is_some(), "{err}");
    assert!(out.is_empty(), "nothing written");
}
