//! Derived tokens against the real 2-shard server: derive, verify with narrowed scopes, expiry,
//! parent revocation and rotation killing every token on every shard, over-wide requests refused.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;

use keyward::admin::opcode;
use keyward::client::Client;
use keyward::protocol::{DeriveRequest, DeriveResult, Status, VerifyRequest};
use keyward::token::{Caveat, Token};

fn issue(server: &common::Server, request: serde_json::Value) -> (String, u64) {
    let answer = server.admin().call(opcode::ISSUE, &request).unwrap();
    (
        answer["credential"].as_str().unwrap().to_string(),
        answer["key"]["id"].as_u64().unwrap(),
    )
}

fn derive(address: SocketAddr, request: &DeriveRequest<'_>) -> DeriveResult {
    Client::connect(address).unwrap().derive(request).unwrap()
}

fn minted(result: DeriveResult) -> String {
    match result {
        DeriveResult::Minted { token, .. } => token,
        DeriveResult::Refused { status, message } => panic!("refused: {status}: {message}"),
    }
}

fn status(client: &mut Client, credential: &str, scope: Option<&str>) -> Status {
    let request = VerifyRequest {
        credential: credential.as_bytes(),
        scope: scope.map(str::as_bytes),
        ..Default::default()
    };
    client.verify(&request).unwrap().status
}

/// Statuses of `credential` from `connections` fresh connections (both shards).
fn everywhere(address: SocketAddr, credential: &str, connections: usize) -> Vec<Status> {
    let threads: Vec<_> = (0..connections)
        .map(|_| {
            let credential = credential.to_string();
            std::thread::spawn(move || {
                status(&mut Client::connect(address).unwrap(), &credential, None)
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

#[test]
fn derived_tokens_are_narrower_and_carry_claims() {
    let directory = tempfile::tempdir().unwrap();
    let server = common::Server::start(directory.path(), &[]);
    let (key, id) = issue(
        &server,
        json!({ "tenant": "acme", "scopes": ["orders:read", "orders:write"], "ttl_seconds": 86400 }),
    );
    let token = minted(derive(
        server.address,
        &DeriveRequest {
            credential: key.as_bytes(),
            ttl_seconds: 600,
            scopes: vec![b"orders:read"],
            claims: vec![(b"agent", b"build-bot")],
            ..Default::default()
        },
    ));
    assert!(token.starts_with("kwt_"));
    let mut client = Client::connect(server.address).unwrap();
    let request = VerifyRequest {
        credential: token.as_bytes(),
        scope: Some(b"orders:read"),
        tenant: Some(b"acme"),
        ..Default::default()
    };
    let result = client.verify(&request).unwrap();
    assert_eq!(result.status, Status::Valid);
    let grant = result.grant.unwrap();
    assert_eq!(grant.key_id, id);
    assert_eq!(grant.scopes, vec!["orders:read".to_string()]);
    assert_eq!(
        grant.claims,
        vec![("agent".to_string(), "build-bot".to_string())]
    );
    let now = keyward::record::UnixSeconds::now().0;
    assert!(
        (now + 590..=now + 610).contains(&grant.expires.unwrap().0),
        "{grant:?}"
    );
    assert_eq!(
        status(&mut client, &token, Some("orders:write")),
        Status::ScopeDenied
    );

    // Offline attenuation narrows further; it never widens.
    let parsed = Token::parse(token.as_bytes(), "kwt").unwrap().unwrap();
    let narrower = parsed
        .attenuate(Caveat::Address("10.0.0.0/8".parse().unwrap()))
        .unwrap()
        .encode("kwt");
    assert_eq!(status(&mut client, &narrower, None), Status::AddressDenied);
    let from_ten = VerifyRequest {
        credential: narrower.as_bytes(),
        address: Some("10.9.8.7".parse().unwrap()),
        ..Default::default()
    };
    assert_eq!(client.verify(&from_ten).unwrap().status, Status::Valid);
    let other_tenant = parsed
        .attenuate(Caveat::Tenant("globex".into()))
        .unwrap()
        .encode("kwt");
    assert_eq!(
        status(&mut client, &other_tenant, None),
        Status::TenantMismatch
    );
    let scope_outside = parsed
        .attenuate(Caveat::Scopes(vec!["orders:write".into()]))
        .unwrap()
        .encode("kwt");
    assert_eq!(
        status(&mut client, &scope_outside, Some("orders:write")),
        Status::ScopeDenied
    );

    // Any changed character breaks the token.
    let mut forged = token.clone().into_bytes();
    let last = forged.len() - 1;
    forged[last] = if forged[last] == b'a' { b'b' } else { b'a' };
    let forged = String::from_utf8(forged).unwrap();
    assert!(matches!(
        status(&mut client, &forged, None),
        Status::Unknown | Status::Malformed
    ));
}

#[test]
fn tokens_expire() {
    let directory = tempfile::tempdir().unwrap();
    let server = common::Server::start(directory.path(), &[]);
    let (key, _) = issue(&server, json!({}));
    let token = minted(derive(
        server.address,
        &DeriveRequest {
            credential: key.as_bytes(),
            ttl_seconds: 1,
            ..Default::default()
        },
    ));
    let mut client = Client::connect(server.address).unwrap();
    assert_eq!(status(&mut client, &token, None), Status::Valid);
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(status(&mut client, &token, None), Status::Expired);
    assert_eq!(status(&mut client, &key, None), Status::Valid);
}

#[test]
fn revoking_or_rotating_the_parent_kills_its_tokens_everywhere() {
    let directory = tempfile::tempdir().unwrap();
    let server = common::Server::start(directory.path(), &[]);
    let (key, id) = issue(&server, json!({ "scopes": ["a:b"] }));
    let tokens: Vec<String> = (0..3)
        .map(|_| {
            minted(derive(
                server.address,
                &DeriveRequest {
                    credential: key.as_bytes(),
                    ..Default::default()
                },
            ))
        })
        .collect();
    let admin_token = server
        .admin()
        .call(
            opcode::DERIVE,
            &json!({ "parent_id": id, "ttl_seconds": 60 }),
        )
        .unwrap();
    let admin_token = admin_token["token"].as_str().unwrap().to_string();
    for token in tokens.iter().chain([&admin_token]) {
        assert!(everywhere(server.address, token, 16)
            .iter()
            .all(|s| *s == Status::Valid));
    }
    server
        .admin()
        .call(opcode::REVOKE, &json!({ "id": id }))
        .unwrap();
    for token in tokens.iter().chain([&admin_token]) {
        let seen = everywhere(server.address, token, 32);
        assert!(seen.iter().all(|s| *s == Status::Revoked), "{seen:?}");
    }
    let refused = derive(
        server.address,
        &DeriveRequest {
            credential: key.as_bytes(),
            ..Default::default()
        },
    );
    assert!(
        matches!(
            refused,
            DeriveResult::Refused {
                status: Status::Revoked,
                ..
            }
        ),
        "{refused:?}"
    );

    let (second, second_id) = issue(&server, json!({}));
    let token = minted(derive(
        server.address,
        &DeriveRequest {
            credential: second.as_bytes(),
            ..Default::default()
        },
    ));
    server
        .admin()
        .call(opcode::ROTATE, &json!({ "id": second_id }))
        .unwrap();
    let seen = everywhere(server.address, &token, 32);
    assert!(seen.iter().all(|s| *s == Status::Revoked), "{seen:?}");
}

#[test]
fn wider_requests_are_refused_not_narrowed() {
    let directory = tempfile::tempdir().unwrap();
    let server = common::Server::start(directory.path(), &["--token-ttl-max-seconds", "600"]);
    let (key, _) = issue(
        &server,
        json!({ "tenant": "acme", "scopes": ["a:read"], "ttl_seconds": 300 }),
    );
    let ask = |request: DeriveRequest<'_>| {
        derive(
            server.address,
            &DeriveRequest {
                credential: key.as_bytes(),
                ..request
            },
        )
    };
    let too_wide = |result: DeriveResult, needle: &str| match result {
        DeriveResult::Refused {
            status: Status::TooWide,
            message,
        } => assert!(message.contains(needle), "{message}"),
        other => panic!("not refused as too wide: {other:?}"),
    };
    too_wide(
        ask(DeriveRequest {
            scopes: vec![b"a:write"],
            ..Default::default()
        }),
        "scope",
    );
    too_wide(
        ask(DeriveRequest {
            ttl_seconds: 601,
            ..Default::default()
        }),
        "maximum",
    );
    too_wide(
        ask(DeriveRequest {
            ttl_seconds: 400,
            ..Default::default()
        }),
        "later than the parent",
    );
    too_wide(
        ask(DeriveRequest {
            tenant: Some(b"globex"),
            ..Default::default()
        }),
        "tenant",
    );
    // The default lifetime is capped by the parent's expiry, which is not a wider request.
    let token = minted(ask(DeriveRequest::default()));
    let parsed = Token::parse(token.as_bytes(), "kwt").unwrap().unwrap();
    let now = keyward::record::UnixSeconds::now().0;
    assert!(parsed.limits().expires.unwrap().0 <= now + 300);
    // From a token, or with a wrong secret: refused.
    too_wide(
        derive(
            server.address,
            &DeriveRequest {
                credential: token.as_bytes(),
                ..Default::default()
            },
        ),
        "not a token",
    );
    let unknown = derive(
        server.address,
        &DeriveRequest {
            credential: b"sk_live_nobody_has_this_key",
            ..Default::default()
        },
    );
    assert!(
        matches!(
            unknown,
            DeriveResult::Refused {
                status: Status::Unknown,
                ..
            }
        ),
        "{unknown:?}"
    );
}

#[test]
fn holders_can_revoke_their_own_key_on_the_verify_port() {
    let directory = tempfile::tempdir().unwrap();
    let server = common::Server::start(directory.path(), &[]);
    let (key, _) = issue(&server, json!({ "tenant": "acme" }));
    let token = minted(derive(
        server.address,
        &DeriveRequest {
            credential: key.as_bytes(),
            ..Default::default()
        },
    ));
    let (other, _) = issue(&server, json!({}));
    let mut client = Client::connect(server.address).unwrap();
    // A wrong secret for an existing id revokes nothing.
    let mut wrong = key.clone().into_bytes();
    wrong[20] = if wrong[20] == b'a' { b'c' } else { b'a' };
    let wrong = String::from_utf8(wrong).unwrap();
    assert!(matches!(
        client.revoke_self(wrong.as_bytes()).unwrap(),
        Status::Malformed | Status::Unknown
    ));
    assert!(matches!(
        client
            .revoke_self(b"sk_live_nobody_holds_this_one")
            .unwrap(),
        Status::Unknown
    ));
    assert!(
        client.revoke_self(token.as_bytes()).is_err(),
        "a token revoked itself"
    );
    assert_eq!(status(&mut client, &key, None), Status::Valid);

    assert_eq!(client.revoke_self(key.as_bytes()).unwrap(), Status::Revoked);
    for credential in [&key, &token] {
        let seen = everywhere(server.address, credential, 32);
        assert!(seen.iter().all(|s| *s == Status::Revoked), "{seen:?}");
    }
    assert_eq!(
        client.revoke_self(key.as_bytes()).unwrap(),
        Status::Revoked,
        "not idempotent"
    );
    assert_eq!(status(&mut client, &other, None), Status::Valid);

    // Durable: a SIGKILL right after the answer does not undo it.
    let data_dir = server.data_dir.clone();
    server.kill();
    let server = common::Server::start(&data_dir, &[]);
    let mut client = Client::connect(server.address).unwrap();
    assert_eq!(status(&mut client, &key, None), Status::Revoked);
}
