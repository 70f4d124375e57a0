//! A fast sender for the benchmarks: the xdpcast wire format sent with
//! `sendmmsg(2)` and UDP GSO (`UDP_SEGMENT`), so one system call carries up
//! to [`MSGS`] super-datagrams of up to [`MAX_SEGS`] packets each and the
//! socket layer is walked once per super-datagram. Unless given a rate it
//! sends as fast as the kernel takes packets, pass after pass.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use memmap2::Mmap;
use sha2::{Digest, Sha256};
use socket2::Socket;
use xdpcast::net::socket::{self, Group};
use xdpcast::proto::wire::{self, Control, Geometry, Kind, HEADER_LEN};

/// `SOL_UDP` and `UDP_SEGMENT` from <linux/udp.h> (not in the libc crate).
const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
/// Segments per GSO super-datagram (the kernel's UDP_MAX_SEGMENTS is 64 or more).
pub const MAX_SEGS: usize = 64;
/// Bytes of UDP payload per super-datagram (the IPv4 datagram limit, with room).
const MAX_GSO_BYTES: usize = 65_000;
/// Super-datagrams per `sendmmsg` call.
pub const MSGS: usize = 8;
/// Announce packets are repeated every this many blocks (as the real sender does).
const ANNOUNCE_EVERY: u64 = 4096;

/// What to send.
#[derive(Debug, Clone)]
pub struct BlastOptions {
    /// Destination group and port.
    pub group: Group,
    /// Interface to send on.
    pub iface: String,
    /// Passes over the image.
    pub passes: u32,
    /// Block size (bytes of image per packet).
    pub block_size: u32,
    /// Session id.
    pub session: u32,
    /// Use UDP GSO (falls back to one datagram per message if the kernel refuses).
    pub gso: bool,
    /// Pace to this many bits/s of image data (None: as fast as the kernel takes them).
    pub rate_bps: Option<u64>,
}

/// What a finished blast did.
#[derive(Debug, Clone)]
pub struct BlastReport {
    /// Datagrams sent (all kinds, all passes).
    pub packets: u64,
    /// Image bytes sent (all passes).
    pub bytes: u64,
    /// Wall time of the sending (after hashing).
    pub elapsed: Duration,
    /// Packets per GSO super-datagram actually used (1: no GSO).
    pub segments: usize,
}

fn set_gso(sock: &Socket, size: usize) -> std::io::Result<()> {
    let v = size as libc::c_int;
    // SAFETY: valid fd; pointer and length describe `v`, read during the call only.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            SOL_UDP,
            UDP_SEGMENT,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn iovec(b: &[u8]) -> libc::iovec {
    libc::iovec {
        iov_base: b.as_ptr() as *mut libc::c_void,
        iov_len: b.len(),
    }
}

/// Send every message of `hdrs`, retrying while the device queue is full.
fn send_all(sock: &Socket, hdrs: &mut [libc::mmsghdr]) -> Result<()> {
    let mut done = 0;
    while done < hdrs.len() {
        // SAFETY: every header points at iovecs that point at live buffers
        // (set up by the caller for this call); the kernel only reads them.
        let rc = unsafe {
            libc::sendmmsg(
                sock.as_raw_fd(),
                hdrs[done..].as_mut_ptr(),
                (hdrs.len() - done) as libc::c_uint,
                0,
            )
        };
        if rc >= 0 {
            done += rc as usize;
            continue;
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENOBUFS) | Some(libc::EAGAIN) | Some(libc::EINTR) => {
                std::thread::sleep(Duration::from_micros(20))
            }
            _ => return Err(e).context("sendmmsg"),
        }
    }
    Ok(())
}

/// Multicast the file at `path`; `on_pass` is called after each pass with
/// the report so far.
pub fn blast(
    path: &Path,
    o: &BlastOptions,
    mut on_pass: impl FnMut(&BlastReport),
) -> Result<BlastReport> {
    let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    // SAFETY: read-only mapping of a file the benchmark does not modify.
    let map = unsafe { Mmap::map(&file) }.with_context(|| format!("map {}", path.display()))?;
    if map.is_empty() || o.passes == 0 {
        bail!("nothing to send");
    }
    let g = Geometry::new(map.len() as u64, o.block_size);
    let digest: [u8; 32] = Sha256::digest(&map[..]).into();
    let sock = socket::sender_socket(o.group, &o.iface, 1, None)?;
    let seg = HEADER_LEN + o.block_size as usize;
    let mut segs = (MAX_GSO_BYTES / seg).clamp(1, MAX_SEGS);
    if !o.gso || segs == 1 || set_gso(&sock, seg).is_err() {
        segs = 1;
    }
    let per_call = MSGS * segs;
    let mut headers = vec![[0u8; HEADER_LEN]; per_call];
    let mut iovs: Vec<libc::iovec> = Vec::with_capacity(2 * per_call);
    // SAFETY: mmsghdr is a plain C struct; all-zero is a valid empty header.
    let zero: libc::mmsghdr = unsafe { std::mem::zeroed() };
    let mut hdrs = vec![zero; MSGS];
    let mut packets = 0u64;
    let mut bytes = 0u64;
    let start = Instant::now();
    let report = |packets, bytes| BlastReport {
        packets,
        bytes,
        elapsed: start.elapsed(),
        segments: segs,
    };
    for pass in 0..o.passes {
        let control = Control {
            flags: if pass + 1 == o.passes {
                wire::FLAG_FINAL
            } else {
                0
            },
            ..Control::new(digest, pass, o.passes)
        };
        let announce = wire::encode_control(Kind::Announce, o.session, &g, &control);
        let mut since_announce = ANNOUNCE_EVERY;
        let mut next = 0u64;
        while next < g.block_count {
            if since_announce >= ANNOUNCE_EVERY {
                sock.send(&announce).context("send announce")?;
                packets += 1;
                since_announce = 0;
            }
            let end = (next + per_call as u64).min(g.block_count);
            let n = (end - next) as usize;
            iovs.clear();
            for (h, i) in headers.iter_mut().zip(next..end) {
                wire::encode_data_header(h, o.session, &g, i);
            }
            for (h, i) in headers.iter().zip(next..end) {
                let off = g.offset(i) as usize;
                let block = &map[off..off + g.block_len(i)];
                bytes += block.len() as u64;
                iovs.push(iovec(h));
                iovs.push(iovec(block));
            }
            let msgs = n.div_ceil(segs);
            for (m, h) in hdrs.iter_mut().take(msgs).enumerate() {
                let first = m * segs;
                let count = segs.min(n - first);
                h.msg_hdr.msg_iov = iovs[2 * first..].as_mut_ptr();
                h.msg_hdr.msg_iovlen = 2 * count;
            }
            send_all(&sock, &mut hdrs[..msgs])?;
            if let Some(rate) = o.rate_bps {
                let due = Duration::from_secs_f64(bytes as f64 * 8.0 / rate as f64);
                if let Some(ahead) = due.checked_sub(start.elapsed()) {
                    std::thread::sleep(ahead);
                }
            }
            packets += n as u64;
            since_announce += n as u64;
            next = end;
        }
        let end_pkt = wire::encode_control(Kind::End, o.session, &g, &control);
        for _ in 0..3 {
            sock.send(&end_pkt).context("send end")?;
        }
        packets += 3;
        on_pass(&report(packets, bytes));
    }
    Ok(report(packets, bytes))
}
