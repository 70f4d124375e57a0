//! Monitoring through the ecosystem's own tools: `promtool check metrics`
//! on the exposition of `xdpcast metrics`, its HTTP endpoint under slow
//! clients, and the Grafana dashboard's queries on a real Prometheus
//! server scraping live receivers.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use xdpcast::net::rings::XskStats;
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
        kernel: XskStats {
            rx_ring_full: 1,
            fill_ring_empty: 3,
            ..Default::default()
        },
        gro_messages: 0,
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

/// A child process killed (and reaped) on drop, even when the test fails.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Percent-encode a URL query value.
fn query_escape(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// GET `path` from the Prometheus server at `addr` (HTTP/1.0: the body
/// runs to the close); None if it does not answer 200 yet.
fn prometheus_get(addr: &str, path: &str) -> Option<String> {
    let mut c = TcpStream::connect(addr).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .ok()?;
    let mut reply = String::new();
    c.read_to_string(&mut reply).ok()?;
    let (head, body) = reply.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.0 200").then(|| body.to_string())
}

/// The PromQL of every panel of docs/grafana-dashboard.json, with the
/// `$session` and `$sender` variables set to all sessions: (panel title,
/// query).
fn dashboard_queries() -> Vec<(String, String)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/grafana-dashboard.json"
    );
    let d: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"]
                .as_str()
                .unwrap()
                .replace("$session", ".*")
                .replace("$sender", ".*");
            out.push((p["title"].as_str().unwrap().to_string(), expr));
        }
    }
    out
}

/// Debian's Prometheus server (setup.sh installs the package) on a free
/// loopback port, keeping its data in `dir`, scraping `target` every
/// second; ready to answer queries. A port taken between our probe and
/// its bind makes it exit: then it is started again on another.
fn start_prometheus(dir: &TempDir, target: &str) -> (Killed, String) {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: xdpcast\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let log = dir.join("prometheus.log");
    for _ in 0..3 {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = free.local_addr().unwrap().to_string();
        drop(free);
        let mut prom = Killed(
            Command::new("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("tsdb").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .arg("--log.level=warn")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("prometheus (apt install prometheus; see setup.sh)"),
        );
        let ready = wait_for(Duration::from_secs(60), "Prometheus ready or gone", || {
            if prom.0.try_wait().unwrap().is_some() {
                return Some(false);
            }
            prometheus_get(&addr, "/-/ready").map(|_| true)
        });
        if ready {
            return (prom, addr);
        }
    }
    panic!(
        "prometheus did not start: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

#[test]
fn dashboard_queries_return_data_from_prometheus() {
    if !netns_allowed() {
        return;
    }
    let queries = dashboard_queries();
    let wanted = [
        "Progress",
        "Receive rate",
        "Loss before repair",
        "Drops by reason",
        "Ring drops",
        "Batch latency per worker (p99)",
        "Sessions in FAILURE",
        "Sender progress",
        "Sender rate",
        "Receivers per state (sender's view)",
        "Repair requests by kind",
    ];
    for w in wanted {
        assert!(queries.iter().any(|(t, _)| t == w), "no panel {w}");
    }
    let ns = Netns::new("xdpc-mon-");
    ns.ip(&["route", "add", "224.0.0.0/4", "dev", "lo"]);
    let dir = TempDir::new("xdpc-mon-prom");
    let (src, dst) = (dir.join("src.img"), dir.join("dst.img"));
    make_image(&src, 4 << 20, 21);
    let receive = |name: &str, group: &str, extra: &[&str]| {
        let mut c = xdpcast(&ns);
        c.env("XDPCAST_STATUS_DIR", &dir.0)
            .args([
                "receive",
                "--iface",
                "lo",
                "--mode",
                "socket",
                "--keep-status",
            ])
            .args(["--group", group, "--name", name, "--out"])
            .arg(&dst)
            .args(extra);
        spawn(c)
    };
    // One session that failed (nothing sent), one receiving a slow sender.
    let failed = receive("prom-failed", "239.44.1.1:5000", &["--start-timeout", "1"]);
    let out = wait_output(failed, Duration::from_secs(30), "failing receiver");
    assert_eq!(out.status.code(), Some(102), "timeout exit status");
    let _live = Killed(receive("prom-live", "239.44.1.2:5000", &[]));
    // The sender's page in the same directory, for the sender panels; kept
    // after it exits (it may be done before Prometheus scrapes).
    let mut tx = xdpcast(&ns);
    tx.env("XDPCAST_STATUS_DIR", &dir.0)
        .args(["send", "--iface", "lo", "--group", "239.44.1.2:5000"])
        .args(["--name", "prom-tx", "--keep-status", "--rate", "8M"])
        .arg(&src);
    let _tx = Killed(spawn(tx));
    wait_for(Duration::from_secs(30), "first blocks", || {
        let page = xdpcast::StatusReader::open(&dir.join("xdpcast.prom-live"));
        let s = page.and_then(|p| p.read()).ok()?;
        (s.blocks_done > 0).then_some(())
    });

    let (metrics, metrics_addr) = start_metrics(&dir.0, &[]);
    let _metrics = Killed(metrics);
    let (_prom, prom_addr) = start_prometheus(&dir, &metrics_addr);
    for (title, expr) in &queries {
        let path = format!("/api/v1/query?query={}", query_escape(expr));
        let result = wait_for(Duration::from_secs(60), title, || {
            let body = prometheus_get(&prom_addr, &path)?;
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["status"], "success", "{title}: {expr}: {body}");
            let r = v["data"]["result"].as_array().unwrap().clone();
            (!r.is_empty()).then_some(r)
        });
        if title == "Sessions in FAILURE" {
            assert_eq!(result[0]["value"][1], "1", "{expr}: {result:?}");
        }
    }
}
