//! The connection layer: accepting TCP connections and serving HTTP/1.1 on them with
//! bounds a slow or idle client cannot outlast.
//!
//! `axum::serve` gives hyper no timer, so its header timeout is inert and keep-alive
//! connections never expire: clients that never finish a request head pile up until file
//! descriptors run out. Here hyper gets a Tokio timer and:
//! - a new connection must deliver its first request head within
//!   `ingest.header_read_timeout_ms`;
//! - a keep-alive connection must start (and finish the head of) its next request within
//!   `ingest.idle_timeout_ms` of the previous response;
//! - a request body must arrive whole within `ingest.body_read_timeout_ms` ([`read_body`],
//!   a layer outside the request permits, so a slow body holds no permit), else `408`;
//! - at most `ingest.max_connections` connections are open; past it the listener stops
//!   accepting until one closes (the kernel's backlog holds the rest).
//!
//! Shutdown stops accepting and asks every connection to finish its current request.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    extract::{Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceExt;

use crate::{AppState, error::ApiError};

/// The connection bounds, from `ingest.*`.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub header_read: Duration,
    pub idle: Duration,
    pub max_connections: usize,
}

impl ConnLimits {
    pub fn from_settings(cfg: &sluice_config::HttpSettings) -> ConnLimits {
        ConnLimits {
            header_read: cfg.header_read_timeout,
            idle: cfg.idle_timeout,
            max_connections: cfg.max_connections,
        }
    }
}

/// Serves `app` on `listener` until `shutdown`, then waits for the open connections to
/// finish their current requests (the caller bounds that wait).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let conns = TaskTracker::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    // hyper's header timer starts whenever the connection is ready for a request head: on
    // a keep-alive connection that is right after the previous response, so it is the
    // idle limit too. The first head's shorter limit is enforced per connection below.
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.idle)
        .keep_alive(true);
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let tcp = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors, typically: wait for some to close.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let started = Arc::new(AtomicBool::new(false));
        let service = {
            let started = started.clone();
            let app = app.clone();
            hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                started.store(true, Ordering::Relaxed);
                app.clone().oneshot(req.map(Body::new))
            })
        };
        let conn = http.serve_connection(TokioIo::new(tcp), service);
        let token = shutdown.clone();
        let header_read = limits.header_read;
        conns.spawn(async move {
            let _permit = permit;
            metrics::gauge!("sluice_ingest_open_connections").increment(1.0);
            drive(conn, started, header_read, token).await;
            metrics::gauge!("sluice_ingest_open_connections").decrement(1.0);
        });
    }
    conns.close();
    conns.wait().await;
}

/// Runs one connection: closes it if its first request head is not in after `header_read`,
/// and shuts it down gracefully on `shutdown`.
async fn drive<S>(
    conn: hyper::server::conn::http1::Connection<TokioIo<tokio::net::TcpStream>, S>,
    started: Arc<AtomicBool>,
    header_read: Duration,
    shutdown: CancellationToken,
) where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = Body>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::pin!(conn);
    let first_head = tokio::time::sleep(header_read);
    tokio::pin!(first_head);
    let mut watching_head = true;
    let mut closing = false;
    loop {
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(e) = served {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = &mut first_head, if watching_head => {
                if !started.load(Ordering::Relaxed) {
                    metrics::counter!("sluice_ingest_connections_timed_out_total", "phase" => "header").increment(1);
                    return;
                }
                watching_head = false;
            }
            _ = shutdown.cancelled(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}

/// Reads the whole request body within `ingest.body_read_timeout_ms` and at most
/// `ingest.max_body_bytes`, before the request takes a permit: a client trickling its body
/// gets `408` and its connection closed, and holds nothing a well-behaved client needs.
pub async fn read_body(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let cfg = &state.cfg.ingest;
    let (parts, body) = req.into_parts();
    let limit = cfg.max_body_bytes;
    let read = tokio::time::timeout(
        cfg.body_read_timeout,
        http_body_util::Limited::new(body, limit).collect(),
    )
    .await;
    match read {
        Ok(Ok(collected)) => {
            next.run(Request::from_parts(parts, Body::from(collected.to_bytes())))
                .await
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            ApiError::PayloadTooLarge { limit }.into_response()
        }
        Ok(Err(_)) => {
            ApiError::invalid("The request body could not be read.", None, "invalid_body")
                .into_response()
        }
        Err(_) => {
            metrics::counter!("sluice_ingest_connections_timed_out_total", "phase" => "body")
                .increment(1);
            ApiError::RequestTimeout.into_response()
        }
    }
}
