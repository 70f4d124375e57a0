//! `xdpcast receive --out -` with the xdpcast protocol on the XDP path:
//! the image leaves on stdout in order through a small reorder window;
//! blocks that do not fit are refused and repaired later, so loss, a slow
//! consumer, zero runs and a signed session all end with the source's
//! SHA-256 on the pipe; a consumer that closes early ends in
//! `output_closed`. Images are a few MiB with a 1 MiB window, so that
//! refusals and repair rounds happen.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::Child;
use std::thread::JoinHandle;
use std::time::Duration;

use common::*;
use sha2::{Digest, Sha256};
use xdpcast::status::page::{State, TRUST_MANIFEST};
use xdpcast::ErrorCode;

const MIB: u64 = 1 << 20;
const GROUP: &str = "239.6.9.9:5000";

/// How the test's consumer reads the stream.
#[derive(Clone, Copy)]
enum Consumer {
    /// As fast as it can.
    Fast,
    /// 64 KiB at a time with a pause between reads, and a stall of 4 s
    /// (longer than the sender waits for a silent fleet) after 1 MiB.
    Slow,
    /// Closes the pipe after the first bytes.
    Closes,
}

/// Read the receiver's stdout as `how` says: (bytes read, their SHA-256).
fn consume(rx: &mut Child, how: Consumer) -> JoinHandle<(u64, String)> {
    let mut out = rx.stdout.take().unwrap();
    std::thread::spawn(move || {
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 64 << 10];
        let mut n = 0u64;
        loop {
            let got = out.read(&mut buf).unwrap();
            if got == 0 {
                break;
            }
            h.update(&buf[..got]);
            n += got as u64;
            match how {
                Consumer::Fast => {}
                Consumer::Slow if n >= MIB && n - (got as u64) < MIB => {
                    std::thread::sleep(Duration::from_secs(4))
                }
                Consumer::Slow => std::thread::sleep(Duration::from_millis(3)),
                Consumer::Closes if n >= 1000 => break,
                Consumer::Closes => {}
            }
        }
        (n, xdpcast::proto::wire::hex(&h.finalize()))
    })
}

/// Stream `src` from a sender (with `send_args`) to `receive --out -`
/// (with `rx_args`) read by `how`: the receiver's exit status, what the
/// consumer read and its SHA-256, and the receiver's final page.
fn stream(
    src: &Path,
    dir: &Path,
    how: Consumer,
    send_args: &[&str],
    rx_args: &[&str],
) -> (std::process::ExitStatus, u64, String, xdpcast::Snapshot) {
    let net = VethPair::new(1, 1500);
    let mut args = vec![
        "--iface",
        &net.if_b,
        "--out",
        "-",
        "--mode",
        "xdp",
        "--stream-window-mib",
        "1",
    ];
    args.extend_from_slice(rx_args);
    let mut rx = start_receiver(xdpcast(&net.b), dir, "stream", GROUP, &args);
    let reader = consume(&mut rx, how);
    let mut all = vec!["--rate", "1G", "--block-size", "1400"];
    all.extend_from_slice(send_args);
    let tx = start_sender(&net.a, &net.if_a, GROUP, src, &all);
    let rx_out = wait_output(rx, Duration::from_secs(120), "receiver");
    let (n, sha) = reader.join().unwrap();
    if matches!(how, Consumer::Closes) {
        // The sender may still wait for a receiver that will not finish.
        let mut tx = tx;
        let _ = tx.kill();
        let _ = tx.wait();
    } else {
        let tx_out = wait_output(tx, Duration::from_secs(120), "sender");
        ok(&tx_out, "sender");
    }
    eprintln!("{}", String::from_utf8_lossy(&rx_out.stderr));
    (rx_out.status, n, sha, read_page(dir, "stream"))
}

/// The run succeeded and the stream is the source, byte for byte.
fn assert_streamed(src: &Path, got: &(std::process::ExitStatus, u64, String, xdpcast::Snapshot)) {
    let (status, n, sha, s) = got;
    assert!(status.success(), "receiver: {status} {s:?}");
    assert_eq!((s.state, s.error), (State::Success, ErrorCode::None));
    assert_eq!(*n, std::fs::metadata(src).unwrap().len());
    assert_eq!(*sha, sha256_hex(src));
    assert_eq!(s.stream.window, MIB);
    assert_eq!(s.stream.written, s.total_bytes);
    assert_eq!(s.stream.held, 0);
    assert_eq!(s.bytes_done, s.total_bytes);
}

#[test]
fn lossy_stream_refuses_what_its_window_cannot_hold_and_repairs_it() {
    if !netns_allowed() {
        return;
    }
    let Images { dir, src, .. } = Images::new("xdpc-stream-loss", 6 * MIB as usize, 21);
    let got = stream(&src, &dir.0, Consumer::Fast, &["--loss", "0.05"], &[]);
    assert_streamed(&src, &got);
    let s = &got.3;
    // A block lost early holds the window until repair: the pass's blocks
    // beyond it were refused and came again in repair rounds.
    assert!(s.stream.refused > 0, "{:?}", s.stream);
    assert!(s.nacks_sent > 0 && s.first_pass_missing > 0);
}

/// The consumer stalls with the window full: the receiver keeps asking
/// for the first block it lacks, so the sender's repair rounds go on until
/// the consumer reads again.
#[test]
fn slow_consumer_costs_retransmissions_not_data() {
    if !netns_allowed() {
        return;
    }
    let Images { dir, src, .. } = Images::new("xdpc-stream-slow", 4 * MIB as usize, 22);
    let got = stream(&src, &dir.0, Consumer::Slow, &[], &[]);
    assert_streamed(&src, &got);
    assert!(got.3.stream.refused > 0, "{:?}", got.3.stream);
}

#[test]
fn sparse_image_streams_its_zeros() {
    if !netns_allowed() {
        return;
    }
    let dir = TempDir::new("xdpc-stream-sparse");
    let src = dir.join("src.img");
    xdpcast_bench::fixture::write_sparse_image(&src, 6 * MIB, 23).unwrap();
    let got = stream(&src, &dir.0, Consumer::Fast, &["--loss", "0.05"], &[]);
    assert_streamed(&src, &got);
    assert!(got.3.sparse.skipped_bytes > 0, "zero runs were announced");
}

#[test]
fn consumer_closing_the_pipe_fails_with_output_closed() {
    if !netns_allowed() {
        return;
    }
    let Images { dir, src, .. } = Images::new("xdpc-stream-close", 4 * MIB as usize, 24);
    let (status, n, _, s) = stream(&src, &dir.0, Consumer::Closes, &[], &[]);
    assert!(n < 4 * MIB);
    // As a process killed by SIGPIPE (128 + 13).
    assert_eq!(status.code(), Some(141));
    assert_eq!(
        (s.state, s.error),
        (State::Failure, ErrorCode::OutputClosed)
    );
}

#[test]
fn signed_stream_leaves_only_verified_chunks() {
    if !netns_allowed() {
        return;
    }
    let dir = TempDir::new("xdpc-stream-signed");
    let src = dir.join("src.img");
    xdpcast_bench::fixture::write_sparse_image(&src, 6 * MIB, 25).unwrap();
    let key = dir.join("site.key");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_xdpcast"))
        .args(["keygen", "--out", key.to_str().unwrap()])
        .output()
        .unwrap();
    ok(&out, "keygen");
    let public = format!("{}.pub", key.display());
    let got = stream(
        &src,
        &dir.0,
        Consumer::Fast,
        &["--loss", "0.05", "--sign", key.to_str().unwrap()],
        &["--trust", &public],
    );
    assert_streamed(&src, &got);
    let s = &got.3;
    assert!(s.trust.flags & TRUST_MANIFEST != 0);
    assert_eq!(s.trust.chunks_verified, s.trust.chunk_count);
}

#[test]
fn a_stream_that_is_not_the_pinned_image_fails_after_it_has_left() {
    if !netns_allowed() {
        return;
    }
    // Another image of the same size under the same session: its announces
    // are dropped (not the pinned SHA-256), its blocks are taken (an
    // unsigned session cannot tell), and the stream's SHA-256 gives it away.
    let Images { dir, src, .. } = Images::new("xdpc-stream-pin", 2 * MIB as usize, 26);
    let other = dir.join("other.img");
    make_image(&other, 2 * MIB as usize, 30);
    let pin = sha256_hex(&src);
    let (status, n, sha, s) = stream(
        &other,
        &dir.0,
        Consumer::Fast,
        &["--passes", "3"],
        &["--expect-sha256", &pin],
    );
    assert_eq!(status.code(), Some(100 + ErrorCode::DigestMismatch as i32));
    assert_eq!(
        (s.state, s.error),
        (State::Failure, ErrorCode::DigestMismatch)
    );
    // The bytes have left: the consumer got the other image.
    assert_eq!((n, sha), (2 * MIB, sha256_hex(&other)));
    assert_eq!(s.stream.written, s.total_bytes);
}

#[test]
fn a_receiver_whose_consumer_never_reads_can_still_be_stopped() {
    if !netns_allowed() {
        return;
    }
    // The whole image fits the window, so it is all received; the consumer
    // reads nothing, so the receiver waits to write the rest into the pipe
    // until SIGTERM cancels it.
    let net = VethPair::new(1, 1500);
    let Images { dir, src, .. } = Images::new("xdpc-stream-stuck", 2 * MIB as usize, 32);
    let args = ["--iface", &net.if_b, "--out", "-", "--mode", "xdp"];
    let rx = start_receiver(xdpcast(&net.b), &dir.0, "stream", GROUP, &args);
    let tx = start_sender(&net.a, &net.if_a, GROUP, &src, &["--rate", "1G"]);
    wait_for(Duration::from_secs(60), "every block received", || {
        let s = read_page(&dir.0, "stream");
        (s.block_count > 0 && s.blocks_done == s.block_count).then_some(())
    });
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(rx.id() as i32, libc::SIGTERM) }, 0);
    let out = wait_output(rx, Duration::from_secs(60), "receiver");
    let mut tx = tx;
    let _ = tx.kill();
    let _ = tx.wait();
    assert_eq!(
        out.status.code(),
        // 128 + SIGTERM, as a shell reports a process SIGTERM ended.
        Some(143),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = read_page(&dir.0, "stream");
    assert_eq!((s.state, s.error), (State::Failure, ErrorCode::Cancelled));
    assert!(s.stream.written < s.total_bytes);
}
