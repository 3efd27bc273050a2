//! Text for the terminal: every string that reaches stderr or stdout goes through here, with
//! the terminal controls it may carry (from a message: ARNs, context, Regions) escaped.

use std::fmt::Write as _;
use std::io::{self, Write};

use serde_json::Value;

use crate::exit::{closed_stdout, io_error, Failure};

/// Whether a terminal would act on `c` rather than show it: C0 and C1 controls, DEL, and the
/// bidirectional controls that reorder the text around them.
fn is_terminal_control(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with every terminal control escaped as `\u{..}` (newlines kept only when asked).
pub fn terminal_safe(s: &str, keep_newlines: bool) -> String {
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
pub fn to_stderr(text: &str, keep_newlines: bool) {
    let _ = io::stderr().write_all(terminal_safe(text, keep_newlines).as_bytes());
}

/// One line to stderr: everything in it escaped, then the newline that ends it.
pub fn line_to_stderr(line: &str) {
    let _ = io::stderr().write_all(format!("{}\n", terminal_safe(line, false)).as_bytes());
}

/// A warning line, prefixed as the tool's other messages are.
pub fn warn(message: &str) {
    line_to_stderr(&format!("kms-envelope: warning: {message}"));
}

/// The one way text reaches stdout; a reader that has gone (`| head`) ends the command quietly.
pub fn to_stdout(text: &str) -> Result<(), Failure> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| match e.kind() {
            io::ErrorKind::BrokenPipe => closed_stdout(),
            _ => io_error(format!("cannot write to standard output: {e}")),
        })
}

/// Pretty JSON with the terminal controls serde_json leaves raw (DEL, C1, bidi) escaped too:
/// they occur only inside strings, where `\uXXXX` means the same character.
pub fn json_text(v: &Value) -> String {
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

/// A JSON document to stdout, controls escaped.
pub fn print_json(v: &Value) -> Result<(), Failure> {
    to_stdout(&json_text(v))
}
