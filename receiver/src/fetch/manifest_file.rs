//! The `.xdpcast-manifest` file: a signed session's manifest packets, kept
//! beside the image (`IMAGE.xdpcast-manifest`) so that a receiver which
//! hears no multicast can fetch it from a web server with the image.
//!
//! The file holds the very payloads the sender multicasts as kind 6
//! and 7 packets, so a receiver checks it with the same code: the head
//! against its trusted keys, every page and signed end against the head's
//! key. Nothing in the file is trusted for being in the file.
//!
//! Layout, big-endian (docs/http.md):
//!
//! | bytes | what |
//! | --- | --- |
//! | 0..8 | magic `\x89XDPCMF\n` |
//! | 8..12 | version, 1 |
//! | 12..16 | record count |
//! | then per record | packet kind (u8), length (u32), then the payload of one packet of that kind |
//!
//! Record 0 is the head (kind 6, sub-type 0), then page `i` (kind 6,
//! sub-type 1) in order, then any signed ends (kind 7) the sender made
//! (a signed end may carry what the head cannot, such as the image's
//! digest when the head is signed before the image is read), then at most
//! one *stamp* (kind 0x80, not a packet kind): the image file's device,
//! inode, size, modification and change times when the file was made.
//! Receivers skip the stamp; a sender uses it only to tell whether a file
//! it finds beside the image was made from the image as it is now, and
//! then checks every record's signature with its own key before it reuses
//! the chunk hashes ([`crate::send::publish::ahead`]).

use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorCode, Result};
use crate::proto::manifest::{ImageDigest, Manifest, MAX_PAGES, SUB_HEAD, SUB_PAGE};
use crate::proto::wire::{Kind, MAX_MANIFEST_PAYLOAD};
use crate::safe_fs;

/// First bytes of the file (the high byte catches 7-bit and text-mode
/// mangling, the newline line-ending conversion, as PNG's does).
pub const MAGIC: &[u8; 8] = b"\x89XDPCMF\n";
/// The format version this code writes and reads.
pub const VERSION: u32 = 1;
/// Suffix added to the image's name (and URL).
pub const SUFFIX: &str = ".xdpcast-manifest";
/// Most signed ends a file may hold.
pub const MAX_ENDS: u32 = 4;
/// Most records a file may hold: the head, [`MAX_PAGES`] pages, the
/// signed ends and a stamp.
pub const MAX_RECORDS: u32 = 1 + MAX_PAGES as u32 + MAX_ENDS + 1;
/// Largest file this code reads (every record at its largest).
pub const MAX_FILE_LEN: u64 = 16 + MAX_RECORDS as u64 * (5 + MAX_MANIFEST_PAYLOAD as u64);

/// Record kind of the stamp (above every packet kind).
pub const STAMP_KIND: u8 = 0x80;
/// Bytes of a stamp record.
pub const STAMP_LEN: usize = 48;

/// What identifies a regular file's contents without reading them: the
/// same device, inode, size, modification and change time (nanoseconds)
/// mean the same bytes unless someone wrote the file and then reset both
/// times (only root can reset the change time), as build tools and
/// BitTorrent clients take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Device of the filesystem.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, seconds and nanoseconds since 1970.
    pub mtime: (i64, u32),
    /// Change time (inode), seconds and nanoseconds since 1970.
    pub ctime: (i64, u32),
}

impl Stamp {
    /// The stamp of `file` as it is now; None unless it is a regular file.
    pub fn of(file: &std::fs::File) -> Option<Stamp> {
        let m = file.metadata().ok()?;
        m.is_file().then(|| Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec() as u32),
            ctime: (m.ctime(), m.ctime_nsec() as u32),
        })
    }

    fn encode(&self) -> Vec<u8> {
        [
            &self.dev.to_be_bytes()[..],
            &self.ino.to_be_bytes(),
            &self.size.to_be_bytes(),
            &self.mtime.0.to_be_bytes(),
            &self.mtime.1.to_be_bytes(),
            &self.ctime.0.to_be_bytes(),
            &self.ctime.1.to_be_bytes(),
        ]
        .concat()
    }

    fn decode(b: &[u8]) -> Option<Stamp> {
        if b.len() != STAMP_LEN {
            return None;
        }
        let u64_at = |at: usize| u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        let u32_at = |at: usize| u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"));
        Some(Stamp {
            dev: u64_at(0),
            ino: u64_at(8),
            size: u64_at(16),
            mtime: (u64_at(24) as i64, u32_at(32)),
            ctime: (u64_at(36) as i64, u32_at(44)),
        })
    }
}

/// The records of a manifest file, not yet verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestFile {
    /// The head payload (sub-type 0).
    pub head: Vec<u8>,
    /// Page payloads, page 0 first.
    pub pages: Vec<Vec<u8>>,
    /// Signed end payloads (kind 7), in the order the sender made them.
    pub ends: Vec<Vec<u8>>,
    /// The image file the records were made from, as it was then (None:
    /// not a regular file, or not known).
    pub stamp: Option<Stamp>,
}

impl ManifestFile {
    /// The file for `manifest` whose signed head payload is `head` (made
    /// with `key`, naming URLs or not): its signed `pages` (all of them,
    /// in order) and one signed end carrying `digest`, the image's SHA-256
    /// or root.
    pub fn new(
        head: Vec<u8>,
        manifest: &Manifest,
        key: &ed25519_dalek::SigningKey,
        pages: Vec<Vec<u8>>,
        digest: ImageDigest,
    ) -> Self {
        ManifestFile {
            head,
            pages,
            ends: vec![manifest.sign_end(key, 0, digest.flags(), &digest.bytes())],
            stamp: None,
        }
    }

    /// The file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let stamp = self.stamp.map(|s| s.encode());
        let records: Vec<(u8, &Vec<u8>)> = std::iter::once((Kind::Manifest as u8, &self.head))
            .chain(self.pages.iter().map(|p| (Kind::Manifest as u8, p)))
            .chain(self.ends.iter().map(|e| (Kind::SignedEnd as u8, e)))
            .chain(stamp.iter().map(|s| (STAMP_KIND, s)))
            .collect();
        let len: usize = 16 + records.iter().map(|(_, r)| 5 + r.len()).sum::<usize>();
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.extend_from_slice(&(records.len() as u32).to_be_bytes());
        for (kind, r) in records {
            out.push(kind);
            out.extend_from_slice(&(r.len() as u32).to_be_bytes());
            out.extend_from_slice(r);
        }
        out
    }

    /// Split `bytes` into records. Only the framing is checked here (magic,
    /// version, kinds and their order, lengths, sub-types, nothing left
    /// over); signatures and pages are checked by the receiver as for
    /// packets.
    pub fn parse(bytes: &[u8]) -> std::result::Result<ManifestFile, FileError> {
        if bytes.len() < 16 || &bytes[..8] != MAGIC {
            return Err(FileError::NotAManifest);
        }
        let u32_at = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let version = u32_at(8);
        if version != VERSION {
            return Err(FileError::Version(version));
        }
        let count = u32_at(12);
        if count == 0 || count > MAX_RECORDS {
            return Err(FileError::Malformed("record count"));
        }
        let mut at = 16;
        let mut file = ManifestFile {
            head: Vec::new(),
            pages: Vec::new(),
            ends: Vec::new(),
            stamp: None,
        };
        for n in 0..count {
            if bytes.len() - at < 5 {
                return Err(FileError::Malformed("truncated"));
            }
            let kind = bytes[at];
            let len = u32_at(at + 1) as usize;
            at += 5;
            if len == 0 || len > MAX_MANIFEST_PAYLOAD || bytes.len() - at < len {
                return Err(FileError::Malformed("record length"));
            }
            let r = bytes[at..at + len].to_vec();
            at += len;
            // The head, then pages, then signed ends, then a stamp.
            const MANIFEST: u8 = Kind::Manifest as u8;
            const END: u8 = Kind::SignedEnd as u8;
            let stamped = file.stamp.is_some();
            match (kind, n, r[0]) {
                (MANIFEST, 0, SUB_HEAD) => file.head = r,
                (MANIFEST, 1.., SUB_PAGE) if file.ends.is_empty() && !stamped => file.pages.push(r),
                (END, 1.., _) if file.ends.len() < MAX_ENDS as usize && !stamped => {
                    file.ends.push(r)
                }
                (STAMP_KIND, 1.., _) if !stamped => {
                    file.stamp =
                        Some(Stamp::decode(&r).ok_or(FileError::Malformed("stamp length"))?)
                }
                _ => return Err(FileError::Malformed("record kind or order")),
            }
        }
        if at != bytes.len() {
            return Err(FileError::Malformed("bytes after the last record"));
        }
        Ok(file)
    }

    /// Write the file at `path` atomically: into `path.tmp`, synced, then
    /// renamed over `path`, so a web server never serves half a file. The
    /// directory is reached by [`safe_fs::parent`]'s held-descriptor walk
    /// (a symbolic link another user planted in a directory others may
    /// write is not followed); the temporary file is created in that
    /// descriptor anew ([`safe_fs::Dir::create_fresh`]: `O_EXCL`, a stale
    /// one of ours removed first, anything else there refused) and renamed
    /// over the last name with `renameat`, which replaces a link there
    /// rather than following it.
    pub fn write_atomic(&self, path: &Path) -> Result<()> {
        let tmp = tmp_path(path);
        let io = |what: &str, p: &Path, e: std::io::Error| {
            Error::new(ErrorCode::TargetIo, format!("{what} {}: {e}", p.display()))
        };
        let (dir, name) =
            safe_fs::parent(path).map_err(|e| io("cannot open the directory of", path, e))?;
        let mut tmp_name = name.as_bytes().to_vec();
        tmp_name.extend_from_slice(b".tmp");
        let tmp_name = std::ffi::CString::new(tmp_name).expect("a name holds no NUL");
        let mut f = dir
            .create_fresh(&tmp_name, 0o644)
            .map_err(|e| io("cannot create", &tmp, e))?;
        f.write_all(&self.encode())
            .and_then(|()| f.sync_all())
            .map_err(|e| io("cannot write", &tmp, e))?;
        dir.rename(&tmp_name, &name).map_err(|e| {
            let _ = dir.remove(&tmp_name);
            io("cannot rename", &tmp, e)
        })
    }
}

/// `IMAGE.xdpcast-manifest` for the image at `image`.
pub fn path_beside(image: &Path) -> PathBuf {
    let mut s = image.as_os_str().to_owned();
    s.push(SUFFIX);
    PathBuf::from(s)
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// Why bytes are not a manifest file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    /// No magic: an HTML error page, another file.
    #[error("not an xdpcast manifest file")]
    NotAManifest,
    /// A version this receiver does not read.
    #[error("manifest file version {0} (this receiver reads {VERSION})")]
    Version(u32),
    /// Framing broken.
    #[error("malformed manifest file ({0})")]
    Malformed(&'static str),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::wire::Geometry;
    use ed25519_dalek::SigningKey;

    fn sample(len: usize) -> (Manifest, SigningKey, ManifestFile) {
        let img: Vec<u8> = (0..len).map(|i| (i * 13 % 251) as u8).collect();
        let geometry = Geometry::new(len as u64, 100);
        let m = Manifest {
            digest: [1; 32],
            issued_at: 1_800_000_000,
            ..Manifest::new(9, geometry, 4)
        };
        let key = SigningKey::from_bytes(&[5; 32]);
        let pages = (0..m.page_count())
            .map(|i| m.page_of(&key, i, &img))
            .collect();
        let f = ManifestFile::new(m.sign(&key), &m, &key, pages, ImageDigest::Sha256([1; 32]));
        (m, key, f)
    }

    #[test]
    fn round_trip_verifies_with_the_packet_code() {
        for len in [1, 399, 400, 6_401, 40_000] {
            let (m, key, f) = sample(len);
            let back = ManifestFile::parse(&f.encode()).unwrap();
            assert_eq!(back, f);
            let vk = key.verifying_key();
            let (got, _) = Manifest::verify(&back.head, &[vk]).unwrap();
            assert_eq!(got, m);
            assert_eq!(back.pages.len() as u64, m.page_count());
            for (i, p) in back.pages.iter().enumerate() {
                m.verify_page(&vk, i as u64, p).unwrap();
            }
            let end = m.verify_end(&vk, &back.ends[0]).unwrap();
            assert_eq!(end.digest, Some([1; 32]));
        }
    }

    #[test]
    fn a_stamp_comes_last_and_round_trips() {
        let (_, _, mut f) = sample(6_401);
        let me = std::fs::File::open("/proc/self/exe").unwrap();
        f.stamp = Stamp::of(&me);
        assert!(f.stamp.is_some());
        assert_eq!(ManifestFile::parse(&f.encode()), Ok(f.clone()));
        // Not a regular file: no stamp.
        assert_eq!(Stamp::of(&std::fs::File::open("/dev/null").unwrap()), None);
        // A record after the stamp, or a stamp of another length, refused.
        let mut after = f.encode();
        let page = f.pages[0].clone();
        after.push(Kind::Manifest as u8);
        after.extend_from_slice(&(page.len() as u32).to_be_bytes());
        after.extend_from_slice(&page);
        let n = u32::from_be_bytes(after[12..16].try_into().unwrap()) + 1;
        after[12..16].copy_from_slice(&n.to_be_bytes());
        assert!(ManifestFile::parse(&after).is_err());
        let mut short = f.encode();
        let at = short.len() - STAMP_LEN - 4;
        short[at..at + 4].copy_from_slice(&(STAMP_LEN as u32 - 1).to_be_bytes());
        short.pop();
        assert_eq!(
            ManifestFile::parse(&short),
            Err(FileError::Malformed("stamp length"))
        );
    }

    #[test]
    fn every_truncation_and_framing_error_is_refused() {
        let (m, key, f) = sample(6_401);
        let bytes = f.encode();
        for cut in 0..bytes.len() {
            assert!(ManifestFile::parse(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(ManifestFile::parse(&longer).is_err());
        // Signed ends after the pages; a page before the head, a head
        // twice, a kind that does not fit are refused.
        let mut f = f.clone();
        f.ends.push(m.sign_end(&key, 1, 0, &[1; 32]));
        let good = f.encode();
        assert_eq!(ManifestFile::parse(&good), Ok(f.clone()));
        let mut swapped = f.clone();
        swapped.pages.insert(0, f.head.clone());
        assert!(ManifestFile::parse(&swapped.encode()).is_err());
        let mut kind = good.clone();
        kind[16] = 7;
        assert!(ManifestFile::parse(&kind).is_err());
        let mut v2 = bytes.clone();
        v2[11] = 2;
        assert_eq!(ManifestFile::parse(&v2), Err(FileError::Version(2)));
        assert_eq!(
            ManifestFile::parse(b"<html>not found</html>"),
            Err(FileError::NotAManifest)
        );
        let mut huge = bytes.clone();
        huge[12..16].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(ManifestFile::parse(&huge).is_err());
    }

    #[test]
    fn written_atomically_beside_the_image() {
        let dir = std::env::temp_dir().join(format!("xdpcast-mf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = path_beside(&dir.join("disk.img"));
        assert!(path
            .to_string_lossy()
            .ends_with("disk.img.xdpcast-manifest"));
        let (_, _, f) = sample(1000);
        f.write_atomic(&path).unwrap();
        assert_eq!(ManifestFile::parse(&std::fs::read(&path).unwrap()), Ok(f));
        assert!(!tmp_path(&path).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Issue 21 (e): in a directory others may write (sticky, like /tmp),
    /// links another user planted at the manifest's path, at its temporary
    /// path or as a directory on the way are never written through.
    #[test]
    fn links_another_user_planted_are_not_followed() {
        use std::os::unix::fs::{lchown, symlink, PermissionsExt};
        // lchown to another user needs root (the suite runs as root).
        if crate::safe_fs::euid() != 0 {
            return;
        }
        const NOBODY: u32 = 65534;
        let top = std::env::temp_dir().join(format!("xdpcast-mf-links-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&top);
        let secret = top.join("secret");
        std::fs::create_dir_all(&secret).unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o700)).unwrap();
        let victim = secret.join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let public = top.join("pub");
        std::fs::create_dir(&public).unwrap();
        std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let plant = |at: &Path, to: &Path| {
            symlink(to, at).unwrap();
            lchown(at, Some(NOBODY), Some(NOBODY)).unwrap();
        };
        let (_, _, f) = sample(1000);

        // As a directory on the way: refused.
        plant(&public.join("imgs"), &secret);
        assert!(f
            .write_atomic(&path_beside(&public.join("imgs/c.img")))
            .is_err());
        assert!(!secret.join("c.img.xdpcast-manifest").exists());
        assert!(!secret.join("c.img.xdpcast-manifest.tmp").exists());

        // At the manifest's path: replaced by the file, not followed.
        let path = path_beside(&public.join("a.img"));
        plant(&path, &victim);
        f.write_atomic(&path).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_file(), "the link was replaced");
        assert_eq!(
            ManifestFile::parse(&std::fs::read(&path).unwrap()),
            Ok(f.clone())
        );

        // At its temporary path: refused, nothing written.
        let path = path_beside(&public.join("b.img"));
        plant(&tmp_path(&path), &victim);
        assert!(f.write_atomic(&path).is_err());
        assert!(!path.exists());

        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        std::fs::remove_dir_all(&top).unwrap();
    }
}
