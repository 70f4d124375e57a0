//! Text renderings of a status page: for people, JSON and Prometheus.

use std::fmt::Write as _;

use crate::session::hex;
use crate::status::{Snapshot, FLAG_DIGEST};
use crate::wire::DropReason;

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
        "packets   {} accepted, {} dropped; passes seen {}, blocks missing after first pass {}",
        s.packets,
        s.total_drops(),
        s.passes_seen,
        s.first_pass_missing
    );
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
        let _ = writeln!(
            o,
            "worker    queue {} cpu {cpu}: {} packets, {} blocks, {} drops, {} batches, {} ring drops",
            w.queue, w.packets, w.blocks, w.drops, w.batches, w.ring_drops
        );
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
                "{{\"queue\":{},\"cpu\":{},\"packets\":{},\"bytes\":{},\"blocks\":{},\"drops\":{},\"batches\":{},\"ring_drops\":{}}}",
                w.queue,
                if w.cpu == u64::MAX { "null".to_string() } else { w.cpu.to_string() },
                w.packets, w.bytes, w.blocks, w.drops, w.batches, w.ring_drops
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
\"passes_seen\":{},\"first_pass_missing\":{},\"sha256\":{},\"message\":{},\"drops\":{{{}}},\"workers\":[{}]}}",
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
        digest,
        json_str(&s.message),
        drops.join(","),
        workers.join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{State, WorkerStatus};

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
        assert!(h.contains("SUCCESS") && h.contains("out_of_range=4"));
    }
}
