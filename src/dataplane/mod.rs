//! The io_uring data plane's building blocks, on the `io-uring` crate: ring set-up with the
//! features a shard wants (`ring.rs`), the per-shard provided buffer ring that multishot
//! receives draw from (`buffers.rs`), and the turn loop (`turn.rs`). The shards do not run on these yet (they still read
//! through glommio, `shard.rs`); each part is tested here against real sockets so the data plane
//! can be assembled from parts that are known to work on this kernel.

pub mod buffers;
pub mod ring;
pub mod turn;
