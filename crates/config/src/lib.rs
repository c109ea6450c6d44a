//! Configuration shared by every Sluice service.
//!
//! One TOML file describes a deployment (`config/dev.toml` is the local one); each service
//! reads the sections it needs. Loading is layered: built-in defaults, then the file, then
//! `SLUICE_<SECTION>__<KEY>` environment variables (`SLUICE_NATS__URL`,
//! `SLUICE_WORKER__CONCURRENCY`, …). Unknown keys are errors, and [`Config::validate`] turns
//! every inconsistency into one clear start-up error. A duration is written as an integer
//! whose key names the unit (`_s`, `_ms`) and read into a `Duration` ([`duration`]). That
//! is the file's phase; each service then builds its runtime settings from it once
//! ([`IngestSettings`], [`WorkerSettings`]: resolved secrets, only the sections it reads),
//! and is given those, not the whole `Config`. Secrets are never written in the file:
//! a secret field holds `env::NAME` and is resolved from the environment into a
//! [`secrecy::SecretString`], which `Debug` does not print.

mod cache;
mod catalog;
mod delivery;
pub mod duration;
mod env;
mod governance;
mod models;
mod screening;
mod secret;
mod sections;
mod settings;
mod webhooks;

use std::path::Path;

pub use cache::{CacheConfig, CacheMode, CacheModelConfig, SemanticConfig, SemanticModelConfig};
pub use delivery::DeliveryConfig;
pub use governance::*;
pub use models::*;
pub use screening::{PolicyRef, ScreeningAction, ScreeningConfig, ScreeningPolicy};
pub use secret::{SecretRef, hash_api_key};
pub use sections::*;
pub use settings::{
    DeliverySettings, HttpSettings, IngestSettings, NatsSettings, ProviderSettings, WorkerRuntime,
    WorkerSettings,
};
pub use webhooks::WebhooksConfig;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config: {0}")]
    Parse(String),
    #[error("invalid config: {0}")]
    Invalid(String),
    #[error("environment variable {name} referenced by the config is not set")]
    MissingSecret { name: String },
    /// One setting is wrong; `field` is its dotted path in the file.
    #[error("invalid config: {field}: {reason}")]
    Field { field: String, reason: String },
}

impl ConfigError {
    pub fn field(field: &str, reason: &str) -> ConfigError {
        ConfigError::Field {
            field: field.to_string(),
            reason: reason.to_string(),
        }
    }
}

impl Config {
    /// Defaults, then `path` (if given), then `SLUICE_…` variables from the process
    /// environment; validated.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        Self::load_with_env(path, &vars)
    }

    /// Like [`Config::load`] with an explicit environment (for tests).
    pub fn load_with_env(
        path: Option<&Path>,
        vars: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.display().to_string(),
                source,
            })?,
            None => String::new(),
        };
        Self::from_toml_with_env(&text, vars)
    }

    pub fn from_toml_with_env(
        text: &str,
        vars: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
        env::overlay(&mut table, vars)?;
        let cfg: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn defaults_are_valid() {
        let cfg = Config::from_toml_with_env("", &[]).unwrap();
        assert_eq!(cfg.nats.url, "nats://127.0.0.1:4222");
        assert!(cfg.worker.concurrency > 0);
    }

    #[test]
    fn environment_overrides_the_file() {
        let vars = vec![
            (
                "SLUICE_NATS__URL".to_string(),
                "nats://10.0.0.1:4333".to_string(),
            ),
            ("SLUICE_WORKER__CONCURRENCY".to_string(), "7".to_string()),
            ("UNRELATED".to_string(), "x".to_string()),
        ];
        let cfg = Config::from_toml_with_env("[worker]\nconcurrency = 3\n", &vars).unwrap();
        assert_eq!(cfg.nats.url, "nats://10.0.0.1:4333");
        assert_eq!(cfg.worker.concurrency, 7);
    }

    #[test]
    fn the_shipped_files_load() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut files: Vec<_> = std::fs::read_dir(root.join("config"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.push(root.join("k8s/base/sluice.toml"));
        assert!(files.len() >= 3, "{files:?}");
        for f in &files {
            let cfg = Config::load_with_env(Some(f), &[]);
            assert!(cfg.is_ok(), "{}: {:?}", f.display(), cfg.err());
        }
        let k8s = Config::load_with_env(Some(&root.join("k8s/base/sluice.toml")), &[]).unwrap();
        assert_eq!(k8s.worker.shutdown_grace, Duration::from_secs(20));
        assert_eq!(k8s.nats.publish_timeout, Duration::from_millis(2000));
    }

    #[test]
    fn durations_keep_their_file_keys_and_environment_overrides() {
        let vars = [
            ("SLUICE_WORKER__ACK_WAIT_S".to_string(), "45".to_string()),
            ("SLUICE_REDIS__RESULT_TTL_S".into(), "600".into()),
            ("SLUICE_WEBHOOKS__SCHEDULE_MS".into(), "[10, 2000]".into()),
            (
                "SLUICE_CACHE__SEMANTIC__STREAM_MAX_AGE_S".into(),
                "90".into(),
            ),
        ];
        let text = "[governance.shedding]\npoll_ms = 250\n[cache.models.sim-small]\nttl_s = 30\n";
        let cfg = Config::from_toml_with_env(text, &vars).unwrap();
        assert_eq!(cfg.worker.ack_wait, Duration::from_secs(45));
        assert_eq!(cfg.redis.result_ttl, Duration::from_secs(600));
        let ms = Duration::from_millis;
        assert_eq!(cfg.webhooks.schedule, vec![ms(10), ms(2000)]);
        assert_eq!(
            cfg.cache.semantic.stream_max_age,
            Some(Duration::from_secs(90))
        );
        assert_eq!(cfg.governance.shedding.poll, ms(250));
        assert_eq!(cfg.cache.ttl("sim-small"), Duration::from_secs(30));
    }

    #[test]
    fn a_duration_over_ten_years_is_refused_naming_its_field() {
        let years = |n: u64| n * 365 * 24 * 3600;
        let cases = [
            format!("[redis]\nresult_ttl_s = {}\n", years(11)),
            format!("[governance]\nidempotency_ttl_s = {}\n", years(11)),
            format!("[webhooks]\nschedule_ms = [5, {}]\n", years(11) * 1000),
            format!("[cache.models.m]\nttl_s = {}\n", years(11)),
        ];
        for (text, field) in cases.iter().zip([
            "redis.result_ttl_s",
            "governance.idempotency_ttl_s",
            "webhooks.schedule_ms",
            "ttl_s",
        ]) {
            let e = Config::from_toml_with_env(text, &[])
                .unwrap_err()
                .to_string();
            assert!(e.contains(field) && e.contains("ten years"), "{text}: {e}");
        }
        let vars = [(
            "SLUICE_WORKER__IDLE_POLL_MS".to_string(),
            i64::MAX.to_string(),
        )];
        let e = Config::from_toml_with_env("", &vars)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("worker.idle_poll_ms") && e.contains("ten years"),
            "{e}"
        );
        // Ten years exactly is allowed.
        let ok = format!("[redis]\nresult_ttl_s = {}\n", years(10));
        assert!(Config::from_toml_with_env(&ok, &[]).is_ok());
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let err = Config::from_toml_with_env("[worker]\nconcurency = 3\n", &[]).unwrap_err();
        assert!(err.to_string().contains("concurency"), "{err}");
        let err =
            Config::from_toml_with_env("", &[("SLUICE_NOPE__X".into(), "1".into())]).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        // Variables that are not SECTION__KEY overrides are left alone.
        let vars = [
            ("SLUICE_CONFIG".to_string(), "x.toml".to_string()),
            ("SLUICE_LOG_FORMAT".into(), "json".into()),
        ];
        assert!(Config::from_toml_with_env("", &vars).is_ok());
    }

    #[test]
    fn validation_catches_nonsense() {
        assert!(Config::from_toml_with_env("[worker]\nconcurrency = 0\n", &[]).is_err());
        assert!(Config::from_toml_with_env("[nats]\nnamespace = \"a.b\"\n", &[]).is_err());
        assert!(Config::from_toml_with_env("[nats]\nring_gap_ms = 0\n", &[]).is_err());
        assert!(Config::from_toml_with_env("[nats]\nring_gap_ms = 5\n", &[]).is_ok());
        assert!(Config::from_toml_with_env("[nats]\nreplicas = 0\n", &[]).is_err());
        assert!(Config::from_toml_with_env("[nats]\nreplicas = 7\n", &[]).is_err());
        let r3 = [("SLUICE_NATS__REPLICAS".to_string(), "3".to_string())];
        assert_eq!(
            Config::from_toml_with_env("", &r3)
                .map(|c| c.nats.replicas)
                .ok(),
            Some(3)
        );
        // A brace in the prefix would be part of every key's Redis Cluster hash tag.
        assert!(Config::from_toml_with_env("[redis]\nprefix = \"s{1}:\"\n", &[]).is_err());
        assert!(Config::from_toml_with_env("[redis]\nprefix = \"s1:\"\n", &[]).is_ok());
        let dup = "[[tenants]]\nid = \"a\"\n[[tenants]]\nid = \"a\"\n";
        assert!(Config::from_toml_with_env(dup, &[]).is_err());
    }
}
