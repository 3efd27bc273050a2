//! The `volume` command group: encrypted block volumes (create, info, check, the key slots),
//! their images in and out ([`image`]: import, export, snapshot, restore) and the NBD server
//! ([`serve`]).
//!
//! The volume key is wrapped by the keyring the --key and --raw-aes-key arguments make, never
//! through a data-key cache. A volume that a command creates appears only when complete
//! ([`NewVolume`]).

mod image;
mod serve;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Subcommand, ValueEnum};
use kms_envelope::volume::{Volume, VolumeAead, VolumeOptions};
use kms_envelope::Keyring;
use serde_json::json;

use crate::args::{AwsArgs, KeyArgs};
use crate::exit::{failure, io_error, io_failure, usage, Code, Failure};
use crate::files::inspect::hex;
use crate::keyrings::{build_keyring, KmsMode};
use crate::term::print_json;

#[derive(Subcommand)]
pub enum VolumeCommand {
    /// Create an empty volume VOL of --size bytes, its volume key wrapped by every key given.
    Create(CreateArgs),
    /// Print a volume's header as JSON (no key needed; unauthenticated: anyone who can write
    /// the image can change what this shows).
    Info {
        /// The volume image.
        #[arg(short = 'i', long = "input", value_name = "VOL")]
        input: PathBuf,
    },
    /// Serve a volume over NBD until SIGTERM or SIGINT, which flush it and exit 0.
    Serve(serve::ServeArgs),
    /// Create a volume VOL from a raw disk image IN (its size, a multiple of the block size).
    Import(image::ImportArgs),
    /// Write a volume's content to OUT as a raw disk image (plaintext, mode 0600).
    Export(image::ExportArgs),
    /// Write a volume's content to OUT as an ESDK message (a snapshot) that any AWS Encryption
    /// SDK decrypts and `decrypt --range` reads in part; writers wait meanwhile.
    Snapshot(image::SnapshotArgs),
    /// Create a volume VOL (new ID, new volume key) from a snapshot IN.
    Restore(image::RestoreArgs),
    /// Read and authenticate every block; exit 1 and list the bad blocks if any fails.
    Check(OpenArgs),
    /// Wrap the volume key under more keys (--add-key, --add-raw-aes-key): the header only.
    AddKey(AddKeyArgs),
    /// Remove the key slots that --remove-key or --remove-raw-aes-key unwrap: the header only.
    /// This does not revoke: whoever unwrapped the volume key once keeps it; use `rekey`.
    RemoveKey(RemoveKeyArgs),
    /// Re-seal every block under a fresh volume key (revocation): the old key's slots are
    /// gone afterwards. Interrupted, it resumes when run again. The new key is wrapped by
    /// --new-key and --new-raw-aes-key if given, else by the opening keys.
    Rekey(RekeyArgs),
}

/// The volume a command opens, and the keys that open it.
#[derive(Args)]
pub struct OpenArgs {
    /// The volume image.
    #[arg(short = 'i', long = "input", value_name = "VOL")]
    pub input: PathBuf,
    #[command(flatten)]
    pub keys: KeyArgs,
}

impl OpenArgs {
    /// Opens the volume with a keyring of the named keys (each tried in turn on the slots).
    pub fn open(&self, aws: &AwsArgs) -> Result<Volume, Failure> {
        let keyring = volume_keyring(aws, &self.keys, KmsMode::Decrypt, "to open the volume")?;
        Volume::open(&self.input, &*keyring)
            .map_err(|e| failure(&format!("opening volume {}", self.input.display()), e))
    }
}

/// Where a new volume goes.
#[derive(Args)]
pub struct VolumeOutArgs {
    /// The new volume image. It appears only when complete; an existing path is refused.
    #[arg(short = 'o', long = "output", value_name = "VOL")]
    pub output: PathBuf,
    /// Replace VOL if it is an existing regular file (never a link or another kind of node).
    #[arg(long)]
    pub force: bool,
}

/// The layout of a new volume.
#[derive(Args)]
pub struct LayoutArgs {
    /// Bytes per block: a power of two from 512 to 65536.
    #[arg(long, value_name = "BYTES", default_value_t = 4096)]
    pub block_size: u32,
    /// The journal's size (crash safety; default: size/16 clamped to 4 MiB..64 MiB, never more
    /// than the volume; held in memory while the volume is open).
    #[arg(long, value_name = "SIZE", value_parser = parse_size_u64)]
    pub journal_size: Option<u64>,
    /// The block AEAD: gcm-siv (nonce-misuse resistant, default) or gcm.
    #[arg(long, value_enum, default_value_t = Aead::GcmSiv)]
    pub aead: Aead,
}

/// The block AEAD, as the command line names it.
#[derive(Clone, Copy, ValueEnum)]
pub enum Aead {
    GcmSiv,
    Gcm,
}

impl LayoutArgs {
    pub fn options(&self, block_size: Option<u32>) -> VolumeOptions {
        let mut o = VolumeOptions::default()
            .block_size(block_size.unwrap_or(self.block_size))
            .aead(match self.aead {
                Aead::GcmSiv => VolumeAead::GcmSiv,
                Aead::Gcm => VolumeAead::Gcm,
            });
        if let Some(j) = self.journal_size {
            o = o.journal_bytes(j);
        }
        o
    }
}

#[derive(Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub out: VolumeOutArgs,
    /// The volume's size: bytes or a size such as 64M or 10GiB (powers of 1024), a multiple
    /// of the block size.
    #[arg(long, value_name = "SIZE", value_parser = parse_size_u64)]
    pub size: u64,
    #[command(flatten)]
    pub layout: LayoutArgs,
    /// The keys that wrap the volume key: the first --key makes it (GenerateDataKey), each
    /// other key gets a slot of its own.
    #[command(flatten)]
    pub keys: KeyArgs,
}

#[derive(Args)]
pub struct AddKeyArgs {
    #[command(flatten)]
    pub open: OpenArgs,
    /// A KMS key to wrap the volume key under too (repeatable; one slot each).
    #[arg(long = "add-key", value_name = "KEY")]
    pub add_keys: Vec<String>,
    /// A raw AES-256 key to wrap the volume key under too (repeatable).
    #[arg(long = "add-raw-aes-key", value_name = "NAMESPACE:NAME:FILE")]
    pub add_raw_aes_keys: Vec<String>,
}

#[derive(Args)]
pub struct RemoveKeyArgs {
    #[command(flatten)]
    pub open: OpenArgs,
    /// A KMS key whose slots go: every slot it unwraps (repeatable). The key must still work,
    /// since a slot is recognised by unwrapping it. The last slot is never removed.
    #[arg(long = "remove-key", value_name = "KEY")]
    pub remove_keys: Vec<String>,
    /// A raw AES-256 key whose slots go (repeatable).
    #[arg(long = "remove-raw-aes-key", value_name = "NAMESPACE:NAME:FILE")]
    pub remove_raw_aes_keys: Vec<String>,
}

#[derive(Args)]
pub struct RekeyArgs {
    #[command(flatten)]
    pub open: OpenArgs,
    /// A KMS key to wrap the new volume key (repeatable; the first makes it). Default: the
    /// --key keys.
    #[arg(long = "new-key", value_name = "KEY")]
    pub new_keys: Vec<String>,
    /// A raw AES-256 key to wrap the new volume key (repeatable).
    #[arg(long = "new-raw-aes-key", value_name = "NAMESPACE:NAME:FILE")]
    pub new_raw_aes_keys: Vec<String>,
}

pub fn run(aws: &AwsArgs, c: &VolumeCommand) -> Result<(), Failure> {
    match c {
        VolumeCommand::Create(a) => create(aws, a),
        VolumeCommand::Info { input } => info(input),
        VolumeCommand::Serve(a) => serve::serve(aws, a),
        VolumeCommand::Import(a) => image::import(aws, a),
        VolumeCommand::Export(a) => image::export(aws, a),
        VolumeCommand::Snapshot(a) => image::snapshot(aws, a),
        VolumeCommand::Restore(a) => image::restore(aws, a),
        VolumeCommand::Check(a) => check(aws, a),
        VolumeCommand::AddKey(a) => add_key(aws, a),
        VolumeCommand::RemoveKey(a) => remove_key(aws, a),
        VolumeCommand::Rekey(a) => rekey(aws, a),
    }
}

/// The keyring that wraps a new volume key: never behind a data-key cache.
fn wrapping_keyring(aws: &AwsArgs, keys: &KeyArgs) -> Result<Arc<dyn Keyring>, Failure> {
    volume_keyring(
        aws,
        keys,
        KmsMode::Encrypt,
        "for the new volume's key slots",
    )
}

/// [`build_keyring`] with a volume's own message when no key is named: volume commands have
/// no discovery, so the generic hint about `--discovery` would mislead.
pub(crate) fn volume_keyring(
    aws: &AwsArgs,
    keys: &KeyArgs,
    mode: KmsMode,
    what_for: &str,
) -> Result<Arc<dyn Keyring>, Failure> {
    if keys.is_empty() {
        return Err(usage(format!(
            "name a key {what_for}: --key KEY (KMS) or --raw-aes-key NAMESPACE:NAME:FILE \
             (volume commands take no --discovery)"
        )));
    }
    build_keyring(aws, keys, mode)
}

fn create(aws: &AwsArgs, a: &CreateArgs) -> Result<(), Failure> {
    let keyring = wrapping_keyring(aws, &a.keys)?;
    let options = a.layout.options(None);
    NewVolume::start(&a.out, None)?.build(|path| {
        Volume::create(path, a.size, &*keyring, options)
            .map_err(|e| failure(&format!("creating volume {}", a.out.output.display()), e))
    })
}

fn info(input: &Path) -> Result<(), Failure> {
    let info = Volume::info(input)
        .map_err(|e| failure(&format!("reading volume {}", input.display()), e))?;
    let generations: Vec<_> = info
        .generations
        .iter()
        .map(|g| {
            json!({
                "gen": g.gen,
                "slots": g.slots.iter().map(|s| json!({
                    "provider_id": s.provider_id,
                    "provider_info": s.provider_info,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    print_json(&json!({
        "authenticated": info.authenticated,
        "volume_id": hex(&info.id),
        "size": info.size,
        "block_size": info.block_size,
        "aead": match info.aead {
            VolumeAead::Gcm => "aes-256-gcm",
            _ => "aes-256-gcm-siv",
        },
        "journal_slots": info.journal_slots,
        "write_gen": info.write_gen,
        "rekey_from_gen": info.rekey_from_gen,
        "rekey_cursor": info.rekey_cursor,
        "header_seq": info.header_seq,
        "generations": generations,
        "image_len": info.image_len,
        "metadata_offset": info.metadata_offset,
        "data_offset": info.data_offset,
    }))
}

fn check(aws: &AwsArgs, a: &OpenArgs) -> Result<(), Failure> {
    let volume = a.open(aws)?;
    let pb = crate::files::progress(aws, Some(volume.size()), "check");
    let report = volume
        .check(&|done, _| {
            if let Some(pb) = &pb {
                pb.set_position(done)
            }
        })
        .map_err(|e| failure(&format!("checking volume {}", a.input.display()), e))?;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    print_json(&json!({
        "blocks": report.blocks,
        "data_blocks": report.data_blocks,
        "zero_blocks": report.zero_blocks,
        "bad_count": report.bad_count,
        "bad_blocks": report.bad,
    }))?;
    close(volume, &a.input)?;
    if report.bad_count == 0 {
        Ok(())
    } else {
        Err(Failure {
            code: Code::Decrypt,
            message: format!(
                "{} of {} blocks of {} do not authenticate (listed on stdout): they were \
                 altered or damaged; restore them from a snapshot",
                report.bad_count,
                report.blocks,
                a.input.display()
            ),
        })
    }
}

fn add_key(aws: &AwsArgs, a: &AddKeyArgs) -> Result<(), Failure> {
    let new = KeyArgs {
        keys: a.add_keys.clone(),
        raw_aes_keys: a.add_raw_aes_keys.clone(),
    };
    if new.is_empty() {
        return Err(usage(
            "name the key to add: --add-key KEY (KMS) or --add-raw-aes-key NAMESPACE:NAME:FILE",
        ));
    }
    let new = wrapping_keyring(aws, &new)?;
    let volume = a.open.open(aws)?;
    volume
        .add_key(&*new)
        .map_err(|e| failure(&format!("adding a key to {}", a.open.input.display()), e))?;
    close(volume, &a.open.input)
}

fn remove_key(aws: &AwsArgs, a: &RemoveKeyArgs) -> Result<(), Failure> {
    let gone = KeyArgs {
        keys: a.remove_keys.clone(),
        raw_aes_keys: a.remove_raw_aes_keys.clone(),
    };
    if gone.is_empty() {
        return Err(usage(
            "name the key to remove: --remove-key KEY (KMS) or --remove-raw-aes-key \
             NAMESPACE:NAME:FILE",
        ));
    }
    let gone = build_keyring(aws, &gone, KmsMode::Decrypt)?;
    let volume = a.open.open(aws)?;
    let removed = volume.remove_key(&*gone).map_err(|e| {
        failure(
            &format!("removing a key from {}", a.open.input.display()),
            e,
        )
    })?;
    close(volume, &a.open.input)?;
    crate::term::line_to_stderr(&format!(
        "kms-envelope: removed {removed} key slot(s); this does not revoke: run `volume rekey` \
         to shut out whoever unwrapped the volume key before"
    ));
    Ok(())
}

fn rekey(aws: &AwsArgs, a: &RekeyArgs) -> Result<(), Failure> {
    let new = KeyArgs {
        keys: a.new_keys.clone(),
        raw_aes_keys: a.new_raw_aes_keys.clone(),
    };
    let keyring = wrapping_keyring(aws, if new.is_empty() { &a.open.keys } else { &new })?;
    let volume = a.open.open(aws)?;
    let pb = crate::files::progress(aws, Some(volume.size()), "rekey");
    volume
        .rekey(&*keyring, &|done, total| {
            if let Some(pb) = &pb {
                pb.set_length(total);
                pb.set_position(done)
            }
        })
        .map_err(|e| failure(&format!("rekeying {}", a.open.input.display()), e))?;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    close(volume, &a.open.input)
}

/// Flushes and unlocks a volume, reporting a failure (Drop would only try).
fn close(volume: Volume, path: &Path) -> Result<(), Failure> {
    volume
        .close()
        .map_err(|e| failure(&format!("closing volume {}", path.display()), e))
}

pub fn parse_size_u64(s: &str) -> Result<u64, String> {
    parse_size::Config::new()
        .with_binary()
        .parse_size(s)
        .map_err(|e| format!("{s:?} is not a size such as 67108864, 64MiB or 2G: {e}"))
}

/// A volume being made by a command: built under a hidden name beside VOL, closed (flushed),
/// then linked into place, so VOL is complete or absent. Without --force an existing VOL is
/// refused (and, should one appear meanwhile, kept: the link fails); with it only a regular
/// file is replaced, checked again just before the rename. The hidden file is removed on any
/// failure (a process killed meanwhile leaves it, under its `.kms-envelope-vol-*` name).
pub struct NewVolume<'a> {
    dest: &'a Path,
    /// With --force: the regular file VOL was, (device, inode).
    replaces: Option<(u64, u64)>,
    staging: PathBuf,
}

impl<'a> NewVolume<'a> {
    /// Checks VOL; `input` is a file the command reads, which VOL must not be.
    pub fn start(out: &'a VolumeOutArgs, input: Option<&Path>) -> Result<NewVolume<'a>, Failure> {
        use std::os::unix::fs::MetadataExt;
        let dest = out.output.as_path();
        // `Path::file_name` ignores a trailing `/`, so the bytes are checked too: such a path
        // names a directory, and would fail only once the whole volume was written.
        if dest.file_name().is_none() || dest.as_os_str().as_encoded_bytes().ends_with(b"/") {
            return Err(usage(format!(
                "output {} names a directory, not a file: give the new volume's file name",
                dest.display()
            )));
        }
        let replaces = match dest.symlink_metadata() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_failure("cannot examine output", dest, e)),
            Ok(m) if m.file_type().is_file() => {
                if let Some(meta) = input.and_then(|i| std::fs::metadata(i).ok()) {
                    if (meta.dev(), meta.ino()) == (m.dev(), m.ino()) {
                        return Err(usage(format!(
                            "output {} is the input file: write to another path",
                            dest.display()
                        )));
                    }
                }
                if !out.force {
                    return Err(usage(format!(
                        "output {} exists: choose another path or pass --force to replace it",
                        dest.display()
                    )));
                }
                Some((m.dev(), m.ino()))
            }
            Ok(m) => {
                return Err(usage(format!(
                    "output {} exists and is not a regular file ({}): a volume is written only \
                     to a new path, or with --force over a regular file",
                    dest.display(),
                    if m.file_type().is_symlink() {
                        "a symbolic link, neither followed nor replaced"
                    } else if m.file_type().is_dir() {
                        "a directory"
                    } else {
                        "a device, FIFO or socket"
                    }
                )))
            }
        };
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).map_err(|e| usage(format!("no randomness: {e}")))?;
        let name: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let staging = dest.with_file_name(format!(".kms-envelope-vol-{name}"));
        Ok(NewVolume {
            dest,
            replaces,
            staging,
        })
    }

    /// Runs `make` on the hidden path, closes the volume it makes and puts it in place.
    /// The hidden file is removed on return, on a panic (Drop), and on SIGINT, SIGTERM or
    /// SIGHUP meanwhile (then the process exits 128 + the signal's number).
    pub fn build(self, make: impl FnOnce(&Path) -> Result<Volume, Failure>) -> Result<(), Failure> {
        let _signals = remove_on_signal(&self.staging)?;
        make(&self.staging)
            .and_then(|v| close(v, self.dest))
            .and_then(|()| self.commit())
    }

    fn commit(&self) -> Result<(), Failure> {
        use std::os::unix::fs::MetadataExt;
        let fail = |e| io_failure("cannot put the new volume in place at", self.dest, e);
        match self.replaces {
            // A hard link never replaces: an existing VOL that appeared meanwhile is kept.
            None => std::fs::hard_link(&self.staging, self.dest).map_err(fail)?,
            Some((dev, ino)) => {
                match self.dest.symlink_metadata() {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Ok(m) if m.file_type().is_file() && (m.dev(), m.ino()) == (dev, ino) => {}
                    Ok(_) => {
                        return Err(usage(format!(
                            "output {} was replaced by another file or node while the volume \
                             was made; left as it is",
                            self.dest.display()
                        )))
                    }
                    Err(e) => return Err(fail(e)),
                }
                std::fs::rename(&self.staging, self.dest).map_err(fail)?;
            }
        }
        let dir = match self.dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if let Err(e) = std::fs::File::open(&dir).and_then(|d| d.sync_all()) {
            crate::term::warn(&format!(
                "{} is written, but its directory {} could not be synced ({e}): after a power \
                 loss the new name may be lost",
                self.dest.display(),
                dir.display()
            ));
        }
        Ok(())
    }
}

impl Drop for NewVolume<'_> {
    fn drop(&mut self) {
        // After success the volume is at its own name (a hard link or a rename) already.
        remove_staged(&self.staging);
    }
}

/// Removes `staging` and what the library staged for it (`STAGING.RANDOM`, see
/// `Volume::import`): both hidden names, unique to this process.
fn remove_staged(staging: &Path) {
    let _ = std::fs::remove_file(staging);
    let (Some(dir), Some(name)) = (staging.parent(), staging.file_name()) else {
        return;
    };
    let prefix = format!("{}.", name.to_string_lossy());
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Watches for SIGINT, SIGTERM and SIGHUP on a thread of its own until the returned sender
/// is dropped; on one, removes `staging` and exits 128 + the signal's number. The handlers
/// are installed before this returns, so no signal after it is missed; they stay installed
/// (tokio never uninstalls them), which is harmless as the command ends after the build.
fn remove_on_signal(staging: &Path) -> Result<tokio::sync::oneshot::Sender<()>, Failure> {
    use tokio::signal::unix::{signal, SignalKind};
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready) = std::sync::mpsc::channel::<Result<(), String>>();
    let staging = staging.to_path_buf();
    std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => return drop(ready_tx.send(Err(e.to_string()))),
        };
        rt.block_on(async move {
            let handlers = (|| -> std::io::Result<_> {
                Ok((
                    signal(SignalKind::interrupt())?,
                    signal(SignalKind::terminate())?,
                    signal(SignalKind::hangup())?,
                ))
            })();
            let (mut int, mut term, mut hup) = match handlers {
                Ok(h) => h,
                Err(e) => return drop(ready_tx.send(Err(e.to_string()))),
            };
            let _ = ready_tx.send(Ok(()));
            let code = tokio::select! {
                _ = stopped => return,
                _ = int.recv() => 130,
                _ = term.recv() => 143,
                _ = hup.recv() => 129,
            };
            remove_staged(&staging);
            std::process::exit(code);
        });
    });
    match ready.recv() {
        Ok(Ok(())) => Ok(stop),
        Ok(Err(e)) => Err(io_error(format!(
            "cannot handle SIGINT, SIGTERM and SIGHUP: {e}"
        ))),
        Err(_) => Err(io_error("the signal watcher stopped".to_string())),
    }
}
