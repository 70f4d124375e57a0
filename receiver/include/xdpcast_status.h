/*
 * xdpcast_status.h - the xdpcast status page, layout version 2
 * (XDPCAST_STATUS_LAYOUT_VERSION).
 *
 * A receiver (or `xdpcast send`) publishes each session in an 8192-byte
 * file $XDPCAST_STATUS_DIR/xdpcast.<name> (default
 * /run/xdpcast/xdpcast.<name>), mode 0644, in a directory only the writer's
 * user can write. The page is 1024 little-endian uint64_t words; XDPCAST_W_*
 * are word indices (byte offset = 8 * index). docs/status-page.md describes
 * every field.
 *
 * Reading safely: open the file with O_RDONLY | O_NOFOLLOW and copy it with
 * xdpcast_status_read_fd(), which reads a private copy with pread(2),
 * follows the writer's sequence lock, never blocks the writer and gives up
 * after a timeout. Check the owner with xdpcast_status_owner_trusted(): a
 * page of neither root nor your own user may have been written by anyone,
 * and may be hostile. Do not mmap(2) such a page: its owner can truncate
 * the file under your mapping, and touching the mapping then kills your
 * process with SIGBUS. xdpcast_status_read() (on a mapping) is only for
 * pages whose owner you trust.
 *
 * Only the header's own types, <stdint.h>, <time.h> and POSIX
 * <sys/stat.h> and <unistd.h> are needed (POSIX.1-2008: compile with
 * _POSIX_C_SOURCE=200809L or _DEFAULT_SOURCE); no library.
 */
#ifndef XDPCAST_STATUS_H
#define XDPCAST_STATUS_H

#include <stdint.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifdef __cplusplus
extern "C" {
#endif

/* "XDPCSTAT" read as a little-endian uint64_t. */
#define XDPCAST_STATUS_MAGIC 0x5441545343504458ULL
#define XDPCAST_STATUS_LAYOUT_VERSION 2u
#define XDPCAST_STATUS_PAGE_SIZE 8192u
#define XDPCAST_STATUS_WORDS 1024u
#define XDPCAST_STATUS_FILE_PREFIX "xdpcast."
#define XDPCAST_STATUS_DEFAULT_DIR "/run/xdpcast"

/* Word indices. */
#define XDPCAST_W_MAGIC 0
#define XDPCAST_W_VERSION 1
#define XDPCAST_W_PAGE_SIZE 2
#define XDPCAST_W_SEQ 3
#define XDPCAST_W_WRITER_PID 4
#define XDPCAST_W_HEARTBEAT_NS 5
#define XDPCAST_W_STATE 6
#define XDPCAST_W_ERROR_CODE 7
#define XDPCAST_W_MODE 8
#define XDPCAST_W_SESSION_ID 9
#define XDPCAST_W_BLOCK_SIZE 10
#define XDPCAST_W_BLOCK_COUNT 11
#define XDPCAST_W_TOTAL_BYTES 12
#define XDPCAST_W_BLOCKS_DONE 13
#define XDPCAST_W_BYTES_DONE 14
#define XDPCAST_W_PACKETS 15
#define XDPCAST_W_START_NS 16
#define XDPCAST_W_END_NS 17
#define XDPCAST_W_RATE_BPS 18
#define XDPCAST_W_AVG_RATE_BPS 19
#define XDPCAST_W_PASSES_SEEN 20
#define XDPCAST_W_FIRST_PASS_MISSING 21
#define XDPCAST_W_WORKER_COUNT 22
#define XDPCAST_W_FLAGS 23
#define XDPCAST_W_DIGEST 24   /* 4 words: 32 bytes of SHA-256 */
#define XDPCAST_W_FEC_RECOVERED 28
#define XDPCAST_W_NACKS_SENT 29
#define XDPCAST_W_RESUMED_BLOCKS 30
/* word 31 is reserved (zero) */
#define XDPCAST_W_DROPS 32    /* 16 words, indexed by XDPCAST_DROP_*; 15 is reserved */
#define XDPCAST_W_NAME 48     /* 8 words: NUL-padded text, 64 bytes */
#define XDPCAST_W_GROUP 56    /* 8 words: NUL-padded text, 64 bytes */
#define XDPCAST_W_TARGET 64   /* 32 words: NUL-padded text, 256 bytes */
#define XDPCAST_W_MESSAGE 96  /* 32 words: NUL-padded text, 256 bytes */
#define XDPCAST_W_WORKERS 128 /* 32 slots of XDPCAST_WORKER_WORDS words */
#define XDPCAST_WORKER_WORDS 8
#define XDPCAST_W_WORKER_LATENCY 384 /* 32 slots of XDPCAST_LATENCY_WORDS words */
#define XDPCAST_LATENCY_WORDS 3
#define XDPCAST_W_WORKER_BATCH_SUM 480 /* 32 words: worker i's sum of batch wall times, ns */
/* Layout 2: one 16-word region per subsystem, and a per-worker extension. */
#define XDPCAST_W_TRUST 512   /* page owner, manifest, authentication */
#define XDPCAST_W_OWNER_UID 512 /* the writer's euid (the file's owner counts) */
#define XDPCAST_W_STORAGE 528 /* storage writer and buffer */
#define XDPCAST_W_REPAIR 544  /* role; a sender's receivers and repairs */
#define XDPCAST_W_ROLE 544    /* XDPCAST_ROLE_*: who writes the page */
/* A sender's page (role XDPCAST_ROLE_SENDER), words 545-559. */
#define XDPCAST_W_SENDER_PHASE 545           /* XDPCAST_PHASE_* */
#define XDPCAST_W_SENDER_RECEIVERS_KNOWN 546 /* receivers that ever reported */
#define XDPCAST_W_SENDER_RECEIVING 547
#define XDPCAST_W_SENDER_FINISHED 548
#define XDPCAST_W_SENDER_FAILED 549
#define XDPCAST_W_SENDER_VANISHED 550
#define XDPCAST_W_SENDER_REPAIR_ROUNDS 551
#define XDPCAST_W_SENDER_REPAIR_PACKETS 552
#define XDPCAST_W_SENDER_REPAIR_BYTES 553
#define XDPCAST_W_SENDER_NACKS 554           /* block-range NACK packets received */
#define XDPCAST_W_SENDER_PARITY_REQUESTS 555 /* parity request packets received */
#define XDPCAST_W_SENDER_REPORTS 556
#define XDPCAST_W_SENDER_CONFIRMS 557
#define XDPCAST_W_SENDER_IGNORED 558
#define XDPCAST_W_SENDER_BYTES_SENT 559
#define XDPCAST_W_STREAM 560  /* output stream */
#define XDPCAST_W_SPARSE 576  /* sparse images */
#define XDPCAST_W_SKIPPED_BYTES 576  /* bytes of the sender's zero runs made zeros, never sent */
#define XDPCAST_W_SKIPPED_BLOCKS 577 /* blocks of those runs */
#define XDPCAST_W_ZERO_METHOD 578    /* how: XDPCAST_ZERO_* */
#define XDPCAST_W_DIAG 592    /* data-path diagnostics */
#define XDPCAST_W_HTTP 608    /* bytes by multicast and by HTTP; the HTTP source (docs/http.md) */
#define XDPCAST_REGION_WORDS 16
#define XDPCAST_W_WORKER_EXT 768 /* 32 slots of XDPCAST_WORKER_EXT_WORDS words */
#define XDPCAST_WORKER_EXT_WORDS 8
#define XDPCAST_MAX_WORKERS 32
#define XDPCAST_DROP_SLOTS 16
#define XDPCAST_NAME_LEN 64
#define XDPCAST_TEXT_LEN 256

/* Values of the role word. */
#define XDPCAST_ROLE_RECEIVER 0
#define XDPCAST_ROLE_SENDER 1
/* Values of a sender's phase word. */
#define XDPCAST_PHASE_WAITING 0
#define XDPCAST_PHASE_PASS 1
#define XDPCAST_PHASE_REPAIR 2
#define XDPCAST_PHASE_LINGER 3
#define XDPCAST_PHASE_DONE 4

/* Values of the zero_method word: how the receiver made zero runs read as zeros. */
#define XDPCAST_ZERO_NONE 0       /* nothing zeroed yet */
#define XDPCAST_ZERO_PUNCH_HOLE 1 /* fallocate(FALLOC_FL_PUNCH_HOLE) on a file */
#define XDPCAST_ZERO_RANGE 2      /* fallocate(FALLOC_FL_ZERO_RANGE) on a file */
#define XDPCAST_ZERO_BLKZEROOUT 3 /* ioctl(BLKZEROOUT) on a block device */
#define XDPCAST_ZERO_WRITTEN 4    /* zeros written like data */

/* Word index i as a byte offset. */
#define XDPCAST_BYTE_OFFSET(i) ((i) * 8u)

/* Words of one worker slot, relative to its first word. */
#define XDPCAST_WK_QUEUE 0
#define XDPCAST_WK_CPU 1 /* UINT64_MAX: not pinned */
#define XDPCAST_WK_PACKETS 2
#define XDPCAST_WK_BYTES 3
#define XDPCAST_WK_BLOCKS 4
#define XDPCAST_WK_DROPS 5
#define XDPCAST_WK_BATCHES 6
#define XDPCAST_WK_RING_DROPS 7

/* Words of one worker extension slot, relative to
 * XDPCAST_W_WORKER_EXT + i * XDPCAST_WORKER_EXT_WORDS: the kernel's
 * XDP_STATISTICS of the worker's AF_XDP socket (zero on the socket path). */
#define XDPCAST_WX_RX_DROPPED 0
#define XDPCAST_WX_RX_INVALID_DESCS 1
#define XDPCAST_WX_RX_RING_FULL 2
#define XDPCAST_WX_FILL_RING_EMPTY 3
/* Socket path: messages of several datagrams coalesced by GRO (UDP_GRO). */
#define XDPCAST_WX_GRO_MESSAGES 4

/* Words of the storage region, relative to XDPCAST_W_STORAGE. */
#define XDPCAST_ST_BUFFER_BYTES 0
#define XDPCAST_ST_BUFFER_USED 1
#define XDPCAST_ST_BUFFER_PEAK 2
#define XDPCAST_ST_BYTES_STORED 3
#define XDPCAST_ST_CHUNKS_FULL 4
#define XDPCAST_ST_CHUNKS_PARTIAL 5
#define XDPCAST_ST_OVERFLOW_BLOCKS 6
#define XDPCAST_ST_WRITE_MAX_NS 7
#define XDPCAST_ST_DIRECT 8
#define XDPCAST_ST_HANDED_OFF 9 /* blocks AF_XDP workers handed to their copiers */
#define XDPCAST_ST_LANE_FULL 10 /* blocks a worker copied itself: its lane was full */
#define XDPCAST_ST_BYTES_READ_BACK 11 /* bytes read from the target to check signed chunks */
#define XDPCAST_ST_BLOCKS_REFUSED 12  /* signed blocks refused: no free buffer for their chunk */
#define XDPCAST_ST_CHUNKS_CHECKED 13  /* signed chunks hashed and compared by the writer */

/* Words of the stream region, relative to XDPCAST_W_STREAM (an image
 * written to a pipe: --out -, udp-receiver; zero otherwise). */
#define XDPCAST_SM_WINDOW 0  /* capacity of the reorder window, bytes */
#define XDPCAST_SM_HELD 1    /* bytes held in the window now */
#define XDPCAST_SM_WRITTEN 2 /* bytes written to the pipe */
#define XDPCAST_SM_REFUSED 3 /* blocks refused: they did not fit the window */

/* Words of one latency slot (batch wall time in ns, 0 before the first
 * batch), relative to XDPCAST_W_WORKER_LATENCY + i * XDPCAST_LATENCY_WORDS. */
#define XDPCAST_LAT_P50 0
#define XDPCAST_LAT_P99 1
#define XDPCAST_LAT_P999 2

/* Words of the diag region, relative to XDPCAST_W_DIAG. */
#define XDPCAST_DIAG_UNSERVED_FRAMES 0 /* session frames on RX queues without an AF_XDP socket */
#define XDPCAST_DIAG_UNSERVED_QUEUES 1 /* bit q: RX queue q (0..63) had such frames */
#define XDPCAST_DIAG_LAST_BLOCK_NS 2   /* when a worker last took a new block, ns since the epoch */

/* Words of the http region, relative to XDPCAST_W_HTTP. */
#define XDPCAST_HTTP_STATE 0           /* 0 no --http, 1 standing by, 2 fetching, 3 given up */
#define XDPCAST_HTTP_MULTICAST_BYTES 1 /* image bytes the data path brought */
#define XDPCAST_HTTP_BYTES 2           /* image bytes taken from web servers */
#define XDPCAST_HTTP_REQUESTS 3        /* requests sent */
#define XDPCAST_HTTP_BAD_CHUNKS 4      /* chunks from a web server that failed their signed hash */
#define XDPCAST_HTTP_BAD_REPLIES 5     /* whole body, wrong Content-Range, length, deadline */
#define XDPCAST_HTTP_REFUSED 6         /* refusals, connection failures */
#define XDPCAST_HTTP_BUSY 7            /* 429 and 503 replies */

/* XDPCAST_W_FLAGS bits. */
#define XDPCAST_FLAG_GEOMETRY 1ULL
#define XDPCAST_FLAG_DIGEST 2ULL
#define XDPCAST_FLAG_ROOT 4ULL /* with FLAG_DIGEST: the digest is the signed image root (BLAKE3 of the chunk hashes), not SHA-256 */

/* Signed sessions: words of the trust region (XDPCAST_W_TRUST + n). */
#define XDPCAST_TR_FLAGS 1           /* XDPCAST_TRUST_* bits */
#define XDPCAST_TR_CHUNK_COUNT 2     /* chunks in the verified manifest */
#define XDPCAST_TR_CHUNKS_VERIFIED 3 /* chunks whose hash verified */
#define XDPCAST_TR_REJECTED_BLOCKS 4 /* blocks discarded with a failed chunk */
#define XDPCAST_TR_PAGES 5           /* pages of chunk hashes verified */
#define XDPCAST_TR_ISSUED_AT 6       /* manifest signing time, Unix seconds */
#define XDPCAST_TR_SIGNER 7          /* 4 words: the signer's Ed25519 public key */
#define XDPCAST_TRUST_REQUIRED 1ULL     /* receive --trust */
#define XDPCAST_TRUST_MANIFEST 2ULL     /* a manifest verified */
#define XDPCAST_TRUST_NO_READ_BACK 4ULL /* SUCCESS from the last chunk, no read-back */

/* XDPCAST_W_STATE values. */
enum xdpcast_state {
    XDPCAST_STATE_INITIALIZED = 0,
    XDPCAST_STATE_IN_PROGRESS = 1,
    XDPCAST_STATE_SUCCESS = 2,
    XDPCAST_STATE_FAILURE = 3,
};

/* XDPCAST_W_MODE values. */
enum xdpcast_path_mode {
    XDPCAST_PATH_UNKNOWN = 0,
    XDPCAST_PATH_SOCKET = 1,
    XDPCAST_PATH_XDP_NATIVE = 2,
    XDPCAST_PATH_XDP_GENERIC = 3,
};

/* Error codes: XDPCAST_W_ERROR_CODE, C ABI return values, and (plus 100)
 * the exit status of `xdpcast receive`. Stable; new codes are appended. */
enum xdpcast_error {
    XDPCAST_OK = 0,
    XDPCAST_ERR_CANCELLED = 1,
    XDPCAST_ERR_TIMEOUT = 2,
    XDPCAST_ERR_TARGET_IO = 3,
    XDPCAST_ERR_TARGET_TOO_SMALL = 4,
    XDPCAST_ERR_DISK_FULL = 5,
    XDPCAST_ERR_DIGEST_MISMATCH = 6,
    XDPCAST_ERR_SENDER_GONE = 7,
    XDPCAST_ERR_PROTOCOL_ERROR = 8,
    XDPCAST_ERR_INCOMPLETE = 9,
    XDPCAST_ERR_STEERING_FAILED = 10,
    XDPCAST_ERR_NETWORK = 11,
    XDPCAST_ERR_INVALID_ARGUMENT = 12,
    XDPCAST_ERR_INTERNAL = 13,
    XDPCAST_ERR_CLOSED = 14,
    XDPCAST_ERR_TOO_SLOW = 17,
    XDPCAST_ERR_OUTPUT_CLOSED = 18,
};

/* Drop counters: XDPCAST_W_DROPS + reason. */
enum xdpcast_drop_reason {
    XDPCAST_DROP_TRUNCATED = 0,
    XDPCAST_DROP_BAD_MAGIC = 1,
    XDPCAST_DROP_BAD_VERSION = 2,
    XDPCAST_DROP_BAD_KIND = 3,
    XDPCAST_DROP_FOREIGN_SESSION = 4,
    XDPCAST_DROP_LENGTH_MISMATCH = 5,
    XDPCAST_DROP_OVERSIZE = 6,
    XDPCAST_DROP_OUT_OF_RANGE = 7,
    XDPCAST_DROP_INCONSISTENT = 8,
    XDPCAST_DROP_NOT_UDP = 9,
    XDPCAST_DROP_DUPLICATE = 10,
    XDPCAST_DROP_BAD_CONTROL = 11,
    XDPCAST_DROP_UNAUTHENTICATED = 12,
    XDPCAST_DROP_BAD_CHUNK = 13,
    XDPCAST_DROP_FOREIGN_SOURCE = 14,
    /* Reasons in use; the page has XDPCAST_DROP_SLOTS slots. */
    XDPCAST_DROP_COUNT = 15,
};

/* Snake-case name of an error code, as in `xdpcast status --json` (tested
 * against the Rust names for every code in docs/status-page.md); "unknown"
 * for a number no code has. */
static inline const char *xdpcast_error_name(uint32_t code)
{
    switch (code) {
    case XDPCAST_OK: return "none";
    case XDPCAST_ERR_CANCELLED: return "cancelled";
    case XDPCAST_ERR_TIMEOUT: return "timeout";
    case XDPCAST_ERR_TARGET_IO: return "target_io";
    case XDPCAST_ERR_TARGET_TOO_SMALL: return "target_too_small";
    case XDPCAST_ERR_DISK_FULL: return "disk_full";
    case XDPCAST_ERR_DIGEST_MISMATCH: return "digest_mismatch";
    case XDPCAST_ERR_SENDER_GONE: return "sender_gone";
    case XDPCAST_ERR_PROTOCOL_ERROR: return "protocol_error";
    case XDPCAST_ERR_INCOMPLETE: return "incomplete";
    case XDPCAST_ERR_STEERING_FAILED: return "steering_failed";
    case XDPCAST_ERR_NETWORK: return "network";
    case XDPCAST_ERR_INVALID_ARGUMENT: return "invalid_argument";
    case XDPCAST_ERR_INTERNAL: return "internal";
    case XDPCAST_ERR_CLOSED: return "closed";
    case XDPCAST_ERR_TOO_SLOW: return "too_slow";
    case XDPCAST_ERR_OUTPUT_CLOSED: return "output_closed";
    default: return "unknown";
    }
}

/* Name of a drop reason, as the keys of `drops` in `xdpcast status --json`
 * and the `reason` label of the metrics; "unknown" past the last one. */
static inline const char *xdpcast_drop_name(uint32_t reason)
{
    switch (reason) {
    case XDPCAST_DROP_TRUNCATED: return "truncated";
    case XDPCAST_DROP_BAD_MAGIC: return "bad_magic";
    case XDPCAST_DROP_BAD_VERSION: return "bad_version";
    case XDPCAST_DROP_BAD_KIND: return "bad_kind";
    case XDPCAST_DROP_FOREIGN_SESSION: return "foreign_session";
    case XDPCAST_DROP_LENGTH_MISMATCH: return "length_mismatch";
    case XDPCAST_DROP_OVERSIZE: return "oversize";
    case XDPCAST_DROP_OUT_OF_RANGE: return "out_of_range";
    case XDPCAST_DROP_INCONSISTENT: return "inconsistent";
    case XDPCAST_DROP_NOT_UDP: return "not_udp";
    case XDPCAST_DROP_DUPLICATE: return "duplicate";
    case XDPCAST_DROP_BAD_CONTROL: return "bad_control";
    case XDPCAST_DROP_UNAUTHENTICATED: return "unauthenticated";
    case XDPCAST_DROP_BAD_CHUNK: return "bad_chunk";
    case XDPCAST_DROP_FOREIGN_SOURCE: return "foreign_source";
    default: return "unknown";
    }
}

/* Upper-case name of a state. */
static inline const char *xdpcast_state_name(uint64_t state)
{
    static const char *const names[] = {
        "INITIALIZED", "IN_PROGRESS", "SUCCESS", "FAILURE",
    };
    return state < 4 ? names[state] : "UNKNOWN";
}

/* Results of xdpcast_status_read and xdpcast_status_read_fd. */
#define XDPCAST_READ_OK 0
#define XDPCAST_READ_NOT_A_PAGE (-1) /* bad magic, version or size */
#define XDPCAST_READ_BUSY (-2)       /* still mid-update after max_tries / timeout_ms */
#define XDPCAST_READ_SHORT (-3)      /* the file is shorter than a page (truncated) */
#define XDPCAST_READ_ERRNO (-4)      /* fstat or pread failed: see errno */

/*
 * Copy a consistent snapshot of the page at `page` (a read-only mapping of
 * at least XDPCAST_STATUS_PAGE_SIZE bytes) into `out`, following the
 * sequence lock. Only for a page whose owner you trust (root's or your own):
 * if the owner truncates the file, touching the mapping raises SIGBUS. Use
 * xdpcast_status_read_fd() for any other page.
 *
 *   1. s1 = seq (acquire); if s1 is odd the writer is mid-update: retry;
 *   2. copy all XDPCAST_STATUS_WORDS words (relaxed atomic loads);
 *   3. acquire fence; if seq != s1 the copy may be torn: retry.
 *
 * Gives up with XDPCAST_READ_BUSY after `max_tries` attempts (0 means
 * 1000000, well over a second): a writer killed mid-update leaves seq odd
 * for good; the caller should then check writer_pid (out holds the last,
 * possibly torn, copy). The writer is never blocked.
 */
static inline int xdpcast_status_read(const volatile uint64_t *page,
                                      uint64_t out[XDPCAST_STATUS_WORDS],
                                      unsigned long max_tries)
{
    const uint64_t *p = (const uint64_t *)page;
    unsigned long tries;
    if (max_tries == 0)
        max_tries = 1000000;
    for (tries = 0; tries < max_tries; tries++) {
        uint64_t s1 = __atomic_load_n(&p[XDPCAST_W_SEQ], __ATOMIC_ACQUIRE);
        unsigned i;
        for (i = 0; i < XDPCAST_STATUS_WORDS; i++)
            out[i] = __atomic_load_n(&p[i], __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if ((s1 & 1) == 0 &&
            __atomic_load_n(&p[XDPCAST_W_SEQ], __ATOMIC_RELAXED) == s1) {
            if (out[XDPCAST_W_MAGIC] != XDPCAST_STATUS_MAGIC ||
                out[XDPCAST_W_VERSION] != XDPCAST_STATUS_LAYOUT_VERSION ||
                out[XDPCAST_W_PAGE_SIZE] != XDPCAST_STATUS_PAGE_SIZE)
                return XDPCAST_READ_NOT_A_PAGE;
            return XDPCAST_READ_OK;
        }
    }
    return XDPCAST_READ_BUSY;
}

/*
 * Copy a consistent snapshot of the page open on `fd` (O_RDONLY) into
 * `out` with pread(2), never through a mapping, so that a page truncated or
 * rewritten by its owner cannot harm the reader:
 *
 *   1. fstat: a file shorter than a page is XDPCAST_READ_SHORT;
 *   2. s1 = seq (pread of word 3); full fence;
 *   3. pread all XDPCAST_STATUS_PAGE_SIZE bytes (a short read is
 *      XDPCAST_READ_SHORT: the file was truncated meanwhile); full fence;
 *   4. s2 = seq again; if s1 is odd or s2 != s1, retry (after 64 tries,
 *      sleeping 1 ms between tries);
 *   5. check magic, version and page_size (XDPCAST_READ_NOT_A_PAGE).
 *
 * Gives up with XDPCAST_READ_BUSY after `timeout_ms` milliseconds (0
 * means 500, what the xdpcast tools wait): a writer killed mid-update, or a
 * hostile one, leaves seq odd for good; `out` then holds the last, possibly
 * torn, copy (check writer_pid). The fences order the kernel's copies as
 * the atomic loads of xdpcast_status_read() are ordered.
 */
static inline int xdpcast_status_read_fd(int fd, uint64_t out[XDPCAST_STATUS_WORDS],
                                         unsigned timeout_ms)
{
    struct timespec start, now, nap = {0, 1000000};
    unsigned long tries;
    if (timeout_ms == 0)
        timeout_ms = 500;
    if (clock_gettime(CLOCK_MONOTONIC, &start) != 0)
        return XDPCAST_READ_ERRNO;
    for (tries = 0;; tries++) {
        struct stat st;
        uint64_t s1, s2;
        ssize_t n;
        if (fstat(fd, &st) != 0)
            return XDPCAST_READ_ERRNO;
        if (st.st_size < (off_t)XDPCAST_STATUS_PAGE_SIZE)
            return XDPCAST_READ_SHORT;
        n = pread(fd, &s1, sizeof s1, XDPCAST_BYTE_OFFSET(XDPCAST_W_SEQ));
        if (n != (ssize_t)sizeof s1)
            return n < 0 ? XDPCAST_READ_ERRNO : XDPCAST_READ_SHORT;
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        n = pread(fd, out, XDPCAST_STATUS_PAGE_SIZE, 0);
        if (n != (ssize_t)XDPCAST_STATUS_PAGE_SIZE)
            return n < 0 ? XDPCAST_READ_ERRNO : XDPCAST_READ_SHORT;
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        n = pread(fd, &s2, sizeof s2, XDPCAST_BYTE_OFFSET(XDPCAST_W_SEQ));
        if (n != (ssize_t)sizeof s2)
            return n < 0 ? XDPCAST_READ_ERRNO : XDPCAST_READ_SHORT;
        if ((s1 & 1) == 0 && s1 == s2) {
            if (out[XDPCAST_W_MAGIC] != XDPCAST_STATUS_MAGIC ||
                out[XDPCAST_W_VERSION] != XDPCAST_STATUS_LAYOUT_VERSION ||
                out[XDPCAST_W_PAGE_SIZE] != XDPCAST_STATUS_PAGE_SIZE)
                return XDPCAST_READ_NOT_A_PAGE;
            return XDPCAST_READ_OK;
        }
        if (clock_gettime(CLOCK_MONOTONIC, &now) != 0)
            return XDPCAST_READ_ERRNO;
        if ((now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000 >=
            (long)timeout_ms)
            return XDPCAST_READ_BUSY;
        if (tries >= 64)
            nanosleep(&nap, NULL);
    }
}

/*
 * Whether the page open on `fd` belongs to root or to this process's
 * effective user (1), or to someone else (0: flag it, any of its contents
 * may be forged), or -1 if fstat fails. The file's owner counts, not
 * XDPCAST_W_OWNER_UID, which whoever wrote the page chose.
 */
static inline int xdpcast_status_owner_trusted(int fd)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return -1;
    return st.st_uid == 0 || st.st_uid == geteuid();
}

#ifdef __cplusplus
}
#endif

#endif /* XDPCAST_STATUS_H */
