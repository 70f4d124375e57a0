//! The staging writer: workers copy blocks into aligned 1 MiB chunks of an
//! anonymous, pre-faulted buffer;
//! one writer thread writes each chunk to the target once it is complete.
//!
//! Why not copy straight into a shared mapping of the target (the first
//! design): every first touch of a target page then faults on the worker's
//! thread. On tmpfs the kernel zeroes the page before the block overwrites
//! it (61 % of the receiver's CPU in `clear_page_erms`); on a block device
//! the fault reads the old page from the disk (read-before-write, the
//! device read as much as it wrote); on a disk file the fault may sleep in
//! the dirty-page throttle; and nothing was written back until the final
//! `msync`. Here the worker only copies into memory that is already faulted
//! and reused chunk after chunk. The writer thread `pwrite`s whole pages, so
//! the page cache never reads or zeroes a page it is about to overwrite
//! (tmpfs, ext4), writes block devices with `O_DIRECT` (no page cache, no
//! read), and starts writeback chunk by chunk with `sync_file_range`,
//! waiting for it [`WRITEBACK_LAG`] behind, so dirty memory stays bounded
//! and the disk is busy all along instead of at the end.
//!
//! Lost blocks leave chunks incomplete. They stay in the buffer (a repair
//! pass may fill them) until the buffer is half used; then the writer
//! writes the oldest incomplete chunk's blocks as they are ("partial"
//! chunk), and blocks of that chunk arriving later go to a new buffer.
//! When no buffer is free the worker writes its block itself (counted in
//! `overflow_blocks`): the one case in which a worker waits for storage.
//!
//! Lock-free protocol (one slot word per chunk, see [`Slot`]): a worker
//! *pins* the chunk's buffer (or attaches a free one) with a CAS that adds
//! one user, copies, marks its block present, counts the bytes landed in
//! the chunk, and unpins. The writer *detaches* a buffer only with a CAS
//! from "this buffer, no users" to "no buffer", so it never writes a buffer
//! that a worker is still copying into. Free buffers are bits in a bitmap.
//!
//! On the AF_XDP path a worker does not copy at all: it hands the block,
//! still in its UMEM frame, through its lane ([`super::handoff`]) to the
//! lane's copier thread, which does the copy above and gives the frame
//! back. One copier per lane, so copying scales with the workers. Reads
//! and flushes first wait for the lanes to be copied ("settle").
//!
//! Where things are: this file holds the buffer, its slot protocol and the
//! [`Stager`] the receiver calls; `storage` the target's descriptors and
//! paced writeback; `copier` the hand-off from the workers' lanes;
//! `verify` the check of signed chunks before they are written;
//! `thread` the writer and populating threads.

mod copier;
mod storage;
#[cfg(test)]
mod tests;
mod thread;
mod verify;

pub use storage::Storage;
pub use verify::Verify;

use std::os::unix::fs::FileExt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use memmap2::{MmapMut, MmapOptions};

use self::thread::{populate, populate_rest, writer_loop};
use super::handoff::Lane;
use crate::error::{Error, Result};

/// Bytes per chunk: the unit of assembly and of writes. A multiple of any
/// page and logical block size, so chunk writes need no read-modify-write.
/// A signed session stages its signed chunks instead ([`StoreConfig::unit`]).
pub const CHUNK: u64 = 1 << 20;
/// Staging buffers start on a multiple of this (`O_DIRECT` needs the
/// memory aligned to the logical block size too).
const BUFFER_ALIGN: u64 = 4096;
/// Default staging buffer: 256 MiB absorbs a storage stall of about 215 ms
/// at 10 GbE line rate (1.25 GB/s).
pub const DEFAULT_BUFFER: u64 = 256 << 20;
/// Fewest chunks a buffer has (smaller requests are rounded up).
const MIN_CHUNKS: usize = 4;
/// Writeback of a written range is awaited once this much was written after
/// it: bounds the dirty pages of the target.
pub const WRITEBACK_LAG: u64 = 32 << 20;
/// Buffers faulted in by `Stager::new` itself; a thread of its own faults
/// in the rest, a step at a time, and frees each step when it is ready, so
/// opening a target (on the first packet, on a worker) costs a few ms, not
/// the whole buffer. Not the writer thread: a storage stall in its first
/// writes would stop the faulting while workers need buffers, and they
/// would write blocks themselves (seen in the bench on the loop device).
const EAGER: usize = 8;
/// Buffers faulted in per step (16 MiB, a few ms).
const POPULATE_STEP: usize = 16;
/// How long the writer sleeps when there is nothing to do.
const IDLE: Duration = Duration::from_millis(2);
/// The next stager's id.
static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

/// Staging sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreConfig {
    /// Bytes of staging buffer (rounded up to whole chunks, at least 4).
    pub buffer_bytes: u64,
    /// Largest image accepted (`--max-image-size`). None: what the target
    /// can hold (see `store::target::Target::open`).
    pub max_image_size: Option<u64>,
    /// Bytes per chunk of the buffer: [`CHUNK`], or in a signed session
    /// the bytes of a signed chunk, so that each signed chunk is assembled
    /// in one buffer and hashed there ([`Verify`]).
    pub unit: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            buffer_bytes: DEFAULT_BUFFER,
            max_image_size: None,
            unit: CHUNK,
        }
    }
}

/// What the writer did, for the status page.
#[derive(Debug, Default)]
pub struct StoreCounters {
    /// Bytes written to the target (by the writer and by overflowing workers).
    pub bytes_stored: AtomicU64,
    /// Complete chunks written in one piece.
    pub chunks_full: AtomicU64,
    /// Incomplete chunks written as they were (loss, or a flush).
    pub chunks_partial: AtomicU64,
    /// Blocks a worker had to write itself because no buffer was free.
    pub overflow_blocks: AtomicU64,
    /// Most buffer bytes in use at once.
    pub buffer_peak: AtomicU64,
    /// Longest single write or writeback wait of the writer, ns.
    pub write_max_ns: AtomicU64,
    /// Bytes the writer read from the storage to check a chunk: blocks a
    /// resume file says are there, or that were written before their
    /// chunk was complete (an incomplete chunk evicted, a full buffer).
    /// Zero in a signed session without resume or eviction.
    pub bytes_read_back: AtomicU64,
    /// Blocks refused (not claimed, so asked for again) because their
    /// checked chunk had no buffer and none was free: with a [`Verify`],
    /// a block written straight to the target would have to be read back.
    /// Also counted in `overflow_blocks`.
    pub blocks_refused: AtomicU64,
    /// Chunks checked by the [`Verify`] (zero without one).
    pub chunks_checked: AtomicU64,
}

/// The slot word of a chunk: low 32 bits the attached buffer + 1 (0: none),
/// high 32 bits the number of workers or readers using it.
struct Slot;

impl Slot {
    const USER: u64 = 1 << 32;
    fn buffer(s: u64) -> Option<usize> {
        match s as u32 {
            0 => None,
            b => Some(b as usize - 1),
        }
    }
    fn users(s: u64) -> u64 {
        s >> 32
    }
}

/// Per-buffer bookkeeping.
struct BufferMeta {
    /// Chunk the buffer was last attached to (validated by the slot CAS).
    chunk: AtomicU64,
    /// Attach order, for evicting the oldest incomplete chunk.
    seq: AtomicU64,
    /// All of the chunk's bytes have landed: write it now.
    ready: AtomicBool,
    /// Blocks of the chunk present in this buffer (bit i: the chunk's
    /// first overlapping block + i).
    present: Box<[AtomicU64]>,
}

/// State shared by the workers, readers and the writer thread.
struct Shared {
    /// Owns the staging memory that `pool_ptr` points into.
    _pool: MmapMut,
    pool_ptr: NonNull<u8>,
    buffers: Box<[BufferMeta]>,
    /// Bit set: buffer free.
    free: Box<[AtomicU64]>,
    free_count: AtomicUsize,
    /// Buffers faulted in and handed out so far (the rest come a step at a
    /// time, from the populating thread).
    populated: AtomicUsize,
    slots: Box<[AtomicU64]>,
    /// Bytes of each chunk that have landed (buffer or direct), ever.
    landed: Box<[AtomicU64]>,
    /// Detached buffers of a chunk not yet written (readers wait for 0).
    flushing: Box<[AtomicU32]>,
    next_seq: AtomicU64,
    len: u64,
    /// Bytes per chunk ([`StoreConfig::unit`]).
    unit: u64,
    /// Bytes between two buffers' starts: `unit` rounded up to
    /// [`BUFFER_ALIGN`].
    stride: u64,
    block_size: u64,
    /// Checks complete chunks before they are written (signed sessions).
    verify: OnceLock<Arc<dyn Verify>>,
    /// Chunks complete with no buffer attached (their bytes went to the
    /// storage some other way: zeros, resume, a worker's own write), for
    /// the writer to check. Pushed only off the data path (zero runs,
    /// resume) or where a worker writes to storage itself anyway.
    bufferless: Mutex<Vec<u64>>,
    storage: Storage,
    counters: StoreCounters,
    error: OnceLock<Error>,
    stop: AtomicBool,
    flush_req: AtomicU64,
    flush_done: Mutex<u64>,
    flushed: Condvar,
    /// The workers' lanes bound to this stager, each with its copier
    /// thread.
    lanes: Mutex<Vec<(Arc<Lane>, JoinHandle<()>)>>,
    /// `lanes.len()`, read without the lock (0: nothing to settle).
    lane_count: AtomicUsize,
    /// Tell the copiers to drain their lanes and end.
    copier_stop: AtomicBool,
    /// Unique among the stagers of the process (never 0), for binding
    /// lanes: an address could be reused by a later stager.
    id: usize,
}

// SAFETY: the raw pool pointer is only dereferenced inside ranges that the
// slot protocol gives one thread at a time (a worker's own block range
// while pinned, the writer's detached buffer); everything else is atomics,
// locks or immutable after construction.
unsafe impl Send for Shared {}
// SAFETY: see above.
unsafe impl Sync for Shared {}

/// The staging buffer and its writer thread.
pub struct Stager {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
    /// Faults in the buffers `new` did not; ends when all are, or on drop.
    populator: Option<JoinHandle<()>>,
    waker: Thread,
}

impl std::fmt::Debug for Stager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stager")
            .field("buffers", &self.shared.buffers.len())
            .field("len", &self.shared.len)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn chunk_len(&self, k: u64) -> u64 {
        self.unit.min(self.len - k * self.unit)
    }

    fn first_block(&self, k: u64) -> u64 {
        k * self.unit / self.block_size
    }

    /// Pointer to byte `at` of buffer `b`.
    fn buf_ptr(&self, b: usize, at: u64) -> *mut u8 {
        debug_assert!(at <= self.unit);
        // SAFETY: b < buffers and at <= unit <= stride keep the pointer
        // inside the pool.
        unsafe {
            self.pool_ptr
                .as_ptr()
                .add(b * self.stride as usize + at as usize)
        }
    }

    fn take_buffer(&self) -> Option<usize> {
        for (w, word) in self.free.iter().enumerate() {
            let mut v = word.load(Ordering::Relaxed);
            while v != 0 {
                let bit = v.trailing_zeros() as usize;
                // Acquire: pairs with the Release in `put_buffer`, so the
                // writer's last reads of the buffer happen before we write it.
                match word.compare_exchange_weak(
                    v,
                    v & !(1 << bit),
                    Ordering::Acquire,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        let left = self.free_count.fetch_sub(1, Ordering::Relaxed) - 1;
                        let used = (self.buffers.len() - left) as u64 * self.unit;
                        self.counters.buffer_peak.fetch_max(used, Ordering::Relaxed);
                        return Some(w * 64 + bit);
                    }
                    Err(now) => v = now,
                }
            }
        }
        None
    }

    fn put_buffer(&self, b: usize) {
        self.free_count.fetch_add(1, Ordering::Relaxed);
        // Release: see `take_buffer`.
        self.free[b / 64].fetch_or(1 << (b % 64), Ordering::Release);
    }

    /// Pin chunk `k`'s buffer, attaching a free one if it has none and
    /// `attach` is set; None when there is none (or none free).
    fn pin(&self, k: u64, attach: bool) -> Option<usize> {
        let slot = &self.slots[k as usize];
        let mut s = slot.load(Ordering::Acquire);
        loop {
            if let Some(b) = Slot::buffer(s) {
                // Acquire: the buffer's attach (chunk, seq, cleared bits) is
                // visible before we use it.
                match slot.compare_exchange_weak(
                    s,
                    s + Slot::USER,
                    Ordering::Acquire,
                    Ordering::Acquire,
                ) {
                    Ok(_) => return Some(b),
                    Err(now) => {
                        s = now;
                        continue;
                    }
                }
            }
            if !attach {
                return None;
            }
            let b = self.take_buffer()?;
            let meta = &self.buffers[b];
            meta.chunk.store(k, Ordering::Relaxed);
            meta.seq.store(
                self.next_seq.fetch_add(1, Ordering::Relaxed),
                Ordering::Relaxed,
            );
            // Release: publishes chunk and seq to whoever reads the slot
            // with Acquire (the writer, before it detaches the buffer).
            match slot.compare_exchange(
                0,
                (b as u64 + 1) | Slot::USER,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(b),
                Err(now) => {
                    // Another worker attached one first: give ours back.
                    self.put_buffer(b);
                    s = now;
                }
            }
        }
    }

    fn unpin(&self, k: u64) {
        // Release: our copy into the buffer happens before the writer's
        // detach (an AcqRel CAS that needs zero users).
        self.slots[k as usize].fetch_sub(Slot::USER, Ordering::Release);
    }

    fn fail(&self, e: Error) {
        if self.error.set(e).is_ok() {
            if let Some(e) = self.error.get() {
                log::error!("{e}");
            }
        }
    }

    /// A worker's write of whole blocks `data` at `offset` (a block's
    /// start; usually one block); true when the writer should be woken (a
    /// chunk is complete or more than half the buffer is in use).
    fn write(&self, offset: u64, data: &[u8]) -> bool {
        let mut wake = false;
        let end = offset + data.len() as u64;
        let mut at = offset;
        while at < end {
            // One block's bytes within one chunk at a time.
            let k = at / self.unit;
            let index = at / self.block_size;
            let piece_end = end
                .min((k + 1) * self.unit)
                .min((index + 1) * self.block_size);
            let piece = &data[(at - offset) as usize..(piece_end - offset) as usize];
            let pinned = self.pin(k, true);
            match pinned {
                Some(b) => {
                    // SAFETY: the bytes [at, piece_end) of chunk k belong to
                    // block `index`, which the caller's bitmap gave to this
                    // thread alone; buffer b is attached to chunk k and
                    // pinned, so the writer does not read it meanwhile. The
                    // piece lies inside the chunk, so inside the buffer.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            piece.as_ptr(),
                            self.buf_ptr(b, at - k * self.unit),
                            piece.len(),
                        );
                    }
                    let bit = index - self.first_block(k);
                    // Relaxed: published by the unpin's Release below.
                    self.buffers[b].present[bit as usize / 64]
                        .fetch_or(1 << (bit % 64), Ordering::Relaxed);
                }
                None => {
                    bump(&self.counters.overflow_blocks, 1);
                    match self.storage.write(piece, at, false) {
                        Ok(()) => bump(&self.counters.bytes_stored, piece.len() as u64),
                        Err(e) => self.fail(Error::target_io("cannot write target", &e)),
                    }
                }
            }
            // AcqRel: the last piece of a chunk sees every earlier piece's
            // copy (Release/Acquire chain on `landed`).
            let n = piece.len() as u64;
            let landed = self.landed[k as usize].fetch_add(n, Ordering::AcqRel) + n;
            match pinned {
                Some(b) => {
                    if landed == self.chunk_len(k) {
                        // Release: pairs with the writer's Acquire load of `ready`.
                        self.buffers[b].ready.store(true, Ordering::Release);
                        wake = true;
                    }
                    self.unpin(k);
                }
                // Written to the storage above (no buffer was free): a
                // check still needs the chunk complete somewhere.
                None if landed == self.chunk_len(k) => wake |= self.complete_elsewhere(k),
                None => {}
            }
            at = piece_end;
        }
        wake || self.crowded()
    }

    /// More than half of the buffers handed out so far are in use, and
    /// it matters: with a [`Verify`] and a buffer for every chunk at once
    /// (an image no larger than the buffer), incomplete chunks just wait
    /// for their blocks, since one written early would be read back to be
    /// checked.
    fn crowded(&self) -> bool {
        if self.verify.get().is_some() && self.buffers.len() >= self.slots.len() {
            return false;
        }
        self.free_count.load(Ordering::Relaxed) * 2 < self.populated.load(Ordering::Relaxed)
    }

    /// Detach buffer `b` if it is attached and unused; the chunk it held.
    fn detach(&self, b: usize) -> Option<u64> {
        let k = self.buffers[b].chunk.load(Ordering::Acquire);
        let slot = self.slots.get(k as usize)?;
        loop {
            let s = slot.load(Ordering::Acquire);
            if Slot::buffer(s) != Some(b) {
                return None;
            }
            if Slot::users(s) > 0 {
                std::thread::yield_now();
                continue;
            }
            // Counted before the detach so that a reader who sees the slot
            // empty also sees the chunk in flight (Release by the CAS).
            self.flushing[k as usize].fetch_add(1, Ordering::Relaxed);
            // AcqRel: Acquire makes every pinned worker's copy (unpin
            // Release) visible to our write; Release orders the count above.
            if slot
                .compare_exchange(s, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                return Some(k);
            }
            self.flushing[k as usize].fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Read `out.len()` bytes at `offset`, from the buffer where a block
    /// still is, else from the storage (after any write in flight).
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.read_from(offset, out, true).map(|_| ())
    }

    /// [`Self::read`], going to the storage for the pieces no buffer holds
    /// only when `storage` is set; without it, false as soon as one piece
    /// is not in a buffer (`out` then holds part of the bytes).
    fn read_from(&self, offset: u64, out: &mut [u8], storage: bool) -> std::io::Result<bool> {
        self.settle();
        let end = offset + out.len() as u64;
        let mut at = offset;
        while at < end {
            let k = at / self.unit;
            let block = at / self.block_size;
            let piece_end = end
                .min((k + 1) * self.unit)
                .min((block + 1) * self.block_size);
            let dst = &mut out[(at - offset) as usize..(piece_end - offset) as usize];
            if !self.copy_buffered(k, block, at, dst) {
                if !storage {
                    return Ok(false);
                }
                // Acquire: pairs with `write_out`'s Release.
                while self.flushing[k as usize].load(Ordering::Acquire) != 0 {
                    std::thread::sleep(Duration::from_micros(50));
                }
                self.storage.file.read_exact_at(dst, at)?;
            }
            at = piece_end;
        }
        Ok(true)
    }

    /// Copy the bytes of block `block` of chunk `k` from image offset `at`
    /// into `dst` if the chunk's buffer holds the block; whether it did.
    fn copy_buffered(&self, k: u64, block: u64, at: u64, dst: &mut [u8]) -> bool {
        self.with_buffered(k, block, |b| {
            // SAFETY: the block is present (its copy happened before its
            // writer's unpin, which our pin's Acquire follows) and nobody
            // writes a block twice; b stays attached while pinned.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    self.buf_ptr(b, at - k * self.unit),
                    dst.as_mut_ptr(),
                    dst.len(),
                );
            }
        })
        .is_some()
    }

    /// `f(buffer)` with chunk `k`'s buffer pinned, if it holds block
    /// `block`; None when the chunk has no buffer or the block is not in it.
    fn with_buffered<R>(&self, k: u64, block: u64, f: impl FnOnce(usize) -> R) -> Option<R> {
        let b = self.pin(k, false)?;
        let bit = block - self.first_block(k);
        // Relaxed: the present bit was published by the unpin (Release)
        // that our pin's Acquire follows.
        let word = self.buffers[b].present[bit as usize / 64].load(Ordering::Relaxed);
        let r = (word & (1 << (bit % 64)) != 0).then(|| f(b));
        self.unpin(k);
        r
    }
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

fn max_ns(c: &AtomicU64, since: Instant) {
    c.fetch_max(since.elapsed().as_nanos() as u64, Ordering::Relaxed);
}

impl Stager {
    /// A staging buffer of `cfg.buffer_bytes` for an image of `len` bytes
    /// in blocks of `block_size`, written to `storage` by a new thread.
    pub fn new(storage: Storage, len: u64, block_size: u32, cfg: &StoreConfig) -> Result<Stager> {
        let internal = |what: &str, e: std::io::Error| {
            Error::new(crate::error::ErrorCode::Internal, format!("{what}: {e}"))
        };
        let unit = cfg.unit.max(1);
        let stride = unit.next_multiple_of(BUFFER_ALIGN);
        let chunks = len.div_ceil(unit);
        let nbuf = (cfg.buffer_bytes.div_ceil(unit) as usize)
            .max(MIN_CHUNKS)
            .min(chunks.max(MIN_CHUNKS as u64) as usize);
        let mut pool = MmapOptions::new()
            .len(nbuf * stride as usize)
            .map_anon()
            .map_err(|e| internal("cannot allocate the staging buffer", e))?;
        // Small pages, even where THP is on for every mapping: in the bench
        // (ext4 target, unpaced and 2 Gbit/s) huge pages here left workers
        // without a free buffer, writing blocks themselves, in 4 of 15 runs
        // (up to 23235 blocks, and 1118 ring drops in one), small pages in
        // none of 12; the buffer is copied in 1400-8192 byte pieces, so
        // the TLB gains little. The cause in the kernel was not pinned
        // down (no compaction stalls were counted).
        // SAFETY: advice on our own fresh anonymous mapping; failure only
        // leaves the kernel's default.
        unsafe {
            libc::madvise(pool.as_mut_ptr().cast(), pool.len(), libc::MADV_NOHUGEPAGE);
        }
        let pool_ptr = NonNull::new(pool.as_mut_ptr())
            .ok_or_else(|| internal("staging buffer", std::io::ErrorKind::OutOfMemory.into()))?;
        let block_size = u64::from(block_size.max(1));
        let bits = (unit / block_size + 2) as usize;
        let buffers = (0..nbuf)
            .map(|_| BufferMeta {
                chunk: AtomicU64::new(u64::MAX),
                seq: AtomicU64::new(0),
                ready: AtomicBool::new(false),
                present: (0..bits.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            })
            .collect();
        let eager = nbuf.min(EAGER);
        populate(pool_ptr, stride, 0, eager);
        let free = (0..nbuf.div_ceil(64))
            .map(|w| {
                let n = eager.saturating_sub(w * 64).min(64);
                AtomicU64::new(if n == 64 { u64::MAX } else { (1 << n) - 1 })
            })
            .collect();
        let shared = Arc::new(Shared {
            _pool: pool,
            pool_ptr,
            buffers,
            free,
            free_count: AtomicUsize::new(eager),
            populated: AtomicUsize::new(eager),
            slots: (0..chunks).map(|_| AtomicU64::new(0)).collect(),
            landed: (0..chunks).map(|_| AtomicU64::new(0)).collect(),
            flushing: (0..chunks).map(|_| AtomicU32::new(0)).collect(),
            next_seq: AtomicU64::new(0),
            len,
            unit,
            stride,
            block_size,
            verify: OnceLock::new(),
            bufferless: Mutex::new(Vec::new()),
            storage,
            counters: StoreCounters::default(),
            error: OnceLock::new(),
            stop: AtomicBool::new(false),
            flush_req: AtomicU64::new(0),
            flush_done: Mutex::new(0),
            flushed: Condvar::new(),
            lanes: Mutex::new(Vec::new()),
            lane_count: AtomicUsize::new(0),
            copier_stop: AtomicBool::new(false),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        });
        let s = shared.clone();
        let populator = (eager < nbuf)
            .then(|| {
                std::thread::Builder::new()
                    .name("xdpcast-stage".into())
                    .spawn(move || {
                        // Off the workers' cores, but at the priority of
                        // the worker that opened the target (inherited):
                        // the workers need these buffers within the ring's
                        // first fill, and it runs only until they are all
                        // faulted in (tens of ms of CPU for 256 MiB).
                        crate::cpu::move_off_workers();
                        populate_rest(&s)
                    })
            })
            .transpose()
            .map_err(|e| internal("cannot start the staging thread", e))?;
        let s = shared.clone();
        let writer = std::thread::Builder::new()
            .name("xdpcast-writer".into())
            .spawn(move || {
                // Off the workers' cores when the process has others (it
                // is started from the worker that opens the target).
                crate::cpu::place_background();
                writer_loop(&s)
            })
            .map_err(|e| internal("cannot start the writer thread", e))?;
        let waker = writer.thread().clone();
        Ok(Stager {
            shared,
            writer: Some(writer),
            populator,
            waker,
        })
    }

    /// Copy block bytes `data` to image `offset` (a block's start). Never
    /// waits for storage unless the whole buffer is in use.
    pub fn write(&self, offset: u64, data: &[u8]) {
        if self.shared.write(offset, data) {
            self.waker.unpark();
        }
    }

    /// Bytes at `offset`, wherever they are now.
    pub fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.shared.read(offset, out)
    }

    /// Bytes at `offset` if every one of them is still in the staging
    /// buffer (not written out yet); false, and nothing read from the
    /// storage, when some are not. A signed session rebuilds a FEC group
    /// from these only: it never reads the target back.
    pub fn read_buffered(&self, offset: u64, out: &mut [u8]) -> bool {
        // Without the storage, nothing can fail but a missing piece.
        self.shared.read_from(offset, out, false).unwrap_or(false)
    }

    /// Whether the staging buffer holds every block at `offsets` now
    /// (their chunks not written out yet), once the workers' lanes are
    /// copied.
    pub fn all_buffered(&self, offsets: impl IntoIterator<Item = u64>) -> bool {
        let sh = &self.shared;
        sh.settle();
        offsets.into_iter().all(|at| {
            sh.with_buffered(at / sh.unit, at / sh.block_size, |_| ())
                .is_some()
        })
    }

    /// Write every staged block to the storage and wait until it is written
    /// (not synced: the caller syncs).
    pub fn flush(&self) -> Result<()> {
        let sh = &self.shared;
        sh.settle();
        let want = sh.flush_req.fetch_add(1, Ordering::AcqRel) + 1;
        self.waker.unpark();
        let mut done = sh.flush_done.lock().unwrap_or_else(|p| p.into_inner());
        while *done < want {
            done = sh
                .flushed
                .wait_timeout(done, IDLE * 10)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            self.waker.unpark();
        }
        drop(done);
        self.error().map_or(Ok(()), Err)
    }

    /// The first storage error, if any.
    pub fn error(&self) -> Option<Error> {
        self.shared.error.get().cloned()
    }

    /// The writer's counters.
    pub fn counters(&self) -> &StoreCounters {
        &self.shared.counters
    }

    /// Buffer bytes configured and in use now.
    pub fn buffer_use(&self) -> (u64, u64) {
        let n = self.shared.buffers.len();
        let free = self.shared.free_count.load(Ordering::Relaxed);
        (
            n as u64 * self.shared.unit,
            (n - free) as u64 * self.shared.unit,
        )
    }
    /// Bytes per chunk of the buffer ([`StoreConfig::unit`]).
    pub fn unit(&self) -> u64 {
        self.shared.unit
    }

    /// The storage.
    pub fn storage(&self) -> &Storage {
        &self.shared.storage
    }
}

impl Drop for Stager {
    fn drop(&mut self) {
        // Whatever was received still goes to the target: first the
        // copier empties the lanes into the buffer, then the writer writes
        // the buffer out.
        self.shared.copier_stop.store(true, Ordering::Release);
        let lanes =
            std::mem::take(&mut *self.shared.lanes.lock().unwrap_or_else(|p| p.into_inner()));
        for (lane, copier) in lanes {
            lane.wake();
            if copier.join().is_err() {
                log::error!("a copier thread panicked");
            }
        }
        self.shared.stop.store(true, Ordering::Release);
        self.waker.unpark();
        if let Some(h) = self.populator.take() {
            let _ = h.join();
        }
        if let Some(h) = self.writer.take() {
            // The writer itself may hold the last reference to the target
            // for a moment (a verifier's upgrade); it must not join itself:
            // it sees `stop` and ends on its own.
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
    }
}
