//! Choosing and running the data path: XDP steering with one AF_XDP socket
//! and worker per RX queue, or the portable socket path with one worker.
//! Used by every receive flow (the xdpcast session, the udpcast receiver).

use std::net::IpAddr;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::Socket;

use crate::error::{Error, ErrorCode, Result};
use crate::net::rings::{self, XskConfig, XskQueue};
use crate::net::socket::{self, Group};
use crate::net::steer::{AttachMode, SteerError, Steering, QUEUE_SLOTS};
use crate::receive::request::{ModeRequest, SessionRequest};
use crate::receive::workers::{self, Sink, Source, Worker};
use crate::status::page::{DiagStatus, PathMode, MAX_WORKERS};
use crate::status::report;

/// A data path that is set up but whose workers have not started.
pub struct Opened {
    /// Path chosen.
    pub mode: PathMode,
    /// Why `Auto` fell back to sockets (empty otherwise).
    pub note: String,
    steering: Option<Steering>,
    membership: Option<Socket>,
    unserved: Option<Unserved>,
    /// One source per worker, with its RX queue (or socket index).
    pub sources: Vec<(u32, Source)>,
}

impl Opened {
    /// The XDP program's loader, on the XDP path (to steer more before the
    /// workers start).
    pub fn steering_mut(&mut self) -> Option<&mut Steering> {
        self.steering.as_mut()
    }
}

/// Set up the path `req.mode` asks for. `Auto` tries XDP when running as
/// root and falls back to sockets with a one-line note saying why.
pub fn open(req: &SessionRequest) -> Result<Opened> {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let why_not_xdp = match req.mode {
        ModeRequest::Socket => return open_socket(req),
        ModeRequest::Xdp => return open_xdp(req),
        ModeRequest::Auto if uid != 0 => {
            format!("XDP needs root (CAP_NET_ADMIN and CAP_BPF); running as uid {uid}")
        }
        ModeRequest::Auto => match open_xdp(req) {
            Ok(p) => return Ok(p),
            Err(e) => format!("XDP setup failed on {}: {}", req.iface, e.message),
        },
    };
    let mut opened = open_socket(req)?;
    opened.note = format!("socket path: {why_not_xdp}");
    log::warn!("{}", opened.note);
    Ok(opened)
}

fn open_socket(req: &SessionRequest) -> Result<Opened> {
    let sock = socket::join(req.group, &req.iface, req.rcvbuf, req.source)?;
    let gro = socket::set_gro(&sock, req.socket_gro)?;
    Ok(Opened {
        mode: PathMode::Socket,
        note: String::new(),
        steering: None,
        membership: None,
        unserved: None,
        sources: vec![(0, Source::Socket { sock, gro })],
    })
}

fn open_xdp(req: &SessionRequest) -> Result<Opened> {
    let steer_err =
        |e: &dyn std::fmt::Display| Error::new(ErrorCode::SteeringFailed, e.to_string());
    let queues = match &req.queues {
        Some(q) if !q.is_empty() => q.clone(),
        _ => {
            let n = rings::rx_queue_count(&req.iface).map_err(|e| steer_err(&e))?;
            (0..n).collect()
        }
    };
    if queues.len() > MAX_WORKERS {
        return Err(Error::new(
            ErrorCode::InvalidArgument,
            format!(
                "{} queues: at most {MAX_WORKERS} are supported",
                queues.len()
            ),
        ));
    }
    // The kernel socket only keeps the group membership (IGMP/MLD) so
    // switches keep forwarding the group; the frames go to AF_XDP.
    let membership = socket::join(req.group, &req.iface, 1 << 16, req.source)?;
    let ip: IpAddr = req.group.0.ip();
    let mut steering = Steering::attach(&req.iface, ip, req.group.0.port(), req.attach)
        .map_err(|e| steer_err(&e))?;
    if req.vlan.is_some() {
        steering.set_vlan(req.vlan).map_err(|e| steer_err(&e))?;
    }
    if req.inject_loss_ppm > 0 {
        steering
            .set_drop_per_million(req.inject_loss_ppm)
            .map_err(|e| steer_err(&e))?;
    }
    let xsk_config = XskConfig {
        multi_buffer: steering.multi_buffer(),
        // Page-size frames fit any MTU: the fallback if sysfs cannot say.
        frame_size: socket::iface_mtu(&req.iface).map_or(4096, rings::frame_size_for_mtu),
        ..req.xsk.clone()
    };
    let mut sources = Vec::with_capacity(queues.len());
    for &q in &queues {
        let xsk = XskQueue::open(&req.iface, q, &xsk_config).map_err(|e| steer_err(&e))?;
        steering
            .register_socket(q, xsk.as_fd())
            .map_err(|e| steer_err(&e))?;
        sources.push((q, Source::Xsk(Box::new(xsk), req.vlan)));
    }
    let mode = match steering.mode() {
        AttachMode::Native => PathMode::XdpNative,
        AttachMode::Generic => PathMode::XdpGeneric,
    };
    let unserved = Unserved::new(&steering, req, queues).map_err(|e| steer_err(&e))?;
    Ok(Opened {
        mode,
        note: String::new(),
        steering: Some(steering),
        membership: Some(membership),
        unserved: Some(unserved),
        sources,
    })
}

/// Least time between two reads of the per-queue counters (one map lookup
/// per queue slot) while frames keep arriving on queues without a socket.
const UNSERVED_READ_EVERY: Duration = Duration::from_millis(500);

/// Watches the XDP program's count of session frames that arrived on RX
/// queues without an AF_XDP socket (passed to the kernel, so never
/// received): the most common AF_XDP setup mistake on a real NIC, where
/// RSS spreads the flow over queues that were not opened or an ntuple rule
/// is missing. Counts from the moment every socket is registered; warns
/// once for each new set of queues, naming them and the fix.
struct Unserved {
    iface: String,
    group: Group,
    served: Vec<u32>,
    /// The program's counters when the last socket was registered: total,
    /// and per queue slot.
    base: (u64, Vec<(u32, u64)>),
    status: DiagStatus,
    /// When the per-queue counters were last read, and the count then.
    last_read: Option<Instant>,
    queues_read_at: u64,
    /// Queues named in a warning so far.
    warned: Option<u64>,
}

impl Unserved {
    fn new(
        steering: &Steering,
        req: &SessionRequest,
        served: Vec<u32>,
    ) -> std::result::Result<Unserved, crate::net::steer::SteerError> {
        Ok(Unserved {
            iface: req.iface.clone(),
            group: req.group,
            served,
            base: (steering.stats()?.no_socket, steering.unserved_queues()?),
            status: DiagStatus::default(),
            last_read: None,
            queues_read_at: 0,
            warned: None,
        })
    }

    /// Bring the counts up to date (cheap unless they moved) and warn
    /// about queues not named before.
    fn update(&mut self, steering: &Steering) {
        let Ok(stats) = steering.stats() else {
            return;
        };
        let total = stats.no_socket.wrapping_sub(self.base.0);
        self.status.unserved_frames = total;
        // The queues, when the count has moved since they were last read.
        if total == self.queues_read_at
            || self
                .last_read
                .is_some_and(|t| t.elapsed() < UNSERVED_READ_EVERY)
        {
            return;
        }
        let Ok(per_queue) = steering.unserved_queues() else {
            return;
        };
        self.last_read = Some(Instant::now());
        self.queues_read_at = total;
        let before = |q: u32| {
            self.base
                .1
                .iter()
                .find(|&&(b, _)| b == q)
                .map_or(0, |&(_, n)| n)
        };
        self.status.unserved_queues = per_queue
            .iter()
            .filter(|&&(q, n)| n > before(q))
            .fold(0, |mask, &(q, _)| mask | 1 << q);
        if self
            .warned
            .is_some_and(|w| self.status.unserved_queues & !w == 0)
        {
            return;
        }
        self.warned = Some(self.status.unserved_queues | self.warned.unwrap_or(0));
        log::warn!("{}", self.advice());
    }

    /// The warning: how many frames went where, and the ways to fix it.
    fn advice(&self) -> String {
        let iface = &self.iface;
        let (ip, port) = (self.group.0.ip(), self.group.0.port());
        let flow = if ip.is_ipv4() { "udp4" } else { "udp6" };
        let first = self.served.first().copied().unwrap_or(0);
        // RSS over the served queues only: `equal N` when they are the
        // first N, else a weight per queue.
        let contiguous = self.served.iter().enumerate().all(|(i, &q)| q == i as u32);
        let rss = if contiguous {
            format!("equal {}", self.served.len())
        } else {
            let top = self
                .served
                .iter()
                .copied()
                .chain(self.status.queues())
                .max()
                .unwrap_or(0)
                .min(QUEUE_SLOTS - 1);
            let weights: Vec<&str> = (0..=top)
                .map(|q| if self.served.contains(&q) { "1" } else { "0" })
                .collect();
            format!("weight {}", weights.join(" "))
        };
        format!(
            "{iface}: {}; the kernel stack got them instead. Serve every queue with \
             --queues all (or leave --queues out), or steer the flow to a served queue with \
             an ntuple rule (`ethtool -N {iface} flow-type {flow} dst-ip {ip} dst-port {port} \
             action {first}`) or RSS (`ethtool -X {iface} {rss}`)",
            report::unserved(&self.status)
        )
    }
}

/// A running data path feeding sink `S`. Dropping it stops the workers and
/// detaches XDP.
pub struct DataPath<S: Sink> {
    /// Path in use.
    pub mode: PathMode,
    /// Where the workers put the packets.
    pub sink: Arc<S>,
    workers: Vec<Worker>,
    /// (queue, cpu) of each worker, kept after the workers are joined.
    pub slots: Vec<(u32, Option<usize>)>,
    stop: Arc<AtomicBool>,
    steering: Option<Steering>,
    /// The thread detaching XDP once [`Self::stop`] was called.
    detaching: Option<JoinHandle<std::result::Result<(), SteerError>>>,
    unserved: Option<Unserved>,
    _membership: Option<Socket>,
    /// Whether the XDP program filters on the sink's source yet.
    source_set: bool,
    /// Frames the XDP program dropped for another source, last read.
    foreign_dropped: u64,
}

impl<S: Sink> DataPath<S> {
    /// Start one worker per source, worker i pinned to `cores[i % len]`
    /// (default: the i-th CPU, modulo their number, of those this process
    /// may use).
    pub fn start(opened: Opened, sink: Arc<S>, cores: Option<&[usize]>) -> Result<DataPath<S>> {
        let stop = Arc::new(AtomicBool::new(false));
        sink.start_helpers(Arc::downgrade(&sink));
        // The CPUs this process may use (e.g. under taskset), not 0..n.
        let allowed = crate::cpu::allowed(0).unwrap_or_default();
        let mut path = DataPath {
            mode: opened.mode,
            sink: sink.clone(),
            workers: Vec::new(),
            slots: Vec::new(),
            stop: stop.clone(),
            steering: opened.steering,
            detaching: None,
            unserved: opened.unserved,
            _membership: opened.membership,
            source_set: false,
            foreign_dropped: 0,
        };
        for (i, (queue, source)) in opened.sources.into_iter().enumerate() {
            let cpu = match cores {
                Some(c) if !c.is_empty() => c[i % c.len()],
                _ if !allowed.is_empty() => allowed[i % allowed.len()],
                _ => i,
            };
            path.slots.push((queue, Some(cpu)));
            // On failure `path` drops: started workers are stopped, XDP detached.
            path.workers.push(workers::spawn(
                i,
                queue,
                Some(cpu),
                source,
                sink.clone(),
                stop.clone(),
            )?);
        }
        Ok(path)
    }

    /// XDP program counters, on the XDP path.
    pub fn steering(&self) -> Option<&Steering> {
        self.steering.as_ref()
    }

    /// Once the sink knows its sender's address (`--source`, a verified
    /// manifest), have the XDP program drop the group's frames from any
    /// other address; returns how many it dropped so far (for the
    /// `foreign_source` counter; the workers count the ones they drop).
    pub fn source_filter(&mut self) -> u64 {
        let Some(s) = self.steering.as_mut() else {
            return self.foreign_dropped;
        };
        if let (false, Some(ip)) = (self.source_set, self.sink.source()) {
            self.source_set = true;
            if let Err(e) = s.set_source(ip) {
                log::warn!("the XDP program cannot filter on {ip}: {e}; the workers do");
            }
        }
        if let Ok(st) = s.stats() {
            self.foreign_dropped = st.foreign_source;
        }
        self.foreign_dropped
    }

    /// Diagnostics for the status page, brought up to date while XDP is
    /// attached (and kept after); logs a warning, naming the queues and
    /// the fix, when session frames arrive on queues without a socket.
    pub fn diag(&mut self) -> DiagStatus {
        let mut d = match (&mut self.unserved, &self.steering) {
            (Some(u), Some(s)) => {
                u.update(s);
                u.status
            }
            (Some(u), None) => u.status,
            _ => DiagStatus::default(),
        };
        // Relaxed: each worker's time is a value on its own.
        d.last_block_ns = (0..self.slots.len())
            .map(|i| self.sink.counters(i).last_block_ns.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0);
        d
    }

    /// `msg`, followed by why nothing arrived when session frames went to
    /// queues without a socket: for the error of a receiver that saw none.
    pub fn explain_silence(&self, msg: String) -> String {
        match &self.unserved {
            Some(u) if u.status.unserved_frames > 0 => {
                format!(
                    "{msg}; {} ({})",
                    report::unserved(&u.status),
                    report::UNSERVED_FIX
                )
            }
            _ => msg,
        }
    }

    /// Tell the workers to stop and detach XDP, without waiting: an idle
    /// worker sees the flag within its poll timeout, and XDP is detached
    /// on a thread of its own (its frames go back to the kernel rather
    /// than to a queue whose socket is gone). [`Self::join`] waits for
    /// both.
    pub fn stop(&mut self) {
        // Release: nothing is published with the flag; the workers load
        // it Relaxed and only need to see it eventually.
        self.stop.store(true, Ordering::Release);
        if let Some(s) = self.steering.take() {
            // Should the thread not start, the closure and with it the
            // steering are dropped here, which detaches it in place.
            let spawned = std::thread::Builder::new()
                .name("xdpcast-detach".into())
                .spawn(move || s.detach());
            self.detaching = spawned.ok();
        }
    }

    /// Stop the workers and detach XDP, and wait for both; the first
    /// worker error, if any.
    pub fn join(&mut self) -> Option<Error> {
        self.stop();
        let error = self
            .workers
            .drain(..)
            .filter_map(|w| w.join().err())
            .collect::<Vec<_>>()
            .into_iter()
            .next();
        match self.detaching.take().map(JoinHandle::join) {
            Some(Ok(Err(e))) => log::warn!("detaching XDP: {e}"),
            Some(Err(_)) => log::warn!("detaching XDP: the thread panicked"),
            _ => {}
        }
        error
    }
}

impl<S: Sink> Drop for DataPath<S> {
    fn drop(&mut self) {
        self.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(group: &str, served: Vec<u32>, frames: u64, queues: u64) -> Unserved {
        Unserved {
            iface: "eth1".into(),
            group: group.parse().unwrap(),
            served,
            base: (0, Vec::new()),
            status: DiagStatus {
                unserved_frames: frames,
                unserved_queues: queues,
                last_block_ns: 0,
            },
            last_read: None,
            queues_read_at: 0,
            warned: None,
        }
    }

    #[test]
    fn advice_names_the_queues_and_the_fixes() {
        let first_queue = watch("239.1.2.3:5000", vec![0], 40, 0b10).advice();
        assert!(
            first_queue.starts_with(
                "eth1: 40 frames of the session on RX queue 1 without an AF_XDP socket"
            ),
            "{first_queue}"
        );
        for want in [
            "--queues all",
            "`ethtool -N eth1 flow-type udp4 dst-ip 239.1.2.3 dst-port 5000 action 0`",
            "`ethtool -X eth1 equal 1`",
        ] {
            assert!(first_queue.contains(want), "{want} in {first_queue}");
        }
        // Served queues that are not the first N: RSS weights per queue.
        let gaps = watch("[ff12::204:1]:6000", vec![0, 2], 7, 0b1010).advice();
        for want in [
            "on RX queues 1,3 without",
            "flow-type udp6 dst-ip ff12::204:1 dst-port 6000 action 0",
            "`ethtool -X eth1 weight 1 0 1 0`",
        ] {
            assert!(gaps.contains(want), "{want} in {gaps}");
        }
    }
}
