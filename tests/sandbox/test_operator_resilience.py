"""The operator end to end when things break under it: Prometheus stopped mid-analysis; the
operator SIGKILLed mid-rollout, while a human decides, while rolling back, or between a
snapshot and the status that records it; a release deleted while the operator is down; a
serving Deployment deleted by someone else."""

from __future__ import annotations

import itertools
import json
import subprocess
from datetime import datetime
from typing import Any

import pytest

from rewind.adapters.base import OwnerRef
from rewind.adapters.workloads import build_deployment, build_snapshot
from rewind.api import ModelReleaseSpec
from tests.conftest import (
    SANDBOX_CLI,
    wait_for,
)
from tests.sandbox.operator_helpers import (
    ANNOTATION_APPROVE,
    ANNOTATION_ROLLBACK,
    BROKEN,
    HEALTHY,
    Recorder,
    Rewind,
    Routes,
    assert_holds,
    canary,
    condition,
    has_annotation,
    history,
    outcomes,
    parse_time,
    policy_manifest,
    release_manifest,
    timeline,
)

pytestmark = pytest.mark.sandbox

NAME = "recsys"
POLICY = "recsys-canary"


def _sandbox(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SANDBOX_CLI), *args], capture_output=True, text=True, timeout=240, check=False
    )


def _at(entry: dict[str, Any]) -> datetime:
    return parse_time(entry["at"])


@pytest.mark.exclusive  # stops the Prometheus every other test queries
def test_prometheus_outage_holds_the_rollout_and_never_rolls_back(rw: Rewind) -> None:
    rw.apply(policy_manifest(POLICY, canary((20, "4s"), (50, "2s"))))
    rw.promote_first_revision(NAME, POLICY)
    rw.set_error_rate(NAME, 2, HEALTHY)

    with Recorder(rw.sandbox, rw.namespace) as rec:
        rw.apply(release_manifest(NAME, POLICY, version=2))
        rw.wait_routes(NAME, {1: 80, 2: 20}, timeout=40)
        restarting_rv = 0
        try:
            stop = _sandbox("stop", "prometheus")
            assert stop.returncode == 0, stop.stderr
            held = rw.wait_status(
                NAME,
                "3 inconclusive measurements and Degraded while Prometheus is down",
                lambda s: s.get("analysis", {}).get("inconclusive", 0) >= 3
                and condition(s, "Degraded").get("reason") == "AnalysisInconclusive",
                timeout=30,
            )
            assert held["phase"] == "Progressing"
            degraded = condition(held, "Degraded")
            assert degraded["status"] == "True"
            assert "unreachable" in degraded["message"], degraded
            last = held["analysis"]["measurements"][-1]
            assert last["verdict"] == "Inconclusive"
            assert "query error (unreachable)" in last["message"], last
            assert last.get("value") is None
            assert held["analysis"].get("failures", 0) == 0
            outage_routes = rw.routes(NAME)
            assert outage_routes is not None
            assert outage_routes.weights.get(2, 0) <= 50
            restarting_rv = rw.current_rv()
        finally:
            up = _sandbox("up")  # first thing, whatever failed: others share this Prometheus
        assert up.returncode == 0, up.stderr[-3000:]
        wait_for("Prometheus healthy again", lambda: _sandbox("status").returncode == 0, 60)
        status = rw.wait_phase(NAME, "Promoted", stable=2, timeout=60)
        rw.wait_routes(NAME, {2: 100})

    # From the first inconclusive round until Prometheus was back, the weights held.
    first_inconclusive = next(
        rv
        for rv, s in rec.statuses(NAME)
        if "Inconclusive" in {m["verdict"] for m in s.get("analysis", {}).get("measurements", [])}
    )
    during = [r for rv, r in rec.routes(NAME) if first_inconclusive <= rv <= restarting_rv]
    assert all(r == outage_routes for r in during), (outage_routes, during)
    phases = rec.phases(NAME)
    assert not {"AwaitingApproval", "RollingBack", "RolledBack", "Failed"} & set(phases), phases
    assert outcomes(status) == {1: "Promoted", 2: "Promoted"}
    assert not timeline(status, "AnalysisFailed")
    assert timeline(status, "AnalysisInconclusive")
    assert condition(status, "Degraded")["status"] == "False"
    assert [r.weights for _, r in rec.routes(NAME)] == [
        {1: 100}, {1: 80, 2: 20}, {1: 50, 2: 50}, {2: 100},
    ]


def test_operator_killed_mid_rollout_resumes_without_double_steps(rw: Rewind) -> None:
    rw.apply(policy_manifest(POLICY, canary((20, "2s"), (40, "2s"), (60, "2s"), (80, "2s"))))
    rw.promote_first_revision(NAME, POLICY)
    rw.set_error_rate(NAME, 2, HEALTHY)

    with Recorder(rw.sandbox, rw.namespace) as rec:
        rw.apply(release_manifest(NAME, POLICY, version=2))
        for weights in ({1: 60, 2: 40}, {1: 20, 2: 80}):
            # Killed as soon as the routes moved, right after the status recording the
            # step (written first) and before the Events and annotation removals.
            rw.wait_routes(NAME, weights, timeout=40)
            rw.operator.kill()
            frozen = rw.status(NAME)

            def still(weights: dict[int, int] = weights, frozen: dict[str, Any] = frozen) -> bool:
                return rw.routes(NAME) == Routes(weights) and rw.status(NAME) == frozen

            assert_holds(f"nothing moving at {weights} while the operator is down", still, 3)
            rw.operator.start()
        status = rw.wait_phase(NAME, "Promoted", stable=2, timeout=40)
        rw.wait_routes(NAME, {2: 100})

    # Every step exactly once, in order, each held for its full pause.
    assert [r.weights for _, r in rec.routes(NAME)] == [
        {1: 100}, {1: 80, 2: 20}, {1: 60, 2: 40}, {1: 40, 2: 60}, {1: 20, 2: 80}, {2: 100},
    ]
    r2 = [e for e in status["timeline"] if e["revision"] == 2]
    assert [e["type"] for e in r2 if e["type"] in ("RevisionCreated", "Promoted")] == [
        "RevisionCreated", "Promoted",
    ]
    steps = [e for e in r2 if e["type"] == "StepStarted"]
    assert [e["message"].split(":")[1].split("(")[0].strip() for e in steps] == [
        f"canary step {i}/4 at {w}%" for i, w in enumerate((20, 40, 60, 80), start=1)
    ]
    for before, after in itertools.pairwise(steps):
        assert (_at(after) - _at(before)).total_seconds() >= 2.0, (before, after)
    promoted = next(e for e in r2 if e["type"] == "Promoted")
    assert (_at(promoted) - _at(steps[-1])).total_seconds() >= 2.0
    assert outcomes(status) == {1: "Promoted", 2: "Promoted"}
    assert all(m["verdict"] == "Pass" for m in status["analysis"]["measurements"])


def test_approval_given_while_the_operator_is_down_is_acted_on_at_restart(rw: Rewind) -> None:
    rw.apply(policy_manifest(POLICY, canary((20, "2s"), (50, "2s")), mode="approval"))
    rw.promote_first_revision(NAME, POLICY)
    rw.set_error_rate(NAME, 2, BROKEN)
    rw.apply(release_manifest(NAME, POLICY, version=2))
    rw.wait_phase(NAME, "AwaitingApproval", candidate=2, timeout=40)

    rw.operator.kill()
    rw.annotate(NAME, ANNOTATION_APPROVE, "true")
    # Nobody acts on it while the operator is down.
    assert rw.status(NAME)["phase"] == "AwaitingApproval"
    assert rw.routes(NAME) == Routes({1: 80, 2: 20})

    rw.operator.start()
    status = rw.wait_phase(NAME, "RolledBack", stable=1, timeout=30)
    rw.wait_routes(NAME, {1: 100})
    assert outcomes(status) == {1: "Promoted", 2: "RolledBack"}
    assert len(timeline(status, "Approved")) == 1
    assert len(timeline(status, "ApprovalRequested")) == 1
    assert "pendingDecision" not in status
    rw.wait_status(NAME, "approve annotation removed",
                   lambda _: not has_annotation(rw.release(NAME), ANNOTATION_APPROVE))


def test_snapshot_orphaned_by_a_crash_before_the_status_write_is_replaced(rw: Rewind) -> None:
    """A reconcile saves revision N's snapshot first and records N in status last. Killed in
    between, it leaves a snapshot nothing refers to; if the spec then changes before the
    operator is back, the next revision is numbered N again with another spec. The orphan
    must be replaced, not block the release forever as an immutable-revision conflict."""
    rw.apply(policy_manifest(POLICY, canary((50, "2s"))))
    rw.promote_first_revision(NAME, POLICY)
    rw.operator.kill()
    # What the killed reconcile left: r2's snapshot and Deployment (spec version 2), built
    # by the operator's own code, and a status that never heard of r2.
    owner = OwnerRef.from_body(rw.release(NAME))
    lost = ModelReleaseSpec.model_validate(release_manifest(NAME, POLICY, version=2)["spec"])
    for leftover in (
        build_snapshot(NAME, rw.namespace, owner, 2, lost),
        build_deployment(NAME, rw.namespace, owner, 2, lost, 1),
    ):
        rw.kubectl("create", "-n", rw.namespace, "-f", "-", input=json.dumps(leftover))
    # Meanwhile the spec moved on to version 3.
    rw.set_error_rate(NAME, 2, HEALTHY)
    rw.apply(release_manifest(NAME, POLICY, version=3))

    rw.operator.start()
    status = rw.wait_phase(NAME, "Promoted", stable=2, timeout=40)
    rw.wait_routes(NAME, {2: 100})
    assert history(status, 2)["modelVersion"] == "3.0.0"
    assert condition(status, "Stalled")["status"] == "False"
    saved = rw.get("controllerrevision", f"{NAME}-r2")
    assert saved["data"]["model"]["version"] == "3.0.0"
    deployment = rw.get("deployment", f"{NAME}-r2")
    assert deployment["metadata"]["annotations"]["rewind.dev/model-version"] == "3.0.0"
    assert deployment["spec"]["template"]["metadata"]["annotations"][
        "rewind.dev/model-digest"
    ] == release_manifest(NAME, POLICY, version=3)["spec"]["model"]["artifactDigest"]
    rw.event(NAME, type="Warning", reason="OrphanSnapshotReplaced", contains=f"{NAME}-r2")


def test_a_release_is_deleted_even_while_the_operator_is_down(rw: Rewind) -> None:
    rw.apply(policy_manifest(POLICY, canary((50, "2s"))))
    rw.promote_first_revision(NAME, POLICY)

    def recorded() -> str | None:
        snapshot = rw.get("controllerrevision", f"{NAME}-r1")
        record = (snapshot["metadata"].get("annotations") or {}).get("rewind.dev/record")
        return str(json.loads(record)["outcome"]) if record else None

    # The record follows the status that says Promoted (written after it, in the same
    # reconcile): a kill straight after Promoted is seen could come first.
    wait_for("r1's record to say Promoted", lambda: recorded() == "Promoted", timeout=20)
    rw.operator.kill()
    # No finalizer: deletion does not wait for the operator; owned objects are collected.
    rw.kubectl("delete", "modelrelease", NAME, "-n", rw.namespace, "--timeout=20s")
    wait_for(
        "owned objects garbage-collected",
        lambda: rw.replicas(NAME, 1) is None and rw.routes(NAME) is None,
        timeout=30,
    )
    # The snapshot is not owned: it keeps r1's record for a release applied again.
    snapshot = rw.get("controllerrevision", f"{NAME}-r1")
    assert json.loads(snapshot["metadata"]["annotations"]["rewind.dev/record"])[
        "outcome"] == "Promoted"


def test_owned_objects_deleted_by_hand_are_recreated(rw: Rewind) -> None:
    """Drift: someone deletes the serving Deployment and the Services (the routes then name
    a Service that does not exist: every request fails). The Deployment comes back from its
    snapshot, the revision's Service with it, and the in-cluster name on the stable."""
    rw.apply(policy_manifest(POLICY, canary((50, "2s"))))
    rw.promote_first_revision(NAME, POLICY)
    before = rw.get("deployment", f"{NAME}-r1")
    rw.kubectl("delete", "service", NAME, f"{NAME}-r1", "-n", rw.namespace)
    rw.kubectl("delete", "deployment", f"{NAME}-r1", "-n", rw.namespace)

    # The Deployment's DELETED event wakes the release: no waiting for the idle resync.
    def recreated() -> dict[str, Any] | None:
        result = rw.kubectl("get", "deployment", f"{NAME}-r1", "-n", rw.namespace, "-o",
                            "json", check=False)
        if result.returncode != 0:
            return None
        found: dict[str, Any] = json.loads(result.stdout)
        return found if found["metadata"]["uid"] != before["metadata"]["uid"] else None

    after = wait_for("r1's Deployment re-created", recreated, timeout=20)
    assert after["spec"]["template"] == before["spec"]["template"]
    assert after["spec"]["replicas"] == 1
    rw.wait_routes(NAME, {1: 100}, timeout=20)
    wait_for("r1's Service re-created", lambda: rw.kubectl(
        "get", "service", f"{NAME}-r1", "-n", rw.namespace, check=False).returncode == 0,
        timeout=20)
    wait_for("the in-cluster name back on r1", lambda: rw.in_cluster_revision(NAME) == 1,
             timeout=20)
    assert rw.status(NAME)["phase"] == "Promoted"


def test_operator_killed_while_rolling_back_finishes_the_rollback(rw: Rewind) -> None:
    rw.apply(policy_manifest(POLICY, canary((50, "2s")), keep_previous_warm="1s"))
    rw.promote_first_revision(NAME, POLICY)
    rw.set_error_rate(NAME, 2, HEALTHY)
    rw.apply(release_manifest(NAME, POLICY, version=2))
    rw.wait_phase(NAME, "Promoted", stable=2, timeout=40)
    rw.wait_replicas(NAME, 1, 0)  # r1 retired: a rollback to it must wait for it

    rw.kill_operator_when(
        NAME, "phase RollingBack", lambda s: s.get("phase") == "RollingBack",
        after=lambda: rw.annotate(NAME, ANNOTATION_ROLLBACK, "wrong feature scaling"),
    )
    # Killed right after the decision was stored (the status is written before the
    # workloads it implies): r1 may not even be scaling yet. Traffic stays where it was.
    assert_holds(
        "RollingBack, traffic on r2, while the operator is down",
        lambda: rw.routes(NAME) == Routes({2: 100})
        and rw.status(NAME)["phase"] == "RollingBack",
        seconds=2,
    )

    rw.operator.start()
    status = rw.wait_phase(NAME, "RolledBack", stable=1, timeout=30)
    rw.wait_routes(NAME, {1: 100})
    assert outcomes(status) == {1: "Promoted", 2: "RolledBack"}
    assert len(timeline(status, "BreakGlassRollback")) == 1
    assert len(timeline(status, "RolledBack")) == 1
    rw.wait_status(NAME, "break-glass annotation removed",
                   lambda _: not has_annotation(rw.release(NAME), ANNOTATION_ROLLBACK))
