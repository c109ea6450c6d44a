//! The semantic cache end to end: real NATS (the SEMANTIC stream) and Redis (the exact
//! entries a semantic hit resolves to), the simulator's bag-of-words embedding model, and
//! its chat counter as the witness of what reached the provider.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{Value, json};
use sluice_config::{CacheModelConfig, SemanticModelConfig};
use sluice_e2e::{ACME_KEY, Api, OTHER_KEY, TestEnv, wait_until};
use sluice_sim::SimConfig;

const QUESTION: &str = "What is the capital of France?";
const PARAPHRASE: &str = "Tell me the capital of France, please.";

/// An environment whose `sim-small` has the semantic cache at 0.95, embedded with the
/// simulator's `sim-embed-bow`.
async fn semantic_env() -> Result<(TestEnv, sluice_sim::SimHandle)> {
    let mut env = TestEnv::new();
    let mut sim_cfg = SimConfig::default();
    sim_cfg.models.push("sim-embed-bow".into());
    let sim = env.sim(sim_cfg).await?;
    env.cfg.delivery.models.push("sim-embed-bow".into());
    env.cfg.cache.semantic.embedding_model = "sim-embed-bow".into();
    env.cfg.cache.models.insert(
        "sim-small".into(),
        CacheModelConfig {
            semantic: Some(SemanticModelConfig {
                threshold: Some(0.95),
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    Ok((env, sim))
}

fn ask(system: Option<&str>, question: &str) -> Value {
    let mut messages = Vec::new();
    if let Some(s) = system {
        messages.push(json!({ "role": "system", "content": s }));
    }
    messages.push(json!({ "role": "user", "content": question }));
    json!({ "model": "sim-small", "temperature": 0, "max_tokens": 16, "messages": messages })
}

struct Answer {
    cache: Option<String>,
    similarity: Option<f64>,
    body: Value,
}

async fn chat(api: &Api, body: &Value, headers: &[(&str, &str)]) -> Result<Answer> {
    let mut req = api
        .http
        .post(format!("{}/v1/chat/completions", api.base))
        .bearer_auth(&api.key)
        .json(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await?;
    anyhow::ensure!(resp.status() == 200, "status {}", resp.status());
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let cache = header("x-sluice-cache");
    let similarity = header("x-sluice-cache-similarity").and_then(|s| s.parse().ok());
    let body = resp.json::<Value>().await?;
    Ok(Answer {
        cache,
        similarity,
        body,
    })
}

fn upstream_chats(sim: &sluice_sim::SimHandle) -> u64 {
    sim.counters().per_endpoint.chat_completions
}

/// Waits until `ingest`'s index holds `n` entries (the worker publishes an insertion
/// after it stored the answer, so it arrives shortly after the response).
async fn indexed(ingest: &sluice_ingest::Server, n: usize) -> Result<()> {
    wait_until(Duration::from_secs(20), || async {
        Ok(ingest.semantic_entries().context("semantic cache on")? >= n)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paraphrase_hits_with_its_similarity_and_other_questions_miss() -> Result<()> {
    let (env, sim) = semantic_env().await?;
    let ingest = env.ingest().await?;
    let _worker = env.worker().await?;
    let api = Api::new(ingest.base_url(), ACME_KEY);

    let first = chat(&api, &ask(None, QUESTION), &[]).await?;
    assert_eq!(first.cache.as_deref(), Some("miss"));
    indexed(&ingest, 1).await?;

    let para = chat(&api, &ask(None, PARAPHRASE), &[]).await?;
    assert_eq!(para.cache.as_deref(), Some("hit"));
    let similarity = para
        .similarity
        .context("a semantic hit reports its similarity")?;
    assert!((0.95..=1.0).contains(&similarity), "{similarity}");
    assert_eq!(para.body, first.body, "the original answer");
    assert_eq!(upstream_chats(&sim), 1);

    // Below the threshold: related, but another question.
    let related = "How do I get to the capital of France by train?";
    let r = chat(&api, &ask(None, related), &[]).await?;
    assert_eq!((r.cache.as_deref(), r.similarity), (Some("miss"), None));
    assert_eq!(upstream_chats(&sim), 2);
    // A negated question is far from the original.
    let negated = "What is not the capital of France?";
    let n = chat(&api, &ask(None, negated), &[]).await?;
    assert_eq!((n.cache.as_deref(), n.similarity), (Some("miss"), None));
    assert_eq!(upstream_chats(&sim), 3);
    // A two-turn conversation is longer than max_turns (1): not looked up.
    let mut long = ask(None, "Hi there");
    long["messages"]
        .as_array_mut()
        .context("messages")?
        .extend([
            json!({"role": "assistant", "content": "Hello!"}),
            json!({"role": "user", "content": PARAPHRASE}),
        ]);
    assert_eq!(chat(&api, &long, &[]).await?.cache.as_deref(), Some("miss"));
    assert_eq!(upstream_chats(&sim), 4);
    // A request may opt out.
    let out = chat(
        &api,
        &ask(None, "Capital of France, please?"),
        &[("x-sluice-semantic", "off")],
    )
    .await?;
    assert_eq!(out.cache.as_deref(), Some("miss"));
    assert_eq!(upstream_chats(&sim), 5);
    // The paraphrase still hits (the misses above stored their own entries beside it).
    let again = chat(&api, &ask(None, "capital of France?"), &[]).await?;
    assert_eq!(again.cache.as_deref(), Some("hit"));
    assert_eq!(upstream_chats(&sim), 5);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_system_prompts_and_tool_sets_never_share_semantic_answers() -> Result<()> {
    let (env, sim) = semantic_env().await?;
    let ingest = env.ingest().await?;
    let _worker = env.worker().await?;
    let acme = Api::new(ingest.base_url(), ACME_KEY);
    let other = Api::new(ingest.base_url(), OTHER_KEY);

    let first = chat(&acme, &ask(Some("Answer briefly."), QUESTION), &[]).await?;
    assert_eq!(first.cache.as_deref(), Some("miss"));
    indexed(&ingest, 1).await?;

    let mut with_tools = ask(Some("Answer briefly."), PARAPHRASE);
    with_tools["tools"] = json!([{ "type": "function",
        "function": { "name": "lookup_city", "parameters": { "type": "object" } } }]);
    let cases = [
        (
            &other,
            ask(Some("Answer briefly."), PARAPHRASE),
            "another tenant",
        ),
        (
            &acme,
            ask(Some("Answer at length."), PARAPHRASE),
            "another system prompt",
        ),
        (&acme, ask(None, PARAPHRASE), "no system prompt"),
        (&acme, with_tools, "a tool set"),
    ];
    for (n, (api, body, what)) in cases.iter().enumerate() {
        let a = chat(api, body, &[]).await?;
        assert_eq!(a.cache.as_deref(), Some("miss"), "{what}");
        assert_eq!(upstream_chats(&sim), 2 + n as u64, "{what}");
    }
    // The same scope does share.
    let same = chat(&acme, &ask(Some("Answer briefly."), PARAPHRASE), &[]).await?;
    assert_eq!(same.cache.as_deref(), Some("hit"));
    assert_eq!(same.body, first.body);
    assert_eq!(upstream_chats(&sim), 5);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_after_the_insertions_serves_the_semantic_hit() -> Result<()> {
    let (env, sim) = semantic_env().await?;
    let first_replica = env.ingest().await?;
    let _worker = env.worker().await?;
    let a = Api::new(first_replica.base_url(), ACME_KEY);
    let first = chat(&a, &ask(None, QUESTION), &[]).await?;
    assert_eq!(first.cache.as_deref(), Some("miss"));
    indexed(&first_replica, 1).await?;

    // More insertions, each in a scope of its own (no graph to build), so the replay takes
    // a while: a replica that said it was ready before replaying would be caught out.
    let js = async_nats::jetstream::new(async_nats::connect(&env.cfg.nats.url).await?);
    let subject =
        sluice_protocol::Subjects::new(env.cfg.nats.namespace.clone()).semantic_insertions();
    let mut vector = vec![0.0f32; 256];
    vector[0] = 1.0;
    let mut acks = Vec::new();
    for i in 0..2_000u32 {
        let mut scope = [0xee; 32];
        scope[..4].copy_from_slice(&i.to_le_bytes());
        let mut key = [0xdd; 32];
        key[..4].copy_from_slice(&i.to_le_bytes());
        let expires = sluice_store::now_ms() + 3_600_000;
        let payload = sluice_cache::semantic::Insertion::new(
            sluice_cache::semantic::ScopeId(scope),
            sluice_cache::CacheKey(key),
            &vector,
            expires,
        )
        .encode()?;
        acks.push(js.publish(subject.clone(), payload.into()).await?);
    }
    for ack in acks {
        ack.await?;
    }
    indexed(&first_replica, 2_001).await?;

    // A new replica replays the SEMANTIC stream before it says it is ready: whenever
    // /readyz answers 200, the index already holds every insertion.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let second_replica = sluice_ingest::Server::start(env.ingest_settings()?, listener).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let resp = env
            .http
            .get(format!("{}/readyz", second_replica.base_url()))
            .send()
            .await?;
        let status = resp.status().as_u16();
        let ready: Value = resp.json().await?;
        if status == 200 {
            assert_eq!(ready["semantic_index"], "ready", "{ready}");
            assert_eq!(
                second_replica.semantic_entries(),
                Some(2_001),
                "ready before the replay caught up"
            );
            break;
        }
        assert_ne!(ready["semantic_index"], "ready", "{ready}");
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "never ready: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let b = Api::new(second_replica.base_url(), ACME_KEY);
    let para = chat(&b, &ask(None, PARAPHRASE), &[]).await?;
    assert_eq!(para.cache.as_deref(), Some("hit"));
    assert!(para.similarity.is_some_and(|s| s >= 0.95));
    assert_eq!(para.body, first.body);
    assert_eq!(upstream_chats(&sim), 1);
    Ok(())
}
