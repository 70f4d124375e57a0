//! What a receiver believes of the sender's control packets when anyone on
//! the segment can send them: the announce and end packets of an unsigned
//! session (taken once corroborated, and then only when they agree), the
//! `FINAL` bit (a hint the sender's next packets can take back), and the
//! confirmations of parity repair (they may silence a request for a group
//! once, never starve it). Signed sessions take announce-like information
//! from the signed manifest and ends instead (`receive/signed.rs`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::proto::wire::{self, Control, DropReason};

/// Copies of the same announce or end an unsigned session needs before it
/// takes their parameters (the sender sends each control packet three
/// times): a single forged packet sets nothing.
pub const CORROBORATE: u32 = 2;
/// Different parameter sets counted while none is corroborated; more are
/// dropped uncounted (a flood of forgeries does not grow the list).
const MAX_CANDIDATES: usize = 8;
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

/// What an announce or end packet carries that does not change during a
/// session: everything but the pass, `FINAL` and the group-size estimate.
fn parameters(c: &Control) -> Control {
    Control {
        pass: 0,
        flags: c.flags & (wire::FLAG_REPAIR | wire::FLAG_PARITY),
        digest: [0; wire::DIGEST_LEN],
        ..*c
    }
}

/// An unsigned session's announce and end packets.
#[derive(Debug, Default)]
pub struct Announced {
    /// The corroborated parameters, once taken.
    taken: Option<Control>,
    /// Parameter sets heard, with their copies, until one is taken.
    candidates: Vec<(Control, u32)>,
    /// The corroborated digest, once taken (the sender may announce all
    /// zero until it has read the whole image).
    digest: Option<[u8; wire::DIGEST_LEN]>,
    /// Digests heard, with their copies, until one is taken.
    digests: Vec<([u8; wire::DIGEST_LEN], u32)>,
    /// When a `FINAL` end was last taken and not taken back since.
    final_at: Option<Instant>,
}

impl Announced {
    /// Offer an announce or end: `Ok(true)` when it agrees with the
    /// corroborated parameters (or is the copy that corroborates them) and
    /// is to be acted on, `Ok(false)` while its parameters wait for
    /// corroboration, `Err(Inconsistent)` when it disagrees with what was
    /// taken (a forgery, or the real sender's when a forger was taken
    /// first: either way it is counted, not obeyed).
    pub fn offer(&mut self, c: &Control) -> Result<bool, DropReason> {
        let p = parameters(c);
        if let Some(taken) = self.taken {
            return if taken == p {
                Ok(true)
            } else {
                Err(DropReason::Inconsistent)
            };
        }
        let copies = match self.candidates.iter().position(|(q, _)| *q == p) {
            Some(i) => {
                self.candidates[i].1 += 1;
                self.candidates[i].1
            }
            None if self.candidates.len() < MAX_CANDIDATES => {
                self.candidates.push((p, 1));
                1
            }
            None => return Err(DropReason::Inconsistent),
        };
        if copies >= CORROBORATE {
            self.taken = Some(p);
            self.candidates = Vec::new();
            return Ok(true);
        }
        Ok(false)
    }

    /// Offer the digest of an announce or end whose parameters agree: the
    /// corroborated digest, once taken (`None` for all zero, "not known
    /// yet", or while a new one waits for its second copy);
    /// `Err(Inconsistent)` for one that disagrees with the digest taken.
    pub fn offer_digest(
        &mut self,
        d: &[u8; wire::DIGEST_LEN],
    ) -> Result<Option<[u8; wire::DIGEST_LEN]>, DropReason> {
        if *d == [0; wire::DIGEST_LEN] {
            return Ok(self.digest);
        }
        if let Some(taken) = self.digest {
            return if taken == *d {
                Ok(Some(taken))
            } else {
                Err(DropReason::Inconsistent)
            };
        }
        let copies = match self.digests.iter().position(|(q, _)| q == d) {
            Some(i) => {
                self.digests[i].1 += 1;
                self.digests[i].1
            }
            None if self.digests.len() < MAX_CANDIDATES => {
                self.digests.push((*d, 1));
                1
            }
            None => return Err(DropReason::Inconsistent),
        };
        if copies >= CORROBORATE {
            self.digest = Some(*d);
            self.digests = Vec::new();
        }
        Ok(self.digest)
    }

    /// The corroborated parameters.
    pub fn taken(&self) -> Option<Control> {
        self.taken
    }

    /// A taken end or announce: a `FINAL` end starts the wait for the
    /// last blocks, anything without `FINAL` takes it back (the sender is
    /// still at work; a forged `FINAL` was answered by its next packet).
    pub fn note_final(&mut self, c: &Control, is_end: bool) {
        if c.flags & wire::FLAG_FINAL == 0 {
            self.final_at = None;
        } else if is_end && self.final_at.is_none() {
            self.final_at = Some(Instant::now());
        }
    }

    /// A verified (signed) `FINAL`: it is not taken back.
    pub fn set_final(&mut self) {
        self.final_at.get_or_insert_with(Instant::now);
    }

    /// Since when the sender's last pass is over, if it is.
    pub fn final_since(&self) -> Option<Instant> {
        self.final_at
    }
}

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

    /// An end of round `round` (an end packet's pass) has come.
    pub fn end_seen(&mut self, round: u64) {
        let now = Instant::now();
        self.ends = match self.ends {
            Some((r, n, last)) if r == round => {
                let n = if now.duration_since(last) >= BURST_GAP {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::wire::{encode_confirm, ConfirmHeader, Geometry, Packet};

    fn control(repair_port: u16, flags: u32) -> Control {
        Control {
            repair_port,
            flags: wire::FLAG_REPAIR | flags,
            ..Control::new([1; 32], 0, 1)
        }
    }

    #[test]
    fn parameters_are_taken_once_corroborated_and_never_replaced() {
        let mut a = Announced::default();
        // One forged redirect, then the sender's copies.
        assert_eq!(a.offer(&control(666, 0)), Ok(false));
        assert_eq!(a.offer(&control(5000, 0)), Ok(false));
        assert_eq!(a.taken(), None);
        assert_eq!(a.offer(&control(5000, wire::FLAG_FINAL)), Ok(true));
        assert_eq!(a.taken(), Some(parameters(&control(5000, 0))));
        // Later redirects are counted, not obeyed, however many.
        for _ in 0..10 {
            assert_eq!(a.offer(&control(666, 0)), Err(DropReason::Inconsistent));
        }
        assert_eq!(a.taken(), Some(parameters(&control(5000, 0))));
        // Another pass of the same sender agrees.
        let next = Control {
            pass: 3,
            ..control(5000, 0)
        };
        assert_eq!(a.offer(&next), Ok(true));
    }

    #[test]
    fn a_final_end_is_taken_back_by_the_senders_next_packet() {
        let mut a = Announced::default();
        a.note_final(&control(5000, wire::FLAG_FINAL), false);
        assert!(a.final_since().is_none(), "an announce does not end a pass");
        a.note_final(&control(5000, wire::FLAG_FINAL), true);
        let at = a.final_since().unwrap();
        a.note_final(&control(5000, wire::FLAG_FINAL), true);
        assert_eq!(a.final_since(), Some(at), "the first FINAL starts the wait");
        a.note_final(&control(5000, 0), true);
        assert!(a.final_since().is_none());
    }

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
        let mut c = Confirmed::default();
        c.confirm(2, 100, counts);
        c.end_seen(2);
        assert!(!c.silences(2, 100, 3, 11), "more than confirmed");
        assert!(!c.silences(1, 100, 0, 5), "another round");
        assert!(c.silences(2, 100, 0, 50));
        // Copies of one send count once; the reminders of the first
        // window keep the confirmation standing.
        c.end_seen(2);
        for _ in 1..SILENCE_ENDS - 1 {
            std::thread::sleep(BURST_GAP);
            c.end_seen(2);
        }
        assert!(c.silences(2, 100, 0, 50));
        // A second window of the same round: no confirmation was real.
        std::thread::sleep(BURST_GAP);
        c.end_seen(2);
        assert!(!c.silences(2, 100, 0, 50));
        assert!(!c.silences(2, 100, 3, 10));
        // The next round's confirmation silences again.
        let h3 = ConfirmHeader { round: 3, ..h };
        let pkt = encode_confirm(1, &g, &h3, &[(0, 50)]);
        let Ok(Packet::Confirm { counts, .. }) = wire::parse(&pkt) else {
            panic!("a confirmation");
        };
        c.confirm(3, 100, counts);
        c.end_seen(3);
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
        c.end_seen(1);
        assert!(c.silences(1, 1, 0, 1));
        assert!(!c.silences(1, 1, 2 * MAX_CONFIRMED_GROUPS as u64, 1));
    }
}
