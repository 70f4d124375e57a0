//! The target's descriptors (buffered and `O_DIRECT`) and the paced
//! writeback of what the writer thread wrote.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use super::WRITEBACK_LAG;

/// Where chunks go: the target file or block device. `direct` is a second
/// descriptor with `O_DIRECT` for whole, aligned chunks (block devices).
#[derive(Debug)]
pub struct Storage {
    /// Buffered descriptor (reads, unaligned writes, sync).
    pub file: File,
    /// `O_DIRECT` descriptor and the device's logical block size.
    pub direct: Option<(File, u64)>,
    /// Start writeback of each written chunk at once and wait for it
    /// [`WRITEBACK_LAG`] later (`sync_file_range`).
    pub paced: bool,
}

impl Storage {
    /// Write `buf` at `offset`; with `O_DIRECT` where allowed, aligned and
    /// `whole` (a complete chunk: no page of it is in the page cache).
    pub(super) fn write(&self, buf: &[u8], offset: u64, whole: bool) -> std::io::Result<()> {
        if let (Some((d, lbs)), true) = (&self.direct, whole) {
            let aligned = buf.len() as u64 / lbs * lbs;
            if offset % lbs == 0 && aligned > 0 && (buf.as_ptr() as u64) % lbs == 0 {
                d.write_all_at(&buf[..aligned as usize], offset)?;
                if aligned as usize == buf.len() {
                    return Ok(());
                }
                return self
                    .file
                    .write_all_at(&buf[aligned as usize..], offset + aligned);
            }
        }
        self.file.write_all_at(buf, offset)
    }

    pub(super) fn sync_range(
        &self,
        offset: u64,
        len: u64,
        flags: libc::c_uint,
    ) -> std::io::Result<()> {
        // SAFETY: plain syscall on an open descriptor; no memory is passed.
        let rc = unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                offset as libc::off64_t,
                len as libc::off64_t,
                flags,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        // Filesystems without it (ESPIPE/EINVAL): writeback stays the kernel's.
        match e.raw_os_error() {
            Some(libc::ESPIPE | libc::EINVAL | libc::EOPNOTSUPP) => Ok(()),
            _ => Err(e),
        }
    }
}

/// Paced writeback: start it as soon as a chunk is written, wait for it
/// [`WRITEBACK_LAG`] later.
#[derive(Default)]
pub(super) struct Writeback {
    started: std::collections::VecDeque<(u64, u64)>,
    in_flight: u64,
}

impl Writeback {
    pub(super) fn started(&mut self, st: &Storage, offset: u64, len: u64) -> std::io::Result<()> {
        st.sync_range(offset, len, libc::SYNC_FILE_RANGE_WRITE)?;
        self.started.push_back((offset, len));
        self.in_flight += len;
        while self.in_flight > WRITEBACK_LAG {
            let Some((o, l)) = self.started.pop_front() else {
                break;
            };
            self.in_flight -= l;
            st.sync_range(
                o,
                l,
                libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | libc::SYNC_FILE_RANGE_WRITE
                    | libc::SYNC_FILE_RANGE_WAIT_AFTER,
            )?;
        }
        Ok(())
    }
}
