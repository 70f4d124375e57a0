//! What the sender learns from the image as it reads it: its SHA-256 and,
//! for a sparse image, the runs of all-zero blocks, which are announced
//! instead of sent (see [`crate::send::ahead`] for who reads when).
//!
//! The file's holes come from `lseek(SEEK_DATA/SEEK_HOLE)` where the
//! filesystem keeps them: a piece of the image inside a hole is hashed from
//! a buffer of zeros and never read. Every other piece is read through the
//! mapping. Block devices and filesystems without hole information are all
//! data to `SEEK_DATA`, so they are simply read.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::proto::wire::Geometry;
use crate::send::fill::Fill;

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

    /// The runs of `self` less the blocks in `other`'s runs.
    pub fn without(&self, other: &ZeroRuns) -> ZeroRuns {
        let mut out = ZeroRuns::default();
        for &(a, b) in &self.0 {
            for (c, d) in other.data_in(a, b) {
                out.push(c, d);
            }
        }
        out
    }

    /// Add `more`, whose runs lie between two of these (or before or after
    /// all) without overlapping any: they go in their place, touching runs
    /// merge.
    pub fn insert(&mut self, more: &ZeroRuns) {
        let (Some(&(first, _)), Some(&(_, end))) = (more.0.first(), more.0.last()) else {
            return;
        };
        let at = self.0.partition_point(|r| r.1 < first);
        let mut mid = ZeroRuns(
            self.0[at..]
                .iter()
                .take_while(|r| r.0 <= end)
                .copied()
                .collect(),
        );
        let taken = mid.0.len();
        let mut merged = ZeroRuns::default();
        mid.0.extend_from_slice(&more.0);
        mid.0.sort_unstable();
        for (a, b) in mid.0 {
            match merged.0.last_mut() {
                Some(l) if l.1 >= a => l.1 = l.1.max(b),
                _ => merged.0.push((a, b)),
            }
        }
        self.0.splice(at..at + taken, merged.0);
    }

    fn push(&mut self, first: u64, end: u64) {
        match self.0.last_mut() {
            Some(last) if last.1 == first => last.1 = end,
            _ => self.0.push((first, end)),
        }
    }
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

/// Where the image has data: the data segments of its file (everything,
/// for a block device or a filesystem that does not report holes). Asked
/// about pieces in increasing order.
#[derive(Debug, Clone)]
pub struct DataMap {
    segments: Vec<(u64, u64)>,
    at: usize,
    /// Standard input still being copied in: bytes are there to read once
    /// the copy has passed them.
    fill: Option<Arc<Fill>>,
}

impl DataMap {
    /// The data segments of the first `len` bytes of `file`.
    pub fn of(file: &File, len: u64) -> DataMap {
        DataMap {
            segments: data_segments(file, len),
            at: 0,
            fill: None,
        }
    }

    /// All `len` bytes data.
    pub fn all(len: u64) -> DataMap {
        DataMap {
            segments: vec![(0, len)],
            at: 0,
            fill: None,
        }
    }

    /// All `len` bytes data, readable as `fill` says (standard input
    /// copied into a spool while it is sent: no holes, whatever the spool
    /// file's look).
    pub fn filling(len: u64, fill: Arc<Fill>) -> DataMap {
        DataMap {
            fill: Some(fill),
            ..DataMap::all(len)
        }
    }

    /// Wait until the bytes before `end` can be read (at once but for
    /// standard input still being copied; if the copy failed, the sending
    /// loop ends the session, so the bytes read meanwhile do not matter).
    pub fn ready(&self, end: u64) {
        if let Some(f) = &self.fill {
            let _ = f.wait(end);
        }
    }

    /// The blocks of geometry `g` that lie wholly in holes: known to be
    /// zeros without reading a byte.
    pub fn holes(&self, g: &Geometry) -> ZeroRuns {
        let bs = u64::from(g.block_size);
        let mut runs = ZeroRuns::default();
        let mut at: u64 = 0;
        for &(start, end) in self
            .segments
            .iter()
            .chain([(g.total_size, g.total_size)].iter())
        {
            // The hole [at, start): its whole blocks (the image's last block
            // may end short of a block size, at the image's end).
            let first = at.div_ceil(bs);
            let last = if start >= g.total_size {
                g.block_count
            } else {
                start / bs
            };
            if first < last {
                runs.push(first, last);
            }
            at = end;
        }
        runs
    }

    /// Whether bytes `[start, end)` hold any data (once they can be read,
    /// see [`Self::ready`]); `start` never goes back from one call to the
    /// next.
    pub fn has_data(&mut self, start: u64, end: u64) -> bool {
        self.ready(end);
        while self.segments.get(self.at).is_some_and(|s| s.1 <= start) {
            self.at += 1;
        }
        self.segments.get(self.at).is_some_and(|s| s.0 < end)
    }
}

/// SHA-256 of `image`, its holes (per `data`) hashed from zeros without
/// reading them; and the bytes found in holes.
pub fn sha256(image: &[u8], mut data: DataMap) -> ([u8; 32], u64) {
    let zero_piece = vec![0u8; PIECE as usize];
    let mut hasher = Sha256::new();
    let mut holes = 0;
    let len = image.len() as u64;
    let mut p = 0;
    while p < len {
        let q = (p + PIECE).min(len);
        if data.has_data(p, q) {
            hasher.update(&image[p as usize..q as usize]);
        } else {
            hasher.update(&zero_piece[..(q - p) as usize]);
            holes += q - p;
        }
        p = q;
    }
    (hasher.finalize().into(), holes)
}

/// The all-zero blocks of `[first, end)` of `image` (geometry `g`): a
/// piece in a hole (per `data`) is all zeros without a read, every other
/// block is checked.
pub fn zero_runs_in(
    image: &[u8],
    g: &Geometry,
    first: u64,
    end: u64,
    data: &mut DataMap,
) -> ZeroRuns {
    let mut runs = ZeroRuns::default();
    let (p, q) = (g.offset(first), g.offset(first) + g.range_bytes(first, end));
    if !data.has_data(p, q) {
        runs.push(first, end);
        return runs;
    }
    for i in first..end {
        let o = g.offset(i) as usize;
        if is_zero(&image[o..o + g.block_len(i)]) {
            runs.push(i, i + 1);
        }
    }
    runs
}

/// Pieces of about [`PIECE`] bytes, whole blocks, in which [`zero_runs_in`]
/// looks for zeros when nothing else sets the pace.
pub fn piece_blocks(g: &Geometry) -> u64 {
    (PIECE / u64::from(g.block_size)).max(1)
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
        let data = DataMap::of(&f, len);
        let (digest, holes) = sha256(&image, data.clone());
        let want: [u8; 32] = Sha256::digest(&image).into();
        assert_eq!(digest, want);
        assert!(holes >= 5 << 20, "{holes} bytes of holes");
        // Found piece by piece, every block is zero exactly when it is in a run.
        let mut found = ZeroRuns::default();
        let mut scan = data;
        let step = piece_blocks(&g);
        for first in (0..g.block_count).step_by(step as usize) {
            let end = (first + step).min(g.block_count);
            found.insert(&zero_runs_in(&image, &g, first, end, &mut scan));
        }
        let zero = |i: u64| {
            let o = g.offset(i) as usize;
            image[o..o + g.block_len(i)].iter().all(|&b| b == 0)
        };
        let mut expect = ZeroRuns::default();
        for i in (0..g.block_count).filter(|&i| zero(i)) {
            expect.push(i, i + 1);
        }
        assert_eq!(found, expect);
        assert_eq!(found.runs().len(), 3);
        // The holes alone, known without a read, are among the runs.
        let holes = DataMap::of(&f, len).holes(&g);
        assert!(holes.blocks() * 1400 >= 5 << 20, "{holes:?}");
        assert_eq!(
            found.without(&holes).blocks() + holes.blocks(),
            found.blocks()
        );
        assert!(holes.without(&found).runs().is_empty());
        let zero_bytes: u64 = (0..g.block_count)
            .filter(|&i| zero(i))
            .map(|i| g.block_len(i) as u64)
            .sum();
        assert_eq!(found.bytes(&g), zero_bytes);
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn runs_found_later_go_in_their_place() {
        let mut z = ZeroRuns::new(vec![(0, 10), (50, 60), (100, 200)]);
        z.insert(&ZeroRuns::new(vec![(10, 12), (20, 30)]));
        assert_eq!(z.runs(), &[(0, 12), (20, 30), (50, 60), (100, 200)]);
        z.insert(&ZeroRuns::new(vec![(60, 70), (90, 100)]));
        assert_eq!(z.runs(), &[(0, 12), (20, 30), (50, 70), (90, 200)]);
        z.insert(&ZeroRuns::new(vec![(300, 301)]));
        z.insert(&ZeroRuns::default());
        assert_eq!(z.runs().last(), Some(&(300, 301)));
        assert_eq!(z.blocks(), 12 + 10 + 20 + 110 + 1);
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
