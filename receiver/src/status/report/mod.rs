//! Renderings of a status page: for people ([`human`]), JSON ([`SessionReport`],
//! through serde) and Prometheus text ([`prometheus`], written by an
//! [`Exposition`]).
//!
//! Adding a page field to the outputs: a field of [`SessionReport`] (or
//! [`WorkerReport`]) set in its `new`, and one line in [`SESSION_METRICS`]
//! (or [`WORKER_METRICS`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::proto::wire::{hex, DropReason};
use crate::status::page::{
    DiagStatus, HttpStatus, PathMode, Role, SenderStatus, Snapshot, StorageStatus, StreamStatus,
    TrustStatus, WorkerStatus, FLAG_DIGEST, STALE_AFTER, TRUST_MANIFEST, TRUST_REQUIRED,
};

/// Bytes as a short human figure (KiB, MiB, GiB).
pub fn bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// A rate in bytes/s as Gbit/s or Mbit/s.
pub fn rate(bytes_per_sec: u64) -> String {
    let bits = bytes_per_sec as f64 * 8.0;
    if bits >= 1e9 {
        format!("{:.2} Gbit/s", bits / 1e9)
    } else {
        format!("{:.1} Mbit/s", bits / 1e6)
    }
}

/// Several lines describing the page, for `xdpcast status`.
pub fn human(s: &Snapshot) -> String {
    let mut o = String::new();
    let pct = if s.block_count > 0 {
        s.blocks_done as f64 * 100.0 / s.block_count as f64
    } else {
        0.0
    };
    let _ = writeln!(
        o,
        "session   {} ({}, id {:#010x})",
        s.name, s.group, s.session_id
    );
    if s.foreign_owner() {
        let _ = writeln!(
            o,
            "WARNING   page owned by uid {}, neither root nor you: another user may have written all of it",
            s.owner_uid
        );
    }
    let _ = writeln!(o, "state     {}  error {}", s.state.name(), s.error);
    if s.role == Role::Sender {
        sender_lines(&mut o, s);
        return o;
    }
    let _ = writeln!(o, "path      {}  target {}", s.mode.name(), s.target);
    let _ = writeln!(
        o,
        "progress  {}/{} blocks ({pct:.1}%), {} of {}",
        s.blocks_done,
        s.block_count,
        bytes(s.bytes_done),
        bytes(s.total_bytes)
    );
    let _ = writeln!(
        o,
        "rate      now {}  average {}",
        rate(s.rate_bps),
        rate(s.avg_rate_bps)
    );
    let _ = writeln!(
        o,
        "packets   {} accepted, {} duplicates, {} dropped; pass and repair round ends seen {}, blocks missing after first pass {}",
        s.packets,
        s.drops_for(DropReason::Duplicate),
        s.rejected(),
        s.passes_seen,
        s.first_pass_missing
    );
    if s.sparse.skipped_blocks > 0 {
        let _ = writeln!(
            o,
            "sparse    {} in {} blocks of zeros skipped (never sent), made zeros by {}",
            bytes(s.sparse.skipped_bytes),
            s.sparse.skipped_blocks,
            s.sparse.zero_method.name()
        );
    }
    if s.fec_recovered + s.nacks_sent + s.resumed_blocks > 0 {
        let _ = writeln!(
            o,
            "repair    {} blocks rebuilt by FEC, {} NACKs sent, {} blocks resumed from disk",
            s.fec_recovered, s.nacks_sent, s.resumed_blocks
        );
    }
    if s.stream.window > 0 {
        let _ = writeln!(
            o,
            "stream    {} written to the pipe, {} held of a {} window, {} blocks refused (window full, asked again)",
            bytes(s.stream.written),
            bytes(s.stream.held),
            bytes(s.stream.window),
            s.stream.refused
        );
    }
    let drops: Vec<String> = DropReason::ALL
        .iter()
        .filter(|r| s.drops_for(**r) > 0)
        .map(|r| format!("{}={}", r.name(), s.drops_for(*r)))
        .collect();
    if !drops.is_empty() {
        let _ = writeln!(o, "drops     {}", drops.join(" "));
    }
    if s.diag.unserved_frames > 0 {
        let _ = writeln!(o, "unserved  {} ({UNSERVED_FIX})", unserved(&s.diag));
    }
    let h = &s.http;
    if h.state > 0 {
        let _ = writeln!(
            o,
            "http      {}: {} by multicast, {} by HTTP in {} requests; {} chunks failed their hash, {} bad replies, {} refused, {} busy",
            h.state_name(),
            bytes(h.multicast_bytes),
            bytes(h.http_bytes),
            h.requests,
            h.bad_chunks,
            h.bad_replies,
            h.refused,
            h.busy
        );
    }
    let _ = match (
        s.trust.flags & TRUST_REQUIRED,
        s.trust.flags & TRUST_MANIFEST,
    ) {
        (0, _) => Ok(()),
        (_, 0) => writeln!(o, "trust     --trust: no manifest from a trusted key yet"),
        _ => writeln!(
            o,
            "trust     signed by {}: {}/{} chunks verified, {} blocks rejected",
            hex(&s.trust.signer),
            s.trust.chunks_verified,
            s.trust.chunk_count,
            s.trust.rejected_blocks
        ),
    };
    if s.flags & FLAG_DIGEST != 0 {
        let _ = writeln!(o, "sha256    {}", hex(&s.digest));
    }
    for w in &s.workers {
        let cpu = if w.cpu == u64::MAX {
            "-".to_string()
        } else {
            w.cpu.to_string()
        };
        let _ = write!(
            o,
            "worker    queue {} cpu {cpu}: {} packets, {} blocks, {} drops, {} batches, {} ring drops",
            w.queue, w.packets, w.blocks, w.drops, w.batches, w.ring_drops
        );
        if w.batch_ns[0] > 0 {
            let [p50, p99, p999] = w.batch_ns.map(|ns| ns as f64 / 1e3);
            let _ = write!(o, "; batch p50 {p50:.1} p99 {p99:.1} p99.9 {p999:.1} µs");
        }
        if w.gro_messages > 0 {
            let _ = write!(o, "; {} GRO messages", w.gro_messages);
        }
        if s.mode != PathMode::Socket && s.mode != PathMode::Unknown {
            let k = &w.kernel;
            let _ = write!(
                o,
                "; kernel rx_dropped {} rx_ring_full {} fill_ring_empty {} rx_invalid_descs {}",
                k.rx_dropped, k.rx_ring_full, k.fill_ring_empty, k.rx_invalid_descs
            );
        }
        o.push('\n');
    }
    let st = &s.storage;
    if st.buffer_bytes > 0 {
        let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
        let _ = writeln!(
            o,
            "storage   {:.0} MiB buffer, {:.0} MiB in use (peak {:.0}), {:.1} MiB written{}: {} whole + {} partial chunks, {} overflow blocks, longest write {:.1} ms; {} blocks handed off, {} copied by workers (lane full)",
            mib(st.buffer_bytes),
            mib(st.buffer_used),
            mib(st.buffer_peak),
            mib(st.bytes_stored),
            if st.direct { " (O_DIRECT)" } else { "" },
            st.chunks_full,
            st.chunks_partial,
            st.overflow_blocks,
            st.write_max_ns as f64 / 1e6,
            st.handed_off,
            st.lane_full
        );
    }
    if !s.message.is_empty() {
        let _ = writeln!(o, "message   {}", s.message);
    }
    o
}

/// The lines of a sender's page after its state.
fn sender_lines(o: &mut String, s: &Snapshot) {
    let x = &s.sender;
    let pct = 100.0 * s.blocks_done as f64 / s.block_count.max(1) as f64;
    let _ = writeln!(
        o,
        "sender    {} (pass {}), source {}",
        x.phase.name(),
        s.passes_seen,
        s.target
    );
    let _ = writeln!(
        o,
        "progress  {}/{} blocks of the pass ({pct:.1}%), {} of {}",
        s.blocks_done,
        s.block_count,
        bytes(s.bytes_done),
        bytes(s.total_bytes)
    );
    let _ = writeln!(
        o,
        "sent      {} packets, {} of data and symbols; now {}, average {}",
        s.packets,
        bytes(x.bytes_sent),
        rate(s.rate_bps),
        rate(s.avg_rate_bps)
    );
    let _ = writeln!(
        o,
        "receivers {} known: {} receiving, {} finished, {} failed, {} vanished",
        x.receivers_known, x.receiving, x.finished, x.failed, x.vanished
    );
    let _ = writeln!(
        o,
        "repair    {} rounds of {} packets ({}); {} NACKs and {} parity requests in, {} confirmations out, {} reports, {} datagrams ignored",
        x.repair_rounds,
        x.repair_packets,
        bytes(x.repair_bytes),
        x.nacks,
        x.parity_requests,
        x.confirms,
        x.reports,
        x.ignored
    );
    if s.sparse.skipped_bytes > 0 {
        let _ = writeln!(
            o,
            "sparse    {} of zeros in this pass announced, not sent",
            bytes(s.sparse.skipped_bytes)
        );
    }
    if s.flags & FLAG_DIGEST != 0 {
        let _ = writeln!(o, "sha256    {}", hex(&s.digest));
    }
    if !s.message.is_empty() {
        let _ = writeln!(o, "message   {}", s.message);
    }
}

/// `N frames of the session on RX queue(s) Q without an AF_XDP socket`:
/// what the XDP program passed to the kernel for want of a socket on the
/// queue (see [`UNSERVED_FIX`]).
pub fn unserved(d: &DiagStatus) -> String {
    format!(
        "{} frames of the session on RX queue{} {} without an AF_XDP socket, not received",
        d.unserved_frames,
        if d.queues().count() == 1 { "" } else { "s" },
        d.queue_list()
    )
}

/// The way out of [`unserved`] frames, in short.
pub const UNSERVED_FIX: &str =
    "use --queues all, or steer the flow to the served queues with ethtool";

/// One session as `xdpcast status --json` prints it: this struct is the
/// JSON schema (docs/status-page.md lists its keys). Built from a page by
/// [`SessionReport::new`]; a new page field is a field here and a line there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionReport {
    /// Session name.
    pub name: String,
    /// Multicast group and port.
    pub group: String,
    /// Target file or block device.
    pub target: String,
    /// `INITIALIZED`, `IN_PROGRESS`, `SUCCESS` or `FAILURE`.
    pub state: String,
    /// Error code number (0 unless FAILURE).
    pub error_code: u32,
    /// Error code name.
    pub error: String,
    /// Data path: `unknown`, `socket`, `xdp-native` or `xdp-generic`.
    pub mode: String,
    /// The receiver is gone or silent while the session is not final.
    pub stale: bool,
    /// Owner of the page file.
    pub owner_uid: u32,
    /// The page belongs to neither root nor the reader's user: another
    /// local user wrote it and all of it may be made up.
    pub foreign_owner: bool,
    /// Sender's session id.
    pub session_id: u64,
    /// Pid of the receiver writing the page.
    pub writer_pid: u64,
    /// Last page update, ns since the Unix epoch.
    pub heartbeat_ns: u64,
    /// Bytes per block (0 until known).
    pub block_size: u64,
    /// Blocks in the image (0 until known).
    pub block_count: u64,
    /// Image size (0 until known).
    pub total_bytes: u64,
    /// Distinct blocks written.
    pub blocks_done: u64,
    /// Image bytes written.
    pub bytes_done: u64,
    /// Valid packets of the session.
    pub packets: u64,
    /// Session start, ns since the Unix epoch.
    pub start_ns: u64,
    /// Session end (0 while running).
    pub end_ns: u64,
    /// Goodput over the last update interval, bytes/s.
    pub rate_bps: u64,
    /// Goodput since the first block, bytes/s.
    pub avg_rate_bps: u64,
    /// Ends of sender passes seen.
    pub passes_seen: u64,
    /// Blocks missing when the first pass ended.
    pub first_pass_missing: u64,
    /// Blocks rebuilt from FEC symbols.
    pub fec_recovered: u64,
    /// NACK packets sent.
    pub nacks_sent: u64,
    /// Blocks taken from a resume file.
    pub resumed_blocks: u64,
    /// Bytes of the sender's zero runs made to read as zeros, never sent
    /// (counted in `bytes_done` too).
    pub skipped_bytes: u64,
    /// Blocks of those runs.
    pub skipped_blocks: u64,
    /// How they were made zeros: none, punch_hole, zero_range, blkzeroout, written.
    pub zero_method: String,
    /// Sender's SHA-256 in hex, once known.
    pub sha256: Option<String>,
    /// Human-readable note (the error, on failure).
    pub message: String,
    /// Dropped packets by reason name.
    pub drops: BTreeMap<String, u64>,
    /// One entry per worker.
    pub workers: Vec<WorkerReport>,
    /// Frames of the session on RX queues without an AF_XDP socket.
    pub unserved_frames: u64,
    /// Those RX queues (0..63).
    pub unserved_queues: Vec<u32>,
    /// Signed-session state.
    pub trust: TrustReport,
    /// The staging writer (words 528-536).
    pub storage: StorageStatus,
    /// The output stream of `--out -` (words 560-563; all 0 otherwise).
    pub stream: StreamStatus,
    /// Bytes by multicast and by HTTP, the HTTP source (words 608-615).
    #[serde(default)]
    pub http: HttpStatus,
    /// Who writes the page: `receiver` or `sender`.
    pub role: String,
    /// A sender's view of its receivers and repairs (words 545-559); null
    /// on a receiver's page.
    pub sender: Option<SenderStatus>,
}

/// The signed-session words of a [`SessionReport`] (docs/status-page.md,
/// "Trust region").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustReport {
    /// `TRUST_*` bits.
    pub flags: u64,
    /// Chunks in the verified manifest.
    pub chunk_count: u64,
    /// Chunks whose hash verified.
    pub chunks_verified: u64,
    /// Blocks discarded with a chunk that failed its hash.
    pub rejected_blocks: u64,
    /// Pages of chunk hashes verified.
    pub pages: u64,
    /// When the manifest was signed, Unix seconds.
    pub issued_at: u64,
    /// The signer's public key, hex.
    pub signer: String,
}

impl TrustReport {
    fn new(t: &TrustStatus) -> TrustReport {
        TrustReport {
            flags: t.flags,
            chunk_count: t.chunk_count,
            chunks_verified: t.chunks_verified,
            rejected_blocks: t.rejected_blocks,
            pages: t.pages,
            issued_at: t.issued_at,
            signer: hex(&t.signer),
        }
    }
}

/// One worker of a [`SessionReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerReport {
    /// RX queue (XDP) or socket index.
    pub queue: u64,
    /// Core the worker is pinned to; `null` when not pinned.
    pub cpu: Option<u64>,
    /// Frames or datagrams taken in.
    pub packets: u64,
    /// Block bytes written.
    pub bytes: u64,
    /// Blocks written.
    pub blocks: u64,
    /// Packets dropped, any reason.
    pub drops: u64,
    /// Non-empty batches.
    pub batches: u64,
    /// Frames the kernel dropped for a full ring.
    pub ring_drops: u64,
    /// Median batch wall time, ns (0 before the first batch).
    pub batch_p50_ns: u64,
    /// 99th percentile batch wall time, ns.
    pub batch_p99_ns: u64,
    /// 99.9th percentile batch wall time, ns.
    pub batch_p999_ns: u64,
    /// Sum of all batch wall times, ns.
    pub batch_sum_ns: u64,
    /// Kernel: frames the AF_XDP socket dropped (XDP_STATISTICS rx_dropped).
    pub rx_dropped: u64,
    /// Kernel: invalid descriptors on the fill ring.
    pub rx_invalid_descs: u64,
    /// Kernel: frames dropped because the rx ring was full.
    pub rx_ring_full: u64,
    /// Kernel: times the fill ring was found empty.
    pub fill_ring_empty: u64,
    /// Socket path: messages of several GRO-coalesced datagrams.
    pub gro_messages: u64,
}

impl SessionReport {
    /// The report of page `s`; `stale` as of now ([`STALE_AFTER`]).
    pub fn new(s: &Snapshot) -> SessionReport {
        SessionReport {
            name: s.name.clone(),
            group: s.group.clone(),
            target: s.target.clone(),
            state: s.state.name().into(),
            error_code: s.error as u32,
            error: s.error.name().into(),
            mode: s.mode.name().into(),
            stale: s.is_stale(STALE_AFTER),
            owner_uid: s.owner_uid,
            foreign_owner: s.foreign_owner(),
            session_id: s.session_id,
            writer_pid: s.writer_pid,
            heartbeat_ns: s.heartbeat_ns,
            block_size: s.block_size,
            block_count: s.block_count,
            total_bytes: s.total_bytes,
            blocks_done: s.blocks_done,
            bytes_done: s.bytes_done,
            packets: s.packets,
            start_ns: s.start_ns,
            end_ns: s.end_ns,
            rate_bps: s.rate_bps,
            avg_rate_bps: s.avg_rate_bps,
            passes_seen: s.passes_seen,
            first_pass_missing: s.first_pass_missing,
            fec_recovered: s.fec_recovered,
            nacks_sent: s.nacks_sent,
            resumed_blocks: s.resumed_blocks,
            skipped_bytes: s.sparse.skipped_bytes,
            skipped_blocks: s.sparse.skipped_blocks,
            zero_method: s.sparse.zero_method.name().into(),
            sha256: (s.flags & FLAG_DIGEST != 0).then(|| hex(&s.digest)),
            message: s.message.clone(),
            drops: DropReason::ALL
                .iter()
                .map(|r| (r.name().to_string(), s.drops_for(*r)))
                .collect(),
            workers: s.workers.iter().map(WorkerReport::new).collect(),
            unserved_frames: s.diag.unserved_frames,
            unserved_queues: s.diag.queues().collect(),
            trust: TrustReport::new(&s.trust),
            storage: s.storage,
            stream: s.stream,
            http: s.http,
            role: s.role.name().into(),
            sender: (s.role == Role::Sender).then_some(s.sender),
        }
    }
}

impl WorkerReport {
    /// The report of one worker slot.
    pub fn new(w: &WorkerStatus) -> WorkerReport {
        let [batch_p50_ns, batch_p99_ns, batch_p999_ns] = w.batch_ns;
        WorkerReport {
            queue: w.queue,
            cpu: (w.cpu != u64::MAX).then_some(w.cpu),
            packets: w.packets,
            bytes: w.bytes,
            blocks: w.blocks,
            drops: w.drops,
            batches: w.batches,
            ring_drops: w.ring_drops,
            batch_p50_ns,
            batch_p99_ns,
            batch_p999_ns,
            batch_sum_ns: w.batch_sum_ns,
            rx_dropped: w.kernel.rx_dropped,
            rx_invalid_descs: w.kernel.rx_invalid_descs,
            rx_ring_full: w.kernel.rx_ring_full,
            fill_ring_empty: w.kernel.fill_ring_empty,
            gro_messages: w.gro_messages,
        }
    }
}

/// The page as one line of JSON ([`SessionReport`]).
pub fn json(s: &Snapshot) -> String {
    serde_json::to_string(&SessionReport::new(s)).expect("string keys and plain values")
}

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
            for c in v.chars() {
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
        "NACK packets sent to the sender.",
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::page::State;

    #[test]
    fn figures() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(256 << 20), "256.0 MiB");
        assert_eq!(rate(125_000_000), "1.00 Gbit/s");
        assert_eq!(rate(1_250_000), "10.0 Mbit/s");
    }

    fn sample() -> Snapshot {
        let mut s = Snapshot {
            name: "a\"b".into(),
            message: "line\nnext".into(),
            state: State::Success,
            flags: FLAG_DIGEST,
            digest: [0xAB; 32],
            workers: vec![
                WorkerStatus {
                    cpu: u64::MAX,
                    batch_ns: [1_500, 20_000, 95_000],
                    ..Default::default()
                },
                WorkerStatus {
                    queue: 1,
                    cpu: 3,
                    batches: 7,
                    ..Default::default()
                },
            ],
            diag: DiagStatus {
                unserved_frames: 30,
                unserved_queues: 0b110,
            },
            ..Default::default()
        };
        s.drops[DropReason::OutOfRange as usize] = 4;
        s
    }

    #[test]
    fn json_round_trips_and_names_every_field() {
        let s = sample();
        let j = json(&s);
        let back: SessionReport = serde_json::from_str(&j).unwrap();
        assert_eq!(back, SessionReport::new(&s));
        assert_eq!(back.name, "a\"b");
        assert_eq!(back.message, "line\nnext");
        assert_eq!(back.state, "SUCCESS");
        assert!(!back.stale, "final pages are never stale");
        assert_eq!(back.drops["out_of_range"], 4);
        assert_eq!(back.drops.len(), DropReason::COUNT);
        assert_eq!(back.sha256, Some("ab".repeat(32)));
        assert_eq!(back.workers[0].cpu, None);
        assert_eq!(back.workers[1].cpu, Some(3));
        assert_eq!(back.workers[0].batch_p99_ns, 20_000);
        // Keys by name; optional values are explicit nulls.
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["workers"][0]["cpu"], serde_json::Value::Null);
        assert_eq!(v["workers"][0]["batch_p999_ns"], 95_000);
        let none = json(&Snapshot::default());
        assert!(none.contains(r#""sha256":null"#), "{none}");
        let h = human(&s);
        assert!(h.contains("SUCCESS") && h.contains("out_of_range=4"));
        assert!(h.contains("batch p50 1.5 p99 20.0 p99.9 95.0 µs"), "{h}");
        assert_eq!(
            (back.unserved_frames, &back.unserved_queues[..]),
            (30, &[1, 2][..])
        );
        assert!(
            h.contains(
                "unserved  30 frames of the session on RX queues 1,2 without an AF_XDP socket"
            ),
            "{h}"
        );
        assert!(!human(&Snapshot::default()).contains("unserved"));
    }

    #[test]
    fn prometheus_groups_families_and_escapes_labels() {
        let mut a = Snapshot {
            name: "lab\"1".into(),
            state: State::InProgress,
            bytes_done: 4096,
            diag: DiagStatus {
                unserved_frames: 17,
                unserved_queues: 2,
            },
            workers: vec![WorkerStatus {
                queue: 3,
                packets: 9,
                batches: 5,
                batch_ns: [2_000, 40_000, 120_000],
                batch_sum_ns: 250_000,
                ..Default::default()
            }],
            ..Default::default()
        };
        a.drops[DropReason::Duplicate as usize] = 2;
        let b = Snapshot {
            name: "lab-2\n".into(),
            state: State::Failure,
            error: crate::ErrorCode::DiskFull,
            ..Default::default()
        };
        let text = prometheus(&[a, b], 1);
        for want in [
            "xdpcast_received_bytes_total{session=\"lab\\\"1\"} 4096\n",
            "xdpcast_session_error_code{session=\"lab-2\\n\"} 5\n",
            "xdpcast_dropped_packets_total{session=\"lab\\\"1\",reason=\"duplicate\"} 2\n",
            "xdpcast_worker_packets_total{session=\"lab\\\"1\",queue=\"3\"} 9\n",
            "# TYPE xdpcast_worker_batch_latency_seconds summary\n",
            "xdpcast_worker_batch_latency_seconds{session=\"lab\\\"1\",queue=\"3\",quantile=\"0.99\"} 0.00004\n",
            "xdpcast_worker_batch_latency_seconds_count{session=\"lab\\\"1\",queue=\"3\"} 5\n",
            "xdpcast_worker_batch_latency_seconds_sum{session=\"lab\\\"1\",queue=\"3\"} 0.00025\n",
            "xdpcast_unreadable_pages 1\n",
            "xdpcast_unserved_frames_total{session=\"lab\\\"1\"} 17\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        // Each family is declared once, with HELP, before all of its samples.
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = line.split(' ').nth(2).unwrap();
            assert_eq!(
                text.matches(&format!("# TYPE {name} ")).count(),
                1,
                "{name}"
            );
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
            let first_sample = text.find(&format!("\n{name}{{"));
            assert!(first_sample.is_none_or(|i| i > text.find(line).unwrap()));
            if line.ends_with(" counter") {
                assert!(name.ends_with("_total"), "{name}");
            }
        }
        assert!(text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .all(|l| l.starts_with("xdpcast_")
                && l.rsplit(' ').next().unwrap().parse::<f64>().is_ok()));
    }

    /// A section of docs/status-page.md, and the `ticked` words in it.
    fn doc_section(title: &str) -> &'static str {
        const DOC: &str = include_str!("../../../docs/status-page.md");
        let start = DOC.find(&format!("\n## {title}\n")).expect(title) + 1;
        let len = DOC[start + 3..]
            .find("\n## ")
            .map_or(DOC.len() - start, |n| n + 3);
        &DOC[start..start + len]
    }

    fn ticked(text: &str) -> std::collections::BTreeSet<&str> {
        text.split('`').skip(1).step_by(2).collect()
    }

    /// The ticked words of the first column of a section's table.
    fn first_column(text: &str) -> std::collections::BTreeSet<&str> {
        text.lines()
            .filter(|l| l.starts_with("| `"))
            .flat_map(|l| ticked(l.split(" | ").next().unwrap()))
            .collect()
    }

    #[test]
    fn docs_list_every_json_key_and_metric_family() {
        let s = sample();
        let v = serde_json::to_value(SessionReport::new(&s)).unwrap();
        let json = doc_section("JSON");
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let worker = v["workers"][0].as_object().unwrap();
        for k in keys
            .iter()
            .copied()
            .chain(worker.keys().map(String::as_str))
        {
            assert!(
                ticked(json).contains(k),
                "JSON key {k} not in docs/status-page.md"
            );
        }
        assert!(first_column(json).len() > 20);
        for k in first_column(json) {
            assert!(keys.contains(&k), "docs/status-page.md lists JSON key {k}");
        }
        let sender = Snapshot {
            name: "send-lab".into(),
            role: Role::Sender,
            ..Snapshot::default()
        };
        let text = prometheus(&[s, sender], 0);
        let families: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap())
            .collect();
        let prom = doc_section("Prometheus");
        for f in &families {
            assert!(
                ticked(prom).contains(f),
                "family {f} not in docs/status-page.md"
            );
        }
        assert!(first_column(prom).len() > 20);
        for f in first_column(prom) {
            assert!(
                families.contains(&f),
                "docs/status-page.md lists family {f}"
            );
        }
    }
}
