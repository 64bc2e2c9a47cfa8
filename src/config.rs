//! Server configuration: every bound and knob, with its unit last, in one validated struct.
//! Built from defaults, then an optional TOML file, then command-line flags (main.rs).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::credential::{PrefixError, Prefixes};
use crate::endpoint::Endpoint;
use crate::protocol;

/// The server's settings. Field names are the TOML keys (docs/OPERATIONS.md lists them).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Where the pepper, master secret, admin token and key table live.
    pub data_dir: PathBuf,
    /// Verify port address: `HOST:PORT`, or `unix:/PATH` for a Unix-domain socket.
    pub listen: Endpoint,
    /// Control port address (admin operations).
    pub control: SocketAddr,
    /// Metrics listener (`/metrics`, `/healthz`, `/readyz`): `HOST:PORT`, or empty for none.
    pub metrics_listen: String,
    /// The audit trail's current file is rotated once it holds this many bytes.
    pub audit_rotate_bytes: u64,
    /// Log lines as `text` or `json`.
    pub log_format: crate::logging::Format,
    /// Least severe log lines written: `error`, `warning`, `info` or `debug`.
    pub log_level: crate::logging::Level,
    /// Where changes go: `local` (this node's delta log) or `nats` (a NATS JetStream stream
    /// every node follows; docs/CLUSTER.md).
    pub replication: Replication,
    /// Replicated mode: NATS server URLs, e.g. `nats://10.0.0.1:4222`.
    pub nats_servers: Vec<String>,
    /// Replicated mode: the JetStream stream holding the changes (created when missing).
    pub nats_stream: String,
    /// Replicated mode: a NATS credentials file (`.creds`), or empty for none.
    pub nats_credentials: String,
    /// Replicated mode: copies of the stream JetStream keeps, when this node creates it.
    pub nats_replicas: usize,
    /// This node's name in the cluster (audit trail, NATS connection); empty: the host name.
    pub node_name: String,
    /// How long a VERIFY_AT may wait for the sequence it asks for before it is answered
    /// `stale`, in ms (0: at once).
    pub verify_at_wait_ms: u64,
    /// Replicated mode: once the change stream has been silent this long, answer `stale`
    /// instead of `valid` until it answers again (fail closed); 0 keeps answering from the
    /// last state however long it lasts (docs/CLUSTER.md argues the default).
    pub max_staleness_ms: u64,
    /// Number of shards; 0 means one per available CPU.
    pub shards: usize,
    /// CPUs to pin shards to, in order; empty means the CPUs this process may run on.
    pub cpus: Vec<usize>,
    /// CPUs for every thread that is not a shard: the control plane, compaction, the metrics
    /// listener, the usage writer, the NATS client. Empty: the CPUs this process may run on
    /// that no shard uses, or, where the shards use them all, anywhere among them.
    pub control_cpus: Vec<usize>,
    /// Open verify connections one shard accepts; past it new ones get a `busy` error.
    pub connections_per_shard_max: usize,
    /// Largest frame body accepted, in bytes.
    pub frame_body_bytes_max: usize,
    /// A verify connection silent this long is closed.
    pub idle_timeout_ms: u64,
    /// A frame must arrive whole within this of its first byte, on either port; a slower sender
    /// gets a `timeout` error and is closed.
    pub frame_timeout_ms: u64,
    /// A control connection silent this long between requests is closed.
    pub control_idle_timeout_ms: u64,
    /// Bytes one shard may hold in read buffers grown past their first size for frames larger
    /// than it; a connection that would go past it gets a `busy` error and is closed.
    pub frame_buffer_bytes_per_shard_max: usize,
    /// How long start-up keeps retrying to bind a port that is still held, e.g. by a server
    /// killed a moment ago whose sockets the kernel has not yet closed.
    pub bind_retry_ms: u64,
    /// How long a shard keeps looking for completions after work before it sleeps in the
    /// kernel: trades CPU for the latency of the next request. 0 sleeps at once.
    #[serde(alias = "spin_before_park_us")]
    pub busy_poll_us: u64,
    /// Provided receive buffers in each shard's ring (a power of two).
    pub receive_buffers: u16,
    /// Bytes of each receive buffer.
    pub receive_buffer_bytes: u32,
    /// Answers one verify connection may have unsent before the shard stops reading it (a
    /// client that sends and never reads cannot grow the server's memory).
    pub unsent_bytes_per_connection_max: usize,
    /// Kernel accept backlog per shard.
    pub listen_backlog: u32,
    /// Memory the control plane's executor registers with io_uring for its buffers.
    pub io_memory_bytes: usize,
    /// Compact (write a new snapshot, shorten the log) once this many key records have changed
    /// since the snapshot. It also bounds each shard's overlay, which is allocated for this many
    /// records at start-up so applying changes never rehashes a large table on a verify core.
    pub compact_changes_max: u64,
    /// Compact once the log holds this many bytes.
    pub compact_log_bytes_max: u64,
    /// Nice value of the compaction thread, 0 (default priority) to 19 (lowest).
    pub compaction_nice: u32,
    /// Prefix of secret keys.
    pub prefix: String,
    /// Prefix of keys marked public.
    pub public_prefix: String,
    /// Prefix of derived tokens.
    pub token_prefix: String,
    /// Longest lifetime a derived token may be given, in seconds.
    pub token_ttl_max_seconds: u64,
}

/// Bounds on the bounds.
pub const SHARDS_MAX: usize = 1024;
pub const CONNECTIONS_PER_SHARD_LIMIT: usize = 1 << 20;
pub const BUSY_POLL_US_MAX: u64 = 1_000_000;
pub const IO_MEMORY_BYTES_MIN: usize = 64 * 1024;
/// CPU numbers must be below this (the size of the kernel interface's CPU set, CPU_SETSIZE).
pub const CPU_ID_LIMIT: usize = 1024;

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            data_dir: PathBuf::from("./keyward-data"),
            listen: Endpoint::Tcp("127.0.0.1:7500".parse().unwrap()),
            control: "127.0.0.1:7501".parse().unwrap(),
            metrics_listen: "127.0.0.1:7502".into(),
            audit_rotate_bytes: 64 * 1024 * 1024,
            log_format: crate::logging::Format::Text,
            log_level: crate::logging::Level::Info,
            replication: Replication::Local,
            nats_servers: Vec::new(),
            nats_stream: "KEYWARD".into(),
            nats_credentials: String::new(),
            nats_replicas: 3,
            node_name: String::new(),
            verify_at_wait_ms: 5,
            max_staleness_ms: 0,
            shards: 0,
            cpus: Vec::new(),
            control_cpus: Vec::new(),
            connections_per_shard_max: 4096,
            frame_body_bytes_max: protocol::BODY_BYTES_DEFAULT,
            idle_timeout_ms: 300_000,
            frame_timeout_ms: 10_000,
            control_idle_timeout_ms: 60_000,
            frame_buffer_bytes_per_shard_max: 64 * 1024 * 1024,
            bind_retry_ms: 2_000,
            busy_poll_us: 0,
            receive_buffers: 1024,
            receive_buffer_bytes: 4096,
            unsent_bytes_per_connection_max: 1 << 20,
            listen_backlog: 1024,
            io_memory_bytes: 256 * 1024,
            compact_changes_max: 100_000,
            compact_log_bytes_max: 256 * 1024 * 1024,
            compaction_nice: 0,
            prefix: "kw".to_string(),
            public_prefix: "kwpub".to_string(),
            token_prefix: "kwt".to_string(),
            token_ttl_max_seconds: 3600,
        }
    }
}

/// Where a node's changes go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Replication {
    /// This node's own delta log: one node.
    #[default]
    Local,
    /// A NATS JetStream stream that every node follows.
    Nats,
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{field} must be {expected}, got {value}")]
    Range {
        field: &'static str,
        expected: String,
        value: String,
    },
    #[error(transparent)]
    Prefix(#[from] PrefixError),
}

impl ServerConfig {
    /// Reads a TOML file over the defaults.
    pub fn from_file(path: &Path) -> Result<ServerConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// The whole configuration as TOML, every setting named (what `keyward config print` shows).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("every setting is a plain TOML value")
    }

    /// The metrics listener's address; `None` when it is off (an empty `metrics_listen`).
    pub fn metrics_address(&self) -> Result<Option<SocketAddr>, ConfigError> {
        let text = self.metrics_listen.trim();
        if text.is_empty() {
            return Ok(None);
        }
        text.parse().map(Some).map_err(|_| ConfigError::Range {
            field: "metrics_listen",
            expected: "HOST:PORT (e.g. 127.0.0.1:7502), or empty for no metrics listener".into(),
            value: format!("{text:?}"),
        })
    }

    /// Checks every field's range; the server runs only a validated config.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.metrics_address()?;
        fn range<T: std::fmt::Display + PartialOrd>(
            field: &'static str,
            value: T,
            low: T,
            high: T,
        ) -> Result<(), ConfigError> {
            if value < low || value > high {
                return Err(ConfigError::Range {
                    field,
                    expected: format!("between {low} and {high}"),
                    value: value.to_string(),
                });
            }
            Ok(())
        }
        range("shards", self.shards, 0, SHARDS_MAX)?;
        for cpu in self.cpus.iter().chain(&self.control_cpus) {
            range("cpus and control_cpus", *cpu, 0, CPU_ID_LIMIT - 1)?;
        }
        self.validate_replication()?;
        range("verify_at_wait_ms", self.verify_at_wait_ms, 0, 1000)?;
        // The stream is asked twice a second: a bound under 2 s would flap on a healthy one.
        if self.max_staleness_ms != 0
            && !(2000..=7 * 24 * 3600 * 1000).contains(&self.max_staleness_ms)
        {
            return Err(ConfigError::Range {
                field: "max_staleness_ms",
                expected: "0 (keep answering) or 2000 to 604800000".into(),
                value: self.max_staleness_ms.to_string(),
            });
        }
        range(
            "connections_per_shard_max",
            self.connections_per_shard_max,
            1,
            CONNECTIONS_PER_SHARD_LIMIT,
        )?;
        range(
            "frame_body_bytes_max",
            self.frame_body_bytes_max,
            protocol::BODY_BYTES_DEFAULT,
            protocol::BODY_BYTES_LIMIT,
        )?;
        range("idle_timeout_ms", self.idle_timeout_ms, 1, 24 * 3600 * 1000)?;
        range("frame_timeout_ms", self.frame_timeout_ms, 1, 3600 * 1000)?;
        range(
            "control_idle_timeout_ms",
            self.control_idle_timeout_ms,
            1,
            24 * 3600 * 1000,
        )?;
        range(
            "frame_buffer_bytes_per_shard_max",
            self.frame_buffer_bytes_per_shard_max,
            protocol::HEADER_BYTES + protocol::BODY_BYTES_DEFAULT,
            1 << 40,
        )?;
        range("bind_retry_ms", self.bind_retry_ms, 0, 600_000)?;
        if self.frame_buffer_bytes_per_shard_max < self.frame_body_bytes_max {
            return Err(ConfigError::Range {
                field: "frame_buffer_bytes_per_shard_max",
                expected: format!(
                    "at least frame_body_bytes_max ({}), or the largest frame could never be read",
                    self.frame_body_bytes_max
                ),
                value: self.frame_buffer_bytes_per_shard_max.to_string(),
            });
        }
        range("busy_poll_us", self.busy_poll_us, 0, BUSY_POLL_US_MAX)?;
        range("receive_buffers", self.receive_buffers, 1, 32768)?;
        if !self.receive_buffers.is_power_of_two() {
            return Err(ConfigError::Range {
                field: "receive_buffers",
                expected: "a power of two".into(),
                value: self.receive_buffers.to_string(),
            });
        }
        range(
            "receive_buffer_bytes",
            self.receive_buffer_bytes,
            protocol::HEADER_BYTES as u32,
            1 << 20,
        )?;
        range(
            "unsent_bytes_per_connection_max",
            self.unsent_bytes_per_connection_max,
            64 * 1024,
            1 << 30,
        )?;
        range("listen_backlog", self.listen_backlog, 1, 65535)?;
        range(
            "io_memory_bytes",
            self.io_memory_bytes,
            IO_MEMORY_BYTES_MIN,
            1 << 30,
        )?;
        range(
            "compact_changes_max",
            self.compact_changes_max,
            1,
            100_000_000,
        )?;
        range(
            "compact_log_bytes_max",
            self.compact_log_bytes_max,
            4096,
            u64::MAX,
        )?;
        range("compaction_nice", self.compaction_nice, 0, 19)?;
        range(
            "audit_rotate_bytes",
            self.audit_rotate_bytes,
            4096,
            u64::MAX,
        )?;
        range(
            "token_ttl_max_seconds",
            self.token_ttl_max_seconds,
            1,
            366 * 24 * 3600,
        )?;
        self.prefixes()?;
        crate::credential::check_prefix(&self.token_prefix).map_err(|_| ConfigError::Range {
            field: "token_prefix",
            expected: "2 to 16 lowercase letters or digits".into(),
            value: self.token_prefix.clone(),
        })?;
        if self.token_prefix == self.prefix || self.token_prefix == self.public_prefix {
            return Err(ConfigError::Range {
                field: "token_prefix",
                expected: "a prefix unlike the key prefixes".into(),
                value: self.token_prefix.clone(),
            });
        }
        Ok(())
    }

    fn validate_replication(&self) -> Result<(), ConfigError> {
        let refuse = |field, expected: &str, value: String| {
            Err(ConfigError::Range {
                field,
                expected: expected.into(),
                value,
            })
        };
        if self.replication == Replication::Nats && self.nats_servers.is_empty() {
            return refuse(
                "nats_servers",
                "at least one NATS URL when replication is nats",
                "none".into(),
            );
        }
        if let Some(url) = self
            .nats_servers
            .iter()
            .find(|u| u.is_empty() || u.len() > 512)
        {
            return refuse(
                "nats_servers",
                "URLs of 1 to 512 characters",
                format!("{url:?}"),
            );
        }
        let stream_ok = !self.nats_stream.is_empty()
            && self.nats_stream.len() <= 64
            && self
                .nats_stream
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !stream_ok {
            return refuse(
                "nats_stream",
                "1 to 64 letters, digits, '_' or '-'",
                format!("{:?}", self.nats_stream),
            );
        }
        if !(1..=5).contains(&self.nats_replicas) {
            return refuse("nats_replicas", "1 to 5", self.nats_replicas.to_string());
        }
        if self.node_name.len() > 64 || self.node_name.chars().any(char::is_control) {
            return refuse(
                "node_name",
                "at most 64 characters, none of them control characters",
                format!("{:?}", self.node_name),
            );
        }
        Ok(())
    }

    /// Replicated mode's settings; `None` in local mode.
    pub fn nats(&self) -> Option<crate::replication::NatsSettings> {
        (self.replication == Replication::Nats).then(|| crate::replication::NatsSettings {
            servers: self.nats_servers.clone(),
            stream: self.nats_stream.clone(),
            credentials: (!self.nats_credentials.is_empty())
                .then(|| PathBuf::from(&self.nats_credentials)),
            replicas: self.nats_replicas,
            max_staleness: std::time::Duration::from_millis(self.max_staleness_ms),
            node: if self.node_name.is_empty() {
                host_name()
            } else {
                self.node_name.clone()
            },
        })
    }

    pub fn prefixes(&self) -> Result<Prefixes, PrefixError> {
        Prefixes::new(&self.prefix, &self.public_prefix)
    }
}

/// This machine's host name, or `keyward` when it has none.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "keyward".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        ServerConfig::default().validate().unwrap();
    }

    #[test]
    fn toml_overrides_defaults_and_rejects_unknown_keys() {
        let config: ServerConfig =
            toml::from_str("shards = 2\nlisten = \"127.0.0.1:9000\"").unwrap();
        assert_eq!(config.shards, 2);
        assert_eq!(config.listen.tcp().unwrap().port(), 9000);
        assert_eq!(
            config.idle_timeout_ms,
            ServerConfig::default().idle_timeout_ms
        );
        assert!(toml::from_str::<ServerConfig>("shard = 2").is_err());
    }

    #[test]
    fn out_of_range_values_are_named() {
        let config = ServerConfig {
            connections_per_shard_max: 0,
            ..Default::default()
        };
        let message = config.validate().unwrap_err().to_string();
        assert!(message.contains("connections_per_shard_max"), "{message}");
    }

    #[test]
    fn the_frame_buffer_budget_holds_the_largest_frame() {
        let config = ServerConfig {
            frame_body_bytes_max: 1 << 20,
            frame_buffer_bytes_per_shard_max: 1 << 19,
            ..Default::default()
        };
        let message = config.validate().unwrap_err().to_string();
        assert!(
            message.contains("frame_buffer_bytes_per_shard_max"),
            "{message}"
        );
    }
}
