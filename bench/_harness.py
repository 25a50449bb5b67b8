"""Shared set-up for the benchmarks: sandbox, operator process, settable metrics, timing.

Benchmarks print a table; they never assert a time. They run against the same sandbox as
the tests (`hack/sandbox up`) with the operator as a real process.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar, cast

from kubernetes import client, config, watch

from rewind_demo import targets

ROOT = Path(__file__).resolve().parent.parent
DIGEST = "sha256:" + "ab" * 32
IMAGE = "registry.example.com/bench-server@sha256:" + "cd" * 32


def sandbox_env() -> dict[str, str]:
    """Start or reuse the sandbox and return its environment."""
    subprocess.run([str(ROOT / "hack" / "sandbox"), "up"], check=True)
    env: dict[str, str] = {}
    for line in (ROOT / ".sandbox" / "env").read_text().splitlines():
        match = re.match(r"^export (\w+)=([^\"].*)$", line)
        if match:
            env[match.group(1)] = match.group(2)
    os.environ["KUBECONFIG"] = env["KUBECONFIG"]
    return env


def kubectl(env: dict[str, str], *args: str, stdin: str | None = None,
            timeout: float = 300.0) -> str:
    """Run kubectl; bounded, so a stuck API server ends the benchmark instead of hanging it."""
    try:
        out = subprocess.run([env["KUBECTL"], *args], input=stdin, capture_output=True,
                             text=True, env={**os.environ, "KUBECONFIG": env["KUBECONFIG"]},
                             timeout=timeout)
    except subprocess.TimeoutExpired as err:
        raise TimeoutError(f"kubectl {' '.join(args)} did not return in {timeout:.0f}s") from err
    if out.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {out.stderr}")
    return out.stdout


def fresh_namespace(env: dict[str, str], name: str, timeout: float = 120.0) -> None:
    """An empty namespace of that name; one left by an earlier run is deleted first, which
    takes a while when it held thousands of objects (``timeout``)."""
    kubectl(env, "apply", "--server-side", "-f", str(ROOT / "crds"))
    kubectl(env, "wait", "--for=condition=Established", "crd/modelreleases.rewind.dev")
    existing = subprocess.run([env["KUBECTL"], "get", "ns", name], capture_output=True,
                              env={**os.environ, "KUBECONFIG": env["KUBECONFIG"]})
    if existing.returncode == 0:
        print(f"deleting namespace {name} left by an earlier run (at most {timeout:.0f}s)",
              flush=True)
        kubectl(env, "delete", "ns", name, "--wait=true", f"--timeout={timeout:.0f}s",
                timeout=timeout + 30)
    kubectl(env, "create", "ns", name)
    wait_for("default ServiceAccount", lambda: subprocess.run(
        [env["KUBECTL"], "get", "sa", "default", "-n", name], capture_output=True,
        env={**os.environ, "KUBECONFIG": env["KUBECONFIG"]}).returncode == 0, 60)


def drop_namespace(env: dict[str, str], name: str) -> None:
    """Delete the benchmark's namespace once its operator has stopped: releases left behind
    would be reconciled by any later operator that watches every namespace (some tests run
    one), hundreds at a time."""
    kubectl(env, "delete", "ns", name, "--wait=false", "--ignore-not-found")


def free_port() -> int:
    """A TCP port nobody listens on now (for an operator's /metrics)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check: Callable[[], Any], timeout: float) -> Any:
    """Bounded polling."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise TimeoutError(f"{what} not reached in {timeout:.0f}s")


def _cpu_of(stat: Path) -> float:
    """User + system CPU seconds from a /proc stat file (a process or one of its threads)."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    # After the command name: state is field 3, utime 14 and stime 15 (man 5 proc).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sandbox_cpu_seconds() -> dict[str, float]:
    """CPU seconds each running sandbox component (API server, etcd, Prometheus, ...) has
    used so far, from the pid files ``hack/sandbox up`` writes; a component whose pid is
    gone (restarted, stopped) is left out rather than guessed."""
    found: dict[str, float] = {}
    for pidfile in sorted((ROOT / ".sandbox" / "pids").glob("*.json")):
        record = json.loads(pidfile.read_text())
        stat = Path(f"/proc/{record['pid']}/stat")
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[19] != str(record.get("start_time")):  # field 22: a recycled pid
            continue
        found[pidfile.stem] = _cpu_of(stat)
    return found


class Operator:
    """rewind-operator as a process watching one namespace."""

    def __init__(self, env: dict[str, str], namespace: str, log_path: Path,
                 extra: Sequence[str] = (), *, prometheus_url: str | None = None,
                 metrics_port: int = 0) -> None:
        args = [str(ROOT / ".venv" / "bin" / "rewind-operator"), "--namespace", namespace,
                "--metrics-port", str(metrics_port),
                "--prometheus-url", prometheus_url or env["PROMETHEUS_URL"], *extra]
        self.metrics_port = metrics_port
        self.log = log_path.open("ab")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "KUBECONFIG": env["KUBECONFIG"]})

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_seconds(self) -> float:
        """User + system CPU the operator process (all its threads) has used so far."""
        return _cpu_of(Path(f"/proc/{self.proc.pid}/stat"))

    def main_thread_cpu_seconds(self) -> float:
        """CPU of the operator's main thread alone: its event loop (Kopf, the reconciles'
        Python), which one core bounds; the rest is worker threads (HTTP, JSON)."""
        return _cpu_of(Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/stat"))

    def metrics(self) -> dict[str, float]:
        """The operator's /metrics, each family summed over its labels (needs metrics_port)."""
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10
        ) as answer:
            text = answer.read().decode()
        sums: dict[str, float] = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            series, _, value = line.rpartition(" ")
            family = series.split("{", 1)[0]
            sums[family] = sums.get(family, 0.0) + float(value)
            if "{" in series:
                sums[series] = float(value)
        return sums

    def kill(self) -> None:
        """SIGKILL, as when a node dies."""
        self.proc.kill()
        self.proc.wait(timeout=15)
        self.log.close()

    def stop(self) -> None:
        if self.proc.poll() is not None:
            self.log.close()
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


class Gauges:
    """A /metrics endpoint with gauges the benchmark flips, registered with Prometheus:
    ``rewind_bench_error_rate`` and ``rewind_bench_latency_ms``, per workload."""

    def __init__(self, env: dict[str, str], name: str) -> None:
        self.values: dict[str, float] = {}
        self.latency: dict[str, float] = {}
        self.lock = threading.Lock()
        gauges = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with gauges.lock:
                    body = "".join(
                        f'rewind_bench_error_rate{{workload="{w}"}} {v}\n'
                        for w, v in gauges.values.items()
                    ) + "".join(
                        f'rewind_bench_latency_ms{{workload="{w}"}} {v}\n'
                        for w, v in gauges.latency.items()
                    )
                    payload = body.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.port = int(self.server.server_address[1])
        self.name = name
        self.env = env
        targets.register_target(name, self.port, directory=env["SANDBOX_TARGETS_DIR"])
        targets.wait_scraped(env["PROMETHEUS_URL"], {"instance": f"127.0.0.1:{self.port}"}, 30)

    def set(self, workload: str, value: float) -> None:
        with self.lock:
            self.values[workload] = value

    def set_latency(self, workload: str, value: float) -> None:
        with self.lock:
            self.latency[workload] = value

    def close(self) -> None:
        targets.unregister_target(self.name, directory=self.env["SANDBOX_TARGETS_DIR"])
        self.server.shutdown()


ERROR_RATE_METRIC: dict[str, Any] = {
    "name": "error-rate",
    "query": 'max(rewind_bench_error_rate{workload="{{candidateWorkload}}"})',
    "thresholds": {"max": 0.05},
}
LATENCY_METRIC: dict[str, Any] = {
    "name": "p95-latency",
    "query": 'max(rewind_bench_latency_ms{workload="{{candidateWorkload}}"})',
    "thresholds": {"max": 300},
}


def policy(name: str, *, interval: str, mode: str, steps: list[dict[str, Any]],
           failure_limit: int = 1, metrics: Sequence[dict[str, Any]] = (ERROR_RATE_METRIC,),
           query_error: str | None = None, progress_deadline: str = "2m") -> dict[str, Any]:
    rollback: dict[str, Any] = {"mode": mode, "scaleDownDelay": "1s"}
    if mode == "approval":
        rollback["approval"] = {"requiredApprovers": 1, "timeout": "1h", "onTimeout": "Rollback"}
    return {
        "apiVersion": "rewind.dev/v1alpha1",
        "kind": "RolloutPolicy",
        "metadata": {"name": name},
        "spec": {
            "strategy": {"canary": {"steps": steps}},
            "analysis": {
                "interval": interval,
                "failureLimit": failure_limit,
                "metrics": [dict(m) for m in metrics],
                **({"queryError": query_error} if query_error else {}),
            },
            "rollback": rollback,
            "progressDeadline": progress_deadline,
            "keepPreviousWarm": "1h",
            # The benchmarks measure later releases: the first one serves once Available.
            "firstRelease": "Promote",
        },
    }


def release(name: str, policy_name: str, version: int) -> dict[str, Any]:
    return {
        "apiVersion": "rewind.dev/v1alpha1",
        "kind": "ModelRelease",
        "metadata": {"name": name},
        "spec": {
            "policyRef": {"name": policy_name},
            "model": {"name": name, "version": f"1.0.{version}",
                      "artifactURI": f"s3://models/{name}/{version}/model.onnx",
                      "artifactDigest": DIGEST, "format": "onnx"},
            "code": {"image": IMAGE},
            "data": {"datasetRef": "s3://datasets/bench", "version": f"v{version}"},
            "serving": {"replicas": 1},
            "traffic": {"hosts": [f"{name}.example.com"]},
        },
    }


def apply(env: dict[str, str], namespace: str, *objs: dict[str, Any]) -> None:
    kubectl(env, "apply", "-n", namespace, "-f", "-",
            stdin="\n---\n".join(json.dumps(o) for o in objs))


def custom_api() -> client.CustomObjectsApi:
    api_client = config.new_client_from_config(config_file=os.environ["KUBECONFIG"])
    return client.CustomObjectsApi(api_client)


def status_of(api: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    obj = cast(dict[str, Any], api.get_namespaced_custom_object(
        "rewind.dev", "v1alpha1", namespace, "modelreleases", name))
    return dict(obj.get("status") or {})


def vs_weights(vs: dict[str, Any]) -> dict[int, int]:
    """Weight per revision of the VirtualService's user route: each destination is the
    revision's own Service, ``<release>-r<N>.<namespace>.svc...`` (0 for anything else)."""
    routes = vs.get("spec", {}).get("http", [{}])[-1].get("route", [])
    weights: dict[int, int] = {}
    for r in routes:
        label = str(r.get("destination", {}).get("host", "")).split(".", 1)[0]
        found = re.search(r"-r(\d+)$", label)
        revision = int(found.group(1)) if found else 0
        weights[revision] = weights.get(revision, 0) + int(r.get("weight", 100))
    return weights


T = TypeVar("T")
WeightsPredicate = Callable[[dict[int, int]], bool]
WaitForWeights = Callable[[WeightsPredicate, float], float | None]


@contextlib.contextmanager
def vs_watch(namespace: str, name: str) -> Iterator[WaitForWeights]:
    """A watch on one VirtualService: ``wait(predicate, timeout)`` returns when (monotonic,
    on arrival: the moment the API server told us, not a poll later) a version whose
    weights satisfy ``predicate`` was delivered after the watch began."""
    with object_watch(namespace, name, vs_weights) as wait:
        yield wait


@contextlib.contextmanager
def object_watch(
    namespace: str, name: str, parse: Callable[[dict[str, Any]], T]
) -> Iterator[Callable[[Callable[[T], bool], float], float | None]]:
    """A watch on one VirtualService, each version read by ``parse``: see vs_watch."""
    api = custom_api()
    events: list[tuple[float, T]] = []
    cond = threading.Condition()
    stop = threading.Event()

    def run() -> None:
        w = watch.Watch()
        while not stop.is_set():
            with contextlib.suppress(Exception):
                for ev in w.stream(api.list_namespaced_custom_object, "networking.istio.io",
                                   "v1", namespace, "virtualservices",
                                   field_selector=f"metadata.name={name}", timeout_seconds=5):
                    with cond:
                        events.append((time.monotonic(), parse(ev["object"])))
                        cond.notify_all()
                    if stop.is_set():
                        break

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    # The watch is live once the object's current state (ADDED) has arrived.
    wait_for("the VirtualService watch", lambda: len(events) > 0, 30)
    cursor = [len(events)]

    def wait_until(predicate: Callable[[T], bool], timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        with cond:
            while True:
                while cursor[0] < len(events):
                    at, seen = events[cursor[0]]
                    cursor[0] += 1
                    if predicate(seen):
                        return at
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                cond.wait(left)

    try:
        yield wait_until
    finally:
        stop.set()


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = max(0, min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1))))
    return ordered[k]


def table(title: str, rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    print(f"\n{title}")
    print("-" * (width + 24))
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print("-" * (width + 24))
    sys.stdout.flush()


def summary(values: list[float]) -> str:
    if not values:
        return "no samples"
    return (f"n={len(values)} min={min(values):.3f}s median={statistics.median(values):.3f}s "
            f"p99={percentile(values, 99):.3f}s max={max(values):.3f}s")


def operator_metrics_text(port: int, timeout: float = 2.0) -> str | None:
    """The operator's /metrics page (None while it does not answer)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                    timeout=timeout) as response:
            return str(response.read().decode())
    except OSError:
        return None


#: group, version of the kinds a Recorder can watch (Deployments: apps/v1; group "": the
#: core API).
WATCHED: dict[str, tuple[str, str]] = {
    "virtualservices": ("networking.istio.io", "v1"),
    "services": ("", "v1"),
    "destinationrules": ("networking.istio.io", "v1"),
    "modelreleases": ("rewind.dev", "v1alpha1"),
    "deployments": ("apps", "v1"),
}

VersionHook = Callable[[str, str, dict[str, Any]], None]


class Recorder:
    """Every stored version of some kinds in one namespace, for "never" checks.

    One watch per kind, from background threads: ``on_version(kind, event_type, obj)`` is
    called for each version the API server stored (event_type ADDED, MODIFIED or DELETED;
    the initial list comes as ADDED), in the order it wrote them within a kind. A version's
    resourceVersion is the etcd revision of its write, so it orders writes across kinds too
    (the watches' delivery order does not). A watch is resumed from the last version it
    delivered, so nothing is missed unless the API server forgot that version (410 Gone):
    ``relists`` counts those, as the versions in between are lost to the checks.
    Calls come from several threads at once: the hook must lock what it shares.
    """

    def __init__(self, namespace: str, on_version: VersionHook,
                 kinds: Sequence[str] = tuple(WATCHED)) -> None:
        self.namespace = namespace
        self.on_version = on_version
        self.kinds = tuple(kinds)
        self.relists = 0
        self.errors = 0
        self._stop = threading.Event()
        self._ready = {kind: threading.Event() for kind in self.kinds}
        self._threads: list[threading.Thread] = []

    def _lister(self, api: client.ApiClient, kind: str) -> Callable[..., Any]:
        # The custom-objects client serves any group (apps/v1 Deployments too) and hands
        # back plain dicts: building typed models would cost more CPU than the soak.
        group, version = WATCHED[kind]
        if not group:  # the core API: no /apis/<group> path, plain dicts all the same
            core = client.CoreV1Api(api)
            lister = getattr(core, f"list_namespaced_{kind.removesuffix('s')}")

            def core_list(**kw: Any) -> Any:
                if kw.get("watch"):  # Watch.stream reads the raw response itself
                    return lister(self.namespace, **kw)
                answer = lister(self.namespace, _preload_content=False, **kw)
                return json.loads(answer.data)

            return core_list
        custom = client.CustomObjectsApi(api)
        return lambda **kw: custom.list_namespaced_custom_object(
            group, version, self.namespace, kind, **kw)

    def _run(self, kind: str) -> None:
        api = config.new_client_from_config(config_file=os.environ["KUBECONFIG"])
        lister = self._lister(api, kind)
        version = ""
        try:
            while not self._stop.is_set():
                try:
                    if not version:
                        listing = lister()
                        for item in listing.get("items") or []:
                            self.on_version(kind, "ADDED", item)
                        version = str(listing["metadata"]["resourceVersion"])
                        if self._ready[kind].is_set():
                            self.relists += 1
                        self._ready[kind].set()
                    w = watch.Watch()
                    try:
                        for event in w.stream(lister, resource_version=version,
                                              timeout_seconds=10,
                                              allow_watch_bookmarks=False):
                            obj = event["raw_object"]
                            if event["type"] == "ERROR":
                                version = ""  # 410 Gone: list again (versions lost)
                                break
                            version = str(obj["metadata"]["resourceVersion"])
                            self.on_version(kind, str(event["type"]), obj)
                            if self._stop.is_set():
                                break
                    finally:
                        w.stop()
                except Exception as err:  # the API server is busy or the stream broke
                    if getattr(err, "status", None) == 410:
                        version = ""
                    self.errors += 1
                    self._stop.wait(0.5)
        finally:
            api.close()

    def __enter__(self) -> Recorder:
        for kind in self.kinds:
            thread = threading.Thread(target=self._run, args=(kind,), daemon=True,
                                      name=f"recorder-{kind}")
            thread.start()
            self._threads.append(thread)
        for kind in self.kinds:
            if not self._ready[kind].wait(60):
                raise TimeoutError(f"the watch of {kind} did not start in 60s")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)
