//! What a receiver is asked to do: the request shared by the session API,
//! the data path and the udpcast receiver.

use std::path::PathBuf;
use std::time::Duration;

use crate::core::fallback::HttpRepair;
use crate::cpu;
use crate::error::Result;
use crate::net::rings::XskConfig;
use crate::net::socket::{GroRequest, Group};
use crate::net::steer::AttachRequest;
use crate::store::writer::StoreConfig;
use crate::store::{stream, target};

/// Which data path to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeRequest {
    /// XDP when privileges and the kernel allow, else sockets (with a note why).
    Auto,
    /// XDP only; failure to set it up fails the session.
    Xdp,
    /// Plain UDP sockets only.
    Socket,
}

/// Everything needed to receive one image.
#[derive(Debug, Clone)]
pub struct SessionRequest {
    /// Session name: the status page is `<status dir>/xdpcast.<name>`.
    pub name: String,
    /// Multicast group and port.
    pub group: Group,
    /// Interface to receive on.
    pub iface: String,
    /// Target file or block device.
    pub target: PathBuf,
    /// Accept only this session id (default: the first one heard).
    pub session_id: Option<u32>,
    /// Data path.
    pub mode: ModeRequest,
    /// XDP attach mode.
    pub attach: AttachRequest,
    /// RX queues to serve on the XDP path (default: all).
    pub queues: Option<Vec<u32>>,
    /// Cores to pin workers to, in order (default: worker i on the i-th CPU
    /// this process may use, modulo their number).
    pub cores: Option<Vec<usize>>,
    /// AF_XDP socket and UMEM sizes.
    pub xsk: XskConfig,
    /// Staging buffer between the workers and the target.
    pub store: StoreConfig,
    /// Fail with `Timeout` when no packet of the session arrives this long after start.
    pub start_timeout: Duration,
    /// Fail with `SenderGone` when packets stop arriving this long before completion.
    pub idle_timeout: Duration,
    /// Socket receive buffer on the socket path, bytes.
    pub rcvbuf: usize,
    /// Socket path: take GRO-coalesced datagrams (`UDP_GRO`).
    pub socket_gro: GroRequest,
    /// XDP path only: drop this many per million matched frames in the XDP
    /// program (loss injection for tests and benchmarks).
    pub inject_loss_ppm: u32,
    /// XDP path only: take the session's frames tagged for this 802.1Q
    /// VLAN id (a trunk port) instead of untagged ones (the default: a
    /// tagged frame belongs to a VLAN interface, not to the session).
    pub vlan: Option<u16>,
    /// Where to keep the received-block bitmap so that a restarted receiver
    /// resumes (None: no resume).
    pub resume_file: Option<PathBuf>,
    /// Signed session: accept only a manifest signed by one of these keys
    /// (empty: unsigned session, with a warning).
    pub trust: Vec<ed25519_dalek::VerifyingKey>,
    /// Accept only the image with this SHA-256.
    pub expect_sha256: Option<[u8; 32]>,
    /// Signed session: refuse a manifest signed longer ago than this (a
    /// recorded session replayed); None: any age.
    pub max_manifest_age: Option<Duration>,
    /// Signed session: refuse a manifest dated further ahead of this host's
    /// clock than this (within it, a future date counts as age 0); None:
    /// any date ahead.
    pub max_clock_skew: Option<Duration>,
    /// Take data only from this sender address (`--source`): source-specific
    /// join, other sources dropped as `foreign_source`. A verified manifest
    /// names the source too.
    pub source: Option<std::net::IpAddr>,
    /// Target `-` (stdout): bytes of the reorder window in memory.
    pub stream_window: u64,
    /// `--hash-threads`: threads of the checking pool of a signed session
    /// (see [`crate::receive::checks`]).
    pub hash_threads: usize,
    /// `--http`: the same image on web servers, for what multicast does
    /// not deliver (see [`crate::fetch`]); None: multicast only.
    pub http: Option<HttpRequest>,
}

/// The HTTP(S) source of a receiver and its policy (docs/http.md).
#[derive(Debug, Clone, PartialEq)]
pub struct HttpRequest {
    /// URLs of the image (mirrors, tried in turn); the signed manifest is
    /// fetched from each URL plus `.xdpcast-manifest`.
    pub urls: Vec<String>,
    /// No multicast packet within this long of the start: the whole image
    /// over HTTP (multicast stays joined).
    pub after: Duration,
    /// Range requests in flight at once.
    pub parallel: usize,
    /// Longest random delay before the first request (a fleet falling back
    /// together spreads over it).
    pub jitter: Duration,
    /// After the sender's passes: how much this receiver must lack, and how
    /// few of the sender's receivers may lack much, for it to fetch over
    /// HTTP instead of NACKing.
    pub repair: HttpRepair,
    /// Deadline of each whole request (slow servers end there).
    pub timeout: Duration,
    /// Bytes per range request (rounded to whole chunks).
    pub range_bytes: u64,
    /// Failed requests in a row, over all mirrors, after which the HTTP
    /// source is given up (back to multicast repair).
    pub max_failures: u32,
    /// Certificates (DER) of certificate authorities trusted for HTTPS in
    /// addition to Mozilla's roots (`--http-ca`: a lab's own CA).
    pub extra_roots: Vec<Vec<u8>>,
}

impl HttpRequest {
    /// The defaults for `urls`.
    pub fn new(urls: Vec<String>) -> HttpRequest {
        HttpRequest {
            urls,
            after: Duration::from_secs(10),
            parallel: 2,
            jitter: Duration::from_secs(2),
            repair: HttpRepair {
                share: 0.05,
                few: 0.25,
            },
            timeout: Duration::from_secs(60),
            range_bytes: 8 << 20,
            max_failures: 8,
            extra_roots: Vec::new(),
        }
    }
}

/// Default `--max-manifest-age`: a day.
pub const DEFAULT_MAX_MANIFEST_AGE: Duration = Duration::from_secs(24 * 3600);

/// Default `--max-clock-skew`: five minutes (as Kerberos allows).
pub const DEFAULT_MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);

impl SessionRequest {
    /// A request with defaults for the rest.
    pub fn new(name: &str, group: Group, iface: &str, target: PathBuf) -> SessionRequest {
        SessionRequest {
            name: name.to_owned(),
            group,
            iface: iface.to_owned(),
            target,
            session_id: None,
            mode: ModeRequest::Auto,
            attach: AttachRequest::Auto,
            queues: None,
            cores: None,
            xsk: XskConfig::default(),
            store: StoreConfig::default(),
            start_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(10),
            rcvbuf: 64 << 20,
            socket_gro: GroRequest::Auto,
            inject_loss_ppm: 0,
            vlan: None,
            resume_file: None,
            trust: Vec::new(),
            expect_sha256: None,
            max_manifest_age: Some(DEFAULT_MAX_MANIFEST_AGE),
            max_clock_skew: Some(DEFAULT_MAX_CLOCK_SKEW),
            source: None,
            stream_window: stream::DEFAULT_WINDOW,
            hash_threads: crate::receive::checks::DEFAULT_THREADS,
            http: None,
        }
    }

    /// Refuse what cannot work before anything is set up or a packet
    /// arrives: cores this process may not run on, a target that cannot be
    /// written (read-only directory or filesystem).
    pub fn validate(&self) -> Result<()> {
        if let Some(cores) = &self.cores {
            cpu::check_cores(cores)?;
        }
        target::check_writable(&self.target)
    }
}
