"""Model registry sync (issue 13, item 3), end to end: a real MLflow tracking server
(`mlflow server` from PyPI, installed by `hack/mlflow-server`, SQLite store in a temporary
directory) on loopback, the real `rewind-operator` process and API server.

- promote r1 and r2: the alias ``production`` names version 1, then 2, and version 2 is
  tagged with the move (release, revision, from-version, time, why);
- roll back: the alias goes back to version 1 once the routes are back on r1, with a
  timeline entry;
- MLflow stopped, then a rollback: the rollback completes (routes in effect) all the same,
  RegistrySynced says out of sync and why; MLflow started again: the alias follows, in sync.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, wait_for
from tests.sandbox.operator_helpers import (
    Rewind,
    canary,
    condition,
    policy_manifest,
    release_manifest,
    timeline,
)

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

POLICY = "registry-canary"
TAG = "rewind.dev/alias-production-moved"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class MLflow:
    """One `mlflow server` on loopback; stop() and start() keep its SQLite store."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.root / "mlflow.log").open("ab")
        self.process = subprocess.Popen(
            [str(ROOT / "hack" / "mlflow-server"), "run", str(self.root), str(self.port)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        # Its first start creates the SQLite schema: slow on a busy machine.
        wait_for("the MLflow server to answer /health", self.healthy, timeout=180)

    def healthy(self) -> bool:
        assert self.process is not None and self.process.poll() is None, (
            (self.root / "mlflow.log").read_text()[-2000:]
        )
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the server and its workers (`mlflow server` runs uvicorn as a child: its
        own process group, started for it, is signalled whole)."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
            wait_for("the MLflow server's port to close", lambda: not self.listening(),
                     timeout=30)
        self.process = None

    def listening(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        url = f"{self.uri}/api/2.0/mlflow/{path}"
        data = None
        if method == "GET" and body:
            url += "?" + urllib.parse.urlencode(body)
        elif body is not None:
            data = json.dumps(body).encode()
        request = urllib.request.Request(
            url, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as r:
            return json.loads(r.read() or b"{}")

    def register(self, model: str, versions: int) -> None:
        self.call("POST", "registered-models/create", {"name": model})
        for n in range(1, versions + 1):
            self.call("POST", "model-versions/create",
                      {"name": model, "source": f"s3://models/{model}/{n}.0.0"})

    def alias(self, model: str) -> str:
        """The version ``production`` names ("" unset)."""
        try:
            got = self.call("GET", "registered-models/alias",
                            {"name": model, "alias": "production"})
        except urllib.error.HTTPError as err:
            if "not found" in err.read().decode():
                return ""
            raise
        return str(got["model_version"]["version"])

    def tags(self, model: str, version: str) -> dict[str, str]:
        got = self.call("GET", "model-versions/get", {"name": model, "version": version})
        return {t["key"]: t["value"] for t in got["model_version"].get("tags") or []}


@pytest.fixture(scope="module")
def mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLflow]:
    subprocess.run([str(ROOT / "hack" / "mlflow-server"), "bin"], check=True, timeout=1800,
                   capture_output=True)
    server = MLflow(tmp_path_factory.mktemp("mlflow"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def running(mlflow: MLflow) -> MLflow:
    """The server, started again if a test left it stopped."""
    if mlflow.process is None:
        mlflow.start()
    return mlflow


def registered(mlflow: MLflow, name: str, version: int) -> dict[str, Any]:
    manifest = release_manifest(name, POLICY, version=version)
    manifest["spec"]["model"]["registry"] = {
        "trackingURI": mlflow.uri, "name": name, "version": str(version),
    }
    return manifest


def release(rw: Rewind, mlflow: MLflow, name: str, version: int) -> None:
    rw.set_error_rate(name, version, 0.0)
    rw.apply(registered(mlflow, name, version))
    rw.wait_phase(name, "Promoted", stable=version, timeout=90)
    rw.wait_routes(name, {version: 100})


def synced(rw: Rewind, name: str, version: str, timeout: float = 60) -> dict[str, Any]:
    return rw.wait_status(
        name, f"RegistrySynced True on version {version}",
        lambda s: condition(s, "RegistrySynced").get("status") == "True"
        and (s.get("registry") or {}).get("version") == version,
        timeout=timeout,
    )


def moves(status: dict[str, Any]) -> list[str]:
    return [e["message"] for e in timeline(status, "RegistryAliasMoved")]


def test_the_alias_follows_promotions_and_a_rollback(rw: Rewind, running: MLflow) -> None:
    name = "fraud-registry"
    running.register(name, 2)
    rw.apply(policy_manifest(POLICY, canary((50, "1s")), keep_previous_warm="5m"))
    release(rw, running, name, 1)
    status = synced(rw, name, "1")
    assert running.alias(name) == "1"
    assert moves(status) == [
        f"alias production of MLflow model {name} moved from version (unset) to 1 "
        f"(r1 promoted); version 1 tagged {TAG}"
    ]

    release(rw, running, name, 2)
    status = synced(rw, name, "2")
    assert running.alias(name) == "2"
    tag = json.loads(running.tags(name, "2")[TAG])
    assert tag["release"] == f"{rw.namespace}/{name}"
    assert (tag["revision"], tag["from"], tag["why"]) == (2, "1", "r2 promoted")
    assert tag["at"].endswith("Z")
    assert moves(status)[-1].startswith(
        f"alias production of MLflow model {name} moved from version 1 to 2 (r2 promoted)"
    )

    rw.annotate(name, "rewind.dev/rollback", "label flips in the November export")
    rw.wait_phase(name, "RolledBack", stable=1, timeout=60)
    rw.wait_routes(name, {1: 100})
    status = synced(rw, name, "1")
    assert running.alias(name) == "1"
    tag = json.loads(running.tags(name, "1")[TAG])
    assert (tag["revision"], tag["from"], tag["why"]) == (1, "2", "rolled back to r1")
    types = [e["type"] for e in status["timeline"]]
    assert types.index("RolledBack") < len(types) - 1 - types[::-1].index("RegistryAliasMoved")
    assert "moved from version 2 to 1 (rolled back to r1)" in moves(status)[-1]


def test_mlflow_down_never_holds_a_rollback(rw: Rewind, running: MLflow) -> None:
    name = "fraud-offline"
    running.register(name, 2)
    rw.apply(policy_manifest(POLICY, canary((50, "1s")), keep_previous_warm="5m"))
    release(rw, running, name, 1)
    release(rw, running, name, 2)
    synced(rw, name, "2")

    running.stop()
    rw.annotate(name, "rewind.dev/rollback", "label flips in the November export")
    # The rollback completes as if there were no registry: the routes never wait for it.
    rw.wait_phase(name, "RolledBack", stable=1, timeout=30)
    rw.wait_routes(name, {1: 100})
    status = rw.wait_status(
        name, "RegistrySynced False (RegistryError)",
        lambda s: condition(s, "RegistrySynced").get("reason") == "RegistryError",
        timeout=30,
    )
    message = condition(status, "RegistrySynced")["message"]
    assert condition(status, "RegistrySynced")["status"] == "False"
    assert running.uri in message and "retrying" in message, message
    assert status["registry"]["wantedVersion"] == "1"

    running.start()
    status = synced(rw, name, "1", timeout=120)
    assert running.alias(name) == "1"
    assert "moved from version 2 to 1 (rolled back to r1)" in moves(status)[-1]
    assert not status["registry"].get("error")
