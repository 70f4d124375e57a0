//! `xdpcast udp-receiver` (also the binary invoked as `udp-receiver`): the
//! command line of udpcast's udp-receiver, as Clonezilla and FOG call it,
//! on top of the udpcast receiver. docs/udpcast.md lists what each option
//! does here.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::Seek;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use xdpcast::receive::udpcast::{self, UdpcastRequest};
use xdpcast::{ErrorCode, ModeRequest, SessionRequest, State};

use crate::exit::outside_exit;
use crate::receive::{receive_udpcast, Mode};

/// udp-receiver's exit status when no sender showed up within
/// `--start-timeout` (its receiver returns -1).
const EXIT_NO_SENDER: u8 = 255;

/// udp-receiver's options (udpcast 20120424), with its short forms.
#[derive(clap::Args)]
pub struct UdpReceiverArgs {
    /// Write the image to this file or device (default: standard output).
    #[arg(short = 'f', long)]
    file: Option<PathBuf>,
    /// Send the image through this shell command (e.g. "gzip -dc"), whose
    /// standard output is the --file (or standard output).
    #[arg(short = 'p', long)]
    pipe: Option<String>,
    /// Port base: the receiver uses it, the sender portbase + 1.
    #[arg(short = 'P', long, visible_alias = "port", default_value_t = udpcast::DEFAULT_PORTBASE)]
    portbase: u16,
    /// Network interface (default: the first one up with an IPv4 address).
    #[arg(short = 'i', long)]
    interface: Option<String>,
    /// TTL of the connect requests; other than 1, they are multicast to
    /// 224.0.0.1 (unless --mcast-rdv-address is given).
    #[arg(short = 't', long, default_value_t = 1)]
    ttl: u32,
    /// Where to send connect requests: a multicast group to join, or the
    /// sender's own address.
    #[arg(short = 'M', long, visible_aliases = ["mcast-all-address"],
          aliases = ["mcast_rdv_address", "mcast_all_address"])]
    mcast_rdv_address: Option<Ipv4Addr>,
    /// Do not wait for a key press (xdpcast never reads the keyboard).
    #[arg(short = 'k', long)]
    nokbd: bool,
    /// Seconds to wait for the sender and for the start of the transfer
    /// (0: forever).
    #[arg(short = 's', long, default_value_t = 0)]
    start_timeout: u64,
    /// Seconds without a packet once the transfer has started before giving
    /// up (0: forever).
    #[arg(long, default_value_t = 0)]
    receive_timeout: u64,
    /// Receive buffer of the sockets, bytes (k, m suffixes).
    #[arg(short = 'b', long, value_parser = parse_size)]
    rcvbuf: Option<usize>,
    /// Append the receiver's messages to this file (with the time of
    /// each) instead of standard error.
    #[arg(short = 'l', long)]
    pub log: Option<PathBuf>,
    /// Print no statistics line.
    #[arg(long)]
    no_progress: bool,
    /// Milliseconds to keep answering the sender once the transfer is
    /// complete, in case the final answer was lost.
    #[arg(short = 'w', long, alias = "exitWait", default_value_t = 500)]
    exit_wait: u64,
    /// Do not open the target in synchronous mode (the default here).
    #[arg(short = 'n', long)]
    nosync: bool,
    /// Synchronous writes: not done; the target is synced once at the end.
    #[arg(short = 'y', long)]
    sync: bool,
    /// Passive (asynchronous) mode: not supported.
    #[arg(short = 'd', long)]
    passive: bool,
    /// Fill lost data with garbage instead of failing: not supported.
    #[arg(short = 'Z', long)]
    ignore_lost_data: bool,
    /// 1: add the position in the output file to the statistics line, 0:
    /// never (default: with --pipe into a seekable --file).
    #[arg(short = 'x', long)]
    print_uncompressed_position: Option<u32>,
    /// Milliseconds between two statistics lines on standard error.
    #[arg(short = 'z', long, alias = "stat-period", default_value_t = 500)]
    statistics_period: u64,
    /// Print the licence and exit.
    #[arg(short = 'L', long)]
    license: bool,
    /// xdpcast: data path.
    #[arg(long, value_enum, default_value_t = Mode::Auto, help_heading = XDPCAST)]
    mode: Mode,
    /// xdpcast: session name for the status page (default: udp-receiver-PORTBASE).
    #[arg(long, help_heading = XDPCAST)]
    name: Option<String>,
    /// xdpcast: leave the status page after exit (`xdpcast close NAME` removes it).
    #[arg(long, help_heading = XDPCAST)]
    keep_status: bool,
    /// xdpcast: MiB of the reorder window when writing to a pipe.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=65536),
          help_heading = XDPCAST)]
    stream_window_mib: u64,
    /// Arguments that are not options: ignored, as udp-receiver does.
    #[arg(hide = true)]
    stray: Vec<String>,
}

/// Help heading of the options udp-receiver does not have.
const XDPCAST: &str = "xdpcast options";

/// udp-receiver's command line with each abbreviated long option written
/// out, by getopt_long's rule: an unambiguous prefix of a long option (or
/// of one of its names: `--mcast-all-addr`, `--inter`, `--start-t`) stands
/// for it, and so does a prefix whose matches are all names of one option.
/// Where a prefix matches one of udp-receiver's options and also one of
/// xdpcast's additions (`--m`: `--mcast-rdv-address` and `--mode`),
/// udp-receiver's meaning wins, so that no udpcast command line changes
/// meaning here. Other prefixes are left for clap (`infer_long_args`).
/// `args` starts after the subcommand; option values and everything after
/// `--` are left alone.
pub fn expand_prefixes(cmd: &clap::Command, args: &[OsString]) -> Vec<OsString> {
    let names = |a: &clap::Arg| -> Vec<String> {
        let mut n: Vec<String> = a.get_long().map(str::to_string).into_iter().collect();
        n.extend(
            a.get_all_aliases()
                .unwrap_or_default()
                .into_iter()
                .map(str::to_string),
        );
        n
    };
    let takes_value = |a: &clap::Arg| a.get_action().takes_values();
    let udpcast = |a: &clap::Arg| {
        a.get_help_heading() != Some(XDPCAST) && !a.is_global_set() && a.get_id() != "help"
    };
    let mut out = Vec::with_capacity(args.len());
    let mut value_next = false;
    let mut rest = false;
    for arg in args {
        let Some(text) = arg.to_str().filter(|_| !rest && !value_next) else {
            value_next = false;
            out.push(arg.clone());
            continue;
        };
        if text == "--" {
            rest = true;
        } else if let Some(long) = text.strip_prefix("--") {
            let (name, value) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (long, None),
            };
            let exact = cmd
                .get_arguments()
                .find(|a| names(a).iter().any(|n| n == name));
            let matches: Vec<&clap::Arg> = cmd
                .get_arguments()
                .filter(|a| names(a).iter().any(|n| n.starts_with(name)))
                .collect();
            let theirs: Vec<&clap::Arg> = matches.iter().copied().filter(|a| udpcast(a)).collect();
            let found = match (exact, &matches[..], &theirs[..]) {
                (Some(a), _, _) => Some(a),
                (None, [a], _) | (None, _, [a]) => Some(*a),
                _ => None,
            };
            if let (Some(a), Some(full)) = (found, found.and_then(|a| a.get_long())) {
                value_next = takes_value(a) && value.is_none();
                let mut expanded = format!("--{full}");
                if let Some(v) = value {
                    expanded = format!("{expanded}={v}");
                }
                out.push(expanded.into());
                continue;
            }
        } else if let Some(shorts) = text.strip_prefix('-') {
            // A cluster of short options: a value is attached or comes next.
            for (i, c) in shorts.char_indices() {
                let Some(a) = cmd.get_arguments().find(|a| a.get_short() == Some(c)) else {
                    break;
                };
                if takes_value(a) {
                    value_next = i + c.len_utf8() == shorts.len();
                    break;
                }
            }
        }
        out.push(arg.clone());
    }
    out
}

/// "64k", "8m", "1048576": a size in bytes, as udpcast parses it.
fn parse_size(s: &str) -> Result<usize, String> {
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1 << 10),
        Some((i, 'm' | 'M')) => (&s[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("bad size {s:?}: use e.g. 4m"))
}

impl UdpReceiverArgs {
    /// One line for each option that is accepted but cannot be honoured.
    fn say_what_is_not_honoured(&self) {
        let say = |what: &str| log::warn!("udp-receiver: {what}");
        if !self.stray.is_empty() {
            say(&format!(
                "ignoring arguments that are not options: {}",
                self.stray.join(" ")
            ));
        }
        if self.sync {
            say("--sync ignored: the target is synced once, at the end");
        }
        if self.passive {
            say("--passive not supported: this receiver always connects to the sender");
        }
        if self.ignore_lost_data {
            say("--ignore-lost-data not supported: lost data is asked for again, never replaced");
        }
    }
}

/// What `--license` prints (udp-receiver prints its licence and exits).
const LICENSE: &str = concat!(
    "xdpcast ",
    env!("CARGO_PKG_VERSION"),
    " is free software, licensed under the MIT licence or the Apache\n",
    "License 2.0, at your option (/usr/share/doc/xdpcast/copyright).\n",
    "It speaks udpcast's protocol and decodes its FEC blocks with its own\n",
    "code: no udpcast code is used. There is NO WARRANTY, to the extent\n",
    "permitted by law.\n",
);

/// udpcast's number format: groups of three digits (`  1 234 567 `), in
/// K (1024) or M (1 MiB) units past 10^9 and 10^12 bytes.
fn long_num(x: u64) -> String {
    let (unit, suffix) = if x > 1_000_000_000_000 {
        (1 << 20, 'M')
    } else if x >= 1_000_000_000 {
        (1 << 10, 'K')
    } else {
        (1, ' ')
    };
    let mut out = String::new();
    let mut nonzero = false;
    for divisor in [1_000_000, 1_000, 1] {
        let digits = x / (unit * divisor) % 1000;
        match (digits, nonzero) {
            (_, true) => out.push_str(&format!("{digits:03}")),
            (0, false) => out.push_str("    "),
            _ => out.push_str(&format!("{digits:3}")),
        }
        nonzero |= digits != 0;
        out.push(if divisor > 1 { ' ' } else { suffix });
    }
    out
}

/// udp-receiver's statistics line on standard error, every
/// `--stat-period` milliseconds and once at the end.
struct Stats {
    period: Duration,
    /// The output file behind `--pipe`, whose position is printed.
    position_of: Option<File>,
    start: Option<Instant>,
    last: Option<Instant>,
}

impl Stats {
    fn new(a: &UdpReceiverArgs, output: Option<File>) -> Stats {
        let seekable = |f: &File| (&*f).stream_position().is_ok();
        let position = match a.print_uncompressed_position {
            Some(flag) => flag != 0,
            None => a.pipe.is_some() && output.as_ref().is_some_and(seekable),
        };
        Stats {
            period: Duration::from_millis(a.statistics_period),
            position_of: if position { output } else { None },
            start: None,
            last: None,
        }
    }

    /// Print the line if the period has passed (or `last`).
    fn show(&mut self, bytes: u64, last: bool) {
        let now = Instant::now();
        if bytes == 0 {
            return;
        }
        let start = *self.start.get_or_insert(now);
        if !last
            && self
                .last
                .is_some_and(|t| now.duration_since(t) < self.period)
        {
            return;
        }
        self.last = Some(now);
        let secs = now.duration_since(start).as_secs_f64();
        let rate = if secs > 0.0 {
            format!("{:6.2}", bytes as f64 * 8.0 / secs / 1e6)
        } else {
            "***.**".to_string()
        };
        let mut line = format!("bytes={} ({rate} Mbps)", long_num(bytes));
        if let Some(f) = &mut self.position_of {
            if let Ok(p) = f.stream_position() {
                line.push_str(&long_num(p));
            }
        }
        eprint!("{line}{}", if last { "\n" } else { "\r" });
    }
}

/// Open udp-receiver's `--log` file for appending.
pub fn open_log(path: &PathBuf) -> anyhow::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .with_context(|| format!("open log file {}", path.display()))
}

/// The local time of day as udpcast's log shows it: `HH:MM:SS.uuuuuu`.
pub fn log_time() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as libc::time_t;
    // SAFETY: localtime_r only writes the `tm` it is given.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&secs, &mut tm);
        tm
    };
    format!(
        "{:02}:{:02}:{:02}.{:06}",
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        now.subsec_micros()
    )
}

/// Start `sh -c COMMAND` with our standard output (or `file`) as its
/// standard output, and make our standard output the pipe to its standard
/// input, so the image streams through it.
/// Returns the command and a handle on the `--file` it writes (whose
/// position the statistics line may show).
fn spawn_pipe(command: &str, file: Option<&PathBuf>) -> anyhow::Result<(Child, Option<File>)> {
    let stdout_file = match file {
        Some(f) => Some(
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(f)
                .with_context(|| format!("open outfile {}", f.display()))?,
        ),
        None => None,
    };
    let output = match &stdout_file {
        Some(f) => Some(f.try_clone().context("duplicate the output file")?),
        None => None,
    };
    let stdout = match stdout_file {
        Some(f) => Stdio::from(f),
        None => Stdio::inherit(),
    };
    let mut child = Command::new("/bin/sh")
        .args(["-c", command])
        .stdin(Stdio::piped())
        .stdout(stdout)
        .spawn()
        .with_context(|| format!("start pipe command {command:?}"))?;
    let input = child.stdin.take().context("pipe command without stdin")?;
    // SAFETY: both descriptors are open; dup2 replaces fd 1 atomically.
    if unsafe { libc::dup2(input.as_raw_fd(), libc::STDOUT_FILENO) } < 0 {
        return Err(std::io::Error::last_os_error()).context("dup2 onto stdout");
    }
    Ok((child, output))
}

/// Close our end of the pipe to the pipe command (fd 1 now points at
/// /dev/null), so that it sees the end of its input.
fn close_stdout() -> anyhow::Result<()> {
    let null = OpenOptions::new().write(true).open("/dev/null")?;
    // SAFETY: both descriptors are open; dup2 replaces fd 1 atomically.
    if unsafe { libc::dup2(null.as_raw_fd(), libc::STDOUT_FILENO) } < 0 {
        return Err(std::io::Error::last_os_error()).context("dup2 onto stdout");
    }
    Ok(())
}

fn timeout(secs: u64) -> Duration {
    if secs == 0 {
        Duration::MAX
    } else {
        Duration::from_secs(secs)
    }
}

/// Receive as udp-receiver would: exit 0 on success, 255 when no sender
/// came within `--start-timeout`, 1 on any other failure (the status page
/// has the xdpcast error code).
pub fn run(a: UdpReceiverArgs) -> anyhow::Result<ExitCode> {
    if a.license {
        eprint!("{LICENSE}");
        return Ok(ExitCode::SUCCESS);
    }
    a.say_what_is_not_honoured();
    let iface = match &a.interface {
        Some(i) => i.clone(),
        None => udpcast::default_iface()?,
    };
    let target = match (&a.file, &a.pipe) {
        (Some(f), None) => f.clone(),
        _ => PathBuf::from("-"),
    };
    let name = a
        .name
        .clone()
        .unwrap_or_else(|| format!("udp-receiver-{}", a.portbase));
    let mut session = SessionRequest::new(&name, udpcast::any_group(a.portbase), &iface, target);
    session.start_timeout = timeout(a.start_timeout);
    session.idle_timeout = timeout(a.receive_timeout);
    session.stream_window = a.stream_window_mib << 20;
    if let Some(b) = a.rcvbuf {
        session.rcvbuf = b;
    }
    session.mode = match a.mode {
        Mode::Auto => ModeRequest::Auto,
        Mode::Xdp => ModeRequest::Xdp,
        Mode::Socket => ModeRequest::Socket,
    };
    let mut req = UdpcastRequest::new(session, a.portbase);
    req.rendezvous = a.mcast_rdv_address;
    req.ttl = a.ttl;
    req.exit_wait = Duration::from_millis(a.exit_wait);
    let (child, output) = match &a.pipe {
        Some(cmd) => {
            let (child, output) = spawn_pipe(cmd, a.file.as_ref())?;
            (Some((cmd, child)), output)
        }
        None => (None, None),
    };
    let mut stats = (!a.no_progress).then(|| Stats::new(&a, output));
    let snap = receive_udpcast(&req, a.keep_status, true, &mut |s| {
        if let Some(st) = &mut stats {
            st.show(s.bytes_done, s.state != State::InProgress);
        }
    });
    let piped_ok = match child {
        Some((cmd, mut child)) => {
            close_stdout()?;
            let st = child.wait().context("wait for the pipe command")?;
            if !st.success() {
                eprintln!("xdpcast udp-receiver: pipe command {cmd:?} failed: {st}");
            }
            st.success()
        }
        None => true,
    };
    let snap = snap?;
    if let Some(outside) = outside_exit(snap.state, snap.error) {
        return Ok(outside);
    }
    Ok(match (snap.state, snap.error) {
        (State::Success, _) if piped_ok => ExitCode::SUCCESS,
        (State::Failure, ErrorCode::Timeout) => ExitCode::from(EXIT_NO_SENDER),
        _ => ExitCode::FAILURE,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    /// udp-receiver's long options (udpcast 20120424's getopt_long table)
    /// and the option each is here.
    const UDPCAST: [(&str, &str); 26] = [
        ("file", "file"),
        ("pipe", "pipe"),
        ("port", "portbase"),
        ("portbase", "portbase"),
        ("interface", "interface"),
        ("ttl", "ttl"),
        ("mcast_all_address", "mcast-rdv-address"),
        ("mcast-all-address", "mcast-rdv-address"),
        ("mcast_rdv_address", "mcast-rdv-address"),
        ("mcast-rdv-address", "mcast-rdv-address"),
        ("passive", "passive"),
        ("nosync", "nosync"),
        ("sync", "sync"),
        ("rcvbuf", "rcvbuf"),
        ("nokbd", "nokbd"),
        ("exitWait", "exit-wait"),
        ("exit-wait", "exit-wait"),
        ("start-timeout", "start-timeout"),
        ("receive-timeout", "receive-timeout"),
        ("license", "license"),
        ("log", "log"),
        ("no-progress", "no-progress"),
        ("print-uncompressed-position", "print-uncompressed-position"),
        ("statistics-period", "statistics-period"),
        ("stat-period", "statistics-period"),
        ("ignore-lost-data", "ignore-lost-data"),
    ];

    fn command() -> clap::Command {
        let mut cmd = crate::cli::Cli::command();
        cmd.build();
        cmd.find_subcommand("udp-receiver").unwrap().clone()
    }

    fn expand(cmd: &clap::Command, args: &[&str]) -> Vec<String> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        expand_prefixes(cmd, &args)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn every_prefix_getopt_long_takes_means_the_same_option() {
        let cmd = command();
        for (name, target) in UDPCAST {
            for end in 1..=name.len() {
                let prefix = &name[..end];
                let targets: std::collections::BTreeSet<&str> = UDPCAST
                    .iter()
                    .filter(|(n, _)| n.starts_with(prefix))
                    .map(|(_, t)| *t)
                    .collect();
                if UDPCAST.iter().any(|(n, _)| *n == prefix) || targets.len() == 1 {
                    let exact = UDPCAST.iter().find(|(n, _)| *n == prefix);
                    let want = exact.map_or(target, |(_, t)| t);
                    assert_eq!(
                        expand(&cmd, &[&format!("--{prefix}=1")]),
                        [format!("--{want}=1")],
                        "--{prefix}"
                    );
                }
            }
        }
    }

    #[test]
    fn clonezilla_and_fog_lines_parse() {
        let lines: [&[&str]; 4] = [
            &[
                "--nokbd",
                "--mcast-all-addr",
                "224.0.0.1",
                "--portbase",
                "2232",
                "--ttl",
                "1",
            ],
            &[
                "--nokbd",
                "--portbase",
                "9000",
                "--ttl",
                "32",
                "--mcast-rdv-address",
                "10.0.0.1",
            ],
            &[
                "--inter",
                "eth0",
                "--start-t",
                "10",
                "--receive-t",
                "30",
                "-kn",
                "-P9000",
                "x",
            ],
            &[
                "--m",
                "224.0.0.1",
                "--stat",
                "100",
                "-z",
                "200",
                "--exitW",
                "5",
                "--pipe",
                "gzip -dc",
            ],
        ];
        for line in lines {
            let mut args = vec!["xdpcast", "udp-receiver"];
            args.extend_from_slice(line);
            let os: Vec<OsString> = args.iter().map(OsString::from).collect();
            let mut all = os[..2].to_vec();
            all.extend(expand_prefixes(&command(), &os[2..]));
            let cli =
                crate::cli::Cli::try_parse_from(&all).unwrap_or_else(|e| panic!("{line:?}: {e}"));
            let crate::cli::Cmd::UdpReceiver(a) = cli.cmd else {
                panic!("{line:?}")
            };
            match line[0] {
                "--nokbd" if line[1] == "--mcast-all-addr" => {
                    assert_eq!(a.mcast_rdv_address, Some(Ipv4Addr::new(224, 0, 0, 1)));
                    assert_eq!((a.portbase, a.ttl), (2232, 1));
                }
                "--inter" => {
                    assert_eq!(a.interface.as_deref(), Some("eth0"));
                    assert_eq!((a.start_timeout, a.receive_timeout), (10, 30));
                    assert!(a.nokbd && a.nosync);
                    assert_eq!(a.stray, ["x"]);
                }
                "--m" => {
                    assert_eq!(a.mcast_rdv_address, Some(Ipv4Addr::new(224, 0, 0, 1)));
                    // Repeated options: the last one counts, as with getopt.
                    assert_eq!(a.statistics_period, 200);
                    assert_eq!(a.exit_wait, 5);
                    assert_eq!(a.pipe.as_deref(), Some("gzip -dc"));
                }
                _ => assert_eq!(a.ttl, 32),
            }
        }
    }

    #[test]
    fn numbers_print_as_udpcast_prints_them() {
        assert_eq!(long_num(1_234_567), "  1 234 567 ");
        assert_eq!(long_num(1_000), "       1 000 ");
        assert_eq!(long_num(7), "            7 ");
        assert_eq!(long_num(2_000_000_000), "  1 953 125K");
    }
}
