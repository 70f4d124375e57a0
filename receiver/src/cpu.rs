//! Where the receiver's threads run and at what priority.
//!
//! A worker drains a ring the kernel fills at line rate; if it is not
//! scheduled for as long as the ring lasts, the kernel drops frames
//! (`rx_ring_full`, `fill_ring_empty`). The staging writer only needs CPU on
//! average (its buffer absorbs the rest). So:
//!
//! - workers are pinned to their cores ([`pin_worker`]) and registered, and
//!   ask for a higher priority (nice [`WORKER_NICE`]) where the process may
//!   raise it (root, `CAP_SYS_NICE` or `RLIMIT_NICE`);
//! - the writer thread ([`place_background`]) runs on the cores the process
//!   may use *except* the workers' cores, when there are any: it is started
//!   from the worker that opens the target and would otherwise inherit that
//!   worker's single-core pin; when only the workers' cores are left it
//!   shares them at the lower priority;
//! - a copier thread ([`place_copier`]), which copies what a worker hands
//!   off, goes where the writer goes, at a priority halfway between the
//!   worker's and the process's: above other work, since the worker's
//!   frames wait for it, but below the worker, so that a worker that wakes
//!   up does not wait for its copier's time slice on a shared core;
//! - the threads a worker wakes (the copier, the writer, the checking pool)
//!   run under `SCHED_BATCH` with the default time slice
//!   ([`place_background`], [`place_copier`]; a thread started by a worker
//!   would otherwise inherit its short slice), and a worker asks for a
//!   short slice ([`WORKER_SLICE_NS`]). Why: on a core shared with them a
//!   worker lost the core mid-batch whenever it had run a default slice's
//!   worth since its last deadline: the wake-up it caused itself (its
//!   copier kicked at the end of a batch, a page handed to the checking
//!   pool) let the scheduler pick the woken thread, and the copier then
//!   woke the writer, which hashed and wrote a chunk before the worker got
//!   the core back (0.2-1 ms, `perf sched`, see docs/architecture.md). A
//!   `SCHED_BATCH` thread does not preempt on wake-up, and a worker with a
//!   short slice within its fair share has the earliest deadline, so it
//!   is picked first and preempts them when it wakes. Nice values still
//!   weigh as before, so under a CPU hog the helpers keep their share
//!   (unlike `SCHED_IDLE`, which would starve the session).

use std::sync::atomic::{AtomicU32, Ordering};

use crate::error::{Error, ErrorCode, Result};

/// Nice value workers ask for (the default process has 0): with CFS/EEVDF
/// weights, a worker at -10 gets about 90 % of a core shared with one
/// thread at 0 (the writer, a build, a CPU hog) whenever it is runnable.
pub const WORKER_NICE: i32 = -10;

/// Time slice workers ask for (`sched_setattr`'s `sched_runtime`, an
/// EEVDF custom slice since Linux 6.12; older kernels ignore it for
/// `SCHED_OTHER`): a worker that is runnable and within its fair share has
/// the earliest deadline, so it is picked before the copier, writer or
/// checking thread whose slice it shares a core with, and preempts them
/// when it wakes. With the default slice (0.75-3 ms by CPU count) it lost
/// the core to them whenever it had run a slice's worth since its last
/// deadline, for their whole slice (see the module docs).
pub const WORKER_SLICE_NS: u64 = 100_000;

/// CPUs tracked for worker placement (cpu_set_t holds 1024).
const MAX_CPUS: usize = libc::CPU_SETSIZE as usize;

/// Number of pinned workers per CPU, over every session of the process.
static WORKERS_ON: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];

fn cpu_set(cpus: &[usize]) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is a plain bit set, zero is a valid empty set; only
    // indices below CPU_SETSIZE are set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus.iter().filter(|&&c| c < MAX_CPUS) {
            libc::CPU_SET(c, &mut set);
        }
        set
    }
}

/// CPUs that thread (or process) `tid` may run on; 0: the calling thread.
/// The process's own mask is that of its main thread, `getpid()`.
pub fn allowed(tid: libc::pid_t) -> Result<Vec<usize>> {
    // SAFETY: zero is a valid empty set that sched_getaffinity fills;
    // CPU_ISSET is only asked about indices below CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(Error::new(
                ErrorCode::Internal,
                format!("sched_getaffinity: {}", std::io::Error::last_os_error()),
            ));
        }
        Ok((0..MAX_CPUS)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect())
    }
}

/// Restrict the calling thread to `cpus`.
fn set_affinity(cpus: &[usize]) -> std::io::Result<()> {
    let set = cpu_set(cpus);
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Check that every core of `cores` is one this process may run on (its
/// affinity mask, e.g. `--cores 64` on a 2-CPU machine is refused).
pub fn check_cores(cores: &[usize]) -> Result<()> {
    let allowed = allowed(0)?;
    match cores.iter().find(|c| !allowed.contains(c)) {
        Some(c) => Err(Error::new(
            ErrorCode::InvalidArgument,
            format!("--cores: cpu {c} is not available to this process (it may use {allowed:?})"),
        )),
        None => Ok(()),
    }
}

/// A worker pinned to a core; unregisters it when dropped.
#[derive(Debug)]
pub struct Pinned(usize);

impl Drop for Pinned {
    fn drop(&mut self) {
        WORKERS_ON[self.0].fetch_sub(1, Ordering::Relaxed);
    }
}

/// Pin the calling thread (a worker) to `cpu`, register it there for
/// [`place_background`], and raise its priority to [`WORKER_NICE`] if the
/// process may (silently kept otherwise).
pub fn pin_worker(cpu: usize) -> Result<Pinned> {
    if cpu >= MAX_CPUS {
        return Err(Error::new(
            ErrorCode::InvalidArgument,
            format!("cpu {cpu} out of range"),
        ));
    }
    set_affinity(&[cpu]).map_err(|e| {
        Error::new(
            ErrorCode::InvalidArgument,
            format!("cannot pin to cpu {cpu}: {e}"),
        )
    })?;
    // Relaxed: a placement hint, read by writer threads started later.
    WORKERS_ON[cpu].fetch_add(1, Ordering::Relaxed);
    let _ = renice(WORKER_NICE);
    if let Err(e) = set_policy(libc::SCHED_OTHER, WORKER_SLICE_NS) {
        log::debug!("sched_setattr(sched_runtime {WORKER_SLICE_NS} ns): {e}");
    }
    Ok(Pinned(cpu))
}

/// Set the calling thread's policy (`SCHED_OTHER` or `SCHED_BATCH`) and
/// time slice (`slice_ns`, 0: the kernel's default), keeping its nice
/// value.
fn set_policy(policy: i32, slice_ns: u64) -> std::io::Result<()> {
    let attr = libc::sched_attr {
        size: std::mem::size_of::<libc::sched_attr>() as u32,
        sched_policy: policy as u32,
        sched_flags: 0,
        sched_nice: nice(),
        sched_priority: 0,
        sched_runtime: slice_ns,
        sched_deadline: 0,
        sched_period: 0,
    };
    // SAFETY: `attr` is a valid sched_attr of the size it states, read by
    // the kernel during the call; pid 0 is the calling thread.
    let rc = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Set the calling thread's nice value (Linux: PRIO_PROCESS with a thread
/// id applies to that thread only). Only lowers it without privileges.
fn renice(nice: i32) -> std::io::Result<()> {
    // SAFETY: gettid and setpriority have no memory arguments.
    let rc = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The calling thread's nice value.
pub fn nice() -> i32 {
    // SAFETY: as above. -1 is also a valid value; errors cannot happen for
    // the calling thread.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
}

/// CPUs for a background thread: those of `process` without any of
/// `busy`, or all of `process` when that leaves none.
fn background_cpus(process: &[usize], busy: impl Fn(usize) -> bool) -> Vec<usize> {
    let free: Vec<usize> = process.iter().copied().filter(|&c| !busy(c)).collect();
    if free.is_empty() {
        process.to_vec()
    } else {
        free
    }
}

/// Move the calling thread to the process's CPUs without a pinned worker,
/// or to all the process's CPUs when every one has a worker; returns the
/// CPUs chosen. Best effort: the thread keeps running where it is on error.
pub fn move_off_workers() -> Vec<usize> {
    // SAFETY: getpid has no preconditions.
    let Ok(process) = allowed(unsafe { libc::getpid() }) else {
        return Vec::new();
    };
    let cpus = background_cpus(&process, |c| WORKERS_ON[c].load(Ordering::Relaxed) > 0);
    if let Err(e) = set_affinity(&cpus) {
        log::debug!("background thread placement on {cpus:?}: {e}");
    }
    cpus
}

/// Put the calling thread under `SCHED_BATCH` with the default time
/// slice, keeping its nice value: woken by a worker, it does not preempt
/// it, and it does not keep the short slice it inherited from the worker
/// that started it (see the module docs). Best effort: logged on error.
fn batch_policy() {
    if let Err(e) = set_policy(libc::SCHED_BATCH, 0) {
        log::debug!("sched_setattr(SCHED_BATCH): {e}");
    }
}

/// Place the calling thread (the staging writer, a checking thread) as
/// [`move_off_workers`] does, under `SCHED_BATCH` at the process's nice
/// value (below the workers', whose value a thread started by a worker
/// inherits). Returns the CPUs chosen.
pub fn place_background() -> Vec<usize> {
    let cpus = move_off_workers();
    batch_policy();
    // Started by a worker, it also inherited the worker's nice value: back
    // to the process's (its main thread's; raising it is always allowed).
    let _ = renice(process_nice());
    cpus
}

/// Place the calling thread (a copier, started by a worker) as
/// [`move_off_workers`] does, under `SCHED_BATCH` at a nice value halfway
/// between the one it inherited (its worker's) and the process's. Returns
/// the CPUs chosen.
pub fn place_copier() -> Vec<usize> {
    let cpus = move_off_workers();
    batch_policy();
    let _ = renice((nice() + process_nice()) / 2);
    cpus
}

/// The process's nice value (its main thread's).
fn process_nice() -> i32 {
    // SAFETY: getpid and getpriority have no memory arguments.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::getpid() as libc::id_t) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calling thread's scheduling policy.
    fn policy() -> i32 {
        // SAFETY: no memory arguments; pid 0 is the calling thread.
        unsafe { libc::sched_getscheduler(0) }
    }

    #[test]
    fn background_avoids_worker_cores_when_it_can() {
        let busy = |c| c == 1 || c == 3;
        assert_eq!(background_cpus(&[0, 1, 2, 3], busy), vec![0, 2]);
        assert_eq!(background_cpus(&[1, 3], busy), vec![1, 3]);
        assert_eq!(background_cpus(&[1], |_| false), vec![1]);
    }

    #[test]
    fn worker_pin_registers_and_writer_moves_off() {
        let process = allowed(0).unwrap();
        let cpu = process[0];
        let several = process.len() > 1;
        std::thread::spawn(move || {
            let pin = pin_worker(cpu).unwrap();
            assert_eq!(allowed(0).unwrap(), vec![cpu]);
            // Root (CI) may raise the priority; others keep theirs.
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } == 0 {
                assert_eq!(nice(), WORKER_NICE);
            }
            assert!(WORKERS_ON[cpu].load(Ordering::Relaxed) >= 1);
            // A thread started by the pinned worker inherits its pin; the
            // writer's placement undoes that.
            let placed =
                std::thread::spawn(|| (place_background(), allowed(0).unwrap(), nice(), policy()))
                    .join()
                    .unwrap();
            assert_eq!(placed.0, placed.1);
            let process = process_nice();
            assert_eq!(placed.2, process, "the writer drops the worker's priority");
            assert_eq!(placed.3, libc::SCHED_BATCH, "woken, it does not preempt");
            // A copier goes where the writer goes, halfway between.
            let copier = std::thread::spawn(|| (place_copier(), nice(), policy()))
                .join()
                .unwrap();
            assert_eq!(copier.0, placed.0);
            assert_eq!(copier.1, (nice() + process) / 2);
            assert_eq!(copier.2, libc::SCHED_BATCH);
            assert_eq!(policy(), libc::SCHED_OTHER, "the worker keeps its policy");
            if several {
                assert_ne!(placed.1, vec![cpu]);
            }
            drop(pin);
        })
        .join()
        .unwrap();
        assert!(check_cores(&process).is_ok());
        assert_eq!(
            check_cores(&[MAX_CPUS + 1]).unwrap_err().code,
            ErrorCode::InvalidArgument
        );
    }
}
