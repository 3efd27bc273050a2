//! Argument structs that several commands share, flattened into each (`#[command(flatten)]`),
//! and the parsers of argument values.

use std::path::{Path, PathBuf};

use clap::Args;
use kms_envelope::keyring::{DiscoveryFilter, KmsArn};
use kms_envelope::{AlgorithmSuite, EncryptionContext};

use crate::exit::{io_error, usage, Failure};
use crate::output::{OpenError, Output};

/// What every command that turns IN into OUT takes: IN, OUT, the keys and the context.
#[derive(Args)]
pub struct FileArgs {
    #[command(flatten)]
    pub input: InputArgs,
    #[command(flatten)]
    pub out: OutArgs,
    #[command(flatten)]
    pub keys: KeyArgs,
    #[command(flatten)]
    pub context: ContextArgs,
}

/// Where KMS is and who calls it; global, so they go before or after the command.
#[derive(Args, Clone)]
pub struct AwsArgs {
    /// KMS endpoint URL (a local KMS, a VPC endpoint). AWS_ENDPOINT_URL_KMS works too.
    #[arg(long, global = true, value_name = "URL")]
    pub endpoint_url: Option<String>,
    /// AWS Region for keys not named by ARN.
    #[arg(long, global = true, value_name = "REGION")]
    pub region: Option<String>,
    /// Named profile from the shared AWS configuration.
    #[arg(long, global = true, value_name = "PROFILE")]
    pub profile: Option<String>,
    /// No progress bar.
    #[arg(long, short = 'q', global = true)]
    pub quiet: bool,
}

/// What a file command reads. The help names it per command (`mut_arg` where the command is
/// declared) when it is not a message.
#[derive(Args)]
pub struct InputArgs {
    /// Message to read (`-` for stdin).
    #[arg(id = "input", short = 'i', long = "input", value_name = "IN")]
    pub path: PathBuf,
}

/// The keys a keyring is built from ([`crate::keyrings::build_keyring`]).
#[derive(Args, Clone, Default)]
pub struct KeyArgs {
    /// A KMS key: key ID, key ARN, alias name (alias/NAME) or alias ARN. Repeatable; on
    /// encrypt the first makes the data key and the others wrap it too.
    #[arg(long = "key", value_name = "KEY")]
    pub keys: Vec<String>,
    /// A raw AES-256 wrapping key: namespace, key name, and a file of exactly 32 bytes.
    #[arg(long = "raw-aes-key", value_name = "NAMESPACE:NAME:FILE")]
    pub raw_aes_keys: Vec<String>,
}

impl KeyArgs {
    /// Whether no key is named.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.raw_aes_keys.is_empty()
    }
}

/// The encryption context of a command line.
#[derive(Args)]
pub struct ContextArgs {
    /// Encryption context pair (repeatable). On decrypt, pairs the message must carry.
    #[arg(short = 'c', long = "context", value_name = "KEY=VALUE")]
    pub context: Vec<String>,
}

impl ContextArgs {
    pub fn parse(&self) -> Result<EncryptionContext, Failure> {
        parse_context(&self.context)
    }
}

/// The accounts whose KMS keys `--discovery` accepts; each command declares its own
/// `--discovery`, as its meaning and conflicts differ.
#[derive(Args)]
pub struct AccountArgs {
    /// With --discovery: accounts whose keys may be used (repeatable).
    #[arg(long = "account", value_name = "ID", requires = "discovery")]
    pub accounts: Vec<String>,
    /// With --account: the partition of those accounts.
    #[arg(long, default_value = "aws", requires = "accounts")]
    pub partition: String,
}

impl AccountArgs {
    pub fn filter(&self) -> DiscoveryFilter {
        DiscoveryFilter {
            partition: self.partition.clone(),
            accounts: self.accounts.clone(),
        }
    }

    /// Whether the key `arn` names is in one of these accounts.
    pub fn contains(&self, arn: &KmsArn) -> bool {
        arn.partition == self.partition && self.accounts.contains(&arn.account)
    }
}

/// Whether legacy messages are read; decrypt and rewrap.
#[derive(Args)]
pub struct LegacyArgs {
    /// Also read legacy messages without key commitment (ESDK 1.x suites).
    #[arg(long)]
    pub allow_legacy_suites: bool,
}

/// Where a command's result goes.
#[derive(Args)]
pub struct OutArgs {
    /// Where to write the result (`-` for stdout). A new OUT is created with mode 0600 (owner
    /// read/write only) whatever the umask, because it may hold plaintext; it appears only when
    /// complete. Where the file system has no unnamed temporary files (NFS, FUSE) or /proc is
    /// not mounted, the work is done in a named `.kms-envelope-XXXXXX` beside OUT, removed on
    /// any failure but left behind, holding (for a signed message, unverified) plaintext, if
    /// the process is ended by a signal (SIGKILL, SIGTERM, SIGINT, SIGHUP). An existing FIFO or
    /// character device that you own is written through, like `-` (a FIFO must already have a
    /// reader and be readable by you alone: `chmod go-r` it); a symbolic link,
    /// directory, block device, socket, or another user's FIFO or device is refused.
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    pub output: PathBuf,
    /// Replace OUT if it is an existing regular file (never a link, device or FIFO). The
    /// replacement is a new file, mode 0600 and owned by you: the old file's mode, owner and
    /// other hard links are not carried over.
    #[arg(long)]
    pub force: bool,
    /// Skip the fsync before OUT is linked into place: faster, and OUT still appears whole or
    /// not at all to other programs, but after a power loss or OS crash it may be incomplete.
    #[arg(long)]
    pub no_fsync: bool,
}

impl OutArgs {
    /// OUT, to be written and then committed: the one way a command creates its output.
    pub fn open(&self, input: &Path) -> Result<Output, Failure> {
        Output::open(&self.output, Some(input), self.force, !self.no_fsync).map_err(|e| match e {
            OpenError::Refused(m) => usage(m),
            OpenError::Io(m) => io_error(m),
        })
    }
}

pub fn parse_suite(s: &str) -> Result<AlgorithmSuite, String> {
    let hex = s.trim_start_matches("0x").trim_start_matches("0X");
    let id = u16::from_str_radix(hex, 16)
        .map_err(|_| format!("{s:?} is not a suite ID such as 0x0478"))?;
    AlgorithmSuite::from_id(id).map_err(|e| e.to_string())
}

pub fn parse_size_arg(s: &str) -> Result<usize, String> {
    let n = parse_size::Config::new()
        .with_binary()
        .parse_size(s)
        .map_err(|e| format!("{s:?} is not a size such as 67108864, 64MiB or 2G: {e}"))?;
    usize::try_from(n).map_err(|_| format!("{s} is more than this machine can address"))
}

pub fn parse_range(s: &str) -> Result<(u64, Option<u64>), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or("write the range as START-END or START-")?;
    let start = a
        .parse::<u64>()
        .map_err(|_| format!("{a:?} is not a byte offset"))?;
    let end = match b {
        "" => None,
        b => Some(
            b.parse::<u64>()
                .map_err(|_| format!("{b:?} is not a byte offset"))?,
        ),
    };
    if end.is_some_and(|e| e < start) {
        return Err(format!("the range {s} ends before it starts"));
    }
    Ok((start, end))
}

fn parse_context(pairs: &[String]) -> Result<EncryptionContext, Failure> {
    let mut ctx = EncryptionContext::new();
    for p in pairs {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| usage(format!("-c {p:?}: write context pairs as KEY=VALUE")))?;
        if k.is_empty() {
            return Err(usage(format!("-c {p:?}: the key is empty")));
        }
        if ctx.contains_key(k) {
            return Err(usage(format!("-c: key {k:?} is given twice")));
        }
        ctx.insert(k, v);
    }
    Ok(ctx)
}

pub fn strip_file_uri(s: &str) -> &str {
    s.strip_prefix("file://").unwrap_or(s)
}
