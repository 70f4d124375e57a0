/*
 * status_dump.c - reads a status page with xdpcast_status.h and prints its
 * fields as key=value lines. tests/api.rs compares them with the Rust
 * reader's view of the same page.
 *
 *   status_dump PAGE_FILE
 */
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "xdpcast_status.h"

static void text(const char *key, const uint64_t *w, unsigned first, unsigned len)
{
    char buf[XDPCAST_TEXT_LEN + 1];
    memcpy(buf, &w[first], len);
    buf[len] = 0;
    printf("%s=%s\n", key, buf);
}

int main(int argc, char **argv)
{
    static uint64_t w[XDPCAST_STATUS_WORDS];
    unsigned i;
    int fd, rc;

    if (argc != 2) {
        fprintf(stderr, "usage: %s PAGE_FILE\n", argv[0]);
        return 2;
    }
    fd = open(argv[1], O_RDONLY | O_NOFOLLOW);
    if (fd < 0) {
        perror(argv[1]);
        return 1;
    }
    /* A private copy with pread: safe whoever owns the page. */
    rc = xdpcast_status_read_fd(fd, w, 0);
    if (rc != XDPCAST_READ_OK) {
        fprintf(stderr, "xdpcast_status_read_fd: %d\n", rc);
        return 1;
    }
    {
        struct stat st;
        if (fstat(fd, &st) != 0) {
            perror("fstat");
            return 1;
        }
        printf("owner_uid=%u\n", (unsigned)st.st_uid);
        printf("foreign_owner=%d\n", xdpcast_status_owner_trusted(fd) == 0);
    }
#define FIELD(key, idx) printf("%s=%" PRIu64 "\n", key, w[idx])
    FIELD("writer_pid", XDPCAST_W_WRITER_PID);
    FIELD("heartbeat_ns", XDPCAST_W_HEARTBEAT_NS);
    printf("state=%s\n", xdpcast_state_name(w[XDPCAST_W_STATE]));
    FIELD("error_code", XDPCAST_W_ERROR_CODE);
    printf("error=%s\n", xdpcast_error_name((uint32_t)w[XDPCAST_W_ERROR_CODE]));
    FIELD("mode", XDPCAST_W_MODE);
    FIELD("session_id", XDPCAST_W_SESSION_ID);
    FIELD("block_size", XDPCAST_W_BLOCK_SIZE);
    FIELD("block_count", XDPCAST_W_BLOCK_COUNT);
    FIELD("total_bytes", XDPCAST_W_TOTAL_BYTES);
    FIELD("blocks_done", XDPCAST_W_BLOCKS_DONE);
    FIELD("bytes_done", XDPCAST_W_BYTES_DONE);
    FIELD("packets", XDPCAST_W_PACKETS);
    FIELD("start_ns", XDPCAST_W_START_NS);
    FIELD("end_ns", XDPCAST_W_END_NS);
    FIELD("rate_bps", XDPCAST_W_RATE_BPS);
    FIELD("avg_rate_bps", XDPCAST_W_AVG_RATE_BPS);
    FIELD("passes_seen", XDPCAST_W_PASSES_SEEN);
    FIELD("first_pass_missing", XDPCAST_W_FIRST_PASS_MISSING);
    FIELD("fec_recovered", XDPCAST_W_FEC_RECOVERED);
    FIELD("nacks_sent", XDPCAST_W_NACKS_SENT);
    FIELD("resumed_blocks", XDPCAST_W_RESUMED_BLOCKS);
    FIELD("skipped_bytes", XDPCAST_W_SKIPPED_BYTES);
    FIELD("skipped_blocks", XDPCAST_W_SKIPPED_BLOCKS);
    FIELD("zero_method", XDPCAST_W_ZERO_METHOD);
    FIELD("worker_count", XDPCAST_W_WORKER_COUNT);
    FIELD("flags", XDPCAST_W_FLAGS);
    printf("sha256=");
    for (i = 0; i < 32; i++)
        printf("%02x", ((const unsigned char *)&w[XDPCAST_W_DIGEST])[i]);
    printf("\n");
    for (i = 0; i < XDPCAST_DROP_COUNT; i++)
        printf("drop_%s=%" PRIu64 "\n", xdpcast_drop_name(i), w[XDPCAST_W_DROPS + i]);
    for (i = 0; i < w[XDPCAST_W_WORKER_COUNT] && i < XDPCAST_MAX_WORKERS; i++) {
        const uint64_t *wk = &w[XDPCAST_W_WORKERS + i * XDPCAST_WORKER_WORDS];
        printf("worker%u=%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%" PRIu64 "\n", i,
               wk[XDPCAST_WK_QUEUE], wk[XDPCAST_WK_PACKETS], wk[XDPCAST_WK_BYTES],
               wk[XDPCAST_WK_RING_DROPS]);
    }
    text("name", w, XDPCAST_W_NAME, XDPCAST_NAME_LEN);
    text("group", w, XDPCAST_W_GROUP, XDPCAST_NAME_LEN);
    text("target", w, XDPCAST_W_TARGET, XDPCAST_TEXT_LEN);
    text("message", w, XDPCAST_W_MESSAGE, XDPCAST_TEXT_LEN);
    return 0;
}
