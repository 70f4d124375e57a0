//! End-to-end benchmark harness support.
