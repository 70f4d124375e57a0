//! Monitoring through the ecosystem's own tools: `promtool check metrics`
//! on the exposition of `xdpcast metrics`.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;
use xdpcast::proto::wire::DropReason;
use xdpcast::status::page::{PathMode, Snapshot, State, StatusWriter, WorkerStatus};
use xdpcast::ErrorCode;

/// Pages as a receiver publishes them: a running session with two workers
/// (one unpinned) and a target that needs escaping in a label, a failed one,
/// and a file in the directory that is not a page.
fn sample_pages(dir: &TempDir) -> Vec<StatusWriter> {
    let worker = |queue, cpu| WorkerStatus {
        queue,
        cpu,
        packets: 1000 + queue,
        bytes: 1_400_000,
        blocks: 1000,
        drops: 2,
        batches: 40,
        ring_drops: 1,
        batch_ns: [2_000, 30_000, 90_000],
        batch_sum_ns: 1_500_000,
    };
    let mut live = Snapshot {
        state: State::InProgress,
        mode: PathMode::XdpGeneric,
        name: "lab-1".into(),
        group: "239.1.2.3:5000".into(),
        target: "/dev/sdb \"disk\"".into(),
        block_count: 4000,
        blocks_done: 2000,
        total_bytes: 5_600_000,
        bytes_done: 2_800_000,
        rate_bps: 100_000_000,
        workers: vec![worker(0, 1), worker(1, u64::MAX)],
        ..Default::default()
    };
    live.drops[DropReason::Duplicate as usize] = 4;
    let failed = Snapshot {
        state: State::Failure,
        error: ErrorCode::DiskFull,
        name: "lab-2".into(),
        message: "no space\nleft".into(),
        ..Default::default()
    };
    std::fs::write(dir.join("xdpcast.junk"), b"not a page").unwrap();
    [live, failed]
        .into_iter()
        .map(|s| {
            let w = StatusWriter::create(&dir.join(&format!("xdpcast.{}", s.name))).unwrap();
            w.publish(&s);
            w
        })
        .collect()
}

#[test]
fn metrics_pass_promtool_check() {
    let dir = TempDir::new("xdpc-mon-pt");
    let _pages = sample_pages(&dir);
    let out = Command::new(env!("CARGO_BIN_EXE_xdpcast"))
        .env("XDPCAST_STATUS_DIR", &dir.0)
        .args(["metrics", "--print"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    for want in [
        "xdpcast_session_state{session=\"lab-2\"} 3\n",
        "xdpcast_worker_batch_latency_seconds_count{session=\"lab-1\",queue=\"1\"} 40\n",
        "xdpcast_unreadable_pages 1\n",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    // promtool is Debian's `prometheus` package (setup.sh installs it).
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (apt install prometheus; see setup.sh)");
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let verdict = check.wait_with_output().unwrap();
    assert!(
        verdict.status.success() && verdict.stdout.is_empty() && verdict.stderr.is_empty(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&verdict.stdout),
        String::from_utf8_lossy(&verdict.stderr)
    );
}
