#!/usr/bin/env bash
# Runs the whole stack in the foreground: NATS (JetStream) and Redis (started here unless
# already answering at the configured addresses), the upstream simulator, ingest and two
# worker replicas. Ctrl-C stops what this script started and nothing else.
#
#   scripts/up.sh                      # config/dev.toml, the `fast` build profile
#   SLUICE_CONFIG=my.toml scripts/up.sh
#   SLUICE_PROFILE=release scripts/up.sh   # fully optimized (fat LTO; several minutes more)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

CONFIG="${SLUICE_CONFIG:-$ROOT/config/dev.toml}"
export SLUICE_CONFIG="$CONFIG"
NATS_PORT="${SLUICE_NATS_PORT:-4222}"
REDIS_PORT="${SLUICE_REDIS_PORT:-6379}"
SIM_LISTEN="${SLUICE_SIM_LISTEN:-127.0.0.1:9100}"
export SLUICE_NATS__URL="${SLUICE_NATS__URL:-nats://127.0.0.1:$NATS_PORT}"
export SLUICE_REDIS__URL="${SLUICE_REDIS__URL:-redis://127.0.0.1:$REDIS_PORT}"
PROFILE="${SLUICE_PROFILE:-fast}"
DEV_KEY="sk-sluice-dev-local-key"

PIDS=()
stop_all() {
  trap - INT TERM EXIT
  STOPPING=1
  log "stopping"
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop_all INT TERM EXIT

mkdir -p "$DATA/logs"
if port_open 127.0.0.1 "$NATS_PORT"; then
  log "using the NATS server already answering on :$NATS_PORT"
else
  NATS_BIN="$(ensure_nats_server)"
  PIDS+=("$(start_nats "$NATS_BIN" "$NATS_PORT" "$DATA/nats" "$DATA/logs/nats.log")")
  log "started nats-server on :$NATS_PORT (data in .data/nats)"
fi
if port_open 127.0.0.1 "$REDIS_PORT"; then
  log "using the Redis server already answering on :$REDIS_PORT"
else
  REDIS_BIN="$(ensure_redis_server)"
  PIDS+=("$(REDIS_APPENDONLY=yes start_redis "$REDIS_BIN" "$REDIS_PORT" "$DATA/redis" "$DATA/logs/redis.log")")
  log "started redis-server on :$REDIS_PORT (data in .data/redis)"
fi

# Only the binaries the stack runs (not the CLI, the load generator or the tests).
log "building sluice-sim, sluice-ingest and sluice-worker (profile $PROFILE)"
cargo build --profile "$PROFILE" --quiet -p sluice-sim -p sluice-ingest -p sluice-worker --bins
if [ "$PROFILE" = dev ]; then BIN="$ROOT/target/debug"; else BIN="$ROOT/target/$PROFILE"; fi

SERVICES=()
"$BIN/sluice-sim" --listen "$SIM_LISTEN" &
SERVICES+=($!)
"$BIN/sluice-ingest" &
SERVICES+=($!)
for i in 1 2; do
  SLUICE_WORKER__METRICS_LISTEN="127.0.0.1:$((9190 + i))" "$BIN/sluice-worker" &
  SERVICES+=($!)
done
# Services stop first, then the servers they use.
PIDS=("${SERVICES[@]}" "${PIDS[@]}")

INGEST_LISTEN="$(SLUICE_CONFIG="$CONFIG" python3 - <<'PY'
import os, tomllib
cfg = tomllib.load(open(os.environ["SLUICE_CONFIG"], "rb"))
print(os.environ.get("SLUICE_INGEST__LISTEN") or cfg.get("ingest", {}).get("listen", "127.0.0.1:8080"))
PY
)"
URL="http://$INGEST_LISTEN"
for _ in $(seq 1 100); do
  curl -fsS "$URL/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fsS "$URL/readyz" >/dev/null 2>&1 || die "ingest did not become ready at $URL (logs above)"

cat <<EOT

  Sluice is up.
    API        $URL   (OpenAPI-style reference in README.md)
    dev key    $DEV_KEY
    simulator  http://$SIM_LISTEN/v1     workers' metrics: http://127.0.0.1:9191/metrics, :9192

  Submit a job:
    curl -s $URL/v1/jobs -H 'Authorization: Bearer $DEV_KEY' -H 'Content-Type: application/json' \\
      -d '{"model":"sim-small","messages":[{"role":"user","content":"Hello, Sluice"}]}'
  Then poll it:
    curl -s $URL/v1/jobs/<id> -H 'Authorization: Bearer $DEV_KEY'

  Ctrl-C stops everything this script started.
EOT
wait -n "${SERVICES[@]}" || true
[ -n "${STOPPING:-}" ] || log "a process exited; stopping the stack"
