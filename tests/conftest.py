"""Fixtures for tests that talk to the real sandbox (hack/sandbox): API server, Prometheus.

Unit tests never touch these, so `pytest tests/unit` runs without a sandbox. The first test
that asks for `sandbox` starts it (or reuses a healthy one) once per session.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest

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
    )


def prometheus_query(prometheus_url: str, promql: str) -> list[dict[str, Any]]:
    """An instant query; returns the result vector (raises on an API error)."""
    url = f"{prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.load(response)
    if body.get("status") != "success":
        raise RuntimeError(f"Prometheus error for {promql!r}: {body}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


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
    written: list[Path] = []

    def register(name: str, port: int, labels: dict[str, str] | None = None) -> str:
        instance = f"127.0.0.1:{port}"
        path = sandbox.targets_dir / f"{name}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps([{"targets": [instance], "labels": labels or {}}]))
        tmp.replace(path)
        written.append(path)
        wait_for(
            f"Prometheus to scrape {instance}",
            lambda: any(
                r["value"][1] == "1"
                for r in prometheus_query(sandbox.prometheus_url, f'up{{instance="{instance}"}}')
            ),
            timeout=30,
        )
        return instance

    yield register
    for path in written:
        path.unlink(missing_ok=True)
