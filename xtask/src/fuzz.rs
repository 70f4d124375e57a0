//! `cargo xtask fuzz --seconds N`: the property-based fuzzers of
//! tests/fuzz.rs (every parser of network bytes, and the image sizes and
//! allocations a packet can ask for), run again and again with fresh
//! random seeds and many more cases per run than the suite's, until N
//! seconds have passed or one fails. A failure prints proptest's minimal
//! case and seed and stops.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::workspace::run;

/// Cases per property per run (the suite runs a few thousand).
const CASES_PER_RUN: u32 = 50_000;

/// Arguments of `cargo xtask fuzz`.
#[derive(clap::Args)]
pub struct Args {
    /// Keep fuzzing this long (each run finishes, so it may take a run longer).
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    /// Cases per property per run.
    #[arg(long, default_value_t = CASES_PER_RUN)]
    cases: u32,
}

pub fn run_fuzz(args: Args) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(args.seconds);
    let test = |extra: &[&str]| {
        let mut c = Command::new("cargo");
        c.args(["test", "--release", "-p", "xdpcast", "--test", "fuzz"])
            .args(extra)
            .env("XDPCAST_FUZZ_CASES", args.cases.to_string());
        c
    };
    run(&mut test(&["--no-run"]))?;
    let mut rounds = 0u64;
    loop {
        run(&mut test(&[]))?;
        rounds += 1;
        if Instant::now() >= until {
            break;
        }
    }
    println!(
        "fuzz: {rounds} runs of {} cases per property, no failure",
        args.cases
    );
    Ok(())
}
