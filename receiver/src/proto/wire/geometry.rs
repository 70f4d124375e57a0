//! The header's geometry, and the control block of announces and ends.

use super::*;

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

    /// The sender's count of its receivers lacking much, if it gave one
    /// ([`FLAG_FLEET`]; unsigned sessions: a hint anyone can forge).
    pub fn lacking(&self) -> Option<Lacking> {
        (self.flags & FLAG_FLEET != 0).then(|| Lacking {
            receivers: (self.flags >> LACKING_SHIFT) & 0xff,
            share: f64::from((self.flags >> LACKING_SHARE_SHIFT) & 0xff) / 255.0,
        })
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

/// What a sender says of the receivers lacking much ([`Control::lacking`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lacking {
    /// How many (255: that many or more).
    pub receivers: u32,
    /// Their share of the receivers that hear the multicast (0..=1,
    /// rounded up to 255ths).
    pub share: f64,
}

/// Control flags for `lacking` receivers lacking much of `hearing` that
/// hear the multicast ([`FLAG_FLEET`] and bits 16-31); none while no
/// receiver is known to hear it.
pub fn fleet_flags(lacking: u64, hearing: u64) -> u32 {
    if hearing == 0 {
        return 0;
    }
    let lacking = lacking.min(hearing);
    let share = (lacking * 255).div_ceil(hearing) as u32;
    FLAG_FLEET | (lacking.min(255) as u32) << LACKING_SHIFT | share << LACKING_SHARE_SHIFT
}

/// Encode a group-size estimate into control flags bits 8-15.
pub fn gsize_flags(receivers: u64) -> u32 {
    (u64::BITS - receivers.leading_zeros()).min(255) << GSIZE_SHIFT
}
