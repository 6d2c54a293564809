//! A minimal HTTP/1.1 keep-alive client for load generation, shared by the benches that
//! include it (`#[path]`).
//!
//! The load generator shares the box's two cores with the three nodes it measures, so every
//! microsecond it spends per request is taken from the system under test. reqwest (hyper's
//! pooled client behind tower layers, a URL parse and a header map per request) cost about
//! 30 us of CPU per 1 KiB enqueue here, near a fifth of the whole box at 64 clients
//! (perf, 2026-12-04). This client does what `wrk` does instead: one connection per
//! closed-loop worker, one request prepared once as bytes and written with a single
//! syscall, the response read into a reused buffer and only its status line and
//! `Content-Length` looked at. It is not a general client: no chunked bodies, no
//! pipelining, no redirects, no TLS; anything it does not understand is an error and
//! closes the connection (the next request reconnects).

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response head accepted; a bigger one is an error (the servers measured answer
/// a few hundred bytes).
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Largest response body accepted.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The bytes of one `POST` with a body, as reqwest would send it (Host, Accept,
/// Content-Length, and Content-Type if given), so the server parses the same headers either
/// way.
pub fn post(addr: SocketAddr, path: &str, content_type: Option<&str>, body: &[u8]) -> Vec<u8> {
    let content_type = content_type
        .map(|t| format!("content-type: {t}\r\n"))
        .unwrap_or_default();
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\naccept: */*\r\n{content_type}content-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// One keep-alive connection, opened on first use and again after any error.
pub struct Conn {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Conn {
    pub fn new(addr: SocketAddr) -> Conn {
        Conn {
            addr,
            stream: None,
            buf: Vec::with_capacity(4096),
        }
    }

    /// Sends `request` (complete bytes from [`post`]) and returns the response's status
    /// code. Never retries: a request whose outcome is unknown is the caller's error to
    /// count, not to send twice.
    pub async fn roundtrip(&mut self, request: &[u8]) -> io::Result<u16> {
        let r = self.try_roundtrip(request).await;
        if r.is_err() {
            self.stream = None;
        }
        r
    }

    async fn try_roundtrip(&mut self, request: &[u8]) -> io::Result<u16> {
        if self.stream.is_none() {
            let s = TcpStream::connect(self.addr).await?;
            s.set_nodelay(true)?;
            self.stream = Some(s);
        }
        let Some(stream) = self.stream.as_mut() else {
            return Err(io::Error::other("no connection"));
        };
        stream.write_all(request).await?;
        self.buf.clear();
        let (head_len, status, body_len) = loop {
            if let Some(parsed) = parse_head(&self.buf)? {
                break parsed;
            }
            if self.buf.len() > MAX_HEAD_BYTES {
                return Err(io::Error::other("response head too large"));
            }
            read_more(stream, &mut self.buf).await?;
        };
        while self.buf.len() < head_len + body_len {
            read_more(stream, &mut self.buf).await?;
        }
        if self.buf.len() != head_len + body_len {
            return Err(io::Error::other("bytes after the response"));
        }
        Ok(status)
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.reserve(4096);
    if stream.read_buf(buf).await? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// `Some((head length, status, body length))` once `buf` holds a whole response head.
fn parse_head(buf: &[u8]) -> io::Result<Option<(usize, u16, usize)>> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(io::Error::other)?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.strip_prefix("HTTP/1.1 "))
        .and_then(|l| l.get(..3))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| io::Error::other("bad status line"))?;
    let mut body_len = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.eq_ignore_ascii_case("content-length") {
            body_len = value.trim().parse::<usize>().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(io::Error::other("chunked responses are not supported"));
        }
    }
    let body_len = body_len.ok_or_else(|| io::Error::other("no content-length"))?;
    if body_len > MAX_BODY_BYTES {
        return Err(io::Error::other("response body too large"));
    }
    Ok(Some((end + 4, status, body_len)))
}
