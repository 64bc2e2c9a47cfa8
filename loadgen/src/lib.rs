//! The parts of `keyward-loadgen` worth reusing and fuzzing: the wire protocols it speaks
//! (keyward, RESP, memcached text) with their bounded answer parsers, and the workload builder.

pub mod wire;
pub mod workload;
