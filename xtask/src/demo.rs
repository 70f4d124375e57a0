//! `cargo xtask demo`: a real image through XDP between two namespaces.
//!
//! Builds the release binary, creates a veth pair with two queues between
//! two fresh network namespaces, generates an image and a signing key
//! (`xdpcast keygen`, in the demo's scratch directory), starts `xdpcast
//! receive --trust` (auto mode: XDP as root) in one namespace and `xdpcast
//! send --sign` in the other, shows progress from the status page, and ends
//! with the final status, the receiver's verification line and a SHA-256
//! comparison. Everything is removed afterwards.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use sha2::{Digest, Sha256};
use xdpcast::proto::wire::hex;
use xdpcast::status::page::{State, StatusReader};
use xdpcast_bench::{fixture, netns::VethPair};

use crate::workspace::{root, run};

const GROUP: &str = "239.9.9.9:5000";

fn sha256_hex(path: &Path) -> anyhow::Result<String> {
    let mut h = Sha256::new();
    std::io::copy(&mut std::fs::File::open(path)?, &mut h)?;
    Ok(hex(&h.finalize()))
}

/// Run the demo with an image of `size_mib` MiB.
pub fn run_demo(size_mib: usize) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo creates network namespaces and attaches XDP: run it as root");
    }
    run(Command::new("cargo").args(["build", "--release", "--quiet", "-p", "xdpcast"]))?;
    let bin = root().join("target/release/xdpcast");
    let dir = root().join("target/demo");
    let status_dir = dir.join("status");
    std::fs::create_dir_all(&status_dir)?;
    let (src, dst) = (dir.join("source.img"), dir.join("received.img"));
    let _ = std::fs::remove_file(&dst);
    println!("demo: generating a {size_mib} MiB image");
    // An incompressible stand-in for a disk image.
    std::fs::write(&src, fixture::image(size_mib << 20))?;
    let want = sha256_hex(&src)?;
    println!("demo: source SHA-256 {want}");
    // The trusted path is the default one: a signed session.
    let key = dir.join("demo.key");
    let public = dir.join("demo.key.pub");
    let _ = std::fs::remove_file(&key);
    let _ = std::fs::remove_file(&public);
    run(Command::new(&bin).args(["keygen", "--out"]).arg(&key))?;
    println!(
        "demo: signing key {} (public: {})",
        key.display(),
        public.display()
    );

    let net = VethPair::new(2, 1500);
    println!(
        "demo: namespaces {} ({}) -> {} ({}), veth with 2 queues",
        net.a.name, net.if_a, net.b.name, net.if_b
    );
    let rx = net
        .b
        .cmd(bin.to_str().context("path")?)
        .env("XDPCAST_STATUS_DIR", &status_dir)
        .args([
            "receive",
            "--group",
            GROUP,
            "--iface",
            &net.if_b,
            "--name",
            "demo",
            "--keep-status",
            "--trust",
            public.to_str().context("path")?,
        ])
        .arg("--out")
        .arg(&dst)
        .stdout(Stdio::piped())
        .spawn()?;
    let page = status_dir.join("xdpcast.demo");
    let started = Instant::now();
    let reader = loop {
        if let Ok(r) = StatusReader::open(&page) {
            if r.read()
                .map(|s| s.state == State::InProgress)
                .unwrap_or(false)
            {
                break r;
            }
        }
        ensure!(
            started.elapsed() < Duration::from_secs(20),
            "receiver did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut tx = net
        .a
        .cmd(bin.to_str().context("path")?)
        .args([
            "send",
            src.to_str().context("path")?,
            "--group",
            GROUP,
            "--iface",
            &net.if_a,
            "--sign",
            key.to_str().context("path")?,
            // No IMAGE.xdpcast-manifest beside the scratch image.
            "--no-manifest-file",
        ])
        // Many source ports, so that the flow hash spreads frames over both
        // RX queues and both workers show up in the status.
        .args(["--rate", "1.5G", "--streams", "32"])
        .spawn()?;
    let last = loop {
        let s = reader.read()?;
        if s.state.is_final() {
            break s;
        }
        if s.block_count > 0 {
            println!(
                "demo: {:5.1}%  {}  via {}",
                s.blocks_done as f64 * 100.0 / s.block_count as f64,
                xdpcast::status::report::rate(s.rate_bps),
                s.mode.name()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    ensure!(tx.wait()?.success(), "sender failed");
    let out = rx.wait_with_output()?;
    println!(
        "demo: receiver's final status:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    run(Command::new(&bin)
        .env("XDPCAST_STATUS_DIR", &status_dir)
        .args(["close", "demo"]))?;
    ensure!(out.status.success(), "receiver failed: {}", out.status);
    let got = sha256_hex(&dst)?;
    ensure!(got == want, "SHA-256 mismatch: {got} != {want}");
    // The receiver's own verdict: every chunk checked against the signed
    // manifest as it landed, nothing read back.
    println!("demo: verified: {}", last.message);
    println!("demo: SHA-256 OK ({got})");
    for f in [&src, &dst, &key, &public] {
        std::fs::remove_file(f)?;
    }
    Ok(())
}
