//! The writing side of a page: exactly one writer per page, which creates
//! it in a directory of its own and publishes under the sequence lock.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, AtomicU64, Ordering};

use memmap2::{MmapOptions, MmapRaw};

use super::layout::*;
use super::reader::{now_ns, StatusReader};
use super::snapshot::Snapshot;
use crate::error::{Error, ErrorCode, Result};
use crate::safe_fs::{self, PrivateDir};

/// The writer's shared mapping of its own page. Only the writer maps a
/// page: the file is its own, in a directory only its user can write, so
/// no one else can truncate it under the mapping (readers copy pages with
/// `pread` instead, see `reader`).
pub(super) struct Mapped {
    map: MmapRaw,
}

impl Mapped {
    /// Map `file`, which the writer has just sized to [`PAGE_SIZE`].
    pub(super) fn map(file: &File, path: &Path) -> Result<Mapped> {
        let len = file
            .metadata()
            .map_err(|e| Error::new(ErrorCode::TargetIo, format!("{}: {e}", path.display())))?
            .len();
        if len < PAGE_SIZE as u64 {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                format!("{}: not a status page ({len} bytes)", path.display()),
            ));
        }
        // SAFETY: the file is at least PAGE_SIZE bytes; the mapping is only
        // accessed as atomics (see `words`), so concurrent readers in other
        // processes cannot cause undefined behaviour in this one.
        let map = MmapOptions::new()
            .len(PAGE_SIZE)
            .map_raw(file)
            .map_err(|e| Error::new(ErrorCode::TargetIo, format!("map {}: {e}", path.display())))?;
        Ok(Mapped { map })
    }

    pub(super) fn words(&self) -> &[AtomicU64; WORDS] {
        // SAFETY: the mapping is PAGE_SIZE bytes and page aligned, so it is
        // large and aligned enough for 1024 AtomicU64 (same size and alignment
        // as u64); it lives as long as `self`; all access, here and in the
        // other processes following the documented protocol, is atomic.
        unsafe { &*(self.map.as_ptr() as *const [AtomicU64; WORDS]) }
    }
}

/// The writing side of a page. Exactly one per session.
pub struct StatusWriter {
    pub(super) page: Mapped,
    path: PathBuf,
    /// The page's directory and the page file, to remove exactly this file.
    dir: PrivateDir,
    file: File,
}

impl StatusWriter {
    /// Create the page at `path`, readable by everyone, in a directory
    /// only this user may write (created if missing, see [`PrivateDir`]).
    /// A page already there is replaced if it is a stale or finished page
    /// of this user; a page whose writer still runs, a file of another
    /// user or a symbolic link is refused.
    pub fn create(path: &Path) -> Result<StatusWriter> {
        let err = |e: std::io::Error| {
            Error::new(
                ErrorCode::InvalidArgument,
                format!("status page {}: {e}", path.display()),
            )
        };
        let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str()))
        else {
            return Err(err(std::io::ErrorKind::InvalidInput.into()));
        };
        let dir = PrivateDir::open(dir).map_err(err)?;
        let file = match dir.create(name, 0o644) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Self::check_replaceable(&dir, name, path)?;
                dir.remove(name).map_err(err)?;
                // Another writer may have got there in between: refused too.
                dir.create(name, 0o644).map_err(err)?
            }
            r => r.map_err(err)?,
        };
        file.set_len(PAGE_SIZE as u64).map_err(err)?;
        let page = Mapped::map(&file, path)?;
        let w = page.words();
        for word in w.iter() {
            word.store(0, Ordering::Relaxed);
        }
        w[offsets::VERSION].store(LAYOUT_VERSION, Ordering::Relaxed);
        w[offsets::PAGE_SIZE].store(PAGE_SIZE as u64, Ordering::Relaxed);
        w[offsets::OWNER_UID].store(u64::from(safe_fs::euid()), Ordering::Relaxed);
        w[offsets::MAGIC].store(PAGE_MAGIC, Ordering::Release);
        Ok(StatusWriter {
            page,
            path: path.to_path_buf(),
            dir,
            file,
        })
    }

    /// Whether the file `name` found in the page directory may be replaced.
    fn check_replaceable(dir: &PrivateDir, name: &str, path: &Path) -> Result<()> {
        let refuse = |why: String| {
            Error::new(
                ErrorCode::InvalidArgument,
                format!("status page {}: {why}; not taken over", path.display()),
            )
        };
        let f = dir
            .open_file(name)
            .map_err(|e| refuse(format!("{e} (a symbolic link?)")))?;
        let m = f.metadata().map_err(|e| refuse(e.to_string()))?;
        if !m.is_file() || m.uid() != safe_fs::euid() {
            return Err(refuse(format!(
                "not a page file of this user (uid {}, {:?})",
                m.uid(),
                m.file_type()
            )));
        }
        // Not a page at all (or torn beyond reading): nobody's, replaced.
        let old = StatusReader::from_file(f, path).and_then(|r| r.read());
        if let Ok(s) = old {
            if s.held() {
                return Err(refuse(format!(
                    "session {} is {} in live receiver pid {} (xdpcast close --force removes its page)",
                    s.name,
                    s.state.name(),
                    s.writer_pid
                )));
            }
        }
        Ok(())
    }

    /// Path of the page.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Publish `snap` (writer pid and heartbeat are filled in here).
    pub fn publish(&self, snap: &Snapshot) {
        let w = self.page.words();
        let seq = &w[offsets::SEQ];
        seq.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::Release);
        for (i, v) in snap.to_words() {
            w[i].store(v, Ordering::Relaxed);
        }
        w[offsets::WRITER_PID].store(u64::from(std::process::id()), Ordering::Relaxed);
        w[offsets::HEARTBEAT_NS].store(now_ns(), Ordering::Relaxed);
        seq.fetch_add(1, Ordering::Release);
    }

    /// Remove the page (the session is closed), if it is still this
    /// writer's: a page created since under the same name stays.
    pub fn remove(&self) -> Result<()> {
        let name = self
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        self.dir.remove_if_same(name, &self.file).map_err(|e| {
            Error::new(
                ErrorCode::TargetIo,
                format!("remove {}: {e}", self.path.display()),
            )
        })
    }
}
