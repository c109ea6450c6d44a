//! A minimal HTTP/1.1 client for the request the generator sends thousands of times a second.
//!
//! On a machine that also runs the system under test, every microsecond the generator spends
//! is taken from the services it measures. A general client parses the URL, walks a
//! connection pool keyed by host and a middleware stack for every request; this one keeps
//! pre-built request heads and a plain stack of idle keep-alive connections to one address,
//! writes each request in one write and parses the answer with `httparse`. It speaks only
//! plain `http://` with `Content-Length` bodies, which is what Sluice answers; anything else
//! is a transport error, and [`crate::http`] falls back to the general client for `https://`.

use std::io;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Most response header lines parsed.
const MAX_HEADERS: usize = 32;
/// Largest response head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Largest response body accepted.
const MAX_BODY: usize = 8 * 1024 * 1024;

/// What came back.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub location: Option<String>,
    pub body: Vec<u8>,
}

/// Why a request did not produce a response.
#[derive(Debug, thiserror::Error)]
pub enum RawError {
    #[error("connecting: {0}")]
    Connect(io::Error),
    #[error("timed out")]
    Timeout,
    #[error("{0}")]
    Transport(io::Error),
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// Keep-alive connections to one `http://` origin.
pub struct RawClient {
    addr: SocketAddr,
    /// `Host` and `Authorization` lines, each ending in CRLF.
    fixed_headers: String,
    timeout: Duration,
    idle: Mutex<Vec<Conn>>,
}

impl RawClient {
    /// `None` for an origin this client does not speak (not `http://`).
    pub async fn for_url(
        url: &str,
        auth: Option<&str>,
        timeout: Duration,
    ) -> anyhow::Result<Option<RawClient>> {
        let parsed = reqwest::Url::parse(url).with_context(|| format!("parsing {url}"))?;
        if parsed.scheme() != "http" {
            return Ok(None);
        }
        let host = parsed.host_str().context("the URL has no host")?;
        let port = parsed.port_or_known_default().unwrap_or(80);
        let addr = tokio::net::lookup_host((host, port))
            .await
            .with_context(|| format!("resolving {host}"))?
            .next()
            .with_context(|| format!("{host} has no address"))?;
        let mut fixed_headers = format!("Host: {host}:{port}\r\n");
        if let Some(auth) = auth {
            fixed_headers.push_str(&format!("Authorization: {auth}\r\n"));
        }
        Ok(Some(RawClient {
            addr,
            fixed_headers,
            timeout,
            idle: Mutex::new(Vec::new()),
        }))
    }

    /// The head of a `POST` of JSON to `path`, up to (not including) `Content-Length`.
    pub fn post_head(&self, path: &str) -> String {
        format!(
            "POST {path} HTTP/1.1\r\n{}Content-Type: application/json\r\n",
            self.fixed_headers
        )
    }

    /// Sends `head` (from [`RawClient::post_head`]) with `body` and reads the answer.
    pub async fn send(&self, head: &str, body: &[u8]) -> Result<RawResponse, RawError> {
        let pooled = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut conn = match pooled {
            Some(conn) => conn,
            None => self.connect().await?,
        };
        let mut request = Vec::with_capacity(head.len() + body.len() + 32);
        request.extend_from_slice(head.as_bytes());
        request.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
        request.extend_from_slice(body);
        let exchange = async {
            conn.stream.write_all(&request).await?;
            read_response(&mut conn).await
        };
        let (response, keep_alive) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| RawError::Timeout)?
            .map_err(RawError::Transport)?;
        if keep_alive {
            self.idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(conn);
        }
        Ok(response)
    }

    async fn connect(&self) -> Result<Conn, RawError> {
        let stream = tokio::time::timeout(self.timeout, TcpStream::connect(self.addr))
            .await
            .map_err(|_| RawError::Timeout)?
            .map_err(RawError::Connect)?;
        stream.set_nodelay(true).map_err(RawError::Connect)?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }
}

fn protocol(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// Reads one response; `true` when the connection may be reused.
async fn read_response(conn: &mut Conn) -> io::Result<(RawResponse, bool)> {
    conn.buf.clear();
    loop {
        if let Some(parsed) = parse_head(&conn.buf)? {
            let (head_len, status, location, content_length, close) = parsed;
            if content_length > MAX_BODY {
                return Err(protocol("response body too large"));
            }
            let total = head_len + content_length;
            while conn.buf.len() < total {
                read_more(conn).await?;
            }
            // Anything past this response would be an answer nobody asked for.
            let keep_alive = !close && conn.buf.len() == total;
            let body = conn.buf[head_len..total].to_vec();
            let response = RawResponse {
                status,
                location,
                body,
            };
            return Ok((response, keep_alive));
        }
        if conn.buf.len() > MAX_HEAD {
            return Err(protocol("response head too large"));
        }
        read_more(conn).await?;
    }
}

async fn read_more(conn: &mut Conn) -> io::Result<()> {
    conn.buf.reserve(4096);
    let n = conn.stream.read_buf(&mut conn.buf).await?;
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

type Head = (usize, u16, Option<String>, usize, bool);

/// The parsed head, or `None` while it is incomplete: its length, the status, `Location`,
/// `Content-Length` and whether the server closes the connection.
fn parse_head(buf: &[u8]) -> io::Result<Option<Head>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(protocol(&e.to_string())),
    };
    let status = resp.code.ok_or_else(|| protocol("no status code"))?;
    let mut location = None;
    let mut content_length = None;
    let mut close = false;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value).map_err(|_| protocol("bad Content-Length"))?;
            content_length = Some(
                v.trim()
                    .parse::<usize>()
                    .map_err(|_| protocol("bad Content-Length"))?,
            );
        } else if h.name.eq_ignore_ascii_case("location") {
            location = std::str::from_utf8(h.value).ok().map(str::to_owned);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(protocol("chunked responses are not supported"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            close = h.value.eq_ignore_ascii_case(b"close");
        }
    }
    let content_length = content_length.ok_or_else(|| protocol("no Content-Length"))?;
    Ok(Some((head_len, status, location, content_length, close)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_is_parsed_only_when_complete() -> anyhow::Result<()> {
        let full =
            b"HTTP/1.1 202 Accepted\r\nlocation: /v1/jobs/x\r\ncontent-length: 5\r\n\r\nhello";
        assert!(parse_head(&full[..20])?.is_none());
        let (len, status, location, body_len, close) =
            parse_head(full)?.context("complete head")?;
        assert_eq!(&full[len..], b"hello");
        assert_eq!(status, 202);
        assert_eq!(location.as_deref(), Some("/v1/jobs/x"));
        assert_eq!(body_len, 5);
        assert!(!close);
        Ok(())
    }

    #[test]
    fn unsupported_framing_is_an_error() {
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
        assert!(parse_head(chunked).is_err());
        let unframed = b"HTTP/1.1 200 OK\r\n\r\n";
        assert!(parse_head(unframed).is_err());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn requests_reuse_one_connection_and_read_whole_bodies() -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await?;
            let mut buf = vec![0u8; 4096];
            for i in 0..3u8 {
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") || !seen.ends_with(b"{}") {
                    let n = sock.read(&mut buf).await?;
                    anyhow::ensure!(n > 0, "client closed");
                    seen.extend_from_slice(&buf[..n]);
                }
                let text = String::from_utf8_lossy(&seen).to_string();
                anyhow::ensure!(text.starts_with("POST /v1/jobs HTTP/1.1\r\n"), "{text}");
                anyhow::ensure!(text.contains("Authorization: Bearer k\r\n"), "{text}");
                anyhow::ensure!(text.contains("Content-Length: 2\r\n"), "{text}");
                // The body arrives in two writes to exercise partial reads.
                let body = format!("{{\"n\":{i}}}");
                let head = format!(
                    "HTTP/1.1 202 Accepted\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                sock.write_all(head.as_bytes()).await?;
                sock.write_all(&body.as_bytes()[..3]).await?;
                sock.flush().await?;
                tokio::time::sleep(Duration::from_millis(5)).await;
                sock.write_all(&body.as_bytes()[3..]).await?;
            }
            anyhow::Ok(())
        });
        let client = RawClient::for_url(
            &format!("http://{addr}"),
            Some("Bearer k"),
            Duration::from_secs(5),
        )
        .await?
        .context("http is spoken")?;
        let head = client.post_head("/v1/jobs");
        for i in 0..3 {
            let r = client.send(&head, b"{}").await?;
            assert_eq!(r.status, 202);
            assert_eq!(r.body, format!("{{\"n\":{i}}}").as_bytes());
        }
        server.await??;
        assert!(
            RawClient::for_url("https://example.invalid", None, Duration::from_secs(1))
                .await?
                .is_none()
        );
        Ok(())
    }
}
