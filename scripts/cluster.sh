#!/usr/bin/env bash
# A Sluice cluster on loopback: a 3-node NATS JetStream cluster (R3 streams), Redis, the
# simulator, two ingest replicas and three workers (see scripts/cluster.py).
#
#   scripts/cluster.sh drill [--short]   # kill the JOBS leader and a worker under load; checks
#                                        # exactly-once completion, 503 + Retry-After, recovery
#   scripts/cluster.sh scaling           # throughput with 1 vs 3 workers, simulator at 50 ms
#
# Uses the binaries in target/debug (CLUSTER_BIN=DIR for others, e.g. target/release for
# the scaling figures). Everything it starts is stopped at the end; data is thrown away.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

MODE="${1:-drill}"; shift || true
BIN="${CLUSTER_BIN:-$ROOT/target/debug}"
for b in sluice-ingest sluice-worker sluice-sim; do
  [ -x "$BIN/$b" ] || die "$BIN/$b not built; run cargo build --workspace --bins"
done
NATS_BIN="$(ensure_nats_server)"
REDIS_BIN="$(ensure_redis_server)"
REDIS_CLI="$(dirname "$REDIS_BIN")/redis-cli"
[ -x "$REDIS_CLI" ] || REDIS_CLI="$(command -v redis-cli)" || die "redis-cli not found"

new_run_dir sluice-cluster
python3 "$ROOT/scripts/cluster.py" "$MODE" --bin "$BIN" --nats-bin "$NATS_BIN" \
  --redis-bin "$REDIS_BIN" --redis-cli "$REDIS_CLI" --run-dir "$RUN_DIR" "$@"
