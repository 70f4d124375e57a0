//! The sender reads the image while it sends it, never before: the first
//! data packet leaves as soon as the first piece is read, whatever the
//! image's size.
//!
//! Two threads read the mapping beside the sending loop:
//! - the *scanner*, only when something must be known before a block is
//!   sent: in a signed session the hashes of its chunk (each page of
//!   [`LEAVES_PER_PAGE`] chunk hashes is signed as soon as its chunks are
//!   hashed, and goes out before their data), and with sparse sending the
//!   all-zero blocks (announced instead of sent) that are not in the file's
//!   holes (those are known from `lseek` alone and announced up front). It walks the image in
//!   pieces (a page's chunks, or about a MiB) and hands each piece's findings
//!   to the sending loop through a bounded channel, so it stays a few
//!   pieces ahead of the sending and what it read is still in the cache;
//! - the *hasher*, only when the image's SHA-256 is wanted (an unsigned
//!   session, or `send --sign --sha256`): which only the end of the first
//!   pass carries, so nothing waits for it before then. A signed session
//!   needs none: its chunk hashes authenticate every byte, and its ends
//!   carry the image's root (BLAKE3 of the chunk hashes) instead.

use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use memmap2::Mmap;

use crate::error::{Error, ErrorCode, Result};
use crate::proto::manifest::{Manifest, LEAVES_PER_PAGE};
use crate::proto::wire::Geometry;
use crate::send::zeros::{self, DataMap, ZeroRuns};

/// Pieces the scanner may be ahead of the sending loop.
const AHEAD: usize = 4;

/// What the scanner found in blocks `[.., end)`, after the previous piece.
#[derive(Debug)]
pub struct Piece {
    /// End of the piece (block index).
    pub end: u64,
    /// Its all-zero blocks (none when not looked for).
    pub zeros: ZeroRuns,
    /// Its page of chunk hashes (signed sessions): index and signed payload.
    pub page: Option<(u64, Vec<u8>)>,
}

/// What the hasher found.
#[derive(Debug, Clone, Copy)]
pub struct Digest {
    /// SHA-256 of the image.
    pub sha256: [u8; 32],
    /// Bytes found in holes (hashed from zeros, never read).
    pub hole_bytes: u64,
    /// Wall time from the sender's start until the hash was done.
    pub elapsed: Duration,
}

/// The threads reading the image ahead of the sending loop.
#[derive(Debug)]
pub struct Ahead {
    /// None when nothing must be known before a block is sent.
    pieces: Option<Receiver<Piece>>,
    scanner: Option<JoinHandle<Duration>>,
    /// None when the SHA-256 is not wanted.
    hasher: Option<JoinHandle<Digest>>,
    digest: Option<Digest>,
    /// Blocks behind the pieces taken so far.
    frontier: u64,
}

/// What the scanner must find.
pub struct Scan {
    /// Look for all-zero blocks.
    pub zeros: bool,
    /// Zero runs already known (the file's holes), not to be found again.
    pub known: ZeroRuns,
    /// Sign a page of chunk hashes per piece (the manifest and its key).
    pub sign: Option<(Manifest, SigningKey)>,
}

impl Ahead {
    /// Start reading `image` (geometry `g`, data where `data` says) for
    /// what `scan` asks, and for its SHA-256 if `sha256`.
    pub fn start(
        image: Arc<Mmap>,
        g: Geometry,
        data: DataMap,
        scan: Scan,
        sha256: bool,
    ) -> Result<Ahead> {
        let started = Instant::now();
        let spawn_err = |e: std::io::Error| {
            Error::new(
                ErrorCode::Internal,
                format!("start a thread to read the image: {e}"),
            )
        };
        let hasher = if sha256 {
            let (image, data) = (image.clone(), data.clone());
            let h = std::thread::Builder::new()
                .name("xdpcast-sha256".into())
                .spawn(move || {
                    let (sha256, hole_bytes) = zeros::sha256(&image, data);
                    Digest {
                        sha256,
                        hole_bytes,
                        elapsed: started.elapsed(),
                    }
                })
                .map_err(spawn_err)?;
            Some(h)
        } else {
            None
        };
        let (pieces, scanner) = if scan.zeros || scan.sign.is_some() {
            let (tx, rx) = mpsc::sync_channel(AHEAD);
            let handle = std::thread::Builder::new()
                .name("xdpcast-scan".into())
                .spawn(move || scanner(&image, g, data, scan, |p| tx.send(p).is_ok()))
                .map_err(spawn_err)?;
            (Some(rx), Some(handle))
        } else {
            (None, None)
        };
        Ok(Ahead {
            pieces,
            scanner,
            hasher,
            digest: None,
            frontier: 0,
        })
    }

    /// Wait until the scanner has read up to block `end` (at least); the
    /// pieces it finished meanwhile, in order. Nothing to wait for when it
    /// has nothing to find.
    pub fn until(&mut self, end: u64) -> Result<Vec<Piece>> {
        let mut out = Vec::new();
        let Some(rx) = &self.pieces else {
            return Ok(out);
        };
        while self.frontier < end {
            let p = rx
                .recv()
                .map_err(|_| Error::new(ErrorCode::Internal, "the image scanner stopped"))?;
            self.frontier = p.end;
            out.push(p);
        }
        Ok(out)
    }

    /// The SHA-256 of the image, waiting for the hasher if need be; None
    /// when it was not asked for.
    pub fn digest(&mut self) -> Result<Option<Digest>> {
        if let Some(h) = self.hasher.take() {
            let d = h
                .join()
                .map_err(|_| Error::new(ErrorCode::Internal, "the image hasher panicked"))?;
            self.digest = Some(d);
        }
        Ok(self.digest)
    }

    /// Time the scanner spent checking blocks for zeros (hashing
    /// excluded), once it has read the whole image.
    pub fn scan_time(&mut self) -> Duration {
        // Its channel is closed first, so a scanner still blocked on it
        // (a send that ended early) returns.
        self.pieces = None;
        self.scanner
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

/// The scanner's loop: piece after piece, until the end of the image or
/// until `emit` refuses one (the sending loop is gone). Returns the time
/// spent checking blocks for zeros.
fn scanner(
    image: &[u8],
    g: Geometry,
    mut data: DataMap,
    scan: Scan,
    mut emit: impl FnMut(Piece) -> bool,
) -> Duration {
    let step = match &scan.sign {
        Some((m, _)) => u64::from(m.chunk_blocks) * LEAVES_PER_PAGE as u64,
        None => zeros::piece_blocks(&g),
    };
    let mut scan_time = Duration::ZERO;
    let (mut first, mut index) = (0, 0);
    while first < g.block_count {
        let end = (first + step).min(g.block_count);
        let zeros = if scan.zeros {
            let t = Instant::now();
            let z = zeros::zero_runs_in(image, &g, first, end, &mut data);
            scan_time += t.elapsed();
            z.without(&scan.known)
        } else {
            ZeroRuns::default()
        };
        // Pages read the image whatever `zeros` found.
        data.ready(g.offset(first) + g.range_bytes(first, end));
        let page = scan
            .sign
            .as_ref()
            .map(|(m, key)| (index, m.page_of(key, index, image)));
        if !emit(Piece { end, zeros, page }) {
            break;
        }
        (first, index) = (end, index + 1);
    }
    scan_time
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_are_pages_in_a_signed_session_and_cover_the_image() {
        let g = Geometry::new(100 * 64 * 40 + 17, 64);
        let image: Vec<u8> = (0..g.total_size)
            .map(|i| {
                if (i / 64) % 7 == 0 {
                    0
                } else {
                    1 + (i % 250) as u8
                }
            })
            .collect();
        let key = SigningKey::from_bytes(&[3; 32]);
        let m = Manifest::new(1, g, 8);
        let all = DataMap::all(g.total_size);
        let mut pieces = Vec::new();
        let scan = Scan {
            zeros: true,
            known: ZeroRuns::default(),
            sign: Some((m, key.clone())),
        };
        scanner(&image, g, all, scan, |p| {
            pieces.push(p);
            true
        });
        assert_eq!(pieces.len() as u64, m.page_count());
        let mut runs = ZeroRuns::default();
        for (i, p) in pieces.iter().enumerate() {
            let (index, page) = p.page.as_ref().unwrap();
            assert_eq!(*index, i as u64);
            assert!(m.verify_page(&key.verifying_key(), i as u64, page).is_ok());
            runs.insert(&p.zeros);
        }
        assert_eq!(pieces.last().unwrap().end, g.block_count);
        let zero_blocks = (0..g.block_count).filter(|b| b % 7 == 0).count() as u64;
        assert_eq!(runs.blocks(), zero_blocks);
        // A sending loop that stops early stops the scanner.
        let mut n = 0;
        let scan = Scan {
            zeros: false,
            known: ZeroRuns::default(),
            sign: Some((m, key)),
        };
        scanner(&image, g, DataMap::all(g.total_size), scan, |_| {
            n += 1;
            n < 2
        });
        assert_eq!(n, 2);
    }
}
