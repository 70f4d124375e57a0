//! Many receivers on one bridge, each dropping 5% of its frames in its own
//! XDP program: parity repair with NACK suppression brings every one to
//! SUCCESS, the sender's final table lists each of them, and a receiver
//! killed mid-transfer is listed as vanished.
//!
//! `cargo test --release --test fleet -- --ignored --nocapture` prints the
//! figures of docs/reliability.md (repair and request packets of 24
//! receivers against one receiver with the same loss, and of 1, 16 and 32
//! receivers beside the simulator's).

mod common;

use std::path::Path;
use std::process::Child;
use std::time::Duration;

use common::*;
use xdpcast::status::page::{Role, SendPhase, State};
use xdpcast::ErrorCode;

const MIB: usize = 1 << 20;
const GROUP: &str = "239.8.8.8:5000";
/// 5% of each receiver's frames, dropped by its own XDP program.
const LOSS_PPM: &str = "50000";

/// What the sender did, from its summary line.
#[derive(Debug, Clone, Copy)]
struct Figures {
    repair_packets: u64,
    /// "repair: N data and symbol packets sent", when requests came in.
    repair_line_packets: Option<u64>,
    nacks: u64,
    parity_requests: u64,
    rounds: u64,
    /// Blocks the receivers missed when the pass ended, per 10 000 blocks
    /// (mean over the receivers): the loss the repair had to make up.
    loss_bp: u64,
}

impl Figures {
    fn requests(&self) -> u64 {
        self.nacks + self.parity_requests
    }

    /// "... N repair round(s) of P packets for A NACKs and B parity requests ..."
    fn parse(out: &str) -> Figures {
        let line = out
            .lines()
            .find(|l| l.starts_with("sent "))
            .unwrap_or_else(|| panic!("no summary line in {out}"));
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = |w: &str| {
            words
                .iter()
                .position(|x| *x == w)
                .unwrap_or_else(|| panic!("{w} in {line}"))
        };
        let word_before = |w: &str| -> u64 { words[at(w) - 1].parse().unwrap() };
        Figures {
            rounds: word_before("repair"),
            repair_packets: words[at("round(s)") + 2].parse().unwrap(),
            nacks: word_before("NACKs"),
            parity_requests: word_before("parity"),
            repair_line_packets: out
                .lines()
                .find_map(|l| l.strip_prefix("repair: "))
                .map(|l| l.split(' ').next().unwrap().parse().unwrap()),
            loss_bp: 0,
        }
    }
}

fn receiver(host: &Host, dir: &Path, name: &str, extra: &[&str]) -> Child {
    let out = dir.join(format!("{name}.img"));
    let mut args = vec![
        "--iface",
        &host.iface,
        "--out",
        out.to_str().unwrap(),
        "--mode",
        "xdp",
        "--inject-loss",
        LOSS_PPM,
    ];
    args.extend_from_slice(extra);
    start_receiver(xdpcast(&host.ns), dir, name, GROUP, &args)
}

fn ok(out: &std::process::Output, what: &str) -> String {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// `n` lossy receivers (plus a victim killed mid-transfer when `victim`)
/// get a `mib` MiB image; every survivor must verify it.
fn fleet(n: usize, mib: usize, victim: bool, extra: &[&str]) -> (Figures, String) {
    let lan = Lan::new(n + 2);
    let dir = TempDir::new("xdpc-fleet");
    let src = dir.join("src.img");
    make_image(&src, mib * MIB, 61);
    let names: Vec<String> = (0..n).map(|i| format!("rx{i:02}")).collect();
    let rxs: Vec<Child> = names
        .iter()
        .zip(&lan.hosts[2..])
        .map(|(name, host)| receiver(host, &dir.0, name, &[]))
        .collect();
    let mut victim_rx = victim.then(|| receiver(&lan.hosts[1], &dir.0, "victim", &[]));
    let expected = (n + usize::from(victim)).to_string();
    let mut args = vec![
        "--min-receivers",
        &expected,
        "--start-timeout",
        "60",
        "--vanish-after",
        "2",
    ];
    args.extend_from_slice(extra);
    let metrics_file = dir.join("tx.prom");
    let mut c = xdpcast(&lan.hosts[0].ns);
    c.env("XDPCAST_STATUS_DIR", &dir.0)
        .args(["send", src.to_str().unwrap(), "--group", GROUP])
        .args([
            "--iface",
            &lan.hosts[0].iface,
            "--name",
            "tx",
            "--keep-status",
        ])
        .args(["--metrics-file", metrics_file.to_str().unwrap()])
        .args(&args);
    let tx = spawn(c);
    if let Some(v) = victim_rx.as_mut() {
        wait_for(Duration::from_secs(60), "the victim's first blocks", || {
            (read_page(&dir.0, "victim").blocks_done > 200).then_some(())
        });
        // Every receiver reported before the first pass (--min-receivers).
        let s = read_page(&dir.0, "tx");
        assert_eq!((s.role, s.state), (Role::Sender, State::InProgress));
        assert_eq!(s.sender.receivers_known, n as u64 + 1, "{:?}", s.sender);
        v.kill().unwrap();
        v.wait().unwrap();
    }
    let tx_out = wait_output(tx, Duration::from_secs(240), "sender");
    let table = ok(&tx_out, "sender");
    eprintln!("{table}");
    let mut figures = Figures::parse(&table);
    sender_page_and_metrics(&dir.0, n, victim, &figures);
    let want = sha256_hex(&src);
    let blocks = (mib * MIB).div_ceil(1400) as u64;
    let mut missed = 0;
    for (name, rx) in names.iter().zip(rxs) {
        ok(&wait_output(rx, Duration::from_secs(60), name), name);
        assert_eq!(
            sha256_hex(&dir.join(&format!("{name}.img"))),
            want,
            "{name}"
        );
        let s = read_page(&dir.0, name);
        assert_eq!(
            (s.state, s.error),
            (State::Success, ErrorCode::None),
            "{name}"
        );
        missed += s.first_pass_missing;
    }
    figures.loss_bp = missed * 10_000 / (n as u64 * blocks);
    (figures, table)
}

/// The sender's status page (kept with --keep-status), the metrics that
/// `xdpcast metrics` serves from it and the --metrics-file say what the
/// summary line said: every receiver known, `n` finished, the victim
/// vanished, the repair sent and the requests taken.
fn sender_page_and_metrics(status: &Path, n: usize, victim: bool, f: &Figures) {
    let s = read_page(status, "tx");
    assert_eq!((s.role, s.state), (Role::Sender, State::Success));
    let x = s.sender;
    let v = u64::from(victim);
    assert_eq!(
        (
            x.receivers_known,
            x.finished,
            x.failed,
            x.vanished,
            x.receiving
        ),
        (n as u64 + v, n as u64, 0, v, 0),
        "{x:?}"
    );
    assert_eq!(x.phase, SendPhase::Done);
    assert_eq!(x.repair_packets, f.repair_packets, "{x:?}");
    assert_eq!((x.nacks, x.parity_requests), (f.nacks, f.parity_requests));
    assert!(x.repair_bytes >= x.repair_packets * 1000, "{x:?}");
    // `bytes_sent` counts every data and symbol payload, repairs included
    // (the image has no zero blocks and the sender loses nothing itself).
    assert!(
        x.bytes_sent >= s.total_bytes + x.repair_bytes,
        "{x:?} for {} bytes",
        s.total_bytes
    );
    if let Some(sent) = f.repair_line_packets {
        assert_eq!(sent, x.repair_packets, "the log's repair line and the page");
    }
    let want = [
        format!(
            "xdpcast_sender_receivers_known{{session=\"tx\"}} {}",
            n as u64 + v
        ),
        format!("xdpcast_sender_receivers{{session=\"tx\",state=\"finished\"}} {n}"),
        format!("xdpcast_sender_receivers{{session=\"tx\",state=\"vanished\"}} {v}"),
        format!(
            "xdpcast_sender_repair_bytes_total{{session=\"tx\"}} {}",
            x.repair_bytes
        ),
        "xdpcast_sender_state{session=\"tx\"} 2".to_string(),
    ];
    let (mut server, addr) = start_metrics(status, &["--once"]);
    let served = scrape(&addr);
    server.wait().unwrap();
    let file = std::fs::read_to_string(status.join("tx.prom")).unwrap();
    for w in &want {
        assert!(served.lines().any(|l| l == w), "{w} not served:\n{served}");
        assert!(file.lines().any(|l| l == w), "{w} not in the file:\n{file}");
    }
}

/// The row of `name` in the sender's table.
fn row<'a>(table: &'a str, name: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(name))
        .unwrap_or_else(|| panic!("{name} is not in the sender's table:\n{table}"))
}

#[test]
fn lossy_receivers_all_finish_and_the_sender_lists_each() {
    if !netns_allowed() {
        return;
    }
    let n = 24;
    // Slow enough (about 1 s a pass) to kill the victim half-way.
    let (f, table) = fleet(n, 4, true, &["--rate", "32M"]);
    all_finished_within_a_fifth(&f, &table, n);
    assert!(row(&table, "victim").contains(" vanished "), "{table}");
    assert!(table.contains(&format!(
        "receivers: {} known, {n} finished, 0 failed, 1 vanished",
        n + 1
    )));
    // Without suppression every receiver would ask at least once per
    // round; with it, fewer ask than there are receivers.
    assert!(f.requests() < n as u64, "{f:?}");
}

/// Every one of `n` receivers of a 4 MiB image listed finished with all of
/// it, and loose bounds on the repair: resending every block some receiver
/// lost would take 1 - 0.95^24 = 71% of the image; parity repair costs
/// about the worst receiver's loss per group (5% each, 7-8% of the
/// image), bounded here at 20%.
fn all_finished_within_a_fifth(f: &Figures, table: &str, n: usize) {
    for i in 0..n {
        let r = row(table, &format!("rx{i:02}"));
        assert!(r.contains(" finished "), "{r}");
        assert!(r.contains("100.0%"), "{r}");
    }
    let blocks = (4 * MIB / 1400) as u64;
    assert!(f.repair_packets > 0 && f.parity_requests > 0, "{f:?}");
    assert!(f.repair_packets < blocks / 5, "{f:?} for {blocks} blocks");
}

/// 32 receivers on one bridge, each dropping 5% in its own XDP program:
/// every one verifies the image (SHA-256 and SUCCESS, checked in `fleet`)
/// and the sender lists each as finished. Request bound: the simulator
/// (`cargo xtask fleet-sim`, docs/reliability.md) gives about 5 requests
/// in 2 rounds at 32 receivers, against 2 for one receiver; without
/// suppression each of the 32 would ask every round. Bounded here at
/// fewer than a third of the receivers in all (room for the extra loss a
/// loaded machine adds in the receivers' rings).
#[test]
fn thirty_two_lossy_receivers_all_finish_with_few_requests() {
    if !netns_allowed() {
        return;
    }
    let n = 32;
    let (f, table) = fleet(n, 4, false, &["--rate", "32M"]);
    all_finished_within_a_fifth(&f, &table, n);
    assert!(f.requests() < n as u64 / 3, "{f:?}");
}

/// The netns column of docs/reliability.md's comparison with the
/// simulator: 1, 16 and 32 receivers dropping 5% each, 8 MiB at 20 Mbit/s
/// (as the simulator's image and rate), three runs each; prints sends per
/// block (1 + repair packets / blocks), requests, rounds and requests per
/// round. Not a CI test (minutes); run it with --ignored.
#[test]
#[ignore]
fn figures_beside_the_simulator() {
    if !netns_allowed() {
        return;
    }
    let blocks = (8 * MIB).div_ceil(1400) as f64;
    println!("| receivers | run | mean loss | sends per block | repair packets | requests | rounds | requests per round |");
    println!("|---:|---|---:|---:|---:|---:|---:|---:|");
    for n in [1, 16, 32] {
        for run in 0..3 {
            let (f, _) = fleet(n, 8, false, &["--rate", "20M"]);
            println!(
                "| {n} | {run} | {:.2}% | {:.3} | {} | {} | {} | {:.1} |",
                f.loss_bp as f64 / 100.0,
                1.0 + f.repair_packets as f64 / blocks,
                f.repair_packets,
                f.requests(),
                f.rounds,
                f.requests() as f64 / f.rounds.max(1) as f64
            );
        }
    }
}

/// The figures of docs/reliability.md: one lossy receiver, then 24, each
/// dropping 5% on its own, same image and rate (low, so that the injected
/// loss is the only loss). Not a CI test (it takes minutes); run it with
/// --ignored.
#[test]
#[ignore]
fn figures_for_the_docs() {
    if !netns_allowed() {
        return;
    }
    println!("| repair | run | 1 rx: loss | repair packets | requests | rounds | 24 rx: mean loss | repair packets | requests | rounds | repair ratio | request ratio |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (what, extra) in [("parity", &[][..]), ("ranges", &["--no-parity"][..])] {
        let mut runs = Vec::new();
        for run in 0..RUNS {
            let mut args = vec!["--rate", "20M"];
            args.extend_from_slice(extra);
            let (one, _) = fleet(1, 8, false, &args);
            let (many, _) = fleet(24, 8, false, &args);
            let row = [
                one.loss_bp,
                one.repair_packets,
                one.requests(),
                one.rounds,
                many.loss_bp,
                many.repair_packets,
                many.requests(),
                many.rounds,
            ];
            print_row(what, &run.to_string(), row);
            runs.push(row);
        }
        let median: Vec<u64> = (0..8)
            .map(|i| {
                let mut col: Vec<u64> = runs.iter().map(|r| r[i]).collect();
                col.sort_unstable();
                col[col.len() / 2]
            })
            .collect();
        print_row(what, "median", median.try_into().unwrap());
    }
}

/// Runs of each kind in [`figures_for_the_docs`].
const RUNS: usize = 5;

/// One row of the figures: 1 receiver's first-pass loss, repair packets,
/// requests and rounds, then 24 receivers', then the ratios.
fn print_row(what: &str, run: &str, r: [u64; 8]) {
    let ratio = |a: u64, b: u64| a as f64 / b.max(1) as f64;
    let pct = |bp: u64| format!("{:.2}%", bp as f64 / 100.0);
    println!(
        "| {what} | {run} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {:.2} |",
        pct(r[0]),
        r[1],
        r[2],
        r[3],
        pct(r[4]),
        r[5],
        r[6],
        r[7],
        ratio(r[5], r[1]),
        ratio(r[6], r[2])
    );
}

/// A receiver that loses 80% of its frames is still more than 10% behind
/// after three repair rounds (about 0.8^4 = 41% of the image): the sender tells it it is too slow, it ends
/// with `too_slow` (17), and the other receiver finishes.
/// With `signed`, the session is signed and the receivers trust its key:
/// the verdict is then signed for the slow receiver, which takes no other.
fn too_slow(signed: bool) {
    if !netns_allowed() {
        return;
    }
    let lan = Lan::new(3);
    let dir = TempDir::new("xdpc-slow");
    let src = dir.join("src.img");
    make_image(&src, 4 * MIB, 71);
    let key = keygen(&dir, "site");
    let public = pub_of(&key);
    let trust: &[&str] = if signed { &["--trust", &public] } else { &[] };
    let good = receiver(&lan.hosts[1], &dir.0, "good", trust);
    let out = dir.join("slow.img");
    let slow_args = [
        "--iface",
        &lan.hosts[2].iface,
        "--out",
        out.to_str().unwrap(),
        "--mode",
        "xdp",
        "--inject-loss",
        "800000",
    ]
    .iter()
    .chain(trust)
    .copied()
    .collect::<Vec<_>>();
    let slow = start_receiver(xdpcast(&lan.hosts[2].ns), &dir.0, "slow", GROUP, &slow_args);
    let mut tx_args = vec![
        "--min-receivers",
        "2",
        "--max-behind",
        "10",
        "--max-repair",
        "10",
        "--rate",
        "200M",
    ];
    if signed {
        tx_args.extend(["--sign", key.to_str().unwrap()]);
    }
    let tx = start_sender(
        &lan.hosts[0].ns,
        &lan.hosts[0].iface,
        GROUP,
        &src,
        // A budget for more than three rounds of an 80% loss.
        &tx_args,
    );
    let table = ok(
        &wait_output(tx, Duration::from_secs(120), "sender"),
        "sender",
    );
    ok(&wait_output(good, Duration::from_secs(60), "good"), "good");
    let slow_out = wait_output(slow, Duration::from_secs(60), "slow");
    assert_eq!(
        slow_out.status.code(),
        Some(100 + ErrorCode::TooSlow as i32)
    );
    let s = read_page(&dir.0, "slow");
    assert_eq!((s.state, s.error), (State::Failure, ErrorCode::TooSlow));
    if signed {
        assert!(
            s.message.contains("signed by the session's key"),
            "{}",
            s.message
        );
    }
    assert!(row(&table, "slow").contains("too_slow (17)"), "{table}");
    assert!(row(&table, "good").contains(" finished "), "{table}");
    assert_eq!(sha256_hex(&dir.join("good.img")), sha256_hex(&src));
}

#[test]
fn a_receiver_far_behind_is_told_it_is_too_slow() {
    too_slow(false);
}

#[test]
fn a_signed_receiver_far_behind_takes_the_signed_verdict() {
    too_slow(true);
}
