"""Offline validation of the deployment artifacts (run by scripts/validate_deploy.sh).

1. Renders every overlay under k8s/overlays with `kubectl kustomize` (pinned kubectl).
2. Validates every rendered object with kubernetes-validate --strict; the only kind it may
   lack a schema for is KEDA's ScaledObject, which is validated against its CRD schema by
   scripts/validate_keda.mjs (pinned @kubernetes-models/keda).
3. Validates docker-compose.yml against the Compose specification's JSON schema
   (check-jsonschema's vendored copy).
4. Cross-checks the manifests and the compose file against the services themselves: every
   Sluice container is started from target/debug with the config file and environment the
   manifest gives it (only NATS/Redis addresses, the listen port and secrets are swapped for
   local ones), so an unknown SLUICE_<SECTION>__<KEY> or a broken config is a start-up
   error; every probe and healthcheck path is then requested and must answer 200; every
   probe, Service and healthcheck port must be the port the configuration listens on; the
   worker's grace period must exceed worker.shutdown_grace_s; the KEDA triggers must name
   the NATS headless service and the consumers the workers create.
5. --self-test: breaks the rendered manifests on purpose (an unknown variable, a wrong
   probe path, a wrong port) and fails unless each break is reported.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
# SLUICE_ variables that are not configuration values (no `__`); see crates/config/src/env.rs.
PLAIN_VARS = {"SLUICE_CONFIG", "SLUICE_LOG_FORMAT"}
BINARIES = {"sluice-ingest", "sluice-worker", "sluice-sim", "sluice"}


# ---------------------------------------------------------------------------------------
# Service specs: what one Sluice container is told, whether by Kubernetes or by compose.


@dataclass
class Probe:
    what: str  # "livenessProbe", "healthcheck", ...
    port: int | None  # resolved container port (None: a name that does not resolve)
    port_ref: object
    path: str


@dataclass
class Spec:
    origin: str  # "prod: Deployment/worker", "compose: worker"
    binary: str
    args: list[str]
    config_text: str | None
    env: dict[str, str]
    secret_vars: set[str] = field(default_factory=set)
    probes: list[Probe] = field(default_factory=list)
    container_ports: dict[str, int] = field(default_factory=dict)
    grace_s: int | None = None


def effective_config(spec: Spec) -> dict:
    """The TOML file with the SLUICE_<SECTION>__<KEY> overrides applied (as env.rs does)."""
    cfg = tomllib.loads(spec.config_text or "")
    for name, raw in spec.env.items():
        if not name.startswith("SLUICE_") or "__" not in name:
            continue
        keys = [k.lower() for k in name[len("SLUICE_") :].split("__")]
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        table = cfg
        for k in keys[:-1]:
            table = table.setdefault(k, {})
            if not isinstance(table, dict):
                break
        else:
            table[keys[-1]] = value
    return cfg


def listen_port(spec: Spec, cfg: dict) -> int | None:
    """The port the service listens on for its HTTP routes, from config or arguments."""
    if spec.binary == "sluice-ingest":
        addr = cfg.get("ingest", {}).get("listen", "127.0.0.1:8080")
    elif spec.binary == "sluice-worker":
        addr = cfg.get("worker", {}).get("metrics_listen", "")
    elif spec.binary == "sluice-sim":
        addr = "127.0.0.1:9100"
        if "--listen" in spec.args:
            addr = spec.args[spec.args.index("--listen") + 1]
    else:
        return None
    return int(addr.rsplit(":", 1)[1]) if addr else None


def static_errors(spec: Spec) -> list[str]:
    errs = []
    for name in spec.env:
        if name.startswith("SLUICE_") and "__" not in name and name not in PLAIN_VARS:
            errs.append(f"{spec.origin}: {name} is not a variable Sluice reads")
    try:
        cfg = effective_config(spec)
    except tomllib.TOMLDecodeError as e:
        return errs + [f"{spec.origin}: config file is not TOML: {e}"]
    port = listen_port(spec, cfg)
    if spec.binary in ("sluice-ingest", "sluice-worker", "sluice-sim") and port is None:
        errs.append(f"{spec.origin}: the service serves no HTTP port (probes cannot work)")
    for p in spec.probes:
        if p.port is None:
            errs.append(f"{spec.origin}: {p.what} port {p.port_ref!r} is not a container port")
        elif p.port != port:
            errs.append(
                f"{spec.origin}: {p.what} uses port {p.port}, the service listens on {port}"
            )
    for name, cport in spec.container_ports.items():
        if cport != port:
            errs.append(f"{spec.origin}: containerPort {name}={cport}, the service listens on {port}")
    if spec.binary == "sluice-worker" and spec.grace_s is not None:
        grace = int(cfg.get("worker", {}).get("shutdown_grace_s", 20))
        if spec.grace_s <= grace:
            errs.append(
                f"{spec.origin}: grace period {spec.grace_s}s is not longer than "
                f"worker.shutdown_grace_s = {grace}s"
            )
    return errs


# ---------------------------------------------------------------------------------------
# Running a spec: the services tell us themselves what they accept.


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def run_errors(spec: Spec, bin_dir: Path, nats_url: str, redis_url: str, tag: str) -> list[str]:
    """Starts the service as the manifest describes it and requests every probe path."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env.update(spec.env)
    for var in spec.secret_vars:
        env[var] = "validate-deploy-placeholder"
    # Only the values are swapped: a variable's name still reaches the config loader.
    env["SLUICE_NATS__URL"] = nats_url
    env["SLUICE_REDIS__URL"] = redis_url
    env["SLUICE_NATS__NAMESPACE"] = tag
    env["SLUICE_NATS__REPLICAS"] = "1"  # one local server, not a cluster
    env["SLUICE_NATS__MAX_QUEUE_BYTES"] = str(16 << 20)  # reserve little on a shared server
    env["SLUICE_REDIS__PREFIX"] = f"{tag}:"
    env["SLUICE_INGEST__LISTEN"] = f"127.0.0.1:{port}"
    env["SLUICE_WORKER__METRICS_LISTEN"] = f"127.0.0.1:{port}"
    env["RUST_LOG"] = "warn"
    env.pop("RUST_BACKTRACE", None)
    args = list(spec.args)
    if spec.binary == "sluice-sim" and "--listen" in args:
        args[args.index("--listen") + 1] = f"127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        if spec.config_text is not None:
            path = Path(tmp) / "sluice.toml"
            path.write_text(spec.config_text)
            env["SLUICE_CONFIG"] = str(path)
        log = open(Path(tmp) / "log", "w+")
        proc = subprocess.Popen([str(bin_dir / spec.binary), *args], env=env, stdout=log, stderr=log)
        try:
            paths = sorted({p.path for p in spec.probes})
            pending = set(paths)
            deadline = time.monotonic() + 30
            while pending and time.monotonic() < deadline and proc.poll() is None:
                for path in sorted(pending):
                    if http_status(f"http://127.0.0.1:{port}{path}") == 200:
                        pending.discard(path)
                time.sleep(0.2)
            if proc.poll() is not None:
                log.seek(0)
                lines = log.read().strip().splitlines() or ["(no output)"]
                why = next((l for l in lines if l.startswith("Error")), lines[-1])
                return [f"{spec.origin}: {spec.binary} exited at start-up: {why.strip()[:300]}"]
            errs = []
            for path in sorted(pending):
                got = http_status(f"http://127.0.0.1:{port}{path}")
                errs.append(f"{spec.origin}: GET {path} answered {got}, not 200")
            return errs
        finally:
            # Shutdown is not what is checked here (a worker would drain for its grace).
            proc.kill()
            proc.wait()
            log.close()


# ---------------------------------------------------------------------------------------
# Kubernetes: rendered objects -> specs, plus the checks that span objects.


def render(kubectl: str, overlay: Path) -> list[dict]:
    out = subprocess.run(
        [kubectl, "kustomize", str(overlay)], check=True, capture_output=True, text=True
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o.get("kind") == kind]


def find(objs: list[dict], kind: str, name: str) -> dict | None:
    return next((o for o in by_kind(objs, kind) if o["metadata"]["name"] == name), None)


def k8s_specs(overlay: str, objs: list[dict]) -> tuple[list[Spec], list[str]]:
    specs, errs = [], []
    for w in by_kind(objs, "Deployment") + by_kind(objs, "StatefulSet"):
        pod = w["spec"]["template"]["spec"]
        for c in pod["containers"]:
            cmd = (c.get("command") or []) + (c.get("args") or [])
            if not cmd or cmd[0] not in BINARIES:
                continue
            origin = f"{overlay}: {w['kind']}/{w['metadata']['name']}"
            env, secrets = {}, set()
            for e in c.get("env", []):
                if "value" in e:
                    env[e["name"]] = str(e["value"])
                elif "secretKeyRef" in e.get("valueFrom", {}):
                    secrets.add(e["name"])
                else:
                    errs.append(f"{origin}: env {e['name']} has no value or secret reference")
            for src in c.get("envFrom", []):
                ref = src.get("configMapRef", {}).get("name")
                cm = find(objs, "ConfigMap", ref) if ref else None
                if cm is None:
                    errs.append(f"{origin}: envFrom names ConfigMap {ref!r}, which is not rendered")
                    continue
                env.update({k: str(v) for k, v in cm.get("data", {}).items()})
            config_text = None
            if "SLUICE_CONFIG" in env:
                config_text, why = mounted_file(objs, pod, c, env["SLUICE_CONFIG"])
                if why:
                    errs.append(f"{origin}: SLUICE_CONFIG={env['SLUICE_CONFIG']}: {why}")
            ports = {p.get("name", str(p["containerPort"])): p["containerPort"] for p in c.get("ports", [])}
            probes = []
            for what in ("startupProbe", "livenessProbe", "readinessProbe"):
                get = c.get(what, {}).get("httpGet")
                if get:
                    ref = get["port"]
                    port = ports.get(ref) if isinstance(ref, str) else ref
                    probes.append(Probe(what, port, ref, get.get("path", "/")))
            specs.append(
                Spec(
                    origin=origin,
                    binary=cmd[0],
                    args=cmd[1:],
                    config_text=config_text,
                    env=env,
                    secret_vars=secrets,
                    probes=probes,
                    container_ports=ports,
                    grace_s=pod.get("terminationGracePeriodSeconds", 30),
                )
            )
    return specs, errs


def mounted_file(objs, pod, container, path) -> tuple[str | None, str | None]:
    for m in container.get("volumeMounts", []):
        mount = m["mountPath"].rstrip("/") + "/"
        if not path.startswith(mount):
            continue
        vol = next((v for v in pod.get("volumes", []) if v["name"] == m["name"]), None)
        name = (vol or {}).get("configMap", {}).get("name")
        cm = find(objs, "ConfigMap", name) if name else None
        if cm is None:
            return None, f"volume {m['name']} is not a rendered ConfigMap"
        key = path[len(mount) :]
        if key not in cm.get("data", {}):
            return None, f"ConfigMap {name} has no key {key}"
        return cm["data"][key], None
    return None, "no volume is mounted there"


def service_errors(overlay: str, objs: list[dict]) -> list[str]:
    """Every Service's targetPort is a port of the pods it selects."""
    errs = []
    workloads = by_kind(objs, "Deployment") + by_kind(objs, "StatefulSet")
    for svc in by_kind(objs, "Service"):
        sel = svc["spec"].get("selector", {})
        pods = [
            w["spec"]["template"]
            for w in workloads
            if sel and all(w["spec"]["template"]["metadata"].get("labels", {}).get(k) == v for k, v in sel.items())
        ]
        if not pods:
            errs.append(f"{overlay}: Service/{svc['metadata']['name']} selects no pods")
            continue
        for sp in svc["spec"]["ports"]:
            target = sp.get("targetPort", sp["port"])
            for tpl in pods:
                ports = [p for c in tpl["spec"]["containers"] for p in c.get("ports", [])]
                if not any(p.get("name") == target or p["containerPort"] == target for p in ports):
                    errs.append(
                        f"{overlay}: Service/{svc['metadata']['name']} targetPort {target!r} "
                        "is not a port of the pods it selects"
                    )
    return errs


def priorities() -> list[str]:
    """The priority classes, read from the protocol crate (workers-<priority> consumers)."""
    src = (ROOT / "crates/protocol/src/priority.rs").read_text()
    names = re.findall(r'Priority::\w+ => "(\w+)"', src)
    return sorted(set(names))


# The CRD schema does not forbid unknown fields (the API server prunes them and the
# nats-jetstream scaler ignores unknown metadata), so a misspelt key would pass silently.
SCALED_OBJECT_SPEC = {"scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod",
                      "idleReplicaCount", "minReplicaCount", "maxReplicaCount", "fallback",
                      "advanced", "triggers"}
TRIGGER_KEYS = {"type", "name", "metadata", "metricType", "useCachedMetrics", "authenticationRef"}
NATS_JETSTREAM_METADATA = {"natsServerMonitoringEndpoint", "account", "stream", "consumer",
                           "lagThreshold", "activationLagThreshold", "useHttps"}


def keda_errors(overlay: str, objs: list[dict], specs: list[Spec]) -> list[str]:
    errs = []
    for so in by_kind(objs, "ScaledObject"):
        name = f"{overlay}: ScaledObject/{so['metadata']['name']}"
        errs += [f"{name}: unknown spec field {k}" for k in sorted(set(so["spec"]) - SCALED_OBJECT_SPEC)]
        for t in so["spec"].get("triggers", []):
            errs += [f"{name}: unknown trigger field {k}" for k in sorted(set(t) - TRIGGER_KEYS)]
            if t.get("type") == "nats-jetstream":
                extra = set(t.get("metadata", {})) - NATS_JETSTREAM_METADATA
                errs += [f"{name}: unknown nats-jetstream metadata {k}" for k in sorted(extra)]
    worker = next((s for s in specs if s.binary == "sluice-worker"), None)
    if worker is None:
        return [f"{overlay}: no worker Deployment"]
    cfg = effective_config(worker)
    ns_prefix = cfg.get("nats", {}).get("namespace", "")
    ns_prefix = f"{ns_prefix}_" if ns_prefix else ""
    want_consumers = {f"{ns_prefix}workers-{p}" for p in priorities()}
    for so in by_kind(objs, "ScaledObject"):
        name = f"{overlay}: ScaledObject/{so['metadata']['name']}"
        namespace = so["metadata"].get("namespace", "default")
        if "fallback" not in so["spec"]:
            errs.append(f"{name}: no fallback")
        seen = set()
        for t in so["spec"].get("triggers", []):
            if t.get("type") != "nats-jetstream":
                continue
            md = t["metadata"]
            seen.add(md.get("consumer"))
            if md.get("stream") != f"{ns_prefix}JOBS":
                errs.append(f"{name}: stream {md.get('stream')!r} is not {ns_prefix}JOBS")
            for key in ("account", "lagThreshold", "activationLagThreshold"):
                if key not in md:
                    errs.append(f"{name}: trigger for {md.get('consumer')} has no {key}")
            host, _, port = md.get("natsServerMonitoringEndpoint", "").rpartition(":")
            svc_name, _, rest = host.partition(".")
            svc = find(objs, "Service", svc_name)
            if rest != f"{namespace}.svc.cluster.local" or svc is None:
                errs.append(f"{name}: endpoint {host!r} is not a Service of namespace {namespace}")
            elif svc["spec"].get("clusterIP") != "None":
                errs.append(f"{name}: endpoint Service {svc_name} is not headless")
            elif not any(str(p["port"]) == port and p.get("name") == "monitor" for p in svc["spec"]["ports"]):
                errs.append(f"{name}: port {port} is not the monitor port of Service {svc_name}")
        if seen != want_consumers:
            errs.append(f"{name}: triggers name consumers {sorted(seen)}, the workers create {sorted(want_consumers)}")
    return errs


def kubernetes_validate(tool_bin: Path, rendered: Path) -> tuple[list[str], set[str]]:
    """kubernetes-validate --strict; returns failures and the kinds it had no schema for."""
    out = subprocess.run(
        [str(tool_bin / "kubernetes-validate"), "--strict", "--quiet", str(rendered)],
        capture_output=True,
        text=True,
    )
    text = out.stdout + out.stderr
    unknown = set(re.findall(r"Couldn't find schema for kind (\w+)", text))
    fails = [l for l in text.splitlines() if l.startswith("ERROR") or "failed" in l.lower()]
    if out.returncode != 0 and not fails:
        fails = [text.strip() or f"kubernetes-validate exited {out.returncode}"]
    return fails, unknown


def keda_validate(objs: list[dict]) -> list[str]:
    node_modules = os.environ["SLUICE_NODE_MODULES"]
    out = subprocess.run(
        ["node", str(ROOT / "scripts/validate_keda.mjs")],
        input=json.dumps(objs),
        capture_output=True,
        text=True,
        env={**os.environ, "SLUICE_NODE_MODULES": node_modules},
    )
    return [l for l in (out.stdout + out.stderr).splitlines() if l.strip() and not l.startswith("ok")]


# ---------------------------------------------------------------------------------------
# docker-compose.yml -> specs


def compose_specs(compose: dict) -> list[Spec]:
    specs = []
    config_text = (ROOT / "config/container.toml").read_text()
    for name, svc in compose["services"].items():
        cmd = svc.get("command") or []
        if not cmd or cmd[0] not in BINARIES:
            continue
        env = {k: str(v) for k, v in (svc.get("environment") or {}).items()}
        secrets = {k for k, v in env.items() if v.startswith("${")}
        for k in secrets:
            env.pop(k)
        env.setdefault("SLUICE_CONFIG", "/etc/sluice/sluice.toml")  # the image's ENV
        probes = []
        test = (svc.get("healthcheck") or {}).get("test") or []
        if test[:2] == ["CMD", "sluice-healthcheck"]:
            port = int(test[2].rsplit(":", 1)[1])
            probes.append(Probe("healthcheck", port, test[2], test[3]))
        elif not (svc.get("healthcheck") or {}).get("disable"):
            probes.append(Probe("healthcheck", None, test, "?"))
        specs.append(
            Spec(
                origin=f"compose: {name}",
                binary=cmd[0],
                args=cmd[1:],
                config_text=config_text,
                env=env,
                secret_vars=secrets,
                probes=probes,
                grace_s=_seconds(svc.get("stop_grace_period", "10s")),
            )
        )
    return specs


def compose_errors(compose: dict) -> list[str]:
    errs = []
    for name, svc in compose["services"].items():
        if "profiles" not in svc and "healthcheck" not in svc:
            errs.append(f"compose: {name} has no healthcheck")
        for dep, cond in (svc.get("depends_on") or {}).items():
            if cond.get("condition") != "service_healthy":
                errs.append(f"compose: {name} depends on {dep} without condition service_healthy")
    return errs


def _seconds(text: str) -> int:
    m = re.fullmatch(r"(\d+)(s|m)", str(text))
    return int(m.group(1)) * (60 if m.group(2) == "m" else 1) if m else 10


# ---------------------------------------------------------------------------------------


def check_specs(specs, args, tag) -> list[str]:
    errs = []
    for spec in specs:
        errs += static_errors(spec)
        errs += run_errors(spec, args.bin, args.nats, args.redis, tag)
    return errs


def self_test(objs: list[dict], args) -> list[str]:
    """Each deliberate break must be reported; returns the breaks that were not."""
    breaks = {
        "an unknown config variable": lambda o: _container(o, "worker")["env"].append(
            {"name": "SLUICE_WORKER__CONCURENCY", "value": "8"}
        ),
        "an unknown plain variable": lambda o: _container(o, "ingest")["env"].append(
            {"name": "SLUICE_LISTEN", "value": "0.0.0.0:8080"}
        ),
        "a probe path the service lacks": lambda o: _container(o, "ingest")["readinessProbe"]["httpGet"].update(
            path="/ready"
        ),
        "a port the service does not listen on": lambda o: _container(o, "worker")["ports"][0].update(
            containerPort=9091
        ),
        "a misspelt KEDA trigger setting": lambda o: next(x for x in o if x["kind"] == "ScaledObject")["spec"][
            "triggers"
        ][0]["metadata"].update(lagTreshold="10"),
        "a grace period shorter than the drain": lambda o: _deployment(o, "worker")["spec"]["template"][
            "spec"
        ].update(terminationGracePeriodSeconds=10),
    }
    missed = []
    for what, mutate in breaks.items():
        broken = copy.deepcopy(objs)
        mutate(broken)
        specs, errs = k8s_specs("self-test", broken)
        errs += keda_errors("self-test", broken, specs)
        specs = [s for s in specs if s.binary in ("sluice-worker", "sluice-ingest")]
        errs += check_specs(specs, args, args.tag)
        print(f"  self-test, {what}: {'caught' if errs else 'MISSED'}" + (f" ({errs[0][:140]})" if errs else ""))
        if not errs:
            missed.append(what)
    return missed


def _deployment(objs, name):
    return find(objs, "Deployment", name)


def _container(objs, name):
    return _deployment(objs, name)["spec"]["template"]["spec"]["containers"][0]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tools", type=Path, required=True, help="bin folder with kubectl, kubernetes-validate, check-jsonschema")
    ap.add_argument("--bin", type=Path, required=True, help="folder with the Sluice binaries")
    ap.add_argument("--nats", required=True)
    ap.add_argument("--redis", required=True)
    ap.add_argument("--self-test", action="store_true")
    args = ap.parse_args()
    tag = args.tag = f"validate{os.getpid()}"
    failures: list[str] = []

    overlays = sorted(p for p in (ROOT / "k8s/overlays").iterdir() if (p / "kustomization.yaml").exists())
    prod_objs = None
    for overlay in overlays:
        objs = render(str(args.tools / "kubectl"), overlay)
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            yaml.safe_dump_all(objs, f)
        errs, unknown = kubernetes_validate(args.tools, Path(f.name))
        os.unlink(f.name)
        kinds_without_schema = unknown - {"ScaledObject"}
        errs += [f"no schema to validate kind {k} against" for k in sorted(kinds_without_schema)]
        errs += keda_validate(by_kind(objs, "ScaledObject"))
        specs, spec_errs = k8s_specs(overlay.name, objs)
        errs += spec_errs + service_errors(overlay.name, objs) + keda_errors(overlay.name, objs, specs)
        errs += check_specs(specs, args, tag)
        print(f"k8s/overlays/{overlay.name}: {len(objs)} objects, {len(specs)} Sluice containers: "
              f"{'ok' if not errs else f'{len(errs)} problem(s)'}")
        failures += [f"k8s/overlays/{overlay.name}: {e}" for e in errs]
        if overlay.name == "prod":
            prod_objs = objs

    compose_path = ROOT / "docker-compose.yml"
    out = subprocess.run(
        [str(args.tools / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(compose_path)],
        capture_output=True,
        text=True,
    )
    errs = [] if out.returncode == 0 else [(out.stdout + out.stderr).strip()]
    compose = yaml.safe_load(compose_path.read_text())
    cspecs = compose_specs(compose)
    errs += compose_errors(compose) + check_specs(cspecs, args, tag)
    print(f"docker-compose.yml: compose-spec schema and {len(cspecs)} Sluice services: "
          f"{'ok' if not errs else f'{len(errs)} problem(s)'}")
    failures += errs

    if args.self_test and prod_objs is not None:
        missed = self_test(prod_objs, args)
        failures += [f"self-test: {m} was not reported" for m in missed]

    for f in failures:
        print(f"FAIL {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
