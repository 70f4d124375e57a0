//! `xdpcast monitor`: every session page on the machine as live progress
//! bars (`xdpcast metrics` serves them over HTTP: [`crate::status::serve`]).
//!
//! Both only read the pages (the seqlock protocol of [`crate::status::page`]), so
//! they run unprivileged and never slow a receiver down.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, IsTerminal, Write};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::error::Result;
use crate::status::page::{self, Role, Snapshot, State, StatusReader};
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

/// Width of the name column (names are padded to it, and cut to it when
/// the terminal is narrow).
const NAME_WIDTH: usize = 24;
/// Narrowest progress bar worth drawing (inside its brackets).
const MIN_BAR: usize = 10;
/// Widest progress bar.
const MAX_BAR: usize = 30;
/// Rank of the progress bar among the fields (see [`Field`]; the others
/// have their own).
const BAR_RANK: u8 = 4;

/// One piece of a session's line, and how much it matters: when the
/// terminal is too narrow, the fields of lowest rank are left out first,
/// whole, so that no figure is ever cut in two.
struct Field {
    text: String,
    rank: u8,
}

/// The fields of a session's line after its name, in display order.
fn fields(s: &Snapshot) -> Vec<Field> {
    let f = |rank, text| Field { text, rank };
    let mut state = s.state.name().to_string();
    if s.is_stale(STALE_AFTER) {
        state.push_str(" (STALE)");
    }
    if s.foreign_owner() {
        let _ = write!(state, " (FOREIGN uid {})", s.owner_uid);
    }
    if s.state == State::Failure {
        let _ = write!(state, " {}", s.error);
    }
    let mut v = vec![f(9, format!("{:>5.1}%", percent(s))), f(8, state)];
    if s.diag.unserved_frames > 0 {
        // A setup mistake that loses frames: shown before the figures.
        v.push(f(
            7,
            format!(
                "UNSERVED {} on queue {}",
                s.diag.unserved_frames,
                s.diag.queue_list()
            ),
        ));
    }
    v.extend([
        f(
            3,
            format!(
                "{} of {}",
                report::bytes(s.bytes_done),
                report::bytes(s.total_bytes)
            ),
        ),
        f(6, report::rate(s.rate_bps)),
    ]);
    if let Some(eta) = eta(s) {
        v.push(f(5, format!("eta {}", clock(eta))));
    }
    if s.role == Role::Sender {
        // A sender: its phase and its receivers instead of loss and drops.
        let x = &s.sender;
        v.push(f(
            2,
            format!(
                "sender {} {}: {} rx, {} finished, {} failed, {} vanished",
                x.phase.name(),
                s.passes_seen,
                x.receivers_known,
                x.finished,
                x.failed,
                x.vanished
            ),
        ));
        v.push(f(1, format!("repair {}", report::bytes(x.repair_bytes))));
        return v;
    }
    v.push(f(
        2,
        match loss_percent(s) {
            Some(l) => format!("loss {l:.2}%"),
            None => "loss -".into(),
        },
    ));
    v.push(f(1, format!("drops {}", s.rejected())));
    v
}

/// Columns taken by `s` on a terminal (names and figures are plain
/// text; a character is a column).
fn columns(s: &str) -> usize {
    s.chars().count()
}

/// `s` cut to `width` columns.
fn cut(s: &str, width: usize) -> String {
    s.chars().take(width).collect()
}

/// A progress bar `inner` columns wide inside its brackets.
fn progress_bar(fraction: f64, inner: usize) -> String {
    let done = ((fraction * inner as f64) as usize).min(inner);
    let head = if done < inner { ">" } else { "" };
    format!(
        "[{}{head}{}]",
        "=".repeat(done),
        " ".repeat(inner - done - head.len())
    )
}

/// A session's line. With `width` (the terminal's columns) it fits in
/// `width - 1` columns (the last one is left free, so that no terminal
/// wraps): the name column shrinks, the least important fields are left
/// out whole, and a progress bar (when `bar` asks for one) takes the room
/// that is left, up to a limit. Without `width` every field is there and
/// no bar.
pub fn line(name: &str, page: &Result<Snapshot>, width: Option<usize>, bar: bool) -> String {
    let budget = width.map_or(usize::MAX, |w| w.saturating_sub(1));
    let name_width = NAME_WIDTH.min(budget / 4).max(1);
    // The name is a file name anyone who can write the directory chose.
    let name = report::printable(name);
    let mut name = match width {
        Some(_) => cut(&name, name_width),
        None => name.into_owned(),
    };
    name.extend(std::iter::repeat_n(
        ' ',
        name_width.saturating_sub(columns(&name)),
    ));
    let s = match page {
        Ok(s) => s,
        Err(err) => {
            let why = report::printable(&err.to_string()).into_owned();
            return cut(&format!("{name} unreadable: {why}"), budget);
        }
    };
    let mut fields = fields(s);
    // The bar is a field too, as wide as its narrowest form until the
    // others are chosen; it ranks below the figures that say how far and
    // how fast, above the byte counts, loss and drops.
    let with_bar = bar && width.is_some();
    if with_bar {
        fields.insert(
            0,
            Field {
                text: progress_bar(0.0, MIN_BAR),
                rank: BAR_RANK,
            },
        );
    }
    // A space after the name and the bar, two between other fields.
    let sep = |fields: &[Field], i: usize| {
        if i == 0 || fields[i - 1].rank == BAR_RANK {
            " "
        } else {
            "  "
        }
    };
    let used = |fields: &[Field]| {
        columns(&name)
            + (0..fields.len())
                .map(|i| sep(fields, i).len() + columns(&fields[i].text))
                .sum::<usize>()
    };
    while used(&fields) > budget && fields.len() > 1 {
        let lowest = (0..fields.len())
            .min_by_key(|&i| fields[i].rank)
            .expect("not empty");
        fields.remove(lowest);
    }
    if with_bar && fields[0].rank == BAR_RANK {
        let room = budget.saturating_sub(used(&fields));
        fields[0].text = progress_bar(percent(s) / 100.0, MIN_BAR + room.min(MAX_BAR - MIN_BAR));
    }
    let mut o = name;
    for (i, f) in fields.iter().enumerate() {
        o.push_str(sep(&fields, i));
        o.push_str(&f.text);
    }
    cut(&o, budget)
}

fn percent(s: &Snapshot) -> f64 {
    if s.block_count == 0 {
        0.0
    } else {
        s.blocks_done as f64 * 100.0 / s.block_count as f64
    }
}

/// One line per session, as `xdpcast monitor --once` prints it, each
/// fitting `width` columns when given (see [`line`]).
pub fn frame(entries: &[Entry], width: Option<usize>) -> String {
    if entries.is_empty() {
        return format!("no sessions in {}\n", page::status_dir().display());
    }
    let mut o = String::new();
    for e in entries {
        let _ = writeln!(o, "{}", line(&e.name, &e.page, width, false));
    }
    o
}

/// The columns of the terminal on stdout, if it is one.
fn terminal_width() -> Option<usize> {
    console::Term::stdout()
        .size_checked()
        .map(|(_, cols)| usize::from(cols))
}

/// Live progress bars for every session, refreshed every `interval`, until
/// killed; `once` prints one [`frame`] instead. Without a terminal each
/// refresh prints a frame.
pub fn monitor(interval: Duration, once: bool) -> io::Result<()> {
    let mut out = io::stdout();
    if once || !out.is_terminal() {
        loop {
            out.write_all(frame(&scan(), terminal_width()).as_bytes())?;
            out.flush()?;
            if once {
                return Ok(());
            }
            std::thread::sleep(interval);
        }
    }
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
    // The whole line is ours (see `line`): it is measured against the
    // terminal's width at every refresh, so it follows a resize.
    let style =
        ProgressStyle::with_template("{msg}").unwrap_or_else(|_| ProgressStyle::default_bar());
    let mut bars: BTreeMap<String, ProgressBar> = BTreeMap::new();
    let mut said_empty = false;
    loop {
        let entries = scan();
        let width = terminal_width();
        bars.retain(|name, bar| {
            let keep = entries.iter().any(|e| &e.name == name);
            if !keep {
                bar.finish_and_clear();
                multi.remove(bar);
            }
            keep
        });
        for e in &entries {
            let bar = bars
                .entry(e.name.clone())
                .or_insert_with(|| multi.add(ProgressBar::new(1).with_style(style.clone())));
            bar.set_message(line(&e.name, &e.page, width, true));
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

    fn ok(s: Snapshot) -> Result<Snapshot> {
        Ok(s)
    }

    #[test]
    fn eta_loss_and_full_line() {
        let s = running();
        assert_eq!(eta(&s), Some(Duration::from_secs(6)));
        assert_eq!(loss_percent(&s), Some(10.0));
        let l = line("img", &ok(s.clone()), None, true);
        assert_eq!(
            l,
            format!(
                "img{} 40.0%  IN_PROGRESS  4.0 MiB of 10.0 MiB  8.4 Mbit/s  eta 0:00:06  \
                 loss 10.00%  drops 0",
                " ".repeat(22)
            )
        );
        let done = Snapshot {
            state: State::Failure,
            error: crate::ErrorCode::Cancelled,
            ..s
        };
        assert_eq!(eta(&done), None);
        assert!(line("x", &ok(done), None, false).contains("  FAILURE cancelled (1)  "));
        let dead = Snapshot {
            writer_pid: u64::from(u32::MAX),
            ..running()
        };
        assert!(line("x", &ok(dead), None, false).contains("  IN_PROGRESS (STALE)  "));
    }

    #[test]
    fn line_fits_any_width_and_drops_whole_fields() {
        let name = "a-rather-long-session-name-for-lab-7";
        let page = ok(running());
        let full = line(name, &page, None, false);
        for width in 0..=240 {
            let l = line(name, &page, Some(width), true);
            assert!(
                columns(&l) < width.max(1),
                "{width} columns: {l:?} is {} wide",
                columns(&l)
            );
            // Every figure shown is whole: the line without its bar is
            // the name followed by some of the fields of the full line.
            let text = match (l.find(" ["), l.find(']')) {
                (Some(a), Some(b)) => format!("{}{}", &l[..a], &l[b + 1..]),
                _ => l.clone(),
            };
            let fields: Vec<&str> = text.split("  ").skip(1).collect();
            for f in &fields {
                assert!(full.contains(f), "{width} columns: {f:?} cut in {l:?}");
            }
        }
        // At 80 columns: the name, a bar, and the figures that matter most.
        let l80 = line(name, &page, Some(80), true);
        assert!(l80.starts_with("a-rather-long-sessi ["), "{l80}");
        for want in ["40.0%", "IN_PROGRESS", "Mbit/s", "eta 0:00:06"] {
            assert!(l80.contains(want), "{l80}");
        }
        assert!(!l80.contains("drops"), "{l80}");
        // At 200 columns every field and a full bar.
        let l200 = line(name, &page, Some(200), true);
        assert!(l200.contains(&format!("[{}>", "=".repeat(12))), "{l200}");
        assert!(l200.ends_with("loss 10.00%  drops 0"), "{l200}");
        // At 40 the name column shrinks and the bar goes.
        let l40 = line(name, &page, Some(40), true);
        assert!(!l40.contains('['), "{l40}");
        assert!(l40.contains("40.0%  IN_PROGRESS"), "{l40}");
    }

    #[test]
    fn unserved_frames_come_right_after_the_state() {
        let mut s = running();
        s.diag.unserved_frames = 99;
        s.diag.unserved_queues = 0b110;
        let page = ok(s);
        let l = line("img", &page, Some(80), true);
        assert!(l.contains("IN_PROGRESS  UNSERVED 99 on queue 1,2  "), "{l}");
        assert!(columns(&l) < 80, "{l}");
        assert!(line("img", &page, None, false).contains("UNSERVED 99 on queue 1,2"));
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
        let f = frame(&entries, None);
        assert!(f.lines().next().unwrap().starts_with("a "), "{f}");
        assert!(f.contains(" 40.0%  IN_PROGRESS"), "{f}");
        assert!(
            f.contains("b                        unreadable: bad magic"),
            "{f}"
        );
        let narrow = frame(&entries, Some(30));
        assert!(narrow.lines().all(|l| columns(l) < 30), "{narrow}");
    }
}
