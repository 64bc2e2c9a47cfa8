//! `keyward-ctl`: verify a credential against a running server, and the offline key-table tools
//! (generate a key set, build a table from JSON lines, inspect and check a snapshot).

use keyward::outln;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};
use serde_json::json;

use keyward::client::Client;
use keyward::credential::{self, Hasher, KeyId, Parsed, Prefixes};
use keyward::datadir::DataDir;
use keyward::endpoint::Endpoint;
use keyward::keyset;
use keyward::protocol::{Status, VerifyRequest};
use keyward::record::{Cidr, KeyKind, KeyRecord, KeyStatus, UnixSeconds};
use keyward::record_sort::RecordSort;
use keyward::snapshot::{self, Snapshot};
use keyward::table_writer::TableWriter;

#[derive(Parser)]
#[command(
    name = "keyward-ctl",
    version,
    about = "keyward admin client and offline key-table tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Ask a running server whether a credential is valid (exit 0: valid, 1: not valid).
    Verify(VerifyArgs),
    /// Key sets for tests, demos and benchmarks.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Offline key-table (snapshot) tools.
    #[command(subcommand)]
    Table(TableCommand),
    /// Mint a new key on a running server; prints the credential (shown only this once).
    Issue(IssueArgs),
    /// Import foreign keys from a file (one per line, or JSON lines), in batches of up to 1000.
    Import(ImportArgs),
    /// Revoke a key by id or by credential; every shard refuses it before this returns.
    Revoke(RevokeArgs),
    /// Replace a key with a new one (same tenant, scopes, allowlist and expiry unless given).
    Rotate(RotateArgs),
    /// Change a key's name, scopes or address allowlist.
    Update(UpdateArgs),
    /// Show a key's record (never its secret), by id or by credential.
    Inspect(InspectArgs),
    /// List keys, optionally of one tenant, a page at a time.
    List(ListArgs),
    /// Sequence numbers, counts, log size, snapshot age and replication state of a running
    /// server.
    Stats(StatsArgs),
    /// Write a new snapshot now and shorten the delta log.
    Compact(AdminArgs),
    /// A live line per interval from the server's metrics listener: verifies/s by status,
    /// connections, p99 service time, applied sequence (like `redis-cli --stat`).
    Stat(stat::StatArgs),
    /// Revoke a key you hold, over the verify port (no admin token: the key is the proof).
    SelfRevoke {
        /// The key's credential.
        credential: String,
        /// Verify port of the server: HOST:PORT, or unix:/PATH.
        #[arg(long, default_value = "127.0.0.1:7500", value_name = "ADDR")]
        server: Endpoint,
    },
    /// Derived capability tokens: derive, attenuate offline, inspect.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Offline delta-log tools: check a log, cut a damaged one.
    #[command(subcommand)]
    Log(log::LogCommand),
    /// Named admin tokens with a role (read or write): add, remove, list.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// The audit trail of a data directory: check its hash chain, read it.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Cluster nodes: carry the secrets and admin tokens to a new node.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Copy a data directory, with the server running or stopped, into a new directory: files
    /// in the order that keeps the copy consistent (the delta log before the key table), each
    /// fsynced, then the copy checked as a start would check it (docs/DEPLOY.md).
    Backup {
        /// The data directory to back up.
        #[arg(long, default_value = "./keyward-data", value_name = "DIR")]
        data_dir: PathBuf,
        /// Where the copy goes: a new or empty directory (made with mode 0700).
        dest: PathBuf,
    },
    /// Write the man pages and shell completions generated from this CLI into a directory.
    #[command(hide = true)]
    GenerateAssets {
        /// Where `man/` and `completions/` are written.
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Add an admin; prints its new token (shown only this once).
    Add {
        /// A name for the admin (letters, digits, '.', '_', '-'); audit lines carry it.
        name: String,
        /// read: inspect, list, stats, derive; write: everything.
        #[arg(long, value_parser = ["read", "write"])]
        role: String,
        /// Write the token to this file (mode 0600) instead of printing it.
        #[arg(long, value_name = "FILE")]
        token_out: Option<PathBuf>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Remove an admin: its token is refused from its next request on.
    Remove {
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List the admins and their roles (never their tokens).
    List(AdminArgs),
}

#[derive(Args, Clone)]
struct AdminArgs {
    /// Control port of the server.
    #[arg(long, default_value = "127.0.0.1:7501", value_name = "ADDR")]
    control: String,
    /// Data directory whose admin.token to use.
    #[arg(long, default_value = "./keyward-data", value_name = "DIR")]
    data_dir: PathBuf,
    /// File holding the admin token (overrides --data-dir).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Print the server's answer as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct SpecArgs {
    /// Tenant the key belongs to.
    #[arg(long, default_value = "")]
    tenant: String,
    /// A name for people.
    #[arg(long, default_value = "")]
    name: String,
    /// Scopes, comma-separated (e.g. orders:read,orders:write).
    #[arg(long, value_delimiter = ',')]
    scopes: Vec<String>,
    /// Expiry, Unix seconds.
    #[arg(long, value_name = "UNIX")]
    expires: Option<u64>,
    /// Expiry as seconds from now.
    #[arg(long, value_name = "SECS", conflicts_with = "expires")]
    ttl: Option<u64>,
    /// Client-address ranges allowed, comma-separated CIDRs.
    #[arg(long, value_delimiter = ',', value_name = "CIDRS")]
    allow: Vec<Cidr>,
}

impl SpecArgs {
    fn spec(&self) -> keyward::admin::KeySpec {
        keyward::admin::KeySpec {
            tenant: self.tenant.clone(),
            name: self.name.clone(),
            scopes: self.scopes.clone(),
            expires: self.expires,
            ttl_seconds: self.ttl,
            not_before: None,
            allow: self.allow.clone(),
            public: false,
        }
    }
}

#[derive(Args)]
struct IssueArgs {
    #[command(flatten)]
    admin: AdminArgs,
    #[command(flatten)]
    spec: SpecArgs,
    /// Mint with the public prefix.
    #[arg(long)]
    public: bool,
    /// Retrying with the same idempotency key returns the same credential.
    #[arg(long, value_name = "KEY")]
    idempotency_key: Option<String>,
}

#[derive(Args)]
struct ImportArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// File of keys: one raw key per line, or JSON lines as in `table build`.
    file: PathBuf,
    /// Tenant for raw-key lines.
    #[arg(long, default_value = "")]
    tenant: String,
    /// Scopes for raw-key lines, comma-separated.
    #[arg(long, value_delimiter = ',')]
    scopes: Vec<String>,
    /// Keys per IMPORT request (1 to 1000).
    #[arg(long, default_value_t = 1000)]
    batch: usize,
}

#[derive(Args)]
struct RevokeArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// Key id, or the credential itself.
    key: String,
    /// Why, for the log.
    #[arg(long, default_value = "")]
    reason: String,
}

#[derive(Args)]
struct RotateArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// Key id.
    id: u64,
    /// Keep the old key valid this many seconds; without it the old key is revoked at once.
    #[arg(long, value_name = "SECS")]
    grace: Option<u64>,
    /// New scopes, comma-separated.
    #[arg(long, value_delimiter = ',')]
    scopes: Option<Vec<String>>,
    /// New expiry, Unix seconds.
    #[arg(long, value_name = "UNIX")]
    expires: Option<u64>,
}

#[derive(Args)]
struct UpdateArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// Key id.
    id: u64,
    #[arg(long)]
    name: Option<String>,
    /// New scopes, comma-separated (replace the old ones).
    #[arg(long, value_delimiter = ',')]
    scopes: Option<Vec<String>>,
    /// New allowlist, comma-separated CIDRs (replaces the old one).
    #[arg(long, value_delimiter = ',', value_name = "CIDRS")]
    allow: Option<Vec<Cidr>>,
}

#[derive(Args)]
struct InspectArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// Key id, or the credential itself.
    key: String,
}

#[derive(Args)]
struct StatsArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// Also a digest of every key's state, to compare nodes of a cluster (reads the whole
    /// table: about a second per ten million keys).
    #[arg(long)]
    digest: bool,
}

#[derive(Args)]
struct ListArgs {
    #[command(flatten)]
    admin: AdminArgs,
    #[arg(long)]
    tenant: Option<String>,
    /// Start after this key id (the `next` of the previous page).
    #[arg(long)]
    after: Option<u64>,
    /// Keys per page (1 to 1000).
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Follow `next` until the last page.
    #[arg(long)]
    all: bool,
    /// Only keys not used for this long (e.g. 90d, 12h, 2w): last used before then, or never
    /// used and created before then.
    #[arg(long, value_name = "AGE", value_parser = parse_age_arg)]
    unused_since: Option<u64>,
}

fn parse_age_arg(text: &str) -> Result<u64, String> {
    audit::parse_age(text).ok_or_else(|| format!("{text:?}: give an age such as 90d, 12h, 30m, 2w"))
}

#[derive(Args)]
struct VerifyArgs {
    /// The credential: a keyward key, an imported key or a derived token.
    credential: String,
    /// Verify port of the server: HOST:PORT, or unix:/PATH.
    #[arg(long, default_value = "127.0.0.1:7500", value_name = "ADDR")]
    server: Endpoint,
    /// Scope the key must carry, e.g. orders:read.
    #[arg(long)]
    scope: Option<String>,
    /// Address of the end client, checked against the key's allowlist.
    #[arg(long, value_name = "ADDR")]
    ip: Option<IpAddr>,
    /// Tenant the key must belong to.
    #[arg(long)]
    tenant: Option<String>,
    /// Print the answer as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Clone)]
struct PrefixArgs {
    /// Prefix of secret keys (must match the server's --prefix).
    #[arg(long, default_value = "kw")]
    prefix: String,
    /// Prefix of public keys (must match the server's --public-prefix).
    #[arg(long, default_value = "kwpub")]
    public_prefix: String,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Mint N keys into a data directory's table and write their plaintext credentials, each
    /// with the status a plain VERIFY must return, to a key file.
    Generate {
        /// Data directory (created if missing; the server must not be running on it).
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// How many credentials to write (about 1 in 20 is deliberately unknown to the table).
        #[arg(long, value_name = "N")]
        count: usize,
        /// Where to write the credentials (mode 0600): `credential<TAB>status` per line.
        #[arg(long, value_name = "FILE")]
        out_keys: PathBuf,
        /// Replace a table that already holds keys.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        prefixes: PrefixArgs,
    },
}

#[derive(Subcommand)]
enum TableCommand {
    /// Build a data directory's table from JSON lines (one key per line; see docs/FORMATS.md).
    Build {
        /// Data directory (created if missing; the server must not be running on it).
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// The JSON-lines file.
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
        /// Replace a table that already holds keys.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        prefixes: PrefixArgs,
    },
    /// Show a snapshot's header, counts and first records (never secrets).
    Inspect {
        /// A snapshot file, or a data directory.
        file: PathBuf,
        /// How many records to list.
        #[arg(long, default_value_t = 10)]
        records: usize,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Where a snapshot's bytes go (bytes per key by section), the hash tables' load factor and
    /// probe lengths, and the interned names.
    Stats {
        /// A snapshot file, or a data directory.
        file: PathBuf,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rewrite an older-format snapshot in the current format, keeping every key, its sequence
    /// and creation time (stop the server first). A current snapshot is left as it is.
    Upgrade {
        /// A snapshot file, or a data directory.
        file: PathBuf,
    },
    /// Fully validate a snapshot (exit 0: good, 1: refused, with the reason).
    Check {
        /// A snapshot file, or a data directory.
        file: PathBuf,
    },
}

/// Exit code for "the answer is no" (invalid credential, bad snapshot).
const EXIT_NO: u8 = 1;
/// Exit code for usage and environment errors.
const EXIT_ERROR: u8 = 2;

enum Failure {
    No(String),
    Error(String),
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(error: E) -> Failure {
        Failure::Error(error.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match try_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::No(message)) => {
            if !message.is_empty() {
                eprintln!("keyward-ctl: {message}");
            }
            ExitCode::from(EXIT_NO)
        }
        Err(Failure::Error(message)) => {
            eprintln!("keyward-ctl: error: {message}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn try_main(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::GenerateAssets { dir } => keyward::assets::generate(Cli::command(), &dir)
            .map_err(|e| Failure::Error(format!("{}: {e}", dir.display()))),
        Command::Verify(args) => verify(args),
        Command::Keys(KeysCommand::Generate {
            data_dir,
            count,
            out_keys,
            force,
            prefixes,
        }) => generate(&data_dir, count, &out_keys, force, &prefixes),
        Command::Table(TableCommand::Build {
            data_dir,
            from,
            force,
            prefixes,
        }) => build(&data_dir, &from, force, &prefixes),
        Command::Table(TableCommand::Inspect {
            file,
            records,
            json,
        }) => inspect(&file, records, json),
        Command::Table(TableCommand::Stats { file, json }) => table_stats(&file, json),
        Command::Table(TableCommand::Check { file }) => check(&file),
        Command::Table(TableCommand::Upgrade { file }) => upgrade(&file),
        Command::Issue(args) => admin::issue(args),
        Command::Import(args) => admin::import(args),
        Command::Revoke(args) => admin::revoke(args),
        Command::Rotate(args) => admin::rotate(args),
        Command::Update(args) => admin::update(args),
        Command::Inspect(args) => admin::inspect(args),
        Command::List(args) => admin::list(args),
        Command::Stats(args) => admin::stats(args),
        Command::Compact(args) => admin::compact(args),
        Command::Stat(args) => stat::run(args),
        Command::Token(command) => token::run(command),
        Command::Log(command) => log::run(command),
        Command::Admin(command) => admin::admins(command),
        Command::Audit(command) => audit::run(command),
        Command::Cluster(command) => cluster::run(command),
        Command::Backup { data_dir, dest } => backup(&data_dir, &dest),
        Command::SelfRevoke { credential, server } => self_revoke(&credential, &server),
    }
}

mod admin;
mod audit;

fn backup(data_dir: &Path, dest: &Path) -> Result<(), Failure> {
    let report = keyward::backup::backup(data_dir, dest).map_err(Failure::Error)?;
    outln!(
        "backed up {} to {}: {} files, {} bytes; key table at sequence {} ({} records), changes through sequence {}",
        data_dir.display(),
        dest.display(),
        report.files.len(),
        report.bytes,
        report.snapshot_sequence,
        report.snapshot_records,
        report.last_sequence
    );
    if report.cut_bytes > 0 {
        outln!(
            "a change being written during the copy was left out ({} bytes; it was not yet acknowledged)",
            report.cut_bytes
        );
    }
    outln!("it holds the secrets every key depends on: keep it as safe as the server");
    Ok(())
}
mod cluster;
mod log;
mod stat;
mod token;

fn verify(args: VerifyArgs) -> Result<(), Failure> {
    let mut client = Client::connect_to(&args.server)
        .map_err(|e| Failure::Error(format!("cannot reach {}: {e}", args.server)))?;
    client.set_timeout(Some(std::time::Duration::from_secs(10)))?;
    let request = VerifyRequest {
        credential: args.credential.as_bytes(),
        scope: args.scope.as_deref().map(str::as_bytes),
        tenant: args.tenant.as_deref().map(str::as_bytes),
        address: args.ip,
    };
    let result = client.verify(&request)?;
    if args.json {
        let grant = result.grant.as_ref().map(|g| {
            json!({
                "key_id": g.key_id,
                "tenant": g.tenant,
                "scopes": g.scopes,
                "expires": g.expires.map(|e| e.0),
                "claims": g.claims.iter().cloned().collect::<BTreeMap<_, _>>(),
            })
        });
        let mut value =
            json!({ "status": result.status.name(), "valid": result.status == Status::Valid });
        if let Some(grant) = grant {
            value["key"] = grant;
        }
        outln!("{value}");
    } else if let Some(grant) = &result.grant {
        let expires = grant
            .expires
            .map_or("never".to_string(), |e| e.0.to_string());
        outln!(
            "valid: key {} tenant {:?} scopes [{}] expires {}",
            grant.key_id,
            grant.tenant,
            grant.scopes.join(", "),
            expires
        );
    } else {
        outln!("{}", result.status);
    }
    if result.status == Status::Valid {
        Ok(())
    } else {
        Err(Failure::No(String::new()))
    }
}

fn self_revoke(credential: &str, server: &Endpoint) -> Result<(), Failure> {
    let mut client = Client::connect_to(server)
        .map_err(|e| Failure::Error(format!("cannot reach {server}: {e}")))?;
    client.set_timeout(Some(std::time::Duration::from_secs(30)))?;
    match client.revoke_self(credential.as_bytes())? {
        Status::Revoked => {
            outln!("revoked");
            Ok(())
        }
        other => Err(Failure::No(format!(
            "not revoked: the credential is {other}"
        ))),
    }
}

fn prefixes(args: &PrefixArgs) -> Result<Prefixes, Failure> {
    Ok(Prefixes::new(&args.prefix, &args.public_prefix)?)
}

/// Refuses to replace a table holding keys unless forced.
/// The sequence a replacement table must carry: every change already logged for the old table
/// is then older than the new snapshot, so a server never replays it over the new keys (even if
/// it crashed before the log is cleared), and new changes continue the numbering.
fn replaced_sequence(data_dir: &DataDir) -> Result<u64, Failure> {
    let current = existing_table(data_dir)?.map_or(0, |(_, sequence)| sequence);
    let log_path = data_dir.path().join(keyward::delta::FILE_NAME);
    if !log_path.exists() {
        return Ok(current);
    }
    let (_, replay) = keyward::delta::DeltaLog::open(&log_path, current)?;
    Ok(replay.last_sequence.max(current))
}

/// The record count and sequence of the data directory's table, if it has one: in the current
/// format or an older one. A table that cannot be read is an error, so that no command replaces
/// keys it could not see.
fn existing_table(data_dir: &DataDir) -> Result<Option<(u64, u64)>, Failure> {
    let path = data_dir.snapshot_path();
    if !path.exists() {
        return Ok(None);
    }
    match Snapshot::open(&path) {
        Ok(table) => Ok(Some((table.header().record_count, table.header().sequence))),
        Err(snapshot::SnapshotError::OldVersion { .. }) => {
            let old = snapshot::v1::TableV1::open(&path)?;
            Ok(Some((old.header.record_count, old.header.sequence)))
        }
        Err(error) => Err(Failure::Error(format!(
            "{error}; the table there cannot be read, so nothing was replaced (move the file away to start afresh)"
        ))),
    }
}

fn guard_existing(data_dir: &DataDir, force: bool) -> Result<(), Failure> {
    let existing = existing_table(data_dir)?.map_or(0, |(records, _)| records);
    if existing > 0 && !force {
        return Err(Failure::Error(format!(
            "{} already holds {existing} keys; pass --force to replace them",
            data_dir.snapshot_path().display()
        )));
    }
    Ok(())
}

fn generate(
    data_dir: &Path,
    count: usize,
    out_keys: &Path,
    force: bool,
    prefix_args: &PrefixArgs,
) -> Result<(), Failure> {
    let prefixes = prefixes(prefix_args)?;
    if count == 0 || count > snapshot::RECORDS_MAX {
        return Err(Failure::Error(format!(
            "--count must be 1 to {}",
            snapshot::RECORDS_MAX
        )));
    }
    let data_dir = DataDir::open_or_create(data_dir)?;
    guard_existing(&data_dir, force)?;
    let hasher = Hasher::new(data_dir.pepper());
    eprintln!("keyward-ctl: minting {count} keys…");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode_private()
        .open(out_keys)
        .map_err(|e| Failure::Error(format!("{}: {e}", out_keys.display())))?;
    let mut key_file = BufWriter::new(file);
    keyset::write_key_file_header(&mut key_file)?;
    // One key at a time: the table is written in bounded memory (table_writer.rs), and the
    // key file line by line.
    let mut table = TableWriter::create(
        &data_dir.snapshot_path(),
        keyset::generated_tenants(),
        keyset::generated_scopes(),
    )?;
    let mut by_status: BTreeMap<Status, usize> = BTreeMap::new();
    let (mut records, mut credentials) = (0usize, 0usize);
    let mut failure: Option<Failure> = None;
    keyset::generate_each(
        count,
        &hasher,
        &prefixes,
        UnixSeconds::now(),
        |record, key| {
            if failure.is_some() {
                return;
            }
            let has_record = record.is_some();
            let written = record
                .map(|record| table.push(&record).map_err(Failure::from))
                .unwrap_or(Ok(()))
                .and_then(|()| keyset::write_key_line(&mut key_file, &key).map_err(Failure::from));
            match written {
                Ok(()) => {
                    records += usize::from(has_record);
                    credentials += 1;
                    *by_status.entry(key.expected).or_default() += 1;
                }
                Err(error) => failure = Some(error),
            }
        },
    );
    if let Some(error) = failure {
        return Err(error);
    }
    let bytes = table.finish(replaced_sequence(&data_dir)?, UnixSeconds::now())?;
    key_file.flush()?;

    let mix: Vec<String> = by_status.iter().map(|(s, n)| format!("{s} {n}")).collect();
    outln!(
        "wrote {records} keys to {} ({bytes} bytes) and {credentials} credentials to {}",
        data_dir.snapshot_path().display(),
        out_keys.display()
    );
    outln!("expected answers: {}", mix.join(", "));
    Ok(())
}

trait ModePrivate {
    fn mode_private(&mut self) -> &mut Self;
}

impl ModePrivate for std::fs::OpenOptions {
    fn mode_private(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o600)
    }
}

/// One line of a records file.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordLine {
    credential: String,
    id: Option<u64>,
    #[serde(default)]
    tenant: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    scopes: Vec<String>,
    not_before: Option<u64>,
    expires: Option<u64>,
    #[serde(default)]
    revoked: bool,
    #[serde(default)]
    allow: Vec<Cidr>,
}

fn build(
    data_dir: &Path,
    from: &Path,
    force: bool,
    prefix_args: &PrefixArgs,
) -> Result<(), Failure> {
    let prefixes = prefixes(prefix_args)?;
    let input = File::open(from).map_err(|e| Failure::Error(format!("{}: {e}", from.display())))?;
    let data_dir = DataDir::open_or_create(data_dir)?;
    guard_existing(&data_dir, force)?;
    let hasher = Hasher::new(data_dir.pepper());
    let now = UnixSeconds::now();
    // Bounded memory at any input size: records are sorted by id in runs on disk beside the
    // table (record_sort.rs); imported keys without an id wait in their own sort, in input
    // order, for the ids above every other.
    let mut sorted = RecordSort::new(data_dir.path());
    let mut without_id = RecordSort::new(data_dir.path());
    let mut without_id_count = 0u64;
    let mut max_id = 0u64;
    let mut count = 0u64;
    for (number, line) in BufReader::new(input).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let at = |message: String| {
            Failure::Error(format!("{}:{}: {message}", from.display(), number + 1))
        };
        let parsed: RecordLine = serde_json::from_str(&line).map_err(|e| at(e.to_string()))?;
        let mut record = KeyRecord {
            id: KeyId(parsed.id.unwrap_or(0)),
            kind: KeyKind::Native,
            hash: [0; 32],
            tenant: parsed.tenant,
            name: parsed.name,
            scopes: parsed.scopes,
            created: now,
            not_before: UnixSeconds(parsed.not_before.unwrap_or(now.0)),
            expires: parsed.expires.map(UnixSeconds),
            status: if parsed.revoked {
                KeyStatus::Revoked
            } else {
                KeyStatus::Active
            },
            visibility: credential::Visibility::Secret,
            allow: parsed.allow,
            idempotency_key: String::new(),
        };
        match credential::parse(parsed.credential.as_bytes(), &prefixes) {
            Parsed::Native(native) => {
                if parsed.id.is_some_and(|id| id != native.key_id.0) {
                    return Err(at(format!(
                        "id {} differs from the credential's id {}",
                        record.id, native.key_id
                    )));
                }
                record.id = native.key_id;
                record.visibility = native.visibility;
                record.hash = hasher.native(native.key_id, &native.secret);
            }
            Parsed::Malformed(error) => return Err(at(format!("credential: {error}"))),
            Parsed::Other => {
                let length = parsed.credential.len();
                if !(credential::IMPORTED_BYTES_MIN..=credential::IMPORTED_BYTES_MAX)
                    .contains(&length)
                {
                    return Err(at(format!(
                        "imported key must be {} to {} bytes, not {length}",
                        credential::IMPORTED_BYTES_MIN,
                        credential::IMPORTED_BYTES_MAX
                    )));
                }
                record.kind = KeyKind::Imported;
                record.hash = hasher.imported(parsed.credential.as_bytes());
            }
        }
        let needs_id = parsed.id.is_none() && record.kind == KeyKind::Imported;
        if needs_id {
            // A placeholder that keeps input order; the real id is given after the last line.
            without_id_count += 1;
            record.id = KeyId(without_id_count);
        }
        record.validate().map_err(|e| at(e.to_string()))?;
        count += 1;
        if needs_id {
            without_id.push(record)?;
        } else {
            max_id = max_id.max(record.id.0);
            sorted.push(record)?;
        }
    }
    let (mut tenants, mut scopes) = sorted.names();
    let (more_tenants, more_scopes) = without_id.names();
    tenants.extend(more_tenants);
    scopes.extend(more_scopes);
    let mut table = TableWriter::create(&data_dir.snapshot_path(), tenants, scopes)?;
    let mut sorted = sorted.finish()?;
    while let Some(record) = sorted.next_record()? {
        table.push(&record)?;
    }
    let mut without_id = without_id.finish()?;
    while let Some(mut record) = without_id.next_record()? {
        record.id = KeyId(max_id + record.id.0);
        table.push(&record)?;
    }
    let bytes = table.finish(replaced_sequence(&data_dir)?, now)?;
    outln!(
        "wrote {count} keys to {} ({bytes} bytes)",
        data_dir.snapshot_path().display(),
    );
    Ok(())
}

fn snapshot_path(file: &Path) -> PathBuf {
    if file.is_dir() {
        file.join(snapshot::FILE_NAME)
    } else {
        file.to_path_buf()
    }
}

fn table_stats(file: &Path, as_json: bool) -> Result<(), Failure> {
    let snapshot = Snapshot::open(&snapshot_path(file)).map_err(|e| Failure::No(e.to_string()))?;
    let stats = snapshot.stats();
    if as_json {
        let mut value = serde_json::to_value(&stats)?;
        value["path"] = json!(snapshot.path());
        value["sections"] = stats
            .sections
            .iter()
            .map(|(name, bytes)| (name.to_string(), json!(bytes)))
            .collect::<serde_json::Map<_, _>>()
            .into();
        outln!("{value}");
        return Ok(());
    }
    let per_key = |bytes: u64| bytes as f64 / stats.records.max(1) as f64;
    outln!(
        "{}: {} records, {} bytes, {:.1} bytes per key",
        snapshot.path().display(),
        stats.records,
        stats.file_bytes,
        per_key(stats.file_bytes)
    );
    outln!(
        "{:<18} {:>14} {:>10} {:>7}",
        "section",
        "bytes",
        "per key",
        "share"
    );
    for (name, bytes) in &stats.sections {
        outln!(
            "{name:<18} {bytes:>14} {:>10.1} {:>6.1}%",
            per_key(*bytes),
            100.0 * *bytes as f64 / stats.file_bytes.max(1) as f64
        );
    }
    outln!(
        "id index: load factor {:.3}, mean probe {:.3} buckets (cache lines); fingerprint index: load factor {:.3}",
        stats.id_load_factor, stats.probe_length_mean, stats.fingerprint_load_factor
    );
    let histogram: Vec<String> = stats
        .probe_lengths
        .iter()
        .enumerate()
        .filter(|(_, count)| **count > 0)
        .map(|(index, count)| {
            let last = index + 1 == stats.probe_lengths.len();
            format!("{}{}: {count}", index + 1, if last { "+" } else { "" })
        })
        .collect();
    outln!(
        "probe lengths (buckets read: keys): {}",
        histogram.join(", ")
    );
    outln!(
        "interned: {} tenants, {} scopes, {} scope sets ({} answered by their bitmap alone), {} allowlists, {} policies",
        stats.tenants,
        stats.scopes,
        stats.scope_sets,
        stats.scope_sets_bitmap_only,
        stats.allowlists,
        stats.policies
    );
    Ok(())
}

fn inspect(file: &Path, limit: usize, as_json: bool) -> Result<(), Failure> {
    let snapshot = Snapshot::open(&snapshot_path(file)).map_err(|e| Failure::No(e.to_string()))?;
    let header = snapshot.header();
    let now = UnixSeconds::now();
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    let mut listed = Vec::new();
    for record in snapshot.records() {
        let state = match record.status {
            KeyStatus::Revoked => "revoked",
            KeyStatus::Active if record.expires.is_some_and(|e| now >= e) => "expired",
            KeyStatus::Active if now < record.not_before => "not_yet_valid",
            KeyStatus::Active => "active",
        };
        *counts.entry(state).or_default() += 1;
        *counts
            .entry(if record.kind == KeyKind::Imported {
                "imported"
            } else {
                "native"
            })
            .or_default() += 1;
        if listed.len() < limit {
            listed.push(record);
        }
    }
    let body = snapshot.body();
    if as_json {
        let records: Vec<_> = listed
            .iter()
            .map(|r| {
                json!({
                    "id": r.id.0, "kind": r.kind, "tenant": r.tenant, "name": r.name,
                    "scopes": r.scopes, "created": r.created.0, "not_before": r.not_before.0,
                    "expires": r.expires.map(|e| e.0), "status": r.status,
                    "visibility": format!("{:?}", r.visibility).to_lowercase(), "allow": r.allow,
                })
            })
            .collect();
        let value = json!({
            "path": snapshot.path(),
            "format_version": snapshot::FORMAT_VERSION,
            "sequence": header.sequence,
            "records": header.record_count,
            "body_bytes": header.body_bytes,
            "created": header.created.0,
            "tenants": body.tenants.len(),
            "scopes": body.scopes.len(),
            "counts": counts,
            "first_records": records,
        });
        outln!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    outln!("snapshot       {}", snapshot.path().display());
    outln!("format         version {}", snapshot::FORMAT_VERSION);
    outln!("sequence       {}", header.sequence);
    outln!("records        {}", header.record_count);
    outln!(
        "size           {} bytes (header {} + body {})",
        header.body_bytes + snapshot::HEADER_BYTES as u64,
        snapshot::HEADER_BYTES,
        header.body_bytes
    );
    outln!("created        {} (unix seconds)", header.created.0);
    outln!(
        "dictionaries   {} tenants, {} scopes",
        body.tenants.len(),
        body.scopes.len()
    );
    let summary: Vec<String> = counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
    outln!("counts         {}", summary.join(", "));
    for record in listed {
        let expires = record.expires.map_or("never".into(), |e| e.0.to_string());
        outln!(
            "  key {:>8}  {:<8} {:<7} tenant {:?} scopes [{}] expires {} {:?}",
            record.id.0,
            format!("{:?}", record.kind).to_lowercase(),
            format!("{:?}", record.status).to_lowercase(),
            record.tenant,
            record.scopes.join(","),
            expires,
            record.name
        );
    }
    Ok(())
}

fn upgrade(file: &Path) -> Result<(), Failure> {
    // A data directory is locked against a running server; a lone file is the caller's.
    let _lock = if file.is_dir() {
        Some(DataDir::open_existing(file)?)
    } else {
        None
    };
    let path = snapshot_path(file);
    match Snapshot::open(&path) {
        Ok(current) => {
            outln!(
                "{}: already format version {}; nothing to do",
                path.display(),
                snapshot::FORMAT_VERSION
            );
            drop(current);
            return Ok(());
        }
        Err(snapshot::SnapshotError::OldVersion { .. }) => {}
        Err(error) => return Err(Failure::No(error.to_string())),
    }
    let old = snapshot::v1::TableV1::open(&path).map_err(|e| Failure::No(e.to_string()))?;
    let before = std::fs::metadata(old.path()).map_or(0, |m| m.len());
    let mut table = TableWriter::create(&path, old.tenants(), old.scopes())?;
    let mut count = 0u64;
    for record in old.records() {
        table.push(&record)?;
        count += 1;
    }
    let bytes = table.finish(old.header.sequence, old.header.created)?;
    drop(old);
    // The new file is checked as the server will check it before it is called done.
    Snapshot::open(&path).map_err(|e| Failure::No(e.to_string()))?;
    outln!(
        "{}: upgraded {count} keys from format version {} to {} ({before} bytes before, {bytes} after)",
        path.display(),
        snapshot::v1::FORMAT_VERSION,
        snapshot::FORMAT_VERSION
    );
    Ok(())
}

fn check(file: &Path) -> Result<(), Failure> {
    let path = snapshot_path(file);
    let snapshot = Snapshot::open(&path).map_err(|e| Failure::No(e.to_string()))?;
    snapshot
        .check_lookups()
        .map_err(|e| Failure::No(format!("{}: {e}", path.display())))?;
    outln!(
        "ok: {} records, sequence {}, {} body bytes, checksums and invariants hold, every key is found",
        snapshot.header().record_count,
        snapshot.header().sequence,
        snapshot.header().body_bytes
    );
    Ok(())
}
