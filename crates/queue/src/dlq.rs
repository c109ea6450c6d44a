//! Browsing and replaying the dead-letter stream (`sluice dlq …` and the admin API).
//!
//! - [`Queue::dlq_list`]: entries matching a [`DlqFilter`] (tenant and reason through the
//!   subject `dlq.<reason>.<tenant>`, model and time window from the entry), read with an
//!   ephemeral ordered consumer, oldest first, up to a limit.
//! - [`Queue::dlq_show`]: one entry by its DLQ sequence.
//! - [`Queue::dlq_replay`]: re-queues matching entries at a bounded rate (or only reports
//!   them, `dry_run`). Each replay first resets the job record through a [`ReplayLedger`]
//!   (the store's audited replay transition: failed → queued, history kept), then publishes the envelope with a
//!   fresh broker message id (`<job id>-replay-<n>`, so the duplicate window does not
//!   swallow it) and the same job id, and finally removes the entry from the DLQ. Undecodable
//!   (poison) messages are listed and shown but never replayed. An exhausted webhook
//!   delivery (`webhook_exhausted`) is published back to its `hooks.<tenant>` subject as it
//!   was, for a fresh schedule of attempts (its job is not touched).

use std::time::Duration;

use async_nats::{HeaderMap, jetstream::consumer::pull::OrderedConfig};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Serialize;
use sluice_protocol::{DeadLetterReason, JobEnvelope, Replay, ReplayLedger};
use uuid::Uuid;

use crate::{Queue, QueueError, broker};

/// Most entries one list or replay reads.
pub const MAX_LIMIT: usize = 10_000;

#[derive(Debug, Clone, Default)]
pub struct DlqFilter {
    pub tenant: Option<String>,
    pub reason: Option<String>,
    pub model: Option<String>,
    /// Dead-lettered at or after / before (ms since the epoch).
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
    /// Only these DLQ sequences (empty: all).
    pub sequences: Vec<u64>,
    pub limit: usize,
}

/// One dead letter. Never carries the request itself (prompts stay out of listings).
#[derive(Debug, Clone, Serialize)]
pub struct DlqEntry {
    pub seq: u64,
    pub reason: String,
    pub tenant: String,
    pub job_id: Option<String>,
    pub model: Option<String>,
    pub original_subject: String,
    pub attempts: u64,
    pub error: String,
    pub dead_lettered_at_ms: u64,
    pub payload_bytes: usize,
    pub replays: Option<u32>,
    #[serde(skip)]
    payload: Bytes,
}

#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Replays per second (at least 0.1).
    pub rate_per_s: f64,
    pub dry_run: bool,
    /// Who asked (recorded in the job's history).
    pub actor: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplayReport {
    pub dry_run: bool,
    /// (DLQ sequence, job id) replayed, or that would be in a dry run.
    pub replayed: Vec<(u64, String)>,
    /// (DLQ sequence, why not).
    pub skipped: Vec<(u64, String)>,
}

fn header(h: &HeaderMap, name: &str) -> String {
    h.get(name).map(|v| v.to_string()).unwrap_or_default()
}

impl DlqEntry {
    fn from_parts(
        seq: u64,
        headers: &HeaderMap,
        payload: Bytes,
        at_nanos: i128,
        subject: &str,
    ) -> DlqEntry {
        let env = JobEnvelope::decode(&payload).ok();
        // dlq.<reason>.<tenant>, maybe behind a namespace token.
        let mut tokens = subject.rsplit('.');
        let tenant = tokens.next().unwrap_or_default().to_string();
        let reason_token = tokens.next().unwrap_or_default().to_string();
        let reason = Some(header(headers, "Sluice-Reason"))
            .filter(|r| !r.is_empty())
            .unwrap_or(reason_token);
        DlqEntry {
            seq,
            reason,
            tenant,
            job_id: Some(header(headers, "Sluice-Job-Id")).filter(|s| !s.is_empty()),
            model: env.as_ref().map(|e| e.model.clone()),
            original_subject: header(headers, "Sluice-Original-Subject"),
            attempts: header(headers, "Sluice-Attempts").parse().unwrap_or(0),
            error: header(headers, "Sluice-Error"),
            dead_lettered_at_ms: u64::try_from(at_nanos / 1_000_000).unwrap_or(0),
            payload_bytes: payload.len(),
            replays: env.as_ref().map(|e| e.replays),
            payload,
        }
    }

    fn matches(&self, f: &DlqFilter) -> bool {
        f.model
            .as_ref()
            .is_none_or(|m| self.model.as_ref() == Some(m))
            && f.since_ms.is_none_or(|s| self.dead_lettered_at_ms >= s)
            && f.until_ms.is_none_or(|u| self.dead_lettered_at_ms < u)
            && (f.sequences.is_empty() || f.sequences.contains(&self.seq))
    }

    pub fn envelope(&self) -> Option<JobEnvelope> {
        JobEnvelope::decode(&self.payload).ok()
    }
}

impl Queue {
    /// Entries matching `f`, oldest first.
    pub async fn dlq_list(&self, f: &DlqFilter) -> Result<Vec<DlqEntry>, QueueError> {
        let limit = f.limit.clamp(1, MAX_LIMIT);
        let token = |v: &Option<String>| match v {
            Some(t) if sluice_protocol::subjects::is_token(t) => Ok(t.clone()),
            Some(_) => Err(QueueError::Broker(
                "a tenant or reason filter must be one subject token".into(),
            )),
            None => Ok("*".to_string()),
        };
        let filter_subject = self.subjects.dlq(&token(&f.reason)?, &token(&f.tenant)?);
        let mut stream = match self.js.get_stream(self.subjects.dlq_stream()).await {
            Ok(s) => s,
            // No worker has run yet, so nothing was ever dead-lettered.
            Err(e)
                if matches!(e.kind(), async_nats::jetstream::context::GetStreamErrorKind::JetStream(j)
                    if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND) =>
            {
                return Ok(Vec::new());
            }
            Err(e) => return Err(broker(e)),
        };
        if stream.info().await.map_err(broker)?.state.messages == 0 {
            return Ok(Vec::new());
        }
        let consumer = stream
            .create_consumer(OrderedConfig {
                filter_subject,
                ..Default::default()
            })
            .await
            .map_err(broker)?;
        let mut messages = consumer.messages().await.map_err(broker)?;
        let mut out = Vec::new();
        loop {
            // Nothing (more) matching: the ordered consumer just waits, so a short timeout
            // ends the listing; `pending == 0` ends it early.
            let next = match tokio::time::timeout(Duration::from_millis(500), messages.next()).await
            {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => return Err(broker(e)),
                Ok(None) | Err(_) => break,
            };
            let (seq, pending, at) = match next.info() {
                Ok(i) => (
                    i.stream_sequence,
                    i.pending,
                    i.published.unix_timestamp_nanos(),
                ),
                Err(_) => continue,
            };
            let headers = next.headers.clone().unwrap_or_default();
            let entry = DlqEntry::from_parts(
                seq,
                &headers,
                next.payload.clone(),
                at,
                next.subject.as_str(),
            );
            if entry.matches(f) {
                out.push(entry);
            }
            if out.len() >= limit || pending == 0 {
                break;
            }
        }
        Ok(out)
    }

    /// One entry by DLQ sequence.
    pub async fn dlq_show(&self, seq: u64) -> Result<Option<DlqEntry>, QueueError> {
        let stream = match self.js.get_stream(self.subjects.dlq_stream()).await {
            Ok(s) => s,
            // No worker has run yet, so nothing was ever dead-lettered.
            Err(e)
                if matches!(e.kind(), async_nats::jetstream::context::GetStreamErrorKind::JetStream(j)
                    if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(broker(e)),
        };
        match stream.get_raw_message(seq).await {
            Ok(m) => Ok(Some(DlqEntry::from_parts(
                seq,
                &m.headers,
                m.payload,
                m.time.unix_timestamp_nanos(),
                m.subject.as_str(),
            ))),
            Err(e)
                if e.kind()
                    == async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound =>
            {
                Ok(None)
            }
            Err(e) => Err(broker(e)),
        }
    }

    /// Replays the entries matching `f` (see the module docs).
    pub async fn dlq_replay(
        &self,
        ledger: &impl ReplayLedger,
        f: &DlqFilter,
        opts: &ReplayOptions,
    ) -> Result<ReplayReport, QueueError> {
        let entries = self.dlq_list(f).await?;
        let mut report = ReplayReport {
            dry_run: opts.dry_run,
            ..Default::default()
        };
        let every = Duration::from_secs_f64(1.0 / opts.rate_per_s.max(0.1));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stream = self
            .js
            .get_stream(self.subjects.dlq_stream())
            .await
            .map_err(broker)?;
        for entry in entries {
            if entry.reason == DeadLetterReason::WebhookExhausted.as_str() {
                if opts.dry_run {
                    report
                        .replayed
                        .push((entry.seq, entry.job_id.clone().unwrap_or_default()));
                    continue;
                }
                tick.tick().await;
                match self.replay_webhook(&entry).await {
                    Ok(()) => {
                        if let Err(e) = stream.delete_message(entry.seq).await {
                            tracing::debug!(seq = entry.seq, error = %e, "replayed dead letter already removed");
                        }
                        metrics::counter!("sluice_dlq_replays_total").increment(1);
                        report
                            .replayed
                            .push((entry.seq, entry.job_id.clone().unwrap_or_default()));
                    }
                    Err(why) => report.skipped.push((entry.seq, why)),
                }
                continue;
            }
            let Some(mut env) = entry.envelope() else {
                report.skipped.push((
                    entry.seq,
                    "undecodable message; it cannot be replayed".into(),
                ));
                continue;
            };
            if opts.dry_run {
                report.replayed.push((entry.seq, env.id.to_string()));
                continue;
            }
            tick.tick().await;
            match ledger
                .record_replay(env.id, &opts.actor, &entry.seq.to_string())
                .await
            {
                Ok(Replay::Applied { replays }) => {
                    env.replays = u32::try_from(replays).unwrap_or(u32::MAX)
                }
                Ok(Replay::Refused { current }) => {
                    let why = match current {
                        Some(s) => format!("the job is {s}"),
                        None => "the job record has expired".into(),
                    };
                    report.skipped.push((entry.seq, why));
                    continue;
                }
                Err(e) => return Err(QueueError::Broker(format!("job record: {e}"))),
            }
            self.publish_replay(&env).await?;
            if let Err(e) = stream.delete_message(entry.seq).await {
                tracing::debug!(seq = entry.seq, error = %e, "replayed dead letter already removed");
            }
            metrics::counter!("sluice_dlq_replays_total").increment(1);
            report.replayed.push((entry.seq, env.id.to_string()));
        }
        Ok(report)
    }

    /// Publishes an exhausted webhook delivery back to its subject; `Err` says why not.
    async fn replay_webhook(&self, entry: &DlqEntry) -> Result<(), String> {
        let hooks = self.subjects.hook("");
        if !entry.original_subject.starts_with(&hooks) {
            return Err("the dead letter does not name its webhook subject".into());
        }
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("dlq-replay-{}", entry.seq).as_str());
        let ack = self
            .js
            .publish_with_headers(
                entry.original_subject.clone(),
                headers,
                entry.payload.clone(),
            )
            .await
            .map_err(|e| e.to_string())?;
        ack.await.map_err(|e| e.to_string())?;
        Ok(())
    }

    async fn publish_replay(&self, env: &JobEnvelope) -> Result<(), QueueError> {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", replay_msg_id(env.id, env.replays).as_str());
        let subject = self.subjects.job(env.priority, &env.tenant);
        let ack = self
            .js
            .publish_with_headers(subject, headers, env.encode()?.into())
            .await
            .map_err(|e| QueueError::Refused(e.to_string()))?;
        ack.await.map_err(|e| QueueError::Refused(e.to_string()))?;
        Ok(())
    }
}

/// The broker message id of a replay: fresh per replay, stable for a retried publish.
pub fn replay_msg_id(id: Uuid, replays: u32) -> String {
    format!("{id}-replay-{replays}")
}
