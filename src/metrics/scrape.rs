//! Reading a metrics listener from the client side: one GET, and a parser for the Prometheus
//! text format's sample lines (what `keyward-ctl stat` needs; comments and blank lines are
//! skipped, a line that does not parse is an error naming it).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Largest response read.
pub const RESPONSE_BYTES_MAX: usize = 16 << 20;
/// Longest wait to connect, and for the response.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// One sample: `name{labels} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// GETs `path` from `address` (HTTP/1.0: the body comes whole and the connection closes) and
/// returns the body of a 200 answer.
pub fn fetch(address: SocketAddr, path: &str) -> io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&address, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes())?;
    let mut bytes = Vec::new();
    stream
        .take(RESPONSE_BYTES_MAX as u64 + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() > RESPONSE_BYTES_MAX {
        return Err(io::Error::other(format!(
            "the response is over {RESPONSE_BYTES_MAX} bytes"
        )));
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head = match response.parse(&bytes) {
        Ok(httparse::Status::Complete(head)) => head,
        _ => return Err(io::Error::other("not an HTTP response")),
    };
    if response.code != Some(200) {
        return Err(io::Error::other(format!(
            "HTTP {}: {}",
            response.code.unwrap_or(0),
            String::from_utf8_lossy(&bytes[head..]).trim()
        )));
    }
    String::from_utf8(bytes[head..].to_vec()).map_err(|_| io::Error::other("body is not UTF-8"))
}

/// The sample lines of a text exposition.
pub fn parse(text: &str) -> Result<Vec<Sample>, String> {
    text.lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .map(|line| parse_line(line).ok_or_else(|| format!("cannot read metrics line {line:?}")))
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let (series, value) = line.rsplit_once(' ')?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    let (name, labels) = match series.split_once('{') {
        None => (series, Vec::new()),
        Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}')?)?),
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

fn parse_labels(mut text: &str) -> Option<Vec<(String, String)>> {
    let mut labels = Vec::new();
    while !text.is_empty() {
        let (key, rest) = text.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (_, '\\') => match chars.next()? {
                    (_, 'n') => value.push('\n'),
                    (_, other) => value.push(other),
                },
                (at, '"') => break at,
                (_, other) => value.push(other),
            }
        };
        labels.push((key.trim_start_matches(',').to_string(), value));
        text = rest[end + 1..].trim_start_matches(',');
    }
    Some(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_lines_parse_and_bad_ones_are_named() {
        let text = "# HELP x y\n# TYPE a counter\na_total{status=\"valid\",kind=\"native\"} 12\nb 1.5\nc_bucket{le=\"+Inf\"} 3\nd{v=\"q\\\"uote\"} +Inf\n";
        let samples = parse(text).unwrap();
        assert_eq!(samples.len(), 4);
        assert_eq!(samples[0].label("status"), Some("valid"));
        assert_eq!(samples[0].label("kind"), Some("native"));
        assert_eq!(samples[0].value, 12.0);
        assert_eq!(samples[1].labels, vec![]);
        assert_eq!(samples[2].label("le"), Some("+Inf"));
        assert_eq!(samples[3].label("v"), Some("q\"uote"));
        assert!(parse("broken{ 1\n").unwrap_err().contains("broken"));
        assert!(parse("x notanumber\n").is_err());
    }
}
