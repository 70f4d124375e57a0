//! The sender's back-channel: one thread on the unicast repair socket takes
//! every receiver's NACKs (block ranges), parity requests (symbols lacking
//! per FEC group) and progress reports, and answers parity requests at once
//! with a confirmation multicast to the group (like PGM's NCF) so that
//! receivers whose need is covered stay quiet.
//!
//! The sending thread asks it, at the end of each repair window, for the
//! round's plan: the merged block ranges and, per group, the largest symbol
//! count confirmed ([`Backchannel::take`]).

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::Socket;

use crate::error::{Error, ErrorCode, Result};
use crate::proto::fec;
use crate::proto::wire::{self, ConfirmHeader, Geometry, Packet};
use crate::send::fleet::{Fleet, FleetCounts, RxInfo, RxState};

/// Copies of each confirmation multicast.
const CONFIRM_REPEAT: usize = 2;
/// How long the listener blocks in `recv` before looking at its stop flag.
const POLL: Duration = Duration::from_millis(50);
/// Repair rounds after the last full pass before a receiver still further
/// behind than `max_behind` is told it is too slow: a receiver that only
/// lost much of the pass (a busy moment, a late start) catches up in the
/// first rounds; one whose disk cannot keep up does not.
pub const SLOW_ROUNDS: u32 = 3;
/// Requests (NACK and parity) taken from one address per repair window: a
/// receiver sends at most 64 of each kind (6400 entries); more come from a
/// flood, which NACKs cannot be authenticated against.
pub const REQUESTS_PER_SOURCE: u32 = 128;
/// NACKed ranges collected before they are first merged.
const MERGE_AT: usize = 1 << 16;

/// What the back-channel needs to know about the session.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Session id.
    pub session: u32,
    /// Image geometry.
    pub geometry: Geometry,
    /// Blocks per FEC group for parity requests (0: none taken).
    pub group_size: u32,
    /// Silence after which a receiver that has not finished is vanished.
    pub vanish_after: Duration,
    /// Share of the image (0..=1) a receiver may still miss after
    /// [`SLOW_ROUNDS`] repair rounds before it is told it is too slow.
    pub max_behind: f64,
    /// A signed session's key and manifest: "too slow" verdicts are signed
    /// (a signed session's receivers take no other).
    pub signer: Option<(ed25519_dalek::SigningKey, crate::proto::manifest::Manifest)>,
}

/// A repair round's work.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Blocks to send again, `[first, end)`, merged.
    pub ranges: Vec<(u64, u64)>,
    /// Fresh symbols to send per group, `(group, count)`; groups whose
    /// blocks are all in `ranges` are left out.
    pub parity: Vec<(u64, u32)>,
}

impl Plan {
    /// Nothing to send.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty() && self.parity.is_empty()
    }
}

/// Counts of what came in over the back-channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Inbound {
    /// Block-range NACK packets.
    pub nacks: u64,
    /// Parity request packets.
    pub parity_requests: u64,
    /// Progress reports.
    pub reports: u64,
    /// Confirmations multicast.
    pub confirms: u64,
    /// Datagrams ignored: malformed, of another session or geometry,
    /// outside the image, or requests over [`REQUESTS_PER_SOURCE`] from one
    /// address in one window.
    pub ignored: u64,
}

#[derive(Debug)]
struct Inbox {
    ranges: Vec<(u64, u64)>,
    /// Length of `ranges` at which it is merged.
    merge_at: usize,
    parity: HashMap<u64, u32>,
    round: u64,
    rounds_done: u32,
    fleet: Fleet,
    counts: Inbound,
    per_source: HashMap<std::net::IpAddr, u32>,
    /// Groups whose symbols the round taken last is sending, until the
    /// next window opens: a request for one of them was made before its
    /// sender had all of them and is stale (see [`Inbox::add_parity`]).
    in_flight: HashSet<u64>,
}

/// The back-channel thread and what it collected.
pub struct Backchannel {
    inbox: Arc<Mutex<Inbox>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

/// Extra symbols confirmed above a request for `need`, when `known`
/// receivers report: none for a single receiver, else about as many
/// standard deviations of a binomial loss count (`sqrt(need)`) as the
/// largest of `known` normal draws lies above their mean
/// (`0.7 * sqrt(2 ln known)`: 0.8 for 2 receivers, 1.8 for 24, 2.3 for
/// 200), so that the first request of a round covers about the worst
/// receiver's need and the others stay quiet. (Simulated and measured with
/// 24 receivers losing 5% each over 1024-block groups: 5 requests instead
/// of 10 for 6% more repair packets; docs/reliability.md.)
fn margin(need: u32, known: u64) -> u32 {
    if known <= 1 {
        return 0;
    }
    let spread = 0.7 * (2.0 * (known as f64).ln()).sqrt();
    (spread * f64::from(need).sqrt()).ceil() as u32
}

/// Sort and merge overlapping or touching ranges.
pub fn merge(mut r: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    r.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(r.len());
    for (a, b) in r {
        match out.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

impl Inbox {
    /// Raise the counts of the groups in `needs`; returns the raised ones.
    fn add_parity(&mut self, p: &Policy, needs: wire::Ranges<'_>) -> Vec<(u64, u32)> {
        let known = self.fleet.counts().known;
        let mut raised = Vec::new();
        // A group being sent: the receiver counted only the symbols of the
        // round that had reached it, and the rest are on their way. Left
        // out, not carried into the next round (which would resend what
        // the end of this one supplies); a receiver still short after the
        // round's end asks again then.
        for (group, need) in needs.iter().filter(|(g, _)| !self.in_flight.contains(g)) {
            let (first, end) = fec::group_blocks(&p.geometry, p.group_size, group);
            let count = (need + margin(need, known)).min((end - first) as u32);
            let e = self.parity.entry(group).or_default();
            if count > *e {
                *e = count;
                raised.push((group, count));
            }
        }
        raised
    }

    fn take(&mut self, p: &Policy) -> Plan {
        let ranges = merge(std::mem::take(&mut self.ranges));
        self.merge_at = MERGE_AT;
        let mut parity: Vec<(u64, u32)> = self
            .parity
            .drain()
            .filter(|&(group, _)| {
                let (first, end) = fec::group_blocks(&p.geometry, p.group_size, group);
                !ranges.iter().any(|&(a, b)| a <= first && end <= b)
            })
            .collect();
        parity.sort_unstable();
        self.in_flight = parity.iter().map(|&(g, _)| g).collect();
        Plan { ranges, parity }
    }
}

struct Listener {
    sock: UdpSocket,
    ncf: Socket,
    policy: Policy,
    inbox: Arc<Mutex<Inbox>>,
    stop: Arc<AtomicBool>,
}

impl Listener {
    fn run(self) {
        let mut buf = vec![0u8; 2048];
        let _ = self.sock.set_read_timeout(Some(POLL));
        while !self.stop.load(Ordering::Acquire) {
            let Ok((n, from)) = self.sock.recv_from(&mut buf) else {
                lock(&self.inbox).fleet.sweep(Instant::now());
                continue;
            };
            if let Err(e) = self.handle(&buf[..n], from) {
                log::warn!("back-channel: {e}");
            }
        }
    }

    fn handle(&self, pkt: &[u8], from: SocketAddr) -> std::io::Result<()> {
        let p = &self.policy;
        let mut inbox = lock(&self.inbox);
        let parsed = match wire::parse(pkt) {
            Ok(x) if x.session() == p.session && x.geometry() == p.geometry => x,
            _ => {
                inbox.counts.ignored += 1;
                return Ok(());
            }
        };
        if matches!(parsed, Packet::Nack { .. } | Packet::ParityRequest { .. }) {
            let seen = inbox.per_source.entry(from.ip()).or_default();
            *seen += 1;
            if *seen > REQUESTS_PER_SOURCE {
                inbox.counts.ignored += 1;
                return Ok(());
            }
        }
        match parsed {
            Packet::Nack { ranges, .. } if !inbox.fleet.is_dropped(from) => {
                inbox.counts.nacks += 1;
                inbox
                    .ranges
                    .extend(ranges.iter().map(|(a, c)| (a, a + u64::from(c))));
                // Spoofed sources escape the per-address limit: merge as
                // the list grows, so that it stays within twice the
                // distinct ranges asked for (bounded by the image).
                if inbox.ranges.len() >= inbox.merge_at {
                    let merged = merge(std::mem::take(&mut inbox.ranges));
                    inbox.merge_at = (2 * merged.len()).max(MERGE_AT);
                    inbox.ranges = merged;
                }
            }
            Packet::ParityRequest {
                group_size, needs, ..
            } if group_size == p.group_size && !inbox.fleet.is_dropped(from) => {
                inbox.counts.parity_requests += 1;
                let raised = inbox.add_parity(p, needs);
                if !raised.is_empty() {
                    let h = ConfirmHeader {
                        round: inbox.round,
                        group_size: p.group_size,
                        receivers: inbox.fleet.counts().known as u32,
                        flags: 0,
                    };
                    inbox.counts.confirms += 1;
                    drop(inbox);
                    for chunk in raised.chunks(wire::MAX_PARITY_ENTRIES) {
                        let pkt = wire::encode_confirm(p.session, &p.geometry, &h, chunk);
                        // Twice, as control packets are repeated: a
                        // receiver that loses the only copy (5% loss: one
                        // in twenty of them) asks although it is covered.
                        for _ in 0..CONFIRM_REPEAT {
                            self.ncf.send(&pkt)?;
                        }
                    }
                }
            }
            Packet::Progress { report, .. } => {
                inbox.counts.reports += 1;
                let now = Instant::now();
                inbox.fleet.report(from, &report, now);
                inbox.fleet.sweep(now);
                let name = report.name();
                let behind = p.geometry.block_count - report.blocks_done;
                let too_far = behind as f64 > p.max_behind * p.geometry.block_count as f64;
                let row = inbox.fleet.get(from, &name).map(|r| r.state);
                let verdict = match row {
                    Some(RxState::Failed(ErrorCode::TooSlow)) => true,
                    Some(RxState::Receiving) if inbox.rounds_done >= SLOW_ROUNDS && too_far => {
                        log::warn!(
                            "receiver {name} at {from} misses {behind} of {} blocks after {} repair rounds: too slow",
                            p.geometry.block_count,
                            inbox.rounds_done
                        );
                        inbox.fleet.fail(from, &name, ErrorCode::TooSlow);
                        true
                    }
                    _ => false,
                };
                let round = inbox.round;
                drop(inbox);
                if verdict {
                    let h = ConfirmHeader {
                        round,
                        group_size: p.group_size.max(1),
                        receivers: 0,
                        flags: wire::CONFIRM_TOO_SLOW,
                    };
                    // Signed, bound to this receiver's port and name: no
                    // one else can end a signed receiver this way.
                    let pkt = match &p.signer {
                        Some((key, m)) => {
                            let ppm = (p.max_behind * 1e6) as u32;
                            let proof = m.sign_verdict(key, round, from.port(), ppm, &report.name);
                            wire::encode_verdict(p.session, &p.geometry, &h, &proof)
                        }
                        None => wire::encode_confirm(p.session, &p.geometry, &h, &[]),
                    };
                    self.sock.send_to(&pkt, from)?;
                }
            }
            _ => inbox.counts.ignored += 1,
        }
        Ok(())
    }
}

fn lock(m: &Mutex<Inbox>) -> MutexGuard<'_, Inbox> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Backchannel {
    /// Start the thread on `sock` (the repair socket); confirmations go out
    /// on `ncf` (a socket connected to the group).
    pub fn start(sock: UdpSocket, ncf: Socket, policy: Policy) -> Result<Backchannel> {
        let inbox = Arc::new(Mutex::new(Inbox {
            ranges: Vec::new(),
            merge_at: MERGE_AT,
            parity: HashMap::new(),
            round: 0,
            rounds_done: 0,
            fleet: Fleet::new(policy.vanish_after),
            counts: Inbound::default(),
            per_source: HashMap::new(),
            in_flight: HashSet::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let l = Listener {
            sock,
            ncf,
            policy,
            inbox: inbox.clone(),
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
            inbox,
            stop,
            handle: Some(handle),
        })
    }

    /// The window of `round` opens (confirmations carry it), after
    /// `rounds_done` repair rounds.
    pub fn set_round(&self, round: u64, rounds_done: u32) {
        let mut i = lock(&self.inbox);
        i.round = round;
        i.rounds_done = rounds_done;
        i.in_flight.clear();
        i.per_source.clear();
    }

    /// Whether a receiver still receiving wrote more blocks within `within`.
    pub fn progressing(&self, within: Duration) -> bool {
        lock(&self.inbox).fleet.progressing(within, Instant::now())
    }

    /// Everything asked for since the last call.
    pub fn take(&self, policy: &Policy) -> Plan {
        lock(&self.inbox).take(policy)
    }

    /// Receivers per state (after marking the silent ones vanished).
    pub fn fleet(&self) -> FleetCounts {
        let mut i = lock(&self.inbox);
        i.fleet.sweep(Instant::now());
        i.fleet.counts()
    }

    /// Every receiver's row.
    pub fn rows(&self) -> Vec<RxInfo> {
        let mut i = lock(&self.inbox);
        i.fleet.sweep(Instant::now());
        i.fleet.rows().to_vec()
    }

    /// What came in so far.
    pub fn inbound(&self) -> Inbound {
        lock(&self.inbox).counts
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

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            session: 1,
            geometry: Geometry::new(1400 * 1000, 1400),
            group_size: 256,
            vanish_after: Duration::from_secs(5),
            max_behind: 0.5,
            signer: None,
        }
    }

    fn inbox() -> Inbox {
        Inbox {
            ranges: Vec::new(),
            merge_at: MERGE_AT,
            parity: HashMap::new(),
            round: 0,
            rounds_done: 0,
            fleet: Fleet::new(Duration::from_secs(5)),
            counts: Inbound::default(),
            per_source: HashMap::new(),
            in_flight: HashSet::new(),
        }
    }

    fn entries(e: &[(u64, u32)]) -> Vec<u8> {
        wire::encode_parity_requests(1, &policy().geometry, 256, e).remove(0)
    }

    fn needs(pkt: &[u8]) -> wire::Ranges<'_> {
        match wire::parse(pkt).unwrap() {
            Packet::ParityRequest { needs, .. } => needs,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn merges_ranges() {
        assert_eq!(
            merge(vec![(5, 7), (0, 2), (2, 3), (6, 9), (20, 21)]),
            vec![(0, 3), (5, 9), (20, 21)]
        );
        assert!(merge(vec![]).is_empty());
    }

    #[test]
    fn margin_grows_with_the_group() {
        assert_eq!(margin(16, 1), 0);
        assert_eq!(margin(16, 2), 4);
        assert_eq!(margin(16, 24), 8);
        assert_eq!(margin(16, 200), 10);
    }

    #[test]
    fn largest_count_wins_and_ranges_cover_groups() {
        let p = policy();
        let mut i = inbox();
        let a = entries(&[(0, 3), (1, 5), (3, 2)]);
        assert_eq!(i.add_parity(&p, needs(&a)), vec![(0, 3), (1, 5), (3, 2)]);
        let b = entries(&[(0, 2), (1, 7)]);
        assert_eq!(
            i.add_parity(&p, needs(&b)),
            vec![(1, 7)],
            "only raised counts"
        );
        // The last group is 1000 - 768 = 232 blocks: counts are capped there.
        let c = entries(&[(3, 240)]);
        assert_eq!(i.add_parity(&p, needs(&c)), vec![(3, 232)]);
        i.ranges.push((256, 512));
        let plan = i.take(&p);
        assert_eq!(plan.ranges, vec![(256, 512)]);
        assert_eq!(
            plan.parity,
            vec![(0, 3), (3, 232)],
            "group 1 is resent whole"
        );
        assert!(i.take(&p).is_empty());
    }

    #[test]
    fn requests_for_groups_being_sent_wait_for_the_next_window() {
        let p = policy();
        let mut i = inbox();
        i.add_parity(&p, needs(&entries(&[(0, 3), (1, 5)])));
        assert_eq!(i.take(&p).parity, vec![(0, 3), (1, 5)]);
        // While round 0 is sent: group 1 is on its way, group 2 is new.
        let late = entries(&[(1, 2), (2, 4)]);
        assert_eq!(i.add_parity(&p, needs(&late)), vec![(2, 4)]);
        assert_eq!(i.take(&p).parity, vec![(2, 4)]);
        i.in_flight.clear();
        assert_eq!(i.add_parity(&p, needs(&late)), vec![(1, 2), (2, 4)]);
    }
}
