//! Request counters, read by tests and benchmarks through `GET /sim/counters` or
//! [`crate::SimHandle::counters`].
//!
//! Every `/v1` request is counted on arrival and tracked by a [`RequestGuard`] until its
//! response is fully handed to the connection (`completed`) or the client goes away first
//! and the handler future or response stream is dropped (`aborted`). So, between resets,
//! `total_requests == completed + aborted + in_flight`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};

/// Most distinct model names counted; the rest are summed under [`OTHER_MODELS`].
pub const MAX_MODELS: usize = 1024;
pub const OTHER_MODELS: &str = "_other";

/// The counted `/v1` endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Embeddings,
    Models,
}

/// A snapshot of the counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Every `/v1` request, valid or not.
    pub total_requests: u64,
    /// Requests for a served model, by model id.
    pub per_model: BTreeMap<String, u64>,
    pub per_endpoint: EndpointCounts,
    /// Injected `5xx`/`4xx` answers other than `429` (configured rate or directives).
    pub injected_errors: u64,
    /// Injected `429` answers (configured rate or `[[sim:status=429]]`).
    pub injected_429: u64,
    /// Requests being handled now; not zeroed by a reset.
    pub in_flight: u64,
    /// Requests whose response was fully handed to the connection.
    pub completed: u64,
    /// Requests whose client went away before the response was fully sent.
    pub aborted: u64,
}

/// Requests per `/v1` endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointCounts {
    pub chat_completions: u64,
    pub embeddings: u64,
    pub models: u64,
}

/// The live counters behind [`Counters`].
#[derive(Debug, Default)]
pub struct CounterSet {
    total_requests: AtomicU64,
    chat_completions: AtomicU64,
    embeddings: AtomicU64,
    models: AtomicU64,
    per_model: Mutex<BTreeMap<String, u64>>,
    injected_errors: AtomicU64,
    injected_429: AtomicU64,
    in_flight: AtomicU64,
    completed: AtomicU64,
    aborted: AtomicU64,
}

impl CounterSet {
    /// Counts a new request and returns the guard that settles it as completed or aborted.
    pub fn begin(self: &Arc<Self>, endpoint: Endpoint) -> RequestGuard {
        self.total_requests.fetch_add(1, Relaxed);
        let per_endpoint = match endpoint {
            Endpoint::ChatCompletions => &self.chat_completions,
            Endpoint::Embeddings => &self.embeddings,
            Endpoint::Models => &self.models,
        };
        per_endpoint.fetch_add(1, Relaxed);
        self.in_flight.fetch_add(1, Relaxed);
        RequestGuard {
            counters: Arc::clone(self),
            completed: false,
        }
    }

    /// Counts a request for a served model.
    pub fn record_model(&self, model: &str) {
        let mut map = self
            .per_model
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = map.get_mut(model) {
            *n += 1;
        } else if map.len() < MAX_MODELS {
            map.insert(model.to_owned(), 1);
        } else {
            *map.entry(OTHER_MODELS.to_owned()).or_default() += 1;
        }
    }

    /// Counts an injected answer with this status.
    pub fn record_injected(&self, status: u16) {
        if status == 429 {
            self.injected_429.fetch_add(1, Relaxed);
        } else {
            self.injected_errors.fetch_add(1, Relaxed);
        }
    }

    pub fn snapshot(&self) -> Counters {
        let per_model = self
            .per_model
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        Counters {
            total_requests: self.total_requests.load(Relaxed),
            per_model,
            per_endpoint: EndpointCounts {
                chat_completions: self.chat_completions.load(Relaxed),
                embeddings: self.embeddings.load(Relaxed),
                models: self.models.load(Relaxed),
            },
            injected_errors: self.injected_errors.load(Relaxed),
            injected_429: self.injected_429.load(Relaxed),
            in_flight: self.in_flight.load(Relaxed),
            completed: self.completed.load(Relaxed),
            aborted: self.aborted.load(Relaxed),
        }
    }

    /// Zeroes everything except `in_flight`, which live guards still have to settle.
    pub fn reset(&self) {
        for c in [
            &self.total_requests,
            &self.chat_completions,
            &self.embeddings,
            &self.models,
            &self.injected_errors,
            &self.injected_429,
            &self.completed,
            &self.aborted,
        ] {
            c.store(0, Relaxed);
        }
        self.per_model
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

/// Tracks one request; dropping it without [`RequestGuard::complete`] counts an abort.
///
/// It lives in the handler future (plain answers) or in the response stream (streaming), so
/// hyper dropping either because the client went away is what marks the request aborted.
#[derive(Debug)]
pub struct RequestGuard {
    counters: Arc<CounterSet>,
    completed: bool,
}

impl RequestGuard {
    /// The response has been fully handed over.
    pub fn complete(mut self) {
        self.completed = true;
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.counters.in_flight.fetch_sub(1, Relaxed);
        let outcome = if self.completed {
            &self.counters.completed
        } else {
            &self.counters.aborted
        };
        outcome.fetch_add(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_settle_as_completed_or_aborted() {
        let set = Arc::new(CounterSet::default());
        let a = set.begin(Endpoint::ChatCompletions);
        let b = set.begin(Endpoint::Embeddings);
        assert_eq!(set.snapshot().in_flight, 2);
        a.complete();
        drop(b);
        let c = set.snapshot();
        assert_eq!(
            (c.total_requests, c.in_flight, c.completed, c.aborted),
            (2, 0, 1, 1)
        );
        assert_eq!(
            c.per_endpoint,
            EndpointCounts {
                chat_completions: 1,
                embeddings: 1,
                models: 0
            }
        );
    }

    #[test]
    fn reset_keeps_in_flight() {
        let set = Arc::new(CounterSet::default());
        let g = set.begin(Endpoint::Models);
        set.record_model("sim-small");
        set.record_injected(429);
        set.record_injected(500);
        set.reset();
        let c = set.snapshot();
        assert_eq!(
            c,
            Counters {
                in_flight: 1,
                ..Counters::default()
            }
        );
        g.complete();
        assert_eq!(set.snapshot().completed, 1);
    }

    #[test]
    fn per_model_is_bounded() {
        let set = CounterSet::default();
        for i in 0..MAX_MODELS + 5 {
            set.record_model(&format!("m{i}"));
        }
        let c = set.snapshot();
        assert_eq!(c.per_model.len(), MAX_MODELS + 1);
        assert_eq!(c.per_model.get(OTHER_MODELS), Some(&5));
    }
}
