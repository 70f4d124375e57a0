//! The sender's back-channel: one thread on the unicast repair socket takes
//! every receiver's NACKs (block ranges), parity requests (symbols lacking
//! per FEC group) and progress reports, and answers parity requests at once
//! with a confirmation multicast to the group (like PGM's NCF) so that
//! receivers whose need is covered stay quiet.
//!
//! The sending thread asks it, at the end of each repair window, for the
//! round's plan: the merged block ranges and, per group, the largest symbol
//! count confirmed ([`Backchannel::take`]). What to answer and what to
//! plan is the repair core's ([`crate::core::rounds::Rounds`]); this
//! module is its socket and its thread.

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::Socket;

use crate::core::fleet::{FleetCounts, RxInfo};
use crate::core::rounds::{Plan, Policy, Rounds, Transmit};
use crate::error::{Error, ErrorCode, Result};

pub use crate::core::rounds::Inbound;

/// How long the listener blocks in `recv` before looking at its stop flag.
const POLL: Duration = Duration::from_millis(50);

/// The back-channel thread and what it collected.
pub struct Backchannel {
    rounds: Arc<Mutex<Rounds>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

struct Listener {
    sock: UdpSocket,
    ncf: Socket,
    rounds: Arc<Mutex<Rounds>>,
    stop: Arc<AtomicBool>,
}

impl Listener {
    fn run(self) {
        let mut buf = vec![0u8; 2048];
        let _ = self.sock.set_read_timeout(Some(POLL));
        while !self.stop.load(Ordering::Acquire) {
            let Ok((n, from)) = self.sock.recv_from(&mut buf) else {
                lock(&self.rounds).sweep(Instant::now());
                continue;
            };
            let out = lock(&self.rounds).handle(&buf[..n], from, Instant::now());
            for t in out {
                let sent = match &t {
                    Transmit::Group(pkt) => self.ncf.send(pkt).map(drop),
                    Transmit::To(to, pkt) => self.sock.send_to(pkt, to).map(drop),
                };
                if let Err(e) = sent {
                    log::warn!("back-channel: {e}");
                }
            }
        }
    }
}

fn lock(m: &Mutex<Rounds>) -> MutexGuard<'_, Rounds> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Backchannel {
    /// Start the thread on `sock` (the repair socket); confirmations go out
    /// on `ncf` (a socket connected to the group).
    pub fn start(sock: UdpSocket, ncf: Socket, policy: Policy) -> Result<Backchannel> {
        let rounds = Arc::new(Mutex::new(Rounds::new(policy)));
        let stop = Arc::new(AtomicBool::new(false));
        let l = Listener {
            sock,
            ncf,
            rounds: rounds.clone(),
            stop: stop.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("xdpcast-backchannel".into())
            .spawn(move || l.run())
            .map_err(|e| {
                Error::new(
                    ErrorCode::Internal,
                    format!("cannot start the back-channel thread: {e}"),
                )
            })?;
        Ok(Backchannel {
            rounds,
            stop,
            handle: Some(handle),
        })
    }

    /// The window of `round` opens (confirmations carry it), after
    /// `rounds_done` repair rounds.
    pub fn set_round(&self, round: u64, rounds_done: u32) {
        lock(&self.rounds).open_window(round, rounds_done);
    }

    /// Whether a receiver still receiving wrote more blocks within `within`.
    pub fn progressing(&self, within: Duration) -> bool {
        lock(&self.rounds).progressing(within, Instant::now())
    }

    /// Everything asked for since the last call.
    pub fn take(&self) -> Plan {
        lock(&self.rounds).take()
    }

    /// Receivers per state (after marking the silent ones vanished).
    pub fn fleet(&self) -> FleetCounts {
        lock(&self.rounds).fleet(Instant::now())
    }

    /// Every receiver's row.
    pub fn rows(&self) -> Vec<RxInfo> {
        let mut r = lock(&self.rounds);
        r.sweep(Instant::now());
        r.table().rows().to_vec()
    }

    /// What came in so far.
    pub fn inbound(&self) -> Inbound {
        lock(&self.rounds).inbound()
    }
}

impl Drop for Backchannel {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
