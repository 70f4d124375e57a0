//! Control packets anyone on the segment can send, forged by a third host
//! with the sender's and the receiver's addresses (a raw socket), against
//! the real binaries in network namespaces. Each test backs rows of the
//! table in docs/security.md ("Who can send what"): with `--trust` the
//! forgeries delay a session at most; without it, none of them ends or
//! fails a session on its own.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::attacker::*;
use common::*;
use xdpcast::proto::wire::{self, ConfirmHeader, Control, Kind, Report};
use xdpcast::status::page::State;
use xdpcast::ErrorCode;

const MIB: usize = 1 << 20;
const GROUP: &str = "239.6.7.9:5000";
/// The receiver's session name (its progress reports carry it).
const NAME: &str = "victim";
/// Ephemeral ports a receiver's back-channel socket may have (Linux's
/// default `ip_local_port_range`).
const EPHEMERAL: std::ops::RangeInclusive<u16> = 32768..=60999;

fn v4(addr: &str) -> Ipv4Addr {
    addr.parse().unwrap()
}

/// Confirmations for every FEC group of the session, each "covered" with
/// the whole group, for repair rounds 0 to 64 (the receiver would never
/// ask if it believed them).
fn covering_confirmations(h: &Heard) -> Vec<Vec<u8>> {
    let gs = h.control.fec_group;
    if gs == 0 {
        return Vec::new();
    }
    let groups: Vec<(u64, u32)> = (0..h.geometry.block_count.div_ceil(u64::from(gs)))
        .map(|g| (g, gs))
        .collect();
    (0..=64)
        .flat_map(|round| {
            let c = ConfirmHeader {
                round,
                group_size: gs,
                receivers: 1,
                flags: 0,
            };
            groups
                .chunks(wire::MAX_PARITY_ENTRIES)
                .map(move |e| wire::encode_confirm(h.session, &h.geometry, &c, e))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// What the attacker multicasts as the sender, again and again: covering
/// confirmations, an end with FINAL and the real digest, an announce that
/// moves the repair address.
fn multicast_forgeries(h: &Heard) -> Vec<Vec<u8>> {
    let (s, g) = (h.session, &h.geometry);
    let fin = Control {
        flags: h.control.flags | wire::FLAG_FINAL,
        ..h.control
    };
    let moved = Control {
        repair_port: 9,
        repair_addr: Ipv4Addr::new(10, 66, 6, 6).to_ipv6_mapped(),
        ..h.control
    };
    let mut out = covering_confirmations(h);
    out.push(wire::encode_control(Kind::End, s, g, &fin));
    out.push(wire::encode_control(Kind::Announce, s, g, &moved));
    out
}

/// Zero runs over the whole image, sent once, unsigned (in an unsigned
/// session they are forged blocks, which the read-back catches; a signed
/// session applies no run whose signature does not verify and counts it
/// as unauthenticated: docs/security.md).
fn forged_zero_runs(h: &Heard) -> Vec<Vec<u8>> {
    let all = h.geometry.block_count.min(u64::from(u32::MAX)) as u32;
    wire::encode_zeros(h.session, &h.geometry, &[(0, all)])
}

/// A "too slow" verdict to every ephemeral port of `rx`, from the sender's
/// repair address and port: unsigned, and in the signed form with a
/// signature of the attacker's making. Port `first` first: the receiver's
/// back-channel port as the test sees it (an attacker who guessed right at
/// once), so that the verdicts reach the receiver while it runs however
/// slowly the rest of the spray goes.
fn spray_verdicts(spoof: &Spoofer, h: &Heard, repair: SocketAddrV4, rx: Ipv4Addr, first: u16) {
    let c = ConfirmHeader {
        round: 0,
        group_size: h.control.fec_group.max(1),
        receivers: 0,
        flags: wire::CONFIRM_TOO_SLOW,
    };
    let plain = wire::encode_confirm(h.session, &h.geometry, &c, &[]);
    for port in std::iter::once(first).chain(EPHEMERAL.filter(|&p| p != first)) {
        let mut proof = vec![0xA7; wire::VERDICT_LEN];
        proof[..2].copy_from_slice(&port.to_be_bytes());
        let signed = wire::encode_verdict(h.session, &h.geometry, &c, &proof);
        let to = SocketAddrV4::new(rx, port);
        spoof.send(repair, to, &plain);
        spoof.send(repair, to, &signed);
    }
}

/// The LAN: sender, receiver, attacker.
struct Scene {
    lan: Lan,
    dir: TempDir,
    src: std::path::PathBuf,
    dst: std::path::PathBuf,
}

impl Scene {
    fn new(prefix: &str) -> Scene {
        let lan = Lan::new(3);
        let dir = TempDir::new(prefix);
        let (src, dst) = (dir.join("src.img"), dir.join("dst.img"));
        make_image(&src, 8 * MIB, 23);
        Scene { lan, dir, src, dst }
    }

    fn receiver(&self, extra: &[&str]) -> std::process::Child {
        let host = &self.lan.hosts[1];
        let mut args = vec![
            "--iface",
            &host.iface,
            "--out",
            self.dst.to_str().unwrap(),
            "--mode",
            "xdp",
            "--idle-timeout",
            "3",
        ];
        args.extend_from_slice(extra);
        start_receiver(xdpcast(&host.ns), &self.dir.0, NAME, GROUP, &args)
    }

    /// The attacker on host 2: once it hears an announce, it forges every
    /// 50 ms until `stop` (at least once): [`multicast_forgeries`] from the
    /// sender's address and "finished" reports from the receiver's address
    /// and name to the repair address; beside that, from the start,
    /// [`spray_verdicts`]: three sprays a second apart in a signed session,
    /// one (a burst of forged packets) in an unsigned one. The sprays have
    /// a thread of their own: 57,000 packets take seconds on a loaded
    /// machine, and the forgeries do not wait for them. Returns once it
    /// listens.
    fn attack(&self, stop: Arc<AtomicBool>, signed: bool) -> std::thread::JoinHandle<()> {
        let hosts = &self.lan.hosts;
        let (tx_ip, rx_ip, me) = (v4(&hosts[0].addr), v4(&hosts[1].addr), v4(&hosts[2].addr));
        let iface = hosts[2].iface.clone();
        let rx_ns = hosts[1].ns.name.clone();
        let (joined, listening) = std::sync::mpsc::channel();
        let t = spawn_in_netns(&hosts[2].ns, move || {
            let h = hear_announce(GROUP, &iface, || joined.send(()).unwrap());
            let repair = match h.control.repair_to() {
                Some(std::net::SocketAddr::V4(a)) => a,
                other => panic!("repair address {other:?}"),
            };
            let spoof = Spoofer::new(me);
            let group: SocketAddrV4 = GROUP.parse().unwrap();
            let as_sender = SocketAddrV4::new(tx_ip, 40_000);
            let as_receiver = SocketAddrV4::new(rx_ip, 40_001);
            let forged = multicast_forgeries(&h);
            if signed {
                for p in forged_zero_runs(&h) {
                    spoof.send(as_sender, group, &p);
                }
            }
            let sprays = if signed { 3 } else { 1 };
            // A thread made here is in this one's namespace.
            let sprayer = std::thread::spawn({
                let stop = stop.clone();
                move || {
                    let spoof = Spoofer::new(me);
                    // Bound once the receiver has taken the announce.
                    let port = wait_for(Duration::from_secs(60), "a back-channel socket", || {
                        if stop.load(Ordering::Relaxed) {
                            return Some(None);
                        }
                        let ports = udp_ports(&rx_ns);
                        ports.into_iter().find(|p| EPHEMERAL.contains(p)).map(Some)
                    });
                    let Some(port) = port else {
                        return;
                    };
                    for n in 0..sprays {
                        if n > 0 {
                            std::thread::sleep(Duration::from_secs(1));
                        }
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        spray_verdicts(&spoof, &h, repair, rx_ip, port);
                    }
                }
            });
            // The receiver's token is not known to the attacker.
            let finished = wire::encode_progress(
                h.session,
                &h.geometry,
                0x5eed,
                &Report {
                    blocks_done: h.geometry.block_count,
                    requests: 0,
                    state: State::Success as u8,
                    error: 0,
                    flags: 0,
                    name: Report::name_field(NAME),
                },
            );
            loop {
                for p in &forged {
                    spoof.send(as_sender, group, p);
                }
                for _ in 0..4 {
                    spoof.send(as_receiver, repair, &finished);
                }
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            sprayer.join().unwrap();
        });
        listening.recv().unwrap();
        t
    }

    fn send(&self, extra: &[&str]) -> std::process::Child {
        let mut args = vec!["--rate", "200M", "--loss", "0.2", "--block-size", "1400"];
        args.extend_from_slice(extra);
        start_sender(
            &self.lan.hosts[0].ns,
            &self.lan.hosts[0].iface,
            GROUP,
            &self.src,
            &args,
        )
    }

    /// Wait for the sender, then the receiver; stop the attacker. The
    /// receiver's page.
    fn finish(
        &self,
        tx: std::process::Child,
        rx: std::process::Child,
        stop: &AtomicBool,
        attacker: std::thread::JoinHandle<()>,
    ) -> xdpcast::Snapshot {
        let tx_out = wait_output(tx, Duration::from_secs(120), "sender");
        let rx_out = wait_output(rx, Duration::from_secs(60), "receiver");
        stop.store(true, Ordering::Relaxed);
        // That the forgeries reached the receiver during the session, its
        // page's drop counters say (each test asserts them), not how many
        // rounds the attacker managed (a matter of time).
        attacker.join().unwrap();
        ok(&tx_out, "sender");
        ok(&rx_out, "receiver");
        assert_eq!(sha256_hex(&self.src), sha256_hex(&self.dst));
        let s = read_page(&self.dir.0, NAME);
        assert_eq!((s.state, s.error), (State::Success, ErrorCode::None));
        s
    }
}

/// With `--trust`: one forged packet before the real sender does not turn
/// the start timeout into the idle timeout; then, through the whole
/// session with 20 % loss, forged "too slow" verdicts to every port,
/// confirmations that cover every group, FINAL ends, repair redirects,
/// zero runs over the whole image and "finished" reports in the
/// receiver's name change nothing but counters.
#[test]
fn forged_control_packets_only_delay_a_signed_session() {
    if !netns_allowed() {
        return;
    }
    let scene = Scene::new("xdpc-attack-signed");
    let key = keygen(&scene.dir, "site");
    let rx = scene.receiver(&["--trust", &pub_of(&key), "--start-timeout", "60"]);
    // A packet of a forged session before anything else; then longer than
    // --idle-timeout without the sender.
    let g = wire::Geometry::new(8 * MIB as u64, 1400);
    let early = wire::encode_data(0x0bad, &g, 0, &[0xEE; 1400]);
    let attacker = &scene.lan.hosts[2];
    inject(&attacker.ns, &attacker.iface, GROUP, None, vec![early]);
    std::thread::sleep(Duration::from_secs(5));
    let s = read_page(&scene.dir.0, NAME);
    assert_eq!(s.state, State::InProgress, "{}", s.message);
    assert_eq!(s.drops_for(wire::DropReason::Unauthenticated), 1);

    let stop = Arc::new(AtomicBool::new(false));
    let attack = scene.attack(stop.clone(), true);
    let tx = scene.send(&["--sign", key.to_str().unwrap()]);
    let s = scene.finish(tx, rx, &stop, attack);
    assert!(s.drops_for(wire::DropReason::Unauthenticated) > 1, "{s:?}");
    assert!(s.nacks_sent > 0, "repair was asked for: {s:?}");
}

/// Without `--trust` (but with `--expect-sha256`): forged FINAL ends with
/// the real digest, announces that move the repair address every 50 ms,
/// covering confirmations, "finished" reports and one burst of "too slow"
/// verdicts do not end or fail the session.
#[test]
fn forged_control_packets_do_not_end_an_unsigned_session() {
    if !netns_allowed() {
        return;
    }
    let scene = Scene::new("xdpc-attack-plain");
    let digest = sha256_hex(&scene.src);
    let rx = scene.receiver(&["--expect-sha256", &digest]);
    let stop = Arc::new(AtomicBool::new(false));
    let attack = scene.attack(stop.clone(), false);
    let tx = scene.send(&[]);
    let s = scene.finish(tx, rx, &stop, attack);
    // The redirects disagree with the corroborated announce: counted.
    assert!(s.drops_for(wire::DropReason::Inconsistent) > 0, "{s:?}");
    assert!(s.nacks_sent > 0, "repair was asked for: {s:?}");
}
