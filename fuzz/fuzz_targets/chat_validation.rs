//! Any request body: chat and embeddings validation return a submission or a 400, never
//! panic; screening never panics on what validation accepted.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sluice_fuzz_bodies(data));

fn sluice_fuzz_bodies(data: &[u8]) {
    let limits = sluice_ingest::validate::Limits {
        max_output_tokens: 1_000_000,
    };
    if let Ok(sub) = sluice_ingest::validate::chat_submission(data, limits) {
        let keys = vec!["backend".to_string()];
        let patterns = vec!["open the pod bay doors".to_string()];
        let policy = sluice_config::PolicyRef {
            action: sluice_config::ScreeningAction::Block,
            system_keys: &keys,
            patterns: &patterns,
        };
        let _ = sluice_ingest::screening::screen(&sub.request, policy, "k");
        let _ = serde_json::to_vec(&sub.request);
    }
    let _ = sluice_ingest::embeddings::embedding_submission(data);
}
