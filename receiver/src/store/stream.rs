//! The image as a stream: blocks arrive in any order, leave in order
//! through a pipe (stdout, or the stdin of a `--pipe` command), with a
//! bounded reorder window in memory.
//!
//! Workers [`put`](StreamOut::put) blocks at their image offsets; a writer
//! thread takes the contiguous run at the front of the window, writes it
//! with `write(2)` (blocking while the consumer is slow) and hashes it. A
//! block that does not [`fit`](StreamOut::fits) (it ends more than the
//! window's capacity past what the consumer has taken) is refused before the
//! receiver marks it received, so the sender's repair brings it again later:
//! a slow or stalled consumer costs retransmissions, never data. Memory is
//! at most `capacity` bytes of held blocks (plus the map's bookkeeping).
//!
//! A block may also be *held* ([`hold`](StreamOut::hold)): it takes its
//! place in the window but does not leave until it is
//! [`release`](StreamOut::release)d (a signed session releases a chunk once
//! its hash verified against the signed manifest, and
//! [`discard`](StreamOut::discard)s it when it failed), and it can be read
//! back while it waits ([`read`](StreamOut::read): chunk checks, FEC
//! decoding). Zeros (the sender's zero runs) take no memory in the window.
//!
//! Nothing can be rewritten once it has left, so resume does not apply to a
//! stream.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, FromRawFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

use crate::error::{Error, ErrorCode, Result};
use crate::status::page::StreamStatus;

/// Whether `path` names standard output (`-`).
pub fn is_stdout(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// A descriptor of standard output of its own (so that closing it leaves
/// fd 1 alone), close-on-exec.
pub fn stdout() -> Result<File> {
    std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map(File::from)
        .map_err(|e| Error::target_io("cannot duplicate stdout", &e))
}

/// A pipe: (read end, write end), both close-on-exec.
pub fn pipe() -> Result<(File, File)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2(2) returns; each
    // is then owned by exactly one File.
    unsafe {
        if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            return Err(Error::target_io("pipe2", &std::io::Error::last_os_error()));
        }
        Ok((File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])))
    }
}

/// Default reorder window: 64 MiB.
pub const DEFAULT_WINDOW: u64 = 64 << 20;
/// How long [`StreamOut::abort`] waits for a writer blocked on the pipe.
const ABORT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// Most bytes the writer takes from the window for one `write` batch.
const BATCH: u64 = 4 << 20;

/// What the writer thread and the workers share.
struct Shared {
    window: Mutex<Window>,
    /// Signalled when a block is put or released, the end is set, or the
    /// stream aborts.
    wake: Condvar,
    capacity: u64,
    /// Bytes written to the pipe (updated after each `write` returns, with
    /// Release: `fits` reads it with Acquire, so room is only given once the
    /// bytes before it have really left).
    written: AtomicU64,
    /// Blocks refused because they did not fit the window.
    refused: AtomicU64,
    /// Bytes held in the window now.
    held: AtomicU64,
    failure: OnceLock<Error>,
}

/// Bytes waiting in the window.
enum Bytes {
    Data(Vec<u8>),
    /// This many zero bytes (nothing allocated).
    Zeros(u64),
}

impl Bytes {
    fn len(&self) -> u64 {
        match self {
            Bytes::Data(d) => d.len() as u64,
            Bytes::Zeros(n) => *n,
        }
    }
}

/// A block in the window, and whether it may leave.
struct Entry {
    bytes: Bytes,
    ready: bool,
}

#[derive(Default)]
struct Window {
    /// Offset of the next byte the writer takes.
    taken: u64,
    /// Blocks waiting, by offset.
    pending: BTreeMap<u64, Entry>,
    /// Length of the image, once known: the writer stops there.
    end: Option<u64>,
    /// Stop now (failure or cancel).
    aborted: bool,
}

/// An image streamed in order into `out`.
pub struct StreamOut {
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<[u8; 32]>>>,
}

impl StreamOut {
    /// Start the writer thread on `out` (a pipe or any writable file) with a
    /// reorder window of `capacity` bytes (at least one block).
    pub fn start(out: File, capacity: u64) -> Result<StreamOut> {
        let shared = Arc::new(Shared {
            window: Mutex::new(Window::default()),
            wake: Condvar::new(),
            capacity,
            written: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            held: AtomicU64::new(0),
            failure: OnceLock::new(),
        });
        let s = shared.clone();
        let writer = std::thread::Builder::new()
            .name("xdpcast-stream".into())
            .spawn(move || s.run(out))
            .map_err(|e| {
                Error::new(
                    ErrorCode::Internal,
                    format!("cannot start the stream writer: {e}"),
                )
            })?;
        Ok(StreamOut {
            shared,
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Whether bytes `[offset, offset + len)` fit the window now (and so
    /// forever: the window only moves forward). A block that does not fit
    /// must not be taken: count it with [`refuse`](Self::refuse).
    pub fn fits(&self, offset: u64, len: u64) -> bool {
        offset.saturating_add(len) <= self.limit()
    }

    /// The end of the window: bytes before it fit.
    pub fn limit(&self) -> u64 {
        self.shared
            .written
            .load(Ordering::Acquire)
            .saturating_add(self.shared.capacity)
    }

    /// Count a block that did not fit.
    pub fn refuse(&self) {
        self.shared.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Hand over the block at `offset`, free to leave. Callers checked
    /// [`fits`](Self::fits) and put each offset once.
    pub fn put(&self, offset: u64, data: &[u8]) {
        self.insert(offset, Bytes::Data(data.to_vec()), true);
    }

    /// Hand over the block at `offset`, to leave only once
    /// [`release`](Self::release)d; else as [`put`](Self::put).
    pub fn hold(&self, offset: u64, data: &[u8]) {
        self.insert(offset, Bytes::Data(data.to_vec()), false);
    }

    /// Hand over `len` zero bytes at `offset` (held or free to leave).
    pub fn zeros(&self, offset: u64, len: u64, ready: bool) {
        self.insert(offset, Bytes::Zeros(len), ready);
    }

    fn insert(&self, offset: u64, bytes: Bytes, ready: bool) {
        debug_assert!(self.fits(offset, bytes.len()));
        let mut w = self.shared.lock();
        if offset < w.taken || w.aborted {
            return;
        }
        let n = bytes.len();
        if let Some(old) = w.pending.insert(offset, Entry { bytes, ready }) {
            self.shared
                .held
                .fetch_sub(old.bytes.len(), Ordering::Relaxed);
        }
        self.shared.held.fetch_add(n, Ordering::Relaxed);
        drop(w);
        if ready {
            self.shared.wake.notify_all();
        }
    }

    /// Let the held blocks in bytes `[start, end)` leave.
    pub fn release(&self, start: u64, end: u64) {
        let mut w = self.shared.lock();
        for (_, e) in w.pending.range_mut(start..end) {
            e.ready = true;
        }
        drop(w);
        self.shared.wake.notify_all();
    }

    /// Drop the held blocks in bytes `[start, end)` (they failed a check;
    /// the right ones are put again later).
    pub fn discard(&self, start: u64, end: u64) {
        let mut w = self.shared.lock();
        let gone: Vec<u64> = w.pending.range(start..end).map(|(&o, _)| o).collect();
        for o in gone {
            if let Some(e) = w.pending.remove(&o) {
                self.shared.held.fetch_sub(e.bytes.len(), Ordering::Relaxed);
            }
        }
    }

    /// A copy of bytes `[offset, offset + len)` if blocks still in the
    /// window cover them without a gap (None once any has left).
    pub fn read(&self, offset: u64, len: u64) -> Option<Vec<u8>> {
        let end = offset.checked_add(len)?;
        let w = self.shared.lock();
        // The entry holding `offset` may start before it (a zero run).
        let first = w.pending.range(..=offset).next_back().map(|(&o, _)| o)?;
        let mut out = Vec::with_capacity(len as usize);
        let mut at = first;
        for (&o, e) in w.pending.range(first..end) {
            if o != at {
                return None;
            }
            match &e.bytes {
                Bytes::Data(d) => out.extend_from_slice(d),
                Bytes::Zeros(n) => out.resize(out.len() + *n as usize, 0),
            }
            at += e.bytes.len();
        }
        if at < end {
            return None;
        }
        let skip = (offset - first) as usize;
        Some(out[skip..skip + len as usize].to_vec())
    }

    /// The writer's fatal error (the consumer closed the pipe, or a write
    /// failed), if any.
    pub fn failure(&self) -> Option<Error> {
        self.shared.failure.get().cloned()
    }

    /// Counters for the status page.
    pub fn status(&self) -> StreamStatus {
        StreamStatus {
            window: self.shared.capacity,
            held: self.shared.held.load(Ordering::Relaxed),
            written: self.shared.written.load(Ordering::Acquire),
            refused: self.shared.refused.load(Ordering::Relaxed),
        }
    }

    /// The image is `len` bytes and every block has been put: wait until
    /// the writer has written them all, close the pipe, and return the
    /// SHA-256 of what was written.
    pub fn finish(&self, len: u64) -> Result<[u8; 32]> {
        {
            let mut w = self.shared.lock();
            w.end = Some(len);
        }
        self.shared.wake.notify_all();
        let digest = self.join();
        if let Some(e) = self.failure() {
            return Err(e);
        }
        match digest {
            Some(d) if self.shared.written.load(Ordering::Acquire) == len => Ok(d),
            _ => Err(Error::new(
                ErrorCode::Internal,
                "the stream writer stopped before the end of the image",
            )),
        }
    }

    /// Wait until `len` bytes have been written into the pipe (the
    /// consumer reads at its own pace), calling `tick` every `every` (to
    /// publish progress); `cancelled` returning true or the writer's
    /// failure end the wait. Then [`finish`](Self::finish) returns at once.
    pub fn drain(
        &self,
        len: u64,
        every: std::time::Duration,
        cancelled: impl Fn() -> bool,
        mut tick: impl FnMut(),
    ) -> Result<()> {
        while self.shared.written.load(Ordering::Acquire) < len {
            if cancelled() {
                return Err(Error::new(ErrorCode::Cancelled, "cancelled"));
            }
            if let Some(e) = self.failure() {
                return Err(e);
            }
            tick();
            std::thread::sleep(every);
        }
        Ok(())
    }

    /// Stop the writer without waiting for the rest (failure, cancel); the
    /// pipe is closed. A writer blocked in `write(2)` on a consumer that
    /// does not read is waited for [`ABORT_WAIT`] at most, then left
    /// behind (it ends with the process), so that a failed session still
    /// ends.
    pub fn abort(&self) {
        self.shared.lock().aborted = true;
        self.shared.wake.notify_all();
        let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let start = std::time::Instant::now();
        while writer.as_ref().is_some_and(|h| !h.is_finished()) {
            if start.elapsed() >= ABORT_WAIT {
                log::warn!("the output stream's consumer does not read: not waiting for it");
                writer.take();
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if let Some(h) = writer.take() {
            let _ = h.join();
        }
    }

    fn join(&self) -> Option<[u8; 32]> {
        let h = self
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()?;
        h.join().ok()
    }
}

impl std::fmt::Debug for StreamOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamOut")
            .field("status", &self.status())
            .finish()
    }
}

impl Drop for StreamOut {
    fn drop(&mut self) {
        self.abort();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The writer thread: returns the SHA-256 of what it wrote; `out` is
    /// closed when it returns.
    fn run(&self, mut out: File) -> [u8; 32] {
        let mut hash = Sha256::new();
        let zeros = vec![0u8; BATCH as usize];
        while let Some(batch) = self.next_batch() {
            for bytes in &batch {
                let mut left = bytes.len();
                while left > 0 {
                    let block = match bytes {
                        Bytes::Data(d) => &d[..],
                        Bytes::Zeros(_) => &zeros[..left.min(BATCH) as usize],
                    };
                    if let Err(e) = self.write(&mut out, block, &mut hash) {
                        let _ = self.failure.set(e);
                        self.lock().aborted = true;
                        return hash.finalize().into();
                    }
                    left -= block.len() as u64;
                }
            }
        }
        hash.finalize().into()
    }

    /// Write `block` to `out`, hash it and count it as written.
    fn write(&self, out: &mut File, block: &[u8], hash: &mut Sha256) -> Result<()> {
        if let Err(e) = out.write_all(block) {
            return Err(if e.kind() == std::io::ErrorKind::BrokenPipe {
                Error::new(
                    ErrorCode::OutputClosed,
                    "the output pipe was closed before the end of the image",
                )
            } else {
                Error::target_io("cannot write the output stream", &e)
            });
        }
        hash.update(block);
        let n = block.len() as u64;
        self.held.fetch_sub(n, Ordering::Relaxed);
        // Release: pairs with the Acquire in `limit`.
        self.written.fetch_add(n, Ordering::Release);
        Ok(())
    }

    /// The contiguous blocks free to leave at the front of the window (at
    /// most about BATCH bytes), waiting for them; None at the end or on
    /// abort.
    fn next_batch(&self) -> Option<Vec<Bytes>> {
        let mut w = self.lock();
        loop {
            if w.aborted || w.end.is_some_and(|e| w.taken >= e) {
                return None;
            }
            let mut batch = Vec::new();
            let mut bytes = 0;
            while bytes < BATCH {
                let at = w.taken;
                if !w.pending.get(&at).is_some_and(|e| e.ready) {
                    break;
                }
                let Some(e) = w.pending.remove(&at) else {
                    break;
                };
                w.taken += e.bytes.len();
                bytes += e.bytes.len();
                batch.push(e.bytes);
            }
            if !batch.is_empty() {
                return Some(batch);
            }
            w = self.wake.wait(w).unwrap_or_else(|p| p.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn out_of_order_blocks_leave_in_order_and_the_window_bounds_memory() {
        let (mut rx, tx) = pipe().unwrap();
        let s = StreamOut::start(tx, 300).unwrap();
        let image: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let block = |i: usize| &image[i * 100..(i + 1) * 100];
        // Nothing read yet: offsets up to 300 fit, the rest waits.
        assert!(s.fits(200, 100) && !s.fits(300, 100));
        s.put(200, block(2));
        s.put(100, block(1));
        assert!(!s.fits(900, 100));
        s.refuse();
        s.put(0, block(0));
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            rx.read_to_end(&mut got).unwrap();
            got
        });
        // As the reader drains the pipe, the window moves on.
        for i in 3..10 {
            while !s.fits(i as u64 * 100, 100) {
                std::thread::yield_now();
            }
            s.put(i as u64 * 100, block(i));
        }
        let digest = s.finish(1000).unwrap();
        drop(s);
        assert_eq!(reader.join().unwrap(), image);
        assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(&image)));
    }

    #[test]
    fn held_blocks_leave_only_once_released_and_discarded_ones_never() {
        let (mut rx, tx) = pipe().unwrap();
        let s = StreamOut::start(tx, 1000).unwrap();
        s.hold(0, &[1; 100]);
        s.zeros(100, 100, false);
        s.hold(200, &[3; 100]);
        // Read back across data and zeros, from inside an entry too.
        let mut want = vec![1u8; 100];
        want.extend([0; 100]);
        assert_eq!(s.read(50, 150).unwrap(), want[50..]);
        assert_eq!(s.read(250, 100), None, "a gap");
        // A forged block is discarded, the right one held instead.
        s.discard(200, 300);
        assert_eq!(s.status().held, 200);
        s.hold(200, &[2; 100]);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(s.status().written, 0, "nothing leaves unreleased");
        s.release(0, 300);
        let digest = s.finish(300).unwrap();
        drop(s);
        let mut got = Vec::new();
        rx.read_to_end(&mut got).unwrap();
        want.extend([2; 100]);
        assert_eq!(got, want);
        assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(&want)));
    }

    #[test]
    fn a_closed_pipe_fails_with_output_closed() {
        let (rx, tx) = pipe().unwrap();
        drop(rx);
        let s = StreamOut::start(tx, 1000).unwrap();
        s.put(0, &[1; 100]);
        let e = s.finish(100).unwrap_err();
        assert_eq!(e.code, ErrorCode::OutputClosed);
        assert_eq!(s.status().written, 0);
    }
}
