//! `xdpcast send`: its options, the sending run with its progress bar and
//! status page, and the final report.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use xdpcast::net::socket::Group;
use xdpcast::send::sender::{self, SendOptions};
use xdpcast::send::view as send_view;
use xdpcast::status::page::{self, StatusWriter};
use xdpcast::status::report;

use crate::ui::{bar, default_name, invalid, NOTES};

/// Smallest `send --mtu`: the smallest block with its IPv4, UDP and xdpcast headers.
pub(crate) const MIN_MTU: i64 = (xdpcast::proto::wire::MIN_BLOCK_SIZE as usize
    + xdpcast::proto::wire::IPV4_UDP_OVERHEAD
    + xdpcast::proto::wire::HEADER_LEN) as i64;

/// The options of `xdpcast send`.
#[derive(clap::Args)]
pub(crate) struct SendArgs {
    /// File or block device to send; `-`: standard input (a pipe is kept
    /// in an unlinked file in TMPDIR, sent while it is read with --size,
    /// else read to its end first: the size goes in every packet).
    file: PathBuf,
    /// With FILE `-`: the size of the image on standard input (bytes, or
    /// with a K/M/G/T suffix), so that the first packet leaves at once; an
    /// input of another size fails the send before the end of its first
    /// pass.
    #[arg(long, value_name = "SIZE", value_parser = crate::receive::parse_bytes)]
    size: Option<u64>,
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
    /// Send one datagram per sendmmsg message instead of UDP GSO
    /// messages of up to 64 blocks each cut by the kernel (GSO is used
    /// wherever the kernel takes it).
    #[arg(long)]
    no_gso: bool,
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
    /// With --sign: hash the image with SHA-256 too and send it in the
    /// signed ends, for receivers with --expect-sha256, older receivers or
    /// receivers without --trust. Without it a signed session's ends carry
    /// the root of its chunk hashes, which costs no extra pass of the CPU
    /// over the image (a kept manifest file naming the SHA-256 gives it
    /// without one; docs/security.md).
    #[arg(long, requires = "sign")]
    sha256: bool,
    /// With --sign: write no manifest file.
    #[arg(long, conflicts_with = "manifest_file")]
    no_manifest_file: bool,
    /// With --sign: a URL of the same image on a web server (repeatable),
    /// named in the signed manifest: receivers given no --http fetch from
    /// it what multicast does not bring (docs/http.md).
    #[arg(long, value_name = "URL", requires = "sign")]
    http_url: Vec<String>,
    #[command(flatten)]
    fleet: SendFleet,
    /// Show a progress bar (with the receivers' states).
    #[arg(long)]
    progress: bool,
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
    /// Blocks per FEC group, for --fec and for parity repair (1..=2048;
    /// default 64 with --fec, else 2048: larger groups make a repair round
    /// for many receivers cost closer to their average loss, bursty loss
    /// included).
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

/// Send `a.file` as `xdpcast send` does; exits 0 when the sending is done.
pub(crate) fn run(a: SendArgs) -> anyhow::Result<ExitCode> {
    let SendArgs {
        file,
        size,
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
        no_gso,
        repair,
        sign,
        sha256,
        manifest_file,
        no_manifest_file,
        http_url,
        fleet,
        progress,
    } = a;
    if let Some(mtu) = mtu {
        let have = xdpcast::net::socket::iface_mtu(&iface)?;
        if mtu > have {
            return Err(invalid(format!(
                    "--mtu {mtu} is larger than the MTU of {iface} ({have}): the frames would be fragmented, which receivers drop"
                )));
        }
    }
    if size.is_some() && file != Path::new("-") {
        return Err(invalid(
            "--size is for standard input (FILE -): a file's size is known".into(),
        ));
    }
    let mut opts = SendOptions::new(group, &iface);
    opts.stdin_size = size;
    opts.sparse = !no_sparse;
    opts.gso = !no_gso;
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
    opts.sha256 = sha256;
    opts.http_urls = http_url;
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
            "sent {} in {} packets ({passes} pass(es), {} repair round(s) of {} packets for {} NACKs and {} parity requests, session {:#010x}, {} blocks of {}) in {secs:.2} s, {}; skipped {} of zeros in {} runs (zero scan {:.1} ms/GB{}); {}",
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
            r.read_time
                .map(|t| format!(", read {:.2} s", t.as_secs_f64()))
                .unwrap_or_default(),
            r.digest.describe()
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

/// Remove the sender's status page (a failure to is only warned about:
/// the sending is over).
fn remove_page(live: &send_view::Live) {
    if let Some(Err(e)) = live.page().map(|p| p.remove()) {
        log::warn!("{e}");
    }
}
