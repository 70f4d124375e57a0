//! The bench's plumbing: scratch directories, targets and loop devices, pinned
//! child processes, device and CPU counters, medians and ranges, the
//! receiver's status page followed until it exits.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use xdpcast::status::page::{now_ns, Snapshot, StatusReader};
use xdpcast_bench::netns::VethPair;

/// The xdpcast session's group and port on the bench's veth pair.
pub(super) const GROUP: &str = "239.77.0.1:5000";
/// udpcast's rendezvous and data groups, and its port base.
pub(super) const UDPCAST_RDV: &str = "239.77.0.2";
pub(super) const UDPCAST_DATA: &str = "239.77.0.3";
pub(super) const UDPCAST_PORTBASE: &str = "9000";
/// The sender's and the receiver's CPU.
pub(super) const TX_CPU: &str = "0";
pub(super) const RX_CPU: &str = "1";
/// How often the harness samples a status page or a file's size.
pub(super) const POLL: Duration = Duration::from_millis(2);

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
pub(super) fn old_data(mut f: File, size: u64) -> Result<()> {
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
    pub(super) fn drop_cache(&self) -> Result<()> {
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
pub(super) fn dev_sectors(stat: &Path) -> Result<(u64, u64)> {
    let t = std::fs::read_to_string(stat)?;
    let f: Vec<u64> = t
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    Ok((f[2], f[6]))
}

/// Bytes process `pid` caused to be read from storage (`/proc/PID/io`).
pub(super) fn proc_read_bytes(pid: libc::pid_t) -> Option<u64> {
    let t = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    t.lines()
        .find_map(|l| l.strip_prefix("read_bytes: "))
        .and_then(|v| v.trim().parse().ok())
}

/// Bytes of `path`'s first `len` bytes that are on the disk: cached pages
/// that are neither dirty nor under writeback, plus evicted ones
/// (`cachestat(2)`, Linux 6.5).
pub(super) fn bytes_on_disk(path: &Path, len: u64) -> Option<u64> {
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

pub(super) static INTERRUPTED: AtomicBool = AtomicBool::new(false);

pub(super) extern "C" fn on_signal(_: libc::c_int) {
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
    pub(super) pid: libc::pid_t,
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

/// The bench's signing key, `bench.key` in the work directory (its public
/// half `bench.key.pub`), made by `xdpcast keygen` on first use.
pub(crate) fn keygen(ctx: &Ctx) -> Result<PathBuf> {
    let key = ctx.work.join("bench.key");
    if !key.exists() {
        let kg = Command::new(ctx.bin.join("xdpcast"))
            .args(["keygen", "--out"])
            .arg(&key)
            .output()?;
        ensure!(
            kg.status.success(),
            "keygen failed: {}",
            String::from_utf8_lossy(&kg.stderr)
        );
    }
    Ok(key)
}

/// Softirq time of all CPUs, seconds (USER_HZ is 100 on Linux).
pub(super) fn softirq_s() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let ticks: f64 = line
        .split_whitespace()
        .nth(7)
        .context("no softirq in /proc/stat")?
        .parse()?;
    Ok(ticks / 100.0)
}

pub(super) fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

pub(super) fn rx_packets(net: &VethPair) -> Result<u64> {
    rx_counter(net, "rx_packets")
}

/// A counter of the receiving veth (`/sys/class/net/IF/statistics/NAME`).
pub(crate) fn rx_counter(net: &VethPair, name: &str) -> Result<u64> {
    let p = format!("/sys/class/net/{}/statistics/{name}", net.if_b);
    Ok(cmd_ok("ip", &["netns", "exec", &net.b.name, "cat", &p])?
        .trim()
        .parse()?)
}

pub(super) fn sha256sum(path: &Path, log: &Path) -> Result<(String, Exit)> {
    digest_by(&["sha256sum", &path.to_string_lossy()], log)
}

/// The digest `args` (a sha256sum command line) prints first, on the
/// receiver's CPU, with its exit.
pub(super) fn digest_by(args: &[&str], log: &Path) -> Result<(String, Exit)> {
    let mut p = Proc::spawn(None, RX_CPU, args, &[], log)?;
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
pub(super) fn field(text: &str, key: &str) -> Option<f64> {
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

/// Poll `child` every [`POLL`] until it exits: its exit. `each` runs
/// before every look (what the caller samples meanwhile); after `timeout`,
/// an error "no {what} within {timeout:?}".
pub(crate) fn until_exit(
    child: &mut Proc,
    timeout: Duration,
    what: &str,
    mut each: impl FnMut() -> Result<()>,
) -> Result<Exit> {
    let deadline = Instant::now() + timeout;
    loop {
        check_interrupt()?;
        each()?;
        if let Some(e) = child.poll() {
            return Ok(e);
        }
        ensure!(Instant::now() < deadline, "no {what} within {timeout:?}");
        std::thread::sleep(POLL);
    }
}

/// udpcast's `udp-sender` of `image` on `net`'s sending side, to the
/// data address [`UDPCAST_DATA`], waiting for one receiver; the caller
/// adds how the receiver finds it.
pub(crate) fn udp_sender_argv<'a>(image: &'a str, net: &'a VethPair) -> Vec<&'a str> {
    vec![
        "udp-sender",
        "--file",
        image,
        "--interface",
        &net.if_a,
        "--portbase",
        UDPCAST_PORTBASE,
        "--mcast-data-address",
        UDPCAST_DATA,
        "--min-receivers",
        "1",
        "--nokbd",
    ]
}

pub(crate) fn taken(s: &Snapshot) -> u64 {
    s.workers.iter().map(|w| w.packets).sum()
}
