//! Turning blocks into bytes on a file or block device (the target and its
//! staging writer), and the resume file.

pub mod keys;
pub mod resume;
pub mod target;
pub mod writer;
