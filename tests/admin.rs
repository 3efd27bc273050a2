//! The seed's flow end to end against moto: policy from the template, key with tags and
//! description, alias, list, encrypt under the alias, decrypt; and the key life cycle.
#![cfg(feature = "kms")]

mod support;
#[path = "support/vectors.rs"]
mod vectors;

use std::path::Path;

use kms_envelope::admin::{KeyAdmin, KeyPolicy};
use kms_envelope::keyring::KmsKeyring;
use kms_envelope::{Decryptor, EncryptionContext, Encryptor};
use support::{block_on, moto, sdk_config};

#[test]
fn seed_flow_end_to_end() {
    let m = moto();
    let config = sdk_config(&m.endpoint(), "us-east-1");
    let admin = KeyAdmin::new(&config);
    let policy = KeyPolicy::template(
        "123456789012",
        &["arn:aws:iam::123456789012:user/key-admin".into()],
        &["arn:aws:iam::123456789012:user/app".into()],
    )
    .unwrap();
    let report = policy.lint();
    assert!(report.is_clean(), "{report}");

    let tags = [("Name".to_owned(), "demo_KMS".to_owned())];
    let created =
        block_on(admin.create_key(Some(&policy.to_json_pretty()), Some("seed flow"), &tags))
            .unwrap();
    let meta = &created["KeyMetadata"];
    let arn = meta["Arn"].as_str().unwrap().to_owned();
    let key_id = meta["KeyId"].as_str().unwrap().to_owned();
    assert_eq!(meta["KeyState"], "Enabled");
    assert_eq!(meta["KeySpec"], "SYMMETRIC_DEFAULT");
    assert_eq!(meta["Description"], "seed flow");
    assert_eq!(meta["AWSAccountId"], "123456789012");

    block_on(admin.create_alias("alias/seed-flow", &key_id)).unwrap();
    let all = block_on(admin.list_aliases(None)).unwrap();
    let hit = all["Aliases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["AliasName"] == "alias/seed-flow")
        .expect("alias listed")
        .clone();
    assert_eq!(hit["TargetKeyId"], key_id.as_str());
    assert!(hit["AliasArn"]
        .as_str()
        .unwrap()
        .ends_with(":alias/seed-flow"));
    let mine = block_on(admin.list_aliases(Some(&key_id))).unwrap();
    assert_eq!(mine["Aliases"].as_array().unwrap().len(), 1);
    assert!(block_on(admin.create_alias("alias/aws/reserved", &key_id)).is_err());
    assert!(block_on(admin.create_alias("no-prefix", &key_id)).is_err());

    let keyring = KmsKeyring::builder()
        .sdk_config(config.clone())
        .generator("alias/seed-flow")
        .build()
        .unwrap();
    let ctx = EncryptionContext::new().with("resource", "ebs-volume");
    let msg = Encryptor::new(&keyring)
        .context(ctx.clone())
        .encrypt(b"volume image")
        .unwrap();
    let header = Decryptor::new(&keyring)
        .reader(&msg[..])
        .unwrap()
        .header()
        .clone();
    assert_eq!(header.encrypted_data_keys[0].provider_info, arn.as_bytes());
    assert_eq!(
        Decryptor::new(&keyring)
            .expected_context(ctx)
            .decrypt(&msg)
            .unwrap(),
        b"volume image"
    );
}

#[test]
fn key_life_cycle_shapes() {
    let m = moto();
    let admin = KeyAdmin::new(&sdk_config(&m.endpoint(), "us-east-1"));
    let created = block_on(admin.create_key(None, None, &[])).unwrap();
    let key_id = created["KeyMetadata"]["KeyId"].as_str().unwrap().to_owned();
    block_on(admin.disable_key(&key_id)).unwrap();
    let d = block_on(admin.describe_key(&key_id)).unwrap();
    assert_eq!(d["KeyMetadata"]["Enabled"], false);
    assert_eq!(d["KeyMetadata"]["KeyState"], "Disabled");
    block_on(admin.enable_key(&key_id)).unwrap();
    assert_eq!(
        block_on(admin.describe_key(&key_id)).unwrap()["KeyMetadata"]["KeyState"],
        "Enabled"
    );
    assert!(
        block_on(admin.schedule_key_deletion(&key_id, 3)).is_err(),
        "window under 7 days"
    );
    let s = block_on(admin.schedule_key_deletion(&key_id, 7)).unwrap();
    assert!(s["DeletionDate"].is_string(), "{s}");
    let d = block_on(admin.describe_key(&key_id)).unwrap();
    assert_eq!(d["KeyMetadata"]["KeyState"], "PendingDeletion");
    let c = block_on(admin.cancel_key_deletion(&key_id)).unwrap();
    assert!(c["KeyId"].as_str().unwrap().ends_with(&key_id));
    let err = block_on(admin.describe_key("alias/does-not-exist")).unwrap_err();
    assert!(err.to_string().contains("no such key"), "{err}");
}

/// The seed's own `keypolicy.json`, with its placeholders filled, lints clean.
#[test]
fn seed_policy_lints_clean() {
    let seed_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/seed");
    let Some(text) = std::fs::read_dir(&seed_dir)
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| std::fs::read_to_string(e.ok()?.path()).ok())
    else {
        // The seed lives beside the vectors in ../shared: the same opt-out covers both.
        assert!(
            std::env::var_os(vectors::SKIP_ENV).is_some_and(|v| v == "1"),
            "{} is missing: run beside ../shared, or set {}=1 to skip the tests that need it",
            seed_dir.display(),
            vectors::SKIP_ENV
        );
        println!(
            "seed policy: {}=1 and no ../shared/seed, skipped",
            vectors::SKIP_ENV
        );
        return;
    };
    let start = text.find("keypolicy.json").unwrap();
    let open = start + text[start..].find('{').unwrap();
    // The document ends where its braces balance.
    let mut depth = 0;
    let mut end = open;
    for (i, c) in text[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ => {}
        }
        if depth == 0 {
            end = open + i + 1;
            break;
        }
    }
    let filled = text[open..end]
        .replace("[アカウントID]", "111122223333")
        .replace("[IAMユーザー]", "seed-user");
    let report = KeyPolicy::parse(&filled).unwrap().lint();
    assert!(report.is_clean(), "{report}");
    assert!(report
        .managers
        .iter()
        .any(|m| m.ends_with(":user/seed-user")));
    // The seed's administrator holds CreateGrant through kms:Create*, as in AWS's own default
    // policy, so the report lists that user as a granter.
    assert!(report
        .granters
        .iter()
        .any(|(p, _)| p.ends_with(":user/seed-user")));
}
