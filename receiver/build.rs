//! Compiles the XDP steering program `ebpf/xdpcast.bpf.c` into
//! `$OUT_DIR/xdpcast.bpf.o`, which `src/steer.rs` embeds.
//!
//! Needs clang with the BPF target and the libbpf headers (`libbpf-dev`).
//! `CLANG` overrides the compiler, `XDPCAST_BPF_SRC` the source file.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let src = match env::var_os("XDPCAST_BPF_SRC") {
        Some(p) => PathBuf::from(p),
        None => manifest_dir.join("../ebpf/xdpcast.bpf.c"),
    };
    let src_dir = src
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let out = out_dir.join("xdpcast.bpf.o");

    println!("cargo:rerun-if-changed={}", src.display());
    println!("cargo:rerun-if-env-changed=CLANG");
    println!("cargo:rerun-if-env-changed=XDPCAST_BPF_SRC");

    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_string());
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".to_string());
    // Debian/Ubuntu multiarch directory that holds <asm/types.h>.
    let multiarch = match arch.as_str() {
        "x86" => "i386-linux-gnu".to_string(),
        "arm" => "arm-linux-gnueabihf".to_string(),
        "powerpc64" => "powerpc64le-linux-gnu".to_string(),
        other => format!("{other}-linux-gnu"),
    };

    let mut cmd = Command::new(&clang);
    cmd.arg("-O2")
        .arg("-g") // BTF (needed for the map definitions)
        .arg("-target")
        .arg("bpf")
        .arg("-Wall")
        .arg(format!("-I/usr/include/{multiarch}"))
        // Reproducible output: no absolute build paths in the debug info.
        .arg(format!("-fdebug-prefix-map={}=ebpf", src_dir.display()))
        .arg("-fdebug-compilation-dir=.")
        .arg("-c")
        .arg(&src)
        .arg("-o")
        .arg(&out);

    let output = match cmd.output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("clang with BPF target not found: run ./setup.sh (tried `{clang}`; set CLANG to override)")
        }
        Err(e) => panic!("failed to run `{clang}`: {e}"),
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let hint = if stderr.contains("No available targets")
            || stderr.contains("unknown target")
            || stderr.contains("unable to create target")
        {
            "clang with BPF target not found: run ./setup.sh"
        } else if stderr.contains("bpf/bpf_helpers.h") || stderr.contains("asm/types.h") {
            "BPF headers missing (libbpf-dev / linux-libc-dev): run ./setup.sh"
        } else {
            "compiling the XDP program failed"
        };
        panic!("{hint}\n`{cmd:?}` exited with {}:\n{stderr}", output.status);
    }
}
