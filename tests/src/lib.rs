//! Harness for the end-to-end tests: real NATS JetStream and Redis (started by
//! `scripts/test.sh`, found through `SLUICE_TEST_NATS_URL` and `SLUICE_TEST_REDIS_URL`), the
//! simulator as the upstream, and Sluice's services in process or as child processes.
//!
//! Each [`TestEnv`] isolates itself with a unique NATS namespace and Redis key prefix, so
//! tests run in parallel against the same servers.

pub mod otlp;
pub mod own_nats;
pub mod own_redis;
pub mod receiver;
pub mod sse;

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use sluice_config::{Config, KeyConfig, TenantConfig, hash_api_key};

pub const ACME_KEY: &str = "sk-test-acme";
pub const OTHER_KEY: &str = "sk-test-other";

pub fn nats_url() -> String {
    std::env::var("SLUICE_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

pub fn redis_url() -> String {
    std::env::var("SLUICE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A unique name for this test's streams and keys.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        uuid::Uuid::now_v7()
            .simple()
            .to_string()
            .get(20..)
            .unwrap_or("x")
    )
}

/// One isolated Sluice deployment for one test.
pub struct TestEnv {
    pub cfg: Config,
    pub http: reqwest::Client,
}

impl TestEnv {
    /// A config with its own namespace and prefix, tenants `acme` and `other`, fast retries.
    pub fn new() -> TestEnv {
        sluice_telemetry::metrics_handle();
        let ns = unique("t");
        let mut cfg = Config::default();
        cfg.nats.url = nats_url();
        cfg.nats.namespace = ns.clone();
        // JetStream reserves a stream's max_bytes up front; keep test streams small so a
        // long-lived server is not exhausted by the streams of earlier runs.
        cfg.nats.max_queue_bytes = 8 * 1024 * 1024;
        cfg.redis.url = redis_url();
        cfg.redis.prefix = format!("{ns}:");
        cfg.redis.result_ttl = Duration::from_secs(600);
        cfg.ingest.listen = "127.0.0.1:0".into();
        cfg.worker.concurrency = 8;
        cfg.worker.ack_wait = Duration::from_secs(5);
        cfg.worker.backoff_base = Duration::from_millis(50);
        cfg.worker.backoff_max = Duration::from_millis(500);
        cfg.worker.shutdown_grace = Duration::from_secs(5);
        cfg.worker.idle_poll = Duration::from_millis(100);
        cfg.tenants = vec![
            TenantConfig {
                id: "acme".into(),
                keys: vec![KeyConfig {
                    id: "acme-1".into(),
                    sha256: hash_api_key(ACME_KEY),
                }],
            },
            TenantConfig {
                id: "other".into(),
                keys: vec![KeyConfig {
                    id: "other-1".into(),
                    sha256: hash_api_key(OTHER_KEY),
                }],
            },
        ];
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        TestEnv { cfg, http }
    }

    pub async fn sim(&mut self, sim_cfg: sluice_sim::SimConfig) -> Result<sluice_sim::SimHandle> {
        let addr: SocketAddr = "127.0.0.1:0".parse()?;
        let sim = sluice_sim::start(sim_cfg, addr).await?;
        self.cfg.upstream.base_url = sim.base_url();
        Ok(sim)
    }

    /// An ingest server, once it reports ready.
    pub async fn ingest(&self) -> Result<sluice_ingest::Server> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let server = sluice_ingest::Server::start(self.ingest_settings()?, listener).await?;
        let url = format!("{}/readyz", server.base_url());
        wait_until(Duration::from_secs(20), || async {
            Ok(self
                .http
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200))
        })
        .await?;
        Ok(server)
    }

    pub async fn worker(&self) -> Result<sluice_worker::Worker> {
        sluice_worker::Worker::start(sluice_config::WorkerSettings::new(&self.cfg)?).await
    }

    /// Ingest's runtime settings from this environment's configuration.
    pub fn ingest_settings(&self) -> Result<sluice_config::IngestSettings> {
        Ok(sluice_config::IngestSettings::new(&self.cfg)?)
    }

    /// The same worker as a child process (so a test can SIGKILL it).
    pub fn worker_process(&self) -> Result<tokio::process::Child> {
        self.worker_process_with(None, &[])
    }

    /// [`TestEnv::worker_process`] reading the TOML file `config` first, with `extra`
    /// `SLUICE_…` variables on top.
    pub fn worker_process_with(
        &self,
        config: Option<&std::path::Path>,
        extra: &[(&str, String)],
    ) -> Result<tokio::process::Child> {
        let c = &self.cfg;
        let mut cmd = tokio::process::Command::new(binary("sluice-worker")?);
        if let Some(path) = config {
            cmd.arg("--config").arg(path);
        }
        let child = cmd
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "warn")
            // The benchmark's one-thread set-up (current-thread scheduler), so the tests that
            // kill or drain a worker process cover it; in-process workers use the test's pool.
            .env("TOKIO_WORKER_THREADS", "1")
            .env("SLUICE_NATS__URL", &c.nats.url)
            .env("SLUICE_NATS__NAMESPACE", &c.nats.namespace)
            .env(
                "SLUICE_NATS__MAX_QUEUE_BYTES",
                c.nats.max_queue_bytes.to_string(),
            )
            .env("SLUICE_REDIS__URL", &c.redis.url)
            .env("SLUICE_REDIS__PREFIX", format!("\"{}\"", c.redis.prefix))
            .env("SLUICE_UPSTREAM__BASE_URL", &c.upstream.base_url)
            .env(
                "SLUICE_WORKER__CONCURRENCY",
                c.worker.concurrency.to_string(),
            )
            .env(
                "SLUICE_WORKER__ACK_WAIT_S",
                c.worker.ack_wait.as_secs().to_string(),
            )
            .env(
                "SLUICE_WORKER__IDLE_POLL_MS",
                c.worker.idle_poll.as_millis().to_string(),
            )
            .env(
                "SLUICE_WORKER__SHUTDOWN_GRACE_S",
                c.worker.shutdown_grace.as_secs().to_string(),
            )
            .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting sluice-worker")?;
        Ok(child)
    }

    pub async fn queue(&self) -> Result<sluice_queue::Queue> {
        let nats = sluice_config::NatsSettings::new(&self.cfg.nats)?;
        let q = sluice_queue::Queue::connect(&nats, "sluice-test").await?;
        wait_until(Duration::from_secs(10), || async { Ok(q.is_connected()) }).await?;
        q.ensure_streams().await?;
        Ok(q)
    }

    pub fn store(&self) -> Result<sluice_store::Store> {
        Ok(sluice_store::Store::new(&self.cfg.redis)?)
    }

    /// Budget tokens `tenant` has in use this month, straight from Redis.
    pub async fn budget_tokens_used(&self, tenant: &str) -> Result<u64> {
        let (period, _) = sluice_governance::period::current(
            sluice_config::BudgetPeriod::Month,
            sluice_store::now_ms(),
        );
        let store = self.store()?;
        let key = store.keys().budget(tenant, &period);
        let mut conn = store.conn().await?;
        let v: Option<u64> = redis::cmd("HGET")
            .arg(key)
            .arg("tokens")
            .query_async(&mut conn)
            .await?;
        Ok(v.unwrap_or(0))
    }
}

impl Default for TestEnv {
    fn default() -> Self {
        TestEnv::new()
    }
}

/// Sends SIGTERM to a child process.
pub fn terminate(child: &tokio::process::Child) -> Result<()> {
    let pid = child.id().context("child already exited")?;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -TERM {pid} failed");
    Ok(())
}

/// Path of a workspace binary built next to the test executable (`scripts/test.sh` builds
/// them before running the tests).
pub fn binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe
        .parent()
        .context("test executable has no folder")?
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} not found; run `cargo build --bins` first",
            path.display()
        );
    }
    Ok(path)
}

/// A chat request body for the simulator's default model.
pub fn chat_body(content: &str) -> Value {
    json!({ "model": "sim-small", "messages": [{ "role": "user", "content": content }], "max_tokens": 32 })
}

/// Polls `check` until it returns true, failing after `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let start = Instant::now();
    loop {
        if check().await? {
            return Ok(());
        }
        if start.elapsed() > limit {
            bail!("condition not met within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A thin client for the Sluice HTTP API.
pub struct Api {
    pub base: String,
    pub key: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(base: String, key: &str) -> Api {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        Api {
            base,
            key: key.to_string(),
            http,
        }
    }

    pub async fn submit(&self, body: &Value) -> Result<(u16, reqwest::header::HeaderMap, Value)> {
        self.submit_raw(serde_json::to_vec(body)?).await
    }

    pub async fn submit_raw(
        &self,
        body: Vec<u8>,
    ) -> Result<(u16, reqwest::header::HeaderMap, Value)> {
        let resp = self
            .http
            .post(format!("{}/v1/jobs", self.base))
            .bearer_auth(&self.key)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let json = resp.json::<Value>().await.unwrap_or(Value::Null);
        Ok((status, headers, json))
    }

    /// Submits and insists on 202; returns the job id.
    pub async fn submit_ok(&self, body: &Value) -> Result<String> {
        let (status, _, json) = self.submit(body).await?;
        if status != 202 {
            bail!("submit answered {status}: {json}");
        }
        json["id"]
            .as_str()
            .map(str::to_string)
            .context("no id in 202 body")
    }

    pub async fn job(&self, id: &str) -> Result<(u16, Value)> {
        let resp = self
            .http
            .get(format!("{}/v1/jobs/{id}", self.base))
            .bearer_auth(&self.key)
            .send()
            .await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json::<Value>().await.unwrap_or(Value::Null)))
    }

    /// Polls the job until its status is one of `states`.
    pub async fn wait_status(&self, id: &str, states: &[&str], limit: Duration) -> Result<Value> {
        let start = Instant::now();
        loop {
            let (code, job) = self.job(id).await?;
            if code == 200 && states.iter().any(|s| job["status"] == *s) {
                return Ok(job);
            }
            if start.elapsed() > limit {
                bail!("job {id} not in {states:?} within {limit:?}; last: {code} {job}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// Waits until the JOBS stream holds no message (every job acknowledged or terminated).
pub async fn wait_jobs_settled(queue: &sluice_queue::Queue, limit: Duration) -> Result<()> {
    let mut stream = queue
        .jetstream()
        .get_stream(queue.subjects().jobs_stream())
        .await?;
    let start = Instant::now();
    while stream.info().await?.state.messages > 0 {
        if start.elapsed() > limit {
            bail!("jobs not settled within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Ok(())
}
