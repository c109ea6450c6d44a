//! A deterministic embedding model with meaning: models whose name starts with
//! [`BOW_PREFIX`] (`sim-embed-bow`, `sim-embed-bow-large`, …) embed a text as a bag of its
//! words, so a paraphrase lands near the original and a different question far from it.
//! It exists for the semantic cache's tests and benchmark, which need vectors whose
//! similarities mean something and must run offline.
//!
//! How a text becomes a vector:
//! - lowercase, split on anything that is not a letter, a digit or an apostrophe; `n't`
//!   counts as the word `not` (`don't` = `do not`);
//! - drop stop words (`the`, `what`, `please`, `tell`, `me`, …: words that carry no topic);
//! - crude stemming (`passwords`, `resetting`, `reset` → `reset`, `password`);
//! - feature-hash each word into [`BOW_DIMS`] signed dimensions (weight 1);
//! - a negation (`not`, `no`, `never`, `without`, …) adds a heavy feature of its own (weight
//!   [`NEGATION_WEIGHT`]), so "is X safe" and "is X not safe" end up far apart;
//! - normalize to unit length (an all-stop-word text is the zero vector: similar to nothing).
//!
//! Word order is ignored (it is a bag): "dog bites man" equals "man bites dog". Real
//! embedding models do much better; this one is only meant to be predictable.

use sha2::{Digest, Sha256};

/// Model names that get this embedding.
pub const BOW_PREFIX: &str = "sim-embed-bow";
/// Length of its vectors.
pub const BOW_DIMS: usize = 256;
/// Weight of the negation feature, against 1 for a content word.
pub const NEGATION_WEIGHT: f32 = 3.0;

const NEGATIONS: &[&str] = &[
    "not", "no", "never", "none", "nobody", "nothing", "neither", "nor", "without", "cannot",
];

const STOP_WORDS: &[&str] = &[
    "a", "an", "the", "is", "are", "was", "were", "be", "been", "am", "do", "does", "did", "i",
    "me", "my", "you", "your", "we", "our", "it", "its", "of", "to", "in", "on", "at", "for", "by",
    "with", "and", "or", "what", "whats", "which", "who", "how", "can", "could", "would", "should",
    "will", "shall", "may", "might", "must", "please", "tell", "give", "explain", "describe",
    "show", "about", "this", "that", "these", "those", "there", "here", "some", "any", "kindly",
    "hey", "hi", "hello", "just", "like", "want", "know", "need", "s", "so", "as", "from", "into",
    "if", "then", "than", "let", "us", "get", "much", "many", "way",
];

/// Whether `model` is served with this embedding.
pub fn is_bow(model: &str) -> bool {
    model.starts_with(BOW_PREFIX)
}

/// The unit-length bag-of-words vector of `text` (see the module docs).
pub fn embedding(text: &str) -> Vec<f32> {
    let mut v = vec![0f32; BOW_DIMS];
    let lower = text.to_lowercase().replace("n't", " not");
    for raw in lower.split(|c: char| !(c.is_alphanumeric() || c == '\'')) {
        let word = raw.trim_matches('\'');
        let word = word.strip_suffix("'s").unwrap_or(word).replace('\'', "");
        if word.is_empty() {
            continue;
        }
        if NEGATIONS.contains(&word.as_str()) {
            add(&mut v, "\u{0}negation", NEGATION_WEIGHT);
        } else if !STOP_WORDS.contains(&word.as_str()) {
            add(&mut v, stem(&word), 1.0);
        }
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// Strips one common English suffix when enough of the word is left.
fn stem(word: &str) -> &str {
    for suffix in ["ing", "edly", "ed", "ies", "es", "ly", "s"] {
        if let Some(base) = word.strip_suffix(suffix)
            && base.chars().count() >= 3
        {
            return base;
        }
    }
    word
}

/// Adds `weight` to the signed dimension `feature` hashes to.
fn add(v: &mut [f32], feature: &str, weight: f32) {
    let d: [u8; 32] = Sha256::digest(feature.as_bytes()).into();
    let i = u32::from_le_bytes([d[0], d[1], d[2], d[3]]) as usize % v.len();
    let sign = if d[4] & 1 == 0 { 1.0 } else { -1.0 };
    v[i] += sign * weight;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cos(a: &str, b: &str) -> f32 {
        let (a, b) = (embedding(a), embedding(b));
        a.iter().zip(&b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn paraphrases_are_close_and_other_questions_far() {
        for (a, b) in [
            (
                "What is the capital of France?",
                "Tell me the capital of France, please.",
            ),
            ("How do I reset my password?", "how can I reset passwords"),
            (
                "Which programming language should I learn first?",
                "What programming language would you learn first?",
            ),
        ] {
            assert!(cos(a, b) > 0.95, "{a} / {b}: {}", cos(a, b));
        }
        for (a, b) in [
            (
                "What is the capital of France?",
                "What is the capital of Germany?",
            ),
            (
                "How do I reset my password?",
                "How do I reset my password on the mobile app?",
            ),
        ] {
            assert!(cos(a, b) < 0.9, "{a} / {b}: {}", cos(a, b));
        }
    }

    #[test]
    fn a_negation_moves_a_question_far_away() {
        for (a, b) in [
            (
                "Is it safe to eat raw eggs?",
                "Is it not safe to eat raw eggs?",
            ),
            (
                "Should I restart the server?",
                "Should I never restart the server?",
            ),
            ("Can I use the API key?", "I can't use the API key"),
        ] {
            assert!(cos(a, b) < 0.8, "{a} / {b}: {}", cos(a, b));
        }
    }

    #[test]
    fn vectors_are_deterministic_unit_length() {
        let v = embedding("How do I reset my password?");
        assert_eq!(v, embedding("How do I reset my password?"));
        assert_eq!(v.len(), BOW_DIMS);
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
        assert!(embedding("the what is").iter().all(|x| *x == 0.0));
        assert!(is_bow("sim-embed-bow") && !is_bow("sim-embed"));
    }
}
