//! `encrypt`: IN to OUT under one or more keys.

use std::io::{BufWriter, Write};

use clap::Args;
use kms_envelope::{AlgorithmSuite, EncryptionContext, Encryptor, Keyring};

use super::{commit, open_input, progress, pump, write_failure};
use crate::args::{parse_suite, AwsArgs, FileArgs};
use crate::exit::{failure, io_failure, shown, Failure};
use crate::keyrings::{build_keyring_fingerprinted, KmsMode};
use crate::tree::TreeArgs;

#[derive(Args)]
pub struct EncryptArgs {
    #[command(flatten)]
    pub common: FileArgs,
    /// Plaintext bytes per frame (1 to 4294967295).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub frame_length: Option<u32>,
    /// Algorithm suite: 0x0478 (default) or 0x0578 (adds an ECDSA P-384 signature).
    #[arg(long, value_name = "ID", value_parser = parse_suite)]
    pub suite: Option<AlgorithmSuite>,
    /// Threads that seal frames (default: all cores).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
    #[command(flatten)]
    pub tree: TreeArgs,
}

/// The encryptor a file or a tree is encrypted with: the message parameters of the command line.
pub fn encryptor<'k>(
    a: &EncryptArgs,
    keyring: &'k dyn Keyring,
    context: EncryptionContext,
) -> Encryptor<'k> {
    let mut enc = Encryptor::new(keyring).context(context);
    if let Some(f) = a.frame_length {
        enc = enc.frame_length(f);
    }
    if let Some(s) = a.suite {
        enc = enc.suite(s);
    }
    enc
}

pub fn encrypt(aws: &AwsArgs, a: &EncryptArgs) -> Result<(), Failure> {
    let (keyring, raw_fingerprints) =
        build_keyring_fingerprinted(aws, &a.common.keys, KmsMode::Encrypt)?;
    let context = a.common.context.parse()?;
    if a.tree.recursive {
        return crate::tree::encrypt(aws, a, keyring, &raw_fingerprints, context);
    }
    let (mut input, len) = open_input(&a.common.input.path)?;
    let mut out = a.common.out.open(&a.common.input.path)?;
    let mut enc = encryptor(a, &*keyring, context);
    if let Some(t) = a.threads {
        enc = enc.threads(t.into());
    }
    let out_name = shown(&a.common.out.output);
    let stream = out.is_stream();
    // The ciphertext is buffered (frames are written in pieces); no plaintext passes here.
    let sink = BufWriter::with_capacity(1 << 20, out.writer());
    let mut w = enc
        .writer(sink)
        .map_err(|e| failure(&format!("encrypting {}", shown(&a.common.input.path)), e))?;
    let pb = progress(aws, len, "encrypt");
    pump(
        &mut input,
        &mut w,
        |e| io_failure("cannot read input", &a.common.input.path, e),
        |e| write_failure(&a.common.out.output, e),
        pb.as_ref(),
        stream,
    )?;
    let mut sink = w
        .finish()
        .map_err(|e| failure(&format!("cannot write {out_name}"), e))?;
    sink.flush()
        .map_err(|e| write_failure(&a.common.out.output, e))?;
    drop(sink);
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    commit(out, &a.common.out.output)
}
