"""Fixtures for tests that talk to the real sandbox (hack/sandbox): API server, Prometheus.

Unit tests never touch these, so `pytest tests/unit` runs without a sandbox. The first test
that asks for `sandbox` starts it (or reuses a healthy one) once per session.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

import pytest

from rewind_demo import targets

ROOT = Path(__file__).resolve().parent.parent
SANDBOX_CLI = ROOT / "hack" / "sandbox"


@dataclass(frozen=True)
class Sandbox:
    """What a test needs to reach the sandbox; read from `.sandbox/env`."""

    env: dict[str, str]

    @property
    def kubeconfig(self) -> str:
        return self.env["KUBECONFIG"]

    @property
    def kubeconfig_dev(self) -> str:
        return self.env["SANDBOX_KUBECONFIG_DEV"]

    @property
    def prometheus_url(self) -> str:
        return self.env["PROMETHEUS_URL"]

    @property
    def targets_dir(self) -> Path:
        return Path(self.env["SANDBOX_TARGETS_DIR"])

    @property
    def kubectl_path(self) -> str:
        return self.env["KUBECTL"]

    @property
    def bin_dir(self) -> Path:
        return Path(self.env["SANDBOX_BIN"])


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Bounded polling: returns check()'s first truthy value or fails naming what never came."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    last_error: BaseException | None = None
    while True:
        try:
            value = check()
            if value:
                return value
        except Exception as err:
            last_error = err
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


def _read_env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^export (\w+)=(.*)$", line)
        if match and not match.group(2).startswith('"'):
            env[match.group(1)] = match.group(2)
    return env


@pytest.fixture(scope="session")
def sandbox() -> Sandbox:
    status = subprocess.run([str(SANDBOX_CLI), "status"], capture_output=True, text=True)
    if status.returncode != 0:
        up = subprocess.run([str(SANDBOX_CLI), "up"], text=True)
        if up.returncode != 0:
            pytest.fail("hack/sandbox up failed; see its messages above")
    env = _read_env_file(ROOT / ".sandbox" / "env")
    os.environ["KUBECONFIG"] = env["KUBECONFIG"]
    return Sandbox(env)


class Kubectl(Protocol):
    def __call__(
        self, *args: str, input: str | None = None, check: bool = True, dev: bool = False
    ) -> subprocess.CompletedProcess[str]: ...


@pytest.fixture(scope="session")
def kubectl(sandbox: Sandbox) -> Kubectl:
    """Runs the sandbox's kubectl as the admin (or, with dev=True, the non-admin user)."""

    def run(
        *args: str, input: str | None = None, check: bool = True, dev: bool = False
    ) -> subprocess.CompletedProcess[str]:
        kubeconfig = sandbox.kubeconfig_dev if dev else sandbox.kubeconfig
        result = subprocess.run(
            [sandbox.kubectl_path, f"--kubeconfig={kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
            )
        return result

    return run


@pytest.fixture(scope="session")
def api_client(sandbox: Sandbox) -> Iterator[Any]:
    from kubernetes import config

    client = config.new_client_from_config(config_file=sandbox.kubeconfig)
    yield client
    client.close()


@pytest.fixture()
def namespace(kubectl: Kubectl, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards without waiting for it to go."""
    stem = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"t-{stem}-{uuid.uuid4().hex[:5]}"
    kubectl("create", "namespace", name)
    wait_for(
        f"default ServiceAccount in {name}",
        lambda: kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode
        == 0,
    )
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def istio_crds(kubectl: Kubectl) -> None:
    """hack/sandbox installs them; this fails loudly if they went missing."""
    kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=30s",
        "crd/virtualservices.networking.istio.io",
        "crd/destinationrules.networking.istio.io",
    )


@pytest.fixture(scope="session")
def crds_installed(kubectl: Kubectl) -> None:
    """Rewind's own CRDs from crds/, applied as the user would."""
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=30s",
        "crd/modelreleases.rewind.dev",
        "crd/rolloutpolicies.rewind.dev",
        "crd/quarantines.rewind.dev",
    )
    # Served a moment after Established on a fresh API server: wait until all list.
    wait_for("the Rewind resources to be served", lambda: all(
        kubectl("get", kind, "-A", check=False).returncode == 0
        for kind in ("modelreleases.rewind.dev", "rolloutpolicies.rewind.dev",
                     "quarantines.rewind.dev")
    ))


def prometheus_query(prometheus_url: str, promql: str) -> list[dict[str, Any]]:
    """An instant query; returns the result vector (raises on an API error)."""
    return targets.query(prometheus_url, promql)


@pytest.fixture()
def prometheus_url(sandbox: Sandbox) -> str:
    return sandbox.prometheus_url


class RegisterTarget(Protocol):
    def __call__(self, name: str, port: int, labels: dict[str, str] | None = None) -> str: ...


@pytest.fixture()
def register_target(sandbox: Sandbox) -> Iterator[RegisterTarget]:
    """Adds a scrape target through file_sd and waits until Prometheus has scraped it.

    Returns the target's `instance` label. Targets are removed when the test ends.
    """
    names: list[str] = []

    def register(name: str, port: int, labels: dict[str, str] | None = None) -> str:
        instance = f"127.0.0.1:{port}"
        targets.register_target(name, port, labels, directory=sandbox.targets_dir)
        names.append(name)
        try:
            targets.wait_scraped(sandbox.prometheus_url, {"instance": instance}, timeout=30)
        except TimeoutError as err:
            pytest.fail(str(err))
        return instance

    yield register
    for name in names:
        targets.unregister_target(name, directory=sandbox.targets_dir)


class MetricsEndpoint:
    """A /metrics endpoint whose gauges a test sets, e.g. a revision's error rate.

    Series are keyed by name and labels; `set` replaces the value Prometheus will scrape
    next, so a test can make a candidate "go bad" at a moment it chooses.
    """

    def __init__(self) -> None:
        self._values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = endpoint.exposition().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def set(self, name: str, value: float, **labels: str) -> None:
        with self._lock:
            self._values[(name, tuple(sorted(labels.items())))] = value

    def remove(self, name: str, **labels: str) -> None:
        with self._lock:
            self._values.pop((name, tuple(sorted(labels.items()))), None)

    def exposition(self) -> str:
        with self._lock:
            items = sorted(self._values.items())
        lines = []
        for (name, labels), value in items:
            rendered = ",".join(f'{k}="{v}"' for k, v in labels)
            lines.append(f"{name}{{{rendered}}} {value}")
        return "\n".join(lines) + "\n"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def metrics_endpoint(
    register_target: RegisterTarget, request: pytest.FixtureRequest
) -> Iterator[MetricsEndpoint]:
    """A settable /metrics endpoint registered with the sandbox Prometheus."""
    endpoint = MetricsEndpoint()
    stem = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40]
    register_target(f"test-{stem}-{endpoint.port}", endpoint.port)
    yield endpoint
    endpoint.close()


class OperatorProcess:
    """`rewind-operator` as a real process watching the given namespaces.

    A process (not a thread) so a test can SIGKILL it at any moment and start it again,
    exactly like a crashed pod.
    """

    def __init__(
        self,
        sandbox: Sandbox,
        namespaces: list[str],
        log_path: Path,
        kubeconfig: str | None = None,
    ) -> None:
        self.sandbox = sandbox
        self.namespaces = namespaces
        self.log_path = log_path
        self.kubeconfig = kubeconfig or sandbox.kubeconfig
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str) -> None:
        args = [str(ROOT / ".venv" / "bin" / "rewind-operator"), "--metrics-port", "0",
                "--prometheus-url", self.sandbox.prometheus_url, "--verbose"]
        for ns in self.namespaces:
            args += ["--namespace", ns]
        if not self.namespaces:
            args.append("--all-namespaces")
        env = {**os.environ, "KUBECONFIG": self.kubeconfig}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(args + list(extra), stdout=log, stderr=subprocess.STDOUT,
                                         env=env, start_new_session=True)

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, as when a node dies."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture()
def operator(
    sandbox: Sandbox, namespace: str, crds_installed: None, istio_crds: None,
    tmp_path: Path, request: pytest.FixtureRequest,
) -> Iterator[OperatorProcess]:
    """The operator, running against the sandbox and watching only this test's namespace.

    Its log is printed when the test fails, so a failure explains itself.
    """
    process = OperatorProcess(sandbox, [namespace], tmp_path / "operator.log")
    process.start()
    yield process
    process.stop()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(f"--- operator log ({process.log_path}) ---\n{process.logs()[-20000:]}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Expose each phase's report on the item (used to print operator logs on failure)."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `slow` first: in the parallel phase of `make test` a multi-minute test
    scheduled last would leave the other workers idle while it finishes."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
