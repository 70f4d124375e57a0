//! `xdpcast receive`: its options, the session it runs (xdpcast or udpcast
//! sender), its progress bar and final report.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::ValueEnum;

use xdpcast::net::rings::{CopyMode, XskConfig};
use xdpcast::net::socket::{GroRequest, Group};
use xdpcast::net::steer::AttachRequest;
use xdpcast::receive::udpcast::{self, UdpcastRequest};
use xdpcast::status::page::{self, Snapshot, StatusReader};
use xdpcast::status::report;
use xdpcast::store::stream;
use xdpcast::store::writer::StoreConfig;
use xdpcast::{Callbacks, ErrorCode, ModeRequest, Session, SessionRequest, State};

use crate::exit::{exit_code, install_signal_handlers, SIGNALLED};
use crate::ui::{bar, default_name, emit, invalid, NOTES};

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Mode {
    Auto,
    Xdp,
    Socket,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
pub(crate) enum Protocol {
    Xdpcast,
    Udpcast,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Attach {
    Auto,
    Native,
    Generic,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum SocketGro {
    Auto,
    On,
    Off,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum XskCopy {
    Auto,
    Zerocopy,
    Copy,
}

/// The options of `xdpcast receive`.
#[derive(clap::Args)]
pub(crate) struct ReceiveArgs {
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
    /// With `--trust`: threads that check the signatures of the manifest,
    /// its pages and the signed ends, and hash the chunks of a stream
    /// (`--out -`), so that no worker does. One core hashes BLAKE3 several
    /// times faster than a 10 GbE link brings data; a file or device's
    /// chunks are hashed by the staging writer's thread.
    #[arg(long, default_value_t = xdpcast::receive::checks::DEFAULT_THREADS as u16, value_parser = clap::value_parser!(u16).range(1..=64))]
    hash_threads: u16,
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
    /// After the sender's passes, HTTP rather than NACK rounds only while
    /// at most this percent of the receivers that hear the group lack much
    /// (or at most 2 of them), as the sender's end packets say: when many
    /// do, one repair round serves them all. A sender that says nothing
    /// leaves it to --http-repair-percent alone.
    #[arg(long, value_name = "PERCENT", default_value_t = 25.0)]
    http_repair_few: f64,
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
    /// A PEM file of certificate authorities trusted for https:// URLs in
    /// addition to Mozilla's roots (a lab's own CA).
    #[arg(long, value_name = "FILE")]
    http_ca: Option<std::path::PathBuf>,
    /// Fetch nothing over HTTP, not even from URLs the signed manifest
    /// names (send --http-url); without --http those are used.
    #[arg(long, conflicts_with = "http")]
    no_http: bool,
}

impl ReceiveHttp {
    fn apply(&self, r: &mut SessionRequest) -> anyhow::Result<()> {
        // No URL given: a signed session's head may name some (only a
        // signed one: an unsigned session cannot start from HTTP or name
        // where to fetch).
        if self.no_http || (self.http.is_empty() && r.trust.is_empty()) {
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
        if !(0.0..=100.0).contains(&self.http_repair_few) {
            return Err(invalid("--http-repair-few must be 0..100".into()));
        }
        let mut h = xdpcast::receive::request::HttpRequest::new(self.http.clone());
        h.after = Duration::from_secs(self.http_after);
        h.parallel = self.http_parallel as usize;
        h.jitter = Duration::from_millis(self.http_jitter_ms);
        h.repair.share = self.http_repair_percent / 100.0;
        h.repair.few = self.http_repair_few / 100.0;
        h.timeout = Duration::from_secs(self.http_timeout.max(1));
        h.range_bytes = self.http_range_kib << 10;
        h.max_failures = self.http_max_failures;
        if let Some(path) = &self.http_ca {
            h.extra_roots = read_ca(path)?;
        }
        r.http = Some(h);
        Ok(())
    }
}

/// The certificates of the PEM file at `path` (`--http-ca`), read once at
/// the start (at most 1 MiB) so that a wrong file is an error before the
/// session, not a refusal of every HTTPS server later.
fn read_ca(path: &std::path::Path) -> anyhow::Result<Vec<Vec<u8>>> {
    use std::io::Read as _;
    let mut pem = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(1 << 20).read_to_end(&mut pem))
        .map_err(|e| invalid(format!("--http-ca {}: {e}", path.display())))?;
    xdpcast::fetch::http::pem_certificates(&pem)
        .map_err(|e| invalid(format!("--http-ca {}: {e}", path.display())))
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

/// Bytes with an optional K/M/G/T suffix (powers of 1024).
pub(crate) fn parse_bytes(s: &str) -> Result<u64, String> {
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

/// Receive as `xdpcast receive` does; the exit status follows the session's end.
pub(crate) fn run(a: ReceiveArgs) -> anyhow::Result<ExitCode> {
    let ReceiveArgs {
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
        hash_threads,
    } = a;
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
    req.hash_threads = usize::from(hash_threads);
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
        if !req.trust.is_empty() {
            bail!("--trust needs a signed xdpcast sender: udpcast has no signatures");
        }
        if req.http.is_some() {
            bail!("--http works with xdpcast senders only");
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

/// `receive --protocol udpcast` and `udp-receiver`: the handshake,
/// transfer and status page all run in `udpcast::receive` on this thread,
/// which calls `on_progress` with each update. Each new message of the
/// page is a note; the final report goes to stderr with `report_to_stderr`
/// (udp-receiver), else as [`print_report`] says.
pub(crate) fn receive_udpcast(
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
