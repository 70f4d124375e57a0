//! What the control thread publishes: the page's values from the
//! transfer, the data path and the back-channel while the session runs
//! ([`Control::snapshot`]), and the result at its end.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::control::{Control, Meter};
use crate::error::Result;
use crate::proto::wire::{hex, DropReason};
use crate::receive::workers::Sink;
use crate::status::page::{
    now_ns, Snapshot, State, FLAG_DIGEST, FLAG_GEOMETRY, FLAG_ROOT, TRUST_MANIFEST,
    TRUST_NO_READ_BACK, TRUST_REQUIRED,
};

impl Control {
    /// The page's values now, with `state`.
    pub(super) fn snapshot(&mut self, state: State, meter: &mut Meter) -> Snapshot {
        let diag = self.path.diag();
        let foreign = self.path.source_filter();
        let t = &self.path.sink;
        let mut s = Snapshot {
            state,
            start_ns: self.base.start_ns,
            diag,
            ..self.base.clone()
        };
        s.workers = self
            .path
            .slots
            .iter()
            .zip(t.all_counters())
            .map(|(&(queue, cpu), c)| c.snapshot(u64::from(queue), cpu))
            .collect();
        s.storage = t.storage_status();
        // Each counter's drops by reason, loaded once: a slot's `drops`
        // and the page's `drops[]` are sums of the same values, so that
        // `packets` is exactly what was taken in less what was dropped
        // (docs/status-page.md).
        let mut slots = s.workers.iter_mut();
        for c in t.all_counters() {
            let by_reason = c.drops.each_ref().map(|v| v.load(Ordering::Relaxed));
            if let Some(w) = slots.next() {
                w.drops = by_reason.iter().sum();
            }
            for (d, v) in s.drops.iter_mut().zip(by_reason) {
                *d += v;
            }
        }
        // Chunks that failed their hash: found by the staging writer (or a
        // page's worker), counted by the signed state, not by a worker.
        s.drops[DropReason::BadChunk as usize] += t.signed().map_or(0, |sg| sg.bad_chunks());
        // What the HTTP source fed in counts like the workers' packets.
        let http = self.http_slot.map(|slot| t.counters(slot));
        let http_bytes = http.map_or(0, |c| c.bytes.load(Ordering::Relaxed));
        s.packets = (s.workers.iter().map(|w| w.packets).sum::<u64>()
            + http.map_or(0, |c| c.packets.load(Ordering::Relaxed)))
        .saturating_sub(s.total_drops());
        // Dropped in the XDP program: never seen by a worker.
        s.drops[DropReason::ForeignSource as usize] += foreign;
        s.blocks_done = t.blocks_done();
        // What this run received, for the rates; bytes_done also counts
        // the blocks a resume file says are on disk already.
        let received: u64 = s.workers.iter().map(|w| w.bytes).sum::<u64>() + http_bytes;
        if let Some(img) = t.image() {
            s.flags |= FLAG_GEOMETRY;
            s.session_id = u64::from(img.session);
            s.block_size = u64::from(img.geometry.block_size);
            s.block_count = img.geometry.block_count;
            s.total_bytes = img.geometry.total_size;
            s.sparse.zero_method = img.target.zeroed_by();
        }
        // Zero runs count as done: they are in place, only never sent.
        // Blocks of a chunk that failed its hash were counted when they
        // landed and are asked for again: they are not progress.
        let rejected = t.signed().map_or(0, |sg| sg.rejected_bytes());
        let done = t.resumed_and_skipped();
        s.sparse.skipped_bytes = done.skipped_bytes;
        s.sparse.skipped_blocks = done.skipped_blocks;
        s.bytes_done =
            (received + done.resumed_bytes + done.skipped_bytes).saturating_sub(rejected);
        if let Some(d) = t.digest() {
            s.flags |= FLAG_DIGEST;
            s.digest = d;
        } else if let Some(r) = t.signed().and_then(|sg| sg.root()) {
            s.flags |= FLAG_DIGEST | FLAG_ROOT;
            s.digest = r;
        }
        if let Some(st) = t.stream_status() {
            s.stream = st;
        }
        s.passes_seen = t.passes_seen();
        s.fec_recovered = t.fec_recovered();
        s.nacks_sent = self.repair.link.requests.load(Ordering::Relaxed);
        s.resumed_blocks = done.resumed_blocks;
        s.first_pass_missing = t.first_pass_missing().unwrap_or(0);
        if t.is_signed() {
            s.trust.flags |= TRUST_REQUIRED;
        }
        if let Some(sg) = t.signed() {
            s.trust.flags |= TRUST_MANIFEST;
            s.trust.chunk_count = sg.manifest.chunk_count();
            s.trust.chunks_verified = sg.verified_chunks();
            s.trust.rejected_blocks = sg.rejected_blocks();
            s.trust.pages = sg.pages();
            s.trust.issued_at = sg.manifest.issued_at;
            s.trust.signer = *sg.key.as_bytes();
        }
        let now = Instant::now();
        let dt = now.duration_since(meter.last).as_secs_f64();
        if dt >= 0.2 {
            meter.rate = ((received - meter.last_bytes) as f64 / dt) as u64;
            meter.last = now;
            meter.last_bytes = received;
        }
        if received > 0 {
            let first = *meter.first_block.get_or_insert(now);
            let secs = now.duration_since(first).as_secs_f64().max(1e-3);
            s.avg_rate_bps = (received as f64 / secs) as u64;
        }
        s.rate_bps = meter.rate;
        s.http.multicast_bytes = received - http_bytes;
        if let Some(c) = &self.http_counters {
            s.http = c.status(s.http.multicast_bytes);
        }
        s
    }

    /// Publish `s` on the page and to the progress callback.
    pub(super) fn publish(&mut self, s: &Snapshot) {
        self.writer.publish(s);
        if let Some(cb) = self.callbacks.on_progress.as_mut() {
            cb(s);
        }
    }

    /// The page at the session's end: the outcome's state, code and
    /// message.
    pub(super) fn result_snapshot(&mut self, outcome: &Result<()>, meter: &mut Meter) -> Snapshot {
        let mut s = self.snapshot(State::InProgress, meter);
        s.end_ns = now_ns();
        s.rate_bps = 0;
        match outcome {
            Ok(()) => {
                s.state = State::Success;
                if self.path.sink.is_signed() {
                    s.trust.flags |= TRUST_NO_READ_BACK;
                }
                s.message = match self.path.sink.signed() {
                    Some(sg) => format!(
                        "{} chunks verified against the manifest signed by {} ({} {})",
                        sg.verified_chunks(),
                        hex(sg.key.as_bytes()),
                        if s.flags & FLAG_ROOT != 0 {
                            "root"
                        } else {
                            "SHA-256"
                        },
                        hex(&s.digest)
                    ),
                    None => format!("SHA-256 {} verified", hex(&s.digest)),
                };
            }
            Err(e) => {
                s.state = State::Failure;
                s.error = e.code;
                s.message = e.message.clone();
            }
        }
        s
    }
}
