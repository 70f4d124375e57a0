//! `xdpcast-bench`: the release-built tools `cargo xtask bench` runs.
//!
//! - `blast`: send an image with the fast GSO sender (see `blast.rs`).
//! - `replay`: per-batch latency of the worker hot path (see `replay.rs`).
//!
//! Both print one line of `key=value` pairs for the harness to parse.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use xdpcast::net::{self, Group};
use xdpcast::wire;
use xdpcast_bench::blast::{self, BlastOptions};
use xdpcast_bench::{fixture, replay};

#[derive(Parser)]
#[command(name = "xdpcast-bench", about = "Benchmark tools for xdpcast")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Multicast a file in the xdpcast wire format as fast as possible (UDP GSO + sendmmsg).
    Blast {
        /// File to send.
        file: PathBuf,
        /// Multicast group and port.
        #[arg(long)]
        group: Group,
        /// Interface to send on.
        #[arg(long)]
        iface: String,
        /// Passes over the image.
        #[arg(long, default_value_t = 1)]
        passes: u32,
        /// Block size (default: the largest that fits the interface MTU).
        #[arg(long)]
        block_size: Option<u32>,
        /// Send one datagram per message instead of GSO super-datagrams.
        #[arg(long)]
        no_gso: bool,
        /// Pace to this many bits/s of image data (default: unpaced).
        #[arg(long)]
        rate_bps: Option<u64>,
    },
    /// Time the worker's work per batch of frames (decapsulate, parse, bitmap, copy).
    Replay {
        /// Target file for the replayed image (put it on tmpfs to leave the disk out).
        #[arg(long)]
        target: PathBuf,
        /// Block size.
        #[arg(long, default_value_t = 1400)]
        block_size: u32,
        /// Image size, MiB.
        #[arg(long, default_value_t = 64)]
        image_mib: usize,
        /// Frames per batch (the AF_XDP worker's default is 64).
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Full transfers to replay.
        #[arg(long, default_value_t = 3)]
        laps: u32,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Blast {
            file,
            group,
            iface,
            passes,
            block_size,
            no_gso,
            rate_bps,
        } => {
            let block_size = match block_size {
                Some(b) => b,
                None => wire::block_size_for_mtu(net::iface_mtu(&iface)?),
            };
            let o = BlastOptions {
                group,
                iface,
                passes,
                block_size,
                session: fixture::SESSION,
                gso: !no_gso,
                rate_bps,
            };
            // One line per pass, flushed, so a harness that stops the blast
            // early still knows the rate it sent at.
            let line = |r: &blast::BlastReport| {
                println!(
                    "blast packets={} bytes={} secs={:.3} segments={} block_size={block_size}",
                    r.packets,
                    r.bytes,
                    r.elapsed.as_secs_f64(),
                    r.segments
                );
            };
            blast::blast(&file, &o, line)?;
        }
        Cmd::Replay {
            target,
            block_size,
            image_mib,
            batch,
            laps,
        } => {
            let h = replay::batch_latency(&target, block_size, image_mib << 20, batch, laps)?;
            let _ = std::fs::remove_file(&target);
            println!(
                "replay batches={} p50_ns={} p99_ns={} p999_ns={} max_ns={}",
                h.len(),
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
                h.max()
            );
        }
    }
    Ok(())
}
