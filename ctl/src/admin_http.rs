//! The broker's admin HTTP API as `brokerctl cluster health` reads it: one
//! `GET` per call over a blocking `std::net::TcpStream` (HTTP/1.0, so the
//! server closes after the answer), with timeouts and a bounded answer.
//!
//! Reads only: this module never changes the cluster.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde_json::Value;

use crate::error::{CtlError, Result};

const TIMEOUT: Duration = Duration::from_secs(10);
/// Larger answers are refused rather than buffered.
const MAX_ANSWER: u64 = 16 << 20;

/// `GET path` on `addr` (`host:port`): the status code and the JSON body.
pub fn get_json(addr: &str, path: &str) -> Result<(u16, Value)> {
    let io = |source| CtlError::Io {
        addr: addr.to_string(),
        source,
    };
    let target = addr
        .to_socket_addrs()
        .map_err(io)?
        .next()
        .ok_or_else(|| CtlError::Usage(format!("{addr}: no address")))?;
    let mut s = TcpStream::connect_timeout(&target, TIMEOUT).map_err(io)?;
    s.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    s.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: application/json\r\n\r\n"
    )
    .map_err(io)?;
    let mut raw = Vec::new();
    s.take(MAX_ANSWER).read_to_end(&mut raw).map_err(io)?;
    parse(addr, &raw)
}

fn parse(addr: &str, raw: &[u8]) -> Result<(u16, Value)> {
    let bad = |reason: &str| CtlError::Protocol {
        addr: addr.to_string(),
        reason: reason.to_string(),
    };
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of HTTP headers"))?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| bad("headers are not UTF-8"))?;
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| bad("no HTTP status line"))?;
    let body = serde_json::from_slice(&raw[split + 4..])
        .map_err(|e| bad(&format!("answer is not JSON: {e}")))?;
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_into_status_and_json() {
        let raw = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\r\n{\"ready\":false}";
        let (status, v) = parse("a:1", raw).unwrap();
        assert_eq!(status, 503);
        assert_eq!(v["ready"], false);
        assert!(parse("a:1", b"HTTP/1.1 200 OK\r\n\r\nnot json").is_err());
        assert!(parse("a:1", b"garbage").is_err());
    }
}
