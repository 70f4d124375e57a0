//! A receiver's choice, once the sender's passes are over, between its web
//! server (`receive --http`) and NACK rounds for what it still lacks
//! (docs/http.md, "When HTTP is used").
//!
//! A repair round is multicast: one round serves every receiver that
//! lacks the same blocks, so when many receivers lack much (loss on the
//! sender's link, a switch that dropped the same packets for everyone) it
//! is worth its time, and the web server would send the same bytes once
//! per receiver. When only a few lack much (their own NIC, port or CPU),
//! they fetch from the web server and leave the rounds short for the
//! others. The sender counts the receivers lacking much from their
//! progress reports and says so in its end packets ([`Lacking`], signed in
//! a signed session); a sender that says nothing (older than the hint, or
//! knowing no receiver) leaves each receiver to judge by its own loss.
//! Whatever the hint, the web server takes over when the sender has gone
//! or takes no repair requests (the fetcher's other cases).

use crate::proto::wire::Lacking;

/// Receivers lacking much that are few whatever their share: one or two
/// in a small fleet cost a web server little.
pub const FEW_RECEIVERS: u32 = 2;

/// When the missing blocks come from the web server after the passes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HttpRepair {
    /// Share of the image (0..=1) this receiver must still lack
    /// (`--http-repair-percent`).
    pub share: f64,
    /// Largest share of the receivers hearing the multicast that may lack
    /// much for them to be few (`--http-repair-few`).
    pub few: f64,
}

impl HttpRepair {
    /// Whether a receiver lacking `missing` of `block_count` blocks after
    /// the sender's passes fetches them over HTTP instead of asking for
    /// repair rounds, given what the sender's last end said of the
    /// receivers lacking much (`None`: nothing).
    pub fn prefers_http(&self, missing: u64, block_count: u64, lacking: Option<Lacking>) -> bool {
        if missing == 0 || (missing as f64) < self.share * block_count as f64 {
            return false;
        }
        match lacking {
            None => true,
            // In the 255ths the sender rounded up to: a quarter is 64.
            Some(l) => {
                l.receivers <= FEW_RECEIVERS
                    || (l.share * 255.0).round() <= (self.few * 255.0).ceil()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::wire::{fleet_flags, Control};

    /// The hint as a receiver reads it from an end packet's flags.
    fn said(lacking: u64, hearing: u64) -> Option<Lacking> {
        Control {
            flags: fleet_flags(lacking, hearing),
            ..Control::new([0; 32], 0, 1)
        }
        .lacking()
    }

    const DEFAULT: HttpRepair = HttpRepair {
        share: 0.05,
        few: 0.25,
    };

    #[test]
    fn few_receivers_lacking_much_fetch_many_take_repair_rounds() {
        let n = 10_000;
        // Lacking little: repair rounds, whatever the fleet.
        assert!(!DEFAULT.prefers_http(0, n, said(0, 16)));
        assert!(!DEFAULT.prefers_http(499, n, said(1, 16)));
        assert!(!DEFAULT.prefers_http(499, n, None));
        // One of 16 lacks much, or 4 of 16: the web server.
        assert!(DEFAULT.prefers_http(500, n, said(1, 16)));
        assert!(DEFAULT.prefers_http(3_000, n, said(4, 16)));
        // Every receiver hearing the group lacks much (the fleet figure of
        // docs/http.md: 12 lossy receivers): one round serves them all.
        assert!(!DEFAULT.prefers_http(3_000, n, said(12, 12)));
        assert!(!DEFAULT.prefers_http(3_000, n, said(5, 16)));
        // A fleet of one or two is always few.
        assert!(DEFAULT.prefers_http(3_000, n, said(1, 1)));
        assert!(DEFAULT.prefers_http(3_000, n, said(2, 2)));
        assert!(!DEFAULT.prefers_http(3_000, n, said(3, 3)));
        // A large fleet: 255 and more lacking is few only as a share.
        assert!(DEFAULT.prefers_http(3_000, n, said(300, 10_000)));
        assert!(!DEFAULT.prefers_http(3_000, n, said(3_000, 10_000)));
        // A sender that says nothing (older, or knowing no receiver):
        // each receiver by its own loss, as before the hint.
        assert!(DEFAULT.prefers_http(500, n, None));
        assert!(DEFAULT.prefers_http(500, n, said(0, 0)));
    }

    #[test]
    fn the_receivers_own_flags_move_the_lines() {
        let n = 1_000;
        // --http-repair-few 100: whatever the others lack.
        let always = HttpRepair {
            few: 1.0,
            ..DEFAULT
        };
        assert!(always.prefers_http(50, n, said(12, 12)));
        // --http-repair-few 0: only when at most FEW_RECEIVERS lack much.
        let never = HttpRepair {
            few: 0.0,
            ..DEFAULT
        };
        assert!(never.prefers_http(50, n, said(2, 100)));
        assert!(!never.prefers_http(50, n, said(3, 100)));
        // --http-repair-percent 100: never after the passes.
        let off = HttpRepair {
            share: 1.0,
            ..DEFAULT
        };
        assert!(!off.prefers_http(999, n, said(1, 16)));
        assert!(off.prefers_http(n, n, said(1, 16)));
    }
}
