//! The check of a signed session's chunks in the staging buffer: each
//! complete chunk is checked there, on the writer thread, before it is
//! written; chunks that landed elsewhere (zero runs, a resume file, a full
//! buffer) are put together from the storage first, and counted.

use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{bump, Shared, Stager};
use crate::error::Error;
use crate::store::handoff::Held;

/// Checks each complete chunk of the buffer before it is written (a signed
/// session: its BLAKE3 against the signed chunk hash). Called on the
/// writer thread only, never on a worker or copier.
pub trait Verify: Send + Sync {
    /// Whether block `index` is one of the sender's zero runs: its bytes
    /// are zeros put in place on the storage, filled in here as zeros
    /// rather than read.
    fn is_zero(&self, index: u64) -> bool;
    /// Chunk `k` is complete and `bytes` are all of it: whether to keep
    /// them (false: they fail the check and are not written; the verifier
    /// has [`forgotten`](Stager::forget) the chunk).
    fn check(&self, k: u64, bytes: &[u8]) -> bool;
    /// [`Self::check`] for a chunk of `len` bytes that are all zeros.
    fn check_zeros(&self, k: u64, len: u64) -> bool;
}

impl Shared {
    /// Bytes `[offset, offset + len)` are on the storage already (zeros of
    /// a zero run, blocks of a resume file): count them as landed, so that
    /// a checked chunk completes. Nothing to do without a [`Verify`].
    pub(super) fn landed_elsewhere(&self, offset: u64, len: u64) -> bool {
        if self.verify.get().is_none() {
            return false;
        }
        let mut wake = false;
        let (mut at, end) = (offset, offset + len);
        while at < end {
            let k = at / self.unit;
            let piece_end = end.min((k + 1) * self.unit);
            let n = piece_end - at;
            // AcqRel: as in `write`; the bytes are on the storage before.
            if self.landed[k as usize].fetch_add(n, Ordering::AcqRel) + n == self.chunk_len(k) {
                wake |= self.complete_elsewhere(k);
            }
            at = piece_end;
        }
        wake
    }

    /// Chunk `k` became complete on a thread that holds none of its
    /// buffer: mark its buffer ready, or, with none attached, queue it for
    /// the writer to check from the storage. True: wake the writer.
    pub(super) fn complete_elsewhere(&self, k: u64) -> bool {
        if self.verify.get().is_none() {
            return false;
        }
        if let Some(b) = self.pin(k, false) {
            // Release: pairs with the writer's Acquire load of `ready`.
            self.buffers[b].ready.store(true, Ordering::Release);
            self.unpin(k);
        } else {
            self.bufferless
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(k);
        }
        true
    }

    /// Forget what landed of chunk `k` (it failed its check: its blocks
    /// come again, and count from zero). The caller holds all of the
    /// chunk's blocks (none can land meanwhile).
    pub(super) fn forget(&self, k: u64) {
        // Release: the reset happens before the blocks are handed out
        // again (the caller's bitmap update follows), so the next landing
        // counts from zero.
        self.landed[k as usize].store(0, Ordering::Release);
    }

    /// Detached buffer `b` holds complete chunk `k` (or part of it, the
    /// rest on the storage): fill in the rest (zeros of zero runs, else
    /// read from the storage, counted) and check it; whether to write it.
    pub(super) fn check(&self, v: &dyn Verify, b: usize, k: u64, runs: &[(u64, u64)]) -> bool {
        let clen = self.chunk_len(k);
        let mut at = 0;
        let gaps = runs
            .iter()
            .chain(std::iter::once(&(clen, clen)))
            .filter_map(|&(s, e)| {
                let gap = (at < s).then_some((at, s));
                at = e;
                gap
            })
            .collect::<Vec<_>>();
        for (s, e) in gaps {
            if let Err(e) = self.fill(v, b, k, s, e) {
                self.fail(Error::target_io("cannot read target to check a chunk", &e));
                return false;
            }
        }
        bump(&self.counters.chunks_checked, 1);
        // SAFETY: buffer b is detached (only this thread uses it until it
        // is freed) and every byte of the chunk is in it now.
        let bytes = unsafe { std::slice::from_raw_parts(self.buf_ptr(b, 0), clen as usize) };
        v.check(k, bytes)
    }

    /// Fill bytes `[s, e)` of chunk `k` in detached buffer `b`: blocks of
    /// zero runs with zeros, others from the storage.
    fn fill(&self, v: &dyn Verify, b: usize, k: u64, s: u64, e: u64) -> std::io::Result<()> {
        let base = k * self.unit;
        let mut at = s;
        while at < e {
            let zero = v.is_zero((base + at) / self.block_size);
            // The run of blocks alike (zeros or not) from here.
            let mut to = ((base + at) / self.block_size + 1) * self.block_size - base;
            while to < e && v.is_zero((base + to) / self.block_size) == zero {
                to += self.block_size;
            }
            let to = to.min(e);
            // SAFETY: buffer b is detached (ours alone) and [at, to) lies
            // inside the chunk.
            let dst =
                unsafe { std::slice::from_raw_parts_mut(self.buf_ptr(b, at), (to - at) as usize) };
            if zero {
                dst.fill(0);
            } else {
                self.storage.file.read_exact_at(dst, base + at)?;
                bump(&self.counters.bytes_read_back, to - at);
            }
            at = to;
        }
        Ok(())
    }

    /// Check the chunks queued as complete with no buffer, using a free
    /// buffer to put each together in (none free: later).
    pub(super) fn check_bufferless(&self, v: &dyn Verify) -> bool {
        let queued =
            std::mem::take(&mut *self.bufferless.lock().unwrap_or_else(|p| p.into_inner()));
        let worked = !queued.is_empty();
        let mut left = Vec::new();
        for k in queued {
            let clen = self.chunk_len(k);
            let first = self.first_block(k);
            let blocks = clen.div_ceil(self.block_size);
            if (first..first + blocks).all(|i| v.is_zero(i)) {
                bump(&self.counters.chunks_checked, 1);
                v.check_zeros(k, clen);
                continue;
            }
            let Some(b) = self.take_buffer() else {
                left.push(k);
                continue;
            };
            // Nothing of the chunk is in the buffer: its bytes were
            // written already, so there is nothing to write back whatever
            // the verdict (a failed chunk's blocks come again).
            self.check(v, b, k, &[]);
            self.put_buffer(b);
        }
        if !left.is_empty() {
            self.bufferless
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(left);
        }
        worked
    }
}

impl Stager {
    /// Check every complete chunk with `v` before it is written (a signed
    /// session). Set before any block is written; a second call is ignored.
    pub fn set_verify(&self, v: Arc<dyn Verify>) {
        let _ = self.shared.verify.set(v);
    }

    /// Bytes `[offset, offset + len)` are on the storage already (made
    /// zeros, or from a resume file): with a [`Verify`], count them
    /// towards their chunks, whose check then reads (or, for zero runs,
    /// fills in) them.
    pub fn landed_elsewhere(&self, offset: u64, len: u64) {
        if self.shared.landed_elsewhere(offset, len) {
            self.waker.unpark();
        }
    }

    /// Chunk `k` failed its check: what landed of it is forgotten, so that
    /// its blocks, received again, complete it again. The caller holds
    /// every block of it (none lands meanwhile).
    pub fn forget(&self, k: u64) {
        self.shared.forget(k);
    }

    /// Whether the block at `offset` can be taken now without going to
    /// the storage before its chunk is checked: always without a
    /// [`Verify`]; with one, its chunk gets a buffer attached here if it
    /// has none (none free: false, counted, and the caller leaves the
    /// block to be sent again). The buffer stays attached until the chunk
    /// is complete (or evicted, which only a buffer smaller than the image
    /// does), so the copy that follows finds it. `held`'s producer
    /// remembers the chunk it last saw attached: once per chunk per worker,
    /// not per block.
    pub fn has_room(&self, offset: u64, held: Option<Held<'_>>) -> bool {
        let sh = &self.shared;
        if sh.verify.get().is_none() {
            return true;
        }
        let k = offset / sh.unit;
        if held.is_some_and(|h| h.producer.attached() == Some(k)) {
            return true;
        }
        // Relaxed: a complete chunk's block is a duplicate (the claim that
        // follows says so); a stale value only attaches a buffer that is
        // freed unwritten.
        if sh.landed[k as usize].load(Ordering::Relaxed) == sh.chunk_len(k) {
            return true;
        }
        if sh.pin(k, true).is_none() {
            bump(&sh.counters.overflow_blocks, 1);
            bump(&sh.counters.blocks_refused, 1);
            return false;
        }
        sh.unpin(k);
        if let Some(h) = held {
            h.producer.set_attached(k);
        }
        true
    }
}
