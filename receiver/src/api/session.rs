//! The session API, modelled on the Windows WdsTransportClient calls:
//! [`Session::initialize`], [`Session::start`], [`Session::query_status`]
//! (valid after completion until [`Session::close`]),
//! [`Session::wait_for_completion`], [`Session::cancel`], [`Session::close`].
//!
//! `start` picks the data path (XDP or sockets), starts the workers and a
//! control thread that publishes the status page, watches for completion,
//! timeouts and failures, verifies the image's SHA-256 and tears the data
//! path down (the XDP program is always detached).

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::core::gaps::{Heard, Requester};
use crate::error::{Error, ErrorCode, Result};
use crate::fetch::{Fetcher, HttpCounters};
use crate::net::socket;
use crate::proto::wire::{self, hex, DropReason, Packet, Report};
use crate::receive::datapath::{self, DataPath};
use crate::receive::request::SessionRequest;
use crate::receive::transfer::Transfer;
use crate::receive::workers::Sink;
use crate::rng::XorShift;
use crate::status::page::{
    now_ns, writer_page_path, PathMode, Snapshot, State, StatusWriter, FLAG_DIGEST, FLAG_GEOMETRY,
    TRUST_MANIFEST, TRUST_NO_READ_BACK, TRUST_REQUIRED,
};

/// How often the control thread looks at the transfer and publishes the page.
const TICK: Duration = Duration::from_millis(50);
/// After the sender's last pass ended, how long to wait for late blocks.
const LAST_PASS_GRACE: Duration = Duration::from_secs(1);
/// How often the resume file is brought up to date.
const RESUME_EVERY: Duration = Duration::from_secs(1);
/// How often a receiver reports its progress to the sender.
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// Copies of the final report (it is not repeated later).
const FINAL_REPORTS: usize = 3;
/// Most missing ranges one receiver reports per round (64 packets).
const NACK_MAX_RANGES: usize = 64 * crate::proto::wire::MAX_NACK_RANGES;
/// An unsigned session takes the sender's "too slow" verdict only when it
/// keeps coming for this long (the sender repeats it in answer to every
/// report, about once a second): one forged packet, or a short burst of
/// them, ends nothing.
const VERDICT_SPAN: Duration = Duration::from_millis(500);

/// Keeps the resume file up to date from its own thread, so that syncing
/// the target never delays status updates or NACKs.
struct Persister {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Persister {
    fn start(t: Arc<Transfer>) -> Persister {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("xdpcast-resume".into())
            .spawn(move || {
                let mut saved = 0;
                let mut last = Instant::now();
                while !flag.load(Ordering::Acquire) {
                    // Unparked by the drop: the session's end does not
                    // wait out a tick here.
                    std::thread::park_timeout(TICK);
                    if flag.load(Ordering::Acquire) {
                        break;
                    }
                    let done = t.blocks_done();
                    if done != saved && last.elapsed() >= RESUME_EVERY {
                        if let Err(e) = t.save_resume() {
                            t.fail(e);
                        }
                        saved = done;
                        last = Instant::now();
                    }
                }
            })
            .ok();
        Persister { stop, handle }
    }
}

impl Drop for Persister {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.handle.take() {
            h.thread().unpark();
            let _ = h.join();
        }
    }
}

/// The receiver's end of the back-channel: one unicast socket, bound once
/// the sender's repair address is known, for NACKs, parity requests and
/// progress reports (so the sender sees them all come from one address),
/// and for the sender's unicast verdict.
#[derive(Debug, Default)]
struct Link {
    sock: OnceLock<(UdpSocket, SocketAddr)>,
    /// NACK and parity request packets sent.
    requests: AtomicU64,
    /// Requests not sent because the sender had confirmed enough for the
    /// round (suppressed).
    suppressed: AtomicU64,
    /// Index of the receiving interface: the scope of a link-local repair
    /// address.
    scope: u32,
    /// The session name as reports carry it: a signed verdict names it.
    name: [u8; wire::REPORT_NAME_LEN],
    /// This receiver's random per-session token, in every report and
    /// request: the sender keys its row by address, port and token, so
    /// reports forged in this receiver's name (same address, port and
    /// name) make a row of their own and cannot change this one.
    token: u64,
    /// Unsigned session: when the first "too slow" verdict came.
    verdict_since: Mutex<Option<Instant>>,
    /// Verdicts dropped: not from the repair address, not signed by the
    /// session's key, or not for this receiver.
    bad_verdicts: AtomicU64,
}

impl Link {
    /// The socket and the sender's repair address, once announced.
    fn get(&self, t: &Transfer) -> std::io::Result<Option<&(UdpSocket, SocketAddr)>> {
        if let Some(s) = self.sock.get() {
            return Ok(Some(s));
        }
        let Some(to) = t.last_control().and_then(|c| c.repair_to()) else {
            return Ok(None);
        };
        let to = socket::scoped(to, self.scope);
        let any: SocketAddr = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
            .parse()
            .expect("literal address");
        let sock = UdpSocket::bind(any)?;
        sock.set_nonblocking(true)?;
        Ok(Some(self.sock.get_or_init(|| (sock, to))))
    }

    fn send(&self, pkt: &[u8], t: &Transfer) -> std::io::Result<()> {
        if let Some((sock, to)) = self.get(t)? {
            sock.send_to(pkt, to)?;
        }
        Ok(())
    }
}

/// Sends progress reports from its own thread (so they keep coming while
/// the control thread verifies the image), takes the sender's "too slow"
/// verdict, and sends the final state when the session ends.
struct Reporter {
    stop: Arc<AtomicBool>,
    last: Arc<Mutex<(State, ErrorCode)>>,
    handle: Option<JoinHandle<()>>,
}

impl Reporter {
    fn start(t: Arc<Transfer>, link: Arc<Link>, http_slot: Option<usize>) -> Reporter {
        let stop = Arc::new(AtomicBool::new(false));
        let last = Arc::new(Mutex::new((State::InProgress, ErrorCode::None)));
        let (flag, fin) = (stop.clone(), last.clone());
        let name = link.name;
        let handle = std::thread::Builder::new()
            .name("xdpcast-report".into())
            .spawn(move || {
                let mut rng = XorShift::from_entropy();
                let mut next = Instant::now();
                // Whether a report went out: none before the session's
                // image is known.
                let report = |state: State, error: ErrorCode| {
                    let Some(img) = t.image() else {
                        return Ok(false);
                    };
                    let r = Report {
                        blocks_done: t.blocks_done(),
                        requests: link.requests.load(Ordering::Relaxed) as u32,
                        state: state as u8,
                        error: error as u8,
                        flags: if http_slot
                            .is_some_and(|i| t.counters(i).bytes.load(Ordering::Relaxed) > 0)
                        {
                            wire::REPORT_HTTP
                        } else {
                            0
                        },
                        name,
                    };
                    link.send(
                        &wire::encode_progress(img.session, &img.geometry, link.token, &r),
                        &t,
                    )
                    .map(|()| true)
                };
                while !flag.load(Ordering::Acquire) {
                    std::thread::sleep(TICK);
                    take_verdict(&t, &link, false);
                    if Instant::now() >= next {
                        match report(State::InProgress, ErrorCode::None) {
                            // The first report goes out at the first tick
                            // after the session is heard (a sender waiting
                            // for --min-receivers starts then), not a
                            // period after the receiver started.
                            Ok(false) => continue,
                            Ok(true) => {}
                            Err(e) => log::debug!("progress report: {e}"),
                        }
                        // 75-125% of the period, so reports do not bunch up.
                        let jitter = rng.next_u64() % 500;
                        next =
                            Instant::now() + REPORT_EVERY * 3 / 4 + Duration::from_millis(jitter);
                    }
                }
                let (state, error) = *fin.lock().unwrap_or_else(|p| p.into_inner());
                for _ in 0..FINAL_REPORTS {
                    if !matches!(report(state, error), Ok(true)) {
                        break;
                    }
                }
            })
            .ok();
        Reporter { stop, last, handle }
    }

    /// Send the final state and stop.
    fn finish(mut self, state: State, error: ErrorCode) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = (state, error);
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The sender's "too slow" verdict, unicast from its repair address, ends
/// the transfer: in a signed session only when signed with the session's
/// key for this receiver (its port and name); in an unsigned one when it
/// has kept coming for [`VERDICT_SPAN`], or, `at_end` (the session fails
/// anyway), when one came at all.
fn take_verdict(t: &Transfer, link: &Link, at_end: bool) {
    let (Some((sock, to)), Some(img)) = (link.sock.get(), t.image()) else {
        return;
    };
    let port = sock.local_addr().map_or(0, |a| a.port());
    let mut buf = [0u8; 256];
    let mut verdict = None;
    while let Ok((n, from)) = sock.recv_from(&mut buf) {
        if from.ip() != to.ip() || from.port() != to.port() {
            link.bad_verdicts.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let Ok(Packet::Confirm {
            session,
            geometry,
            round,
            flags,
            proof,
            ..
        }) = wire::parse(&buf[..n])
        else {
            continue;
        };
        if session != img.session || geometry != img.geometry || flags & wire::CONFIRM_TOO_SLOW == 0
        {
            continue;
        }
        // Signed: for this receiver, and true of it (the report the
        // sender judged by may have been forged in its name).
        let trusted = match t.signed() {
            Some(s) => s
                .manifest
                .verify_verdict(&s.key, round, port, &link.name, proof)
                .is_ok_and(|ppm| {
                    let n = img.geometry.block_count;
                    let behind = n.saturating_sub(t.blocks_done());
                    behind as f64 > f64::from(ppm) / 1e6 * n as f64
                }),
            None => !t.is_signed(),
        };
        if !trusted {
            if link.bad_verdicts.fetch_add(1, Ordering::Relaxed) == 0 {
                log::warn!("a \"too slow\" verdict not signed for this receiver is ignored");
            }
            continue;
        }
        verdict = Some(if t.is_signed() {
            "signed by the session's key"
        } else {
            "repeated"
        });
    }
    let pending = {
        let mut since = link.verdict_since.lock().unwrap_or_else(|p| p.into_inner());
        if verdict == Some("repeated") {
            since.get_or_insert_with(Instant::now);
        }
        *since
    };
    let corroborated = match (verdict, pending) {
        (Some(how), _) if t.is_signed() => Some(how),
        (Some(_), Some(at)) if at.elapsed() >= VERDICT_SPAN => Some("repeated"),
        (_, Some(_)) if at_end => Some("repeated"),
        _ => None,
    };
    if let Some(how) = corroborated {
        t.fail(Error::new(
            ErrorCode::TooSlow,
            format!("the sender says this receiver is too far behind the others (send --max-behind; verdict {how})"),
        ));
    }
}

/// Asks for repair: the repair core's [`Requester`] says when (a random
/// backoff after each end of pass or round, once no full pass is left, and
/// again when a request brought nothing); then it sends parity requests
/// (per FEC group, the symbols it lacks beyond what the sender has
/// confirmed for the round) and NACKs (block ranges for groups it has
/// nothing of, or when the sender takes no parity requests).
#[derive(Default)]
struct Repairer {
    link: Arc<Link>,
    requester: Requester,
}

impl Repairer {
    /// How long the control thread may sleep before a request is due.
    fn wake_in(&self) -> Option<Duration> {
        self.requester
            .poll_timeout()
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    fn tick(&mut self, t: &Transfer, blocks_done: u64) -> std::io::Result<()> {
        let Some(control) = t.last_control() else {
            return Ok(());
        };
        if control.repair_to().is_none() {
            return Ok(());
        }
        // An unsigned FINAL is a hint anyone can send: ask on regardless
        // (a sender that has really finished ignores it).
        let heard = Heard {
            passes_seen: t.passes_seen(),
            passes: u64::from(control.passes),
            gsize_log2: control.gsize_log2(),
            over: t.is_signed() && t.final_pass_ended(),
        };
        if !self.requester.poll(Instant::now(), &heard, blocks_done) {
            return Ok(());
        }
        let Some(img) = t.image() else {
            return Ok(());
        };
        if blocks_done >= img.geometry.block_count {
            return Ok(());
        }
        let (session, g) = (img.session, &img.geometry);
        let pkts = match control.parity_group() {
            Some(gs) => {
                let needs = t.needs(gs, u64::from(control.pass), NACK_MAX_RANGES);
                let token = self.link.token;
                let mut p = wire::encode_nacks(session, g, token, &needs.ranges);
                p.extend(wire::encode_parity_requests(
                    session,
                    g,
                    token,
                    gs,
                    &needs.parity,
                ));
                p
            }
            None => wire::encode_nacks(
                session,
                g,
                self.link.token,
                &t.missing_ranges(NACK_MAX_RANGES),
            ),
        };
        if pkts.is_empty() {
            self.link.suppressed.fetch_add(1, Ordering::Relaxed);
        }
        for pkt in pkts {
            self.link.send(&pkt, t)?;
            self.link.requests.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Called once the image size is known: (total bytes, block size).
pub type StartCallback = Box<dyn FnMut(u64, u32) + Send>;
/// Called on every status update.
pub type ProgressCallback = Box<dyn FnMut(&Snapshot) + Send>;
/// Called once when the session ends.
pub type CompleteCallback = Box<dyn FnMut(State, ErrorCode) + Send>;

/// Optional notifications, called from the session's control thread.
#[derive(Default)]
pub struct Callbacks {
    /// Image size known.
    pub on_start: Option<StartCallback>,
    /// Progress.
    pub on_progress: Option<ProgressCallback>,
    /// Final state.
    pub on_complete: Option<CompleteCallback>,
}

#[derive(Default)]
struct Shared {
    cancel: AtomicBool,
    status: Mutex<(State, ErrorCode)>,
    done: Condvar,
}

impl Shared {
    fn set(&self, s: State, e: ErrorCode) {
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = (s, e);
        if s.is_final() {
            self.done.notify_all();
        }
    }

    fn get(&self) -> (State, ErrorCode) {
        *self.status.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One receive session.
pub struct Session {
    req: SessionRequest,
    writer: Arc<StatusWriter>,
    shared: Arc<Shared>,
    callbacks: Option<Callbacks>,
    control: Option<JoinHandle<()>>,
    mode: PathMode,
    note: String,
    closed: bool,
}

impl Session {
    /// Validate the request and create the status page (state INITIALIZED).
    pub fn initialize(req: SessionRequest, callbacks: Callbacks) -> Result<Session> {
        socket::iface_index(&req.iface)?;
        let path = writer_page_path(&req.name)?;
        if req.target.as_os_str().is_empty() {
            return Err(Error::new(ErrorCode::InvalidArgument, "no target given"));
        }
        req.validate()?;
        let writer = Arc::new(StatusWriter::create(&path)?);
        let s = Session {
            writer,
            shared: Arc::default(),
            callbacks: Some(callbacks),
            control: None,
            mode: PathMode::Unknown,
            note: String::new(),
            closed: false,
            req,
        };
        s.writer.publish(&s.base_snapshot());
        Ok(s)
    }

    fn base_snapshot(&self) -> Snapshot {
        let (state, error) = self.shared.get();
        Snapshot {
            state,
            error,
            mode: self.mode,
            name: self.req.name.clone(),
            group: self.req.group.to_string(),
            target: self.req.target.display().to_string(),
            message: self.note.clone(),
            ..Snapshot::default()
        }
    }

    fn check_open(&self) -> Result<()> {
        if self.closed {
            return Err(Error::new(
                ErrorCode::Closed,
                format!("session {} is closed", self.req.name),
            ));
        }
        Ok(())
    }

    /// The data path chosen by `start`.
    pub fn mode(&self) -> PathMode {
        self.mode
    }

    /// Why the data path was chosen, when `Auto` fell back to sockets.
    pub fn mode_note(&self) -> &str {
        &self.note
    }

    /// Name of the session.
    pub fn name(&self) -> &str {
        &self.req.name
    }

    /// Set up the data path and start receiving.
    pub fn start(&mut self) -> Result<()> {
        self.check_open()?;
        if self.control.is_some() || self.shared.get().0 != State::Initialized {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                "session already started",
            ));
        }
        if self.req.trust.is_empty() {
            log::warn!(
                "session {} is not authenticated: anyone on the network can change what is written (sign it: send --sign, receive --trust)",
                self.req.name
            );
        }
        // The HTTP source, if any, counts on the slot after the workers'.
        let mut http_slot = 0;
        let path = match datapath::open(&self.req).and_then(|opened| {
            self.note = opened.note.clone();
            http_slot = opened.sources.len();
            let transfer = Arc::new(
                Transfer::new(
                    self.req.target.clone(),
                    self.req.session_id,
                    http_slot + usize::from(self.req.http.is_some()),
                )
                .with_resume(self.req.resume_file.clone())
                .with_store(self.req.store)
                .with_trust(self.req.trust.clone(), self.req.expect_sha256)
                .with_max_manifest_age(self.req.max_manifest_age)
                .with_max_clock_skew(self.req.max_clock_skew)
                .with_source(self.req.source)
                .with_stream_window(self.req.stream_window)
                .with_hash_threads(self.req.hash_threads),
            );
            DataPath::start(opened, transfer, self.req.cores.as_deref())
        }) {
            Ok(p) => p,
            Err(e) => {
                self.end_without_start(&e);
                return Err(e);
            }
        };
        self.mode = path.mode;
        let fetch = match &self.req.http {
            Some(h) => match Fetcher::start(
                path.sink.clone(),
                http_slot,
                h.clone(),
                self.req.trust.clone(),
            ) {
                Ok(f) => Some(f),
                Err(e) => {
                    let e = Error::new(
                        ErrorCode::Internal,
                        format!("cannot start the HTTP thread: {e}"),
                    );
                    self.end_without_start(&e);
                    return Err(e);
                }
            },
            None => None,
        };
        self.shared.set(State::InProgress, ErrorCode::None);
        let ctl = Control {
            http_slot: fetch.as_ref().map(|_| http_slot),
            http_counters: fetch.as_ref().map(Fetcher::counters_handle),
            fetch,
            base: self.base_snapshot(),
            path,
            writer: self.writer.clone(),
            shared: self.shared.clone(),
            callbacks: self.callbacks.take().unwrap_or_default(),
            start_timeout: self.req.start_timeout,
            idle_timeout: self.req.idle_timeout,
            repair: Repairer {
                link: Arc::new(Link {
                    scope: socket::iface_index(&self.req.iface).unwrap_or(0),
                    name: Report::name_field(&self.req.name),
                    token: crate::rng::token(),
                    ..Link::default()
                }),
                ..Repairer::default()
            },
        };
        self.control = Some(
            std::thread::Builder::new()
                .name("xdpcast-control".into())
                .spawn(move || ctl.run())
                .map_err(|e| {
                    Error::new(
                        ErrorCode::Internal,
                        format!("cannot start control thread: {e}"),
                    )
                })?,
        );
        Ok(())
    }

    fn end_without_start(&mut self, e: &Error) {
        self.shared.set(State::Failure, e.code);
        let mut s = self.base_snapshot();
        s.message = e.message.clone();
        s.end_ns = now_ns();
        self.writer.publish(&s);
    }

    /// The state and error code. Valid after completion, until `close`.
    pub fn query_status(&self) -> Result<(State, ErrorCode)> {
        self.check_open()?;
        Ok(self.shared.get())
    }

    /// Wait until the session is final or `timeout` passes (None: forever).
    /// Returns the final state, or a `Timeout` error if still running.
    pub fn wait_for_completion(&self, timeout: Option<Duration>) -> Result<(State, ErrorCode)> {
        self.check_open()?;
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut g = self.shared.status.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if g.0.is_final() {
                return Ok(*g);
            }
            if g.0 == State::Initialized {
                return Err(Error::new(
                    ErrorCode::InvalidArgument,
                    "session not started",
                ));
            }
            let wait = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left,
                    _ => return Err(Error::new(ErrorCode::Timeout, "session still in progress")),
                },
                None => Duration::from_secs(3600),
            };
            g = self
                .shared
                .done
                .wait_timeout(g, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Cancel the session; it ends in FAILURE with the `Cancelled` code.
    pub fn cancel(&mut self) -> Result<()> {
        self.check_open()?;
        self.shared.cancel.store(true, Ordering::Release);
        if self.control.is_none() && !self.shared.get().0.is_final() {
            self.end_without_start(&Error::new(ErrorCode::Cancelled, "cancelled before start"));
        }
        Ok(())
    }

    /// Stop everything (cancelling a running session) and remove the status
    /// page. Further calls return an error.
    pub fn close(&mut self) -> Result<()> {
        self.check_open()?;
        if !self.shared.get().0.is_final() {
            self.cancel()?;
        }
        if let Some(h) = self.control.take() {
            let _ = h.join();
        }
        self.closed = true;
        self.writer.remove()
    }

    /// Leave the status page in place after the session object is gone
    /// (`xdpcast receive --keep-status`); `xdpcast close NAME` removes it.
    pub fn detach_status_page(mut self) {
        if let Some(h) = self.control.take() {
            let _ = h.join();
        }
        self.closed = true;
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if !self.closed {
            let _ = self.close();
        }
    }
}

/// The control thread's state.
struct Control {
    /// The HTTP source (`--http`), until the outcome is known.
    fetch: Option<Fetcher>,
    /// Its worker-counter slot (kept after the source stopped).
    http_slot: Option<usize>,
    /// Its counters (kept after the source stopped).
    http_counters: Option<Arc<HttpCounters>>,
    base: Snapshot,
    path: DataPath<Transfer>,
    writer: Arc<StatusWriter>,
    shared: Arc<Shared>,
    callbacks: Callbacks,
    start_timeout: Duration,
    idle_timeout: Duration,
    repair: Repairer,
}

/// Rate bookkeeping between ticks.
struct Meter {
    start: Instant,
    first_block: Option<Instant>,
    last: Instant,
    last_bytes: u64,
    rate: u64,
}

impl Control {
    fn snapshot(&mut self, state: State, meter: &mut Meter) -> Snapshot {
        let diag = self.path.diag();
        let foreign = self.path.source_filter();
        let t = &self.path.sink;
        let mut s = Snapshot {
            state,
            start_ns: self.base.start_ns,
            diag,
            ..self.base.clone()
        };
        s.workers = self
            .path
            .slots
            .iter()
            .zip(t.all_counters())
            .map(|(&(queue, cpu), c)| c.snapshot(u64::from(queue), cpu))
            .collect();
        s.storage = t.storage_status();
        // Each counter's drops by reason, loaded once: a slot's `drops`
        // and the page's `drops[]` are sums of the same values, so that
        // `packets` is exactly what was taken in less what was dropped
        // (docs/status-page.md).
        let mut slots = s.workers.iter_mut();
        for c in t.all_counters() {
            let by_reason = c.drops.each_ref().map(|v| v.load(Ordering::Relaxed));
            if let Some(w) = slots.next() {
                w.drops = by_reason.iter().sum();
            }
            for (d, v) in s.drops.iter_mut().zip(by_reason) {
                *d += v;
            }
        }
        // Chunks that failed their hash: found by the staging writer (or a
        // page's worker), counted by the signed state, not by a worker.
        s.drops[DropReason::BadChunk as usize] += t.signed().map_or(0, |sg| sg.bad_chunks());
        // What the HTTP source fed in counts like the workers' packets.
        let http = self.http_slot.map(|slot| t.counters(slot));
        let http_bytes = http.map_or(0, |c| c.bytes.load(Ordering::Relaxed));
        s.packets = (s.workers.iter().map(|w| w.packets).sum::<u64>()
            + http.map_or(0, |c| c.packets.load(Ordering::Relaxed)))
        .saturating_sub(s.total_drops());
        // Dropped in the XDP program: never seen by a worker.
        s.drops[DropReason::ForeignSource as usize] += foreign;
        s.blocks_done = t.blocks_done();
        // What this run received, for the rates; bytes_done also counts
        // the blocks a resume file says are on disk already.
        let received: u64 = s.workers.iter().map(|w| w.bytes).sum::<u64>() + http_bytes;
        if let Some(img) = t.image() {
            s.flags |= FLAG_GEOMETRY;
            s.session_id = u64::from(img.session);
            s.block_size = u64::from(img.geometry.block_size);
            s.block_count = img.geometry.block_count;
            s.total_bytes = img.geometry.total_size;
            s.sparse.zero_method = img.target.zeroed_by();
        }
        // Zero runs count as done: they are in place, only never sent.
        // Blocks of a chunk that failed its hash were counted when they
        // landed and are asked for again: they are not progress.
        let rejected = t.signed().map_or(0, |sg| sg.rejected_bytes());
        let done = t.resumed_and_skipped();
        s.sparse.skipped_bytes = done.skipped_bytes;
        s.sparse.skipped_blocks = done.skipped_blocks;
        s.bytes_done =
            (received + done.resumed_bytes + done.skipped_bytes).saturating_sub(rejected);
        if let Some(d) = t.digest() {
            s.flags |= FLAG_DIGEST;
            s.digest = d;
        }
        if let Some(st) = t.stream_status() {
            s.stream = st;
        }
        s.passes_seen = t.passes_seen();
        s.fec_recovered = t.fec_recovered();
        s.nacks_sent = self.repair.link.requests.load(Ordering::Relaxed);
        s.resumed_blocks = done.resumed_blocks;
        s.first_pass_missing = t.first_pass_missing().unwrap_or(0);
        if t.is_signed() {
            s.trust.flags |= TRUST_REQUIRED;
        }
        if let Some(sg) = t.signed() {
            s.trust.flags |= TRUST_MANIFEST;
            s.trust.chunk_count = sg.manifest.chunk_count();
            s.trust.chunks_verified = sg.verified_chunks();
            s.trust.rejected_blocks = sg.rejected_blocks();
            s.trust.pages = sg.pages();
            s.trust.issued_at = sg.manifest.issued_at;
            s.trust.signer = *sg.key.as_bytes();
        }
        let now = Instant::now();
        let dt = now.duration_since(meter.last).as_secs_f64();
        if dt >= 0.2 {
            meter.rate = ((received - meter.last_bytes) as f64 / dt) as u64;
            meter.last = now;
            meter.last_bytes = received;
        }
        if received > 0 {
            let first = *meter.first_block.get_or_insert(now);
            let secs = now.duration_since(first).as_secs_f64().max(1e-3);
            s.avg_rate_bps = (received as f64 / secs) as u64;
        }
        s.rate_bps = meter.rate;
        s.http.multicast_bytes = received - http_bytes;
        if let Some(c) = &self.http_counters {
            s.http = c.status(s.http.multicast_bytes);
        }
        s
    }

    fn publish(&mut self, s: &Snapshot) {
        self.writer.publish(s);
        if let Some(cb) = self.callbacks.on_progress.as_mut() {
            cb(s);
        }
    }

    /// Watch the transfer until it is complete (Ok) or has failed.
    fn watch(&mut self, meter: &mut Meter) -> Result<()> {
        let mut last_packets = 0;
        let mut last_activity = Instant::now();
        let mut last_blocks = 0;
        let mut last_progress = Instant::now();
        let mut announced = false;
        // A signed image's last chunk or digest wakes this thread at once.
        self.path.sink.wake_on_complete(std::thread::current());
        loop {
            // Sooner when a request is due: the backoff is finer than a tick.
            std::thread::park_timeout(self.repair.wake_in().map_or(TICK, |d| d.min(TICK)));
            if self.shared.cancel.load(Ordering::Acquire) {
                return Err(Error::new(ErrorCode::Cancelled, "cancelled"));
            }
            let t = self.path.sink.clone();
            if let Some(e) = t.failure() {
                return Err(e);
            }
            let s = self.snapshot(State::InProgress, meter);
            self.publish(&s);
            // Only packets the session took (or took already: duplicates)
            // show the sender at work. Dropped ones (unauthenticated,
            // forged, other sessions' and senders', malformed) say nothing
            // of it: anyone can send them, and counting them would let one
            // packet turn --start-timeout into --idle-timeout.
            let received = s.packets + s.drops_for(DropReason::Duplicate);
            if received != last_packets {
                last_packets = received;
                last_activity = Instant::now();
            }
            if s.blocks_done != last_blocks {
                last_blocks = s.blocks_done;
                last_progress = Instant::now();
            }
            if let Some(img) = t.image() {
                if !announced {
                    announced = true;
                    if let Some(cb) = self.callbacks.on_start.as_mut() {
                        cb(img.geometry.total_size, img.geometry.block_size);
                    }
                }
                if t.complete() {
                    return Ok(());
                }
                let missing = img.geometry.block_count.saturating_sub(s.blocks_done);
                // While the web server brings what is missing, no NACKs
                // (the others need no repair round for this receiver);
                // they resume if it gives up.
                let fetching = self.fetch.as_ref().is_some_and(Fetcher::fetching);
                if !fetching {
                    if let Err(e) = self.repair.tick(&t, s.blocks_done) {
                        log::warn!("NACK: {e}");
                    }
                }
                let http = self.fetch.as_ref().filter(|f| f.usable());
                let final_for = t.final_since().map(|at| at.elapsed());
                if final_for.is_some_and(|d| d >= LAST_PASS_GRACE)
                    && last_progress.elapsed() >= LAST_PASS_GRACE
                {
                    if let Some(f) = http {
                        // The web server has the rest: no failure while it serves.
                        f.take_over();
                        continue;
                    }
                    // The sender's "too slow" comes just before its final
                    // end: that, not `incomplete`, is why blocks are missing.
                    take_verdict(&t, &self.repair.link, true);
                    if let Some(e) = t.failure() {
                        return Err(e);
                    }
                    return Err(Error::new(
                        ErrorCode::Incomplete,
                        match t.signed() {
                            Some(sg) if missing == 0 => format!(
                                "{} chunks unverified after the sender's last pass",
                                sg.manifest.chunk_count() - sg.verified_chunks()
                            ),
                            _ => format!(
                                "{missing} blocks still missing after the sender's last pass"
                            ),
                        },
                    ));
                }
            }
            if last_packets == 0 && meter.start.elapsed() >= self.start_timeout {
                let dropped = match s.total_drops() {
                    0 => String::new(),
                    n => format!(" ({n} packets dropped, see the status page's drop counters)"),
                };
                return Err(Error::new(
                    ErrorCode::Timeout,
                    self.path.explain_silence(format!(
                        "no packet of the session within {:?}{dropped}",
                        self.start_timeout
                    )),
                ));
            }
            if last_packets > 0 && last_activity.elapsed() >= self.idle_timeout {
                if let Some(f) = self.fetch.as_ref().filter(|f| f.usable()) {
                    f.take_over();
                    continue;
                }
                // A verdict not yet repeated explains the silence: the
                // sender stopped serving this receiver.
                take_verdict(&t, &self.repair.link, true);
                if let Some(e) = t.failure() {
                    return Err(e);
                }
                return Err(Error::new(
                    ErrorCode::SenderGone,
                    format!("no packet from the sender for {:?}", self.idle_timeout),
                ));
            }
        }
    }

    /// Punch the zero runs' holes once more (files), flush the target
    /// (msync and fsync); returns it.
    fn flush(&self) -> Result<&crate::store::target::Target> {
        let img = self
            .path
            .sink
            .image()
            .ok_or_else(|| Error::new(ErrorCode::Internal, "no image"))?;
        self.path.sink.settle_zero_runs()?;
        img.target.flush()?;
        Ok(&img.target)
    }

    /// Flush the target and compare its SHA-256 with the sender's.
    fn verify(&self) -> Result<()> {
        let want = self
            .path
            .sink
            .digest()
            .ok_or_else(|| Error::new(ErrorCode::Internal, "no digest"))?;
        let got = self.flush()?.sha256()?;
        if got != want {
            return Err(Error::new(
                ErrorCode::DigestMismatch,
                format!(
                    "SHA-256 of the target is {}, the sender's is {}",
                    hex(&got),
                    hex(&want)
                ),
            ));
        }
        Ok(())
    }

    /// Wait until a stream has written the whole image into its pipe
    /// (the consumer reads at its own pace), publishing the page
    /// meanwhile; a cancel or the stream's failure ends the wait. Nothing
    /// to wait for with a file or device.
    fn drain(&mut self, meter: &mut Meter) -> Result<()> {
        let t = self.path.sink.clone();
        let Some((out, len)) = t
            .image()
            .and_then(|i| Some((i.target.as_stream()?, i.geometry.total_size)))
        else {
            return Ok(());
        };
        let shared = self.shared.clone();
        out.drain(
            len,
            TICK,
            || shared.cancel.load(Ordering::Acquire),
            || {
                let mut s = self.snapshot(State::InProgress, meter);
                s.message = "writing the rest of the image into the pipe".into();
                self.publish(&s);
            },
        )
    }

    fn run(mut self) {
        self.base.start_ns = now_ns();
        let mut meter = Meter {
            start: Instant::now(),
            first_block: None,
            last: Instant::now(),
            last_bytes: 0,
            rate: 0,
        };
        let persister = Persister::start(self.path.sink.clone());
        let reporter = Reporter::start(
            self.path.sink.clone(),
            self.repair.link.clone(),
            self.http_slot,
        );
        let mut outcome = self.watch(&mut meter);
        // Nothing more from HTTP once the outcome is known.
        drop(self.fetch.take());
        drop(persister);
        if let Some(e) = self.path.shut_down() {
            outcome = outcome.and(Err(e));
        }
        // A signed session is complete when its last chunk verified: the
        // target is not read again. Others read it back and compare SHA-256;
        // a stream (signed or not) is drained and the SHA-256 of what it
        // wrote compared.
        if outcome.is_ok() {
            outcome = self.drain(&mut meter);
        }
        if outcome.is_ok() {
            let sink = &self.path.sink;
            outcome = if sink.is_signed() && !sink.is_stream() {
                self.flush().map(|_| ())
            } else {
                let mut s = self.snapshot(State::InProgress, &mut meter);
                s.message = "verifying SHA-256".into();
                self.publish(&s);
                self.verify()
            };
        }
        // Keep what is on disk for a restart, unless it is complete (or wrong).
        match &outcome {
            Ok(()) => self.path.sink.drop_resume(),
            Err(e) if e.code == ErrorCode::DigestMismatch => self.path.sink.drop_resume(),
            Err(_) => {
                if let Err(e) = self.path.sink.save_resume() {
                    log::warn!("{e}");
                }
            }
        }
        let mut s = self.snapshot(State::InProgress, &mut meter);
        s.end_ns = now_ns();
        s.rate_bps = 0;
        match &outcome {
            Ok(()) => {
                s.state = State::Success;
                if self.path.sink.is_signed() {
                    s.trust.flags |= TRUST_NO_READ_BACK;
                }
                s.message = match self.path.sink.signed() {
                    Some(sg) => format!(
                        "{} chunks verified against the manifest signed by {} (SHA-256 {})",
                        sg.verified_chunks(),
                        hex(sg.key.as_bytes()),
                        hex(&s.digest)
                    ),
                    None => format!("SHA-256 {} verified", hex(&s.digest)),
                };
            }
            Err(e) => {
                s.state = State::Failure;
                s.error = e.code;
                s.message = e.message.clone();
            }
        }
        self.publish(&s);
        reporter.finish(s.state, s.error);
        self.shared.set(s.state, s.error);
        if let Some(cb) = self.callbacks.on_complete.as_mut() {
            cb(s.state, s.error);
        }
    }
}
