//! `receive --http`: receivers finish from a real nginx (Debian's
//! nginx-light, started by each test with its own configuration inside a
//! namespace of the test's LAN) when multicast does not reach them, when
//! they join late, or when the sender dies; bytes altered on the way are
//! caught by the signed chunk hashes and fetched again; a web server that
//! stops mid-way leaves the receiver to NACK repair.
//!
//! Images are 8 MiB (4 MiB for the fleet) to keep CI short; the paths
//! taken are those of any size.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use xdpcast::status::page::State;
use xdpcast::ErrorCode;

const MIB: usize = 1 << 20;
const GROUP: &str = "239.7.7.7:5000";
/// nginx's port (each test has its own namespaces, so a fixed one).
const PORT: u16 = 8080;
/// The tampering proxy's port.
const PROXY_PORT: u16 = 8081;

/// nginx serving `root` on `addr:PORT` inside `ns`, `extra` directives in
/// its server block (HTTPS): one process
/// (`master_process off`), its pid, logs and temporary files in a
/// directory of its own; killed and waited for on drop.
struct Nginx {
    child: Child,
    dir: TempDir,
}

impl Nginx {
    fn start(ns: &Netns, addr: &str, root: &Path, extra: &str) -> Nginx {
        let dir = TempDir::new("xdpc-nginx");
        let d = dir.0.display();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\nevents {{ worker_connections 512; }}\n\
             http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n\
               proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n\
               uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               default_type application/octet-stream;\n  keepalive_requests 10000;\n\
               server {{\n    listen {addr}:{PORT};\n    root {};\n{extra}  }}\n}}\n",
            root.display()
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let mut c = ns.cmd("nginx");
        c.args(["-p", &d.to_string(), "-e", &format!("{d}/error.log")])
            .args(["-c", conf_path.to_str().unwrap()]);
        let mut child = spawn(c);
        // nginx writes its pid file once its listening socket is open.
        let pid = dir.join("nginx.pid");
        wait_for(Duration::from_secs(20), "nginx", || {
            if let Some(st) = child.try_wait().unwrap() {
                panic!(
                    "nginx exited ({st}): {}",
                    std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
                );
            }
            pid.exists().then_some(())
        });
        Nginx { child, dir }
    }

    /// Range requests nginx answered with 206 (from its access log).
    fn partial_replies(&self) -> usize {
        self.replies(|l| l.contains("\" 206 "))
    }

    /// Requests for a manifest file nginx answered with 404.
    fn manifest_not_found(&self) -> usize {
        self.replies(|l| l.contains(".xdpcast-manifest HTTP/1.1\" 404 "))
    }

    fn replies(&self, want: impl Fn(&str) -> bool) -> usize {
        std::fs::read_to_string(self.dir.join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| want(l))
            .count()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test's site: a LAN of hosts, an image in a scratch directory with a
/// signing key beside it, and nginx serving that directory from host 0
/// (which also sends). Dropped in this order: nginx, files, namespaces.
struct Site {
    nginx: Nginx,
    key: PathBuf,
    src: PathBuf,
    dir: TempDir,
    lan: Lan,
}

impl Site {
    fn new(prefix: &str, hosts: usize, mib: usize, seed: u64) -> Site {
        Site::with_server(prefix, hosts, mib, seed, |_| String::new())
    }

    /// A site whose nginx has `extra(host 0)` in its server block.
    fn with_server(
        prefix: &str,
        hosts: usize,
        mib: usize,
        seed: u64,
        extra: impl FnOnce(&Host) -> String,
    ) -> Site {
        let lan = Lan::new(hosts);
        let dir = TempDir::new(prefix);
        let src = dir.join("src.img");
        make_image(&src, mib * MIB, seed);
        let key = keygen(&dir, "tx");
        let web = &lan.hosts[0];
        let nginx = Nginx::start(&web.ns, &web.addr, &dir.0, &extra(web));
        Site {
            nginx,
            key,
            src,
            dir,
            lan,
        }
    }

    /// `xdpcast send --sign` of the image from host 0, named `tx`, its
    /// page kept in `status`.
    fn send(&self, status: &Path, extra: &[&str]) -> Child {
        let h = &self.lan.hosts[0];
        let mut c = xdpcast(&h.ns);
        c.env("XDPCAST_STATUS_DIR", status)
            .args(["send", self.src.to_str().unwrap(), "--group", GROUP])
            .args(["--iface", &h.iface, "--name", "tx", "--keep-status"])
            .args(["--sign", self.key.to_str().unwrap()])
            .args(extra);
        spawn(c)
    }
}

/// What the tampering proxy does to the replies it forwards.
#[derive(Clone, Copy)]
enum Tamper {
    /// Flip one byte in the body of every range reply.
    FlipAll,
    /// Forward `n` range replies faithfully, then stop listening (the
    /// web server gone mid-way).
    StopAfter(usize),
}

/// A small HTTP proxy in front of nginx, on `addr:PROXY_PORT` in `ns`:
/// each connection carries one request (forwarded with `Connection:
/// close`) and its reply, altered as `tamper` says. Stopped on drop.
struct Proxy {
    stop: Arc<AtomicBool>,
    replies: Arc<AtomicUsize>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    fn start(ns: &Netns, addr: &str, tamper: Tamper) -> Proxy {
        let stop = Arc::new(AtomicBool::new(false));
        let replies = Arc::new(AtomicUsize::new(0));
        let (s, r) = (stop.clone(), replies.clone());
        let listen: SocketAddr = format!("{addr}:{PROXY_PORT}").parse().unwrap();
        let upstream: SocketAddr = format!("{addr}:{PORT}").parse().unwrap();
        let path = format!("/var/run/netns/{}", ns.name);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap();
            // SAFETY: setns on this thread only, with a namespace fd we own.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            let listener = TcpListener::bind(listen).unwrap();
            listener.set_nonblocking(true).unwrap();
            ready_tx.send(()).unwrap();
            while !s.load(Ordering::Relaxed) {
                let (conn, _) = match listener.accept() {
                    Ok(c) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                let n = r.load(Ordering::Relaxed);
                if let Tamper::StopAfter(limit) = tamper {
                    if n >= limit {
                        // Gone: this connection and every later one refused.
                        drop(conn);
                        drop(listener);
                        return;
                    }
                }
                if relay(conn, upstream, tamper) {
                    r.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        ready_rx.recv().unwrap();
        Proxy {
            stop,
            replies,
            handle: Some(handle),
        }
    }

    fn replies(&self) -> usize {
        self.replies.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Forward one request from `conn` to `upstream` and its reply back,
/// altered; whether a range reply went back.
fn relay(mut conn: TcpStream, upstream: SocketAddr, tamper: Tamper) -> bool {
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines: Vec<&str> = text
        .split("\r\n")
        .filter(|l| !l.is_empty() && !l.to_ascii_lowercase().starts_with("connection:"))
        .collect();
    lines.push("Connection: close");
    let request = format!("{}\r\n\r\n", lines.join("\r\n"));
    let Ok(mut up) = TcpStream::connect(upstream) else {
        return false;
    };
    up.write_all(request.as_bytes()).unwrap();
    let mut reply = Vec::new();
    let _ = up.read_to_end(&mut reply);
    let Some(split) = reply.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let partial = reply.starts_with(b"HTTP/1.1 206");
    let body = split + 4;
    if partial && matches!(tamper, Tamper::FlipAll) && reply.len() > body {
        let at = body + (reply.len() - body) / 2;
        reply[at] ^= 0x5a;
    }
    let _ = conn.write_all(&reply);
    partial
}

/// `xdpcast receive` on `host` into DIR/NAME.img with the status page in
/// `dir`.
fn receiver(host: &Host, dir: &Path, name: &str, args: &[&str]) -> Child {
    let out = dir.join(format!("{name}.img"));
    let mut all = vec!["--iface", &host.iface, "--out", out.to_str().unwrap()];
    all.extend_from_slice(args);
    start_receiver(xdpcast(&host.ns), dir, name, GROUP, &all)
}

/// A receiver's arguments on the XDP path trusting `key` (its public
/// half): `loss` parts per million of what it hears dropped
/// (`--inject-loss`), `url` its web server (`--http`), then `more`.
fn xdp_receiver_args<'a>(
    loss: Option<&'a str>,
    key: &'a str,
    url: Option<&'a str>,
    more: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec!["--mode", "xdp"];
    args.extend(loss.iter().flat_map(|ppm| ["--inject-loss", ppm]));
    args.extend(["--trust", key]);
    args.extend(url.iter().flat_map(|u| ["--http", u]));
    args.extend_from_slice(more);
    args
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The receiver ended in SUCCESS with the image's SHA-256, every chunk
/// verified against the signed manifest.
fn assert_verified(dir: &Path, name: &str, out: &Output, want: &str) -> xdpcast::Snapshot {
    let all = text(out);
    assert!(out.status.success(), "{name}: {all}");
    assert_eq!(sha256_hex(&dir.join(format!("{name}.img"))), want, "{name}");
    let s = read_page(dir, name);
    assert_eq!(
        (s.state, s.error),
        (State::Success, ErrorCode::None),
        "{name}: {all}"
    );
    assert!(s.trust.chunk_count > 0, "{name}");
    assert_eq!(s.trust.chunks_verified, s.trust.chunk_count, "{name}");
    s
}

/// A receiver whose XDP program drops every frame of the group hears no
/// multicast: after --http-after it fetches the manifest `send --sign`
/// wrote beside the image, then the whole image from nginx, with the
/// sender still running and the group still joined.
#[test]
fn a_receiver_that_hears_no_multicast_finishes_from_nginx() {
    if !netns_allowed() {
        return;
    }
    let site = Site::new("xdpc-http-deaf", 2, 8, 71);
    let (lan, dir, src, key) = (&site.lan, &site.dir, &site.src, &site.key);
    let (tx_host, rx_host) = (&lan.hosts[0], &lan.hosts[1]);
    // Slow (8 MiB at 8 Mbit/s, 8 s a pass): still sending while the
    // receiver fetches. The sender reads the image as it sends it, so the
    // manifest file (every page, the SHA-256) is written when its first
    // pass ends; the second pass keeps it going meanwhile.
    let tx = start_sender(
        &tx_host.ns,
        &tx_host.iface,
        GROUP,
        src,
        &[
            "--sign",
            key.to_str().unwrap(),
            "--rate",
            "8M",
            "--passes",
            "2",
            "--linger",
            "2",
        ],
    );
    wait_for(Duration::from_secs(30), "the manifest file", || {
        dir.join("src.img.xdpcast-manifest").exists().then_some(())
    });
    let url = format!("http://{}:{PORT}/src.img", tx_host.addr);
    let key_pub = pub_of(key);
    let more = ["--http-after", "1", "--http-jitter-ms", "200"];
    let args = xdp_receiver_args(Some("1000000"), &key_pub, Some(&url), &more);
    let rx = receiver(rx_host, &dir.0, "deaf", &args);
    let out = wait_output(rx, Duration::from_secs(120), "deaf receiver");
    let s = assert_verified(&dir.0, "deaf", &out, &sha256_hex(src));
    assert!(
        text(&out).contains("the whole image over HTTP"),
        "{}",
        text(&out)
    );
    // Nothing came by multicast: every block from nginx's range replies.
    assert!(site.nginx.partial_replies() > 0);
    assert_eq!(s.workers.iter().map(|w| w.bytes).sum::<u64>(), 0, "{s:?}");
    assert_eq!(s.http.multicast_bytes, 0, "{:?}", s.http);
    assert!(s.http.http_bytes >= (8 * MIB) as u64, "{:?}", s.http);
    assert!(s.http.state > 0 && s.http.requests > 1, "{:?}", s.http);
    // The sender heard its reports: finished, over HTTP alone.
    let table = ok(
        &wait_output(tx, Duration::from_secs(60), "sender"),
        "sender",
    );
    let row = table
        .lines()
        .find(|l| l.contains(" deaf "))
        .unwrap_or_else(|| panic!("no row for deaf in {table}"));
    assert!(
        row.contains(" finished ") && row.ends_with(" http"),
        "{row}"
    );
}

/// The sender makes one pass and nothing is published before it: a deaf
/// receiver that asked first (nginx answered 404) keeps asking, takes the
/// manifest file the sender writes when its pass ends, and finishes from
/// nginx. The next session of the unchanged image publishes the kept
/// file's chunk hashes, signed anew, before its first packet: a deaf
/// receiver is then the one receiver that sender waits for
/// (`--min-receivers 1`), which it can only be if it started from the file.
#[test]
fn deaf_receivers_finish_from_nginx_with_a_one_pass_sender() {
    if !netns_allowed() {
        return;
    }
    let site = Site::new("xdpc-http-once", 2, 4, 77);
    let (lan, dir, src, key) = (&site.lan, &site.dir, &site.src, &site.key);
    let (tx_host, rx_host) = (&lan.hosts[0], &lan.hosts[1]);
    let url = format!("http://{}:{PORT}/src.img", tx_host.addr);
    let key_pub = pub_of(key);
    // Two failures in a row would end a source that is refused; a file
    // not there yet is no failure.
    let more = [
        "--http-after",
        "1",
        "--http-jitter-ms",
        "100",
        "--http-max-failures",
        "2",
        "--start-timeout",
        "120",
    ];
    let deaf = xdp_receiver_args(Some("1000000"), &key_pub, Some(&url), &more);
    let want = sha256_hex(src);
    let rx = receiver(rx_host, &dir.0, "first", &deaf);
    wait_for(
        Duration::from_secs(60),
        "a 404 for the manifest file",
        || (site.nginx.manifest_not_found() > 0).then_some(()),
    );
    let status = TempDir::new("xdpc-http-once-tx");
    let tx = site.send(&status.0, &["--rate", "8M", "--passes", "1"]);
    let out = wait_output(rx, Duration::from_secs(120), "first deaf receiver");
    let s = assert_verified(&dir.0, "first", &out, &want);
    let log = text(&out);
    assert!(log.contains("asking again until it is there"), "{log}");
    assert!(!log.contains("given up"), "{log}");
    assert_eq!(s.http.multicast_bytes, 0, "{:?}", s.http);
    assert!(s.http.http_bytes >= (4 * MIB) as u64, "{:?}", s.http);
    assert!(s.http.refused >= 1, "{:?}", s.http);
    ok(
        &wait_output(tx, Duration::from_secs(60), "first sender"),
        "first sender",
    );
    let kept = dir.join("src.img.xdpcast-manifest");
    let file =
        xdpcast::fetch::manifest_file::ManifestFile::parse(&std::fs::read(&kept).unwrap()).unwrap();
    assert!(file.stamp.is_some(), "the sender stamps the file it wrote");

    let status = TempDir::new("xdpc-http-once-tx2");
    let tx = site.send(
        &status.0,
        &[
            "--rate",
            "8M",
            "--passes",
            "1",
            "--min-receivers",
            "1",
            "--start-timeout",
            "60",
            "-v",
        ],
    );
    let rx = receiver(rx_host, &dir.0, "second", &deaf);
    let out = wait_output(rx, Duration::from_secs(120), "second deaf receiver");
    assert_verified(&dir.0, "second", &out, &want);
    let out = wait_output(tx, Duration::from_secs(60), "second sender");
    let table = ok(&out, "second sender");
    assert!(
        text(&out).contains("before the first pass"),
        "{}",
        text(&out)
    );
    let row = table
        .lines()
        .find(|l| l.contains(" second "))
        .unwrap_or_else(|| panic!("no row for second in {table}"));
    assert!(row.contains(" finished ") && row.contains("http"), "{row}");
}

/// The sender names nginx in its signed manifest (`send --http-url`); a
/// receiver given no `--http` that lost 30 % of one pass fetches the rest
/// from there. With `--no-http` it takes nothing from any web server.
#[test]
fn urls_named_by_the_signed_manifest_serve_a_receiver_given_none() {
    if !netns_allowed() {
        return;
    }
    let site = Site::new("xdpc-http-named", 2, 4, 79);
    let (lan, dir, src, key) = (&site.lan, &site.dir, &site.src, &site.key);
    let (tx_host, rx_host) = (&lan.hosts[0], &lan.hosts[1]);
    let url = format!("http://{}:{PORT}/src.img", tx_host.addr);
    let key_pub = pub_of(key);
    let lossy = xdp_receiver_args(Some("300000"), &key_pub, None, &[]);
    let rx = receiver(rx_host, &dir.0, "named", &lossy);
    let status = TempDir::new("xdpc-http-named-tx");
    // The manifest file is published beside the image (before the first
    // pass): pages of chunk hashes the loss took come from it, so no
    // repair round is asked for (without it the receiver NACKs for them).
    let tx = site.send(&status.0, &["--http-url", &url, "--min-receivers", "1"]);
    let out = wait_output(rx, Duration::from_secs(120), "receiver given no --http");
    let s = assert_verified(&dir.0, "named", &out, &sha256_hex(src));
    assert!(
        text(&out).contains(&format!("names {url}")),
        "{}",
        text(&out)
    );
    assert!(
        s.http.state > 0 && s.http.http_bytes > 0,
        "{:?}\n{}",
        s.http,
        text(&out)
    );
    assert!(s.http.multicast_bytes > 0, "{:?}", s.http);
    assert!(site.nginx.partial_replies() > 0);
    ok(
        &wait_output(tx, Duration::from_secs(60), "sender"),
        "sender",
    );
    // --no-http: the named URL is not used; NACK repair finishes.
    let served = site.nginx.partial_replies();
    let mut args = lossy.to_vec();
    args.push("--no-http");
    let rx = receiver(rx_host, &dir.0, "nohttp", &args);
    let tx = site.send(
        &status.0,
        &[
            "--http-url",
            &url,
            "--min-receivers",
            "1",
            "--no-manifest-file",
        ],
    );
    let out = wait_output(rx, Duration::from_secs(120), "receiver with --no-http");
    let s = assert_verified(&dir.0, "nohttp", &out, &sha256_hex(src));
    assert_eq!((s.http.state, s.http.http_bytes), (0, 0), "{:?}", s.http);
    assert!(s.nacks_sent > 0, "{s:?}");
    assert_eq!(site.nginx.partial_replies(), served);
    ok(
        &wait_output(tx, Duration::from_secs(60), "sender"),
        "sender",
    );
}

/// A receiver that starts when the sender is half-way through its pass
/// takes the rest by multicast and what went by from nginx at once. The
/// sender makes a second pass: a receiver slowed by a loaded machine that
/// comes up after the first pass has ended (seen under a CPU hog) still
/// hears multicast, and still joins late (in the second pass).
#[test]
fn a_late_joiner_takes_what_went_by_from_nginx() {
    if !netns_allowed() {
        return;
    }
    let site = Site::new("xdpc-http-late", 2, 8, 72);
    let (lan, dir, src, key) = (&site.lan, &site.dir, &site.src, &site.key);
    let (tx_host, rx_host) = (&lan.hosts[0], &lan.hosts[1]);
    let status = TempDir::new("xdpc-http-late-tx");
    let tx = site.send(
        &status.0,
        &["--rate", "8M", "--linger", "5", "--passes", "2"],
    );
    let total = (8 * MIB) as u64;
    wait_for(Duration::from_secs(60), "the sender half-way", || {
        let s = xdpcast::StatusReader::open(&status.join("xdpcast.tx"))
            .ok()?
            .read()
            .ok()?;
        (s.bytes_done >= total * 2 / 5).then_some(())
    });
    let url = format!("http://{}:{PORT}/src.img", tx_host.addr);
    let rx = receiver(
        rx_host,
        &dir.0,
        "late",
        &xdp_receiver_args(
            None,
            &pub_of(key),
            Some(&url),
            &["--http-after", "30", "--http-jitter-ms", "100"],
        ),
    );
    let out = wait_output(rx, Duration::from_secs(120), "late receiver");
    let s = assert_verified(&dir.0, "late", &out, &sha256_hex(src));
    assert!(text(&out).contains("joined late"), "{}", text(&out));
    let multicast: u64 = s.workers.iter().map(|w| w.bytes).sum();
    assert!(multicast > 0 && multicast < total, "{multicast} of {total}");
    assert_eq!(s.http.multicast_bytes, multicast, "{:?}", s.http);
    assert!(s.http.http_bytes > 0, "{:?}", s.http);
    ok(
        &wait_output(tx, Duration::from_secs(60), "sender"),
        "sender",
    );
}

/// 16 receivers lose 5 % each; the sender is killed when its first pass
/// ends; every receiver finishes from nginx.
#[test]
fn a_fleet_whose_sender_dies_finishes_from_nginx() {
    if !netns_allowed() {
        return;
    }
    let n = 16;
    let site = Site::new("xdpc-http-fleet", n + 1, 4, 73);
    let (lan, dir, src, key) = (&site.lan, &site.dir, &site.src, &site.key);
    let tx_host = &lan.hosts[0];
    let url = format!("http://{}:{PORT}/src.img", tx_host.addr);
    let names: Vec<String> = (0..n).map(|i| format!("rx{i:02}")).collect();
    let rxs: Vec<Child> = names
        .iter()
        .zip(&lan.hosts[1..])
        .map(|(name, host)| {
            receiver(
                host,
                &dir.0,
                name,
                &xdp_receiver_args(
                    Some("50000"),
                    &pub_of(key),
                    Some(&url),
                    &["--http-after", "2", "--http-repair-percent", "100"],
                ),
            )
        })
        .collect();
    let status = TempDir::new("xdpc-http-fleet-tx");
    let tx = site.send(
        &status.0,
        &[
            "--rate",
            "16M",
            "--min-receivers",
            &n.to_string(),
            "--start-timeout",
            "60",
        ],
    );
    wait_for(
        Duration::from_secs(120),
        "the end of the first pass",
        || {
            let s = xdpcast::StatusReader::open(&status.join("xdpcast.tx"))
                .ok()?
                .read()
                .ok()?;
            (s.sender.phase != xdpcast::status::page::SendPhase::Waiting
                && s.sender.phase != xdpcast::status::page::SendPhase::Pass)
                .then_some(())
        },
    );
    kill_group(&tx);
    let _ = wait_output(tx, Duration::from_secs(30), "sender");
    let want = sha256_hex(src);
    for (name, rx) in names.iter().zip(rxs) {
        let out = wait_output(rx, Duration::from_secs(180), name);
        assert_verified(&dir.0, name, &out, &want);
    }
    assert!(site.nginx.partial_replies() > 0);
}

/// A proxy that flips a byte in every range reply: the chunks fail their
/// signed hash, are counted, and come again from the honest mirror; with
/// only the tampering proxy, nothing forged ever makes a SUCCESS.
#[test]
fn bytes_altered_on_the_way_are_caught_and_fetched_again() {
    if !netns_allowed() {
        return;
    }
    let site = Site::new("xdpc-http-tamper", 2, 8, 74);
    let (lan, dir, src, key) = (&site.lan, &site.dir, &site.src, &site.key);
    // Made ahead of time: no sender at all.
    ok(
        &std::process::Command::new(env!("CARGO_BIN_EXE_xdpcast"))
            .args([
                "manifest",
                src.to_str().unwrap(),
                "--sign",
                key.to_str().unwrap(),
            ])
            .output()
            .unwrap(),
        "xdpcast manifest",
    );
    let (web, rx_host) = (&lan.hosts[0], &lan.hosts[1]);
    let proxy = Proxy::start(&web.ns, &web.addr, Tamper::FlipAll);
    let bad = format!("http://{}:{PROXY_PORT}/src.img", web.addr);
    let good = format!("http://{}:{PORT}/src.img", web.addr);
    let common = [
        "--mode",
        "socket",
        "--trust",
        &pub_of(key),
        "--http-after",
        "1",
        "--http-jitter-ms",
        "0",
        "--idle-timeout",
        "5",
    ];
    // Two mirrors, the first one lying.
    let mut args = common.to_vec();
    args.extend(["--http", &bad, "--http", &good]);
    let out = wait_output(
        receiver(rx_host, &dir.0, "mirrors", &args),
        Duration::from_secs(120),
        "receiver with two mirrors",
    );
    let s = assert_verified(&dir.0, "mirrors", &out, &sha256_hex(src));
    assert!(proxy.replies() > 0);
    assert!(s.trust.rejected_blocks > 0, "{:?}", s.trust);
    assert!(
        s.drops_for(xdpcast::proto::wire::DropReason::BadChunk) > 0,
        "{s:?}"
    );
    assert!(
        text(&out).contains("failed their signed hash"),
        "{}",
        text(&out)
    );
    assert!(s.http.bad_chunks > 0, "{:?}", s.http);
    // The lying proxy alone: FAILURE, and the target never verified.
    let mut args = common.to_vec();
    args.extend(["--http", &bad, "--http-max-failures", "3"]);
    let out = wait_output(
        receiver(rx_host, &dir.0, "liar", &args),
        Duration::from_secs(120),
        "receiver with a lying mirror",
    );
    assert!(!out.status.success(), "{}", text(&out));
    let s = read_page(&dir.0, "liar");
    assert_eq!(s.state, State::Failure, "{}", text(&out));
    // Each reply had one byte flipped: the chunks it fell in never verify.
    assert!(
        s.trust.chunks_verified < s.trust.chunk_count,
        "{:?}",
        s.trust
    );
    assert!(s.trust.rejected_blocks > 0, "{:?}", s.trust);
    assert!(
        text(&out).contains("back to multicast repair"),
        "{}",
        text(&out)
    );
}

/// The web server answers a few ranges and then goes: one message, and
/// the receiver finishes by NACK repair from the sender.
#[test]
fn a_web_server_gone_mid_way_leaves_the_rest_to_nack_repair() {
    if !netns_allowed() {
        return;
    }
    let site = Site::new("xdpc-http-gone", 2, 8, 75);
    let (lan, dir, src, key) = (&site.lan, &site.dir, &site.src, &site.key);
    let (tx_host, rx_host) = (&lan.hosts[0], &lan.hosts[1]);
    let proxy = Proxy::start(&tx_host.ns, &tx_host.addr, Tamper::StopAfter(2));
    let url = format!("http://{}:{PROXY_PORT}/src.img", tx_host.addr);
    // 30 % loss: after the pass the receiver lacks far more than 1 %, so it
    // turns to HTTP instead of NACKs.
    let rx = receiver(
        rx_host,
        &dir.0,
        "rx",
        &xdp_receiver_args(
            Some("300000"),
            &pub_of(key),
            Some(&url),
            &[
                "--http-repair-percent",
                "1",
                "--http-parallel",
                "1",
                "--http-range-kib",
                "64",
                "--http-jitter-ms",
                "0",
                "--http-max-failures",
                "2",
            ],
        ),
    );
    let tx = start_sender(
        &tx_host.ns,
        &tx_host.iface,
        GROUP,
        src,
        &["--sign", key.to_str().unwrap(), "--min-receivers", "1"],
    );
    let out = wait_output(rx, Duration::from_secs(120), "receiver");
    let s = assert_verified(&dir.0, "rx", &out, &sha256_hex(src));
    let log = text(&out);
    assert_eq!(proxy.replies(), 2);
    assert_eq!(log.matches("back to multicast repair").count(), 1, "{log}");
    assert!(s.nacks_sent > 0, "{s:?}");
    // Given up (state 3) after the refusals.
    assert_eq!(s.http.state, 3, "{:?}", s.http);
    assert!(s.http.refused >= 2 && s.http.http_bytes > 0, "{:?}", s.http);
    ok(
        &wait_output(tx, Duration::from_secs(60), "sender"),
        "sender",
    );
}

/// A lab's own certificate authority, made by the test with openssl, and a
/// server certificate it signed for `ip` (subjectAltName IP, as rustls
/// checks); PEM files in `dir`: ca.pem, server.pem, server.key.
fn lab_ca(dir: &TempDir, ip: &str) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(&dir.0)
            .output()
            .unwrap();
        ok(&out, &format!("openssl {args:?}"));
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem", "-days", "2"]);
    ca.extend(["-subj", "/CN=xdpcast test lab CA"]);
    ca.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
    ca.extend(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
    run(&ca);
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=web",
    ]);
    run(&csr);
    std::fs::write(
        dir.join("ext.cnf"),
        format!("subjectAltName=IP:{ip}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"),
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
}

/// nginx serving HTTPS with a certificate of a lab CA: a receiver given the
/// CA (`--http-ca`) finishes from it; one without trusts only Mozilla's
/// roots, refuses the server at every try and ends at its start timeout,
/// nothing taken from it.
#[test]
fn https_with_a_lab_ca_given_by_http_ca() {
    if !netns_allowed() {
        return;
    }
    const TLS_PORT: u16 = 8443;
    let pki = TempDir::new("xdpc-http-pki");
    let site = Site::with_server("xdpc-http-tls", 2, 4, 78, |web| {
        lab_ca(&pki, &web.addr);
        format!(
            "    listen {}:{TLS_PORT} ssl;\n    ssl_certificate {};\n    ssl_certificate_key {};\n",
            web.addr,
            pki.join("server.pem").display(),
            pki.join("server.key").display()
        )
    });
    let (lan, dir, src, key, nginx) = (&site.lan, &site.dir, &site.src, &site.key, &site.nginx);
    let (web, rx_host) = (&lan.hosts[0], &lan.hosts[1]);
    ok(
        &std::process::Command::new(env!("CARGO_BIN_EXE_xdpcast"))
            .args([
                "manifest",
                src.to_str().unwrap(),
                "--sign",
                key.to_str().unwrap(),
            ])
            .output()
            .unwrap(),
        "xdpcast manifest",
    );
    let url = format!("https://{}:{TLS_PORT}/src.img", web.addr);
    let ca = pki.join("ca.pem");
    let key_pub = pub_of(key);
    let common = [
        "--mode",
        "socket",
        "--trust",
        &key_pub,
        "--http",
        &url,
        "--http-after",
        "1",
        "--http-jitter-ms",
        "0",
        "--idle-timeout",
        "5",
    ];
    let mut args = common.to_vec();
    args.extend(["--http-ca", ca.to_str().unwrap()]);
    let out = wait_output(
        receiver(rx_host, &dir.0, "lab", &args),
        Duration::from_secs(120),
        "receiver with --http-ca",
    );
    let s = assert_verified(&dir.0, "lab", &out, &sha256_hex(src));
    assert!(s.http.http_bytes >= (4 * MIB) as u64, "{:?}", s.http);
    assert!(nginx.partial_replies() > 0);
    // Without the CA: refused at every try, never given up while no
    // session is known; the start timeout ends it.
    let served = nginx.partial_replies();
    let mut args = common.to_vec();
    args.extend(["--start-timeout", "6"]);
    let out = wait_output(
        receiver(rx_host, &dir.0, "nolab", &args),
        Duration::from_secs(120),
        "receiver without --http-ca",
    );
    assert!(!out.status.success(), "{}", text(&out));
    let s = read_page(&dir.0, "nolab");
    assert_eq!(
        (s.state, s.error),
        (State::Failure, ErrorCode::Timeout),
        "{}",
        text(&out)
    );
    assert!(s.http.refused > 0, "{:?}", s.http);
    assert_eq!(s.http.http_bytes, 0, "{:?}", s.http);
    assert!(
        text(&out).to_lowercase().contains("certificate"),
        "{}",
        text(&out)
    );
    assert_eq!(nginx.partial_replies(), served);
}

/// Bytes nginx sent in range replies (its access log's default format:
/// `"GET ..." 206 BYTES ...`).
fn bytes_served(nginx: &Nginx) -> u64 {
    std::fs::read_to_string(nginx.dir.join("access.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            l.split("\" 206 ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// The figure of docs/http.md: an image of `XDPCAST_HTTP_BENCH_MIB` MiB
/// (default 1024) to `XDPCAST_HTTP_BENCH_RX` receivers (16), of which
/// `XDPCAST_HTTP_BENCH_DEAF` (4) hear no multicast; prints the time from
/// the sender's start until every receiver verified the image, and the
/// bytes nginx served. Run alone on the machine:
///
/// `XDPCAST_HTTP_BENCH_MIB=1024 cargo test --release --test http -- --ignored --nocapture`
#[test]
#[ignore = "benchmark: run alone, see docs/http.md"]
fn bench_fleet_with_deaf_receivers() {
    if !netns_allowed() {
        return;
    }
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (mib, n, deaf) = (
        env("XDPCAST_HTTP_BENCH_MIB", 1024),
        env("XDPCAST_HTTP_BENCH_RX", 16),
        env("XDPCAST_HTTP_BENCH_DEAF", 4),
    );
    assert!(deaf <= n);
    let site = Site::new("xdpc-http-bench", n + 1, mib, 76);
    let (lan, dir, src, key) = (&site.lan, &site.dir, &site.src, &site.key);
    let tx_host = &lan.hosts[0];
    let url = format!("http://{}:{PORT}/src.img", tx_host.addr);
    let key_pub = pub_of(key);
    let rxs: Vec<(String, Child)> = (0..n)
        .map(|i| {
            let name = format!("rx{i:02}");
            let mut args = xdp_receiver_args(None, &key_pub, Some(&url), &["--http-after", "5"]);
            if i < deaf {
                // Deaf: the manifest file comes when the sender's first
                // pass ends (a fresh image), so they wait that long.
                args.extend(["--inject-loss", "1000000", "--start-timeout", "3600"]);
            }
            let rx = receiver(&lan.hosts[i + 1], &dir.0, &name, &args);
            (name, rx)
        })
        .collect();
    let start = std::time::Instant::now();
    let tx = site.send(
        &dir.0,
        &[
            "--min-receivers",
            &(n - deaf).to_string(),
            "--start-timeout",
            "120",
        ],
    );
    let want = sha256_hex(src);
    for (name, rx) in rxs {
        let out = wait_output(rx, Duration::from_secs(3600), &name);
        assert_verified(&dir.0, &name, &out, &want);
    }
    let elapsed = start.elapsed();
    let served = bytes_served(&site.nginx);
    let table = ok(
        &wait_output(tx, Duration::from_secs(600), "sender"),
        "sender",
    );
    eprintln!("{table}");
    eprintln!(
        "http fleet bench: {mib} MiB to {n} receivers ({deaf} without multicast): all SUCCESS in {:.2} s; nginx served {served} bytes ({:.2} images)",
        elapsed.as_secs_f64(),
        served as f64 / (mib * MIB) as f64
    );
}

/// `xdpcast manifest --http-url`: the URLs are in the file's signed head,
/// as `send --http-url` puts them (a receiver that verified it and was
/// given no `--http` fetches from them), the head verifies with the public
/// key and names the image's SHA-256; a URL a head cannot carry is refused
/// before the image is read, and no file is written.
#[test]
fn the_manifest_subcommand_names_urls_in_the_signed_head() {
    let dir = TempDir::new("xdpc-http-mfurl");
    let src = dir.join("src.img");
    make_image(&src, MIB + 123, 81);
    let key = keygen(&dir, "tx");
    let urls = [
        "http://fog.lab/images/src.img",
        "https://mirror.lab/src.img",
    ];
    let out = dir.join("src.img.xdpcast-manifest");
    let manifest = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_xdpcast"))
            .args(["manifest", src.to_str().unwrap()])
            .args(["--sign", key.to_str().unwrap()])
            .args(["--out", out.to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap()
    };
    ok(
        &manifest(&["--http-url", urls[0], "--http-url", urls[1]]),
        "xdpcast manifest --http-url",
    );
    let file =
        xdpcast::fetch::manifest_file::ManifestFile::parse(&std::fs::read(&out).unwrap()).unwrap();
    let trusted = xdpcast::store::keys::load_trusted(&pub_of(&key)).unwrap();
    let (m, _) = xdpcast::proto::manifest::Manifest::verify(&file.head, &trusted).unwrap();
    assert_eq!(xdpcast::proto::wire::hex(&m.digest), sha256_hex(&src));
    assert_eq!(xdpcast::proto::manifest::head_urls(&file.head), urls);
    // Another key does not verify it: the URLs are signed with the head.
    let other = keygen(&dir, "other");
    let others = xdpcast::store::keys::load_trusted(&pub_of(&other)).unwrap();
    assert!(xdpcast::proto::manifest::Manifest::verify(&file.head, &others).is_err());
    // A URL no head can carry: refused, nothing written.
    std::fs::remove_file(&out).unwrap();
    let bad = manifest(&["--http-url", "ftp://fog.lab/src.img"]);
    assert!(!bad.status.success(), "{}", text(&bad));
    assert!(text(&bad).contains("--http-url"), "{}", text(&bad));
    assert!(!out.exists());
}
