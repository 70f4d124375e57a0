//! The status page: an 8192-byte file in shared memory (`/run/xdpcast` by
//! default) that any process may map read-only to follow a session.
//!
//! The page is an array of 1024 little-endian `u64` words at fixed offsets
//! (docs/status-page.md and `receiver/include/xdpcast_status.h` give every
//! one). One writer per page updates it under a sequence lock: it makes
//! `seq` odd, writes the words, then makes `seq` even again. A reader copies
//! the words and retries while `seq` was odd or changed; it never blocks the
//! writer. `writer_pid` and `heartbeat_ns` tell a live page from a stale one.
//!
//! Pages live in a directory only their writer can write ([`PrivateDir`]);
//! a page is created with `O_EXCL | O_NOFOLLOW`, a page of a live writer is
//! never taken over, and a stale one is removed and created anew. Readers
//! report who owns the file they read (`owner_uid`, from `fstat`), so a page
//! that neither root nor the reader wrote is flagged (docs/security.md).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use memmap2::{MmapOptions, MmapRaw};

use crate::error::{Error, ErrorCode, Result};
use crate::net::rings::XskStats;
use crate::proto::wire::DropReason;
use crate::safe_fs::{self, PrivateDir};

/// `"XDPCSTAT"` read as a little-endian u64.
pub const PAGE_MAGIC: u64 = u64::from_le_bytes(*b"XDPCSTAT");
/// Version of the layout below; bumped on any incompatible change.
pub const LAYOUT_VERSION: u64 = 2;
/// Size of the page in bytes.
pub const PAGE_SIZE: usize = 8192;
const WORDS: usize = PAGE_SIZE / 8;
/// Worker slots on the page.
pub const MAX_WORKERS: usize = 32;
/// Drop-reason counters on the page (the first `DropReason::COUNT` are used).
pub const DROP_SLOTS: usize = 16;
/// Bytes of each text field.
pub const NAME_LEN: usize = 64;
/// Bytes of the target path and message fields.
pub const TEXT_LEN: usize = 256;

/// Word index of each field (byte offset = index * 8).
#[allow(missing_docs)]
pub mod offsets {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 1;
    pub const PAGE_SIZE: usize = 2;
    pub const SEQ: usize = 3;
    pub const WRITER_PID: usize = 4;
    pub const HEARTBEAT_NS: usize = 5;
    pub const STATE: usize = 6;
    pub const ERROR_CODE: usize = 7;
    pub const MODE: usize = 8;
    pub const SESSION_ID: usize = 9;
    pub const BLOCK_SIZE: usize = 10;
    pub const BLOCK_COUNT: usize = 11;
    pub const TOTAL_BYTES: usize = 12;
    pub const BLOCKS_DONE: usize = 13;
    pub const BYTES_DONE: usize = 14;
    pub const PACKETS: usize = 15;
    pub const START_NS: usize = 16;
    pub const END_NS: usize = 17;
    pub const RATE_BPS: usize = 18;
    pub const AVG_RATE_BPS: usize = 19;
    pub const PASSES_SEEN: usize = 20;
    pub const FIRST_PASS_MISSING: usize = 21;
    pub const WORKER_COUNT: usize = 22;
    pub const FLAGS: usize = 23;
    pub const DIGEST: usize = 24; // 4 words
    pub const FEC_RECOVERED: usize = 28;
    pub const NACKS_SENT: usize = 29;
    pub const RESUMED_BLOCKS: usize = 30;
    pub const DROPS: usize = 32; // 16 words
    pub const NAME: usize = 48; // 8 words
    pub const GROUP: usize = 56; // 8 words
    pub const TARGET: usize = 64; // 32 words
    pub const MESSAGE: usize = 96; // 32 words
    pub const WORKERS: usize = 128; // 32 slots of WORKER_WORDS words
    pub const WORKER_WORDS: usize = 8;
    pub const WORKER_LATENCY: usize = 384; // 32 slots of LATENCY_WORDS words
    pub const LATENCY_WORDS: usize = 3;
    /// Sum of each worker's batch wall times, ns: one word per worker slot.
    pub const WORKER_BATCH_SUM: usize = 480;
    // Layout 2 added the second 4 KiB: one 16-word region per subsystem,
    // each written only by that subsystem, and a per-worker extension.
    /// Trust: page owner, manifest and authentication (16 words).
    pub const TRUST: usize = 512;
    /// Effective uid of the writer (first word of the trust region); readers
    /// go by the file's owner, which the writer cannot choose.
    pub const OWNER_UID: usize = TRUST;
    /// Storage writer and buffer (16 words).
    pub const STORAGE: usize = 528;
    /// Repair, suppression and progress reports (16 words): the page's
    /// role, and on a sender's page its view of the receivers.
    pub const REPAIR: usize = 544;
    /// Who writes the page: a `Role` (0 for a receiver's page).
    pub const ROLE: usize = REPAIR;
    /// Words of a sender's page, relative to [`REPAIR`] (after the role).
    pub mod sender {
        pub const PHASE: usize = 1;
        pub const RECEIVERS_KNOWN: usize = 2;
        pub const RECEIVING: usize = 3;
        pub const FINISHED: usize = 4;
        pub const FAILED: usize = 5;
        pub const VANISHED: usize = 6;
        pub const REPAIR_ROUNDS: usize = 7;
        pub const REPAIR_PACKETS: usize = 8;
        pub const REPAIR_BYTES: usize = 9;
        pub const NACKS: usize = 10;
        pub const PARITY_REQUESTS: usize = 11;
        pub const REPORTS: usize = 12;
        pub const CONFIRMS: usize = 13;
        pub const IGNORED: usize = 14;
        pub const BYTES_SENT: usize = 15;
    }
    /// Output stream (16 words).
    pub const STREAM: usize = 560;
    /// Sparse images: runs skipped (16 words).
    pub const SPARSE: usize = 576;
    /// Bytes of the sender's zero runs made to read as zeros, never sent.
    pub const SKIPPED_BYTES: usize = SPARSE;
    /// Blocks of those runs.
    pub const SKIPPED_BLOCKS: usize = SPARSE + 1;
    /// How they were zeroed: a `ZeroMethod`.
    pub const ZERO_METHOD: usize = SPARSE + 2;
    /// Diagnostics of the data path (16 words).
    pub const DIAG: usize = 592;
    /// The HTTP source, `receive --http` (16 words).
    pub const HTTP: usize = 608;
    /// Words of each region above.
    pub const REGION_WORDS: usize = 16;
    /// Per-worker extension: 32 slots of WORKER_EXT_WORDS words.
    pub const WORKER_EXT: usize = 768;
    pub const WORKER_EXT_WORDS: usize = 8;
    /// Words of the storage region, relative to [`STORAGE`].
    pub mod storage {
        pub const BUFFER_BYTES: usize = 0;
        pub const BUFFER_USED: usize = 1;
        pub const BUFFER_PEAK: usize = 2;
        pub const BYTES_STORED: usize = 3;
        pub const CHUNKS_FULL: usize = 4;
        pub const CHUNKS_PARTIAL: usize = 5;
        pub const OVERFLOW_BLOCKS: usize = 6;
        pub const WRITE_MAX_NS: usize = 7;
        pub const DIRECT: usize = 8;
        pub const HANDED_OFF: usize = 9;
        pub const LANE_FULL: usize = 10;
        pub const USED: usize = 11;
    }
    const _: () = assert!(
        WORKERS + super::MAX_WORKERS * WORKER_WORDS <= WORKER_LATENCY
            && WORKER_LATENCY + super::MAX_WORKERS * LATENCY_WORDS <= WORKER_BATCH_SUM
            && WORKER_BATCH_SUM + super::MAX_WORKERS <= TRUST
            && DIAG + REGION_WORDS <= HTTP
            && HTTP + REGION_WORDS <= WORKER_EXT
            && WORKER_EXT + super::MAX_WORKERS * WORKER_EXT_WORDS <= super::WORDS
    );
}

/// Flag bit: the image geometry is known.
pub const FLAG_GEOMETRY: u64 = 1;
/// Flag bit: the sender's digest is known.
pub const FLAG_DIGEST: u64 = 2;

/// Session state as published on the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u64)]
pub enum State {
    /// Initialized, not started.
    #[default]
    Initialized = 0,
    /// Receiving.
    InProgress = 1,
    /// Image complete, digest verified, flushed.
    Success = 2,
    /// Ended with the error code on the page.
    Failure = 3,
}

impl State {
    fn from_u64(v: u64) -> Option<State> {
        [
            State::Initialized,
            State::InProgress,
            State::Success,
            State::Failure,
        ]
        .get(v as usize)
        .copied()
    }

    /// Upper-case name, as Windows Deployment Services spells it.
    pub fn name(self) -> &'static str {
        match self {
            State::Initialized => "INITIALIZED",
            State::InProgress => "IN_PROGRESS",
            State::Success => "SUCCESS",
            State::Failure => "FAILURE",
        }
    }

    /// True for SUCCESS and FAILURE.
    pub fn is_final(self) -> bool {
        matches!(self, State::Success | State::Failure)
    }
}

/// Which data path a session uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u64)]
pub enum PathMode {
    /// Not chosen yet.
    #[default]
    Unknown = 0,
    /// Plain UDP sockets with recvmmsg.
    Socket = 1,
    /// XDP in native (driver) mode with AF_XDP sockets.
    XdpNative = 2,
    /// XDP in generic (skb) mode with AF_XDP sockets.
    XdpGeneric = 3,
}

impl PathMode {
    fn from_u64(v: u64) -> PathMode {
        match v {
            1 => PathMode::Socket,
            2 => PathMode::XdpNative,
            3 => PathMode::XdpGeneric,
            _ => PathMode::Unknown,
        }
    }

    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            PathMode::Unknown => "unknown",
            PathMode::Socket => "socket",
            PathMode::XdpNative => "xdp-native",
            PathMode::XdpGeneric => "xdp-generic",
        }
    }
}

/// How the receiver made the sender's zero runs read as zeros
/// (`crate::store::target::Target::zero`). The discriminant is published on
/// the status page and must not change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum ZeroMethod {
    /// Nothing zeroed yet.
    #[default]
    None = 0,
    /// `fallocate(FALLOC_FL_PUNCH_HOLE)`: the file's blocks are freed.
    PunchHole = 1,
    /// `fallocate(FALLOC_FL_ZERO_RANGE)`: the filesystem cannot punch holes.
    ZeroRange = 2,
    /// `ioctl(BLKZEROOUT)` on a block device.
    ZeroOut = 3,
    /// Zeros written like data (no faster way accepted by the target).
    Written = 4,
}

impl ZeroMethod {
    /// Stable name used in CLI output, JSON and metrics.
    pub fn name(self) -> &'static str {
        match self {
            ZeroMethod::None => "none",
            ZeroMethod::PunchHole => "punch_hole",
            ZeroMethod::ZeroRange => "zero_range",
            ZeroMethod::ZeroOut => "blkzeroout",
            ZeroMethod::Written => "written",
        }
    }

    /// The method with discriminant `v` (None for unknown values).
    pub fn from_u64(v: u64) -> ZeroMethod {
        [
            ZeroMethod::PunchHole,
            ZeroMethod::ZeroRange,
            ZeroMethod::ZeroOut,
            ZeroMethod::Written,
        ]
        .into_iter()
        .find(|m| *m as u64 == v)
        .unwrap_or(ZeroMethod::None)
    }
}

/// Who writes a page (word [`offsets::ROLE`]). The discriminant is
/// published on the page and must not change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u64)]
pub enum Role {
    /// A receiver (`xdpcast receive`, the session API): every page before
    /// senders had pages reads as one.
    #[default]
    Receiver = 0,
    /// `xdpcast send`.
    Sender = 1,
}

impl Role {
    fn from_u64(v: u64) -> Role {
        if v == Role::Sender as u64 {
            Role::Sender
        } else {
            Role::Receiver
        }
    }

    /// Lower-case name, for JSON and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Role::Receiver => "receiver",
            Role::Sender => "sender",
        }
    }
}

/// What a sender is doing. The discriminant is published on the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[repr(u64)]
pub enum SendPhase {
    /// Announcing, waiting for `--min-receivers`.
    #[default]
    Waiting = 0,
    /// Sending a full pass over the image.
    Pass = 1,
    /// Repair rounds: collecting requests, resending.
    Repair = 2,
    /// After the final end: waiting for receivers still at work.
    Linger = 3,
    /// Finished sending.
    Done = 4,
}

impl SendPhase {
    const ALL: [SendPhase; 5] = [
        SendPhase::Waiting,
        SendPhase::Pass,
        SendPhase::Repair,
        SendPhase::Linger,
        SendPhase::Done,
    ];

    fn from_u64(v: u64) -> SendPhase {
        Self::ALL
            .get(v as usize)
            .copied()
            .unwrap_or(SendPhase::Waiting)
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            SendPhase::Waiting => "waiting",
            SendPhase::Pass => "pass",
            SendPhase::Repair => "repair",
            SendPhase::Linger => "linger",
            SendPhase::Done => "done",
        }
    }
}

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

/// The staging writer between the workers and the target (words 528-536);
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
}

impl DiagStatus {
    fn words(self) -> [(usize, u64); 2] {
        use offsets::DIAG;
        [
            (DIAG, self.unserved_frames),
            (DIAG + 1, self.unserved_queues),
        ]
    }

    fn from_page(w: &[u64; WORDS]) -> DiagStatus {
        use offsets::DIAG;
        DiagStatus {
            unserved_frames: w[DIAG],
            unserved_queues: w[DIAG + 1],
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
    /// NACK packets sent to the sender.
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
    fn held(&self) -> bool {
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

    fn to_words(&self) -> Vec<(usize, u64)> {
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

    fn from_words(w: &[u64; WORDS]) -> Result<Snapshot> {
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
            error: ErrorCode::from_u32(w[ERROR_CODE] as u32).unwrap_or(ErrorCode::Internal),
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

/// Nanoseconds since the Unix epoch.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn pid_alive(pid: u64) -> bool {
    pid != 0 && Path::new(&format!("/proc/{pid}")).exists()
}

/// How much later than a page's last heartbeat its writer may seem to have
/// started: the boot time the kernel reports has whole seconds.
const START_SLACK_NS: u64 = 2_000_000_000;

/// Whether process `pid` is alive and can be the writer whose last
/// heartbeat (wall clock) was `heartbeat_ns`. A process that started after
/// that heartbeat cannot: it reuses the pid of a writer that died (seen
/// when a killed sender's page outlived it and its pid came round again;
/// a new writer then refused the page as held). Pid and start time
/// together name a process, as in Aeron's CnC file. Where the start time
/// cannot be read (or the page has no heartbeat), the pid alone decides.
fn writer_alive(pid: u64, heartbeat_ns: u64) -> bool {
    if !pid_alive(pid) {
        return false;
    }
    match (heartbeat_ns, process_start_ns(pid)) {
        (1.., Some(start)) => start <= heartbeat_ns.saturating_add(START_SLACK_NS),
        _ => true,
    }
}

/// When process `pid` started, wall clock ns: the boot time (`btime` in
/// /proc/stat) plus its start in clock ticks after boot (field 22 of
/// /proc/PID/stat, proc(5)).
fn process_start_ns(pid: u64) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces and parentheses:
    // the fields after it start after the last ')', with field 3.
    let after = stat.get(stat.rfind(')')? + 1..)?;
    let ticks: u64 = after.split_whitespace().nth(22 - 3)?.parse().ok()?;
    let btime: u64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())?;
    // SAFETY: sysconf has no memory arguments.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .ok()
        .filter(|&h| h > 0)?;
    Some(btime * 1_000_000_000 + ticks * (1_000_000_000 / hz))
}

/// Where root's receivers keep their pages unless `$XDPCAST_STATUS_DIR`
/// says otherwise: under `/run`, where no other user can create it first.
pub const DEFAULT_DIR: &str = "/run/xdpcast";

/// Directory holding status pages: `$XDPCAST_STATUS_DIR` or
/// [`DEFAULT_DIR`]. Readers look there; so do writers running as root.
pub fn status_dir() -> PathBuf {
    std::env::var_os("XDPCAST_STATUS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR))
}

/// Directory a writer puts its pages in: [`status_dir`], except for a user
/// other than root without `$XDPCAST_STATUS_DIR`, who cannot create
/// [`DEFAULT_DIR`] and gets `/dev/shm/xdpcast-UID` (readers then need
/// `XDPCAST_STATUS_DIR` set to it).
fn writer_dir() -> PathBuf {
    let uid = safe_fs::euid();
    if uid != 0 && std::env::var_os("XDPCAST_STATUS_DIR").is_none() {
        return PathBuf::from(format!("/dev/shm/xdpcast-{uid}"));
    }
    status_dir()
}

/// Path of the page a writer creates for session `name`.
pub fn writer_page_path(name: &str) -> Result<PathBuf> {
    let p = page_path(name)?;
    Ok(writer_dir().join(p.file_name().expect("a page has a file name")))
}

/// File name prefix of status pages.
const FILE_PREFIX: &str = "xdpcast.";

/// Path of the page of session `name`.
pub fn page_path(name: &str) -> Result<PathBuf> {
    let ok = !name.is_empty()
        && name.len() < NAME_LEN
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c));
    if !ok {
        return Err(Error::new(
            ErrorCode::InvalidArgument,
            format!("session name {name:?}: use 1-63 characters of A-Z a-z 0-9 . _ -"),
        ));
    }
    Ok(status_dir().join(format!("{FILE_PREFIX}{name}")))
}

/// Names of all sessions with a page in the status directory, sorted.
pub fn list_sessions() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(status_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix(FILE_PREFIX))
                .map(str::to_owned)
        })
        .collect();
    names.sort();
    names
}

struct Mapped {
    map: MmapRaw,
}

impl Mapped {
    fn map(file: &File, path: &Path, writable: bool) -> Result<Mapped> {
        let len = file
            .metadata()
            .map_err(|e| Error::new(ErrorCode::TargetIo, format!("{}: {e}", path.display())))?
            .len();
        if len < PAGE_SIZE as u64 {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                format!("{}: not a status page ({len} bytes)", path.display()),
            ));
        }
        // SAFETY: the file is at least PAGE_SIZE bytes; the mapping is only
        // accessed as atomics (see `words`), so concurrent writers in other
        // processes cannot cause undefined behaviour in this one.
        let opts = {
            let mut o = MmapOptions::new();
            o.len(PAGE_SIZE);
            o
        };
        let map = if writable {
            opts.map_raw(file)
        } else {
            opts.map_raw_read_only(file)
        }
        .map_err(|e| Error::new(ErrorCode::TargetIo, format!("map {}: {e}", path.display())))?;
        Ok(Mapped { map })
    }

    fn words(&self) -> &[AtomicU64; WORDS] {
        // SAFETY: the mapping is PAGE_SIZE bytes and page aligned, so it is
        // large and aligned enough for 1024 AtomicU64 (same size and alignment
        // as u64); it lives as long as `self`; all access, here and in the
        // other processes following the documented protocol, is atomic.
        unsafe { &*(self.map.as_ptr() as *const [AtomicU64; WORDS]) }
    }
}

/// The writing side of a page. Exactly one per session.
pub struct StatusWriter {
    page: Mapped,
    path: PathBuf,
    /// The page's directory and the page file, to remove exactly this file.
    dir: PrivateDir,
    file: File,
}

impl StatusWriter {
    /// Create the page at `path`, readable by everyone, in a directory
    /// only this user may write (created if missing, see [`PrivateDir`]).
    /// A page already there is replaced if it is a stale or finished page
    /// of this user; a page whose writer still runs, a file of another
    /// user or a symbolic link is refused.
    pub fn create(path: &Path) -> Result<StatusWriter> {
        let err = |e: std::io::Error| {
            Error::new(
                ErrorCode::InvalidArgument,
                format!("status page {}: {e}", path.display()),
            )
        };
        let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str()))
        else {
            return Err(err(std::io::ErrorKind::InvalidInput.into()));
        };
        let dir = PrivateDir::open(dir).map_err(err)?;
        let file = match dir.create(name, 0o644) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Self::check_replaceable(&dir, name, path)?;
                dir.remove(name).map_err(err)?;
                // Another writer may have got there in between: refused too.
                dir.create(name, 0o644).map_err(err)?
            }
            r => r.map_err(err)?,
        };
        file.set_len(PAGE_SIZE as u64).map_err(err)?;
        let page = Mapped::map(&file, path, true)?;
        let w = page.words();
        for word in w.iter() {
            word.store(0, Ordering::Relaxed);
        }
        w[offsets::VERSION].store(LAYOUT_VERSION, Ordering::Relaxed);
        w[offsets::PAGE_SIZE].store(PAGE_SIZE as u64, Ordering::Relaxed);
        w[offsets::OWNER_UID].store(u64::from(safe_fs::euid()), Ordering::Relaxed);
        w[offsets::MAGIC].store(PAGE_MAGIC, Ordering::Release);
        Ok(StatusWriter {
            page,
            path: path.to_path_buf(),
            dir,
            file,
        })
    }

    /// Whether the file `name` found in the page directory may be replaced.
    fn check_replaceable(dir: &PrivateDir, name: &str, path: &Path) -> Result<()> {
        let refuse = |why: String| {
            Error::new(
                ErrorCode::InvalidArgument,
                format!("status page {}: {why}; not taken over", path.display()),
            )
        };
        let f = dir
            .open_file(name)
            .map_err(|e| refuse(format!("{e} (a symbolic link?)")))?;
        let m = f.metadata().map_err(|e| refuse(e.to_string()))?;
        if !m.is_file() || m.uid() != safe_fs::euid() {
            return Err(refuse(format!(
                "not a page file of this user (uid {}, {:?})",
                m.uid(),
                m.file_type()
            )));
        }
        // Not a page at all (or torn beyond reading): nobody's, replaced.
        let old = Mapped::map(&f, path, false).and_then(|p| {
            StatusReader {
                page: p,
                owner_uid: m.uid(),
            }
            .read()
        });
        if let Ok(s) = old {
            if s.held() {
                return Err(refuse(format!(
                    "session {} is {} in live receiver pid {} (xdpcast close --force removes its page)",
                    s.name,
                    s.state.name(),
                    s.writer_pid
                )));
            }
        }
        Ok(())
    }

    /// Path of the page.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Publish `snap` (writer pid and heartbeat are filled in here).
    pub fn publish(&self, snap: &Snapshot) {
        let w = self.page.words();
        let seq = &w[offsets::SEQ];
        seq.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::Release);
        for (i, v) in snap.to_words() {
            w[i].store(v, Ordering::Relaxed);
        }
        w[offsets::WRITER_PID].store(u64::from(std::process::id()), Ordering::Relaxed);
        w[offsets::HEARTBEAT_NS].store(now_ns(), Ordering::Relaxed);
        seq.fetch_add(1, Ordering::Release);
    }

    /// Remove the page (the session is closed), if it is still this
    /// writer's: a page created since under the same name stays.
    pub fn remove(&self) -> Result<()> {
        let name = self
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        self.dir.remove_if_same(name, &self.file).map_err(|e| {
            Error::new(
                ErrorCode::TargetIo,
                format!("remove {}: {e}", self.path.display()),
            )
        })
    }
}

/// How long a running session may go without a heartbeat before readers
/// call its page stale.
pub const STALE_AFTER: Duration = Duration::from_secs(5);

/// How long a reader retries a page whose writer seems stuck mid-update.
pub const STUCK_AFTER: Duration = Duration::from_millis(500);

/// The reading side: any process, no privileges beyond read access.
pub struct StatusReader {
    page: Mapped,
    /// Owner of the page file.
    owner_uid: u32,
}

impl StatusReader {
    /// Map the page at `path` read-only (not through a symbolic link).
    pub fn open(path: &Path) -> Result<StatusReader> {
        let err = |e: std::io::Error| {
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                ErrorCode::InvalidArgument
            } else {
                ErrorCode::TargetIo
            };
            Error::new(code, format!("status page {}: {e}", path.display()))
        };
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .map_err(err)?;
        let owner_uid = file.metadata().map_err(err)?.uid();
        Ok(StatusReader {
            page: Mapped::map(&file, path, false)?,
            owner_uid,
        })
    }

    /// The snapshot of `words`, with the owner of the file.
    fn snapshot(&self, words: &[u64; WORDS]) -> Result<Snapshot> {
        Ok(Snapshot {
            owner_uid: self.owner_uid,
            ..Snapshot::from_words(words)?
        })
    }

    /// Open the page of session `name`.
    pub fn open_session(name: &str) -> Result<StatusReader> {
        StatusReader::open(&page_path(name)?)
    }

    /// A consistent copy of the page (retries while the writer is mid-update).
    ///
    /// A writer killed in the middle of an update leaves `seq` odd for good:
    /// after [`STUCK_AFTER`] the reader returns the page as it is if the
    /// writer process is gone (the snapshot is then stale, possibly torn),
    /// and a `Timeout` error if it still runs.
    pub fn read(&self) -> Result<Snapshot> {
        let w = self.page.words();
        let mut copy = [0u64; WORDS];
        let start = std::time::Instant::now();
        loop {
            let s1 = w[offsets::SEQ].load(Ordering::Acquire);
            for (dst, src) in copy.iter_mut().zip(w.iter()) {
                *dst = src.load(Ordering::Relaxed);
            }
            fence(Ordering::Acquire);
            if s1 & 1 == 0 && w[offsets::SEQ].load(Ordering::Relaxed) == s1 {
                return self.snapshot(&copy);
            }
            if start.elapsed() >= STUCK_AFTER {
                let pid = copy[offsets::WRITER_PID];
                if !pid_alive(pid) {
                    return self.snapshot(&copy);
                }
                return Err(Error::new(
                    ErrorCode::Timeout,
                    format!(
                        "the writer (pid {pid}) has been updating the page for {STUCK_AFTER:?}"
                    ),
                ));
            }
            std::hint::spin_loop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp_page(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xdpcast-status-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    fn sample() -> Snapshot {
        let mut s = Snapshot {
            state: State::Failure,
            error: ErrorCode::DiskFull,
            mode: PathMode::XdpNative,
            session_id: 77,
            block_size: 1400,
            block_count: 10,
            total_bytes: 13_000,
            blocks_done: 9,
            bytes_done: 12_600,
            sparse: SparseStatus {
                skipped_bytes: 5_600,
                skipped_blocks: 4,
                zero_method: ZeroMethod::ZeroOut,
            },
            flags: FLAG_GEOMETRY | FLAG_DIGEST,
            digest: [0xAB; 32],
            name: "lab-1".into(),
            group: "239.1.2.3:5000".into(),
            target: "/tmp/x.img".into(),
            message: "x".repeat(400),
            workers: vec![
                WorkerStatus {
                    queue: 1,
                    cpu: 0,
                    packets: 5,
                    batch_ns: [900, 4_000, 31_000],
                    batch_sum_ns: 77_000,
                    kernel: XskStats {
                        rx_dropped: 7,
                        rx_invalid_descs: 8,
                        rx_ring_full: 9,
                        fill_ring_empty: 10,
                    },
                    gro_messages: 11,
                    ..Default::default()
                };
                2
            ],
            diag: DiagStatus {
                unserved_frames: 12,
                unserved_queues: 0b1010 | 1 << 63,
            },
            http: HttpStatus {
                state: 2,
                multicast_bytes: 13,
                http_bytes: 14,
                requests: 15,
                bad_chunks: 16,
                bad_replies: 17,
                refused: 18,
                busy: 19,
            },
            trust: TrustStatus {
                flags: TRUST_REQUIRED | TRUST_MANIFEST,
                chunk_count: 12,
                chunks_verified: 11,
                rejected_blocks: 256,
                pages: 1,
                issued_at: 1_800_000_000,
                signer: [0x5A; 32],
            },
            storage: StorageStatus {
                buffer_bytes: 256 << 20,
                buffer_used: 3 << 20,
                bytes_stored: 12345,
                direct: true,
                write_max_ns: 99,
                handed_off: 7,
                lane_full: 2,
                ..Default::default()
            },
            ..Default::default()
        };
        s.drops[DropReason::BadMagic as usize] = 3;
        s
    }

    #[test]
    fn publish_and_read_round_trip() {
        let p = tmp_page("rt");
        let w = StatusWriter::create(&p).unwrap();
        let want = sample();
        w.publish(&want);
        let got = StatusReader::open(&p).unwrap().read().unwrap();
        assert_eq!(got.writer_pid, u64::from(std::process::id()));
        assert!(got.heartbeat_ns > 0);
        assert_eq!(got.message.len(), TEXT_LEN - 1, "long text is cut");
        let got = Snapshot {
            writer_pid: 0,
            heartbeat_ns: 0,
            message: want.message.clone(),
            ..got
        };
        assert_eq!(got, want);
        assert_eq!(got.drops_for(DropReason::BadMagic), 3);
        assert_eq!(got.diag.queues().collect::<Vec<_>>(), vec![1, 3, 63]);
        assert!(
            !got.is_stale(Duration::from_secs(1)),
            "final pages are never stale"
        );
        let mode = std::fs::metadata(&p).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o644);
        w.remove().unwrap();
        assert!(!p.exists());
    }

    #[test]
    fn a_sender_page_round_trips() {
        let p = tmp_page("sender");
        let w = StatusWriter::create(&p).unwrap();
        let want = Snapshot {
            state: State::InProgress,
            role: Role::Sender,
            name: "send-lab".into(),
            sender: SenderStatus {
                phase: SendPhase::Repair,
                receivers_known: 24,
                receiving: 3,
                finished: 20,
                failed: 0,
                vanished: 1,
                repair_rounds: 2,
                repair_packets: 400,
                repair_bytes: 560_000,
                nacks: 1,
                parity_requests: 9,
                reports: 300,
                confirms: 8,
                ignored: 5,
                bytes_sent: 9_000_000,
            },
            ..Default::default()
        };
        w.publish(&want);
        let got = StatusReader::open(&p).unwrap().read().unwrap();
        assert_eq!((got.role, got.sender), (want.role, want.sender));
        // A receiver's page has no sender words, whatever the region holds.
        w.publish(&Snapshot {
            role: Role::Receiver,
            ..want
        });
        let got = StatusReader::open(&p).unwrap().read().unwrap();
        assert_eq!(got.role, Role::Receiver);
        assert_eq!(got.sender, SenderStatus::default());
        w.remove().unwrap();
    }

    #[test]
    fn readers_never_see_torn_pages() {
        let p = tmp_page("torn");
        let w = StatusWriter::create(&p).unwrap();
        w.publish(&Snapshot::default());
        let r = StatusReader::open(&p).unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                for i in 0..20_000u64 {
                    w.publish(&Snapshot {
                        blocks_done: i,
                        bytes_done: i * 1400,
                        packets: i * 2,
                        state: State::InProgress,
                        ..Default::default()
                    });
                }
                stop.store(true, Ordering::Relaxed);
            });
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) || reads == 0 {
                let s = r.read().unwrap();
                assert_eq!(s.bytes_done, s.blocks_done * 1400);
                assert_eq!(s.packets, s.blocks_done * 2);
                reads += 1;
            }
        });
    }

    #[test]
    fn rejects_foreign_files_and_bad_names() {
        let p = tmp_page("foreign");
        std::fs::write(&p, vec![1u8; PAGE_SIZE]).unwrap();
        let e = StatusReader::open(&p).unwrap().read().unwrap_err();
        assert!(e.message.contains("bad magic"));
        std::fs::write(&p, b"short").unwrap();
        assert!(StatusReader::open(&p).is_err());
        assert!(page_path("../etc").is_err());
        assert!(page_path("").is_err());
        assert!(page_path("lab-1.img_2").is_ok());
    }

    #[test]
    fn writer_killed_mid_update_does_not_hang_readers() {
        let p = tmp_page("killed");
        let w = StatusWriter::create(&p).unwrap();
        w.publish(&Snapshot {
            state: State::InProgress,
            ..Default::default()
        });
        // What a writer killed between the two `seq` increments leaves behind.
        let words = w.page.words();
        words[offsets::SEQ].fetch_add(1, Ordering::Relaxed);
        let r = StatusReader::open(&p).unwrap();
        let e = r.read().unwrap_err();
        assert_eq!(e.code, ErrorCode::Timeout, "live writer: {e}");
        words[offsets::WRITER_PID].store(u64::from(u32::MAX), Ordering::Relaxed);
        let s = r.read().unwrap();
        assert!(s.is_stale(Duration::from_secs(60)));
        w.remove().unwrap();
    }

    #[test]
    fn dead_writer_is_stale() {
        let s = Snapshot {
            state: State::InProgress,
            writer_pid: u64::from(u32::MAX),
            heartbeat_ns: now_ns(),
            ..Default::default()
        };
        assert!(s.is_stale(Duration::from_secs(60)));
        let live = Snapshot {
            writer_pid: u64::from(std::process::id()),
            ..s
        };
        assert!(!live.is_stale(Duration::from_secs(60)));
    }

    #[test]
    fn a_reused_pid_does_not_hold_a_page() {
        let me = u64::from(std::process::id());
        let start = process_start_ns(me).expect("our own start time");
        assert!(start <= now_ns() + START_SLACK_NS);
        let live = Snapshot {
            state: State::InProgress,
            writer_pid: me,
            heartbeat_ns: now_ns(),
            ..Default::default()
        };
        assert!(live.held());
        // The same pid on a page whose last heartbeat came a day before
        // this process started: another process's, which died.
        let reused = Snapshot {
            heartbeat_ns: start - 24 * 3600 * 1_000_000_000,
            ..live.clone()
        };
        assert!(!reused.held());
        assert!(reused.is_stale(Duration::from_secs(365 * 24 * 3600)));
        // No heartbeat to compare with: the pid alone decides.
        assert!(Snapshot {
            heartbeat_ns: 0,
            ..live.clone()
        }
        .held());
    }
}
