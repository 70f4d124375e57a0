//! The sender's one read of the image: its SHA-256 and, for a sparse
//! image, the runs of all-zero blocks, which are announced instead of sent.
//!
//! The file's holes come from `lseek(SEEK_DATA/SEEK_HOLE)` where the
//! filesystem keeps them: a piece of the image inside a hole is hashed from
//! a buffer of zeros and never read. Every other piece is read once through
//! the mapping; right after it is hashed (while it is still in the cache)
//! each of its blocks is checked for zeros. Block devices and filesystems
//! without hole information are all data to `SEEK_DATA`, so they are simply
//! scanned.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::proto::wire::Geometry;

/// Bytes hashed and scanned per step (about; steps are whole blocks).
const PIECE: u64 = 1 << 20;

/// Sorted, disjoint runs `[first, end)` of all-zero blocks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ZeroRuns(Vec<(u64, u64)>);

impl ZeroRuns {
    /// Runs from sorted, disjoint `[first, end)` pairs.
    pub fn new(runs: Vec<(u64, u64)>) -> ZeroRuns {
        ZeroRuns(runs)
    }

    /// The runs.
    pub fn runs(&self) -> &[(u64, u64)] {
        &self.0
    }

    /// Blocks in all runs.
    pub fn blocks(&self) -> u64 {
        self.0.iter().map(|(a, b)| b - a).sum()
    }

    /// Bytes in all runs (the last block of the image may be short).
    pub fn bytes(&self, g: &Geometry) -> u64 {
        self.0.iter().map(|&(a, b)| g.range_bytes(a, b)).sum()
    }

    /// Blocks of `[first, end)` in no run, as ranges, in order.
    pub fn data_in(&self, first: u64, end: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut at = first;
        let from = self.0.partition_point(|r| r.1 <= first);
        for &(a, b) in &self.0[from..] {
            if a >= end {
                break;
            }
            if a > at {
                out.push((at, a));
            }
            at = at.max(b);
        }
        if at < end {
            out.push((at, end));
        }
        out
    }

    /// The runs as `(first, count)` for the wire (runs longer than
    /// `u32::MAX` blocks cut in pieces).
    pub fn wire(&self) -> Vec<(u64, u32)> {
        self.0
            .iter()
            .flat_map(|&(a, b)| {
                (a..b)
                    .step_by(u32::MAX as usize)
                    .map(move |s| (s, (b - s).min(u64::from(u32::MAX)) as u32))
            })
            .collect()
    }

    fn push(&mut self, first: u64, end: u64) {
        match self.0.last_mut() {
            Some(last) if last.1 == first => last.1 = end,
            _ => self.0.push((first, end)),
        }
    }
}

/// What the read of the image found.
#[derive(Debug, Clone)]
pub struct Scan {
    /// SHA-256 of the whole image.
    pub digest: [u8; 32],
    /// Runs of all-zero blocks (empty when not looked for).
    pub zeros: ZeroRuns,
    /// Bytes found in holes (never read).
    pub hole_bytes: u64,
    /// Time spent checking blocks for zeros (hashing excluded): the cost of
    /// sparse sending on the sender.
    pub scan_time: Duration,
    /// Wall time of the whole read (hash and scan).
    pub elapsed: Duration,
}

/// The data segments `[start, end)` of the first `len` bytes of `file`
/// (everything, where the filesystem does not report holes).
fn data_segments(file: &File, len: u64) -> Vec<(u64, u64)> {
    let fd = file.as_raw_fd();
    let seek = |at: u64, whence: libc::c_int| {
        // SAFETY: plain syscall on an open descriptor; the mapping does not
        // depend on the file offset it moves.
        let r = unsafe { libc::lseek(fd, at as libc::off_t, whence) };
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(r as u64)
        }
    };
    let mut out = Vec::new();
    let mut at = 0;
    while at < len {
        let start = match seek(at, libc::SEEK_DATA) {
            Ok(s) => s,
            // No data after `at`: the rest is a hole.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => break,
            Err(_) => return vec![(0, len)],
        };
        if start >= len {
            break;
        }
        let end = seek(start, libc::SEEK_HOLE).unwrap_or(len).min(len);
        if end <= start {
            return vec![(0, len)];
        }
        out.push((start, end));
        at = end;
    }
    out
}

/// True when every byte of `b` is zero (the fold over each 256-byte slice
/// vectorizes; the first non-zero slice ends the scan).
fn is_zero(b: &[u8]) -> bool {
    b.chunks(256).all(|c| c.iter().fold(0, |a, &x| a | x) == 0)
}

/// Hash `image` (the mapping of `file`), and when `find_zeros`, find its
/// runs of all-zero blocks of geometry `g`.
pub fn scan(file: &File, image: &[u8], g: &Geometry, find_zeros: bool) -> Scan {
    let start = Instant::now();
    let len = image.len() as u64;
    let segments = if find_zeros {
        data_segments(file, len)
    } else {
        vec![(0, len)]
    };
    let bs = u64::from(g.block_size);
    let step = (PIECE / bs).max(1);
    let zero_piece = vec![0u8; (step * bs) as usize];
    let mut hasher = Sha256::new();
    let mut zeros = ZeroRuns::default();
    let mut hole_bytes = 0;
    let mut scan_time = Duration::ZERO;
    let mut seg = 0;
    let mut first = 0;
    while first < g.block_count {
        let end = (first + step).min(g.block_count);
        let (p, q) = (g.offset(first), g.offset(first) + g.range_bytes(first, end));
        while seg < segments.len() && segments[seg].1 <= p {
            seg += 1;
        }
        let has_data = segments.get(seg).is_some_and(|s| s.0 < q);
        if !has_data {
            hasher.update(&zero_piece[..(q - p) as usize]);
            hole_bytes += q - p;
            zeros.push(first, end);
        } else {
            let piece = &image[p as usize..q as usize];
            hasher.update(piece);
            if find_zeros {
                let t = Instant::now();
                for i in first..end {
                    let o = (g.offset(i) - p) as usize;
                    if is_zero(&piece[o..o + g.block_len(i)]) {
                        zeros.push(i, i + 1);
                    }
                }
                scan_time += t.elapsed();
            }
        }
        first = end;
    }
    Scan {
        digest: hasher.finalize().into(),
        zeros,
        hole_bytes,
        scan_time,
        elapsed: start.elapsed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    fn tmp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("xdpcast-zeros-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    fn noise(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8 | 1).collect()
    }

    #[test]
    fn holes_and_zero_data_become_runs_and_the_digest_is_the_image_s() {
        let p = tmp("sparse");
        let len = 8 << 20;
        let mut f = File::create(&p).unwrap();
        f.set_len(len).unwrap();
        // Data at 1 MiB (with zero bytes inside) and at the last byte; the
        // rest is a hole.
        let mut data = noise(1 << 20);
        data[100_000..300_000].fill(0);
        f.seek(SeekFrom::Start(1 << 20)).unwrap();
        f.write_all(&data).unwrap();
        f.seek(SeekFrom::Start(len - 1)).unwrap();
        f.write_all(&[9]).unwrap();
        drop(f);
        let image = std::fs::read(&p).unwrap();
        let f = File::open(&p).unwrap();
        let g = Geometry::new(len, 1400);
        let s = scan(&f, &image, &g, true);
        let want: [u8; 32] = Sha256::digest(&image).into();
        assert_eq!(s.digest, want);
        assert!(s.hole_bytes >= 5 << 20, "{} bytes of holes", s.hole_bytes);
        // Every block is zero exactly when it is in a run.
        let zero = |i: u64| {
            let o = g.offset(i) as usize;
            image[o..o + g.block_len(i)].iter().all(|&b| b == 0)
        };
        let mut expect = ZeroRuns::default();
        for i in (0..g.block_count).filter(|&i| zero(i)) {
            expect.push(i, i + 1);
        }
        assert_eq!(s.zeros, expect);
        assert_eq!(s.zeros.runs().len(), 3);
        let zero_bytes: u64 = (0..g.block_count)
            .filter(|&i| zero(i))
            .map(|i| g.block_len(i) as u64)
            .sum();
        assert_eq!(s.zeros.bytes(&g), zero_bytes);
        let off = scan(&f, &image, &g, false);
        assert_eq!(off.digest, want);
        assert!(off.zeros.runs().is_empty());
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn data_ranges_skip_the_runs() {
        let z = ZeroRuns::new(vec![(2, 5), (8, 9), (20, 30)]);
        assert_eq!(z.data_in(0, 40), vec![(0, 2), (5, 8), (9, 20), (30, 40)]);
        assert_eq!(z.data_in(3, 9), vec![(5, 8)]);
        assert_eq!(z.data_in(21, 25), vec![]);
        assert_eq!(z.data_in(9, 10), vec![(9, 10)]);
        assert_eq!(z.blocks(), 14);
        let g = Geometry::new(30 * 100 - 50, 100);
        assert_eq!(z.bytes(&g), 14 * 100 - 50);
        let long = ZeroRuns::new(vec![(1, 1 + u64::from(u32::MAX) + 5)]);
        assert_eq!(
            long.wire(),
            vec![(1, u32::MAX), (1 + u64::from(u32::MAX), 5)]
        );
    }
}
