//! Does a caller without the secret learn whether a key id exists? Compares the time to verify
//! batches of credentials with unknown ids against batches with known ids and wrong secrets, on
//! a table far larger than the CPU caches (so lookups are cold), and reports Welch's t statistic.
//! |t| below 4.5 is the usual threshold (dudect) for "no difference detected".
//!
//! `taskset -c 1 cargo bench --bench timing` (KEYWARD_TIMING_KEYS, KEYWARD_TIMING_SAMPLES to
//! change the table size, default 1 000 000, and the batches per class, default 2 000).

use std::hint::black_box;
use std::time::Instant;

use keyward::credential::{Hasher, KeyId, NativeCredential, Prefixes, Secret, Visibility};
use keyward::keyset;
use keyward::overlay::{Overlay, TableView};
use keyward::protocol::{Status, VerifyRequest};
use keyward::record::{KeyKind, UnixSeconds};
use keyward::snapshot::{self, Snapshot};
use keyward::verify::Verifier;

/// Credentials per timed batch.
const BATCH: usize = 256;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A small, seeded generator (xorshift*), so runs can be repeated.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

struct Summary {
    mean: f64,
    variance: f64,
    count: f64,
}

fn summarize(samples: &[f64]) -> Summary {
    let count = samples.len() as f64;
    let mean = samples.iter().sum::<f64>() / count;
    let variance = samples.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (count - 1.0);
    Summary {
        mean,
        variance,
        count,
    }
}

/// Welch's t statistic for two samples of unequal variance.
fn welch_t(a: &Summary, b: &Summary) -> f64 {
    (a.mean - b.mean) / (a.variance / a.count + b.variance / b.count).sqrt()
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs this with no such flag: then
    // only check that it builds and starts.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let keys = env_number("KEYWARD_TIMING_KEYS", 1_000_000);
    let samples = env_number("KEYWARD_TIMING_SAMPLES", 2_000);
    let pepper = [7u8; 32];
    let prefixes = Prefixes::default();
    let now = UnixSeconds::now();
    eprintln!("building a {keys}-key table…");
    let set = keyset::generate(keys, &Hasher::new(&pepper), &prefixes, now);
    let known: Vec<u64> = set
        .records
        .iter()
        .filter(|r| r.kind == KeyKind::Native && r.visibility == Visibility::Secret)
        .map(|r| r.id.0)
        .collect();
    let largest = set.records.iter().map(|r| r.id.0).max().unwrap_or(0);
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join(snapshot::FILE_NAME);
    snapshot::write_atomic(&path, &snapshot::encode(&set.records, 0, now).unwrap()).unwrap();
    drop(set);
    let snapshot = Snapshot::open(&path).unwrap();
    // Fault every page of the mapping in first, as a running server's would be: what is left to
    // measure is cache misses, not first touches.
    let touched: u64 = snapshot
        .body()
        .records
        .iter()
        .map(|r| u64::from(r.hash[0]))
        .sum();
    black_box(touched);
    let overlay = Overlay::new(0);
    let table = TableView {
        snapshot: &snapshot,
        overlay: &overlay,
    };
    let verifier = Verifier::new(&pepper, &[3; 32], prefixes.clone(), "kwt");
    let mut random = Random(0x9e37_79b9_7f4a_7c15);
    let credential = |id: u64, random: &mut Random| {
        let mut secret = [0u8; 32];
        for chunk in secret.chunks_mut(8) {
            chunk.copy_from_slice(&random.next().to_le_bytes());
        }
        NativeCredential {
            key_id: KeyId(id),
            secret: Secret(secret),
            visibility: Visibility::Secret,
        }
        .encode(&prefixes)
    };
    eprintln!("timing {samples} batches of {BATCH} per class…");
    let mut unknown = Vec::with_capacity(samples);
    let mut wrong_secret = Vec::with_capacity(samples);
    for _ in 0..2 * samples {
        // Each batch of one class, the class picked at random so drift hits both alike.
        let known_class = random.below(2) == 0;
        if (known_class && wrong_secret.len() == samples)
            || (!known_class && unknown.len() == samples)
        {
            continue;
        }
        let batch: Vec<String> = (0..BATCH)
            .map(|_| {
                let id = if known_class {
                    known[random.below(known.len() as u64) as usize]
                } else {
                    largest + 1 + random.below(KeyId::MAX - largest - 1)
                };
                credential(id, &mut random)
            })
            .collect();
        let started = Instant::now();
        for text in &batch {
            let request = VerifyRequest {
                credential: text.as_bytes(),
                ..Default::default()
            };
            let verdict = verifier.verify(&table, black_box(&request), now);
            assert_eq!(verdict.status, Status::Unknown);
        }
        let per_item = started.elapsed().as_nanos() as f64 / BATCH as f64;
        if known_class {
            wrong_secret.push(per_item);
        } else {
            unknown.push(per_item);
        }
    }
    let a = summarize(&unknown);
    let b = summarize(&wrong_secret);
    let t = welch_t(&a, &b);
    println!(
        "unknown id:              mean {:.1} ns per verify (sd {:.1}, {} batches of {BATCH})",
        a.mean,
        a.variance.sqrt(),
        unknown.len()
    );
    println!(
        "known id, wrong secret:  mean {:.1} ns per verify (sd {:.1}, {} batches of {BATCH})",
        b.mean,
        b.variance.sqrt(),
        wrong_secret.len()
    );
    println!(
        "difference {:+.1} ns; Welch t = {t:.2} ({})",
        a.mean - b.mean,
        if t.abs() < 4.5 {
            "|t| < 4.5: no difference detected"
        } else {
            "|t| >= 4.5: the two classes are distinguishable"
        }
    );
}
