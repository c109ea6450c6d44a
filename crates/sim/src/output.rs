//! Deterministic model output: completion words, token counts and embeddings.
//!
//! Everything is derived from a SHA-256 of the model and the input, so the same request always
//! gets the same answer (plain or streamed), which lets tests compare results across retries,
//! caches and transports without knowing the text.

use sha2::{Digest, Sha256};

/// Length of every embedding vector.
pub const EMBEDDING_DIMS: usize = 16;
/// Fewest and most words in a completion before `max_tokens` truncation.
pub const MIN_WORDS: usize = 8;
pub const MAX_WORDS: usize = 64;

const WORDS: &[&str] = &[
    "the",
    "queue",
    "absorbs",
    "bursts",
    "while",
    "workers",
    "drain",
    "steadily",
    "a",
    "model",
    "answers",
    "tokens",
    "arrive",
    "in",
    "order",
    "latency",
    "varies",
    "with",
    "load",
    "and",
    "retries",
    "back",
    "off",
    "gently",
    "budgets",
    "keep",
    "tenants",
    "fair",
    "every",
    "job",
    "is",
    "durable",
    "once",
    "acknowledged",
    "streams",
    "flow",
    "through",
    "gateways",
    "to",
    "clients",
    "that",
    "wait",
    "patiently",
    "for",
    "results",
    "caches",
    "remember",
    "recent",
    "prompts",
    "circuit",
    "breakers",
    "open",
    "when",
    "providers",
    "fail",
    "repeatedly",
    "then",
    "close",
    "after",
    "probes",
    "succeed",
    "webhooks",
    "deliver",
    "signed",
    "events",
    "on",
    "time",
    "operators",
    "replay",
    "dead",
    "letters",
    "without",
    "losing",
    "data",
    "throughput",
    "grows",
    "as",
    "replicas",
    "scale",
    "out",
    "smoothly",
    "under",
    "pressure",
    "priorities",
    "shape",
    "which",
    "work",
    "runs",
    "first",
    "embeddings",
    "capture",
    "meaning",
    "compactly",
    "simulated",
    "upstreams",
    "make",
    "tests",
    "fast",
    "reliable",
    "deterministic",
    "outputs",
    "help",
    "compare",
    "runs",
    "across",
    "versions",
    "sluice",
    "gates",
    "traffic",
    "calmly",
    "so",
    "nothing",
    "accepted",
    "is",
    "ever",
    "lost",
    "hedged",
    "requests",
    "race",
    "slow",
    "replies",
    "fallbacks",
    "rescue",
    "failures",
    "quietly",
    "tidy",
    "logs",
    "explain",
];

/// Why generation stopped, as OpenAI names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

/// A generated completion: one token per word.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    pub words: Vec<&'static str>,
    pub finish_reason: FinishReason,
}

impl Completion {
    /// The message content: words joined by single spaces.
    pub fn content(&self) -> String {
        self.words.join(" ")
    }

    /// The streamed pieces, which concatenate to [`Completion::content`].
    pub fn pieces(&self) -> impl Iterator<Item = String> + '_ {
        self.words.iter().enumerate().map(|(i, w)| {
            if i == 0 {
                (*w).to_owned()
            } else {
                format!(" {w}")
            }
        })
    }

    pub fn completion_tokens(&self) -> u64 {
        self.words.len() as u64
    }
}

/// Derives the completion for `model` and `(role, text)` messages, truncated to `max_tokens`.
pub fn completion<'a>(
    model: &str,
    messages: impl IntoIterator<Item = (&'a str, &'a str)>,
    max_tokens: Option<u64>,
) -> Completion {
    let mut hasher = Sha256::new();
    hasher.update(model.as_bytes());
    for (role, text) in messages {
        hasher.update([0]);
        hasher.update(role.as_bytes());
        hasher.update([0]);
        hasher.update(text.as_bytes());
    }
    let digest: [u8; 32] = hasher.finalize().into();
    let natural = MIN_WORDS + usize::from(digest[0]) % (MAX_WORDS - MIN_WORDS + 1);
    let limit = max_tokens.map_or(usize::MAX, |m| usize::try_from(m).unwrap_or(usize::MAX));
    let n = natural.min(limit);
    let mut words = Vec::with_capacity(n);
    let mut block = [0u8; 32];
    for i in 0..n {
        let slot = i % 16;
        if slot == 0 {
            let mut h = Sha256::new();
            h.update(digest);
            h.update((i / 16).to_le_bytes());
            block = h.finalize().into();
        }
        let idx = u16::from_le_bytes([block[2 * slot], block[2 * slot + 1]]);
        words.push(WORDS[usize::from(idx) % WORDS.len()]);
    }
    let finish_reason = if n < natural {
        FinishReason::Length
    } else {
        FinishReason::Stop
    };
    Completion {
        words,
        finish_reason,
    }
}

/// Rough token count of a text: one token per four characters, rounded up.
pub fn text_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

/// Prompt tokens of a chat: per message `ceil(chars / 4) + 4`, plus 3 for the reply priming.
pub fn prompt_tokens<'a>(texts: impl IntoIterator<Item = &'a str>) -> u64 {
    texts.into_iter().map(|t| text_tokens(t) + 4).sum::<u64>() + 3
}

/// A unit-length embedding derived from the model and the input text.
pub fn embedding(model: &str, input: &str) -> [f32; EMBEDDING_DIMS] {
    let mut hasher = Sha256::new();
    hasher.update(model.as_bytes());
    hasher.update([0]);
    hasher.update(input.as_bytes());
    let digest: [u8; 32] = hasher.finalize().into();
    let mut v = [0f32; EMBEDDING_DIMS];
    for (i, x) in v.iter_mut().enumerate() {
        let raw = u16::from_le_bytes([digest[2 * i], digest[2 * i + 1]]);
        *x = f32::from(raw) / f32::from(u16::MAX) * 2.0 - 1.0;
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_are_deterministic_and_sized() {
        let a = completion("sim-small", [("user", "hello")], None);
        let b = completion("sim-small", [("user", "hello")], None);
        assert_eq!(a, b);
        assert!((MIN_WORDS..=MAX_WORDS).contains(&a.words.len()));
        assert_eq!(a.finish_reason, FinishReason::Stop);
        let other = completion("sim-large", [("user", "hello")], None);
        assert_ne!(a, other);
        let many: Vec<usize> = (0..50)
            .map(|i| {
                completion("m", [("user", &*i.to_string())], None)
                    .words
                    .len()
            })
            .collect();
        assert!(
            many.iter().any(|&n| n > 16),
            "some completions need a second hash block"
        );
    }

    #[test]
    fn max_tokens_truncates_with_length() {
        let full = completion("sim-small", [("user", "hello")], None);
        let cut = completion("sim-small", [("user", "hello")], Some(3));
        assert_eq!(cut.words, full.words[..3]);
        assert_eq!(cut.finish_reason, FinishReason::Length);
        let roomy = completion("sim-small", [("user", "hello")], Some(1000));
        assert_eq!(roomy, full);
    }

    #[test]
    fn pieces_concatenate_to_the_content() {
        let c = completion("sim-small", [("system", "be brief"), ("user", "hi")], None);
        assert_eq!(c.pieces().collect::<String>(), c.content());
        assert_eq!(c.completion_tokens(), c.words.len() as u64);
    }

    #[test]
    fn token_counts_follow_the_rule() {
        assert_eq!(text_tokens(""), 0);
        assert_eq!(text_tokens("abcd"), 1);
        assert_eq!(text_tokens("abcde"), 2);
        // (1 + 4) + (2 + 4) + 3
        assert_eq!(prompt_tokens(["abcd", "abcdefgh"]), 14);
    }

    #[test]
    fn embeddings_are_deterministic_unit_vectors() {
        let a = embedding("sim-embed", "hello");
        assert_eq!(a, embedding("sim-embed", "hello"));
        assert_ne!(a, embedding("sim-embed", "hello!"));
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
    }
}
