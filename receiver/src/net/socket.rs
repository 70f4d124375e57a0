//! Kernel sockets: group addresses, interfaces, multicast membership and the
//! batched `recvmmsg`/`sendmmsg` calls used by the portable path and the
//! sender.

use std::ffi::CString;
use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::str::FromStr;
use std::time::Duration;

use socket2::{Domain, InterfaceIndexOrAddress, Protocol, SockAddr, Socket, Type};

use crate::error::{Error, ErrorCode, Result};

/// A multicast group and UDP port, e.g. `239.1.2.3:5000` or `[ff15::1]:5000`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Group(pub SocketAddr);

impl FromStr for Group {
    type Err = Error;

    fn from_str(s: &str) -> Result<Group> {
        let addr: SocketAddr = s.parse().map_err(|_| {
            Error::new(
                ErrorCode::InvalidArgument,
                format!("group {s:?}: expected ADDRESS:PORT such as 239.1.2.3:5000"),
            )
        })?;
        if !addr.ip().is_multicast() || addr.port() == 0 {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                format!("group {s}: not a multicast address with a non-zero port"),
            ));
        }
        Ok(Group(addr))
    }
}

impl std::fmt::Display for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

fn net_err(what: String, e: io::Error) -> Error {
    Error::new(ErrorCode::Network, format!("{what}: {e}"))
}

/// Index of interface `name`.
pub fn iface_index(name: &str) -> Result<u32> {
    let c = CString::new(name)
        .map_err(|_| Error::new(ErrorCode::InvalidArgument, "interface name has a NUL byte"))?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(Error::new(
            ErrorCode::InvalidArgument,
            format!("no such network interface: {name}"),
        ));
    }
    Ok(idx)
}

/// Whether `ip` is an IPv6 link-local unicast address (fe80::/10), which
/// is only meaningful together with an interface (its scope id).
pub fn is_link_local(ip: &Ipv6Addr) -> bool {
    ip.segments()[0] & 0xffc0 == 0xfe80
}

/// Whether `ip` only means something together with an interface: a
/// link-local unicast address, or a multicast group of interface-local
/// (ff.1::) or link-local (ff.2::) scope. Linux refuses to bind or connect
/// to such an address without a scope id (EINVAL).
pub fn needs_scope(ip: &Ipv6Addr) -> bool {
    is_link_local(ip) || (ip.is_multicast() && matches!(ip.octets()[1] & 0x0f, 1 | 2))
}

/// `addr` with the scope id `ifindex` when its address needs one
/// ([`needs_scope`]), else unchanged.
pub fn scoped(addr: SocketAddr, ifindex: u32) -> SocketAddr {
    match addr {
        SocketAddr::V6(mut a) if needs_scope(a.ip()) => {
            a.set_scope_id(ifindex);
            SocketAddr::V6(a)
        }
        other => other,
    }
}

/// The address a NACK socket on interface `name` binds to, port 0: its
/// first IPv4 address, or with `v6` its first global IPv6 address, else its
/// link-local one (scoped to the interface).
pub fn iface_addr(name: &str, v6: bool) -> Result<SocketAddr> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(net_err("getifaddrs".into(), io::Error::last_os_error()));
    }
    let mut best: Option<SocketAddr> = None;
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list returned by getifaddrs, alive
        // until freeifaddrs; its name is a NUL-terminated string and its
        // address, when not null, is a sockaddr_in for AF_INET and a
        // sockaddr_in6 for AF_INET6.
        unsafe {
            let ifa = &*cur;
            let addr = ifa.ifa_addr;
            cur = ifa.ifa_next;
            if addr.is_null()
                || std::ffi::CStr::from_ptr(ifa.ifa_name).to_bytes() != name.as_bytes()
            {
                continue;
            }
            let family = i32::from((*addr).sa_family);
            let found = if family == libc::AF_INET && !v6 {
                let sin = &*(addr as *const libc::sockaddr_in);
                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                SocketAddr::new(ip.into(), 0)
            } else if family == libc::AF_INET6 && v6 {
                let sin6 = &*(addr as *const libc::sockaddr_in6);
                let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                scoped(SocketAddrV6::new(ip, 0, 0, 0).into(), sin6.sin6_scope_id)
            } else {
                continue;
            };
            // The first address wins, except that a global IPv6 address
            // beats a link-local one.
            let rank = |a: &SocketAddr| match a {
                SocketAddr::V6(a) if is_link_local(a.ip()) => 0,
                _ => 1,
            };
            if best.as_ref().is_none_or(|b| rank(&found) > rank(b)) {
                best = Some(found);
            }
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    best.ok_or_else(|| {
        Error::new(
            ErrorCode::InvalidArgument,
            format!(
                "interface {name} has no IPv{} address (needed for NACK repair; use --no-repair)",
                if v6 { 6 } else { 4 }
            ),
        )
    })
}

/// MTU of interface `name`.
pub fn iface_mtu(name: &str) -> Result<u32> {
    iface_index(name)?;
    let p = format!("/sys/class/net/{name}/mtu");
    std::fs::read_to_string(&p)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| Error::new(ErrorCode::InvalidArgument, format!("cannot read {p}")))
}

/// A UDP socket bound to the group's port that has joined the group on
/// `iface`. On the XDP path it only keeps the membership (IGMP/MLD reports),
/// on the socket path it also receives. A link-local (or interface-local)
/// IPv6 group is bound with `iface` as its scope.
pub fn join(group: Group, iface: &str, rcvbuf: usize, source: Option<IpAddr>) -> Result<Socket> {
    let ifindex = iface_index(iface)?;
    let addr = scoped(group.0, ifindex);
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(|e| net_err("cannot open UDP socket".into(), e))?;
    sock.set_reuse_address(true)
        .map_err(|e| net_err("SO_REUSEADDR".into(), e))?;
    // Root may exceed rmem_max; others get what the sysctl allows.
    if sock.set_recv_buffer_size(rcvbuf).is_ok() {
        force_rcvbuf(&sock, rcvbuf);
    }
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(|e| net_err("SO_RCVTIMEO".into(), e))?;
    sock.bind(&SockAddr::from(addr))
        .map_err(|e| net_err(format!("cannot bind {addr}"), e))?;
    if let Some(src) = source {
        join_source_group(&sock, addr.ip(), src, ifindex).map_err(|e| {
            net_err(
                format!("cannot join {} from {src} on {iface}", addr.ip()),
                e,
            )
        })?;
        if addr.is_ipv4() {
            sock.set_multicast_all_v4(false)
                .map_err(|e| net_err("IP_MULTICAST_ALL".into(), e))?;
        }
        return Ok(sock);
    }
    match addr.ip() {
        IpAddr::V4(g) => {
            sock.join_multicast_v4_n(&g, &InterfaceIndexOrAddress::Index(ifindex))
                .map_err(|e| net_err(format!("cannot join {g} on {iface}"), e))?;
            sock.set_multicast_all_v4(false)
                .map_err(|e| net_err("IP_MULTICAST_ALL".into(), e))?;
        }
        IpAddr::V6(g) => sock
            .join_multicast_v6(&g, ifindex)
            .map_err(|e| net_err(format!("cannot join {g} on {iface}"), e))?,
    }
    Ok(sock)
}

/// Source-specific join (`MCAST_JOIN_SOURCE_GROUP`, IGMPv3/MLDv2): the
/// kernel passes this socket only `group` traffic from `source`.
fn join_source_group(sock: &Socket, group: IpAddr, source: IpAddr, ifindex: u32) -> io::Result<()> {
    if group.is_ipv4() != source.is_ipv4() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "source and group are of different address families",
        ));
    }
    // SAFETY: group_source_req is a plain C struct; all-zero is valid.
    let mut req: libc::group_source_req = unsafe { MaybeUninit::zeroed().assume_init() };
    req.gsr_interface = ifindex;
    for (dst, ip) in [(&mut req.gsr_group, group), (&mut req.gsr_source, source)] {
        let a = SockAddr::from(SocketAddr::new(ip, 0));
        // SAFETY: `a` holds `a.len()` bytes of a sockaddr_in/in6, which is
        // no longer than the sockaddr_storage it is copied into.
        unsafe {
            std::ptr::copy_nonoverlapping(
                a.as_ptr().cast::<u8>(),
                (dst as *mut libc::sockaddr_storage).cast::<u8>(),
                a.len() as usize,
            );
        }
    }
    let level = if group.is_ipv4() {
        libc::IPPROTO_IP
    } else {
        libc::IPPROTO_IPV6
    };
    setsockopt(sock, level, libc::MCAST_JOIN_SOURCE_GROUP, &req)
}

/// Whether the socket path asks the kernel for GRO'd datagrams (`UDP_GRO`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroRequest {
    /// Enable it when the kernel has it (5.0+), else receive one by one.
    Auto,
    /// Enable it; a kernel without it fails the session.
    On,
    /// Never: one datagram per message.
    Off,
}

/// Largest UDP payload, and so the largest GRO'd super-datagram the
/// kernel hands over (it never coalesces beyond 64 KiB).
pub const MAX_UDP_PAYLOAD: usize = 65_535;

/// Ask for `UDP_GRO` as `req` says (udp(7)): consecutive datagrams of one
/// flow that the interface's GRO coalesced then reach the socket as one
/// message of up to 64 KiB, with their size in a `UDP_GRO` control message
/// ([`MsgBatch::recv`] reports it, [`Received::segments`] splits). Without
/// it the kernel segments them again before the socket. Returns whether it
/// is on. The interface must do GRO for anything to be coalesced (NICs
/// do by default; a veth with GRO, `rx-udp-gro-forwarding` and threaded
/// NAPI on).
pub fn set_gro(sock: &Socket, req: GroRequest) -> Result<bool> {
    if req == GroRequest::Off {
        return Ok(false);
    }
    let on: libc::c_int = 1;
    match setsockopt(sock, libc::SOL_UDP, libc::UDP_GRO, &on) {
        Ok(()) => Ok(true),
        Err(e) if req == GroRequest::Auto => {
            log::debug!("UDP_GRO not available ({e}): datagrams one by one");
            Ok(false)
        }
        Err(e) => Err(net_err("setsockopt UDP_GRO".into(), e)),
    }
}

fn force_rcvbuf(sock: &Socket, bytes: usize) {
    let v = bytes.min(i32::MAX as usize) as libc::c_int;
    // Failure (not root) leaves the size set by SO_RCVBUF, which is fine.
    let _ = setsockopt(sock, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &v);
}

/// `setsockopt(2)` with a plain C value.
fn setsockopt<T: Copy>(
    sock: &Socket,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: valid fd; the pointer and length describe `value`, which the
    // kernel only reads during the call.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A UDP socket that sends to `group` out of `iface` with the given TTL,
/// looping copies back to local receivers. A link-local (or
/// interface-local) IPv6 group is connected with `iface` as its scope.
/// With `from`, datagrams leave from that address (the one a signed
/// manifest names, so that receivers can filter on it).
pub fn sender_socket(group: Group, iface: &str, ttl: u32, from: Option<IpAddr>) -> Result<Socket> {
    let ifindex = iface_index(iface)?;
    let addr = scoped(group.0, ifindex);
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(|e| net_err("cannot open UDP socket".into(), e))?;
    let _ = sock.set_send_buffer_size(8 << 20);
    match addr.ip() {
        IpAddr::V4(_) => {
            let mreqn = libc::ip_mreqn {
                imr_multiaddr: libc::in_addr { s_addr: 0 },
                imr_address: libc::in_addr { s_addr: 0 },
                imr_ifindex: ifindex as libc::c_int,
            };
            setsockopt(&sock, libc::IPPROTO_IP, libc::IP_MULTICAST_IF, &mreqn)
                .map_err(|e| net_err(format!("cannot send multicast on {iface}"), e))?;
            sock.set_multicast_ttl_v4(ttl)
                .map_err(|e| net_err("IP_MULTICAST_TTL".into(), e))?;
            sock.set_multicast_loop_v4(true)
                .map_err(|e| net_err("IP_MULTICAST_LOOP".into(), e))?;
        }
        IpAddr::V6(_) => {
            sock.set_multicast_if_v6(ifindex)
                .map_err(|e| net_err(format!("cannot send multicast on {iface}"), e))?;
            sock.set_multicast_hops_v6(ttl)
                .map_err(|e| net_err("IPV6_MULTICAST_HOPS".into(), e))?;
            sock.set_multicast_loop_v6(true)
                .map_err(|e| net_err("IPV6_MULTICAST_LOOP".into(), e))?;
        }
    }
    if let Some(ip) = from.or(addr.is_ipv4().then_some(IpAddr::V4(Ipv4Addr::UNSPECIFIED))) {
        // A link-local source (fe80::) is scoped to `iface` like the group.
        sock.bind(&SockAddr::from(scoped(SocketAddr::new(ip, 0), ifindex)))
            .map_err(|e| net_err(format!("bind {ip}"), e))?;
    }
    sock.connect(&SockAddr::from(addr))
        .map_err(|e| net_err(format!("connect {addr}"), e))?;
    Ok(sock)
}

/// Reusable `mmsghdr`/`iovec` arrays for one batched system call.
///
/// Each message has up to `IOVS` scatter/gather pieces; the pointers are
/// filled in right before each call and only live for it.
pub struct MsgBatch<const IOVS: usize> {
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<[libc::iovec; IOVS]>,
    /// Source address of each received message.
    names: Vec<libc::sockaddr_storage>,
    /// Control message buffer of each received message (room for one
    /// `UDP_GRO` cmsg; u64 for the cmsghdr's alignment).
    ctrl: Vec<[u64; CTRL_WORDS]>,
}

/// u64 words of control buffer per message: CMSG_SPACE(sizeof(int)) is 24
/// bytes on 64-bit Linux; 32 leaves room.
const CTRL_WORDS: usize = 4;

/// One received message: `len` bytes from `from`, made of datagrams of
/// `segment` bytes each (the last may be shorter): one datagram unless the
/// kernel coalesced several (`UDP_GRO`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Bytes received.
    pub len: usize,
    /// Source address.
    pub from: Option<IpAddr>,
    /// Size of each coalesced datagram; `len` when there is one.
    pub segment: usize,
}

impl Received {
    /// The datagrams of this message in `buf` (its receive buffer).
    pub fn segments<'a>(&self, buf: &'a [u8]) -> impl Iterator<Item = &'a [u8]> {
        buf[..self.len].chunks(self.segment.max(1))
    }
}

// SAFETY: the raw pointers inside are only set and used within one call of
// `recv`/`send` on the owning thread; between calls they are dangling but
// never dereferenced.
unsafe impl<const IOVS: usize> Send for MsgBatch<IOVS> {}

impl<const IOVS: usize> MsgBatch<IOVS> {
    /// Room for `n` messages.
    pub fn new(n: usize) -> Self {
        // SAFETY: mmsghdr and iovec are plain C structs for which all-zero
        // bytes are a valid (empty) value.
        let zero_hdr: libc::mmsghdr = unsafe { MaybeUninit::zeroed().assume_init() };
        let zero_iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; IOVS];
        // SAFETY: as above, sockaddr_storage is a plain C struct.
        let zero_name: libc::sockaddr_storage = unsafe { MaybeUninit::zeroed().assume_init() };
        MsgBatch {
            hdrs: vec![zero_hdr; n],
            iovs: vec![zero_iov; n],
            names: vec![zero_name; n],
            ctrl: vec![[0; CTRL_WORDS]; n],
        }
    }

    /// Capacity in messages.
    pub fn capacity(&self) -> usize {
        self.hdrs.len()
    }

    fn point(&mut self, i: usize, parts: usize) {
        let h = &mut self.hdrs[i];
        h.msg_hdr.msg_iov = self.iovs[i].as_mut_ptr();
        h.msg_hdr.msg_iovlen = parts;
        h.msg_hdr.msg_control = std::ptr::null_mut();
        h.msg_hdr.msg_controllen = 0;
        h.msg_len = 0;
    }
}

/// The IP address in a `sockaddr_storage` filled in by the kernel.
fn ip_of(name: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<IpAddr> {
    let len = len as usize;
    match i32::from(name.ss_family) {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, which
            // is smaller than sockaddr_storage and less strictly aligned.
            let sin = unsafe { &*(name as *const _ as *const libc::sockaddr_in) };
            Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                sin.sin_addr.s_addr,
            ))))
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &*(name as *const _ as *const libc::sockaddr_in6) };
            Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
        }
        _ => None,
    }
}

/// The segment size of a `UDP_GRO` control message in `h`'s control
/// buffer, if there is one.
fn gro_segment(h: &libc::msghdr) -> Option<usize> {
    // SAFETY: `h` was filled in by recvmmsg: msg_control points at our
    // control buffer and msg_controllen says how much of it the kernel
    // wrote; the CMSG_* walk stays inside that length, and a UDP_GRO cmsg
    // carries one int (read unaligned, as CMSG_DATA may not be).
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                return usize::try_from(v).ok().filter(|&v| v > 0);
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    None
}

impl MsgBatch<1> {
    /// Receive up to `bufs.len()` messages (blocking for the first one up
    /// to the socket's read timeout) into `got`: length, source address and
    /// datagram size of each (several datagrams per message with
    /// `UDP_GRO`, see [`set_gro`]); left empty on timeout.
    pub fn recv(
        &mut self,
        sock: &Socket,
        bufs: &mut [Vec<u8>],
        got: &mut Vec<Received>,
    ) -> io::Result<()> {
        let n = bufs.len().min(self.capacity());
        for (i, b) in bufs.iter_mut().take(n).enumerate() {
            self.iovs[i][0] = libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            };
            self.point(i, 1);
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_control = self.ctrl[i].as_mut_ptr().cast();
            h.msg_controllen = std::mem::size_of::<[u64; CTRL_WORDS]>() as _;
        }
        // SAFETY: the first `n` headers point at iovecs that point at `n`
        // live, writable buffers of the given lengths, and at `n` address
        // and control buffers of the given sizes, all borrowed for the
        // duration of the call.
        let rc = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        got.clear();
        if rc < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock
                | io::ErrorKind::TimedOut
                | io::ErrorKind::Interrupted => Ok(()),
                _ => Err(e),
            };
        }
        got.extend(
            self.hdrs[..rc as usize]
                .iter()
                .zip(&self.names)
                .map(|(h, name)| {
                    let len = h.msg_len as usize;
                    Received {
                        len,
                        from: ip_of(name, h.msg_hdr.msg_namelen),
                        segment: gro_segment(&h.msg_hdr).unwrap_or(len),
                    }
                }),
        );
        Ok(())
    }
}

/// Most datagrams in one UDP GSO message (the kernel's `UDP_MAX_SEGMENTS`
/// is 64 on older kernels, 128 on newer ones).
pub const MAX_GSO_SEGMENTS: usize = 64;
/// Most payload bytes in one UDP GSO message: the kernel refuses a
/// message whose datagram would exceed 64 KiB before it is cut.
const MAX_GSO_BYTES: usize = 65_000;

/// Datagrams for one `sendmmsg(2)` call, as `(header, payload)` pairs.
///
/// With `segments` > 1, consecutive datagrams of the same size go in one
/// message that the kernel cuts into them (UDP GSO: a `UDP_SEGMENT`
/// control message per message), so the socket layer is walked once per
/// message instead of once per datagram; the last datagram of a message
/// may be shorter. Where the device takes no GSO (a veth whose peer runs
/// XDP) the kernel cuts the message in software before the device, which
/// still saves the per-datagram walk. The pointers are filled in right
/// before each call and only live for it.
pub struct SendBatch {
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    ctrl: Vec<[u64; CTRL_WORDS]>,
    /// Datagrams in each message of the last call, and their size (the
    /// last one's may be less).
    counts: Vec<(usize, usize)>,
    segments: usize,
}

// SAFETY: as for MsgBatch: the raw pointers inside are only set and used
// within one call of `send` on the owning thread.
unsafe impl Send for SendBatch {}

impl SendBatch {
    /// Room for `messages` messages of up to `segments` datagrams each
    /// (at most [`MAX_GSO_SEGMENTS`]; 1: one datagram per message, no GSO).
    pub fn new(messages: usize, segments: usize) -> SendBatch {
        // SAFETY: mmsghdr is a plain C struct for which all-zero bytes are
        // a valid (empty) value.
        let zero_hdr: libc::mmsghdr = unsafe { MaybeUninit::zeroed().assume_init() };
        let segments = segments.clamp(1, MAX_GSO_SEGMENTS);
        SendBatch {
            hdrs: vec![zero_hdr; messages.max(1)],
            iovs: Vec::with_capacity(2 * messages.max(1) * segments),
            ctrl: vec![[0; CTRL_WORDS]; messages.max(1)],
            counts: Vec::with_capacity(messages.max(1)),
            segments,
        }
    }

    /// Datagrams a call may carry: messages times segments.
    pub fn capacity(&self) -> usize {
        self.hdrs.len() * self.segments
    }

    /// Datagrams per message (1: no GSO).
    pub fn segments(&self) -> usize {
        self.segments
    }

    /// Send one datagram per message from now on (the kernel refused GSO).
    pub fn without_gso(&mut self) {
        self.segments = 1;
    }

    /// Send `msgs`, one datagram per `(header, payload)` pair, on a
    /// connected socket. Returns how many datagrams the kernel took (the
    /// rest should be retried).
    pub fn send(&mut self, sock: &Socket, msgs: &[(&[u8], &[u8])]) -> io::Result<usize> {
        let len = |(h, p): &(&[u8], &[u8])| h.len() + p.len();
        self.iovs.clear();
        self.counts.clear();
        let mut i = 0;
        while i < msgs.len() && self.counts.len() < self.hdrs.len() {
            // A message of datagrams of the first one's size, ended by a
            // shorter one, by the segment limit or by the byte limit.
            let size = len(&msgs[i]);
            let (mut n, mut bytes) = (0, 0);
            while i < msgs.len() && n < self.segments {
                let l = len(&msgs[i]);
                if n > 0 && (l > size || bytes + l > MAX_GSO_BYTES) {
                    break;
                }
                let (h, p) = msgs[i];
                for part in [h, p] {
                    self.iovs.push(libc::iovec {
                        iov_base: part.as_ptr() as *mut libc::c_void,
                        iov_len: part.len(),
                    });
                }
                (n, bytes, i) = (n + 1, bytes + l, i + 1);
                if l < size {
                    break;
                }
            }
            self.counts.push((n, size));
        }
        let mut at = 0;
        for (m, &(n, size)) in self.counts.iter().enumerate() {
            let h = &mut self.hdrs[m];
            // The iovecs are all pushed: their vector no longer moves.
            h.msg_hdr.msg_iov = self.iovs[at..].as_mut_ptr();
            h.msg_hdr.msg_iovlen = 2 * n;
            at += 2 * n;
            h.msg_len = 0;
            if n > 1 {
                let ctrl = &mut self.ctrl[m];
                h.msg_hdr.msg_control = ctrl.as_mut_ptr().cast();
                // SAFETY: CMSG_SPACE of a u16 (24 bytes) fits the control
                // buffer (32 bytes); CMSG_FIRSTHDR of a header whose control
                // length covers it is that buffer's start, and CMSG_DATA
                // points inside it (written unaligned).
                unsafe {
                    h.msg_hdr.msg_controllen = libc::CMSG_SPACE(2) as _;
                    let c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                    (*c).cmsg_level = libc::SOL_UDP;
                    (*c).cmsg_type = libc::UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(2) as _;
                    std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), size as u16);
                }
            } else {
                h.msg_hdr.msg_control = std::ptr::null_mut();
                h.msg_hdr.msg_controllen = 0;
            }
        }
        // SAFETY: the first `counts.len()` headers point at iovecs over
        // `msgs`, which outlive the call, and at their own control
        // buffers; the kernel only reads them.
        let rc = unsafe {
            libc::sendmmsg(
                sock.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                self.counts.len() as libc::c_uint,
                0,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(self.counts[..rc as usize].iter().map(|c| c.0).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_groups() {
        assert_eq!(
            "239.1.2.3:5000".parse::<Group>().unwrap().0,
            "239.1.2.3:5000".parse::<SocketAddr>().unwrap()
        );
        assert!("[ff15::1]:7000".parse::<Group>().is_ok());
        for bad in ["10.0.0.1:5000", "239.1.2.3:0", "239.1.2.3", "nonsense"] {
            let e = bad.parse::<Group>().unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidArgument, "{bad}");
        }
    }

    #[test]
    fn interfaces() {
        assert!(iface_index("lo").unwrap() > 0);
        assert!(iface_mtu("lo").unwrap() > 0);
        assert_eq!(
            iface_addr("lo", false).unwrap(),
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
        );
        assert!(is_link_local(&"fe80::1".parse().unwrap()));
        assert!(!is_link_local(&"fd00::1".parse().unwrap()));
        for (ip, scope) in [
            ("fe80::1", true),
            ("ff02::1:2", true),
            ("ff12::204:1", true),
            ("ff31::1", true),
            ("ff05::1", false),
            ("ff15::1", false),
            ("ff0e::1", false),
            ("fd00::1", false),
        ] {
            assert_eq!(needs_scope(&ip.parse().unwrap()), scope, "{ip}");
        }
        let g: SocketAddr = "[ff12::204:1]:6000".parse().unwrap();
        assert_eq!(
            scoped(g, 7),
            "[ff12::204:1%7]:6000".parse::<SocketAddr>().unwrap()
        );
        let site: SocketAddr = "[ff15::1]:6000".parse().unwrap();
        assert_eq!(scoped(site, 7), site);
        let v4: SocketAddr = "239.1.2.3:5000".parse().unwrap();
        assert_eq!(scoped(v4, 7), v4);
        for e in [
            iface_index("no-such-if0").unwrap_err(),
            iface_mtu("no-such-if0").unwrap_err(),
        ] {
            assert_eq!(e.code, ErrorCode::InvalidArgument);
            assert_eq!(e.message, "no such network interface: no-such-if0");
        }
    }

    #[test]
    fn batched_send_and_receive_over_loopback_unicast() {
        let (rx, tx) = loopback_pair();
        let msgs: Vec<(&[u8], &[u8])> = vec![(b"ab", b"cd"), (b"e", b"")];
        assert_eq!(SendBatch::new(8, 1).send(&tx, &msgs).unwrap(), 2);
        let mut bufs = vec![vec![0u8; 64]; 4];
        let mut lens = Vec::new();
        let mut batch = MsgBatch::<1>::new(4);
        let mut got = Vec::new();
        while got.len() < 2 {
            batch.recv(&rx, &mut bufs, &mut lens).unwrap();
            got.extend(
                lens.iter()
                    .enumerate()
                    .map(|(i, r)| (bufs[i][..r.len].to_vec(), r.from)),
            );
        }
        let from = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(got, vec![(b"abcd".to_vec(), from), (b"e".to_vec(), from)]);
    }

    #[test]
    fn gso_batches_arrive_as_their_datagrams() {
        // Datagrams of one size share a message; a shorter one ends it, a
        // longer one starts the next; every datagram arrives as sent.
        let (rx, tx) = loopback_pair();
        let body: Vec<u8> = (0..=255u8).cycle().take(4000).collect();
        let sizes = [100, 100, 100, 40, 100, 100, 300, 300, 20];
        let mut at = 0;
        let msgs: Vec<(&[u8], &[u8])> = sizes
            .iter()
            .map(|&n| {
                at += n;
                (&body[at - n..at - n + 4], &body[at - n + 4..at])
            })
            .collect();
        let mut batch = SendBatch::new(2, 3);
        let mut sent = 0;
        while sent < msgs.len() {
            let n = batch.send(&tx, &msgs[sent..]).unwrap();
            assert!(n > 0);
            sent += n;
        }
        assert_eq!(batch.segments(), 3);
        let mut bufs = vec![vec![0u8; MAX_UDP_PAYLOAD]; 16];
        let mut recv = MsgBatch::<1>::new(16);
        let (mut got, mut messages) = (Vec::new(), Vec::new());
        while got.len() < sizes.len() {
            recv.recv(&rx, &mut bufs, &mut messages).unwrap();
            assert!(!messages.is_empty(), "timed out after {}", got.len());
            for (r, b) in messages.iter().zip(&bufs) {
                got.extend(r.segments(b).map(<[u8]>::to_vec));
            }
        }
        let want: Vec<Vec<u8>> = msgs.iter().map(|(h, p)| [*h, *p].concat()).collect();
        assert_eq!(got, want);
    }

    /// A loopback pair: the receiver bound with a timeout, the sender
    /// connected to it.
    fn loopback_pair() -> (Socket, Socket) {
        let rx = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
        rx.bind(&SockAddr::from(
            "127.0.0.1:0".parse::<SocketAddr>().unwrap(),
        ))
        .unwrap();
        rx.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let tx = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
        tx.connect(&rx.local_addr().unwrap()).unwrap();
        (rx, tx)
    }

    #[test]
    fn gro_messages_are_split_into_their_datagrams() {
        // A GSO send on loopback reaches a UDP_GRO socket as one message
        // with its segment size, as a NIC's GRO would coalesce it.
        let payload: Vec<u8> = (0..350u32).map(|i| i as u8).collect();
        for req in [GroRequest::On, GroRequest::Off] {
            let (rx, tx) = loopback_pair();
            assert_eq!(set_gro(&rx, req).unwrap(), req == GroRequest::On);
            setsockopt(&tx, libc::SOL_UDP, libc::UDP_SEGMENT, &100 as &libc::c_int).unwrap();
            tx.send(&payload).unwrap();
            let mut bufs = vec![vec![0u8; MAX_UDP_PAYLOAD]; 8];
            let mut batch = MsgBatch::<1>::new(8);
            let (mut got, mut messages) = (Vec::new(), Vec::new());
            while got.len() < 4 {
                batch.recv(&rx, &mut bufs, &mut messages).unwrap();
                assert!(
                    !messages.is_empty(),
                    "timed out after {} datagrams",
                    got.len()
                );
                for (r, b) in messages.iter().zip(&bufs) {
                    got.extend(r.segments(b).map(<[u8]>::to_vec));
                }
                if req == GroRequest::On {
                    assert_eq!(messages[0].len, 350);
                    assert_eq!(messages[0].segment, 100);
                }
            }
            let want: Vec<Vec<u8>> = payload.chunks(100).map(<[u8]>::to_vec).collect();
            assert_eq!(got, want, "{req:?}");
        }
    }
}
