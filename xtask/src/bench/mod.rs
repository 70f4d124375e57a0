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
//!   device (direct I/O) over a disk file full of old data; with the
//!   kernel's ring-drop counters, the device bytes read during the receive
//!   and the bytes on disk by the halfway point.
//! - **sparse** (`crate::sparse`): a 75 % zero image sent by the real
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

use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use xdpcast::status::page::{now_ns, Snapshot, State, StatusReader};
use xdpcast_bench::netns::VethPair;

use crate::plot::{self, Panel};

pub(crate) const GROUP: &str = "239.77.0.1:5000";
const UDPCAST_RDV: &str = "239.77.0.2";
const UDPCAST_DATA: &str = "239.77.0.3";
const UDPCAST_PORTBASE: &str = "9000";
pub(crate) const TX_CPU: &str = "0";
pub(crate) const RX_CPU: &str = "1";
pub(crate) const POLL: Duration = Duration::from_millis(2);

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
}

/// Where the keep-up part writes the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum TargetKind {
    /// A file on /dev/shm.
    Tmpfs,
    /// A file on the machine's ext4 disk (/var/tmp).
    Ext4,
    /// A loop device (direct I/O) over a disk file holding old data.
    Loop,
}

impl TargetKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            TargetKind::Tmpfs => "tmpfs file",
            TargetKind::Ext4 => "ext4 file",
            TargetKind::Loop => "loop device",
        }
    }
}

/// A target of one run: where the image goes, and how the device's I/O is
/// counted.
pub(crate) struct Target {
    pub(crate) kind: TargetKind,
    pub(crate) path: PathBuf,
    /// sysfs stat file of the block device, for a loop target.
    pub(crate) dev_stat: Option<PathBuf>,
}

impl Target {
    /// A target of `kind` for `ctx`'s image: `name` in `ctx.work` (tmpfs)
    /// or in `disk`, or a loop device over a file of old data in `disk`
    /// (returned too: it is detached when dropped).
    pub(crate) fn new(
        kind: TargetKind,
        ctx: &Ctx,
        disk: &WorkDir,
        name: &str,
    ) -> Result<(Target, Option<LoopDev>)> {
        let lo = match kind {
            TargetKind::Loop => Some(LoopDev::new(&disk.0, ctx.size + (16 << 20))?),
            _ => None,
        };
        let target = Target {
            kind,
            path: match (kind, &lo) {
                (_, Some(l)) => PathBuf::from(&l.dev),
                (TargetKind::Ext4, _) => disk.0.join(name),
                _ => ctx.work.join(name),
            },
            dev_stat: lo.as_ref().map(|l| {
                let name = Path::new(&l.dev).file_name().unwrap_or_default();
                Path::new("/sys/block").join(name).join("stat")
            }),
        };
        Ok((target, lo))
    }
}

/// A loop device over a file of old data on the machine's disk; detached
/// (and the file removed) on drop.
pub(crate) struct LoopDev {
    pub(crate) dev: String,
    file: PathBuf,
}

/// Fill the first `size` bytes (rounded up to MiB) of `f` with old data: a
/// pattern that is not the image.
fn old_data(mut f: File, size: u64) -> Result<()> {
    let block = vec![0xA5u8; 1 << 20];
    for _ in 0..size.div_ceil(1 << 20) {
        std::io::Write::write_all(&mut f, &block)?;
    }
    Ok(f.sync_all()?)
}

impl LoopDev {
    pub(crate) fn new(dir: &Path, size: u64) -> Result<LoopDev> {
        let file = dir.join("loop-backing");
        old_data(File::create(&file)?, size)?;
        let out = cmd_ok(
            "losetup",
            &[
                "--find",
                "--show",
                "--direct-io=on",
                &file.to_string_lossy(),
            ],
        )?;
        Ok(LoopDev {
            dev: out.trim().to_string(),
            file,
        })
    }

    /// Write old data over the device's first `size` bytes again (through
    /// the device), so the next image lands on something else.
    pub(crate) fn refill(&self, size: u64) -> Result<()> {
        old_data(File::options().write(true).open(&self.dev)?, size)?;
        self.drop_cache()
    }

    /// Drop the device's cached pages, so old data must come from the disk.
    fn drop_cache(&self) -> Result<()> {
        cmd_ok("blockdev", &["--flushbufs", &self.dev]).map(drop)
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = cmd_ok("losetup", &["--detach", &self.dev]);
        let _ = std::fs::remove_file(&self.file);
    }
}

/// Sectors read and written by a block device (`/sys/block/X/stat`).
fn dev_sectors(stat: &Path) -> Result<(u64, u64)> {
    let t = std::fs::read_to_string(stat)?;
    let f: Vec<u64> = t
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    Ok((f[2], f[6]))
}

/// Bytes process `pid` caused to be read from storage (`/proc/PID/io`).
fn proc_read_bytes(pid: libc::pid_t) -> Option<u64> {
    let t = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    t.lines()
        .find_map(|l| l.strip_prefix("read_bytes: "))
        .and_then(|v| v.trim().parse().ok())
}

/// Bytes of `path`'s first `len` bytes that are on the disk: cached pages
/// that are neither dirty nor under writeback, plus evicted ones
/// (`cachestat(2)`, Linux 6.5).
fn bytes_on_disk(path: &Path, len: u64) -> Option<u64> {
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct CacheStat {
        cache: u64,
        dirty: u64,
        writeback: u64,
        evicted: u64,
        recently_evicted: u64,
    }
    const SYS_CACHESTAT: libc::c_long = 451;
    let f = File::open(path).ok()?;
    let range = Range { off: 0, len };
    let mut cs = CacheStat::default();
    // SAFETY: both pointers are to live, correctly laid out structs
    // (<uapi/linux/mman.h>); flags must be 0.
    let rc = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            std::os::fd::AsRawFd::as_raw_fd(&f),
            &range as *const Range,
            &mut cs as *mut CacheStat,
            0,
        )
    };
    (rc == 0).then(|| (cs.cache - cs.dirty - cs.writeback + cs.evicted) * 4096)
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

pub(crate) fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

pub(crate) fn cmd_ok(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {program}"))?;
    ensure!(
        out.status.success(),
        "`{program} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Scratch directory (tmpfs, or the disk for the keep-up targets); removed on drop.
pub(crate) struct WorkDir(pub(crate) PathBuf);

impl WorkDir {
    /// Scratch space on the machine's disk (not tmpfs) for ext4 files and
    /// loop devices' backing files.
    pub(crate) fn on_disk(part: &str) -> Result<WorkDir> {
        let d = WorkDir(PathBuf::from(format!(
            "/var/tmp/xdpcast-bench-{part}-{}",
            std::process::id()
        )));
        std::fs::create_dir_all(&d.0)?;
        Ok(d)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How a child process ended.
#[derive(Clone, Copy)]
pub(crate) struct Exit {
    status: libc::c_int,
    pub(crate) cpu_s: f64,
    pub(crate) at_ns: u64,
}

impl Exit {
    pub(crate) fn success(&self) -> bool {
        libc::WIFEXITED(self.status) && libc::WEXITSTATUS(self.status) == 0
    }

    pub(crate) fn describe(&self) -> String {
        if libc::WIFEXITED(self.status) {
            format!("exit {}", libc::WEXITSTATUS(self.status))
        } else {
            format!("signal {}", libc::WTERMSIG(self.status))
        }
    }
}

/// A child pinned to one CPU (optionally inside a namespace), reaped with
/// `wait4` for its rusage; killed on drop if still running.
pub(crate) struct Proc {
    pid: libc::pid_t,
    log: PathBuf,
    exit: Option<Exit>,
}

impl Proc {
    pub(crate) fn spawn(
        ns: Option<&str>,
        cpu: &str,
        argv: &[&str],
        env: &[(&str, &Path)],
        log: &Path,
    ) -> Result<Proc> {
        let f = File::create(log).with_context(|| format!("create {}", log.display()))?;
        // `ip netns exec` and `taskset` exec the program: the pid is its own.
        let mut c = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "taskset", "-c", cpu]);
                c
            }
            None => {
                let mut c = Command::new("taskset");
                c.args(["-c", cpu]);
                c
            }
        };
        c.args(argv)
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f);
        for (k, v) in env {
            c.env(k, v);
        }
        let child = c.spawn().with_context(|| format!("spawn {}", argv[0]))?;
        Ok(Proc {
            pid: child.id() as libc::pid_t,
            log: log.to_path_buf(),
            exit: None,
        })
    }

    /// The exit, if the child has ended (never blocks).
    pub(crate) fn poll(&mut self) -> Option<Exit> {
        if self.exit.is_none() {
            let mut status = 0;
            // SAFETY: rusage is plain data; wait4 fills it for our own child.
            let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: plain syscall on our own child's pid with valid out-pointers.
            let rc = unsafe { libc::wait4(self.pid, &mut status, libc::WNOHANG, &mut ru) };
            if rc == self.pid {
                let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
                self.exit = Some(Exit {
                    status,
                    cpu_s: secs(ru.ru_utime) + secs(ru.ru_stime),
                    at_ns: now_ns(),
                });
            }
        }
        self.exit
    }

    /// Wait for the end; after `timeout`, SIGKILL.
    pub(crate) fn wait(&mut self, timeout: Duration) -> Exit {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.poll() {
                return e;
            }
            if Instant::now() >= deadline || INTERRUPTED.load(Ordering::Relaxed) {
                self.signal(libc::SIGKILL);
            }
            std::thread::sleep(POLL);
        }
    }

    /// SIGTERM, then SIGKILL after a second.
    pub(crate) fn stop(&mut self) -> Exit {
        if self.poll().is_none() {
            self.signal(libc::SIGTERM);
        }
        self.wait(Duration::from_secs(1))
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: plain syscall; the pid is our unreaped child.
        unsafe { libc::kill(self.pid, sig) };
    }

    pub(crate) fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) fn last_line(&self) -> String {
        let out = self.output();
        out.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .to_string()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.poll().is_none() {
            self.signal(libc::SIGKILL);
            self.wait(Duration::from_secs(5));
        }
    }
}

/// Which receiver a run measures.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Receiver {
    Xdp,
    /// `recvmmsg`, one datagram per message (`--socket-gro off`).
    Socket,
    /// `recvmmsg` with `UDP_GRO` (`--socket-gro on`), GRO on the veth.
    SocketGro,
    Udpcast,
}

impl Receiver {
    const ALL: [Receiver; 4] = [
        Receiver::Xdp,
        Receiver::Socket,
        Receiver::SocketGro,
        Receiver::Udpcast,
    ];

    fn name(self) -> &'static str {
        match self {
            Receiver::Xdp => "xdpcast XDP",
            Receiver::Socket => "xdpcast socket",
            Receiver::SocketGro => "xdpcast socket+GRO",
            Receiver::Udpcast => "udpcast",
        }
    }
}

/// GRO on the receiving veth, for the socket+GRO row, as a NIC does it:
/// `gro on`; `rx-udp-gro-forwarding on`, without which a veth whose peer
/// has TSO passes locally sent frames around its NAPI (and so around GRO);
/// and threaded NAPI, so that the poll runs in its own kernel thread and
/// finds several frames to merge, as a NIC's poll does after an interrupt
/// (in softirq right after each transmit it finds one). All off again on
/// drop. The NAPI thread's CPU is not softirq time: [`VethGro::cpu_s`].
struct VethGro<'a>(&'a VethPair);

impl<'a> VethGro<'a> {
    fn on(net: &'a VethPair) -> Result<VethGro<'a>> {
        let g = VethGro(net);
        g.set("on", "1")?;
        Ok(g)
    }

    fn set(&self, v: &str, threaded: &str) -> Result<()> {
        let (ns, dev) = (&self.0.b.name, &self.0.if_b);
        let k = ["gro", v, "rx-udp-gro-forwarding", v];
        cmd_ok(
            "ip",
            &[&["netns", "exec", ns, "ethtool", "-K", dev][..], &k].concat(),
        )?;
        let t = format!("echo {threaded} > /sys/class/net/{dev}/threaded");
        cmd_ok("ip", &["netns", "exec", ns, "sh", "-c", &t])?;
        Ok(())
    }

    /// CPU seconds of the veth's NAPI kernel threads (`napi/DEV-ID`) so far.
    fn cpu_s(&self) -> f64 {
        let prefix = format!("napi/{}-", self.0.if_b);
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return 0.0;
        };
        let ticks: u64 = procs
            .flatten()
            .filter(|e| {
                std::fs::read_to_string(e.path().join("comm"))
                    .is_ok_and(|c| c.trim_end().starts_with(&prefix))
            })
            .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
            .filter_map(|st| {
                // Fields after the ")" of the command: utime and stime are
                // the 12th and 13th.
                let rest = st.rsplit_once(')')?.1;
                let f: Vec<&str> = rest.split_whitespace().collect();
                Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
            })
            .sum();
        ticks as f64 / 100.0
    }
}

impl Drop for VethGro<'_> {
    fn drop(&mut self) {
        let _ = self.set("off", "0");
    }
}

/// What one run measured (in `results.json` under these names).
#[derive(Debug, Serialize)]
struct Metrics {
    /// Data path as reported by the receiver.
    path: String,
    /// First block to last block, seconds.
    receive_s: f64,
    /// First block to verified image, seconds.
    verified_s: f64,
    /// Packets the receiver took in during the receive.
    packets: u64,
    /// Receiver CPU (user + system), seconds, verification included.
    rx_cpu_s: f64,
    /// Sender CPU seconds and wall seconds.
    tx_cpu_s: f64,
    tx_wall_s: f64,
    /// What the sender offered, Gbit/s of image data (blast only).
    offered_gbps: Option<f64>,
    /// Softirq time over all CPUs during the run (/proc/stat), seconds.
    softirq_s: f64,
    /// Loss before repair, fraction, and how it was counted.
    loss: f64,
    /// Mean packets per worker batch (xdpcast).
    batch: Option<f64>,
    /// Batch wall time p50, p99, p99.9 in ns, from the live workers'
    /// histograms on the status page (xdpcast; the slowest worker's).
    batch_ns: Option<[u64; 3]>,
    /// Frames the kernel dropped before the worker saw them (AF_XDP
    /// rx_ring_full + rx_dropped, all sockets).
    ring_drops: Option<u64>,
    /// Times the kernel found a fill ring empty.
    fill_empty: Option<u64>,
    /// Bytes read from the target's device from the sender's start until
    /// the last block was in (not the verification that follows).
    dev_read: Option<u64>,
    /// Bytes of the image on the device when half the blocks were in.
    written_half: Option<u64>,
    /// Blocks written straight to the target (staging buffer full).
    overflow: Option<u64>,
    /// Blocks an AF_XDP worker copied itself (its lane to the copier full).
    lane_full: Option<u64>,
}

/// The runs of one configuration.
struct Outcome {
    receiver: Receiver,
    mtu: u32,
    runs: Vec<std::result::Result<Metrics, String>>,
}

impl Outcome {
    fn ok(&self) -> Vec<&Metrics> {
        self.runs.iter().filter_map(|r| r.as_ref().ok()).collect()
    }

    /// Median of `f` over the successful runs.
    fn median(&self, f: impl Fn(&Metrics) -> f64) -> Option<f64> {
        median(&self.ok().into_iter().map(f).collect::<Vec<_>>())
    }

    /// "median (min-max)" of `f` over the successful runs.
    fn spread(&self, prec: usize, f: impl Fn(&Metrics) -> Option<f64>) -> String {
        spread(
            &self.ok().into_iter().filter_map(f).collect::<Vec<_>>(),
            prec,
        )
    }

    fn runs_ok(&self) -> String {
        format!("{}/{}", self.ok().len(), self.runs.len())
    }

    /// The first failure, for the table.
    fn failure(&self) -> Option<&String> {
        self.runs.iter().find_map(|r| r.as_ref().err())
    }
}

pub(crate) fn median(v: &[f64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// "median (min-max)", or the value alone for one run, "-" for none.
pub(crate) fn spread(v: &[f64], prec: usize) -> String {
    let Some(m) = median(v) else {
        return "-".into();
    };
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if v.len() == 1 || lo == hi {
        format!("{m:.prec$}")
    } else {
        format!("{m:.prec$} ({lo:.prec$}-{hi:.prec$})")
    }
}

pub(crate) struct Ctx {
    pub(crate) bin: PathBuf,
    pub(crate) work: PathBuf,
    pub(crate) image: PathBuf,
    pub(crate) size: u64,
    /// SHA-256 of the image, hex.
    pub(crate) digest: String,
    pub(crate) rate_mbps: Option<u64>,
    pub(crate) timeout: Duration,
}

/// Softirq time of all CPUs, seconds (USER_HZ is 100 on Linux).
fn softirq_s() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let ticks: f64 = line
        .split_whitespace()
        .nth(7)
        .context("no softirq in /proc/stat")?
        .parse()?;
    Ok(ticks / 100.0)
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn rx_packets(net: &VethPair) -> Result<u64> {
    rx_counter(net, "rx_packets")
}

/// A counter of the receiving veth (`/sys/class/net/IF/statistics/NAME`).
pub(crate) fn rx_counter(net: &VethPair, name: &str) -> Result<u64> {
    let p = format!("/sys/class/net/{}/statistics/{name}", net.if_b);
    Ok(cmd_ok("ip", &["netns", "exec", &net.b.name, "cat", &p])?
        .trim()
        .parse()?)
}

fn sha256sum(path: &Path, log: &Path) -> Result<(String, Exit)> {
    let mut p = Proc::spawn(
        None,
        RX_CPU,
        &["sha256sum", &path.to_string_lossy()],
        &[],
        log,
    )?;
    let e = p.wait(Duration::from_secs(600));
    ensure!(e.success(), "sha256sum failed: {}", p.last_line());
    let digest = p
        .output()
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string();
    Ok((digest, e))
}

/// `key=value` from the last line of `text` that has it.
fn field(text: &str, key: &str) -> Option<f64> {
    text.lines().rev().find_map(|l| {
        l.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
    })
}

/// The instant (wall ns) and packet count at which `blocks_done` reached
/// `count`, interpolated between the two page samples around it.
pub(crate) fn completion(samples: &[(u64, u64, u64)], count: u64) -> Option<(u64, u64)> {
    let b = samples.iter().position(|s| s.1 >= count)?;
    let Some(a) = b.checked_sub(1).map(|a| samples[a]) else {
        return Some((samples[b].0, samples[b].2));
    };
    let (t1, d1, p1) = samples[b];
    let f = (count - a.1) as f64 / (d1 - a.1).max(1) as f64;
    let at = a.0 + (f * (t1 - a.0) as f64) as u64;
    let packets = a.2 + (f * (p1 - a.2) as f64) as u64;
    Some((at, packets))
}

/// `(heartbeat_ns, blocks_done, packets)` of a status page sample.
pub(crate) type Sample = (u64, u64, u64);

/// Sample the receiver's page every [`POLL`] until it exits (killed after
/// `timeout`): its exit, and a [`Sample`] at every change of the page (for
/// [`completion`]).
pub(crate) fn follow(
    reader: &StatusReader,
    rx: &mut Proc,
    timeout: Duration,
) -> Result<(Exit, Vec<Sample>)> {
    let deadline = Instant::now() + timeout;
    let mut samples: Vec<Sample> = Vec::new();
    loop {
        check_interrupt()?;
        let s = reader.read()?;
        if samples.last().is_none_or(|l| l.0 != s.heartbeat_ns) {
            samples.push((s.heartbeat_ns, s.blocks_done, taken(&s)));
        }
        if let Some(e) = rx.poll() {
            return Ok((e, samples));
        }
        if Instant::now() >= deadline {
            let e = rx.stop();
            bail!("no verified image within {timeout:?} ({})", e.describe());
        }
        std::thread::sleep(POLL);
    }
}

pub(crate) fn taken(s: &Snapshot) -> u64 {
    s.workers.iter().map(|w| w.packets).sum()
}

/// An `xdpcast receive` in `net`'s receiving namespace, pinned to
/// [`RX_CPU`], into `out`, its status page `name` kept in `ctx.work/status`
/// (no resume, 30 s start and 5 s idle timeouts), with `extra` arguments;
/// returned once the page says it is listening.
pub(crate) fn start_receiver(
    ctx: &Ctx,
    net: &VethPair,
    name: &str,
    out: &Path,
    extra: &[&str],
) -> Result<(Proc, StatusReader)> {
    let status_dir = ctx.work.join("status");
    std::fs::create_dir_all(&status_dir)?;
    let page = status_dir.join(format!("xdpcast.{name}"));
    let _ = std::fs::remove_file(&page);
    let recv = ctx.bin.join("xdpcast");
    let (recv, outs) = (recv.to_string_lossy(), out.to_string_lossy());
    let mut argv = vec![
        &*recv,
        "receive",
        "--group",
        GROUP,
        "--iface",
        &net.if_b,
        "--out",
        &outs,
        "--name",
        name,
        "--cores",
        RX_CPU,
        "--keep-status",
        "--no-resume",
        "--start-timeout",
        "30",
        "--idle-timeout",
        "5",
    ];
    argv.extend_from_slice(extra);
    let mut rx = Proc::spawn(
        Some(&net.b.name),
        RX_CPU,
        &argv,
        &[("XDPCAST_STATUS_DIR", &status_dir)],
        &ctx.work.join(format!("rx-{name}.log")),
    )?;
    let ready = Instant::now();
    loop {
        check_interrupt()?;
        if let Some(e) = rx.poll() {
            bail!(
                "receiver ended before the sender started ({}): {}",
                e.describe(),
                rx.last_line()
            );
        }
        if let Ok(r) = StatusReader::open(&page) {
            if r.read().is_ok_and(|s| s.state == State::InProgress) {
                return Ok((rx, r));
            }
        }
        ensure!(
            ready.elapsed() < Duration::from_secs(20),
            "receiver did not start"
        );
        std::thread::sleep(POLL);
    }
}

/// A sender `argv` in `net`'s sending namespace, pinned to [`TX_CPU`],
/// its output in `ctx.work/log`.
pub(crate) fn start_sender(ctx: &Ctx, net: &VethPair, argv: &[&str], log: &str) -> Result<Proc> {
    Proc::spawn(Some(&net.a.name), TX_CPU, argv, &[], &ctx.work.join(log))
}

/// `xdpcast send` of `ctx.image` over `net`, paced at `--rate-mbps`
/// (default 2000), with `extra` arguments (see [`start_sender`]).
pub(crate) fn xdpcast_send(ctx: &Ctx, net: &VethPair, extra: &[&str], log: &str) -> Result<Proc> {
    let bin = ctx.bin.join("xdpcast");
    let (bin, image) = (bin.to_string_lossy(), ctx.image.to_string_lossy());
    let rate = format!("{}M", ctx.rate_mbps.unwrap_or(2000));
    let mut argv = vec![
        &*bin, "send", &image, "--group", GROUP, "--iface", &net.if_a, "--rate", &rate,
    ];
    argv.extend_from_slice(extra);
    start_sender(ctx, net, &argv, log)
}

/// One xdpcast receive over `net` into `target`, the blast sender paced to
/// `rate_mbps` (None: unpaced), one datagram per frame (no GSO).
fn run_xdpcast(
    ctx: &Ctx,
    net: &VethPair,
    mode: &str,
    flags: &[&str],
    target: &Target,
    rate_mbps: Option<u64>,
) -> Result<Metrics> {
    let out = &target.path;
    if target.dev_stat.is_none() {
        let _ = std::fs::remove_file(out);
    }
    let extra: Vec<&str> = ["--mode", mode]
        .into_iter()
        .chain(flags.iter().copied())
        .collect();
    let (mut rx, reader) = start_receiver(ctx, net, &format!("bench-{mode}"), out, &extra)?;
    let soft0 = softirq_s()?;
    let dev0 = target.dev_stat.as_deref().map(dev_sectors).transpose()?;
    let blast = ctx.bin.join("xdpcast-bench");
    let rate = rate_mbps.map(|m| (m * 1_000_000).to_string());
    let mut argv = vec![
        blast.to_str().context("path")?,
        "blast",
        ctx.image.to_str().context("path")?,
        "--group",
        GROUP,
        "--iface",
        &net.if_a,
        "--passes",
        "1000",
        "--no-gso",
    ];
    if let Some(r) = &rate {
        argv.extend(["--rate-bps", r]);
    }
    let mut tx = start_sender(ctx, net, &argv, "tx.log")?;
    let tx_start = now_ns();
    let mut first = None;
    let mut samples: Vec<(u64, u64, u64)> = Vec::new();
    let mut read_bytes = None;
    let mut dev_read_now = None;
    let mut written_half = None;
    let deadline = Instant::now() + ctx.timeout;
    let exit = loop {
        check_interrupt()?;
        let s = reader.read()?;
        if first.is_none() && (s.blocks_done > 0 || file_len(out) > 0) {
            first = Some(now_ns());
        }
        if samples.last().is_none_or(|l| l.0 != s.heartbeat_ns) {
            samples.push((s.heartbeat_ns, s.blocks_done, taken(&s)));
        }
        if written_half.is_none() && s.block_count > 0 && s.blocks_done * 2 >= s.block_count {
            written_half = Some(match (&target.dev_stat, dev0) {
                (Some(stat), Some((_, w0))) => Some((dev_sectors(stat)?.1 - w0) * 512),
                _ if target.kind == TargetKind::Ext4 => bytes_on_disk(out, ctx.size),
                _ => None,
            });
        }
        // Reads until the last block is in: the receiver's own SHA-256
        // check reads the whole target back afterwards.
        if s.block_count == 0 || s.blocks_done < s.block_count {
            read_bytes = proc_read_bytes(rx.pid).or(read_bytes);
            if let Some(stat) = &target.dev_stat {
                dev_read_now = Some(dev_sectors(stat)?.0);
            }
        }
        if let Some(e) = rx.poll() {
            break e;
        }
        ensure!(
            Instant::now() < deadline,
            "no verified image within {:?}",
            ctx.timeout
        );
        std::thread::sleep(POLL);
    };
    let tx_exit = tx.stop();
    let softirq_s = softirq_s()? - soft0;
    let s = reader.read()?;
    let ring_drops: u64 = s
        .workers
        .iter()
        .map(|w| w.kernel.rx_ring_full + w.kernel.rx_dropped)
        .sum();
    ensure!(
        exit.success(),
        "receiver failed ({}): {} [{} packets taken, {} dropped, {} ring drops]",
        exit.describe(),
        s.message,
        taken(&s),
        s.total_drops(),
        ring_drops
    );
    let dev_read = match (dev_read_now, dev0) {
        (Some(r), Some((r0, _))) => Some((r - r0) * 512),
        _ => read_bytes,
    };
    let first = first.context("the target never appeared")?;
    let (done_at, packets) =
        completion(&samples, s.block_count).context("the page never showed all blocks")?;
    let batches: u64 = s.workers.iter().map(|w| w.batches).sum();
    let tx_log = tx.output();
    let offered = field(&tx_log, "bytes")
        .zip(field(&tx_log, "secs"))
        .map(|(b, t)| b * 8.0 / t.max(1e-9) / 1e9);
    Ok(Metrics {
        path: s.mode.name().to_string(),
        receive_s: (done_at.saturating_sub(first)) as f64 / 1e9,
        verified_s: (exit.at_ns - first) as f64 / 1e9,
        packets,
        rx_cpu_s: exit.cpu_s,
        tx_cpu_s: tx_exit.cpu_s,
        tx_wall_s: (tx_exit.at_ns - tx_start) as f64 / 1e9,
        offered_gbps: offered,
        softirq_s,
        loss: s.first_pass_missing as f64 / s.block_count.max(1) as f64,
        batch: Some(taken(&s) as f64 / batches.max(1) as f64),
        batch_ns: s.workers.iter().map(|w| w.batch_ns).max_by_key(|l| l[1]),
        ring_drops: Some(ring_drops),
        fill_empty: Some(s.workers.iter().map(|w| w.kernel.fill_ring_empty).sum()),
        dev_read,
        written_half: written_half.flatten(),
        overflow: Some(s.storage.overflow_blocks),
        lane_full: Some(s.storage.lane_full),
    })
}

fn run_udpcast(ctx: &Ctx, net: &VethPair) -> Result<Metrics> {
    let out = ctx.work.join("out.img");
    let _ = std::fs::remove_file(&out);
    let outs = out.to_string_lossy();
    let pk0 = rx_packets(net)?;
    let mut rx = Proc::spawn(
        Some(&net.b.name),
        RX_CPU,
        &[
            "udp-receiver",
            "--file",
            &outs,
            "--interface",
            &net.if_b,
            "--portbase",
            UDPCAST_PORTBASE,
            "--mcast-rdv-address",
            UDPCAST_RDV,
            "--nokbd",
        ],
        &[],
        &ctx.work.join("rx-udpcast.log"),
    )?;
    std::thread::sleep(Duration::from_millis(300));
    let soft0 = softirq_s()?;
    let rate = ctx.rate_mbps.map(|m| format!("{m}m"));
    let mut argv = vec![
        "udp-sender",
        "--file",
        ctx.image.to_str().context("path")?,
        "--interface",
        &net.if_a,
        "--portbase",
        UDPCAST_PORTBASE,
        "--mcast-rdv-address",
        UDPCAST_RDV,
        "--mcast-data-address",
        UDPCAST_DATA,
        "--min-receivers",
        "1",
        "--nokbd",
    ];
    if let Some(r) = &rate {
        argv.extend(["--max-bitrate", r]);
    }
    let mut tx = Proc::spawn(
        Some(&net.a.name),
        TX_CPU,
        &argv,
        &[],
        &ctx.work.join("tx.log"),
    )?;
    let tx_start = now_ns();
    let (mut first, mut full) = (None, None);
    let deadline = Instant::now() + ctx.timeout;
    let exit = loop {
        check_interrupt()?;
        let len = file_len(&out);
        if first.is_none() && len > 0 {
            first = Some(now_ns());
        }
        if full.is_none() && len >= ctx.size {
            full = Some(now_ns());
        }
        if let Some(e) = rx.poll() {
            break e;
        }
        ensure!(
            Instant::now() < deadline,
            "no image within {:?}",
            ctx.timeout
        );
        std::thread::sleep(POLL);
    };
    ensure!(
        exit.success(),
        "udp-receiver failed ({}): {}",
        exit.describe(),
        rx.last_line()
    );
    let packets = rx_packets(net)? - pk0;
    let (digest, sha) = sha256sum(&out, &ctx.work.join("sha.log"))?;
    ensure!(
        digest == ctx.digest,
        "udpcast image differs: sha256 {digest}"
    );
    let tx_exit = tx.wait(Duration::from_secs(10));
    let softirq_s = softirq_s()? - soft0;
    let first = first.context("the target never appeared")?;
    let full = full.context("the target never reached full size")?;
    // "re-xmits=0000662 (  1.4%)": blocks sent again, as a share of the image.
    let log = tx.output();
    let loss = log
        .rsplit("re-xmits=")
        .next()
        .and_then(|t| t.split('(').nth(1))
        .and_then(|t| t.split('%').next())
        .and_then(|p| p.trim().parse::<f64>().ok())
        .map_or(0.0, |p| p / 100.0);
    Ok(Metrics {
        path: "udpcast".into(),
        receive_s: (full - first) as f64 / 1e9,
        verified_s: (sha.at_ns - first) as f64 / 1e9,
        packets,
        rx_cpu_s: exit.cpu_s + sha.cpu_s,
        tx_cpu_s: tx_exit.cpu_s,
        tx_wall_s: (tx_exit.at_ns - tx_start) as f64 / 1e9,
        offered_gbps: None,
        softirq_s,
        loss,
        batch: None,
        batch_ns: None,
        ring_drops: None,
        fill_empty: None,
        dev_read: None,
        written_half: None,
        overflow: None,
        lane_full: None,
    })
}

impl Metrics {
    fn goodput_gbps(&self, size: u64) -> f64 {
        size as f64 * 8.0 / self.receive_s.max(1e-9) / 1e9
    }

    fn cpu_per_gb(&self, size: u64) -> f64 {
        self.rx_cpu_s / (size as f64 / 1e9)
    }

    /// Which side limited the run, and why we think so.
    fn bottleneck(&self, size: u64) -> String {
        let goodput = self.goodput_gbps(size);
        let tx_util = self.tx_cpu_s / self.tx_wall_s.max(1e-9);
        let rx_util = self.rx_cpu_s / self.verified_s.max(1e-9);
        match self.offered_gbps {
            Some(o) if o > 1.2 * goodput => format!("receiver (sender offered {o:.1} Gbit/s)"),
            Some(o) => format!("sender ({o:.1} Gbit/s, CPU {:.0}%)", tx_util * 100.0),
            None if tx_util.max(rx_util) < 0.8 => format!(
                "protocol (sender CPU {:.0}%, receiver {:.0}%)",
                tx_util * 100.0,
                rx_util * 100.0
            ),
            None if tx_util >= rx_util => format!("sender (CPU {:.0}%)", tx_util * 100.0),
            None => format!("receiver (CPU {:.0}%)", rx_util * 100.0),
        }
    }
}

fn table(outcomes: &[Outcome], size: u64) -> String {
    let mut t = String::from(
        "| MTU | receiver | path | runs | goodput Gbit/s | kpkt/s | rx CPU s/GB | softirq s/GB | total CPU s/GB | loss before repair % | verified s | goodput vs XDP | total CPU vs XDP | avg batch | batch p50/p99/p99.9 µs | bottleneck |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let gb = size as f64 / 1e9;
    for o in outcomes {
        let xdp = outcomes
            .iter()
            .find(|x| x.mtu == o.mtu && x.receiver == Receiver::Xdp);
        let Some(first) = o.ok().first().copied() else {
            let e = o.failure().map_or("", |e| e.as_str());
            let _ = writeln!(
                t,
                "| {} | {} | failed | {} | - | - | - | - | - | - | - | - | - | - | - | {} |",
                o.mtu,
                o.receiver.name(),
                o.runs_ok(),
                e.replace('|', "/").replace('\n', " ")
            );
            continue;
        };
        let total = |m: &Metrics| (m.rx_cpu_s + m.softirq_s) / gb;
        let ratio = |f: &dyn Fn(&Metrics) -> f64| match (o.median(f), xdp.and_then(|x| x.median(f)))
        {
            (Some(v), Some(b)) => format!("{:.2}x", v / b),
            _ => "n/a".into(),
        };
        let lat = |i: usize| o.median(|m| m.batch_ns.map_or(0.0, |l| l[i] as f64 / 1e3));
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            o.mtu,
            o.receiver.name(),
            first.path,
            o.runs_ok(),
            o.spread(2, |m| Some(m.goodput_gbps(size))),
            o.spread(0, |m| Some(m.packets as f64 / m.receive_s.max(1e-9) / 1e3)),
            o.spread(2, |m| Some(m.cpu_per_gb(size))),
            o.spread(2, |m| Some(m.softirq_s / gb)),
            o.spread(2, |m| Some(total(m))),
            o.spread(1, |m| Some(m.loss * 100.0)),
            o.spread(2, |m| Some(m.verified_s)),
            ratio(&|m| m.goodput_gbps(size)),
            ratio(&total),
            o.spread(1, |m| m.batch),
            if first.batch_ns.is_some() {
                format!(
                    "{:.1} / {:.1} / {:.1}",
                    lat(0).unwrap_or(0.0),
                    lat(1).unwrap_or(0.0),
                    lat(2).unwrap_or(0.0)
                )
            } else {
                "-".into()
            },
            first.bottleneck(size),
        );
    }
    t
}

/// The keep-up table: one row per target and rate, XDP path.
fn keepup_table(rows: &[(TargetKind, String, Outcome)], size: u64) -> String {
    let mut t = String::from(
        "| target | rate Mbit/s | runs | goodput Gbit/s | ring drops | fill ring empty | first-pass loss % | device read MiB | on disk at half MiB | overflow blocks | lane full blocks | rx CPU s/GB | total CPU s/GB | batch p99.9 µs |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let gb = size as f64 / 1e9;
    let mib = |b: Option<u64>| b.map(|b| b as f64 / f64::from(1u32 << 20));
    for (kind, rate, o) in rows {
        if o.ok().is_empty() {
            let e = o.failure().map_or("", |e| e.as_str());
            let _ = writeln!(
                t,
                "| {} | {rate} | {} | failed: {} | | | | | | | | | | |",
                kind.name(),
                o.runs_ok(),
                e.replace('|', "/").replace('\n', " ")
            );
            continue;
        }
        let _ = writeln!(
            t,
            "| {} | {rate} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            kind.name(),
            o.runs_ok(),
            o.spread(2, |m| Some(m.goodput_gbps(size))),
            o.spread(0, |m| m.ring_drops.map(|v| v as f64)),
            o.spread(0, |m| m.fill_empty.map(|v| v as f64)),
            o.spread(2, |m| Some(m.loss * 100.0)),
            o.spread(1, |m| mib(m.dev_read)),
            o.spread(0, |m| mib(m.written_half)),
            o.spread(0, |m| m.overflow.map(|v| v as f64)),
            o.spread(0, |m| m.lane_full.map(|v| v as f64)),
            o.spread(2, |m| Some(m.cpu_per_gb(size))),
            o.spread(2, |m| Some((m.rx_cpu_s + m.softirq_s) / gb)),
            o.spread(0, |m| m.batch_ns.map(|l| l[2] as f64 / 1e3)),
        );
    }
    t
}

/// `results.json`: the machine-readable twin of `results.md`, one entry per
/// run.
#[derive(Debug, Serialize)]
struct Results<'a> {
    /// CPU, CPU count and kernel.
    machine: String,
    /// Image size in bytes.
    image_bytes: u64,
    /// Pacing of the comparison's senders, Mbit/s (None: unpaced blast).
    rate_mbps: Option<u64>,
    runs: Vec<Run<'a>>,
    /// The sparse part's rows, each with its runs.
    sparse: &'a [crate::sparse::Row],
}

/// One run of `results.json`: what it measured, or why it failed.
#[derive(Debug, Serialize)]
struct Run<'a> {
    /// "compare" or "keepup".
    part: &'static str,
    mtu: u32,
    receiver: &'static str,
    /// Target of a keep-up run.
    target: Option<&'static str>,
    /// Pacing of a keep-up run, Mbit/s or "max".
    rate: Option<&'a str>,
    /// The measurements, None when the run failed.
    metrics: Option<&'a Metrics>,
    /// Image bits per second of receive time, Gbit/s.
    goodput_gbps: Option<f64>,
    /// Receiver CPU seconds per GB of image.
    rx_cpu_s_per_gb: Option<f64>,
    /// Which side limited the run.
    bottleneck: Option<String>,
    /// Why the run failed.
    error: Option<&'a str>,
}

/// The runs of `o` as `results.json` lists them.
fn runs_of<'a>(
    part: &'static str,
    o: &'a Outcome,
    target: Option<TargetKind>,
    rate: Option<&'a str>,
    size: u64,
) -> Vec<Run<'a>> {
    o.runs
        .iter()
        .map(|r| {
            let m = r.as_ref().ok();
            Run {
                part,
                mtu: o.mtu,
                receiver: o.receiver.name(),
                target: target.map(TargetKind::name),
                rate,
                metrics: m,
                goodput_gbps: m.map(|m| m.goodput_gbps(size)),
                rx_cpu_s_per_gb: m.map(|m| m.cpu_per_gb(size)),
                bottleneck: m.map(|m| m.bottleneck(size)),
                error: r.as_ref().err().map(String::as_str),
            }
        })
        .collect()
}

fn results_json(
    outcomes: &[Outcome],
    keepup: &[(TargetKind, String, Outcome)],
    sparse: &[crate::sparse::Row],
    size: u64,
    rate_mbps: Option<u64>,
    machine: String,
) -> String {
    let runs = outcomes
        .iter()
        .flat_map(|o| runs_of("compare", o, None, None, size))
        .chain(
            keepup
                .iter()
                .flat_map(|(k, rate, o)| runs_of("keepup", o, Some(*k), Some(rate), size)),
        )
        .collect();
    let r = Results {
        machine,
        image_bytes: size,
        rate_mbps,
        runs,
        sparse,
    };
    serde_json::to_string_pretty(&r).expect("plain values") + "\n"
}

pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    let kernel = cmd_ok("uname", &["-r"]).unwrap_or_default();
    format!("{cpu}, {ncpu} CPUs, kernel {}", kernel.trim())
}

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
    let digest = if args.part == Part::Sparse && !args.finish {
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
            crate::finish::run(&ctx, runs)?
        );
        println!("\n{md}");
        let out = root.join(&args.out);
        std::fs::create_dir_all(&out)?;
        std::fs::write(out.join("finish.md"), &md)?;
        return Ok(());
    }
    let machine = machine();
    let mut md = format!(
        "Machine: {machine}. Image {} MiB, sender on CPU {TX_CPU}, receiver on CPU {RX_CPU}, \
         {runs} runs per row: median (min-max).\n\n",
        size >> 20
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
                        Receiver::Xdp => run_xdpcast(&ctx, &net, "xdp", &[], &tmpfs, ctx.rate_mbps),
                        Receiver::Socket => {
                            let off = ["--socket-gro", "off"];
                            run_xdpcast(&ctx, &net, "socket", &off, &tmpfs, ctx.rate_mbps)
                        }
                        Receiver::SocketGro => VethGro::on(&net).and_then(|gro| {
                            let on = ["--socket-gro", "on"];
                            let napi0 = gro.cpu_s();
                            let mut m =
                                run_xdpcast(&ctx, &net, "socket", &on, &tmpfs, ctx.rate_mbps)?;
                            // The receive side's kernel work, as softirq is.
                            m.softirq_s += gro.cpu_s() - napi0;
                            Ok(m)
                        }),
                        Receiver::Udpcast => run_udpcast(&ctx, &net),
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
                let mut o = Outcome {
                    receiver: Receiver::Xdp,
                    mtu: 1500,
                    runs: Vec::new(),
                };
                for i in 0..runs {
                    check_interrupt()?;
                    eprintln!(
                        "bench: keep-up, {}, {rate} Mbit/s, run {}",
                        kind.name(),
                        i + 1
                    );
                    if let Some(l) = &lo {
                        l.drop_cache()?;
                    }
                    let result = run_xdpcast(&ctx, &net, "xdp", &[], &target, mbps);
                    check_interrupt()?;
                    o.runs.push(result.map_err(|e| format!("{e:#}")));
                    if let Some(Err(e)) = o.runs.last() {
                        eprintln!("bench:   failed: {e}");
                    }
                }
                rows.push((kind, rate.clone(), o));
            }
            if target.dev_stat.is_none() {
                let _ = std::fs::remove_file(&target.path);
            }
        }
        md += "\n### Keep-up: XDP path, MTU 1500, paced and unpaced, three targets\n\n\
               The loop device does direct I/O on a file of old data on the disk, its \
               cache dropped before each run. \"ring drops\" are the kernel's AF_XDP \
               rx_ring_full + rx_dropped; \"device read\" is the loop device's read \
               sectors (files: the receiver's /proc/PID/io read_bytes) from the sender's \
               start until the last block was in (not the SHA-256 read-back); \
               \"on disk at half\" is the loop device's written sectors, or the ext4 file's \
               clean and evicted pages (cachestat), when half the blocks were in.\n\n";
        md += &keepup_table(&rows, size);
    }

    let mut sparse_rows = Vec::new();
    if matches!(args.part, Part::All | Part::Sparse) {
        let targets = if args.quick {
            vec![TargetKind::Tmpfs]
        } else {
            args.targets.clone()
        };
        let (section, rows) = crate::sparse::run(&ctx, &targets, runs)?;
        md += &section;
        sparse_rows = rows;
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
