//! `kms-envelope`: envelope encryption under AWS KMS keys from the shell, and the seed's key
//! provisioning (policy template and lint, key, alias).
//!
//! One module per command group: [`files`] (encrypt, decrypt, rewrap, inspect), [`key`],
//! [`tree`] and [`volume`]; a new group is a module beside them, a variant of [`Command`] and a
//! line of [`main`]'s dispatch. Shared pieces: [`args`] (argument structs flattened into the commands),
//! [`keyrings`] (keyrings from those arguments), [`output`] (OUT, written then committed),
//! [`exit`] (failures and exit codes) and [`term`] (text for the terminal).
//!
//! Everything written to stderr passes through [`term::terminal_safe`]: errors carry strings
//! from messages (ARNs, provider IDs, context keys and values, Regions), which must not reach a
//! terminal as control sequences.

mod args;
mod exit;
mod files;
mod key;
mod keyrings;
mod output;
mod term;
mod tree;
mod volume;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use args::{AwsArgs, InputArgs};
use files::decrypt::DecryptArgs;
use files::encrypt::EncryptArgs;
use files::rewrap::RewrapArgs;
use key::KeyCommand;
use term::{line_to_stderr, to_stderr};
use volume::VolumeCommand;

#[derive(Parser)]
#[command(
    name = "kms-envelope",
    version,
    about = "Envelope encryption under AWS KMS keys, in the AWS Encryption SDK message format",
    after_help = exit::TABLE
)]
struct Cli {
    #[command(flatten)]
    aws: AwsArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Encrypt IN to OUT under one or more keys.
    // IN is plaintext here. `mut_arg` moves the argument it changes to the end of the usage
    // line: moving OUT after it too keeps `--input <IN> --output <OUT>` in that order.
    #[command(mut_arg("input", |a| a.help("Plaintext to read (`-` for stdin)")))]
    #[command(mut_arg("output", |a| a))]
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
    #[command(mut_arg("input", |a| a.help("The message (`-` for stdin)")))]
    Inspect {
        #[command(flatten)]
        input: InputArgs,
    },
    /// Key policies and KMS keys: the seed's commands.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Encrypted block volumes: create, serve over NBD, snapshot, import and export, key slots.
    #[command(subcommand)]
    Volume(VolumeCommand),
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
        Command::Encrypt(a) => files::encrypt::encrypt(&cli.aws, a),
        Command::Decrypt(a) => files::decrypt::decrypt(&cli.aws, a),
        Command::Rewrap(a) => files::rewrap::rewrap(&cli.aws, a),
        Command::Inspect { input } => files::inspect::inspect(&input.path),
        Command::Key(k) => key::run(&cli.aws, k),
        Command::Volume(v) => volume::run(&cli.aws, v),
    };
    match result {
        Ok(()) => exit::Code::Success.into(),
        Err(f) => {
            if !f.message.is_empty() {
                line_to_stderr(&format!("kms-envelope: {}", f.message));
            }
            f.code.into()
        }
    }
}
