//! The OpenAPI 3.1 document of the HTTP API, served at `GET /openapi.json` (an open route,
//! like `/healthz`: the contract is public, the data behind it is not).
//!
//! The document is generated at start-up from the declarations below: one
//! documentation-only function per operation with a `#[utoipa::path]` attribute (the
//! handlers in [`crate::routes`] stay free of documentation plumbing), schemas for the
//! request and response bodies as the handlers read and write them, and reusable error
//! responses in OpenAI's shape with the `Retry-After` / `RateLimit` headers they carry.
//!
//! Two checks keep it true: a test compares the operations with the routes the router
//! registers (so a new route cannot forget its entry), and `scripts/contract_test.sh` runs
//! schemathesis against a live stack from this document (no 5xx, every answer conforms).

use std::sync::OnceLock;

use axum::{
    http::header::CONTENT_TYPE,
    response::{IntoResponse, Response},
};
use utoipa::{
    Modify, OpenApi,
    openapi::{
        RefOr, Schema,
        security::{Http, HttpAuthScheme, SecurityScheme},
    },
};

/// `GET /openapi.json`.
pub async fn document() -> Response {
    static DOC: OnceLock<String> = OnceLock::new();
    let body = DOC.get_or_init(|| {
        ApiDoc::openapi()
            .to_json()
            .unwrap_or_else(|_| "{}".to_string())
    });
    ([(CONTENT_TYPE, "application/json")], body.as_str()).into_response()
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Sluice",
        description = "A durable, queue-first gateway for AI inference traffic: jobs, \
            OpenAI-compatible endpoints, webhooks, and the admin API. Every error has OpenAI's \
            shape `{\"error\": {\"message\", \"type\", \"param\", \"code\"}}`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    paths(
        operations::submit_job,
        operations::get_job,
        operations::cancel_job,
        operations::job_events,
        operations::chat_completions,
        operations::embeddings,
        operations::models,
        operations::model,
        operations::create_webhook,
        operations::list_webhooks,
        operations::delete_webhook,
        operations::rotate_webhook,
        operations::webhook_deliveries,
        operations::admin_list_tenants,
        operations::admin_put_tenant,
        operations::admin_list_keys,
        operations::admin_create_key,
        operations::admin_revoke_key,
        operations::admin_rotate_key,
        operations::admin_dlq_list,
        operations::admin_dlq_show,
        operations::admin_dlq_replay,
        operations::admin_dashboard,
        operations::healthz,
        operations::readyz,
        operations::metrics,
        operations::openapi_json,
        operations::dashboard_page,
        operations::dashboard_script,
    ),
    components(
        schemas(schemas::ErrorBody, schemas::Job, schemas::ChatCompletionRequest),
        responses(
            errors::BadRequest, errors::Unauthorized, errors::Forbidden, errors::NotFound,
            errors::Conflict, errors::PayloadTooLarge, errors::IdempotencyReused,
            errors::TooManyRequests, errors::Unavailable, errors::BadGateway,
            errors::GatewayTimeout,
        ),
    ),
    modifiers(&Security, &JobRequest),
    security(("bearer" = [])),
    tags(
        (name = "jobs", description = "Asynchronous jobs: submit, read, cancel, follow."),
        (name = "openai", description = "OpenAI-compatible synchronous endpoints."),
        (name = "webhooks", description = "Signed webhook endpoints of a tenant."),
        (name = "admin", description = "Tenants, keys, dead letters and the dashboard's data (admin key only)."),
        (name = "ops", description = "Health, readiness, metrics and this document (no key)."),
    )
)]
pub struct ApiDoc;

/// The bearer scheme every operation uses unless it says `security: []`.
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
        }
    }
}

/// `POST /v1/jobs` takes the chat-completions body plus `webhook`: the schema is derived from
/// [`schemas::ChatCompletionRequest`] so the two cannot drift apart.
struct JobRequest;

impl Modify for JobRequest {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let Some(components) = openapi.components.as_mut() else {
            return;
        };
        let Some(RefOr::T(Schema::Object(chat))) =
            components.schemas.get("ChatCompletionRequest").cloned()
        else {
            return;
        };
        let mut job = chat;
        job.description = Some(
            "A chat-completions request plus Sluice's fields (`priority`, `metadata`, \
             `deadline_s`, `webhook`); unknown top-level fields are refused by name."
                .into(),
        );
        let webhook = <schemas::JobWebhookRequest as utoipa::PartialSchema>::schema();
        job.properties.insert("webhook".into(), webhook);
        components
            .schemas
            .insert("JobRequest".into(), RefOr::T(Schema::Object(job)));
    }
}

/// The request and response bodies, as documentation (the handlers work on JSON values and
/// their own types; these say what those accept and produce).
#[allow(dead_code)]
pub mod schemas {
    use std::collections::BTreeMap;

    use serde::Serialize;
    use serde_json::Value;
    use utoipa::ToSchema;

    /// OpenAI's error shape, on every route.
    #[derive(Serialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct ErrorBody {
        pub error: ErrorDetail,
    }

    #[derive(Serialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct ErrorDetail {
        /// A sentence for people; never upstream text or internal detail.
        pub message: String,
        #[serde(rename = "type")]
        pub kind: ErrorType,
        /// The offending parameter, when there is one.
        #[schema(required = true)]
        pub param: Option<String>,
        /// A stable, machine-readable code (`invalid_value`, `rate_limit_tenant`,
        /// `queue_unavailable`, …); see the README's error table.
        #[schema(required = true)]
        pub code: Option<String>,
    }

    #[derive(Serialize, ToSchema)]
    #[serde(rename_all = "snake_case")]
    /// The OpenAI API's type for the status (the table is in docs/compat.md).
    pub enum ErrorType {
        InvalidRequestError,
        Requests,
        Tokens,
        InsufficientQuota,
        ServerError,
    }

    #[derive(Serialize, ToSchema)]
    #[serde(rename_all = "snake_case")]
    pub enum JobStatus {
        Queued,
        InProgress,
        Completed,
        Failed,
        Cancelled,
        Expired,
    }

    #[derive(Serialize, ToSchema)]
    #[serde(rename_all = "snake_case")]
    pub enum Priority {
        High,
        Normal,
        Low,
    }

    #[derive(Serialize, ToSchema)]
    #[serde(rename_all = "snake_case")]
    pub enum JobObject {
        Job,
    }

    /// A job. Timestamps are Unix seconds, with millisecond precision in `timings_ms`.
    #[derive(Serialize, ToSchema)]
    pub struct Job {
        pub id: String,
        pub object: JobObject,
        pub status: JobStatus,
        pub priority: Priority,
        pub model: String,
        pub created_at: u64,
        #[schema(required = true)]
        pub in_progress_at: Option<u64>,
        #[schema(required = true)]
        pub completed_at: Option<u64>,
        #[schema(required = true)]
        pub failed_at: Option<u64>,
        #[schema(required = true)]
        pub cancelled_at: Option<u64>,
        #[schema(required = true)]
        pub expired_at: Option<u64>,
        pub attempts: u64,
        pub metadata: BTreeMap<String, String>,
        /// The provider's answer (`chat.completion` or an embeddings list) once completed.
        #[schema(required = true)]
        pub result: Option<Value>,
        #[schema(required = true)]
        pub error: Option<JobError>,
        /// The model router's decision (`model: "auto"`).
        pub route: Option<Value>,
        pub timings_ms: Timings,
        /// The job's own webhook and its signing secret: only in the `202` that created it.
        pub webhook: Option<JobWebhook>,
    }

    /// Why a job failed, written by Sluice (never the provider's raw text).
    #[derive(Serialize, ToSchema)]
    pub struct JobError {
        pub message: String,
        #[serde(rename = "type")]
        pub kind: String,
        pub code: String,
        /// The provider's last `Retry-After` (seconds, at most an hour), when it kept rate
        /// limiting.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub retry_after_s: Option<u64>,
    }

    #[derive(Serialize, ToSchema)]
    pub struct Timings {
        pub queued_at: u64,
        #[schema(required = true)]
        pub in_progress_at: Option<u64>,
        #[schema(required = true)]
        pub completed_at: Option<u64>,
        #[schema(required = true)]
        pub failed_at: Option<u64>,
        #[schema(required = true)]
        pub cancelled_at: Option<u64>,
        #[schema(required = true)]
        pub expired_at: Option<u64>,
    }

    #[derive(Serialize, ToSchema)]
    pub struct JobWebhook {
        pub url: String,
        pub secret: String,
    }

    /// `webhook` of `POST /v1/jobs`: where the job's terminal event is delivered (an
    /// `https://` URL; internal addresses are refused).
    #[derive(Serialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct JobWebhookRequest {
        pub url: String,
    }

    /// An OpenAI chat-completions request plus Sluice's `priority`, `metadata` and
    /// `deadline_s`. Unknown top-level fields are refused by name; the fields below not
    /// typed further are forwarded to the provider as they are.
    #[derive(Serialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct ChatCompletionRequest {
        #[schema(min_length = 1, max_length = 256)]
        pub model: String,
        #[schema(min_items = 1, max_items = 4096)]
        pub messages: Vec<Message>,
        /// Sluice: the queue class (default `normal`).
        pub priority: Option<Priority>,
        /// Sluice: up to 16 pairs, keys of 1-64 and values of at most 512 characters.
        pub metadata: Option<BTreeMap<String, String>>,
        /// Sluice: seconds after acceptance past which the job is not sent upstream.
        #[schema(minimum = 1, maximum = 604800)]
        pub deadline_s: Option<i64>,
        #[schema(minimum = 0, maximum = 2)]
        pub temperature: Option<f64>,
        #[schema(minimum = 0, maximum = 1)]
        pub top_p: Option<f64>,
        #[schema(minimum = -2, maximum = 2)]
        pub presence_penalty: Option<f64>,
        #[schema(minimum = -2, maximum = 2)]
        pub frequency_penalty: Option<f64>,
        #[schema(minimum = 1, maximum = 128)]
        pub n: Option<i64>,
        #[schema(minimum = 0, maximum = 20)]
        pub top_logprobs: Option<i64>,
        pub seed: Option<i64>,
        /// At most `ingest.max_output_tokens` (1,000,000 by default).
        #[schema(minimum = 1)]
        pub max_tokens: Option<i64>,
        #[schema(minimum = 1)]
        pub max_completion_tokens: Option<i64>,
        pub stream: Option<bool>,
        pub stream_options: Option<BTreeMap<String, Value>>,
        pub logprobs: Option<bool>,
        pub parallel_tool_calls: Option<bool>,
        pub store: Option<bool>,
        pub user: Option<String>,
        pub stop: Option<Stop>,
        #[schema(max_items = 128)]
        pub tools: Option<Vec<Value>>,
        pub tool_choice: Option<Value>,
        pub response_format: Option<BTreeMap<String, Value>>,
        pub logit_bias: Option<BTreeMap<String, Value>>,
        pub audio: Option<Value>,
        pub function_call: Option<Value>,
        pub functions: Option<Value>,
        pub modalities: Option<Value>,
        pub prediction: Option<Value>,
        pub prompt_cache_key: Option<Value>,
        pub reasoning_effort: Option<Value>,
        pub safety_identifier: Option<Value>,
        pub service_tier: Option<Value>,
        pub verbosity: Option<Value>,
        pub web_search_options: Option<Value>,
    }

    /// One message. `content` is required except for `assistant` messages; a `tool`
    /// message needs `tool_call_id`.
    #[derive(Serialize, ToSchema)]
    pub struct Message {
        pub role: Role,
        pub content: Option<Content>,
        pub name: Option<String>,
        pub tool_call_id: Option<String>,
        pub tool_calls: Option<Vec<Value>>,
    }

    #[derive(Serialize, ToSchema)]
    #[serde(rename_all = "snake_case")]
    pub enum Role {
        System,
        Developer,
        User,
        Assistant,
        Tool,
        Function,
    }

    #[derive(Serialize, ToSchema)]
    #[serde(untagged)]
    pub enum Content {
        Text(String),
        Parts(Vec<ContentPart>),
    }

    /// A content part (`text`, `image_url`, `input_audio`, …), forwarded as it is.
    #[derive(Serialize, ToSchema)]
    pub struct ContentPart {
        #[serde(rename = "type")]
        pub kind: String,
    }

    #[derive(Serialize, ToSchema)]
    #[serde(untagged)]
    pub enum Stop {
        One(String),
        Many(Vec<String>),
    }

    /// An OpenAI embeddings request.
    #[derive(Serialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct EmbeddingRequest {
        #[schema(min_length = 1, max_length = 256)]
        pub model: String,
        pub input: EmbeddingInput,
        pub encoding_format: Option<Value>,
        pub dimensions: Option<Value>,
        pub user: Option<Value>,
    }

    /// A non-empty string, or 1-2048 strings or token arrays.
    #[derive(Serialize, ToSchema)]
    #[serde(untagged)]
    pub enum EmbeddingInput {
        Text(String),
        Many(Vec<Value>),
    }

    /// The provider's answer as it sent it (`chat.completion` or an embeddings `list`).
    #[derive(Serialize, ToSchema)]
    pub struct ProviderAnswer {
        pub object: String,
    }

    #[derive(Serialize, ToSchema)]
    pub struct ModelList {
        pub object: ListObject,
        pub data: Vec<Model>,
    }

    /// One server-sent event as a client parses it (`data` is a JSON document, or `[DONE]`).
    #[derive(Serialize, ToSchema)]
    pub struct SseEvent {
        pub data: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub event: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub id: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub retry: Option<u64>,
    }

    #[derive(Serialize, ToSchema)]
    pub struct Model {
        pub id: String,
        pub object: String,
        pub created: u64,
        pub owned_by: String,
    }

    #[derive(Serialize, ToSchema)]
    #[serde(rename_all = "snake_case")]
    pub enum ListObject {
        List,
    }

    /// `POST /v1/webhooks`.
    #[derive(Serialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct CreateWebhook {
        /// An `https://` URL (internal addresses are refused).
        pub url: String,
        /// Event types to deliver (default: all).
        #[schema(min_items = 1)]
        pub events: Option<Vec<WebhookEvent>>,
    }

    #[derive(Serialize, ToSchema)]
    pub enum WebhookEvent {
        #[serde(rename = "job.completed")]
        Completed,
        #[serde(rename = "job.failed")]
        Failed,
        #[serde(rename = "job.cancelled")]
        Cancelled,
        #[serde(rename = "job.expired")]
        Expired,
    }

    #[derive(Serialize, ToSchema)]
    pub struct WebhookEndpoint {
        pub id: String,
        pub object: String,
        pub url: String,
        pub events: Vec<String>,
        pub status: WebhookStatus,
        pub created_at: u64,
        /// Only in the answers of create and rotate.
        pub secret: Option<String>,
        /// Only in the answer of rotate: until when the previous secret still signs.
        pub previous_secret_expires_at: Option<u64>,
    }

    #[derive(Serialize, ToSchema)]
    #[serde(rename_all = "snake_case")]
    pub enum WebhookStatus {
        Enabled,
        Disabled,
    }

    #[derive(Serialize, ToSchema)]
    pub struct WebhookList {
        pub object: ListObject,
        pub data: Vec<WebhookEndpoint>,
    }

    #[derive(Serialize, ToSchema)]
    pub struct WebhookDeleted {
        pub id: String,
        pub object: String,
        pub deleted: bool,
    }

    /// Delivery attempts, newest first.
    #[derive(Serialize, ToSchema)]
    pub struct DeliveryList {
        pub object: ListObject,
        pub data: Vec<BTreeMap<String, Value>>,
    }

    #[derive(Serialize, ToSchema)]
    pub struct AnyList {
        pub object: ListObject,
        pub data: Vec<Value>,
    }

    #[derive(Serialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct TenantUpdate {
        /// The kill switch.
        #[schema(nullable = false)]
        pub disabled: Option<bool>,
    }

    #[derive(Serialize, ToSchema)]
    pub struct TenantState {
        pub id: String,
        pub disabled: bool,
    }

    /// A new key: `secret` is shown in this answer only.
    #[derive(Serialize, ToSchema)]
    pub struct CreatedKey {
        pub tenant: String,
        pub key_id: String,
        pub secret: String,
    }

    #[derive(Serialize, ToSchema)]
    pub struct KeyRevoked {
        pub key_id: String,
        pub revoked: bool,
    }

    #[derive(Serialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct KeyRotation {
        /// Seconds the old key keeps working (at most 30 days).
        #[schema(minimum = 0, nullable = false)]
        pub overlap_s: Option<u64>,
    }

    #[derive(Serialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct DlqReplay {
        #[schema(nullable = false)]
        pub sequences: Option<Vec<u64>>,
        pub tenant: Option<String>,
        pub reason: Option<String>,
        pub model: Option<String>,
        pub since_ms: Option<u64>,
        pub until_ms: Option<u64>,
        pub limit: Option<u64>,
        /// Above 0, at most 200 (default 50).
        pub rate_per_s: Option<f64>,
        #[schema(nullable = false)]
        pub dry_run: Option<bool>,
    }

    #[derive(Serialize, ToSchema)]
    pub struct DlqReplayReport {
        pub dry_run: bool,
        /// `[sequence, job id]` pairs.
        pub replayed: Vec<Value>,
        /// `[sequence, reason]` pairs.
        pub skipped: Vec<Value>,
    }

    #[derive(Serialize, ToSchema)]
    pub struct Health {
        pub status: String,
    }

    #[derive(Serialize, ToSchema)]
    pub struct Readiness {
        pub status: ReadyWord,
        pub nats: bool,
        pub redis: bool,
        pub limits: LimitsState,
    }

    #[derive(Serialize, ToSchema)]
    #[serde(rename_all = "snake_case")]
    pub enum ReadyWord {
        Ready,
        NotReady,
    }

    #[derive(Serialize, ToSchema)]
    #[serde(rename_all = "snake_case")]
    pub enum LimitsState {
        Enforced,
        FailClosed,
        FailOpen,
    }
}

/// Reusable error responses: OpenAI's error body, and the headers a client retries by.
#[allow(dead_code)]
pub mod errors {
    use utoipa::ToResponse;

    use super::schemas::ErrorBody;

    /// Invalid request: malformed JSON, unknown or missing parameter, wrong type or value
    /// (`param` names it).
    #[derive(ToResponse)]
    pub struct BadRequest(ErrorBody);

    /// Missing or unknown API key (`invalid_api_key`).
    #[derive(ToResponse)]
    pub struct Unauthorized(ErrorBody);

    /// The tenant is disabled (`tenant_disabled`), or a tenant key on an admin route
    /// (`admin_key_required`).
    #[derive(ToResponse)]
    pub struct Forbidden(ErrorBody);

    /// Unknown job, endpoint, key or dead letter (another tenant's looks the same).
    #[derive(ToResponse)]
    pub struct NotFound(ErrorBody);

    /// The resource's state does not allow this (`conflict`).
    #[derive(ToResponse)]
    pub struct Conflict(ErrorBody);

    /// Body larger than `ingest.max_body_bytes` (`request_too_large`).
    #[derive(ToResponse)]
    pub struct PayloadTooLarge(ErrorBody);

    /// `Idempotency-Key` reused with a different body (`idempotency_key_reused`).
    #[derive(ToResponse)]
    pub struct IdempotencyReused(ErrorBody);

    /// A rate limit, the budget, a prompt loop or load shedding; retry after `Retry-After`.
    #[derive(ToResponse)]
    #[response(headers(
        ("Retry-After" = u64, description = "Seconds to wait before retrying."),
        ("RateLimit-Policy" = String, description = "The limit that refused (rate limits only)."),
        ("RateLimit" = String, description = "Remaining quota (rate limits only)."),
    ))]
    pub struct TooManyRequests(ErrorBody);

    /// The broker or the store is unavailable, too many concurrent requests, or limits
    /// cannot be checked (fail closed); retry after `Retry-After`.
    #[derive(ToResponse)]
    #[response(headers(("Retry-After" = u64, description = "Seconds to wait before retrying.")))]
    pub struct Unavailable(ErrorBody);

    /// The job failed upstream (`max_attempts_exceeded`, `upstream_error`, …).
    #[derive(ToResponse)]
    pub struct BadGateway(ErrorBody);

    /// The job's `deadline_s` passed (`deadline_exceeded`).
    #[derive(ToResponse)]
    pub struct GatewayTimeout(ErrorBody);
}

/// What a synchronous call (`/v1/chat/completions`, `/v1/embeddings`) can answer besides
/// its result: the submission's refusals, and the job's failure as an OpenAI SDK expects it.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum SyncErrors {
    #[response(status = 400)]
    BadRequest(#[ref_response] errors::BadRequest),
    #[response(status = 401)]
    Unauthorized(#[ref_response] errors::Unauthorized),
    #[response(status = 403)]
    Forbidden(#[ref_response] errors::Forbidden),
    /// Unknown model (`model_not_found`).
    #[response(status = 404)]
    NotFound(#[ref_response] errors::NotFound),
    /// The job was cancelled while the client waited (`cancelled`).
    #[response(status = 409)]
    Conflict(#[ref_response] errors::Conflict),
    #[response(status = 413)]
    PayloadTooLarge(#[ref_response] errors::PayloadTooLarge),
    #[response(status = 422)]
    IdempotencyReused(#[ref_response] errors::IdempotencyReused),
    #[response(status = 429)]
    TooManyRequests(#[ref_response] errors::TooManyRequests),
    #[response(status = 502)]
    BadGateway(#[ref_response] errors::BadGateway),
    #[response(status = 503)]
    Unavailable(#[ref_response] errors::Unavailable),
    #[response(status = 504)]
    GatewayTimeout(#[ref_response] errors::GatewayTimeout),
}

/// One documentation-only function per operation; the handlers live in [`crate::routes`].
#[allow(dead_code)]
mod operations {
    use super::{SyncErrors, errors::*, schemas::*};

    #[utoipa::path(
        post, path = "/v1/jobs", tag = "jobs",
        description = "Queues a chat completion. `202` means JetStream acknowledged the job.",
        request_body(content = ref("#/components/schemas/JobRequest"), content_type = "application/json"),
        params(
            ("Idempotency-Key" = Option<String>, Header, description = "Same key and body: the first job again (`Idempotent-Replayed: true`); different body: 422."),
            ("X-Agent-Id" = Option<String>, Header, description = "Agent, for the per-agent rate limit."),
            ("X-Chain-Id" = Option<String>, Header, description = "Chain, for the per-chain rate limit and loop detection."),
        ),
        responses(
            (status = 202, description = "Queued.", body = Job, headers(
                ("Location" = String, description = "`/v1/jobs/{id}`"),
                ("Idempotent-Replayed" = String, description = "`true` on an idempotent replay."),
            )),
            (status = 400, response = BadRequest),
            (status = 401, response = Unauthorized),
            (status = 403, response = Forbidden),
            (status = 413, response = PayloadTooLarge),
            (status = 422, response = IdempotencyReused),
            (status = 429, response = TooManyRequests),
            (status = 503, response = Unavailable),
        )
    )]
    fn submit_job() {}

    #[utoipa::path(
        get, path = "/v1/jobs/{id}", tag = "jobs",
        params(("id" = String, Path, description = "The job id (a UUID).")),
        responses(
            (status = 200, description = "The job.", body = Job),
            (status = 401, response = Unauthorized),
            (status = 404, response = NotFound),
            (status = 503, response = Unavailable),
        )
    )]
    fn get_job() {}

    #[utoipa::path(
        post, path = "/v1/jobs/{id}/cancel", tag = "jobs",
        description = "Cancels a queued or running job (again: a no-op); a job that ended otherwise is a 409.",
        params(("id" = String, Path, description = "The job id (a UUID).")),
        responses(
            (status = 200, description = "The cancelled job.", body = Job),
            (status = 401, response = Unauthorized),
            (status = 404, response = NotFound),
            (status = 409, response = Conflict),
            (status = 503, response = Unavailable),
        )
    )]
    fn cancel_job() {}

    #[utoipa::path(
        get, path = "/v1/jobs/{id}/events", tag = "jobs",
        description = "The job's life as server-sent events: `status` and `chunks` events whose `id` \
            is their position, then `result` with the job, then the end. `Last-Event-ID: n` resumes \
            after event `n`.",
        params(
            ("id" = String, Path, description = "The job id (a UUID)."),
            ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this event id."),
        ),
        responses(
            (status = 200, description = "An event stream.", content_type = "text/event-stream", body = SseEvent),
            (status = 400, response = BadRequest),
            (status = 401, response = Unauthorized),
            (status = 404, response = NotFound),
            (status = 429, response = TooManyRequests),
            (status = 503, response = Unavailable),
        )
    )]
    fn job_events() {}

    #[utoipa::path(
        post, path = "/v1/chat/completions", tag = "openai",
        description = "OpenAI's chat completions, through the queue: the answer is the provider's \
            own JSON (or, with `stream: true`, its chunks then `data: [DONE]`). A wait longer than \
            `delivery.sync_wait_s` is answered `202` with the job to poll. A failed job is answered \
            with the status an OpenAI SDK expects.",
        request_body(content = ChatCompletionRequest, content_type = "application/json"),
        params(
            ("X-Priority" = Option<Priority>, Header, description = "Queue class (default `normal`)."),
            ("Idempotency-Key" = Option<String>, Header, description = "An idempotent retry waits for the first request's job."),
            ("X-Agent-Id" = Option<String>, Header, description = "Agent, for the per-agent rate limit."),
            ("X-Chain-Id" = Option<String>, Header, description = "Chain, for the per-chain rate limit and loop detection."),
        ),
        responses(
            (status = 200, description = "The provider's `chat.completion`, or its stream.", content(
                (ProviderAnswer = "application/json"),
                (SseEvent = "text/event-stream"),
            )),
            (status = 202, description = "Still running after `delivery.sync_wait_s`: poll `Location`.", body = Job,
                headers(("Location" = String, description = "`/v1/jobs/{id}`"))),
            SyncErrors,
        )
    )]
    fn chat_completions() {}

    #[utoipa::path(
        post, path = "/v1/embeddings", tag = "openai",
        request_body(content = EmbeddingRequest, content_type = "application/json"),
        params(
            ("X-Priority" = Option<Priority>, Header, description = "Queue class (default `normal`)."),
            ("Idempotency-Key" = Option<String>, Header, description = "An idempotent retry waits for the first request's job."),
        ),
        responses(
            (status = 200, description = "The provider's embeddings `list`.", body = ProviderAnswer),
            (status = 202, description = "Still running after `delivery.sync_wait_s`: poll `Location`.", body = Job,
                headers(("Location" = String, description = "`/v1/jobs/{id}`"))),
            SyncErrors,
        )
    )]
    fn embeddings() {}

    #[utoipa::path(
        get, path = "/v1/models", tag = "openai",
        responses(
            (status = 200, description = "The configured model ids.", body = ModelList),
            (status = 401, response = Unauthorized),
            (status = 503, response = Unavailable),
        )
    )]
    fn models() {}

    #[utoipa::path(
        get, path = "/v1/models/{id}", tag = "openai",
        params(("id" = String, Path, description = "A configured model id.")),
        responses(
            (status = 200, description = "The model.", body = Model),
            (status = 401, response = Unauthorized),
            (status = 404, response = NotFound),
            (status = 503, response = Unavailable),
        )
    )]
    fn model() {}

    #[utoipa::path(
        post, path = "/v1/webhooks", tag = "webhooks",
        request_body(content = CreateWebhook, content_type = "application/json"),
        responses(
            (status = 201, description = "Created; `secret` is in this answer only.", body = WebhookEndpoint),
            (status = 400, response = BadRequest),
            (status = 401, response = Unauthorized),
            (status = 409, response = Conflict),
            (status = 413, response = PayloadTooLarge),
            (status = 503, response = Unavailable),
        )
    )]
    fn create_webhook() {}

    #[utoipa::path(
        get, path = "/v1/webhooks", tag = "webhooks",
        responses(
            (status = 200, description = "The tenant's endpoints.", body = WebhookList),
            (status = 401, response = Unauthorized),
            (status = 503, response = Unavailable),
        )
    )]
    fn list_webhooks() {}

    #[utoipa::path(
        delete, path = "/v1/webhooks/{id}", tag = "webhooks",
        params(("id" = String, Path, description = "The endpoint id (`we_…`).")),
        responses(
            (status = 200, description = "Deleted.", body = WebhookDeleted),
            (status = 401, response = Unauthorized),
            (status = 404, response = NotFound),
            (status = 503, response = Unavailable),
        )
    )]
    fn delete_webhook() {}

    #[utoipa::path(
        post, path = "/v1/webhooks/{id}/rotate", tag = "webhooks",
        description = "A new secret; the old one keeps signing for `webhooks.rotation_grace_s`.",
        params(("id" = String, Path, description = "The endpoint id (`we_…`).")),
        responses(
            (status = 200, description = "The endpoint with its new `secret`.", body = WebhookEndpoint),
            (status = 401, response = Unauthorized),
            (status = 404, response = NotFound),
            (status = 503, response = Unavailable),
        )
    )]
    fn rotate_webhook() {}

    #[utoipa::path(
        get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks",
        params(("id" = String, Path, description = "The endpoint id (`we_…`).")),
        responses(
            (status = 200, description = "The latest delivery attempts, newest first.", body = DeliveryList),
            (status = 401, response = Unauthorized),
            (status = 404, response = NotFound),
            (status = 503, response = Unavailable),
        )
    )]
    fn webhook_deliveries() {}

    #[utoipa::path(
        get, path = "/v1/admin/tenants", tag = "admin",
        responses(
            (status = 200, description = "Tenants.", body = AnyList),
            (status = 401, response = Unauthorized),
            (status = 403, response = Forbidden),
            (status = 503, response = Unavailable),
        )
    )]
    fn admin_list_tenants() {}

    #[utoipa::path(
        put, path = "/v1/admin/tenants/{tenant}", tag = "admin",
        description = "Creates the tenant or sets its kill switch.",
        params(("tenant" = String, Path, description = "1-64 letters, digits, `-` or `_`.")),
        request_body(content = Option<TenantUpdate>, content_type = "application/json"),
        responses(
            (status = 200, description = "The tenant.", body = TenantState),
            (status = 400, response = BadRequest),
            (status = 401, response = Unauthorized),
            (status = 403, response = Forbidden),
            (status = 413, response = PayloadTooLarge),
            (status = 503, response = Unavailable),
        )
    )]
    fn admin_put_tenant() {}

    #[utoipa::path(
        get, path = "/v1/admin/tenants/{tenant}/keys", tag = "admin",
        params(("tenant" = String, Path, description = "1-64 letters, digits, `-` or `_`.")),
        responses(
            (status = 200, description = "The tenant's keys (never the keys themselves).", body = AnyList),
            (status = 400, response = BadRequest),
            (status = 401, response = Unauthorized),
            (status = 403, response = Forbidden),
            (status = 503, response = Unavailable),
        )
    )]
    fn admin_list_keys() {}

    #[utoipa::path(
        post, path = "/v1/admin/tenants/{tenant}/keys", tag = "admin",
        params(("tenant" = String, Path, description = "1-64 letters, digits, `-` or `_`.")),
        responses(
            (status = 201, description = "The new key, shown once.", body = CreatedKey),
            (status = 400, response = BadRequest),
            (status = 401, response = Unauthorized),
            (status = 403, response = Forbidden),
            (status = 503, response = Unavailable),
        )
    )]
    fn admin_create_key() {}

    #[utoipa::path(
        delete, path = "/v1/admin/tenants/{tenant}/keys/{key_id}", tag = "admin",
        params(("tenant" = String, Path, description = "1-64 letters, digits, `-` or `_`."), ("key_id" = String, Path)),
        responses(
            (status = 200, description = "Revoked.", body = KeyRevoked),
            (status = 400, response = BadRequest),
            (status = 401, response = Unauthorized),
            (status = 403, response = Forbidden),
            (status = 404, response = NotFound),
            (status = 503, response = Unavailable),
        )
    )]
    fn admin_revoke_key() {}

    #[utoipa::path(
        post, path = "/v1/admin/tenants/{tenant}/keys/{key_id}/rotate", tag = "admin",
        params(("tenant" = String, Path, description = "1-64 letters, digits, `-` or `_`."), ("key_id" = String, Path)),
        request_body(content = Option<KeyRotation>, content_type = "application/json"),
        responses(
            (status = 201, description = "The new key, shown once; the old one works for `overlap_s`.", body = CreatedKey),
            (status = 400, response = BadRequest),
            (status = 401, response = Unauthorized),
            (status = 403, response = Forbidden),
            (status = 404, response = NotFound),
            (status = 413, response = PayloadTooLarge),
            (status = 503, response = Unavailable),
        )
    )]
    fn admin_rotate_key() {}

    #[utoipa::path(
        get, path = "/v1/admin/dashboard", tag = "admin",
        description = "What the live page at `/dashboard` shows: jobs per second, error rate and \
                       latency percentiles over the workers' last report (about two seconds), \
                       queue depth and lag per priority, breaker states, top tenants by tokens \
                       and cost, budget use.",
        responses(
            (status = 200, description = "The overview.", body = crate::dashboard::Overview),
            (status = 401, response = Unauthorized),
            (status = 403, response = Forbidden),
            (status = 503, response = Unavailable),
        )
    )]
    fn admin_dashboard() {}

    #[utoipa::path(
        get, path = "/v1/admin/dlq", tag = "admin",
        params(
            ("tenant" = Option<String>, Query),
            ("reason" = Option<String>, Query, description = "`max_attempts`, `max_deliveries` or `undecodable`."),
            ("model" = Option<String>, Query),
            ("since_ms" = Option<u64>, Query),
            ("until_ms" = Option<u64>, Query),
            ("limit" = Option<u64>, Query, description = "At most 1,000 (default 100)."),
        ),
        responses(
            (status = 200, description = "Dead letters (never the request body).", body = AnyList),
            (status = 400, response = BadRequest),
            (status = 401, response = Unauthorized),
            (status = 403, response = Forbidden),
            (status = 503, response = Unavailable),
        )
    )]
    fn admin_dlq_list() {}

    #[utoipa::path(
        get, path = "/v1/admin/dlq/{seq}", tag = "admin",
        params(("seq" = u64, Path, description = "The dead letter's stream sequence.")),
        responses(
            (status = 200, description = "One dead letter.", body = serde_json::Value),
            (status = 400, response = BadRequest),
            (status = 401, response = Unauthorized),
            (status = 403, response = Forbidden),
            (status = 404, response = NotFound),
            (status = 503, response = Unavailable),
        )
    )]
    fn admin_dlq_show() {}

    #[utoipa::path(
        post, path = "/v1/admin/dlq/replay", tag = "admin",
        request_body(content = Option<DlqReplay>, content_type = "application/json"),
        responses(
            (status = 200, description = "What was (or, with `dry_run`, would be) replayed.", body = DlqReplayReport),
            (status = 400, response = BadRequest),
            (status = 401, response = Unauthorized),
            (status = 403, response = Forbidden),
            (status = 413, response = PayloadTooLarge),
            (status = 503, response = Unavailable),
        )
    )]
    fn admin_dlq_replay() {}

    #[utoipa::path(
        get, path = "/healthz", tag = "ops", security(()),
        responses((status = 200, description = "The process is up.", body = Health))
    )]
    fn healthz() {}

    #[utoipa::path(
        get, path = "/readyz", tag = "ops", security(()),
        responses(
            (status = 200, description = "NATS connected with its streams, Redis answering.", body = Readiness),
            (status = 503, description = "Not ready.", body = Readiness),
        )
    )]
    fn readyz() {}

    #[utoipa::path(
        get, path = "/metrics", tag = "ops", security(()),
        responses((status = 200, description = "Prometheus text format.", body = String, content_type = "text/plain"))
    )]
    fn metrics() {}

    #[utoipa::path(
        get, path = "/openapi.json", tag = "ops", security(()),
        responses((status = 200, description = "This document.", body = serde_json::Value))
    )]
    fn openapi_json() {}

    #[utoipa::path(
        get, path = "/dashboard", tag = "ops", security(()),
        description = "The live dashboard page: it asks for the admin key and reads `/v1/admin/dashboard` with it.",
        responses((status = 200, description = "An HTML page (no data in it).", body = String, content_type = "text/html"))
    )]
    fn dashboard_page() {}

    #[utoipa::path(
        get, path = "/dashboard.js", tag = "ops", security(()),
        responses((status = 200, description = "The dashboard page's script.", body = String, content_type = "text/javascript"))
    )]
    fn dashboard_script() {}
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeSet, path::Path};

    use super::*;

    /// `(METHOD, path)` of every operation in the document.
    fn documented() -> BTreeSet<(String, String)> {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
        let mut ops = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            for method in item.as_object().into_iter().flatten().map(|(m, _)| m) {
                if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                    ops.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
        ops
    }

    /// `(METHOD, path)` of every `.route("…", get(…).post(…))` in the crate's source: the
    /// router has no list of its routes, so its source is read.
    fn registered() -> BTreeSet<(String, String)> {
        let mut files = Vec::new();
        let mut dirs = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    files.push(std::fs::read_to_string(&path).unwrap_or_default());
                }
            }
        }
        let mut routes = BTreeSet::new();
        for src in &files {
            for (at, _) in src.match_indices(".route(") {
                let rest = &src[at + ".route(".len()..];
                // The call's arguments: up to the parenthesis that closes `.route(`.
                let mut depth = 1;
                let end = rest
                    .char_indices()
                    .find(|&(_, c)| {
                        depth += match c {
                            '(' => 1,
                            ')' => -1,
                            _ => 0,
                        };
                        depth == 0
                    })
                    .map_or(rest.len(), |(i, _)| i);
                let args = &rest[..end];
                let Some(path) = args.split('"').nth(1).filter(|p| p.starts_with('/')) else {
                    continue;
                };
                for method in ["get", "post", "put", "delete", "patch"] {
                    let called = args.match_indices(&format!("{method}(")).any(|(i, _)| {
                        !args[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_')
                    });
                    if called {
                        routes.insert((method.to_uppercase(), path.to_string()));
                    }
                }
            }
        }
        routes
    }

    #[test]
    fn every_registered_route_is_documented_and_nothing_else() {
        let registered = registered();
        assert!(
            registered.len() > 20,
            "the route scan found too few routes: {registered:?}"
        );
        let documented = documented();
        let missing: Vec<_> = registered.difference(&documented).collect();
        let extra: Vec<_> = documented.difference(&registered).collect();
        assert!(
            missing.is_empty(),
            "routes missing from the OpenAPI document: {missing:?}"
        );
        assert!(
            extra.is_empty(),
            "documented operations no route serves: {extra:?}"
        );
    }

    #[test]
    fn the_document_is_openapi_3_1_with_errors_in_openai_shape() {
        let doc: serde_json::Value =
            serde_json::from_str(&ApiDoc::openapi().to_json().unwrap_or_default())
                .unwrap_or_default();
        assert!(
            doc["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.1")),
            "{}",
            doc["openapi"]
        );
        let err = &doc["components"]["schemas"]["ErrorDetail"];
        for field in ["message", "type", "param", "code"] {
            assert!(err["properties"].get(field).is_some(), "{field}: {err}");
        }
        let unavailable = &doc["components"]["responses"]["Unavailable"];
        assert!(
            unavailable["headers"].get("Retry-After").is_some(),
            "{unavailable}"
        );
        // Every operation behind a key documents the 401; the open ones need none.
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            for (method, op) in item.as_object().into_iter().flatten() {
                let open = crate::auth::OPEN_PATHS.contains(&path.as_str());
                let has_401 = op["responses"].get("401").is_some();
                assert_eq!(
                    !open, has_401,
                    "{method} {path}: 401 documented iff authenticated"
                );
                if open {
                    assert_eq!(op["security"], serde_json::json!([{}]), "{method} {path}");
                }
            }
        }
        assert!(
            doc["components"]["schemas"]["JobRequest"]["properties"]
                .get("webhook")
                .is_some()
        );
    }
}
