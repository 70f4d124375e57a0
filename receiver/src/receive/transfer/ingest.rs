//! The hot path: one datagram in, parsed, checked against the session and
//! written (or counted and dropped); FEC symbols kept and decoded.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Weak;

use super::image::{Image, Landed};
use super::{lock, Transfer};
use crate::error::Error;
use crate::proto::fec;
use crate::proto::manifest::SUB_HEAD;
use crate::proto::wire::{self, DropReason, Packet};
use crate::receive::checks::{self, Job};
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
        let g = &image.geometry;
        let (first, end) = fec::group_blocks(g, group_size, group);
        let have = image.written.count_range(first, end);
        let k = end - first;
        // A signed session onto a file or device decodes only from what
        // it still holds in memory (the group's blocks in the staging
        // buffer, whose chunk is not complete yet): it never reads the
        // target back. A group part of which was written out already is
        // asked for as block ranges instead (see `needs`).
        let in_memory = self.is_signed() && image.target.as_stream().is_none();
        if have == k {
            // Not needed: the group is complete.
            self.fec.forget(group);
            return;
        }
        let Some(symbols) = self.fec.add(group, symbol, have, k) else {
            return;
        };
        if in_memory && !image.held_in_memory(first, end) {
            // Enough symbols, but the group cannot be rebuilt here: they
            // go (they are not asked for again).
            return;
        }
        let block = |i| match in_memory {
            true => image.read_block_held(i),
            false => image.read_block(i),
        };
        // Rebuilt blocks land like received ones: in a signed session
        // their chunk is checked against its signed hash before it is
        // written (or, failing, forgotten and asked for again).
        match fec::decode(g, group_size, group, block, &symbols) {
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
                    // Once a head fixed the session, a copy is told from
                    // another by a byte compare, here; until then each is
                    // verified on the pool.
                    if let (None, Some(worker)) = (self.head.get(), self.pool_for(c)) {
                        return self.queue(Job::Head {
                            session: p.session(),
                            geometry: p.geometry(),
                            payload: payload.into(),
                            worker,
                        });
                    }
                    return self.manifest_head(p.session(), p.geometry(), payload);
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
                    // A copy of a verified page is compared here (no
                    // signature); a new one is verified on the pool.
                    match self.pool_for(c) {
                        Some(worker) if !s.has_page(index) => self.queue(Job::Page {
                            index,
                            payload: payload.into(),
                            worker,
                        })?,
                        _ => s.page(image.slots(), index, payload)?,
                    }
                }
                Packet::SignedEnd { payload, .. } => {
                    if !signed {
                        return Err(DropReason::BadKind);
                    }
                    match self.pool_for(c) {
                        Some(worker) => self.queue(Job::End {
                            payload: payload.into(),
                            worker,
                        })?,
                        None => self.signed_end(image, payload)?,
                    }
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
                Packet::Zeros { runs, .. } if !signed => {
                    if let Err(e) = image.zero_runs(runs, None) {
                        self.fail(e);
                    }
                }
                // In a signed session a run is applied only once its
                // packet's signature verifies, on the pool; its chunks are
                // then checked like data too.
                Packet::Zeros { signature, .. } => {
                    if signature.is_none() {
                        return Err(DropReason::Unauthenticated);
                    }
                    match self.pool_for(c) {
                        Some(worker) => self.queue(Job::Zeros {
                            packet: datagram.into(),
                            worker,
                        })?,
                        None => self.signed_zeros(image, &p)?,
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
                    // taken only from the sender's address (api/session/repair.rs).
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

impl Transfer {
    /// The slot of worker `c` when the checking pool runs and the caller
    /// is a worker draining a ring with one of this transfer's slots: its
    /// checks then go to the pool. None: run them here (no data path, the
    /// HTTP source's thread, a caller with counters of its own).
    fn pool_for(&self, c: &WorkerCounters) -> Option<usize> {
        if !self.checks.is_started() || !crate::receive::workers::on_worker() {
            return None;
        }
        self.workers.iter().position(|w| std::ptr::eq(&**w, c))
    }

    /// Queue a packet's check; a full queue drops the packet unchecked.
    fn queue(&self, job: Job) -> std::result::Result<(), DropReason> {
        if self.checks.packet(job) {
            Ok(())
        } else {
            Err(DropReason::Unauthenticated)
        }
    }
}

/// The checking pool's jobs, run on its threads: what a worker would have
/// done with the packet, and the drop it would have counted, counted in
/// that worker's counters.
impl checks::Checker for Transfer {
    fn run(&self, job: Job) {
        let (worker, outcome) = match job {
            Job::Head {
                session,
                geometry,
                payload,
                worker,
            } => (worker, self.manifest_head(session, geometry, &payload)),
            Job::Page {
                index,
                payload,
                worker,
            } => {
                let r = match (self.signed(), self.image()) {
                    (Some(s), Some(img)) => s.page(img.slots(), index, &payload),
                    _ => Err(DropReason::Unauthenticated),
                };
                (worker, r)
            }
            Job::End { payload, worker } => {
                let r = match self.image() {
                    Some(img) => self.signed_end(img, &payload),
                    None => Err(DropReason::Unauthenticated),
                };
                (worker, r)
            }
            Job::Zeros { packet, worker } => {
                let r = match (wire::parse(&packet), self.image()) {
                    (Ok(p), Some(img)) => self.signed_zeros(img, &p),
                    _ => Err(DropReason::Unauthenticated),
                };
                (worker, r)
            }
            Job::Chunk(k) => {
                if let (Some(s), Some(img)) = (self.signed(), self.image()) {
                    s.hash_stream_chunk(img.slots(), k);
                }
                return;
            }
        };
        if let (Err(r), Some(c)) = (outcome, self.workers.get(worker)) {
            c.drop_packet(r);
        }
    }

    fn fail(&self, err: Error) {
        Sink::fail(self, err);
    }
}

impl Sink for Transfer {
    fn start_helpers(&self, me: Weak<Self>) {
        self.checks.start(me);
    }

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
