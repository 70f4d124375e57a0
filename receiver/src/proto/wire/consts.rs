//! The wire format's sizes, limits and flag bits.

/// `"XDPC"` in network byte order.
pub const MAGIC: u32 = 0x5844_5043;
/// The only version this crate speaks. 2: signed pages are signed one by
/// one (no Merkle root in the head), and the image's SHA-256 may first
/// come in the end packets (a sender that hashes as it sends).
pub const VERSION: u8 = 2;
/// Size of the fixed header that starts every packet.
pub const HEADER_LEN: usize = 40;
/// Size of the SHA-256 digest carried by announce and end packets.
pub const DIGEST_LEN: usize = 32;
/// Payload length of announce and end packets: digest, pass, passes, flags,
/// repair port, FEC repair symbols, FEC group size, repair address.
pub const CONTROL_PAYLOAD_LEN: usize = DIGEST_LEN + 4 + 4 + 4 + 2 + 2 + 4 + 16;
/// Control flag: this end packet is the sender's last; no repair follows.
pub const FLAG_FINAL: u32 = 1;
/// Control flag: the sender takes NACKs at `repair_addr:repair_port`.
pub const FLAG_REPAIR: u32 = 2;
/// Control flag: the sender answers parity requests ([`Kind::ParityRequest`](super::Kind::ParityRequest))
/// for groups of `fec_group` blocks with fresh RaptorQ symbols.
pub const FLAG_PARITY: u32 = 4;
/// Control flag: bits 16-31 carry the sender's count of the receivers
/// lacking much ([`LACKING_SHIFT`], [`LACKING_SHARE_SHIFT`]): a hint to
/// receivers with a web server whether a multicast repair round is worth
/// it (docs/http.md). Senders before it leave these bits clear.
pub const FLAG_FLEET: u32 = 8;
/// Control flags bits 16-23 (with [`FLAG_FLEET`]): receivers still
/// receiving that lacked at least [`LACKING_MUCH`] of the image by their
/// last report and heard the multicast (not "HTTP only"), at most 255.
pub const LACKING_SHIFT: u32 = 16;
/// Control flags bits 24-31 (with [`FLAG_FLEET`]): those receivers as a
/// share of the receivers that hear the multicast (still receiving or
/// finished), in 255ths rounded up (any at all is at least 1).
pub const LACKING_SHARE_SHIFT: u32 = 24;
/// Share of the image a receiver lacks, by its report, for the sender to
/// count it as lacking much: the receivers' default
/// `--http-repair-percent`.
pub const LACKING_MUCH: f64 = 0.05;
/// Control flag of a signed end (kind 7): its digest field carries the
/// image's *root* (BLAKE3 of its signed chunk hashes,
/// `Manifest::root`), not its SHA-256: the sender did not hash the image
/// with SHA-256 (a signed session's chunk hashes already authenticate
/// every byte). docs/protocol.md, "Signed sessions".
pub const FLAG_ROOT: u32 = 16;
/// Control flags bits 8-15: the sender's group-size estimate, as
/// `ceil(log2(receivers known + 1))`; receivers scale their request backoff
/// by it (NORM's GSIZE).
pub const GSIZE_SHIFT: u32 = 8;
/// Largest number of entries in one parity request or confirmation.
pub const MAX_PARITY_ENTRIES: usize = MAX_NACK_RANGES;
/// Bytes in front of the entries of a parity request: group size (u32).
pub const PARITY_PREFIX_LEN: usize = 4;
/// Bytes in front of the entries of a confirmation: group size, receivers
/// known, flags (u32 each).
pub const CONFIRM_PREFIX_LEN: usize = 12;
/// Confirmation flag: sent by unicast to one receiver, which is too far
/// behind; it stops with the `too_slow` error.
pub const CONFIRM_TOO_SLOW: u32 = 1;
/// Confirmation flag (with [`CONFIRM_TOO_SLOW`] only): the verdict is
/// signed with the session's key; in place of entries the payload carries
/// [`VERDICT_LEN`] bytes (see `Manifest::sign_verdict`). A signed
/// session's receiver takes no other verdict.
pub const CONFIRM_SIGNED: u32 = 2;
/// Bytes of a signed verdict after the confirmation's prefix: the
/// receiver's port (u16), the sender's `--max-behind` in millionths of the
/// image (u32), 2 reserved zero bytes, the Ed25519 signature.
pub const VERDICT_LEN: usize = 8 + 64;
/// Bytes of a receiver's name in a progress report.
pub const REPORT_NAME_LEN: usize = 32;
/// Progress report flag: the receiver took bytes from a web server
/// (`receive --http`), shown in the sender's receiver table.
pub const REPORT_HTTP: u8 = 1;
/// Progress report flag (with [`REPORT_HTTP`]): every byte it took came
/// from a web server, none by multicast (a receiver that cannot hear the
/// group); shown as `http` in the sender's table and not counted among
/// the receivers a repair round would serve.
pub const REPORT_HTTP_ONLY: u8 = 2;
/// Payload length of a progress report: blocks done (u64), requests sent
/// (u32), state (u8), error (u8), 2 reserved bytes, name.
pub const REPORT_PAYLOAD_LEN: usize = 16 + REPORT_NAME_LEN;
/// Largest number of ranges in one NACK packet.
pub const MAX_NACK_RANGES: usize = 100;
/// Bytes of one block range (NACK, zero run): first block (u64) and count (u32).
pub const NACK_RANGE_LEN: usize = 12;
/// Bytes in front of the runs of a zero-run packet: the number of
/// zero-run packets in the sender's list (u32).
pub const ZEROS_PREFIX_LEN: usize = 4;
/// Bytes of the signature a signed session's zero-run packet carries after
/// its runs ([`SIGNATURE_LEN`]). Runs take 12 bytes each and 64 is not a
/// multiple of 12, so the length tells a signed packet from an unsigned one.
pub const ZEROS_SIGNATURE_LEN: usize = SIGNATURE_LEN;
/// Largest FEC group (source blocks per RaptorQ source block): the
/// default parity group (`send::sender::PARITY_GROUP`). Bounds what a
/// forged symbol can make a receiver decode (about twice the work of the
/// 1024 blocks this was until bursty loss in `cargo xtask fleet-sim`
/// called for larger groups, docs/reliability.md).
pub const MAX_FEC_GROUP: u32 = 2048;
/// FEC payload bytes in front of the symbol: group size (u32) and the
/// RaptorQ payload id (4 bytes).
pub const FEC_PREFIX_LEN: usize = 8;
/// IPv4 (20) plus UDP (8) header bytes in front of our header.
pub const IPV4_UDP_OVERHEAD: usize = 28;
/// Largest block size accepted from the wire (fits a 9000-byte jumbo frame).
pub const MAX_BLOCK_SIZE: u32 = 9000 - (IPV4_UDP_OVERHEAD + HEADER_LEN) as u32;
/// Smallest block size accepted from the wire.
pub const MIN_BLOCK_SIZE: u32 = 64;

// Signed sessions' packets (proto::manifest encodes and verifies them and
// re-exports these).

/// Bytes of an Ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Bytes of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Bytes of a BLAKE3 hash.
pub const HASH_LEN: usize = 32;
/// Chunk hashes per page packet.
pub const LEAVES_PER_PAGE: usize = 16;
/// Length of the signed body of a head (everything before key and signature).
pub const BODY_LEN: usize =
    4 + 4 + 4 + 8 + 8 + DIGEST_LEN + 4 + 4 + 16 + 2 + 2 + 4 + 16 + 4 + 8 + HASH_LEN;
/// Payload of a head packet that names no URLs: body, public key,
/// signature (after the sub-type byte).
pub const HEAD_LEN: usize = BODY_LEN + PUBLIC_KEY_LEN + SIGNATURE_LEN;
/// Most bytes of the URLs a head may name (`send --http-url`), joined by
/// newlines; the block adds their length (u16) before the key.
pub const MAX_URL_BYTES: usize = 512;
/// Payload of a signed end packet: pass, flags, SHA-256 of the image (all
/// zero while the sender has not read all of it), signature.
pub const SIGNED_END_LEN: usize = 4 + 4 + DIGEST_LEN + SIGNATURE_LEN;
/// Fixed part of a page payload: sub-type, a zero byte, leaf count (u16).
pub const PAGE_PREFIX_LEN: usize = 4;
/// Largest page payload.
pub const MAX_PAGE_LEN: usize = PAGE_PREFIX_LEN + LEAVES_PER_PAGE * HASH_LEN + SIGNATURE_LEN;

/// Largest manifest packet payload (a head naming URLs, or a page).
pub const MAX_MANIFEST_PAYLOAD: usize = if MAX_PAGE_LEN > 1 + HEAD_LEN + 2 + MAX_URL_BYTES {
    MAX_PAGE_LEN
} else {
    1 + HEAD_LEN + 2 + MAX_URL_BYTES
};
