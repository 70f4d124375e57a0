//! `xdpcast man DIR`: the man pages, from the same definitions as `--help`.

use anyhow::Context;

use crate::cli::Cli;

/// `xdpcast.1` and `xdpcast-COMMAND.1` for every visible command, rendered
/// by clap_mangen from the same definitions as `--help`.
/// Each page ends with an EXIT STATUS section ([`exit_status_roff`]). No
/// page for `help` (the pages are the help), and no `-V` on the command
/// pages: only `xdpcast --version` exists.
pub(crate) fn write_man_pages(dir: &std::path::Path) -> anyhow::Result<()> {
    let cmd = <Cli as clap::CommandFactory>::command().disable_help_subcommand(true);
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let write = |page: clap::Command, name: &str, command: &str| -> anyhow::Result<()> {
        let mut roff = Vec::new();
        clap_mangen::Man::new(page).render(&mut roff)?;
        roff.extend_from_slice(exit_status_roff(command).as_bytes());
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, roff).with_context(|| format!("write {}", path.display()))
    };
    write(cmd.clone(), "xdpcast", "")?;
    for sub in cmd.get_subcommands().filter(|c| !c.is_hide_set()) {
        let name = format!("xdpcast-{}", sub.get_name());
        let version = cmd.get_version().unwrap_or_default().to_string();
        let page = sub
            .clone()
            .name(name.clone())
            .version(version)
            .disable_version_flag(true);
        write(page, &name, sub.get_name())?;
    }
    Ok(())
}

/// The EXIT STATUS section of the man page of `command` ("" for
/// xdpcast(1)), in roff; docs/udpcast.md has the same table.
fn exit_status_roff(command: &str) -> String {
    let rows: &[(&str, &str)] = match command {
        "receive" => &[
            ("0", "the image arrived (SUCCESS)"),
            ("141", "the output closed: the consumer of \\fB--out -\\fR exited (as a process killed by SIGPIPE)"),
            ("130", "SIGINT"),
            ("143", "SIGTERM"),
            ("100 + code", "any other failure: 100 plus the error code on the status page (102 timeout, 107 sender_gone, 112 invalid_argument, ...)"),
            ("2", "a bad command line"),
        ],
        "udp-receiver" => &[
            ("0", "the image arrived"),
            ("141", "the output closed: the consumer of standard output or the \\fB--pipe\\fR command exited (as udp-receiver, killed by SIGPIPE)"),
            ("130", "SIGINT"),
            ("143", "SIGTERM"),
            ("255", "no sender answered, or sent data, within \\fB--start-timeout\\fR"),
            ("1", "any other failure, a bad command line, or a \\fB--pipe\\fR command that failed"),
        ],
        _ => &[
            ("0", "success"),
            ("100 + code", "a failure that carries an xdpcast error code (see xdpcast-status(1))"),
            ("1", "any other failure"),
            ("2", "a bad command line"),
        ],
    };
    let mut roff = String::from(".SH \"EXIT STATUS\"\n");
    for (status, when) in rows {
        roff.push_str(&format!(".TP\n\\fB{status}\\fR\n{when}\n"));
    }
    if matches!(command, "receive" | "udp-receiver") {
        roff.push_str(".PP\nIn every case but a bad command line, a udpcast receiver tells the sender it leaves.\n");
    }
    roff
}
