//! Choosing and running the data path: XDP steering with one AF_XDP socket
//! and worker per RX queue, or the portable socket path with one worker.
//! Used by every receive flow (the xdpcast session, the udpcast receiver).

use std::net::IpAddr;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use socket2::Socket;

use crate::error::{Error, ErrorCode, Result};
use crate::net::rings::{self, XskConfig, XskQueue};
use crate::net::socket;
use crate::net::steer::{AttachMode, Steering};
use crate::receive::request::{ModeRequest, SessionRequest};
use crate::receive::workers::{self, Sink, Source, Worker};
use crate::status::page::{PathMode, MAX_WORKERS};

/// A data path that is set up but whose workers have not started.
pub struct Opened {
    /// Path chosen.
    pub mode: PathMode,
    /// Why `Auto` fell back to sockets (empty otherwise).
    pub note: String,
    steering: Option<Steering>,
    membership: Option<Socket>,
    /// One source per worker, with its RX queue (or socket index).
    pub sources: Vec<(u32, Source)>,
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
    let sock = socket::join(req.group, &req.iface, req.rcvbuf)?;
    Ok(Opened {
        mode: PathMode::Socket,
        note: String::new(),
        steering: None,
        membership: None,
        sources: vec![(0, Source::Socket(sock))],
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
    let membership = socket::join(req.group, &req.iface, 1 << 16)?;
    let ip: IpAddr = req.group.0.ip();
    let mut steering = Steering::attach(&req.iface, ip, req.group.0.port(), req.attach)
        .map_err(|e| steer_err(&e))?;
    if req.inject_loss_ppm > 0 {
        steering
            .set_drop_per_million(req.inject_loss_ppm)
            .map_err(|e| steer_err(&e))?;
    }
    let xsk_config = XskConfig {
        multi_buffer: steering.multi_buffer(),
        ..req.xsk.clone()
    };
    let mut sources = Vec::with_capacity(queues.len());
    for &q in &queues {
        let xsk = XskQueue::open(&req.iface, q, &xsk_config).map_err(|e| steer_err(&e))?;
        steering
            .register_socket(q, xsk.as_fd())
            .map_err(|e| steer_err(&e))?;
        sources.push((q, Source::Xsk(Box::new(xsk))));
    }
    let mode = match steering.mode() {
        AttachMode::Native => PathMode::XdpNative,
        AttachMode::Generic => PathMode::XdpGeneric,
    };
    Ok(Opened {
        mode,
        note: String::new(),
        steering: Some(steering),
        membership: Some(membership),
        sources,
    })
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
    _membership: Option<Socket>,
}

impl<S: Sink> DataPath<S> {
    /// Start one worker per source, worker i pinned to `cores[i % len]`
    /// (default: core i mod the number of CPUs).
    pub fn start(opened: Opened, sink: Arc<S>, cores: Option<&[usize]>) -> Result<DataPath<S>> {
        let stop = Arc::new(AtomicBool::new(false));
        let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut path = DataPath {
            mode: opened.mode,
            sink: sink.clone(),
            workers: Vec::new(),
            slots: Vec::new(),
            stop: stop.clone(),
            steering: opened.steering,
            _membership: opened.membership,
        };
        for (i, (queue, source)) in opened.sources.into_iter().enumerate() {
            let cpu = match cores {
                Some(c) if !c.is_empty() => c[i % c.len()],
                _ => i % ncpu,
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

    /// Stop the workers and detach XDP; the first worker error, if any.
    pub fn shut_down(&mut self) -> Option<Error> {
        self.stop.store(true, Ordering::Release);
        let errors: Vec<Error> = self
            .workers
            .drain(..)
            .filter_map(|w| w.join().err())
            .collect();
        if let Some(s) = self.steering.take() {
            if let Err(e) = s.detach() {
                log::warn!("detaching XDP: {e}");
            }
        }
        errors.into_iter().next()
    }
}

impl<S: Sink> Drop for DataPath<S> {
    fn drop(&mut self) {
        self.shut_down();
    }
}
