//! End-to-end tests against real NATS JetStream and Redis
