//! Packet kinds, and why a packet is dropped.

use std::fmt;

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
    pub(super) fn from_u8(v: u8) -> Option<Kind> {
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
