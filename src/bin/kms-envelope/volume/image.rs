//! A volume's content in and out: `import` and `export` (raw disk images), `snapshot` and
//! `restore` (ESDK messages).

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use clap::Args;
use kms_envelope::volume::Volume;
use kms_envelope::{AlgorithmSuite, Decryptor, Encryptor, Keyring};

use super::{parse_size_u64, wrapping_keyring, LayoutArgs, NewVolume, OpenArgs, VolumeOutArgs};
use crate::args::{parse_suite, AwsArgs, ContextArgs, KeyArgs, OutArgs};
use crate::exit::{failure, io_failure, shown, usage, Failure};
use crate::keyrings::KmsMode;

/// The keys of a snapshot message, when they are not the volume's.
#[derive(Args)]
pub struct SnapshotKeyArgs {
    /// A KMS key for the snapshot message (repeatable; on `snapshot` the first makes its data
    /// key). Default: the --key keys.
    #[arg(long = "snapshot-key", value_name = "KEY")]
    pub snapshot_keys: Vec<String>,
    /// A raw AES-256 key for the snapshot message (repeatable). Default: the --raw-aes-key keys.
    #[arg(long = "snapshot-raw-aes-key", value_name = "NAMESPACE:NAME:FILE")]
    pub snapshot_raw_aes_keys: Vec<String>,
}

impl SnapshotKeyArgs {
    fn keyring(
        &self,
        aws: &AwsArgs,
        default: &KeyArgs,
        mode: KmsMode,
    ) -> Result<std::sync::Arc<dyn Keyring>, Failure> {
        let own = KeyArgs {
            keys: self.snapshot_keys.clone(),
            raw_aes_keys: self.snapshot_raw_aes_keys.clone(),
        };
        let what_for = match mode {
            KmsMode::Encrypt => "to encrypt the snapshot",
            _ => "to decrypt the snapshot",
        };
        super::volume_keyring(
            aws,
            if own.is_empty() { default } else { &own },
            mode,
            what_for,
        )
    }
}

#[derive(Args)]
pub struct ImportArgs {
    /// The raw disk image (`-` for stdin, with --size).
    #[arg(short = 'i', long = "input", value_name = "IN")]
    pub input: PathBuf,
    #[command(flatten)]
    pub out: VolumeOutArgs,
    /// The volume size; default: IN's length. IN must hold exactly this many bytes.
    #[arg(long, value_name = "SIZE", value_parser = parse_size_u64)]
    pub size: Option<u64>,
    #[command(flatten)]
    pub layout: LayoutArgs,
    /// The keys that wrap the new volume key (the first --key makes it).
    #[command(flatten)]
    pub keys: KeyArgs,
}

#[derive(Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub open: OpenArgs,
    #[command(flatten)]
    pub out: OutArgs,
}

#[derive(Args)]
pub struct SnapshotArgs {
    #[command(flatten)]
    pub open: OpenArgs,
    #[command(flatten)]
    pub out: OutArgs,
    #[command(flatten)]
    pub snapshot_keys: SnapshotKeyArgs,
    /// Encryption context pairs added to the snapshot's own (kms-envelope:volume-size and
    /// kms-envelope:block-size).
    #[command(flatten)]
    pub context: ContextArgs,
    /// Plaintext bytes per frame: a multiple of the block size (default 65536).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(512..))]
    pub frame_length: Option<u32>,
    /// Algorithm suite: 0x0478 (default) or 0x0578 (adds an ECDSA P-384 signature).
    #[arg(long, value_name = "ID", value_parser = parse_suite)]
    pub suite: Option<AlgorithmSuite>,
}

#[derive(Args)]
pub struct RestoreArgs {
    /// The snapshot (`-` for stdin).
    #[arg(short = 'i', long = "input", value_name = "IN")]
    pub input: PathBuf,
    #[command(flatten)]
    pub out: VolumeOutArgs,
    /// The volume size, for a message without kms-envelope:volume-size (an image encrypted
    /// with `encrypt`); a snapshot's own size must match it.
    #[arg(long, value_name = "SIZE", value_parser = parse_size_u64)]
    pub size: Option<u64>,
    /// The new volume's layout; a snapshot's kms-envelope:block-size replaces --block-size.
    #[command(flatten)]
    pub layout: LayoutArgs,
    /// The keys that wrap the new volume key (the first --key makes it), and, unless
    /// --snapshot-key or --snapshot-raw-aes-key is given, decrypt the snapshot.
    #[command(flatten)]
    pub keys: KeyArgs,
    #[command(flatten)]
    pub snapshot_keys: SnapshotKeyArgs,
    /// Encryption context pairs the snapshot must carry.
    #[command(flatten)]
    pub context: ContextArgs,
}

/// Opens IN for reading: stdin, or a file with its length.
fn open_in(path: &Path) -> Result<(Box<dyn Read + Send>, Option<u64>), Failure> {
    if path == Path::new("-") {
        return Ok((Box::new(io::stdin()), None));
    }
    let f = File::open(path).map_err(|e| io_failure("cannot open input", path, e))?;
    let meta = f
        .metadata()
        .map_err(|e| io_failure("cannot examine input", path, e))?;
    let len = meta.is_file().then_some(meta.len());
    Ok((Box::new(BufReader::with_capacity(1 << 20, f)), len))
}

pub fn import(aws: &AwsArgs, a: &ImportArgs) -> Result<(), Failure> {
    let (input, len) = open_in(&a.input)?;
    let size = match (a.size, len) {
        (Some(s), _) => s,
        (None, Some(l)) => l,
        (None, None) => {
            return Err(usage(format!(
                "{} has no length to take the volume size from: give --size",
                shown(&a.input)
            )))
        }
    };
    let keyring = wrapping_keyring(aws, &a.keys)?;
    let options = a.layout.options(None);
    let pb = crate::files::progress(aws, Some(size), "import");
    let progress = |done: u64, _: u64| {
        if let Some(pb) = &pb {
            pb.set_position(done)
        }
    };
    NewVolume::start(&a.out, Some(&a.input))?.build(|path| {
        Volume::import(input, size, path, &*keyring, options, &progress)
            .map_err(|e| failure(&format!("importing {}", shown(&a.input)), e))
    })?;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    Ok(())
}

pub fn export(aws: &AwsArgs, a: &ExportArgs) -> Result<(), Failure> {
    let volume = a.open.open(aws)?;
    let mut out = a.out.open(&a.open.input)?;
    let pb = crate::files::progress(aws, Some(volume.size()), "export");
    let progress = |done: u64, _: u64| {
        if let Some(pb) = &pb {
            pb.set_position(done)
        }
    };
    {
        let sink = BufWriter::with_capacity(1 << 20, out.writer());
        volume
            .export(sink, &progress)
            .map_err(|e| failure(&format!("exporting {}", a.open.input.display()), e))?;
    }
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    super::close(volume, &a.open.input)?;
    out.commit()
        .map_err(|e| io_failure("cannot write", &a.out.output, e))
}

pub fn snapshot(aws: &AwsArgs, a: &SnapshotArgs) -> Result<(), Failure> {
    let context = a.context.parse()?;
    let keyring = a
        .snapshot_keys
        .keyring(aws, &a.open.keys, KmsMode::Encrypt)?;
    let volume = a.open.open(aws)?;
    let mut enc = Encryptor::new(&*keyring).context(context);
    if let Some(f) = a.frame_length {
        enc = enc.frame_length(f);
    }
    if let Some(s) = a.suite {
        enc = enc.suite(s);
    }
    let mut out = a.out.open(&a.open.input)?;
    let pb = crate::files::progress(aws, Some(volume.size()), "snapshot");
    let progress = |done: u64, _: u64| {
        if let Some(pb) = &pb {
            pb.set_position(done)
        }
    };
    {
        let sink = BufWriter::with_capacity(1 << 20, out.writer());
        let mut sink = volume
            .snapshot(sink, &enc, &progress)
            .map_err(|e| failure(&format!("snapshot of {}", a.open.input.display()), e))?;
        sink.flush()
            .map_err(|e| io_failure("cannot write", &a.out.output, e))?;
    }
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    super::close(volume, &a.open.input)?;
    out.commit()
        .map_err(|e| io_failure("cannot write", &a.out.output, e))
}

pub fn restore(aws: &AwsArgs, a: &RestoreArgs) -> Result<(), Failure> {
    let expected = a.context.parse()?;
    // The new volume's keys first: with no key at all, that is what to name.
    let keyring = wrapping_keyring(aws, &a.keys)?;
    let unwrap = a.snapshot_keys.keyring(aws, &a.keys, KmsMode::Decrypt)?;
    let (input, len) = open_in(&a.input)?;
    // The new volume is removed unless the whole message authenticates, signature included:
    // nothing of an unverified frame can outlive a failure.
    let dec = Decryptor::new(&*unwrap)
        .expected_context(expected)
        .dangerous_release_unverified_signed_frames(true);
    let options = a.layout.options(None);
    let pb = crate::files::progress(aws, len, "restore");
    let progress = |done: u64, _: u64| {
        if let Some(pb) = &pb {
            pb.set_position(done)
        }
    };
    NewVolume::start(&a.out, Some(&a.input))?.build(|path| {
        Volume::restore_sized(
            input, &dec, a.size, len, path, &*keyring, options, &progress,
        )
        .map_err(|e| failure(&format!("restoring {}", shown(&a.input)), e))
    })?;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    Ok(())
}
