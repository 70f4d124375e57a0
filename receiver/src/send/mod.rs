//! The sender side.

pub mod sender;
