//! Signed sessions: the manifest a sender signs with its Ed25519 key, the
//! pages of BLAKE3 chunk hashes it signs one by one as it reads the image,
//! and the signed end-of-pass packet that carries the image's SHA-256. Pure
//! encoding, hashing and verification, no I/O (key files are in
//! [`crate::store::keys`]).
//!
//! The sender makes no pass over the image before its first packet: it
//! signs the head before it has read a byte, hashes the image as it sends
//! it, and signs each page of chunk hashes as soon as its chunks are hashed,
//! before it sends their data. On the wire (docs/protocol.md, "Signed
//! sessions"):
//! - Kind 6 (`Manifest`), sub-type 0, the *head*: every session parameter a
//!   receiver acts on (geometry, passes, repair address, FEC parameters, the
//!   sender's source address, chunk size, the zero-run list hash), the SHA-256
//!   of the image when the sender knows it up front (else all zero: it comes
//!   in the signed end), the signer's public key and an Ed25519 signature.
//!   One packet, verifiable on its own.
//! - Kind 6, sub-type 1, a *page*: up to [`LEAVES_PER_PAGE`] chunk hashes,
//!   signed on their own, bound to the head by its id and to their place by
//!   the page index. A forged page is dropped and cannot poison the real ones.
//! - Kind 7 (`SignedEnd`): end of a pass or repair round (pass, flags, once
//!   the sender has read the whole image its SHA-256, or with
//!   [`FLAG_ROOT`] its root: BLAKE3 of its chunk hashes, [`Manifest::root`]),
//!   signed, bound to the manifest by its id.
//! - Kind 11 (`Zeros`): each zero-run packet carries a signature after its
//!   runs, bound to the manifest by its id and to the packet's place in the
//!   list; a receiver applies no run before it verifies.

use std::net::Ipv6Addr;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::proto::wire::{
    be_u16, be_u32, be_u64, Geometry, DIGEST_LEN, FLAG_ROOT, PAGE_PREFIX_LEN as PAGE_PREFIX,
    REPORT_NAME_LEN, VERDICT_LEN,
};
// The signed packets' sizes live with the wire format's other sizes (the
// parser bounds manifest and signed-end payloads by them): imports run one
// way, manifest -> wire.
pub use crate::proto::wire::{
    BODY_LEN, HASH_LEN, HEAD_LEN, LEAVES_PER_PAGE, MAX_PAGE_LEN, MAX_URL_BYTES, PUBLIC_KEY_LEN,
    SIGNATURE_LEN, SIGNED_END_LEN,
};

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
/// Most pages a manifest may have (and so most chunks, with
/// [`LEAVES_PER_PAGE`] each): bounds what a receiver allocates per head.
pub const MAX_PAGES: u64 = 1 << 16;

const HEAD_CONTEXT: &[u8] = b"xdpcast manifest v2";
const END_CONTEXT: &[u8] = b"xdpcast signed end v2";
const PAGE_CONTEXT: &[u8] = b"xdpcast manifest page v2";
const VERDICT_CONTEXT: &[u8] = b"xdpcast verdict v2";
const ZEROS_CONTEXT: &[u8] = b"xdpcast zero runs v2";
const ROOT_CONTEXT: &[u8] = b"xdpcast image root v1";

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
}

/// Everything a signed session fixes. Encoded big-endian in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Manifest {
    /// Session id.
    pub session: u32,
    /// Image geometry.
    pub geometry: Geometry,
    /// SHA-256 of the whole image when the sender knew it before it
    /// signed the head; all zero when it comes in the signed ends (a
    /// sender that hashes as it sends). Reported, and compared with
    /// `--expect-sha256`.
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
    /// Reserved for a hash of the zero-run list; senders write all zero
    /// (they find the runs while they read the image, after the head is
    /// signed) and receivers ignore it: each zero-run packet (kind 11)
    /// carries a signature of its own instead ([`Manifest::sign_zeros`]).
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
    /// The manifest of session `session` for an image of geometry `g` in
    /// chunks of `chunk_blocks` blocks, the rest at its plainest: one pass,
    /// no repair address or FEC, no source, digest, date or zero-run list.
    /// Senders and tests set what they have with struct update syntax.
    pub fn new(session: u32, geometry: Geometry, chunk_blocks: u32) -> Manifest {
        Manifest {
            session,
            geometry,
            digest: [0; DIGEST_LEN],
            passes: 1,
            flags: 0,
            repair_addr: Ipv6Addr::UNSPECIFIED,
            repair_port: 0,
            fec_repair: 0,
            fec_group: 0,
            source: Ipv6Addr::UNSPECIFIED,
            chunk_blocks,
            issued_at: 0,
            zero_runs: [0; HASH_LEN],
        }
    }

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
            zero_runs: arr(120),
        };
        let sane = m.geometry.is_consistent()
            && m.passes > 0
            && m.fec_group <= crate::proto::wire::MAX_FEC_GROUP
            && m.chunk_blocks > 0
            && m.page_count() <= MAX_PAGES;
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

    /// The image's root: BLAKE3 of the image's size, block size, chunk
    /// size and its chunk hashes `leaves` in order (all of them). It names
    /// the image's bytes as cut into this manifest's chunks, whatever the
    /// session: the digest a signed session reports when its sender did not
    /// hash the image with SHA-256 (its signed ends then carry the root,
    /// with [`FLAG_ROOT`]).
    pub fn root<'a>(&self, leaves: impl IntoIterator<Item = &'a [u8; HASH_LEN]>) -> [u8; HASH_LEN] {
        let mut h = blake3::Hasher::new();
        h.update(ROOT_CONTEXT);
        h.update(&self.geometry.total_size.to_be_bytes());
        h.update(&self.geometry.block_size.to_be_bytes());
        h.update(&self.chunk_blocks.to_be_bytes());
        let mut n = 0u64;
        for l in leaves {
            h.update(l);
            n += 1;
        }
        debug_assert_eq!(n, self.chunk_count());
        *h.finalize().as_bytes()
    }

    /// The root of `image` (all its bytes), as a sender of this manifest
    /// makes it.
    pub fn root_of_image(&self, image: &[u8]) -> [u8; HASH_LEN] {
        let leaves: Vec<[u8; HASH_LEN]> = (0..self.chunk_count())
            .map(|c| {
                let (a, b) = self.chunk_bytes(c);
                chunk_hash(&image[a as usize..b as usize])
            })
            .collect();
        self.root(&leaves)
    }

    /// The root of the image whose page payloads are `pages` (all of them,
    /// page 0 first; their signatures are not checked). None unless every
    /// page is there and well formed.
    pub fn root_of_pages(&self, pages: &[Vec<u8>]) -> Option<[u8; HASH_LEN]> {
        if pages.len() as u64 != self.page_count() {
            return None;
        }
        let mut leaves = Vec::with_capacity(self.chunk_count() as usize);
        for (i, p) in pages.iter().enumerate() {
            leaves.extend(self.page_hashes(i as u64, p).ok()?);
        }
        Some(self.root(&leaves))
    }

    /// The payload of a head packet, signed with `key`, naming no URLs.
    pub fn sign(&self, key: &SigningKey) -> Vec<u8> {
        self.sign_with_urls(key, &[])
            .expect("no URLs: always well formed")
    }

    /// The payload of a head packet naming `urls` (web servers with the
    /// same image, for receivers given none: `send --http-url`), signed
    /// with `key`. Without URLs it is the head [`Self::sign`] makes, byte
    /// for byte; with them, the URL block (their length, u16, then the
    /// URLs joined by newlines) follows the body and is signed with it.
    /// An error if a URL is not http(s), holds a control character or a
    /// space, or they take more than [`MAX_URL_BYTES`].
    pub fn sign_with_urls(&self, key: &SigningKey, urls: &[String]) -> Result<Vec<u8>, String> {
        let block = url_block(urls)?;
        let body = self.body();
        let sig = key.sign(&[HEAD_CONTEXT, &body[..], &block].concat());
        let mut out = Vec::with_capacity(1 + HEAD_LEN + block.len());
        out.push(SUB_HEAD);
        out.extend_from_slice(&body);
        out.extend_from_slice(&block);
        out.extend_from_slice(key.verifying_key().as_bytes());
        out.extend_from_slice(&sig.to_bytes());
        Ok(out)
    }

    /// Check a head payload: well formed, signed by one of `trusted`.
    /// Returns the manifest and the key that signed it (the URLs it may
    /// name: [`head_urls`]).
    pub fn verify(
        payload: &[u8],
        trusted: &[VerifyingKey],
    ) -> Result<(Manifest, VerifyingKey), ManifestError> {
        let block = head_url_block(payload).ok_or(ManifestError::Malformed)?;
        let body = &payload[1..1 + BODY_LEN];
        let at = 1 + BODY_LEN + block.len();
        let key_bytes = &payload[at..at + PUBLIC_KEY_LEN];
        let key = trusted
            .iter()
            .find(|k| k.as_bytes()[..] == *key_bytes)
            .ok_or(ManifestError::UntrustedKey)?;
        let sig = Signature::from_slice(&payload[at + PUBLIC_KEY_LEN..])
            .map_err(|_| ManifestError::Malformed)?;
        key.verify_strict(&[HEAD_CONTEXT, body, block].concat(), &sig)
            .map_err(|_| ManifestError::BadSignature)?;
        Ok((Manifest::from_body(body)?, *key))
    }

    fn end_message(&self, pass: u32, flags: u32, digest: &[u8; DIGEST_LEN]) -> Vec<u8> {
        [
            END_CONTEXT,
            &self.id(),
            &pass.to_be_bytes(),
            &flags.to_be_bytes(),
            digest,
        ]
        .concat()
    }

    /// The payload of a signed end packet for `pass` with `flags` and the
    /// image's SHA-256 (all zero: not known yet), or its root when `flags`
    /// has [`FLAG_ROOT`].
    pub fn sign_end(
        &self,
        key: &SigningKey,
        pass: u32,
        flags: u32,
        digest: &[u8; DIGEST_LEN],
    ) -> Vec<u8> {
        let sig = key.sign(&self.end_message(pass, flags, digest));
        [
            &pass.to_be_bytes()[..],
            &flags.to_be_bytes(),
            digest,
            &sig.to_bytes(),
        ]
        .concat()
    }

    fn zeros_message(&self, seq: u64, body: &[u8]) -> Vec<u8> {
        [ZEROS_CONTEXT, &self.id(), &seq.to_be_bytes(), body].concat()
    }

    /// The signature of zero-run packet `seq` whose payload (count and
    /// runs) is `body`: bound to this manifest (so to the session) and to
    /// the packet's place in the list.
    pub fn sign_zeros(&self, key: &SigningKey, seq: u64, body: &[u8]) -> [u8; SIGNATURE_LEN] {
        key.sign(&self.zeros_message(seq, body)).to_bytes()
    }

    /// Check the signature of zero-run packet `seq` from the signer `key`.
    pub fn verify_zeros(
        &self,
        key: &VerifyingKey,
        seq: u64,
        body: &[u8],
        signature: &[u8],
    ) -> Result<(), ManifestError> {
        let sig = Signature::from_slice(signature).map_err(|_| ManifestError::Malformed)?;
        key.verify_strict(&self.zeros_message(seq, body), &sig)
            .map_err(|_| ManifestError::BadSignature)
    }

    fn verdict_message(
        &self,
        round: u64,
        port: u16,
        behind_ppm: u32,
        name: &[u8; REPORT_NAME_LEN],
    ) -> Vec<u8> {
        [
            VERDICT_CONTEXT,
            &self.id(),
            &round.to_be_bytes(),
            &port.to_be_bytes(),
            &behind_ppm.to_be_bytes(),
            name,
        ]
        .concat()
    }

    /// The [`VERDICT_LEN`] bytes of a signed "too slow" verdict for the
    /// receiver reporting as `name` from port `port`, in repair round
    /// `round`, which the sender judged to miss more than `behind_ppm`
    /// millionths of the image (`send --max-behind`): bound to this
    /// manifest (id), the receiver's port and name, so that it verifies for
    /// no other session and no other receiver, and carrying the threshold,
    /// so that the receiver can see it is true of itself (a report forged
    /// in its name cannot make the sender end a receiver that keeps up).
    pub fn sign_verdict(
        &self,
        key: &SigningKey,
        round: u64,
        port: u16,
        behind_ppm: u32,
        name: &[u8; REPORT_NAME_LEN],
    ) -> Vec<u8> {
        let sig = key.sign(&self.verdict_message(round, port, behind_ppm, name));
        let mut out = Vec::with_capacity(VERDICT_LEN);
        out.extend_from_slice(&port.to_be_bytes());
        out.extend_from_slice(&behind_ppm.to_be_bytes());
        out.extend_from_slice(&[0; 2]);
        out.extend_from_slice(&sig.to_bytes());
        out
    }

    /// Check a signed verdict's `proof` for round `round`, addressed to
    /// this receiver (its report socket's `port`, its `name`); the
    /// threshold it was judged by, in millionths of the image.
    pub fn verify_verdict(
        &self,
        key: &VerifyingKey,
        round: u64,
        port: u16,
        name: &[u8; REPORT_NAME_LEN],
        proof: &[u8],
    ) -> Result<u32, ManifestError> {
        if proof.len() != VERDICT_LEN || be_u16(proof, 0) != port {
            return Err(ManifestError::Malformed);
        }
        let behind_ppm = be_u32(proof, 2);
        let sig = Signature::from_slice(&proof[8..]).map_err(|_| ManifestError::Malformed)?;
        key.verify_strict(&self.verdict_message(round, port, behind_ppm, name), &sig)
            .map_err(|_| ManifestError::BadSignature)?;
        Ok(behind_ppm)
    }

    /// Check a signed end payload from the signer `key`: pass, flags and
    /// the image's SHA-256 or root (None while the sender has not read it
    /// all).
    pub fn verify_end(
        &self,
        key: &VerifyingKey,
        payload: &[u8],
    ) -> Result<SignedEnd, ManifestError> {
        if payload.len() != SIGNED_END_LEN {
            return Err(ManifestError::Malformed);
        }
        let (pass, flags) = (be_u32(payload, 0), be_u32(payload, 4));
        let digest: [u8; DIGEST_LEN] = payload[8..8 + DIGEST_LEN].try_into().expect("digest");
        let sig = Signature::from_slice(&payload[8 + DIGEST_LEN..])
            .map_err(|_| ManifestError::Malformed)?;
        key.verify_strict(&self.end_message(pass, flags, &digest), &sig)
            .map_err(|_| ManifestError::BadSignature)?;
        let known = (digest != [0; DIGEST_LEN]).then_some(digest);
        let root = flags & FLAG_ROOT != 0;
        Ok(SignedEnd {
            pass,
            flags,
            digest: known.filter(|_| !root),
            root: known.filter(|_| root),
        })
    }

    /// Chunk hashes page `index` covers (the last page may be short).
    fn page_leaves(&self, index: u64) -> usize {
        (self
            .chunk_count()
            .saturating_sub(index.saturating_mul(LEAVES_PER_PAGE as u64)))
        .min(LEAVES_PER_PAGE as u64) as usize
    }

    fn page_message(&self, index: u64, leaves: &[u8]) -> Vec<u8> {
        [PAGE_CONTEXT, &self.id(), &index.to_be_bytes(), leaves].concat()
    }

    /// The payload of page `index`: `leaves`, the hashes of its chunks in
    /// order, signed with `key`.
    pub fn sign_page(&self, key: &SigningKey, index: u64, leaves: &[[u8; HASH_LEN]]) -> Vec<u8> {
        debug_assert_eq!(leaves.len(), self.page_leaves(index));
        let flat = leaves.as_flattened();
        let sig = key.sign(&self.page_message(index, flat));
        let mut out = Vec::with_capacity(PAGE_PREFIX + flat.len() + SIGNATURE_LEN);
        out.extend_from_slice(&[SUB_PAGE, 0]);
        out.extend_from_slice(&(leaves.len() as u16).to_be_bytes());
        out.extend_from_slice(flat);
        out.extend_from_slice(&sig.to_bytes());
        out
    }

    /// Page `index` of `image` (the whole image's bytes): the hashes of its
    /// chunks, signed with `key` (see [`Self::sign_page`]).
    pub fn page_of(&self, key: &SigningKey, index: u64, image: &[u8]) -> Vec<u8> {
        let first = index * LEAVES_PER_PAGE as u64;
        let leaves: Vec<[u8; HASH_LEN]> = (first..first + self.page_leaves(index) as u64)
            .map(|c| {
                let (a, b) = self.chunk_bytes(c);
                chunk_hash(&image[a as usize..b as usize])
            })
            .collect();
        self.sign_page(key, index, &leaves)
    }

    /// The chunk hashes of a page payload for page `index`, its shape
    /// checked but not its signature (to tell a repeat of a page already
    /// verified from a forgery without the cost of a signature check).
    pub fn page_hashes(
        &self,
        index: u64,
        payload: &[u8],
    ) -> Result<Vec<[u8; HASH_LEN]>, ManifestError> {
        let n = self.page_leaves(index);
        if index >= self.page_count()
            || payload.len() != PAGE_PREFIX + n * HASH_LEN + SIGNATURE_LEN
            || payload[..2] != [SUB_PAGE, 0]
            || usize::from(be_u16(payload, 2)) != n
        {
            return Err(ManifestError::Malformed);
        }
        Ok(payload[PAGE_PREFIX..PAGE_PREFIX + n * HASH_LEN]
            .chunks_exact(HASH_LEN)
            .map(|l| l.try_into().expect("hash"))
            .collect())
    }

    /// Check a page payload for page `index`, signed by `key`; returns its
    /// chunk hashes (chunks `index * LEAVES_PER_PAGE ..`).
    pub fn verify_page(
        &self,
        key: &VerifyingKey,
        index: u64,
        payload: &[u8],
    ) -> Result<Vec<[u8; HASH_LEN]>, ManifestError> {
        let hashes = self.page_hashes(index, payload)?;
        let end = payload.len() - SIGNATURE_LEN;
        let sig = Signature::from_slice(&payload[end..]).map_err(|_| ManifestError::Malformed)?;
        key.verify_strict(&self.page_message(index, &payload[PAGE_PREFIX..end]), &sig)
            .map_err(|_| ManifestError::BadSignature)?;
        Ok(hashes)
    }
}

/// The URL block of `urls`: empty for none, else their length (u16) and
/// the URLs joined by newlines.
/// Whether a head can name `urls` ([`Manifest::sign_with_urls`] takes
/// them): the reason if not.
pub fn check_urls(urls: &[String]) -> Result<(), String> {
    url_block(urls).map(drop)
}

fn url_block(urls: &[String]) -> Result<Vec<u8>, String> {
    if urls.is_empty() {
        return Ok(Vec::new());
    }
    for u in urls {
        if !url_acceptable(u) {
            return Err(format!(
                "{u:?}: not an http:// or https:// URL without spaces and control characters"
            ));
        }
    }
    let joined = urls.join("\n");
    if joined.len() > MAX_URL_BYTES {
        return Err(format!(
            "the URLs take {} bytes, more than the {MAX_URL_BYTES} a head holds",
            joined.len()
        ));
    }
    Ok([&(joined.len() as u16).to_be_bytes()[..], joined.as_bytes()].concat())
}

fn url_acceptable(u: &str) -> bool {
    let lower = u.to_ascii_lowercase();
    (lower.starts_with("http://") || lower.starts_with("https://"))
        && u.len() > "http://".len()
        && u.bytes().all(|b| b.is_ascii_graphic())
}

/// The URL block of a head payload (empty: none), its framing checked:
/// sub-type, total length, the block's length within
/// 1..=[`MAX_URL_BYTES`], and every URL acceptable. None if malformed.
fn head_url_block(payload: &[u8]) -> Option<&[u8]> {
    if payload.first() != Some(&SUB_HEAD) {
        return None;
    }
    if payload.len() == 1 + HEAD_LEN {
        return Some(&[]);
    }
    let at = 1 + BODY_LEN;
    let n = usize::from(be_u16(payload.get(at..at + 2)?, 0));
    if n == 0 || n > MAX_URL_BYTES || payload.len() != 1 + HEAD_LEN + 2 + n {
        return None;
    }
    let urls = std::str::from_utf8(&payload[at + 2..at + 2 + n]).ok()?;
    urls.split('\n')
        .all(url_acceptable)
        .then_some(&payload[at..at + 2 + n])
}

/// The URLs a head payload names (none if it names none or is
/// malformed). Only what [`Manifest::verify`] accepted counts: a URL says
/// where the image may be fetched, never what is genuine (chunk hashes do).
pub fn head_urls(payload: &[u8]) -> Vec<String> {
    match head_url_block(payload) {
        Some(b) if b.len() > 2 => String::from_utf8_lossy(&b[2..])
            .split('\n')
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// What a verified signed end says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignedEnd {
    /// Pass or repair round it ends.
    pub pass: u32,
    /// Control flags (`wire::FLAG_FINAL`).
    pub flags: u32,
    /// SHA-256 of the image, once the sender has read all of it (never
    /// with [`FLAG_ROOT`]).
    pub digest: Option<[u8; DIGEST_LEN]>,
    /// With [`FLAG_ROOT`]: the image's root ([`Manifest::root`]) in place
    /// of its SHA-256, once the sender has read all of it.
    pub root: Option<[u8; HASH_LEN]>,
}

/// What a sender that has read the whole image says of it in its ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageDigest {
    /// Its SHA-256 (unsigned sessions; signed ones with `send --sha256` or
    /// a kept manifest file that names it).
    Sha256([u8; DIGEST_LEN]),
    /// Its root ([`Manifest::root`]): a signed session whose sender did not
    /// hash the image with SHA-256; ends carry it with [`FLAG_ROOT`].
    Root([u8; HASH_LEN]),
}

impl ImageDigest {
    /// The 32 bytes of the digest field.
    pub fn bytes(&self) -> [u8; DIGEST_LEN] {
        match *self {
            ImageDigest::Sha256(d) | ImageDigest::Root(d) => d,
        }
    }

    /// The control flags that say which it is ([`FLAG_ROOT`] or none).
    pub fn flags(&self) -> u32 {
        match self {
            ImageDigest::Sha256(_) => 0,
            ImageDigest::Root(_) => FLAG_ROOT,
        }
    }

    /// "sha256 HEX" or "root HEX" (BLAKE3 of the chunk hashes).
    pub fn describe(&self) -> String {
        match self {
            ImageDigest::Sha256(d) => format!("sha256 {}", crate::proto::wire::hex(d)),
            ImageDigest::Root(d) => format!("root {}", crate::proto::wire::hex(d)),
        }
    }
}

/// BLAKE3 of one chunk's bytes (one hash of a page).
pub fn chunk_hash(bytes: &[u8]) -> [u8; HASH_LEN] {
    *blake3::hash(bytes).as_bytes()
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

    #[test]
    fn a_head_names_urls_under_its_signature() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let vk = key.verifying_key();
        let m = manifest_of(&[7u8; 5000], 1000, 256);
        // No URLs: the head of `sign`, byte for byte.
        assert_eq!(m.sign_with_urls(&key, &[]).unwrap(), m.sign(&key));
        assert!(head_urls(&m.sign(&key)).is_empty());
        let urls = vec![
            "http://fog.lab/images/disk.img".to_string(),
            "https://mirror.lab:8443/disk.img".to_string(),
        ];
        let head = m.sign_with_urls(&key, &urls).unwrap();
        assert!(head.len() <= crate::proto::wire::MAX_MANIFEST_PAYLOAD);
        assert_eq!(Manifest::verify(&head, &[vk]).unwrap().0, m);
        assert_eq!(head_urls(&head), urls);
        // A URL changed, added or removed breaks the signature or the frame.
        let mut other = head.clone();
        let at = 1 + BODY_LEN + 2 + 7;
        other[at] = b'g';
        assert_eq!(
            Manifest::verify(&other, &[vk]),
            Err(ManifestError::BadSignature)
        );
        let mut cut = head.clone();
        cut.remove(1 + BODY_LEN + 5);
        assert!(Manifest::verify(&cut, &[vk]).is_err());
        let stripped = [&head[..1 + BODY_LEN], &head[head.len() - 96..]].concat();
        assert_eq!(
            Manifest::verify(&stripped, &[vk]),
            Err(ManifestError::BadSignature)
        );
        // Not http(s), a space or control character, too long: refused.
        for bad in [
            "ftp://x/y",
            "http://a b",
            "http://x/\n",
            "http://",
            "file:///etc",
        ] {
            assert!(m.sign_with_urls(&key, &[bad.to_string()]).is_err(), "{bad}");
        }
        let long = format!("http://x/{}", "a".repeat(MAX_URL_BYTES));
        assert!(m.sign_with_urls(&key, &[long]).is_err());
        let fits = format!("http://x/{}", "a".repeat(MAX_URL_BYTES - 9));
        let head = m.sign_with_urls(&key, std::slice::from_ref(&fits)).unwrap();
        assert_eq!(head_urls(&head), vec![fits]);
        assert!(Manifest::verify(&head, &[vk]).is_ok());
    }

    fn manifest_of(img: &[u8], block_size: u32, chunk_blocks: u32) -> Manifest {
        let lan = std::net::Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped();
        Manifest {
            flags: 2,
            repair_addr: lan,
            repair_port: 4000,
            source: lan,
            issued_at: 1_800_000_000,
            ..Manifest::new(
                77,
                Geometry::new(img.len() as u64, block_size),
                chunk_blocks,
            )
        }
    }

    #[test]
    fn head_round_trip_and_forgeries() {
        let m = manifest_of(&image(100_000), 1000, 4);
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
    fn pages_verify_on_their_own_for_many_sizes() {
        let k = key(1);
        let vk = k.verifying_key();
        for chunks in [1usize, 2, 15, 16, 17, 33, 100, 257] {
            let img = image(chunks * 256 - 7);
            let m = manifest_of(&img, 64, 4);
            assert_eq!(m.chunk_count(), chunks as u64);
            let mut all = Vec::new();
            for p in 0..m.page_count() {
                let page = m.page_of(&k, p, &img);
                assert!(page.len() <= MAX_PAGE_LEN);
                all.extend(m.verify_page(&vk, p, &page).unwrap());
                assert_eq!(m.page_hashes(p, &page), m.verify_page(&vk, p, &page));
                // A page moved to another index, altered, signed by another
                // key or for another session is refused.
                if m.page_count() > 1 {
                    let other = (p + 1) % m.page_count();
                    assert!(m.verify_page(&vk, other, &page).is_err());
                }
                let mut bad = page.clone();
                bad[PAGE_PREFIX] ^= 1;
                assert_eq!(
                    m.verify_page(&vk, p, &bad),
                    Err(ManifestError::BadSignature)
                );
                let forged = m.page_of(&key(2), p, &img);
                assert_eq!(
                    m.verify_page(&vk, p, &forged),
                    Err(ManifestError::BadSignature)
                );
                let mut other = m;
                other.session += 1;
                assert_eq!(
                    other.verify_page(&vk, p, &page),
                    Err(ManifestError::BadSignature)
                );
                assert_eq!(
                    m.verify_page(&vk, p, &page[..page.len() - 1]),
                    Err(ManifestError::Malformed)
                );
            }
            assert!(m
                .verify_page(&vk, m.page_count(), &[SUB_PAGE, 0, 0, 0])
                .is_err());
            for (c, h) in all.iter().enumerate() {
                let (a, b) = m.chunk_bytes(c as u64);
                assert_eq!(*h, chunk_hash(&img[a as usize..b as usize]), "chunk {c}");
            }
        }
    }

    #[test]
    fn signed_end_is_bound_to_the_manifest_and_carries_the_digest() {
        let m = manifest_of(&image(10_000), 1000, 4);
        let k = key(1);
        let vk = k.verifying_key();
        let end = m.sign_end(&k, 3, 1, &[7; 32]);
        let want = SignedEnd {
            pass: 3,
            flags: 1,
            digest: Some([7; 32]),
            root: None,
        };
        assert_eq!(m.verify_end(&vk, &end), Ok(want));
        let early = m.sign_end(&k, 0, 0, &[0; 32]);
        assert_eq!(m.verify_end(&vk, &early).unwrap().digest, None);
        // With FLAG_ROOT the field is the root, never a SHA-256.
        let rooted = m.sign_end(&k, 0, FLAG_ROOT, &[9; 32]);
        let got = m.verify_end(&vk, &rooted).unwrap();
        assert_eq!((got.digest, got.root), (None, Some([9; 32])));
        let mut other = m;
        other.session = 78;
        assert_eq!(
            other.verify_end(&vk, &end),
            Err(ManifestError::BadSignature)
        );
        // The pass, the flags and the digest are all signed.
        for at in [3, 7, 8, 39] {
            let mut f = end.clone();
            f[at] ^= 1;
            assert_eq!(
                m.verify_end(&vk, &f),
                Err(ManifestError::BadSignature),
                "{at}"
            );
        }
    }

    #[test]
    fn the_root_names_the_image_in_its_chunks_whatever_the_session() {
        let img = image(10_000);
        let m = manifest_of(&img, 1000, 4);
        let leaves: Vec<[u8; HASH_LEN]> = (0..m.chunk_count())
            .map(|c| {
                let (a, b) = m.chunk_bytes(c);
                chunk_hash(&img[a as usize..b as usize])
            })
            .collect();
        let root = m.root(&leaves);
        assert_eq!(m.root_of_image(&img), root);
        let other = Manifest {
            session: 99,
            passes: 3,
            ..m
        };
        assert_eq!(other.root(&leaves), root);
        let mut changed = leaves.clone();
        changed[1][0] ^= 1;
        assert_ne!(m.root(&changed), root);
        // The chunk size is part of it: other chunks, another root.
        let wider = Manifest {
            chunk_blocks: 8,
            ..m
        };
        assert_ne!(wider.root(&leaves[..wider.chunk_count() as usize]), root);
        // From the signed pages, as the sender makes it.
        let k = key(1);
        let mut pages: Vec<Vec<u8>> = (0..m.page_count())
            .map(|p| m.page_of(&k, p, &img))
            .collect();
        assert_eq!(m.root_of_pages(&pages), Some(root));
        pages.pop();
        assert_eq!(m.root_of_pages(&pages), None);
    }

    #[test]
    fn a_verdict_is_bound_to_the_manifest_and_the_receiver() {
        use crate::proto::wire::{self, ConfirmHeader, Packet};
        let m = manifest_of(&image(10_000), 1000, 4);
        let (k, pk) = (key(1), key(1).verifying_key());
        let name = wire::Report::name_field("lab-17");
        let proof = m.sign_verdict(&k, 5, 40_000, 100_000, &name);
        assert_eq!(m.verify_verdict(&pk, 5, 40_000, &name, &proof), Ok(100_000));
        let mut lower = proof.clone();
        lower[5] = 0;
        assert!(m.verify_verdict(&pk, 5, 40_000, &name, &lower).is_err());
        // Another receiver (port or name), round, session or key: refused.
        let other_name = wire::Report::name_field("lab-18");
        assert!(m.verify_verdict(&pk, 5, 40_001, &name, &proof).is_err());
        assert!(m
            .verify_verdict(&pk, 5, 40_000, &other_name, &proof)
            .is_err());
        assert!(m.verify_verdict(&pk, 6, 40_000, &name, &proof).is_err());
        let mut other = m;
        other.issued_at += 1;
        assert!(other.verify_verdict(&pk, 5, 40_000, &name, &proof).is_err());
        let forged = m.sign_verdict(&key(2), 5, 40_000, 100_000, &name);
        assert!(m.verify_verdict(&pk, 5, 40_000, &name, &forged).is_err());
        // On the wire: a confirmation with no entries and the proof.
        let h = ConfirmHeader {
            round: 5,
            group_size: 1,
            receivers: 0,
            flags: 0,
        };
        let pkt = wire::encode_verdict(m.session, &m.geometry, &h, &proof);
        match wire::parse(&pkt) {
            Ok(Packet::Confirm {
                round,
                flags,
                proof: p,
                counts,
                ..
            }) => {
                assert_eq!(
                    (round, flags),
                    (5, wire::CONFIRM_TOO_SLOW | wire::CONFIRM_SIGNED)
                );
                assert_eq!((p, counts.iter().count()), (&proof[..], 0));
            }
            other => panic!("{other:?}"),
        }
        let mut cut = pkt.clone();
        cut.pop();
        assert!(wire::parse(&cut).is_err());
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
