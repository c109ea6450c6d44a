//! A minimal server-sent-events reader for the tests (comments are counted, not returned).

use anyhow::Result;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

/// Reads events from a streaming response.
pub struct SseReader {
    resp: reqwest::Response,
    buf: String,
    pub comments: usize,
}

impl SseReader {
    pub fn new(resp: reqwest::Response) -> SseReader {
        SseReader {
            resp,
            buf: String::new(),
            comments: 0,
        }
    }

    /// The next event, `None` at the end of the body.
    pub async fn next(&mut self) -> Result<Option<SseEvent>> {
        loop {
            if let Some(pos) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..pos + 2).collect();
                let mut ev = SseEvent::default();
                let mut data = Vec::new();
                let mut any = false;
                for line in block.lines() {
                    if line.is_empty() {
                        continue;
                    }
                    if line.starts_with(':') {
                        self.comments += 1;
                        continue;
                    }
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    any = true;
                    match field {
                        "id" => ev.id = Some(value.to_string()),
                        "event" => ev.event = Some(value.to_string()),
                        "data" => data.push(value.to_string()),
                        _ => {}
                    }
                }
                if any {
                    ev.data = data.join("\n");
                    return Ok(Some(ev));
                }
                continue;
            }
            match self.resp.chunk().await? {
                Some(bytes) => self.buf.push_str(&String::from_utf8_lossy(&bytes)),
                None => return Ok(None),
            }
        }
    }

    /// Every remaining event.
    pub async fn collect(mut self) -> Result<Vec<SseEvent>> {
        let mut out = Vec::new();
        while let Some(e) = self.next().await? {
            out.push(e);
        }
        Ok(out)
    }
}
