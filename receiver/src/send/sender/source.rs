//! Where the image comes from: a regular file, a block device, or
//! standard input (see [`crate::send::fill`]).

use std::fs::File;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, ErrorCode, Result};
use crate::send::fill::Fill;
use crate::send::zeros::DataMap;

/// The image to map: its file, size, and where it has data.
pub(super) struct Source {
    pub(super) file: File,
    pub(super) len: u64,
    pub(super) data: DataMap,
    /// Standard input still being copied into `file`.
    pub(super) fill: Option<Arc<Fill>>,
}

/// The image at `path`, or standard input for `-`. Standard input that is
/// a regular file or a block device (`send - < image`) is sent as such.
/// A pipe: with `size`, copied into an unlinked spool file in the
/// temporary directory (`TMPDIR`, else /tmp) while it is sent; without,
/// read to its end into that file first (every packet carries the image's
/// size), so its first packet waits for the end of the input.
pub(super) fn open_source(path: &Path, size: Option<u64>) -> Result<Source> {
    let whole = |file: File, what: &dyn std::fmt::Display| {
        let len =
            source_len(&file).map_err(|e| Error::target_io(&format!("size of {what}"), &e))?;
        Ok(Source {
            data: DataMap::of(&file, len),
            file,
            len,
            fill: None,
        })
    };
    if path != Path::new("-") {
        let file = File::open(path)
            .map_err(|e| Error::target_io(&format!("open {}", path.display()), &e))?;
        return whole(file, &path.display());
    }
    if let Some(file) = seekable_stdin() {
        return whole(file, &"standard input");
    }
    let dir = std::env::temp_dir();
    let err = |what: &str, e: std::io::Error| {
        Error::target_io(&format!("{what} standard input in {}", dir.display()), &e)
    };
    let mut spool = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o600)
        .open(&dir)
        .map_err(|e| err("keep", e))?;
    let Some(len) = size else {
        std::io::copy(&mut std::io::stdin().lock(), &mut spool).map_err(|e| err("copy", e))?;
        return whole(spool, &"standard input");
    };
    if len == 0 {
        return Err(Error::new(
            ErrorCode::InvalidArgument,
            "--size 0: nothing to send",
        ));
    }
    spool
        .set_len(len)
        .map_err(|e| err("size the spool of", e))?;
    let reader = spool.try_clone().map_err(|e| err("keep", e))?;
    let fill = Fill::start(std::io::stdin(), reader, len)?;
    Ok(Source {
        file: spool,
        len,
        data: DataMap::filling(len, fill.clone()),
        fill: Some(fill),
    })
}

/// Standard input as a file, when it is a regular file or a block device
/// read from its start (a pipe, a terminal or a socket: None).
fn seekable_stdin() -> Option<File> {
    use std::os::fd::AsFd;
    let fd = std::io::stdin().as_fd().try_clone_to_owned().ok()?;
    let file = File::from(fd);
    let kind = file.metadata().ok()?.file_type();
    // SAFETY: lseek on an fd we own, moving nothing (SEEK_CUR by 0).
    let at = unsafe { libc::lseek(std::os::fd::AsRawFd::as_raw_fd(&file), 0, libc::SEEK_CUR) };
    ((kind.is_file() || kind.is_block_device()) && at == 0).then_some(file)
}

/// Bytes of the image at `file`: a regular file's length, or a block
/// device's size (its metadata says 0).
fn source_len(file: &File) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let meta = file.metadata()?;
    if meta.file_type().is_block_device() {
        // Seeking moves nothing the mapping depends on.
        let mut f = file;
        f.seek(SeekFrom::End(0))
    } else {
        Ok(meta.len())
    }
}
