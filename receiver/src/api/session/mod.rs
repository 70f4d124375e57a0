//! The session API, modelled on the Windows WdsTransportClient calls:
//! [`Session::initialize`], [`Session::start`], [`Session::query_status`]
//! (valid after completion until [`Session::close`]),
//! [`Session::wait_for_completion`], [`Session::cancel`], [`Session::close`].
//!
//! `start` picks the data path (XDP or sockets), starts the workers and a
//! control thread that publishes the status page, watches for completion,
//! timeouts and failures, verifies the image's SHA-256 and tears the data
//! path down (the XDP program is always detached).
//!
//! - this file: the calls, the callbacks and the state they share with
//!   the control thread;
//! - `control.rs`: the control thread: its watch loop (completion,
//!   timeouts, the last pass), the check of the image and the resume file;
//! - `repair.rs`: the back-channel to the sender: repair requests, progress
//!   reports and the sender's "too slow" verdict;
//! - `status.rs`: what the control thread publishes: the page's values
//!   while the session runs and its result.

mod control;
mod repair;
mod status;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorCode, Result};
use crate::fetch::Fetcher;
use crate::net::socket;
use crate::proto::wire::Report;
use crate::receive::datapath::{self, DataPath};
use crate::receive::request::SessionRequest;
use crate::receive::transfer::Transfer;
use crate::status::page::{now_ns, writer_page_path, PathMode, Snapshot, State, StatusWriter};

use control::Control;
use repair::{Link, Repairer};

/// How often the control thread looks at the transfer and publishes the page.
const TICK: Duration = Duration::from_millis(50);

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
