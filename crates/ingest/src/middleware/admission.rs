//! Job admission: idempotency, then limits and budgets in one Redis round trip.
//!
//! Runs after validation (it needs the model, the token estimate and the prompt). A refusal
//! becomes `429` with `Retry-After` and, for rate limits, the `RateLimit-Policy` /
//! `RateLimit` headers; the error `code` names the dimension. When Redis cannot be asked,
//! `governance.on_store_error` decides — `fail_closed` (default) answers 503, `fail_open`
//! admits unchecked — and both count in `sluice_governance_store_unavailables_total` and show in
//! `/readyz`; limiting is never switched off silently.

use axum::http::HeaderMap;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sluice_config::FailPolicy;
use sluice_governance::{Admission, Refusal, admission::Policy, estimate, idempotency::Claim};
use sluice_protocol::JobKind;
use sluice_store::{RecordBase, now_ms};
use uuid::Uuid;

use crate::{AppState, auth::Tenant, error::ApiError, validate::ChatSubmission};

pub const AGENT_HEADER: &str = "x-agent-id";
pub const CHAIN_HEADER: &str = "x-chain-id";
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// What admission decided for an accepted request.
#[derive(Debug, Default)]
pub struct Admitted {
    /// An idempotent retry: the first request's job.
    pub replay: Option<Uuid>,
    /// `RateLimit-Policy` / `RateLimit` for the response.
    pub headers: Vec<(&'static str, String)>,
    /// A reservation was recorded that the job's end must settle (see the envelope's
    /// `reserved`).
    pub reserved: bool,
    idempotency: Option<(String, String)>,
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

/// Admits job `job` and writes its `queued` record in the same Redis round trip, or refuses
/// it. The record is written while admission decides, and removed again when the job is
/// refused or turns out to be an idempotent replay: a job's id is only ever shown in its
/// answer, so nobody can have seen a record that is removed. The caller publishes the job
/// next ([`crate::routes::jobs::enqueue`]), which removes the record if the broker does not
/// take it.
///
/// May rewrite the request: streamed jobs are asked to report usage, so they can be settled
/// like plain ones.
pub async fn admit_and_record(
    state: &AppState,
    tenant: &Tenant,
    headers: &HeaderMap,
    body: &[u8],
    sub: &mut ChatSubmission,
    job: NewJob,
) -> Result<Admitted, ApiError> {
    // Shedding first: an overloaded ingest must not do Redis work for a job it turns away.
    state
        .backlogs
        .check(&state.gov.config().shedding, sub.priority, now_ms())?;
    if sub.request.get("stream").and_then(Value::as_bool) == Some(true) {
        sub.request["stream_options"]["include_usage"] = Value::Bool(true);
    }
    let base = RecordBase {
        id: job.id,
        tenant: &tenant.id,
        priority: sub.priority,
        model: &sub.model,
        kind: job.kind,
        created_at_ms: job.created_at_ms,
        metadata: &sub.metadata,
    };
    let (admitted, recorded) = tokio::join!(
        admit(state, tenant, headers, body, sub, job.id),
        state.store.create_queued(base),
    );
    if let Err(e) = recorded {
        // A published job whose record is missing gets it from the worker that starts it
        // (and a write that lands late finds that record and changes nothing).
        tracing::warn!(job = %job.id, error = %e, "the queued record of a job was not written");
    }
    if matches!(&admitted, Ok(a) if a.replay.is_none()) {
        return admitted;
    }
    if let Err(e) = state.store.discard(job.id).await {
        tracing::warn!(job = %job.id, error = %e, "cannot remove the record of a refused job; it expires with its TTL");
    }
    admitted
}

/// Checks idempotency, limits and budgets for job `job`.
async fn admit(
    state: &AppState,
    tenant: &Tenant,
    headers: &HeaderMap,
    body: &[u8],
    sub: &ChatSubmission,
    job: Uuid,
) -> Result<Admitted, ApiError> {
    let now = now_ms();
    let gov_cfg = state.gov.config();
    let agent = id_header(headers, AGENT_HEADER)?;
    let chain = id_header(headers, CHAIN_HEADER)?;

    let mut admitted = Admitted::default();
    if let Some(key) = id_header(headers, IDEMPOTENCY_HEADER)? {
        let key_hash = hex::encode(Sha256::digest(key.as_bytes()));
        let body_hash = hex::encode(Sha256::digest(body));
        match state
            .gov
            .claim_idempotency(&tenant.id, &key_hash, &body_hash, job)
            .await
        {
            Ok(Claim::New) => admitted.idempotency = Some((key_hash, body_hash)),
            Ok(Claim::Replay(first)) => {
                admitted.replay = Some(first);
                return Ok(admitted);
            }
            Ok(Claim::Conflict) => return Err(ApiError::IdempotencyConflict),
            Err(e) => return Err(unavailable(state, e)),
        }
    }

    let request = &sub.request;
    // Loop detection counts repeats of the same prompt (chat messages, or an embeddings
    // request's input); without it the prompt is not hashed at all.
    let prompt_hash = if gov_cfg.loop_max_per_minute > 0 {
        let prompt = request
            .get("messages")
            .or_else(|| request.get("input"))
            .map(Value::to_string)
            .unwrap_or_default();
        hex::encode(&Sha256::digest(prompt.as_bytes())[..16])
    } else {
        String::new()
    };
    let mut a = Admission {
        job,
        tenant: &tenant.id,
        key_id: &tenant.key_id,
        model: &sub.model,
        agent,
        chain,
        prompt_hash: &prompt_hash,
        estimate: estimate::Usage::default(),
    };
    // Counting tokens (with the model's real tokenizer) only matters when the job reserves
    // them against a budget or a token limit.
    if state.gov.reserves(&a) {
        a.estimate = estimate_tokens(request, body.len()).await;
    }
    let decision = match state.gov.admit(&a, now).await {
        Ok(d) => d,
        Err(e) if gov_cfg.on_store_error == FailPolicy::FailOpen => {
            metrics::counter!("sluice_governance_store_unavailables_total", "policy" => "fail_open")
                .increment(1);
            tracing::warn!(error = %e, "admission state unavailable; admitting unchecked (fail_open)");
            return Ok(admitted);
        }
        Err(e) => {
            release(state, tenant, &admitted, job).await;
            return Err(unavailable(state, e));
        }
    };
    match decision {
        Ok(d) => {
            admitted.reserved = d.reserved;
            if let Some((policy, remaining, reset_ms)) = d.quota {
                admitted.headers = rate_headers(&policy, remaining, reset_ms);
            }
            soft_threshold(
                state,
                &tenant.id,
                d.budget_tokens_used,
                d.budget_cost_used_micro_usd,
            );
            Ok(admitted)
        }
        Err(refusal) => {
            release(state, tenant, &admitted, job).await;
            metrics::counter!("sluice_ingest_refused_total", "reason" => refusal.label())
                .increment(1);
            Err(refused(refusal))
        }
    }
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

/// The job could not be published after all: give back its reservation and idempotency key.
pub async fn undo(state: &AppState, tenant: &Tenant, admitted: &Admitted, job: Uuid, model: &str) {
    release(state, tenant, admitted, job).await;
    if let Err(e) = state
        .gov
        .settle(job, model, estimate::Usage::default(), now_ms())
        .await
    {
        tracing::warn!(job = %job, error = %e, "cannot return the reservation of an unpublished job");
    }
}

async fn release(state: &AppState, tenant: &Tenant, admitted: &Admitted, job: Uuid) {
    if let Some((key_hash, body_hash)) = &admitted.idempotency
        && let Err(e) = state
            .gov
            .release_idempotency(&tenant.id, key_hash, body_hash, job)
            .await
    {
        tracing::warn!(error = %e, "cannot release an idempotency key; it expires with its window");
    }
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
