//! Validation of an `/v1/embeddings` body: OpenAI's fields only, `model` and `input`
//! required, `input` a string or an array of strings or token arrays; and the shaping of the
//! answer into the `encoding_format` the client asked for.
//!
//! `encoding_format` is forwarded, so an upstream that honours it does the work; one that
//! ignores it (many OpenAI-compatible servers only return floats) gets its answer converted
//! here: floats to base64 of their little-endian `float32` bytes, or base64 back to floats.
//! The official SDKs ask for `base64` by default and decode it, so a float array in a base64
//! answer would silently become a wrong vector.

use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use serde_json::{Map, Value};

use crate::{
    error::ApiError,
    validate::{json_object, model, wrong_type},
};

const FIELDS: &[&str] = &["model", "input", "encoding_format", "dimensions", "user"];

/// Most inputs in one request (OpenAI's limit).
pub const MAX_INPUTS: usize = 2048;

#[derive(Debug)]
pub struct EmbeddingSubmission {
    pub model: String,
    /// The request (a JSON object), encoded into the envelope.
    pub request: Value,
    /// How the client wants the vectors written.
    pub format: EncodingFormat,
}

/// `encoding_format`: OpenAI's default is `float`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EncodingFormat {
    #[default]
    Float,
    Base64,
}

pub fn embedding_submission(body: &[u8]) -> Result<EmbeddingSubmission, ApiError> {
    let obj = json_object(body, |k| FIELDS.contains(&k))?;
    let model = model(&obj)?;
    input(&obj)?;
    let format = match obj.get("encoding_format") {
        None | Some(Value::Null) => EncodingFormat::Float,
        Some(Value::String(s)) if s == "float" => EncodingFormat::Float,
        Some(Value::String(s)) if s == "base64" => EncodingFormat::Base64,
        Some(_) => {
            return Err(ApiError::invalid(
                "Invalid value for 'encoding_format': expected 'float' or 'base64'.",
                Some("encoding_format"),
                "invalid_value",
            ));
        }
    };
    match obj.get("dimensions") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) if n.as_u64().is_some_and(|d| d >= 1) => {}
        Some(_) => return Err(wrong_type("dimensions", "a positive integer")),
    }
    match obj.get("user") {
        None | Some(Value::Null) | Some(Value::String(_)) => {}
        Some(_) => return Err(wrong_type("user", "a string")),
    }
    Ok(EmbeddingSubmission {
        model,
        request: Value::Object(obj),
        format,
    })
}

/// Rewrites an embeddings answer so every `data[].embedding` is in `format`; an answer
/// already in that format is returned as it is. An answer that is not an embeddings list
/// (or a vector that is neither numbers nor valid base64 of `float32`s) is an upstream
/// defect, refused rather than passed on half-converted.
pub fn shape_answer(answer: String, format: EncodingFormat) -> Result<String, ApiError> {
    let bad = || ApiError::Internal("the upstream's embeddings answer has no valid vectors".into());
    let mut v: Value = serde_json::from_str(&answer).map_err(|_| bad())?;
    let items = v
        .get_mut("data")
        .and_then(Value::as_array_mut)
        .ok_or_else(bad)?;
    let mut changed = false;
    for item in items.iter_mut() {
        let slot = item.get_mut("embedding").ok_or_else(bad)?;
        let converted = match (format, &*slot) {
            (EncodingFormat::Float, Value::Array(_))
            | (EncodingFormat::Base64, Value::String(_)) => {
                continue;
            }
            (EncodingFormat::Base64, Value::Array(xs)) => {
                Value::String(floats_to_base64(xs).ok_or_else(bad)?)
            }
            (EncodingFormat::Float, Value::String(s)) => base64_to_floats(s).ok_or_else(bad)?,
            _ => return Err(bad()),
        };
        *slot = converted;
        changed = true;
    }
    if !changed {
        return Ok(answer);
    }
    serde_json::to_string(&v).map_err(|e| ApiError::Internal(format!("encoding embeddings: {e}")))
}

fn floats_to_base64(xs: &[Value]) -> Option<String> {
    let mut bytes = Vec::with_capacity(xs.len() * 4);
    for x in xs {
        // JSON numbers of an embedding are float32 values written in decimal.
        #[allow(clippy::cast_possible_truncation)]
        let f = x.as_f64()? as f32;
        bytes.extend_from_slice(&f.to_le_bytes());
    }
    Some(BASE64.encode(bytes))
}

fn base64_to_floats(s: &str) -> Option<Value> {
    let bytes = BASE64.decode(s).ok()?;
    if bytes.len() % 4 != 0 {
        return None;
    }
    bytes
        .chunks_exact(4)
        .map(|c| {
            let f = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            // The float32's shortest decimal, as a float-answering upstream writes it (a
            // widened f64 would print 0.1 as 0.10000000149011612).
            let n: f64 = f.to_string().parse().ok()?;
            serde_json::Number::from_f64(n).map(Value::Number)
        })
        .collect::<Option<Vec<_>>>()
        .map(Value::Array)
}

fn input(obj: &Map<String, Value>) -> Result<(), ApiError> {
    let ok = match obj.get("input") {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(
                "Missing required parameter: 'input'.",
                Some("input"),
                "missing_required_parameter",
            ));
        }
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(items)) => {
            !items.is_empty()
                && items.len() <= MAX_INPUTS
                && items.iter().all(|i| match i {
                    Value::String(s) => !s.is_empty(),
                    Value::Number(n) => n.is_u64(),
                    Value::Array(tokens) => {
                        !tokens.is_empty() && tokens.iter().all(|t| t.as_u64().is_some())
                    }
                    _ => false,
                })
        }
        Some(_) => false,
    };
    if ok {
        Ok(())
    } else {
        Err(wrong_type(
            "input",
            "a non-empty string or array of strings or token arrays",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_strings_and_arrays_and_refuses_the_rest() {
        assert!(embedding_submission(br#"{"model":"e","input":"hi"}"#).is_ok());
        assert!(
            embedding_submission(br#"{"model":"e","input":["a","b"],"encoding_format":"float"}"#)
                .is_ok()
        );
        assert!(embedding_submission(br#"{"model":"e","input":[[1,2],[3]]}"#).is_ok());
        for bad in [
            r#"{"model":"e"}"#,
            r#"{"model":"e","input":""}"#,
            r#"{"model":"e","input":[]}"#,
            r#"{"input":"x"}"#,
            r#"{"model":"e","input":"x","priority":"high"}"#,
            r#"{"model":"e","input":"x","encoding_format":"int8"}"#,
            r#"{"model":"e","input":"x","dimensions":0}"#,
        ] {
            assert!(embedding_submission(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn answers_are_shaped_into_the_asked_format() {
        let floats = r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,-0.5,0.25]}],"model":"e"}"#;
        let b64 = shape_answer(floats.into(), EncodingFormat::Base64).unwrap();
        let v: Value = serde_json::from_str(&b64).unwrap();
        let text = v["data"][0]["embedding"].as_str().unwrap();
        let bytes = BASE64.decode(text).unwrap();
        assert_eq!(bytes.len(), 12);
        assert_eq!(&bytes[..4], &0.1f32.to_le_bytes());
        assert_eq!(v["model"], "e");
        // Back to floats: the same numbers as the float answer.
        let back = shape_answer(b64.clone(), EncodingFormat::Float).unwrap();
        let back: Value = serde_json::from_str(&back).unwrap();
        let orig: Value = serde_json::from_str(floats).unwrap();
        assert_eq!(back, orig);
        // Already right: untouched, byte for byte.
        assert_eq!(
            shape_answer(floats.into(), EncodingFormat::Float).unwrap(),
            floats
        );
        assert_eq!(
            shape_answer(b64.clone(), EncodingFormat::Base64).unwrap(),
            b64
        );
        for broken in [
            r#"{"data":[{"embedding":"!!"}]}"#,
            r#"{"data":[{"embedding":"AAA="}]}"#,
            r#"{"data":[{"embedding":["x"]}]}"#,
            r#"{"object":"list"}"#,
            "not json",
        ] {
            assert!(
                shape_answer(broken.into(), EncodingFormat::Float).is_err()
                    || shape_answer(broken.into(), EncodingFormat::Base64).is_err(),
                "{broken}"
            );
        }
    }
}
