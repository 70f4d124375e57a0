use super::encode::encode_ranges;
use super::*;

fn geo() -> Geometry {
    Geometry::new(10_000, 1400)
}

fn control() -> Control {
    Control {
        flags: FLAG_REPAIR,
        repair_port: 7000,
        fec_repair: 8,
        fec_group: 64,
        repair_addr: std::net::Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped(),
        ..Control::new([7; DIGEST_LEN], 1, 3)
    }
}

#[test]
fn geometry_of_uneven_image() {
    let g = geo();
    assert_eq!(g.block_count, 8);
    assert_eq!(g.block_len(0), 1400);
    assert_eq!(g.block_len(7), 10_000 - 7 * 1400);
    assert_eq!(g.offset(3), 4200);
}

#[test]
fn block_size_for_common_mtus() {
    assert_eq!(block_size_for_mtu(1500), 1400);
    assert_eq!(block_size_for_mtu(9000), 8192);
    assert_eq!(block_size_for_mtu(1400), 1328);
    assert_eq!(block_size_for_mtu(100), MIN_BLOCK_SIZE);
}

#[test]
fn data_round_trip() {
    let g = geo();
    let block: Vec<u8> = (0..g.block_len(7)).map(|i| i as u8).collect();
    let pkt = encode_data(42, &g, 7, &block);
    assert_eq!(
        parse(&pkt),
        Ok(Packet::Data {
            session: 42,
            geometry: g,
            index: 7,
            payload: &block
        })
    );
    let mut hdr = [0u8; HEADER_LEN];
    assert_eq!(
        encode_data_header(&mut hdr, 42, &g, 7),
        HEADER_LEN + block.len()
    );
    assert_eq!(&hdr[..], &pkt[..HEADER_LEN]);
}

#[test]
fn control_round_trip() {
    let g = geo();
    for kind in [Kind::Announce, Kind::End] {
        let pkt = encode_control(kind, 9, &g, &control());
        let parsed = parse(&pkt).unwrap();
        assert_eq!(parsed.session(), 9);
        assert_eq!(parsed.geometry(), g);
        match (kind, parsed) {
            (Kind::Announce, Packet::Announce { control: c, .. })
            | (Kind::End, Packet::End { control: c, .. }) => assert_eq!(c, control()),
            other => panic!("wrong kind {other:?}"),
        }
    }
}

#[test]
fn repair_address_and_flags() {
    let c = control();
    assert_eq!(c.repair_to(), Some("10.1.2.3:7000".parse().unwrap()));
    assert_eq!(Control::new([0; 32], 0, 1).repair_to(), None);
}

#[test]
fn nack_and_fec_round_trip() {
    let g = geo();
    let ranges: Vec<(u64, u32)> = (0..150).map(|i| (i % 8, 1)).collect();
    let pkts = encode_nacks(3, &g, 9, &ranges);
    assert_eq!(pkts.len(), 2);
    let mut back = Vec::new();
    for p in &pkts {
        match parse(p).unwrap() {
            Packet::Nack {
                session,
                ranges,
                token,
                ..
            } => {
                assert_eq!((session, token), (3, 9));
                back.extend(ranges.iter());
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(back, ranges);
    let sym = vec![5u8; 4 + 1400];
    match parse(&encode_fec(3, &g, 1, 4, &sym)).unwrap() {
        Packet::Fec {
            group,
            group_size,
            symbol,
            ..
        } => {
            assert_eq!((group, group_size), (1, 4));
            assert_eq!(symbol, &sym[..]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn zero_runs_round_trip_in_numbered_packets() {
    let g = Geometry::new(1000 * 100, 100);
    // Room for a signed session's signature: (100 - 4 - 64) / 12.
    assert_eq!(max_zero_runs(100), 2);
    assert_eq!(max_zero_runs(64), 1);
    let runs: Vec<(u64, u32)> = (0..20).map(|i| (i * 50, 3)).collect();
    let pkts = encode_zeros(9, &g, &runs);
    assert_eq!(pkts.len(), 10);
    let mut back = Vec::new();
    for (i, p) in pkts.iter().enumerate() {
        assert!(p.len() - HEADER_LEN <= 100, "fits a block");
        match parse(p).unwrap() {
            Packet::Zeros {
                session,
                seq,
                count,
                runs,
                ..
            } => {
                assert_eq!((session, seq, count), (9, i as u64, 10));
                back.extend(runs.iter());
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(back, runs);
    assert!(encode_zeros(9, &g, &[]).is_empty());
    // A signed session's packet: the signature after the runs, told by
    // the length, and the packet still within a block.
    let mut p = pkts[0].clone();
    append_signature(&mut p, &[0xA5; ZEROS_SIGNATURE_LEN]);
    assert!(p.len() - HEADER_LEN <= 100, "fits a block signed");
    match parse(&p).unwrap() {
        Packet::Zeros {
            runs: r,
            body,
            signature,
            ..
        } => {
            assert_eq!(r.iter().collect::<Vec<_>>(), runs[..2]);
            assert_eq!(body, &pkts[0][HEADER_LEN..]);
            assert_eq!(signature, Some(&[0xA5; ZEROS_SIGNATURE_LEN][..]));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        parse(&pkts[0]),
        Ok(Packet::Zeros {
            signature: None,
            ..
        })
    ));
}

#[test]
fn malformed_zero_runs_are_rejected() {
    let g = geo();
    let one = |runs: &[(u64, u32)]| encode_zeros(1, &g, runs).remove(0);
    let cases = [
        (one(&[(7, 2)]), DropReason::OutOfRange),
        (one(&[(0, 0)]), DropReason::OutOfRange),
        (one(&[(4, 2), (1, 1)]), DropReason::OutOfRange),
        (one(&[(0, 3), (2, 1)]), DropReason::OutOfRange),
        (one(&[(u64::MAX, 2)]), DropReason::OutOfRange),
        (
            {
                let mut p = one(&[(0, 1)]);
                p[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&0u32.to_be_bytes());
                p
            },
            DropReason::OutOfRange,
        ),
        (
            {
                let mut p = one(&[(0, 1)]);
                p.pop();
                p[6..8].copy_from_slice(&15u16.to_be_bytes());
                p
            },
            DropReason::BadControl,
        ),
        (
            encode_ranges(Kind::Zeros, 1, &g, 0, &[0, 0, 0, 1], &[]),
            DropReason::BadControl,
        ),
    ];
    for (i, (pkt, want)) in cases.iter().enumerate() {
        assert_eq!(parse(pkt), Err(*want), "case {i}");
    }
    assert!(parse(&one(&[(0, 2), (2, 6)])).is_ok(), "touching runs");
}

#[test]
fn parity_confirm_and_progress_round_trip() {
    let g = Geometry::new(1400 * 300, 1400);
    let needs: Vec<(u64, u32)> = (0..130).map(|i| (i % 5, 1 + i as u32 % 64)).collect();
    let pkts = encode_parity_requests(4, &g, 9, 64, &needs);
    assert_eq!(pkts.len(), 2);
    let mut back = Vec::new();
    for p in &pkts {
        match parse(p).unwrap() {
            Packet::ParityRequest {
                group_size,
                needs,
                token,
                ..
            } => {
                assert_eq!((group_size, token), (64, 9));
                back.extend(needs.iter());
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(back, needs);
    let h = ConfirmHeader {
        round: 3,
        group_size: 64,
        receivers: 24,
        flags: 0,
    };
    match parse(&encode_confirm(4, &g, &h, &[(4, 7)])).unwrap() {
        Packet::Confirm {
            round,
            group_size,
            receivers,
            flags,
            counts,
            ..
        } => {
            assert_eq!((round, group_size, receivers, flags), (3, 64, 24, 0));
            assert_eq!(counts.iter().collect::<Vec<_>>(), vec![(4, 7)]);
        }
        other => panic!("{other:?}"),
    }
    assert!(parse(&encode_confirm(4, &g, &h, &[])).is_ok());
    let r = Report {
        blocks_done: 299,
        requests: 5,
        state: 1,
        error: 0,
        flags: REPORT_HTTP,
        name: Report::name_field("lab-pc-07\n"),
    };
    match parse(&encode_progress(4, &g, 9, &r)).unwrap() {
        Packet::Progress { report, token, .. } => {
            assert_eq!((report, token), (r, 9));
            assert_eq!(report.name(), "lab-pc-07?");
        }
        other => panic!("{other:?}"),
    }
    // Out of range: group past the image, count 0 or above the group,
    // no entry in a request, too many blocks done, unknown state.
    for bad in [
        encode_parity_requests(4, &g, 9, 64, &[(5, 1)]).remove(0),
        encode_parity_requests(4, &g, 9, 64, &[(0, 0)]).remove(0),
        encode_parity_requests(4, &g, 9, 64, &[(0, 65)]).remove(0),
    ] {
        assert_eq!(parse(&bad), Err(DropReason::OutOfRange));
    }
    let empty = encode_ranges(Kind::ParityRequest, 4, &g, 0, &64u32.to_be_bytes(), &[]);
    assert_eq!(parse(&empty), Err(DropReason::BadControl));
    let zero_group = ConfirmHeader { group_size: 0, ..h };
    assert_eq!(
        parse(&encode_confirm(4, &g, &zero_group, &[])),
        Err(DropReason::BadControl)
    );
    for r in [
        Report {
            blocks_done: 301,
            ..r
        },
        Report { state: 4, ..r },
    ] {
        assert_eq!(
            parse(&encode_progress(4, &g, 9, &r)),
            Err(DropReason::BadControl)
        );
    }
}

#[test]
fn group_size_estimate_in_flags() {
    let c = |n| Control {
        flags: FLAG_REPAIR | gsize_flags(n),
        ..Control::new([0; 32], 0, 1)
    };
    assert_eq!(c(0).gsize_log2(), 0);
    assert_eq!(c(1).gsize_log2(), 1);
    assert_eq!(c(24).gsize_log2(), 5);
    assert_eq!(c(24).flags & 0xff, FLAG_REPAIR);
    assert_eq!(c(24).parity_group(), None);
}

#[test]
fn receivers_lacking_much_in_flags() {
    let c = |lacking, hearing| Control {
        flags: FLAG_REPAIR | gsize_flags(hearing) | fleet_flags(lacking, hearing),
        ..Control::new([0; 32], 0, 1)
    };
    // No receiver known: no hint (as from a sender before the hint).
    assert_eq!(c(0, 0).lacking(), None);
    assert_eq!(Control::new([0; 32], 0, 1).lacking(), None);
    let l = c(0, 16).lacking().unwrap();
    assert_eq!((l.receivers, l.share), (0, 0.0));
    let l = c(12, 16).lacking().unwrap();
    assert_eq!(l.receivers, 12);
    assert!((l.share - 0.75).abs() < 1.0 / 255.0, "{l:?}");
    // One of 100 000: the count saturates, the share is rounded up.
    let l = c(1, 100_000).lacking().unwrap();
    assert_eq!((l.receivers, l.share), (1, 1.0 / 255.0));
    let l = c(70_000, 100_000).lacking().unwrap();
    assert_eq!(l.receivers, 255);
    assert!((l.share - 0.7).abs() < 1.0 / 255.0, "{l:?}");
    // The other bits stay as they were.
    assert_eq!(c(12, 16).gsize_log2(), 5);
    assert_eq!(c(12, 16).flags & 0xff, FLAG_REPAIR | FLAG_FLEET);
    assert_eq!(c(16, 16).lacking().unwrap().share, 1.0);
}

fn data_pkt() -> Vec<u8> {
    encode_data(1, &geo(), 0, &[0xAB; 1400])
}

#[test]
fn rejects_each_malformed_case() {
    let g = geo();
    let cases: Vec<(Vec<u8>, DropReason)> = vec![
        (vec![], DropReason::Truncated),
        (data_pkt()[..HEADER_LEN - 1].to_vec(), DropReason::Truncated),
        (
            data_pkt()[..HEADER_LEN + 10].to_vec(),
            DropReason::Truncated,
        ),
        (
            {
                let mut p = data_pkt();
                p[0] = b'Y';
                p
            },
            DropReason::BadMagic,
        ),
        (
            {
                let mut p = data_pkt();
                p[4] = 1;
                p
            },
            DropReason::BadVersion,
        ),
        (
            {
                let mut p = data_pkt();
                p[5] = 99;
                p
            },
            DropReason::BadKind,
        ),
        (
            {
                let mut p = data_pkt();
                p.push(0);
                p
            },
            DropReason::LengthMismatch,
        ),
        (
            {
                let mut p = data_pkt();
                p[12..16].copy_from_slice(&(MAX_BLOCK_SIZE + 1).to_be_bytes());
                p
            },
            DropReason::Oversize,
        ),
        (
            {
                let mut p = data_pkt();
                p[12..16].copy_from_slice(&8u32.to_be_bytes());
                p
            },
            DropReason::Oversize,
        ),
        (
            {
                let mut p = data_pkt();
                p[16..24].copy_from_slice(&g.block_count.to_be_bytes());
                p
            },
            DropReason::OutOfRange,
        ),
        (
            {
                let mut p = data_pkt();
                p[32..40].copy_from_slice(&(g.total_size * 2).to_be_bytes());
                p
            },
            DropReason::Inconsistent,
        ),
        (
            // A full-size payload claimed for the short last block.
            {
                let mut p = data_pkt();
                p[16..24].copy_from_slice(&7u64.to_be_bytes());
                p
            },
            DropReason::Inconsistent,
        ),
        (
            // Geometry claiming a payload larger than the block size.
            {
                let mut p = encode_data(1, &Geometry::new(100_000, 1000), 0, &[0; 1000]);
                let extra = [0u8; 8];
                p.extend_from_slice(&extra);
                p[6..8].copy_from_slice(&1008u16.to_be_bytes());
                p
            },
            DropReason::Oversize,
        ),
        (
            {
                let mut p = encode_control(Kind::End, 1, &g, &control());
                p.truncate(p.len() - 1);
                p[6..8].copy_from_slice(&((CONTROL_PAYLOAD_LEN - 1) as u16).to_be_bytes());
                p
            },
            DropReason::BadControl,
        ),
        (
            encode_control(
                Kind::Announce,
                1,
                &g,
                &Control {
                    passes: 0,
                    ..control()
                },
            ),
            DropReason::BadControl,
        ),
        (
            encode_nacks(1, &g, 9, &[(7, 2)]).remove(0),
            DropReason::OutOfRange,
        ),
        (
            encode_nacks(1, &g, 9, &[(0, 0)]).remove(0),
            DropReason::OutOfRange,
        ),
        (encode_fec(1, &g, 0, 64, &[0; 10]), DropReason::BadControl),
        (encode_fec(1, &g, 2, 4, &[0; 1404]), DropReason::OutOfRange),
        (encode_fec(1, &g, 0, 0, &[0; 1404]), DropReason::BadControl),
    ];
    for (i, (pkt, want)) in cases.iter().enumerate() {
        assert_eq!(parse(pkt), Err(*want), "case {i}");
    }
}

#[test]
fn every_truncation_of_a_valid_packet_is_rejected() {
    let pkt = data_pkt();
    for len in 0..pkt.len() {
        assert!(parse(&pkt[..len]).is_err(), "len {len}");
    }
}

#[test]
fn hex_round_trip() {
    let b = [0u8, 1, 0xab, 0xFF];
    assert_eq!(from_hex::<4>(&hex(&b)), Some(b));
    assert_eq!(from_hex::<4>("0001ABff"), Some(b));
    assert_eq!(from_hex::<4>("0001abf"), None);
    assert_eq!(from_hex::<4>("0001abfg"), None);
}

#[test]
fn reason_indices_are_stable_and_named() {
    for (i, r) in DropReason::ALL.iter().enumerate() {
        assert_eq!(*r as usize, i);
        assert!(!r.name().is_empty());
    }
}
