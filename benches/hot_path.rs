//! Criterion benchmarks of the verify hot path, in process, on one core: credential parse,
//! table lookup (hit and miss) on a 1M-key table, and full verifies. Pin it for stable
//! numbers: `taskset -c 1 cargo bench --bench hot_path`. `KEYWARD_BENCH_KEYS=10000000` runs
//! the table and verify groups on a larger table (the group names keep `_1m`, so runs compare;
//! the table is written one record at a time, and at most a million of its keys are kept to
//! present).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use keyward::credential::{self, Hasher, KeyId, Prefixes};
use keyward::keyset::{self, ExpectedKey};
use keyward::protocol::{self, Status, VerifyRequest};
use keyward::record::UnixSeconds;
use keyward::snapshot::{self, Snapshot};
use keyward::table_writer::TableWriter;
use keyward::token::{Caveat, Token};
use keyward::verify::{self, Verifier};

const TABLE_KEYS_DEFAULT: usize = 1_000_000;

/// Keys in the benchmark's table: `KEYWARD_BENCH_KEYS`, else a million.
fn table_keys() -> usize {
    std::env::var("KEYWARD_BENCH_KEYS")
        .ok()
        .and_then(|keys| keys.parse().ok())
        .unwrap_or(TABLE_KEYS_DEFAULT)
}
const MASTER: [u8; 32] = [3; 32];

struct Fixture {
    _dir: tempfile::TempDir,
    snapshot: std::sync::Arc<Snapshot>,
    verifier: Verifier,
    keys: Vec<ExpectedKey>,
    now: UnixSeconds,
}

/// Keys of the table kept for the benchmarks to present (a stride through larger tables).
const SAMPLE_KEYS_MAX: usize = 1 << 20;

fn fixture() -> Fixture {
    let pepper = [7u8; 32];
    let prefixes = Prefixes::default();
    let now = UnixSeconds::now();
    let count = table_keys();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(snapshot::FILE_NAME);
    // Written one record at a time (table_writer.rs), so a 10 M-key table fits in memory.
    let mut table = TableWriter::create(
        &path,
        keyset::generated_tenants(),
        keyset::generated_scopes(),
    )
    .unwrap();
    let stride = count.div_ceil(SAMPLE_KEYS_MAX);
    let mut keys = Vec::with_capacity(count.min(SAMPLE_KEYS_MAX));
    let mut index = 0;
    keyset::generate_each(
        count,
        &Hasher::new(&pepper),
        &prefixes,
        now,
        |record, key| {
            if let Some(record) = record {
                table.push(&record).unwrap();
            }
            if index % stride == 0 {
                keys.push(key);
            }
            index += 1;
        },
    );
    table.finish(0, now).unwrap();
    let snapshot = Snapshot::open(&path).unwrap();
    // Visit keys in a scattered order so lookups are not helped by the id order.
    let len = keys.len();
    for i in 0..len {
        keys.swap(i, (i.wrapping_mul(2_654_435_761) ^ (i >> 3)) % len);
    }
    Fixture {
        _dir: dir,
        snapshot,
        verifier: Verifier::new(&pepper, &MASTER, prefixes, "kwt"),
        keys,
        now,
    }
}

fn keys_with(fixture: &Fixture, status: Status) -> Vec<&ExpectedKey> {
    fixture
        .keys
        .iter()
        .filter(|k| k.expected == status)
        .take(4096)
        .collect()
}

fn benches(c: &mut Criterion) {
    let fixture = fixture();
    let prefixes = Prefixes::default();
    let native: Vec<&ExpectedKey> = keys_with(&fixture, Status::Valid)
        .into_iter()
        .filter(|k| k.credential.starts_with("kw_"))
        .collect();
    let imported: Vec<&ExpectedKey> = keys_with(&fixture, Status::Valid)
        .into_iter()
        .filter(|k| k.credential.starts_with("sk_"))
        .collect();
    let unknown = keys_with(&fixture, Status::Unknown);

    let mut group = c.benchmark_group("credential");
    group.throughput(Throughput::Elements(1));
    let mut i = 0;
    group.bench_function("parse_native", |b| {
        b.iter(|| {
            i = (i + 1) % native.len();
            black_box(credential::parse(
                native[i].credential.as_bytes(),
                &prefixes,
            ));
        })
    });
    let mut typo = native[0].credential.clone().into_bytes();
    typo[20] = if typo[20] == b'a' { b'b' } else { b'a' };
    group.bench_function("parse_typo_rejected", |b| {
        b.iter(|| black_box(credential::parse(black_box(&typo), &prefixes)))
    });
    let hasher = Hasher::new(&[1u8; 32]);
    let secret = credential::Secret([3u8; 32]);
    group.bench_function("keyed_blake3_40_bytes", |b| {
        b.iter(|| black_box(hasher.native(black_box(KeyId(9)), black_box(&secret))))
    });
    group.finish();

    let mut group = c.benchmark_group("table_1m");
    group.throughput(Throughput::Elements(1));
    // Spread over the whole table, so most lookups miss the CPU caches as in production.
    let present = fixture.snapshot.header().record_count;
    let ids: Vec<KeyId> = (0..(1u64 << 20))
        .map(|i| KeyId(1 + (i * 7_919_993) % present))
        .collect();
    let mut i = 0;
    group.bench_function("lookup_hit", |b| {
        b.iter(|| {
            i = (i + 1) % ids.len();
            black_box(fixture.snapshot.find(ids[i]).is_some())
        })
    });
    let misses: Vec<KeyId> = (0..(1u64 << 20))
        .map(|i| KeyId(keyset::UNKNOWN_ID_BASE + i * 31))
        .collect();
    group.bench_function("lookup_miss", |b| {
        b.iter(|| {
            i = (i + 1) % misses.len();
            black_box(fixture.snapshot.find(misses[i]).is_none())
        })
    });
    group.finish();

    let mut group = c.benchmark_group("verify_1m");
    group.throughput(Throughput::Elements(1));
    let mut output = Vec::with_capacity(4096);
    let overlay = keyward::overlay::Overlay::new(0);
    let table = keyward::overlay::TableView {
        snapshot: &fixture.snapshot,
        overlay: &overlay,
    };
    for (name, keys) in [
        ("native_valid", &native),
        ("native_unknown", &unknown),
        ("imported_valid", &imported),
    ] {
        let mut i = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % keys.len();
                let request = VerifyRequest {
                    credential: keys[i].credential.as_bytes(),
                    ..Default::default()
                };
                let verdict = fixture.verifier.verify(&table, &request, fixture.now);
                output.clear();
                verify::put_verdict(&mut output, &verdict);
                black_box(&output);
            })
        });
    }
    group.finish();

    // Derived tokens of key 1 (valid, three scopes) with 1, 4 and 16 caveats: an expiry, then
    // alternating scope subsets and claims.
    let mut group = c.benchmark_group("token_verify_1m");
    group.throughput(Throughput::Elements(1));
    for caveats in [1usize, 4, 16] {
        let mut list = vec![Caveat::Expires(UnixSeconds(fixture.now.0 + 3600))];
        for i in 1..caveats {
            list.push(if i % 2 == 1 {
                Caveat::Scopes(vec!["orders:read".into(), "orders:write".into()])
            } else {
                Caveat::Claim(format!("k{i}"), "value".into())
            });
        }
        let token = Token::mint(
            &keyward::token::RootKey::new(&MASTER),
            KeyId(1),
            [5; 16],
            list,
        )
        .unwrap()
        .encode("kwt");
        let request = VerifyRequest {
            credential: token.as_bytes(),
            scope: Some(b"orders:read"),
            ..Default::default()
        };
        assert_eq!(
            fixture
                .verifier
                .verify(&table, &request, fixture.now)
                .status,
            Status::Valid
        );
        group.bench_function(format!("caveats_{caveats}"), |b| {
            b.iter(|| {
                let verdict = fixture
                    .verifier
                    .verify(&table, black_box(&request), fixture.now);
                output.clear();
                verify::put_verdict(&mut output, &verdict);
                black_box(&output);
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("protocol");
    group.throughput(Throughput::Elements(1));
    let mut frame = Vec::new();
    protocol::put_verify_frame(
        &mut frame,
        1,
        &VerifyRequest {
            credential: native[0].credential.as_bytes(),
            scope: Some(b"orders:read"),
            ..Default::default()
        },
    );
    group.bench_function("decode_verify_frame", |b| {
        b.iter(|| {
            let decoded = protocol::decode_frame(black_box(&frame), protocol::BODY_BYTES_DEFAULT)
                .unwrap()
                .unwrap();
            black_box(protocol::parse_verify(decoded.body).unwrap());
        })
    });
    group.finish();
}

criterion_group! {
    name = hot_path;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(2)).warm_up_time(std::time::Duration::from_millis(500));
    targets = benches
}
criterion_main!(hot_path);
