//! The command line: `xdpcast` and its commands (`send` and `receive` keep
//! their options beside their code).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::receive::ReceiveArgs;
use crate::send::{SendArgs, MIN_MTU};
use crate::udp_receiver;

#[derive(Parser)]
#[command(
    name = "xdpcast",
    version,
    about = "Kernel-bypass multicast receiver (XDP/AF_XDP) and sender for disk images and files"
)]
pub(crate) struct Cli {
    /// Print only errors on stderr (not the receiver's notes or warnings).
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub(crate) quiet: bool,
    /// Print more on stderr: -v info, -vv debug, -vvv trace (RUST_LOG, in
    /// env_logger's syntax, filters by module).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
    #[command(subcommand)]
    pub(crate) cmd: Cmd,
}

#[derive(Subcommand)]
pub(crate) enum Cmd {
    /// Multicast a file, a block device or standard input.
    Send(SendArgs),
    /// Receive an image into a file or block device.
    Receive(ReceiveArgs),
    /// Sign the manifest of an image ahead of time for receivers that fetch
    /// it over HTTP (`receive --http URL` reads URL.xdpcast-manifest).
    /// `send --sign` writes one for the session it sends by itself.
    Manifest {
        /// The image (file or block device).
        image: PathBuf,
        /// Secret key (from `xdpcast keygen`).
        #[arg(long, value_name = "KEYFILE")]
        sign: PathBuf,
        /// Where to write it (default: IMAGE.xdpcast-manifest).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Session id; give the sender the same (`send --session`) so that
        /// receivers started from the file also take its multicast blocks.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        session: u32,
        /// Block size: the sender's (from its MTU), so the chunk hashes match.
        #[arg(long)]
        block_size: Option<u32>,
        /// Size blocks for this MTU (default 1500).
        #[arg(long, conflicts_with = "block_size",
              value_parser = clap::value_parser!(u32).range(MIN_MTU..=65535))]
        mtu: Option<u32>,
        /// A URL of the image on a web server (repeatable), named in the
        /// signed head as `send --http-url` does: receivers that verified
        /// the head and were given no --http fetch from it (docs/http.md).
        #[arg(long, value_name = "URL")]
        http_url: Vec<String>,
    },
    /// Make an Ed25519 key pair for signed sessions: KEYFILE (secret, mode
    /// 0600) and KEYFILE.pub (give it to receivers' --trust).
    Keygen {
        /// Where to write the secret key (must not exist).
        #[arg(long, value_name = "KEYFILE")]
        out: PathBuf,
        /// Comment stored in the public key file.
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Print the status page of one session, or of all sessions.
    ///
    /// Pages are read from $XDPCAST_STATUS_DIR (default /run/xdpcast); a page
    /// owned by neither root nor you is flagged with a WARNING line (JSON:
    /// "foreign_owner": true), as another user may have written it. Control
    /// characters in its text are printed escaped. Listing all sessions, a
    /// page that cannot be read is named on standard error and the others
    /// are printed; the exit status is then 1.
    Status {
        /// Session name (default: every session on this machine).
        name: Option<String>,
        /// One JSON object per session, one per line.
        #[arg(long)]
        json: bool,
    },
    /// Remove the status page of a finished session.
    Close {
        /// Session name.
        name: String,
        /// Remove it even if its receiver still runs.
        #[arg(long)]
        force: bool,
    },
    /// Live progress bars for every session on this machine: rate, ETA, loss, drops.
    Monitor {
        /// Print one frame and exit.
        #[arg(long)]
        once: bool,
        /// Refresh interval in milliseconds.
        #[arg(long, default_value_t = 500)]
        interval_ms: u64,
    },
    /// Serve every session's status page as Prometheus metrics over HTTP.
    Metrics {
        /// Address to listen on (port 0: any free port). Keep it on
        /// loopback unless a firewall or proxy guards it (docs/monitoring.md).
        #[arg(long, default_value = "127.0.0.1:9470")]
        listen: std::net::SocketAddr,
        /// Serve one connection (one request, no keep-alive) and exit.
        #[arg(long)]
        once: bool,
        /// Print the metrics page to stdout and exit, without serving.
        #[arg(long, conflicts_with_all = ["listen", "once"])]
        print: bool,
    },
    /// Receive from udpcast's udp-sender with udp-receiver's own options
    /// (what Clonezilla and FOG pass); also what runs when the binary is
    /// invoked as `udp-receiver`. Exit status as udp-receiver: 0, 1, or 255
    /// when no sender came within --start-timeout.
    #[command(infer_long_args = true, args_override_self = true)]
    UdpReceiver(udp_receiver::UdpReceiverArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// Shell.
        shell: clap_complete::Shell,
    },
    /// Write man pages (xdpcast.1 and one per command) into a directory.
    #[command(hide = true)]
    Man {
        /// Output directory.
        dir: PathBuf,
    },
    /// Remove any XDP program left on an interface.
    Cleanup {
        /// Interface.
        #[arg(long)]
        iface: String,
    },
}

/// The usage line of the binary invoked as `udp-receiver`: the command it
/// stands in for (clap would name it `udp-receiver udp-receiver`).
const UDP_RECEIVER_USAGE: &str = "udp-receiver [OPTIONS]";

/// Parse the command line `args` (the program's name first). Returns the
/// parsed command line, and whether it is udp-receiver's: the binary
/// invoked as `udp-receiver` (a link to it), with udp-receiver's command
/// line unchanged, or `xdpcast udp-receiver`. udp-receiver's options are
/// taken with getopt_long's prefixes ([`udp_receiver::expand_prefixes`]).
pub(crate) fn parse(mut args: Vec<OsString>) -> (Result<Cli, clap::Error>, bool) {
    let mut cmd = Cli::command();
    let invoked_as = args.first().and_then(|a| Path::new(a).file_name());
    if invoked_as == Some("udp-receiver".as_ref()) {
        args.insert(1, "udp-receiver".into());
        cmd = cmd.mut_subcommand("udp-receiver", |s| s.override_usage(UDP_RECEIVER_USAGE));
    }
    let compat = args.get(1).is_some_and(|a| a == "udp-receiver");
    if compat {
        cmd.build();
        if let Some(sub) = cmd.find_subcommand("udp-receiver") {
            let expanded = udp_receiver::expand_prefixes(sub, &args[2..]);
            args.truncate(2);
            args.extend(expanded);
        }
    }
    let cli = cmd
        .try_get_matches_from_mut(args)
        .and_then(|m| Cli::from_arg_matches(&m).map_err(|e| e.format(&mut cmd)));
    (cli, compat)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What clap prints for `args`, which end in `--help` or a bad option.
    fn shown(args: &[&str]) -> String {
        let (cli, compat) = parse(args.iter().map(OsString::from).collect());
        assert!(compat, "{args:?}");
        cli.err().expect("help or an error").render().to_string()
    }

    fn usage(text: &str) -> &str {
        text.lines()
            .find(|l| l.starts_with("Usage: "))
            .unwrap_or_else(|| panic!("no usage line in {text}"))
    }

    #[test]
    fn udp_receiver_shows_its_usage_as_udp_receiver() {
        let linked = shown(&["/usr/bin/udp-receiver", "--help"]);
        assert_eq!(usage(&linked), format!("Usage: {UDP_RECEIVER_USAGE}"));
        assert!(!linked.contains("udp-receiver udp-receiver"), "{linked}");
        // The same usage as clap makes for `xdpcast udp-receiver`, less
        // the `xdpcast `: nothing is hidden or made up by the override.
        let sub = shown(&["xdpcast", "udp-receiver", "--help"]);
        assert_eq!(usage(&sub), format!("Usage: xdpcast {UDP_RECEIVER_USAGE}"));
        assert_eq!(
            linked.replace(usage(&linked), ""),
            sub.replace(usage(&sub), "")
        );
        // A bad command line names it the same way.
        let bad = shown(&["udp-receiver", "--no-such-option"]);
        assert_eq!(usage(&bad), format!("Usage: {UDP_RECEIVER_USAGE}"));
    }
}
