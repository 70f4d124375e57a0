//! One measured run of the comparison and keep-up parts: an xdpcast receive
//! fed by the blast sender, or udpcast's own pair; what each run measured.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use xdpcast::status::page::{now_ns, State, StatusReader};
use xdpcast_bench::netns::VethPair;

use super::harness::*;

/// Which receiver a run measures.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Receiver {
    Xdp,
    /// `recvmmsg`, one datagram per message (`--socket-gro off`).
    Socket,
    /// `recvmmsg` with `UDP_GRO` (`--socket-gro on`), GRO on the veth.
    SocketGro,
    Udpcast,
    /// The XDP path fed by the real `xdpcast send` (keep-up part), unsigned:
    /// the receiver checks the image's SHA-256 by reading the target back.
    Send,
    /// The same, `send --sign` and `receive --trust`: each chunk checked
    /// from the staging buffer, nothing read back.
    Signed,
}

impl Receiver {
    pub(super) const ALL: [Receiver; 4] = [
        Receiver::Xdp,
        Receiver::Socket,
        Receiver::SocketGro,
        Receiver::Udpcast,
    ];

    pub(super) fn name(self) -> &'static str {
        match self {
            Receiver::Xdp => "xdpcast XDP",
            Receiver::Socket => "xdpcast socket",
            Receiver::SocketGro => "xdpcast socket+GRO",
            Receiver::Udpcast => "udpcast",
            Receiver::Send => "xdpcast XDP, send",
            Receiver::Signed => "xdpcast XDP, send --sign",
        }
    }

    /// The receiver's `--mode`.
    fn mode(self) -> &'static str {
        match self {
            Receiver::Socket | Receiver::SocketGro => "socket",
            _ => "xdp",
        }
    }
}

/// GRO on the receiving veth, for the socket+GRO row, as a NIC does it:
/// `gro on`; `rx-udp-gro-forwarding on`, without which a veth whose peer
/// has TSO passes locally sent frames around its NAPI (and so around GRO);
/// and threaded NAPI, so that the poll runs in its own kernel thread and
/// finds several frames to merge, as a NIC's poll does after an interrupt
/// (in softirq right after each transmit it finds one). All off again on
/// drop. The NAPI thread's CPU is not softirq time: [`VethGro::cpu_s`].
pub(super) struct VethGro<'a>(&'a VethPair);

impl<'a> VethGro<'a> {
    pub(super) fn on(net: &'a VethPair) -> Result<VethGro<'a>> {
        let g = VethGro(net);
        g.set("on", "1")?;
        Ok(g)
    }

    pub(super) fn set(&self, v: &str, threaded: &str) -> Result<()> {
        let (ns, dev) = (&self.0.b.name, &self.0.if_b);
        let k = ["gro", v, "rx-udp-gro-forwarding", v];
        cmd_ok(
            "ip",
            &[&["netns", "exec", ns, "ethtool", "-K", dev][..], &k].concat(),
        )?;
        let t = format!("echo {threaded} > /sys/class/net/{dev}/threaded");
        cmd_ok("ip", &["netns", "exec", ns, "sh", "-c", &t])?;
        Ok(())
    }

    /// CPU seconds of the veth's NAPI kernel threads (`napi/DEV-ID`) so far.
    pub(super) fn cpu_s(&self) -> f64 {
        let prefix = format!("napi/{}-", self.0.if_b);
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return 0.0;
        };
        let ticks: u64 = procs
            .flatten()
            .filter(|e| {
                std::fs::read_to_string(e.path().join("comm"))
                    .is_ok_and(|c| c.trim_end().starts_with(&prefix))
            })
            .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
            .filter_map(|st| {
                // Fields after the ")" of the command: utime and stime are
                // the 12th and 13th.
                let rest = st.rsplit_once(')')?.1;
                let f: Vec<&str> = rest.split_whitespace().collect();
                Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
            })
            .sum();
        ticks as f64 / 100.0
    }
}

impl Drop for VethGro<'_> {
    fn drop(&mut self) {
        let _ = self.set("off", "0");
    }
}

/// What one run measured (in `results.json` under these names).
#[derive(Debug, Serialize)]
pub(super) struct Metrics {
    /// Data path as reported by the receiver.
    pub(super) path: String,
    /// First block to last block, seconds.
    pub(super) receive_s: f64,
    /// First block to verified image, seconds.
    pub(super) verified_s: f64,
    /// Packets the receiver took in during the receive.
    pub(super) packets: u64,
    /// Receiver CPU (user + system), seconds, verification included.
    pub(super) rx_cpu_s: f64,
    /// Sender CPU seconds and wall seconds.
    pub(super) tx_cpu_s: f64,
    pub(super) tx_wall_s: f64,
    /// What the sender offered, Gbit/s of image data (blast only).
    pub(super) offered_gbps: Option<f64>,
    /// Softirq time over all CPUs during the run (/proc/stat), seconds.
    pub(super) softirq_s: f64,
    /// Loss before repair, fraction, and how it was counted.
    pub(super) loss: f64,
    /// Mean packets per worker batch (xdpcast).
    pub(super) batch: Option<f64>,
    /// Batch wall time p50, p99, p99.9 in ns, from the live workers'
    /// histograms on the status page (xdpcast; the slowest worker's).
    pub(super) batch_ns: Option<[u64; 3]>,
    /// Frames the kernel dropped before the worker saw them (AF_XDP
    /// rx_ring_full + rx_dropped, all sockets).
    pub(super) ring_drops: Option<u64>,
    /// Times the kernel found a fill ring empty.
    pub(super) fill_empty: Option<u64>,
    /// Bytes read from the target's device from the sender's start until
    /// the last block was in (not the verification that follows).
    pub(super) dev_read: Option<u64>,
    /// The same until the receiver's exit, its verification included (the
    /// unsigned SHA-256 read-back; a signed session reads nothing back).
    /// For files, the receiver's last /proc/PID/io read_bytes before it
    /// exited (sampled every 2 ms).
    pub(super) dev_read_total: Option<u64>,
    /// From the last new block a worker took to SUCCESS, ms: the page's
    /// `end_ns` - `last_block_ns` (both written by the receiver).
    pub(super) tail_ms: Option<f64>,
    /// Bytes of the image on the device when half the blocks were in.
    pub(super) written_half: Option<u64>,
    /// Blocks written straight to the target (staging buffer full).
    pub(super) overflow: Option<u64>,
    /// Blocks an AF_XDP worker copied itself (its lane to the copier full).
    pub(super) lane_full: Option<u64>,
}

/// The runs of one configuration.
pub(super) struct Outcome {
    pub(super) receiver: Receiver,
    pub(super) mtu: u32,
    pub(super) runs: Vec<std::result::Result<Metrics, String>>,
}

impl Outcome {
    pub(super) fn ok(&self) -> Vec<&Metrics> {
        self.runs.iter().filter_map(|r| r.as_ref().ok()).collect()
    }

    /// Median of `f` over the successful runs.
    pub(super) fn median(&self, f: impl Fn(&Metrics) -> f64) -> Option<f64> {
        median(&self.ok().into_iter().map(f).collect::<Vec<_>>())
    }

    /// "median (min-max)" of `f` over the successful runs.
    pub(super) fn spread(&self, prec: usize, f: impl Fn(&Metrics) -> Option<f64>) -> String {
        spread(
            &self.ok().into_iter().filter_map(f).collect::<Vec<_>>(),
            prec,
        )
    }

    pub(super) fn runs_ok(&self) -> String {
        format!("{}/{}", self.ok().len(), self.runs.len())
    }

    /// The first failure, for the table.
    pub(super) fn failure(&self) -> Option<&String> {
        self.runs.iter().find_map(|r| r.as_ref().err())
    }
}

/// An `xdpcast receive` in `net`'s receiving namespace, pinned to
/// [`RX_CPU`], into `out`, its status page `name` kept in `ctx.work/status`
/// (no resume, 30 s start and 5 s idle timeouts), with `extra` arguments;
/// returned once the page says it is listening.
pub(crate) fn start_receiver(
    ctx: &Ctx,
    net: &VethPair,
    name: &str,
    out: &Path,
    extra: &[&str],
) -> Result<(Proc, StatusReader)> {
    start_receiver_for(
        ctx,
        net,
        name,
        out,
        &[&["--group", GROUP][..], extra].concat(),
    )
}

/// [`start_receiver`] with no group of its own: `extra` names the group
/// (xdpcast) or the protocol (`--protocol udpcast`, which finds its group).
pub(super) fn start_receiver_for(
    ctx: &Ctx,
    net: &VethPair,
    name: &str,
    out: &Path,
    extra: &[&str],
) -> Result<(Proc, StatusReader)> {
    let status_dir = ctx.work.join("status");
    std::fs::create_dir_all(&status_dir)?;
    let page = status_dir.join(format!("xdpcast.{name}"));
    let _ = std::fs::remove_file(&page);
    let recv = ctx.bin.join("xdpcast");
    let (recv, outs) = (recv.to_string_lossy(), out.to_string_lossy());
    let mut argv = vec![
        &*recv,
        "receive",
        "--iface",
        &net.if_b,
        "--out",
        &outs,
        "--name",
        name,
        "--cores",
        RX_CPU,
        "--keep-status",
        "--no-resume",
        "--start-timeout",
        "30",
        "--idle-timeout",
        "5",
    ];
    argv.extend_from_slice(extra);
    let mut rx = Proc::spawn(
        Some(&net.b.name),
        RX_CPU,
        &argv,
        &[("XDPCAST_STATUS_DIR", &status_dir)],
        &ctx.work.join(format!("rx-{name}.log")),
    )?;
    let ready = Instant::now();
    loop {
        check_interrupt()?;
        if let Some(e) = rx.poll() {
            bail!(
                "receiver ended before the sender started ({}): {}",
                e.describe(),
                rx.last_line()
            );
        }
        if let Ok(r) = StatusReader::open(&page) {
            if r.read().is_ok_and(|s| s.state == State::InProgress) {
                return Ok((rx, r));
            }
        }
        ensure!(
            ready.elapsed() < Duration::from_secs(20),
            "receiver did not start"
        );
        std::thread::sleep(POLL);
    }
}

/// A sender `argv` in `net`'s sending namespace, pinned to [`TX_CPU`],
/// its output in `ctx.work/log`.
pub(crate) fn start_sender(ctx: &Ctx, net: &VethPair, argv: &[&str], log: &str) -> Result<Proc> {
    Proc::spawn(Some(&net.a.name), TX_CPU, argv, &[], &ctx.work.join(log))
}

/// `xdpcast send` of `ctx.image` over `net`, paced at `--rate-mbps`
/// (default 2000), with `extra` arguments (see [`start_sender`]).
pub(crate) fn xdpcast_send(ctx: &Ctx, net: &VethPair, extra: &[&str], log: &str) -> Result<Proc> {
    let bin = ctx.bin.join("xdpcast");
    let (bin, image) = (bin.to_string_lossy(), ctx.image.to_string_lossy());
    let rate = format!("{}M", ctx.rate_mbps.unwrap_or(2000));
    let mut argv = vec![
        &*bin, "send", &image, "--group", GROUP, "--iface", &net.if_a, "--rate", &rate,
    ];
    argv.extend_from_slice(extra);
    start_sender(ctx, net, &argv, log)
}

/// One xdpcast receive over `net` into `target`, paced to `rate_mbps`
/// (None: unpaced), fed by the blast sender (one datagram per frame, no
/// GSO) or, for [`Receiver::Send`] and [`Receiver::Signed`], by `xdpcast
/// send` (signed with `key`, made by [`keygen`]).
pub(super) fn run_xdpcast(
    ctx: &Ctx,
    net: &VethPair,
    r: Receiver,
    flags: &[&str],
    target: &Target,
    rate_mbps: Option<u64>,
) -> Result<Metrics> {
    let out = &target.path;
    if target.dev_stat.is_none() {
        let _ = std::fs::remove_file(out);
    }
    let mode = r.mode();
    let key = (r == Receiver::Signed).then(|| keygen(ctx)).transpose()?;
    let public = key.as_ref().map(|k| format!("{}.pub", k.display()));
    let extra: Vec<&str> = ["--mode", mode]
        .into_iter()
        .chain(flags.iter().copied())
        .chain(public.iter().flat_map(|p| ["--trust", p.as_str()]))
        .collect();
    let (mut rx, reader) = start_receiver(ctx, net, &format!("bench-{mode}"), out, &extra)?;
    let soft0 = softirq_s()?;
    let dev0 = target.dev_stat.as_deref().map(dev_sectors).transpose()?;
    let (blast, xdpcast) = (ctx.bin.join("xdpcast-bench"), ctx.bin.join("xdpcast"));
    let image = ctx.image.to_str().context("path")?;
    let key_s = key.as_ref().map(|k| k.to_string_lossy().into_owned());
    let rate = rate_mbps.map(|m| (m * 1_000_000).to_string());
    let argv = match r {
        Receiver::Send | Receiver::Signed => {
            let mut a = vec![xdpcast.to_str().context("path")?, "send", image];
            a.extend(["--group", GROUP, "--iface", &net.if_a]);
            a.extend(key_s.iter().flat_map(|k| ["--sign", k.as_str()]));
            if let Some(r) = &rate {
                a.extend(["--rate", r]);
            }
            a
        }
        _ => {
            let mut a = vec![blast.to_str().context("path")?, "blast", image];
            a.extend(["--group", GROUP, "--iface", &net.if_a]);
            a.extend(["--passes", "1000", "--no-gso"]);
            if let Some(r) = &rate {
                a.extend(["--rate-bps", r]);
            }
            a
        }
    };
    let mut tx = start_sender(ctx, net, &argv, "tx.log")?;
    let tx_start = now_ns();
    let mut first = None;
    let mut samples: Vec<(u64, u64, u64)> = Vec::new();
    let (mut read_bytes, mut read_bytes_total) = (None, None);
    let mut dev_read_now = None;
    let mut written_half = None;
    let pid = rx.pid;
    let exit = until_exit(&mut rx, ctx.timeout, "verified image", || {
        let s = reader.read()?;
        if first.is_none() && (s.blocks_done > 0 || file_len(out) > 0) {
            first = Some(now_ns());
        }
        if samples.last().is_none_or(|l| l.0 != s.heartbeat_ns) {
            samples.push((s.heartbeat_ns, s.blocks_done, taken(&s)));
        }
        if written_half.is_none() && s.block_count > 0 && s.blocks_done * 2 >= s.block_count {
            written_half = Some(match (&target.dev_stat, dev0) {
                (Some(stat), Some((_, w0))) => Some((dev_sectors(stat)?.1 - w0) * 512),
                _ if target.kind == TargetKind::Ext4 => bytes_on_disk(out, ctx.size),
                _ => None,
            });
        }
        // Reads until the last block is in: the receiver's own SHA-256
        // check reads the whole target back afterwards.
        read_bytes_total = proc_read_bytes(pid).or(read_bytes_total);
        if s.block_count == 0 || s.blocks_done < s.block_count {
            read_bytes = read_bytes_total;
            if let Some(stat) = &target.dev_stat {
                dev_read_now = Some(dev_sectors(stat)?.0);
            }
        }
        Ok(())
    })?;
    let tx_exit = tx.stop();
    let softirq_s = softirq_s()? - soft0;
    let s = reader.read()?;
    let ring_drops: u64 = s
        .workers
        .iter()
        .map(|w| w.kernel.rx_ring_full + w.kernel.rx_dropped)
        .sum();
    ensure!(
        exit.success(),
        "receiver failed ({}): {} [{} packets taken, {} dropped, {} ring drops]",
        exit.describe(),
        s.message,
        taken(&s),
        s.total_drops(),
        ring_drops
    );
    let dev_read = match (dev_read_now, dev0) {
        (Some(r), Some((r0, _))) => Some((r - r0) * 512),
        _ => read_bytes,
    };
    // After the exit: the receiver's whole run, its own check included.
    let dev_read_total = match (&target.dev_stat, dev0) {
        (Some(stat), Some((r0, _))) => Some((dev_sectors(stat)?.0 - r0) * 512),
        _ => read_bytes_total,
    };
    let tail_ms = (s.diag.last_block_ns > 0 && s.end_ns >= s.diag.last_block_ns)
        .then(|| (s.end_ns - s.diag.last_block_ns) as f64 / 1e6);
    let first = first.context("the target never appeared")?;
    let (done_at, packets) =
        completion(&samples, s.block_count).context("the page never showed all blocks")?;
    let batches: u64 = s.workers.iter().map(|w| w.batches).sum();
    let tx_log = tx.output();
    let offered = field(&tx_log, "bytes")
        .zip(field(&tx_log, "secs"))
        .map(|(b, t)| b * 8.0 / t.max(1e-9) / 1e9);
    Ok(Metrics {
        path: s.mode.name().to_string(),
        receive_s: (done_at.saturating_sub(first)) as f64 / 1e9,
        verified_s: (exit.at_ns - first) as f64 / 1e9,
        packets,
        rx_cpu_s: exit.cpu_s,
        tx_cpu_s: tx_exit.cpu_s,
        tx_wall_s: (tx_exit.at_ns - tx_start) as f64 / 1e9,
        offered_gbps: offered,
        softirq_s,
        loss: s.first_pass_missing as f64 / s.block_count.max(1) as f64,
        batch: Some(taken(&s) as f64 / batches.max(1) as f64),
        batch_ns: s.workers.iter().map(|w| w.batch_ns).max_by_key(|l| l[1]),
        ring_drops: Some(ring_drops),
        fill_empty: Some(s.workers.iter().map(|w| w.kernel.fill_ring_empty).sum()),
        dev_read,
        dev_read_total,
        tail_ms,
        written_half: written_half.flatten(),
        overflow: Some(s.storage.overflow_blocks),
        lane_full: Some(s.storage.lane_full),
    })
}

/// Start udpcast's own `udp-receiver --file OUT` in the receiving
/// namespace, logging to `log` in the work directory, and give it the time
/// to join (it has no ready signal).
pub(super) fn spawn_udp_receiver(ctx: &Ctx, net: &VethPair, out: &str, log: &str) -> Result<Proc> {
    let rx = Proc::spawn(
        Some(&net.b.name),
        RX_CPU,
        &[
            "udp-receiver",
            "--file",
            out,
            "--interface",
            &net.if_b,
            "--portbase",
            UDPCAST_PORTBASE,
            "--mcast-rdv-address",
            UDPCAST_RDV,
            "--nokbd",
        ],
        &[],
        &ctx.work.join(log),
    )?;
    std::thread::sleep(Duration::from_millis(300));
    Ok(rx)
}

pub(super) fn run_udpcast(ctx: &Ctx, net: &VethPair) -> Result<Metrics> {
    let out = ctx.work.join("out.img");
    let _ = std::fs::remove_file(&out);
    let outs = out.to_string_lossy();
    let pk0 = rx_packets(net)?;
    let mut rx = spawn_udp_receiver(ctx, net, &outs, "rx-udpcast.log")?;
    let soft0 = softirq_s()?;
    let rate = ctx.rate_mbps.map(|m| format!("{m}m"));
    let mut argv = udp_sender_argv(ctx.image.to_str().context("path")?, net);
    argv.extend(["--mcast-rdv-address", UDPCAST_RDV]);
    if let Some(r) = &rate {
        argv.extend(["--max-bitrate", r]);
    }
    let mut tx = Proc::spawn(
        Some(&net.a.name),
        TX_CPU,
        &argv,
        &[],
        &ctx.work.join("tx.log"),
    )?;
    let tx_start = now_ns();
    let (mut first, mut full) = (None, None);
    let exit = until_exit(&mut rx, ctx.timeout, "image", || {
        let len = file_len(&out);
        if first.is_none() && len > 0 {
            first = Some(now_ns());
        }
        if full.is_none() && len >= ctx.size {
            full = Some(now_ns());
        }
        Ok(())
    })?;
    ensure!(
        exit.success(),
        "udp-receiver failed ({}): {}",
        exit.describe(),
        rx.last_line()
    );
    let packets = rx_packets(net)? - pk0;
    let (digest, sha) = sha256sum(&out, &ctx.work.join("sha.log"))?;
    ensure!(
        digest == ctx.digest,
        "udpcast image differs: sha256 {digest}"
    );
    let tx_exit = tx.wait(Duration::from_secs(10));
    let softirq_s = softirq_s()? - soft0;
    let first = first.context("the target never appeared")?;
    let full = full.context("the target never reached full size")?;
    // "re-xmits=0000662 (  1.4%)": blocks sent again, as a share of the image.
    let log = tx.output();
    let loss = log
        .rsplit("re-xmits=")
        .next()
        .and_then(|t| t.split('(').nth(1))
        .and_then(|t| t.split('%').next())
        .and_then(|p| p.trim().parse::<f64>().ok())
        .map_or(0.0, |p| p / 100.0);
    Ok(Metrics {
        path: "udpcast".into(),
        receive_s: (full - first) as f64 / 1e9,
        verified_s: (sha.at_ns - first) as f64 / 1e9,
        packets,
        rx_cpu_s: exit.cpu_s + sha.cpu_s,
        tx_cpu_s: tx_exit.cpu_s,
        tx_wall_s: (tx_exit.at_ns - tx_start) as f64 / 1e9,
        offered_gbps: None,
        softirq_s,
        loss,
        batch: None,
        batch_ns: None,
        ring_drops: None,
        fill_empty: None,
        dev_read: None,
        dev_read_total: None,
        tail_ms: None,
        written_half: None,
        overflow: None,
        lane_full: None,
    })
}

impl Metrics {
    pub(super) fn goodput_gbps(&self, size: u64) -> f64 {
        size as f64 * 8.0 / self.receive_s.max(1e-9) / 1e9
    }

    pub(super) fn cpu_per_gb(&self, size: u64) -> f64 {
        self.rx_cpu_s / (size as f64 / 1e9)
    }

    /// Which side limited the run, and why we think so.
    pub(super) fn bottleneck(&self, size: u64) -> String {
        let goodput = self.goodput_gbps(size);
        let tx_util = self.tx_cpu_s / self.tx_wall_s.max(1e-9);
        let rx_util = self.rx_cpu_s / self.verified_s.max(1e-9);
        match self.offered_gbps {
            Some(o) if o > 1.2 * goodput => format!("receiver (sender offered {o:.1} Gbit/s)"),
            Some(o) => format!("sender ({o:.1} Gbit/s, CPU {:.0}%)", tx_util * 100.0),
            None => busier_side(tx_util, rx_util),
        }
    }
}

/// Which side limited a run from the share of its wall time each side's
/// CPU was busy: one near 100 % (at least 80 %) is the limit; with both
/// below, the protocol (waits, round trips) is.
pub(super) fn busier_side(tx_util: f64, rx_util: f64) -> String {
    if tx_util.max(rx_util) < 0.8 {
        format!(
            "protocol (sender CPU {:.0}%, receiver {:.0}%)",
            tx_util * 100.0,
            rx_util * 100.0
        )
    } else if tx_util >= rx_util {
        format!("sender (CPU {:.0}%)", tx_util * 100.0)
    } else {
        format!("receiver (CPU {:.0}%)", rx_util * 100.0)
    }
}
