//! Hot-path micro-benchmarks, per block, against the floor of a bare memcpy
//! of the same bytes; and the cost of one status-page update.
//!
//! Targets live in `/dev/shm` (or `$XDPCAST_BENCH_DIR`) so that the numbers
//! are CPU and memory cost, not the disk's.
//!
//! - `block/<size>/parse`: wire header parse only.
//! - `block/<size>/parse_bitmap_copy`: parse, claim the block in the bitmap,
//!   copy it into the staging buffer of a warm target.
//! - `block/<size>/ingest`: the receiver's full `Transfer::ingest`, into a
//!   fresh transfer and target per lap over the image, like a real receive:
//!   the worker's first touch of each block's destination is included (the
//!   staging writer's thread faults its buffers in and writes the chunks
//!   to the file meanwhile, off the timed thread, as in the receiver). This
//!   is the socket path's worker, which copies each block into staging.
//! - `block/<size>/ingest_frame`: the AF_XDP worker's per-frame work:
//!   Ethernet/IP/UDP decapsulation, then `Transfer::ingest_held`, which
//!   hands the block in its frame to the lane's copier thread (frames laid
//!   out as in a UMEM; the copier copies them into staging meanwhile, off
//!   the timed thread, as in the receiver; every 64 frames the loop kicks
//!   it, as a worker does after each batch). A lap is at most one lane of the
//!   default UMEM: the worker's cost while the copier keeps up, which it
//!   does at any rate below its own cost per block, the `ingest` row (this
//!   loop offers blocks several times faster than that; a full lane would
//!   make the worker copy, and the row would measure the copier instead).
//! - `block/<size>/memcpy`: `copy_nonoverlapping` of the block into a warm
//!   buffer at the same offset: the floor.
//! - `block/<size>/memcpy_fresh`: the same into a fresh anonymous mapping
//!   per lap over the image (untimed `mmap`), so each page's first touch
//!   (fault and zeroing) is in the copy: the floor with first touch
//!   included, as `ingest` is measured (fresh transfer, target and staging
//!   buffer per lap).
//! - `block/<size>/blake3_chunk`: what a signed session adds per block: the
//!   BLAKE3 hash of a 256-block chunk (read back from the warm target, as
//!   the receiver does when the chunk's last block lands), divided by 256.
//! - `chunk_hash/<block size>`: BLAKE3 of one signed chunk, from memory
//!   (the staging buffer, as the writer thread hashes it: no read-back), on
//!   one thread; a chunk as a signed session of a 1 GiB image lays it out
//!   (`manifest::chunk_blocks_for`: 512 blocks of 1400 bytes, 700 KiB). The
//!   throughput is the per-core rate to set beside the line rate.
//! - `status/publish/<workers>` and `status/read`: one seqlock update of the
//!   4 KiB status page, and one consistent read of it.
//! - `zeros/scan` and `zeros/hash`: the sender's check of every 1400-byte
//!   block of a 64 MiB, 75 % zero image for zeros (hashing excluded), and
//!   the SHA-256 read it rides on, per byte of image.

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use memmap2::MmapMut;
use xdpcast::net::rings;
use xdpcast::proto::frame;
use xdpcast::proto::manifest;
use xdpcast::proto::wire::{self, Geometry, Packet};
use xdpcast::receive::bitmap::BlockBitmap;
use xdpcast::receive::transfer::Transfer;
use xdpcast::receive::workers::Sink;
use xdpcast::send::zeros;
use xdpcast::status::page::{Snapshot, State, StatusReader, StatusWriter, WorkerStatus};
use xdpcast::store::handoff::{lane_capacity, Held, Producer};
use xdpcast::store::target::Target;
use xdpcast_bench::fixture;

/// Image size per lap: large enough to leave the caches.
const IMAGE: usize = 32 << 20;

fn bench_dir() -> PathBuf {
    let base = std::env::var_os("XDPCAST_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/dev/shm"));
    let dir = base.join(format!("xdpcast-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create bench dir");
    dir
}

/// Time `per_packet` over `iters` packets, cycling through `n` packets; at
/// the start of every lap over them `lap` builds fresh state, untimed.
fn laps<S>(
    iters: u64,
    n: usize,
    mut lap: impl FnMut() -> S,
    mut per_packet: impl FnMut(&mut S, usize),
) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let mut state = lap();
        let count = left.min(n as u64) as usize;
        let start = Instant::now();
        for i in 0..count {
            per_packet(&mut state, i);
        }
        total += start.elapsed();
        left -= count as u64;
    }
    total
}

fn per_block(c: &mut Criterion) {
    let dir = bench_dir();
    let img = fixture::image(IMAGE);
    for block_size in [1400u32, 8192] {
        let (g, dgrams) = fixture::datagrams(&img, block_size);
        let frames: Vec<Vec<u8>> = dgrams.iter().map(|d| fixture::eth_frame(d)).collect();
        let n = dgrams.len();
        // The frames in one "UMEM", one per power-of-two slot.
        let fsize = frames
            .iter()
            .map(Vec::len)
            .max()
            .unwrap_or(1)
            .next_power_of_two();
        let mut umem = vec![0u8; n * fsize];
        for (i, f) in frames.iter().enumerate() {
            umem[i * fsize..i * fsize + f.len()].copy_from_slice(f);
        }
        let umem = Arc::new(umem);
        let lane_len = lane_capacity(rings::DEFAULT_FRAMES as usize);
        let path = dir.join(format!("target-{block_size}"));
        let warm = Target::open(&path, g.total_size, block_size, &Default::default())
            .expect("open target");
        // Block by block: the target's staging writer takes one block per write.
        for i in 0..g.block_count {
            let o = g.offset(i) as usize;
            warm.write_at(o as u64, &img[o..o + g.block_len(i)]);
        }
        let mut floor = img.clone();

        let mut group = c.benchmark_group(format!("block/{block_size}"));
        group.throughput(Throughput::Bytes(u64::from(block_size)));
        group.bench_function("parse", |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % n;
                black_box(wire::parse(black_box(&dgrams[i]))).is_ok()
            })
        });
        group.bench_function("parse_bitmap_copy", |b| {
            b.iter_custom(|iters| {
                laps(
                    iters,
                    n,
                    || BlockBitmap::new(g.block_count),
                    |bitmap, i| {
                        if let Ok(Packet::Data { index, payload, .. }) = wire::parse(&dgrams[i]) {
                            if bitmap.insert(index) {
                                warm.write_at(g.offset(index), payload);
                            }
                        }
                    },
                )
            })
        });
        let fresh = || {
            let t = Transfer::new(path.clone(), None, 1);
            // The first packet opens the target: keep that out of the timing.
            t.ingest(&dgrams[n - 1], t.counters(0));
            t
        };
        group.bench_function("ingest", |b| {
            b.iter_custom(|iters| {
                laps(iters, n - 1, fresh, |t, i| {
                    t.ingest(&dgrams[i], t.counters(0))
                })
            })
        });
        group.bench_function("ingest_frame", |b| {
            b.iter_custom(|iters| {
                let lap = || {
                    let lane = Producer::new(lane_len, umem.as_ptr(), umem.len(), umem.clone());
                    (fresh(), lane)
                };
                laps(iters, lane_len.min(n - 1), lap, |(t, lane), i| {
                    let c = t.counters(0);
                    let at = i * fsize;
                    match frame::udp_payload(&umem[at..at + frames[i].len()]) {
                        Ok(d) => {
                            let held = Held {
                                producer: lane,
                                frame: at as u64,
                            };
                            t.ingest_held(d, held, c);
                        }
                        Err(r) => c.drop_packet(r),
                    }
                    if i % 64 == 63 {
                        lane.kick();
                    }
                })
            })
        });
        let chunk = 256 * block_size as usize;
        group.bench_function("blake3_chunk", |b| {
            b.iter_custom(|iters| {
                let chunks = iters.div_ceil(256);
                let start = Instant::now();
                for c in 0..chunks {
                    let at = (c as usize * chunk) % (img.len() - chunk + 1);
                    let bytes = warm
                        .read_at(at as u64, chunk)
                        .expect("read the warm target");
                    black_box(manifest::chunk_hash(&bytes));
                }
                // Per block: scale the chunks' time to exactly `iters` blocks.
                start
                    .elapsed()
                    .mul_f64(iters as f64 / (chunks * 256) as f64)
            })
        });
        group.bench_function("memcpy", |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % n;
                let src = &dgrams[i][wire::HEADER_LEN..];
                let off = g.offset(i as u64) as usize;
                // SAFETY: `off + src.len()` is inside `floor` (same geometry
                // as the image it was cloned from); the buffers are distinct.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        src.as_ptr(),
                        floor.as_mut_ptr().add(off),
                        src.len(),
                    );
                }
                black_box(&floor);
            })
        });
        group.bench_function("memcpy_fresh", |b| {
            b.iter_custom(|iters| {
                laps(
                    iters,
                    n,
                    || MmapMut::map_anon(IMAGE).expect("anonymous mapping"),
                    |dst, i| {
                        let src = &dgrams[i][wire::HEADER_LEN..];
                        let off = g.offset(i as u64) as usize;
                        dst[off..off + src.len()].copy_from_slice(src);
                        black_box(dst);
                    },
                )
            })
        });
        group.finish();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn status_page(c: &mut Criterion) {
    let dir = bench_dir();
    let path = dir.join("status");
    let w = StatusWriter::create(&path).expect("status page");
    let mut group = c.benchmark_group("status");
    for workers in [2usize, 32] {
        let mut snap = Snapshot {
            state: State::InProgress,
            name: "bench".into(),
            group: "239.77.0.1:5000".into(),
            target: "/dev/shm/xdpcast-bench/target".into(),
            workers: vec![WorkerStatus::default(); workers],
            ..Snapshot::default()
        };
        group.bench_with_input(BenchmarkId::new("publish", workers), &workers, |b, _| {
            b.iter(|| {
                snap.blocks_done += 1;
                w.publish(black_box(&snap));
            })
        });
    }
    let r = StatusReader::open(&path).expect("reader");
    group.bench_function("read", |b| b.iter(|| black_box(r.read().is_ok())));
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The sender's zero scan over a 64 MiB sparse image held in memory as
/// data (no holes, so every block is checked, the worst case for a 75 %
/// zero image): `scan` is the time spent checking blocks for zeros alone
/// (`zeros::zero_runs_in` piece by piece, as the sender's scanner does);
/// `hash` the SHA-256 read beside it, for scale. Throughput is per byte of
/// image, so criterion's GiB/s gives the scan's cost per GB.
fn zero_scan(c: &mut Criterion) {
    const LEN: usize = 64 << 20;
    let dir = bench_dir();
    let sparse = dir.join("sparse");
    fixture::write_sparse_image(&sparse, LEN as u64, 1).expect("sparse image");
    let image = std::fs::read(&sparse).expect("read the sparse image");
    let path = dir.join("dense");
    std::fs::write(&path, &image).expect("write the image as data");
    let file = std::fs::File::open(&path).expect("open");
    // SAFETY: read-only mapping of our own scratch file, not modified while mapped.
    let map = unsafe { memmap2::Mmap::map(&file) }.expect("map");
    let g = Geometry::new(LEN as u64, 1400);
    let step = zeros::piece_blocks(&g);
    let mut group = c.benchmark_group("zeros");
    group.throughput(Throughput::Bytes(LEN as u64));
    group.sample_size(10);
    group.bench_function("scan", |b| {
        b.iter(|| {
            let mut data = zeros::DataMap::of(&file, LEN as u64);
            let mut runs = 0;
            for first in (0..g.block_count).step_by(step as usize) {
                let end = (first + step).min(g.block_count);
                runs += zeros::zero_runs_in(&map, &g, first, end, &mut data).blocks();
            }
            black_box(runs)
        })
    });
    group.bench_function("hash", |b| {
        b.iter(|| black_box(zeros::sha256(&map, zeros::DataMap::of(&file, LEN as u64))))
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

/// BLAKE3 of a signed chunk from warm memory, one thread: GB/s per core.
fn chunk_hash(c: &mut Criterion) {
    let mut group = c.benchmark_group("chunk_hash");
    for block_size in [1400u32, 8192] {
        let blocks = (1u64 << 30).div_ceil(u64::from(block_size));
        let chunk =
            u64::from(manifest::chunk_blocks_for(blocks, block_size)) * u64::from(block_size);
        // Several chunks, hashed in turn, so that the input is not all in L2.
        let buf: Vec<u8> = (0..chunk as usize * 16)
            .map(|i| (i * 131 % 251) as u8)
            .collect();
        group.throughput(Throughput::Bytes(chunk));
        group.bench_function(BenchmarkId::from_parameter(block_size), |b| {
            let mut at = 0;
            b.iter(|| {
                let c = &buf[at..at + chunk as usize];
                at = (at + chunk as usize) % buf.len();
                black_box(manifest::chunk_hash(black_box(c)))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, per_block, chunk_hash, status_page, zero_scan);
criterion_main!(benches);
