"""A Sluice cluster on loopback, and two programs that use it (run by scripts/cluster.sh).

The cluster: a 3-node NATS JetStream cluster (R3 streams), Redis, the simulator, two ingest
replicas on their own ports and three workers, every process started here and stopped at
the end (data in a throw-away folder).

  drill    steady load through both ingest replicas; SIGKILL the NATS node that leads the
           JOBS stream, later a worker; restart both; then check that every job answered
           202 completed exactly once (one terminal event; its budget reservation settled),
           that submissions during the election got 503 with Retry-After and never hung,
           and that service resumed without restarting Sluice. Exits 1 on any violation.
  scaling  throughput with 1 and then 3 workers against the simulator at 50 ms latency:
           a backlog of jobs is queued with the workers stopped, then drained; prints the
           drain rates and their ratio. A measurement, not a test: it never fails on figures.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

DEV_KEY = "sk-sluice-dev-local-key"
DEV_KEY_SHA = "017378f3b91cef44eddbb5bbd8b5b72f92a8850273b0d59752fc10f584cb500b"
TERMINAL = {"completed", "failed", "cancelled", "expired"}
REQUEST_TIMEOUT_S = 10  # a submission slower than this counts as a hang


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log(msg: str) -> None:
    print(f"[cluster] {time.strftime('%H:%M:%S')} {msg}", flush=True)


def http(method: str, url: str, body: dict | None = None, timeout: float = 5) -> tuple[int, dict, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", f"Bearer {DEV_KEY}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@dataclass
class Proc:
    name: str
    argv: list[str]
    env: dict[str, str]
    logfile: Path
    popen: subprocess.Popen | None = None

    def start(self) -> None:
        out = open(self.logfile, "ab")
        self.popen = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=out)

    def kill(self) -> None:
        if self.popen and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait()

    def stop(self) -> None:
        if self.popen and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Cluster:
    args: argparse.Namespace
    run_dir: Path
    nats: list[Proc] = field(default_factory=list)
    nats_monitor: list[int] = field(default_factory=list)
    procs: list[Proc] = field(default_factory=list)
    ingest_urls: list[str] = field(default_factory=list)
    workers: list[Proc] = field(default_factory=list)
    redis_port: int = 0
    prefix: str = ""

    def start(self, sim_latency_ms: float, worker_concurrency: int, n_workers: int) -> None:
        a = self.args
        client = [free_port() for _ in range(3)]
        routes = [free_port() for _ in range(3)]
        self.nats_monitor = [free_port() for _ in range(3)]
        for i in range(3):
            others = ",".join(f"nats://127.0.0.1:{routes[j]}" for j in range(3) if j != i)
            argv = [
                a.nats_bin, "-a", "127.0.0.1", "-p", str(client[i]), "-n", f"n{i}",
                "-js", "-sd", str(self.run_dir / f"nats{i}"), "-m", str(self.nats_monitor[i]),
                "--cluster_name", "sluice", "--cluster", f"nats://127.0.0.1:{routes[i]}",
                "--routes", others,
            ]
            p = Proc(f"nats{i}", argv, dict(os.environ), self.run_dir / f"nats{i}.log")
            p.start()
            self.nats.append(p)
        self.redis_port = free_port()
        self._spawn("redis", [a.redis_bin, "--bind", "127.0.0.1", "--port", str(self.redis_port),
                              "--dir", str(self.run_dir), "--save", "", "--appendonly", "yes",
                              "--maxmemory-policy", "noeviction"], {})
        sim_port = free_port()
        lat = str(sim_latency_ms)
        self._spawn("sim", [f"{a.bin}/sluice-sim", "--listen", f"127.0.0.1:{sim_port}",
                            "--p50-ms", lat, "--p95-ms", lat, "--p99-ms", lat], {})
        self.wait_nats()
        config = self.run_dir / "cluster.toml"
        self.prefix = f"cluster{os.getpid()}:"
        config.write_text(
            f"""
[nats]
url = "{','.join(f'nats://127.0.0.1:{p}' for p in client)}"
namespace = "cluster{os.getpid()}"
replicas = 3
publish_timeout_ms = 2000
max_queue_bytes = 268435456
[redis]
url = "redis://127.0.0.1:{self.redis_port}"
prefix = "{self.prefix}"
[ingest]
retry_after_s = 1
[worker]
concurrency = {worker_concurrency}
ack_wait_s = 5
shutdown_grace_s = 5
[upstream]
base_url = "http://127.0.0.1:{sim_port}/v1"
[[tenants]]
id = "dev"
keys = [{{ id = "dev-local", sha256 = "{DEV_KEY_SHA}" }}]
[governance.tenants.dev]
budget = {{ period = "month", tokens = 1000000000000 }}
"""
        )
        # The caller's SLUICE_<SECTION>__<KEY> variables would override the file: drop them.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
        self.env = {**inherited, "SLUICE_CONFIG": str(config), "RUST_LOG": "warn",
                    "TOKIO_WORKER_THREADS": "1"}
        for i in range(2):
            port = free_port()
            self._spawn(f"ingest{i}", [f"{a.bin}/sluice-ingest"],
                        {"SLUICE_INGEST__LISTEN": f"127.0.0.1:{port}"})
            self.ingest_urls.append(f"http://127.0.0.1:{port}")
        for i in range(n_workers):
            self.add_worker()
        deadline = time.monotonic() + 60
        for url in self.ingest_urls:
            while time.monotonic() < deadline:
                try:
                    if http("GET", f"{url}/readyz", timeout=2)[0] == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.2)
            else:
                raise SystemExit(f"ingest at {url} did not become ready (logs in {self.run_dir})")
        log(f"cluster up: NATS n0-n2 (monitor {self.nats_monitor}), ingest {self.ingest_urls}, "
            f"{n_workers} workers, simulator at {sim_latency_ms} ms")

    def add_worker(self) -> Proc:
        i = len(self.workers)
        p = self._spawn(f"worker{i}", [f"{self.args.bin}/sluice-worker"], {})
        self.workers.append(p)
        return p

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Proc:
        base = getattr(self, "env", dict(os.environ))
        p = Proc(name, argv, {**base, **env}, self.run_dir / f"{name}.log")
        p.start()
        self.procs.append(p)
        return p

    def wait_nats(self, nodes=None, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        for i in nodes if nodes is not None else range(3):
            url = f"http://127.0.0.1:{self.nats_monitor[i]}/healthz"
            while time.monotonic() < deadline:
                try:
                    with urllib.request.urlopen(url, timeout=2) as r:
                        if r.status == 200:
                            break
                except (urllib.error.URLError, OSError):
                    pass
                time.sleep(0.2)
            else:
                raise SystemExit(f"NATS node n{i} not healthy (logs in {self.run_dir})")

    def jobs_leader(self) -> int | None:
        """Index of the node leading the JOBS stream, from any live node's /jsz."""
        stream = f"cluster{os.getpid()}_JOBS"
        for i, port in enumerate(self.nats_monitor):
            if self.nats[i].popen.poll() is not None:
                continue
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/jsz?accounts=true&streams=true", timeout=2) as r:
                    jsz = json.load(r)
            except (urllib.error.URLError, OSError, ValueError):
                continue
            for acc in jsz.get("account_details") or []:
                for s in acc.get("stream_detail") or []:
                    if s.get("name") == stream and (s.get("cluster") or {}).get("leader"):
                        return int(s["cluster"]["leader"][1:])
        return None

    def redis(self, *cmd: str) -> str:
        return subprocess.run([self.args.redis_cli, "-p", str(self.redis_port), *cmd],
                              capture_output=True, text=True, check=True).stdout

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        for p in self.nats:
            p.stop()


# ---------------------------------------------------------------------------------------


@dataclass
class Submission:
    at: float
    replica: int
    status: int | None  # None: no answer within REQUEST_TIMEOUT_S
    seconds: float
    job_id: str | None = None
    retry_after: str | None = None


def submit(url: str, replica: int, n: int) -> Submission:
    t0 = time.monotonic()
    body = {"model": "sim-small", "messages": [{"role": "user", "content": f"drill job {n}"}]}
    try:
        status, headers, raw = http("POST", f"{url}/v1/jobs", body, timeout=REQUEST_TIMEOUT_S)
    except (urllib.error.URLError, OSError):
        return Submission(t0, replica, None, time.monotonic() - t0)
    sub = Submission(t0, replica, status, time.monotonic() - t0)
    headers = {k.lower(): v for k, v in headers.items()}
    sub.retry_after = headers.get("retry-after")
    if status == 202:
        sub.job_id = json.loads(raw)["id"]
    return sub


class Load:
    """Steady load: `rate` submissions per second, alternating the ingest replicas."""

    def __init__(self, urls: list[str], rate: float, threads: int = 8):
        self.urls, self.rate, self.threads = urls, rate, threads
        self.results: list[Submission] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.counter = 0
        self.started = time.monotonic()
        self.pool = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self):
        for t in self.pool:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.pool:
            t.join(timeout=REQUEST_TIMEOUT_S + 5)

    def _run(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                n = self.counter
                self.counter += 1
            due = self.started + n / self.rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if self.stop.is_set():
                return
            sub = submit(self.urls[n % len(self.urls)], n % len(self.urls), n)
            with self.lock:
                self.results.append(sub)


def job_events(url: str, job_id: str) -> list[dict]:
    req = urllib.request.Request(f"{url}/v1/jobs/{job_id}/events")
    req.add_header("Authorization", f"Bearer {DEV_KEY}")
    events = []
    with urllib.request.urlopen(req, timeout=10) as r:
        kind = None
        for line in r:
            line = line.decode().rstrip("\n")
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:") and kind == "status":
                events.append(json.loads(line[5:]))
    return events


def drill(cl: Cluster, short: bool) -> int:
    rate = 30 if short else 60
    phase = 4 if short else 8
    problems: list[str] = []
    # The R3 streams elect their first leaders after the services created them.
    deadline = time.monotonic() + 30
    while cl.jobs_leader() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    with Load(cl.ingest_urls, rate) as load:
        time.sleep(phase)
        leader = cl.jobs_leader()
        if leader is None:
            return fail(["no node reports a leader for the JOBS stream"])
        log(f"SIGKILL NATS node n{leader} (leader of JOBS)")
        t_kill = time.monotonic()
        cl.nats[leader].kill()
        # With two of three nodes left the stream keeps quorum: wait for its new leader.
        new_leader, deadline = None, time.monotonic() + 30
        while time.monotonic() < deadline and new_leader in (None, leader):
            time.sleep(0.2)
            new_leader = cl.jobs_leader()
        t_elected = time.monotonic()
        if new_leader in (None, leader):
            problems.append("no new leader of the JOBS stream within 30 s")
        else:
            log(f"new JOBS leader: n{new_leader}, {t_elected - t_kill:.1f} s after the kill")
        time.sleep(phase / 2)
        log("SIGKILL worker0")
        cl.workers[0].kill()
        time.sleep(phase / 2)
        log(f"restarting NATS node n{leader} and worker0")
        t_node_back = time.monotonic()
        cl.nats[leader].start()
        cl.workers[0].start()
        cl.wait_nats([leader])
        t_restarted = time.monotonic()
        time.sleep(phase)
    results = sorted(load.results, key=lambda s: s.at)
    log(f"{len(results)} submissions; waiting for the accepted jobs to finish")

    accepted = [s for s in results if s.status == 202]
    pending = {s.job_id: s for s in accepted}
    final: dict[str, dict] = {}
    deadline = time.monotonic() + (45 if short else 90)
    while pending and time.monotonic() < deadline:
        for job_id, s in list(pending.items()):
            try:
                status, _, raw = http("GET", f"{cl.ingest_urls[s.replica]}/v1/jobs/{job_id}", timeout=5)
            except (urllib.error.URLError, OSError):
                continue
            if status == 200:
                job = json.loads(raw)
                if job["status"] in TERMINAL:
                    final[job_id] = job
                    del pending[job_id]
        if pending:
            time.sleep(0.5)

    # Every submission was answered, in time, with 202 or 503 + Retry-After.
    hung = [s for s in results if s.status is None]
    others = [s for s in results if s.status not in (None, 202, 503)]
    refused = [s for s in results if s.status == 503]
    if hung:
        problems.append(f"{len(hung)} submissions got no answer within {REQUEST_TIMEOUT_S} s")
    if others:
        problems.append(f"{len(others)} submissions answered {sorted({s.status for s in others})}")
    no_retry_after = [s for s in refused if not s.retry_after]
    if no_retry_after:
        problems.append(f"{len(no_retry_after)} 503s without Retry-After")
    # Every accepted job completed, with exactly one terminal event, and settled.
    if pending:
        problems.append(f"{len(pending)} accepted jobs not finished, e.g. {next(iter(pending))}")
    not_completed = {j: v["status"] for j, v in final.items() if v["status"] != "completed"}
    if not_completed:
        problems.append(f"{len(not_completed)} accepted jobs ended otherwise: {sorted(set(not_completed.values()))}")
    multi_terminal = 0
    for job_id in final:
        events = job_events(cl.ingest_urls[0], job_id)
        if sum(1 for e in events if e.get("status") in TERMINAL) != 1:
            multi_terminal += 1
    if multi_terminal:
        problems.append(f"{multi_terminal} jobs without exactly one terminal event")
    # A job's reservation (`{prefix}res:{id}`, see crates/governance/src/keys.rs) is deleted
    # by the one settlement that counts; matched loosely so a hash-tagged key still matches.
    reservations = cl.redis("--scan", "--pattern", f"{cl.prefix}*res*").split()
    unsettled = sum(1 for j in final if any(j in k for k in reservations))
    if unsettled:
        problems.append(f"{unsettled} jobs still hold their budget reservation (not settled)")
    budget_tokens = 0
    for key in cl.redis("--scan", "--pattern", f"{cl.prefix}*budget*dev*").split():
        if "kbudget" in key:
            continue
        budget_tokens += int(cl.redis("HGET", key, "tokens").strip() or 0)
    used = sum(v["result"]["usage"]["total_tokens"] for v in final.values() if v.get("result"))
    # Service resumed on the two remaining nodes, before the killed one came back.
    degraded = [s for s in results if t_elected + 0.5 < s.at < t_node_back and s.status == 202]
    if not degraded:
        problems.append("nothing was accepted between the new leader's election and the node's return")
    # Service resumed: submissions after the restart were accepted and completed.
    after = [s for s in results if s.at > t_restarted + 2]
    after_ok = [s for s in after if s.status == 202 and final.get(s.job_id, {}).get("status") == "completed"]
    if not after or len(after_ok) < 0.9 * len(after):
        problems.append(f"after the restarts only {len(after_ok)} of {len(after)} submissions completed")
    # Answered after the kill (a submission in flight at the kill counts too).
    during = [s for s in refused if s.at + s.seconds >= t_kill]
    window = (f"{during[0].at - t_kill:.1f}-{during[-1].at - t_kill:.1f} s after the kill"
              if during else "none")
    slowest = max((s.seconds for s in results), default=0)
    print(f"submissions: {len(results)} ({len(accepted)} x 202, {len(refused)} x 503 with Retry-After "
          f"{sorted({s.retry_after for s in refused})}, {len(hung)} hung); slowest answer {slowest:.2f} s")
    print(f"503s before the kill: {len(refused) - len(during)}; after it: {len(during)} ({window}; new leader "
          f"{t_elected - t_kill:.1f} s after the kill, the node back after {t_node_back - t_kill:.1f} s); accepted jobs completed: "
          f"{sum(1 for v in final.values() if v['status'] == 'completed')}/{len(accepted)}, "
          f"one terminal event each: {len(final) - multi_terminal}, settled: {len(final) - unsettled}")
    print(f"budget counter {budget_tokens} tokens; usage of the completed jobs {used} tokens "
          f"(503s whose reservation was refunded add nothing)")
    print(f"with one NATS node down after the election: {len(degraded)} submissions accepted; "
          f"after the restarts: {len(after_ok)}/{len(after)} submissions accepted and completed")
    return fail(problems, cl.run_dir)


def fail(problems: list[str], run_dir: Path | None = None) -> int:
    for p in problems:
        print(f"FAIL {p}")
    if problems and run_dir is not None:
        for f in sorted(run_dir.glob("*.log")):
            errors = [l for l in f.read_text(errors="replace").splitlines() if "ERROR" in l or "Error" in l]
            for line in errors[-3:]:
                print(f"  {f.name}: {line[:200]}")
    print("drill: " + ("FAILED" if problems else "passed"))
    return 1 if problems else 0


def scaling(args: argparse.Namespace, run_dir: Path) -> int:
    rates = {}
    for n in (1, 3):
        cl = Cluster(args, run_dir / f"scaling{n}")
        cl.run_dir.mkdir()
        try:
            cl.start(sim_latency_ms=50, worker_concurrency=args.concurrency, n_workers=0)
            jobs = args.jobs
            log(f"queueing {jobs} jobs with no worker running")
            with Load(cl.ingest_urls, rate=2000, threads=16) as load:
                while len(load.results) < jobs:
                    time.sleep(0.1)
                load.stop.set()
            ids = [s.job_id for s in load.results if s.status == 202]
            log(f"{len(ids)} queued; starting {n} worker(s)")
            t0 = time.monotonic()
            for _ in range(n):
                cl.add_worker()
            # Jobs finish roughly in queue order: wait on one at a time (few requests, so the
            # polling does not take CPU from the pipeline being measured).
            remaining = list(ids)
            while remaining and time.monotonic() - t0 < 300:
                status, _, raw = http("GET", f"{cl.ingest_urls[0]}/v1/jobs/{remaining[0]}")
                if status == 200 and json.loads(raw)["status"] in TERMINAL:
                    remaining.pop(0)
                else:
                    time.sleep(0.2)
            # The rate over the middle 80% of completions: the workers start one after the
            # other and the last few jobs finish on fewer than n workers, so the first and last
            # tenth of the run measure start-up and drain, not the steady throughput.
            done_at = []
            for j in ids:
                _, _, raw = http("GET", f"{cl.ingest_urls[0]}/v1/jobs/{j}")
                t = json.loads(raw).get("timings_ms", {})
                if t.get("completed_at"):
                    done_at.append(t["completed_at"])
            done_at.sort()
            lo, hi = len(done_at) // 10, len(done_at) - 1 - len(done_at) // 10
            seconds = (done_at[hi] - done_at[lo]) / 1000 if hi > lo else float("nan")
            rates[n] = (hi - lo) / seconds
            log(f"{n} worker(s): {len(ids)} jobs, the middle {hi - lo} completed in {seconds:.2f} s = "
                f"{rates[n]:.1f} jobs/s ({len(remaining)} unfinished)")
        finally:
            cl.stop()
    print(f"scaling: 1 worker {rates[1]:.1f} jobs/s, 3 workers {rates[3]:.1f} jobs/s, "
          f"ratio {rates[3] / rates[1]:.2f}x (worker.concurrency {args.concurrency}, simulator 50 ms)")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["drill", "scaling"])
    ap.add_argument("--short", action="store_true", help="the test suite's bounded version")
    ap.add_argument("--bin", required=True)
    ap.add_argument("--nats-bin", required=True)
    ap.add_argument("--redis-bin", required=True)
    ap.add_argument("--redis-cli", required=True)
    ap.add_argument("--run-dir", type=Path, required=True)
    ap.add_argument("--jobs", type=int, default=3000, help="scaling: backlog size")
    ap.add_argument("--concurrency", type=int, default=8, help="scaling: worker.concurrency")
    args = ap.parse_args()
    if args.mode == "scaling":
        return scaling(args, args.run_dir)
    cl = Cluster(args, args.run_dir)
    try:
        cl.start(sim_latency_ms=20, worker_concurrency=16, n_workers=3)
        return drill(cl, args.short)
    finally:
        cl.stop()


if __name__ == "__main__":
    sys.exit(main())
