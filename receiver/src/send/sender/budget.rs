//! The repair budget: NACKs and parity requests cannot be authenticated,
//! so what a round resends is cut to an allowance, taken in turn over what
//! is asked so that a flood for some blocks cannot starve the others.

use crate::send::repair::merge;

/// Cut the symbol counts of `parity` to at most `budget` in total, taking
/// groups from `cursor` on (wrapping round) and moving `cursor` past the
/// last group served; returns the symbols cut.
pub(super) fn clip_counts(parity: &mut Vec<(u64, u32)>, budget: u64, cursor: &mut u64) -> u64 {
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
pub(super) fn clip(ranges: &mut Vec<(u64, u64)>, budget: u64, cursor: &mut u64) -> u64 {
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
mod tests {
    use super::*;

    #[test]
    fn clips_ranges_to_the_budget_in_turn() {
        let mut at = 0;
        let mut r = vec![(0, 10), (20, 30), (40, 50)];
        assert_eq!(clip(&mut r, 15, &mut at), 15);
        assert_eq!((r, at), (vec![(0, 10), (20, 25)], 25));
        // The next round starts where this one stopped, and wraps round:
        // requests for the first blocks cannot keep the budget forever.
        let mut r = vec![(0, 10), (20, 30), (40, 50)];
        assert_eq!(clip(&mut r, 15, &mut at), 15);
        assert_eq!((r, at), (vec![(25, 30), (40, 50)], 50));
        let mut r = vec![(0, 10), (20, 30), (40, 50)];
        assert_eq!(clip(&mut r, 12, &mut at), 18);
        assert_eq!((r, at), (vec![(0, 10), (20, 22)], 22));
        let mut r = vec![(0, 10)];
        assert_eq!(clip(&mut r, 0, &mut at), 10);
        assert!(r.is_empty());
        let mut g = 0;
        let mut p = vec![(0, 5), (3, 5), (7, 5)];
        assert_eq!(clip_counts(&mut p, 7, &mut g), 8);
        assert_eq!((p, g), (vec![(0, 5), (3, 2)], 4));
        let mut p = vec![(0, 5), (3, 5), (7, 5)];
        assert_eq!(clip_counts(&mut p, 7, &mut g), 8);
        assert_eq!((p, g), (vec![(0, 2), (7, 5)], 1));
    }
}
