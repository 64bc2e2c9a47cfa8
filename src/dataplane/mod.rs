//! The io_uring data plane: what a shard's thread runs.
//!
//! | file | what it does |
//! | --- | --- |
//! | `ring.rs` | sets up a shard's ring with the features a thread-per-core server wants |
//! | `buffers.rs` | the provided buffer ring that multishot receives draw from |
//! | `connection.rs` | one connection's state: pending input, unsent answers, clocks, waits |
//! | `turn.rs` | the loop: completions in, answers out, one submission per turn |
//! | `socket.rs` | plain socket calls of the turn: refusing at accept, socket options |
//! | `ping.rs` | a PING-only service, to measure and test the turn without a key table |
//!
//! The verify protocol itself is answered in `shard.rs`, which the turn calls through its
//! `Service` trait.

pub mod buffers;
pub mod connection;
pub mod ping;
pub mod ring;
pub mod socket;
pub mod turn;
