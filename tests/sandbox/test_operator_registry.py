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

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from rewind_demo.mlflow_server import MLflowServer
from tests.conftest import ROOT
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


@pytest.fixture(scope="module")
def mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLflowServer]:
    subprocess.run([str(ROOT / "hack" / "mlflow-server"), "bin"], check=True, timeout=1800,
                   capture_output=True)
    server = MLflowServer(ROOT, tmp_path_factory.mktemp("mlflow"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def running(mlflow: MLflowServer) -> MLflowServer:
    """The server, started again if a test left it stopped."""
    if mlflow.process is None:
        mlflow.start()
    return mlflow


def register(mlflow: MLflowServer, model: str, versions: int) -> None:
    mlflow.register(model, [f"s3://models/{model}/{n}.0.0" for n in range(1, versions + 1)])


def registered(mlflow: MLflowServer, name: str, version: int) -> dict[str, Any]:
    manifest = release_manifest(name, POLICY, version=version)
    manifest["spec"]["model"]["registry"] = {
        "trackingURI": mlflow.uri, "name": name, "version": str(version),
    }
    return manifest


def release(rw: Rewind, mlflow: MLflowServer, name: str, version: int) -> None:
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


def test_the_alias_follows_promotions_and_a_rollback(rw: Rewind, running: MLflowServer) -> None:
    name = "fraud-registry"
    register(running, name, 2)
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


def test_mlflow_down_never_holds_a_rollback(rw: Rewind, running: MLflowServer) -> None:
    name = "fraud-offline"
    register(running, name, 2)
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
