#!/usr/bin/env bash
# What one call of the admission script costs inside Redis, without Sluice around it: a
# private Redis on a free loopback port, `redis-benchmark` (8 clients) calling EVALSHA with
# the governed bench profile's arguments (tenant, key and model limits on requests and
# tokens, a daily token and cost budget, loop detection; every prompt and job new), then
# Redis's CPU per call (INFO cpu, user + system: socket reads and writes included, time
# spent descheduled not) and its wall-clock µs per call (INFO commandstats).
#
#   scripts/admit_lua_bench.sh [SCRIPT] [CALLS]    # crates/governance/lua/admit.lua, 60000
#
# For an A/B, run it on the two scripts alternately (e.g. one from `git show REV:PATH`).
# `ADMIT_TENANT_KEY=gcra` passes the tenant limit's state as its own hash (the layout before
# it moved into the tenant hash).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

SCRIPT="${1:-crates/governance/lua/admit.lua}"
CALLS="${2:-60000}"
REDIS_BIN="$(ensure_redis_server)"
command -v redis-benchmark >/dev/null || die "redis-benchmark is required (Debian: redis-tools)"
RUN_DIR="$(mktemp -d "${TMPDIR:-/tmp}/sluice-admit-bench.XXXXXX")"
PORT="$(free_port)"
PID="$(start_redis "$REDIS_BIN" "$PORT" "$RUN_DIR/redis" "$RUN_DIR/redis.log")"
trap 'kill "$PID" 2>/dev/null || true; sleep 0.3; rm -rf "$RUN_DIR"' EXIT INT TERM
cli() { redis-cli -p "$PORT" "$@"; }
cpu_us() { cli INFO cpu | tr -d '\r' | awk -F: '/^used_cpu_(sys|user):/ {s += $2} END {printf "%d", s * 1e6}'; }

SHA="$(cli SCRIPT LOAD "$(cat "$SCRIPT")")"
T='b:tenant:{bench}'
if [ "${ADMIT_TENANT_KEY:-tenant}" = gcra ]; then TDIM='b:gcra:{bench}:tenant'; else TDIM="$T"; fi
# now, loop max, budget tokens and cost, estimate tokens and cost, TTLs, reserve, no key
# budget, 3 dimensions: T and tau of the request and token limits (100M requests and 100G
# tokens a 60 s window).
ARGS=(8 "$T" 'b:loop:{bench}:-:__rand_int__' 'b:budget:{bench}:d20261202'
  'b:res:{bench}:__rand_int__' "$T" "$TDIM" 'b:gcra:{bench}:key:k1' 'b:gcra:{bench}:model:m'
  1764690000000 20 1000000000000 1000000000000000000 50 20 604800 90000 1 0 0 3600 3)
for _ in 1 2 3; do ARGS+=(0.0006 60000 0.0000006 60000); done
echo "reply: $(cli EVALSHA "$SHA" "${ARGS[@]}" | tr '\n' ' ')"
cli CONFIG RESETSTAT >/dev/null
before="$(cpu_us)"
redis-benchmark -p "$PORT" -c 8 -n "$CALLS" -r 1000000000 -q EVALSHA "$SHA" "${ARGS[@]}" >/dev/null
after="$(cpu_us)"
wall="$(cli INFO commandstats | tr -d '\r' | awk -F'usec_per_call=' '/^cmdstat_evalsha:/ {split($2, a, ","); print a[1]}')"
echo "$SCRIPT: Redis CPU $(( (after - before) / CALLS )) µs per call, $wall µs per call wall-clock (commandstats), $CALLS calls"
