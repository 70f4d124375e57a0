//! What a receiver asks the sender for: block ranges and parity symbols,
//! less what the sender has confirmed.

use super::image::missing_in_window;
use super::{lock, Transfer};
use crate::proto::fec;

/// What a receiver should ask for: parity symbols for groups it partly
/// has, block ranges for groups it has nothing of.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// `(group, symbols lacking)`.
    pub parity: Vec<(u64, u32)>,
    /// `(first block, count)`.
    pub ranges: Vec<(u64, u32)>,
    /// Groups left out because the sender confirmed enough symbols (until
    /// a second window of the round opens, see [`Confirmed`](crate::receive::control::Confirmed)).
    pub silenced: usize,
}

impl Transfer {
    /// Blocks not claimed yet, as `(first, count)` ranges, at most `max`
    /// (with a stream, only those its window can take now).
    pub fn missing_ranges(&self, max: usize) -> Vec<(u64, u32)> {
        let Some(img) = self.image() else {
            return Vec::new();
        };
        let mut ranges = missing_in_window(img);
        if let Some(s) = self.signed() {
            ranges.extend(s.waiting_for_pages(max));
        }
        ranges
            .into_iter()
            .flat_map(|(s, e)| {
                (s..e)
                    .step_by(u32::MAX as usize)
                    .map(move |a| (a, (e - a).min(u64::from(u32::MAX)) as u32))
            })
            .take(max)
            .collect()
    }

    /// What to ask the sender for, with groups of `group_size` blocks and
    /// at most `max` entries of each kind. A group with no block and no
    /// symbol (a late join, a gap a resume left) is asked for as a block
    /// range: the data blocks serve as well and need no decoding. For any
    /// other group the receiver asks for as many fresh symbols as it lacks
    /// (blocks missing minus symbols held, at least one), less what the
    /// sender has already confirmed for this round (`round`).
    ///
    /// With a stream, only blocks its window can take now are asked for,
    /// and as block ranges in the group holding the first missing block
    /// (its blocks before that one may have left the window already, so
    /// its symbols could not be decoded) and in a group the window does
    /// not hold whole (symbols would rebuild blocks it must refuse).
    pub fn needs(&self, group_size: u32, round: u64, max: usize) -> Needs {
        let mut out = Needs::default();
        let Some(img) = self.image() else {
            return out;
        };
        let g = &img.geometry;
        let confirmed = lock(&self.confirmed);
        let push_range = |out: &mut Needs, a: u64, b: u64| match out.ranges.last_mut() {
            Some((first, n)) if *first + u64::from(*n) == a => *n += (b - a) as u32,
            _ => out.ranges.push((a, (b - a) as u32)),
        };
        let missing = missing_in_window(img);
        // A signed session onto a file or device asks for block ranges
        // only: decoding parity needs the group's other blocks, which are
        // on the target by then, and it reads nothing back (see
        // `fec_symbol`).
        if self.is_signed() && img.target.as_stream().is_none() {
            for (a, b) in missing {
                push_range(&mut out, a, b);
            }
            out.ranges.truncate(max);
            return out;
        }
        // A stream asks for block ranges in the group of its first missing
        // block and in a group its window does not hold whole.
        let as_ranges = img.target.as_stream().map(|_| {
            let frontier = missing.first().map(|&(a, _)| a / u64::from(group_size));
            (frontier, img.window_end())
        });
        let mut last_group = None;
        for (s, e) in missing {
            let mut b = s;
            while b < e {
                let group = b / u64::from(group_size);
                let (first, end) = fec::group_blocks(g, group_size, group);
                let (a, stop) = (b, end.min(e));
                b = stop;
                if as_ranges.is_some_and(|(f, w)| f == Some(group) || end > w) {
                    push_range(&mut out, a, stop);
                    continue;
                }
                if last_group == Some(group) {
                    continue;
                }
                last_group = Some(group);
                let missing = (end - first) - img.claimed.count_range(first, end);
                let held = self.fec.held(group);
                if missing == end - first && held == 0 {
                    push_range(&mut out, first, end);
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
}
