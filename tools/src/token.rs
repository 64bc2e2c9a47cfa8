//! `keyward-ctl token`: mint derived tokens (self-service with the parent key, or as an admin),
//! narrow them offline, and look inside them.

use keyward::outln;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use keyward::admin::opcode;
use keyward::client::Client;
use keyward::endpoint::Endpoint;
use keyward::protocol::{DeriveRequest, DeriveResult};
use keyward::record::{Cidr, UnixSeconds};
use keyward::token::{Caveat, Token};

use super::{AdminArgs, Failure};

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Mint a short-lived token from a key: with the key itself (--key, verify port), or as an
    /// admin by key id (--id, control port). Prints the token.
    Derive(DeriveArgs),
    /// Narrow a token offline (no server needed): the result can only do less.
    Attenuate(AttenuateArgs),
    /// Show a token's parent and caveats (offline; does not check its signature).
    Inspect {
        token: String,
        /// Prefix of derived tokens.
        #[arg(long, default_value = "kwt")]
        prefix: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct Narrowing {
    /// Lifetime in seconds from now.
    #[arg(long, value_name = "SECS")]
    ttl: Option<u64>,
    /// Only these scopes, comma-separated (--scope works too).
    #[arg(long, alias = "scope", value_delimiter = ',')]
    scopes: Vec<String>,
    /// Only for this tenant.
    #[arg(long)]
    tenant: Option<String>,
    /// Only from these client-address ranges, comma-separated CIDRs (each is required).
    #[arg(long, value_delimiter = ',', value_name = "CIDRS")]
    allow: Vec<Cidr>,
    /// An opaque claim returned on every valid verify: KEY=VALUE (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    claim: Vec<String>,
}

impl Narrowing {
    fn claims(&self) -> Result<Vec<(String, String)>, Failure> {
        self.claim
            .iter()
            .map(|c| {
                c.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .ok_or_else(|| Failure::Error(format!("--claim {c:?}: expected KEY=VALUE")))
            })
            .collect()
    }
}

#[derive(Args)]
pub struct DeriveArgs {
    /// The parent key's credential (self-service, over the verify port).
    #[arg(long, value_name = "CREDENTIAL", conflicts_with = "id")]
    key: Option<String>,
    /// The parent key's id (admin, over the control port).
    #[arg(long, value_name = "ID")]
    id: Option<u64>,
    /// Verify port, for --key: HOST:PORT, or unix:/PATH.
    #[arg(long, default_value = "127.0.0.1:7500", value_name = "ADDR")]
    server: Endpoint,
    #[command(flatten)]
    narrowing: Narrowing,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(Args)]
pub struct AttenuateArgs {
    token: String,
    #[command(flatten)]
    narrowing: Narrowing,
    /// Invalid before this Unix time.
    #[arg(long, value_name = "UNIX")]
    not_before: Option<u64>,
    /// Prefix of derived tokens.
    #[arg(long, default_value = "kwt")]
    prefix: String,
}

pub fn run(command: TokenCommand) -> Result<(), Failure> {
    match command {
        TokenCommand::Derive(args) => derive(args),
        TokenCommand::Attenuate(args) => attenuate(args),
        TokenCommand::Inspect {
            token,
            prefix,
            json,
        } => inspect(&token, &prefix, json),
    }
}

fn derive(args: DeriveArgs) -> Result<(), Failure> {
    let claims = args.narrowing.claims()?;
    let (token, expires) = match (&args.key, args.id) {
        (Some(key), None) => {
            let ranges: Vec<([u8; 16], u8)> = args
                .narrowing
                .allow
                .iter()
                .map(|c| (c.network, c.prefix_len))
                .collect();
            let request = DeriveRequest {
                credential: key.as_bytes(),
                ttl_seconds: u32::try_from(args.narrowing.ttl.unwrap_or(0))
                    .map_err(|_| Failure::Error("--ttl is too large".into()))?,
                scopes: args.narrowing.scopes.iter().map(|s| s.as_bytes()).collect(),
                tenant: args.narrowing.tenant.as_deref().map(str::as_bytes),
                ranges,
                claims: claims
                    .iter()
                    .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
                    .collect(),
            };
            let mut client = Client::connect_to(&args.server)
                .map_err(|e| Failure::Error(format!("cannot reach {}: {e}", args.server)))?;
            client.set_timeout(Some(Duration::from_secs(10)))?;
            match client.derive(&request)? {
                DeriveResult::Minted { token, expires } => (token, expires.0),
                DeriveResult::Refused { status, message } => {
                    return Err(Failure::No(format!("refused ({status}): {message}")))
                }
            }
        }
        (None, Some(id)) => {
            let request = keyward::admin::DeriveRequest {
                parent_id: id,
                ttl_seconds: args.narrowing.ttl,
                scopes: args.narrowing.scopes.clone(),
                tenant: args.narrowing.tenant.clone(),
                allow: args.narrowing.allow.clone(),
                claims: claims.into_iter().collect(),
            };
            let answer = super::admin::call(&args.admin, opcode::DERIVE, &request)?;
            (
                answer["token"].as_str().unwrap_or_default().to_string(),
                answer["expires"].as_u64().unwrap_or(0),
            )
        }
        _ => {
            return Err(Failure::Error(
                "give --key CREDENTIAL (self-service) or --id ID (admin)".into(),
            ))
        }
    };
    if args.admin.json {
        outln!("{}", json!({ "token": token, "expires": expires }));
    } else {
        outln!("{token}");
        eprintln!("expires {expires} (unix seconds)");
    }
    Ok(())
}

fn parse(token: &str, prefix: &str) -> Result<Token, Failure> {
    match Token::parse(token.as_bytes(), prefix) {
        Some(Ok(token)) => Ok(token),
        Some(Err(error)) => Err(Failure::Error(format!("not a valid token: {error}"))),
        None => Err(Failure::Error(format!(
            "not a token: it does not start with {prefix}_"
        ))),
    }
}

fn attenuate(args: AttenuateArgs) -> Result<(), Failure> {
    let mut token = parse(&args.token, &args.prefix)?;
    let mut caveats = Vec::new();
    if let Some(ttl) = args.narrowing.ttl {
        caveats.push(Caveat::Expires(UnixSeconds(
            UnixSeconds::now().0.saturating_add(ttl),
        )));
    }
    if let Some(not_before) = args.not_before {
        caveats.push(Caveat::NotBefore(UnixSeconds(not_before)));
    }
    if !args.narrowing.scopes.is_empty() {
        caveats.push(Caveat::Scopes(args.narrowing.scopes.clone()));
    }
    if let Some(tenant) = &args.narrowing.tenant {
        caveats.push(Caveat::Tenant(tenant.clone()));
    }
    caveats.extend(args.narrowing.allow.iter().map(|r| Caveat::Address(*r)));
    caveats.extend(
        args.narrowing
            .claims()?
            .into_iter()
            .map(|(k, v)| Caveat::Claim(k, v)),
    );
    if caveats.is_empty() {
        return Err(Failure::Error(
            "nothing to add: give --ttl, --scopes, --tenant, --allow, --claim or --not-before"
                .into(),
        ));
    }
    for caveat in caveats {
        token = token
            .attenuate(caveat)
            .map_err(|e| Failure::Error(e.to_string()))?;
    }
    let text = token.encode(&args.prefix);
    if text.len() > keyward::token::TOKEN_TEXT_BYTES_MAX {
        return Err(Failure::Error(
            "the token would be longer than 2048 characters".into(),
        ));
    }
    outln!("{text}");
    Ok(())
}

fn caveat_json(caveat: &Caveat) -> Value {
    match caveat {
        Caveat::Expires(t) => json!({ "expires": t.0 }),
        Caveat::NotBefore(t) => json!({ "not_before": t.0 }),
        Caveat::Scopes(s) => json!({ "scopes": s }),
        Caveat::Tenant(t) => json!({ "tenant": t }),
        Caveat::Address(r) => json!({ "allow": r.to_string() }),
        Caveat::Claim(k, v) => json!({ "claim": { k: v } }),
    }
}

fn inspect(text: &str, prefix: &str, as_json: bool) -> Result<(), Failure> {
    let token = parse(text, prefix)?;
    let caveats: Vec<Value> = token.caveats.iter().map(caveat_json).collect();
    if as_json {
        outln!(
            "{}",
            json!({ "parent": token.parent.0, "caveats": caveats })
        );
    } else {
        outln!("parent key {}", token.parent);
        for caveat in caveats {
            outln!("  {caveat}");
        }
        outln!("(offline view: the server checks the signature and the parent when verifying)");
    }
    Ok(())
}
