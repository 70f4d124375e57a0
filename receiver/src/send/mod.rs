//! The sender side.

pub mod sender;
pub mod zeros;
