//! keyward: an API-key verification appliance.
//!
//! # Layout
//!
//! | module | owns |
//! | --- | --- |
//! | [`credential`] | the key format: prefix, base32 body, checksum; parsing; keyed hashing |
//! | [`record`] | key records and their value types (time, status, address ranges) |
//! | [`snapshot`] | the memory-mapped key table: build, write atomically, map, validate, look up |
//! | [`record_sort`] | sorting key records by id in bounded memory (runs on disk, merged) |
//! | [`table_writer`] | writing a key table in bounded memory, one record at a time |
//! | [`table_stats`] | where a key table's bytes go, and how its hash tables probe |
//! | [`verify`] | the verify decision, from credential and requirements to a status |
//! | [`protocol`] | the verify protocol codec (docs/PROTOCOL.md) |
//! | [`shard`] | one core's verify service: decode, answer, apply the control plane's changes |
//! | [`dataplane`] | the io_uring data plane: ring set-up, buffer ring, connections, the turn |
//! | [`endpoint`] | verify port addresses (TCP or Unix socket) and the streams they give |
//! | [`server`] | start-up and shutdown: data directory, sockets, one pinned thread per shard |
//! | [`backup`] | a consistent copy of a data directory, running or stopped (`keyward-ctl backup`) |
//! | [`datadir`] | the data directory: secrets, lock, snapshot path |
//! | [`doctor`] | host checks: io_uring probes, limits, CPUs, kernel settings (`keyward doctor`, start-up) |
//! | [`config`] | every server setting and bound, validated |
//! | [`client`] | a blocking client for the verify protocol |
//! | [`keyset`] | generated key sets and key files for tests, demos and benchmarks |
//! | [`control`] | the control plane: control port, key commands, group commit, compaction |
//! | [`link`] | the link between the planes: messages, queues, doorbells; the shutdown flag |
//! | [`delta`] | the delta log: records, replay, torn tails and corruption |
//! | [`metrics`] | shard-local counters, the board they are published to, the Prometheus exposition and the `/metrics` `/healthz` `/readyz` listener |
//! | [`overlay`] | a shard's view of the changes since its snapshot |
//! | [`token`] | derived capability tokens: format, MAC chain, attenuation |
//! | [`admin`] | the control protocol's messages and a blocking admin client |
//! | [`assets`] | man pages and shell completions generated from a binary's CLI |
//! | [`stdout`] | the binaries' output: a reader gone (`\| head`) ends a command quietly, not in a panic |
//! | [`supervisor`] | systemd notification: status lines, readiness, watchdog pings |
//! | [`throttle`] | rate-limited log lines for what the world can provoke |

pub mod admin;
pub mod admins;
pub mod assets;
pub mod audit;
pub mod backup;
pub mod client;
pub mod cluster;
pub mod config;
pub mod control;
pub mod credential;
pub mod datadir;
pub mod dataplane;
pub mod delta;
pub mod doctor;
pub mod endpoint;
pub mod keyset;
pub mod link;
pub mod logging;
pub mod metrics;
pub mod overlay;
pub mod protocol;
pub mod record;
pub mod record_sort;
pub mod replication;
pub mod server;
pub mod shard;
pub mod snapshot;
pub mod stdout;
pub mod supervisor;
pub mod table_stats;
pub mod table_writer;
pub mod throttle;
pub mod token;
pub mod usage;
pub mod verify;
