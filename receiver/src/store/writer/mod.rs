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

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use memmap2::{MmapMut, MmapOptions};

use super::handoff::{Held, Lane, Pending, KICK_AT};
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
/// How long a copier sleeps when its lane is empty: at low rates it finds
/// what came meanwhile when it wakes up (at 2 Gbit/s about 180 blocks); the
/// worker wakes it earlier once [`KICK_AT`] entries wait.
const COPIER_IDLE: Duration = Duration::from_millis(1);
/// Entries a copier takes from its lane at a time (frames go back to the
/// worker per batch).
const COPIER_BATCH: usize = KICK_AT as usize;

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

/// Where chunks go: the target file or block device. `direct` is a second
/// descriptor with `O_DIRECT` for whole, aligned chunks (block devices).
#[derive(Debug)]
pub struct Storage {
    /// Buffered descriptor (reads, unaligned writes, sync).
    pub file: File,
    /// `O_DIRECT` descriptor and the device's logical block size.
    pub direct: Option<(File, u64)>,
    /// Start writeback of each written chunk at once and wait for it
    /// [`WRITEBACK_LAG`] later (`sync_file_range`).
    pub paced: bool,
}

impl Storage {
    /// Write `buf` at `offset`; with `O_DIRECT` where allowed, aligned and
    /// `whole` (a complete chunk: no page of it is in the page cache).
    fn write(&self, buf: &[u8], offset: u64, whole: bool) -> std::io::Result<()> {
        if let (Some((d, lbs)), true) = (&self.direct, whole) {
            let aligned = buf.len() as u64 / lbs * lbs;
            if offset % lbs == 0 && aligned > 0 && (buf.as_ptr() as u64) % lbs == 0 {
                d.write_all_at(&buf[..aligned as usize], offset)?;
                if aligned as usize == buf.len() {
                    return Ok(());
                }
                return self
                    .file
                    .write_all_at(&buf[aligned as usize..], offset + aligned);
            }
        }
        self.file.write_all_at(buf, offset)
    }

    fn sync_range(&self, offset: u64, len: u64, flags: libc::c_uint) -> std::io::Result<()> {
        // SAFETY: plain syscall on an open descriptor; no memory is passed.
        let rc = unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                offset as libc::off64_t,
                len as libc::off64_t,
                flags,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        // Filesystems without it (ESPIPE/EINVAL): writeback stays the kernel's.
        match e.raw_os_error() {
            Some(libc::ESPIPE | libc::EINVAL | libc::EOPNOTSUPP) => Ok(()),
            _ => Err(e),
        }
    }
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

    /// Bytes `[offset, offset + len)` are on the storage already (zeros of
    /// a zero run, blocks of a resume file): count them as landed, so that
    /// a checked chunk completes. Nothing to do without a [`Verify`].
    fn landed_elsewhere(&self, offset: u64, len: u64) -> bool {
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
    fn complete_elsewhere(&self, k: u64) -> bool {
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
    fn forget(&self, k: u64) {
        // Release: the reset happens before the blocks are handed out
        // again (the caller's bitmap update follows), so the next landing
        // counts from zero.
        self.landed[k as usize].store(0, Ordering::Release);
    }

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

    /// Detached buffer `b` holds complete chunk `k` (or part of it, the
    /// rest on the storage): fill in the rest (zeros of zero runs, else
    /// read from the storage, counted) and check it; whether to write it.
    fn check(&self, v: &dyn Verify, b: usize, k: u64, runs: &[(u64, u64)]) -> bool {
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
    fn check_bufferless(&self, v: &dyn Verify) -> bool {
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

    /// Write detached buffer `b` (chunk `k`) and free it; a complete chunk
    /// is checked first when there is a [`Verify`], and not written if it
    /// fails.
    fn write_out(&self, b: usize, k: u64, lag: &mut Writeback) {
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

    /// Read `out.len()` bytes at `offset`, from the buffer where a block
    /// still is, else from the storage (after any write in flight).
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
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
            let mut from_buffer = false;
            if let Some(b) = self.pin(k, false) {
                let bit = block - self.first_block(k);
                let word = self.buffers[b].present[bit as usize / 64].load(Ordering::Relaxed);
                if word & (1 << (bit % 64)) != 0 {
                    // SAFETY: the block is present (its copy happened before
                    // its writer's unpin, which our pin's Acquire follows)
                    // and nobody writes a block twice; b stays attached
                    // while pinned.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            self.buf_ptr(b, at - k * self.unit),
                            dst.as_mut_ptr(),
                            dst.len(),
                        );
                    }
                    from_buffer = true;
                }
                self.unpin(k);
            }
            if !from_buffer {
                // Acquire: pairs with `write_out`'s Release.
                while self.flushing[k as usize].load(Ordering::Acquire) != 0 {
                    std::thread::sleep(Duration::from_micros(50));
                }
                self.storage.file.read_exact_at(dst, at)?;
            }
            at = piece_end;
        }
        Ok(())
    }
}

impl Shared {
    /// Wait until every block handed off before the call is copied into
    /// the buffer (the reads and flushes that follow then find it).
    fn settle(&self) {
        // Acquire: pairs with the Release store in `register`.
        if self.lane_count.load(Ordering::Acquire) == 0 {
            return;
        }
        // Under the lock, so without a copy of the list (a read may run on
        // a worker): copiers never take it, and only a worker's first
        // hand-off and the status publisher wait for it meanwhile.
        let lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        for (lane, _) in lanes.iter() {
            lane.settle();
        }
    }

    /// Copy up to a batch of `lane`'s entries; how many.
    fn copy_lane(&self, lane: &Lane, writer: &Thread) -> usize {
        let mut wake = false;
        let n = lane.drain(COPIER_BATCH, |p: &Pending| {
            // SAFETY: the producer checked that [ptr, ptr + len) lies in
            // the memory the lane keeps mapped, and the frame is not given
            // back to the kernel until `drain` is done with it.
            let data = unsafe { std::slice::from_raw_parts(p.ptr, p.len) };
            wake |= self.write(p.offset, data);
        });
        if wake {
            writer.unpark();
        }
        n
    }
}

/// Closes a copier's lane when the copier ends; if it ends by a panic, the
/// blocks left in the lane are lost, so the stager fails.
struct Closing<'a>(&'a Shared, &'a Lane);

impl Drop for Closing<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.fail(Error::new(
                crate::error::ErrorCode::Internal,
                "a copier thread panicked; blocks it had not copied are lost",
            ));
        }
        self.1.close();
    }
}

/// A lane's copier thread: copy what its worker hands off into the
/// buffer; on stop, what is left in the lane, then end.
fn copier_loop(sh: &Shared, lane: &Lane, writer: &Thread) {
    loop {
        if sh.copy_lane(lane, writer) > 0 {
            continue;
        }
        // Acquire: the stager is being dropped, so the worker pushes no
        // more: the lane was empty after that, so it is drained.
        if sh.copier_stop.load(Ordering::Acquire) {
            if sh.copy_lane(lane, writer) == 0 {
                return;
            }
            continue;
        }
        lane.sleep(COPIER_IDLE);
    }
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

fn max_ns(c: &AtomicU64, since: Instant) {
    c.fetch_max(since.elapsed().as_nanos() as u64, Ordering::Relaxed);
}

/// Fault in buffers `from..to` of the pool, `stride` bytes apart (advice:
/// without MADV_POPULATE_WRITE, before 5.14, pages fault on first use
/// instead).
fn populate(pool: NonNull<u8>, stride: u64, from: usize, to: usize) {
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

/// Paced writeback: start it as soon as a chunk is written, wait for it
/// [`WRITEBACK_LAG`] later.
#[derive(Default)]
struct Writeback {
    started: std::collections::VecDeque<(u64, u64)>,
    in_flight: u64,
}

impl Writeback {
    fn started(&mut self, st: &Storage, offset: u64, len: u64) -> std::io::Result<()> {
        st.sync_range(offset, len, libc::SYNC_FILE_RANGE_WRITE)?;
        self.started.push_back((offset, len));
        self.in_flight += len;
        while self.in_flight > WRITEBACK_LAG {
            let Some((o, l)) = self.started.pop_front() else {
                break;
            };
            self.in_flight -= l;
            st.sync_range(
                o,
                l,
                libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | libc::SYNC_FILE_RANGE_WRITE
                    | libc::SYNC_FILE_RANGE_WAIT_AFTER,
            )?;
        }
        Ok(())
    }
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

    /// Hand block bytes `data` (image `offset`, a block's start) to the
    /// copier, still in the worker's frame `held`; true when the frame is
    /// now the copier's (it comes back through the lane), false when the
    /// bytes were copied here (the lane is full, or bound to another
    /// stager, or `data` is not in the lane's memory).
    pub fn hand_off(&self, offset: u64, data: &[u8], held: Held<'_>) -> bool {
        let lane = held.producer.lane();
        if lane.bound_to(self.id()) || self.register(lane) {
            let p = Pending {
                offset,
                ptr: data.as_ptr(),
                len: data.len(),
                frame: held.frame,
            };
            if held.producer.push(p) {
                return true;
            }
        }
        self.write(offset, data);
        false
    }

    /// Blocks the workers handed off so far, and blocks they copied
    /// themselves because their lane was full (summed over the lanes:
    /// each lane counts its own, so that no two workers share a counter).
    pub fn handoff_counts(&self) -> (u64, u64) {
        let lanes = self.shared.lanes.lock().unwrap_or_else(|p| p.into_inner());
        lanes.iter().fold((0, 0), |(h, f), (l, _)| {
            let (lh, lf) = l.counts();
            (h + lh, f + lf)
        })
    }

    /// Identity of this stager, for binding lanes.
    fn id(&self) -> usize {
        self.shared.id
    }

    /// Bind `lane` to this stager and start its copier; false when it is
    /// bound to another stager, or the copier cannot be started (then the
    /// worker copies, and tries again with its next block).
    fn register(&self, lane: &Arc<Lane>) -> bool {
        if !lane.unbound() {
            return false;
        }
        let (s, l, w) = (self.shared.clone(), lane.clone(), self.waker.clone());
        let copier = std::thread::Builder::new()
            .name("xdpcast-copy".into())
            .spawn(move || {
                // Off the workers' cores when there are others, above
                // other work but below the worker (see `cpu`).
                crate::cpu::place_copier();
                l.register_copier(std::thread::current());
                let _closing = Closing(&s, &l);
                copier_loop(&s, &l, &w)
            });
        let copier = match copier {
            Ok(c) => c,
            Err(e) => {
                log::warn!("cannot start a copier thread ({e}): the worker copies its blocks");
                return false;
            }
        };
        // Only the lane's producer binds it, and it is here: this succeeds.
        lane.bind(self.id());
        let mut lanes = self.shared.lanes.lock().unwrap_or_else(|p| p.into_inner());
        lanes.push((lane.clone(), copier));
        // Release: see `settle`.
        self.shared.lane_count.store(lanes.len(), Ordering::Release);
        true
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

/// The populating thread: fault in the buffers `Stager::new` did not, a
/// step at a time (here, not on a worker's first copy), and hand each step
/// out as it is ready.
fn populate_rest(sh: &Shared) {
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
fn writer_loop(sh: &Shared) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn stager(name: &str, len: u64, block: u32, buffer: u64) -> (Stager, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("xdpcast-writer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        file.set_len(len).unwrap();
        let st = Storage {
            file,
            direct: None,
            paced: true,
        };
        let cfg = StoreConfig {
            buffer_bytes: buffer,
            ..StoreConfig::default()
        };
        (Stager::new(st, len, block, &cfg).unwrap(), p)
    }

    fn image(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 131 % 251) as u8).collect()
    }

    #[test]
    fn blocks_in_any_order_from_threads_land_and_read_back() {
        let len = 5 * CHUNK + 12_345;
        let block = 1400u64;
        let (s, p) = stager("order", len, block as u32, 16 * CHUNK);
        let img = image(len as usize);
        let blocks = len.div_ceil(block);
        std::thread::scope(|sc| {
            for t in 0..3u64 {
                let (s, img) = (&s, &img);
                sc.spawn(move || {
                    // Each thread takes every third block, backwards.
                    for i in (0..blocks).rev().filter(|i| i % 3 == t) {
                        let o = i * block;
                        let e = (o + block).min(len);
                        s.write(o, &img[o as usize..e as usize]);
                    }
                });
            }
        });
        // Read back through the stager before and after the flush.
        let mut out = vec![0; 3000];
        s.read(CHUNK - 1000, &mut out).unwrap();
        assert_eq!(out, img[(CHUNK - 1000) as usize..(CHUNK + 2000) as usize]);
        s.flush().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), img);
        let c = s.counters();
        // Every byte written once, by the writer or (buffer full) a worker.
        assert_eq!(c.bytes_stored.load(Ordering::Relaxed), len);
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn handed_off_blocks_land_read_back_and_their_frames_come_back() {
        use crate::store::handoff::Producer;
        let len = 4 * CHUNK + 999;
        let block = 1400u64;
        let (s, p) = stager("handoff", len, block as u32, 16 * CHUNK);
        // The "frames": the image itself, one frame per block.
        let img = Arc::new(image(len as usize));
        let blocks = len.div_ceil(block);
        let back: Vec<Vec<u64>> = std::thread::scope(|sc| {
            let workers: Vec<_> = (0..2u64)
                .map(|t| {
                    let (s, img) = (&s, img.clone());
                    sc.spawn(move || {
                        // A small lane, so that some blocks find it full.
                        let lane = Producer::new(64, img.as_ptr(), img.len(), img.clone());
                        let mut kept = 0;
                        for i in (0..blocks).filter(|i| i % 2 == t) {
                            let (o, e) = (i * block, ((i + 1) * block).min(len));
                            let held = Held {
                                producer: &lane,
                                frame: i,
                            };
                            if s.hand_off(o, &img[o as usize..e as usize], held) {
                                kept += 1;
                            }
                            if i % 64 == t {
                                lane.kick();
                            }
                        }
                        // Blocks read back through the stager once handed off.
                        let o = (blocks - 1 - t) * block;
                        let mut out = vec![0; (len - o).min(block) as usize];
                        s.read(o, &mut out).unwrap();
                        assert_eq!(out, img[o as usize..o as usize + out.len()]);
                        s.flush().unwrap();
                        let mut back = Vec::new();
                        lane.take_returned(&mut back);
                        assert_eq!(back.len(), kept, "every kept frame comes back once");
                        back
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        assert_eq!(std::fs::read(&p).unwrap(), *img);
        let kept: usize = back.iter().map(Vec::len).sum();
        let (handed_off, lane_full) = s.handoff_counts();
        assert_eq!(handed_off, kept as u64);
        assert_eq!(handed_off + lane_full, blocks);
        for (t, b) in back.iter().enumerate() {
            assert!(b.iter().all(|&i| i % 2 == t as u64));
        }
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn many_blocks_in_one_write_land() {
        let len = 3 * CHUNK + 777;
        let (s, p) = stager("whole", len, 1400, 16 * CHUNK);
        let img = image(len as usize);
        s.write(0, &img);
        s.flush().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), img);
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn holes_are_written_partially_then_filled() {
        // More buffers than are faulted in eagerly, fewer than chunks: the
        // writer faults buffers in while it evicts.
        let len = 24 * CHUNK;
        let block = 4096u64;
        let (s, p) = stager("holes", len, block as u32, 16 * CHUNK);
        let img = image(len as usize);
        let blocks = len / block;
        let put = |i: u64| {
            s.write(
                i * block,
                &img[(i * block) as usize..((i + 1) * block) as usize],
            )
        };
        // Every 10th block lost in the first pass: no chunk completes and the
        // writer must evict incomplete chunks to keep buffers free.
        (0..blocks).filter(|i| i % 10 != 0).for_each(put);
        (0..blocks).filter(|i| i % 10 == 0).for_each(put);
        s.flush().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), img);
        assert!(s.counters().chunks_partial.load(Ordering::Relaxed) > 0);
        let mut out = vec![0; block as usize];
        s.read(5 * block, &mut out).unwrap();
        assert_eq!(out, img[(5 * block) as usize..(6 * block) as usize]);
        std::fs::remove_file(p).unwrap();
    }
}
