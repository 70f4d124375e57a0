//! The renderings against each other and against docs/status-page.md.

use super::*;
use crate::proto::wire::DropReason;
use crate::status::page::{DiagStatus, Snapshot, State, WorkerStatus, FLAG_DIGEST};

#[test]
fn figures() {
    assert_eq!(bytes(512), "512 B");
    assert_eq!(bytes(256 << 20), "256.0 MiB");
    assert_eq!(rate(125_000_000), "1.00 Gbit/s");
    assert_eq!(rate(1_250_000), "10.0 Mbit/s");
}

fn sample() -> Snapshot {
    let mut s = Snapshot {
        name: "a\"b".into(),
        message: "line\nnext".into(),
        state: State::Success,
        flags: FLAG_DIGEST,
        digest: [0xAB; 32],
        workers: vec![
            WorkerStatus {
                cpu: u64::MAX,
                batch_ns: [1_500, 20_000, 95_000],
                ..Default::default()
            },
            WorkerStatus {
                queue: 1,
                cpu: 3,
                batches: 7,
                ..Default::default()
            },
        ],
        diag: DiagStatus {
            unserved_frames: 30,
            unserved_queues: 0b110,
            last_block_ns: 42,
        },
        ..Default::default()
    };
    s.drops[DropReason::OutOfRange as usize] = 4;
    s
}

#[test]
fn json_round_trips_and_names_every_field() {
    let s = sample();
    let j = json(&s);
    let back: SessionReport = serde_json::from_str(&j).unwrap();
    assert_eq!(back, SessionReport::new(&s));
    assert_eq!(back.name, "a\"b");
    assert_eq!(back.message, "line\nnext");
    assert_eq!(back.state, "SUCCESS");
    assert!(!back.stale, "final pages are never stale");
    assert_eq!(back.drops["out_of_range"], 4);
    assert_eq!(back.drops.len(), DropReason::COUNT);
    assert_eq!(back.sha256, Some("ab".repeat(32)));
    assert_eq!(back.workers[0].cpu, None);
    assert_eq!(back.workers[1].cpu, Some(3));
    assert_eq!(back.workers[0].batch_p99_ns, 20_000);
    // Keys by name; optional values are explicit nulls.
    let v: serde_json::Value = serde_json::from_str(&j).unwrap();
    assert_eq!(v["workers"][0]["cpu"], serde_json::Value::Null);
    assert_eq!(v["workers"][0]["batch_p999_ns"], 95_000);
    let none = json(&Snapshot::default());
    assert!(none.contains(r#""sha256":null"#), "{none}");
    let h = human(&s);
    assert!(h.contains("SUCCESS") && h.contains("out_of_range=4"));
    assert!(h.contains("batch p50 1.5 p99 20.0 p99.9 95.0 µs"), "{h}");
    assert_eq!(
        (back.unserved_frames, &back.unserved_queues[..]),
        (30, &[1, 2][..])
    );
    assert!(
        h.contains("unserved  30 frames of the session on RX queues 1,2 without an AF_XDP socket"),
        "{h}"
    );
    assert!(!human(&Snapshot::default()).contains("unserved"));
}

#[test]
fn prometheus_groups_families_and_escapes_labels() {
    let mut a = Snapshot {
        name: "lab\"1".into(),
        state: State::InProgress,
        bytes_done: 4096,
        diag: DiagStatus {
            unserved_frames: 17,
            unserved_queues: 2,
            ..Default::default()
        },
        workers: vec![WorkerStatus {
            queue: 3,
            packets: 9,
            batches: 5,
            batch_ns: [2_000, 40_000, 120_000],
            batch_sum_ns: 250_000,
            ..Default::default()
        }],
        ..Default::default()
    };
    a.drops[DropReason::Duplicate as usize] = 2;
    let b = Snapshot {
        name: "lab-2\n".into(),
        state: State::Failure,
        error: crate::ErrorCode::DiskFull,
        ..Default::default()
    };
    let text = prometheus(&[a, b], 1);
    for want in [
        "xdpcast_received_bytes_total{session=\"lab\\\"1\"} 4096\n",
        // Control characters escaped (`\n` as text), then the backslash.
        "xdpcast_session_error_code{session=\"lab-2\\\\n\"} 5\n",
        "xdpcast_dropped_packets_total{session=\"lab\\\"1\",reason=\"duplicate\"} 2\n",
        "xdpcast_worker_packets_total{session=\"lab\\\"1\",queue=\"3\"} 9\n",
        "# TYPE xdpcast_worker_batch_latency_seconds summary\n",
        "xdpcast_worker_batch_latency_seconds{session=\"lab\\\"1\",queue=\"3\",quantile=\"0.99\"} 0.00004\n",
        "xdpcast_worker_batch_latency_seconds_count{session=\"lab\\\"1\",queue=\"3\"} 5\n",
        "xdpcast_worker_batch_latency_seconds_sum{session=\"lab\\\"1\",queue=\"3\"} 0.00025\n",
        "xdpcast_unreadable_pages 1\n",
        "xdpcast_unserved_frames_total{session=\"lab\\\"1\"} 17\n",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    // Each family is declared once, with HELP, before all of its samples.
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split(' ').nth(2).unwrap();
        assert_eq!(
            text.matches(&format!("# TYPE {name} ")).count(),
            1,
            "{name}"
        );
        assert!(text.contains(&format!("# HELP {name} ")), "{name}");
        let first_sample = text.find(&format!("\n{name}{{"));
        assert!(first_sample.is_none_or(|i| i > text.find(line).unwrap()));
        if line.ends_with(" counter") {
            assert!(name.ends_with("_total"), "{name}");
        }
    }
    assert!(
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .all(|l| l.starts_with("xdpcast_")
                && l.rsplit(' ').next().unwrap().parse::<f64>().is_ok())
    );
}

#[test]
fn control_characters_never_reach_a_terminal() {
    assert_eq!(printable("lab-1 é"), "lab-1 é");
    assert_eq!(
        printable("a\u{1b}]0;x\u{7}b\nc\u{7f}\u{9b}2J\0"),
        "a\\u{1b}]0;x\\u{7}b\\nc\\u{7f}\\u{9b}2J\\0"
    );
    let s = Snapshot {
        name: "evil\u{1b}[2J".into(),
        group: "239.1.2.3:5000\u{9b}31m".into(),
        target: "/tmp/\u{7f}x".into(),
        message: "line\nnext\u{1b}]0;title\u{7}".into(),
        ..Default::default()
    };
    let escapes = |t: &str| t.chars().any(char::is_control);
    // For people: every text field escaped, the line breaks are ours.
    let h = human(&s);
    assert!(!h.lines().any(escapes), "{h:?}");
    assert!(
        h.contains("evil\\u{1b}[2J") && h.contains("line\\nnext"),
        "{h}"
    );
    // JSON: nothing raw, and a parser gets the page's text back exactly.
    let j = json(&s);
    assert!(!escapes(&j), "{j:?}");
    assert!(j.contains("\\u009b31m") && j.contains("\\u007fx"), "{j}");
    let back: SessionReport = serde_json::from_str(&j).unwrap();
    assert_eq!(
        (back.name, back.group, back.target, back.message),
        (
            s.name.clone(),
            s.group.clone(),
            s.target.clone(),
            s.message.clone()
        )
    );
    // Metrics: label values escaped, then the backslash per the format.
    let m = prometheus(&[s], 0);
    assert!(!m.lines().any(escapes), "{m:?}");
    assert!(m.contains("session=\"evil\\\\u{1b}[2J\""), "{m}");
}
