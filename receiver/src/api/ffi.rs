//! C ABI over [`Session`], declared in `receiver/include/xdpcast.h`.
//!
//! Every function returns 0 or an [`ErrorCode`] value. Sessions live in a
//! global table and C holds only their integer handle, so a call with a
//! closed or made-up handle returns `XDPCAST_ERR_CLOSED` or
//! `XDPCAST_ERR_INVALID_ARGUMENT` instead of touching freed memory. The
//! functions may be called from any thread; `xdpcast_session_wait` does not
//! stop other threads from cancelling or querying the same session.

use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::api::session::{Callbacks, Session};
use crate::error::{Error, ErrorCode, Result};
use crate::net::socket::Group;
use crate::receive::request::{ModeRequest, SessionRequest};
use crate::status::page::State;

/// `xdpcast_request.mode`: XDP when possible, else sockets.
pub const XDPCAST_MODE_AUTO: u32 = 0;
/// `xdpcast_request.mode`: XDP only.
pub const XDPCAST_MODE_XDP: u32 = 1;
/// `xdpcast_request.mode`: UDP sockets only.
pub const XDPCAST_MODE_SOCKET: u32 = 2;
/// `xdpcast_request.flags`: `session_id` is set (accept only that session).
pub const XDPCAST_REQ_SESSION_ID: u32 = 1;
/// `xdpcast_session_wait` timeout meaning "wait until the session ends".
pub const XDPCAST_WAIT_FOREVER: u32 = u32::MAX;

/// What `xdpcast_session_initialize` needs (C: `struct xdpcast_request`).
#[repr(C)]
#[derive(Debug)]
pub struct XdpcastRequest {
    /// Session name (status page `xdpcast.<name>`), NUL-terminated.
    pub name: *const c_char,
    /// Multicast group and port, e.g. "239.1.2.3:5000".
    pub group: *const c_char,
    /// Interface to receive on.
    pub iface: *const c_char,
    /// Target file or block device.
    pub target: *const c_char,
    /// One of `XDPCAST_MODE_*`.
    pub mode: u32,
    /// `XDPCAST_REQ_*` bits.
    pub flags: u32,
    /// Session id to accept when `XDPCAST_REQ_SESSION_ID` is set.
    pub session_id: u32,
    /// Fail with TIMEOUT if nothing arrives this long after start (0: 60 s).
    pub start_timeout_ms: u32,
    /// Fail with SENDER_GONE after this long without packets (0: 10 s).
    pub idle_timeout_ms: u32,
}

/// Handle of a session (C: `xdpcast_handle`); 0 is never a valid handle.
pub type XdpcastHandle = u64;

struct Table {
    next: u64,
    sessions: BTreeMap<u64, Arc<Mutex<Session>>>,
}

static TABLE: Mutex<Table> = Mutex::new(Table {
    next: 1,
    sessions: BTreeMap::new(),
});

fn table() -> MutexGuard<'static, Table> {
    TABLE.lock().unwrap_or_else(|p| p.into_inner())
}

fn lookup(h: XdpcastHandle) -> Result<Arc<Mutex<Session>>> {
    let t = table();
    match t.sessions.get(&h) {
        Some(s) => Ok(s.clone()),
        None if h != 0 && h < t.next => Err(Error::new(
            ErrorCode::Closed,
            format!("handle {h} is closed"),
        )),
        None => Err(Error::new(
            ErrorCode::InvalidArgument,
            format!("handle {h} was never issued"),
        )),
    }
}

fn lock(s: &Mutex<Session>) -> MutexGuard<'_, Session> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// Run `f` on the session of handle `h`.
fn with<T>(h: XdpcastHandle, f: impl FnOnce(&mut Session) -> Result<T>) -> Result<T> {
    let session = lookup(h)?;
    let mut guard = lock(&session);
    f(&mut guard)
}

/// Run `f`, turning errors and panics into the code C sees.
fn guarded(f: impl FnOnce() -> Result<()>) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            log::debug!("xdpcast C API: {e}");
            e.code as c_int
        }
        Err(_) => ErrorCode::Internal as c_int,
    }
}

/// Store `v` through `out` unless it is null.
///
/// # Safety
/// `out` is null or valid for a write of one `u32`.
unsafe fn put(out: *mut u32, v: u32) {
    if !out.is_null() {
        // SAFETY: non-null, and valid for writes by the caller's contract.
        unsafe { out.write(v) };
    }
}

/// # Safety
/// `p` is null or a NUL-terminated string valid for the call.
unsafe fn text(p: *const c_char, what: &str) -> Result<String> {
    if p.is_null() {
        return Err(Error::new(
            ErrorCode::InvalidArgument,
            format!("{what} is NULL"),
        ));
    }
    // SAFETY: non-null and NUL-terminated by the caller's contract.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str()
        .map(str::to_owned)
        .map_err(|_| Error::new(ErrorCode::InvalidArgument, format!("{what} is not UTF-8")))
}

fn request(r: &XdpcastRequest) -> Result<SessionRequest> {
    // SAFETY: the header documents these as NUL-terminated strings or NULL.
    let (name, group, iface, target) = unsafe {
        (
            text(r.name, "name")?,
            text(r.group, "group")?,
            text(r.iface, "iface")?,
            text(r.target, "target")?,
        )
    };
    let group: Group = group.parse()?;
    let mut req = SessionRequest::new(&name, group, &iface, PathBuf::from(target));
    req.mode = match r.mode {
        XDPCAST_MODE_AUTO => ModeRequest::Auto,
        XDPCAST_MODE_XDP => ModeRequest::Xdp,
        XDPCAST_MODE_SOCKET => ModeRequest::Socket,
        m => {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                format!("unknown mode {m}"),
            ))
        }
    };
    if r.flags & !XDPCAST_REQ_SESSION_ID != 0 {
        return Err(Error::new(
            ErrorCode::InvalidArgument,
            format!("unknown flags {:#x}", r.flags),
        ));
    }
    if r.flags & XDPCAST_REQ_SESSION_ID != 0 {
        req.session_id = Some(r.session_id);
    }
    if r.start_timeout_ms > 0 {
        req.start_timeout = Duration::from_millis(u64::from(r.start_timeout_ms));
    }
    if r.idle_timeout_ms > 0 {
        req.idle_timeout = Duration::from_millis(u64::from(r.idle_timeout_ms));
    }
    Ok(req)
}

/// Validate the request, create the status page and store a new handle in
/// `*out` (state INITIALIZED).
///
/// # Safety
/// `req` is null or points to a valid `xdpcast_request` whose strings are
/// NUL-terminated or null; `out` is null or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn xdpcast_session_initialize(
    req: *const XdpcastRequest,
    out: *mut XdpcastHandle,
) -> c_int {
    guarded(|| {
        if req.is_null() || out.is_null() {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                "request or handle pointer is NULL",
            ));
        }
        // SAFETY: non-null and valid by the caller's contract.
        let session = Session::initialize(request(unsafe { &*req })?, Callbacks::default())?;
        let mut t = table();
        let h = t.next;
        t.next += 1;
        t.sessions.insert(h, Arc::new(Mutex::new(session)));
        // SAFETY: non-null and valid for writes by the caller's contract.
        unsafe { out.write(h) };
        Ok(())
    })
}

/// Open the data path and start receiving (state IN_PROGRESS).
#[no_mangle]
pub extern "C" fn xdpcast_session_start(h: XdpcastHandle) -> c_int {
    guarded(|| with(h, Session::start))
}

/// The session's state (`XDPCAST_STATE_*`) and error code; valid after the
/// session ended, until `xdpcast_session_close`.
///
/// # Safety
/// `status` and `error` are each null or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn xdpcast_session_query_status(
    h: XdpcastHandle,
    status: *mut u32,
    error: *mut u32,
) -> c_int {
    guarded(|| {
        let (s, e) = with(h, |s| s.query_status())?;
        // SAFETY: null or valid for writes by the caller's contract.
        unsafe {
            put(status, s as u32);
            put(error, e as u32);
        }
        Ok(())
    })
}

/// Wait up to `timeout_ms` (or forever with `XDPCAST_WAIT_FOREVER`) for the
/// session to end. Returns 0 with the final state, or `XDPCAST_ERR_TIMEOUT`
/// with the current state if it is still running.
///
/// # Safety
/// `status` and `error` are each null or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn xdpcast_session_wait(
    h: XdpcastHandle,
    timeout_ms: u32,
    status: *mut u32,
    error: *mut u32,
) -> c_int {
    guarded(|| {
        let session = lookup(h)?;
        let deadline = (timeout_ms != XDPCAST_WAIT_FOREVER)
            .then(|| Instant::now() + Duration::from_millis(u64::from(timeout_ms)));
        // Wait in slices so cancel, query and close from other threads get
        // the session lock in between.
        let slice = Duration::from_millis(50);
        let result = loop {
            let left = deadline.map_or(slice, |d| d.saturating_duration_since(Instant::now()));
            // The guard must not outlive this statement: cancel and close
            // take the lock between slices.
            let r = lock(&session).wait_for_completion(Some(left.min(slice)));
            match r {
                Err(e) if e.code == ErrorCode::Timeout && !left.is_zero() => continue,
                other => break other,
            }
        };
        let (s, e) = match &result {
            Ok(v) => *v,
            Err(e) if e.code == ErrorCode::Timeout => (State::InProgress, ErrorCode::None),
            Err(e) => return Err(e.clone()),
        };
        // SAFETY: null or valid for writes by the caller's contract.
        unsafe {
            put(status, s as u32);
            put(error, e as u32);
        }
        result.map(|_| ())
    })
}

/// Cancel the session; it ends in FAILURE with `XDPCAST_ERR_CANCELLED`.
#[no_mangle]
pub extern "C" fn xdpcast_session_cancel(h: XdpcastHandle) -> c_int {
    guarded(|| with(h, Session::cancel))
}

/// Stop the session (cancelling it if it runs), remove its status page and
/// release the handle; later calls with it return `XDPCAST_ERR_CLOSED`.
#[no_mangle]
pub extern "C" fn xdpcast_session_close(h: XdpcastHandle) -> c_int {
    guarded(|| {
        let removed = table().sessions.remove(&h);
        match removed {
            Some(session) => lock(&session).close(),
            None => lookup(h).map(drop),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_null_arguments_are_rejected() {
        let invalid = ErrorCode::InvalidArgument as c_int;
        assert_eq!(xdpcast_session_start(0), invalid);
        assert_eq!(xdpcast_session_cancel(u64::MAX), invalid);
        // SAFETY: null pointers are allowed by the contract.
        unsafe {
            assert_eq!(
                xdpcast_session_initialize(std::ptr::null(), std::ptr::null_mut()),
                invalid
            );
            assert_eq!(
                xdpcast_session_query_status(0, std::ptr::null_mut(), std::ptr::null_mut()),
                invalid
            );
        }
    }
}
