"""Rollback drills (issue 14), against the real API server and Prometheus.

r2 is Promoted and r1 (the revision a rollback would go to now) is retired to zero. A drill
brings r1 back from its snapshot, optionally mirrors live traffic to it and analyses it,
times it and scales it back, and users stay on r2 throughout. A failed drill names what a
real rollback would have hit; a real rollback (or a new release) cancels a drill at once,
and no drill runs while a rollout is in flight. The operator's own /metrics (what the chart's
drill alerts read) follow each verdict.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import wait_for
from tests.sandbox.operator_helpers import (
    ANNOTATION_ROLLBACK,
    BROKEN,
    HEALTHY,
    Recorder,
    Rewind,
    assert_holds,
    canary,
    parse_time,
    policy_manifest,
    release_manifest,
    timeline,
    workload,
)

pytestmark = pytest.mark.sandbox

NAME, POLICY = "fraud", "p"
DRILL = "rewind.dev/drill"


def drill_policy(*, mirror: int = 0, timeout: str = "30s", every: str | None = None
                 ) -> dict[str, Any]:
    policy = policy_manifest(POLICY, canary((50, "2s")), keep_previous_warm="1s")
    drill: dict[str, Any] = {"timeout": timeout, "mirrorPercent": mirror}
    if every is not None:
        drill["every"] = every
    policy["spec"]["drill"] = drill
    return policy


def retired_r1(rw: Rewind, policy: dict[str, Any]) -> None:
    """r2 Promoted, r1 retired (no replicas): the revision a rollback would go to."""
    rw.apply(policy)
    rw.set_error_rate(NAME, 2, HEALTHY)
    rw.promote_first_revision(NAME, POLICY)
    rw.apply(release_manifest(NAME, POLICY, version=2))
    rw.wait_phase(NAME, "Promoted", stable=2, timeout=60)
    rw.wait_routes(NAME, {2: 100})
    rw.wait_replicas(NAME, 1, 0, timeout=30)


def last_drill(rw: Rewind, timeout: float = 60) -> dict[str, Any]:
    status = rw.wait_status(NAME, "the drill's verdict", lambda s: bool(
        s.get("lastDrill")) and not s.get("drill"), timeout=timeout)
    result: dict[str, Any] = status["lastDrill"]
    return result


def drill_metrics(rw: Rewind, port: int, **want: float) -> dict[str, float]:
    """Wait until the operator's /metrics show ``want`` (``name{labels}`` -> value, as
    ``Rewind.operator_metrics`` keys them); returns every sample of the namespace."""
    wait_for(f"operator metrics {want}", lambda: all(
        rw.operator_metrics(port).get(k) == v for k, v in want.items()), timeout=20)
    return rw.operator_metrics(port)


def users_stayed_on_r2(rec: Recorder) -> None:
    routes = [r for _, r in rec.routes(NAME)]
    assert routes and all(r.weights == {2: 100} for r in routes), routes


def test_drill_with_mirror_and_analysis_passes_and_scales_back(rw: Rewind) -> None:
    port = rw.restart_operator_with_metrics()
    retired_r1(rw, drill_policy(mirror=20))
    rw.set_error_rate(NAME, 1, HEALTHY)  # the analysis of r1 reads its gauge
    with Recorder(rw.sandbox, rw.namespace) as rec:
        rw.annotate(NAME, DRILL, "true")
        result = last_drill(rw)
        rw.wait_replicas(NAME, 1, 0, timeout=30)  # scaled back to where it was
        rw.wait_routes(NAME, {2: 100})
        wait_for("the mirror removed", lambda: rw.routes(NAME) is not None
                 and rw.routes(NAME).mirror is None, timeout=20)  # type: ignore[union-attr]
    assert result["verdict"] == "Passed", result
    assert result["target"] == 1 and result["failure"] == ""
    assert result["timeToReadySeconds"] >= 0
    assert result["timeToPassingAnalysisSeconds"] >= result["timeToReadySeconds"]
    users_stayed_on_r2(rec)
    assert any(r.mirror == 1 and r.mirror_percent == 20 for _, r in rec.routes(NAME))
    scaled = [s.obj["spec"].get("replicas") for s in rec.versions("deployments",
                                                                   workload(NAME, 1))]
    assert 1 in scaled, scaled  # it really was brought up from its snapshot
    status = rw.status(NAME)
    assert status["phase"] == "Promoted" and status["stableRevision"] == 2
    assert status["lastSuccessfulDrillAt"] == result["finishedAt"]
    assert not timeline(status, "RollbackStarted")
    rw.event(NAME, type="Normal", reason="DrillPassed", contains="r1")
    # The operator's metrics: what RewindNoSuccessfulDrill and RewindLastDrillFailed read.
    release = f'release="{NAME}"'
    metrics = drill_metrics(rw, port, **{
        f'rewind_drills_total{{failure="",{release},verdict="Passed"}}': 1,
        f"rewind_drill_last_failed{{{release}}}": 0,
        f"rewind_drill_last_success_timestamp_seconds{{{release}}}":
            parse_time(result["finishedAt"]).timestamp(),
    })
    assert metrics[f"rewind_drill_time_to_ready_seconds{{{release}}}"] == pytest.approx(
        result["timeToReadySeconds"])
    assert metrics[f"rewind_drill_time_to_passing_analysis_seconds{{{release}}}"] == \
        pytest.approx(result["timeToPassingAnalysisSeconds"])


def test_snapshot_missing(rw: Rewind) -> None:
    port = rw.restart_operator_with_metrics()
    retired_r1(rw, drill_policy())
    rw.kubectl("delete", "controllerrevision", workload(NAME, 1), "-n", rw.namespace)
    rw.annotate(NAME, DRILL, "true")
    result = last_drill(rw)
    assert result["verdict"] == "Failed" and result["failure"] == "SnapshotMissing", result
    assert "could not be re-created" in result["message"]
    assert rw.replicas(NAME, 1) == 0
    rw.event(NAME, type="Warning", reason="DrillFailed", contains="SnapshotMissing")
    release = f'release="{NAME}"'
    drill_metrics(rw, port, **{
        f'rewind_drills_total{{failure="SnapshotMissing",{release},verdict="Failed"}}': 1,
        f"rewind_drill_last_failed{{{release}}}": 1,
        f"rewind_drill_last_success_timestamp_seconds{{{release}}}": 0,  # never passed
    })


def test_pods_never_ready(rw: Rewind) -> None:
    retired_r1(rw, drill_policy(timeout="8s"))
    wait_for("r1's pod gone", lambda: not rw.get(
        "pods", "-l", "rewind.dev/revision=1")["items"], timeout=30)
    # The namespace may run no more pods than r2's: r1's pod is refused (as a quota or a
    # lost node pool would in a real rollback).
    quota = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "pods"},
             "spec": {"hard": {"pods": "1"}}}
    rw.apply(quota)
    wait_for("the quota controller to count what runs", lambda: rw.get(
        "resourcequota", "pods").get("status", {}).get("used", {}).get("pods") == "1",
        timeout=30)
    rw.annotate(NAME, DRILL, "true")
    result = last_drill(rw)
    assert result["verdict"] == "Failed" and result["failure"] == "PodsNeverReady", result
    assert "was not Available within 8s" in result["message"]
    rw.wait_replicas(NAME, 1, 0, timeout=30)


def test_analysis_failing_on_mirrored_traffic(rw: Rewind) -> None:
    retired_r1(rw, drill_policy(mirror=10))
    rw.set_error_rate(NAME, 1, BROKEN)
    rw.annotate(NAME, DRILL, "true")
    result = last_drill(rw)
    assert result["verdict"] == "Failed" and result["failure"] == "AnalysisFailing", result
    assert "error-rate" in result["message"]
    status = rw.status(NAME)
    assert status["phase"] == "Promoted" and not timeline(status, "RollbackStarted")
    rw.wait_routes(NAME, {2: 100})


def test_a_real_rollback_cancels_a_drill_at_once(rw: Rewind) -> None:
    # No gauge for r1: its analysis has no data, so the drill stays in progress (Analysing).
    retired_r1(rw, drill_policy(mirror=10, timeout="5m"))
    rw.annotate(NAME, DRILL, "true")
    rw.wait_status(NAME, "the drill analysing", lambda s: (s.get("drill") or {}).get(
        "phase") == "Analysing", timeout=40)
    rw.annotate(NAME, ANNOTATION_ROLLBACK, "r2 is wrong")
    status = rw.wait_status(NAME, "the drill cancelled", lambda s: (s.get("lastDrill") or {}).get(
        "verdict") == "Cancelled", timeout=20)
    assert not status.get("drill")
    assert "a rollback started" in status["lastDrill"]["message"]
    assert status["phase"] in ("RollingBack", "RolledBack") and status["stableRevision"] == 1
    done = rw.wait_phase(NAME, "RolledBack", stable=1, timeout=40)
    rw.wait_routes(NAME, {1: 100})
    assert len(timeline(done, "RollbackStarted")) == 1


def test_scheduled_drill(rw: Rewind) -> None:
    retired_r1(rw, drill_policy(every="6s"))
    result = last_drill(rw, timeout=60)
    assert result["trigger"] == "schedule" and result["verdict"] == "Passed", result


def test_a_new_release_cancels_a_drill_and_none_runs_until_it_is_promoted(rw: Rewind) -> None:
    # No gauge for r1: its analysis has no data, so the drill stays in progress (Analysing).
    retired_r1(rw, drill_policy(mirror=10, timeout="5m"))
    rw.annotate(NAME, DRILL, "true")
    rw.wait_status(NAME, "the drill analysing", lambda s: (s.get("drill") or {}).get(
        "phase") == "Analysing", timeout=40)
    # Drills now also run on a schedule, due at once: only the rollout may hold them back.
    policy = drill_policy(mirror=10, timeout="5m", every="1s")
    policy["spec"]["strategy"] = canary((50, "10s"))
    rw.apply(policy)
    rw.set_error_rate(NAME, 3, HEALTHY)
    rw.apply(release_manifest(NAME, POLICY, version=3))
    status = rw.wait_status(NAME, "the drill cancelled", lambda s: (s.get("lastDrill") or {}).get(
        "verdict") == "Cancelled", timeout=20)
    cancelled = status["lastDrill"]
    assert cancelled["target"] == 1, cancelled
    assert "never runs while a rollout" in cancelled["message"], cancelled
    rw.wait_replicas(NAME, 1, 0, timeout=30)  # scaled back to where it was
    rw.wait_routes(NAME, {2: 50, 3: 50})

    # While r3 rolls out: no drill, neither scheduled nor asked for.
    rw.annotate(NAME, DRILL, "true-again")
    rw.wait_status(NAME, "the drill request ignored", lambda s: any(
        "never runs while a rollout" in e["message"] for e in timeline(s, "ActionIgnored")),
        timeout=20)

    def no_drill() -> bool:
        s = rw.status(NAME)
        return s["phase"] in ("Progressing", "Paused") and not s.get("drill") \
            and s["lastDrill"] == cancelled

    assert_holds("no drill while r3 rolls out", no_drill, seconds=4)

    # Promoted: the schedule drills the new rollback target, r2.
    rw.wait_phase(NAME, "Promoted", stable=3, timeout=60)
    result = rw.wait_status(NAME, "the scheduled drill of r2", lambda s: (
        s.get("lastDrill") or {}).get("target") == 2 and not s.get("drill"), timeout=60
    )["lastDrill"]
    assert result["trigger"] == "schedule" and result["verdict"] == "Passed", result
    assert not timeline(rw.status(NAME), "RollbackStarted")
