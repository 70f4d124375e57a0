//! Forward error correction with RaptorQ (RFC 6330, the `raptorq` crate).
//!
//! The image's blocks are cut into groups of `group_size` consecutive
//! blocks; each group is one RaptorQ source block whose symbols are the
//! blocks (the last block zero-padded to `block_size`). The sender adds
//! `fec_repair` repair symbols per group; a receiver that holds any
//! `k` (or very rarely `k + 1`, `k + 2`) of the group's data blocks and
//! repair symbols rebuilds the missing blocks without asking.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use raptorq::{
    EncodingPacket, ObjectTransmissionInformation, PayloadId, SourceBlockDecoder,
    SourceBlockEncoder,
};

use crate::proto::wire::Geometry;

/// Blocks `[first, end)` of group `group`.
pub fn group_blocks(g: &Geometry, group_size: u32, group: u64) -> (u64, u64) {
    let first = group * u64::from(group_size);
    (first, (first + u64::from(group_size)).min(g.block_count))
}

/// Number of groups of the image.
pub fn group_count(g: &Geometry, group_size: u32) -> u64 {
    g.block_count.div_ceil(u64::from(group_size))
}

fn config(g: &Geometry) -> ObjectTransmissionInformation {
    ObjectTransmissionInformation::new(0, g.block_size as u16, 0, 1, 1)
}

/// The group's bytes, padded to whole symbols, from `block(i)` for each block.
fn group_bytes<'a>(
    g: &Geometry,
    first: u64,
    end: u64,
    mut block: impl FnMut(u64) -> &'a [u8],
) -> Vec<u8> {
    let bs = g.block_size as usize;
    let mut data = vec![0u8; (end - first) as usize * bs];
    for (i, idx) in (first..end).enumerate() {
        let b = block(idx);
        data[i * bs..i * bs + b.len()].copy_from_slice(b);
    }
    data
}

/// `count` serialized repair packets (4-byte payload id + symbol) for
/// `group` of `image`, starting at repair symbol `first_repair`.
pub fn repair_symbols(
    g: &Geometry,
    group_size: u32,
    group: u64,
    image: &[u8],
    first_repair: u32,
    count: u32,
) -> Vec<Vec<u8>> {
    let (first, end) = group_blocks(g, group_size, group);
    let data = group_bytes(g, first, end, |i| {
        let o = g.offset(i) as usize;
        &image[o..o + g.block_len(i)]
    });
    SourceBlockEncoder::new2(0, &config(g), &data)
        .repair_packets(first_repair, count)
        .iter()
        .map(EncodingPacket::serialize)
        .collect()
}

/// Rebuild group `group` from the data blocks present (`present` gives the
/// bytes of a block the receiver holds, None for a missing one) and repair
/// packets. Returns the group's bytes (block i of the group at
/// `i * block_size`), or None if that is not enough yet.
pub fn decode(
    g: &Geometry,
    group_size: u32,
    group: u64,
    mut present: impl FnMut(u64) -> Option<Vec<u8>>,
    repair: &[Vec<u8>],
) -> Option<Vec<u8>> {
    let (first, end) = group_blocks(g, group_size, group);
    let bs = g.block_size as usize;
    let mut packets: Vec<EncodingPacket> =
        Vec::with_capacity((end - first) as usize + repair.len());
    for (esi, idx) in (first..end).enumerate() {
        if let Some(mut b) = present(idx) {
            b.resize(bs, 0);
            packets.push(EncodingPacket::new(PayloadId::new(0, esi as u32), b));
        }
    }
    packets.extend(
        repair
            .iter()
            .filter(|r| r.len() == 4 + bs)
            .map(|r| EncodingPacket::deserialize(r))
            .filter(|p| p.payload_id().source_block_number() == 0),
    );
    let len = (end - first) * u64::from(g.block_size);
    SourceBlockDecoder::new2(0, &config(g), len).decode(packets)
}

const SHARDS: usize = 16;

/// Bytes of repair symbols held at most across all groups. Symbols are
/// not authenticated when they arrive (an unsigned session, or a signed
/// one before their group verifies): without a cap, symbols one short of
/// decoding for every group would hold about the image's size in memory.
/// Past it new symbols are dropped (the blocks are asked for again).
pub const MAX_PENDING_BYTES: u64 = 256 << 20;

/// Repair symbols waiting for their group to become decodable. Sharded by
/// group so that workers on different groups do not contend.
#[derive(Debug, Default)]
pub struct Pending {
    shards: [Mutex<HashMap<u64, Vec<Vec<u8>>>>; SHARDS],
    /// Bytes of symbols held now, against [`MAX_PENDING_BYTES`].
    bytes: AtomicU64,
}

fn size(symbols: &[Vec<u8>]) -> u64 {
    symbols.iter().map(|s| s.len() as u64).sum()
}

impl Pending {
    fn shard(&self, group: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Vec<Vec<u8>>>> {
        self.shards[(group % SHARDS as u64) as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Take `symbols` out of the count (they leave the table).
    fn release(&self, symbols: &[Vec<u8>]) {
        // Relaxed: a budget, not a synchronisation point; the table itself
        // is under the shard lock.
        self.bytes.fetch_sub(size(symbols), Ordering::Relaxed);
    }

    /// Keep `symbol` for `group`; when `have` data blocks plus the kept
    /// symbols reach `needed`, hand all of the group's symbols to the caller
    /// (who decodes, and gives them back with `put_back` if that failed).
    /// A symbol past [`MAX_PENDING_BYTES`] is dropped.
    pub fn add(&self, group: u64, symbol: &[u8], have: u64, needed: u64) -> Option<Vec<Vec<u8>>> {
        let mut s = self.shard(group);
        let list = s.entry(group).or_default();
        if !list.iter().any(|x| x[..4] == symbol[..4]) {
            let n = symbol.len() as u64;
            if self.bytes.fetch_add(n, Ordering::Relaxed) + n > MAX_PENDING_BYTES {
                self.bytes.fetch_sub(n, Ordering::Relaxed);
            } else {
                list.push(symbol.to_vec());
            }
        }
        if have + list.len() as u64 >= needed {
            let taken = s.remove(&group);
            if let Some(t) = &taken {
                self.release(t);
            }
            taken
        } else {
            if list.is_empty() {
                s.remove(&group);
            }
            None
        }
    }

    /// Return symbols that did not decode yet (within the cap; the rest are
    /// dropped).
    pub fn put_back(&self, group: u64, symbols: Vec<Vec<u8>>) {
        let mut s = self.shard(group);
        let list = s.entry(group).or_default();
        for sym in symbols {
            let n = sym.len() as u64;
            if self.bytes.fetch_add(n, Ordering::Relaxed) + n > MAX_PENDING_BYTES {
                self.bytes.fetch_sub(n, Ordering::Relaxed);
                continue;
            }
            list.push(sym);
        }
    }

    /// Distinct symbols held for `group` (not enough to decode yet).
    pub fn held(&self, group: u64) -> u64 {
        self.shard(group).get(&group).map_or(0, |l| l.len() as u64)
    }

    /// Drop the symbols of a group that is complete.
    pub fn forget(&self, group: u64) {
        if let Some(t) = self.shard(group).remove(&group) {
            self.release(&t);
        }
    }

    /// Bytes of symbols held now.
    pub fn held_bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 253) as u8).collect()
    }

    #[test]
    fn rebuilds_lost_blocks_from_any_k() {
        let img = image(64 * 1400 + 700);
        let g = Geometry::new(img.len() as u64, 1400);
        let k = 16;
        for group in 0..group_count(&g, k) {
            let (first, end) = group_blocks(&g, k, group);
            let n = (end - first) as u32;
            let lost = n.min(4) as u64;
            let repair = repair_symbols(&g, k, group, &img, 0, 4);
            let got = decode(
                &g,
                k,
                group,
                |i| {
                    (i >= first + lost).then(|| {
                        let o = g.offset(i) as usize;
                        img[o..o + g.block_len(i)].to_vec()
                    })
                },
                &repair,
            )
            .expect("k of n symbols decode");
            for i in first..end {
                let o = g.offset(i) as usize;
                let at = ((i - first) * 1400) as usize;
                assert_eq!(&got[at..at + g.block_len(i)], &img[o..o + g.block_len(i)]);
            }
        }
    }

    #[test]
    fn too_few_symbols_do_not_decode() {
        let img = image(8 * 1400);
        let g = Geometry::new(img.len() as u64, 1400);
        let repair = repair_symbols(&g, 8, 0, &img, 0, 2);
        assert!(decode(&g, 8, 0, |i| (i >= 5).then(|| vec![0; 1400]), &repair).is_none());
    }

    #[test]
    fn pending_hands_over_once_enough() {
        let p = Pending::default();
        assert!(p.add(3, &[0, 0, 0, 1, 9], 5, 8).is_none());
        assert!(
            p.add(3, &[0, 0, 0, 1, 9], 5, 8).is_none(),
            "same symbol twice counts once"
        );
        assert!(p.add(3, &[0, 0, 0, 2, 9], 5, 8).is_none());
        assert_eq!(p.held(3), 2);
        let got = p.add(3, &[0, 0, 0, 3, 9], 5, 8).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(p.held_bytes(), 0);
        p.put_back(3, got);
        assert_eq!(p.held_bytes(), 15);
        p.forget(3);
        assert_eq!(p.held_bytes(), 0);
        assert!(p.add(3, &[0, 0, 0, 4, 9], 0, 8).is_none());
    }

    #[test]
    fn pending_symbols_are_capped() {
        let p = Pending::default();
        let sym = |g: u64| {
            let mut s = vec![0u8; 8 << 10];
            s[..4].copy_from_slice(&(g as u32).to_be_bytes());
            s
        };
        // Symbols one short of decoding for many groups: held up to the cap.
        let n = MAX_PENDING_BYTES / (8 << 10);
        for g in 0..n + 100 {
            assert!(p.add(g, &sym(g), 0, 2).is_none());
        }
        assert_eq!(p.held_bytes(), MAX_PENDING_BYTES);
        assert_eq!(p.held(n + 50), 0, "past the cap: dropped");
        p.forget(0);
        assert!(p.add(n + 50, &sym(n + 50), 0, 2).is_none());
        assert_eq!(p.held(n + 50), 1);
    }
}
