//! `--prepare`: stores every credential a baseline run will look up in the Redis or memcached
//! server, so its GETs find what keyward's VERIFYs find. The value is the credential's status
//! and scopes ([`wire::stored_value`]); credentials that must be unknown or malformed are not
//! stored. Stores are pipelined in chunks and every acknowledgement is checked.

use keyward::outln;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::report::thousands;
use crate::Args;
use keyward_loadgen::wire::{self, Answer};
use keyward_loadgen::workload::Requests;

const CHUNK: usize = 1000;

pub fn run(args: &Args, requests: &Requests) -> Result<(), String> {
    let server = &args.server;
    let mut stream = server
        .connect()
        .map_err(|e| format!("cannot connect to {server}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let keys: Vec<_> = requests
        .distinct
        .iter()
        .filter(|k| args.protocol.stores(k))
        .collect();
    let started = Instant::now();
    let mut output = Vec::new();
    let mut input = vec![0u8; 1 << 16];
    for chunk in keys.chunks(CHUNK) {
        output.clear();
        for key in chunk {
            args.protocol
                .put_store(&mut output, &key.credential, &wire::stored_value(key));
        }
        stream
            .write_all(&output)
            .map_err(|e| format!("write to {server}: {e}"))?;
        let (mut start, mut filled, mut acknowledged) = (0, 0, 0);
        while acknowledged < chunk.len() {
            match args.protocol.parse(&input[start..filled])? {
                Some((taken, Answer::Stored)) => {
                    start += taken;
                    acknowledged += 1;
                }
                Some((_, other)) => {
                    return Err(format!("{server} answered a store with {other:?}"))
                }
                None => {
                    input.copy_within(start..filled, 0);
                    filled -= start;
                    start = 0;
                    let read = stream
                        .read(&mut input[filled..])
                        .map_err(|e| format!("read from {server}: {e}"))?;
                    if read == 0 {
                        return Err(format!("{server} closed the connection"));
                    }
                    filled += read;
                }
            }
        }
    }
    outln!(
        "keyward-loadgen: stored {} credentials in {} at {server} in {:.1} s (unknown and malformed ones left out, as they would be)",
        thousands(keys.len() as u64),
        args.protocol.name(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
