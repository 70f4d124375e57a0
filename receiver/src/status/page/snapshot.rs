//! What a page holds as plain values ([`Snapshot`] and one struct per
//! region), and their conversion to and from the page's words.

use std::time::Duration;

use super::layout::*;
use super::reader::{now_ns, writer_alive};
use crate::error::{Error, ErrorCode, Result};
use crate::net::rings::XskStats;
use crate::proto::wire::DropReason;
use crate::safe_fs;

/// A sender's view of its receivers and of the repair it did (the scale
/// region, words 545-559, on a page whose role is [`Role::Sender`]); also
/// the `sender` object of `xdpcast status --json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct SenderStatus {
    /// What the sender is doing.
    pub phase: SendPhase,
    /// Receivers that ever reported.
    pub receivers_known: u64,
    /// Of them, still receiving.
    pub receiving: u64,
    /// Reported SUCCESS.
    pub finished: u64,
    /// Reported FAILURE (or were told they are too slow).
    pub failed: u64,
    /// Went silent before they ended.
    pub vanished: u64,
    /// Repair rounds run.
    pub repair_rounds: u64,
    /// Data and RaptorQ symbol packets sent in repair rounds.
    pub repair_packets: u64,
    /// Payload bytes of those packets.
    pub repair_bytes: u64,
    /// Block-range NACK packets received.
    pub nacks: u64,
    /// Parity request packets received.
    pub parity_requests: u64,
    /// Progress reports received.
    pub reports: u64,
    /// Confirmations multicast (answers to parity requests).
    pub confirms: u64,
    /// Datagrams on the repair socket ignored (malformed, foreign, outside
    /// the image, or over the per-address limit).
    pub ignored: u64,
    /// Payload bytes of data and symbol packets sent, passes and repairs.
    pub bytes_sent: u64,
}

impl SenderStatus {
    fn words(self) -> [(usize, u64); 15] {
        use offsets::{sender::*, REPAIR};
        [
            (PHASE, self.phase as u64),
            (RECEIVERS_KNOWN, self.receivers_known),
            (RECEIVING, self.receiving),
            (FINISHED, self.finished),
            (FAILED, self.failed),
            (VANISHED, self.vanished),
            (REPAIR_ROUNDS, self.repair_rounds),
            (REPAIR_PACKETS, self.repair_packets),
            (REPAIR_BYTES, self.repair_bytes),
            (NACKS, self.nacks),
            (PARITY_REQUESTS, self.parity_requests),
            (REPORTS, self.reports),
            (CONFIRMS, self.confirms),
            (IGNORED, self.ignored),
            (BYTES_SENT, self.bytes_sent),
        ]
        .map(|(i, v)| (REPAIR + i, v))
    }

    fn from_page(w: &[u64; WORDS]) -> SenderStatus {
        use offsets::sender::*;
        let r = &w[offsets::REPAIR..][..offsets::REGION_WORDS];
        SenderStatus {
            phase: SendPhase::from_u64(r[PHASE]),
            receivers_known: r[RECEIVERS_KNOWN],
            receiving: r[RECEIVING],
            finished: r[FINISHED],
            failed: r[FAILED],
            vanished: r[VANISHED],
            repair_rounds: r[REPAIR_ROUNDS],
            repair_packets: r[REPAIR_PACKETS],
            repair_bytes: r[REPAIR_BYTES],
            nacks: r[NACKS],
            parity_requests: r[PARITY_REQUESTS],
            reports: r[REPORTS],
            confirms: r[CONFIRMS],
            ignored: r[IGNORED],
            bytes_sent: r[BYTES_SENT],
        }
    }
}

/// Counters of one worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WorkerStatus {
    /// RX queue (XDP path) or socket index (socket path).
    pub queue: u64,
    /// CPU the worker is pinned to, or `u64::MAX` when not pinned.
    pub cpu: u64,
    /// Frames or datagrams taken from the ring/socket.
    pub packets: u64,
    /// Block bytes written to the target.
    pub bytes: u64,
    /// Blocks written to the target.
    pub blocks: u64,
    /// Packets dropped (any reason).
    pub drops: u64,
    /// Non-empty batches processed.
    pub batches: u64,
    /// Frames the kernel dropped because the ring was full (AF_XDP statistics).
    pub ring_drops: u64,
    /// Wall time of a batch, from its first packet to the ring refilled
    /// (XDP) or the last datagram written (sockets), in ns: 50th, 99th and
    /// 99.9th percentile since the worker started; 0 before the first batch.
    pub batch_ns: [u64; 3],
    /// Sum of the wall times of all its batches, ns (with `batches`, the
    /// mean).
    pub batch_sum_ns: u64,
    /// The kernel's counters of the worker's AF_XDP socket
    /// (`XDP_STATISTICS`, extension slot words 0-3); zero on the socket path.
    pub kernel: XskStats,
    /// Socket path: messages that carried several datagrams coalesced by
    /// the interface's GRO (`UDP_GRO`; extension slot word 4).
    pub gro_messages: u64,
}

/// The staging writer between the workers and the target (words 528-541);
/// also the `storage` object of `xdpcast status --json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct StorageStatus {
    /// Staging buffer size, bytes.
    pub buffer_bytes: u64,
    /// Staging buffer in use now, bytes.
    pub buffer_used: u64,
    /// Most staging buffer in use at once, bytes.
    pub buffer_peak: u64,
    /// Bytes written to the target so far.
    pub bytes_stored: u64,
    /// Complete 1 MiB chunks written in one piece.
    pub chunks_full: u64,
    /// Incomplete chunks written as they were (loss, resume sync, end).
    pub chunks_partial: u64,
    /// Blocks written straight to the target (by a worker, or by a copier
    /// for blocks handed off) because the whole buffer was in use.
    pub overflow_blocks: u64,
    /// Longest single write (or writeback wait) of the writer thread, ns.
    pub write_max_ns: u64,
    /// Whole chunks go to the device with `O_DIRECT` (word: 1).
    pub direct: bool,
    /// Blocks AF_XDP workers handed to their copier threads in their
    /// frames, without copying them.
    pub handed_off: u64,
    /// Blocks an AF_XDP worker copied itself because its lane to the
    /// copier was full (the copier fell behind).
    pub lane_full: u64,
    /// Bytes the writer read from the target to check a signed chunk
    /// (blocks of a resume file, or written before their chunk was
    /// complete); zero in a signed session without resume.
    pub bytes_read_back: u64,
    /// Blocks of a signed session refused unclaimed (asked for again)
    /// because their chunk found no free buffer.
    pub blocks_refused: u64,
    /// Signed chunks hashed and compared by the staging writer.
    pub chunks_checked: u64,
}

impl StorageStatus {
    fn words(self) -> [u64; offsets::storage::USED] {
        [
            self.buffer_bytes,
            self.buffer_used,
            self.buffer_peak,
            self.bytes_stored,
            self.chunks_full,
            self.chunks_partial,
            self.overflow_blocks,
            self.write_max_ns,
            u64::from(self.direct),
            self.handed_off,
            self.lane_full,
            self.bytes_read_back,
            self.blocks_refused,
            self.chunks_checked,
        ]
    }

    fn from_words(w: &[u64]) -> StorageStatus {
        StorageStatus {
            buffer_bytes: w[0],
            buffer_used: w[1],
            buffer_peak: w[2],
            bytes_stored: w[3],
            chunks_full: w[4],
            chunks_partial: w[5],
            overflow_blocks: w[6],
            write_max_ns: w[7],
            direct: w[8] != 0,
            handed_off: w[9],
            lane_full: w[10],
            bytes_read_back: w[11],
            blocks_refused: w[12],
            chunks_checked: w[13],
        }
    }
}

impl WorkerStatus {
    /// The words of worker slot `i`: counters, batch latency and its sum.
    fn words(self, i: usize) -> impl Iterator<Item = (usize, u64)> {
        use offsets::*;
        let counters = [
            self.queue,
            self.cpu,
            self.packets,
            self.bytes,
            self.blocks,
            self.drops,
            self.batches,
            self.ring_drops,
        ];
        let at = |base: usize| move |(j, v): (usize, u64)| (base + j, v);
        let k = self.kernel;
        let ext = [
            k.rx_dropped,
            k.rx_invalid_descs,
            k.rx_ring_full,
            k.fill_ring_empty,
            self.gro_messages,
        ];
        (counters
            .into_iter()
            .enumerate()
            .map(at(WORKERS + i * WORKER_WORDS)))
        .chain(
            self.batch_ns
                .into_iter()
                .enumerate()
                .map(at(WORKER_LATENCY + i * LATENCY_WORDS)),
        )
        .chain([(WORKER_BATCH_SUM + i, self.batch_sum_ns)])
        .chain(
            ext.into_iter()
                .enumerate()
                .map(at(WORKER_EXT + i * WORKER_EXT_WORDS)),
        )
    }

    /// Worker slot `i` of the page.
    fn from_page(w: &[u64; WORDS], i: usize) -> WorkerStatus {
        use offsets::*;
        let c = &w[WORKERS + i * WORKER_WORDS..][..WORKER_WORDS];
        let l = &w[WORKER_LATENCY + i * LATENCY_WORDS..][..LATENCY_WORDS];
        let x = &w[WORKER_EXT + i * WORKER_EXT_WORDS..][..WORKER_EXT_WORDS];
        WorkerStatus {
            queue: c[0],
            cpu: c[1],
            packets: c[2],
            bytes: c[3],
            blocks: c[4],
            drops: c[5],
            batches: c[6],
            ring_drops: c[7],
            batch_ns: [l[0], l[1], l[2]],
            batch_sum_ns: w[WORKER_BATCH_SUM + i],
            kernel: XskStats {
                rx_dropped: x[0],
                rx_invalid_descs: x[1],
                rx_ring_full: x[2],
                fill_ring_empty: x[3],
            },
            gro_messages: x[4],
        }
    }
}

/// Bytes by multicast and by HTTP, and what the HTTP source met (region
/// [`offsets::HTTP`], words 608-615; docs/http.md); also the `http` object
/// of `xdpcast status --json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct HttpStatus {
    /// 0 no HTTP source, 1 standing by, 2 fetching, 3 given up.
    pub state: u64,
    /// Image bytes the data path brought (multicast).
    pub multicast_bytes: u64,
    /// Image bytes taken from web servers (before chunk checks; those of
    /// chunks that failed also count in `trust.rejected_blocks`).
    pub http_bytes: u64,
    /// Requests sent (ranges and the manifest file).
    pub requests: u64,
    /// Chunks from a web server that failed their signed hash.
    pub bad_chunks: u64,
    /// Replies that broke the range contract: a whole body, a wrong
    /// Content-Range, too many or too few bytes, past the deadline.
    pub bad_replies: u64,
    /// Refusals (status codes, connection failures).
    pub refused: u64,
    /// 429 and 503 replies, backed off.
    pub busy: u64,
}

impl HttpStatus {
    const WORDS: usize = 8;

    fn words(self) -> [(usize, u64); Self::WORDS] {
        let v = [
            self.state,
            self.multicast_bytes,
            self.http_bytes,
            self.requests,
            self.bad_chunks,
            self.bad_replies,
            self.refused,
            self.busy,
        ];
        std::array::from_fn(|i| (offsets::HTTP + i, v[i]))
    }

    fn from_page(w: &[u64; WORDS]) -> HttpStatus {
        let r = &w[offsets::HTTP..offsets::HTTP + Self::WORDS];
        HttpStatus {
            state: r[0],
            multicast_bytes: r[1],
            http_bytes: r[2],
            requests: r[3],
            bad_chunks: r[4],
            bad_replies: r[5],
            refused: r[6],
            busy: r[7],
        }
    }

    /// `state` for people.
    pub fn state_name(&self) -> &'static str {
        match self.state {
            0 => "off",
            1 => "standby",
            2 => "fetching",
            3 => "given_up",
            _ => "unknown",
        }
    }
}

/// Diagnostics of the data path (region [`offsets::DIAG`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DiagStatus {
    /// Frames of the session that the XDP program saw on RX queues without
    /// an AF_XDP socket: passed to the kernel, never received (`--queues`
    /// leaves out a queue the NIC hashes the flow to).
    pub unserved_frames: u64,
    /// Bit `q` set: RX queue `q` (0..63) had such frames.
    pub unserved_queues: u64,
    /// When a worker last took a block it did not have yet (the end of
    /// that batch), ns since the Unix epoch; 0 before the first. With
    /// `end_ns`, the time from the last block to the session's end.
    pub last_block_ns: u64,
}

impl DiagStatus {
    fn words(self) -> [(usize, u64); 3] {
        use offsets::DIAG;
        [
            (DIAG, self.unserved_frames),
            (DIAG + 1, self.unserved_queues),
            (DIAG + 2, self.last_block_ns),
        ]
    }

    fn from_page(w: &[u64; WORDS]) -> DiagStatus {
        use offsets::DIAG;
        DiagStatus {
            unserved_frames: w[DIAG],
            unserved_queues: w[DIAG + 1],
            last_block_ns: w[DIAG + 2],
        }
    }

    /// The queues of `unserved_queues`, in order.
    pub fn queues(&self) -> impl Iterator<Item = u32> + '_ {
        (0..64).filter(|q| self.unserved_queues & (1 << q) != 0)
    }

    /// Those queues for people: `1,3`, or `above 63` when the frames came
    /// only on queues past the mask.
    pub fn queue_list(&self) -> String {
        let queues: Vec<String> = self.queues().map(|q| q.to_string()).collect();
        if queues.is_empty() {
            "above 63".into()
        } else {
            queues.join(",")
        }
    }
}

/// The output stream of a session whose image goes to a pipe (`--out -`,
/// `udp-receiver`; region [`offsets::STREAM`]); all zero otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct StreamStatus {
    /// Capacity of the reorder window, bytes.
    pub window: u64,
    /// Bytes held in the window now.
    pub held: u64,
    /// Bytes written to the pipe.
    pub written: u64,
    /// Blocks refused because they did not fit the window (asked again).
    pub refused: u64,
}

impl StreamStatus {
    fn words(self) -> [(usize, u64); 4] {
        use offsets::STREAM;
        [
            (STREAM, self.window),
            (STREAM + 1, self.held),
            (STREAM + 2, self.written),
            (STREAM + 3, self.refused),
        ]
    }

    fn from_page(w: &[u64; WORDS]) -> StreamStatus {
        use offsets::STREAM;
        StreamStatus {
            window: w[STREAM],
            held: w[STREAM + 1],
            written: w[STREAM + 2],
            refused: w[STREAM + 3],
        }
    }
}

/// Signed-session words of the trust region (words 513..527; word 512,
/// the page owner, belongs to the local hardening).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TrustStatus {
    /// `TRUST_*` bits.
    pub flags: u64,
    /// Chunks of the image (from the verified manifest).
    pub chunk_count: u64,
    /// Chunks whose hash verified.
    pub chunks_verified: u64,
    /// Blocks written then discarded because their chunk failed its hash.
    pub rejected_blocks: u64,
    /// Pages of chunk hashes verified against the signed root.
    pub pages: u64,
    /// When the manifest was signed, seconds since the Unix epoch.
    pub issued_at: u64,
    /// Public key that signed the manifest.
    pub signer: [u8; 32],
}

/// Trust flag: the receiver requires a signed manifest (`--trust`).
pub const TRUST_REQUIRED: u64 = 1;
/// Trust flag: a manifest verified against a trusted key.
pub const TRUST_MANIFEST: u64 = 2;
/// Trust flag: SUCCESS came from the last chunk verifying, no read-back.
pub const TRUST_NO_READ_BACK: u64 = 4;

impl TrustStatus {
    fn words(self) -> impl Iterator<Item = (usize, u64)> {
        let base = offsets::TRUST + 1;
        [
            self.flags,
            self.chunk_count,
            self.chunks_verified,
            self.rejected_blocks,
            self.pages,
            self.issued_at,
        ]
        .into_iter()
        .chain((0..4).map(move |i| {
            u64::from_le_bytes(self.signer[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
        }))
        .enumerate()
        .map(move |(i, v)| (base + i, v))
    }

    fn from_page(w: &[u64; WORDS]) -> TrustStatus {
        let t = &w[offsets::TRUST + 1..][..10];
        let mut signer = [0u8; 32];
        signer.copy_from_slice(&bytes_of(&t[6..10]));
        TrustStatus {
            flags: t[0],
            chunk_count: t[1],
            chunks_verified: t[2],
            rejected_blocks: t[3],
            pages: t[4],
            issued_at: t[5],
            signer,
        }
    }
}

/// Sparse images (region [`offsets::SPARSE`]): the sender's runs of zero
/// blocks, made to read as zeros here without being sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SparseStatus {
    /// Bytes of those runs (also counted in `bytes_done`); after a
    /// resume also the runs the earlier run made, once the sender names
    /// them again (they then leave `resumed_blocks`).
    pub skipped_bytes: u64,
    /// Blocks of those runs (also counted in `blocks_done`).
    pub skipped_blocks: u64,
    /// How they were made to read as zeros.
    pub zero_method: ZeroMethod,
}

impl SparseStatus {
    fn words(self) -> [(usize, u64); 3] {
        use offsets::*;
        [
            (SKIPPED_BYTES, self.skipped_bytes),
            (SKIPPED_BLOCKS, self.skipped_blocks),
            (ZERO_METHOD, self.zero_method as u64),
        ]
    }

    fn from_page(w: &[u64; WORDS]) -> SparseStatus {
        use offsets::*;
        SparseStatus {
            skipped_bytes: w[SKIPPED_BYTES],
            skipped_blocks: w[SKIPPED_BLOCKS],
            zero_method: ZeroMethod::from_u64(w[ZERO_METHOD]),
        }
    }
}

/// Everything on the page, as plain values.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// Pid of the writing process.
    pub writer_pid: u64,
    /// Owner of the page file (as read: `fstat`; as written: the writer's
    /// effective uid, also in word `OWNER_UID`).
    pub owner_uid: u32,
    /// Last update by the writer, ns since the Unix epoch.
    pub heartbeat_ns: u64,
    /// Session state.
    pub state: State,
    /// Error code (meaningful in FAILURE).
    pub error: ErrorCode,
    /// Data path.
    pub mode: PathMode,
    /// Session id from the sender (0 until known).
    pub session_id: u64,
    /// Block size (0 until known).
    pub block_size: u64,
    /// Number of blocks (0 until known).
    pub block_count: u64,
    /// Image size (0 until known).
    pub total_bytes: u64,
    /// Blocks written.
    pub blocks_done: u64,
    /// Bytes written.
    pub bytes_done: u64,
    /// Valid packets of the session received.
    pub packets: u64,
    /// Session start, ns since the Unix epoch.
    pub start_ns: u64,
    /// Session end (0 while running), ns since the Unix epoch.
    pub end_ns: u64,
    /// Goodput over the last update interval, bytes/s.
    pub rate_bps: u64,
    /// Goodput since the first block, bytes/s.
    pub avg_rate_bps: u64,
    /// End-of-pass packets seen (distinct passes).
    pub passes_seen: u64,
    /// Blocks missing when the first pass ended (loss before repair).
    pub first_pass_missing: u64,
    /// Blocks rebuilt from FEC repair symbols.
    pub fec_recovered: u64,
    /// Repair requests sent to the sender: NACKs and parity requests.
    pub nacks_sent: u64,
    /// Blocks taken from the resume file of an earlier run, less those in
    /// the sender's zero runs (counted in `sparse.skipped_blocks`).
    pub resumed_blocks: u64,
    /// Sparse images: the zero runs skipped.
    pub sparse: SparseStatus,
    /// FLAG_* bits.
    pub flags: u64,
    /// Sender's SHA-256 (valid with FLAG_DIGEST).
    pub digest: [u8; 32],
    /// Drops by [`DropReason`] index.
    pub drops: [u64; DropReason::COUNT],
    /// Session name.
    pub name: String,
    /// Multicast group and port.
    pub group: String,
    /// Target path.
    pub target: String,
    /// Human-readable message (the error, on failure).
    pub message: String,
    /// Per-worker counters.
    pub workers: Vec<WorkerStatus>,
    /// Data-path diagnostics.
    pub diag: DiagStatus,
    /// Bytes by multicast and by HTTP; the HTTP source.
    pub http: HttpStatus,
    /// Signed session state.
    pub trust: TrustStatus,
    /// The staging writer.
    pub storage: StorageStatus,
    /// Output stream (`--out -`).
    pub stream: StreamStatus,
    /// Who writes the page.
    pub role: Role,
    /// A sender's view of its receivers (zero on a receiver's page).
    pub sender: SenderStatus,
}

impl Snapshot {
    /// Total drops, all reasons.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }

    /// Drops other than duplicates: malformed, foreign or out-of-range
    /// packets. Duplicates are expected with several passes, repair rounds
    /// or a resumed session, and are not a sign of trouble.
    pub fn rejected(&self) -> u64 {
        self.total_drops() - self.drops_for(DropReason::Duplicate)
    }

    /// The sender's digest once known: its name (`sha256`, or `root`
    /// with [`FLAG_ROOT`](super::FLAG_ROOT): BLAKE3 of a signed image's
    /// chunk hashes) and its bytes.
    pub fn image_digest(&self) -> Option<(&'static str, &[u8; 32])> {
        if self.flags & super::FLAG_DIGEST == 0 {
            return None;
        }
        let name = if self.flags & super::FLAG_ROOT != 0 {
            "root"
        } else {
            "sha256"
        };
        Some((name, &self.digest))
    }

    /// Drops for one reason.
    pub fn drops_for(&self, r: DropReason) -> u64 {
        self.drops[r as usize]
    }

    /// Whether the page belongs to neither root nor this process's user:
    /// another local user wrote it, and all of it may be made up.
    pub fn foreign_owner(&self) -> bool {
        self.owner_uid != 0 && self.owner_uid != safe_fs::euid()
    }

    /// Whether a live process still writes the page: its writer runs and
    /// the session is not over. Such a page is not taken over.
    pub(super) fn held(&self) -> bool {
        !self.state.is_final() && writer_alive(self.writer_pid, self.heartbeat_ns)
    }

    /// Whether the writer process is gone or has not updated the page for
    /// `max_age` while the session was not final.
    pub fn is_stale(&self, max_age: Duration) -> bool {
        if self.state.is_final() {
            return false;
        }
        !writer_alive(self.writer_pid, self.heartbeat_ns)
            || now_ns().saturating_sub(self.heartbeat_ns) > max_age.as_nanos() as u64
    }

    pub(super) fn to_words(&self) -> Vec<(usize, u64)> {
        use offsets::*;
        let mut w = vec![
            (WRITER_PID, self.writer_pid),
            (HEARTBEAT_NS, self.heartbeat_ns),
            (STATE, self.state as u64),
            (ERROR_CODE, self.error as u64),
            (MODE, self.mode as u64),
            (SESSION_ID, self.session_id),
            (BLOCK_SIZE, self.block_size),
            (BLOCK_COUNT, self.block_count),
            (TOTAL_BYTES, self.total_bytes),
            (BLOCKS_DONE, self.blocks_done),
            (BYTES_DONE, self.bytes_done),
            (PACKETS, self.packets),
            (START_NS, self.start_ns),
            (END_NS, self.end_ns),
            (RATE_BPS, self.rate_bps),
            (AVG_RATE_BPS, self.avg_rate_bps),
            (PASSES_SEEN, self.passes_seen),
            (FIRST_PASS_MISSING, self.first_pass_missing),
            (FEC_RECOVERED, self.fec_recovered),
            (NACKS_SENT, self.nacks_sent),
            (RESUMED_BLOCKS, self.resumed_blocks),
            (WORKER_COUNT, self.workers.len().min(MAX_WORKERS) as u64),
            (FLAGS, self.flags),
        ];
        w.extend(self.digest.chunks_exact(8).enumerate().map(|(i, c)| {
            (
                DIGEST + i,
                u64::from_le_bytes(c.try_into().expect("8 bytes")),
            )
        }));
        w.extend((0..DROP_SLOTS).map(|i| (DROPS + i, self.drops.get(i).copied().unwrap_or(0))));
        push_bytes(&mut w, NAME, self.name.as_bytes(), NAME_LEN);
        push_bytes(&mut w, GROUP, self.group.as_bytes(), NAME_LEN);
        push_bytes(&mut w, TARGET, self.target.as_bytes(), TEXT_LEN);
        push_bytes(&mut w, MESSAGE, self.message.as_bytes(), TEXT_LEN);
        for (i, ws) in self.workers.iter().take(MAX_WORKERS).enumerate() {
            w.extend(ws.words(i));
        }
        w.extend(self.diag.words());
        w.extend(self.http.words());
        w.extend(self.trust.words());
        w.extend(
            self.storage
                .words()
                .into_iter()
                .enumerate()
                .map(|(i, v)| (STORAGE + i, v)),
        );
        w.extend(self.sparse.words());
        w.extend(self.stream.words());
        w.push((ROLE, self.role as u64));
        if self.role == Role::Sender {
            w.extend(self.sender.words());
        }
        w
    }

    pub(crate) fn from_words(w: &[u64; WORDS]) -> Result<Snapshot> {
        use offsets::*;
        let bad = |what: &str| {
            Error::new(
                ErrorCode::InvalidArgument,
                format!("not a status page: {what}"),
            )
        };
        if w[MAGIC] != PAGE_MAGIC {
            return Err(bad("bad magic"));
        }
        if w[VERSION] != LAYOUT_VERSION {
            return Err(bad(&format!(
                "layout version {} (this reader knows {LAYOUT_VERSION})",
                w[VERSION]
            )));
        }
        if w[PAGE_SIZE] != super::layout::PAGE_SIZE as u64 {
            return Err(bad(&format!("page size {}", w[PAGE_SIZE])));
        }
        let workers = (w[WORKER_COUNT] as usize).min(MAX_WORKERS);
        let mut digest = [0u8; 32];
        digest.copy_from_slice(&bytes_of(&w[DIGEST..DIGEST + 4]));
        let mut drops = [0u64; DropReason::COUNT];
        drops.copy_from_slice(&w[DROPS..DROPS + DropReason::COUNT]);
        Ok(Snapshot {
            writer_pid: w[WRITER_PID],
            owner_uid: w[OWNER_UID] as u32,
            heartbeat_ns: w[HEARTBEAT_NS],
            state: State::from_u64(w[STATE]).ok_or_else(|| bad("unknown state"))?,
            // A code this reader does not know (a newer writer's, or a
            // forged page's) reads as `internal` (docs/status-page.md, JSON).
            error: u32::try_from(w[ERROR_CODE])
                .ok()
                .and_then(ErrorCode::from_u32)
                .unwrap_or(ErrorCode::Internal),
            mode: PathMode::from_u64(w[MODE]),
            session_id: w[SESSION_ID],
            block_size: w[BLOCK_SIZE],
            block_count: w[BLOCK_COUNT],
            total_bytes: w[TOTAL_BYTES],
            blocks_done: w[BLOCKS_DONE],
            bytes_done: w[BYTES_DONE],
            packets: w[PACKETS],
            start_ns: w[START_NS],
            end_ns: w[END_NS],
            rate_bps: w[RATE_BPS],
            avg_rate_bps: w[AVG_RATE_BPS],
            passes_seen: w[PASSES_SEEN],
            first_pass_missing: w[FIRST_PASS_MISSING],
            fec_recovered: w[FEC_RECOVERED],
            nacks_sent: w[NACKS_SENT],
            resumed_blocks: w[RESUMED_BLOCKS],
            sparse: SparseStatus::from_page(w),
            flags: w[FLAGS],
            digest,
            drops,
            name: text_of(&w[NAME..NAME + NAME_LEN / 8]),
            group: text_of(&w[GROUP..GROUP + NAME_LEN / 8]),
            target: text_of(&w[TARGET..TARGET + TEXT_LEN / 8]),
            message: text_of(&w[MESSAGE..MESSAGE + TEXT_LEN / 8]),
            workers: (0..workers)
                .map(|i| WorkerStatus::from_page(w, i))
                .collect(),
            diag: DiagStatus::from_page(w),
            http: HttpStatus::from_page(w),
            trust: TrustStatus::from_page(w),
            storage: StorageStatus::from_words(&w[STORAGE..STORAGE + storage::USED]),
            stream: StreamStatus::from_page(w),
            role: Role::from_u64(w[ROLE]),
            sender: match Role::from_u64(w[ROLE]) {
                Role::Sender => SenderStatus::from_page(w),
                Role::Receiver => SenderStatus::default(),
            },
        })
    }
}

/// Put text `bytes` (cut to `cap - 1`, NUL padded) into words starting at `first`.
fn push_bytes(out: &mut Vec<(usize, u64)>, first: usize, bytes: &[u8], cap: usize) {
    let mut buf = vec![0u8; cap];
    let n = bytes.len().min(cap - 1);
    buf[..n].copy_from_slice(&bytes[..n]);
    out.extend(buf.chunks_exact(8).enumerate().map(|(i, c)| {
        (
            first + i,
            u64::from_le_bytes(c.try_into().expect("8 bytes")),
        )
    }));
}

fn bytes_of(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn text_of(words: &[u64]) -> String {
    let b = bytes_of(words);
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}
