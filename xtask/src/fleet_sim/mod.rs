//! `cargo xtask fleet-sim`: the real sender and N real receiver state
//! machines (`xdpcast::core`) in one process, in virtual time, over a
//! simulated network; prints per scenario the sends per block, repair
//! packets and requests per round and the rounds to finish, as medians
//! over seeds, and with `--write-docs` puts the table in
//! docs/reliability.md. Needs no root and no namespace, and depends on
//! its seeds only: its figures do not depend on the machine's load.

mod net;
mod world;

use std::fmt::Write as _;
use std::time::Duration;

use net::Loss;
use world::{RxSpec, Setup};

/// Arguments of `cargo xtask fleet-sim`.
#[derive(clap::Args)]
pub struct Args {
    /// Seeds per scenario (the table shows medians over them).
    #[arg(long, default_value_t = 5)]
    seeds: u64,
    /// Small fleets only (up to 100 receivers) and two seeds: a quick look.
    #[arg(long)]
    quick: bool,
    /// Write the table into docs/reliability.md (between its fleet-sim markers).
    #[arg(long)]
    write_docs: bool,
    /// Only the scenarios whose row starts with this (`"independent 5 % | 1000"`).
    #[arg(long)]
    only: Option<String>,
}

const BEGIN: &str = "<!-- fleet-sim table: begin -->";
const END: &str = "<!-- fleet-sim table: end -->";

fn rx(loss: Loss) -> RxSpec {
    RxSpec {
        loss,
        join: 0.0,
        leave: None,
        http: false,
        absent: false,
    }
}

/// A scenario: a name and its receivers.
struct Scenario {
    name: String,
    rxs: Vec<RxSpec>,
    /// Receivers whose finish time is compared with a run without the
    /// others (the slow ones absent).
    compare: Option<Vec<bool>>,
}

fn independent(n: usize) -> Scenario {
    Scenario {
        name: "independent 5 %".into(),
        rxs: vec![rx(Loss::Independent(0.05)); n],
        compare: None,
    }
}

fn bursty(n: usize) -> Scenario {
    let loss = Loss::Bursty {
        mean: 0.05,
        burst: 10.0,
    };
    Scenario {
        name: "bursty 5 % (Gilbert–Elliott, bursts of 10)".into(),
        rxs: vec![rx(loss); n],
        compare: None,
    }
}

/// 2 % of the receivers (every 50th) at 30 % loss, the rest at 1 %.
fn mixed(n: usize, http: bool) -> Scenario {
    let slow: Vec<bool> = (0..n).map(|i| i % 50 == 49).collect();
    let rxs = slow
        .iter()
        .map(|&s| RxSpec {
            http: s && http,
            ..rx(Loss::Independent(if s { 0.30 } else { 0.01 }))
        })
        .collect();
    let how = if http {
        "; the lossy ones with `--http`"
    } else {
        ""
    };
    Scenario {
        name: format!("98 % at 1 %, 2 % at 30 %{how}"),
        rxs,
        compare: Some(slow.iter().map(|s| !s).collect()),
    }
}

/// 10 % join at 40 % of the pass, 10 % leave at half of it, 5 % loss.
fn churn(n: usize) -> Scenario {
    let rxs = (0..n)
        .map(|i| RxSpec {
            join: if i % 10 == 1 { 0.4 } else { 0.0 },
            leave: (i % 10 == 2).then_some(0.5),
            ..rx(Loss::Independent(0.05))
        })
        .collect();
    Scenario {
        name: "5 %, 10 % join at 40 % of the pass, 10 % leave at 50 %".into(),
        rxs,
        compare: None,
    }
}

fn scenarios(quick: bool) -> Vec<(Scenario, usize)> {
    let big = |n: usize| !quick || n <= 100;
    let mut out = Vec::new();
    for n in [1, 16, 32, 100, 1000].into_iter().filter(|&n| big(n)) {
        out.push((independent(n), n));
    }
    for n in [1, 16, 1000].into_iter().filter(|&n| big(n)) {
        out.push((bursty(n), n));
    }
    for n in [100, 1000].into_iter().filter(|&n| big(n)) {
        out.push((mixed(n, false), n));
        out.push((mixed(n, true), n));
    }
    for n in [100, 1000].into_iter().filter(|&n| big(n)) {
        out.push((churn(n), n));
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn range(v: &[f64]) -> (f64, f64) {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo, hi)
}

/// The latest finish among `which` (None if one never finished).
fn last_finish(o: &world::Outcome, which: &[bool]) -> Option<Duration> {
    o.finished
        .iter()
        .zip(which)
        .filter(|(_, &w)| w)
        .map(|(f, _)| *f)
        .try_fold(Duration::ZERO, |m, f| f.map(|f| m.max(f)))
}

/// One row of the table: medians over `seeds` runs.
fn row(s: &Scenario, n: usize, seeds: u64) -> String {
    let setup = Setup::default();
    let blocks = setup.blocks as f64;
    let (mut sends, mut rpr, mut qpr, mut reqs, mut rounds) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut ratio, mut unfinished, mut http) = (Vec::new(), 0, 0);
    for seed in 1..=seeds {
        let o = world::run(setup, &s.rxs, seed);
        let r = f64::from(o.rounds.max(1));
        sends.push((o.pass_packets + o.repair_packets) as f64 / blocks);
        rpr.push(o.repair_packets as f64 / r);
        qpr.push(o.requests as f64 / r);
        reqs.push(o.requests as f64);
        rounds.push(f64::from(o.rounds));
        http += o.http;
        // Receivers present at the end that never had the whole image.
        unfinished += s
            .rxs
            .iter()
            .zip(&o.finished)
            .filter(|(r, f)| r.leave.is_none() && !r.absent && !r.http && f.is_none())
            .count();
        if let Some(good) = &s.compare {
            let alone: Vec<RxSpec> = s
                .rxs
                .iter()
                .zip(good)
                .map(|(&r, &g)| RxSpec { absent: !g, ..r })
                .collect();
            let a = world::run(setup, &alone, seed);
            if let (Some(with), Some(without)) = (last_finish(&o, good), last_finish(&a, good)) {
                ratio.push(with.as_secs_f64() / without.as_secs_f64());
            }
        }
    }
    let (lo, hi) = range(&sends);
    let slow = if s.compare.is_some() {
        let (a, b) = range(&ratio);
        format!("{:.3} ({a:.3}–{b:.3})", median(ratio.clone()))
    } else {
        "".into()
    };
    let mut notes = Vec::new();
    if unfinished > 0 {
        notes.push(format!("{unfinished} receiver runs unfinished"));
    }
    if http > 0 {
        notes.push(format!(
            "{} of {} fetched over HTTP",
            http,
            seeds as usize * n
        ));
    }
    format!(
        "| {} | {n} | {:.3} ({lo:.3}–{hi:.3}) | {:.0} | {:.1} | {:.0} | {:.0} | {slow} | {} |",
        s.name,
        median(sends),
        median(rpr),
        median(qpr),
        median(reqs),
        median(rounds),
        notes.join("; ")
    )
}

/// Run every scenario and print (and maybe write) the table.
pub fn run(args: Args) -> anyhow::Result<()> {
    let seeds = if args.quick { 2 } else { args.seeds.max(1) };
    let mut table = String::new();
    let command = if args.quick {
        "cargo xtask fleet-sim --quick".to_string()
    } else {
        format!("cargo xtask fleet-sim --seeds {seeds} --write-docs")
    };
    let _ = writeln!(
        table,
        "`{command}` (medians over seeds 1–{seeds}; in brackets the lowest and highest run):\n"
    );
    table.push_str("| loss | receivers | sends per block | repair packets per round | requests per round | requests | rounds | others' last finish × alone | notes |\n");
    table.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---|\n");
    println!("{}", table.trim_end());
    for (s, n) in scenarios(args.quick) {
        let key = format!("{} | {n}", s.name);
        if args
            .only
            .as_ref()
            .is_some_and(|o| !key.starts_with(o.as_str()))
        {
            continue;
        }
        let line = row(&s, n, seeds);
        println!("{line}");
        table.push_str(&line);
        table.push('\n');
    }
    if args.write_docs && args.only.is_none() {
        let path = crate::root().join("docs/reliability.md");
        let doc = std::fs::read_to_string(&path)?;
        let (Some(a), Some(b)) = (doc.find(BEGIN), doc.find(END)) else {
            anyhow::bail!("{} has no `{BEGIN}` ... `{END}` markers", path.display());
        };
        let new = format!("{}{BEGIN}\n{table}{}", &doc[..a], &doc[b..]);
        std::fs::write(&path, new)?;
        println!("written to {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_fleet_finishes_and_runs_repeat_exactly() {
        let s = independent(16);
        let a = world::run(Setup::default(), &s.rxs, 3);
        let b = world::run(Setup::default(), &s.rxs, 3);
        assert!(a.finished.iter().all(Option::is_some), "{a:?}");
        assert_eq!(a.finished, b.finished);
        assert_eq!(
            (a.repair_packets, a.requests),
            (b.repair_packets, b.requests)
        );
        assert!(a.rounds >= 1 && a.requests >= 1);
    }

    #[test]
    fn lossy_receivers_with_http_leave_the_repair_to_the_others() {
        let s = mixed(50, true);
        let o = world::run(Setup::default(), &s.rxs, 1);
        assert_eq!(o.http, 1, "the one receiver at 30 %");
        let good = s.compare.as_ref().unwrap();
        assert!(last_finish(&o, good).is_some());
    }

    /// Every receiver has a web server and every one loses 30 %: the
    /// sender's ends count them all lacking much, so they take repair
    /// rounds (one serves them all) rather than each fetching 30 % of the
    /// image; the same fleet with one lossy receiver sends that one to
    /// the web server (`mixed` above).
    #[test]
    fn a_fleet_that_all_lacks_much_takes_repair_rounds_not_http() {
        let rxs = vec![
            RxSpec {
                http: true,
                ..rx(Loss::Independent(0.30))
            };
            16
        ];
        let o = world::run(Setup::default(), &rxs, 1);
        let by_multicast = o.finished.iter().filter(|f| f.is_some()).count();
        assert_eq!(by_multicast + o.http, 16, "{o:?}");
        assert!(o.rounds >= 1 && o.requests >= 1, "{o:?}");
        // Receivers that lag once the others are done may still fetch:
        // they are few then, at most --http-repair-few's share of the
        // fleet (with 2048-block groups 4 of 16 lag that far); before the
        // hint all 16 did.
        assert!(
            o.http as f64 <= world::HTTP_REPAIR.few * 16.0,
            "{} of 16 fetched over HTTP",
            o.http
        );
    }
}
