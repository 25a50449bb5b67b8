"""A simulated model server: one process (or thread) per model revision.

kwok pods run no containers, so the demo starts one of these on 127.0.0.1 for each revision,
configured from the revision's serving env (``SIM_*``). It answers predictions with a seeded
score distribution, a configured error rate and latency, and exposes Prometheus metrics
labelled with the revision so analysis queries (error rate, latency, PSI drift from the score
histogram) have something real to measure.

Run it as::

    python -m rewind_demo.modelserver --port 0 --revision fraud-r3 --error-rate 0.02

The first line on stdout is JSON: ``{"event": "listening", "port": 40123, ...}``.

A running server also simulates an outage of the one dependency it has, its feature store,
so a demo can spike the errors of a revision that is already serving without making a new
revision: ``POST /admin/dependency`` with ``{"up": false}`` makes every prediction fail with
500 until ``{"up": true}`` (or until ``"seconds"``, if given, have passed). The gauge
``model_dependency_up{dependency="feature-store"}`` says which, whether or not the server
gets requests (a signal that still speaks while a circuit breaker keeps users away).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from rewind_demo._http import LOOPBACK, BackgroundServer

#: Fixed buckets of the score histogram, so PSI between revisions can be computed from
#: ``increase(model_prediction_score_bucket[...])`` with identical bucket edges.
SCORE_BUCKETS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
#: Latency buckets in seconds (the server's own view, independent of the mesh).
# fmt: off
LATENCY_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
# fmt: on
#: Env var -> config field. These are what a revision's ``code.env`` sets in the demo.
ENV_VARS: dict[str, str] = {
    "SIM_REVISION": "revision",
    "SIM_NAMESPACE": "namespace",
    "SIM_MODEL_VERSION": "model_version",
    "SIM_ERROR_RATE": "error_rate",
    "SIM_LATENCY_MS": "latency_ms",
    "SIM_LATENCY_JITTER_MS": "latency_jitter_ms",
    "SIM_SCORE_MEAN": "score_mean",
    "SIM_SCORE_STDDEV": "score_stddev",
    "SIM_SEED": "seed",
}
MAX_BODY_BYTES = 1 << 20
#: The dependency a simulated model server calls for every prediction.
DEPENDENCY = "feature-store"


@dataclass(frozen=True)
class ModelServerConfig:
    """How one simulated revision behaves. Validated on construction."""

    revision: str = "sim"
    namespace: str = "default"
    model_version: str = ""
    error_rate: float = 0.0
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    score_mean: float = 0.5
    score_stddev: float = 0.1
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.revision:
            raise ValueError("revision must not be empty")
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError(f"error_rate must be in [0, 1], got {self.error_rate}")
        if self.latency_ms < 0 or self.latency_jitter_ms < 0:
            raise ValueError("latency_ms and latency_jitter_ms must be >= 0")
        if not 0.0 <= self.score_mean <= 1.0:
            raise ValueError(f"score_mean must be in [0, 1], got {self.score_mean}")
        if self.score_stddev < 0:
            raise ValueError(f"score_stddev must be >= 0, got {self.score_stddev}")

    def to_env(self) -> dict[str, str]:
        """The SIM_* env that reproduces this config (for spawning a process)."""
        values = asdict(self)
        return {
            env: str(values[name]) for env, name in ENV_VARS.items() if values[name] is not None
        }


def _coerce(name: str, raw: str) -> Any:
    """Parse one env string into the type of the config field it sets."""
    if name in ("revision", "namespace", "model_version"):
        return raw
    if name == "seed":
        return int(raw) if raw.strip() else None
    return float(raw)


def config_from_env(env: Mapping[str, str] | None = None, **overrides: Any) -> ModelServerConfig:
    """Build a config from SIM_* variables (default: os.environ), then apply overrides.

    Unknown variables are ignored, so a revision's whole env can be passed as is.
    """
    source = os.environ if env is None else env
    values: dict[str, Any] = {}
    for var, name in ENV_VARS.items():
        if var in source:
            try:
                values[name] = _coerce(name, source[var])
            except ValueError as exc:
                raise ValueError(f"{var}={source[var]!r}: {exc}") from None
    values.update({k: v for k, v in overrides.items() if v is not None})
    return ModelServerConfig(**values)


def env_list_to_dict(env: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Turn a Kubernetes-style ``[{name, value}]`` env list into a dict."""
    return {str(e["name"]): str(e.get("value", "")) for e in env if "name" in e}


@dataclass
class Prediction:
    """Outcome of one simulated prediction, decided before any sleeping happens."""

    status: int
    body: dict[str, Any]
    delay_s: float


@dataclass
class _Metrics:
    registry: CollectorRegistry
    predictions: Counter
    scores: Histogram
    latency: Histogram
    info: Gauge
    dependency_up: Gauge


def _make_metrics(cfg: ModelServerConfig, registry: CollectorRegistry) -> _Metrics:
    """Register the server's metrics in its own registry (several servers can share a process)."""
    labels = ("revision", "namespace")
    m = _Metrics(
        registry=registry,
        predictions=Counter(
            "model_predictions",
            "Predictions served, by HTTP status code.",
            (*labels, "code"),
            registry=registry,
        ),
        scores=Histogram(
            "model_prediction_score",
            "Scores of successful predictions (fixed buckets for PSI).",
            labels,
            buckets=SCORE_BUCKETS,
            registry=registry,
        ),
        latency=Histogram(
            "model_prediction_latency_seconds",
            "Time to answer /predict, as seen by the server.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ),
        info=Gauge(
            "model_info",
            "Always 1; carries the model version of the revision.",
            (*labels, "model_version"),
            registry=registry,
        ),
        dependency_up=Gauge(
            "model_dependency_up",
            "1 while the server's dependency answers, 0 during a simulated outage.",
            (*labels, "dependency"),
            registry=registry,
        ),
    )
    m.info.labels(cfg.revision, cfg.namespace, cfg.model_version).set(1)
    m.dependency_up.labels(cfg.revision, cfg.namespace, DEPENDENCY).set(1)
    # Pre-create the series so rate() sees a zero before the first request/error.
    for code in ("200", "500"):
        m.predictions.labels(cfg.revision, cfg.namespace, code)
    m.scores.labels(cfg.revision, cfg.namespace)
    m.latency.labels(cfg.revision, cfg.namespace)
    return m


class ModelSim:
    """The behaviour of one revision, independent of HTTP so it can be tested directly.

    All random draws come from one seeded generator, three per request (error, jitter,
    score) whatever the outcome, so a seed gives the same sequence for any config.
    """

    def __init__(
        self, config: ModelServerConfig, registry: CollectorRegistry | None = None
    ) -> None:
        self.config = config
        self._rng = random.Random(config.seed)
        self._lock = threading.Lock()
        #: During a simulated outage of the dependency: when it ends (monotonic seconds;
        #: inf: until set up again). None: the dependency answers.
        self._down_until: float | None = None
        self.metrics = _make_metrics(config, registry or CollectorRegistry())

    def set_dependency(self, up: bool, seconds: float | None = None) -> None:
        """Start (``up=False``) or end a simulated outage of the feature store; an outage
        with ``seconds`` ends by itself after that long. Raises ValueError on seconds <= 0."""
        if seconds is not None and not seconds > 0:
            raise ValueError(f"seconds must be > 0, got {seconds}")
        with self._lock:
            if up:
                self._down_until = None
            else:
                until = float("inf") if seconds is None else time.monotonic() + seconds
                self._down_until = until
        self.dependency_is_up()

    def dependency_is_up(self) -> bool:
        """Whether the feature store answers now (also refreshes the gauge)."""
        with self._lock:
            if self._down_until is not None and time.monotonic() >= self._down_until:
                self._down_until = None
            up = self._down_until is None
        cfg = self.config
        self.metrics.dependency_up.labels(cfg.revision, cfg.namespace, DEPENDENCY).set(
            1 if up else 0)
        return up

    def decide(self, request_id: Any = None) -> Prediction:
        """Draw the outcome of one request (no sleeping, no metrics)."""
        cfg = self.config
        with self._lock:
            u_err = self._rng.random()
            jitter = self._rng.uniform(-1.0, 1.0) * cfg.latency_jitter_ms
            raw_score = self._rng.gauss(cfg.score_mean, cfg.score_stddev)
        delay_s = max(0.0, cfg.latency_ms + jitter) / 1000.0
        if not self.dependency_is_up():
            return Prediction(
                500, {"error": f"{DEPENDENCY} unavailable", "revision": cfg.revision}, delay_s
            )
        if u_err < cfg.error_rate:
            return Prediction(
                500, {"error": "simulated failure", "revision": cfg.revision}, delay_s
            )
        score = round(min(1.0, max(0.0, raw_score)), 6)
        body: dict[str, Any] = {
            "revision": cfg.revision,
            "modelVersion": cfg.model_version,
            "score": score,
            "label": int(score >= 0.5),
        }
        if request_id is not None:
            body["id"] = request_id
        return Prediction(200, body, delay_s)

    def record(self, prediction: Prediction, elapsed_s: float) -> None:
        """Account for a finished prediction in the metrics."""
        cfg = self.config
        self.metrics.predictions.labels(cfg.revision, cfg.namespace, str(prediction.status)).inc()
        self.metrics.latency.labels(cfg.revision, cfg.namespace).observe(elapsed_s)
        if prediction.status == 200:
            self.metrics.scores.labels(cfg.revision, cfg.namespace).observe(
                float(prediction.body["score"])
            )

    def predict(self, request_id: Any = None, *, sleep: bool = True) -> Prediction:
        """Decide, wait the simulated latency, record. Used by the HTTP handler."""
        started = time.monotonic()
        prediction = self.decide(request_id)
        if sleep and prediction.delay_s > 0:
            time.sleep(prediction.delay_s)
        self.record(prediction, time.monotonic() - started)
        return prediction

    def metrics_text(self) -> bytes:
        """Prometheus text exposition of this server's metrics."""
        self.dependency_is_up()  # an outage that ended by itself shows without a request
        return generate_latest(self.metrics.registry)


def make_handler(sim: ModelSim, *, log_requests: bool = False) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to one ModelSim."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "rewind-sim-modelserver"

        def log_message(self, format: str, *args: Any) -> None:
            if log_requests:
                super().log_message(format, *args)

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Rewind-Revision", sim.config.revision)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, obj: Any) -> None:
            self._send(status, json.dumps(obj).encode(), "application/json")

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                self._send(200, b"ok\n", "text/plain")
            elif path == "/metrics":
                self._send(200, sim.metrics_text(), CONTENT_TYPE_LATEST)
            else:
                self._json(404, {"error": "not found"})

        def do_POST(self) -> None:
            path = self.path.split("?", 1)[0]
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                self._json(413, {"error": "body too large"})
                return
            raw = self.rfile.read(length) if length else b""
            if path == "/admin/dependency":
                self._dependency(raw)
                return
            if path != "/predict":
                self._json(404, {"error": "not found"})
                return
            request_id: Any = None
            if raw.strip():
                try:
                    payload = json.loads(raw)
                except ValueError:
                    self._json(400, {"error": "body is not JSON"})
                    return
                if isinstance(payload, dict):
                    request_id = payload.get("id")
            prediction = sim.predict(request_id)
            self._json(prediction.status, prediction.body)

        def _dependency(self, raw: bytes) -> None:
            """``{"up": bool, "seconds"?: number}``: start or end a simulated outage."""
            try:
                payload = json.loads(raw or b"null")
                if not isinstance(payload, dict) or not isinstance(payload.get("up"), bool):
                    raise ValueError('want {"up": true|false, "seconds"?: number}')
                seconds = payload.get("seconds")
                sim.set_dependency(payload["up"],
                                   None if seconds is None else float(seconds))
            except (ValueError, TypeError) as exc:
                self._json(400, {"error": str(exc)})
                return
            self._json(200, {"dependency": DEPENDENCY, "up": sim.dependency_is_up()})

    return Handler


class RunningModelServer:
    """A model server served from a thread of this process (tests, single-process demos)."""

    def __init__(self, sim: ModelSim, server: BackgroundServer) -> None:
        self.sim = sim
        self._server = server

    @property
    def port(self) -> int:
        """Bound port."""
        return self._server.port

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:40123."""
        return self._server.url

    def stop(self) -> None:
        """Stop serving; idempotent."""
        self._server.stop()

    def __enter__(self) -> RunningModelServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_modelserver(
    config: ModelServerConfig, port: int = 0, *, log_requests: bool = False
) -> RunningModelServer:
    """Start a model server in a background thread on 127.0.0.1 (port 0 = a free port)."""
    sim = ModelSim(config)
    server = BackgroundServer.start(make_handler(sim, log_requests=log_requests), port)
    return RunningModelServer(sim, server)


def parse_listening_line(line: str | bytes) -> dict[str, Any]:
    """Parse the first stdout line of a simulator process; raises ValueError if it is not one."""
    text = line.decode() if isinstance(line, bytes) else line
    try:
        obj = json.loads(text)
    except ValueError:
        raise ValueError(f"not a listening line: {text!r}") from None
    if not isinstance(obj, dict) or obj.get("event") != "listening" or "port" not in obj:
        raise ValueError(f"not a listening line: {text!r}")
    return obj


def read_first_line(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    """Read one stdout line of proc within timeout (never blocks past the deadline)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    buf = b""
    fd = proc.stdout.fileno()
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no listening line within {timeout}s (got {buf!r})")
            if not sel.select(remaining):
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError(
                    f"process exited (rc={proc.poll()}) before its listening line: {buf!r}"
                )
            buf += chunk
    return buf.split(b"\n", 1)[0]


class ModelServerProcess:
    """A model server running as a child process (what the demo uses per revision)."""

    def __init__(self, proc: subprocess.Popen[bytes], info: dict[str, Any]) -> None:
        self.proc = proc
        self.info = info
        self.port = int(info["port"])
        self.url = f"http://{LOOPBACK}:{self.port}"

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after timeout; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode

    def __enter__(self) -> ModelServerProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _child_env(extra: Mapping[str, str]) -> dict[str, str]:
    """Env for a child simulator: ours, the package importable, plus extra."""
    env = dict(os.environ)
    pkg_root = str(Path(__file__).resolve().parents[2])  # .../operator
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def spawn_modelserver(
    config: ModelServerConfig,
    port: int = 0,
    *,
    startup_timeout: float = 15.0,
    stderr: int | None = None,
) -> ModelServerProcess:
    """Start ``python -m rewind_demo.modelserver`` for config and wait for its listening line."""
    cmd = [sys.executable, "-m", "rewind_demo.modelserver", "--port", str(port)]
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=_child_env(config.to_env()),
    )
    try:
        info = parse_listening_line(read_first_line(proc, startup_timeout))
    except BaseException:
        proc.kill()
        proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()
        raise
    return ModelServerProcess(proc, info)


def build_parser() -> argparse.ArgumentParser:
    """CLI flags; each defaults to its SIM_* env var, then to the config default."""
    p = argparse.ArgumentParser(
        prog="python -m rewind_demo.modelserver",
        description="Simulated model server for one revision (127.0.0.1 only).",
    )
    p.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("SIM_PORT", "0")),
        help="port on 127.0.0.1; 0 picks a free one (env SIM_PORT)",
    )
    p.add_argument("--revision", help="revision/workload name, e.g. fraud-r3 (SIM_REVISION)")
    p.add_argument("--namespace", help="namespace label (SIM_NAMESPACE)")
    p.add_argument("--model-version", help="model version label (SIM_MODEL_VERSION)")
    p.add_argument("--error-rate", type=float, help="probability of a 500 (SIM_ERROR_RATE)")
    p.add_argument("--latency-ms", type=float, help="mean latency (SIM_LATENCY_MS)")
    p.add_argument(
        "--latency-jitter-ms",
        type=float,
        help="uniform +/- jitter around the latency (SIM_LATENCY_JITTER_MS)",
    )
    p.add_argument("--score-mean", type=float, help="mean score (SIM_SCORE_MEAN)")
    p.add_argument("--score-stddev", type=float, help="score std deviation (SIM_SCORE_STDDEV)")
    p.add_argument("--seed", type=int, help="random seed (SIM_SEED)")
    p.add_argument(
        "--max-runtime",
        type=float,
        default=0.0,
        help="exit after this many seconds; 0 = until SIGTERM/SIGINT",
    )
    p.add_argument("--log-requests", action="store_true", help="log each request to stderr")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: serve until signalled (or --max-runtime), first stdout line = port."""
    args = build_parser().parse_args(argv)
    config = config_from_env(
        os.environ,
        revision=args.revision,
        namespace=args.namespace,
        model_version=args.model_version,
        error_rate=args.error_rate,
        latency_ms=args.latency_ms,
        latency_jitter_ms=args.latency_jitter_ms,
        score_mean=args.score_mean,
        score_stddev=args.score_stddev,
        seed=args.seed,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = start_modelserver(config, args.port, log_requests=args.log_requests)
    line = {
        "event": "listening",
        "host": LOOPBACK,
        "port": server.port,
        "url": server.url,
        "pid": os.getpid(),
        "config": asdict(config),
    }
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()
    deadline = time.monotonic() + args.max_runtime if args.max_runtime > 0 else None
    try:
        while not stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            stop.wait(0.2)
    finally:
        server.stop()
    return 0


__all__ = [
    "ENV_VARS",
    "LATENCY_BUCKETS",
    "SCORE_BUCKETS",
    "ModelServerConfig",
    "ModelServerProcess",
    "ModelSim",
    "Prediction",
    "RunningModelServer",
    "config_from_env",
    "env_list_to_dict",
    "main",
    "make_handler",
    "parse_listening_line",
    "read_first_line",
    "spawn_modelserver",
    "start_modelserver",
]

if __name__ == "__main__":
    raise SystemExit(main())
