//! The signed manifest published beside the image, for receivers that
//! fetch over HTTP (`IMAGE.xdpcast-manifest`, the format in
//! [`crate::fetch::manifest_file`]): written by `send --sign` for the
//! session it sends, or ahead of time by `xdpcast manifest`.
//!
//! `send --sign` publishes it before its first pass when the file it finds
//! there was made from the image as it is now ([`ahead`]: same stamp,
//! every record signed by the sender's own key, same block and chunk
//! size): it takes the chunk hashes from it, signs them anew for this
//! session, and writes the file before the first packet, so a receiver
//! that hears no multicast can start at once. Otherwise it removes a file
//! that names another image (receivers would fetch a manifest the image
//! on the server does not match) and writes the file when its first pass
//! has read the image ([`after_first_pass`]).

use std::fs::File;
use std::io::Read as _;
use std::path::Path;

use ed25519_dalek::SigningKey;
use memmap2::Mmap;

use crate::error::{Error, ErrorCode, Result};
use crate::fetch::manifest_file::{self, ManifestFile, Stamp};
use crate::proto::manifest::{self, ImageDigest, Manifest};
use crate::proto::wire::Geometry;
use crate::send::zeros::{self, DataMap};

/// What `xdpcast manifest` signs, besides the image.
#[derive(Debug, Clone)]
pub struct Offline {
    /// Session id: give `send --session` the same one, so receivers that
    /// started from the file also take the multicast session's blocks.
    pub session: u32,
    /// Block size: the same as the sender's (its MTU), or the chunk
    /// hashes differ from the multicast session's.
    pub block_size: u32,
    /// Web servers holding the image, named in the signed head (as `send
    /// --http-url` does): receivers that verified it and were given no
    /// `--http` fetch from them.
    pub urls: Vec<String>,
}

/// Sign a manifest of the image at `image` for a session made later (no
/// repair address, one pass; the file's receivers fetch over HTTP), with
/// the chunk hashes a sender of the same block size makes. URLs that are
/// not http(s), hold a space or a control character, or take more than
/// 512 bytes are an `invalid_argument` error, before the image is read.
pub fn offline(image: &Path, key: &SigningKey, o: Offline) -> Result<(Manifest, ManifestFile)> {
    let invalid = |e: String| Error::new(ErrorCode::InvalidArgument, format!("--http-url {e}"));
    // The URL block is checked before hours of hashing, not after.
    manifest::check_urls(&o.urls).map_err(invalid)?;
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
        // Read ahead of time: the head names the digest too.
        digest,
        issued_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        ..Manifest::new(o.session, geometry, chunk_blocks)
    };
    let pages = (0..m.page_count())
        .map(|i| m.page_of(key, i, &map))
        .collect();
    let head = m.sign_with_urls(key, &o.urls).map_err(invalid)?;
    let mut f = ManifestFile::new(head, &m, key, pages, ImageDigest::Sha256(digest));
    f.stamp = Stamp::of(&file);
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

/// What a kept manifest file published before the first pass says: the
/// image's digest it names and its pages, signed anew for this session.
#[derive(Debug, Clone)]
pub struct Kept {
    /// The SHA-256 or root of the image the file was made from.
    pub digest: ImageDigest,
    /// Its pages as this session's sender signs them: the same bytes as
    /// the pages the sender makes if the image is still the same.
    pub pages: Vec<Vec<u8>>,
}

/// Before the first pass: publish the manifest file at `path` for the
/// session `m` (its signed head payload `head`) if the file kept there was
/// made from the image as it is (`stamp`, taken when the sender opened it)
/// and signed by `key`; what it names then. A kept file that does not fit
/// is removed (it would send HTTP receivers to another image); the file is
/// then written when the first pass ends.
pub fn ahead(
    path: &Path,
    stamp: Option<Stamp>,
    head: &[u8],
    m: &Manifest,
    key: &SigningKey,
) -> Option<Kept> {
    let stamp = stamp?;
    let kept = read_kept(path)?;
    match reuse(&kept, stamp, head, m, key) {
        Ok(file) => match file.write_atomic(path) {
            Ok(()) => {
                log::info!(
                    "signed manifest for HTTP receivers, before the first pass (the image is unchanged): {}",
                    path.display()
                );
                let vk = key.verifying_key();
                let digest = file.ends.iter().find_map(|e| end_digest(m, &vk, e))?;
                Some(Kept {
                    digest,
                    pages: file.pages,
                })
            }
            Err(e) => {
                log::warn!("{e} (written again when the first pass ends)");
                None
            }
        },
        Err(why) => {
            log::info!(
                "{}: {why}: removed, written again when the first pass ends",
                path.display()
            );
            if let Err(e) = std::fs::remove_file(path) {
                log::warn!("cannot remove {}: {e}", path.display());
            }
            None
        }
    }
}

/// The SHA-256 or root a signed end `payload` of `m` carries, if it
/// verifies with `vk` and carries one.
fn end_digest(
    m: &Manifest,
    vk: &ed25519_dalek::VerifyingKey,
    payload: &[u8],
) -> Option<ImageDigest> {
    let end = m.verify_end(vk, payload).ok()?;
    end.digest
        .map(ImageDigest::Sha256)
        .or(end.root.map(ImageDigest::Root))
}

/// When the first pass has read the whole image (`digest`, every page in
/// `pages`): write the manifest file at `path` unless [`ahead`] published
/// the same already (`kept`). Stamped only if the image is still as it was
/// when the sender opened it (`stamp`). `signed`: the session's head
/// payload, manifest and key.
pub fn after_first_pass(
    path: &Path,
    image: &File,
    stamp: Option<Stamp>,
    kept: Option<&Kept>,
    signed: (Vec<u8>, &Manifest, &SigningKey),
    pages: Vec<Vec<u8>>,
    digest: ImageDigest,
) {
    let (head, m, key) = signed;
    if let Some(k) = kept {
        if k.pages == pages && k.digest == digest {
            return;
        }
        log::warn!(
            "{}: the image read differs from the one its kept manifest named (changed while sent?): written anew",
            path.display()
        );
    }
    let mut file = ManifestFile::new(head, m, key, pages, digest);
    file.stamp = stamp.filter(|s| Stamp::of(image) == Some(*s) && kept.is_none());
    write_beside(&file, path);
}

/// The file kept at `path`, if it is a regular file of ours with one name
/// (never through a link: the directory may be a shared one), at most
/// [`manifest_file::MAX_FILE_LEN`] bytes, well framed.
fn read_kept(path: &Path) -> Option<ManifestFile> {
    let f = crate::safe_fs::open_own(path)?;
    let mut bytes = Vec::new();
    if let Err(e) = f
        .take(manifest_file::MAX_FILE_LEN + 1)
        .read_to_end(&mut bytes)
    {
        log::warn!("cannot read {}: {e}", path.display());
        return None;
    }
    match ManifestFile::parse(&bytes) {
        Ok(k) => Some(k),
        Err(e) => {
            log::warn!("{}: {e}: ignored", path.display());
            None
        }
    }
}

/// The file for session `m` from the chunk hashes of `kept`, when it was
/// made from the image as it is (`stamp`) with `key`'s signatures, the
/// same geometry and chunk size; its signed end carries the image's
/// SHA-256 or root the kept file names.
fn reuse(
    kept: &ManifestFile,
    stamp: Stamp,
    head: &[u8],
    m: &Manifest,
    key: &SigningKey,
) -> std::result::Result<ManifestFile, &'static str> {
    if kept.stamp != Some(stamp) {
        return Err("made from another image or before the image changed");
    }
    let vk = key.verifying_key();
    let (old, _) = Manifest::verify(&kept.head, &[vk]).map_err(|_| "not signed by this key")?;
    if old.geometry != m.geometry || old.chunk_blocks != m.chunk_blocks {
        return Err("another block or chunk size");
    }
    if kept.pages.len() as u64 != old.page_count() {
        return Err("pages missing");
    }
    let digest = kept
        .ends
        .iter()
        .find_map(|e| end_digest(&old, &vk, e))
        .or((old.digest != [0; 32]).then_some(ImageDigest::Sha256(old.digest)))
        .ok_or("no digest of the image")?;
    let pages = kept
        .pages
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let leaves = old
                .verify_page(&vk, i as u64, p)
                .map_err(|_| "a page does not verify")?;
            Ok(m.sign_page(key, i as u64, &leaves))
        })
        .collect::<std::result::Result<Vec<_>, &'static str>>()?;
    let mut file = ManifestFile::new(head.to_vec(), m, key, pages, digest);
    file.stamp = Some(stamp);
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest as _;

    /// A scratch directory removed on drop.
    struct Scratch(std::path::PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let p = std::env::temp_dir().join(format!("xdpcast-pub-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Scratch(p)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn image(dir: &Scratch, len: usize) -> (std::path::PathBuf, Vec<u8>) {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 31 % 253) as u8).collect();
        let p = dir.0.join("disk.img");
        std::fs::write(&p, &bytes).unwrap();
        (p, bytes)
    }

    const O: Offline = Offline {
        session: 7,
        block_size: 1400,
        urls: Vec::new(),
    };

    /// This session's manifest: the kept one's geometry and chunk size,
    /// another id, date and repair address.
    fn session_of(m: &Manifest) -> Manifest {
        Manifest {
            session: 99,
            issued_at: m.issued_at + 60,
            passes: 2,
            repair_port: 4000,
            ..*m
        }
    }

    #[test]
    fn a_kept_file_of_the_unchanged_image_is_signed_anew_for_the_session() {
        let dir = Scratch::new("reuse");
        let (img, bytes) = image(&dir, 3 << 20);
        let key = SigningKey::from_bytes(&[4; 32]);
        let (m, kept) = offline(&img, &key, O.clone()).unwrap();
        let stamp = Stamp::of(&File::open(&img).unwrap()).unwrap();
        assert_eq!(kept.stamp, Some(stamp));
        let now = session_of(&m);
        let file = reuse(&kept, stamp, &now.sign(&key), &now, &key).unwrap();
        let sha: [u8; 32] = sha2::Sha256::digest(&bytes).into();
        // Every record verifies for this session, and the pages are the
        // ones its sender makes from the image (the same bytes).
        let vk = key.verifying_key();
        assert_eq!(Manifest::verify(&file.head, &[vk]).unwrap().0, now);
        assert_eq!(file.pages.len() as u64, now.page_count());
        for (i, p) in file.pages.iter().enumerate() {
            assert_eq!(*p, now.page_of(&key, i as u64, &bytes));
        }
        assert_eq!(
            now.verify_end(&vk, &file.ends[0]).unwrap().digest,
            Some(sha)
        );
        assert_eq!(file.stamp, Some(stamp));
    }

    #[test]
    fn a_kept_file_is_refused_for_another_image_key_size_or_a_bad_page() {
        let dir = Scratch::new("refuse");
        let (img, _) = image(&dir, 2 << 20);
        let key = SigningKey::from_bytes(&[4; 32]);
        let (m, kept) = offline(&img, &key, O.clone()).unwrap();
        let stamp = kept.stamp.unwrap();
        let now = session_of(&m);
        let changed = Stamp {
            mtime: (stamp.mtime.0, stamp.mtime.1 ^ 1),
            ..stamp
        };
        assert!(reuse(&kept, changed, &now.sign(&key), &now, &key).is_err());
        let unstamped = ManifestFile {
            stamp: None,
            ..kept.clone()
        };
        assert!(reuse(&unstamped, stamp, &now.sign(&key), &now, &key).is_err());
        let other = SigningKey::from_bytes(&[5; 32]);
        assert!(reuse(&kept, stamp, &now.sign(&other), &now, &other).is_err());
        let (m2, _) = offline(
            &img,
            &key,
            Offline {
                block_size: 1000,
                ..O
            },
        )
        .unwrap();
        assert!(reuse(
            &kept,
            stamp,
            &session_of(&m2).sign(&key),
            &session_of(&m2),
            &key
        )
        .is_err());
        let mut bad = kept.clone();
        bad.pages[0][10] ^= 1;
        assert!(reuse(&bad, stamp, &now.sign(&key), &now, &key).is_err());
        let mut short = kept.clone();
        short.pages.pop();
        assert!(reuse(&short, stamp, &now.sign(&key), &now, &key).is_err());
        assert!(reuse(&kept, stamp, &now.sign(&key), &now, &key).is_ok());
    }

    #[test]
    fn ahead_publishes_a_fitting_file_and_removes_a_stale_one() {
        let dir = Scratch::new("ahead");
        let (img, _) = image(&dir, 1 << 20);
        let key = SigningKey::from_bytes(&[4; 32]);
        let path = manifest_file::path_beside(&img);
        let (m, kept) = offline(&img, &key, O.clone()).unwrap();
        kept.write_atomic(&path).unwrap();
        let stamp = Stamp::of(&File::open(&img).unwrap());
        let now = session_of(&m);
        let k = ahead(&path, stamp, &now.sign(&key), &now, &key).unwrap();
        let sha: [u8; 32] = sha2::Sha256::digest(std::fs::read(&img).unwrap()).into();
        assert_eq!(k.digest, ImageDigest::Sha256(sha));
        assert_eq!(k.pages.len() as u64, now.page_count());
        let file = ManifestFile::parse(&std::fs::read(&path).unwrap()).unwrap();
        let vk = key.verifying_key();
        assert_eq!(Manifest::verify(&file.head, &[vk]).unwrap().0, now);
        // The image rewritten: the kept file names other bytes and goes.
        std::fs::write(&img, vec![1u8; 1 << 20]).unwrap();
        let stamp = Stamp::of(&File::open(&img).unwrap());
        assert!(ahead(&path, stamp, &now.sign(&key), &now, &key).is_none());
        assert!(!path.exists());
        // Nothing kept: nothing published.
        assert!(ahead(&path, stamp, &now.sign(&key), &now, &key).is_none());
        // A file a signed sender wrote without hashing the image with
        // SHA-256 (its end carries the root) is reused as well.
        let bytes = std::fs::read(&img).unwrap();
        let pages: Vec<Vec<u8>> = (0..now.page_count())
            .map(|i| now.page_of(&key, i, &bytes))
            .collect();
        let root = ImageDigest::Root(now.root_of_pages(&pages).unwrap());
        let f = File::open(&img).unwrap();
        let signed = (now.sign(&key), &now, &key);
        after_first_pass(&path, &f, stamp, None, signed, pages.clone(), root);
        let k = ahead(&path, stamp, &now.sign(&key), &now, &key).unwrap();
        assert_eq!((k.digest, k.pages), (root, pages));
    }
}
