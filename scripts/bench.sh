#!/usr/bin/env bash
# The pipeline benchmark: starts its own NATS, Redis, simulator (zero latency), ingest and
# two workers from a release build, drives ingest with the open-loop generator
# (constant arrival rate, latency from the scheduled send time: no coordinated omission),
# and prints throughput, submit and submit-to-completed latency percentiles, and the
# memory of every process over the run.
#
#   scripts/bench.sh                     # 2,000 jobs/s for 30 s, then 5,000 jobs/s for 60 s
#   scripts/bench.sh 3000 20             # one run: RATE jobs/s for DURATION s
#   BENCH_BIN=/tmp/build-a scripts/bench.sh 3000 20   # the same with other binaries
#   BENCH_TRACING=on scripts/bench.sh 2000 30          # with every span exported (below)
#   BENCH_PROFILE=both scripts/bench.sh 3000 20        # ungoverned, then governed, same stack
#
# BENCH_PROFILE picks the Sluice configuration: `dev` (config/dev.toml, no limits: the
# default), `governed` (dev plus a production-like [governance]: tenant, key and model limits
# on requests and tokens, a daily token and cost budget, loop detection, an in-flight cap —
# all far above the bench rate, so they cost what they cost but refuse nothing), or `both`
# (each run ungoverned then governed, NATS and Redis shared, ingest and workers restarted).
# Every run prints Redis's CPU per job (INFO cpu) and its commands per job (INFO
# commandstats); a governed run then adds a short run with SLOWLOG at threshold 0, which
# gives the time of every script call and plain command per job (BENCH_BREAKDOWN=off skips
# it, =on adds it to ungoverned runs too).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

NATS_BIN="$(ensure_nats_server)"
REDIS_BIN="$(ensure_redis_server)"
# BENCH_BIN=DIR runs the binaries in DIR instead of building (A/B comparisons of two builds).
if [ -n "${BENCH_BIN:-}" ]; then
  BIN="$BENCH_BIN"
else
  log "building (release)"
  cargo build --release --bins --quiet
  BIN="$ROOT/target/release"
fi

RUN_DIR="$(mktemp -d "${TMPDIR:-/tmp}/sluice-bench.XXXXXX")"
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  sleep 0.5
  rm -rf "$RUN_DIR"
}
trap cleanup EXIT INT TERM

NATS_PORT="$(free_port)"; REDIS_PORT="$(free_port)"; SIM_PORT="$(free_port)"; INGEST_PORT="$(free_port)"
# Everything shares two cores: fewer threads per process mean fewer context switches, so by
# default every Sluice process runs one runtime thread and NATS one Go thread
# (BENCH_THREADS / BENCH_GOMAXPROCS override).
PIDS+=("$(GOMAXPROCS="${BENCH_GOMAXPROCS:-1}" start_nats "$NATS_BIN" "$NATS_PORT" "$RUN_DIR/nats" "$RUN_DIR/nats.log")")
PIDS+=("$(start_redis "$REDIS_BIN" "$REDIS_PORT" "$RUN_DIR/redis" "$RUN_DIR/redis.log")")

export SLUICE_CONFIG="$ROOT/config/dev.toml"
export SLUICE_NATS__URL="nats://127.0.0.1:$NATS_PORT"
export SLUICE_REDIS__URL="redis://127.0.0.1:$REDIS_PORT"
export SLUICE_REDIS__RESULT_TTL_S=600
export SLUICE_INGEST__LISTEN="127.0.0.1:$INGEST_PORT"
export SLUICE_UPSTREAM__BASE_URL="http://127.0.0.1:$SIM_PORT/v1"
export SLUICE_WORKER__CONCURRENCY="${BENCH_WORKER_CONCURRENCY:-256}"
export RUST_LOG=warn
export TOKIO_WORKER_THREADS="${BENCH_THREADS:-1}"

# BENCH_TRACING=on: ingest and the workers sample every trace (always_on) and export it over
# OTLP/HTTP to a local sink (scripts/otlp_sink.py), whose CPU is reported as `otlp`.
NAMES=(nats redis sim ingest worker1 worker2)
if [ "${BENCH_TRACING:-off}" = on ]; then
  OTLP_PORT="$(free_port)"
  python3 "$ROOT/scripts/otlp_sink.py" "$OTLP_PORT" "$RUN_DIR/otlp-counts.txt" &
  OTLP_PID=$!; PIDS+=($OTLP_PID)
  wait_port 127.0.0.1 "$OTLP_PORT" 10 "the OTLP sink"
  export OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$OTLP_PORT"
  export OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf
  export OTEL_TRACES_SAMPLER=always_on
  log "tracing on: every span exported to the OTLP sink on :$OTLP_PORT"
fi

"$BIN/sluice-sim" --listen "127.0.0.1:$SIM_PORT" >"$RUN_DIR/sim.log" 2>&1 &
SIM_PID=$!; PIDS+=($SIM_PID)
NATS_PID="${PIDS[0]}"; REDIS_PID="${PIDS[1]}"

# The governed profile: dev.toml plus production-like governance, every limit far above the
# bench rate (5,000 jobs/s is 300,000 requests a 60 s window), so nothing is refused.
GOVERNED_TOML="$RUN_DIR/governed.toml"
{ cat "$ROOT/config/dev.toml"; cat <<'TOML'

[governance]
loop_max_per_minute = 20
max_in_flight_per_tenant = 2048
tenant = { requests = 100000000, tokens = 100000000000, burst = 1.0 }
key = { requests = 100000000, tokens = 100000000000, burst = 1.0 }
model = { requests = 100000000, tokens = 100000000000, burst = 1.0 }
[governance.tenants.dev]
budget = { period = "day", tokens = 1000000000000, cost_usd = 1000000.0 }
[governance.prices.sim-small]
prompt_per_mtok = 0.15
completion_per_mtok = 0.6
TOML
} >"$GOVERNED_TOML"

start_sluice() { # start_sluice CONFIG: ingest and two workers, ready
  export SLUICE_CONFIG="$1"
  "$BIN/sluice-ingest" >>"$RUN_DIR/ingest.log" 2>&1 &
  INGEST_PID=$!
  "$BIN/sluice-worker" >>"$RUN_DIR/worker1.log" 2>&1 &
  W1_PID=$!
  "$BIN/sluice-worker" >>"$RUN_DIR/worker2.log" 2>&1 &
  W2_PID=$!
  PIDS+=("$INGEST_PID" "$W1_PID" "$W2_PID")
  PROCS=("$NATS_PID" "$REDIS_PID" "$SIM_PID" "$INGEST_PID" "$W1_PID" "$W2_PID")
  if [ -n "${OTLP_PID:-}" ]; then PROCS+=("$OTLP_PID"); fi
  for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$INGEST_PORT/readyz" >/dev/null 2>&1 && break
    sleep 0.2
  done
  curl -fsS "http://127.0.0.1:$INGEST_PORT/readyz" >/dev/null || die "ingest not ready"
  # A fresh stack is slower for its first seconds (JetStream creating its files, Redis and
  # every process growing their buffers, connections being dialled): warm it up unreported.
  log "warming up: 1000 jobs/s for 5 s (not reported)"
  "$BIN/sluice-bench" --url "http://127.0.0.1:$INGEST_PORT" --api-key sk-sluice-dev-local-key \
    --rate 1000 --duration 5 --warmup 0 --e2e-sample 0 --quiet >/dev/null
}

stop_sluice() { # the processes start_sluice started, drained of their jobs by then
  local pid
  for pid in "$INGEST_PID" "$W1_PID" "$W2_PID"; do kill "$pid" 2>/dev/null || true; done
  for pid in "$INGEST_PID" "$W1_PID" "$W2_PID"; do
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  done
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
sys_ticks() { awk '{print $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
TICKS_PER_S="$(getconf CLK_TCK)"
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
hwm_kib() { awk '/^VmHWM/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
if [ -n "${OTLP_PID:-}" ]; then NAMES+=(otlp); fi

sample_memory() { # every 5 s: one line of RSS (MiB) per process
  while true; do
    local line="rss_mib" i
    for i in "${!PROCS[@]}"; do line+=" ${NAMES[$i]}=$(( $(rss_kib "${PROCS[$i]}") / 1024 ))"; done
    echo "$line"
    sleep 5
  done
}

redis_cli() { redis-cli -p "$REDIS_PORT" "$@"; }
# Redis's own CPU in µs (user + system), finer than /proc's ticks.
redis_cpu_us() { redis_cli INFO cpu | tr -d '\r' | awk -F: '/^used_cpu_(sys|user):/ {s += $2} END {printf "%d", s * 1e6}'; }

run() { # run RATE DURATION
  log "open loop: $1 jobs/s for $2 s (plus 3 s warm-up), profile $PROFILE"
  redis_cli CONFIG RESETSTAT >/dev/null
  local redis_before
  redis_before="$(redis_cpu_us)"
  sample_memory > "$RUN_DIR/mem-$1.txt" &
  local sampler=$! i
  local before=() before_sys=()
  for i in "${!PROCS[@]}"; do
    before+=("$(cpu_ticks "${PROCS[$i]}")"); before_sys+=("$(sys_ticks "${PROCS[$i]}")")
  done
  # The generator's own CPU (it shares the cores with what it measures), where GNU time is.
  local timed=()
  [ -x /usr/bin/time ] && timed=(/usr/bin/time -f "%U %S" -o "$RUN_DIR/gen-cpu-$1.txt")
  "${timed[@]}" "$BIN/sluice-bench" --url "http://127.0.0.1:$INGEST_PORT" --api-key sk-sluice-dev-local-key \
    --rate "$1" --duration "$2" --warmup 3 --e2e-sample 20000 --quiet | tee "$RUN_DIR/bench-$1.txt"
  kill "$sampler" 2>/dev/null || true
  local jobs
  jobs="$(grep -oE '^RESULT .* ok=[0-9]+' "$RUN_DIR/bench-$1.txt" | grep -oE 'ok=[0-9]+$' | cut -d= -f2)"
  if [ -n "$jobs" ] && [ "$jobs" -gt 0 ]; then
    echo "CPU time per accepted job over the whole run, warm-up and drain included (µs):"
    local line="  " kernel="  " total=0 total_sys=0 used sys
    for i in "${!PROCS[@]}"; do
      used=$(( ($(cpu_ticks "${PROCS[$i]}") - ${before[$i]}) * 1000000 / TICKS_PER_S / jobs ))
      sys=$(( ($(sys_ticks "${PROCS[$i]}") - ${before_sys[$i]}) * 1000000 / TICKS_PER_S / jobs ))
      total=$(( total + used )); total_sys=$(( total_sys + sys ))
      line+="${NAMES[$i]}=$used "; kernel+="${NAMES[$i]}=$sys "
    done
    echo "$line total=$total"
    echo "  of which in the kernel:"
    echo "$kernel total=$total_sys"
    if [ -s "$RUN_DIR/gen-cpu-$1.txt" ]; then
      awk -v jobs="$jobs" '{printf "  generator (submit and drain): %d µs per job\n", ($1 + $2) * 1000000 / jobs}' "$RUN_DIR/gen-cpu-$1.txt"
    fi
    echo "Redis CPU per accepted job (INFO cpu, user + system; warm-up and drain included): $(( ($(redis_cpu_us) - redis_before) / jobs )) µs ($PROFILE)"
    redis_cli INFO commandstats | tr -d '\r' >"$RUN_DIR/commandstats.txt"
    python3 "$ROOT/scripts/redis_cost.py" commandstats "$RUN_DIR/commandstats.txt" "$jobs"
  fi
  echo "memory over the run (RSS, MiB, every 5 s):"
  sed 's/^/  /' "$RUN_DIR/mem-$1.txt"
}

# A short run with every command in SLOWLOG (threshold 0): what each script call and each
# plain command costs, per job. Logging every command costs Redis time of its own, so this
# is a run apart from the measured ones.
breakdown() {
  local rate=1000 duration=5
  log "command breakdown: $rate jobs/s for $duration s with SLOWLOG at threshold 0 ($PROFILE)"
  redis_cli CONFIG SET slowlog-max-len 1000000 >/dev/null
  redis_cli SLOWLOG RESET >/dev/null
  redis_cli CONFIG SET slowlog-log-slower-than 0 >/dev/null
  "$BIN/sluice-bench" --url "http://127.0.0.1:$INGEST_PORT" --api-key sk-sluice-dev-local-key \
    --rate "$rate" --duration "$duration" --warmup 0 --e2e-sample 0 --quiet >"$RUN_DIR/breakdown.txt"
  redis_cli CONFIG SET slowlog-log-slower-than -1 >/dev/null
  redis_cli --json SLOWLOG GET 1000000 >"$RUN_DIR/slowlog.json"
  redis_cli SLOWLOG RESET >/dev/null
  local jobs
  jobs="$(grep -oE '^RESULT .* ok=[0-9]+' "$RUN_DIR/breakdown.txt" | grep -oE 'ok=[0-9]+$' | cut -d= -f2)"
  [ -n "$jobs" ] && [ "$jobs" -gt 0 ] || { log "the breakdown run completed no job"; return 0; }
  python3 "$ROOT/scripts/redis_cost.py" slowlog "$RUN_DIR/slowlog.json" "$jobs" \
    "$ROOT"/crates/*/lua/*.lua
}

PROFILE="${BENCH_PROFILE:-dev}"
case "$PROFILE" in
  dev | governed) PROFILES=("$PROFILE") ;;
  both) PROFILES=(dev governed) ;;
  *) die "BENCH_PROFILE is dev, governed or both, not $PROFILE" ;;
esac
config_of() { if [ "$1" = governed ]; then echo "$GOVERNED_TOML"; else echo "$ROOT/config/dev.toml"; fi; }
wants_breakdown() {
  case "${BENCH_BREAKDOWN:-auto}" in
    on) true ;;
    off) false ;;
    *) [ "$1" = governed ] ;;
  esac
}

if [ $# -ge 1 ]; then RUNS=("$1:${2:-30}"); else RUNS=("2000:30" "5000:60"); fi
# With both profiles, each run is made ungoverned and governed back to back, so the two
# compare at the same moment of a machine others share.
for r in "${RUNS[@]}"; do
  for PROFILE in "${PROFILES[@]}"; do
    start_sluice "$(config_of "$PROFILE")"
    run "${r%%:*}" "${r##*:}"
    if wants_breakdown "$PROFILE"; then breakdown; fi
    if [ "$r" != "${RUNS[-1]}" ] || [ "$PROFILE" != "${PROFILES[-1]}" ]; then stop_sluice; fi
  done
done

echo "peak RSS (VmHWM, MiB; ingest and workers: the last profile's):"
for i in "${!PROCS[@]}"; do echo "  ${NAMES[$i]}: $(( $(hwm_kib "${PROCS[$i]}") / 1024 ))"; done
if [ -n "${OTLP_PID:-}" ]; then
  kill "$OTLP_PID" 2>/dev/null || true
  for _ in $(seq 1 50); do [ -s "$RUN_DIR/otlp-counts.txt" ] && break; sleep 0.1; done
  echo "OTLP sink received: $(cat "$RUN_DIR/otlp-counts.txt" 2>/dev/null || echo nothing)"
fi
