//! The receiving side of a signed session (`--trust`): the verified
//! manifest, the chunk hashes learnt from verified pages, and the check of
//! every chunk against them.
//!
//! Where chunks are hashed (docs/architecture.md, "Signed chunks"): a file
//! or device target stages each signed chunk as one unit of its staging
//! buffer ([`crate::store::writer`]); once all of a chunk's bytes are there
//! the writer thread hashes it from that memory, before writing it, and
//! hands the hash to [`Signed::hashed`]. No worker hashes, waits for a
//! copier or reads the target. A stream (`--out -`) hashes a chunk from its
//! reorder window once the chunk's last block is in, on a thread of the
//! checking pool ([`crate::receive::checks`]), which also checks the
//! signatures of pages and ends.
//!
//! A chunk is OPEN (no hash yet), HASHED (hashed, its page not here yet)
//! or VERIFIED. Whoever brings the second of (hash, signed leaf) compares
//! them, under the chunk's lock: the thread that brings a new hash, or the
//! thread that checks the page. A chunk whose hash differs from the signed
//! one (a forged block took a slot) goes back to OPEN with its blocks
//! unclaimed, so that the real blocks are requested again; if its page was
//! already here, its bytes are never written.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Mutex, MutexGuard, OnceLock};

use ed25519_dalek::VerifyingKey;

use crate::proto::manifest::{chunk_hash, Manifest, HASH_LEN, LEAVES_PER_PAGE};
use crate::proto::wire::{Control, DropReason, DIGEST_LEN, FLAG_FINAL, FLAG_FLEET, LACKING_SHIFT};
use crate::receive::bitmap::BlockBitmap;
use crate::receive::checks;
use crate::store::target::Target;

/// Where a session's blocks are: the target and the two block bitmaps of
/// the transfer's image.
#[derive(Debug, Clone, Copy)]
pub struct Slots<'a> {
    /// The mapped target.
    pub target: &'a Target,
    /// Blocks handed to a worker.
    pub claimed: &'a BlockBitmap,
    /// Blocks whose bytes are in the target.
    pub written: &'a BlockBitmap,
    /// Blocks made zeros for the sender's zero runs.
    pub zeros: &'a BlockBitmap,
}

const OPEN: u8 = 0;
const HASHED: u8 = 1;
const VERIFIED: u8 = 2;

/// A verified manifest and the state of its chunks.
#[derive(Debug)]
pub struct Signed {
    /// The manifest, verified against a trusted key.
    pub manifest: Manifest,
    /// The key that signed it (signed end packets must verify with it).
    pub key: VerifyingKey,
    /// The sender's address from the manifest, if it names one.
    pub source: Option<IpAddr>,
    leaves: Vec<OnceLock<[u8; HASH_LEN]>>,
    /// The hash of each chunk as received, until it is compared. The lock
    /// is taken once per chunk by the writer and per page by a worker.
    got: Vec<Mutex<Option<[u8; HASH_LEN]>>>,
    /// OPEN / HASHED / VERIFIED, written under the chunk's lock, read
    /// without it by scans (Relaxed: a scan is a snapshot).
    state: Vec<AtomicU8>,
    /// Blocks of each chunk in a stream's window (streams only).
    written: Vec<AtomicU32>,
    /// BLAKE3 of a whole chunk of zeros (computed once, by the writer).
    zero_hash: OnceLock<[u8; HASH_LEN]>,
    verified: AtomicU64,
    rejected_blocks: AtomicU64,
    rejected_bytes: AtomicU64,
    bad_chunks: AtomicU64,
    pages: AtomicU64,
    /// The image's SHA-256 as the signer gave it: in the head, or in the
    /// signed ends of a sender that hashes as it sends.
    digest: OnceLock<[u8; DIGEST_LEN]>,
    /// The image's root (BLAKE3 of its chunk hashes) as the signer gave it
    /// in its signed ends, in place of the SHA-256 (`FLAG_ROOT`).
    root: OnceLock<[u8; HASH_LEN]>,
    /// Where a stream's complete chunks go to be hashed (None: hashed on
    /// the thread that brought their last block).
    pool: OnceLock<checks::Handle>,
    /// Woken when the image may have become complete.
    waker: OnceLock<std::thread::Thread>,
}

impl Signed {
    /// State for `manifest`, signed by `key`, nothing verified yet.
    pub fn new(manifest: Manifest, key: VerifyingKey) -> Signed {
        let n = manifest.chunk_count() as usize;
        Signed {
            source: match manifest.source {
                a if a.is_unspecified() => None,
                a => Some(a.to_ipv4_mapped().map_or(IpAddr::V6(a), IpAddr::V4)),
            },
            manifest,
            key,
            leaves: (0..n).map(|_| OnceLock::new()).collect(),
            got: (0..n).map(|_| Mutex::new(None)).collect(),
            state: (0..n).map(|_| AtomicU8::new(OPEN)).collect(),
            written: (0..n).map(|_| AtomicU32::new(0)).collect(),
            zero_hash: OnceLock::new(),
            verified: AtomicU64::new(0),
            rejected_blocks: AtomicU64::new(0),
            rejected_bytes: AtomicU64::new(0),
            bad_chunks: AtomicU64::new(0),
            pages: AtomicU64::new(0),
            digest: if manifest.digest == [0; DIGEST_LEN] {
                OnceLock::new()
            } else {
                OnceLock::from(manifest.digest)
            },
            root: OnceLock::new(),
            pool: OnceLock::new(),
            waker: OnceLock::new(),
        }
    }

    /// Hash a stream's complete chunks on the checking pool behind `h`.
    pub fn use_pool(&self, h: checks::Handle) {
        let _ = self.pool.set(h);
    }

    /// Whether page `index` was verified already (a copy of it is then
    /// told from a forgery by its hashes alone, see [`Self::page`]).
    pub fn has_page(&self, index: u64) -> bool {
        index < self.manifest.page_count()
            && self.leaves[index as usize * LEAVES_PER_PAGE]
                .get()
                .is_some()
    }

    /// The image's SHA-256 as the signer gave it, once known.
    pub fn digest(&self) -> Option<[u8; DIGEST_LEN]> {
        self.digest.get().copied()
    }

    /// The image's root as the signer gave it (a sender that did not hash
    /// the image with SHA-256), once known.
    pub fn root(&self) -> Option<[u8; HASH_LEN]> {
        self.root.get().copied()
    }

    /// Take the SHA-256 a verified signed end carries; false when the
    /// signer gave another one before (its image changed while it sent it).
    pub fn learn_digest(&self, digest: [u8; DIGEST_LEN]) -> bool {
        self.learn(&self.digest, digest)
    }

    /// Take the root a verified signed end carries (`FLAG_ROOT`); false
    /// when the signer gave another one before.
    pub fn learn_root(&self, root: [u8; HASH_LEN]) -> bool {
        self.learn(&self.root, root)
    }

    fn learn(&self, cell: &OnceLock<[u8; 32]>, value: [u8; 32]) -> bool {
        let mut new = false;
        let same = *cell.get_or_init(|| {
            new = true;
            value
        }) == value;
        if new {
            self.wake();
        }
        same
    }

    /// Unpark `t` (the session's watch) when the image may have become
    /// complete: the last chunk verified, or the digest came.
    pub fn wake_on_complete(&self, t: std::thread::Thread) {
        let _ = self.waker.set(t);
    }

    fn wake(&self) {
        if let Some(t) = self.waker.get() {
            t.unpark();
        }
    }

    /// The control block the rest of the receiver acts on (repair
    /// address, passes, FEC), taken from the manifest; `pass`, the FINAL
    /// bit and the count of receivers lacking much of `flags` come from a
    /// verified signed end.
    pub fn control(&self, pass: u32, flags: u32) -> Control {
        let m = &self.manifest;
        let fleet = if flags & FLAG_FLEET != 0 {
            flags & (FLAG_FLEET | 0xffff << LACKING_SHIFT)
        } else {
            0
        };
        Control {
            digest: self.digest().unwrap_or_default(),
            pass,
            passes: m.passes,
            flags: m.flags | (flags & FLAG_FINAL) | fleet,
            repair_port: m.repair_port,
            fec_repair: m.fec_repair,
            fec_group: m.fec_group,
            repair_addr: m.repair_addr,
        }
    }

    /// Count the blocks a resume file brought in, so that their chunks are
    /// checked like any other: a file or device counts their bytes as
    /// landed (its writer reads them when their chunk is complete: the one
    /// read a signed session makes, of bytes an earlier run wrote).
    pub fn resumed(&self, image: Slots<'_>) {
        if image.target.as_stream().is_some() {
            return;
        }
        let g = &self.manifest.geometry;
        for (a, b) in image.written.set_ranges() {
            image.target.on_storage(g.offset(a), g.range_bytes(a, b));
        }
    }

    /// Chunks verified so far.
    pub fn verified_chunks(&self) -> u64 {
        self.verified.load(SeqCst)
    }

    /// Whether every chunk has verified and the signer has given the
    /// image's SHA-256 or root (it has read the whole image): the image is
    /// complete and right.
    pub fn complete(&self) -> bool {
        self.verified_chunks() == self.manifest.chunk_count()
            && (self.digest().is_some() || self.root().is_some())
    }

    /// Blocks written and then unclaimed because their chunk failed.
    pub fn rejected_blocks(&self) -> u64 {
        self.rejected_blocks.load(SeqCst)
    }

    /// Bytes of those blocks (already counted as received, so progress
    /// subtracts them).
    pub fn rejected_bytes(&self) -> u64 {
        self.rejected_bytes.load(SeqCst)
    }

    /// Chunks that failed their hash (drops of reason `bad_chunk`).
    pub fn bad_chunks(&self) -> u64 {
        self.bad_chunks.load(Relaxed)
    }

    /// Pages of chunk hashes learnt (each counted once).
    pub fn pages(&self) -> u64 {
        self.pages.load(SeqCst)
    }

    /// Take in page `index`: dropped unless the manifest's key signed it;
    /// then compare the chunks hashed before it came. A repeat of a page
    /// already verified is told from a forgery by its hashes alone, without
    /// a signature check.
    pub fn page(&self, image: Slots<'_>, index: u64, payload: &[u8]) -> Result<(), DropReason> {
        let unauthenticated = |_| DropReason::Unauthenticated;
        if index >= self.manifest.page_count() {
            return Err(DropReason::Unauthenticated);
        }
        let first = index as usize * LEAVES_PER_PAGE;
        if self.leaves[first].get().is_some() {
            let hashes = self
                .manifest
                .page_hashes(index, payload)
                .map_err(unauthenticated)?;
            let same = hashes
                .iter()
                .zip(&self.leaves[first..])
                .all(|(h, known)| known.get() == Some(h));
            return Err(if same {
                DropReason::Duplicate
            } else {
                DropReason::Unauthenticated
            });
        }
        let leaves = self
            .manifest
            .verify_page(&self.key, index, payload)
            .map_err(unauthenticated)?;
        // Two workers may verify the same page at once: the one that sets
        // its first hash counts it.
        let mut slots = self.leaves[first..].iter().zip(leaves);
        if slots
            .next()
            .is_some_and(|(slot, leaf)| slot.set(leaf).is_err())
        {
            return Err(DropReason::Duplicate);
        }
        for (slot, leaf) in slots {
            let _ = slot.set(leaf);
        }
        self.pages.fetch_add(1, SeqCst);
        // Each chunk under its lock, also those that look unhashed: the
        // lock orders our leaves against a concurrent `hashed` (which
        // stores its hash and reads the leaf under the same lock), so one
        // of the two sees both.
        for chunk in first..(first + LEAVES_PER_PAGE).min(self.leaves.len()) {
            self.compare(image, chunk as u64, &mut self.lock(chunk));
        }
        Ok(())
    }

    /// The writer thread hashed chunk `chunk` as `hash`: compare it with
    /// the signed leaf if that is here (else when its page comes). False
    /// when it differs: the bytes are not to be written.
    pub fn hashed(&self, image: Slots<'_>, chunk: u64, hash: [u8; HASH_LEN]) -> bool {
        let mut got = self.lock(chunk as usize);
        *got = Some(hash);
        self.state[chunk as usize].store(HASHED, Relaxed);
        self.compare(image, chunk, &mut got)
    }

    /// [`Self::hashed`] for a chunk whose bytes are all zeros (zero runs).
    pub fn hashed_zeros(&self, image: Slots<'_>, chunk: u64) -> bool {
        let (a, b) = self.manifest.chunk_bytes(chunk);
        let whole = self.manifest.chunk_bytes(0);
        let hash = if b - a == whole.1 - whole.0 {
            *self
                .zero_hash
                .get_or_init(|| chunk_hash(&vec![0; (b - a) as usize]))
        } else {
            chunk_hash(&vec![0; (b - a) as usize])
        };
        self.hashed(image, chunk, hash)
    }

    /// Stream targets: block `index` is in the window; hash its chunk from
    /// there if that was its last block.
    pub fn block_written(&self, image: Slots<'_>, index: u64) {
        self.blocks_written(image, index, index + 1);
    }

    /// Stream targets: blocks `[first, end)` are in the window (or zeroed
    /// for a zero run); hash each chunk whose last blocks they were, on the
    /// checking pool if there is one. A zero run is thus covered by the
    /// signature like data.
    pub fn blocks_written(&self, image: Slots<'_>, first: u64, end: u64) {
        let per = u64::from(self.manifest.chunk_blocks);
        let mut at = first;
        while at < end {
            let chunk = at / per;
            let (a, b) = self.manifest.chunk_range(chunk);
            let n = end.min(b) - at;
            // SeqCst: one thread sees the count reach the chunk's size.
            if u64::from(self.written[chunk as usize].fetch_add(n as u32, SeqCst)) + n == b - a {
                match self.pool.get() {
                    Some(h) => h.chunk(chunk),
                    None => self.hash_stream_chunk(image, chunk),
                }
            }
            at += n;
        }
    }

    /// Stream targets: hash chunk `chunk`, all of whose blocks are in the
    /// window (they stay there until it verified), and compare it.
    pub fn hash_stream_chunk(&self, image: Slots<'_>, chunk: u64) {
        let (start, stop) = self.manifest.chunk_bytes(chunk);
        match image.target.read_at(start, (stop - start) as usize) {
            Ok(bytes) => {
                self.hashed(image, chunk, chunk_hash(&bytes));
            }
            Err(e) => log::warn!("chunk {chunk}: {e}"),
        }
    }

    /// Chunks whose blocks are all in but whose hash page has not arrived,
    /// as block ranges: asked for again so that the sender runs another
    /// round, in which it repeats the pages.
    pub fn waiting_for_pages(&self, max: usize) -> Vec<(u64, u64)> {
        (0..self.leaves.len())
            .filter(|&c| self.state[c].load(Relaxed) == HASHED && self.leaves[c].get().is_none())
            .map(|c| self.manifest.chunk_range(c as u64))
            .take(max)
            .collect()
    }

    /// Whether every chunk of blocks `[first, end)` whose blocks are all
    /// in has been hashed (compared, or waiting for its page): the staging
    /// writer checks chunks on its own thread, so a caller that needs the
    /// verdict on blocks it fed in (the HTTP source) waits for this.
    pub fn checked(&self, image: Slots<'_>, first: u64, end: u64) -> bool {
        let per = u64::from(self.manifest.chunk_blocks);
        (first / per..end.div_ceil(per).min(self.manifest.chunk_count())).all(|c| {
            let (a, b) = self.manifest.chunk_range(c);
            self.state[c as usize].load(Relaxed) != OPEN || image.written.count_range(a, b) < b - a
        })
    }

    fn lock(&self, chunk: usize) -> MutexGuard<'_, Option<[u8; HASH_LEN]>> {
        self.got[chunk].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Compare chunk `chunk`'s hash (held in `got`, under its lock) with
    /// its leaf; true unless they differ.
    fn compare(&self, image: Slots<'_>, chunk: u64, got: &mut Option<[u8; HASH_LEN]>) -> bool {
        let i = chunk as usize;
        let (Some(hash), Some(want)) = (*got, self.leaves[i].get()) else {
            return true;
        };
        let (a, b) = self.manifest.chunk_bytes(chunk);
        if hash == *want {
            if self.state[i].swap(VERIFIED, Relaxed) != VERIFIED {
                if self.verified.fetch_add(1, SeqCst) + 1 == self.manifest.chunk_count() {
                    self.wake();
                }
                // Only now may a stream let the chunk's bytes leave.
                image.target.release(a, b);
            }
            return true;
        }
        // A forged block is in this chunk: forget all of its blocks so
        // that they are claimed again by the next copies and NACKed.
        *got = None;
        let (first, end) = self.manifest.chunk_range(chunk);
        log::warn!("chunk {chunk} (blocks {first}..{end}) failed its hash: asking again");
        self.bad_chunks.fetch_add(1, Relaxed);
        self.written[i].store(0, SeqCst);
        image.written.remove_range(first, end);
        image.zeros.remove_range(first, end);
        self.rejected_blocks.fetch_add(end - first, SeqCst);
        self.rejected_bytes.fetch_add(b - a, SeqCst);
        // Out of a stream's window, or out of the staging writer's count,
        // before the blocks can be claimed again, so that only the right
        // ones are there to release (or to complete the chunk).
        image.target.discard(a, b);
        image.claimed.remove_range(first, end);
        self.state[i].store(OPEN, Relaxed);
        false
    }
}
