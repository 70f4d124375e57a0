//! The bench's tables (`results.md`) and `results.json`.

use std::fmt::Write as _;

use serde::Serialize;

use super::harness::{cmd_ok, TargetKind};
use super::runs::{Metrics, Outcome, Receiver};

pub(super) fn table(outcomes: &[Outcome], size: u64) -> String {
    let mut t = String::from(
        "| MTU | receiver | path | runs | goodput Gbit/s | kpkt/s | rx CPU s/GB | softirq s/GB | total CPU s/GB | loss before repair % | verified s | goodput vs XDP | total CPU vs XDP | avg batch | batch p50/p99/p99.9 µs | bottleneck |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let gb = size as f64 / 1e9;
    for o in outcomes {
        let xdp = outcomes
            .iter()
            .find(|x| x.mtu == o.mtu && x.receiver == Receiver::Xdp);
        let Some(first) = o.ok().first().copied() else {
            let e = o.failure().map_or("", |e| e.as_str());
            let _ = writeln!(
                t,
                "| {} | {} | failed | {} | - | - | - | - | - | - | - | - | - | - | - | {} |",
                o.mtu,
                o.receiver.name(),
                o.runs_ok(),
                e.replace('|', "/").replace('\n', " ")
            );
            continue;
        };
        let total = |m: &Metrics| (m.rx_cpu_s + m.softirq_s) / gb;
        let ratio = |f: &dyn Fn(&Metrics) -> f64| match (o.median(f), xdp.and_then(|x| x.median(f)))
        {
            (Some(v), Some(b)) => format!("{:.2}x", v / b),
            _ => "n/a".into(),
        };
        let lat = |i: usize| o.median(|m| m.batch_ns.map_or(0.0, |l| l[i] as f64 / 1e3));
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            o.mtu,
            o.receiver.name(),
            first.path,
            o.runs_ok(),
            o.spread(2, |m| Some(m.goodput_gbps(size))),
            o.spread(0, |m| Some(m.packets as f64 / m.receive_s.max(1e-9) / 1e3)),
            o.spread(2, |m| Some(m.cpu_per_gb(size))),
            o.spread(2, |m| Some(m.softirq_s / gb)),
            o.spread(2, |m| Some(total(m))),
            o.spread(1, |m| Some(m.loss * 100.0)),
            o.spread(2, |m| Some(m.verified_s)),
            ratio(&|m| m.goodput_gbps(size)),
            ratio(&total),
            o.spread(1, |m| m.batch),
            if first.batch_ns.is_some() {
                format!(
                    "{:.1} / {:.1} / {:.1}",
                    lat(0).unwrap_or(0.0),
                    lat(1).unwrap_or(0.0),
                    lat(2).unwrap_or(0.0)
                )
            } else {
                "-".into()
            },
            first.bottleneck(size),
        );
    }
    t
}

/// The keep-up table: one row per target and rate, XDP path.
/// The keep-up table's name for the sender of `r`'s runs.
fn feed(r: Receiver) -> &'static str {
    match r {
        Receiver::Send => "send",
        Receiver::Signed => "send --sign",
        _ => "blast",
    }
}

pub(super) fn keepup_table(rows: &[(TargetKind, String, Outcome)], size: u64) -> String {
    let mut t = String::from(
        "| target | rate Mbit/s | sender | runs | goodput Gbit/s | ring drops | fill ring empty | first-pass loss % | device read MiB | read to exit MiB | last block → SUCCESS ms | on disk at half MiB | overflow blocks | lane full blocks | rx CPU s/GB | total CPU s/GB | batch p99.9 µs |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let gb = size as f64 / 1e9;
    let mib = |b: Option<u64>| b.map(|b| b as f64 / f64::from(1u32 << 20));
    for (kind, rate, o) in rows {
        if o.ok().is_empty() {
            let e = o.failure().map_or("", |e| e.as_str());
            let _ = writeln!(
                t,
                "| {} | {rate} | {} | {} | failed: {} | | | | | | | | | | | | |",
                kind.name(),
                feed(o.receiver),
                o.runs_ok(),
                e.replace('|', "/").replace('\n', " ")
            );
            continue;
        }
        let _ = writeln!(
            t,
            "| {} | {rate} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            kind.name(),
            feed(o.receiver),
            o.runs_ok(),
            o.spread(2, |m| Some(m.goodput_gbps(size))),
            o.spread(0, |m| m.ring_drops.map(|v| v as f64)),
            o.spread(0, |m| m.fill_empty.map(|v| v as f64)),
            o.spread(2, |m| Some(m.loss * 100.0)),
            o.spread(1, |m| mib(m.dev_read)),
            o.spread(1, |m| mib(m.dev_read_total)),
            o.spread(1, |m| m.tail_ms),
            o.spread(0, |m| mib(m.written_half)),
            o.spread(0, |m| m.overflow.map(|v| v as f64)),
            o.spread(0, |m| m.lane_full.map(|v| v as f64)),
            o.spread(2, |m| Some(m.cpu_per_gb(size))),
            o.spread(2, |m| Some((m.rx_cpu_s + m.softirq_s) / gb)),
            o.spread(0, |m| m.batch_ns.map(|l| l[2] as f64 / 1e3)),
        );
    }
    t
}

/// `results.json`: the machine-readable twin of `results.md`, one entry per
/// run.
#[derive(Debug, Serialize)]
pub(super) struct Results<'a> {
    /// CPU, CPU count and kernel.
    machine: String,
    /// Image size in bytes.
    image_bytes: u64,
    /// Pacing of the comparison's senders, Mbit/s (None: unpaced blast).
    rate_mbps: Option<u64>,
    runs: Vec<Run<'a>>,
    /// The sparse part's rows, each with its runs.
    sparse: &'a [super::sparse::Row],
    /// The deployment-time part's rows and path limits.
    e2e: &'a super::e2e::Results,
}

/// One run of `results.json`: what it measured, or why it failed.
#[derive(Debug, Serialize)]
pub(super) struct Run<'a> {
    /// "compare" or "keepup".
    part: &'static str,
    mtu: u32,
    receiver: &'static str,
    /// Target of a keep-up run.
    target: Option<&'static str>,
    /// Pacing of a keep-up run, Mbit/s or "max".
    rate: Option<&'a str>,
    /// The measurements, None when the run failed.
    metrics: Option<&'a Metrics>,
    /// Image bits per second of receive time, Gbit/s.
    goodput_gbps: Option<f64>,
    /// Receiver CPU seconds per GB of image.
    rx_cpu_s_per_gb: Option<f64>,
    /// Which side limited the run.
    bottleneck: Option<String>,
    /// Why the run failed.
    error: Option<&'a str>,
}

/// The runs of `o` as `results.json` lists them.
pub(super) fn runs_of<'a>(
    part: &'static str,
    o: &'a Outcome,
    target: Option<TargetKind>,
    rate: Option<&'a str>,
    size: u64,
) -> Vec<Run<'a>> {
    o.runs
        .iter()
        .map(|r| {
            let m = r.as_ref().ok();
            Run {
                part,
                mtu: o.mtu,
                receiver: o.receiver.name(),
                target: target.map(TargetKind::name),
                rate,
                metrics: m,
                goodput_gbps: m.map(|m| m.goodput_gbps(size)),
                rx_cpu_s_per_gb: m.map(|m| m.cpu_per_gb(size)),
                bottleneck: m.map(|m| m.bottleneck(size)),
                error: r.as_ref().err().map(String::as_str),
            }
        })
        .collect()
}

pub(super) fn results_json(
    outcomes: &[Outcome],
    keepup: &[(TargetKind, String, Outcome)],
    sparse: &[super::sparse::Row],
    e2e: &super::e2e::Results,
    size: u64,
    rate_mbps: Option<u64>,
    machine: String,
) -> String {
    let runs = outcomes
        .iter()
        .flat_map(|o| runs_of("compare", o, None, None, size))
        .chain(
            keepup
                .iter()
                .flat_map(|(k, rate, o)| runs_of("keepup", o, Some(*k), Some(rate), size)),
        )
        .collect();
    let r = Results {
        machine,
        image_bytes: size,
        rate_mbps,
        runs,
        sparse,
        e2e,
    };
    serde_json::to_string_pretty(&r).expect("plain values") + "\n"
}

pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    let kernel = cmd_ok("uname", &["-r"]).unwrap_or_default();
    format!("{cpu}, {ncpu} CPUs, kernel {}", kernel.trim())
}
