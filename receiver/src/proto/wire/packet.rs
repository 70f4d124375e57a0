//! A parsed packet, borrowing its datagram.

use super::*;

/// The block ranges of a NACK or zero-run packet, read in place; also the
/// `(group, count)` entries of parity requests and confirmations, which share
/// the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ranges<'a>(pub(super) &'a [u8]);

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
        /// The receiver's per-session token (header block index): the
        /// sender keeps one row per address, port and token, so a packet
        /// forged in a receiver's name but without its token cannot change
        /// that receiver's row (0 from a receiver that sends none).
        token: u64,
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
        /// The payload without its signature (what a signed session's
        /// signature covers, see [`crate::proto::manifest`]).
        body: &'a [u8],
        /// The Ed25519 signature a signed session's sender puts after the
        /// runs; None in an unsigned session.
        signature: Option<&'a [u8]>,
    },
    /// Symbols a receiver lacks, per FEC group.
    ParityRequest {
        /// Session id.
        session: u32,
        /// Image geometry.
        geometry: Geometry,
        /// The receiver's per-session token (header block index): the
        /// sender keeps one row per address, port and token, so a packet
        /// forged in a receiver's name but without its token cannot change
        /// that receiver's row (0 from a receiver that sends none).
        token: u64,
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
        /// The receiver's per-session token (header block index): the
        /// sender keeps one row per address, port and token, so a packet
        /// forged in a receiver's name but without its token cannot change
        /// that receiver's row (0 from a receiver that sends none).
        token: u64,
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
