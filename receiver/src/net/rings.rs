//! AF_XDP receive sockets (one socket with its own UMEM per rx queue).
//!
//! Built on the pure-Rust `xdpilone` crate rather than `xsk-rs`: it needs no
//! libbpf/libxdp C build and never loads an XDP program of its own, so the
//! only program on the interface is ours (see [`crate::net::steer`]). Frames are
//! steered into a socket by registering its fd in the XSKMAP with
//! [`crate::net::steer::Steering::register_socket`].
//!
//! Each [`XskQueue`] owns an anonymous mmap'd UMEM of `frame_count` frames of
//! `frame_size` bytes, an rx ring and a fill ring (plus the mandatory, unused
//! completion ring). Received frames are handed to the caller, which
//! either lets them go back to the fill ring at once or keeps them (a
//! block handed to the copier in its frame) and gives them back later
//! ([`XskQueue::give_back`]); the fill ring is kept as full as possible.

use std::ffi::CString;
use std::io;
use std::num::NonZeroU32;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::{Duration, Instant};

use memmap2::{MmapMut, MmapOptions};
use xdpilone::{DeviceQueue, IfInfo, RingRx, Socket, SocketConfig, Umem, UmemConfig, User};

/// `SOL_XDP` socket option level.
const SOL_XDP: libc::c_int = 283;
/// `XDP_OPTIONS` getsockopt.
const XDP_OPTIONS: libc::c_int = 8;
/// `XDP_OPTIONS_ZEROCOPY` flag in `struct xdp_options`.
const XDP_OPTIONS_ZEROCOPY: u32 = 1;
/// `XDP_USE_SG` bind flag: frames larger than a UMEM frame arrive in several.
const XDP_USE_SG: u16 = 1 << 4;
/// `XDP_PKT_CONTD` descriptor option: more fragments of this packet follow.
const XDP_PKT_CONTD: u32 = 1;
/// Largest packet reassembled from fragments (IPv4's 64 KiB plus headers).
const MAX_PACKET: usize = 65_536 + 256;

/// How long [`XskQueue::open`] keeps trying a busy queue, and how often.
pub const BUSY_GRACE: Duration = Duration::from_secs(10);
const BUSY_RETRY: Duration = Duration::from_millis(100);

/// How the socket is bound to the device queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CopyMode {
    /// Zero-copy if the driver supports it, copy mode otherwise (decided by the kernel).
    #[default]
    Auto,
    /// Zero-copy only; fails on drivers without AF_XDP zero-copy support (e.g. veth).
    ZeroCopy,
    /// Copy mode only.
    Copy,
}

/// Default UMEM frames per socket: twice the ring, so the fill ring stays
/// full while the worker holds a whole ring's worth. At MTU 1500 the frames
/// are 2 KiB ([`frame_size_for_mtu`]): 64 MiB per socket.
pub const DEFAULT_FRAMES: u32 = 32_768;
/// Default rx/fill ring entries. When the worker is not scheduled (on a
/// busy machine, other work's softirq runs ahead of every thread), the
/// kernel fills the rx ring from the fill ring; frames beyond this many are
/// dropped. 16384 frames of 1500 bytes are about 20 ms of 10 GbE line rate,
/// 130 ms at 1.5 Gbit/s and 370 ms at 500 Mbit/s. Storage never stalls the
/// worker (see `store::writer`), so only scheduling does.
pub const DEFAULT_RING: u32 = 16_384;
/// Ring entries for `frames` UMEM frames when none are asked for:
/// [`DEFAULT_RING`], or the largest power of two up to `frames` when that
/// is less (so that `--frames` alone, as set before the default ring grew,
/// still gives a valid configuration).
pub fn default_ring(frames: u32) -> u32 {
    match frames {
        0 => DEFAULT_RING,
        f => DEFAULT_RING.min(1 << f.ilog2()),
    }
}

/// The kernel's headroom before the packet in every UMEM frame
/// (`XDP_PACKET_HEADROOM`, include/uapi/linux/bpf.h).
const XDP_PACKET_HEADROOM: u32 = 256;
/// An Ethernet header with one VLAN tag.
const ETH_VLAN_HEADER: u32 = 18;

/// UMEM frame size for an interface MTU: 2 KiB when a whole Ethernet frame
/// fits after the kernel's headroom (MTU up to 1774), which doubles the
/// frames, so the stall the rings absorb, for the memory of 4 KiB frames;
/// otherwise 4 KiB, with larger frames in fragments (multi-buffer).
pub fn frame_size_for_mtu(mtu: u32) -> u32 {
    if mtu.saturating_add(ETH_VLAN_HEADER) <= 2048 - XDP_PACKET_HEADROOM {
        2048
    } else {
        4096
    }
}

/// Sizing of one AF_XDP socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XskConfig {
    /// Size of one UMEM frame: a power of two in 2048..=page size. The kernel
    /// reserves 256 bytes of headroom, so frames up to `frame_size - 256` bytes fit.
    /// The receiver picks it from the interface MTU ([`frame_size_for_mtu`]).
    pub frame_size: u32,
    /// Number of UMEM frames.
    pub frame_count: u32,
    /// Entries of the rx and fill rings (power of two).
    pub ring_size: u32,
    /// Maximum number of frames handled per [`XskQueue::poll_batch`] call.
    pub batch: u32,
    /// Zero-copy or copy mode.
    pub copy_mode: CopyMode,
    /// Bind with `XDP_USE_SG`, so that frames larger than a UMEM frame come
    /// as fragments (needs a multi-buffer XDP program, kernel 6.6+). If the
    /// kernel or driver refuses, the socket is bound without it.
    pub multi_buffer: bool,
}

impl Default for XskConfig {
    fn default() -> Self {
        XskConfig {
            frame_size: 4096,
            frame_count: DEFAULT_FRAMES,
            ring_size: DEFAULT_RING,
            batch: 64,
            copy_mode: CopyMode::Auto,
            multi_buffer: false,
        }
    }
}

/// Kernel statistics of one AF_XDP socket (`XDP_STATISTICS`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XskStats {
    /// Frames dropped for reasons other than a full rx ring / empty fill ring (e.g. too large).
    pub rx_dropped: u64,
    /// Invalid descriptors seen on the fill ring.
    pub rx_invalid_descs: u64,
    /// Frames dropped because the rx ring was full (receiver too slow).
    pub rx_ring_full: u64,
    /// Times the kernel found the fill ring empty.
    pub fill_ring_empty: u64,
}

/// Errors of the AF_XDP socket layer.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// The interface does not exist (in this network namespace).
    #[error("no such network interface: {0}")]
    NoSuchInterface(String),
    /// The configuration is invalid.
    #[error("invalid AF_XDP configuration: {0}")]
    InvalidConfig(String),
    /// The caller lacks privileges.
    #[error("{op}: permission denied (AF_XDP needs root or CAP_NET_RAW+CAP_NET_ADMIN)")]
    PermissionDenied {
        /// What was attempted.
        op: &'static str,
    },
    /// Zero-copy was requested but the driver does not support it.
    #[error("zero-copy AF_XDP is not supported on {iface} queue {queue} (use copy mode)")]
    ZeroCopyUnsupported {
        /// Interface name.
        iface: String,
        /// Queue id.
        queue: u32,
    },
    /// Another AF_XDP socket is bound to the queue (still, after
    /// [`BUSY_GRACE`]).
    #[error("{iface} queue {queue} is busy: another AF_XDP socket is bound to it")]
    QueueBusy {
        /// Interface name.
        iface: String,
        /// Queue id.
        queue: u32,
    },
    /// An operating-system call failed.
    #[error("AF_XDP {op} failed on {iface} queue {queue}")]
    Os {
        /// Operation.
        op: &'static str,
        /// Interface name.
        iface: String,
        /// Queue id.
        queue: u32,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Reading the queue count from sysfs failed.
    #[error("cannot read rx queues of {iface} from /sys/class/net")]
    Sysfs {
        /// Interface name.
        iface: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// One AF_XDP socket with its own UMEM, bound to `(ifindex, queue_id)` for receiving.
pub struct XskQueue {
    // Field order = drop order: rings and socket first, the UMEM memory last.
    rx: RingRx,
    /// Fill (and unused completion) ring; also owns the socket fd.
    device: DeviceQueue,
    /// UMEM frame addresses owned by user space, waiting to go to the fill ring.
    free: Vec<u64>,
    /// The fragments so far of a packet whose last fragment has not come
    /// yet (multi-buffer sockets); may span calls to `poll_batch`.
    partial: Vec<u8>,
    /// The packet being gathered had a bad fragment: drop it whole.
    partial_bad: bool,
    /// Clears the offset-within-frame bits of a descriptor address.
    frame_mask: u64,
    batch: u32,
    zero_copy: bool,
    iface: String,
    queue: u32,
    /// Frames in the UMEM.
    frames: usize,
    /// Shared with whoever holds kept frames: the mapping stays until the
    /// last of them is done with it, even after this socket is closed.
    umem: Arc<MmapMut>,
}

impl std::fmt::Debug for XskQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XskQueue")
            .field("iface", &self.iface)
            .field("queue", &self.queue)
            .field("fd", &self.device.as_raw_fd())
            .field("zero_copy", &self.zero_copy)
            .finish_non_exhaustive()
    }
}

fn validate(cfg: &XskConfig) -> Result<(), RingError> {
    let page = page_size();
    let bad = |msg: String| Err(RingError::InvalidConfig(msg));
    if !cfg.frame_size.is_power_of_two() || cfg.frame_size < 2048 || cfg.frame_size as usize > page
    {
        return bad(format!(
            "frame_size {} must be a power of two in 2048..={page}",
            cfg.frame_size
        ));
    }
    if !cfg.ring_size.is_power_of_two() {
        return bad(format!(
            "ring_size {} must be a power of two",
            cfg.ring_size
        ));
    }
    if cfg.frame_count == 0 || cfg.batch == 0 {
        return bad("frame_count and batch must be > 0".to_string());
    }
    if cfg.frame_count < cfg.ring_size {
        return bad(format!(
            "frame_count {} must be >= ring_size {} to keep the fill ring full",
            cfg.frame_count, cfg.ring_size
        ));
    }
    Ok(())
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).unwrap_or(4096)
}

impl XskQueue {
    /// Creates an AF_XDP socket with a fresh UMEM and binds it to rx queue `queue_id`
    /// of `iface` (with `XDP_USE_NEED_WAKEUP`).
    ///
    /// Frames only arrive once the socket is registered with
    /// [`crate::net::steer::Steering::register_socket`] for the same queue.
    ///
    /// A queue found busy is tried again for up to [`BUSY_GRACE`]: the kernel
    /// releases the queue of a closed socket in deferred work (the buffer
    /// pool is detached from the queue by a workqueue item that takes the
    /// RTNL lock), so a receiver restarted right after `kill -9` can find
    /// the queue still held by its dead predecessor while other processes
    /// hold RTNL, e.g. while namespaces are torn down.
    pub fn open(iface: &str, queue_id: u32, cfg: &XskConfig) -> Result<XskQueue, RingError> {
        validate(cfg)?;
        Self::open_any_buffer(iface, queue_id, cfg)
    }

    /// [`Self::open_with`], falling back to single-buffer frames when the
    /// kernel refuses multi-buffer AF_XDP.
    fn open_any_buffer(iface: &str, queue_id: u32, cfg: &XskConfig) -> Result<XskQueue, RingError> {
        match Self::open_with(iface, queue_id, cfg) {
            Err(RingError::Os {
                op: "bind", source, ..
            }) if cfg.multi_buffer
                && matches!(source.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP)) =>
            {
                log::warn!(
                    "{iface} queue {queue_id}: AF_XDP multi-buffer refused ({source}); \
                     frames larger than {} bytes will be dropped",
                    cfg.frame_size - XDP_PACKET_HEADROOM
                );
                let single = XskConfig {
                    multi_buffer: false,
                    ..cfg.clone()
                };
                Self::open_with(iface, queue_id, &single)
            }
            r => r,
        }
    }

    /// Bind the socket, trying a busy queue again for up to [`BUSY_GRACE`]
    /// with the same UMEM and rings (a failed bind leaves the socket
    /// unbound, so it may be bound again).
    fn bind(umem: &Umem, user: &User, iface: &str, queue_id: u32) -> Result<(), xdpilone::Errno> {
        let start = Instant::now();
        let mut told = false;
        loop {
            match umem.bind(user) {
                Err(e) if e.get_raw().abs() == libc::EBUSY && start.elapsed() < BUSY_GRACE => {
                    if !std::mem::replace(&mut told, true) {
                        log::info!(
                            "{iface} queue {queue_id} is busy; waiting up to {BUSY_GRACE:?} \
                             in case its socket is still being released"
                        );
                    }
                    std::thread::sleep(BUSY_RETRY);
                }
                r => return r,
            }
        }
    }

    fn open_with(iface: &str, queue_id: u32, cfg: &XskConfig) -> Result<XskQueue, RingError> {
        let os_err = |op: &'static str, e: xdpilone::Errno| {
            let errno = e.get_raw().abs();
            match errno {
                libc::EPERM | libc::EACCES => RingError::PermissionDenied { op },
                libc::ENODEV => RingError::NoSuchInterface(iface.to_string()),
                _ => RingError::Os {
                    op,
                    iface: iface.to_string(),
                    queue: queue_id,
                    source: io::Error::from_raw_os_error(errno),
                },
            }
        };

        let mut info = IfInfo::invalid();
        let name =
            CString::new(iface).map_err(|_| RingError::NoSuchInterface(iface.to_string()))?;
        info.from_name(&name)
            .map_err(|_| RingError::NoSuchInterface(iface.to_string()))?;
        info.set_queue(queue_id);

        let len = cfg.frame_size as usize * cfg.frame_count as usize;
        let mut umem_area =
            MmapOptions::new()
                .len(len)
                .map_anon()
                .map_err(|source| RingError::Os {
                    op: "UMEM mmap",
                    iface: iface.to_string(),
                    queue: queue_id,
                    source,
                })?;
        // Huge pages where the kernel has them (fewer TLB misses for the
        // copy out of the UMEM), then fault everything in now rather than on
        // the kernel's first copy into a frame. Both are advice: without
        // THP or MADV_POPULATE_WRITE (before 5.14) the kernel faults lazily.
        // SAFETY: advice on our own fresh anonymous mapping of `len` bytes.
        unsafe {
            let p = umem_area.as_mut_ptr().cast();
            libc::madvise(p, len, libc::MADV_HUGEPAGE);
            libc::madvise(p, len, libc::MADV_POPULATE_WRITE);
        }
        let base = NonNull::new(umem_area.as_mut_ptr()).ok_or_else(|| RingError::Os {
            op: "UMEM mmap",
            iface: iface.to_string(),
            queue: queue_id,
            source: io::Error::from(io::ErrorKind::OutOfMemory),
        })?;
        let area = NonNull::slice_from_raw_parts(base, len);

        let umem_cfg = UmemConfig {
            fill_size: cfg.ring_size,
            complete_size: cfg.ring_size,
            frame_size: cfg.frame_size,
            headroom: 0,
            flags: 0,
        };
        // SAFETY: `area` is a page-aligned anonymous mapping of exactly `len`
        // bytes that `umem_area` keeps alive for the whole life of the returned
        // XskQueue; it is dropped last (field order), after the rings and the
        // socket that reference it (later still if kept frames hold it).
        let umem = unsafe { Umem::new(umem_cfg, area) }.map_err(|e| match e.get_raw().abs() {
            libc::ENOBUFS | libc::ENOMEM => RingError::InvalidConfig(format!(
                "cannot register a {len} byte UMEM: exceeds RLIMIT_MEMLOCK or memory \
                 (run as root, grant CAP_IPC_LOCK, or reduce frame_count)"
            )),
            _ => os_err("socket creation / UMEM registration", e),
        })?;

        let sock = Socket::with_shared(&info, &umem).map_err(|e| os_err("socket setup", e))?;
        let device = umem
            .fq_cq(&sock)
            .map_err(|e| os_err("fill/completion ring setup", e))?;

        let mut bind_flags = SocketConfig::XDP_BIND_NEED_WAKEUP;
        match cfg.copy_mode {
            CopyMode::Auto => {}
            CopyMode::ZeroCopy => bind_flags |= SocketConfig::XDP_BIND_ZEROCOPY,
            CopyMode::Copy => bind_flags |= SocketConfig::XDP_BIND_COPY,
        }
        if cfg.multi_buffer {
            bind_flags |= XDP_USE_SG;
        }
        let user = umem
            .rx_tx(
                &sock,
                &SocketConfig {
                    rx_size: NonZeroU32::new(cfg.ring_size),
                    tx_size: None,
                    bind_flags,
                },
            )
            .map_err(|e| os_err("rx ring setup", e))?;
        let rx = user.map_rx().map_err(|e| os_err("rx ring mmap", e))?;
        Self::bind(&umem, &user, iface, queue_id).map_err(|e| match e.get_raw().abs() {
            libc::EOPNOTSUPP if cfg.copy_mode == CopyMode::ZeroCopy => {
                RingError::ZeroCopyUnsupported {
                    iface: iface.to_string(),
                    queue: queue_id,
                }
            }
            libc::EBUSY => RingError::QueueBusy {
                iface: iface.to_string(),
                queue: queue_id,
            },
            libc::EINVAL => match rx_queue_count(iface) {
                Ok(n) if queue_id >= n => RingError::InvalidConfig(format!(
                    "{iface} has no rx queue {queue_id} (it has {n})"
                )),
                _ => os_err("bind", e),
            },
            _ => os_err("bind", e),
        })?;

        let zero_copy = query_zero_copy(device.as_raw_fd()).map_err(|source| RingError::Os {
            op: "getsockopt(XDP_OPTIONS)",
            iface: iface.to_string(),
            queue: queue_id,
            source,
        })?;

        let frame_size = u64::from(cfg.frame_size);
        let free = (0..u64::from(cfg.frame_count))
            .map(|i| i * frame_size)
            .collect();
        let mut q = XskQueue {
            rx,
            device,
            free,
            partial: Vec::new(),
            partial_bad: false,
            frame_mask: !(frame_size - 1),
            batch: cfg.batch,
            zero_copy,
            iface: iface.to_string(),
            queue: queue_id,
            frames: cfg.frame_count as usize,
            umem: Arc::new(umem_area),
        };
        q.refill();
        log::debug!(
            "AF_XDP socket fd {} bound to {iface} queue {queue_id} ({} mode)",
            q.device.as_raw_fd(),
            if zero_copy { "zero-copy" } else { "copy" }
        );
        Ok(q)
    }

    /// Whether the socket is bound in zero-copy mode.
    pub fn zero_copy(&self) -> bool {
        self.zero_copy
    }

    /// Frames in the UMEM.
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// The UMEM mapping, for whoever keeps frames: it stays mapped as long
    /// as they hold it.
    pub fn memory(&self) -> Arc<MmapMut> {
        self.umem.clone()
    }

    /// Take back kept frames (their UMEM addresses, as `poll_batch` gave
    /// them), for the fill ring; empties `frames`.
    pub fn give_back(&mut self, frames: &mut Vec<u64>) {
        let umem_len = self.umem.len() as u64;
        // Only whole frames of this UMEM: a stray address would hand the
        // kernel a frame twice.
        self.free.extend(
            frames
                .drain(..)
                .filter(|&a| a < umem_len && a & !self.frame_mask == 0),
        );
    }

    /// Waits up to `timeout` for frames (poll(2) when the rx ring is empty), then
    /// hands each received Ethernet frame to `f` and returns the frames to the fill
    /// ring. `f` also gets the frame's UMEM address when the packet lies in one
    /// frame (not for a packet gathered from fragments); if it returns true it
    /// keeps the frame, which then stays out of the fill ring until
    /// [`Self::give_back`]. Handles at most `batch` frames; returns how many (0 on
    /// timeout or EINTR).
    pub fn poll_batch(
        &mut self,
        timeout: Duration,
        mut f: impl FnMut(&[u8], Option<u64>) -> bool,
    ) -> Result<usize, RingError> {
        if self.rx.available() == 0 {
            // Make sure the kernel has buffers before sleeping.
            self.refill();
            if !self.wait_readable(timeout)? {
                return Ok(0);
            }
        }

        let umem_len = self.umem.len();
        let base = self.umem.as_ptr();
        let mut done = 0usize;
        let mut read = self.rx.receive(self.batch);
        while let Some(desc) = read.read() {
            let addr = desc.addr & self.frame_mask;
            let start = usize::try_from(desc.addr).unwrap_or(usize::MAX);
            let len = desc.len as usize;
            let more = desc.options & XDP_PKT_CONTD != 0;
            let frame = if start.checked_add(len).is_some_and(|end| end <= umem_len) {
                // SAFETY: `start..start + len` lies inside the UMEM mapping (checked
                // above), which lives as long as `self`. The kernel handed this frame
                // to user space through the rx ring and will not write to it until
                // we put it back on the fill ring, which happens in `refill` after
                // this loop, when `frame` is gone (or, for a frame `f` keeps, after
                // `give_back`).
                Some(unsafe { std::slice::from_raw_parts(base.add(start), len) })
            } else {
                log::warn!(
                    "{} queue {}: ignoring out-of-range rx descriptor {}+{}",
                    self.iface,
                    self.queue,
                    desc.addr,
                    desc.len
                );
                None
            };
            match frame {
                // A whole packet in one frame: the common case, no copy.
                Some(frame) if !more && self.partial.is_empty() && !self.partial_bad => {
                    if !f(frame, Some(addr)) {
                        self.free.push(addr);
                    }
                    done += 1;
                    continue;
                }
                Some(frame) if self.partial.len() + frame.len() <= MAX_PACKET => {
                    self.partial.extend_from_slice(frame);
                }
                _ => self.partial_bad = true,
            }
            // A fragment: its bytes were gathered (or dropped); the frame
            // goes back.
            self.free.push(addr);
            if !more {
                if !self.partial_bad {
                    f(&self.partial, None);
                    done += 1;
                }
                self.partial.clear();
                self.partial_bad = false;
            }
        }
        read.release();
        drop(read);
        self.refill();
        Ok(done)
    }

    /// Reads the socket's kernel statistics.
    pub fn stats(&self) -> Result<XskStats, RingError> {
        let s = self.device.statistics_v2().map_err(|e| RingError::Os {
            op: "getsockopt(XDP_STATISTICS)",
            iface: self.iface.clone(),
            queue: self.queue,
            source: io::Error::from_raw_os_error(e.get_raw().abs()),
        })?;
        Ok(XskStats {
            rx_dropped: s.rx_dropped,
            rx_invalid_descs: s.rx_invalid_descs,
            rx_ring_full: s.rx_ring_full,
            fill_ring_empty: s.rx_fill_ring_empty_descs,
        })
    }

    /// Moves free frames to the fill ring and kicks the kernel if it asked for it.
    fn refill(&mut self) {
        if !self.free.is_empty() {
            let mut fill = self
                .device
                .fill(u32::try_from(self.free.len()).unwrap_or(u32::MAX));
            let n = fill.capacity() as usize;
            let keep = self.free.len() - n;
            fill.insert(self.free[keep..].iter().copied());
            fill.commit();
            drop(fill);
            self.free.truncate(keep);
        }
        if self.device.needs_wakeup() {
            // poll(2) on the socket triggers the driver's rx wakeup.
            self.device.wake();
        }
    }

    /// poll(2) for POLLIN; returns whether the socket became readable.
    fn wait_readable(&self, timeout: Duration) -> Result<bool, RingError> {
        let ms = timeout.as_nanos().div_ceil(1_000_000);
        let ms = libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX);
        let mut pfd = libc::pollfd {
            fd: self.device.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is a valid pollfd for the duration of the call and nfds is 1.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINTR) {
                return Ok(false);
            }
            return Err(RingError::Os {
                op: "poll",
                iface: self.iface.clone(),
                queue: self.queue,
                source: err,
            });
        }
        Ok(rc > 0 && pfd.revents & libc::POLLIN != 0)
    }
}

impl AsRawFd for XskQueue {
    /// The AF_XDP socket fd, for [`crate::net::steer::Steering::register_socket`].
    fn as_raw_fd(&self) -> RawFd {
        self.device.as_raw_fd()
    }
}

impl AsFd for XskQueue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the fd is owned by `self.device` (shared with `self.rx`) and
        // stays open for as long as `self` lives, which bounds the borrow.
        unsafe { BorrowedFd::borrow_raw(self.device.as_raw_fd()) }
    }
}

fn query_zero_copy(fd: RawFd) -> io::Result<bool> {
    let mut flags: u32 = 0;
    let mut len = std::mem::size_of::<u32>() as libc::socklen_t;
    // SAFETY: `flags`/`len` are valid for writes and describe a 4-byte
    // buffer, the size of `struct xdp_options`; a bad fd only yields EBADF.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            SOL_XDP,
            XDP_OPTIONS,
            (&mut flags as *mut u32).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(flags & XDP_OPTIONS_ZEROCOPY != 0)
}

/// Number of rx queues of `iface`, counted from `/sys/class/net/IFACE/queues/rx-*`.
///
/// sysfs shows the network namespace it was mounted in; `ip netns exec`
/// remounts it, a bare `setns(2)` does not.
pub fn rx_queue_count(iface: &str) -> Result<u32, RingError> {
    if iface.is_empty() || iface.contains('/') || iface == "." || iface == ".." {
        return Err(RingError::NoSuchInterface(iface.to_string()));
    }
    let dir = format!("/sys/class/net/{iface}/queues");
    let entries = std::fs::read_dir(&dir).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            RingError::NoSuchInterface(iface.to_string())
        } else {
            RingError::Sysfs {
                iface: iface.to_string(),
                source,
            }
        }
    })?;
    let mut count = 0u32;
    for entry in entries {
        let entry = entry.map_err(|source| RingError::Sysfs {
            iface: iface.to_string(),
            source,
        })?;
        if entry.file_name().to_string_lossy().starts_with("rx-") {
            count += 1;
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xsk_queue_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<XskQueue>();
    }

    #[test]
    fn config_validation() {
        assert!(validate(&XskConfig::default()).is_ok());
        let bad = XskConfig {
            frame_size: 3000,
            ..XskConfig::default()
        };
        assert!(validate(&bad).is_err());
        let bad = XskConfig {
            ring_size: 1000,
            ..XskConfig::default()
        };
        assert!(validate(&bad).is_err());
    }

    #[test]
    fn default_ring_fits_the_frames() {
        assert_eq!(default_ring(DEFAULT_FRAMES), DEFAULT_RING);
        assert_eq!(default_ring(8192), 8192);
        assert_eq!(default_ring(20_000), DEFAULT_RING);
        assert_eq!(default_ring(12_000), 8192);
        assert_eq!(default_ring(1), 1);
        for f in [1, 3, 8192, 12_000, 20_000, DEFAULT_FRAMES, u32::MAX] {
            let cfg = XskConfig {
                frame_count: f,
                ring_size: default_ring(f),
                ..XskConfig::default()
            };
            assert!(validate(&cfg).is_ok(), "{f} frames");
        }
    }

    #[test]
    fn frame_size_follows_the_mtu() {
        assert_eq!(frame_size_for_mtu(1500), 2048);
        // 1774 + 18 bytes of Ethernet and VLAN header + 256 of headroom.
        assert_eq!(frame_size_for_mtu(1774), 2048);
        assert_eq!(frame_size_for_mtu(1775), 4096);
        assert_eq!(frame_size_for_mtu(9000), 4096);
        assert_eq!(frame_size_for_mtu(u32::MAX), 4096);
    }
}
