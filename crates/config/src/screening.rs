//! The `[screening]` section: prompt screening before a job is queued.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What a finding does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScreeningAction {
    /// No screening.
    #[default]
    Off,
    /// Count and log the finding (rule only, never the prompt), queue the job.
    Flag,
    /// Refuse the request: 400 `prompt_rejected`.
    Block,
}

/// The policy for every tenant, and per-tenant overrides.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScreeningConfig {
    pub action: ScreeningAction,
    /// Key ids allowed to send `system` / `developer` messages; empty: every key.
    pub system_keys: Vec<String>,
    /// Extra injection phrases (case-insensitive substrings) besides the built-in ones.
    pub patterns: Vec<String>,
    /// `screening.tenants.<id>`: replaces the policy above for that tenant.
    pub tenants: BTreeMap<String, ScreeningPolicy>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScreeningPolicy {
    pub action: ScreeningAction,
    /// Key ids allowed to send `system` / `developer` messages; empty: every key.
    pub system_keys: Vec<String>,
    /// Extra injection phrases (case-insensitive substrings) besides the built-in ones.
    pub patterns: Vec<String>,
}

/// The policy that applies to one tenant.
#[derive(Debug, Clone, Copy)]
pub struct PolicyRef<'a> {
    pub action: ScreeningAction,
    pub system_keys: &'a [String],
    pub patterns: &'a [String],
}

impl ScreeningConfig {
    pub fn policy(&self, tenant: &str) -> PolicyRef<'_> {
        match self.tenants.get(tenant) {
            Some(p) => PolicyRef {
                action: p.action,
                system_keys: &p.system_keys,
                patterns: &p.patterns,
            },
            None => PolicyRef {
                action: self.action,
                system_keys: &self.system_keys,
                patterns: &self.patterns,
            },
        }
    }
}
