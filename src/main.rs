//! `keyward`: the server binary. Thin: parse flags into a config, then `server::run`.

use keyward::{out, outln};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use keyward::config::ServerConfig;
use keyward::protocol::Status;
use keyward::server::{self, Shutdown};

#[derive(Parser)]
#[command(name = "keyward", version, about = "API-key verification server", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the verify port from a data directory (created with fresh secrets on first run).
    Serve(ServeArgs),
    /// Check this host for what keyward needs and what makes it fast: each check passes, warns
    /// or fails with its remedy (exit 1 on a fail; `serve` refuses on the same fails).
    Doctor(DoctorArgs),
    /// Validate or show a configuration without starting.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Write the man pages and shell completions generated from this CLI into a directory.
    #[command(hide = true)]
    GenerateAssets {
        /// Where `man/` and `completions/` are written.
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check a configuration (the file, then any flags) as `serve` would, without starting:
    /// exit 0 when it is valid, 1 with the reason when not.
    Check(ServeArgs),
    /// Print the effective configuration as TOML: defaults, overridden by the file, overridden
    /// by the flags. It holds no secrets (those live in the data directory).
    Print(ServeArgs),
}

#[derive(clap::Args)]
struct DoctorArgs {
    /// One JSON object ({"verdict", "checks": [{name, verdict, found, remedy}]}) for fleet tooling
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML file with any of the settings below (flags given here override it).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory: secrets and key table [default: ./keyward-data]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Verify port address: HOST:PORT, or unix:/PATH for a Unix-domain socket (mode 0660; a
    /// stale socket file is replaced only when nothing listens on it) [default: 127.0.0.1:7500]
    #[arg(long, value_name = "ADDR")]
    listen: Option<keyward::endpoint::Endpoint>,
    /// Control port address, for admin operations (keep it on loopback) [default: 127.0.0.1:7501]
    #[arg(long, value_name = "ADDR")]
    control: Option<SocketAddr>,
    /// Metrics listener (GET /metrics, /healthz, /readyz): HOST:PORT, or "" for none
    /// [default: 127.0.0.1:7502]
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
    /// Rotate audit.log once it holds this many bytes [default: 67108864]
    #[arg(long, value_name = "BYTES")]
    audit_rotate_bytes: Option<u64>,
    /// Log lines as text or as JSON objects, one per line [default: text]
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<keyward::logging::Format>,
    /// Least severe log lines written [default: info]
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<keyward::logging::Level>,
    /// Where changes go: local (this node's delta log) or nats (a JetStream stream every node
    /// follows; see docs/CLUSTER.md) [default: local]
    #[arg(long, value_name = "MODE")]
    replication: Option<keyward::config::Replication>,
    /// NATS server URLs, comma-separated, e.g. nats://10.0.0.1:4222,nats://10.0.0.2:4222
    #[arg(long, value_name = "URLS", value_delimiter = ',')]
    nats_servers: Option<Vec<String>>,
    /// The JetStream stream holding the changes [default: KEYWARD]
    #[arg(long, value_name = "NAME")]
    nats_stream: Option<String>,
    /// A NATS credentials file (.creds) [default: none]
    #[arg(long, value_name = "FILE")]
    nats_credentials: Option<String>,
    /// Copies of the stream JetStream keeps, when this node creates it [default: 3]
    #[arg(long, value_name = "N")]
    nats_replicas: Option<usize>,
    /// This node's name in the cluster [default: the host name]
    #[arg(long, value_name = "NAME")]
    node_name: Option<String>,
    /// How long a VERIFY_AT may wait for the sequence it asks for before it is answered
    /// stale [default: 5]
    #[arg(long, value_name = "MS")]
    verify_at_wait_ms: Option<u64>,
    /// Replicated mode: once the change stream has been silent this long, answer stale
    /// instead of valid until it answers again; 0 keeps answering [default: 0]
    #[arg(long, value_name = "MS")]
    max_staleness_ms: Option<u64>,
    /// Number of shards (one pinned thread each) [default: one per available CPU]
    #[arg(long, value_name = "N")]
    shards: Option<usize>,
    /// CPUs to pin shards to, comma-separated, e.g. 0,2 [default: those this process may use]
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    cpus: Option<Vec<usize>>,
    /// CPUs for the control plane and every other thread that is not a shard, comma-separated
    /// [default: those this process may use that no shard uses]
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    control_cpus: Option<Vec<usize>>,
    /// Open connections per shard before new ones are refused [default: 4096]
    #[arg(long, value_name = "N")]
    connections_per_shard_max: Option<usize>,
    /// Largest frame body accepted, in bytes [default: 65536]
    #[arg(long, value_name = "BYTES")]
    frame_body_bytes_max: Option<usize>,
    /// Close connections idle this long, in milliseconds [default: 300000]
    #[arg(long, value_name = "MS")]
    idle_timeout_ms: Option<u64>,
    /// A frame must arrive whole within this of its first byte, in milliseconds [default: 10000]
    #[arg(long, value_name = "MS")]
    frame_timeout_ms: Option<u64>,
    /// Close control connections silent this long between requests, in milliseconds
    /// [default: 60000]
    #[arg(long, value_name = "MS")]
    control_idle_timeout_ms: Option<u64>,
    /// Bytes one shard may hold in read buffers grown for large frames [default: 67108864]
    #[arg(long, value_name = "BYTES")]
    frame_buffer_bytes_per_shard_max: Option<usize>,
    /// Keep retrying to bind a port still held (e.g. by a server just killed) this long, in
    /// milliseconds [default: 2000]
    #[arg(long, value_name = "MS")]
    bind_retry_ms: Option<u64>,
    /// Microseconds a shard keeps looking for work before it sleeps in the kernel: 0 saves
    /// CPU, more cuts the latency of the next request at low load [default: 0]
    #[arg(long, value_name = "US", alias = "spin-before-park-us")]
    busy_poll_us: Option<u64>,
    /// Provided receive buffers per shard, a power of two [default: 1024]
    #[arg(long, value_name = "N")]
    receive_buffers: Option<u16>,
    /// Bytes of each receive buffer [default: 4096]
    #[arg(long, value_name = "BYTES")]
    receive_buffer_bytes: Option<u32>,
    /// Unsent answers one connection may hold before it is no longer read, in bytes
    /// [default: 1048576]
    #[arg(long, value_name = "BYTES")]
    unsent_bytes_per_connection_max: Option<usize>,
    /// Kernel accept backlog per shard [default: 1024]
    #[arg(long, value_name = "N")]
    listen_backlog: Option<u32>,
    /// Memory the control plane registers with io_uring, in bytes [default: 262144]
    #[arg(long, value_name = "BYTES")]
    io_memory_bytes: Option<usize>,
    /// Compact once this many key records changed since the snapshot [default: 100000]
    #[arg(long, value_name = "N")]
    compact_changes_max: Option<u64>,
    /// Compact once the delta log holds this many bytes [default: 268435456]
    #[arg(long, value_name = "BYTES")]
    compact_log_bytes_max: Option<u64>,
    /// Prefix of derived tokens [default: kwt]
    #[arg(long, value_name = "PREFIX")]
    token_prefix: Option<String>,
    /// Longest lifetime a derived token may get, in seconds [default: 3600]
    #[arg(long, value_name = "SECS")]
    token_ttl_max_seconds: Option<u64>,
    /// Prefix of secret keys [default: kw]
    #[arg(long, value_name = "PREFIX")]
    prefix: Option<String>,
    /// Prefix of keys marked public [default: kwpub]
    #[arg(long, value_name = "PREFIX")]
    public_prefix: Option<String>,
}

impl ServeArgs {
    fn into_config(self) -> Result<ServerConfig, keyward::config::ConfigError> {
        let mut config = match &self.config {
            Some(path) => ServerConfig::from_file(path)?,
            None => ServerConfig::default(),
        };
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(value) = self.$field { config.$field = value; } )* };
        }
        set!(
            data_dir,
            listen,
            control,
            metrics_listen,
            audit_rotate_bytes,
            log_format,
            log_level,
            replication,
            nats_servers,
            nats_stream,
            nats_credentials,
            nats_replicas,
            node_name,
            verify_at_wait_ms,
            max_staleness_ms,
            shards,
            cpus,
            control_cpus,
            connections_per_shard_max,
            frame_body_bytes_max,
            idle_timeout_ms,
            frame_timeout_ms,
            control_idle_timeout_ms,
            frame_buffer_bytes_per_shard_max,
            bind_retry_ms,
            busy_poll_us,
            receive_buffers,
            receive_buffer_bytes,
            unsent_bytes_per_connection_max,
            listen_backlog,
            io_memory_bytes,
            compact_changes_max,
            compact_log_bytes_max,
            prefix,
            public_prefix,
            token_prefix,
            token_ttl_max_seconds
        );
        config.validate()?;
        Ok(config)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match try_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            keyward::supervisor::status(&format!("failed: {message}"));
            keyward::log_error!("{message}");
            ExitCode::from(1)
        }
    }
}

fn try_main(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Doctor(args) => doctor(args),
        Command::Config(ConfigCommand::Check(args)) => {
            let file = args.config.clone();
            args.into_config().map_err(|e| e.to_string())?;
            match file {
                Some(file) => outln!("{}: valid", file.display()),
                None => outln!("the defaults are valid (no --config given)"),
            }
            Ok(())
        }
        Command::Config(ConfigCommand::Print(args)) => {
            let config = args.into_config().map_err(|e| e.to_string())?;
            out!("{}", config.to_toml());
            Ok(())
        }
        Command::GenerateAssets { dir } => {
            keyward::assets::generate(Cli::command(), &dir).map_err(|e| e.to_string())
        }
    }
}

/// Runs every host check; exit 1 when one fails.
fn doctor(args: DoctorArgs) -> Result<(), String> {
    let config = args.serve.into_config().map_err(|e| e.to_string())?;
    let checks = keyward::doctor::run(&config);
    if args.json {
        outln!("{}", keyward::doctor::render_json(&checks));
    } else {
        out!("{}", keyward::doctor::render_text(&checks));
    }
    if keyward::doctor::worst(&checks) == keyward::doctor::Verdict::Fail {
        std::process::exit(1);
    }
    Ok(())
}

fn serve(args: ServeArgs) -> Result<(), String> {
    let config = args.into_config().map_err(|e| e.to_string())?;
    keyward::logging::set(config.log_format, config.log_level);
    let shutdown = Shutdown::new();
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, shutdown.flag()).map_err(|e| e.to_string())?;
    }
    let data_dir = config.data_dir.clone();
    keyward::supervisor::status(&format!(
        "starting: checking the host, loading the key table from {}",
        data_dir.display()
    ));
    let mut notifier = None;
    let notifier_shutdown = shutdown.clone();
    let reports = server::run(config, shutdown, |ready| {
        notifier = keyward::supervisor::spawn(
            ready.board.clone(),
            notifier_shutdown,
            format!(
                "serving {} keys on {} with {} shard(s); control port {}",
                ready.records,
                ready.verify_address,
                ready.cpus.len(),
                ready.control_address
            ),
        );
        let mut out = std::io::stdout().lock();
        macro_rules! say {
            ($($arg:tt)*) => {
                let _ = out.write_all(
                    keyward::logging::line(keyward::logging::Level::Info, format_args!($($arg)*))
                        .as_bytes(),
                );
            };
        }
        if ready.data_dir_created {
            say!(
                "created data directory {} (pepper, master key and admin token, mode 0600)",
                data_dir.display()
            );
        }
        say!(
                "{} keys loaded from {} (snapshot sequence {}, {} logged changes replayed, now at sequence {})",
            ready.records,
            data_dir.display(),
            ready.snapshot_sequence,
            ready.replayed_deltas,
            ready.sequence
        );
        say!(
                "verify port listening on {} with {} shard(s) on CPU(s) {:?}",
            ready.verify_address,
            ready.cpus.len(),
            ready.cpus
        );
        if ready.control_cpus.is_empty() {
            say!("control plane unpinned (the shards use every CPU this process may run on)");
        } else {
            say!("control plane on CPU(s) {:?}", ready.control_cpus);
        }
        say!(
                "control port listening on {} (admin token in {})",
            ready.control_address,
            data_dir.join(keyward::datadir::ADMIN_TOKEN_FILE).display()
        );
        if let Some(address) = ready.metrics_address {
            say!(
                "metrics listening on {address} (http://{address}/metrics, /healthz, /readyz)"
            );
        }
        say!(
                "press Ctrl-C to stop");
        let _ = out.flush();
    })
    .map_err(|e| e.to_string())?;
    if let Some(notifier) = notifier {
        let _ = notifier.join();
    }

    let mut totals = [0u64; Status::ALL.len()];
    let mut accepted = 0;
    for report in &reports {
        accepted += report.connections_accepted;
        for (total, count) in totals.iter_mut().zip(report.by_status) {
            *total += count;
        }
    }
    let answered: Vec<String> = Status::ALL
        .iter()
        .zip(totals)
        .filter(|(_, count)| *count > 0)
        .map(|(status, count)| format!("{status} {count}"))
        .collect();
    let per_shard: Vec<String> = reports
        .iter()
        .map(|r| format!("shard {} {}", r.shard, r.connections_accepted))
        .collect();
    // Best effort, like the start-up lines: a server does not fail over its stdout.
    let _ = std::io::stdout().write_all(
        keyward::logging::line(
            keyward::logging::Level::Info,
            format_args!(
                "stopped; {accepted} connections served ({}); answers: {}",
                per_shard.join(", "),
                if answered.is_empty() {
                    "none".to_string()
                } else {
                    answered.join(", ")
                }
            ),
        )
        .as_bytes(),
    );
    Ok(())
}
