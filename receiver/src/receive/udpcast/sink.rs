//! The [`Sink`] of a udpcast transfer: blocks into the target, REQACKs
//! answered from the [`Ledger`].

use std::fs::File;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use crossbeam_utils::CachePadded;

use super::flow::{self, Answer};
use super::ledger::{Ledger, Refusal, Retired};
use super::pages::Pages;
use super::{Connected, PUBLISH};
use crate::error::{Error, Result};
use crate::proto::udpcast::fec as udpcast_fec;
use crate::proto::udpcast::{bit, ok, parse, retransmit, Message, MAX_STRIPES};
use crate::proto::wire::DropReason;
use crate::receive::workers::{Sink, WorkerCounters};
use crate::status::page::StreamStatus;
use crate::store::stream::StreamOut;
use crate::store::target::sha256_prefix;

/// Where the blocks go.
pub(super) enum Out {
    /// A file or block device, written slice by slice in order, in whole
    /// pages, as the slices complete ([`Pages`]).
    File {
        file: File,
        block_device: bool,
        pages: Mutex<Pages>,
    },
    /// A pipe (`--out -`: stdout), written in order through a reorder window.
    Stream(StreamOut),
}

/// The receiving side of one udpcast transfer, shared by the workers and the
/// control thread (which feeds it what arrives on the control socket: data
/// and REQACKs in point-to-point mode).
pub struct Stream {
    pub(super) out: Out,
    pub(super) block_size: u64,
    pub(super) client: u32,
    pub(super) replies: UdpSocket,
    /// The sender that answered our connect request: the only source taken.
    pub(super) sender: SocketAddr,
    pub(super) ledger: Mutex<Ledger>,
    pub(super) counters: Vec<CachePadded<WorkerCounters>>,
    pub(super) failure: OnceLock<Error>,
}

impl Out {
    /// The file or block device `file`.
    pub(super) fn file(file: File, block_device: bool) -> Out {
        Out::File {
            file,
            block_device,
            pages: Mutex::new(Pages::default()),
        }
    }
}

impl Stream {
    pub(super) fn new(
        out: Out,
        connected: &Connected,
        replies: UdpSocket,
        counter_slots: usize,
    ) -> Stream {
        Stream {
            out,
            block_size: u64::from(connected.block_size),
            client: connected.client,
            replies,
            sender: SocketAddr::V4(connected.sender),
            ledger: Mutex::new(Ledger::new()),
            counters: (0..counter_slots).map(|_| CachePadded::default()).collect(),
            failure: OnceLock::new(),
        }
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The fatal error, if any (the output stream's included).
    pub fn failure(&self) -> Option<Error> {
        self.failure.get().cloned().or_else(|| match &self.out {
            Out::Stream(s) => s.failure(),
            Out::File { .. } => None,
        })
    }

    /// Image offset up to which blocks can be taken now: a stream's window
    /// ends there; a file takes everything.
    fn limit(&self) -> u64 {
        match &self.out {
            Out::File { .. } => u64::MAX,
            Out::Stream(s) => s.limit(),
        }
    }

    /// Bytes the consumer has taken from a stream (0 for a file, which
    /// takes everything: its limit is `u64::MAX`).
    fn consumed(&self) -> u64 {
        match &self.out {
            Out::File { .. } => 0,
            Out::Stream(s) => s.status().written,
        }
    }

    /// Counters of the output stream, if the image goes to one.
    pub(super) fn stream_status(&self) -> Option<StreamStatus> {
        match &self.out {
            Out::File { .. } => None,
            Out::Stream(s) => Some(s.status()),
        }
    }

    /// With a stream: wait until the consumer has taken all `len` bytes
    /// (see [`StreamOut::drain`]). Nothing to wait for with a file.
    pub(super) fn drain(
        &self,
        len: u64,
        cancelled: impl Fn() -> bool,
        tick: impl FnMut(),
    ) -> Result<()> {
        match &self.out {
            Out::File { .. } => Ok(()),
            Out::Stream(s) => s.drain(len, PUBLISH, cancelled, tick),
        }
    }

    /// The transfer is complete at `len` bytes: cut and sync the file, or
    /// wait for the stream to drain; the SHA-256 of what was written.
    pub(super) fn finish(&self, len: u64) -> Result<[u8; 32]> {
        match &self.out {
            Out::File {
                file,
                block_device,
                pages,
            } => {
                let mut pages = pages.lock().unwrap_or_else(|p| p.into_inner());
                pages
                    .flush(&mut |at, b| file.write_all_at(b, at))
                    .map_err(|e| Error::target_io("cannot write target", &e))?;
                finish_target(file, *block_device, len)
            }
            Out::Stream(s) => s.finish(len),
        }
    }

    fn written(&self) -> u64 {
        self.counters
            .iter()
            .map(|c| c.blocks.load(Ordering::Acquire))
            .sum()
    }

    /// Length of the image once the transfer is complete and every block
    /// taken has been written.
    pub fn complete_len(&self) -> Option<u64> {
        let l = self.ledger();
        (l.finished() && self.written() == l.accepted).then_some(l.base)
    }

    /// The ledger, locked, and slice `no` of `bytes` bytes in it (see
    /// [`Ledger::locate`]).
    fn opened(
        &self,
        no: u32,
        bytes: u32,
        c: &WorkerCounters,
    ) -> std::result::Result<(MutexGuard<'_, Ledger>, Option<usize>), Refusal> {
        let mut l = self.ledger();
        let i = l.locate(no, bytes, self.block_size, Instant::now(), c)?;
        Ok((l, i))
    }

    fn data(
        &self,
        slice: u32,
        block: u16,
        bytes: u32,
        payload: &[u8],
        c: &WorkerCounters,
    ) -> std::result::Result<(), Refusal> {
        let bs = self.block_size;
        // Read before the lock: the limit only grows, so this is safe.
        let limit = self.limit();
        let (l, offset, len, rebuilt) = {
            let (mut l, i) = self.opened(slice, bytes, c)?;
            let i = i.ok_or(DropReason::Duplicate)?;
            let start = u64::from(block) * bs;
            if start >= u64::from(bytes) {
                return Err(DropReason::OutOfRange.into());
            }
            if bit(&l.open[i].got, usize::from(block)) {
                return Err(DropReason::Duplicate.into());
            }
            let len = (u64::from(bytes) - start).min(bs) as usize;
            if payload.len() < len {
                return Err(DropReason::Truncated.into());
            }
            // A slice whose predecessor's size is still unknown cannot be
            // placed: drop the block, the next REQACK asks for it again.
            let at = l.offset(i).ok_or(DropReason::Inconsistent)? + start;
            // Beyond the stream's window: not taken (the slice's map does
            // not get it), so the next REQACK asks for it again.
            if at + len as u64 > limit {
                if let Out::Stream(s) = &self.out {
                    s.refuse();
                }
                return Ok(());
            }
            let s = &mut l.open[i];
            s.mark(usize::from(block));
            s.keep(usize::from(block), &payload[..len], bs);
            l.accepted += 1;
            // One block less to rebuild may let the stripe's FEC blocks do it.
            let s = &l.open[i];
            let stripe = usize::from(block) % usize::from(s.stripes).max(1);
            let rebuilt = if s.fec.get(stripe).is_some_and(|f| !f.is_empty()) {
                l.repair(i, stripe, bs, limit)
            } else {
                Vec::new()
            };
            (l, at, len, rebuilt)
        };
        self.retire(l, c);
        self.put(&payload[..len], offset, c);
        self.put_rebuilt(rebuilt, c);
        Ok(())
    }

    /// Take the complete slices off the front of the ledger `l` (let go
    /// here) and write them to a file, in order: the file's [`Pages`] are
    /// taken before the ledger is let go, so slices reach them in the order
    /// they retire. (A stream took each block as it came.)
    fn retire(&self, mut l: MutexGuard<'_, Ledger>, c: &WorkerCounters) {
        let retired = l.retire(self.block_size);
        let Out::File { file, pages, .. } = &self.out else {
            return;
        };
        if retired.is_empty() {
            return;
        }
        let mut pages = pages.lock().unwrap_or_else(|p| p.into_inner());
        drop(l);
        for Retired { at, data, blocks } in retired {
            if let Err(e) = pages.append(at, &data, &mut |at, b| file.write_all_at(b, at)) {
                self.fail(Error::target_io("cannot write target", &e));
                return;
            }
            c.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
            c.blocks.fetch_add(blocks, Ordering::Release);
        }
    }

    /// Put one block taken for writing into a stream and count it. (A
    /// file's blocks are written and counted with their slice, by
    /// [`Stream::retire`].)
    fn put(&self, block: &[u8], offset: u64, c: &WorkerCounters) {
        if let Out::Stream(s) = &self.out {
            s.put(offset, block);
            c.bytes.fetch_add(block.len() as u64, Ordering::Relaxed);
            c.blocks.fetch_add(1, Ordering::Release);
        }
    }

    /// Blocks rebuilt from FEC blocks: counted, and put into a stream.
    fn put_rebuilt(&self, rebuilt: Vec<(u64, Vec<u8>)>, c: &WorkerCounters) {
        for (offset, block) in rebuilt {
            self.put(&block, offset, c);
            c.fec_recovered.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A FEC block: keep it if its stripe lacks data blocks, and rebuild
    /// them once the stripe has as many FEC blocks as it lacks.
    fn fec(
        &self,
        stripes: u16,
        slice: u32,
        block: u16,
        bytes: u32,
        payload: &[u8],
        c: &WorkerCounters,
    ) -> std::result::Result<(), Refusal> {
        let bs = self.block_size;
        let limit = self.limit();
        let n_stripes = usize::from(stripes);
        if n_stripes == 0 || n_stripes > MAX_STRIPES {
            return Err(DropReason::Inconsistent.into());
        }
        let (stripe, row) = (
            usize::from(block) % n_stripes,
            usize::from(block) / n_stripes,
        );
        if row >= udpcast_fec::MAX_ROWS {
            return Err(DropReason::OutOfRange.into());
        }
        if (payload.len() as u64) < bs {
            return Err(DropReason::Truncated.into());
        }
        let rebuilt = {
            let (mut l, i) = self.opened(slice, bytes, c)?;
            // A late FEC block of a slice already complete is not needed.
            let Some(i) = i else {
                return Ok(());
            };
            // The code covers at most 128 data blocks per stripe.
            if l.open[i].blocks(bs) > n_stripes * udpcast_fec::MAX_DATA {
                return Err(DropReason::Inconsistent.into());
            }
            // As for data blocks: a slice that cannot be placed yet waits
            // for the next REQACK.
            l.offset(i).ok_or(DropReason::Inconsistent)?;
            let s = &mut l.open[i];
            if s.stripes == 0 {
                s.stripes = stripes;
                s.fec = vec![Vec::new(); n_stripes];
            } else if s.stripes != stripes {
                return Err(DropReason::Inconsistent.into());
            }
            if s.fec[stripe].iter().any(|(r, _)| *r == row) {
                return Err(DropReason::Duplicate.into());
            }
            // Not needed (nothing lost in the stripe, or enough FEC blocks
            // already): ignored, as udp-receiver does, and not a drop.
            if s.lost(stripe, bs).count() <= s.fec[stripe].len() {
                return Ok(());
            }
            s.fec[stripe].push((row, payload[..bs as usize].into()));
            let rebuilt = l.repair(i, stripe, bs, limit);
            (l, rebuilt)
        };
        let (l, rebuilt) = rebuilt;
        self.retire(l, c);
        self.put_rebuilt(rebuilt, c);
        Ok(())
    }

    fn reqack(
        &self,
        slice: u32,
        bytes: u32,
        rxmit: u32,
        ready: &[u8],
        c: &WorkerCounters,
    ) -> std::result::Result<(), Refusal> {
        let bs = self.block_size;
        let answered = bit(ready, self.client as usize);
        let reply = {
            let mut l = self.ledger();
            let missing = if bytes == 0 {
                if !l.end_marker(slice, bs, Instant::now())? || answered {
                    return Ok(());
                }
                None
            } else {
                // Checked even when already answered: a REQACK is the one
                // packet of every slice the sender is sure to send.
                let i = l.locate(slice, bytes, bs, Instant::now(), c)?;
                if answered {
                    return Ok(());
                }
                let lacking = i.filter(|&i| !l.open[i].complete(bs));
                match lacking {
                    // What the stream's window can take decides (flow.rs).
                    Some(i) => match flow::answer(
                        &l.open[i],
                        l.offset(i),
                        bs,
                        self.consumed(),
                        self.limit(),
                    ) {
                        Answer::Retransmit(map) => Some(map),
                        Answer::Wait => return Ok(()),
                    },
                    None => None,
                }
            };
            let reply = match missing {
                Some(got) => retransmit(slice, rxmit, &got),
                None => {
                    if l.acked.is_none_or(|a| a < slice) {
                        l.acked = Some(slice);
                    }
                    ok(slice)
                }
            };
            self.retire(l, c);
            reply
        };
        if let Err(e) = self.replies.send_to(&reply, self.sender) {
            log::warn!("answering the sender's REQACK for slice {slice}: {e}");
        }
        Ok(())
    }
}

impl Sink for Stream {
    fn ingest(&self, datagram: &[u8], c: &WorkerCounters) {
        let outcome = parse(datagram)
            .map_err(Refusal::from)
            .and_then(|m| match m {
                Message::Data {
                    slice,
                    block,
                    bytes,
                    payload,
                } => self.data(slice, block, bytes, payload, c),
                Message::ReqAck {
                    slice,
                    bytes,
                    rxmit,
                    ready,
                } => self.reqack(slice, bytes, rxmit, ready, c),
                Message::Fec {
                    stripes,
                    slice,
                    block,
                    bytes,
                    payload,
                } => self.fec(stripes, slice, block, bytes, payload, c),
                // Repeated hellos announce the sender to late receivers.
                Message::Hello { .. } => Ok(()),
                Message::ConnectReply { .. } | Message::Other(_) => Err(DropReason::BadKind.into()),
            });
        match outcome {
            Ok(()) => {}
            Err(Refusal::Drop(r)) => c.drop_packet(r),
            Err(Refusal::Fatal(e)) => {
                c.drop_packet(DropReason::Inconsistent);
                self.fail(e);
            }
        }
    }

    fn counters(&self, i: usize) -> &WorkerCounters {
        &self.counters[i]
    }

    fn fail(&self, err: Error) {
        if self.failure.set(err.clone()).is_ok() {
            log::error!("{err}");
        }
    }

    fn has_failed(&self) -> bool {
        self.failure.get().is_some()
    }

    fn source(&self) -> Option<IpAddr> {
        Some(self.sender.ip())
    }
}

/// Cut a regular file to the image, flush, and hash what was received.
fn finish_target(file: &File, block_device: bool, len: u64) -> Result<[u8; 32]> {
    let io = |what: &str, e: std::io::Error| Error::target_io(what, &e);
    if !block_device {
        file.set_len(len).map_err(|e| io("cannot size target", e))?;
    }
    file.sync_all().map_err(|e| io("cannot sync target", e))?;
    let mut f = file
        .try_clone()
        .map_err(|e| io("cannot reopen target", e))?;
    std::io::Seek::rewind(&mut f).map_err(|e| io("cannot reread target", e))?;
    sha256_prefix(&mut f, len).map_err(|e| io("cannot read target", e))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::time::Duration;

    use super::super::ledger::{END_QUIET, MAX_AHEAD};
    use super::*;
    use crate::error::ErrorCode;
    use crate::proto::udpcast::{op, DATA_HEADER};
    use crate::store::stream;
    use crate::store::target::open_out;

    /// A stream into a scratch file whose replies go to a local socket
    /// standing in for the sender, with block size 4.
    fn stream(name: &str) -> (Stream, UdpSocket, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("xdpcast-udpcast-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        let (file, block_device) = open_out(&path).unwrap();
        let (s, sender) = stream_to(Out::file(file, block_device));
        (s, sender, path)
    }

    /// A stream into `out` whose replies go to a local socket standing in
    /// for the sender, with block size 4.
    fn stream_to(out: Out) -> (Stream, UdpSocket) {
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        sender
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let SocketAddr::V4(at) = sender.local_addr().unwrap() else {
            unreachable!()
        };
        let connected = Connected {
            sender: at,
            client: 3,
            block_size: 4,
            data_addr: Ipv4Addr::new(239, 1, 1, 1),
        };
        let replies = UdpSocket::bind("127.0.0.1:0").unwrap();
        (Stream::new(out, &connected, replies, 1), sender)
    }

    fn data(slice: u32, block: u16, bytes: u32, payload: &[u8]) -> Vec<u8> {
        block_packet(op::DATA, 0, slice, block, bytes, payload)
    }

    /// A CMD_DATA or CMD_FEC datagram (`stripes` 0 for data).
    fn block_packet(
        opcode: u16,
        stripes: u16,
        slice: u32,
        block: u16,
        bytes: u32,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut d = vec![0u8; DATA_HEADER];
        d[..2].copy_from_slice(&opcode.to_be_bytes());
        d[2..4].copy_from_slice(&stripes.to_be_bytes());
        d[4..8].copy_from_slice(&slice.to_be_bytes());
        d[8..10].copy_from_slice(&block.to_be_bytes());
        d[12..16].copy_from_slice(&bytes.to_be_bytes());
        d.extend_from_slice(payload);
        d
    }

    fn reqack(slice: u32, bytes: u32, ready: &[u8]) -> Vec<u8> {
        let mut d = vec![0u8; DATA_HEADER];
        d[..2].copy_from_slice(&op::REQACK.to_be_bytes());
        d[4..8].copy_from_slice(&slice.to_be_bytes());
        d[8..12].copy_from_slice(&bytes.to_be_bytes());
        d[12..16].copy_from_slice(&7u32.to_be_bytes());
        d.extend_from_slice(ready);
        d
    }

    fn reply(sender: &UdpSocket) -> Vec<u8> {
        let mut buf = [0u8; 512];
        let n = sender.recv(&mut buf).unwrap();
        buf[..n].to_vec()
    }

    /// Nothing to read from the stand-in sender.
    fn no_reply(sender: &UdpSocket) {
        sender.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 512];
        let r = sender.recv(&mut buf);
        sender.set_nonblocking(false).unwrap();
        assert!(
            r.is_err(),
            "unexpected reply {:?}",
            r.map(|n| buf[..n].to_vec())
        );
    }

    /// The sender's end marker for slice `no`, sent twice as udp-sender
    /// does when the first goes unanswered: the first is held back, the
    /// second is taken and answered OK (the test streams wait for nothing).
    fn end(s: &Stream, sender: &UdpSocket, no: u32) {
        s.ingest(&reqack(no, 0, &[0; 128]), s.counters(0));
        no_reply(sender);
        s.ingest(&reqack(no, 0, &[0; 128]), s.counters(0));
        assert_eq!(reply(sender), ok(no));
    }

    #[test]
    fn slices_land_one_after_another_and_reqacks_are_answered() {
        let (s, sender, path) = stream("slices");
        let c = s.counters(0);
        let drops = |r: DropReason| c.drops[r as usize].load(Ordering::Relaxed);
        // Slice 1 (8 bytes) before slice 0's size is known: cannot be placed.
        s.ingest(&data(1, 0, 8, b"IJKL"), c);
        assert_eq!(drops(DropReason::Inconsistent), 1);
        // Slice 0: 10 bytes in blocks of 4, 4 and a short 2.
        s.ingest(&data(0, 2, 10, b"EF"), c);
        s.ingest(&data(0, 0, 10, b"ABCD"), c);
        s.ingest(&data(0, 0, 10, b"xxxx"), c);
        assert_eq!(drops(DropReason::Duplicate), 1);
        s.ingest(&data(0, 3, 10, b"xxxx"), c);
        assert_eq!(drops(DropReason::OutOfRange), 1);
        // REQACK for slice 0: block 1 missing, blocks 0 and 2 received.
        s.ingest(&reqack(0, 10, &[0; 128]), c);
        let r = reply(&sender);
        assert_eq!(&r[..13], &[0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7, 0b101]);
        // Already answered OK by this client (bit 3): no reply.
        s.ingest(&reqack(0, 10, &[0b1000]), c);
        s.ingest(&data(0, 1, 10, b"0123"), c);
        s.ingest(&reqack(0, 10, &[0; 128]), c);
        assert_eq!(reply(&sender), ok(0));
        s.ingest(&data(1, 1, 8, b"MNOP"), c);
        s.ingest(&data(1, 0, 8, b"IJKL"), c);
        assert_eq!(s.complete_len(), None, "no end marker yet");
        // The end marker (empty slice 2) before slice 1 was answered OK is
        // not where udp-sender sends it.
        s.ingest(&reqack(2, 0, &[0; 128]), c);
        assert_eq!(drops(DropReason::Inconsistent), 2);
        s.ingest(&reqack(1, 8, &[0; 128]), c);
        assert_eq!(reply(&sender), ok(1));
        // Now it is taken once it stands alone (no wait in this test), and
        // answered again if repeated.
        s.ledger().end_quiet = Duration::ZERO;
        end(&s, &sender, 2);
        s.ingest(&reqack(2, 0, &[0; 128]), c);
        assert_eq!(reply(&sender), ok(2));
        assert_eq!(s.complete_len(), Some(18));
        // Nothing is taken after the end.
        s.ingest(&data(3, 0, 4, b"late"), c);
        assert_eq!(drops(DropReason::Inconsistent), 3);
        let digest = s.finish(18).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"ABCD0123EFIJKLMNOP");
        let want: [u8; 32] = sha2::Digest::finalize(
            <sha2::Sha256 as sha2::Digest>::new_with_prefix(b"ABCD0123EFIJKLMNOP"),
        )
        .into();
        assert_eq!(digest, want);
        assert!(!s.has_failed());
    }

    #[test]
    fn a_stream_takes_what_its_window_holds_and_the_rest_is_asked_again() {
        let (mut rx, tx) = stream::pipe().unwrap();
        // A window of 8 bytes: two blocks of 4.
        let (s, sender) = stream_to(Out::Stream(StreamOut::start(tx, 8).unwrap()));
        let c = s.counters(0);
        // Nobody reads the pipe yet, but its buffer takes what is in order.
        // Block 2 would end at 12, past the window while blocks 0 and 1 are
        // held: refused, not marked, not a drop.
        // The REQACK asks for blocks 0 and 1, which fit, and says it has
        // block 2 so that the sender does not send it again for nothing
        // (the consumer waits for block 0: the window cannot move).
        s.ingest(&data(0, 2, 10, b"EF"), c);
        s.ingest(&reqack(0, 10, &[0; 128]), c);
        assert_eq!(
            &reply(&sender)[..13],
            &[0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7, 0b100]
        );
        assert_eq!(s.stream_status().unwrap().refused, 1);
        assert_eq!(
            c.drops
                .iter()
                .map(|d| d.load(Ordering::Relaxed))
                .sum::<u64>(),
            0
        );
        s.ingest(&data(0, 0, 10, b"ABCD"), c);
        s.ingest(&data(0, 1, 10, b"0123"), c);
        // The writer moves the window on as the pipe takes the bytes.
        while s.limit() < 12 {
            std::thread::yield_now();
        }
        s.ingest(&data(0, 2, 10, b"EF"), c);
        s.ingest(&reqack(0, 10, &[0; 128]), c);
        assert_eq!(reply(&sender), ok(0));
        s.ledger().end_quiet = Duration::ZERO;
        end(&s, &sender, 1);
        assert_eq!(s.complete_len(), Some(10));
        let digest = s.finish(10).unwrap();
        drop(s);
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut rx, &mut got).unwrap();
        assert_eq!(got, b"ABCD0123EF");
        let want: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(b"ABCD0123EF").into();
        assert_eq!(digest, want);
    }

    fn fec(stripes: u16, slice: u32, block: u16, bytes: u32, payload: &[u8]) -> Vec<u8> {
        block_packet(op::FEC, stripes, slice, block, bytes, payload)
    }

    /// The FEC blocks udp-sender sends for a slice of `image` in blocks of
    /// 4 bytes, dealt into `stripes` stripes with `rows` FEC blocks each:
    /// FEC block number stripe + row × stripes.
    fn fec_blocks(image: &[u8], stripes: usize, rows: usize) -> Vec<Vec<u8>> {
        let blocks: Vec<Vec<u8>> = image
            .chunks(4)
            .map(|b| {
                let mut b = b.to_vec();
                b.resize(4, 0);
                b
            })
            .collect();
        let mut out = vec![Vec::new(); stripes * rows];
        for stripe in 0..stripes {
            let data: Vec<&[u8]> = blocks
                .iter()
                .skip(stripe)
                .step_by(stripes)
                .map(|b| &b[..])
                .collect();
            for (row, f) in udpcast_fec::encode(&data, rows, 4)
                .unwrap()
                .into_iter()
                .enumerate()
            {
                out[stripe + row * stripes] = f;
            }
        }
        out
    }

    #[test]
    fn fec_blocks_rebuild_lost_data_blocks() {
        let (s, sender, path) = stream("fec");
        let c = s.counters(0);
        let drops = |r: DropReason| c.drops[r as usize].load(Ordering::Relaxed);
        // Slice 0: 26 bytes, 7 blocks (the last one short) in 2 stripes
        // (blocks 0, 2, 4, 6 and 1, 3, 5), 2 FEC blocks per stripe.
        let image = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ";
        let bytes = image.len() as u32;
        let f = fec_blocks(image, 2, 2);
        let block = |b: usize| &image[b * 4..(b * 4 + 4).min(image.len())];
        // Blocks 1 and 3 (stripe 1) and 6 (stripe 0, short) are lost.
        for b in [0, 2, 4, 5] {
            s.ingest(&data(0, b as u16, bytes, block(b)), c);
        }
        // Before the FEC blocks: a retransmission request for 1, 3 and 6.
        s.ingest(&reqack(0, bytes, &[0; 128]), c);
        let r = reply(&sender);
        assert_eq!(&r[..13], &[0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7, 0b0011_0101]);
        // Stripe 0 lacks one block: its first FEC block (number 0) rebuilds it.
        s.ingest(&fec(2, 0, 0, bytes, &f[0]), c);
        assert_eq!(c.fec_recovered.load(Ordering::Relaxed), 1);
        // The second one (number 2) is not needed: ignored, not a drop.
        s.ingest(&fec(2, 0, 2, bytes, &f[2]), c);
        // Stripe 1 lacks two: FEC blocks 3 (row 1) then 1 (row 0).
        s.ingest(&fec(2, 0, 3, bytes, &f[3]), c);
        s.ingest(&fec(2, 0, 3, bytes, &f[3]), c);
        assert_eq!(drops(DropReason::Duplicate), 1);
        s.ingest(&fec(4, 0, 1, bytes, &f[1]), c);
        assert_eq!(drops(DropReason::Inconsistent), 1, "stripe count changed");
        s.ingest(&fec(2, 0, 1, bytes, &f[1][..3]), c);
        assert_eq!(drops(DropReason::Truncated), 1);
        s.ingest(&fec(0, 0, 1, bytes, &f[1]), c);
        assert_eq!(drops(DropReason::Inconsistent), 2, "no stripes");
        s.ingest(&fec(2, 0, 256, bytes, &f[1]), c);
        assert_eq!(drops(DropReason::OutOfRange), 1, "row 128");
        assert_eq!(c.fec_recovered.load(Ordering::Relaxed), 1);
        s.ingest(&fec(2, 0, 1, bytes, &f[1]), c);
        assert_eq!(c.fec_recovered.load(Ordering::Relaxed), 3);
        // The slice is complete: OK, and a late data block is a duplicate.
        s.ingest(&reqack(0, bytes, &[0; 128]), c);
        assert_eq!(reply(&sender), ok(0));
        s.ingest(&data(0, 1, bytes, block(1)), c);
        assert_eq!(drops(DropReason::Duplicate), 2);
        // Slice 1 (one block, one stripe): its FEC block comes first and
        // rebuilds the block; the data block is then a duplicate.
        let f1 = fec_blocks(b"!?", 1, 1);
        s.ingest(&fec(1, 1, 0, 2, &f1[0]), c);
        assert_eq!(c.fec_recovered.load(Ordering::Relaxed), 4);
        s.ingest(&data(1, 0, 2, b"!?"), c);
        assert_eq!(drops(DropReason::Duplicate), 3);
        s.ingest(&reqack(1, 2, &[0; 128]), c);
        assert_eq!(reply(&sender), ok(1));
        s.ledger().end_quiet = Duration::ZERO;
        end(&s, &sender, 2);
        assert_eq!(s.complete_len(), Some(28));
        s.finish(28).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZ!?"
        );
        assert_eq!(c.blocks.load(Ordering::Relaxed), 8);
        assert_eq!(c.bytes.load(Ordering::Relaxed), 28);
        assert!(!s.has_failed());
    }

    #[test]
    fn fec_blocks_that_arrive_first_wait_for_the_data() {
        let (s, sender, path) = stream("fec-first");
        let c = s.counters(0);
        // One stripe of 3 blocks, 2 FEC rows; FEC block 1 first: the stripe
        // lacks all 3 blocks, one FEC block is not enough.
        let image = b"0123456789AB";
        let f = fec_blocks(image, 1, 2);
        s.ingest(&fec(1, 0, 1, 12, &f[1]), c);
        s.ingest(&data(0, 2, 12, b"89AB"), c);
        assert_eq!(c.fec_recovered.load(Ordering::Relaxed), 0);
        s.ingest(&reqack(0, 12, &[0; 128]), c);
        assert_eq!(
            &reply(&sender)[..13],
            &[0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7, 0b100]
        );
        // Block 0 arrives: one lost block, one FEC block kept: rebuilt.
        s.ingest(&data(0, 0, 12, b"0123"), c);
        assert_eq!(c.fec_recovered.load(Ordering::Relaxed), 1);
        s.ingest(&reqack(0, 12, &[0; 128]), c);
        assert_eq!(reply(&sender), ok(0));
        s.ledger().end_quiet = Duration::ZERO;
        end(&s, &sender, 1);
        assert_eq!(s.complete_len(), Some(12));
        s.finish(12).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), image);
    }

    #[test]
    fn a_forged_end_marker_does_not_end_the_transfer() {
        let (s, sender, path) = stream("forged-end");
        let c = s.counters(0);
        let drops = |r: DropReason| c.drops[r as usize].load(Ordering::Relaxed);
        // Before anything arrived (the sender may not have started): never
        // an end, even after a wait.
        s.ledger().end_quiet = Duration::ZERO;
        s.ingest(&reqack(0, 0, &[0; 128]), c);
        s.ingest(&reqack(0, 0, &[0; 128]), c);
        no_reply(&sender);
        assert_eq!(drops(DropReason::Inconsistent), 2);
        s.ledger().end_quiet = END_QUIET;
        s.ingest(&data(0, 0, 4, b"ABCD"), c);
        s.ingest(&reqack(0, 4, &[0; 128]), c);
        assert_eq!(reply(&sender), ok(0));
        // A forged end marker for slice 1 where the real one would be: held
        // back, not answered. The sender's slice 1 then shows it was not
        // the sender's: it is dropped, and the transfer goes on.
        s.ingest(&reqack(1, 0, &[0; 128]), c);
        no_reply(&sender);
        assert_eq!(s.complete_len(), None);
        s.ingest(&data(1, 0, 8, b"EFGH"), c);
        assert_eq!(drops(DropReason::Inconsistent), 3);
        // End markers anywhere else are dropped at once: a slice already
        // complete, one with data, one further on.
        for no in [0, 1, 2] {
            s.ingest(&reqack(no, 0, &[0; 128]), c);
        }
        assert_eq!(drops(DropReason::Inconsistent), 6);
        no_reply(&sender);
        s.ingest(&data(1, 1, 8, b"IJKL"), c);
        s.ingest(&reqack(1, 8, &[0; 128]), c);
        assert_eq!(reply(&sender), ok(1));
        s.ledger().end_quiet = Duration::ZERO;
        end(&s, &sender, 2);
        assert_eq!(s.complete_len(), Some(12));
        s.finish(12).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"ABCDEFGHIJKL");
        assert!(!s.has_failed());
    }

    #[test]
    fn the_end_marker_waits_until_the_sender_sends_nothing_else() {
        let c = WorkerCounters::default();
        let mut l = Ledger::new();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // Slice 0 (one block of 4) complete and answered OK.
        assert_eq!(l.locate(0, 4, 4, at(0), &c).unwrap(), Some(0));
        l.open[0].mark(0);
        l.retire(4);
        l.acked = Some(0);
        assert!(!l.end_marker(1, 4, at(0)).unwrap());
        assert!(!l.end_marker(1, 4, at(900)).unwrap());
        // A REQACK of slice 0 (the sender still waits for other receivers)
        // starts the wait again.
        assert_eq!(l.locate(0, 4, 4, at(950), &c).unwrap(), None);
        assert!(!l.end_marker(1, 4, at(1900)).unwrap());
        assert!(l.end_marker(1, 4, at(1950)).unwrap());
        assert!(l.finished());
        assert_eq!(l.base, 4);
        assert_eq!(
            c.drops[DropReason::Inconsistent as usize].load(Ordering::Relaxed),
            0
        );
    }

    #[test]
    fn slices_seen_with_two_sizes_fail_the_transfer() {
        for late in [false, true] {
            let (s, sender, _) = stream(&format!("conflict-{late}"));
            let c = s.counters(0);
            s.ingest(&data(0, 0, 10, b"ABCD"), c);
            if late {
                // Slice 0 complete, then its REQACK with another size,
                // even one saying this receiver already answered.
                s.ingest(&data(0, 1, 10, b"EFGH"), c);
                s.ingest(&data(0, 2, 10, b"IJ"), c);
                s.ingest(&reqack(0, 10, &[0; 128]), c);
                assert_eq!(reply(&sender), ok(0));
                assert!(!s.has_failed());
                s.ingest(&reqack(0, 12, &[0xff; 128]), c);
            } else {
                s.ingest(&data(0, 1, 12, b"EFGH"), c);
            }
            let e = s.failure().expect("conflict fails the transfer");
            assert_eq!(e.code, ErrorCode::ProtocolError, "{e}");
            assert!(e.message.contains("forged"), "{e}");
        }
    }

    #[test]
    fn only_the_sender_is_a_source() {
        let (s, _sender, _) = stream("source");
        assert_eq!(s.source(), Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    }

    #[test]
    fn being_dropped_by_the_sender_fails_the_transfer() {
        let (s, _sender, _) = stream("dropped");
        s.ingest(&data(0, 0, 8, b"ABCD"), s.counters(0));
        s.ingest(&data(MAX_AHEAD, 0, 8, b"ABCD"), s.counters(0));
        assert_eq!(s.failure().unwrap().code, ErrorCode::SenderGone);
    }
}
