//! What the commands share on the terminal: the notes' log target, progress
//! bars, writes to stdout, default session names and invalid-argument errors.

use indicatif::{ProgressBar, ProgressStyle};
use xdpcast::net::socket::Group;
use xdpcast::ErrorCode;

/// Log target of the receiver's notes to its operator (path chosen,
/// status page): shown by default, hidden by `--quiet`.
pub(crate) const NOTES: &str = "xdpcast::cli";

/// An invalid command line, with the `InvalidArgument` code (exit 112).
pub(crate) fn invalid(message: String) -> anyhow::Error {
    xdpcast::Error::new(ErrorCode::InvalidArgument, message).into()
}

pub(crate) fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(&format!(
            "{what} [{{bar:40}}] {{bytes}}/{{total_bytes}} {{bytes_per_sec}} eta {{eta}} {{msg}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb
}

pub(crate) fn default_name(group: &Group) -> String {
    let s: String = group
        .to_string()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    s.trim_matches('-').to_string()
}

/// Write `text` to stdout. A reader that has gone (`xdpcast status | head`)
/// is not an error: what it wanted it has.
pub(crate) fn emit(text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}
