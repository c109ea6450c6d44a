//! An OpenAI-compatible upstream simulator with latency distributions, errors, 429s and counters
