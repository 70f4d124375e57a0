//! Turning blocks into bytes on a file or block device, and the resume file.

pub mod keys;
pub mod resume;
pub mod target;
