//! The one loader of Sluice's Redis scripts.
//!
//! Each script is a `.lua` file beside its crate's `src/` (`crates/store/lua/`,
//! `crates/governance/lua/`) that opens with its KEYS/ARGV contract, compiled in with
//! `include_str!` into a `static` [`Lua`]. The script's text and SHA-1 are built once per
//! process, on first use; every call is an `EVALSHA`, and redis-rs's [`redis::Script`] answers
//! a `NOSCRIPT` (a restarted or failed-over Redis that lost its script cache) by loading the
//! script and retrying, so nothing needs loading at start-up.
//!
//! A script may have a generated prelude (Lua built from the Rust rule it applies, such as
//! the job status rule of [`crate::jobs`]), prepended to the file's text once.

use std::sync::OnceLock;

use redis::{FromRedisValue, Script, ScriptInvocation, ToRedisArgs};

use crate::{Store, StoreError};

/// A Redis script: its file's text, an optional generated prelude, and the compiled
/// [`Script`] (built once).
pub struct Lua {
    name: &'static str,
    source: &'static str,
    prelude: Option<fn() -> String>,
    script: OnceLock<Script>,
}

impl Lua {
    pub const fn new(name: &'static str, source: &'static str) -> Lua {
        Lua {
            name,
            source,
            prelude: None,
            script: OnceLock::new(),
        }
    }

    /// A script whose text is `prelude()` followed by `source`.
    pub const fn with_prelude(
        name: &'static str,
        prelude: fn() -> String,
        source: &'static str,
    ) -> Lua {
        Lua {
            name,
            source,
            prelude: Some(prelude),
            script: OnceLock::new(),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The text sent to Redis.
    pub fn code(&self) -> String {
        match self.prelude {
            Some(prelude) => format!("{}\n{}", prelude(), self.source),
            None => self.source.to_string(),
        }
    }

    /// The contract: the comment lines the file opens with.
    pub fn contract(&self) -> String {
        self.source
            .lines()
            .take_while(|l| l.starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn script(&self) -> &Script {
        self.script.get_or_init(|| Script::new(&self.code()))
    }

    /// Starts a call with its first key (`KEYS[1]`).
    pub fn key<T: ToRedisArgs>(&'static self, key: T) -> ScriptInvocation<'static> {
        self.script().key(key)
    }
}

impl Store {
    /// Runs a prepared script call on one of the shared connections, within the command
    /// timeout.
    pub async fn invoke<T: FromRedisValue>(
        &self,
        call: &ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn().await?;
        self.timed(call.invoke_async(&mut conn)).await
    }
}

/// The store's scripts (for the contract and compile checks).
pub const SCRIPTS: &[&Lua] = &[
    &crate::jobs::TRANSITION,
    &crate::jobs::CREATE,
    &crate::jobs::ADVANCE,
    &crate::jobs::START,
    &crate::jobs::FAILED_ATTEMPT,
    &crate::replay::REPLAY,
    &crate::replay::ROUTE,
    &crate::webhooks::CREATE_ENDPOINT,
];

/// Checks that each script opens with a contract naming its KEYS and ARGV, and that Redis
/// compiles it (`SCRIPT LOAD`). For tests of the crates that own scripts.
pub async fn check(store: &Store, scripts: &[&'static Lua]) -> Result<(), String> {
    for lua in scripts {
        let contract = lua.contract();
        if !(contract.contains("KEYS") && contract.contains("ARGV")) {
            return Err(format!(
                "{}.lua must open with its KEYS/ARGV contract, found {contract:?}",
                lua.name()
            ));
        }
        let mut conn = store.conn().await.map_err(|e| e.to_string())?;
        let sha: String = store
            .timed(lua.script().prepare_invoke().load_async(&mut conn))
            .await
            .map_err(|e| format!("{}.lua: {e}", lua.name()))?;
        if sha != lua.script().get_hash() {
            return Err(format!("{}.lua: Redis hashed it as {sha}", lua.name()));
        }
    }
    Ok(())
}
