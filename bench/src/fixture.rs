//! Deterministic images, and the datagrams and Ethernet frames that carry them.

use xdpcast::proto::wire::{self, Geometry};

/// Session id used by every fixture packet.
pub const SESSION: u32 = 0x00BE_4C00;

/// `len` pseudo-random bytes (xorshift64*): reproducible and incompressible,
/// so no layer can shortcut the copy.
pub fn image(len: usize) -> Vec<u8> {
    seeded_image(len, 0)
}

/// Like [`image`], a different image for each `seed` (tests use several).
pub fn seeded_image(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut x: u64 = (seed ^ 0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in out.chunks_mut(8) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
    out
}

/// Write a sparse image of `len` bytes to `path` and return the bytes in
/// its zero runs: about three quarters zeros, deterministic from `seed`.
///
/// Zero runs come in three kinds of length, one third of the runs each:
/// shorter than a 1400-byte block (64 B to 1 KiB: no whole block of them is
/// zero, so they go as data), a few blocks (2 to 64 KiB), and long (`L` to
/// `12 L`, `L` = `len`/128 between 4 KiB and 1 MiB: up to 12 MiB, many MiB
/// in a large image). Between them, runs of pseudo-random data, some 0.3 x
/// a zero run long on average. Every other zero run is a hole in the file
/// and the others are zeros written as data, so that a sender meets both.
pub fn write_sparse_image(path: &std::path::Path, len: u64, seed: u64) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::File::create(path)?;
    f.set_len(len)?;
    let mut x: u64 = (seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03) | 1;
    let mut next = move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let long = (len / 128).clamp(4096, 1 << 20);
    let kinds = [(64, 1024), (2048, 64 << 10), (long, 12 * long)];
    // Data runs uniform in [1 KiB, 0.6 x the mean zero run]: some 75 %
    // zeros over the image.
    let mean = kinds.iter().map(|(a, b)| (a + b) / 2).sum::<u64>() / 3;
    let data_span = (mean * 3 / 5).saturating_sub(1024).max(1);
    let (mut at, mut zeros, mut hole) = (0, 0, false);
    while at < len {
        let data = (1024 + next() % data_span).min(len - at);
        f.seek(SeekFrom::Start(at))?;
        f.write_all(&seeded_image(data as usize, next()))?;
        at += data;
        let (lo, hi) = kinds[(next() % 3) as usize];
        let run = (lo + next() % (hi - lo)).min(len - at);
        if !hole {
            f.seek(SeekFrom::Start(at))?;
            f.write_all(&vec![0; run as usize])?;
        }
        hole = !hole;
        at += run;
        zeros += run;
    }
    f.sync_all()?;
    Ok(zeros)
}

/// The data datagrams (UDP payloads) of `image` cut into `block_size` blocks.
pub fn datagrams(image: &[u8], block_size: u32) -> (Geometry, Vec<Vec<u8>>) {
    let g = Geometry::new(image.len() as u64, block_size);
    let packets = (0..g.block_count)
        .map(|i| {
            let off = g.offset(i) as usize;
            wire::encode_data(SESSION, &g, i, &image[off..off + g.block_len(i)])
        })
        .collect();
    (g, packets)
}

/// An Ethernet/IPv4/UDP frame to 239.77.0.1:5000 around `datagram`, as an
/// AF_XDP socket hands it to a worker (checksums left zero: nobody checks).
pub fn eth_frame(datagram: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + 28 + datagram.len());
    f.extend_from_slice(&[0x01, 0x00, 0x5e, 0x4d, 0x00, 0x01]); // group MAC
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let ip_len = (20 + 8 + datagram.len()) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&ip_len.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0, 1, 17, 0, 0]); // id, DF, ttl 1, UDP
    f.extend_from_slice(&[10, 77, 0, 1, 239, 77, 0, 1]);
    f.extend_from_slice(&40_000u16.to_be_bytes());
    f.extend_from_slice(&5000u16.to_be_bytes());
    f.extend_from_slice(&(ip_len - 20).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(datagram);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_images_are_mostly_zeros_and_reproducible() {
        let dir = std::env::temp_dir().join(format!("xdpcast-fixture-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a"), dir.join("b"));
        let len = 16 << 20;
        let zeros = write_sparse_image(&a, len, 7).unwrap();
        assert_eq!(write_sparse_image(&b, len, 7).unwrap(), zeros);
        let img = std::fs::read(&a).unwrap();
        assert_eq!(img, std::fs::read(&b).unwrap());
        assert_eq!(img.len() as u64, len);
        let share = zeros as f64 / len as f64;
        assert!((0.6..0.9).contains(&share), "{share}");
        let zero_bytes = img.iter().filter(|&&x| x == 0).count() as u64;
        assert!(zero_bytes >= zeros);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn frames_decapsulate_to_parseable_blocks() {
        let img = image(10_001);
        let (g, dgrams) = datagrams(&img, 1400);
        assert_eq!(dgrams.len() as u64, g.block_count);
        let f = eth_frame(&dgrams[7]);
        let d = xdpcast::proto::frame::udp_payload(&f).unwrap();
        match wire::parse(d).unwrap() {
            wire::Packet::Data { index, payload, .. } => {
                assert_eq!(index, 7);
                assert_eq!(payload, &img[9800..]);
            }
            p => panic!("unexpected {p:?}"),
        }
    }
}
