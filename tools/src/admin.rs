//! The admin commands: each one request (or a few) to the control port.

use keyward::outln;
use std::io::{BufRead, BufReader};

use serde_json::{json, Value};

use keyward::admin::{
    opcode, AdminClient, Empty, ImportItem, ImportRequest, InspectRequest, IssueRequest,
    ListRequest, RevokeRequest, RotateRequest, UpdateRequest, IMPORT_ITEMS_MAX,
};
use keyward::record::UnixSeconds;

use super::{
    AdminArgs, AdminCommand, Failure, ImportArgs, InspectArgs, IssueArgs, ListArgs, RevokeArgs,
    RotateArgs, StatsArgs, UpdateArgs,
};

fn connect(args: &AdminArgs) -> Result<AdminClient, Failure> {
    let token_path = args
        .token_file
        .clone()
        .unwrap_or_else(|| args.data_dir.join(keyward::datadir::ADMIN_TOKEN_FILE));
    let token = std::fs::read_to_string(&token_path).map_err(|e| {
        Failure::Error(format!(
            "cannot read the admin token from {}: {e} (pass --data-dir or --token-file)",
            token_path.display()
        ))
    })?;
    AdminClient::connect(&args.control, token.trim()).map_err(|e| {
        Failure::Error(format!(
            "cannot reach the control port {}: {e}",
            args.control
        ))
    })
}

pub fn call(args: &AdminArgs, op: u8, request: &impl serde::Serialize) -> Result<Value, Failure> {
    connect(args)?
        .call(op, request)
        .map_err(|e| Failure::Error(e.to_string()))
}

fn key_line(key: &Value) -> String {
    let expires = key["expires"]
        .as_u64()
        .map_or("never".to_string(), |e| e.to_string());
    let scopes: Vec<&str> = key["scopes"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let usage = match key["usage"]["last_used"].as_u64() {
        Some(last) => format!(
            "last used {} ({} valid, {} refused)",
            keyward::audit::rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_secs(last)),
            key["usage"]["valid"],
            key["usage"]["refused"]
        ),
        None => "never used".to_string(),
    };
    format!(
        "key {} {} {} tenant {:?} scopes [{}] expires {} name {:?} {usage}",
        key["id"],
        key["kind"].as_str().unwrap_or("?"),
        key["status"].as_str().unwrap_or("?"),
        key["tenant"].as_str().unwrap_or(""),
        scopes.join(","),
        expires,
        key["name"].as_str().unwrap_or("")
    )
}

fn print(args: &AdminArgs, value: &Value, human: impl FnOnce(&Value)) {
    if args.json {
        outln!("{value}");
    } else {
        human(value);
    }
}

/// `KEY` is a key id or a credential.
fn id_or_credential(key: &str) -> (Option<u64>, Option<String>) {
    match key.parse::<u64>() {
        Ok(id) => (Some(id), None),
        Err(_) => (None, Some(key.to_string())),
    }
}

pub fn issue(args: IssueArgs) -> Result<(), Failure> {
    let mut spec = args.spec.spec();
    spec.public = args.public;
    let request = IssueRequest {
        spec,
        idempotency_key: args.idempotency_key,
    };
    let answer = call(&args.admin, opcode::ISSUE, &request)?;
    print(&args.admin, &answer, |a| {
        outln!("{}", a["credential"].as_str().unwrap_or(""));
        eprintln!(
            "{}{}",
            key_line(&a["key"]),
            if a["replayed"] == true {
                " (existing key for this idempotency key)"
            } else {
                ""
            }
        );
        eprintln!("store the credential now: keyward keeps only its hash");
    });
    Ok(())
}

pub fn import(args: ImportArgs) -> Result<(), Failure> {
    if args.batch == 0 || args.batch > IMPORT_ITEMS_MAX {
        return Err(Failure::Error(format!(
            "--batch must be 1 to {IMPORT_ITEMS_MAX}"
        )));
    }
    let file = std::fs::File::open(&args.file)
        .map_err(|e| Failure::Error(format!("{}: {e}", args.file.display())))?;
    let mut items = Vec::new();
    for (number, line) in BufReader::new(file).lines().enumerate() {
        let line = line?;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let item = if line.starts_with('{') {
            serde_json::from_str::<ImportItem>(line).map_err(|e| {
                Failure::Error(format!("{}:{}: {e}", args.file.display(), number + 1))
            })?
        } else {
            let mut item = ImportItem {
                credential: line.to_string(),
                ..ImportItem::default()
            };
            item.spec.tenant = args.tenant.clone();
            item.spec.scopes = args.scopes.clone();
            item
        };
        items.push(item);
    }
    let mut client = connect(&args.admin)?;
    let (mut imported, mut failed) = (0u64, 0u64);
    let started = std::time::Instant::now();
    for (batch_index, chunk) in items.chunks(args.batch).enumerate() {
        let request = ImportRequest {
            keys: chunk.to_vec(),
        };
        let answer = client
            .call(opcode::IMPORT, &request)
            .map_err(|e| Failure::Error(e.to_string()))?;
        for (offset, result) in answer["results"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            if result["ok"] == true {
                imported += 1;
            } else {
                failed += 1;
                eprintln!(
                    "key {}: {}",
                    batch_index * args.batch + offset + 1,
                    result["error"].as_str().unwrap_or("?")
                );
            }
        }
        if !args.admin.json && items.len() > args.batch {
            eprint!("\rimported {imported} of {} …", items.len());
        }
    }
    let summary = json!({ "imported": imported, "failed": failed, "seconds": started.elapsed().as_secs_f64() });
    print(&args.admin, &summary, |_| {
        if items.len() > args.batch {
            eprintln!();
        }
        outln!(
            "imported {imported} keys, {failed} refused, in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    });
    if failed > 0 {
        Err(Failure::No(String::new()))
    } else {
        Ok(())
    }
}

pub fn revoke(args: RevokeArgs) -> Result<(), Failure> {
    let (id, credential) = id_or_credential(&args.key);
    let request = RevokeRequest {
        id,
        credential,
        reason: args.reason,
    };
    let answer = call(&args.admin, opcode::REVOKE, &request)?;
    print(&args.admin, &answer, |a| {
        let note = if a["already_revoked"] == true {
            " (was already revoked)"
        } else {
            ""
        };
        outln!("revoked: {}{note}", key_line(&a["key"]));
    });
    Ok(())
}

pub fn rotate(args: RotateArgs) -> Result<(), Failure> {
    let request = RotateRequest {
        id: args.id,
        grace_seconds: args.grace,
        scopes: args.scopes,
        expires: args.expires,
        ..RotateRequest::default()
    };
    let answer = call(&args.admin, opcode::ROTATE, &request)?;
    print(&args.admin, &answer, |a| {
        outln!("{}", a["credential"].as_str().unwrap_or(""));
        eprintln!("new:      {}", key_line(&a["key"]));
        eprintln!("previous: {}", key_line(&a["previous"]));
    });
    Ok(())
}

pub fn update(args: UpdateArgs) -> Result<(), Failure> {
    let request = UpdateRequest {
        id: args.id,
        name: args.name,
        scopes: args.scopes,
        allow: args.allow,
    };
    let answer = call(&args.admin, opcode::UPDATE, &request)?;
    print(&args.admin, &answer, |a| {
        outln!("updated: {}", key_line(&a["key"]))
    });
    Ok(())
}

pub fn inspect(args: InspectArgs) -> Result<(), Failure> {
    let (id, credential) = id_or_credential(&args.key);
    let answer = call(
        &args.admin,
        opcode::INSPECT,
        &InspectRequest { id, credential },
    )?;
    print(&args.admin, &answer, |a| {
        outln!(
            "{}",
            serde_json::to_string_pretty(&a["key"]).unwrap_or_default()
        )
    });
    Ok(())
}

pub fn list(args: ListArgs) -> Result<(), Failure> {
    let mut client = connect(&args.admin)?;
    let mut after = args.after;
    loop {
        let request = ListRequest {
            tenant: args.tenant.clone(),
            after,
            limit: Some(args.limit),
            unused_since: args
                .unused_since
                .map(|age| UnixSeconds::now().0.saturating_sub(age)),
        };
        let answer = client
            .call(opcode::LIST, &request)
            .map_err(|e| Failure::Error(e.to_string()))?;
        print(&args.admin, &answer, |a| {
            for key in a["keys"].as_array().into_iter().flatten() {
                outln!("{}", key_line(key));
            }
        });
        match answer["next"].as_u64() {
            Some(next) if args.all => after = Some(next),
            Some(next) if !args.admin.json => {
                eprintln!("more: --after {next}");
                break;
            }
            _ => break,
        }
    }
    Ok(())
}

pub fn stats(args: StatsArgs) -> Result<(), Failure> {
    let request = keyward::admin::StatsRequest {
        digest: args.digest,
    };
    let args = args.admin;
    let answer = call(&args, opcode::STATS, &request)?;
    print(&args, &answer, |a| {
        if let Some(map) = a.as_object() {
            for (name, value) in map {
                outln!("{name:<22} {value}");
            }
        }
    });
    Ok(())
}

pub fn compact(args: AdminArgs) -> Result<(), Failure> {
    let answer = call(&args, opcode::COMPACT, &Empty {})?;
    print(&args, &answer, |a| {
        outln!(
            "compacted: snapshot at sequence {} with {} keys ({} bytes) in {:.2} s",
            a["snapshot_sequence"],
            a["records"],
            a["bytes"],
            a["seconds"].as_f64().unwrap_or(0.0)
        )
    });
    Ok(())
}

pub fn admins(command: AdminCommand) -> Result<(), Failure> {
    match command {
        AdminCommand::Add {
            name,
            role,
            token_out,
            admin,
        } => {
            let role = keyward::admins::Role::parse(&role).expect("clap checked the role");
            let answer = call(
                &admin,
                opcode::ADMIN_ADD,
                &keyward::admin::AdminAddRequest { name, role },
            )?;
            let token = answer["token"].as_str().unwrap_or_default();
            if let Some(path) = token_out {
                write_secret(&path, token)?;
                eprintln!(
                    "admin {} ({}) added; token written to {}",
                    answer["name"],
                    role.name(),
                    path.display()
                );
            } else {
                print(&admin, &answer, |a| {
                    eprintln!(
                        "admin {} ({}) added; its token (shown only this once):",
                        a["name"],
                        role.name()
                    );
                    outln!("{token}");
                });
            }
            Ok(())
        }
        AdminCommand::Remove { name, admin } => {
            let answer = call(
                &admin,
                opcode::ADMIN_REMOVE,
                &keyward::admin::AdminRemoveRequest { name },
            )?;
            print(&admin, &answer, |a| {
                outln!(
                    "admin {} removed: its token is refused from now on",
                    a["removed"]
                )
            });
            Ok(())
        }
        AdminCommand::List(admin) => {
            let answer = call(&admin, opcode::ADMIN_LIST, &Empty {})?;
            print(&admin, &answer, |a| {
                for entry in a["admins"].as_array().into_iter().flatten() {
                    outln!(
                        "{:<24} {}",
                        entry["name"].as_str().unwrap_or("?"),
                        entry["role"].as_str().unwrap_or("?")
                    );
                }
            });
            Ok(())
        }
    }
}

/// Writes a token to a new file only its owner can read.
fn write_secret(path: &std::path::Path, token: &str) -> Result<(), Failure> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Failure::Error(format!("{}: {e}", path.display())))?;
    writeln!(file, "{token}").map_err(|e| Failure::Error(format!("{}: {e}", path.display())))?;
    Ok(())
}
