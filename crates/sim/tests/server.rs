//! The simulator on a real socket, called with reqwest.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures_util::StreamExt;
use serde_json::{Value, json};
use sluice_sim::SimConfig;

#[tokio::test]
async fn serves_plain_and_streaming_over_http() {
    let sim = sluice_sim::start(SimConfig::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    assert_ne!(sim.addr().port(), 0);
    assert_eq!(
        sim.base_url(),
        format!("http://127.0.0.1:{}/v1", sim.addr().port())
    );
    let client = reqwest::Client::new();
    let url = format!("{}/chat/completions", sim.base_url());
    let body =
        json!({"model": "sim-large", "messages": [{"role": "user", "content": "over the wire"}]});

    let plain: Value = client
        .post(&url)
        .json(&body)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    let content = plain["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();

    let mut stream_body = body.clone();
    stream_body["stream"] = json!(true);
    let response = client.post(&url).json(&stream_body).send().await.unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut raw = Vec::new();
    let mut bytes = response.bytes_stream();
    while let Some(chunk) = bytes.next().await {
        raw.extend_from_slice(&chunk.unwrap());
    }
    let text = String::from_utf8(raw).unwrap();
    let mut streamed = String::new();
    let mut done = false;
    for event in text.split("\n\n").filter(|e| !e.is_empty()) {
        let data = event.strip_prefix("data: ").unwrap();
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let chunk: Value = serde_json::from_str(data).unwrap();
        if let Some(piece) = chunk["choices"][0]["delta"]["content"].as_str() {
            streamed.push_str(piece);
        }
    }
    assert!(done);
    assert_eq!(streamed, content);

    let models: Value = client
        .get(format!("{}/models", sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"].as_array().unwrap().len(), 3);

    let counters: Value = client
        .get(format!("http://{}/sim/counters", sim.addr()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(counters["per_endpoint"]["chat_completions"], 2);
    let c = sim.counters();
    assert_eq!((c.total_requests, c.completed), (3, 3));
    assert_eq!(c.per_model.get("sim-large"), Some(&2));

    sim.set_config(SimConfig {
        error_rate: 1.0,
        ..SimConfig::default()
    })
    .unwrap();
    let status = client.post(&url).json(&body).send().await.unwrap().status();
    assert_eq!(status, 500);

    sim.shutdown().await;
    assert!(
        client.post(&url).json(&body).send().await.is_err(),
        "nothing listens after shutdown"
    );
}

#[tokio::test]
async fn invalid_configuration_is_refused_at_start() {
    let cfg = SimConfig {
        error_rate: 2.0,
        ..SimConfig::default()
    };
    let err = sluice_sim::start(cfg, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}
