//! Where the image comes from: a regular file, a block device, or
//! standard input.

use std::fs::File;
use std::path::Path;

use crate::error::{Error, Result};

/// The image at `path`, or standard input for `-`. Every packet carries
/// the image's size, so standard input is read to its end first, into an
/// unlinked file in the temporary directory (`TMPDIR`, else /tmp): its first
/// packet waits for the end of the input.
pub(super) fn open_source(path: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    if path != Path::new("-") {
        return File::open(path)
            .map_err(|e| Error::target_io(&format!("open {}", path.display()), &e));
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
    std::io::copy(&mut std::io::stdin().lock(), &mut spool).map_err(|e| err("copy", e))?;
    Ok(spool)
}

/// Bytes of the image at `file`: a regular file's length, or a block
/// device's size (its metadata says 0).
pub(super) fn source_len(file: &File) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    use std::os::unix::fs::FileTypeExt;
    let meta = file.metadata()?;
    if meta.file_type().is_block_device() {
        // Seeking moves nothing the mapping depends on.
        let mut f = file;
        f.seek(SeekFrom::End(0))
    } else {
        Ok(meta.len())
    }
}
