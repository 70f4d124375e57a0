//! The sender's view of its receivers, built from their progress reports
//! (wire kind 10): who is there, how far each is, how each ended, and who
//! went silent before ending (vanished).
//!
//! A receiver is known by its address, port and per-session token (a random
//! number it puts in every report and request). Reports are not
//! authenticated, but the token is not known to anyone who cannot read the
//! receiver's unicast to the sender: a report forged with a receiver's exact
//! address, port and name but another token makes a row of its own (bounded
//! by [`MAX_ROWS`]) and cannot mark the genuine receiver finished or too
//! slow. A receiver restarted on the same machine (a resume after a crash:
//! new port, new token) takes over its old row once that row is settled
//! (vanished, failed or finished) instead of leaving it behind; a forger
//! can do that too, which at most keeps the sender waiting.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::error::ErrorCode;
use crate::proto::wire::{self, Report};

/// Most receivers the table holds.
const MAX_ROWS: usize = 65_536;

/// Where a receiver stands, as the sender sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxState {
    /// Reporting, not finished.
    Receiving,
    /// Reported SUCCESS (image complete and verified).
    Finished,
    /// Reported FAILURE with this code (or was told it is too slow).
    Failed(ErrorCode),
    /// Stopped reporting before it finished.
    Vanished,
}

impl RxState {
    /// Lower-case name for the table and the JSON line.
    pub fn name(self) -> &'static str {
        match self {
            RxState::Receiving => "receiving",
            RxState::Finished => "finished",
            RxState::Failed(_) => "failed",
            RxState::Vanished => "vanished",
        }
    }

    /// Finished, failed or vanished: nothing more is expected of it.
    pub fn is_settled(self) -> bool {
        self != RxState::Receiving
    }
}

/// Where a receiver's bytes came from, by its reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Via {
    /// Multicast only.
    Multicast,
    /// A web server only (`receive --http`): it hears no multicast.
    Http,
    /// Both.
    Both,
}

impl Via {
    /// From a report's flags.
    fn of(flags: u8) -> Via {
        if flags & wire::REPORT_HTTP == 0 {
            Via::Multicast
        } else if flags & wire::REPORT_HTTP_ONLY != 0 {
            Via::Http
        } else {
            Via::Both
        }
    }

    /// Its name in the receiver table's VIA column.
    pub fn name(self) -> &'static str {
        match self {
            Via::Multicast => "multicast",
            Via::Http => "http",
            Via::Both => "multicast+http",
        }
    }
}

/// One receiver.
#[derive(Debug, Clone)]
pub struct RxInfo {
    /// Address its reports come from.
    pub addr: SocketAddr,
    /// Its per-session token (0 from a receiver that sends none).
    pub token: u64,
    /// Its session name (from the report, printable ASCII only).
    pub name: String,
    /// Where it stands.
    pub state: RxState,
    /// Blocks it has written.
    pub blocks_done: u64,
    /// NACK and parity request packets it says it sent.
    pub requests: u32,
    /// Where its bytes came from (`receive --http`: a web server).
    pub via: Via,
    /// When its last report arrived.
    pub last_seen: Instant,
    /// When it last reported more blocks than before.
    pub last_progress: Instant,
}

/// How many receivers are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FleetCounts {
    /// Every receiver that ever reported.
    pub known: u64,
    /// Still receiving.
    pub receiving: u64,
    /// Finished with SUCCESS.
    pub finished: u64,
    /// Ended with FAILURE.
    pub failed: u64,
    /// Went silent before ending.
    pub vanished: u64,
    /// Sum of the blocks written by receivers still receiving.
    pub blocks_receiving: u64,
    /// Receivers that hear the multicast (not "HTTP only"), still
    /// receiving or finished.
    pub hearing: u64,
    /// Of those, receivers still receiving that lack at least
    /// [`wire::LACKING_MUCH`] of the image: whom a repair round would serve
    /// much (the hint of the sender's end packets, [`wire::fleet_flags`]).
    pub lacking: u64,
}

/// Every receiver that reported.
#[derive(Debug)]
pub struct Fleet {
    rows: Vec<RxInfo>,
    vanish_after: Duration,
    /// Blocks of the image: a receiver reporting fewer than this less
    /// [`wire::LACKING_MUCH`] of it lacks much.
    much_below: u64,
}

impl Fleet {
    /// An empty fleet for an image of `block_count` blocks; a receiver
    /// silent for `vanish_after` before it finished is marked vanished.
    pub fn new(vanish_after: Duration, block_count: u64) -> Fleet {
        Fleet {
            rows: Vec::new(),
            vanish_after,
            much_below: block_count - (wire::LACKING_MUCH * block_count as f64).ceil() as u64,
        }
    }

    fn find(&mut self, from: SocketAddr, token: u64) -> Option<&mut RxInfo> {
        self.rows
            .iter_mut()
            .find(|r| r.addr == from && r.token == token)
    }

    /// A settled row of `name` on `ip` that a restarted receiver takes
    /// over (the sender's own "too slow" verdict stands).
    fn restarted(&mut self, ip: IpAddr, name: &str) -> Option<&mut RxInfo> {
        self.rows.iter_mut().find(|r| {
            r.addr.ip() == ip
                && r.name == name
                && r.state.is_settled()
                && r.state != RxState::Failed(ErrorCode::TooSlow)
        })
    }

    /// Take in a report from `from` carrying `token`.
    pub fn report(&mut self, from: SocketAddr, token: u64, r: &Report, now: Instant) {
        let state = match r.state {
            2 => RxState::Finished,
            3 => {
                RxState::Failed(ErrorCode::from_u32(r.error.into()).unwrap_or(ErrorCode::Internal))
            }
            _ => RxState::Receiving,
        };
        let name = r.name();
        let row = RxInfo {
            addr: from,
            token,
            name: name.clone(),
            state,
            blocks_done: r.blocks_done,
            requests: r.requests,
            via: Via::of(r.flags),
            last_seen: now,
            last_progress: now,
        };
        let full = self.rows.len() >= MAX_ROWS;
        if self.find(from, token).is_none() {
            if let Some(old) = self.restarted(from.ip(), &name) {
                *old = row;
                return;
            }
        }
        match self.find(from, token) {
            // A verdict of the sender's own (too slow) stands.
            Some(old) if old.state == RxState::Failed(ErrorCode::TooSlow) => {
                old.last_seen = now;
            }
            Some(old) => {
                let last_progress = if r.blocks_done > old.blocks_done {
                    now
                } else {
                    old.last_progress
                };
                *old = RxInfo {
                    last_progress,
                    // Bytes once from a web server stay counted; one that
                    // heard only HTTP and then multicast took both.
                    via: row.via.max(old.via),
                    ..row
                };
            }
            None if !full => self.rows.push(row),
            // A flood of forged reports does not grow the table forever.
            None => {}
        }
    }

    /// Mark the receiver at `from` with `token` failed with `code` (the
    /// sender's verdict).
    pub fn fail(&mut self, from: SocketAddr, token: u64, code: ErrorCode) {
        if let Some(r) = self.find(from, token) {
            r.state = RxState::Failed(code);
        }
    }

    /// The row of the receiver reporting from `from` with `token`.
    pub fn get(&self, from: SocketAddr, token: u64) -> Option<&RxInfo> {
        self.rows
            .iter()
            .find(|r| r.addr == from && r.token == token)
    }

    /// Whether requests from `from` with `token` should be ignored (its
    /// receiver was told it is too slow). Requests with any other token
    /// are served: a verdict earned by forged reports drops only the
    /// forger's requests.
    pub fn is_dropped(&self, from: SocketAddr, token: u64) -> bool {
        self.get(from, token)
            .is_some_and(|r| r.state == RxState::Failed(ErrorCode::TooSlow))
    }

    /// Whether a receiver still receiving wrote more blocks within `within`
    /// (it may be working through a repair round it has not asked after).
    pub fn progressing(&self, within: Duration, now: Instant) -> bool {
        self.rows
            .iter()
            .any(|r| r.state == RxState::Receiving && now - r.last_progress < within)
    }

    /// Mark receivers silent for too long as vanished.
    pub fn sweep(&mut self, now: Instant) {
        for r in &mut self.rows {
            if r.state == RxState::Receiving && now - r.last_seen >= self.vanish_after {
                r.state = RxState::Vanished;
            }
        }
    }

    /// Counts per state.
    pub fn counts(&self) -> FleetCounts {
        let mut c = FleetCounts {
            known: self.rows.len() as u64,
            ..FleetCounts::default()
        };
        for r in &self.rows {
            let hears = r.via != Via::Http;
            match r.state {
                RxState::Receiving => {
                    c.receiving += 1;
                    c.blocks_receiving += r.blocks_done;
                    c.hearing += u64::from(hears);
                    c.lacking += u64::from(hears && r.blocks_done <= self.much_below);
                }
                RxState::Finished => {
                    c.finished += 1;
                    c.hearing += u64::from(hears);
                }
                RxState::Failed(_) => c.failed += 1,
                RxState::Vanished => c.vanished += 1,
            }
        }
        c
    }

    /// Every row, in the order the receivers first reported.
    pub fn rows(&self) -> &[RxInfo] {
        &self.rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(state: u8, error: u8, name: &str) -> Report {
        Report {
            blocks_done: 100,
            requests: 1,
            state,
            error,
            flags: 0,
            name: Report::name_field(name),
        }
    }

    #[test]
    fn tracks_states_and_vanishing() {
        let mut f = Fleet::new(Duration::from_secs(2), 100);
        let t0 = Instant::now();
        let a: SocketAddr = "10.0.0.1:4000".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:4000".parse().unwrap();
        let c: SocketAddr = "10.0.0.3:4000".parse().unwrap();
        f.report(a, 1, &report(1, 0, "a"), t0);
        f.report(b, 2, &report(1, 0, "b"), t0);
        f.report(c, 3, &report(1, 0, "c"), t0);
        assert!(f.progressing(Duration::from_secs(1), t0));
        f.report(a, 1, &report(2, 0, "a"), t0 + Duration::from_secs(1));
        f.report(b, 2, &report(3, 9, "b"), t0 + Duration::from_secs(1));
        f.report(c, 3, &report(1, 0, "c"), t0 + Duration::from_millis(1500));
        assert!(!f.progressing(Duration::from_secs(1), t0 + Duration::from_secs(2)));
        f.sweep(t0 + Duration::from_millis(3500));
        let n = f.counts();
        assert_eq!((n.known, n.finished, n.failed, n.vanished), (3, 1, 1, 1));
        assert_eq!(f.rows()[1].state, RxState::Failed(ErrorCode::Incomplete));
        assert_eq!(f.rows()[2].state, RxState::Vanished);
        // A restart on the same machine (new port, new token) takes over
        // its vanished row.
        let c2: SocketAddr = "10.0.0.3:4999".parse().unwrap();
        f.report(c2, 33, &report(1, 0, "c"), t0 + Duration::from_secs(4));
        assert_eq!(f.counts().known, 3);
        assert_eq!(f.rows()[2].state, RxState::Receiving);
        f.fail(c2, 33, ErrorCode::TooSlow);
        assert!(f.is_dropped(c2, 33));
        f.report(c2, 33, &report(1, 0, "c"), t0 + Duration::from_secs(5));
        assert_eq!(f.rows()[2].state, RxState::Failed(ErrorCode::TooSlow));
    }

    #[test]
    fn reports_forged_in_a_receivers_name_without_its_token_change_nothing_of_it() {
        let mut f = Fleet::new(Duration::from_secs(60), 100);
        let t0 = Instant::now();
        let a: SocketAddr = "10.0.0.1:4000".parse().unwrap();
        f.report(a, 77, &report(1, 0, "a"), t0);
        // Same address, port and name, another token: "finished", then a
        // row the sender judges too slow.
        for token in [0, 78, u64::MAX] {
            f.report(a, token, &report(2, 0, "a"), t0);
        }
        f.report(a, 79, &report(1, 0, "a"), t0);
        f.fail(a, 79, ErrorCode::TooSlow);
        assert_eq!(f.get(a, 77).unwrap().state, RxState::Receiving);
        assert!(
            !f.is_dropped(a, 77),
            "the genuine receiver's requests are served"
        );
        assert!(f.is_dropped(a, 79));
        let n = f.counts();
        // The forged reports share one row (each took over the one before
        // once it was settled); it keeps the sender waiting, nothing more.
        assert_eq!((n.known, n.receiving, n.finished, n.failed), (2, 1, 0, 1));
        // A forged report cannot take over the genuine row while it is
        // receiving; the genuine row's own reports still move it.
        f.report(a, 77, &report(2, 0, "a"), t0 + Duration::from_secs(1));
        assert_eq!(f.get(a, 77).unwrap().state, RxState::Finished);
    }

    #[test]
    fn counts_whom_a_repair_round_would_serve_much() {
        let mut f = Fleet::new(Duration::from_secs(60), 1000);
        let t0 = Instant::now();
        let rx = |i: u8| SocketAddr::from(([10, 0, 0, i], 4000));
        let at = |blocks_done, flags| Report {
            blocks_done,
            flags,
            ..report(1, 0, "r")
        };
        // Lacking 5 % and more, lacking less, finished, failed.
        f.report(rx(1), 1, &at(950, 0), t0);
        f.report(rx(2), 2, &at(951, 0), t0);
        f.report(rx(3), 3, &at(0, 0), t0);
        f.report(
            rx(4),
            4,
            &Report {
                state: 2,
                ..at(1000, 0)
            },
            t0,
        );
        f.report(
            rx(5),
            5,
            &Report {
                state: 3,
                ..at(10, 0)
            },
            t0,
        );
        // Deaf: everything over HTTP, lacking much but no multicast
        // repair serves it.
        let deaf = wire::REPORT_HTTP | wire::REPORT_HTTP_ONLY;
        f.report(rx(6), 6, &at(100, deaf), t0);
        // Some bytes from the web server, lacking much: it hears the group.
        f.report(rx(7), 7, &at(500, wire::REPORT_HTTP), t0);
        let c = f.counts();
        assert_eq!((c.hearing, c.lacking), (5, 3), "{c:?}");
        let via: Vec<&str> = f.rows().iter().map(|r| r.via.name()).collect();
        assert_eq!(via[5..], ["http", "multicast+http"]);
        // A deaf receiver that then hears multicast took both; a receiver
        // that took both stays so.
        f.report(rx(6), 6, &at(200, wire::REPORT_HTTP), t0);
        f.report(rx(7), 7, &at(600, deaf), t0);
        assert_eq!(f.get(rx(6), 6).unwrap().via, Via::Both);
        assert_eq!(f.get(rx(7), 7).unwrap().via, Via::Both);
        assert_eq!(f.counts().lacking, 4);
    }
}
