//! Stable error codes (published on the status page and through the C ABI)
//! and the crate's error type.

use std::fmt;

/// Why a session failed. The numeric values are a public interface (status
/// page, C ABI, process exit codes) and never change meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u32)]
pub enum ErrorCode {
    /// No error.
    #[default]
    None = 0,
    /// The session was cancelled.
    Cancelled = 1,
    /// No packet of the session arrived within the timeout.
    Timeout = 2,
    /// Reading or writing the target failed.
    TargetIo = 3,
    /// The target (block device or fixed file) is smaller than the image.
    TargetTooSmall = 4,
    /// No space left on the target's filesystem.
    DiskFull = 5,
    /// The received image does not match the sender's SHA-256.
    DigestMismatch = 6,
    /// The sender stopped sending before the image was complete.
    SenderGone = 7,
    /// The sender changed session parameters mid-session.
    ProtocolError = 8,
    /// The sender finished its last pass and blocks are still missing.
    Incomplete = 9,
    /// The XDP program or AF_XDP sockets could not be set up.
    SteeringFailed = 10,
    /// Sockets could not be opened or the group could not be joined.
    Network = 11,
    /// Invalid request (bad group, interface, sizes).
    InvalidArgument = 12,
    /// An unexpected internal failure.
    Internal = 13,
    /// The session was closed: its handle or object may not be used any more.
    Closed = 14,
    /// The receiver fell too far behind the sender (three repair rounds
    /// after the last pass it still missed more than the sender's
    /// `--max-behind` share of the image) and was told to stop rather than
    /// make everyone take its retransmissions.
    TooSlow = 17,
    /// The output pipe (`--out -`, `udp-receiver --pipe`) was closed before
    /// the end of the image.
    OutputClosed = 18,
}

impl ErrorCode {
    /// Every code, in numeric order (numbers are allocated per subsystem,
    /// so there may be gaps).
    pub const ALL: [ErrorCode; 17] = [
        ErrorCode::None,
        ErrorCode::Cancelled,
        ErrorCode::Timeout,
        ErrorCode::TargetIo,
        ErrorCode::TargetTooSmall,
        ErrorCode::DiskFull,
        ErrorCode::DigestMismatch,
        ErrorCode::SenderGone,
        ErrorCode::ProtocolError,
        ErrorCode::Incomplete,
        ErrorCode::SteeringFailed,
        ErrorCode::Network,
        ErrorCode::InvalidArgument,
        ErrorCode::Internal,
        ErrorCode::Closed,
        ErrorCode::TooSlow,
        ErrorCode::OutputClosed,
    ];

    /// The code with numeric value `v`, if any.
    pub fn from_u32(v: u32) -> Option<ErrorCode> {
        Self::ALL.iter().copied().find(|c| *c as u32 == v)
    }

    /// Stable snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::None => "none",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::Timeout => "timeout",
            ErrorCode::TargetIo => "target_io",
            ErrorCode::TargetTooSmall => "target_too_small",
            ErrorCode::DiskFull => "disk_full",
            ErrorCode::DigestMismatch => "digest_mismatch",
            ErrorCode::SenderGone => "sender_gone",
            ErrorCode::ProtocolError => "protocol_error",
            ErrorCode::Incomplete => "incomplete",
            ErrorCode::SteeringFailed => "steering_failed",
            ErrorCode::Network => "network",
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::Internal => "internal",
            ErrorCode::Closed => "closed",
            ErrorCode::TooSlow => "too_slow",
            ErrorCode::OutputClosed => "output_closed",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), *self as u32)
    }
}

/// An error with its stable code and a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} [{code}]")]
pub struct Error {
    /// Stable code.
    pub code: ErrorCode,
    /// What happened, for people.
    pub message: String,
}

impl Error {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Error {
        Error {
            code,
            message: message.into(),
        }
    }

    /// Map an I/O error on the target to the right code (disk full or I/O).
    pub fn target_io(context: &str, err: &std::io::Error) -> Error {
        let code = match err.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => ErrorCode::DiskFull,
            _ => ErrorCode::TargetIo,
        };
        Error::new(code, format!("{context}: {err}"))
    }
}

/// Result with the crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_ordered() {
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_u32(c as u32), Some(c));
        }
        assert!(ErrorCode::ALL
            .windows(2)
            .all(|w| (w[0] as u32) < (w[1] as u32)));
        assert_eq!(ErrorCode::from_u32(15), None, "not allocated yet");
        assert_eq!(ErrorCode::from_u32(1000), None);
    }

    #[test]
    fn enospc_maps_to_disk_full() {
        let e = Error::target_io("write", &std::io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(e.code, ErrorCode::DiskFull);
        let e = Error::target_io("write", &std::io::Error::from_raw_os_error(libc::EIO));
        assert_eq!(e.code, ErrorCode::TargetIo);
        assert!(e.to_string().contains("target_io (3)"));
    }
}
