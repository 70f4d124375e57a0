//! `xdpcast receive --protocol udpcast` against Debian's real udpcast
//! package (`udp-sender`, `udp-receiver`, installed by setup.sh): the data
//! goes through XDP steering and AF_XDP, the image arrives intact (also
//! with `udp-sender --fec`, lost blocks rebuilt from FEC blocks), and a
//! udpcast receiver in the same session finishes too. Forged udpcast
//! packets from another host, or from one spoofing the sender's address,
//! neither land nor end the transfer early.
//!
//! These tests need root. They run in CI; they are skipped only when
//! `XDPCAST_SKIP_NETNS=1` says the machine cannot run them.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::Duration;

use common::*;
use xdpcast::proto::wire::DropReason;
use xdpcast::status::page::{PathMode, State, FLAG_DIGEST};
use xdpcast::ErrorCode;

const MIB: usize = 1 << 20;
const PORTBASE: &str = "9000";
const LIMIT: Duration = Duration::from_secs(180);

/// Debian's udpcast binaries; panics (CI must have them) unless skipping.
fn udpcast_installed() -> bool {
    if !netns_allowed() {
        return false;
    }
    for bin in ["/usr/bin/udp-sender", "/usr/bin/udp-receiver"] {
        assert!(
            Path::new(bin).exists(),
            "{bin} is missing: install Debian's udpcast package (./setup.sh)"
        );
    }
    true
}

/// The real udp-sender in `ns`, multicasting `file` to `group` and waiting
/// for `receivers` receivers, with `extra` arguments. `--nopointopoint`:
/// with a single receiver it would otherwise send the data by unicast.
fn udp_sender(
    ns: &Netns,
    iface: &str,
    file: &Path,
    group: &str,
    receivers: u32,
    extra: &[&str],
) -> Child {
    let mut all = vec!["--mcast-data-address", group, "--nopointopoint"];
    all.extend_from_slice(extra);
    udp_sender_as(ns, iface, file, receivers, &all)
}

/// The real udp-sender in `ns` sending `file` once `receivers` receivers
/// have connected, otherwise with its defaults and `extra` arguments.
fn udp_sender_as(ns: &Netns, iface: &str, file: &Path, receivers: u32, extra: &[&str]) -> Child {
    let mut c = ns.cmd("udp-sender");
    c.args(["--interface", iface, "--file", file.to_str().unwrap()])
        .args(["--portbase", PORTBASE])
        .args(["--min-receivers", &receivers.to_string()])
        .arg("--nokbd")
        .args(extra);
    spawn(c)
}

/// `xdpcast receive --protocol udpcast --mode xdp` in `ns`, expecting data
/// group `group`, with a kept status page and `extra` arguments.
fn xdpcast_udpcast(
    ns: &Netns,
    iface: &str,
    status: &Path,
    out: &Path,
    group: &str,
    extra: &[&str],
) -> Child {
    xdpcast_udpcast_in(ns, iface, status, out, group, "xdp", extra)
}

/// The same with data path `mode`.
fn xdpcast_udpcast_in(
    ns: &Netns,
    iface: &str,
    status: &Path,
    out: &Path,
    group: &str,
    mode: &str,
    extra: &[&str],
) -> Child {
    let mut args = vec![
        "--protocol",
        "udpcast",
        "--portbase",
        PORTBASE,
        "--mode",
        mode,
        "--iface",
        iface,
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    start_receiver(
        xdpcast(ns),
        status,
        "udpc",
        &format!("{group}:{PORTBASE}"),
        &args,
    )
}

fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The xdpcast receiver's page after a successful transfer of `src` over
/// XDP in native mode, every datagram through AF_XDP.
fn assert_page(status: &Path, src: &Path) {
    let s = read_page(status, "udpc");
    assert_eq!((s.state, s.error), (State::Success, ErrorCode::None));
    assert_eq!(s.mode, PathMode::XdpNative);
    let len = std::fs::metadata(src).unwrap().len();
    assert_eq!(s.total_bytes, len);
    assert_eq!(s.bytes_done, len);
    assert_ne!(s.flags & FLAG_DIGEST, 0);
    assert_eq!(xdpcast::proto::wire::hex(&s.digest), sha256_hex(src));
    assert!(!s.workers.is_empty());
    let via_xdp: u64 = s.workers.iter().map(|w| w.blocks).sum();
    assert_eq!(
        via_xdp, s.blocks_done,
        "every block came through AF_XDP: {:?}",
        s.workers
    );
    assert!(s.workers.iter().map(|w| w.packets).sum::<u64>() >= s.blocks_done);
}

#[test]
fn udp_sender_to_xdpcast_over_af_xdp() {
    if !udpcast_installed() {
        return;
    }
    // VethPair configures no broadcast address: udp-sender and xdpcast
    // then meet on 224.0.0.1, as udpcast does.
    let net = VethPair::new(1, 1500);
    // Not a multiple of udpcast's block size: the last block is short.
    let Images { dir, src, dst } = Images::new("xdpc-udpc", 64 * MIB + 1000, 21);
    let group = "239.77.0.1";
    let rx = xdpcast_udpcast(&net.b, &net.if_b, &dir.0, &dst, group, &[]);
    let tx = udp_sender(&net.a, &net.if_a, &src, group, 1, &[]);
    assert_ok(&wait_output(tx, LIMIT, "udp-sender"), "udp-sender");
    assert_ok(&wait_output(rx, LIMIT, "xdpcast"), "xdpcast");
    assert_eq!(sha256_hex(&src), sha256_hex(&dst));
    assert_page(&dir.0, &src);
    assert!(
        !net.xdp_attached_b(),
        "no XDP program may remain after the receiver exits"
    );
}

/// Onto a block device full of old data. udpcast blocks (1456 bytes)
/// straddle pages, and a write of part of a page the kernel does not hold
/// makes it read that page from the device first: written block by block,
/// every page of the image was read from the device before it was written.
/// The receiver writes whole slices in order, in whole pages, as
/// udp-receiver does: nothing is read from the device.
#[test]
fn udp_sender_onto_a_block_device_reads_nothing_from_it() {
    if !udpcast_installed() {
        return;
    }
    let net = VethPair::new(1, 1500);
    // A whole number of pages (so the last page is whole too), not of
    // udpcast blocks.
    let Images { dir, src, .. } = Images::new("xdpc-udpc-blk", 16 * MIB, 24);
    let disk = LoopDev::old_disk(&dir, 16 * MIB as u64);
    let group = "239.77.0.1";
    let rx = xdpcast_udpcast(&net.b, &net.if_b, &dir.0, Path::new(&disk.0), group, &[]);
    // From before the first packet to the receiver's exit (after its
    // SHA-256 of what landed, from the page cache).
    let before = disk.sectors_read();
    let tx = udp_sender(&net.a, &net.if_a, &src, group, 1, &[]);
    assert_ok(&wait_output(tx, LIMIT, "udp-sender"), "udp-sender");
    let out = wait_output(rx, LIMIT, "xdpcast");
    assert_ok(&out, "xdpcast");
    let s = read_page(&dir.0, "udpc");
    assert_eq!(
        disk.sectors_read(),
        before,
        "read the device: {s:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_page(&dir.0, &src);
    assert_eq!(sha256_hex(&src), sha256_hex(Path::new(&disk.0)));
}

/// udp-sender's defaults with one receiver: point-to-point mode, the data
/// and REQACKs by unicast to the receiver's address. The XDP program steers
/// that address on the port as well, so every block still comes through
/// AF_XDP (the worker counters), and the transfer completes.
#[test]
fn point_to_point_udp_sender_still_reaches_af_xdp() {
    if !udpcast_installed() {
        return;
    }
    let net = VethPair::new(1, 1500);
    let Images { dir, src, dst } = Images::new("xdpc-udpc-p2p", 24 * MIB + 333, 26);
    // udp-receiver's command line, taking the group the sender announces.
    let rx = clonezilla_pipeline(
        &net.b,
        &net.if_b,
        &dir,
        &format!("cat > {}", dst.display()),
        &[],
    );
    let tx = udp_sender_as(&net.a, &net.if_a, &src, 1, &[]);
    assert_ok(&wait_output(tx, LIMIT, "udp-sender"), "udp-sender");
    let out = wait_output(rx, LIMIT, "xdpcast");
    assert_ok(&out, "xdpcast");
    assert_eq!(sha256_hex(&src), sha256_hex(&dst));
    assert_page(&dir.0, &src);
    let s = read_page(&dir.0, "udpc");
    assert!(
        !s.message.contains("point-to-point"),
        "no kernel-socket fallback: {}",
        s.message
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("point-to-point mode"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// udp-sender with `--fec FEC` to xdpcast over XDP, whose XDP program
/// drops `loss_ppm` of the data group's frames (data, FEC blocks and
/// REQACKs alike): the image arrives intact and FEC rebuilt some blocks.
fn fec_transfer(fec: &str, loss_ppm: u32, len: usize, seed: u64, group: &str) {
    let net = VethPair::new(1, 1500);
    let Images { dir, src, dst } = Images::new("xdpc-udpc-fec", len, seed);
    let loss = loss_ppm.to_string();
    let rx = xdpcast_udpcast(
        &net.b,
        &net.if_b,
        &dir.0,
        &dst,
        group,
        &["--inject-loss", &loss],
    );
    let tx = udp_sender(&net.a, &net.if_a, &src, group, 1, &["--fec", fec]);
    let tx_out = wait_output(tx, LIMIT, "udp-sender");
    assert_ok(&tx_out, "udp-sender");
    let said = String::from_utf8_lossy(&tx_out.stderr);
    assert!(said.contains("stripes="), "udp-sender took --fec: {said}");
    assert_ok(&wait_output(rx, LIMIT, "xdpcast"), "xdpcast");
    assert_eq!(sha256_hex(&src), sha256_hex(&dst));
    assert_page(&dir.0, &src);
    let s = read_page(&dir.0, "udpc");
    assert!(
        s.fec_recovered > 0,
        "lost blocks were rebuilt from FEC blocks: {s:?}"
    );
    assert!(s.fec_recovered < s.blocks_done);
    assert!(!net.xdp_attached_b());
}

#[test]
fn udp_sender_with_fec_to_xdpcast_rebuilds_lost_blocks() {
    if !udpcast_installed() {
        return;
    }
    // Slices of 8 stripes × 64 blocks, 8 FEC blocks per stripe; 0.5% loss
    // is about one block in a slice: FEC rebuilds them all.
    fec_transfer("8x8/64", 5_000, 32 * MIB + 1000, 23, "239.77.0.3");
}

#[test]
fn udp_sender_with_little_fec_and_more_loss_also_retransmits() {
    if !udpcast_installed() {
        return;
    }
    // 4 stripes × 32 blocks, 2 FEC blocks per stripe, 3% loss: some
    // stripes lose more than 2 blocks and need CMD_RETRANSMIT on top.
    fec_transfer("4x2/32", 30_000, 16 * MIB + 333, 24, "239.77.0.4");
}

/// udp-receiver finds the sender through the interface's broadcast
/// address, which `Lan` does not configure.
fn with_broadcast(h: &Host) {
    let addr = format!("{}/24", h.addr);
    h.ns.ip(&["addr", "del", &addr, "dev", &h.iface]);
    h.ns.ip(&["addr", "add", &addr, "brd", "+", "dev", &h.iface]);
    h.ns.ip(&["route", "replace", "224.0.0.0/4", "dev", &h.iface]);
}

#[test]
fn xdpcast_and_udp_receiver_finish_the_same_session() {
    if !udpcast_installed() {
        return;
    }
    // The sender, the xdpcast receiver and a udpcast receiver on one segment.
    let lan = Lan::new(3);
    for h in &lan.hosts {
        with_broadcast(h);
    }
    let [a, b, c] = &lan.hosts[..] else {
        unreachable!()
    };
    let dir = TempDir::new("xdpc-udpc2");
    let (src, dst, dst2) = (
        dir.join("src.img"),
        dir.join("dst.img"),
        dir.join("dst2.img"),
    );
    make_image(&src, 64 * MIB, 22);
    let group = "239.77.0.2";
    // xdpcast under the name udp-receiver, as Clonezilla runs it: the image
    // on standard output, into sha256sum.
    let rx = clonezilla_pipeline(
        &b.ns,
        &b.iface,
        &dir,
        &format!("sha256sum > {}", sha_of(&dst).display()),
        &[],
    );
    let mut other = c.ns.cmd("udp-receiver");
    other
        .args(["--interface", &c.iface, "--file", dst2.to_str().unwrap()])
        .args(["--portbase", PORTBASE, "--nokbd"]);
    let other = spawn(other);
    let tx = udp_sender(&a.ns, &a.iface, &src, group, 2, &[]);
    let tx_out = wait_output(tx, LIMIT, "udp-sender");
    assert_ok(&tx_out, "udp-sender");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&tx_out.stdout),
        String::from_utf8_lossy(&tx_out.stderr)
    );
    assert!(said.contains("Transfer complete"), "{said}");
    assert_ok(&wait_output(other, LIMIT, "udp-receiver"), "udp-receiver");
    assert_ok(&wait_output(rx, LIMIT, "xdpcast"), "xdpcast");
    let want = sha256_hex(&src);
    let piped = std::fs::read_to_string(sha_of(&dst)).unwrap();
    assert_eq!(
        piped.split_whitespace().next(),
        Some(want.as_str()),
        "xdpcast's stream"
    );
    assert_eq!(sha256_hex(&dst2), want, "udp-receiver's copy");
    assert_page(&dir.0, &src);
    let s = read_page(&dir.0, "udpc");
    assert_eq!(s.stream.written, s.total_bytes);
    assert!(s.stream.window > 0);
}

fn sha_of(p: &Path) -> PathBuf {
    p.with_extension("sha256")
}

/// `udp-receiver --interface IFACE --portbase 9000 --nokbd EXTRA | TAIL`
/// in `ns` under bash's pipefail, with xdpcast behind a link named
/// `udp-receiver` (Clonezilla's command line, unchanged); xdpcast's own
/// options keep its status page as `udpc` and ask for the XDP path.
/// Returns once the page says IN_PROGRESS.
fn clonezilla_pipeline(
    ns: &Netns,
    iface: &str,
    dir: &TempDir,
    tail: &str,
    extra: &[&str],
) -> Child {
    let link = dir.join("udp-receiver");
    if !link.exists() {
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_xdpcast"), &link).unwrap();
    }
    let script = format!(
        "{} --interface {iface} --portbase {PORTBASE} --nokbd {} \
         --mode xdp --name udpc --keep-status | {tail}",
        link.display(),
        extra.join(" ")
    );
    let mut c = ns.cmd("bash");
    c.env("XDPCAST_STATUS_DIR", &dir.0)
        .args(["-o", "pipefail", "-c", &script]);
    let child = spawn(c);
    wait_for(Duration::from_secs(20), "udp-receiver start", || {
        let page = dir.join("xdpcast.udpc");
        let s = xdpcast::StatusReader::open(&page).ok()?.read().ok()?;
        (s.state == State::InProgress).then_some(())
    });
    child
}

#[test]
fn udp_receiver_pipe_gunzips_through_a_slow_consumer() {
    if !udpcast_installed() {
        return;
    }
    let net = VethPair::new(1, 1500);
    let Images { dir, src, dst } = Images::new("xdpc-udpc-gz", 16 * MIB + 77, 25);
    let gz = dir.join("src.img.gz");
    let status = std::process::Command::new("sh")
        .args([
            "-c",
            &format!("gzip -1 -c {} > {}", src.display(), gz.display()),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    // A 1 MiB window (less than a slice) and a consumer that starts late:
    // the window fills, what does not fit is refused and retransmitted,
    // nothing is lost. The stall is short: udp-sender drops a receiver
    // whose slice needs more than --retries-until-drop (200) REQACK rounds
    // once one of them times out (docs/udpcast.md); --receive-timeout
    // then ends this receiver instead of letting it wait forever.
    // The consumer reads nothing until the receiver has refused a block
    // (the test creates `go` then), so the push-back happens however
    // slow or fast the sender is.
    let go = dir.join("go");
    let pipe = format!(
        "while [ ! -e {} ]; do sleep 0.02; done; gzip -dc",
        go.display()
    );
    let rx = clonezilla_pipeline(
        &net.b,
        &net.if_b,
        &dir,
        "cat",
        &[
            "--pipe",
            &format!("'{pipe}'"),
            "--file",
            dst.to_str().unwrap(),
            "--stream-window-mib",
            "1",
            "--receive-timeout",
            "30",
            "--log",
            dir.join("rx.log").to_str().unwrap(),
        ],
    );
    let tx = udp_sender(&net.a, &net.if_a, &gz, "239.77.0.5", 1, &[]);
    wait_for(LIMIT, "a refused block", || {
        (read_page(&dir.0, "udpc").stream.refused > 0).then_some(())
    });
    std::fs::write(&go, b"").unwrap();
    assert_ok(&wait_output(tx, LIMIT, "udp-sender"), "udp-sender");
    assert_ok(&wait_output(rx, LIMIT, "xdpcast"), "xdpcast");
    assert_eq!(sha256_hex(&dst), sha256_hex(&src));
    let s = read_page(&dir.0, "udpc");
    assert_eq!((s.state, s.error), (State::Success, ErrorCode::None));
    assert_eq!(xdpcast::proto::wire::hex(&s.digest), sha256_hex(&gz));
    assert_eq!(s.stream.written, std::fs::metadata(&gz).unwrap().len());
    assert!(s.stream.refused > 0, "the slow consumer pushed back: {s:?}");
    assert_eq!(s.stream.window, 1 << 20);
    // --log: the receiver's messages, each after the time of day.
    let log = std::fs::read_to_string(dir.join("rx.log")).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("udpcast client #0 of udp-sender"))
        .unwrap_or_else(|| panic!("{log}"));
    let (time, _) = line.split_once(' ').unwrap();
    assert_eq!(time.len(), "HH:MM:SS.uuuuuu".len(), "{line}");
}

/// A process killed (and reaped) when the test ends, however it ends,
/// unless taken back to be waited for.
struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    fn take(mut self) -> Child {
        self.0.take().expect("a process")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Forged udpcast packets, from `ns` bound to `src`, to the data group
/// until killed: end markers (REQACK with 0 bytes) for slices 0-63 and,
/// with `data`, a block of 0xEE bytes at the start of each of those slices.
const FORGER: &str = r#"
import socket, struct, sys, time
group, port, src, data = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
s.bind((src, port + 1))
while True:
    for k in range(64):
        s.sendto(struct.pack(">HHIII", 6, 0, k, 0, 0) + bytes(128), (group, port))
        if data:
            s.sendto(struct.pack(">HHIHHI", 8, 0, k, 0, 0, 1456) + b"\xee" * 1456, (group, port))
    time.sleep(0.01)
"#;

fn forger(ns: &Netns, group: &str, src: &str, data: bool) -> KillOnDrop {
    let mut c: Command = ns.cmd("python3");
    c.args([
        "-c",
        FORGER,
        group,
        PORTBASE,
        src,
        if data { "1" } else { "0" },
    ]);
    KillOnDrop(Some(spawn(c)))
}

/// udp-sender on host a to xdpcast on host b (data path `mode`), while host
/// c sends forged data blocks and end markers from its own address and
/// forged end markers from the sender's address. The image still arrives
/// whole, with SUCCESS; the forgeries are counted as drops.
fn forged_packets_neither_land_nor_end_the_transfer(
    mode: &str,
    group: &str,
    seed: u64,
    source: bool,
) {
    let lan = Lan::new(3);
    let [a, b, c] = &lan.hosts[..] else {
        unreachable!()
    };
    // c also holds the sender's address (spoofing), without answering ARP
    // for it so that b still reaches the real sender.
    c.ns.ip(&["link", "set", "dev", &c.iface, "arp", "off"]);
    c.ns.ip(&[
        "addr",
        "add",
        &format!("{}/32", a.addr),
        "dev",
        &c.iface,
        "nodad",
    ]);
    let Images { dir, src, dst } = Images::new("xdpc-udpc-forged", 8 * MIB + 555, seed);
    let only = ["--source", a.addr.as_str()];
    let extra: &[&str] = if source { &only } else { &[] };
    let rx = xdpcast_udpcast_in(&b.ns, &b.iface, &dir.0, &dst, group, mode, extra);
    let _foreign = forger(&c.ns, group, &c.addr, true);
    let _spoofed = forger(&c.ns, group, &a.addr, false);
    let tx = KillOnDrop(Some(udp_sender(&a.ns, &a.iface, &src, group, 1, &[])));
    // The receiver first: one that took a forged end marker stops early
    // and leaves the sender waiting.
    assert_ok(&wait_output(rx, LIMIT, "xdpcast"), "xdpcast");
    assert_eq!(sha256_hex(&src), sha256_hex(&dst), "nothing forged landed");
    assert_ok(&wait_output(tx.take(), LIMIT, "udp-sender"), "udp-sender");
    let s = read_page(&dir.0, "udpc");
    assert_eq!((s.state, s.error), (State::Success, ErrorCode::None));
    let len = std::fs::metadata(&src).unwrap().len();
    assert_eq!((s.total_bytes, s.bytes_done), (len, len), "{s:?}");
    assert!(
        s.drops_for(DropReason::ForeignSource) > 0,
        "packets from c counted: {s:?}"
    );
    assert!(
        s.drops_for(DropReason::Inconsistent) > 0,
        "spoofed end markers counted: {s:?}"
    );
}

#[test]
fn forged_udpcast_packets_do_not_land_or_end_the_transfer_over_xdp() {
    if !udpcast_installed() {
        return;
    }
    // With --source as well: connect reply from the sender's address only,
    // and a source-specific join.
    forged_packets_neither_land_nor_end_the_transfer("xdp", "239.77.0.5", 25, true);
}

#[test]
fn forged_udpcast_packets_do_not_land_or_end_the_transfer_over_sockets() {
    if !udpcast_installed() {
        return;
    }
    forged_packets_neither_land_nor_end_the_transfer("socket", "239.77.0.6", 26, false);
}

/// A consumer that reads the image from `fifo` in 1 MiB reads, pausing
/// `pause` seconds each time another `every` MiB have passed (`once`:
/// only the first time), and writes the SHA-256 of what it read to `sha`.
const CONSUMER: &str = r#"
import hashlib, sys, time
fifo, sha, every, pause, once = sys.argv[1], sys.argv[2], int(sys.argv[3]) << 20, float(sys.argv[4]), sys.argv[5] == "once"
h, n, at = hashlib.sha256(), 0, int(sys.argv[3]) << 20
with open(fifo, "rb") as f:
    while True:
        b = f.read(1 << 20)
        if not b:
            break
        h.update(b)
        n += len(b)
        if n >= at:
            time.sleep(pause)
            at = float("inf") if once else at + every
open(sha, "w").write(h.hexdigest())
"#;

/// How a consumer reads: a pause of `pause` s every `every_mib` MiB, or
/// only once.
#[derive(Clone, Copy)]
struct Reader {
    every_mib: u32,
    pause: f32,
    once: bool,
}

/// The re-xmits udp-sender reports at the end (`re-xmits=0001234`: its
/// statistics line, rewritten with `\r`; the last one counts).
fn rexmits(stderr: &str) -> u64 {
    stderr
        .rsplit("re-xmits=")
        .next()
        .filter(|_| stderr.contains("re-xmits="))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no re-xmits in udp-sender's output: {stderr}"))
}

/// FOG's receiving side, exactly as its funcs.sh runs it:
/// `udp-receiver --nokbd --portbase P --ttl 32 --mcast-rdv-address SENDER
/// 2>/dev/null >/tmp/pigz1 &`, with `receiver` as udp-receiver, and a
/// consumer reading the FIFO as `how`. udp-sender runs with
/// `sender_args` (FOG's: `--full-duplex`). Returns udp-sender's re-xmits;
/// the consumer's SHA-256 is checked against the image.
fn fog_run(receiver: &Path, how: Reader, sender_args: &[&str], tag: &str) -> u64 {
    let net = VethPair::new(1, 1500);
    let Images { dir, src, .. } = Images::new(&format!("xdpc-flood-{tag}"), 96 * MIB + 5, 27);
    let link = dir.join("udp-receiver");
    std::os::unix::fs::symlink(receiver, &link).unwrap();
    let fifo = dir.join("pigz1");
    let sha = dir.join("got.sha256");
    let script = format!(
        "mkfifo {fifo}; {link} --nokbd --portbase {PORTBASE} --ttl 32 --mcast-rdv-address {sender} \
         2>/dev/null >{fifo} & python3 -c '{CONSUMER}' {fifo} {sha} {every} {pause} {once}; wait $!",
        fifo = fifo.display(),
        link = link.display(),
        sender = net.addr_a,
        sha = sha.display(),
        every = how.every_mib,
        pause = how.pause,
        once = if how.once { "once" } else { "every" },
    );
    let mut c = net.b.cmd("bash");
    c.env("XDPCAST_STATUS_DIR", &dir.0).args(["-c", &script]);
    let rx = KillOnDrop(Some(spawn(c)));
    let mut tx = net.a.cmd("udp-sender");
    tx.args(["--interface", &net.if_a, "--file", src.to_str().unwrap()])
        .args(["--portbase", PORTBASE, "--min-receivers", "1", "--nokbd"])
        .args(["--ttl", "32"])
        .args(sender_args);
    let tx = wait_output(spawn(tx), LIMIT, "udp-sender");
    assert_ok(&tx, "udp-sender");
    assert_ok(&wait_output(rx.take(), LIMIT, tag), tag);
    assert_eq!(
        std::fs::read_to_string(&sha).unwrap(),
        sha256_hex(&src),
        "{tag}: the consumer's SHA-256"
    );
    rexmits(&String::from_utf8_lossy(&tx.stderr))
}

/// Behind the same slow or stalled consumer, xdpcast costs the LAN no
/// more retransmissions than udpcast's own receiver (within 1.5 times,
/// plus one slice for the noise of a small count), in each sender mode.
fn no_flood_behind(how: Reader, sender_args: &[&str], tag: &str) {
    if !udpcast_installed() {
        return;
    }
    let theirs = fog_run(
        Path::new("/usr/bin/udp-receiver"),
        how,
        sender_args,
        &format!("{tag}-udpcast"),
    );
    let ours = fog_run(
        Path::new(env!("CARGO_BIN_EXE_xdpcast")),
        how,
        sender_args,
        &format!("{tag}-xdpcast"),
    );
    eprintln!("{tag}: re-xmits behind udp-receiver {theirs}, behind xdpcast {ours}");
    assert!(
        ours * 2 <= theirs * 3 + 2 * 1024,
        "{tag}: xdpcast caused {ours} re-xmits, udp-receiver {theirs}"
    );
}

const PAUSING: Reader = Reader {
    every_mib: 24,
    pause: 2.0,
    once: false,
};

const STALLED: Reader = Reader {
    every_mib: 16,
    pause: 15.0,
    once: true,
};

#[test]
fn no_retransmit_flood_behind_a_pausing_consumer() {
    no_flood_behind(PAUSING, &["--full-duplex"], "pausing");
}

#[test]
fn no_retransmit_flood_behind_a_stalled_consumer() {
    no_flood_behind(STALLED, &["--full-duplex"], "stalled");
}

#[test]
fn no_retransmit_flood_behind_a_pausing_consumer_in_other_sender_modes() {
    // Half duplex, multicast even for one receiver, and FEC.
    let half = ["--nopointopoint", "--fec", "8x8/128"];
    no_flood_behind(PAUSING, &half, "pausing-fec");
}

/// How the receiver is ended early in [`exit_status_case`].
#[derive(Clone, Copy, Debug)]
enum Ending {
    /// `udp-receiver ... | head -c 1000`: the consumer exits.
    ConsumerExits,
    /// `udp-receiver --pipe false`: the pipe command fails at once.
    PipeFails,
    /// A signal to the receiver mid-transfer.
    Signal(i32),
}

/// The receiver (`args`: the xdpcast command line after the binary) ended
/// as `how` says exits with `want`, as udp-receiver does, and tells the
/// sender it leaves: udp-sender, which waits for no one else, ends.
fn exit_status_case(args: &[&str], how: Ending, want: i32) {
    let net = VethPair::new(1, 1500);
    let Images { dir, src, .. } = Images::new("xdpc-udpc-exit", 32 * MIB, 28);
    let bin = env!("CARGO_BIN_EXE_xdpcast");
    let rx_line = format!(
        "{bin} {} --portbase {PORTBASE} --name udpc --keep-status",
        args.join(" ").replace("IFACE", &net.if_b)
    );
    let rc = dir.join("rc");
    let (mut c, direct) = match how {
        Ending::ConsumerExits => {
            let script = format!(
                "{rx_line} | head -c 1000 >/dev/null; echo ${{PIPESTATUS[0]}} > {}",
                rc.display()
            );
            let mut c = net.b.cmd("bash");
            c.args(["-c", &script]);
            (c, false)
        }
        Ending::PipeFails => {
            let mut c = net.b.cmd(bin);
            c.args(rx_line.split_whitespace().skip(1))
                .args(["--pipe", "false"]);
            (c, true)
        }
        Ending::Signal(_) => {
            let mut c = net.b.cmd(bin);
            c.args(rx_line.split_whitespace().skip(1));
            (c, true)
        }
    };
    c.env("XDPCAST_STATUS_DIR", &dir.0);
    let rx = KillOnDrop(Some(spawn(c)));
    let tx = udp_sender_as(&net.a, &net.if_a, &src, 1, &[]);
    if let Ending::Signal(sig) = how {
        wait_for(LIMIT, "data flowing", || {
            let s = xdpcast::StatusReader::open(&dir.join("xdpcast.udpc"))
                .ok()?
                .read()
                .ok()?;
            (s.bytes_done > 0).then_some(())
        });
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(
            unsafe { libc::kill(rx.0.as_ref().unwrap().id() as i32, sig) },
            0
        );
    }
    let out = wait_output(rx.take(), LIMIT, "receiver");
    let code = if direct {
        out.status.code()
    } else {
        std::fs::read_to_string(&rc)
            .ok()
            .and_then(|s| s.trim().parse().ok())
    };
    assert_eq!(
        code,
        Some(want),
        "{how:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Told, the sender has no receiver left and ends.
    let _ = wait_output(tx, LIMIT, "udp-sender");
    let s = read_page(&dir.0, "udpc");
    assert_eq!(s.state, State::Failure, "{how:?}");
}

#[test]
fn exit_status_on_a_closed_output_or_a_signal_is_udpcasts() {
    if !udpcast_installed() {
        return;
    }
    let udp_receiver = ["udp-receiver", "--interface", "IFACE", "--nokbd"];
    let receive = [
        "receive",
        "--protocol",
        "udpcast",
        "--iface",
        "IFACE",
        "--out",
        "-",
    ];
    for args in [&udp_receiver[..], &receive[..]] {
        exit_status_case(args, Ending::ConsumerExits, 141);
        exit_status_case(args, Ending::Signal(libc::SIGINT), 130);
        exit_status_case(args, Ending::Signal(libc::SIGTERM), 143);
    }
    exit_status_case(&udp_receiver, Ending::PipeFails, 141);
}
