//! What the sender is asked to do ([`SendOptions`]), what it reports as it
//! goes ([`Progress`]) and when it is done ([`SendReport`]).

use std::time::Duration;

use crate::core::fleet::{FleetCounts, RxInfo};
use crate::net::socket::Group;
use crate::proto::manifest::ImageDigest;
use crate::proto::wire::{self, Geometry};
use crate::send::repair::Inbound;
use crate::status::page::SendPhase;

/// Default group of proactive FEC (`--fec`): the sender encodes every
/// group during the passes, so groups stay small enough to encode at the
/// data rate.
pub const FEC_GROUP: u32 = 64;
/// Default group of parity repair alone. One repair round costs, per group,
/// the largest number of symbols any receiver lacks, and the larger the
/// group, the closer that maximum comes to the average loss: with 5% loss
/// at each of 24 receivers, the worst receiver lacks about 2.2 times the
/// average in a 64-block group, 1.25 times in a 1024-block one
/// (docs/reliability.md). Bursts of loss gather in few groups, so bursty
/// loss at 1000 receivers needs larger groups still: 2048 blocks bring the
/// simulator's 1.21 sends per block to 1.15 (`cargo xtask fleet-sim`).
/// RaptorQ encodes or decodes 2048 blocks of 1400 bytes in about 20-40 ms
/// (twice 1024), only in repair rounds.
pub const PARITY_GROUP: u32 = wire::MAX_FEC_GROUP;

/// What to send and how.
#[derive(Debug, Clone)]
pub struct SendOptions {
    /// Destination group and port.
    pub group: Group,
    /// Interface to send on.
    pub iface: String,
    /// Rate limit in bits per second of UDP payload (None: as fast as possible).
    pub rate_bps: Option<u64>,
    /// Full passes over the image.
    pub passes: u32,
    /// Block size; None picks the largest that fits the interface MTU.
    pub block_size: Option<u32>,
    /// Session id; None picks a random one.
    pub session: Option<u32>,
    /// Multicast TTL / hop limit.
    pub ttl: u32,
    /// Sockets (distinct source ports) to spread the flow over receive queues.
    pub streams: usize,
    /// Send an announce packet every this many data packets, and at least
    /// every [`ANNOUNCE_PERIOD`](super::ANNOUNCE_PERIOD) of a pass.
    pub announce_every: u64,
    /// Take NACKs and run repair rounds after the last full pass.
    pub repair: bool,
    /// How long to collect NACKs after each end of pass.
    pub repair_wait: Duration,
    /// Most repair rounds.
    pub max_repair_rounds: u32,
    /// RaptorQ repair symbols per FEC group (0: no FEC).
    pub fec_repair: u16,
    /// Blocks per FEC group, also the group of parity requests; 0 picks
    /// [`FEC_GROUP`] with `fec_repair`, else [`PARITY_GROUP`].
    pub fec_group: u32,
    /// Answer parity requests with fresh RaptorQ symbols (with `repair`).
    pub parity: bool,
    /// Fraction of data and FEC packets deliberately not sent (loss
    /// injection for tests; 0 in real use).
    pub loss: f64,
    /// Most blocks resent over all repair rounds, as a multiple of the
    /// image's block count (NACKs cannot be authenticated: this bounds what
    /// forged ones can cost).
    pub max_repair: f64,
    /// Sign the session with this key (`--sign`): a manifest with chunk
    /// hashes and signed end packets go out besides the plain ones.
    pub sign: Option<ed25519_dalek::SigningKey>,
    /// With `sign`: hash the image with SHA-256 as well, for the ends
    /// (`send --sha256`): for receivers that pin it (`receive
    /// --expect-sha256`), that predate the image root, or take the session
    /// unsigned. Without it a signed session's ends carry the root of the
    /// chunk hashes (a kept manifest file that names the SHA-256 gives it
    /// without a hash).
    pub sha256: bool,
    /// With `sign`: write the signed manifest here for receivers that
    /// fetch over HTTP (`xdpcast send` picks `IMAGE.xdpcast-manifest` for
    /// a regular file; see [`crate::send::publish`]), when the first pass
    /// ends: every page is made and the image's digest known by then.
    pub manifest_file: Option<std::path::PathBuf>,
    /// With `sign`: URLs of the same image on web servers, named in the
    /// signed head for receivers given no `--http` of their own
    /// (`send --http-url`).
    pub http_urls: Vec<String>,
    /// Wait for this many receivers to report before the first pass.
    pub min_receivers: u64,
    /// Give up (`timeout`) if `min_receivers` have not reported by then.
    pub start_timeout: Option<Duration>,
    /// A receiver silent this long before it finished is vanished.
    pub vanish_after: Duration,
    /// Share of the image a receiver may still miss after three repair
    /// rounds; beyond it, it is told to stop (`too_slow`). 1.0: never.
    pub max_behind: f64,
    /// After the final end, wait at most this long for the receivers still
    /// reporting to finish.
    pub linger: Duration,
    /// Announce runs of all-zero blocks instead of sending them.
    pub sparse: bool,
    /// Send consecutive data blocks as UDP GSO messages (one message cut
    /// into datagrams by the kernel); falls back to one datagram per
    /// message where the kernel refuses.
    pub gso: bool,
    /// Size of the image on standard input (`send - --size`): sent while
    /// it is read (see [`crate::send::fill`]); None: a pipe is read to its
    /// end before the first packet.
    pub stdin_size: Option<u64>,
}

impl SendOptions {
    /// Blocks per FEC and parity group: `fec_group`, or its default.
    pub fn group_size(&self) -> u32 {
        match self.fec_group {
            0 if self.fec_repair > 0 => FEC_GROUP,
            0 => PARITY_GROUP,
            g => g,
        }
    }

    /// Defaults for `group` on `iface`.
    pub fn new(group: Group, iface: &str) -> SendOptions {
        SendOptions {
            group,
            iface: iface.to_owned(),
            rate_bps: None,
            passes: 1,
            block_size: None,
            session: None,
            ttl: 1,
            streams: 1,
            announce_every: 4096,
            repair: true,
            repair_wait: Duration::from_millis(500),
            max_repair_rounds: 50,
            fec_repair: 0,
            fec_group: 0,
            parity: true,
            loss: 0.0,
            max_repair: 2.0,
            sign: None,
            sha256: false,
            manifest_file: None,
            http_urls: Vec::new(),
            min_receivers: 0,
            start_timeout: None,
            vanish_after: Duration::from_secs(5),
            max_behind: 1.0,
            linger: Duration::from_secs(30),
            sparse: true,
            gso: true,
            stdin_size: None,
        }
    }
}

/// What a finished send did.
#[derive(Debug, Clone)]
pub struct SendReport {
    /// Session id used.
    pub session: u32,
    /// Image geometry.
    pub geometry: Geometry,
    /// SHA-256 of the image, or in a signed session the root of its
    /// chunk hashes (see [`SendOptions::sha256`]).
    pub digest: ImageDigest,
    /// Datagrams sent (all kinds, all passes).
    pub packets: u64,
    /// Payload bytes of data and FEC symbol packets sent (all passes and
    /// repairs; the status page's `bytes_sent`).
    pub bytes: u64,
    /// Repair rounds run.
    pub repair_rounds: u32,
    /// Data and symbol packets sent in repair rounds (not the pages,
    /// zero runs and ends sent with them).
    pub repair_packets: u64,
    /// Payload bytes of those packets (part of `bytes`).
    pub repair_bytes: u64,
    /// Blocks and symbols asked for but not sent because the repair budget
    /// (`max_repair`) was spent.
    pub repair_refused: u64,
    /// What came in over the back-channel: NACKs, parity requests and
    /// reports taken, datagrams ignored (malformed, foreign, outside the
    /// image, or over the per-source limit).
    pub inbound: Inbound,
    /// Every receiver that reported, with its final state.
    pub receivers: Vec<RxInfo>,
    /// Wall time of the sending.
    pub elapsed: Duration,
    /// Runs of zero blocks announced instead of sent.
    pub zero_runs: u64,
    /// Bytes in those runs (per pass, not sent).
    pub skipped_bytes: u64,
    /// Time spent looking for zero blocks, hashing excluded.
    pub scan_time: Duration,
    /// Wall time from the start until the image's SHA-256 was done (it is
    /// hashed while it is sent); None when it was not hashed.
    pub read_time: Option<Duration>,
}

impl SendReport {
    /// NACK and parity request packets taken.
    pub fn requests(&self) -> u64 {
        self.inbound.nacks + self.inbound.parity_requests
    }
}

/// Where the sender is, for a live display.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Session id.
    pub session: u32,
    /// What it is doing.
    pub phase: SendPhase,
    /// Pass (or repair round) number.
    pub pass: u32,
    /// Repair rounds run so far.
    pub repair_rounds: u32,
    /// Blocks of the image behind us in this pass (sent or skipped).
    pub blocks: u64,
    /// Blocks of the image.
    pub block_count: u64,
    /// Bytes of the image behind us in this pass.
    pub bytes: u64,
    /// Bytes of the image.
    pub total_bytes: u64,
    /// Bytes per block.
    pub block_size: u32,
    /// SHA-256 or root of the image, once the sender has read all of it.
    pub digest: Option<ImageDigest>,
    /// Datagrams sent so far (all kinds).
    pub packets: u64,
    /// Payload bytes of data and symbol packets sent so far.
    pub bytes_sent: u64,
    /// Of the bytes behind us, bytes in zero runs (not sent).
    pub skipped_bytes: u64,
    /// The receivers, per state.
    pub fleet: FleetCounts,
    /// Data and symbol packets sent in repair rounds so far.
    pub repair_packets: u64,
    /// Payload bytes of those packets.
    pub repair_bytes: u64,
    /// What came in over the back-channel so far.
    pub inbound: Inbound,
}
