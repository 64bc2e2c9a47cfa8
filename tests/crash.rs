//! Crash safety: a client streams ISSUE, REVOKE and ROTATE and records every acknowledgement
//! while the server is killed with SIGKILL at random moments, 20 times. After every restart each
//! acknowledged change is present, and the change in flight at the kill is all there or not at
//! all (a rotation never leaves the old key revoked without its successor, or the reverse).
//! The seed is printed; set KEYWARD_CRASH_SEED to replay a run.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use keyward::admin::{opcode, AdminClient};
use keyward::client::Client;
use keyward::protocol::{Status, VerifyRequest};

const KILLS: usize = 20;

struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// What the client knows was acknowledged.
#[derive(Default, Clone)]
struct Model {
    /// id → credential of every acknowledged key (issued or minted by rotation).
    keys: HashMap<u64, String>,
    revoked: HashSet<u64>,
}

/// The operation that was sent but not acknowledged when the server died.
#[derive(Clone, Debug)]
enum InFlight {
    Issue(String),
    Revoke(u64),
    Rotate(u64),
}

fn stream_changes(
    control: std::net::SocketAddr,
    token: String,
    mut model: Model,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> (Model, Option<InFlight>) {
    let mut random = Random(seed | 1);
    let Ok(mut admin) = AdminClient::connect(control, &token) else {
        return (model, None);
    };
    let mut counter = 0u64;
    while !stop.load(Ordering::Relaxed) {
        counter += 1;
        let live: Vec<u64> = model
            .keys
            .keys()
            .filter(|id| !model.revoked.contains(id))
            .copied()
            .collect();
        let choice = random.next() % 10;
        let (in_flight, result) = if choice < 5 || live.is_empty() {
            let idempotency = format!("crash-{seed}-{counter}");
            let result = admin.call(
                opcode::ISSUE,
                &json!({ "tenant": "crash", "idempotency_key": idempotency }),
            );
            (InFlight::Issue(idempotency), result)
        } else {
            let id = live[(random.next() % live.len() as u64) as usize];
            if choice < 8 {
                (
                    InFlight::Revoke(id),
                    admin.call(opcode::REVOKE, &json!({ "id": id })),
                )
            } else {
                let request = json!({ "id": id, "name": format!("successor of {id}") });
                (InFlight::Rotate(id), admin.call(opcode::ROTATE, &request))
            }
        };
        let answer: Value = match result {
            Ok(answer) => answer,
            Err(_) => return (model, Some(in_flight)),
        };
        match in_flight {
            InFlight::Issue(_) => {
                model.keys.insert(
                    answer["key"]["id"].as_u64().unwrap(),
                    answer["credential"].as_str().unwrap().to_string(),
                );
            }
            InFlight::Revoke(id) => {
                model.revoked.insert(id);
            }
            InFlight::Rotate(id) => {
                model.revoked.insert(id);
                model.keys.insert(
                    answer["key"]["id"].as_u64().unwrap(),
                    answer["credential"].as_str().unwrap().to_string(),
                );
            }
        }
    }
    (model, None)
}

fn status_of(client: &mut Client, credential: &str) -> Status {
    let request = VerifyRequest {
        credential: credential.as_bytes(),
        ..Default::default()
    };
    client.verify(&request).unwrap().status
}

/// Checks every acknowledged change, and that the in-flight one is whole or absent. Returns the
/// model updated with what the in-flight change turned out to be.
fn check(
    server: &common::Server,
    mut model: Model,
    in_flight: Option<InFlight>,
    cycle: usize,
) -> Model {
    let mut client = Client::connect(server.address).unwrap();
    let in_flight_revoke = match &in_flight {
        Some(InFlight::Revoke(id)) | Some(InFlight::Rotate(id)) => Some(*id),
        _ => None,
    };
    for (id, credential) in &model.keys {
        let status = status_of(&mut client, credential);
        let expected = if model.revoked.contains(id) {
            Status::Revoked
        } else {
            Status::Valid
        };
        if Some(*id) == in_flight_revoke && status == Status::Revoked {
            continue; // the unacknowledged revoke or rotation made it: checked below
        }
        assert_eq!(
            status, expected,
            "cycle {cycle}: key {id} lost an acknowledged change"
        );
    }
    let mut admin = server.admin();
    match in_flight {
        Some(InFlight::Issue(idempotency)) => {
            // Either it was applied (the retry finds it) or not at all (the retry mints it).
            let answer = admin
                .call(
                    opcode::ISSUE,
                    &json!({ "tenant": "crash", "idempotency_key": idempotency }),
                )
                .unwrap();
            let credential = answer["credential"].as_str().unwrap().to_string();
            assert_eq!(
                status_of(&mut client, &credential),
                Status::Valid,
                "cycle {cycle}"
            );
            model
                .keys
                .insert(answer["key"]["id"].as_u64().unwrap(), credential);
        }
        Some(InFlight::Revoke(id))
            if status_of(&mut client, &model.keys[&id]) == Status::Revoked =>
        {
            model.revoked.insert(id);
        }
        Some(InFlight::Revoke(_)) => {}
        Some(InFlight::Rotate(id)) => {
            let old_revoked = status_of(&mut client, &model.keys[&id]) == Status::Revoked;
            let mut successors = 0;
            let mut after: Option<u64> = None;
            loop {
                let page = admin
                    .call(
                        opcode::LIST,
                        &json!({ "tenant": "crash", "after": after, "limit": 1000 }),
                    )
                    .unwrap();
                successors += page["keys"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|k| k["name"] == format!("successor of {id}"))
                    .count();
                match page["next"].as_u64() {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
            assert_eq!(
                successors,
                usize::from(old_revoked),
                "cycle {cycle}: rotation of {id} half-applied"
            );
            if old_revoked {
                model.revoked.insert(id);
            }
        }
        None => {}
    }
    model
}

#[test]
fn acknowledged_changes_survive_sigkill() {
    let seed = std::env::var("KEYWARD_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("crash test seed {seed} (KEYWARD_CRASH_SEED={seed} replays it)");
    let mut random = Random(seed | 1);
    let directory = tempfile::tempdir().unwrap();
    let mut model = Model::default();
    let mut in_flight = None;
    let mut acknowledged = 0;
    for cycle in 0..KILLS {
        let server = common::Server::start(directory.path(), &[]);
        model = check(&server, model, in_flight.take(), cycle);
        let token = std::fs::read_to_string(directory.path().join("admin.token"))
            .unwrap()
            .trim()
            .to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (control, model, stop, seed) =
                (server.control, model.clone(), stop.clone(), random.next());
            std::thread::spawn(move || stream_changes(control, token, model, seed, stop))
        };
        let started = Instant::now();
        std::thread::sleep(Duration::from_millis(20 + random.next() % 180));
        server.kill();
        let (after, flying) = writer.join().unwrap();
        assert!(started.elapsed() < Duration::from_secs(60));
        acknowledged +=
            after.keys.len() + after.revoked.len() - model.keys.len() - model.revoked.len();
        model = after;
        in_flight = flying;
    }
    let server = common::Server::start(directory.path(), &[]);
    check(&server, model.clone(), in_flight, KILLS);
    assert!(
        acknowledged >= KILLS,
        "too few changes were acknowledged to mean anything: {acknowledged}"
    );
    eprintln!(
        "{KILLS} kills, {acknowledged} acknowledged changes, {} keys, {} revoked",
        model.keys.len(),
        model.revoked.len()
    );
}
