//! What monitors read: the shared-memory status page, its text, JSON and
//! Prometheus renderings, the live monitor and the metrics endpoint.

pub mod monitor;
pub mod page;
pub mod report;
pub mod serve;

#[cfg(test)]
mod doc_tests;
