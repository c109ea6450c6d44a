//! Any bytes on the broker: decoding returns an envelope or an error, never panics, and a
//! decoded envelope encodes again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_protocol::JobEnvelope;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = JobEnvelope::decode(data) {
        let _ = env.encode();
    }
});
