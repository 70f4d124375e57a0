//! Text renderings of a status page: for people, JSON and Prometheus.

use std::fmt::Write as _;

use crate::proto::wire::hex;
use crate::proto::wire::DropReason;
use crate::status::page::{Snapshot, WorkerStatus, FLAG_DIGEST};

/// Bytes as a short human figure (KiB, MiB, GiB).
pub fn bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// A rate in bytes/s as Gbit/s or Mbit/s.
pub fn rate(bytes_per_sec: u64) -> String {
    let bits = bytes_per_sec as f64 * 8.0;
    if bits >= 1e9 {
        format!("{:.2} Gbit/s", bits / 1e9)
    } else {
        format!("{:.1} Mbit/s", bits / 1e6)
    }
}

/// Several lines describing the page, for `xdpcast status`.
pub fn human(s: &Snapshot) -> String {
    let mut o = String::new();
    let pct = if s.block_count > 0 {
        s.blocks_done as f64 * 100.0 / s.block_count as f64
    } else {
        0.0
    };
    let _ = writeln!(
        o,
        "session   {} ({}, id {:#010x})",
        s.name, s.group, s.session_id
    );
    let _ = writeln!(o, "state     {}  error {}", s.state.name(), s.error);
    let _ = writeln!(o, "path      {}  target {}", s.mode.name(), s.target);
    let _ = writeln!(
        o,
        "progress  {}/{} blocks ({pct:.1}%), {} of {}",
        s.blocks_done,
        s.block_count,
        bytes(s.bytes_done),
        bytes(s.total_bytes)
    );
    let _ = writeln!(
        o,
        "rate      now {}  average {}",
        rate(s.rate_bps),
        rate(s.avg_rate_bps)
    );
    let _ = writeln!(
        o,
        "packets   {} accepted, {} duplicates, {} dropped; pass and repair round ends seen {}, blocks missing after first pass {}",
        s.packets,
        s.drops_for(DropReason::Duplicate),
        s.rejected(),
        s.passes_seen,
        s.first_pass_missing
    );
    if s.fec_recovered + s.nacks_sent + s.resumed_blocks > 0 {
        let _ = writeln!(
            o,
            "repair    {} blocks rebuilt by FEC, {} NACKs sent, {} blocks resumed from disk",
            s.fec_recovered, s.nacks_sent, s.resumed_blocks
        );
    }
    let drops: Vec<String> = DropReason::ALL
        .iter()
        .filter(|r| s.drops_for(**r) > 0)
        .map(|r| format!("{}={}", r.name(), s.drops_for(*r)))
        .collect();
    if !drops.is_empty() {
        let _ = writeln!(o, "drops     {}", drops.join(" "));
    }
    if s.flags & FLAG_DIGEST != 0 {
        let _ = writeln!(o, "sha256    {}", hex(&s.digest));
    }
    for w in &s.workers {
        let cpu = if w.cpu == u64::MAX {
            "-".to_string()
        } else {
            w.cpu.to_string()
        };
        let _ = write!(
            o,
            "worker    queue {} cpu {cpu}: {} packets, {} blocks, {} drops, {} batches, {} ring drops",
            w.queue, w.packets, w.blocks, w.drops, w.batches, w.ring_drops
        );
        if w.batch_ns[0] > 0 {
            let [p50, p99, p999] = w.batch_ns.map(|ns| ns as f64 / 1e3);
            let _ = write!(o, "; batch p50 {p50:.1} p99 {p99:.1} p99.9 {p999:.1} µs");
        }
        o.push('\n');
    }
    if !s.message.is_empty() {
        let _ = writeln!(o, "message   {}", s.message);
    }
    o
}

fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// The page as one JSON object.
pub fn json(s: &Snapshot) -> String {
    let drops: Vec<String> = DropReason::ALL
        .iter()
        .map(|r| format!("{}:{}", json_str(r.name()), s.drops_for(*r)))
        .collect();
    let workers: Vec<String> = s
        .workers
        .iter()
        .map(|w| {
            format!(
                "{{\"queue\":{},\"cpu\":{},\"packets\":{},\"bytes\":{},\"blocks\":{},\"drops\":{},\"batches\":{},\"ring_drops\":{},\"batch_ns\":[{},{},{}]}}",
                w.queue,
                if w.cpu == u64::MAX { "null".to_string() } else { w.cpu.to_string() },
                w.packets, w.bytes, w.blocks, w.drops, w.batches, w.ring_drops,
                w.batch_ns[0], w.batch_ns[1], w.batch_ns[2]
            )
        })
        .collect();
    let digest = if s.flags & FLAG_DIGEST != 0 {
        json_str(&hex(&s.digest))
    } else {
        "null".into()
    };
    format!(
        "{{\"name\":{},\"group\":{},\"target\":{},\"state\":{},\"error_code\":{},\"error\":{},\"mode\":{},\
\"session_id\":{},\"writer_pid\":{},\"heartbeat_ns\":{},\"block_size\":{},\"block_count\":{},\"total_bytes\":{},\
\"blocks_done\":{},\"bytes_done\":{},\"packets\":{},\"start_ns\":{},\"end_ns\":{},\"rate_bps\":{},\"avg_rate_bps\":{},\
\"passes_seen\":{},\"first_pass_missing\":{},\"fec_recovered\":{},\"nacks_sent\":{},\"resumed_blocks\":{},\"sha256\":{},\"message\":{},\"drops\":{{{}}},\"workers\":[{}]}}",
        json_str(&s.name),
        json_str(&s.group),
        json_str(&s.target),
        json_str(s.state.name()),
        s.error as u32,
        json_str(s.error.name()),
        json_str(s.mode.name()),
        s.session_id,
        s.writer_pid,
        s.heartbeat_ns,
        s.block_size,
        s.block_count,
        s.total_bytes,
        s.blocks_done,
        s.bytes_done,
        s.packets,
        s.start_ns,
        s.end_ns,
        s.rate_bps,
        s.avg_rate_bps,
        s.passes_seen,
        s.first_pass_missing,
        s.fec_recovered,
        s.nacks_sent,
        s.resumed_blocks,
        digest,
        json_str(&s.message),
        drops.join(","),
        workers.join(",")
    )
}

/// A Prometheus label value, quoted and escaped.
fn prom_label(v: &str) -> String {
    let mut o = String::with_capacity(v.len() + 2);
    o.push('"');
    for c in v.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '"' => o.push_str("\\\""),
            '\n' => o.push_str("\\n"),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// One metric family: HELP and TYPE, then a sample per (labels, value).
fn family(o: &mut String, name: &str, kind: &str, help: &str, samples: Vec<(String, String)>) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(o, "{name}{{{labels}}} {value}");
    }
}

fn secs(ns: u64) -> String {
    format!("{:.3}", ns as f64 / 1e9)
}

/// Name, help text and value of a per-session metric.
type PageMetric = (&'static str, &'static str, fn(&Snapshot) -> String);
/// Name, help text and value of a per-worker metric.
type WorkerMetric = (&'static str, &'static str, fn(&WorkerStatus) -> u64);

/// Every page in Prometheus text exposition format (version 0.0.4), one
/// family per metric with a sample per session (label `session`).
pub fn prometheus(pages: &[Snapshot]) -> String {
    let mut o = String::new();
    let sess = |s: &Snapshot| format!("session={}", prom_label(&s.name));
    let per = |f: fn(&Snapshot) -> String| -> Vec<(String, String)> {
        pages.iter().map(|s| (sess(s), f(s))).collect()
    };
    family(
        &mut o,
        "xdpcast_session_info",
        "gauge",
        "Session description; the value is always 1.",
        pages
            .iter()
            .map(|s| {
                let labels = format!(
                    "{},group={},target={},mode={},state={},error={}",
                    sess(s),
                    prom_label(&s.group),
                    prom_label(&s.target),
                    prom_label(s.mode.name()),
                    prom_label(s.state.name()),
                    prom_label(s.error.name())
                );
                (labels, "1".to_string())
            })
            .collect(),
    );
    let gauges: [PageMetric; 12] = [
        (
            "xdpcast_session_state",
            "State: 0 INITIALIZED, 1 IN_PROGRESS, 2 SUCCESS, 3 FAILURE.",
            |s| (s.state as u64).to_string(),
        ),
        (
            "xdpcast_session_error_code",
            "Error code (docs/status-page.md); 0 unless FAILURE.",
            |s| (s.error as u32).to_string(),
        ),
        (
            "xdpcast_session_stale",
            "1 if the writer died or has not updated the page for 5 s while running.",
            |s| u8::from(s.is_stale(std::time::Duration::from_secs(5))).to_string(),
        ),
        (
            "xdpcast_session_writer_pid",
            "Pid of the receiver writing the page.",
            |s| s.writer_pid.to_string(),
        ),
        (
            "xdpcast_session_heartbeat_seconds",
            "Last page update, Unix time.",
            |s| secs(s.heartbeat_ns),
        ),
        (
            "xdpcast_session_start_seconds",
            "Session start, Unix time.",
            |s| secs(s.start_ns),
        ),
        (
            "xdpcast_session_end_seconds",
            "Session end, Unix time (0 while running).",
            |s| secs(s.end_ns),
        ),
        (
            "xdpcast_image_bytes",
            "Image size in bytes (0 until known).",
            |s| s.total_bytes.to_string(),
        ),
        (
            "xdpcast_image_blocks",
            "Blocks in the image (0 until known).",
            |s| s.block_count.to_string(),
        ),
        (
            "xdpcast_rate_bytes_per_second",
            "Goodput over the last update interval.",
            |s| s.rate_bps.to_string(),
        ),
        (
            "xdpcast_average_rate_bytes_per_second",
            "Goodput since the first block.",
            |s| s.avg_rate_bps.to_string(),
        ),
        (
            "xdpcast_first_pass_missing_blocks",
            "Blocks missing when the sender's first pass ended (loss before repair).",
            |s| s.first_pass_missing.to_string(),
        ),
    ];
    for (name, help, f) in gauges {
        family(&mut o, name, "gauge", help, per(f));
    }
    let counters: [PageMetric; 7] = [
        (
            "xdpcast_received_bytes_total",
            "Image bytes written to the target.",
            |s| s.bytes_done.to_string(),
        ),
        (
            "xdpcast_received_blocks_total",
            "Blocks written to the target.",
            |s| s.blocks_done.to_string(),
        ),
        (
            "xdpcast_packets_total",
            "Valid packets of the session received.",
            |s| s.packets.to_string(),
        ),
        (
            "xdpcast_passes_seen_total",
            "Ends of sender passes seen.",
            |s| s.passes_seen.to_string(),
        ),
        (
            "xdpcast_fec_recovered_blocks_total",
            "Blocks rebuilt from FEC repair symbols.",
            |s| s.fec_recovered.to_string(),
        ),
        (
            "xdpcast_nacks_sent_total",
            "NACK packets sent to the sender.",
            |s| s.nacks_sent.to_string(),
        ),
        (
            "xdpcast_resumed_blocks_total",
            "Blocks taken from the resume file of an earlier run.",
            |s| s.resumed_blocks.to_string(),
        ),
    ];
    for (name, help, f) in counters {
        family(&mut o, name, "counter", help, per(f));
    }
    family(
        &mut o,
        "xdpcast_dropped_packets_total",
        "counter",
        "Packets dropped, by reason.",
        pages
            .iter()
            .flat_map(|s| {
                DropReason::ALL.iter().map(move |r| {
                    (
                        format!("{},reason={}", sess(s), prom_label(r.name())),
                        s.drops_for(*r).to_string(),
                    )
                })
            })
            .collect(),
    );
    let workers: [WorkerMetric; 3] = [
        (
            "xdpcast_worker_packets_total",
            "Frames or datagrams a worker took from its ring or socket.",
            |w| w.packets,
        ),
        (
            "xdpcast_worker_dropped_packets_total",
            "Packets a worker dropped (any reason).",
            |w| w.drops,
        ),
        (
            "xdpcast_worker_ring_drops_total",
            "Frames the kernel dropped because the worker's ring was full.",
            |w| w.ring_drops,
        ),
    ];
    for (name, help, f) in workers {
        family(
            &mut o,
            name,
            "counter",
            help,
            pages
                .iter()
                .flat_map(|s| {
                    s.workers.iter().map(move |w| {
                        (
                            format!("{},queue=\"{}\"", sess(s), w.queue),
                            f(w).to_string(),
                        )
                    })
                })
                .collect(),
        );
    }
    family(
        &mut o,
        "xdpcast_worker_batch_latency_seconds",
        "gauge",
        "Wall time of a worker's batch: percentiles since the worker started.",
        pages
            .iter()
            .flat_map(|s| {
                s.workers.iter().flat_map(move |w| {
                    ["0.5", "0.99", "0.999"]
                        .into_iter()
                        .zip(w.batch_ns)
                        .map(move |(q, ns)| {
                            (
                                format!("{},queue=\"{}\",quantile=\"{q}\"", sess(s), w.queue),
                                format!("{:.9}", ns as f64 / 1e9),
                            )
                        })
                })
            })
            .collect(),
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::page::State;

    #[test]
    fn figures() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(256 << 20), "256.0 MiB");
        assert_eq!(rate(125_000_000), "1.00 Gbit/s");
        assert_eq!(rate(1_250_000), "10.0 Mbit/s");
    }

    #[test]
    fn json_escapes_and_lists_everything() {
        let mut s = Snapshot {
            name: "a\"b".into(),
            message: "line\nnext".into(),
            state: State::Success,
            workers: vec![WorkerStatus {
                cpu: u64::MAX,
                batch_ns: [1_500, 20_000, 95_000],
                ..Default::default()
            }],
            ..Default::default()
        };
        s.drops[DropReason::OutOfRange as usize] = 4;
        let j = json(&s);
        assert!(j.contains(r#""name":"a\"b""#));
        assert!(j.contains(r#""message":"line\u000anext""#));
        assert!(j.contains(r#""state":"SUCCESS""#));
        assert!(j.contains(r#""out_of_range":4"#));
        assert!(j.contains(r#""cpu":null"#));
        assert!(j.contains(r#""sha256":null"#));
        let h = human(&s);
        assert!(j.contains(r#""batch_ns":[1500,20000,95000]"#));
        assert!(h.contains("SUCCESS") && h.contains("out_of_range=4"));
        assert!(h.contains("batch p50 1.5 p99 20.0 p99.9 95.0 µs"), "{h}");
    }

    #[test]
    fn prometheus_groups_families_and_escapes_labels() {
        let mut a = Snapshot {
            name: "lab\"1".into(),
            state: State::InProgress,
            bytes_done: 4096,
            workers: vec![WorkerStatus {
                queue: 3,
                packets: 9,
                batch_ns: [2_000, 40_000, 120_000],
                ..Default::default()
            }],
            ..Default::default()
        };
        a.drops[DropReason::Duplicate as usize] = 2;
        let b = Snapshot {
            name: "lab-2".into(),
            state: State::Failure,
            error: crate::ErrorCode::DiskFull,
            ..Default::default()
        };
        let text = prometheus(&[a, b]);
        assert!(text.contains("xdpcast_received_bytes_total{session=\"lab\\\"1\"} 4096\n"));
        assert!(text.contains("xdpcast_session_error_code{session=\"lab-2\"} 5\n"));
        assert!(text.contains(
            "xdpcast_dropped_packets_total{session=\"lab\\\"1\",reason=\"duplicate\"} 2\n"
        ));
        assert!(text.contains("xdpcast_worker_packets_total{session=\"lab\\\"1\",queue=\"3\"} 9\n"));
        assert!(text.contains(
            "xdpcast_worker_batch_latency_seconds{session=\"lab\\\"1\",queue=\"3\",quantile=\"0.99\"} 0.000040000\n"
        ));
        // Each family is declared once, before all of its samples.
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = line.split(' ').nth(2).unwrap();
            assert_eq!(
                text.matches(&format!("# TYPE {name} ")).count(),
                1,
                "{name}"
            );
            let first_sample = text.find(&format!("\n{name}{{"));
            assert!(first_sample.is_none_or(|i| i > text.find(line).unwrap()));
        }
        assert!(text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .all(|l| l.starts_with("xdpcast_")
                && l.rsplit(' ').next().unwrap().parse::<f64>().is_ok()));
    }
}
