use super::*;

fn policy() -> Policy {
    Policy {
        session: 1,
        geometry: Geometry::new(1400 * 1000, 1400),
        group_size: 256,
        vanish_after: Duration::from_secs(5),
        max_behind: 0.5,
        signer: None,
    }
}

fn entries(e: &[(u64, u32)]) -> Vec<u8> {
    wire::encode_parity_requests(1, &policy().geometry, 1, 256, e).remove(0)
}

fn needs(pkt: &[u8]) -> wire::Ranges<'_> {
    match wire::parse(pkt).unwrap() {
        Packet::ParityRequest { needs, .. } => needs,
        other => panic!("{other:?}"),
    }
}

#[test]
fn merges_ranges() {
    assert_eq!(
        merge(vec![(5, 7), (0, 2), (2, 3), (6, 9), (20, 21)]),
        vec![(0, 3), (5, 9), (20, 21)]
    );
    assert!(merge(vec![]).is_empty());
}

#[test]
fn margin_grows_with_the_group() {
    assert_eq!(margin(16, 1), 0);
    assert_eq!(margin(16, 2), 5);
    assert_eq!(margin(16, 24), 11);
    assert_eq!(margin(16, 200), 14);
}

fn report(name: &str) -> Vec<u8> {
    let r = wire::Report {
        blocks_done: 0,
        requests: 0,
        state: 1,
        error: 0,
        flags: 0,
        name: wire::Report::name_field(name),
    };
    wire::encode_progress(1, &policy().geometry, 1, &r)
}

#[test]
fn the_first_request_of_a_group_gets_the_fleet_margin_later_ones_less() {
    let mut i = Rounds::new(policy());
    let now = Instant::now();
    for k in 0..200u32 {
        let from = SocketAddr::from(([10, 0, (k >> 8) as u8, k as u8], 4000));
        assert!(i.handle(&report(&format!("rx{k}")), from, now).is_empty());
    }
    assert_eq!(i.fleet(now).known, 200);
    assert_eq!(i.add_parity(needs(&entries(&[(0, 16)]))), vec![(0, 30)]);
    // A receiver still above lacks more than the worst of 200 was
    // expected to: it is in the tail already.
    assert_eq!(i.add_parity(needs(&entries(&[(0, 36)]))), vec![(0, 36 + 8)]);
}

#[test]
fn largest_count_wins_and_ranges_cover_groups() {
    let mut i = Rounds::new(policy());
    let a = entries(&[(0, 3), (1, 5), (3, 2)]);
    assert_eq!(i.add_parity(needs(&a)), vec![(0, 3), (1, 5), (3, 2)]);
    let b = entries(&[(0, 2), (1, 7)]);
    assert_eq!(i.add_parity(needs(&b)), vec![(1, 7)], "only raised counts");
    // The last group is 1000 - 768 = 232 blocks: counts are capped there.
    let c = entries(&[(3, 240)]);
    assert_eq!(i.add_parity(needs(&c)), vec![(3, 232)]);
    i.ranges.push((256, 512));
    let plan = i.take();
    assert_eq!(plan.ranges, vec![(256, 512)]);
    assert_eq!(
        plan.parity,
        vec![(0, 3), (3, 232)],
        "group 1 is resent whole"
    );
    assert!(i.take().is_empty());
}

#[test]
fn requests_for_groups_being_sent_wait_for_the_next_window() {
    let mut i = Rounds::new(policy());
    i.add_parity(needs(&entries(&[(0, 3), (1, 5)])));
    assert_eq!(i.take().parity, vec![(0, 3), (1, 5)]);
    // While round 0 is sent: group 1 is on its way, group 2 is new.
    let late = entries(&[(1, 2), (2, 4)]);
    assert_eq!(i.add_parity(needs(&late)), vec![(2, 4)]);
    assert_eq!(i.take().parity, vec![(2, 4)]);
    i.open_window(1, 1);
    assert_eq!(i.add_parity(needs(&late)), vec![(1, 2), (2, 4)]);
}

#[test]
fn a_parity_request_is_confirmed_to_the_group_and_limited_per_address() {
    let mut i = Rounds::new(policy());
    let from: SocketAddr = "10.0.0.1:4000".parse().unwrap();
    let now = Instant::now();
    let out = i.handle(&entries(&[(0, 3)]), from, now);
    assert_eq!(out.len(), CONFIRM_REPEAT);
    assert!(
        matches!(&out[0], Transmit::Group(p) if matches!(wire::parse(p), Ok(Packet::Confirm { .. })))
    );
    assert!(
        i.handle(&entries(&[(0, 2)]), from, now).is_empty(),
        "covered"
    );
    for _ in 2..REQUESTS_PER_SOURCE {
        i.handle(&entries(&[(0, 1)]), from, now);
    }
    assert_eq!(i.inbound().ignored, 0);
    assert!(i.handle(&entries(&[(1, 9)]), from, now).is_empty());
    assert_eq!(i.inbound().ignored, 1, "over the limit");
    i.open_window(1, 1);
    assert!(
        !i.handle(&entries(&[(1, 9)]), from, now).is_empty(),
        "a new window"
    );
    assert!(i.handle(b"noise", from, now).is_empty());
    assert_eq!(i.inbound().ignored, 2);
}

#[test]
fn a_window_reminds_twice_then_closes() {
    let t0 = Instant::now();
    let mut w = Window::new(t0, Duration::from_millis(400));
    assert_eq!(w.poll(t0), WindowEvent::Wait);
    assert_eq!(w.poll_timeout(), t0 + Duration::from_millis(100));
    assert_eq!(w.poll(w.poll_timeout()), WindowEvent::Remind);
    assert_eq!(w.poll_timeout(), t0 + Duration::from_millis(200));
    let late = t0 + Duration::from_millis(450);
    assert_eq!(w.poll(late), WindowEvent::Remind);
    assert_eq!(w.poll(late), WindowEvent::Close);
}

#[test]
fn the_schedule_stops_after_quiet_windows_unless_receivers_progress() {
    let mut s = Schedule::new(2.0, 1000, 50);
    let busy = FleetView {
        settled: false,
        progressing: true,
    };
    for _ in 0..PROGRESS_HOLD {
        assert_eq!(s.close(Plan::default(), busy), Next::Wait);
    }
    // Forged reports of progress hold the end back only so long.
    assert_eq!(s.close(Plan::default(), busy), Next::Wait);
    assert_eq!(s.close(Plan::default(), busy), Next::Stop);
    let mut s = Schedule::new(2.0, 1000, 50);
    let plan = Plan {
        ranges: vec![(0, 10)],
        parity: vec![(1, 5)],
        bulk: Vec::new(),
    };
    assert_eq!(
        s.close(plan, FleetView::default()),
        Next::Repair(Plan {
            ranges: vec![(0, 10)],
            parity: vec![(1, 5)],
            bulk: Vec::new(),
        })
    );
    assert_eq!(s.rounds(), 1);
    let settled = FleetView {
        settled: true,
        progressing: false,
    };
    assert_eq!(s.close(Plan::default(), settled), Next::Stop);
}

#[test]
fn a_spent_budget_leaves_a_floor_a_round() {
    // Budget 1000 blocks; floor 1000/32 = 32 a round once spent.
    let mut s = Schedule::new(1.0, 1000, 50);
    let all = || Plan {
        ranges: vec![(0, 1000)],
        parity: Vec::new(),
        bulk: Vec::new(),
    };
    let Next::Repair(p) = s.close(all(), FleetView::default()) else {
        panic!("a round");
    };
    assert_eq!(p.len(), 1000);
    let Next::Repair(p) = s.close(all(), FleetView::default()) else {
        panic!("a round");
    };
    assert_eq!(p.len(), 32);
    assert_eq!(s.refused(), 1000 - 32);
}

#[test]
fn clips_ranges_to_the_budget_in_turn() {
    let mut at = 0;
    let mut r = vec![(0, 10), (20, 30), (40, 50)];
    assert_eq!(clip(&mut r, 15, &mut at), 15);
    assert_eq!((r, at), (vec![(0, 10), (20, 25)], 25));
    // The next round starts where this one stopped, and wraps round:
    // requests for the first blocks cannot keep the budget forever.
    let mut r = vec![(0, 10), (20, 30), (40, 50)];
    assert_eq!(clip(&mut r, 15, &mut at), 15);
    assert_eq!((r, at), (vec![(25, 30), (40, 50)], 50));
    let mut r = vec![(0, 10), (20, 30), (40, 50)];
    assert_eq!(clip(&mut r, 12, &mut at), 18);
    assert_eq!((r, at), (vec![(0, 10), (20, 22)], 22));
    let mut r = vec![(0, 10)];
    assert_eq!(clip(&mut r, 0, &mut at), 10);
    assert!(r.is_empty());
    let mut g = 0;
    let mut p = vec![(0, 5), (3, 5), (7, 5)];
    assert_eq!(clip_counts(&mut p, 7, &mut g), 8);
    assert_eq!((p, g), (vec![(0, 5), (3, 2)], 4));
    let mut p = vec![(0, 5), (3, 5), (7, 5)];
    assert_eq!(clip_counts(&mut p, 7, &mut g), 8);
    assert_eq!((p, g), (vec![(0, 2), (7, 5)], 1));
}

#[test]
fn the_bulk_share_of_every_group_goes_first() {
    let mut i = Rounds::new(policy());
    i.add_parity(needs(&entries(&[(0, 10), (1, 10), (2, 10)])));
    // A far lossier receiver; and one a little above the first.
    i.add_parity(needs(&entries(&[(0, 80), (1, 15)])));
    let plan = i.take();
    assert_eq!(plan.parity, vec![(0, 80), (1, 15), (2, 10)]);
    assert_eq!(plan.bulk, vec![(0, 10)]);
    assert_eq!(
        plan.symbol_runs(),
        vec![
            (0, 0, 10),
            (1, 0, 15),
            (2, 0, 10),
            (0, 10, 20),
            (0, 30, 40),
            (0, 70, 10)
        ]
    );
}

/// Reports and requests forged with a receiver's exact address, port and
/// name but not its token: the forger's row is judged too slow and its
/// requests are dropped or limited, the genuine receiver's are still served
/// (issue 21 (a)).
#[test]
fn forgeries_from_a_receivers_address_without_its_token_do_not_starve_it() {
    let p = policy();
    let g = p.geometry;
    let mut i = Rounds::new(p);
    i.open_window(3, SLOW_ROUNDS);
    let now = Instant::now();
    // Genuine and forged packets come from the very same address.
    let at = SocketAddr::from(([10, 0, 0, 7], 40_001));
    let report = |done: u64| wire::Report {
        blocks_done: done,
        requests: 0,
        state: 1,
        error: 0,
        flags: 0,
        name: wire::Report::name_field("victim"),
    };
    let genuine = wire::encode_progress(1, &g, 77, &report(g.block_count - 1));
    assert!(i.handle(&genuine, at, now).is_empty());
    // Forged: far behind (a "too slow" verdict for the forger's row), and a
    // flood of requests over the per-receiver limit.
    let verdict = i.handle(&wire::encode_progress(1, &g, 78, &report(0)), at, now);
    assert_eq!(verdict.len(), 1, "a verdict for the forger's row");
    let flood = wire::encode_nacks(1, &g, 79, &[(5, 1)]).remove(0);
    for _ in 0..REQUESTS_PER_SOURCE + 10 {
        i.handle(&flood, at, now);
    }
    i.handle(&wire::encode_nacks(1, &g, 78, &[(7, 1)]).remove(0), at, now);
    i.handle(&wire::encode_nacks(1, &g, 77, &[(9, 1)]).remove(0), at, now);
    assert_eq!(
        i.inbound().ignored,
        11,
        "the flood's excess and the too-slow row's NACK"
    );
    let state = |t: u64| i.table().get(at, t).map(|r| r.state);
    assert_eq!(state(77), Some(RxState::Receiving));
    assert_eq!(state(78), Some(RxState::Failed(ErrorCode::TooSlow)));
    assert_eq!(i.take().ranges, vec![(5, 6), (9, 10)]);
}

/// `send --max-behind` and `receive --http`: a receiver far behind that
/// says it fetches from a web server is not told it is too slow; one far
/// behind without it is.
#[test]
fn a_receiver_fetching_over_http_is_not_judged_too_slow() {
    let p = policy();
    let g = p.geometry;
    let mut i = Rounds::new(p);
    i.open_window(3, SLOW_ROUNDS);
    let now = Instant::now();
    let at = SocketAddr::from(([10, 0, 0, 8], 40_002));
    let behind = |flags: u8| wire::Report {
        blocks_done: 0,
        requests: 0,
        state: 1,
        error: 0,
        flags,
        name: wire::Report::name_field("web"),
    };
    let http = wire::encode_progress(1, &g, 5, &behind(wire::REPORT_HTTP));
    assert!(i.handle(&http, at, now).is_empty());
    assert_eq!(
        i.table().get(at, 5).map(|r| r.state),
        Some(RxState::Receiving)
    );
    let plain = wire::encode_progress(1, &g, 6, &behind(0));
    assert_eq!(i.handle(&plain, at, now).len(), 1, "a verdict");
}
