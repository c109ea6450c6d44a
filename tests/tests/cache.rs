//! The response cache in Redis: entries written only by a completed job, single-flight
//! leases that one job holds at a time.

use std::collections::BTreeMap;

use anyhow::Result;
use serde_json::json;
use sluice_cache::{CacheKey, Call, Scope};
use sluice_e2e::TestEnv;
use sluice_protocol::{
    CacheWrite, ErrorCode, JobEnvelope, JobKind, JobStatus, Priority, SCHEMA_VERSION,
};
use sluice_store::{JobError, Lead};
use uuid::Uuid;

fn key(tag: &str) -> CacheKey {
    CacheKey::new(
        Scope::Tenant("acme"),
        Call::Chat,
        "sim-small",
        &json!({"messages": [{"role": "user", "content": tag}], "temperature": 0}),
    )
}

fn envelope(cache: Option<&CacheKey>) -> JobEnvelope {
    JobEnvelope {
        schema: SCHEMA_VERSION,
        id: Uuid::now_v7(),
        tenant: "acme".into(),
        priority: Priority::Normal,
        kind: JobKind::ChatCompletion,
        model: "sim-small".into(),
        request: b"{}".to_vec(),
        created_at_ms: 1_000,
        deadline_ms: None,
        replays: 0,
        traceparent: None,
        metadata: BTreeMap::new(),
        stream: false,
        reserved: false,
        cache: cache.map(|k| CacheWrite {
            key: k.hex(),
            ttl_s: 60,
            stale_s: 0,
            negative_ttl_s: 0,
            semantic: None,
        }),
        reservation: None,
    }
}

const ANSWER: &[u8] = br#"{"object":"chat.completion","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":5,"total_tokens":12}}"#;

#[tokio::test]
async fn a_completed_cacheable_job_stores_its_answer_and_frees_its_lease() -> Result<()> {
    let env = TestEnv::new();
    let store = env.store()?;
    let k = key(&sluice_e2e::unique("q"));
    let job = envelope(Some(&k));
    assert_eq!(store.cache_lead(&k, job.id, 30_000).await?, Lead::Leader);
    assert_eq!(store.cache_get(&k).await?, None);

    store.record_started(&job, 1).await?;
    store.record_completed(&job, ANSWER).await?;

    let entry = store.cache_get(&k).await?.expect("the answer is cached");
    assert_eq!(entry.source_job, job.id);
    assert_eq!(entry.body, ANSWER);
    assert_eq!((entry.prompt_tokens, entry.completion_tokens), (7, 5));
    // The lease went with the write: the next miss may lead.
    let next = Uuid::now_v7();
    assert_eq!(store.cache_lead(&k, next, 30_000).await?, Lead::Leader);
    Ok(())
}

#[tokio::test]
async fn failed_and_uncached_jobs_store_nothing() -> Result<()> {
    let env = TestEnv::new();
    let store = env.store()?;
    let k = key(&sluice_e2e::unique("q"));
    let failed = envelope(Some(&k));
    store.record_started(&failed, 1).await?;
    let err = JobError::new(ErrorCode::UpstreamError, "m");
    store.record_ended(&failed, JobStatus::Failed, &err).await?;
    assert_eq!(store.cache_get(&k).await?, None);

    let plain = envelope(None);
    store.record_completed(&plain, ANSWER).await?;
    assert_eq!(store.cache_get(&k).await?, None);
    Ok(())
}

#[tokio::test]
async fn one_job_leads_and_the_others_follow_it() -> Result<()> {
    let env = TestEnv::new();
    let store = env.store()?;
    let k = key(&sluice_e2e::unique("q"));
    let jobs: Vec<Uuid> = (0..20).map(|_| Uuid::now_v7()).collect();
    let leads =
        futures_util::future::join_all(jobs.iter().map(|j| store.cache_lead(&k, *j, 30_000)))
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
    let leaders: Vec<usize> = (0..leads.len())
        .filter(|i| leads[*i] == Lead::Leader)
        .collect();
    assert_eq!(leaders.len(), 1, "exactly one leader: {leads:?}");
    let leader = jobs[leaders[0]];
    for l in &leads {
        assert!(matches!(l, Lead::Leader) || *l == Lead::Follower(leader));
    }
    // Only the holder frees the lease.
    store
        .cache_release(&k, jobs[(leaders[0] + 1) % jobs.len()])
        .await?;
    assert_eq!(
        store.cache_lead(&k, Uuid::now_v7(), 30_000).await?,
        Lead::Follower(leader)
    );
    store.cache_release(&k, leader).await?;
    assert_eq!(
        store.cache_lead(&k, Uuid::now_v7(), 30_000).await?,
        Lead::Leader
    );
    Ok(())
}

#[tokio::test]
async fn a_job_that_ends_without_an_answer_frees_its_lease() -> Result<()> {
    let env = TestEnv::new();
    let store = env.store()?;
    let k = key(&sluice_e2e::unique("q"));
    let job = envelope(Some(&k));
    assert_eq!(store.cache_lead(&k, job.id, 30_000).await?, Lead::Leader);
    assert_eq!(
        store.cache_lead(&k, Uuid::now_v7(), 30_000).await?,
        Lead::Follower(job.id)
    );
    store.record_started(&job, 1).await?;
    let err = JobError::new(ErrorCode::UpstreamError, "m");
    store.record_ended(&job, JobStatus::Failed, &err).await?;
    // The next identical request leads (calls upstream) instead of sharing the failure.
    assert_eq!(
        store.cache_lead(&k, Uuid::now_v7(), 30_000).await?,
        Lead::Leader
    );
    Ok(())
}
