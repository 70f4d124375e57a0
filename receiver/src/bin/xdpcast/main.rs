//! `xdpcast`: send and receive files and disk images over IP multicast.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};

use xdpcast::net::steer;
use xdpcast::proto::wire::hex;
use xdpcast::status::page::{self, Snapshot, StatusReader};
use xdpcast::status::{monitor, report, serve};

mod cli;
mod exit;
mod man;
mod receive;
mod send;
mod udp_receiver;
mod ui;

use cli::{Cli, Cmd};
use exit::error_exit_code;
use ui::{emit, invalid, NOTES};

fn main() -> ExitCode {
    let (cli, compat) = cli::parse(std::env::args_os().collect());
    let cli = match cli {
        Ok(cli) => cli,
        // udp-receiver exits 1 on a bad command line.
        Err(e) if compat && e.use_stderr() => {
            let _ = e.print();
            return ExitCode::FAILURE;
        }
        Err(e) => e.exit(),
    };
    // udp-receiver --log FILE: its messages go there, timestamped.
    let log_file = match &cli.cmd {
        Cmd::UdpReceiver(a) => match a.log.as_ref().map(udp_receiver::open_log).transpose() {
            Ok(f) => f,
            Err(e) => {
                eprintln!("xdpcast: {e:#}");
                return ExitCode::FAILURE;
            }
        },
        _ => None,
    };
    init_logging(cli.quiet, cli.verbose, log_file);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xdpcast: {e:#}");
            if compat {
                ExitCode::FAILURE
            } else {
                error_exit_code(&e)
            }
        }
    }
}

/// Log records on stderr through env_logger, one line each: `xdpcast: NOTE`
/// for notes, `xdpcast: LEVEL: MESSAGE` for the rest. The filter is
/// `RUST_LOG` (env_logger's syntax) or by default warnings, errors and
/// notes; `--quiet` (errors only) and `-v`/`-vv`/`-vvv` (info, debug,
/// trace) set the level over either.
/// With `log_file`, the records go there instead, each line after the
/// local time (`HH:MM:SS.uuuuuu`, as udp-receiver's `--log` writes).
fn init_logging(quiet: bool, verbose: u8, log_file: Option<std::fs::File>) {
    let mut b = env_logger::Builder::new();
    let stamped = log_file.is_some();
    b.filter_level(log::LevelFilter::Warn)
        .filter_module(NOTES, log::LevelFilter::Info)
        .parse_env(env_logger::Env::default())
        .format(move |out, r| {
            if stamped {
                write!(out, "{} ", udp_receiver::log_time())?;
            }
            if r.target() == NOTES {
                writeln!(out, "xdpcast: {}", r.args())
            } else {
                let level = r.level().as_str().to_lowercase();
                writeln!(out, "xdpcast: {level}: {}", r.args())
            }
        });
    if let Some(f) = log_file {
        b.target(env_logger::Target::Pipe(Box::new(f)));
    }
    match (quiet, verbose) {
        (true, _) => {
            b.filter_level(log::LevelFilter::Error)
                .filter_module(NOTES, log::LevelFilter::Error);
        }
        (false, 0) => {}
        (false, 1) => {
            b.filter_level(log::LevelFilter::Info);
        }
        (false, 2) => {
            b.filter_level(log::LevelFilter::Debug);
        }
        (false, _) => {
            b.filter_level(log::LevelFilter::Trace);
        }
    }
    b.init();
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::Send(a) => send::run(a),
        Cmd::Receive(a) => receive::run(a),
        Cmd::Manifest {
            image,
            sign,
            out,
            session,
            block_size,
            mtu,
            http_url,
        } => {
            let key = xdpcast::store::keys::load_signing(&sign)?;
            let block_size = block_size
                .unwrap_or_else(|| xdpcast::proto::wire::block_size_for_mtu(mtu.unwrap_or(1500)));
            if !(xdpcast::proto::wire::MIN_BLOCK_SIZE..=xdpcast::proto::wire::MAX_BLOCK_SIZE)
                .contains(&block_size)
            {
                return Err(invalid(format!("block size {block_size} out of range")));
            }
            let (m, file) = xdpcast::send::publish::offline(
                &image,
                &key,
                xdpcast::send::publish::Offline {
                    session,
                    block_size,
                    urls: http_url,
                },
            )?;
            let out = out.unwrap_or_else(|| xdpcast::fetch::manifest_file::path_beside(&image));
            file.write_atomic(&out)?;
            println!(
                "{}: {} chunks of {} blocks of {}, session {session:#010x}, sha256 {}",
                out.display(),
                m.chunk_count(),
                m.chunk_blocks,
                block_size,
                hex(&m.digest)
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Keygen { out, comment } => {
            let public = xdpcast::store::keys::generate(&out, &comment)?;
            println!(
                "secret key {} (keep it private), public key {}: {}",
                out.display(),
                xdpcast::store::keys::public_path(&out).display(),
                hex(public.as_bytes())
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status { name, json } => {
            if let Some(n) = name {
                // One page asked for by name: unreadable is an error.
                let s = StatusReader::open_session(&n)?.read()?;
                emit(&status_text(&s, json))?;
                return Ok(ExitCode::SUCCESS);
            }
            let entries = monitor::scan();
            if entries.is_empty() {
                emit(&format!(
                    "no sessions in {}\n",
                    report::printable(&page::status_dir().display().to_string())
                ))?;
            }
            // One bad page (another user's, truncated, stuck mid-update)
            // does not hide the others: it is named on stderr, exit 1.
            let mut unreadable = 0;
            for e in entries {
                match e.page {
                    Ok(s) => emit(&status_text(&s, json))?,
                    Err(err) => {
                        unreadable += 1;
                        eprintln!(
                            "xdpcast: status page {} unreadable: {}",
                            report::printable(&e.name),
                            report::printable(&err.to_string())
                        );
                    }
                }
            }
            Ok(if unreadable > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Cmd::Close { name, force } => {
            let path = page::page_path(&name)?;
            let s = StatusReader::open(&path)?.read()?;
            if !s.state.is_final() && !s.is_stale(page::STALE_AFTER) && !force {
                bail!(
                    "session {name} is still {} (pid {}); use --force to remove its page anyway",
                    s.state.name(),
                    s.writer_pid
                );
            }
            std::fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Monitor { once, interval_ms } => {
            monitor::monitor(Duration::from_millis(interval_ms.max(50)), once)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Metrics { print: true, .. } => {
            emit(&serve::metrics_text())?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Metrics { listen, once, .. } => {
            let listener = std::net::TcpListener::bind(listen)
                .with_context(|| format!("listen on {listen}"))?;
            println!(
                "serving metrics on http://{}/metrics",
                listener.local_addr()?
            );
            serve::serve_metrics(listener, serve::Limits::default(), once)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::UdpReceiver(a) => udp_receiver::run(a),
        Cmd::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "xdpcast", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Man { dir } => {
            man::write_man_pages(&dir)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Cleanup { iface } => {
            if steer::cleanup(&iface)? {
                println!("removed the XDP program from {iface}");
            } else {
                println!("no XDP program on {iface}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A page as `xdpcast status` prints it: one JSON line, or the lines for
/// people with `STALE` after the first when the writer is gone or silent.
fn status_text(s: &Snapshot, json: bool) -> String {
    if json {
        return format!("{}\n", report::json(s));
    }
    let stale = if s.is_stale(page::STALE_AFTER) {
        "  (STALE: the receiver is gone)"
    } else {
        ""
    };
    report::human(s).replacen('\n', &format!("{stale}\n"), 1)
}
