//! The sender: multicasts a file (or block device) as wire-format packets,
//! in `sendmmsg` batches, at a limited rate, in one or more passes.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use memmap2::Mmap;
use sha2::{Digest, Sha256};
use socket2::Socket;

use crate::error::{Error, ErrorCode, Result};
use crate::net::{self, Group, MsgBatch};
use crate::wire::{self, Control, Geometry, Kind, HEADER_LEN};

/// Datagrams per `sendmmsg` call.
const BATCH: usize = 32;
/// Control packets are sent this many times (they are tiny; loss is cheap to beat).
const CONTROL_REPEAT: usize = 3;

/// What to send and how.
#[derive(Debug, Clone)]
pub struct SendOptions {
    /// Destination group and port.
    pub group: Group,
    /// Interface to send on.
    pub iface: String,
    /// Rate limit in bits per second of UDP payload (None: as fast as possible).
    pub rate_bps: Option<u64>,
    /// Passes over the image.
    pub passes: u32,
    /// Block size; None picks the largest that fits the interface MTU.
    pub block_size: Option<u32>,
    /// Session id; None picks a random one.
    pub session: Option<u32>,
    /// Multicast TTL / hop limit.
    pub ttl: u32,
    /// Sockets (distinct source ports) to spread the flow over receive queues.
    pub streams: usize,
    /// Send an announce packet every this many data packets.
    pub announce_every: u64,
}

impl SendOptions {
    /// Defaults for `group` on `iface`.
    pub fn new(group: Group, iface: &str) -> SendOptions {
        SendOptions {
            group,
            iface: iface.to_owned(),
            rate_bps: None,
            passes: 1,
            block_size: None,
            session: None,
            ttl: 1,
            streams: 1,
            announce_every: 4096,
        }
    }
}

/// What a finished send did.
#[derive(Debug, Clone)]
pub struct SendReport {
    /// Session id used.
    pub session: u32,
    /// Image geometry.
    pub geometry: Geometry,
    /// SHA-256 of the image.
    pub digest: [u8; 32],
    /// Datagrams sent (all kinds, all passes).
    pub packets: u64,
    /// Data bytes sent (all passes).
    pub bytes: u64,
    /// Wall time of the sending (after hashing).
    pub elapsed: Duration,
}

fn random_session() -> u32 {
    let mut b = [0u8; 4];
    let ok = File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    match ok {
        Ok(()) => u32::from_ne_bytes(b).max(1),
        Err(_) => std::process::id(),
    }
}

/// Paces sending to a rate by sleeping when ahead of schedule.
struct Pacer {
    start: Instant,
    bits_per_sec: Option<u64>,
    sent_bits: u64,
}

impl Pacer {
    fn wait(&mut self, bytes: u64) {
        let Some(rate) = self.bits_per_sec else {
            return;
        };
        self.sent_bits += bytes * 8;
        let due = Duration::from_secs_f64(self.sent_bits as f64 / rate as f64);
        let now = self.start.elapsed();
        if due > now {
            std::thread::sleep(due - now);
        }
    }
}

struct Wire<'a> {
    socks: Vec<Socket>,
    batch: MsgBatch<2>,
    session: u32,
    geometry: Geometry,
    image: &'a [u8],
    packets: u64,
}

impl Wire<'_> {
    /// Send all of `msgs` on socket `s`, retrying on a full queue.
    fn send_all(&mut self, s: usize, msgs: &[(&[u8], &[u8])]) -> Result<()> {
        let mut done = 0;
        while done < msgs.len() {
            match self.batch.send(&self.socks[s], &msgs[done..]) {
                Ok(n) => done += n,
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOBUFS) | Some(libc::EAGAIN)) => {
                    std::thread::sleep(Duration::from_micros(50));
                }
                Err(e) => return Err(Error::new(ErrorCode::Network, format!("sendmmsg: {e}"))),
            }
        }
        self.packets += msgs.len() as u64;
        Ok(())
    }

    fn control(&mut self, kind: Kind, control: &Control) -> Result<()> {
        let pkt = wire::encode_control(kind, self.session, &self.geometry, control);
        for _ in 0..CONTROL_REPEAT {
            self.send_all(0, &[(&pkt, &[])])?;
        }
        Ok(())
    }

    /// Send blocks `first..end` as data packets on socket `s`.
    fn data(&mut self, s: usize, first: u64, end: u64) -> Result<u64> {
        let mut headers = [[0u8; HEADER_LEN]; BATCH];
        let mut bytes = 0;
        let image = self.image;
        let mut msgs: Vec<(&[u8], &[u8])> = Vec::with_capacity(BATCH);
        for (h, idx) in headers.iter_mut().zip(first..end) {
            wire::encode_data_header(h, self.session, &self.geometry, idx);
        }
        for (h, idx) in headers.iter().zip(first..end) {
            let off = self.geometry.offset(idx) as usize;
            let block = &image[off..off + self.geometry.block_len(idx)];
            bytes += block.len() as u64;
            msgs.push((h, block));
        }
        self.send_all(s, &msgs)?;
        Ok(bytes)
    }
}

/// Multicast the file at `path`. `progress` is called after each batch with
/// (pass, blocks sent in this pass).
pub fn send(
    path: &Path,
    opts: &SendOptions,
    mut progress: impl FnMut(u32, u64),
) -> Result<SendReport> {
    let file =
        File::open(path).map_err(|e| Error::target_io(&format!("open {}", path.display()), &e))?;
    // SAFETY: read-only mapping; the sender documents that the source must
    // not be modified while it is sent (a concurrent writer would only
    // corrupt the bytes sent, which the receivers' digest check catches).
    let map = unsafe { Mmap::map(&file) }
        .map_err(|e| Error::target_io(&format!("map {}", path.display()), &e))?;
    if map.is_empty() {
        return Err(Error::new(
            ErrorCode::InvalidArgument,
            format!("{} is empty", path.display()),
        ));
    }
    if opts.passes == 0 || opts.streams == 0 {
        return Err(Error::new(
            ErrorCode::InvalidArgument,
            "passes and streams must be at least 1",
        ));
    }
    let block_size = match opts.block_size {
        Some(b) => b,
        None => wire::block_size_for_mtu(net::iface_mtu(&opts.iface)?),
    };
    if !(wire::MIN_BLOCK_SIZE..=wire::MAX_BLOCK_SIZE).contains(&block_size) {
        return Err(Error::new(
            ErrorCode::InvalidArgument,
            format!(
                "block size {block_size} outside {}..={}",
                wire::MIN_BLOCK_SIZE,
                wire::MAX_BLOCK_SIZE
            ),
        ));
    }
    let geometry = Geometry::new(map.len() as u64, block_size);
    let digest: [u8; 32] = Sha256::digest(&map[..]).into();
    let socks = (0..opts.streams)
        .map(|_| net::sender_socket(opts.group, &opts.iface, opts.ttl))
        .collect::<Result<Vec<_>>>()?;
    let mut w = Wire {
        socks,
        batch: MsgBatch::new(BATCH),
        session: opts.session.unwrap_or_else(random_session),
        geometry,
        image: &map,
        packets: 0,
    };
    let start = Instant::now();
    let mut pacer = Pacer {
        start,
        bits_per_sec: opts.rate_bps,
        sent_bits: 0,
    };
    let mut bytes = 0;
    for pass in 0..opts.passes {
        let control = Control {
            digest,
            pass,
            passes: opts.passes,
            flags: 0,
        };
        w.control(Kind::Announce, &control)?;
        let mut next = 0u64;
        let mut since_announce = 0u64;
        let mut stream = 0usize;
        while next < geometry.block_count {
            let end = (next + BATCH as u64).min(geometry.block_count);
            let n = w.data(stream, next, end)?;
            bytes += n;
            pacer.wait(n);
            since_announce += end - next;
            if since_announce >= opts.announce_every {
                w.control(Kind::Announce, &control)?;
                since_announce = 0;
            }
            next = end;
            stream = (stream + 1) % opts.streams;
            progress(pass, next);
        }
        w.control(Kind::End, &control)?;
    }
    Ok(SendReport {
        session: w.session,
        geometry,
        digest,
        packets: w.packets,
        bytes,
        elapsed: start.elapsed(),
    })
}
