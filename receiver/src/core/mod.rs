//! The repair protocol as state machines, without sockets, threads or a
//! clock of their own (sans-IO, in the style of quinn-proto and
//! s2n-quic-core): packets and the time go in, packets to send and the
//! next time to be woken come out.
//!
//! - [`gaps`]: the receiver's side: what it lacks, when it asks (backoff,
//!   asking again) and what it leaves out (the sender's confirmations);
//! - [`rounds`]: the sender's side: requests, confirmations, progress
//!   reports and "too slow" verdicts in, the repair windows and each
//!   round's plan out, within the repair budget;
//! - [`fleet`]: the sender's table of its receivers, from their reports
//!   (and the hint of its end packets: how many lack much);
//! - [`fallback`]: the receiver's choice after the passes between its web
//!   server and repair rounds, by that hint.
//!
//! The real binaries drive them from their sockets (`api/session/`,
//! `receive/transfer.rs`, `send/repair.rs`, `send/sender.rs`); `cargo
//! xtask fleet-sim` drives one sender and a thousand receivers in virtual
//! time (docs/reliability.md). Time is a [`std::time::Instant`] handed in
//! by the caller: the simulator's start plus virtual time.

pub mod fallback;
pub mod fleet;
pub mod gaps;
pub mod rounds;
