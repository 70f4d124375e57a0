//! The Debian package (packaging/build-deb.sh, what `cargo xtask dist`
//! runs): built from the binary and library under test, installed with
//! dpkg on this machine, `xdpcast --version` and `man xdpcast-receive` work
//! from the installed files, and a purge leaves nothing behind.
//!
//! Needs root (dpkg). Runs in CI; skipped only when `XDPCAST_SKIP_NETNS=1`
//! says the machine cannot run root tests.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

fn run(c: &mut Command) -> Output {
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "{c:?}: {}{}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// Purges the package when dropped, so a failed test leaves no package.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "xdpcast"]).output();
    }
}

/// What the package puts on the machine (besides man pages).
const FILES: [&str; 9] = [
    "/usr/bin/xdpcast",
    "/usr/include/xdpcast.h",
    "/usr/include/xdpcast_status.h",
    "/usr/share/xdpcast/status_reader.py",
    "/lib/systemd/system/xdpcast-receive@.service",
    "/etc/xdpcast/example.conf",
    "/usr/share/bash-completion/completions/xdpcast",
    "/usr/share/zsh/vendor-completions/_xdpcast",
    "/usr/lib/xdpcast/udp-receiver",
];

#[test]
fn deb_installs_runs_shows_its_man_page_and_purges() {
    if !netns_allowed() {
        return;
    }
    let status = Command::new("dpkg")
        .args(["-s", "xdpcast"])
        .output()
        .unwrap();
    assert!(
        !status.status.success(),
        "an xdpcast package is already installed on this machine; purge it first"
    );
    let dir = TempDir::new("xdpc-deb");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/build-deb.sh");
    let out = run(Command::new(&script)
        .arg("--bin")
        .arg(env!("CARGO_BIN_EXE_xdpcast"))
        .arg("--lib")
        .arg(lib_dir().join("libxdpcast.so"))
        .arg("--out")
        .arg(&dir.0));
    let deb = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(deb.ends_with(".deb") && Path::new(&deb).exists(), "{deb}");
    let listing =
        String::from_utf8(run(Command::new("dpkg-deb").args(["-c", &deb])).stdout).unwrap();
    assert!(listing.contains("libxdpcast.so"), "{listing}");

    let installed = Installed;
    run(Command::new("dpkg").args(["-i", &deb]));
    for f in FILES {
        assert!(Path::new(f).exists(), "{f} installed");
    }
    let v = run(Command::new("/usr/bin/xdpcast").arg("--version"));
    assert_eq!(
        String::from_utf8_lossy(&v.stdout).trim(),
        format!("xdpcast {}", env!("CARGO_PKG_VERSION"))
    );
    let page = run(Command::new("man")
        .args(["-P", "cat", "xdpcast-receive"])
        .env("MANWIDTH", "100"));
    let page = String::from_utf8_lossy(&page.stdout);
    assert!(
        page.contains("xdpcast-receive") && page.contains("--group"),
        "{page}"
    );
    // The link for Clonezilla/FOG scripts runs udp-receiver's command line.
    let help = run(Command::new("/usr/lib/xdpcast/udp-receiver").arg("--help"));
    assert!(String::from_utf8_lossy(&help.stdout).contains("--mcast-rdv-address"));
    let unit = std::fs::read_to_string("/lib/systemd/system/xdpcast-receive@.service").unwrap();
    assert!(
        unit.contains("EnvironmentFile=/etc/xdpcast/%i.conf"),
        "{unit}"
    );

    run(Command::new("dpkg").args(["--purge", "xdpcast"]));
    std::mem::forget(installed);
    for f in FILES {
        assert!(!Path::new(f).exists(), "{f} removed by the purge");
    }
    assert!(
        !Path::new("/etc/xdpcast").exists(),
        "/etc/xdpcast removed by the purge"
    );
    assert!(!Command::new("dpkg")
        .args(["-s", "xdpcast"])
        .output()
        .unwrap()
        .status
        .success());
}
