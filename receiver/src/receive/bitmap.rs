//! The received-block bitmap, shared by every worker without locks.

use std::sync::atomic::{AtomicU64, Ordering};

/// One bit per block; `insert` is a single atomic `fetch_or`, so any number
/// of workers can mark blocks concurrently and exactly one of them sees a
/// block as new.
#[derive(Debug)]
pub struct BlockBitmap {
    words: Box<[AtomicU64]>,
    len: u64,
}

impl BlockBitmap {
    /// A bitmap of `len` blocks, all missing.
    pub fn new(len: u64) -> BlockBitmap {
        let words = (0..len.div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
        BlockBitmap { words, len }
    }

    /// A bitmap of `len` blocks set from saved `words` (see [`Self::words`]).
    pub fn from_words(len: u64, words: &[u64]) -> BlockBitmap {
        let b = BlockBitmap::new(len);
        for (dst, &w) in b.words.iter().zip(words) {
            dst.store(w, Ordering::Relaxed);
        }
        // Bits past `len` in the last word must stay clear.
        if len % 64 != 0 {
            if let Some(last) = b.words.last() {
                last.fetch_and((1u64 << (len % 64)) - 1, Ordering::Relaxed);
            }
        }
        b
    }

    /// A copy of the bits, 64 blocks per word.
    pub fn words(&self) -> Vec<u64> {
        self.words
            .iter()
            .map(|w| w.load(Ordering::Acquire))
            .collect()
    }

    /// Number of blocks set in `[first, end)`.
    pub fn count_range(&self, first: u64, end: u64) -> u64 {
        (first..end.min(self.len))
            .filter(|&i| self.contains(i))
            .count() as u64
    }

    /// Number of blocks tracked.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when the bitmap tracks no blocks.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Mark block `index` received; true if it was missing before.
    ///
    /// # Panics
    /// If `index` is out of range (the wire parser rejects such packets).
    pub fn insert(&self, index: u64) -> bool {
        assert!(index < self.len, "block {index} out of range {}", self.len);
        let bit = 1u64 << (index % 64);
        self.words[(index / 64) as usize].fetch_or(bit, Ordering::AcqRel) & bit == 0
    }

    /// Clear blocks `[first, end)`, so they can be claimed again (a chunk
    /// that failed verification). Release: a worker that claims a cleared
    /// block afterwards sees every store made before the clear.
    pub fn remove_range(&self, first: u64, end: u64) {
        for i in first..end.min(self.len) {
            self.words[(i / 64) as usize].fetch_and(!(1u64 << (i % 64)), Ordering::Release);
        }
    }

    /// Mark blocks `[first, end)` received, a word at a time; returns the
    /// sub-ranges that were missing before (which the caller now owns, as
    /// with [`Self::insert`]), in order.
    ///
    /// # Panics
    /// If `end` is past the last block (the wire parser rejects such runs).
    pub fn insert_range(&self, first: u64, end: u64) -> Vec<(u64, u64)> {
        self.change_range(first, end, true)
    }

    /// Clear blocks `[first, end)`, a word at a time; returns the
    /// sub-ranges that were set before (the caller is the one that cleared
    /// them), in order.
    ///
    /// # Panics
    /// If `end` is past the last block.
    pub fn take_range(&self, first: u64, end: u64) -> Vec<(u64, u64)> {
        self.change_range(first, end, false)
    }

    /// Set (or clear) `[first, end)` with one atomic read-modify-write per
    /// word (AcqRel: a claim sees what the clearer stored before); the
    /// sub-ranges whose bits this call changed.
    fn change_range(&self, first: u64, end: u64, set: bool) -> Vec<(u64, u64)> {
        assert!(
            end <= self.len,
            "blocks up to {end} out of range {}",
            self.len
        );
        let mut changed: Vec<(u64, u64)> = Vec::new();
        let mut at = first;
        while at < end {
            let word = at / 64;
            let lo = at % 64;
            let hi = (end - word * 64).min(64);
            let mask = (u64::MAX >> (64 - (hi - lo))) << lo;
            let w = &self.words[word as usize];
            let mut new = if set {
                mask & !w.fetch_or(mask, Ordering::AcqRel)
            } else {
                mask & w.fetch_and(!mask, Ordering::AcqRel)
            };
            while new != 0 {
                let a = word * 64 + u64::from(new.trailing_zeros());
                let run = (new >> (a - word * 64)).trailing_ones();
                let b = a + u64::from(run);
                match changed.last_mut() {
                    Some(last) if last.1 == a => last.1 = b,
                    _ => changed.push((a, b)),
                }
                new &= !((u64::MAX >> (64 - run)) << (a - word * 64));
            }
            at = word * 64 + hi;
        }
        changed
    }

    /// Whether block `index` has been received.
    pub fn contains(&self, index: u64) -> bool {
        index < self.len
            && self.words[(index / 64) as usize].load(Ordering::Acquire) & (1u64 << (index % 64))
                != 0
    }

    /// Number of blocks received.
    pub fn count(&self) -> u64 {
        self.words
            .iter()
            .map(|w| u64::from(w.load(Ordering::Acquire).count_ones()))
            .sum()
    }

    /// Ranges `[start, end)` of missing blocks, in order.
    pub fn missing_ranges(&self) -> Vec<(u64, u64)> {
        self.ranges_where(false)
    }

    /// Ranges `[start, end)` of blocks set, in order.
    pub fn set_ranges(&self) -> Vec<(u64, u64)> {
        self.ranges_where(true)
    }

    /// Ranges of blocks whose bit is `set`, stepping over whole words that
    /// are all one way.
    fn ranges_where(&self, set: bool) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut start = None;
        let mut i = 0;
        while i < self.len {
            let word = self.words[(i / 64) as usize].load(Ordering::Acquire);
            let word = if set { word } else { !word };
            // A whole word one way is taken in one step.
            let whole = i % 64 == 0 && i + 64 <= self.len && (word == 0 || word == u64::MAX);
            match (word & (1 << (i % 64)) != 0, start) {
                (true, None) => start = Some(i),
                (false, Some(s)) => {
                    out.push((s, i));
                    start = None;
                }
                _ => {}
            }
            i += if whole { 64 } else { 1 };
        }
        if let Some(s) = start {
            out.push((s, self.len));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_reports_new_blocks_once() {
        let b = BlockBitmap::new(130);
        assert!(b.insert(0));
        assert!(!b.insert(0));
        assert!(b.insert(129));
        assert!(b.contains(129));
        assert!(!b.contains(128));
        assert!(!b.contains(1000));
        assert_eq!(b.count(), 2);
        assert_eq!(b.missing_ranges(), vec![(1, 129)]);
    }

    #[test]
    fn words_round_trip() {
        let b = BlockBitmap::new(100);
        b.insert(3);
        b.insert(99);
        let c = BlockBitmap::from_words(100, &b.words());
        assert!(c.contains(3) && c.contains(99) && !c.contains(4));
        assert_eq!(c.count(), 2);
        assert_eq!(c.count_range(0, 50), 1);
        let d = BlockBitmap::from_words(70, &[u64::MAX, u64::MAX]);
        assert_eq!(d.count(), 70);
    }

    #[test]
    fn ranges_insert_by_word_and_report_only_new_blocks() {
        let b = BlockBitmap::new(300);
        b.insert(70);
        b.insert(71);
        b.insert(200);
        assert_eq!(
            b.insert_range(60, 260),
            vec![(60, 70), (72, 200), (201, 260)]
        );
        assert_eq!(b.count(), 200);
        assert!(b.insert_range(64, 128).is_empty());
        assert_eq!(b.set_ranges(), vec![(60, 260)]);
        assert_eq!(b.missing_ranges(), vec![(0, 60), (260, 300)]);
        assert_eq!(b.insert_range(0, 300), vec![(0, 60), (260, 300)]);
        assert!(b.missing_ranges().is_empty());
        assert_eq!(BlockBitmap::new(64).insert_range(0, 64), vec![(0, 64)]);
        assert!(BlockBitmap::new(64).insert_range(5, 5).is_empty());
        // Taking clears and reports only what was set.
        b.take_range(100, 110);
        assert_eq!(b.take_range(90, 130), vec![(90, 100), (110, 130)]);
        assert!(b.take_range(95, 125).is_empty());
        assert_eq!(b.missing_ranges(), vec![(90, 130)]);
    }

    #[test]
    fn full_and_empty() {
        let b = BlockBitmap::new(70);
        assert_eq!(b.missing_ranges(), vec![(0, 70)]);
        for i in 0..70 {
            b.insert(i);
        }
        assert_eq!(b.count(), 70);
        assert!(b.missing_ranges().is_empty());
        assert!(BlockBitmap::new(0).is_empty());
    }

    #[test]
    fn concurrent_inserts_count_each_block_once() {
        let b = BlockBitmap::new(10_000);
        let fresh: u64 = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..10_000).filter(|&i| b.insert(i)).count() as u64))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(fresh, 10_000);
        assert_eq!(b.count(), 10_000);
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn out_of_range_panics() {
        BlockBitmap::new(3).insert(3);
    }
}
