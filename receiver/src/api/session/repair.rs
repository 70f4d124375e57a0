//! The receiver's back-channel to the sender: the [`Link`] (one unicast
//! socket for everything it sends the sender and for the sender's
//! verdict), the [`Repairer`] that asks for repair, the [`Reporter`] that
//! reports progress, and [`take_verdict`], which takes the sender's "too
//! slow" verdict or leaves it.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::TICK;
use crate::core::gaps::{Heard, Requester};
use crate::error::{Error, ErrorCode};
use crate::net::socket;
use crate::proto::wire::{self, Packet, Report};
use crate::receive::transfer::Transfer;
use crate::receive::workers::Sink;
use crate::rng::XorShift;
use crate::status::page::State;

/// How often a receiver reports its progress to the sender.
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// Copies of the final report (it is not repeated later).
const FINAL_REPORTS: usize = 3;
/// Most missing ranges one receiver reports per round (64 packets).
const NACK_MAX_RANGES: usize = 64 * crate::proto::wire::MAX_NACK_RANGES;
/// An unsigned session takes the sender's "too slow" verdict only when it
/// has come in answer to this many of the receiver's progress reports
/// (read between different pairs of reports: the sender answers every
/// report of a receiver it judged, about once a second), over at least
/// [`VERDICT_SPAN`]. One forged packet, or a burst of two, ends nothing
/// however a loaded machine spreads it out in time (under a CPU hog a
/// burst of two once came more than the span apart).
const VERDICT_REPORTS: u32 = 3;
/// See [`VERDICT_REPORTS`].
const VERDICT_SPAN: Duration = Duration::from_millis(500);

/// The receiver's end of the back-channel: one unicast socket, bound once
/// the sender's repair address is known, for NACKs, parity requests and
/// progress reports (so the sender sees them all come from one address),
/// and for the sender's unicast verdict.
#[derive(Debug, Default)]
pub(super) struct Link {
    pub(super) sock: OnceLock<(UdpSocket, SocketAddr)>,
    /// NACK and parity request packets sent.
    pub(super) requests: AtomicU64,
    /// Requests not sent because the sender had confirmed enough for the
    /// round (suppressed).
    pub(super) suppressed: AtomicU64,
    /// Index of the receiving interface: the scope of a link-local repair
    /// address.
    pub(super) scope: u32,
    /// The session name as reports carry it: a signed verdict names it.
    pub(super) name: [u8; wire::REPORT_NAME_LEN],
    /// This receiver's random per-session token, in every report and
    /// request: the sender keys its row by address, port and token, so
    /// reports forged in this receiver's name (same address, port and
    /// name) make a row of their own and cannot change this one.
    pub(super) token: u64,
    /// Progress reports sent while the session runs: a verdict read
    /// after the n-th answers it.
    pub(super) reports: AtomicU64,
    /// Unsigned session: when the first "too slow" verdict came, how many
    /// reports verdicts answered, and the last one answered.
    pub(super) verdict_since: Mutex<Option<(Instant, u32, u64)>>,
    /// Verdicts dropped: not from the repair address, not signed by the
    /// session's key, or not for this receiver.
    pub(super) bad_verdicts: AtomicU64,
}

impl Link {
    /// The socket and the sender's repair address, once announced.
    fn get(&self, t: &Transfer) -> std::io::Result<Option<&(UdpSocket, SocketAddr)>> {
        if let Some(s) = self.sock.get() {
            return Ok(Some(s));
        }
        let Some(to) = t.last_control().and_then(|c| c.repair_to()) else {
            return Ok(None);
        };
        let to = socket::scoped(to, self.scope);
        let any: SocketAddr = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
            .parse()
            .expect("literal address");
        let sock = UdpSocket::bind(any)?;
        sock.set_nonblocking(true)?;
        Ok(Some(self.sock.get_or_init(|| (sock, to))))
    }

    fn send(&self, pkt: &[u8], t: &Transfer) -> std::io::Result<()> {
        if let Some((sock, to)) = self.get(t)? {
            sock.send_to(pkt, to)?;
        }
        Ok(())
    }
}

/// Sends progress reports from its own thread (so they keep coming while
/// the control thread verifies the image), takes the sender's "too slow"
/// verdict, and sends the final state when the session ends.
pub(super) struct Reporter {
    stop: Arc<AtomicBool>,
    last: Arc<Mutex<(State, ErrorCode)>>,
    handle: Option<JoinHandle<()>>,
}

/// A progress report's flags: some bytes came from the web server, and
/// whether all did (none by multicast: a receiver that cannot hear the
/// group, which the sender neither shows nor counts as served by its
/// repair rounds).
fn via_flags(t: &Transfer, http_slot: Option<usize>) -> u8 {
    let Some(slot) = http_slot else {
        return 0;
    };
    if t.counters(slot).bytes.load(Ordering::Relaxed) == 0 {
        return 0;
    }
    let multicast: u64 = t
        .all_counters()
        .enumerate()
        .filter(|&(i, _)| i != slot)
        .map(|(_, c)| c.bytes.load(Ordering::Relaxed))
        .sum();
    if multicast == 0 {
        wire::REPORT_HTTP | wire::REPORT_HTTP_ONLY
    } else {
        wire::REPORT_HTTP
    }
}

impl Reporter {
    pub(super) fn start(t: Arc<Transfer>, link: Arc<Link>, http_slot: Option<usize>) -> Reporter {
        let stop = Arc::new(AtomicBool::new(false));
        let last = Arc::new(Mutex::new((State::InProgress, ErrorCode::None)));
        let (flag, fin) = (stop.clone(), last.clone());
        let name = link.name;
        let handle = std::thread::Builder::new()
            .name("xdpcast-report".into())
            .spawn(move || {
                let mut rng = XorShift::from_entropy();
                let mut next = Instant::now();
                // Whether a report went out: none before the session's
                // image is known.
                let report = |state: State, error: ErrorCode| {
                    let Some(img) = t.image() else {
                        return Ok(false);
                    };
                    let r = Report {
                        blocks_done: t.blocks_done(),
                        requests: link.requests.load(Ordering::Relaxed) as u32,
                        state: state as u8,
                        error: error as u8,
                        flags: via_flags(&t, http_slot),
                        name,
                    };
                    link.send(
                        &wire::encode_progress(img.session, &img.geometry, link.token, &r),
                        &t,
                    )
                    .map(|()| true)
                };
                let mut passes = 0;
                while !flag.load(Ordering::Acquire) {
                    std::thread::sleep(TICK);
                    take_verdict(&t, &link, false);
                    // A pass or round ended: report at once, so the
                    // sender's next end counts the receivers lacking much
                    // by where they stand now, not a period ago.
                    if t.passes_seen() != passes {
                        passes = t.passes_seen();
                        next = Instant::now();
                    }
                    if Instant::now() >= next {
                        match report(State::InProgress, ErrorCode::None) {
                            // The first report goes out at the first tick
                            // after the session is heard (a sender waiting
                            // for --min-receivers starts then), not a
                            // period after the receiver started.
                            Ok(false) => continue,
                            Ok(true) => {
                                link.reports.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => log::debug!("progress report: {e}"),
                        }
                        // 75-125% of the period, so reports do not bunch up.
                        let jitter = rng.next_u64() % 500;
                        next =
                            Instant::now() + REPORT_EVERY * 3 / 4 + Duration::from_millis(jitter);
                    }
                }
                let (state, error) = *fin.lock().unwrap_or_else(|p| p.into_inner());
                for _ in 0..FINAL_REPORTS {
                    if !matches!(report(state, error), Ok(true)) {
                        break;
                    }
                }
            })
            .ok();
        Reporter { stop, last, handle }
    }

    /// Send the final state and stop.
    pub(super) fn finish(mut self, state: State, error: ErrorCode) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = (state, error);
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The sender's "too slow" verdict, unicast from its repair address, ends
/// the transfer: in a signed session only when signed with the session's
/// key for this receiver (its port and name); in an unsigned one when it
/// has answered [`VERDICT_REPORTS`] reports over [`VERDICT_SPAN`], or,
/// `at_end` (the session fails anyway), when one came at all.
fn take_verdict(t: &Transfer, link: &Link, at_end: bool) {
    let (Some((sock, to)), Some(img)) = (link.sock.get(), t.image()) else {
        return;
    };
    let port = sock.local_addr().map_or(0, |a| a.port());
    let mut buf = [0u8; 256];
    let mut verdict = None;
    while let Ok((n, from)) = sock.recv_from(&mut buf) {
        if from.ip() != to.ip() || from.port() != to.port() {
            link.bad_verdicts.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let Ok(Packet::Confirm {
            session,
            geometry,
            round,
            flags,
            proof,
            ..
        }) = wire::parse(&buf[..n])
        else {
            continue;
        };
        if session != img.session || geometry != img.geometry || flags & wire::CONFIRM_TOO_SLOW == 0
        {
            continue;
        }
        // Signed: for this receiver, and true of it (the report the
        // sender judged by may have been forged in its name).
        let trusted = match t.signed() {
            Some(s) => s
                .manifest
                .verify_verdict(&s.key, round, port, &link.name, proof)
                .is_ok_and(|ppm| {
                    let n = img.geometry.block_count;
                    let behind = n.saturating_sub(t.blocks_done());
                    behind as f64 > f64::from(ppm) / 1e6 * n as f64
                }),
            None => !t.is_signed(),
        };
        if !trusted {
            if link.bad_verdicts.fetch_add(1, Ordering::Relaxed) == 0 {
                log::warn!("a \"too slow\" verdict not signed for this receiver is ignored");
            }
            continue;
        }
        verdict = Some(if t.is_signed() {
            "signed by the session's key"
        } else {
            "repeated"
        });
    }
    let pending = {
        let mut since = link.verdict_since.lock().unwrap_or_else(|p| p.into_inner());
        if verdict == Some("repeated") {
            let report = link.reports.load(Ordering::Relaxed);
            let (_, answered, last) = since.get_or_insert((Instant::now(), 0, u64::MAX));
            if *last != report {
                *answered += 1;
                *last = report;
            }
        }
        *since
    };
    let corroborated = match (verdict, pending) {
        (Some(how), _) if t.is_signed() => Some(how),
        (Some(_), Some((at, answered, _)))
            if answered >= VERDICT_REPORTS && at.elapsed() >= VERDICT_SPAN =>
        {
            Some("repeated")
        }
        (_, Some(_)) if at_end => Some("repeated"),
        _ => None,
    };
    if let Some(how) = corroborated {
        t.fail(Error::new(
            ErrorCode::TooSlow,
            format!("the sender says this receiver is too far behind the others (send --max-behind; verdict {how})"),
        ));
    }
}

/// Why a session that ends for `otherwise`'s reason (its sender's last
/// pass or its silence, with blocks missing) failed: the sender's "too
/// slow" verdict if one came ([`take_verdict`] at the end), or a failure
/// recorded already, else `otherwise`.
pub(super) fn failure_at_end(t: &Transfer, link: &Link, otherwise: Error) -> Error {
    take_verdict(t, link, true);
    t.failure().unwrap_or(otherwise)
}

/// Asks for repair: the repair core's [`Requester`] says when (a random
/// backoff after each end of pass or round, once no full pass is left, and
/// again when a request brought nothing); then it sends parity requests
/// (per FEC group, the symbols it lacks beyond what the sender has
/// confirmed for the round) and NACKs (block ranges for groups it has
/// nothing of, or when the sender takes no parity requests).
#[derive(Default)]
pub(super) struct Repairer {
    pub(super) link: Arc<Link>,
    pub(super) requester: Requester,
}

impl Repairer {
    /// How long the control thread may sleep before a request is due.
    pub(super) fn wake_in(&self) -> Option<Duration> {
        self.requester
            .poll_timeout()
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    pub(super) fn tick(&mut self, t: &Transfer, blocks_done: u64) -> std::io::Result<()> {
        let Some(control) = t.last_control() else {
            return Ok(());
        };
        if control.repair_to().is_none() {
            return Ok(());
        }
        // An unsigned FINAL is a hint anyone can send: ask on regardless
        // (a sender that has really finished ignores it).
        let heard = Heard {
            passes_seen: t.passes_seen(),
            passes: u64::from(control.passes),
            gsize_log2: control.gsize_log2(),
            over: t.is_signed() && t.final_pass_ended(),
        };
        if !self.requester.poll(Instant::now(), &heard, blocks_done) {
            return Ok(());
        }
        let Some(img) = t.image() else {
            return Ok(());
        };
        if blocks_done >= img.geometry.block_count {
            return Ok(());
        }
        let (session, g) = (img.session, &img.geometry);
        let pkts = match control.parity_group() {
            Some(gs) => {
                let needs = t.needs(gs, u64::from(control.pass), NACK_MAX_RANGES);
                let token = self.link.token;
                let mut p = wire::encode_nacks(session, g, token, &needs.ranges);
                p.extend(wire::encode_parity_requests(
                    session,
                    g,
                    token,
                    gs,
                    &needs.parity,
                ));
                p
            }
            None => wire::encode_nacks(
                session,
                g,
                self.link.token,
                &t.missing_ranges(NACK_MAX_RANGES),
            ),
        };
        if pkts.is_empty() {
            self.link.suppressed.fetch_add(1, Ordering::Relaxed);
        }
        for pkt in pkts {
            self.link.send(&pkt, t)?;
            self.link.requests.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}
