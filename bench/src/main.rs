//! `xdpcast-bench`: the release-built tools `cargo xtask bench` runs.
//!
//! - `blast`: send an image with the fast GSO sender (see `blast.rs`); it
//!   prints a line of `key=value` pairs per pass for the harness to parse.
//! - `sparse-image`: write the sparse image of `cargo xtask bench --part
//!   sparse` (see [`fixture::write_sparse_image`]), to send it by hand.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use xdpcast::net::socket::{self, Group};
use xdpcast::proto::wire;
use xdpcast_bench::blast::{self, BlastOptions};
use xdpcast_bench::fixture;

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
    /// Write a sparse image: about 75 % zeros in runs of mixed lengths (64 B
    /// to 12 MiB), every other run a hole; prints the bytes in zero runs.
    SparseImage {
        /// File to write.
        file: PathBuf,
        /// Size in MiB.
        #[arg(long, default_value_t = 128)]
        size_mib: u64,
        /// Seed (the bench uses 1).
        #[arg(long, default_value_t = 1)]
        seed: u64,
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
                None => wire::block_size_for_mtu(socket::iface_mtu(&iface)?),
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
        Cmd::SparseImage {
            file,
            size_mib,
            seed,
        } => {
            let zeros = fixture::write_sparse_image(&file, size_mib << 20, seed)?;
            println!("zeros={zeros} bytes={}", size_mib << 20);
        }
    }
    Ok(())
}
