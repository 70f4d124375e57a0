//! The outgoing packets: data blocks in `sendmmsg` batches, control
//! packets, signed pages, zero runs and FEC symbols, paced to the rate and
//! thinned by loss injection (tests only).

use std::time::{Duration, Instant};

use socket2::Socket;

use crate::error::{Error, ErrorCode, Result};
use crate::net::socket::{SendBatch, MAX_GSO_SEGMENTS};
use crate::proto::fec;
use crate::proto::manifest::{ImageDigest, Manifest};
use crate::proto::wire::{self, Control, Geometry, Kind, HEADER_LEN};
use crate::rng::XorShift;
use crate::send::ahead::Piece;
use crate::send::zeros::ZeroRuns;

/// Messages per `sendmmsg` call: with UDP GSO each carries up to
/// [`MAX_GSO_SEGMENTS`] blocks (45 of 1432 bytes), so one call sends a few
/// hundred datagrams.
const MESSAGES: usize = 8;
/// A paced sender sends at most what takes this long at its rate in one
/// call (but at least [`MIN_BURST`] datagrams), so the receivers' rings
/// see no longer bursts than that.
const BURST: Duration = Duration::from_millis(1);
/// Datagrams a paced sender may always send in one call.
const MIN_BURST: usize = 32;
/// Control packets are sent this many times (they are tiny; loss is cheap to beat).
const CONTROL_REPEAT: usize = 3;

/// Paces sending to a rate by sleeping when ahead of schedule.
pub(super) struct Pacer {
    start: Instant,
    bits_per_sec: Option<u64>,
    sent_bits: u64,
}

impl Pacer {
    /// Start a new schedule now at `bits_per_sec`: no credit is carried
    /// over from idle time, so a burst never exceeds the rate.
    /// A schedule from `start` at `bits_per_sec` (None: unpaced).
    pub(super) fn new(start: Instant, bits_per_sec: Option<u64>) -> Pacer {
        Pacer {
            start,
            bits_per_sec,
            sent_bits: 0,
        }
    }

    pub(super) fn restart(&mut self, bits_per_sec: Option<u64>) {
        self.start = Instant::now();
        self.sent_bits = 0;
        self.bits_per_sec = bits_per_sec;
    }

    pub(super) fn wait(&mut self, bytes: u64) {
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
pub(super) struct Loss {
    rng: XorShift,
    threshold: u64,
}

impl Loss {
    pub(super) fn new(fraction: f64, seed: u64) -> Loss {
        Loss {
            rng: XorShift::new(seed),
            threshold: (fraction.clamp(0.0, 1.0) * u64::MAX as f64) as u64,
        }
    }

    pub(super) fn drop_next(&mut self) -> bool {
        self.threshold != 0 && self.rng.next_u64() < self.threshold
    }
}

/// What a signed session sends besides the plain packets.
pub(super) struct Signer {
    pub(super) key: ed25519_dalek::SigningKey,
    pub(super) manifest: Manifest,
    pub(super) head: Vec<u8>,
    /// The signed pages made so far (all of them after the first pass).
    pub(super) pages: Vec<Vec<u8>>,
    pub(super) next_page: u64,
}

/// Pages sent with each announce (round robin), so a receiver that lost
/// some gets them again within the pass.
const PAGES_PER_ANNOUNCE: u64 = 16;

pub(super) struct Wire<'a> {
    pub(super) socks: Vec<Socket>,
    pub(super) signer: Option<Signer>,
    pub(super) batch: SendBatch,
    /// Data packets per call (fewer when paced, see [`BURST`]).
    pub(super) burst: usize,
    pub(super) session: u32,
    pub(super) geometry: Geometry,
    pub(super) image: &'a [u8],
    /// The image's SHA-256 or root, once read.
    pub(super) digest: Option<ImageDigest>,
    /// Datagrams sent, all kinds.
    pub(super) packets: u64,
    /// Data and FEC symbol packets sent (what loss injection dropped is
    /// not sent), and their payload bytes.
    pub(super) payload_packets: u64,
    pub(super) bytes: u64,
    pub(super) stream: usize,
    pub(super) pacer: Pacer,
    pub(super) loss: Loss,
}

impl Wire<'_> {
    /// The batch and burst for blocks of `g` at `rate_bps` (None:
    /// unpaced), with UDP GSO if `gso`.
    pub(super) fn batching(g: &Geometry, rate_bps: Option<u64>, gso: bool) -> (SendBatch, usize) {
        let batch = SendBatch::new(MESSAGES, if gso { MAX_GSO_SEGMENTS } else { 1 });
        let most = batch.capacity();
        let burst = rate_bps.map_or(most, |rate| {
            let bytes = rate as f64 / 8.0 * BURST.as_secs_f64();
            let datagrams = bytes / f64::from(g.block_size + HEADER_LEN as u32);
            (datagrams as usize).clamp(MIN_BURST, most.max(MIN_BURST))
        });
        (batch, burst)
    }

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
                // A kernel or device without UDP GSO: one datagram per
                // message from now on (the refused message sent again).
                Err(e)
                    if self.batch.segments() > 1
                        && matches!(
                            e.raw_os_error(),
                            Some(libc::EIO | libc::EINVAL | libc::ENOPROTOOPT | libc::EOPNOTSUPP)
                        ) =>
                {
                    log::info!("UDP GSO refused ({e}): one datagram per message");
                    self.batch.without_gso();
                }
                Err(e) => return Err(Error::new(ErrorCode::Network, format!("sendmmsg: {e}"))),
            }
        }
        self.packets += msgs.len() as u64;
        Ok(())
    }

    pub(super) fn control(&mut self, kind: Kind, control: &Control) -> Result<()> {
        // Plain packets carry a SHA-256 only: a root is for receivers that
        // verify the signed chunks (an unsigned receiver would compare it
        // with the SHA-256 it reads back).
        let sha256 = match self.digest {
            Some(ImageDigest::Sha256(d)) => d,
            _ => [0; 32],
        };
        let plain = Control {
            digest: sha256,
            ..*control
        };
        let pkt = wire::encode_control(kind, self.session, &self.geometry, &plain);
        let (flags, digest) = self.digest.map_or((0, [0; 32]), |d| (d.flags(), d.bytes()));
        let signed = self.signer.as_ref().map(|s| match kind {
            Kind::End => wire::encode_raw(
                Kind::SignedEnd,
                self.session,
                &self.geometry,
                0,
                &s.manifest
                    .sign_end(&s.key, control.pass, control.flags | flags, &digest),
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
    pub(super) fn all_pages(&mut self) -> Result<()> {
        let n = self.signer.as_ref().map_or(0, |s| s.pages.len() as u64);
        self.pages(n)
    }

    /// Take in what the scanner found in the pieces it finished: send each
    /// new page (before its chunks' data) and the zero runs found (before
    /// the data that follows them).
    pub(super) fn pieces(&mut self, pieces: Vec<Piece>, list: &mut ZeroList) -> Result<()> {
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
    pub(super) fn blocks(&mut self, first: u64, end: u64) -> Result<()> {
        let image = self.image;
        let g = self.geometry;
        let burst = self.burst;
        let mut headers = vec![[0u8; HEADER_LEN]; burst];
        let mut next = first;
        while next < end {
            let stop = (next + burst as u64).min(end);
            let mut msgs: Vec<(&[u8], &[u8])> = Vec::with_capacity(burst);
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
    pub(super) fn zeros(&mut self, list: &ZeroList, first: u64, end: u64) -> Result<()> {
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
    pub(super) fn data(&mut self, list: &ZeroList, first: u64, end: u64) -> Result<()> {
        for (a, b) in list.runs.data_in(first, end) {
            self.blocks(a, b)?;
        }
        Ok(())
    }

    /// Send `count` repair symbols of FEC group `group`, from repair symbol
    /// `first` (loss injection may drop some).
    pub(super) fn fec(
        &mut self,
        group_size: u32,
        group: u64,
        first: u32,
        count: u32,
    ) -> Result<()> {
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
pub(super) struct ZeroList {
    pub(super) runs: ZeroRuns,
    pub(super) packets: Vec<Vec<u8>>,
    /// Blocks `[first, end)` spanned by the runs of each packet.
    pub(super) spans: Vec<(u64, u64)>,
    /// A signed session's manifest and key: each packet carries its
    /// signature (receivers with `--trust` apply no run unsigned).
    pub(super) sign: Option<(Manifest, ed25519_dalek::SigningKey)>,
}

/// Blocks `[first, end)` spanned by the runs of each zero-run packet of `runs`.
fn spans(runs: &[(u64, u32)], block_size: u32) -> impl Iterator<Item = (u64, u64)> + '_ {
    runs.chunks(wire::max_zero_runs(block_size)).map(|c| {
        let (last, n) = c[c.len() - 1];
        (c[0].0, last + u64::from(n))
    })
}

impl ZeroList {
    pub(super) fn new(
        runs: ZeroRuns,
        session: u32,
        g: &Geometry,
        sign: Option<(Manifest, ed25519_dalek::SigningKey)>,
    ) -> ZeroList {
        let wire_runs = runs.wire();
        let mut list = ZeroList {
            packets: Vec::new(),
            spans: spans(&wire_runs, g.block_size).collect(),
            runs,
            sign,
        };
        list.packets = list.signed(0, wire::encode_zeros(session, g, &wire_runs));
        list
    }

    /// `packets`, the list's packets from `seq` on, each with its
    /// signature in a signed session.
    fn signed(&self, seq: u64, mut packets: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        if let Some((m, key)) = &self.sign {
            for (i, pkt) in packets.iter_mut().enumerate() {
                let sig = m.sign_zeros(key, seq + i as u64, &pkt[HEADER_LEN..]);
                wire::append_signature(pkt, &sig);
            }
        }
        packets
    }

    /// Add the runs found in the next piece of the image (none overlaps a
    /// run known before); returns their packets, to be sent now. The spans
    /// (for repair rounds) are those of the list as made by [`Self::new`]:
    /// the first pass renumbers the whole list when it ends.
    pub(super) fn append(&mut self, more: &ZeroRuns, session: u32, g: &Geometry) -> Vec<Vec<u8>> {
        let seq = self.packets.len() as u64;
        let new = self.signed(seq, wire::encode_more_zeros(session, g, seq, &more.wire()));
        self.packets.extend(new.iter().cloned());
        self.runs.insert(more);
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_rate_is_close_to_asked() {
        let mut l = Loss::new(0.2, 42);
        let dropped = (0..100_000).filter(|_| l.drop_next()).count();
        assert!((18_000..22_000).contains(&dropped), "{dropped}");
        let mut none = Loss::new(0.0, 42);
        assert!((0..1000).all(|_| !none.drop_next()));
    }
}
