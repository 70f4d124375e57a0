//! For other programs: the session API and its C ABI.

pub mod ffi;
pub mod session;
