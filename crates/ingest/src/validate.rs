//! Validation of a submitted chat-completions body.
//!
//! The body is an OpenAI chat-completions request plus Sluice's own fields (`priority`,
//! `metadata`). Unknown top-level fields are refused by name, types and ranges are checked
//! field by field, and what is forwarded upstream is the same request without Sluice's
//! fields. Every problem becomes a 400 naming the offending parameter.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use sluice_protocol::Priority;

use crate::{error::ApiError, strict_json::StrictError};

/// OpenAI chat-completions parameters that are forwarded upstream.
const OPENAI_FIELDS: &[&str] = &[
    "model",
    "messages",
    "audio",
    "frequency_penalty",
    "function_call",
    "functions",
    "logit_bias",
    "logprobs",
    "max_completion_tokens",
    "max_tokens",
    "modalities",
    "n",
    "parallel_tool_calls",
    "prediction",
    "presence_penalty",
    "prompt_cache_key",
    "reasoning_effort",
    "response_format",
    "safety_identifier",
    "seed",
    "service_tier",
    "stop",
    "store",
    "stream",
    "stream_options",
    "temperature",
    "tool_choice",
    "tools",
    "top_logprobs",
    "top_p",
    "user",
    "verbosity",
    "web_search_options",
];

/// Sluice's own fields, consumed by ingest and not forwarded.
const SLUICE_FIELDS: &[&str] = &["priority", "metadata", "deadline_s", "webhook"];

/// Longest accepted `deadline_s` (a week).
pub const MAX_DEADLINE_S: i64 = 7 * 24 * 3600;

const ROLES: &[&str] = &[
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

pub const MAX_MESSAGES: usize = 4096;
pub const MAX_METADATA_PAIRS: usize = 16;
pub const MAX_METADATA_KEY: usize = 64;
pub const MAX_METADATA_VALUE: usize = 512;

/// A validated submission.
#[derive(Debug)]
pub struct ChatSubmission {
    pub model: String,
    pub priority: Priority,
    pub metadata: BTreeMap<String, String>,
    /// Seconds after acceptance past which the job must not be sent upstream.
    pub deadline_s: Option<u64>,
    /// The client asked for a streamed answer.
    pub stream: bool,
    /// `webhook: {url}`: where to deliver the job's terminal event (checked by ingest).
    pub webhook_url: Option<String>,
    /// The upstream request (a JSON object), without Sluice's fields. Kept parsed so that
    /// admission can read it; encoded once, into the envelope.
    pub request: Value,
}

/// The request as the envelope carries it: JSON bytes.
pub fn encode_request(request: &Value) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(request)
        .map_err(|e| ApiError::Internal(format!("encoding a validated request: {e}")))
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_output_tokens: u64,
}

/// Parses a request body as a JSON object whose top-level fields are all `allowed`; the first
/// unknown one is refused by name.
pub(crate) fn json_object(
    body: &[u8],
    allowed: impl Fn(&str) -> bool,
) -> Result<Map<String, Value>, ApiError> {
    let value = parse_body(body)?;
    let Value::Object(obj) = value else {
        return Err(ApiError::invalid(
            "The request body must be a JSON object.",
            None,
            "invalid_json",
        ));
    };
    if let Some(unknown) = obj.keys().find(|k| !allowed(k.as_str())) {
        return Err(ApiError::invalid(
            format!(
                "Unrecognized request argument supplied: '{}'.",
                truncate(unknown, 64)
            ),
            Some(unknown),
            "unknown_parameter",
        ));
    }
    Ok(obj)
}

/// Parses a request body as JSON, refusing a syntax error or a duplicate member name (at any
/// depth, see [`crate::strict_json`]) with a `400`.
pub(crate) fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    crate::strict_json::from_slice(body).map_err(|e| match e {
        StrictError::Syntax(e) => ApiError::invalid(
            format!(
                "The request body is not valid JSON ({}).",
                json_error_kind(&e)
            ),
            None,
            "invalid_json",
        ),
        StrictError::Duplicate(path) => {
            let path = truncate(&path, 128);
            ApiError::invalid(
                format!(
                    "Duplicate key '{path}' in the request body: each member name may appear once."
                ),
                Some(path),
                "duplicate_key",
            )
        }
    })
}

pub fn chat_submission(body: &[u8], limits: Limits) -> Result<ChatSubmission, ApiError> {
    let mut obj = json_object(body, |k| {
        OPENAI_FIELDS.contains(&k) || SLUICE_FIELDS.contains(&k)
    })?;
    let priority = match obj.remove("priority") {
        None | Some(Value::Null) => Priority::Normal,
        Some(Value::String(s)) => Priority::parse(&s).ok_or_else(|| {
            ApiError::invalid(
                "Invalid 'priority': expected 'high', 'normal' or 'low'.",
                Some("priority"),
                "invalid_value",
            )
        })?,
        Some(_) => return Err(wrong_type("priority", "a string")),
    };
    let metadata = metadata(obj.remove("metadata"))?;
    let deadline_s = match obj.remove("deadline_s") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let mut o = Map::new();
            o.insert("deadline_s".into(), v);
            integer(&o, "deadline_s", 1, MAX_DEADLINE_S)?;
            o.get("deadline_s").and_then(Value::as_u64)
        }
    };
    let webhook_url = match obj.remove("webhook") {
        None | Some(Value::Null) => None,
        Some(Value::Object(w)) => match (w.len(), w.get("url")) {
            (1, Some(Value::String(u))) => Some(u.clone()),
            _ => return Err(wrong_type("webhook", "an object {\"url\": \"https://…\"}")),
        },
        Some(_) => return Err(wrong_type("webhook", "an object {\"url\": \"https://…\"}")),
    };
    let model = model(&obj)?;
    messages(&obj)?;
    numbers(&obj, limits)?;
    others(&obj)?;
    let stream = obj.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let request = Value::Object(obj);
    Ok(ChatSubmission {
        model,
        priority,
        metadata,
        deadline_s,
        stream,
        webhook_url,
        request,
    })
}

pub(crate) fn json_error_kind(e: &serde_json::Error) -> String {
    // serde_json's message names the line and column, never echoes the input.
    let mut s = e.to_string();
    s.truncate(200);
    s
}

pub(crate) fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

pub(crate) fn wrong_type(param: &str, expected: &str) -> ApiError {
    ApiError::invalid(
        format!("Invalid type for '{param}': expected {expected}."),
        Some(param),
        "invalid_type",
    )
}

fn out_of_range(param: &str, range: &str) -> ApiError {
    ApiError::invalid(
        format!("Invalid value for '{param}': must be {range}."),
        Some(param),
        "invalid_value",
    )
}

pub(crate) fn model(obj: &Map<String, Value>) -> Result<String, ApiError> {
    match obj.get("model") {
        None | Some(Value::Null) => Err(ApiError::invalid(
            "Missing required parameter: 'model'.",
            Some("model"),
            "missing_required_parameter",
        )),
        Some(Value::String(s))
            if s.is_empty() || s.len() > 256 || s.chars().any(char::is_control) =>
        {
            Err(out_of_range(
                "model",
                "a model name of 1 to 256 printable characters",
            ))
        }
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(wrong_type("model", "a string")),
    }
}

fn messages(obj: &Map<String, Value>) -> Result<(), ApiError> {
    let list = match obj.get("messages") {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(
                "Missing required parameter: 'messages'.",
                Some("messages"),
                "missing_required_parameter",
            ));
        }
        Some(Value::Array(list)) => list,
        Some(_) => return Err(wrong_type("messages", "an array")),
    };
    if list.is_empty() || list.len() > MAX_MESSAGES {
        return Err(out_of_range(
            "messages",
            &format!("an array of 1 to {MAX_MESSAGES} messages"),
        ));
    }
    for (i, m) in list.iter().enumerate() {
        let Value::Object(m) = m else {
            return Err(wrong_type(&format!("messages[{i}]"), "an object"));
        };
        let role = match m.get("role") {
            Some(Value::String(r)) => r.as_str(),
            None => {
                return Err(ApiError::invalid(
                    format!("Missing required parameter: 'messages[{i}].role'."),
                    Some(&format!("messages[{i}].role")),
                    "missing_required_parameter",
                ));
            }
            Some(_) => return Err(wrong_type(&format!("messages[{i}].role"), "a string")),
        };
        if !ROLES.contains(&role) {
            return Err(ApiError::invalid(
                format!(
                    "Invalid value for 'messages[{i}].role': expected one of {}.",
                    ROLES.join(", ")
                ),
                Some(&format!("messages[{i}].role")),
                "invalid_value",
            ));
        }
        match m.get("content") {
            Some(Value::String(_)) => {}
            Some(Value::Array(parts)) => {
                for (j, p) in parts.iter().enumerate() {
                    let ok = p
                        .as_object()
                        .and_then(|o| o.get("type"))
                        .is_some_and(Value::is_string);
                    if !ok {
                        return Err(wrong_type(
                            &format!("messages[{i}].content[{j}]"),
                            "an object with a 'type'",
                        ));
                    }
                }
            }
            None | Some(Value::Null) if role == "assistant" => {}
            None | Some(Value::Null) => {
                return Err(ApiError::invalid(
                    format!("Missing required parameter: 'messages[{i}].content'."),
                    Some(&format!("messages[{i}].content")),
                    "missing_required_parameter",
                ));
            }
            Some(_) => {
                return Err(wrong_type(
                    &format!("messages[{i}].content"),
                    "a string or an array of parts",
                ));
            }
        }
        if role == "tool" && !m.get("tool_call_id").is_some_and(Value::is_string) {
            return Err(ApiError::invalid(
                format!("Missing required parameter: 'messages[{i}].tool_call_id'."),
                Some(&format!("messages[{i}].tool_call_id")),
                "missing_required_parameter",
            ));
        }
    }
    Ok(())
}

fn number(obj: &Map<String, Value>, name: &str, min: f64, max: f64) -> Result<(), ApiError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(x) if x >= min && x <= max => Ok(()),
            _ => Err(out_of_range(name, &format!("between {min} and {max}"))),
        },
        Some(_) => Err(wrong_type(name, "a number")),
    }
}

fn integer(obj: &Map<String, Value>, name: &str, min: i64, max: i64) -> Result<(), ApiError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(x) if x >= min && x <= max => Ok(()),
            Some(_) => Err(out_of_range(
                name,
                &format!("an integer between {min} and {max}"),
            )),
            None if n.is_u64() => Err(out_of_range(
                name,
                &format!("an integer between {min} and {max}"),
            )),
            None => Err(wrong_type(name, "an integer")),
        },
        Some(_) => Err(wrong_type(name, "an integer")),
    }
}

fn numbers(obj: &Map<String, Value>, limits: Limits) -> Result<(), ApiError> {
    number(obj, "temperature", 0.0, 2.0)?;
    number(obj, "top_p", 0.0, 1.0)?;
    number(obj, "presence_penalty", -2.0, 2.0)?;
    number(obj, "frequency_penalty", -2.0, 2.0)?;
    integer(obj, "n", 1, 128)?;
    integer(obj, "top_logprobs", 0, 20)?;
    integer(obj, "seed", i64::MIN, i64::MAX)?;
    let max_out = i64::try_from(limits.max_output_tokens).unwrap_or(i64::MAX);
    integer(obj, "max_tokens", 1, max_out)?;
    integer(obj, "max_completion_tokens", 1, max_out)?;
    Ok(())
}

fn others(obj: &Map<String, Value>) -> Result<(), ApiError> {
    let is = |name: &str, pred: fn(&Value) -> bool, expected: &str| match obj.get(name) {
        None | Some(Value::Null) => Ok(()),
        Some(v) if pred(v) => Ok(()),
        Some(_) => Err(wrong_type(name, expected)),
    };
    is("stream", Value::is_boolean, "a boolean")?;
    is("logprobs", Value::is_boolean, "a boolean")?;
    is("parallel_tool_calls", Value::is_boolean, "a boolean")?;
    is("store", Value::is_boolean, "a boolean")?;
    is("user", Value::is_string, "a string")?;
    is("tools", Value::is_array, "an array")?;
    is("response_format", Value::is_object, "an object")?;
    is("stream_options", Value::is_object, "an object")?;
    is("logit_bias", Value::is_object, "an object")?;
    if let Some(opts) = obj.get("stream_options").filter(|v| !v.is_null()) {
        if obj.get("stream").and_then(Value::as_bool) != Some(true) {
            return Err(ApiError::invalid(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                Some("stream_options"),
                "invalid_value",
            ));
        }
        match opts.get("include_usage") {
            None | Some(Value::Null) | Some(Value::Bool(_)) => {}
            Some(_) => return Err(wrong_type("stream_options.include_usage", "a boolean")),
        }
    }
    match obj.get("stop") {
        None | Some(Value::Null) | Some(Value::String(_)) => {}
        Some(Value::Array(a)) if a.len() <= 4 && a.iter().all(Value::is_string) => {}
        Some(_) => {
            return Err(wrong_type(
                "stop",
                "a string or an array of up to 4 strings",
            ));
        }
    }
    if obj
        .get("tools")
        .and_then(Value::as_array)
        .is_some_and(|t| t.len() > 128)
    {
        return Err(out_of_range("tools", "an array of at most 128 tools"));
    }
    Ok(())
}

fn metadata(v: Option<Value>) -> Result<BTreeMap<String, String>, ApiError> {
    let obj = match v {
        None | Some(Value::Null) => return Ok(BTreeMap::new()),
        Some(Value::Object(o)) => o,
        Some(_) => return Err(wrong_type("metadata", "an object of string values")),
    };
    if obj.len() > MAX_METADATA_PAIRS {
        return Err(out_of_range(
            "metadata",
            &format!("at most {MAX_METADATA_PAIRS} key-value pairs"),
        ));
    }
    let mut out = BTreeMap::new();
    for (k, v) in obj {
        if k.is_empty() || k.chars().count() > MAX_METADATA_KEY {
            return Err(out_of_range(
                "metadata",
                &format!("keys of 1 to {MAX_METADATA_KEY} characters"),
            ));
        }
        let Value::String(v) = v else {
            return Err(wrong_type(
                &format!("metadata.{}", truncate(&k, MAX_METADATA_KEY)),
                "a string",
            ));
        };
        if v.chars().count() > MAX_METADATA_VALUE {
            return Err(out_of_range(
                "metadata",
                &format!("values of at most {MAX_METADATA_VALUE} characters"),
            ));
        }
        out.insert(k, v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_output_tokens: 100_000,
    };

    fn err(body: &str) -> (String, Option<String>, &'static str) {
        match chat_submission(body.as_bytes(), LIMITS) {
            Err(ApiError::InvalidRequest {
                message,
                param,
                code,
            }) => (message, param, code),
            other => panic!("expected a 400 for {body}, got {other:?}"),
        }
    }

    #[test]
    fn accepts_a_plain_request_and_strips_sluice_fields() {
        let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"priority":"high",
                      "metadata":{"a":"b"},"temperature":0.5,"max_tokens":10}"#;
        let s = chat_submission(body.as_bytes(), LIMITS).unwrap();
        assert_eq!(s.priority, Priority::High);
        assert_eq!(s.metadata.get("a").map(String::as_str), Some("b"));
        let fwd = &s.request;
        assert!(fwd.get("priority").is_none() && fwd.get("metadata").is_none());
        assert_eq!(fwd["max_tokens"], 10);
    }

    #[test]
    fn deadline_and_stream_are_read() {
        let body = r#"{"model":"m","messages":[{"role":"user","content":"x"}],"deadline_s":30,"stream":true}"#;
        let s = chat_submission(body.as_bytes(), LIMITS).unwrap();
        assert_eq!(s.deadline_s, Some(30));
        assert!(s.stream);
        let fwd = &s.request;
        assert!(fwd.get("deadline_s").is_none());
        let bad = r#"{"model":"m","messages":[{"role":"user","content":"x"}],"deadline_s":0}"#;
        assert_eq!(err(bad).1.as_deref(), Some("deadline_s"));
    }

    #[test]
    fn names_the_unknown_field() {
        let (_, param, code) =
            err(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temprature":1}"#);
        assert_eq!(param.as_deref(), Some("temprature"));
        assert_eq!(code, "unknown_parameter");
    }

    #[test]
    fn malformed_and_non_object_bodies() {
        assert_eq!(err("{").2, "invalid_json");
        assert_eq!(err("[]").2, "invalid_json");
        assert_eq!(err("").2, "invalid_json");
        let (_, _, code) = match chat_submission(b"{\"model\":\"\xff\"}", LIMITS) {
            Err(ApiError::InvalidRequest {
                message,
                param,
                code,
            }) => (message, param, code),
            other => panic!("{other:?}"),
        };
        assert_eq!(code, "invalid_json", "invalid UTF-8 is malformed JSON");
    }

    #[test]
    fn required_fields_types_and_ranges() {
        assert_eq!(
            err(r#"{"messages":[{"role":"user","content":"x"}]}"#)
                .1
                .as_deref(),
            Some("model")
        );
        assert_eq!(err(r#"{"model":"m"}"#).1.as_deref(), Some("messages"));
        assert_eq!(
            err(r#"{"model":"m","messages":[]}"#).1.as_deref(),
            Some("messages")
        );
        assert_eq!(
            err(r#"{"model":5,"messages":[{"role":"user","content":"x"}]}"#).2,
            "invalid_type"
        );
        let base = r#""model":"m","messages":[{"role":"user","content":"x"}]"#;
        for (extra, param) in [
            (r#""temperature":3"#, "temperature"),
            (r#""temperature":"hot""#, "temperature"),
            (r#""max_tokens":0"#, "max_tokens"),
            (r#""max_tokens":99999999999999999999999"#, "max_tokens"),
            (r#""max_tokens":1.5"#, "max_tokens"),
            (r#""n":1000"#, "n"),
            (r#""stream":"yes""#, "stream"),
            (r#""stop":["a","b","c","d","e"]"#, "stop"),
            (r#""priority":"urgent""#, "priority"),
            (r#""metadata":{"k":1}"#, "metadata.k"),
        ] {
            let (_, p, _) = err(&format!("{{{base},{extra}}}"));
            assert_eq!(p.as_deref(), Some(param), "{extra}");
        }
    }

    #[test]
    fn message_roles_and_content() {
        assert_eq!(
            err(r#"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#)
                .1
                .as_deref(),
            Some("messages[0].role")
        );
        assert_eq!(
            err(r#"{"model":"m","messages":[{"content":"x"}]}"#)
                .1
                .as_deref(),
            Some("messages[0].role")
        );
        assert_eq!(
            err(r#"{"model":"m","messages":[{"role":"user"}]}"#)
                .1
                .as_deref(),
            Some("messages[0].content")
        );
        assert_eq!(
            err(r#"{"model":"m","messages":[{"role":"user","content":7}]}"#)
                .1
                .as_deref(),
            Some("messages[0].content")
        );
        assert_eq!(
            err(r#"{"model":"m","messages":[{"role":"tool","content":"x"}]}"#)
                .1
                .as_deref(),
            Some("messages[0].tool_call_id")
        );
        let ok = r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"x"}]},{"role":"assistant","content":null,"tool_calls":[]}]}"#;
        assert!(chat_submission(ok.as_bytes(), LIMITS).is_ok());
    }

    #[test]
    fn duplicate_keys_are_refused_by_name_at_any_depth() {
        let (_, param, code) =
            err(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"model":"n"}"#);
        assert_eq!((param.as_deref(), code), (Some("model"), "duplicate_key"));
        let (_, param, _) =
            err(r#"{"model":"m","messages":[{"role":"user","content":"x","content":"y"}]}"#);
        assert_eq!(param.as_deref(), Some("messages[0].content"));
    }

    #[test]
    fn huge_numbers_are_refused_not_overflowed() {
        let body =
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":1e400}"#;
        assert_eq!(err(body).2, "invalid_json");
    }

    #[test]
    fn metadata_limits() {
        let many: Vec<String> = (0..17).map(|i| format!("\"k{i}\":\"v\"")).collect();
        let body = format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"x"}}],"metadata":{{{}}}}}"#,
            many.join(",")
        );
        assert_eq!(err(&body).1.as_deref(), Some("metadata"));
    }
}
