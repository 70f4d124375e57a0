//! `cargo xtask bench`: the end-to-end benchmark, in three parts.
//!
//! Two network namespaces joined by a veth pair (`xdpcast_bench::netns`,
//! 10.99.x.0/24, multicast 239.77.0.0/24 only), a fresh pair per MTU. The sender is
//! pinned to CPU 0, the receiver to CPU 1. Every configuration runs `--runs`
//! times (default 3); the tables show the median and the range.
//!
//! - **compare**: xdpcast's XDP path and socket path (plain `recvmmsg`, and
//!   with `UDP_GRO` and GRO on the receiving veth), fed by `xdpcast-bench
//!   blast --no-gso` (so frames cross the veth one by one in every row, as
//!   from a NIC; unpaced unless `--rate-mbps`), and udpcast's `udp-receiver`
//!   fed by its own `udp-sender`; target on tmpfs.
//! - **keepup**: the XDP path only, paced at `--rates` (and unpaced, "max"),
//!   into a file on tmpfs, a file on the machine's ext4 disk, and a loop
//!   device (direct I/O) over a disk file full of old data; fed by the
//!   blast sender and by the real `xdpcast send`, unsigned and signed
//!   (`--feeds`), run i of each in turn; with the kernel's ring-drop
//!   counters, the device bytes read until the last block and until the
//!   receiver's exit, the time from the last block to SUCCESS (the
//!   receiver's page) and the bytes on disk by the halfway point.
//! - **sparse** (`sparse`): a 75 % zero image sent by the real
//!   `xdpcast send` with and without `--no-sparse`.
//!
//! Times come from the receiver side: the start is when the target file
//! appears (or the first block is counted, for a block device), the end of
//! the receive is when the last block lands (status page samples,
//! interpolated) or the file reaches full size (udpcast), and the verified
//! end is when the receiver exits (xdpcast verifies the SHA-256 itself;
//! udpcast's output is checked with `sha256sum`, whose time and CPU are
//! added to udpcast's). CPU is `wait4` rusage of the pinned processes.
//! Namespaces, loop devices and scratch files are removed on every exit
//! path, Ctrl-C included.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use xdpcast_bench::netns::VethPair;

use crate::plot::{self, Panel};

/// Options of `cargo xtask bench`.
#[derive(clap::Args)]
pub struct Args {
    /// A 128 MiB image, MTU 1500 only, the sparse part on tmpfs only: under 5 minutes on 2 cores.
    #[arg(long)]
    quick: bool,
    /// Image size in MiB (default: 128 with --quick, else 1024).
    #[arg(long)]
    size_mib: Option<u64>,
    /// MTUs of the comparison, comma separated (default: 1500 with --quick, else 1500,9000).
    #[arg(long, value_delimiter = ',')]
    mtu: Option<Vec<u32>>,
    /// Pace the comparison's senders to this rate (default: xdpcast's blast unpaced, udpcast self-paced).
    #[arg(long)]
    rate_mbps: Option<u64>,
    /// Runs of every configuration; the tables show the median and range.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Which part to run.
    #[arg(long, value_enum, default_value_t = Part::All)]
    part: Part,
    /// Paced rates of the keep-up part, Mbit/s, comma separated; "max" is unpaced.
    #[arg(long, value_delimiter = ',', default_values_t = ["500".to_string(), "1000".into(), "2000".into(), "max".into()])]
    rates: Vec<String>,
    /// Targets of the keep-up and sparse parts, comma separated (the sparse
    /// part takes tmpfs only with --quick).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [TargetKind::Tmpfs, TargetKind::Ext4, TargetKind::Loop])]
    targets: Vec<TargetKind>,
    /// Image sizes of the e2e part in MiB, comma separated (default: 128
    /// with --quick, else 1024,4096).
    #[arg(long, value_delimiter = ',')]
    e2e_sizes: Option<Vec<u64>>,
    /// Senders of the keep-up part, comma separated: blast (xdpcast-bench,
    /// unsigned), send (`xdpcast send`), signed (`send --sign`, `receive --trust`).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Feed::Blast, Feed::Send, Feed::Signed])]
    feeds: Vec<Feed>,
    /// Directory for results.md, results.json and plot.png, relative to the workspace.
    #[arg(long, default_value = "docs/bench")]
    out: PathBuf,
    /// Only the time from the last block to SUCCESS, unsigned (read-back)
    /// and signed (no read-back), on tmpfs and ext4, into OUT/finish.md.
    #[arg(long)]
    finish: bool,
}

/// Parts of the benchmark.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    All,
    Compare,
    Keepup,
    /// A 75 % zero image, `xdpcast send` sparse and `--no-sparse`.
    Sparse,
    /// Deployment time: sender start to verified SUCCESS, xdpcast (unsigned,
    /// signed, fed by udp-sender) and udpcast, against the path's limit.
    E2e,
}

/// Who sends the image in the keep-up part.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Feed {
    Blast,
    Send,
    Signed,
}

impl Feed {
    fn receiver(self) -> Receiver {
        match self {
            Feed::Blast => Receiver::Xdp,
            Feed::Send => Receiver::Send,
            Feed::Signed => Receiver::Signed,
        }
    }
}

mod e2e;
mod finish;
mod harness;
mod report;
mod runs;
mod sparse;

use harness::*;
use report::*;
use runs::*;

/// Run the benchmark and write `results.md`, `results.json` and `plot.png`
/// into `args.out`.
pub fn run(args: Args) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "the benchmark needs root (namespaces, XDP)"
    );
    for tool in [
        "ip",
        "taskset",
        "ethtool",
        "sha256sum",
        "udp-sender",
        "udp-receiver",
    ] {
        ensure!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()?
                .success(),
            "{tool} not found (udpcast comes from the Debian package `udpcast`)"
        );
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?
        .to_path_buf();
    eprintln!("bench: building release binaries");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = Command::new(cargo)
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "-p",
            "xdpcast",
            "-p",
            "xdpcast-bench",
            "--bins",
        ])
        .status()?;
    ensure!(built.success(), "cargo build --release failed");
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    let work = WorkDir(PathBuf::from(format!(
        "/dev/shm/xdpcast-bench-{}",
        std::process::id()
    )));
    std::fs::create_dir_all(&work.0)?;
    let size = args.size_mib.unwrap_or(if args.quick { 128 } else { 1024 }) << 20;
    let mtus = args.mtu.clone().unwrap_or(if args.quick {
        vec![1500]
    } else {
        vec![1500, 9000]
    });
    let image = work.0.join("image");
    // The sparse part writes its own image.
    let digest = if matches!(args.part, Part::Sparse | Part::E2e) && !args.finish {
        String::new()
    } else {
        eprintln!("bench: writing a {} MiB random image", size >> 20);
        let mut src = std::io::Read::take(File::open("/dev/urandom")?, size);
        std::io::copy(&mut src, &mut File::create(&image)?)?;
        sha256sum(&image, &work.0.join("sha.log"))?.0
    };
    let ctx = Ctx {
        bin: target_dir.join("release"),
        work: work.0.clone(),
        image,
        size,
        digest,
        rate_mbps: args.rate_mbps,
        timeout: Duration::from_secs(if args.quick { 60 } else { 300 }),
    };
    let runs = args.runs.max(1);

    if args.finish {
        let md = format!(
            "Machine: {}. Image {} MiB, paced at {} Mbit/s, XDP path, MTU 1500.\n\n{}",
            machine(),
            size >> 20,
            args.rate_mbps.unwrap_or(2000),
            finish::run(&ctx, runs)?
        );
        println!("\n{md}");
        let out = root.join(&args.out);
        std::fs::create_dir_all(&out)?;
        std::fs::write(out.join("finish.md"), &md)?;
        return Ok(());
    }
    let machine = machine();
    let mut md = format!(
        "Machine: {machine}. {}, sender on CPU {TX_CPU}, receiver on CPU {RX_CPU}, \
         {runs} runs per row: median (min-max).\n\n",
        if args.part == Part::E2e {
            "Image sizes per section".to_string()
        } else {
            format!("Image {} MiB", size >> 20)
        }
    );

    let mut outcomes = Vec::new();
    let mut rows = Vec::new();
    if matches!(args.part, Part::All | Part::Compare) {
        for &mtu in &mtus {
            let net = VethPair::new(1, mtu);
            let tmpfs = Target {
                kind: TargetKind::Tmpfs,
                path: ctx.work.join("out.img"),
                dev_stat: None,
            };
            for r in Receiver::ALL {
                let mut o = Outcome {
                    receiver: r,
                    mtu,
                    runs: Vec::new(),
                };
                for i in 0..runs {
                    check_interrupt()?;
                    eprintln!("bench: MTU {mtu}, {}, run {}", r.name(), i + 1);
                    let result = match r {
                        Receiver::Socket => {
                            let off = ["--socket-gro", "off"];
                            run_xdpcast(&ctx, &net, r, &off, &tmpfs, ctx.rate_mbps)
                        }
                        Receiver::SocketGro => VethGro::on(&net).and_then(|gro| {
                            let on = ["--socket-gro", "on"];
                            let napi0 = gro.cpu_s();
                            let mut m = run_xdpcast(&ctx, &net, r, &on, &tmpfs, ctx.rate_mbps)?;
                            // The receive side's kernel work, as softirq is.
                            m.softirq_s += gro.cpu_s() - napi0;
                            Ok(m)
                        }),
                        Receiver::Udpcast => run_udpcast(&ctx, &net),
                        _ => run_xdpcast(&ctx, &net, r, &[], &tmpfs, ctx.rate_mbps),
                    };
                    check_interrupt()?;
                    o.runs.push(result.map_err(|e| format!("{e:#}")));
                    if let Some(Err(e)) = o.runs.last() {
                        eprintln!("bench:   failed: {e}");
                    }
                }
                outcomes.push(o);
            }
        }
        let rate = args
            .rate_mbps
            .map_or("unpaced blast / udpcast self-paced".into(), |m| {
                format!("both senders paced to {m} Mbit/s")
            });
        md += &format!(
            "### Comparison\n\nTarget on tmpfs, {rate}; the blast sender sends one datagram per \
             frame (no GSO), so frames cross the veth one by one in every row.\n\n"
        );
        md += &table(&outcomes, size);
    }

    if matches!(args.part, Part::All | Part::Keepup) {
        let net = VethPair::new(1, 1500);
        let disk = WorkDir::on_disk("keepup")?;
        for &kind in &args.targets {
            let (target, lo) = Target::new(kind, &ctx, &disk, "out.img")?;
            for rate in &args.rates {
                let mbps = match rate.as_str() {
                    "max" => None,
                    r => Some(r.parse::<u64>().with_context(|| format!("rate {r}"))?),
                };
                let mut outcomes: Vec<Outcome> = args
                    .feeds
                    .iter()
                    .map(|f| Outcome {
                        receiver: f.receiver(),
                        mtu: 1500,
                        runs: Vec::new(),
                    })
                    .collect();
                // Run i of every sender in turn, so that a drift of the
                // machine touches signed and unsigned rows alike.
                for i in 0..runs {
                    for o in &mut outcomes {
                        check_interrupt()?;
                        eprintln!(
                            "bench: keep-up, {}, {rate} Mbit/s, {}, run {}",
                            kind.name(),
                            o.receiver.name(),
                            i + 1
                        );
                        // Old data under every run, out of the cache.
                        if let Some(l) = &lo {
                            l.refill(ctx.size)?;
                            l.drop_cache()?;
                        }
                        let result = run_xdpcast(&ctx, &net, o.receiver, &[], &target, mbps);
                        check_interrupt()?;
                        o.runs.push(result.map_err(|e| format!("{e:#}")));
                        if let Some(Err(e)) = o.runs.last() {
                            eprintln!("bench:   failed: {e}");
                        }
                    }
                }
                rows.extend(outcomes.into_iter().map(|o| (kind, rate.clone(), o)));
            }
            if target.dev_stat.is_none() {
                let _ = std::fs::remove_file(&target.path);
            }
        }
        md += "\n### Keep-up: XDP path, MTU 1500, paced and unpaced, three targets\n\n\
               Senders: `blast` (xdpcast-bench, unsigned, one datagram per frame), \
               `send` (the real `xdpcast send`, unsigned: the receiver checks the \
               SHA-256 by reading the target back) and `send --sign` (`receive \
               --trust`: each chunk hashed in the staging buffer, nothing read back); \
               run i of each in turn. The loop device does direct I/O on a file \
               refilled with old data and its cache dropped before each run. \
               \"ring drops\" are the kernel's AF_XDP rx_ring_full + rx_dropped; \
               \"device read\" is the loop device's read sectors (files: the \
               receiver's /proc/PID/io read_bytes) from the sender's start until the \
               last block was in, \"read to exit\" the same until the receiver \
               exited (the unsigned SHA-256 read-back included); \"last block → \
               SUCCESS\" is the receiver's own page: `end_ns` − `last_block_ns`; \
               \"on disk at half\" is the loop device's written sectors, or the ext4 \
               file's clean and evicted pages (cachestat), when half the blocks were \
               in.\n\n";
        md += &keepup_table(&rows, size);
    }

    let mut sparse_rows = Vec::new();
    if matches!(args.part, Part::All | Part::Sparse) {
        let targets = if args.quick {
            vec![TargetKind::Tmpfs]
        } else {
            args.targets.clone()
        };
        let (section, rows) = sparse::run(&ctx, &targets, runs)?;
        md += &section;
        sparse_rows = rows;
    }

    let mut e2e_results = e2e::Results::default();
    if matches!(args.part, Part::All | Part::E2e) {
        let sizes = e2e::sizes(&args.e2e_sizes, args.quick);
        let (section, results) = e2e::run(&ctx, &sizes, &args.targets, runs)?;
        md += &section;
        e2e_results = results;
    }

    println!("\n{md}");
    let out = root.join(&args.out);
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("results.md"), &md)?;
    std::fs::write(
        out.join("results.json"),
        results_json(
            &outcomes,
            &rows,
            &sparse_rows,
            &e2e_results,
            size,
            args.rate_mbps,
            machine,
        ),
    )?;
    if !outcomes.is_empty() {
        let panel = |title: &str, f: &dyn Fn(&Metrics) -> f64| Panel {
            title: title.into(),
            groups: mtus.iter().map(|m| format!("MTU {m}")).collect(),
            values: mtus
                .iter()
                .map(|&mtu| {
                    Receiver::ALL
                        .iter()
                        .map(|&r| {
                            outcomes
                                .iter()
                                .find(|o| o.mtu == mtu && o.receiver == r)
                                .and_then(|o| o.median(f))
                        })
                        .collect()
                })
                .collect(),
        };
        let names: Vec<&str> = Receiver::ALL.iter().map(|r| r.name()).collect();
        let gb = size as f64 / 1e9;
        plot::bar_chart(
            &out.join("plot.png"),
            [
                &panel("GOODPUT (GBIT/S)", &|m| m.goodput_gbps(size)),
                &panel("TOTAL CPU (S/GB)", &|m| (m.rx_cpu_s + m.softirq_s) / gb),
            ],
            &names,
        )?;
    }
    eprintln!(
        "bench: wrote {}, results.json and plot.png",
        out.join("results.md").display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_interpolates_between_samples() {
        let s = [(1_000, 0, 0), (2_000, 50, 60), (3_000, 150, 180)];
        assert_eq!(completion(&s, 100), Some((2_500, 120)));
        assert_eq!(completion(&s[1..], 20), Some((2_000, 60)));
        assert_eq!(completion(&s, 200), None);
    }

    #[test]
    fn results_json_names_every_measurement() {
        let m = Metrics {
            path: "xdp-native".into(),
            receive_s: 2.0,
            verified_s: 2.5,
            packets: 1000,
            rx_cpu_s: 1.0,
            tx_cpu_s: 1.0,
            tx_wall_s: 2.0,
            offered_gbps: None,
            softirq_s: 0.5,
            loss: 0.01,
            batch: Some(32.0),
            batch_ns: Some([1_000, 2_000, 3_000]),
            ring_drops: Some(0),
            fill_empty: Some(3),
            dev_read: Some(4096),
            dev_read_total: Some(8192),
            tail_ms: Some(12.5),
            written_half: None,
            overflow: Some(0),
            lane_full: Some(0),
        };
        let outcomes = [
            Outcome {
                receiver: Receiver::Xdp,
                mtu: 1500,
                runs: vec![Ok(m)],
            },
            Outcome {
                receiver: Receiver::Udpcast,
                mtu: 1500,
                runs: vec![Err("udp-receiver exited".into())],
            },
        ];
        let j = results_json(
            &outcomes,
            &[],
            &[],
            &e2e::Results::default(),
            1 << 30,
            Some(2000),
            "test machine".into(),
        );
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["image_bytes"], 1u64 << 30);
        assert_eq!(v["rate_mbps"], 2000);
        let ok = &v["runs"][0];
        assert_eq!(ok["receiver"], "xdpcast XDP");
        assert_eq!(ok["part"], "compare");
        assert_eq!(ok["metrics"]["path"], "xdp-native");
        assert_eq!(ok["metrics"]["batch_ns"][1], 2_000);
        assert_eq!(ok["metrics"]["dev_read"], 4096);
        assert_eq!(ok["error"], serde_json::Value::Null);
        assert!((ok["goodput_gbps"].as_f64().unwrap() - 4.294_967_296).abs() < 1e-9);
        let failed = &v["runs"][1];
        assert_eq!(failed["metrics"], serde_json::Value::Null);
        assert_eq!(failed["error"], "udp-receiver exited");
    }

    #[test]
    fn medians_and_ranges() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(spread(&[3.0, 1.0, 2.0], 1), "2.0 (1.0-3.0)");
        assert_eq!(spread(&[2.0], 2), "2.00");
        assert_eq!(spread(&[], 2), "-");
    }

    #[test]
    fn fields_come_from_the_last_line_that_has_them() {
        let log = "blast packets=1 bytes=10 secs=1\nblast packets=2 bytes=20 secs=2\nnoise\n";
        assert_eq!(field(log, "bytes"), Some(20.0));
        assert_eq!(field(log, "nope"), None);
    }
}
