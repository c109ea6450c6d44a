//! Deterministic model output: completion words, token counts and embeddings.
//!
//! Everything is derived from a SHA-256 of the model and the input, so the same request always
//! gets the same answer (plain or streamed), which lets tests compare results across retries,
//! caches and transports without knowing the text. A request's `seed` and a choice's index
//! (for `n` > 1) are part of the input: the same seed gives the same choices, another seed
//! other ones. Log probabilities are derived the same way, from each token and its position.

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

/// Which of a request's possible answers: its `seed` and the choice's index. The default (no
/// seed, choice 0) is the answer of a request that sets neither.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Variant {
    pub seed: Option<i64>,
    pub index: u32,
}

/// Derives the completion for `model` and `(role, text)` messages, truncated to `max_tokens`.
pub fn completion<'a>(
    model: &str,
    messages: impl IntoIterator<Item = (&'a str, &'a str)>,
    max_tokens: Option<u64>,
) -> Completion {
    completion_variant(model, messages, max_tokens, Variant::default())
}

/// [`completion`] for one [`Variant`] of the request.
pub fn completion_variant<'a>(
    model: &str,
    messages: impl IntoIterator<Item = (&'a str, &'a str)>,
    max_tokens: Option<u64>,
    variant: Variant,
) -> Completion {
    let mut hasher = Sha256::new();
    hasher.update(model.as_bytes());
    for (role, text) in messages {
        hasher.update([0]);
        hasher.update(role.as_bytes());
        hasher.update([0]);
        hasher.update(text.as_bytes());
    }
    // Absent parts hash nothing, so a request without seed or `n` keeps its answer.
    if let Some(seed) = variant.seed {
        hasher.update(b"\0seed");
        hasher.update(seed.to_le_bytes());
    }
    if variant.index > 0 {
        hasher.update(b"\0choice");
        hasher.update(variant.index.to_le_bytes());
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

/// Cuts `pieces` (streamed text pieces) before the first occurrence of any of `stops` in
/// their concatenation, as OpenAI does (the stop sequence itself is not returned). Returns
/// whether a stop sequence was found.
pub fn apply_stop(pieces: &mut Vec<String>, stops: &[String]) -> bool {
    let text: String = pieces.concat();
    let Some(cut) = stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
    else {
        return false;
    };
    let mut kept = 0;
    let mut out = Vec::with_capacity(pieces.len());
    for piece in pieces.drain(..) {
        if kept + piece.len() <= cut {
            kept += piece.len();
            out.push(piece);
            continue;
        }
        let head = &piece[..cut - kept];
        if !head.is_empty() {
            out.push(head.to_owned());
        }
        break;
    }
    *pieces = out;
    true
}

/// One token's log probability and its most likely alternatives, as OpenAI's `logprobs`
/// reports them (`top` holds the token itself first, then `top - 1` other words).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f64,
    pub top: Vec<(String, f64)>,
}

/// Deterministic log probabilities for a token at `position`, with `top` alternatives.
pub fn logprob(token: &str, position: usize, top: usize) -> TokenLogprob {
    let mut h = Sha256::new();
    h.update(token.as_bytes());
    h.update([0]);
    h.update(position.to_le_bytes());
    let digest: [u8; 32] = h.finalize().into();
    // In (-2, 0]: the sampled token is the likeliest; alternatives are less likely.
    let lp = -f64::from(u16::from_le_bytes([digest[0], digest[1]])) / f64::from(u16::MAX) * 2.0;
    let lp = (lp * 1e4).round() / 1e4;
    let mut alternatives = Vec::with_capacity(top);
    if top > 0 {
        alternatives.push((token.to_owned(), lp));
    }
    let lead = if token.starts_with(' ') { " " } else { "" };
    for (j, byte) in digest[2..].iter().enumerate() {
        if alternatives.len() >= top {
            break;
        }
        let word = format!("{lead}{}", WORDS[usize::from(*byte) % WORDS.len()]);
        if alternatives.iter().any(|(t, _)| *t == word) {
            continue;
        }
        alternatives.push((word, lp - 1.0 - j as f64 * 0.5));
    }
    TokenLogprob {
        token: token.to_owned(),
        logprob: lp,
        top: alternatives,
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
    fn seeds_and_choices_are_variants() {
        let msgs = [("user", "hello")];
        let base = completion("m", msgs, None);
        assert_eq!(
            completion_variant("m", msgs, None, Variant::default()),
            base
        );
        let seeded = |seed, index| completion_variant("m", msgs, None, Variant { seed, index });
        assert_eq!(seeded(Some(7), 0), seeded(Some(7), 0));
        assert_ne!(seeded(Some(7), 0), seeded(Some(8), 0));
        assert_ne!(seeded(Some(7), 0), seeded(Some(7), 1));
        assert_ne!(seeded(None, 1), base);
    }

    #[test]
    fn stop_cuts_before_the_sequence() {
        let mut p: Vec<String> = ["the", " queue", " absorbs", " bursts"]
            .map(String::from)
            .to_vec();
        assert!(!apply_stop(&mut p.clone(), &["zzz".into(), String::new()]));
        assert!(apply_stop(
            &mut p,
            &["zzz".into(), "sorbs".into(), "ue ab".into()]
        ));
        assert_eq!(p, ["the", " que"]);
        let mut first = vec!["the".to_owned(), " queue".to_owned()];
        assert!(apply_stop(&mut first, &["the".into()]));
        assert!(first.is_empty());
    }

    #[test]
    fn logprobs_are_deterministic_and_ordered() {
        let a = logprob(" queue", 3, 3);
        assert_eq!(a, logprob(" queue", 3, 3));
        assert_ne!(a.logprob, logprob(" queue", 4, 3).logprob);
        assert!(a.logprob <= 0.0 && a.logprob > -2.0);
        assert_eq!(a.top.len(), 3);
        assert_eq!(a.top[0], (" queue".to_owned(), a.logprob));
        assert!(a.top.windows(2).all(|w| w[0].1 > w[1].1));
        assert!(a.top[1..].iter().all(|(t, _)| t.starts_with(' ')));
        assert!(logprob("x", 0, 0).top.is_empty());
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
