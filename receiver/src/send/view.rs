//! What `xdpcast send` shows of its receivers: a live line whenever their
//! states change, the final table (finished, failed with the code,
//! vanished), and the sender's Prometheus metrics, written to a file for
//! node_exporter's textfile collector (`send --metrics-file`).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::send::fleet::{FleetCounts, RxState};
use crate::send::sender::{Progress, SendReport};
use crate::status::report::{counter, gauge, Exposition, Kind, Labels, Metric};

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

/// The live view: a line on stderr when the receivers' states change, and
/// the metrics file.
pub struct Live {
    metrics: Option<PathBuf>,
    shown: Option<FleetCounts>,
    written: Option<Instant>,
}

impl Live {
    /// A view writing metrics to `metrics` if given.
    pub fn new(metrics: Option<PathBuf>) -> Live {
        Live {
            metrics,
            shown: None,
            written: None,
        }
    }

    /// Take in the sender's progress; `print` says whether to print state
    /// changes (not when a progress bar shows them).
    pub fn update(&mut self, p: &Progress, print: bool) {
        let states = FleetCounts {
            blocks_receiving: 0,
            ..p.fleet
        };
        if print && self.shown != Some(states) && p.fleet.known > 0 {
            eprintln!(
                "xdpcast: {} {}: {}",
                p.phase,
                p.pass + 1,
                counts(&p.fleet, p.block_count)
            );
        }
        self.shown = Some(states);
        if self.written.is_none_or(|t| t.elapsed() >= METRICS_EVERY) {
            self.written = Some(Instant::now());
            self.write(&metrics(p));
        }
    }

    /// Write the final metrics.
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
        self.write(&metrics(&Progress {
            session: r.session,
            phase: "done",
            pass: 0,
            blocks: 0,
            block_count: r.geometry.block_count,
            bytes: 0,
            total_bytes: r.geometry.total_size,
            skipped_bytes: r.skipped_bytes,
            fleet,
            repair_packets: r.repair_packets,
            repair_bytes: r.repair_bytes,
            inbound: r.inbound,
        }));
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

/// The sender's counters and gauges, one sample each.
const SENDER_METRICS: &[Metric<Progress>] = &[
    gauge(
        "xdpcast_sender_receivers_known",
        "Receivers that reported to the sender.",
        |p| p.fleet.known as f64,
    ),
    counter(
        "xdpcast_sender_repair_packets_total",
        "Data and RaptorQ symbol packets sent in repair rounds.",
        |p| p.repair_packets as f64,
    ),
    counter(
        "xdpcast_sender_repair_bytes_total",
        "Payload bytes sent in repair rounds.",
        |p| p.repair_bytes as f64,
    ),
    counter(
        "xdpcast_sender_reports_total",
        "Progress reports received from receivers.",
        |p| p.inbound.reports as f64,
    ),
    counter(
        "xdpcast_sender_confirms_total",
        "Confirmations of parity requests multicast to the group.",
        |p| p.inbound.confirms as f64,
    ),
];

/// The sender's metrics in the Prometheus text format (label `session`,
/// the session id in hex).
pub fn metrics(p: &Progress) -> String {
    let mut o = Exposition::new();
    let session = || -> Labels { vec![("session", format!("{:#010x}", p.session))] };
    o.families(SENDER_METRICS, &[(session(), p)]);
    let f = &p.fleet;
    let by = |k: &'static str, rows: &[(&str, u64)]| -> Vec<(Labels, f64)> {
        rows.iter()
            .map(|&(v, n)| {
                let mut l = session();
                l.push((k, v.into()));
                (l, n as f64)
            })
            .collect()
    };
    o.samples(
        "xdpcast_sender_receivers",
        Kind::Gauge,
        "Receivers per state (finished and failed as they reported, vanished when silent).",
        &by(
            "state",
            &[
                ("receiving", f.receiving),
                ("finished", f.finished),
                ("failed", f.failed),
                ("vanished", f.vanished),
            ],
        ),
    );
    o.samples(
        "xdpcast_sender_requests_total",
        Kind::Counter,
        "Repair requests received, by kind.",
        &by(
            "kind",
            &[
                ("nack", p.inbound.nacks),
                ("parity", p.inbound.parity_requests),
            ],
        ),
    );
    o.finish()
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
        "  {:<28} {:<20} {:<10} {:<18} {:>8} {:>9}",
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
            "  {:<28} {:<20} {:<10} {:<18} {:>7.1}% {:>9}",
            x.addr.to_string(),
            x.name,
            x.state.name(),
            code,
            done,
            x.requests
        );
    }
    o
}
