//! Image sources that are not regular files: a block device sent as it is
//! (`send /dev/loopN`, its size from the device) and standard input (`send
//! -`: a pipe kept in an unlinked file, first or, with `--size`, while it
//! is sent; a file on standard input sent as it is), signed and unsigned; each case ends
//! with the source's SHA-256 on the receiver's target, and on its status
//! page and in the sender's report its SHA-256 (unsigned) or the root of
//! its chunk hashes (signed), made while it was sent.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use xdpcast::proto::wire::hex;
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

/// A socket receiver's arguments on the loopback, writing `dst`, then
/// `extra`.
fn rx_args<'a>(dst: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let out = [
        "--iface",
        "lo",
        "--mode",
        "socket",
        "--out",
        dst.to_str().unwrap(),
    ];
    [&out[..], extra].concat()
}

/// A namespace with multicast on its loopback, an image of `len` bytes
/// from `seed` and a signing key, all under `name`.
fn signing(name: &str, len: usize, seed: u64) -> (Netns, Images, std::path::PathBuf) {
    let images = Images::new(name, len, seed);
    let key = keygen(&images.dir, "site");
    (loopback(name), images, key)
}

/// Send `src` on `ns`'s loopback with `send_args` to a receiver writing
/// `dst` with `recv_args`; both must succeed, the target must hold `src`'s
/// bytes and the sender and the receiver's page must name them (SHA-256, or
/// signed, the root of their chunk hashes).
fn send_and_check(
    ns: &Netns,
    dir: &Path,
    name: &str,
    src: &Path,
    dst: &Path,
    send_args: &[&str],
    recv_args: &[&str],
) {
    let args = rx_args(dst, recv_args);
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
    assert_eq!(sha256_hex(dst), sha256_hex(src), "target differs");
    let (kind, want) = digest_named(src, send_args, 1400);
    assert!(sent.contains(&format!("{kind} {want}")), "{sent}");
    let s = read_page(dir, name);
    assert_eq!((s.state, s.error), (State::Success, ErrorCode::None));
    assert_eq!(
        s.image_digest().map(|(k, d)| (k, hex(d))),
        Some((kind, want))
    );
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

/// How `xdpcast send -` gets its standard input.
#[derive(Clone, Copy, Debug)]
enum Stdin {
    /// The image file itself (sent as a file, nothing kept).
    File,
    /// A pipe, written by a thread of the test.
    Pipe,
}

/// `xdpcast send -` in `ns` fed `src` as `how` says; the thread writing the pipe,
/// if any, ends when it has written it all or the sender closed it.
fn send_stdin(ns: &Netns, src: &Path, how: Stdin, extra: &[&str]) -> std::process::Child {
    let mut c = xdpcast(ns);
    // A status page of each test's own (the tests run at once).
    let page = format!("{}-tx", ns.name);
    c.args(["send", "-", "--group", GROUP, "--iface", "lo"])
        .args(["--block-size", "1400", "--rate", "1G", "--name", &page])
        .args(extra)
        .env(
            "XDPCAST_STATUS_DIR",
            std::env::temp_dir().join("xdpcast-test-senders"),
        );
    match how {
        Stdin::File => {
            c.stdin(std::fs::File::open(src).unwrap());
        }
        Stdin::Pipe => {
            use std::os::fd::FromRawFd;
            let mut fds = [0; 2];
            // SAFETY: pipe2(2) writes two new descriptors into `fds`;
            // close-on-exec, so that the sender gets only the read end (as
            // its standard input) and sees the end of the input.
            assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
            // SAFETY: both are open and owned by nothing else.
            let (r, mut w) = unsafe {
                (
                    std::fs::File::from_raw_fd(fds[0]),
                    std::fs::File::from_raw_fd(fds[1]),
                )
            };
            let bytes = std::fs::read(src).unwrap();
            std::thread::spawn(move || std::io::Write::write_all(&mut w, &bytes));
            c.stdin(r);
        }
    }
    spawn(c)
}

#[test]
fn standard_input_is_sent_signed_and_unsigned() {
    if !netns_allowed() {
        return;
    }
    let (ns, Images { dir, src, dst }, key) = signing("xdpc-src-in", 5 * MIB as usize + 99, 33);
    let signed = ["--sign", key.to_str().unwrap()];
    let trust = ["--trust".to_string(), pub_of(&key)];
    let trust: Vec<&str> = trust.iter().map(String::as_str).collect();
    let size = format!("{}", 5 * MIB + 99);
    let sized = ["--size", &size];
    let signed_sized = [&signed[..], &sized[..]].concat();
    for (name, how, send, recv) in [
        // A pipe without its size: kept to its end first.
        ("in", Stdin::Pipe, &[][..], &[][..]),
        // A pipe with its size: sent while it is read.
        ("ins", Stdin::Pipe, &signed_sized[..], &trust[..]),
        ("inz", Stdin::Pipe, &sized[..], &[][..]),
        // A file on standard input: sent as a file.
        ("inf", Stdin::File, &signed[..], &trust[..]),
    ] {
        let _ = std::fs::remove_file(&dst);
        let args = rx_args(&dst, recv);
        let rx = start_receiver(xdpcast(&ns), &dir.0, name, GROUP, &args);
        let tx = send_stdin(&ns, &src, how, send);
        let sent = ok(
            &wait_output(tx, Duration::from_secs(120), "sender"),
            "sender",
        );
        ok(
            &wait_output(rx, Duration::from_secs(120), "receiver"),
            "receiver",
        );
        assert_eq!(sha256_hex(&dst), sha256_hex(&src), "{name}: target differs");
        let (kind, want) = digest_named(&src, send, 1400);
        assert!(sent.contains(&format!("{kind} {want}")), "{sent}");
        let s = read_page(&dir.0, name);
        assert_eq!((s.state, s.total_bytes), (State::Success, 5 * MIB + 99));
    }
}

#[test]
fn standard_input_of_another_size_than_given_fails_before_any_end() {
    if !netns_allowed() {
        return;
    }
    let ns = loopback("xdpc-src-sz");
    let len = 3 * MIB + 7;
    let Images { dir: _dir, src, .. } = Images::new("xdpc-src-sz", len as usize, 34);
    for (size, says) in [
        (
            len + 1,
            format!("ended after {len} bytes, short of --size {}", len + 1),
        ),
        (len - 1, format!("longer than --size {}", len - 1)),
    ] {
        let size = size.to_string();
        let tx = send_stdin(&ns, &src, Stdin::Pipe, &["--size", &size, "--no-repair"]);
        let out = wait_output(tx, Duration::from_secs(120), "sender");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(err.contains(&says), "{err}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("sha256"));
    }
}

/// A signed sender names the image by its SHA-256 only with `--sha256`
/// (hashed while it sends) or when the manifest file kept beside the image
/// names it: a receiver pinning it with `--expect-sha256` then succeeds.
/// Otherwise the signed ends carry the root of the chunk hashes, which a
/// pinned SHA-256 cannot be checked against: that receiver fails
/// (`digest_mismatch`), and one without `--trust` ends `incomplete`
/// naming the way out.
#[test]
fn a_signed_sender_sends_the_sha256_only_when_asked_or_kept() {
    if !netns_allowed() {
        return;
    }
    let (ns, Images { dir, src, dst }, key) = signing("xdpc-src-sha", 3 * MIB as usize + 5, 35);
    let pin = sha256_hex(&src);
    let trust = pub_of(&key);
    let pinned = ["--trust", &trust, "--expect-sha256", &pin];
    // Hashed, and written into the manifest file beside the image.
    send_and_check(
        &ns,
        &dir.0,
        "sha",
        &src,
        &dst,
        &["--sign", key.to_str().unwrap(), "--sha256"],
        &pinned,
    );
    let run = |name: &str, recv: &[&str], send: &[&str]| {
        let _ = std::fs::remove_file(&dst);
        let args = rx_args(&dst, recv);
        let rx = start_receiver(xdpcast(&ns), &dir.0, name, GROUP, &args);
        let sign = [
            "--block-size",
            "1400",
            "--rate",
            "1G",
            "--sign",
            key.to_str().unwrap(),
        ];
        let tx = start_sender(&ns, "lo", GROUP, &src, &[&sign[..], send].concat());
        let rx = wait_output(rx, Duration::from_secs(120), "receiver");
        let tx = wait_output(tx, Duration::from_secs(120), "sender");
        (rx.status.code(), ok(&tx, "sender"), read_page(&dir.0, name))
    };
    // Not hashed: the kept file names the SHA-256 of the unchanged image.
    let (code, sent, s) = run("kept", &pinned, &[]);
    assert_eq!(code, Some(0), "{}", s.message);
    assert!(sent.contains(&format!("sha256 {pin}")), "{sent}");
    assert_eq!(
        s.image_digest().map(|(k, d)| (k, hex(d))),
        Some(("sha256", pin.clone()))
    );
    assert_eq!(sha256_hex(&dst), pin);
    // Neither: the root, and the pinned receiver fails.
    let (code, sent, s) = run("root", &pinned, &["--no-manifest-file"]);
    assert_eq!(code, Some(100 + ErrorCode::DigestMismatch as i32));
    assert!(sent.contains("; root "), "{sent}");
    assert_eq!(
        (s.state, s.error),
        (State::Failure, ErrorCode::DigestMismatch),
        "{}",
        s.message
    );
    // A receiver without --trust has nothing to check the blocks against:
    // it fails at the sender's last end and says what to do.
    let (code, _, s) = run("plain", &[], &["--no-manifest-file"]);
    assert_eq!(
        code,
        Some(100 + ErrorCode::Incomplete as i32),
        "{}",
        s.message
    );
    assert_eq!((s.state, s.error), (State::Failure, ErrorCode::Incomplete));
    assert!(
        s.message.contains("no SHA-256") && s.message.contains("--trust"),
        "{}",
        s.message
    );
}
