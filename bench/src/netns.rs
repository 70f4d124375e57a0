//! Network namespaces and veth pairs for tests, the demo and the benchmark
//! harness. Every namespace is deleted when its guard drops, so a failing
//! test or an interrupted run leaves nothing behind (the veth pair goes with
//! its namespaces). Addresses are 10.99.N.1/2 inside the namespaces only.

use std::os::fd::AsRawFd;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// True if namespace tests can run; panics if they should but cannot.
pub fn netns_allowed() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        return true;
    }
    if std::env::var("XDPCAST_SKIP_NETNS").as_deref() == Ok("1") {
        eprintln!("skipping: needs root (XDPCAST_SKIP_NETNS=1)");
        return false;
    }
    panic!("this test needs root for network namespaces and XDP; set XDPCAST_SKIP_NETNS=1 to skip it on a machine that cannot run it");
}

/// A unique name with `prefix`.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}-{}",
        std::process::id() % 100_000,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Run a command, panic with its output if it fails.
pub fn sh(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace, deleted on drop.
pub struct Netns {
    /// Name for `ip netns`.
    pub name: String,
}

impl Netns {
    /// A new namespace with `lo` up and multicast routed to it.
    pub fn new(prefix: &str) -> Netns {
        let name = unique(prefix);
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns.ip(&["link", "set", "lo", "multicast", "on"]);
        ns
    }

    /// `ip -n NAME ARGS...`
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// A command run inside the namespace.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
    /// Move the calling thread (not the process) into the namespace, for
    /// an in-process sender; the thread should end when done with it.
    pub fn enter_thread(&self) -> std::io::Result<()> {
        let f = std::fs::File::open(format!("/run/netns/{}", self.name))?;
        // SAFETY: setns on a valid namespace descriptor affects only the
        // calling thread's network namespace.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Two namespaces joined by a veth pair with `queues` queues each way:
/// `a` (sender side, 10.99.N.1) and `b` (receiver side, 10.99.N.2).
pub struct VethPair {
    /// Sender-side namespace.
    pub a: Netns,
    /// Receiver-side namespace.
    pub b: Netns,
    /// Interface in `a`.
    pub if_a: String,
    /// Interface in `b`.
    pub if_b: String,
    /// Address of `if_a`.
    pub addr_a: String,
    /// Address of `if_b`.
    pub addr_b: String,
}

impl VethPair {
    /// Create the pair; everything is deleted when it drops.
    pub fn new(queues: u32, mtu: u32) -> VethPair {
        let a = Netns::new("xdpc-a");
        let b = Netns::new("xdpc-b");
        let n = COUNTER.fetch_add(1, Ordering::Relaxed) % 250 + 1;
        let if_a = format!("xa{}", unique(""));
        let if_b = format!("xb{}", unique(""));
        let q = queues.to_string();
        sh(&[
            "ip",
            "link",
            "add",
            &if_a,
            "netns",
            &a.name,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
            "type",
            "veth",
            "peer",
            "name",
            &if_b,
            "netns",
            &b.name,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
        ]);
        let addr_a = format!("10.99.{n}.1");
        let addr_b = format!("10.99.{n}.2");
        let mtu = mtu.to_string();
        for (ns, ifc, addr) in [(&a, &if_a, &addr_a), (&b, &if_b, &addr_b)] {
            // No duplicate address detection: the IPv6 link-local address is
            // usable as soon as the link is up (where IPv6 is enabled).
            let _ = ns
                .cmd("sh")
                .args([
                    "-c",
                    &format!("echo 0 > /proc/sys/net/ipv6/conf/{ifc}/accept_dad"),
                ])
                .status();
            ns.ip(&["link", "set", ifc, "mtu", &mtu]);
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", ifc]);
            ns.ip(&["link", "set", ifc, "up"]);
            ns.ip(&["route", "add", "224.0.0.0/4", "dev", ifc]);
        }
        VethPair {
            a,
            b,
            if_a,
            if_b,
            addr_a,
            addr_b,
        }
    }

    /// Whether an XDP program is attached to the receiver-side interface.
    pub fn xdp_attached_b(&self) -> bool {
        let out = self.b.ip(&["-d", "link", "show", "dev", &self.if_b]);
        String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
    }
}

/// One host on a [`Lan`].
pub struct Host {
    /// The host's namespace.
    pub ns: Netns,
    /// Its interface.
    pub iface: String,
    /// Its address.
    pub addr: String,
}

/// Hosts on one Ethernet segment: a bridge (multicast snooping off, so the
/// group reaches every port) in a hub namespace, and one namespace per host
/// joined to it by a veth pair. Host i is 10.98.N.(i+1).
pub struct Lan {
    /// The hosts, in order.
    pub hosts: Vec<Host>,
    _hub: Netns,
}

impl Lan {
    /// A segment of `n` hosts (at most 250).
    pub fn new(n: usize) -> Lan {
        let hub = Netns::new("xdpc-hub");
        hub.ip(&[
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ]);
        hub.ip(&["link", "set", "br0", "up"]);
        let net = COUNTER.fetch_add(1, Ordering::Relaxed) % 250 + 1;
        let hosts = (0..n)
            .map(|i| {
                let ns = Netns::new("xdpc-h");
                let iface = format!("h{}", unique(""));
                let port = format!("p{}", unique(""));
                sh(&[
                    "ip", "link", "add", &iface, "netns", &ns.name, "type", "veth", "peer", "name",
                    &port, "netns", &hub.name,
                ]);
                hub.ip(&["link", "set", &port, "master", "br0"]);
                hub.ip(&["link", "set", &port, "up"]);
                let addr = format!("10.98.{net}.{}", i + 1);
                ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", &iface]);
                ns.ip(&["link", "set", &iface, "up"]);
                ns.ip(&["route", "add", "224.0.0.0/4", "dev", &iface]);
                Host { ns, iface, addr }
            })
            .collect();
        Lan { hosts, _hub: hub }
    }
}
