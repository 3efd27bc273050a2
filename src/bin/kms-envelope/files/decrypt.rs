//! `decrypt`: IN to OUT, whole or a byte range; every byte written has been authenticated.

use std::io::{self, BufReader, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use clap::Args;
use kms_envelope::format::HeaderLimits;
use kms_envelope::stream::{DEFAULT_MAX_ENCRYPTED_DATA_KEYS, DEFAULT_MAX_HEADER_LEN};
use kms_envelope::{CommitmentPolicy, Decryptor, Error};
use zeroize::Zeroizing;

use super::deliver::deliver;
use super::{commit, open_input, progress, pump, write_failure};
use crate::args::{parse_range, parse_size_arg, AccountArgs, AwsArgs, FileArgs, LegacyArgs};
use crate::exit::{failure, io_failure, shown, usage, Failure};
use crate::keyrings::{build_keyring_fingerprinted, KmsMode};
use crate::term::warn;
use crate::tree::TreeArgs;

#[derive(Args)]
pub struct DecryptArgs {
    #[command(flatten)]
    pub common: FileArgs,
    /// Use whichever KMS key wrapped the data key, if it is in one of the --account accounts
    /// (required).
    #[arg(long, conflicts_with = "keys")]
    pub discovery: bool,
    #[command(flatten)]
    pub accounts: AccountArgs,
    /// Use whichever KMS key wrapped the data key, in any AWS account. Risky: a message made
    /// under someone else's key (one that lets you decrypt) decrypts too, so its content proves
    /// nothing about who wrote it; prefer --discovery --account ID. Prints a warning.
    #[arg(long, conflicts_with_all = ["keys", "discovery", "accounts", "partition"])]
    pub discovery_any_account: bool,
    #[command(flatten)]
    pub legacy: LegacyArgs,
    /// Threads that open frames (default: all cores).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
    /// Only these plaintext bytes: START-END (END exclusive) or START- (to the end). Decrypts
    /// only the frames that cover them; IN must be a regular file. A signed message (suite
    /// 0x0578) is decrypted whole, to check its signature before the range is released: it
    /// costs a full decrypt, not just the frames of the range.
    #[arg(long, value_name = "START-END", value_parser = parse_range)]
    pub range: Option<(u64, Option<u64>)>,
    /// Most plaintext of a signed message held in memory until its signature verifies, when
    /// OUT is a stream (`-`, a FIFO, a device): bytes or a size such as 512MiB or 2GiB
    /// (K, M, G are powers of 1024). A file OUT needs no limit: the unnamed output file holds
    /// the plaintext and is linked into place only after the signature verifies. Also the
    /// largest legacy non-framed body read (it has one tag, so it is held whole); a signed
    /// non-framed body to a stream is held twice (read whole, then until the signature
    /// verifies), so memory can peak at twice this size.
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = parse_size_arg)]
    pub max_buffered_size: usize,
    /// Dangerous. To a stream OUT, write a signed message's frames as each one authenticates,
    /// before the signature over the whole message is checked (whoever can decrypt could have
    /// forged them; the final frame still waits for the signature, and a bad signature still
    /// exits 1). With --range on a signed message: read only the frames of the range, never
    /// checking the signature.
    #[arg(long)]
    pub dangerous_release_unverified: bool,
    #[command(flatten)]
    pub tree: TreeArgs,
}

pub fn decrypt(aws: &AwsArgs, a: &DecryptArgs) -> Result<(), Failure> {
    let mode = if a.discovery_any_account {
        warn(
            "--discovery-any-account: any KMS key in any AWS account that you may use can \
             unwrap this message, including keys of someone else's that a forged message names; \
             limit it with --discovery --account ID",
        );
        KmsMode::Discovery(None)
    } else if a.discovery {
        if a.accounts.accounts.is_empty() {
            return Err(usage(
                "--discovery needs --account ID (repeatable): the accounts whose KMS keys may \
                 unwrap the data key; to accept a key in any account, pass \
                 --discovery-any-account instead",
            ));
        }
        KmsMode::Discovery(Some(a.accounts.filter()))
    } else {
        KmsMode::Decrypt
    };
    let (keyring, raw_fingerprints) = build_keyring_fingerprinted(aws, &a.common.keys, mode)?;
    let context = a.common.context.parse()?;
    if a.tree.recursive {
        return crate::tree::decrypt(aws, a, keyring, &raw_fingerprints, context);
    }
    // A signed message's frames come out of the library as they authenticate; the CLI holds
    // them back itself until the signature verifies: in the unnamed output file (linked only
    // after success), or in memory up to --max-buffered-size for a stream.
    let mut dec = Decryptor::new(&*keyring)
        .expected_context(context)
        .max_buffered_len(a.max_buffered_size)
        .dangerous_release_unverified_signed_frames(true);
    if a.legacy.allow_legacy_suites {
        dec = dec.dangerous_commitment_policy(CommitmentPolicy::RequireEncryptAllowDecrypt);
    }
    if let Some(t) = a.threads {
        dec = dec.threads(t.into());
    }
    if let Some(range) = a.range {
        return decrypt_range(&dec, a, range);
    }
    let (input, len) = open_input(&a.common.input.path)?;
    let in_name = shown(&a.common.input.path);
    // Header, key and context are checked before OUT is created.
    let mut reader = dec
        .reader(input)
        .map_err(|e| failure(&format!("decrypting {in_name}"), e))?;
    let signed = reader.header().suite.signature().is_some();
    let out = a.common.out.open(&a.common.input.path)?;
    let stream = out.is_stream();
    let pb = progress(aws, len, "decrypt");
    let read_error = |e: io::Error| failure(&format!("decrypting {in_name}"), Error::from(e));
    deliver(a, out, signed, None, |sink| {
        pump(
            &mut reader,
            sink,
            read_error,
            |e| write_failure(&a.common.out.output, e),
            pb.as_ref(),
            stream,
        )
    })?;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    Ok(())
}

fn decrypt_range(
    dec: &Decryptor<'_>,
    a: &DecryptArgs,
    (start, end): (u64, Option<u64>),
) -> Result<(), Failure> {
    if a.common.input.path == Path::new("-") {
        return Err(usage(
            "--range needs IN to be a regular file: random access cannot read stdin; decrypt \
             without --range instead",
        ));
    }
    let in_name = shown(&a.common.input.path);
    // Non-blocking, so that a FIFO is refused at once rather than waited on.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(&a.common.input.path)
        .map_err(|e| io_failure("cannot open input", &a.common.input.path, e))?;
    let meta = file
        .metadata()
        .map_err(|e| io_failure("cannot examine input", &a.common.input.path, e))?;
    if !meta.is_file() {
        return Err(usage(format!(
            "--range needs IN to be a regular file, for random access; {in_name} is not one: \
             decrypt without --range instead"
        )));
    }
    let limits = HeaderLimits {
        max_encrypted_data_keys: DEFAULT_MAX_ENCRYPTED_DATA_KEYS,
        max_header_len: DEFAULT_MAX_HEADER_LEN,
    };
    let mut head = vec![0u8; DEFAULT_MAX_HEADER_LEN.min(meta.len() as usize)];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut head, 0)
        .map_err(|e| io_failure("cannot read input", &a.common.input.path, e))?;
    let signed = kms_envelope::format::Header::parse(&head, &limits)
        .ok()
        .flatten()
        .is_some_and(|(h, _)| h.body.suite.signature().is_some());
    if signed && !a.dangerous_release_unverified {
        // Random access cannot check a signature over the whole message: decrypt it all in one
        // pass, keeping only the range, released after the signature verifies.
        let reader = dec
            .reader(BufReader::with_capacity(1 << 20, file))
            .map_err(|e| failure(&format!("decrypting {in_name}"), e))?;
        let mut reader: Box<dyn Read + Send> = Box::new(reader);
        let out = a.common.out.open(&a.common.input.path)?;
        let stream = out.is_stream();
        let read_error = |e: io::Error| failure(&format!("decrypting {in_name}"), Error::from(e));
        return deliver(a, out, true, Some((start, end)), |sink| {
            pump(
                &mut *reader,
                sink,
                read_error,
                |e| write_failure(&a.common.out.output, e),
                None,
                stream,
            )
        });
    }
    let reader = dec
        .seekable(file)
        .map_err(|e| failure(&format!("decrypting {in_name}"), e))?;
    if reader.header().suite.signature().is_some() && !a.dangerous_release_unverified {
        return Err(usage(format!(
            "{in_name} is signed: decrypt it without --range"
        )));
    }
    let len = reader
        .plaintext_len()
        .map_err(|e| failure(&format!("decrypting {in_name}"), e))?;
    let end = end.unwrap_or(len);
    if start > len || end > len {
        return Err(usage(format!(
            "--range {start}-{end} reaches past the end of the plaintext ({len} bytes)"
        )));
    }
    let mut out = a.common.out.open(&a.common.input.path)?;
    {
        let sink = out.writer();
        let mut buf = Zeroizing::new(vec![0u8; 1 << 20]);
        let mut at = start;
        while at < end {
            let want = ((end - at) as usize).min(buf.len());
            let n = reader
                .read_at(at, &mut buf[..want])
                .map_err(|e| failure(&format!("decrypting {in_name}"), e))?;
            sink.write_all(&buf[..n])
                .map_err(|e| write_failure(&a.common.out.output, e))?;
            at += n as u64;
        }
    }
    commit(out, &a.common.out.output)
}
