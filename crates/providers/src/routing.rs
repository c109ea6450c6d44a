//! Model routing: a request for the routed alias (`model: "auto"` by default) goes to the
//! cheap tier unless a rule says it needs the strong one — long prompts, keywords in the
//! last user message, or an optional classifier service. The decision names its rule so it
//! can be recorded on the job and counted in metrics.

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use sluice_config::RoutingConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Cheap,
    Strong,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Cheap => "cheap",
            Tier::Strong => "strong",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteDecision {
    pub model: String,
    pub tier: Tier,
    /// `length`, `keyword`, `classifier` or `default`.
    pub rule: &'static str,
}

pub struct Router {
    cfg: RoutingConfig,
    keywords: Vec<String>,
    http: Option<reqwest::Client>,
}

impl Router {
    pub fn new(cfg: &RoutingConfig) -> Router {
        let http = (!cfg.classifier_url.is_empty())
            .then(|| {
                reqwest::Client::builder()
                    .tcp_nodelay(true)
                    .timeout(cfg.classifier_timeout.max(Duration::from_millis(1)))
                    .build()
                    .ok()
            })
            .flatten();
        Router {
            cfg: cfg.clone(),
            keywords: cfg
                .strong_keywords
                .iter()
                .map(|k| k.to_lowercase())
                .collect(),
            http,
        }
    }

    /// `Some` when `model` is the routed alias.
    pub async fn route(&self, model: &str, body: &[u8]) -> Option<RouteDecision> {
        if self.cfg.alias.is_empty() || model != self.cfg.alias {
            return None;
        }
        let req: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let (tier, rule) = match self.by_rules(&req) {
            Some(d) => d,
            None => match self.by_classifier(body).await {
                Some(t) => (t, "classifier"),
                None => (Tier::Cheap, "default"),
            },
        };
        let model = match tier {
            Tier::Cheap => self.cfg.cheap_model.clone(),
            Tier::Strong => self.cfg.strong_model.clone(),
        };
        metrics::counter!("sluice_route_decisions_total", "tier" => tier.as_str(), "rule" => rule)
            .increment(1);
        Some(RouteDecision { model, tier, rule })
    }

    fn by_rules(&self, req: &Value) -> Option<(Tier, &'static str)> {
        let messages = req.get("messages").and_then(Value::as_array);
        let text = |m: &Value| -> String {
            match m.get("content") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join(" "),
                _ => String::new(),
            }
        };
        let total: usize = messages
            .map(|ms| ms.iter().map(|m| text(m).chars().count()).sum())
            .unwrap_or(0);
        if total > self.cfg.strong_if_chars_over {
            return Some((Tier::Strong, "length"));
        }
        let last_user = messages
            .and_then(|ms| {
                ms.iter()
                    .rev()
                    .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
            })
            .map(text)
            .unwrap_or_default()
            .to_lowercase();
        if self
            .keywords
            .iter()
            .any(|k| !k.is_empty() && last_user.contains(k.as_str()))
        {
            return Some((Tier::Strong, "keyword"));
        }
        None
    }

    async fn by_classifier(&self, body: &[u8]) -> Option<Tier> {
        #[derive(Deserialize)]
        struct Answer {
            tier: String,
        }
        let http = self.http.as_ref()?;
        let resp = http
            .post(&self.cfg.classifier_url)
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .ok()?;
        let a: Answer = resp.json().await.ok()?;
        match a.tier.as_str() {
            "strong" => Some(Tier::Strong),
            "cheap" => Some(Tier::Cheap),
            _ => None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn body(text: &str) -> Vec<u8> {
        serde_json::to_vec(
            &serde_json::json!({"model":"auto","messages":[{"role":"user","content":text}]}),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn cheap_by_default_strong_for_long_or_hard_prompts() {
        let cfg = RoutingConfig {
            strong_if_chars_over: 50,
            ..RoutingConfig::default()
        };
        let r = Router::new(&cfg);
        assert_eq!(
            r.route("sim-small", &body("hi")).await,
            None,
            "only the routed alias is routed"
        );
        let d = r.route("auto", &body("hi there")).await.unwrap();
        assert_eq!(
            (d.model.as_str(), d.tier, d.rule),
            ("sim-small", Tier::Cheap, "default")
        );
        let d = r.route("auto", &body("Please PROVE this")).await.unwrap();
        assert_eq!((d.model.as_str(), d.rule), ("sim-large", "keyword"));
        let d = r.route("auto", &body(&"x".repeat(51))).await.unwrap();
        assert_eq!((d.tier, d.rule), (Tier::Strong, "length"));
    }
}
