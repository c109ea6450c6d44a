//! What a request is expected to cost before it runs.
//!
//! Prompt tokens are estimated as OpenAI documents for English text: about four characters
//! per token, plus four tokens of framing per message and three for the reply primer. The
//! estimate only sizes the reservation; the job's actual `usage` replaces it at settlement,
//! so limits and budgets do not drift whichever way the estimate errs. Output tokens are the
//! request's `max_tokens` / `max_completion_tokens`, or [`DEFAULT_MAX_OUTPUT`] without one.

use serde_json::Value;
use sluice_config::GovernanceConfig;

/// Output tokens reserved for a request that does not bound its answer.
pub const DEFAULT_MAX_OUTPUT: u64 = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }
}

/// Prompt estimate and output bound of an OpenAI chat request body.
/// The estimate of a chat-completions or embeddings request (an embeddings request has an
/// `input` and produces no completion tokens).
pub fn request(request: &Value) -> Usage {
    match request.get("input") {
        Some(input) if request.get("messages").is_none() => Usage {
            prompt_tokens: input_tokens(input),
            completion_tokens: 0,
        },
        _ => chat_request(request),
    }
}

/// `input`: a string, an array of strings, or token arrays (counted as given).
fn input_tokens(input: &Value) -> u64 {
    match input {
        Value::String(s) => chars_to_tokens(s.chars().count()),
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => chars_to_tokens(s.chars().count()),
                Value::Array(tokens) => tokens.len() as u64,
                Value::Number(_) => 1,
                _ => 0,
            })
            .sum(),
        _ => 0,
    }
}

pub fn chat_request(request: &Value) -> Usage {
    let mut prompt = 3u64;
    if let Some(messages) = request.get("messages").and_then(Value::as_array) {
        for m in messages {
            prompt += 4 + text_tokens(m.get("content"));
            if let Some(name) = m.get("name").and_then(Value::as_str) {
                prompt += chars_to_tokens(name.chars().count());
            }
        }
    }
    let completion = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|f| request.get(*f).and_then(Value::as_u64))
        .unwrap_or(DEFAULT_MAX_OUTPUT);
    let n = request.get("n").and_then(Value::as_u64).unwrap_or(1).max(1);
    Usage {
        prompt_tokens: prompt,
        completion_tokens: completion.saturating_mul(n),
    }
}

fn text_tokens(content: Option<&Value>) -> u64 {
    match content {
        Some(Value::String(s)) => chars_to_tokens(s.chars().count()),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|p| match p.get("text").and_then(Value::as_str) {
                Some(t) => chars_to_tokens(t.chars().count()),
                // Images and audio: a flat allowance (OpenAI's low-detail image cost).
                None => 85,
            })
            .sum(),
        _ => 0,
    }
}

fn chars_to_tokens(chars: usize) -> u64 {
    (chars as u64).div_ceil(4)
}

/// Cost in micro-USD: prices are USD per million tokens, i.e. micro-USD per token.
pub fn cost_micro_usd(cfg: &GovernanceConfig, model: &str, usage: Usage) -> u64 {
    let Some(p) = cfg.prices.get(model) else {
        return 0;
    };
    let c = usage.prompt_tokens as f64 * p.prompt_per_mtok
        + usage.completion_tokens as f64 * p.completion_per_mtok;
    c.ceil().max(0.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn estimates_prompt_and_bounds_output() {
        let u = chat_request(
            &json!({"messages":[{"role":"user","content":"abcdefgh"}],"max_tokens":10}),
        );
        assert_eq!(
            u,
            Usage {
                prompt_tokens: 3 + 4 + 2,
                completion_tokens: 10
            }
        );
        let u = chat_request(&json!({"messages":[{"role":"user","content":"x"}],"n":2}));
        assert_eq!(u.completion_tokens, 2 * DEFAULT_MAX_OUTPUT);
    }

    #[test]
    fn cost_follows_the_price_table() {
        let mut cfg = GovernanceConfig::default();
        cfg.prices.insert(
            "m".into(),
            sluice_config::Price {
                prompt_per_mtok: 2.5,
                completion_per_mtok: 10.0,
            },
        );
        let u = Usage {
            prompt_tokens: 1000,
            completion_tokens: 100,
        };
        assert_eq!(cost_micro_usd(&cfg, "m", u), 2500 + 1000);
        assert_eq!(cost_micro_usd(&cfg, "unknown", u), 0);
    }

    #[test]
    fn embeddings_count_their_input_and_no_completion() {
        let one = request(&serde_json::json!({"model": "e", "input": "abcdefgh"}));
        assert_eq!(one.completion_tokens, 0);
        assert!(one.prompt_tokens >= 2);
        let many = request(
            &serde_json::json!({"model": "e", "input": ["abcdefgh", "abcdefgh", [1, 2, 3]]}),
        );
        assert_eq!(many.prompt_tokens, 2 * one.prompt_tokens + 3);
        let chat = request(
            &serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 7}),
        );
        assert_eq!(chat.completion_tokens, 7);
    }
}
