//! The checking pool of a signed session: the signature and hash work that
//! arrives on a worker runs here, on `receive --hash-threads` threads, never
//! on a thread that drains a ring. That is the Ed25519 check of a manifest
//! head, of each page of chunk hashes, of each signed end and of each
//! zero-run packet (applied here once it verifies), and, for a
//! stream (`--out -`), the BLAKE3 hash of each chunk whose last block came
//! (a file or device hashes its chunks on the staging writer's thread, see
//! [`crate::store::writer`]).
//!
//! A worker copies the packet's payload into a job, queues it and goes
//! back to its ring. It never waits for the pool: the queue's lock is held
//! only to push or pop one job, and when [`MAX_PACKETS`] packets already
//! wait the packet is dropped unchecked (counted as `unauthenticated`; the
//! sender repeats heads, pages, ends and zero runs, so a flood of forged ones delays
//! the real ones at most). A stream's chunk jobs are never refused: there
//! are at most as many as complete chunks fit its reorder window.
//!
//! Without a started pool (a [`Transfer`](crate::receive::transfer::Transfer)
//! used without a data path: unit tests, benchmarks) the checks run on the
//! calling thread, as they are.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;

use crate::error::{Error, ErrorCode};
use crate::proto::wire::Geometry;

/// Threads of the pool by default. One core hashes BLAKE3 several times
/// faster than a 10 GbE link brings chunks (`cargo bench -p xdpcast-bench
/// --bench hot_path -- chunk_hash`, docs/benchmarks.md), and a session has
/// a few Ed25519 checks per 16 chunks (one page) and per pass; one thread
/// leaves the other cores to the workers, copiers and the writer.
pub const DEFAULT_THREADS: usize = 1;
/// Packets (heads, pages, ends, zero runs) that may wait for a check at once; more are
/// dropped unchecked. 256 payloads of at most a jumbo frame: at most 2.3 MiB.
pub const MAX_PACKETS: usize = 256;

/// One check to run.
#[derive(Debug)]
pub enum Job {
    /// A manifest head that came in a packet of `session` and `geometry`.
    Head {
        /// The packet's session id.
        session: u32,
        /// The packet's geometry.
        geometry: Geometry,
        /// The head.
        payload: Box<[u8]>,
        /// The worker that took it (its counters count a drop).
        worker: usize,
    },
    /// Page `index` of chunk hashes.
    Page {
        /// The page's index.
        index: u64,
        /// The page.
        payload: Box<[u8]>,
        /// The worker that took it.
        worker: usize,
    },
    /// A signed end of pass.
    End {
        /// The end.
        payload: Box<[u8]>,
        /// The worker that took it.
        worker: usize,
    },
    /// A zero-run packet of a signed session (the whole datagram): verify
    /// its signature, then apply its runs.
    Zeros {
        /// The datagram.
        packet: Box<[u8]>,
        /// The worker that took it.
        worker: usize,
    },
    /// A stream's chunk whose blocks are all in its window: hash it.
    Chunk(u64),
}

impl Job {
    fn is_packet(&self) -> bool {
        !matches!(self, Job::Chunk(_))
    }
}

/// What runs the jobs (the transfer).
pub trait Checker: Send + Sync + 'static {
    /// Run `job` (on a pool thread).
    fn run(&self, job: Job);
    /// A pool thread panicked: fail the session.
    fn fail(&self, err: Error);
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Jobs of packets among them (bounded by [`MAX_PACKETS`]).
    packets: usize,
    stop: bool,
}

/// The queue the pool threads and its users share.
#[derive(Default)]
struct Inner {
    queue: Mutex<Queue>,
    ready: Condvar,
    /// Jobs queued, and jobs the pool threads ran.
    queued: AtomicU64,
    ran: AtomicU64,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, job: Job) -> bool {
        let mut q = self.lock();
        if job.is_packet() {
            if q.packets >= MAX_PACKETS {
                return false;
            }
            q.packets += 1;
        }
        q.jobs.push_back(job);
        // Relaxed: a count on its own.
        self.queued.fetch_add(1, Ordering::Relaxed);
        drop(q);
        self.ready.notify_one();
        true
    }

    /// The next job; None once the pool stops.
    fn next(&self) -> Option<Job> {
        let mut q = self.lock();
        loop {
            if q.stop {
                return None;
            }
            if let Some(job) = q.jobs.pop_front() {
                q.packets -= usize::from(job.is_packet());
                return Some(job);
            }
            q = self.ready.wait(q).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Where a signed session's stream queues its chunks to be hashed.
#[derive(Clone)]
pub struct Handle(Arc<Inner>);

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("checks::Handle")
    }
}

impl Handle {
    /// Hash stream chunk `k` on the pool (never refused).
    pub fn chunk(&self, k: u64) {
        self.0.push(Job::Chunk(k));
    }
}

/// The pool: `threads` threads, started by [`Pool::start`].
pub struct Pool {
    threads: usize,
    inner: Arc<Inner>,
    started: AtomicBool,
    handles: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("threads", &self.threads)
            .field("started", &self.is_started())
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// A pool of `threads` threads (at least 1), not started.
    pub fn new(threads: usize) -> Pool {
        Pool {
            threads: threads.max(1),
            inner: Arc::default(),
            started: AtomicBool::new(false),
            handles: Mutex::new(Vec::new()),
        }
    }

    /// Whether the threads run (else checks run on the caller).
    pub fn is_started(&self) -> bool {
        // Acquire: pairs with the Release in `start`, after the threads
        // were spawned.
        self.started.load(Ordering::Acquire)
    }

    /// Start the threads, running jobs on `checker` while it lives (a weak
    /// reference: the checker owns the pool). A second call does nothing.
    /// When no thread can be started the checks stay on the callers.
    pub fn start<C: Checker>(&self, checker: Weak<C>) {
        let mut handles = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        if !handles.is_empty() {
            return;
        }
        for i in 0..self.threads {
            let (inner, checker) = (self.inner.clone(), checker.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("xdpcast-check{i}"))
                .spawn(move || {
                    // Off the workers' cores where there are others.
                    crate::cpu::place_background();
                    run(&inner, &checker);
                });
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => log::warn!("cannot start a checking thread: {e}"),
            }
        }
        // Release: see `is_started`.
        self.started.store(!handles.is_empty(), Ordering::Release);
    }

    /// Queue the check of a packet; false when [`MAX_PACKETS`] wait already
    /// (the caller drops the packet).
    pub fn packet(&self, job: Job) -> bool {
        self.inner.push(job)
    }

    /// The handle a stream queues its chunks through.
    pub fn handle(&self) -> Handle {
        Handle(self.inner.clone())
    }

    /// Jobs queued and jobs the pool threads ran so far.
    pub fn counts(&self) -> (u64, u64) {
        // Ran first: a job counts as queued before it can run.
        let ran = self.inner.ran.load(Ordering::Relaxed);
        (self.inner.queued.load(Ordering::Relaxed), ran)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.inner.lock().stop = true;
        self.inner.ready.notify_all();
        let handles = std::mem::take(&mut *self.handles.lock().unwrap_or_else(|p| p.into_inner()));
        for h in handles {
            // A pool thread may drop the last reference to the checker,
            // and so the pool: it must not join itself (it sees `stop`).
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
    }
}

/// A pool thread: run jobs until the pool stops or the checker is gone.
fn run<C: Checker>(inner: &Inner, checker: &Weak<C>) {
    while let Some(job) = inner.next() {
        let Some(c) = checker.upgrade() else { return };
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| c.run(job)));
        // Relaxed: a count on its own.
        inner.ran.fetch_add(1, Ordering::Relaxed);
        if r.is_err() {
            c.fail(Error::new(
                ErrorCode::Internal,
                "a checking thread panicked; the checks it held are lost",
            ));
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Log(Mutex<Vec<(u64, String)>>);

    impl Checker for Log {
        fn run(&self, job: Job) {
            let k = match job {
                Job::Chunk(k) => k,
                _ => u64::MAX,
            };
            let name = std::thread::current().name().unwrap_or("").to_string();
            self.0.lock().unwrap().push((k, name));
        }
        fn fail(&self, _err: Error) {}
    }

    fn page(worker: usize) -> Job {
        Job::Page {
            index: 0,
            payload: vec![0; 100].into(),
            worker,
        }
    }

    #[test]
    fn packets_are_bounded_and_chunks_are_not() {
        let pool = Pool::new(1);
        for i in 0..MAX_PACKETS {
            assert!(pool.packet(page(i)), "packet {i}");
        }
        assert!(!pool.packet(page(0)), "one more packet is refused");
        for k in 0..10 {
            pool.handle().chunk(k);
        }
        assert_eq!(pool.inner.lock().jobs.len(), MAX_PACKETS + 10);
    }

    #[test]
    fn jobs_run_on_the_pool_threads_in_order() {
        let log = Arc::new(Log::default());
        let pool = Pool::new(1);
        pool.start(Arc::downgrade(&log));
        assert!(pool.is_started());
        for k in 0..100 {
            pool.handle().chunk(k);
        }
        // Queued from here, run there: wait for the count.
        while pool.counts().1 < 100 {
            std::thread::yield_now();
        }
        let got = log.0.lock().unwrap().clone();
        assert_eq!(
            got.iter().map(|g| g.0).collect::<Vec<_>>(),
            (0..100).collect::<Vec<_>>()
        );
        assert!(got.iter().all(|g| g.1 == "xdpcast-check0"), "{got:?}");
        // Room again once they ran.
        assert!(pool.packet(page(0)));
    }
}
