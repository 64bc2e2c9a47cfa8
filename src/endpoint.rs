//! Where a verify port listens and clients connect: a TCP address (`127.0.0.1:7500`) or a
//! Unix-domain socket (`unix:/run/keyward/verify.sock`), and the stream either gives.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// The prefix that marks a Unix-domain socket path.
pub const UNIX_PREFIX: &str = "unix:";
/// Longest socket path the kernel takes (`sun_path` holds 108 bytes with its terminating NUL).
pub const UNIX_PATH_BYTES_MAX: usize = 107;

/// A verify port's address.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum Endpoint {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// Why an endpoint does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndpointError {
    #[error("`{0}` is neither HOST:PORT nor unix:/PATH")]
    Form(String),
    #[error("unix socket path is empty")]
    EmptyPath,
    #[error("unix socket path `{0}` is longer than {UNIX_PATH_BYTES_MAX} bytes")]
    PathLength(String),
}

impl FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(text: &str) -> Result<Endpoint, EndpointError> {
        if let Some(path) = text.strip_prefix(UNIX_PREFIX) {
            if path.is_empty() {
                return Err(EndpointError::EmptyPath);
            }
            if path.len() > UNIX_PATH_BYTES_MAX {
                return Err(EndpointError::PathLength(path.to_string()));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        if let Ok(address) = text.parse() {
            return Ok(Endpoint::Tcp(address));
        }
        // A host name: resolved once, to its first address.
        text.to_socket_addrs()
            .ok()
            .and_then(|mut addresses| addresses.next())
            .map(Endpoint::Tcp)
            .ok_or_else(|| EndpointError::Form(text.to_string()))
    }
}

impl TryFrom<String> for Endpoint {
    type Error = EndpointError;

    fn try_from(text: String) -> Result<Endpoint, EndpointError> {
        text.parse()
    }
}

impl From<Endpoint> for String {
    fn from(endpoint: Endpoint) -> String {
        endpoint.to_string()
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(address) => write!(f, "{address}"),
            Endpoint::Unix(path) => write!(f, "{UNIX_PREFIX}{}", path.display()),
        }
    }
}

impl Endpoint {
    /// Connects (blocking); TCP connections get TCP_NODELAY.
    pub fn connect(&self) -> io::Result<Stream> {
        match self {
            Endpoint::Tcp(address) => {
                let stream = TcpStream::connect(address)?;
                stream.set_nodelay(true)?;
                Ok(Stream::Tcp(stream))
            }
            Endpoint::Unix(path) => Ok(Stream::Unix(UnixStream::connect(path)?)),
        }
    }

    /// The TCP address, if it is one.
    pub fn tcp(&self) -> Option<SocketAddr> {
        match self {
            Endpoint::Tcp(address) => Some(*address),
            Endpoint::Unix(_) => None,
        }
    }
}

/// A connected stream to a verify port.
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(stream) => stream.set_read_timeout(timeout),
            Stream::Unix(stream) => stream.set_read_timeout(timeout),
        }
    }

    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(stream) => stream.set_write_timeout(timeout),
            Stream::Unix(stream) => stream.set_write_timeout(timeout),
        }
    }

    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        match self {
            Stream::Tcp(stream) => stream.set_nonblocking(nonblocking),
            Stream::Unix(stream) => stream.set_nonblocking(nonblocking),
        }
    }

    pub fn shutdown(&self, how: std::net::Shutdown) -> io::Result<()> {
        match self {
            Stream::Tcp(stream) => stream.shutdown(how),
            Stream::Unix(stream) => stream.shutdown(how),
        }
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Stream::Tcp(stream) => stream.as_raw_fd(),
            Stream::Unix(stream) => stream.as_raw_fd(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(stream) => stream.read(buffer),
            Stream::Unix(stream) => stream.read(buffer),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(stream) => stream.write(bytes),
            Stream::Unix(stream) => stream.write(bytes),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_and_print_back() {
        for text in [
            "127.0.0.1:7500",
            "[::1]:7500",
            "unix:/run/keyward/verify.sock",
        ] {
            assert_eq!(text.parse::<Endpoint>().unwrap().to_string(), text);
        }
        assert_eq!("unix:".parse::<Endpoint>(), Err(EndpointError::EmptyPath));
        let long = format!("unix:/{}", "a".repeat(UNIX_PATH_BYTES_MAX));
        assert!(matches!(
            long.parse::<Endpoint>(),
            Err(EndpointError::PathLength(_))
        ));
        assert!(matches!(
            "no port".parse::<Endpoint>(),
            Err(EndpointError::Form(_))
        ));
    }
}
