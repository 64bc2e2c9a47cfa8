//! A blocking client for the verify protocol (std::net): single, pipelined and batch calls.
//!
//! ```no_run
//! use keyward::client::Client;
//! use keyward::protocol::VerifyRequest;
//! let mut client = Client::connect("127.0.0.1:7500").unwrap();
//! let request = VerifyRequest { credential: b"kw_...", scope: Some(b"orders:read"), ..Default::default() };
//! let result = client.verify(&request).unwrap();
//! println!("{}", result.status);
//! ```

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};

use crate::endpoint::{Endpoint, Stream};
use std::time::Duration;

use crate::protocol::{self, opcode, ErrorBody, FrameHeader, VerifyRequest, VerifyResult};

/// Longest response body the client accepts.
pub const RESPONSE_BODY_BYTES_MAX: usize = protocol::BODY_BYTES_LIMIT;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    #[error("server answered with an error (code {}): {}", .0.code, .0.message)]
    Server(ErrorBody),
    #[error("unexpected response: {0}")]
    Protocol(String),
}

/// One connection to a verify port.
pub struct Client {
    stream: Stream,
    next_request_id: u32,
    output: Vec<u8>,
}

impl Client {
    /// Connects over TCP.
    pub fn connect(address: impl ToSocketAddrs) -> Result<Client, ClientError> {
        let stream = TcpStream::connect(address)?;
        stream.set_nodelay(true)?;
        Ok(Client::over(Stream::Tcp(stream)))
    }

    /// Connects to a TCP address or a Unix socket (`unix:/path`).
    pub fn connect_to(endpoint: &Endpoint) -> Result<Client, ClientError> {
        Ok(Client::over(endpoint.connect()?))
    }

    fn over(stream: Stream) -> Client {
        Client {
            stream,
            next_request_id: 1,
            output: Vec::with_capacity(4096),
        }
    }

    /// Sets how long a call waits for its answer.
    pub fn set_timeout(&self, timeout: Option<Duration>) -> Result<(), ClientError> {
        self.stream.set_read_timeout(timeout)?;
        self.stream.set_write_timeout(timeout)?;
        Ok(())
    }

    fn request_id(&mut self) -> u32 {
        let id = self.next_request_id;
        self.next_request_id = self.next_request_id.wrapping_add(1);
        id
    }

    pub fn ping(&mut self) -> Result<(), ClientError> {
        let id = self.request_id();
        self.output.clear();
        protocol::put_ping_frame(&mut self.output, id);
        self.stream.write_all(&self.output)?;
        self.expect(id, opcode::PONG)?;
        Ok(())
    }

    pub fn verify(&mut self, request: &VerifyRequest<'_>) -> Result<VerifyResult, ClientError> {
        Ok(self
            .verify_pipelined(std::slice::from_ref(request))?
            .remove(0))
    }

    /// Sends a VERIFY_AT: answered only once the server has applied `sequence` (a change's
    /// acknowledgement carries its sequence), or `stale`. Returns the sequence the answer was
    /// decided at, and the answer.
    pub fn verify_at(
        &mut self,
        sequence: u64,
        request: &VerifyRequest<'_>,
    ) -> Result<(u64, VerifyResult), ClientError> {
        self.output.clear();
        let id = self.request_id();
        protocol::put_verify_at_frame(&mut self.output, id, sequence, request);
        self.stream.write_all(&self.output)?;
        let body = self.expect(id, opcode::VERIFY_AT_RESULT)?;
        protocol::parse_verify_at_result(&body).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Sends every request as its own VERIFY frame in one write, then reads the answers.
    pub fn verify_pipelined(
        &mut self,
        requests: &[VerifyRequest<'_>],
    ) -> Result<Vec<VerifyResult>, ClientError> {
        self.output.clear();
        let first = self.next_request_id;
        for request in requests {
            let id = self.request_id();
            protocol::put_verify_frame(&mut self.output, id, request);
        }
        self.stream.write_all(&self.output)?;
        let mut results = Vec::with_capacity(requests.len());
        for offset in 0..requests.len() {
            let body = self.expect(first.wrapping_add(offset as u32), opcode::VERIFY_RESULT)?;
            results.push(
                protocol::parse_result(&body).map_err(|e| ClientError::Protocol(e.to_string()))?,
            );
        }
        Ok(results)
    }

    /// Sends one VERIFY_BATCH frame (1 to 256 requests) and reads its answer.
    pub fn verify_batch(
        &mut self,
        requests: &[VerifyRequest<'_>],
    ) -> Result<Vec<VerifyResult>, ClientError> {
        if requests.is_empty() || requests.len() > protocol::BATCH_ITEMS_MAX {
            return Err(ClientError::Protocol(format!(
                "a batch holds 1 to {} requests, not {}",
                protocol::BATCH_ITEMS_MAX,
                requests.len()
            )));
        }
        let id = self.request_id();
        self.output.clear();
        protocol::put_batch_frame(&mut self.output, id, requests);
        self.stream.write_all(&self.output)?;
        let body = self.expect(id, opcode::VERIFY_BATCH_RESULT)?;
        let results = protocol::parse_batch_result(&body)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        if results.len() != requests.len() {
            return Err(ClientError::Protocol(format!(
                "batch of {} answered with {} results",
                requests.len(),
                results.len()
            )));
        }
        Ok(results)
    }

    /// Mints a derived token from the parent key in `request.credential` (self-service).
    pub fn derive(
        &mut self,
        request: &protocol::DeriveRequest<'_>,
    ) -> Result<protocol::DeriveResult, ClientError> {
        let id = self.request_id();
        self.output.clear();
        protocol::put_derive_frame(&mut self.output, id, request);
        self.stream.write_all(&self.output)?;
        let body = self.expect(id, opcode::DERIVE_RESULT)?;
        protocol::parse_derive_result(&body).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Revokes the key whose credential this is (self-service: holding it is the proof).
    /// Returns `Revoked` when the key is revoked (now or before), durably and on every shard;
    /// `Unknown` or `Malformed` when the credential is not a key.
    pub fn revoke_self(&mut self, credential: &[u8]) -> Result<protocol::Status, ClientError> {
        let id = self.request_id();
        self.output.clear();
        let start = protocol::begin_frame(&mut self.output, opcode::REVOKE_SELF, id);
        protocol::put_verify(
            &mut self.output,
            &VerifyRequest {
                credential,
                ..Default::default()
            },
        );
        protocol::end_frame(&mut self.output, start);
        self.stream.write_all(&self.output)?;
        let body = self.expect(id, opcode::REVOKE_SELF_RESULT)?;
        match body.as_slice() {
            [code] => protocol::Status::from_u8(*code)
                .ok_or_else(|| ClientError::Protocol(format!("unknown status {code}"))),
            _ => Err(ClientError::Protocol(
                "REVOKE_SELF_RESULT body is not one byte".into(),
            )),
        }
    }

    /// Reads one frame; turns ERROR frames into `ClientError::Server`.
    fn expect(&mut self, request_id: u32, expected: u8) -> Result<Vec<u8>, ClientError> {
        let (header, body) = read_frame(&mut self.stream)?;
        if header.opcode == opcode::ERROR {
            let error =
                protocol::parse_error(&body).map_err(|e| ClientError::Protocol(e.to_string()))?;
            return Err(ClientError::Server(error));
        }
        if header.opcode != expected || header.request_id != request_id {
            return Err(ClientError::Protocol(format!(
                "expected opcode {expected:#04x} for request {request_id}, got {:#04x} for {}",
                header.opcode, header.request_id
            )));
        }
        Ok(body)
    }
}

/// Reads one whole frame from a blocking stream.
pub fn read_frame(stream: &mut impl Read) -> Result<(FrameHeader, Vec<u8>), ClientError> {
    let mut header = [0u8; protocol::HEADER_BYTES];
    stream.read_exact(&mut header)?;
    let frame = match protocol::decode_frame(&header, RESPONSE_BODY_BYTES_MAX) {
        Ok(Some(frame)) => frame.header,
        Ok(None) => {
            // The header is whole; only the body is missing. Re-decode with the body read.
            let body_bytes = u32::from_le_bytes(header[8..12].try_into().unwrap());
            FrameHeader {
                opcode: header[1],
                request_id: u32::from_le_bytes(header[4..8].try_into().unwrap()),
                body_bytes,
            }
        }
        Err(error) => return Err(ClientError::Protocol(error.to_string())),
    };
    let mut body = vec![0u8; frame.body_bytes as usize];
    stream.read_exact(&mut body)?;
    Ok((frame, body))
}
