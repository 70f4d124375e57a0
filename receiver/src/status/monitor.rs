//! `xdpcast monitor` and `xdpcast metrics`: every session page on the
//! machine as live progress bars, and as Prometheus text over HTTP.
//!
//! Both only read the pages (the seqlock protocol of [`crate::status::page`]), so
//! they run unprivileged and never slow a receiver down.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, IsTerminal, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::error::Result;
use crate::status::page::{self, Snapshot, State, StatusReader};
use crate::status::report;

pub use crate::status::page::STALE_AFTER;

/// One status page found in the status directory.
#[derive(Debug)]
pub struct Entry {
    /// Session name (from the file name).
    pub name: String,
    /// The page, or why it could not be read.
    pub page: Result<Snapshot>,
}

/// Read every page in the status directory, sorted by name.
pub fn scan() -> Vec<Entry> {
    page::list_sessions()
        .into_iter()
        .map(|name| Entry {
            page: StatusReader::open_session(&name).and_then(|r| r.read()),
            name,
        })
        .collect()
}

/// Time left at the current rate (the average rate when the current one is
/// zero); None unless running with a known size and a non-zero rate.
pub fn eta(s: &Snapshot) -> Option<Duration> {
    let rate = if s.rate_bps > 0 {
        s.rate_bps
    } else {
        s.avg_rate_bps
    };
    if s.state != State::InProgress || s.total_bytes == 0 || rate == 0 {
        return None;
    }
    let left = s.total_bytes.saturating_sub(s.bytes_done);
    Some(Duration::from_secs_f64(left as f64 / rate as f64))
}

/// Loss before repair: blocks missing when the first pass ended, as a
/// percentage of the image; None until a pass has ended.
pub fn loss_percent(s: &Snapshot) -> Option<f64> {
    (s.passes_seen > 0 && s.block_count > 0)
        .then(|| s.first_pass_missing as f64 * 100.0 / s.block_count as f64)
}

fn clock(d: Duration) -> String {
    let t = d.as_secs();
    format!("{}:{:02}:{:02}", t / 3600, t / 60 % 60, t % 60)
}

/// State, rate, ETA, loss and drops of a session on one line (without the
/// name and progress, which the bar shows).
pub fn summary(s: &Snapshot) -> String {
    let mut o = String::new();
    let state = if s.is_stale(STALE_AFTER) {
        format!("{} (STALE)", s.state.name())
    } else {
        s.state.name().to_string()
    };
    let _ = write!(o, "{state}");
    if s.state == State::Failure {
        let _ = write!(o, " {}", s.error);
    }
    let _ = write!(
        o,
        "  {} of {}  {}",
        report::bytes(s.bytes_done),
        report::bytes(s.total_bytes),
        report::rate(s.rate_bps)
    );
    if let Some(eta) = eta(s) {
        let _ = write!(o, "  eta {}", clock(eta));
    }
    match loss_percent(s) {
        Some(l) => {
            let _ = write!(o, "  loss {l:.2}%");
        }
        None => o.push_str("  loss -"),
    }
    let _ = write!(o, "  drops {}", s.rejected());
    o
}

fn percent(s: &Snapshot) -> f64 {
    if s.block_count == 0 {
        0.0
    } else {
        s.blocks_done as f64 * 100.0 / s.block_count as f64
    }
}

/// One line per session, as `xdpcast monitor --once` prints it.
pub fn frame(entries: &[Entry]) -> String {
    if entries.is_empty() {
        return format!("no sessions in {}\n", page::status_dir().display());
    }
    let mut o = String::new();
    for e in entries {
        match &e.page {
            Ok(s) => {
                let _ = writeln!(o, "{:<24} {:>5.1}%  {}", e.name, percent(s), summary(s));
            }
            Err(err) => {
                let _ = writeln!(o, "{:<24} unreadable: {err}", e.name);
            }
        }
    }
    o
}

/// Live progress bars for every session, refreshed every `interval`, until
/// killed; `once` prints one [`frame`] instead. Without a terminal each
/// refresh prints a frame.
pub fn monitor(interval: Duration, once: bool) -> io::Result<()> {
    let mut out = io::stdout();
    if once || !out.is_terminal() {
        loop {
            out.write_all(frame(&scan()).as_bytes())?;
            out.flush()?;
            if once {
                return Ok(());
            }
            std::thread::sleep(interval);
        }
    }
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
    let style = ProgressStyle::with_template("{prefix:<24} [{bar:30}] {percent:>3}% {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let mut bars: BTreeMap<String, ProgressBar> = BTreeMap::new();
    let mut said_empty = false;
    loop {
        let entries = scan();
        bars.retain(|name, bar| {
            let keep = entries.iter().any(|e| &e.name == name);
            if !keep {
                bar.finish_and_clear();
                multi.remove(bar);
            }
            keep
        });
        for e in &entries {
            let bar = bars.entry(e.name.clone()).or_insert_with(|| {
                let b = multi.add(ProgressBar::new(1).with_style(style.clone()));
                b.set_prefix(e.name.clone());
                b
            });
            match &e.page {
                Ok(s) => {
                    bar.set_length(s.block_count.max(1));
                    bar.set_position(s.blocks_done);
                    bar.set_message(summary(s));
                }
                Err(err) => bar.set_message(format!("unreadable: {err}")),
            }
        }
        if entries.is_empty() && !said_empty {
            multi.println(format!(
                "no sessions in {} (waiting)",
                page::status_dir().display()
            ))?;
        }
        said_empty = entries.is_empty();
        std::thread::sleep(interval);
    }
}

/// The metrics page: every readable page in Prometheus text format, plus
/// the number of pages that could not be read.
pub fn metrics_text() -> String {
    let entries = scan();
    let pages: Vec<Snapshot> = entries.iter().filter_map(|e| e.page.clone().ok()).collect();
    report::prometheus(&pages, entries.len() - pages.len())
}

/// Answer one HTTP request: `GET /metrics` (or `/`) gets [`metrics_text`].
fn answer(mut conn: TcpStream) -> io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let mut words = head.split_whitespace();
    let method = words.next().unwrap_or("");
    let path = words.next().unwrap_or("").split('?').next().unwrap_or("");
    let (status, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics" | "/") => ("200 OK", metrics_text()),
        ("GET" | "HEAD", _) => ("404 Not Found", "try /metrics\n".to_string()),
        _ => ("405 Method Not Allowed", "only GET\n".to_string()),
    };
    let mut reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if method != "HEAD" {
        reply.push_str(&body);
    }
    conn.write_all(reply.as_bytes())?;
    conn.flush()
}

/// Serve the metrics page on `listener`, one request per connection, until
/// killed; `once` returns after the first request.
pub fn serve_metrics(listener: &TcpListener, once: bool) -> io::Result<()> {
    for conn in listener.incoming() {
        match conn.and_then(answer) {
            Ok(()) => {}
            Err(e) if once => return Err(e),
            Err(e) => log::warn!("metrics request: {e}"),
        }
        if once {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running() -> Snapshot {
        Snapshot {
            state: State::InProgress,
            writer_pid: u64::from(std::process::id()),
            heartbeat_ns: page::now_ns(),
            total_bytes: 10 << 20,
            bytes_done: 4 << 20,
            block_count: 10,
            blocks_done: 4,
            rate_bps: 1 << 20,
            passes_seen: 1,
            first_pass_missing: 1,
            ..Default::default()
        }
    }

    #[test]
    fn eta_loss_and_summary() {
        let s = running();
        assert_eq!(eta(&s), Some(Duration::from_secs(6)));
        assert_eq!(loss_percent(&s), Some(10.0));
        let line = summary(&s);
        assert!(
            line.starts_with("IN_PROGRESS  4.0 MiB of 10.0 MiB"),
            "{line}"
        );
        assert!(
            line.contains("eta 0:00:06") && line.contains("loss 10.00%"),
            "{line}"
        );
        let done = Snapshot {
            state: State::Failure,
            error: crate::ErrorCode::Cancelled,
            ..s
        };
        assert_eq!(eta(&done), None);
        assert!(summary(&done).starts_with("FAILURE cancelled (1)"));
        let dead = Snapshot {
            writer_pid: u64::from(u32::MAX),
            ..running()
        };
        assert!(summary(&dead).starts_with("IN_PROGRESS (STALE)"));
    }

    #[test]
    fn frame_lists_unreadable_pages() {
        let entries = vec![
            Entry {
                name: "a".into(),
                page: Ok(running()),
            },
            Entry {
                name: "b".into(),
                page: Err(crate::Error::new(
                    crate::ErrorCode::InvalidArgument,
                    "bad magic",
                )),
            },
        ];
        let f = frame(&entries);
        assert!(f.lines().next().unwrap().starts_with("a "), "{f}");
        assert!(f.contains(" 40.0%  IN_PROGRESS"), "{f}");
        assert!(
            f.contains("b                        unreadable: bad magic"),
            "{f}"
        );
    }
}
