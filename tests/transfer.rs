//! End-to-end transfers on the portable (socket) path: loopback inside a
//! namespace and between two namespaces over veth; bad packets injected
//! mid-transfer are counted and never written.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use xdpcast::proto::wire::hex;
use xdpcast::proto::wire::{self, DropReason, Geometry};
use xdpcast::status::page::{PathMode, State};
use xdpcast::ErrorCode;
use xdpcast_bench::blast::{blast, BlastOptions};

const MIB: usize = 1 << 20;
const GROUP: &str = "239.7.7.7:5000";

/// A socket-path receiver on `iface` writing to `out`.
fn receiver(ns: &Netns, iface: &str, status: &Path, name: &str, out: &str) -> std::process::Child {
    let args = ["--iface", iface, "--mode", "socket", "--out", out];
    start_receiver(xdpcast(ns), status, name, GROUP, &args)
}

fn send(ns: &Netns, iface: &str, file: &Path, extra: &[&str]) -> std::process::Child {
    start_sender(ns, iface, GROUP, file, extra)
}

fn finish(rx: std::process::Child, tx: std::process::Child) -> std::process::Output {
    let tx_out = wait_output(tx, Duration::from_secs(120), "sender");
    assert!(
        tx_out.status.success(),
        "sender: {}",
        String::from_utf8_lossy(&tx_out.stderr)
    );
    wait_output(rx, Duration::from_secs(120), "receiver")
}

fn assert_success(
    out: &std::process::Output,
    status: &Path,
    name: &str,
    src: &Path,
    dst: &Path,
    mode: PathMode,
) {
    assert!(
        out.status.success(),
        "receiver failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        sha256_hex(src),
        sha256_hex(dst),
        "image on disk differs from the source"
    );
    let s = read_page(status, name);
    let len = std::fs::metadata(src).unwrap().len();
    assert_eq!(s.state, State::Success);
    assert_eq!(s.error, ErrorCode::None);
    assert_eq!(s.mode, mode);
    assert_eq!(s.total_bytes, len);
    assert_eq!(s.bytes_done, len);
    assert_eq!(s.blocks_done, s.block_count);
    assert_eq!(s.block_count, len.div_ceil(s.block_size));
    assert!(s.end_ns >= s.start_ns && s.start_ns > 0);
    assert_eq!(hex(&s.digest), sha256_hex(src));
    assert!(s.workers.iter().map(|w| w.blocks).sum::<u64>() == s.block_count);
}

/// A namespace whose `lo` carries the group, and images of `len` bytes.
fn on_loopback(prefix: &str, len: usize, seed: u64) -> (Netns, Images) {
    let ns = Netns::new(prefix);
    ns.ip(&["route", "add", "224.0.0.0/4", "dev", "lo"]);
    (ns, Images::new(prefix, len, seed))
}

#[test]
fn socket_path_on_loopback_64mib() {
    if !netns_allowed() {
        return;
    }
    let (ns, Images { dir, src, dst }) = on_loopback("xdpc-lo", 64 * MIB, 1);
    let rx = receiver(&ns, "lo", &dir.0, "lo", dst.to_str().unwrap());
    let tx = send(
        &ns,
        "lo",
        &src,
        &["--block-size", "1400", "--rate", "1G", "--passes", "3"],
    );
    let out = finish(rx, tx);
    assert_success(&out, &dir.0, "lo", &src, &dst, PathMode::Socket);
}

#[test]
fn socket_path_between_namespaces_64mib() {
    if !netns_allowed() {
        return;
    }
    let net = VethPair::new(1, 1500);
    let Images { dir, src, dst } = Images::new("xdpc-veth", 64 * MIB + 123, 2);
    let rx = receiver(&net.b, &net.if_b, &dir.0, "veth", dst.to_str().unwrap());
    let tx = send(&net.a, &net.if_a, &src, &["--rate", "1G", "--passes", "3"]);
    let out = finish(rx, tx);
    assert_success(&out, &dir.0, "veth", &src, &dst, PathMode::Socket);
}

/// `--socket-gro on`: the bench's blast sender with UDP GSO on `lo` (the
/// loopback keeps each 45-datagram GSO message whole, and a `UDP_GRO`
/// socket takes it as one message with its segment size, as from a NIC's
/// GRO); the worker splits the messages into blocks and the image lands.
#[test]
fn socket_gro_messages_are_split_into_blocks() {
    if !netns_allowed() {
        return;
    }
    let (ns, Images { dir, src, dst }) = on_loopback("xdpc-gro", 8 * MIB + 77, 5);
    let args = ["--iface", "lo", "--mode", "socket", "--socket-gro", "on"];
    let rx = start_receiver(
        xdpcast(&ns),
        &dir.0,
        "gro",
        GROUP,
        &[&args[..], &["--out", dst.to_str().unwrap()]].concat(),
    );
    let opts = BlastOptions {
        group: GROUP.parse().unwrap(),
        iface: "lo".into(),
        passes: 3,
        block_size: 1400,
        session: 7,
        gso: true,
        rate_bps: Some(400_000_000),
    };
    let report = std::thread::scope(|s| {
        s.spawn(|| {
            ns.enter_thread().unwrap();
            blast(&src, &opts, |_| {}).unwrap()
        })
        .join()
        .unwrap()
    });
    assert!(report.segments > 1, "the sender used no GSO");
    let out = wait_output(rx, Duration::from_secs(120), "receiver");
    assert_success(&out, &dir.0, "gro", &src, &dst, PathMode::Socket);
    let w = &read_page(&dir.0, "gro").workers[0];
    assert!(w.gro_messages > 0, "no coalesced message: {w:?}");
    assert!(w.packets > w.gro_messages * 2);
}

/// Python one-liner run in the namespace that sends the given datagrams.
/// A Python process in `ns`, started now, that sends `datagrams` to the
/// group when [`fire`] is called: its start-up (seconds on a loaded
/// machine) is out of the way before the moment that matters.
fn injector(ns: &Netns, datagrams: &[Vec<u8>]) -> std::process::Child {
    let hexes: Vec<String> = datagrams.iter().map(|d| hex(d)).collect();
    let script = format!(
        "import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
         s.setsockopt(socket.IPPROTO_IP,socket.IP_MULTICAST_LOOP,1)\n\
         pk=[bytes.fromhex(h) for h in {hexes:?}]\n\
         sys.stdin.readline()\n\
         for p in pk:\n    s.sendto(p,('239.7.7.7',5000))\n"
    );
    ns.cmd("python3")
        .args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Let the injector send, and wait for it.
fn fire(mut child: std::process::Child) {
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_packets_mid_transfer_are_counted_not_written() {
    if !netns_allowed() {
        return;
    }
    let ns = Netns::new("xdpc-bad");
    ns.ip(&["route", "add", "224.0.0.0/4", "dev", "lo"]);
    let len = 16 * MIB;
    let Images { dir, src, dst } = Images::new("xdpc-bad", len, 3);
    let rx = receiver(&ns, "lo", &dir.0, "bad", dst.to_str().unwrap());
    // Slow enough that the injection lands mid-transfer (about 1.3 s per pass).
    let tx = send(
        &ns,
        "lo",
        &src,
        &[
            "--block-size",
            "1400",
            "--rate",
            "100M",
            "--passes",
            "2",
            "--session",
            "4242",
        ],
    );
    let g = Geometry::new(len as u64, 1400);
    let garbage = vec![0xEEu8; 1400];
    let mut bad_magic = wire::encode_data(4242, &g, 5, &garbage);
    bad_magic[0] ^= 0xFF;
    let mut truncated = wire::encode_data(4242, &g, 6, &garbage);
    truncated.truncate(100);
    let packets = vec![
        bad_magic,
        truncated,
        wire::encode_data(999, &g, 7, &garbage), // foreign session
        wire::encode_data(4242, &g, g.block_count, &garbage), // out of range
        wire::encode_data(4242, &Geometry::new(len as u64 + 1400, 1400), 8, &garbage), // inconsistent
        b"hello".to_vec(),
    ];
    let injector = injector(&ns, &packets);
    wait_for(Duration::from_secs(20), "first blocks", || {
        (read_page(&dir.0, "bad").blocks_done > 100).then_some(())
    });
    fire(injector);
    let out = finish(rx, tx);
    assert_success(&out, &dir.0, "bad", &src, &dst, PathMode::Socket);
    let s = read_page(&dir.0, "bad");
    assert_eq!(s.session_id, 4242);
    assert_eq!(s.drops_for(DropReason::BadMagic), 1);
    assert_eq!(
        s.drops_for(DropReason::Truncated),
        2,
        "cut packet and 5-byte datagram"
    );
    assert_eq!(s.drops_for(DropReason::ForeignSession), 1);
    assert_eq!(s.drops_for(DropReason::OutOfRange), 1);
    assert_eq!(s.drops_for(DropReason::Inconsistent), 1);
}

#[test]
fn missing_target_directory_fails_with_code() {
    if !netns_allowed() {
        return;
    }
    // The target is checked before the first packet: the receiver refuses
    // to start, with the target_io code as exit status and the path named.
    let ns = Netns::new("xdpc-tgt");
    let dir = TempDir::new("xdpc-tgt");
    let out = xdpcast(&ns)
        .env("XDPCAST_STATUS_DIR", &dir.0)
        .args(["receive", "--group", "239.9.9.9:5000", "--iface", "lo"])
        .args(["--name", "tgt", "--out", "/nonexistent-xdpcast/dst.img"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(100 + ErrorCode::TargetIo as i32));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent-xdpcast"), "{err}");
    assert!(err.contains("target_io"), "{err}");
}

#[test]
fn jumbo_blocks_on_the_socket_path() {
    if !netns_allowed() {
        return;
    }
    let net = VethPair::new(1, 9000);
    let Images { dir, src, dst } = Images::new("xdpc-jumbo", 64 * MIB, 5);
    let rx = receiver(&net.b, &net.if_b, &dir.0, "jumbo", dst.to_str().unwrap());
    let tx = send(&net.a, &net.if_a, &src, &["--mtu", "9000", "--rate", "1G"]);
    let out = finish(rx, tx);
    assert_success(&out, &dir.0, "jumbo", &src, &dst, PathMode::Socket);
    assert_eq!(read_page(&dir.0, "jumbo").block_size, 8192);
}

#[test]
fn block_device_targets_are_written_in_place_or_refused_when_small() {
    if !netns_allowed() {
        return;
    }
    let ns = Netns::new("xdpc-blk");
    ns.ip(&["route", "add", "224.0.0.0/4", "dev", "lo"]);
    let Images { dir, src, .. } = Images::new("xdpc-blk", 16 * MIB, 6);
    let big = LoopDev::new(&dir.join("big.backing"), 24 * MIB as u64);
    let rx = receiver(&ns, "lo", &dir.0, "blk", &big.0);
    let tx = send(&ns, "lo", &src, &["--block-size", "1400", "--rate", "1G"]);
    let out = finish(rx, tx);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let device = std::fs::read(&big.0).unwrap();
    assert_eq!(device.len(), 24 * MIB, "a block device is never resized");
    assert_eq!(&device[..16 * MIB], &std::fs::read(&src).unwrap()[..]);
    assert!(!Path::new(&format!("{}.xdpcast-resume", big.0)).exists());

    let small = LoopDev::new(&dir.join("small.backing"), 8 * MIB as u64);
    let rx = receiver(&ns, "lo", &dir.0, "small", &small.0);
    let tx = send(&ns, "lo", &src, &["--block-size", "1400", "--no-repair"]);
    let out = finish(rx, tx);
    assert_eq!(
        out.status.code(),
        Some(100 + ErrorCode::TargetTooSmall as i32)
    );
    let s = read_page(&dir.0, "small");
    assert_eq!(
        (s.state, s.error),
        (State::Failure, ErrorCode::TargetTooSmall)
    );
}
