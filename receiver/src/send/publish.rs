//! The signed manifest published beside the image, for receivers that
//! fetch over HTTP (`IMAGE.xdpcast-manifest`, the format in
//! [`crate::fetch::manifest_file`]): written by `send --sign` for the
//! session it sends, or ahead of time by `xdpcast manifest`.

use std::fs::File;
use std::path::Path;

use ed25519_dalek::SigningKey;
use memmap2::Mmap;

use crate::error::{Error, ErrorCode, Result};
use crate::fetch::manifest_file::ManifestFile;
use crate::proto::manifest::{self, Manifest};
use crate::proto::wire::Geometry;
use crate::send::zeros::{self, DataMap};

/// What `xdpcast manifest` signs, besides the image.
#[derive(Debug, Clone, Copy)]
pub struct Offline {
    /// Session id: give `send --session` the same one, so receivers that
    /// started from the file also take the multicast session's blocks.
    pub session: u32,
    /// Block size: the same as the sender's (its MTU), or the chunk
    /// hashes differ from the multicast session's.
    pub block_size: u32,
}

/// Sign a manifest of the image at `image` for a session made later (no
/// repair address, one pass; the file's receivers fetch over HTTP), with
/// the chunk hashes a sender of the same block size makes.
pub fn offline(image: &Path, key: &SigningKey, o: Offline) -> Result<(Manifest, ManifestFile)> {
    let file = File::open(image)
        .map_err(|e| Error::target_io(&format!("open {}", image.display()), &e))?;
    // SAFETY: read-only mapping; if the image changes while it is hashed
    // the manifest names bytes no receiver will get, and they fail their
    // chunks (never the other way round).
    let map = unsafe { Mmap::map(&file) }
        .map_err(|e| Error::target_io(&format!("map {}", image.display()), &e))?;
    if map.is_empty() {
        return Err(Error::new(
            ErrorCode::InvalidArgument,
            format!("{} is empty", image.display()),
        ));
    }
    let geometry = Geometry::new(map.len() as u64, o.block_size);
    let (digest, _) = zeros::sha256(&map, DataMap::of(&file, map.len() as u64));
    let chunk_blocks = manifest::chunk_blocks_for(geometry.block_count, o.block_size);
    let m = Manifest {
        session: o.session,
        geometry,
        // Read ahead of time: the head names the digest too.
        digest,
        passes: 1,
        flags: 0,
        repair_addr: std::net::Ipv6Addr::UNSPECIFIED,
        repair_port: 0,
        fec_repair: 0,
        fec_group: 0,
        source: std::net::Ipv6Addr::UNSPECIFIED,
        chunk_blocks,
        issued_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        zero_runs: [0; 32],
    };
    let pages = (0..m.page_count())
        .map(|i| m.page_of(key, i, &map))
        .collect();
    let f = ManifestFile::new(&m, key, pages, &digest);
    Ok((m, f))
}

/// Write `file` at `path`, as the sender does beside a regular-file
/// image: a failure is a warning, never the end of the session (the
/// multicast does not need it).
pub fn write_beside(file: &ManifestFile, path: &Path) {
    match file.write_atomic(path) {
        Ok(()) => log::info!("signed manifest for HTTP receivers: {}", path.display()),
        Err(e) => log::warn!("{e} (receivers cannot start from HTTP without it)"),
    }
}
