//! `cargo xtask bench --finish`: time from the last block to SUCCESS, with
//! the read-back (unsigned session: the receiver re-reads the target and
//! compares SHA-256) and without it (signed session: the last chunk's hash
//! verified as it landed), for a target file on tmpfs and on ext4.
//!
//! Real `xdpcast send` (paced, `--sign` for the signed rows) and
//! `xdpcast receive --mode xdp` (`--trust`) over a veth pair. The last
//! block's time comes from the status page samples (interpolated, the
//! page is published every 50 ms), SUCCESS's from the receiver's exit.
//! Each row is the median of `runs` runs with their spread.

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use xdpcast::status::page::State;
use xdpcast_bench::netns::VethPair;

use super::harness::{cmd_ok, completion, follow, keygen, Ctx};
use super::runs::{start_receiver, xdpcast_send};

/// Seconds from the last block to the receiver's exit with SUCCESS.
fn last_block_to_success(ctx: &Ctx, net: &VethPair, dir: &Path, key: Option<&Path>) -> Result<f64> {
    let out = dir.join("finish.img");
    let _ = std::fs::remove_file(&out);
    let public = key.map(|k| format!("{}.pub", k.display()));
    let mut extra = vec!["--mode", "xdp"];
    if let Some(p) = &public {
        extra.extend(["--trust", p]);
    }
    let (mut rx, reader) = start_receiver(ctx, net, "finish", &out, &extra)?;
    let key_s = key.map(|k| k.to_string_lossy().into_owned());
    let sign: Vec<&str> = key_s.iter().flat_map(|k| ["--sign", k.as_str()]).collect();
    let mut tx = xdpcast_send(ctx, net, &sign, "finish-tx.log")?;
    let (exit, samples) = follow(&reader, &mut rx, ctx.timeout)?;
    tx.stop();
    let s = reader.read()?;
    ensure!(
        exit.success() && s.state == State::Success,
        "receiver failed: {}",
        s.message
    );
    let (last, _) =
        completion(&samples, s.block_count).context("the page never showed all blocks")?;
    let _ = std::fs::remove_file(&out);
    Ok(exit.at_ns.saturating_sub(last) as f64 / 1e9)
}

/// The rows: (target filesystem, mode) -> median and spread of `runs` runs.
pub fn run(ctx: &Ctx, runs: usize) -> Result<String> {
    let net = VethPair::new(1, 1500);
    let key = keygen(ctx)?;
    let ext4 = std::path::PathBuf::from(format!("/var/tmp/xdpcast-finish-{}", std::process::id()));
    std::fs::create_dir_all(&ext4)?;
    let fs_of = |p: &Path| -> String {
        cmd_ok("findmnt", &["-no", "FSTYPE", "-T", &p.to_string_lossy()])
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "?".into())
    };
    let mut md = format!(
        "| target | session | last block → SUCCESS, s (median of {runs}) | min–max |\n|---|---|---:|---|\n"
    );
    let dirs = [ctx.work.clone(), ext4.clone()];
    for dir in &dirs {
        for (label, k) in [
            ("unsigned (read-back)", None),
            ("signed (no read-back)", Some(key.as_path())),
        ] {
            let mut t = Vec::new();
            for i in 0..runs {
                eprintln!("bench: finish, {} on {}, run {}", label, fs_of(dir), i + 1);
                t.push(last_block_to_success(ctx, &net, dir, k)?);
            }
            t.sort_by(f64::total_cmp);
            md += &format!(
                "| {} file | {label} | {:.3} | {:.3}–{:.3} |\n",
                fs_of(dir),
                t[t.len() / 2],
                t[0],
                t[t.len() - 1]
            );
        }
    }
    let _ = std::fs::remove_dir_all(&ext4);
    std::thread::sleep(Duration::from_millis(10));
    Ok(md)
}
