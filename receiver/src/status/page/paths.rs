//! Where pages live: the status directory, a session's page path, and
//! the sessions found there.

use std::path::PathBuf;

use super::layout::NAME_LEN;
use crate::error::{Error, ErrorCode, Result};
use crate::safe_fs;

/// Where root's receivers keep their pages unless `$XDPCAST_STATUS_DIR`
/// says otherwise: under `/run`, where no other user can create it first.
pub const DEFAULT_DIR: &str = "/run/xdpcast";

/// Directory holding status pages: `$XDPCAST_STATUS_DIR` or
/// [`DEFAULT_DIR`]. Readers look there; so do writers running as root.
pub fn status_dir() -> PathBuf {
    std::env::var_os("XDPCAST_STATUS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR))
}

/// Directory a writer puts its pages in: [`status_dir`], except for a user
/// other than root without `$XDPCAST_STATUS_DIR`, who cannot create
/// [`DEFAULT_DIR`] and gets `/dev/shm/xdpcast-UID` (readers then need
/// `XDPCAST_STATUS_DIR` set to it).
pub(super) fn writer_dir() -> PathBuf {
    let uid = safe_fs::euid();
    if uid != 0 && std::env::var_os("XDPCAST_STATUS_DIR").is_none() {
        return PathBuf::from(format!("/dev/shm/xdpcast-{uid}"));
    }
    status_dir()
}

/// Path of the page a writer creates for session `name`.
pub fn writer_page_path(name: &str) -> Result<PathBuf> {
    let p = page_path(name)?;
    Ok(writer_dir().join(p.file_name().expect("a page has a file name")))
}

/// File name prefix of status pages.
const FILE_PREFIX: &str = "xdpcast.";

/// Path of the page of session `name`.
pub fn page_path(name: &str) -> Result<PathBuf> {
    let ok = !name.is_empty()
        && name.len() < NAME_LEN
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c));
    if !ok {
        return Err(Error::new(
            ErrorCode::InvalidArgument,
            format!("session name {name:?}: use 1-63 characters of A-Z a-z 0-9 . _ -"),
        ));
    }
    Ok(status_dir().join(format!("{FILE_PREFIX}{name}")))
}

/// Names of all sessions with a page in the status directory, sorted.
pub fn list_sessions() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(status_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix(FILE_PREFIX))
                .map(str::to_owned)
        })
        .collect();
    names.sort();
    names
}
