"""Break glass, cold rollback targets, rollback during promotion, retry."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from rewind.api import Outcome, Phase, RolloutPolicySpec
from rewind.engine import (
    EnsureRevision,
    RemoveAnnotation,
    ScaleRevision,
    SetRoutes,
    SnapshotRevision,
)
from tests.unit.test_engine_kit import (
    BLUE_GREEN,
    FAIL,
    IN_FLIGHT_OR_BACK,
    PASS,
    SHADOW_STOP,
    World,
    actions_of,
    at_step,
    events,
    make_policy,
    make_spec,
    new_timeline,
    promoted_world,
    routes_of,
)

# --------------------------------------------------------------------------------------
# Break glass during a rollout
# --------------------------------------------------------------------------------------


def test_break_glass_mid_canary_returns_all_traffic_to_stable_at_once() -> None:
    w = promoted_world()
    w.release(make_spec("2.0.0"))
    at_step(w, 2)
    d = w.act("rollback", value="customers complain", user="oncall")
    s = w.status
    assert s.phase == Phase.ROLLED_BACK and w.weights() == {1: 100}
    assert RemoveAnnotation("rewind.dev/rollback") in d.actions
    assert w.outcome(2) == "RolledBack"
    assert s.history[-1].reason == "break glass by oncall: customers complain"
    glass = [e for e in s.timeline if e.type == "BreakGlassRollback"]
    assert glass[-1].user == "oncall"
    assert [e.reason for e in events(d, "Warning")] == [
        "BreakGlassRollback",
        "RollbackStarted",
        "RolledBack",
    ]


def test_break_glass_before_the_candidate_had_traffic_fails_it() -> None:
    w = promoted_world(ready_after=60)
    w.release(make_spec("2.0.0"))
    w.act("rollback", value="wrong model", user="oncall", advance=10)
    assert w.phase() == Phase.FAILED and w.outcome(2) == "Failed"
    assert w.weights() == {1: 100}


def test_break_glass_on_a_first_release_stops_it_there_is_nothing_to_restore() -> None:
    w = World(make_policy(), ready_after=60)
    w.step()
    d = w.act("rollback", value="wrong bucket", user="oncall", advance=10)
    assert w.phase() == Phase.FAILED and w.outcome(1) == "Failed"
    assert "no known-good revision" in w.status.history[0].reason
    assert ScaleRevision(1, 0) in d.actions and w.routes is None


def test_rollback_requested_while_the_last_step_would_promote_wins() -> None:
    """Flagger #1898: a rollback during promotion must never land on the candidate."""
    w = promoted_world()
    w.release(make_spec("2.0.0"))
    at_step(w, 2)
    start = w.status.step_started_at
    assert start is not None
    w.run_until(lambda x: x.now >= start + timedelta(seconds=50))
    assert w.phase() == Phase.PROGRESSING
    # The next call would pass the last gate and promote r2; break glass arrives with it.
    w.annotate("rollback", value="stop", user="oncall")
    w.step(10)
    s = w.status
    assert s.phase == Phase.ROLLED_BACK and s.stable_revision == 1
    assert w.weights() == {1: 100}
    assert w.outcome(2) == "RolledBack" and s.history[-1].promoted_at is None
    assert "Promoted" not in [e.type for e in s.timeline if e.revision == 2]


def test_break_glass_during_blue_green_post_switch_switches_back_to_the_old_colour() -> None:
    w = promoted_world(make_policy(BLUE_GREEN))
    w.release(make_spec("2.0.0"))
    w.run_until(lambda x: x.weights() == {2: 100})
    d = w.act("rollback", value="latency", user="oncall")
    assert w.phase() == Phase.ROLLED_BACK and w.weights() == {1: 100}
    assert routes_of(d) == [SetRoutes({1: 100}, None, 0)]


# --------------------------------------------------------------------------------------
# Break glass when Promoted: back to the previous known-good revision
# --------------------------------------------------------------------------------------


def test_break_glass_when_promoted_and_previous_is_warm_switches_at_once() -> None:
    w = promoted_world(releases=2)
    assert w.replicas(1) == 2  # still inside keepPreviousWarm
    d = w.act("rollback", value="bad predictions", user="oncall")
    s = w.status
    assert s.phase == Phase.ROLLED_BACK
    assert (s.stable_revision, s.candidate_revision, s.current_revision) == (1, 2, 2)
    assert w.weights() == {1: 100}
    assert w.outcome(2) == "RolledBack" and w.outcome(1) == "Promoted"
    assert s.history[0].finished_at is None
    assert "r2 -> r1" in [e for e in s.timeline if e.type == "BreakGlassRollback"][-1].message
    # r2 is kept up while it still has users, until the switch is read back.
    assert {a.revision for a in actions_of(d, EnsureRevision)} == {1, 2}
    assert actions_of(d, ScaleRevision) == []
    # Git and cluster now disagree: say so, and never re-release r2 by itself.
    stalled = w.condition("Stalled")
    assert stalled[0] == "True" and "spec still describes r2" in stalled[2]
    w.run(3600, dt=60)
    assert w.phase() == Phase.ROLLED_BACK and w.replicas(2) == 0
    assert len(w.status.history) == 2


def test_break_glass_when_promoted_and_previous_is_cold_waits_for_it_then_switches() -> None:
    w = promoted_world(make_policy(keep_previous_warm="1m"), releases=2, ready_after=30)
    w.run(120)
    assert w.outcome(1) == "Retired" and w.replicas(1) == 0
    d = w.act("rollback", value="drift", user="oncall")
    s = w.status
    assert s.phase == Phase.ROLLING_BACK
    assert w.weights() == {2: 100}  # traffic stays until r1 is Available
    assert EnsureRevision(1, 2) in d.actions and w.replicas(1) == 2
    assert "r1 is scaled to zero" in s.message and "traffic stays on r2" in s.message
    assert (s.stable_revision, s.candidate_revision) == (1, 2)
    assert (s.weights.stable, s.weights.candidate) == (0, 100)
    assert w.outcome(1) == "Promoted"  # restored
    assert [e.type for e in s.timeline[-2:]] == ["BreakGlassRollback", "RollbackStarted"]
    assert w.condition("Progressing")[:2] == ("True", "RollingBack")
    w.run(20)
    assert w.phase() == Phase.ROLLING_BACK and w.weights() == {2: 100}
    assert "not Available yet" in w.status.message
    assert w.timeline_types().count("RollbackStarted") == 1
    d = w.step(10)
    assert w.phase() == Phase.ROLLED_BACK and w.weights() == {1: 100}
    assert routes_of(d) == [SetRoutes({1: 100}, None, 0)]
    assert actions_of(d, ScaleRevision) == []  # r2 keeps running for scaleDownDelay
    w.run(30)
    assert w.replicas(2) == 0


def test_break_glass_when_previous_deployment_is_gone_recreates_it_from_its_snapshot() -> None:
    w = promoted_world(releases=2, ready_after=20)
    del w.deployments[1]
    d = w.act("rollback", value="x", user="oncall")
    assert w.phase() == Phase.ROLLING_BACK
    assert "has no Deployment" in w.status.message
    assert EnsureRevision(1, 2) in d.actions
    assert actions_of(d, SnapshotRevision) == []  # the snapshot of r1 exists already
    w.run(20)
    assert w.phase() == Phase.ROLLED_BACK and w.weights() == {1: 100}


def test_break_glass_skips_rolled_back_revisions_when_choosing_the_target() -> None:
    w = promoted_world(releases=3)
    w.act("rollback", value="r3 bad", user="a")
    assert w.status.stable_revision == 2 and w.phase() == Phase.ROLLED_BACK
    w.release(make_spec("4.0.0"))
    w.settle()
    assert w.status.stable_revision == 4
    w.act("rollback", value="r4 bad", user="b")
    assert w.status.stable_revision == 2  # r3 was rolled back: not known-good


def test_break_glass_with_no_earlier_known_good_revision_is_refused() -> None:
    w = promoted_world()
    d = w.act("rollback", value="x", user="oncall")
    assert w.phase() == Phase.PROMOTED and w.weights() == {1: 100}
    assert RemoveAnnotation("rewind.dev/rollback") in d.actions
    assert "no known-good revision before r1" in w.status.timeline[-1].message


def test_break_glass_again_after_a_rollback_does_not_roll_back_twice() -> None:
    w = promoted_world(releases=3)
    w.act("rollback", value="r3 bad", user="oncall")
    assert w.status.stable_revision == 2
    # The same annotation delivered again (e.g. removal failed) or a second press.
    w.act("rollback", value="r3 bad", user="oncall")
    w.act("rollback", value="r3 bad", user="oncall")
    assert w.status.stable_revision == 2 and w.phase() == Phase.ROLLED_BACK
    assert w.timeline_types().count("ActionIgnored") == 1  # a note, recorded once


def test_rolling_back_to_a_target_that_never_becomes_available_stalls_loudly() -> None:
    w = promoted_world(make_policy(keep_previous_warm="1m", progress_deadline="2m"), releases=2)
    w.run(60)
    w.broken.add(1)
    w.act("rollback", value="x", user="oncall")
    w.run(110)
    assert w.condition("Stalled")[0] == "False"
    w.run(10)
    assert w.phase() == Phase.ROLLING_BACK and w.weights() == {2: 100}
    stalled = w.condition("Stalled")
    assert stalled[:2] == ("True", "RollbackStalled") and "r1 is not Available" in stalled[2]
    w.broken.clear()
    w.run(10)
    assert w.phase() == Phase.ROLLED_BACK and w.condition("Stalled")[1] == "RolledBack"


def test_spec_change_during_a_cold_rollback_waits_for_it_to_finish() -> None:
    w = promoted_world(make_policy(keep_previous_warm="1m"), releases=2, ready_after=30)
    w.run(60)
    w.act("rollback", value="x", user="oncall")
    assert w.phase() == Phase.ROLLING_BACK
    w.release(make_spec("3.0.0"))
    s = w.status
    assert s.phase == Phase.ROLLING_BACK and len(s.history) == 2
    assert "new revision starts once the rollback is done" in s.message
    w.run_until(lambda x: x.status.candidate_revision == 3)
    s = w.status
    assert s.stable_revision == 1 and s.phase == Phase.PROGRESSING
    assert [e.type for e in s.timeline[-2:]] == ["RolledBack", "RevisionCreated"]


# --------------------------------------------------------------------------------------
# Retry
# --------------------------------------------------------------------------------------


def test_retry_restarts_the_rolled_back_revision_against_the_stable() -> None:
    w = promoted_world()
    w.release(make_spec("2.0.0"))
    at_step(w, 1)
    w.verdicts = lambda _r, _n: FAIL
    w.step(10)
    assert w.phase() == Phase.ROLLED_BACK
    w.run(60)
    assert w.replicas(2) == 0
    w.verdicts = lambda _r, _n: PASS
    d = w.act("retry", user="frank")
    s = w.status
    assert s.phase == Phase.PROGRESSING and s.candidate_revision == 2 and s.current_step == 0
    assert RemoveAnnotation("rewind.dev/retry") in d.actions
    assert SnapshotRevision(2, w.snapshots[2]) in d.actions  # idempotent re-assertion
    assert EnsureRevision(2, 2) in d.actions
    assert w.outcome(2) == "Progressing" and s.history[-1].reason == ""
    assert s.analysis.failures == 0 and s.analysis.measurements == []
    assert len(s.history) == 2  # same revision number
    assert s.timeline[-1].type == "Retry" and s.timeline[-1].user == "frank"
    w.settle()
    assert w.phase() == Phase.PROMOTED and w.status.stable_revision == 2


def test_retry_a_failed_first_release() -> None:
    w = World(make_policy(progress_deadline="1m"), broken={1})
    w.step()
    w.run(60)
    assert w.phase() == Phase.FAILED
    w.broken.clear()
    w.act("retry")
    w.settle()
    assert w.phase() == Phase.PROMOTED and w.status.stable_revision == 1


def test_retry_is_ignored_unless_failed_or_rolled_back() -> None:
    w = promoted_world()
    d = w.act("retry", user="x")
    assert w.phase() == Phase.PROMOTED and RemoveAnnotation("rewind.dev/retry") in d.actions
    assert "only a Failed or RolledBack revision can be retried" in w.status.timeline[-1].message


def test_retry_after_a_break_glass_from_promoted_re_releases_the_current_spec() -> None:
    w = promoted_world(releases=2)
    w.act("rollback", value="x", user="oncall")
    assert w.status.stable_revision == 1
    w.act("retry", user="oncall")
    assert w.status.candidate_revision == 2 and w.phase() == Phase.PROGRESSING
    w.settle()
    assert w.status.stable_revision == 2 and w.outcome(1) == "Promoted"
    assert w.status.history[0].finished_at is not None  # replaced again, warm then retired


def test_new_spec_after_rollback_starts_a_new_revision_not_a_retry() -> None:
    w = promoted_world()
    w.release(make_spec("2.0.0"))
    at_step(w, 1)
    w.verdicts = lambda _r, _n: FAIL
    w.step(10)
    w.verdicts = lambda _r, _n: PASS
    d = w.release(make_spec("2.0.1"))
    assert d.status.candidate_revision == 3 and w.outcome(2) == "RolledBack"
    w.settle()
    assert w.status.stable_revision == 3
    assert {e.revision: e.outcome for e in w.status.history} == {
        1: Outcome.PROMOTED,
        2: Outcome.ROLLED_BACK,
        3: Outcome.PROMOTED,
    }


# --------------------------------------------------------------------------------------
# RollbackStarted: one per rollback, on every path (metrics count rollbacks from it)
# --------------------------------------------------------------------------------------

APPROVAL = {"requiredApprovers": 1, "timeout": "10m", "onTimeout": "Rollback"}


def _canary_at_10(policy: RolloutPolicySpec | None = None, **kwargs: Any) -> World:
    w = promoted_world(policy or make_policy(), **kwargs)
    w.release(make_spec("2.0.0"))
    at_step(w, 1)
    return w


def _blue_green_switched() -> World:
    w = promoted_world(make_policy(BLUE_GREEN))
    w.release(make_spec("2.0.0"))
    w.run_until(lambda x: x.weights() == {2: 100})
    return w


def _fail(w: World) -> None:
    w.verdicts = lambda _r, _n: FAIL


def _automatic() -> World:
    w = _canary_at_10()
    _fail(w)
    return w


def _automatic_cold_stable() -> World:
    w = _canary_at_10(ready_after=15)
    del w.deployments[1]  # someone deleted the stable's Deployment: the rollback waits
    _fail(w)
    return w


def _approved() -> World:
    w = _canary_at_10(make_policy(approval=APPROVAL))
    _fail(w)
    w.step(10)
    assert w.phase() == Phase.AWAITING_APPROVAL
    w.annotate("approve-rollback", user="alice")
    return w


def _approval_timeout() -> World:
    w = _canary_at_10(make_policy(approval=APPROVAL))
    _fail(w)
    w.step(10)
    assert w.phase() == Phase.AWAITING_APPROVAL
    w.verdicts = lambda _r, _n: PASS
    return w


def _break_glass_in_flight() -> World:
    w = _canary_at_10()
    w.annotate("rollback", value="pager", user="oncall")
    return w


def _break_glass_promoted_warm() -> World:
    w = promoted_world(releases=2)
    w.annotate("rollback", value="bad predictions", user="oncall")
    return w


def _break_glass_promoted_cold() -> World:
    w = promoted_world(make_policy(keep_previous_warm="1m"), releases=2, ready_after=30)
    w.run(120)
    assert w.replicas(1) == 0
    w.annotate("rollback", value="drift", user="oncall")
    return w


def _blue_green_switch_back_by_analysis() -> World:
    w = _blue_green_switched()
    _fail(w)
    return w


def _blue_green_switch_back_by_break_glass() -> World:
    w = _blue_green_switched()
    w.annotate("rollback", value="latency", user="oncall")
    return w


def _shadow_failure() -> World:
    w = _canary_at_10(make_policy(SHADOW_STOP))
    _fail(w)
    return w


ROLLBACK_PATHS: dict[str, tuple[Callable[[], World], str, Phase]] = {
    "automatic": (_automatic, "RollbackDecided", Phase.ROLLED_BACK),
    "automatic-cold-stable": (_automatic_cold_stable, "RollbackDecided", Phase.ROLLED_BACK),
    "approved": (_approved, "Approved", Phase.ROLLED_BACK),
    "approval-timeout-rollback": (_approval_timeout, "ApprovalTimedOut", Phase.ROLLED_BACK),
    "break-glass-in-flight": (_break_glass_in_flight, "BreakGlassRollback", Phase.ROLLED_BACK),
    "break-glass-promoted-warm": (
        _break_glass_promoted_warm,
        "BreakGlassRollback",
        Phase.ROLLED_BACK,
    ),
    "break-glass-promoted-cold": (
        _break_glass_promoted_cold,
        "BreakGlassRollback",
        Phase.ROLLED_BACK,
    ),
    "blue-green-switch-back-analysis": (
        _blue_green_switch_back_by_analysis,
        "RollbackDecided",
        Phase.ROLLED_BACK,
    ),
    "blue-green-switch-back-break-glass": (
        _blue_green_switch_back_by_break_glass,
        "BreakGlassRollback",
        Phase.ROLLED_BACK,
    ),
    # The candidate never had live traffic: it goes through RollingBack and ends Failed.
    "shadow-failure": (_shadow_failure, "RollbackDecided", Phase.FAILED),
}


@pytest.mark.parametrize("path", sorted(ROLLBACK_PATHS))
def test_every_rollback_path_appends_exactly_one_rollback_started(path: str) -> None:
    build, trigger, end = ROLLBACK_PATHS[path]
    w = build()
    before, calls = w.status.model_copy(deep=True), len(w.decisions)
    w.step(10)
    w.run_until(lambda x: x.status.phase not in IN_FLIGHT_OR_BACK, dt=10)
    assert w.phase() == end, w.status.message
    # A cold target spans reconciles at several instants; a warm one is back in the
    # reconcile that reads the route write back, at the same instant.
    waited = {
        t
        for d, t in zip(w.decisions[calls:], w.decided_at[calls:], strict=True)
        if d.status.phase == Phase.ROLLING_BACK
    }
    assert (len(waited) > 1) == ("cold" in path), waited
    types = [e.type for e in new_timeline(before, w.status)]
    assert types.count("RollbackStarted") == 1, types
    started = types.index("RollbackStarted")
    assert trigger in types[:started], types  # what began it comes first
    finished = "RolledBack" if end == Phase.ROLLED_BACK else "Failed"
    assert types[started + 1 :].count(finished) == 1, types
    # The same in Events, with the whole story in the entry.
    entry = next(e for e in w.status.timeline if e.type == "RollbackStarted")
    assert entry.message.startswith(f"rolling back from r{w.status.candidate_revision} to ")
    reasons = [e.reason for d in w.decisions for e in events(d)]
    assert reasons.count("RollbackStarted") == 1


def test_a_cold_rollback_target_is_named_in_the_rollback_started_entry() -> None:
    w = _break_glass_promoted_cold()
    w.step()
    entry = w.status.timeline[-1]
    assert entry.type == "RollbackStarted"
    assert "r1 is scaled to zero (scaling it up): traffic moves once it is Available" in (
        entry.message
    )


def test_approval_timeout_with_resume_is_not_a_rollback() -> None:
    w = _canary_at_10(
        make_policy(approval={**APPROVAL, "onTimeout": "Resume"}),
    )
    _fail(w)
    w.step(10)
    w.verdicts = lambda _r, _n: PASS
    before = w.status.model_copy(deep=True)
    w.run(600)
    types = [e.type for e in new_timeline(before, w.status)]
    assert "ApprovalTimedOut" in types and "RollbackStarted" not in types
    assert w.phase() in (Phase.PROGRESSING, Phase.PROMOTED)
