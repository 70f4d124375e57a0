/*
 * xdpcast.h - C ABI of libxdpcast (the receiver's session API), modelled on
 * the WdsTransportClient calls: initialize, start, query status, wait,
 * cancel, close.
 *
 * Link with -lxdpcast (target/<profile>/libxdpcast.so). Every function
 * returns XDPCAST_OK (0) or an enum xdpcast_error value. A session is an
 * integer handle into a table inside the library: using a handle after
 * xdpcast_session_close() returns XDPCAST_ERR_CLOSED, a handle never issued
 * returns XDPCAST_ERR_INVALID_ARGUMENT; neither is undefined behaviour.
 * All functions are thread-safe. While a session is running its progress is
 * on its status page (xdpcast_status.h).
 */
#ifndef XDPCAST_H
#define XDPCAST_H

#include <stdint.h>

#include "xdpcast_status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Session handle; 0 is never valid. */
typedef uint64_t xdpcast_handle;

/* xdpcast_request.mode */
#define XDPCAST_MODE_AUTO 0u   /* XDP when possible, else UDP sockets */
#define XDPCAST_MODE_XDP 1u    /* XDP only */
#define XDPCAST_MODE_SOCKET 2u /* UDP sockets only */

/* xdpcast_request.flags */
#define XDPCAST_REQ_SESSION_ID 1u /* accept only session_id */

/* xdpcast_session_wait timeout: wait until the session ends. */
#define XDPCAST_WAIT_FOREVER 0xFFFFFFFFu

struct xdpcast_request {
    const char *name;   /* session name: status page xdpcast.<name>; [A-Za-z0-9._-]{1,63} */
    const char *group;  /* multicast group and port, "239.1.2.3:5000" or "[ff15::1]:5000" */
    const char *iface;  /* interface to receive on */
    const char *target; /* target file (created and sized) or block device */
    uint32_t mode;      /* XDPCAST_MODE_* */
    uint32_t flags;     /* XDPCAST_REQ_* */
    uint32_t session_id;       /* with XDPCAST_REQ_SESSION_ID */
    uint32_t start_timeout_ms; /* TIMEOUT if nothing arrives this long after start; 0: 60 s */
    uint32_t idle_timeout_ms;  /* SENDER_GONE after this long without packets; 0: 10 s */
};

/* Validate the request, create the status page (state INITIALIZED) and
 * store the new session's handle in *out. The strings are copied. */
int xdpcast_session_initialize(const struct xdpcast_request *req, xdpcast_handle *out);

/* Open the data path and start receiving (state IN_PROGRESS). On failure
 * the session is in FAILURE with the returned code. */
int xdpcast_session_start(xdpcast_handle h);

/* Current state (enum xdpcast_state) and error code (enum xdpcast_error,
 * meaningful in FAILURE). Answers after the session ended, until close.
 * Either pointer may be NULL. */
int xdpcast_session_query_status(xdpcast_handle h, uint32_t *status, uint32_t *error);

/* Wait up to timeout_ms (XDPCAST_WAIT_FOREVER: no limit) for the session
 * to end: XDPCAST_OK with the final state, or XDPCAST_ERR_TIMEOUT with the
 * current state if it still runs. Other threads may query, cancel or close
 * the session meanwhile. Either pointer may be NULL. */
int xdpcast_session_wait(xdpcast_handle h, uint32_t timeout_ms, uint32_t *status, uint32_t *error);

/* Cancel: the session ends in FAILURE with XDPCAST_ERR_CANCELLED (unless it
 * had already ended). */
int xdpcast_session_cancel(xdpcast_handle h);

/* Stop the session (cancelling it if it runs), remove its status page and
 * release the handle. */
int xdpcast_session_close(xdpcast_handle h);

#ifdef __cplusplus
}
#endif

#endif /* XDPCAST_H */
