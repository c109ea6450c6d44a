//! OpenAI wire types: the parts of requests the simulator reads and the responses it writes.
//!
//! Requests are lenient (unknown fields are ignored, as OpenAI-compatible servers do);
//! responses carry the fields SDKs rely on.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

// ---- requests ----

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub max_tokens: Option<u64>,
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub tools: Option<Vec<serde_json::Value>>,
    #[serde(default)]
    pub tool_choice: Option<serde_json::Value>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    #[serde(default)]
    pub response_format: Option<serde_json::Value>,
    /// How many choices to generate (1 to [`MAX_N`]).
    #[serde(default)]
    pub n: Option<u64>,
    #[serde(default)]
    pub logprobs: Option<bool>,
    /// Alternatives per token (0 to [`MAX_TOP_LOGPROBS`]); needs `logprobs: true`.
    #[serde(default)]
    pub top_logprobs: Option<u64>,
    #[serde(default)]
    pub stop: Option<Stop>,
    /// Same seed, same answer; part of what the answer is derived from.
    #[serde(default)]
    pub seed: Option<i64>,
    /// Accepted and ignored, as OpenAI uses it only for abuse monitoring.
    #[serde(default)]
    pub user: Option<String>,
}

/// Most choices one request may ask for, as OpenAI allows.
pub const MAX_N: u64 = 128;
/// Most `top_logprobs`, as OpenAI allows.
pub const MAX_TOP_LOGPROBS: u64 = 20;
/// Most stop sequences, as OpenAI allows.
pub const MAX_STOP: usize = 4;

/// `stop`: one sequence or up to four.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    pub fn sequences(&self) -> &[String] {
        match self {
            Self::One(s) => std::slice::from_ref(s),
            Self::Many(v) => v,
        }
    }
}

impl ChatRequest {
    /// `max_completion_tokens` supersedes the deprecated `max_tokens`.
    pub fn token_limit(&self) -> Option<u64> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }

    /// The number of choices asked for.
    pub fn choices(&self) -> u64 {
        self.n.unwrap_or(1)
    }

    /// `Some(top)` when log probabilities are asked for.
    pub fn logprobs_top(&self) -> Option<usize> {
        self.logprobs
            .unwrap_or(false)
            .then(|| usize::try_from(self.top_logprobs.unwrap_or(0)).unwrap_or(0))
    }

    pub fn stop_sequences(&self) -> &[String] {
        self.stop.as_ref().map_or(&[], Stop::sequences)
    }

    /// The text of the last message whose role is `user`.
    pub fn last_user_text(&self) -> Option<Cow<'_, str>> {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map(ChatMessage::text)
    }
}

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<MessageContent>,
}

impl ChatMessage {
    /// The message's text: the string, or the concatenated `text` of its parts.
    pub fn text(&self) -> Cow<'_, str> {
        match &self.content {
            None => Cow::Borrowed(""),
            Some(MessageContent::Text(s)) => Cow::Borrowed(s),
            Some(MessageContent::Parts(parts)) => {
                Cow::Owned(parts.iter().filter_map(|p| p.text.as_deref()).collect())
            }
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct EmbeddingsRequest {
    pub model: String,
    pub input: EmbeddingInput,
    /// `float` (the default) or `base64`; anything else is a `400`, as OpenAI answers.
    #[serde(default)]
    pub encoding_format: Option<String>,
}

/// How embedding vectors are written in the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodingFormat {
    /// A JSON array of numbers.
    Float,
    /// The little-endian `float32` bytes, base64-encoded (what the official SDKs ask for).
    Base64,
}

impl EncodingFormat {
    pub fn parse(s: Option<&str>) -> Option<Self> {
        match s {
            None | Some("float") => Some(Self::Float),
            Some("base64") => Some(Self::Base64),
            Some(_) => None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum EmbeddingInput {
    One(String),
    Many(Vec<String>),
}

impl EmbeddingInput {
    pub fn as_slice(&self) -> &[String] {
        match self {
            Self::One(s) => std::slice::from_ref(s),
            Self::Many(v) => v,
        }
    }
}

// ---- responses ----

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

/// The `system_fingerprint` of every answer (the simulator has one configuration).
pub const SYSTEM_FINGERPRINT: &str = "fp_sluice_sim";

#[derive(Debug, Serialize)]
pub struct ChatCompletion<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub system_fingerprint: &'static str,
    pub choices: Vec<Choice<'a>>,
    pub usage: Usage,
}

#[derive(Debug, Serialize)]
pub struct Choice<'a> {
    pub index: u32,
    pub message: AssistantMessage<'a>,
    pub logprobs: Option<ChoiceLogprobs>,
    pub finish_reason: &'static str,
}

/// A choice's (or a chunk's) `logprobs`: one entry per token of its content.
#[derive(Clone, Debug, Serialize)]
pub struct ChoiceLogprobs {
    pub content: Vec<TokenLogprobOut>,
    pub refusal: Option<()>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TokenLogprobOut {
    pub token: String,
    pub logprob: f64,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprobOut>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TopLogprobOut {
    pub token: String,
    pub logprob: f64,
    pub bytes: Vec<u8>,
}

impl From<crate::output::TokenLogprob> for TokenLogprobOut {
    fn from(t: crate::output::TokenLogprob) -> Self {
        TokenLogprobOut {
            bytes: t.token.as_bytes().to_vec(),
            top_logprobs: t
                .top
                .into_iter()
                .map(|(token, logprob)| TopLogprobOut {
                    bytes: token.as_bytes().to_vec(),
                    token,
                    logprob,
                })
                .collect(),
            token: t.token,
            logprob: t.logprob,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct AssistantMessage<'a> {
    pub role: &'static str,
    /// `null` when the assistant calls tools.
    pub content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallOut<'a>>>,
}

#[derive(Debug, Serialize)]
pub struct ToolCallOut<'a> {
    pub id: &'a str,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionOut<'a>,
}

#[derive(Debug, Serialize)]
pub struct FunctionOut<'a> {
    pub name: &'a str,
    pub arguments: &'a str,
}

/// A tool call's piece in a streamed delta: the first carries `id`, `type` and `name`, the
/// later ones argument text.
#[derive(Debug, Serialize)]
pub struct ToolCallDelta<'a> {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub function: FunctionDelta<'a>,
}

#[derive(Debug, Serialize)]
pub struct FunctionDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    pub arguments: &'a str,
}

#[derive(Debug, Serialize)]
pub struct ChatChunk<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub system_fingerprint: &'static str,
    pub choices: Vec<ChunkChoice<'a>>,
    /// Absent without `include_usage`; `null` on every chunk but the last with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
}

#[derive(Debug, Serialize)]
pub struct ChunkChoice<'a> {
    pub index: u32,
    pub delta: Delta<'a>,
    pub logprobs: Option<ChoiceLogprobs>,
    pub finish_reason: Option<&'static str>,
}

#[derive(Debug, Default, Serialize)]
pub struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta<'a>>>,
}

#[derive(Debug, Serialize)]
pub struct EmbeddingList<'a> {
    pub object: &'static str,
    pub data: Vec<EmbeddingItem>,
    pub model: &'a str,
    pub usage: EmbeddingUsage,
}

#[derive(Debug, Serialize)]
pub struct EmbeddingItem {
    pub object: &'static str,
    pub index: usize,
    pub embedding: EmbeddingVector,
}

/// One vector, as [`EncodingFormat`] asks.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum EmbeddingVector {
    Float(Vec<f32>),
    Base64(String),
}

impl EmbeddingVector {
    pub fn encode(v: &[f32], format: EncodingFormat) -> Self {
        match format {
            EncodingFormat::Float => Self::Float(v.to_vec()),
            EncodingFormat::Base64 => {
                use base64::Engine as _;
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Self::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            }
        }
    }
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct EmbeddingUsage {
    pub prompt_tokens: u64,
    pub total_tokens: u64,
}

#[derive(Debug, Serialize)]
pub struct ModelList<'a> {
    pub object: &'static str,
    pub data: Vec<ModelEntry<'a>>,
}

#[derive(Debug, Serialize)]
pub struct ModelEntry<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn content_may_be_a_string_parts_or_null() {
        let req: ChatRequest = serde_json::from_str(
            r#"{"model":"m","temperature":0.2,"messages":[
                {"role":"system","content":"be brief"},
                {"role":"user","content":[{"type":"text","text":"hel"},{"type":"image_url","image_url":{}},{"type":"text","text":"lo"}]},
                {"role":"assistant","content":null,"tool_calls":[]}
            ]}"#,
        )
        .unwrap();
        assert_eq!(req.messages[0].text(), "be brief");
        assert_eq!(req.messages[1].text(), "hello");
        assert_eq!(req.messages[2].text(), "");
        assert_eq!(req.last_user_text().as_deref(), Some("hello"));
        assert!(!req.include_usage());
    }

    #[test]
    fn max_completion_tokens_wins() {
        let req: ChatRequest = serde_json::from_str(
            r#"{"model":"m","messages":[],"max_tokens":5,"max_completion_tokens":3}"#,
        )
        .unwrap();
        assert_eq!(req.token_limit(), Some(3));
    }

    #[test]
    fn chunk_usage_is_absent_null_or_present() {
        let chunk = |usage| ChatChunk {
            id: "c",
            object: "chat.completion.chunk",
            created: 0,
            model: "m",
            system_fingerprint: SYSTEM_FINGERPRINT,
            choices: vec![],
            usage,
        };
        let json = |c: &ChatChunk<'_>| serde_json::to_value(c).unwrap();
        assert!(json(&chunk(None)).get("usage").is_none());
        assert!(json(&chunk(Some(None)))["usage"].is_null());
        let u = Usage {
            prompt_tokens: 1,
            completion_tokens: 2,
            total_tokens: 3,
        };
        assert_eq!(json(&chunk(Some(Some(u))))["usage"]["total_tokens"], 3);
    }
}
