//! The stage every datagram passes on either data path: parse, check it
//! belongs to the session, and copy its block into the target.
//!
//! A [`Transfer`] is shared by all workers. The hot path takes no lock: the
//! bitmap hands each block to exactly one worker (atomic `fetch_or`), and each
//! worker counts into its own cache-padded
//! [`WorkerCounters`](crate::receive::workers::WorkerCounters).
//!
//! Where to look: `ingest` (the hot path: one datagram in, FEC symbols),
//! `announce` (the manifest head, signed ends, an unsigned session's
//! announces and ends), `requests` (what to ask the sender for, less what
//! it confirmed), `open` (the target and image, on the packet that fixes
//! the session), `image` (the image's bitmaps, zero runs and the signed
//! chunk check); this file holds the shared state and what the session
//! reads of it.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

use crate::error::{Error, Result};
use ed25519_dalek::VerifyingKey;

use crate::core::gaps::Confirmed;
use crate::proto::fec;
use crate::proto::wire::{self, Control};
use crate::receive::checks;
use crate::receive::control::Announced;
use crate::receive::signed::Signed;
use crate::receive::workers::{Sink, WorkerCounters};
use crate::status::page::{StorageStatus, StreamStatus};
use crate::store::resume;
use crate::store::stream::{self, StreamOut};
use crate::store::writer::StoreConfig;

mod announce;
mod image;
mod ingest;
mod open;
mod requests;
#[cfg(test)]
mod tests;

pub use crate::core::gaps::Needs;
pub use image::{DoneSplit, Image};

/// Shared state of one transfer.
#[derive(Debug)]
pub struct Transfer {
    expected_session: Option<u32>,
    target_path: PathBuf,
    image: OnceLock<Result<Arc<Image>>>,
    digest: OnceLock<[u8; wire::DIGEST_LEN]>,
    failure: Mutex<Option<Error>>,
    failed: AtomicBool,
    passes_seen: AtomicU64,
    first_pass_missing: OnceLock<u64>,
    last_control: Mutex<Option<Control>>,
    /// Announce and end packets taken, and the sender's `FINAL`.
    announced: Mutex<Announced>,
    confirmed: Mutex<Confirmed>,
    fec: fec::Pending,
    resume: Option<PathBuf>,
    resume_failed: AtomicBool,
    store: StoreConfig,
    workers: Vec<CachePadded<WorkerCounters>>,
    /// Keys a manifest must be signed with (empty: unsigned session).
    trusted: Vec<VerifyingKey>,
    /// `--expect-sha256`: the only image accepted.
    pinned: Option<[u8; wire::DIGEST_LEN]>,
    /// `--max-manifest-age`: manifests signed longer ago are replays.
    max_age: Option<Duration>,
    /// `--max-clock-skew`: manifests dated further ahead are refused.
    max_skew: Option<Duration>,
    /// A replayed (or future-dated) manifest has been reported (once per
    /// session).
    replay_warned: AtomicBool,
    signed: OnceLock<Arc<Signed>>,
    /// The payload of the head that fixed the session.
    head: OnceLock<Vec<u8>>,
    /// `--source`: the only sender address taken.
    source: Option<IpAddr>,
    /// Target `-`: bytes of the stream's reorder window.
    stream_window: u64,
    /// Where the signature checks and a stream's chunk hashes run, off the
    /// workers (`--hash-threads`), once the data path started it.
    checks: checks::Pool,
    /// The session's watch, woken when a signed image may be complete.
    waker: OnceLock<std::thread::Thread>,
}

impl Transfer {
    /// A transfer into `target_path` with `workers` worker counter slots,
    /// accepting only `session` when given (else the first session heard).
    pub fn new(target_path: PathBuf, session: Option<u32>, workers: usize) -> Transfer {
        Transfer {
            expected_session: session,
            target_path,
            image: OnceLock::new(),
            digest: OnceLock::new(),
            failure: Mutex::new(None),
            failed: AtomicBool::new(false),
            passes_seen: AtomicU64::new(0),
            first_pass_missing: OnceLock::new(),
            last_control: Mutex::new(None),
            announced: Mutex::default(),
            confirmed: Mutex::default(),
            fec: fec::Pending::default(),
            resume: None,
            resume_failed: AtomicBool::new(false),
            store: StoreConfig::default(),
            workers: (0..workers).map(|_| CachePadded::default()).collect(),
            trusted: Vec::new(),
            pinned: None,
            max_age: None,
            max_skew: None,
            replay_warned: AtomicBool::new(false),
            signed: OnceLock::new(),
            head: OnceLock::new(),
            source: None,
            stream_window: stream::DEFAULT_WINDOW,
            checks: checks::Pool::new(checks::DEFAULT_THREADS),
            waker: OnceLock::new(),
        }
    }

    /// Check signatures and hash a stream's chunks on `threads` threads
    /// (`--hash-threads`; see [`crate::receive::checks`]).
    pub fn with_hash_threads(mut self, threads: usize) -> Transfer {
        self.checks = checks::Pool::new(threads);
        self
    }

    /// Unpark `t` as soon as a signed image may be complete (its last
    /// chunk verified or its digest came), so that SUCCESS does not wait
    /// for `t`'s next look.
    pub fn wake_on_complete(&self, t: std::thread::Thread) {
        let _ = self.waker.set(t.clone());
        if let Some(s) = self.signed() {
            s.wake_on_complete(t);
        }
    }

    /// Jobs queued for the checking pool, and jobs its threads ran.
    pub fn checks_counts(&self) -> (u64, u64) {
        self.checks.counts()
    }

    /// With target `-`: a reorder window of `bytes` (see
    /// [`crate::store::stream`]).
    pub fn with_stream_window(mut self, bytes: u64) -> Transfer {
        self.stream_window = bytes;
        self
    }

    /// Counters of the output stream, if the image goes to one.
    pub fn stream_status(&self) -> Option<StreamStatus> {
        self.image()?.target.as_stream().map(StreamOut::status)
    }

    /// Whether the image goes to a stream (`--out -`).
    pub fn is_stream(&self) -> bool {
        stream::is_stdout(&self.target_path)
    }

    /// Take data only from `source` (`--source`), when given.
    pub fn with_source(mut self, source: Option<IpAddr>) -> Transfer {
        self.source = source;
        self
    }

    /// Accept only a manifest signed by one of `keys` (none: an unsigned
    /// session), and only the image whose SHA-256 is `pinned`, if given.
    pub fn with_trust(
        mut self,
        keys: Vec<VerifyingKey>,
        pinned: Option<[u8; wire::DIGEST_LEN]>,
    ) -> Transfer {
        self.trusted = keys;
        self.pinned = pinned;
        if let Some(d) = pinned {
            let _ = self.digest.set(d);
        }
        self
    }

    /// Refuse manifests signed more than `max_age` ago (by this host's
    /// clock): a recorded older session replayed (None: any age).
    pub fn with_max_manifest_age(mut self, max_age: Option<Duration>) -> Transfer {
        self.max_age = max_age;
        self
    }

    /// Refuse manifests dated more than `max_skew` ahead of this host's
    /// clock (None: any date ahead). Without it, a manifest from a sender
    /// whose clock ran ahead stays replayable until this clock passes its
    /// date plus the maximum age. Within it, a future date counts as age 0.
    pub fn with_max_clock_skew(mut self, max_skew: Option<Duration>) -> Transfer {
        self.max_skew = max_skew;
        self
    }

    /// Signed sessions: whether every complete chunk of blocks `[first,
    /// end)` has been hashed and compared (see [`Signed::checked`]);
    /// always true otherwise.
    pub fn chunks_checked(&self, first: u64, end: u64) -> bool {
        match (self.signed(), self.image()) {
            (Some(s), Some(img)) => s.checked(img.slots(), first, end),
            _ => true,
        }
    }

    /// Whether this is a signed session (`--trust`).
    pub fn is_signed(&self) -> bool {
        !self.trusted.is_empty()
    }

    /// The signed head payload that fixed the session, once verified
    /// (the URLs it names: [`crate::proto::manifest::head_urls`]).
    pub fn head_payload(&self) -> Option<&[u8]> {
        self.head.get().map(Vec::as_slice)
    }

    /// The verified manifest and chunk state, once a manifest verified.
    pub fn signed(&self) -> Option<&Signed> {
        self.signed.get().map(|s| &**s)
    }

    /// Whether the image is complete and known right: every chunk verified
    /// (signed session), or every block in and the digest known (then the
    /// caller reads the target back to compare digests).
    pub fn complete(&self) -> bool {
        match (self.is_signed(), self.image()) {
            (true, _) => self.signed().is_some_and(Signed::complete),
            (false, Some(img)) => {
                self.blocks_done() == img.geometry.block_count && self.digest().is_some()
            }
            (false, None) => false,
        }
    }

    /// Keep the written-block bitmap in `path` (see [`crate::store::resume`]) and
    /// pick up from it when it matches the session. Never for a stream:
    /// what has left through a pipe cannot be rewritten.
    pub fn with_resume(mut self, path: Option<PathBuf>) -> Transfer {
        self.resume = path.filter(|_| !self.is_stream());
        self
    }

    /// Stage blocks as `store` says (default: [`StoreConfig::default`]).
    pub fn with_store(mut self, store: StoreConfig) -> Transfer {
        self.store = store;
        self
    }

    /// The latest announce/end control block (digest, passes, repair address).
    pub fn last_control(&self) -> Option<Control> {
        *lock(&self.last_control)
    }

    /// Sync the target, then save the written bitmap to the resume file.
    ///
    /// Only a failing target is an error. A resume file that cannot be
    /// written (typically a full filesystem: the target's space was
    /// reserved up front, the resume file's was not) costs only the
    /// ability to resume: it is warned about once and the image goes on.
    pub fn save_resume(&self) -> Result<()> {
        let (Some(path), Some(img)) = (&self.resume, self.image()) else {
            return Ok(());
        };
        let words = img.written.words();
        img.target.flush()?;
        if let Err(e) = resume::save(path, img.session, &img.geometry, &words) {
            if !self.resume_failed.swap(true, Ordering::Relaxed) {
                log::warn!(
                    "cannot save the resume file {}: {e}; receiving on without it (a restart would begin again)",
                    path.display()
                );
            }
        }
        Ok(())
    }

    /// Whether saving the resume file has failed (the session goes on).
    pub fn resume_failed(&self) -> bool {
        self.resume_failed.load(Ordering::Relaxed)
    }

    /// Punch the holes of a file target once more, after the last block has
    /// been written: a write through the mapping into a large folio that
    /// straddles a zero run makes the filesystem allocate (and write back)
    /// the whole folio, hole included. The bytes stay zeros either way;
    /// this only gives the space back. Block devices were zeroed in place
    /// and need nothing more.
    pub fn settle_zero_runs(&self) -> Result<()> {
        let Some(img) = self.image() else {
            return Ok(());
        };
        if img.target.is_block_device() || img.target.as_stream().is_some() {
            return Ok(());
        }
        let g = &img.geometry;
        for (a, b) in img.zeros.set_ranges() {
            img.target.zero(g.offset(a), g.range_bytes(a, b))?;
        }
        Ok(())
    }

    /// Remove the resume file (the image is complete and verified).
    pub fn drop_resume(&self) {
        if let Some(p) = &self.resume {
            resume::remove(p);
        }
    }

    /// Blocks taken from the resume file.
    pub fn resumed_blocks(&self) -> u64 {
        self.image().map_or(0, |i| i.resumed)
    }

    /// Bytes of the blocks taken from the resume file.
    pub fn resumed_bytes(&self) -> u64 {
        self.image().map_or(0, |i| i.resumed_bytes)
    }

    /// Resumed and skipped blocks and bytes for the status page: the
    /// blocks of the resume file that the sender's zero runs name count as
    /// skipped (the image's zero runs, whether this run or an earlier one
    /// made them), the other resumed blocks as resumed. Both sums are
    /// those of [`Self::resumed_blocks`] and the zero runs made in this
    /// run.
    pub fn resumed_and_skipped(&self) -> DoneSplit {
        let Some(i) = self.image() else {
            return DoneSplit::default();
        };
        let (zb, zn) = (
            i.resumed_zero_blocks.load(Ordering::Relaxed),
            i.resumed_zero_bytes.load(Ordering::Relaxed),
        );
        DoneSplit {
            resumed_blocks: i.resumed - zb,
            resumed_bytes: i.resumed_bytes - zn,
            skipped_blocks: i.skipped_blocks.load(Ordering::Relaxed) + zb,
            skipped_bytes: i.skipped_bytes.load(Ordering::Relaxed) + zn,
        }
    }

    /// The staging writer's counters (zero until the target is open).
    pub fn storage_status(&self) -> StorageStatus {
        let Some(img) = self.image() else {
            return StorageStatus::default();
        };
        let t = &img.target;
        let Some(c) = t.store_counters() else {
            return StorageStatus::default();
        };
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (buffer_bytes, buffer_used) = t.buffer_use();
        let (handed_off, lane_full) = t.handoff_counts();
        StorageStatus {
            buffer_bytes,
            buffer_used,
            buffer_peak: get(&c.buffer_peak),
            bytes_stored: get(&c.bytes_stored),
            chunks_full: get(&c.chunks_full),
            chunks_partial: get(&c.chunks_partial),
            overflow_blocks: get(&c.overflow_blocks),
            write_max_ns: get(&c.write_max_ns),
            direct: t.is_direct(),
            handed_off,
            lane_full,
            bytes_read_back: get(&c.bytes_read_back),
            blocks_refused: get(&c.blocks_refused),
            chunks_checked: get(&c.chunks_checked),
        }
    }

    /// Blocks rebuilt by FEC.
    pub fn fec_recovered(&self) -> u64 {
        self.all_counters()
            .map(|c| c.fec_recovered.load(Ordering::Relaxed))
            .sum()
    }

    /// Counters of every worker.
    pub fn all_counters(&self) -> impl Iterator<Item = &WorkerCounters> {
        self.workers.iter().map(|c| &**c)
    }

    /// The image, once the first valid packet has been seen and the target
    /// opened.
    pub fn image(&self) -> Option<&Arc<Image>> {
        self.image.get().and_then(|r| r.as_ref().ok())
    }

    /// The sender's digest, once announced.
    pub fn digest(&self) -> Option<[u8; wire::DIGEST_LEN]> {
        self.digest.get().copied()
    }

    /// Blocks written so far (sum over workers, and zero runs; Acquire:
    /// every counted block has been copied or zeroed).
    pub fn blocks_done(&self) -> u64 {
        let rejected = self.signed().map_or(0, Signed::rejected_blocks);
        (self.resumed_blocks()
            + self
                .image()
                .map_or(0, |i| i.skipped_blocks.load(Ordering::Acquire))
            + self
                .all_counters()
                .map(|c| c.blocks.load(Ordering::Acquire))
                .sum::<u64>())
        .saturating_sub(rejected)
    }

    /// Passes whose end packet was seen.
    pub fn passes_seen(&self) -> u64 {
        self.passes_seen.load(Ordering::Relaxed)
    }

    /// Whether the sender's last pass has ended (in an unsigned session:
    /// a `FINAL` end that nothing from the sender has taken back since).
    pub fn final_pass_ended(&self) -> bool {
        self.final_since().is_some()
    }

    /// Since when the sender's last pass has ended, if it has.
    pub fn final_since(&self) -> Option<Instant> {
        lock(&self.announced).final_since()
    }

    /// Blocks missing at the end of the first pass (loss before repair).
    pub fn first_pass_missing(&self) -> Option<u64> {
        self.first_pass_missing.get().copied()
    }

    /// The fatal error, if any (a write error of the target's writer
    /// thread becomes the transfer's here).
    pub fn failure(&self) -> Option<Error> {
        if let Some(e) = self.image().and_then(|i| i.target.error()) {
            self.fail(e);
        }
        if !self.failed.load(Ordering::Acquire) {
            return None;
        }
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The data behind `m`, even if a thread panicked holding it (the state
/// stays consistent: every update is one assignment).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
