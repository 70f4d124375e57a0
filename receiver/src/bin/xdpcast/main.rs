//! `xdpcast`: send and receive files and disk images over IP multicast.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use xdpcast::net::rings::{CopyMode, XskConfig};
use xdpcast::net::socket::{GroRequest, Group};
use xdpcast::net::steer::{self, AttachRequest};
use xdpcast::proto::wire::hex;
use xdpcast::receive::udpcast::{self, UdpcastRequest};
use xdpcast::send::sender::{self, SendOptions};
use xdpcast::send::view as send_view;
use xdpcast::status::page::{self, Snapshot, StatusReader, StatusWriter};
use xdpcast::status::{monitor, report, serve};
use xdpcast::store::stream;
use xdpcast::store::writer::StoreConfig;
use xdpcast::{Callbacks, ErrorCode, ModeRequest, Session, SessionRequest, State};

#[path = "xdpcast/udp_receiver.rs"]
mod udp_receiver;

/// Exit status of a failed session: this plus its error code.
const EXIT_FAILURE_BASE: u8 = 100;
/// Smallest `send --mtu`: the smallest block with its IPv4, UDP and xdpcast headers.
const MIN_MTU: i64 = (xdpcast::proto::wire::MIN_BLOCK_SIZE as usize
    + xdpcast::proto::wire::IPV4_UDP_OVERHEAD
    + xdpcast::proto::wire::HEADER_LEN) as i64;

#[derive(Parser)]
#[command(
    name = "xdpcast",
    version,
    about = "Kernel-bypass multicast receiver (XDP/AF_XDP) and sender for disk images and files"
)]
struct Cli {
    /// Print only errors on stderr (not the receiver's notes or warnings).
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Print more on stderr: -v info, -vv debug, -vvv trace (RUST_LOG, in
    /// env_logger's syntax, filters by module).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    Auto,
    Xdp,
    Socket,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Protocol {
    Xdpcast,
    Udpcast,
}

#[derive(Clone, Copy, ValueEnum)]
enum Attach {
    Auto,
    Native,
    Generic,
}

#[derive(Clone, Copy, ValueEnum)]
enum SocketGro {
    Auto,
    On,
    Off,
}

#[derive(Clone, Copy, ValueEnum)]
enum XskCopy {
    Auto,
    Zerocopy,
    Copy,
}

#[derive(Subcommand)]
enum Cmd {
    /// Multicast a file, a block device or standard input.
    Send {
        /// File or block device to send; `-`: standard input, read to its end
        /// into an unlinked file in TMPDIR first (the size goes in every packet).
        file: PathBuf,
        /// Multicast group and port, e.g. 239.1.2.3:5000 or [ff15::1]:5000; a
        /// link-local IPv6 group (ff02::, ff12::) is sent on --iface.
        #[arg(long)]
        group: Group,
        /// Interface to send on.
        #[arg(long)]
        iface: String,
        /// Rate limit of payload, bits/s, with optional k/M/G suffix (default: unlimited).
        #[arg(long, value_parser = parse_rate)]
        rate: Option<u64>,
        /// Passes over the image.
        #[arg(long, default_value_t = 1)]
        passes: u32,
        /// Block size in bytes (default: the largest that fits the interface MTU).
        #[arg(long)]
        block_size: Option<u32>,
        /// Size blocks for this MTU instead of the interface's (e.g. 9000 for jumbo
        /// frames); at least 132 (the smallest block and its headers), at most
        /// the interface's MTU (larger frames would be fragmented).
        #[arg(long, conflicts_with = "block_size",
              value_parser = clap::value_parser!(u32).range(MIN_MTU..=65535))]
        mtu: Option<u32>,
        /// Session id (default: random).
        #[arg(long)]
        session: Option<u32>,
        /// Multicast TTL.
        #[arg(long, default_value_t = 1)]
        ttl: u32,
        /// Sockets with distinct source ports, to spread the flow over the receivers' RX queues.
        #[arg(long, default_value_t = 1)]
        streams: usize,
        /// Send runs of all-zero blocks like data instead of announcing them
        /// (by default they are found while hashing and never sent).
        #[arg(long)]
        no_sparse: bool,
        #[command(flatten)]
        repair: SendRepair,
        /// Sign the session with this secret key (from `xdpcast keygen`):
        /// receivers with `--trust` then verify every chunk of the image.
        #[arg(long, value_name = "KEYFILE")]
        sign: Option<PathBuf>,
        /// With --sign: where to write the signed manifest for receivers
        /// that fetch over HTTP (default for a regular file:
        /// FILE.xdpcast-manifest beside it; docs/http.md).
        #[arg(long, value_name = "PATH", requires = "sign")]
        manifest_file: Option<PathBuf>,
        /// With --sign: write no manifest file.
        #[arg(long, conflicts_with = "manifest_file")]
        no_manifest_file: bool,
        #[command(flatten)]
        fleet: SendFleet,
        /// Show a progress bar (with the receivers' states).
        #[arg(long)]
        progress: bool,
    },
    /// Receive an image into a file or block device.
    Receive {
        /// Multicast group and port, e.g. 239.1.2.3:5000 or [ff15::1]:5000; a
        /// link-local IPv6 group (ff02::, ff12::) is joined on --iface
        /// (udpcast: the data group to expect, default: the one the sender
        /// announces).
        #[arg(long)]
        group: Option<Group>,
        /// Protocol of the sender: xdpcast, or udpcast's udp-sender.
        #[arg(long, value_enum, default_value_t = Protocol::Xdpcast)]
        protocol: Protocol,
        /// udpcast port base: data and control to this port, replies to portbase+1.
        #[arg(long, default_value_t = udpcast::DEFAULT_PORTBASE)]
        portbase: u16,
        /// Interface to receive on.
        #[arg(long)]
        iface: String,
        /// Target file (created and sized) or block device (must be large
        /// enough); `-`: standard output, in order, through a reorder
        /// window (no resume; see docs/streaming.md).
        #[arg(long)]
        out: PathBuf,
        /// With `--out -`: MiB of the in-memory reorder window; blocks beyond
        /// it wait for the sender's repair.
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=65536))]
        stream_window_mib: u64,
        /// Session name for the status page (default: derived from the group).
        #[arg(long)]
        name: Option<String>,
        /// Data path: auto uses XDP when possible and says why when it cannot.
        #[arg(long, value_enum, default_value_t = Mode::Auto)]
        mode: Mode,
        /// XDP attach mode.
        #[arg(long, value_enum, default_value_t = Attach::Auto)]
        attach: Attach,
        /// XDP path on a trunk port: take the session's frames tagged for
        /// this 802.1Q VLAN id (1-4094) only. By default the port is taken
        /// as untagged: a tagged frame belongs to a VLAN interface, not to
        /// the session, and is left to the kernel.
        #[arg(long, value_name = "VID", value_parser = clap::value_parser!(u16).range(1..=4094))]
        vlan: Option<u16>,
        /// AF_XDP copy mode.
        #[arg(long = "xsk-copy", value_enum, default_value_t = XskCopy::Auto)]
        xsk_copy: XskCopy,
        /// Socket path: take datagrams the interface's GRO coalesced as one
        /// message each and split them (UDP_GRO, Linux 5.0+): fewer system
        /// calls and socket wake-ups per block. auto: when the kernel has
        /// it; on: a kernel without it fails the session. Needs GRO on the
        /// interface (NICs: on by default; a veth: `ethtool -K IF gro on
        /// rx-udp-gro-forwarding on` and threaded NAPI).
        #[arg(long, value_enum, default_value_t = SocketGro::Auto)]
        socket_gro: SocketGro,
        /// RX queues to serve: `all` (the default) or numbers, comma
        /// separated. Frames of the session on a queue left out are counted
        /// on the status page (unserved) and named in a warning.
        #[arg(long, value_parser = parse_queues)]
        queues: Option<Queues>,
        /// Cores to pin the workers to, comma separated (default: the CPUs
        /// this process may use, in order). Workers run at nice -10 where
        /// the process may raise its priority (root); the staging writer
        /// thread runs on the process's other CPUs when there are any.
        #[arg(long, value_delimiter = ',')]
        cores: Option<Vec<usize>>,
        /// UMEM frames per queue: 2 KiB each up to MTU 1774, else 4 KiB
        /// (the default is 64 MiB per queue at MTU 1500).
        #[arg(long, default_value_t = xdpcast::net::rings::DEFAULT_FRAMES)]
        frames: u32,
        /// AF_XDP rx and fill ring entries (power of two). Frames that
        /// arrive while the worker is not scheduled wait here. Default
        /// 16384 (about 20 ms at 10 GbE line rate, 370 ms at 500 Mbit/s),
        /// or the largest power of two up to --frames when that is less.
        #[arg(long)]
        ring_size: Option<u32>,
        /// Staging buffer between the workers and the target, MiB. The
        /// default, 256, absorbs a storage stall of about 215 ms at 10 GbE
        /// line rate.
        #[arg(long, default_value_t = xdpcast::store::writer::DEFAULT_BUFFER >> 20)]
        buffer_mib: u64,
        /// Largest image accepted, bytes with optional K/M/G/T suffix (powers
        /// of 1024). By default an image must fit what the target can hold:
        /// a block device's size, or the free space of a file's filesystem
        /// (counting what the file already holds); a larger announcement
        /// ends the session in FAILURE (target_too_small, disk_full) before
        /// anything is created. Give this to accept a sparse image larger
        /// than the free space (its data must still fit).
        #[arg(long, value_name = "SIZE", value_parser = parse_bytes)]
        max_image_size: Option<u64>,
        /// Accept only this session id.
        #[arg(long)]
        session: Option<u32>,
        /// Seconds to wait for the first packet.
        #[arg(long, default_value_t = 60)]
        start_timeout: u64,
        /// Seconds without packets before the sender is considered gone.
        #[arg(long, default_value_t = 10)]
        idle_timeout: u64,
        /// Leave the status page after exit (remove it with `xdpcast close NAME`).
        #[arg(long)]
        keep_status: bool,
        #[command(flatten)]
        recovery: ReceiveRecovery,
        #[command(flatten)]
        trust: ReceiveTrust,
        #[command(flatten)]
        http: ReceiveHttp,
        /// Show a progress bar.
        #[arg(long)]
        progress: bool,
    },
    /// Sign the manifest of an image ahead of time for receivers that fetch
    /// it over HTTP (`receive --http URL` reads URL.xdpcast-manifest).
    /// `send --sign` writes one for the session it sends by itself.
    Manifest {
        /// The image (file or block device).
        image: PathBuf,
        /// Secret key (from `xdpcast keygen`).
        #[arg(long, value_name = "KEYFILE")]
        sign: PathBuf,
        /// Where to write it (default: IMAGE.xdpcast-manifest).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Session id; give the sender the same (`send --session`) so that
        /// receivers started from the file also take its multicast blocks.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        session: u32,
        /// Block size: the sender's (from its MTU), so the chunk hashes match.
        #[arg(long)]
        block_size: Option<u32>,
        /// Size blocks for this MTU (default 1500).
        #[arg(long, conflicts_with = "block_size",
              value_parser = clap::value_parser!(u32).range(MIN_MTU..=65535))]
        mtu: Option<u32>,
    },
    /// Make an Ed25519 key pair for signed sessions: KEYFILE (secret, mode
    /// 0600) and KEYFILE.pub (give it to receivers' --trust).
    Keygen {
        /// Where to write the secret key (must not exist).
        #[arg(long, value_name = "KEYFILE")]
        out: PathBuf,
        /// Comment stored in the public key file.
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Print the status page of one session, or of all sessions.
    ///
    /// Pages are read from $XDPCAST_STATUS_DIR (default /run/xdpcast); a page
    /// owned by neither root nor you is flagged with a WARNING line (JSON:
    /// "foreign_owner": true), as another user may have written it. Control
    /// characters in its text are printed escaped. Listing all sessions, a
    /// page that cannot be read is named on standard error and the others
    /// are printed; the exit status is then 1.
    Status {
        /// Session name (default: every session on this machine).
        name: Option<String>,
        /// One JSON object per session, one per line.
        #[arg(long)]
        json: bool,
    },
    /// Remove the status page of a finished session.
    Close {
        /// Session name.
        name: String,
        /// Remove it even if its receiver still runs.
        #[arg(long)]
        force: bool,
    },
    /// Live progress bars for every session on this machine: rate, ETA, loss, drops.
    Monitor {
        /// Print one frame and exit.
        #[arg(long)]
        once: bool,
        /// Refresh interval in milliseconds.
        #[arg(long, default_value_t = 500)]
        interval_ms: u64,
    },
    /// Serve every session's status page as Prometheus metrics over HTTP.
    Metrics {
        /// Address to listen on (port 0: any free port). Keep it on
        /// loopback unless a firewall or proxy guards it (docs/monitoring.md).
        #[arg(long, default_value = "127.0.0.1:9470")]
        listen: std::net::SocketAddr,
        /// Serve one connection (one request, no keep-alive) and exit.
        #[arg(long)]
        once: bool,
        /// Print the metrics page to stdout and exit, without serving.
        #[arg(long, conflicts_with_all = ["listen", "once"])]
        print: bool,
    },
    /// Receive from udpcast's udp-sender with udp-receiver's own options
    /// (what Clonezilla and FOG pass); also what runs when the binary is
    /// invoked as `udp-receiver`. Exit status as udp-receiver: 0, 1, or 255
    /// when no sender came within --start-timeout.
    #[command(infer_long_args = true, args_override_self = true)]
    UdpReceiver(udp_receiver::UdpReceiverArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// Shell.
        shell: clap_complete::Shell,
    },
    /// Write man pages (xdpcast.1 and one per command) into a directory.
    #[command(hide = true)]
    Man {
        /// Output directory.
        dir: PathBuf,
    },
    /// Remove any XDP program left on an interface.
    Cleanup {
        /// Interface.
        #[arg(long)]
        iface: String,
    },
}

/// Loss repair and FEC on the sending side.
#[derive(clap::Args)]
struct SendRepair {
    /// Do not take NACKs, parity requests or reports (no back-channel:
    /// passes and FEC only).
    #[arg(long)]
    no_repair: bool,
    /// Answer only block-range NACKs, not parity requests.
    #[arg(long)]
    no_parity: bool,
    /// Milliseconds to collect requests after each end of pass.
    #[arg(long, default_value_t = 500)]
    repair_wait: u64,
    /// Most repair rounds.
    #[arg(long, default_value_t = 50)]
    max_repair_rounds: u32,
    /// Most blocks and symbols sent over all repair rounds, as a multiple
    /// of the image (bounds what forged requests can cost; repairs are also
    /// paced at the data rate, and each address may send 128 requests per
    /// window).
    #[arg(long, default_value_t = 2.0)]
    max_repair: f64,
    /// RaptorQ repair symbols per FEC group (0: no FEC).
    #[arg(long, default_value_t = 0)]
    fec: u16,
    /// Blocks per FEC group, for --fec and for parity repair (1..=1024;
    /// default 64 with --fec, else 1024: larger groups make a repair round
    /// for many receivers cost closer to their average loss).
    #[arg(long)]
    fec_group: Option<u32>,
    /// Test loss injection: fraction (0..1) of data and FEC packets not sent.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
}

impl SendRepair {
    fn apply(&self, o: &mut SendOptions) {
        o.repair = !self.no_repair;
        o.repair_wait = Duration::from_millis(self.repair_wait);
        o.max_repair_rounds = self.max_repair_rounds;
        o.max_repair = self.max_repair;
        o.fec_repair = self.fec;
        o.fec_group = self.fec_group.unwrap_or(0);
        o.parity = !self.no_parity;
        o.loss = self.loss;
    }
}

/// Start control and the receivers' fate, on the sending side.
#[derive(clap::Args)]
struct SendFleet {
    /// Announce and wait until this many receivers have reported before
    /// the first pass.
    #[arg(long, default_value_t = 0)]
    min_receivers: u64,
    /// Seconds to wait for --min-receivers (default 1 of them) before
    /// giving up with `timeout` (exit 102) (default: wait forever).
    #[arg(long)]
    start_timeout: Option<u64>,
    /// Seconds of silence after which a receiver that has not finished is
    /// listed as vanished.
    #[arg(long, default_value_t = 5)]
    vanish_after: u64,
    /// Percent of the image a receiver may still miss after three repair
    /// rounds; a receiver further behind is told to stop (too_slow, 17).
    /// The default, 100, never stops one.
    #[arg(long, default_value_t = 100.0)]
    max_behind: f64,
    /// After the final end, seconds to wait for receivers still working.
    #[arg(long, default_value_t = 30)]
    linger: u64,
    /// Name of the sender's status page (`xdpcast status NAME`; the
    /// `session` label of its metrics). Default: send- and the group.
    #[arg(long)]
    name: Option<String>,
    /// Leave the sender's status page after exit (remove it with
    /// `xdpcast close NAME`).
    #[arg(long)]
    keep_status: bool,
    /// Also write the sender's metrics (those `xdpcast metrics` serves
    /// from its status page) as Prometheus text to this file, for
    /// node_exporter's textfile collector; refreshed every second.
    #[arg(long)]
    metrics_file: Option<PathBuf>,
}

impl SendFleet {
    fn apply(&self, o: &mut SendOptions) {
        o.min_receivers = self.min_receivers;
        o.start_timeout = self.start_timeout.map(Duration::from_secs);
        if o.start_timeout.is_some() {
            o.min_receivers = o.min_receivers.max(1);
        }
        o.vanish_after = Duration::from_secs(self.vanish_after.max(1));
        o.max_behind = self.max_behind / 100.0;
        o.linger = Duration::from_secs(self.linger);
    }
}

/// Resume and test loss injection on the receiving side.
#[derive(clap::Args)]
struct ReceiveRecovery {
    /// Where to keep the received-block bitmap for resuming after a crash
    /// (default for a regular file: OUT.xdpcast-resume; block devices: none).
    #[arg(long)]
    resume_file: Option<PathBuf>,
    /// Do not keep a resume file.
    #[arg(long, conflicts_with = "resume_file")]
    no_resume: bool,
    /// Test loss injection on the XDP path: matched frames dropped per million.
    #[arg(long, default_value_t = 0)]
    inject_loss: u32,
}

/// The HTTP(S) source on the receiving side (docs/http.md).
#[derive(clap::Args)]
struct ReceiveHttp {
    /// The same image on a web server (repeatable: mirrors, used in turn).
    /// What multicast does not deliver is fetched with range requests and
    /// checked like multicast blocks; a receiver that hears nothing starts
    /// from URL.xdpcast-manifest (signed sessions). Proxies from
    /// http_proxy, https_proxy, all_proxy and no_proxy, as curl.
    #[arg(long, value_name = "URL")]
    http: Vec<String>,
    /// Seconds without multicast (from the start, or after it stopped)
    /// before the image is fetched over HTTP.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    http_after: u64,
    /// Range requests in flight at once.
    #[arg(long, value_name = "N", default_value_t = 2,
          value_parser = clap::value_parser!(u64).range(1..=64))]
    http_parallel: u64,
    /// Longest random delay, ms, before the first HTTP request (so a fleet
    /// falling back together does not arrive together).
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    http_jitter_ms: u64,
    /// After the sender's passes, percent of the image still missing from
    /// which it is fetched over HTTP rather than by NACK rounds.
    #[arg(long, value_name = "PERCENT", default_value_t = 5.0)]
    http_repair_percent: f64,
    /// KiB per range request (rounded up to whole chunks of the signed
    /// manifest).
    #[arg(long, value_name = "KIB", default_value_t = 8192,
          value_parser = clap::value_parser!(u64).range(4..=1 << 20))]
    http_range_kib: u64,
    /// Seconds one HTTP request may take in all (slow servers end there).
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    http_timeout: u64,
    /// Failed HTTP requests in a row after which the web server is given
    /// up (back to multicast repair).
    #[arg(long, value_name = "N", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..))]
    http_max_failures: u32,
}

impl ReceiveHttp {
    fn apply(&self, r: &mut SessionRequest) -> anyhow::Result<()> {
        if self.http.is_empty() {
            return Ok(());
        }
        for u in &self.http {
            let scheme = u.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
            if !matches!(scheme.as_deref(), Some("http" | "https")) {
                return Err(invalid(format!(
                    "--http {u}: not an http:// or https:// URL"
                )));
            }
        }
        if !(0.0..=100.0).contains(&self.http_repair_percent) {
            return Err(invalid("--http-repair-percent must be 0..100".into()));
        }
        let mut h = xdpcast::receive::request::HttpRequest::new(self.http.clone());
        h.after = Duration::from_secs(self.http_after);
        h.parallel = self.http_parallel as usize;
        h.jitter = Duration::from_millis(self.http_jitter_ms);
        h.repair_share = self.http_repair_percent / 100.0;
        h.timeout = Duration::from_secs(self.http_timeout.max(1));
        h.range_bytes = self.http_range_kib << 10;
        h.max_failures = self.http_max_failures;
        r.http = Some(h);
        Ok(())
    }
}

/// Signed sessions and image pinning on the receiving side.
#[derive(clap::Args)]
struct ReceiveTrust {
    /// Accept only sessions whose manifest is signed by this key: a public
    /// key file, a directory of *.pub files, or 64 hex digits (repeatable).
    /// Nothing is written before the manifest verifies; every chunk is
    /// checked as it completes; SUCCESS needs no read-back.
    #[arg(long, value_name = "PUBKEY")]
    trust: Vec<String>,
    /// Accept only the image with this SHA-256 (64 hex digits).
    #[arg(long, value_name = "HEX", value_parser = parse_sha256)]
    expect_sha256: Option<[u8; 32]>,
    /// With --trust: refuse a manifest signed more than SECS ago by this
    /// host's clock, as a replay of a recorded older session (0: any age).
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = xdpcast::receive::request::DEFAULT_MAX_MANIFEST_AGE.as_secs()
    )]
    max_manifest_age: u64,
    /// With --trust: refuse a manifest dated more than SECS ahead of this
    /// host's clock (the sender's or this host's clock is wrong; such a
    /// manifest would stay replayable past --max-manifest-age). Within it,
    /// a date ahead counts as age 0 (0: any date ahead).
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = xdpcast::receive::request::DEFAULT_MAX_CLOCK_SKEW.as_secs()
    )]
    max_clock_skew: u64,
    /// Take data only from this sender address: source-specific join
    /// (IGMPv3/MLDv2) and every other source dropped (foreign_source).
    /// A signed manifest names its sender's address too.
    #[arg(long, value_name = "IP")]
    source: Option<std::net::IpAddr>,
}

impl ReceiveTrust {
    fn apply(&self, r: &mut SessionRequest) -> anyhow::Result<()> {
        for spec in &self.trust {
            r.trust.extend(xdpcast::store::keys::load_trusted(spec)?);
        }
        r.expect_sha256 = self.expect_sha256;
        let secs = |s: u64| (s > 0).then(|| Duration::from_secs(s));
        r.max_manifest_age = secs(self.max_manifest_age);
        r.max_clock_skew = secs(self.max_clock_skew);
        r.source = self.source;
        Ok(())
    }
}

fn parse_sha256(s: &str) -> Result<[u8; 32], String> {
    xdpcast::proto::wire::from_hex::<32>(s).ok_or_else(|| format!("{s:?} is not 64 hex digits"))
}

impl ReceiveRecovery {
    fn apply(&self, r: &mut SessionRequest) -> anyhow::Result<()> {
        let block_device = std::fs::metadata(&r.target)
            .map(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()))
            .unwrap_or(false);
        // What has left through a pipe cannot be rewritten: no resume.
        let piped = stream::is_stdout(&r.target);
        if piped && self.resume_file.is_some() {
            return Err(invalid(
                "--resume-file does not apply to --out - (a pipe cannot be resumed)".into(),
            ));
        }
        r.resume_file = match (&self.resume_file, self.no_resume || block_device || piped) {
            (Some(p), _) => Some(p.clone()),
            (None, true) => None,
            (None, false) => Some(xdpcast::store::resume::default_path(&r.target)),
        };
        r.inject_loss_ppm = self.inject_loss;
        Ok(())
    }
}

/// `--queues`: every RX queue (`None`), or these.
#[derive(Clone)]
struct Queues(Option<Vec<u32>>);

fn parse_queues(s: &str) -> Result<Queues, String> {
    if s == "all" {
        return Ok(Queues(None));
    }
    s.split(',')
        .map(|q| {
            q.trim()
                .parse()
                .map_err(|_| format!("bad queue {q:?}: use all, or numbers such as 0,2"))
        })
        .collect::<Result<Vec<u32>, String>>()
        .map(|v| Queues(Some(v)))
}

fn parse_rate(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1e3),
        Some((i, 'm' | 'M')) => (&s[..i], 1e6),
        Some((i, 'g' | 'G')) => (&s[..i], 1e9),
        _ => (s, 1.0),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("bad rate {s:?}: use e.g. 800M or 2.5G"))?;
    if v <= 0.0 || !v.is_finite() {
        return Err(format!("bad rate {s:?}: must be positive"));
    }
    Ok((v * mult) as u64)
}

/// Bytes with an optional K/M/G/T suffix (powers of 1024).
fn parse_bytes(s: &str) -> Result<u64, String> {
    let (num, shift) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 10),
        Some((i, 'm' | 'M')) => (&s[..i], 20),
        Some((i, 'g' | 'G')) => (&s[..i], 30),
        Some((i, 't' | 'T')) => (&s[..i], 40),
        _ => (s, 0),
    };
    let v: u64 = num
        .parse()
        .map_err(|_| format!("bad size {s:?}: use e.g. 500G or 2T"))?;
    v.checked_mul(1 << shift)
        .filter(|&b| b > 0)
        .ok_or_else(|| format!("bad size {s:?}: must be positive and below 16 EiB"))
}

static SIGNALLED: AtomicBool = AtomicBool::new(false);
/// The signal that cancelled the run (0: none).
static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNAL.store(sig, Ordering::Relaxed);
    SIGNALLED.store(true, Ordering::Relaxed);
}

/// Exit status of a closed output: a process killed by SIGPIPE (128 + 13),
/// as udp-receiver and any shell pipeline member reports it.
const EXIT_OUTPUT_CLOSED: u8 = 141;

/// The exit status shell scripts expect, as from udpcast's udp-receiver,
/// when a receive ended in `state` with `code` for an outside reason:
/// 128 plus the signal that cancelled it (130 SIGINT, 143 SIGTERM), or 141
/// when the output closed (the consumer of `--out -` or `--pipe` exited).
/// None otherwise.
fn outside_exit(state: State, code: ErrorCode) -> Option<ExitCode> {
    let sig = SIGNAL.load(Ordering::Relaxed);
    match (state, code) {
        (State::Success, _) => None,
        (_, ErrorCode::Cancelled) if sig > 0 => Some(ExitCode::from(128 + sig as u8)),
        (_, ErrorCode::OutputClosed) => Some(ExitCode::from(EXIT_OUTPUT_CLOSED)),
        _ => None,
    }
}

fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(&format!(
            "{what} [{{bar:40}}] {{bytes}}/{{total_bytes}} {{bytes_per_sec}} eta {{eta}} {{msg}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb
}

fn default_name(group: &Group) -> String {
    let s: String = group
        .to_string()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    s.trim_matches('-').to_string()
}

fn main() -> ExitCode {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // Invoked as `udp-receiver` (a link to this binary): udp-receiver's
    // command line, unchanged.
    let invoked_as = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .map(|n| n.to_os_string());
    if invoked_as.as_deref() == Some("udp-receiver".as_ref()) {
        args.insert(1, "udp-receiver".into());
    }
    let compat = args.get(1).is_some_and(|a| a == "udp-receiver");
    if compat {
        let mut cmd = <Cli as clap::CommandFactory>::command();
        cmd.build();
        if let Some(sub) = cmd.find_subcommand("udp-receiver") {
            let expanded = udp_receiver::expand_prefixes(sub, &args[2..]);
            args.truncate(2);
            args.extend(expanded);
        }
    }
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        // udp-receiver exits 1 on a bad command line.
        Err(e) if compat && e.use_stderr() => {
            let _ = e.print();
            return ExitCode::FAILURE;
        }
        Err(e) => e.exit(),
    };
    // udp-receiver --log FILE: its messages go there, timestamped.
    let log_file = match &cli.cmd {
        Cmd::UdpReceiver(a) => match a.log.as_ref().map(udp_receiver::open_log).transpose() {
            Ok(f) => f,
            Err(e) => {
                eprintln!("xdpcast: {e:#}");
                return ExitCode::FAILURE;
            }
        },
        _ => None,
    };
    init_logging(cli.quiet, cli.verbose, log_file);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xdpcast: {e:#}");
            if compat {
                ExitCode::FAILURE
            } else {
                error_exit_code(&e)
            }
        }
    }
}

/// The exit status of a command that failed before or outside a session:
/// 100 + the code when the error carries one (a receiver that cannot set
/// up, an invalid argument), as for a failed session; else 1.
fn error_exit_code(e: &anyhow::Error) -> ExitCode {
    match e.chain().find_map(|c| c.downcast_ref::<xdpcast::Error>()) {
        Some(x) => ExitCode::from(EXIT_FAILURE_BASE + x.code as u8),
        None => ExitCode::FAILURE,
    }
}

/// An invalid command line, with the `InvalidArgument` code (exit 112).
fn invalid(message: String) -> anyhow::Error {
    xdpcast::Error::new(ErrorCode::InvalidArgument, message).into()
}

/// Log target of the receiver's notes to its operator (path chosen,
/// status page): shown by default, hidden by `--quiet`.
const NOTES: &str = "xdpcast::cli";

/// Log records on stderr through env_logger, one line each: `xdpcast: NOTE`
/// for notes, `xdpcast: LEVEL: MESSAGE` for the rest. The filter is
/// `RUST_LOG` (env_logger's syntax) or by default warnings, errors and
/// notes; `--quiet` (errors only) and `-v`/`-vv`/`-vvv` (info, debug,
/// trace) set the level over either.
/// With `log_file`, the records go there instead, each line after the
/// local time (`HH:MM:SS.uuuuuu`, as udp-receiver's `--log` writes).
fn init_logging(quiet: bool, verbose: u8, log_file: Option<std::fs::File>) {
    let mut b = env_logger::Builder::new();
    let stamped = log_file.is_some();
    b.filter_level(log::LevelFilter::Warn)
        .filter_module(NOTES, log::LevelFilter::Info)
        .parse_env(env_logger::Env::default())
        .format(move |out, r| {
            if stamped {
                write!(out, "{} ", udp_receiver::log_time())?;
            }
            if r.target() == NOTES {
                writeln!(out, "xdpcast: {}", r.args())
            } else {
                let level = r.level().as_str().to_lowercase();
                writeln!(out, "xdpcast: {level}: {}", r.args())
            }
        });
    if let Some(f) = log_file {
        b.target(env_logger::Target::Pipe(Box::new(f)));
    }
    match (quiet, verbose) {
        (true, _) => {
            b.filter_level(log::LevelFilter::Error)
                .filter_module(NOTES, log::LevelFilter::Error);
        }
        (false, 0) => {}
        (false, 1) => {
            b.filter_level(log::LevelFilter::Info);
        }
        (false, 2) => {
            b.filter_level(log::LevelFilter::Debug);
        }
        (false, _) => {
            b.filter_level(log::LevelFilter::Trace);
        }
    }
    b.init();
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::Send {
            file,
            group,
            iface,
            rate,
            passes,
            block_size,
            mtu,
            session,
            ttl,
            streams,
            no_sparse,
            repair,
            sign,
            manifest_file,
            no_manifest_file,
            fleet,
            progress,
        } => {
            if let Some(mtu) = mtu {
                let have = xdpcast::net::socket::iface_mtu(&iface)?;
                if mtu > have {
                    return Err(invalid(format!(
                        "--mtu {mtu} is larger than the MTU of {iface} ({have}): the frames would be fragmented, which receivers drop"
                    )));
                }
            }
            let mut opts = SendOptions::new(group, &iface);
            opts.sparse = !no_sparse;
            repair.apply(&mut opts);
            opts.sign = sign
                .as_deref()
                .map(xdpcast::store::keys::load_signing)
                .transpose()?;
            if opts.sign.is_some() && !no_manifest_file {
                let regular = std::fs::metadata(&file).is_ok_and(|m| m.is_file());
                opts.manifest_file = manifest_file
                    .or_else(|| regular.then(|| xdpcast::fetch::manifest_file::path_beside(&file)));
            }
            opts.rate_bps = rate;
            opts.passes = passes;
            opts.block_size = block_size.or(mtu.map(xdpcast::proto::wire::block_size_for_mtu));
            opts.session = session;
            opts.ttl = ttl;
            opts.streams = streams;
            fleet.apply(&mut opts);
            let name = fleet
                .name
                .clone()
                .unwrap_or_else(|| format!("send-{}", default_name(&group)));
            let path = page::writer_page_path(&name)?;
            let page = StatusWriter::create(&path)?;
            log::info!(target: NOTES, "status page {}", path.display());
            let mut live = send_view::Live::new(
                Some(page),
                &name,
                &group.to_string(),
                &file.display().to_string(),
                fleet.metrics_file.clone(),
            );
            let pb = progress.then(|| bar(0, "send"));
            let r = sender::send(&file, &opts, |p| {
                if let Some(pb) = &pb {
                    pb.set_length(p.block_count);
                    pb.set_message(format!(
                        "{} {}; {}; {} zeros skipped",
                        p.phase.name(),
                        p.pass + 1,
                        send_view::counts(&p.fleet, p.block_count),
                        report::bytes(p.skipped_bytes)
                    ));
                    pb.set_position(p.blocks);
                }
                live.update(p, pb.is_none());
            });
            if let Some(pb) = pb {
                pb.finish_and_clear();
            }
            let r = match r {
                Ok(r) => r,
                Err(e) => {
                    live.fail(&e);
                    if !fleet.keep_status {
                        remove_page(&live);
                    }
                    return Err(e.into());
                }
            };
            let secs = r.elapsed.as_secs_f64().max(1e-6);
            let gb = r.geometry.total_size as f64 / 1e9;
            println!(
                "sent {} in {} packets ({passes} pass(es), {} repair round(s) of {} packets for {} NACKs and {} parity requests, session {:#010x}, {} blocks of {}) in {secs:.2} s, {}; skipped {} of zeros in {} runs (zero scan {:.1} ms/GB, read {:.2} s); sha256 {}",
                report::bytes(r.geometry.total_size),
                r.packets,
                r.repair_rounds,
                r.repair_packets,
                r.inbound.nacks,
                r.inbound.parity_requests,
                r.session,
                r.geometry.block_count,
                r.geometry.block_size,
                report::rate((r.bytes as f64 / secs) as u64),
                report::bytes(r.skipped_bytes),
                r.zero_runs,
                r.scan_time.as_secs_f64() * 1e3 / gb.max(1e-9),
                r.read_time.as_secs_f64(),
                hex(&r.digest)
            );
            if r.requests() + r.inbound.ignored > 0 {
                println!(
                    "repair: {} data and symbol packets sent ({}), {} blocks or symbols asked for but not sent (--max-repair budget spent), {} datagrams on the repair socket ignored (malformed, foreign, outside the image, or over 128 requests per address per window)",
                    r.repair_packets, report::bytes(r.repair_bytes), r.repair_refused, r.inbound.ignored
                );
            }
            live.finish(&r);
            print!("{}", send_view::table(&r));
            if !fleet.keep_status {
                remove_page(&live);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Receive {
            group,
            protocol,
            portbase,
            iface,
            out,
            name,
            mode,
            attach,
            vlan,
            xsk_copy,
            socket_gro,
            queues,
            cores,
            frames,
            ring_size,
            buffer_mib,
            max_image_size,
            session,
            start_timeout,
            idle_timeout,
            keep_status,
            recovery,
            trust,
            http,
            progress,
            stream_window_mib,
        } => {
            let group = match (group, protocol) {
                (Some(g), _) => g,
                (None, Protocol::Udpcast) => udpcast::any_group(portbase),
                (None, Protocol::Xdpcast) => {
                    return Err(invalid(
                        "--group is required with --protocol xdpcast".into(),
                    ))
                }
            };
            let name = name.unwrap_or_else(|| default_name(&group));
            let mut req = SessionRequest::new(&name, group, &iface, out);
            recovery.apply(&mut req)?;
            trust.apply(&mut req)?;
            http.apply(&mut req)?;
            req.stream_window = stream_window_mib << 20;
            req.mode = match mode {
                Mode::Auto => ModeRequest::Auto,
                Mode::Xdp => ModeRequest::Xdp,
                Mode::Socket => ModeRequest::Socket,
            };
            req.attach = match attach {
                Attach::Auto => AttachRequest::Auto,
                Attach::Native => AttachRequest::Native,
                Attach::Generic => AttachRequest::Generic,
            };
            req.xsk = XskConfig {
                frame_count: frames,
                ring_size: ring_size.unwrap_or(xdpcast::net::rings::default_ring(frames)),
                copy_mode: match xsk_copy {
                    XskCopy::Auto => CopyMode::Auto,
                    XskCopy::Zerocopy => CopyMode::ZeroCopy,
                    XskCopy::Copy => CopyMode::Copy,
                },
                ..XskConfig::default()
            };
            req.vlan = vlan;
            req.store = StoreConfig {
                buffer_bytes: buffer_mib << 20,
                max_image_size,
                ..StoreConfig::default()
            };
            req.socket_gro = match socket_gro {
                SocketGro::Auto => GroRequest::Auto,
                SocketGro::On => GroRequest::On,
                SocketGro::Off => GroRequest::Off,
            };
            req.queues = queues.and_then(|q| q.0);
            req.cores = cores;
            req.session_id = session;
            req.start_timeout = Duration::from_secs(start_timeout);
            req.idle_timeout = Duration::from_secs(idle_timeout);
            if protocol == Protocol::Udpcast {
                if req.http.is_some() {
                    bail!("--http works with xdpcast senders only");
                }
                if !req.trust.is_empty() {
                    bail!("--trust needs a signed xdpcast sender: udpcast has no signatures");
                }
                let req = UdpcastRequest::new(req, portbase);
                let pb = progress.then(|| bar(0, "receive"));
                let snap = receive_udpcast(&req, keep_status, false, &mut |s| {
                    if let Some(pb) = &pb {
                        pb.set_position(s.bytes_done);
                    }
                })?;
                if let Some(pb) = pb {
                    pb.finish_and_clear();
                }
                return Ok(exit_code(snap.state, snap.error));
            }
            receive(req, keep_status, progress)
        }
        Cmd::Manifest {
            image,
            sign,
            out,
            session,
            block_size,
            mtu,
        } => {
            let key = xdpcast::store::keys::load_signing(&sign)?;
            let block_size = block_size
                .unwrap_or_else(|| xdpcast::proto::wire::block_size_for_mtu(mtu.unwrap_or(1500)));
            if !(xdpcast::proto::wire::MIN_BLOCK_SIZE..=xdpcast::proto::wire::MAX_BLOCK_SIZE)
                .contains(&block_size)
            {
                return Err(invalid(format!("block size {block_size} out of range")));
            }
            let (m, file) = xdpcast::send::publish::offline(
                &image,
                &key,
                xdpcast::send::publish::Offline {
                    session,
                    block_size,
                },
            )?;
            let out = out.unwrap_or_else(|| xdpcast::fetch::manifest_file::path_beside(&image));
            file.write_atomic(&out)?;
            println!(
                "{}: {} chunks of {} blocks of {}, session {session:#010x}, sha256 {}",
                out.display(),
                m.chunk_count(),
                m.chunk_blocks,
                block_size,
                hex(&m.digest)
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Keygen { out, comment } => {
            let public = xdpcast::store::keys::generate(&out, &comment)?;
            println!(
                "secret key {} (keep it private), public key {}: {}",
                out.display(),
                xdpcast::store::keys::public_path(&out).display(),
                hex(public.as_bytes())
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status { name, json } => {
            if let Some(n) = name {
                // One page asked for by name: unreadable is an error.
                let s = StatusReader::open_session(&n)?.read()?;
                emit(&status_text(&s, json))?;
                return Ok(ExitCode::SUCCESS);
            }
            let entries = monitor::scan();
            if entries.is_empty() {
                emit(&format!(
                    "no sessions in {}\n",
                    report::printable(&page::status_dir().display().to_string())
                ))?;
            }
            // One bad page (another user's, truncated, stuck mid-update)
            // does not hide the others: it is named on stderr, exit 1.
            let mut unreadable = 0;
            for e in entries {
                match e.page {
                    Ok(s) => emit(&status_text(&s, json))?,
                    Err(err) => {
                        unreadable += 1;
                        eprintln!(
                            "xdpcast: status page {} unreadable: {}",
                            report::printable(&e.name),
                            report::printable(&err.to_string())
                        );
                    }
                }
            }
            Ok(if unreadable > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Cmd::Close { name, force } => {
            let path = page::page_path(&name)?;
            let s = StatusReader::open(&path)?.read()?;
            if !s.state.is_final() && !s.is_stale(page::STALE_AFTER) && !force {
                bail!(
                    "session {name} is still {} (pid {}); use --force to remove its page anyway",
                    s.state.name(),
                    s.writer_pid
                );
            }
            std::fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Monitor { once, interval_ms } => {
            monitor::monitor(Duration::from_millis(interval_ms.max(50)), once)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Metrics { print: true, .. } => {
            emit(&serve::metrics_text())?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Metrics { listen, once, .. } => {
            let listener = std::net::TcpListener::bind(listen)
                .with_context(|| format!("listen on {listen}"))?;
            println!(
                "serving metrics on http://{}/metrics",
                listener.local_addr()?
            );
            serve::serve_metrics(listener, serve::Limits::default(), once)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::UdpReceiver(a) => udp_receiver::run(a),
        Cmd::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "xdpcast", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Man { dir } => {
            write_man_pages(&dir)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Cleanup { iface } => {
            if steer::cleanup(&iface)? {
                println!("removed the XDP program from {iface}");
            } else {
                println!("no XDP program on {iface}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `xdpcast.1` and `xdpcast-COMMAND.1` for every visible command, rendered
/// by clap_mangen from the same definitions as `--help`.
/// Each page ends with an EXIT STATUS section ([`exit_status_roff`]). No
/// page for `help` (the pages are the help), and no `-V` on the command
/// pages: only `xdpcast --version` exists.
fn write_man_pages(dir: &std::path::Path) -> anyhow::Result<()> {
    let cmd = <Cli as clap::CommandFactory>::command().disable_help_subcommand(true);
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let write = |page: clap::Command, name: &str, command: &str| -> anyhow::Result<()> {
        let mut roff = Vec::new();
        clap_mangen::Man::new(page).render(&mut roff)?;
        roff.extend_from_slice(exit_status_roff(command).as_bytes());
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, roff).with_context(|| format!("write {}", path.display()))
    };
    write(cmd.clone(), "xdpcast", "")?;
    for sub in cmd.get_subcommands().filter(|c| !c.is_hide_set()) {
        let name = format!("xdpcast-{}", sub.get_name());
        let version = cmd.get_version().unwrap_or_default().to_string();
        let page = sub
            .clone()
            .name(name.clone())
            .version(version)
            .disable_version_flag(true);
        write(page, &name, sub.get_name())?;
    }
    Ok(())
}

/// The EXIT STATUS section of the man page of `command` ("" for
/// xdpcast(1)), in roff; docs/udpcast.md has the same table.
fn exit_status_roff(command: &str) -> String {
    let rows: &[(&str, &str)] = match command {
        "receive" => &[
            ("0", "the image arrived (SUCCESS)"),
            ("141", "the output closed: the consumer of \\fB--out -\\fR exited (as a process killed by SIGPIPE)"),
            ("130", "SIGINT"),
            ("143", "SIGTERM"),
            ("100 + code", "any other failure: 100 plus the error code on the status page (102 timeout, 107 sender_gone, 112 invalid_argument, ...)"),
            ("2", "a bad command line"),
        ],
        "udp-receiver" => &[
            ("0", "the image arrived"),
            ("141", "the output closed: the consumer of standard output or the \\fB--pipe\\fR command exited (as udp-receiver, killed by SIGPIPE)"),
            ("130", "SIGINT"),
            ("143", "SIGTERM"),
            ("255", "no sender answered, or sent data, within \\fB--start-timeout\\fR"),
            ("1", "any other failure, a bad command line, or a \\fB--pipe\\fR command that failed"),
        ],
        _ => &[
            ("0", "success"),
            ("100 + code", "a failure that carries an xdpcast error code (see xdpcast-status(1))"),
            ("1", "any other failure"),
            ("2", "a bad command line"),
        ],
    };
    let mut roff = String::from(".SH \"EXIT STATUS\"\n");
    for (status, when) in rows {
        roff.push_str(&format!(".TP\n\\fB{status}\\fR\n{when}\n"));
    }
    if matches!(command, "receive" | "udp-receiver") {
        roff.push_str(".PP\nIn every case but a bad command line, a udpcast receiver tells the sender it leaves.\n");
    }
    roff
}

fn receive(req: SessionRequest, keep_status: bool, progress: bool) -> anyhow::Result<ExitCode> {
    install_signal_handlers();
    let name = req.name.clone();
    let pb = progress.then(|| bar(0, "receive"));
    let pb2 = pb.clone();
    let pb3 = pb.clone();
    let callbacks = Callbacks {
        on_start: Some(Box::new(move |total, _| {
            if let Some(pb) = &pb2 {
                pb.set_length(total);
            }
        })),
        on_progress: Some(Box::new(move |s| {
            if let Some(pb) = &pb3 {
                pb.set_position(s.bytes_done);
                pb.set_message(format!("{} drops", s.rejected()));
            }
        })),
        on_complete: None,
    };
    let mut session = Session::initialize(req, callbacks)?;
    // Why auto mode did not take XDP was logged where it was decided.
    session.start()?;
    log::info!(
        target: NOTES,
        "receiving on the {} path; status page {}",
        session.mode().name(),
        page::writer_page_path(&name)?.display()
    );
    let (state, code) = loop {
        match session.wait_for_completion(Some(Duration::from_millis(100))) {
            Ok(done) => break done,
            Err(e) if e.code == ErrorCode::Timeout => {
                if SIGNALLED.load(Ordering::Relaxed) {
                    session.cancel()?;
                }
            }
            Err(e) => return Err(e.into()),
        }
    };
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    let snap = StatusReader::open(&page::writer_page_path(&name)?)?.read()?;
    print_report(&snap, &snap.target);
    if keep_status {
        session.detach_status_page();
    } else {
        session.close()?;
    }
    Ok(exit_code(state, code))
}

/// The final report: on stdout, unless stdout carries the image
/// (`target` is `-`).
fn print_report(snap: &Snapshot, target: impl AsRef<std::path::Path>) {
    if stream::is_stdout(target.as_ref()) {
        eprint!("{}", report::human(snap));
    } else {
        // The session has ended: a reader gone from stdout changes nothing.
        let _ = emit(&report::human(snap));
    }
}

/// Write `text` to stdout. A reader that has gone (`xdpcast status | head`)
/// is not an error: what it wanted it has.
/// A page as `xdpcast status` prints it: one JSON line, or the lines for
/// people with `STALE` after the first when the writer is gone or silent.
fn status_text(s: &Snapshot, json: bool) -> String {
    if json {
        return format!("{}\n", report::json(s));
    }
    let stale = if s.is_stale(page::STALE_AFTER) {
        "  (STALE: the receiver is gone)"
    } else {
        ""
    };
    report::human(s).replacen('\n', &format!("{stale}\n"), 1)
}

fn emit(text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

/// Remove the sender's status page (a failure to is only warned about:
/// the sending is over).
fn remove_page(live: &send_view::Live) {
    if let Some(Err(e)) = live.page().map(|p| p.remove()) {
        log::warn!("{e}");
    }
}

fn exit_code(state: State, code: ErrorCode) -> ExitCode {
    if state == State::Success {
        ExitCode::SUCCESS
    } else if let Some(outside) = outside_exit(state, code) {
        outside
    } else {
        ExitCode::from(EXIT_FAILURE_BASE + code as u8)
    }
}

/// `receive --protocol udpcast` and `udp-receiver`: the handshake,
/// transfer and status page all run in `udpcast::receive` on this thread,
/// which calls `on_progress` with each update. Each new message of the
/// page is a note; the final report goes to stderr with `report_to_stderr`
/// (udp-receiver), else as [`print_report`] says.
fn receive_udpcast(
    req: &UdpcastRequest,
    keep_status: bool,
    report_to_stderr: bool,
    on_progress: &mut dyn FnMut(&Snapshot),
) -> anyhow::Result<Snapshot> {
    install_signal_handlers();
    let page = page::writer_page_path(&req.session.name)?;
    log::info!(
        target: NOTES,
        "udpcast receiver on port {}; status page {}",
        req.portbase,
        page.display()
    );
    let mut said = String::new();
    let snap = udpcast::receive(req, &SIGNALLED, &mut |s| {
        if s.state == State::InProgress && s.message != said {
            said.clone_from(&s.message);
            log::info!(target: NOTES, "{said}");
        }
        on_progress(s);
    })?;
    if report_to_stderr {
        eprint!("{}", report::human(&snap));
    } else {
        print_report(&snap, &req.session.target);
    }
    if !keep_status {
        std::fs::remove_file(&page).with_context(|| format!("remove {}", page.display()))?;
    }
    Ok(snap)
}
