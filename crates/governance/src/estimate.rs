//! What a request is expected to cost before it runs.
//!
//! Prompt tokens of OpenAI models (`gpt-4o*`, `gpt-4.1*`, `gpt-5*`, `o1`/`o3`/`o4*`, `gpt-4`,
//! `gpt-3.5-turbo`, `text-embedding-*`, `gpt-oss-*`, fine-tunes of these) are counted with
//! their real tokenizer (tiktoken's `o200k_base` / `cl100k_base` / `o200k_harmony`); text past
//! [`EXACT_PREFIX_BYTES`] is extrapolated from the counted prefix, so a huge prompt cannot
//! make admission slow. Other models get OpenAI's rule of thumb for English: about four
//! characters per token. Either way there are four tokens of framing per message and three
//! for the reply primer. The estimate only sizes the reservation; the job's actual `usage`
//! replaces it at settlement, so limits and budgets do not drift whichever way it errs.
//! Output tokens are the request's `max_tokens` / `max_completion_tokens`, or
//! [`DEFAULT_MAX_OUTPUT`] without one.

use serde_json::Value;
use sluice_config::GovernanceConfig;
use tiktoken_rs::{
    CoreBPE, cl100k_base_singleton, o200k_base_singleton, o200k_harmony_singleton,
    tokenizer::{Tokenizer, get_tokenizer},
};

/// Text counted exactly per string; beyond it the count is extrapolated.
pub const EXACT_PREFIX_BYTES: usize = 32 * 1024;

/// Loads the tokenizers (a few hundred milliseconds), so the first request does not pay.
pub fn warm_up() {
    let _ = o200k_base_singleton().encode_ordinary("warm up");
    let _ = cl100k_base_singleton().encode_ordinary("warm up");
}

/// The tokenizer of an OpenAI model, if `model` is one (legacy GPT-3 encodings excepted).
fn bpe(model: &str) -> Option<&'static CoreBPE> {
    match get_tokenizer(model)? {
        Tokenizer::O200kBase => Some(o200k_base_singleton()),
        Tokenizer::O200kHarmony => Some(o200k_harmony_singleton()),
        Tokenizer::Cl100kBase => Some(cl100k_base_singleton()),
        Tokenizer::P50kBase | Tokenizer::P50kEdit | Tokenizer::R50kBase | Tokenizer::Gpt2 => None,
    }
}

/// Tokens of `text`: exact for a known tokenizer (extrapolated past the prefix), else the
/// four-characters rule.
fn count(bpe: Option<&CoreBPE>, text: &str) -> u64 {
    let Some(bpe) = bpe else {
        return chars_to_tokens(text.chars().count());
    };
    if text.len() <= EXACT_PREFIX_BYTES {
        return bpe.encode_ordinary(text).len() as u64;
    }
    let mut end = EXACT_PREFIX_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let prefix = bpe.encode_ordinary(&text[..end]).len() as u64;
    (prefix as f64 * text.len() as f64 / end.max(1) as f64).ceil() as u64
}

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

/// The estimate of a chat-completions or embeddings request (an embeddings request has an
/// `input` and produces no completion tokens).
pub fn request(request: &Value) -> Usage {
    let tok = request.get("model").and_then(Value::as_str).and_then(bpe);
    match request.get("input") {
        Some(input) if request.get("messages").is_none() => Usage {
            prompt_tokens: input_tokens(tok, input),
            completion_tokens: 0,
        },
        _ => chat_with(tok, request),
    }
}

/// `input`: a string, an array of strings, or token arrays (counted as given).
fn input_tokens(tok: Option<&CoreBPE>, input: &Value) -> u64 {
    match input {
        Value::String(s) => count(tok, s),
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => count(tok, s),
                Value::Array(tokens) => tokens.len() as u64,
                Value::Number(_) => 1,
                _ => 0,
            })
            .sum(),
        _ => 0,
    }
}

/// Prompt estimate and output bound of an OpenAI chat request body.
pub fn chat_request(request: &Value) -> Usage {
    let tok = request.get("model").and_then(Value::as_str).and_then(bpe);
    chat_with(tok, request)
}

fn chat_with(tok: Option<&CoreBPE>, request: &Value) -> Usage {
    let mut prompt = 3u64;
    if let Some(messages) = request.get("messages").and_then(Value::as_array) {
        for m in messages {
            prompt += 4 + text_tokens(tok, m.get("content"));
            if let Some(name) = m.get("name").and_then(Value::as_str) {
                prompt += count(tok, name);
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

fn text_tokens(tok: Option<&CoreBPE>, content: Option<&Value>) -> u64 {
    match content {
        Some(Value::String(s)) => count(tok, s),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|p| match p.get("text").and_then(Value::as_str) {
                Some(t) => count(tok, t),
                // Images and audio: a flat allowance (OpenAI's low-detail image cost).
                None => 85,
            })
            .sum(),
        _ => 0,
    }
}

/// Tokens of generated `text` for `model` (what a cancelled stream is charged for the part
/// that reached the client).
pub fn output_tokens(model: &str, text: &str) -> u64 {
    count(bpe(model), text)
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

    #[test]
    fn openai_models_are_counted_with_their_tokenizer() {
        // "hello world" is two tokens in both o200k_base and cl100k_base; the rule of thumb
        // would say three (11 characters / 4).
        for model in [
            "gpt-4o-mini",
            "gpt-4",
            "text-embedding-3-small",
            "ft:gpt-4o-mini:acme::x",
        ] {
            let tok = bpe(model);
            assert!(tok.is_some(), "{model}");
            assert_eq!(count(tok, "hello world"), 2, "{model}");
        }
        assert!(bpe("llama-3-70b").is_none());
        assert_eq!(count(None, "hello world"), 3);
        let chat = request(
            &serde_json::json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hello world"}], "max_tokens": 5}),
        );
        assert_eq!(chat.prompt_tokens, 3 + 4 + 2);
    }

    #[test]
    fn huge_texts_are_extrapolated_from_a_counted_prefix() {
        let text = "lorem ipsum dolor sit amet ".repeat(50_000);
        let tok = bpe("gpt-4o");
        let estimate = count(tok, &text);
        let exact = tok
            .map(|b| b.encode_ordinary(&text).len() as u64)
            .unwrap_or(0);
        let err = estimate.abs_diff(exact) as f64 / exact as f64;
        assert!(err < 0.02, "estimate {estimate} vs exact {exact}");
    }
}
