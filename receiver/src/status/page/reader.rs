//! The reading side of a page, and whether its writer still lives.

use std::fs::OpenOptions;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::layout::*;
use super::paths::page_path;
use super::snapshot::Snapshot;
use super::writer::Mapped;
use crate::error::{Error, ErrorCode, Result};

/// How long a running session may go without a heartbeat before readers
/// call its page stale.
pub const STALE_AFTER: Duration = Duration::from_secs(5);

/// How long a reader retries a page whose writer seems stuck mid-update.
pub const STUCK_AFTER: Duration = Duration::from_millis(500);

/// The reading side: any process, no privileges beyond read access.
pub struct StatusReader {
    pub(super) page: Mapped,
    /// Owner of the page file.
    pub(super) owner_uid: u32,
}

impl StatusReader {
    /// Map the page at `path` read-only (not through a symbolic link).
    pub fn open(path: &Path) -> Result<StatusReader> {
        let err = |e: std::io::Error| {
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                ErrorCode::InvalidArgument
            } else {
                ErrorCode::TargetIo
            };
            Error::new(code, format!("status page {}: {e}", path.display()))
        };
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .map_err(err)?;
        let owner_uid = file.metadata().map_err(err)?.uid();
        Ok(StatusReader {
            page: Mapped::map(&file, path, false)?,
            owner_uid,
        })
    }

    /// The snapshot of `words`, with the owner of the file.
    fn snapshot(&self, words: &[u64; WORDS]) -> Result<Snapshot> {
        Ok(Snapshot {
            owner_uid: self.owner_uid,
            ..Snapshot::from_words(words)?
        })
    }

    /// Open the page of session `name`.
    pub fn open_session(name: &str) -> Result<StatusReader> {
        StatusReader::open(&page_path(name)?)
    }

    /// A consistent copy of the page (retries while the writer is mid-update).
    ///
    /// A writer killed in the middle of an update leaves `seq` odd for good:
    /// after [`STUCK_AFTER`] the reader returns the page as it is if the
    /// writer process is gone (the snapshot is then stale, possibly torn),
    /// and a `Timeout` error if it still runs.
    pub fn read(&self) -> Result<Snapshot> {
        let w = self.page.words();
        let mut copy = [0u64; WORDS];
        let start = std::time::Instant::now();
        loop {
            let s1 = w[offsets::SEQ].load(Ordering::Acquire);
            for (dst, src) in copy.iter_mut().zip(w.iter()) {
                *dst = src.load(Ordering::Relaxed);
            }
            fence(Ordering::Acquire);
            if s1 & 1 == 0 && w[offsets::SEQ].load(Ordering::Relaxed) == s1 {
                return self.snapshot(&copy);
            }
            if start.elapsed() >= STUCK_AFTER {
                let pid = copy[offsets::WRITER_PID];
                if !pid_alive(pid) {
                    return self.snapshot(&copy);
                }
                return Err(Error::new(
                    ErrorCode::Timeout,
                    format!(
                        "the writer (pid {pid}) has been updating the page for {STUCK_AFTER:?}"
                    ),
                ));
            }
            std::hint::spin_loop();
        }
    }
}

/// Nanoseconds since the Unix epoch.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

pub(super) fn pid_alive(pid: u64) -> bool {
    pid != 0 && Path::new(&format!("/proc/{pid}")).exists()
}

/// How much later than a page's last heartbeat its writer may seem to have
/// started: the boot time the kernel reports has whole seconds.
pub(super) const START_SLACK_NS: u64 = 2_000_000_000;

/// Whether process `pid` is alive and can be the writer whose last
/// heartbeat (wall clock) was `heartbeat_ns`. A process that started after
/// that heartbeat cannot: it reuses the pid of a writer that died (seen
/// when a killed sender's page outlived it and its pid came round again;
/// a new writer then refused the page as held). Pid and start time
/// together name a process, as in Aeron's CnC file. Where the start time
/// cannot be read (or the page has no heartbeat), the pid alone decides.
pub(super) fn writer_alive(pid: u64, heartbeat_ns: u64) -> bool {
    if !pid_alive(pid) {
        return false;
    }
    match (heartbeat_ns, process_start_ns(pid)) {
        (1.., Some(start)) => start <= heartbeat_ns.saturating_add(START_SLACK_NS),
        _ => true,
    }
}

/// When process `pid` started, wall clock ns: the boot time (`btime` in
/// /proc/stat) plus its start in clock ticks after boot (field 22 of
/// /proc/PID/stat, proc(5)).
pub(super) fn process_start_ns(pid: u64) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces and parentheses:
    // the fields after it start after the last ')', with field 3.
    let after = stat.get(stat.rfind(')')? + 1..)?;
    let ticks: u64 = after.split_whitespace().nth(22 - 3)?.parse().ok()?;
    let btime: u64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())?;
    // SAFETY: sysconf has no memory arguments.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .ok()
        .filter(|&h| h > 0)?;
    Some(btime * 1_000_000_000 + ticks * (1_000_000_000 / hz))
}
