//! Interop with the official `aws-esdk` crate, both ways: raw AES keyrings for every suite this
//! crate writes and several frame lengths, and KMS keyrings against moto.
#![cfg(feature = "kms")]

mod support;

use std::collections::HashMap;

use aws_esdk::client as esdk_client;
use aws_esdk::material_providers::client as mpl_client;
use aws_esdk::material_providers::types::keyring::KeyringRef;
use aws_esdk::material_providers::types::material_providers_config::MaterialProvidersConfig;
use aws_esdk::material_providers::types::{
    AesWrappingAlg, EsdkAlgorithmSuiteId, EsdkCommitmentPolicy,
};
use aws_esdk::types::aws_encryption_sdk_config::AwsEncryptionSdkConfig;
use kms_envelope::keyring::KmsKeyring;
use kms_envelope::{
    AlgorithmSuite, CommitmentPolicy, Decryptor, EncryptionContext, Encryptor, RawAesKeyring,
};

const NAMESPACE: &str = "interop-namespace";
const NAME: &str = "interop-key";
const KEY: [u8; 32] = [0x7E; 32];

fn context() -> EncryptionContext {
    EncryptionContext::new()
        .with("purpose", "interop")
        .with("unicode_key_ловие", "значение")
}

fn esdk_context() -> HashMap<String, String> {
    context()
        .iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn esdk_suite(suite: AlgorithmSuite) -> EsdkAlgorithmSuiteId {
    use AlgorithmSuite::*;
    match suite {
        Aes128GcmIv12Tag16NoKdf => EsdkAlgorithmSuiteId::AlgAes128GcmIv12Tag16NoKdf,
        Aes192GcmIv12Tag16NoKdf => EsdkAlgorithmSuiteId::AlgAes192GcmIv12Tag16NoKdf,
        Aes256GcmIv12Tag16NoKdf => EsdkAlgorithmSuiteId::AlgAes256GcmIv12Tag16NoKdf,
        Aes128GcmIv12Tag16HkdfSha256 => EsdkAlgorithmSuiteId::AlgAes128GcmIv12Tag16HkdfSha256,
        Aes192GcmIv12Tag16HkdfSha256 => EsdkAlgorithmSuiteId::AlgAes192GcmIv12Tag16HkdfSha256,
        Aes256GcmIv12Tag16HkdfSha256 => EsdkAlgorithmSuiteId::AlgAes256GcmIv12Tag16HkdfSha256,
        Aes128GcmIv12Tag16HkdfSha256EcdsaP256 => {
            EsdkAlgorithmSuiteId::AlgAes128GcmIv12Tag16HkdfSha256EcdsaP256
        }
        Aes192GcmIv12Tag16HkdfSha384EcdsaP384 => {
            EsdkAlgorithmSuiteId::AlgAes192GcmIv12Tag16HkdfSha384EcdsaP384
        }
        Aes256GcmIv12Tag16HkdfSha384EcdsaP384 => {
            EsdkAlgorithmSuiteId::AlgAes256GcmIv12Tag16HkdfSha384EcdsaP384
        }
        Aes256GcmHkdfSha512CommitKey => EsdkAlgorithmSuiteId::AlgAes256GcmHkdfSha512CommitKey,
        Aes256GcmHkdfSha512CommitKeyEcdsaP384 => {
            EsdkAlgorithmSuiteId::AlgAes256GcmHkdfSha512CommitKeyEcdsaP384
        }
        other => panic!("unmapped suite {other}"),
    }
}

async fn esdk(policy: EsdkCommitmentPolicy) -> esdk_client::Client {
    let config = AwsEncryptionSdkConfig::builder()
        .commitment_policy(policy)
        .build()
        .unwrap();
    esdk_client::Client::from_conf(config).unwrap()
}

async fn mpl() -> mpl_client::Client {
    mpl_client::Client::from_conf(MaterialProvidersConfig::builder().build().unwrap()).unwrap()
}

async fn esdk_raw_aes() -> KeyringRef {
    mpl()
        .await
        .create_raw_aes_keyring()
        .key_name(NAME)
        .key_namespace(NAMESPACE)
        .wrapping_key(KEY.to_vec())
        .wrapping_alg(AesWrappingAlg::AlgAes256GcmIv12Tag16)
        .send()
        .await
        .unwrap()
}

fn sample(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 101 % 256) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_aes_both_ways_every_suite() {
    let ours = RawAesKeyring::new(NAMESPACE, NAME, &KEY).unwrap();
    let theirs = esdk_raw_aes().await;
    let mut checked = 0;
    for suite in AlgorithmSuite::ALL {
        let (policy, esdk_policy) = if suite.is_committing() {
            (
                CommitmentPolicy::RequireEncryptRequireDecrypt,
                EsdkCommitmentPolicy::RequireEncryptRequireDecrypt,
            )
        } else {
            (
                CommitmentPolicy::ForbidEncryptAllowDecrypt,
                EsdkCommitmentPolicy::ForbidEncryptAllowDecrypt,
            )
        };
        let client = esdk(esdk_policy).await;
        for frame in [1u32, 512, 4096, 65_536] {
            for len in [0usize, 1, 4096, 10_000] {
                if frame == 1 && len > 1 {
                    continue; // a frame per byte: correct, but slow through the ESDK
                }
                let pt = sample(len);
                // Ours → theirs.
                let msg = Encryptor::new(&ours)
                    .suite(suite)
                    .dangerous_commitment_policy(policy)
                    .frame_length(frame)
                    .context(context())
                    .encrypt(&pt)
                    .unwrap();
                let out = client
                    .decrypt()
                    .ciphertext(msg)
                    .keyring(theirs.clone())
                    .encryption_context(esdk_context())
                    .send()
                    .await
                    .unwrap_or_else(|e| {
                        panic!("aws-esdk refused {suite} F={frame} L={len}: {e:?}")
                    });
                assert_eq!(
                    out.plaintext.unwrap().into_inner(),
                    pt,
                    "{suite} F={frame} L={len}"
                );
                // Theirs → ours.
                let theirs_msg = client
                    .encrypt()
                    .plaintext(pt.clone())
                    .keyring(theirs.clone())
                    .encryption_context(esdk_context())
                    .algorithm_suite_id(esdk_suite(suite))
                    .frame_length(i64::from(frame))
                    .send()
                    .await
                    .unwrap()
                    .ciphertext
                    .unwrap()
                    .into_inner();
                let back = Decryptor::new(&ours)
                    .dangerous_commitment_policy(CommitmentPolicy::RequireEncryptAllowDecrypt)
                    .expected_context(context())
                    .decrypt(&theirs_msg)
                    .unwrap_or_else(|e| {
                        panic!("we refused aws-esdk's {suite} F={frame} L={len}: {e}")
                    });
                assert_eq!(back, pt);
                checked += 2;
            }
        }
    }
    println!("aws-esdk interop (raw AES): {checked} messages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_keyring_both_ways_against_moto() {
    let m = support::moto();
    let endpoint = m.endpoint();
    let (config, key) = tokio::task::spawn_blocking(move || {
        let config = support::sdk_config(&endpoint, "us-east-1");
        let key = support::create_key(&aws_sdk_kms::Client::new(&config), false);
        (config, key)
    })
    .await
    .unwrap();
    let ours = KmsKeyring::builder()
        .sdk_config(config.clone())
        .generator(&key)
        .build_async()
        .await
        .unwrap();
    let theirs = mpl()
        .await
        .create_aws_kms_keyring()
        .kms_key_id(&key)
        .kms_client(aws_sdk_kms::Client::new(&config))
        .send()
        .await
        .unwrap();
    let client = esdk(EsdkCommitmentPolicy::RequireEncryptRequireDecrypt).await;
    for suite in [
        AlgorithmSuite::Aes256GcmHkdfSha512CommitKey,
        AlgorithmSuite::Aes256GcmHkdfSha512CommitKeyEcdsaP384,
    ] {
        let pt = sample(20_000);
        let msg = Encryptor::new(&ours)
            .suite(suite)
            .frame_length(4096)
            .context(context())
            .encrypt_async(&pt)
            .await
            .unwrap();
        let out = client
            .decrypt()
            .ciphertext(msg)
            .keyring(theirs.clone())
            .encryption_context(esdk_context())
            .send()
            .await
            .unwrap();
        assert_eq!(out.plaintext.unwrap().into_inner(), pt, "{suite}");
        let theirs_msg = client
            .encrypt()
            .plaintext(pt.clone())
            .keyring(theirs.clone())
            .encryption_context(esdk_context())
            .algorithm_suite_id(esdk_suite(suite))
            .send()
            .await
            .unwrap()
            .ciphertext
            .unwrap()
            .into_inner();
        let back = Decryptor::new(&ours)
            .expected_context(context())
            .decrypt_async(&theirs_msg)
            .await
            .unwrap();
        assert_eq!(back, pt, "{suite}");
    }
}
