//! Benchmark support for xdpcast.
//!
//! - [`fixture`]: deterministic images and the packets and frames that carry them.
//! - [`netns`]: network namespaces and veth pairs, deleted on drop (shared
//!   with the integration tests and `cargo xtask demo`).
//! - [`blast`]: a fast sender (UDP GSO + `sendmmsg`) so that the sender is
//!   not the limit of the end-to-end benchmark where that can be avoided.
//!
//! The `xdpcast-bench` binary exposes `blast` to the harness
//! (`cargo xtask bench`); `benches/hot_path.rs` holds the criterion benches.

pub mod blast;
pub mod fixture;
pub mod netns;
