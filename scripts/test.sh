#!/usr/bin/env bash
# Runs every test. Installs what is missing (a new-enough nats-server, redis-server), starts
# its own NATS (JetStream) and Redis on free loopback ports with throw-away data, so it never
# touches a running stack, runs the whole suite and exits non-zero on any failure.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

NATS_BIN="$(ensure_nats_server)"
REDIS_BIN="$(ensure_redis_server)"
command -v cargo >/dev/null || die "cargo is required (https://rustup.rs)"

RUN_DIR="$(mktemp -d "${TMPDIR:-/tmp}/sluice-test.XXXXXX")"
PIDS=()
cleanup() {
  local status=$? pid i
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  # The servers were started from a subshell, so `wait` cannot see them: poll (bounded) until
  # they are gone, or removing their data races with their last writes.
  for pid in "${PIDS[@]}"; do
    for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  done
  rm -rf "$RUN_DIR" 2>/dev/null || true
  exit "$status"
}
trap cleanup EXIT INT TERM

NATS_PORT="$(free_port)"
REDIS_PORT="$(free_port)"
PIDS+=("$(start_nats "$NATS_BIN" "$NATS_PORT" "$RUN_DIR/nats" "$RUN_DIR/nats.log")")
PIDS+=("$(start_redis "$REDIS_BIN" "$REDIS_PORT" "$RUN_DIR/redis" "$RUN_DIR/redis.log")")
log "nats-server $("$NATS_BIN" --version | head -n1) on :$NATS_PORT, redis on :$REDIS_PORT"

export SLUICE_TEST_NATS_URL="nats://127.0.0.1:$NATS_PORT"
export SLUICE_TEST_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
export SLUICE_TEST_NATS_BIN="$NATS_BIN"
export RUST_BACKTRACE=1

# The dashboard's browser test: Debian's chromium driven by playwright-core.
CHROMIUM="$(ensure_chromium)"
[ -n "$CHROMIUM" ] && export CHROMIUM
command -v npm >/dev/null && export SLUICE_TEST_NODE_MODULES="$(ensure_playwright)"

# The end-to-end tests start worker processes (to SIGKILL them), so build the binaries first.
cargo build --workspace --bins --quiet
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast --failure-output final "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi

# The store and governance tests (with the multi-replica limit and budget exactness tests)
# against a 3-master Redis Cluster on loopback: several seed URLs in SLUICE_TEST_REDIS_URL
# make every store a cluster client.
start_redis_cluster "$REDIS_BIN" 3 "$RUN_DIR/redis-cluster"
log "redis cluster on :${REDIS_CLUSTER_PORTS[*]}"
if cargo nextest --version >/dev/null 2>&1; then
  SLUICE_TEST_REDIS_URL="$REDIS_CLUSTER_URL" cargo nextest run --no-fail-fast --failure-output final \
    -p sluice-store -p sluice-governance -p sluice-e2e \
    -E 'package(sluice-store) | package(sluice-governance) | binary(store) | binary(governance)'
else
  SLUICE_TEST_REDIS_URL="$REDIS_CLUSTER_URL" cargo test --no-fail-fast \
    -p sluice-store -p sluice-governance -p sluice-e2e --lib --test redis --test store --test governance
fi

# The official Python SDKs (openai, standardwebhooks) against a stack on the same servers.
bash "$ROOT/scripts/sdk_test.sh"

# docker-compose.yml and k8s/ against their schemas and the services' own config and routes.
bash "$ROOT/scripts/validate_deploy.sh"

# A loopback 3-node NATS cluster loses the JOBS stream's leader and a worker under load.
bash "$ROOT/scripts/cluster.sh" drill --short

# Supply chain: licenses, duplicate majors and sources need no network (deny.toml). The
# advisory database is a git fetch: checked when it can be fetched, else skipped, said so.
CARGO_DENY="$(ensure_cargo_deny)"
if [ -n "$CARGO_DENY" ]; then
  "$CARGO_DENY" check licenses bans sources
  if timeout 120 "$CARGO_DENY" fetch db >/dev/null 2>&1; then
    "$CARGO_DENY" check advisories
  else
    log "cargo-deny: the advisory database cannot be fetched here; advisories not checked"
  fi
else
  log "cargo-deny could not be installed: skipping licenses/bans/sources"
fi

# The API against its own OpenAPI document (schemathesis, short bounded mode).
bash "$ROOT/scripts/contract_test.sh"
