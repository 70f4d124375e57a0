//! The hot path: one datagram in, parsed, checked against the session and
//! written (or counted and dropped); FEC symbols kept and decoded.

use std::net::IpAddr;
use std::sync::atomic::Ordering;

use super::image::{Image, Landed};
use super::{lock, Transfer};
use crate::error::Error;
use crate::proto::fec;
use crate::proto::manifest::SUB_HEAD;
use crate::proto::wire::{self, DropReason, Packet};
use crate::receive::workers::{bump, Sink, WorkerCounters};
use crate::store::handoff::Held;

impl Transfer {
    /// A repair symbol for `group`: keep it, and rebuild the group's missing
    /// blocks once enough symbols are in.
    fn fec_symbol(
        &self,
        image: &Image,
        group: u64,
        group_size: u32,
        symbol: &[u8],
        c: &WorkerCounters,
    ) {
        // A signed session onto a file or device does not decode: the
        // group's other blocks would be read back from the target (it
        // asks for block ranges instead, see `needs`).
        if self.is_signed() && image.target.as_stream().is_none() {
            return;
        }
        let g = &image.geometry;
        let (first, end) = fec::group_blocks(g, group_size, group);
        let have = image.written.count_range(first, end);
        let k = end - first;
        if have == k {
            // Not needed: the group is complete.
            self.fec.forget(group);
            return;
        }
        let Some(symbols) = self.fec.add(group, symbol, have, k) else {
            return;
        };
        match fec::decode(g, group_size, group, |i| image.read_block(i), &symbols) {
            Some(data) => {
                for (n, idx) in (first..end).enumerate() {
                    let at = n * g.block_size as usize;
                    let block = &data[at..at + g.block_len(idx)];
                    if image.write_block(idx, block, None, c, self.signed()) == Landed::Written {
                        bump(&c.fec_recovered, 1);
                    }
                }
            }
            None => self.fec.put_back(group, symbols),
        }
    }
    /// Take in one datagram (the UDP payload) on behalf of worker `c`;
    /// whether its frame `held` went to the copier with a data block.
    fn take(&self, datagram: &[u8], held: Option<Held<'_>>, c: &WorkerCounters) -> bool {
        let mut kept = false;
        let outcome = wire::parse(datagram).and_then(|p| {
            let signed = self.is_signed();
            if let Packet::Manifest { payload, .. } = p {
                if !signed {
                    return Err(DropReason::BadKind);
                }
                if payload[0] == SUB_HEAD {
                    return self.manifest_head(&p, payload);
                }
            }
            let image = self.image_for(&p)?;
            match p {
                Packet::Data { index, payload, .. } => {
                    match image.write_block(index, payload, held, c, self.signed()) {
                        Landed::Duplicate => return Err(DropReason::Duplicate),
                        Landed::Kept => kept = true,
                        Landed::Written | Landed::Refused => {}
                    }
                }
                // With --trust only the signed manifest and signed ends count.
                Packet::Announce { .. } | Packet::End { .. } if signed => {
                    return Err(DropReason::Unauthenticated)
                }
                Packet::Announce { control, .. } => {
                    self.unsigned_control(image, &control, false)?;
                }
                Packet::End { control, .. } => {
                    self.unsigned_control(image, &control, true)?;
                }
                Packet::Manifest { index, payload, .. } => {
                    let s = self.signed().ok_or(DropReason::Unauthenticated)?;
                    s.page(image.slots(), index, payload)?;
                }
                Packet::SignedEnd { payload, .. } => {
                    if !signed {
                        return Err(DropReason::BadKind);
                    }
                    self.signed_end(image, payload)?;
                }
                Packet::Fec {
                    group,
                    group_size,
                    symbol,
                    ..
                } => {
                    if let Some(s) = self.signed() {
                        // Symbols are taken in a signed session only when
                        // its manifest announces FEC or parity repair for
                        // groups of this size (the rebuilt blocks are then
                        // checked against the chunk hashes).
                        let m = &s.manifest;
                        let symbols = m.fec_repair > 0 || m.flags & wire::FLAG_PARITY != 0;
                        if !symbols || m.fec_group != group_size {
                            return Err(DropReason::Unauthenticated);
                        }
                    }
                    self.fec_symbol(image, group, group_size, symbol, c)
                }
                Packet::Zeros { runs, .. } => {
                    // In a signed session each run is checked like data,
                    // through the signed hashes of the chunks it falls in.
                    if let Err(e) = image.zero_runs(runs, self.signed()) {
                        self.fail(e);
                    }
                }
                Packet::Confirm {
                    round,
                    group_size,
                    flags,
                    counts,
                    ..
                } => {
                    // A "too slow" verdict is unicast to one receiver and
                    // taken only from the sender's address (session.rs).
                    if flags & wire::CONFIRM_TOO_SLOW != 0 {
                        return Err(DropReason::BadControl);
                    }
                    lock(&self.confirmed).confirm(round, group_size, counts);
                }
                // Requests and reports go to the sender; one on the group
                // is misdirected.
                Packet::Nack { .. } | Packet::ParityRequest { .. } | Packet::Progress { .. } => {
                    return Err(DropReason::BadKind)
                }
            }
            Ok(())
        });
        if let Err(r) = outcome {
            c.drop_packet(r);
        }
        kept
    }
}

impl Sink for Transfer {
    fn ingest(&self, datagram: &[u8], c: &WorkerCounters) {
        self.take(datagram, None, c);
    }

    fn ingest_held(&self, datagram: &[u8], held: Held<'_>, c: &WorkerCounters) -> bool {
        self.take(datagram, Some(held), c)
    }

    /// Record a fatal error; the first one wins.
    fn fail(&self, err: Error) {
        let mut f = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            log::error!("{err}");
            *f = Some(err);
            self.failed.store(true, Ordering::Release);
        }
    }

    fn counters(&self, i: usize) -> &WorkerCounters {
        &self.workers[i]
    }

    /// Whether the transfer has failed (cheap check for the hot path).
    fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// `--source`, else the address the verified manifest names.
    fn source(&self) -> Option<IpAddr> {
        self.source.or_else(|| self.signed().and_then(|s| s.source))
    }
}
