//! `xdpcast status` for people: several lines per page, text from the
//! page made [`printable`].

use std::fmt::Write as _;

use crate::proto::wire::{hex, DropReason};
use crate::status::page::{DiagStatus, PathMode, Role, Snapshot, TRUST_MANIFEST, TRUST_REQUIRED};

/// Bytes as a short human figure (KiB, MiB, GiB).
pub fn bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// A rate in bytes/s as Gbit/s or Mbit/s.
pub fn rate(bytes_per_sec: u64) -> String {
    let bits = bytes_per_sec as f64 * 8.0;
    if bits >= 1e9 {
        format!("{:.2} Gbit/s", bits / 1e9)
    } else {
        format!("{:.1} Mbit/s", bits / 1e6)
    }
}

/// Several lines describing the page, for `xdpcast status`.
pub fn human(s: &Snapshot) -> String {
    let mut o = String::new();
    let pct = if s.block_count > 0 {
        s.blocks_done as f64 * 100.0 / s.block_count as f64
    } else {
        0.0
    };
    let _ = writeln!(
        o,
        "session   {} ({}, id {:#010x})",
        printable(&s.name),
        printable(&s.group),
        s.session_id
    );
    if s.foreign_owner() {
        let _ = writeln!(
            o,
            "WARNING   page owned by uid {}, neither root nor you: another user may have written all of it",
            s.owner_uid
        );
    }
    let _ = writeln!(o, "state     {}  error {}", s.state.name(), s.error);
    if s.role == Role::Sender {
        sender_lines(&mut o, s);
        return o;
    }
    let _ = writeln!(
        o,
        "path      {}  target {}",
        s.mode.name(),
        printable(&s.target)
    );
    let _ = writeln!(
        o,
        "progress  {}/{} blocks ({pct:.1}%), {} of {}",
        s.blocks_done,
        s.block_count,
        bytes(s.bytes_done),
        bytes(s.total_bytes)
    );
    let _ = writeln!(
        o,
        "rate      now {}  average {}",
        rate(s.rate_bps),
        rate(s.avg_rate_bps)
    );
    let _ = writeln!(
        o,
        "packets   {} accepted, {} duplicates, {} dropped; pass and repair round ends seen {}, blocks missing after first pass {}",
        s.packets,
        s.drops_for(DropReason::Duplicate),
        s.rejected(),
        s.passes_seen,
        s.first_pass_missing
    );
    if s.sparse.skipped_blocks > 0 {
        let _ = writeln!(
            o,
            "sparse    {} in {} blocks of zeros skipped (never sent), made zeros by {}",
            bytes(s.sparse.skipped_bytes),
            s.sparse.skipped_blocks,
            s.sparse.zero_method.name()
        );
    }
    if s.fec_recovered + s.nacks_sent + s.resumed_blocks > 0 {
        let _ = writeln!(
            o,
            "repair    {} blocks rebuilt by FEC, {} NACKs sent, {} blocks resumed from disk",
            s.fec_recovered, s.nacks_sent, s.resumed_blocks
        );
    }
    if s.stream.window > 0 {
        let _ = writeln!(
            o,
            "stream    {} written to the pipe, {} held of a {} window, {} blocks refused (window full, asked again)",
            bytes(s.stream.written),
            bytes(s.stream.held),
            bytes(s.stream.window),
            s.stream.refused
        );
    }
    let drops: Vec<String> = DropReason::ALL
        .iter()
        .filter(|r| s.drops_for(**r) > 0)
        .map(|r| format!("{}={}", r.name(), s.drops_for(*r)))
        .collect();
    if !drops.is_empty() {
        let _ = writeln!(o, "drops     {}", drops.join(" "));
    }
    if s.diag.unserved_frames > 0 {
        let _ = writeln!(o, "unserved  {} ({UNSERVED_FIX})", unserved(&s.diag));
    }
    let h = &s.http;
    if h.state > 0 {
        let _ = writeln!(
            o,
            "http      {}: {} by multicast, {} by HTTP in {} requests; {} chunks failed their hash, {} bad replies, {} refused, {} busy",
            h.state_name(),
            bytes(h.multicast_bytes),
            bytes(h.http_bytes),
            h.requests,
            h.bad_chunks,
            h.bad_replies,
            h.refused,
            h.busy
        );
    }
    let _ = match (
        s.trust.flags & TRUST_REQUIRED,
        s.trust.flags & TRUST_MANIFEST,
    ) {
        (0, _) => Ok(()),
        (_, 0) => writeln!(o, "trust     --trust: no manifest from a trusted key yet"),
        _ => writeln!(
            o,
            "trust     signed by {}: {}/{} chunks verified, {} blocks rejected",
            hex(&s.trust.signer),
            s.trust.chunks_verified,
            s.trust.chunk_count,
            s.trust.rejected_blocks
        ),
    };
    if let Some((name, d)) = s.image_digest() {
        let _ = writeln!(o, "{name:<9} {}", hex(d));
    }
    for w in &s.workers {
        let cpu = if w.cpu == u64::MAX {
            "-".to_string()
        } else {
            w.cpu.to_string()
        };
        let _ = write!(
            o,
            "worker    queue {} cpu {cpu}: {} packets, {} blocks, {} drops, {} batches, {} ring drops",
            w.queue, w.packets, w.blocks, w.drops, w.batches, w.ring_drops
        );
        if w.batch_ns[0] > 0 {
            let [p50, p99, p999] = w.batch_ns.map(|ns| ns as f64 / 1e3);
            let _ = write!(o, "; batch p50 {p50:.1} p99 {p99:.1} p99.9 {p999:.1} µs");
        }
        if w.gro_messages > 0 {
            let _ = write!(o, "; {} GRO messages", w.gro_messages);
        }
        if s.mode != PathMode::Socket && s.mode != PathMode::Unknown {
            let k = &w.kernel;
            let _ = write!(
                o,
                "; kernel rx_dropped {} rx_ring_full {} fill_ring_empty {} rx_invalid_descs {}",
                k.rx_dropped, k.rx_ring_full, k.fill_ring_empty, k.rx_invalid_descs
            );
        }
        o.push('\n');
    }
    let st = &s.storage;
    if st.buffer_bytes > 0 {
        let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
        let _ = writeln!(
            o,
            "storage   {:.0} MiB buffer, {:.0} MiB in use (peak {:.0}), {:.1} MiB written{}: {} whole + {} partial chunks, {} overflow blocks, longest write {:.1} ms; {} blocks handed off, {} copied by workers (lane full){}",
            mib(st.buffer_bytes),
            mib(st.buffer_used),
            mib(st.buffer_peak),
            mib(st.bytes_stored),
            if st.direct { " (O_DIRECT)" } else { "" },
            st.chunks_full,
            st.chunks_partial,
            st.overflow_blocks,
            st.write_max_ns as f64 / 1e6,
            st.handed_off,
            st.lane_full,
            if st.chunks_checked + st.bytes_read_back + st.blocks_refused > 0 {
                format!(
                    "; {} signed chunks checked, {:.1} MiB read back, {} blocks refused (no buffer)",
                    st.chunks_checked,
                    mib(st.bytes_read_back),
                    st.blocks_refused
                )
            } else {
                String::new()
            }
        );
    }
    if !s.message.is_empty() {
        let _ = writeln!(o, "message   {}", printable(&s.message));
    }
    o
}

/// The lines of a sender's page after its state.
fn sender_lines(o: &mut String, s: &Snapshot) {
    let x = &s.sender;
    let pct = 100.0 * s.blocks_done as f64 / s.block_count.max(1) as f64;
    let _ = writeln!(
        o,
        "sender    {} (pass {}), source {}",
        x.phase.name(),
        s.passes_seen,
        printable(&s.target)
    );
    let _ = writeln!(
        o,
        "progress  {}/{} blocks of the pass ({pct:.1}%), {} of {}",
        s.blocks_done,
        s.block_count,
        bytes(s.bytes_done),
        bytes(s.total_bytes)
    );
    let _ = writeln!(
        o,
        "sent      {} packets, {} of data and symbols; now {}, average {}",
        s.packets,
        bytes(x.bytes_sent),
        rate(s.rate_bps),
        rate(s.avg_rate_bps)
    );
    let _ = writeln!(
        o,
        "receivers {} known: {} receiving, {} finished, {} failed, {} vanished",
        x.receivers_known, x.receiving, x.finished, x.failed, x.vanished
    );
    let _ = writeln!(
        o,
        "repair    {} rounds of {} packets ({}); {} NACKs and {} parity requests in, {} confirmations out, {} reports, {} datagrams ignored",
        x.repair_rounds,
        x.repair_packets,
        bytes(x.repair_bytes),
        x.nacks,
        x.parity_requests,
        x.confirms,
        x.reports,
        x.ignored
    );
    if s.sparse.skipped_bytes > 0 {
        let _ = writeln!(
            o,
            "sparse    {} of zeros in this pass announced, not sent",
            bytes(s.sparse.skipped_bytes)
        );
    }
    if let Some((name, d)) = s.image_digest() {
        let _ = writeln!(o, "{name:<9} {}", hex(d));
    }
    if !s.message.is_empty() {
        let _ = writeln!(o, "message   {}", printable(&s.message));
    }
}

/// `N frames of the session on RX queue(s) Q without an AF_XDP socket`:
/// what the XDP program passed to the kernel for want of a socket on the
/// queue (see [`UNSERVED_FIX`]).
pub fn unserved(d: &DiagStatus) -> String {
    format!(
        "{} frames of the session on RX queue{} {} without an AF_XDP socket, not received",
        d.unserved_frames,
        if d.queues().count() == 1 { "" } else { "s" },
        d.queue_list()
    )
}

/// The way out of [`unserved`] frames, in short.
pub const UNSERVED_FIX: &str =
    "use --queues all, or steer the flow to the served queues with ethtool";

/// `text` with its control characters (U+0000–U+001F, U+007F–U+009F)
/// escaped as [`char::escape_debug`] writes them (`\n`, `\u{1b}`...), for
/// printing text that may come from another user's page or file name: no
/// terminal escape sequence gets through. Other characters are unchanged.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out.into()
}
