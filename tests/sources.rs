//! Image sources that are not regular files: a block device sent as it is
//! (`send /dev/loopN`, its size from the device) and standard input (`send
//! -`, kept in an unlinked file first), signed and unsigned; each case ends
//! with the source's SHA-256 on the receiver's target, on its status page
//! and in the sender's report (hashed while it sent).

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use xdpcast::status::page::State;
use xdpcast::ErrorCode;

const MIB: u64 = 1 << 20;
const GROUP: &str = "239.9.9.9:5000";

/// A namespace whose loopback carries multicast.
fn loopback(name: &str) -> Netns {
    let ns = Netns::new(name);
    ns.ip(&["route", "add", "224.0.0.0/4", "dev", "lo"]);
    ns
}

/// Send `src` on `ns`'s loopback with `send_args` to a receiver writing
/// `dst` with `recv_args`; both must succeed, the target must hold `src`'s
/// bytes and the sender must report their SHA-256.
fn send_and_check(
    ns: &Netns,
    dir: &Path,
    name: &str,
    src: &Path,
    dst: &Path,
    send_args: &[&str],
    recv_args: &[&str],
) {
    let args = [
        &[
            "--iface",
            "lo",
            "--mode",
            "socket",
            "--out",
            dst.to_str().unwrap(),
        ][..],
        recv_args,
    ]
    .concat();
    let rx = start_receiver(xdpcast(ns), dir, name, GROUP, &args);
    let tx = start_sender(
        ns,
        "lo",
        GROUP,
        src,
        &[&["--block-size", "1400", "--rate", "1G"][..], send_args].concat(),
    );
    let sent = ok(
        &wait_output(tx, Duration::from_secs(120), "sender"),
        "sender",
    );
    ok(
        &wait_output(rx, Duration::from_secs(120), "receiver"),
        "receiver",
    );
    let want = sha256_hex(src);
    assert_eq!(sha256_hex(dst), want, "target differs from the source");
    assert!(sent.contains(&format!("sha256 {want}")), "{sent}");
    let s = read_page(dir, name);
    assert_eq!((s.state, s.error), (State::Success, ErrorCode::None));
    assert_eq!(xdpcast::proto::wire::hex(&s.digest), want);
}

/// A loop device over a file holding a pseudo-random image of `len` bytes.
fn image_device(dir: &TempDir, len: u64, seed: u64) -> LoopDev {
    let backing = dir.join("dev.backing");
    let dev = LoopDev::filled(&backing, len, None);
    make_image(Path::new(&dev.0), len as usize, seed);
    dev
}

#[test]
fn a_block_device_is_sent_unsigned() {
    if !netns_allowed() {
        return;
    }
    let ns = loopback("xdpc-src-blk");
    let dir = TempDir::new("xdpc-src-blk");
    // Not a multiple of the block size: the last block is short.
    let dev = image_device(&dir, 6 * MIB + 512, 31);
    let dst = dir.join("dst.img");
    send_and_check(
        &ns,
        &dir.0,
        "blk",
        Path::new(&dev.0),
        &dst,
        &["--passes", "2"],
        &[],
    );
}

#[test]
fn a_block_device_is_sent_signed() {
    if !netns_allowed() {
        return;
    }
    let ns = loopback("xdpc-src-blks");
    let dir = TempDir::new("xdpc-src-blks");
    let dev = image_device(&dir, 9 * MIB, 32);
    let dst = dir.join("dst.img");
    let key = keygen(&dir, "site");
    send_and_check(
        &ns,
        &dir.0,
        "blks",
        Path::new(&dev.0),
        &dst,
        &["--sign", key.to_str().unwrap(), "--loss", "0.05"],
        &["--trust", &pub_of(&key)],
    );
}

/// `xdpcast send -` fed from a pipe (here, a file on standard input).
fn send_stdin(ns: &Netns, src: &Path, extra: &[&str]) -> std::process::Child {
    let mut c = xdpcast(ns);
    c.args(["send", "-", "--group", GROUP, "--iface", "lo"])
        .args(["--block-size", "1400", "--rate", "1G", "--name", "stdin-tx"])
        .args(extra)
        .env(
            "XDPCAST_STATUS_DIR",
            std::env::temp_dir().join("xdpcast-test-senders"),
        )
        .stdin(std::fs::File::open(src).unwrap());
    spawn(c)
}

#[test]
fn standard_input_is_sent_signed_and_unsigned() {
    if !netns_allowed() {
        return;
    }
    let ns = loopback("xdpc-src-in");
    let Images { dir, src, dst } = Images::new("xdpc-src-in", 5 * MIB as usize + 99, 33);
    let key = keygen(&dir, "site");
    let signed = ["--sign", key.to_str().unwrap()];
    let trust = ["--trust".to_string(), pub_of(&key)];
    let trust: Vec<&str> = trust.iter().map(String::as_str).collect();
    for (name, send, recv) in [("in", &[][..], &[][..]), ("ins", &signed[..], &trust[..])] {
        let _ = std::fs::remove_file(&dst);
        let args = [
            &[
                "--iface",
                "lo",
                "--mode",
                "socket",
                "--out",
                dst.to_str().unwrap(),
            ][..],
            recv,
        ]
        .concat();
        let rx = start_receiver(xdpcast(&ns), &dir.0, name, GROUP, &args);
        let tx = send_stdin(&ns, &src, send);
        let sent = ok(
            &wait_output(tx, Duration::from_secs(120), "sender"),
            "sender",
        );
        ok(
            &wait_output(rx, Duration::from_secs(120), "receiver"),
            "receiver",
        );
        let want = sha256_hex(&src);
        assert_eq!(sha256_hex(&dst), want, "{name}: target differs");
        assert!(sent.contains(&format!("sha256 {want}")), "{sent}");
        let s = read_page(&dir.0, name);
        assert_eq!((s.state, s.total_bytes), (State::Success, 5 * MIB + 99));
    }
}
