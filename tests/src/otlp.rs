//! Trace test helpers: a small OTLP/HTTP collector that decodes and keeps every exported
//! span, and a recording proxy that shows which headers a service sent upstream.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::Result;
use axum::{
    Router,
    body::Bytes,
    extract::{Request, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest, common::v1::any_value::Value as AnyValue,
};
use prost::Message;

/// One exported span, flattened.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    /// OTLP's `SpanKind`: 2 server, 3 client, 4 producer, 5 consumer.
    pub kind: i32,
    pub attributes: HashMap<String, String>,
    /// Trace ids of the span's links.
    pub links: Vec<String>,
}

impl SpanRecord {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

#[derive(Clone, Default)]
pub struct Collector {
    spans: Arc<Mutex<Vec<SpanRecord>>>,
    requests: Arc<Mutex<u64>>,
    pub addr: Option<SocketAddr>,
}

impl Collector {
    /// Listens on 127.0.0.1 for `POST /v1/traces` (protobuf).
    pub async fn start() -> Result<Collector> {
        let mut c = Collector::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        c.addr = Some(listener.local_addr()?);
        let app = Router::new()
            .route("/v1/traces", axum::routing::post(export))
            .with_state(c.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(c)
    }

    pub fn traces_url(&self) -> String {
        format!(
            "http://{}/v1/traces",
            self.addr.map(|a| a.to_string()).unwrap_or_default()
        )
    }

    pub fn spans(&self) -> Vec<SpanRecord> {
        self.spans.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn requests(&self) -> u64 {
        self.requests.lock().map(|r| *r).unwrap_or_default()
    }
}

async fn export(State(c): State<Collector>, body: Bytes) -> StatusCode {
    if let Ok(mut r) = c.requests.lock() {
        *r += 1;
    }
    let Ok(req) = ExportTraceServiceRequest::decode(body) else {
        return StatusCode::BAD_REQUEST;
    };
    let mut out = Vec::new();
    for rs in req.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| r.attributes.iter())
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref())
            .map(value_text)
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                out.push(SpanRecord {
                    service: service.clone(),
                    name: s.name,
                    trace_id: hex::encode(&s.trace_id),
                    span_id: hex::encode(&s.span_id),
                    parent_span_id: hex::encode(&s.parent_span_id),
                    kind: s.kind,
                    attributes: s
                        .attributes
                        .iter()
                        .map(|kv| {
                            (
                                kv.key.clone(),
                                kv.value.as_ref().map(value_text).unwrap_or_default(),
                            )
                        })
                        .collect(),
                    links: s.links.iter().map(|l| hex::encode(&l.trace_id)).collect(),
                });
            }
        }
    }
    if let Ok(mut spans) = c.spans.lock() {
        spans.extend(out);
    }
    StatusCode::OK
}

fn value_text(v: &opentelemetry_proto::tonic::common::v1::AnyValue) -> String {
    match &v.value {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::ArrayValue(a)) => a
            .values
            .iter()
            .map(value_text)
            .collect::<Vec<_>>()
            .join(","),
        _ => String::new(),
    }
}

/// Forwards every request to `upstream` and remembers the request headers it saw.
#[derive(Clone)]
pub struct Proxy {
    upstream: String,
    http: reqwest::Client,
    seen: Arc<Mutex<Vec<HeaderMap>>>,
    pub addr: Option<SocketAddr>,
}

impl Proxy {
    pub async fn start(upstream: String) -> Result<Proxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let p = Proxy {
            upstream,
            http: reqwest::Client::new(),
            seen: Arc::default(),
            addr: Some(listener.local_addr()?),
        };
        let app = Router::new().fallback(forward).with_state(p.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(p)
    }

    pub fn base_url(&self) -> String {
        format!(
            "http://{}",
            self.addr.map(|a| a.to_string()).unwrap_or_default()
        )
    }

    pub fn seen(&self) -> Vec<HeaderMap> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

async fn forward(State(p): State<Proxy>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    if let Ok(mut s) = p.seen.lock() {
        s.push(parts.headers.clone());
    }
    let Ok(body) = axum::body::to_bytes(body, 1 << 24).await else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let Ok(url) = reqwest::Url::parse(&format!(
        "{}{path}",
        p.upstream.trim_end_matches("/v1").trim_end_matches('/')
    )) else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    let mut out = p.http.request(parts.method, url).body(body);
    for (k, v) in &parts.headers {
        if k != "host" && k != "content-length" {
            out = out.header(k, v);
        }
    }
    match out.send().await {
        Ok(resp) => {
            let status = resp.status();
            let headers = resp.headers().clone();
            let bytes = resp.bytes().await.unwrap_or_default();
            let mut r = (status, bytes).into_response();
            for (k, v) in &headers {
                if k != "content-length" && k != "transfer-encoding" {
                    r.headers_mut().insert(k, v.clone());
                }
            }
            r
        }
        Err(_) => StatusCode::BAD_GATEWAY.into_response(),
    }
}
