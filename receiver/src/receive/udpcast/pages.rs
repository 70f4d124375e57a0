//! The image's bytes in order, written to the target in whole pages.
//!
//! A write that covers only part of a page the kernel does not hold makes
//! it read that page first (read-modify-write). udpcast blocks (1456 bytes
//! by default) straddle pages, so writing each block as it lands made the
//! kernel read every page of a block device from the disk before writing
//! it: as many bytes read as written. udp-receiver writes whole slices in
//! order, and so does this receiver now: complete slices are appended here
//! in order, whole pages go out at once, and what is left of a page waits
//! for the next slice or for [`Pages::flush`] at the end.

use std::io;

/// The page cache's unit (and the largest logical block size of a block
/// device).
pub(super) const PAGE: u64 = 4096;

/// Bytes appended in order, written in whole pages at page offsets.
#[derive(Debug, Default)]
pub(super) struct Pages {
    /// Offset of `held[0]` in the target.
    at: u64,
    /// Bytes from `at` not yet written: what is appended of a page not yet
    /// full (empty once a page boundary is reached).
    held: Vec<u8>,
}

impl Pages {
    /// Where the next appended bytes go.
    pub(super) fn end(&self) -> u64 {
        self.at + self.held.len() as u64
    }

    /// Append `data`, which lands at offset `at` (normally [`Pages::end`]):
    /// every page it completes is written with `write(offset, bytes)`,
    /// whole pages straight from `data`; the rest is held.
    pub(super) fn append(
        &mut self,
        at: u64,
        data: &[u8],
        write: &mut impl FnMut(u64, &[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        if at != self.end() {
            // Not where the last append ended (slices retire in order, so
            // this does not happen): write what is held and start there.
            self.flush(write)?;
            self.at = at;
        }
        // Up to the next page boundary: held with what is there already.
        let head = ((PAGE - self.end() % PAGE) % PAGE).min(data.len() as u64) as usize;
        self.held.extend_from_slice(&data[..head]);
        let data = &data[head..];
        if self.end() % PAGE == 0 {
            self.flush(write)?;
        }
        // Whole pages; the rest is held. (With bytes left, `end` is on a
        // page boundary and nothing is held.)
        let whole = data.len() - data.len() % PAGE as usize;
        if whole > 0 {
            write(self.at, &data[..whole])?;
            self.at += whole as u64;
        }
        self.held.extend_from_slice(&data[whole..]);
        Ok(())
    }

    /// Write what is held: at the end of the image, its last partial page.
    pub(super) fn flush(
        &mut self,
        write: &mut impl FnMut(u64, &[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        if !self.held.is_empty() {
            write(self.at, &self.held)?;
            self.at = self.end();
            self.held.clear();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slices of `sizes` bytes appended in order and flushed: the writes
    /// made, as (offset, length), and the bytes at their offsets.
    fn writes(sizes: &[usize]) -> (Vec<(u64, usize)>, Vec<u8>) {
        let total: usize = sizes.iter().sum();
        let image: Vec<u8> = (0..total).map(|i| (i * 7 + i / 4096) as u8).collect();
        let mut out = vec![0u8; total];
        let mut made = Vec::new();
        let mut write = |at: u64, b: &[u8]| {
            made.push((at, b.len()));
            out[at as usize..at as usize + b.len()].copy_from_slice(b);
            Ok(())
        };
        let mut p = Pages::default();
        let mut at = 0;
        for &n in sizes {
            p.append(at as u64, &image[at..at + n], &mut write).unwrap();
            at += n;
            assert_eq!(p.end(), at as u64);
        }
        p.flush(&mut write).unwrap();
        assert_eq!(out, image);
        (made, image)
    }

    #[test]
    fn only_whole_pages_are_written_until_the_last() {
        // udpcast slices: whole multiples of 1456-byte blocks, a short one
        // at the end; a single block; exact pages.
        for sizes in [
            &[112 * 1456, 112 * 1456, 37 * 1456 + 912][..],
            &[1456, 1456, 1456, 1456, 1456, 100],
            &[4096, 8192, 4096],
            &[10],
            &[4095, 1, 4097],
        ] {
            let (made, image) = writes(sizes);
            let (last, rest) = made.split_last().unwrap();
            for &(at, len) in rest {
                assert!(
                    at % PAGE == 0 && len as u64 % PAGE == 0,
                    "{sizes:?}: {made:?}"
                );
            }
            assert_eq!(last.0 % PAGE, 0, "{sizes:?}: {made:?}");
            assert_eq!(last.0 + last.1 as u64, image.len() as u64);
            // No more writes than two per slice (the page held over, then
            // the slice's whole pages), plus the flush.
            assert!(made.len() <= 2 * sizes.len() + 1, "{made:?}");
        }
    }

    #[test]
    fn an_append_elsewhere_writes_what_is_held_first() {
        let mut made = Vec::new();
        let mut write = |at: u64, b: &[u8]| {
            made.push((at, b.len()));
            Ok(())
        };
        let mut p = Pages::default();
        p.append(0, &[1; 100], &mut write).unwrap();
        p.append(8192, &[2; 4096], &mut write).unwrap();
        p.flush(&mut write).unwrap();
        assert_eq!(made, [(0, 100), (8192, 4096)]);
    }
}
