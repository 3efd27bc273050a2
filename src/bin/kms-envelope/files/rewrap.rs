//! `rewrap`: IN re-encrypted under another set of keys, with a fresh data key.

use std::io::{BufWriter, Write};
use std::sync::Arc;

use clap::Args;
use kms_envelope::keyring::KmsArn;
use kms_envelope::{AlgorithmSuite, CommitmentPolicy, Decryptor, Keyring, MultiKeyring};

use super::{commit, open_input};
use crate::args::{parse_suite, AccountArgs, AwsArgs, FileArgs, KeyArgs, LegacyArgs};
use crate::exit::{failure, io_failure, shown, usage, Failure};
use crate::keyrings::{build_keyring, raw_spec_name, KmsMode};
use crate::output::Output;
use crate::term::{terminal_safe, to_stderr};

#[derive(Args)]
pub struct RewrapArgs {
    // Its keys are the new ones, that wrap the new data key (as for encrypt).
    #[command(flatten)]
    pub common: FileArgs,
    /// Drop this key (repeatable): a KMS key ARN or key ID, or a raw key's NAMESPACE:NAME,
    /// exactly. A name that wraps none of IN's data keys is an error. One replica of a
    /// multi-Region key (mrk-…) removes every replica: each decrypts what another wrapped.
    #[arg(long = "remove-key", value_name = "KEY")]
    remove: Vec<String>,
    /// KMS key that unwraps the data key now (repeatable).
    #[arg(long = "unwrap-key", value_name = "KEY")]
    unwrap_keys: Vec<String>,
    /// Raw AES key that unwraps the data key now: NAMESPACE:NAME:FILE (repeatable). Unless
    /// removed, it also wraps the new data key.
    #[arg(long = "unwrap-raw-aes-key", value_name = "NAMESPACE:NAME:FILE")]
    unwrap_raw: Vec<String>,
    /// Unwrap with whichever KMS key of the --account(s) wrapped the data key. In any mode a
    /// KMS key of IN that is kept must be named (--key or --unwrap-key: key ARN or key ID, any
    /// replica of a multi-Region key) or, with --discovery, be a key of those accounts;
    /// otherwise remove it with --remove-key: IN's author chose it.
    #[arg(long, conflicts_with = "unwrap_keys", requires = "accounts")]
    discovery: bool,
    #[command(flatten)]
    accounts: AccountArgs,
    /// Suite of the output: 0x0478 or 0x0578 (default: IN's, or 0x0478/0x0578 for a legacy IN).
    #[arg(long, value_name = "ID", value_parser = parse_suite)]
    suite: Option<AlgorithmSuite>,
    /// Plaintext bytes per frame of the output (default: IN's).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    frame_length: Option<u32>,
    #[command(flatten)]
    legacy: LegacyArgs,
    /// Threads that open and seal frames (default: all cores).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    /// Dangerous. Re-wrap a signed IN to a stream OUT (`-`, a pipe): new frames go out as IN's
    /// frames authenticate, before IN's signature is checked, and whoever can decrypt IN could
    /// have forged them; a bad signature still exits 1 and leaves the new message unfinished.
    /// A file OUT needs no such flag: it appears only after the signature verifies.
    #[arg(long)]
    dangerous_release_unverified: bool,
}

pub fn rewrap(aws: &AwsArgs, a: &RewrapArgs) -> Result<(), Failure> {
    let unwrap_args = KeyArgs {
        keys: a.unwrap_keys.clone(),
        raw_aes_keys: a.unwrap_raw.clone(),
    };
    // Unfiltered discovery would re-wrap a data key chosen by whoever wrote IN under the
    // caller's keys: the unwrapping keys are named, or limited to accounts.
    let mode = if a.discovery {
        KmsMode::Discovery(Some(a.accounts.filter()))
    } else if unwrap_args.is_empty() {
        return Err(usage(
            "rewrap needs the key that unwraps IN's data key: --unwrap-key KEY, \
             --unwrap-raw-aes-key NAMESPACE:NAME:FILE, or --discovery with --account ID",
        ));
    } else {
        KmsMode::Decrypt
    };
    let old = build_keyring(aws, &unwrap_args, mode)?;
    let new = if a.common.keys.is_empty() {
        None
    } else {
        Some(build_keyring(aws, &a.common.keys, KmsMode::Encrypt)?)
    };
    if new.is_none() && a.remove.is_empty() {
        return Err(usage(
            "rewrap needs --key/--raw-aes-key to add, or --remove-key to drop",
        ));
    }
    let context = a.common.context.parse()?;
    let (input, _) = open_input(&a.common.input.path)?;
    let in_name = shown(&a.common.input.path);
    let fail = |e| failure(&format!("re-wrapping {in_name}"), e);
    let mut dec = Decryptor::new(&*old).expected_context(context);
    if a.legacy.allow_legacy_suites {
        dec = dec.dangerous_commitment_policy(CommitmentPolicy::RequireEncryptAllowDecrypt);
    }
    if let Some(t) = a.threads {
        dec = dec.threads(t.into());
    }
    let mut job = dec.rewrap(input).map_err(fail)?;
    for spec in &a.remove {
        job = job.remove(spec).map_err(fail)?;
    }
    if let Some(s) = a.suite {
        job = job.suite(s).map_err(fail)?;
    }
    if let Some(f) = a.frame_length {
        job = job.frame_length(f);
    }
    // The kept keys wrap the new data key too: KMS keys by ARN (KMS Encrypt), raw keys from
    // the arguments that name them. A new --key/--raw-aes-key naming one already wraps it.
    let mut kept = KeyArgs::default();
    for key in job.kept_keys() {
        let name = key.to_string();
        if key.provider_id == "aws-kms" {
            if !a.common.keys.keys.contains(&name) {
                // IN's author chose its keys: each kept one costs a KMS Encrypt under the
                // caller's credentials and can decrypt the result, so it is kept only when
                // the caller named it, or under --discovery when inside the filter.
                // Its Region picks the KMS client of the Encrypt: from IN, it must be well
                // formed, even when the caller names the key by its key ID.
                let arn = KmsArn::parse(&name).filter(|arn| arn.resource_type == "key");
                if !arn.as_ref().is_some_and(KmsArn::region_is_well_formed) {
                    return Err(usage(format!(
                        "re-wrapping {in_name}: {} wraps its data key and is not a KMS key ARN \
                         with a well-formed Region, so it cannot be kept: --remove-key it",
                        terminal_safe(&name, false)
                    )));
                }
                let named = a
                    .common
                    .keys
                    .keys
                    .iter()
                    .chain(&a.unwrap_keys)
                    .any(|s| key.is_named_by(s));
                let in_filter = arn.is_some_and(|arn| a.accounts.contains(&arn));
                if !(named || a.discovery && in_filter) {
                    let why = if a.discovery {
                        "is outside the --discovery accounts"
                    } else {
                        "is not named by --unwrap-key or --key"
                    };
                    return Err(usage(format!(
                        "re-wrapping {in_name}: KMS key {} wraps its data key and {why}, so \
                         IN's author chose it: --remove-key it, or name it with --key to keep it",
                        terminal_safe(&name, false)
                    )));
                }
                kept.keys.push(name);
            }
        } else if !a
            .common
            .keys
            .raw_aes_keys
            .iter()
            .any(|s| raw_spec_name(s) == Some(&name))
        {
            let spec = a
                .unwrap_raw
                .iter()
                .find(|s| raw_spec_name(s) == Some(&name))
                .ok_or_else(|| {
                    usage(format!(
                        "re-wrapping {in_name}: raw key {name} wraps its data key and is not \
                         removed, so it must wrap the new one: pass --unwrap-raw-aes-key \
                         {name}:FILE, or --remove-key {name}"
                    ))
                })?;
            kept.raw_aes_keys.push(spec.clone());
        }
    }
    let mut rings: Vec<Arc<dyn Keyring>> = new.into_iter().collect();
    if !kept.is_empty() {
        rings.push(build_keyring(aws, &kept, KmsMode::Decrypt)?);
    }
    if rings.is_empty() {
        return Err(usage(format!(
            "re-wrapping {in_name} would leave no key able to decrypt it: add a key with \
             --key or --raw-aes-key, or remove fewer"
        )));
    }
    let wrap = MultiKeyring::new(None, rings).map_err(|e| failure("keyring", e))?;
    // New frames are sealed as IN's authenticate, before IN's signature is checked: only a
    // file OUT (linked into place after the end) keeps frames forged by a co-recipient unseen.
    // Decided on the path before `open`, so a FIFO's reader is not woken and then sees a
    // normal end; again on the opened output, which may have been swapped meanwhile.
    let signed = job.input_suite().signature().is_some() && !a.dangerous_release_unverified;
    let refuse = || {
        usage(format!(
            "{in_name} is signed, and {} is not a regular file: its new frames would be \
             released before the signature is checked; write to a file, or pass \
             --dangerous-release-unverified",
            shown(&a.common.out.output)
        ))
    };
    if signed && Output::names_a_stream(&a.common.out.output) {
        return Err(refuse());
    }
    let mut out = a.common.out.open(&a.common.input.path)?;
    if signed && out.is_stream() {
        return Err(refuse());
    }
    let (keys, removed) = {
        let sink = BufWriter::with_capacity(1 << 20, out.writer());
        let done = job.write(&wrap, sink).map_err(fail)?;
        let mut sink = done.output;
        sink.flush()
            .map_err(|e| io_failure("cannot write", &a.common.out.output, e))?;
        (done.keys, done.removed)
    };
    commit(out, &a.common.out.output)?;
    // Key names come from IN's header: through the one escaping path to the terminal.
    let mut report = format!(
        "kms-envelope: {} holds a new data key and message ID, wrapped under:\n",
        shown(&a.common.out.output)
    );
    for k in &keys {
        report.push_str(&format!("  {}\n", terminal_safe(&k.to_string(), false)));
    }
    if !removed.is_empty() {
        report.push_str("removed (every replica of a removed multi-Region key):\n");
        for k in &removed {
            report.push_str(&format!("  {}\n", terminal_safe(&k.to_string(), false)));
        }
    }
    to_stderr(&report, true);
    Ok(())
}
