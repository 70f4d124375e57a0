//! Renderings of a status page: for people ([`human`]), JSON ([`SessionReport`],
//! through serde) and Prometheus text ([`prometheus`], written by an
//! [`Exposition`]).
//!
//! Adding a page field to the outputs: a field of [`SessionReport`] (or
//! [`WorkerReport`]) set in its `new`, and one line in [`SESSION_METRICS`]
//! (or [`WORKER_METRICS`]).

mod json;
mod metrics;
mod text;

#[cfg(test)]
mod tests;

pub use json::*;
pub use metrics::*;
pub use text::*;
