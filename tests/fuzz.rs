//! Bounded property-based fuzzing of everything that parses bytes from the
//! network: arbitrary and mutated datagrams and frames never panic, and
//! whatever parses is internally consistent (so it can be written safely);
//! and of what a packet can make a receiver commit: an image of any size
//! in any block size is either refused before anything is created or
//! allocated, or its target and bookkeeping fit the target and the memory
//! budget.
//!
//! `XDPCAST_FUZZ_CASES` sets the cases per property (`cargo xtask fuzz
//! --seconds N` runs them for longer).

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use xdpcast::proto::frame::{udp_datagram, udp_payload};
use xdpcast::proto::manifest::{Manifest, SignedEnd};
use xdpcast::proto::wire::{self, Control, Geometry, Kind, Packet, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE};
use xdpcast::receive::transfer::Transfer;
use xdpcast::receive::workers::Sink;
use xdpcast::store::target::{self, Target};
use xdpcast::store::writer::StoreConfig;
use xdpcast::ErrorCode;

/// Cases per property: `XDPCAST_FUZZ_CASES`, else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("XDPCAST_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn key() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[5; 32])
}

/// A 100 000-byte image.
fn image() -> Vec<u8> {
    (0..100_000u32).map(|i| i as u8).collect()
}

/// A signed manifest of [`image`].
fn manifest() -> Manifest {
    let g = Geometry::new(100_000, 1400);
    Manifest {
        digest: [3; 32],
        passes: 2,
        flags: wire::FLAG_REPAIR,
        repair_addr: std::net::Ipv6Addr::LOCALHOST,
        repair_port: 9,
        source: std::net::Ipv6Addr::LOCALHOST,
        issued_at: 1,
        ..Manifest::new(7, g, 1)
    }
}

fn valid_packets() -> Vec<Vec<u8>> {
    let g = Geometry::new(100_000, 1400);
    let ctl = Control {
        flags: wire::FLAG_REPAIR,
        repair_port: 9,
        ..Control::new([3; 32], 0, 2)
    };
    vec![
        wire::encode_data(7, &g, 3, &[1; 1400]),
        wire::encode_data(
            7,
            &g,
            g.block_count - 1,
            &vec![2; g.block_len(g.block_count - 1)],
        ),
        wire::encode_control(Kind::Announce, 7, &g, &ctl),
        wire::encode_control(Kind::End, 7, &g, &ctl),
        wire::encode_nacks(7, &g, 3, &[(0, 5), (60, 2)]).remove(0),
        wire::encode_fec(7, &g, 1, 64, &[4; 1404]),
        wire::encode_raw(Kind::Manifest, 7, &g, 0, &manifest().sign(&key())),
        wire::encode_raw(
            Kind::Manifest,
            7,
            &g,
            3,
            &manifest().page_of(&key(), 3, &image()),
        ),
        wire::encode_raw(
            Kind::SignedEnd,
            7,
            &g,
            0,
            &manifest().sign_end(&key(), 1, 0, &[3; 32]),
        ),
        wire::encode_zeros(7, &g, &[(3, 4), (10, 1)]).remove(0),
        wire::encode_parity_requests(7, &g, 3, 64, &[(0, 5), (1, 64)]).remove(0),
        wire::encode_confirm(
            7,
            &g,
            &wire::ConfirmHeader {
                round: 2,
                group_size: 64,
                receivers: 24,
                flags: 0,
            },
            &[(1, 9)],
        ),
        wire::encode_progress(
            7,
            &g,
            3,
            &wire::Report {
                blocks_done: 12,
                requests: 3,
                state: 1,
                error: 0,
                flags: 0,
                name: wire::Report::name_field("rx-01"),
            },
        ),
    ]
}

/// Whatever `parse` accepts must be safe to act on.
fn check(pkt: &[u8]) {
    if let Ok(p) = wire::parse(pkt) {
        let g = p.geometry();
        assert!(
            g.block_count > 0 && g.block_count == g.total_size.div_ceil(u64::from(g.block_size))
        );
        match p {
            Packet::Data { index, payload, .. } => {
                assert!(index < g.block_count);
                assert_eq!(payload.len(), g.block_len(index));
                assert!(g.offset(index) + payload.len() as u64 <= g.total_size);
            }
            Packet::Nack { ranges, .. } => {
                for (first, count) in ranges.iter() {
                    assert!(count > 0 && first + u64::from(count) <= g.block_count);
                }
            }
            Packet::Zeros {
                seq, count, runs, ..
            } => {
                assert!(seq < u64::from(count));
                let mut floor = 0;
                for (first, n) in runs.iter() {
                    assert!(n > 0 && first >= floor && first + u64::from(n) <= g.block_count);
                    floor = first + u64::from(n);
                }
            }
            Packet::Fec {
                group,
                group_size,
                symbol,
                ..
            } => {
                assert!(group * u64::from(group_size) < g.block_count);
                assert_eq!(symbol.len(), 4 + g.block_size as usize);
            }
            Packet::Announce { control, .. } | Packet::End { control, .. } => {
                assert!(control.passes > 0);
            }
            // Whatever verifies is the real thing, untouched.
            Packet::Manifest { index, payload, .. } => {
                let m = manifest();
                if let Ok((got, _)) = Manifest::verify(payload, &[key().verifying_key()]) {
                    assert_eq!(got, m);
                }
                if m.verify_page(&key().verifying_key(), index, payload)
                    .is_ok()
                {
                    assert_eq!(payload, &m.page_of(&key(), index, &image())[..]);
                }
            }
            Packet::SignedEnd { payload, .. } => {
                if let Ok(v) = manifest().verify_end(&key().verifying_key(), payload) {
                    let want = SignedEnd {
                        pass: 1,
                        flags: 0,
                        digest: Some([3; 32]),
                        root: None,
                    };
                    assert_eq!(v, want);
                }
            }
            Packet::ParityRequest {
                group_size, needs, ..
            }
            | Packet::Confirm {
                group_size,
                counts: needs,
                ..
            } => {
                for (group, count) in needs.iter() {
                    assert!(group * u64::from(group_size) < g.block_count);
                    assert!((1..=group_size).contains(&count));
                }
            }
            Packet::Progress { report, .. } => {
                assert!(report.blocks_done <= g.block_count && report.state <= 3);
                assert!(report.name().chars().all(|c| c.is_ascii_graphic()));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(4000), ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_datagrams_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1600)) {
        check(&bytes);
        let _ = udp_payload(&bytes);
        for vlan in [None, Some(1), Some(4094)] {
            let _ = udp_datagram(&bytes, vlan);
        }
    }

    #[test]
    fn mutated_packets_never_panic(
        which in 0usize..12,
        flips in proptest::collection::vec((0usize..1500, any::<u8>()), 1..8),
        cut in 0usize..1500,
    ) {
        let mut pkt = valid_packets()[which].clone();
        let n = pkt.len();
        for (at, v) in flips {
            pkt[at % n] = v;
        }
        check(&pkt);
        pkt.truncate(cut.min(pkt.len()));
        check(&pkt);
    }

    #[test]
    fn mutated_frames_never_panic(
        flips in proptest::collection::vec((0usize..1500, any::<u8>()), 1..8),
        cut in 0usize..1600,
    ) {
        let payload = &valid_packets()[0];
        let mut f = vec![0u8; 14];
        f[12] = 0x08;
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 1, 17, 0, 0, 10, 0, 0, 1, 239, 1, 1, 1];
        let total = (20 + 8 + payload.len()) as u16;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&[0x13, 0x88, 0x13, 0x88]);
        f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(payload);
        prop_assert_eq!(udp_payload(&f).ok(), Some(&payload[..]));
        for (at, v) in flips {
            let n = f.len();
            f[at % n] = v;
        }
        f.truncate(cut.min(f.len()));
        if let Ok(d) = udp_payload(&f) {
            check(d);
        }
    }
}

/// A fresh directory for one case's target.
fn case_dir() -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let d = std::env::temp_dir().join(format!(
        "xdpcast-fuzz-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Image sizes a forged packet may claim: small, around the bounds, and
/// up to the largest the wire can say.
fn sizes() -> impl Strategy<Value = u64> {
    prop_oneof![
        1u64..=1 << 20,
        (1u64 << 30)..=(1 << 42),
        (1u64 << 42)..=u64::MAX,
        (0u32..64).prop_map(|s| 1u64 << s),
        Just(u64::MAX),
        Just(1 << 62),
    ]
}

/// What a refusal may say, and that it left nothing behind.
fn refused_cleanly(code: ErrorCode, out: &Path) {
    assert!(
        matches!(
            code,
            ErrorCode::DiskFull | ErrorCode::TargetTooSmall | ErrorCode::InvalidArgument
        ),
        "{code:?}"
    );
    assert!(
        !out.exists(),
        "a refused image left {} behind",
        out.display()
    );
}

/// An image of `total` bytes in blocks of `bs` that was admitted fits the
/// memory budget and, with the default configuration, the free space.
fn admitted_fits(total: u64, bs: u32, cfg: &StoreConfig, out: &Path) {
    assert!(target::bookkeeping_bytes(total, bs) <= target::memory_budget());
    if let Some(max) = cfg.max_image_size {
        assert!(total <= max);
    }
    assert_eq!(std::fs::metadata(out).unwrap().len(), total);
}

proptest! {
    // Each case opens a real target: fewer of them.
    #![proptest_config(ProptestConfig { cases: cases(4000) / 20, ..ProptestConfig::default() })]

    #[test]
    fn any_image_size_is_admitted_within_bounds_or_refused_before_creation(
        total in sizes(),
        bs in MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE,
        max in prop_oneof![Just(None), (1u64..=1 << 40).prop_map(Some)],
    ) {
        let dir = case_dir();
        let out = dir.join("img");
        let cfg = StoreConfig { buffer_bytes: 0, max_image_size: max, ..StoreConfig::default() };
        match Target::open(&out, total, bs, &cfg) {
            Ok(t) => {
                drop(t);
                admitted_fits(total, bs, &cfg, &out);
            }
            Err(e) => refused_cleanly(e.code, &out),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn one_forged_packet_of_any_size_never_overcommits(
        total in sizes(),
        bs in MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE,
        kind in 0u8..3,
    ) {
        let g = Geometry::new(total, bs);
        let pkt = match kind {
            0 => wire::encode_control(Kind::Announce, 9, &g, &Control::new([1; 32], 0, 1)),
            1 => wire::encode_control(Kind::End, 9, &g, &Control::new([1; 32], 0, 1)),
            _ => wire::encode_data(9, &g, g.block_count - 1, &vec![7; g.block_len(g.block_count - 1)]),
        };
        let dir = case_dir();
        let out = dir.join("img");
        let cfg = StoreConfig { buffer_bytes: 0, max_image_size: Some(1 << 30), ..StoreConfig::default() };
        let t = Transfer::new(out.clone(), None, 1).with_store(cfg);
        t.ingest(&pkt, t.counters(0));
        match t.failure() {
            Some(e) => refused_cleanly(e.code, &out),
            None => {
                if t.image().is_some() {
                    admitted_fits(total, bs, &cfg, &out);
                }
            }
        }
        drop(t);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// The crash: one unsigned announce of 2^62 bytes in 64-byte
/// blocks (and a 1 TiB one, larger than this disk's free space), with the
/// default configuration, end in FAILURE before anything is created, on
/// tmpfs and on the disk.
#[test]
fn huge_announces_fail_before_anything_is_created() {
    for (total, bs) in [(1u64 << 62, 64), (1 << 40, 1400), (u64::MAX, 64)] {
        for base in [PathBuf::from("/dev/shm"), std::env::temp_dir()] {
            let dir = base.join(format!("xdpcast-fuzz-huge-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let out = dir.join("img");
            let free = {
                let f = std::fs::File::open(&dir).unwrap();
                xdpcast::safe_fs::free_space(std::os::fd::AsFd::as_fd(&f)).unwrap()
            };
            let g = Geometry::new(total, bs);
            let pkt = wire::encode_control(Kind::Announce, 9, &g, &Control::new([1; 32], 0, 1));
            let t = Transfer::new(out.clone(), None, 1);
            t.ingest(&pkt, t.counters(0));
            if wire::parse(&pkt).is_ok() && total > free {
                let e = t.failure().expect("refused");
                refused_cleanly(e.code, &out);
            }
            drop(t);
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}
