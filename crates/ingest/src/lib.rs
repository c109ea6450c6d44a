//! Ingest: the stateless HTTP front door.
//!
//! It authenticates a request, validates it, publishes the job to JetStream and waits for
//! the acknowledgement, records the job in Redis and answers `202`. Replicas share nothing
//! but NATS and Redis, so any number can run behind a load balancer.
//!
//! # Layout
//! - [`routes`]: `jobs` (submit, read), `cancel`, `events` (SSE), `openai` (chat
//!   completions, embeddings, models), `webhooks` (endpoints, rotation, delivery logs),
//!   `admin` and `ops` (health, readiness, metrics).
//! - [`watch`]: following a job's event history (Redis) woken by broker notifications.
//! - [`cache`]: the response cache: lookup before admission, hits, single-flight.
//! - [`semantic`]: the semantic cache: prompt embedding, similar-prompt lookup, the index
//!   kept in step with the SEMANTIC stream.
//! - [`cancel`]: cancelling a job, on request or when a synchronous client leaves.
//! - [`auth`]: API keys (config and Redis), the admin scope and the open-route allowlist.
//! - [`submission`]: the one path from a validated request to a published job, shared by
//!   `POST /v1/jobs` and the OpenAI-compatible endpoints.
//! - [`middleware`]: admission — load shedding, idempotency, rate limits, budgets — and the
//!   guard that gives them back when a job is not published.
//! - [`serve`]: connections — header, idle and body-read timeouts, the connection cap.
//! - [`validate`]: the request checks that turn bad input into a clear 400.
//! - [`screening`]: prompt screening (injection phrases, role smuggling, system messages).
//! - [`dashboard`]: the live page at `/dashboard` and its JSON, `/v1/admin/dashboard`.
//! - [`openapi`]: the OpenAPI document served at `/openapi.json`.
//! - [`error`]: the API error and its OpenAI-shaped response.
//! - [`observe`]: job attributes on the request's trace span.

pub mod auth;
pub mod cache;
pub mod cancel;
pub mod dashboard;
pub mod embeddings;
pub mod error;
pub mod middleware;
pub mod observe;
pub mod openapi;
pub mod routes;
pub mod screening;
pub mod semantic;
pub mod serve;
pub mod strict_json;
pub mod submission;
pub mod validate;
pub mod watch;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    extract::{DefaultBodyLimit, Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use sluice_config::IngestSettings;
use sluice_queue::Queue;
use sluice_store::Store;
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{auth::KeyTable, error::ApiError};

/// Everything a handler needs: one shared [`Services`]. Cloned for every extractor of every
/// request, so it is a single reference count.
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl std::ops::Deref for AppState {
    type Target = Services;
    fn deref(&self) -> &Services {
        &self.0
    }
}

/// The connections, settings and shared tables behind [`AppState`].
pub struct Services {
    pub cfg: Arc<IngestSettings>,
    pub queue: Queue,
    pub store: Store,
    pub keys: Arc<KeyTable>,
    pub gov: sluice_governance::Governor,
    pub key_cache: sluice_governance::apikeys::KeyCache,
    pub backlogs: Arc<middleware::shedding::Backlogs>,
    pub cache: cache::ResponseCache,
    /// Set once the JetStream streams are known to exist.
    pub streams_ready: Arc<AtomicBool>,
    in_flight: Arc<Semaphore>,
    /// Places of synchronous waits and SSE streams (see [`middleware::slots`]).
    pub sync_waits: Arc<middleware::slots::Slots>,
    pub streams: Arc<middleware::slots::Slots>,
    /// Background work requests leave behind (cancelling an abandoned job).
    pub background: TaskTracker,
}

impl AppState {
    pub async fn new(cfg: IngestSettings) -> anyhow::Result<AppState> {
        let queue = Queue::connect(&cfg.nats, "sluice-ingest").await?;
        let store = Store::new(&cfg.redis)?;
        let keys = Arc::new(KeyTable::from_config(&cfg.tenants));
        let in_flight = Arc::new(Semaphore::new(cfg.ingest.max_concurrent_requests));
        let streams_ready = Arc::new(AtomicBool::new(false));
        let g = &cfg.governance;
        let key_cache =
            sluice_governance::apikeys::KeyCache::new(g.key_cache_ttl, g.key_cache_capacity);
        let gov = sluice_governance::Governor::new(store.clone(), g.clone());
        let backlogs = Arc::new(middleware::shedding::Backlogs::default());
        let d = &cfg.delivery;
        let sync_waits = middleware::slots::Slots::new(
            "sync_wait",
            cfg.ingest.max_concurrent_requests,
            d.sync_waits_per_tenant,
        );
        let streams = middleware::slots::Slots::new("stream", d.max_streams, d.streams_per_tenant);
        let cache = cache::ResponseCache::new(&cfg.cache)
            .with_semantic(semantic::SemanticCache::new(&cfg)?);
        Ok(AppState(Arc::new(Services {
            cfg: Arc::new(cfg),
            queue,
            store,
            keys,
            gov,
            key_cache,
            backlogs,
            cache,
            streams_ready,
            in_flight,
            sync_waits,
            streams,
            background: TaskTracker::new(),
        })))
    }
}

/// The whole HTTP API. Authentication wraps every route but the probes (see
/// [`auth::OPEN_PATHS`]). The probes also stay outside the request permits, so traffic
/// cannot make them fail; and every body is read before a request takes a permit
/// ([`serve::read_body`]).
pub fn router(state: AppState) -> Router {
    let max_body = state.cfg.ingest.max_body_bytes;
    let api = Router::new()
        .route("/v1/jobs", post(routes::jobs::submit))
        .route("/v1/jobs/{id}", get(routes::jobs::get))
        .route("/v1/jobs/{id}/cancel", post(routes::cancel::cancel))
        .route("/v1/jobs/{id}/events", get(routes::events::events))
        .route(
            "/v1/chat/completions",
            post(routes::openai::chat_completions),
        )
        .route("/v1/embeddings", post(routes::openai::embeddings))
        .route("/v1/models", get(routes::openai::models))
        .route("/v1/models/{id}", get(routes::openai::model))
        .route(
            "/v1/webhooks",
            post(routes::webhooks::create).get(routes::webhooks::list),
        )
        .route(
            "/v1/webhooks/{id}",
            axum::routing::delete(routes::webhooks::delete),
        )
        .route("/v1/webhooks/{id}/rotate", post(routes::webhooks::rotate))
        .route(
            "/v1/webhooks/{id}/deliveries",
            get(routes::webhooks::deliveries),
        )
        .route("/v1/admin/dashboard", get(dashboard::data))
        .merge(routes::admin::router())
        .merge(routes::admin_dlq::router())
        .fallback(routes::ops::not_found)
        .method_not_allowed_fallback(routes::ops::method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_key,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            shed_load,
        ));
    Router::new()
        .route("/healthz", get(routes::ops::healthz))
        .route("/readyz", get(routes::ops::readyz))
        .route("/metrics", get(routes::ops::metrics))
        .route("/openapi.json", get(openapi::document))
        .route("/dashboard", get(dashboard::page))
        .route("/dashboard.js", get(dashboard::script))
        .merge(api)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            serve::read_body,
        ))
        .layer(axum::middleware::map_response(request_id))
        .layer(axum::middleware::from_fn(middleware::observe::observe))
        .with_state(state)
}

/// The response header naming the request, as OpenAI sends it (the SDKs expose it as
/// `_request_id`); answers about a job carry the job's id.
pub const REQUEST_ID: &str = "x-request-id";

/// Gives every response an `x-request-id`, unless its handler set one.
async fn request_id(mut resp: Response) -> Response {
    if !resp.headers().contains_key(REQUEST_ID)
        && let Ok(v) =
            axum::http::HeaderValue::from_str(&format!("req_{}", uuid::Uuid::now_v7().simple()))
    {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    resp
}

/// Bounds the requests in process; past the bound, answer 503 at once instead of queueing
/// in memory.
async fn shed_load(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match state.in_flight.clone().try_acquire_owned() {
        Ok(_permit) => next.run(req).await,
        Err(_) => ApiError::Overloaded { retry_after_s: 1 }.into_response(),
    }
}

/// Makes sure the streams exist, retrying in the background while the broker is away.
pub async fn ensure_streams_until_ready(
    queue: Queue,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let mut delay = Duration::from_millis(200);
    loop {
        match queue.ensure_streams().await {
            Ok(()) => {
                ready.store(true, Ordering::Release);
                return;
            }
            Err(e) => tracing::warn!(error = %e, "cannot set up JetStream streams yet; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Warns when Redis may evict keys: job records, idempotency claims and budget counters
/// must not vanish under memory pressure (`maxmemory-policy noeviction`).
async fn check_eviction(store: Store) {
    match store.maxmemory_policy().await {
        Ok(Some(p)) if p == "noeviction" => {}
        Ok(Some(p)) => tracing::warn!(
            policy = %p,
            "Redis maxmemory-policy is not noeviction: under memory pressure it may drop job records, idempotency keys and budget counters"
        ),
        Ok(None) => tracing::warn!(
            "cannot read Redis maxmemory-policy (CONFIG GET refused); make sure it is noeviction"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot read Redis maxmemory-policy at start-up"),
    }
}

/// A running ingest server (used by `main` and by tests).
pub struct Server {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    background: TaskTracker,
    semantic: Option<sluice_cache::semantic::SemanticIndex>,
}

impl Server {
    pub async fn start(cfg: IngestSettings, listener: TcpListener) -> anyhow::Result<Server> {
        let state = AppState::new(cfg).await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        // Tokenizers load in a few hundred milliseconds: do it before the first request.
        tasks.spawn(async {
            if tokio::task::spawn_blocking(sluice_governance::estimate::warm_up)
                .await
                .is_err()
            {
                tracing::warn!("loading the tokenizers failed; requests estimate without them");
            }
        });
        tasks.spawn(ensure_streams_until_ready(
            state.queue.clone(),
            state.streams_ready.clone(),
            shutdown.clone(),
        ));
        let shedding = &state.cfg.governance.shedding;
        if middleware::shedding::enabled(shedding) {
            let every = shedding.poll;
            tasks.spawn(middleware::shedding::poll(
                state.queue.clone(),
                state.backlogs.clone(),
                every,
                shutdown.clone(),
            ));
        }
        routes::admin::seed_tenants(&state).await;
        tasks.spawn(check_eviction(state.store.clone()));
        if let Some(sem) = state.cache.semantic() {
            tasks.spawn(semantic::follow_insertions(
                state.queue.clone(),
                sem.index().clone(),
                state.cfg.cache.clone(),
                sem.replayed_flag(),
                shutdown.clone(),
            ));
        }
        let background = state.background.clone();
        let semantic = state.cache.semantic().map(|s| s.index().clone());
        let limits = serve::ConnLimits::from_settings(&state.cfg.ingest);
        let app = router(state);
        tasks.spawn(serve::serve(listener, app, limits, shutdown.clone()));
        tasks.close();
        Ok(Server {
            addr,
            shutdown,
            tasks,
            background,
            semantic,
        })
    }

    /// Entries in this replica's semantic index (`None`: no model has the semantic cache).
    pub fn semantic_entries(&self) -> Option<usize> {
        self.semantic.as_ref().map(|i| i.len())
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, lets in-flight requests finish, and waits (bounded).
    pub async fn shutdown(self, grace: Duration) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(grace, self.tasks.wait()).await;
        self.background.close();
        let _ = tokio::time::timeout(grace, self.background.wait()).await;
    }
}
