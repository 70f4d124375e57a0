//! The receiver's side of repair: what it lacks, when it asks and what it
//! leaves out.
//!
//! - [`needs`]: per FEC group, how many fresh symbols to ask for, or the
//!   block ranges of groups it has nothing of;
//! - [`Confirmed`]: the sender's confirmations of the current round, which
//!   may silence a request once, never starve it (anyone can send one);
//! - [`Requester`]: when to ask: a random backoff after each end of a pass
//!   or round (a truncated exponential over a window that grows with the
//!   group, as in NORM, RFC 5740), and again when a request brought nothing.
//!
//! Nothing here reads a clock: every call takes the time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::proto::fec;
use crate::proto::wire::{self, Geometry};
use crate::rng::XorShift;

/// Groups a sender's confirmations are remembered for (a flood of forged
/// confirmations does not grow the table without bound).
const MAX_CONFIRMED_GROUPS: usize = 1 << 16;
/// End packets of one round closer together than this are copies of one
/// send (the sender sends each control packet three times at once).
const BURST_GAP: Duration = Duration::from_millis(20);
/// Sends of a round's end after which its confirmations silence nothing:
/// the sender sends the end when the round's window opens and again at a
/// quarter and at half of it. A fourth send means a second window of the
/// same round has opened: the first was quiet, so no one asked and no
/// confirmation of that round was the sender's. Requests then go out in
/// that second window, before the sender, which stops after two quiet
/// windows in a row, gives up. A genuine confirmation is followed by the
/// round's repair and the next round's end instead, so it silences
/// requests until the repair came.
pub const SILENCE_ENDS: u32 = 4;
/// Backoff before a request, per doubling of the sender's group-size
/// estimate: the window grows with the group (20 ms for one receiver,
/// 120 ms for 24, 180 ms for 200).
pub const BACKOFF_UNIT: Duration = Duration::from_millis(20);
/// Longest backoff window (well inside the sender's 500 ms repair window).
pub const BACKOFF_MAX: Duration = Duration::from_millis(200);
/// A receiver that asked and got nothing new for this long asks again
/// (well inside the sender's 500 ms collection window).
pub const ASK_AGAIN: Duration = Duration::from_millis(250);

/// The sender's confirmations of the current repair round: symbols it
/// will send per FEC group (the largest count heard). Anyone can send one,
/// so a confirmation of a round silences this receiver's requests only
/// until the sender has sent the round's end [`SILENCE_ENDS`] times; then
/// the group is asked for whatever confirmations say. A forged "covered"
/// costs a round one repair window of delay, never its repair.
#[derive(Debug, Default)]
pub struct Confirmed {
    round: u64,
    group_size: u32,
    counts: HashMap<u64, u32>,
    /// Sends of the current round's end seen: the round, how many, when
    /// the last copy came.
    ends: Option<(u64, u32, Instant)>,
}

impl Confirmed {
    /// Take in a confirmation for `round`: a later round replaces what an
    /// earlier one said.
    pub fn confirm(&mut self, round: u64, group_size: u32, counts: wire::Ranges<'_>) {
        if round > self.round || group_size != self.group_size {
            self.round = round;
            self.group_size = group_size;
            self.counts.clear();
        } else if round < self.round {
            return;
        }
        for (group, n) in counts.iter() {
            if self.counts.len() >= MAX_CONFIRMED_GROUPS && !self.counts.contains_key(&group) {
                continue;
            }
            let e = self.counts.entry(group).or_default();
            *e = (*e).max(n);
        }
    }

    /// An end of round `round` (an end packet's pass) has come at `now`.
    pub fn end_seen(&mut self, round: u64, now: Instant) {
        self.ends = match self.ends {
            Some((r, n, last)) if r == round => {
                let n = if now.saturating_duration_since(last) >= BURST_GAP {
                    n + 1
                } else {
                    n
                };
                Some((r, n, now))
            }
            Some((r, ..)) if r > round => self.ends,
            _ => Some((round, 1, now)),
        };
    }

    /// Whether a request for `need` symbols of `group` (round `round`,
    /// groups of `group_size`) may stay unsent because the sender has
    /// confirmed as many, and has not yet sent the round's end
    /// [`SILENCE_ENDS`] times.
    pub fn silences(&self, round: u64, group_size: u32, group: u64, need: u32) -> bool {
        let ends = match self.ends {
            Some((r, n, _)) if r == round => n,
            _ => 0,
        };
        let covered = if self.round == round && self.group_size == group_size {
            self.counts.get(&group).copied().unwrap_or(0)
        } else {
            0
        };
        need <= covered && ends < SILENCE_ENDS
    }
}

/// What a receiver holds of the image, as [`needs`] reads it.
pub trait Holdings {
    /// Blocks lacking that it can take now, `[first, end)`, in order.
    fn missing(&self) -> Vec<(u64, u64)>;
    /// Blocks held in `[first, end)`.
    fn held(&self, first: u64, end: u64) -> u64;
    /// Repair symbols held for `group` (not decoded yet).
    fn symbols(&self, group: u64) -> u64;
    /// Whether `group` (its blocks ending before `end`) must be asked for
    /// as block ranges whatever it holds (a stream's window).
    fn as_ranges(&self, _group: u64, _end: u64) -> bool {
        false
    }
}

/// What a receiver should ask for: parity symbols for groups it partly
/// has, block ranges for groups it has nothing of.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// `(group, symbols lacking)`.
    pub parity: Vec<(u64, u32)>,
    /// `(first block, count)`.
    pub ranges: Vec<(u64, u32)>,
    /// Groups left out because the sender confirmed enough symbols (until
    /// a second window of the round opens, see [`Confirmed`]).
    pub silenced: usize,
}

impl Needs {
    /// Append `[a, b)` to the ranges, merged with the last one when they touch.
    pub fn push_range(&mut self, a: u64, b: u64) {
        match self.ranges.last_mut() {
            Some((first, n)) if *first + u64::from(*n) == a => *n += (b - a) as u32,
            _ => self.ranges.push((a, (b - a) as u32)),
        }
    }

    /// Symbols asked for in all.
    pub fn symbols(&self) -> u64 {
        self.parity.iter().map(|&(_, n)| u64::from(n)).sum()
    }
}

/// What to ask for with groups of `group_size` blocks, at most `max`
/// entries of each kind. A group with no block and no symbol (a late join,
/// a gap a resume left) is asked for as a block range: the data blocks
/// serve as well and need no decoding. For any other group the receiver
/// asks for as many fresh symbols as it lacks (blocks missing minus
/// symbols held, at least one), less what the sender has already confirmed
/// for this round (`round`).
pub fn needs(
    h: &impl Holdings,
    g: &Geometry,
    group_size: u32,
    round: u64,
    confirmed: &Confirmed,
    max: usize,
) -> Needs {
    let mut out = Needs::default();
    let mut last_group = None;
    for (s, e) in h.missing() {
        let mut b = s;
        while b < e {
            let group = b / u64::from(group_size);
            let (first, end) = fec::group_blocks(g, group_size, group);
            let (a, stop) = (b, end.min(e));
            b = stop;
            if h.as_ranges(group, end) {
                out.push_range(a, stop);
                continue;
            }
            if last_group == Some(group) {
                continue;
            }
            last_group = Some(group);
            let missing = (end - first) - h.held(first, end);
            let held = h.symbols(group);
            if missing == end - first && held == 0 {
                out.push_range(first, end);
                continue;
            }
            let need = missing.saturating_sub(held).max(1) as u32;
            if confirmed.silences(round, group_size, group, need) {
                out.silenced += 1;
            } else {
                out.parity.push((group, need));
            }
        }
    }
    out.parity.truncate(max);
    out.ranges.truncate(max);
    out
}

/// What a receiver has heard of the sender, as [`Requester`] needs it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Heard {
    /// Ends of pass or round taken so far.
    pub passes_seen: u64,
    /// Full passes the sender makes: repair starts after them.
    pub passes: u64,
    /// The sender's group-size estimate (`ceil(log2(receivers + 1))`).
    pub gsize_log2: u32,
    /// The sender's last pass is over for good (a verified, signed
    /// `FINAL`): nothing more to ask.
    pub over: bool,
}

/// When a receiver asks for repair: after each end of pass or round from a
/// sender that takes requests, once no full pass is left, after a random
/// backoff scaled to the group; again after [`ASK_AGAIN`] when its last
/// request brought no new block (the end of the last round may have been
/// lost, and a sender that thinks everyone is done stops).
#[derive(Debug)]
pub struct Requester {
    answered_pass: u64,
    due: Option<Instant>,
    last_sent: Option<Instant>,
    blocks: u64,
    progress: Option<Instant>,
    rng: XorShift,
}

impl Default for Requester {
    fn default() -> Requester {
        Requester::with_rng(XorShift::from_entropy())
    }
}

impl Requester {
    /// A requester whose backoffs are drawn from `seed` (the simulator's
    /// runs are reproducible; the real receiver seeds from the system).
    pub fn with_seed(seed: u64) -> Requester {
        // splitmix64's finalizer: neighbouring seeds give unrelated
        // streams (xorshift's first outputs from a small seed are small).
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Requester::with_rng(XorShift::new(z ^ (z >> 31)))
    }

    fn with_rng(rng: XorShift) -> Requester {
        Requester {
            answered_pass: 0,
            due: None,
            last_sent: None,
            blocks: 0,
            progress: None,
            rng,
        }
    }

    /// A random delay from a truncated exponential distribution over a
    /// window that grows with the log of the group size (as NORM does):
    /// most receivers wait long, a few answer early, and their requests
    /// (confirmed by the sender to everyone) keep the others quiet.
    fn backoff(&mut self, gsize_log2: u32) -> Duration {
        let window = (BACKOFF_UNIT * (1 + gsize_log2)).min(BACKOFF_MAX);
        let lambda = f64::from(gsize_log2) * std::f64::consts::LN_2 + 1.0;
        let x = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let z = (x * lambda.exp_m1()).ln_1p() / lambda;
        window.mul_f64(z.clamp(0.0, 1.0))
    }

    /// When a request falls due, if one is scheduled.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.due
    }

    /// Look at the receiver at `now` (it has written `blocks_done`
    /// blocks): true when a request is due now. The caller then asks for
    /// its [`needs`] (and counts a request that finds nothing to ask as
    /// suppressed).
    pub fn poll(&mut self, now: Instant, heard: &Heard, blocks_done: u64) -> bool {
        if blocks_done != self.blocks || self.progress.is_none() {
            self.blocks = blocks_done;
            self.progress = Some(now);
        }
        let repairing = heard.passes_seen >= heard.passes && !heard.over;
        let stalled = |at: Option<Instant>| at.is_some_and(|at| now - at >= ASK_AGAIN);
        if repairing && heard.passes_seen > self.answered_pass {
            self.answered_pass = heard.passes_seen;
            self.due = Some(now + self.backoff(heard.gsize_log2));
        } else if repairing
            && self.due.is_none()
            && stalled(self.last_sent)
            && stalled(self.progress)
        {
            // The end of the last round may have been lost: ask again
            // rather than wait for a sender that thinks everyone is done.
            self.due = Some(now + self.backoff(heard.gsize_log2));
        }
        if self.due.is_none_or(|d| now < d) {
            return false;
        }
        self.due = None;
        self.last_sent = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::wire::{encode_confirm, ConfirmHeader, Packet};

    #[test]
    fn a_confirmation_silences_requests_until_a_second_window_of_its_round() {
        let g = Geometry::new(1400 * 1000, 1400);
        let h = ConfirmHeader {
            round: 2,
            group_size: 100,
            receivers: 1,
            flags: 0,
        };
        let pkt = encode_confirm(1, &g, &h, &[(0, 50), (3, 10)]);
        let Ok(Packet::Confirm { counts, .. }) = wire::parse(&pkt) else {
            panic!("a confirmation");
        };
        let t0 = Instant::now();
        let mut c = Confirmed::default();
        c.confirm(2, 100, counts);
        c.end_seen(2, t0);
        assert!(!c.silences(2, 100, 3, 11), "more than confirmed");
        assert!(!c.silences(1, 100, 0, 5), "another round");
        assert!(c.silences(2, 100, 0, 50));
        // Copies of one send count once; the reminders of the first
        // window keep the confirmation standing.
        c.end_seen(2, t0 + Duration::from_millis(1));
        let mut t = t0 + Duration::from_millis(1);
        for _ in 1..SILENCE_ENDS - 1 {
            t += BURST_GAP;
            c.end_seen(2, t);
        }
        assert!(c.silences(2, 100, 0, 50));
        // A second window of the same round: no confirmation was real.
        c.end_seen(2, t + BURST_GAP);
        assert!(!c.silences(2, 100, 0, 50));
        assert!(!c.silences(2, 100, 3, 10));
        // The next round's confirmation silences again.
        let h3 = ConfirmHeader { round: 3, ..h };
        let pkt = encode_confirm(1, &g, &h3, &[(0, 50)]);
        let Ok(Packet::Confirm { counts, .. }) = wire::parse(&pkt) else {
            panic!("a confirmation");
        };
        c.confirm(3, 100, counts);
        c.end_seen(3, t + 2 * BURST_GAP);
        assert!(c.silences(3, 100, 0, 50));
    }

    #[test]
    fn a_flood_of_confirmations_keeps_at_most_max_confirmed_groups() {
        // 2^20 groups of one block: every confirmation names 100 new ones.
        let g = Geometry::new(64 << 20, 64);
        let h = ConfirmHeader {
            round: 1,
            group_size: 1,
            receivers: 1,
            flags: 0,
        };
        let mut c = Confirmed::default();
        let per = wire::MAX_PARITY_ENTRIES as u64;
        for k in 0..(2 * MAX_CONFIRMED_GROUPS as u64 / per + 1) {
            let entries: Vec<(u64, u32)> = (0..per).map(|i| (k * per + i, 1)).collect();
            let pkt = encode_confirm(1, &g, &h, &entries);
            let Ok(Packet::Confirm { counts, .. }) = wire::parse(&pkt) else {
                panic!("a confirmation");
            };
            c.confirm(1, 1, counts);
        }
        assert_eq!(c.counts.len(), MAX_CONFIRMED_GROUPS);
        // A group beyond the cap is not silenced (the receiver asks: delay
        // at most); one inside it still is.
        c.end_seen(1, Instant::now());
        assert!(c.silences(1, 1, 0, 1));
        assert!(!c.silences(1, 1, 2 * MAX_CONFIRMED_GROUPS as u64, 1));
    }

    /// Blocks held as a list of missing ranges; symbols per group.
    struct Held(Vec<(u64, u64)>, HashMap<u64, u64>);

    impl Holdings for Held {
        fn missing(&self) -> Vec<(u64, u64)> {
            self.0.clone()
        }
        fn held(&self, first: u64, end: u64) -> u64 {
            let lacking: u64 = self
                .0
                .iter()
                .map(|&(a, b)| b.min(end).saturating_sub(a.max(first)))
                .sum();
            end - first - lacking
        }
        fn symbols(&self, group: u64) -> u64 {
            self.1.get(&group).copied().unwrap_or(0)
        }
    }

    #[test]
    fn parity_for_partial_groups_ranges_for_empty_ones() {
        let g = Geometry::new(1400 * 1000, 1400);
        // Group 0 lacks 5 and holds 2 symbols; group 1 is empty; group 9
        // (100 blocks, the last) lacks 1.
        let h = Held(
            vec![(10, 15), (100, 200), (950, 951)],
            HashMap::from([(0, 2)]),
        );
        let n = needs(&h, &g, 100, 0, &Confirmed::default(), 100);
        assert_eq!(n.parity, vec![(0, 3), (9, 1)]);
        assert_eq!(n.ranges, vec![(100, 100)]);
        assert_eq!(n.silenced, 0);
    }

    #[test]
    fn backoff_grows_with_the_group_and_asks_again_without_progress() {
        let t0 = Instant::now();
        let heard = Heard {
            passes_seen: 1,
            passes: 1,
            gsize_log2: 10,
            over: false,
        };
        let mut waits = Vec::new();
        for seed in 0..200 {
            let mut r = Requester::with_seed(seed);
            assert!(!r.poll(t0, &heard, 5) || r.poll_timeout().is_none());
            let due = r.poll_timeout().unwrap_or(t0);
            waits.push(due - t0);
            assert!(due - t0 <= BACKOFF_MAX);
            assert!(r.poll(due, &heard, 5), "due at its time");
            assert!(!r.poll(due, &heard, 5), "once");
            // Nothing came: it asks again after ASK_AGAIN and a backoff.
            let later = due + ASK_AGAIN;
            assert!(!r.poll(later, &heard, 5));
            let again = r.poll_timeout().expect("scheduled again");
            assert!(r.poll(again, &heard, 5));
        }
        waits.sort();
        // Most wait long, a few answer early.
        assert!(waits[100] > BACKOFF_MAX * 3 / 4, "{:?}", waits[100]);
        assert!(waits[0] < BACKOFF_MAX / 2, "{:?}", waits[0]);
    }
}
