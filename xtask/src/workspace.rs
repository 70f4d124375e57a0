//! The workspace root and running commands in it, for every task.

use std::path::PathBuf;

/// The workspace root (xtask lives one level below it).
pub(crate) fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Run a command in the workspace root, failing with its name if it fails.
pub(crate) fn run(cmd: &mut std::process::Command) -> anyhow::Result<()> {
    let status = cmd.current_dir(root()).status()?;
    anyhow::ensure!(status.success(), "{cmd:?} failed: {status}");
    Ok(())
}
