//! The one path from a validated request to an accepted job, shared by `POST /v1/jobs`,
//! `POST /v1/chat/completions` and `POST /v1/embeddings`.
//!
//! ```text
//! body ─ endpoint's validator ─▶ Submission ─ admission::admit ─▶ Admitted (guard)
//!        ─ envelope, job webhook, watch ─▶ publish ─ ack ─▶ Admitted::commit ─▶ Submitted
//! ```
//!
//! Each endpoint only validates its body into a [`Submission`] and turns the [`Submitted`]
//! job into its answer (`202`, or a synchronous wait). Everything admission took — the
//! idempotency claim, the reservation, the `queued` record — is held by the [`Admitted`]
//! guard until the broker acknowledges the job; any failure or early return before that,
//! including a client that goes away, gives it all back.

use std::collections::BTreeMap;

use axum::http::HeaderMap;
use serde_json::Value;
use sluice_protocol::{JobEnvelope, JobKind, Priority, SCHEMA_VERSION};
use uuid::Uuid;

use sluice_cache::Call;
use sluice_protocol::JobStatus;

use crate::{
    AppState,
    auth::Tenant,
    cache::{Followed, LeaseGuard, Lookup, Refresh, follow as follow_leader},
    cancel::CancelOnDrop,
    error::ApiError,
    middleware::admission::{self, Admission, NewJob},
    routes::jobs::{JobView, enqueue, queued_view, store_unavailable},
    validate::{self, ChatSubmission},
    watch::JobWatch,
};

/// A validated request, whatever the endpoint: what becomes the job.
#[derive(Debug)]
pub struct Submission {
    pub kind: JobKind,
    pub model: String,
    pub priority: Priority,
    pub metadata: BTreeMap<String, String>,
    /// Seconds after acceptance past which the job must not be sent upstream.
    pub deadline_s: Option<u64>,
    /// The client asked for a streamed answer.
    pub stream: bool,
    /// The job's own webhook URL, already checked against the SSRF policy.
    pub webhook_url: Option<String>,
    /// W3C `traceparent` of the request, carried to the worker.
    pub traceparent: Option<String>,
    /// The upstream request (a JSON object), parsed so admission can read it.
    pub request: Value,
}

impl Submission {
    /// A chat completion. A streamed one asks the upstream to report usage
    /// (`stream_options.include_usage`), so it settles its budget like a plain one.
    pub fn chat(sub: ChatSubmission, headers: &HeaderMap) -> Submission {
        let mut request = sub.request;
        if sub.stream {
            request["stream_options"]["include_usage"] = Value::Bool(true);
        }
        Submission {
            kind: JobKind::ChatCompletion,
            model: sub.model,
            priority: sub.priority,
            metadata: sub.metadata,
            deadline_s: sub.deadline_s,
            stream: sub.stream,
            webhook_url: sub.webhook_url,
            traceparent: traceparent(headers),
            request,
        }
    }

    /// The broker's message for this submission admitted as `job`; `reservation`: the
    /// counters of the reservation admission recorded, which the job's end must settle.
    fn envelope(
        self,
        tenant: &Tenant,
        job: NewJob,
        reservation: Option<sluice_protocol::Reservation>,
        cache: Option<sluice_protocol::CacheWrite>,
    ) -> Result<JobEnvelope, ApiError> {
        let created_at_ms = job.created_at_ms;
        crate::observe::admitted(tenant, job.id, self.priority);
        Ok(JobEnvelope {
            schema: SCHEMA_VERSION,
            id: job.id,
            tenant: tenant.id.to_string(),
            priority: self.priority,
            kind: self.kind,
            model: self.model,
            request: validate::encode_request(&self.request)?,
            created_at_ms,
            deadline_ms: self
                .deadline_s
                .map(|s| created_at_ms.saturating_add(s.saturating_mul(1000))),
            replays: 0,
            // The request's span when traces are exported, else the client's own header.
            traceparent: sluice_telemetry::trace::current_traceparent().or(self.traceparent),
            metadata: self.metadata,
            stream: self.stream,
            reserved: reservation.is_some(),
            cache,
            reservation,
        })
    }
}

fn traceparent(headers: &HeaderMap) -> Option<String> {
    let v = headers.get("traceparent")?.to_str().ok()?;
    (v.len() <= 128 && v.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')).then(|| v.to_string())
}

/// Whether the client waits on this connection for the job's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    /// `202` and poll: nothing to watch.
    No,
    /// Synchronous: watch the job from before its publish, and cancel it if the client
    /// leaves before its answer.
    Wait,
}

/// What became of a submission.
pub enum Submitted {
    /// This request's job, acknowledged by the broker (or, for [`Follow::No`], recorded
    /// `completed` from the response cache).
    Fresh(Box<Fresh>),
    /// An idempotent retry: the first request's job.
    Replay(Uuid),
    /// [`Follow::Wait`]: answered from the response cache, or by the job computing the same
    /// answer; no job of this request exists.
    Cached(Box<Cached>),
    /// [`Follow::Wait`]: the job computing the same answer is still running past the wait
    /// limit; the client polls it.
    Waiting(Uuid),
}

/// A synchronous answer from the response cache.
pub struct Cached {
    /// The stored result (JSON).
    pub body: Vec<u8>,
    /// `x-sluice-cache`: `hit`, `stale` or `coalesced`.
    pub how: &'static str,
    /// A negative entry: `body` is the stored error of the upstream's refusal, answered
    /// as that error (never as a 200).
    pub negative: bool,
    /// The job whose answer this is (the response's `x-request-id`).
    pub source: Uuid,
    /// `RateLimit-Policy` / `RateLimit` for the response.
    pub headers: Vec<(&'static str, String)>,
}

/// A job this request created and the broker holds.
pub struct Fresh {
    /// The job as just queued (with its own webhook's secret, shown once).
    pub view: JobView,
    /// `RateLimit-Policy` / `RateLimit` for the response.
    pub headers: Vec<(&'static str, String)>,
    /// With [`Follow::Wait`]: the job's watch and the guard that cancels it if the client
    /// leaves.
    pub wait: Option<(JobWatch, CancelOnDrop)>,
    /// `x-sluice-cache` for the response, when the cache is on.
    pub cache: Option<&'static str>,
}

/// Admits and publishes `sub`. After `Ok(Submitted::Fresh)` the job is durable; after `Err`
/// nothing of it is left (no claim, no reservation, no record, and a tombstone that keeps a
/// worker from running a message the broker stored after all).
pub async fn submit(
    state: &AppState,
    tenant: &Tenant,
    headers: &HeaderMap,
    body: &[u8],
    sub: Submission,
    follow: Follow,
) -> Result<Submitted, ApiError> {
    let job = NewJob::now(sub.kind);
    let lookup = match look_up(state, tenant, headers, body, &sub, job, follow).await? {
        Looked::Answered(s) => return Ok(s),
        Looked::Run(l) => l,
    };
    // Freed unless the job is queued, so an identical request can lead instead of waiting.
    let lease = LeaseGuard::for_lookup(state, &lookup, job.id);
    let mut admitted = match admission::admit(state, tenant, headers, body, &sub, job).await? {
        Admission::Replay(first) => return Ok(Submitted::Replay(first)),
        Admission::Fresh(a) => a,
    };
    let headers = std::mem::take(&mut admitted.headers);
    let reservation = admitted.reservation();
    match publish(state, tenant, sub, job, reservation, follow, lookup.write()).await {
        Ok((view, wait)) => {
            admitted.commit().await;
            if let Some(lease) = lease {
                lease.commit();
            }
            Ok(Submitted::Fresh(Box::new(Fresh {
                view,
                headers,
                wait,
                cache: lookup.header(),
            })))
        }
        Err(e) => {
            admitted.undo().await;
            Err(e)
        }
    }
}

/// The steps between admission and the broker's acknowledgement.
async fn publish(
    state: &AppState,
    tenant: &Tenant,
    mut sub: Submission,
    job: NewJob,
    reservation: Option<sluice_protocol::Reservation>,
    follow: Follow,
    cache: Option<sluice_protocol::CacheWrite>,
) -> Result<(JobView, Option<(JobWatch, CancelOnDrop)>), ApiError> {
    let hook_url = sub.webhook_url.take();
    let env = sub.envelope(tenant, job, reservation, cache)?;
    // Stored with a fresh secret before the job is published, so the dispatcher always
    // finds it; the secret is shown once, in the 202.
    let hook = match hook_url {
        Some(url) => {
            let secret = sluice_webhooks::sign::new_secret();
            state
                .store
                .set_job_hook(env.id, &url, &secret)
                .await
                .map_err(store_unavailable)?;
            Some(serde_json::json!({ "url": url, "secret": secret }))
        }
        None => None,
    };
    // A synchronous client subscribes before the publish, so no notification slips by.
    let watch = match follow {
        Follow::Wait => Some(JobWatch::open(state, env.id, 0).await?),
        Follow::No => None,
    };
    enqueue(state, &env).await?;
    let wait = watch.map(|w| (w, CancelOnDrop::new(state.clone(), env.id)));
    let mut view = queued_view(env);
    view.webhook = hook;
    Ok((view, wait))
}

enum Looked {
    /// A hit or a coalesced wait answered the request.
    Answered(Submitted),
    /// Run the request's own job (storing its answer when the lookup says so).
    Run(Lookup),
}

/// Looks `sub` up in the response cache before admission. A hit is answered here: on
/// [`Follow::Wait`] with the stored answer, on [`Follow::No`] as a job recorded `completed`
/// that never reaches the broker. A synchronous miss that another job is already computing
/// waits for that job. A job with its own webhook always runs (its delivery is part of it).
async fn look_up(
    state: &AppState,
    tenant: &Tenant,
    headers: &HeaderMap,
    body: &[u8],
    sub: &Submission,
    job: NewJob,
    follow: Follow,
) -> Result<Looked, ApiError> {
    if sub.webhook_url.is_some() {
        return Ok(Looked::Run(if state.cache.enabled() {
            Lookup::Bypass
        } else {
            Lookup::Off
        }));
    }
    let call = match sub.kind {
        JobKind::ChatCompletion => Call::Chat,
        JobKind::Embedding => Call::Embedding,
    };
    let lookup = state
        .cache
        .lookup(
            &state.store,
            &tenant.id,
            call,
            &sub.model,
            &sub.request,
            headers,
            job.id,
            follow == Follow::Wait,
        )
        .await;
    if let Some((entry, similarity)) = lookup.hit() {
        let how = lookup.header().unwrap_or("hit");
        let mut limits = admission::admit_hit(state, tenant, headers, sub, job.id).await?;
        if let Some(s) = similarity {
            limits.push((crate::semantic::SIMILARITY_HEADER, format!("{s:.3}")));
        }
        if let Lookup::Stale {
            refresh: Some(r), ..
        } = &lookup
        {
            spawn_refresh(state, tenant, body, sub, r.clone());
        }
        crate::cache::count_saved(state.gov.config(), &tenant.id, &sub.model, &entry);
        return Ok(Looked::Answered(match follow {
            Follow::Wait => Submitted::Cached(Box::new(Cached {
                body: entry.body.clone(),
                how,
                negative: entry.negative,
                source: entry.source_job,
                headers: limits,
            })),
            Follow::No => cached_job(state, tenant, sub, job, &entry, how, limits).await?,
        }));
    }
    match lookup {
        Lookup::Follow { leader, write, key } => {
            let wait = state.cfg.delivery.sync_wait;
            match follow_leader(state, leader, wait).await? {
                Followed::Ended(o) if o.status == JobStatus::Completed => {
                    let limits = admission::admit_hit(state, tenant, headers, sub, job.id).await?;
                    let body = o.result.ok_or_else(|| {
                        ApiError::Internal("completed job without a result".into())
                    })?;
                    Ok(Looked::Answered(Submitted::Cached(Box::new(Cached {
                        body: body.into_bytes(),
                        how: "coalesced",
                        negative: false,
                        source: leader,
                        headers: limits,
                    }))))
                }
                // Its client went away and cancelled it: that is not this request's answer.
                Followed::Ended(o) if o.status == JobStatus::Cancelled => {
                    Ok(Looked::Run(Lookup::Lead {
                        write,
                        key,
                        leased: false,
                    }))
                }
                // The failure it would have got from its own job.
                Followed::Ended(o) => Err(o.failure()),
                Followed::StillRunning => Ok(Looked::Answered(Submitted::Waiting(leader))),
                // The job it followed was never queued: run this one, unleased.
                Followed::Gone => Ok(Looked::Run(Lookup::Lead {
                    write,
                    key,
                    leased: false,
                })),
            }
        }
        other => Ok(Looked::Run(other)),
    }
}

/// `POST /v1/jobs` hit: the job is recorded `completed` with the cached answer and the job
/// it came from.
async fn cached_job(
    state: &AppState,
    tenant: &Tenant,
    sub: &Submission,
    job: NewJob,
    entry: &sluice_cache::Entry,
    how: &'static str,
    headers: Vec<(&'static str, String)>,
) -> Result<Submitted, ApiError> {
    let env = Submission {
        kind: sub.kind,
        model: sub.model.clone(),
        priority: sub.priority,
        metadata: sub.metadata.clone(),
        deadline_s: sub.deadline_s,
        stream: sub.stream,
        webhook_url: None,
        traceparent: sub.traceparent.clone(),
        request: Value::Null,
    }
    .envelope(tenant, job, None, None)?;
    state
        .store
        .record_cached(&env, entry)
        .await
        .map_err(store_unavailable)?;
    let view = match state.store.get(env.id).await.map_err(store_unavailable)? {
        Some(r) => JobView::from(r),
        None => {
            return Err(ApiError::Internal(
                "a cached job's record is missing".into(),
            ));
        }
    };
    Ok(Submitted::Fresh(Box::new(Fresh {
        view,
        headers,
        wait: None,
        cache: Some(how),
    })))
}

/// Queues the job that refreshes a stale entry, in the background (the stale answer does
/// not wait for it): the same request at `low` priority, so it yields to client traffic
/// and is shed first, admitted like any job of the tenant (limits, budget), without the
/// client's metadata, webhook or deadline. Its id holds the entry's lease: it rewrites the
/// entry and frees the lease when it completes; if it is refused or cannot be queued, the
/// lease is freed at once and the next stale read tries again.
fn spawn_refresh(state: &AppState, tenant: &Tenant, body: &[u8], sub: &Submission, r: Refresh) {
    let refresh = Submission {
        kind: sub.kind,
        model: sub.model.clone(),
        priority: Priority::Low,
        metadata: BTreeMap::new(),
        deadline_s: None,
        stream: sub.stream,
        webhook_url: None,
        traceparent: None,
        request: sub.request.clone(),
    };
    let job = NewJob {
        id: r.job,
        ..NewJob::now(sub.kind)
    };
    let (bg, state, tenant, body) = (
        state.background.clone(),
        state.clone(),
        tenant.clone(),
        body.to_vec(),
    );
    bg.spawn(async move {
        let lease = LeaseGuard::for_refresh(&state, &r);
        let outcome = match admission::admit(&state, &tenant, &HeaderMap::new(), &body, &refresh, job)
            .await
        {
            Ok(Admission::Fresh(admitted)) => {
                let reservation = admitted.reservation();
                match publish(&state, &tenant, refresh, job, reservation, Follow::No, Some(r.write))
                    .await
                {
                    Ok(_) => {
                        admitted.commit().await;
                        lease.commit();
                        "queued"
                    }
                    Err(e) => {
                        admitted.undo().await;
                        tracing::warn!(job = %job.id, error = %e, "cannot queue a stale entry's refresh");
                        "unavailable"
                    }
                }
            }
            // Without an idempotency key there is no first request to replay.
            Ok(Admission::Replay(_)) => "refused",
            Err(e) => {
                tracing::debug!(job = %job.id, error = %e, "a stale entry's refresh was not admitted");
                "refused"
            }
        };
        metrics::counter!("sluice_cache_refreshes_total", "result" => outcome).increment(1);
    });
}
