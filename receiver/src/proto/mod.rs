//! What is on the wire: frame decapsulation, packet formats and erasure
//! codes. Pure parsing and arithmetic, no I/O.

pub mod fec;
pub mod frame;
pub mod manifest;
pub mod udpcast;
pub mod wire;
