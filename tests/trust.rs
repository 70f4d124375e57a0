//! Signed sessions against a LAN attacker, with the real binaries in
//! network namespaces: a forged sender that starts first is never written,
//! forgeries carrying the real session id are counted and do not end the
//! session, and a signed transfer with 20 % loss ends in SUCCESS without a
//! read-back. Images are 8-16 MiB (not 256 MiB) to keep CI short; the
//! paths taken are the same.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::attacker::*;
use common::*;
use xdpcast::proto::manifest::Manifest;
use xdpcast::proto::wire::{self, Control, Geometry, Kind};
use xdpcast::status::page::{
    State, FLAG_GEOMETRY, TRUST_MANIFEST, TRUST_NO_READ_BACK, TRUST_REQUIRED,
};
use xdpcast::ErrorCode;

const MIB: usize = 1 << 20;
const GROUP: &str = "239.6.7.8:5000";

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Another address on the sender side's interface, for an attacker that
/// does not spoof.
fn second_address(net: &VethPair) -> std::net::IpAddr {
    let ip = format!("{}3", net.addr_a.trim_end_matches('1'));
    net.a
        .ip(&["addr", "add", &format!("{ip}/24"), "dev", &net.if_a]);
    ip.parse().unwrap()
}

fn receiver(net: &VethPair, dir: &Path, dst: &Path, extra: &[&str]) -> std::process::Child {
    let mut args = vec![
        "--iface",
        &net.if_b,
        "--out",
        dst.to_str().unwrap(),
        "--mode",
        "xdp",
    ];
    args.extend_from_slice(extra);
    start_receiver(xdpcast(&net.b), dir, "trust", GROUP, &args)
}

#[test]
fn signed_transfer_with_loss_succeeds_without_read_back() {
    if !netns_allowed() {
        return;
    }
    let net = VethPair::new(1, 1500);
    let Images { dir, src, dst } = Images::new("xdpc-signed", 16 * MIB, 10);
    // Sparse: zero runs are announced, zeroed and verified in their chunks.
    xdpcast_bench::fixture::write_sparse_image(&src, 16 * MIB as u64, 10).unwrap();
    let key = keygen(&dir, "site");
    let rx = receiver(&net, &dir.0, &dst, &["--trust", &pub_of(&key)]);
    let tx = start_sender(
        &net.a,
        &net.if_a,
        GROUP,
        &src,
        &[
            "--rate",
            "1G",
            "--loss",
            "0.2",
            "--sign",
            key.to_str().unwrap(),
        ],
    );
    let out = both_ok(tx, rx, Duration::from_secs(120));
    assert_eq!(sha256_hex(&src), sha256_hex(&dst));
    let s = read_page(&dir.0, "trust");
    assert_eq!((s.state, s.error), (State::Success, ErrorCode::None));
    let want = TRUST_REQUIRED | TRUST_MANIFEST | TRUST_NO_READ_BACK;
    assert_eq!(s.trust.flags & want, want, "SUCCESS without a read-back");
    assert!(s.trust.chunk_count > 1);
    assert_eq!(s.trust.chunks_verified, s.trust.chunk_count);
    assert!(
        s.first_pass_missing > 0 && s.nacks_sent > 0,
        "loss was repaired"
    );
    assert_eq!(s.drops_for(wire::DropReason::BadChunk), 0);
    assert!(s.sparse.skipped_bytes > 0, "zero runs skipped");
    assert!(s.message.contains("chunks verified"), "{}", s.message);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("trust     signed by"), "{text}");
}

#[test]
fn forged_senders_starting_first_are_never_written() {
    if !netns_allowed() {
        return;
    }
    let net = VethPair::new(1, 1500);
    let Images { dir, src, dst } = Images::new("xdpc-first", 8 * MIB, 11);
    let fake = dir.join("fake.img");
    make_image(&fake, 8 * MIB, 99);
    let key = keygen(&dir, "site");
    let other = keygen(&dir, "attacker");
    let rx = receiver(&net, &dir.0, &dst, &["--trust", &pub_of(&key)]);
    // An unsigned sender, then one signing with its own key, each a whole
    // session with repair rounds answered by no one.
    for extra in [vec![], vec!["--sign", other.to_str().unwrap()]] {
        let mut args = vec!["--rate", "1G", "--no-repair"];
        args.extend(extra);
        let tx = start_sender(&net.a, &net.if_a, GROUP, &fake, &args);
        ok(
            &wait_output(tx, Duration::from_secs(60), "forged sender"),
            "forged sender",
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let s = read_page(&dir.0, "trust");
    assert_eq!(s.state, State::InProgress);
    assert_eq!(s.flags & FLAG_GEOMETRY, 0, "no session was taken up");
    assert_eq!(s.trust.flags & TRUST_MANIFEST, 0);
    assert!(!dst.exists(), "the target is not even created");
    assert!(s.drops_for(wire::DropReason::Unauthenticated) > 1000);
    // The real sender then gets its image through.
    let tx = start_sender(
        &net.a,
        &net.if_a,
        GROUP,
        &src,
        &["--rate", "1G", "--sign", key.to_str().unwrap()],
    );
    both_ok(tx, rx, Duration::from_secs(60));
    assert_eq!(sha256_hex(&src), sha256_hex(&dst));
}

/// Every forgery an attacker on the segment can make with the session id
/// it heard: blocks of another image, announces and ends with another
/// digest, repair address, FINAL flag or a huge size, a manifest signed by
/// its own key, a signed end with a made-up signature.
fn forgeries(session: u32, g: Geometry, attacker: &ed25519_dalek::SigningKey) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let evil = Control {
        flags: wire::FLAG_REPAIR | wire::FLAG_FINAL,
        repair_port: 9,
        repair_addr: std::net::Ipv4Addr::new(10, 66, 6, 6).to_ipv6_mapped(),
        ..Control::new([0xEE; 32], 7, 1)
    };
    let huge = Geometry::new(1 << 50, g.block_size);
    for geo in [g, huge] {
        out.push(wire::encode_control(Kind::Announce, session, &geo, &evil));
        out.push(wire::encode_control(Kind::End, session, &geo, &evil));
    }
    let fake = vec![0xEE; g.total_size as usize];
    let m = Manifest {
        digest: [0xEE; 32],
        repair_addr: evil.repair_addr,
        repair_port: 9,
        ..Manifest::new(session, huge, 256)
    };
    out.push(wire::encode_raw(
        Kind::Manifest,
        session,
        &huge,
        0,
        &m.sign(attacker),
    ));
    out.push(wire::encode_raw(
        Kind::Manifest,
        session,
        &g,
        0,
        &Manifest { geometry: g, ..m }.page_of(attacker, 0, &fake),
    ));
    out.push(wire::encode_raw(
        Kind::SignedEnd,
        session,
        &g,
        0,
        &m.sign_end(attacker, 9, wire::FLAG_FINAL, &[0xEE; 32]),
    ));
    // Blocks of the fake image, last first (the real sender sends them last).
    for i in (0..g.block_count).rev() {
        out.push(wire::encode_data(session, &g, i, &fake[..g.block_len(i)]));
    }
    out
}

/// Send `src` signed with `key` under `session` (20 % loss, 1400-byte
/// blocks) and, as soon as the receiver took up the real session, flood it
/// with [`forgeries`] spoofing the sender's address: the sender.
fn send_forged(
    net: &VethPair,
    dir: &TempDir,
    src: &Path,
    key: &Path,
    session: u32,
) -> std::process::Child {
    let tx = start_sender(
        &net.a,
        &net.if_a,
        GROUP,
        src,
        &[
            "--rate",
            "100M",
            "--loss",
            "0.2",
            "--session",
            &session.to_string(),
            "--block-size",
            "1400",
            // Forged blocks spoil nearly every chunk of the first pass, and
            // the repairs lose 20 % too: leave room beyond the default budget.
            "--max-repair",
            "5",
            "--sign",
            key.to_str().unwrap(),
        ],
    );
    wait_for(Duration::from_secs(30), "manifest verified", || {
        let s = read_page(&dir.0, "trust");
        (s.trust.flags & TRUST_MANIFEST != 0).then_some(())
    });
    let len = std::fs::metadata(src).unwrap().len();
    let attacker = ed25519_dalek::SigningKey::from_bytes(&[0xA7; 32]);
    let g = Geometry::new(len, 1400);
    inject(
        &net.a,
        &net.if_a,
        GROUP,
        None,
        forgeries(session, g, &attacker),
    );
    tx
}

#[test]
fn forgeries_with_the_real_session_id_are_counted_not_fatal() {
    if !netns_allowed() {
        return;
    }
    let net = VethPair::new(1, 1500);
    let Images { dir, src, dst } = Images::new("xdpc-forge", 16 * MIB, 12);
    let key = keygen(&dir, "site");
    let rx = receiver(&net, &dir.0, &dst, &["--trust", &pub_of(&key)]);
    let session = 0x5157_u32;
    let tx = send_forged(&net, &dir, &src, &key, session);
    let g = Geometry::new(16 * MIB as u64, 1400);
    let attacker = ed25519_dalek::SigningKey::from_bytes(&[0xA7; 32]);
    // Then from an address of its own.
    let other = second_address(&net);
    inject(
        &net.a,
        &net.if_a,
        GROUP,
        Some(other),
        forgeries(session, g, &attacker),
    );
    both_ok(tx, rx, Duration::from_secs(120));
    assert_eq!(sha256_hex(&src), sha256_hex(&dst));
    let s = read_page(&dir.0, "trust");
    assert_eq!((s.state, s.error), (State::Success, ErrorCode::None));
    assert!(s.trust.flags & TRUST_NO_READ_BACK != 0);
    // Control forgeries: counted as unauthenticated (or inconsistent, for
    // the huge geometry); forged blocks: whole chunks rejected.
    assert!(s.drops_for(wire::DropReason::Unauthenticated) >= 3, "{s:?}");
    assert!(s.drops_for(wire::DropReason::BadChunk) >= 1, "{s:?}");
    // The signed manifest names the sender's address: the rest is foreign
    // (most of it: a full ring under load may lose some).
    assert!(
        s.drops_for(wire::DropReason::ForeignSource) > g.block_count / 2,
        "{s:?}"
    );
    assert!(s.trust.rejected_blocks > 0);
    // Rejected blocks are not progress: the page counts each byte once.
    assert_eq!(
        (s.blocks_done, s.bytes_done),
        (s.block_count, s.total_bytes)
    );
}

#[test]
fn forged_nack_flood_is_bounded_and_reported() {
    if !netns_allowed() {
        return;
    }
    let net = VethPair::new(1, 1500);
    let Images { dir: _dir, src, .. } = Images::new("xdpc-nack", 4 * MIB, 13);
    let g = Geometry::new(4 * MIB as u64, 1400);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let iface = net.if_b.clone();
    let (joined, has_joined) = std::sync::mpsc::channel();
    // The attacker hears an announce for the repair address and session
    // id, then floods NACKs for the whole image (and some outside it).
    let attacker = spawn_in_netns(&net.b, move || {
        let group: xdpcast::net::socket::Group = GROUP.parse().unwrap();
        let sock = xdpcast::net::socket::join(group, &iface, 1 << 20, None).unwrap();
        joined.send(()).unwrap();
        let sock: std::net::UdpSocket = sock.into();
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut buf = [0u8; 2048];
        let (session, to) = loop {
            let n = sock.recv(&mut buf).unwrap();
            if let Ok(wire::Packet::Announce {
                session, control, ..
            }) = wire::parse(&buf[..n])
            {
                break (session, control.repair_to().unwrap());
            }
        };
        let all: Vec<(u64, u32)> = (0..g.block_count)
            .step_by(100)
            .map(|a| (a, (g.block_count - a).min(100) as u32))
            .collect();
        let mut nacks = wire::encode_nacks(session, &g, 1, &all);
        let mut outside = wire::encode_nacks(session, &g, 1, &[(0, 1)]).remove(0);
        outside[wire::HEADER_LEN..wire::HEADER_LEN + 8]
            .copy_from_slice(&g.block_count.to_be_bytes());
        nacks.push(outside);
        let out = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        let mut sent = 0u64;
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            for p in nacks.iter().cycle().take(125) {
                let _ = out.send_to(p, to);
                sent += 1;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        sent
    });
    // The sender starts once the attacker listens: it would otherwise be
    // done before a slow attacker heard its first announce.
    has_joined.recv().unwrap();
    let tx = start_sender(
        &net.a,
        &net.if_a,
        GROUP,
        &src,
        &[
            "--rate",
            "400M",
            "--block-size",
            "1400",
            "--repair-wait",
            "200",
        ],
    );
    let out = wait_output(tx, Duration::from_secs(120), "sender");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = attacker.join().unwrap();
    ok(&out, "sender");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("repair:"))
        .unwrap_or_else(|| panic!("no repair line in {text}"));
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    // "repair: N data and symbol packets sent (X MiB), R ... not sent, I
    // datagrams ... ignored ...": the first number and the last two.
    let n = nums.len();
    let (resent, refused, ignored) = (nums[0], nums[n - 2], nums[n - 1]);
    assert!(sent >= 1000, "the flood ran: {sent} NACKs");
    // The default budget: two images' worth (a receiver that lost half of
    // the first pass under load needs about one), then a floor of 1/32 of
    // the image per round (forged requests must not starve the others'
    // repairs), over at most the default 50 rounds.
    let floor = g.block_count.div_ceil(32);
    assert!(
        resent <= 2 * g.block_count + 50 * floor,
        "repairs bounded: {line}"
    );
    assert!(refused > 0, "the budget stopped the flood: {line}");
    assert!(
        ignored > 0,
        "over-limit and out-of-image NACKs ignored: {line}"
    );
}

#[test]
fn source_filter_ignores_a_forged_sender_that_starts_first() {
    if !netns_allowed() {
        return;
    }
    let net = VethPair::new(1, 1500);
    let Images { dir, src, dst } = Images::new("xdpc-source", 4 * MIB, 14);
    // Unsigned, but only from the sender's address (source-specific join).
    let rx = receiver(&net, &dir.0, &dst, &["--source", &net.addr_a]);
    let g = Geometry::new(4 * MIB as u64, 1400);
    let fake = vec![0xEE; g.block_size as usize];
    let mut forged = vec![wire::encode_control(
        Kind::Announce,
        77,
        &g,
        &Control::new([0xEE; 32], 0, 1),
    )];
    forged
        .extend((0..g.block_count).map(|i| wire::encode_data(77, &g, i, &fake[..g.block_len(i)])));
    let other = second_address(&net);
    inject(&net.a, &net.if_a, GROUP, Some(other), forged);
    std::thread::sleep(Duration::from_millis(200));
    let s = read_page(&dir.0, "trust");
    assert_eq!(
        s.flags & FLAG_GEOMETRY,
        0,
        "the forged session was not taken up"
    );
    assert!(!dst.exists());
    let tx = start_sender(&net.a, &net.if_a, GROUP, &src, &["--rate", "1G"]);
    both_ok(tx, rx, Duration::from_secs(60));
    assert_eq!(sha256_hex(&src), sha256_hex(&dst));
    let s = read_page(&dir.0, "trust");
    assert!(
        s.drops_for(wire::DropReason::ForeignSource) > g.block_count / 2,
        "{s:?}"
    );
}

#[test]
fn forged_blocks_never_leave_on_a_signed_stream() {
    if !netns_allowed() {
        return;
    }
    use std::io::Read;
    let net = VethPair::new(1, 1500);
    let Images { dir, src, .. } = Images::new("xdpc-forge-stream", 8 * MIB, 13);
    let key = keygen(&dir, "site");
    let public = pub_of(&key);
    // The whole image fits the (default) window: every forged block that
    // beats the real one to its slot is taken, and must still never leave.
    let args = [
        "--iface", &net.if_b, "--out", "-", "--mode", "xdp", "--trust", &public,
    ];
    let mut rx = start_receiver(xdpcast(&net.b), &dir.0, "trust", GROUP, &args);
    let mut stdout = rx.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        stdout.read_to_end(&mut got).unwrap();
        got
    });
    let tx = send_forged(&net, &dir, &src, &key, 0x5158);
    both_ok(tx, rx, Duration::from_secs(120));
    let got = reader.join().unwrap();
    assert_eq!(got.len(), 8 * MIB);
    assert!(
        got == std::fs::read(&src).unwrap(),
        "the stream is the source, byte for byte"
    );
    let s = read_page(&dir.0, "trust");
    assert_eq!((s.state, s.error), (State::Success, ErrorCode::None));
    assert!(s.drops_for(wire::DropReason::BadChunk) >= 1, "{s:?}");
    assert_eq!(s.stream.written, s.total_bytes);
    assert_eq!(s.trust.chunks_verified, s.trust.chunk_count);
}

/// A signed receive onto a loop device over old data (16 MiB image from
/// `seed`) from the sender `send(net, dir, src, key)` starts: the
/// receiver's page once both ended, having checked that the device was not
/// read from before the first packet to the receiver's exit (after
/// SUCCESS), that the session succeeded with every chunk verified, that
/// the store read nothing back, and the SHA-256 on the device. None
/// without network namespaces.
fn signed_onto_old_disk(
    prefix: &str,
    seed: u64,
    send: impl FnOnce(&VethPair, &TempDir, &Path, &Path) -> std::process::Child,
) -> Option<xdpcast::Snapshot> {
    if !netns_allowed() {
        return None;
    }
    let net = VethPair::new(1, 1500);
    let Images { dir, src, .. } = Images::new(prefix, 16 * MIB, seed);
    let disk = LoopDev::old_disk(&dir, 16 * MIB as u64);
    let key = keygen(&dir, "site");
    let rx = receiver(
        &net,
        &dir.0,
        Path::new(&disk.0),
        &["--trust", &pub_of(&key)],
    );
    let before = disk.sectors_read();
    let tx = send(&net, &dir, &src, &key);
    let out = both_ok(tx, rx, Duration::from_secs(120));
    let s = read_page(&dir.0, "trust");
    assert_eq!(
        disk.sectors_read(),
        before,
        "read the device: {s:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!((s.state, s.error), (State::Success, ErrorCode::None));
    assert!(s.trust.chunk_count > 1);
    assert_eq!(s.trust.chunks_verified, s.trust.chunk_count);
    assert_eq!(s.storage.bytes_read_back, 0, "{s:?}");
    assert_eq!(sha256_hex(&src), sha256_hex(Path::new(&disk.0)));
    Some(s)
}

/// A signed sender of `src` with `key` and `args` before `--sign`.
fn signed_sender(net: &VethPair, src: &Path, key: &Path, args: &str) -> std::process::Child {
    let mut args: Vec<&str> = args.split(' ').collect();
    args.extend(["--sign", key.to_str().unwrap()]);
    start_sender(&net.a, &net.if_a, GROUP, src, &args)
}

#[test]
fn signed_receive_onto_a_block_device_reads_nothing_back() {
    let Some(s) = signed_onto_old_disk("xdpc-signed-blk", 14, |net, _, src, key| {
        signed_sender(net, src, key, "--rate 1G")
    }) else {
        return;
    };
    assert_eq!(s.drops_for(wire::DropReason::BadChunk), 0);
    // The store's own account agrees: every chunk checked once, from
    // memory, nothing refused.
    assert_eq!(s.storage.chunks_checked, s.trust.chunk_count, "{s:?}");
    assert!(
        s.diag.last_block_ns > 0 && s.diag.last_block_ns <= s.end_ns,
        "{s:?}"
    );
}

#[test]
fn forged_blocks_on_a_block_device_are_counted_and_nothing_is_read_back() {
    // 20 % loss and forged blocks of another image on every slot.
    let Some(s) = signed_onto_old_disk("xdpc-forge-blk", 15, |net, dir, src, key| {
        send_forged(net, dir, src, key, 0x5159)
    }) else {
        return;
    };
    assert!(s.drops_for(wire::DropReason::BadChunk) >= 1, "{s:?}");
    assert!(s.trust.rejected_blocks > 0, "{s:?}");
    // Each failed check is a `bad_chunk` drop; each chunk passed once.
    assert_eq!(
        s.storage.chunks_checked,
        s.trust.chunk_count + s.drops_for(wire::DropReason::BadChunk),
        "{s:?}"
    );
}

#[test]
fn signed_fec_onto_a_block_device_rebuilds_from_memory() {
    // 16 repair symbols per 64 blocks against 5 % loss: the lost blocks
    // are rebuilt from the group's blocks still in the staging buffer
    // (their chunks are not complete), never read back from the device.
    let Some(s) = signed_onto_old_disk("xdpc-signed-fec", 16, |net, _, src, key| {
        signed_sender(net, src, key, "--rate 1G --loss 0.05 --fec 16")
    }) else {
        return;
    };
    assert!(s.fec_recovered > 0, "FEC rebuilt lost blocks: {s:?}");
    // Rebuilt blocks were checked with their chunks like any block.
    assert_eq!(s.storage.chunks_checked, s.trust.chunk_count, "{s:?}");
    assert_eq!(s.drops_for(wire::DropReason::BadChunk), 0);
}
