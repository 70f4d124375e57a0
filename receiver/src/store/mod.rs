//! Turning blocks into bytes on a file or block device (the target and its
//! staging writer), or into an ordered stream on a pipe, and the resume file.

pub mod handoff;
pub mod keys;
pub mod resume;
pub mod stream;
pub mod target;
pub mod writer;
