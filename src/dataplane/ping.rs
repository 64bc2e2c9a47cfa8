//! A service that answers PING frames and nothing else: the turn alone, for measuring it
//! (`keyward-floor --uring`) and for testing it without a key table.

use super::connection::ConnectionId;
use super::turn::{Service, Step};
use crate::protocol;

/// A service that answers PING frames and nothing else (for measuring the turn itself).
pub struct PingService {
    pub frame_body_bytes_max: usize,
}

impl Service for PingService {
    fn answer(&mut self, _: ConnectionId, bytes: &[u8], out: &mut Vec<u8>) -> (usize, Step) {
        let mut consumed = 0;
        loop {
            match protocol::decode_frame(&bytes[consumed..], self.frame_body_bytes_max) {
                Ok(Some(frame)) if frame.header.opcode == protocol::opcode::PING => {
                    consumed += frame.bytes();
                    protocol::put_pong_frame(out, frame.header.request_id);
                }
                Ok(Some(_)) => return (consumed, Step::Close),
                Ok(None) => return (consumed, Step::More),
                Err(error) => {
                    protocol::put_error_frame(out, 0, error.code(), &error.to_string());
                    return (consumed, Step::Close);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::unix::io::AsRawFd;
    use std::sync::Arc;

    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::dataplane::turn::{serve, TurnSettings};
    use crate::protocol::opcode;

    #[test]
    fn frames_split_across_tiny_buffers_and_a_dry_ring_are_all_answered() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let settings = TurnSettings {
            connections_max: 8,
            // 4 buffers of 16 bytes: every 12-byte frame straddles buffers, and 3 000 pipelined
            // frames run the ring dry again and again.
            buffers: 4,
            buffer_bytes: 16,
            frame_body_bytes_max: 0,
            stop_poll: Duration::from_millis(10),
            ..TurnSettings::default()
        };
        let serving = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut service = PingService {
                    frame_body_bytes_max: 0,
                };
                serve(listener.as_raw_fd(), settings, &stop, &mut service)
            })
        };
        let clients: Vec<_> = (0..4u32)
            .map(|client| {
                std::thread::spawn(move || {
                    let mut stream = TcpStream::connect(address).unwrap();
                    stream
                        .set_read_timeout(Some(Duration::from_secs(20)))
                        .unwrap();
                    let mut pings = Vec::new();
                    for id in 0..3000 {
                        protocol::put_ping_frame(&mut pings, client << 16 | id);
                    }
                    stream.write_all(&pings).unwrap();
                    let mut answers = vec![0u8; pings.len()];
                    stream.read_exact(&mut answers).unwrap();
                    for (id, answer) in answers.chunks(protocol::HEADER_BYTES).enumerate() {
                        let header: &[u8; protocol::HEADER_BYTES] = answer.try_into().unwrap();
                        let header = protocol::decode_header(header, 0).unwrap();
                        assert_eq!(header.opcode, opcode::PONG);
                        assert_eq!(header.request_id, client << 16 | id as u32);
                    }
                })
            })
            .collect();
        for client in clients {
            client.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        serving.join().unwrap().unwrap();
    }
}
