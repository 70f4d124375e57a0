//! xdpcast: a kernel-bypass multicast receiver for mass deployment of files
//! and disk images.
//!
//! The modules follow the stages a packet passes, and imports flow one way,
//! from the top of this list to the bottom:
//!
//! - [`api`]: the WdsTransportClient-style [`Session`] and its C ABI;
//! - [`send`]: the sender (passes, pacing, repair);
//! - [`fetch`]: the HTTP(S) source: what multicast did not deliver, from
//!   web servers, fed into the transfer as the packets it replaces;
//! - [`receive`]: turning packets into blocks: the data path (XDP or
//!   sockets), the pinned workers, the session's transfer state and the
//!   udpcast-compatible sink;
//! - [`store`]: turning blocks into bytes on a file or device, resume files;
//! - [`status`]: the shared-memory status page and what reads it (reports,
//!   monitor, metrics);
//! - [`core`]: the repair protocol as state machines without sockets,
//!   threads or a clock of their own (gaps and requests, rounds and
//!   confirmations, the sender's receiver table), driven by `receive`,
//!   `send` and `api`, and by `cargo xtask fleet-sim`;
//! - [`proto`]: what is on the wire (xdpcast packets, RaptorQ groups,
//!   udpcast's erasure code), no I/O;
//! - [`net`]: the kernel edge: the XDP program's loader, AF_XDP rings,
//!   kernel sockets and frame decapsulation.
//!
//! [`safe_fs`] (opening paths in directories other users may write),
//! [`cpu`] (thread placement and priority) and [`error`] serve every stage.

#![warn(missing_docs)]

pub mod api;
pub mod core;
pub mod cpu;
pub mod error;
pub mod fetch;
pub mod net;
pub mod proto;
pub mod receive;
mod rng;
pub mod safe_fs;
pub mod send;
pub mod status;
pub mod store;

pub use api::session::{Callbacks, Session};
pub use error::{Error, ErrorCode, Result};
pub use receive::request::{ModeRequest, SessionRequest};
pub use status::page::{PathMode, Snapshot, State, StatusReader};
