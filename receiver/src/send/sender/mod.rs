//! The sender: multicasts a file (or block device) as wire-format packets,
//! in `sendmmsg` batches, at a limited rate, in one or more passes, with
//! optional RaptorQ repair symbols, then repair rounds driven by the
//! receivers' parity requests and NACKs (taken by the back-channel thread,
//! [`crate::send::repair`]) until every receiver it knows has settled or a
//! round passes with no request. Runs of all-zero blocks (see
//! [`zeros`](crate::send::zeros)) are announced in zero-run packets instead
//! of being sent: in the first pass as they are found, right before the
//! data that follows them, then at the start of every pass and in repair
//! rounds.
//!
//! Nothing reads the image before the first packet: it is hashed and
//! scanned while it is sent ([`crate::send::ahead`]). The image's digest
//! goes out in the end packets, from the end of the first pass on: its
//! SHA-256 in an unsigned session; in a signed one, where each page of
//! chunk hashes is signed when its chunks have been read and sent before
//! their data, the root of those hashes (no SHA-256 pass over the image)
//! unless `--sha256` asks for the SHA-256 or a kept manifest file names it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use memmap2::MmapOptions;

use crate::core::fleet::FleetCounts;
use crate::core::rounds::{FleetView, Next, Policy, Schedule, Window, WindowEvent};
use crate::error::{Error, ErrorCode, Result};
use crate::fetch::manifest_file::Stamp;
use crate::net::socket;
use crate::proto::fec;
use crate::proto::manifest::{self, ImageDigest, Manifest};
use crate::proto::wire::{self, Control, Geometry, Kind};
use crate::rng::XorShift;
use crate::send::ahead::{self, Ahead, Scan};
use crate::send::publish;
use crate::send::repair::Backchannel;
use crate::send::zeros::ZeroRuns;
use crate::status::page::SendPhase;

mod options;
mod source;
mod transmit;

pub use options::{Progress, SendOptions, SendReport, FEC_GROUP, PARITY_GROUP};

use source::{open_source, Source};
use transmit::{Loss, Pacer, Signer, Wire, ZeroList};

/// Longest time between two announces (each with the signed head) during a
/// pass: a receiver that joins late learns the session within about this
/// long at any rate, not only after `announce_every` more packets (5.7 MB
/// of 1400-byte blocks: seconds at a few Mbit/s).
pub const ANNOUNCE_PERIOD: Duration = Duration::from_millis(500);
/// Blocks sent between progress reports when there is no FEC grouping.
const CHUNK: u32 = 1024;
/// A receiver whose reports showed new blocks this recently is still at
/// work (reports come every second or so).
const PROGRESSING: Duration = Duration::from_millis(2500);
/// How often the sender looks at its receivers while it waits (for them
/// to join, in a repair window, after the final end).
const LOOK: Duration = Duration::from_millis(50);

/// The socket that takes NACKs, parity requests and reports, and the
/// address announced for it.
struct Repair {
    sock: UdpSocket,
    addr: SocketAddr,
}

impl Repair {
    /// A NACK socket on `iface`, of the group's address family.
    fn open(iface: &str, group: SocketAddr) -> Result<Repair> {
        let at = socket::iface_addr(iface, group.is_ipv6())?;
        let err = |e: std::io::Error| {
            Error::new(
                ErrorCode::Network,
                format!("NACK socket on {}: {e}", at.ip()),
            )
        };
        let sock = UdpSocket::bind(at).map_err(err)?;
        let addr = sock.local_addr().map_err(err)?;
        Ok(Repair { sock, addr })
    }
}

/// An address as IPv6, IPv4 mapped.
fn mapped(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Multicast the file at `path`. `progress` is called as the passes
/// advance and while the sender waits (for receivers, in repair windows).
pub fn send(
    path: &Path,
    opts: &SendOptions,
    mut progress: impl FnMut(&Progress),
) -> Result<SendReport> {
    let Source {
        file,
        len,
        data,
        fill,
    } = open_source(path, opts.stdin_size)?;
    if len == 0 {
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
    let group_size = opts.group_size();
    if !(1..=wire::MAX_FEC_GROUP).contains(&group_size) {
        return Err(Error::new(
            ErrorCode::InvalidArgument,
            format!("FEC group must be 1..={} blocks", wire::MAX_FEC_GROUP),
        ));
    }
    let block_size = match opts.block_size {
        Some(b) => b,
        None => wire::block_size_for_mtu(socket::iface_mtu(&opts.iface)?),
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
    // SAFETY: read-only mapping; the source must not be modified while it is
    // sent (a concurrent writer would only corrupt the bytes sent, which the
    // receivers' digest or chunk checks catch).
    let map = Arc::new(
        unsafe { MmapOptions::new().len(len as usize).map(&file) }
            .map_err(|e| Error::target_io(&format!("map {}", path.display()), &e))?,
    );
    let geometry = Geometry::new(len, block_size);
    let repair = if opts.repair {
        Some(Repair::open(&opts.iface, opts.group.0)?)
    } else {
        None
    };
    // A signed session names the address its data comes from, so that
    // receivers drop everything else; the data sockets are bound to it. A
    // link-local IPv6 address is left out (it needs the scope to bind).
    let source = match (&opts.sign, &repair) {
        (None, _) => None,
        (Some(_), Some(r)) => Some(r.addr.ip()),
        (Some(_), None) => Some(socket::iface_addr(&opts.iface, opts.group.0.is_ipv6())?.ip()),
    }
    .filter(|ip| !matches!(ip, IpAddr::V6(v6) if socket::is_link_local(v6)));
    let socks = (0..opts.streams)
        .map(|_| socket::sender_socket(opts.group, &opts.iface, opts.ttl, source))
        .collect::<Result<Vec<_>>>()?;
    let seed = XorShift::from_entropy().next_u64();
    let session = opts.session.unwrap_or((seed >> 32) as u32).max(1);
    // The file's holes are zero runs known without a read: announced from
    // the first packet on; the zero blocks written as data are found as the
    // image is read.
    let holes = if opts.sparse {
        data.holes(&geometry)
    } else {
        ZeroRuns::default()
    };
    let parity_group = if repair.is_some() && opts.parity {
        group_size
    } else {
        0
    };
    let flags = match (&repair, parity_group) {
        (None, _) => 0,
        (Some(_), 0) => wire::FLAG_REPAIR,
        (Some(_), _) => wire::FLAG_REPAIR | wire::FLAG_PARITY,
    };
    let fec_group = if opts.fec_repair > 0 || parity_group > 0 {
        group_size
    } else {
        0
    };
    let signer = opts.sign.as_ref().map(|key| -> Result<Signer> {
        let manifest = Manifest {
            session,
            geometry,
            // Not read yet: the signed ends carry it.
            digest: [0; 32],
            passes: opts.passes,
            flags,
            repair_addr: repair
                .as_ref()
                .map_or(std::net::Ipv6Addr::UNSPECIFIED, |r| mapped(r.addr.ip())),
            repair_port: repair.as_ref().map_or(0, |r| r.addr.port()),
            fec_repair: opts.fec_repair,
            fec_group,
            source: source.map_or(std::net::Ipv6Addr::UNSPECIFIED, mapped),
            chunk_blocks: manifest::chunk_blocks_for(geometry.block_count, block_size),
            issued_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            // The zero runs are found as the image is read: receivers check
            // the blocks they zero through the signed chunk hashes alone.
            zero_runs: [0; 32],
        };
        Ok(Signer {
            // The URLs receivers given none fetch from (`--http-url`).
            head: manifest
                .sign_with_urls(key, &opts.http_urls)
                .map_err(|e| Error::new(ErrorCode::InvalidArgument, format!("--http-url {e}")))?,
            key: key.clone(),
            manifest,
            pages: Vec::new(),
            next_page: 0,
        })
    });
    let signer = signer.transpose()?;
    let zero_signer = signer.as_ref().map(|s| (s.manifest, s.key.clone()));
    let mut list = ZeroList::new(holes.clone(), session, &geometry, zero_signer);
    // The image as opened: a manifest file kept beside it is published
    // now if it was made from these bytes.
    let stamp = Stamp::of(&file);
    let kept = match (&signer, &opts.manifest_file) {
        (Some(s), Some(path)) => publish::ahead(path, stamp, &s.head, &s.manifest, &s.key),
        _ => None,
    };
    // An unsigned session's receivers check the SHA-256; a signed one's
    // check every chunk against its signed hash, and the ends carry the
    // root of those hashes, unless the SHA-256 is asked for and no kept
    // manifest file names it.
    let sha256 = match (&signer, &kept) {
        (None, _) => true,
        (Some(_), Some(k)) => opts.sha256 && !matches!(k.digest, ImageDigest::Sha256(_)),
        (Some(_), None) => opts.sha256,
    };
    let mut ahead = Ahead::start(
        map.clone(),
        geometry,
        data,
        Scan {
            zeros: opts.sparse,
            known: holes,
            sign: signer.as_ref().map(|s| (s.manifest, s.key.clone())),
        },
        sha256,
    )?;
    let policy = Policy {
        session,
        geometry,
        group_size: parity_group,
        vanish_after: opts.vanish_after,
        max_behind: opts.max_behind.clamp(0.0, 1.0),
        signer: signer.as_ref().map(|s| (s.key.clone(), s.manifest)),
    };
    let base = Control {
        flags,
        repair_port: repair.as_ref().map_or(0, |r| r.addr.port()),
        repair_addr: repair
            .as_ref()
            .map_or(std::net::Ipv6Addr::UNSPECIFIED, |r| mapped(r.addr.ip())),
        fec_repair: opts.fec_repair,
        fec_group,
        ..Control::new([0; 32], 0, opts.passes)
    };
    let bc = match repair {
        Some(r) => {
            let ncf = socket::sender_socket(opts.group, &opts.iface, opts.ttl, source)?;
            Some(Backchannel::start(r.sock, ncf, policy.clone())?)
        }
        None => None,
    };
    if opts.min_receivers > 0 && bc.is_none() {
        return Err(Error::new(
            ErrorCode::InvalidArgument,
            "waiting for receivers needs their reports: not with --no-repair",
        ));
    }
    let (batch, burst) = Wire::batching(&geometry, opts.rate_bps, opts.gso);
    let start = Instant::now();
    let mut w = Wire {
        socks,
        signer,
        batch,
        burst,
        session,
        geometry,
        image: &map[..],
        digest: None,
        packets: 0,
        payload_packets: 0,
        bytes: 0,
        stream: 0,
        pacer: Pacer::new(start, opts.rate_bps),
        loss: Loss::new(opts.loss, seed),
    };
    let fleet = || bc.as_ref().map(|b| b.fleet()).unwrap_or_default();
    // The control block of `pass` with extra `flags`, the group-size
    // estimate of the moment and how many receivers lack much (receivers
    // with a web server fetch rather than ask for repair only when few
    // do; docs/http.md).
    let control = |pass: u32, flags: u32| {
        let mut c = base;
        let f = fleet();
        c.pass = pass;
        c.flags |= flags | wire::gsize_flags(f.known) | wire::fleet_flags(f.lacking, f.hearing);
        c
    };
    // `at`: blocks, bytes and zero bytes behind us in the pass.
    // `repair`: rounds, packets and bytes so far.
    let mut show = |phase, pass, at: (u64, u64, u64), w: &Wire, repair: (u32, u64, u64)| {
        progress(&Progress {
            session,
            phase,
            pass,
            repair_rounds: repair.0,
            blocks: at.0,
            block_count: geometry.block_count,
            bytes: at.1,
            total_bytes: geometry.total_size,
            block_size,
            digest: w.digest,
            packets: w.packets,
            bytes_sent: w.bytes,
            skipped_bytes: at.2,
            fleet: fleet(),
            repair_packets: repair.1,
            repair_bytes: repair.2,
            inbound: bc.as_ref().map(|b| b.inbound()).unwrap_or_default(),
        })
    };
    if opts.min_receivers > 0 {
        // Announce (every 4 looks) until enough receivers have reported
        // (they learn where to report from the announce); a report is
        // noticed within a look.
        let mut looks = 0u32;
        loop {
            let known = fleet().known;
            show(SendPhase::Waiting, 0, (0, 0, 0), &w, (0, 0, 0));
            if known >= opts.min_receivers {
                break;
            }
            if opts.start_timeout.is_some_and(|t| start.elapsed() >= t) {
                return Err(Error::new(
                    ErrorCode::Timeout,
                    format!(
                        "{known} of {} receivers reported within {:?}",
                        opts.min_receivers,
                        opts.start_timeout.unwrap_or_default()
                    ),
                ));
            }
            if looks % 4 == 0 {
                w.control(Kind::Announce, &control(0, 0))?;
            }
            looks = looks.wrapping_add(1);
            std::thread::sleep(LOOK);
        }
        w.pacer.restart(opts.rate_bps);
    }
    let chunk = if opts.fec_repair > 0 {
        group_size
    } else {
        CHUNK
    };
    let chunks = fec::group_count(&geometry, chunk);
    for pass in 0..opts.passes {
        let last = pass + 1 == opts.passes;
        let flags = if last && bc.is_none() {
            wire::FLAG_FINAL
        } else {
            0
        };
        w.control(Kind::Announce, &control(pass, flags))?;
        w.all_pages()?;
        w.zeros(&list, 0, geometry.block_count)?;
        let mut since_announce = 0u64;
        let mut announced = Instant::now();
        let (mut bytes, mut skipped) = (0, 0);
        for c in 0..chunks {
            let (first, end) = fec::group_blocks(&geometry, chunk, c);
            // First pass: the pages and zero runs of what is sent next,
            // once read.
            // Standard input: what is sent next must have been read.
            if let Some(f) = &fill {
                f.wait(geometry.offset(first) + geometry.range_bytes(first, end))?;
            }
            let pieces = ahead.until(end)?;
            w.pieces(pieces, &mut list)?;
            let data = list.runs.data_in(first, end);
            let sent: u64 = data.iter().map(|(a, b)| b - a).sum();
            let group_bytes = geometry.range_bytes(first, end);
            let data_bytes: u64 = data.iter().map(|&(a, b)| geometry.range_bytes(a, b)).sum();
            for &(a, b) in &data {
                w.blocks(a, b)?;
            }
            // A group of zeros only needs no repair symbols.
            if opts.fec_repair > 0 && sent > 0 {
                let r = u32::from(opts.fec_repair);
                w.fec(chunk, c, pass * r, r)?;
            }
            since_announce += sent;
            if since_announce >= opts.announce_every || announced.elapsed() >= ANNOUNCE_PERIOD {
                w.control(Kind::Announce, &control(pass, flags))?;
                since_announce = 0;
                announced = Instant::now();
            }
            bytes += group_bytes;
            skipped += group_bytes - data_bytes;
            show(SendPhase::Pass, pass, (end, bytes, skipped), &w, (0, 0, 0));
        }
        if pass == 0 {
            // The whole image has been read: its digest goes out from this
            // end on, and later passes announce the complete zero-run list
            // up front.
            // Standard input must have had exactly the size announced
            // before an end can carry a digest.
            if let Some(f) = &fill {
                f.finish()?;
            }
            let digest = image_digest(ahead.digest()?, w.signer.as_ref(), kept.as_ref())?;
            w.digest = Some(digest);
            // Every page is made and the digest known: the manifest file
            // for HTTP receivers can be written.
            if let (Some(s), Some(path)) = (&w.signer, &opts.manifest_file) {
                let pages = s.pages.clone();
                let signed = (s.head.clone(), &s.manifest, &s.key);
                publish::after_first_pass(path, &file, stamp, kept.as_ref(), signed, pages, digest);
            }
            list = ZeroList::new(list.runs, session, &geometry, list.sign);
            if !list.packets.is_empty() {
                log::info!(
                    "{} of zeros in {} runs, announced in {} packets",
                    list.runs.bytes(&geometry),
                    list.runs.runs().len(),
                    list.packets.len(),
                );
            }
        }
        w.control(Kind::End, &control(pass, flags))?;
    }
    let mut repair_packets = 0;
    let mut repair_bytes = 0;
    // Repairs go at most at the data rate: the one asked for, else the
    // one the passes reached.
    let data_rate = opts.rate_bps.or_else(|| {
        let secs = start.elapsed().as_secs_f64();
        (secs > 0.0).then(|| ((w.bytes * 8) as f64 / secs) as u64 + 1)
    });
    let mut schedule = Schedule::new(
        opts.max_repair,
        geometry.block_count,
        opts.max_repair_rounds,
    );
    if let Some(bc) = &bc {
        let mut pass = opts.passes - 1;
        // Fresh symbols for every parity round: the next unused repair
        // symbol of each group (the passes used the first ones).
        let mut next_esi: HashMap<u64, u32> = HashMap::new();
        let first_esi = opts.passes * u32::from(opts.fec_repair);
        // Everyone the sender knows of is done: no window to wait out.
        let settled = |f: FleetCounts| f.known >= opts.min_receivers.max(1) && f.receiving == 0;
        while schedule.open() {
            let rounds = schedule.rounds();
            bc.set_round(u64::from(pass), rounds);
            let mut window = Window::new(Instant::now(), opts.repair_wait);
            loop {
                match window.poll(Instant::now()) {
                    WindowEvent::Remind => w.control(Kind::End, &control(pass, 0))?,
                    WindowEvent::Close => break,
                    WindowEvent::Wait => {
                        show(
                            SendPhase::Repair,
                            pass,
                            (0, 0, 0),
                            &w,
                            (rounds, repair_packets, repair_bytes),
                        );
                        let left = window
                            .poll_timeout()
                            .saturating_duration_since(Instant::now());
                        std::thread::sleep(left.min(LOOK));
                    }
                }
            }
            let view = FleetView {
                settled: settled(fleet()),
                progressing: bc.progressing(PROGRESSING),
            };
            let plan = match schedule.close(bc.take(), view) {
                Next::Repair(plan) => plan,
                Next::Wait => continue,
                Next::Stop => break,
            };
            w.pacer.restart(data_rate);
            pass += 1;
            log::info!(
                "repair round {}: {} ranges, {} groups",
                schedule.rounds(),
                plan.ranges.len(),
                plan.parity.len()
            );
            // Pages again: a receiver whose chunk waits for a lost page
            // NACKs that chunk to get here.
            w.all_pages()?;
            let (packets, bytes) = (w.payload_packets, w.bytes);
            for &(first, end) in &plan.ranges {
                w.zeros(&list, first, end)?;
                w.data(&list, first, end)?;
            }
            for (group, from, count) in plan.symbol_runs() {
                let esi = *next_esi.entry(group).or_insert(first_esi);
                w.fec(parity_group, group, esi + from, count)?;
            }
            for &(group, count) in &plan.parity {
                *next_esi.entry(group).or_insert(first_esi) += count;
            }
            // What went out, as the page and the log say: data and symbol
            // packets, not the pages and zero runs sent with them.
            repair_packets += w.payload_packets - packets;
            repair_bytes += w.bytes - bytes;
            w.control(Kind::End, &control(pass, 0))?;
        }
        w.control(Kind::End, &control(pass, wire::FLAG_FINAL))?;
        // Wait for the receivers still at work (verifying, or failing for
        // want of blocks) to say how they ended, or to go silent.
        let lingering = Instant::now();
        while lingering.elapsed() < opts.linger && fleet().receiving > 0 {
            show(
                SendPhase::Linger,
                pass,
                (0, 0, 0),
                &w,
                (schedule.rounds(), repair_packets, repair_bytes),
            );
            std::thread::sleep(LOOK);
        }
    }
    let (inbound, receivers) = bc
        .as_ref()
        .map(|b| (b.inbound(), b.rows()))
        .unwrap_or_default();
    let read = ahead.digest()?;
    Ok(SendReport {
        session,
        geometry,
        digest: w
            .digest
            .ok_or_else(|| Error::new(ErrorCode::Internal, "no image digest"))?,
        packets: w.packets,
        bytes: w.bytes,
        repair_rounds: schedule.rounds(),
        repair_packets,
        repair_bytes,
        repair_refused: schedule.refused(),
        inbound,
        receivers,
        elapsed: start.elapsed(),
        zero_runs: list.runs.runs().len() as u64,
        skipped_bytes: list.runs.bytes(&geometry),
        scan_time: ahead.scan_time(),
        read_time: read.map(|d| d.elapsed),
    })
}

/// The image's digest once the first pass has read it all: its SHA-256 if
/// it was hashed (`read`); else, in a signed session (`signer`, every page
/// made), the one a kept manifest file names if its pages are the ones
/// made from the image now (`kept`), or the root of the chunk hashes.
fn image_digest(
    read: Option<ahead::Digest>,
    signer: Option<&Signer>,
    kept: Option<&publish::Kept>,
) -> Result<ImageDigest> {
    if let Some(d) = read {
        return Ok(ImageDigest::Sha256(d.sha256));
    }
    let s = signer.ok_or_else(|| Error::new(ErrorCode::Internal, "no image digest"))?;
    if let Some(k) = kept.filter(|k| k.pages == s.pages) {
        return Ok(k.digest);
    }
    if kept.is_some() {
        log::warn!("the image differs from the one its kept manifest file names: its ends carry the root of its chunk hashes, not the kept SHA-256");
    }
    s.manifest
        .root_of_pages(&s.pages)
        .map(ImageDigest::Root)
        .ok_or_else(|| Error::new(ErrorCode::Internal, "a page of chunk hashes is missing"))
}
