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
//! scanned while it is sent ([`crate::send::ahead`]). The image's SHA-256
//! goes out in the end packets, from the end of the first pass on; in a
//! signed session each page of chunk hashes is signed when its chunks have
//! been read and sent before their data.

use std::collections::HashMap;
use std::fs::File;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use memmap2::MmapOptions;
use socket2::Socket;

use crate::error::{Error, ErrorCode, Result};
use crate::fetch::manifest_file::ManifestFile;
use crate::net::socket::{self, Group, MsgBatch};
use crate::proto::fec;
use crate::proto::manifest::{self, Manifest};
use crate::proto::wire::{self, Control, Geometry, Kind, HEADER_LEN};
use crate::rng::XorShift;
use crate::send::ahead::{Ahead, Piece, Scan};
use crate::send::fleet::{FleetCounts, RxInfo};
use crate::send::publish;
use crate::send::repair::{merge, Backchannel, Inbound, Plan, Policy};
use crate::send::zeros::{DataMap, ZeroRuns};
use crate::status::page::SendPhase;

/// Datagrams per `sendmmsg` call.
const BATCH: usize = 32;
/// Longest time between two announces (each with the signed head) during a
/// pass: a receiver that joins late learns the session within about this
/// long at any rate, not only after `announce_every` more packets (5.7 MB
/// of 1400-byte blocks: seconds at a few Mbit/s).
pub const ANNOUNCE_PERIOD: Duration = Duration::from_millis(500);
/// Control packets are sent this many times (they are tiny; loss is cheap to beat).
const CONTROL_REPEAT: usize = 3;
/// NACK windows in a row that must pass without a NACK before the final end.
const QUIET_WINDOWS: u32 = 2;
/// Once `--max-repair` is spent (a flood of forged requests can spend it),
/// each repair round may still send this share of the image: 1/32, so the
/// requested blocks are all served again within 32 rounds and a flood costs
/// at most `max_repair_rounds / 32` images more.
const REPAIR_FLOOR_DIVISOR: u64 = 32;
/// Blocks sent between progress reports when there is no FEC grouping.
const CHUNK: u32 = 1024;
/// A receiver whose reports showed new blocks this recently is still at
/// work (reports come every second or so).
const PROGRESSING: Duration = Duration::from_millis(2500);
/// Windows in a row that reports of progress may keep from counting as
/// quiet: reports are not authenticated, and forged ones must not keep
/// the sender from ever ending.
const PROGRESS_HOLD: u32 = 20;
/// How often the sender looks at its receivers while it waits (for them
/// to join, in a repair window, after the final end).
const LOOK: Duration = Duration::from_millis(50);

/// Default group of proactive FEC (`--fec`): the sender encodes every
/// group during the passes, so groups stay small enough to encode at the
/// data rate.
pub const FEC_GROUP: u32 = 64;
/// Default group of parity repair alone. One repair round costs, per group,
/// the largest number of symbols any receiver lacks, and the larger the
/// group, the closer that maximum comes to the average loss: with 5% loss
/// at each of 24 receivers, the worst receiver lacks about 2.2 times the
/// average in a 64-block group, 1.25 times in a 1024-block one
/// (docs/reliability.md). RaptorQ encodes or decodes 1024 blocks of 1400
/// bytes in about 10 ms, only in repair rounds.
pub const PARITY_GROUP: u32 = wire::MAX_FEC_GROUP;

/// What to send and how.
#[derive(Debug, Clone)]
pub struct SendOptions {
    /// Destination group and port.
    pub group: Group,
    /// Interface to send on.
    pub iface: String,
    /// Rate limit in bits per second of UDP payload (None: as fast as possible).
    pub rate_bps: Option<u64>,
    /// Full passes over the image.
    pub passes: u32,
    /// Block size; None picks the largest that fits the interface MTU.
    pub block_size: Option<u32>,
    /// Session id; None picks a random one.
    pub session: Option<u32>,
    /// Multicast TTL / hop limit.
    pub ttl: u32,
    /// Sockets (distinct source ports) to spread the flow over receive queues.
    pub streams: usize,
    /// Send an announce packet every this many data packets, and at least
    /// every [`ANNOUNCE_PERIOD`] of a pass.
    pub announce_every: u64,
    /// Take NACKs and run repair rounds after the last full pass.
    pub repair: bool,
    /// How long to collect NACKs after each end of pass.
    pub repair_wait: Duration,
    /// Most repair rounds.
    pub max_repair_rounds: u32,
    /// RaptorQ repair symbols per FEC group (0: no FEC).
    pub fec_repair: u16,
    /// Blocks per FEC group, also the group of parity requests; 0 picks
    /// [`FEC_GROUP`] with `fec_repair`, else [`PARITY_GROUP`].
    pub fec_group: u32,
    /// Answer parity requests with fresh RaptorQ symbols (with `repair`).
    pub parity: bool,
    /// Fraction of data and FEC packets deliberately not sent (loss
    /// injection for tests; 0 in real use).
    pub loss: f64,
    /// Most blocks resent over all repair rounds, as a multiple of the
    /// image's block count (NACKs cannot be authenticated: this bounds what
    /// forged ones can cost).
    pub max_repair: f64,
    /// Sign the session with this key (`--sign`): a manifest with chunk
    /// hashes and signed end packets go out besides the plain ones.
    pub sign: Option<ed25519_dalek::SigningKey>,
    /// With `sign`: write the signed manifest here for receivers that
    /// fetch over HTTP (`xdpcast send` picks `IMAGE.xdpcast-manifest` for
    /// a regular file; see [`crate::send::publish`]), when the first pass
    /// ends: every page is made and the image's SHA-256 known by then.
    pub manifest_file: Option<std::path::PathBuf>,
    /// Wait for this many receivers to report before the first pass.
    pub min_receivers: u64,
    /// Give up (`timeout`) if `min_receivers` have not reported by then.
    pub start_timeout: Option<Duration>,
    /// A receiver silent this long before it finished is vanished.
    pub vanish_after: Duration,
    /// Share of the image a receiver may still miss after three repair
    /// rounds; beyond it, it is told to stop (`too_slow`). 1.0: never.
    pub max_behind: f64,
    /// After the final end, wait at most this long for the receivers still
    /// reporting to finish.
    pub linger: Duration,
    /// Announce runs of all-zero blocks instead of sending them.
    pub sparse: bool,
}

impl SendOptions {
    /// Blocks per FEC and parity group: `fec_group`, or its default.
    pub fn group_size(&self) -> u32 {
        match self.fec_group {
            0 if self.fec_repair > 0 => FEC_GROUP,
            0 => PARITY_GROUP,
            g => g,
        }
    }

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
            repair: true,
            repair_wait: Duration::from_millis(500),
            max_repair_rounds: 50,
            fec_repair: 0,
            fec_group: 0,
            parity: true,
            loss: 0.0,
            max_repair: 2.0,
            sign: None,
            manifest_file: None,
            min_receivers: 0,
            start_timeout: None,
            vanish_after: Duration::from_secs(5),
            max_behind: 1.0,
            linger: Duration::from_secs(30),
            sparse: true,
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
    /// Payload bytes of data and FEC symbol packets sent (all passes and
    /// repairs; the status page's `bytes_sent`).
    pub bytes: u64,
    /// Repair rounds run.
    pub repair_rounds: u32,
    /// Data and symbol packets sent in repair rounds (not the pages,
    /// zero runs and ends sent with them).
    pub repair_packets: u64,
    /// Payload bytes of those packets (part of `bytes`).
    pub repair_bytes: u64,
    /// Blocks and symbols asked for but not sent because the repair budget
    /// (`max_repair`) was spent.
    pub repair_refused: u64,
    /// What came in over the back-channel: NACKs, parity requests and
    /// reports taken, datagrams ignored (malformed, foreign, outside the
    /// image, or over the per-source limit).
    pub inbound: Inbound,
    /// Every receiver that reported, with its final state.
    pub receivers: Vec<RxInfo>,
    /// Wall time of the sending.
    pub elapsed: Duration,
    /// Runs of zero blocks announced instead of sent.
    pub zero_runs: u64,
    /// Bytes in those runs (per pass, not sent).
    pub skipped_bytes: u64,
    /// Time spent looking for zero blocks, hashing excluded.
    pub scan_time: Duration,
    /// Wall time from the start until the image's SHA-256 was done (it is
    /// hashed while it is sent).
    pub read_time: Duration,
}

impl SendReport {
    /// NACK and parity request packets taken.
    pub fn requests(&self) -> u64 {
        self.inbound.nacks + self.inbound.parity_requests
    }
}

/// Where the sender is, for a live display.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Session id.
    pub session: u32,
    /// What it is doing.
    pub phase: SendPhase,
    /// Pass (or repair round) number.
    pub pass: u32,
    /// Repair rounds run so far.
    pub repair_rounds: u32,
    /// Blocks of the image behind us in this pass (sent or skipped).
    pub blocks: u64,
    /// Blocks of the image.
    pub block_count: u64,
    /// Bytes of the image behind us in this pass.
    pub bytes: u64,
    /// Bytes of the image.
    pub total_bytes: u64,
    /// Bytes per block.
    pub block_size: u32,
    /// SHA-256 of the image (all zero until the sender has read all of it).
    pub digest: [u8; 32],
    /// Datagrams sent so far (all kinds).
    pub packets: u64,
    /// Payload bytes of data and symbol packets sent so far.
    pub bytes_sent: u64,
    /// Of the bytes behind us, bytes in zero runs (not sent).
    pub skipped_bytes: u64,
    /// The receivers, per state.
    pub fleet: FleetCounts,
    /// Data and symbol packets sent in repair rounds so far.
    pub repair_packets: u64,
    /// Payload bytes of those packets.
    pub repair_bytes: u64,
    /// What came in over the back-channel so far.
    pub inbound: Inbound,
}

/// Paces sending to a rate by sleeping when ahead of schedule.
struct Pacer {
    start: Instant,
    bits_per_sec: Option<u64>,
    sent_bits: u64,
}

impl Pacer {
    /// Start a new schedule now at `bits_per_sec`: no credit is carried
    /// over from idle time, so a burst never exceeds the rate.
    fn restart(&mut self, bits_per_sec: Option<u64>) {
        self.start = Instant::now();
        self.sent_bits = 0;
        self.bits_per_sec = bits_per_sec;
    }

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

/// Deterministic loss injection.
struct Loss {
    rng: XorShift,
    threshold: u64,
}

impl Loss {
    fn new(fraction: f64, seed: u64) -> Loss {
        Loss {
            rng: XorShift::new(seed),
            threshold: (fraction.clamp(0.0, 1.0) * u64::MAX as f64) as u64,
        }
    }

    fn drop_next(&mut self) -> bool {
        self.threshold != 0 && self.rng.next_u64() < self.threshold
    }
}

/// What a signed session sends besides the plain packets.
struct Signer {
    key: ed25519_dalek::SigningKey,
    manifest: Manifest,
    head: Vec<u8>,
    /// The signed pages made so far (all of them after the first pass).
    pages: Vec<Vec<u8>>,
    next_page: u64,
}

/// Pages sent with each announce (round robin), so a receiver that lost
/// some gets them again within the pass.
const PAGES_PER_ANNOUNCE: u64 = 16;

struct Wire<'a> {
    socks: Vec<Socket>,
    signer: Option<Signer>,
    batch: MsgBatch<2>,
    session: u32,
    geometry: Geometry,
    image: &'a [u8],
    /// The image's SHA-256, once read (all zero before).
    digest: [u8; 32],
    /// Datagrams sent, all kinds.
    packets: u64,
    /// Data and FEC symbol packets sent (what loss injection dropped is
    /// not sent), and their payload bytes.
    payload_packets: u64,
    bytes: u64,
    stream: usize,
    pacer: Pacer,
    loss: Loss,
}

impl Wire<'_> {
    /// Send all of `msgs` on the next socket, retrying on a full queue.
    fn send_all(&mut self, msgs: &[(&[u8], &[u8])]) -> Result<()> {
        let s = self.stream;
        self.stream = (self.stream + 1) % self.socks.len();
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
        let control = Control {
            digest: self.digest,
            ..*control
        };
        let pkt = wire::encode_control(kind, self.session, &self.geometry, &control);
        let signed = self.signer.as_ref().map(|s| match kind {
            Kind::End => wire::encode_raw(
                Kind::SignedEnd,
                self.session,
                &self.geometry,
                0,
                &s.manifest
                    .sign_end(&s.key, control.pass, control.flags, &self.digest),
            ),
            _ => wire::encode_raw(Kind::Manifest, self.session, &self.geometry, 0, &s.head),
        });
        for _ in 0..CONTROL_REPEAT {
            self.send_all(&[(&pkt, &[])])?;
            if let Some(p) = &signed {
                self.send_all(&[(p, &[])])?;
            }
        }
        if kind == Kind::Announce {
            self.pages(PAGES_PER_ANNOUNCE)?;
        }
        Ok(())
    }

    /// Send the next `count` pages of chunk hashes made so far (round
    /// robin), at most one round of them.
    fn pages(&mut self, count: u64) -> Result<()> {
        let Some(s) = self.signer.as_mut() else {
            return Ok(());
        };
        let n = s.pages.len() as u64;
        let pkts: Vec<Vec<u8>> = (0..count.min(n))
            .map(|_| {
                let i = s.next_page % n;
                s.next_page = (i + 1) % n;
                wire::encode_raw(
                    Kind::Manifest,
                    self.session,
                    &self.geometry,
                    i,
                    &s.pages[i as usize],
                )
            })
            .collect();
        for p in &pkts {
            self.send_all(&[(p, &[])])?;
            self.pacer.wait(p.len() as u64);
        }
        Ok(())
    }

    /// Send every page made so far once.
    fn all_pages(&mut self) -> Result<()> {
        let n = self.signer.as_ref().map_or(0, |s| s.pages.len() as u64);
        self.pages(n)
    }

    /// Take in what the scanner found in the pieces it finished: send each
    /// new page (before its chunks' data) and the zero runs found (before
    /// the data that follows them).
    fn pieces(&mut self, pieces: Vec<Piece>, list: &mut ZeroList) -> Result<()> {
        for p in pieces {
            let (session, g) = (self.session, self.geometry);
            let page = p.page.zip(self.signer.as_mut()).map(|((index, page), s)| {
                debug_assert_eq!(index, s.pages.len() as u64);
                let pkt = wire::encode_raw(Kind::Manifest, session, &g, index, &page);
                s.pages.push(page);
                pkt
            });
            if let Some(pkt) = page {
                self.send_all(&[(&pkt, &[])])?;
                self.pacer.wait(pkt.len() as u64);
            }
            for pkt in list.append(&p.zeros, self.session, &self.geometry) {
                self.send_all(&[(&pkt, &[])])?;
                self.pacer.wait(pkt.len() as u64);
            }
        }
        Ok(())
    }

    /// Send blocks `first..end` as data packets, in batches, paced.
    fn blocks(&mut self, first: u64, end: u64) -> Result<()> {
        let image = self.image;
        let g = self.geometry;
        let mut headers = [[0u8; HEADER_LEN]; BATCH];
        let mut next = first;
        while next < end {
            let stop = (next + BATCH as u64).min(end);
            let mut msgs: Vec<(&[u8], &[u8])> = Vec::with_capacity(BATCH);
            let mut bytes = 0;
            for (h, idx) in headers.iter_mut().zip(next..stop) {
                wire::encode_data_header(h, self.session, &g, idx);
            }
            for (h, idx) in headers.iter().zip(next..stop) {
                if self.loss.drop_next() {
                    continue;
                }
                let off = g.offset(idx) as usize;
                let block = &image[off..off + g.block_len(idx)];
                bytes += block.len() as u64;
                msgs.push((h, block));
            }
            self.send_all(&msgs)?;
            self.payload_packets += msgs.len() as u64;
            self.bytes += bytes;
            self.pacer.wait(bytes);
            next = stop;
        }
        Ok(())
    }

    /// Send the packets of the zero-run list whose runs meet blocks
    /// `[first, end)`.
    fn zeros(&mut self, list: &ZeroList, first: u64, end: u64) -> Result<()> {
        let from = list.spans.partition_point(|s| s.1 <= first);
        for i in from..list.spans.len() {
            if list.spans[i].0 >= end {
                break;
            }
            let pkt = &list.packets[i];
            self.send_all(&[(pkt, &[])])?;
            self.pacer.wait(pkt.len() as u64);
        }
        Ok(())
    }

    /// Send the blocks of `[first, end)` that are not in a zero run.
    fn data(&mut self, list: &ZeroList, first: u64, end: u64) -> Result<()> {
        for (a, b) in list.runs.data_in(first, end) {
            self.blocks(a, b)?;
        }
        Ok(())
    }

    /// Send `count` repair symbols of FEC group `group`, from repair symbol
    /// `first` (loss injection may drop some).
    fn fec(&mut self, group_size: u32, group: u64, first: u32, count: u32) -> Result<()> {
        let g = self.geometry;
        for sym in fec::repair_symbols(&g, group_size, group, self.image, first, count) {
            if self.loss.drop_next() {
                continue;
            }
            let pkt = wire::encode_fec(self.session, &g, group, group_size, &sym);
            self.send_all(&[(&pkt, &[])])?;
            self.payload_packets += 1;
            self.bytes += sym.len() as u64;
            self.pacer.wait(pkt.len() as u64);
        }
        Ok(())
    }
}

/// The zero runs of the image and the packets that announce them.
struct ZeroList {
    runs: ZeroRuns,
    packets: Vec<Vec<u8>>,
    /// Blocks `[first, end)` spanned by the runs of each packet.
    spans: Vec<(u64, u64)>,
}

/// Blocks `[first, end)` spanned by the runs of each zero-run packet of `runs`.
fn spans(runs: &[(u64, u32)], block_size: u32) -> impl Iterator<Item = (u64, u64)> + '_ {
    runs.chunks(wire::max_zero_runs(block_size)).map(|c| {
        let (last, n) = c[c.len() - 1];
        (c[0].0, last + u64::from(n))
    })
}

impl ZeroList {
    fn new(runs: ZeroRuns, session: u32, g: &Geometry) -> ZeroList {
        let wire_runs = runs.wire();
        ZeroList {
            packets: wire::encode_zeros(session, g, &wire_runs),
            spans: spans(&wire_runs, g.block_size).collect(),
            runs,
        }
    }

    /// Add the runs found in the next piece of the image (none overlaps a
    /// run known before); returns their packets, to be sent now. The spans
    /// (for repair rounds) are those of the list as made by [`Self::new`]:
    /// the first pass renumbers the whole list when it ends.
    fn append(&mut self, more: &ZeroRuns, session: u32, g: &Geometry) -> Vec<Vec<u8>> {
        let seq = self.packets.len() as u64;
        let new = wire::encode_more_zeros(session, g, seq, &more.wire());
        self.packets.extend(new.iter().cloned());
        self.runs.insert(more);
        new
    }
}

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

/// Cut the symbol counts of `parity` to at most `budget` in total, taking
/// groups from `cursor` on (wrapping round) and moving `cursor` past the
/// last group served; returns the symbols cut.
fn clip_counts(parity: &mut Vec<(u64, u32)>, budget: u64, cursor: &mut u64) -> u64 {
    parity.sort_unstable_by_key(|&(g, _)| (g < *cursor, g));
    let mut left = budget;
    let mut cut = 0;
    parity.retain_mut(|(g, n)| {
        let take = u64::from(*n).min(left);
        cut += u64::from(*n) - take;
        left -= take;
        *n = take as u32;
        if take > 0 {
            *cursor = *g + 1;
        }
        take > 0
    });
    parity.sort_unstable();
    cut
}

/// Cut `ranges` (merged, in order) to at most `budget` blocks in total,
/// taking blocks from `cursor` on (wrapping round) and moving `cursor`
/// past the last block served; returns the blocks cut. The cursor makes
/// a flood of requests for some blocks unable to keep the budget from
/// the others: the next round starts where this one stopped.
fn clip(ranges: &mut Vec<(u64, u64)>, budget: u64, cursor: &mut u64) -> u64 {
    let at = *cursor;
    let mut order: Vec<(u64, u64)> = Vec::with_capacity(ranges.len() + 1);
    order.extend(
        ranges
            .iter()
            .filter(|r| r.1 > at)
            .map(|&(a, b)| (a.max(at), b)),
    );
    order.extend(
        ranges
            .iter()
            .filter(|r| r.0 < at)
            .map(|&(a, b)| (a, b.min(at))),
    );
    let mut left = budget;
    let mut cut = 0;
    order.retain_mut(|(a, b)| {
        let take = (*b - *a).min(left);
        cut += *b - *a - take;
        left -= take;
        *b = *a + take;
        if take > 0 {
            *cursor = *b;
        }
        take > 0
    });
    *ranges = merge(order);
    cut
}

/// Multicast the file at `path`. `progress` is called as the passes
/// advance and while the sender waits (for receivers, in repair windows).
pub fn send(
    path: &Path,
    opts: &SendOptions,
    mut progress: impl FnMut(&Progress),
) -> Result<SendReport> {
    let file = open_source(path)?;
    let len = source_len(&file)
        .map_err(|e| Error::target_io(&format!("size of {}", path.display()), &e))?;
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
    let data = DataMap::of(&file, len);
    let holes = if opts.sparse {
        data.holes(&geometry)
    } else {
        ZeroRuns::default()
    };
    let mut list = ZeroList::new(holes.clone(), session, &geometry);
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
    let signer = opts.sign.as_ref().map(|key| {
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
        Signer {
            head: manifest.sign(key),
            key: key.clone(),
            manifest,
            pages: Vec::new(),
            next_page: 0,
        }
    });
    let mut ahead = Ahead::start(
        map.clone(),
        geometry,
        data,
        Scan {
            zeros: opts.sparse,
            known: holes,
            sign: signer.as_ref().map(|s| (s.manifest, s.key.clone())),
        },
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
    let start = Instant::now();
    let mut w = Wire {
        socks,
        signer,
        batch: MsgBatch::new(BATCH),
        session,
        geometry,
        image: &map[..],
        digest: [0; 32],
        packets: 0,
        payload_packets: 0,
        bytes: 0,
        stream: 0,
        pacer: Pacer {
            start,
            bits_per_sec: opts.rate_bps,
            sent_bits: 0,
        },
        loss: Loss::new(opts.loss, seed),
    };
    let fleet = || bc.as_ref().map(|b| b.fleet()).unwrap_or_default();
    // The control block of `pass` with extra `flags` and the group-size
    // estimate of the moment.
    let control = |pass: u32, flags: u32| {
        let mut c = base;
        c.pass = pass;
        c.flags |= flags | wire::gsize_flags(fleet().known);
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
        // Announce until enough receivers have reported (they learn where
        // to report from the announce).
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
            w.control(Kind::Announce, &control(0, 0))?;
            std::thread::sleep(LOOK * 4);
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
            w.digest = ahead.digest()?.sha256;
            // Every page is made and the digest known: the manifest file
            // for HTTP receivers can be written.
            if let (Some(s), Some(path)) = (&w.signer, &opts.manifest_file) {
                let file = ManifestFile::new(&s.manifest, &s.key, s.pages.clone(), &w.digest);
                publish::write_beside(&file, path);
            }
            list = ZeroList::new(list.runs, session, &geometry);
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
    let mut rounds = 0;
    let mut repair_packets = 0;
    let mut repair_bytes = 0;
    let mut refused = 0;
    // Repairs go at most at the data rate: the one asked for, else the
    // one the passes reached.
    let data_rate = opts.rate_bps.or_else(|| {
        let secs = start.elapsed().as_secs_f64();
        (secs > 0.0).then(|| ((w.bytes * 8) as f64 / secs) as u64 + 1)
    });
    let mut budget = (opts.max_repair.max(0.0) * geometry.block_count as f64).ceil() as u64;
    // Blocks or symbols a round may send once the budget is spent (none
    // when --max-repair 0 asks for no repair at all).
    let floor = if budget > 0 {
        geometry.block_count.div_ceil(REPAIR_FLOOR_DIVISOR)
    } else {
        0
    };
    let (mut range_cursor, mut group_cursor) = (0, 0);
    if let Some(bc) = &bc {
        let mut pass = opts.passes - 1;
        // Fresh symbols for every parity round: the next unused repair
        // symbol of each group (the passes used the first ones).
        let mut next_esi: HashMap<u64, u32> = HashMap::new();
        let first_esi = opts.passes * u32::from(opts.fec_repair);
        // Everyone the sender knows of is done: no window to wait out.
        let settled = |f: FleetCounts| f.known >= opts.min_receivers.max(1) && f.receiving == 0;
        // The sender stops after QUIET_WINDOWS windows in a row without a
        // request, so that one lost NACK or one late receiver does not end
        // the session for everyone.
        let mut quiet = 0;
        let mut held = 0;
        while quiet < QUIET_WINDOWS && rounds < opts.max_repair_rounds {
            bc.set_round(u64::from(pass), rounds);
            // Repeat the end that opened the window at a quarter and at
            // half of it: the copies sent right after a burst of data are
            // the ones a receiver's full ring drops, and a receiver that
            // misses every end of a round never asks.
            let opened = Instant::now();
            let mut reminders = vec![opts.repair_wait / 2, opts.repair_wait / 4];
            while opened.elapsed() < opts.repair_wait {
                if reminders.last().is_some_and(|&at| opened.elapsed() >= at) {
                    reminders.pop();
                    w.control(Kind::End, &control(pass, 0))?;
                }
                show(
                    SendPhase::Repair,
                    pass,
                    (0, 0, 0),
                    &w,
                    (rounds, repair_packets, repair_bytes),
                );
                std::thread::sleep(LOOK.min(opts.repair_wait / 8));
            }
            let Plan {
                mut ranges,
                mut parity,
            } = bc.take(&policy);
            if ranges.is_empty() && parity.is_empty() {
                // Reports are not authenticated (receivers hold no keys):
                // "everyone finished" ends the repair only after a whole
                // window in which no one asked, and a request always wins.
                if settled(fleet()) {
                    break;
                }
                // Not quiet while a receiver is still writing blocks: it
                // may be working through a backlog (rebuilding groups) and
                // ask once it reaches the end of the round.
                if held < PROGRESS_HOLD && bc.progressing(PROGRESSING) {
                    held += 1;
                } else {
                    quiet += 1;
                }
                continue;
            }
            // Requests are not authenticated: once a flood has spent the
            // budget, each round still sends a floor (taken in turn over
            // what is asked, see `clip`), so that forged requests delay
            // the others' repairs but cannot starve them.
            let allowance = budget.max(floor);
            let mut cut = clip(&mut ranges, allowance, &mut range_cursor);
            let resent: u64 = ranges.iter().map(|(a, b)| b - a).sum();
            cut += clip_counts(&mut parity, allowance - resent, &mut group_cursor);
            if cut > 0 {
                refused += cut;
                log::warn!("repair budget spent: {cut} blocks or symbols asked for are not sent");
            }
            if ranges.is_empty() && parity.is_empty() {
                break;
            }
            let blocks = resent + parity.iter().map(|&(_, n)| u64::from(n)).sum::<u64>();
            budget = budget.saturating_sub(blocks);
            w.pacer.restart(data_rate);
            quiet = 0;
            held = 0;
            rounds += 1;
            pass += 1;
            log::info!(
                "repair round {rounds}: {} ranges, {} groups",
                ranges.len(),
                parity.len()
            );
            // Pages again: a receiver whose chunk waits for a lost page
            // NACKs that chunk to get here.
            w.all_pages()?;
            let (packets, bytes) = (w.payload_packets, w.bytes);
            for (first, end) in ranges {
                w.zeros(&list, first, end)?;
                w.data(&list, first, end)?;
            }
            for (group, count) in parity {
                let esi = next_esi.entry(group).or_insert(first_esi);
                w.fec(parity_group, group, *esi, count)?;
                *esi += count;
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
                (rounds, repair_packets, repair_bytes),
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
        digest: read.sha256,
        packets: w.packets,
        bytes: w.bytes,
        repair_rounds: rounds,
        repair_packets,
        repair_bytes,
        repair_refused: refused,
        inbound,
        receivers,
        elapsed: start.elapsed(),
        zero_runs: list.runs.runs().len() as u64,
        skipped_bytes: list.runs.bytes(&geometry),
        scan_time: ahead.scan_time(),
        read_time: read.elapsed,
    })
}

/// The image at `path`, or standard input for `-`. Every packet carries
/// the image's size, so standard input is read to its end first, into an
/// unlinked file in the temporary directory (`TMPDIR`, else /tmp): its first
/// packet waits for the end of the input.
fn open_source(path: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    if path != Path::new("-") {
        return File::open(path)
            .map_err(|e| Error::target_io(&format!("open {}", path.display()), &e));
    }
    let dir = std::env::temp_dir();
    let err = |what: &str, e: std::io::Error| {
        Error::target_io(&format!("{what} standard input in {}", dir.display()), &e)
    };
    let mut spool = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o600)
        .open(&dir)
        .map_err(|e| err("keep", e))?;
    std::io::copy(&mut std::io::stdin().lock(), &mut spool).map_err(|e| err("copy", e))?;
    Ok(spool)
}

/// Bytes of the image at `file`: a regular file's length, or a block
/// device's size (its metadata says 0).
fn source_len(file: &File) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    use std::os::unix::fs::FileTypeExt;
    let meta = file.metadata()?;
    if meta.file_type().is_block_device() {
        // Seeking moves nothing the mapping depends on.
        let mut f = file;
        f.seek(SeekFrom::End(0))
    } else {
        Ok(meta.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clips_ranges_to_the_budget_in_turn() {
        let mut at = 0;
        let mut r = vec![(0, 10), (20, 30), (40, 50)];
        assert_eq!(clip(&mut r, 15, &mut at), 15);
        assert_eq!((r, at), (vec![(0, 10), (20, 25)], 25));
        // The next round starts where this one stopped, and wraps round:
        // requests for the first blocks cannot keep the budget forever.
        let mut r = vec![(0, 10), (20, 30), (40, 50)];
        assert_eq!(clip(&mut r, 15, &mut at), 15);
        assert_eq!((r, at), (vec![(25, 30), (40, 50)], 50));
        let mut r = vec![(0, 10), (20, 30), (40, 50)];
        assert_eq!(clip(&mut r, 12, &mut at), 18);
        assert_eq!((r, at), (vec![(0, 10), (20, 22)], 22));
        let mut r = vec![(0, 10)];
        assert_eq!(clip(&mut r, 0, &mut at), 10);
        assert!(r.is_empty());
        let mut g = 0;
        let mut p = vec![(0, 5), (3, 5), (7, 5)];
        assert_eq!(clip_counts(&mut p, 7, &mut g), 8);
        assert_eq!((p, g), (vec![(0, 5), (3, 2)], 4));
        let mut p = vec![(0, 5), (3, 5), (7, 5)];
        assert_eq!(clip_counts(&mut p, 7, &mut g), 8);
        assert_eq!((p, g), (vec![(0, 2), (7, 5)], 1));
    }

    #[test]
    fn loss_rate_is_close_to_asked() {
        let mut l = Loss::new(0.2, 42);
        let dropped = (0..100_000).filter(|_| l.drop_next()).count();
        assert!((18_000..22_000).contains(&dropped), "{dropped}");
        let mut none = Loss::new(0.0, 42);
        assert!((0..1000).all(|_| !none.drop_next()));
    }
}
