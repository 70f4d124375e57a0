//! `cargo xtask bench --part sparse` (issue 14): a sparse image, about
//! 75 % zeros in runs of mixed lengths
//! ([`xdpcast_bench::fixture::write_sparse_image`], seed 1, on tmpfs), sent
//! by the real `xdpcast send` twice: by default (zero runs announced, not
//! sent) and with `--no-sparse` (every block sent), each `runs` times, to
//! `xdpcast receive --mode xdp` over the same veth pair as the other parts
//! (sender on CPU 0, receiver on CPU 1), paced at `--rate-mbps` (default
//! 2000).
//!
//! Per run: the time from the sender's start to the receiver's exit with
//! SUCCESS, split at the first packet the receiver took in and at its last
//! block (status page samples, as the other parts); the bytes and packets
//! the receiving veth took in while the sender ran (announces, zero-run
//! lists and repairs included); the bytes the receiver skipped (its status
//! page); and the zero scan's cost per GB as the sender reports it. After
//! every run the harness reads the target back and compares its SHA-256
//! with the source's: a run whose image is wrong is a failed run, and no
//! speed-up is computed from failed runs. A loop device target is filled
//! with old data (0xA5) again before every run.

use std::fmt::Write as _;
use std::fs::File;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde::Serialize;
use xdpcast::proto::wire;
use xdpcast::status::page::{now_ns, State};
use xdpcast::store::target::sha256_prefix;
use xdpcast_bench::fixture::write_sparse_image;
use xdpcast_bench::netns::VethPair;

use super::harness::{
    check_interrupt, completion, follow, median, rx_counter, spread, Ctx, LoopDev, Target,
    TargetKind, WorkDir,
};
use super::runs::{start_receiver, xdpcast_send};

/// Seed of the bench's sparse image.
const SEED: u64 = 1;

/// How the sender treats runs of zero blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub(crate) enum Sending {
    /// By default: announced, not sent.
    #[serde(rename = "sparse")]
    Sparse,
    /// `--no-sparse`: sent like data.
    #[serde(rename = "--no-sparse")]
    Dense,
}

impl Sending {
    fn name(self) -> &'static str {
        match self {
            Sending::Sparse => "sparse (default)",
            Sending::Dense => "--no-sparse",
        }
    }
}

/// What one run measured (in `results.json` under these names).
#[derive(Debug, Serialize)]
pub(crate) struct Metrics {
    /// Sender's start to the receiver's exit with SUCCESS, seconds.
    success_s: f64,
    /// Sender's start to the first packet the receiver took in (the
    /// sender reads and hashes the image first).
    start_s: f64,
    /// First packet to last block.
    receive_s: f64,
    /// Last block to SUCCESS (flush, holes settled, SHA-256 read-back).
    tail_s: f64,
    /// Bytes and packets the receiving veth took in while the sender ran.
    wire_bytes: u64,
    wire_packets: u64,
    /// Bytes the receiver skipped (status page, sparse region).
    skipped_bytes: u64,
    /// The sender's zero scan, ms per GB of image, and its whole read of
    /// the image (hash and scan), seconds, from its final line.
    scan_ms_per_gb: Option<f64>,
    read_s: Option<f64>,
    /// Receiver CPU (user + system), seconds.
    rx_cpu_s: f64,
}

/// The runs of one target and one way of sending.
#[derive(Debug, Serialize)]
pub(crate) struct Row {
    target: &'static str,
    sender: Sending,
    #[serde(serialize_with = "runs_json")]
    runs: Vec<std::result::Result<Metrics, String>>,
}

/// Each run as `{"metrics": ...}` or `{"error": ...}`.
fn runs_json<S: serde::Serializer>(
    runs: &[std::result::Result<Metrics, String>],
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Run<'a> {
        metrics: Option<&'a Metrics>,
        error: Option<&'a str>,
    }
    s.collect_seq(runs.iter().map(|r| Run {
        metrics: r.as_ref().ok(),
        error: r.as_ref().err().map(String::as_str),
    }))
}

impl Row {
    fn ok(&self) -> impl Iterator<Item = &Metrics> {
        self.runs.iter().filter_map(|r| r.as_ref().ok())
    }

    fn spread(&self, prec: usize, f: impl Fn(&Metrics) -> Option<f64>) -> String {
        spread(&self.ok().filter_map(f).collect::<Vec<_>>(), prec)
    }

    fn median(&self, f: impl Fn(&Metrics) -> f64) -> Option<f64> {
        median(&self.ok().map(f).collect::<Vec<_>>())
    }
}

/// `N` in "...KEY N..." of the last line of `text` that has KEY.
fn number_after(text: &str, key: &str) -> Option<f64> {
    text.lines()
        .rev()
        .find_map(|l| l.split_once(key)?.1.split_whitespace().next()?.parse().ok())
}

/// One send of `ctx.image` into `target`, verified.
fn run_one(
    ctx: &Ctx,
    net: &VethPair,
    target: &Target,
    lo: Option<&LoopDev>,
    sending: Sending,
) -> Result<Metrics> {
    match lo {
        Some(l) => l.refill(ctx.size)?,
        None => {
            let _ = std::fs::remove_file(&target.path);
        }
    }
    let (mut rx, reader) = start_receiver(ctx, net, "sparse", &target.path, &["--mode", "xdp"])?;
    let (bytes0, packets0) = (rx_counter(net, "rx_bytes")?, rx_counter(net, "rx_packets")?);
    let extra: &[&str] = match sending {
        Sending::Sparse => &[],
        Sending::Dense => &["--no-sparse"],
    };
    let mut tx = xdpcast_send(ctx, net, extra, "tx-sparse.log")?;
    let tx_start = now_ns();
    let (exit, samples) = follow(&reader, &mut rx, ctx.timeout)?;
    // The sender ends once the receiver has reported SUCCESS.
    let tx_exit = tx.wait(Duration::from_secs(15));
    let wire_bytes = rx_counter(net, "rx_bytes")? - bytes0;
    let wire_packets = rx_counter(net, "rx_packets")? - packets0;
    let s = reader.read()?;
    ensure!(
        exit.success() && s.state == State::Success,
        "receiver failed ({}): {}",
        exit.describe(),
        s.message
    );
    let landed = sha256_prefix(
        &mut File::open(&target.path).context("open the target")?,
        ctx.size,
    )
    .context("read the target back")?;
    let landed = wire::hex(&landed);
    ensure!(
        landed == ctx.digest,
        "the landed image differs from the source: SHA-256 {landed}, want {}",
        ctx.digest
    );
    let first = samples
        .iter()
        .find(|x| x.2 > 0)
        .map(|x| x.0)
        .context("the page never showed a packet")?;
    let (last, _) =
        completion(&samples, s.block_count).context("the page never showed all blocks")?;
    let log = if tx_exit.success() {
        tx.output()
    } else {
        String::new()
    };
    let secs = |a: u64, b: u64| b.saturating_sub(a) as f64 / 1e9;
    Ok(Metrics {
        success_s: secs(tx_start, exit.at_ns),
        start_s: secs(tx_start, first),
        receive_s: secs(first, last),
        tail_s: secs(last, exit.at_ns),
        wire_bytes,
        wire_packets,
        skipped_bytes: s.sparse.skipped_bytes,
        scan_ms_per_gb: number_after(&log, "zero scan "),
        read_s: number_after(&log, ", read "),
        rx_cpu_s: exit.cpu_s,
    })
}

/// The table: one row per target and way of sending; the sparse row has
/// the ratios to the `--no-sparse` row of its target.
fn table(rows: &[Row]) -> String {
    let mut t = String::from(
        "| target | sender | runs | time to SUCCESS s | sender start s | receive s | last block → SUCCESS s | wire MiB | packets | skipped MiB | sender zero scan ms/GB | speed-up | wire bytes vs --no-sparse |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
    for r in rows {
        let dense = rows
            .iter()
            .find(|d| d.target == r.target && d.sender == Sending::Dense);
        let ratio = |f: &dyn Fn(&Metrics) -> f64, invert: bool| match (
            r.median(f),
            dense.and_then(|d| d.median(f)),
        ) {
            _ if r.sender == Sending::Dense => "-".to_string(),
            (Some(v), Some(d)) if invert => format!("{:.2}x", d / v.max(1e-9)),
            (Some(v), Some(d)) => format!("{:.2}x", v / d.max(1e-9)),
            _ => "n/a".into(),
        };
        let failure = r
            .runs
            .iter()
            .find_map(|x| x.as_ref().err())
            .map(|e| format!(" (failed: {})", e.replace('|', "/").replace('\n', " ")))
            .unwrap_or_default();
        let _ = writeln!(
            t,
            "| {} | {} | {}/{}{failure} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.target,
            r.sender.name(),
            r.ok().count(),
            r.runs.len(),
            r.spread(2, |m| Some(m.success_s)),
            r.spread(2, |m| Some(m.start_s)),
            r.spread(2, |m| Some(m.receive_s)),
            r.spread(2, |m| Some(m.tail_s)),
            r.spread(1, |m| Some(mib(m.wire_bytes))),
            r.spread(0, |m| Some(m.wire_packets as f64)),
            r.spread(1, |m| Some(mib(m.skipped_bytes))),
            r.spread(0, |m| m.scan_ms_per_gb),
            ratio(&|m| m.success_s, true),
            ratio(&|m| m.wire_bytes as f64, false),
        );
    }
    t
}

/// Write the sparse image, run every target both ways `runs` times; the
/// section of `results.md` and the rows for `results.json`.
pub(crate) fn run(ctx: &Ctx, targets: &[TargetKind], runs: usize) -> Result<(String, Vec<Row>)> {
    let image = ctx.work.join("sparse.img");
    eprintln!("bench: writing a {} MiB sparse image", ctx.size >> 20);
    let zeros = write_sparse_image(&image, ctx.size, SEED)?;
    let digest = wire::hex(&sha256_prefix(&mut File::open(&image)?, ctx.size)?);
    let ctx = Ctx {
        bin: ctx.bin.clone(),
        work: ctx.work.clone(),
        image,
        size: ctx.size,
        digest,
        rate_mbps: ctx.rate_mbps,
        timeout: ctx.timeout,
    };
    let net = VethPair::new(1, 1500);
    let disk = WorkDir::on_disk("sparse")?;
    let mut rows = Vec::new();
    for &kind in targets {
        let (target, lo) = Target::new(kind, &ctx, &disk, "sparse-out.img")?;
        for sending in [Sending::Sparse, Sending::Dense] {
            let mut row = Row {
                target: kind.name(),
                sender: sending,
                runs: Vec::new(),
            };
            for i in 0..runs {
                check_interrupt()?;
                eprintln!(
                    "bench: sparse image, {}, {}, run {}",
                    kind.name(),
                    sending.name(),
                    i + 1
                );
                let result = run_one(&ctx, &net, &target, lo.as_ref(), sending);
                check_interrupt()?;
                row.runs.push(result.map_err(|e| format!("{e:#}")));
                if let Some(Err(e)) = row.runs.last() {
                    eprintln!("bench:   failed: {e}");
                }
            }
            rows.push(row);
        }
        if lo.is_none() {
            let _ = std::fs::remove_file(&target.path);
        }
    }
    let _ = std::fs::remove_file(&ctx.image);
    let md = format!(
        "\n### Sparse image: sparse (default) vs --no-sparse\n\n\
         `xdpcast send` paced at {} Mbit/s to the XDP path, MTU 1500; the image is {} MiB, \
         {:.1} % of it zeros in runs of mixed lengths (64 B to 12 MiB, seed {SEED}), on tmpfs. \
         Time from the sender's start to the receiver's SUCCESS, split at the first packet \
         and the last block; wire bytes and packets are the receiving veth's; every run's \
         image was read back and matched the source's SHA-256.\n\n{}",
        ctx.rate_mbps.unwrap_or(2000),
        ctx.size >> 20,
        zeros as f64 * 100.0 / ctx.size as f64,
        table(&rows)
    );
    Ok((md, rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(success_s: f64, wire_bytes: u64) -> Metrics {
        Metrics {
            success_s,
            start_s: 0.1,
            receive_s: 1.0,
            tail_s: 0.2,
            wire_bytes,
            wire_packets: 10,
            skipped_bytes: 0,
            scan_ms_per_gb: Some(50.0),
            read_s: Some(0.3),
            rx_cpu_s: 1.0,
        }
    }

    #[test]
    fn speed_up_comes_only_from_verified_runs() {
        let rows = [
            Row {
                target: "tmpfs file",
                sender: Sending::Sparse,
                runs: vec![
                    Ok(m(1.0, 100)),
                    Err("the landed image differs".into()),
                    Ok(m(1.0, 100)),
                ],
            },
            Row {
                target: "tmpfs file",
                sender: Sending::Dense,
                runs: vec![Ok(m(4.0, 400))],
            },
            Row {
                target: "loop device",
                sender: Sending::Sparse,
                runs: vec![Err("the landed image differs".into())],
            },
            Row {
                target: "loop device",
                sender: Sending::Dense,
                runs: vec![Ok(m(4.0, 400))],
            },
        ];
        let t = table(&rows);
        let lines: Vec<&str> = t.lines().skip(2).collect();
        assert!(lines[0].contains("| 2/3 (failed: the landed image differs) |"));
        assert!(lines[0].ends_with("| 4.00x | 0.25x |"), "{}", lines[0]);
        assert!(lines[1].ends_with("| - | - |"), "{}", lines[1]);
        assert!(lines[2].ends_with("| n/a | n/a |"), "{}", lines[2]);
        let j = serde_json::to_value(&rows[0]).unwrap();
        assert_eq!(j["sender"], "sparse");
        assert_eq!(j["runs"][0]["metrics"]["success_s"], 1.0);
        assert_eq!(j["runs"][1]["error"], "the landed image differs");
    }

    #[test]
    fn sender_line_fields() {
        let line = "sent 1 GiB in 5 packets ... skipped 700 MiB of zeros in 9 runs (zero scan 41.5 ms/GB, read 0.52 s); sha256 ab";
        assert_eq!(number_after(line, "zero scan "), Some(41.5));
        assert_eq!(number_after(line, ", read "), Some(0.52));
        assert_eq!(number_after("nothing", "zero scan "), None);
    }
}
