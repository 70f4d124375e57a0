//! The writer thread (writes complete chunks, evicts the oldest incomplete
//! ones, flushes) and the thread that faults the staging buffers in.

use std::ptr::NonNull;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::storage::Writeback;
use super::{bump, max_ns, Shared, IDLE, POPULATE_STEP};
use crate::error::Error;

impl Shared {
    /// Byte runs of chunk `k` (relative to the chunk) present in buffer `b`.
    fn runs(&self, b: usize, k: u64) -> Vec<(u64, u64)> {
        let (base, clen) = (k * self.unit, self.chunk_len(k));
        let first = self.first_block(k);
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for (w, word) in self.buffers[b].present.iter().enumerate() {
            let mut v = word.load(Ordering::Relaxed);
            while v != 0 {
                let bit = v.trailing_zeros() as u64;
                v &= v - 1;
                let block = first + w as u64 * 64 + bit;
                let s = (block * self.block_size).max(base) - base;
                let e = ((block + 1) * self.block_size).min(base + clen) - base;
                match runs.last_mut() {
                    Some(r) if r.1 == s => r.1 = e,
                    _ => runs.push((s, e)),
                }
            }
        }
        runs
    }

    /// Write detached buffer `b` (chunk `k`) and free it; a complete chunk
    /// is checked first when there is a [`Verify`], and not written if it
    /// fails.
    pub(super) fn write_out(&self, b: usize, k: u64, lag: &mut Writeback) {
        let runs = self.runs(b, k);
        // Acquire: every byte landed elsewhere is on the storage before
        // its count (see `write`).
        let complete = self.landed[k as usize].load(Ordering::Acquire) == self.chunk_len(k);
        let keep = match self.verify.get() {
            // Nothing of the chunk in the buffer (attached for a block
            // that turned out a duplicate): nothing to check or write.
            Some(_) if runs.is_empty() => false,
            Some(v) if complete => self.check(&**v, b, k, &runs),
            _ => true,
        };
        if !keep {
            self.free_detached(b, k);
            return;
        }
        let full = runs == [(0, self.chunk_len(k))];
        let t0 = Instant::now();
        let mut result = Ok(());
        for &(s, e) in &runs {
            // SAFETY: buffer b is detached: no worker writes it until it is
            // freed below; [s, e) lies inside the chunk.
            let bytes = unsafe {
                std::slice::from_raw_parts(self.buf_ptr(b, s) as *const u8, (e - s) as usize)
            };
            if self.error.get().is_none() {
                result = result.and_then(|()| self.storage.write(bytes, k * self.unit + s, full));
            }
        }
        let stored: u64 = runs.iter().map(|r| r.1 - r.0).sum();
        if result.is_ok() && self.storage.paced && stored > 0 {
            result = lag.started(&self.storage, k * self.unit, self.chunk_len(k));
        }
        max_ns(&self.counters.write_max_ns, t0);
        match result {
            Ok(()) => {
                bump(&self.counters.bytes_stored, stored);
                let c = if full {
                    &self.counters.chunks_full
                } else {
                    &self.counters.chunks_partial
                };
                bump(c, 1);
            }
            Err(e) => self.fail(Error::target_io("cannot write target", &e)),
        }
        self.free_detached(b, k);
    }

    /// Free detached buffer `b` (it held chunk `k`).
    fn free_detached(&self, b: usize, k: u64) {
        let meta = &self.buffers[b];
        for w in meta.present.iter() {
            w.store(0, Ordering::Relaxed);
        }
        meta.ready.store(false, Ordering::Relaxed);
        // Release: readers waiting for 0 then read the storage we wrote.
        self.flushing[k as usize].fetch_sub(1, Ordering::Release);
        self.put_buffer(b);
    }
}

/// Fault in buffers `from..to` of the pool, `stride` bytes apart (advice:
/// without MADV_POPULATE_WRITE, before 5.14, pages fault on first use
/// instead).
pub(super) fn populate(pool: NonNull<u8>, stride: u64, from: usize, to: usize) {
    let chunk = stride as usize;
    // SAFETY: advice on a range of our own pool mapping (callers pass
    // buffer indices inside it); the kernel only faults pages in.
    unsafe {
        libc::madvise(
            pool.as_ptr().add(from * chunk).cast(),
            (to - from) * chunk,
            libc::MADV_POPULATE_WRITE,
        );
    }
}

/// The populating thread: fault in the buffers `Stager::new` did not, a
/// step at a time (here, not on a worker's first copy), and hand each step
/// out as it is ready.
pub(super) fn populate_rest(sh: &Shared) {
    let nbuf = sh.buffers.len();
    let mut ready = sh.populated.load(Ordering::Relaxed);
    while ready < nbuf && !sh.stop.load(Ordering::Relaxed) {
        let to = nbuf.min(ready + POPULATE_STEP);
        populate(sh.pool_ptr, sh.stride, ready, to);
        (ready..to).for_each(|b| sh.put_buffer(b));
        // Release, after the buffers are free: the writer's Acquire load
        // bounds its scan of buffers in use, which must not take a
        // populated buffer for one in use before it was ever handed out.
        sh.populated.store(to, Ordering::Release);
        ready = to;
    }
}

/// The writer thread: write ready chunks, evict the oldest incomplete ones
/// when more than half the buffer is in use, and everything on a flush
/// request or at the end.
pub(super) fn writer_loop(sh: &Shared) {
    let mut lag = Writeback::default();
    let nbuf = sh.buffers.len();
    loop {
        let mut worked = false;
        let stopping = sh.stop.load(Ordering::Acquire);
        let flush_to = sh.flush_req.load(Ordering::Acquire);
        let flush_all =
            stopping || flush_to > *sh.flush_done.lock().unwrap_or_else(|p| p.into_inner());
        // Chunks complete without a buffer: check them (rare: resume,
        // zero runs, a full buffer).
        if let Some(v) = sh.verify.get() {
            worked |= sh.check_bufferless(&**v);
        }
        // Complete chunks first, in any order.
        for b in 0..nbuf {
            if sh.buffers[b].ready.load(Ordering::Acquire) {
                if let Some(k) = sh.detach(b) {
                    sh.write_out(b, k, &mut lag);
                    worked = true;
                }
            }
        }
        // Then the oldest incomplete ones while more than half is in use,
        // and on a flush every one attached before the request.
        let mark = if flush_all {
            sh.next_seq.load(Ordering::Acquire)
        } else {
            0
        };
        loop {
            // Buffers not faulted in yet are not free either: skip them.
            let oldest = (0..sh.populated.load(Ordering::Acquire))
                .filter(|&b| sh.free[b / 64].load(Ordering::Relaxed) & (1 << (b % 64)) == 0)
                .map(|b| (sh.buffers[b].seq.load(Ordering::Relaxed), b))
                .min();
            let Some((seq, b)) = oldest else { break };
            if seq >= mark && !sh.crowded() {
                break;
            }
            match sh.detach(b) {
                Some(k) => {
                    sh.write_out(b, k, &mut lag);
                    worked = true;
                }
                // Taken by a worker and not attached yet: its seq is about
                // to change; look again.
                None => std::thread::yield_now(),
            }
        }
        if flush_all {
            let mut done = sh.flush_done.lock().unwrap_or_else(|p| p.into_inner());
            *done = (*done).max(flush_to);
            sh.flushed.notify_all();
            if stopping {
                return;
            }
        }
        if !worked {
            std::thread::park_timeout(IDLE);
        }
    }
}
