//! A drop-in receiver for udpcast's `udp-sender` (the Debian 20120424
//! protocol, as used by Clonezilla). docs/udpcast.md describes the subset.
//!
//! The conversation with the sender (connect request, hello, disconnect)
//! runs on a kernel UDP socket bound to the receiver port (`portbase`). The
//! data blocks (CMD_DATA) and the sender's acknowledgement requests
//! (CMD_REQACK) go to the multicast data group on the same port: they take
//! the common data path ([`datapath`]: XDP steering and AF_XDP workers, or a
//! joined socket) into a [`Stream`], the [`Sink`] that writes each block into
//! the target and answers REQACKs with CMD_OK or CMD_RETRANSMIT.
//!
//! The parts: the wire format is [`crate::proto::udpcast`]; the receiver's
//! state machine (open slices, where each lands, the end of the transfer)
//! is `ledger`; the [`Sink`] is `sink`; this module finds the sender, runs
//! the control socket and the status page.
//!
//! With `udp-sender --fec`, each slice is followed by FEC blocks (CMD_FEC):
//! the slice's blocks are dealt round-robin into stripes, and each stripe
//! has its own Reed-Solomon blocks ([`crate::proto::udpcast::fec`]). As soon as a stripe
//! holds as many FEC blocks as it lacks data blocks, the lost ones are
//! rebuilt and written like received ones.
//!
//! udpcast does not announce the image size: slices follow one another
//! until an empty one ends the transfer. A slice starts where the previous
//! one ended, so blocks are written with `pwrite` at (start of the slice +
//! block × block size); a regular file grows as it is written and is cut to
//! the received length at the end. udpcast has no checksum either: the
//! SHA-256 of what was received is published on the status page.

use std::ffi::CStr;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::error::{Error, ErrorCode, Result};
use crate::net::socket::{self, Group};
pub use crate::proto::udpcast::DEFAULT_PORTBASE;
use crate::proto::udpcast::{
    connect_req, disconnect, is_transfer_data, parse, Message, CAP_ASYNC, CAP_NEW_GEN, DATA_HEADER,
    MAX_CLIENTS,
};
use crate::proto::wire::{hex, DropReason};
use crate::receive::datapath::{self, DataPath};
use crate::receive::request::SessionRequest;
use crate::receive::workers::Sink;
use crate::status::page::{
    now_ns, writer_page_path, Snapshot, State, StatusWriter, WorkerStatus, FLAG_DIGEST,
    FLAG_GEOMETRY,
};
use crate::store::stream::{self, StreamOut};
use crate::store::target::open_out;

mod flow;
mod ledger;
mod pages;
mod sink;

use sink::Out;
pub use sink::Stream;

/// Connect requests are repeated this often until the sender answers.
const CONNECT_RETRY: Duration = Duration::from_secs(1);
/// Receive timeout of the control socket: the control loop's tick.
const POLL: Duration = Duration::from_millis(50);
/// How often the status page is published.
const PUBLISH: Duration = Duration::from_millis(200);
/// Where hellos and connect requests go when the interface has no broadcast
/// address (udp-sender does the same).
const ALL_HOSTS: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 1);

const POINT_TO_POINT: &str = "udp-sender is in point-to-point mode (a single receiver): \
     the data comes by unicast through the kernel socket (the socket data path)";

/// What to receive. `session` gives the name, interface, target, data path
/// and timeouts. Its `group` is the data group to expect: with an
/// unspecified address (`0.0.0.0`) the group the sender announces is taken,
/// otherwise the sender must announce this one. Its port must be `portbase`.
#[derive(Debug, Clone)]
pub struct UdpcastRequest {
    /// Everything the xdpcast protocol also needs.
    pub session: SessionRequest,
    /// udpcast port base: this receiver uses it, the sender `portbase + 1`.
    pub portbase: u16,
    /// Where connect requests go (udp-receiver's `--mcast-rdv-address`; a
    /// multicast group is joined, a unicast address is the sender's):
    /// default the interface's broadcast address, or 224.0.0.1.
    pub rendezvous: Option<Ipv4Addr>,
    /// TTL of multicast connect requests (udp-receiver's `--ttl`; not 1:
    /// they go to 224.0.0.1 unless a rendezvous address is given).
    pub ttl: u32,
    /// Once the transfer is complete, how long to keep answering the
    /// sender (its repeated end marker, if our answer was lost) before
    /// leaving (udp-receiver's `--exit-wait`, default 500 ms).
    pub exit_wait: Duration,
}

impl UdpcastRequest {
    /// A request with udpcast's defaults: no rendezvous address, TTL 1.
    pub fn new(session: SessionRequest, portbase: u16) -> UdpcastRequest {
        UdpcastRequest {
            session,
            portbase,
            rendezvous: None,
            ttl: 1,
            exit_wait: DEFAULT_EXIT_WAIT,
        }
    }
}

/// udp-receiver's default `--exit-wait`.
pub const DEFAULT_EXIT_WAIT: Duration = Duration::from_millis(500);

/// The "take the announced group" placeholder for [`UdpcastRequest`].
pub fn any_group(portbase: u16) -> Group {
    Group(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), portbase))
}

/// The result of the handshake.
#[derive(Debug, Clone, Copy)]
struct Connected {
    sender: SocketAddrV4,
    client: u32,
    block_size: u32,
    data_addr: Ipv4Addr,
}

/// One IPv4 address of an interface.
struct Ipv4Iface {
    name: String,
    addr: Ipv4Addr,
    flags: libc::c_int,
    /// Its broadcast address, if it has one.
    broadcast: Option<Ipv4Addr>,
}

/// Every IPv4 address of every interface, in the kernel's order.
fn ipv4_ifaces() -> Result<Vec<Ipv4Iface>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs stores a list head in `list`, freed below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(Error::new(
            ErrorCode::Network,
            format!("getifaddrs: {}", std::io::Error::last_os_error()),
        ));
    }
    let v4 = |sa: *const libc::sockaddr| {
        // SAFETY: callers pass a non-null AF_INET address of the live list,
        // which is a sockaddr_in.
        let sin = unsafe { &*(sa as *const libc::sockaddr_in) };
        Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))
    };
    let mut found = Vec::new();
    let mut p = list;
    while !p.is_null() {
        // SAFETY: `p` is a node of the list, valid until freeifaddrs.
        let ifa = unsafe { &*p };
        p = ifa.ifa_next;
        // SAFETY: ifa_addr is only read when non-null.
        let inet = unsafe {
            !ifa.ifa_addr.is_null() && i32::from((*ifa.ifa_addr).sa_family) == libc::AF_INET
        };
        if !inet {
            continue;
        }
        // An address configured without a broadcast address reports itself
        // (or 0.0.0.0).
        let own = v4(ifa.ifa_addr);
        let flags = ifa.ifa_flags as libc::c_int;
        let broadcast = (flags & libc::IFF_BROADCAST != 0 && !ifa.ifa_ifu.is_null())
            .then(|| v4(ifa.ifa_ifu))
            .filter(|b| !b.is_unspecified() && *b != own);
        // SAFETY: ifa_name is a NUL-terminated string of the live list.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        found.push(Ipv4Iface {
            name,
            addr: own,
            flags,
            broadcast,
        });
    }
    // SAFETY: `list` came from getifaddrs and is freed exactly once.
    unsafe { libc::freeifaddrs(list) };
    Ok(found)
}

/// Broadcast address of IPv4 interface `iface` (None if it has none).
fn broadcast_addr(iface: &str) -> Result<Option<Ipv4Addr>> {
    ipv4_ifaces()?
        .into_iter()
        .find(|i| i.name == iface)
        .map(|i| i.broadcast)
        .ok_or_else(|| {
            Error::new(
                ErrorCode::InvalidArgument,
                format!("{iface} has no IPv4 address: udpcast needs one to reach the sender"),
            )
        })
}

/// The first IPv4 address of `iface` (the one the kernel sends from, so
/// the one udp-sender answers and, in point-to-point mode, sends data to).
fn local_addr(iface: &str) -> Result<Option<Ipv4Addr>> {
    Ok(ipv4_ifaces()?
        .into_iter()
        .find(|i| i.name == iface)
        .map(|i| i.addr))
}

/// The interface udp-receiver picks when none is given: the first one that
/// is up, not loopback, and has an IPv4 address.
pub fn default_iface() -> Result<String> {
    ipv4_ifaces()?
        .into_iter()
        .find(|i| i.flags & libc::IFF_UP != 0 && i.flags & libc::IFF_LOOPBACK == 0)
        .map(|i| i.name)
        .ok_or_else(|| {
            Error::new(
                ErrorCode::InvalidArgument,
                "no interface is up with an IPv4 address: give one with --interface",
            )
        })
}

/// The control socket: bound to the receiver port on `iface` (which also
/// picks the interface for what it sends), broadcast allowed, and deaf to multicast groups it has not joined itself (the data
/// group belongs to the data path).
fn control_socket(req: &UdpcastRequest, control: Ipv4Addr) -> Result<UdpSocket> {
    let iface = &req.session.iface;
    let err = |what: &str, e: std::io::Error| {
        Error::new(
            ErrorCode::Network,
            format!("udpcast control socket: {what}: {e}"),
        )
    };
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .map_err(|e| err("socket", e))?;
    s.set_reuse_address(true)
        .map_err(|e| err("SO_REUSEADDR", e))?;
    s.set_broadcast(true).map_err(|e| err("SO_BROADCAST", e))?;
    s.bind_device(Some(iface.as_bytes()))
        .map_err(|e| err(&format!("bind to {iface}"), e))?;
    s.set_multicast_all_v4(false)
        .map_err(|e| err("IP_MULTICAST_ALL", e))?;
    s.set_multicast_ttl_v4(req.ttl)
        .map_err(|e| err("IP_MULTICAST_TTL", e))?;
    if control.is_multicast() {
        let ifindex = socket::iface_index(iface)?;
        s.join_multicast_v4_n(&control, &socket2::InterfaceIndexOrAddress::Index(ifindex))
            .map_err(|e| err(&format!("join {control}"), e))?;
    }
    s.set_read_timeout(Some(POLL))
        .map_err(|e| err("SO_RCVTIMEO", e))?;
    let at = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), req.portbase);
    s.bind(&at.into())
        .map_err(|e| err(&format!("bind port {}", req.portbase), e))?;
    Ok(s.into())
}

/// One datagram from the control socket, or None after the poll timeout.
fn recv(sock: &UdpSocket, buf: &mut [u8]) -> Result<Option<(usize, SocketAddr)>> {
    match sock.recv_from(buf) {
        Ok(r) => Ok(Some(r)),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::Interrupted
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(Error::new(
            ErrorCode::Network,
            format!("udpcast control socket: {e}"),
        )),
    }
}

fn cancelled() -> Error {
    Error::new(ErrorCode::Cancelled, "cancelled")
}

/// Find the sender: connect requests to the control address (and to any
/// sender whose hello we hear) until one answers with CMD_CONNECT_REPLY.
fn connect(
    sock: &UdpSocket,
    req: &UdpcastRequest,
    control: SocketAddr,
    cancel: &AtomicBool,
) -> Result<Connected> {
    let sender_port = req.portbase.wrapping_add(1);
    let request = connect_req(req.session.rcvbuf.min(u32::MAX as usize) as u32);
    let send = |to: SocketAddr| {
        sock.send_to(&request, to)
            .map_err(|e| Error::new(ErrorCode::Network, format!("connect request to {to}: {e}")))
    };
    let start = Instant::now();
    let mut last_request: Option<Instant> = None;
    let mut buf = [0u8; 2048];
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(cancelled());
        }
        if start.elapsed() >= req.session.start_timeout {
            return Err(Error::new(
                ErrorCode::Timeout,
                format!(
                    "no udp-sender answered on port {sender_port} within {:?}",
                    req.session.start_timeout
                ),
            ));
        }
        if last_request.is_none_or(|t| t.elapsed() >= CONNECT_RETRY) {
            send(control)?;
            last_request = Some(Instant::now());
        }
        let Some((n, SocketAddr::V4(from))) = recv(sock, &mut buf)? else {
            continue;
        };
        // With `--source`, only that sender is heard: a forged hello or
        // connect reply from anywhere else is not the sender we lock onto.
        let wrong_host = req
            .session
            .source
            .is_some_and(|s| s != IpAddr::V4(*from.ip()));
        if from.port() != sender_port || wrong_host {
            continue;
        }
        match parse(&buf[..n]) {
            Ok(Message::Hello { caps }) if caps & CAP_ASYNC != 0 => {
                return Err(Error::new(
                    ErrorCode::ProtocolError,
                    "the sender runs in asynchronous mode (udp-sender --async), which the xdpcast udpcast receiver does not implement",
                ));
            }
            Ok(Message::Hello { .. }) => {
                send(SocketAddr::V4(from))?;
            }
            Ok(Message::ConnectReply {
                client,
                block_size,
                caps,
                data_addr,
            }) => {
                if client == u32::MAX {
                    return Err(Error::new(
                        ErrorCode::ProtocolError,
                        format!("udp-sender at {from} refused this receiver (too many receivers, or point-to-point mode)"),
                    ));
                }
                if caps & CAP_NEW_GEN == 0 || client >= MAX_CLIENTS {
                    return Err(Error::new(
                        ErrorCode::ProtocolError,
                        format!("udp-sender at {from} speaks an older udpcast protocol (capabilities {caps:#x})"),
                    ));
                }
                if block_size == 0 || block_size as usize > 65_507 - DATA_HEADER {
                    return Err(Error::new(
                        ErrorCode::ProtocolError,
                        format!("udp-sender at {from} announced block size {block_size}"),
                    ));
                }
                return Ok(Connected {
                    sender: from,
                    client,
                    block_size,
                    data_addr,
                });
            }
            _ => {}
        }
    }
}

/// The data group the sender announced, checked against the request.
fn data_group(req: &UdpcastRequest, c: &Connected) -> Result<Group> {
    let announced = SocketAddr::new(c.data_addr.into(), req.portbase);
    let wanted = req.session.group.0;
    if !wanted.ip().is_unspecified() && wanted != announced {
        return Err(Error::new(
            ErrorCode::InvalidArgument,
            format!("the sender announced data group {announced}, not {wanted}"),
        ));
    }
    if !c.data_addr.is_multicast() {
        return Err(Error::new(
            ErrorCode::ProtocolError,
            format!(
                "the sender sends data to {}, not to a multicast group: use udp-sender --mcast-data-address",
                c.data_addr
            ),
        ));
    }
    Ok(Group(announced))
}

/// The output: stdout for `-`, else the file or block device.
fn open_output(path: &Path, window: u64) -> Result<Out> {
    if stream::is_stdout(path) {
        return Ok(Out::Stream(StreamOut::start(stream::stdout()?, window)?));
    }
    let (file, block_device) = open_out(path)?;
    Ok(Out::file(file, block_device))
}

/// The control thread's view of a running transfer.
struct Run {
    path: DataPath<Stream>,
    /// Counter slot of the control socket (point-to-point data).
    control_slot: usize,
    /// The XDP program steers our unicast address too: point-to-point
    /// data reaches the workers, and what the control socket holds came
    /// before the program did.
    unicast_steered: bool,
    start: Instant,
    first_data: Option<Instant>,
    last: (Instant, u64),
}

impl Run {
    fn snapshot(&mut self, base: &Snapshot) -> Snapshot {
        let diag = self.path.diag();
        let t = &self.path.sink;
        let mut s = Snapshot {
            diag,
            ..base.clone()
        };
        s.workers = self
            .path
            .slots
            .iter()
            .zip(t.counters.iter())
            .map(|(&(queue, cpu), c)| c.snapshot(u64::from(queue), cpu))
            .collect();
        let all: Vec<WorkerStatus> = t.counters.iter().map(|c| c.snapshot(0, None)).collect();
        for c in t.counters.iter() {
            for (total, d) in s.drops.iter_mut().zip(c.drops.iter()) {
                *total += d.load(Ordering::Relaxed);
            }
        }
        // The drops were read after the packet counts: packets counted in
        // between may be in the drops and not in the sum (as in the
        // xdpcast path, the difference saturates).
        s.packets = all
            .iter()
            .map(|w| w.packets)
            .sum::<u64>()
            .saturating_sub(s.total_drops());
        s.blocks_done = all.iter().map(|w| w.blocks).sum();
        s.fec_recovered = t
            .counters
            .iter()
            .map(|c| c.fec_recovered.load(Ordering::Relaxed))
            .sum();
        s.bytes_done = all.iter().map(|w| w.bytes).sum();
        s.block_size = t.block_size;
        s.session_id = u64::from(t.client);
        if let Some(st) = t.stream_status() {
            s.stream = st;
        }
        let now = Instant::now();
        if s.bytes_done > 0 {
            let first = *self.first_data.get_or_insert(now);
            s.avg_rate_bps =
                (s.bytes_done as f64 / now.duration_since(first).as_secs_f64().max(1e-3)) as u64;
        }
        let dt = now.duration_since(self.last.0).as_secs_f64();
        if dt > 0.0 {
            s.rate_bps = (s.bytes_done.saturating_sub(self.last.1) as f64 / dt) as u64;
        }
        self.last = (now, s.bytes_done);
        s
    }

    /// Receive until the transfer is complete (its length) or fails.
    fn watch(
        &mut self,
        sock: &UdpSocket,
        req: &UdpcastRequest,
        base: &mut Snapshot,
        cancel: &AtomicBool,
        publish: &mut dyn FnMut(&Snapshot),
    ) -> Result<u64> {
        let sender = self.path.sink.sender;
        let mut buf = vec![0u8; 65_536];
        let mut last_publish = Instant::now();
        let mut last_packets = 0;
        let mut last_activity = Instant::now();
        let mut unicast_data = false;
        // Since when the transfer is complete.
        let mut complete: Option<Instant> = None;
        loop {
            if let Some((n, from)) = recv(sock, &mut buf)? {
                // Point-to-point mode: the sender sends data and REQACKs to
                // our unicast address, which the kernel delivers here.
                // Control comes only from the sender that answered our
                // connect request; anything else is counted and dropped.
                let c = self.path.sink.counters(self.control_slot);
                if from != sender {
                    c.batch(1);
                    c.drop_packet(DropReason::ForeignSource);
                } else if is_transfer_data(&buf[..n]) && self.unicast_steered {
                    // Sent before the XDP program steered the port: not
                    // taken (udp-sender sends it again, to the workers), so
                    // that the XDP path is the only one, as for multicast
                    // data sent before the data path joined the group.
                    log::debug!("point-to-point data from before the XDP steering, not taken");
                } else if is_transfer_data(&buf[..n]) {
                    if !unicast_data {
                        unicast_data = true;
                        log::warn!("{POINT_TO_POINT}");
                        base.message = POINT_TO_POINT.into();
                    }
                    c.batch(1);
                    self.path.sink.ingest(&buf[..n], c);
                }
            }
            if cancel.load(Ordering::Relaxed) {
                return Err(cancelled());
            }
            if let Some(e) = self.path.sink.failure() {
                return Err(e);
            }
            if let Some(len) = self.path.sink.complete_len() {
                // As udp-receiver's --exit-wait: answer what the sender
                // still sends (its end marker again, if our OK was lost)
                // for that long. (udp-receiver waits for that much silence;
                // a fixed time keeps anyone else's packets from holding
                // this receiver.)
                if complete.get_or_insert_with(Instant::now).elapsed() >= req.exit_wait {
                    return Ok(len);
                }
            }
            if last_publish.elapsed() < PUBLISH {
                continue;
            }
            last_publish = Instant::now();
            let s = self.snapshot(base);
            publish(&s);
            let seen = s.packets + s.total_drops();
            if seen != last_packets {
                last_packets = seen;
                last_activity = Instant::now();
            }
            if seen == 0 && self.start.elapsed() >= req.session.start_timeout {
                return Err(Error::new(
                    ErrorCode::Timeout,
                    self.path.explain_silence(format!(
                        "connected, but no data from the sender within {:?}",
                        req.session.start_timeout
                    )),
                ));
            }
            if seen > 0 && last_activity.elapsed() >= req.session.idle_timeout {
                return Err(Error::new(
                    ErrorCode::SenderGone,
                    format!(
                        "no packet from the sender for {:?}",
                        req.session.idle_timeout
                    ),
                ));
            }
        }
    }
}

/// Receive one udpcast transfer, publishing progress on the status page
/// (and to `on_progress`) until SUCCESS or FAILURE. Returns the final
/// snapshot; the page stays in place (remove it with [`StatusWriter::remove`]
/// or `xdpcast close`). Fails only if the page cannot be created.
pub fn receive(
    req: &UdpcastRequest,
    cancel: &AtomicBool,
    on_progress: &mut dyn FnMut(&Snapshot),
) -> Result<Snapshot> {
    let writer = StatusWriter::create(&writer_page_path(&req.session.name)?)?;
    let mut base = Snapshot {
        state: State::InProgress,
        name: req.session.name.clone(),
        group: req.session.group.to_string(),
        target: req.session.target.display().to_string(),
        message: format!(
            "udpcast: looking for udp-sender on port {}",
            req.portbase.wrapping_add(1)
        ),
        start_ns: now_ns(),
        ..Snapshot::default()
    };
    writer.publish(&base);
    on_progress(&base);
    let mut last = base.clone();
    let outcome = run(req, cancel, &mut base, &mut |s: &Snapshot| {
        writer.publish(s);
        on_progress(s);
        last = s.clone();
    });
    let mut s = last;
    s.end_ns = now_ns();
    s.rate_bps = 0;
    match outcome {
        Ok((len, digest)) => {
            s.state = State::Success;
            s.flags |= FLAG_GEOMETRY | FLAG_DIGEST;
            s.total_bytes = len;
            s.block_count = s.blocks_done;
            s.digest = digest;
            s.message = format!(
                "udpcast transfer complete: {len} bytes, SHA-256 {} (udpcast sends no checksum)",
                hex(&digest)
            );
        }
        Err(e) => {
            s.state = State::Failure;
            s.error = e.code;
            s.message = e.message;
        }
    }
    writer.publish(&s);
    on_progress(&s);
    Ok(s)
}

/// On the XDP path, have the program steer this host's address on the
/// port too: udp-sender sends a single receiver the data by unicast
/// (unless run with --nopointopoint). Whether it does.
fn steer_unicast(opened: &mut datapath::Opened, iface: &str) -> bool {
    let Some(steering) = opened.steering_mut() else {
        return false;
    };
    let local = match local_addr(iface) {
        Ok(Some(a)) => a,
        Ok(None) => return false,
        Err(e) => {
            log::warn!("point-to-point data cannot be steered: {e}");
            return false;
        }
    };
    match steering.set_unicast(local) {
        Ok(()) => true,
        Err(e) => {
            log::warn!("the XDP program cannot steer {local}: {e}; point-to-point data takes the kernel socket");
            false
        }
    }
}

/// The whole transfer: handshake, data path, completion, target check.
fn run(
    req: &UdpcastRequest,
    cancel: &AtomicBool,
    base: &mut Snapshot,
    publish: &mut dyn FnMut(&Snapshot),
) -> Result<(u64, [u8; 32])> {
    if req.session.target.as_os_str().is_empty() {
        return Err(Error::new(ErrorCode::InvalidArgument, "no target given"));
    }
    req.session.validate()?;
    let port = req.session.group.0.port();
    if port != req.portbase {
        return Err(Error::new(
            ErrorCode::InvalidArgument,
            format!(
                "udpcast data arrives on the port base {}, not on port {port}",
                req.portbase
            ),
        ));
    }
    // As udp-receiver: a rendezvous address if given, else the interface's
    // broadcast address for TTL 1, else the all-hosts group.
    let control_ip = match (req.rendezvous, req.ttl) {
        (Some(a), _) => a,
        (None, 1) => broadcast_addr(&req.session.iface)?.unwrap_or(ALL_HOSTS),
        (None, _) => {
            broadcast_addr(&req.session.iface)?;
            ALL_HOSTS
        }
    };
    let sock = control_socket(req, control_ip)?;
    let control = SocketAddr::new(control_ip.into(), req.portbase.wrapping_add(1));
    let connected = connect(&sock, req, control, cancel)?;
    let group = data_group(req, &connected)?;
    base.group = group.to_string();
    base.message = format!(
        "udpcast client #{} of udp-sender {}",
        connected.client, connected.sender
    );
    publish(base);
    let out = open_output(&req.session.target, req.session.stream_window)?;
    let mut data_req = req.session.clone();
    data_req.group = group;
    let outcome = datapath::open(&data_req).and_then(|mut opened| {
        base.mode = opened.mode;
        if !opened.note.is_empty() {
            base.message = format!("{}; {}", base.message, opened.note);
        }
        let replies = sock
            .try_clone()
            .map_err(|e| Error::new(ErrorCode::Network, format!("control socket: {e}")))?;
        let slots = opened.sources.len();
        let unicast_steered = steer_unicast(&mut opened, &req.session.iface);
        let stream = Arc::new(Stream::new(out, &connected, replies, slots + 1));
        let path = DataPath::start(opened, stream, req.session.cores.as_deref())?;
        let mut r = Run {
            path,
            control_slot: slots,
            unicast_steered,
            start: Instant::now(),
            first_data: None,
            last: (Instant::now(), 0),
        };
        let watched = r.watch(&sock, req, base, cancel, publish);
        let stopped = r.path.join();
        publish(&r.snapshot(base));
        let len = match stopped {
            Some(e) if watched.is_ok() => Err(e),
            _ => watched,
        }?;
        // A stream is drained first, so that a cancel still ends a wait
        // for a consumer that does not read.
        let sink = r.path.sink.clone();
        sink.drain(
            len,
            || cancel.load(Ordering::Relaxed),
            || publish(&r.snapshot(base)),
        )?;
        let digest = sink.finish(len);
        publish(&r.snapshot(base));
        Ok((len, digest?))
    });
    // Leave the sender's participant list either way, so it never waits for
    // this receiver again.
    if let Err(e) = sock.send_to(&disconnect(), connected.sender) {
        log::warn!("disconnecting from {}: {e}", connected.sender);
    }
    outcome
}
