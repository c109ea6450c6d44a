//! Redis: the key schema, job records with monotonic state transitions, event history
