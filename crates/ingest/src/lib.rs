//! The HTTP front door: auth, validation, publish to JetStream, job records
