//! NATS JetStream: streams, consumers, publishing with acknowledgement, dead letters
