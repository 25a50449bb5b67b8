"""The operator end to end, lifecycle edges the engine's unit tests cover: a spec change
mid-rollout, a candidate that never becomes Available (progressDeadline), a query with no
data under ``noData: Fail`` (and the default that holds), blue-green with a manual switch,
retrying a rolled-back revision, and a shadow that goes on to a canary. Real API server,
real Prometheus, the real `rewind-operator` process; assertions read what the API server
stores."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import wait_for
from tests.sandbox.operator_helpers import (
    BROKEN,
    HEALTHY,
    METRIC,
    Recorder,
    Rewind,
    Routes,
    assert_holds,
    blue_green,
    canary,
    condition,
    has_annotation,
    history,
    outcomes,
    parse_time,
    policy_manifest,
    release_manifest,
    shadow,
    timeline,
    workload,
)

pytestmark = pytest.mark.sandbox

NAME = "scorer"
POLICY = "scorer-policy"
PROMOTE = "rewind.dev/promote"
RETRY = "rewind.dev/retry"


def _with_no_data(policy: dict[str, Any], verdict: str) -> dict[str, Any]:
    policy["spec"]["analysis"]["noData"] = verdict
    return policy


def _unschedulable(release: dict[str, Any]) -> dict[str, Any]:
    """A revision no sandbox node can run: kwok nodes have 32 CPUs, so a pod asking for a
    thousand stays Pending (Unschedulable) and its Deployment never becomes Available."""
    release["spec"]["serving"]["resources"] = {"requests": {"cpu": "1000"}}
    return release


def _revision_entries(status: dict[str, Any], type: str, revision: int) -> list[dict[str, Any]]:
    return [e for e in timeline(status, type) if e["revision"] == revision]


def test_a_spec_change_mid_rollout_supersedes_the_candidate_and_restarts_from_stable(
    rw: Rewind,
) -> None:
    # A manual gate holds r2 at 20% for as long as the test needs.
    rw.apply(policy_manifest(POLICY, canary((20, None), (50, "2s"))))
    rw.promote_first_revision(NAME, POLICY)
    rw.set_error_rate(NAME, 2, HEALTHY)
    rw.set_error_rate(NAME, 3, HEALTHY)

    with Recorder(rw.sandbox, rw.namespace) as rec:
        rw.apply(release_manifest(NAME, POLICY, version=2))
        rw.wait_phase(NAME, "Paused", candidate=2, timeout=40)
        rw.wait_routes(NAME, {1: 80, 2: 20})

        # Git moves on to v3 while r2 is still at its gate.
        rw.apply(release_manifest(NAME, POLICY, version=3))
        paused = rw.wait_phase(NAME, "Paused", candidate=3, timeout=40)
        rw.wait_routes(NAME, {1: 80, 3: 20})
        rw.wait_replicas(NAME, 2, 0)  # the superseded candidate is scaled away at once
        rw.annotate(NAME, PROMOTE, "true")
        status = rw.wait_phase(NAME, "Promoted", stable=3, timeout=30)
        rw.wait_routes(NAME, {3: 100})

    # r3 started from stable r1 (traffic back to r1 first), and r2 never got users again.
    routes = [r.weights for _, r in rec.routes(NAME)]
    assert routes == [
        {1: 100}, {1: 80, 2: 20}, {1: 100}, {1: 80, 3: 20}, {1: 50, 3: 50}, {3: 100},
    ], routes
    first_r3 = next(i for i, w in enumerate(routes) if 3 in w)
    assert all(2 not in w for w in routes[first_r3:]), routes
    # Nor did any stored status name r2 as the candidate once r3 was.
    statuses = [s for _, s in rec.statuses(NAME)]
    first_r3_status = next(i for i, s in enumerate(statuses) if s.get("candidateRevision") == 3)
    assert all(s.get("candidateRevision") != 2 for s in statuses[first_r3_status:])
    # r2's Deployment went to zero and stayed there.
    r2_replicas = [s.obj["spec"]["replicas"] for s in rec.versions("deployments",
                                                                    workload(NAME, 2))]
    assert 0 in r2_replicas, r2_replicas
    assert all(n == 0 for n in r2_replicas[r2_replicas.index(0):]), r2_replicas
    assert rw.replicas(NAME, 2) == 0

    assert paused["stableRevision"] == 1 and paused["currentRevision"] == 3
    assert outcomes(status) == {1: "Promoted", 2: "Superseded", 3: "Promoted"}
    assert "superseded by r3" in history(status, 2)["reason"]
    superseded = _revision_entries(status, "Superseded", 2)
    assert len(superseded) == 1 and "r2 superseded by r3" in superseded[0]["message"]
    created = _revision_entries(status, "RevisionCreated", 3)
    assert len(created) == 1 and "against stable r1" in created[0]["message"]
    # Superseded is recorded before r3 is created (same reconcile, in that order).
    types = [(e["type"], e["revision"]) for e in timeline(status)]
    assert types.index(("Superseded", 2)) < types.index(("RevisionCreated", 3)), types
    rw.event(NAME, type="Normal", reason="Superseded", contains="r2 superseded by r3")


def test_a_candidate_that_never_becomes_available_fails_at_the_progress_deadline(
    rw: Rewind,
) -> None:
    # r1 comes up under a generous deadline; then the policy tightens it to 4s.
    rw.apply(policy_manifest(POLICY, canary((50, "2s")), progress_deadline="60s"))
    rw.promote_first_revision(NAME, POLICY)
    rw.apply(policy_manifest(POLICY, canary((50, "2s")), progress_deadline="4s"))
    rw.set_error_rate(NAME, 2, HEALTHY)

    with Recorder(rw.sandbox, rw.namespace) as rec:
        rw.apply(_unschedulable(release_manifest(NAME, POLICY, version=2)))
        status = rw.wait_phase(NAME, "Failed", stable=1, timeout=30)
        rw.wait_replicas(NAME, 2, 0)

    # It waited for r2 (Progressing, stage 0) before giving up on it.
    waiting = [s for _, s in rec.statuses(NAME) if s.get("candidateRevision") == 2
               and s.get("phase") == "Progressing"]
    assert waiting and all(s.get("currentStep") in (0, None) for s in waiting), waiting
    assert any("waiting to become Available" in s.get("message", "") for s in waiting)
    # Why: the scheduler found no node for r2's pod.
    def refused() -> bool:
        items = rw.get("events", "--field-selector", "reason=FailedScheduling")["items"]
        return any(e["involvedObject"]["name"].startswith(f"{workload(NAME, 2)}-")
                   and "Insufficient cpu" in e["message"] for e in items)

    wait_for("a FailedScheduling Event for r2's pod", refused, timeout=20)
    # r2 never had a ready replica and never any traffic: users stayed on r1 throughout.
    assert rec.first_available(NAME, 2) is None
    assert all(r.weights == {1: 100} for _, r in rec.routes(NAME)), rec.routes(NAME)
    assert rw.routes(NAME) == Routes({1: 100})
    assert rw.replicas(NAME, 1) == 1

    entry = history(status, 2)
    assert entry["outcome"] == "Failed"
    assert "not Available within progressDeadline 4s" in entry["reason"], entry
    assert "progressDeadline 4s" in status["message"]
    assert status["weights"] == {"stable": 100, "candidate": 0}
    assert outcomes(status) == {1: "Promoted", 2: "Failed"}
    # It failed no earlier than the deadline after r2 was created (second precision).
    created_at = parse_time(_revision_entries(status, "RevisionCreated", 2)[0]["at"])
    failed = _revision_entries(status, "Failed", 2)
    assert len(failed) == 1 and "progressDeadline" in failed[0]["message"]
    waited = (parse_time(failed[0]["at"]) - created_at).total_seconds()
    assert waited >= 4.0, waited
    stalled = condition(status, "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "Failed"
    assert f"{RETRY}=true" in stalled["message"]
    assert condition(status, "Degraded")["status"] == "True"
    assert condition(status, "Ready")["status"] == "False"
    rw.event(NAME, type="Warning", reason="Failed", contains="progressDeadline 4s")


def test_no_data_fail_counts_a_query_without_samples_as_a_failure(rw: Rewind) -> None:
    rw.apply(_with_no_data(policy_manifest(POLICY, canary((20, "2s"), (50, "2s"))), "Fail"))
    rw.promote_first_revision(NAME, POLICY)
    # r2's gauge is never set: the analysis query has no samples for it.
    query = f'max({METRIC}{{namespace="{rw.namespace}", workload="{workload(NAME, 2)}"}})'

    with Recorder(rw.sandbox, rw.namespace, kinds=("virtualservices", "modelreleases")) as rec:
        rw.apply(release_manifest(NAME, POLICY, version=2))
        status = rw.wait_phase(NAME, "RolledBack", stable=1, timeout=40)
        rw.wait_routes(NAME, {1: 100})
    assert rw.prometheus_value(query) is None

    assert [r.weights for _, r in rec.routes(NAME)] == [{1: 100}, {1: 80, 2: 20}, {1: 100}]
    assert outcomes(status) == {1: "Promoted", 2: "RolledBack"}
    failed = [m for m in status["analysis"]["measurements"] if m["verdict"] == "Fail"]
    assert failed and failed[-1]["revision"] == 2, status["analysis"]
    assert failed[-1].get("value") is None
    assert "no data (noData: Fail)" in failed[-1]["message"]
    assert "no data" in history(status, 2)["reason"]
    assert timeline(status, "RollbackStarted")
    assert condition(status, "Degraded")["reason"] == "RolledBack"


def test_no_data_inconclusive_holds_without_rolling_back(rw: Rewind) -> None:
    """The control for the test above: the same missing data under the default policy."""
    rw.apply(_with_no_data(policy_manifest(POLICY, canary((20, "2s"), (50, "2s"))),
                           "Inconclusive"))
    rw.promote_first_revision(NAME, POLICY)
    rw.apply(release_manifest(NAME, POLICY, version=2))
    held = rw.wait_status(
        NAME, "r2 analysis inconclusive",
        lambda s: condition(s, "Degraded").get("reason") == "AnalysisInconclusive",
        timeout=40,
    )
    assert held["candidateRevision"] == 2
    # Twice the 2s pause: no step advance, no rollback, traffic holds at the first step.
    assert_holds(
        "Progressing at 80/20",
        lambda: rw.routes(NAME) == Routes({1: 80, 2: 20})
        and rw.status(NAME)["phase"] == "Progressing",
        seconds=4,
    )
    status = rw.status(NAME)
    assert outcomes(status) == {1: "Promoted", 2: "Progressing"}
    assert status["analysis"].get("failures", 0) == 0
    verdicts = {m["verdict"] for m in status["analysis"]["measurements"]}
    assert verdicts == {"Inconclusive"}, status["analysis"]
    assert "no data (noData: Inconclusive)" in condition(status, "Degraded")["message"]
    assert not timeline(status, "RollbackStarted")


def test_blue_green_manual_switch_holds_at_preview_until_promoted(rw: Rewind) -> None:
    strategy = blue_green(preview="2s", post_switch="2s")
    strategy["blueGreen"]["autoSwitch"] = False
    rw.apply(policy_manifest(POLICY, strategy))
    rw.promote_first_revision(NAME, POLICY)
    rw.set_error_rate(NAME, 2, HEALTHY)

    with Recorder(rw.sandbox, rw.namespace) as rec:
        rw.apply(release_manifest(NAME, POLICY, version=2))
        paused = rw.wait_phase(NAME, "Paused", candidate=2, timeout=40)
        assert "manual switch" in paused["message"], paused["message"]
        assert f"{PROMOTE}=true" in paused["message"], paused["message"]
        assert paused["weights"] == {"stable": 100, "candidate": 0}
        rw.wait_replicas(NAME, 2, 1)
        # Well past the 2s preview: no switch without a human.
        assert_holds(
            "Paused with all users on r1",
            lambda: rw.routes(NAME) == Routes({1: 100})
            and rw.status(NAME)["phase"] == "Paused",
            seconds=4,
        )
        rw.annotate(NAME, PROMOTE, "true")
        rw.wait_routes(NAME, {2: 100}, timeout=10)
        status = rw.wait_phase(NAME, "Promoted", stable=2, timeout=30)

    # One write from all-old to all-new: no weights in between, never a mirror.
    routes = rec.routes(NAME)
    assert [r.weights for _, r in routes] == [{1: 100}, {2: 100}], routes
    assert all(r.mirror is None for _, r in routes)
    # The switch came after the promote was stored (the annotation, not a timer).
    promote_rv = next(
        s.rv for s in rec.versions("modelreleases", NAME)
        if has_annotation(s.obj, PROMOTE)
    )
    assert routes[1][0] > promote_rv, (routes, promote_rv)
    phases = rec.phases(NAME)
    # Promoting: the promotion's own route write (the in-cluster name moves to r2), stored
    # until it is read back, unless the read-back came in the same reconcile.
    assert phases[phases.index("Paused"):] in (
        ["Paused", "Progressing", "Promoted"],
        ["Paused", "Progressing", "Promoting", "Promoted"],
    ), phases
    # Callers that bypass the routes stayed on r1 until the promotion, not the switch.
    assert rec.in_cluster_revisions(NAME) == [1, 2]
    steps = [e["message"] for e in _revision_entries(status, "StepStarted", 2)]
    assert len(steps) == 3, steps
    assert "preview" in steps[0] and "manual switch" in steps[1] and "post-switch" in steps[2]
    requested = timeline(status, "PromoteRequested")
    assert requested and "manual switch" in requested[-1]["message"]
    assert outcomes(status) == {1: "Promoted", 2: "Promoted"}
    assert rw.replicas(NAME, 1) == 1  # the old colour stays warm for a switch-back
    assert not has_annotation(rw.release(NAME), PROMOTE)


def test_retry_starts_the_rolled_back_revision_again(rw: Rewind) -> None:
    rw.apply(policy_manifest(POLICY, canary((50, "2s")), scale_down_delay="2s"))
    rw.promote_first_revision(NAME, POLICY)
    rw.set_error_rate(NAME, 2, BROKEN)
    rw.apply(release_manifest(NAME, POLICY, version=2))
    rolled_back = rw.wait_phase(NAME, "RolledBack", stable=1, timeout=40)
    assert outcomes(rolled_back) == {1: "Promoted", 2: "RolledBack"}
    rw.wait_replicas(NAME, 2, 0, timeout=20)
    rw.wait_routes(NAME, {1: 100})

    # The cause is fixed outside the spec (a dependency, a feature store); try r2 again.
    rw.set_error_rate(NAME, 2, HEALTHY)
    with Recorder(rw.sandbox, rw.namespace) as rec:
        rw.annotate(NAME, RETRY, "true")
        status = rw.wait_phase(NAME, "Promoted", stable=2, timeout=40)
        rw.wait_routes(NAME, {2: 100})

    # The same revision number went through every step again, from stable r1.
    assert [r.weights for _, r in rec.routes(NAME)] == [{1: 100}, {1: 50, 2: 50}, {2: 100}]
    assert rec.first_available(NAME, 2) is not None  # brought back up from zero
    assert rw.replicas(NAME, 2) == 1
    assert sorted(h["revision"] for h in status["history"]) == [1, 2]
    assert outcomes(status) == {1: "Promoted", 2: "Promoted"}
    assert "error-rate" not in history(status, 2)["reason"]  # the old verdict is cleared
    assert status["currentRevision"] == 2
    retried = _revision_entries(status, "Retry", 2)
    assert len(retried) == 1 and "r2 starts again against stable r1" in retried[0]["message"]
    assert len(_revision_entries(status, "RevisionCreated", 2)) == 1  # not a new revision
    rolled = _revision_entries(status, "RolledBack", 2)
    assert rolled and parse_time(rolled[-1]["at"]) <= parse_time(retried[0]["at"])
    measured = [m for m in status["analysis"]["measurements"] if m["revision"] == 2]
    assert measured and all(m["verdict"] == "Pass" for m in measured), measured
    assert not has_annotation(rw.release(NAME), RETRY)
    rw.event(NAME, type="Normal", reason="Retry", contains="r2 starts again")


def test_a_passing_shadow_goes_on_to_a_canary(rw: Rewind) -> None:
    """Shadow with onSuccess Canary: mirrored only while the shadow runs, then stepped live
    weights, then promoted; the mirror is gone before any user reaches the candidate."""
    strategy = shadow(mirror_percent=40, duration="3s")
    strategy["shadow"]["onSuccess"] = {"action": "Canary",
                                       "canary": canary((30, "2s"))["canary"]}
    rw.apply(policy_manifest(POLICY, strategy))
    rw.promote_first_revision(NAME, POLICY)
    rw.set_error_rate(NAME, 2, HEALTHY)

    with Recorder(rw.sandbox, rw.namespace) as rec:
        rw.apply(release_manifest(NAME, POLICY, version=2))
        status = rw.wait_phase(NAME, "Promoted", stable=2, timeout=60)
        rw.wait_routes(NAME, {2: 100})

    routes = [r for _, r in rec.routes(NAME)]
    assert [(r.weights, r.mirror, r.mirror_percent) for r in routes] == [
        ({1: 100}, None, 0.0),
        ({1: 100}, 2, 40.0),   # shadow: a copy of 40% of requests, no user answered by r2
        ({1: 70, 2: 30}, None, 0.0),  # canary step: live weight, mirror removed
        ({2: 100}, None, 0.0),
    ], routes
    # The shadow's analysis passed before any live weight, in the status too.
    statuses = [s for _, s in rec.statuses(NAME)]
    first_live = next(i for i, s in enumerate(statuses)
                      if s.get("weights", {}).get("candidate", 0) > 0)
    assert any(s.get("mirrorPercent") == 40 for s in statuses[:first_live])
    assert all(not s.get("mirrorPercent") for s in statuses[first_live:])
    # The shadow stage was analysed (and passed) on mirrored traffic before the canary.
    shadow_passes = [m for m in statuses[first_live - 1].get("analysis", {}).get(
        "measurements", []) if m["revision"] == 2 and m["verdict"] == "Pass"]
    assert shadow_passes, statuses[first_live - 1].get("analysis")
    stages = [(e["type"], e["message"]) for e in timeline(status) if e["revision"] == 2]
    assert [t for t, _ in stages] == ["RevisionCreated", "StepStarted", "StepStarted",
                                      "Promoted"], stages
    assert "shadow mirroring 40%" in stages[1][1] and "canary step 1/1 at 30%" in stages[2][1]
    assert outcomes(status) == {1: "Promoted", 2: "Promoted"}
