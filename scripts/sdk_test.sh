#!/usr/bin/env bash
# Runs the Python SDK tests (tests/python) and the Node SDK tests (tests/node) against a
# Sluice stack it starts itself: the simulator, one ingest and one worker, on free loopback
# ports, using the NATS and Redis given in SLUICE_TEST_NATS_URL / SLUICE_TEST_REDIS_URL
# (scripts/test.sh passes its own). Installs the `openai` and `standardwebhooks` Python
# packages into a venv under .tools/, and the pinned `openai` npm package (Node 20+) under
# .tools/node. Exits non-zero when a test fails.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

: "${SLUICE_TEST_NATS_URL:?set SLUICE_TEST_NATS_URL}"
: "${SLUICE_TEST_REDIS_URL:?set SLUICE_TEST_REDIS_URL}"
NATS_URL="$SLUICE_TEST_NATS_URL"
REDIS_URL="$SLUICE_TEST_REDIS_URL"

VENV="$TOOLS/pyenv"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import openai, standardwebhooks' 2>/dev/null; then
  log "installing openai and standardwebhooks into $VENV"
  python3 -m venv "$VENV" >&2
  "$VENV/bin/pip" install --quiet --disable-pip-version-check openai standardwebhooks >&2 \
    || die "could not install the Python SDK test dependencies"
fi

# The official Node SDK, pinned (it sends encoding_format=base64 by default, among others).
OPENAI_NODE_VERSION="6.9.1"
NODE_DIR="$TOOLS/node"
command -v node >/dev/null || die "node (20 or newer) is required for the Node SDK tests"
if ! grep -q "\"version\": \"$OPENAI_NODE_VERSION\"" "$NODE_DIR/node_modules/openai/package.json" 2>/dev/null; then
  log "installing openai@$OPENAI_NODE_VERSION (npm) into $NODE_DIR"
  mkdir -p "$NODE_DIR"
  (cd "$NODE_DIR" && npm install --no-audit --no-fund --silent "openai@$OPENAI_NODE_VERSION" >&2) \
    || die "could not install the Node SDK"
fi

BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug"
for b in sluice-sim sluice-ingest sluice-worker; do
  [ -x "$BIN/$b" ] || die "$BIN/$b not built; run cargo build --bins"
done

new_run_dir sluice-sdk

KEY="sk-sdk-test-$RANDOM$RANDOM"
HASH="$(printf '%s' "$KEY" | sha256sum | cut -d' ' -f1)"
NS="sdk$RANDOM"
SIM_PORT="$(free_port)"
INGEST_PORT="$(free_port)"
cat >"$RUN_DIR/sluice.toml" <<TOML
[nats]
url = "$NATS_URL"
namespace = "$NS"
max_queue_bytes = 67108864

[redis]
url = "$REDIS_URL"
prefix = "$NS:"

[ingest]
listen = "127.0.0.1:$INGEST_PORT"

[worker]
max_attempts = 2
backoff_base_ms = 50
backoff_max_ms = 200
idle_poll_ms = 100

[webhooks]
allow_private = ["127.0.0.1"]
schedule_ms = [100, 100, 100]
jitter = 0.0

[upstream]
base_url = "http://127.0.0.1:$SIM_PORT/v1"

[[tenants]]
id = "sdk"
keys = [{ id = "sdk-1", sha256 = "$HASH" }]
TOML

export RUST_LOG=warn
# The services read SLUICE_* variables as config overrides; keep the test ones away.
unset SLUICE_TEST_NATS_URL SLUICE_TEST_REDIS_URL SLUICE_TEST_NATS_BIN
# Retry-After 0: the 429 test must not sideline the only deployment (the worker's pools
# honour Retry-After) for the tests that follow it.
printf 'retry_after_s = 0\n' >"$RUN_DIR/sim.toml"
"$BIN/sluice-sim" --listen "127.0.0.1:$SIM_PORT" --config "$RUN_DIR/sim.toml" >"$RUN_DIR/sim.log" 2>&1 &
PIDS+=("$!")
"$BIN/sluice-worker" --config "$RUN_DIR/sluice.toml" >"$RUN_DIR/worker.log" 2>&1 &
PIDS+=("$!")
"$BIN/sluice-ingest" --config "$RUN_DIR/sluice.toml" >"$RUN_DIR/ingest.log" 2>&1 &
PIDS+=("$!")
wait_port 127.0.0.1 "$SIM_PORT" 15 sluice-sim
wait_port 127.0.0.1 "$INGEST_PORT" 15 sluice-ingest
for _ in $(seq 1 150); do
  if python3 - "$INGEST_PORT" <<'PY' 2>/dev/null; then break; fi
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/readyz", timeout=1)
PY
  sleep 0.1
done

log "Python SDK tests against ingest on :$INGEST_PORT"
set +e
SLUICE_SDK_BASE_URL="http://127.0.0.1:$INGEST_PORT/v1" SLUICE_SDK_KEY="$KEY" \
  "$VENV/bin/python" -m unittest discover -s tests/python -p 'test_*.py' -v 2>&1 | tee "$RUN_DIR/unittest.log"
STATUS="${PIPESTATUS[0]}"
set -e
RAN="$(grep -oE '^Ran [0-9]+ tests?' "$RUN_DIR/unittest.log" | grep -oE '[0-9]+' || echo 0)"
if [ "$STATUS" -ne 0 ] || [ "$RAN" -eq 0 ]; then
  log "ingest log:"; tail -n 40 "$RUN_DIR/ingest.log" >&2
  log "worker log:"; tail -n 40 "$RUN_DIR/worker.log" >&2
  FAILED="$(grep -cE '\.\.\. (FAIL|ERROR)$' "$RUN_DIR/unittest.log" || true)"
  echo "sdk: $((RAN - FAILED)) passed, $FAILED failed"
  die "Python SDK tests failed"
fi
echo "sdk: $RAN passed, 0 failed"

log "Node SDK tests against ingest on :$INGEST_PORT"
if ! SLUICE_SDK_BASE_URL="http://127.0.0.1:$INGEST_PORT/v1" SLUICE_SDK_KEY="$KEY" \
  SLUICE_SDK_SIM_URL="http://127.0.0.1:$SIM_PORT" NODE_PATH="$NODE_DIR/node_modules" \
  node --test tests/node/ 2>&1 | tee "$RUN_DIR/node.log"; then
  log "ingest log:"; tail -n 40 "$RUN_DIR/ingest.log" >&2
  die "Node SDK tests failed"
fi
echo "sdk (node): $(grep -oE '^# pass [0-9]+' "$RUN_DIR/node.log" | grep -oE '[0-9]+') passed, 0 failed"
