use super::image::{missing_in_window, Landed};
use super::*;
use crate::error::ErrorCode;
use crate::proto::manifest::Manifest;
use crate::proto::wire::{encode_control, encode_data, DropReason, Geometry, Kind, Packet};
use crate::receive::bitmap::BlockBitmap;
use crate::store::target::Target;

fn setup(name: &str, session: Option<u32>) -> (Transfer, PathBuf) {
    let dir = std::env::temp_dir().join(format!("xdpcast-transfer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    (Transfer::new(p.clone(), session, 1), p)
}

fn image_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[test]
fn blocks_land_and_bad_packets_are_counted_not_written() {
    let (t, path) = setup("ingest", None);
    let data = image_bytes(5000);
    let g = Geometry::new(data.len() as u64, 1000);
    let c = t.counters(0);
    let ctl = Control {
        flags: wire::FLAG_FINAL,
        ..Control::new([9; 32], 0, 1)
    };
    t.ingest(&encode_control(Kind::Announce, 5, &g, &ctl), c);
    for i in 0..g.block_count {
        let o = g.offset(i) as usize;
        let block = &data[o..o + g.block_len(i)];
        t.ingest(&encode_data(5, &g, i, block), c);
        if i == 2 {
            // Mid-transfer garbage: foreign session, other geometry, noise, duplicate.
            t.ingest(&encode_data(6, &g, 3, &[0xEE; 1000]), c);
            let other = Geometry::new(6000, 1000);
            t.ingest(&encode_data(5, &other, 3, &[0xEE; 1000]), c);
            t.ingest(b"not a packet at all, but long enough to be read......", c);
            t.ingest(&encode_data(5, &g, 2, &[0xEE; 1000]), c);
        }
    }
    t.ingest(&encode_control(Kind::End, 5, &g, &ctl), c);
    assert_eq!(t.blocks_done(), 5);
    assert_eq!(t.digest(), Some([9; 32]));
    assert!(t.final_pass_ended());
    assert_eq!(t.first_pass_missing(), Some(0));
    let d = |r: DropReason| c.drops[r as usize].load(Ordering::Relaxed);
    assert_eq!(d(DropReason::ForeignSession), 1);
    assert_eq!(d(DropReason::Inconsistent), 1);
    assert_eq!(d(DropReason::BadMagic), 1);
    assert_eq!(d(DropReason::Duplicate), 1);
    let img = t.image().unwrap();
    img.target.flush().unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), data);
    assert!(t.failure().is_none());
}

#[test]
fn zero_runs_are_zeroed_over_old_data_and_count_as_done() {
    let (t, path) = setup("zeros", None);
    let mut data = image_bytes(10_000);
    data[2000..7000].fill(0);
    std::fs::write(&path, vec![0xEE; 10_000]).unwrap();
    let g = Geometry::new(data.len() as u64, 1000);
    let c = t.counters(0);
    let zeros = wire::encode_zeros(5, &g, &[(2, 5)]);
    t.ingest(&zeros[0], c);
    assert_eq!(t.blocks_done(), 5);
    // A repeated list, or a data packet for a zero block, changes nothing.
    t.ingest(&zeros[0], c);
    t.ingest(&encode_data(5, &g, 3, &[0xEE; 1000]), c);
    assert_eq!(t.blocks_done(), 5);
    for i in (0..2).chain(7..10) {
        let o = g.offset(i) as usize;
        t.ingest(&encode_data(5, &g, i, &data[o..o + 1000]), c);
    }
    assert_eq!(t.blocks_done(), 10);
    assert_eq!(
        t.image().unwrap().skipped_bytes.load(Ordering::Relaxed),
        5000
    );
    assert_eq!(c.bytes.load(Ordering::Relaxed), 5000);
    let img = t.image().unwrap();
    img.target.flush().unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), data);
    assert!(t.failure().is_none());
}

#[test]
fn a_stream_takes_only_what_its_window_holds_and_asks_for_the_rest() {
    use std::io::Read;
    let (mut rx, tx) = stream::pipe().unwrap();
    let g = Geometry::new(1000, 100);
    let out = StreamOut::start(tx, 300).unwrap();
    let img = Image {
        session: 1,
        geometry: g,
        // Gated, as for a signed session: nothing leaves unreleased.
        target: Target::stream(out, g.total_size, g.block_size, true),
        claimed: BlockBitmap::new(g.block_count),
        written: BlockBitmap::new(g.block_count),
        resumed: 0,
        resumed_bytes: 0,
        skipped_blocks: AtomicU64::new(0),
        skipped_bytes: AtomicU64::new(0),
        zeros: BlockBitmap::new(g.block_count),
        resumed_left: None,
        resumed_zero_blocks: AtomicU64::new(0),
        resumed_zero_bytes: AtomicU64::new(0),
    };
    let c = WorkerCounters::default();
    // Nothing read yet: blocks 0..3 fit, block 5 is refused unclaimed.
    let put = |i: u64, v: u8| img.write_block(i, &[v; 100], None, &c, None);
    assert_eq!(missing_in_window(&img), vec![(0, 3)]);
    assert_eq!(put(5, 5), Landed::Refused);
    assert!(!img.claimed.contains(5));
    assert_eq!(put(1, 1), Landed::Written);
    assert_eq!(put(2, 2), Landed::Written);
    assert_eq!(missing_in_window(&img), vec![(0, 1)]);
    assert_eq!(put(0, 0), Landed::Written);
    assert_eq!(put(0, 9), Landed::Duplicate);
    // The window is full and nothing has left: the first block lacking
    // is still asked for, so that the sender's rounds go on.
    assert_eq!(missing_in_window(&img), vec![(3, 4)]);
    img.target.release(0, 300);
    assert_eq!(img.target.as_stream().unwrap().status().refused, 1);
    // A zero run goes in as zeros, as far as the window reaches each
    // time (the sender repeats it in repair rounds).
    let zeros = wire::encode_zeros(1, &g, &[(3, 7)]);
    while !img.claimed.missing_ranges().is_empty() {
        match wire::parse(&zeros[0]) {
            Ok(Packet::Zeros { runs, .. }) => img.zero_runs(runs, None).unwrap(),
            _ => panic!("a zero-run packet"),
        }
        img.target.release(0, 1000);
        std::thread::yield_now();
    }
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        rx.read_to_end(&mut got).unwrap();
        got
    });
    assert_eq!(img.target.sha256().unwrap(), {
        use sha2::Digest;
        let mut want = [[0u8; 100], [1; 100], [2; 100]].concat();
        want.resize(1000, 0);
        <[u8; 32]>::from(sha2::Sha256::digest(&want))
    });
    drop(img);
    assert_eq!(reader.join().unwrap().len(), 1000);
}

#[test]
fn expected_session_filters_and_a_second_digest_is_counted_not_fatal() {
    let (t, _) = setup("filter", Some(7));
    let g = Geometry::new(100, 100);
    let c = t.counters(0);
    t.ingest(&encode_data(8, &g, 0, &[1; 100]), c);
    assert!(
        t.image().is_none(),
        "a foreign session must not open the target"
    );
    assert_eq!(
        c.drops[DropReason::ForeignSession as usize].load(Ordering::Relaxed),
        1
    );
    let mut ctl = Control::new([1; 32], 0, 2);
    t.ingest(&encode_control(Kind::Announce, 7, &g, &ctl), c);
    t.ingest(&encode_control(Kind::End, 7, &g, &ctl), c);
    assert!(!t.final_pass_ended());
    assert_eq!(t.first_pass_missing(), Some(1));
    assert_eq!(t.digest(), Some([1; 32]));
    // Another digest (a forgery, whoever's it is) is counted, and
    // neither taken nor fatal: the read-back decides.
    ctl.digest = [2; 32];
    for _ in 0..3 {
        t.ingest(&encode_control(Kind::Announce, 7, &g, &ctl), c);
    }
    assert!(t.failure().is_none());
    assert_eq!(t.digest(), Some([1; 32]));
    assert_eq!(
        c.drops[DropReason::Inconsistent as usize].load(Ordering::Relaxed),
        3
    );
}

#[test]
fn one_forged_control_packet_sets_nothing_and_final_is_taken_back() {
    let (t, _) = setup("corroborate", None);
    let g = Geometry::new(300, 100);
    let c = t.counters(0);
    let real = Control {
        flags: wire::FLAG_REPAIR,
        repair_port: 5000,
        ..Control::new([1; 32], 0, 1)
    };
    let redirect = Control {
        repair_port: 666,
        ..real
    };
    // One forged announce first: neither digest nor repair address.
    t.ingest(&encode_control(Kind::Announce, 7, &g, &redirect), c);
    assert!(t.last_control().is_none() && t.digest().is_none());
    for _ in 0..2 {
        t.ingest(&encode_control(Kind::Announce, 7, &g, &real), c);
    }
    assert_eq!(t.last_control().unwrap().repair_port, 5000);
    // Redirects every so often, and a forged FINAL end in the window.
    t.ingest(&encode_control(Kind::Announce, 7, &g, &redirect), c);
    let fin = Control {
        flags: real.flags | wire::FLAG_FINAL,
        ..real
    };
    t.ingest(&encode_control(Kind::End, 7, &g, &fin), c);
    assert_eq!(t.last_control().unwrap().repair_port, 5000);
    assert!(t.final_pass_ended());
    // The sender's next end (a reminder of the round) takes it back.
    t.ingest(&encode_control(Kind::End, 7, &g, &real), c);
    assert!(!t.final_pass_ended());
    assert!(t.failure().is_none());
}

#[test]
fn a_confirmation_silences_a_group_for_a_while() {
    let (t, _) = setup("confirm", None);
    let g = Geometry::new(1000, 100);
    let c = t.counters(0);
    t.ingest(&encode_data(7, &g, 0, &[1; 100]), c);
    // Groups of 5 blocks: group 0 has one block, group 1 none.
    let h = wire::ConfirmHeader {
        round: 0,
        group_size: 5,
        receivers: 1,
        flags: 0,
    };
    t.ingest(&wire::encode_confirm(7, &g, &h, &[(0, 5), (1, 5)]), c);
    let n = t.needs(5, 0, 100);
    assert_eq!((n.parity.len(), n.silenced), (0, 1));
    assert_eq!(n.ranges, vec![(5, 5)]);
    // A second window of round 0 (four sends of its end): the
    // confirmation counts no more.
    let end = encode_control(Kind::End, 7, &g, &Control::new([1; 32], 0, 1));
    for _ in 0..crate::core::gaps::SILENCE_ENDS {
        t.ingest(&end, c);
        t.ingest(&end, c);
        std::thread::sleep(Duration::from_millis(25));
    }
    let n = t.needs(5, 0, 100);
    assert_eq!((n.parity, n.silenced), (vec![(0, 4)], 0));
}

#[test]
fn zero_runs_an_earlier_run_made_show_as_skipped_once() {
    let (_, path) = setup("resumed-zeros", None);
    let g = Geometry::new(5000, 1000);
    std::fs::write(&path, vec![0; 5000]).unwrap();
    let resume = resume::default_path(&path);
    // Blocks 1 and 2 (a zero run the killed run made) and 4 are on disk.
    resume::save(&resume, 3, &g, &[0b10110]).unwrap();
    let t = Transfer::new(path.clone(), None, 1).with_resume(Some(resume.clone()));
    let c = t.counters(0);
    let list = wire::encode_zeros(3, &g, &[(1, 2)]);
    t.ingest(&list[0], c);
    t.ingest(&list[0], c);
    let split = |rb, sb| DoneSplit {
        resumed_blocks: rb,
        resumed_bytes: rb * 1000,
        skipped_blocks: sb,
        skipped_bytes: sb * 1000,
    };
    assert_eq!(t.resumed_and_skipped(), split(1, 2));
    assert_eq!(t.blocks_done(), 3);
    // A longer list: block 0 is zeroed now, 1 and 2 are counted once.
    t.ingest(&wire::encode_zeros(3, &g, &[(0, 3)])[0], c);
    assert_eq!(t.resumed_and_skipped(), split(1, 3));
    assert_eq!(t.blocks_done(), 4);
    assert_eq!(t.resumed_blocks(), 3);
    std::fs::remove_file(&resume).unwrap();
}

#[test]
fn resumed_blocks_count_in_bytes_and_an_unwritable_resume_file_only_warns() {
    let (_, path) = setup("resumed", None);
    let data = image_bytes(2500);
    let g = Geometry::new(data.len() as u64, 1000);
    let resume = resume::default_path(&path);
    // Blocks 0 and 2 (the short last one, 500 bytes) are on disk already.
    resume::save(&resume, 3, &g, &[0b101]).unwrap();
    let t = Transfer::new(path.clone(), None, 1).with_resume(Some(resume.clone()));
    let c = t.counters(0);
    t.ingest(&encode_data(3, &g, 1, &data[1000..2000]), c);
    assert_eq!((t.resumed_blocks(), t.resumed_bytes()), (2, 1500));
    assert_eq!(t.blocks_done(), 3);
    std::fs::remove_file(&resume).unwrap();
    drop(t);

    // A resume file that cannot be written (here: its directory is
    // gone; a full filesystem takes the same path) degrades with a
    // warning; the transfer goes on.
    let t = Transfer::new(path, None, 1)
        .with_resume(Some(PathBuf::from("/nonexistent-dir/img.xdpcast-resume")));
    t.ingest(&encode_data(3, &g, 0, &data[..1000]), t.counters(0));
    assert!(t.save_resume().is_ok());
    assert!(t.resume_failed());
    assert!(t.failure().is_none());
}

/// Manifest of session 5: `g`, `digest` (all zero: in the signed
/// ends), one pass, chunks of two blocks.
fn test_manifest(g: Geometry, digest: [u8; 32], issued_at: u64) -> Manifest {
    Manifest {
        digest,
        issued_at,
        ..Manifest::new(5, g, 2)
    }
}

/// A signed transfer (key [9; 32]) with `max_age` and `max_skew`, and
/// a genuinely signed manifest head for it dated `offset` seconds from
/// now (negative: in the past).
fn dated_manifests(
    name: &str,
    max_age: Option<Duration>,
    max_skew: Option<Duration>,
) -> (Transfer, PathBuf, impl Fn(i64) -> Vec<u8>) {
    use ed25519_dalek::SigningKey;
    let (t, path) = setup(name, None);
    let _ = std::fs::remove_file(&path);
    let key = SigningKey::from_bytes(&[9; 32]);
    let t = t
        .with_trust(vec![key.verifying_key()], None)
        .with_max_manifest_age(max_age)
        .with_max_clock_skew(max_skew);
    let data = image_bytes(1000);
    let g = Geometry::new(data.len() as u64, 100);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let head = move |offset: i64| {
        let m = test_manifest(g, [4; 32], now.saturating_add_signed(offset));
        wire::encode_raw(Kind::Manifest, 5, &g, 0, &m.sign(&key))
    };
    (t, path, head)
}

#[test]
fn a_replayed_old_manifest_opens_nothing() {
    let (t, path, head) = dated_manifests("replay", Some(Duration::from_secs(3600)), None);
    let c = t.counters(0);
    // Genuinely signed, two hours ago: a replay, nothing opened.
    t.ingest(&head(-7200), c);
    assert!(t.image().is_none() && !path.exists());
    assert_eq!(
        c.drops[DropReason::ForeignSession as usize].load(Ordering::Relaxed),
        1
    );
    // Signed a minute ago, or ahead of this clock: taken.
    t.ingest(&head(60), c);
    assert!(t.image().is_some());
}

#[test]
fn a_manifest_dated_beyond_the_clock_skew_opens_nothing() {
    use crate::receive::request::{DEFAULT_MAX_CLOCK_SKEW, DEFAULT_MAX_MANIFEST_AGE};
    let (t, path, head) = dated_manifests(
        "future",
        Some(DEFAULT_MAX_MANIFEST_AGE),
        Some(DEFAULT_MAX_CLOCK_SKEW),
    );
    let c = t.counters(0);
    // Genuinely signed, dated an hour ahead: refused like a replay.
    t.ingest(&head(3600), c);
    assert!(t.image().is_none() && !path.exists());
    assert!(t.signed().is_none() && !t.complete() && t.digest().is_none());
    assert_eq!(
        c.drops[DropReason::ForeignSession as usize].load(Ordering::Relaxed),
        1
    );
    // A minute ahead is within the skew: taken.
    t.ingest(&head(60), c);
    assert!(t.image().is_some() && path.exists());
    assert_eq!(t.digest(), Some([4; 32]));
    let _ = std::fs::remove_file(&path);

    // With the bound off (--max-clock-skew 0), ten years ahead is
    // taken: its age is 0.
    let (t, path, head) = dated_manifests("future-any", Some(DEFAULT_MAX_MANIFEST_AGE), None);
    let c = t.counters(0);
    t.ingest(&head(10 * 365 * 86400), c);
    assert!(t.image().is_some() && path.exists());
    assert_eq!(
        c.drops[DropReason::ForeignSession as usize].load(Ordering::Relaxed),
        0
    );
    let _ = std::fs::remove_file(&path);
}

/// Wait for work another thread does (the staging writer's checks);
/// no time is asserted: the deadline only ends a hung test.
fn wait_until(done: impl Fn() -> bool) {
    let until = std::time::Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(std::time::Instant::now() < until, "never happened");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn signed_session_writes_nothing_unverified_and_rejects_forged_chunks() {
    signed_session(false);
}

#[test]
fn signed_checks_run_on_the_pool_with_the_same_outcome() {
    signed_session(true);
}

/// A signed transfer (key [9; 32]) named `name`, its target not there
/// yet; with `pooled` (as under a data path) its checks run on the
/// checking pool and the calling thread acts as a worker.
fn signed_transfer(
    name: &str,
    pooled: bool,
) -> (Arc<Transfer>, PathBuf, ed25519_dalek::SigningKey) {
    let (t, path) = setup(name, None);
    let _ = std::fs::remove_file(&path);
    let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let t = Arc::new(t.with_trust(vec![key.verifying_key()], None));
    if pooled {
        t.start_helpers(Arc::downgrade(&t));
        crate::receive::workers::act_as_worker();
    }
    (t, path, key)
}

/// A signed session fed by hand, its signature checks on the calling
/// thread or (`pooled`, as under a data path) on the checking pool.
fn signed_session(pooled: bool) {
    use ed25519_dalek::SigningKey;
    let (t, path, key) = signed_transfer(if pooled { "signed-pool" } else { "signed" }, pooled);
    // Every check queued so far has run.
    let settled = || wait_until(|| t.checks_counts().0 == t.checks_counts().1);
    let t = &*t;
    let data = image_bytes(10 * 100 - 30);
    let g = Geometry::new(data.len() as u64, 100);
    // A sender that hashes as it sends: the digest comes in the end.
    let m = test_manifest(g, [0; 32], 0);
    let c = t.counters(0);
    let d = |r: DropReason| c.drops[r as usize].load(Ordering::Relaxed);
    let block = |i: u64| {
        let o = g.offset(i) as usize;
        encode_data(5, &g, i, &data[o..o + g.block_len(i)])
    };
    let raw = |kind, index, payload: &[u8]| wire::encode_raw(kind, 5, &g, index, payload);
    // Before a verified manifest: nothing is opened, whatever arrives.
    t.ingest(&block(0), c);
    t.ingest(
        &encode_control(Kind::Announce, 5, &g, &Control::new([1; 32], 0, 1)),
        c,
    );
    let forger = SigningKey::from_bytes(&[7; 32]);
    t.ingest(&raw(Kind::Manifest, 0, &m.sign(&forger)), c);
    settled();
    assert!(t.image().is_none() && !path.exists());
    assert_eq!(d(DropReason::Unauthenticated), 3);
    t.ingest(&raw(Kind::Manifest, 0, &m.sign(&key)), c);
    settled();
    assert!(t.image().is_some());
    assert_eq!(t.digest(), None);
    // Unsigned control and forged ends are ignored.
    let fin = Control {
        flags: wire::FLAG_FINAL,
        ..Control::new([1; 32], 0, 1)
    };
    t.ingest(&encode_control(Kind::End, 5, &g, &fin), c);
    t.ingest(
        &raw(
            Kind::SignedEnd,
            0,
            &m.sign_end(&forger, 0, wire::FLAG_FINAL, &[1; 32]),
        ),
        c,
    );
    settled();
    assert!(!t.final_pass_ended() && t.digest().is_none());
    assert_eq!(d(DropReason::Unauthenticated), 5);
    // A forged block lands first in chunk 1 (blocks 2, 3).
    t.ingest(&encode_data(5, &g, 3, &[0xEE; 100]), c);
    for i in 0..g.block_count {
        t.ingest(&block(i), c);
    }
    // The staging writer hashes each chunk once it is complete, on its
    // own thread (chunks of 200 bytes: every one but the last, 170).
    let img = t.image().unwrap().clone();
    let checked = || {
        img.target
            .store_counters()
            .unwrap()
            .chunks_checked
            .load(Ordering::Relaxed)
    };
    wait_until(|| checked() == m.chunk_count());
    assert_eq!(t.signed().unwrap().verified_chunks(), 0);
    // Pages arrive after the blocks: hashes are compared then. A page
    // signed by another key is dropped and does not shadow the real one;
    // a repeat of a verified page is a duplicate, an altered one forged.
    t.ingest(&raw(Kind::Manifest, 0, &m.page_of(&forger, 0, &data)), c);
    settled();
    assert_eq!(d(DropReason::Unauthenticated), 6);
    for p in 0..m.page_count() {
        t.ingest(&raw(Kind::Manifest, p, &m.page_of(&key, p, &data)), c);
    }
    settled();
    let dup = d(DropReason::Duplicate);
    t.ingest(&raw(Kind::Manifest, 0, &m.page_of(&key, 0, &data)), c);
    assert_eq!(d(DropReason::Duplicate), dup + 1);
    let mut altered = m.page_of(&key, 0, &data);
    altered[4] ^= 1;
    t.ingest(&raw(Kind::Manifest, 0, &altered), c);
    settled();
    assert_eq!(d(DropReason::Unauthenticated), 7);
    assert_eq!(t.signed().unwrap().bad_chunks(), 1);
    assert!(!t.complete());
    assert_eq!(t.missing_ranges(10), vec![(2, 2)]);
    assert_eq!(t.blocks_done(), g.block_count - 2);
    // With its page known, a chunk with a forged block is refused
    // before it is written: the target keeps what it had there.
    t.ingest(&encode_data(5, &g, 2, &[0xDD; 100]), c);
    t.ingest(&block(3), c);
    wait_until(|| t.signed().unwrap().bad_chunks() == 2);
    t.image().unwrap().target.flush().unwrap();
    assert!(!std::fs::read(&path).unwrap()[200..300].contains(&0xDD));
    assert_eq!(t.missing_ranges(10), vec![(2, 2)]);
    t.ingest(&block(2), c);
    t.ingest(&block(3), c);
    let signed = t.signed().unwrap();
    wait_until(|| signed.verified_chunks() == m.chunk_count());
    // No byte was read back from the target to check a chunk.
    let st = img.target.store_counters().unwrap();
    assert_eq!(st.bytes_read_back.load(Ordering::Relaxed), 0);
    assert_eq!(t.blocks_done(), g.block_count);
    // Every chunk verified, but not complete before the signer has
    // given the image's SHA-256.
    assert!(!t.complete());
    let sha: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&data).into();
    t.ingest(
        &raw(
            Kind::SignedEnd,
            0,
            &m.sign_end(&key, 0, wire::FLAG_FINAL, &sha),
        ),
        c,
    );
    settled();
    assert!(t.final_pass_ended() && t.complete());
    assert_eq!(t.digest(), Some(sha));
    t.image().unwrap().target.flush().unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), data);
    assert!(t.failure().is_none());
    // The signer naming another digest later is a protocol error.
    t.ingest(
        &raw(Kind::SignedEnd, 0, &m.sign_end(&key, 1, 0, &[5; 32])),
        c,
    );
    settled();
    assert_eq!(t.failure().map(|e| e.code), Some(ErrorCode::ProtocolError));
    // Pooled: the two heads, the forged page and the real pages, and the
    // three ends ran there (copies of a verified page are compared here).
    let (queued, ran) = t.checks_counts();
    assert_eq!(queued, ran);
    if pooled {
        assert_eq!(ran, 2 + 1 + m.page_count() + 3);
    } else {
        assert_eq!(ran, 0);
    }
}

/// How many receivers lack much (the sender's hint for receivers with a
/// web server) is taken from a verified signed end only: an unsigned end
/// or one signed by another key cannot set it in a signed session.
#[test]
fn a_signed_session_takes_the_fleet_hint_from_verified_ends_only() {
    use ed25519_dalek::SigningKey;
    let (t, path) = setup("signed-fleet-hint", None);
    let _ = std::fs::remove_file(&path);
    let key = SigningKey::from_bytes(&[9; 32]);
    let t = t.with_trust(vec![key.verifying_key()], None);
    let g = Geometry::new(1000, 100);
    let m = test_manifest(g, [0; 32], 0);
    let c = t.counters(0);
    let raw = |kind, payload: &[u8]| wire::encode_raw(kind, 5, &g, 0, payload);
    t.ingest(&raw(Kind::Manifest, &m.sign(&key)), c);
    assert_eq!(t.last_control().unwrap().lacking(), None);
    // A forger says "few lack much", unsigned and signed by its own key.
    let few = wire::fleet_flags(1, 100);
    let forged = Control {
        flags: wire::FLAG_REPAIR | few,
        ..Control::new([0; 32], 0, 1)
    };
    t.ingest(&encode_control(Kind::End, 5, &g, &forged), c);
    let other = SigningKey::from_bytes(&[8; 32]);
    t.ingest(
        &raw(Kind::SignedEnd, &m.sign_end(&other, 0, few, &[0; 32])),
        c,
    );
    assert_eq!(t.last_control().unwrap().lacking(), None);
    assert_eq!(t.passes_seen(), 0);
    // The sender: 60 of 100 lack much; its FINAL and hint are taken, the
    // group-size bits are not (the manifest's flags stand).
    let many = wire::fleet_flags(60, 100) | wire::gsize_flags(100);
    t.ingest(
        &raw(Kind::SignedEnd, &m.sign_end(&key, 0, many, &[0; 32])),
        c,
    );
    let l = t.last_control().unwrap().lacking().unwrap();
    assert_eq!(l.receivers, 60);
    assert!((l.share - 0.6).abs() < 1.0 / 255.0, "{l:?}");
    assert_eq!(t.last_control().unwrap().gsize_log2(), 0);
    assert_eq!(t.passes_seen(), 1);
    assert!(t.failure().is_none());
    let _ = std::fs::remove_file(&path);
}

#[test]
fn signed_end_digest_other_than_the_pinned_one_fails() {
    use ed25519_dalek::SigningKey;
    let (t, path) = setup("signed-pinned", None);
    let _ = std::fs::remove_file(&path);
    let key = SigningKey::from_bytes(&[9; 32]);
    let t = t.with_trust(vec![key.verifying_key()], Some([1; 32]));
    let g = Geometry::new(1000, 100);
    let m = test_manifest(g, [0; 32], 0);
    let c = t.counters(0);
    let raw = |kind, payload: &[u8]| wire::encode_raw(kind, 5, &g, 0, payload);
    // The head cannot be checked against the pin: it names no digest.
    t.ingest(&raw(Kind::Manifest, &m.sign(&key)), c);
    assert!(t.signed().is_some() && t.failure().is_none());
    t.ingest(&raw(Kind::SignedEnd, &m.sign_end(&key, 0, 0, &[4; 32])), c);
    assert_eq!(t.failure().map(|e| e.code), Some(ErrorCode::DigestMismatch));
    let _ = std::fs::remove_file(&path);
}

#[test]
fn a_signed_end_with_the_root_is_taken_unless_a_sha256_is_pinned() {
    use ed25519_dalek::SigningKey;
    let key = SigningKey::from_bytes(&[9; 32]);
    let g = Geometry::new(1000, 100);
    let m = test_manifest(g, [0; 32], 0);
    let raw = |kind, payload: &[u8]| wire::encode_raw(kind, 5, &g, 0, payload);
    let root = m.sign_end(&key, 0, wire::FLAG_ROOT, &[4; 32]);
    for pinned in [None, Some([1; 32])] {
        let (t, path) = setup("signed-root", None);
        let _ = std::fs::remove_file(&path);
        let t = t.with_trust(vec![key.verifying_key()], pinned);
        let c = t.counters(0);
        t.ingest(&raw(Kind::Manifest, &m.sign(&key)), c);
        t.ingest(&raw(Kind::SignedEnd, &root), c);
        let s = t.signed().unwrap();
        match pinned {
            // The root is no SHA-256: the image has none to report.
            None => {
                assert!(t.failure().is_none());
                assert_eq!(
                    (s.root(), s.digest(), t.digest()),
                    (Some([4; 32]), None, None)
                );
            }
            // A pinned SHA-256 cannot be checked against a root.
            Some(_) => assert_eq!(t.failure().map(|e| e.code), Some(ErrorCode::DigestMismatch)),
        }
        let _ = std::fs::remove_file(&path);
    }
}

#[test]
fn pinned_digest_drops_other_announces_instead_of_failing() {
    let (t, _) = setup("pinned", None);
    let t = t.with_trust(Vec::new(), Some([1; 32]));
    let g = Geometry::new(100, 100);
    let c = t.counters(0);
    t.ingest(
        &encode_control(Kind::Announce, 7, &g, &Control::new([2; 32], 0, 1)),
        c,
    );
    assert_eq!(t.digest(), Some([1; 32]));
    assert!(t.failure().is_none());
    assert_eq!(
        c.drops[DropReason::ForeignSession as usize].load(Ordering::Relaxed),
        1
    );
}

#[test]
fn unopenable_target_fails_the_transfer() {
    let t = Transfer::new(PathBuf::from("/nonexistent-dir/img"), None, 1);
    let g = Geometry::new(100, 100);
    t.ingest(&encode_data(1, &g, 0, &[1; 100]), t.counters(0));
    assert_eq!(t.failure().unwrap().code, ErrorCode::TargetIo);
    assert_eq!(t.blocks_done(), 0);
}

#[test]
fn signed_zero_runs_are_applied_only_when_the_session_key_signed_them() {
    signed_zero_runs(false);
}

#[test]
fn signed_zero_runs_are_verified_on_the_pool() {
    signed_zero_runs(true);
}

/// Issue 21 (b): in a signed session a zero-run packet without a
/// signature, or signed by another key, or moved to another place in the
/// list, zeroes nothing and is counted as unauthenticated; the sender's
/// own is applied.
fn signed_zero_runs(pooled: bool) {
    use ed25519_dalek::SigningKey;
    let (t, path, key) = signed_transfer(if pooled { "zeros-pool" } else { "zeros" }, pooled);
    let settled = || wait_until(|| t.checks_counts().0 == t.checks_counts().1);
    let g = Geometry::new(10 * 100 - 30, 100);
    let m = test_manifest(g, [0; 32], 0);
    let c = t.counters(0);
    let unauthenticated = || c.drops[DropReason::Unauthenticated as usize].load(Ordering::Relaxed);
    t.ingest(
        &wire::encode_raw(Kind::Manifest, 5, &g, 0, &m.sign(&key)),
        c,
    );
    settled();
    assert!(t.image().is_some());
    let signed_by = |k: &SigningKey, seq: u64| {
        let mut p = wire::encode_zeros(5, &g, &[(2, 3)]).remove(0);
        let sig = m.sign_zeros(k, seq, &p[wire::HEADER_LEN..]);
        wire::append_signature(&mut p, &sig);
        p
    };
    let forger = SigningKey::from_bytes(&[7; 32]);
    let forged = [
        wire::encode_zeros(5, &g, &[(2, 3)]).remove(0),
        signed_by(&forger, 0),
        // Genuine signature, but made for packet 1 of the list.
        signed_by(&key, 1),
    ];
    for (i, p) in forged.iter().enumerate() {
        t.ingest(p, c);
        settled();
        assert_eq!(unauthenticated(), i as u64 + 1, "forgery {i}");
        assert_eq!(t.blocks_done(), 0, "forgery {i} zeroed nothing");
    }
    t.ingest(&signed_by(&key, 0), c);
    settled();
    assert_eq!(unauthenticated(), 3);
    assert_eq!(t.blocks_done(), 3);
    assert_eq!(t.resumed_and_skipped().skipped_blocks, 3);
    if pooled {
        // The head and the three zero-run packets with a signature ran on
        // the pool (the unsigned one was dropped on the worker).
        assert_eq!(t.checks_counts().1, 1 + 3);
    }
    let _ = std::fs::remove_file(&path);
}
