"""Rollback drills (issue 14): the revision a rollback would go to now is brought to
Available from its snapshot, optionally analysed on mirrored traffic, timed and scaled back,
without touching user traffic; failures say what would have failed in a real rollback."""

from __future__ import annotations

from typing import Any

from rewind.api import DrillFailure, DrillVerdict, Phase, RolloutPolicySpec
from rewind.engine import EnsureRevision, ScaleRevision, SetRoutes
from tests.unit.test_engine_kit import (
    CANARY,
    FAIL,
    PASS,
    World,
    actions_of,
    at_step,
    events,
    make_policy,
    make_spec,
    promoted_world,
    routes_of,
)


def with_drill(
    policy: RolloutPolicySpec | None = None,
    *,
    every: str | None = None,
    mirror: int = 0,
    timeout: str = "2m",
    rounds: int = 1,
) -> RolloutPolicySpec:
    base = (policy or make_policy(CANARY)).model_dump(by_alias=True, exclude_none=True)
    drill: dict[str, Any] = {"timeout": timeout, "mirrorPercent": mirror, "passingRounds": rounds}
    if every is not None:
        drill["every"] = every
    base["drill"] = drill
    return RolloutPolicySpec.model_validate(base)


def retired_r1(policy: RolloutPolicySpec, **kwargs: Any) -> World:
    """r2 Promoted, r1 (the rollback target) retired to zero replicas."""
    w = promoted_world(policy, releases=2, **kwargs)
    w.run(700, dt=50)
    assert w.replicas(1) == 0 and w.status.stable_revision == 2
    return w


def run_drill(w: World, *, limit: int = 200) -> None:
    w.run_until(lambda x: x.status.drill is None and x.status.last_drill is not None,
                dt=1, limit=limit)


def users_untouched(w: World, since: int) -> None:
    for d in w.decisions[since:]:
        for r in routes_of(d):
            assert dict(r.weights) == {2: 100} and r.fallback is None, r


def test_on_demand_drill_scales_the_target_up_from_its_snapshot_times_it_and_scales_back() -> None:
    w = retired_r1(with_drill(), ready_after=7.0)
    mark = len(w.decisions)
    w.act("drill", user="alice")
    assert w.status.drill is not None and w.status.drill.target == 1
    assert w.timeline_types()[-1] == "DrillStarted"
    run_drill(w)
    last = w.status.last_drill
    assert last is not None and last.verdict == DrillVerdict.PASSED and last.target == 1
    assert last.failure == DrillFailure.NONE
    assert last.time_to_ready_seconds is not None and 7 <= last.time_to_ready_seconds <= 10
    assert last.time_to_passing_analysis_seconds is None  # no mirror, no analysis
    assert "requested by alice" in last.trigger
    assert w.status.last_successful_drill_at == last.finished_at
    ensured = [a for d in w.decisions[mark:] for a in actions_of(d, EnsureRevision)]
    assert EnsureRevision(1, 2) in ensured
    assert w.replicas(1) == 0  # scaled back to where it was
    assert [e.reason for e in events(w.decisions[mark:])].count("DrillPassed") == 1
    users_untouched(w, mark)
    assert w.weights() == {2: 100} and w.status.phase == Phase.PROMOTED
    assert "RollbackStarted" not in w.timeline_types()


def test_a_warm_target_stays_warm() -> None:
    w = promoted_world(with_drill(), releases=2)
    assert w.replicas(1) == 2  # kept warm after r2's promotion
    w.act("drill")
    run_drill(w)
    assert w.status.last_drill is not None
    assert w.status.last_drill.verdict == DrillVerdict.PASSED
    assert w.replicas(1) == 2


def test_mirror_and_analysis_against_the_target() -> None:
    w = retired_r1(with_drill(mirror=20, rounds=2))
    mark = len(w.decisions)
    w.act("drill")
    run_drill(w)
    last = w.status.last_drill
    assert last is not None and last.verdict == DrillVerdict.PASSED, last
    assert last.time_to_passing_analysis_seconds is not None
    assert last.time_to_ready_seconds is not None
    assert last.time_to_passing_analysis_seconds >= last.time_to_ready_seconds + 2 * 10
    mirrored = [r for d in w.decisions[mark:] for r in routes_of(d)]
    assert SetRoutes({2: 100}, 1, 20) in mirrored  # users on r2, copies to r1
    assert w.routes == SetRoutes({2: 100}, None, 0)  # mirror removed after
    assert w.replicas(1) == 0
    for r in mirrored:
        assert dict(r.weights) == {2: 100}


def test_snapshot_missing_fails_before_anything_is_scaled() -> None:
    w = retired_r1(with_drill())
    del w.snapshots[1]
    mark = len(w.decisions)
    w.act("drill")
    run_drill(w)
    last = w.status.last_drill
    assert last is not None and last.verdict == DrillVerdict.FAILED
    assert last.failure == DrillFailure.SNAPSHOT_MISSING
    assert "r1 could not be re-created" in last.message and "not found" in last.message
    assert not [a for d in w.decisions[mark:] for a in actions_of(d, EnsureRevision)
                if a.revision == 1]
    assert [e.reason for e in events(w.decisions[mark:], "Warning")] == ["DrillFailed"]
    assert w.status.last_successful_drill_at is None


def test_snapshot_that_does_not_verify_fails_as_corrupt() -> None:
    w = retired_r1(with_drill())
    w.corrupt.add(1)
    w.act("drill")
    run_drill(w)
    assert w.status.last_drill is not None
    assert w.status.last_drill.failure == DrillFailure.SNAPSHOT_CORRUPT


def test_pods_never_ready_fail_at_the_timeout_and_are_scaled_back() -> None:
    w = retired_r1(with_drill(timeout="30s"))
    w.broken.add(1)  # its pods would never become ready now (a quota, a lost node pool)
    w.act("drill")
    started = w.now
    run_drill(w)
    last = w.status.last_drill
    assert last is not None and last.failure == DrillFailure.PODS_NEVER_READY
    assert last.finished_at is not None and (last.finished_at - started).total_seconds() >= 30
    assert "was not Available within 30s" in last.message and "0/2 ready" in last.message
    assert last.time_to_ready_seconds is None
    assert w.replicas(1) == 0


def test_analysis_failing_on_mirrored_traffic() -> None:
    w = retired_r1(with_drill(mirror=10), verdicts=lambda rev, _now: FAIL if rev == 1 else PASS)
    w.act("drill")
    run_drill(w)
    last = w.status.last_drill
    assert last is not None and last.failure == DrillFailure.ANALYSIS_FAILING
    assert "analysis fails on 10% mirrored traffic" in last.message
    assert w.routes == SetRoutes({2: 100}, None, 0) and w.replicas(1) == 0
    assert w.status.phase == Phase.PROMOTED  # a drill never rolls back


def test_no_known_good_target_fails_at_once() -> None:
    w = promoted_world(with_drill())
    w.act("drill")
    last = w.status.last_drill
    assert last is not None and last.failure == DrillFailure.NO_TARGET
    assert "nowhere to go" in last.message and w.status.drill is None


def test_scheduled_drills_run_every_period_after_the_promotion() -> None:
    w = retired_r1(with_drill(every="1h"))
    promoted = next(e.promoted_at for e in w.status.history if e.revision == 2)
    assert promoted is not None
    w.run_until(lambda x: x.status.last_drill is not None, dt=60, limit=100)
    first = w.status.last_drill
    assert first is not None and first.trigger == "schedule" and first.started_at is not None
    assert 3600 <= (first.started_at - promoted).total_seconds() < 3660 + 60
    run_drill(w)
    w.run_until(lambda x: x.status.last_drill is not None
                and x.status.last_drill.started_at != first.started_at, dt=60, limit=100)
    second = w.status.last_drill
    assert second is not None and second.started_at is not None
    assert 3600 <= (second.started_at - first.started_at).total_seconds() < 3720


def test_never_while_a_rollout_is_in_flight() -> None:
    w = retired_r1(with_drill(every="1h"))
    w.release(make_spec("3.0.0"))
    at_step(w, 1)
    w.act("drill", user="bob")
    assert w.status.drill is None
    assert "never runs while a rollout or rollback is in flight" in w.status.timeline[-1].message
    # A scheduled drill falls due during the rollout: it waits for Promoted.
    w.policy = with_drill(make_policy({"canary": {"steps": [
        {"weight": 10, "pause": {"duration": "2h"}}]}}), every="1h")
    w.run(3 * 3600, dt=300)
    assert w.status.phase in (Phase.PROGRESSING, Phase.PAUSED, Phase.PROMOTED)
    for d in w.decisions:
        if d.status.drill is not None:
            assert d.status.phase == Phase.PROMOTED


def test_a_real_rollback_cancels_a_drill_at_once_and_keeps_the_target_up() -> None:
    w = retired_r1(with_drill(), ready_after=30.0)
    w.act("drill")
    w.step(1)
    assert w.status.drill is not None and w.replicas(1) == 2  # scaling up, not Available
    d = w.act("rollback", value="r2 answers nonsense")
    assert w.status.drill is None
    last = w.status.last_drill
    assert last is not None and last.verdict == DrillVerdict.CANCELLED
    assert "a rollback started" in last.message
    assert w.status.phase == Phase.ROLLING_BACK and w.status.stable_revision == 1
    assert ScaleRevision(1, 0) not in d.actions  # the rollback needs it
    assert w.timeline_types().count("RollbackStarted") == 1
    w.settle()
    assert w.status.phase == Phase.ROLLED_BACK and w.weights() == {1: 100}


def test_a_drill_value_that_comes_back_does_not_drill_again() -> None:
    """An annotation kept in Git and put back after its removal must not drill in a loop:
    ``true`` acts once per stable revision; a new value (``true-2``) drills again."""
    w = retired_r1(with_drill())
    w.act("drill", user="alice")
    run_drill(w)
    first = w.status.last_drill
    w.step(1)  # the removal is seen
    w.act("drill", user="alice")  # the same value, put back
    assert w.status.drill is None and w.status.last_drill == first
    assert "left on the object" in w.status.timeline[-1].message
    w.act("drill", value="true-2", user="alice")
    assert w.status.drill is not None
