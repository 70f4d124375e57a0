//! Issue 4: session states and error codes end to end, the status page as a
//! public interface (Rust, C and Python readers, unprivileged readers, no
//! torn reads), `xdpcast monitor` and `xdpcast metrics`, and the C ABI.
//!
//! Receivers and senders are the `xdpcast` binary run in throw-away network
//! namespaces (loopback, groups in 239.0.0.0/8 only); every test has its own
//! status directory.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use xdpcast::proto::wire::hex;
use xdpcast::proto::wire::{self, Control, DropReason, Geometry, Kind};
use xdpcast::status::page::{
    self, offsets, Role, SendPhase, Snapshot, State, StatusReader, StatusWriter, ZeroMethod,
};
use xdpcast::status::report::SessionReport;
use xdpcast::ErrorCode;

const MIB: usize = 1 << 20;

/// A namespace with loopback up and multicast routed to it.
fn netns() -> Netns {
    let ns = Netns::new("xdpc-api-");
    ns.ip(&["route", "add", "224.0.0.0/4", "dev", "lo"]);
    ns
}

/// A status directory that unprivileged users can enter.
fn status_dir(prefix: &str) -> TempDir {
    let d = TempDir::new(prefix);
    std::fs::set_permissions(&d.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

fn page_of(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("xdpcast.{name}"))
}

fn try_read(dir: &Path, name: &str) -> Option<Snapshot> {
    StatusReader::open(&page_of(dir, name)).ok()?.read().ok()
}

/// `xdpcast receive` on lo in `ns` (socket path), not waited for.
fn receiver(ns: &Netns, dir: &Path, name: &str, group: &str, out: &Path, extra: &[&str]) -> Child {
    let mut c = ns.cmd(env!("CARGO_BIN_EXE_xdpcast"));
    c.env("XDPCAST_STATUS_DIR", dir)
        .args([
            "receive", "--iface", "lo", "--mode", "socket", "--group", group,
        ])
        .args(["--name", name, "--out", out.to_str().unwrap()])
        .args(extra);
    spawn(c)
}

/// A receiver whose page already says IN_PROGRESS.
fn running_receiver(
    ns: &Netns,
    dir: &Path,
    name: &str,
    group: &str,
    out: &Path,
    extra: &[&str],
) -> Child {
    let child = receiver(ns, dir, name, group, out, extra);
    wait_for(Duration::from_secs(20), "receiver start", || {
        try_read(dir, name).filter(|s| s.state == State::InProgress)
    });
    child
}

fn sender(ns: &Netns, file: &Path, group: &str, extra: &[&str]) -> Child {
    start_sender(ns, "lo", group, file, extra)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn xdpcast(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xdpcast"))
        .env("XDPCAST_STATUS_DIR", dir)
        .args(args)
        .output()
        .unwrap()
}

fn interrupt(child: &Child) {
    let ok = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// Exit status of `xdpcast receive` for a failure with `code`: the tests
/// cancel with SIGINT ([`interrupt`]), which ends it with 128 + SIGINT, as
/// a shell reports it (docs/udpcast.md, "Exit status").
fn exit_for(code: ErrorCode) -> Option<i32> {
    match code {
        ErrorCode::Cancelled => Some(128 + libc::SIGINT),
        _ => Some(100 + code as i32),
    }
}

/// A session that ended with `code`: exit status, page state and code.
fn assert_failed(out: &Output, dir: &Path, name: &str, code: ErrorCode) -> Snapshot {
    assert_eq!(out.status.code(), exit_for(code), "{}", text(out));
    let s = read_page(dir, name);
    assert_eq!((s.state, s.error), (State::Failure, code), "{}", s.message);
    assert!(s.end_ns >= s.start_ns && s.end_ns > 0);
    s
}

/// Compile a C program from tests/c with the receiver's headers.
fn compile_c(src: &str, out: &Path, link_lib: bool) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut c = Command::new("cc");
    c.args([
        "-std=c11",
        "-D_DEFAULT_SOURCE",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-O1",
    ])
    .arg("-I")
    .arg(root.join("receiver/include"))
    .arg(root.join("tests/c").join(src))
    .arg("-o")
    .arg(out);
    if link_lib {
        let lib = lib_dir();
        c.arg(format!("-L{}", lib.display()))
            .arg("-lxdpcast")
            .arg(format!("-Wl,-rpath,{}", lib.display()));
    }
    let o = c.output().unwrap();
    assert!(o.status.success(), "cc {src}: {}", text(&o));
    std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn python_reader() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/status_reader.py")
}

#[test]
fn in_progress_then_success_with_matching_sha256() {
    if !netns_allowed() {
        return;
    }
    let ns = netns();
    let dir = status_dir("xdpc-api-ok");
    let (src, dst) = (dir.join("src.img"), dir.join("dst.img"));
    make_image(&src, 8 * MIB + 5, 11);
    let group = "239.44.0.1:5000";
    let rx = running_receiver(&ns, &dir.0, "ok", group, &dst, &["--keep-status"]);
    let tx = sender(
        &ns,
        &src,
        group,
        &["--rate", "100M", "--block-size", "1400"],
    );
    let mut seen: Vec<Snapshot> = Vec::new();
    let last = wait_for(Duration::from_secs(60), "final state", || {
        let s = try_read(&dir.0, "ok")?;
        seen.push(s.clone());
        std::thread::sleep(Duration::from_millis(5));
        s.state.is_final().then_some(s)
    });
    let rx = wait_output(rx, Duration::from_secs(30), "receiver");
    let tx = wait_output(tx, Duration::from_secs(30), "sender");
    assert!(tx.status.success(), "{}", text(&tx));
    assert!(rx.status.success(), "{}", text(&rx));
    // States only move forward, and the session was seen mid-transfer.
    assert!(seen
        .windows(2)
        .all(|w| w[0].state as u64 <= w[1].state as u64));
    assert!(
        seen.iter().any(|s| s.state == State::InProgress
            && s.blocks_done > 0
            && s.blocks_done < s.block_count),
        "never saw a partial transfer"
    );
    assert_eq!((last.state, last.error), (State::Success, ErrorCode::None));
    let want = sha256_hex(&src);
    assert_eq!(sha256_hex(&dst), want);
    assert_eq!(hex(&last.digest), want);
    assert_eq!(last.bytes_done, 8 * MIB as u64 + 5);
    assert_eq!(last.blocks_done, last.block_count);
    assert!(last.message.contains(&want), "{}", last.message);
    // The receiver printed the same final state.
    assert!(text(&rx).contains("SUCCESS"));
}

#[test]
fn start_timeout_fails_with_timeout_and_close_removes_the_page() {
    if !netns_allowed() {
        return;
    }
    let ns = netns();
    let dir = status_dir("xdpc-api-to");
    let dst = dir.join("dst.img");
    let t0 = Instant::now();
    let rx = receiver(
        &ns,
        &dir.0,
        "to",
        "239.44.0.2:5000",
        &dst,
        &["--start-timeout", "1", "--keep-status"],
    );
    let out = wait_output(rx, Duration::from_secs(20), "receiver");
    assert!(t0.elapsed() >= Duration::from_secs(1));
    let s = assert_failed(&out, &dir.0, "to", ErrorCode::Timeout);
    assert_eq!(s.packets, 0);
    assert!(!dst.exists(), "no packet, so no target");
    // --keep-status left the page; `xdpcast close` removes it.
    let o = xdpcast(&dir.0, &["close", "to"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!page_of(&dir.0, "to").exists());
    let o = xdpcast(&dir.0, &["close", "to"]);
    assert!(!o.status.success());
}

#[test]
fn receive_removes_its_page_on_exit_without_keep_status() {
    if !netns_allowed() {
        return;
    }
    let ns = netns();
    let dir = status_dir("xdpc-api-rm");
    let dst = dir.join("dst.img");
    let rx = running_receiver(
        &ns,
        &dir.0,
        "rm",
        "239.44.0.3:5000",
        &dst,
        &["--start-timeout", "2"],
    );
    // A running session's page cannot be closed without --force.
    let o = xdpcast(&dir.0, &["close", "rm"]);
    assert!(
        !o.status.success() && text(&o).contains("still IN_PROGRESS"),
        "{}",
        text(&o)
    );
    let out = wait_output(rx, Duration::from_secs(20), "receiver");
    assert_eq!(
        out.status.code(),
        exit_for(ErrorCode::Timeout),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("FAILURE"), "the final page is printed");
    assert!(!page_of(&dir.0, "rm").exists(), "page left behind");
}

#[test]
fn cancel_mid_transfer_gives_failure_cancelled() {
    if !netns_allowed() {
        return;
    }
    let ns = netns();
    let dir = status_dir("xdpc-api-cx");
    let (src, dst) = (dir.join("src.img"), dir.join("dst.img"));
    make_image(&src, 16 * MIB, 12);
    let group = "239.44.0.4:5000";
    let rx = running_receiver(&ns, &dir.0, "cx", group, &dst, &["--keep-status"]);
    let mut tx = sender(&ns, &src, group, &["--rate", "40M", "--block-size", "1400"]);
    wait_for(Duration::from_secs(20), "first blocks", || {
        try_read(&dir.0, "cx").filter(|s| s.blocks_done > 10)
    });
    interrupt(&rx);
    let out = wait_output(rx, Duration::from_secs(20), "receiver");
    let _ = tx.kill();
    let _ = tx.wait();
    let s = assert_failed(&out, &dir.0, "cx", ErrorCode::Cancelled);
    assert!(s.blocks_done > 0 && s.blocks_done < s.block_count, "{s:?}");
    // The page still answers after the receiver is gone, until closed.
    let j = xdpcast(&dir.0, &["status", "--json", "cx"]);
    let (r, _) = parse_report(&j.stdout);
    assert_eq!(
        (r.state.as_str(), r.error_code, r.error.as_str(), r.stale),
        ("FAILURE", 1, "cancelled", false)
    );
}

/// Send `datagrams` to `group` from inside `ns` (a UDP socket in Python).
fn inject(ns: &Netns, dir: &Path, group: &str, datagrams: &[Vec<u8>]) {
    let file = dir.join("datagrams.bin");
    let mut buf = Vec::new();
    for d in datagrams {
        buf.extend_from_slice(&(d.len() as u32).to_le_bytes());
        buf.extend_from_slice(d);
    }
    std::fs::write(&file, buf).unwrap();
    let (ip, port) = group.split_once(':').unwrap();
    assert!(
        ip.starts_with("239."),
        "only administratively scoped groups"
    );
    let script = "import socket,struct,sys,time\n\
        d=open(sys.argv[1],'rb').read()\n\
        s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
        i=n=0\n\
        while i<len(d):\n\
        \x20   (l,)=struct.unpack_from('<I',d,i)\n\
        \x20   s.sendto(d[i+4:i+4+l],(sys.argv[2],int(sys.argv[3])))\n\
        \x20   i+=4+l; n+=1\n\
        \x20   if n%32==0: time.sleep(0.002)\n";
    let out = ns
        .cmd("/usr/bin/python3")
        .args(["-c", script, file.to_str().unwrap(), ip, port])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn wrong_announced_digest_fails_with_digest_mismatch() {
    if !netns_allowed() {
        return;
    }
    let ns = netns();
    let dir = status_dir("xdpc-api-dg");
    let (src, dst) = (dir.join("src.img"), dir.join("dst.img"));
    let len = 200_000;
    make_image(&src, len, 13);
    let image = std::fs::read(&src).unwrap();
    let group = "239.44.0.5:5000";
    let rx = running_receiver(&ns, &dir.0, "dg", group, &dst, &["--keep-status"]);
    let g = Geometry::new(len as u64, 1400);
    let wrong = Control {
        flags: wire::FLAG_FINAL,
        ..Control::new([0x5A; 32], 0, 1)
    };
    let session = 0xD16E57;
    let mut packets = vec![wire::encode_control(Kind::Announce, session, &g, &wrong)];
    for i in 0..g.block_count {
        let off = g.offset(i) as usize;
        packets.push(wire::encode_data(
            session,
            &g,
            i,
            &image[off..off + g.block_len(i)],
        ));
    }
    packets.push(wire::encode_control(Kind::End, session, &g, &wrong));
    inject(&ns, &dir.0, group, &packets);
    let out = wait_output(rx, Duration::from_secs(30), "receiver");
    let s = assert_failed(&out, &dir.0, "dg", ErrorCode::DigestMismatch);
    assert_eq!(s.session_id, u64::from(session));
    assert_eq!(s.blocks_done, g.block_count, "every block arrived");
    assert_eq!(s.digest, [0x5A; 32], "the page shows the announced digest");
    assert!(s.message.contains(&sha256_hex(&src)), "{}", s.message);
    assert!(s.message.contains(&hex(&[0x5A; 32])), "{}", s.message);
    assert_eq!(
        sha256_hex(&dst),
        sha256_hex(&src),
        "the data itself was right"
    );
}

#[test]
fn image_larger_than_a_small_tmpfs_fails_with_disk_full() {
    if !netns_allowed() {
        return;
    }
    let ns = netns();
    let dir = status_dir("xdpc-api-df");
    let src = dir.join("src.img");
    make_image(&src, 3 * MIB, 14);
    let fs = Tmpfs::mount(dir.join("small"), "1m", "xdpc-api");
    let dst = fs.0.join("dst.img");
    let group = "239.44.0.6:5000";
    let rx = running_receiver(&ns, &dir.0, "df", group, &dst, &["--keep-status"]);
    let tx = sender(&ns, &src, group, &["--rate", "200M"]);
    let out = wait_output(rx, Duration::from_secs(30), "receiver");
    let tx = wait_output(tx, Duration::from_secs(30), "sender");
    assert!(tx.status.success(), "{}", text(&tx));
    let s = assert_failed(&out, &dir.0, "df", ErrorCode::DiskFull);
    assert!(s.message.contains(dst.to_str().unwrap()), "{}", s.message);
    assert!(
        s.message.contains("No space left on device"),
        "{}",
        s.message
    );
    assert_eq!(
        s.bytes_done, 0,
        "nothing was written into the full filesystem"
    );
    drop(fs);
}

#[test]
fn resume_file_on_a_full_filesystem_only_warns() {
    if !netns_allowed() {
        return;
    }
    let ns = netns();
    let dir = status_dir("xdpc-api-rf");
    let (src, dst) = (dir.join("src.img"), dir.join("dst.img"));
    make_image(&src, 8 * MIB, 15);
    // The target has room; the resume file goes to a full filesystem.
    let fs = Tmpfs::mount(dir.join("full"), "64k", "xdpc-api");
    let filler = std::fs::write(fs.0.join("filler"), vec![0u8; 128 << 10]);
    assert!(filler.is_err(), "the tmpfs is full");
    let resume = fs.0.join("dst.resume");
    let group = "239.44.0.17:5000";
    let rx = running_receiver(
        &ns,
        &dir.0,
        "rf",
        group,
        &dst,
        &["--keep-status", "--resume-file", resume.to_str().unwrap()],
    );
    // 8 MiB at 24 Mbit/s: the sender needs about 3 s, past the first
    // resume save (after 1 s).
    let tx = sender(&ns, &src, group, &["--rate", "24M"]);
    let out = wait_output(rx, Duration::from_secs(60), "receiver");
    assert!(wait_output(tx, Duration::from_secs(60), "sender")
        .status
        .success());
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("cannot save the resume file"),
        "one warning: {}",
        text(&out)
    );
    assert_eq!(read_page(&dir.0, "rf").state, State::Success);
    assert_eq!(sha256_hex(&dst), sha256_hex(&src));
    drop(fs);
}

#[test]
fn bad_arguments_are_refused_before_any_packet() {
    if !netns_allowed() {
        return;
    }
    let dir = status_dir("xdpc-api-args");
    let invalid = exit_for(ErrorCode::InvalidArgument);
    // No sender runs: a receiver that accepted its arguments would wait for
    // the start timeout (2 s) and exit with `timeout` (102) instead.
    let receive = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "receive",
            "--iface",
            "lo",
            "--mode",
            "socket",
            "--group",
            "239.44.0.8:5000",
            "--start-timeout",
            "2",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        xdpcast(&dir.0, &args)
    };
    let cpus = std::thread::available_parallelism().unwrap().get();
    let too_many = (cpus + 62).to_string();
    let o = receive(&dir.join("a.img"), &["--cores", &too_many]);
    assert_eq!(o.status.code(), invalid, "{}", text(&o));
    assert!(text(&o).contains("--cores"), "{}", text(&o));
    // Setup errors exit with 100 + their code too.
    let o = xdpcast(
        &dir.0,
        &[
            "receive",
            "--iface",
            "nosuch0",
            "--group",
            "239.44.0.8:5000",
            "--out",
            "x",
        ],
    );
    assert_eq!(o.status.code(), invalid, "{}", text(&o));
    // A directory the receiver may not write: refused at once.
    let ro = dir.join("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    let o = Command::new("setpriv")
        .args(["--reuid", "nobody", "--regid", "nogroup", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_xdpcast"))
        .env("XDPCAST_STATUS_DIR", &dir.0)
        .args(["receive", "--iface", "lo", "--mode", "socket"])
        .args(["--group", "239.44.0.8:5000", "--start-timeout", "2"])
        .args(["--out", ro.join("img").to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        exit_for(ErrorCode::TargetIo),
        "{}",
        text(&o)
    );
    assert!(text(&o).contains("Permission denied"), "{}", text(&o));
    // send --mtu: below the smallest frame or above any MTU is a usage
    // error (2); above the interface's MTU is refused (112).
    let src = dir.join("src.img");
    make_image(&src, 1000, 16);
    let send = |mtu: &str, iface: &str| {
        let ns = netns();
        ns.ip(&["link", "set", "lo", "mtu", "1500"]);
        ns.cmd(env!("CARGO_BIN_EXE_xdpcast"))
            .args(["send", src.to_str().unwrap(), "--group", "239.44.0.8:5000"])
            .args(["--iface", iface, "--mtu", mtu, "--no-repair"])
            .output()
            .unwrap()
    };
    assert_eq!(send("100", "lo").status.code(), Some(2));
    assert_eq!(send("70000", "lo").status.code(), Some(2));
    let o = send("9000", "lo");
    assert_eq!(o.status.code(), invalid, "{}", text(&o));
    assert!(text(&o).contains("fragmented"), "{}", text(&o));
}

/// Invariants that hold on every consistent page of a running transfer.
fn check_consistent(s: &Snapshot) {
    assert_eq!(
        s.bytes_done,
        s.workers.iter().map(|w| w.bytes).sum::<u64>(),
        "torn: {s:?}"
    );
    assert_eq!(
        s.packets + s.total_drops(),
        s.workers.iter().map(|w| w.packets).sum::<u64>(),
        "torn: {s:?}"
    );
    assert!(
        s.bytes_done <= s.total_bytes || s.total_bytes == 0,
        "torn: {s:?}"
    );
}

#[test]
fn concurrent_readers_never_see_torn_pages() {
    if !netns_allowed() {
        return;
    }
    let ns = netns();
    let dir = status_dir("xdpc-api-tr");
    let (src, dst) = (dir.join("src.img"), dir.join("dst.img"));
    make_image(&src, 16 * MIB, 15);
    let group = "239.44.0.7:5000";
    let rx = running_receiver(&ns, &dir.0, "tr", group, &dst, &["--keep-status"]);
    let page = page_of(&dir.0, "tr");
    // A Python reader checks the same invariants while the page changes.
    let py = format!(
        "import sys\nsys.path.insert(0,{:?})\nimport status_reader as r\n\
         n=0\nwhile True:\n\
         \x20   p=r.read_page({:?}); n+=1\n\
         \x20   assert p['bytes_done']==sum(w['bytes'] for w in p['workers']), p\n\
         \x20   assert p['packets']+sum(p['drops'].values())==sum(w['packets'] for w in p['workers']), p\n\
         \x20   if p['state'] in ('SUCCESS','FAILURE'): break\n\
         print(n)\n",
        python_reader().parent().unwrap(),
        page
    );
    let pyc = spawn({
        let mut c = Command::new("/usr/bin/python3");
        c.args(["-c", &py]);
        c
    });
    let tx = sender(
        &ns,
        &src,
        group,
        &["--rate", "150M", "--block-size", "1400", "--passes", "2"],
    );
    let done = AtomicBool::new(false);
    let reads: Vec<(u64, u64)> = std::thread::scope(|sc| {
        let readers: Vec<_> = (0..3)
            .map(|_| {
                sc.spawn(|| {
                    let r = StatusReader::open(&page).unwrap();
                    let (mut n, mut mid) = (0u64, 0u64);
                    let (mut last_blocks, mut last_beat) = (0, 0);
                    while !done.load(Ordering::Relaxed) {
                        let s = r.read().unwrap();
                        check_consistent(&s);
                        assert!(s.blocks_done >= last_blocks && s.heartbeat_ns >= last_beat);
                        (last_blocks, last_beat) = (s.blocks_done, s.heartbeat_ns);
                        n += 1;
                        if s.state == State::InProgress
                            && s.blocks_done > 0
                            && s.blocks_done < s.block_count
                        {
                            mid += 1;
                        }
                    }
                    (n, mid)
                })
            })
            .collect();
        wait_for(Duration::from_secs(60), "final state", || {
            try_read(&dir.0, "tr").filter(|s| s.state.is_final())
        });
        done.store(true, Ordering::Relaxed);
        readers.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let out = wait_output(rx, Duration::from_secs(30), "receiver");
    assert!(out.status.success(), "{}", text(&out));
    wait_output(tx, Duration::from_secs(30), "sender");
    let py = wait_output(pyc, Duration::from_secs(30), "python reader");
    assert!(py.status.success(), "python reader: {}", text(&py));
    let py_reads: u64 = String::from_utf8_lossy(&py.stdout).trim().parse().unwrap();
    for (n, mid) in &reads {
        assert!(
            *n > 1000 && *mid > 100,
            "too few reads to mean anything: {reads:?}"
        );
    }
    assert!(py_reads > 100, "python reads: {py_reads}");
}

/// Parse `key=value` lines.
fn kv(out: &[u8]) -> std::collections::BTreeMap<String, String> {
    String::from_utf8_lossy(out)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// What the C dump should print for `s`, except heartbeat_ns.
fn expected_c_fields(s: &Snapshot) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = vec![
        ("writer_pid".into(), s.writer_pid.to_string()),
        ("owner_uid".into(), s.owner_uid.to_string()),
        ("state".into(), s.state.name().into()),
        ("error_code".into(), (s.error as u32).to_string()),
        ("error".into(), s.error.name().into()),
        ("mode".into(), (s.mode as u64).to_string()),
        ("session_id".into(), s.session_id.to_string()),
        ("block_size".into(), s.block_size.to_string()),
        ("block_count".into(), s.block_count.to_string()),
        ("total_bytes".into(), s.total_bytes.to_string()),
        ("blocks_done".into(), s.blocks_done.to_string()),
        ("bytes_done".into(), s.bytes_done.to_string()),
        ("packets".into(), s.packets.to_string()),
        ("start_ns".into(), s.start_ns.to_string()),
        ("end_ns".into(), s.end_ns.to_string()),
        ("rate_bps".into(), s.rate_bps.to_string()),
        ("avg_rate_bps".into(), s.avg_rate_bps.to_string()),
        ("passes_seen".into(), s.passes_seen.to_string()),
        (
            "first_pass_missing".into(),
            s.first_pass_missing.to_string(),
        ),
        ("fec_recovered".into(), s.fec_recovered.to_string()),
        ("nacks_sent".into(), s.nacks_sent.to_string()),
        ("resumed_blocks".into(), s.resumed_blocks.to_string()),
        ("skipped_bytes".into(), s.sparse.skipped_bytes.to_string()),
        ("skipped_blocks".into(), s.sparse.skipped_blocks.to_string()),
        (
            "zero_method".into(),
            (s.sparse.zero_method as u64).to_string(),
        ),
        ("worker_count".into(), s.workers.len().to_string()),
        ("flags".into(), s.flags.to_string()),
        ("sha256".into(), hex(&s.digest)),
        ("name".into(), s.name.clone()),
        ("group".into(), s.group.clone()),
        ("target".into(), s.target.clone()),
        ("message".into(), s.message.clone()),
    ];
    for r in DropReason::ALL {
        v.push((format!("drop_{}", r.name()), s.drops_for(r).to_string()));
    }
    for (i, w) in s.workers.iter().enumerate() {
        v.push((
            format!("worker{i}"),
            format!("{},{},{},{}", w.queue, w.packets, w.bytes, w.ring_drops),
        ));
    }
    v
}

/// A JSON line of `xdpcast status --json` or the Python reader, parsed
/// into the schema, and its heartbeat taken out.
fn parse_report(json: &[u8]) -> (SessionReport, u64) {
    let r: SessionReport = serde_json::from_slice(json)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(json)));
    let beat = r.heartbeat_ns;
    (
        SessionReport {
            heartbeat_ns: 0,
            ..r
        },
        beat,
    )
}

/// Rust (in-process and `xdpcast status --json`), C and Python readers on
/// the page of `name`; they must agree (heartbeat: between two Rust reads).
fn assert_readers_agree(dir: &Path, name: &str, c_dump: &Path, as_user: Option<&str>) {
    let page = page_of(dir, name);
    let run = |program: &Path, args: &[&str]| -> Output {
        let mut c = match as_user {
            Some(u) => {
                let mut c = Command::new("setpriv");
                c.args(["--reuid", u, "--regid", "nogroup", "--clear-groups"])
                    .arg(program);
                c
            }
            None => Command::new(program),
        };
        let o = c
            .env("XDPCAST_STATUS_DIR", dir)
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{} {args:?}: {}",
            program.display(),
            text(&o)
        );
        o
    };
    let before = read_page(dir, name);
    let rust_json = run(
        Path::new(env!("CARGO_BIN_EXE_xdpcast")),
        &["status", "--json", name],
    );
    let c = run(c_dump, &[page.to_str().unwrap()]);
    let py = run(
        Path::new("/usr/bin/python3"),
        &[python_reader().to_str().unwrap(), name],
    );
    let after = read_page(dir, name);

    let (rust_rest, rust_beat) = parse_report(&rust_json.stdout);
    let (py_rest, py_beat) = parse_report(&py.stdout);
    assert_eq!(py_rest, rust_rest, "Python and Rust JSON differ");
    // The same keys, none extra.
    let keys = |o: &Output| {
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v.as_object().unwrap().keys().cloned().collect::<Vec<_>>()
    };
    assert_eq!(keys(&py), keys(&rust_json));
    let c = kv(&c.stdout);
    let c_beat: u64 = c["heartbeat_ns"].parse().unwrap();
    for beat in [rust_beat, py_beat, c_beat] {
        assert!((before.heartbeat_ns..=after.heartbeat_ns).contains(&beat));
    }
    // Everything but the heartbeat is stable on the pages used here.
    let same = Snapshot {
        heartbeat_ns: before.heartbeat_ns,
        ..after.clone()
    };
    assert_eq!(before, same, "the page changed beyond its heartbeat");
    for (k, v) in expected_c_fields(&before) {
        assert_eq!(c.get(&k), Some(&v), "C reader field {k}");
    }
    assert_eq!(rust_rest.name, name);
}

#[test]
fn c_and_python_readers_agree_with_rust_on_live_and_final_pages() {
    if !netns_allowed() {
        return;
    }
    let ns = netns();
    let dir = status_dir("xdpc-api-rd");
    let (src, dst) = (dir.join("src.img"), dir.join("dst.img"));
    make_image(&src, 2 * MIB + 77, 16);
    let dump = dir.join("status_dump");
    compile_c("status_dump.c", &dump, false);
    let group = "239.44.0.8:5000";
    let rx = running_receiver(&ns, &dir.0, "rd", group, &dst, &["--keep-status"]);
    // Live page, writer running and heartbeating, no traffic yet.
    assert_readers_agree(&dir.0, "rd", &dump, None);
    let tx = sender(&ns, &src, group, &["--rate", "400M"]);
    let out = wait_output(rx, Duration::from_secs(30), "receiver");
    assert!(out.status.success(), "{}", text(&out));
    wait_output(tx, Duration::from_secs(30), "sender");
    // Final page with every field filled in: geometry, digest, workers.
    let s = read_page(&dir.0, "rd");
    assert_eq!(s.state, State::Success);
    assert!(s.flags & page::FLAG_DIGEST != 0 && !s.workers.is_empty());
    assert_readers_agree(&dir.0, "rd", &dump, None);
}

#[test]
fn unprivileged_process_reads_the_live_page_of_a_root_receiver() {
    if !netns_allowed() {
        return;
    }
    let ns = netns();
    let dir = status_dir("xdpc-api-up");
    let dst = dir.join("dst.img");
    let dump = dir.join("status_dump");
    compile_c("status_dump.c", &dump, false);
    let rx = running_receiver(
        &ns,
        &dir.0,
        "up",
        "239.44.0.9:5000",
        &dst,
        &["--keep-status"],
    );
    let meta = std::fs::metadata(page_of(&dir.0, "up")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o644);
    assert_eq!(meta.uid(), 0, "the receiver runs as root");
    let id = Command::new("setpriv")
        .args([
            "--reuid",
            "nobody",
            "--regid",
            "nogroup",
            "--clear-groups",
            "id",
            "-u",
        ])
        .output()
        .unwrap();
    assert_ne!(String::from_utf8_lossy(&id.stdout).trim(), "0");
    assert_readers_agree(&dir.0, "up", &dump, Some("nobody"));
    // The live page is still being written: the heartbeat advances.
    let a = read_page(&dir.0, "up");
    std::thread::sleep(Duration::from_millis(200));
    let b = read_page(&dir.0, "up");
    assert!(b.heartbeat_ns > a.heartbeat_ns && b.state == State::InProgress);
    interrupt(&rx);
    let out = wait_output(rx, Duration::from_secs(20), "receiver");
    assert_failed(&out, &dir.0, "up", ErrorCode::Cancelled);
}

/// A tmux server of our own, on a socket in a test directory; killed and
/// its socket removed on drop.
struct Tmux(PathBuf);

impl Tmux {
    fn new(dir: &Path) -> Tmux {
        Tmux(dir.join("tmux.sock"))
    }

    fn cmd(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-S")
            .arg(&self.0)
            .args(args)
            .output()
            .expect("tmux (setup.sh installs it)")
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `xdpcast monitor` in a real terminal (tmux) of 80 and of 200 columns
/// during a transfer: one line per session that never wraps, the least
/// important fields left out whole on the narrow one, all of them and a
/// bar on the wide one.
#[test]
fn monitor_fits_80_and_200_column_terminals() {
    if !netns_allowed() {
        return;
    }
    let ns = netns();
    let dir = status_dir("xdpc-api-tm");
    let (src, dst) = (dir.join("src.img"), dir.join("dst.img"));
    make_image(&src, 8 * MIB, 41);
    let name = "lab-7-room-204-a-rather-long-session-name-to-cut";
    let group = "239.44.0.12:5000";
    let rx = running_receiver(&ns, &dir.0, name, group, &dst, &["--keep-status"]);
    let mut tx = sender(&ns, &src, group, &["--rate", "8M"]);
    wait_for(Duration::from_secs(30), "first blocks", || {
        try_read(&dir.0, name).filter(|s| s.blocks_done > 0 && s.rate_bps > 0)
    });
    let tmux = Tmux::new(&dir.0);
    let monitor = format!(
        "env XDPCAST_STATUS_DIR={} {} monitor --interval-ms 100",
        dir.0.display(),
        env!("CARGO_BIN_EXE_xdpcast")
    );
    for width in ["80", "200"] {
        let out = tmux.cmd(&[
            "new-session",
            "-d",
            "-s",
            width,
            "-x",
            width,
            "-y",
            "10",
            &monitor,
        ]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let screen = |width: &str| {
        wait_for(Duration::from_secs(20), "a monitor line", || {
            let out = tmux.cmd(&["capture-pane", "-p", "-t", width]);
            let screen = String::from_utf8_lossy(&out.stdout).to_string();
            screen.contains("eta ").then_some(screen)
        })
    };
    let (narrow, wide) = (screen("80"), screen("200"));
    for (screen, width) in [(&narrow, 80), (&wide, 200)] {
        let lines: Vec<&str> = screen.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(
            lines.len(),
            1,
            "one line per session, not wrapped:\n{screen}"
        );
        assert!(lines[0].chars().count() < width, "{width}: {}", lines[0]);
        for want in ["IN_PROGRESS", "Mbit/s", "eta 0:", "%"] {
            assert!(lines[0].contains(want), "{want} at {width}: {}", lines[0]);
        }
    }
    assert!(narrow.starts_with("lab-7-room-204-a-ra"), "{narrow}");
    assert!(!narrow.contains("drops"), "{narrow}");
    assert!(wide.starts_with(&name[..24]), "{wide}");
    for want in [" [", "] ", " of 8.0 MiB", "loss -", "drops 0"] {
        assert!(wide.contains(want), "{want} in {wide}");
    }
    drop(tmux);
    let _ = tx.kill();
    let _ = tx.wait();
    interrupt(&rx);
    let out = wait_output(rx, Duration::from_secs(20), "receiver");
    assert_failed(&out, &dir.0, name, ErrorCode::Cancelled);
}

#[test]
fn monitor_and_metrics_show_every_session() {
    if !netns_allowed() {
        return;
    }
    let ns = netns();
    let dir = status_dir("xdpc-api-mo");
    let dst = dir.join("dst.img");
    // One finished session (timed out) and one running.
    let done = receiver(
        &ns,
        &dir.0,
        "mo-done",
        "239.44.0.10:5000",
        &dst,
        &["--start-timeout", "1", "--keep-status"],
    );
    let out = wait_output(done, Duration::from_secs(20), "receiver");
    assert_failed(&out, &dir.0, "mo-done", ErrorCode::Timeout);
    let mut live = running_receiver(
        &ns,
        &dir.0,
        "mo-live",
        "239.44.0.11:5000",
        &dst,
        &["--keep-status"],
    );

    let mon = xdpcast(&dir.0, &["monitor", "--once"]);
    assert!(mon.status.success(), "{}", text(&mon));
    let frame = String::from_utf8_lossy(&mon.stdout).to_string();
    let lines: Vec<&str> = frame.lines().collect();
    assert_eq!(lines.len(), 2, "{frame}");
    assert!(
        lines[0].starts_with("mo-done ") && lines[0].contains("FAILURE timeout (2)"),
        "{frame}"
    );
    assert!(
        lines[1].starts_with("mo-live ") && lines[1].contains("IN_PROGRESS"),
        "{frame}"
    );
    assert!(
        lines[1].contains("drops 0") && lines[1].contains("loss -"),
        "{frame}"
    );

    let (server, addr) = start_metrics(&dir.0, &["--once"]);
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    conn.read_to_string(&mut reply).unwrap();
    let out = wait_output(server, Duration::from_secs(10), "metrics --once");
    assert!(out.status.success(), "{}", text(&out));
    let (head, body) = reply.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 ok"), "{head}");
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(
        head.contains(&format!("content-length: {}", body.len())),
        "{head}"
    );
    for want in [
        "xdpcast_session_state{session=\"mo-done\"} 3\n",
        "xdpcast_session_error_code{session=\"mo-done\"} 2\n",
        "xdpcast_session_state{session=\"mo-live\"} 1\n",
        "xdpcast_session_stale{session=\"mo-live\"} 0\n",
        "xdpcast_dropped_packets_total{session=\"mo-live\",reason=\"bad_magic\"} 0\n",
        "# TYPE xdpcast_received_bytes_total counter\n",
        "xdpcast_unreadable_pages 0\n",
    ] {
        assert!(body.contains(want), "missing {want:?} in\n{body}");
    }
    assert!(body.contains(&format!(
        "xdpcast_session_writer_pid{{session=\"mo-live\"}} {}\n",
        live.id()
    )));
    interrupt(&live);
    live.wait().unwrap();
}

/// Kills process `pid` if it still runs after `limit`, so a hung C test
/// fails (its output ends) instead of hanging the test run.
struct Watchdog(std::sync::Arc<AtomicBool>);

impl Watchdog {
    fn new(pid: u32, limit: Duration) -> Watchdog {
        let done = std::sync::Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            while !flag.load(Ordering::Relaxed) {
                if start.elapsed() > limit {
                    let _ = Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status();
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Watchdog(done)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Read lines from the C test until `want`; panic with everything on EOF.
fn expect_line(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
    want: &str,
    child: &mut Child,
) {
    for l in lines.by_ref() {
        if l.unwrap().trim() == want {
            return;
        }
    }
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    panic!("session_test ended before {want:?}: {err}");
}

#[test]
fn c_abi_session_lifecycle() {
    if !netns_allowed() {
        return;
    }
    let ns = netns();
    let dir = status_dir("xdpc-api-c");
    let (src_a, dst_a) = (dir.join("a.img"), dir.join("a.out"));
    let (src_b, dst_b) = (dir.join("b.img"), dir.join("b.out"));
    make_image(&src_a, 3 * MIB + 1, 17);
    make_image(&src_b, 16 * MIB, 18);
    let bin = dir.join("session_test");
    compile_c("session_test.c", &bin, true);
    let (group_a, group_b) = ("239.44.0.12:5000", "239.44.0.13:5000");
    let mut c = ns.cmd(bin.to_str().unwrap());
    // cargo's LD_LIBRARY_PATH may name a stale target/<profile>/libxdpcast.so
    // and would win over the RUNPATH set at link time.
    c.env_remove("LD_LIBRARY_PATH")
        .env("XDPCAST_STATUS_DIR", &dir.0)
        .args([
            "c-a",
            dst_a.to_str().unwrap(),
            group_a,
            "c-b",
            dst_b.to_str().unwrap(),
            group_b,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let _watchdog = Watchdog::new(child.id(), Duration::from_secs(120));
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();

    // Session A: a full transfer.
    expect_line(&mut lines, "A started", &mut child);
    let tx = sender(&ns, &src_a, group_a, &["--rate", "400M"]);
    expect_line(&mut lines, "A done", &mut child);
    let tx = wait_output(tx, Duration::from_secs(30), "sender A");
    assert!(tx.status.success(), "{}", text(&tx));
    assert_eq!(sha256_hex(&dst_a), sha256_hex(&src_a));
    assert!(!page_of(&dir.0, "c-a").exists(), "close removes the page");

    // Session B: cancelled mid-transfer.
    expect_line(&mut lines, "B started", &mut child);
    let mut tx = sender(
        &ns,
        &src_b,
        group_b,
        &["--rate", "40M", "--block-size", "1400"],
    );
    wait_for(Duration::from_secs(20), "blocks of B", || {
        try_read(&dir.0, "c-b").filter(|s| s.blocks_done > 10)
    });
    child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"cancel\n")
        .unwrap();
    expect_line(&mut lines, "B cancelled", &mut child);
    let s = read_page(&dir.0, "c-b");
    assert_eq!((s.state, s.error), (State::Failure, ErrorCode::Cancelled));
    assert!(s.blocks_done < s.block_count);
    child.stdin.as_mut().unwrap().write_all(b"close\n").unwrap();
    expect_line(&mut lines, "ALL OK", &mut child);
    let _ = tx.kill();
    let _ = tx.wait();
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "session_test: {err}");
    assert!(!page_of(&dir.0, "c-b").exists());
}

/// `#define NAME VALUE` and `NAME = VALUE,` entries of a header.
fn header_values(path: &Path) -> std::collections::BTreeMap<String, String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut m = std::collections::BTreeMap::new();
    for line in text.lines().map(str::trim) {
        let (k, v) = if let Some(rest) = line.strip_prefix("#define ") {
            match rest.split_once(' ') {
                Some((k, v)) => (k, v.split("/*").next().unwrap().trim()),
                None => continue,
            }
        } else if let Some((k, v)) = line.split_once(" = ") {
            (k, v.trim_end_matches(','))
        } else {
            continue;
        };
        m.insert(
            k.to_string(),
            v.trim_end_matches(['u', 'U', 'L']).to_string(),
        );
    }
    m
}

#[test]
fn headers_and_python_reader_match_the_rust_constants() {
    let inc = Path::new(env!("CARGO_MANIFEST_DIR")).join("include");
    let h = header_values(&inc.join("xdpcast_status.h"));
    let num = |k: &str| -> u64 {
        let v = h
            .get(k)
            .unwrap_or_else(|| panic!("{k} missing from xdpcast_status.h"));
        match v.strip_prefix("0x") {
            Some(x) => u64::from_str_radix(x, 16).unwrap(),
            None => v.parse().unwrap_or_else(|_| panic!("{k} = {v}")),
        }
    };
    assert_eq!(num("XDPCAST_STATUS_MAGIC"), page::PAGE_MAGIC);
    assert_eq!(num("XDPCAST_STATUS_LAYOUT_VERSION"), page::LAYOUT_VERSION);
    assert_eq!(num("XDPCAST_STATUS_PAGE_SIZE"), page::PAGE_SIZE as u64);
    assert_eq!(num("XDPCAST_MAX_WORKERS"), page::MAX_WORKERS as u64);
    assert_eq!(num("XDPCAST_DROP_SLOTS"), page::DROP_SLOTS as u64);
    assert_eq!(num("XDPCAST_NAME_LEN"), page::NAME_LEN as u64);
    assert_eq!(num("XDPCAST_TEXT_LEN"), page::TEXT_LEN as u64);
    assert_eq!(num("XDPCAST_FLAG_GEOMETRY"), page::FLAG_GEOMETRY);
    assert_eq!(num("XDPCAST_FLAG_DIGEST"), page::FLAG_DIGEST);
    use offsets::*;
    for (k, v) in [
        ("MAGIC", MAGIC),
        ("VERSION", VERSION),
        ("PAGE_SIZE", PAGE_SIZE),
        ("SEQ", SEQ),
        ("WRITER_PID", WRITER_PID),
        ("HEARTBEAT_NS", HEARTBEAT_NS),
        ("STATE", STATE),
        ("ERROR_CODE", ERROR_CODE),
        ("MODE", MODE),
        ("SESSION_ID", SESSION_ID),
        ("BLOCK_SIZE", BLOCK_SIZE),
        ("BLOCK_COUNT", BLOCK_COUNT),
        ("TOTAL_BYTES", TOTAL_BYTES),
        ("BLOCKS_DONE", BLOCKS_DONE),
        ("BYTES_DONE", BYTES_DONE),
        ("PACKETS", PACKETS),
        ("START_NS", START_NS),
        ("END_NS", END_NS),
        ("RATE_BPS", RATE_BPS),
        ("AVG_RATE_BPS", AVG_RATE_BPS),
        ("PASSES_SEEN", PASSES_SEEN),
        ("FIRST_PASS_MISSING", FIRST_PASS_MISSING),
        ("FEC_RECOVERED", FEC_RECOVERED),
        ("NACKS_SENT", NACKS_SENT),
        ("RESUMED_BLOCKS", RESUMED_BLOCKS),
        ("WORKER_COUNT", WORKER_COUNT),
        ("FLAGS", FLAGS),
        ("DIGEST", DIGEST),
        ("DROPS", DROPS),
        ("NAME", NAME),
        ("GROUP", GROUP),
        ("TARGET", TARGET),
        ("MESSAGE", MESSAGE),
        ("WORKERS", WORKERS),
        ("WORKER_LATENCY", WORKER_LATENCY),
        ("WORKER_BATCH_SUM", WORKER_BATCH_SUM),
        ("SKIPPED_BYTES", SKIPPED_BYTES),
        ("SKIPPED_BLOCKS", SKIPPED_BLOCKS),
        ("ZERO_METHOD", ZERO_METHOD),
        ("ROLE", ROLE),
        ("SENDER_PHASE", REPAIR + sender::PHASE),
        ("SENDER_RECEIVERS_KNOWN", REPAIR + sender::RECEIVERS_KNOWN),
        ("SENDER_FINISHED", REPAIR + sender::FINISHED),
        ("SENDER_REPAIR_BYTES", REPAIR + sender::REPAIR_BYTES),
        ("SENDER_BYTES_SENT", REPAIR + sender::BYTES_SENT),
    ] {
        assert_eq!(num(&format!("XDPCAST_W_{k}")), v as u64, "XDPCAST_W_{k}");
    }
    assert_eq!(num("XDPCAST_ROLE_SENDER"), Role::Sender as u64);
    assert_eq!(num("XDPCAST_PHASE_DONE"), SendPhase::Done as u64);
    for (m, name) in [
        (ZeroMethod::None, "NONE"),
        (ZeroMethod::PunchHole, "PUNCH_HOLE"),
        (ZeroMethod::ZeroRange, "RANGE"),
        (ZeroMethod::ZeroOut, "BLKZEROOUT"),
        (ZeroMethod::Written, "WRITTEN"),
    ] {
        assert_eq!(num(&format!("XDPCAST_ZERO_{name}")), m as u64);
    }
    assert_eq!(num("XDPCAST_WORKER_WORDS"), WORKER_WORDS as u64);
    assert_eq!(num("XDPCAST_LATENCY_WORDS"), LATENCY_WORDS as u64);
    for s in [
        State::Initialized,
        State::InProgress,
        State::Success,
        State::Failure,
    ] {
        assert_eq!(num(&format!("XDPCAST_STATE_{}", s.name())), s as u64);
    }
    for c in ErrorCode::ALL.into_iter().skip(1) {
        assert_eq!(
            num(&format!("XDPCAST_ERR_{}", c.name().to_uppercase())),
            c as u64
        );
    }
    assert_eq!(num("XDPCAST_OK"), 0);
    for r in DropReason::ALL {
        assert_eq!(
            num(&format!("XDPCAST_DROP_{}", r.name().to_uppercase())),
            r as u64
        );
    }
    assert_eq!(num("XDPCAST_DROP_COUNT"), DropReason::COUNT as u64);
    // The C ABI header's constants.
    let a = header_values(&inc.join("xdpcast.h"));
    use xdpcast::api::ffi::*;
    for (k, v) in [
        ("XDPCAST_MODE_AUTO", XDPCAST_MODE_AUTO),
        ("XDPCAST_MODE_XDP", XDPCAST_MODE_XDP),
        ("XDPCAST_MODE_SOCKET", XDPCAST_MODE_SOCKET),
        ("XDPCAST_REQ_SESSION_ID", XDPCAST_REQ_SESSION_ID),
    ] {
        assert_eq!(a[k], v.to_string(), "{k}");
    }
    assert_eq!(a["XDPCAST_WAIT_FOREVER"], "0xFFFFFFFF");
    // The Python reader lists names in code order.
    let py = std::fs::read_to_string(python_reader()).unwrap();
    let quoted = |names: Vec<&str>| names.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>();
    for list in [
        quoted(ErrorCode::ALL.iter().map(|c| c.name()).collect()),
        quoted(DropReason::ALL.iter().map(|r| r.name()).collect()),
    ] {
        let mut at = 0;
        for q in &list {
            at += py[at..]
                .find(q.as_str())
                .unwrap_or_else(|| panic!("{q} out of order in status_reader.py"));
        }
    }
    let mut at = 0;
    for m in [
        ZeroMethod::None,
        ZeroMethod::PunchHole,
        ZeroMethod::ZeroRange,
        ZeroMethod::ZeroOut,
        ZeroMethod::Written,
    ] {
        at += py[at..]
            .find(&format!("\"{}\"", m.name()))
            .unwrap_or_else(|| panic!("{} out of order in status_reader.py", m.name()));
    }
    assert!(
        py.contains(&format!("skipped_bytes={}", SKIPPED_BYTES))
            && py.contains(&format!("zero_method={}", ZERO_METHOD))
    );
    assert!(
        py.contains(&format!("workers={}", WORKERS))
            && py.contains(&format!("worker_latency={}", WORKER_LATENCY))
            && py.contains(&format!("LATENCY_WORDS = {}", LATENCY_WORDS))
            && py.contains(&format!("worker_batch_sum={}", WORKER_BATCH_SUM))
            && py.contains(&format!("drops={}", DROPS))
    );
}

/// The C header's `xdpcast_error_name` and `xdpcast_drop_name`, compiled,
/// give every error code and drop reason the name `xdpcast status --json`
/// prints for it (a page per error code), and "unknown" for numbers that
/// are none.
#[test]
fn c_header_names_match_status_json_for_every_code() {
    let dir = status_dir("xdpc-api-names");
    let names = dir.join("names");
    compile_c("names.c", &names, false);
    let o = Command::new(&names).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let c: Vec<(String, u32, String)> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| {
            let mut w = l.split(' ');
            let kind = w.next().unwrap().to_string();
            let n = w.next().unwrap().parse().unwrap();
            (kind, n, w.next().unwrap().to_string())
        })
        .collect();
    // One FAILURE page per error code, read back by the binary.
    let _pages: Vec<StatusWriter> = ErrorCode::ALL
        .iter()
        .map(|code| {
            let w = StatusWriter::create(&page_of(&dir.0, &format!("e{}", *code as u32))).unwrap();
            w.publish(&Snapshot {
                name: format!("e{}", *code as u32),
                state: State::Failure,
                error: *code,
                ..Default::default()
            });
            w
        })
        .collect();
    let o = Command::new(env!("CARGO_BIN_EXE_xdpcast"))
        .env("XDPCAST_STATUS_DIR", &dir.0)
        .args(["status", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let reports: Vec<SessionReport> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(reports.len(), ErrorCode::ALL.len());
    for (kind, n, name) in &c {
        match kind.as_str() {
            "error" => match reports.iter().find(|r| r.error_code == *n) {
                Some(r) => assert_eq!(&r.error, name, "error {n}"),
                None => assert_eq!(name, "unknown", "error {n} is no code"),
            },
            "drop" => match DropReason::ALL.get(*n as usize) {
                Some(r) => {
                    assert_eq!(name, r.name(), "drop {n}");
                    assert!(reports[0].drops.contains_key(name), "{name}");
                }
                None => assert_eq!(name, "unknown", "drop slot {n} is no reason"),
            },
            k => panic!("{k}"),
        }
    }
    for code in ErrorCode::ALL {
        let named = c
            .iter()
            .any(|(k, n, name)| k == "error" && *n == code as u32 && name == code.name());
        assert!(named, "{code} missing from the C header's names");
    }
}
