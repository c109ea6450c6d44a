//! Workers: bounded, priority-aware JetStream consumers calling providers and recording outcomes
