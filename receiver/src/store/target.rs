//! The memory-mapped target: a regular file (created and sized here) or an
//! existing block device, into which workers copy blocks at their offsets.
//!
//! Space for a regular file is reserved with `fallocate(2)` before the
//! mapping is made, so a full filesystem is reported as a clean
//! [`ErrorCode::DiskFull`] up front instead of a `SIGBUS` on a page fault in
//! the middle of the transfer.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use memmap2::{MmapOptions, MmapRaw};
use sha2::{Digest, Sha256};

use crate::error::{Error, ErrorCode, Result};
use crate::safe_fs;

/// A writable shared mapping of the first `len` bytes of the target.
#[derive(Debug)]
pub struct Target {
    map: MmapRaw,
    file: File,
    len: u64,
    path: PathBuf,
    block_device: bool,
}

impl Target {
    /// Open (creating if needed) `path` for an image of `len` bytes.
    ///
    /// A block device must already be at least `len` bytes long; a regular
    /// file is sized to exactly `len` bytes and its space reserved.
    pub fn open(path: &Path, len: u64) -> Result<Target> {
        if len == 0 {
            return Err(Error::new(ErrorCode::InvalidArgument, "empty image"));
        }
        let io = |what: &str, e: std::io::Error| {
            Error::target_io(&format!("{what} {}", path.display()), &e)
        };
        let (mut file, block_device) = open_out(path)?;
        if block_device {
            let size = file
                .seek(SeekFrom::End(0))
                .map_err(|e| io("cannot size block device", e))?;
            if size < len {
                return Err(Error::new(
                    ErrorCode::TargetTooSmall,
                    format!(
                        "block device {} has {size} bytes, the image needs {len}",
                        path.display()
                    ),
                ));
            }
        } else {
            file.set_len(len).map_err(|e| io("cannot size target", e))?;
            reserve(&file, len).map_err(|e| io("cannot reserve space for target", e))?;
        }
        // SAFETY: the mapping covers `len` bytes, which the file has (sized
        // above, or checked for a block device). Other processes may change
        // the file underneath us; we only ever access the mapping through raw
        // pointers (never as `&[u8]` while workers write), so that cannot
        // violate Rust's aliasing rules.
        let map = MmapOptions::new()
            .len(len as usize)
            .map_raw(&file)
            .map_err(|e| io("cannot map target", e))?;
        Ok(Target {
            map,
            file,
            len,
            path: path.to_path_buf(),
            block_device,
        })
    }

    /// Length of the mapped image.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for an empty mapping (never: `open` rejects empty images).
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

    /// Copy `data` into the image at `offset`.
    ///
    /// Callers guarantee that no two threads write the same range at the same
    /// time (the bitmap hands each block to exactly one worker).
    ///
    /// # Panics
    /// If the range is outside the image (the wire parser rejects such blocks).
    pub fn write_at(&self, offset: u64, data: &[u8]) {
        let end = offset
            .checked_add(data.len() as u64)
            .expect("offset overflow");
        assert!(end <= self.len, "write past the end of the target");
        // SAFETY: the range [offset, end) lies inside the mapping (checked
        // above); the mapping lives as long as `self`; the caller guarantees
        // exclusive access to the range, and `data` cannot overlap the
        // mapping's range being written because it is a packet buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.map.as_mut_ptr().add(offset as usize),
                data.len(),
            );
        }
    }

    /// A copy of `len` bytes at `offset`. Callers only read ranges whose
    /// writes have completed (the written bitmap says so).
    ///
    /// # Panics
    /// If the range is outside the image.
    pub fn read_at(&self, offset: u64, len: usize) -> Vec<u8> {
        let end = offset.checked_add(len as u64).expect("offset overflow");
        assert!(end <= self.len, "read past the end of the target");
        let mut out = vec![0u8; len];
        // SAFETY: the range lies inside the mapping (checked above), which
        // lives as long as `self`; no thread writes it any more (the caller
        // only reads written blocks), and `out` is a fresh buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.map.as_ptr().add(offset as usize),
                out.as_mut_ptr(),
                len,
            );
        }
        out
    }

    /// Write dirty pages back and wait for the device.
    pub fn flush(&self) -> Result<()> {
        self.map
            .flush()
            .map_err(|e| Error::target_io("cannot flush target", &e))?;
        self.file
            .sync_all()
            .map_err(|e| Error::target_io("cannot sync target", &e))
    }

    /// SHA-256 of the image, read back from the file (not the mapping), so
    /// the digest is of what the kernel will keep.
    pub fn sha256(&self) -> Result<[u8; 32]> {
        let mut f = File::open(&self.path)
            .map_err(|e| Error::target_io("cannot reopen target to verify", &e))?;
        sha256_prefix(&mut f, self.len).map_err(|e| Error::target_io("cannot read target", &e))
    }
}

/// Whether `path` can be written: an existing file or device must be
/// writable, else its directory must let us create it. Checked with
/// `access(2)` (nothing is opened or created), so a read-only directory or
/// filesystem is reported when the session starts, not at the first packet.
pub fn check_writable(path: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    safe_fs::check_out(path).map_err(|e| Error::target_io("refusing target", &e))?;
    let exists = std::fs::symlink_metadata(path).is_ok();
    let (probe, mode, what) = if exists {
        (path, libc::W_OK, "cannot write target")
    } else {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        (dir, libc::W_OK | libc::X_OK, "cannot create target in")
    };
    let c = std::ffi::CString::new(probe.as_os_str().as_bytes()).map_err(|_| {
        Error::new(
            ErrorCode::InvalidArgument,
            "target path contains a NUL byte",
        )
    })?;
    // SAFETY: `c` is a valid NUL-terminated path for the call's duration.
    if unsafe { libc::access(c.as_ptr(), mode) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(Error::target_io(&format!("{what} {}", probe.display()), &e));
    }
    Ok(())
}

/// Open the target `path` for reading and writing: an existing file or
/// block device, or a new file, never through a symbolic link another user
/// planted ([`safe_fs::open_out`]). Returns it and whether it is a block
/// device.
pub fn open_out(path: &Path) -> Result<(File, bool)> {
    let io =
        |e: std::io::Error| Error::target_io(&format!("cannot open target {}", path.display()), &e);
    let file = safe_fs::open_out(path).map_err(io)?;
    let block_device = file.metadata().map_err(io)?.file_type().is_block_device();
    Ok((file, block_device))
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

/// Reserve disk blocks for the whole file so later page faults cannot fail
/// for lack of space. Filesystems without fallocate are accepted as is.
fn reserve(file: &File, len: u64) -> std::io::Result<()> {
    // SAFETY: plain syscall on a valid, open file descriptor.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) };
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
        let t = Target::open(&p, 10).unwrap();
        t.write_at(0, b"hello");
        t.write_at(5, b"world");
        assert_eq!(t.read_at(3, 4), b"lowo");
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
        let t = Target::open(&p, 4).unwrap();
        assert_eq!(t.len(), 4);
        drop(t);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 4);
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn bad_targets_have_codes() {
        let e = Target::open(Path::new("/nonexistent-dir/x"), 10).unwrap_err();
        assert_eq!(e.code, ErrorCode::TargetIo);
        let e = Target::open(&tmp("empty"), 0).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgument);
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
        Target::open(&p, 4).unwrap().write_at(2, b"abc");
    }
}
