//! The resume file: the written-block bitmap of a session, kept next to the
//! target and replaced atomically (write, fsync, rename) every second while
//! receiving, after the target itself has been synced. A receiver restarted
//! for the same session (same session id and geometry) loads it and only
//! waits for the blocks it lacks. It is removed when the session succeeds.
//!
//! Layout (little-endian): magic `XDPCRSM1`, session id u32, block size
//! u32, block count u64, total size u64, then `ceil(block_count / 64)` u64
//! words of the bitmap.
//!
//! Both files are opened only if they are this user's own with one name,
//! never through a symbolic link, in a directory reached by the checked
//! walk of [`safe_fs`]: an older file of someone else (or a hard link to
//! one) is ignored, and a link or another user's file at the temporary
//! name makes saving fail (with a warning) rather than write through it.

use std::ffi::CString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::proto::wire::Geometry;
use crate::safe_fs;

const MAGIC: &[u8; 8] = b"XDPCRSM1";
const HEADER: usize = 8 + 4 + 4 + 8 + 8;

/// Default resume file of a target: `<target>.xdpcast-resume`.
pub fn default_path(target: &Path) -> PathBuf {
    let mut p = target.as_os_str().to_owned();
    p.push(".xdpcast-resume");
    PathBuf::from(p)
}

fn header(session: u32, g: &Geometry) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&session.to_le_bytes());
    h.extend_from_slice(&g.block_size.to_le_bytes());
    h.extend_from_slice(&g.block_count.to_le_bytes());
    h.extend_from_slice(&g.total_size.to_le_bytes());
    h
}

/// The bitmap words saved for this session and geometry, if any.
pub fn load(path: &Path, session: u32, g: &Geometry) -> Option<Vec<u64>> {
    let mut buf = Vec::new();
    safe_fs::open_own(path)?.read_to_end(&mut buf).ok()?;
    let words = g.block_count.div_ceil(64) as usize;
    if buf.len() != HEADER + words * 8 || buf[..HEADER] != header(session, g)[..] {
        return None;
    }
    Some(
        buf[HEADER..]
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect(),
    )
}

/// Replace the resume file with `words` (durably): written to
/// `<name>.tmp` (created anew, never through a link) and renamed over
/// `path`, both relative to the directory the checked walk of `path`
/// opened ([`safe_fs::parent`]), so no name is looked up from the top
/// again between the steps.
pub fn save(path: &Path, session: u32, g: &Geometry, words: &[u64]) -> std::io::Result<()> {
    let (dir, name) = safe_fs::parent(path)?;
    let mut tmp = name.as_bytes().to_vec();
    tmp.extend_from_slice(b".tmp");
    let tmp = CString::new(tmp).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    let mut buf = header(session, g);
    buf.extend(words.iter().flat_map(|w| w.to_le_bytes()));
    let mut f = dir.create_fresh(&tmp, 0o600)?;
    // rename replaces what is at `path` (a link there included) without
    // following it.
    let written = f.write_all(&buf).and_then(|()| f.sync_all());
    if let Err(e) = written.and_then(|()| dir.rename(&tmp, &name)) {
        // A full disk leaves a partial file: do not let it take more room.
        let _ = dir.remove(&tmp);
        return Err(e);
    }
    dir.sync()
}

/// Remove the resume file (the session succeeded) if it is a file of ours
/// ([`safe_fs::Dir::open_own`]): another user's file at its name is left
/// alone.
pub fn remove(path: &Path) {
    if let Ok((dir, name)) = safe_fs::parent(path) {
        if dir.open_own(&name).is_some() {
            let _ = dir.remove(&name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_mismatch() {
        let dir = std::env::temp_dir().join(format!("xdpcast-resume-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("img");
        let p = default_path(&target);
        assert!(p.to_str().unwrap().ends_with("img.xdpcast-resume"));
        let g = Geometry::new(200 * 1400, 1400);
        assert!(load(&p, 1, &g).is_none());
        save(&p, 1, &g, &[1, 2, 3, u64::MAX]).unwrap();
        assert_eq!(load(&p, 1, &g), Some(vec![1, 2, 3, u64::MAX]));
        assert!(load(&p, 2, &g).is_none(), "other session");
        assert!(
            load(&p, 1, &Geometry::new(200 * 1400, 1000)).is_none(),
            "other geometry"
        );
        std::fs::write(&p, b"junk").unwrap();
        assert!(load(&p, 1, &g).is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
