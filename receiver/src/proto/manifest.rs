//! Signed sessions: the manifest a sender signs with its Ed25519 key, the
//! BLAKE3 Merkle tree over fixed-size chunks of the image, and the signed
//! end-of-pass packet. Pure encoding, hashing and verification, no I/O
//! (key files are in [`crate::store::keys`]).
//!
//! On the wire (docs/protocol.md, "Signed sessions"):
//! - Kind 6 (`Manifest`), sub-type 0, the *head*: every session parameter a
//!   receiver acts on (geometry, SHA-256 of the image, passes, repair
//!   address, FEC parameters, the sender's source address, chunk size, the
//!   Merkle root of the chunk hashes, the zero-run extension hash), the
//!   signer's public key and an Ed25519 signature. One packet, verifiable
//!   on its own.
//! - Kind 6, sub-type 1, a *page*: up to [`LEAVES_PER_PAGE`] chunk hashes
//!   and the Merkle path from the page to the root. Each page is checked
//!   on its own against the signed root, so a forged page is dropped and
//!   cannot poison the real ones.
//! - Kind 7 (`SignedEnd`): end of a pass or repair round (pass, flags),
//!   signed, bound to the manifest by its id.

use std::net::Ipv6Addr;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::proto::wire::{be_u16, be_u32, be_u64, Geometry, DIGEST_LEN};

/// Bytes of an Ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Bytes of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Bytes of a BLAKE3 hash.
pub const HASH_LEN: usize = 32;
/// Chunk hashes per page packet.
pub const LEAVES_PER_PAGE: usize = 16;
/// Deepest Merkle tree accepted (2^16 pages of 16 chunks).
pub const MAX_DEPTH: usize = 16;
/// Fewest blocks per chunk.
pub const MIN_CHUNK_BLOCKS: u32 = 256;
/// A chunk's byte length is a multiple of this (a page, and the logical
/// block size of any disk): a receiver stages each chunk as one unit of
/// its staging buffer, hashes it there and writes it whole, so chunk
/// edges must not split a page (docs/architecture.md, "Signed chunks").
pub const CHUNK_ALIGN: u64 = 4096;
/// The sender picks the chunk size so an image has at most this many chunks.
pub const TARGET_CHUNKS: u64 = 1 << 16;
/// Sub-type byte of a manifest head.
pub const SUB_HEAD: u8 = 0;
/// Sub-type byte of a manifest page.
pub const SUB_PAGE: u8 = 1;
/// Length of the signed body of a head (everything before key and signature).
pub const BODY_LEN: usize =
    4 + 4 + 4 + 8 + 8 + DIGEST_LEN + 4 + 4 + 16 + 2 + 2 + 4 + 16 + 4 + 8 + 2 * HASH_LEN;
/// Payload of a head packet: body, public key, signature.
pub const HEAD_LEN: usize = BODY_LEN + PUBLIC_KEY_LEN + SIGNATURE_LEN;
/// Payload of a signed end packet: pass, flags, signature.
pub const SIGNED_END_LEN: usize = 4 + 4 + SIGNATURE_LEN;
/// Fixed part of a page payload: sub-type, depth, leaf count (u16).
const PAGE_PREFIX: usize = 4;
/// Largest page payload.
pub const MAX_PAGE_LEN: usize = PAGE_PREFIX + (LEAVES_PER_PAGE + MAX_DEPTH) * HASH_LEN;

const HEAD_CONTEXT: &[u8] = b"xdpcast manifest v1";
const END_CONTEXT: &[u8] = b"xdpcast signed end v1";
const PAGE_CONTEXT: &str = "xdpcast 2026 manifest page v1";
const NODE_CONTEXT: &str = "xdpcast 2026 manifest node v1";

/// Why a manifest packet was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Wrong length or sub-type, or fields out of range.
    #[error("malformed manifest packet")]
    Malformed,
    /// The signer's key is not one of the trusted keys.
    #[error("manifest signed by an untrusted key")]
    UntrustedKey,
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// A page whose Merkle path does not lead to the signed root.
    #[error("manifest page does not match the signed root")]
    BadPage,
}

/// Everything a signed session fixes. Encoded big-endian in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Manifest {
    /// Session id.
    pub session: u32,
    /// Image geometry.
    pub geometry: Geometry,
    /// SHA-256 of the whole image (reported, and compared with `--expect-sha256`).
    pub digest: [u8; DIGEST_LEN],
    /// Full passes the sender makes.
    pub passes: u32,
    /// `wire::FLAG_REPAIR` when the sender takes NACKs.
    pub flags: u32,
    /// Address taking NACKs (IPv4-mapped for IPv4).
    pub repair_addr: Ipv6Addr,
    /// Port taking NACKs.
    pub repair_port: u16,
    /// RaptorQ repair symbols per FEC group (0: no FEC).
    pub fec_repair: u16,
    /// Blocks per FEC group (0 without FEC).
    pub fec_group: u32,
    /// Source address of the sender's data (IPv4-mapped for IPv4;
    /// unspecified: not known, no filtering by it).
    pub source: Ipv6Addr,
    /// Blocks per verified chunk (the last chunk may be shorter).
    pub chunk_blocks: u32,
    /// Seconds since 1970 when the manifest was signed (replay evidence).
    pub issued_at: u64,
    /// Merkle root over the pages of chunk hashes.
    pub root: [u8; HASH_LEN],
    /// SHA-256 of the list of zero runs the sender announces instead of
    /// sending: the payloads of its zero-run packets (kind 11) in order;
    /// all zero: no such list. Receivers check the blocks they zero like
    /// data, through the signed chunk hashes, so a forged run fails its
    /// chunk and is asked for again.
    pub zero_runs: [u8; HASH_LEN],
}

/// Blocks per chunk for an image of `block_count` blocks of `block_size`
/// bytes: a power of two, at least [`MIN_CHUNK_BLOCKS`], enough for the
/// chunk's bytes to be a multiple of [`CHUNK_ALIGN`], and at most
/// [`TARGET_CHUNKS`] chunks. Every chunk but the last then starts and ends
/// on a page boundary (1400-byte blocks: 512 blocks, 700 KiB).
pub fn chunk_blocks_for(block_count: u64, block_size: u32) -> u32 {
    // 2^k blocks of block_size bytes are a multiple of 4096 = 2^12 once
    // k + trailing_zeros(block_size) >= 12.
    let align = CHUNK_ALIGN >> block_size.max(1).trailing_zeros().min(12);
    let need = block_count
        .div_ceil(TARGET_CHUNKS)
        .max(u64::from(MIN_CHUNK_BLOCKS))
        .max(align);
    need.next_power_of_two().min(1 << 30) as u32
}

impl Manifest {
    /// Number of chunks.
    pub fn chunk_count(&self) -> u64 {
        self.geometry
            .block_count
            .div_ceil(u64::from(self.chunk_blocks))
    }

    /// Blocks `[first, end)` of chunk `c`.
    pub fn chunk_range(&self, c: u64) -> (u64, u64) {
        let first = c * u64::from(self.chunk_blocks);
        (
            first,
            (first + u64::from(self.chunk_blocks)).min(self.geometry.block_count),
        )
    }

    /// Byte range `[start, end)` of chunk `c` in the image.
    pub fn chunk_bytes(&self, c: u64) -> (u64, u64) {
        let (first, end) = self.chunk_range(c);
        (
            self.geometry.offset(first),
            self.geometry.offset(end).min(self.geometry.total_size),
        )
    }

    /// Number of page packets.
    pub fn page_count(&self) -> u64 {
        self.chunk_count().div_ceil(LEAVES_PER_PAGE as u64)
    }

    /// Depth of the Merkle tree over the pages.
    pub fn depth(&self) -> usize {
        depth_for(self.page_count())
    }

    fn body(&self) -> [u8; BODY_LEN] {
        let mut b = [0u8; BODY_LEN];
        let mut w = Put(&mut b, 0);
        w.put(b"XDPM");
        w.put(&self.session.to_be_bytes());
        w.put(&self.geometry.block_size.to_be_bytes());
        w.put(&self.geometry.block_count.to_be_bytes());
        w.put(&self.geometry.total_size.to_be_bytes());
        w.put(&self.digest);
        w.put(&self.passes.to_be_bytes());
        w.put(&self.flags.to_be_bytes());
        w.put(&self.repair_addr.octets());
        w.put(&self.repair_port.to_be_bytes());
        w.put(&self.fec_repair.to_be_bytes());
        w.put(&self.fec_group.to_be_bytes());
        w.put(&self.source.octets());
        w.put(&self.chunk_blocks.to_be_bytes());
        w.put(&self.issued_at.to_be_bytes());
        w.put(&self.root);
        w.put(&self.zero_runs);
        debug_assert_eq!(w.1, BODY_LEN);
        b
    }

    fn from_body(b: &[u8]) -> Result<Manifest, ManifestError> {
        if b.len() != BODY_LEN || &b[..4] != b"XDPM" {
            return Err(ManifestError::Malformed);
        }
        let arr = |at: usize| -> [u8; 32] { b[at..at + 32].try_into().expect("32 bytes") };
        let addr = |at: usize| -> Ipv6Addr {
            let o: [u8; 16] = b[at..at + 16].try_into().expect("16 bytes");
            o.into()
        };
        let m = Manifest {
            session: be_u32(b, 4),
            geometry: Geometry {
                block_size: be_u32(b, 8),
                block_count: be_u64(b, 12),
                total_size: be_u64(b, 20),
            },
            digest: arr(28),
            passes: be_u32(b, 60),
            flags: be_u32(b, 64),
            repair_addr: addr(68),
            repair_port: be_u16(b, 84),
            fec_repair: be_u16(b, 86),
            fec_group: be_u32(b, 88),
            source: addr(92),
            chunk_blocks: be_u32(b, 108),
            issued_at: be_u64(b, 112),
            root: arr(120),
            zero_runs: arr(152),
        };
        let sane = m.geometry.is_consistent()
            && m.passes > 0
            && m.fec_group <= crate::proto::wire::MAX_FEC_GROUP
            && m.chunk_blocks > 0
            && depth_for(m.page_count()) <= MAX_DEPTH;
        if !sane {
            return Err(ManifestError::Malformed);
        }
        Ok(m)
    }

    /// The manifest's id: BLAKE3 of its signed body. Signed end packets
    /// name it, so they cannot be moved to another session.
    pub fn id(&self) -> [u8; HASH_LEN] {
        *blake3::hash(&self.body()).as_bytes()
    }

    /// The payload of a head packet, signed with `key`.
    pub fn sign(&self, key: &SigningKey) -> Vec<u8> {
        let body = self.body();
        let sig = key.sign(&[HEAD_CONTEXT, &body[..]].concat());
        let mut out = Vec::with_capacity(1 + HEAD_LEN);
        out.push(SUB_HEAD);
        out.extend_from_slice(&body);
        out.extend_from_slice(key.verifying_key().as_bytes());
        out.extend_from_slice(&sig.to_bytes());
        out
    }

    /// Check a head payload: well formed, signed by one of `trusted`.
    /// Returns the manifest and the key that signed it.
    pub fn verify(
        payload: &[u8],
        trusted: &[VerifyingKey],
    ) -> Result<(Manifest, VerifyingKey), ManifestError> {
        if payload.len() != 1 + HEAD_LEN || payload[0] != SUB_HEAD {
            return Err(ManifestError::Malformed);
        }
        let body = &payload[1..1 + BODY_LEN];
        let key_bytes = &payload[1 + BODY_LEN..1 + BODY_LEN + PUBLIC_KEY_LEN];
        let key = trusted
            .iter()
            .find(|k| k.as_bytes()[..] == *key_bytes)
            .ok_or(ManifestError::UntrustedKey)?;
        let sig = Signature::from_slice(&payload[1 + BODY_LEN + PUBLIC_KEY_LEN..])
            .map_err(|_| ManifestError::Malformed)?;
        key.verify_strict(&[HEAD_CONTEXT, body].concat(), &sig)
            .map_err(|_| ManifestError::BadSignature)?;
        Ok((Manifest::from_body(body)?, *key))
    }

    fn end_message(&self, pass: u32, flags: u32) -> Vec<u8> {
        [
            END_CONTEXT,
            &self.id(),
            &pass.to_be_bytes(),
            &flags.to_be_bytes(),
        ]
        .concat()
    }

    /// The payload of a signed end packet for `pass` with `flags`.
    pub fn sign_end(&self, key: &SigningKey, pass: u32, flags: u32) -> Vec<u8> {
        let sig = key.sign(&self.end_message(pass, flags));
        [
            &pass.to_be_bytes()[..],
            &flags.to_be_bytes(),
            &sig.to_bytes(),
        ]
        .concat()
    }

    /// Check a signed end payload from the signer `key`: (pass, flags).
    pub fn verify_end(
        &self,
        key: &VerifyingKey,
        payload: &[u8],
    ) -> Result<(u32, u32), ManifestError> {
        if payload.len() != SIGNED_END_LEN {
            return Err(ManifestError::Malformed);
        }
        let (pass, flags) = (be_u32(payload, 0), be_u32(payload, 4));
        let sig = Signature::from_slice(&payload[8..]).map_err(|_| ManifestError::Malformed)?;
        key.verify_strict(&self.end_message(pass, flags), &sig)
            .map_err(|_| ManifestError::BadSignature)?;
        Ok((pass, flags))
    }

    /// Check a page payload for page `index` against the signed root;
    /// returns its chunk hashes (chunks `index * LEAVES_PER_PAGE ..`).
    pub fn verify_page(
        &self,
        index: u64,
        payload: &[u8],
    ) -> Result<Vec<[u8; HASH_LEN]>, ManifestError> {
        if payload.len() < PAGE_PREFIX || payload[0] != SUB_PAGE || index >= self.page_count() {
            return Err(ManifestError::Malformed);
        }
        let depth = usize::from(payload[1]);
        let n = usize::from(be_u16(payload, 2));
        let want_n = (self.chunk_count() - index * LEAVES_PER_PAGE as u64)
            .min(LEAVES_PER_PAGE as u64) as usize;
        if depth != self.depth()
            || n != want_n
            || payload.len() != PAGE_PREFIX + (n + depth) * HASH_LEN
        {
            return Err(ManifestError::Malformed);
        }
        let leaves = &payload[PAGE_PREFIX..PAGE_PREFIX + n * HASH_LEN];
        let mut node = page_hash(index, leaves);
        let mut at = index;
        for s in payload[PAGE_PREFIX + n * HASH_LEN..].chunks_exact(HASH_LEN) {
            let sib: [u8; HASH_LEN] = s.try_into().expect("hash");
            node = if at & 1 == 0 {
                node_hash(&node, &sib)
            } else {
                node_hash(&sib, &node)
            };
            at >>= 1;
        }
        if node != self.root {
            return Err(ManifestError::BadPage);
        }
        Ok(leaves
            .chunks_exact(HASH_LEN)
            .map(|l| l.try_into().expect("hash"))
            .collect())
    }
}

/// Depth of a binary tree with `pages` leaves.
fn depth_for(pages: u64) -> usize {
    pages.max(1).next_power_of_two().trailing_zeros() as usize
}

fn page_hash(index: u64, leaves: &[u8]) -> [u8; HASH_LEN] {
    let mut h = blake3::Hasher::new_derive_key(PAGE_CONTEXT);
    h.update(&index.to_be_bytes());
    h.update(leaves);
    *h.finalize().as_bytes()
}

fn node_hash(l: &[u8; HASH_LEN], r: &[u8; HASH_LEN]) -> [u8; HASH_LEN] {
    let mut h = blake3::Hasher::new_derive_key(NODE_CONTEXT);
    h.update(l);
    h.update(r);
    *h.finalize().as_bytes()
}

/// BLAKE3 of one chunk's bytes (a leaf of the tree).
pub fn chunk_hash(bytes: &[u8]) -> [u8; HASH_LEN] {
    *blake3::hash(bytes).as_bytes()
}

/// The sender's side of the tree: every level, to cut page packets from.
#[derive(Debug, Clone)]
pub struct ChunkTree {
    leaves: Vec<[u8; HASH_LEN]>,
    /// levels[0]: page hashes padded to a power of two; last: the root.
    levels: Vec<Vec<[u8; HASH_LEN]>>,
}

impl ChunkTree {
    /// The tree over the chunks of `image` (`chunk_bytes` each, the last shorter).
    pub fn build(image: &[u8], chunk_bytes: usize) -> ChunkTree {
        let leaves: Vec<[u8; HASH_LEN]> = image.chunks(chunk_bytes).map(chunk_hash).collect();
        let pages = leaves.len().div_ceil(LEAVES_PER_PAGE) as u64;
        let width = 1usize << depth_for(pages);
        let mut level: Vec<[u8; HASH_LEN]> = leaves
            .chunks(LEAVES_PER_PAGE)
            .enumerate()
            .map(|(i, p)| page_hash(i as u64, p.as_flattened()))
            .collect();
        level.resize(width, [0; HASH_LEN]);
        let mut levels = vec![level];
        while levels.last().is_some_and(|l| l.len() > 1) {
            let next = levels
                .last()
                .expect("a level")
                .chunks_exact(2)
                .map(|p| node_hash(&p[0], &p[1]))
                .collect();
            levels.push(next);
        }
        ChunkTree { leaves, levels }
    }

    /// The Merkle root.
    pub fn root(&self) -> [u8; HASH_LEN] {
        self.levels.last().expect("a level")[0]
    }

    /// Number of page packets.
    pub fn page_count(&self) -> u64 {
        self.leaves.len().div_ceil(LEAVES_PER_PAGE) as u64
    }

    /// The payload of page `index`: its chunk hashes and Merkle path.
    pub fn page(&self, index: u64) -> Vec<u8> {
        let i = index as usize;
        let leaves =
            &self.leaves[i * LEAVES_PER_PAGE..((i + 1) * LEAVES_PER_PAGE).min(self.leaves.len())];
        let depth = self.levels.len() - 1;
        let mut out = Vec::with_capacity(PAGE_PREFIX + (leaves.len() + depth) * HASH_LEN);
        out.extend_from_slice(&[SUB_PAGE, depth as u8]);
        out.extend_from_slice(&(leaves.len() as u16).to_be_bytes());
        out.extend_from_slice(leaves.as_flattened());
        let mut at = i;
        for level in &self.levels[..depth] {
            out.extend_from_slice(&level[at ^ 1]);
            at >>= 1;
        }
        out
    }
}

struct Put<'a>(&'a mut [u8], usize);

impl Put<'_> {
    fn put(&mut self, b: &[u8]) {
        self.0[self.1..self.1 + b.len()].copy_from_slice(b);
        self.1 += b.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn image(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 253) as u8).collect()
    }

    fn manifest_of(img: &[u8], block_size: u32, chunk_blocks: u32) -> (Manifest, ChunkTree) {
        let geometry = Geometry::new(img.len() as u64, block_size);
        let tree = ChunkTree::build(img, (chunk_blocks * block_size) as usize);
        let m = Manifest {
            session: 77,
            geometry,
            digest: [3; 32],
            passes: 1,
            flags: 2,
            repair_addr: std::net::Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped(),
            repair_port: 4000,
            fec_repair: 0,
            fec_group: 0,
            source: std::net::Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped(),
            chunk_blocks,
            issued_at: 1_800_000_000,
            root: tree.root(),
            zero_runs: [0; 32],
        };
        (m, tree)
    }

    #[test]
    fn head_round_trip_and_forgeries() {
        let (m, _) = manifest_of(&image(100_000), 1000, 4);
        let k = key(1);
        let head = m.sign(&k);
        assert_eq!(head.len(), 1 + HEAD_LEN);
        let trusted = [k.verifying_key()];
        assert_eq!(Manifest::verify(&head, &trusted), Ok((m, trusted[0])));
        // Another key, even with the real parameters, is not trusted.
        assert_eq!(
            Manifest::verify(&m.sign(&key(2)), &trusted),
            Err(ManifestError::UntrustedKey)
        );
        // Any changed bit of the body breaks the signature.
        for at in [1, 10, 40, 100, BODY_LEN] {
            let mut f = head.clone();
            f[at] ^= 1;
            assert_eq!(
                Manifest::verify(&f, &trusted),
                Err(ManifestError::BadSignature),
                "{at}"
            );
        }
        assert_eq!(
            Manifest::verify(&head[..head.len() - 1], &trusted),
            Err(ManifestError::Malformed)
        );
    }

    #[test]
    fn pages_verify_against_the_root_for_many_sizes() {
        for chunks in [1usize, 2, 15, 16, 17, 33, 100, 257] {
            let img = image(chunks * 256 - 7);
            let (m, tree) = manifest_of(&img, 64, 4);
            assert_eq!(m.chunk_count(), chunks as u64);
            assert_eq!(tree.page_count(), m.page_count());
            let mut all = Vec::new();
            for p in 0..m.page_count() {
                let page = tree.page(p);
                assert!(page.len() <= MAX_PAGE_LEN);
                all.extend(m.verify_page(p, &page).unwrap());
                // A page moved to another index or altered is refused.
                if m.page_count() > 1 {
                    let other = (p + 1) % m.page_count();
                    assert!(m.verify_page(other, &page).is_err());
                }
                let mut bad = page.clone();
                bad[PAGE_PREFIX] ^= 1;
                assert_eq!(m.verify_page(p, &bad), Err(ManifestError::BadPage));
            }
            for (c, h) in all.iter().enumerate() {
                let (a, b) = m.chunk_bytes(c as u64);
                assert_eq!(*h, chunk_hash(&img[a as usize..b as usize]), "chunk {c}");
            }
        }
    }

    #[test]
    fn signed_end_is_bound_to_the_manifest() {
        let (m, _) = manifest_of(&image(10_000), 1000, 4);
        let k = key(1);
        let end = m.sign_end(&k, 3, 1);
        assert_eq!(m.verify_end(&k.verifying_key(), &end), Ok((3, 1)));
        let mut other = m;
        other.session = 78;
        assert_eq!(
            other.verify_end(&k.verifying_key(), &end),
            Err(ManifestError::BadSignature)
        );
        let mut f = end.clone();
        f[7] ^= 1;
        assert_eq!(
            m.verify_end(&k.verifying_key(), &f),
            Err(ManifestError::BadSignature)
        );
    }

    #[test]
    fn chunk_size_keeps_the_tree_small_and_chunks_page_aligned() {
        assert_eq!(chunk_blocks_for(10, 4096), MIN_CHUNK_BLOCKS);
        assert_eq!(chunk_blocks_for(10, 1400), 512);
        assert_eq!(chunk_blocks_for(10, 1456), 256);
        assert_eq!(chunk_blocks_for(10, 1401), 4096);
        let huge = 1u64 << 40; // 1 TiB of 1-byte blocks
        let c = chunk_blocks_for(huge, 1);
        assert!(huge.div_ceil(u64::from(c)) <= TARGET_CHUNKS);
        for bs in [1u32, 64, 512, 1000, 1400, 1472, 8192, 8972, 65_000] {
            for count in [1u64, 1000, 3_000_000, 1 << 34] {
                let c = chunk_blocks_for(count, bs);
                assert!(c.is_power_of_two() && c >= MIN_CHUNK_BLOCKS);
                assert_eq!(
                    u64::from(c) * u64::from(bs) % CHUNK_ALIGN,
                    0,
                    "{bs} {count}"
                );
            }
        }
    }
}
