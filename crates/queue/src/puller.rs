//! Pull requests over long-lived subscriptions.
//!
//! `async-nats`' `fetch()` opens and closes a subscription for every request. A worker asks
//! many times a second, so a [`Puller`] keeps one inbox per consumer instead and sends
//! `no_wait` requests sized to the caller's free slots: the server delivers up to that many
//! messages at once, then a status if it had fewer.
//!
//! Requests never overlap, so counting is exact; a request that neither delivers nor ends
//! in time (a reconnect lost it) gets its inbox replaced, so late deliveries cannot be
//! mistaken for a later request's (they return after `ack_wait`).

use std::time::Duration;

use async_nats::{Subscriber, jetstream};
use bytes::Bytes;
use futures_util::StreamExt;

use crate::{Queue, QueueError, broker};

/// One inbox with at most one request outstanding.
struct Inbox {
    subject: String,
    sub: Subscriber,
}

impl Inbox {
    async fn open(client: &async_nats::Client) -> Result<Inbox, QueueError> {
        let subject = client.new_inbox();
        let sub = client.subscribe(subject.clone()).await.map_err(broker)?;
        Ok(Inbox { subject, sub })
    }
}

/// Pull requests against one durable consumer.
pub struct Puller {
    client: async_nats::Client,
    context: jetstream::Context,
    api_subject: String,
    fetch: Inbox,
}

impl Puller {
    pub async fn new(queue: &Queue, stream: &str, consumer: &str) -> Result<Puller, QueueError> {
        let client = queue.client().clone();
        let fetch = Inbox::open(&client).await?;
        Ok(Puller {
            api_subject: format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"),
            context: queue.jetstream().clone(),
            client,
            fetch,
        })
    }

    async fn request(&self, reply: &str, body: String) -> Result<(), QueueError> {
        self.client
            .publish_with_reply(
                self.api_subject.clone(),
                reply.to_string(),
                Bytes::from(body),
            )
            .await
            .map_err(broker)
    }

    /// Up to `max` messages available right now. Waits at most `limit` for the answer.
    pub async fn fetch(
        &mut self,
        max: usize,
        limit: Duration,
    ) -> Result<Vec<jetstream::Message>, QueueError> {
        let mut out = Vec::with_capacity(max.min(256));
        if max == 0 {
            return Ok(out);
        }
        // Pure no_wait: with an `expires` as well the server would wait for messages.
        let body = format!(r#"{{"batch":{max},"no_wait":true}}"#);
        self.request(&self.fetch.subject.clone(), body).await?;
        let deadline = tokio::time::Instant::now() + limit + Duration::from_millis(500);
        while out.len() < max {
            match tokio::time::timeout_at(deadline, self.fetch.sub.next()).await {
                Ok(Some(m)) if m.status.is_some() => return Ok(out),
                Ok(Some(m)) => out.push(jetstream::Message {
                    message: m,
                    context: self.context.clone(),
                }),
                Ok(None) | Err(_) => {
                    // Lost request (reconnect) or closed subscription: start over on a new inbox.
                    self.fetch = Inbox::open(&self.client).await?;
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }
}
