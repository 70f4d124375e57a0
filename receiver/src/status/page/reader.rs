//! The reading side of a page, and whether its writer still lives.
//!
//! A reader never maps a page: the page's owner may truncate the file while
//! the reader touches the mapping, which kills the reader with `SIGBUS` (a
//! user's receiver writes its pages in `/dev/shm/xdpcast-UID`, and root's
//! `xdpcast status` and `metrics` read them). It copies the page with
//! `pread` into a buffer of its own under the sequence lock instead, and
//! gives up on a page whose lock never settles.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::layout::*;
use super::paths::page_path;
use super::snapshot::Snapshot;
use crate::error::{Error, ErrorCode, Result};

/// How long a running session may go without a heartbeat before readers
/// call its page stale.
pub const STALE_AFTER: Duration = Duration::from_secs(5);

/// How long a reader retries a page whose writer seems stuck mid-update.
pub const STUCK_AFTER: Duration = Duration::from_millis(500);

/// Tries a reader makes back to back before it sleeps [`RETRY_NAP`]
/// between tries: a writer mid-update is done within microseconds; one
/// that is not may be dead or hostile, and is not worth a spinning core.
const QUICK_TRIES: u32 = 64;
/// The pause between later tries.
const RETRY_NAP: Duration = Duration::from_millis(1);

/// The reading side: any process, no privileges beyond read access.
pub struct StatusReader {
    file: File,
    path: PathBuf,
    /// Owner of the page file.
    owner_uid: u32,
}

impl StatusReader {
    /// Open the page at `path` for reading (not through a symbolic link).
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
        StatusReader::from_file(file, path)
    }

    /// Read the page open on `file` (found at `path`, for messages).
    pub(super) fn from_file(file: File, path: &Path) -> Result<StatusReader> {
        let owner_uid = file
            .metadata()
            .map_err(|e| {
                Error::new(
                    ErrorCode::TargetIo,
                    format!("status page {}: {e}", path.display()),
                )
            })?
            .uid();
        let r = StatusReader {
            file,
            path: path.to_path_buf(),
            owner_uid,
        };
        r.check_size()?;
        Ok(r)
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

    fn io_error(&self, e: std::io::Error) -> Error {
        Error::new(
            ErrorCode::TargetIo,
            format!("status page {}: {e}", self.path.display()),
        )
    }

    /// Refuse a file shorter than a page (it is not one, or its owner is
    /// truncating it).
    fn check_size(&self) -> Result<()> {
        let len = self.file.metadata().map_err(|e| self.io_error(e))?.len();
        if len < PAGE_SIZE as u64 {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                format!("{}: not a status page ({len} bytes)", self.path.display()),
            ));
        }
        Ok(())
    }

    /// `buf.len()` bytes at `offset`; a short read means the file was
    /// truncated under us.
    fn pread(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.file.read_exact_at(buf, offset).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Error::new(
                    ErrorCode::InvalidArgument,
                    format!(
                        "{}: not a status page (truncated while read)",
                        self.path.display()
                    ),
                )
            } else {
                self.io_error(e)
            }
        })
    }

    fn seq(&self) -> Result<u64> {
        let mut b = [0u8; 8];
        self.pread(&mut b, (offsets::SEQ * 8) as u64)?;
        Ok(u64::from_le_bytes(b))
    }

    /// A consistent private copy of the page (retries while the writer is
    /// mid-update).
    ///
    /// A writer killed in the middle of an update leaves `seq` odd for good:
    /// after [`STUCK_AFTER`] the reader returns the page as it is if the
    /// writer process is gone (the snapshot is then stale, possibly torn),
    /// and a `Timeout` error if it still runs. A file shorter than a page,
    /// or cut short while read, is an `InvalidArgument` error.
    pub fn read(&self) -> Result<Snapshot> {
        let mut raw = vec![0u8; PAGE_SIZE];
        let mut copy = [0u64; WORDS];
        let start = Instant::now();
        let mut tries = 0u32;
        loop {
            tries = tries.saturating_add(1);
            self.check_size()?;
            let s1 = self.seq()?;
            // The copies are the kernel's loads, made by this thread: the
            // fences order them as the atomic loads of a seqlock reader are
            // ordered (the first read of `seq` before the copy, the copy
            // before the second read). On x86-64 the system calls alone do.
            fence(Ordering::SeqCst);
            self.pread(&mut raw, 0)?;
            fence(Ordering::SeqCst);
            let s2 = self.seq()?;
            for (w, b) in copy.iter_mut().zip(raw.chunks_exact(8)) {
                *w = u64::from_le_bytes(b.try_into().expect("8 bytes"));
            }
            if s1 & 1 == 0 && s1 == s2 {
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
            if tries <= QUICK_TRIES {
                std::hint::spin_loop();
            } else {
                std::thread::sleep(RETRY_NAP);
            }
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
