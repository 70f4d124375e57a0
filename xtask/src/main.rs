//! Project tasks: `cargo xtask test | demo | build-ebpf | bench | fuzz | dist | fleet-sim`.

mod bench;
mod demo;
mod fleet_sim;
mod fuzz;
mod plot;
mod test;
mod workspace;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use workspace::{root, run};

#[derive(Parser)]
#[command(name = "xtask", about = "xdpcast project tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Everything CI checks: formatting, clippy, every test (XDP tests included).
    Test,
    /// Send a generated image between two network namespaces through XDP and print the status.
    Demo {
        /// Image size in MiB.
        #[arg(long, default_value_t = 256)]
        size_mib: usize,
    },
    /// Compile the XDP program to an object file (the crate's build.rs does the same).
    BuildEbpf {
        /// Output path.
        #[arg(long, default_value = "target/xdpcast.bpf.o")]
        out: PathBuf,
    },
    /// End-to-end benchmark: xdpcast XDP path, socket path and udpcast over veth (needs root).
    Bench(bench::Args),
    /// Run the fuzzers of tests/fuzz.rs for a while with fresh seeds
    /// (`--seconds N`, default 600), many more cases per run than the suite.
    Fuzz(fuzz::Args),
    /// The repair logic (xdpcast::core) with one sender and up to 1000
    /// receivers in virtual time: sends per block, requests and rounds per
    /// loss scenario (no root; deterministic by seed).
    FleetSim(fleet_sim::Args),
    /// Build the Debian package (target/dist/xdpcast_VERSION_ARCH.deb) from a release build.
    Dist {
        /// Output directory.
        #[arg(long, default_value = "target/dist")]
        out: PathBuf,
    },
}

/// Build the receiver (whose build.rs compiles the XDP program) and copy the
/// object out, so there is one recipe for it.
fn build_ebpf(out: &std::path::Path) -> anyhow::Result<()> {
    run(std::process::Command::new("cargo").args(["build", "--release", "-p", "xdpcast"]))?;
    let built = std::fs::read_dir(root().join("target/release/build"))?
        .flatten()
        .map(|e| e.path().join("out/xdpcast.bpf.o"))
        .filter(|p| p.exists())
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .ok_or_else(|| anyhow::anyhow!("no xdpcast.bpf.o under target/release/build"))?;
    std::fs::copy(&built, root().join(out))?;
    println!("{}", root().join(out).display());
    Ok(())
}

/// Build the release binary and library (the XDP object embedded), then
/// package them with packaging/build-deb.sh, the one recipe the package
/// test uses too.
fn dist(out: &std::path::Path) -> anyhow::Result<()> {
    run(std::process::Command::new("cargo").args(["build", "--release", "-p", "xdpcast"]))?;
    let release = root().join("target/release");
    run(
        std::process::Command::new(root().join("packaging/build-deb.sh"))
            .arg("--bin")
            .arg(release.join("xdpcast"))
            .arg("--lib")
            .arg(release.join("libxdpcast.so"))
            .arg("--out")
            .arg(root().join(out)),
    )
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Test => test::run_all(),
        Cmd::Demo { size_mib } => demo::run_demo(size_mib),
        Cmd::BuildEbpf { out } => build_ebpf(&out),
        Cmd::Bench(args) => bench::run(args),
        Cmd::Fuzz(args) => fuzz::run_fuzz(args),
        Cmd::Dist { out } => dist(&out),
        Cmd::FleetSim(args) => fleet_sim::run(args),
    }
}
