//! Helpers shared by the integration tests: network namespaces and veth
//! pairs that are always deleted (Drop guards), test images, the binary.
//!
//! Tests that need root (namespaces, XDP) fail loudly when not root, unless
//! `XDPCAST_SKIP_NETNS=1` says the machine cannot run them; then they skip
//! with a message. CI runs as root and never sets it.
#![allow(dead_code)] // each test binary uses its own subset

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
pub use xdpcast_bench::netns::*;

/// The xdpcast binary run inside a namespace.
pub fn xdpcast(ns: &Netns) -> Command {
    ns.cmd(env!("CARGO_BIN_EXE_xdpcast"))
}

/// uid and gid of nobody and nogroup on Debian.
pub const NOBODY: u32 = 65534;

/// `setpriv` (a `Command` for it, possibly inside a namespace) running
/// `program` as nobody:nogroup with no supplementary groups.
pub fn as_nobody(mut setpriv: Command, program: &str) -> Command {
    setpriv.args([
        "--reuid",
        "nobody",
        "--regid",
        "nogroup",
        "--clear-groups",
        program,
    ]);
    setpriv
}

/// `xdpcast keygen --out DIR/NAME.key`: the secret key path.
pub fn keygen(dir: &TempDir, name: &str) -> PathBuf {
    let key = dir.join(&format!("{name}.key"));
    let out = Command::new(env!("CARGO_BIN_EXE_xdpcast"))
        .args(["keygen", "--out", key.to_str().unwrap()])
        .output()
        .unwrap();
    ok(&out, "keygen");
    key
}

/// The public key file of secret key `key`.
pub fn pub_of(key: &Path) -> String {
    format!("{}.pub", key.display())
}

/// The status page of session `name` in directory `status`.
pub fn read_page(status: &Path, name: &str) -> xdpcast::Snapshot {
    xdpcast::StatusReader::open(&status.join(format!("xdpcast.{name}")))
        .and_then(|r| r.read())
        .unwrap_or_else(|e| panic!("status page {name}: {e}"))
}

/// Start `xdpcast receive` (the program of `cmd`, which may be wrapped in
/// `ip netns exec` or `setpriv`) for `group` with a kept status page in
/// `status`, and wait until the page says IN_PROGRESS.
pub fn start_receiver(
    mut cmd: Command,
    status: &Path,
    name: &str,
    group: &str,
    args: &[&str],
) -> Child {
    cmd.env("XDPCAST_STATUS_DIR", status)
        .args(["receive", "--group", group, "--name", name, "--keep-status"])
        .args(args);
    let mut child = spawn(cmd);
    let page = status.join(format!("xdpcast.{name}"));
    let exited = wait_for(Duration::from_secs(20), "receiver start", || {
        if child.try_wait().unwrap().is_some() {
            return Some(true);
        }
        let s = xdpcast::StatusReader::open(&page).ok()?.read().ok()?;
        (s.state == xdpcast::State::InProgress).then_some(false)
    });
    if exited {
        let out = child.wait_with_output().unwrap();
        panic!(
            "receiver {name} exited before IN_PROGRESS ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    child
}

/// `xdpcast send SRC --group GROUP --iface IFACE EXTRA...` in `ns`. Its
/// status page is named after the process and the call (tests run side by
/// side with the same group), unless EXTRA gives `--name`, and kept out of
/// the machine's status directory: tests kill senders, whose pages would
/// stay there, stale, for `xdpcast status` and `metrics` to list.
pub fn start_sender(ns: &Netns, iface: &str, group: &str, src: &Path, extra: &[&str]) -> Child {
    static SENDERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let mut c = xdpcast(ns);
    c.args([
        "send",
        src.to_str().unwrap(),
        "--group",
        group,
        "--iface",
        iface,
    ])
    .args(extra);
    if !extra.contains(&"--name") {
        let n = SENDERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        c.args(["--name", &format!("test-tx-{}-{n}", std::process::id())]);
    }
    c.env(
        "XDPCAST_STATUS_DIR",
        std::env::temp_dir().join("xdpcast-test-senders"),
    );
    spawn(c)
}

/// A scratch directory holding a source image `src.img` and the path
/// `dst.img` for the receiver to write.
pub struct Images {
    pub dir: TempDir,
    pub src: PathBuf,
    pub dst: PathBuf,
}

impl Images {
    /// A source image of `len` pseudo-random bytes from `seed`.
    pub fn new(prefix: &str, len: usize, seed: u64) -> Images {
        let dir = TempDir::new(prefix);
        let (src, dst) = (dir.join("src.img"), dir.join("dst.img"));
        make_image(&src, len, seed);
        Images { dir, src, dst }
    }
}

/// A scratch directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let p = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Write a deterministic pseudo-random image of `len` bytes.
pub fn make_image(path: &Path, len: usize, seed: u64) {
    std::fs::write(path, xdpcast_bench::fixture::seeded_image(len, seed)).unwrap();
}

/// SHA-256 of a file, hex.
pub fn sha256_hex(path: &Path) -> String {
    xdpcast::proto::wire::hex(&Sha256::digest(std::fs::read(path).unwrap()))
}

/// What a sender given `send_args` names the image at `path` by, sent in
/// blocks of `block_size` bytes, as its last line and the receivers'
/// pages show it: `("sha256", hex)`, or for a signed session (`--sign`
/// without `--sha256`) `("root", hex)`, the root of its chunk hashes.
pub fn digest_named(path: &Path, send_args: &[&str], block_size: u32) -> (&'static str, String) {
    use xdpcast::proto::manifest::{chunk_blocks_for, Manifest};
    use xdpcast::proto::wire::{hex, Geometry};
    if !send_args.contains(&"--sign") || send_args.contains(&"--sha256") {
        return ("sha256", sha256_hex(path));
    }
    let image = std::fs::read(path).unwrap();
    let g = Geometry::new(image.len() as u64, block_size);
    let m = Manifest::new(0, g, chunk_blocks_for(g.block_count, block_size));
    ("root", hex(&m.root_of_image(&image)))
}

/// Wait for a child up to `limit`; kill it and panic if it takes longer.
pub fn wait_output(mut child: Child, limit: Duration, what: &str) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            kill_group(&child);
            let out = child.wait_with_output().unwrap();
            panic!(
                "{what} did not finish within {limit:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Assert that a finished child succeeded (its output in the message if
/// not); its stdout.
pub fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Wait for the sender (up to `tx_limit`), then the receiver (up to a
/// minute): both succeeded. The receiver's output.
pub fn both_ok(tx: Child, rx: Child, tx_limit: Duration) -> Output {
    ok(&wait_output(tx, tx_limit, "sender"), "sender");
    let out = wait_output(rx, Duration::from_secs(60), "receiver");
    ok(&out, "receiver");
    out
}

/// Kill `child` and everything it started (see [`spawn`]): a shell
/// pipeline's members hold the output pipes open, so killing the shell
/// alone would leave the reader of its output waiting.
pub fn kill_group(child: &Child) {
    // SAFETY: kill(2) with a negative pid signals the process group that
    // `spawn` made the child the leader of; no memory is involved.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
}

/// Start a command with piped output, in a process group of its own (so
/// [`kill_group`] reaches its children too).
pub fn spawn(mut c: Command) -> Child {
    use std::os::unix::process::CommandExt;
    c.process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn")
}

/// Poll `f` every 50 ms until it returns Some, up to `limit`.
pub fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Start `xdpcast metrics --listen 127.0.0.1:0` (plus `args`) on the pages
/// in `status`: the child, and the address it serves (its first line).
pub fn start_metrics(status: &Path, args: &[&str]) -> (Child, String) {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_xdpcast"))
        .env("XDPCAST_STATUS_DIR", status)
        .args(["metrics", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let addr = first
        .trim()
        .strip_prefix("serving metrics on http://")
        .and_then(|s| s.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_string();
    (child, addr)
}

/// A connection with a read timeout that only stops a hung test.
pub fn connect(addr: &str) -> TcpStream {
    let c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    c
}

/// Send `request` on a new connection and read the reply until the server
/// closes it: (status line, whole reply).
pub fn exchange(addr: &str, request: &str) -> (String, String) {
    let mut c = connect(addr);
    c.write_all(request.as_bytes()).unwrap();
    let mut reply = String::new();
    c.read_to_string(&mut reply)
        .unwrap_or_else(|e| panic!("{request:?}: {e}; got {reply:?}"));
    let status = reply.lines().next().unwrap_or("").to_string();
    (status, reply)
}

/// `GET /metrics` from the server at `addr`: the whole reply.
pub fn scrape(addr: &str) -> String {
    let (status, reply) = exchange(
        addr,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, "HTTP/1.1 200 OK", "{reply}");
    reply
}

/// A loop block device over a file of `len` bytes filled with `fill`,
/// detached on drop (also when the test fails).
pub struct LoopDev(pub String);

impl LoopDev {
    pub fn new(backing: &Path, len: u64) -> LoopDev {
        LoopDev::filled(backing, len, None)
    }

    /// With every byte `fill` (old data on the device), or sparse for None.
    pub fn filled(backing: &Path, len: u64, fill: Option<u8>) -> LoopDev {
        match fill {
            Some(b) => std::fs::write(backing, vec![b; len as usize]).unwrap(),
            None => std::fs::File::create(backing)
                .unwrap()
                .set_len(len)
                .unwrap(),
        }
        let out = sh(&["losetup", "--find", "--show", backing.to_str().unwrap()]);
        LoopDev(String::from_utf8(out.stdout).unwrap().trim().to_string())
    }
}

impl LoopDev {
    /// A device of `len` bytes over `dir`/old-disk.img full of old data
    /// (0xA5): a disk that held something else, to write an image over.
    pub fn old_disk(dir: &TempDir, len: u64) -> LoopDev {
        LoopDev::filled(&dir.join("old-disk.img"), len, Some(0xA5))
    }

    /// Sectors the kernel has read from the device
    /// (`/sys/block/NAME/stat`, field 3).
    pub fn sectors_read(&self) -> u64 {
        let name = Path::new(&self.0).file_name().unwrap().to_str().unwrap();
        let stat = std::fs::read_to_string(format!("/sys/block/{name}/stat")).unwrap();
        stat.split_whitespace().nth(2).unwrap().parse().unwrap()
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.0])
            .status();
    }
}

/// A tmpfs of `size` (mount's syntax: `1m`, `64k`) mounted on a directory
/// under the name `source`, unmounted on drop (also when the test fails).
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    pub fn mount(at: PathBuf, size: &str, source: &str) -> Tmpfs {
        std::fs::create_dir_all(&at).unwrap();
        let opts = format!("size={size}");
        sh(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            &opts,
            source,
            at.to_str().unwrap(),
        ]);
        Tmpfs(at)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Directory holding the libxdpcast.so built with this test: cargo puts
/// the cdylib of the package's library in `deps/` next to the binaries (it
/// copies it up one level only on `cargo build`, so that copy may be stale).
pub fn lib_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_xdpcast"))
        .parent()
        .unwrap()
        .join("deps");
    assert!(
        dir.join("libxdpcast.so").exists(),
        "{}/libxdpcast.so is missing: the cdylib was not built",
        dir.display()
    );
    dir
}
pub mod attacker;
