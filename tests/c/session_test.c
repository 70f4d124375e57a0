/*
 * session_test.c - exercises the C ABI (xdpcast.h) against libxdpcast.so.
 * Driven by tests/api.rs (c_abi_session_lifecycle), which runs it in a
 * network namespace and plays the sender:
 *
 *   session_test NAME_A TARGET_A GROUP_A NAME_B TARGET_B GROUP_B
 *
 * Session A: prints "A started", waits for the image, checks SUCCESS and
 * that query_status answers until close and fails with CLOSED after it.
 * Session B: prints "B started", reads a line from stdin (sent once blocks
 * arrive), cancels mid-transfer, checks FAILURE + CANCELLED, prints
 * "B cancelled" and reads another line before closing (so the driver can
 * look at the page). Prints "ALL OK" and exits 0 when every check passed.
 */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "xdpcast.h"

static int failures;

#define EXPECT_EQ(got, want)                                                   \
    do {                                                                       \
        long long g_ = (long long)(got), w_ = (long long)(want);               \
        if (g_ != w_) {                                                        \
            fprintf(stderr, "%s:%d: %s = %lld, expected %s = %lld\n",          \
                    __FILE__, __LINE__, #got, g_, #want, w_);                  \
            failures++;                                                        \
        }                                                                      \
    } while (0)

static void say(const char *line)
{
    printf("%s\n", line);
    fflush(stdout);
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static struct xdpcast_request request(const char *name, const char *target,
                                      const char *group)
{
    struct xdpcast_request r;
    memset(&r, 0, sizeof r);
    r.name = name;
    r.target = target;
    r.group = group;
    r.iface = "lo";
    r.mode = XDPCAST_MODE_SOCKET;
    r.start_timeout_ms = 30000;
    return r;
}

static void bad_arguments(void)
{
    xdpcast_handle h = 0;
    struct xdpcast_request r = request("c-bad", "/tmp/unused", "10.0.0.1:5000");
    uint32_t st = 99, err = 99;

    EXPECT_EQ(xdpcast_session_initialize(NULL, &h), XDPCAST_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(xdpcast_session_initialize(&r, NULL), XDPCAST_ERR_INVALID_ARGUMENT);
    /* Not a multicast group. */
    EXPECT_EQ(xdpcast_session_initialize(&r, &h), XDPCAST_ERR_INVALID_ARGUMENT);
    r.group = "239.1.1.1:5000";
    r.name = NULL;
    EXPECT_EQ(xdpcast_session_initialize(&r, &h), XDPCAST_ERR_INVALID_ARGUMENT);
    r.name = "c-bad";
    r.mode = 7;
    EXPECT_EQ(xdpcast_session_initialize(&r, &h), XDPCAST_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(h, 0);
    /* Handles never issued. */
    EXPECT_EQ(xdpcast_session_start(0), XDPCAST_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(xdpcast_session_query_status(987654321, &st, &err),
              XDPCAST_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(st, 99);
}

static void session_a(const char *name, const char *target, const char *group)
{
    struct xdpcast_request r = request(name, target, group);
    xdpcast_handle h = 0;
    uint32_t st = 99, err = 99;

    EXPECT_EQ(xdpcast_session_initialize(&r, &h), XDPCAST_OK);
    EXPECT_EQ(h != 0, 1);
    EXPECT_EQ(xdpcast_session_query_status(h, &st, &err), XDPCAST_OK);
    EXPECT_EQ(st, XDPCAST_STATE_INITIALIZED);
    EXPECT_EQ(xdpcast_session_start(h), XDPCAST_OK);
    EXPECT_EQ(xdpcast_session_start(h), XDPCAST_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(xdpcast_session_query_status(h, &st, &err), XDPCAST_OK);
    EXPECT_EQ(st, XDPCAST_STATE_IN_PROGRESS);
    say("A started");

    EXPECT_EQ(xdpcast_session_wait(h, XDPCAST_WAIT_FOREVER, &st, &err), XDPCAST_OK);
    EXPECT_EQ(st, XDPCAST_STATE_SUCCESS);
    EXPECT_EQ(err, XDPCAST_OK);
    /* QueryStatus keeps answering after completion, until close. */
    sleep_ms(300);
    st = err = 99;
    EXPECT_EQ(xdpcast_session_query_status(h, &st, &err), XDPCAST_OK);
    EXPECT_EQ(st, XDPCAST_STATE_SUCCESS);
    EXPECT_EQ(err, XDPCAST_OK);
    EXPECT_EQ(xdpcast_session_query_status(h, NULL, NULL), XDPCAST_OK);
    EXPECT_EQ(xdpcast_session_wait(h, 0, &st, NULL), XDPCAST_OK);
    EXPECT_EQ(st, XDPCAST_STATE_SUCCESS);

    EXPECT_EQ(xdpcast_session_close(h), XDPCAST_OK);
    st = err = 99;
    EXPECT_EQ(xdpcast_session_query_status(h, &st, &err), XDPCAST_ERR_CLOSED);
    EXPECT_EQ(st, 99);
    EXPECT_EQ(xdpcast_session_wait(h, 10, &st, &err), XDPCAST_ERR_CLOSED);
    EXPECT_EQ(xdpcast_session_cancel(h), XDPCAST_ERR_CLOSED);
    EXPECT_EQ(xdpcast_session_start(h), XDPCAST_ERR_CLOSED);
    EXPECT_EQ(xdpcast_session_close(h), XDPCAST_ERR_CLOSED);
    say("A done");
}

static void session_b(const char *name, const char *target, const char *group)
{
    struct xdpcast_request r = request(name, target, group);
    xdpcast_handle h = 0;
    uint32_t st = 99, err = 99;
    char line[64];

    EXPECT_EQ(xdpcast_session_initialize(&r, &h), XDPCAST_OK);
    EXPECT_EQ(xdpcast_session_start(h), XDPCAST_OK);
    say("B started");
    if (!fgets(line, sizeof line, stdin)) {
        fprintf(stderr, "no go-ahead on stdin\n");
        failures++;
    }
    /* Mid-transfer: still running. */
    EXPECT_EQ(xdpcast_session_wait(h, 0, &st, &err), XDPCAST_ERR_TIMEOUT);
    EXPECT_EQ(st, XDPCAST_STATE_IN_PROGRESS);
    EXPECT_EQ(xdpcast_session_cancel(h), XDPCAST_OK);
    EXPECT_EQ(xdpcast_session_wait(h, 10000, &st, &err), XDPCAST_OK);
    EXPECT_EQ(st, XDPCAST_STATE_FAILURE);
    EXPECT_EQ(err, XDPCAST_ERR_CANCELLED);
    sleep_ms(300);
    st = err = 99;
    EXPECT_EQ(xdpcast_session_query_status(h, &st, &err), XDPCAST_OK);
    EXPECT_EQ(st, XDPCAST_STATE_FAILURE);
    EXPECT_EQ(err, XDPCAST_ERR_CANCELLED);
    say("B cancelled");
    /* The driver checks the page, then lets us close. */
    if (!fgets(line, sizeof line, stdin)) {
        fprintf(stderr, "no close on stdin\n");
        failures++;
    }
    EXPECT_EQ(xdpcast_session_close(h), XDPCAST_OK);
    EXPECT_EQ(xdpcast_session_query_status(h, &st, &err), XDPCAST_ERR_CLOSED);
}

int main(int argc, char **argv)
{
    if (argc != 7) {
        fprintf(stderr, "usage: %s NAME_A TARGET_A GROUP_A NAME_B TARGET_B GROUP_B\n",
                argv[0]);
        return 2;
    }
    EXPECT_EQ(strcmp(xdpcast_error_name(XDPCAST_ERR_CLOSED), "closed"), 0);
    bad_arguments();
    session_a(argv[1], argv[2], argv[3]);
    session_b(argv[4], argv[5], argv[6]);
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    say("ALL OK");
    return 0;
}
