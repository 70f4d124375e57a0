//! What a receiver believes of the sender's control packets when anyone on
//! the segment can send them: the announce and end packets of an unsigned
//! session (taken once corroborated, and then only when they agree) and the
//! `FINAL` bit (a hint the sender's next packets can take back). The
//! confirmations of parity repair are the repair core's
//! (`core::gaps::Confirmed`). Signed sessions take announce-like information
//! from the signed manifest and ends instead (`receive/signed.rs`).

use std::time::Instant;

use crate::proto::wire::{self, Control, DropReason};

/// Copies of the same announce or end an unsigned session needs before it
/// takes their parameters (the sender sends each control packet three
/// times): a single forged packet sets nothing.
pub const CORROBORATE: u32 = 2;
/// Different parameter sets counted while none is corroborated; more are
/// dropped uncounted (a flood of forgeries does not grow the list).
const MAX_CANDIDATES: usize = 8;
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
