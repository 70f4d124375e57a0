//! Standard input sent while it is read (`send - --size BYTES`).
//!
//! Every packet carries the image's size, so a sender reading a pipe must
//! know it before its first packet: given `--size`, it copies the input on
//! a thread of its own into an unlinked spool file of that size (in
//! `TMPDIR`) and sends each block as soon as the copy has passed it. The
//! spool keeps the whole image (its bound on disk: the image's size), so
//! later passes and repair rounds resend from it and a late or lossy
//! receiver gets everything a sender of a regular file would give it. An
//! input shorter or longer than `--size` ends the sender with an error
//! (`invalid_argument`) before it sends the end of its first pass, so no
//! receiver can verify a wrong image.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::{Error, ErrorCode, Result};

/// How long a reader of the spool sleeps before it looks again.
const POLL: Duration = Duration::from_micros(200);
/// Bytes copied per read of the input.
const COPY: usize = 1 << 20;

/// How far the copy of the input into the spool has come.
#[derive(Debug)]
pub struct Fill {
    /// Bytes at the start of the spool that hold the input (Release by the
    /// copier after they are written, Acquire by readers before they read
    /// them through the mapping).
    filled: AtomicU64,
    /// The size the input must have.
    size: u64,
    /// The input was read to its end and had exactly `size` bytes.
    done: AtomicBool,
    /// Why the copy stopped short, if it did.
    failed: Mutex<Option<String>>,
}

impl Fill {
    /// Copy `input` into `spool` (sized `size` bytes already) on a thread
    /// of its own.
    pub fn start(
        mut input: impl Read + Send + 'static,
        spool: File,
        size: u64,
    ) -> Result<Arc<Fill>> {
        let fill = Arc::new(Fill {
            filled: AtomicU64::new(0),
            size,
            done: AtomicBool::new(false),
            failed: Mutex::new(None),
        });
        let f = fill.clone();
        std::thread::Builder::new()
            .name("xdpcast-stdin".into())
            .spawn(move || match copy(&mut input, &spool, &f) {
                Ok(()) => f.done.store(true, Ordering::Release),
                Err(e) => {
                    *f.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                }
            })
            .map_err(|e| {
                Error::new(
                    ErrorCode::Internal,
                    format!("start a thread to read standard input: {e}"),
                )
            })?;
        Ok(fill)
    }

    fn failure(&self) -> Option<Error> {
        let f = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        f.as_ref()
            .map(|m| Error::new(ErrorCode::InvalidArgument, m.clone()))
    }

    /// Wait until the first `upto` bytes of the image are in the spool;
    /// an error once the input has failed or ended short.
    pub fn wait(&self, upto: u64) -> Result<()> {
        let upto = upto.min(self.size);
        loop {
            if self.filled.load(Ordering::Acquire) >= upto {
                return Ok(());
            }
            if let Some(e) = self.failure() {
                return Err(e);
            }
            std::thread::sleep(POLL);
        }
    }

    /// Wait until the input has been read to its end: an error unless it
    /// had exactly the size given.
    pub fn finish(&self) -> Result<()> {
        loop {
            if self.done.load(Ordering::Acquire) {
                return Ok(());
            }
            if let Some(e) = self.failure() {
                return Err(e);
            }
            std::thread::sleep(POLL);
        }
    }
}

/// The copier: `input` into `spool` up to `fill.size`, then one more read
/// that must find the input's end.
fn copy(input: &mut impl Read, spool: &File, fill: &Fill) -> std::result::Result<(), String> {
    let mut buf = vec![0u8; COPY];
    let mut at = 0u64;
    let read = |input: &mut dyn Read, buf: &mut [u8]| loop {
        match input.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => return r.map_err(|e| format!("read standard input: {e}")),
        }
    };
    while at < fill.size {
        let want = (fill.size - at).min(COPY as u64) as usize;
        let n = read(input, &mut buf[..want])?;
        if n == 0 {
            return Err(format!(
                "standard input ended after {at} bytes, short of --size {}",
                fill.size
            ));
        }
        spool
            .write_all_at(&buf[..n], at)
            .map_err(|e| format!("keep standard input in TMPDIR: {e}"))?;
        at += n as u64;
        fill.filled.store(at, Ordering::Release);
    }
    if read(input, &mut buf[..1])? > 0 {
        return Err(format!(
            "standard input is longer than --size {}",
            fill.size
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spool(size: u64) -> File {
        let f = tempfile_in_tmp();
        f.set_len(size).unwrap();
        f
    }

    fn tempfile_in_tmp() -> File {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .open(std::env::temp_dir())
            .unwrap()
    }

    #[test]
    fn input_of_the_given_size_is_copied_and_others_fail() {
        let data: Vec<u8> = (0..3_000_001u32).map(|i| (i % 251) as u8).collect();
        let f = spool(data.len() as u64);
        let fill = Fill::start(
            std::io::Cursor::new(data.clone()),
            f.try_clone().unwrap(),
            data.len() as u64,
        )
        .unwrap();
        fill.wait(1).unwrap();
        fill.finish().unwrap();
        let mut got = vec![0u8; data.len()];
        f.read_exact_at(&mut got, 0).unwrap();
        assert_eq!(got, data);
        for (have, size, says) in [
            (10u64, 11u64, "ended after 10 bytes"),
            (12, 11, "longer than --size 11"),
        ] {
            let fill = Fill::start(
                std::io::Cursor::new(vec![7u8; have as usize]),
                spool(size),
                size,
            )
            .unwrap();
            let e = fill.finish().unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidArgument);
            assert!(e.message.contains(says), "{}", e.message);
        }
        let fill = Fill::start(std::io::Cursor::new(vec![1u8; 5]), spool(11), 11).unwrap();
        assert!(fill.wait(6).is_err());
        fill.wait(5).unwrap();
    }
}
