//! Shared by the offload tests and the offload benchmark.

#![allow(dead_code)]

pub mod forwarder;
pub mod packets;
