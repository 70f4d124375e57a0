//! The sender side.

pub mod ahead;
pub mod fill;
pub mod publish;
pub mod repair;
pub mod sender;
pub mod view;
pub mod zeros;
