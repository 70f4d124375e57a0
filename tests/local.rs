//! A local unprivileged user (nobody, through `setpriv`) against a root
//! receiver on the same machine (docs/security.md): symbolic links planted
//! at the status page, at the resume file's temporary name and at `--out`
//! in a sticky directory are not followed and nothing is clobbered; a page
//! of another user is not taken over; a page held by a live receiver is
//! refused and a stale one replaced; readers flag a page another user owns.
//!
//! These tests need root; they are skipped only when
//! `XDPCAST_SKIP_NETNS=1` says the machine cannot run them.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use xdpcast::status::page::State;
use xdpcast::ErrorCode;

const MIB: usize = 1 << 20;

/// `program args...` as nobody.
fn nobody(program: &str) -> Command {
    as_nobody(Command::new("setpriv"), program)
}

/// nobody plants a symbolic link at `link` pointing to `to`.
fn plant_link(to: &Path, link: &Path) {
    let out = nobody("ln")
        .args(["-s", to.to_str().unwrap(), link.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "ln: {}", text(&out));
    assert_eq!(std::fs::symlink_metadata(link).unwrap().uid(), NOBODY);
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A directory like /tmp: sticky, writable by everyone.
fn sticky_dir(parent: &Path, name: &str) -> PathBuf {
    let d = parent.join(name);
    std::fs::create_dir(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1777)).unwrap();
    d
}

/// A root-owned file with known content and mode 0600.
fn victim(dir: &Path) -> PathBuf {
    let v = dir.join("victim");
    std::fs::write(&v, b"root's secret").unwrap();
    std::fs::set_permissions(&v, std::fs::Permissions::from_mode(0o600)).unwrap();
    v
}

fn assert_untouched(v: &Path) {
    assert_eq!(std::fs::read(v).unwrap(), b"root's secret");
    let m = std::fs::metadata(v).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o7777), (0, 0o600));
}

/// `xdpcast receive` on lo (socket path) with status directory `status`,
/// giving up after `wait` seconds without packets; run to its end.
fn receive(ns: &Netns, status: &Path, name: &str, out: &Path, wait: &str) -> Output {
    xdpcast(ns)
        .env("XDPCAST_STATUS_DIR", status)
        .args(["receive", "--group", "239.45.0.1:5000", "--iface", "lo"])
        .args(["--mode", "socket", "--name", name, "--keep-status"])
        .args(["--start-timeout", wait, "--out", out.to_str().unwrap()])
        .output()
        .unwrap()
}

fn assert_exit(o: &Output, code: ErrorCode, says: &str) {
    assert_eq!(o.status.code(), Some(100 + code as i32), "{}", text(o));
    assert!(text(o).contains(says), "{says:?} not in: {}", text(o));
}

fn netns() -> Netns {
    let ns = Netns::new("xdpc-local");
    ns.ip(&["route", "add", "224.0.0.0/4", "dev", "lo"]);
    ns
}

#[test]
fn status_pages_only_in_a_directory_of_the_receivers_own() {
    if !netns_allowed() {
        return;
    }
    let ns = netns();
    let dir = TempDir::new("xdpc-local-page");
    let v = victim(&dir.0);
    let out = dir.join("out.img");
    // A world-writable status directory (like /dev/shm), where nobody has
    // planted a link at the page name and a page of its own: refused.
    let shared = sticky_dir(&dir.0, "shm");
    plant_link(&v, &shared.join("xdpcast.a"));
    let o = receive(&ns, &shared, "a", &out, "1");
    assert_exit(
        &o,
        ErrorCode::InvalidArgument,
        "writable by group or others",
    );
    assert_untouched(&v);
    // The status directory itself a link (to a directory of root's): refused.
    let real = dir.join("real");
    std::fs::create_dir(&real).unwrap();
    let linked = dir.join("linked");
    std::os::unix::fs::symlink(&real, &linked).unwrap();
    let o = receive(&ns, &linked, "a", &out, "1");
    assert_exit(&o, ErrorCode::InvalidArgument, "O_NOFOLLOW");
    // A directory of nobody's: refused to root too.
    let theirs = dir.join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(NOBODY), Some(NOBODY)).unwrap();
    let o = receive(&ns, &theirs, "a", &out, "1");
    assert_exit(&o, ErrorCode::InvalidArgument, "belongs to uid 65534");
    // In root's own directory, a file of nobody's (as if planted earlier)
    // or a link at the page name is not taken over.
    let own = dir.join("pages");
    std::fs::create_dir(&own).unwrap();
    let planted = own.join("xdpcast.b");
    std::fs::write(&planted, vec![0u8; 8192]).unwrap();
    std::os::unix::fs::chown(&planted, Some(NOBODY), Some(NOBODY)).unwrap();
    let o = receive(&ns, &own, "b", &out, "1");
    assert_exit(&o, ErrorCode::InvalidArgument, "not taken over");
    assert_eq!(std::fs::metadata(&planted).unwrap().uid(), NOBODY);
    std::os::unix::fs::symlink(&v, own.join("xdpcast.c")).unwrap();
    let o = receive(&ns, &own, "c", &out, "1");
    assert_exit(&o, ErrorCode::InvalidArgument, "not taken over");
    assert_untouched(&v);
    // The directory is created when missing, private to root.
    let fresh = dir.join("fresh");
    let o = receive(&ns, &fresh, "d", &out, "1");
    assert_exit(&o, ErrorCode::Timeout, "");
    let m = std::fs::metadata(&fresh).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o777), (0, 0o755));
    assert_eq!(read_page(&fresh, "d").owner_uid, 0);
}

#[test]
fn a_live_receivers_page_is_refused_and_a_stale_one_replaced() {
    if !netns_allowed() {
        return;
    }
    let ns = netns();
    let dir = TempDir::new("xdpc-local-live");
    let out = dir.join("out.img");
    let mut first = start_receiver(
        xdpcast(&ns),
        &dir.0,
        "held",
        "239.45.0.2:5000",
        &[
            "--iface",
            "lo",
            "--mode",
            "socket",
            "--start-timeout",
            "120",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let page = read_page(&dir.0, "held");
    assert_eq!(page.state, State::InProgress);
    let o = receive(&ns, &dir.0, "held", &out, "1");
    assert_exit(&o, ErrorCode::InvalidArgument, "live receiver pid");
    assert_eq!(read_page(&dir.0, "held").writer_pid, page.writer_pid);
    // Killed: its page is stale and the next receiver takes the name.
    first.kill().unwrap();
    first.wait().unwrap();
    let o = receive(&ns, &dir.0, "held", &out, "1");
    assert_exit(&o, ErrorCode::Timeout, "");
    let s = read_page(&dir.0, "held");
    assert_ne!(s.writer_pid, page.writer_pid);
    assert_eq!((s.state, s.error), (State::Failure, ErrorCode::Timeout));
    // A reader that has gone (`| head`) is no error for `status`: exit 0,
    // no panic. `true` exits before `status` writes, so the write fails.
    let o = Command::new("bash")
        .env("XDPCAST_STATUS_DIR", &dir.0)
        .args([
            "-o",
            "pipefail",
            "-c",
            &format!(
                "{{ sleep 0.3; {} status --json held; }} | true",
                env!("CARGO_BIN_EXE_xdpcast")
            ),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn readers_flag_a_page_owned_by_another_user() {
    if !netns_allowed() {
        return;
    }
    let ns = netns();
    let dir = TempDir::new("xdpc-local-flag");
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o777)).unwrap();
    let pages = dir.join("pages");
    std::fs::create_dir(&pages).unwrap();
    std::os::unix::fs::chown(&pages, Some(NOBODY), Some(NOBODY)).unwrap();
    // nobody's receiver writes its page (FAILURE, nothing arrived).
    let mut c = nobody(env!("CARGO_BIN_EXE_xdpcast"));
    let o = c
        .env("XDPCAST_STATUS_DIR", &pages)
        .args(["receive", "--group", "239.45.0.3:5000", "--iface", "lo"])
        .args(["--mode", "socket", "--name", "theirs", "--keep-status"])
        .args(["--start-timeout", "1", "--out"])
        .arg(dir.join("out.img"))
        .output()
        .unwrap();
    assert_exit(&o, ErrorCode::Timeout, "");
    drop(ns);
    let s = read_page(&pages, "theirs");
    assert_eq!(s.owner_uid, NOBODY);
    assert!(s.foreign_owner());
    let status = |json: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_xdpcast"));
        c.env("XDPCAST_STATUS_DIR", &pages).arg("status");
        if json {
            c.arg("--json");
        }
        let o = c.arg("theirs").output().unwrap();
        assert!(o.status.success(), "{}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert!(status(false).contains("WARNING   page owned by uid 65534"));
    let json = status(true);
    assert!(
        json.contains("\"owner_uid\":65534,\"foreign_owner\":true"),
        "{json}"
    );
    let py = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/status_reader.py"))
        .arg("theirs")
        .env("XDPCAST_STATUS_DIR", &pages)
        .output()
        .unwrap();
    assert!(py.status.success(), "{}", text(&py));
    assert!(String::from_utf8_lossy(&py.stdout).contains("\"foreign_owner\":true"));
    // nobody reading its own page: not flagged.
    let o = nobody(env!("CARGO_BIN_EXE_xdpcast"))
        .env("XDPCAST_STATUS_DIR", &pages)
        .args(["status", "--json", "theirs"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("\"foreign_owner\":false"),
        "{}",
        text(&o)
    );
}

/// Receive `src` from a sender on lo into `out` (socket path), both
/// succeeding, with the warning that the resume file could not be saved.
fn transfer_without_resume(
    ns: &Netns,
    pages: &Path,
    name: &str,
    group: &str,
    src: &Path,
    out: &Path,
) {
    let rx = start_receiver(
        xdpcast(ns),
        pages,
        name,
        group,
        &[
            "--iface",
            "lo",
            "--mode",
            "socket",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let tx = start_sender(
        ns,
        "lo",
        group,
        src,
        &["--rate", "12M", "--block-size", "1400"],
    );
    assert!(wait_output(tx, Duration::from_secs(60), "sender")
        .status
        .success());
    let o = wait_output(rx, Duration::from_secs(60), "receiver");
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("cannot save the resume file"),
        "{}",
        text(&o)
    );
    assert_eq!(sha256_hex(src), sha256_hex(out));
}

#[test]
fn planted_links_at_out_and_at_the_resume_file_are_not_followed() {
    if !netns_allowed() {
        return;
    }
    let ns = netns();
    let dir = TempDir::new("xdpc-local-out");
    let pages = dir.join("pages");
    let tmp = sticky_dir(&dir.0, "tmp");
    let v = victim(&dir.0);
    // --out: nobody's link in a sticky directory: refused before anything.
    let out = tmp.join("out.img");
    plant_link(&v, &out);
    let o = receive(&ns, &pages, "out", &out, "1");
    assert_exit(&o, ErrorCode::TargetIo, "protected_symlinks");
    assert_untouched(&v);
    // A file nobody put there first is not written either.
    let theirs = tmp.join("theirs.img");
    nobody("touch").arg(&theirs).status().unwrap();
    let o = receive(&ns, &pages, "out", &theirs, "1");
    assert_exit(&o, ErrorCode::TargetIo, "protected_regular");
    // root's own link there (like /dev/disk/by-id/...): followed.
    let target = dir.join("by-id-target.img");
    let by_id = tmp.join("by-id.img");
    std::os::unix::fs::symlink(&target, &by_id).unwrap();
    std::fs::write(&target, b"").unwrap();
    // A link at the resume file's temporary name: the transfer goes on,
    // the resume file is not saved through it.
    let resume_tmp = tmp.join("by-id.img.xdpcast-resume.tmp");
    plant_link(&v, &resume_tmp);
    let src = dir.join("src.img");
    make_image(&src, 4 * MIB + 3, 31);
    transfer_without_resume(&ns, &pages, "resume", "239.45.0.4:5000", &src, &by_id);
    assert_eq!(sha256_hex(&src), sha256_hex(&target));
    assert_untouched(&v);
    assert!(std::fs::symlink_metadata(&resume_tmp)
        .unwrap()
        .file_type()
        .is_symlink());
}

/// A root-only directory holding root's 0600 victim file.
fn secret_dir(parent: &Path) -> (PathBuf, PathBuf) {
    let s = parent.join("secret");
    std::fs::create_dir(&s).unwrap();
    std::fs::set_permissions(&s, std::fs::Permissions::from_mode(0o700)).unwrap();
    let v = victim(&s);
    (s, v)
}

#[test]
fn every_component_of_out_is_checked() {
    if !netns_allowed() {
        return;
    }
    let ns = netns();
    let dir = TempDir::new("xdpc-local-walk");
    let pages = dir.join("pages");
    let (secret, v) = secret_dir(&dir.0);
    let shared = sticky_dir(&dir.0, "pub");
    // The issue's attack: PUB/imgs/disk.img, imgs nobody's link to a
    // root-only directory. Neither root's file nor a new one is written.
    plant_link(&secret, &shared.join("imgs"));
    let o = receive(&ns, &pages, "walk", &shared.join("imgs/victim"), "1");
    assert_exit(&o, ErrorCode::TargetIo, "protected_symlinks");
    let o = receive(&ns, &pages, "walk", &shared.join("imgs/new.img"), "1");
    assert_exit(&o, ErrorCode::TargetIo, "protected_symlinks");
    assert!(!secret.join("new.img").exists());
    // Through nobody's own directory: its link is not followed either.
    let theirs = shared.join("theirs");
    assert!(nobody("mkdir").arg(&theirs).status().unwrap().success());
    plant_link(&secret, &theirs.join("imgs"));
    let o = receive(&ns, &pages, "walk", &theirs.join("imgs/victim"), "1");
    assert_exit(&o, ErrorCode::TargetIo, "not followed");
    // A hard link to root's file in the sticky directory (anyone can make
    // one where fs.protected_hardlinks is 0): not written.
    std::fs::hard_link(&v, shared.join("hard.img")).unwrap();
    let o = receive(&ns, &pages, "walk", &shared.join("hard.img"), "1");
    assert_exit(&o, ErrorCode::TargetIo, "hard link");
    // A FIFO nobody made: refused at once (its open does not hang).
    let fifo = shared.join("fifo.img");
    assert!(nobody("mkfifo").arg(&fifo).status().unwrap().success());
    let o = receive(&ns, &pages, "walk", &fifo, "1");
    assert_exit(&o, ErrorCode::TargetIo, "FIFO");
    // A character device, and a process's descriptor through /proc.
    let o = receive(&ns, &pages, "walk", Path::new("/dev/null"), "1");
    assert_exit(&o, ErrorCode::TargetIo, "character device");
    let o = receive(&ns, &pages, "walk", Path::new("/proc/self/fd/1"), "1");
    assert_exit(&o, ErrorCode::TargetIo, "/proc");
    assert_untouched(&v);
    // Legitimate: a relative path, a new file in root's own directory.
    let o = xdpcast(&ns)
        .current_dir(&dir.0)
        .env("XDPCAST_STATUS_DIR", &pages)
        .args(["receive", "--group", "239.45.0.1:5000", "--iface", "lo"])
        .args(["--mode", "socket", "--name", "rel", "--start-timeout", "1"])
        .args(["--out", "rel.img"])
        .output()
        .unwrap();
    assert_exit(&o, ErrorCode::Timeout, "");
}

/// A process of nobody's (a swapper, a hostile page writer), killed with its
/// process group on drop.
struct Swapper(std::process::Child);

impl Drop for Swapper {
    fn drop(&mut self) {
        kill_group(&self.0);
        let _ = self.0.wait();
    }
}

#[test]
fn names_swapped_during_the_open_never_lead_to_roots_files() {
    use xdpcast::store::target::Target;
    use xdpcast::store::writer::StoreConfig;
    if !netns_allowed() {
        return;
    }
    let dir = TempDir::new("xdpc-local-race");
    let (secret, v) = secret_dir(&dir.0);
    let shared = sticky_dir(&dir.0, "pub");
    let theirs = shared.join("n");
    assert!(nobody("mkdir").arg(&theirs).status().unwrap().success());
    // nobody turns n/x into a link to root's file, its own file, nothing;
    // and n/d into a link to root's directory, its own directory, nothing.
    let script = format!(
        "cd {n} || exit 1; while :; do ln -s {v} x; rm -f x; : > x; rm -f x; \
         ln -s {s} d; rm -f d; mkdir d; rm -rf d; done",
        n = theirs.display(),
        v = v.display(),
        s = secret.display()
    );
    let mut sh = nobody("sh");
    sh.args(["-c", &script]);
    let swapper = Swapper(spawn(sh));
    let cfg = StoreConfig {
        buffer_bytes: 0,
        ..StoreConfig::default()
    };
    for _ in 0..400 {
        // Opened or refused, but never root's file: a target is cut to
        // 4096 bytes when opened.
        drop(Target::open(&theirs.join("x"), 4096, 64, &cfg));
        drop(Target::open(&theirs.join("d/victim"), 4096, 64, &cfg));
        assert_untouched(&v);
        assert_eq!(std::fs::read_dir(&secret).unwrap().count(), 1);
    }
    drop(swapper);
}

#[test]
fn a_resume_file_of_someone_else_is_neither_read_nor_written() {
    if !netns_allowed() {
        return;
    }
    let ns = netns();
    let dir = TempDir::new("xdpc-local-resume");
    let pages = dir.join("pages");
    let shared = sticky_dir(&dir.0, "tmp");
    let v = victim(&dir.0);
    let out = shared.join("img");
    // nobody's file at the resume name, and at its temporary name a hard
    // link to root's file (as fs.protected_hardlinks = 0 allows).
    let resume = shared.join("img.xdpcast-resume");
    assert!(nobody("sh")
        .args(["-c", &format!("echo nobody > {}", resume.display())])
        .status()
        .unwrap()
        .success());
    std::fs::hard_link(&v, shared.join("img.xdpcast-resume.tmp")).unwrap();
    let src = dir.join("src.img");
    make_image(&src, 3 * MIB + 5, 17);
    transfer_without_resume(&ns, &pages, "resume-theirs", "239.45.0.5:5000", &src, &out);
    assert_untouched(&v);
    assert_eq!(std::fs::read(&resume).unwrap(), b"nobody\n");
    assert_eq!(std::fs::metadata(&resume).unwrap().uid(), NOBODY);
}

#[test]
fn trusted_keys_only_from_paths_no_one_else_can_change() {
    if !netns_allowed() {
        return;
    }
    let ns = netns();
    let dir = TempDir::new("xdpc-local-trust");
    let keys = dir.join("keys");
    std::fs::create_dir(&keys).unwrap();
    let o = xdpcast(&ns)
        .args(["keygen", "--out", keys.join("site.key").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let refused = |spec: &Path, says: &str| {
        let o = xdpcast(&ns)
            .env("XDPCAST_STATUS_DIR", dir.join("pages"))
            .args(["receive", "--group", "239.45.0.6:5000", "--iface", "lo"])
            .args(["--mode", "socket", "--start-timeout", "1"])
            .args(["--out", dir.join("out.img").to_str().unwrap()])
            .args(["--trust", spec.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!o.status.success(), "{}", text(&o));
        assert!(text(&o).contains(says), "{says:?} not in {}", text(&o));
    };
    // A mode-1777 directory where nobody dropped a key.
    let shared = sticky_dir(&dir.0, "shared");
    assert!(nobody("cp")
        .arg(keys.join("site.key.pub"))
        .arg(shared.join("evil.pub"))
        .status()
        .unwrap()
        .success());
    refused(&shared, "not trusted");
    // nobody's key file in root's directory, and one writable by others.
    let own = dir.join("own");
    std::fs::create_dir(&own).unwrap();
    std::fs::copy(keys.join("site.key.pub"), own.join("a.pub")).unwrap();
    std::os::unix::fs::chown(own.join("a.pub"), Some(NOBODY), Some(NOBODY)).unwrap();
    refused(&own, "not trusted");
    refused(&own.join("a.pub"), "not trusted");
    std::os::unix::fs::chown(own.join("a.pub"), Some(0), Some(0)).unwrap();
    std::fs::set_permissions(own.join("a.pub"), std::fs::Permissions::from_mode(0o666)).unwrap();
    refused(&own.join("a.pub"), "not trusted");
    // Root's key directory reached through nobody's link.
    plant_link(&keys, &shared.join("keys"));
    refused(&shared.join("keys"), "not followed");
    // Root's own directory: trusted (the session then times out).
    let o = xdpcast(&ns)
        .env("XDPCAST_STATUS_DIR", dir.join("pages"))
        .args(["receive", "--group", "239.45.0.6:5000", "--iface", "lo"])
        .args(["--mode", "socket", "--start-timeout", "1"])
        .args(["--out", dir.join("out.img").to_str().unwrap()])
        .args(["--trust", keys.to_str().unwrap()])
        .output()
        .unwrap();
    assert_exit(&o, ErrorCode::Timeout, "");
}

const HOSTILE_PY: &str = r#"
import os, struct, sys, time
path, mode = sys.argv[1], sys.argv[2]
fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
page = bytearray(os.pread(fd, 8192, 0))
struct.pack_into("<Q", page, 24, 7)
struct.pack_into("<Q", page, 32, os.getpid())
page = bytes(page)
os.pwrite(fd, page, 0)
print("ready", flush=True)
while True:
    if mode == "truncate":
        os.ftruncate(fd, 0)
        os.pwrite(fd, page, 0)
    else:
        time.sleep(1)
"#;

/// nobody's process holding its page file open and, for as long as it
/// runs, keeping the page's sequence lock odd with its own (live) pid as
/// the writer; with `truncate` it also cuts the file to 0 bytes and writes
/// it back, over and over. Killed when the guard is dropped.
fn hostile_writer(page: &Path, mode: &str) -> Swapper {
    use std::io::BufRead;
    let mut c = nobody("/usr/bin/python3");
    c.args(["-c", HOSTILE_PY]).arg(page).arg(mode);
    let mut child = spawn(c);
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    if first != "ready\n" {
        kill_group(&child);
        let o = child.wait_with_output().unwrap();
        panic!("the hostile writer did not start: {}", text(&o));
    }
    Swapper(child)
}

/// No terminal escape in `bytes`: no ESC, no C1 control (UTF-8 C2 80-9F),
/// no other C0 control than newline.
fn assert_no_escapes(bytes: &[u8], what: &str) {
    let text = String::from_utf8_lossy(bytes);
    let bad: Vec<char> = text
        .chars()
        .filter(|c| c.is_control() && *c != '\n')
        .collect();
    assert!(
        bad.is_empty(),
        "{what} prints raw controls {bad:?}:\n{text}"
    );
}

/// Root's `xdpcast` reading `pages` (run to its end, at most a minute).
fn root_reads(pages: &Path, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_xdpcast"));
    c.env("XDPCAST_STATUS_DIR", pages).args(args);
    let o = wait_output(spawn(c), Duration::from_secs(60), &args.join(" "));
    assert!(o.status.code().is_some(), "{args:?} killed: {:?}", o.status);
    o
}

#[test]
fn readers_survive_hostile_pages_and_list_the_good_ones() {
    if !netns_allowed() {
        return;
    }
    use xdpcast::status::page::{Snapshot, StatusWriter};
    let dir = TempDir::new("xdpc-local-hostile");
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let pages = dir.join("pages");
    std::fs::create_dir(&pages).unwrap();
    std::fs::set_permissions(&pages, std::fs::Permissions::from_mode(0o755)).unwrap();
    let page = |name: &str, s: Snapshot| {
        let w = StatusWriter::create(&pages.join(format!("xdpcast.{name}"))).unwrap();
        w.publish(&s);
        w
    };
    let done = |name: &str| Snapshot {
        name: name.into(),
        state: State::Success,
        ..Default::default()
    };
    let _good = [
        page("good-a", done("good-a")),
        page("good-b", done("good-b")),
    ];
    // nobody's pages (in a receiver's directory root reads, like
    // /dev/shm/xdpcast-UID): one cut and rewritten under the readers, one
    // whose lock never settles, one full of terminal escapes, and a file
    // whose very name is an escape sequence.
    let theirs = |name: &str, s: Snapshot| {
        let w = page(name, s);
        std::os::unix::fs::chown(w.path(), Some(NOBODY), Some(NOBODY)).unwrap();
        w
    };
    let _trunc = theirs("bad-trunc", done("bad-trunc"));
    let _odd = theirs("bad-odd", done("bad-odd"));
    let _esc = theirs(
        "esc",
        Snapshot {
            name: "evil\u{1b}]0;owned\u{7}".into(),
            group: "239.1.1.1:5000\u{9b}31m".into(),
            target: "/dev/\u{1b}[2Jsda".into(),
            message: "done\n\u{1b}[1;1Hroot# \u{7f}".into(),
            ..done("esc")
        },
    );
    let named = pages.join("xdpcast.\u{1b}[31mred");
    std::fs::write(&named, b"not a page").unwrap();
    std::os::unix::fs::chown(&named, Some(NOBODY), Some(NOBODY)).unwrap();
    let _cutter = hostile_writer(&pages.join("xdpcast.bad-trunc"), "truncate");
    let _stuck = hostile_writer(&pages.join("xdpcast.bad-odd"), "odd");

    let (mut server, addr) = start_metrics(&pages, &[]);
    for _ in 0..3 {
        // For people: the readable pages, escaped; the others on stderr.
        let o = root_reads(&pages, &["status"]);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        for want in [
            "good-a",
            "good-b",
            "evil\\u{1b}]0;owned\\u{7}",
            "done\\n\\u{1b}[1;1H",
        ] {
            assert!(out.contains(want), "{want:?} not in {out}");
        }
        let err = String::from_utf8_lossy(&o.stderr);
        for bad in ["bad-trunc", "bad-odd", "\\u{1b}[31mred"] {
            assert!(
                err.contains(&format!("status page {bad} unreadable")),
                "{bad}: {err}"
            );
        }
        assert_no_escapes(&o.stdout, "status");
        assert_no_escapes(&o.stderr, "status (stderr)");
        // JSON: every readable page, the text exact once parsed.
        let o = root_reads(&pages, &["status", "--json"]);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert_no_escapes(&o.stdout, "status --json");
        let names: Vec<String> = String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .map(|v| v["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(names, ["evil\u{1b}]0;owned\u{7}", "good-a", "good-b"]);
        // Metrics (printed, and served by a server that stays up).
        let o = root_reads(&pages, &["metrics", "--print"]);
        assert!(o.status.success(), "{}", text(&o));
        let m = String::from_utf8_lossy(&o.stdout);
        assert!(m.contains("xdpcast_unreadable_pages 3\n"), "{m}");
        assert!(
            m.contains("xdpcast_session_state{session=\"good-b\"} 2\n"),
            "{m}"
        );
        assert_no_escapes(&o.stdout, "metrics");
        let served = scrape(&addr);
        assert!(served.contains("xdpcast_unreadable_pages 3"), "{served}");
        let body = served.split_once("\r\n\r\n").unwrap().1;
        assert_no_escapes(body.as_bytes(), "metrics --listen");
        // The monitor: a line per page, the bad ones said unreadable.
        let o = root_reads(&pages, &["monitor", "--once"]);
        assert!(o.status.success(), "{}", text(&o));
        let lines = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            lines.contains("bad-odd") && lines.contains("unreadable"),
            "{lines}"
        );
        assert!(lines.contains("good-a"), "{lines}");
        assert_no_escapes(&o.stdout, "monitor");
    }
    assert!(
        server.try_wait().unwrap().is_none(),
        "the metrics server died"
    );
    server.kill().unwrap();
    let _ = server.wait();
    // The Python reader: the same, with a private copy too.
    let py = Command::new("/usr/bin/python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/status_reader.py"))
        .env("XDPCAST_STATUS_DIR", &pages)
        .output()
        .unwrap();
    assert_eq!(py.status.code(), Some(1), "{}", text(&py));
    assert_eq!(
        String::from_utf8_lossy(&py.stdout).lines().count(),
        3,
        "{}",
        text(&py)
    );
    assert_no_escapes(&py.stdout, "status_reader.py");
    assert_no_escapes(&py.stderr, "status_reader.py (stderr)");
}
