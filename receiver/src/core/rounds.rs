//! The sender's side of repair: what comes in over the back-channel
//! (NACKs, parity requests, progress reports) and what goes out in answer
//! (confirmations, "too slow" verdicts), each repair window's timing, and
//! each round's plan within the repair budget.
//!
//! - [`Rounds`]: takes requests and reports ([`Rounds::handle`]), answers
//!   parity requests at once with a confirmation for the whole group (like
//!   PGM's NCF) so that receivers whose need is covered stay quiet, and
//!   hands the round's plan over at the end of the window ([`Rounds::take`]);
//! - [`Window`]: a repair window's reminders (the end packet again at a
//!   quarter and at half of it) and its close;
//! - [`Schedule`]: after each window, whether to send a round (clipped to
//!   the budget), wait another window, or stop.
//!
//! Requests and reports are not authenticated: every limit here holds
//! against forged ones (per-address request limits, merged ranges, the
//! repair budget with a floor taken in turn, a bounded receiver table; see
//! docs/security.md).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::core::fleet::{Fleet, FleetCounts, RxState, Via};
use crate::error::ErrorCode;
use crate::proto::fec;
use crate::proto::wire::{self, ConfirmHeader, Geometry, Packet};

/// Copies of each confirmation multicast: they are tiny, and a receiver
/// that loses every copy asks although it is covered.
pub const CONFIRM_REPEAT: usize = 3;
/// Repair rounds after the last full pass before a receiver still further
/// behind than `max_behind` is told it is too slow: a receiver that only
/// lost much of the pass (a busy moment, a late start) catches up in the
/// first rounds; one whose disk cannot keep up does not.
pub const SLOW_ROUNDS: u32 = 3;
/// Requests (NACK and parity) taken from one receiver (address, port and
/// token) per repair window: a receiver sends at most 64 of each kind (6400
/// entries); more come from a flood, which NACKs cannot be authenticated
/// against. Keyed by the token too, so that a flood forged with a
/// receiver's address cannot spend that receiver's allowance.
pub const REQUESTS_PER_SOURCE: u32 = 128;
/// Receivers counted against [`REQUESTS_PER_SOURCE`] per window: beyond
/// this many (a flood of made-up tokens) requests are taken unlimited (the
/// merged ranges and the parity map stay bounded by the image either way).
const MAX_SOURCES: usize = 1 << 14;
/// The margin of a request raising a count confirmed already in the
/// window is that of the worst of this many receivers.
const TAIL_KNOWN: u64 = 2;
/// A request raising a group's count to more than this many times what
/// the window's first request for it asked (a receiver far lossier than
/// the one drawn first) is served after the bulk's share of every group.
const BULK_SPREAD: u32 = 2;
/// NACKed ranges collected before they are first merged.
const MERGE_AT: usize = 1 << 16;
/// NACK windows in a row that must pass without a request before the final end.
pub const QUIET_WINDOWS: u32 = 2;
/// Windows in a row that reports of progress may keep from counting as
/// quiet: reports are not authenticated, and forged ones must not keep
/// the sender from ever ending.
pub const PROGRESS_HOLD: u32 = 20;
/// Once the repair budget is spent (a flood of forged requests can spend
/// it), each repair round may still send this share of the image: 1/32, so
/// the requested blocks are all served again within 32 rounds and a flood
/// costs at most `max_repair_rounds / 32` images more.
pub const REPAIR_FLOOR_DIVISOR: u64 = 32;

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
    /// Per group, sorted, the symbols the bulk of the receivers asked for
    /// (see [`Plan::symbol_runs`]); the rest is for a few that lack far
    /// more. A group not listed is all bulk.
    pub bulk: Vec<(u64, u32)>,
}

impl Plan {
    /// The order in which to send the parity symbols, as `(group, first,
    /// count)` runs (`first` counting from the group's first fresh symbol
    /// of the round), in layers: the bulk's share of every group, then as
    /// many again of every group, then twice as many, and so on. A
    /// receiver of the bulk thus has what it needs after the bulk's share
    /// of the last group, and one a few symbols short soon after, not
    /// after the symbols of a few much lossier receivers in every group
    /// before it. (A layer costs one more encoding of the group, and there
    /// are about log2(count / bulk) of them.)
    pub fn symbol_runs(&self) -> Vec<(u64, u32, u32)> {
        let bulk = |g: u64, n: u32| match self.bulk.binary_search_by_key(&g, |&(g, _)| g) {
            Ok(i) => self.bulk[i].1.clamp(1, n),
            Err(_) => n,
        };
        let mut out = Vec::new();
        let mut from: Vec<(u64, u32, u32, u32)> = self
            .parity
            .iter()
            .map(|&(g, n)| (g, 0, bulk(g, n), n))
            .collect();
        while !from.is_empty() {
            for (g, lo, size, n) in &mut from {
                let hi = (*lo + *size).min(*n);
                out.push((*g, *lo, hi - *lo));
                *lo = hi;
                *size *= 2;
            }
            from.retain(|&(_, lo, _, n)| lo < n);
        }
        out
    }

    /// Nothing to send.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty() && self.parity.is_empty()
    }

    /// Blocks and symbols the plan sends.
    pub fn len(&self) -> u64 {
        let blocks: u64 = self.ranges.iter().map(|(a, b)| b - a).sum();
        blocks + self.parity.iter().map(|&(_, n)| u64::from(n)).sum::<u64>()
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

/// A packet [`Rounds::handle`] wants sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// To the whole group (a confirmation).
    Group(Vec<u8>),
    /// To one receiver, from the repair socket (a "too slow" verdict).
    To(SocketAddr, Vec<u8>),
}

/// Extra symbols confirmed above a request for `need`, when `known`
/// receivers report: none for a single receiver, else about as many
/// standard deviations of a binomial loss count (`sqrt(need)`) as the
/// largest of `known` normal draws lies above their mean
/// (`sqrt(2 ln known)`: 1.2 for 2 receivers, 2.5 for 24, 3.3 for 200, 3.7
/// for 1000), so that the first request of a round, from a receiver the
/// backoff drew at random, covers about the worst receiver's need and the
/// others stay quiet. (The factor was 0.7 until `cargo xtask fleet-sim`
/// showed 4.8 requests a round at 1000 receivers against 2.5 with 1.0,
/// for 0.5 % more packets; docs/reliability.md.)
pub fn margin(need: u32, known: u64) -> u32 {
    if known <= 1 {
        return 0;
    }
    let spread = (2.0 * (known as f64).ln()).sqrt();
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

/// The sender's back-channel state: requests of the open window, the
/// receivers' table, and the counts.
#[derive(Debug)]
pub struct Rounds {
    policy: Policy,
    ranges: Vec<(u64, u64)>,
    /// Length of `ranges` at which it is merged.
    merge_at: usize,
    parity: HashMap<u64, u32>,
    /// Per group, the count of the window's first request, raised by later
    /// ones within [`BULK_SPREAD`] times it: what the bulk of the
    /// receivers needs.
    bulk: HashMap<u64, u32>,
    round: u64,
    rounds_done: u32,
    fleet: Fleet,
    counts: Inbound,
    per_source: HashMap<(SocketAddr, u64), u32>,
    /// Groups whose symbols the round taken last is sending, until the
    /// next window opens: a request for one of them was made before its
    /// sender had all of them and is stale (see [`Rounds::add_parity`]).
    in_flight: HashSet<u64>,
}

impl Rounds {
    /// No request yet, no receiver known.
    pub fn new(policy: Policy) -> Rounds {
        Rounds {
            fleet: Fleet::new(policy.vanish_after, policy.geometry.block_count),
            policy,
            ranges: Vec::new(),
            merge_at: MERGE_AT,
            parity: HashMap::new(),
            bulk: HashMap::new(),
            round: 0,
            rounds_done: 0,
            counts: Inbound::default(),
            per_source: HashMap::new(),
            in_flight: HashSet::new(),
        }
    }

    /// The session's policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Raise the counts of the groups in `needs`; returns the raised ones.
    fn add_parity(&mut self, needs: wire::Ranges<'_>) -> Vec<(u64, u32)> {
        let p = &self.policy;
        let known = self.fleet.counts().known;
        let mut raised = Vec::new();
        // A group being sent: the receiver counted only the symbols of the
        // round that had reached it, and the rest are on their way. Left
        // out, not carried into the next round (which would resend what
        // the end of this one supplies); a receiver still short after the
        // round's end asks again then.
        for (group, need) in needs.iter().filter(|(g, _)| !self.in_flight.contains(g)) {
            let (first, end) = fec::group_blocks(&p.geometry, p.group_size, group);
            let e = self.parity.entry(group).or_default();
            // The first request of a window for a group comes from a
            // receiver drawn at random (the backoff): the margin lifts it
            // to about the worst of `known`. A later one that is still
            // above comes from the tail already.
            let tail = if *e == 0 {
                known
            } else {
                known.min(TAIL_KNOWN)
            };
            let count = (need + margin(need, tail)).min((end - first) as u32);
            let bulk = self.bulk.entry(group).or_default();
            if *bulk == 0 || count <= BULK_SPREAD * *bulk {
                *bulk = (*bulk).max(count);
            }
            if count > *e {
                *e = count;
                raised.push((group, count));
            }
        }
        raised
    }

    /// A confirmation of the `raised` counts for the whole group (nothing
    /// when none was raised), [`CONFIRM_REPEAT`] times.
    fn confirm(&mut self, raised: Vec<(u64, u32)>) -> Vec<Transmit> {
        if raised.is_empty() {
            return Vec::new();
        }
        self.counts.confirms += 1;
        let p = &self.policy;
        let h = ConfirmHeader {
            round: self.round,
            group_size: p.group_size,
            receivers: self.fleet.counts().known as u32,
            flags: 0,
        };
        let mut out = Vec::new();
        for chunk in raised.chunks(wire::MAX_PARITY_ENTRIES) {
            let pkt = wire::encode_confirm(p.session, &p.geometry, &h, chunk);
            out.extend((0..CONFIRM_REPEAT).map(|_| Transmit::Group(pkt.clone())));
        }
        out
    }

    /// Everything asked for since the last call: the round's plan.
    pub fn take(&mut self) -> Plan {
        let p = &self.policy;
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
        let asked = std::mem::take(&mut self.bulk);
        let bulk = parity
            .iter()
            .filter_map(|&(g, n)| asked.get(&g).filter(|&&b| b < n).map(|&b| (g, b)))
            .collect();
        Plan {
            ranges,
            parity,
            bulk,
        }
    }

    /// The window of `round` opens (confirmations carry it), after
    /// `rounds_done` repair rounds.
    pub fn open_window(&mut self, round: u64, rounds_done: u32) {
        self.round = round;
        self.rounds_done = rounds_done;
        self.in_flight.clear();
        self.per_source.clear();
    }

    /// Take in one datagram from `from` at `now`; returns what to send in
    /// answer.
    pub fn handle(&mut self, pkt: &[u8], from: SocketAddr, now: Instant) -> Vec<Transmit> {
        let p = &self.policy;
        let parsed = match wire::parse(pkt) {
            Ok(x) if x.session() == p.session && x.geometry() == p.geometry => x,
            _ => {
                self.counts.ignored += 1;
                return Vec::new();
            }
        };
        if let Packet::Nack { token, .. } | Packet::ParityRequest { token, .. } = parsed {
            let key = (from, token);
            if self.per_source.len() < MAX_SOURCES || self.per_source.contains_key(&key) {
                let seen = self.per_source.entry(key).or_default();
                *seen += 1;
                if *seen > REQUESTS_PER_SOURCE {
                    self.counts.ignored += 1;
                    return Vec::new();
                }
            }
        }
        match parsed {
            Packet::Nack { ranges, token, .. } if !self.fleet.is_dropped(from, token) => {
                self.counts.nacks += 1;
                self.ranges
                    .extend(ranges.iter().map(|(a, c)| (a, a + u64::from(c))));
                // Spoofed sources escape the per-address limit: merge as
                // the list grows, so that it stays within twice the
                // distinct ranges asked for (bounded by the image).
                if self.ranges.len() >= self.merge_at {
                    let merged = merge(std::mem::take(&mut self.ranges));
                    self.merge_at = (2 * merged.len()).max(MERGE_AT);
                    self.ranges = merged;
                }
                Vec::new()
            }
            Packet::ParityRequest {
                group_size,
                needs,
                token,
                ..
            } if group_size == p.group_size && !self.fleet.is_dropped(from, token) => {
                self.counts.parity_requests += 1;
                let raised = self.add_parity(needs);
                self.confirm(raised)
            }
            Packet::Progress { report, token, .. } => {
                self.counts.reports += 1;
                self.report(from, token, &report, now)
            }
            _ => {
                self.counts.ignored += 1;
                Vec::new()
            }
        }
    }

    /// A progress report: the receiver's row, and a "too slow" verdict
    /// when it is still too far behind after [`SLOW_ROUNDS`] rounds and
    /// not fetching from a web server.
    fn report(
        &mut self,
        from: SocketAddr,
        token: u64,
        report: &wire::Report,
        now: Instant,
    ) -> Vec<Transmit> {
        let p = &self.policy;
        self.fleet.report(from, token, report, now);
        self.fleet.sweep(now);
        let name = report.name();
        let behind = p.geometry.block_count - report.blocks_done;
        let too_far = behind as f64 > p.max_behind * p.geometry.block_count as f64;
        let row = self
            .fleet
            .get(from, token)
            .map(|r| (r.state, r.via != Via::Multicast));
        let verdict = match row {
            Some((RxState::Failed(ErrorCode::TooSlow), _)) => true,
            // A receiver fetching from a web server (`receive --http`)
            // asks the rounds for nothing: however far behind, it is not
            // told to stop (that would end a fetch that is going well).
            Some((RxState::Receiving, false)) if self.rounds_done >= SLOW_ROUNDS && too_far => {
                log::warn!(
                    "receiver {name} at {from} misses {behind} of {} blocks after {} repair rounds: too slow",
                    p.geometry.block_count,
                    self.rounds_done
                );
                self.fleet.fail(from, token, ErrorCode::TooSlow);
                true
            }
            _ => false,
        };
        if !verdict {
            return Vec::new();
        }
        let h = ConfirmHeader {
            round: self.round,
            group_size: p.group_size.max(1),
            receivers: 0,
            flags: wire::CONFIRM_TOO_SLOW,
        };
        // Signed, bound to this receiver's port and name: no one else can
        // end a signed receiver this way.
        let pkt = match &p.signer {
            Some((key, m)) => {
                let ppm = (p.max_behind * 1e6) as u32;
                let proof = m.sign_verdict(key, self.round, from.port(), ppm, &report.name);
                wire::encode_verdict(p.session, &p.geometry, &h, &proof)
            }
            None => wire::encode_confirm(p.session, &p.geometry, &h, &[]),
        };
        vec![Transmit::To(from, pkt)]
    }

    /// Mark receivers silent for too long as vanished.
    pub fn sweep(&mut self, now: Instant) {
        self.fleet.sweep(now);
    }

    /// Receivers per state (after marking the silent ones vanished).
    pub fn fleet(&mut self, now: Instant) -> FleetCounts {
        self.fleet.sweep(now);
        self.fleet.counts()
    }

    /// The receivers' table.
    pub fn table(&self) -> &Fleet {
        &self.fleet
    }

    /// Whether a receiver still receiving wrote more blocks within `within`.
    pub fn progressing(&self, within: Duration, now: Instant) -> bool {
        self.fleet.progressing(within, now)
    }

    /// What came in so far.
    pub fn inbound(&self) -> Inbound {
        self.counts
    }
}

/// What a repair window wants done at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowEvent {
    /// Nothing yet.
    Wait,
    /// Send the round's end packet again.
    Remind,
    /// The window is over: take the round's plan.
    Close,
}

/// One repair window: it opens with an end packet, repeats it at a
/// quarter and at half of its length (the copies sent right after a
/// burst of data are the ones a receiver's full ring drops, and a receiver
/// that misses every end of a round never asks), and closes.
#[derive(Debug, Clone)]
pub struct Window {
    opened: Instant,
    wait: Duration,
    /// Reminders still to send, as offsets from `opened`, last first.
    reminders: Vec<Duration>,
}

impl Window {
    /// A window of `wait` opened at `now`.
    pub fn new(now: Instant, wait: Duration) -> Window {
        Window {
            opened: now,
            wait,
            reminders: vec![wait / 2, wait / 4],
        }
    }

    /// The next time something is due.
    pub fn poll_timeout(&self) -> Instant {
        self.opened + self.reminders.last().copied().unwrap_or(self.wait)
    }

    /// What is due at `now` (one event per call).
    pub fn poll(&mut self, now: Instant) -> WindowEvent {
        let at = now.saturating_duration_since(self.opened);
        if self.reminders.last().is_some_and(|&r| at >= r) {
            self.reminders.pop();
            return WindowEvent::Remind;
        }
        if at >= self.wait {
            WindowEvent::Close
        } else {
            WindowEvent::Wait
        }
    }
}

/// What to do after a window closed.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Send this round (clipped to the budget).
    Repair(Plan),
    /// Open another window.
    Wait,
    /// No more rounds: send the final end.
    Stop,
}

/// What the receivers' table says when a window closes.
#[derive(Debug, Clone, Copy, Default)]
pub struct FleetView {
    /// Everyone the sender knows of is done (and at least as many as it
    /// waited for): no window to wait out.
    pub settled: bool,
    /// A receiver still receiving reported new blocks lately: it may be
    /// working through a backlog and ask at the end of the round.
    pub progressing: bool,
}

/// The repair rounds' schedule: the budget, the quiet windows, and the
/// rounds so far.
#[derive(Debug, Clone)]
pub struct Schedule {
    budget: u64,
    floor: u64,
    range_cursor: u64,
    group_cursor: u64,
    quiet: u32,
    held: u32,
    rounds: u32,
    max_rounds: u32,
    refused: u64,
}

impl Schedule {
    /// At most `max_rounds` rounds, sending at most `max_repair` images'
    /// worth of `block_count` blocks and symbols (then a floor a round).
    pub fn new(max_repair: f64, block_count: u64, max_rounds: u32) -> Schedule {
        let budget = (max_repair.max(0.0) * block_count as f64).ceil() as u64;
        // Blocks or symbols a round may send once the budget is spent
        // (none when --max-repair 0 asks for no repair at all).
        let floor = if budget > 0 {
            block_count.div_ceil(REPAIR_FLOOR_DIVISOR)
        } else {
            0
        };
        Schedule {
            budget,
            floor,
            range_cursor: 0,
            group_cursor: 0,
            quiet: 0,
            held: 0,
            rounds: 0,
            max_rounds,
            refused: 0,
        }
    }

    /// Whether another window opens: the sender stops after
    /// [`QUIET_WINDOWS`] windows in a row without a request, so that one
    /// lost NACK or one late receiver does not end the session for
    /// everyone.
    pub fn open(&self) -> bool {
        self.quiet < QUIET_WINDOWS && self.rounds < self.max_rounds
    }

    /// Repair rounds run.
    pub fn rounds(&self) -> u32 {
        self.rounds
    }

    /// Blocks and symbols asked for that the budget refused.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// A window closed with `plan` asked for: what next.
    pub fn close(&mut self, mut plan: Plan, fleet: FleetView) -> Next {
        if plan.is_empty() {
            // Reports are not authenticated (receivers hold no keys):
            // "everyone finished" ends the repair only after a whole
            // window in which no one asked, and a request always wins.
            if fleet.settled {
                return Next::Stop;
            }
            // Not quiet while a receiver is still writing blocks: it may be
            // working through a backlog (rebuilding groups) and ask once it
            // reaches the end of the round.
            if self.held < PROGRESS_HOLD && fleet.progressing {
                self.held += 1;
            } else {
                self.quiet += 1;
            }
            return if self.open() { Next::Wait } else { Next::Stop };
        }
        // Requests are not authenticated: once a flood has spent the
        // budget, each round still sends a floor (taken in turn over what
        // is asked, see `clip`), so that forged requests delay the others'
        // repairs but cannot starve them.
        let allowance = self.budget.max(self.floor);
        let mut cut = clip(&mut plan.ranges, allowance, &mut self.range_cursor);
        let resent: u64 = plan.ranges.iter().map(|(a, b)| b - a).sum();
        cut += clip_counts(&mut plan.parity, allowance - resent, &mut self.group_cursor);
        if cut > 0 {
            self.refused += cut;
            log::warn!("repair budget spent: {cut} blocks or symbols asked for are not sent");
        }
        if plan.is_empty() {
            return Next::Stop;
        }
        self.budget = self.budget.saturating_sub(plan.len());
        self.quiet = 0;
        self.held = 0;
        self.rounds += 1;
        Next::Repair(plan)
    }
}

/// Cut the symbol counts of `parity` to at most `budget` in total, taking
/// groups from `cursor` on (wrapping round) and moving `cursor` past the
/// last group served; returns the symbols cut.
fn clip_counts(parity: &mut Vec<(u64, u32)>, budget: u64, cursor: &mut u64) -> u64 {
    parity.sort_unstable_by_key(|&(g, _)| (g < *cursor, g));
    let mut left = budget;
    let mut cut = 0;
    parity.retain_mut(|(g, n)| {
        let take = u64::from(*n).min(left);
        cut += u64::from(*n) - take;
        left -= take;
        *n = take as u32;
        if take > 0 {
            *cursor = *g + 1;
        }
        take > 0
    });
    parity.sort_unstable();
    cut
}

/// Cut `ranges` (merged, in order) to at most `budget` blocks in total,
/// taking blocks from `cursor` on (wrapping round) and moving `cursor`
/// past the last block served; returns the blocks cut. The cursor makes
/// a flood of requests for some blocks unable to keep the budget from
/// the others: the next round starts where this one stopped.
fn clip(ranges: &mut Vec<(u64, u64)>, budget: u64, cursor: &mut u64) -> u64 {
    let at = *cursor;
    let mut order: Vec<(u64, u64)> = Vec::with_capacity(ranges.len() + 1);
    order.extend(
        ranges
            .iter()
            .filter(|r| r.1 > at)
            .map(|&(a, b)| (a.max(at), b)),
    );
    order.extend(
        ranges
            .iter()
            .filter(|r| r.0 < at)
            .map(|&(a, b)| (a, b.min(at))),
    );
    let mut left = budget;
    let mut cut = 0;
    order.retain_mut(|(a, b)| {
        let take = (*b - *a).min(left);
        cut += *b - *a - take;
        left -= take;
        *b = *a + take;
        if take > 0 {
            *cursor = *b;
        }
        take > 0
    });
    *ranges = merge(order);
    cut
}

#[cfg(test)]
mod tests;
