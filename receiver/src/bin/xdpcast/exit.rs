//! Exit statuses: of a session's end, of a signal or a closed output (as
//! udpcast's udp-receiver and shell pipelines report them), and of a command
//! that failed outside a session.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use xdpcast::{ErrorCode, State};

/// Exit status of a failed session: this plus its error code.
const EXIT_FAILURE_BASE: u8 = 100;

/// Set by SIGINT or SIGTERM: the running session is to be cancelled.
pub(crate) static SIGNALLED: AtomicBool = AtomicBool::new(false);
/// The signal that cancelled the run (0: none).
static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNAL.store(sig, Ordering::Relaxed);
    SIGNALLED.store(true, Ordering::Relaxed);
}

/// Exit status of a closed output: a process killed by SIGPIPE (128 + 13),
/// as udp-receiver and any shell pipeline member reports it.
const EXIT_OUTPUT_CLOSED: u8 = 141;

/// The exit status shell scripts expect, as from udpcast's udp-receiver,
/// when a receive ended in `state` with `code` for an outside reason:
/// 128 plus the signal that cancelled it (130 SIGINT, 143 SIGTERM), or 141
/// when the output closed (the consumer of `--out -` or `--pipe` exited).
/// None otherwise.
pub(crate) fn outside_exit(state: State, code: ErrorCode) -> Option<ExitCode> {
    let sig = SIGNAL.load(Ordering::Relaxed);
    match (state, code) {
        (State::Success, _) => None,
        (_, ErrorCode::Cancelled) if sig > 0 => Some(ExitCode::from(128 + sig as u8)),
        (_, ErrorCode::OutputClosed) => Some(ExitCode::from(EXIT_OUTPUT_CLOSED)),
        _ => None,
    }
}

pub(crate) fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

pub(crate) fn exit_code(state: State, code: ErrorCode) -> ExitCode {
    if state == State::Success {
        ExitCode::SUCCESS
    } else if let Some(outside) = outside_exit(state, code) {
        outside
    } else {
        ExitCode::from(EXIT_FAILURE_BASE + code as u8)
    }
}

/// The exit status of a command that failed before or outside a session:
/// 100 + the code when the error carries one (a receiver that cannot set
/// up, an invalid argument), as for a failed session; else 1.
pub(crate) fn error_exit_code(e: &anyhow::Error) -> ExitCode {
    match e.chain().find_map(|c| c.downcast_ref::<xdpcast::Error>()) {
        Some(x) => ExitCode::from(EXIT_FAILURE_BASE + x.code as u8),
        None => ExitCode::FAILURE,
    }
}
