//! The page's layout: its size, the word of each field ([`offsets`]) and
//! the values some words take (states, paths, roles, phases, flags).
//! docs/status-page.md and `receiver/include/xdpcast_status.h` say the same.

/// `"XDPCSTAT"` read as a little-endian u64.
pub const PAGE_MAGIC: u64 = u64::from_le_bytes(*b"XDPCSTAT");
/// Version of the layout below; bumped on any incompatible change.
pub const LAYOUT_VERSION: u64 = 2;
/// Size of the page in bytes.
pub const PAGE_SIZE: usize = 8192;
/// Words on the page.
pub(crate) const WORDS: usize = PAGE_SIZE / 8;
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
        pub const BYTES_READ_BACK: usize = 11;
        pub const BLOCKS_REFUSED: usize = 12;
        pub const CHUNKS_CHECKED: usize = 13;
        pub const USED: usize = 14;
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
/// Flag bit (with [`FLAG_DIGEST`]): the digest is the image's root, BLAKE3
/// of its signed chunk hashes (`Manifest::root`), not its SHA-256: a signed
/// session whose sender did not hash the image with SHA-256.
pub const FLAG_ROOT: u64 = 4;

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
    pub(crate) fn from_u64(v: u64) -> Option<State> {
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
    pub(crate) fn from_u64(v: u64) -> PathMode {
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
    pub(crate) fn from_u64(v: u64) -> Role {
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

    pub(crate) fn from_u64(v: u64) -> SendPhase {
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
