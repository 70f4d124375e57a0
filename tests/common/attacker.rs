//! The LAN attacker of the trust tests: threads inside a namespace,
//! datagrams multicast from a chosen address, and UDP datagrams with any
//! source address and port (a raw socket, as anyone on a segment can send
//! them), plus what the attacker hears of a session.

use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::time::Duration;

use super::Netns;
use xdpcast::proto::wire::{self, Control, Packet};

/// Start `f` on a thread inside namespace `ns` (sockets it opens live there).
pub fn spawn_in_netns<T: Send + 'static>(
    ns: &Netns,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    spawn_in_named_netns(ns.name.clone(), f)
}

/// [`spawn_in_netns`] by the namespace's name (for a thread that does
/// not hold the [`Netns`]).
fn spawn_in_named_netns<T: Send + 'static>(
    name: String,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/var/run/netns/{name}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: setns on this thread only, with a namespace fd we own.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
}

/// Run `f` inside namespace `ns` and wait for it.
pub fn in_netns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    spawn_in_netns(ns, f).join().unwrap()
}

/// The local ports of the UDP sockets in namespace `name` (IPv4).
pub fn udp_ports(name: &str) -> Vec<u16> {
    spawn_in_named_netns(name.to_owned(), || {
        // This thread's namespace's table, not the process's.
        let table = std::fs::read_to_string("/proc/thread-self/net/udp").unwrap();
        table
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().nth(1)?.split(':').nth(1))
            .filter_map(|port| u16::from_str_radix(port, 16).ok())
            .collect()
    })
    .join()
    .unwrap()
}

/// Multicast `packets` to `group` from `ns` on `iface`, from address
/// `from` (None: the interface's).
pub fn inject(ns: &Netns, iface: &str, group: &str, from: Option<IpAddr>, packets: Vec<Vec<u8>>) {
    let iface = iface.to_owned();
    let group: xdpcast::net::socket::Group = group.parse().unwrap();
    in_netns(ns, move || {
        let sock = xdpcast::net::socket::sender_socket(group, &iface, 1, from).unwrap();
        let to: socket2::SockAddr = group.0.into();
        for p in &packets {
            while sock.send_to(p, &to).is_err() {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    })
}

/// A raw IPv4 socket (call inside the attacker's namespace) that sends
/// UDP datagrams with any source address and port.
pub struct Spoofer {
    fd: std::os::fd::OwnedFd,
}

impl Spoofer {
    /// The socket; multicast leaves by the interface holding `via`.
    pub fn new(via: Ipv4Addr) -> Spoofer {
        // SAFETY: plain socket(2); the fd is owned right away.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        // SAFETY: fd was just returned by socket(2) and is not owned elsewhere.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let addr = libc::in_addr {
            s_addr: u32::from(via).to_be(),
        };
        // SAFETY: setsockopt with a valid in_addr and its size.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_MULTICAST_IF,
                (&addr as *const libc::in_addr).cast(),
                std::mem::size_of::<libc::in_addr>() as libc::socklen_t,
            )
        };
        assert_eq!(
            rc,
            0,
            "IP_MULTICAST_IF: {}",
            std::io::Error::last_os_error()
        );
        Spoofer { fd }
    }

    /// Send `payload` as a UDP datagram from `from` to `to`.
    pub fn send(&self, from: SocketAddrV4, to: SocketAddrV4, payload: &[u8]) {
        let total = 20 + 8 + payload.len();
        let mut p = Vec::with_capacity(total);
        p.extend_from_slice(&[0x45, 0, 0, 0]);
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        // id, fragment, TTL 1 (stays on the segment), UDP, checksum (the
        // kernel fills it in).
        p.extend_from_slice(&[0, 0, 0x40, 0, 1, 17, 0, 0]);
        p.extend_from_slice(&from.ip().octets());
        p.extend_from_slice(&to.ip().octets());
        p.extend_from_slice(&from.port().to_be_bytes());
        p.extend_from_slice(&to.port().to_be_bytes());
        p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]); // no UDP checksum (allowed on IPv4)
        p.extend_from_slice(payload);
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(*to.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        loop {
            // SAFETY: sendto with a buffer and a sockaddr_in we own, sizes given.
            let n = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    p.as_ptr().cast(),
                    p.len(),
                    0,
                    (&sa as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            if n >= 0 {
                return;
            }
            // A full socket buffer: wait a little, as a flooder would.
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// What the attacker hears of a session: its id, geometry and an announce.
#[derive(Debug, Clone, Copy)]
pub struct Heard {
    /// Session id.
    pub session: u32,
    /// Geometry.
    pub geometry: wire::Geometry,
    /// The announce's control block (digest, repair address, FEC).
    pub control: Control,
}

/// Join `group` on `iface` and wait for an announce (call inside a
/// namespace; `joined` is called once the socket listens).
pub fn hear_announce(group: &str, iface: &str, joined: impl FnOnce()) -> Heard {
    let group: xdpcast::net::socket::Group = group.parse().unwrap();
    let sock = xdpcast::net::socket::join(group, iface, 1 << 20, None).unwrap();
    joined();
    let sock: std::net::UdpSocket = sock.into();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut buf = [0u8; 9216];
    loop {
        let n = sock.recv(&mut buf).unwrap();
        if let Ok(Packet::Announce {
            session,
            geometry,
            control,
        }) = wire::parse(&buf[..n])
        {
            return Heard {
                session,
                geometry,
                control,
            };
        }
    }
}
