//! A fixed workload for counting instructions, a figure this machine's noise cannot move:
//! 20 passes over 1 000 native credentials of one expected status (`WHICH=valid`, the default, or
//! `WHICH=unknown`) on a 20 000-key table. Run it under callgrind and read `Verifier::verify`'s
//! inclusive count (divide by 20 000 for one verify):
//!
//! ```sh
//! cargo bench --bench instructions --no-run   # prints the binary's path
//! WHICH=valid valgrind --tool=callgrind --callgrind-out-file=cg.out target/release/deps/instructions-… --bench
//! callgrind_annotate --inclusive=yes cg.out | grep Verifier::verify
//! ```

use std::hint::black_box;

use keyward::credential::{Hasher, Prefixes};
use keyward::keyset;
use keyward::overlay::{Overlay, TableView};
use keyward::protocol::{Status, VerifyRequest};
use keyward::record::UnixSeconds;
use keyward::snapshot::{self, Snapshot};
use keyward::verify::{self, Verifier};

const TABLE_KEYS: usize = 20_000;
const CREDENTIALS: usize = 1_000;
const PASSES: usize = 20;

fn main() {
    // `cargo test --benches` runs bench targets without --bench: then do nothing.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let pepper = [7u8; 32];
    let prefixes = Prefixes::default();
    let now = UnixSeconds::now();
    let set = keyset::generate(TABLE_KEYS, &Hasher::new(&pepper), &prefixes, now);
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join(snapshot::FILE_NAME);
    snapshot::write_atomic(&path, &snapshot::encode(&set.records, 0, now).unwrap()).unwrap();
    let snapshot = Snapshot::open(&path).unwrap();
    let overlay = Overlay::new(0);
    let table = TableView {
        snapshot: &snapshot,
        overlay: &overlay,
    };
    let verifier = Verifier::new(&pepper, &[3; 32], prefixes, "kwt");
    let wanted = match std::env::var("WHICH").as_deref() {
        Ok("unknown") => Status::Unknown,
        _ => Status::Valid,
    };
    let keys: Vec<_> = set
        .keys
        .iter()
        .filter(|k| k.expected == wanted && k.credential.starts_with("kw_"))
        .take(CREDENTIALS)
        .collect();
    let mut output = Vec::new();
    for _ in 0..PASSES {
        for key in &keys {
            let request = VerifyRequest {
                credential: key.credential.as_bytes(),
                ..Default::default()
            };
            let verdict = verifier.verify(&table, black_box(&request), now);
            assert_eq!(verdict.status, wanted);
            output.clear();
            verify::put_verdict(&mut output, &verdict);
            black_box(&output);
        }
    }
    eprintln!("{} verifies of {wanted} credentials", keys.len() * PASSES);
}
