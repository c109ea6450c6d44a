//! Stream, consumer and subject names.
//!
//! With an empty namespace the names are the documented ones: stream `JOBS` with subjects
//! `jobs.<priority>.<tenant>`, stream `DLQ` with subjects `dlq.<reason>.<tenant>`, and one
//! durable consumer `workers-<priority>` per class. A namespace prefixes every name, so tests
//! and side-by-side stacks can share a NATS server without seeing each other's messages.

use crate::Priority;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    namespace: String,
}

impl Subjects {
    /// `namespace` may be empty; otherwise it must be a single subject token
    /// (`[A-Za-z0-9_-]+`), which [`Subjects::valid_namespace`] checks.
    pub fn new(namespace: impl Into<String>) -> Self {
        Subjects {
            namespace: namespace.into(),
        }
    }

    pub fn valid_namespace(ns: &str) -> bool {
        ns.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn subject_prefix(&self) -> String {
        if self.namespace.is_empty() {
            String::new()
        } else {
            format!("{}.", self.namespace)
        }
    }

    fn stream_prefix(&self) -> String {
        if self.namespace.is_empty() {
            String::new()
        } else {
            format!("{}_", self.namespace)
        }
    }

    pub fn jobs_stream(&self) -> String {
        format!("{}JOBS", self.stream_prefix())
    }

    pub fn dlq_stream(&self) -> String {
        format!("{}DLQ", self.stream_prefix())
    }

    /// Wildcard covering every job subject (the JOBS stream's subject filter).
    pub fn jobs_wildcard(&self) -> String {
        format!("{}jobs.>", self.subject_prefix())
    }

    pub fn dlq_wildcard(&self) -> String {
        format!("{}dlq.>", self.subject_prefix())
    }

    /// `jobs.<priority>.<tenant>`; tenant ids are validated to be one subject token.
    pub fn job(&self, priority: Priority, tenant: &str) -> String {
        format!(
            "{}jobs.{}.{}",
            self.subject_prefix(),
            priority.as_str(),
            tenant
        )
    }

    /// Filter for one priority class: `jobs.<priority>.>`.
    pub fn priority_filter(&self, priority: Priority) -> String {
        format!("{}jobs.{}.>", self.subject_prefix(), priority.as_str())
    }

    /// The doorbell subject of a class (`[ns.]ring.<priority>`): a tiny core-NATS message
    /// published after each job, so idle workers fetch at once instead of polling.
    pub fn ring(&self, priority: Priority) -> String {
        format!("{}ring.{}", self.subject_prefix(), priority.as_str())
    }

    pub fn ring_wildcard(&self) -> String {
        format!("{}ring.*", self.subject_prefix())
    }

    /// The priority class of a job subject (`[ns.]jobs.<priority>.<tenant>`) or a doorbell
    /// subject (`[ns.]ring.<priority>`).
    pub fn priority_of(&self, subject: &str) -> Option<Priority> {
        let rest = subject.strip_prefix(&self.subject_prefix())?;
        let rest = rest
            .strip_prefix("jobs.")
            .or_else(|| rest.strip_prefix("ring."))?;
        Priority::parse(rest.split('.').next()?)
    }

    /// Durable consumer name for one priority class.
    pub fn consumer(&self, priority: Priority) -> String {
        format!("{}workers-{}", self.stream_prefix(), priority.as_str())
    }

    /// Core NATS subject on which every writer of a job's event history announces a new
    /// event (`events.<job id>`); SSE and synchronous waiters subscribe to it.
    pub fn job_events(&self, id: &uuid::Uuid) -> String {
        format!("{}events.{}", self.subject_prefix(), id)
    }

    /// Core NATS broadcast subject carrying the ids of cancelled jobs to every worker.
    pub fn cancellations(&self) -> String {
        format!("{}cancel", self.subject_prefix())
    }

    /// The HOOKS stream: one message per webhook delivery to make.
    pub fn hooks_stream(&self) -> String {
        format!("{}HOOKS", self.stream_prefix())
    }

    pub fn hooks_wildcard(&self) -> String {
        format!("{}hooks.>", self.subject_prefix())
    }

    /// `hooks.<tenant>`: a delivery for one of the tenant's endpoints or job webhooks.
    pub fn hook(&self, tenant: &str) -> String {
        format!("{}hooks.{}", self.subject_prefix(), tenant)
    }

    /// The dispatcher's durable consumer.
    pub fn hooks_consumer(&self) -> String {
        format!("{}dispatcher", self.stream_prefix())
    }

    /// `dlq.<reason>.<tenant>`; an undecodable message has tenant `unknown`.
    pub fn dlq(&self, reason: &str, tenant: &str) -> String {
        format!("{}dlq.{}.{}", self.subject_prefix(), reason, tenant)
    }

    /// The SEMANTIC stream: the semantic cache's insertions, which every ingest replica
    /// replays into its index.
    pub fn semantic_stream(&self) -> String {
        format!("{}SEMANTIC", self.stream_prefix())
    }

    /// The one subject of the SEMANTIC stream.
    pub fn semantic_insertions(&self) -> String {
        format!("{}cache.semantic", self.subject_prefix())
    }
}

/// Whether `s` can be used as a single NATS subject token (tenant ids, reasons).
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_match_the_design() {
        let s = Subjects::new("");
        assert_eq!(s.jobs_stream(), "JOBS");
        assert_eq!(s.job(Priority::High, "acme"), "jobs.high.acme");
        assert_eq!(s.priority_filter(Priority::Low), "jobs.low.>");
        assert_eq!(s.consumer(Priority::Normal), "workers-normal");
        assert_eq!(s.dlq("undecodable", "unknown"), "dlq.undecodable.unknown");
    }

    #[test]
    fn a_namespace_prefixes_everything() {
        let s = Subjects::new("t1");
        assert_eq!(s.jobs_stream(), "t1_JOBS");
        assert_eq!(s.jobs_wildcard(), "t1.jobs.>");
        assert_eq!(s.job(Priority::Low, "a"), "t1.jobs.low.a");
        assert_eq!(s.dlq_stream(), "t1_DLQ");
        assert_eq!(s.priority_of("t1.jobs.low.a"), Some(Priority::Low));
        assert_eq!(s.ring(Priority::High), "t1.ring.high");
        assert_eq!(s.priority_of(&s.ring(Priority::High)), Some(Priority::High));
        assert_eq!(s.priority_of("jobs.low.a"), None, "another namespace");
        assert_eq!(
            Subjects::new("").priority_of("jobs.high.x"),
            Some(Priority::High)
        );
        assert_eq!(Subjects::new("").priority_of("jobs.urgent.x"), None);
    }

    #[test]
    fn tokens_reject_subject_syntax() {
        assert!(is_token("acme-1_x"));
        for bad in ["", "a.b", "a*", "a>", "a b", &"x".repeat(65)] {
            assert!(!is_token(bad), "{bad:?}");
        }
    }
}
