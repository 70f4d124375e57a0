//! xdpcast: a kernel-bypass multicast receiver for mass deployment of files
//! and disk images.
//!
//! A packet passes these stages, one module each:
//! [`steer`] (XDP program on the NIC) → [`rings`] (AF_XDP sockets) →
//! [`workers`] (pinned threads) → [`frame`]/[`wire`] (decapsulation and
//! parsing) → [`transfer`] (session checks, bitmap) → [`target`] (the
//! memory-mapped file or block device). [`status`] publishes progress in
//! shared memory and [`session`] ties it together behind a
//! WdsTransportClient-style API. [`net`] holds the kernel-socket parts used by
//! the portable path and by [`sender`].

#![warn(missing_docs)]

pub mod bitmap;
pub mod datapath;
pub mod error;
pub mod fec;
pub mod ffi;
pub mod frame;
pub mod monitor;
pub mod net;
pub mod report;
pub mod resume;
pub mod rings;
mod rng;
pub mod sender;
pub mod session;
pub mod status;
pub mod steer;
pub mod target;
pub mod transfer;
pub mod udpcast;
pub mod udpcast_fec;
pub mod wire;
pub mod workers;

pub use error::{Error, ErrorCode, Result};
pub use session::{Callbacks, ModeRequest, Session, SessionRequest};
pub use status::{PathMode, Snapshot, State, StatusReader};
