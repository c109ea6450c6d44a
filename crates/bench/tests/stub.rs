//! Runs each mode briefly against an in-test stand-in for the gateway: a hand-rolled
//! HTTP/1.1 keep-alive server with canned answers. The checks are on counts only (every
//! request accounted for, the generator's counts matching the server's), never on timing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser;
use sluice_bench::cli::Args;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const KEY: &str = "test-key";

/// What the stand-in saw.
#[derive(Default)]
struct Seen {
    posts: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
    /// Accepted jobs the stand-in reports as failed when polled.
    failing: AtomicU64,
    polls: AtomicU64,
    chats: AtomicU64,
    bad_requests: AtomicU64,
}

struct Stub {
    url: String,
    seen: Arc<Seen>,
}

/// Starts the stand-in. Without `jobs_finish`, every job stays `in_progress` forever.
async fn stub(require_auth: bool, jobs_finish: bool) -> anyhow::Result<Stub> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let seen = Arc::new(Seen::default());
    let shared = seen.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(connection(
                socket,
                shared.clone(),
                require_auth,
                jobs_finish,
            ));
        }
    });
    Ok(Stub { url, seen })
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// Serves requests on one keep-alive connection until the client closes it.
async fn connection(
    socket: TcpStream,
    seen: Arc<Seen>,
    require_auth: bool,
    jobs_finish: bool,
) -> std::io::Result<()> {
    let (read, mut write) = socket.into_split();
    let mut read = BufReader::new(read);
    loop {
        let mut request_line = String::new();
        if read.read_line(&mut request_line).await? == 0 {
            return Ok(());
        }
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_owned();
        let path = parts.next().unwrap_or_default().to_owned();
        let mut length = 0usize;
        let mut authorized = false;
        loop {
            let mut header = String::new();
            if read.read_line(&mut header).await? == 0 {
                return Ok(());
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap_or((header, ""));
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse().unwrap_or(0);
            } else if name.eq_ignore_ascii_case("authorization") {
                authorized = value == format!("Bearer {KEY}");
            }
        }
        let mut body = vec![0; length];
        read.read_exact(&mut body).await?;

        let (status, headers, payload) = if require_auth && !authorized {
            (
                "401 Unauthorized",
                String::new(),
                r#"{"error":{"message":"no key"}}"#.to_owned(),
            )
        } else {
            answer(&method, &path, &body, &seen, jobs_finish)
        };
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{headers}\r\n{payload}",
            payload.len()
        );
        write.write_all(response.as_bytes()).await?;
    }
}

fn answer(
    method: &str,
    path: &str,
    body: &[u8],
    seen: &Seen,
    jobs_finish: bool,
) -> (&'static str, String, String) {
    let valid = serde_json::from_slice::<serde_json::Value>(body)
        .is_ok_and(|v| v["model"] == "sim-small" && v["messages"][0]["content"].is_string());
    match (method, path) {
        ("POST", "/v1/jobs") if valid => {
            let n = seen.posts.fetch_add(1, Ordering::SeqCst);
            match n % 10 {
                3 => {
                    seen.rejected.fetch_add(1, Ordering::SeqCst);
                    (
                        "429 Too Many Requests",
                        "retry-after: 1\r\n".into(),
                        r#"{"error":{}}"#.into(),
                    )
                }
                7 => {
                    seen.rejected.fetch_add(1, Ordering::SeqCst);
                    (
                        "503 Service Unavailable",
                        "retry-after: 1\r\n".into(),
                        r#"{"error":{}}"#.into(),
                    )
                }
                rest => {
                    seen.accepted.fetch_add(1, Ordering::SeqCst);
                    if rest == 9 {
                        seen.failing.fetch_add(1, Ordering::SeqCst);
                    }
                    (
                        "202 Accepted",
                        format!("location: /v1/jobs/job-{n}\r\n"),
                        format!(r#"{{"id":"job-{n}","object":"job","status":"queued"}}"#),
                    )
                }
            }
        }
        ("GET", p) if p.starts_with("/v1/jobs/job-") => {
            seen.polls.fetch_add(1, Ordering::SeqCst);
            let id = &p["/v1/jobs/".len()..];
            let n: u64 = id["job-".len()..].parse().unwrap_or(0);
            let now = now_ms();
            let (status, done) = if !jobs_finish {
                (
                    "in_progress",
                    r#""completed_at":null,"failed_at":null"#.to_owned(),
                )
            } else if n % 10 == 9 {
                (
                    "failed",
                    format!(r#""completed_at":null,"failed_at":{now}"#),
                )
            } else {
                (
                    "completed",
                    format!(r#""completed_at":{now},"failed_at":null"#),
                )
            };
            let json = format!(
                r#"{{"id":"{id}","object":"job","status":"{status}","timings_ms":{{"queued_at":{},"in_progress_at":{},{done}}}}}"#,
                now.saturating_sub(2),
                now.saturating_sub(1)
            );
            ("200 OK", String::new(), json)
        }
        ("POST", "/v1/chat/completions") if valid => {
            seen.chats.fetch_add(1, Ordering::SeqCst);
            let json = r#"{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}]}"#;
            ("200 OK", String::new(), json.into())
        }
        _ => {
            seen.bad_requests.fetch_add(1, Ordering::SeqCst);
            ("400 Bad Request", String::new(), r#"{"error":{}}"#.into())
        }
    }
}

fn settings(args: &[&str]) -> anyhow::Result<sluice_bench::cli::Settings> {
    let argv = ["sluice-bench", "--quiet"]
        .into_iter()
        .chain(args.iter().copied());
    Args::try_parse_from(argv)?.validate()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_mode_accounts_for_every_job() -> anyhow::Result<()> {
    let stub = stub(true, true).await?;
    let s = settings(&[
        "--url",
        &stub.url,
        "--api-key",
        KEY,
        "--rate",
        "200",
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--poll-interval-ms",
        "20",
        "--drain-timeout",
        "30",
    ])?;
    let report = sluice_bench::run(&s).await?;
    let c = &report.load.counts;
    let seen = &stub.seen;

    assert_eq!(c.scheduled, 200);
    assert_eq!(c.sent + c.dropped_by_generator, c.scheduled);
    assert_eq!(c.unfinished, 0);
    assert_eq!(c.errors(), 0, "{c:?}");
    assert_eq!(c.ok + c.rejected(), c.sent);
    // The stand-in also saw the 40 warm-up submissions, which are not recorded.
    assert_eq!(seen.posts.load(Ordering::SeqCst), c.sent + 40);
    assert_eq!(seen.bad_requests.load(Ordering::SeqCst), 0);
    assert!(c.rejected_429 > 0 && c.rejected_503 > 0, "{c:?}");

    let e2e = report.end_to_end.as_ref().map(|e| &e.counts);
    let e2e = e2e.ok_or_else(|| anyhow::anyhow!("no end-to-end figures"))?;
    assert_eq!(e2e.accepted, c.ok);
    assert_eq!(
        e2e.sampled, c.ok,
        "the default sample takes every job of a short run"
    );
    assert_eq!(e2e.not_terminal, 0, "{e2e:?}");
    assert_eq!(e2e.completed + e2e.failed, e2e.sampled);
    assert!(e2e.failed > 0 && e2e.completed > 0, "{e2e:?}");
    let e2e_series = report
        .latency
        .iter()
        .find(|s| s.name == "e2e")
        .and_then(|s| s.percentiles.as_ref());
    assert_eq!(e2e_series.map(|p| p.count), Some(e2e.completed));
    let submit_series = report
        .latency
        .iter()
        .find(|s| s.name == "submit")
        .and_then(|s| s.percentiles.as_ref());
    assert_eq!(submit_series.map(|p| p.count), Some(c.ok));

    let line = report.result_line();
    for key in [
        "submit_rps=",
        "submit_p50_ms=",
        "submit_p99_ms=",
        "e2e_p50_ms=",
        "e2e_p99_ms=",
        "completed_rps=",
    ] {
        assert!(line.contains(key), "{line}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_mode_samples_a_bounded_number_of_jobs() -> anyhow::Result<()> {
    let stub = stub(true, true).await?;
    let s = settings(&[
        "--url",
        &stub.url,
        "--api-key",
        KEY,
        "--rate",
        "200",
        "--duration",
        "0.5",
        "--warmup",
        "0",
        "--e2e-sample",
        "10",
        "--poll-interval-ms",
        "20",
    ])?;
    let report = sluice_bench::run(&s).await?;
    let e2e = report.end_to_end.as_ref().map(|e| &e.counts);
    assert_eq!(e2e.map(|e| e.sampled), Some(10));
    assert_eq!(e2e.map(|e| e.accepted), Some(report.load.counts.ok));
    assert_eq!(e2e.map(|e| e.completed + e.failed), Some(10));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_mode_without_auth_counts_answers() -> anyhow::Result<()> {
    let stub = stub(false, true).await?;
    let s = settings(&[
        "--mode",
        "rate",
        "--url",
        &stub.url,
        "--no-auth",
        "--rate",
        "100",
        "--duration",
        "0.5",
        "--warmup",
        "0",
    ])?;
    let report = sluice_bench::run(&s).await?;
    let c = &report.load.counts;
    assert_eq!(c.scheduled, 50);
    assert_eq!(c.sent + c.dropped_by_generator, 50);
    assert_eq!(c.ok, c.sent);
    assert_eq!(stub.seen.chats.load(Ordering::SeqCst), c.sent);
    assert!(report.end_to_end.is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_prints_figures_and_writes_json() -> anyhow::Result<()> {
    let stub = stub(true, true).await?;
    let json_path =
        std::env::temp_dir().join(format!("sluice-bench-test-{}.json", std::process::id()));
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sluice-bench"));
    cmd.args([
        "--mode",
        "sync",
        "--concurrency",
        "4",
        "--duration",
        "0.3",
        "--warmup",
        "0",
        "--quiet",
        "--url",
    ])
    .arg(&stub.url)
    .args(["--json"])
    .arg(&json_path)
    .env("SLUICE_API_KEY", KEY);
    let output = tokio::task::spawn_blocking(move || cmd.output()).await??;
    let stdout = String::from_utf8(output.stdout)?;
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.starts_with("RESULT mode=sync sync_rps="), "{stdout}");
    assert!(last.contains(" errors=0 "), "{stdout}");

    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&json_path)?)?;
    std::fs::remove_file(&json_path)?;
    assert_eq!(json["mode"], "sync");
    let ok = json["load"]["ok"].as_u64().unwrap_or_default();
    assert!(ok > 0);
    assert_eq!(Some(ok), json["load"]["sent"].as_u64());
    assert_eq!(stub.seen.chats.load(Ordering::SeqCst), ok);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_gives_up_and_counts_jobs_still_running() -> anyhow::Result<()> {
    let stub = stub(true, false).await?;
    let s = settings(&[
        "--url",
        &stub.url,
        "--api-key",
        KEY,
        "--rate",
        "100",
        "--duration",
        "0.3",
        "--warmup",
        "0",
        "--drain-timeout",
        "0.3",
        "--poll-interval-ms",
        "50",
    ])?;
    let report = sluice_bench::run(&s).await?;
    let e2e = report.end_to_end.as_ref().map(|e| &e.counts);
    let e2e = e2e.ok_or_else(|| anyhow::anyhow!("no end-to-end figures"))?;
    assert_eq!(e2e.sampled, report.load.counts.ok);
    assert_eq!(e2e.terminal(), 0);
    assert_eq!(e2e.not_terminal, e2e.sampled);
    assert_eq!(
        e2e.not_terminal_in_progress + e2e.not_terminal_queued,
        e2e.sampled
    );
    assert!(report.result_line().contains(" e2e_p50_ms=nan "));
    Ok(())
}
