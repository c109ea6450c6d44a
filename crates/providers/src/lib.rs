//! OpenAI-compatible upstream providers: pooled HTTP client and error classification
