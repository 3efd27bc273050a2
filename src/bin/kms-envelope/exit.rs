//! Failures and exit codes: every code the tool exits with is a [`Code`], and a library error
//! becomes one in [`code_of`] alone.

use std::io;
use std::path::Path;
use std::process::ExitCode;

use kms_envelope::{Error, ErrorKind, Limit};

/// The exit codes, as `--help` ([`TABLE`]) and the README list them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    /// The command did what was asked.
    Success = 0,
    /// Decryption or authentication failed, or the message is malformed (also: `key lint`
    /// found warnings, [`Code::LINT_WARNINGS`]).
    Decrypt = 1,
    /// The command line or a file it names is wrong: the message says what to change.
    Usage = 2,
    /// KMS refused, failed, or no credentials were found.
    Kms = 3,
    /// Reading or writing a file failed.
    Io = 4,
    /// Standard output was closed by its reader: the status of a process ended by SIGPIPE.
    ClosedStdout = 141,
}

impl Code {
    /// `key lint` exits 1 when the policy draws warnings, as a failed check.
    pub const LINT_WARNINGS: Code = Code::Decrypt;
    /// `encrypt -r`/`decrypt -r` exit 1 when any file failed (the report says which).
    pub const SOME_FILES_FAILED: Code = Code::Decrypt;
}

impl From<Code> for ExitCode {
    fn from(c: Code) -> ExitCode {
        ExitCode::from(c as u8)
    }
}

/// The exit-code table of `--help`; the README's table says the same.
pub const TABLE: &str = "Exit codes: 0 success, 1 decryption/authentication failure, 2 usage \
                         error, 3 KMS/credential error, 4 I/O error, 141 standard output closed \
                         by its reader.";

/// A failure with its exit code and a message that names what is at fault.
pub struct Failure {
    pub code: Code,
    pub message: String,
}

pub fn usage(message: impl Into<String>) -> Failure {
    Failure {
        code: Code::Usage,
        message: message.into(),
    }
}

/// An I/O failure that is not about one path (a runtime that cannot start, stdout).
pub fn io_error(message: impl Into<String>) -> Failure {
    Failure {
        code: Code::Io,
        message: message.into(),
    }
}

/// Standard output was closed by its reader (`... | head`): end quietly, with the status a
/// process ended by SIGPIPE has, so that a pipeline sees the output was cut short.
pub fn closed_stdout() -> Failure {
    Failure {
        code: Code::ClosedStdout,
        message: String::new(),
    }
}

pub fn io_failure(what: &str, path: &Path, e: io::Error) -> Failure {
    io_error(format!("{what} {}: {e}", shown(path)))
}

pub fn shown(path: &Path) -> String {
    if path == Path::new("-") {
        "standard stream".to_owned()
    } else {
        path.display().to_string()
    }
}

/// The exit code for a library error: the one place that maps them, from the error's kind.
pub fn code_of(e: &Error) -> Code {
    match e.kind() {
        ErrorKind::Io => Code::Io,
        ErrorKind::Kms => Code::Kms,
        ErrorKind::Limit if limit_refuses_the_message(e) => Code::Decrypt,
        ErrorKind::Misuse | ErrorKind::Keyring | ErrorKind::Limit => Code::Usage,
        // Format, Authentication, Policy, NoKey, Crypto, and any kind added later.
        _ => Code::Decrypt,
    }
}

/// A limit that no option of this tool raises refuses the message, as a malformed one is
/// refused (exit 1): a hostile header must not read as the operator's mistake. Limits with an
/// option (the held-back plaintext, the frame count of an encryption) are usage errors.
fn limit_refuses_the_message(e: &Error) -> bool {
    matches!(
        e,
        Error::Limit {
            what: Limit::WrappedDataKeys | Limit::HeaderLength | Limit::FrameLength,
            ..
        }
    )
}

/// What to do about a limit, in this tool's terms: the library's message names its setters.
fn limit_hint(what: Limit, max: u64) -> Option<String> {
    Some(match what {
        Limit::WrappedDataKeys => format!(
            "the message has more than {max} wrapped data keys; this tool reads at most {max}              and has no option to raise that: the message is malformed or hostile"
        ),
        Limit::HeaderLength => format!(
            "the message's header is larger than {max} bytes, the most this tool reads: the              message is malformed or hostile"
        ),
        Limit::FrameLength => format!(
            "the message declares frames larger than {max} bytes, the most this tool accepts:              the message is malformed or hostile"
        ),
        Limit::FrameCount => format!(
            "the input would need more than {max} frames: choose a larger --frame-length"
        ),
        Limit::BufferedPlaintext | Limit::NonFramedBodyLength => format!(
            "the message must be held in memory until it verifies and is larger than {max}              bytes: raise --max-buffered-size if you trust it"
        ),
        _ => return None,
    })
}

/// A library error with what was being done; a closed stdout ends quietly.
pub fn failure(context: &str, e: Error) -> Failure {
    if matches!(&e, Error::Io(io) if io.kind() == io::ErrorKind::BrokenPipe) {
        return closed_stdout();
    }
    let hint = match &e {
        Error::Limit { what, max } => limit_hint(*what, *max),
        _ => None,
    };
    Failure {
        code: code_of(&e),
        message: format!("{context}: {}", hint.unwrap_or_else(|| e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_help_table_names_every_code() {
        for c in [
            Code::Success,
            Code::Decrypt,
            Code::Usage,
            Code::Kms,
            Code::Io,
            Code::ClosedStdout,
        ] {
            assert!(TABLE.contains(&format!(" {} ", c as u8)), "{c:?}");
        }
    }
}
