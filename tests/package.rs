//! The Debian packages (packaging/build-deb.sh, what `cargo xtask dist`
//! runs): built from the binary and library under test, lintian-clean
//! (`-EvIL +pedantic`, with the packages' own overrides), installed with
//! dpkg on this machine, `xdpcast --version` and `man xdpcast-receive` work
//! from the installed files, xdpcast-udpcast diverts udpcast's
//! udp-receiver so that Clonezilla's exact line runs xdpcast with a bare
//! PATH, and a purge leaves nothing behind and gives udpcast's receiver
//! back.
//!
//! Needs root (dpkg). Runs in CI; skipped only when `XDPCAST_SKIP_NETNS=1`
//! says the machine cannot run root tests.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

const MIB: usize = 1 << 20;

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
        let _ = Command::new("dpkg")
            .args(["--purge", "xdpcast-udpcast", "xdpcast"])
            .output();
    }
}

/// What the package puts on the machine (besides man pages).
const FILES: [&str; 13] = [
    "/usr/share/doc/xdpcast/README.md.gz",
    "/usr/share/doc/xdpcast/grafana-dashboard.json",
    "/usr/share/doc/xdpcast/changelog.gz",
    "/usr/share/doc/xdpcast/docs/udpcast.md.gz",
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
    let debs: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let [deb, compat] = &debs[..] else {
        panic!("two packages: {debs:?}")
    };
    for d in &debs {
        assert!(d.ends_with(".deb") && Path::new(d).exists(), "{d}");
    }
    // Lintian, pedantic, every tag shown; the overrides in the packages
    // have their reasons. "wTH" is bytes of data in the unoptimized build
    // (what the tests run), not in the release build that ships.
    let lint = Command::new("lintian")
        .args(["-EvIL", "+pedantic", "--tag-display-limit", "0"])
        .args(&debs)
        .output()
        .expect("lintian (./setup.sh installs it)");
    let lint_out = String::from_utf8_lossy(&lint.stdout);
    let tags: Vec<&str> = lint_out
        .lines()
        .filter(|l| !l.starts_with("N:") && !l.trim().is_empty())
        .filter(|l| !l.contains("spelling-error-in-binary wTH"))
        .collect();
    assert!(
        tags.is_empty() && lint.status.success(),
        "lintian: {}{}",
        lint_out,
        String::from_utf8_lossy(&lint.stderr)
    );
    let listing =
        String::from_utf8(run(Command::new("dpkg-deb").args(["-c", deb])).stdout).unwrap();
    assert!(listing.contains("libxdpcast.so"), "{listing}");

    let installed = Installed;
    run(Command::new("dpkg").args(["-i", deb]));
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

    // The compat package takes udp-receiver's place; udpcast's stays as
    // udp-receiver.udpcast.
    run(Command::new("dpkg").args(["-i", compat]));
    assert_eq!(
        std::fs::read_link("/usr/bin/udp-receiver").unwrap(),
        Path::new("xdpcast")
    );
    assert!(Path::new("/usr/bin/udp-receiver.udpcast").exists());
    let diverted =
        run(Command::new("dpkg-divert").args(["--listpackage", "/usr/bin/udp-receiver"]));
    assert_eq!(
        String::from_utf8_lossy(&diverted.stdout).trim(),
        "xdpcast-udpcast"
    );
    clonezilla_line_with_a_bare_path();

    run(Command::new("dpkg").args(["--purge", "xdpcast-udpcast", "xdpcast"]));
    std::mem::forget(installed);
    // udpcast's receiver is back in its place.
    assert!(std::fs::read_link("/usr/bin/udp-receiver").is_err());
    assert!(!Path::new("/usr/bin/udp-receiver.udpcast").exists());
    let v = Command::new("/usr/bin/udp-receiver")
        .arg("--license")
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&v.stderr).contains("xdpcast"));
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

/// Clonezilla's exact receiving line, `udp-receiver --nokbd --mcast-all-addr
/// 224.0.0.1 --portbase 2232 --ttl 1 | zstd -dc > out`, run by `sh` with a
/// bare PATH in a namespace, against Debian's udp-sender with its defaults
/// sending a zstd image: the installed packages make it xdpcast, and the
/// image lands whole.
fn clonezilla_line_with_a_bare_path() {
    let net = VethPair::new(1, 1500);
    let Images { dir, src, dst } = Images::new("xdpc-deb-cz", 8 * MIB + 99, 29);
    let zst = dir.join("src.img.zst");
    run(Command::new("zstd")
        .args(["-q", "-1", "-o"])
        .arg(&zst)
        .arg(&src));
    let line = format!(
        "udp-receiver --nokbd --mcast-all-addr 224.0.0.1 --portbase 2232 --ttl 1 | zstd -dc > {}",
        dst.display()
    );
    let mut rx = net.b.cmd("/usr/bin/env");
    rx.args([
        "-i",
        "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
        "sh",
        "-c",
        &line,
    ]);
    let rx = spawn(rx);
    let mut tx = net.a.cmd("udp-sender");
    tx.args(["--interface", &net.if_a, "--file", zst.to_str().unwrap()])
        .args(["--portbase", "2232", "--min-receivers", "1", "--nokbd"]);
    let tx = wait_output(spawn(tx), Duration::from_secs(120), "udp-sender");
    assert!(
        tx.status.success(),
        "{}",
        String::from_utf8_lossy(&tx.stderr)
    );
    let rx = wait_output(rx, Duration::from_secs(120), "udp-receiver");
    let said = String::from_utf8_lossy(&rx.stderr);
    assert!(rx.status.success(), "{said}");
    // xdpcast answered, not udpcast ("Udp-receiver 2012..." is udpcast's).
    assert!(said.contains("xdpcast"), "{said}");
    assert_eq!(sha256_hex(&dst), sha256_hex(&src));
}
