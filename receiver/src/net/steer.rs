//! XDP steering: loads `ebpf/xdpcast.bpf.c` (compiled by `build.rs` and
//! embedded in the binary), attaches it to an interface and feeds its maps.
//!
//! The program redirects UDP datagrams for the session's `group:port` to the
//! AF_XDP socket registered for the receiving queue ([`Steering::register_socket`])
//! and passes every other frame to the kernel stack untouched.
//!
//! # Lifetime of the attachment
//!
//! [`Steering::attach`] uses aya's [`Xdp::attach`], which on kernels >= 5.9
//! creates a *bpf_link* (`BPF_LINK_CREATE`) rather than a netlink attachment.
//! The link lives exactly as long as its file descriptor: dropping
//! [`Steering`] closes it, and so does the kernel when the process dies for
//! any reason (including `kill -9`). The program can therefore never stay
//! on the interface after the process is gone (verified on 6.18 with veth).
//! Programs attached by other tools through netlink (e.g. `ip link set dev X
//! xdpgeneric obj ...`) do persist; [`cleanup`] removes those.

use std::fmt;
use std::io::{self, Read as _};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::BorrowedFd;
use std::time::Duration;

use aya::maps::{Array, MapData, MapError, PerCpuArray, XskMap};
use aya::programs::links::Link as _;
use aya::programs::{ProgramError, Xdp, XdpFlags};
use aya::{Ebpf, EbpfError, EbpfLoader};
use socket2::{Domain, Protocol, Socket, Type};

/// The compiled XDP object (see `build.rs`); aligned as required by the ELF parser.
static XDPCAST_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdpcast.bpf.o"));

/// The multi-buffer aware program (`xdp.frags`), and the same code without
/// the frags flag for kernels that refuse it.
const PROGRAM_NAME: &str = "xdpcast";
const LINEAR_PROGRAM_NAME: &str = "xdpcast_linear";
const MAP_CONFIG: &str = "XDPCAST_CONFIG";
const MAP_XSKS: &str = "XDPCAST_XSKS";
const MAP_STATS: &str = "XDPCAST_STATS";
const MAP_UNSERVED: &str = "XDPCAST_UNSERVED";
/// RX queues with a slot in `XDPCAST_UNSERVED` (and in the XSKMAP).
pub const QUEUE_SLOTS: u32 = 64;

/// Indices into `XDPCAST_STATS` (must match `enum xdpcast_stat` in the C source).
const STAT_MATCHED: u32 = 0;
const STAT_REDIRECTED: u32 = 1;
const STAT_NO_SOCKET: u32 = 2;
const STAT_PASSED: u32 = 3;
const STAT_INJECTED_DROP: u32 = 4;
const STAT_FOREIGN_SOURCE: u32 = 5;

/// VLAN id bits of an 802.1Q tag.
const VLAN_VID_MASK: u16 = 0x0fff;

const FAMILY_V4: u8 = 4;
const FAMILY_V6: u8 = 6;

/// Mirror of `struct xdpcast_config` in `ebpf/xdpcast.bpf.c` (60 bytes, no padding).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct XdpcastConfig {
    /// IPv4 group in network byte order.
    group4: [u8; 4],
    /// UDP destination port in network byte order.
    port: [u8; 2],
    enabled: u8,
    family: u8,
    drop_per_million: u32,
    /// IPv6 group in network byte order.
    group6: [u8; 16],
    /// Sender's IPv4 address in network byte order (with `source_set`).
    source4: [u8; 4],
    /// 1: frames of the group from other sources are dropped.
    source_set: u8,
    pad: [u8; 3],
    /// Sender's IPv6 address (with `source_set`).
    source6: [u8; 16],
    /// This host's IPv4 address in network byte order, steered as well
    /// (0: none).
    unicast4: [u8; 4],
    /// VLAN id, host byte order (with `vlan_set`).
    vlan: u16,
    /// 1: frames tagged for VLAN `vlan` only; 0: untagged frames only.
    vlan_set: u8,
    pad2: u8,
}

const _: () = assert!(std::mem::size_of::<XdpcastConfig>() == 60);

// SAFETY: `XdpcastConfig` is `repr(C)`, consists only of integers and byte
// arrays, has no padding (size asserted above) and every bit pattern is valid.
unsafe impl aya::Pod for XdpcastConfig {}

/// The XDP mode the program ended up attached in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// Driver (native) mode: runs in the driver before an skb is allocated.
    Native,
    /// Generic (skb) mode: runs after skb allocation; works with every driver.
    Generic,
}

impl AttachMode {
    fn flags(self) -> XdpFlags {
        match self {
            AttachMode::Native => XdpFlags::DRV_MODE,
            AttachMode::Generic => XdpFlags::SKB_MODE,
        }
    }
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachMode::Native => "native (driver)",
            AttachMode::Generic => "generic (skb)",
        })
    }
}

/// Which XDP mode [`Steering::attach`] should use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttachRequest {
    /// Native mode; if the driver refuses, fall back to generic mode (logged as a warning).
    #[default]
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (skb) mode only.
    Generic,
}

/// Counters of the XDP program, summed over all CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SteerStats {
    /// Frames that matched the session's group:port.
    pub matched: u64,
    /// Matched frames redirected to an AF_XDP socket.
    pub redirected: u64,
    /// Matched frames passed to the stack because their queue had no socket.
    pub no_socket: u64,
    /// Non-matching frames passed to the stack.
    pub passed: u64,
    /// Matched frames dropped by test loss injection ([`Steering::set_drop_per_million`]).
    pub injected_drops: u64,
    /// Frames of the group dropped for coming from another address than
    /// the sender's ([`Steering::set_source`]).
    pub foreign_source: u64,
}

/// Errors of the steering (XDP program) layer.
#[derive(Debug, thiserror::Error)]
pub enum SteerError {
    /// The caller lacks the privileges for a BPF or netlink operation.
    #[error("{op}: permission denied (needs root or CAP_BPF+CAP_NET_ADMIN)")]
    PermissionDenied {
        /// What was attempted.
        op: &'static str,
    },
    /// The interface does not exist (in this network namespace).
    #[error("no such network interface: {0}")]
    NoSuchInterface(String),
    /// Another XDP program is attached to the interface.
    #[error(
        "another XDP program (id {prog_id}) is already attached to {iface}; \
         remove it with `xdpcast cleanup --iface {iface}`"
    )]
    AlreadyAttached {
        /// Interface name.
        iface: String,
        /// Kernel id of the attached program.
        prog_id: u32,
    },
    /// The program on the interface is held by a bpf_link and cannot be removed via netlink.
    #[error(
        "the XDP program on {iface} is attached through a bpf_link owned by a running \
         process (or a pinned link); stop that process or unpin the link"
    )]
    HeldByLink {
        /// Interface name.
        iface: String,
    },
    /// Parsing the embedded object or creating its maps failed.
    #[error("failed to load the embedded XDP object")]
    LoadObject(#[source] EbpfError),
    /// Loading the program failed (the message includes the verifier log).
    #[error("failed to load the XDP program")]
    LoadProgram(#[source] ProgramError),
    /// The object does not contain the expected program or map.
    #[error("embedded XDP object lacks `{0}` (build mismatch)")]
    MissingItem(&'static str),
    /// Attaching the program failed.
    #[error("failed to attach the XDP program to {iface} in {mode} mode")]
    Attach {
        /// Interface name.
        iface: String,
        /// The mode tried last.
        mode: AttachMode,
        /// The underlying error.
        #[source]
        source: ProgramError,
    },
    /// Detaching the program failed.
    #[error("failed to detach the XDP program from {iface}")]
    Detach {
        /// Interface name.
        iface: String,
        /// The underlying error.
        #[source]
        source: ProgramError,
    },
    /// The queue id does not fit into the XSKMAP.
    #[error("rx queue {queue} is out of range: the XSKMAP holds queues 0..{max}")]
    QueueOutOfRange {
        /// Requested queue.
        queue: u32,
        /// Number of XSKMAP slots.
        max: u32,
    },
    /// A BPF map operation failed.
    #[error("BPF map {map}: {op} failed")]
    Map {
        /// Map name.
        map: &'static str,
        /// Operation.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: MapError,
    },
    /// A netlink request failed.
    #[error("netlink {op} for {iface} failed")]
    Netlink {
        /// Operation.
        op: &'static str,
        /// Interface name.
        iface: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// Finds the first OS error code in an error's `source()` chain.
fn errno_of(err: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(code) = e
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
        {
            return Some(code);
        }
        cur = e.source();
    }
    None
}

fn is_eperm(err: &(dyn std::error::Error + 'static)) -> bool {
    errno_of(err) == Some(libc::EPERM)
}

/// An attached xdpcast XDP program. Dropping it detaches the program.
pub struct Steering {
    // Field order = drop order: the link goes first, so the program is off the
    // interface before anything else is released.
    link: Option<aya::programs::xdp::XdpLink>,
    iface: String,
    mode: AttachMode,
    multi_buffer: bool,
    config: Array<MapData, XdpcastConfig>,
    config_value: XdpcastConfig,
    xsks: XskMap<MapData>,
    stats: PerCpuArray<MapData, u64>,
    unserved: PerCpuArray<MapData, u64>,
    /// Owns the loaded program (the maps above were taken out of it).
    _ebpf: Ebpf,
}

impl fmt::Debug for Steering {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Steering")
            .field("iface", &self.iface)
            .field("mode", &self.mode)
            .field("config", &self.config_value)
            .finish_non_exhaustive()
    }
}

impl Steering {
    /// Loads the XDP program, configures it for UDP to `group:port` and attaches
    /// it to `iface`.
    ///
    /// Fails with [`SteerError::AlreadyAttached`] if any XDP program is already
    /// attached to `iface`. With [`AttachRequest::Auto`], a refused native attach
    /// is retried in generic mode (with a `log::warn!`).
    pub fn attach(
        iface: &str,
        group: IpAddr,
        port: u16,
        req: AttachRequest,
    ) -> Result<Steering, SteerError> {
        let link_info = query_link(iface)?;
        if let Some(prog_id) = link_info.any_prog() {
            return Err(SteerError::AlreadyAttached {
                iface: iface.to_string(),
                prog_id,
            });
        }

        let mut config_value = XdpcastConfig {
            group4: [0; 4],
            port: port.to_be_bytes(),
            enabled: 1,
            family: FAMILY_V4,
            drop_per_million: 0,
            group6: [0; 16],
            source4: [0; 4],
            source_set: 0,
            pad: [0; 3],
            source6: [0; 16],
            unicast4: [0; 4],
            vlan: 0,
            vlan_set: 0,
            pad2: 0,
        };
        match group {
            IpAddr::V4(g) => config_value.group4 = g.octets(),
            IpAddr::V6(g) => {
                config_value.family = FAMILY_V6;
                config_value.group6 = g.octets();
            }
        }

        let mut ebpf = EbpfLoader::new().load(XDPCAST_OBJ).map_err(|e| {
            if is_eperm(&e) {
                SteerError::PermissionDenied {
                    op: "creating BPF maps",
                }
            } else {
                SteerError::LoadObject(e)
            }
        })?;

        let mut config: Array<MapData, XdpcastConfig> = take_map(&mut ebpf, MAP_CONFIG)?;
        let xsks: XskMap<MapData> = take_map(&mut ebpf, MAP_XSKS)?;
        let stats: PerCpuArray<MapData, u64> = take_map(&mut ebpf, MAP_STATS)?;
        let unserved: PerCpuArray<MapData, u64> = take_map(&mut ebpf, MAP_UNSERVED)?;
        config
            .set(0, config_value, 0)
            .map_err(|source| map_err(MAP_CONFIG, "update", source))?;

        let name = match load_program(&mut ebpf, PROGRAM_NAME) {
            Ok(()) => PROGRAM_NAME,
            Err(SteerError::LoadProgram(e)) => {
                log::warn!(
                    "the kernel refused the multi-buffer XDP program ({}); using the \
                     single-buffer one, so frames larger than a UMEM frame cannot be received",
                    error_chain(&e)
                );
                load_program(&mut ebpf, LINEAR_PROGRAM_NAME)?;
                LINEAR_PROGRAM_NAME
            }
            Err(e) => return Err(e),
        };
        let multi_buffer = name == PROGRAM_NAME;
        let program = xdp_program(&mut ebpf, name)?;

        let (link_id, mode) = match req {
            AttachRequest::Native => (
                attach_mode(program, iface, AttachMode::Native)?,
                AttachMode::Native,
            ),
            AttachRequest::Generic => (
                attach_mode(program, iface, AttachMode::Generic)?,
                AttachMode::Generic,
            ),
            AttachRequest::Auto => match attach_mode(program, iface, AttachMode::Native) {
                Ok(id) => (id, AttachMode::Native),
                Err(
                    e @ (SteerError::PermissionDenied { .. } | SteerError::AlreadyAttached { .. }),
                ) => return Err(e),
                Err(e) => {
                    log::warn!(
                        "native XDP attach on {iface} failed ({}), falling back to generic (skb) mode",
                        error_chain(&e)
                    );
                    (
                        attach_mode(program, iface, AttachMode::Generic)?,
                        AttachMode::Generic,
                    )
                }
            },
        };
        let link = program
            .take_link(link_id)
            .map_err(|source| SteerError::Attach {
                iface: iface.to_string(),
                mode,
                source,
            })?;
        log::info!(
            "xdpcast XDP program attached to {iface} in {mode} mode for {group} port {port}"
        );

        Ok(Steering {
            link: Some(link),
            iface: iface.to_string(),
            mode,
            multi_buffer,
            config,
            config_value,
            xsks,
            stats,
            unserved,
            _ebpf: ebpf,
        })
    }

    /// The mode the program is attached in.
    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    /// Whether the program hands frames larger than one buffer to AF_XDP
    /// (as fragments; the sockets must then be bound with `XDP_USE_SG`).
    pub fn multi_buffer(&self) -> bool {
        self.multi_buffer
    }

    /// Directs matched frames received on rx queue `queue` to the AF_XDP socket `fd`
    /// (an [`crate::net::rings::XskQueue`] bound to the same interface and queue).
    pub fn register_socket(&mut self, queue: u32, fd: BorrowedFd<'_>) -> Result<(), SteerError> {
        let max = self.xsks.len();
        if queue >= max {
            return Err(SteerError::QueueOutOfRange { queue, max });
        }
        self.xsks
            .set(queue, fd, 0)
            .map_err(|source| map_err(MAP_XSKS, "update", source))
    }

    /// Test loss injection: drop each matched frame with probability `ppm / 1_000_000`
    /// (values >= 1_000_000 drop everything, 0 disables).
    pub fn set_drop_per_million(&mut self, ppm: u32) -> Result<(), SteerError> {
        let mut value = self.config_value;
        value.drop_per_million = ppm;
        self.config
            .set(0, value, 0)
            .map_err(|source| map_err(MAP_CONFIG, "update", source))?;
        self.config_value = value;
        Ok(())
    }

    /// Drop the group's frames from any other address than `source` in the
    /// program itself (counted in [`SteerStats::foreign_source`]).
    pub fn set_source(&mut self, source: IpAddr) -> Result<(), SteerError> {
        let mut value = self.config_value;
        value.source_set = 1;
        match source {
            IpAddr::V4(a) => value.source4 = a.octets(),
            IpAddr::V6(a) => value.source6 = a.octets(),
        }
        self.config
            .set(0, value, 0)
            .map_err(|source| map_err(MAP_CONFIG, "update", source))?;
        self.config_value = value;
        Ok(())
    }

    /// Also steer UDP to `local` (this host's IPv4 address) and the
    /// session's port: where udpcast's point-to-point mode sends the data.
    pub fn set_unicast(&mut self, local: Ipv4Addr) -> Result<(), SteerError> {
        let mut value = self.config_value;
        value.unicast4 = local.octets();
        self.config
            .set(0, value, 0)
            .map_err(|source| map_err(MAP_CONFIG, "update", source))?;
        self.config_value = value;
        Ok(())
    }

    /// Take the session's frames tagged for VLAN `vid` (802.1Q) only, for
    /// a program on a trunk port; None (the default): untagged frames only.
    /// Either way a frame of another VLAN is passed to the kernel.
    pub fn set_vlan(&mut self, vid: Option<u16>) -> Result<(), SteerError> {
        let mut value = self.config_value;
        value.vlan_set = u8::from(vid.is_some());
        value.vlan = vid.unwrap_or(0) & VLAN_VID_MASK;
        self.config
            .set(0, value, 0)
            .map_err(|source| map_err(MAP_CONFIG, "update", source))?;
        self.config_value = value;
        Ok(())
    }

    /// Reads the program's counters, summed over all CPUs.
    pub fn stats(&self) -> Result<SteerStats, SteerError> {
        let sum = |idx: u32| per_cpu_sum(&self.stats, MAP_STATS, idx);
        Ok(SteerStats {
            matched: sum(STAT_MATCHED)?,
            redirected: sum(STAT_REDIRECTED)?,
            no_socket: sum(STAT_NO_SOCKET)?,
            passed: sum(STAT_PASSED)?,
            injected_drops: sum(STAT_INJECTED_DROP)?,
            foreign_source: sum(STAT_FOREIGN_SOURCE)?,
        })
    }

    /// Matched frames that arrived on RX queues without a registered socket
    /// (passed to the kernel), per queue: `(queue, frames)` for every queue
    /// below [`QUEUE_SLOTS`] that had any. Frames on higher queues are only
    /// in [`SteerStats::no_socket`]. One map lookup per slot: call it when
    /// `no_socket` has moved, not on every tick.
    pub fn unserved_queues(&self) -> Result<Vec<(u32, u64)>, SteerError> {
        let mut out = Vec::new();
        for q in 0..QUEUE_SLOTS {
            let n = per_cpu_sum(&self.unserved, MAP_UNSERVED, q)?;
            if n > 0 {
                out.push((q, n));
            }
        }
        Ok(out)
    }

    /// Detaches the program from the interface (also done by `Drop`, which only logs errors).
    pub fn detach(mut self) -> Result<(), SteerError> {
        match self.link.take() {
            Some(link) => link.detach().map_err(|source| SteerError::Detach {
                iface: self.iface.clone(),
                source,
            }),
            None => Ok(()),
        }
    }
}

impl Drop for Steering {
    fn drop(&mut self) {
        if let Some(link) = self.link.take() {
            if let Err(e) = link.detach() {
                log::warn!(
                    "detaching XDP program from {}: {}",
                    self.iface,
                    error_chain(&e)
                );
            }
        }
    }
}

/// Slot `idx` of a per-CPU counter map, summed over all CPUs.
fn per_cpu_sum(
    map: &PerCpuArray<MapData, u64>,
    name: &'static str,
    idx: u32,
) -> Result<u64, SteerError> {
    let values = map
        .get(&idx, 0)
        .map_err(|source| map_err(name, "lookup", source))?;
    Ok(values.iter().fold(0u64, |acc, v| acc.wrapping_add(*v)))
}

fn take_map<M>(ebpf: &mut Ebpf, name: &'static str) -> Result<M, SteerError>
where
    M: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(SteerError::MissingItem(name))?;
    M::try_from(map).map_err(|source| map_err(name, "open", source))
}

fn map_err(map: &'static str, op: &'static str, source: MapError) -> SteerError {
    if is_eperm(&source) {
        SteerError::PermissionDenied {
            op: "BPF map access",
        }
    } else {
        SteerError::Map { map, op, source }
    }
}

fn xdp_program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, SteerError> {
    ebpf.program_mut(name)
        .ok_or(SteerError::MissingItem(name))?
        .try_into()
        .map_err(|_| SteerError::MissingItem(name))
}

/// Load program `name` of the object into the kernel.
fn load_program(ebpf: &mut Ebpf, name: &'static str) -> Result<(), SteerError> {
    xdp_program(ebpf, name)?.load().map_err(|e| {
        if is_eperm(&e) {
            SteerError::PermissionDenied {
                op: "loading the XDP program",
            }
        } else {
            SteerError::LoadProgram(e)
        }
    })
}

fn attach_mode(
    program: &mut Xdp,
    iface: &str,
    mode: AttachMode,
) -> Result<aya::programs::xdp::XdpLinkId, SteerError> {
    program.attach(iface, mode.flags()).map_err(|source| {
        if let ProgramError::UnknownInterface { .. } = source {
            return SteerError::NoSuchInterface(iface.to_string());
        }
        match errno_of(&source) {
            Some(libc::EPERM) => SteerError::PermissionDenied {
                op: "attaching the XDP program",
            },
            Some(libc::EBUSY | libc::EEXIST) => SteerError::AlreadyAttached {
                iface: iface.to_string(),
                prog_id: query_link(iface)
                    .ok()
                    .and_then(|l| l.any_prog())
                    .unwrap_or(0),
            },
            _ => SteerError::Attach {
                iface: iface.to_string(),
                mode,
                source,
            },
        }
    })
}

/// Formats an error with all its sources, `a: b: c`.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        s.push_str(": ");
        s.push_str(&e.to_string());
        cur = e.source();
    }
    s
}

/// Removes any XDP program left on `iface` (generic, native and offloaded),
/// e.g. one attached through netlink by another tool or an old version.
///
/// Returns whether something was removed. Programs attached through a
/// bpf_link (as [`Steering`] does) cannot be removed this way; they disappear
/// with their owning process, and this returns [`SteerError::HeldByLink`].
pub fn cleanup(iface: &str) -> Result<bool, SteerError> {
    let info = query_link(iface)?;
    let mut removed = false;
    for (prog_id, flags) in [
        (info.skb_prog, XdpFlags::SKB_MODE),
        (info.drv_prog, XdpFlags::DRV_MODE),
        (info.hw_prog, XdpFlags::HW_MODE),
    ] {
        if prog_id == 0 {
            continue;
        }
        match netlink_detach(info.ifindex, flags.bits()) {
            Ok(()) => {
                log::info!("removed XDP program {prog_id} from {iface}");
                removed = true;
            }
            Err(e) => {
                return Err(match e.raw_os_error() {
                    Some(libc::EPERM) => SteerError::PermissionDenied {
                        op: "removing the XDP program",
                    },
                    Some(libc::EBUSY) => SteerError::HeldByLink {
                        iface: iface.to_string(),
                    },
                    Some(libc::ENODEV) => SteerError::NoSuchInterface(iface.to_string()),
                    _ => SteerError::Netlink {
                        op: "RTM_SETLINK (detach XDP)",
                        iface: iface.to_string(),
                        source: e,
                    },
                })
            }
        }
    }
    Ok(removed)
}

/// Returns the id of the XDP program attached to `iface` in any mode, if any.
pub fn attached_program(iface: &str) -> Result<Option<u32>, SteerError> {
    Ok(query_link(iface)?.any_prog())
}

// ---------------------------------------------------------------------------
// Minimal rtnetlink client (RTM_GETLINK / RTM_SETLINK with IFLA_XDP).

const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_SETLINK: u16 = 19;
const IFLA_IFNAME: u16 = 3;
const IFLA_XDP: u16 = 43;
const IFLA_EXT_MASK: u16 = 29;
const RTEXT_FILTER_SKIP_STATS: u32 = 1 << 3;
const IFLA_XDP_FD: u16 = 1;
const IFLA_XDP_FLAGS: u16 = 3;
const IFLA_XDP_PROG_ID: u16 = 4;
const IFLA_XDP_DRV_PROG_ID: u16 = 5;
const IFLA_XDP_SKB_PROG_ID: u16 = 6;
const IFLA_XDP_HW_PROG_ID: u16 = 7;
const NLA_F_NESTED: u16 = 1 << 15;
const NLA_TYPE_MASK: u16 = !(3 << 14);

/// XDP state of a link as reported by RTM_GETLINK.
#[derive(Debug, Default)]
struct LinkXdp {
    ifindex: i32,
    prog: u32,
    drv_prog: u32,
    skb_prog: u32,
    hw_prog: u32,
}

impl LinkXdp {
    fn any_prog(&self) -> Option<u32> {
        [self.prog, self.skb_prog, self.drv_prog, self.hw_prog]
            .into_iter()
            .find(|&id| id != 0)
    }
}

/// Builds a netlink message: header, `ifinfomsg` for `ifindex`, then `attrs`.
struct NlMsg(Vec<u8>);

impl NlMsg {
    fn new(msg_type: u16, flags: u16, seq: u32, ifindex: i32) -> Self {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched in finish()
        buf.extend_from_slice(&msg_type.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: kernel assigns
        buf.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]); // family, pad, type
        buf.extend_from_slice(&ifindex.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // flags
        buf.extend_from_slice(&0u32.to_ne_bytes()); // change
        NlMsg(buf)
    }

    fn attr(&mut self, kind: u16, payload: &[u8]) {
        let len = 4 + payload.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(payload);
        self.0.resize(self.0.len().next_multiple_of(4), 0);
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.0.len() as u32;
        self.0[..4].copy_from_slice(&len.to_ne_bytes());
        self.0
    }
}

/// Iterates over netlink attributes `(type without flags, payload)`.
fn nl_attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([buf[0], buf[1]]));
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return None;
        }
        let payload = &buf[4..len];
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
        Some((kind, payload))
    })
}

fn u32_attr(payload: &[u8]) -> u32 {
    payload
        .get(..4)
        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(0)
}

/// Sends one request and returns the matching reply messages `(type, payload)`
/// up to the final one (a single RTM_NEWLINK or the ACK/error).
fn nl_request(req: Vec<u8>, seq: u32) -> io::Result<(u16, Vec<u8>)> {
    let sock = Socket::new(
        Domain::from(libc::AF_NETLINK),
        Type::RAW,
        Some(Protocol::from(libc::NETLINK_ROUTE)),
    )?;
    sock.set_read_timeout(Some(Duration::from_secs(5)))?;
    // Unaddressed send on a netlink socket goes to the kernel (port id 0).
    sock.send(&req)?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = (&sock).read(&mut buf)?;
        let mut msgs = &buf[..n];
        while msgs.len() >= NLMSG_HDRLEN {
            let len = u32::from_ne_bytes([msgs[0], msgs[1], msgs[2], msgs[3]]) as usize;
            let kind = u16::from_ne_bytes([msgs[4], msgs[5]]);
            let msg_seq = u32::from_ne_bytes([msgs[8], msgs[9], msgs[10], msgs[11]]);
            if len < NLMSG_HDRLEN || len > msgs.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "malformed netlink reply",
                ));
            }
            let payload = &msgs[NLMSG_HDRLEN..len];
            if msg_seq == seq {
                if kind == NLMSG_ERROR {
                    let code = payload
                        .get(..4)
                        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                        .unwrap_or(-libc::EPROTO);
                    if code != 0 {
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                }
                return Ok((kind, payload.to_vec()));
            }
            msgs = &msgs[len.next_multiple_of(4).min(msgs.len())..];
        }
    }
}

fn query_link(iface: &str) -> Result<LinkXdp, SteerError> {
    if iface.is_empty() || iface.len() >= libc::IFNAMSIZ || iface.contains('\0') {
        return Err(SteerError::NoSuchInterface(iface.to_string()));
    }
    let seq = 1;
    let mut msg = NlMsg::new(RTM_GETLINK, NLM_F_REQUEST, seq, 0);
    let mut name = iface.as_bytes().to_vec();
    name.push(0);
    msg.attr(IFLA_IFNAME, &name);
    msg.attr(IFLA_EXT_MASK, &RTEXT_FILTER_SKIP_STATS.to_ne_bytes());
    let (kind, payload) = nl_request(msg.finish(), seq).map_err(|e| match e.raw_os_error() {
        Some(libc::ENODEV) => SteerError::NoSuchInterface(iface.to_string()),
        _ => SteerError::Netlink {
            op: "RTM_GETLINK",
            iface: iface.to_string(),
            source: e,
        },
    })?;
    if kind != RTM_NEWLINK || payload.len() < IFINFOMSG_LEN {
        return Err(SteerError::Netlink {
            op: "RTM_GETLINK",
            iface: iface.to_string(),
            source: io::Error::new(io::ErrorKind::InvalidData, "unexpected netlink reply"),
        });
    }
    let mut info = LinkXdp {
        ifindex: i32::from_ne_bytes([payload[4], payload[5], payload[6], payload[7]]),
        ..LinkXdp::default()
    };
    for (kind, attr) in nl_attrs(&payload[IFINFOMSG_LEN..]) {
        if kind != IFLA_XDP {
            continue;
        }
        for (xkind, x) in nl_attrs(attr) {
            match xkind {
                IFLA_XDP_PROG_ID => info.prog = u32_attr(x),
                IFLA_XDP_DRV_PROG_ID => info.drv_prog = u32_attr(x),
                IFLA_XDP_SKB_PROG_ID => info.skb_prog = u32_attr(x),
                IFLA_XDP_HW_PROG_ID => info.hw_prog = u32_attr(x),
                _ => {}
            }
        }
    }
    Ok(info)
}

/// RTM_SETLINK with IFLA_XDP { FD = -1, FLAGS = `flags` }: detaches the program in that mode.
fn netlink_detach(ifindex: i32, flags: u32) -> io::Result<()> {
    let seq = 2;
    let mut xdp = NlMsg(Vec::new());
    xdp.attr(IFLA_XDP_FD, &(-1i32).to_ne_bytes());
    xdp.attr(IFLA_XDP_FLAGS, &flags.to_ne_bytes());
    let mut msg = NlMsg::new(RTM_SETLINK, NLM_F_REQUEST | NLM_F_ACK, seq, ifindex);
    msg.attr(IFLA_XDP | NLA_F_NESTED, &xdp.0);
    nl_request(msg.finish(), seq).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nl_attrs_roundtrip() {
        let mut m = NlMsg(Vec::new());
        m.attr(IFLA_XDP_FD, &(-1i32).to_ne_bytes());
        m.attr(IFLA_IFNAME, b"veth0\0");
        let attrs: Vec<_> = nl_attrs(&m.0).collect();
        assert_eq!(attrs.len(), 2);
        assert_eq!(attrs[0], (IFLA_XDP_FD, &(-1i32).to_ne_bytes()[..]));
        assert_eq!(attrs[1], (IFLA_IFNAME, &b"veth0\0"[..]));
    }

    #[test]
    fn attach_mode_display() {
        assert_eq!(AttachMode::Native.to_string(), "native (driver)");
        assert_eq!(AttachMode::Generic.to_string(), "generic (skb)");
    }
}
