"""The revision runner: the bridge from kwok's fake pods to real local model-server processes.

kwok marks a revision's pods Ready but runs no container, so nothing would answer requests.
The runner watches (polls) the Deployments the operator manages in one namespace and keeps,
for every revision Deployment with ``replicas > 0``, exactly one
``python -m rewind_demo.modelserver`` process configured from that Deployment's container env
(the ``SIM_*`` variables come from the ModelRelease's ``spec.code.env``, which the operator
copies into the Deployment). Each process is registered as a Prometheus scrape target
(file_sd) and listed in a per-release *backends file* ``{subset r<N>: {url, workload, ...}}``
that the traffic generator reads. When the Deployment scales to 0 or is deleted the process is
stopped and unregistered.

The decisions are pure (``desired_revision``, ``plan``) and unit tested; the loop around them
is bounded (poll interval, per-call timeouts, a deadline).

Run it on its own as::

    python -m rewind_demo.runner --namespace rewind-demo --backends-dir /tmp/backends
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from rewind_demo import targets
from rewind_demo.modelserver import (
    ENV_VARS,
    ModelServerConfig,
    ModelServerProcess,
    config_from_env,
    env_list_to_dict,
    spawn_modelserver,
)

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "rewind"
RELEASE_LABEL = "rewind.dev/release"
REVISION_LABEL = "rewind.dev/revision"
SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"
#: The operator's serving container (rewind.adapters.workloads.CONTAINER_NAME).
CONTAINER_NAME = "model-server"
#: Injected by the operator into every revision's container.
MODEL_VERSION_ENV = "MODEL_VERSION"
#: Scrape targets of the runner are named ``<prefix><namespace>-<workload>``.
DEFAULT_TARGET_PREFIX = "rewind-sim-"

Key = tuple[str, str]  # (namespace, workload)
DeploymentLister = Callable[[], Sequence[Mapping[str, Any]]]
Logger = Callable[[str], None]


@dataclass(frozen=True)
class RevisionSpec:
    """What one running revision needs: who it is and the model-server config to run."""

    namespace: str
    release: str
    revision: int
    workload: str
    env: tuple[tuple[str, str], ...]  # the SIM_* variables, sorted
    model_version: str = ""

    @property
    def key(self) -> Key:
        return (self.namespace, self.workload)

    @property
    def subset(self) -> str:
        """The DestinationRule subset of this revision: ``r<N>``."""
        return f"r{self.revision}"

    def config(self) -> ModelServerConfig:
        """The model-server config: SIM_* env, named after the workload (raises ValueError)."""
        return config_from_env(
            dict(self.env),
            revision=self.workload,
            namespace=self.namespace,
            model_version=self.model_version or None,
        )

    def describe(self) -> str:
        """``SIM_ERROR_RATE=0.3 SIM_LATENCY_MS=400`` (or ``defaults``)."""
        shown = [f"{k}={v}" for k, v in self.env if k not in ("SIM_REVISION", "SIM_NAMESPACE")]
        return " ".join(shown) or "defaults"


def _container(deployment: Mapping[str, Any]) -> Mapping[str, Any]:
    spec = deployment.get("spec") or {}
    pod = (spec.get("template") or {}).get("spec") or {}
    containers: list[Mapping[str, Any]] = list(pod.get("containers") or [])
    for c in containers:
        if c.get("name") == CONTAINER_NAME:
            return c
    return containers[0] if containers else {}


def deployment_env(deployment: Mapping[str, Any]) -> dict[str, str]:
    """The serving container's literal env as a dict (``valueFrom`` entries are skipped)."""
    entries = [e for e in _container(deployment).get("env") or [] if "valueFrom" not in e]
    return env_list_to_dict(entries)


def sim_env(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """Only the variables the model server reads, sorted (so equal configs compare equal)."""
    return tuple(sorted((k, v) for k, v in env.items() if k in ENV_VARS))


def desired_revision(deployment: Mapping[str, Any]) -> RevisionSpec | None:
    """The revision a Deployment wants running, or None (not a revision, 0 replicas, deleting)."""
    meta = deployment.get("metadata") or {}
    labels = meta.get("labels") or {}
    if labels.get(MANAGED_BY_LABEL) != MANAGED_BY_VALUE or meta.get("deletionTimestamp"):
        return None
    release = str(labels.get(RELEASE_LABEL) or "")
    try:
        revision = int(str(labels.get(REVISION_LABEL, "")))
    except ValueError:
        return None
    if not release or revision < 1:
        return None
    spec = deployment.get("spec") or {}
    replicas = spec.get("replicas", 1)
    if not isinstance(replicas, int) or replicas < 1:
        return None
    env = deployment_env(deployment)
    return RevisionSpec(
        namespace=str(meta.get("namespace") or "default"),
        release=release,
        revision=revision,
        workload=str(meta.get("name") or f"{release}-r{revision}"),
        env=sim_env(env),
        model_version=env.get(MODEL_VERSION_ENV, ""),
    )


def desired_state(deployments: Iterable[Mapping[str, Any]]) -> dict[Key, RevisionSpec]:
    """Every revision that should have a model server, by (namespace, workload)."""
    out: dict[Key, RevisionSpec] = {}
    for d in deployments:
        spec = desired_revision(d)
        if spec is not None:
            out[spec.key] = spec
    return out


@dataclass(frozen=True)
class SyncPlan:
    """What one sync does: stop these, then start those (a changed config is both)."""

    start: tuple[RevisionSpec, ...] = ()
    stop: tuple[Key, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.start and not self.stop


def plan(
    desired: Mapping[Key, RevisionSpec],
    running: Mapping[Key, RevisionSpec],
    dead: Iterable[Key] = (),
) -> SyncPlan:
    """Desired vs running: start the missing, stop the unwanted, restart changed or dead ones."""
    dead_set = set(dead)
    stop = sorted(
        k for k, spec in running.items() if desired.get(k) != spec or k in dead_set
    )
    start = [spec for k, spec in sorted(desired.items()) if k not in running or k in stop]
    return SyncPlan(tuple(start), tuple(stop))


def backends_document(running: Iterable[RevisionSpec], urls: Mapping[Key, str]) -> dict[str, Any]:
    """One release's backends file: ``{subset: {url, workload, namespace, app, version}}``."""
    doc: dict[str, Any] = {}
    for spec in sorted(running, key=lambda s: s.revision):
        url = urls.get(spec.key)
        if url is None:
            continue
        doc[spec.subset] = {
            "url": url,
            "workload": spec.workload,
            "namespace": spec.namespace,
            "app": spec.release,
            "version": spec.subset,
        }
    return doc


_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def backends_path(directory: str | Path, namespace: str, release: str) -> Path:
    """Where the backends file of one release lives: ``<dir>/<namespace>.<release>.json``."""
    return Path(directory) / f"{_SAFE.sub('-', namespace)}.{_SAFE.sub('-', release)}.json"


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to a temp file in the same folder and rename it over path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(obj, fh, indent=2, sort_keys=True)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class Spawner(Protocol):
    def __call__(self, config: ModelServerConfig, *, stderr: int | None) -> ModelServerProcess: ...


def _spawn(config: ModelServerConfig, *, stderr: int | None) -> ModelServerProcess:
    return spawn_modelserver(config, stderr=stderr)


def kube_deployment_lister(
    namespace: str, api_client: Any = None, *, request_timeout: float = 5.0
) -> DeploymentLister:
    """List the operator's Deployments in namespace as plain JSON dicts."""
    from kubernetes import client

    apps = client.AppsV1Api(api_client)

    def list_deployments() -> Sequence[Mapping[str, Any]]:
        response: Any = apps.list_namespaced_deployment(
            namespace,
            label_selector=SELECTOR,
            _preload_content=False,
            _request_timeout=request_timeout,
        )
        body = json.loads(response.data or b"{}")
        return list(body.get("items") or [])

    return list_deployments


@dataclass
class _Running:
    spec: RevisionSpec
    process: ModelServerProcess
    target: str


@dataclass
class RunnerStats:
    """Counters for tests and the demo's summary."""

    started: int = 0
    stopped: int = 0
    spawn_errors: int = 0
    list_errors: int = 0
    events: list[str] = field(default_factory=list)


class RevisionRunner:
    """Keeps one model-server process per live revision Deployment of one namespace."""

    def __init__(
        self,
        namespace: str,
        *,
        backends_dir: str | Path,
        lister: DeploymentLister,
        targets_dir: str | Path | None = None,
        target_prefix: str = DEFAULT_TARGET_PREFIX,
        log_dir: str | Path | None = None,
        pidfile: str | Path | None = None,
        spawn: Spawner = _spawn,
        poll_interval: float = 0.5,
        log: Logger | None = None,
    ) -> None:
        if poll_interval <= 0:
            raise ValueError("poll_interval must be > 0")
        self.namespace = namespace
        self.backends_dir = Path(backends_dir)
        self._list = lister
        self._targets_dir = targets_dir
        self._prefix = target_prefix
        self._log_dir = Path(log_dir) if log_dir is not None else None
        self._pidfile = Path(pidfile) if pidfile is not None else None
        self._spawn = spawn
        self.poll_interval = poll_interval
        self._log: Logger = log or (lambda msg: print(f"runner: {msg}", file=sys.stderr))
        self._running: dict[Key, _Running] = {}
        self._written: dict[str, dict[str, Any]] = {}  # release -> last backends doc
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.stats = RunnerStats()

    # -- views ------------------------------------------------------------------------------

    def running(self) -> dict[Key, RevisionSpec]:
        with self._lock:
            return {k: r.spec for k, r in self._running.items()}

    def url_of(self, workload: str) -> str | None:
        with self._lock:
            r = self._running.get((self.namespace, workload))
            return r.process.url if r is not None else None

    def backends_file(self, release: str) -> Path:
        return backends_path(self.backends_dir, self.namespace, release)

    def target_name(self, workload: str) -> str:
        return f"{self._prefix}{_SAFE.sub('-', self.namespace)}-{workload}"

    # -- one pass ---------------------------------------------------------------------------

    def clean_stale(self) -> list[str]:
        """Remove scrape targets and backends files a crashed earlier run left behind."""
        removed: list[str] = []
        stem = f"{self._prefix}{_SAFE.sub('-', self.namespace)}-"
        with contextlib.suppress(RuntimeError, FileNotFoundError):
            for name in targets.list_targets(self._targets_dir):
                if name.startswith(stem) and targets.unregister_target(
                    name, directory=self._targets_dir
                ):
                    removed.append(name)
        if self.backends_dir.is_dir():
            for p in self.backends_dir.glob(f"{_SAFE.sub('-', self.namespace)}.*.json"):
                p.unlink(missing_ok=True)
                removed.append(p.name)
        return removed

    def sync(self) -> SyncPlan:
        """List Deployments once and converge the processes, targets and backends files."""
        try:
            desired = desired_state(self._list())
        except Exception as exc:
            self.stats.list_errors += 1
            self._log(f"listing Deployments failed (will retry): {exc!r}")
            return SyncPlan()
        with self._lock:
            running = {k: r.spec for k, r in self._running.items()}
            dead = [k for k, r in self._running.items() if r.process.proc.poll() is not None]
            todo = plan(desired, running, dead)
            for key in todo.stop:
                why = "exited" if key in dead else "Deployment scaled to 0 or deleted"
                if key in desired and key not in dead:
                    why = "config changed"
                self._stop_one(key, why)
            for spec in todo.start:
                if self._stop.is_set():
                    break
                self._start_one(spec)
            self._write_backends()
        return todo

    def _start_one(self, spec: RevisionSpec) -> None:
        try:
            config = spec.config()
        except ValueError as exc:
            self.stats.spawn_errors += 1
            self._log(f"{spec.workload}: bad SIM_* env, not started: {exc}")
            return
        log_fd: int | None = None
        try:
            if self._log_dir is not None:
                self._log_dir.mkdir(parents=True, exist_ok=True)
                log_fd = os.open(
                    self._log_dir / f"modelserver-{spec.workload}.log",
                    os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                    0o644,
                )
            process = self._spawn(config, stderr=log_fd)
        except (OSError, RuntimeError, TimeoutError) as exc:
            self.stats.spawn_errors += 1
            self._log(f"{spec.workload}: model server did not start: {exc}")
            return
        finally:
            if log_fd is not None:
                os.close(log_fd)
        name = self.target_name(spec.workload)
        try:
            targets.register_target(
                name,
                process.port,
                {"rewind_sim": "modelserver", "rewind_release": spec.release},
                directory=self._targets_dir,
            )
        except (OSError, RuntimeError, ValueError) as exc:
            self._log(f"{spec.workload}: could not register scrape target: {exc}")
        self._running[spec.key] = _Running(spec, process, name)
        self.stats.started += 1
        self._event(
            f"model server {spec.workload} up on {process.url} ({spec.describe()})"
        )
        self._write_pids()

    def _stop_one(self, key: Key, why: str) -> None:
        r = self._running.pop(key, None)
        if r is None:
            return
        with contextlib.suppress(RuntimeError):
            targets.unregister_target(r.target, directory=self._targets_dir)
        r.process.stop()
        self.stats.stopped += 1
        self._event(f"model server {r.spec.workload} stopped ({why})")
        self._write_pids()

    def _event(self, message: str) -> None:
        self.stats.events.append(message)
        self._log(message)

    def _write_backends(self) -> None:
        by_release: dict[str, list[RevisionSpec]] = {}
        urls: dict[Key, str] = {}
        for key, r in self._running.items():
            by_release.setdefault(r.spec.release, []).append(r.spec)
            urls[key] = r.process.url
        for release in sorted(set(by_release) | set(self._written)):
            doc = backends_document(by_release.get(release, []), urls)
            if self._written.get(release) == doc:
                continue
            write_json_atomic(self.backends_file(release), doc)
            self._written[release] = doc

    def _write_pids(self) -> None:
        if self._pidfile is None:
            return
        pids = {r.spec.workload: r.process.proc.pid for r in self._running.values()}
        write_json_atomic(self._pidfile, pids)

    # -- the loop ---------------------------------------------------------------------------

    def run(self, duration: float) -> None:
        """Sync every poll_interval until stop() or duration seconds passed (bounded)."""
        if not 0 < duration < float("inf"):
            raise ValueError("duration must be a finite number of seconds > 0")
        deadline = time.monotonic() + duration
        while not self._stop.is_set():
            started = time.monotonic()
            if started >= deadline:
                break
            self.sync()
            wait = min(self.poll_interval - (time.monotonic() - started), deadline - started)
            if wait > 0:
                self._stop.wait(wait)

    def start(self, duration: float) -> threading.Thread:
        """Run the loop in a daemon thread (bounded by duration)."""
        thread = threading.Thread(
            target=self.run, args=(duration,), name="revision-runner", daemon=True
        )
        self._thread = thread
        thread.start()
        return thread

    def request_stop(self) -> None:
        """Ask the loop to end (safe from signal handlers and other threads)."""
        self._stop.set()

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the loop, every model server, their targets; clear the backends files."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            for key in list(self._running):
                self._stop_one(key, "runner stopped")
            self._write_backends()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m rewind_demo.runner",
        description="One local model-server process per live revision Deployment (kwok bridge).",
    )
    p.add_argument("--namespace", required=True, help="namespace whose Deployments to follow")
    p.add_argument("--backends-dir", required=True, help="where to write <ns>.<release>.json")
    p.add_argument("--targets-dir", help="file_sd folder (default $SANDBOX_TARGETS_DIR)")
    p.add_argument("--log-dir", help="model-server stderr logs go here")
    p.add_argument("--poll-interval", type=float, default=0.5)
    p.add_argument("--duration", type=float, default=3600.0, help="stop after this many seconds")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from kubernetes import config

    load: Callable[[], None] = config.load_kube_config
    load()
    runner = RevisionRunner(
        args.namespace,
        backends_dir=args.backends_dir,
        lister=kube_deployment_lister(args.namespace),
        targets_dir=args.targets_dir,
        log_dir=args.log_dir,
        poll_interval=args.poll_interval,
    )

    def on_signal(signum: int, frame: FrameType | None) -> None:
        runner.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    runner.clean_stale()
    try:
        runner.run(args.duration)
    finally:
        runner.stop()
    return 0


__all__ = [
    "RevisionRunner",
    "RevisionSpec",
    "SyncPlan",
    "backends_document",
    "backends_path",
    "deployment_env",
    "desired_revision",
    "desired_state",
    "kube_deployment_lister",
    "main",
    "plan",
    "sim_env",
]

if __name__ == "__main__":
    raise SystemExit(main())
