//! The job state machine in Redis: monotonic, atomic, whoever writes first.

use std::collections::BTreeMap;

use anyhow::Result;
use sluice_e2e::TestEnv;
use sluice_protocol::{JobEnvelope, JobKind, JobStatus, Priority, SCHEMA_VERSION};
use sluice_store::{JobError, Transition};

fn envelope() -> JobEnvelope {
    JobEnvelope {
        schema: SCHEMA_VERSION,
        id: uuid::Uuid::now_v7(),
        tenant: "acme".into(),
        priority: Priority::Normal,
        kind: JobKind::ChatCompletion,
        model: "sim-small".into(),
        request: b"{}".to_vec(),
        created_at_ms: 1_000,
        deadline_ms: None,
        replays: 0,
        traceparent: None,
        metadata: BTreeMap::from([("k".into(), "v".into())]),
        stream: false,
        reserved: true,
        cache: None,
        reservation: None,
    }
}

fn failure() -> JobError {
    JobError::new(sluice_protocol::ErrorCode::UpstreamError, "m")
}

#[tokio::test]
async fn a_late_queued_write_never_moves_a_started_job_back() -> Result<()> {
    let env = TestEnv::new();
    let store = env.store()?;
    let job = envelope();
    // The worker got there first (ingest's write was delayed).
    assert_eq!(store.record_started(&job, 1).await?, Transition::Applied);
    assert_eq!(
        store.record_queued(&job).await?,
        Transition::Refused {
            current: JobStatus::InProgress
        }
    );
    let rec = store.get(job.id).await?.expect("record exists");
    assert_eq!(rec.status, JobStatus::InProgress);
    assert_eq!(
        rec.tenant, "acme",
        "whoever writes first creates a complete record"
    );
    assert_eq!(rec.metadata.get("k").map(String::as_str), Some("v"));
    assert_eq!(rec.queued_at_ms, Some(1_000));
    // History still starts with `queued`.
    let events = store.events_after(job.id, 0).await?;
    assert_eq!(events.len(), 2);
    assert!(
        events[0].contains("\"queued\"") && events[1].contains("\"in_progress\""),
        "{events:?}"
    );
    assert!(events[0].contains("\"at\":1000"), "{events:?}");
    assert!(events[1].contains("\"attempt\":1"), "{events:?}");
    Ok(())
}

#[tokio::test]
async fn terminal_states_are_final() -> Result<()> {
    let env = TestEnv::new();
    let store = env.store()?;
    let job = envelope();
    store.record_queued(&job).await?;
    store.record_started(&job, 1).await?;
    assert_eq!(
        store.record_completed(&job, br#"{"ok":true}"#).await?,
        Transition::Applied
    );
    let done = Transition::Refused {
        current: JobStatus::Completed,
    };
    assert_eq!(store.record_started(&job, 2).await?, done);
    assert_eq!(
        store.record_completed(&job, br#"{"ok":false}"#).await?,
        done
    );
    assert_eq!(
        store
            .record_ended(&job, JobStatus::Failed, &failure())
            .await?,
        done
    );
    assert_eq!(store.record_queued(&job).await?, done);
    let rec = store.get(job.id).await?.expect("record exists");
    assert_eq!(
        rec.result,
        Some(serde_json::json!({"ok": true})),
        "the first result stands"
    );
    assert_eq!(rec.attempts, 1);
    assert!(rec.error.is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writers_record_exactly_one_outcome() -> Result<()> {
    let env = TestEnv::new();
    let store = env.store()?;
    for _ in 0..20 {
        let job = envelope();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..8u64 {
            let store = store.clone();
            let job = job.clone();
            tasks.spawn(async move {
                match i % 4 {
                    0 => store.record_queued(&job).await,
                    1 => store.record_started(&job, i).await,
                    2 => {
                        store
                            .record_completed(&job, format!("{{\"n\":{i}}}").as_bytes())
                            .await
                    }
                    _ => {
                        store
                            .record_ended(&job, JobStatus::Failed, &failure())
                            .await
                    }
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r??;
        }
        let mut terminal_applied = 0;
        let events: Vec<serde_json::Value> = store
            .events_after(job.id, 0)
            .await?
            .iter()
            .filter_map(|e| serde_json::from_str(e).ok())
            .collect();
        for e in &events {
            if ["completed", "failed"].contains(&e["status"].as_str().unwrap_or_default()) {
                terminal_applied += 1;
            }
        }
        assert_eq!(terminal_applied, 1, "{events:?}");
        let rec = store.get(job.id).await?.expect("record exists");
        assert!(rec.status.is_terminal());
        assert_eq!(rec.result.is_some(), rec.status == JobStatus::Completed);
        assert_eq!(rec.error.is_some(), rec.status == JobStatus::Failed);
    }
    Ok(())
}

#[tokio::test]
async fn a_tombstoned_job_never_starts() -> Result<()> {
    let env = TestEnv::new();
    let store = env.store()?;
    let job = envelope();
    store.record_rejected(job.id).await?;
    assert_eq!(store.record_started(&job, 1).await?, Transition::Rejected);
    assert_eq!(store.get(job.id).await?, None, "no record is created");
    // An accepted job is not affected by another job's tombstone.
    let other = envelope();
    assert_eq!(store.record_started(&other, 1).await?, Transition::Applied);
    Ok(())
}

/// Ingest's script-free creation and the workers' short transitions write the same record
/// and history as the full state machine does.
#[tokio::test]
async fn a_created_record_reads_like_one_the_state_machine_wrote() -> Result<()> {
    let env = TestEnv::new();
    let store = env.store()?;
    let (created, transitioned) = (envelope(), envelope());
    assert!(store.create_queued((&created).into()).await?);
    store.record_queued(&transitioned).await?;
    for job in [&created, &transitioned] {
        assert_eq!(store.record_started(job, 1).await?, Transition::Applied);
        assert_eq!(store.record_started(job, 2).await?, Transition::Applied);
        assert_eq!(
            store.record_completed(job, br#"{"ok":true}"#).await?,
            Transition::Applied
        );
        assert_eq!(
            store.record_started(job, 3).await?,
            Transition::Refused {
                current: JobStatus::Completed
            }
        );
    }
    let (a, b) = (
        store.get(created.id).await?.expect("created"),
        store.get(transitioned.id).await?.expect("transitioned"),
    );
    assert_eq!(a.status, JobStatus::Completed);
    assert_eq!(a.attempts, 2);
    assert_eq!(
        (&a.tenant, &a.model, a.priority, &a.metadata, &a.result),
        (&b.tenant, &b.model, b.priority, &b.metadata, &b.result)
    );
    assert!(
        a.queued_at_ms.is_some() && a.in_progress_at_ms.is_some() && a.completed_at_ms.is_some()
    );
    let shape = |events: Vec<String>| -> Vec<(String, Option<u64>)> {
        events
            .iter()
            .map(|e| {
                let v: serde_json::Value = serde_json::from_str(e).unwrap_or_default();
                assert!(v["at"].as_u64().is_some(), "{e}");
                (
                    v["status"].as_str().unwrap_or_default().to_string(),
                    v["attempt"].as_u64(),
                )
            })
            .collect()
    };
    let expected: Vec<(String, Option<u64>)> = vec![
        ("queued".into(), None),
        ("in_progress".into(), Some(1)),
        ("in_progress".into(), Some(2)),
        ("completed".into(), None),
    ];
    assert_eq!(shape(store.events_after(created.id, 0).await?), expected);
    assert_eq!(
        shape(store.events_after(transitioned.id, 0).await?),
        expected
    );
    // Both keys of the created job expire.
    let mut conn = store.conn().await?;
    for key in [
        store.keys().job(created.id),
        store.keys().job_events(created.id),
    ] {
        let ttl: i64 = redis::cmd("TTL").arg(&key).query_async(&mut conn).await?;
        assert!(ttl > 0, "{key} has TTL {ttl}");
    }
    Ok(())
}

/// Ingest's creation never overwrites: a write that lands after a worker's finds its record,
/// and one that lands after the publish was rejected finds the tombstone.
#[tokio::test]
async fn a_late_creation_changes_nothing() -> Result<()> {
    let env = TestEnv::new();
    let store = env.store()?;
    let started = envelope();
    assert_eq!(
        store.record_started(&started, 1).await?,
        Transition::Applied
    );
    assert!(!store.create_queued((&started).into()).await?);
    let rec = store.get(started.id).await?.expect("record exists");
    assert_eq!(rec.status, JobStatus::InProgress);
    assert_eq!(store.events_after(started.id, 0).await?.len(), 2);

    let rejected = envelope();
    store.record_rejected(rejected.id).await?;
    assert!(!store.create_queued((&rejected).into()).await?);
    assert_eq!(store.get(rejected.id).await?, None);
    assert_eq!(
        store.record_started(&rejected, 1).await?,
        Transition::Rejected
    );
    Ok(())
}
