//! The XDP/AF_XDP fast path between two namespaces over a two-queue veth
//! pair: the image goes through AF_XDP sockets, other traffic still reaches
//! the kernel, and no XDP program is left behind.
//!
//! These tests need root. They run in CI; they are skipped only when
//! `XDPCAST_SKIP_NETNS=1` says the machine cannot run them.

mod common;

use std::path::Path;
use std::process::Child;
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use xdpcast::net::rings::{XskConfig, XskQueue};
use xdpcast::status::page::{PathMode, State};
use xdpcast::ErrorCode;

const MIB: usize = 1 << 20;
const GROUP: &str = "239.8.8.8:5000";

fn receiver(net: &VethPair, status: &Path, name: &str, out: &Path, extra: &[&str]) -> Child {
    let mut args = vec!["--iface", &net.if_b, "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    start_receiver(xdpcast(&net.b), status, name, GROUP, &args)
}

fn sender(net: &VethPair, src: &Path, extra: &[&str]) -> Child {
    start_sender(&net.a, &net.if_a, GROUP, src, extra)
}

/// Wait for the sender, then the receiver; both must succeed and the image
/// on disk must match the source.
fn finish(tx: Child, rx: Child, src: &Path, dst: &Path) {
    let tx_out = wait_output(tx, Duration::from_secs(120), "sender");
    assert!(
        tx_out.status.success(),
        "{}",
        String::from_utf8_lossy(&tx_out.stderr)
    );
    let out = wait_output(rx, Duration::from_secs(120), "receiver");
    assert!(
        out.status.success(),
        "receiver: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sha256_hex(src), sha256_hex(dst));
}

/// A UDP listener in `ns` (python, standard library) that counts the
/// datagrams it gets on `bind:port`, joining `group` if given.
fn listener(ns: &Netns, bind: &str, port: u16, group: Option<&str>) -> Child {
    let join = group.map_or(String::new(), |g| {
        format!(
            "s.setsockopt(socket.IPPROTO_IP,socket.IP_ADD_MEMBERSHIP,socket.inet_aton('{g}')+socket.inet_aton('0.0.0.0'))\n"
        )
    });
    let script = format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
         s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('{bind}',{port}))\n{join}\
         s.settimeout(8)\nn=0\nprint('ready',flush=True)\n\
         try:\n    while n<20:\n        s.recv(2000); n+=1\nexcept socket.timeout:\n    pass\nprint(n)\n"
    );
    let mut c = ns.cmd("python3");
    c.args(["-c", &script]);
    let mut child = spawn(c);
    // Wait for "ready" so that no datagram is sent before the bind.
    use std::io::BufRead;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    child
}

/// Send 20 datagrams from `ns` to `dest:port`.
fn blast(ns: &Netns, dest: &str, port: u16) {
    let script = format!(
        "import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
         for i in range(20):\n    s.sendto(b'x'*100,('{dest}',{port})); time.sleep(0.01)\n"
    );
    let out = ns.cmd("python3").args(["-c", &script]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn received(child: Child) -> u32 {
    let out = wait_output(child, Duration::from_secs(30), "listener");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn image_goes_through_af_xdp_and_other_traffic_is_passed() {
    if !netns_allowed() {
        return;
    }
    let net = VethPair::new(2, 1500);
    let Images { dir, src, dst } = Images::new("xdpc-xdp", 64 * MIB, 11);
    let rx = receiver(
        &net,
        &dir.0,
        "xdp",
        &dst,
        &["--mode", "xdp", "--queues", "all"],
    );
    assert!(
        net.xdp_attached_b(),
        "XDP program must be attached while receiving"
    );

    let unicast = listener(&net.b, &net.addr_b, 6000, None);
    let other_group = listener(&net.b, "239.8.8.9", 5000, Some("239.8.8.9"));
    // veth delivers a frame on the peer's RX queue with the index of the TX
    // queue it left by, and the sender's kernel picks that TX queue from the
    // flow hash, seeded at random at boot. Each stream (one source port) thus
    // lands on queue 0 or 1 with even odds; with 32 streams the chance that
    // all of them share one queue is 2^-31, where 4 streams failed 1 run in 8.
    let tx = sender(
        &net,
        &src,
        &["--rate", "800M", "--passes", "3", "--streams", "32"],
    );
    blast(&net.a, &net.addr_b, 6000);
    blast(&net.a, "239.8.8.9", 5000);
    let ping = net
        .a
        .cmd("ping")
        .args(["-c", "3", "-i", "0.2", "-W", "2", &net.addr_b])
        .output()
        .unwrap();
    assert!(
        ping.status.success(),
        "ping during the transfer: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
    assert_eq!(
        received(unicast),
        20,
        "unicast UDP to the receiver must reach the kernel"
    );
    assert_eq!(
        received(other_group),
        20,
        "another multicast group must not be captured"
    );

    finish(tx, rx, &src, &dst);

    let s = read_page(&dir.0, "xdp");
    assert_eq!(s.state, State::Success);
    assert_eq!(s.error, ErrorCode::None);
    assert_eq!(s.mode, PathMode::XdpNative);
    assert_eq!(s.blocks_done, s.block_count);
    assert_eq!(s.workers.len(), 2, "one AF_XDP worker per RX queue");
    let queues: Vec<u64> = s.workers.iter().map(|w| w.queue).collect();
    assert_eq!(queues, vec![0, 1]);
    let frames: u64 = s.workers.iter().map(|w| w.packets).sum();
    assert!(
        frames >= s.block_count,
        "every block came through AF_XDP ({frames} frames)"
    );
    assert_eq!(
        s.workers.iter().map(|w| w.blocks).sum::<u64>(),
        s.block_count
    );
    // Workers handed every block to their copiers in its frame (or, lane
    // full, copied it themselves); the SHA-256 above says the copies landed.
    assert_eq!(
        s.storage.handed_off + s.storage.lane_full,
        s.block_count,
        "{:?}",
        s.storage
    );
    assert!(s.storage.handed_off > 0, "{:?}", s.storage);
    assert_eq!(s.diag.unserved_frames, 0, "every queue has a socket");
    assert!(
        s.workers.iter().all(|w| w.packets > 0),
        "both queues carried frames: {:?}",
        s.workers
    );
    // Each worker timed its batches and published the percentiles.
    assert!(
        s.workers.iter().all(|w| {
            let [p50, p99, p999] = w.batch_ns;
            0 < p50 && p50 <= p99 && p99 <= p999
        }),
        "batch latency percentiles: {:?}",
        s.workers
    );
    assert!(
        !net.xdp_attached_b(),
        "no XDP program may remain after the receiver exits"
    );
}

#[test]
fn killed_receiver_leaves_no_program_behind() {
    if !netns_allowed() {
        return;
    }
    let net = VethPair::new(2, 1500);
    let dir = TempDir::new("xdpc-kill");
    let mut rx = receiver(
        &net,
        &dir.0,
        "kill",
        &dir.join("dst.img"),
        &["--mode", "xdp"],
    );
    assert!(net.xdp_attached_b());
    // `ip netns exec` execs the receiver, so this is the receiver's pid.
    rx.kill().unwrap();
    rx.wait().unwrap();
    wait_for(Duration::from_secs(5), "XDP detach", || {
        (!net.xdp_attached_b()).then_some(())
    });
    let out = xdpcast(&net.b)
        .args(["cleanup", "--iface", &net.if_b])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("no XDP program"));
    let s = read_page(&dir.0, "kill");
    assert!(
        s.is_stale(Duration::from_secs(60)),
        "a killed writer leaves a stale page"
    );
}

/// A queue still held by another socket (as by a killed receiver's socket
/// until the kernel's deferred release) is bound as soon as it is freed:
/// the second socket keeps its UMEM and rings and retries only the bind.
#[test]
fn busy_queue_is_bound_once_released() {
    if !netns_allowed() {
        return;
    }
    let net = VethPair::new(1, 1500);
    let cfg = XskConfig {
        frame_count: 256,
        ring_size: 128,
        ..XskConfig::default()
    };
    let open = || {
        net.b.enter_thread().expect("enter the namespace");
        XskQueue::open(&net.if_b, 0, &cfg)
    };
    std::thread::scope(|s| {
        let first = s.spawn(open).join().unwrap().expect("first socket");
        let (done_tx, done) = mpsc::channel();
        let second = s.spawn(move || {
            let r = open();
            done_tx.send(()).unwrap();
            r
        });
        // Whenever the second thread runs, it cannot bind while the first
        // socket holds the queue: it is still waiting.
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            done.try_recv().is_err(),
            "a second socket was bound to a held queue, or gave up at once"
        );
        drop(first);
        let q = second.join().unwrap().expect("bound after the release");
        assert!(!q.zero_copy(), "veth binds in copy mode");
    });
}

#[test]
fn sigterm_cancels_and_detaches() {
    if !netns_allowed() {
        return;
    }
    let net = VethPair::new(1, 1500);
    let dir = TempDir::new("xdpc-term");
    // `--frames` alone, below the default ring (a setting from before the
    // ring grew): the ring follows it, and the receiver starts.
    let rx = receiver(
        &net,
        &dir.0,
        "term",
        &dir.join("dst.img"),
        &["--mode", "xdp", "--frames", "8192"],
    );
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(rx.id() as i32, libc::SIGTERM) }, 0);
    let out = wait_output(rx, Duration::from_secs(20), "receiver");
    // 128 + SIGTERM, as a shell reports a process SIGTERM ended.
    assert_eq!(out.status.code(), Some(143));
    assert!(!net.xdp_attached_b());
    let s = read_page(&dir.0, "term");
    assert_eq!((s.state, s.error), (State::Failure, ErrorCode::Cancelled));
}

#[test]
fn unprivileged_auto_mode_falls_back_to_sockets_and_says_why() {
    if !netns_allowed() {
        return;
    }
    let net = VethPair::new(1, 1500);
    let dir = TempDir::new("xdpc-user");
    // nobody must be able to write the target; its status pages go in a
    // directory of its own (one others can write is refused).
    std::fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let pages = dir.join("pages");
    std::fs::create_dir(&pages).unwrap();
    std::os::unix::fs::chown(&pages, Some(NOBODY), Some(NOBODY)).unwrap();
    let (src, dst) = (dir.join("src.img"), dir.join("dst.img"));
    make_image(&src, 8 * MIB, 12);
    let c = as_nobody(net.b.cmd("setpriv"), env!("CARGO_BIN_EXE_xdpcast"));
    let rx = start_receiver(
        c,
        &pages,
        "user",
        GROUP,
        &["--iface", &net.if_b, "--out", dst.to_str().unwrap()],
    );
    let tx = sender(&net, &src, &["--rate", "800M", "--passes", "3"]);
    assert!(wait_output(tx, Duration::from_secs(60), "sender")
        .status
        .success());
    let out = wait_output(rx, Duration::from_secs(60), "receiver");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stderr.matches("socket path: XDP needs root").count(),
        1,
        "one clear line why, once: {stderr}"
    );
    assert_eq!(sha256_hex(&src), sha256_hex(&dst));
    let s = read_page(&pages, "user");
    assert_eq!(s.owner_uid, NOBODY);
    assert!(s.foreign_owner(), "root reads a page of nobody's");
    assert_eq!(s.mode, PathMode::Socket);
    assert!(s.message.contains("XDP needs root") || s.message.contains("verified"));
}

#[test]
fn jumbo_frames_reach_af_xdp_in_fragments() {
    if !netns_allowed() {
        return;
    }
    // 8 KiB blocks in 8.2 KB frames: larger than a 4 KiB UMEM frame, so
    // the multi-buffer program and XDP_USE_SG sockets carry each one in
    // several fragments, reassembled by the worker.
    let net = VethPair::new(2, 9000);
    let Images { dir, src, dst } = Images::new("xdpc-xjumbo", 64 * MIB, 17);
    let rx = receiver(&net, &dir.0, "xjumbo", &dst, &["--mode", "xdp"]);
    let tx = sender(
        &net,
        &src,
        &["--mtu", "9000", "--rate", "1G", "--streams", "32"],
    );
    finish(tx, rx, &src, &dst);
    let s = read_page(&dir.0, "xjumbo");
    assert_eq!((s.state, s.error), (State::Success, ErrorCode::None));
    assert_eq!(s.mode, PathMode::XdpNative);
    assert_eq!(s.block_size, 8192);
    assert_eq!(
        s.workers.iter().map(|w| w.blocks).sum::<u64>(),
        s.block_count,
        "every block came through AF_XDP"
    );
    assert!(!net.xdp_attached_b());
}

/// A link-local IPv6 group (as IPv6-only labs use) takes its scope from
/// `--iface` on both sides, over AF_XDP and over sockets.
#[test]
fn link_local_ipv6_group_over_xdp_and_sockets() {
    if !netns_allowed() {
        return;
    }
    const LINK_LOCAL: &str = "[ff12::204:1]:6000";
    let net = VethPair::new(1, 1500);
    for (mode, path) in [("xdp", PathMode::XdpNative), ("socket", PathMode::Socket)] {
        let Images { dir, src, dst } = Images::new("xdpc-ll", 4 * MIB, 23);
        let rx = start_receiver(
            xdpcast(&net.b),
            &dir.0,
            mode,
            LINK_LOCAL,
            &[
                "--iface",
                &net.if_b,
                "--out",
                dst.to_str().unwrap(),
                "--mode",
                mode,
            ],
        );
        let tx = start_sender(&net.a, &net.if_a, LINK_LOCAL, &src, &["--rate", "400M"]);
        finish(tx, rx, &src, &dst);
        let s = read_page(&dir.0, mode);
        assert_eq!((s.state, s.mode), (State::Success, path), "{mode}");
        assert_eq!(s.group, LINK_LOCAL);
    }
    assert!(!net.xdp_attached_b());
}

/// The receiver serves RX queue 1 of a two-queue veth while every frame
/// arrives on queue 0 (the sender's side has one TX queue left, and veth
/// delivers on the RX queue of the TX queue a frame left by). The XDP
/// program counts the session's frames there; the warning, the page, the
/// timeout's message, `xdpcast status` and the metrics say how many, on
/// which queue, and what to do.
#[test]
fn frames_on_a_queue_without_a_socket_are_reported() {
    if !netns_allowed() {
        return;
    }
    let net = VethPair::new(2, 1500);
    let out = net
        .a
        .cmd("ethtool")
        .args(["-L", &net.if_a, "tx", "1"])
        .output()
        .expect("ethtool (setup.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let Images { dir, src, dst } = Images::new("xdpc-unserved", 8 * MIB, 29);
    // Sending before the receiver starts, for longer than it waits.
    let mut tx = sender(
        &net,
        &src,
        &["--rate", "20M", "--passes", "2", "--streams", "4"],
    );
    let rx = receiver(
        &net,
        &dir.0,
        "unserved",
        &dst,
        &["--mode", "xdp", "--queues", "1", "--start-timeout", "2"],
    );
    let out = wait_output(rx, Duration::from_secs(60), "receiver");
    let _ = tx.kill();
    let _ = tx.wait();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(100 + ErrorCode::Timeout as i32),
        "{stderr}"
    );
    let s = read_page(&dir.0, "unserved");
    assert!(s.diag.unserved_frames > 0, "{:?}", s.diag);
    assert_eq!(s.diag.queues().collect::<Vec<_>>(), vec![0], "{:?}", s.diag);
    assert_eq!(
        (s.packets, s.workers.len()),
        (0, 1),
        "only queue 1 is served"
    );
    assert!(
        s.message
            .starts_with("no packet of the session within 2s; ")
            && s.message.contains("on RX queue 0 without an AF_XDP socket")
            && s.message.contains("--queues all"),
        "{}",
        s.message
    );

    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("RX queue")).collect();
    assert_eq!(warnings.len(), 1, "one warning for queue 0: {stderr}");
    for want in [
        &format!("warn: {}: ", net.if_b),
        "frames of the session on RX queue 0 without an AF_XDP socket",
        "--queues all",
        &format!(
            "`ethtool -N {} flow-type udp4 dst-ip 239.8.8.8 dst-port 5000 action 1`",
            net.if_b
        ),
        &format!("`ethtool -X {} weight 0 1`", net.if_b),
    ] {
        assert!(warnings[0].contains(want), "{want:?} in {}", warnings[0]);
    }

    let status = xdpcast(&net.b)
        .env("XDPCAST_STATUS_DIR", &dir.0)
        .args(["status", "unserved"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains(&format!(
            "unserved  {} frames of the session on RX queue 0 without an AF_XDP socket",
            s.diag.unserved_frames
        )),
        "{text}"
    );
    let monitor = xdpcast(&net.b)
        .env("XDPCAST_STATUS_DIR", &dir.0)
        .args(["monitor", "--once"])
        .output()
        .unwrap();
    let monitor = String::from_utf8_lossy(&monitor.stdout);
    assert!(
        monitor.contains(&format!("UNSERVED {} on queue 0", s.diag.unserved_frames)),
        "{monitor}"
    );
    let metrics = xdpcast(&net.b)
        .env("XDPCAST_STATUS_DIR", &dir.0)
        .args(["metrics", "--print"])
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        metrics.contains(&format!(
            "xdpcast_unserved_frames_total{{session=\"unserved\"}} {}\n",
            s.diag.unserved_frames
        )),
        "{metrics}"
    );
    assert!(!net.xdp_attached_b());
}

/// The Ethernet frames of a whole unsigned session of `image` to GROUP,
/// from `source`, each with an 802.1Q tag of VLAN `vid`.
fn tagged_session(image: &[u8], source: &str, vid: u16) -> Vec<Vec<u8>> {
    use xdpcast::proto::wire::{self, Control, Geometry, Kind};
    let g = Geometry::new(image.len() as u64, 1400);
    let digest: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(image).into();
    let ctl = Control {
        flags: wire::FLAG_FINAL,
        ..Control::new(digest, 0, 1)
    };
    let session = 0x7A6;
    let mut datagrams = vec![wire::encode_control(Kind::Announce, session, &g, &ctl)];
    for i in 0..g.block_count {
        let off = g.offset(i) as usize;
        let block = &image[off..off + g.block_len(i)];
        datagrams.push(wire::encode_data(session, &g, i, block));
    }
    datagrams.push(wire::encode_control(Kind::End, session, &g, &ctl));
    let src: std::net::Ipv4Addr = source.parse().unwrap();
    datagrams
        .iter()
        .map(|d| {
            let mut f = vec![0x01, 0x00, 0x5e, 0x08, 0x08, 0x08, 0x02, 0, 0, 0, 0, 1];
            f.extend_from_slice(&0x8100u16.to_be_bytes());
            f.extend_from_slice(&vid.to_be_bytes());
            f.extend_from_slice(&0x0800u16.to_be_bytes());
            let mut ip = [0u8; 20];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&((28 + d.len()) as u16).to_be_bytes());
            ip[8] = 1;
            ip[9] = 17;
            ip[12..16].copy_from_slice(&src.octets());
            ip[16..20].copy_from_slice(&[239, 8, 8, 8]);
            let sum: u32 = ip
                .chunks(2)
                .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
                .sum();
            let sum = (sum & 0xffff) + (sum >> 16);
            ip[10..12].copy_from_slice(&(!((sum & 0xffff) + (sum >> 16)) as u16).to_be_bytes());
            f.extend_from_slice(&ip);
            f.extend_from_slice(&40000u16.to_be_bytes());
            f.extend_from_slice(&5000u16.to_be_bytes());
            f.extend_from_slice(&((8 + d.len()) as u16).to_be_bytes());
            f.extend_from_slice(&[0, 0]);
            f.extend_from_slice(d);
            f
        })
        .collect()
}

/// Send `frames` as they are on `iface` of `ns` (a raw packet socket),
/// `rounds` times.
fn send_raw(ns: &Netns, iface: &str, dir: &Path, frames: &[Vec<u8>], rounds: u32) {
    let file = dir.join("frames.bin");
    let mut buf = Vec::new();
    for f in frames {
        buf.extend_from_slice(&(f.len() as u32).to_le_bytes());
        buf.extend_from_slice(f);
    }
    std::fs::write(&file, buf).unwrap();
    let script = "import socket,struct,sys,time\n\
        d=open(sys.argv[1],'rb').read()\n\
        s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW)\n\
        s.bind((sys.argv[2],0))\n\
        for r in range(int(sys.argv[3])):\n\
        \x20   i=n=0\n\
        \x20   while i<len(d):\n\
        \x20       (l,)=struct.unpack_from('<I',d,i)\n\
        \x20       s.send(d[i+4:i+4+l])\n\
        \x20       i+=4+l; n+=1\n\
        \x20       if n%16==0: time.sleep(0.002)\n\
        \x20   time.sleep(0.2)\n";
    let out = ns
        .cmd("/usr/bin/python3")
        .args(["-c", script, file.to_str().unwrap(), iface])
        .arg(rounds.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn frames_tagged_for_another_vlan_are_not_the_sessions() {
    if !netns_allowed() {
        return;
    }
    let net = VethPair::new(1, 1500);
    let Images { dir, src, dst } = Images::new("xdpc-vlan", 300_000, 5);
    let image = std::fs::read(&src).unwrap();
    // The whole session, tagged for VLAN 99, arrives on the receiver's
    // untagged port (as from a VLAN interface of the sender's host).
    let frames = tagged_session(&image, &net.addr_a, 99);
    let rx = receiver(
        &net,
        &dir.0,
        "vlan",
        &dst,
        &["--mode", "xdp", "--start-timeout", "3"],
    );
    send_raw(&net.a, &net.if_a, &dir.0, &frames, 3);
    let out = wait_output(rx, Duration::from_secs(60), "receiver");
    // None of it was taken: the session never started, nothing written.
    assert_eq!(
        out.status.code(),
        Some(100 + ErrorCode::Timeout as i32),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = read_page(&dir.0, "vlan");
    assert_eq!(s.mode, PathMode::XdpNative);
    let packets: u64 = s.workers.iter().map(|w| w.packets).sum();
    assert_eq!(packets, 0, "no tagged frame reached a worker");
    assert!(!dst.exists(), "no target opened");
    // With --vlan 99 (a trunk port) the same frames are the session's.
    let rx = receiver(
        &net,
        &dir.0,
        "vlan99",
        &dst,
        &["--mode", "xdp", "--vlan", "99"],
    );
    send_raw(&net.a, &net.if_a, &dir.0, &frames, 3);
    let out = wait_output(rx, Duration::from_secs(60), "receiver");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sha256_hex(&src), sha256_hex(&dst));
    assert_eq!(read_page(&dir.0, "vlan99").mode, PathMode::XdpNative);
}
