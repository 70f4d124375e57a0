//! xdpcast: a kernel-bypass multicast receiver.
