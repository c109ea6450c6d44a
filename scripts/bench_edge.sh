#!/usr/bin/env bash
# Load test of the edge: 2,000 idle connections plus 500 SSE streams held open on one ingest
# while a normal client keeps submitting jobs and listing models. Prints ingest's resident
# memory (VmRSS from /proc) before, with the idle connections and with the streams, the
# memory per idle connection and per stream, and the normal client's latency and errors.
# Starts its own NATS, Redis and ingest on loopback (no worker: jobs stay queued, so their
# streams stay open). A program that prints figures, not a test.
#
#   bash scripts/bench_edge.sh [IDLE] [STREAMS]     (default 2000 500)
#   BENCH_PROFILE=debug bash scripts/bench_edge.sh  (skip the release build)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
IDLE="${1:-2000}"; STREAMS="${2:-500}"
PROFILE="${BENCH_PROFILE:-release}"
# Every connection is a file descriptor on both ends (this script's client and ingest).
ulimit -n "$(( (IDLE + STREAMS) * 2 + 1024 ))" 2>/dev/null || ulimit -n "$(ulimit -Hn)"

NATS_BIN="$(ensure_nats_server)"
REDIS_BIN="$(ensure_redis_server)"
if [ "$PROFILE" = release ]; then cargo build --release --quiet -p sluice-ingest; else cargo build --quiet -p sluice-ingest; fi
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE"

new_run_dir sluice-bench-edge
NATS_PORT="$(free_port)"; REDIS_PORT="$(free_port)"; INGEST_PORT="$(free_port)"
NATS_PID="$(start_nats "$NATS_BIN" "$NATS_PORT" "$RUN_DIR/nats" "$RUN_DIR/nats.log")"; PIDS+=("$NATS_PID")
REDIS_PID="$(start_redis "$REDIS_BIN" "$REDIS_PORT" "$RUN_DIR/redis" "$RUN_DIR/redis.log")"; PIDS+=("$REDIS_PID")
KEY="sk-bench-$RANDOM$RANDOM"
HASH="$(printf '%s' "$KEY" | sha256sum | cut -d' ' -f1)"
cat >"$RUN_DIR/sluice.toml" <<TOML
[nats]
url = "nats://127.0.0.1:$NATS_PORT"
[redis]
url = "redis://127.0.0.1:$REDIS_PORT"
[ingest]
listen = "127.0.0.1:$INGEST_PORT"
max_connections = $(( IDLE + STREAMS + 256 ))
# Held for the measurement; the default (10 s) closes a connection that sends nothing.
header_read_timeout_ms = 600000
[delivery]
max_streams = $(( STREAMS + 16 ))
streams_per_tenant = $(( STREAMS + 16 ))
[[tenants]]
id = "bench"
keys = [{ id = "bench-1", sha256 = "$HASH" }]
TOML
RUST_LOG=warn "$BIN/sluice-ingest" --config "$RUN_DIR/sluice.toml" >"$RUN_DIR/ingest.log" 2>&1 & PIDS+=("$!"); INGEST_PID=$!
wait_port 127.0.0.1 "$INGEST_PORT" 30 sluice-ingest
sleep 2
log "ingest pid $INGEST_PID ($PROFILE build); $IDLE idle connections, $STREAMS SSE streams"

python3 - "$INGEST_PORT" "$KEY" "$INGEST_PID" "$IDLE" "$STREAMS" <<'PY'
import asyncio, json, statistics, sys, time
port, key, pid, idle_n, streams_n = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])

def rss_kib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

async def request(method, path, body=None):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    data = json.dumps(body).encode() if body is not None else b""
    w.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
    await w.drain()
    resp = await r.read()
    w.close()
    head, _, payload = resp.partition(b"\r\n\r\n")
    return int(head.split()[1]), payload

CHAT = {"model": "sim-small", "messages": [{"role": "user", "content": "hello"}]}

async def normal_client(stop, lat, errors):
    while not stop.is_set():
        for method, path, body in (("GET", "/v1/models", None), ("POST", "/v1/jobs", CHAT)):
            t = time.perf_counter()
            try:
                status, _ = await asyncio.wait_for(request(method, path, body), 10)
                (lat if status in (200, 202) else errors).append(time.perf_counter() - t)
            except Exception:
                errors.append(0)
        await asyncio.sleep(0.02)

async def settle():
    await asyncio.sleep(3)
    return rss_kib()

async def main():
    stop = asyncio.Event(); lat, errors = [], []
    client = asyncio.create_task(normal_client(stop, lat, errors))
    base = await settle()
    idle = []
    for _ in range(idle_n):
        idle.append(await asyncio.open_connection("127.0.0.1", port))
    with_idle = await settle()
    # Streams over 50 queued jobs.
    jobs = []
    for _ in range(50):
        status, payload = await request("POST", "/v1/jobs", CHAT)
        jobs.append(json.loads(payload)["id"])
    streams = []
    for i in range(streams_n):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(f"GET /v1/jobs/{jobs[i % len(jobs)]}/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n".encode())
        await w.drain()
        head = await r.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head[:80]
        streams.append((r, w))
    with_streams = await settle()
    lat.clear(); errors.clear()
    await asyncio.sleep(10)  # normal traffic measured with everything open
    stop.set(); await client
    lat_ms = sorted(x * 1000 for x in lat)
    p = lambda q: lat_ms[min(len(lat_ms) - 1, int(q * len(lat_ms)))] if lat_ms else float("nan")
    print(f"ingest RSS: {base/1024:.1f} MiB at rest, {with_idle/1024:.1f} MiB with {idle_n} idle connections, "
          f"{with_streams/1024:.1f} MiB with {streams_n} SSE streams as well")
    print(f"per idle connection: {(with_idle-base)/idle_n:.1f} KiB; per SSE stream: {(with_streams-with_idle)/streams_n:.1f} KiB")
    print(f"normal client meanwhile (10 s): {len(lat)} ok, {len(errors)} errors, p50 {p(0.5):.1f} ms, p99 {p(0.99):.1f} ms")
    for _, w in idle: w.close()
    for _, w in streams: w.close()

asyncio.run(main())
PY
