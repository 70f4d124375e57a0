//! The status page: an 8192-byte file in shared memory (`/run/xdpcast` by
//! default) that any process may map read-only to follow a session.
//!
//! The page is an array of 1024 little-endian `u64` words at fixed offsets
//! (docs/status-page.md and `receiver/include/xdpcast_status.h` give every
//! one). One writer per page updates it under a sequence lock: it makes
//! `seq` odd, writes the words, then makes `seq` even again. A reader copies
//! the words and retries while `seq` was odd or changed; it never blocks the
//! writer. `writer_pid` and `heartbeat_ns` tell a live page from a stale one.
//!
//! Pages live in a directory only their writer can write ([`PrivateDir`]);
//! a page is created with `O_EXCL | O_NOFOLLOW`, a page of a live writer is
//! never taken over, and a stale one is removed and created anew. Readers
//! report who owns the file they read (`owner_uid`, from `fstat`), so a page
//! that neither root nor the reader wrote is flagged (docs/security.md).

mod layout;
mod paths;
mod reader;
mod snapshot;
mod writer;

#[cfg(test)]
mod tests;

pub use layout::*;
pub use paths::*;
pub use reader::*;
pub use snapshot::*;
pub use writer::*;
