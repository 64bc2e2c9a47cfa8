//! What to send: the request sequence every client thread walks, built once before the run from
//! the key file, the mix of credential kinds, the popularity of keys and the protocol. Each
//! request is a ready frame plus the status every credential in it must get.

use std::net::IpAddr;

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Zipf};

use keyward::credential::{KeyId, NativeCredential, Prefixes, Secret, Visibility};
use keyward::keyset::{ExpectedKey, UNKNOWN_ID_BASE};
use keyward::protocol::{self, Status, VerifyRequest};

use crate::wire::Protocol;

/// Most requests in the prepared sequence; threads walk it cyclically.
pub const SEQUENCE_CREDENTIALS_MAX: usize = 1 << 20;
/// Fewest requests in the sequence, so short key files still give varied traffic.
const SEQUENCE_REQUESTS_MIN: usize = 65_536;

/// A kind of credential the mix can ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Credentials the key file expects to get this status from a plain VERIFY.
    Filed(Status),
    /// Native credentials with one character changed (the checksum fails): `malformed`.
    Malformed,
    /// Tokens derived from valid keys before the run: `valid`.
    Derived,
}

impl Kind {
    pub fn parse(name: &str) -> Option<Kind> {
        match name {
            "malformed" => Some(Kind::Malformed),
            "derived" => Some(Kind::Derived),
            other => Status::from_name(other).map(Kind::Filed),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Filed(status) => status.name(),
            Kind::Malformed => "malformed",
            Kind::Derived => "derived",
        }
    }
}

/// Fractions of each kind, normalised to sum to one.
#[derive(Clone, Debug, PartialEq)]
pub struct Mix(pub Vec<(Kind, f64)>);

impl Mix {
    /// Parses `valid=90,unknown=5,revoked=5` (weights, any positive scale).
    pub fn parse(text: &str) -> Result<Mix, String> {
        let mut parts = Vec::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, weight) = item
                .split_once('=')
                .ok_or_else(|| format!("--mix item {item:?} is not KIND=WEIGHT"))?;
            let kind = Kind::parse(name.trim()).ok_or_else(|| {
                format!("--mix: unknown kind {name:?} (use a status name such as valid, unknown, revoked, expired, or malformed, derived)")
            })?;
            let weight: f64 = weight
                .trim()
                .parse()
                .ok()
                .filter(|w: &f64| w.is_finite() && *w >= 0.0)
                .ok_or_else(|| format!("--mix: weight of {name} must be a number ≥ 0"))?;
            if parts.iter().any(|(k, _)| *k == kind) {
                return Err(format!("--mix names {name} twice"));
            }
            parts.push((kind, weight));
        }
        let total: f64 = parts.iter().map(|(_, w)| w).sum();
        if total <= 0.0 {
            return Err("--mix needs at least one kind with a weight above 0".into());
        }
        Ok(Mix(parts
            .into_iter()
            .filter(|(_, w)| *w > 0.0)
            .map(|(k, w)| (k, w / total))
            .collect()))
    }

    pub fn has(&self, kind: Kind) -> bool {
        self.0.iter().any(|(k, _)| *k == kind)
    }
}

/// How often each key of a pool is picked.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Popularity {
    /// Every key equally likely, drawn at random. (Not walked in file order: a store whose
    /// records were loaded in that order would find them neighbours in memory, which flatters
    /// it by 10–25 % measured on Redis.)
    Uniform,
    /// Zipf with this exponent: rank k is picked with weight 1/k^s.
    Zipf(f64),
}

/// Everything that shapes the requests.
pub struct Shape<'a> {
    pub protocol: Protocol,
    pub batch: usize,
    pub mix: Option<&'a Mix>,
    pub popularity: Popularity,
    pub scope: Option<&'a str>,
    pub address: Option<IpAddr>,
    pub seed: u64,
}

/// The credentials of each kind, with the status each must get.
#[derive(Default)]
pub struct Pools {
    pub pools: Vec<(Kind, Vec<ExpectedKey>)>,
}

impl Pools {
    /// Sorts the key file into pools by expected status, and adds generated malformed (and,
    /// when the file has none, unknown) credentials when the mix asks for them.
    pub fn from_key_file(keys: &[ExpectedKey], mix: &Mix, seed: u64) -> Result<Pools, String> {
        let mut pools = Pools::default();
        let mut rng = SmallRng::seed_from_u64(seed ^ 0x5eed);
        for &(kind, _) in &mix.0 {
            let pool: Vec<ExpectedKey> = match kind {
                Kind::Filed(status) => {
                    let filed: Vec<ExpectedKey> = keys
                        .iter()
                        .filter(|k| k.expected == status)
                        .cloned()
                        .collect();
                    if filed.is_empty() && status == Status::Unknown {
                        (0..4096).map(|_| unknown_credential(&mut rng)).collect()
                    } else {
                        filed
                    }
                }
                Kind::Malformed => keys
                    .iter()
                    .filter(|k| k.expected == Status::Valid)
                    .filter_map(|k| malformed(&k.credential, &mut rng))
                    .take(65_536)
                    .map(|credential| ExpectedKey::plain(credential, Status::Malformed))
                    .collect(),
                // Filled in by the caller, which must reach the server to mint them.
                Kind::Derived => Vec::new(),
            };
            if pool.is_empty() && kind != Kind::Derived {
                return Err(format!(
                    "--mix asks for {} credentials but the key file has none to draw them from",
                    kind.name()
                ));
            }
            pools.pools.push((kind, pool));
        }
        Ok(pools)
    }

    pub fn set(&mut self, kind: Kind, keys: Vec<ExpectedKey>) {
        if let Some(entry) = self.pools.iter_mut().find(|(k, _)| *k == kind) {
            entry.1 = keys;
        }
    }
}

/// A well-formed native credential for an id no generated table holds: `unknown`.
pub fn unknown_credential(rng: &mut SmallRng) -> ExpectedKey {
    let credential = NativeCredential {
        key_id: KeyId(UNKNOWN_ID_BASE + rng.random_range(0..1u64 << 40)),
        secret: Secret::random(),
        visibility: Visibility::Secret,
    }
    .encode(&Prefixes::default());
    ExpectedKey::plain(credential, Status::Unknown)
}

/// The credential with one payload character replaced by another of the alphabet, so its
/// checksum no longer matches. `None` for credentials without a `_` separated payload.
pub fn malformed(credential: &str, rng: &mut SmallRng) -> Option<String> {
    let start = credential.find('_')? + 1;
    if !credential.starts_with("kw") || credential.len() <= start + 1 {
        return None;
    }
    let mut bytes = credential.as_bytes().to_vec();
    let at = rng.random_range(start..bytes.len());
    let alphabet = keyward::credential::ALPHABET;
    let current = alphabet.iter().position(|&c| c == bytes[at])?;
    bytes[at] = alphabet[(current + rng.random_range(1..alphabet.len())) % alphabet.len()];
    String::from_utf8(bytes).ok()
}

/// The prepared requests: frames back to back, with the statuses their credentials must get.
pub struct Requests {
    bytes: Vec<u8>,
    /// End offset of request i in `bytes`.
    ends: Vec<usize>,
    /// Expected statuses, `per_request` per request.
    expected: Vec<Status>,
    per_request: usize,
    /// Credentials per request (1, or the batch size; 0 for PING).
    pub credentials: usize,
    /// Distinct credentials the sequence uses, for `--prepare`.
    pub distinct: Vec<ExpectedKey>,
}

impl Requests {
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Never true once built: every sequence holds at least one request.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn frame(&self, index: usize) -> &[u8] {
        let start = if index == 0 { 0 } else { self.ends[index - 1] };
        &self.bytes[start..self.ends[index]]
    }

    pub fn expected(&self, index: usize) -> &[Status] {
        &self.expected[index * self.per_request..(index + 1) * self.per_request]
    }

    /// A single request repeated (PING).
    pub fn ping(protocol: Protocol) -> Requests {
        let mut bytes = Vec::new();
        protocol.put_ping(&mut bytes);
        Requests {
            ends: vec![bytes.len()],
            bytes,
            expected: Vec::new(),
            per_request: 0,
            credentials: 0,
            distinct: Vec::new(),
        }
    }

    /// Builds the sequence from pools: without a mix, one pool holding the whole key file.
    pub fn build(pools: &Pools, shape: &Shape<'_>) -> Result<Requests, String> {
        let mut rng = SmallRng::seed_from_u64(shape.seed);
        let batch = shape.batch.max(1);
        let available: usize = pools.pools.iter().map(|(_, p)| p.len()).sum();
        let fewest = (SEQUENCE_REQUESTS_MIN * batch).min(SEQUENCE_CREDENTIALS_MAX);
        let credentials = available.clamp(fewest, SEQUENCE_CREDENTIALS_MAX).max(batch);
        let picks = pick_sequence(pools, shape, credentials, &mut rng)?;
        let mut requests = Requests {
            bytes: Vec::with_capacity(credentials * 100 / batch.max(1) + 64),
            ends: Vec::with_capacity(credentials / batch),
            expected: Vec::with_capacity(credentials),
            per_request: batch,
            credentials: batch,
            distinct: Vec::new(),
        };
        let mut used = vec![Vec::<bool>::new(); pools.pools.len()];
        for (slot, (_, pool)) in used.iter_mut().zip(&pools.pools) {
            *slot = vec![false; pool.len()];
        }
        for chunk in picks.chunks_exact(batch) {
            let keys: Vec<&ExpectedKey> = chunk
                .iter()
                .map(|&(pool, item)| &pools.pools[pool].1[item])
                .collect();
            for &(pool, item) in chunk {
                used[pool][item] = true;
            }
            for key in &keys {
                let status = key
                    .expected_for(shape.scope, shape.address)
                    .ok_or_else(|| {
                        "--scope and --client-address need a key file that lists scopes and allowed addresses (as `keyward-ctl keys generate` writes)".to_string()
                    })?;
                requests.expected.push(shape.protocol.observable(status));
            }
            shape.protocol.put_lookup(&mut requests.bytes, &keys, shape);
            requests.ends.push(requests.bytes.len());
        }
        for (slot, (_, pool)) in used.iter().zip(&pools.pools) {
            for (key, _) in pool.iter().zip(slot).filter(|(_, used)| **used) {
                requests.distinct.push(key.clone());
            }
        }
        Ok(requests)
    }
}

/// Picks `count` (pool, item) pairs: the kind by the mix's weights, the item by popularity.
pub fn pick_sequence(
    pools: &Pools,
    shape: &Shape<'_>,
    count: usize,
    rng: &mut SmallRng,
) -> Result<Vec<(usize, usize)>, String> {
    let weights: Vec<f64> = match shape.mix {
        Some(mix) => pools
            .pools
            .iter()
            .map(|(kind, _)| {
                mix.0
                    .iter()
                    .find(|(k, _)| k == kind)
                    .map_or(0.0, |(_, w)| *w)
            })
            .collect(),
        None => vec![1.0; pools.pools.len()],
    };
    let zipfs: Vec<Option<Zipf<f64>>> = pools
        .pools
        .iter()
        .map(|(_, pool)| match shape.popularity {
            Popularity::Zipf(s) if !pool.is_empty() => Zipf::new(pool.len() as f64, s)
                .map(Some)
                .map_err(|e| format!("--zipf {s}: {e}")),
            _ => Ok(None),
        })
        .collect::<Result<_, _>>()?;
    let mut picks = Vec::with_capacity(count);
    for _ in 0..count {
        let pool = if pools.pools.len() == 1 {
            0
        } else {
            let mut roll: f64 = rng.random();
            let mut chosen = pools.pools.len() - 1;
            for (index, weight) in weights.iter().enumerate() {
                if roll < *weight {
                    chosen = index;
                    break;
                }
                roll -= weight;
            }
            chosen
        };
        let size = pools.pools[pool].1.len();
        if size == 0 {
            return Err(format!(
                "no {} credentials to send",
                pools.pools[pool].0.name()
            ));
        }
        let item = match (&zipfs[pool], shape.mix) {
            (Some(zipf), _) => (zipf.sample(rng) as usize).clamp(1, size) - 1,
            (None, _) => rng.random_range(0..size),
        };
        picks.push((pool, item));
    }
    Ok(picks)
}

/// The VERIFY request for one credential with the run's scope and address.
pub fn verify_request<'a>(key: &'a ExpectedKey, shape: &Shape<'a>) -> VerifyRequest<'a> {
    VerifyRequest {
        credential: key.credential.as_bytes(),
        scope: shape.scope.map(str::as_bytes),
        tenant: None,
        address: shape.address,
    }
}

/// Writes one keyward VERIFY or VERIFY_BATCH frame (request id 0, patched at send).
pub fn put_keyward(out: &mut Vec<u8>, keys: &[&ExpectedKey], shape: &Shape<'_>) {
    if shape.batch > 0 {
        let requests: Vec<VerifyRequest<'_>> =
            keys.iter().map(|k| verify_request(k, shape)).collect();
        protocol::put_batch_frame(out, 0, &requests);
    } else {
        protocol::put_verify_frame(out, 0, &verify_request(keys[0], shape));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(mix: Option<&Mix>, popularity: Popularity) -> Shape<'_> {
        Shape {
            protocol: Protocol::Keyward,
            batch: 0,
            mix,
            popularity,
            scope: None,
            address: None,
            seed: 7,
        }
    }

    fn file() -> Vec<ExpectedKey> {
        let mut rng = SmallRng::seed_from_u64(1);
        let mut keys: Vec<ExpectedKey> = (0..90)
            .map(|_| {
                let mut key = unknown_credential(&mut rng);
                key.expected = Status::Valid;
                key
            })
            .collect();
        keys.extend((0..10).map(|i| ExpectedKey::plain(format!("kw_revoked{i}"), Status::Revoked)));
        keys
    }

    #[test]
    fn mixes_parse_and_normalise() {
        let mix = Mix::parse("valid=90, revoked=5,malformed=5,expired=0").unwrap();
        assert_eq!(mix.0.len(), 3);
        assert!((mix.0[0].1 - 0.9).abs() < 1e-9);
        assert!(mix.has(Kind::Malformed) && !mix.has(Kind::Filed(Status::Expired)));
        for bad in [
            "valid",
            "valid=x",
            "valid=-1",
            "bogus=1",
            "valid=0",
            "valid=1,valid=2",
        ] {
            assert!(Mix::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_sequence_follows_the_mix() {
        let keys = file();
        let mix = Mix::parse("valid=80,revoked=10,unknown=5,malformed=5").unwrap();
        let pools = Pools::from_key_file(&keys, &mix, 3).unwrap();
        let requests = Requests::build(&pools, &shape(Some(&mix), Popularity::Uniform)).unwrap();
        assert_eq!(requests.len(), SEQUENCE_REQUESTS_MIN);
        let count = |status: Status| {
            (0..requests.len())
                .filter(|&i| requests.expected(i) == [status])
                .count() as f64
                / requests.len() as f64
        };
        assert!((count(Status::Valid) - 0.80).abs() < 0.01);
        assert!((count(Status::Revoked) - 0.10).abs() < 0.01);
        assert!((count(Status::Unknown) - 0.05).abs() < 0.01);
        assert!((count(Status::Malformed) - 0.05).abs() < 0.01);
        // Every malformed credential really fails its checksum.
        for key in pools
            .pools
            .iter()
            .find(|(k, _)| *k == Kind::Malformed)
            .unwrap()
            .1
            .iter()
        {
            assert!(matches!(
                keyward::credential::parse(key.credential.as_bytes(), &Prefixes::default()),
                keyward::credential::Parsed::Malformed(_)
            ));
        }
    }

    #[test]
    fn zipf_makes_the_first_keys_hot_and_uniform_spreads_evenly() {
        let keys = file();
        let pools = Pools {
            pools: vec![(Kind::Filed(Status::Valid), keys.clone())],
        };
        let mut rng = SmallRng::seed_from_u64(9);
        let zipf = pick_sequence(
            &pools,
            &shape(None, Popularity::Zipf(1.2)),
            10_000,
            &mut rng,
        )
        .unwrap();
        let hottest = zipf.iter().filter(|(_, i)| *i == 0).count();
        let coldest = zipf.iter().filter(|(_, i)| *i == 99).count();
        assert!(hottest > 10 * coldest.max(1), "{hottest} vs {coldest}");
        let uniform =
            pick_sequence(&pools, &shape(None, Popularity::Uniform), 100_000, &mut rng).unwrap();
        let mut counts = [0u32; 100];
        for (_, item) in &uniform {
            counts[*item] += 1;
        }
        assert!(
            counts.iter().all(|&n| (800..1200).contains(&n)),
            "{counts:?}"
        );
        assert_ne!(uniform[..3], [(0, 0), (0, 1), (0, 2)], "not in file order");
        assert!(pick_sequence(&pools, &shape(None, Popularity::Zipf(-1.0)), 1, &mut rng).is_err());
    }

    #[test]
    fn batches_of_any_size_build() {
        let keys = file();
        let pools = Pools {
            pools: vec![(Kind::Filed(Status::Valid), keys)],
        };
        for batch in [1, 16, 64, 256] {
            let mut batched = shape(None, Popularity::Uniform);
            batched.batch = batch;
            let requests = Requests::build(&pools, &batched).unwrap();
            assert!(!requests.is_empty());
            assert_eq!(requests.expected(0).len(), batch);
            assert!(requests.len() * batch <= SEQUENCE_CREDENTIALS_MAX);
        }
    }

    #[test]
    fn a_mix_without_credentials_of_a_kind_is_refused() {
        let keys = file();
        let mix = Mix::parse("valid=1,expired=1").unwrap();
        let error = Pools::from_key_file(&keys, &mix, 1).err().unwrap();
        assert!(error.contains("expired"), "{error}");
    }

    #[test]
    fn scope_expectations_need_the_scope_columns() {
        let keys = file();
        let pools = Pools {
            pools: vec![(Kind::Filed(Status::Valid), keys)],
        };
        let mut scoped = shape(None, Popularity::Uniform);
        scoped.scope = Some("orders:read");
        let error = Requests::build(&pools, &scoped).err().unwrap();
        assert!(error.contains("--scope"), "{error}");
    }
}
