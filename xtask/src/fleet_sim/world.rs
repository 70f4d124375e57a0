//! One simulated session: the real sender state machines
//! (`xdpcast::core::rounds`) and N real receiver state machines
//! (`xdpcast::core::gaps`) exchanging real wire packets (requests,
//! confirmations, reports) over a simulated network, in virtual time.
//!
//! What is modelled and what is not: data blocks and repair symbols are
//! tokens (a group decodes once it holds as many blocks and symbols as it
//! has blocks; RaptorQ needs one or two more in about 1 % of decodes);
//! every loss is on the way to the receivers (the back-channel is
//! lossless, as in the netns tests, whose loss is injected in each
//! receiver's XDP program); the sender is paced at `rate` packets a
//! second, one-way latency is constant.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use xdpcast::core::fallback::HttpRepair;
use xdpcast::core::gaps::{self, Confirmed, Heard, Holdings, Requester};
use xdpcast::core::rounds::{
    FleetView, Next, Policy, Rounds, Schedule, Transmit, Window, WindowEvent,
};
use xdpcast::proto::fec;
use xdpcast::proto::wire::{self, Geometry, Packet, Report};

use super::net::{Channel, Loss, Rng};

/// Block size of the simulated image.
pub const BLOCK: u32 = 1400;
/// Most missing ranges and parity entries a receiver asks for a round
/// (as `api/session/repair.rs`).
const MAX_ENTRIES: usize = 64 * wire::MAX_NACK_RANGES;
/// The receivers' look at their requester (the control thread's tick).
const TICK: Duration = Duration::from_millis(50);
/// Progress reports (as the real receivers: about every second).
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// Copies of the control packets (end) the sender sends at once.
const CONTROL_REPEAT: usize = 3;
/// `receive --http`'s defaults: `--http-repair-percent 5`,
/// `--http-repair-few 25`.
pub(super) const HTTP_REPAIR: HttpRepair = HttpRepair {
    share: 0.05,
    few: 0.25,
};

/// One receiver's part in a scenario.
#[derive(Debug, Clone, Copy)]
pub struct RxSpec {
    /// How it loses packets.
    pub loss: Loss,
    /// Joins at this share of the first pass (0: from the start).
    pub join: f64,
    /// Leaves (stops receiving and reporting) at this share of the pass.
    pub leave: Option<f64>,
    /// Fetches over HTTP (`receive --http`) when it misses at least 5 %
    /// after the passes and few receivers do, instead of asking the sender.
    pub http: bool,
    /// Not there at all (the run a scenario's others are compared with).
    pub absent: bool,
}

/// The session's settings.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    /// Image blocks.
    pub blocks: u64,
    /// Blocks per parity group.
    pub group: u32,
    /// Packets a second.
    pub rate: f64,
    /// One-way latency.
    pub latency: Duration,
    /// The sender's repair window.
    pub repair_wait: Duration,
}

impl Default for Setup {
    fn default() -> Setup {
        Setup {
            // 8 MiB of 1400-byte blocks, as tests/fleet.rs's figures.
            blocks: (8u64 << 20).div_ceil(u64::from(BLOCK)),
            group: xdpcast::send::sender::PARITY_GROUP,
            // 20 Mbit/s of 1400-byte payloads, as tests/fleet.rs.
            rate: 20e6 / (8.0 * f64::from(BLOCK)),
            latency: Duration::from_micros(100),
            repair_wait: Duration::from_millis(500),
        }
    }
}

/// What one run measured.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Data packets of the passes.
    pub pass_packets: u64,
    /// Data and symbol packets of the repair rounds.
    pub repair_packets: u64,
    /// Repair rounds.
    pub rounds: u32,
    /// NACK and parity request packets the sender took.
    pub requests: u64,
    /// Per receiver: when it had every block (None: never).
    pub finished: Vec<Option<Duration>>,
    /// Receivers that fetched the rest over HTTP.
    pub http: usize,
}

#[derive(Debug, Clone)]
enum Pkt {
    Data(u64),
    Symbol(u64),
    End {
        pass: u32,
        gsize_log2: u32,
        lacking: Option<wire::Lacking>,
    },
    Confirm(Vec<u8>),
}

#[derive(Debug)]
enum Ev {
    /// The sender's next step.
    Sender,
    /// A multicast packet reaches the receivers.
    Multicast(Pkt),
    /// A datagram reaches the sender's repair socket.
    ToSender(usize, Vec<u8>),
    /// A "too slow" verdict reaches a receiver.
    Verdict(usize),
    /// A receiver's control thread looks at its requester.
    Tick(usize),
    /// A receiver reports its progress.
    Report(usize),
}

/// Every simulated receiver's token (each has an address of its own, so
/// the sender's rows stay apart).
const SIM_TOKEN: u64 = 1;

struct Rx {
    spec: RxSpec,
    channel: Channel,
    have: Vec<bool>,
    held: Vec<u32>,
    symbols: Vec<u32>,
    done: u64,
    confirmed: Confirmed,
    requester: Requester,
    heard: Heard,
    /// What the sender's last end said of the receivers lacking much.
    lacking: Option<wire::Lacking>,
    round: u64,
    requests: u32,
    finished: Option<Duration>,
    gone: bool,
    http: bool,
    ticking: bool,
    addr: SocketAddr,
    name: String,
}

struct View<'a> {
    rx: &'a Rx,
    g: &'a Geometry,
    group: u32,
}

impl Holdings for View<'_> {
    fn missing(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (k, &h) in self.rx.have.iter().enumerate() {
            let k = k as u64;
            if h {
                continue;
            }
            match out.last_mut() {
                Some((_, e)) if *e == k => *e += 1,
                _ => out.push((k, k + 1)),
            }
        }
        let _ = (self.g, self.group);
        out
    }
    fn held(&self, first: u64, end: u64) -> u64 {
        self.rx.have[first as usize..end as usize]
            .iter()
            .filter(|&&h| h)
            .count() as u64
    }
    fn symbols(&self, group: u64) -> u64 {
        u64::from(self.rx.symbols[group as usize])
    }
}

impl Rx {
    fn group_of(&self, block: u64, group: u32) -> usize {
        (block / u64::from(group)) as usize
    }

    /// Take a block or symbol; true when the image just became complete.
    fn take(&mut self, pkt: &Pkt, g: &Geometry, group: u32) -> bool {
        let gi = match *pkt {
            Pkt::Data(k) => {
                if self.have[k as usize] {
                    return false;
                }
                self.have[k as usize] = true;
                self.done += 1;
                let gi = self.group_of(k, group);
                self.held[gi] += 1;
                gi
            }
            Pkt::Symbol(gr) => {
                let (first, end) = fec::group_blocks(g, group, gr);
                if u64::from(self.held[gr as usize]) == end - first {
                    return false;
                }
                self.symbols[gr as usize] += 1;
                gr as usize
            }
            _ => return false,
        };
        let (first, end) = fec::group_blocks(g, group, gi as u64);
        let len = (end - first) as u32;
        if self.held[gi] < len && self.held[gi] + self.symbols[gi] >= len {
            for k in first..end {
                if !self.have[k as usize] {
                    self.have[k as usize] = true;
                    self.done += 1;
                }
            }
            self.held[gi] = len;
            self.symbols[gi] = 0;
        }
        self.done == g.block_count
    }

    fn report(&self, g: &Geometry, session: u32) -> Vec<u8> {
        let r = Report {
            blocks_done: self.done,
            requests: self.requests,
            state: if self.finished.is_some() { 2 } else { 1 },
            error: 0,
            flags: u8::from(self.http) * wire::REPORT_HTTP,
            name: Report::name_field(&self.name),
        };
        wire::encode_progress(session, g, SIM_TOKEN, &r)
    }
}

enum Phase {
    Pass(u64),
    Window(Window),
    Sending,
    Over,
}

struct Sim {
    setup: Setup,
    g: Geometry,
    session: u32,
    t0: Instant,
    now: Duration,
    seq: u64,
    queue: BinaryHeap<Reverse<(Duration, u64, usize)>>,
    events: Vec<Option<Ev>>,
    free: Vec<usize>,
    rxs: Vec<Rx>,
    rounds: Rounds,
    schedule: Schedule,
    phase: Phase,
    pass: u32,
    /// Packets of the round being sent, in order.
    outbox: std::collections::VecDeque<Pkt>,
    out: Outcome,
    rng: Rng,
    pass_time: Duration,
}

impl Sim {
    fn at(&mut self, after: Duration, ev: Ev) {
        let slot = match self.free.pop() {
            Some(s) => {
                self.events[s] = Some(ev);
                s
            }
            None => {
                self.events.push(Some(ev));
                self.events.len() - 1
            }
        };
        self.seq += 1;
        self.queue.push(Reverse((self.now + after, self.seq, slot)));
    }

    fn instant(&self) -> Instant {
        self.t0 + self.now
    }

    fn gsize_log2(&mut self) -> u32 {
        let known = self.rounds.fleet(self.t0 + self.now).known;
        wire::gsize_flags(known) >> wire::GSIZE_SHIFT
    }

    fn multicast(&mut self, pkt: Pkt) {
        let l = self.setup.latency;
        self.at(l, Ev::Multicast(pkt));
    }

    fn end(&mut self) {
        let gsize_log2 = self.gsize_log2();
        // As the real sender's end flags say it, read as a receiver does.
        let f = self.rounds.fleet(self.t0 + self.now);
        let lacking = wire::Control {
            flags: wire::fleet_flags(f.lacking, f.hearing),
            ..wire::Control::new([0; 32], 0, 1)
        }
        .lacking();
        for _ in 0..CONTROL_REPEAT {
            self.multicast(Pkt::End {
                pass: self.pass,
                gsize_log2,
                lacking,
            });
        }
    }

    fn gap(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.setup.rate)
    }

    /// The sender's next step.
    fn sender(&mut self) {
        let now = self.instant();
        match std::mem::replace(&mut self.phase, Phase::Over) {
            Phase::Pass(k) if k < self.g.block_count => {
                self.out.pass_packets += 1;
                self.multicast(Pkt::Data(k));
                self.phase = Phase::Pass(k + 1);
                let gap = self.gap();
                self.at(gap, Ev::Sender);
            }
            Phase::Pass(_) => {
                self.end();
                self.open_window(now);
            }
            Phase::Sending => match self.outbox.pop_front() {
                Some(p) => {
                    self.out.repair_packets += 1;
                    self.multicast(p);
                    self.phase = Phase::Sending;
                    let gap = self.gap();
                    self.at(gap, Ev::Sender);
                }
                None => {
                    self.end();
                    self.open_window(now);
                }
            },
            Phase::Window(mut w) => match w.poll(now) {
                WindowEvent::Wait => {
                    let next = w.poll_timeout() - now;
                    self.phase = Phase::Window(w);
                    self.at(next, Ev::Sender);
                }
                WindowEvent::Remind => {
                    self.end();
                    self.phase = Phase::Window(w);
                    self.at(Duration::ZERO, Ev::Sender);
                }
                WindowEvent::Close => self.close(now),
            },
            Phase::Over => {}
        }
    }

    fn open_window(&mut self, now: Instant) {
        if !self.schedule.open() {
            return self.stop();
        }
        self.rounds
            .open_window(u64::from(self.pass), self.schedule.rounds());
        let w = Window::new(now, self.setup.repair_wait);
        let next = w.poll_timeout() - now;
        self.phase = Phase::Window(w);
        self.at(next, Ev::Sender);
    }

    fn close(&mut self, now: Instant) {
        let plan = self.rounds.take();
        let f = self.rounds.fleet(now);
        let view = FleetView {
            settled: f.known >= self.rxs.len() as u64 && f.receiving == 0,
            progressing: self.rounds.progressing(Duration::from_millis(2500), now),
        };
        match self.schedule.close(plan, view) {
            Next::Repair(plan) => {
                if std::env::var_os("SIMDBG").is_some() {
                    eprintln!("round at {:?}: {plan:?}", self.now);
                }
                self.pass += 1;
                for &(a, b) in &plan.ranges {
                    self.outbox.extend((a..b).map(Pkt::Data));
                }
                for (group, _, n) in plan.symbol_runs() {
                    self.outbox.extend((0..n).map(|_| Pkt::Symbol(group)));
                }
                self.phase = Phase::Sending;
                self.at(Duration::ZERO, Ev::Sender);
            }
            Next::Wait => self.open_window(now),
            Next::Stop => self.stop(),
        }
    }

    fn stop(&mut self) {
        self.phase = Phase::Over;
        self.out.rounds = self.schedule.rounds();
    }

    fn alive(&self, i: usize) -> bool {
        let rx = &self.rxs[i];
        let share = self.now.as_secs_f64() / self.pass_time.as_secs_f64();
        !rx.gone
            && !rx.spec.absent
            && share >= rx.spec.join
            && rx.spec.leave.is_none_or(|l| share < l)
    }

    fn deliver(&mut self, pkt: &Pkt) {
        let (g, group) = (self.g, self.setup.group);
        for i in 0..self.rxs.len() {
            if !self.alive(i) || self.rxs[i].channel.lost() {
                continue;
            }
            let now = self.now;
            let rx = &mut self.rxs[i];
            match pkt {
                Pkt::Data(_) | Pkt::Symbol(_) => {
                    if rx.take(pkt, &g, group) {
                        rx.finished = Some(now);
                        let r = rx.report(&g, self.session);
                        let l = self.setup.latency;
                        for _ in 0..3 {
                            self.at(l, Ev::ToSender(i, r.clone()));
                        }
                    }
                }
                Pkt::End {
                    pass,
                    gsize_log2,
                    lacking,
                } => {
                    rx.confirmed.end_seen(u64::from(*pass), self.t0 + now);
                    rx.heard.passes_seen = rx.heard.passes_seen.max(u64::from(*pass) + 1);
                    rx.heard.gsize_log2 = *gsize_log2;
                    rx.lacking = *lacking;
                    rx.round = u64::from(*pass);
                    if rx.finished.is_none() && !rx.ticking {
                        rx.ticking = true;
                        self.at(Duration::ZERO, Ev::Tick(i));
                    }
                }
                Pkt::Confirm(bytes) => {
                    if let Ok(Packet::Confirm {
                        round,
                        group_size,
                        counts,
                        ..
                    }) = wire::parse(bytes)
                    {
                        rx.confirmed.confirm(round, group_size, counts);
                    }
                }
            }
        }
    }

    fn tick(&mut self, i: usize) {
        // After the sender's final end a real receiver fails `incomplete`.
        let over = matches!(self.phase, Phase::Over);
        if over || !self.alive(i) || self.rxs[i].finished.is_some() {
            self.rxs[i].ticking = false;
            return;
        }
        let now = self.instant();
        let (g, group, session) = (self.g, self.setup.group, self.session);
        let rx = &mut self.rxs[i];
        // `receive --http`: a receiver missing at least 5 % after the
        // passes fetches the rest from the web server instead of asking,
        // when the sender's last end says few receivers lack much.
        let missing = g.block_count - rx.done;
        if rx.spec.http
            && rx.heard.passes_seen >= rx.heard.passes
            && HTTP_REPAIR.prefers_http(missing, g.block_count, rx.lacking)
        {
            rx.http = true;
            rx.gone = true;
            self.out.http += 1;
            return;
        }
        let mut pkts = Vec::new();
        if rx.requester.poll(now, &rx.heard, rx.done) {
            let view = View { rx, g: &g, group };
            let n = gaps::needs(&view, &g, group, rx.round, &rx.confirmed, MAX_ENTRIES);
            pkts = wire::encode_nacks(session, &g, SIM_TOKEN, &n.ranges);
            pkts.extend(wire::encode_parity_requests(
                session, &g, SIM_TOKEN, group, &n.parity,
            ));
        }
        let next = rx
            .requester
            .poll_timeout()
            .map_or(TICK, |d| d.saturating_duration_since(now).min(TICK));
        rx.requests += pkts.len() as u32;
        let l = self.setup.latency;
        for p in pkts {
            self.at(l, Ev::ToSender(i, p));
        }
        self.at(next, Ev::Tick(i));
    }

    fn at_sender(&mut self, i: usize, bytes: &[u8]) {
        if matches!(self.phase, Phase::Over) {
            return;
        }
        let now = self.instant();
        let from = self.rxs[i].addr;
        for t in self.rounds.handle(bytes, from, now) {
            match t {
                Transmit::Group(p) => self.multicast(Pkt::Confirm(p)),
                Transmit::To(to, _) => {
                    if let Some(j) = self.rxs.iter().position(|r| r.addr == to) {
                        let l = self.setup.latency;
                        self.at(l, Ev::Verdict(j));
                    }
                }
            }
        }
    }

    fn report(&mut self, i: usize) {
        if !self.alive(i) || matches!(self.phase, Phase::Over) {
            return;
        }
        let r = self.rxs[i].report(&self.g, self.session);
        let l = self.setup.latency;
        self.at(l, Ev::ToSender(i, r));
        if self.rxs[i].finished.is_none() {
            let jitter = Duration::from_millis(self.rng.next() % 200);
            self.at(
                REPORT_EVERY - Duration::from_millis(100) + jitter,
                Ev::Report(i),
            );
        }
    }
}

/// Run one session with `rxs` receivers, drawn from `seed`.
pub fn run(setup: Setup, rxs: &[RxSpec], seed: u64) -> Outcome {
    let g = Geometry::new(setup.blocks * u64::from(BLOCK), BLOCK);
    let groups = fec::group_count(&g, setup.group) as usize;
    let policy = Policy {
        session: 7,
        geometry: g,
        group_size: setup.group,
        vanish_after: Duration::from_secs(5),
        max_behind: 1.0,
        signer: None,
    };
    let pass_time = Duration::from_secs_f64(g.block_count as f64 / setup.rate);
    let mut sim = Sim {
        setup,
        g,
        session: 7,
        t0: Instant::now(),
        now: Duration::ZERO,
        seq: 0,
        queue: BinaryHeap::new(),
        events: Vec::new(),
        free: Vec::new(),
        rxs: rxs
            .iter()
            .enumerate()
            .map(|(i, &spec)| Rx {
                spec,
                channel: Channel::new(spec.loss, Rng::new(seed, 2 * i as u64 + 1)),
                have: vec![false; g.block_count as usize],
                held: vec![0; groups],
                symbols: vec![0; groups],
                done: 0,
                confirmed: Confirmed::default(),
                requester: Requester::with_seed(Rng::new(seed, 2 * i as u64 + 2).next()),
                heard: Heard {
                    passes: 1,
                    ..Heard::default()
                },
                lacking: None,
                round: 0,
                requests: 0,
                finished: None,
                gone: false,
                http: false,
                ticking: false,
                addr: SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::new(10, 1, (i >> 8) as u8, i as u8)),
                    9000,
                ),
                name: format!("rx{i}"),
            })
            .collect(),
        rounds: Rounds::new(policy),
        schedule: Schedule::new(2.0, g.block_count, 50),
        phase: Phase::Pass(0),
        pass: 0,
        outbox: Default::default(),
        out: Outcome::default(),
        rng: Rng::new(seed, 0),
        pass_time,
    };
    for i in (0..rxs.len()).filter(|&i| !rxs[i].absent) {
        // The first report when the receiver starts (within a second).
        let start = pass_time.mul_f64(rxs[i].join);
        let first = start + Duration::from_millis(sim.rng.next() % 1000);
        sim.at(first, Ev::Report(i));
    }
    sim.at(Duration::ZERO, Ev::Sender);
    while let Some(Reverse((t, _, slot))) = sim.queue.pop() {
        sim.now = t;
        let Some(ev) = sim.events[slot].take() else {
            continue;
        };
        sim.free.push(slot);
        match ev {
            Ev::Sender => sim.sender(),
            Ev::Multicast(p) => sim.deliver(&p),
            Ev::ToSender(i, b) => sim.at_sender(i, &b),
            Ev::Verdict(i) => sim.rxs[i].gone = true,
            Ev::Tick(i) => sim.tick(i),
            Ev::Report(i) => sim.report(i),
        }
    }
    sim.out.requests = {
        let i = sim.rounds.inbound();
        i.nacks + i.parity_requests
    };
    sim.out.finished = sim.rxs.iter().map(|r| r.finished).collect();
    sim.out
}
