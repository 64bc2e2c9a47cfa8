//! Every verify status, from the real server (2 shards) over TCP, with real credentials.

mod common;

use std::net::IpAddr;

use keyward::client::Client;
use keyward::credential::{KeyId, NativeCredential, Prefixes, Secret, Visibility};
use keyward::protocol::{Status, VerifyRequest};
use keyward::record::{KeyKind, KeyRecord, KeyStatus, UnixSeconds};

const DAY: u64 = 86_400;

struct Keys {
    valid: String,
    public: String,
    revoked: String,
    expired: String,
    not_yet_valid: String,
    imported: String,
    wrong_secret_for_revoked: String,
    unknown_id: String,
}

fn record(id: u64, hash: [u8; 32], now: UnixSeconds) -> KeyRecord {
    KeyRecord {
        id: KeyId(id),
        kind: KeyKind::Native,
        hash,
        tenant: "acme".into(),
        name: format!("test key {id}"),
        scopes: vec!["orders:read".into(), "orders:write".into()],
        created: now,
        not_before: UnixSeconds(now.0 - DAY),
        expires: Some(UnixSeconds(now.0 + DAY)),
        status: KeyStatus::Active,
        visibility: Visibility::Secret,
        allow: vec![
            "10.0.0.0/8".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ],
        idempotency_key: String::new(),
    }
}

fn setup(path: &std::path::Path) -> Keys {
    let prefixes = Prefixes::default();
    let now = UnixSeconds::now();
    let mut keys = None;
    common::data_dir_with(path, |hasher| {
        let native = |id: u64, visibility: Visibility| {
            let credential = NativeCredential {
                key_id: KeyId(id),
                secret: Secret::random(),
                visibility,
            };
            let hash = hasher.native(credential.key_id, &credential.secret);
            (credential.encode(&prefixes), hash)
        };
        let (valid, valid_hash) = native(1, Visibility::Secret);
        let (public, public_hash) = native(2, Visibility::Public);
        let (revoked, revoked_hash) = native(3, Visibility::Secret);
        let (expired, expired_hash) = native(4, Visibility::Secret);
        let (not_yet_valid, not_yet_valid_hash) = native(5, Visibility::Secret);
        let (wrong_secret_for_revoked, _) = native(3, Visibility::Secret);
        let (unknown_id, _) = native(99, Visibility::Secret);
        let imported = "sk_live_0123456789abcdefXYZ".to_string();

        let mut records = vec![record(1, valid_hash, now)];
        let mut public_record = record(2, public_hash, now);
        public_record.visibility = Visibility::Public;
        public_record.allow.clear();
        records.push(public_record);
        let mut revoked_record = record(3, revoked_hash, now);
        revoked_record.status = KeyStatus::Revoked;
        records.push(revoked_record);
        let mut expired_record = record(4, expired_hash, now);
        expired_record.not_before = UnixSeconds(now.0 - 2 * DAY);
        expired_record.expires = Some(UnixSeconds(now.0 - DAY));
        records.push(expired_record);
        let mut future_record = record(5, not_yet_valid_hash, now);
        future_record.not_before = UnixSeconds(now.0 + DAY);
        future_record.expires = Some(UnixSeconds(now.0 + 2 * DAY));
        records.push(future_record);
        let mut imported_record = record(6, hasher.imported(imported.as_bytes()), now);
        imported_record.kind = KeyKind::Imported;
        imported_record.allow.clear();
        imported_record.expires = None;
        records.push(imported_record);

        keys = Some(Keys {
            valid,
            public,
            revoked,
            expired,
            not_yet_valid,
            imported,
            wrong_secret_for_revoked,
            unknown_id,
        });
        records
    });
    keys.unwrap()
}

fn ask(
    client: &mut Client,
    credential: &str,
    scope: Option<&str>,
    tenant: Option<&str>,
    address: Option<&str>,
) -> keyward::protocol::VerifyResult {
    let address: Option<IpAddr> = address.map(|a| a.parse().unwrap());
    client
        .verify(&VerifyRequest {
            credential: credential.as_bytes(),
            scope: scope.map(str::as_bytes),
            tenant: tenant.map(str::as_bytes),
            address,
        })
        .unwrap()
}

#[test]
fn every_status_over_tcp() {
    let directory = tempfile::tempdir().unwrap();
    let keys = setup(directory.path());
    let server = common::Server::start(directory.path(), &[]);
    let mut client = Client::connect(server.address).unwrap();
    let ip = Some("10.20.30.40");

    let result = ask(
        &mut client,
        &keys.valid,
        Some("orders:read"),
        Some("acme"),
        ip,
    );
    assert_eq!(result.status, Status::Valid);
    let grant = result.grant.unwrap();
    assert_eq!(grant.key_id, 1);
    assert_eq!(grant.tenant, "acme");
    assert_eq!(
        grant.scopes,
        vec!["orders:read".to_string(), "orders:write".to_string()]
    );
    assert!(grant.expires.is_some());
    assert!(grant.claims.is_empty());

    let ipv6 = ask(&mut client, &keys.valid, None, None, Some("2001:db8::7"));
    assert_eq!(ipv6.status, Status::Valid);
    assert_eq!(
        ask(&mut client, &keys.public, None, None, None).status,
        Status::Valid
    );
    let imported = ask(
        &mut client,
        &keys.imported,
        Some("orders:write"),
        None,
        None,
    );
    assert_eq!(imported.status, Status::Valid);
    assert_eq!(imported.grant.unwrap().expires, None);

    let mut typo = keys.valid.clone().into_bytes();
    typo[10] = if typo[10] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap();
    assert_eq!(
        ask(&mut client, &typo, None, None, ip).status,
        Status::Malformed
    );
    assert_eq!(
        ask(&mut client, "short", None, None, ip).status,
        Status::Malformed
    );
    assert_eq!(
        ask(&mut client, "", None, None, ip).status,
        Status::Malformed
    );
    assert_eq!(
        ask(&mut client, &keys.unknown_id, None, None, ip).status,
        Status::Unknown
    );
    assert_eq!(
        ask(
            &mut client,
            "sk_live_not_a_known_key_at_all",
            None,
            None,
            ip
        )
        .status,
        Status::Unknown
    );
    assert_eq!(
        ask(&mut client, &keys.revoked, None, None, ip).status,
        Status::Revoked
    );
    assert_eq!(
        ask(&mut client, &keys.expired, None, None, ip).status,
        Status::Expired
    );
    assert_eq!(
        ask(&mut client, &keys.not_yet_valid, None, None, ip).status,
        Status::NotYetValid
    );
    assert_eq!(
        ask(&mut client, &keys.valid, Some("billing:read"), None, ip).status,
        Status::ScopeDenied
    );
    assert_eq!(
        ask(&mut client, &keys.valid, None, None, Some("192.168.1.1")).status,
        Status::AddressDenied
    );
    assert_eq!(
        ask(&mut client, &keys.valid, None, None, None).status,
        Status::AddressDenied
    );
    assert_eq!(
        ask(&mut client, &keys.valid, None, Some("globex"), ip).status,
        Status::TenantMismatch
    );
    assert_eq!(
        ask(&mut client, &keys.valid, Some("x"), Some("globex"), None).status,
        Status::TenantMismatch
    );
}

#[test]
fn statuses_about_a_key_need_its_secret() {
    let directory = tempfile::tempdir().unwrap();
    let keys = setup(directory.path());
    let server = common::Server::start(directory.path(), &[]);
    let mut client = Client::connect(server.address).unwrap();
    // Right id, wrong secret: the key is revoked, but the caller must learn nothing.
    let result = ask(
        &mut client,
        &keys.wrong_secret_for_revoked,
        None,
        None,
        None,
    );
    assert_eq!(result.status, Status::Unknown);
    assert_eq!(result.grant, None);
    // A public-prefix credential for a secret key (same id and secret) fails its checksum.
    let moved = keys.valid.replacen("kw_", "kwpub_", 1);
    assert_eq!(
        ask(&mut client, &moved, None, None, None).status,
        Status::Malformed
    );
}
