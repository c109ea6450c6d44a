//! The provider call as OpenTelemetry's GenAI semantic conventions describe it.
//!
//! Span: `chat {model}` (or `embeddings {model}`), kind CLIENT, with
//! `gen_ai.operation.name`, `gen_ai.provider.name` (`openai`: every deployment speaks
//! OpenAI's API), `gen_ai.request.model`, and from the answer `gen_ai.response.model`,
//! `gen_ai.response.id`, `gen_ai.response.finish_reasons`, `gen_ai.usage.input_tokens` and
//! `gen_ai.usage.output_tokens`; `sluice.deployment` names the deployment. Built (and the
//! answer read for it) only while spans are exported. No prompt or completion text is ever
//! an attribute.
//!
//! Metric: `gen_ai_client_operation_duration_seconds{gen_ai_operation_name,
//! gen_ai_provider_name, gen_ai_request_model, deployment, error_type}`, a histogram of
//! every upstream call (its `_count` by `error_type` is the error count per deployment).
//! `gen_ai_server_time_to_first_token_seconds{gen_ai_request_model, deployment}`: first
//! streamed chunk of each upstream call.
//! Names follow the GenAI conventions of semantic-conventions v1.37 (development status).

use std::time::Duration;

use tracing::Span;

use crate::CallKind;

pub const PROVIDER: &str = "openai";

fn operation(kind: CallKind) -> &'static str {
    match kind {
        CallKind::Chat => "chat",
        CallKind::Embeddings => "embeddings",
    }
}

/// The CLIENT span of one upstream call to `deployment` for `model`.
pub fn call_span(kind: CallKind, model: &str, deployment: &str) -> Span {
    if !sluice_telemetry::trace::exporting() {
        return Span::none();
    }
    let op = operation(kind);
    tracing::info_span!(
        "gen_ai",
        otel.name = %format_args!("{op} {model}"),
        otel.kind = "client",
        gen_ai.operation.name = op,
        gen_ai.provider.name = PROVIDER,
        gen_ai.request.model = %model,
        sluice.deployment = %deployment,
    )
}

/// Records the call's duration, and on the span what the answer says (a no-op on the span
/// while spans are not exported).
pub fn finished(
    span: &Span,
    kind: CallKind,
    model: &str,
    deployment: &str,
    took: Duration,
    result: Result<&[u8], &'static str>,
) {
    let error = match result {
        Ok(_) => "",
        Err(code) => code,
    };
    metrics::histogram!(
        "gen_ai_client_operation_duration_seconds",
        "gen_ai_operation_name" => operation(kind),
        "gen_ai_provider_name" => PROVIDER,
        "gen_ai_request_model" => model.to_owned(),
        "deployment" => deployment.to_owned(),
        "error_type" => error,
    )
    .record(took.as_secs_f64());
    if !sluice_telemetry::trace::exporting() {
        return;
    }
    match result {
        Ok(body) => record_answer(span, body),
        Err(code) => sluice_telemetry::trace::set_error(span, code),
    }
}

/// The first chunk of a streamed answer arrived `after` the request went out: the
/// upstream server's time to first token as Sluice sees it.
pub fn first_chunk(span: &Span, model: &str, deployment: &str, after: Duration) {
    metrics::histogram!(
        "gen_ai_server_time_to_first_token_seconds",
        "gen_ai_request_model" => model.to_owned(),
        "deployment" => deployment.to_owned(),
    )
    .record(after.as_secs_f64());
    sluice_telemetry::trace::set_attribute(
        span,
        "gen_ai.response.time_to_first_chunk",
        after.as_secs_f64(),
    );
}

/// What the conventions want from an answer body, read without its text.
#[derive(Debug, Default, PartialEq, serde::Deserialize)]
pub struct AnswerFacts {
    pub id: Option<String>,
    pub model: Option<String>,
    pub usage: Option<UsageFacts>,
    #[serde(default)]
    pub choices: Vec<ChoiceFacts>,
}

#[derive(Debug, Default, PartialEq, serde::Deserialize)]
pub struct UsageFacts {
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
}

#[derive(Debug, Default, PartialEq, serde::Deserialize)]
pub struct ChoiceFacts {
    pub finish_reason: Option<String>,
}

impl AnswerFacts {
    pub fn read(body: &[u8]) -> AnswerFacts {
        serde_json::from_slice(body).unwrap_or_default()
    }
}

fn record_answer(span: &Span, body: &[u8]) {
    use sluice_telemetry::trace::set_attribute;
    let facts = AnswerFacts::read(body);
    if let Some(m) = facts.model {
        set_attribute(span, "gen_ai.response.model", m);
    }
    if let Some(id) = facts.id {
        set_attribute(span, "gen_ai.response.id", id);
    }
    if let Some(u) = facts.usage {
        if let Some(n) = u.prompt_tokens {
            set_attribute(span, "gen_ai.usage.input_tokens", n as i64);
        }
        if let Some(n) = u.completion_tokens {
            set_attribute(span, "gen_ai.usage.output_tokens", n as i64);
        }
    }
    let reasons: Vec<opentelemetry::StringValue> = facts
        .choices
        .into_iter()
        .filter_map(|c| c.finish_reason.map(Into::into))
        .collect();
    if !reasons.is_empty() {
        set_attribute(
            span,
            "gen_ai.response.finish_reasons",
            opentelemetry::Value::Array(reasons.into()),
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_facts_of_an_answer_leave_its_text_out() {
        let body = br#"{"id":"c-1","model":"m-2","choices":[{"index":0,"message":{"role":"assistant","content":"secret text"},"finish_reason":"stop"}],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}"#;
        let f = AnswerFacts::read(body);
        assert_eq!(f.id.as_deref(), Some("c-1"));
        assert_eq!(f.model.as_deref(), Some("m-2"));
        assert_eq!(f.usage.as_ref().unwrap().prompt_tokens, Some(7));
        assert_eq!(f.usage.as_ref().unwrap().completion_tokens, Some(3));
        assert_eq!(f.choices[0].finish_reason.as_deref(), Some("stop"));
        assert!(!format!("{f:?}").contains("secret"));
        assert_eq!(AnswerFacts::read(b"not json"), AnswerFacts::default());
    }
}
