//! Opening paths in directories other users may write (`/tmp`, `/dev/shm`,
//! a shared image directory) without being led astray by what they plant
//! there: symbolic links are followed only where the kernel's
//! `protected_symlinks` rule would follow them, files are created with
//! `O_CREAT | O_EXCL | O_NOFOLLOW`, and a file found in place is used only
//! if its owner is right. Used by the target and resume files (`store`) and
//! the status pages (`status`). docs/security.md gives the threat model.

use std::ffi::CString;
use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// The effective uid of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Sticky and writable by everyone (`/tmp`, `/dev/shm`).
fn sticky_world_writable(dir: &Metadata) -> bool {
    dir.mode() & 0o1002 == 0o1002
}

/// The kernel's `protected_symlinks` rule (fs.protected_symlinks = 1): a
/// symbolic link owned by `link_uid` in directory `dir` may be followed by
/// `euid` unless the directory is sticky and world-writable, and then only
/// if the link is the follower's or the directory owner's.
pub fn may_follow(dir: &Metadata, link_uid: u32, euid: u32) -> bool {
    !sticky_world_writable(dir) || link_uid == euid || link_uid == dir.uid()
}

/// The kernel's `protected_regular` rule: in a sticky world-writable
/// directory, an existing regular file is not opened for writing unless it
/// is the opener's or the directory owner's (someone else put it there to
/// read or change what we write).
fn may_write_existing(dir: &Metadata, file: &Metadata, euid: u32) -> bool {
    !sticky_world_writable(dir) || file.uid() == euid || file.uid() == dir.uid()
}

fn denied(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, msg)
}

fn parent(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Check that `path` may be written by this process under the two rules
/// above; `Ok(true)` if it is a symbolic link that may be followed.
pub fn check_out(path: &Path) -> io::Result<bool> {
    let Ok(link) = std::fs::symlink_metadata(path) else {
        return Ok(false);
    };
    let dir = std::fs::metadata(parent(path))?;
    let me = euid();
    if link.file_type().is_symlink() {
        if !may_follow(&dir, link.uid(), me) {
            return Err(denied(format!(
                "{} is a symbolic link of uid {} in a sticky world-writable directory: \
                 not followed (the kernel's protected_symlinks rule)",
                path.display(),
                link.uid()
            )));
        }
        return Ok(true);
    }
    if link.is_file() && !may_write_existing(&dir, &link, me) {
        return Err(denied(format!(
            "{} belongs to uid {} in a sticky world-writable directory: not written \
             (the kernel's protected_regular rule)",
            path.display(),
            link.uid()
        )));
    }
    Ok(false)
}

/// Open `path` for reading and writing as an output (`--out`): an
/// existing file or device, or a new regular file (created with `O_EXCL`,
/// mode 0666 less the umask). A symbolic link is followed only as
/// [`check_out`] allows (so `/dev/disk/by-id/...` works), and then only to
/// something that exists; anything else is opened with `O_NOFOLLOW`, so a
/// link planted after the check is not followed either.
pub fn open_out(path: &Path) -> io::Result<File> {
    let follow = check_out(path)?;
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    if follow {
        return o.open(path);
    }
    o.custom_flags(libc::O_NOFOLLOW);
    match o.open(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => o.create_new(true).open(path),
        r => r,
    }
}

/// Create `path` anew for writing (`O_CREAT | O_EXCL | O_NOFOLLOW`, mode
/// `mode`). A leftover regular file of ours in its place is removed first;
/// anything else there (a symbolic link, another user's file) is an error.
pub fn create_fresh(path: &Path, mode: u32) -> io::Result<File> {
    let create = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(mode)
            .open(path)
    };
    match create() {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let m = std::fs::symlink_metadata(path)?;
            if !m.is_file() || m.uid() != euid() {
                return Err(denied(format!(
                    "{} exists and is not a file of ours (uid {}, {:?}): not replaced",
                    path.display(),
                    m.uid(),
                    m.file_type()
                )));
            }
            std::fs::remove_file(path)?;
            create()
        }
        r => r,
    }
}

/// Open `path` for reading if it is a regular file of ours, not through a
/// symbolic link; None if there is none, or it is not ours.
pub fn open_own(path: &Path) -> Option<File> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    let m = f.metadata().ok()?;
    if !m.is_file() || m.uid() != euid() {
        log::warn!(
            "{}: not a file of ours (uid {}): ignored",
            path.display(),
            m.uid()
        );
        return None;
    }
    Some(f)
}

fn cstr(name: &str) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"))
}

fn cvt(rc: libc::c_int, what: &str) -> io::Result<libc::c_int> {
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(rc)
}

/// A directory that only this user can write, opened once: files in it
/// are created and removed relative to its descriptor (`openat`,
/// `unlinkat`), so no path is looked up again after the checks.
#[derive(Debug)]
pub struct PrivateDir {
    fd: OwnedFd,
}

impl PrivateDir {
    /// Open `path`, creating it (mode 0755) if missing. It must be a real
    /// directory (not a symbolic link), owned by this user, and writable by
    /// no one else.
    pub fn open(path: &Path) -> io::Result<PrivateDir> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: `c` is a valid NUL-terminated path for the calls.
        let mut fd = unsafe { libc::open(c.as_ptr(), flags) };
        if fd < 0 && io::Error::last_os_error().kind() == io::ErrorKind::NotFound {
            // SAFETY: as above. mkdir never follows a symbolic link in the
            // last component and fails if anything is there.
            let made = unsafe { libc::mkdir(c.as_ptr(), 0o755) };
            if made < 0 && io::Error::last_os_error().kind() != io::ErrorKind::AlreadyExists {
                cvt(made, &format!("mkdir {}", path.display()))?;
            }
            // SAFETY: as above.
            fd = unsafe { libc::open(c.as_ptr(), flags) };
        }
        let fd = cvt(
            fd,
            &format!("open directory {} (O_NOFOLLOW)", path.display()),
        )?;
        // SAFETY: `fd` was just opened and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let m = File::from(fd.try_clone()?).metadata()?;
        let me = euid();
        if m.uid() != me {
            return Err(denied(format!(
                "{} belongs to uid {}, not to this user (uid {me}): set XDPCAST_STATUS_DIR to a directory of yours",
                path.display(),
                m.uid()
            )));
        }
        if m.mode() & 0o022 != 0 {
            return Err(denied(format!(
                "{} is writable by group or others (mode {:o}): others could plant files there",
                path.display(),
                m.mode() & 0o7777
            )));
        }
        Ok(PrivateDir { fd })
    }

    /// Create file `name` in the directory: `O_CREAT | O_EXCL | O_NOFOLLOW`,
    /// read-write, mode `mode` (then set exactly, whatever the umask).
    pub fn create(&self, name: &str, mode: u32) -> io::Result<File> {
        let c = cstr(name)?;
        let flags =
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: valid directory descriptor and NUL-terminated name.
        let fd =
            unsafe { libc::openat(self.fd.as_raw_fd(), c.as_ptr(), flags, mode as libc::c_uint) };
        let fd = cvt(fd, &format!("create {name}"))?;
        // SAFETY: `fd` was just opened and is owned by nobody else.
        let f = unsafe { File::from_raw_fd(fd) };
        // SAFETY: plain syscall on the descriptor just opened.
        cvt(
            unsafe { libc::fchmod(f.as_raw_fd(), mode as libc::mode_t) },
            &format!("chmod {name}"),
        )?;
        Ok(f)
    }

    /// Open existing file `name` read-only, not through a symbolic link.
    pub fn open_file(&self, name: &str) -> io::Result<File> {
        let c = cstr(name)?;
        let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
        // SAFETY: valid directory descriptor and NUL-terminated name.
        let fd = unsafe { libc::openat(self.fd.as_raw_fd(), c.as_ptr(), flags) };
        let fd = cvt(fd, &format!("open {name} (O_NOFOLLOW)"))?;
        // SAFETY: `fd` was just opened and is owned by nobody else.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    /// Remove `name` if it is still the file `f` (same device and inode).
    pub fn remove_if_same(&self, name: &str, f: &File) -> io::Result<()> {
        let mine = f.metadata()?;
        let now = match self.open_file(name) {
            Ok(g) => g.metadata()?,
            // A symbolic link in its place is not ours either.
            Err(_) => return Ok(()),
        };
        if (now.dev(), now.ino()) != (mine.dev(), mine.ino()) {
            return Ok(());
        }
        self.remove(name)
    }

    /// Remove `name` (never follows a symbolic link: `unlinkat`).
    pub fn remove(&self, name: &str) -> io::Result<()> {
        let c = cstr(name)?;
        // SAFETY: valid directory descriptor and NUL-terminated name.
        cvt(
            unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) },
            &format!("unlink {name}"),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("xdpcast-safefs-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn the_kernel_rules() {
        let d = tmp("rules");
        let sticky = d.join("sticky");
        std::fs::create_dir(&sticky).unwrap();
        std::fs::set_permissions(&sticky, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let plain = std::fs::metadata(&d).unwrap();
        let sticky = std::fs::metadata(&sticky).unwrap();
        let owner = sticky.uid();
        assert!(may_follow(&plain, 4242, owner));
        assert!(
            may_follow(&sticky, owner, 4243),
            "the directory owner's link"
        );
        assert!(may_follow(&sticky, 4242, 4242), "the follower's own link");
        assert!(!may_follow(&sticky, 4242, 4243), "someone else's link");
    }

    #[test]
    fn out_paths_and_fresh_files_refuse_what_is_planted() {
        let d = tmp("out");
        let victim = d.join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        // Our own link, in a directory of ours: followed.
        let link = d.join("link");
        symlink(&victim, &link).unwrap();
        assert!(check_out(&link).unwrap());
        drop(open_out(&link).unwrap());
        // A new file is created; a dangling link is not followed into one.
        let new = d.join("new");
        drop(open_out(&new).unwrap());
        assert!(new.exists());
        let dangling = d.join("dangling");
        symlink(d.join("nowhere"), &dangling).unwrap();
        assert!(open_out(&dangling).is_err());
        assert!(!d.join("nowhere").exists());
        // create_fresh replaces our leftover file but never a link.
        let fresh = d.join("fresh");
        std::fs::write(&fresh, b"old").unwrap();
        drop(create_fresh(&fresh, 0o600).unwrap());
        assert_eq!(std::fs::read(&fresh).unwrap(), b"");
        let e = create_fresh(&link, 0o600).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert!(open_own(&link).is_none());
        assert!(open_own(&fresh).is_some());
    }

    #[test]
    fn private_dirs() {
        let d = tmp("private");
        let p = d.join("pages");
        let dir = PrivateDir::open(&p).unwrap();
        let f = dir.create("a", 0o644).unwrap();
        assert_eq!(f.metadata().unwrap().mode() & 0o7777, 0o644);
        assert_eq!(
            dir.create("a", 0o644).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        symlink("/etc/passwd", p.join("b")).unwrap();
        assert!(dir.open_file("b").is_err(), "not through a link");
        assert!(dir.create("b", 0o644).is_err());
        let other = dir.create("c", 0o644).unwrap();
        dir.remove_if_same("a", &other).unwrap();
        assert!(p.join("a").exists(), "another file is not removed");
        dir.remove_if_same("a", &f).unwrap();
        assert!(!p.join("a").exists());
        // Writable by others, or a link instead of the directory: refused.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(PrivateDir::open(&p).is_err());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        let l = d.join("l");
        symlink(&p, &l).unwrap();
        assert!(PrivateDir::open(&l).is_err());
    }
}
