//! Property tests of derived tokens, in process: a token never verifies for a scope, time,
//! address or tenant its chain (or its parent) excludes; any changed byte breaks it; the order
//! of attenuations does not change what it allows.

use std::net::IpAddr;
use std::sync::Arc;

use proptest::prelude::*;

use keyward::credential::{KeyId, Prefixes, Visibility};
use keyward::delta::{Delta, DeltaKind};
use keyward::overlay::{Overlay, TableView};
use keyward::protocol::{Status, VerifyRequest};
use keyward::record::{Cidr, KeyKind, KeyRecord, KeyStatus, UnixSeconds};
use keyward::snapshot::{self, Snapshot};
use keyward::token::{Caveat, Token};
use keyward::verify::Verifier;

const MASTER: [u8; 32] = [7; 32];
const SCOPES: [&str; 4] = ["a:r", "a:w", "b:r", "b:w"];
const TENANTS: [&str; 2] = ["acme", "globex"];
const RANGES: [&str; 3] = ["10.0.0.0/8", "10.1.0.0/16", "192.168.0.0/16"];
const ADDRESSES: [&str; 4] = ["10.1.2.3", "10.9.9.9", "192.168.1.1", "8.8.8.8"];
const BASE: u64 = 1_800_000_000;

fn empty_snapshot() -> Arc<Snapshot> {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join(snapshot::FILE_NAME);
    snapshot::write_atomic(&path, &snapshot::encode(&[], 0, UnixSeconds(0)).unwrap()).unwrap();
    let snapshot = Snapshot::open(&path).unwrap();
    std::mem::forget(directory); // the mapping outlives the test case; the OS cleans /tmp
    snapshot
}

#[derive(Clone, Debug)]
struct Parent {
    scopes: Vec<String>,
    tenant: String,
    expires: Option<u64>,
    allow: Vec<Cidr>,
}

fn parent() -> impl Strategy<Value = Parent> {
    (
        prop::sample::subsequence(SCOPES.to_vec(), 1..=4),
        prop::sample::select(TENANTS.to_vec()),
        prop::option::of(BASE + 50..BASE + 200),
        prop::sample::subsequence(RANGES.to_vec(), 0..=1),
    )
        .prop_map(|(scopes, tenant, expires, allow)| Parent {
            scopes: scopes.into_iter().map(String::from).collect(),
            tenant: tenant.to_string(),
            expires,
            allow: allow.into_iter().map(|r| r.parse().unwrap()).collect(),
        })
}

fn caveat() -> impl Strategy<Value = Caveat> {
    prop_oneof![
        (BASE..BASE + 300).prop_map(|t| Caveat::Expires(UnixSeconds(t))),
        (BASE - 100..BASE + 200).prop_map(|t| Caveat::NotBefore(UnixSeconds(t))),
        prop::sample::subsequence(SCOPES.to_vec(), 0..=4)
            .prop_map(|s| Caveat::Scopes(s.into_iter().map(String::from).collect())),
        prop::sample::select(TENANTS.to_vec()).prop_map(|t| Caveat::Tenant(t.to_string())),
        prop::sample::select(RANGES.to_vec()).prop_map(|r| Caveat::Address(r.parse().unwrap())),
        ("[a-z]{1,8}", "[a-z0-9]{0,16}").prop_map(|(k, v)| Caveat::Claim(k, v)),
    ]
}

#[derive(Clone, Debug)]
struct Ask {
    now: u64,
    scope: Option<&'static str>,
    tenant: Option<&'static str>,
    address: Option<&'static str>,
}

fn ask() -> impl Strategy<Value = Ask> {
    (
        BASE - 150..BASE + 350,
        prop::option::of(prop::sample::select(SCOPES.to_vec())),
        prop::option::of(prop::sample::select(TENANTS.to_vec())),
        prop::option::of(prop::sample::select(ADDRESSES.to_vec())),
    )
        .prop_map(|(now, scope, tenant, address)| Ask {
            now,
            scope,
            tenant,
            address,
        })
}

struct World {
    snapshot: Arc<Snapshot>,
    overlay: Overlay,
    verifier: Verifier,
}

fn world(parent: &Parent) -> World {
    let record = KeyRecord {
        id: KeyId(5),
        kind: KeyKind::Native,
        hash: [1; 32],
        tenant: parent.tenant.clone(),
        name: String::new(),
        scopes: parent.scopes.clone(),
        created: UnixSeconds(BASE - 1000),
        not_before: UnixSeconds(BASE - 1000),
        expires: parent.expires.map(UnixSeconds),
        status: KeyStatus::Active,
        visibility: Visibility::Secret,
        allow: parent.allow.clone(),
        idempotency_key: String::new(),
    };
    let mut overlay = Overlay::new(0);
    overlay.apply(&Arc::new(Delta {
        sequence: 1,
        kind: DeltaKind::Issue,
        note: String::new(),
        records: vec![record],
    }));
    World {
        snapshot: empty_snapshot(),
        overlay,
        verifier: Verifier::new(&[2; 32], &MASTER, Prefixes::default(), "kwt"),
    }
}

fn verify(world: &World, text: &str, ask: &Ask) -> Status {
    let table = TableView {
        snapshot: &world.snapshot,
        overlay: &world.overlay,
    };
    let request = VerifyRequest {
        credential: text.as_bytes(),
        scope: ask.scope.map(str::as_bytes),
        tenant: ask.tenant.map(str::as_bytes),
        address: ask.address.map(|a| a.parse::<IpAddr>().unwrap()),
    };
    world
        .verifier
        .verify(&table, &request, UnixSeconds(ask.now))
        .status
}

/// The model: what the parent and every caveat allow, checked one by one.
fn allowed(parent: &Parent, caveats: &[Caveat], ask: &Ask) -> bool {
    let address: Option<IpAddr> = ask.address.map(|a| a.parse().unwrap());
    let in_range = |range: &Cidr| address.is_some_and(|a| range.contains(a));
    parent.expires.is_none_or(|e| ask.now < e)
        && ask.now >= BASE - 1000
        && ask.tenant.is_none_or(|t| t == parent.tenant)
        && ask
            .scope
            .is_none_or(|s| parent.scopes.iter().any(|p| p == s))
        && (parent.allow.is_empty() || parent.allow.iter().any(in_range))
        && caveats.iter().all(|caveat| match caveat {
            Caveat::Expires(t) => ask.now < t.0,
            Caveat::NotBefore(t) => ask.now >= t.0,
            Caveat::Scopes(scopes) => ask.scope.is_none_or(|s| scopes.iter().any(|c| c == s)),
            Caveat::Tenant(t) => *t == parent.tenant,
            Caveat::Address(range) => in_range(range),
            Caveat::Claim(..) => true,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_token_never_allows_what_its_chain_excludes(
        parent in parent(),
        expires in BASE..BASE + 300,
        minted in prop::collection::vec(caveat(), 0..4),
        attenuations in prop::collection::vec(caveat(), 0..4),
        asks in prop::collection::vec(ask(), 1..8),
    ) {
        let world = world(&parent);
        let mut caveats = vec![Caveat::Expires(UnixSeconds(expires))];
        caveats.extend(minted);
        let mut token = Token::mint(&keyward::token::RootKey::new(&MASTER), KeyId(5), [4; 16], caveats.clone()).unwrap();
        for caveat in attenuations {
            token = token.attenuate(caveat.clone()).unwrap();
            caveats.push(caveat);
        }
        let text = token.encode("kwt");
        for ask in &asks {
            let status = verify(&world, &text, ask);
            prop_assert_eq!(status == Status::Valid, allowed(&parent, &caveats, ask), "{:?} with {:?}", ask, caveats);
        }
    }

    #[test]
    fn any_changed_byte_breaks_the_token(
        parent in parent(),
        extra in prop::collection::vec(caveat(), 0..4),
        position in any::<prop::sample::Index>(),
        replacement in prop::sample::select(b"abcdefghijklmnopqrstuvwxyz234567_".to_vec()),
    ) {
        let world = world(&parent);
        let mut caveats = vec![Caveat::Expires(UnixSeconds(BASE + 1000))];
        caveats.extend(extra);
        let text = Token::mint(&keyward::token::RootKey::new(&MASTER), KeyId(5), [4; 16], caveats).unwrap().encode("kwt");
        let mut bytes = text.clone().into_bytes();
        let at = position.index(bytes.len());
        prop_assume!(bytes[at] != replacement);
        bytes[at] = replacement;
        let changed = String::from_utf8(bytes).unwrap();
        let ask = Ask { now: BASE, scope: None, tenant: None, address: Some("10.1.2.3") };
        prop_assert_ne!(verify(&world, &changed, &ask), Status::Valid, "{} accepted", changed);
    }

    #[test]
    fn attenuation_order_does_not_matter(
        parent in parent(),
        attenuations in prop::collection::vec(caveat(), 1..5),
        asks in prop::collection::vec(ask(), 1..8),
    ) {
        let world = world(&parent);
        let base = Token::mint(&keyward::token::RootKey::new(&MASTER), KeyId(5), [4; 16], vec![Caveat::Expires(UnixSeconds(BASE + 250))]).unwrap();
        let forward = attenuations.iter().fold(base.clone(), |t, c| t.attenuate(c.clone()).unwrap()).encode("kwt");
        let backward = attenuations.iter().rev().fold(base, |t, c| t.attenuate(c.clone()).unwrap()).encode("kwt");
        for ask in &asks {
            prop_assert_eq!(verify(&world, &forward, ask) == Status::Valid, verify(&world, &backward, ask) == Status::Valid);
        }
    }
}

#[test]
fn a_token_for_another_server_or_parent_is_unknown() {
    let parent = Parent {
        scopes: vec!["a:r".into()],
        tenant: "acme".into(),
        expires: None,
        allow: vec![],
    };
    let world = world(&parent);
    let ask = Ask {
        now: BASE,
        scope: None,
        tenant: None,
        address: None,
    };
    let caveats = vec![Caveat::Expires(UnixSeconds(BASE + 100))];
    let good = Token::mint(
        &keyward::token::RootKey::new(&MASTER),
        KeyId(5),
        [4; 16],
        caveats.clone(),
    )
    .unwrap()
    .encode("kwt");
    assert_eq!(verify(&world, &good, &ask), Status::Valid);
    let other_master = Token::mint(
        &keyward::token::RootKey::new(&[8; 32]),
        KeyId(5),
        [4; 16],
        caveats.clone(),
    )
    .unwrap()
    .encode("kwt");
    assert_eq!(verify(&world, &other_master, &ask), Status::Unknown);
    let other_parent = Token::mint(
        &keyward::token::RootKey::new(&MASTER),
        KeyId(6),
        [4; 16],
        caveats,
    )
    .unwrap()
    .encode("kwt");
    assert_eq!(verify(&world, &other_parent, &ask), Status::Unknown);
}
