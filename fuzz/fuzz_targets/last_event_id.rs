//! Any `Last-Event-ID` header value: the parser answers an id within bounds or nothing,
//! never panics, and what it accepts is the number the value spells.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_ingest::routes::events::{MAX_EVENT_ID, last_event_id};

fuzz_target!(|data: &[u8]| {
    let Ok(v) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(n) = last_event_id(v) {
        assert!(n <= MAX_EVENT_ID);
        assert_eq!(v.trim().trim_start_matches('+').trim_start_matches('0'), {
            let s = n.to_string();
            if n == 0 { String::new() } else { s }
        });
    }
});
