//! `kms-envelope`: envelope encryption under AWS KMS keys from the shell, and the seed's key
//! provisioning (policy template and lint, key, alias).
//!
//! Exit codes: 0 success; 1 decryption or authentication failure (or a malformed message);
//! 2 usage error; 3 KMS or credential error; 4 I/O error; 141 standard output closed by its
//! reader (quietly, as a process ended by SIGPIPE).
//!
//! Everything written to stderr passes through [`terminal_safe`]: errors carry strings from
//! messages (ARNs, provider IDs, context keys and values, Regions), which must not reach a
//! terminal as control sequences.

mod output;
mod tree;

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, IsTerminal, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use kms_envelope::admin::{KeyAdmin, KeyPolicy};
use kms_envelope::format::HeaderLimits;
use kms_envelope::keyring::{load_aws_config, DiscoveryFilter, KmsArn, KmsErrorKind, KmsKeyring};
use kms_envelope::stream::{scan_layout, DEFAULT_MAX_ENCRYPTED_DATA_KEYS, DEFAULT_MAX_HEADER_LEN};
use kms_envelope::{
    AlgorithmSuite, CommitmentPolicy, Decryptor, EncryptionContext, Encryptor, Error, Keyring,
    MultiKeyring, RawAesKeyring,
};
use output::{OpenError, Output};
use serde_json::{json, Value};
use zeroize::Zeroizing;

#[derive(Parser)]
#[command(
    name = "kms-envelope",
    version,
    about = "Envelope encryption under AWS KMS keys, in the AWS Encryption SDK message format",
    after_help = "Exit codes: 0 success, 1 decryption/authentication failure, 2 usage error, \
                  3 KMS/credential error, 4 I/O error, 141 standard output closed by its reader."
)]
struct Cli {
    #[command(flatten)]
    aws: AwsArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct AwsArgs {
    /// KMS endpoint URL (a local KMS, a VPC endpoint). AWS_ENDPOINT_URL_KMS works too.
    #[arg(long, global = true, value_name = "URL")]
    endpoint_url: Option<String>,
    /// AWS Region for keys not named by ARN.
    #[arg(long, global = true, value_name = "REGION")]
    region: Option<String>,
    /// Named profile from the shared AWS configuration.
    #[arg(long, global = true, value_name = "PROFILE")]
    profile: Option<String>,
    /// No progress bar.
    #[arg(long, short = 'q', global = true)]
    quiet: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Encrypt IN to OUT under one or more keys.
    Encrypt(EncryptArgs),
    /// Decrypt IN to OUT; every byte written has been authenticated.
    Decrypt(DecryptArgs),
    /// Re-encrypt IN under another set of keys (rotation, a new Region), with a fresh data key.
    ///
    /// The output's data key is wrapped under IN's keys less --remove-key ones, plus the --key
    /// and --raw-aes-key ones. In this format the header is authenticated under the data key
    /// with a fixed IV, so a header can never be re-authenticated under the same data key (that
    /// would expose the GCM authentication key and let anyone forge frames): re-wrapping
    /// decrypts the body and encrypts it again under a fresh data key and message ID, in
    /// bounded memory, at about the cost of a decrypt plus an encrypt (about 1.3 GB/s in memory
    /// on one core where those run at 2.2 and 2.8 GB/s; README, "Re-wrapping"). OUT appears only
    /// once all of IN has authenticated; the final key set is printed on stderr. Messages
    /// re-wrapped by earlier builds share their message ID with the original: whoever holds
    /// both can forge, so re-encrypt them and destroy the old copies.
    Rewrap(RewrapArgs),
    /// Print a message's header (and, for files, its frame count and plaintext length) as JSON.
    Inspect {
        /// The message (`-` for stdin).
        #[arg(short = 'i', long = "input", value_name = "IN")]
        input: PathBuf,
    },
    /// Key policies and KMS keys: the seed's commands.
    #[command(subcommand)]
    Key(KeyCommand),
}

#[derive(Args)]
struct KeyArgs {
    /// A KMS key: key ID, key ARN, alias name (alias/NAME) or alias ARN. Repeatable; on
    /// encrypt the first makes the data key and the others wrap it too.
    #[arg(long = "key", value_name = "KEY")]
    keys: Vec<String>,
    /// A raw AES-256 wrapping key: namespace, key name, and a file of exactly 32 bytes.
    #[arg(long = "raw-aes-key", value_name = "NAMESPACE:NAME:FILE")]
    raw_aes_keys: Vec<String>,
    /// Encryption context pair (repeatable). On decrypt, pairs the message must carry.
    #[arg(short = 'c', long = "context", value_name = "KEY=VALUE")]
    context: Vec<String>,
}

/// Where a command's result goes.
#[derive(Args)]
struct OutArgs {
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
    output: PathBuf,
    /// Replace OUT if it is an existing regular file (never a link, device or FIFO). The
    /// replacement is a new file, mode 0600 and owned by you: the old file's mode, owner and
    /// other hard links are not carried over.
    #[arg(long)]
    force: bool,
    /// Skip the fsync before OUT is linked into place: faster, and OUT still appears whole or
    /// not at all to other programs, but after a power loss or OS crash it may be incomplete.
    #[arg(long)]
    no_fsync: bool,
}

impl OutArgs {
    fn open(&self, input: &Path) -> Result<Output, Failure> {
        Output::open(&self.output, Some(input), self.force, !self.no_fsync).map_err(|e| match e {
            OpenError::Refused(m) => usage(m),
            OpenError::Io(m) => Failure {
                code: 4,
                message: m,
            },
        })
    }
}

#[derive(Args)]
struct EncryptArgs {
    /// Plaintext to read (`-` for stdin).
    #[arg(short = 'i', long = "input", value_name = "IN")]
    input: PathBuf,
    #[command(flatten)]
    out: OutArgs,
    #[command(flatten)]
    keys: KeyArgs,
    /// Plaintext bytes per frame (1 to 4294967295).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    frame_length: Option<u32>,
    /// Algorithm suite: 0x0478 (default) or 0x0578 (adds an ECDSA P-384 signature).
    #[arg(long, value_name = "ID", value_parser = parse_suite)]
    suite: Option<AlgorithmSuite>,
    /// Threads that seal frames (default: all cores).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    #[command(flatten)]
    tree: tree::TreeArgs,
}

#[derive(Args)]
struct DecryptArgs {
    /// Message to read (`-` for stdin).
    #[arg(short = 'i', long = "input", value_name = "IN")]
    input: PathBuf,
    #[command(flatten)]
    out: OutArgs,
    #[command(flatten)]
    keys: KeyArgs,
    /// Use whichever KMS key wrapped the data key, if it is in one of the --account accounts
    /// (required).
    #[arg(long, conflicts_with = "keys")]
    discovery: bool,
    /// With --discovery: accounts whose keys may be used (repeatable).
    #[arg(long = "account", value_name = "ID", requires = "discovery")]
    accounts: Vec<String>,
    /// Use whichever KMS key wrapped the data key, in any AWS account. Risky: a message made
    /// under someone else's key (one that lets you decrypt) decrypts too, so its content proves
    /// nothing about who wrote it; prefer --discovery --account ID. Prints a warning.
    #[arg(long, conflicts_with_all = ["keys", "discovery", "accounts"])]
    discovery_any_account: bool,
    /// With --account: the partition of those accounts.
    #[arg(long, default_value = "aws", requires = "accounts")]
    partition: String,
    /// Also read legacy messages without key commitment (ESDK 1.x suites).
    #[arg(long)]
    allow_legacy_suites: bool,
    /// Threads that open frames (default: all cores).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    /// Only these plaintext bytes: START-END (END exclusive) or START- (to the end). Decrypts
    /// only the frames that cover them; IN must be a regular file. A signed message (suite
    /// 0x0578) is decrypted whole, to check its signature before the range is released: it
    /// costs a full decrypt, not just the frames of the range.
    #[arg(long, value_name = "START-END", value_parser = parse_range)]
    range: Option<(u64, Option<u64>)>,
    /// Most plaintext of a signed message held in memory until its signature verifies, when
    /// OUT is a stream (`-`, a FIFO, a device): bytes or a size such as 512MiB or 2GiB
    /// (K, M, G are powers of 1024). A file OUT needs no limit: the unnamed output file holds
    /// the plaintext and is linked into place only after the signature verifies. Also the
    /// largest legacy non-framed body read (it has one tag, so it is held whole); a signed
    /// non-framed body to a stream is held twice (read whole, then until the signature
    /// verifies), so memory can peak at twice this size.
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = parse_size_arg)]
    max_buffered_size: usize,
    /// Dangerous. To a stream OUT, write a signed message's frames as each one authenticates,
    /// before the signature over the whole message is checked (whoever can decrypt could have
    /// forged them; the final frame still waits for the signature, and a bad signature still
    /// exits 1). With --range on a signed message: read only the frames of the range, never
    /// checking the signature.
    #[arg(long)]
    dangerous_release_unverified: bool,
    #[command(flatten)]
    tree: tree::TreeArgs,
}

#[derive(Args)]
struct RewrapArgs {
    /// Message to read (`-` for stdin).
    #[arg(short = 'i', long = "input", value_name = "IN")]
    input: PathBuf,
    #[command(flatten)]
    out: OutArgs,
    /// New keys to wrap the new data key under (as for encrypt).
    #[command(flatten)]
    keys: KeyArgs,
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
    /// With --discovery: accounts whose keys may be used (repeatable).
    #[arg(long = "account", value_name = "ID", requires = "discovery")]
    accounts: Vec<String>,
    /// With --account: the partition of those accounts.
    #[arg(long, default_value = "aws", requires = "accounts")]
    partition: String,
    /// Suite of the output: 0x0478 or 0x0578 (default: IN's, or 0x0478/0x0578 for a legacy IN).
    #[arg(long, value_name = "ID", value_parser = parse_suite)]
    suite: Option<AlgorithmSuite>,
    /// Plaintext bytes per frame of the output (default: IN's).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    frame_length: Option<u32>,
    /// Also read legacy messages without key commitment (ESDK 1.x suites).
    #[arg(long)]
    allow_legacy_suites: bool,
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

#[derive(Subcommand)]
enum KeyCommand {
    /// Print the seed's four-statement key policy for an account, administrators and users.
    Template {
        /// The 12-digit account ID.
        #[arg(long, value_name = "ID")]
        account: String,
        /// Key administrator principal ARN (repeatable).
        #[arg(long = "admin", value_name = "ARN", required = true)]
        admins: Vec<String>,
        /// Key user principal ARN (repeatable).
        #[arg(long = "user", value_name = "ARN", required = true)]
        users: Vec<String>,
    },
    /// Explain who can manage, use and grant a key under a policy; exit 1 on warnings.
    Lint {
        /// The policy file (`file://` prefix accepted).
        file: String,
    },
    /// Create a symmetric KMS key with a policy, tags, a description and an alias.
    Create {
        /// The key policy (`file://FILE`).
        #[arg(long, value_name = "file://FILE")]
        policy: String,
        /// A tag, as the AWS CLI takes it: TagKey=K,TagValue=V (repeatable).
        #[arg(long = "tags", value_name = "TagKey=K,TagValue=V", num_args = 1..)]
        tags: Vec<String>,
        /// The key's description.
        #[arg(long)]
        description: Option<String>,
        /// Also create this alias (alias/NAME) for the new key.
        #[arg(long, value_name = "alias/NAME")]
        alias_name: Option<String>,
        /// Create the key even if the policy linter warns.
        #[arg(long)]
        allow_policy_warnings: bool,
    },
    /// Point an alias at a key.
    CreateAlias {
        /// The alias (alias/NAME).
        #[arg(long, value_name = "alias/NAME")]
        alias_name: String,
        /// The key ID or ARN.
        #[arg(long, value_name = "ID")]
        target_key_id: String,
    },
    /// List aliases, all or one key's.
    ListAliases {
        /// Only this key's aliases.
        #[arg(long, value_name = "ID")]
        key_id: Option<String>,
    },
    /// Describe a key.
    Describe {
        /// Key ID, ARN, alias name or alias ARN.
        #[arg(long, value_name = "ID")]
        key_id: String,
    },
    /// Enable a key.
    Enable {
        /// Key ID or ARN.
        #[arg(long, value_name = "ID")]
        key_id: String,
    },
    /// Disable a key (nothing encrypts or decrypts under it until enabled).
    Disable {
        /// Key ID or ARN.
        #[arg(long, value_name = "ID")]
        key_id: String,
    },
    /// Schedule a key's deletion after a waiting period.
    ScheduleDeletion {
        /// Key ID or ARN.
        #[arg(long, value_name = "ID")]
        key_id: String,
        /// Days to wait, 7 to 30.
        #[arg(long, default_value_t = 30)]
        pending_window_in_days: i32,
    },
    /// Cancel a scheduled deletion (the key stays disabled until enabled).
    CancelDeletion {
        /// Key ID or ARN.
        #[arg(long, value_name = "ID")]
        key_id: String,
    },
}

/// A failure with its exit code and a message that names what is at fault.
struct Failure {
    code: u8,
    message: String,
}

fn usage(message: impl Into<String>) -> Failure {
    Failure {
        code: 2,
        message: message.into(),
    }
}

/// Standard output was closed by its reader (`... | head`): end quietly, with the status a
/// process ended by SIGPIPE has, so that a pipeline sees the output was cut short.
fn closed_stdout() -> Failure {
    Failure {
        code: 141,
        message: String::new(),
    }
}

/// A failed write to OUT: a closed pipe ends quietly; a full buffer of a signed message says
/// what to do; anything else is an I/O error.
fn write_failure(path: &Path, e: io::Error) -> Failure {
    if e.kind() == io::ErrorKind::BrokenPipe {
        return closed_stdout();
    }
    if let Some(full) = e.get_ref().and_then(|i| i.downcast_ref::<HeldFull>()) {
        return usage(format!(
            "{} is a signed message whose plaintext exceeds --max-buffered-size ({} bytes), the \
             most held in memory until its signature verifies when writing to a stream: decrypt \
             to a file with -o FILE (no limit: nothing appears until the signature verifies), \
             raise --max-buffered-size, or accept unverified plaintext with \
             --dangerous-release-unverified",
            full.what, full.limit
        ));
    }
    io_failure("cannot write", path, e)
}

fn io_failure(what: &str, path: &Path, e: io::Error) -> Failure {
    Failure {
        code: 4,
        message: format!("{what} {}: {e}", shown(path)),
    }
}

fn shown(path: &Path) -> String {
    if path == Path::new("-") {
        "standard stream".to_owned()
    } else {
        path.display().to_string()
    }
}

/// The exit code for a library error.
fn code_of(e: &Error) -> u8 {
    match e {
        Error::Io(_) => 4,
        Error::InvalidArgument(_) | Error::ReservedContextKey(_) | Error::Keyring(_) => 2,
        Error::Kms(k) if k.kind == KmsErrorKind::InvalidCiphertext => 1,
        Error::Kms(_) => 3,
        Error::NoUsableDataKey(attempts) => {
            attempts.iter().map(code_of).find(|&c| c == 3).unwrap_or(1)
        }
        _ => 1,
    }
}

fn failure(context: &str, e: Error) -> Failure {
    if let Error::Io(io) = e {
        if io.kind() == io::ErrorKind::BrokenPipe {
            return closed_stdout();
        }
        return Failure {
            code: 4,
            message: format!("{context}: {}", Error::Io(io)),
        };
    }
    Failure {
        code: code_of(&e),
        message: format!("{context}: {e}"),
    }
}

fn parse_suite(s: &str) -> Result<AlgorithmSuite, String> {
    let hex = s.trim_start_matches("0x").trim_start_matches("0X");
    let id = u16::from_str_radix(hex, 16)
        .map_err(|_| format!("{s:?} is not a suite ID such as 0x0478"))?;
    AlgorithmSuite::from_id(id).map_err(|e| e.to_string())
}

fn parse_size_arg(s: &str) -> Result<usize, String> {
    let n = parse_size::Config::new()
        .with_binary()
        .parse_size(s)
        .map_err(|e| format!("{s:?} is not a size such as 67108864, 64MiB or 2G: {e}"))?;
    usize::try_from(n).map_err(|_| format!("{s} is more than this machine can address"))
}

/// Whether a terminal would act on `c` rather than show it: C0 and C1 controls, DEL, and the
/// bidirectional controls that reorder the text around them.
fn is_terminal_control(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with every terminal control escaped as `\u{..}` (newlines kept only when asked).
fn terminal_safe(s: &str, keep_newlines: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if is_terminal_control(c) && !(keep_newlines && c == '\n') {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

/// The one way text reaches stderr: escaped, and a closed stderr is not worth a panic.
fn to_stderr(text: &str, keep_newlines: bool) {
    let _ = io::stderr().write_all(terminal_safe(text, keep_newlines).as_bytes());
}

/// One line to stderr: everything in it escaped, then the newline that ends it.
fn line_to_stderr(line: &str) {
    let _ = io::stderr().write_all(format!("{}\n", terminal_safe(line, false)).as_bytes());
}

fn warn(message: &str) {
    line_to_stderr(&format!("kms-envelope: warning: {message}"));
}

/// The one way text reaches stdout; a reader that has gone (`| head`) ends the command quietly.
fn to_stdout(text: &str) -> Result<(), Failure> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| match e.kind() {
            io::ErrorKind::BrokenPipe => closed_stdout(),
            _ => Failure {
                code: 4,
                message: format!("cannot write to standard output: {e}"),
            },
        })
}

/// Pretty JSON with the terminal controls serde_json leaves raw (DEL, C1, bidi) escaped too:
/// they occur only inside strings, where `\uXXXX` means the same character.
fn json_text(v: &Value) -> String {
    let raw = serde_json::to_string_pretty(v).expect("JSON");
    let mut out = String::with_capacity(raw.len() + 1);
    for c in raw.chars() {
        if is_terminal_control(c) && c != '\n' {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push(c);
        }
    }
    out.push('\n');
    out
}

fn parse_range(s: &str) -> Result<(u64, Option<u64>), String> {
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

fn strip_file_uri(s: &str) -> &str {
    s.strip_prefix("file://").unwrap_or(s)
}

fn raw_aes_keyring(spec: &str) -> Result<RawAesKeyring, Failure> {
    let mut parts = spec.splitn(3, ':');
    let (Some(ns), Some(name), Some(file)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(usage(format!(
            "--raw-aes-key {spec:?}: write it as NAMESPACE:NAME:FILE"
        )));
    };
    let path = Path::new(strip_file_uri(file));
    let key = zeroize::Zeroizing::new(
        std::fs::read(path).map_err(|e| io_failure("cannot read raw AES key file", path, e))?,
    );
    if key.len() != 32 {
        return Err(usage(format!(
            "--raw-aes-key: {} holds {} bytes; a raw AES-256 key file holds exactly 32",
            path.display(),
            key.len()
        )));
    }
    RawAesKeyring::new(ns, name, &key).map_err(|e| usage(format!("--raw-aes-key {ns}:{name}: {e}")))
}

enum KmsMode {
    Encrypt,
    Decrypt,
    Discovery(Option<DiscoveryFilter>),
}

fn build_keyring(
    aws: &AwsArgs,
    keys: &KeyArgs,
    mode: KmsMode,
) -> Result<Arc<dyn Keyring>, Failure> {
    let mut rings: Vec<Arc<dyn Keyring>> = Vec::new();
    let discovery = matches!(mode, KmsMode::Discovery(_));
    if !keys.keys.is_empty() || discovery {
        let mut b = KmsKeyring::builder();
        if let Some(r) = &aws.region {
            b = b.region(r);
        }
        if let Some(u) = &aws.endpoint_url {
            b = b.endpoint_url(u);
        }
        if let Some(p) = &aws.profile {
            b = b.profile(p);
        }
        match mode {
            KmsMode::Discovery(filter) => b = b.discovery(filter),
            KmsMode::Encrypt => {
                let mut it = keys.keys.iter();
                if let Some(first) = it.next() {
                    b = b.generator(first);
                }
                for k in it {
                    b = b.key(k);
                }
            }
            KmsMode::Decrypt => {
                for k in &keys.keys {
                    b = b.key(k);
                }
            }
        }
        rings.push(Arc::new(b.build().map_err(|e| failure("KMS keyring", e))?));
    }
    for spec in &keys.raw_aes_keys {
        rings.push(Arc::new(raw_aes_keyring(spec)?));
    }
    match rings.len() {
        0 => Err(usage("name a key: --key KEY (KMS), --raw-aes-key NAMESPACE:NAME:FILE, or --discovery --account ID to decrypt")),
        1 => Ok(rings.pop().expect("one")),
        _ => {
            let generator = rings.remove(0);
            Ok(Arc::new(MultiKeyring::new(Some(generator), rings).map_err(|e| failure("keyring", e))?))
        }
    }
}

fn open_input(path: &Path) -> Result<(Box<dyn Read + Send>, Option<u64>), Failure> {
    if path == Path::new("-") {
        return Ok((Box::new(io::stdin()), None));
    }
    let f = File::open(path).map_err(|e| io_failure("cannot open input", path, e))?;
    let len = f.metadata().ok().filter(|m| m.is_file()).map(|m| m.len());
    Ok((Box::new(BufReader::with_capacity(1 << 20, f)), len))
}

fn progress(aws: &AwsArgs, len: Option<u64>, what: &str) -> Option<indicatif::ProgressBar> {
    let len = len?;
    if aws.quiet || len < 8 << 20 || !io::stderr().is_terminal() {
        return None;
    }
    let pb = indicatif::ProgressBar::new(len);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} {bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .expect("template"),
    );
    pb.set_message(what.to_owned());
    Some(pb)
}

/// Bytes handed from the reading thread to the writing one at a time.
const PUMP_CHUNK: usize = 4 << 20;

/// Copies `reader` into `writer`, telling read failures from write failures. The reading runs
/// on a thread of its own, a chunk ahead of the writing, so that reading the input (and, when
/// decrypting, opening it) overlaps writing the output (and, when encrypting, sealing it).
/// Two chunks circulate between the threads: memory stays bounded. One read per chunk (the
/// decrypting reader answers a read with what it has opened, usually a batch of frames); the
/// writes go out as they come, through no buffer of std's that would keep plaintext. Chunks
/// hold plaintext, so they are zeroized when dropped, wherever that happens.
fn pump(
    reader: &mut (dyn Read + Send),
    writer: &mut dyn Write,
    on_read_error: impl Fn(io::Error) -> Failure,
    on_write_error: impl Fn(io::Error) -> Failure,
    pb: Option<&indicatif::ProgressBar>,
    stream: bool,
) -> Result<(), Failure> {
    use std::sync::mpsc::sync_channel;
    type Chunk = Zeroizing<Vec<u8>>;
    std::thread::scope(|s| {
        let (full_tx, full) = sync_channel::<io::Result<(Chunk, usize)>>(1);
        let (empty, empty_rx) = sync_channel::<Chunk>(2);
        for _ in 0..2 {
            empty
                .send(Zeroizing::new(vec![0u8; PUMP_CHUNK]))
                .expect("the receiver is alive");
        }
        s.spawn(move || {
            // Ends when the input ends or fails, or when the writing side hangs up.
            while let Ok(mut buf) = empty_rx.recv() {
                let read = loop {
                    match reader.read(&mut buf) {
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        other => break other,
                    }
                };
                let last = !matches!(read, Ok(n) if n > 0);
                if full_tx.send(read.map(|n| (buf, n))).is_err() || last {
                    return;
                }
            }
        });
        loop {
            let (buf, n) = match full.recv() {
                Ok(Ok((_, 0))) => return Ok(()),
                Ok(Ok(chunk)) => chunk,
                Ok(Err(e)) => return Err(on_read_error(e)),
                Err(_) => {
                    return Err(on_read_error(io::Error::other(
                        "the reading thread stopped",
                    )))
                }
            };
            if let Err(e) = writer.write_all(&buf[..n]) {
                let f = on_write_error(e);
                if f.code == closed_stdout().code && stream {
                    // The reader has gone. End now: leaving the scope would join the reading
                    // thread, which may be blocked on an idle input. Only for a stream OUT:
                    // a file's EPIPE (FUSE) returns, so its temporary file is removed.
                    if let Some(pb) = pb {
                        pb.finish_and_clear();
                    }
                    std::process::exit(f.code.into());
                }
                return Err(f);
            }
            if let Some(pb) = pb {
                pb.inc(n as u64);
            }
            // The reader may have stopped already; then the chunk is not needed.
            let _ = empty.send(buf);
        }
    })
}

/// A signed message's plaintext outgrew [`Held`]'s limit.
#[derive(Debug)]
struct HeldFull {
    what: String,
    limit: usize,
}

impl std::fmt::Display for HeldFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "more than {} bytes to hold", self.limit)
    }
}

impl std::error::Error for HeldFull {}

/// Plaintext held in memory until a signed message's signature verifies, up to a limit;
/// zeroized when dropped, and on every growth (the old allocation is wiped, not just freed).
struct Held {
    buf: Zeroizing<Vec<u8>>,
    limit: usize,
    what: String,
}

impl Held {
    fn new(limit: usize, what: String) -> Held {
        Held {
            buf: Zeroizing::new(Vec::new()),
            limit,
            what,
        }
    }
}

impl Write for Held {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let need = self.buf.len() + data.len();
        if need > self.limit {
            return Err(io::Error::other(HeldFull {
                what: self.what.clone(),
                limit: self.limit,
            }));
        }
        if need > self.buf.capacity() {
            let cap = need.max(self.buf.capacity() * 2).min(self.limit);
            let mut grown = Zeroizing::new(Vec::with_capacity(cap));
            grown.extend_from_slice(&self.buf);
            self.buf = grown;
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Passes on only the bytes at plaintext offsets `start..end` of what is written through it.
struct RangeFilter<'w> {
    inner: &'w mut dyn Write,
    at: u64,
    start: u64,
    end: u64,
}

impl Write for RangeFilter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let (from, to) = (self.at, self.at + data.len() as u64);
        let (a, b) = (from.max(self.start), to.min(self.end));
        if a < b {
            self.inner
                .write_all(&data[(a - from) as usize..(b - from) as usize])?;
        }
        self.at = to;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn encrypt(aws: &AwsArgs, a: &EncryptArgs) -> Result<(), Failure> {
    let keyring = build_keyring(aws, &a.keys, KmsMode::Encrypt)?;
    let context = parse_context(&a.keys.context)?;
    if a.tree.recursive {
        return tree::encrypt(aws, a, keyring, context);
    }
    let (mut input, len) = open_input(&a.input)?;
    let mut out = a.out.open(&a.input)?;
    let mut enc = Encryptor::new(&*keyring).context(context);
    if let Some(f) = a.frame_length {
        enc = enc.frame_length(f);
    }
    if let Some(s) = a.suite {
        enc = enc.suite(s);
    }
    if let Some(t) = a.threads {
        enc = enc.threads(t.into());
    }
    let out_name = shown(&a.out.output);
    let stream = out.is_stream();
    // The ciphertext is buffered (frames are written in pieces); no plaintext passes here.
    let sink = BufWriter::with_capacity(1 << 20, out.writer());
    let mut w = enc
        .writer(sink)
        .map_err(|e| failure(&format!("encrypting {}", shown(&a.input)), e))?;
    let pb = progress(aws, len, "encrypt");
    pump(
        &mut input,
        &mut w,
        |e| io_failure("cannot read input", &a.input, e),
        |e| write_failure(&a.out.output, e),
        pb.as_ref(),
        stream,
    )?;
    let mut sink = w
        .finish()
        .map_err(|e| failure(&format!("cannot write {out_name}"), e))?;
    sink.flush().map_err(|e| write_failure(&a.out.output, e))?;
    drop(sink);
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    out.commit()
        .map_err(|e| io_failure("cannot write", &a.out.output, e))
}

fn decrypt(aws: &AwsArgs, a: &DecryptArgs) -> Result<(), Failure> {
    let mode = if a.discovery_any_account {
        warn(
            "--discovery-any-account: any KMS key in any AWS account that you may use can \
             unwrap this message, including keys of someone else's that a forged message names; \
             limit it with --discovery --account ID",
        );
        KmsMode::Discovery(None)
    } else if a.discovery {
        if a.accounts.is_empty() {
            return Err(usage(
                "--discovery needs --account ID (repeatable): the accounts whose KMS keys may \
                 unwrap the data key; to accept a key in any account, pass \
                 --discovery-any-account instead",
            ));
        }
        KmsMode::Discovery(Some(DiscoveryFilter {
            partition: a.partition.clone(),
            accounts: a.accounts.clone(),
        }))
    } else {
        KmsMode::Decrypt
    };
    let keyring = build_keyring(aws, &a.keys, mode)?;
    let context = parse_context(&a.keys.context)?;
    if a.tree.recursive {
        return tree::decrypt(aws, a, keyring, context);
    }
    // A signed message's frames come out of the library as they authenticate; the CLI holds
    // them back itself until the signature verifies: in the unnamed output file (linked only
    // after success), or in memory up to --max-buffered-size for a stream.
    let mut dec = Decryptor::new(&*keyring)
        .expected_context(context)
        .max_buffered_len(a.max_buffered_size)
        .dangerous_release_unverified_signed_frames(true);
    if a.allow_legacy_suites {
        dec = dec.commitment_policy(CommitmentPolicy::RequireEncryptAllowDecrypt);
    }
    if let Some(t) = a.threads {
        dec = dec.threads(t.into());
    }
    if let Some(range) = a.range {
        return decrypt_range(&dec, a, range);
    }
    let (input, len) = open_input(&a.input)?;
    let in_name = shown(&a.input);
    // Header, key and context are checked before OUT is created.
    let mut reader = dec
        .reader(input)
        .map_err(|e| failure(&format!("decrypting {in_name}"), e))?;
    let signed = reader.header().suite.signature().is_some();
    let out = a.out.open(&a.input)?;
    let stream = out.is_stream();
    let pb = progress(aws, len, "decrypt");
    let read_error = |e: io::Error| failure(&format!("decrypting {in_name}"), Error::from(e));
    deliver(a, out, signed, None, |sink| {
        pump(
            &mut reader,
            sink,
            read_error,
            |e| write_failure(&a.out.output, e),
            pb.as_ref(),
            stream,
        )
    })?;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    Ok(())
}

/// Runs `produce` into OUT under the release rules, then commits OUT. A signed message whose
/// signature is not yet checked (`signed`) goes to a stream OUT only after `produce` has
/// succeeded, held in memory up to --max-buffered-size, unless --dangerous-release-unverified.
/// With `range`, only those plaintext bytes are kept, and the range must lie within it.
fn deliver(
    a: &DecryptArgs,
    mut out: Output,
    signed: bool,
    range: Option<(u64, Option<u64>)>,
    produce: impl FnOnce(&mut dyn Write) -> Result<(), Failure>,
) -> Result<(), Failure> {
    let hold = signed && out.is_stream() && !a.dangerous_release_unverified;
    let mut held = Held::new(a.max_buffered_size, shown(&a.input));
    {
        let sink: &mut dyn Write = if hold { &mut held } else { out.writer() };
        match range {
            None => produce(sink)?,
            Some((start, end)) => {
                let mut filter = RangeFilter {
                    inner: sink,
                    at: 0,
                    start,
                    end: end.unwrap_or(u64::MAX),
                };
                produce(&mut filter)?;
                if filter.at < start || end.is_some_and(|end| filter.at < end) {
                    return Err(usage(format!(
                        "--range {start}-{} reaches past the end of the plaintext ({} bytes)",
                        end.map_or(String::new(), |e| e.to_string()),
                        filter.at
                    )));
                }
            }
        }
    }
    if hold {
        out.writer()
            .write_all(&held.buf)
            .map_err(|e| write_failure(&a.out.output, e))?;
    }
    out.commit().map_err(|e| write_failure(&a.out.output, e))
}

fn decrypt_range(
    dec: &Decryptor<'_>,
    a: &DecryptArgs,
    (start, end): (u64, Option<u64>),
) -> Result<(), Failure> {
    if a.input == Path::new("-") {
        return Err(usage(
            "--range needs IN to be a regular file: random access cannot read stdin; decrypt \
             without --range instead",
        ));
    }
    let in_name = shown(&a.input);
    // Non-blocking, so that a FIFO is refused at once rather than waited on.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(&a.input)
        .map_err(|e| io_failure("cannot open input", &a.input, e))?;
    let meta = file
        .metadata()
        .map_err(|e| io_failure("cannot examine input", &a.input, e))?;
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
        .map_err(|e| io_failure("cannot read input", &a.input, e))?;
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
        let out = a.out.open(&a.input)?;
        let stream = out.is_stream();
        let read_error = |e: io::Error| failure(&format!("decrypting {in_name}"), Error::from(e));
        return deliver(a, out, true, Some((start, end)), |sink| {
            pump(
                &mut *reader,
                sink,
                read_error,
                |e| write_failure(&a.out.output, e),
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
    let mut out = a.out.open(&a.input)?;
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
                .map_err(|e| write_failure(&a.out.output, e))?;
            at += n as u64;
        }
    }
    out.commit().map_err(|e| write_failure(&a.out.output, e))
}

/// `NAMESPACE:NAME` of a `NAMESPACE:NAME:FILE` raw key argument.
fn raw_spec_name(spec: &str) -> Option<&str> {
    let (ns, rest) = spec.split_once(':')?;
    let (name, _) = rest.split_once(':')?;
    Some(&spec[..ns.len() + 1 + name.len()])
}

fn rewrap(aws: &AwsArgs, a: &RewrapArgs) -> Result<(), Failure> {
    let unwrap_args = KeyArgs {
        keys: a.unwrap_keys.clone(),
        raw_aes_keys: a.unwrap_raw.clone(),
        context: a.keys.context.clone(),
    };
    // Unfiltered discovery would re-wrap a data key chosen by whoever wrote IN under the
    // caller's keys: the unwrapping keys are named, or limited to accounts.
    let mode = if a.discovery {
        KmsMode::Discovery(Some(DiscoveryFilter {
            partition: a.partition.clone(),
            accounts: a.accounts.clone(),
        }))
    } else if unwrap_args.keys.is_empty() && unwrap_args.raw_aes_keys.is_empty() {
        return Err(usage(
            "rewrap needs the key that unwraps IN's data key: --unwrap-key KEY, \
             --unwrap-raw-aes-key NAMESPACE:NAME:FILE, or --discovery with --account ID",
        ));
    } else {
        KmsMode::Decrypt
    };
    let old = build_keyring(aws, &unwrap_args, mode)?;
    let new = if a.keys.keys.is_empty() && a.keys.raw_aes_keys.is_empty() {
        None
    } else {
        Some(build_keyring(aws, &a.keys, KmsMode::Encrypt)?)
    };
    if new.is_none() && a.remove.is_empty() {
        return Err(usage(
            "rewrap needs --key/--raw-aes-key to add, or --remove-key to drop",
        ));
    }
    let context = parse_context(&a.keys.context)?;
    let (input, _) = open_input(&a.input)?;
    let in_name = shown(&a.input);
    let fail = |e| failure(&format!("re-wrapping {in_name}"), e);
    let mut dec = Decryptor::new(&*old).expected_context(context);
    if a.allow_legacy_suites {
        dec = dec.commitment_policy(CommitmentPolicy::RequireEncryptAllowDecrypt);
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
    let mut kept = KeyArgs {
        keys: Vec::new(),
        raw_aes_keys: Vec::new(),
        context: Vec::new(),
    };
    for key in job.kept_keys() {
        let name = key.to_string();
        if key.provider_id == "aws-kms" {
            if !a.keys.keys.contains(&name) {
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
                    .keys
                    .keys
                    .iter()
                    .chain(&a.unwrap_keys)
                    .any(|s| key.is_named_by(s));
                let in_filter = arn.is_some_and(|arn| {
                    arn.partition == a.partition && a.accounts.contains(&arn.account)
                });
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
    if !kept.keys.is_empty() || !kept.raw_aes_keys.is_empty() {
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
            shown(&a.out.output)
        ))
    };
    if signed && Output::names_a_stream(&a.out.output) {
        return Err(refuse());
    }
    let mut out = a.out.open(&a.input)?;
    if signed && out.is_stream() {
        return Err(refuse());
    }
    let (keys, removed) = {
        let sink = BufWriter::with_capacity(1 << 20, out.writer());
        let done = job.write(&wrap, sink).map_err(fail)?;
        let mut sink = done.output;
        sink.flush()
            .map_err(|e| io_failure("cannot write", &a.out.output, e))?;
        (done.keys, done.removed)
    };
    out.commit()
        .map_err(|e| io_failure("cannot write", &a.out.output, e))?;
    // Key names come from IN's header: through the one escaping path to the terminal.
    let mut report = format!(
        "kms-envelope: {} holds a new data key and message ID, wrapped under:\n",
        shown(&a.out.output)
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn inspect(input: &Path) -> Result<(), Failure> {
    let limits = HeaderLimits {
        max_encrypted_data_keys: DEFAULT_MAX_ENCRYPTED_DATA_KEYS,
        max_header_len: DEFAULT_MAX_HEADER_LEN,
    };
    let name = shown(input);
    let bad = |e: Error| failure(&format!("{name} is not a readable message"), e);
    let (header, layout) = if input == Path::new("-") {
        let mut bytes = Vec::new();
        io::stdin()
            .lock()
            .take(DEFAULT_MAX_HEADER_LEN as u64)
            .read_to_end(&mut bytes)
            .map_err(|e| io_failure("cannot read", input, e))?;
        let (h, _) = kms_envelope::format::Header::parse(&bytes, &limits)
            .map_err(|e| bad(e.into()))?
            .ok_or_else(|| bad(kms_envelope::format::FormatError::Truncated.into()))?;
        (h.body, None)
    } else {
        let mut f = File::open(input).map_err(|e| io_failure("cannot open input", input, e))?;
        let layout = scan_layout(&mut f, &limits).map_err(bad)?;
        (layout.header.clone(), Some(layout))
    };
    let keys: Vec<Value> = header
        .encrypted_data_keys
        .iter()
        .map(|k| {
            let info = match std::str::from_utf8(&k.provider_info) {
                Ok(s) if !s.chars().any(char::is_control) => json!(s),
                _ => json!({ "Hex": hex(&k.provider_info) }),
            };
            json!({ "ProviderId": k.provider_id, "ProviderInfo": info, "CiphertextLength": k.ciphertext.len() })
        })
        .collect();
    let context: serde_json::Map<String, Value> = header
        .context
        .iter()
        .map(|(k, v)| (k.to_owned(), json!(v)))
        .collect();
    let mut doc = json!({
        "Version": header.version(),
        "AlgorithmSuite": { "Id": format!("0x{:04X}", header.suite.id()), "Name": header.suite.name() },
        "MessageId": hex(&header.message_id),
        "EncryptionContext": context,
        "EncryptedDataKeys": keys,
        "ContentType": match header.content_type {
            kms_envelope::format::ContentType::Framed => "framed",
            kms_envelope::format::ContentType::NonFramed => "non-framed",
        },
        "FrameLength": header.frame_length,
    });
    if let Some(l) = layout {
        doc["HeaderLength"] = json!(l.header_len);
        doc["Frames"] = json!(l.frames);
        doc["PlaintextLength"] = json!(l.plaintext_len);
        doc["Authenticated"] = json!(false);
    }
    to_stdout(&json_text(&doc))
}

fn parse_tags(tags: &[String]) -> Result<Vec<(String, String)>, Failure> {
    tags.iter()
        .map(|t| {
            let mut key = None;
            let mut value = None;
            for part in t.split(',') {
                match part.split_once('=') {
                    Some(("TagKey", k)) => key = Some(k.to_owned()),
                    Some(("TagValue", v)) => value = Some(v.to_owned()),
                    _ => {}
                }
            }
            match (key, value) {
                (Some(k), Some(v)) if !k.is_empty() => Ok((k, v)),
                _ => Err(usage(format!(
                    "--tags {t:?}: write tags as TagKey=K,TagValue=V"
                ))),
            }
        })
        .collect()
}

fn print_json(v: &Value) -> Result<(), Failure> {
    to_stdout(&json_text(v))
}

fn read_policy(arg: &str) -> Result<(String, KeyPolicy), Failure> {
    let path = Path::new(strip_file_uri(arg));
    let text =
        std::fs::read_to_string(path).map_err(|e| io_failure("cannot read policy", path, e))?;
    let policy = KeyPolicy::parse(&text).map_err(|e| Failure {
        code: 2,
        message: format!("{}: {e}", path.display()),
    })?;
    Ok((text, policy))
}

fn key_command(aws: &AwsArgs, cmd: &KeyCommand) -> Result<(), Failure> {
    match cmd {
        KeyCommand::Template {
            account,
            admins,
            users,
        } => {
            let p =
                KeyPolicy::template(account, admins, users).map_err(|e| usage(e.to_string()))?;
            return to_stdout(&format!("{}\n", p.to_json_pretty()));
        }
        KeyCommand::Lint { file } => {
            let (_, policy) = read_policy(file)?;
            let report = policy.lint();
            to_stdout(&terminal_safe(&report.to_string(), true))?;
            return if report.is_clean() {
                Ok(())
            } else {
                Err(Failure {
                    code: 1,
                    message: format!("{file}: {} warning(s)", report.warnings.len()),
                })
            };
        }
        _ => {}
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure {
            code: 4,
            message: format!("cannot start a runtime: {e}"),
        })?;
    rt.block_on(async {
        let config = load_aws_config(aws.profile.as_deref(), aws.region.as_deref(), aws.endpoint_url.as_deref()).await;
        let admin = KeyAdmin::new(&config);
        let kms = |e: Error| failure("KMS", e);
        match cmd {
            KeyCommand::Create { policy, tags, description, alias_name, allow_policy_warnings } => {
                let (text, parsed) = read_policy(policy)?;
                let report = parsed.lint();
                if !report.is_clean() {
                    to_stderr(&report.to_string(), true);
                    if !allow_policy_warnings {
                        return Err(usage(format!(
                            "{policy}: the policy has {} warning(s); fix it, or pass --allow-policy-warnings",
                            report.warnings.len()
                        )));
                    }
                }
                if let Some(a) = alias_name {
                    kms_envelope::admin::check_alias_name(a).map_err(|e| usage(e.to_string()))?;
                }
                let tags = parse_tags(tags)?;
                let out = admin.create_key(Some(&text), description.as_deref(), &tags).await.map_err(kms)?;
                if let Some(alias) = alias_name {
                    let id = out["KeyMetadata"]["KeyId"].as_str().unwrap_or_default().to_owned();
                    admin.create_alias(alias, &id).await.map_err(kms)?;
                }
                print_json(&out)?;
            }
            KeyCommand::CreateAlias { alias_name, target_key_id } => {
                admin.create_alias(alias_name, target_key_id).await.map_err(|e| match e {
                    Error::InvalidArgument(m) => usage(m),
                    e => kms(e),
                })?;
            }
            KeyCommand::ListAliases { key_id } => print_json(&admin.list_aliases(key_id.as_deref()).await.map_err(kms)?)?,
            KeyCommand::Describe { key_id } => print_json(&admin.describe_key(key_id).await.map_err(kms)?)?,
            KeyCommand::Enable { key_id } => admin.enable_key(key_id).await.map_err(kms)?,
            KeyCommand::Disable { key_id } => admin.disable_key(key_id).await.map_err(kms)?,
            KeyCommand::ScheduleDeletion { key_id, pending_window_in_days } => print_json(
                &admin
                    .schedule_key_deletion(key_id, *pending_window_in_days)
                    .await
                    .map_err(|e| match e {
                        Error::InvalidArgument(m) => usage(m),
                        e => kms(e),
                    })?,
            )?,
            KeyCommand::CancelDeletion { key_id } => print_json(&admin.cancel_key_deletion(key_id).await.map_err(kms)?)?,
            KeyCommand::Template { .. } | KeyCommand::Lint { .. } => unreachable!("handled above"),
        }
        Ok(())
    })
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help and version go to stdout as clap writes them.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::from(e.exit_code() as u8);
        }
        // Errors quote the command line, which may hold controls: plain text, escaped (clap
        // strips escape sequences only when stderr is not a terminal, and never bidi controls).
        Err(e) => {
            to_stderr(&e.render().to_string(), true);
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    let result = match &cli.command {
        Command::Encrypt(a) => encrypt(&cli.aws, a),
        Command::Decrypt(a) => decrypt(&cli.aws, a),
        Command::Rewrap(a) => rewrap(&cli.aws, a),
        Command::Inspect { input } => inspect(input),
        Command::Key(k) => key_command(&cli.aws, k),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if !f.message.is_empty() {
                line_to_stderr(&format!("kms-envelope: {}", f.message));
            }
            ExitCode::from(f.code)
        }
    }
}
