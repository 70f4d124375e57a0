//! Hand-off lanes: a worker gives a received block to the staging copier
//! without copying it. The block stays in the frame it arrived in (an
//! AF_XDP UMEM frame); the copier thread copies it into the staging buffer
//! and only then gives the frame back, for the worker to return to the
//! kernel's fill ring.
//!
//! Why: the copy into the staging buffer was most of a worker's cost per
//! block (the staging memory is not in the worker's cache: the writer thread
//! on another core has just read it out). The worker now parses, claims the
//! block in the bitmap and pushes a 32-byte entry; the ring it drains empties
//! that much faster, and a worker that is descheduled for a while leaves
//! less behind. The UMEM frames in a lane are the elastic buffer in front of
//! the copier, the staging buffer the one in front of the storage.
//!
//! One lane per worker: a single-producer, single-consumer ring of
//! [`Pending`] entries. The producer is the worker (through its [`Producer`],
//! which cannot be shared between threads), the consumer the copier thread
//! of the one stager the lane is bound to. `head` counts entries pushed,
//! `tail` entries copied: a reader who needs every block handed off so far
//! to be in the staging buffer waits until `tail` reaches the `head` it saw
//! ([`Lane::settle`]). A full lane makes the worker copy the block itself
//! (counted), so the worker never waits for the copier (only readers do).

use std::any::Any;
use std::cell::{Cell, UnsafeCell};
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::Thread;
use std::time::Duration;

use crossbeam_utils::CachePadded;

/// Entries waiting in a lane from which the worker wakes its sleeping
/// copier (a copier takes this many at a time).
pub const KICK_AT: u64 = 256;

/// Entries of the lane of a worker whose socket has `frames` UMEM frames:
/// a quarter of them, so that the rest keep the fill ring supplied while
/// the copier catches up. When the lane is full the worker copies.
pub fn lane_capacity(frames: usize) -> usize {
    frames / 4
}

/// One block handed off: where its bytes are, where they go, and the frame
/// to give back once they are copied.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pending {
    /// Image offset of the block.
    pub offset: u64,
    /// The block's bytes (inside the memory the lane keeps mapped).
    pub ptr: *const u8,
    /// Length of the block's bytes.
    pub len: usize,
    /// The frame to give back (the UMEM address of the frame's start).
    pub frame: u64,
}

/// A worker's lane to the copier (see the module docs).
pub struct Lane {
    slots: Box<[UnsafeCell<MaybeUninit<Pending>>]>,
    mask: u64,
    /// Entries pushed (written by the producer only).
    head: CachePadded<AtomicU64>,
    /// Entries copied (written by the consumer only).
    tail: CachePadded<AtomicU64>,
    /// Blocks the producer copied itself because the lane was full or
    /// closed (written by the producer only).
    full: AtomicU64,
    /// The copier has ended (or died): nothing pushed is copied any more.
    closed: AtomicBool,
    /// Frames whose blocks were copied, for the worker to take back.
    returned: Mutex<Vec<u64>>,
    /// The stager the lane is bound to (its id), 0 while unbound.
    owner: AtomicUsize,
    /// The lane's copier thread: woken by the worker once [`KICK_AT`]
    /// entries wait, and by settling readers.
    copier: Wake,
    /// The address range of the memory entries may point into.
    range: (usize, usize),
    /// Keeps that memory mapped while entries point into it (the worker's
    /// UMEM may be dropped before the copier is done).
    _memory: Arc<dyn Any + Send + Sync>,
}

/// How a copier sleeps when it has nothing to copy, and is woken.
#[derive(Debug, Default)]
struct Wake {
    thread: OnceLock<Thread>,
    idle: AtomicBool,
}

impl Wake {
    /// Wake the copier if it sleeps (cheap when it does not).
    fn wake(&self) {
        // Relaxed: a wake-up lost to the race with `sleep` costs at most
        // the sleep's timeout, never a block.
        if self.idle.load(Ordering::Relaxed) {
            if let Some(t) = self.thread.get() {
                t.unpark();
            }
        }
    }

    /// Sleep up to `timeout` unless `busy()` says there is work.
    fn sleep(&self, timeout: Duration, busy: impl Fn() -> bool) {
        // SeqCst: our flag is visible before we look at the lane once
        // more, so a producer who pushed after that look sees it set
        // (unless its own push is still in its store buffer: the timeout
        // covers that).
        self.idle.store(true, Ordering::SeqCst);
        if !busy() {
            std::thread::park_timeout(timeout);
        }
        self.idle.store(false, Ordering::Relaxed);
    }
}

// SAFETY: the slots are written only by the producer (one thread, see
// `Producer`) in the free range [tail, tail + capacity) beyond `head`, and
// read only by the consumer in [tail, head); `head` and `tail` are
// published with Release and read with Acquire, so each slot has one
// writer at a time and its write happens before its read. The raw pointers
// in the entries point into `_memory`, which the lane keeps alive.
unsafe impl Send for Lane {}
// SAFETY: see above.
unsafe impl Sync for Lane {}

impl std::fmt::Debug for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lane")
            .field("capacity", &self.slots.len())
            .field("head", &self.head.load(Ordering::Relaxed))
            .field("tail", &self.tail.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Lane {
    /// Entries the lane holds at most.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Bind the lane to the stager `id` (the first one wins); whether it
    /// is bound to `id`. Only the lane's producer binds (through the
    /// stager it hands off to).
    pub(crate) fn bind(&self, id: usize) -> bool {
        // Relaxed: the id is the only data; the stager's lane list is
        // published under its own lock.
        match self
            .owner
            .compare_exchange(0, id, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => true,
            Err(now) => now == id,
        }
    }

    /// Whether the lane is bound to no stager yet.
    pub(crate) fn unbound(&self) -> bool {
        self.owner.load(Ordering::Relaxed) == 0
    }

    /// Whether the lane is bound to the stager `id`.
    pub(crate) fn bound_to(&self, id: usize) -> bool {
        self.owner.load(Ordering::Relaxed) == id
    }

    /// Called once by the lane's copier thread itself.
    pub(crate) fn register_copier(&self, t: Thread) {
        let _ = self.copier.thread.set(t);
    }

    /// Wake the lane's copier if it sleeps.
    pub(crate) fn wake(&self) {
        self.copier.wake();
    }

    /// The copier: sleep up to `timeout` unless entries are waiting.
    pub(crate) fn sleep(&self, timeout: Duration) {
        self.copier.sleep(timeout, || self.is_pending());
    }

    /// Consumer side: call `copy` on up to `max` pending entries in order,
    /// then give their frames back and publish them as copied. Returns how
    /// many there were.
    pub(crate) fn drain(&self, max: usize, mut copy: impl FnMut(&Pending)) -> usize {
        let t = self.tail.load(Ordering::Relaxed);
        // Acquire: pairs with the producer's Release store of `head`, so
        // the entries below it are written before we read them.
        let h = self.head.load(Ordering::Acquire);
        let n = (h - t).min(max as u64);
        if n == 0 {
            return 0;
        }
        let mut frames = Vec::with_capacity(n as usize);
        for i in t..t + n {
            // SAFETY: i is in [tail, head): the producer wrote this slot
            // before publishing `head` and does not write it again until
            // `tail` passes it (below).
            let p = unsafe { (*self.slots[(i & self.mask) as usize].get()).assume_init() };
            copy(&p);
            frames.push(p.frame);
        }
        // The lock orders our reads of the frames before the worker's
        // taking them back (and so before the kernel reuses them).
        self.returned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(frames);
        // Release: the copies above happen before a settling reader's
        // Acquire load of `tail`, and before the producer reuses the slots.
        self.tail.store(t + n, Ordering::Release);
        n as usize
    }

    /// Entries pushed (blocks handed off) and blocks the producer copied
    /// itself, so far.
    pub fn counts(&self) -> (u64, u64) {
        // Relaxed: counters, each a value on its own.
        (
            self.head.load(Ordering::Relaxed),
            self.full.load(Ordering::Relaxed),
        )
    }

    /// The copier's end: no entry is copied after this. Called by the
    /// copier thread as it ends, also when it panics.
    pub(crate) fn close(&self) {
        // Release: pairs with the Acquire loads in `settle` and `push`.
        self.closed.store(true, Ordering::Release);
    }

    /// Whether entries are waiting for the copier.
    pub(crate) fn is_pending(&self) -> bool {
        self.tail.load(Ordering::Relaxed) != self.head.load(Ordering::Acquire)
    }

    /// Wait until every entry pushed before the call is copied (waking the
    /// copier while waiting), or the copier has ended: then what it did
    /// not copy is lost, and its stager has failed (see the copier).
    pub(crate) fn settle(&self) {
        // Acquire: a reader who learned of a block (through the bitmaps,
        // Release after the push) sees `head` past its entry.
        let want = self.head.load(Ordering::Acquire);
        // Acquire: pairs with `drain`'s Release: the copies are visible.
        while self.tail.load(Ordering::Acquire) < want {
            if self.closed.load(Ordering::Acquire) {
                return;
            }
            self.wake();
            std::thread::sleep(Duration::from_micros(20));
        }
    }
}

/// The producing end of a lane: one per worker, used on its thread only
/// (it is not `Sync`, so a `&Producer` cannot reach another thread).
pub struct Producer {
    lane: Arc<Lane>,
    /// Cached `head` (only this producer writes it).
    head: Cell<u64>,
    /// Cached `full`.
    full: Cell<u64>,
    /// The staging chunk this worker last attached a buffer to, + 1 (0:
    /// none), see [`crate::store::writer::Stager::has_room`].
    attached: Cell<u64>,
    _not_sync: PhantomData<Cell<()>>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.lane.fmt(f)
    }
}

impl Producer {
    /// A lane of at least `capacity` entries (rounded up to a power of
    /// two) whose frames live in the `len` bytes at `base`, which `memory`
    /// keeps mapped (the lane holds it until it is dropped).
    pub fn new(
        capacity: usize,
        base: *const u8,
        len: usize,
        memory: Arc<dyn Any + Send + Sync>,
    ) -> Producer {
        let cap = capacity.max(2).next_power_of_two();
        let lane = Lane {
            slots: (0..cap)
                .map(|_| UnsafeCell::new(MaybeUninit::uninit()))
                .collect(),
            mask: cap as u64 - 1,
            head: CachePadded::new(AtomicU64::new(0)),
            tail: CachePadded::new(AtomicU64::new(0)),
            full: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            returned: Mutex::new(Vec::new()),
            owner: AtomicUsize::new(0),
            copier: Wake::default(),
            range: (base as usize, base as usize + len),
            _memory: memory,
        };
        Producer {
            lane: Arc::new(lane),
            head: Cell::new(0),
            full: Cell::new(0),
            attached: Cell::new(0),
            _not_sync: PhantomData,
        }
    }

    /// The staging chunk this worker last made sure had a buffer.
    pub(crate) fn attached(&self) -> Option<u64> {
        self.attached.get().checked_sub(1)
    }

    /// Remember staging chunk `k` as having a buffer.
    pub(crate) fn set_attached(&self, k: u64) {
        self.attached.set(k + 1);
    }

    /// The lane, for the stager to register.
    pub fn lane(&self) -> &Arc<Lane> {
        &self.lane
    }

    /// Push an entry; false when the entry's bytes are not inside the
    /// lane's memory, or the lane is full or closed (counted): then the
    /// caller copies.
    pub(crate) fn push(&self, p: Pending) -> bool {
        let (lo, hi) = self.lane.range;
        let at = p.ptr as usize;
        if at < lo || at.checked_add(p.len).is_none_or(|end| end > hi) {
            return false;
        }
        let h = self.head.get();
        // Acquire: pairs with `drain`'s Release of `tail`: the consumer is
        // done with the slot before we overwrite it. And with `close`.
        if h - self.lane.tail.load(Ordering::Acquire) >= self.lane.slots.len() as u64
            || self.lane.closed.load(Ordering::Acquire)
        {
            self.full.set(self.full.get() + 1);
            // Relaxed: a counter (see `Lane::counts`).
            self.lane.full.store(self.full.get(), Ordering::Relaxed);
            return false;
        }
        // SAFETY: slot h is outside [tail, head): the consumer does not
        // read it until we publish `head` below; only this producer writes.
        unsafe { (*self.lane.slots[(h & self.lane.mask) as usize].get()).write(p) };
        self.head.set(h + 1);
        // Release: the slot's contents before `head` (see `drain`).
        self.lane.head.store(h + 1, Ordering::Release);
        true
    }

    /// After a batch of pushes: wake the copier if it sleeps and at least
    /// [`KICK_AT`] entries wait. Fewer wait for its next round (it looks
    /// every millisecond), so that a worker at a low packet rate does not
    /// pay a wake-up (a futex call) for every small batch.
    pub fn kick(&self) {
        // Acquire: see `push`; a stale value only delays a wake-up.
        let waiting = self.head.get() - self.lane.tail.load(Ordering::Acquire);
        if waiting >= KICK_AT {
            self.lane.wake();
        }
    }

    /// Move the frames the copier gave back into `out`.
    pub fn take_returned(&self, out: &mut Vec<u64>) {
        let mut r = self.lane.returned.lock().unwrap_or_else(|p| p.into_inner());
        if out.is_empty() {
            std::mem::swap(&mut *r, out);
        } else {
            out.append(&mut r);
        }
    }
}

/// A datagram that lies in a frame the worker may hand off: the frame's
/// address and the worker's lane.
#[derive(Debug, Clone, Copy)]
pub struct Held<'a> {
    /// The worker's lane.
    pub producer: &'a Producer,
    /// The frame's UMEM address (given back through the lane).
    pub frame: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(i: u64, data: &[u8]) -> Pending {
        Pending {
            offset: i,
            ptr: data.as_ptr(),
            len: data.len(),
            frame: i * 2048,
        }
    }

    fn producer(cap: usize, data: &Arc<Vec<u8>>) -> Producer {
        Producer::new(cap, data.as_ptr(), data.len(), data.clone())
    }

    #[test]
    fn full_lane_refuses_and_drained_frames_come_back_in_order() {
        let data = Arc::new(vec![7u8; 64]);
        let p = producer(3, &data);
        assert_eq!(p.lane().capacity(), 4);
        for i in 0..4 {
            assert!(p.push(entry(i, &data)));
        }
        assert!(!p.push(entry(4, &data)), "a full lane refuses");
        let mut seen = Vec::new();
        assert_eq!(p.lane().drain(3, |e| seen.push(e.offset)), 3);
        assert_eq!(seen, [0, 1, 2]);
        assert!(p.push(entry(4, &data)));
        let mut back = Vec::new();
        p.take_returned(&mut back);
        assert_eq!(back, [0, 2048, 4096]);
        assert!(p.lane().is_pending());
        p.lane().drain(usize::MAX, |e| seen.push(e.offset));
        assert_eq!(seen, [0, 1, 2, 3, 4]);
        assert!(!p.lane().is_pending());
        p.lane().settle();
        assert_eq!(p.lane().counts(), (5, 1));
    }

    #[test]
    fn a_closed_lane_refuses_and_settles_without_its_copier() {
        let data = Arc::new(vec![7u8; 64]);
        let p = producer(4, &data);
        assert!(p.push(entry(0, &data)));
        p.lane().close();
        assert!(!p.push(entry(1, &data)), "nobody would copy it");
        // The entry before the close is never copied: settle does not wait
        // for it (the stager has failed, see the copier).
        p.lane().settle();
        assert!(p.lane().is_pending());
        assert_eq!(p.lane().counts(), (1, 1));
    }

    #[test]
    fn bytes_outside_the_lanes_memory_are_refused() {
        let data = Arc::new(vec![7u8; 64]);
        let other = vec![1u8; 64];
        let p = producer(4, &data);
        assert!(!p.push(entry(0, &other)));
        assert!(!p.push(entry(0, &[0u8; 65][..])));
        assert!(p.push(entry(0, &data[60..])));
        let tail = Pending {
            ptr: data[60..].as_ptr(),
            len: 5,
            ..entry(1, &data)
        };
        assert!(!p.push(tail), "one byte past the end");
        assert_eq!(p.lane().drain(9, |_| {}), 1);
    }

    #[test]
    fn a_lane_binds_to_one_stager() {
        let data = Arc::new(vec![0u8; 8]);
        let p = producer(2, &data);
        assert!(p.lane().unbound());
        assert!(p.lane().bind(7));
        assert!(p.lane().bind(7));
        assert!(!p.lane().bind(8));
        assert!(p.lane().bound_to(7));
        assert!(!p.lane().unbound());
    }

    proptest! {
        /// Across threads, with any capacity and batch size, every entry
        /// arrives once and in order, and `settle` returns only when every
        /// entry pushed before it was consumed.
        #[test]
        fn entries_cross_threads_once_in_order(cap in 1usize..64, batch in 1usize..40, n in 0u64..3000) {
            let data = Arc::new(vec![0u8; 8]);
            let p = producer(cap, &data);
            let lane = p.lane().clone();
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let consumer = {
                let (lane, stop) = (lane.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    loop {
                        let done = stop.load(Ordering::Acquire);
                        if lane.drain(batch, |e| got.push(e.offset)) == 0 {
                            if done {
                                break got;
                            }
                            std::thread::yield_now();
                        }
                    }
                })
            };
            let mut back = Vec::new();
            for i in 0..n {
                while !p.push(entry(i, &data)) {
                    std::thread::yield_now();
                }
                if i % 97 == 0 {
                    p.lane().settle();
                    prop_assert!(!p.lane().is_pending());
                }
            }
            stop.store(true, Ordering::Release);
            let got = consumer.join().unwrap();
            prop_assert_eq!(got, (0..n).collect::<Vec<_>>());
            p.take_returned(&mut back);
            prop_assert_eq!(back, (0..n).map(|i| i * 2048).collect::<Vec<_>>());
        }
    }
}
