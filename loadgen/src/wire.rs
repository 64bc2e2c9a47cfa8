//! The three protocols the load generator speaks: keyward's binary verify protocol, and, as
//! baselines, Redis (RESP `GET`/`MGET`) and memcached (text `get`) looking up the same
//! credentials stored by `--prepare`. Every parser here is bounded and returns an error for
//! bytes it does not expect; none panics.

use clap::ValueEnum;

use keyward::keyset::ExpectedKey;
use keyward::protocol::{self, opcode, Status};

use crate::workload::{self, Shape};

/// Longest status line or header line accepted from a baseline server.
const LINE_BYTES_MAX: usize = 1024;
/// Largest value accepted from a baseline server.
const VALUE_BYTES_MAX: usize = 1 << 20;
/// Longest key memcached takes.
const MEMCACHE_KEY_BYTES_MAX: usize = 250;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    /// keyward's verify port (VERIFY, VERIFY_BATCH, PING).
    Keyward,
    /// Redis or anything speaking RESP: GET (MGET with --batch), PING.
    Resp,
    /// memcached text protocol: get, version (as the no-op).
    Memcache,
}

/// One parsed answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer<'a> {
    Keyward {
        opcode: u8,
        body: &'a [u8],
    },
    /// A baseline GET: the stored value, or `None` for a miss.
    Value(Option<&'a [u8]>),
    /// A baseline MGET.
    Values(Vec<Option<&'a [u8]>>),
    /// The baseline's no-op answer.
    Pong,
    /// A baseline store acknowledged (`--prepare`).
    Stored,
}

/// What one answer said, counted against what it had to say.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub by_status: [u64; Status::ALL.len()],
    pub mismatches: u64,
    pub first_mismatch: Option<String>,
}

impl Tally {
    pub fn add(&mut self, other: &Tally) {
        for (total, count) in self.by_status.iter_mut().zip(other.by_status) {
            *total += count;
        }
        self.mismatches += other.mismatches;
        if self.first_mismatch.is_none() {
            self.first_mismatch.clone_from(&other.first_mismatch);
        }
    }

    fn record(&mut self, got: Status, expected: Status, counted: bool) {
        if counted {
            self.by_status[got as usize] += 1;
        }
        if got != expected {
            self.mismatches += 1;
            self.first_mismatch
                .get_or_insert_with(|| format!("expected {expected}, got {got}"));
        }
    }
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Keyward => "keyward",
            Protocol::Resp => "resp",
            Protocol::Memcache => "memcache",
        }
    }

    /// The status a baseline can report for a credential that must get `status` from keyward:
    /// a key store cannot tell a malformed credential from an unknown one.
    pub fn observable(self, status: Status) -> Status {
        match (self, status) {
            (Protocol::Keyward, status) => status,
            (_, Status::Malformed) => Status::Unknown,
            (_, status) => status,
        }
    }

    /// Whether `--prepare` stores this credential (baselines hold only known keys).
    pub fn stores(self, key: &ExpectedKey) -> bool {
        !matches!(key.expected, Status::Unknown | Status::Malformed)
    }

    /// Refuses credentials the protocol cannot carry.
    pub fn check_key(self, credential: &str) -> Result<(), String> {
        let plain = !credential.is_empty() && credential.bytes().all(|b| b.is_ascii_graphic());
        match self {
            Protocol::Keyward => Ok(()),
            Protocol::Resp if !credential.is_empty() => Ok(()),
            Protocol::Memcache if plain && credential.len() <= MEMCACHE_KEY_BYTES_MAX => Ok(()),
            _ => Err(format!(
                "credential {:.20}… cannot be a {} key (memcached keys are 1..250 printable bytes without spaces)",
                credential,
                self.name()
            )),
        }
    }

    pub fn put_ping(self, out: &mut Vec<u8>) {
        match self {
            Protocol::Keyward => protocol::put_ping_frame(out, 0),
            Protocol::Resp => out.extend_from_slice(b"*1\r\n$4\r\nPING\r\n"),
            Protocol::Memcache => out.extend_from_slice(b"version\r\n"),
        }
    }

    /// One lookup of `keys`: a batch (VERIFY_BATCH, MGET) when the shape asks for one.
    pub fn put_lookup(self, out: &mut Vec<u8>, keys: &[&ExpectedKey], shape: &Shape<'_>) {
        let batched = shape.batch > 0;
        match self {
            Protocol::Keyward => workload::put_keyward(out, keys, shape),
            Protocol::Resp => {
                let command: &[u8] = if batched { b"MGET" } else { b"GET" };
                put_resp_array(
                    out,
                    std::iter::once(command).chain(keys.iter().map(|k| k.credential.as_bytes())),
                    keys.len() + 1,
                );
            }
            Protocol::Memcache => {
                out.extend_from_slice(b"get");
                for key in keys {
                    out.push(b' ');
                    out.extend_from_slice(key.credential.as_bytes());
                }
                out.extend_from_slice(b"\r\n");
            }
        }
    }

    /// One store of `value` under `key` (`--prepare`).
    pub fn put_store(self, out: &mut Vec<u8>, key: &str, value: &str) {
        match self {
            Protocol::Keyward => unreachable!("keyward keys are not stored by the load generator"),
            Protocol::Resp => put_resp_array(
                out,
                [b"SET".as_slice(), key.as_bytes(), value.as_bytes()].into_iter(),
                3,
            ),
            Protocol::Memcache => {
                out.extend_from_slice(
                    format!("set {key} 0 0 {}\r\n{value}\r\n", value.len()).as_bytes(),
                );
            }
        }
    }

    /// Sets the request id of a keyward frame (other protocols carry none).
    pub fn patch_id(self, frame: &mut [u8], id: u32) {
        if self == Protocol::Keyward {
            frame[4..8].copy_from_slice(&id.to_le_bytes());
        }
    }

    /// Parses the next answer at the start of `buffer`: `Ok(None)` until it is complete, then
    /// the bytes it took and what it said.
    pub fn parse(self, buffer: &[u8]) -> Parsed<Answer<'_>> {
        match self {
            Protocol::Keyward => match protocol::decode_frame(buffer, protocol::BODY_BYTES_LIMIT) {
                Ok(Some(frame)) => Ok(Some((
                    protocol::HEADER_BYTES + frame.body.len(),
                    Answer::Keyward {
                        opcode: frame.header.opcode,
                        body: frame.body,
                    },
                ))),
                Ok(None) => Ok(None),
                Err(error) => Err(format!("bad frame from the server: {error}")),
            },
            Protocol::Resp => parse_resp(buffer),
            Protocol::Memcache => parse_memcache(buffer),
        }
    }
}

/// The value `--prepare` stores for a credential: its status name (so answers can be checked),
/// then its scopes, about the size of keyward's own answer for a valid key.
pub fn stored_value(key: &ExpectedKey) -> String {
    let scopes = key
        .scopes
        .as_ref()
        .map_or_else(String::new, |s| s.join(","));
    format!("{}|{scopes}", key.expected)
}

/// Counts one answer against the statuses its request's credentials must get. Errors are
/// answers that make the rest of the connection's stream untrustworthy.
pub fn check(
    answer: &Answer<'_>,
    expected: &[Status],
    counted: bool,
    tally: &mut Tally,
) -> Result<(), String> {
    let value_status = |value: Option<&[u8]>| -> Result<Status, String> {
        let Some(value) = value else {
            return Ok(Status::Unknown);
        };
        let name = value.split(|&b| b == b'|').next().unwrap_or_default();
        std::str::from_utf8(name)
            .ok()
            .and_then(Status::from_name)
            .ok_or_else(|| {
                "the server holds a value --prepare did not write (run with --prepare)".to_string()
            })
    };
    let single = |tally: &mut Tally, got: Status| -> Result<(), String> {
        match expected {
            [want] => {
                tally.record(got, *want, counted);
                Ok(())
            }
            _ => Err(format!(
                "one answer for a request of {} credentials",
                expected.len()
            )),
        }
    };
    match answer {
        Answer::Pong if expected.is_empty() => Ok(()),
        Answer::Keyward {
            opcode: opcode::PONG,
            ..
        } if expected.is_empty() => Ok(()),
        Answer::Keyward {
            opcode: opcode::VERIFY_RESULT,
            body,
        } => {
            let status = body
                .first()
                .and_then(|&b| Status::from_u8(b))
                .ok_or("bad VERIFY_RESULT body")?;
            single(tally, status)
        }
        Answer::Keyward {
            opcode: opcode::VERIFY_BATCH_RESULT,
            body,
        } => {
            let results = protocol::parse_batch_result(body).map_err(|e| e.to_string())?;
            if results.len() != expected.len() {
                return Err(format!(
                    "{} results for a batch of {}",
                    results.len(),
                    expected.len()
                ));
            }
            for (result, want) in results.iter().zip(expected) {
                tally.record(result.status, *want, counted);
            }
            Ok(())
        }
        Answer::Keyward {
            opcode: opcode::ERROR,
            body,
        } => Err(format!("server error: {:?}", protocol::parse_error(body))),
        Answer::Keyward { opcode, .. } => Err(format!("unexpected opcode {opcode:#04x}")),
        Answer::Value(value) => single(tally, value_status(*value)?),
        Answer::Values(values) => {
            if values.len() != expected.len() {
                return Err(format!(
                    "{} values for {} keys",
                    values.len(),
                    expected.len()
                ));
            }
            for (value, want) in values.iter().zip(expected) {
                tally.record(value_status(*value)?, *want, counted);
            }
            Ok(())
        }
        Answer::Pong | Answer::Stored => Err("answer does not match the request".into()),
    }
}

fn put_resp_array<'a>(out: &mut Vec<u8>, items: impl Iterator<Item = &'a [u8]>, count: usize) {
    out.extend_from_slice(format!("*{count}\r\n").as_bytes());
    for item in items {
        out.extend_from_slice(format!("${}\r\n", item.len()).as_bytes());
        out.extend_from_slice(item);
        out.extend_from_slice(b"\r\n");
    }
}

/// The line at the start of `buffer` without its CRLF, and the bytes it took; `Ok(None)` when
/// incomplete.
fn line(buffer: &[u8]) -> Result<Option<(&[u8], usize)>, String> {
    let window = &buffer[..buffer.len().min(LINE_BYTES_MAX + 2)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(end) => Ok(Some((&buffer[..end], end + 2))),
        None if window.len() > LINE_BYTES_MAX => Err("answer line too long".into()),
        None => Ok(None),
    }
}

fn number(text: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| format!("bad number {:?}", String::from_utf8_lossy(text)))
}

/// A complete item at the start of a buffer: the bytes it took and what it holds.
pub type Parsed<T> = Result<Option<(usize, T)>, String>;

/// A RESP bulk string at the start of `buffer` (`$-1` is nil).
fn resp_bulk(buffer: &[u8]) -> Parsed<Option<&[u8]>> {
    let Some((head, taken)) = line(buffer)? else {
        return Ok(None);
    };
    match head.split_first() {
        Some((b'$', length)) => {
            let length = number(length)?;
            if length == -1 {
                return Ok(Some((taken, None)));
            }
            let length = usize::try_from(length)
                .ok()
                .filter(|&l| l <= VALUE_BYTES_MAX)
                .ok_or("bulk string length out of bounds")?;
            let end = taken + length;
            if buffer.len() < end + 2 {
                return Ok(None);
            }
            if &buffer[end..end + 2] != b"\r\n" {
                return Err("bulk string not followed by CRLF".into());
            }
            Ok(Some((end + 2, Some(&buffer[taken..end]))))
        }
        Some((b'-', message)) => Err(format!(
            "server error: {}",
            String::from_utf8_lossy(message)
        )),
        _ => Err(format!(
            "unexpected answer {:?}",
            String::from_utf8_lossy(head)
        )),
    }
}

fn parse_resp(buffer: &[u8]) -> Parsed<Answer<'_>> {
    let Some(&first) = buffer.first() else {
        return Ok(None);
    };
    match first {
        b'$' | b'-' => Ok(resp_bulk(buffer)?.map(|(taken, value)| (taken, Answer::Value(value)))),
        b'+' => {
            let Some((head, taken)) = line(buffer)? else {
                return Ok(None);
            };
            match head {
                b"+PONG" => Ok(Some((taken, Answer::Pong))),
                b"+OK" => Ok(Some((taken, Answer::Stored))),
                other => Err(format!(
                    "unexpected answer {:?}",
                    String::from_utf8_lossy(other)
                )),
            }
        }
        b'*' => {
            let Some((head, mut taken)) = line(buffer)? else {
                return Ok(None);
            };
            let count = usize::try_from(number(&head[1..])?)
                .ok()
                .filter(|&c| c <= protocol::BATCH_ITEMS_MAX)
                .ok_or("array length out of bounds")?;
            let mut values = Vec::with_capacity(count);
            for _ in 0..count {
                let Some((used, value)) = resp_bulk(&buffer[taken..])? else {
                    return Ok(None);
                };
                taken += used;
                values.push(value);
            }
            Ok(Some((taken, Answer::Values(values))))
        }
        _ => Err(format!("unexpected RESP type byte {first:#04x}")),
    }
}

fn parse_memcache(buffer: &[u8]) -> Parsed<Answer<'_>> {
    let Some((head, taken)) = line(buffer)? else {
        return Ok(None);
    };
    if head == b"END" {
        return Ok(Some((taken, Answer::Value(None))));
    }
    if head == b"STORED" {
        return Ok(Some((taken, Answer::Stored)));
    }
    if head.starts_with(b"VERSION ") {
        return Ok(Some((taken, Answer::Pong)));
    }
    if let Some(rest) = head.strip_prefix(b"VALUE ") {
        // VALUE <key> <flags> <bytes> [<cas>]
        let bytes = rest
            .split(|&b| b == b' ')
            .nth(2)
            .ok_or("VALUE line without a length")?;
        let bytes = usize::try_from(number(bytes)?)
            .ok()
            .filter(|&l| l <= VALUE_BYTES_MAX)
            .ok_or("value length out of bounds")?;
        let end = taken + bytes;
        if buffer.len() < end + 2 {
            return Ok(None);
        }
        if &buffer[end..end + 2] != b"\r\n" {
            return Err("value not followed by CRLF".into());
        }
        let Some((tail, tail_taken)) = line(&buffer[end + 2..])? else {
            return Ok(None);
        };
        if tail != b"END" {
            return Err("a single get answered more than one value".into());
        }
        return Ok(Some((
            end + 2 + tail_taken,
            Answer::Value(Some(&buffer[taken..end])),
        )));
    }
    Err(format!(
        "unexpected answer {:?}",
        String::from_utf8_lossy(head)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp_answers_parse_whole_or_not_at_all() {
        let resp = Protocol::Resp;
        assert_eq!(
            resp.parse(b"$-1\r\n").unwrap(),
            Some((5, Answer::Value(None)))
        );
        assert_eq!(
            resp.parse(b"$7\r\nvalid|x\r\n+PONG").unwrap(),
            Some((13, Answer::Value(Some(b"valid|x"))))
        );
        for partial in [
            &b""[..],
            b"$7\r\nval",
            b"$7\r\nvalid|x\r",
            b"*2\r\n$-1\r\n",
            b"+PON",
        ] {
            assert_eq!(resp.parse(partial).unwrap(), None, "{partial:?}");
        }
        assert_eq!(
            resp.parse(b"*2\r\n$-1\r\n$1\r\nv\r\n").unwrap(),
            Some((16, Answer::Values(vec![None, Some(&b"v"[..])])))
        );
        assert_eq!(resp.parse(b"+PONG\r\n").unwrap(), Some((7, Answer::Pong)));
        assert_eq!(resp.parse(b"+OK\r\n").unwrap(), Some((5, Answer::Stored)));
        for bad in [
            &b"-ERR wrong\r\n"[..],
            b":1\r\n",
            b"$99999999999\r\n",
            b"$2\r\nabcd",
            b"*999\r\n",
            b"$x\r\n",
        ] {
            assert!(resp.parse(bad).is_err(), "{bad:?}");
        }
        assert!(resp.parse(&vec![b'+'; 2000]).is_err());
    }

    #[test]
    fn memcache_answers_parse_whole_or_not_at_all() {
        let mc = Protocol::Memcache;
        assert_eq!(
            mc.parse(b"END\r\n").unwrap(),
            Some((5, Answer::Value(None)))
        );
        let hit = b"VALUE kw_a 0 7\r\nvalid|x\r\nEND\r\n";
        assert_eq!(
            mc.parse(hit).unwrap(),
            Some((hit.len(), Answer::Value(Some(b"valid|x"))))
        );
        for cut in 0..hit.len() {
            assert_eq!(mc.parse(&hit[..cut]).unwrap(), None, "{cut}");
        }
        assert_eq!(
            mc.parse(b"VERSION 1.6.18\r\n").unwrap(),
            Some((16, Answer::Pong))
        );
        for bad in [
            &b"ERROR\r\n"[..],
            b"VALUE kw_a 0\r\n",
            b"VALUE kw_a 0 2\r\nabcdEND\r\n",
            b"VALUE a 0 1\r\nx\r\nVALUE b 0 1\r\ny\r\nEND\r\n",
            b"VALUE a 0 99999999\r\n",
        ] {
            assert!(mc.parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn requests_are_encoded_as_each_server_expects() {
        let key = ExpectedKey::plain("kw_abc".into(), Status::Valid);
        let mut shape = Shape {
            protocol: Protocol::Resp,
            batch: 0,
            mix: None,
            popularity: crate::workload::Popularity::Uniform,
            scope: None,
            address: None,
            seed: 0,
        };
        let mut out = Vec::new();
        Protocol::Resp.put_lookup(&mut out, &[&key], &shape);
        assert_eq!(out, b"*2\r\n$3\r\nGET\r\n$6\r\nkw_abc\r\n");
        out.clear();
        shape.batch = 2;
        Protocol::Resp.put_lookup(&mut out, &[&key, &key], &shape);
        assert_eq!(out, b"*3\r\n$4\r\nMGET\r\n$6\r\nkw_abc\r\n$6\r\nkw_abc\r\n");
        out.clear();
        shape.batch = 0;
        Protocol::Memcache.put_lookup(&mut out, &[&key], &shape);
        assert_eq!(out, b"get kw_abc\r\n");
        out.clear();
        Protocol::Memcache.put_store(&mut out, "kw_abc", "valid|");
        assert_eq!(out, b"set kw_abc 0 0 6\r\nvalid|\r\n");
        assert!(Protocol::Memcache.check_key("has space").is_err());
        assert!(Protocol::Memcache.check_key(&"k".repeat(251)).is_err());
        assert!(Protocol::Resp.check_key("has space").is_ok());
    }

    #[test]
    fn answers_are_checked_against_the_expected_status() {
        let mut tally = Tally::default();
        let valid = [Status::Valid];
        check(
            &Answer::Value(Some(b"valid|orders:read")),
            &valid,
            true,
            &mut tally,
        )
        .unwrap();
        check(&Answer::Value(None), &valid, true, &mut tally).unwrap();
        assert_eq!(tally.mismatches, 1);
        assert_eq!(
            tally.first_mismatch.as_deref(),
            Some("expected valid, got unknown")
        );
        assert_eq!(tally.by_status[Status::Valid as usize], 1);
        assert!(check(&Answer::Value(Some(b"hello")), &valid, true, &mut tally).is_err());
        // Warm-up answers are checked but not counted.
        let revoked = [Status::Revoked];
        let body = [Status::Valid as u8];
        check(
            &Answer::Keyward {
                opcode: opcode::VERIFY_RESULT,
                body: &body,
            },
            &revoked,
            false,
            &mut tally,
        )
        .unwrap();
        assert_eq!(tally.mismatches, 2);
        assert_eq!(tally.by_status[Status::Valid as usize], 1);
        // Batches item by item.
        let mut body = 2u16.to_le_bytes().to_vec();
        body.extend([Status::Unknown as u8, Status::Expired as u8]);
        let mut batch = Tally::default();
        check(
            &Answer::Keyward {
                opcode: opcode::VERIFY_BATCH_RESULT,
                body: &body,
            },
            &[Status::Valid, Status::Expired],
            true,
            &mut batch,
        )
        .unwrap();
        assert_eq!(
            (batch.mismatches, batch.by_status[Status::Expired as usize]),
            (1, 1)
        );
        check(
            &Answer::Values(vec![None, Some(b"expired|")]),
            &[Status::Unknown, Status::Expired],
            true,
            &mut batch,
        )
        .unwrap();
        assert_eq!(batch.mismatches, 1);
        assert!(check(
            &Answer::Values(vec![None]),
            &[Status::Unknown, Status::Expired],
            true,
            &mut batch
        )
        .is_err());
        assert!(check(
            &Answer::Keyward {
                opcode: opcode::ERROR,
                body: &[5, 0, 0]
            },
            &valid,
            true,
            &mut batch
        )
        .is_err());
        assert!(check(
            &Answer::Keyward {
                opcode: opcode::VERIFY_RESULT,
                body: &[]
            },
            &valid,
            true,
            &mut batch
        )
        .is_err());
        tally.add(&batch);
        assert_eq!(tally.mismatches, 3);
        assert_eq!(
            Protocol::Resp.observable(Status::Malformed),
            Status::Unknown
        );
        assert_eq!(
            Protocol::Keyward.observable(Status::Malformed),
            Status::Malformed
        );
    }
}
