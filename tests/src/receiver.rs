//! A local webhook receiver for the tests: records every request and answers from a script
//! of status codes per path (the last one repeats). Status `0` is a tar pit: the request is
//! recorded and never answered.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Result;
use axum::{
    Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
};

#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When it arrived.
    pub at: Instant,
}

#[derive(Default)]
struct Inner {
    got: Vec<Received>,
    script: HashMap<String, Vec<u16>>,
}

#[derive(Clone, Default)]
pub struct Receiver {
    inner: Arc<Mutex<Inner>>,
    pub addr: Option<SocketAddr>,
}

impl Receiver {
    /// Starts on 127.0.0.1; the server lives as long as the runtime.
    pub async fn start() -> Result<Receiver> {
        let mut r = Receiver::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        r.addr = Some(listener.local_addr()?);
        let app = Router::new()
            .route("/{path}", axum::routing::post(hook))
            .with_state(r.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(r)
    }

    pub fn url(&self, path: &str) -> String {
        format!(
            "http://{}/{path}",
            self.addr.map(|a| a.to_string()).unwrap_or_default()
        )
    }

    /// Statuses for the next requests to `path`; the last repeats.
    pub fn script(&self, path: &str, statuses: &[u16]) {
        if let Ok(mut i) = self.inner.lock() {
            i.script.insert(path.to_string(), statuses.to_vec());
        }
    }

    pub fn received(&self, path: &str) -> Vec<Received> {
        self.inner
            .lock()
            .map(|i| i.got.iter().filter(|r| r.path == path).cloned().collect())
            .unwrap_or_default()
    }
}

async fn hook(
    State(r): State<Receiver>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let code = {
        let Ok(mut i) = r.inner.lock() else {
            return StatusCode::INTERNAL_SERVER_ERROR;
        };
        i.got.push(Received {
            path: path.clone(),
            headers,
            body,
            at: Instant::now(),
        });
        match i.script.get_mut(&path) {
            Some(s) if s.len() > 1 => s.remove(0),
            Some(s) => s.first().copied().unwrap_or(200),
            None => 200,
        }
    };
    if code == 0 {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    StatusCode::from_u16(code).unwrap_or(StatusCode::OK)
}
