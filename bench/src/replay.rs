//! Per-batch latency of the worker hot path, replayed in process.
//!
//! The receiver has no per-batch timing hook, so the end-to-end harness
//! cannot read batch latencies off a live worker. This replays what an XDP
//! worker does with one batch from its rx ring — decapsulate each frame,
//! parse, claim the block in the bitmap, copy it into the mapped target —
//! through the library's own [`frame::udp_payload`] and [`Transfer::ingest`],
//! and records each batch's wall time in an HDR histogram.

use std::path::Path;
use std::time::Instant;

use anyhow::{ensure, Result};
use hdrhistogram::Histogram;
use xdpcast::frame;
use xdpcast::transfer::Transfer;
use xdpcast::workers::Sink;

use crate::fixture;

/// Replay `laps` full transfers of a `image_len`-byte image cut into
/// `block_size` blocks, in batches of `batch` frames, into a fresh transfer
/// (and a fresh mapping of `target`) per lap. Returns batch latencies in ns.
pub fn batch_latency(
    target: &Path,
    block_size: u32,
    image_len: usize,
    batch: usize,
    laps: u32,
) -> Result<Histogram<u64>> {
    let img = fixture::image(image_len);
    let (g, dgrams) = fixture::datagrams(&img, block_size);
    let frames: Vec<Vec<u8>> = dgrams.iter().map(|d| fixture::eth_frame(d)).collect();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    for _ in 0..laps {
        let t = Transfer::new(target.to_path_buf(), None, 1);
        let c = t.counters(0);
        for b in frames.chunks(batch.max(1)) {
            let start = Instant::now();
            for f in b {
                match frame::udp_payload(f) {
                    Ok(d) => t.ingest(d, c),
                    Err(r) => c.drop_packet(r),
                }
            }
            hist.saturating_record(start.elapsed().as_nanos() as u64);
        }
        ensure!(
            t.blocks_done() == g.block_count,
            "replay wrote {} of {} blocks",
            t.blocks_done(),
            g.block_count
        );
    }
    Ok(hist)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_fills_the_histogram() {
        let dir = std::env::temp_dir().join(format!("xdpcast-replay-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let h = batch_latency(&dir.join("img"), 1400, 100_000, 16, 2).unwrap();
        // 72 blocks in batches of 16: 5 batches per lap.
        assert_eq!(h.len(), 10);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
