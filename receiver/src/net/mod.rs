//! The kernel edge: everything that touches a socket, a ring or the XDP
//! program. Raw syscalls live here.

pub mod rings;
pub mod socket;
pub mod steer;
