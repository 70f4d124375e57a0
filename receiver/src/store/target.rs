//! The target: a regular file (created and sized here) or an existing block
//! device, into which blocks go through the staging writer
//! ([`crate::store::writer`]): workers copy into staging memory, a writer
//! thread writes whole chunks.
//!
//! Space for a regular file is reserved with `fallocate(2)` when the first
//! block of data comes ([`Target::reserve`]), for the data only: by then the
//! sender's zero runs are known (it announces them before any data), and
//! they stay holes. A filesystem with less free space than the data needs is
//! reported right then as a clean [`ErrorCode::DiskFull`], before that
//! block is written, instead of a failed write in the middle of the
//! transfer; the `fallocate` itself runs on a thread of its own, off the
//! receive path (allocating a large image takes long enough for the rings
//! to overflow), and a failure there fails the transfer the same way. A
//! target resumed from an earlier run is not reserved again. A block device is
//! also opened with `O_DIRECT` for whole chunks: nothing of its old contents
//! is read and its page cache is not filled with the image.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

use crate::error::{Error, ErrorCode, Result};
use crate::safe_fs::{self, Found};
use crate::status::page::ZeroMethod;
use crate::store::handoff::Held;
use crate::store::stream::StreamOut;
use crate::store::writer::{Stager, Storage, StoreConfig, StoreCounters, Verify, CHUNK};

/// `BLKSSZGET` ioctl: logical sector size of a block device (<linux/fs.h>).
const BLKSSZGET: libc::c_ulong = 0x1268;

/// Where a target's blocks go.
#[derive(Debug)]
enum Out {
    /// A file or block device, through the staging writer.
    Staged(Stager),
    /// A pipe (`--out -`), in order through a reorder window. `gated`:
    /// blocks wait in the window until released (signed sessions: until
    /// their chunk verified).
    Stream {
        out: StreamOut,
        gated: bool,
        block_size: u64,
    },
}

/// A target of `len` bytes: a file or block device behind a staging
/// writer, or a pipe behind a reorder window.
#[derive(Debug)]
pub struct Target {
    out: Out,
    len: u64,
    path: PathBuf,
    block_device: bool,
    /// The [`ZeroMethod`] last used by [`Target::zero`] (status only).
    zeroed_by: AtomicU8,
    /// Space reservation of a regular file: [`Reserve`] as u8.
    reserve: AtomicU8,
    /// The thread running `fallocate`, joined by [`Target::flush`] and on
    /// drop, and its error.
    reserver: Mutex<Option<JoinHandle<()>>>,
    reserve_error: Arc<OnceLock<Error>>,
}

/// Where the space reservation of a target stands.
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reserve {
    /// Nothing to do: a block device, a stream, or a file resumed from an
    /// earlier run.
    None = 0,
    /// Due at the first block of data.
    Pending = 1,
    /// Checked and started (or done).
    Started = 2,
    /// The filesystem has too little space: nothing is written.
    Failed = 3,
}

/// `BLKZEROOUT`: zero a byte range of a block device
/// (include/uapi/linux/fs.h: `_IO(0x12, 127)`; argument `u64 [start, len]`,
/// both multiples of the logical block size).
const BLKZEROOUT: libc::Ioctl = 0x127F;
/// Zeros written through the mapping per step when nothing faster works.
const ZERO_CHUNK: usize = 1 << 20;

impl Target {
    /// Open (creating if needed) `path` for an image of `len` bytes in
    /// blocks of `block_size`, staged as `cfg` says.
    ///
    /// A block device must already be at least `len` bytes long; a regular
    /// file is sized to exactly `len` bytes and its space reserved.
    pub fn open(path: &Path, len: u64, block_size: u32, cfg: &StoreConfig) -> Result<Target> {
        Target::open_with(path, len, block_size, cfg, true)
    }

    /// Like [`Self::open`], for a target an earlier run of the same session
    /// already sized and reserved (resume): an existing file of exactly
    /// `len` bytes is not reserved again, so the holes punched for zero
    /// runs stay holes.
    pub fn reopen(path: &Path, len: u64, block_size: u32, cfg: &StoreConfig) -> Result<Target> {
        Target::open_with(path, len, block_size, cfg, false)
    }

    fn open_with(
        path: &Path,
        len: u64,
        block_size: u32,
        cfg: &StoreConfig,
        reserve_again: bool,
    ) -> Result<Target> {
        if len == 0 {
            return Err(Error::new(ErrorCode::InvalidArgument, "empty image"));
        }
        let io = |what: &str, e: std::io::Error| {
            Error::target_io(&format!("{what} {}", path.display()), &e)
        };
        admit_image(len, block_size, cfg, 0)?;
        let file = safe_fs::open_out_with(
            path,
            |e| Error::target_io("cannot open target", &e),
            |found| admit_target(path, found, len, cfg),
        )?;
        let block_device = file
            .metadata()
            .map_err(|e| io("cannot stat target", e))?
            .file_type()
            .is_block_device();
        let mut direct = None;
        let reserved = !reserve_again && file.metadata().is_ok_and(|m| m.len() == len);
        if block_device {
            direct = open_direct(path, &file);
        } else {
            file.set_len(len).map_err(|e| io("cannot size target", e))?;
        }
        let reserve = if block_device || reserved {
            Reserve::None
        } else {
            Reserve::Pending
        };
        let storage = Storage {
            file,
            direct,
            paced: true,
        };
        Ok(Target {
            out: Out::Staged(Stager::new(storage, len, block_size, cfg)?),
            len,
            path: path.to_path_buf(),
            block_device,
            zeroed_by: AtomicU8::new(ZeroMethod::None as u8),
            reserve: AtomicU8::new(reserve as u8),
            reserver: Mutex::new(None),
            reserve_error: Arc::new(OnceLock::new()),
        })
    }

    /// A target of `len` bytes in blocks of `block_size` that is the pipe
    /// `out` streams to (`--out -`). With `gated`, blocks leave only once
    /// [`release`](Self::release)d.
    pub fn stream(out: StreamOut, len: u64, block_size: u32, gated: bool) -> Target {
        Target {
            out: Out::Stream {
                out,
                gated,
                block_size: u64::from(block_size),
            },
            len,
            path: PathBuf::from("-"),
            block_device: false,
            zeroed_by: AtomicU8::new(ZeroMethod::None as u8),
            reserve: AtomicU8::new(Reserve::None as u8),
            reserver: Mutex::new(None),
            reserve_error: Arc::new(OnceLock::new()),
        }
    }

    /// The output stream, when the target is a pipe.
    pub fn as_stream(&self) -> Option<&StreamOut> {
        match &self.out {
            Out::Stream { out, .. } => Some(out),
            Out::Staged(_) => None,
        }
    }

    /// Image offset up to which blocks can be taken now: a stream's window
    /// ends there; a file or device takes everything.
    pub fn limit(&self) -> u64 {
        self.as_stream().map_or(u64::MAX, StreamOut::limit)
    }

    /// Let the bytes `[start, end)` of a gated stream leave (their chunk
    /// verified). Nothing to do for files.
    pub fn release(&self, start: u64, end: u64) {
        if let Some(s) = self.as_stream() {
            s.release(start, end);
        }
    }

    /// Forget the bytes `[start, end)`, a signed chunk that failed its
    /// hash (they are received again): a gated stream drops them from its
    /// window; a staged file or device forgets what landed of the chunk
    /// (its bytes are not written, or are overwritten in place later).
    pub fn discard(&self, start: u64, end: u64) {
        match &self.out {
            Out::Stream { out, .. } => out.discard(start, end),
            Out::Staged(s) => s.forget(start / s.unit()),
        }
    }

    /// Whether the block at `offset` can be taken now (see
    /// [`Stager::has_room`]; always for a stream).
    pub fn has_room(&self, offset: u64, held: Option<Held<'_>>) -> bool {
        self.stager().is_none_or(|s| s.has_room(offset, held))
    }

    /// Check each complete chunk of the staging buffer with `v` before it
    /// is written (a signed session; nothing for a stream).
    pub fn set_verify(&self, v: Arc<dyn Verify>) {
        if let Some(s) = self.stager() {
            s.set_verify(v);
        }
    }

    /// Bytes `[offset, offset + len)` are on the target already (from a
    /// resume file): with a verifier set, they count towards their chunks.
    pub fn on_storage(&self, offset: u64, len: u64) {
        if let Some(s) = self.stager() {
            s.landed_elsewhere(offset, len);
        }
    }

    /// Reserve space for the byte ranges `(offset, len)` that `data`
    /// gives (the image less its zero runs), once: the first caller checks
    /// that the filesystem has room for them (less what the file already
    /// holds) and starts `fallocate` on a thread; false, with
    /// [`ErrorCode::DiskFull`] as the target's error, when it has not, and
    /// then for every later call too (the caller writes nothing). True when
    /// there is nothing to reserve (a block device, a stream, a resumed
    /// file, or done); `data` is only called the first time.
    pub fn reserve(&self, data: impl FnOnce() -> Vec<(u64, u64)>) -> bool {
        // A plain load on every block after the first: only the first
        // caller needs the compare-exchange, whose locked write would
        // otherwise bounce this line between the workers' cores per block.
        let now = self.reserve.load(Ordering::Acquire);
        if now != Reserve::Pending as u8 {
            return now != Reserve::Failed as u8;
        }
        let state = self.reserve.compare_exchange(
            Reserve::Pending as u8,
            Reserve::Started as u8,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        match state {
            Ok(_) => {}
            Err(s) => return s != Reserve::Failed as u8,
        }
        let Some(file) = self.stager().map(|s| &s.storage().file) else {
            return true;
        };
        let data = data();
        let need: u64 = data.iter().map(|r| r.1).sum();
        let held = file.metadata().map_or(0, |m| {
            use std::os::unix::fs::MetadataExt;
            m.blocks() * 512
        });
        let need = need.saturating_sub(held);
        if let Some(free) = safe_fs::free_space(file.as_fd()).filter(|&f| f < need) {
            let _ = self.reserve_error.set(Error::target_io(
                &format!(
                    "cannot reserve space for target {}: the image's data needs {need} more bytes, the filesystem has {free}",
                    self.path.display()
                ),
                &std::io::Error::from_raw_os_error(libc::ENOSPC),
            ));
            self.reserve.store(Reserve::Failed as u8, Ordering::Release);
            return false;
        }
        let (file, error) = match file.try_clone() {
            Ok(f) => (f, self.reserve_error.clone()),
            Err(e) => {
                log::warn!("cannot reserve space for the target: {e}");
                return true;
            }
        };
        let path = self.path.clone();
        let spawned = std::thread::Builder::new()
            .name("xdpcast-reserve".into())
            .spawn(move || {
                for &(offset, len) in &data {
                    if let Err(e) = allocate(&file, offset, len) {
                        let _ = error.set(Error::target_io(
                            &format!("cannot reserve space for target {}", path.display()),
                            &e,
                        ));
                        return;
                    }
                }
            });
        match spawned {
            Ok(h) => *self.reserver.lock().unwrap_or_else(|p| p.into_inner()) = Some(h),
            Err(e) => log::warn!("cannot start the space reservation: {e}"),
        }
        true
    }

    /// Wait for the space reservation to end.
    fn join_reserver(&self) {
        let h = self
            .reserver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(h) = h {
            let _ = h.join();
        }
    }

    fn stager(&self) -> Option<&Stager> {
        match &self.out {
            Out::Staged(s) => Some(s),
            Out::Stream { .. } => None,
        }
    }

    /// Length of the image.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for an empty image (never: `open` rejects empty images).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Path of the target.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the target is a block device.
    pub fn is_block_device(&self) -> bool {
        self.block_device
    }

    /// Copy block bytes `data` into the image at `offset`, the start of a
    /// block. Never waits for storage unless the whole staging buffer is in
    /// use.
    ///
    /// Callers guarantee that no two threads write the same range (the
    /// bitmap hands each block to exactly one worker).
    ///
    /// # Panics
    /// If the range is outside the image (the wire parser rejects such blocks).
    pub fn write_at(&self, offset: u64, data: &[u8]) {
        self.write(offset, data, None);
    }

    /// [`Self::write_at`], for bytes that may lie in a worker's frame
    /// `held`: a staged target then takes the frame (true: the copier
    /// copies the bytes and gives the frame back); otherwise, and for a
    /// stream, the bytes are copied here (false).
    ///
    /// # Panics
    /// As [`Self::write_at`].
    pub fn write(&self, offset: u64, data: &[u8], held: Option<Held<'_>>) -> bool {
        let end = offset
            .checked_add(data.len() as u64)
            .expect("offset overflow");
        assert!(end <= self.len, "write past the end of the target");
        match (&self.out, held) {
            (Out::Staged(s), Some(h)) => return s.hand_off(offset, data, h),
            (Out::Staged(s), None) => s.write(offset, data),
            (Out::Stream { out, gated, .. }, _) if *gated => out.hold(offset, data),
            (Out::Stream { out, .. }, _) => out.put(offset, data),
        }
        false
    }

    /// Make `len` bytes at `offset` read as zeros, without writing them
    /// where the target allows: a regular file gets a hole
    /// (`FALLOC_FL_PUNCH_HOLE`, else `FALLOC_FL_ZERO_RANGE`), a block
    /// device `BLKZEROOUT` on the part aligned to its logical block size
    /// (the kernel turns it into the device's own zeroing command, NVMe
    /// Write Zeroes or SCSI WRITE SAME, where the device has one, and writes
    /// zero pages otherwise). `BLKDISCARD` is never used: since Linux 4.12
    /// no device reports that discarded blocks read back as zeros
    /// (`queue/discard_zeroes_data` is always 0), and a device that does
    /// guarantee it is driven through `BLKZEROOUT` anyway. Whatever cannot
    /// be done so (unaligned edges, a target refusing both) is written as
    /// zeros straight to the target.
    ///
    /// A stream gets the zeros in its window (one entry per block, so that
    /// a signed session releases them chunk by chunk), no memory held.
    ///
    /// Callers own the range exclusively, as for [`Self::write_at`].
    pub fn zero(&self, offset: u64, len: u64) -> Result<ZeroMethod> {
        let end = offset.checked_add(len).expect("offset overflow");
        assert!(end <= self.len, "zeroing past the end of the target");
        let method = match &self.out {
            Out::Stream {
                out,
                gated,
                block_size,
            } => {
                for at in (offset..end).step_by(*block_size as usize) {
                    out.zeros(at, (end - at).min(*block_size), !gated);
                }
                ZeroMethod::Written
            }
            Out::Staged(s) => {
                let m = if self.block_device {
                    self.zero_out(&s.storage().file, offset, end)?
                } else {
                    self.punch(&s.storage().file, offset, len)?
                };
                // With a verifier: the zeros count towards their chunks.
                s.landed_elsewhere(offset, len);
                m
            }
        };
        self.zeroed_by.store(method as u8, Ordering::Relaxed);
        Ok(method)
    }

    /// The method [`Self::zero`] used last.
    pub fn zeroed_by(&self) -> ZeroMethod {
        ZeroMethod::from_u64(u64::from(self.zeroed_by.load(Ordering::Relaxed)))
    }

    fn punch(&self, file: &File, offset: u64, len: u64) -> Result<ZeroMethod> {
        let keep = libc::FALLOC_FL_KEEP_SIZE;
        for (mode, method, call) in [
            (
                libc::FALLOC_FL_PUNCH_HOLE | keep,
                ZeroMethod::PunchHole,
                "fallocate(PUNCH_HOLE)",
            ),
            (
                libc::FALLOC_FL_ZERO_RANGE | keep,
                ZeroMethod::ZeroRange,
                "fallocate(ZERO_RANGE)",
            ),
        ] {
            // SAFETY: plain syscall on our open file descriptor.
            let rc = unsafe {
                libc::fallocate(
                    file.as_raw_fd(),
                    mode,
                    offset as libc::off_t,
                    len as libc::off_t,
                )
            };
            if rc == 0 {
                return Ok(method);
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EOPNOTSUPP) {
                return Err(Error::target_io(
                    &format!("{call} on {}", self.path.display()),
                    &err,
                ));
            }
        }
        write_zeros(file, offset, offset + len)?;
        Ok(ZeroMethod::Written)
    }

    fn zero_out(&self, file: &File, offset: u64, end: u64) -> Result<ZeroMethod> {
        let fd = file.as_raw_fd();
        let mut sector: libc::c_int = 0;
        // SAFETY: BLKSSZGET writes one int through the valid pointer.
        if unsafe { libc::ioctl(fd, libc::BLKSSZGET, &mut sector) } != 0 || sector <= 0 {
            sector = 512;
        }
        let sector = sector as u64;
        let (a, b) = (offset.next_multiple_of(sector), end / sector * sector);
        if a >= b {
            write_zeros(file, offset, end)?;
            return Ok(ZeroMethod::Written);
        }
        let range: [u64; 2] = [a, b - a];
        // SAFETY: BLKZEROOUT reads two u64 from the valid pointer. The
        // kernel drops the device's cached pages of the range, which only
        // the caller (who owns the range) could be using.
        if unsafe { libc::ioctl(fd, BLKZEROOUT, range.as_ptr()) } != 0 {
            let err = std::io::Error::last_os_error();
            if !matches!(
                err.raw_os_error(),
                Some(libc::EOPNOTSUPP | libc::ENOTTY | libc::EINVAL)
            ) {
                return Err(Error::target_io(
                    &format!("ioctl(BLKZEROOUT) on {}", self.path.display()),
                    &err,
                ));
            }
            log::warn!(
                "{}: BLKZEROOUT refused ({err}); writing zeros",
                self.path.display()
            );
            write_zeros(file, offset, end)?;
            return Ok(ZeroMethod::Written);
        }
        write_zeros(file, offset, a)?;
        write_zeros(file, b, end)?;
        Ok(ZeroMethod::ZeroOut)
    }

    /// A copy of `len` bytes at `offset`, from the staging buffer or the
    /// target, or from a stream's window. Callers only read ranges whose
    /// writes have completed (the written bitmap says so); a stream's
    /// bytes that have left already cannot be read.
    ///
    /// # Panics
    /// If the range is outside the image.
    pub fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let end = offset.checked_add(len as u64).expect("offset overflow");
        assert!(end <= self.len, "read past the end of the target");
        match &self.out {
            Out::Staged(s) => {
                let mut out = vec![0u8; len];
                s.read(offset, &mut out)
                    .map_err(|e| Error::target_io("cannot read target", &e))?;
                Ok(out)
            }
            Out::Stream { out, .. } => out.read(offset, len as u64).ok_or_else(|| {
                Error::new(
                    ErrorCode::Internal,
                    format!("bytes {offset}..{end} have left the stream's window"),
                )
            }),
        }
    }

    /// `len` bytes at `offset` if the receiver still holds every one of
    /// them in memory (the staging buffer, a stream's window); None
    /// otherwise. Never reads the storage.
    pub fn read_held(&self, offset: u64, len: usize) -> Option<Vec<u8>> {
        match &self.out {
            Out::Staged(s) => {
                let mut out = vec![0u8; len];
                s.read_buffered(offset, &mut out).then_some(out)
            }
            Out::Stream { out, .. } => out.read(offset, len as u64),
        }
    }

    /// Whether the staging buffer holds every block at `offsets` now
    /// (false for a stream).
    pub fn all_buffered(&self, offsets: impl IntoIterator<Item = u64>) -> bool {
        self.stager().is_some_and(|s| s.all_buffered(offsets))
    }

    /// Write every staged block and wait for the device (nothing to do
    /// for a stream: [`Self::sha256`] drains it).
    pub fn flush(&self) -> Result<()> {
        self.join_reserver();
        if let Some(e) = self.reserve_error.get() {
            return Err(e.clone());
        }
        let Some(s) = self.stager() else {
            return Ok(());
        };
        s.flush()?;
        s.storage()
            .file
            .sync_all()
            .map_err(|e| Error::target_io("cannot sync target", &e))
    }

    /// The first write error of the staging writer or the stream, or of
    /// the space reservation, if any.
    pub fn error(&self) -> Option<Error> {
        match &self.out {
            Out::Staged(s) => s.error(),
            Out::Stream { out, .. } => out.failure(),
        }
        .or_else(|| self.reserve_error.get().cloned())
    }

    /// What the staging writer did so far (None for a stream).
    pub fn store_counters(&self) -> Option<&StoreCounters> {
        self.stager().map(Stager::counters)
    }

    /// Blocks AF_XDP workers handed off, and blocks they copied themselves
    /// because their lane was full (0 for a stream).
    pub fn handoff_counts(&self) -> (u64, u64) {
        self.stager().map_or((0, 0), Stager::handoff_counts)
    }

    /// Whether whole chunks go to the device with `O_DIRECT`.
    pub fn is_direct(&self) -> bool {
        self.stager().is_some_and(|s| s.storage().direct.is_some())
    }

    /// Staging buffer bytes (configured, in use now).
    pub fn buffer_use(&self) -> (u64, u64) {
        self.stager().map_or((0, 0), Stager::buffer_use)
    }

    /// SHA-256 of the image: read back from the file after a flush, so
    /// the digest is of what the kernel will keep; for a stream, of what
    /// was written to the pipe, once all of it has been (this waits for
    /// the consumer, then closes the pipe).
    pub fn sha256(&self) -> Result<[u8; 32]> {
        if let Some(s) = self.as_stream() {
            return s.finish(self.len);
        }
        let Some(s) = self.stager() else {
            return Err(Error::new(ErrorCode::Internal, "no target to read"));
        };
        // The file open since the start, not `path` looked up again (it
        // may name something else by now).
        let mut f = s
            .storage()
            .file
            .try_clone()
            .map_err(|e| Error::target_io("cannot read target", &e))?;
        f.seek(SeekFrom::Start(0))
            .and_then(|_| sha256_prefix(&mut f, self.len))
            .map_err(|e| Error::target_io("cannot read target", &e))
    }
}

/// Whether `path` can be written: its components pass the checks of
/// [`safe_fs`], an existing file or device opens for writing, else its
/// directory lets us create it (nothing is created), so a read-only
/// directory or filesystem or a planted link is reported when the session
/// starts, not at the first packet.
pub fn check_writable(path: &Path) -> Result<()> {
    if crate::store::stream::is_stdout(path) {
        return Ok(());
    }
    match safe_fs::find_output(path).map_err(|e| Error::target_io("refusing target", &e))? {
        Found::Existing(_) => Ok(()),
        Found::Absent(dir, _) => dir
            .writable()
            .map_err(|e| Error::target_io(&format!("cannot create target {}", path.display()), &e)),
    }
}

/// Open the target `path` for reading and writing: an existing file or
/// block device, or a new file, never through a link or into a file
/// another user planted ([`safe_fs::open_out`]). Returns it and whether it
/// is a block device.
pub fn open_out(path: &Path) -> Result<(File, bool)> {
    let io =
        |e: std::io::Error| Error::target_io(&format!("cannot open target {}", path.display()), &e);
    let file = safe_fs::open_out(path).map_err(io)?;
    let block_device = file.metadata().map_err(io)?.file_type().is_block_device();
    Ok((file, block_device))
}

/// Memory a receiver keeps for an image of `len` bytes in blocks of
/// `block_size`, besides the buffers its flags size: four block bitmaps
/// (claimed, written, zero runs, resumed) of one bit per block, and three
/// words per chunk of the staging writer.
pub fn bookkeeping_bytes(len: u64, block_size: u32) -> u64 {
    let blocks = len.div_ceil(u64::from(block_size.max(1)));
    blocks
        .div_ceil(64)
        .saturating_mul(8 * 4)
        .saturating_add(len.div_ceil(CHUNK).saturating_mul(20))
}

/// Memory one image's bookkeeping and buffers may take: a quarter of the
/// host's RAM.
pub fn memory_budget() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let (pages, size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    (pages.max(0) as u64).saturating_mul(size.max(0) as u64) / 4
}

/// Check an image of `len` bytes in blocks of `block_size`, announced by
/// a packet, before anything is created or allocated for it: within
/// `--max-image-size` when that is given ([`ErrorCode::TargetTooSmall`]),
/// and its bookkeeping ([`bookkeeping_bytes`]) with `held` bytes of
/// buffers (a stream's window) and the staging buffer within
/// [`memory_budget`] ([`ErrorCode::InvalidArgument`]).
pub fn admit_image(len: u64, block_size: u32, cfg: &StoreConfig, held: u64) -> Result<()> {
    if let Some(max) = cfg.max_image_size.filter(|&m| len > m) {
        return Err(Error::new(
            ErrorCode::TargetTooSmall,
            format!("the image has {len} bytes, more than --max-image-size {max}"),
        ));
    }
    let need = bookkeeping_bytes(len, block_size)
        .saturating_add(held)
        .saturating_add(cfg.buffer_bytes.min(len));
    let budget = memory_budget();
    if need > budget {
        return Err(Error::new(
            ErrorCode::InvalidArgument,
            format!(
                "an image of {len} bytes in blocks of {block_size} needs {need} bytes of memory \
                 for its block maps and buffers, more than a quarter of this host's ({budget})"
            ),
        ));
    }
    Ok(())
}

/// Whether the target found at `path` can hold `len` bytes, checked
/// before anything is created or sized: a block device must be that long
/// ([`ErrorCode::TargetTooSmall`]); a file's filesystem must have that
/// much free, counting what the file already holds
/// ([`ErrorCode::DiskFull`]), unless `--max-image-size` was given (then
/// a sparse image may be larger than the free space: its data is still
/// reserved before it is written, [`Target::reserve`]).
fn admit_target(path: &Path, found: &Found, len: u64, cfg: &StoreConfig) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let io = |e: std::io::Error| Error::target_io(&format!("cannot size {}", path.display()), &e);
    let (free, held) = match found {
        Found::Existing(f) => {
            let m = f.metadata().map_err(io)?;
            if m.file_type().is_block_device() {
                let size = (&*f).seek(SeekFrom::End(0)).map_err(io)?;
                if size < len {
                    return Err(Error::new(
                        ErrorCode::TargetTooSmall,
                        format!(
                            "block device {} has {size} bytes, the image needs {len}",
                            path.display()
                        ),
                    ));
                }
                return Ok(());
            }
            (safe_fs::free_space(f.as_fd()), m.blocks() * 512)
        }
        Found::Absent(dir, _) => (dir.free_space(), 0),
    };
    if cfg.max_image_size.is_some() {
        return Ok(());
    }
    match free {
        Some(free) if len > free.saturating_add(held) => Err(Error::target_io(
            &format!(
                "cannot create target {}: the image has {len} bytes, its filesystem {free} free \
                 (a sparse image larger than that needs --max-image-size)",
                path.display()
            ),
            &std::io::Error::from_raw_os_error(libc::ENOSPC),
        )),
        _ => Ok(()),
    }
}

/// A second open file description of the block device open as `file`, with
/// `O_DIRECT`, and its logical sector size; None (buffered writes only) if
/// either fails. Reopened through `/proc/self/fd`, so the same device, not
/// whatever `path` names now.
fn open_direct(path: &Path, file: &File) -> Option<(File, u64)> {
    let mut lbs: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int to the pointer we pass.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKSSZGET, &mut lbs) };
    if rc != 0 || lbs <= 0 {
        log::warn!(
            "{}: no sector size; writing through the page cache",
            path.display()
        );
        return None;
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
    {
        Ok(d) => Some((d, lbs as u64)),
        Err(e) => {
            log::warn!(
                "{}: no O_DIRECT ({e}); writing through the page cache",
                path.display()
            );
            None
        }
    }
}

/// Write zeros over `[offset, end)` of `file` straight (the staging writer
/// never writes these bytes: no block of a zero run is ever staged).
fn write_zeros(file: &File, offset: u64, end: u64) -> Result<()> {
    use std::os::unix::fs::FileExt;
    static ZEROS: [u8; ZERO_CHUNK] = [0; ZERO_CHUNK];
    let mut at = offset;
    while at < end {
        let n = (end - at).min(ZERO_CHUNK as u64);
        file.write_all_at(&ZEROS[..n as usize], at)
            .map_err(|e| Error::target_io("cannot write zeros to target", &e))?;
        at += n;
    }
    Ok(())
}

/// SHA-256 of the first `len` bytes of a reader.
pub fn sha256_prefix(r: &mut impl Read, len: u64) -> std::io::Result<[u8; 32]> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let want = buf.len().min(left as usize);
        let n = r.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "target shorter than the image",
            ));
        }
        h.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(h.finalize().into())
}

/// Allocate `len` bytes at `offset` of `file` (`fallocate(2)` mode 0, so
/// later writes cannot fail for lack of space). Filesystems without
/// fallocate are accepted as they are.
fn allocate(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    // SAFETY: plain syscall on a valid, open file descriptor.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            0,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EOPNOTSUPP) => {
            log::warn!("filesystem cannot preallocate; a full disk may only show when written");
            Ok(())
        }
        _ => Err(err),
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.join_reserver();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xdpcast-target-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    #[test]
    fn writes_land_at_offsets_and_digest_matches() {
        let p = tmp("img");
        let t = Target::open(&p, 10, 5, &StoreConfig::default()).unwrap();
        t.write_at(0, b"hello");
        t.write_at(5, b"world");
        assert_eq!(t.read_at(3, 4).unwrap(), b"lowo");
        t.flush().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"helloworld");
        let want: [u8; 32] = Sha256::digest(b"helloworld").into();
        assert_eq!(t.sha256().unwrap(), want);
        assert!(!t.is_block_device());
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn existing_larger_file_is_cut_to_the_image() {
        let p = tmp("bigger");
        std::fs::write(&p, [1u8; 100]).unwrap();
        let t = Target::open(&p, 4, 4, &StoreConfig::default()).unwrap();
        assert_eq!(t.len(), 4);
        drop(t);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 4);
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn bad_targets_have_codes() {
        let e = Target::open(
            Path::new("/nonexistent-dir/x"),
            10,
            10,
            &StoreConfig::default(),
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::TargetIo);
        let e = Target::open(&tmp("empty"), 0, 10, &StoreConfig::default()).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgument);
    }

    #[test]
    fn zeroed_ranges_read_as_zeros_over_old_data_and_are_holes() {
        use std::os::unix::fs::MetadataExt;
        let p = tmp("zero");
        let len = 1 << 20;
        std::fs::write(&p, vec![0xA5u8; len]).unwrap();
        let t = Target::open(&p, len as u64, 1400, &StoreConfig::default()).unwrap();
        let before = std::fs::metadata(&p).unwrap().blocks();
        // Unaligned edges, as blocks of 1400 bytes give.
        let (off, n) = (1400 * 3, 1400 * 500);
        let m = t.zero(off, n).unwrap();
        assert!(matches!(m, ZeroMethod::PunchHole | ZeroMethod::ZeroRange));
        assert_eq!(t.zeroed_by(), m);
        t.flush().unwrap();
        let back = std::fs::read(&p).unwrap();
        let (a, b) = (off as usize, (off + n) as usize);
        assert!(back[..a].iter().all(|&x| x == 0xA5));
        assert!(back[a..b].iter().all(|&x| x == 0));
        assert!(back[b..].iter().all(|&x| x == 0xA5));
        if m == ZeroMethod::PunchHole {
            let after = std::fs::metadata(&p).unwrap().blocks();
            assert!(
                before - after >= (n - 8192) / 512,
                "{before} -> {after} blocks of 512"
            );
        }
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn unwritable_targets_are_refused_up_front() {
        assert!(check_writable(&tmp("new-file")).is_ok());
        let e = check_writable(Path::new("/nonexistent-dir/x")).unwrap_err();
        assert_eq!(e.code, ErrorCode::TargetIo);
    }

    #[test]
    #[should_panic(expected = "past the end")]
    fn write_past_end_panics() {
        let p = tmp("short");
        Target::open(&p, 4, 2, &StoreConfig::default())
            .unwrap()
            .write_at(2, b"abc");
    }
}
