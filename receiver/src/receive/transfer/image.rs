//! The image being received: its target, bitmaps and zero runs, and the
//! check of a signed session's chunks in the staging writer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::Result;
use crate::proto::wire::{self, Geometry};
use crate::receive::bitmap::BlockBitmap;
use crate::receive::signed::{Signed, Slots};
use crate::receive::workers::{bump, WorkerCounters};
use crate::store::handoff::Held;
use crate::store::target::Target;
use crate::store::writer::Verify;

/// The image being received, known from the first valid packet.
#[derive(Debug)]
pub struct Image {
    /// Session id of the sender.
    pub session: u32,
    /// Block layout.
    pub geometry: Geometry,
    /// Mapped target.
    pub target: Target,
    /// Blocks handed to a worker for writing (one `fetch_or` decides who).
    pub claimed: BlockBitmap,
    /// Blocks whose bytes are in the mapping (set after the copy).
    pub written: BlockBitmap,
    /// Blocks already on disk from an earlier run (resume file).
    pub resumed: u64,
    /// Bytes of those blocks.
    pub resumed_bytes: u64,
    /// Blocks of the sender's zero runs made to read as zeros here
    /// (counted after the zeroing, with Release).
    pub skipped_blocks: AtomicU64,
    /// Bytes of those blocks.
    pub skipped_bytes: AtomicU64,
    /// Blocks zeroed for the sender's zero runs in this run (a rejected
    /// chunk of a signed session clears its blocks here too).
    pub zeros: BlockBitmap,
    /// Blocks of the resume file no zero run has named yet (None when not
    /// resuming): when the sender's list names them again they are taken
    /// out, once, and shown as skipped rather than resumed.
    pub(super) resumed_left: Option<BlockBitmap>,
    /// Resumed blocks (and their bytes) shown as skipped.
    pub(super) resumed_zero_blocks: AtomicU64,
    pub(super) resumed_zero_bytes: AtomicU64,
}

/// Blocks and bytes taken from the resume file and skipped in zero runs, as
/// the status page shows them (see [`Transfer::resumed_and_skipped`](super::Transfer::resumed_and_skipped)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DoneSplit {
    /// Blocks from the resume file, less those in zero runs.
    pub resumed_blocks: u64,
    /// Bytes of those blocks.
    pub resumed_bytes: u64,
    /// Blocks of zero runs, made in this run or an earlier one.
    pub skipped_blocks: u64,
    /// Bytes of those blocks.
    pub skipped_bytes: u64,
}

/// What became of a block offered to the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Landed {
    Written,
    /// Written, and the worker's frame went with it to the copier.
    Kept,
    /// Claimed already.
    Duplicate,
    /// Beyond a stream's window, or no room for the data on the
    /// target: not claimed, so it is asked for again.
    Refused,
}

impl Image {
    /// First block that does not fit a stream's reorder window now (all
    /// fit a file or device). Blocks from there on are refused before they
    /// are claimed, so that repair brings them again once the consumer
    /// has made room.
    pub(super) fn window_end(&self) -> u64 {
        let g = &self.geometry;
        let limit = self.target.limit();
        if limit >= g.total_size {
            g.block_count
        } else {
            limit / u64::from(g.block_size)
        }
    }

    /// Count blocks refused for the stream's window.
    pub(super) fn refuse(&self) {
        if let Some(s) = self.target.as_stream() {
            s.refuse();
        }
    }

    /// Copy `payload` as block `index` if no one has claimed it yet and it
    /// fits the target.
    pub(super) fn write_block(
        &self,
        index: u64,
        payload: &[u8],
        held: Option<Held<'_>>,
        c: &WorkerCounters,
        signed: Option<&Signed>,
    ) -> Landed {
        if index >= self.window_end() {
            self.refuse();
            return Landed::Refused;
        }
        // No room for the data: the target's error fails the transfer.
        if !self.reserve_data() {
            return Landed::Refused;
        }
        // A signed session's block with no staging buffer to go to is
        // left to come again rather than written before its chunk is
        // checked (it would have to be read back to check it).
        if !self.target.has_room(self.geometry.offset(index), held) {
            return Landed::Refused;
        }
        if !self.claimed.insert(index) {
            return Landed::Duplicate;
        }
        let kept = self
            .target
            .write(self.geometry.offset(index), payload, held);
        // After the hand-off: whoever sees the block written (and reads it
        // back) first waits for the copier to have copied it (`settle`).
        self.written.insert(index);
        bump(&c.bytes, payload.len() as u64);
        c.blocks.fetch_add(1, Ordering::Release);
        // A file or device: its writer hashes the chunk once it is
        // complete in the staging buffer (see `Checker`), not this worker.
        if let (Some(s), Some(_)) = (signed, self.target.as_stream()) {
            s.block_written(self.slots(), index);
        }
        if kept {
            Landed::Kept
        } else {
            Landed::Written
        }
    }

    /// At the first block of data, reserve the target's space for every
    /// block outside the zero runs made so far (the sender announces its
    /// runs before any data, so they stay holes); false, and the transfer
    /// fails with `disk_full`, if the filesystem has too little room.
    pub(super) fn reserve_data(&self) -> bool {
        let g = &self.geometry;
        self.target.reserve(|| {
            self.zeros
                .missing_ranges()
                .into_iter()
                .map(|(a, b)| (g.offset(a), g.range_bytes(a, b)))
                .collect()
        })
    }

    /// The target and bitmaps, for chunk checks.
    pub(super) fn slots(&self) -> Slots<'_> {
        Slots {
            target: &self.target,
            claimed: &self.claimed,
            written: &self.written,
            zeros: &self.zeros,
        }
    }

    /// Runs of zero blocks announced by the sender: each block no one has
    /// claimed yet is zeroed in the target (a hole or `BLKZEROOUT`, see
    /// [`Target::zero`]; zeros in a stream's window) and then marked
    /// written, as if its data had come; in a signed session its chunks
    /// are checked like data chunks. The part of a run beyond a stream's
    /// window is refused like data blocks (the sender repeats zero runs in
    /// repair rounds).
    pub(super) fn zero_runs(&self, runs: wire::Ranges<'_>, signed: Option<&Signed>) -> Result<()> {
        let g = &self.geometry;
        let stop = self.window_end();
        for (first, count) in runs.iter() {
            let end = first + u64::from(count);
            let cut = end.min(stop).max(first);
            if cut < end {
                self.refuse();
            }
            for (a, b) in self.claimed.insert_range(first, cut) {
                let bytes = g.range_bytes(a, b);
                // In the zero set before the target counts them towards
                // their chunk: the writer checking it fills these blocks
                // in as zeros rather than reading them.
                self.zeros.insert_range(a, b);
                self.target.zero(g.offset(a), bytes)?;
                self.written.insert_range(a, b);
                self.skipped_bytes.fetch_add(bytes, Ordering::Relaxed);
                self.skipped_blocks.fetch_add(b - a, Ordering::Release);
                if let (Some(s), Some(_)) = (signed, self.target.as_stream()) {
                    s.blocks_written(self.slots(), a, b);
                }
            }
            // Runs an earlier run of a resumed session made: already on
            // disk, shown as skipped from now on; in the zero set, so that
            // the end of the session gives their space back too.
            for (a, b) in self
                .resumed_left
                .iter()
                .flat_map(|r| r.take_range(first, cut))
            {
                self.zeros.insert_range(a, b);
                self.resumed_zero_bytes
                    .fetch_add(g.range_bytes(a, b), Ordering::Relaxed);
                self.resumed_zero_blocks.fetch_add(b - a, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Bytes of written block `index`.
    pub(super) fn read_block(&self, index: u64) -> Option<Vec<u8>> {
        if !self.written.contains(index) {
            return None;
        }
        let read = self
            .target
            .read_at(self.geometry.offset(index), self.geometry.block_len(index));
        // A stream's block that has left cannot be read: expected (its
        // group is asked for as block ranges), not worth a warning.
        if self.target.as_stream().is_none() {
            if let Err(e) = &read {
                log::warn!("block {index}: {e}");
            }
        }
        read.ok()
    }

    /// Bytes of written block `index` if they are still in memory (zeros
    /// of a zero run, the staging buffer, a stream's window); None
    /// otherwise: nothing is read back from the target.
    pub(super) fn read_block_held(&self, index: u64) -> Option<Vec<u8>> {
        let len = self.geometry.block_len(index);
        if self.zeros.contains(index) {
            return Some(vec![0; len]);
        }
        if !self.written.contains(index) {
            return None;
        }
        self.target.read_held(self.geometry.offset(index), len)
    }

    /// Whether every written block of `[first, end)` is still in memory
    /// (zeros, or in the staging buffer): a FEC group that can be rebuilt
    /// without reading the target back.
    pub(super) fn held_in_memory(&self, first: u64, end: u64) -> bool {
        let g = &self.geometry;
        self.target.all_buffered(
            (first..end)
                .filter(|&i| self.written.contains(i) && !self.zeros.contains(i))
                .map(|i| g.offset(i)),
        )
    }
}

/// The check of a signed session's chunks in the staging writer: each
/// complete chunk is hashed there, on the writer thread, from the staging
/// buffer (no read-back, no worker), and compared with its signed leaf.
pub(super) struct Checker {
    pub(super) signed: Arc<Signed>,
    /// The image whose target holds this checker (weak: no cycle).
    pub(super) image: std::sync::Weak<Image>,
}

impl Verify for Checker {
    fn is_zero(&self, index: u64) -> bool {
        self.image
            .upgrade()
            .is_some_and(|i| i.zeros.contains(index))
    }

    fn check(&self, k: u64, bytes: &[u8]) -> bool {
        // Dropped: the session is over; nothing to keep.
        self.image.upgrade().is_none_or(|i| {
            self.signed
                .hashed(i.slots(), k, crate::proto::manifest::chunk_hash(bytes))
        })
    }

    fn check_zeros(&self, k: u64, _len: u64) -> bool {
        self.image
            .upgrade()
            .is_none_or(|i| self.signed.hashed_zeros(i.slots(), k))
    }
}

/// Blocks not claimed yet that the target can take now (a stream's
/// window), as `[first, end)` ranges. When a stream's window has room for
/// none of them (its consumer stalls with the window full), the first
/// block lacking alone: asking keeps the sender's repair rounds going
/// (one block each) until the consumer moves, instead of letting it end
/// the session for want of requests.
pub(super) fn missing_in_window(img: &Image) -> Vec<(u64, u64)> {
    let stop = img.window_end();
    let all = img.claimed.missing_ranges();
    let fit: Vec<(u64, u64)> = all
        .iter()
        .take_while(|&&(a, _)| a < stop)
        .map(|&(a, b)| (a, b.min(stop)))
        .collect();
    match all.first() {
        Some(&(a, _)) if fit.is_empty() => vec![(a, a + 1)],
        _ => fit,
    }
}
