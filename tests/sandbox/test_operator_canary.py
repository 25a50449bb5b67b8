"""The operator end to end, canary strategy: promotion, automatic and approved rollbacks,
rejection, approval timeout, manual gates, break glass. Real API server, real Prometheus,
the real `rewind-operator` process; assertions read what the API server stores."""

from __future__ import annotations

from typing import Any

import pytest

from tests.sandbox.operator_helpers import (
    ANNOTATION_APPROVE,
    ANNOTATION_REJECT,
    ANNOTATION_ROLLBACK,
    BROKEN,
    HEALTHY,
    THRESHOLD,
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

NAME = "fraud"
POLICY = "fraud-canary"


def test_healthy_canary_is_promoted_through_every_step(rw: Rewind) -> None:
    rw.apply(policy_manifest(POLICY, canary((20, "2s"), (50, "2s")), keep_previous_warm="3s"))
    first = rw.promote_first_revision(NAME, POLICY)
    assert outcomes(first) == {1: "Promoted"}
    assert first["weights"] == {"stable": 100, "candidate": 0}

    rw.set_error_rate(NAME, 2, HEALTHY)
    with Recorder(rw.sandbox, rw.namespace) as rec:
        rw.apply(release_manifest(NAME, POLICY, version=2))
        status = rw.wait_phase(NAME, "Promoted", stable=2, timeout=40)
        rw.wait_routes(NAME, {2: 100})
        # keepPreviousWarm (3s) later r1 is retired: scaled to zero, record kept for rollbacks.
        rw.wait_replicas(NAME, 1, 0, timeout=20)

    # Every step, in order, once: 100/0 -> 80/20 -> 50/50 -> 0/100.
    assert [r.weights for _, r in rec.routes(NAME)] == [
        {1: 100}, {1: 80, 2: 20}, {1: 50, 2: 50}, {2: 100},
    ]
    assert all(r.mirror is None for _, r in rec.routes(NAME))
    # Callers that bypass the routes (no sidecar, a NodePort, a route of their own to the
    # in-cluster name) stayed on r1 through every step, then moved to r2 with the promotion;
    # the routes name each revision's Service, so there is no DestinationRule.
    assert rec.in_cluster_revisions(NAME) == [1, 2]
    assert rw.in_cluster_revision(NAME) == 2
    assert rw.destination_rules() == []
    steps = [e for e in timeline(status, "StepStarted") if e["revision"] == 2]
    assert [e["message"].split(":")[1].split("(")[0].strip() for e in steps] == [
        "canary step 1/2 at 20%", "canary step 2/2 at 50%",
    ]
    assert status["currentRevision"] == 2
    assert status.get("candidateRevision", 0) == 0
    assert status["weights"] == {"stable": 100, "candidate": 0}
    assert condition(status, "Ready")["status"] == "True"
    assert history(status, 2)["outcome"] == "Promoted"
    assert history(status, 2)["modelVersion"] == "2.0.0"
    measured = [m for m in status["analysis"]["measurements"] if m["revision"] == 2]
    assert measured and all(m["verdict"] == "Pass" and m["value"] == HEALTHY for m in measured)
    rw.event(NAME, type="Normal", reason="Promoted", contains="r2 promoted")

    status = rw.wait_status(
        NAME, "r1 Retired", lambda s: history(s, 1)["outcome"] == "Retired", timeout=20
    )
    assert rw.replicas(NAME, 2) == 1
    # Scaled down no earlier than keepPreviousWarm after it stopped serving (second precision).
    replaced_at = parse_time(history(status, 1)["finishedAt"])
    scaled_at = rw.scaled_to_zero_at(NAME, 1)
    assert (scaled_at - replaced_at).total_seconds() >= 2.0, (replaced_at, scaled_at)
    assert outcomes(status) == {1: "Retired", 2: "Promoted"}


def test_breaching_canary_rolls_back_automatically(rw: Rewind) -> None:
    port = rw.restart_operator_with_metrics()
    rw.apply(policy_manifest(POLICY, canary((20, "2s"), (50, "2s")), scale_down_delay="3s"))
    rw.promote_first_revision(NAME, POLICY)

    rw.set_error_rate(NAME, 2, BROKEN)
    with Recorder(rw.sandbox, rw.namespace) as rec:
        rw.apply(release_manifest(NAME, POLICY, version=2))
        status = rw.wait_phase(NAME, "RolledBack", stable=1, timeout=40)
        rw.wait_routes(NAME, {1: 100})
        # The failed candidate is scaled to zero after scaleDownDelay; stable keeps running.
        rw.wait_replicas(NAME, 2, 0, timeout=20)
    # The operator's own metrics count it once, by its trigger, and time the revert.
    metrics = rw.operator_metrics(port)
    release = f'release="{NAME}"'
    assert metrics[f'rewind_rollbacks_total{{reason="analysis",{release}}}'] == 1, metrics
    assert metrics[f'rewind_rollouts_finished_total{{outcome="RolledBack",{release}}}'] == 1
    assert metrics[f'rewind_rollouts_finished_total{{outcome="Promoted",{release}}}'] == 1
    assert metrics[f"rewind_decision_to_revert_seconds_count{{{release}}}"] == 1
    assert metrics[f'rewind_release_phase{{phase="RolledBack",{release}}}'] == 1
    assert metrics[f"rewind_release_candidate_weight{{{release}}}"] == 0
    fails = f'rewind_analysis_measurements_total{{metric="error-rate",{release},verdict="Fail"}}'
    assert metrics[fails] == 1
    # Scaled down no earlier than scaleDownDelay after the rollback (second precision).
    rolled_back_at = parse_time(history(status, 2)["finishedAt"])
    scaled_at = rw.scaled_to_zero_at(NAME, 2)
    assert (scaled_at - rolled_back_at).total_seconds() >= 2.0, (rolled_back_at, scaled_at)
    assert rw.replicas(NAME, 1) == 1

    # It reached the first step, failed there and went straight back.
    assert [r.weights for _, r in rec.routes(NAME)] == [{1: 100}, {1: 80, 2: 20}, {1: 100}]
    assert status["weights"] == {"stable": 100, "candidate": 0}
    assert outcomes(status) == {1: "Promoted", 2: "RolledBack"}
    # Evidence: metric, value and threshold, in the measurements and the reason.
    failed = [m for m in status["analysis"]["measurements"] if m["verdict"] == "Fail"]
    assert failed, status["analysis"]
    assert failed[-1]["metric"] == "error-rate"
    assert failed[-1]["value"] == BROKEN
    assert failed[-1]["max"] == THRESHOLD
    assert failed[-1]["revision"] == 2
    reason = history(status, 2)["reason"]
    assert "error-rate 0.5 > max 0.05" in reason, reason
    decided = timeline(status, "RollbackDecided")
    assert decided and "error-rate 0.5 > max 0.05" in decided[-1]["message"]
    assert timeline(status, "RolledBack")
    assert condition(status, "Degraded")["status"] == "True"
    assert condition(status, "Ready")["status"] == "False"
    rw.event(NAME, type="Warning", reason="RollbackDecided", contains="error-rate 0.5 > max 0.05")
    rw.event(NAME, type="Warning", reason="RolledBack", contains="r2 rolled back")


def _await_approval(rw: Rewind) -> dict[str, Any]:
    """r1 promoted, r2 failing at 20% under an approval policy: AwaitingApproval."""
    rw.apply(policy_manifest(POLICY, canary((20, "2s"), (50, "2s")), mode="approval"))
    rw.promote_first_revision(NAME, POLICY)
    rw.set_error_rate(NAME, 2, BROKEN)
    rw.apply(release_manifest(NAME, POLICY, version=2))
    status = rw.wait_phase(NAME, "AwaitingApproval", candidate=2, timeout=40)
    assert rw.routes(NAME) == Routes({1: 80, 2: 20})
    return status


def test_approval_mode_waits_then_an_approval_rolls_back(rw: Rewind) -> None:
    status = _await_approval(rw)
    pending = status["pendingDecision"]
    assert pending["action"] == "Rollback"
    assert "error-rate 0.5 > max 0.05" in pending["reason"]
    assert pending["requiredApprovers"] == 1
    evidence = pending["evidence"]
    assert evidence and evidence[-1]["metric"] == "error-rate"
    assert evidence[-1]["value"] == BROKEN and evidence[-1]["max"] == THRESHOLD
    assert evidence[-1]["verdict"] == "Fail"
    assert status["weights"] == {"stable": 80, "candidate": 20}
    command = (
        f"kubectl annotate modelrelease/{NAME} -n {rw.namespace} {ANNOTATION_APPROVE}=true"
    )
    rw.event(NAME, type="Warning", reason="ApprovalRequested", contains=command)

    # Nobody decided yet: traffic holds at the failing weight, no rollback on its own.
    assert_holds(
        "AwaitingApproval at 80/20",
        lambda: rw.routes(NAME) == Routes({1: 80, 2: 20})
        and rw.status(NAME)["phase"] == "AwaitingApproval",
        seconds=3,
    )

    rw.annotate(NAME, ANNOTATION_APPROVE, "true")
    status = rw.wait_phase(NAME, "RolledBack", stable=1, timeout=20)
    rw.wait_routes(NAME, {1: 100})
    assert "pendingDecision" not in status
    assert outcomes(status) == {1: "Promoted", 2: "RolledBack"}
    approved = timeline(status, "Approved")
    assert approved and "approved by" in approved[-1]["message"]
    assert "approved by" in history(status, 2)["reason"]
    rw.wait_status(NAME, "annotation removed", lambda _: not has_annotation(
        rw.release(NAME), ANNOTATION_APPROVE))
    rw.event(NAME, type="Normal", reason="Approved", contains="approved by")


def test_rejecting_a_rollback_resumes_the_rollout(rw: Rewind) -> None:
    with Recorder(rw.sandbox, rw.namespace, kinds=("virtualservices", "modelreleases")) as rec:
        _await_approval(rw)
        # The candidate recovers (e.g. a noisy dependency), then a human rejects the rollback.
        rw.set_error_rate(NAME, 2, HEALTHY)
        rw.annotate(NAME, ANNOTATION_REJECT, "known upstream blip")
        status = rw.wait_phase(NAME, "Promoted", stable=2, timeout=40)
        rw.wait_routes(NAME, {2: 100})

    phases = rec.phases(NAME)
    at = phases.index("AwaitingApproval")
    assert phases[at + 1] == "Progressing", phases
    assert "RollingBack" not in phases and "RolledBack" not in phases, phases
    assert [r.weights for _, r in rec.routes(NAME)] == [
        {1: 100}, {1: 80, 2: 20}, {1: 50, 2: 50}, {2: 100},
    ]
    rejected = timeline(status, "Rejected")
    assert rejected and "known upstream blip" in rejected[-1]["message"]
    assert outcomes(status) == {1: "Promoted", 2: "Promoted"}
    assert "pendingDecision" not in status
    assert not has_annotation(rw.release(NAME), ANNOTATION_REJECT)
    rw.event(NAME, type="Normal", reason="Rejected", contains="known upstream blip")


@pytest.mark.parametrize("r1_left", ["scaled-to-zero", "deleted"])
def test_break_glass_restores_the_previous_revision_from_its_snapshot(
    rw: Rewind, r1_left: str
) -> None:
    rw.apply(
        policy_manifest(POLICY, canary((50, "2s")), keep_previous_warm="2s",
                        scale_down_delay="3s")
    )
    rw.promote_first_revision(NAME, POLICY)
    rw.set_error_rate(NAME, 2, HEALTHY)
    rw.apply(release_manifest(NAME, POLICY, version=2))
    rw.wait_phase(NAME, "Promoted", stable=2, timeout=40)
    # r1 leaves its keep-warm window: retired and scaled to zero.
    rw.wait_status(NAME, "r1 Retired", lambda s: history(s, 1)["outcome"] == "Retired",
                   timeout=20)
    rw.wait_replicas(NAME, 1, 0)
    if r1_left == "deleted":  # e.g. a cleanup job: only the snapshot is left
        rw.kubectl("delete", "deployment", f"{NAME}-r1", "-n", rw.namespace)
        assert rw.replicas(NAME, 1) is None

    with Recorder(rw.sandbox, rw.namespace) as rec:
        rw.annotate(NAME, ANNOTATION_ROLLBACK, "bad predictions in prod")
        status = rw.wait_phase(NAME, "RolledBack", stable=1, timeout=30)
        rw.wait_routes(NAME, {1: 100})

    # r1 came back from its snapshot, and traffic only moved once it was Available.
    assert "RollingBack" in rec.phases(NAME), rec.phases(NAME)
    routes = rec.routes(NAME)
    assert [r.weights for _, r in routes] == [{2: 100}, {1: 100}]
    ready_rv = rec.first_available(NAME, 1)
    assert ready_rv is not None and ready_rv < routes[-1][0], (ready_rv, routes)
    assert rw.replicas(NAME, 1) == 1
    deployment = rw.get("deployment", f"{NAME}-r1")
    assert deployment["metadata"]["annotations"]["rewind.dev/model-digest"] == (
        release_manifest(NAME, POLICY, version=1)["spec"]["model"]["artifactDigest"]
    )

    assert outcomes(status) == {1: "Promoted", 2: "RolledBack"}
    assert "bad predictions in prod" in history(status, 2)["reason"]
    glass = timeline(status, "BreakGlassRollback")
    assert glass and "bad predictions in prod" in glass[-1]["message"]
    assert not has_annotation(rw.release(NAME), ANNOTATION_ROLLBACK)
    rw.event(NAME, type="Warning", reason="BreakGlassRollback", contains="bad predictions")
    rw.wait_replicas(NAME, 2, 0, timeout=20)


def test_nobody_deciding_in_time_rolls_back_on_its_own(rw: Rewind) -> None:
    rw.apply(policy_manifest(POLICY, canary((20, "2s"), (50, "2s")), mode="approval",
                             approval_timeout="3s"))
    rw.promote_first_revision(NAME, POLICY)
    rw.set_error_rate(NAME, 2, BROKEN)
    rw.apply(release_manifest(NAME, POLICY, version=2))
    waiting = rw.wait_phase(NAME, "AwaitingApproval", candidate=2, timeout=40)
    expires = parse_time(waiting["pendingDecision"]["expiresAt"])

    # onTimeout: Rollback (fail safe), woken by the deadline itself: nothing pokes it.
    status = rw.wait_phase(NAME, "RolledBack", stable=1, timeout=20)
    rw.wait_routes(NAME, {1: 100})
    timed_out = timeline(status, "ApprovalTimedOut")
    assert timed_out and "onTimeout Rollback" in timed_out[-1]["message"]
    assert parse_time(timed_out[-1]["at"]) >= expires
    assert outcomes(status) == {1: "Promoted", 2: "RolledBack"}


def test_a_manual_gate_holds_until_promoted(rw: Rewind) -> None:
    rw.apply(policy_manifest(POLICY, canary((20, None), (50, "2s"))))
    rw.promote_first_revision(NAME, POLICY)
    rw.set_error_rate(NAME, 2, HEALTHY)
    rw.apply(release_manifest(NAME, POLICY, version=2))
    paused = rw.wait_phase(NAME, "Paused", candidate=2, timeout=40)
    assert f"kubectl annotate modelrelease/{NAME}" in paused["message"]
    assert_holds(
        "Paused at 80/20",
        lambda: rw.routes(NAME) == Routes({1: 80, 2: 20})
        and rw.status(NAME)["phase"] == "Paused",
        seconds=3,
    )
    rw.annotate(NAME, "rewind.dev/promote", "true")
    status = rw.wait_phase(NAME, "Promoted", stable=2, timeout=30)
    rw.wait_routes(NAME, {2: 100})
    assert timeline(status, "PromoteRequested")
    assert not has_annotation(rw.release(NAME), "rewind.dev/promote")
