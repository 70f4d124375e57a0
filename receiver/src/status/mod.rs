//! What monitors read: the shared-memory status page, its text, JSON and
//! Prometheus renderings, and the live monitor and metrics endpoint.

pub mod monitor;
pub mod page;
pub mod report;
