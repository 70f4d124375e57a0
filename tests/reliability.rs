//! Loss repair (NACK rounds, RaptorQ FEC), resume after SIGKILL, and faults:
//! every case ends in a verified image or a clean FAILURE with its code.
//! Loss is injected by the sender (`--loss`) or by the receiver's XDP
//! program (`--inject-loss`), since this kernel has no netem.

mod common;

use std::path::Path;
use std::process::Child;
use std::time::Duration;

use common::*;
use xdpcast::proto::wire::DropReason;
use xdpcast::status::page::{PathMode, State};
use xdpcast::ErrorCode;

const MIB: usize = 1 << 20;
const GROUP: &str = "239.6.6.6:5000";

fn sender(ns: &Netns, iface: &str, src: &Path, extra: &[&str]) -> Child {
    start_sender(ns, iface, GROUP, src, extra)
}

fn receiver(
    ns: &Netns,
    iface: &str,
    status: &Path,
    name: &str,
    out: &Path,
    extra: &[&str],
) -> Child {
    receiver_of(GROUP, ns, iface, status, name, out, extra)
}

/// A receiver of `group` on `iface` in `ns`, writing to `out`.
fn receiver_of(
    group: &str,
    ns: &Netns,
    iface: &str,
    status: &Path,
    name: &str,
    out: &Path,
    extra: &[&str],
) -> Child {
    let mut args = vec!["--iface", iface, "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    start_receiver(xdpcast(ns), status, name, group, &args)
}

/// Send an image of `mib` MiB to `group` with `loss` of the sender's
/// packets dropped, to a receiver on the XDP path; NACK rounds must repair
/// all of it.
fn repaired_by_nacks(group: &str, mib: usize, loss: f64) {
    if !netns_allowed() {
        return;
    }
    let net = VethPair::new(1, 1500);
    let Images { dir, src, dst } = Images::new("xdpc-loss", mib * MIB, (loss * 100.0) as u64);
    let rx = receiver_of(
        group,
        &net.b,
        &net.if_b,
        &dir.0,
        "loss",
        &dst,
        &["--mode", "xdp"],
    );
    let tx = start_sender(
        &net.a,
        &net.if_a,
        group,
        &src,
        &["--rate", "1G", "--loss", &loss.to_string()],
    );
    let tx_out = wait_output(tx, Duration::from_secs(180), "sender");
    ok(&tx_out, "sender");
    let out = wait_output(rx, Duration::from_secs(60), "receiver");
    ok(&out, "receiver");
    assert_eq!(sha256_hex(&src), sha256_hex(&dst));
    let s = read_page(&dir.0, "loss");
    assert_eq!((s.state, s.error), (State::Success, ErrorCode::None));
    assert_eq!(s.mode, PathMode::XdpNative);
    // Ring overruns on a busy 2-core machine may add to the injected loss.
    let lost = s.first_pass_missing as f64 / s.block_count as f64;
    assert!(
        lost > loss * 0.7,
        "first pass lost {lost:.3}, injected {loss}"
    );
    assert!(s.nacks_sent > 0, "the losses were repaired through NACKs");
    assert!(s.passes_seen > 1, "repair rounds followed the pass");
    assert!(
        !dir.join("dst.img.xdpcast-resume").exists(),
        "resume file removed on success"
    );
}

#[test]
fn loss_5_percent_is_repaired() {
    repaired_by_nacks(GROUP, 64, 0.05);
}

#[test]
fn loss_20_percent_is_repaired() {
    repaired_by_nacks(GROUP, 64, 0.20);
}

#[test]
fn loss_30_percent_is_repaired() {
    repaired_by_nacks(GROUP, 64, 0.30);
}

/// IPv6 with link-local addresses only (as on a lab segment without a
/// router): the NACKs go to the sender's fe80:: address, scoped to the
/// receiver's interface.
#[test]
fn loss_is_repaired_over_ipv6_link_local() {
    repaired_by_nacks("[ff15::6:6]:5000", 16, 0.05);
}

#[test]
fn fec_rebuilds_blocks_without_a_back_channel() {
    if !netns_allowed() {
        return;
    }
    let net = VethPair::new(1, 1500);
    let Images { dir, src, dst } = Images::new("xdpc-fec", 64 * MIB, 21);
    let rx = receiver(
        &net.b,
        &net.if_b,
        &dir.0,
        "fec",
        &dst,
        &["--mode", "socket"],
    );
    // 16 repair symbols per 64 blocks against 5% loss, one pass, no NACKs.
    let tx = sender(
        &net.a,
        &net.if_a,
        &src,
        &[
            "--rate",
            "1G",
            "--loss",
            "0.05",
            "--fec",
            "16",
            "--no-repair",
        ],
    );
    both_ok(tx, rx, Duration::from_secs(120));
    assert_eq!(sha256_hex(&src), sha256_hex(&dst));
    let s = read_page(&dir.0, "fec");
    assert_eq!(s.state, State::Success);
    assert!(s.fec_recovered > 0, "FEC rebuilt the lost blocks");
    assert_eq!(s.nacks_sent, 0, "no back-channel was used");
    assert_eq!(s.passes_seen, 1);
}

#[test]
fn lossy_receiver_does_not_slow_the_clean_one() {
    if !netns_allowed() {
        return;
    }
    let lan = Lan::new(3);
    let (tx_host, lossy, clean) = (&lan.hosts[0], &lan.hosts[1], &lan.hosts[2]);
    let dir = TempDir::new("xdpc-two");
    let src = dir.join("src.img");
    let (out_lossy, out_clean) = (dir.join("lossy.img"), dir.join("clean.img"));
    make_image(&src, 64 * MIB, 31);
    // 20% of the lossy receiver's frames are dropped by its own XDP program.
    let rx_lossy = receiver(
        &lossy.ns,
        &lossy.iface,
        &dir.0,
        "lossy",
        &out_lossy,
        &["--mode", "xdp", "--inject-loss", "200000"],
    );
    let rx_clean = receiver(
        &clean.ns,
        &clean.iface,
        &dir.0,
        "clean",
        &out_clean,
        &["--mode", "xdp"],
    );
    let tx = sender(&tx_host.ns, &tx_host.iface, &src, &["--rate", "500M"]);
    let tx_out = wait_output(tx, Duration::from_secs(180), "sender");
    ok(&tx_out, "sender");
    eprintln!("sender: {}", String::from_utf8_lossy(&tx_out.stdout));
    ok(
        &wait_output(rx_clean, Duration::from_secs(60), "clean receiver"),
        "clean",
    );
    ok(
        &wait_output(rx_lossy, Duration::from_secs(60), "lossy receiver"),
        "lossy",
    );
    let want = sha256_hex(&src);
    assert_eq!(sha256_hex(&out_clean), want);
    assert_eq!(sha256_hex(&out_lossy), want);
    let (c, l) = (read_page(&dir.0, "clean"), read_page(&dir.0, "lossy"));
    assert_eq!((c.state, l.state), (State::Success, State::Success));
    assert!(l.nacks_sent > 0 && l.first_pass_missing > 0);
    assert!(
        c.first_pass_missing * 4 < l.first_pass_missing,
        "clean {} vs lossy {} blocks missing after the first pass; clean workers {:?}",
        c.first_pass_missing,
        l.first_pass_missing,
        c.workers
    );
    // Repair rounds for the lossy receiver's 20% do not hold the clean one
    // back: it is done by the end of the first repair round at the latest.
    assert!(
        c.passes_seen <= 2,
        "clean receiver saw {} ends",
        c.passes_seen
    );
    assert!(c.end_ns < l.end_ns);
}

#[test]
fn killed_receiver_resumes_where_it_stopped() {
    if !netns_allowed() {
        return;
    }
    let net = VethPair::new(1, 1500);
    let Images { dir, src, dst } = Images::new("xdpc-resume", 64 * MIB, 41);
    let resume = dir.join("dst.img.xdpcast-resume");
    let mut rx = receiver(
        &net.b,
        &net.if_b,
        &dir.0,
        "resume",
        &dst,
        &["--mode", "xdp"],
    );
    // Slow enough to kill it half-way (about 2.7 s per pass), two passes.
    let tx = sender(
        &net.a,
        &net.if_a,
        &src,
        &["--rate", "200M", "--passes", "2"],
    );
    // Kill it once a saved resume file holds more than 10 000 blocks. Not
    // by the file's time: a save takes its bitmap, then flushes the staged
    // chunks and syncs before the rename, which under load can end well
    // after the page showed 10 000 blocks, with the bitmap of before.
    wait_for(
        Duration::from_secs(60),
        "a resume file with 10 000 blocks",
        || {
            let saved = std::fs::read(&resume).ok()?;
            // Layout (store/resume.rs): a 32-byte header, then the bitmap.
            let blocks: u32 = saved.get(32..)?.iter().map(|b| b.count_ones()).sum();
            (blocks > 10_000).then_some(())
        },
    );
    rx.kill().unwrap();
    rx.wait().unwrap();
    let rx = receiver(
        &net.b,
        &net.if_b,
        &dir.0,
        "resume",
        &dst,
        &["--mode", "xdp"],
    );
    ok(
        &wait_output(tx, Duration::from_secs(120), "sender"),
        "sender",
    );
    let out = wait_output(rx, Duration::from_secs(60), "restarted receiver");
    ok(&out, "restarted receiver");
    assert_eq!(sha256_hex(&src), sha256_hex(&dst));
    let s = read_page(&dir.0, "resume");
    assert_eq!(s.state, State::Success);
    assert!(
        s.resumed_blocks > 10_000,
        "picked up {} blocks from disk",
        s.resumed_blocks
    );
    // Resumed blocks count in the bytes too, and the sender's copies of
    // them are duplicates, not drops.
    assert_eq!(
        (s.blocks_done, s.bytes_done),
        (s.block_count, s.total_bytes)
    );
    assert!(s.drops_for(DropReason::Duplicate) > 0);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(" 0 dropped"), "{text}");
    assert!(!resume.exists());
}

#[test]
fn sender_gone_fails_with_its_code() {
    if !netns_allowed() {
        return;
    }
    let net = VethPair::new(1, 1500);
    let Images { dir, src, dst } = Images::new("xdpc-gone", 32 * MIB, 51);
    let rx = receiver(
        &net.b,
        &net.if_b,
        &dir.0,
        "gone",
        &dst,
        &["--mode", "xdp", "--idle-timeout", "2"],
    );
    let mut tx = sender(&net.a, &net.if_a, &src, &["--rate", "100M"]);
    wait_for(Duration::from_secs(20), "first blocks", || {
        (read_page(&dir.0, "gone").blocks_done > 1000).then_some(())
    });
    tx.kill().unwrap();
    tx.wait().unwrap();
    let out = wait_output(rx, Duration::from_secs(30), "receiver");
    assert_eq!(out.status.code(), Some(100 + ErrorCode::SenderGone as i32));
    let s = read_page(&dir.0, "gone");
    assert_eq!((s.state, s.error), (State::Failure, ErrorCode::SenderGone));
    assert!(!net.xdp_attached_b(), "XDP detached after the failure");
    assert!(
        dir.join("dst.img.xdpcast-resume").exists(),
        "progress kept for a restart"
    );
}
