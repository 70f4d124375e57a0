//! The stage every datagram passes on either data path: parse, check it
//! belongs to the session, and copy its block into the target.
//!
//! A [`Transfer`] is shared by all workers. The hot path takes no lock: the
//! bitmap hands each block to exactly one worker (atomic `fetch_or`), and each
//! worker counts into its own cache-padded
//! [`WorkerCounters`](crate::receive::workers::WorkerCounters).

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

use crate::error::{Error, ErrorCode, Result};
use ed25519_dalek::VerifyingKey;

use crate::proto::fec;
use crate::proto::manifest::{Manifest, SUB_HEAD};
use crate::proto::wire::{self, Control, DropReason, Geometry, Packet};
use crate::receive::bitmap::BlockBitmap;
use crate::receive::control::{Announced, Confirmed};
use crate::receive::signed::{Signed, Slots};
use crate::receive::workers::{bump, Sink, WorkerCounters};
use crate::status::page::{StorageStatus, StreamStatus};
use crate::store::handoff::Held;
use crate::store::resume;
use crate::store::stream::{self, StreamOut};
use crate::store::target::{self, Target};
use crate::store::writer::{StoreConfig, Verify};

/// The image being received, known from the first valid packet.
#[derive(Debug)]
pub struct Image {
    /// Session id of the sender.
    pub session: u32,
    /// Block layout.
    pub geometry: Geometry,
    /// Mapped target.
    pub target: Target,
    /// Blocks handed to a worker for writing (one `fetch_or` decides who).
    pub claimed: BlockBitmap,
    /// Blocks whose bytes are in the mapping (set after the copy).
    pub written: BlockBitmap,
    /// Blocks already on disk from an earlier run (resume file).
    pub resumed: u64,
    /// Bytes of those blocks.
    pub resumed_bytes: u64,
    /// Blocks of the sender's zero runs made to read as zeros here
    /// (counted after the zeroing, with Release).
    pub skipped_blocks: AtomicU64,
    /// Bytes of those blocks.
    pub skipped_bytes: AtomicU64,
    /// Blocks zeroed for the sender's zero runs in this run (a rejected
    /// chunk of a signed session clears its blocks here too).
    pub zeros: BlockBitmap,
    /// Blocks of the resume file no zero run has named yet (None when not
    /// resuming): when the sender's list names them again they are taken
    /// out, once, and shown as skipped rather than resumed.
    resumed_left: Option<BlockBitmap>,
    /// Resumed blocks (and their bytes) shown as skipped.
    resumed_zero_blocks: AtomicU64,
    resumed_zero_bytes: AtomicU64,
}

/// Blocks and bytes taken from the resume file and skipped in zero runs, as
/// the status page shows them (see [`Transfer::resumed_and_skipped`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DoneSplit {
    /// Blocks from the resume file, less those in zero runs.
    pub resumed_blocks: u64,
    /// Bytes of those blocks.
    pub resumed_bytes: u64,
    /// Blocks of zero runs, made in this run or an earlier one.
    pub skipped_blocks: u64,
    /// Bytes of those blocks.
    pub skipped_bytes: u64,
}

/// What became of a block offered to the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Landed {
    Written,
    /// Written, and the worker's frame went with it to the copier.
    Kept,
    /// Claimed already.
    Duplicate,
    /// Beyond a stream's window, or no room for the data on the
    /// target: not claimed, so it is asked for again.
    Refused,
}

impl Image {
    /// First block that does not fit a stream's reorder window now (all
    /// fit a file or device). Blocks from there on are refused before they
    /// are claimed, so that repair brings them again once the consumer
    /// has made room.
    fn window_end(&self) -> u64 {
        let g = &self.geometry;
        let limit = self.target.limit();
        if limit >= g.total_size {
            g.block_count
        } else {
            limit / u64::from(g.block_size)
        }
    }

    /// Count blocks refused for the stream's window.
    fn refuse(&self) {
        if let Some(s) = self.target.as_stream() {
            s.refuse();
        }
    }

    /// Copy `payload` as block `index` if no one has claimed it yet and it
    /// fits the target.
    fn write_block(
        &self,
        index: u64,
        payload: &[u8],
        held: Option<Held<'_>>,
        c: &WorkerCounters,
        signed: Option<&Signed>,
    ) -> Landed {
        if index >= self.window_end() {
            self.refuse();
            return Landed::Refused;
        }
        // No room for the data: the target's error fails the transfer.
        if !self.reserve_data() {
            return Landed::Refused;
        }
        // A signed session's block with no staging buffer to go to is
        // left to come again rather than written before its chunk is
        // checked (it would have to be read back to check it).
        if !self.target.has_room(self.geometry.offset(index), held) {
            return Landed::Refused;
        }
        if !self.claimed.insert(index) {
            return Landed::Duplicate;
        }
        let kept = self
            .target
            .write(self.geometry.offset(index), payload, held);
        // After the hand-off: whoever sees the block written (and reads it
        // back) first waits for the copier to have copied it (`settle`).
        self.written.insert(index);
        bump(&c.bytes, payload.len() as u64);
        c.blocks.fetch_add(1, Ordering::Release);
        // A file or device: its writer hashes the chunk once it is
        // complete in the staging buffer (see `Checker`), not this worker.
        if let (Some(s), Some(_)) = (signed, self.target.as_stream()) {
            s.block_written(self.slots(), index);
        }
        if kept {
            Landed::Kept
        } else {
            Landed::Written
        }
    }

    /// At the first block of data, reserve the target's space for every
    /// block outside the zero runs made so far (the sender announces its
    /// runs before any data, so they stay holes); false, and the transfer
    /// fails with `disk_full`, if the filesystem has too little room.
    fn reserve_data(&self) -> bool {
        let g = &self.geometry;
        self.target.reserve(|| {
            self.zeros
                .missing_ranges()
                .into_iter()
                .map(|(a, b)| (g.offset(a), g.range_bytes(a, b)))
                .collect()
        })
    }

    /// The target and bitmaps, for chunk checks.
    fn slots(&self) -> Slots<'_> {
        Slots {
            target: &self.target,
            claimed: &self.claimed,
            written: &self.written,
            zeros: &self.zeros,
        }
    }

    /// Runs of zero blocks announced by the sender: each block no one has
    /// claimed yet is zeroed in the target (a hole or `BLKZEROOUT`, see
    /// [`Target::zero`]; zeros in a stream's window) and then marked
    /// written, as if its data had come; in a signed session its chunks
    /// are checked like data chunks. The part of a run beyond a stream's
    /// window is refused like data blocks (the sender repeats zero runs in
    /// repair rounds).
    fn zero_runs(&self, runs: wire::Ranges<'_>, signed: Option<&Signed>) -> Result<()> {
        let g = &self.geometry;
        let stop = self.window_end();
        for (first, count) in runs.iter() {
            let end = first + u64::from(count);
            let cut = end.min(stop).max(first);
            if cut < end {
                self.refuse();
            }
            for (a, b) in self.claimed.insert_range(first, cut) {
                let bytes = g.range_bytes(a, b);
                // In the zero set before the target counts them towards
                // their chunk: the writer checking it fills these blocks
                // in as zeros rather than reading them.
                self.zeros.insert_range(a, b);
                self.target.zero(g.offset(a), bytes)?;
                self.written.insert_range(a, b);
                self.skipped_bytes.fetch_add(bytes, Ordering::Relaxed);
                self.skipped_blocks.fetch_add(b - a, Ordering::Release);
                if let (Some(s), Some(_)) = (signed, self.target.as_stream()) {
                    s.blocks_written(self.slots(), a, b);
                }
            }
            // Runs an earlier run of a resumed session made: already on
            // disk, shown as skipped from now on; in the zero set, so that
            // the end of the session gives their space back too.
            for (a, b) in self
                .resumed_left
                .iter()
                .flat_map(|r| r.take_range(first, cut))
            {
                self.zeros.insert_range(a, b);
                self.resumed_zero_bytes
                    .fetch_add(g.range_bytes(a, b), Ordering::Relaxed);
                self.resumed_zero_blocks.fetch_add(b - a, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Bytes of written block `index`.
    fn read_block(&self, index: u64) -> Option<Vec<u8>> {
        if !self.written.contains(index) {
            return None;
        }
        let read = self
            .target
            .read_at(self.geometry.offset(index), self.geometry.block_len(index));
        // A stream's block that has left cannot be read: expected (its
        // group is asked for as block ranges), not worth a warning.
        if self.target.as_stream().is_none() {
            if let Err(e) = &read {
                log::warn!("block {index}: {e}");
            }
        }
        read.ok()
    }
}

/// The check of a signed session's chunks in the staging writer: each
/// complete chunk is hashed there, on the writer thread, from the staging
/// buffer (no read-back, no worker), and compared with its signed leaf.
struct Checker {
    signed: Arc<Signed>,
    /// The image whose target holds this checker (weak: no cycle).
    image: std::sync::Weak<Image>,
}

impl Verify for Checker {
    fn is_zero(&self, index: u64) -> bool {
        self.image
            .upgrade()
            .is_some_and(|i| i.zeros.contains(index))
    }

    fn check(&self, k: u64, bytes: &[u8]) -> bool {
        // Dropped: the session is over; nothing to keep.
        self.image.upgrade().is_none_or(|i| {
            self.signed
                .hashed(i.slots(), k, crate::proto::manifest::chunk_hash(bytes))
        })
    }

    fn check_zeros(&self, k: u64, _len: u64) -> bool {
        self.image
            .upgrade()
            .is_none_or(|i| self.signed.hashed_zeros(i.slots(), k))
    }
}

/// Blocks not claimed yet that the target can take now (a stream's
/// window), as `[first, end)` ranges. When a stream's window has room for
/// none of them (its consumer stalls with the window full), the first
/// block lacking alone: asking keeps the sender's repair rounds going
/// (one block each) until the consumer moves, instead of letting it end
/// the session for want of requests.
fn missing_in_window(img: &Image) -> Vec<(u64, u64)> {
    let stop = img.window_end();
    let all = img.claimed.missing_ranges();
    let fit: Vec<(u64, u64)> = all
        .iter()
        .take_while(|&&(a, _)| a < stop)
        .map(|&(a, b)| (a, b.min(stop)))
        .collect();
    match all.first() {
        Some(&(a, _)) if fit.is_empty() => vec![(a, a + 1)],
        _ => fit,
    }
}

/// What a receiver should ask for: parity symbols for groups it partly
/// has, block ranges for groups it has nothing of.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// `(group, symbols lacking)`.
    pub parity: Vec<(u64, u32)>,
    /// `(first block, count)`.
    pub ranges: Vec<(u64, u32)>,
    /// Groups left out because the sender confirmed enough symbols (until
    /// a second window of the round opens, see [`Confirmed`]).
    pub silenced: usize,
}

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
        }
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

    /// Blocks not claimed yet, as `(first, count)` ranges, at most `max`
    /// (with a stream, only those its window can take now).
    pub fn missing_ranges(&self, max: usize) -> Vec<(u64, u32)> {
        let Some(img) = self.image() else {
            return Vec::new();
        };
        let mut ranges = missing_in_window(img);
        if let Some(s) = self.signed() {
            ranges.extend(s.waiting_for_pages(max));
        }
        ranges
            .into_iter()
            .flat_map(|(s, e)| {
                (s..e)
                    .step_by(u32::MAX as usize)
                    .map(move |a| (a, (e - a).min(u64::from(u32::MAX)) as u32))
            })
            .take(max)
            .collect()
    }

    /// What to ask the sender for, with groups of `group_size` blocks and
    /// at most `max` entries of each kind. A group with no block and no
    /// symbol (a late join, a gap a resume left) is asked for as a block
    /// range: the data blocks serve as well and need no decoding. For any
    /// other group the receiver asks for as many fresh symbols as it lacks
    /// (blocks missing minus symbols held, at least one), less what the
    /// sender has already confirmed for this round (`round`).
    ///
    /// With a stream, only blocks its window can take now are asked for,
    /// and as block ranges in the group holding the first missing block
    /// (its blocks before that one may have left the window already, so
    /// its symbols could not be decoded) and in a group the window does
    /// not hold whole (symbols would rebuild blocks it must refuse).
    pub fn needs(&self, group_size: u32, round: u64, max: usize) -> Needs {
        let mut out = Needs::default();
        let Some(img) = self.image() else {
            return out;
        };
        let g = &img.geometry;
        let confirmed = lock(&self.confirmed);
        let push_range = |out: &mut Needs, a: u64, b: u64| match out.ranges.last_mut() {
            Some((first, n)) if *first + u64::from(*n) == a => *n += (b - a) as u32,
            _ => out.ranges.push((a, (b - a) as u32)),
        };
        let missing = missing_in_window(img);
        // A signed session onto a file or device asks for block ranges
        // only: decoding parity needs the group's other blocks, which are
        // on the target by then, and it reads nothing back (see
        // `fec_symbol`).
        if self.is_signed() && img.target.as_stream().is_none() {
            for (a, b) in missing {
                push_range(&mut out, a, b);
            }
            out.ranges.truncate(max);
            return out;
        }
        // A stream asks for block ranges in the group of its first missing
        // block and in a group its window does not hold whole.
        let as_ranges = img.target.as_stream().map(|_| {
            let frontier = missing.first().map(|&(a, _)| a / u64::from(group_size));
            (frontier, img.window_end())
        });
        let mut last_group = None;
        for (s, e) in missing {
            let mut b = s;
            while b < e {
                let group = b / u64::from(group_size);
                let (first, end) = fec::group_blocks(g, group_size, group);
                let (a, stop) = (b, end.min(e));
                b = stop;
                if as_ranges.is_some_and(|(f, w)| f == Some(group) || end > w) {
                    push_range(&mut out, a, stop);
                    continue;
                }
                if last_group == Some(group) {
                    continue;
                }
                last_group = Some(group);
                let missing = (end - first) - img.claimed.count_range(first, end);
                let held = self.fec.held(group);
                if missing == end - first && held == 0 {
                    push_range(&mut out, first, end);
                    continue;
                }
                let need = missing.saturating_sub(held).max(1) as u32;
                if confirmed.silences(round, group_size, group, need) {
                    out.silenced += 1;
                } else {
                    out.parity.push((group, need));
                }
            }
        }
        out.parity.truncate(max);
        out.ranges.truncate(max);
        out
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

    /// The target: a stream to stdout for `-` (in a signed session, blocks
    /// wait in its window until their chunk verified, so the window holds
    /// at least one chunk), else the file or device, reopened for a resume.
    fn open_target(&self, session: u32, geometry: &Geometry) -> Result<(Target, Option<Vec<u64>>)> {
        if stream::is_stdout(&self.target_path) {
            let chunk = self.signed().map_or(0, |s| {
                let (a, b) = s.manifest.chunk_bytes(0);
                b - a
            });
            let window = self.stream_window.max(chunk);
            target::admit_image(
                geometry.total_size,
                geometry.block_size,
                &self.store,
                window,
            )?;
            let out = StreamOut::start(stream::stdout()?, window)?;
            let t = Target::stream(
                out,
                geometry.total_size,
                geometry.block_size,
                self.is_signed(),
            );
            return Ok((t, None));
        }
        let saved = self
            .resume
            .as_deref()
            .and_then(|p| resume::load(p, session, geometry));
        let open = match saved {
            Some(_) => Target::reopen,
            None => Target::open,
        };
        // A signed session stages each signed chunk as one unit, hashed
        // in the staging buffer before it is written (see `Checker`).
        let store = match self.signed() {
            Some(s) => StoreConfig {
                unit: s.manifest.chunk_bytes(0).1,
                ..self.store
            },
            None => self.store,
        };
        let target = open(
            &self.target_path,
            geometry.total_size,
            geometry.block_size,
            &store,
        )?;
        Ok((target, saved))
    }

    fn open_image(&self, session: u32, geometry: Geometry) -> Result<Arc<Image>> {
        let (target, saved) = self.open_target(session, &geometry)?;
        log::info!(
            "session {session:#010x}: {} bytes in {} blocks of {} into {}",
            geometry.total_size,
            geometry.block_count,
            geometry.block_size,
            self.target_path.display()
        );
        let (claimed, written) = match &saved {
            Some(words) => (
                BlockBitmap::from_words(geometry.block_count, words),
                BlockBitmap::from_words(geometry.block_count, words),
            ),
            None => (
                BlockBitmap::new(geometry.block_count),
                BlockBitmap::new(geometry.block_count),
            ),
        };
        let resumed = written.count();
        let last = geometry.block_count - 1;
        let resumed_bytes = resumed * u64::from(geometry.block_size)
            - if written.contains(last) {
                u64::from(geometry.block_size) - geometry.block_len(last) as u64
            } else {
                0
            };
        if resumed > 0 {
            log::warn!(
                "resuming: {resumed} of {} blocks already on disk",
                geometry.block_count
            );
        }
        let image = Arc::new(Image {
            session,
            geometry,
            target,
            claimed,
            written,
            resumed,
            resumed_bytes,
            skipped_blocks: AtomicU64::new(0),
            skipped_bytes: AtomicU64::new(0),
            zeros: BlockBitmap::new(geometry.block_count),
            resumed_left: saved
                .as_ref()
                .map(|words| BlockBitmap::from_words(geometry.block_count, words)),
            resumed_zero_blocks: AtomicU64::new(0),
            resumed_zero_bytes: AtomicU64::new(0),
        });
        // Before the image is published (no block is written before it).
        if let Some(signed) = self.signed.get() {
            image.target.set_verify(Arc::new(Checker {
                signed: signed.clone(),
                image: Arc::downgrade(&image),
            }));
        }
        Ok(image)
    }

    /// The image for this packet: opened on the first packet, afterwards the
    /// packet must agree with it.
    fn image_for(&self, p: &Packet<'_>) -> std::result::Result<&Arc<Image>, DropReason> {
        if self.expected_session.is_some_and(|s| s != p.session()) {
            return Err(DropReason::ForeignSession);
        }
        let image = if self.is_signed() {
            // Nothing is opened for a session before its manifest verifies.
            self.image.get().ok_or(DropReason::Unauthenticated)?
        } else {
            self.image
                .get_or_init(|| self.open_or_fail(p.session(), p.geometry()))
        };
        let image = image.as_ref().map_err(|_| DropReason::Inconsistent)?;
        if image.session != p.session() {
            return Err(DropReason::ForeignSession);
        }
        if image.geometry != p.geometry() {
            return Err(DropReason::Inconsistent);
        }
        Ok(image)
    }

    fn open_or_fail(&self, session: u32, geometry: Geometry) -> Result<Arc<Image>> {
        let r = self.open_image(session, geometry);
        if let Err(e) = &r {
            self.fail(e.clone());
        }
        r
    }

    /// A manifest head: verify it; the first that verifies (and matches
    /// `--session` and `--expect-sha256`) fixes the session and opens the
    /// target.
    fn manifest_head(&self, p: &Packet<'_>, payload: &[u8]) -> std::result::Result<(), DropReason> {
        // Once a head fixed the session, the sender's copies are the same
        // bytes, and any other head is none of this session's business: no
        // signature is checked on a worker for a flood of forged heads.
        if let Some(head) = self.head.get() {
            return Err(if head[..] == *payload {
                DropReason::Duplicate
            } else {
                DropReason::Unauthenticated
            });
        }
        let (m, key) =
            Manifest::verify(payload, &self.trusted).map_err(|_| DropReason::Unauthenticated)?;
        if m.session != p.session() || m.geometry != p.geometry() {
            return Err(DropReason::Inconsistent);
        }
        let (age, ahead) = manifest_clock(&m);
        let too_old = self.max_age.is_some_and(|max| age > max);
        if too_old || self.max_skew.is_some_and(|max| ahead > max) {
            if !self.replay_warned.swap(true, Ordering::Relaxed) {
                if too_old {
                    log::warn!(
                        "session {:#010x}: a manifest signed {} s ago (more than --max-manifest-age) is refused as a replay",
                        m.session,
                        age.as_secs()
                    );
                } else {
                    log::warn!(
                        "session {:#010x}: a manifest dated {} s in the future (more than --max-clock-skew) is refused: the sender's or this host's clock is wrong",
                        m.session,
                        ahead.as_secs()
                    );
                }
            }
            return Err(DropReason::ForeignSession);
        }
        if let Some(s) = self.signed() {
            return Err(if s.manifest == m {
                DropReason::Duplicate
            } else {
                DropReason::ForeignSession
            });
        }
        // A head that names the image's SHA-256 is checked against
        // `--expect-sha256` now; one whose sender hashes as it sends, at its
        // first signed end that carries the digest.
        let named = m.digest != [0; wire::DIGEST_LEN];
        if named && self.pinned.is_some_and(|d| d != m.digest) {
            return Err(DropReason::ForeignSession);
        }
        let mut first = false;
        let signed = self.signed.get_or_init(|| {
            first = true;
            Arc::new(Signed::new(m, key))
        });
        if !first {
            return Err(DropReason::Duplicate);
        }
        let _ = self.head.set(payload.to_vec());
        log::info!(
            "session {:#010x}: manifest verified (key {}), SHA-256 {}",
            m.session,
            wire::hex(key.as_bytes()),
            if named {
                wire::hex(&m.digest)
            } else {
                "to come in the signed end".into()
            }
        );
        if named {
            let _ = self.digest.set(m.digest);
        }
        self.remember(&signed.control(0, 0));
        let image = self
            .image
            .get_or_init(|| self.open_or_fail(m.session, m.geometry));
        if let Ok(img) = image {
            signed.resumed(img.slots());
        }
        Ok(())
    }

    /// A signed end of pass, verified with the manifest's key.
    fn signed_end(&self, image: &Image, payload: &[u8]) -> std::result::Result<(), DropReason> {
        let s = self.signed().ok_or(DropReason::Unauthenticated)?;
        let end = s
            .manifest
            .verify_end(&s.key, payload)
            .map_err(|_| DropReason::Unauthenticated)?;
        if let Some(d) = end.digest {
            if self.pinned.is_some_and(|p| p != d) {
                self.fail(Error::new(
                    ErrorCode::DigestMismatch,
                    format!(
                        "the signed image has SHA-256 {}, not the one --expect-sha256 names",
                        wire::hex(&d)
                    ),
                ));
            } else if !s.learn_digest(d) {
                self.fail(Error::new(
                    ErrorCode::ProtocolError,
                    "the signer gave two different SHA-256 digests in one session",
                ));
            } else if self.digest.get().is_none() {
                log::info!(
                    "session {:#010x}: signed SHA-256 {}",
                    s.manifest.session,
                    wire::hex(&d)
                );
                let _ = self.digest.set(d);
            }
        }
        self.end_of_pass(image, &s.control(end.pass, end.flags));
        Ok(())
    }

    /// An announce or end of an unsigned session: acted on once its
    /// parameters (passes, repair address, FEC) are corroborated and only
    /// while they agree (see [`Announced`]); its digest (all zero while
    /// the sender has not read the whole image: it comes with the ends) is
    /// taken once corroborated too; a digest other than
    /// `--expect-sha256`'s is another session's.
    fn unsigned_control(
        &self,
        image: &Image,
        control: &Control,
        is_end: bool,
    ) -> std::result::Result<(), DropReason> {
        let known = control.digest != [0; wire::DIGEST_LEN];
        if known && self.pinned.is_some_and(|d| d != control.digest) {
            return Err(DropReason::ForeignSession);
        }
        let mut a = lock(&self.announced);
        let take = a.offer(control)?;
        if let Some(d) = a.offer_digest(&control.digest)? {
            let _ = self.digest.set(d);
        }
        drop(a);
        if !take {
            return Ok(());
        }
        if is_end {
            self.end_of_pass(image, control);
        } else {
            self.remember(control);
            lock(&self.announced).note_final(control, false);
        }
        Ok(())
    }

    fn remember(&self, control: &Control) {
        *lock(&self.last_control) = Some(*control);
    }

    /// An end taken: a verified signed one, or an unsigned one that agrees
    /// with the corroborated parameters (its `FINAL` is then only a hint
    /// that the sender's next packet takes back).
    fn end_of_pass(&self, image: &Image, control: &Control) {
        self.remember(control);
        self.first_pass_missing
            .get_or_init(|| image.geometry.block_count - image.claimed.count());
        let mut a = lock(&self.announced);
        if !self.is_signed() {
            a.note_final(control, true);
        } else if control.flags & wire::FLAG_FINAL != 0 {
            a.set_final();
        }
        drop(a);
        lock(&self.confirmed).end_seen(u64::from(control.pass));
        self.passes_seen
            .fetch_max(u64::from(control.pass) + 1, Ordering::Release);
    }

    /// A repair symbol for `group`: keep it, and rebuild the group's missing
    /// blocks once enough symbols are in.
    fn fec_symbol(
        &self,
        image: &Image,
        group: u64,
        group_size: u32,
        symbol: &[u8],
        c: &WorkerCounters,
    ) {
        // A signed session onto a file or device does not decode: the
        // group's other blocks would be read back from the target (it
        // asks for block ranges instead, see `needs`).
        if self.is_signed() && image.target.as_stream().is_none() {
            return;
        }
        let g = &image.geometry;
        let (first, end) = fec::group_blocks(g, group_size, group);
        let have = image.written.count_range(first, end);
        let k = end - first;
        if have == k {
            // Not needed: the group is complete.
            self.fec.forget(group);
            return;
        }
        let Some(symbols) = self.fec.add(group, symbol, have, k) else {
            return;
        };
        match fec::decode(g, group_size, group, |i| image.read_block(i), &symbols) {
            Some(data) => {
                for (n, idx) in (first..end).enumerate() {
                    let at = n * g.block_size as usize;
                    let block = &data[at..at + g.block_len(idx)];
                    if image.write_block(idx, block, None, c, self.signed()) == Landed::Written {
                        bump(&c.fec_recovered, 1);
                    }
                }
            }
            None => self.fec.put_back(group, symbols),
        }
    }
}

impl Transfer {
    /// Take in one datagram (the UDP payload) on behalf of worker `c`;
    /// whether its frame `held` went to the copier with a data block.
    fn take(&self, datagram: &[u8], held: Option<Held<'_>>, c: &WorkerCounters) -> bool {
        let mut kept = false;
        let outcome = wire::parse(datagram).and_then(|p| {
            let signed = self.is_signed();
            if let Packet::Manifest { payload, .. } = p {
                if !signed {
                    return Err(DropReason::BadKind);
                }
                if payload[0] == SUB_HEAD {
                    return self.manifest_head(&p, payload);
                }
            }
            let image = self.image_for(&p)?;
            match p {
                Packet::Data { index, payload, .. } => {
                    match image.write_block(index, payload, held, c, self.signed()) {
                        Landed::Duplicate => return Err(DropReason::Duplicate),
                        Landed::Kept => kept = true,
                        Landed::Written | Landed::Refused => {}
                    }
                }
                // With --trust only the signed manifest and signed ends count.
                Packet::Announce { .. } | Packet::End { .. } if signed => {
                    return Err(DropReason::Unauthenticated)
                }
                Packet::Announce { control, .. } => {
                    self.unsigned_control(image, &control, false)?;
                }
                Packet::End { control, .. } => {
                    self.unsigned_control(image, &control, true)?;
                }
                Packet::Manifest { index, payload, .. } => {
                    let s = self.signed().ok_or(DropReason::Unauthenticated)?;
                    s.page(image.slots(), index, payload)?;
                }
                Packet::SignedEnd { payload, .. } => {
                    if !signed {
                        return Err(DropReason::BadKind);
                    }
                    self.signed_end(image, payload)?;
                }
                Packet::Fec {
                    group,
                    group_size,
                    symbol,
                    ..
                } => {
                    if let Some(s) = self.signed() {
                        // Symbols are taken in a signed session only when
                        // its manifest announces FEC or parity repair for
                        // groups of this size (the rebuilt blocks are then
                        // checked against the chunk hashes).
                        let m = &s.manifest;
                        let symbols = m.fec_repair > 0 || m.flags & wire::FLAG_PARITY != 0;
                        if !symbols || m.fec_group != group_size {
                            return Err(DropReason::Unauthenticated);
                        }
                    }
                    self.fec_symbol(image, group, group_size, symbol, c)
                }
                Packet::Zeros { runs, .. } => {
                    // In a signed session each run is checked like data,
                    // through the signed hashes of the chunks it falls in.
                    if let Err(e) = image.zero_runs(runs, self.signed()) {
                        self.fail(e);
                    }
                }
                Packet::Confirm {
                    round,
                    group_size,
                    flags,
                    counts,
                    ..
                } => {
                    // A "too slow" verdict is unicast to one receiver and
                    // taken only from the sender's address (session.rs).
                    if flags & wire::CONFIRM_TOO_SLOW != 0 {
                        return Err(DropReason::BadControl);
                    }
                    lock(&self.confirmed).confirm(round, group_size, counts);
                }
                // Requests and reports go to the sender; one on the group
                // is misdirected.
                Packet::Nack { .. } | Packet::ParityRequest { .. } | Packet::Progress { .. } => {
                    return Err(DropReason::BadKind)
                }
            }
            Ok(())
        });
        if let Err(r) = outcome {
            c.drop_packet(r);
        }
        kept
    }
}

impl Sink for Transfer {
    fn ingest(&self, datagram: &[u8], c: &WorkerCounters) {
        self.take(datagram, None, c);
    }

    fn ingest_held(&self, datagram: &[u8], held: Held<'_>, c: &WorkerCounters) -> bool {
        self.take(datagram, Some(held), c)
    }

    /// Record a fatal error; the first one wins.
    fn fail(&self, err: Error) {
        let mut f = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            log::error!("{err}");
            *f = Some(err);
            self.failed.store(true, Ordering::Release);
        }
    }

    fn counters(&self, i: usize) -> &WorkerCounters {
        &self.workers[i]
    }

    /// Whether the transfer has failed (cheap check for the hot path).
    fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// `--source`, else the address the verified manifest names.
    fn source(&self) -> Option<IpAddr> {
        self.source.or_else(|| self.signed().and_then(|s| s.source))
    }
}

/// The data behind `m`, even if a thread panicked holding it (the state
/// stays consistent: every update is one assignment).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `m`'s date against this host's clock: how long ago it was signed (0
/// for a manifest from the future) and how far ahead it is dated (0 for
/// one from the past).
fn manifest_clock(m: &Manifest) -> (Duration, Duration) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    (
        Duration::from_secs(now.saturating_sub(m.issued_at)),
        Duration::from_secs(m.issued_at.saturating_sub(now)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::wire::{encode_control, encode_data, Kind};

    fn setup(name: &str, session: Option<u32>) -> (Transfer, PathBuf) {
        let dir = std::env::temp_dir().join(format!("xdpcast-transfer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        (Transfer::new(p.clone(), session, 1), p)
    }

    fn image_bytes(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn blocks_land_and_bad_packets_are_counted_not_written() {
        let (t, path) = setup("ingest", None);
        let data = image_bytes(5000);
        let g = Geometry::new(data.len() as u64, 1000);
        let c = t.counters(0);
        let ctl = Control {
            flags: wire::FLAG_FINAL,
            ..Control::new([9; 32], 0, 1)
        };
        t.ingest(&encode_control(Kind::Announce, 5, &g, &ctl), c);
        for i in 0..g.block_count {
            let o = g.offset(i) as usize;
            let block = &data[o..o + g.block_len(i)];
            t.ingest(&encode_data(5, &g, i, block), c);
            if i == 2 {
                // Mid-transfer garbage: foreign session, other geometry, noise, duplicate.
                t.ingest(&encode_data(6, &g, 3, &[0xEE; 1000]), c);
                let other = Geometry::new(6000, 1000);
                t.ingest(&encode_data(5, &other, 3, &[0xEE; 1000]), c);
                t.ingest(b"not a packet at all, but long enough to be read......", c);
                t.ingest(&encode_data(5, &g, 2, &[0xEE; 1000]), c);
            }
        }
        t.ingest(&encode_control(Kind::End, 5, &g, &ctl), c);
        assert_eq!(t.blocks_done(), 5);
        assert_eq!(t.digest(), Some([9; 32]));
        assert!(t.final_pass_ended());
        assert_eq!(t.first_pass_missing(), Some(0));
        let d = |r: DropReason| c.drops[r as usize].load(Ordering::Relaxed);
        assert_eq!(d(DropReason::ForeignSession), 1);
        assert_eq!(d(DropReason::Inconsistent), 1);
        assert_eq!(d(DropReason::BadMagic), 1);
        assert_eq!(d(DropReason::Duplicate), 1);
        let img = t.image().unwrap();
        img.target.flush().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
        assert!(t.failure().is_none());
    }

    #[test]
    fn zero_runs_are_zeroed_over_old_data_and_count_as_done() {
        let (t, path) = setup("zeros", None);
        let mut data = image_bytes(10_000);
        data[2000..7000].fill(0);
        std::fs::write(&path, vec![0xEE; 10_000]).unwrap();
        let g = Geometry::new(data.len() as u64, 1000);
        let c = t.counters(0);
        let zeros = wire::encode_zeros(5, &g, &[(2, 5)]);
        t.ingest(&zeros[0], c);
        assert_eq!(t.blocks_done(), 5);
        // A repeated list, or a data packet for a zero block, changes nothing.
        t.ingest(&zeros[0], c);
        t.ingest(&encode_data(5, &g, 3, &[0xEE; 1000]), c);
        assert_eq!(t.blocks_done(), 5);
        for i in (0..2).chain(7..10) {
            let o = g.offset(i) as usize;
            t.ingest(&encode_data(5, &g, i, &data[o..o + 1000]), c);
        }
        assert_eq!(t.blocks_done(), 10);
        assert_eq!(
            t.image().unwrap().skipped_bytes.load(Ordering::Relaxed),
            5000
        );
        assert_eq!(c.bytes.load(Ordering::Relaxed), 5000);
        let img = t.image().unwrap();
        img.target.flush().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
        assert!(t.failure().is_none());
    }

    #[test]
    fn a_stream_takes_only_what_its_window_holds_and_asks_for_the_rest() {
        use std::io::Read;
        let (mut rx, tx) = stream::pipe().unwrap();
        let g = Geometry::new(1000, 100);
        let out = StreamOut::start(tx, 300).unwrap();
        let img = Image {
            session: 1,
            geometry: g,
            // Gated, as for a signed session: nothing leaves unreleased.
            target: Target::stream(out, g.total_size, g.block_size, true),
            claimed: BlockBitmap::new(g.block_count),
            written: BlockBitmap::new(g.block_count),
            resumed: 0,
            resumed_bytes: 0,
            skipped_blocks: AtomicU64::new(0),
            skipped_bytes: AtomicU64::new(0),
            zeros: BlockBitmap::new(g.block_count),
            resumed_left: None,
            resumed_zero_blocks: AtomicU64::new(0),
            resumed_zero_bytes: AtomicU64::new(0),
        };
        let c = WorkerCounters::default();
        // Nothing read yet: blocks 0..3 fit, block 5 is refused unclaimed.
        let put = |i: u64, v: u8| img.write_block(i, &[v; 100], None, &c, None);
        assert_eq!(missing_in_window(&img), vec![(0, 3)]);
        assert_eq!(put(5, 5), Landed::Refused);
        assert!(!img.claimed.contains(5));
        assert_eq!(put(1, 1), Landed::Written);
        assert_eq!(put(2, 2), Landed::Written);
        assert_eq!(missing_in_window(&img), vec![(0, 1)]);
        assert_eq!(put(0, 0), Landed::Written);
        assert_eq!(put(0, 9), Landed::Duplicate);
        // The window is full and nothing has left: the first block lacking
        // is still asked for, so that the sender's rounds go on.
        assert_eq!(missing_in_window(&img), vec![(3, 4)]);
        img.target.release(0, 300);
        assert_eq!(img.target.as_stream().unwrap().status().refused, 1);
        // A zero run goes in as zeros, as far as the window reaches each
        // time (the sender repeats it in repair rounds).
        let zeros = wire::encode_zeros(1, &g, &[(3, 7)]);
        while !img.claimed.missing_ranges().is_empty() {
            match wire::parse(&zeros[0]) {
                Ok(Packet::Zeros { runs, .. }) => img.zero_runs(runs, None).unwrap(),
                _ => panic!("a zero-run packet"),
            }
            img.target.release(0, 1000);
            std::thread::yield_now();
        }
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            rx.read_to_end(&mut got).unwrap();
            got
        });
        assert_eq!(img.target.sha256().unwrap(), {
            use sha2::Digest;
            let mut want = [[0u8; 100], [1; 100], [2; 100]].concat();
            want.resize(1000, 0);
            <[u8; 32]>::from(sha2::Sha256::digest(&want))
        });
        drop(img);
        assert_eq!(reader.join().unwrap().len(), 1000);
    }

    #[test]
    fn expected_session_filters_and_a_second_digest_is_counted_not_fatal() {
        let (t, _) = setup("filter", Some(7));
        let g = Geometry::new(100, 100);
        let c = t.counters(0);
        t.ingest(&encode_data(8, &g, 0, &[1; 100]), c);
        assert!(
            t.image().is_none(),
            "a foreign session must not open the target"
        );
        assert_eq!(
            c.drops[DropReason::ForeignSession as usize].load(Ordering::Relaxed),
            1
        );
        let mut ctl = Control::new([1; 32], 0, 2);
        t.ingest(&encode_control(Kind::Announce, 7, &g, &ctl), c);
        t.ingest(&encode_control(Kind::End, 7, &g, &ctl), c);
        assert!(!t.final_pass_ended());
        assert_eq!(t.first_pass_missing(), Some(1));
        assert_eq!(t.digest(), Some([1; 32]));
        // Another digest (a forgery, whoever's it is) is counted, and
        // neither taken nor fatal: the read-back decides.
        ctl.digest = [2; 32];
        for _ in 0..3 {
            t.ingest(&encode_control(Kind::Announce, 7, &g, &ctl), c);
        }
        assert!(t.failure().is_none());
        assert_eq!(t.digest(), Some([1; 32]));
        assert_eq!(
            c.drops[DropReason::Inconsistent as usize].load(Ordering::Relaxed),
            3
        );
    }

    #[test]
    fn one_forged_control_packet_sets_nothing_and_final_is_taken_back() {
        let (t, _) = setup("corroborate", None);
        let g = Geometry::new(300, 100);
        let c = t.counters(0);
        let real = Control {
            flags: wire::FLAG_REPAIR,
            repair_port: 5000,
            ..Control::new([1; 32], 0, 1)
        };
        let redirect = Control {
            repair_port: 666,
            ..real
        };
        // One forged announce first: neither digest nor repair address.
        t.ingest(&encode_control(Kind::Announce, 7, &g, &redirect), c);
        assert!(t.last_control().is_none() && t.digest().is_none());
        for _ in 0..2 {
            t.ingest(&encode_control(Kind::Announce, 7, &g, &real), c);
        }
        assert_eq!(t.last_control().unwrap().repair_port, 5000);
        // Redirects every so often, and a forged FINAL end in the window.
        t.ingest(&encode_control(Kind::Announce, 7, &g, &redirect), c);
        let fin = Control {
            flags: real.flags | wire::FLAG_FINAL,
            ..real
        };
        t.ingest(&encode_control(Kind::End, 7, &g, &fin), c);
        assert_eq!(t.last_control().unwrap().repair_port, 5000);
        assert!(t.final_pass_ended());
        // The sender's next end (a reminder of the round) takes it back.
        t.ingest(&encode_control(Kind::End, 7, &g, &real), c);
        assert!(!t.final_pass_ended());
        assert!(t.failure().is_none());
    }

    #[test]
    fn a_confirmation_silences_a_group_for_a_while() {
        let (t, _) = setup("confirm", None);
        let g = Geometry::new(1000, 100);
        let c = t.counters(0);
        t.ingest(&encode_data(7, &g, 0, &[1; 100]), c);
        // Groups of 5 blocks: group 0 has one block, group 1 none.
        let h = wire::ConfirmHeader {
            round: 0,
            group_size: 5,
            receivers: 1,
            flags: 0,
        };
        t.ingest(&wire::encode_confirm(7, &g, &h, &[(0, 5), (1, 5)]), c);
        let n = t.needs(5, 0, 100);
        assert_eq!((n.parity.len(), n.silenced), (0, 1));
        assert_eq!(n.ranges, vec![(5, 5)]);
        // A second window of round 0 (four sends of its end): the
        // confirmation counts no more.
        let end = encode_control(Kind::End, 7, &g, &Control::new([1; 32], 0, 1));
        for _ in 0..crate::receive::control::SILENCE_ENDS {
            t.ingest(&end, c);
            t.ingest(&end, c);
            std::thread::sleep(Duration::from_millis(25));
        }
        let n = t.needs(5, 0, 100);
        assert_eq!((n.parity, n.silenced), (vec![(0, 4)], 0));
    }

    #[test]
    fn zero_runs_an_earlier_run_made_show_as_skipped_once() {
        let (_, path) = setup("resumed-zeros", None);
        let g = Geometry::new(5000, 1000);
        std::fs::write(&path, vec![0; 5000]).unwrap();
        let resume = resume::default_path(&path);
        // Blocks 1 and 2 (a zero run the killed run made) and 4 are on disk.
        resume::save(&resume, 3, &g, &[0b10110]).unwrap();
        let t = Transfer::new(path.clone(), None, 1).with_resume(Some(resume.clone()));
        let c = t.counters(0);
        let list = wire::encode_zeros(3, &g, &[(1, 2)]);
        t.ingest(&list[0], c);
        t.ingest(&list[0], c);
        let split = |rb, sb| DoneSplit {
            resumed_blocks: rb,
            resumed_bytes: rb * 1000,
            skipped_blocks: sb,
            skipped_bytes: sb * 1000,
        };
        assert_eq!(t.resumed_and_skipped(), split(1, 2));
        assert_eq!(t.blocks_done(), 3);
        // A longer list: block 0 is zeroed now, 1 and 2 are counted once.
        t.ingest(&wire::encode_zeros(3, &g, &[(0, 3)])[0], c);
        assert_eq!(t.resumed_and_skipped(), split(1, 3));
        assert_eq!(t.blocks_done(), 4);
        assert_eq!(t.resumed_blocks(), 3);
        std::fs::remove_file(&resume).unwrap();
    }

    #[test]
    fn resumed_blocks_count_in_bytes_and_an_unwritable_resume_file_only_warns() {
        let (_, path) = setup("resumed", None);
        let data = image_bytes(2500);
        let g = Geometry::new(data.len() as u64, 1000);
        let resume = resume::default_path(&path);
        // Blocks 0 and 2 (the short last one, 500 bytes) are on disk already.
        resume::save(&resume, 3, &g, &[0b101]).unwrap();
        let t = Transfer::new(path.clone(), None, 1).with_resume(Some(resume.clone()));
        let c = t.counters(0);
        t.ingest(&encode_data(3, &g, 1, &data[1000..2000]), c);
        assert_eq!((t.resumed_blocks(), t.resumed_bytes()), (2, 1500));
        assert_eq!(t.blocks_done(), 3);
        std::fs::remove_file(&resume).unwrap();
        drop(t);

        // A resume file that cannot be written (here: its directory is
        // gone; a full filesystem takes the same path) degrades with a
        // warning; the transfer goes on.
        let t = Transfer::new(path, None, 1)
            .with_resume(Some(PathBuf::from("/nonexistent-dir/img.xdpcast-resume")));
        t.ingest(&encode_data(3, &g, 0, &data[..1000]), t.counters(0));
        assert!(t.save_resume().is_ok());
        assert!(t.resume_failed());
        assert!(t.failure().is_none());
    }

    /// Manifest of session 5: `g`, `digest` (all zero: in the signed
    /// ends), one pass, chunks of two blocks.
    fn test_manifest(g: Geometry, digest: [u8; 32], issued_at: u64) -> Manifest {
        Manifest {
            session: 5,
            geometry: g,
            digest,
            passes: 1,
            flags: 0,
            repair_addr: std::net::Ipv6Addr::UNSPECIFIED,
            repair_port: 0,
            fec_repair: 0,
            fec_group: 0,
            source: std::net::Ipv6Addr::UNSPECIFIED,
            chunk_blocks: 2,
            issued_at,
            zero_runs: [0; 32],
        }
    }

    /// A signed transfer (key [9; 32]) with `max_age` and `max_skew`, and
    /// a genuinely signed manifest head for it dated `offset` seconds from
    /// now (negative: in the past).
    fn dated_manifests(
        name: &str,
        max_age: Option<Duration>,
        max_skew: Option<Duration>,
    ) -> (Transfer, PathBuf, impl Fn(i64) -> Vec<u8>) {
        use ed25519_dalek::SigningKey;
        let (t, path) = setup(name, None);
        let _ = std::fs::remove_file(&path);
        let key = SigningKey::from_bytes(&[9; 32]);
        let t = t
            .with_trust(vec![key.verifying_key()], None)
            .with_max_manifest_age(max_age)
            .with_max_clock_skew(max_skew);
        let data = image_bytes(1000);
        let g = Geometry::new(data.len() as u64, 100);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let head = move |offset: i64| {
            let m = test_manifest(g, [4; 32], now.saturating_add_signed(offset));
            wire::encode_raw(Kind::Manifest, 5, &g, 0, &m.sign(&key))
        };
        (t, path, head)
    }

    #[test]
    fn a_replayed_old_manifest_opens_nothing() {
        let (t, path, head) = dated_manifests("replay", Some(Duration::from_secs(3600)), None);
        let c = t.counters(0);
        // Genuinely signed, two hours ago: a replay, nothing opened.
        t.ingest(&head(-7200), c);
        assert!(t.image().is_none() && !path.exists());
        assert_eq!(
            c.drops[DropReason::ForeignSession as usize].load(Ordering::Relaxed),
            1
        );
        // Signed a minute ago, or ahead of this clock: taken.
        t.ingest(&head(60), c);
        assert!(t.image().is_some());
    }

    #[test]
    fn a_manifest_dated_beyond_the_clock_skew_opens_nothing() {
        use crate::receive::request::{DEFAULT_MAX_CLOCK_SKEW, DEFAULT_MAX_MANIFEST_AGE};
        let (t, path, head) = dated_manifests(
            "future",
            Some(DEFAULT_MAX_MANIFEST_AGE),
            Some(DEFAULT_MAX_CLOCK_SKEW),
        );
        let c = t.counters(0);
        // Genuinely signed, dated an hour ahead: refused like a replay.
        t.ingest(&head(3600), c);
        assert!(t.image().is_none() && !path.exists());
        assert!(t.signed().is_none() && !t.complete() && t.digest().is_none());
        assert_eq!(
            c.drops[DropReason::ForeignSession as usize].load(Ordering::Relaxed),
            1
        );
        // A minute ahead is within the skew: taken.
        t.ingest(&head(60), c);
        assert!(t.image().is_some() && path.exists());
        assert_eq!(t.digest(), Some([4; 32]));
        let _ = std::fs::remove_file(&path);

        // With the bound off (--max-clock-skew 0), ten years ahead is
        // taken: its age is 0.
        let (t, path, head) = dated_manifests("future-any", Some(DEFAULT_MAX_MANIFEST_AGE), None);
        let c = t.counters(0);
        t.ingest(&head(10 * 365 * 86400), c);
        assert!(t.image().is_some() && path.exists());
        assert_eq!(
            c.drops[DropReason::ForeignSession as usize].load(Ordering::Relaxed),
            0
        );
        let _ = std::fs::remove_file(&path);
    }

    /// Wait for work another thread does (the staging writer's checks);
    /// no time is asserted: the deadline only ends a hung test.
    fn wait_until(done: impl Fn() -> bool) {
        let until = std::time::Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(std::time::Instant::now() < until, "never happened");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn signed_session_writes_nothing_unverified_and_rejects_forged_chunks() {
        use ed25519_dalek::SigningKey;
        let (t, path) = setup("signed", None);
        let _ = std::fs::remove_file(&path);
        let key = SigningKey::from_bytes(&[9; 32]);
        let t = t.with_trust(vec![key.verifying_key()], None);
        let data = image_bytes(10 * 100 - 30);
        let g = Geometry::new(data.len() as u64, 100);
        // A sender that hashes as it sends: the digest comes in the end.
        let m = test_manifest(g, [0; 32], 0);
        let c = t.counters(0);
        let d = |r: DropReason| c.drops[r as usize].load(Ordering::Relaxed);
        let block = |i: u64| {
            let o = g.offset(i) as usize;
            encode_data(5, &g, i, &data[o..o + g.block_len(i)])
        };
        let raw = |kind, index, payload: &[u8]| wire::encode_raw(kind, 5, &g, index, payload);
        // Before a verified manifest: nothing is opened, whatever arrives.
        t.ingest(&block(0), c);
        t.ingest(
            &encode_control(Kind::Announce, 5, &g, &Control::new([1; 32], 0, 1)),
            c,
        );
        let forger = SigningKey::from_bytes(&[7; 32]);
        t.ingest(&raw(Kind::Manifest, 0, &m.sign(&forger)), c);
        assert!(t.image().is_none() && !path.exists());
        assert_eq!(d(DropReason::Unauthenticated), 3);
        t.ingest(&raw(Kind::Manifest, 0, &m.sign(&key)), c);
        assert!(t.image().is_some());
        assert_eq!(t.digest(), None);
        // Unsigned control and forged ends are ignored.
        let fin = Control {
            flags: wire::FLAG_FINAL,
            ..Control::new([1; 32], 0, 1)
        };
        t.ingest(&encode_control(Kind::End, 5, &g, &fin), c);
        t.ingest(
            &raw(
                Kind::SignedEnd,
                0,
                &m.sign_end(&forger, 0, wire::FLAG_FINAL, &[1; 32]),
            ),
            c,
        );
        assert!(!t.final_pass_ended() && t.digest().is_none());
        assert_eq!(d(DropReason::Unauthenticated), 5);
        // A forged block lands first in chunk 1 (blocks 2, 3).
        t.ingest(&encode_data(5, &g, 3, &[0xEE; 100]), c);
        for i in 0..g.block_count {
            t.ingest(&block(i), c);
        }
        // The staging writer hashes each chunk once it is complete, on its
        // own thread (chunks of 200 bytes: every one but the last, 170).
        let img = t.image().unwrap().clone();
        let checked = || {
            img.target
                .store_counters()
                .unwrap()
                .chunks_checked
                .load(Ordering::Relaxed)
        };
        wait_until(|| checked() == m.chunk_count());
        assert_eq!(t.signed().unwrap().verified_chunks(), 0);
        // Pages arrive after the blocks: hashes are compared then. A page
        // signed by another key is dropped and does not shadow the real one;
        // a repeat of a verified page is a duplicate, an altered one forged.
        t.ingest(&raw(Kind::Manifest, 0, &m.page_of(&forger, 0, &data)), c);
        assert_eq!(d(DropReason::Unauthenticated), 6);
        for p in 0..m.page_count() {
            t.ingest(&raw(Kind::Manifest, p, &m.page_of(&key, p, &data)), c);
        }
        let dup = d(DropReason::Duplicate);
        t.ingest(&raw(Kind::Manifest, 0, &m.page_of(&key, 0, &data)), c);
        assert_eq!(d(DropReason::Duplicate), dup + 1);
        let mut altered = m.page_of(&key, 0, &data);
        altered[4] ^= 1;
        t.ingest(&raw(Kind::Manifest, 0, &altered), c);
        assert_eq!(d(DropReason::Unauthenticated), 7);
        assert_eq!(t.signed().unwrap().bad_chunks(), 1);
        assert!(!t.complete());
        assert_eq!(t.missing_ranges(10), vec![(2, 2)]);
        assert_eq!(t.blocks_done(), g.block_count - 2);
        // With its page known, a chunk with a forged block is refused
        // before it is written: the target keeps what it had there.
        t.ingest(&encode_data(5, &g, 2, &[0xDD; 100]), c);
        t.ingest(&block(3), c);
        wait_until(|| t.signed().unwrap().bad_chunks() == 2);
        t.image().unwrap().target.flush().unwrap();
        assert!(!std::fs::read(&path).unwrap()[200..300].contains(&0xDD));
        assert_eq!(t.missing_ranges(10), vec![(2, 2)]);
        t.ingest(&block(2), c);
        t.ingest(&block(3), c);
        let signed = t.signed().unwrap();
        wait_until(|| signed.verified_chunks() == m.chunk_count());
        // No byte was read back from the target to check a chunk.
        let st = img.target.store_counters().unwrap();
        assert_eq!(st.bytes_read_back.load(Ordering::Relaxed), 0);
        assert_eq!(t.blocks_done(), g.block_count);
        // Every chunk verified, but not complete before the signer has
        // given the image's SHA-256.
        assert!(!t.complete());
        let sha: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&data).into();
        t.ingest(
            &raw(
                Kind::SignedEnd,
                0,
                &m.sign_end(&key, 0, wire::FLAG_FINAL, &sha),
            ),
            c,
        );
        assert!(t.final_pass_ended() && t.complete());
        assert_eq!(t.digest(), Some(sha));
        t.image().unwrap().target.flush().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
        assert!(t.failure().is_none());
        // The signer naming another digest later is a protocol error.
        t.ingest(
            &raw(Kind::SignedEnd, 0, &m.sign_end(&key, 1, 0, &[5; 32])),
            c,
        );
        assert_eq!(t.failure().map(|e| e.code), Some(ErrorCode::ProtocolError));
    }

    #[test]
    fn signed_end_digest_other_than_the_pinned_one_fails() {
        use ed25519_dalek::SigningKey;
        let (t, path) = setup("signed-pinned", None);
        let _ = std::fs::remove_file(&path);
        let key = SigningKey::from_bytes(&[9; 32]);
        let t = t.with_trust(vec![key.verifying_key()], Some([1; 32]));
        let g = Geometry::new(1000, 100);
        let m = test_manifest(g, [0; 32], 0);
        let c = t.counters(0);
        let raw = |kind, payload: &[u8]| wire::encode_raw(kind, 5, &g, 0, payload);
        // The head cannot be checked against the pin: it names no digest.
        t.ingest(&raw(Kind::Manifest, &m.sign(&key)), c);
        assert!(t.signed().is_some() && t.failure().is_none());
        t.ingest(&raw(Kind::SignedEnd, &m.sign_end(&key, 0, 0, &[4; 32])), c);
        assert_eq!(t.failure().map(|e| e.code), Some(ErrorCode::DigestMismatch));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn pinned_digest_drops_other_announces_instead_of_failing() {
        let (t, _) = setup("pinned", None);
        let t = t.with_trust(Vec::new(), Some([1; 32]));
        let g = Geometry::new(100, 100);
        let c = t.counters(0);
        t.ingest(
            &encode_control(Kind::Announce, 7, &g, &Control::new([2; 32], 0, 1)),
            c,
        );
        assert_eq!(t.digest(), Some([1; 32]));
        assert!(t.failure().is_none());
        assert_eq!(
            c.drops[DropReason::ForeignSession as usize].load(Ordering::Relaxed),
            1
        );
    }

    #[test]
    fn unopenable_target_fails_the_transfer() {
        let t = Transfer::new(PathBuf::from("/nonexistent-dir/img"), None, 1);
        let g = Geometry::new(100, 100);
        t.ingest(&encode_data(1, &g, 0, &[1; 100]), t.counters(0));
        assert_eq!(t.failure().unwrap().code, ErrorCode::TargetIo);
        assert_eq!(t.blocks_done(), 0);
    }
}
