/*
 * names.c - prints the names xdpcast_status.h gives every error code and
 * drop reason number, as "error N NAME" and "drop N NAME" lines.
 * tests/api.rs compares them with `xdpcast status --json`.
 */
#include <stdio.h>

#include "xdpcast_status.h"

int main(void)
{
    unsigned i;
    for (i = 0; i < 64; i++)
        printf("error %u %s\n", i, xdpcast_error_name(i));
    for (i = 0; i < XDPCAST_DROP_SLOTS; i++)
        printf("drop %u %s\n", i, xdpcast_drop_name(i));
    return 0;
}
