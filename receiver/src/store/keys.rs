//! Ed25519 key files for signed sessions.
//!
//! - secret key (`xdpcast keygen --out KEY`): one line
//!   `xdpcast-ed25519-secret <64 hex digits>`, mode 0600, created with
//!   `O_EXCL|O_NOFOLLOW`; refused on load when group or others may read it.
//! - public key (`KEY.pub`): one line `xdpcast-ed25519 <64 hex digits> [comment]`.
//!
//! `--trust` takes a public key file, a directory (every `*.pub` file in
//! it), or the 64 hex digits themselves. A key file or directory another
//! user could write (or reached through one of their links) is refused.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::{SigningKey, VerifyingKey};

use crate::error::{Error, ErrorCode, Result};
use crate::proto::wire::{from_hex, hex};
use crate::safe_fs;

const SECRET_TAG: &str = "xdpcast-ed25519-secret";
const PUBLIC_TAG: &str = "xdpcast-ed25519";

fn bad(msg: String) -> Error {
    Error::new(ErrorCode::InvalidArgument, msg)
}

fn read_no_follow(path: &Path) -> Result<(String, std::fs::Metadata)> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| bad(format!("cannot open key {}: {e}", path.display())))?;
    let meta = f
        .metadata()
        .map_err(|e| bad(format!("cannot stat key {}: {e}", path.display())))?;
    let text = std::io::read_to_string(f)
        .map_err(|e| bad(format!("cannot read key {}: {e}", path.display())))?;
    Ok((text, meta))
}

/// The 32 key bytes after `tag` on the first line of `text`.
fn parse(text: &str, tag: &str) -> Option<[u8; 32]> {
    let mut words = text.lines().next()?.split_whitespace();
    (words.next()? == tag).then_some(())?;
    from_hex::<32>(words.next()?)
}

/// Make a new key pair: the secret key at `path` (0600, must not exist) and
/// the public key at `path.pub`. Returns the public key.
pub fn generate(path: &Path, comment: &str) -> Result<VerifyingKey> {
    let mut seed = [0u8; 32];
    // SAFETY: getrandom writes at most `len` bytes into the buffer we own.
    let n = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
    if n != seed.len() as isize {
        return Err(Error::new(
            ErrorCode::Internal,
            format!("getrandom: {}", std::io::Error::last_os_error()),
        ));
    }
    let key = SigningKey::from_bytes(&seed);
    let public = key.verifying_key();
    let create = |p: &Path, mode: u32, line: String| -> Result<()> {
        // Every component checked, created with O_EXCL | O_NOFOLLOW.
        let mut f = safe_fs::parent(p)
            .and_then(|(dir, name)| dir.create_exclusive(&name, mode))
            .map_err(|e| bad(format!("cannot create {}: {e}", p.display())))?;
        f.write_all(line.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| Error::target_io(&format!("cannot write {}", p.display()), &e))
    };
    create(path, 0o600, format!("{SECRET_TAG} {}\n", hex(&seed)))?;
    create(
        &public_path(path),
        0o644,
        format!("{PUBLIC_TAG} {} {comment}\n", hex(public.as_bytes())),
    )?;
    Ok(public)
}

/// Where the public half of the secret key at `path` goes.
pub fn public_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

/// Load a secret key; refused if group or others may read it.
pub fn load_signing(path: &Path) -> Result<SigningKey> {
    let (text, meta) = read_no_follow(path)?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(bad(format!(
            "secret key {} is readable by others (mode {:o}): chmod 600 it",
            path.display(),
            meta.mode() & 0o777
        )));
    }
    let seed = parse(&text, SECRET_TAG)
        .ok_or_else(|| bad(format!("{} is not an xdpcast secret key", path.display())))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// The public key in `text`, read from `what`.
fn parse_public(text: &str, what: &str) -> Result<VerifyingKey> {
    let bytes = parse(text, PUBLIC_TAG)
        .ok_or_else(|| bad(format!("{what} is not an xdpcast public key")))?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| bad(format!("{what}: not a valid Ed25519 key")))
}

fn read_key(f: File, what: &str) -> Result<String> {
    let mut text = String::new();
    // A key is one short line: read no more than a page of it.
    f.take(4096)
        .read_to_string(&mut text)
        .map_err(|e| bad(format!("cannot read key {what}: {e}")))?;
    Ok(text)
}

/// The keys named by one `--trust` value: a public key file, a directory
/// of `*.pub` files, or 64 hex digits. A file or directory is trusted only
/// if this user or root owns it and neither group nor others may write it,
/// and the path to it passes the checks of [`safe_fs`] (no link or file
/// another user could have planted on the way): see
/// [`safe_fs::open_trusted`].
pub fn load_trusted(spec: &str) -> Result<Vec<VerifyingKey>> {
    let path = Path::new(spec);
    let opened = match safe_fs::open_trusted(path) {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(k) = from_hex::<32>(spec).and_then(|b| VerifyingKey::from_bytes(&b).ok()) {
                return Ok(vec![k]);
            }
            return Err(bad(format!("cannot open key {spec}: {e}")));
        }
        Err(e) => return Err(bad(format!("refusing --trust {spec}: {e}"))),
    };
    match opened {
        safe_fs::Trusted::File(f) => Ok(vec![parse_public(&read_key(f, spec)?, spec)?]),
        safe_fs::Trusted::Dir(dir) => {
            let files = dir
                .trusted_files(".pub")
                .map_err(|e| bad(format!("refusing --trust {spec}: {e}")))?;
            let mut keys = Vec::new();
            for (name, f) in files {
                let what = path.join(&name);
                let what = what.display().to_string();
                keys.push(parse_public(&read_key(f, &what)?, &what)?);
            }
            if keys.is_empty() {
                return Err(bad(format!("no *.pub key in {}", path.display())));
            }
            Ok(keys)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_load_and_refuse() {
        let dir = std::env::temp_dir().join(format!("xdpcast-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sk = dir.join("site.key");
        let public = generate(&sk, "test").unwrap();
        assert!(generate(&sk, "again").is_err(), "never overwrites a key");
        assert_eq!(load_signing(&sk).unwrap().verifying_key(), public);
        assert_eq!(
            load_trusted(public_path(&sk).to_str().unwrap()).unwrap(),
            vec![public]
        );
        assert_eq!(load_trusted(dir.to_str().unwrap()).unwrap(), vec![public]);
        assert_eq!(load_trusted(&hex(public.as_bytes())).unwrap(), vec![public]);
        std::fs::set_permissions(&sk, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(
            load_signing(&sk).is_err(),
            "a world-readable secret is refused"
        );
        assert!(
            load_trusted(sk.to_str().unwrap()).is_err(),
            "a secret is no public key"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
