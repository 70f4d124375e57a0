//! Monitoring through the ecosystem's own tools: `promtool check metrics`
//! on the exposition of `xdpcast metrics`, its HTTP endpoint under slow
//! clients.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

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

/// `xdpcast metrics` on a free loopback port, killed on drop.
struct MetricsServer {
    child: Child,
    addr: String,
}

impl MetricsServer {
    fn start(status: &Path) -> MetricsServer {
        let (child, addr) = start_metrics(status, &[]);
        MetricsServer { child, addr }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A connection with a read timeout that only stops a hung test.
fn connect(addr: &str) -> TcpStream {
    let c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    c
}

/// Send `request` on a new connection and read the reply until the server
/// closes it: (status line, whole reply).
fn exchange(addr: &str, request: &str) -> (String, String) {
    let mut c = connect(addr);
    c.write_all(request.as_bytes()).unwrap();
    let mut reply = String::new();
    c.read_to_string(&mut reply)
        .unwrap_or_else(|e| panic!("{request:?}: {e}; got {reply:?}"));
    let status = reply.lines().next().unwrap_or("").to_string();
    (status, reply)
}

fn scrape(addr: &str) -> String {
    let (status, reply) = exchange(
        addr,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, "HTTP/1.1 200 OK", "{reply}");
    reply
}

#[test]
fn slow_clients_do_not_stop_scrapes() {
    let dir = TempDir::new("xdpc-mon-slow");
    let _pages = sample_pages(&dir);
    let server = MetricsServer::start(&dir.0);
    let addr = server.addr.as_str();
    // Clients that send `GET /me` and then one byte every 2 s.
    let mut slow: Vec<TcpStream> = (0..6).map(|_| connect(addr)).collect();
    for c in &mut slow {
        c.write_all(b"GET /me").unwrap();
    }
    let drips = AtomicUsize::new(0);
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let writers: Vec<TcpStream> = slow.iter().map(|c| c.try_clone().unwrap()).collect();
        s.spawn(|| {
            let mut writers = writers;
            for tick in 1.. {
                std::thread::sleep(Duration::from_millis(100));
                if done.load(Ordering::Relaxed) {
                    break;
                }
                if tick % 20 != 0 {
                    continue;
                }
                for w in &mut writers {
                    // Fails once the server has closed the connection.
                    let _ = w.write_all(b"t");
                }
                drips.fetch_add(1, Ordering::Relaxed);
            }
        });
        // A kept-alive connection left idle after its answer is closed by
        // the server (read_to_string returns at its close).
        let idle = s.spawn(|| exchange(addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        // Concurrent scrapes until the slow clients have dripped twice.
        let mut rounds = 0;
        while drips.load(Ordering::Relaxed) < 2 {
            std::thread::scope(|t| {
                for _ in 0..4 {
                    t.spawn(|| {
                        let reply = scrape(addr);
                        assert!(reply.contains("xdpcast_session_state{session=\"lab-2\"} 3\n"));
                    });
                }
            });
            rounds += 1;
        }
        assert!(rounds > 0);
        // Unknown paths and methods.
        let (status, _) = exchange(
            addr,
            "GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(status, "HTTP/1.1 404 Not Found");
        let (status, reply) = exchange(
            addr,
            "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
        assert!(
            reply
                .to_ascii_lowercase()
                .contains("\r\nallow: get, head\r\n"),
            "{reply}"
        );
        let (status, reply) = exchange(
            addr,
            "HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(reply.ends_with("\r\n\r\n"), "HEAD has no body: {reply}");
        // The slow clients are cut off by the header timeout, none answered.
        for c in &mut slow {
            let mut rest = Vec::new();
            match c.read_to_end(&mut rest) {
                Ok(_) => {}
                Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
            }
            assert!(!rest.starts_with(b"HTTP/1.1 200"), "{rest:?}");
        }
        done.store(true, Ordering::Relaxed);
        let (status, reply) = idle.join().unwrap();
        assert_eq!(status, "HTTP/1.1 200 OK", "{reply}");
    });
    scrape(addr);
}
