//! udpcast's wire format (udp-sender and udp-receiver 20120424, Debian's):
//! the opcodes, the datagrams a receiver parses and the answers it sends.
//! No I/O: the receiver that speaks it is [`crate::receive::udpcast`];
//! [`fec`] is udpcast's erasure code.

use std::net::Ipv4Addr;

use crate::proto::wire::DropReason;

pub mod fec;

/// udpcast's default port base: receivers use it, the sender `portbase + 1`.
pub const DEFAULT_PORTBASE: u16 = 9000;
/// Most blocks in one slice (udpcast's MAX_SLICE_SIZE).
pub const MAX_SLICE_BLOCKS: usize = 1024;
/// Most clients of one sender (bits of the REQACK ready map).
pub const MAX_CLIENTS: u32 = 1024;
/// Most FEC stripes of one slice (udpcast's MAX_FEC_INTERLEAVE).
pub const MAX_STRIPES: usize = 256;
/// Bytes of a slice's block map in CMD_RETRANSMIT.
pub const MAP_BYTES: usize = MAX_SLICE_BLOCKS / 8;
/// Header of CMD_DATA, CMD_FEC and CMD_REQACK.
pub const DATA_HEADER: usize = 16;
/// Opcodes (udpcast's `enum opCode`, plus the out-of-sequence CMD_HELLO).
pub mod op {
    /// The slice is complete (receiver).
    pub const OK: u16 = 0;
    /// Blocks a slice lacks (receiver).
    pub const RETRANSMIT: u16 = 1;
    /// A receiver asks to join.
    pub const CONNECT_REQ: u16 = 3;
    /// A receiver leaves.
    pub const DISCONNECT: u16 = 4;
    /// The sender asks who has a slice.
    pub const REQACK: u16 = 6;
    /// The sender takes a receiver.
    pub const CONNECT_REPLY: u16 = 7;
    /// A data block.
    pub const DATA: u16 = 8;
    /// A forward-error-correction block.
    pub const FEC: u16 = 9;
    /// The sender is up (new generation).
    pub const HELLO_NEW: u16 = 10;
    /// The sender is up (streaming mode).
    pub const HELLO_STREAMING: u16 = 11;
    /// The sender is up (out of sequence).
    pub const HELLO: u16 = 0x0500;
}

/// The sender speaks the "new generation" protocol (capabilities, multicast).
pub const CAP_NEW_GEN: u32 = 0x01;
/// Network byte order.
pub const CAP_BIG_ENDIAN: u32 = 0x08;
/// Asynchronous transfer: receivers never answer.
pub const CAP_ASYNC: u32 = 0x20;
/// What this receiver announces, as udp-receiver does. udpcast defines a
/// CAP_FEC bit (0x04) but neither side announces it: the sender decides on
/// FEC alone (`--fec`), and every receiver must handle CMD_FEC.
pub const RECEIVER_CAPS: u32 = CAP_NEW_GEN | CAP_BIG_ENDIAN;

/// A datagram from the sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    /// CMD_DATA: block `block` of slice `slice`, which holds `bytes` bytes.
    Data {
        /// Slice number.
        slice: u32,
        /// Block within the slice.
        block: u16,
        /// Bytes in the whole slice.
        bytes: u32,
        /// The block (the last one of the last slice may be short).
        payload: &'a [u8],
    },
    /// CMD_FEC: forward-error-correction block `block` of slice `slice`:
    /// row `block / stripes` of stripe `block % stripes`.
    Fec {
        /// Stripes the slice is dealt into.
        stripes: u16,
        /// Slice number.
        slice: u32,
        /// FEC block number within the slice.
        block: u16,
        /// Bytes in the whole slice.
        bytes: u32,
        /// The FEC block (a full block).
        payload: &'a [u8],
    },
    /// CMD_REQACK: the sender asks who has slice `slice` complete.
    ReqAck {
        /// Slice number.
        slice: u32,
        /// Bytes in the slice; 0 marks the end of the transfer.
        bytes: u32,
        /// Retransmission round, echoed in CMD_RETRANSMIT.
        rxmit: u32,
        /// Bit map of the clients that already answered OK.
        ready: &'a [u8],
    },
    /// CMD_HELLO / CMD_HELLO_NEW / CMD_HELLO_STREAMING: the sender is up.
    Hello {
        /// Sender capabilities.
        caps: u32,
    },
    /// CMD_CONNECT_REPLY: our client number and the session parameters.
    ConnectReply {
        /// Client number (`u32::MAX`: refused).
        client: u32,
        /// Block size in bytes.
        block_size: u32,
        /// Sender capabilities.
        caps: u32,
        /// Multicast address the data goes to.
        data_addr: Ipv4Addr,
    },
    /// Any other opcode.
    Other(u16),
}

pub(crate) fn be16(d: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([d[at], d[at + 1]])
}

pub(crate) fn be32(d: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([d[at], d[at + 1], d[at + 2], d[at + 3]])
}

/// Parse one datagram from the sender.
pub fn parse(d: &[u8]) -> std::result::Result<Message<'_>, DropReason> {
    let need = |n: usize| {
        if d.len() < n {
            Err(DropReason::Truncated)
        } else {
            Ok(())
        }
    };
    need(2)?;
    Ok(match be16(d, 0) {
        op::DATA => {
            need(DATA_HEADER)?;
            Message::Data {
                slice: be32(d, 4),
                block: be16(d, 8),
                bytes: be32(d, 12),
                payload: &d[DATA_HEADER..],
            }
        }
        op::FEC => {
            need(DATA_HEADER)?;
            Message::Fec {
                stripes: be16(d, 2),
                slice: be32(d, 4),
                block: be16(d, 8),
                bytes: be32(d, 12),
                payload: &d[DATA_HEADER..],
            }
        }
        op::REQACK => {
            need(DATA_HEADER)?;
            Message::ReqAck {
                slice: be32(d, 4),
                bytes: be32(d, 8),
                rxmit: be32(d, 12),
                ready: &d[DATA_HEADER..],
            }
        }
        op::HELLO | op::HELLO_NEW | op::HELLO_STREAMING => {
            need(8)?;
            Message::Hello { caps: be32(d, 4) }
        }
        op::CONNECT_REPLY => {
            need(20)?;
            Message::ConnectReply {
                client: be32(d, 4),
                block_size: be32(d, 8),
                caps: be32(d, 12),
                data_addr: Ipv4Addr::new(d[16], d[17], d[18], d[19]),
            }
        }
        other => Message::Other(other),
    })
}

/// CMD_CONNECT_REQ with our capabilities and receive buffer size.
pub fn connect_req(rcvbuf: u32) -> [u8; 12] {
    let mut m = [0u8; 12];
    m[..2].copy_from_slice(&op::CONNECT_REQ.to_be_bytes());
    m[4..8].copy_from_slice(&RECEIVER_CAPS.to_be_bytes());
    m[8..].copy_from_slice(&rcvbuf.to_be_bytes());
    m
}

/// CMD_OK for slice `slice`.
pub fn ok(slice: u32) -> Vec<u8> {
    let mut m = vec![0u8; 8];
    m[..2].copy_from_slice(&op::OK.to_be_bytes());
    m[4..].copy_from_slice(&slice.to_be_bytes());
    m
}

/// CMD_RETRANSMIT for slice `slice`, round `rxmit`; `got` has a bit set for
/// every block received (bit i%8 of byte i/8).
///
/// The round is sent as [`answered_round`] says, so that udp-sender takes
/// the answer in every round.
pub fn retransmit(slice: u32, rxmit: u32, got: &[u8; MAP_BYTES]) -> Vec<u8> {
    let mut m = Vec::with_capacity(12 + MAP_BYTES);
    m.extend_from_slice(&op::RETRANSMIT.to_be_bytes());
    m.extend_from_slice(&[0, 0]);
    m.extend_from_slice(&slice.to_be_bytes());
    m.extend_from_slice(&answered_round(rxmit).to_be_bytes());
    m.extend_from_slice(got);
    m
}

/// The round number to put in a CMD_RETRANSMIT answering REQACK round
/// `rxmit`.
///
/// udp-sender (20120424, Debian's) compares the round of an answer with
/// its own without converting it from network byte order: it reads the
/// four bytes as a host (little-endian) signed int and ignores the answer
/// as late when that is below its round. For rounds whose low byte is 128
/// or more, the big-endian bytes read back negative, so every answer of
/// rounds 128-255 (384-511, ...) is ignored: the sender waits a second per
/// round, and from round `--retries-until-drop` (200) drops the receiver.
/// udp-receiver has the same problem. The round is therefore rounded up to
/// the next multiple of 256 when its low byte is 128 or more: both
/// readings are then at least the sender's round (the sender only ever
/// checks for late answers), and a sender that reads the field right sees
/// a round not below its own.
pub fn answered_round(rxmit: u32) -> u32 {
    if rxmit & 0x80 == 0 {
        rxmit
    } else {
        (rxmit | 0xff).saturating_add(1)
    }
}

/// CMD_DISCONNECT.
pub fn disconnect() -> [u8; 4] {
    let [a, b] = op::DISCONNECT.to_be_bytes();
    [a, b, 0, 0]
}

/// Bit `i` of a udpcast bit map (LSB first in each byte); false past its end.
pub(crate) fn bit(map: &[u8], i: usize) -> bool {
    map.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)
}

/// Whether a datagram from the sender on the control socket is transfer
/// data (CMD_DATA, CMD_FEC, CMD_REQACK: point-to-point mode). Hellos and
/// late CMD_CONNECT_REPLYs (the answers to repeated connect requests) are
/// not: they are ignored, neither drops nor a sign of point-to-point mode.
pub fn is_transfer_data(datagram: &[u8]) -> bool {
    matches!(
        parse(datagram),
        Ok(Message::Data { .. } | Message::Fec { .. } | Message::ReqAck { .. })
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Datagrams as udp-sender 20120424 sent them (tcpdump between two
    /// namespaces), headers only.
    const HELLO: [u8; 28] = [
        0x05, 0, 0, 0, 0, 0, 0, 0x09, 239, 9, 9, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x05, 0xb0,
        0, 0,
    ];
    const CONNECT_REPLY: [u8; 32] = [
        0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0x05, 0xb0, 0, 0, 0, 0x09, 239, 9, 9, 9, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0,
    ];
    const DATA: [u8; 16] = [0, 8, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2, 0x7d, 0];
    const REQACK: [u8; 16] = [0, 6, 0, 0, 0, 0, 0, 0x12, 0, 0, 0xfa, 0x40, 0, 0, 0, 1];
    /// CMD_FEC of `udp-sender --fec 8x8/64`: 8 stripes, slice 3, FEC block
    /// 13 (row 1 of stripe 5), 512 blocks of 1456 bytes in the slice.
    const FEC: [u8; 16] = [0, 9, 0, 8, 0, 0, 0, 3, 0, 13, 0, 0, 0, 0x0b, 0x60, 0];

    #[test]
    fn parses_what_udp_sender_sends() {
        assert_eq!(parse(&HELLO), Ok(Message::Hello { caps: 9 }));
        assert_eq!(
            parse(&CONNECT_REPLY),
            Ok(Message::ConnectReply {
                client: 0,
                block_size: 1456,
                caps: 9,
                data_addr: Ipv4Addr::new(239, 9, 9, 9),
            })
        );
        let mut data = DATA.to_vec();
        data.extend_from_slice(&[7; 1456]);
        assert_eq!(
            parse(&data),
            Ok(Message::Data {
                slice: 0,
                block: 1,
                bytes: 163_072,
                payload: &[7; 1456],
            })
        );
        let mut reqack = REQACK.to_vec();
        reqack.extend_from_slice(&[0; 128]);
        assert_eq!(
            parse(&reqack),
            Ok(Message::ReqAck {
                slice: 0x12,
                bytes: 64_064,
                rxmit: 1,
                ready: &[0; 128],
            })
        );
        let mut fec = FEC.to_vec();
        fec.extend_from_slice(&[9; 1456]);
        assert_eq!(
            parse(&fec),
            Ok(Message::Fec {
                stripes: 8,
                slice: 3,
                block: 13,
                bytes: 745_472,
                payload: &[9; 1456],
            })
        );
        assert_eq!(parse(&FEC[..12]), Err(DropReason::Truncated));
        assert_eq!(parse(&[0, 2, 0, 0]), Ok(Message::Other(2)));
        assert_eq!(parse(&DATA[..15]), Err(DropReason::Truncated));
        assert_eq!(parse(&[0]), Err(DropReason::Truncated));
    }

    #[test]
    fn only_transfer_data_on_the_control_socket_means_point_to_point() {
        // A late CMD_CONNECT_REPLY (the answer to a repeated connect
        // request) once raised a false point-to-point warning and a
        // `bad_kind` drop in sessions sent with --nopointopoint.
        assert!(!is_transfer_data(&CONNECT_REPLY));
        assert!(!is_transfer_data(&HELLO));
        assert!(!is_transfer_data(&[0, 2, 0, 0]));
        let mut data = DATA.to_vec();
        data.extend_from_slice(&[7; 1456]);
        assert!(is_transfer_data(&data));
        assert!(is_transfer_data(&REQACK));
        assert!(is_transfer_data(&FEC));
    }

    #[test]
    fn answered_rounds_are_never_late_for_udp_sender() {
        for rxmit in [0u32, 1, 127, 128, 200, 255, 256, 300, 383, 384, 70_000] {
            let v = answered_round(rxmit);
            // How udp-sender reads the field (no ntohl, little-endian int),
            // and how a sender reading it right would.
            let as_udp_sender = i32::from_le_bytes(v.to_be_bytes());
            assert!(v >= rxmit, "{rxmit}");
            assert!(
                i64::from(as_udp_sender) >= i64::from(rxmit) || rxmit >= 65_536,
                "{rxmit} -> {v} read as {as_udp_sender}"
            );
        }
        assert_eq!(answered_round(5), 5);
        assert_eq!(answered_round(200), 256);
    }

    #[test]
    fn encodes_what_udp_receiver_sends() {
        assert_eq!(
            connect_req(212_992),
            [0, 3, 0, 0, 0, 0, 0, 9, 0, 3, 0x40, 0]
        );
        assert_eq!(ok(0x11), [0, 0, 0, 0, 0, 0, 0, 0x11]);
        assert_eq!(disconnect(), [0, 4, 0, 0]);
        let mut got = [0u8; MAP_BYTES];
        got[0] = 0b0000_0101;
        let r = retransmit(2, 3, &got);
        assert_eq!(r.len(), 140);
        assert_eq!(&r[..13], &[0, 1, 0, 0, 0, 0, 0, 2, 0, 0, 0, 3, 5]);
        assert!(bit(&got, 0) && !bit(&got, 1) && bit(&got, 2) && !bit(&got, 4000));
    }
}
