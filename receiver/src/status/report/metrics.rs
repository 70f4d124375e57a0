//! Prometheus text exposition (format 0.0.4) of every page: `xdpcast
//! metrics` and `send --metrics-file`.

use std::fmt::Write as _;

use super::text::printable;
use crate::proto::wire::DropReason;
use crate::status::page::{Role, SenderStatus, Snapshot, WorkerStatus, STALE_AFTER};

/// Type of a metric family (the `# TYPE` line), text format 0.0.4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (name ends in `_total`).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Quantiles plus `_sum` and `_count`.
    Summary,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Summary => "summary",
        }
    }
}

/// A counter or gauge read from one `T` (a page, a worker slot, a sender).
pub struct Metric<T> {
    /// Family name.
    pub name: &'static str,
    /// Counter or gauge.
    pub kind: Kind,
    /// HELP text.
    pub help: &'static str,
    /// The value of the sample of `T`.
    pub value: fn(&T) -> f64,
}

/// A counter (`name` must end in `_total`).
pub const fn counter<T>(name: &'static str, help: &'static str, value: fn(&T) -> f64) -> Metric<T> {
    Metric {
        name,
        kind: Kind::Counter,
        help,
        value,
    }
}

/// A gauge.
pub const fn gauge<T>(name: &'static str, help: &'static str, value: fn(&T) -> f64) -> Metric<T> {
    Metric {
        name,
        kind: Kind::Gauge,
        help,
        value,
    }
}

/// Quantiles, sum and count of one summary sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// (quantile, value) pairs.
    pub quantiles: Vec<(f64, f64)>,
    /// Sum of the observations.
    pub sum: f64,
    /// Number of observations.
    pub count: f64,
}

/// Label names and values of one sample.
pub type Labels = Vec<(&'static str, String)>;

/// A Prometheus text exposition (format 0.0.4) being written. Families are
/// written whole, `# HELP` and `# TYPE` first, so each is declared once
/// before its samples; label values are escaped here and nowhere else.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    /// An empty exposition.
    pub fn new() -> Exposition {
        Exposition::default()
    }

    fn header(&mut self, name: &str, kind: Kind, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {}", kind.name());
    }

    fn sample(&mut self, name: &str, labels: &[(&str, String)], value: f64) {
        self.text.push_str(name);
        for (i, (k, v)) in labels.iter().enumerate() {
            self.text.push(if i == 0 { '{' } else { ',' });
            let _ = write!(self.text, "{k}=\"");
            // Control characters escaped first (no terminal escapes from a
            // page in a scrape), then what the format requires.
            for c in printable(v).chars() {
                match c {
                    '\\' => self.text.push_str("\\\\"),
                    '"' => self.text.push_str("\\\""),
                    '\n' => self.text.push_str("\\n"),
                    c => self.text.push(c),
                }
            }
            self.text.push('"');
        }
        if !labels.is_empty() {
            self.text.push('}');
        }
        let _ = match value {
            v if v.is_nan() => writeln!(self.text, " NaN"),
            v if v.is_infinite() => writeln!(self.text, " {}Inf", if v > 0.0 { '+' } else { '-' }),
            v => writeln!(self.text, " {v}"),
        };
    }

    /// One family: a sample of `m` for each labelled item.
    pub fn family<T>(&mut self, m: &Metric<T>, items: &[(Labels, &T)]) {
        self.header(m.name, m.kind, m.help);
        for (labels, item) in items {
            self.sample(m.name, labels, (m.value)(item));
        }
    }

    /// A family of each metric in `ms`, over the same items.
    pub fn families<T>(&mut self, ms: &[Metric<T>], items: &[(Labels, &T)]) {
        for m in ms {
            self.family(m, items);
        }
    }

    /// A family with its own samples: (labels, value) pairs.
    pub fn samples(&mut self, name: &str, kind: Kind, help: &str, samples: &[(Labels, f64)]) {
        self.header(name, kind, help);
        for (labels, v) in samples {
            self.sample(name, labels, *v);
        }
    }

    /// A summary family: per labelled sample, its quantiles, `_sum` and `_count`.
    pub fn summary(&mut self, name: &str, help: &str, samples: &[(Labels, Summary)]) {
        self.header(name, Kind::Summary, help);
        for (labels, s) in samples {
            for (q, v) in &s.quantiles {
                let mut l = labels.clone();
                l.push(("quantile", q.to_string()));
                self.sample(name, &l, *v);
            }
            self.sample(&format!("{name}_sum"), labels, s.sum);
            self.sample(&format!("{name}_count"), labels, s.count);
        }
    }

    /// The text.
    pub fn finish(self) -> String {
        self.text
    }
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// The per-session counters and gauges, one sample per page (label
/// `session`). A new page field is one line here.
pub const SESSION_METRICS: &[Metric<Snapshot>] = &[
    gauge(
        "xdpcast_session_state",
        "State: 0 INITIALIZED, 1 IN_PROGRESS, 2 SUCCESS, 3 FAILURE.",
        |s| s.state as u64 as f64,
    ),
    gauge(
        "xdpcast_session_error_code",
        "Error code (docs/status-page.md); 0 unless FAILURE.",
        |s| f64::from(s.error as u32),
    ),
    gauge(
        "xdpcast_session_stale",
        "1 if the receiver died or has not updated the page for 5 s while running.",
        |s| f64::from(u8::from(s.is_stale(STALE_AFTER))),
    ),
    gauge(
        "xdpcast_session_foreign_owner",
        "1 if the page belongs to neither root nor the reader's user (it may be forged).",
        |s| f64::from(u8::from(s.foreign_owner())),
    ),
    gauge(
        "xdpcast_session_writer_pid",
        "Pid of the receiver writing the page.",
        |s| s.writer_pid as f64,
    ),
    gauge(
        "xdpcast_session_heartbeat_seconds",
        "Last page update, Unix time.",
        |s| secs(s.heartbeat_ns),
    ),
    gauge(
        "xdpcast_session_start_seconds",
        "Session start, Unix time.",
        |s| secs(s.start_ns),
    ),
    gauge(
        "xdpcast_session_end_seconds",
        "Session end, Unix time (0 while running).",
        |s| secs(s.end_ns),
    ),
    gauge(
        "xdpcast_image_bytes",
        "Image size in bytes (0 until known).",
        |s| s.total_bytes as f64,
    ),
    gauge(
        "xdpcast_image_blocks",
        "Blocks in the image (0 until known).",
        |s| s.block_count as f64,
    ),
    gauge(
        "xdpcast_rate_bytes_per_second",
        "Goodput over the last update interval.",
        |s| s.rate_bps as f64,
    ),
    gauge(
        "xdpcast_average_rate_bytes_per_second",
        "Goodput since the first block.",
        |s| s.avg_rate_bps as f64,
    ),
    gauge(
        "xdpcast_first_pass_missing_blocks",
        "Blocks missing when the sender's first pass ended (loss before repair).",
        |s| s.first_pass_missing as f64,
    ),
    counter(
        "xdpcast_received_bytes_total",
        "Image bytes written to the target.",
        |s| s.bytes_done as f64,
    ),
    counter(
        "xdpcast_received_blocks_total",
        "Blocks written to the target.",
        |s| s.blocks_done as f64,
    ),
    counter(
        "xdpcast_packets_total",
        "Valid packets of the session received.",
        |s| s.packets as f64,
    ),
    counter(
        "xdpcast_passes_seen_total",
        "Ends of sender passes seen.",
        |s| s.passes_seen as f64,
    ),
    counter(
        "xdpcast_fec_recovered_blocks_total",
        "Blocks rebuilt from FEC repair symbols.",
        |s| s.fec_recovered as f64,
    ),
    counter(
        "xdpcast_nacks_sent_total",
        "Repair requests (NACK and parity request packets) sent to the sender.",
        |s| s.nacks_sent as f64,
    ),
    counter(
        "xdpcast_resumed_blocks_total",
        "Blocks taken from the resume file of an earlier run.",
        |s| s.resumed_blocks as f64,
    ),
    gauge(
        "xdpcast_http_state",
        "HTTP source: 0 none, 1 standing by, 2 fetching, 3 given up.",
        |s| s.http.state as f64,
    ),
    counter(
        "xdpcast_multicast_bytes_total",
        "Image bytes the data path brought by multicast.",
        |s| s.http.multicast_bytes as f64,
    ),
    counter(
        "xdpcast_http_bytes_total",
        "Image bytes taken from web servers (receive --http).",
        |s| s.http.http_bytes as f64,
    ),
    counter(
        "xdpcast_http_requests_total",
        "HTTP requests sent (ranges and the manifest file).",
        |s| s.http.requests as f64,
    ),
    counter(
        "xdpcast_http_bad_chunks_total",
        "Chunks from a web server that failed their signed hash.",
        |s| s.http.bad_chunks as f64,
    ),
    counter(
        "xdpcast_http_bad_replies_total",
        "HTTP replies that broke the range contract (whole body, wrong range, length, deadline).",
        |s| s.http.bad_replies as f64,
    ),
    counter(
        "xdpcast_http_refused_total",
        "HTTP refusals and connection failures.",
        |s| s.http.refused as f64,
    ),
    counter(
        "xdpcast_http_busy_total",
        "HTTP 429 and 503 replies (backed off).",
        |s| s.http.busy as f64,
    ),
    counter(
        "xdpcast_unserved_frames_total",
        "Frames of the session on RX queues without an AF_XDP socket (passed to the kernel, not received).",
        |s| s.diag.unserved_frames as f64,
    ),
    gauge(
        "xdpcast_storage_buffer_bytes",
        "Staging buffer between the workers and the target.",
        |s| s.storage.buffer_bytes as f64,
    ),
    gauge(
        "xdpcast_storage_buffer_used_bytes",
        "Staging buffer in use now.",
        |s| s.storage.buffer_used as f64,
    ),
    gauge(
        "xdpcast_storage_buffer_peak_bytes",
        "Most staging buffer in use at once.",
        |s| s.storage.buffer_peak as f64,
    ),
    counter(
        "xdpcast_storage_written_bytes_total",
        "Bytes the staging writer (or an overflowing worker) wrote to the target.",
        |s| s.storage.bytes_stored as f64,
    ),
    counter(
        "xdpcast_storage_overflow_blocks_total",
        "Blocks written straight to the target because the staging buffer was full.",
        |s| s.storage.overflow_blocks as f64,
    ),
    counter(
        "xdpcast_storage_handed_off_blocks_total",
        "Blocks AF_XDP workers handed to their copier threads in their frames.",
        |s| s.storage.handed_off as f64,
    ),
    counter(
        "xdpcast_storage_lane_full_blocks_total",
        "Blocks an AF_XDP worker copied itself because its lane to the copier was full.",
        |s| s.storage.lane_full as f64,
    ),
    counter(
        "xdpcast_storage_read_back_bytes_total",
        "Bytes the staging writer read from the target to check signed chunks.",
        |s| s.storage.bytes_read_back as f64,
    ),
    counter(
        "xdpcast_storage_refused_blocks_total",
        "Signed blocks refused (asked for again) because their chunk found no free buffer.",
        |s| s.storage.blocks_refused as f64,
    ),
    counter(
        "xdpcast_storage_checked_chunks_total",
        "Signed chunks the staging writer hashed and compared.",
        |s| s.storage.chunks_checked as f64,
    ),
    gauge(
        "xdpcast_storage_write_max_seconds",
        "Longest single write or writeback wait of the writer thread.",
        |s| secs(s.storage.write_max_ns),
    ),
    gauge(
        "xdpcast_stream_window_bytes",
        "Capacity of the reorder window of an image written to a pipe (--out -).",
        |s| s.stream.window as f64,
    ),
    gauge(
        "xdpcast_stream_held_bytes",
        "Bytes held in the reorder window, waiting for the pipe.",
        |s| s.stream.held as f64,
    ),
    counter(
        "xdpcast_stream_written_bytes_total",
        "Bytes written to the pipe.",
        |s| s.stream.written as f64,
    ),
    counter(
        "xdpcast_stream_refused_blocks_total",
        "Blocks refused because they did not fit the reorder window (asked for again).",
        |s| s.stream.refused as f64,
    ),
    counter(
        "xdpcast_skipped_bytes_total",
        "Bytes of the sender's zero runs made to read as zeros without being sent.",
        |s| s.sparse.skipped_bytes as f64,
    ),
];

/// The per-worker counters and gauges, one sample per worker slot (labels
/// `session` and `queue`). A new worker field is one line here.
pub const WORKER_METRICS: &[Metric<WorkerStatus>] = &[
    counter(
        "xdpcast_worker_packets_total",
        "Frames or datagrams a worker took from its ring or socket.",
        |w| w.packets as f64,
    ),
    counter(
        "xdpcast_worker_dropped_packets_total",
        "Packets a worker dropped (any reason).",
        |w| w.drops as f64,
    ),
    counter(
        "xdpcast_worker_ring_drops_total",
        "Frames the kernel dropped because the worker's ring was full.",
        |w| w.ring_drops as f64,
    ),
    counter(
        "xdpcast_worker_batches_total",
        "Non-empty batches a worker processed.",
        |w| w.batches as f64,
    ),
    counter(
        "xdpcast_worker_xsk_rx_dropped_total",
        "Kernel XDP_STATISTICS rx_dropped of the worker's AF_XDP socket.",
        |w| w.kernel.rx_dropped as f64,
    ),
    counter(
        "xdpcast_worker_xsk_rx_ring_full_total",
        "Kernel XDP_STATISTICS rx_ring_full: frames dropped for a full rx ring.",
        |w| w.kernel.rx_ring_full as f64,
    ),
    counter(
        "xdpcast_worker_xsk_fill_ring_empty_total",
        "Kernel XDP_STATISTICS rx_fill_ring_empty_descs: the fill ring was empty.",
        |w| w.kernel.fill_ring_empty as f64,
    ),
    counter(
        "xdpcast_worker_xsk_rx_invalid_descs_total",
        "Kernel XDP_STATISTICS rx_invalid_descs.",
        |w| w.kernel.rx_invalid_descs as f64,
    ),
    counter(
        "xdpcast_worker_gro_messages_total",
        "Socket path: received messages of several datagrams coalesced by GRO (UDP_GRO).",
        |w| w.gro_messages as f64,
    ),
];

/// A sender's counters and gauges, one sample per sender page (label
/// `session`, the page's name).
pub const SENDER_METRICS: &[Metric<Snapshot>] = &[
    gauge(
        "xdpcast_sender_state",
        "State: 1 IN_PROGRESS (sending), 2 SUCCESS (sending completed), 3 FAILURE.",
        |s| s.state as u64 as f64,
    ),
    gauge(
        "xdpcast_sender_error_code",
        "Error code (docs/status-page.md); 0 unless FAILURE.",
        |s| f64::from(s.error as u32),
    ),
    gauge(
        "xdpcast_sender_stale",
        "1 if the sender died or has not updated its page for 5 s while running.",
        |s| f64::from(u8::from(s.is_stale(STALE_AFTER))),
    ),
    gauge(
        "xdpcast_sender_phase",
        "0 waiting for receivers, 1 pass, 2 repair rounds, 3 lingering for receivers, 4 done.",
        |s| s.sender.phase as u64 as f64,
    ),
    gauge(
        "xdpcast_sender_pass",
        "Pass or repair round being sent (counted from 1).",
        |s| s.passes_seen as f64,
    ),
    gauge(
        "xdpcast_sender_image_bytes",
        "Image size in bytes.",
        |s| s.total_bytes as f64,
    ),
    gauge(
        "xdpcast_sender_pass_bytes",
        "Bytes of the image behind the sender in this pass.",
        |s| s.bytes_done as f64,
    ),
    gauge(
        "xdpcast_sender_rate_bytes_per_second",
        "Data and symbol bytes sent per second over the last update interval.",
        |s| s.rate_bps as f64,
    ),
    counter(
        "xdpcast_sender_packets_total",
        "Datagrams sent, all kinds.",
        |s| s.packets as f64,
    ),
    counter(
        "xdpcast_sender_sent_bytes_total",
        "Payload bytes of data and symbol packets sent, passes and repairs.",
        |s| s.sender.bytes_sent as f64,
    ),
    gauge(
        "xdpcast_sender_receivers_known",
        "Receivers that reported to the sender.",
        |s| s.sender.receivers_known as f64,
    ),
    counter(
        "xdpcast_sender_repair_rounds_total",
        "Repair rounds run.",
        |s| s.sender.repair_rounds as f64,
    ),
    counter(
        "xdpcast_sender_repair_packets_total",
        "Data and RaptorQ symbol packets sent in repair rounds.",
        |s| s.sender.repair_packets as f64,
    ),
    counter(
        "xdpcast_sender_repair_bytes_total",
        "Payload bytes sent in repair rounds.",
        |s| s.sender.repair_bytes as f64,
    ),
    counter(
        "xdpcast_sender_reports_total",
        "Progress reports received from receivers.",
        |s| s.sender.reports as f64,
    ),
    counter(
        "xdpcast_sender_confirms_total",
        "Confirmations of parity requests multicast to the group.",
        |s| s.sender.confirms as f64,
    ),
    counter(
        "xdpcast_sender_ignored_total",
        "Datagrams on the repair socket ignored: malformed, foreign, outside the image, or over the per-address limit.",
        |s| s.sender.ignored as f64,
    ),
];

/// The families of sender pages: [`SENDER_METRICS`], an info family, the
/// receivers per state and the requests per kind.
fn sender_families(o: &mut Exposition, pages: &[&Snapshot]) {
    let session = |s: &Snapshot| -> Labels { vec![("session", s.name.clone())] };
    let info: Vec<(Labels, f64)> = pages
        .iter()
        .map(|s| {
            let mut l = session(s);
            l.extend([
                ("group", s.group.clone()),
                ("source", s.target.clone()),
                ("session_id", format!("{:#010x}", s.session_id)),
                ("state", s.state.name().into()),
                ("phase", s.sender.phase.name().into()),
            ]);
            (l, 1.0)
        })
        .collect();
    o.samples(
        "xdpcast_sender_info",
        Kind::Gauge,
        "Sender description; the value is always 1.",
        &info,
    );
    let per_page: Vec<(Labels, &Snapshot)> = pages.iter().map(|s| (session(s), *s)).collect();
    o.families(SENDER_METRICS, &per_page);
    let by = |k: &'static str, rows: &dyn Fn(&SenderStatus) -> Vec<(&'static str, u64)>| {
        pages
            .iter()
            .flat_map(|s| {
                rows(&s.sender).into_iter().map(move |(v, n)| {
                    let mut l = session(s);
                    l.push((k, v.into()));
                    (l, n as f64)
                })
            })
            .collect::<Vec<_>>()
    };
    o.samples(
        "xdpcast_sender_receivers",
        Kind::Gauge,
        "Receivers per state (finished and failed as they reported, vanished when silent).",
        &by("state", &|x| {
            vec![
                ("receiving", x.receiving),
                ("finished", x.finished),
                ("failed", x.failed),
                ("vanished", x.vanished),
            ]
        }),
    );
    o.samples(
        "xdpcast_sender_requests_total",
        Kind::Counter,
        "Repair requests received, by kind.",
        &by("kind", &|x| {
            vec![("nack", x.nacks), ("parity", x.parity_requests)]
        }),
    );
}

/// Quantiles of the batch latency published on the page.
const BATCH_QUANTILES: [f64; 3] = [0.5, 0.99, 0.999];

/// The metrics of one sender page alone (what `send --metrics-file`
/// writes): the same families as in [`prometheus`].
pub fn sender_prometheus(s: &Snapshot) -> String {
    let mut o = Exposition::new();
    sender_families(&mut o, &[s]);
    o.finish()
}

/// Every page in Prometheus text exposition format (version 0.0.4), one
/// family per metric with a sample per session (label `session`), plus
/// `unreadable` pages that could not be read. Receivers' pages give the
/// `xdpcast_session_*`, `xdpcast_worker_*`... families, senders' pages the
/// `xdpcast_sender_*` ones.
pub fn prometheus(all: &[Snapshot], unreadable: usize) -> String {
    let mut o = Exposition::new();
    let (senders, pages): (Vec<&Snapshot>, Vec<&Snapshot>) =
        all.iter().partition(|s| s.role == Role::Sender);
    if !senders.is_empty() {
        sender_families(&mut o, &senders);
    }
    let session = |s: &Snapshot| -> Labels { vec![("session", s.name.clone())] };
    let info: Vec<(Labels, f64)> = pages
        .iter()
        .map(|s| {
            let mut l = session(s);
            l.extend([
                ("group", s.group.clone()),
                ("target", s.target.clone()),
                ("mode", s.mode.name().into()),
                ("state", s.state.name().into()),
                ("error", s.error.name().into()),
            ]);
            (l, 1.0)
        })
        .collect();
    o.samples(
        "xdpcast_session_info",
        Kind::Gauge,
        "Session description; the value is always 1.",
        &info,
    );
    let per_page: Vec<(Labels, &Snapshot)> = pages.iter().map(|s| (session(s), *s)).collect();
    o.families(SESSION_METRICS, &per_page);
    let drops: Vec<(Labels, f64)> = pages
        .iter()
        .flat_map(|s| {
            DropReason::ALL.iter().map(move |r| {
                let mut l = session(s);
                l.push(("reason", r.name().into()));
                (l, s.drops_for(*r) as f64)
            })
        })
        .collect();
    o.samples(
        "xdpcast_dropped_packets_total",
        Kind::Counter,
        "Packets dropped, by reason.",
        &drops,
    );
    let per_worker: Vec<(Labels, &WorkerStatus)> = pages
        .iter()
        .flat_map(|s| {
            s.workers.iter().map(move |w| {
                let mut l = session(s);
                l.push(("queue", w.queue.to_string()));
                (l, w)
            })
        })
        .collect();
    o.families(WORKER_METRICS, &per_worker);
    let latency: Vec<(Labels, Summary)> = per_worker
        .iter()
        .map(|(l, w)| {
            let quantiles = BATCH_QUANTILES
                .into_iter()
                .zip(w.batch_ns.map(secs))
                .collect();
            (
                l.clone(),
                Summary {
                    quantiles,
                    sum: secs(w.batch_sum_ns),
                    count: w.batches as f64,
                },
            )
        })
        .collect();
    o.summary(
        "xdpcast_worker_batch_latency_seconds",
        "Wall time of a worker's batches: quantiles since the worker started.",
        &latency,
    );
    o.samples(
        "xdpcast_unreadable_pages",
        Kind::Gauge,
        "Status pages that could not be read.",
        &[(vec![], unreadable as f64)],
    );
    o.finish()
}
