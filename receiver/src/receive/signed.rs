//! The receiving side of a signed session (`--trust`): the verified
//! manifest, the chunk hashes learnt from verified pages, and the check of
//! every chunk as its last block lands.
//!
//! A chunk moves OPEN -> CHECKING -> VERIFIED, or back to OPEN with its
//! blocks unclaimed when its hash differs from the signed one (a forged
//! block took a slot), so that the real blocks are requested again. Only
//! one thread holds a chunk in CHECKING; whoever releases it looks again
//! whether the chunk became ready meanwhile, so a page and a last block
//! arriving at once on two workers never leave a chunk unchecked. These
//! transitions are rare (once per chunk), so they use SeqCst throughout:
//! the "is it ready" reads after a release must see the other worker's
//! write that made its own CAS fail.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering::SeqCst};
use std::sync::OnceLock;

use ed25519_dalek::VerifyingKey;

use crate::proto::manifest::{chunk_hash, Manifest, HASH_LEN, LEAVES_PER_PAGE};
use crate::proto::wire::{Control, DropReason, DIGEST_LEN, FLAG_FINAL};
use crate::receive::bitmap::BlockBitmap;
use crate::receive::workers::WorkerCounters;
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
const CHECKING: u8 = 1;
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
    written: Vec<AtomicU32>,
    state: Vec<AtomicU8>,
    verified: AtomicU64,
    rejected_blocks: AtomicU64,
    rejected_bytes: AtomicU64,
    pages: AtomicU64,
    /// The image's SHA-256 as the signer gave it: in the head, or in the
    /// signed ends of a sender that hashes as it sends.
    digest: OnceLock<[u8; DIGEST_LEN]>,
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
            written: (0..n).map(|_| AtomicU32::new(0)).collect(),
            state: (0..n).map(|_| AtomicU8::new(OPEN)).collect(),
            verified: AtomicU64::new(0),
            rejected_blocks: AtomicU64::new(0),
            rejected_bytes: AtomicU64::new(0),
            pages: AtomicU64::new(0),
            digest: if manifest.digest == [0; DIGEST_LEN] {
                OnceLock::new()
            } else {
                OnceLock::from(manifest.digest)
            },
        }
    }

    /// The image's SHA-256 as the signer gave it, once known.
    pub fn digest(&self) -> Option<[u8; DIGEST_LEN]> {
        self.digest.get().copied()
    }

    /// Take the SHA-256 a verified signed end carries; false when the
    /// signer gave another one before (its image changed while it sent it).
    pub fn learn_digest(&self, digest: [u8; DIGEST_LEN]) -> bool {
        *self.digest.get_or_init(|| digest) == digest
    }

    /// The control block the rest of the receiver acts on (repair
    /// address, passes, FEC), taken from the manifest; `pass` and the
    /// FINAL bit of `flags` come from a verified signed end.
    pub fn control(&self, pass: u32, flags: u32) -> Control {
        let m = &self.manifest;
        Control {
            digest: self.digest().unwrap_or_default(),
            pass,
            passes: m.passes,
            flags: m.flags | (flags & FLAG_FINAL),
            repair_port: m.repair_port,
            fec_repair: m.fec_repair,
            fec_group: m.fec_group,
            repair_addr: m.repair_addr,
        }
    }

    /// Count the blocks a resume file brought in, so that their chunks are
    /// checked (read back, hashed) once their page arrives like any other.
    pub fn resumed(&self, image: Slots<'_>) {
        for (c, n) in self.written.iter().enumerate() {
            let (first, end) = self.manifest.chunk_range(c as u64);
            n.store(image.written.count_range(first, end) as u32, SeqCst);
        }
    }

    /// Chunks verified so far.
    pub fn verified_chunks(&self) -> u64 {
        self.verified.load(SeqCst)
    }

    /// Whether every chunk has verified and the signer has given the
    /// image's SHA-256: the image is complete and right.
    pub fn complete(&self) -> bool {
        self.verified_chunks() == self.manifest.chunk_count() && self.digest().is_some()
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

    /// Pages of chunk hashes learnt (each counted once).
    pub fn pages(&self) -> u64 {
        self.pages.load(SeqCst)
    }

    /// Take in page `index`: dropped unless the manifest's key signed it;
    /// then check the chunks that were waiting for it. A repeat of a page
    /// already verified is told from a forgery by its hashes alone, without
    /// a signature check.
    pub fn page(
        &self,
        image: Slots<'_>,
        index: u64,
        payload: &[u8],
        c: &WorkerCounters,
    ) -> Result<(), DropReason> {
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
        for chunk in first..(first + LEAVES_PER_PAGE).min(self.leaves.len()) {
            self.try_verify(image, chunk as u64, c);
        }
        Ok(())
    }

    /// Block `index` has been written: check its chunk if that was the last one.
    pub fn block_written(&self, image: Slots<'_>, index: u64, c: &WorkerCounters) {
        self.blocks_written(image, index, index + 1, c);
    }

    /// Blocks `[first, end)` have been written (or zeroed for a zero run):
    /// check each chunk whose last blocks they were. A zero run is thus
    /// covered by the signature like data: its chunks' hashes are signed.
    pub fn blocks_written(&self, image: Slots<'_>, first: u64, end: u64, c: &WorkerCounters) {
        let per = u64::from(self.manifest.chunk_blocks);
        let mut at = first;
        while at < end {
            let chunk = at / per;
            let (a, b) = self.manifest.chunk_range(chunk);
            let n = end.min(b) - at;
            if u64::from(self.written[chunk as usize].fetch_add(n as u32, SeqCst)) + n == b - a {
                self.try_verify(image, chunk, c);
            }
            at += n;
        }
    }

    /// Chunks whose blocks are all in but whose hash page has not arrived,
    /// as block ranges: asked for again so that the sender runs another
    /// round, in which it repeats the pages.
    pub fn waiting_for_pages(&self, max: usize) -> Vec<(u64, u64)> {
        (0..self.leaves.len() as u64)
            .filter(|&c| self.ready_blocks(c) && self.leaves[c as usize].get().is_none())
            .map(|c| self.manifest.chunk_range(c))
            .take(max)
            .collect()
    }

    fn ready_blocks(&self, chunk: u64) -> bool {
        let (first, end) = self.manifest.chunk_range(chunk);
        u64::from(self.written[chunk as usize].load(SeqCst)) == end - first
    }

    fn try_verify(&self, image: Slots<'_>, chunk: u64, c: &WorkerCounters) {
        let i = chunk as usize;
        loop {
            let Some(want) = self.leaves[i].get() else {
                return;
            };
            if !self.ready_blocks(chunk) {
                return;
            }
            if self.state[i]
                .compare_exchange(OPEN, CHECKING, SeqCst, SeqCst)
                .is_err()
            {
                // Verified, or another thread checks it and looks again
                // after it lets go.
                return;
            }
            if !self.ready_blocks(chunk) {
                self.state[i].store(OPEN, SeqCst);
                continue;
            }
            let (a, b) = self.manifest.chunk_bytes(chunk);
            let bytes = match image.target.read_at(a, (b - a) as usize) {
                Ok(bytes) => bytes,
                Err(e) => {
                    // The target cannot be read back: the writer's error
                    // fails the transfer; leave the chunk unverified.
                    log::warn!("chunk {chunk}: {e}");
                    self.state[i].store(OPEN, SeqCst);
                    return;
                }
            };
            let got = chunk_hash(&bytes);
            if got == *want {
                self.state[i].store(VERIFIED, SeqCst);
                self.verified.fetch_add(1, SeqCst);
                // Only now may a stream let the chunk's bytes leave.
                image.target.release(a, b);
                return;
            }
            // A forged block is in this chunk: forget all of its blocks so
            // that they are claimed again by the next copies and NACKed.
            let (first, end) = self.manifest.chunk_range(chunk);
            log::warn!("chunk {chunk} (blocks {first}..{end}) failed its hash: asking again");
            c.drop_packet(DropReason::BadChunk);
            self.written[i].store(0, SeqCst);
            image.written.remove_range(first, end);
            image.zeros.remove_range(first, end);
            self.rejected_blocks.fetch_add(end - first, SeqCst);
            self.rejected_bytes.fetch_add(b - a, SeqCst);
            // Out of a stream's window before the blocks can be claimed
            // again, so that only the right ones are there to release.
            image.target.discard(a, b);
            image.claimed.remove_range(first, end);
            self.state[i].store(OPEN, SeqCst);
        }
    }
}
