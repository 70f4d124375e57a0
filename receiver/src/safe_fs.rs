//! Opening paths in directories other users may write (`/tmp`, `/dev/shm`,
//! a shared image directory) without being led astray by what they plant
//! there. Used by the target and resume files (`store`), the trusted keys
//! (`store::keys`) and the status pages (`status`). docs/security.md gives
//! the threat model.
//!
//! A path is walked one component at a time from `/` (or the working
//! directory), each looked up with `openat(O_PATH | O_NOFOLLOW)` relative to
//! the directory descriptor the walk holds, so no name is looked up twice
//! and nothing checked can be swapped before it is used. On the way:
//!
//! - a directory is *private* when only this user and root can change its
//!   names: owned by one of them, writable by neither group nor others;
//! - a symbolic link is followed only if it is in a private directory, or
//!   is owned by this user or root and has one name (the kernel's
//!   `protected_symlinks` rule, made stricter: in a directory another user
//!   can write, only a link they could not have made is followed); never a
//!   link in `/proc` (a process's descriptors: their text is not what they
//!   open);
//! - an existing file is written only if it is a regular file or a block
//!   device, and, in a directory that is not private, only if it is this
//!   user's or the directory owner's (the kernel's `protected_regular`
//!   rule) and has one name (no hard link to a file elsewhere);
//! - a new file is created with `O_CREAT | O_EXCL | O_NOFOLLOW` in the
//!   directory descriptor; whatever appears there in the meantime is looked
//!   at again under the same rules;
//! - an existing file is opened by name only after its `O_PATH` look-up
//!   passed, and used only if the opened descriptor is the same inode.

use std::ffi::{CStr, CString};
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// The effective uid of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Symbolic links one walk follows at most (the kernel's MAXSYMLINKS).
const MAX_LINKS: u32 = 40;
/// Times an open is tried again when what was looked at changed before it
/// was opened (someone is racing the walk).
const MAX_RETRIES: u32 = 8;
/// `statfs.f_type` of procfs (<linux/magic.h>).
const PROC_SUPER_MAGIC: i64 = 0x9fa0;

/// This user or root: the only owners whose names and links are trusted.
fn trusted(uid: u32) -> bool {
    uid == 0 || uid == euid()
}

fn denied(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, msg)
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.to_string())
}

fn cvt(rc: libc::c_int, what: &str) -> io::Result<libc::c_int> {
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(rc)
}

fn show(name: &CStr) -> String {
    String::from_utf8_lossy(name.to_bytes()).into_owned()
}

/// `openat(dir, name, flags | O_NOFOLLOW | O_CLOEXEC, mode)`; the raw OS
/// error is kept (callers match on it).
fn openat(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
    let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: valid directory descriptor and NUL-terminated name.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags, mode as libc::c_uint) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `fstat` of any descriptor (`O_PATH` ones included).
fn fstat(fd: BorrowedFd<'_>) -> io::Result<Metadata> {
    File::from(fd.try_clone_to_owned()?).metadata()
}

/// The text of the symbolic link open (`O_PATH`) as `fd`.
fn readlink(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: empty NUL-terminated name (the link `fd` itself, allowed for
    // O_PATH descriptors since Linux 2.6.39); the buffer is ours and its
    // length is passed.
    let n = unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    let n = cvt(n as libc::c_int, "readlink")? as usize;
    if n >= buf.len() {
        return Err(invalid("symbolic link text too long"));
    }
    buf.truncate(n);
    Ok(buf)
}

/// Bytes free on the filesystem of `fd` for this process (`fstatvfs(2)`:
/// the blocks root may use, or those any user may); None if it cannot
/// tell.
pub fn free_space(fd: BorrowedFd<'_>) -> Option<u64> {
    // SAFETY: statvfs is plain data, filled by the kernel.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor and out-pointer.
    if unsafe { libc::fstatvfs(fd.as_raw_fd(), &mut st) } != 0 || st.f_blocks == 0 {
        return None;
    }
    let blocks = if euid() == 0 { st.f_bfree } else { st.f_bavail };
    Some((blocks as u64).saturating_mul(st.f_frsize as u64))
}

/// A directory reached by a checked walk, held open: names in it are looked
/// up relative to its descriptor, never again from the top.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    meta: Metadata,
}

impl Dir {
    fn open_start(path: &CStr) -> io::Result<Dir> {
        let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
        // SAFETY: NUL-terminated path.
        let fd = unsafe { libc::open(path.as_ptr(), flags) };
        cvt(fd, &format!("open {}", show(path)))?;
        // SAFETY: `fd` was just opened and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let meta = fstat(fd.as_fd())?;
        Ok(Dir { fd, meta })
    }

    /// Whether only this user and root can change what its names point to:
    /// owned by one of them, writable by neither group nor others.
    pub fn is_private(&self) -> bool {
        trusted(self.meta.uid()) && self.meta.mode() & 0o022 == 0
    }

    fn on_procfs(&self) -> bool {
        // SAFETY: statfs is plain data, filled by the kernel.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: valid descriptor (O_PATH allows fstatfs) and out-pointer.
        let rc = unsafe { libc::fstatfs(self.fd.as_raw_fd(), &mut st) };
        rc == 0 && st.f_type as i64 == PROC_SUPER_MAGIC
    }

    /// `name` in the directory, not followed if a link: None if absent.
    fn lookup(&self, name: &CStr) -> io::Result<Option<(OwnedFd, Metadata)>> {
        match openat(self.fd.as_fd(), name, libc::O_PATH, 0) {
            Ok(fd) => {
                let meta = fstat(fd.as_fd())?;
                Ok(Some((fd, meta)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io::Error::new(e.kind(), format!("{}: {e}", show(name)))),
        }
    }

    /// Bytes free on the directory's filesystem (see [`free_space`]).
    pub fn free_space(&self) -> Option<u64> {
        free_space(self.fd.as_fd())
    }

    /// Whether this process may create files here (`faccessat` with the
    /// effective ids).
    pub fn writable(&self) -> io::Result<()> {
        // SAFETY: valid directory descriptor and NUL-terminated name.
        let rc = unsafe {
            libc::faccessat(
                self.fd.as_raw_fd(),
                c".".as_ptr(),
                libc::W_OK | libc::X_OK,
                libc::AT_EACCESS,
            )
        };
        cvt(rc, "cannot create files in the directory").map(drop)
    }

    /// Open the existing `name` that looked like `seen`, with `flags`:
    /// None if it is no longer that inode (raced: look again).
    fn reopen(&self, name: &CStr, seen: &Metadata, flags: libc::c_int) -> io::Result<Option<File>> {
        let flags = flags | libc::O_NONBLOCK | libc::O_NOCTTY;
        let f = match openat(self.fd.as_fd(), name, flags, 0) {
            Ok(fd) => File::from(fd),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ELOOP)) => {
                return Ok(None)
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("open {}: {e}", show(name)),
                ))
            }
        };
        let now = f.metadata()?;
        if (now.dev(), now.ino()) != (seen.dev(), seen.ino()) {
            return Ok(None);
        }
        // Back to blocking I/O (O_NONBLOCK was for the open only: a FIFO
        // swapped in must not hang it).
        // SAFETY: plain fcntl on our open descriptor.
        let fl = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) };
        cvt(fl, "fcntl")?;
        // SAFETY: as above.
        cvt(
            unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK) },
            "fcntl",
        )?;
        Ok(Some(f))
    }

    /// Create `name` anew (`O_CREAT | O_EXCL | O_NOFOLLOW`, read-write,
    /// mode `mode` less the umask); None if something is there now.
    fn create_new(&self, name: &CStr, mode: u32) -> io::Result<Option<File>> {
        let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL;
        match openat(self.fd.as_fd(), name, flags, mode) {
            Ok(fd) => Ok(Some(File::from(fd))),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!("create {}: {e}", show(name)),
            )),
        }
    }

    /// Create `name` (`O_CREAT | O_EXCL | O_NOFOLLOW`, read-write, mode
    /// `mode` less the umask); anything already there is an error.
    pub fn create_exclusive(&self, name: &CStr, mode: u32) -> io::Result<File> {
        self.create_new(name, mode)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists", show(name)),
            )
        })
    }

    /// Create `name` anew for writing (`O_CREAT | O_EXCL | O_NOFOLLOW`,
    /// mode `mode`). A leftover regular file of ours with one name in its
    /// place is removed first; anything else there (a symbolic link,
    /// another user's file, a hard link) is an error.
    pub fn create_fresh(&self, name: &CStr, mode: u32) -> io::Result<File> {
        for _ in 0..MAX_RETRIES {
            if let Some(f) = self.create_new(name, mode)? {
                return Ok(f);
            }
            let Some((_, m)) = self.lookup(name)? else {
                continue;
            };
            if !m.is_file() || m.uid() != euid() || m.nlink() != 1 {
                return Err(denied(format!(
                    "{} exists and is not a file of ours (uid {}, {:?}, {} names): not replaced",
                    show(name),
                    m.uid(),
                    m.file_type(),
                    m.nlink()
                )));
            }
            self.remove(name)?;
        }
        Err(raced(name))
    }

    /// Open `name` for reading if it is a regular file of ours with one
    /// name, not through a symbolic link; None otherwise.
    pub fn open_own(&self, name: &CStr) -> Option<File> {
        let (_, m) = self.lookup(name).ok()??;
        if !m.is_file() || m.uid() != euid() || m.nlink() != 1 {
            log::warn!(
                "{}: not a file of ours with one name (uid {}, {:?}, {} names): ignored",
                show(name),
                m.uid(),
                m.file_type(),
                m.nlink()
            );
            return None;
        }
        self.reopen(name, &m, libc::O_RDONLY).ok()?
    }

    /// Rename `from` to `to` in this directory (`renameat`: replaces what
    /// is at `to`, a link included, without following it).
    pub fn rename(&self, from: &CStr, to: &CStr) -> io::Result<()> {
        let fd = self.fd.as_raw_fd();
        // SAFETY: valid directory descriptor and NUL-terminated names.
        let rc = unsafe { libc::renameat(fd, from.as_ptr(), fd, to.as_ptr()) };
        cvt(rc, &format!("rename {} to {}", show(from), show(to))).map(drop)
    }

    /// Remove `name` (`unlinkat`: never follows a link).
    pub fn remove(&self, name: &CStr) -> io::Result<()> {
        // SAFETY: valid directory descriptor and NUL-terminated name.
        let rc = unsafe { libc::unlinkat(self.fd.as_raw_fd(), name.as_ptr(), 0) };
        cvt(rc, &format!("unlink {}", show(name))).map(drop)
    }

    /// Make the directory's names durable (`fsync` of the directory).
    pub fn sync(&self) -> io::Result<()> {
        let fd = openat(self.fd.as_fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        File::from(fd).sync_all()
    }

    /// The names in the directory (`.` and `..` left out).
    fn names(&self) -> io::Result<Vec<CString>> {
        let fd = openat(self.fd.as_fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        // SAFETY: fdopendir takes over the descriptor we own (released
        // from the OwnedFd); closedir below closes it.
        let d = unsafe { libc::fdopendir(std::os::fd::IntoRawFd::into_raw_fd(fd)) };
        if d.is_null() {
            return Err(io::Error::last_os_error());
        }
        let mut out = Vec::new();
        loop {
            // SAFETY: `d` is an open directory stream.
            let e = unsafe { libc::readdir(d) };
            if e.is_null() {
                break;
            }
            // SAFETY: readdir returns a valid entry whose d_name is
            // NUL-terminated; it is copied before the next call.
            let name = unsafe { CStr::from_ptr((*e).d_name.as_ptr()) };
            if name != c"." && name != c".." {
                out.push(name.to_owned());
            }
        }
        // SAFETY: `d` is open and not used after.
        unsafe { libc::closedir(d) };
        Ok(out)
    }
}

fn raced(name: &CStr) -> io::Error {
    io::Error::other(format!(
        "{} kept changing while it was opened (someone is racing us): not opened",
        show(name)
    ))
}

/// A walk along a path: the directory reached and the components left
/// (last first).
struct Walk {
    dir: Dir,
    pending: Vec<CString>,
    links: u32,
}

impl Walk {
    fn start(path: &Path) -> io::Result<Walk> {
        let bytes = path.as_os_str().as_bytes();
        if bytes.is_empty() {
            return Err(invalid("empty path"));
        }
        let start = if bytes[0] == b'/' { c"/" } else { c"." };
        let mut w = Walk {
            dir: Dir::open_start(start)?,
            pending: Vec::new(),
            links: 0,
        };
        w.push(bytes)?;
        Ok(w)
    }

    /// Put the components of `text` (a path, or a link's text) before the
    /// ones left; an absolute one starts again from `/`.
    fn push(&mut self, text: &[u8]) -> io::Result<()> {
        if text.first() == Some(&b'/') {
            self.dir = Dir::open_start(c"/")?;
        }
        for c in text.split(|&b| b == b'/').rev() {
            if c.is_empty() || c == b"." {
                continue;
            }
            self.pending
                .push(CString::new(c).map_err(|_| invalid("NUL in path"))?);
        }
        Ok(())
    }

    /// Walk every component but the last, following links as the rules
    /// allow; the last is returned (never `..`).
    fn walk_to_last(&mut self) -> io::Result<CString> {
        loop {
            let Some(name) = self.pending.pop() else {
                return Err(invalid("the path names a directory, not a file"));
            };
            if self.pending.is_empty() {
                if name.as_bytes() == b".." {
                    return Err(invalid("the path names a directory, not a file"));
                }
                return Ok(name);
            }
            let Some((fd, meta)) = self.dir.lookup(&name)? else {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{}: no such directory", show(&name)),
                ));
            };
            if meta.file_type().is_symlink() {
                self.follow(fd.as_fd(), &meta, &name)?;
            } else if meta.is_dir() {
                self.dir = Dir { fd, meta };
            } else {
                return Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    format!("{}: not a directory", show(&name)),
                ));
            }
        }
    }

    /// Follow the link `name` (open as `fd`) found in the current
    /// directory, if the rules allow.
    fn follow(&mut self, fd: BorrowedFd<'_>, link: &Metadata, name: &CStr) -> io::Result<()> {
        if self.dir.on_procfs() {
            return Err(denied(format!(
                "{} is a link in /proc (a process's descriptor or directory): not followed",
                show(name)
            )));
        }
        let followable = self.dir.is_private() || (trusted(link.uid()) && link.nlink() == 1);
        if !followable {
            return Err(denied(format!(
                "{} is a symbolic link of uid {} in a directory that uid {} (mode {:o}) \
                 or others can change: not followed (protected_symlinks)",
                show(name),
                link.uid(),
                self.dir.meta.uid(),
                self.dir.meta.mode() & 0o7777
            )));
        }
        self.links += 1;
        if self.links > MAX_LINKS {
            return Err(io::Error::from_raw_os_error(libc::ELOOP));
        }
        let text = readlink(fd)?;
        self.push(&text)
    }

    /// The last component, with links followed: the directory holding it,
    /// its name, and what is there (None if nothing).
    fn find(&mut self) -> io::Result<(CString, Option<Metadata>)> {
        loop {
            let name = self.walk_to_last()?;
            match self.dir.lookup(&name)? {
                Some((fd, meta)) if meta.file_type().is_symlink() => {
                    self.follow(fd.as_fd(), &meta, &name)?;
                }
                Some((_, meta)) => return Ok((name, Some(meta))),
                None => return Ok((name, None)),
            }
        }
    }
}

/// The directory holding the last component of `path` (every component
/// before it walked under the rules above) and that component's name.
pub fn parent(path: &Path) -> io::Result<(Dir, CString)> {
    let mut w = Walk::start(path)?;
    let name = w.walk_to_last()?;
    Ok((w.dir, name))
}

/// Whether the existing `meta` found in `dir` may be opened for writing as
/// an output.
fn check_output(dir: &Dir, name: &CStr, meta: &Metadata) -> io::Result<()> {
    let ft = meta.file_type();
    if !ft.is_file() && !ft.is_block_device() {
        return Err(denied(format!(
            "{} is a {}: only a regular file or a block device is written",
            show(name),
            kind(meta)
        )));
    }
    if dir.is_private() {
        return Ok(());
    }
    if meta.uid() != euid() && meta.uid() != dir.meta.uid() {
        return Err(denied(format!(
            "{} belongs to uid {} in a directory others can write: not written \
             (the kernel's protected_regular rule)",
            show(name),
            meta.uid()
        )));
    }
    if meta.nlink() != 1 {
        return Err(denied(format!(
            "{} has {} names in a directory others can write: a hard link to a file elsewhere is not written",
            show(name),
            meta.nlink()
        )));
    }
    Ok(())
}

fn kind(meta: &Metadata) -> &'static str {
    let ft = meta.file_type();
    if ft.is_dir() {
        "directory"
    } else if ft.is_fifo() {
        "FIFO"
    } else if ft.is_char_device() {
        "character device"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_symlink() {
        "symbolic link"
    } else if ft.is_block_device() {
        "block device"
    } else {
        "regular file"
    }
}

/// What is at an output path, found by a checked walk.
#[derive(Debug)]
pub enum Found {
    /// An existing regular file or block device, open read-write.
    Existing(File),
    /// Nothing yet: the file would be created as this name in this
    /// directory.
    Absent(Dir, CString),
}

fn find_out(path: &Path) -> io::Result<Found> {
    let mut w = Walk::start(path)?;
    for _ in 0..MAX_RETRIES {
        let (name, meta) = w.find()?;
        let Some(meta) = meta else {
            return Ok(Found::Absent(w.dir, name));
        };
        check_output(&w.dir, &name, &meta)?;
        if let Some(f) = w.dir.reopen(&name, &meta, libc::O_RDWR)? {
            return Ok(Found::Existing(f));
        }
        w.pending.push(name);
    }
    Err(raced(
        &CString::new(path.as_os_str().as_bytes()).unwrap_or_default(),
    ))
}

fn with_path(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Find `path` as an output without creating or opening anything for
/// writing yet: see [`Found`].
pub fn find_output(path: &Path) -> io::Result<Found> {
    find_out(path).map_err(|e| with_path(path, e))
}

/// Open `path` for reading and writing as an output (`--out`): an
/// existing regular file or block device, or a new regular file (created
/// with `O_EXCL`, mode 0666 less the umask), under the rules above.
/// `admit` sees what was found before anything is created (a size check);
/// its error is returned as it is.
pub fn open_out_with<E>(
    path: &Path,
    io_err: impl Fn(io::Error) -> E,
    mut admit: impl FnMut(&Found) -> Result<(), E>,
) -> Result<File, E> {
    for _ in 0..MAX_RETRIES {
        let found = find_output(path).map_err(&io_err)?;
        admit(&found)?;
        match found {
            Found::Existing(f) => return Ok(f),
            Found::Absent(dir, name) => {
                if let Some(f) = dir
                    .create_new(&name, 0o666)
                    .map_err(|e| io_err(with_path(path, e)))?
                {
                    return Ok(f);
                }
            }
        }
    }
    Err(io_err(with_path(path, raced(c"it"))))
}

/// [`open_out_with`] without a size check.
pub fn open_out(path: &Path) -> io::Result<File> {
    open_out_with(path, |e| e, |_| Ok(()))
}

/// What a trusted path (`--trust`) names.
#[derive(Debug)]
pub enum Trusted {
    /// A key file, open for reading.
    File(File),
    /// A directory of key files.
    Dir(Dir),
}

/// Whether `meta` may be trusted: this user's or root's, writable by
/// neither group nor others.
fn check_trusted(name: &CStr, meta: &Metadata) -> io::Result<()> {
    if !trusted(meta.uid()) || meta.mode() & 0o022 != 0 {
        return Err(denied(format!(
            "{} (uid {}, mode {:o}) may be changed by a user other than this one or root: not trusted",
            show(name),
            meta.uid(),
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

/// Open `name` in `dir` as a trusted file: a regular file, checked as
/// [`open_trusted`] says.
fn trusted_file(dir: &Dir, name: &CStr, meta: &Metadata) -> io::Result<File> {
    check_trusted(name, meta)?;
    if !meta.is_file() {
        return Err(denied(format!(
            "{} is a {}, not a key file",
            show(name),
            kind(meta)
        )));
    }
    if !dir.is_private() && meta.nlink() != 1 {
        return Err(denied(format!(
            "{} has {} names in a directory others can write: not trusted",
            show(name),
            meta.nlink()
        )));
    }
    dir.reopen(name, meta, libc::O_RDONLY)?
        .ok_or_else(|| raced(name))
}

/// Open `path` as a source of trusted keys: every component walked under
/// the rules above, and the file or directory itself this user's or
/// root's and writable by neither group nor others.
pub fn open_trusted(path: &Path) -> io::Result<Trusted> {
    let go = || {
        let mut w = Walk::start(path)?;
        let (name, meta) = w.find()?;
        let meta = meta.ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        if meta.is_dir() {
            check_trusted(&name, &meta)?;
            let fd = openat(w.dir.fd.as_fd(), &name, libc::O_PATH | libc::O_DIRECTORY, 0)?;
            let now = fstat(fd.as_fd())?;
            if (now.dev(), now.ino()) != (meta.dev(), meta.ino()) {
                return Err(raced(&name));
            }
            return Ok(Trusted::Dir(Dir { fd, meta: now }));
        }
        trusted_file(&w.dir, &name, &meta).map(Trusted::File)
    };
    go().map_err(|e| with_path(path, e))
}

impl Dir {
    /// The names in this trusted directory that end in `suffix`, each
    /// opened as a trusted file (a link among them is refused: a key is a
    /// file of the directory itself).
    pub fn trusted_files(&self, suffix: &str) -> io::Result<Vec<(String, File)>> {
        let mut out = Vec::new();
        for name in self.names()? {
            if !name.to_bytes().ends_with(suffix.as_bytes()) {
                continue;
            }
            let Some((_, meta)) = self.lookup(&name)? else {
                continue;
            };
            let f = trusted_file(self, &name, &meta)?;
            out.push((show(&name), f));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

/// Create `path` anew for writing: [`Dir::create_fresh`] in its checked
/// parent directory.
pub fn create_fresh(path: &Path, mode: u32) -> io::Result<File> {
    let (dir, name) = parent(path).map_err(|e| with_path(path, e))?;
    dir.create_fresh(&name, mode)
        .map_err(|e| with_path(path, e))
}

/// Open `path` for reading if it is a regular file of ours with one name:
/// [`Dir::open_own`] in its checked parent directory.
pub fn open_own(path: &Path) -> Option<File> {
    let (dir, name) = parent(path).ok()?;
    dir.open_own(&name)
}

fn cstr(name: &str) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"))
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
        let (parent, name) = parent(path).map_err(|e| with_path(path, e))?;
        let flags = libc::O_RDONLY | libc::O_DIRECTORY;
        let mut fd = openat(parent.fd.as_fd(), &name, flags, 0);
        if matches!(&fd, Err(e) if e.kind() == io::ErrorKind::NotFound) {
            // SAFETY: valid directory descriptor and NUL-terminated name.
            // mkdirat never follows a symbolic link in the last component
            // and fails if anything is there.
            let made = unsafe { libc::mkdirat(parent.fd.as_raw_fd(), name.as_ptr(), 0o755) };
            if made < 0 && io::Error::last_os_error().kind() != io::ErrorKind::AlreadyExists {
                cvt(made, &format!("mkdir {}", path.display()))?;
            }
            fd = openat(parent.fd.as_fd(), &name, flags, 0);
        }
        let fd = fd.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("open directory {} (O_NOFOLLOW): {e}", path.display()),
            )
        })?;
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
    use std::os::unix::fs::{lchown, symlink, PermissionsExt};
    use std::path::PathBuf;

    /// uid of nobody, the other user in these tests (they run as root).
    const NOBODY: u32 = 65534;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("xdpcast-safefs-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        d
    }

    fn sticky(parent: &Path) -> PathBuf {
        let d = parent.join("pub");
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1777)).unwrap();
        d
    }

    fn victim(d: &Path) -> PathBuf {
        let v = d.join("victim");
        std::fs::write(&v, b"keep").unwrap();
        v
    }

    fn refused(r: io::Result<File>) -> String {
        let e = r.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        e.to_string()
    }

    fn as_root() -> bool {
        euid() == 0
    }

    #[test]
    fn outputs_of_our_own_open_and_links_of_ours_are_followed() {
        let d = tmp("own");
        let v = victim(&d);
        let link = d.join("link");
        symlink("victim", &link).unwrap();
        drop(open_out(&link).unwrap());
        let new = d.join("sub/../new");
        std::fs::create_dir(d.join("sub")).unwrap();
        drop(open_out(&new).unwrap());
        assert!(d.join("new").exists());
        // A relative path, through a link to a directory of ours.
        symlink(&d, d.join("dirlink")).unwrap();
        let rel = d.join("dirlink/new2");
        drop(open_out(&rel).unwrap());
        assert!(d.join("new2").exists());
        assert_eq!(std::fs::read(&v).unwrap(), b"keep");
        assert!(open_out(&d).is_err(), "a directory is no output");
        assert!(open_out(&d.join("..")).is_err());
    }

    #[test]
    fn links_and_files_others_planted_are_refused() {
        if !as_root() {
            return;
        }
        let d = tmp("planted");
        let secret = d.join("secret");
        std::fs::create_dir(&secret).unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o700)).unwrap();
        let v = victim(&secret);
        let p = sticky(&d);
        // nobody's link to root's directory, as a middle component.
        symlink(&secret, p.join("imgs")).unwrap();
        lchown(p.join("imgs"), Some(NOBODY), Some(NOBODY)).unwrap();
        assert!(refused(open_out(&p.join("imgs/victim"))).contains("not followed"));
        assert!(open_out(&p.join("imgs/new")).is_err());
        assert!(!secret.join("new").exists());
        // ... and as the last one.
        symlink(&v, p.join("last")).unwrap();
        lchown(p.join("last"), Some(NOBODY), Some(NOBODY)).unwrap();
        refused(open_out(&p.join("last")));
        // Our own link there is followed; a hard link to our file is not.
        symlink(&v, p.join("mine")).unwrap();
        drop(open_out(&p.join("mine")).unwrap());
        std::fs::hard_link(&v, p.join("hard")).unwrap();
        assert!(refused(open_out(&p.join("hard"))).contains("names"));
        // nobody's file: not written (protected_regular); a FIFO never.
        std::fs::write(p.join("theirs"), b"x").unwrap();
        lchown(p.join("theirs"), Some(NOBODY), Some(NOBODY)).unwrap();
        refused(open_out(&p.join("theirs")));
        let fifo = CString::new(p.join("fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o666) }, 0);
        assert!(refused(open_out(&p.join("fifo"))).contains("FIFO"));
        // A link in nobody's own (not sticky) directory is not followed.
        let theirs = d.join("nobodys");
        std::fs::create_dir(&theirs).unwrap();
        lchown(&theirs, Some(NOBODY), Some(NOBODY)).unwrap();
        symlink(&v, theirs.join("l")).unwrap();
        lchown(theirs.join("l"), Some(NOBODY), Some(NOBODY)).unwrap();
        refused(open_out(&theirs.join("l")));
        assert_eq!(std::fs::read(&v).unwrap(), b"keep");
    }

    #[test]
    fn proc_fd_links_are_not_followed() {
        let d = tmp("proc");
        let f = File::open(victim(&d)).unwrap();
        let p = PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()));
        assert!(refused(open_out(&p)).contains("/proc"));
        let p = PathBuf::from(format!("/dev/fd/{}", f.as_raw_fd()));
        refused(open_out(&p));
    }

    #[test]
    fn found_outputs_are_not_created_before_admitted() {
        let d = tmp("admit");
        let new = d.join("new");
        let r = open_out_with(
            &new,
            |e| e,
            |f| match f {
                Found::Absent(dir, _) => {
                    assert!(dir.free_space().is_some());
                    Err(invalid("too big"))
                }
                Found::Existing(_) => panic!("nothing there"),
            },
        );
        assert!(r.is_err());
        assert!(!new.exists());
    }

    #[test]
    fn fresh_and_own_files() {
        let d = tmp("fresh");
        let v = victim(&d);
        let fresh = d.join("fresh");
        std::fs::write(&fresh, b"old").unwrap();
        drop(create_fresh(&fresh, 0o600).unwrap());
        assert_eq!(std::fs::read(&fresh).unwrap(), b"");
        assert!(open_own(&fresh).is_some());
        let link = d.join("link");
        symlink(&v, &link).unwrap();
        refused(create_fresh(&link, 0o600));
        assert!(open_own(&link).is_none());
        std::fs::hard_link(&v, d.join("hard")).unwrap();
        refused(create_fresh(&d.join("hard"), 0o600));
        assert!(open_own(&d.join("hard")).is_none(), "a hard link");
        assert_eq!(std::fs::read(&v).unwrap(), b"keep");
    }

    #[test]
    fn trusted_paths() {
        let d = tmp("trust");
        let keys = d.join("keys");
        std::fs::create_dir(&keys).unwrap();
        std::fs::write(keys.join("a.pub"), b"k").unwrap();
        std::fs::write(keys.join("other"), b"k").unwrap();
        let Trusted::Dir(dir) = open_trusted(&keys).unwrap() else {
            panic!("a directory")
        };
        let names: Vec<String> = dir
            .trusted_files(".pub")
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["a.pub"]);
        assert!(matches!(
            open_trusted(&keys.join("a.pub")).unwrap(),
            Trusted::File(_)
        ));
        std::fs::set_permissions(keys.join("a.pub"), std::fs::Permissions::from_mode(0o666))
            .unwrap();
        assert!(open_trusted(&keys.join("a.pub")).is_err());
        let Trusted::Dir(dir) = open_trusted(&keys).unwrap() else {
            panic!("a directory")
        };
        assert!(dir.trusted_files(".pub").is_err());
        std::fs::set_permissions(keys.join("a.pub"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(open_trusted(&keys).is_err(), "a mode 1777 directory");
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o755)).unwrap();
        if as_root() {
            lchown(keys.join("a.pub"), Some(NOBODY), Some(NOBODY)).unwrap();
            assert!(open_trusted(&keys.join("a.pub")).is_err(), "nobody's key");
            lchown(&keys, Some(NOBODY), Some(NOBODY)).unwrap();
            assert!(open_trusted(&keys).is_err(), "nobody's directory");
        }
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
