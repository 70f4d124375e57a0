#!/usr/bin/env python3
"""Read xdpcast status pages (layout version 2) with the standard library only.

    status_reader.py [NAME ...]          # default: every session
    status_reader.py --path FILE

Prints one JSON object per page, one per line, with the same keys as
`xdpcast status --json`. A page that cannot be read is reported on stderr
and the others are still printed (exit status 1 if any was unreadable).

The page is never mapped: its owner could truncate the file under the
mapping (SIGBUS). It is copied with os.pread under the writer's sequence
lock (docs/status-page.md): read `seq`; copy the page; read `seq` again;
retry while `seq` was odd or changed, and give up after 0.5 s. The writer
is never blocked. Each pread is a system call, which orders the copies on
x86-64; the C header (xdpcast_status_read_fd) adds fences for the rest.
"""

import json
import os
import struct
import sys
import time

MAGIC = int.from_bytes(b"XDPCSTAT", "little")
LAYOUT_VERSION = 2
PAGE_SIZE = 8192
WORDS = PAGE_SIZE // 8
PREFIX = "xdpcast."

# Word indices (byte offset = 8 * index).
W = dict(
    magic=0, version=1, page_size=2, seq=3, writer_pid=4, heartbeat_ns=5,
    state=6, error_code=7, mode=8, session_id=9, block_size=10,
    block_count=11, total_bytes=12, blocks_done=13, bytes_done=14,
    packets=15, start_ns=16, end_ns=17, rate_bps=18, avg_rate_bps=19,
    passes_seen=20, first_pass_missing=21, worker_count=22, flags=23,
    digest=24, fec_recovered=28, nacks_sent=29,
    resumed_blocks=30, drops=32, name=48, group=56, target=64, message=96,
    workers=128, worker_latency=384, worker_batch_sum=480,
    # layout 2: one 16-word region per subsystem, per-worker extension
    trust=512, storage=528, repair=544, stream=560, sparse=576, diag=592,
    http=608,
    worker_ext=768,
    # sparse region
    skipped_bytes=576, skipped_blocks=577, zero_method=578,
    # repair region: role (0 receiver, 1 sender); a sender's page
    role=544, sender_phase=545, receivers_known=546, receiving=547,
    finished=548, failed=549, vanished=550, repair_rounds=551,
    repair_packets=552, repair_bytes=553, nacks=554, parity_requests=555,
    reports=556, confirms=557, ignored=558, bytes_sent=559,
)
SENDER_FIELDS = ["receivers_known", "receiving", "finished", "failed",
                 "vanished", "repair_rounds", "repair_packets", "repair_bytes",
                 "nacks", "parity_requests", "reports", "confirms", "ignored",
                 "bytes_sent"]
PHASES = ["waiting", "pass", "repair", "linger", "done"]
WORKER_WORDS = 8
LATENCY_WORDS = 3
MAX_WORKERS = 32
FLAG_DIGEST = 2
# With FLAG_DIGEST: the digest is a signed image's root (BLAKE3 of its chunk
# hashes), not a SHA-256.
FLAG_ROOT = 4

STATES = ["INITIALIZED", "IN_PROGRESS", "SUCCESS", "FAILURE"]
MODES = ["unknown", "socket", "xdp-native", "xdp-generic"]
ERRORS = [
    "none", "cancelled", "timeout", "target_io", "target_too_small",
    "disk_full", "digest_mismatch", "sender_gone", "protocol_error",
    "incomplete", "steering_failed", "network", "invalid_argument",
    "internal", "closed", None, None, "too_slow", "output_closed",
]
DROPS = [
    "truncated", "bad_magic", "bad_version", "bad_kind", "foreign_session",
    "length_mismatch", "oversize", "out_of_range", "inconsistent", "not_udp",
    "duplicate", "bad_control", "unauthenticated", "bad_chunk",
    "foreign_source",
]
# Signed sessions: words of the trust region after its first (owner) word.
TRUST_FIELDS = ["flags", "chunk_count", "chunks_verified", "rejected_blocks",
                "pages", "issued_at"]
WORKER_FIELDS = ["queue", "cpu", "packets", "bytes", "blocks", "drops",
                 "batches", "ring_drops"]
LATENCY_FIELDS = ["batch_p50_ns", "batch_p99_ns", "batch_p999_ns"]
WORKER_EXT_WORDS = 8
# Extension slot words 0-3: the AF_XDP socket's kernel XDP_STATISTICS;
# word 4: socket path messages of several GRO-coalesced datagrams.
WORKER_EXT_FIELDS = ["rx_dropped", "rx_invalid_descs", "rx_ring_full",
                     "fill_ring_empty", "gro_messages"]
# Storage region (word 528 + i): the staging writer.
STORAGE_FIELDS = ["buffer_bytes", "buffer_used", "buffer_peak",
                  "bytes_stored", "chunks_full", "chunks_partial",
                  "overflow_blocks", "write_max_ns", "direct",
                  "handed_off", "lane_full", "bytes_read_back",
                  "blocks_refused", "chunks_checked"]
STREAM_FIELDS = ["window", "held", "written", "refused"]
# HTTP region (word 608 + i): bytes by multicast and by HTTP (docs/http.md).
HTTP_FIELDS = ["state", "multicast_bytes", "http_bytes", "requests",
               "bad_chunks", "bad_replies", "refused", "busy"]
ZERO_METHODS = ["none", "punch_hole", "zero_range", "blkzeroout", "written"]
STALE_AFTER_NS = 5 * 10**9
START_SLACK_NS = 2 * 10**9
U64_MAX = 2**64 - 1
SEQ_OFF = 8 * W["seq"]


class NotAPage(Exception):
    pass


def printable(text):
    """text with its control characters (U+0000-U+001F, U+007F-U+009F)
    escaped, for a terminal: a page or file name may be another user's."""
    return "".join("\\x%02x" % ord(c) if ord(c) < 0x20 or 0x7f <= ord(c) <= 0x9f
                   else c for c in text)


def pread_exact(fd, n, offset):
    b = os.pread(fd, n, offset)
    if len(b) != n:
        raise NotAPage("not a status page: truncated (%d of %d bytes at %d)"
                       % (len(b), n, offset))
    return b


def read_words(fd, timeout=0.5):
    """A consistent private copy of the page as WORDS ints (seqlock reader)."""
    deadline = time.monotonic() + timeout
    tries = 0
    while True:
        if os.fstat(fd).st_size < PAGE_SIZE:
            raise NotAPage("not a status page: %d bytes" % os.fstat(fd).st_size)
        (s1,) = struct.unpack("<Q", pread_exact(fd, 8, SEQ_OFF))
        raw = pread_exact(fd, PAGE_SIZE, 0)
        (s2,) = struct.unpack("<Q", pread_exact(fd, 8, SEQ_OFF))
        if s1 % 2 == 0 and s1 == s2:
            return struct.unpack("<%dQ" % WORDS, raw)
        tries += 1
        if tries > 64:
            time.sleep(0.001)
        if time.monotonic() > deadline:
            words = struct.unpack("<%dQ" % WORDS, raw)
            pid = words[W["writer_pid"]]
            if pid == 0 or pid > 2**32 - 1 or not os.path.exists("/proc/%d" % pid):
                return words  # the writer died mid-update: stale page
            raise TimeoutError("writer pid %d is stuck mid-update"
                               % words[W["writer_pid"]])


def text(words, first, nbytes):
    b = struct.pack("<%dQ" % (nbytes // 8), *words[first:first + nbytes // 8])
    return b.split(b"\0", 1)[0].decode("utf-8", "replace")


def process_start_ns(pid):
    """When process pid started (wall clock, ns), or None: btime of
    /proc/stat plus field 22 of /proc/PID/stat in clock ticks."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
        ticks = int(stat[stat.rindex(")") + 1:].split()[22 - 3])
        with open("/proc/stat") as f:
            btime = next(int(l.split()[1]) for l in f if l.startswith("btime "))
        return btime * 10**9 + ticks * (10**9 // os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def writer_alive(pid, heartbeat_ns):
    """Process pid exists and did not start after the page's last heartbeat
    (2 s of slack): else it reuses the pid of a writer that died."""
    if pid == 0 or pid > 2**32 - 1 or not os.path.exists("/proc/%d" % pid):
        return False
    start = process_start_ns(pid)
    if heartbeat_ns == 0 or start is None:
        return True
    return start <= heartbeat_ns + START_SLACK_NS


def stale(w):
    """Not final, and the writer is gone or silent (docs/status-page.md)."""
    if STATES[w[W["state"]]] in ("SUCCESS", "FAILURE"):
        return False
    if not writer_alive(w[W["writer_pid"]], w[W["heartbeat_ns"]]):
        return True
    return time.time_ns() - w[W["heartbeat_ns"]] > STALE_AFTER_NS


def decode(w, owner_uid):
    if w[W["magic"]] != MAGIC:
        raise NotAPage("not a status page: bad magic")
    if w[W["version"]] != LAYOUT_VERSION:
        raise NotAPage("not a status page: layout version %d" % w[W["version"]])
    if w[W["page_size"]] != PAGE_SIZE:
        raise NotAPage("not a status page: page size %d" % w[W["page_size"]])
    if w[W["state"]] >= len(STATES):
        raise NotAPage("not a status page: unknown state")
    digest = struct.pack("<4Q", *w[W["digest"]:W["digest"] + 4]).hex()
    nworkers = min(w[W["worker_count"]], MAX_WORKERS)
    workers = []
    for i in range(nworkers):
        base = W["workers"] + i * WORKER_WORDS
        wk = dict(zip(WORKER_FIELDS, w[base:base + WORKER_WORDS]))
        lat = W["worker_latency"] + i * LATENCY_WORDS
        wk.update(zip(LATENCY_FIELDS, w[lat:lat + LATENCY_WORDS]))
        wk["batch_sum_ns"] = w[W["worker_batch_sum"] + i]
        ext = W["worker_ext"] + i * WORKER_EXT_WORDS
        wk.update(zip(WORKER_EXT_FIELDS, w[ext:ext + len(WORKER_EXT_FIELDS)]))
        if wk["cpu"] == U64_MAX:
            wk["cpu"] = None
        workers.append(wk)
    err = w[W["error_code"]]
    known = err < len(ERRORS) and ERRORS[err] is not None
    mode = w[W["mode"]]
    keys = ["session_id", "writer_pid", "heartbeat_ns", "block_size",
            "block_count", "total_bytes", "blocks_done", "bytes_done",
            "packets", "start_ns", "end_ns", "rate_bps", "avg_rate_bps",
            "passes_seen", "first_pass_missing", "fec_recovered", "nacks_sent",
            "resumed_blocks", "skipped_bytes", "skipped_blocks"]
    out = {
        "name": text(w, W["name"], 64),
        "group": text(w, W["group"], 64),
        "target": text(w, W["target"], 256),
        "state": STATES[w[W["state"]]],
        # A code this reader does not know reads as 13 internal, as in xdpcast.
        "error_code": err if known else 13,
        "error": ERRORS[err] if known else "internal",
        "mode": MODES[mode] if mode < len(MODES) else "unknown",
        "stale": stale(w),
        "owner_uid": owner_uid,
        # Neither root nor this user wrote the page: it may be forged.
        "foreign_owner": owner_uid not in (0, os.geteuid()),
    }
    out.update((k, w[W[k]]) for k in keys)
    zm = w[W["zero_method"]]
    out["zero_method"] = ZERO_METHODS[zm] if zm < len(ZERO_METHODS) else "none"
    flags = w[W["flags"]]
    has_digest = flags & FLAG_DIGEST
    out["sha256"] = digest if has_digest and not flags & FLAG_ROOT else None
    out["root"] = digest if has_digest and flags & FLAG_ROOT else None
    out["message"] = text(w, W["message"], 256)
    # Keys in alphabetical order, as xdpcast prints them.
    out["drops"] = dict(sorted((n, w[W["drops"] + i]) for i, n in enumerate(DROPS)))
    out["workers"] = workers
    out["unserved_frames"] = w[W["diag"]]
    out["unserved_queues"] = [q for q in range(64) if w[W["diag"] + 1] >> q & 1]
    out["last_block_ns"] = w[W["diag"] + 2]
    t = W["trust"] + 1
    trust = dict(zip(TRUST_FIELDS, w[t:t + len(TRUST_FIELDS)]))
    s = t + len(TRUST_FIELDS)
    trust["signer"] = struct.pack("<4Q", *w[s:s + 4]).hex()
    out["trust"] = trust
    st = W["storage"]
    storage = dict(zip(STORAGE_FIELDS, w[st:st + len(STORAGE_FIELDS)]))
    storage["direct"] = storage["direct"] != 0
    out["storage"] = storage
    sm = W["stream"]
    out["stream"] = dict(zip(STREAM_FIELDS, w[sm:sm + len(STREAM_FIELDS)]))
    hp = W["http"]
    out["http"] = dict(zip(HTTP_FIELDS, w[hp:hp + len(HTTP_FIELDS)]))
    out["role"] = "sender" if w[W["role"]] == 1 else "receiver"
    out["sender"] = None
    if w[W["role"]] == 1:
        ph = w[W["sender_phase"]]
        sender = {"phase": PHASES[ph] if ph < len(PHASES) else "waiting"}
        sender.update((k, w[W[k]]) for k in SENDER_FIELDS)
        out["sender"] = sender
    return out


def read_page(path):
    # Not through a symbolic link; the owner is the file's, which the
    # writer cannot choose.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        owner = os.fstat(fd).st_uid
        return decode(read_words(fd), owner)
    finally:
        os.close(fd)


def main(argv):
    directory = os.environ.get("XDPCAST_STATUS_DIR", "/run/xdpcast")
    if argv[:1] == ["--path"]:
        paths = argv[1:]
    elif argv:
        paths = [os.path.join(directory, PREFIX + n) for n in argv]
    else:
        paths = sorted(os.path.join(directory, f) for f in os.listdir(directory)
                       if f.startswith(PREFIX))
    status = 0
    for p in paths:
        try:
            # json escapes every control character but DEL.
            line = json.dumps(read_page(p), separators=(",", ":"))
            print(line.replace("\x7f", "\\u007f"))
        except (OSError, ValueError, NotAPage, TimeoutError) as e:
            print(printable("%s: %s" % (p, e)), file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
