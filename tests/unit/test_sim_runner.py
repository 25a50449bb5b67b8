"""Tests of the revision runner: Deployment -> model-server process, targets, backends file."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from rewind_demo._http import request
from rewind_demo.modelserver import ModelServerConfig, ModelServerProcess, spawn_modelserver
from rewind_demo.runner import (
    RevisionRunner,
    RevisionSpec,
    backends_document,
    backends_path,
    deployment_env,
    desired_revision,
    desired_state,
    plan,
    sim_env,
)
from rewind_demo.trafficgen import backends_file_source

NS = "rewind-demo"


def deployment(
    release: str = "fraud",
    revision: int = 3,
    replicas: int = 1,
    env: Sequence[Mapping[str, Any]] = (),
    *,
    managed: bool = True,
    deleting: bool = False,
    container: str = "model-server",
) -> dict[str, Any]:
    """A revision Deployment shaped like rewind.adapters.workloads.build_deployment's."""
    labels = {"rewind.dev/release": release, "rewind.dev/revision": str(revision)}
    if managed:
        labels["app.kubernetes.io/managed-by"] = "rewind"
    meta: dict[str, Any] = {"name": f"{release}-r{revision}", "namespace": NS, "labels": labels}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {
        "metadata": meta,
        "spec": {
            "replicas": replicas,
            "template": {
                "spec": {
                    "containers": [
                        {"name": "sidecar", "env": [{"name": "SIM_ERROR_RATE", "value": "1"}]},
                        {"name": container, "env": list(env)},
                    ]
                }
            },
        },
    }


BAD_ENV: list[dict[str, Any]] = [
    {"name": "LOG_LEVEL", "value": "info"},
    {"name": "SIM_ERROR_RATE", "value": "0.3"},
    {"name": "SIM_LATENCY_MS", "value": "400"},
    {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
    {"name": "REWIND_REVISION", "value": "3"},
    {"name": "MODEL_VERSION", "value": "3.0.0"},
]


def test_env_comes_from_the_serving_container_and_skips_value_from() -> None:
    env = deployment_env(deployment(env=BAD_ENV))
    assert env["SIM_ERROR_RATE"] == "0.3"  # not the sidecar's "1"
    assert "SECRET" not in env
    assert sim_env(env) == (("SIM_ERROR_RATE", "0.3"), ("SIM_LATENCY_MS", "400"))


def test_desired_revision_builds_the_model_server_config() -> None:
    spec = desired_revision(deployment(env=BAD_ENV))
    assert spec == RevisionSpec(
        namespace=NS,
        release="fraud",
        revision=3,
        workload="fraud-r3",
        env=(("SIM_ERROR_RATE", "0.3"), ("SIM_LATENCY_MS", "400")),
        model_version="3.0.0",
    )
    config = spec.config()
    assert (config.revision, config.namespace, config.model_version) == ("fraud-r3", NS, "3.0.0")
    assert (config.error_rate, config.latency_ms) == (0.3, 400.0)
    assert spec.subset == "r3"
    assert spec.describe() == "SIM_ERROR_RATE=0.3 SIM_LATENCY_MS=400"


def test_first_container_is_used_when_none_is_named_model_server() -> None:
    env = deployment_env(deployment(env=BAD_ENV, container="server"))
    assert env == {"SIM_ERROR_RATE": "1"}


@pytest.mark.parametrize(
    "dep",
    [
        deployment(replicas=0),
        deployment(deleting=True),
        deployment(managed=False),
        {"metadata": {"name": "x", "labels": {"app.kubernetes.io/managed-by": "rewind"}}},
        {
            "metadata": {
                "name": "x",
                "labels": {
                    "app.kubernetes.io/managed-by": "rewind",
                    "rewind.dev/release": "fraud",
                    "rewind.dev/revision": "latest",
                },
            }
        },
    ],
)
def test_nothing_runs_for_scaled_down_deleted_or_foreign_deployments(dep: dict[str, Any]) -> None:
    assert desired_revision(dep) is None


def test_desired_state_is_keyed_by_namespace_and_workload() -> None:
    state = desired_state([deployment(revision=1), deployment(revision=2, replicas=0),
                           deployment(revision=3)])
    assert sorted(state) == [(NS, "fraud-r1"), (NS, "fraud-r3")]


def spec(revision: int, **env: str) -> RevisionSpec:
    return RevisionSpec(NS, "fraud", revision, f"fraud-r{revision}", tuple(sorted(env.items())))


def test_plan_starts_missing_and_stops_unwanted() -> None:
    desired = {s.key: s for s in (spec(1), spec(2))}
    running = {s.key: s for s in (spec(2), spec(3))}
    todo = plan(desired, running)
    assert [s.workload for s in todo.start] == ["fraud-r1"]
    assert todo.stop == ((NS, "fraud-r3"),)


def test_plan_restarts_changed_config_and_dead_processes() -> None:
    desired = {s.key: s for s in (spec(1, SIM_ERROR_RATE="0.5"), spec(2))}
    running = {s.key: s for s in (spec(1), spec(2))}
    todo = plan(desired, running, dead=[(NS, "fraud-r2")])
    assert set(todo.stop) == {(NS, "fraud-r1"), (NS, "fraud-r2")}
    assert [s.workload for s in todo.start] == ["fraud-r1", "fraud-r2"]
    assert todo.start[0].env == (("SIM_ERROR_RATE", "0.5"),)


def test_plan_is_empty_when_converged() -> None:
    state = {s.key: s for s in (spec(1), spec(2))}
    assert plan(state, dict(state)).empty


def test_backends_document_maps_subsets_to_urls() -> None:
    doc = backends_document(
        [spec(2), spec(1), spec(3)],
        {(NS, "fraud-r1"): "http://127.0.0.1:1001", (NS, "fraud-r2"): "http://127.0.0.1:1002"},
    )
    assert doc == {
        "r1": {"url": "http://127.0.0.1:1001", "workload": "fraud-r1", "namespace": NS,
               "app": "fraud", "version": "r1"},
        "r2": {"url": "http://127.0.0.1:1002", "workload": "fraud-r2", "namespace": NS,
               "app": "fraud", "version": "r2"},
    }


class FakeCluster:
    """A settable Deployment list (what the runner would read from the API server)."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.fail = False

    def __call__(self) -> list[dict[str, Any]]:
        if self.fail:
            raise OSError("API server unreachable")
        return list(self.items)


def test_runner_follows_deployments_with_real_processes(tmp_path: Path) -> None:
    cluster = FakeCluster()
    spawned: list[ModelServerConfig] = []

    def spawn(config: ModelServerConfig, *, stderr: int | None) -> ModelServerProcess:
        spawned.append(config)
        return spawn_modelserver(config, stderr=stderr)

    runner = RevisionRunner(
        NS,
        backends_dir=tmp_path / "backends",
        lister=cluster,
        targets_dir=tmp_path / "targets",
        log_dir=tmp_path / "logs",
        pidfile=tmp_path / "pids.json",
        spawn=spawn,
        log=lambda msg: None,
    )
    backends = backends_file_source(runner.backends_file("fraud"), NS)
    try:
        cluster.items = [deployment(revision=1), deployment(revision=3, env=BAD_ENV)]
        runner.sync()
        assert sorted(w for _, w in runner.running()) == ["fraud-r1", "fraud-r3"]
        assert spawned[1].error_rate == 0.3
        assert sorted(backends()) == ["r1", "r3"]
        targets = sorted(p.name for p in (tmp_path / "targets").glob("*.json"))
        assert targets == ["rewind-sim-rewind-demo-fraud-r1.json",
                           "rewind-sim-rewind-demo-fraud-r3.json"]
        url = runner.url_of("fraud-r3")
        assert url is not None
        status, body = request("POST", url + "/predict", b"{}")
        assert status in (200, 500) and json.loads(body)["revision"] == "fraud-r3"
        assert set(json.loads((tmp_path / "pids.json").read_text())) == {"fraud-r1", "fraud-r3"}

        # An API outage changes nothing: the processes keep serving.
        cluster.fail = True
        assert runner.sync().empty and runner.stats.list_errors == 1
        cluster.fail = False

        # Scale r3 to zero: its process stops, its target and backend go.
        cluster.items = [deployment(revision=1), deployment(revision=3, replicas=0)]
        todo = runner.sync()
        assert todo.stop == ((NS, "fraud-r3"),) and not todo.start
        assert list(backends()) == ["r1"]
        assert not (tmp_path / "targets" / "rewind-sim-rewind-demo-fraud-r3.json").exists()
        assert runner.sync().empty  # converged

        # A process that dies is restarted on the next pass.
        r1 = runner.running()[(NS, "fraud-r1")]
        old_url = runner.url_of("fraud-r1")
        assert old_url is not None
        next(iter(runner._running.values())).process.proc.kill()
        next(iter(runner._running.values())).process.proc.wait(5)
        runner.sync()
        assert runner.running()[(NS, "fraud-r1")] == r1
        assert runner.url_of("fraud-r1") not in (None, old_url)
    finally:
        runner.stop()
    assert runner.running() == {}
    assert backends() == {}
    assert list((tmp_path / "targets").glob("*.json")) == []


def test_clean_stale_removes_only_this_namespace(tmp_path: Path) -> None:
    tdir, bdir = tmp_path / "targets", tmp_path / "backends"
    tdir.mkdir()
    bdir.mkdir()
    for name in ("rewind-sim-rewind-demo-fraud-r1", "rewind-sim-other-fraud-r1", "prom"):
        (tdir / f"{name}.json").write_text("[]")
    (bdir / f"{NS}.fraud.json").write_text("{}")
    (bdir / "other.fraud.json").write_text("{}")
    runner = RevisionRunner(NS, backends_dir=bdir, lister=FakeCluster(), targets_dir=tdir)
    removed = runner.clean_stale()
    assert sorted(removed) == [f"{NS}.fraud.json", "rewind-sim-rewind-demo-fraud-r1"]
    assert sorted(p.stem for p in tdir.glob("*.json")) == ["prom", "rewind-sim-other-fraud-r1"]
    assert backends_path(bdir, "other", "fraud").exists()
