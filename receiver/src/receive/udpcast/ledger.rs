//! The receiver's state machine: which slices are open, what each holds,
//! where each lands in the target, and when the transfer has ended.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorCode, Result};
use crate::proto::udpcast::fec::{self as udpcast_fec, FecError};
use crate::proto::udpcast::{bit, MAP_BYTES, MAX_SLICE_BLOCKS};
use crate::proto::wire::DropReason;
use crate::receive::workers::WorkerCounters;

/// How far ahead of the oldest unfinished slice the sender may be; udpcast
/// keeps two slices in flight, so more means it has dropped us.
pub(super) const MAX_AHEAD: u32 = 4;
/// How long the sender must send nothing but its end marker before the
/// marker is answered and taken. udp-sender sends the end marker (a REQACK
/// for an empty slice) only once every receiver has answered OK for the
/// slice before it, and then nothing else; a forged one is followed by the
/// real sender's next slice (or its REQACKs for the one before), which
/// discards it. udp-sender repeats an unanswered REQACK (about every 10 ms,
/// then every second; it gives up after 200), so waiting costs it nothing.
pub(super) const END_QUIET: Duration = Duration::from_secs(1);
/// Sizes of complete slices kept to check late packets against: udp-sender
/// never goes back further than the two slices it keeps in flight.
pub(super) const KEEP_SIZES: usize = 16;

/// One slice not yet complete.
#[derive(Debug, Clone)]
pub(super) struct Slice {
    /// Bytes in the slice, once a packet told.
    pub(super) bytes: Option<u32>,
    /// Blocks received (or rebuilt from FEC blocks).
    pub(super) got: [u8; MAP_BYTES],
    /// Number of bits set in `got`.
    pub(super) count: u32,
    /// Copies of the blocks received, block b at b × block size (a short
    /// last block zero-padded): what FEC decoding needs besides the FEC
    /// blocks. Allocated with the first block.
    pub(super) copies: Vec<u8>,
    /// FEC stripes, once a CMD_FEC told (0: none yet).
    pub(super) stripes: u16,
    /// FEC blocks kept per stripe, as (row, block); never more than the
    /// stripe lacks data blocks.
    pub(super) fec: Vec<Vec<(usize, Box<[u8]>)>>,
}

impl Slice {
    pub(super) fn new() -> Slice {
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
    pub(super) fn blocks(&self, block_size: u64) -> usize {
        self.bytes
            .map_or(0, |b| u64::from(b).div_ceil(block_size) as usize)
    }

    pub(super) fn complete(&self, block_size: u64) -> bool {
        self.bytes
            .is_some_and(|b| u64::from(self.count) == u64::from(b).div_ceil(block_size))
    }

    /// Mark `block` received.
    pub(super) fn mark(&mut self, block: usize) {
        self.got[block / 8] |= 1 << (block % 8);
        self.count += 1;
    }

    /// Grow `copies` to the whole slice (zero-padded) once its size is known.
    pub(super) fn size_copies(&mut self, block_size: u64) {
        let want = self.blocks(block_size) * block_size as usize;
        if self.copies.len() < want {
            self.copies.resize(want, 0);
        }
    }

    /// Keep a copy of received `block` for FEC decoding.
    pub(super) fn keep(&mut self, block: usize, data: &[u8], block_size: u64) {
        let bs = block_size as usize;
        self.size_copies(block_size);
        if let Some(to) = self.copies.get_mut(block * bs..block * bs + data.len()) {
            to.copy_from_slice(data);
        }
    }

    /// The data blocks of `stripe`: stripe, stripe + stripes, ...
    pub(super) fn stripe_blocks(
        &self,
        stripe: usize,
        block_size: u64,
    ) -> std::iter::StepBy<std::ops::Range<usize>> {
        (stripe..self.blocks(block_size)).step_by(usize::from(self.stripes).max(1))
    }

    /// Data blocks of `stripe` neither received nor rebuilt.
    pub(super) fn lost(&self, stripe: usize, block_size: u64) -> impl Iterator<Item = usize> + '_ {
        self.stripe_blocks(stripe, block_size)
            .filter(|&b| !bit(&self.got, b))
    }

    /// If `stripe` holds as many FEC blocks as it lacks data blocks, rebuild
    /// those and mark them received; returns them as (block, data). A
    /// stripe with nothing missing forgets its FEC blocks.
    pub(super) fn rebuild(
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
        for (&b, data) in lost.iter().zip(&rebuilt) {
            self.mark(b);
            // Kept like a received block: the slice is written from its
            // copies once complete.
            self.copies[b * bs..(b + 1) * bs].copy_from_slice(data);
        }
        Ok(lost.into_iter().zip(rebuilt).collect())
    }
}

/// A complete slice taken off the ledger: its bytes, the offset in the
/// target where they go, and its number of blocks.
#[derive(Debug)]
pub(super) struct Retired {
    pub(super) at: u64,
    pub(super) data: Vec<u8>,
    pub(super) blocks: u64,
}

/// Where every slice goes: the unfinished ones and the offset of the first.
#[derive(Debug)]
pub(super) struct Ledger {
    /// Number of `open[0]`; all earlier slices are complete.
    pub(super) first: u32,
    /// Offset of `open[0]` in the target: bytes of all complete slices.
    pub(super) base: u64,
    pub(super) open: VecDeque<Slice>,
    /// Number of the empty slice that ends the transfer, once taken.
    pub(super) end: Option<u32>,
    /// An end marker not yet taken: its slice, and since when the sender
    /// has sent nothing else.
    pub(super) pending_end: Option<(u32, Instant)>,
    /// How long that must last ([`END_QUIET`]).
    pub(super) end_quiet: Duration,
    /// Highest slice answered CMD_OK.
    pub(super) acked: Option<u32>,
    /// Sizes of the last [`KEEP_SIZES`] complete slices, the last one
    /// being slice `first - 1`.
    pub(super) sizes: VecDeque<u32>,
    /// Blocks taken for writing.
    pub(super) accepted: u64,
}

/// Why a datagram is not taken: a counted drop, or packets that contradict
/// each other, which only forged ones do, and which end the transfer.
#[derive(Debug)]
pub(super) enum Refusal {
    Drop(DropReason),
    Fatal(Error),
}

impl From<DropReason> for Refusal {
    fn from(r: DropReason) -> Refusal {
        Refusal::Drop(r)
    }
}

/// Slice `no` seen with two sizes.
pub(super) fn conflict(no: u32, had: u32, got: u32) -> Refusal {
    Refusal::Fatal(Error::new(
        ErrorCode::ProtocolError,
        format!(
            "slice {no} came with {had} and with {got} bytes from the sender's address: \
             udp-sender never changes a slice, so some packets were forged"
        ),
    ))
}

impl Ledger {
    pub(super) fn new() -> Ledger {
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
    pub(super) fn locate(
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
    pub(super) fn end_marker(
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
                // The end marker's slice: empty, nothing to write.
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
    pub(super) fn open_slice(&mut self, no: u32) -> Result<Option<usize>> {
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

    pub(super) fn set_bytes(
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
    pub(super) fn offset(&self, i: usize) -> Option<u64> {
        self.open
            .iter()
            .take(i)
            .try_fold(self.base, |o, s| Some(o + u64::from(s.bytes?)))
    }

    /// Take the complete slices off the front, in order, with their
    /// bytes and where they land.
    pub(super) fn retire(&mut self, block_size: u64) -> Vec<Retired> {
        let mut retired = Vec::new();
        while self.open.front().is_some_and(|s| s.complete(block_size)) {
            let Some(mut s) = self.open.pop_front() else {
                break;
            };
            let bytes = s.bytes.unwrap_or(0);
            let mut data = std::mem::take(&mut s.copies);
            data.truncate(bytes as usize);
            retired.push(Retired {
                at: self.base,
                data,
                blocks: u64::from(s.count),
            });
            self.base += u64::from(bytes);
            self.first += 1;
            if self.sizes.len() == KEEP_SIZES {
                self.sizes.pop_front();
            }
            self.sizes.push_back(bytes);
        }
        retired
    }

    /// Rebuild what stripe `stripe` of `open[i]` lacks, if its FEC blocks
    /// suffice and the slice ends before `limit` (a stream's window): the
    /// blocks are marked received and taken for writing, and returned with
    /// their offsets in the target (cut to their length).
    pub(super) fn repair(
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
    pub(super) fn finished(&self) -> bool {
        self.end.is_some_and(|e| self.first > e)
    }
}
