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
//! Both files are opened only if they are this user's own, never through a
//! symbolic link: an older file of someone else is ignored, and a link at
//! the temporary name makes saving fail (with a warning) rather than
//! write through it.

use std::fs::File;
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

/// Replace the resume file with `words` (durably).
pub fn save(path: &Path, session: u32, g: &Geometry, words: &[u64]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut buf = header(session, g);
    buf.extend(words.iter().flat_map(|w| w.to_le_bytes()));
    // Created anew, never through a symbolic link; rename replaces what is
    // at `path` (a link there included) without following it.
    let mut f = safe_fs::create_fresh(&tmp, 0o600)?;
    let written = f.write_all(&buf).and_then(|()| f.sync_all());
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        // A full disk leaves a partial file: do not let it take more room.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
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
