//! What `xdpcast send` shows of itself and its receivers: a live line
//! whenever their states change, the final table (finished, failed with
//! the code, vanished), and the sender's own status page (role `sender`,
//! docs/status-page.md), which `xdpcast status`, `xdpcast monitor` and
//! `xdpcast metrics` read like any page. `send --metrics-file` writes the
//! same page's metrics ([`report::sender_prometheus`]) for
//! node_exporter's textfile collector.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::core::fleet::{FleetCounts, RxState};
use crate::error::Error;
use crate::proto::manifest::ImageDigest;
use crate::send::sender::{Progress, SendReport};
use crate::status::page::{
    now_ns, PathMode, Role, SendPhase, SenderStatus, Snapshot, SparseStatus, State, StatusWriter,
    FLAG_DIGEST, FLAG_GEOMETRY, FLAG_ROOT,
};
use crate::status::report;

/// How often the page is updated while sending (and at every change of
/// phase).
const PUBLISH_EVERY: Duration = Duration::from_millis(100);
/// How often the metrics file is rewritten.
const METRICS_EVERY: Duration = Duration::from_secs(1);

/// "24 receivers: 20 receiving (avg 87.5%), 3 finished, 1 failed, 0 vanished".
pub fn counts(f: &FleetCounts, block_count: u64) -> String {
    let avg = if f.receiving > 0 && block_count > 0 {
        100.0 * f.blocks_receiving as f64 / (f.receiving * block_count) as f64
    } else {
        100.0
    };
    format!(
        "{} receivers: {} receiving (avg {avg:.1}%), {} finished, {} failed, {} vanished",
        f.known, f.receiving, f.finished, f.failed, f.vanished
    )
}

/// The live view: a line on stderr when the receivers' states change, the
/// sender's status page and the metrics file.
pub struct Live {
    page: Option<StatusWriter>,
    metrics: Option<PathBuf>,
    /// Name, group, source and start of the page.
    base: Snapshot,
    started: Instant,
    shown: Option<FleetCounts>,
    /// Last publication: when, its phase and the bytes sent then.
    published: Option<(Instant, SendPhase, u64)>,
    written: Option<Instant>,
    last: Option<Snapshot>,
}

impl Live {
    /// A view publishing on `page` (the session `name` sending `source` to
    /// `group`), and writing metrics to `metrics` if given.
    pub fn new(
        page: Option<StatusWriter>,
        name: &str,
        group: &str,
        source: &str,
        metrics: Option<PathBuf>,
    ) -> Live {
        let base = Snapshot {
            role: Role::Sender,
            mode: PathMode::Socket,
            state: State::InProgress,
            name: name.into(),
            group: group.into(),
            target: source.into(),
            start_ns: now_ns(),
            ..Snapshot::default()
        };
        let live = Live {
            page,
            metrics,
            base,
            started: Instant::now(),
            shown: None,
            published: None,
            written: None,
            last: None,
        };
        live.publish(&live.base);
        live
    }

    /// The page as of progress `p` (rates left to the caller).
    fn snapshot(&self, p: &Progress) -> Snapshot {
        let whole = match p.phase {
            SendPhase::Waiting => (0, 0),
            SendPhase::Pass => (p.blocks, p.bytes),
            _ => (p.block_count, p.total_bytes),
        };
        let f = &p.fleet;
        Snapshot {
            session_id: p.session.into(),
            block_size: p.block_size.into(),
            block_count: p.block_count,
            total_bytes: p.total_bytes,
            blocks_done: whole.0,
            bytes_done: whole.1,
            packets: p.packets,
            passes_seen: if p.phase == SendPhase::Waiting {
                0
            } else {
                u64::from(p.pass) + 1
            },
            flags: FLAG_GEOMETRY
                | match p.digest {
                    Some(ImageDigest::Sha256(_)) => FLAG_DIGEST,
                    Some(ImageDigest::Root(_)) => FLAG_DIGEST | FLAG_ROOT,
                    None => 0,
                },
            digest: p.digest.map_or([0; 32], |d| d.bytes()),
            sparse: SparseStatus {
                skipped_bytes: p.skipped_bytes,
                ..SparseStatus::default()
            },
            sender: SenderStatus {
                phase: p.phase,
                receivers_known: f.known,
                receiving: f.receiving,
                finished: f.finished,
                failed: f.failed,
                vanished: f.vanished,
                repair_rounds: p.repair_rounds.into(),
                repair_packets: p.repair_packets,
                repair_bytes: p.repair_bytes,
                nacks: p.inbound.nacks,
                parity_requests: p.inbound.parity_requests,
                reports: p.inbound.reports,
                confirms: p.inbound.confirms,
                ignored: p.inbound.ignored,
                bytes_sent: p.bytes_sent,
            },
            ..self.base.clone()
        }
    }

    /// Take in the sender's progress; `print` says whether to print state
    /// changes (not when a progress bar shows them).
    pub fn update(&mut self, p: &Progress, print: bool) {
        let states = FleetCounts {
            blocks_receiving: 0,
            ..p.fleet
        };
        let changed = self.shown != Some(states);
        if print && changed && p.fleet.known > 0 {
            eprintln!(
                "xdpcast: {} {}: {}",
                p.phase.name(),
                p.pass + 1,
                counts(&p.fleet, p.block_count)
            );
        }
        self.shown = Some(states);
        let due = self.published.is_none_or(|(t, phase, _)| {
            t.elapsed() >= PUBLISH_EVERY || phase != p.phase || changed
        });
        if due {
            let now = Instant::now();
            let mut s = self.snapshot(p);
            if let Some((t, _, sent)) = self.published {
                let secs = (now - t).as_secs_f64().max(1e-3);
                s.rate_bps = (p.bytes_sent.saturating_sub(sent) as f64 / secs) as u64;
            }
            let secs = self.started.elapsed().as_secs_f64().max(1e-3);
            s.avg_rate_bps = (p.bytes_sent as f64 / secs) as u64;
            self.published = Some((now, p.phase, p.bytes_sent));
            self.publish(&s);
            self.last = Some(s);
        }
        if self.written.is_none_or(|t| t.elapsed() >= METRICS_EVERY) {
            self.written = Some(Instant::now());
            if let Some(s) = &self.last {
                self.write(&report::sender_prometheus(s));
            }
        }
    }

    /// The sending completed: the final page (SUCCESS, phase done, every
    /// receiver's final state) and metrics.
    pub fn finish(&mut self, r: &SendReport) {
        let mut fleet = FleetCounts::default();
        for rx in &r.receivers {
            fleet.known += 1;
            match rx.state {
                RxState::Receiving => fleet.receiving += 1,
                RxState::Finished => fleet.finished += 1,
                RxState::Failed(_) => fleet.failed += 1,
                RxState::Vanished => fleet.vanished += 1,
            }
        }
        let mut s = self.snapshot(&Progress {
            session: r.session,
            phase: SendPhase::Done,
            pass: 0,
            repair_rounds: r.repair_rounds,
            blocks: 0,
            block_count: r.geometry.block_count,
            bytes: 0,
            total_bytes: r.geometry.total_size,
            block_size: r.geometry.block_size,
            digest: Some(r.digest),
            packets: r.packets,
            bytes_sent: r.bytes,
            skipped_bytes: r.skipped_bytes,
            fleet,
            repair_packets: r.repair_packets,
            repair_bytes: r.repair_bytes,
            inbound: r.inbound,
        });
        s.passes_seen = self.last.as_ref().map_or(0, |l| l.passes_seen);
        s.state = State::Success;
        s.end_ns = now_ns();
        s.avg_rate_bps = (r.bytes as f64 / r.elapsed.as_secs_f64().max(1e-3)) as u64;
        self.end(s);
    }

    /// The sending failed with `e`: FAILURE with its code on the page.
    pub fn fail(&mut self, e: &Error) {
        let mut s = self.last.clone().unwrap_or_else(|| self.base.clone());
        s.state = State::Failure;
        s.error = e.code;
        s.message = e.message.clone();
        s.end_ns = now_ns();
        s.rate_bps = 0;
        self.end(s);
    }

    fn end(&mut self, s: Snapshot) {
        self.publish(&s);
        self.write(&report::sender_prometheus(&s));
        self.last = Some(s);
    }

    fn publish(&self, s: &Snapshot) {
        if let Some(page) = &self.page {
            page.publish(s);
        }
    }

    /// The page, to remove it (`None` when there is none).
    pub fn page(&self) -> Option<&StatusWriter> {
        self.page.as_ref()
    }

    /// Replace the metrics file: a new file next to it (never an existing
    /// one, so no symlink is followed), renamed over it.
    fn write(&self, text: &str) {
        let Some(path) = &self.metrics else {
            return;
        };
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let done = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = done {
            log::warn!("metrics file {}: {e}", path.display());
            let _ = std::fs::remove_file(&tmp);
        }
    }
}

/// The final table: one row per receiver that reported.
pub fn table(r: &SendReport) -> String {
    let mut o = String::new();
    let n = |want: fn(RxState) -> bool| r.receivers.iter().filter(|x| want(x.state)).count();
    let _ = writeln!(
        o,
        "receivers: {} known, {} finished, {} failed, {} vanished, {} still receiving",
        r.receivers.len(),
        n(|s| s == RxState::Finished),
        n(|s| matches!(s, RxState::Failed(_))),
        n(|s| s == RxState::Vanished),
        n(|s| s == RxState::Receiving),
    );
    if r.receivers.is_empty() {
        return o;
    }
    let _ = writeln!(
        o,
        "  {:<28} {:<20} {:<10} {:<18} {:>8} {:>9} VIA",
        "ADDRESS", "NAME", "STATE", "CODE", "DONE", "REQUESTS"
    );
    for x in &r.receivers {
        let code = match x.state {
            RxState::Failed(c) => c.to_string(),
            _ => "-".into(),
        };
        let done = 100.0 * x.blocks_done as f64 / r.geometry.block_count.max(1) as f64;
        let _ = writeln!(
            o,
            "  {:<28} {:<20} {:<10} {:<18} {:>7.1}% {:>9} {}",
            x.addr.to_string(),
            // A name comes from the network: no control character reaches the terminal.
            report::printable(&x.name),
            x.state.name(),
            code,
            done,
            x.requests,
            x.via.name()
        );
    }
    o
}
