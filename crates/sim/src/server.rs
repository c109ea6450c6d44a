//! Serving: the router shared by the binary and in-process tests, and [`start`], which runs
//! the simulator on a socket in a background task behind a [`SimHandle`].

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::{ConfigError, SimConfig};
use crate::counters::Counters;
use crate::handlers::{self, admin, chat, embeddings, models};
use crate::state::SimState;

/// How long [`SimHandle::shutdown`] lets in-flight requests finish before cutting them off.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// All routes: the OpenAI-compatible `/v1` API, `/sim` control and `/healthz`.
pub fn router(state: SimState) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat::completions))
        .route("/v1/embeddings", post(embeddings::create))
        .route("/v1/models", get(models::list))
        .route("/v1/models/{id}", get(models::retrieve))
        .route("/sim/counters", get(admin::counters))
        .route("/sim/reset", post(admin::reset))
        .route("/sim/config", get(admin::get_config).put(admin::put_config))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(handlers::fallback)
        .with_state(state)
}

/// Validates `cfg`, binds `addr` (port 0 picks a free port) and serves in the background.
pub async fn start(cfg: SimConfig, addr: SocketAddr) -> io::Result<SimHandle> {
    let state = SimState::new(cfg).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    start_with_state(state, addr).await
}

/// Like [`start`], with a state the caller keeps a clone of.
pub async fn start_with_state(state: SimState, addr: SocketAddr) -> io::Result<SimHandle> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    // Small answers must not wait for Nagle's algorithm.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
    });
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let app = router(state.clone());
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                // A dropped sender also means stop.
                let _ = stop_rx.await;
            })
            .await
    });
    Ok(SimHandle {
        addr,
        state,
        stop: Some(stop_tx),
        task: Some(task),
    })
}

/// A running simulator. Dropping it starts a graceful shutdown; [`SimHandle::shutdown`] also
/// waits for it (at most [`SHUTDOWN_GRACE`]).
#[derive(Debug)]
pub struct SimHandle {
    addr: SocketAddr,
    state: SimState,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl SimHandle {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The OpenAI base URL, e.g. `http://127.0.0.1:9100/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> Counters {
        self.state.counters()
    }

    /// Zeroes the counters and forgets `fail_first` keys.
    pub fn reset(&self) {
        self.state.reset();
    }

    /// The configuration in force.
    pub fn config(&self) -> SimConfig {
        self.state.config()
    }

    /// Replaces the configuration; refused (and the old one kept) if it does not validate.
    pub fn set_config(&self, cfg: SimConfig) -> Result<(), ConfigError> {
        self.state.set_config(cfg)
    }

    /// The shared state, e.g. to build another [`router`] over the same simulator.
    pub fn state(&self) -> &SimState {
        &self.state
    }

    /// Stops accepting, lets in-flight requests finish for up to [`SHUTDOWN_GRACE`], then
    /// stops serving.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let Some(mut task) = self.task.take() else {
            return;
        };
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "simulator server failed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "simulator server task failed"),
            Err(_) => {
                tracing::warn!("simulator did not drain in time; aborting");
                task.abort();
            }
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
