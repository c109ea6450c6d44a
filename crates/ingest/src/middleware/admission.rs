//! Job admission: idempotency, then limits and budgets in one Redis round trip.
//!
//! Runs after validation (it needs the model, the token estimate and the prompt), on the
//! [`crate::submission`] path. A refusal becomes `429` with `Retry-After` and, for rate
//! limits, the `RateLimit-Policy` / `RateLimit` headers; the error `code` names the
//! dimension. When Redis cannot be asked, `governance.on_store_error` decides — `fail_closed`
//! (default) answers 503, `fail_open` admits unchecked — and both count in
//! `sluice_governance_store_unavailables_total` and show in `/readyz`; limiting is never
//! switched off silently.
//!
//! An admitted job comes back as an [`Admitted`] guard holding what admission took: the
//! idempotency claim, the reservation and the `queued` record. Dropped (or
//! [`Admitted::undo`]ne) before [`Admitted::commit`], it gives them back, so no early return
//! and no client that goes away can leak them.

use std::{sync::Arc, time::Duration};

use axum::http::HeaderMap;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sluice_config::FailPolicy;
use sluice_governance::{Refusal, admission::Policy, estimate, idempotency::Claim};
use sluice_protocol::JobKind;
use sluice_store::{RecordBase, now_ms};
use tokio::time::Instant;
use tracing::Instrument;
use uuid::Uuid;

use crate::{AppState, auth::Tenant, error::ApiError, submission::Submission};

pub const AGENT_HEADER: &str = "x-agent-id";
pub const CHAIN_HEADER: &str = "x-chain-id";
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// What admission decided for an accepted request.
pub enum Admission {
    /// A new job: publish it, then [`Admitted::commit`].
    Fresh(Admitted),
    /// An idempotent retry: the first request's job.
    Replay(Uuid),
}

/// An admitted job's hold on the shared state, given back on drop unless committed after the
/// broker acknowledged the job (the pattern of [`crate::cancel::CancelOnDrop`]: the undo
/// runs as a task tracked by the server).
pub struct Admitted {
    /// `RateLimit-Policy` / `RateLimit` for the response.
    pub headers: Vec<(&'static str, String)>,
    /// `None` once committed or undone.
    hold: Option<Hold>,
}

/// What an admitted job holds until it is published.
struct Hold {
    state: AppState,
    tenant: Arc<str>,
    job: Uuid,
    model: String,
    /// The `Idempotency-Key` this job claimed: `(key hash, body hash)`.
    claim: Option<(String, String)>,
    /// A reservation may exist: admission recorded one, or did not say.
    reserved: bool,
    /// With `reserved`: the counters it is in (what settling it corrects).
    reservation: Option<sluice_protocol::Reservation>,
    /// A `queued` record may have been written (a cache hit writes none, so undoing it
    /// deletes nothing).
    recorded: bool,
}

/// What undoing does with the job's `queued` record.
#[derive(Debug, Clone, Copy)]
enum Record {
    /// The job was never published: remove the record.
    Discard,
    /// A publish may have reached the broker: remove the record and leave a tombstone, so
    /// a worker drops the message instead of running a job nobody was told about.
    Tombstone,
}

impl Admitted {
    fn new(state: &AppState, tenant: &Tenant, job: Uuid, model: &str, recorded: bool) -> Admitted {
        Admitted {
            headers: Vec::new(),
            hold: Some(Hold {
                state: state.clone(),
                tenant: tenant.id.clone(),
                job,
                model: model.to_string(),
                claim: None,
                reserved: false,
                reservation: None,
                recorded,
            }),
        }
    }

    /// Whether admission recorded a reservation that the job's end must settle (see the
    /// envelope's `reserved`).
    pub fn reserved(&self) -> bool {
        self.hold.as_ref().is_some_and(|h| h.reserved)
    }

    /// With a reservation, the counters it is in (see the envelope's `reservation`; empty
    /// if unknown, which settles against the counters the stored reservation names).
    pub fn reservation(&self) -> Option<sluice_protocol::Reservation> {
        self.hold
            .as_ref()
            .filter(|h| h.reserved)
            .map(|h| h.reservation.clone().unwrap_or_default())
    }

    fn hold_mut(&mut self) -> Option<&mut Hold> {
        self.hold.as_mut()
    }

    /// The broker acknowledged the job: it keeps everything admission took, and its
    /// idempotency claim is marked accepted, so retries answer with it. The mark is written
    /// by a tracked task (awaited), so a client that leaves now cannot stop it half way.
    pub async fn commit(mut self) {
        let Some(hold) = self.hold.take() else {
            return;
        };
        let Some((key_hash, _)) = hold.claim.clone() else {
            return;
        };
        let tracker = hold.state.background.clone();
        let marked = tracker.spawn(async move {
            if let Err(e) = hold
                .state
                .gov
                .accept_idempotency(&hold.tenant, &key_hash, hold.job)
                .await
            {
                // The job is durable: the client gets its 202. Retries wait for the pending
                // claim's lease, then make a new job.
                tracing::warn!(job = %hold.job, error = %e, "cannot mark an idempotency key accepted");
            }
        });
        let _ = marked.await;
    }

    /// The job will not be published after all (or may have been, unacknowledged): give
    /// back its claim and reservation, and tombstone its record.
    pub async fn undo(self) {
        self.give_back(Record::Tombstone).await;
    }

    /// The job was refused, or is a replay: give back what it took and remove its record.
    async fn refuse(self) {
        self.give_back(Record::Discard).await;
    }

    async fn give_back(mut self, record: Record) {
        if let Some(hold) = &self.hold {
            hold.give_back(record).await;
        }
        // Only now: a future dropped halfway leaves the hold to `Drop`, which does it again
        // (every step is idempotent).
        self.hold = None;
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(hold) = self.hold.take() {
            metrics::counter!("sluice_ingest_admissions_undone_total").increment(1);
            let tracker = hold.state.background.clone();
            tracker.spawn(async move { hold.give_back(Record::Tombstone).await });
        }
    }
}

impl Hold {
    async fn give_back(&self, record: Record) {
        let (state, job) = (&self.state, self.job);
        let record = async {
            if !self.recorded {
                return;
            }
            let done = match record {
                Record::Discard => state.store.discard(job).await,
                Record::Tombstone => state.store.record_rejected(job).await,
            };
            if let Err(e) = done {
                tracing::warn!(job = %job, error = %e, "cannot remove the record of an unpublished job; it expires with its TTL");
            }
        };
        let claim = async {
            if let Some((key_hash, body_hash)) = &self.claim
                && let Err(e) = state
                    .gov
                    .release_idempotency(&self.tenant, key_hash, body_hash, job)
                    .await
            {
                tracing::warn!(error = %e, "cannot release an idempotency key; it expires with its window");
            }
        };
        let reservation = async {
            if self.reserved
                && let Err(e) = state
                    .gov
                    .settle(
                        &self.tenant,
                        job,
                        &self.model,
                        estimate::Usage::default(),
                        now_ms(),
                        self.reservation.as_ref(),
                    )
                    .await
            {
                tracing::warn!(job = %job, error = %e, "cannot return the reservation of an unpublished job");
            }
        };
        tokio::join!(record, claim, reservation);
    }
}

/// The job a submission becomes, as far as admission and its record need it.
#[derive(Debug, Clone, Copy)]
pub struct NewJob {
    pub id: Uuid,
    pub kind: JobKind,
    pub created_at_ms: u64,
}

impl NewJob {
    /// A job of `kind` created now, with a fresh id.
    pub fn now(kind: JobKind) -> NewJob {
        NewJob {
            id: Uuid::now_v7(),
            kind,
            created_at_ms: now_ms(),
        }
    }
}

/// The identifier headers admission reads.
struct Ids<'a> {
    agent: Option<&'a str>,
    chain: Option<&'a str>,
    idempotency: Option<&'a str>,
}

impl<'a> Ids<'a> {
    fn read(headers: &'a HeaderMap) -> Result<Ids<'a>, ApiError> {
        Ok(Ids {
            agent: id_header(headers, AGENT_HEADER)?,
            chain: id_header(headers, CHAIN_HEADER)?,
            idempotency: id_header(headers, IDEMPOTENCY_HEADER)?,
        })
    }
}

/// Admits `sub` as job `job`, or refuses it. Its `queued` record is written while
/// admission decides (one round trip less), and removed again when the job is refused or
/// turns out to be an idempotent replay: a job's id is only ever shown in its answer, so
/// nobody can have seen a record that is removed.
pub async fn admit(
    state: &AppState,
    tenant: &Tenant,
    headers: &HeaderMap,
    body: &[u8],
    sub: &Submission,
    job: NewJob,
) -> Result<Admission, ApiError> {
    // Shedding first: an overloaded ingest must not do Redis work for a job it turns away.
    state
        .backlogs
        .check(&state.gov.config().shedding, sub.priority, now_ms())?;
    let ids = Ids::read(headers)?;
    let mut admitted = Admitted::new(state, tenant, job.id, &sub.model, true);
    let (decided, recorded) = tokio::join!(
        decide(state, tenant, &ids, body, sub, &mut admitted),
        record(state, tenant, sub, job),
    );
    if let Err(e) = recorded {
        // A published job whose record is missing gets it from the worker that starts it
        // (and a write that lands late finds that record and changes nothing).
        tracing::warn!(job = %job.id, error = %e, "the queued record of a job was not written");
    }
    match decided {
        Ok(None) => Ok(Admission::Fresh(admitted)),
        Ok(Some(first)) => {
            admitted.refuse().await;
            Ok(Admission::Replay(first))
        }
        Err(e) => {
            admitted.refuse().await;
            Err(e)
        }
    }
}

/// Writes the `queued` record of job `job`.
async fn record(
    state: &AppState,
    tenant: &Tenant,
    sub: &Submission,
    job: NewJob,
) -> Result<bool, sluice_store::StoreError> {
    state
        .store
        .create_queued(RecordBase {
            id: job.id,
            tenant: &tenant.id,
            priority: sub.priority,
            model: &sub.model,
            kind: job.kind,
            created_at_ms: job.created_at_ms,
            metadata: &sub.metadata,
        })
        .await
}

/// Idempotency, then limits and budgets, recording what is taken in `admitted`. `Some`: an
/// idempotent retry of that job.
async fn decide(
    state: &AppState,
    tenant: &Tenant,
    ids: &Ids<'_>,
    body: &[u8],
    sub: &Submission,
    admitted: &mut Admitted,
) -> Result<Option<Uuid>, ApiError> {
    let Some(hold) = admitted.hold_mut() else {
        return Err(ApiError::Internal("admission already settled".into()));
    };
    if let Some(key) = ids.idempotency {
        match claim(state, tenant, key, body, hold.job).await? {
            Some(Claimed::New(c)) => hold.claim = Some(c),
            Some(Claimed::Replay(first)) => return Ok(Some(first)),
            None => {}
        }
    }
    let headers = limits(state, tenant, ids, sub, hold, Some(body.len())).await?;
    admitted.headers = headers;
    Ok(None)
}

enum Claimed {
    /// This request holds the key: `(key hash, body hash)`.
    New((String, String)),
    /// The key's first request made this job.
    Replay(Uuid),
}

/// Claims `Idempotency-Key` `key` for job `job`. A retry whose first request is still being
/// published waits for its outcome (at most the claim's lease): the first job once the
/// broker took it, or the key itself if the first request gave it back. `None`: Redis could
/// not be asked and `fail_open` admits the request unchecked.
async fn claim(
    state: &AppState,
    tenant: &Tenant,
    key: &str,
    body: &[u8],
    job: Uuid,
) -> Result<Option<Claimed>, ApiError> {
    let key_hash = hex::encode(Sha256::digest(key.as_bytes()));
    let body_hash = hex::encode(Sha256::digest(body));
    let lease = pending_lease(state);
    let deadline = Instant::now() + lease;
    let mut pause = Duration::from_millis(10);
    loop {
        let claimed = state
            .gov
            .claim_idempotency(&tenant.id, &key_hash, &body_hash, job, lease.as_secs())
            .await;
        match claimed {
            Ok(Claim::New) => return Ok(Some(Claimed::New((key_hash, body_hash)))),
            Ok(Claim::Replay {
                job: first,
                accepted: true,
            }) => return Ok(Some(Claimed::Replay(first))),
            Ok(Claim::Replay { .. }) if Instant::now() + pause < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            Ok(Claim::Replay { .. }) => {
                return Err(ApiError::IdempotencyInProgress {
                    retry_after_s: state.cfg.ingest.retry_after_s,
                });
            }
            Ok(Claim::Conflict) => return Err(ApiError::IdempotencyConflict),
            Err(e) if state.gov.config().on_store_error == FailPolicy::FailOpen => {
                metrics::counter!("sluice_governance_store_unavailables_total", "policy" => "fail_open")
                    .increment(1);
                tracing::warn!(error = %e, "idempotency state unavailable; admitting unchecked (fail_open)");
                return Ok(None);
            }
            Err(e) => return Err(unavailable(state, e)),
        }
    }
}

/// How long a claim stays pending at most: comfortably more than admission and the publish
/// take (every step is bounded by a Redis or a publish timeout). A first request whose
/// ingest died frees its key after this; a retry waits no longer than this.
fn pending_lease(state: &AppState) -> Duration {
    let steps = state.cfg.nats.publish_timeout + 4 * state.cfg.redis.command_timeout;
    Duration::from_secs((2 * steps).as_secs_f64().ceil().max(5.0) as u64)
}

/// Checks the rate limits, loops and budgets of the job `hold` is for and commits them;
/// returns the response's rate-limit headers.
async fn limits(
    state: &AppState,
    tenant: &Tenant,
    ids: &Ids<'_>,
    sub: &Submission,
    hold: &mut Hold,
    count_tokens: Option<usize>,
) -> Result<Vec<(&'static str, String)>, ApiError> {
    let now = now_ms();
    let gov_cfg = state.gov.config();
    let request = &sub.request;
    // Loop detection counts repeats of the same prompt (chat messages, or an embeddings
    // request's input); without it the prompt is not hashed at all.
    let prompt_hash = if gov_cfg.loop_max_per_minute > 0 {
        // Serialized straight into the digest: the same bytes as the prompt's JSON text,
        // without building that text.
        let mut digest = Sha256::new();
        if let Some(prompt) = request.get("messages").or_else(|| request.get("input")) {
            // Writing into a digest cannot fail.
            let _ = serde_json::to_writer(&mut digest, prompt);
        }
        hex::encode(&digest.finalize()[..16])
    } else {
        String::new()
    };
    let mut a = sluice_governance::Admission {
        job: hold.job,
        tenant: &tenant.id,
        key_id: &tenant.key_id,
        model: &sub.model,
        agent: ids.agent,
        chain: ids.chain,
        prompt_hash: &prompt_hash,
        estimate: estimate::Usage::default(),
    };
    // The limits are worked out once for everything below. Counting tokens (with the
    // model's real tokenizer) only matters when the job reserves them against a budget or a
    // token limit.
    let rate_limits = state.gov.rate_limits(&a);
    if state.gov.reserves_under(&a, &rate_limits) {
        if let Some(body_len) = count_tokens {
            a.estimate = estimate_tokens(request, body_len).await;
        }
        // Until the script answers, a reservation may exist.
        hold.reserved = true;
    }
    let span = admission_span(state, &a, &rate_limits);
    let decision = match state
        .gov
        .admit_under(&a, &rate_limits, now)
        .instrument(span.clone())
        .await
    {
        Ok(d) => d,
        Err(e) if gov_cfg.on_store_error == FailPolicy::FailOpen => {
            metrics::counter!("sluice_governance_store_unavailables_total", "policy" => "fail_open")
                .increment(1);
            tracing::warn!(error = %e, "admission state unavailable; admitting unchecked (fail_open)");
            hold.reserved = false;
            return Ok(Vec::new());
        }
        Err(e) => {
            // The script may have run: giving the reservation back needs its counters.
            if hold.reserved {
                hold.reservation = Some(state.gov.reservation_under(&a, &rate_limits, now));
            }
            return Err(unavailable(state, e));
        }
    };
    match decision {
        Ok(d) => {
            hold.reserved = d.reserved;
            hold.reservation = d.reservation;
            sluice_telemetry::trace::set_attribute(&span, "sluice.admission.outcome", "admitted");
            if let Some((policy, remaining, _)) = &d.quota {
                sluice_telemetry::trace::set_attribute(
                    &span,
                    "sluice.admission.tightest",
                    policy.name(),
                );
                sluice_telemetry::trace::set_attribute(
                    &span,
                    "sluice.admission.remaining",
                    i64::try_from(*remaining).unwrap_or(i64::MAX),
                );
            }
            sluice_governance::usage::record_ratio(
                &state.gov,
                &tenant.id,
                d.budget_tokens_used,
                d.budget_cost_used_micro_usd,
            );
            soft_threshold(
                state,
                &tenant.id,
                d.budget_tokens_used,
                d.budget_cost_used_micro_usd,
            );
            Ok(d.quota
                .map(|(policy, remaining, reset_ms)| rate_headers(&policy, remaining, reset_ms))
                .unwrap_or_default())
        }
        Err(refusal) => {
            // A refusal reserves nothing.
            hold.reserved = false;
            sluice_telemetry::trace::set_attribute(
                &span,
                "sluice.admission.outcome",
                refusal.label(),
            );
            metrics::counter!("sluice_ingest_refused_total", "reason" => refusal.label())
                .increment(1);
            Err(refused(refusal))
        }
    }
}

/// The `admission` span (only while spans are exported): which limits applied to the job
/// (`sluice.admission.limits`: rate-limit policies, budgets, loop check, the in-flight cap
/// the workers enforce, and `shed` when load shedding is on), then its outcome, and the
/// tightest limit with what is left of it.
fn admission_span(
    state: &AppState,
    a: &sluice_governance::Admission<'_>,
    limits: &sluice_governance::RateLimits,
) -> tracing::Span {
    if !sluice_telemetry::trace::exporting() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!("admission");
    let mut applied = state.gov.applied_under(a, limits);
    if crate::middleware::shedding::enabled(&state.gov.config().shedding) {
        applied.push("shed".into());
    }
    sluice_telemetry::trace::set_attribute(&span, "sluice.admission.limits", applied.join(","));
    sluice_telemetry::trace::set_attribute(&span, "sluice.tenant", a.tenant.to_owned());
    span
}

/// Bodies up to this are tokenized on the runtime thread; larger ones (up to
/// `ingest.max_body_bytes`, a megabyte by default: tens of milliseconds of tokenizer work)
/// on the blocking pool, so they do not stall every other request on the thread.
const INLINE_TOKENIZE_BYTES: usize = 32 * 1024;

async fn estimate_tokens(request: &Value, body_len: usize) -> estimate::Usage {
    if body_len <= INLINE_TOKENIZE_BYTES {
        return estimate::request(request);
    }
    let owned = request.clone();
    match tokio::task::spawn_blocking(move || estimate::request(&owned)).await {
        Ok(usage) => usage,
        Err(_) => estimate::request(request),
    }
}

/// A request answered from the response cache (a hit, or a wait for another job's
/// answer): it calls no provider, so it reserves no tokens and no budget and is never
/// settled, but with `cache.hits_count_against_limits` (the default) it counts against the
/// request-rate limits, the loop check and the kill switch like any request. Returns the
/// rate-limit headers for the response.
pub async fn admit_hit(
    state: &AppState,
    tenant: &Tenant,
    headers: &HeaderMap,
    sub: &Submission,
    job: Uuid,
) -> Result<Vec<(&'static str, String)>, ApiError> {
    if !state.cache.hits_count_against_limits() {
        return Ok(Vec::new());
    }
    let ids = Ids::read(headers)?;
    let mut admitted = Admitted::new(state, tenant, job, &sub.model, false);
    let counted = match admitted.hold_mut() {
        Some(hold) => limits(state, tenant, &ids, sub, hold, None).await,
        None => Err(ApiError::Internal("admission already settled".into())),
    };
    // An empty reservation (a budget applies) goes back at once: nothing will settle it.
    admitted.refuse().await;
    counted
}

fn unavailable(state: &AppState, e: sluice_governance::GovernanceError) -> ApiError {
    metrics::counter!("sluice_governance_store_unavailables_total", "policy" => "fail_closed")
        .increment(1);
    ApiError::AdmissionUnavailable {
        retry_after_s: state.cfg.ingest.retry_after_s,
        reason: e.to_string(),
    }
}

fn refused(r: Refusal) -> ApiError {
    let secs = |ms: u64| ms.div_ceil(1000).max(1);
    match r {
        Refusal::Disabled => ApiError::TenantDisabled,
        Refusal::Loop { retry_after_ms } => ApiError::LoopDetected {
            retry_after_s: secs(retry_after_ms),
        },
        Refusal::BudgetExhausted {
            cost,
            retry_after_ms,
        } => ApiError::BudgetExhausted {
            cost,
            retry_after_s: secs(retry_after_ms),
        },
        Refusal::RateLimited {
            policy,
            retry_after_ms,
        } => ApiError::RateLimited {
            dimension: policy.dimension,
            policy: policy.name(),
            retry_after_s: secs(retry_after_ms),
            headers: rate_headers(&policy, 0, retry_after_ms),
        },
    }
}

/// IETF `RateLimit-Policy` and `RateLimit` headers (draft-ietf-httpapi-ratelimit-headers).
fn rate_headers(p: &Policy, remaining: u64, reset_ms: u64) -> Vec<(&'static str, String)> {
    let name = p.name();
    vec![
        (
            "ratelimit-policy",
            format!("\"{name}\";q={};w={}", p.limit, p.window_s),
        ),
        (
            "ratelimit",
            format!("\"{name}\";r={remaining};t={}", reset_ms.div_ceil(1000)),
        ),
    ]
}

fn soft_threshold(state: &AppState, tenant: &str, used_tokens: u64, used_cost_micro_usd: u64) {
    let cfg = state.gov.config();
    let Some(budget) = cfg.tenant_policy(tenant).map(|p| &p.budget) else {
        return;
    };
    let ratio = cfg.budget_soft_ratio;
    let tokens = budget.tokens > 0 && used_tokens as f64 >= budget.tokens as f64 * ratio;
    let cost = budget.cost_usd > 0.0 && used_cost_micro_usd as f64 >= budget.cost_usd * 1e6 * ratio;
    for (passed, kind) in [(tokens, "tokens"), (cost, "cost")] {
        if passed {
            metrics::counter!("sluice_governance_budget_soft_threshold_total", "budget" => kind)
                .increment(1);
            tracing::info!(
                tenant,
                budget = kind,
                used_tokens,
                used_cost_micro_usd,
                "tenant passed its budget's soft threshold"
            );
        }
    }
}

/// An identifier header: at most 128 visible ASCII characters.
fn id_header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<Option<&'a str>, ApiError> {
    let Some(v) = headers.get(name) else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(s) if !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(s))
        }
        _ => Err(ApiError::invalid(
            format!("Header '{name}' must be 1 to 128 visible ASCII characters."),
            Some(name),
            "invalid_header",
        )),
    }
}
