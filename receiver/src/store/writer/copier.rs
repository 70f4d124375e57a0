//! The copiers: one thread per worker lane copies the blocks its worker
//! handed off, still in their UMEM frames, into the staging buffer and
//! gives the frames back; reads and flushes settle the lanes first.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::Thread;
use std::time::Duration;

use super::{Shared, Stager};
use crate::error::Error;
use crate::store::handoff::{Held, Lane, Pending, KICK_AT};

/// How long a copier sleeps when its lane is empty: at low rates it finds
/// what came meanwhile when it wakes up (at 2 Gbit/s about 180 blocks); the
/// worker wakes it earlier once [`KICK_AT`] entries wait.
const COPIER_IDLE: Duration = Duration::from_millis(1);
/// Entries a copier takes from its lane at a time (frames go back to the
/// worker per batch).
const COPIER_BATCH: usize = KICK_AT as usize;

impl Shared {
    /// Wait until every block handed off before the call is copied into
    /// the buffer (the reads and flushes that follow then find it).
    pub(super) fn settle(&self) {
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
    pub(super) fn copy_lane(&self, lane: &Lane, writer: &Thread) -> usize {
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

impl Stager {
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
}
