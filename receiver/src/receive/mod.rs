//! Turning packets into blocks: choosing and opening the data path, the
//! pinned workers that drain it, and the sinks that check and place blocks.

pub mod bitmap;
pub mod checks;
pub mod control;
pub mod datapath;
pub mod request;
pub mod signed;
pub mod transfer;
pub mod udpcast;
pub mod workers;
