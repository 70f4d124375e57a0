//! `xdpcast status --json`: one [`SessionReport`] per page, through serde.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::proto::wire::{hex, DropReason};
use crate::status::page::{
    HttpStatus, Role, SenderStatus, Snapshot, StorageStatus, StreamStatus, TrustStatus,
    WorkerStatus, STALE_AFTER,
};

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
    /// Repair requests sent: NACKs and parity requests.
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
    /// In place of `sha256`, a signed image's root in hex (BLAKE3 of its
    /// chunk hashes): its sender did not hash it with SHA-256.
    #[serde(default)]
    pub root: Option<String>,
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
    /// When a worker last took a new block, ns since the epoch.
    pub last_block_ns: u64,
    /// Signed-session state.
    pub trust: TrustReport,
    /// The staging writer (words 528-541).
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
            sha256: s
                .image_digest()
                .filter(|d| d.0 == "sha256")
                .map(|d| hex(d.1)),
            root: s.image_digest().filter(|d| d.0 == "root").map(|d| hex(d.1)),
            message: s.message.clone(),
            drops: DropReason::ALL
                .iter()
                .map(|r| (r.name().to_string(), s.drops_for(*r)))
                .collect(),
            workers: s.workers.iter().map(WorkerReport::new).collect(),
            unserved_frames: s.diag.unserved_frames,
            unserved_queues: s.diag.queues().collect(),
            last_block_ns: s.diag.last_block_ns,
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
///
/// serde escapes U+0000–U+001F in strings; U+007F–U+009F (DEL and the C1
/// controls, such as the one-byte CSI U+009B) are escaped here too, so
/// that no terminal escape reaches a terminal and a JSON parser still gets
/// the page's text back unchanged.
pub fn json(s: &Snapshot) -> String {
    let text = serde_json::to_string(&SessionReport::new(s)).expect("string keys and plain values");
    if !text.chars().any(char::is_control) {
        return text;
    }
    // Only strings can hold these characters (JSON's own syntax is ASCII
    // printable), and `\u00XX` means the same character in a string.
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if c.is_control() {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}
