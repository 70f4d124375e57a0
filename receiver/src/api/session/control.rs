//! The session's control thread: it watches the transfer until it is
//! complete or has failed (cancel, timeouts, the sender's last pass),
//! stops the data path, checks the image (SHA-256, or the signed chunks),
//! keeps or drops the resume file, and publishes the result. A thread of
//! its own keeps the resume file up to date meanwhile.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::repair::{failure_at_end, Repairer, Reporter};
use super::{Callbacks, Shared, TICK};
use crate::error::{Error, ErrorCode, Result};
use crate::fetch::{Fetcher, HttpCounters};
use crate::proto::wire::{hex, DropReason};
use crate::receive::datapath::DataPath;
use crate::receive::transfer::Transfer;
use crate::receive::workers::Sink;
use crate::status::page::{now_ns, Snapshot, State, StatusWriter};

/// After the sender's last pass ended, how long to wait for late blocks.
const LAST_PASS_GRACE: Duration = Duration::from_secs(1);
/// How often the resume file is brought up to date.
const RESUME_EVERY: Duration = Duration::from_secs(1);

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

/// The control thread's state.
pub(super) struct Control {
    /// The HTTP source (`--http`), until the outcome is known.
    pub(super) fetch: Option<Fetcher>,
    /// Its worker-counter slot (kept after the source stopped).
    pub(super) http_slot: Option<usize>,
    /// Its counters (kept after the source stopped).
    pub(super) http_counters: Option<Arc<HttpCounters>>,
    pub(super) base: Snapshot,
    pub(super) path: DataPath<Transfer>,
    pub(super) writer: Arc<StatusWriter>,
    pub(super) shared: Arc<Shared>,
    pub(super) callbacks: Callbacks,
    pub(super) start_timeout: Duration,
    pub(super) idle_timeout: Duration,
    pub(super) repair: Repairer,
}

/// Rate bookkeeping between ticks.
pub(super) struct Meter {
    pub(super) start: Instant,
    pub(super) first_block: Option<Instant>,
    pub(super) last: Instant,
    pub(super) last_bytes: u64,
    pub(super) rate: u64,
}

impl Control {
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
                    let incomplete = Error::new(
                        ErrorCode::Incomplete,
                        match t.signed() {
                            Some(sg) if missing == 0 => format!(
                                "{} chunks unverified after the sender's last pass",
                                sg.manifest.chunk_count() - sg.verified_chunks()
                            ),
                            None if missing == 0 && t.digest().is_none() => {
                                "every block is in but the sender sent no SHA-256 to check them against (a signing sender sends the root of its signed chunk hashes instead): receive with --trust KEY, or send with --sha256".to_string()
                            }
                            _ => format!(
                                "{missing} blocks still missing after the sender's last pass"
                            ),
                        },
                    );
                    return Err(failure_at_end(&t, &self.repair.link, incomplete));
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
                let gone = Error::new(
                    ErrorCode::SenderGone,
                    format!("no packet from the sender for {:?}", self.idle_timeout),
                );
                return Err(failure_at_end(&t, &self.repair.link, gone));
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

    /// Flush the target and compare its SHA-256 with the sender's (a
    /// signed stream whose sender gave the root of its chunk hashes in
    /// place of a SHA-256 wrote only verified chunks: nothing to compare).
    fn verify(&self) -> Result<()> {
        let sink = &self.path.sink;
        let want = sink.digest();
        let rooted = sink.signed().is_some_and(|s| s.root().is_some());
        let got = self.flush()?.sha256()?;
        let Some(want) = want else {
            return match rooted {
                true => Ok(()),
                false => Err(Error::new(ErrorCode::Internal, "no digest")),
            };
        };
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

    pub(super) fn run(mut self) {
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
        // A complete image: the workers, which can only meet duplicates
        // now, stop and XDP is detached while the target is flushed (an
        // idle worker takes up to its poll timeout to see the stop, the
        // detach some ms); both are waited for before the page says how
        // the session ended. Otherwise before the resume file is saved.
        self.path.stop();
        if outcome.is_err() {
            if let Some(e) = self.path.join() {
                outcome = outcome.and(Err(e));
            }
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
        if let Some(e) = self.path.join() {
            outcome = outcome.and(Err(e));
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
        let s = self.result_snapshot(&outcome, &mut meter);
        self.publish(&s);
        reporter.finish(s.state, s.error);
        self.shared.set(s.state, s.error);
        if let Some(cb) = self.callbacks.on_complete.as_mut() {
            cb(s.state, s.error);
        }
    }
}
