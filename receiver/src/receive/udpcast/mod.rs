//! A drop-in receiver for udpcast's `udp-sender` (the Debian 20120424
//! protocol, as used by Clonezilla). docs/udpcast.md describes the subset.
//!
//! The conversation with the sender (connect request, hello, disconnect)
//! runs on a kernel UDP socket bound to the receiver port (`portbase`). The
//! data blocks (CMD_DATA) and the sender's acknowledgement requests
//! (CMD_REQACK) go to the multicast data group on the same port: they take
//! the common data path ([`datapath`]: XDP steering and AF_XDP workers, or a
//! joined socket) into a [`Stream`], the [`Sink`] that writes each block into
//! the target and answers REQACKs with CMD_OK or CMD_RETRANSMIT.
//!
//! With `udp-sender --fec`, each slice is followed by FEC blocks (CMD_FEC):
//! the slice's blocks are dealt round-robin into stripes, and each stripe
//! has its own Reed-Solomon blocks ([`udpcast_fec`]). As soon as a stripe
//! holds as many FEC blocks as it lacks data blocks, the lost ones are
//! rebuilt and written like received ones.
//!
//! udpcast does not announce the image size: slices follow one another
//! until an empty one ends the transfer. A slice starts where the previous
//! one ended, so blocks are written with `pwrite` at (start of the slice +
//! block × block size); a regular file grows as it is written and is cut to
//! the received length at the end. udpcast has no checksum either: the
//! SHA-256 of what was received is published on the status page.

use std::collections::VecDeque;
use std::ffi::CStr;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use socket2::{Domain, Protocol, Socket, Type};

use crate::error::{Error, ErrorCode, Result};
use crate::net::socket::{self, Group};
use crate::proto::udpcast_fec::{self, FecError};
use crate::proto::wire::hex;
use crate::proto::wire::DropReason;
use crate::receive::datapath::{self, DataPath};
use crate::receive::request::SessionRequest;
use crate::receive::workers::Sink;
use crate::receive::workers::WorkerCounters;
use crate::status::page::{
    now_ns, writer_page_path, Snapshot, State, StatusWriter, StreamStatus, WorkerStatus,
    FLAG_DIGEST, FLAG_GEOMETRY,
};
use crate::store::stream::{self, StreamOut};
use crate::store::target::{open_out, sha256_prefix};

/// udpcast's default port base: receivers use it, the sender `portbase + 1`.
pub const DEFAULT_PORTBASE: u16 = 9000;
/// Most blocks in one slice (udpcast's MAX_SLICE_SIZE).
pub const MAX_SLICE_BLOCKS: usize = 1024;
/// Most clients of one sender (bits of the REQACK ready map).
const MAX_CLIENTS: u32 = 1024;
/// Most FEC stripes of one slice (udpcast's MAX_FEC_INTERLEAVE).
const MAX_STRIPES: usize = 256;
/// Bytes of a slice's block map in CMD_RETRANSMIT.
const MAP_BYTES: usize = MAX_SLICE_BLOCKS / 8;
/// Header of CMD_DATA, CMD_FEC and CMD_REQACK.
const DATA_HEADER: usize = 16;
/// How far ahead of the oldest unfinished slice the sender may be; udpcast
/// keeps two slices in flight, so more means it has dropped us.
const MAX_AHEAD: u32 = 4;
/// How long the sender must send nothing but its end marker before the
/// marker is answered and taken. udp-sender sends the end marker (a REQACK
/// for an empty slice) only once every receiver has answered OK for the
/// slice before it, and then nothing else; a forged one is followed by the
/// real sender's next slice (or its REQACKs for the one before), which
/// discards it. udp-sender repeats an unanswered REQACK (about every 10 ms,
/// then every second; it gives up after 200), so waiting costs it nothing.
const END_QUIET: Duration = Duration::from_secs(1);
/// Sizes of complete slices kept to check late packets against: udp-sender
/// never goes back further than the two slices it keeps in flight.
const KEEP_SIZES: usize = 16;
/// Connect requests are repeated this often until the sender answers.
const CONNECT_RETRY: Duration = Duration::from_secs(1);
/// Receive timeout of the control socket: the control loop's tick.
const POLL: Duration = Duration::from_millis(50);
/// How often the status page is published.
const PUBLISH: Duration = Duration::from_millis(200);
/// Where hellos and connect requests go when the interface has no broadcast
/// address (udp-sender does the same).
const ALL_HOSTS: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 1);

/// Opcodes (udpcast's `enum opCode`, plus the out-of-sequence CMD_HELLO).
mod op {
    pub const OK: u16 = 0;
    pub const RETRANSMIT: u16 = 1;
    pub const CONNECT_REQ: u16 = 3;
    pub const DISCONNECT: u16 = 4;
    pub const REQACK: u16 = 6;
    pub const CONNECT_REPLY: u16 = 7;
    pub const DATA: u16 = 8;
    pub const FEC: u16 = 9;
    pub const HELLO_NEW: u16 = 10;
    pub const HELLO_STREAMING: u16 = 11;
    pub const HELLO: u16 = 0x0500;
}

/// The sender speaks the "new generation" protocol (capabilities, multicast).
const CAP_NEW_GEN: u32 = 0x01;
/// Network byte order.
const CAP_BIG_ENDIAN: u32 = 0x08;
/// Asynchronous transfer: receivers never answer.
const CAP_ASYNC: u32 = 0x20;
/// What this receiver announces, as udp-receiver does. udpcast defines a
/// CAP_FEC bit (0x04) but neither side announces it: the sender decides on
/// FEC alone (`--fec`), and every receiver must handle CMD_FEC.
const RECEIVER_CAPS: u32 = CAP_NEW_GEN | CAP_BIG_ENDIAN;

const POINT_TO_POINT: &str = "udp-sender is in point-to-point mode (a single receiver): \
     the data comes by unicast through the kernel socket; run it with --nopointopoint \
     for the XDP path";

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

fn be16(d: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([d[at], d[at + 1]])
}

fn be32(d: &[u8], at: usize) -> u32 {
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
fn bit(map: &[u8], i: usize) -> bool {
    map.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)
}

/// One slice not yet complete.
#[derive(Debug, Clone)]
struct Slice {
    /// Bytes in the slice, once a packet told.
    bytes: Option<u32>,
    /// Blocks received (or rebuilt from FEC blocks).
    got: [u8; MAP_BYTES],
    /// Number of bits set in `got`.
    count: u32,
    /// Copies of the blocks received, block b at b × block size (a short
    /// last block zero-padded): what FEC decoding needs besides the FEC
    /// blocks. Allocated with the first block.
    copies: Vec<u8>,
    /// FEC stripes, once a CMD_FEC told (0: none yet).
    stripes: u16,
    /// FEC blocks kept per stripe, as (row, block); never more than the
    /// stripe lacks data blocks.
    fec: Vec<Vec<(usize, Box<[u8]>)>>,
}

impl Slice {
    fn new() -> Slice {
        Slice {
            bytes: None,
            got: [0; MAP_BYTES],
            count: 0,
            copies: Vec::new(),
            stripes: 0,
            fec: Vec::new(),
        }
    }

    /// Blocks in the slice (0 while its size is unknown).
    fn blocks(&self, block_size: u64) -> usize {
        self.bytes
            .map_or(0, |b| u64::from(b).div_ceil(block_size) as usize)
    }

    fn complete(&self, block_size: u64) -> bool {
        self.bytes
            .is_some_and(|b| u64::from(self.count) == u64::from(b).div_ceil(block_size))
    }

    /// Mark `block` received.
    fn mark(&mut self, block: usize) {
        self.got[block / 8] |= 1 << (block % 8);
        self.count += 1;
    }

    /// Grow `copies` to the whole slice (zero-padded) once its size is known.
    fn size_copies(&mut self, block_size: u64) {
        let want = self.blocks(block_size) * block_size as usize;
        if self.copies.len() < want {
            self.copies.resize(want, 0);
        }
    }

    /// Keep a copy of received `block` for FEC decoding.
    fn keep(&mut self, block: usize, data: &[u8], block_size: u64) {
        let bs = block_size as usize;
        self.size_copies(block_size);
        if let Some(to) = self.copies.get_mut(block * bs..block * bs + data.len()) {
            to.copy_from_slice(data);
        }
    }

    /// The data blocks of `stripe`: stripe, stripe + stripes, ...
    fn stripe_blocks(
        &self,
        stripe: usize,
        block_size: u64,
    ) -> std::iter::StepBy<std::ops::Range<usize>> {
        (stripe..self.blocks(block_size)).step_by(usize::from(self.stripes).max(1))
    }

    /// Data blocks of `stripe` neither received nor rebuilt.
    fn lost(&self, stripe: usize, block_size: u64) -> impl Iterator<Item = usize> + '_ {
        self.stripe_blocks(stripe, block_size)
            .filter(|&b| !bit(&self.got, b))
    }

    /// If `stripe` holds as many FEC blocks as it lacks data blocks, rebuild
    /// those and mark them received; returns them as (block, data). A
    /// stripe with nothing missing forgets its FEC blocks.
    fn rebuild(
        &mut self,
        stripe: usize,
        block_size: u64,
    ) -> std::result::Result<Vec<(usize, Vec<u8>)>, FecError> {
        let kept = self.fec.get(stripe).map_or(0, Vec::len);
        let lost: Vec<usize> = self.lost(stripe, block_size).collect();
        if lost.is_empty() || kept < lost.len() {
            if lost.is_empty() && kept > 0 {
                self.fec[stripe] = Vec::new();
            }
            return Ok(Vec::new());
        }
        let bs = block_size as usize;
        self.size_copies(block_size);
        let rebuilt = {
            let data: Vec<Option<&[u8]>> = self
                .stripe_blocks(stripe, block_size)
                .map(|b| bit(&self.got, b).then(|| &self.copies[b * bs..(b + 1) * bs]))
                .collect();
            let fec: Vec<(usize, &[u8])> = self.fec[stripe]
                .iter()
                .map(|(row, block)| (*row, &block[..]))
                .collect();
            udpcast_fec::decode(&data, &fec, bs)
        };
        self.fec[stripe] = Vec::new();
        let rebuilt = rebuilt?;
        for &b in &lost {
            self.mark(b);
        }
        Ok(lost.into_iter().zip(rebuilt).collect())
    }
}

/// Where every slice goes: the unfinished ones and the offset of the first.
#[derive(Debug)]
struct Ledger {
    /// Number of `open[0]`; all earlier slices are complete.
    first: u32,
    /// Offset of `open[0]` in the target: bytes of all complete slices.
    base: u64,
    open: VecDeque<Slice>,
    /// Number of the empty slice that ends the transfer, once taken.
    end: Option<u32>,
    /// An end marker not yet taken: its slice, and since when the sender
    /// has sent nothing else.
    pending_end: Option<(u32, Instant)>,
    /// How long that must last ([`END_QUIET`]).
    end_quiet: Duration,
    /// Highest slice answered CMD_OK.
    acked: Option<u32>,
    /// Sizes of the last [`KEEP_SIZES`] complete slices, the last one
    /// being slice `first - 1`.
    sizes: VecDeque<u32>,
    /// Blocks taken for writing.
    accepted: u64,
}

/// Why a datagram is not taken: a counted drop, or packets that contradict
/// each other, which only forged ones do, and which end the transfer.
#[derive(Debug)]
enum Refusal {
    Drop(DropReason),
    Fatal(Error),
}

impl From<DropReason> for Refusal {
    fn from(r: DropReason) -> Refusal {
        Refusal::Drop(r)
    }
}

/// Slice `no` seen with two sizes.
fn conflict(no: u32, had: u32, got: u32) -> Refusal {
    Refusal::Fatal(Error::new(
        ErrorCode::ProtocolError,
        format!(
            "slice {no} came with {had} and with {got} bytes from the sender's address: \
             udp-sender never changes a slice, so some packets were forged"
        ),
    ))
}

impl Ledger {
    fn new() -> Ledger {
        Ledger {
            first: 0,
            base: 0,
            open: VecDeque::new(),
            end: None,
            pending_end: None,
            end_quiet: END_QUIET,
            acked: None,
            sizes: VecDeque::new(),
            accepted: 0,
        }
    }

    /// A data, FEC or REQACK packet says slice `no` holds `bytes` (> 0)
    /// bytes: its index in `open` (opened and sized if new), or None for a
    /// complete slice. It also shows whether an end marker held back was
    /// the sender's: a packet of that slice or a later one shows it was not
    /// (dropped and counted in `c`), one of an earlier slice restarts the
    /// wait.
    fn locate(
        &mut self,
        no: u32,
        bytes: u32,
        block_size: u64,
        now: Instant,
        c: &WorkerCounters,
    ) -> std::result::Result<Option<usize>, Refusal> {
        if bytes == 0 {
            return Err(DropReason::Inconsistent.into());
        }
        if let Some((end, since)) = &mut self.pending_end {
            if no >= *end {
                log::warn!(
                    "udpcast: end marker for slice {end} dropped: the sender is still sending slice {no} (forged?)"
                );
                self.pending_end = None;
                c.drop_packet(DropReason::Inconsistent);
            } else {
                *since = now;
            }
        }
        if self.end.is_some_and(|e| no >= e) {
            // Nothing comes after the end.
            return Err(DropReason::Inconsistent.into());
        }
        if no < self.first {
            let back = (self.first - no) as usize;
            if let Some(&had) = self.sizes.iter().rev().nth(back - 1) {
                if had != bytes {
                    return Err(conflict(no, had, bytes));
                }
            }
            return Ok(None);
        }
        let Some(i) = self.open_slice(no).map_err(Refusal::Fatal)? else {
            return Ok(None);
        };
        self.set_bytes(i, bytes, block_size)?;
        Ok(Some(i))
    }

    /// A REQACK for the empty slice `no` (the end marker): whether to
    /// answer it CMD_OK now. It is taken only where udp-sender sends it
    /// (right after the last complete slice, which this receiver has
    /// answered OK, with nothing heard of slice `no`), and only once the
    /// sender has sent nothing else for `end_quiet`; until then it is not
    /// answered. An end marker for slice 0 (an empty image) is never taken:
    /// before the first slice nothing shows the sender has started, so a
    /// forged one could not be told from it.
    fn end_marker(
        &mut self,
        no: u32,
        block_size: u64,
        now: Instant,
    ) -> std::result::Result<bool, DropReason> {
        if self.end == Some(no) {
            return Ok(true);
        }
        let after_last_ok = self.acked.is_some_and(|a| a.checked_add(1) == Some(no));
        let nothing_of_it = self.open.len() <= 1
            && self
                .open
                .front()
                .is_none_or(|s| s.bytes.is_none() && s.count == 0 && s.stripes == 0);
        if self.end.is_some() || no != self.first || !after_last_ok || !nothing_of_it {
            return Err(DropReason::Inconsistent);
        }
        match self.pending_end {
            Some((n, since)) if n == no => {
                if now.duration_since(since) < self.end_quiet {
                    return Ok(false);
                }
                self.pending_end = None;
                if self.open.is_empty() {
                    self.open.push_back(Slice::new());
                }
                self.open[0].bytes = Some(0);
                self.end = Some(no);
                self.retire(block_size);
                Ok(true)
            }
            _ => {
                self.pending_end = Some((no, now));
                Ok(false)
            }
        }
    }
    /// Index of slice `no` in `open` (opened if new), or None for a slice
    /// already complete.
    fn open_slice(&mut self, no: u32) -> Result<Option<usize>> {
        if no < self.first {
            return Ok(None);
        }
        let i = no - self.first;
        if i >= MAX_AHEAD {
            return Err(Error::new(
                ErrorCode::SenderGone,
                format!(
                    "the sender is at slice {no} while slice {} is unfinished: it has dropped this receiver",
                    self.first
                ),
            ));
        }
        while self.open.len() <= i as usize {
            self.open.push_back(Slice::new());
        }
        Ok(Some(i as usize))
    }

    fn set_bytes(
        &mut self,
        i: usize,
        bytes: u32,
        block_size: u64,
    ) -> std::result::Result<(), Refusal> {
        if u64::from(bytes) > MAX_SLICE_BLOCKS as u64 * block_size {
            return Err(DropReason::Oversize.into());
        }
        let s = &mut self.open[i];
        match s.bytes {
            Some(had) if had != bytes => return Err(conflict(self.first + i as u32, had, bytes)),
            Some(_) => {}
            None => s.bytes = Some(bytes),
        }
        Ok(())
    }

    /// Offset of `open[i]`, if the sizes of the slices before it are known.
    fn offset(&self, i: usize) -> Option<u64> {
        self.open
            .iter()
            .take(i)
            .try_fold(self.base, |o, s| Some(o + u64::from(s.bytes?)))
    }

    /// Image offset of the first block `open[i]` lacks, once the sizes of
    /// the slices before it are known.
    fn first_gap(&self, i: usize, block_size: u64) -> Option<u64> {
        let s = &self.open[i];
        let first = (0..s.blocks(block_size))
            .find(|&b| !bit(&s.got, b))
            .unwrap_or(0) as u64;
        Some(self.offset(i)? + first * block_size)
    }

    /// Drop the complete slices at the front.
    fn retire(&mut self, block_size: u64) {
        while let Some(s) = self.open.front().filter(|s| s.complete(block_size)) {
            let bytes = s.bytes.unwrap_or(0);
            self.base += u64::from(bytes);
            self.first += 1;
            self.open.pop_front();
            if self.sizes.len() == KEEP_SIZES {
                self.sizes.pop_front();
            }
            self.sizes.push_back(bytes);
        }
    }

    /// Rebuild what stripe `stripe` of `open[i]` lacks, if its FEC blocks
    /// suffice and the slice ends before `limit` (a stream's window): the
    /// blocks are marked received and taken for writing, and returned with
    /// their offsets in the target (cut to their length).
    fn repair(
        &mut self,
        i: usize,
        stripe: usize,
        block_size: u64,
        limit: u64,
    ) -> Vec<(u64, Vec<u8>)> {
        let Some(start) = self.offset(i) else {
            return Vec::new();
        };
        let s = &mut self.open[i];
        let bytes = u64::from(s.bytes.unwrap_or(0));
        if start + bytes > limit {
            // The FEC blocks stay; a later block of the stripe tries again.
            return Vec::new();
        }
        let rebuilt = match s.rebuild(stripe, block_size) {
            Ok(r) => r,
            Err(e) => {
                // Cannot happen with the checks on the way in; the next
                // REQACK asks for the data blocks instead.
                log::warn!(
                    "udpcast FEC, stripe {stripe} of slice {}: {e}",
                    self.first + i as u32
                );
                return Vec::new();
            }
        };
        self.accepted += rebuilt.len() as u64;
        rebuilt
            .into_iter()
            .map(|(b, mut data)| {
                let at = b as u64 * block_size;
                data.truncate((bytes - at).min(block_size) as usize);
                (start + at, data)
            })
            .collect()
    }

    /// Whether every slice up to and including the end marker is complete.
    fn finished(&self) -> bool {
        self.end.is_some_and(|e| self.first > e)
    }
}

/// Where the blocks go.
enum Out {
    /// A file or block device, written with `pwrite` at each block's offset.
    File { file: File, block_device: bool },
    /// A pipe (`--out -`: stdout), written in order through a reorder window.
    Stream(StreamOut),
}

/// The receiving side of one udpcast transfer, shared by the workers and the
/// control thread (which feeds it what arrives on the control socket: data
/// and REQACKs in point-to-point mode).
pub struct Stream {
    out: Out,
    block_size: u64,
    client: u32,
    replies: UdpSocket,
    /// The sender that answered our connect request: the only source taken.
    sender: SocketAddr,
    ledger: Mutex<Ledger>,
    counters: Vec<CachePadded<WorkerCounters>>,
    failure: OnceLock<Error>,
}

impl Stream {
    fn new(out: Out, connected: &Connected, replies: UdpSocket, counter_slots: usize) -> Stream {
        Stream {
            out,
            block_size: u64::from(connected.block_size),
            client: connected.client,
            replies,
            sender: SocketAddr::V4(connected.sender),
            ledger: Mutex::new(Ledger::new()),
            counters: (0..counter_slots).map(|_| CachePadded::default()).collect(),
            failure: OnceLock::new(),
        }
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The fatal error, if any (the output stream's included).
    pub fn failure(&self) -> Option<Error> {
        self.failure.get().cloned().or_else(|| match &self.out {
            Out::Stream(s) => s.failure(),
            Out::File { .. } => None,
        })
    }

    /// Image offset up to which blocks can be taken now: a stream's window
    /// ends there; a file takes everything.
    fn limit(&self) -> u64 {
        match &self.out {
            Out::File { .. } => u64::MAX,
            Out::Stream(s) => s.limit(),
        }
    }

    /// Counters of the output stream, if the image goes to one.
    fn stream_status(&self) -> Option<StreamStatus> {
        match &self.out {
            Out::File { .. } => None,
            Out::Stream(s) => Some(s.status()),
        }
    }

    /// With a stream: wait until the consumer has taken all `len` bytes
    /// (see [`StreamOut::drain`]). Nothing to wait for with a file.
    fn drain(&self, len: u64, cancelled: impl Fn() -> bool, tick: impl FnMut()) -> Result<()> {
        match &self.out {
            Out::File { .. } => Ok(()),
            Out::Stream(s) => s.drain(len, PUBLISH, cancelled, tick),
        }
    }

    /// The transfer is complete at `len` bytes: cut and sync the file, or
    /// wait for the stream to drain; the SHA-256 of what was written.
    fn finish(&self, len: u64) -> Result<[u8; 32]> {
        match &self.out {
            Out::File { file, block_device } => finish_target(file, *block_device, len),
            Out::Stream(s) => s.finish(len),
        }
    }

    fn written(&self) -> u64 {
        self.counters
            .iter()
            .map(|c| c.blocks.load(Ordering::Acquire))
            .sum()
    }

    /// Length of the image once the transfer is complete and every block
    /// taken has been written.
    pub fn complete_len(&self) -> Option<u64> {
        let l = self.ledger();
        (l.finished() && self.written() == l.accepted).then_some(l.base)
    }

    /// The ledger, locked, and slice `no` of `bytes` bytes in it (see
    /// [`Ledger::locate`]).
    fn opened(
        &self,
        no: u32,
        bytes: u32,
        c: &WorkerCounters,
    ) -> std::result::Result<(MutexGuard<'_, Ledger>, Option<usize>), Refusal> {
        let mut l = self.ledger();
        let i = l.locate(no, bytes, self.block_size, Instant::now(), c)?;
        Ok((l, i))
    }

    fn data(
        &self,
        slice: u32,
        block: u16,
        bytes: u32,
        payload: &[u8],
        c: &WorkerCounters,
    ) -> std::result::Result<(), Refusal> {
        let bs = self.block_size;
        // Read before the lock: the limit only grows, so this is safe.
        let limit = self.limit();
        let (offset, len, rebuilt) = {
            let (mut l, i) = self.opened(slice, bytes, c)?;
            let i = i.ok_or(DropReason::Duplicate)?;
            let start = u64::from(block) * bs;
            if start >= u64::from(bytes) {
                return Err(DropReason::OutOfRange.into());
            }
            if bit(&l.open[i].got, usize::from(block)) {
                return Err(DropReason::Duplicate.into());
            }
            let len = (u64::from(bytes) - start).min(bs) as usize;
            if payload.len() < len {
                return Err(DropReason::Truncated.into());
            }
            // A slice whose predecessor's size is still unknown cannot be
            // placed: drop the block, the next REQACK asks for it again.
            let at = l.offset(i).ok_or(DropReason::Inconsistent)? + start;
            // Beyond the stream's window: not taken (the slice's map does
            // not get it), so the next REQACK asks for it again.
            if at + len as u64 > limit {
                if let Out::Stream(s) = &self.out {
                    s.refuse();
                }
                return Ok(());
            }
            let s = &mut l.open[i];
            s.mark(usize::from(block));
            s.keep(usize::from(block), &payload[..len], bs);
            l.accepted += 1;
            // One block less to rebuild may let the stripe's FEC blocks do it.
            let s = &l.open[i];
            let stripe = usize::from(block) % usize::from(s.stripes).max(1);
            let rebuilt = if s.fec.get(stripe).is_some_and(|f| !f.is_empty()) {
                l.repair(i, stripe, bs, limit)
            } else {
                Vec::new()
            };
            l.retire(bs);
            (at, len, rebuilt)
        };
        self.write(&payload[..len], offset, c);
        self.write_rebuilt(rebuilt, c);
        Ok(())
    }

    /// Write one block taken for writing and count it.
    fn write(&self, block: &[u8], offset: u64, c: &WorkerCounters) -> bool {
        let written = match &self.out {
            Out::File { file, .. } => file.write_all_at(block, offset),
            Out::Stream(s) => {
                s.put(offset, block);
                Ok(())
            }
        };
        match written {
            Ok(()) => {
                c.bytes.fetch_add(block.len() as u64, Ordering::Relaxed);
                c.blocks.fetch_add(1, Ordering::Release);
                true
            }
            Err(e) => {
                self.fail(Error::target_io("cannot write target", &e));
                false
            }
        }
    }

    /// Write blocks rebuilt from FEC blocks.
    fn write_rebuilt(&self, rebuilt: Vec<(u64, Vec<u8>)>, c: &WorkerCounters) {
        for (offset, block) in rebuilt {
            if self.write(&block, offset, c) {
                c.fec_recovered.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// A FEC block: keep it if its stripe lacks data blocks, and rebuild
    /// them once the stripe has as many FEC blocks as it lacks.
    fn fec(
        &self,
        stripes: u16,
        slice: u32,
        block: u16,
        bytes: u32,
        payload: &[u8],
        c: &WorkerCounters,
    ) -> std::result::Result<(), Refusal> {
        let bs = self.block_size;
        let limit = self.limit();
        let n_stripes = usize::from(stripes);
        if n_stripes == 0 || n_stripes > MAX_STRIPES {
            return Err(DropReason::Inconsistent.into());
        }
        let (stripe, row) = (
            usize::from(block) % n_stripes,
            usize::from(block) / n_stripes,
        );
        if row >= udpcast_fec::MAX_ROWS {
            return Err(DropReason::OutOfRange.into());
        }
        if (payload.len() as u64) < bs {
            return Err(DropReason::Truncated.into());
        }
        let rebuilt = {
            let (mut l, i) = self.opened(slice, bytes, c)?;
            // A late FEC block of a slice already complete is not needed.
            let Some(i) = i else {
                return Ok(());
            };
            // The code covers at most 128 data blocks per stripe.
            if l.open[i].blocks(bs) > n_stripes * udpcast_fec::MAX_DATA {
                return Err(DropReason::Inconsistent.into());
            }
            // As for data blocks: a slice that cannot be placed yet waits
            // for the next REQACK.
            l.offset(i).ok_or(DropReason::Inconsistent)?;
            let s = &mut l.open[i];
            if s.stripes == 0 {
                s.stripes = stripes;
                s.fec = vec![Vec::new(); n_stripes];
            } else if s.stripes != stripes {
                return Err(DropReason::Inconsistent.into());
            }
            if s.fec[stripe].iter().any(|(r, _)| *r == row) {
                return Err(DropReason::Duplicate.into());
            }
            // Not needed (nothing lost in the stripe, or enough FEC blocks
            // already): ignored, as udp-receiver does, and not a drop.
            if s.lost(stripe, bs).count() <= s.fec[stripe].len() {
                return Ok(());
            }
            s.fec[stripe].push((row, payload[..bs as usize].into()));
            let rebuilt = l.repair(i, stripe, bs, limit);
            l.retire(bs);
            rebuilt
        };
        self.write_rebuilt(rebuilt, c);
        Ok(())
    }

    fn reqack(
        &self,
        slice: u32,
        bytes: u32,
        rxmit: u32,
        ready: &[u8],
        c: &WorkerCounters,
    ) -> std::result::Result<(), Refusal> {
        let bs = self.block_size;
        let answered = bit(ready, self.client as usize);
        let reply = {
            let mut l = self.ledger();
            let missing = if bytes == 0 {
                if !l.end_marker(slice, bs, Instant::now())? || answered {
                    return Ok(());
                }
                None
            } else {
                // Checked even when already answered: a REQACK is the one
                // packet of every slice the sender is sure to send.
                let i = l.locate(slice, bytes, bs, Instant::now(), c)?;
                if answered {
                    return Ok(());
                }
                let lacking = i.filter(|&i| !l.open[i].complete(bs));
                let gap = lacking.and_then(|i| l.first_gap(i, bs));
                if gap.is_some_and(|at| at >= self.limit()) {
                    // The stream's window cannot take the first block the
                    // slice lacks (the consumer is slow): not answered, so
                    // the sender waits for its REQACK timeout instead of
                    // retransmitting at full speed blocks that would be
                    // refused again (docs/udpcast.md, "A long stall").
                    return Ok(());
                }
                let got = lacking.map(|i| l.open[i].got);
                l.retire(bs);
                got
            };
            match missing {
                Some(got) => retransmit(slice, rxmit, &got),
                None => {
                    if l.acked.is_none_or(|a| a < slice) {
                        l.acked = Some(slice);
                    }
                    ok(slice)
                }
            }
        };
        if let Err(e) = self.replies.send_to(&reply, self.sender) {
            log::warn!("answering the sender's REQACK for slice {slice}: {e}");
        }
        Ok(())
    }
}

impl Sink for Stream {
    fn ingest(&self, datagram: &[u8], c: &WorkerCounters) {
        let outcome = parse(datagram)
            .map_err(Refusal::from)
            .and_then(|m| match m {
                Message::Data {
                    slice,
                    block,
                    bytes,
                    payload,
                } => self.data(slice, block, bytes, payload, c),
                Message::ReqAck {
                    slice,
                    bytes,
                    rxmit,
                    ready,
                } => self.reqack(slice, bytes, rxmit, ready, c),
                Message::Fec {
                    stripes,
                    slice,
                    block,
                    bytes,
                    payload,
                } => self.fec(stripes, slice, block, bytes, payload, c),
                // Repeated hellos announce the sender to late receivers.
                Message::Hello { .. } => Ok(()),
                Message::ConnectReply { .. } | Message::Other(_) => Err(DropReason::BadKind.into()),
            });
        match outcome {
            Ok(()) => {}
            Err(Refusal::Drop(r)) => c.drop_packet(r),
            Err(Refusal::Fatal(e)) => {
                c.drop_packet(DropReason::Inconsistent);
                self.fail(e);
            }
        }
    }

    fn counters(&self, i: usize) -> &WorkerCounters {
        &self.counters[i]
    }

    fn fail(&self, err: Error) {
        if self.failure.set(err.clone()).is_ok() {
            log::error!("{err}");
        }
    }

    fn has_failed(&self) -> bool {
        self.failure.get().is_some()
    }

    fn source(&self) -> Option<IpAddr> {
        Some(self.sender.ip())
    }
}

/// What to receive. `session` gives the name, interface, target, data path
/// and timeouts. Its `group` is the data group to expect: with an
/// unspecified address (`0.0.0.0`) the group the sender announces is taken,
/// otherwise the sender must announce this one. Its port must be `portbase`.
#[derive(Debug, Clone)]
pub struct UdpcastRequest {
    /// Everything the xdpcast protocol also needs.
    pub session: SessionRequest,
    /// udpcast port base: this receiver uses it, the sender `portbase + 1`.
    pub portbase: u16,
    /// Where connect requests go (udp-receiver's `--mcast-rdv-address`; a
    /// multicast group is joined, a unicast address is the sender's):
    /// default the interface's broadcast address, or 224.0.0.1.
    pub rendezvous: Option<Ipv4Addr>,
    /// TTL of multicast connect requests (udp-receiver's `--ttl`; not 1:
    /// they go to 224.0.0.1 unless a rendezvous address is given).
    pub ttl: u32,
}

impl UdpcastRequest {
    /// A request with udpcast's defaults: no rendezvous address, TTL 1.
    pub fn new(session: SessionRequest, portbase: u16) -> UdpcastRequest {
        UdpcastRequest {
            session,
            portbase,
            rendezvous: None,
            ttl: 1,
        }
    }
}

/// The "take the announced group" placeholder for [`UdpcastRequest`].
pub fn any_group(portbase: u16) -> Group {
    Group(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), portbase))
}

/// The result of the handshake.
#[derive(Debug, Clone, Copy)]
struct Connected {
    sender: SocketAddrV4,
    client: u32,
    block_size: u32,
    data_addr: Ipv4Addr,
}

/// One IPv4 address of an interface.
struct Ipv4Iface {
    name: String,
    flags: libc::c_int,
    /// Its broadcast address, if it has one.
    broadcast: Option<Ipv4Addr>,
}

/// Every IPv4 address of every interface, in the kernel's order.
fn ipv4_ifaces() -> Result<Vec<Ipv4Iface>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs stores a list head in `list`, freed below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(Error::new(
            ErrorCode::Network,
            format!("getifaddrs: {}", std::io::Error::last_os_error()),
        ));
    }
    let v4 = |sa: *const libc::sockaddr| {
        // SAFETY: callers pass a non-null AF_INET address of the live list,
        // which is a sockaddr_in.
        let sin = unsafe { &*(sa as *const libc::sockaddr_in) };
        Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))
    };
    let mut found = Vec::new();
    let mut p = list;
    while !p.is_null() {
        // SAFETY: `p` is a node of the list, valid until freeifaddrs.
        let ifa = unsafe { &*p };
        p = ifa.ifa_next;
        // SAFETY: ifa_addr is only read when non-null.
        let inet = unsafe {
            !ifa.ifa_addr.is_null() && i32::from((*ifa.ifa_addr).sa_family) == libc::AF_INET
        };
        if !inet {
            continue;
        }
        // An address configured without a broadcast address reports itself
        // (or 0.0.0.0).
        let own = v4(ifa.ifa_addr);
        let flags = ifa.ifa_flags as libc::c_int;
        let broadcast = (flags & libc::IFF_BROADCAST != 0 && !ifa.ifa_ifu.is_null())
            .then(|| v4(ifa.ifa_ifu))
            .filter(|b| !b.is_unspecified() && *b != own);
        // SAFETY: ifa_name is a NUL-terminated string of the live list.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        found.push(Ipv4Iface {
            name,
            flags,
            broadcast,
        });
    }
    // SAFETY: `list` came from getifaddrs and is freed exactly once.
    unsafe { libc::freeifaddrs(list) };
    Ok(found)
}

/// Broadcast address of IPv4 interface `iface` (None if it has none).
fn broadcast_addr(iface: &str) -> Result<Option<Ipv4Addr>> {
    ipv4_ifaces()?
        .into_iter()
        .find(|i| i.name == iface)
        .map(|i| i.broadcast)
        .ok_or_else(|| {
            Error::new(
                ErrorCode::InvalidArgument,
                format!("{iface} has no IPv4 address: udpcast needs one to reach the sender"),
            )
        })
}

/// The interface udp-receiver picks when none is given: the first one that
/// is up, not loopback, and has an IPv4 address.
pub fn default_iface() -> Result<String> {
    ipv4_ifaces()?
        .into_iter()
        .find(|i| i.flags & libc::IFF_UP != 0 && i.flags & libc::IFF_LOOPBACK == 0)
        .map(|i| i.name)
        .ok_or_else(|| {
            Error::new(
                ErrorCode::InvalidArgument,
                "no interface is up with an IPv4 address: give one with --interface",
            )
        })
}

/// The control socket: bound to the receiver port on `iface` (which also
/// picks the interface for what it sends), broadcast allowed, and deaf to multicast groups it has not joined itself (the data
/// group belongs to the data path).
fn control_socket(req: &UdpcastRequest, control: Ipv4Addr) -> Result<UdpSocket> {
    let iface = &req.session.iface;
    let err = |what: &str, e: std::io::Error| {
        Error::new(
            ErrorCode::Network,
            format!("udpcast control socket: {what}: {e}"),
        )
    };
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .map_err(|e| err("socket", e))?;
    s.set_reuse_address(true)
        .map_err(|e| err("SO_REUSEADDR", e))?;
    s.set_broadcast(true).map_err(|e| err("SO_BROADCAST", e))?;
    s.bind_device(Some(iface.as_bytes()))
        .map_err(|e| err(&format!("bind to {iface}"), e))?;
    s.set_multicast_all_v4(false)
        .map_err(|e| err("IP_MULTICAST_ALL", e))?;
    s.set_multicast_ttl_v4(req.ttl)
        .map_err(|e| err("IP_MULTICAST_TTL", e))?;
    if control.is_multicast() {
        let ifindex = socket::iface_index(iface)?;
        s.join_multicast_v4_n(&control, &socket2::InterfaceIndexOrAddress::Index(ifindex))
            .map_err(|e| err(&format!("join {control}"), e))?;
    }
    s.set_read_timeout(Some(POLL))
        .map_err(|e| err("SO_RCVTIMEO", e))?;
    let at = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), req.portbase);
    s.bind(&at.into())
        .map_err(|e| err(&format!("bind port {}", req.portbase), e))?;
    Ok(s.into())
}

/// One datagram from the control socket, or None after the poll timeout.
fn recv(sock: &UdpSocket, buf: &mut [u8]) -> Result<Option<(usize, SocketAddr)>> {
    match sock.recv_from(buf) {
        Ok(r) => Ok(Some(r)),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::Interrupted
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(Error::new(
            ErrorCode::Network,
            format!("udpcast control socket: {e}"),
        )),
    }
}

fn cancelled() -> Error {
    Error::new(ErrorCode::Cancelled, "cancelled")
}

/// Find the sender: connect requests to the control address (and to any
/// sender whose hello we hear) until one answers with CMD_CONNECT_REPLY.
fn connect(
    sock: &UdpSocket,
    req: &UdpcastRequest,
    control: SocketAddr,
    cancel: &AtomicBool,
) -> Result<Connected> {
    let sender_port = req.portbase.wrapping_add(1);
    let request = connect_req(req.session.rcvbuf.min(u32::MAX as usize) as u32);
    let send = |to: SocketAddr| {
        sock.send_to(&request, to)
            .map_err(|e| Error::new(ErrorCode::Network, format!("connect request to {to}: {e}")))
    };
    let start = Instant::now();
    let mut last_request: Option<Instant> = None;
    let mut buf = [0u8; 2048];
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(cancelled());
        }
        if start.elapsed() >= req.session.start_timeout {
            return Err(Error::new(
                ErrorCode::Timeout,
                format!(
                    "no udp-sender answered on port {sender_port} within {:?}",
                    req.session.start_timeout
                ),
            ));
        }
        if last_request.is_none_or(|t| t.elapsed() >= CONNECT_RETRY) {
            send(control)?;
            last_request = Some(Instant::now());
        }
        let Some((n, SocketAddr::V4(from))) = recv(sock, &mut buf)? else {
            continue;
        };
        // With `--source`, only that sender is heard: a forged hello or
        // connect reply from anywhere else is not the sender we lock onto.
        let wrong_host = req
            .session
            .source
            .is_some_and(|s| s != IpAddr::V4(*from.ip()));
        if from.port() != sender_port || wrong_host {
            continue;
        }
        match parse(&buf[..n]) {
            Ok(Message::Hello { caps }) if caps & CAP_ASYNC != 0 => {
                return Err(Error::new(
                    ErrorCode::ProtocolError,
                    "the sender runs in asynchronous mode (udp-sender --async), which the xdpcast udpcast receiver does not implement",
                ));
            }
            Ok(Message::Hello { .. }) => {
                send(SocketAddr::V4(from))?;
            }
            Ok(Message::ConnectReply {
                client,
                block_size,
                caps,
                data_addr,
            }) => {
                if client == u32::MAX {
                    return Err(Error::new(
                        ErrorCode::ProtocolError,
                        format!("udp-sender at {from} refused this receiver (too many receivers, or point-to-point mode)"),
                    ));
                }
                if caps & CAP_NEW_GEN == 0 || client >= MAX_CLIENTS {
                    return Err(Error::new(
                        ErrorCode::ProtocolError,
                        format!("udp-sender at {from} speaks an older udpcast protocol (capabilities {caps:#x})"),
                    ));
                }
                if block_size == 0 || block_size as usize > 65_507 - DATA_HEADER {
                    return Err(Error::new(
                        ErrorCode::ProtocolError,
                        format!("udp-sender at {from} announced block size {block_size}"),
                    ));
                }
                return Ok(Connected {
                    sender: from,
                    client,
                    block_size,
                    data_addr,
                });
            }
            _ => {}
        }
    }
}

/// The data group the sender announced, checked against the request.
fn data_group(req: &UdpcastRequest, c: &Connected) -> Result<Group> {
    let announced = SocketAddr::new(c.data_addr.into(), req.portbase);
    let wanted = req.session.group.0;
    if !wanted.ip().is_unspecified() && wanted != announced {
        return Err(Error::new(
            ErrorCode::InvalidArgument,
            format!("the sender announced data group {announced}, not {wanted}"),
        ));
    }
    if !c.data_addr.is_multicast() {
        return Err(Error::new(
            ErrorCode::ProtocolError,
            format!(
                "the sender sends data to {}, not to a multicast group: use udp-sender --mcast-data-address",
                c.data_addr
            ),
        ));
    }
    Ok(Group(announced))
}

/// The output: stdout for `-`, else the file or block device.
fn open_output(path: &Path, window: u64) -> Result<Out> {
    if stream::is_stdout(path) {
        return Ok(Out::Stream(StreamOut::start(stream::stdout()?, window)?));
    }
    let (file, block_device) = open_out(path)?;
    Ok(Out::File { file, block_device })
}

/// The control thread's view of a running transfer.
struct Run {
    path: DataPath<Stream>,
    /// Counter slot of the control socket (point-to-point data).
    control_slot: usize,
    start: Instant,
    first_data: Option<Instant>,
    last: (Instant, u64),
}

impl Run {
    fn snapshot(&mut self, base: &Snapshot) -> Snapshot {
        let diag = self.path.diag();
        let t = &self.path.sink;
        let mut s = Snapshot {
            diag,
            ..base.clone()
        };
        s.workers = self
            .path
            .slots
            .iter()
            .zip(t.counters.iter())
            .map(|(&(queue, cpu), c)| c.snapshot(u64::from(queue), cpu))
            .collect();
        let all: Vec<WorkerStatus> = t.counters.iter().map(|c| c.snapshot(0, None)).collect();
        for c in t.counters.iter() {
            for (total, d) in s.drops.iter_mut().zip(c.drops.iter()) {
                *total += d.load(Ordering::Relaxed);
            }
        }
        // The drops were read after the packet counts: packets counted in
        // between may be in the drops and not in the sum (as in the
        // xdpcast path, the difference saturates).
        s.packets = all
            .iter()
            .map(|w| w.packets)
            .sum::<u64>()
            .saturating_sub(s.total_drops());
        s.blocks_done = all.iter().map(|w| w.blocks).sum();
        s.fec_recovered = t
            .counters
            .iter()
            .map(|c| c.fec_recovered.load(Ordering::Relaxed))
            .sum();
        s.bytes_done = all.iter().map(|w| w.bytes).sum();
        s.block_size = t.block_size;
        s.session_id = u64::from(t.client);
        if let Some(st) = t.stream_status() {
            s.stream = st;
        }
        let now = Instant::now();
        if s.bytes_done > 0 {
            let first = *self.first_data.get_or_insert(now);
            s.avg_rate_bps =
                (s.bytes_done as f64 / now.duration_since(first).as_secs_f64().max(1e-3)) as u64;
        }
        let dt = now.duration_since(self.last.0).as_secs_f64();
        if dt > 0.0 {
            s.rate_bps = (s.bytes_done.saturating_sub(self.last.1) as f64 / dt) as u64;
        }
        self.last = (now, s.bytes_done);
        s
    }

    /// Receive until the transfer is complete (its length) or fails.
    fn watch(
        &mut self,
        sock: &UdpSocket,
        req: &UdpcastRequest,
        base: &mut Snapshot,
        cancel: &AtomicBool,
        publish: &mut dyn FnMut(&Snapshot),
    ) -> Result<u64> {
        let sender = self.path.sink.sender;
        let mut buf = vec![0u8; 65_536];
        let mut last_publish = Instant::now();
        let mut last_packets = 0;
        let mut last_activity = Instant::now();
        let mut unicast_data = false;
        loop {
            if let Some((n, from)) = recv(sock, &mut buf)? {
                // Point-to-point mode: the sender sends data and REQACKs to
                // our unicast address, which the kernel delivers here.
                // Control comes only from the sender that answered our
                // connect request; anything else is counted and dropped.
                let c = self.path.sink.counters(self.control_slot);
                if from != sender {
                    c.batch(1);
                    c.drop_packet(DropReason::ForeignSource);
                } else if point_to_point(&buf[..n]) {
                    if !unicast_data {
                        unicast_data = true;
                        log::warn!("{POINT_TO_POINT}");
                        base.message = POINT_TO_POINT.into();
                    }
                    c.batch(1);
                    self.path.sink.ingest(&buf[..n], c);
                }
            }
            if cancel.load(Ordering::Relaxed) {
                return Err(cancelled());
            }
            if let Some(e) = self.path.sink.failure() {
                return Err(e);
            }
            if let Some(len) = self.path.sink.complete_len() {
                return Ok(len);
            }
            if last_publish.elapsed() < PUBLISH {
                continue;
            }
            last_publish = Instant::now();
            let s = self.snapshot(base);
            publish(&s);
            let seen = s.packets + s.total_drops();
            if seen != last_packets {
                last_packets = seen;
                last_activity = Instant::now();
            }
            if seen == 0 && self.start.elapsed() >= req.session.start_timeout {
                return Err(Error::new(
                    ErrorCode::Timeout,
                    self.path.explain_silence(format!(
                        "connected, but no data from the sender within {:?}",
                        req.session.start_timeout
                    )),
                ));
            }
            if seen > 0 && last_activity.elapsed() >= req.session.idle_timeout {
                return Err(Error::new(
                    ErrorCode::SenderGone,
                    format!(
                        "no packet from the sender for {:?}",
                        req.session.idle_timeout
                    ),
                ));
            }
        }
    }
}

/// Whether a datagram from the sender on the control socket is transfer
/// data (CMD_DATA, CMD_FEC, CMD_REQACK: point-to-point mode). Hellos and
/// late CMD_CONNECT_REPLYs (the answers to repeated connect requests) are
/// not: they are ignored, neither drops nor a sign of point-to-point mode.
fn point_to_point(datagram: &[u8]) -> bool {
    matches!(
        parse(datagram),
        Ok(Message::Data { .. } | Message::Fec { .. } | Message::ReqAck { .. })
    )
}

/// Cut a regular file to the image, flush, and hash what was received.
fn finish_target(file: &File, block_device: bool, len: u64) -> Result<[u8; 32]> {
    let io = |what: &str, e: std::io::Error| Error::target_io(what, &e);
    if !block_device {
        file.set_len(len).map_err(|e| io("cannot size target", e))?;
    }
    file.sync_all().map_err(|e| io("cannot sync target", e))?;
    let mut f = file
        .try_clone()
        .map_err(|e| io("cannot reopen target", e))?;
    std::io::Seek::rewind(&mut f).map_err(|e| io("cannot reread target", e))?;
    sha256_prefix(&mut f, len).map_err(|e| io("cannot read target", e))
}

/// Receive one udpcast transfer, publishing progress on the status page
/// (and to `on_progress`) until SUCCESS or FAILURE. Returns the final
/// snapshot; the page stays in place (remove it with [`StatusWriter::remove`]
/// or `xdpcast close`). Fails only if the page cannot be created.
pub fn receive(
    req: &UdpcastRequest,
    cancel: &AtomicBool,
    on_progress: &mut dyn FnMut(&Snapshot),
) -> Result<Snapshot> {
    let writer = StatusWriter::create(&writer_page_path(&req.session.name)?)?;
    let mut base = Snapshot {
        state: State::InProgress,
        name: req.session.name.clone(),
        group: req.session.group.to_string(),
        target: req.session.target.display().to_string(),
        message: format!(
            "udpcast: looking for udp-sender on port {}",
            req.portbase.wrapping_add(1)
        ),
        start_ns: now_ns(),
        ..Snapshot::default()
    };
    writer.publish(&base);
    on_progress(&base);
    let mut last = base.clone();
    let outcome = run(req, cancel, &mut base, &mut |s: &Snapshot| {
        writer.publish(s);
        on_progress(s);
        last = s.clone();
    });
    let mut s = last;
    s.end_ns = now_ns();
    s.rate_bps = 0;
    match outcome {
        Ok((len, digest)) => {
            s.state = State::Success;
            s.flags |= FLAG_GEOMETRY | FLAG_DIGEST;
            s.total_bytes = len;
            s.block_count = s.blocks_done;
            s.digest = digest;
            s.message = format!(
                "udpcast transfer complete: {len} bytes, SHA-256 {} (udpcast sends no checksum)",
                hex(&digest)
            );
        }
        Err(e) => {
            s.state = State::Failure;
            s.error = e.code;
            s.message = e.message;
        }
    }
    writer.publish(&s);
    on_progress(&s);
    Ok(s)
}

/// The whole transfer: handshake, data path, completion, target check.
fn run(
    req: &UdpcastRequest,
    cancel: &AtomicBool,
    base: &mut Snapshot,
    publish: &mut dyn FnMut(&Snapshot),
) -> Result<(u64, [u8; 32])> {
    if req.session.target.as_os_str().is_empty() {
        return Err(Error::new(ErrorCode::InvalidArgument, "no target given"));
    }
    req.session.validate()?;
    let port = req.session.group.0.port();
    if port != req.portbase {
        return Err(Error::new(
            ErrorCode::InvalidArgument,
            format!(
                "udpcast data arrives on the port base {}, not on port {port}",
                req.portbase
            ),
        ));
    }
    // As udp-receiver: a rendezvous address if given, else the interface's
    // broadcast address for TTL 1, else the all-hosts group.
    let control_ip = match (req.rendezvous, req.ttl) {
        (Some(a), _) => a,
        (None, 1) => broadcast_addr(&req.session.iface)?.unwrap_or(ALL_HOSTS),
        (None, _) => {
            broadcast_addr(&req.session.iface)?;
            ALL_HOSTS
        }
    };
    let sock = control_socket(req, control_ip)?;
    let control = SocketAddr::new(control_ip.into(), req.portbase.wrapping_add(1));
    let connected = connect(&sock, req, control, cancel)?;
    let group = data_group(req, &connected)?;
    base.group = group.to_string();
    base.message = format!(
        "udpcast client #{} of udp-sender {}",
        connected.client, connected.sender
    );
    publish(base);
    let out = open_output(&req.session.target, req.session.stream_window)?;
    let mut data_req = req.session.clone();
    data_req.group = group;
    let outcome = datapath::open(&data_req).and_then(|opened| {
        base.mode = opened.mode;
        if !opened.note.is_empty() {
            base.message = format!("{}; {}", base.message, opened.note);
        }
        let replies = sock
            .try_clone()
            .map_err(|e| Error::new(ErrorCode::Network, format!("control socket: {e}")))?;
        let slots = opened.sources.len();
        let stream = Arc::new(Stream::new(out, &connected, replies, slots + 1));
        let path = DataPath::start(opened, stream, req.session.cores.as_deref())?;
        let mut r = Run {
            path,
            control_slot: slots,
            start: Instant::now(),
            first_data: None,
            last: (Instant::now(), 0),
        };
        let watched = r.watch(&sock, req, base, cancel, publish);
        let stopped = r.path.shut_down();
        publish(&r.snapshot(base));
        let len = match stopped {
            Some(e) if watched.is_ok() => Err(e),
            _ => watched,
        }?;
        // A stream is drained first, so that a cancel still ends a wait
        // for a consumer that does not read.
        let sink = r.path.sink.clone();
        sink.drain(
            len,
            || cancel.load(Ordering::Relaxed),
            || publish(&r.snapshot(base)),
        )?;
        let digest = sink.finish(len);
        publish(&r.snapshot(base));
        Ok((len, digest?))
    });
    // Leave the sender's participant list either way, so it never waits for
    // this receiver again.
    if let Err(e) = sock.send_to(&disconnect(), connected.sender) {
        log::warn!("disconnecting from {}: {e}", connected.sender);
    }
    outcome
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
        assert!(!point_to_point(&CONNECT_REPLY));
        assert!(!point_to_point(&HELLO));
        assert!(!point_to_point(&[0, 2, 0, 0]));
        let mut data = DATA.to_vec();
        data.extend_from_slice(&[7; 1456]);
        assert!(point_to_point(&data));
        assert!(point_to_point(&REQACK));
        assert!(point_to_point(&FEC));
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

    /// A stream into a scratch file whose replies go to a local socket
    /// standing in for the sender, with block size 4.
    fn stream(name: &str) -> (Stream, UdpSocket, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("xdpcast-udpcast-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        let (file, block_device) = open_out(&path).unwrap();
        let (s, sender) = stream_to(Out::File { file, block_device });
        (s, sender, path)
    }

    /// A stream into `out` whose replies go to a local socket standing in
    /// for the sender, with block size 4.
    fn stream_to(out: Out) -> (Stream, UdpSocket) {
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        sender
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let SocketAddr::V4(at) = sender.local_addr().unwrap() else {
            unreachable!()
        };
        let connected = Connected {
            sender: at,
            client: 3,
            block_size: 4,
            data_addr: Ipv4Addr::new(239, 1, 1, 1),
        };
        let replies = UdpSocket::bind("127.0.0.1:0").unwrap();
        (Stream::new(out, &connected, replies, 1), sender)
    }

    fn data(slice: u32, block: u16, bytes: u32, payload: &[u8]) -> Vec<u8> {
        block_packet(op::DATA, 0, slice, block, bytes, payload)
    }

    /// A CMD_DATA or CMD_FEC datagram (`stripes` 0 for data).
    fn block_packet(
        opcode: u16,
        stripes: u16,
        slice: u32,
        block: u16,
        bytes: u32,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut d = vec![0u8; DATA_HEADER];
        d[..2].copy_from_slice(&opcode.to_be_bytes());
        d[2..4].copy_from_slice(&stripes.to_be_bytes());
        d[4..8].copy_from_slice(&slice.to_be_bytes());
        d[8..10].copy_from_slice(&block.to_be_bytes());
        d[12..16].copy_from_slice(&bytes.to_be_bytes());
        d.extend_from_slice(payload);
        d
    }

    fn reqack(slice: u32, bytes: u32, ready: &[u8]) -> Vec<u8> {
        let mut d = vec![0u8; DATA_HEADER];
        d[..2].copy_from_slice(&op::REQACK.to_be_bytes());
        d[4..8].copy_from_slice(&slice.to_be_bytes());
        d[8..12].copy_from_slice(&bytes.to_be_bytes());
        d[12..16].copy_from_slice(&7u32.to_be_bytes());
        d.extend_from_slice(ready);
        d
    }

    fn reply(sender: &UdpSocket) -> Vec<u8> {
        let mut buf = [0u8; 512];
        let n = sender.recv(&mut buf).unwrap();
        buf[..n].to_vec()
    }

    /// Nothing to read from the stand-in sender.
    fn no_reply(sender: &UdpSocket) {
        sender.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 512];
        let r = sender.recv(&mut buf);
        sender.set_nonblocking(false).unwrap();
        assert!(
            r.is_err(),
            "unexpected reply {:?}",
            r.map(|n| buf[..n].to_vec())
        );
    }

    /// The sender's end marker for slice `no`, sent twice as udp-sender
    /// does when the first goes unanswered: the first is held back, the
    /// second is taken and answered OK (the test streams wait for nothing).
    fn end(s: &Stream, sender: &UdpSocket, no: u32) {
        s.ingest(&reqack(no, 0, &[0; 128]), s.counters(0));
        no_reply(sender);
        s.ingest(&reqack(no, 0, &[0; 128]), s.counters(0));
        assert_eq!(reply(sender), ok(no));
    }

    #[test]
    fn slices_land_one_after_another_and_reqacks_are_answered() {
        let (s, sender, path) = stream("slices");
        let c = s.counters(0);
        let drops = |r: DropReason| c.drops[r as usize].load(Ordering::Relaxed);
        // Slice 1 (8 bytes) before slice 0's size is known: cannot be placed.
        s.ingest(&data(1, 0, 8, b"IJKL"), c);
        assert_eq!(drops(DropReason::Inconsistent), 1);
        // Slice 0: 10 bytes in blocks of 4, 4 and a short 2.
        s.ingest(&data(0, 2, 10, b"EF"), c);
        s.ingest(&data(0, 0, 10, b"ABCD"), c);
        s.ingest(&data(0, 0, 10, b"xxxx"), c);
        assert_eq!(drops(DropReason::Duplicate), 1);
        s.ingest(&data(0, 3, 10, b"xxxx"), c);
        assert_eq!(drops(DropReason::OutOfRange), 1);
        // REQACK for slice 0: block 1 missing, blocks 0 and 2 received.
        s.ingest(&reqack(0, 10, &[0; 128]), c);
        let r = reply(&sender);
        assert_eq!(&r[..13], &[0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7, 0b101]);
        // Already answered OK by this client (bit 3): no reply.
        s.ingest(&reqack(0, 10, &[0b1000]), c);
        s.ingest(&data(0, 1, 10, b"0123"), c);
        s.ingest(&reqack(0, 10, &[0; 128]), c);
        assert_eq!(reply(&sender), ok(0));
        s.ingest(&data(1, 1, 8, b"MNOP"), c);
        s.ingest(&data(1, 0, 8, b"IJKL"), c);
        assert_eq!(s.complete_len(), None, "no end marker yet");
        // The end marker (empty slice 2) before slice 1 was answered OK is
        // not where udp-sender sends it.
        s.ingest(&reqack(2, 0, &[0; 128]), c);
        assert_eq!(drops(DropReason::Inconsistent), 2);
        s.ingest(&reqack(1, 8, &[0; 128]), c);
        assert_eq!(reply(&sender), ok(1));
        // Now it is taken once it stands alone (no wait in this test), and
        // answered again if repeated.
        s.ledger().end_quiet = Duration::ZERO;
        end(&s, &sender, 2);
        s.ingest(&reqack(2, 0, &[0; 128]), c);
        assert_eq!(reply(&sender), ok(2));
        assert_eq!(s.complete_len(), Some(18));
        // Nothing is taken after the end.
        s.ingest(&data(3, 0, 4, b"late"), c);
        assert_eq!(drops(DropReason::Inconsistent), 3);
        let digest = s.finish(18).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"ABCD0123EFIJKLMNOP");
        let want: [u8; 32] = sha2::Digest::finalize(
            <sha2::Sha256 as sha2::Digest>::new_with_prefix(b"ABCD0123EFIJKLMNOP"),
        )
        .into();
        assert_eq!(digest, want);
        assert!(!s.has_failed());
    }

    #[test]
    fn a_stream_takes_what_its_window_holds_and_the_rest_is_asked_again() {
        let (mut rx, tx) = stream::pipe().unwrap();
        // A window of 8 bytes: two blocks of 4.
        let (s, sender) = stream_to(Out::Stream(StreamOut::start(tx, 8).unwrap()));
        let c = s.counters(0);
        // Nobody reads the pipe yet, but its buffer takes what is in order.
        // Block 2 would end at 12, past the window while blocks 0 and 1 are
        // held: refused, not marked, not a drop.
        s.ingest(&data(0, 2, 10, b"EF"), c);
        s.ingest(&reqack(0, 10, &[0; 128]), c);
        assert_eq!(
            &reply(&sender)[..13],
            &[0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7, 0]
        );
        assert_eq!(s.stream_status().unwrap().refused, 1);
        assert_eq!(
            c.drops
                .iter()
                .map(|d| d.load(Ordering::Relaxed))
                .sum::<u64>(),
            0
        );
        s.ingest(&data(0, 0, 10, b"ABCD"), c);
        s.ingest(&data(0, 1, 10, b"0123"), c);
        // The writer moves the window on as the pipe takes the bytes.
        while s.limit() < 12 {
            std::thread::yield_now();
        }
        s.ingest(&data(0, 2, 10, b"EF"), c);
        s.ingest(&reqack(0, 10, &[0; 128]), c);
        assert_eq!(reply(&sender), ok(0));
        s.ledger().end_quiet = Duration::ZERO;
        end(&s, &sender, 1);
        assert_eq!(s.complete_len(), Some(10));
        let digest = s.finish(10).unwrap();
        drop(s);
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut rx, &mut got).unwrap();
        assert_eq!(got, b"ABCD0123EF");
        let want: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(b"ABCD0123EF").into();
        assert_eq!(digest, want);
    }

    fn fec(stripes: u16, slice: u32, block: u16, bytes: u32, payload: &[u8]) -> Vec<u8> {
        block_packet(op::FEC, stripes, slice, block, bytes, payload)
    }

    /// The FEC blocks udp-sender sends for a slice of `image` in blocks of
    /// 4 bytes, dealt into `stripes` stripes with `rows` FEC blocks each:
    /// FEC block number stripe + row × stripes.
    fn fec_blocks(image: &[u8], stripes: usize, rows: usize) -> Vec<Vec<u8>> {
        let blocks: Vec<Vec<u8>> = image
            .chunks(4)
            .map(|b| {
                let mut b = b.to_vec();
                b.resize(4, 0);
                b
            })
            .collect();
        let mut out = vec![Vec::new(); stripes * rows];
        for stripe in 0..stripes {
            let data: Vec<&[u8]> = blocks
                .iter()
                .skip(stripe)
                .step_by(stripes)
                .map(|b| &b[..])
                .collect();
            for (row, f) in udpcast_fec::encode(&data, rows, 4)
                .unwrap()
                .into_iter()
                .enumerate()
            {
                out[stripe + row * stripes] = f;
            }
        }
        out
    }

    #[test]
    fn fec_blocks_rebuild_lost_data_blocks() {
        let (s, sender, path) = stream("fec");
        let c = s.counters(0);
        let drops = |r: DropReason| c.drops[r as usize].load(Ordering::Relaxed);
        // Slice 0: 26 bytes, 7 blocks (the last one short) in 2 stripes
        // (blocks 0, 2, 4, 6 and 1, 3, 5), 2 FEC blocks per stripe.
        let image = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ";
        let bytes = image.len() as u32;
        let f = fec_blocks(image, 2, 2);
        let block = |b: usize| &image[b * 4..(b * 4 + 4).min(image.len())];
        // Blocks 1 and 3 (stripe 1) and 6 (stripe 0, short) are lost.
        for b in [0, 2, 4, 5] {
            s.ingest(&data(0, b as u16, bytes, block(b)), c);
        }
        // Before the FEC blocks: a retransmission request for 1, 3 and 6.
        s.ingest(&reqack(0, bytes, &[0; 128]), c);
        let r = reply(&sender);
        assert_eq!(&r[..13], &[0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7, 0b0011_0101]);
        // Stripe 0 lacks one block: its first FEC block (number 0) rebuilds it.
        s.ingest(&fec(2, 0, 0, bytes, &f[0]), c);
        assert_eq!(c.fec_recovered.load(Ordering::Relaxed), 1);
        // The second one (number 2) is not needed: ignored, not a drop.
        s.ingest(&fec(2, 0, 2, bytes, &f[2]), c);
        // Stripe 1 lacks two: FEC blocks 3 (row 1) then 1 (row 0).
        s.ingest(&fec(2, 0, 3, bytes, &f[3]), c);
        s.ingest(&fec(2, 0, 3, bytes, &f[3]), c);
        assert_eq!(drops(DropReason::Duplicate), 1);
        s.ingest(&fec(4, 0, 1, bytes, &f[1]), c);
        assert_eq!(drops(DropReason::Inconsistent), 1, "stripe count changed");
        s.ingest(&fec(2, 0, 1, bytes, &f[1][..3]), c);
        assert_eq!(drops(DropReason::Truncated), 1);
        s.ingest(&fec(0, 0, 1, bytes, &f[1]), c);
        assert_eq!(drops(DropReason::Inconsistent), 2, "no stripes");
        s.ingest(&fec(2, 0, 256, bytes, &f[1]), c);
        assert_eq!(drops(DropReason::OutOfRange), 1, "row 128");
        assert_eq!(c.fec_recovered.load(Ordering::Relaxed), 1);
        s.ingest(&fec(2, 0, 1, bytes, &f[1]), c);
        assert_eq!(c.fec_recovered.load(Ordering::Relaxed), 3);
        // The slice is complete: OK, and a late data block is a duplicate.
        s.ingest(&reqack(0, bytes, &[0; 128]), c);
        assert_eq!(reply(&sender), ok(0));
        s.ingest(&data(0, 1, bytes, block(1)), c);
        assert_eq!(drops(DropReason::Duplicate), 2);
        // Slice 1 (one block, one stripe): its FEC block comes first and
        // rebuilds the block; the data block is then a duplicate.
        let f1 = fec_blocks(b"!?", 1, 1);
        s.ingest(&fec(1, 1, 0, 2, &f1[0]), c);
        assert_eq!(c.fec_recovered.load(Ordering::Relaxed), 4);
        s.ingest(&data(1, 0, 2, b"!?"), c);
        assert_eq!(drops(DropReason::Duplicate), 3);
        s.ingest(&reqack(1, 2, &[0; 128]), c);
        assert_eq!(reply(&sender), ok(1));
        s.ledger().end_quiet = Duration::ZERO;
        end(&s, &sender, 2);
        assert_eq!(s.complete_len(), Some(28));
        s.finish(28).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZ!?"
        );
        assert_eq!(c.blocks.load(Ordering::Relaxed), 8);
        assert_eq!(c.bytes.load(Ordering::Relaxed), 28);
        assert!(!s.has_failed());
    }

    #[test]
    fn fec_blocks_that_arrive_first_wait_for_the_data() {
        let (s, sender, path) = stream("fec-first");
        let c = s.counters(0);
        // One stripe of 3 blocks, 2 FEC rows; FEC block 1 first: the stripe
        // lacks all 3 blocks, one FEC block is not enough.
        let image = b"0123456789AB";
        let f = fec_blocks(image, 1, 2);
        s.ingest(&fec(1, 0, 1, 12, &f[1]), c);
        s.ingest(&data(0, 2, 12, b"89AB"), c);
        assert_eq!(c.fec_recovered.load(Ordering::Relaxed), 0);
        s.ingest(&reqack(0, 12, &[0; 128]), c);
        assert_eq!(
            &reply(&sender)[..13],
            &[0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7, 0b100]
        );
        // Block 0 arrives: one lost block, one FEC block kept: rebuilt.
        s.ingest(&data(0, 0, 12, b"0123"), c);
        assert_eq!(c.fec_recovered.load(Ordering::Relaxed), 1);
        s.ingest(&reqack(0, 12, &[0; 128]), c);
        assert_eq!(reply(&sender), ok(0));
        s.ledger().end_quiet = Duration::ZERO;
        end(&s, &sender, 1);
        assert_eq!(s.complete_len(), Some(12));
        s.finish(12).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), image);
    }

    #[test]
    fn a_forged_end_marker_does_not_end_the_transfer() {
        let (s, sender, path) = stream("forged-end");
        let c = s.counters(0);
        let drops = |r: DropReason| c.drops[r as usize].load(Ordering::Relaxed);
        // Before anything arrived (the sender may not have started): never
        // an end, even after a wait.
        s.ledger().end_quiet = Duration::ZERO;
        s.ingest(&reqack(0, 0, &[0; 128]), c);
        s.ingest(&reqack(0, 0, &[0; 128]), c);
        no_reply(&sender);
        assert_eq!(drops(DropReason::Inconsistent), 2);
        s.ledger().end_quiet = END_QUIET;
        s.ingest(&data(0, 0, 4, b"ABCD"), c);
        s.ingest(&reqack(0, 4, &[0; 128]), c);
        assert_eq!(reply(&sender), ok(0));
        // A forged end marker for slice 1 where the real one would be: held
        // back, not answered. The sender's slice 1 then shows it was not
        // the sender's: it is dropped, and the transfer goes on.
        s.ingest(&reqack(1, 0, &[0; 128]), c);
        no_reply(&sender);
        assert_eq!(s.complete_len(), None);
        s.ingest(&data(1, 0, 8, b"EFGH"), c);
        assert_eq!(drops(DropReason::Inconsistent), 3);
        // End markers anywhere else are dropped at once: a slice already
        // complete, one with data, one further on.
        for no in [0, 1, 2] {
            s.ingest(&reqack(no, 0, &[0; 128]), c);
        }
        assert_eq!(drops(DropReason::Inconsistent), 6);
        no_reply(&sender);
        s.ingest(&data(1, 1, 8, b"IJKL"), c);
        s.ingest(&reqack(1, 8, &[0; 128]), c);
        assert_eq!(reply(&sender), ok(1));
        s.ledger().end_quiet = Duration::ZERO;
        end(&s, &sender, 2);
        assert_eq!(s.complete_len(), Some(12));
        s.finish(12).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"ABCDEFGHIJKL");
        assert!(!s.has_failed());
    }

    #[test]
    fn the_end_marker_waits_until_the_sender_sends_nothing_else() {
        let c = WorkerCounters::default();
        let mut l = Ledger::new();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // Slice 0 (one block of 4) complete and answered OK.
        assert_eq!(l.locate(0, 4, 4, at(0), &c).unwrap(), Some(0));
        l.open[0].mark(0);
        l.retire(4);
        l.acked = Some(0);
        assert!(!l.end_marker(1, 4, at(0)).unwrap());
        assert!(!l.end_marker(1, 4, at(900)).unwrap());
        // A REQACK of slice 0 (the sender still waits for other receivers)
        // starts the wait again.
        assert_eq!(l.locate(0, 4, 4, at(950), &c).unwrap(), None);
        assert!(!l.end_marker(1, 4, at(1900)).unwrap());
        assert!(l.end_marker(1, 4, at(1950)).unwrap());
        assert!(l.finished());
        assert_eq!(l.base, 4);
        assert_eq!(
            c.drops[DropReason::Inconsistent as usize].load(Ordering::Relaxed),
            0
        );
    }

    #[test]
    fn slices_seen_with_two_sizes_fail_the_transfer() {
        for late in [false, true] {
            let (s, sender, _) = stream(&format!("conflict-{late}"));
            let c = s.counters(0);
            s.ingest(&data(0, 0, 10, b"ABCD"), c);
            if late {
                // Slice 0 complete, then its REQACK with another size,
                // even one saying this receiver already answered.
                s.ingest(&data(0, 1, 10, b"EFGH"), c);
                s.ingest(&data(0, 2, 10, b"IJ"), c);
                s.ingest(&reqack(0, 10, &[0; 128]), c);
                assert_eq!(reply(&sender), ok(0));
                assert!(!s.has_failed());
                s.ingest(&reqack(0, 12, &[0xff; 128]), c);
            } else {
                s.ingest(&data(0, 1, 12, b"EFGH"), c);
            }
            let e = s.failure().expect("conflict fails the transfer");
            assert_eq!(e.code, ErrorCode::ProtocolError, "{e}");
            assert!(e.message.contains("forged"), "{e}");
        }
    }

    #[test]
    fn only_the_sender_is_a_source() {
        let (s, _sender, _) = stream("source");
        assert_eq!(s.source(), Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    }

    #[test]
    fn being_dropped_by_the_sender_fails_the_transfer() {
        let (s, _sender, _) = stream("dropped");
        s.ingest(&data(0, 0, 8, b"ABCD"), s.counters(0));
        s.ingest(&data(MAX_AHEAD, 0, 8, b"ABCD"), s.counters(0));
        assert_eq!(s.failure().unwrap().code, ErrorCode::SenderGone);
    }
}
