//! Wire format v2: the packets a sender multicasts and a receiver parses.
//!
//! Every packet is one UDP datagram that starts with a fixed 40-byte header
//! in network byte order (see docs/protocol.md for the byte layout):
//!
//! ```text
//!  0 magic u32 "XDPC"   4 version u8   5 kind u8   6 payload_len u16
//!  8 session_id u32    12 block_size u32
//! 16 block_index u64   24 block_count u64   32 total_size u64
//! ```
//!
//! Parsing borrows the datagram (no copy, no allocation) and rejects anything
//! malformed with a [`DropReason`] so that receivers can count why a packet
//! was dropped.

use std::fmt;

use crate::proto::manifest;

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
/// Control flag: the sender answers parity requests ([`Kind::ParityRequest`])
/// for groups of `fec_group` blocks with fresh RaptorQ symbols.
pub const FLAG_PARITY: u32 = 4;
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
/// Largest FEC group (source blocks per RaptorQ source block).
pub const MAX_FEC_GROUP: u32 = 1024;
/// FEC payload bytes in front of the symbol: group size (u32) and the
/// RaptorQ payload id (4 bytes).
pub const FEC_PREFIX_LEN: usize = 8;
/// IPv4 (20) plus UDP (8) header bytes in front of our header.
pub const IPV4_UDP_OVERHEAD: usize = 28;
/// Largest block size accepted from the wire (fits a 9000-byte jumbo frame).
pub const MAX_BLOCK_SIZE: u32 = 9000 - (IPV4_UDP_OVERHEAD + HEADER_LEN) as u32;
/// Smallest block size accepted from the wire.
pub const MIN_BLOCK_SIZE: u32 = 64;

/// Largest block payload that fits one frame of the given MTU, rounded down
/// to a multiple of 8 bytes (1400 at MTU 1500 leaves room for options; 8192
/// at MTU 9000 keeps blocks page-friendly).
pub fn block_size_for_mtu(mtu: u32) -> u32 {
    let room = mtu.saturating_sub((IPV4_UDP_OVERHEAD + HEADER_LEN) as u32);
    if room >= 8192 {
        8192
    } else {
        (room.min(1400) / 8 * 8).max(MIN_BLOCK_SIZE)
    }
}

/// Packet kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// One block of the image.
    Data = 1,
    /// Session parameters and the image digest, sent before and during a pass.
    Announce = 2,
    /// End of one pass (or repair round) over the image.
    End = 3,
    /// Receiver to sender, unicast: ranges of missing blocks.
    Nack = 4,
    /// One RaptorQ repair symbol for a group of blocks.
    Fec = 5,
    /// Signed sessions: the signed manifest head or one page of chunk
    /// hashes (see [`crate::proto::manifest`]).
    Manifest = 6,
    /// Signed sessions: an end of pass signed by the manifest's key.
    SignedEnd = 7,
    /// Receiver to sender, unicast: per FEC group, how many symbols it lacks.
    ParityRequest = 8,
    /// Sender to the group (like PGM's NCF): the symbols it will send per
    /// group in this round, so that receivers whose need is covered stay quiet.
    Confirm = 9,
    /// Receiver to sender, unicast: periodic progress and final state.
    Progress = 10,
    /// Runs of all-zero blocks that the sender does not send (sparse image).
    Zeros = 11,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        match v {
            1 => Some(Kind::Data),
            2 => Some(Kind::Announce),
            3 => Some(Kind::End),
            4 => Some(Kind::Nack),
            5 => Some(Kind::Fec),
            6 => Some(Kind::Manifest),
            7 => Some(Kind::SignedEnd),
            8 => Some(Kind::ParityRequest),
            9 => Some(Kind::Confirm),
            10 => Some(Kind::Progress),
            11 => Some(Kind::Zeros),
            _ => None,
        }
    }
}

/// Why a packet (or frame) was dropped. The discriminant is the index of the
/// counter on the status page and must not change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DropReason {
    /// Shorter than the header, or a frame cut inside its Ethernet/IP/UDP headers.
    Truncated = 0,
    /// Magic number is not "XDPC".
    BadMagic = 1,
    /// Unknown protocol version.
    BadVersion = 2,
    /// Unknown packet kind.
    BadKind = 3,
    /// Session id differs from the session being received.
    ForeignSession = 4,
    /// payload_len disagrees with the datagram length.
    LengthMismatch = 5,
    /// payload_len larger than the block size, or block size out of bounds.
    Oversize = 6,
    /// block_index is not below block_count.
    OutOfRange = 7,
    /// block_size/block_count/total_size disagree with each other or with the session.
    Inconsistent = 8,
    /// A frame that is not IPv4/IPv6 UDP (only seen on the XDP path).
    NotUdp = 9,
    /// A second copy of a block already written.
    Duplicate = 10,
    /// An announce or end packet with a malformed payload.
    BadControl = 11,
    /// With `--trust`: a packet not covered by the verified manifest (a
    /// manifest or signed end whose signature fails or whose key is not
    /// trusted, a page off the signed root, plain announce/end packets,
    /// data before the manifest, FEC parameters other than the signed ones).
    Unauthenticated = 12,
    /// With `--trust`: a complete chunk whose hash differs from the signed
    /// one; counted once per chunk, its blocks are requested again.
    BadChunk = 13,
    /// Data from another source address than the session's sender.
    ForeignSource = 14,
}

impl DropReason {
    /// Number of reasons (size of the counter array on the status page).
    pub const COUNT: usize = 15;
    /// All reasons in counter order.
    pub const ALL: [DropReason; Self::COUNT] = [
        DropReason::Truncated,
        DropReason::BadMagic,
        DropReason::BadVersion,
        DropReason::BadKind,
        DropReason::ForeignSession,
        DropReason::LengthMismatch,
        DropReason::Oversize,
        DropReason::OutOfRange,
        DropReason::Inconsistent,
        DropReason::NotUdp,
        DropReason::Duplicate,
        DropReason::BadControl,
        DropReason::Unauthenticated,
        DropReason::BadChunk,
        DropReason::ForeignSource,
    ];

    /// Stable snake_case name used in CLI output, JSON and metrics.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::BadMagic => "bad_magic",
            DropReason::BadVersion => "bad_version",
            DropReason::BadKind => "bad_kind",
            DropReason::ForeignSession => "foreign_session",
            DropReason::LengthMismatch => "length_mismatch",
            DropReason::Oversize => "oversize",
            DropReason::OutOfRange => "out_of_range",
            DropReason::Inconsistent => "inconsistent",
            DropReason::NotUdp => "not_udp",
            DropReason::Duplicate => "duplicate",
            DropReason::BadControl => "bad_control",
            DropReason::Unauthenticated => "unauthenticated",
            DropReason::BadChunk => "bad_chunk",
            DropReason::ForeignSource => "foreign_source",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How an image is cut into blocks. Carried in every packet, so a receiver
/// can start from whichever packet it hears first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Bytes per block (the last block may be shorter).
    pub block_size: u32,
    /// Number of blocks.
    pub block_count: u64,
    /// Image size in bytes.
    pub total_size: u64,
}

impl Geometry {
    /// Geometry of an image of `total_size` bytes cut into `block_size` blocks.
    pub fn new(total_size: u64, block_size: u32) -> Geometry {
        Geometry {
            block_size,
            block_count: total_size.div_ceil(u64::from(block_size)),
            total_size,
        }
    }

    /// Length of block `index` (shorter for the last block).
    pub fn block_len(&self, index: u64) -> usize {
        let start = index * u64::from(self.block_size);
        (self.total_size - start).min(u64::from(self.block_size)) as usize
    }

    /// Byte offset of block `index` in the image.
    pub fn offset(&self, index: u64) -> u64 {
        index * u64::from(self.block_size)
    }

    /// Bytes of blocks `[first, end)` (0 when empty).
    pub fn range_bytes(&self, first: u64, end: u64) -> u64 {
        if end <= first {
            return 0;
        }
        self.offset(end - 1) + self.block_len(end - 1) as u64 - self.offset(first)
    }

    pub(crate) fn is_consistent(&self) -> bool {
        (MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&self.block_size)
            && self.total_size > 0
            && self.block_count == self.total_size.div_ceil(u64::from(self.block_size))
    }
}

/// Contents of announce and end packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Control {
    /// SHA-256 of the whole image.
    pub digest: [u8; DIGEST_LEN],
    /// Pass number (0-based); repair rounds continue after the full passes.
    pub pass: u32,
    /// Number of full passes the sender makes.
    pub passes: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// UDP port taking NACKs (with `FLAG_REPAIR`).
    pub repair_port: u16,
    /// RaptorQ repair symbols sent per FEC group (0: no FEC).
    pub fec_repair: u16,
    /// Blocks per FEC group.
    pub fec_group: u32,
    /// Address taking NACKs (IPv4-mapped for IPv4).
    pub repair_addr: std::net::Ipv6Addr,
}

impl Control {
    /// A control block for `passes` full passes, no repair, no FEC.
    pub fn new(digest: [u8; DIGEST_LEN], pass: u32, passes: u32) -> Control {
        Control {
            digest,
            pass,
            passes,
            flags: 0,
            repair_port: 0,
            fec_repair: 0,
            fec_group: 0,
            repair_addr: std::net::Ipv6Addr::UNSPECIFIED,
        }
    }

    /// The sender's group-size estimate (`ceil(log2(receivers + 1))`).
    pub fn gsize_log2(&self) -> u32 {
        (self.flags >> GSIZE_SHIFT) & 0xff
    }

    /// The FEC group size for parity requests, if the sender takes them.
    pub fn parity_group(&self) -> Option<u32> {
        (self.flags & FLAG_PARITY != 0 && self.fec_group > 0).then_some(self.fec_group)
    }

    /// Where NACKs go, if the sender takes them.
    pub fn repair_to(&self) -> Option<std::net::SocketAddr> {
        if self.flags & FLAG_REPAIR == 0 || self.repair_port == 0 {
            return None;
        }
        let ip = match self.repair_addr.to_ipv4_mapped() {
            Some(v4) => std::net::IpAddr::V4(v4),
            None => std::net::IpAddr::V6(self.repair_addr),
        };
        Some(std::net::SocketAddr::new(ip, self.repair_port))
    }
}

/// Encode a group-size estimate into control flags bits 8-15.
pub fn gsize_flags(receivers: u64) -> u32 {
    (u64::BITS - receivers.leading_zeros()).min(255) << GSIZE_SHIFT
}

/// The block ranges of a NACK or zero-run packet, read in place; also the
/// `(group, count)` entries of parity requests and confirmations, which share
/// the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ranges<'a>(&'a [u8]);

impl<'a> Ranges<'a> {
    /// `(first block, count)` of every range.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u32)> + 'a {
        self.0
            .chunks_exact(NACK_RANGE_LEN)
            .map(|c| (be_u64(c, 0), be_u32(c, 8)))
    }

    /// Number of ranges.
    pub fn len(&self) -> usize {
        self.0.len() / NACK_RANGE_LEN
    }

    /// True when there are no ranges.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A parsed packet, borrowing the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet<'a> {
    /// One block of data.
    Data {
        /// Session the packet belongs to.
        session: u32,
        /// Image geometry.
        geometry: Geometry,
        /// Index of the block.
        index: u64,
        /// Block bytes (exactly `geometry.block_len(index)` long).
        payload: &'a [u8],
    },
    /// Session announcement.
    Announce {
        /// Session id.
        session: u32,
        /// Image geometry.
        geometry: Geometry,
        /// Digest and pass information.
        control: Control,
    },
    /// End of a pass.
    End {
        /// Session id.
        session: u32,
        /// Image geometry.
        geometry: Geometry,
        /// Digest and pass information.
        control: Control,
    },
    /// Missing blocks of a receiver.
    Nack {
        /// Session id.
        session: u32,
        /// Image geometry.
        geometry: Geometry,
        /// Missing ranges, each inside the image.
        ranges: Ranges<'a>,
    },
    /// A RaptorQ repair symbol.
    Fec {
        /// Session id.
        session: u32,
        /// Image geometry.
        geometry: Geometry,
        /// FEC group index: blocks `group * group_size ..`.
        group: u64,
        /// Blocks per group.
        group_size: u32,
        /// RaptorQ payload id (4 bytes) followed by the symbol (`block_size` bytes).
        symbol: &'a [u8],
    },
    /// A manifest head (index 0) or page (index = page number), unverified.
    Manifest {
        /// Session id.
        session: u32,
        /// Image geometry.
        geometry: Geometry,
        /// Page number (0 for the head).
        index: u64,
        /// Sub-type byte and body.
        payload: &'a [u8],
    },
    /// A signed end of pass, unverified.
    SignedEnd {
        /// Session id.
        session: u32,
        /// Image geometry.
        geometry: Geometry,
        /// Pass, flags, signature.
        payload: &'a [u8],
    },
    /// Runs of all-zero blocks, which the receiver makes read as zeros.
    Zeros {
        /// Session id.
        session: u32,
        /// Image geometry.
        geometry: Geometry,
        /// Position of this packet in the sender's zero-run list.
        seq: u64,
        /// Number of packets in the list.
        count: u32,
        /// Sorted, disjoint runs `(first block, count)`, each inside the image.
        runs: Ranges<'a>,
    },
    /// Symbols a receiver lacks, per FEC group.
    ParityRequest {
        /// Session id.
        session: u32,
        /// Image geometry.
        geometry: Geometry,
        /// Blocks per group.
        group_size: u32,
        /// `(group, symbols lacking)`, each group inside the image, each
        /// count 1..=group_size.
        needs: Ranges<'a>,
    },
    /// The sender's confirmation of the symbols it will send.
    Confirm {
        /// Session id.
        session: u32,
        /// Image geometry.
        geometry: Geometry,
        /// Repair round (the `pass` of the end packet that opened it).
        round: u64,
        /// Blocks per group.
        group_size: u32,
        /// Receivers the sender knows.
        receivers: u32,
        /// `CONFIRM_*` bits.
        flags: u32,
        /// `(group, symbols to be sent)`, 0 to 100 entries (none in a
        /// signed verdict).
        counts: Ranges<'a>,
        /// A signed verdict's [`VERDICT_LEN`] bytes ([`CONFIRM_SIGNED`]);
        /// empty otherwise.
        proof: &'a [u8],
    },
    /// A receiver's progress report.
    Progress {
        /// Session id.
        session: u32,
        /// Image geometry.
        geometry: Geometry,
        /// The report's content.
        report: Report,
    },
}

/// A receiver's progress report (kind 10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Blocks written (≤ block_count).
    pub blocks_done: u64,
    /// NACK and parity request packets sent so far.
    pub requests: u32,
    /// Session state as on the status page (0-3).
    pub state: u8,
    /// Error code as on the status page.
    pub error: u8,
    /// [`REPORT_HTTP`] when some of its bytes came from a web server.
    pub flags: u8,
    /// The receiver's session name, zero-padded UTF-8.
    pub name: [u8; REPORT_NAME_LEN],
}

impl Report {
    /// The name, up to the first zero byte, with anything but printable
    /// ASCII replaced (it comes from the network).
    pub fn name(&self) -> String {
        self.name
            .iter()
            .take_while(|&&b| b != 0)
            .map(|&b| if b.is_ascii_graphic() { b as char } else { '?' })
            .collect()
    }

    /// A name field holding (the first 32 bytes of) `name`.
    pub fn name_field(name: &str) -> [u8; REPORT_NAME_LEN] {
        let mut f = [0u8; REPORT_NAME_LEN];
        let n = name.len().min(REPORT_NAME_LEN);
        f[..n].copy_from_slice(&name.as_bytes()[..n]);
        f
    }
}

impl Packet<'_> {
    /// Session id of any packet.
    pub fn session(&self) -> u32 {
        match *self {
            Packet::Data { session, .. }
            | Packet::Announce { session, .. }
            | Packet::End { session, .. }
            | Packet::Nack { session, .. }
            | Packet::Fec { session, .. }
            | Packet::Manifest { session, .. }
            | Packet::SignedEnd { session, .. }
            | Packet::Zeros { session, .. }
            | Packet::ParityRequest { session, .. }
            | Packet::Confirm { session, .. }
            | Packet::Progress { session, .. } => session,
        }
    }

    /// Geometry of any packet.
    pub fn geometry(&self) -> Geometry {
        match *self {
            Packet::Data { geometry, .. }
            | Packet::Announce { geometry, .. }
            | Packet::End { geometry, .. }
            | Packet::Nack { geometry, .. }
            | Packet::Fec { geometry, .. }
            | Packet::Manifest { geometry, .. }
            | Packet::SignedEnd { geometry, .. }
            | Packet::Zeros { geometry, .. }
            | Packet::ParityRequest { geometry, .. }
            | Packet::Confirm { geometry, .. }
            | Packet::Progress { geometry, .. } => geometry,
        }
    }
}

pub(crate) fn be_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

pub(crate) fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(crate) fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(v)
}

/// Parse one datagram. Never panics, whatever the input.
pub fn parse(buf: &[u8]) -> Result<Packet<'_>, DropReason> {
    if buf.len() < HEADER_LEN {
        return Err(DropReason::Truncated);
    }
    if be_u32(buf, 0) != MAGIC {
        return Err(DropReason::BadMagic);
    }
    if buf[4] != VERSION {
        return Err(DropReason::BadVersion);
    }
    let kind = Kind::from_u8(buf[5]).ok_or(DropReason::BadKind)?;
    let payload_len = usize::from(be_u16(buf, 6));
    let payload = &buf[HEADER_LEN..];
    if payload.len() < payload_len {
        return Err(DropReason::Truncated);
    }
    if payload.len() != payload_len {
        return Err(DropReason::LengthMismatch);
    }
    let session = be_u32(buf, 8);
    let geometry = Geometry {
        block_size: be_u32(buf, 12),
        block_count: be_u64(buf, 24),
        total_size: be_u64(buf, 32),
    };
    let index = be_u64(buf, 16);
    if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&geometry.block_size) {
        return Err(DropReason::Oversize);
    }
    if !geometry.is_consistent() {
        return Err(DropReason::Inconsistent);
    }
    match kind {
        Kind::Data => {
            if payload_len > geometry.block_size as usize {
                return Err(DropReason::Oversize);
            }
            if index >= geometry.block_count {
                return Err(DropReason::OutOfRange);
            }
            if payload_len != geometry.block_len(index) {
                return Err(DropReason::Inconsistent);
            }
            Ok(Packet::Data {
                session,
                geometry,
                index,
                payload,
            })
        }
        Kind::Announce | Kind::End => {
            if payload_len != CONTROL_PAYLOAD_LEN {
                return Err(DropReason::BadControl);
            }
            let mut digest = [0u8; DIGEST_LEN];
            digest.copy_from_slice(&payload[..DIGEST_LEN]);
            let mut addr = [0u8; 16];
            addr.copy_from_slice(&payload[DIGEST_LEN + 20..DIGEST_LEN + 36]);
            let control = Control {
                digest,
                pass: be_u32(payload, DIGEST_LEN),
                passes: be_u32(payload, DIGEST_LEN + 4),
                flags: be_u32(payload, DIGEST_LEN + 8),
                repair_port: be_u16(payload, DIGEST_LEN + 12),
                fec_repair: be_u16(payload, DIGEST_LEN + 14),
                fec_group: be_u32(payload, DIGEST_LEN + 16),
                repair_addr: addr.into(),
            };
            if control.passes == 0 || control.fec_group > MAX_FEC_GROUP {
                return Err(DropReason::BadControl);
            }
            Ok(if kind == Kind::Announce {
                Packet::Announce {
                    session,
                    geometry,
                    control,
                }
            } else {
                Packet::End {
                    session,
                    geometry,
                    control,
                }
            })
        }
        Kind::Nack => Ok(Packet::Nack {
            session,
            geometry,
            ranges: ranges(payload, &geometry, MAX_NACK_RANGES, false)?,
        }),
        Kind::Zeros => {
            if payload_len < ZEROS_PREFIX_LEN {
                return Err(DropReason::BadControl);
            }
            let count = be_u32(payload, 0);
            if u64::from(count) <= index {
                return Err(DropReason::OutOfRange);
            }
            Ok(Packet::Zeros {
                session,
                geometry,
                seq: index,
                count,
                runs: ranges(
                    &payload[ZEROS_PREFIX_LEN..],
                    &geometry,
                    max_zero_runs(geometry.block_size),
                    true,
                )?,
            })
        }
        Kind::Fec => {
            if payload_len != FEC_PREFIX_LEN + geometry.block_size as usize {
                return Err(DropReason::BadControl);
            }
            let group_size = be_u32(payload, 0);
            if group_size == 0 || group_size > MAX_FEC_GROUP {
                return Err(DropReason::BadControl);
            }
            if index.saturating_mul(u64::from(group_size)) >= geometry.block_count {
                return Err(DropReason::OutOfRange);
            }
            Ok(Packet::Fec {
                session,
                geometry,
                group: index,
                group_size,
                symbol: &payload[4..],
            })
        }
        Kind::Manifest => {
            if payload_len == 0 || payload_len > MAX_MANIFEST_PAYLOAD {
                return Err(DropReason::BadControl);
            }
            Ok(Packet::Manifest {
                session,
                geometry,
                index,
                payload,
            })
        }
        Kind::SignedEnd => {
            if payload_len != manifest::SIGNED_END_LEN {
                return Err(DropReason::BadControl);
            }
            Ok(Packet::SignedEnd {
                session,
                geometry,
                payload,
            })
        }
        Kind::ParityRequest | Kind::Confirm => {
            let prefix = if kind == Kind::Confirm {
                CONFIRM_PREFIX_LEN
            } else {
                PARITY_PREFIX_LEN
            };
            if payload_len < prefix {
                return Err(DropReason::BadControl);
            }
            let group_size = be_u32(payload, 0);
            let body = &payload[prefix..];
            if kind == Kind::Confirm && be_u32(payload, 8) & CONFIRM_SIGNED != 0 {
                // A signed verdict: no entries, the proof instead.
                let flags = be_u32(payload, 8);
                if flags & CONFIRM_TOO_SLOW == 0
                    || body.len() != VERDICT_LEN
                    || group_size == 0
                    || group_size > MAX_FEC_GROUP
                {
                    return Err(DropReason::BadControl);
                }
                return Ok(Packet::Confirm {
                    session,
                    geometry,
                    round: index,
                    group_size,
                    receivers: be_u32(payload, 4),
                    flags,
                    counts: Ranges(&[]),
                    proof: body,
                });
            }
            let n = body.len() / NACK_RANGE_LEN;
            let min = usize::from(kind == Kind::ParityRequest);
            if group_size == 0
                || group_size > MAX_FEC_GROUP
                || body.len() % NACK_RANGE_LEN != 0
                || n < min
                || n > MAX_PARITY_ENTRIES
            {
                return Err(DropReason::BadControl);
            }
            let entries = Ranges(body);
            let groups = geometry.block_count.div_ceil(u64::from(group_size));
            if !entries
                .iter()
                .all(|(g, count)| g < groups && (1..=group_size).contains(&count))
            {
                return Err(DropReason::OutOfRange);
            }
            Ok(if kind == Kind::Confirm {
                Packet::Confirm {
                    session,
                    geometry,
                    round: index,
                    group_size,
                    receivers: be_u32(payload, 4),
                    flags: be_u32(payload, 8),
                    counts: entries,
                    proof: &[],
                }
            } else {
                Packet::ParityRequest {
                    session,
                    geometry,
                    group_size,
                    needs: entries,
                }
            })
        }
        Kind::Progress => {
            if payload_len != REPORT_PAYLOAD_LEN {
                return Err(DropReason::BadControl);
            }
            let mut name = [0u8; REPORT_NAME_LEN];
            name.copy_from_slice(&payload[16..]);
            let report = Report {
                blocks_done: be_u64(payload, 0),
                requests: be_u32(payload, 8),
                state: payload[12],
                error: payload[13],
                flags: payload[14],
                name,
            };
            if report.blocks_done > geometry.block_count || report.state > 3 {
                return Err(DropReason::BadControl);
            }
            Ok(Packet::Progress {
                session,
                geometry,
                report,
            })
        }
    }
}

/// Largest manifest packet payload (a head or a page).
pub const MAX_MANIFEST_PAYLOAD: usize = if manifest::MAX_PAGE_LEN > 1 + manifest::HEAD_LEN {
    manifest::MAX_PAGE_LEN
} else {
    1 + manifest::HEAD_LEN
};

/// Encode a packet of `kind` with header index `index` and `payload` as is
/// (manifest and signed end packets).
pub fn encode_raw(
    kind: Kind,
    session: u32,
    geometry: &Geometry,
    index: u64,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_LEN + payload.len()];
    write_header(&mut out, kind, session, geometry, index, payload.len());
    out[HEADER_LEN..].copy_from_slice(payload);
    out
}

/// Check the block ranges of a NACK or zero-run payload: 1 to `max`
/// ranges, none empty, each inside the image, and (`sorted`) in increasing
/// order without overlap.
fn ranges<'a>(
    payload: &'a [u8],
    geometry: &Geometry,
    max: usize,
    sorted: bool,
) -> Result<Ranges<'a>, DropReason> {
    let n = payload.len() / NACK_RANGE_LEN;
    if payload.len() % NACK_RANGE_LEN != 0 || n == 0 || n > max {
        return Err(DropReason::BadControl);
    }
    let ranges = Ranges(payload);
    let mut floor = 0;
    let valid = ranges.iter().all(|(first, count)| {
        let end = first.checked_add(u64::from(count));
        let ok = count > 0
            && end.is_some_and(|end| end <= geometry.block_count)
            && (!sorted || first >= floor);
        floor = end.unwrap_or(u64::MAX);
        ok
    });
    if !valid {
        return Err(DropReason::OutOfRange);
    }
    Ok(ranges)
}

/// Most runs in one zero-run packet: the payload stays within a block, so
/// it fits every frame the session's data packets fit.
pub fn max_zero_runs(block_size: u32) -> usize {
    (block_size as usize - ZEROS_PREFIX_LEN) / NACK_RANGE_LEN
}

fn write_header(
    out: &mut [u8],
    kind: Kind,
    session: u32,
    geometry: &Geometry,
    index: u64,
    payload_len: usize,
) {
    out[0..4].copy_from_slice(&MAGIC.to_be_bytes());
    out[4] = VERSION;
    out[5] = kind as u8;
    out[6..8].copy_from_slice(&(payload_len as u16).to_be_bytes());
    out[8..12].copy_from_slice(&session.to_be_bytes());
    out[12..16].copy_from_slice(&geometry.block_size.to_be_bytes());
    out[16..24].copy_from_slice(&index.to_be_bytes());
    out[24..32].copy_from_slice(&geometry.block_count.to_be_bytes());
    out[32..40].copy_from_slice(&geometry.total_size.to_be_bytes());
}

/// Write the header of data packet `index` into `out[..HEADER_LEN]`; the
/// caller puts the block bytes behind it. Returns the datagram length.
pub fn encode_data_header(out: &mut [u8], session: u32, geometry: &Geometry, index: u64) -> usize {
    let len = geometry.block_len(index);
    write_header(out, Kind::Data, session, geometry, index, len);
    HEADER_LEN + len
}

/// Encode a complete data packet (header and block) into a new buffer.
pub fn encode_data(session: u32, geometry: &Geometry, index: u64, block: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_LEN + block.len()];
    write_header(&mut out, Kind::Data, session, geometry, index, block.len());
    out[HEADER_LEN..].copy_from_slice(block);
    out
}

/// Encode an announce or end packet.
pub fn encode_control(kind: Kind, session: u32, geometry: &Geometry, control: &Control) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_LEN + CONTROL_PAYLOAD_LEN];
    write_header(&mut out, kind, session, geometry, 0, CONTROL_PAYLOAD_LEN);
    let p = &mut out[HEADER_LEN..];
    p[..DIGEST_LEN].copy_from_slice(&control.digest);
    let d = DIGEST_LEN;
    p[d..d + 4].copy_from_slice(&control.pass.to_be_bytes());
    p[d + 4..d + 8].copy_from_slice(&control.passes.to_be_bytes());
    p[d + 8..d + 12].copy_from_slice(&control.flags.to_be_bytes());
    p[d + 12..d + 14].copy_from_slice(&control.repair_port.to_be_bytes());
    p[d + 14..d + 16].copy_from_slice(&control.fec_repair.to_be_bytes());
    p[d + 16..d + 20].copy_from_slice(&control.fec_group.to_be_bytes());
    p[d + 20..d + 36].copy_from_slice(&control.repair_addr.octets());
    out
}

/// One packet of `kind` whose payload is `prefix` and then `ranges` as
/// 12-byte `(u64, u32)` pairs (NACK ranges, zero runs, or the `(group,
/// count)` entries of parity requests and confirmations).
fn encode_ranges(
    kind: Kind,
    session: u32,
    geometry: &Geometry,
    index: u64,
    prefix: &[u8],
    ranges: &[(u64, u32)],
) -> Vec<u8> {
    let len = prefix.len() + ranges.len() * NACK_RANGE_LEN;
    let mut out = Vec::with_capacity(HEADER_LEN + len);
    out.resize(HEADER_LEN, 0);
    write_header(&mut out, kind, session, geometry, index, len);
    out.extend_from_slice(prefix);
    for (first, count) in ranges {
        out.extend_from_slice(&first.to_be_bytes());
        out.extend_from_slice(&count.to_be_bytes());
    }
    out
}

/// Encode NACK packets for `ranges` of missing blocks, at most
/// `MAX_NACK_RANGES` ranges per packet.
pub fn encode_nacks(session: u32, geometry: &Geometry, ranges: &[(u64, u32)]) -> Vec<Vec<u8>> {
    ranges
        .chunks(MAX_NACK_RANGES)
        .map(|chunk| encode_ranges(Kind::Nack, session, geometry, 0, &[], chunk))
        .collect()
}

/// Encode the zero-run list: `runs` (sorted, disjoint, `(first, count)`)
/// cut into packets of at most [`max_zero_runs`] runs, packet `i` carrying
/// `block_index` `i` and the number of packets.
pub fn encode_zeros(session: u32, geometry: &Geometry, runs: &[(u64, u32)]) -> Vec<Vec<u8>> {
    encode_more_zeros(session, geometry, 0, runs)
}

/// Encode `runs` as the packets of a zero-run list that grows while the
/// sender reads the image: they follow the `seq` packets sent before, and
/// carry the number of packets in the list so far (`seq` plus theirs).
pub fn encode_more_zeros(
    session: u32,
    geometry: &Geometry,
    seq: u64,
    runs: &[(u64, u32)],
) -> Vec<Vec<u8>> {
    let chunks = runs.chunks(max_zero_runs(geometry.block_size));
    let count = ((seq + chunks.len() as u64).min(u64::from(u32::MAX)) as u32).to_be_bytes();
    chunks
        .enumerate()
        .map(|(i, chunk)| {
            encode_ranges(
                Kind::Zeros,
                session,
                geometry,
                seq + i as u64,
                &count,
                chunk,
            )
        })
        .collect()
}

/// Encode parity requests: `needs` are `(group, symbols lacking)` for
/// groups of `group_size` blocks, at most 100 per packet.
pub fn encode_parity_requests(
    session: u32,
    geometry: &Geometry,
    group_size: u32,
    needs: &[(u64, u32)],
) -> Vec<Vec<u8>> {
    needs
        .chunks(MAX_PARITY_ENTRIES)
        .map(|chunk| {
            let prefix = group_size.to_be_bytes();
            encode_ranges(Kind::ParityRequest, session, geometry, 0, &prefix, chunk)
        })
        .collect()
}

/// What a confirmation says besides its entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfirmHeader {
    /// Repair round it belongs to.
    pub round: u64,
    /// Blocks per FEC group.
    pub group_size: u32,
    /// Receivers the sender knows.
    pub receivers: u32,
    /// `CONFIRM_*` bits.
    pub flags: u32,
}

/// Encode one confirmation with at most 100 `(group, symbols)` entries.
pub fn encode_confirm(
    session: u32,
    geometry: &Geometry,
    h: &ConfirmHeader,
    counts: &[(u64, u32)],
) -> Vec<u8> {
    let mut prefix = [0u8; CONFIRM_PREFIX_LEN];
    prefix[..4].copy_from_slice(&h.group_size.to_be_bytes());
    prefix[4..8].copy_from_slice(&h.receivers.to_be_bytes());
    prefix[8..].copy_from_slice(&h.flags.to_be_bytes());
    let counts = &counts[..counts.len().min(MAX_PARITY_ENTRIES)];
    encode_ranges(Kind::Confirm, session, geometry, h.round, &prefix, counts)
}

/// Encode a signed "too slow" verdict: `h.flags` gets
/// [`CONFIRM_TOO_SLOW`] and [`CONFIRM_SIGNED`], `proof` is the
/// [`VERDICT_LEN`] bytes of `Manifest::sign_verdict`.
pub fn encode_verdict(
    session: u32,
    geometry: &Geometry,
    h: &ConfirmHeader,
    proof: &[u8],
) -> Vec<u8> {
    let mut payload = Vec::with_capacity(CONFIRM_PREFIX_LEN + proof.len());
    payload.extend_from_slice(&h.group_size.to_be_bytes());
    payload.extend_from_slice(&h.receivers.to_be_bytes());
    payload.extend_from_slice(&(h.flags | CONFIRM_TOO_SLOW | CONFIRM_SIGNED).to_be_bytes());
    payload.extend_from_slice(proof);
    encode_raw(Kind::Confirm, session, geometry, h.round, &payload)
}

/// Encode a progress report.
pub fn encode_progress(session: u32, geometry: &Geometry, r: &Report) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_LEN + REPORT_PAYLOAD_LEN];
    write_header(
        &mut out,
        Kind::Progress,
        session,
        geometry,
        0,
        REPORT_PAYLOAD_LEN,
    );
    let p = &mut out[HEADER_LEN..];
    p[..8].copy_from_slice(&r.blocks_done.to_be_bytes());
    p[8..12].copy_from_slice(&r.requests.to_be_bytes());
    p[12] = r.state;
    p[13] = r.error;
    p[14] = r.flags;
    p[16..].copy_from_slice(&r.name);
    out
}

/// Encode a FEC packet: `symbol` is a serialized RaptorQ encoding packet
/// (4-byte payload id and `block_size` bytes).
pub fn encode_fec(
    session: u32,
    geometry: &Geometry,
    group: u64,
    group_size: u32,
    symbol: &[u8],
) -> Vec<u8> {
    let len = 4 + symbol.len();
    let mut out = vec![0u8; HEADER_LEN + len];
    write_header(&mut out, Kind::Fec, session, geometry, group, len);
    out[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&group_size.to_be_bytes());
    out[HEADER_LEN + 4..].copy_from_slice(symbol);
    out
}

/// Lower-case hex of a digest.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The `N` bytes written as 2N hex digits in `s` (either case), if it is that.
pub fn from_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.as_bytes();
    if s.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        *o = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo() -> Geometry {
        Geometry::new(10_000, 1400)
    }

    fn control() -> Control {
        Control {
            flags: FLAG_REPAIR,
            repair_port: 7000,
            fec_repair: 8,
            fec_group: 64,
            repair_addr: std::net::Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped(),
            ..Control::new([7; DIGEST_LEN], 1, 3)
        }
    }

    #[test]
    fn geometry_of_uneven_image() {
        let g = geo();
        assert_eq!(g.block_count, 8);
        assert_eq!(g.block_len(0), 1400);
        assert_eq!(g.block_len(7), 10_000 - 7 * 1400);
        assert_eq!(g.offset(3), 4200);
    }

    #[test]
    fn block_size_for_common_mtus() {
        assert_eq!(block_size_for_mtu(1500), 1400);
        assert_eq!(block_size_for_mtu(9000), 8192);
        assert_eq!(block_size_for_mtu(1400), 1328);
        assert_eq!(block_size_for_mtu(100), MIN_BLOCK_SIZE);
    }

    #[test]
    fn data_round_trip() {
        let g = geo();
        let block: Vec<u8> = (0..g.block_len(7)).map(|i| i as u8).collect();
        let pkt = encode_data(42, &g, 7, &block);
        assert_eq!(
            parse(&pkt),
            Ok(Packet::Data {
                session: 42,
                geometry: g,
                index: 7,
                payload: &block
            })
        );
        let mut hdr = [0u8; HEADER_LEN];
        assert_eq!(
            encode_data_header(&mut hdr, 42, &g, 7),
            HEADER_LEN + block.len()
        );
        assert_eq!(&hdr[..], &pkt[..HEADER_LEN]);
    }

    #[test]
    fn control_round_trip() {
        let g = geo();
        for kind in [Kind::Announce, Kind::End] {
            let pkt = encode_control(kind, 9, &g, &control());
            let parsed = parse(&pkt).unwrap();
            assert_eq!(parsed.session(), 9);
            assert_eq!(parsed.geometry(), g);
            match (kind, parsed) {
                (Kind::Announce, Packet::Announce { control: c, .. })
                | (Kind::End, Packet::End { control: c, .. }) => assert_eq!(c, control()),
                other => panic!("wrong kind {other:?}"),
            }
        }
    }

    #[test]
    fn repair_address_and_flags() {
        let c = control();
        assert_eq!(c.repair_to(), Some("10.1.2.3:7000".parse().unwrap()));
        assert_eq!(Control::new([0; 32], 0, 1).repair_to(), None);
    }

    #[test]
    fn nack_and_fec_round_trip() {
        let g = geo();
        let ranges: Vec<(u64, u32)> = (0..150).map(|i| (i % 8, 1)).collect();
        let pkts = encode_nacks(3, &g, &ranges);
        assert_eq!(pkts.len(), 2);
        let mut back = Vec::new();
        for p in &pkts {
            match parse(p).unwrap() {
                Packet::Nack {
                    session, ranges, ..
                } => {
                    assert_eq!(session, 3);
                    back.extend(ranges.iter());
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(back, ranges);
        let sym = vec![5u8; 4 + 1400];
        match parse(&encode_fec(3, &g, 1, 4, &sym)).unwrap() {
            Packet::Fec {
                group,
                group_size,
                symbol,
                ..
            } => {
                assert_eq!((group, group_size), (1, 4));
                assert_eq!(symbol, &sym[..]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn zero_runs_round_trip_in_numbered_packets() {
        let g = Geometry::new(1000 * 100, 100);
        assert_eq!(max_zero_runs(100), 8);
        let runs: Vec<(u64, u32)> = (0..20).map(|i| (i * 50, 3)).collect();
        let pkts = encode_zeros(9, &g, &runs);
        assert_eq!(pkts.len(), 3);
        let mut back = Vec::new();
        for (i, p) in pkts.iter().enumerate() {
            assert!(p.len() - HEADER_LEN <= 100, "fits a block");
            match parse(p).unwrap() {
                Packet::Zeros {
                    session,
                    seq,
                    count,
                    runs,
                    ..
                } => {
                    assert_eq!((session, seq, count), (9, i as u64, 3));
                    back.extend(runs.iter());
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(back, runs);
        assert!(encode_zeros(9, &g, &[]).is_empty());
    }

    #[test]
    fn malformed_zero_runs_are_rejected() {
        let g = geo();
        let one = |runs: &[(u64, u32)]| encode_zeros(1, &g, runs).remove(0);
        let cases = [
            (one(&[(7, 2)]), DropReason::OutOfRange),
            (one(&[(0, 0)]), DropReason::OutOfRange),
            (one(&[(4, 2), (1, 1)]), DropReason::OutOfRange),
            (one(&[(0, 3), (2, 1)]), DropReason::OutOfRange),
            (one(&[(u64::MAX, 2)]), DropReason::OutOfRange),
            (
                {
                    let mut p = one(&[(0, 1)]);
                    p[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&0u32.to_be_bytes());
                    p
                },
                DropReason::OutOfRange,
            ),
            (
                {
                    let mut p = one(&[(0, 1)]);
                    p.pop();
                    p[6..8].copy_from_slice(&15u16.to_be_bytes());
                    p
                },
                DropReason::BadControl,
            ),
            (
                encode_ranges(Kind::Zeros, 1, &g, 0, &[0, 0, 0, 1], &[]),
                DropReason::BadControl,
            ),
        ];
        for (i, (pkt, want)) in cases.iter().enumerate() {
            assert_eq!(parse(pkt), Err(*want), "case {i}");
        }
        assert!(parse(&one(&[(0, 2), (2, 6)])).is_ok(), "touching runs");
    }

    #[test]
    fn parity_confirm_and_progress_round_trip() {
        let g = Geometry::new(1400 * 300, 1400);
        let needs: Vec<(u64, u32)> = (0..130).map(|i| (i % 5, 1 + i as u32 % 64)).collect();
        let pkts = encode_parity_requests(4, &g, 64, &needs);
        assert_eq!(pkts.len(), 2);
        let mut back = Vec::new();
        for p in &pkts {
            match parse(p).unwrap() {
                Packet::ParityRequest {
                    group_size, needs, ..
                } => {
                    assert_eq!(group_size, 64);
                    back.extend(needs.iter());
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(back, needs);
        let h = ConfirmHeader {
            round: 3,
            group_size: 64,
            receivers: 24,
            flags: 0,
        };
        match parse(&encode_confirm(4, &g, &h, &[(4, 7)])).unwrap() {
            Packet::Confirm {
                round,
                group_size,
                receivers,
                flags,
                counts,
                ..
            } => {
                assert_eq!((round, group_size, receivers, flags), (3, 64, 24, 0));
                assert_eq!(counts.iter().collect::<Vec<_>>(), vec![(4, 7)]);
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&encode_confirm(4, &g, &h, &[])).is_ok());
        let r = Report {
            blocks_done: 299,
            requests: 5,
            state: 1,
            error: 0,
            flags: REPORT_HTTP,
            name: Report::name_field("lab-pc-07\n"),
        };
        match parse(&encode_progress(4, &g, &r)).unwrap() {
            Packet::Progress { report, .. } => {
                assert_eq!(report, r);
                assert_eq!(report.name(), "lab-pc-07?");
            }
            other => panic!("{other:?}"),
        }
        // Out of range: group past the image, count 0 or above the group,
        // no entry in a request, too many blocks done, unknown state.
        for bad in [
            encode_parity_requests(4, &g, 64, &[(5, 1)]).remove(0),
            encode_parity_requests(4, &g, 64, &[(0, 0)]).remove(0),
            encode_parity_requests(4, &g, 64, &[(0, 65)]).remove(0),
        ] {
            assert_eq!(parse(&bad), Err(DropReason::OutOfRange));
        }
        let empty = encode_ranges(Kind::ParityRequest, 4, &g, 0, &64u32.to_be_bytes(), &[]);
        assert_eq!(parse(&empty), Err(DropReason::BadControl));
        let zero_group = ConfirmHeader { group_size: 0, ..h };
        assert_eq!(
            parse(&encode_confirm(4, &g, &zero_group, &[])),
            Err(DropReason::BadControl)
        );
        for r in [
            Report {
                blocks_done: 301,
                ..r
            },
            Report { state: 4, ..r },
        ] {
            assert_eq!(
                parse(&encode_progress(4, &g, &r)),
                Err(DropReason::BadControl)
            );
        }
    }

    #[test]
    fn group_size_estimate_in_flags() {
        let c = |n| Control {
            flags: FLAG_REPAIR | gsize_flags(n),
            ..Control::new([0; 32], 0, 1)
        };
        assert_eq!(c(0).gsize_log2(), 0);
        assert_eq!(c(1).gsize_log2(), 1);
        assert_eq!(c(24).gsize_log2(), 5);
        assert_eq!(c(24).flags & 0xff, FLAG_REPAIR);
        assert_eq!(c(24).parity_group(), None);
    }

    fn data_pkt() -> Vec<u8> {
        encode_data(1, &geo(), 0, &[0xAB; 1400])
    }

    #[test]
    fn rejects_each_malformed_case() {
        let g = geo();
        let cases: Vec<(Vec<u8>, DropReason)> = vec![
            (vec![], DropReason::Truncated),
            (data_pkt()[..HEADER_LEN - 1].to_vec(), DropReason::Truncated),
            (
                data_pkt()[..HEADER_LEN + 10].to_vec(),
                DropReason::Truncated,
            ),
            (
                {
                    let mut p = data_pkt();
                    p[0] = b'Y';
                    p
                },
                DropReason::BadMagic,
            ),
            (
                {
                    let mut p = data_pkt();
                    p[4] = 1;
                    p
                },
                DropReason::BadVersion,
            ),
            (
                {
                    let mut p = data_pkt();
                    p[5] = 99;
                    p
                },
                DropReason::BadKind,
            ),
            (
                {
                    let mut p = data_pkt();
                    p.push(0);
                    p
                },
                DropReason::LengthMismatch,
            ),
            (
                {
                    let mut p = data_pkt();
                    p[12..16].copy_from_slice(&(MAX_BLOCK_SIZE + 1).to_be_bytes());
                    p
                },
                DropReason::Oversize,
            ),
            (
                {
                    let mut p = data_pkt();
                    p[12..16].copy_from_slice(&8u32.to_be_bytes());
                    p
                },
                DropReason::Oversize,
            ),
            (
                {
                    let mut p = data_pkt();
                    p[16..24].copy_from_slice(&g.block_count.to_be_bytes());
                    p
                },
                DropReason::OutOfRange,
            ),
            (
                {
                    let mut p = data_pkt();
                    p[32..40].copy_from_slice(&(g.total_size * 2).to_be_bytes());
                    p
                },
                DropReason::Inconsistent,
            ),
            (
                // A full-size payload claimed for the short last block.
                {
                    let mut p = data_pkt();
                    p[16..24].copy_from_slice(&7u64.to_be_bytes());
                    p
                },
                DropReason::Inconsistent,
            ),
            (
                // Geometry claiming a payload larger than the block size.
                {
                    let mut p = encode_data(1, &Geometry::new(100_000, 1000), 0, &[0; 1000]);
                    let extra = [0u8; 8];
                    p.extend_from_slice(&extra);
                    p[6..8].copy_from_slice(&1008u16.to_be_bytes());
                    p
                },
                DropReason::Oversize,
            ),
            (
                {
                    let mut p = encode_control(Kind::End, 1, &g, &control());
                    p.truncate(p.len() - 1);
                    p[6..8].copy_from_slice(&((CONTROL_PAYLOAD_LEN - 1) as u16).to_be_bytes());
                    p
                },
                DropReason::BadControl,
            ),
            (
                encode_control(
                    Kind::Announce,
                    1,
                    &g,
                    &Control {
                        passes: 0,
                        ..control()
                    },
                ),
                DropReason::BadControl,
            ),
            (
                encode_nacks(1, &g, &[(7, 2)]).remove(0),
                DropReason::OutOfRange,
            ),
            (
                encode_nacks(1, &g, &[(0, 0)]).remove(0),
                DropReason::OutOfRange,
            ),
            (encode_fec(1, &g, 0, 64, &[0; 10]), DropReason::BadControl),
            (encode_fec(1, &g, 2, 4, &[0; 1404]), DropReason::OutOfRange),
            (encode_fec(1, &g, 0, 0, &[0; 1404]), DropReason::BadControl),
        ];
        for (i, (pkt, want)) in cases.iter().enumerate() {
            assert_eq!(parse(pkt), Err(*want), "case {i}");
        }
    }

    #[test]
    fn every_truncation_of_a_valid_packet_is_rejected() {
        let pkt = data_pkt();
        for len in 0..pkt.len() {
            assert!(parse(&pkt[..len]).is_err(), "len {len}");
        }
    }

    #[test]
    fn hex_round_trip() {
        let b = [0u8, 1, 0xab, 0xFF];
        assert_eq!(from_hex::<4>(&hex(&b)), Some(b));
        assert_eq!(from_hex::<4>("0001ABff"), Some(b));
        assert_eq!(from_hex::<4>("0001abf"), None);
        assert_eq!(from_hex::<4>("0001abfg"), None);
    }

    #[test]
    fn reason_indices_are_stable_and_named() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
            assert!(!r.name().is_empty());
        }
    }
}
