//! A streamed chat completion: the upstream's `text/event-stream` split into its `data:`
//! payloads (one `chat.completion.chunk` JSON each), ending at `data: [DONE]`.
//!
//! Dropping a [`ChunkStream`] drops the response body, which closes the upstream connection:
//! that is how a cancelled job stops spending tokens.

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use crate::{error::ProviderError, openai::ByteStream};

/// Largest single SSE line accepted from upstream.
const MAX_LINE: usize = 1024 * 1024;

pub struct ChunkStream {
    body: ByteStream,
    buf: BytesMut,
    done: bool,
}

impl ChunkStream {
    pub fn new(body: ByteStream) -> ChunkStream {
        ChunkStream {
            body,
            buf: BytesMut::new(),
            done: false,
        }
    }

    /// The next chunk's JSON, `None` after `[DONE]` or the end of the body.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, ProviderError> {
        loop {
            if self.done {
                return Ok(None);
            }
            while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line = self.buf.split_to(pos + 1).freeze();
                let line = trim_eol(&line);
                let Some(data) = line.strip_prefix(b"data:") else {
                    continue;
                };
                let data = data.strip_prefix(b" ").unwrap_or(data);
                if data == b"[DONE]" {
                    self.done = true;
                    return Ok(None);
                }
                if data.first() != Some(&b'{') {
                    return Err(ProviderError::InvalidResponse);
                }
                if is_error_event(data) {
                    self.done = true;
                    return Err(ProviderError::StreamFailed);
                }
                return Ok(Some(Bytes::copy_from_slice(data)));
            }
            if self.buf.len() > MAX_LINE {
                return Err(ProviderError::InvalidResponse);
            }
            match self.body.next().await {
                Some(Ok(bytes)) => self.buf.extend_from_slice(&bytes),
                Some(Err(e)) => return Err(e),
                None => {
                    self.done = true;
                    return Ok(None);
                }
            }
        }
    }
}

/// `{"error": …}`: how OpenAI ends a stream that fails after it started. A chunk opens with
/// another member (`"id"`), so looking at the first member name is enough.
fn is_error_event(data: &[u8]) -> bool {
    let rest = data.strip_prefix(b"{").unwrap_or(data);
    let start = rest
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(rest.len());
    rest[start..].starts_with(b"\"error\"")
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_event_is_told_from_a_chunk() {
        assert!(is_error_event(
            br#"{"error":{"message":"m","type":"server_error"}}"#
        ));
        assert!(is_error_event(br#"{ "error": {}}"#));
        assert!(!is_error_event(
            br#"{"id":"c","object":"chat.completion.chunk","choices":[]}"#
        ));
        assert!(!is_error_event(br#"{"errors_seen":0}"#));
    }
}
