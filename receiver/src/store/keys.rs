//! Ed25519 key files for signed sessions.
//!
//! - secret key (`xdpcast keygen --out KEY`): one line
//!   `xdpcast-ed25519-secret <64 hex digits>`, mode 0600, created with
//!   `O_EXCL|O_NOFOLLOW`; refused on load when group or others may read it.
//! - public key (`KEY.pub`): one line `xdpcast-ed25519 <64 hex digits> [comment]`.
//!
//! `--trust` takes a public key file, a directory (every `*.pub` file in
//! it), or the 64 hex digits themselves.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::{SigningKey, VerifyingKey};

use crate::error::{Error, ErrorCode, Result};
use crate::proto::wire::{from_hex, hex};

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
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(p)
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

fn load_public(path: &Path) -> Result<VerifyingKey> {
    let (text, _) = read_no_follow(path)?;
    let bytes = parse(&text, PUBLIC_TAG)
        .ok_or_else(|| bad(format!("{} is not an xdpcast public key", path.display())))?;
    VerifyingKey::from_bytes(&bytes)
        .map_err(|_| bad(format!("{}: not a valid Ed25519 key", path.display())))
}

/// The keys named by one `--trust` value: a public key file, a directory
/// of `*.pub` files, or 64 hex digits.
pub fn load_trusted(spec: &str) -> Result<Vec<VerifyingKey>> {
    let path = Path::new(spec);
    if path.is_dir() {
        let entries = std::fs::read_dir(path)
            .map_err(|e| bad(format!("cannot list {}: {e}", path.display())))?;
        let mut keys = Vec::new();
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "pub") {
                keys.push(load_public(&p)?);
            }
        }
        if keys.is_empty() {
            return Err(bad(format!("no *.pub key in {}", path.display())));
        }
        return Ok(keys);
    }
    if !path.exists() {
        if let Some(k) = from_hex::<32>(spec).and_then(|b| VerifyingKey::from_bytes(&b).ok()) {
            return Ok(vec![k]);
        }
    }
    Ok(vec![load_public(path)?])
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
