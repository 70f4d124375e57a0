//! What a receiver asks the sender for: block ranges and parity symbols,
//! less what the sender has confirmed.

use super::image::{missing_in_window, Image};
use super::{lock, Transfer};
use crate::core::gaps::{self, Holdings, Needs};
use crate::proto::fec;

/// What an image holds, as the repair core reads it.
struct Held<'a> {
    img: &'a Image,
    fec: &'a fec::Pending,
    missing: Vec<(u64, u64)>,
    /// A stream: the group of its first missing block and the end of its
    /// window.
    stream: Option<(Option<u64>, u64)>,
    /// A signed session onto a file or device: its groups' size. Only a
    /// group whose blocks are all still in memory can be decoded there.
    in_memory: Option<u32>,
}

impl Holdings for Held<'_> {
    fn missing(&self) -> Vec<(u64, u64)> {
        self.missing.clone()
    }
    fn held(&self, first: u64, end: u64) -> u64 {
        self.img.claimed.count_range(first, end)
    }
    fn symbols(&self, group: u64) -> u64 {
        self.fec.held(group)
    }
    fn as_ranges(&self, group: u64, end: u64) -> bool {
        self.stream
            .is_some_and(|(f, w)| f == Some(group) || end > w)
            || self
                .in_memory
                .is_some_and(|size| !self.img.held_in_memory(group * u64::from(size), end))
    }
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
    /// not hold whole (symbols would rebuild blocks it must refuse). A
    /// signed session onto a file or device asks for block ranges in a
    /// group some of whose blocks were written out already (it decodes
    /// only from memory).
    pub fn needs(&self, group_size: u32, round: u64, max: usize) -> Needs {
        let Some(img) = self.image() else {
            return Needs::default();
        };
        let missing = missing_in_window(img);
        // A stream asks for block ranges in the group of its first missing
        // block and in a group its window does not hold whole.
        let stream = img.target.as_stream().map(|_| {
            let frontier = missing.first().map(|&(a, _)| a / u64::from(group_size));
            (frontier, img.window_end())
        });
        // A signed session onto a file or device reads nothing back: it
        // asks for symbols only for groups it holds in memory (see
        // `fec_symbol`), block ranges for the others.
        let in_memory =
            (self.is_signed() && img.target.as_stream().is_none()).then_some(group_size);
        let held = Held {
            img,
            fec: &self.fec,
            missing,
            stream,
            in_memory,
        };
        let confirmed = lock(&self.confirmed);
        gaps::needs(&held, &img.geometry, group_size, round, &confirmed, max)
    }
}
