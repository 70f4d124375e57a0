//! `xdpcast udp-receiver` (also the binary invoked as `udp-receiver`): the
//! command line of udpcast's udp-receiver, as Clonezilla and FOG call it,
//! on top of the udpcast receiver. docs/udpcast.md lists what each option
//! does here.

use std::fs::OpenOptions;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::Context;
use xdpcast::receive::udpcast::{self, UdpcastRequest};
use xdpcast::{ErrorCode, ModeRequest, SessionRequest, State};

use super::{receive_udpcast, Mode};

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
    /// udp-receiver's log file: not written (one line says so).
    #[arg(short = 'l', long)]
    log: Option<PathBuf>,
    /// No progress display (xdpcast prints none in this mode).
    #[arg(long)]
    no_progress: bool,
    /// Milliseconds to linger after the last REQACK: not needed (ignored).
    #[arg(short = 'w', long, alias = "exitWait")]
    exit_wait: Option<u64>,
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
    /// Statistics output: not printed (ignored).
    #[arg(short = 'x', long)]
    print_uncompressed_position: Option<u32>,
    /// Statistics period: not printed (ignored).
    #[arg(short = 'z', long, aliases = ["stat-period"])]
    statistics_period: Option<u64>,
    /// udpcast's FEC licence text: not applicable.
    #[arg(short = 'L', long)]
    license: bool,
    /// xdpcast: data path.
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    mode: Mode,
    /// xdpcast: session name for the status page (default: udp-receiver-PORTBASE).
    #[arg(long)]
    name: Option<String>,
    /// xdpcast: leave the status page after exit (`xdpcast close NAME` removes it).
    #[arg(long)]
    keep_status: bool,
    /// xdpcast: MiB of the reorder window when writing to a pipe.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=65536))]
    stream_window_mib: u64,
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
        let say = |what: &str| eprintln!("xdpcast udp-receiver: {what}");
        if self.log.is_some() {
            say("--log ignored: messages go to stderr and the status page");
        }
        if self.exit_wait.is_some() {
            say("--exit-wait ignored: the final REQACK is answered, then the receiver disconnects");
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
        if self.print_uncompressed_position.is_some() || self.statistics_period.is_some() {
            say("statistics options ignored: see `xdpcast status` or `xdpcast monitor`");
        }
        if self.license {
            say("--license: xdpcast implements udpcast's FEC itself; no udpcast code is used");
        }
    }
}

/// Start `sh -c COMMAND` with our standard output (or `file`) as its
/// standard output, and make our standard output the pipe to its standard
/// input, so the image streams through it.
fn spawn_pipe(command: &str, file: Option<&PathBuf>) -> anyhow::Result<Child> {
    let stdout = match file {
        Some(f) => Stdio::from(
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(f)
                .with_context(|| format!("open outfile {}", f.display()))?,
        ),
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
    Ok(child)
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
    let child = match &a.pipe {
        Some(cmd) => Some((cmd, spawn_pipe(cmd, a.file.as_ref())?)),
        None => None,
    };
    let snap = receive_udpcast(&req, a.keep_status, false);
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
    Ok(match (snap.state, snap.error) {
        (State::Success, _) if piped_ok => ExitCode::SUCCESS,
        (State::Failure, ErrorCode::Timeout) => ExitCode::from(EXIT_NO_SENDER),
        _ => ExitCode::FAILURE,
    })
}
