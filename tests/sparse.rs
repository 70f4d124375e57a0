//! Sparse images: runs of zero blocks are announced, not sent, and land as
//! real holes in a file, or zeroed in place on a block device holding old
//! data; a receiver killed half-way resumes. Every case ends with the
//! source's SHA-256 on the target.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Child;
use std::time::Duration;

use common::*;
use xdpcast::status::page::{State, ZeroMethod};
use xdpcast::ErrorCode;
use xdpcast_bench::fixture::write_sparse_image;

const MIB: u64 = 1 << 20;
const GROUP: &str = "239.8.8.8:5000";

/// A namespace whose loopback carries multicast.
fn loopback(name: &str) -> Netns {
    let ns = Netns::new(name);
    ns.ip(&["route", "add", "224.0.0.0/4", "dev", "lo"]);
    ns
}

fn receiver(ns: &Netns, iface: &str, status: &Path, name: &str, out: &str) -> Child {
    receiver_with(ns, iface, status, name, out, &[])
}

fn receiver_with(
    ns: &Netns,
    iface: &str,
    status: &Path,
    name: &str,
    out: &str,
    extra: &[&str],
) -> Child {
    let mut args = vec!["--iface", iface, "--mode", "socket", "--out", out];
    args.extend_from_slice(extra);
    start_receiver(xdpcast(ns), status, name, GROUP, &args)
}

/// Send `src` on the namespace's loopback to a receiver writing `out`;
/// returns the sender's final line, after checking both succeeded.
fn transfer(ns: &Netns, dir: &Path, name: &str, src: &Path, out: &str) -> String {
    transfer_with(ns, dir, name, src, out, &[])
}

/// [`transfer`] with `extra` receiver arguments.
fn transfer_with(
    ns: &Netns,
    dir: &Path,
    name: &str,
    src: &Path,
    out: &str,
    extra: &[&str],
) -> String {
    let rx = receiver_with(ns, "lo", dir, name, out, extra);
    let tx = start_sender(
        ns,
        "lo",
        GROUP,
        src,
        &["--block-size", "1400", "--rate", "1G", "--passes", "2"],
    );
    let line = ok(
        &wait_output(tx, Duration::from_secs(120), "sender"),
        "sender",
    );
    ok(
        &wait_output(rx, Duration::from_secs(120), "receiver"),
        "receiver",
    );
    let s = read_page(dir, name);
    assert_eq!(s.state, State::Success);
    assert_eq!(s.bytes_done, s.total_bytes);
    // Only the data went over the wire.
    let packets: u64 = s.workers.iter().map(|w| w.packets).sum();
    assert!(
        packets < s.block_count,
        "{packets} packets for {} blocks in two passes",
        s.block_count
    );
    line
}

/// Bytes in all-zero blocks of 1400 bytes of `src`.
fn zero_block_bytes(src: &Path) -> u64 {
    std::fs::read(src)
        .unwrap()
        .chunks(1400)
        .filter(|b| b.iter().all(|&x| x == 0))
        .map(|b| b.len() as u64)
        .sum()
}

/// Bytes a file really holds on disk.
fn allocated(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().blocks() * 512
}

#[test]
fn file_target_over_old_data_ends_with_real_holes() {
    if !netns_allowed() {
        return;
    }
    let ns = loopback("xdpc-sparse");
    let dir = TempDir::new("xdpc-sparse");
    let (src, dst) = (dir.join("src.img"), dir.join("dst.img"));
    let len = 16 * MIB;
    let zeros = write_sparse_image(&src, len, 1).unwrap();
    std::fs::write(&dst, vec![0xEE; len as usize]).unwrap();
    let line = transfer(&ns, &dir.0, "file", &src, dst.to_str().unwrap());
    assert!(line.contains("skipped"), "{line}");
    assert_eq!(sha256_hex(&src), sha256_hex(&dst));
    let s = read_page(&dir.0, "file");
    assert_eq!(s.sparse.skipped_bytes, zero_block_bytes(&src));
    assert_eq!(s.sparse.zero_method, ZeroMethod::PunchHole);
    // The zero runs are holes: at most a page at each end of a run stays.
    assert!(
        allocated(&dst) < len - zeros + zeros / 8,
        "{} bytes allocated, {} of data",
        allocated(&dst),
        len - zeros
    );
}

#[test]
fn sparse_image_fits_a_filesystem_smaller_than_the_image() {
    if !netns_allowed() {
        return;
    }
    let ns = loopback("xdpc-sparse-fit");
    let dir = TempDir::new("xdpc-sparse-fit");
    let src = dir.join("src.img");
    let len = 16 * MIB;
    let zeros = write_sparse_image(&src, len, 4).unwrap();
    assert!(len - zeros < 6 * MIB, "{} bytes of data", len - zeros);
    // A sparse file: its zeros are holes (the fixture writes some as data).
    // The sender announces holes before its first data packet (it knows
    // them from lseek alone); zeros written as data are only found as it
    // reads the image, after the receiver reserved its space.
    let dug = std::process::Command::new("fallocate")
        .args(["--dig-holes", src.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(dug.success());
    // Room for the data, not for the whole image. By default an image
    // must fit the free space as if it had no holes: refused before the
    // target is created.
    let fs = Tmpfs::mount(dir.join("small"), "10m", "xdpc-sparse");
    let dst = fs.0.join("dst.img");
    let rx = receiver(&ns, "lo", &dir.0, "refused", dst.to_str().unwrap());
    let tx = start_sender(
        &ns,
        "lo",
        GROUP,
        &src,
        &["--block-size", "1400", "--rate", "1G"],
    );
    let o = wait_output(rx, Duration::from_secs(120), "receiver");
    kill_group(&tx);
    let _ = wait_output(tx, Duration::from_secs(120), "sender");
    assert_eq!(o.status.code(), Some(100 + ErrorCode::DiskFull as i32));
    assert_eq!(read_page(&dir.0, "refused").error, ErrorCode::DiskFull);
    assert!(!dst.exists(), "nothing created");
    // With --max-image-size, only the data is reserved, and the zero runs
    // stay holes.
    transfer_with(
        &ns,
        &dir.0,
        "fit",
        &src,
        dst.to_str().unwrap(),
        &["--max-image-size", "16M"],
    );
    assert_eq!(sha256_hex(&src), sha256_hex(&dst));
    assert!(allocated(&dst) < 10 * MIB, "{}", allocated(&dst));
    drop(fs);
}

#[test]
fn block_device_holding_old_data_is_zeroed_where_the_image_has_zeros() {
    if !netns_allowed() {
        return;
    }
    let ns = loopback("xdpc-sparse-blk");
    let dir = TempDir::new("xdpc-sparse-blk");
    let src = dir.join("src.img");
    let len = 16 * MIB;
    write_sparse_image(&src, len, 2).unwrap();
    let backing = dir.join("dev.backing");
    let dev = LoopDev::filled(&backing, 24 * MIB, Some(0xEE));
    transfer(&ns, &dir.0, "blk", &src, &dev.0);
    let s = read_page(&dir.0, "blk");
    assert_eq!(s.sparse.skipped_bytes, zero_block_bytes(&src));
    assert_eq!(s.sparse.zero_method, ZeroMethod::ZeroOut);
    // Read back through the device: no stale byte where the image has zeros.
    let device = std::fs::read(&dev.0).unwrap();
    let image = std::fs::read(&src).unwrap();
    assert!(
        device[..len as usize] == image[..],
        "device differs from the image"
    );
    assert!(
        device[len as usize..].iter().all(|&b| b == 0xEE),
        "past the image: untouched"
    );
}

#[test]
fn killed_receiver_resumes_a_sparse_image() {
    if !netns_allowed() {
        return;
    }
    let ns = loopback("xdpc-sparse-res");
    let dir = TempDir::new("xdpc-sparse-res");
    let (src, dst) = (dir.join("src.img"), dir.join("dst.img"));
    let len = 32 * MIB;
    write_sparse_image(&src, len, 3).unwrap();
    let resume = dir.join("dst.img.xdpcast-resume");
    let out = dst.to_str().unwrap();
    let mut rx = receiver(&ns, "lo", &dir.0, "res", out);
    // About 8 MiB of data at 40 Mbit/s: some 1.7 s per pass, two passes.
    let tx = start_sender(
        &ns,
        "lo",
        GROUP,
        &src,
        &["--block-size", "1400", "--rate", "40M", "--passes", "2"],
    );
    wait_for(Duration::from_secs(30), "a saved resume file", || {
        let s = read_page(&dir.0, "res");
        let data: u64 = s.workers.iter().map(|w| w.bytes).sum();
        (resume.exists() && data > MIB && s.blocks_done < s.block_count).then_some(())
    });
    rx.kill().unwrap();
    rx.wait().unwrap();
    let rx = receiver(&ns, "lo", &dir.0, "res", out);
    ok(
        &wait_output(tx, Duration::from_secs(120), "sender"),
        "sender",
    );
    ok(
        &wait_output(rx, Duration::from_secs(60), "restarted receiver"),
        "restarted receiver",
    );
    assert_eq!(sha256_hex(&src), sha256_hex(&dst));
    let s = read_page(&dir.0, "res");
    assert_eq!(s.state, State::Success);
    // Data blocks came from the resume file; the zero runs, whichever run
    // made them, are all shown as skipped, and nothing twice.
    assert!(s.resumed_blocks > 0);
    assert_eq!(s.sparse.skipped_bytes, zero_block_bytes(&src));
    assert_eq!(s.bytes_done, s.total_bytes);
    let received: u64 = s.workers.iter().map(|w| w.bytes).sum();
    assert!(
        received + s.sparse.skipped_bytes < s.total_bytes,
        "{received} bytes received"
    );
    assert!(!resume.exists());
    // Resuming did not fill the holes in again.
    assert!(
        allocated(&dst) < len / 2,
        "{} bytes allocated",
        allocated(&dst)
    );
}
