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

mod consts;
mod encode;
mod geometry;
mod kind;
mod packet;
mod parse;
#[cfg(test)]
mod tests;

pub use consts::*;
pub use encode::*;
pub use geometry::*;
pub use kind::*;
pub use packet::*;
pub use parse::*;

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
