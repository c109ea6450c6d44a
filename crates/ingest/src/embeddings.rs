//! Validation of an `/v1/embeddings` body: OpenAI's fields only, `model` and `input`
//! required, `input` a string or an array of strings or token arrays.

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
}

pub fn embedding_submission(body: &[u8]) -> Result<EmbeddingSubmission, ApiError> {
    let obj = json_object(body, |k| FIELDS.contains(&k))?;
    let model = model(&obj)?;
    input(&obj)?;
    Ok(EmbeddingSubmission {
        model,
        request: Value::Object(obj),
    })
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
        ] {
            assert!(embedding_submission(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
