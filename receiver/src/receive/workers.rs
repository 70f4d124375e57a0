//! Workers: one thread per AF_XDP socket (or one for the portable socket
//! path), optionally pinned to a core, draining its source in batches into
//! the shared [`Sink`]. No locks on this path.

use std::cell::Cell;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use socket2::Socket;

use crate::cpu;
use crate::error::{Error, ErrorCode, Result};
use crate::net::rings::{XskQueue, XskStats};
use crate::net::socket::{MsgBatch, MAX_UDP_PAYLOAD};
use crate::proto::frame;
use crate::proto::wire::DropReason;
use crate::status::page::{now_ns, WorkerStatus};
use crate::store::handoff::{lane_capacity, Held, Producer};

/// How long a worker waits for packets before it looks at the stop flag:
/// a stop (at the end of a session, before SUCCESS is published) waits
/// this long for an idle worker, so it is part of the time from the last
/// block to SUCCESS. An idle worker wakes 100 times a second for it.
const POLL: Duration = Duration::from_millis(10);
/// How often a worker reads its socket's kernel counters.
const STATS_EVERY: Duration = Duration::from_millis(50);
/// Datagrams per recvmmsg call on the socket path.
const SOCKET_BATCH: usize = 64;
/// Receive buffer per message without GRO (largest jumbo frame); with
/// `UDP_GRO` a message may be [`MAX_UDP_PAYLOAD`] bytes.
const SOCKET_BUF: usize = 9216;
/// Batch latency percentiles published on the status page.
const QUANTILES: [f64; 3] = [0.5, 0.99, 0.999];
/// How often a worker publishes them (walking the histogram is not free).
const PUBLISH: Duration = Duration::from_millis(100);

/// Counters of one worker. Each is written by its worker only and read by
/// the status publisher, except `drops`: the checking pool counts there
/// the drops of the packets a worker queued for it.
#[derive(Debug, Default)]
pub struct WorkerCounters {
    /// Packets taken in (valid or not).
    pub packets: AtomicU64,
    /// Block bytes written.
    pub bytes: AtomicU64,
    /// Blocks written (incremented after the copy, with Release).
    pub blocks: AtomicU64,
    /// Non-empty batches.
    pub batches: AtomicU64,
    /// Frames the kernel dropped for a full ring (AF_XDP statistics).
    pub ring_drops: AtomicU64,
    /// The socket's kernel counters (`XDP_STATISTICS`): rx_dropped,
    /// rx_invalid_descs, rx_ring_full, fill_ring_empty.
    pub kernel: [AtomicU64; 4],
    /// Socket path: messages holding several GRO-coalesced datagrams.
    pub gro_messages: AtomicU64,
    /// Blocks rebuilt from FEC symbols (also counted in `blocks`).
    pub fec_recovered: AtomicU64,
    /// Drops by reason.
    pub drops: [AtomicU64; DropReason::COUNT],
    /// Batch latency percentiles (p50, p99, p99.9, ns), set by the worker.
    pub batch_ns: [AtomicU64; 3],
    /// Sum of the batch wall times, ns, added by the worker per batch.
    pub batch_sum_ns: AtomicU64,
    /// When the worker last ended a batch in which it took a new block
    /// (`blocks` grew), ns since the Unix epoch; 0 before the first.
    pub last_block_ns: AtomicU64,
}

thread_local! {
    /// Set on the threads that drain a ring or socket (see [`spawn`]).
    static DRAINS: Cell<bool> = const { Cell::new(false) };
}

/// Whether the calling thread is a worker that drains a ring or socket:
/// such a thread hands signature checks to the checking pool
/// ([`crate::receive::checks`]); any other (the HTTP source, a test)
/// runs them itself.
pub fn on_worker() -> bool {
    DRAINS.with(Cell::get)
}

/// Make the calling thread count as a worker (tests of the checking pool).
#[cfg(test)]
pub(crate) fn act_as_worker() {
    DRAINS.with(|d| d.set(true));
}

pub(crate) fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl WorkerCounters {
    /// Count a dropped packet.
    pub fn drop_packet(&self, r: DropReason) {
        bump(&self.drops[r as usize], 1);
    }

    /// Publish the socket's kernel counters (read every [`STATS_EVERY`] and when
    /// the worker stops). Relaxed: each is a value on its own.
    pub fn publish_kernel(&self, s: &XskStats) {
        self.ring_drops
            .store(s.rx_dropped + s.rx_ring_full, Ordering::Relaxed);
        let v = [
            s.rx_dropped,
            s.rx_invalid_descs,
            s.rx_ring_full,
            s.fill_ring_empty,
        ];
        for (slot, v) in self.kernel.iter().zip(v) {
            slot.store(v, Ordering::Relaxed);
        }
    }

    /// Count one non-empty batch of `n` packets.
    pub fn batch(&self, n: usize) {
        bump(&self.batches, 1);
        bump(&self.packets, n as u64);
    }

    /// The counters as published on the status page.
    pub fn snapshot(&self, queue: u64, cpu: Option<usize>) -> WorkerStatus {
        let get = |c: &AtomicU64| c.load(Ordering::Acquire);
        WorkerStatus {
            queue,
            cpu: cpu.map_or(u64::MAX, |c| c as u64),
            packets: get(&self.packets),
            bytes: get(&self.bytes),
            blocks: get(&self.blocks),
            drops: self.drops.iter().map(get).sum(),
            batches: get(&self.batches),
            ring_drops: get(&self.ring_drops),
            batch_ns: self.batch_ns.each_ref().map(get),
            batch_sum_ns: get(&self.batch_sum_ns),
            kernel: XskStats {
                rx_dropped: get(&self.kernel[0]),
                rx_invalid_descs: get(&self.kernel[1]),
                rx_ring_full: get(&self.kernel[2]),
                fill_ring_empty: get(&self.kernel[3]),
            },
            gro_messages: get(&self.gro_messages),
        }
    }
}

/// Where workers put what they receive: the xdpcast transfer, or another
/// protocol's receiver. Called from several workers at once.
pub trait Sink: Send + Sync + 'static {
    /// Take one UDP payload on behalf of the worker counting into `c`.
    fn ingest(&self, datagram: &[u8], c: &WorkerCounters);
    /// [`Self::ingest`] for a payload that lies in the worker's frame
    /// `held`: true when the frame went to the copier with the block (the
    /// worker must not give it back to the kernel; the copier does, through
    /// the lane). By default the payload is copied and the frame stays.
    fn ingest_held(&self, datagram: &[u8], _held: Held<'_>, c: &WorkerCounters) -> bool {
        self.ingest(datagram, c);
        false
    }
    /// Called once by the data path before its workers start, with a weak
    /// reference to the sink itself: a sink that hands work to threads of
    /// its own (the transfer's checking pool) starts them here.
    fn start_helpers(&self, _me: Weak<Self>)
    where
        Self: Sized,
    {
    }
    /// Counters of worker `i`.
    fn counters(&self, i: usize) -> &WorkerCounters;
    /// Record a fatal error (the first one wins).
    fn fail(&self, err: Error);
    /// Whether a fatal error was recorded; workers stop then.
    fn has_failed(&self) -> bool;
    /// The only source address whose datagrams are taken, once known; the
    /// workers drop the others as [`DropReason::ForeignSource`]. None: any.
    fn source(&self) -> Option<IpAddr> {
        None
    }
}

/// Hand one datagram from `from` to the sink, unless it comes from another
/// address than the sink's source; whether the sink kept its frame `held`.
fn take(
    t: &impl Sink,
    from: Option<IpAddr>,
    datagram: &[u8],
    held: Option<Held<'_>>,
    c: &WorkerCounters,
) -> bool {
    match (t.source(), held) {
        (Some(want), _) if from != Some(want) => {
            c.drop_packet(DropReason::ForeignSource);
            false
        }
        (_, Some(h)) => t.ingest_held(datagram, h, c),
        (_, None) => {
            t.ingest(datagram, c);
            false
        }
    }
}

/// Where a worker gets its packets from.
pub enum Source {
    /// One AF_XDP socket: Ethernet frames, untagged or (Some) tagged for
    /// this VLAN only, as the XDP program matches them.
    Xsk(Box<XskQueue>, Option<u16>),
    /// A kernel UDP socket that joined the group: datagrams, several per
    /// message when `gro` (`UDP_GRO` is on).
    Socket {
        /// The socket.
        sock: Socket,
        /// Whether `UDP_GRO` is on.
        gro: bool,
    },
}

/// A running worker.
pub struct Worker {
    handle: JoinHandle<Result<()>>,
}

impl Worker {
    /// Wait for the worker to stop; its error, if it failed.
    pub fn join(self) -> Result<()> {
        self.handle
            .join()
            .unwrap_or_else(|_| Err(Error::new(ErrorCode::Internal, "worker panicked")))
    }
}

/// Start worker `index` on `source`, pinned to `cpu` if given.
pub fn spawn<S: Sink>(
    index: usize,
    queue: u32,
    cpu: Option<usize>,
    source: Source,
    sink: Arc<S>,
    stop: Arc<AtomicBool>,
) -> Result<Worker> {
    let handle = std::thread::Builder::new()
        .name(format!("xdpcast-q{queue}"))
        .spawn(move || {
            DRAINS.with(|d| d.set(true));
            let _pinned = cpu.map(cpu::pin_worker).transpose()?;
            let counters = sink.counters(index);
            let r = run(source, &*sink, counters, &stop);
            if let Err(e) = &r {
                sink.fail(e.clone());
            }
            r
        })
        .map_err(|e| Error::new(ErrorCode::Internal, format!("cannot start worker: {e}")))?;
    Ok(Worker { handle })
}

fn run(source: Source, t: &impl Sink, c: &WorkerCounters, stop: &AtomicBool) -> Result<()> {
    match source {
        Source::Xsk(mut q, vlan) => {
            let mut last_stats = Instant::now();
            let mem = q.memory();
            let lane = Producer::new(lane_capacity(q.frames()), mem.as_ptr(), mem.len(), mem);
            let mut returned = Vec::new();
            let r = drive(t, c, stop, || {
                lane.take_returned(&mut returned);
                q.give_back(&mut returned);
                let mut started = None;
                let n = q
                    .poll_batch(POLL, |f, frame| {
                        started.get_or_insert_with(Instant::now);
                        match frame::udp_datagram(f, vlan) {
                            Ok((from, d)) => {
                                let held = frame.map(|frame| Held {
                                    producer: &lane,
                                    frame,
                                });
                                take(t, Some(from), d, held, c)
                            }
                            Err(r) => {
                                c.drop_packet(r);
                                false
                            }
                        }
                    })
                    .map_err(|e| {
                        Error::new(ErrorCode::SteeringFailed, format!("AF_XDP receive: {e}"))
                    })?;
                lane.kick();
                if last_stats.elapsed() >= STATS_EVERY {
                    last_stats = Instant::now();
                    if let Ok(s) = q.stats() {
                        c.publish_kernel(&s);
                    }
                }
                Ok(started.map(|at| (n, at)))
            });
            // The final counts, for the page the session leaves behind.
            if let Ok(s) = q.stats() {
                c.publish_kernel(&s);
            }
            r
        }
        Source::Socket { sock, gro } => {
            let mut batch = MsgBatch::<1>::new(SOCKET_BATCH);
            let size = if gro { MAX_UDP_PAYLOAD } else { SOCKET_BUF };
            let mut bufs = vec![vec![0u8; size]; SOCKET_BATCH];
            let mut got = Vec::with_capacity(SOCKET_BATCH);
            drive(t, c, stop, || {
                batch
                    .recv(&sock, &mut bufs, &mut got)
                    .map_err(|e| Error::new(ErrorCode::Network, format!("recvmmsg: {e}")))?;
                let started = Instant::now();
                let mut n = 0;
                for (buf, r) in bufs.iter().zip(got.iter()) {
                    if r.len > r.segment {
                        bump(&c.gro_messages, 1);
                    }
                    for d in r.segments(buf) {
                        take(t, r.from, d, None, c);
                        n += 1;
                    }
                }
                Ok((n > 0).then_some((n, started)))
            })
        }
    }
}

/// Wall times of one worker's batches, kept by the worker alone and
/// published into its counters every [`PUBLISH`].
struct Latency {
    hist: Histogram<u64>,
    published: Instant,
}

impl Latency {
    fn new() -> Result<Latency> {
        // 1 ns to 60 s at 3 significant digits: about 200 KiB per worker.
        let hist = Histogram::new_with_bounds(1, 60_000_000_000, 3)
            .map_err(|e| Error::new(ErrorCode::Internal, format!("latency histogram: {e}")))?;
        Ok(Latency {
            hist,
            published: Instant::now(),
        })
    }

    fn record(&mut self, started: Instant, c: &WorkerCounters) {
        let now = Instant::now();
        let ns = (now - started).as_nanos().max(1) as u64;
        self.hist.saturating_record(ns);
        bump(&c.batch_sum_ns, ns);
        if now - self.published >= PUBLISH {
            self.publish(c, now);
        }
    }

    fn publish(&mut self, c: &WorkerCounters, now: Instant) {
        self.published = now;
        for (slot, q) in c.batch_ns.iter().zip(QUANTILES) {
            slot.store(self.hist.value_at_quantile(q), Ordering::Relaxed);
        }
    }
}

/// The loop every worker runs: take batches until told to stop or the
/// transfer has failed. `batch` returns how many packets it took and when
/// it had the first one in hand, or None when there were none.
fn drive(
    t: &impl Sink,
    c: &WorkerCounters,
    stop: &AtomicBool,
    mut batch: impl FnMut() -> Result<Option<(usize, Instant)>>,
) -> Result<()> {
    let mut latency = Latency::new()?;
    // Relaxed: `blocks` is this worker's own counter (only it adds to it).
    let mut blocks = c.blocks.load(Ordering::Relaxed);
    while !stop.load(Ordering::Relaxed) && !t.has_failed() {
        if let Some((n, started)) = batch()? {
            c.batch(n);
            latency.record(started, c);
            let now = c.blocks.load(Ordering::Relaxed);
            if now != blocks {
                blocks = now;
                // Relaxed: a time on its own, read by the status publisher.
                c.last_block_ns.store(now_ns(), Ordering::Relaxed);
            }
        }
    }
    latency.publish(c, Instant::now());
    Ok(())
}
