//! `--part e2e`: deployment time, what a lab waits for. From the sender's
//! start to the receiver's verified SUCCESS (the receiver's exit for
//! xdpcast, which verifies the image itself; the end of `sha256sum` over
//! udp-receiver's output for udpcast), unpaced, for:
//!
//! - xdpcast unsigned and signed (`send --min-receivers 1`, XDP path);
//! - xdpcast `receive --protocol udpcast` (XDP path) fed by udpcast's own
//!   `udp-sender --nopointopoint`;
//! - udpcast itself: `udp-sender` to `udp-receiver`, then `sha256sum`;
//!
//! into a tmpfs file, an ext4 file and a loop device, per image size. The
//! path's own limit is measured in the same run: the bench's `blast`
//! (`--no-gso`, one datagram per frame, its own time from the first to the
//! last datagram) into the receiving namespace with no receiver at all (the
//! veth only counts the frames). Every row gives its ratio to that limit
//! and to udpcast's time on the same target, the time to the first data at
//! the receiver (status page heartbeat, or udp-receiver's output growing;
//! not seen on a loop device), each sender's CPU per GB of image (xdpcast
//! send's beside udp-sender's) and which side's CPU was the limit.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde::Serialize;
use xdpcast::proto::wire::hex;
use xdpcast::status::page::now_ns;
use xdpcast_bench::netns::VethPair;

use super::harness::*;
use super::runs::{
    busier_side, spawn_udp_receiver, start_receiver, start_receiver_for, start_sender,
};

/// How the image is deployed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Way {
    Unsigned,
    Signed,
    UdpSenderToXdpcast,
    Udpcast,
}

impl Way {
    const ALL: [Way; 4] = [
        Way::Unsigned,
        Way::Signed,
        Way::UdpSenderToXdpcast,
        Way::Udpcast,
    ];

    fn name(self) -> &'static str {
        match self {
            Way::Unsigned => "xdpcast unsigned",
            Way::Signed => "xdpcast signed",
            Way::UdpSenderToXdpcast => "udp-sender → xdpcast --protocol udpcast",
            Way::Udpcast => "udpcast + sha256sum",
        }
    }
}

/// What one deployment measured (in `results.json` under these names).
#[derive(Debug, Serialize)]
pub(super) struct Deployment {
    /// Sender start to verified SUCCESS, seconds.
    total_s: f64,
    /// Sender start to the first data seen at the receiver, seconds.
    first_data_s: Option<f64>,
    /// Sender CPU (user + system), seconds.
    tx_cpu_s: f64,
    /// Receiver CPU, verification (`sha256sum` for udpcast) included.
    rx_cpu_s: f64,
}

impl Deployment {
    fn bottleneck(&self) -> String {
        let t = self.total_s.max(1e-9);
        busier_side(self.tx_cpu_s / t, self.rx_cpu_s / t)
    }
}

/// The runs of one way, target and size.
#[derive(Debug, Serialize)]
pub(super) struct Row {
    way: &'static str,
    target: &'static str,
    image_bytes: u64,
    runs: Vec<std::result::Result<Deployment, String>>,
}

impl Row {
    fn ok(&self) -> Vec<&Deployment> {
        self.runs.iter().filter_map(|r| r.as_ref().ok()).collect()
    }

    fn median(&self, f: impl Fn(&Deployment) -> f64) -> Option<f64> {
        median(&self.ok().into_iter().map(f).collect::<Vec<_>>())
    }

    fn spread(&self, prec: usize, f: impl Fn(&Deployment) -> Option<f64>) -> String {
        spread(
            &self.ok().into_iter().filter_map(f).collect::<Vec<_>>(),
            prec,
        )
    }
}

/// The path's limit at one size: blast's times and the share of its
/// frames the receiving veth counted.
#[derive(Debug, Serialize)]
pub(super) struct Limit {
    image_bytes: u64,
    secs: Vec<f64>,
    received: Vec<f64>,
    errors: Vec<String>,
}

/// The part's measurements, as `results.json` lists them under `e2e`.
#[derive(Debug, Default, Serialize)]
pub(super) struct Results {
    /// One per way, target and size, each with its runs.
    rows: Vec<Row>,
    /// The path's limit, per size.
    limits: Vec<Limit>,
}

/// Run the part for every size (bytes) and target, `runs` times each:
/// its markdown section and its measurements.
pub(super) fn run(
    base: &Ctx,
    sizes: &[u64],
    targets: &[TargetKind],
    runs: usize,
) -> Result<(String, Results)> {
    let net = VethPair::new(1, 1500);
    let disk = WorkDir::on_disk("e2e")?;
    let key = base.work.join("e2e.key");
    let xdpcast = base.bin.join("xdpcast");
    cmd_ok(
        &xdpcast.to_string_lossy(),
        &["keygen", "--out", &key.to_string_lossy()],
    )?;
    let mut md = String::from(
        "### Deployment time (end to end)\n\n\
         From the sender's start to the receiver's verified SUCCESS, unpaced, MTU 1500, \
         sender on CPU 0 and receiver on CPU 1 (docs/benchmarks.md, \"Deployment time\"). \
         \"× limit\": the time over the path's limit (blast, one datagram per frame, into \
         a namespace that only counts the frames); \"× udpcast\": over udpcast's time on \
         the same target. Goal (issue 23): signed ≤ 1.15× limit and ≤ 0.5× udpcast.\n",
    );
    let mut results = Results::default();
    for &size in sizes {
        ensure_room(size, &base.work, &disk.0)?;
        let image = base.work.join("e2e-image");
        eprintln!("bench: e2e: writing a {} MiB random image", size >> 20);
        let mut src = std::io::Read::take(std::fs::File::open("/dev/urandom")?, size);
        std::io::copy(&mut src, &mut std::fs::File::create(&image)?)?;
        let ctx = Ctx {
            bin: base.bin.clone(),
            work: base.work.clone(),
            digest: sha256sum(&image, &base.work.join("sha.log"))?.0,
            image: image.clone(),
            size,
            rate_mbps: None,
            timeout: base.timeout.max(Duration::from_secs(size >> 24)),
        };
        let mut limit = Limit {
            image_bytes: size,
            secs: Vec::new(),
            received: Vec::new(),
            errors: Vec::new(),
        };
        for i in 0..runs {
            check_interrupt()?;
            eprintln!("bench: e2e {} MiB, path limit, run {}", size >> 20, i + 1);
            match blast_limit(&ctx, &net) {
                Ok((s, r)) => {
                    limit.secs.push(s);
                    limit.received.push(r);
                }
                Err(e) => limit.errors.push(format!("{e:#}")),
            }
        }
        let mut size_rows = Vec::new();
        for &kind in targets {
            let (target, lo) = Target::new(kind, &ctx, &disk, "e2e.img")?;
            for way in Way::ALL {
                let mut row = Row {
                    way: way.name(),
                    target: kind.name(),
                    image_bytes: size,
                    runs: Vec::new(),
                };
                for i in 0..runs {
                    check_interrupt()?;
                    eprintln!(
                        "bench: e2e {} MiB, {}, {}, run {}",
                        size >> 20,
                        kind.name(),
                        way.name(),
                        i + 1
                    );
                    if let Some(l) = &lo {
                        l.drop_cache()?;
                    }
                    let r = deploy(&ctx, &net, way, &target, &key);
                    check_interrupt()?;
                    if let Err(e) = &r {
                        eprintln!("bench:   failed: {e:#}");
                    }
                    row.runs.push(r.map_err(|e| format!("{e:#}")));
                }
                size_rows.push(row);
            }
            if target.dev_stat.is_none() {
                let _ = std::fs::remove_file(&target.path);
            }
        }
        let _ = std::fs::remove_file(&image);
        md += &section(size, &limit, &size_rows);
        results.rows.extend(size_rows);
        results.limits.push(limit);
    }
    Ok((md, results))
}

/// One deployment of `ctx.image` the `way` given, into `target`.
fn deploy(ctx: &Ctx, net: &VethPair, way: Way, target: &Target, key: &Path) -> Result<Deployment> {
    if target.dev_stat.is_none() {
        let _ = std::fs::remove_file(&target.path);
    }
    match way {
        Way::Unsigned => xdpcast(ctx, net, target, None),
        Way::Signed => xdpcast(ctx, net, target, Some(key)),
        Way::UdpSenderToXdpcast => udp_sender_to_xdpcast(ctx, net, target),
        Way::Udpcast => udpcast(ctx, net, target),
    }
}

fn secs(from_ns: u64, to_ns: u64) -> f64 {
    to_ns.saturating_sub(from_ns) as f64 / 1e9
}

/// blast's time for one pass of the image and the share of its datagrams
/// the receiving veth counted.
fn blast_limit(ctx: &Ctx, net: &VethPair) -> Result<(f64, f64)> {
    let bin = ctx.bin.join("xdpcast-bench");
    let (bin, image) = (bin.to_string_lossy(), ctx.image.to_string_lossy());
    let rx0 = rx_counter(net, "rx_packets")?;
    let argv = [
        &*bin, "blast", &image, "--group", GROUP, "--iface", &net.if_a, "--no-gso",
    ];
    let mut tx = start_sender(ctx, net, &argv, "blast-e2e.log")?;
    let e = tx.wait(ctx.timeout);
    ensure!(e.success(), "blast failed: {}", tx.last_line());
    let log = tx.output();
    let secs = field(&log, "secs").context("blast printed no time")?;
    let sent = field(&log, "packets").context("blast printed no count")?;
    let got = rx_counter(net, "rx_packets")? - rx0;
    Ok((secs, got as f64 / sent.max(1.0)))
}

/// Follow an xdpcast receiver (`rx`, page `reader`, writing `target`)
/// started before the sender `tx` (started at `t0`) to its exit; the image
/// it reports must be `ctx`'s. A signed session whose sender sent the root
/// of the chunk hashes instead of a SHA-256 reports that root: the bench
/// then reads the target back itself, after the clock stopped.
fn finish_xdpcast(
    ctx: &Ctx,
    (mut rx, reader): (Proc, xdpcast::status::page::StatusReader),
    target: &Target,
    mut tx: Proc,
    t0: u64,
) -> Result<Deployment> {
    let (exit, samples) = follow(&reader, &mut rx, ctx.timeout)?;
    let s = reader.read()?;
    ensure!(
        exit.success(),
        "receiver failed ({}): {}",
        exit.describe(),
        s.message
    );
    let tx_exit = tx.wait(Duration::from_secs(60));
    ensure!(tx_exit.success(), "sender failed: {}", tx.last_line());
    let landed = match s.image_digest() {
        Some(("root", _)) => sha256_of(&target.path, ctx.size, &ctx.work.join("sha.log"))?.0,
        _ => hex(&s.digest),
    };
    ensure!(
        landed == ctx.digest,
        "the receiver's image has SHA-256 {landed}"
    );
    Ok(Deployment {
        total_s: secs(t0, exit.at_ns),
        first_data_s: samples.iter().find(|s| s.1 > 0).map(|s| secs(t0, s.0)),
        tx_cpu_s: tx_exit.cpu_s,
        rx_cpu_s: exit.cpu_s,
    })
}

/// `xdpcast send --min-receivers 1` (signed with `key`) to `xdpcast
/// receive --mode xdp` (`--trust` its public key).
fn xdpcast(ctx: &Ctx, net: &VethPair, target: &Target, key: Option<&Path>) -> Result<Deployment> {
    let public = key.map(|k| format!("{}.pub", k.display()));
    let mut extra = vec!["--mode", "xdp"];
    if let Some(p) = &public {
        extra.extend(["--trust", p]);
    }
    let rx = start_receiver(ctx, net, "e2e", &target.path, &extra)?;
    let bin = ctx.bin.join("xdpcast");
    let (bin, image) = (bin.to_string_lossy(), ctx.image.to_string_lossy());
    let key = key.map(|k| k.to_string_lossy());
    let mut argv = vec![
        &*bin,
        "send",
        &image,
        "--group",
        GROUP,
        "--iface",
        &net.if_a,
        "--min-receivers",
        "1",
    ];
    if let Some(k) = &key {
        argv.extend(["--sign", k]);
    }
    let t0 = now_ns();
    let tx = start_sender(ctx, net, &argv, "tx-e2e.log")?;
    finish_xdpcast(ctx, rx, target, tx, t0)
}

/// udpcast's `udp-sender` to `xdpcast receive --protocol udpcast --mode xdp`.
fn udp_sender_to_xdpcast(ctx: &Ctx, net: &VethPair, target: &Target) -> Result<Deployment> {
    let rx = start_receiver_for(
        ctx,
        net,
        "e2e-udpc",
        &target.path,
        &[
            "--protocol",
            "udpcast",
            "--portbase",
            UDPCAST_PORTBASE,
            "--mode",
            "xdp",
        ],
    )?;
    let image = ctx.image.to_string_lossy();
    let t0 = now_ns();
    let mut argv = udp_sender_argv(&image, net);
    argv.push("--nopointopoint");
    let tx = start_sender(ctx, net, &argv, "tx-e2e.log")?;
    finish_xdpcast(ctx, rx, target, tx, t0)
}

/// `udp-sender` to `udp-receiver --file`, then `sha256sum` of what landed.
fn udpcast(ctx: &Ctx, net: &VethPair, target: &Target) -> Result<Deployment> {
    let out = target.path.to_string_lossy();
    let mut rx = spawn_udp_receiver(ctx, net, &out, "rx-e2e-udpcast.log")?;
    let image = ctx.image.to_string_lossy();
    let t0 = now_ns();
    let mut argv = udp_sender_argv(&image, net);
    argv.extend(["--mcast-rdv-address", UDPCAST_RDV]);
    let mut tx = start_sender(ctx, net, &argv, "tx-e2e.log")?;
    let mut first = None;
    let exit = until_exit(&mut rx, ctx.timeout, "image", || {
        if first.is_none() && file_len(&target.path) > 0 {
            first = Some(now_ns());
        }
        Ok(())
    })?;
    ensure!(
        exit.success(),
        "udp-receiver failed ({}): {}",
        exit.describe(),
        rx.last_line()
    );
    let (digest, sha) = sha256_of(&target.path, ctx.size, &ctx.work.join("sha.log"))?;
    ensure!(
        digest == ctx.digest,
        "udpcast image differs: sha256 {digest}"
    );
    let tx_exit = tx.wait(Duration::from_secs(10));
    Ok(Deployment {
        total_s: secs(t0, sha.at_ns),
        first_data_s: first.map(|f| secs(t0, f)),
        tx_cpu_s: tx_exit.cpu_s,
        rx_cpu_s: exit.cpu_s + sha.cpu_s,
    })
}

/// SHA-256 of the first `len` bytes at `path` (a block device holds more
/// than the image), as a lab would check it.
fn sha256_of(path: &Path, len: u64, log: &Path) -> Result<(String, Exit)> {
    if std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
        return sha256sum(path, log);
    }
    let cmd = format!("head -c {len} {} | sha256sum", path.display());
    digest_by(&["sh", "-c", &cmd], log)
}

/// The markdown of one size: the path's limit, then a row per target and way.
fn section(size: u64, limit: &Limit, rows: &[Row]) -> String {
    let gbit = |s: f64| size as f64 * 8.0 / s.max(1e-9) / 1e9;
    let mut t = format!("\n#### {} MiB image\n\n", size >> 20);
    let lim = median(&limit.secs);
    match lim {
        Some(l) => {
            let _ = writeln!(
                t,
                "Path limit (blast, {} runs): {} s, {:.2} Gbit/s; frames counted by the \
                 receiving veth: {} %.\n",
                limit.secs.len(),
                spread(&limit.secs, 2),
                gbit(l),
                spread(
                    &limit.received.iter().map(|r| r * 100.0).collect::<Vec<_>>(),
                    1
                )
            );
        }
        None => {
            let e = limit.errors.first().map_or("", String::as_str);
            let _ = writeln!(t, "Path limit: not measured ({e}).\n");
        }
    }
    t += "| target | deployment | runs | sender start → verified SUCCESS, s | × limit | × udpcast | first data, s | sender CPU, s | sender CPU, s/GB | receiver CPU, s | bottleneck |\n\
          |---|---|---|---|---|---|---|---|---|---|---|\n";
    let gb = size as f64 / 1e9;
    let ratio = |v: Option<f64>, base: Option<f64>| match (v, base) {
        (Some(v), Some(b)) => format!("{:.2}", v / b),
        _ => "-".into(),
    };
    for r in rows {
        let total = r.median(|d| d.total_s);
        let udpcast = rows
            .iter()
            .find(|u| u.target == r.target && u.way == Way::Udpcast.name())
            .and_then(|u| u.median(|d| d.total_s));
        let Some(first) = r.ok().first().copied() else {
            let e = r.runs.iter().find_map(|x| x.as_ref().err());
            let _ = writeln!(
                t,
                "| {} | {} | 0/{} | failed: {} | | | | | | | |",
                r.target,
                r.way,
                r.runs.len(),
                e.map_or("", String::as_str)
                    .replace('|', "/")
                    .replace('\n', " ")
            );
            continue;
        };
        let _ = writeln!(
            t,
            "| {} | {} | {}/{} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.target,
            r.way,
            r.ok().len(),
            r.runs.len(),
            r.spread(2, |d| Some(d.total_s)),
            ratio(total, lim),
            ratio(total, udpcast),
            r.spread(3, |d| d.first_data_s),
            r.spread(2, |d| Some(d.tx_cpu_s)),
            r.spread(2, |d| Some(d.tx_cpu_s / gb)),
            r.spread(2, |d| Some(d.rx_cpu_s)),
            first.bottleneck(),
        );
    }
    t
}

/// Fail early, with what is missing, when one size cannot fit: the image
/// and a tmpfs target in `work` (tmpfs, so also in memory), and an ext4
/// target or a loop device's backing file (one at a time, a little larger
/// than the image) in `disk`.
fn ensure_room(size: u64, work: &Path, disk: &Path) -> Result<()> {
    let margin = 256 << 20;
    for (dir, need, what) in [
        (work, 2 * size + margin, "the image and a tmpfs target"),
        (
            disk,
            size + margin,
            "an ext4 target or a loop device's backing file",
        ),
    ] {
        let free = free_bytes(dir)?;
        ensure!(
            free >= need,
            "{} MiB image: {what} need {} MiB in {}, {} MiB free",
            size >> 20,
            need >> 20,
            dir.display(),
            free >> 20
        );
    }
    Ok(())
}

/// Bytes an unprivileged writer may still write in the file system of `dir`.
fn free_bytes(dir: &Path) -> Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    // SAFETY: an all-zero statvfs is a valid value for the call to fill.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a writable statvfs,
    // both alive for the call.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    ensure!(
        rc == 0,
        "statvfs {}: {}",
        dir.display(),
        std::io::Error::last_os_error()
    );
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Image sizes of the part: `--e2e-sizes` MiB, else 128 MiB with `--quick`,
/// else 1 GiB and 4 GiB.
pub(super) fn sizes(mib: &Option<Vec<u64>>, quick: bool) -> Vec<u64> {
    let mib = mib
        .clone()
        .unwrap_or(if quick { vec![128] } else { vec![1024, 4096] });
    mib.into_iter().map(|m| m << 20).collect()
}
