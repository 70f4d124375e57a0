//! `cargo xtask test`: what CI runs.

use std::process::Command;

use crate::workspace::run;

/// Formatting, lints, then every test of the workspace. Namespace and XDP
/// tests need root; they fail rather than skip unless XDPCAST_SKIP_NETNS=1.
pub fn run_all() -> anyhow::Result<()> {
    run(Command::new("cargo").args(["fmt", "--all", "--", "--check"]))?;
    run(Command::new("cargo").args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--quiet",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(Command::new("cargo").args(["test", "--workspace", "--doc"]))?;
    run(Command::new("cargo").args(["test", "--workspace", "--all-targets"]))
}
