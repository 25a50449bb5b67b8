"""Git revert to a known-good spec (issue 11, item 5): a spec equal to a revision promoted
recently (RolloutPolicy rollbackWindow) restores that revision fast, without a new revision
number, steps or analysis, and still by the observed-state rules."""

from __future__ import annotations

from rewind.api import Phase, spec_hash
from rewind.engine import EnsureRevision, ScaleRevision, SetRoutes, SnapshotRevision
from tests.unit.test_engine_kit import (
    FAIL,
    PASS,
    actions_of,
    at_step,
    events,
    make_policy,
    make_spec,
    promoted_world,
    routes_of,
)


def test_a_git_revert_to_a_retired_known_good_revision_restores_it() -> None:
    """The issue's input: r1 Promoted, r2 Promoted, the team reverts the commit."""
    w = promoted_world(make_policy(keep_previous_warm="1m"), releases=2, ready_after=30)
    w.run(120)
    assert w.outcome(1) == "Retired" and w.replicas(1) == 0
    promoted_before = w.status.history[0].promoted_at
    d = w.release(make_spec("1.0.0"))  # spec == r1's again
    s = w.status
    assert [e.revision for e in s.history] == [1, 2]  # no r3
    assert (s.current_revision, s.candidate_revision, s.stable_revision) == (1, 1, 2)
    assert s.phase == Phase.PROGRESSING and s.restoring
    assert "restoring r1: waiting to become Available" in s.message
    assert EnsureRevision(1, 2) in d.actions and w.replicas(1) == 2  # from its snapshot
    assert actions_of(d, SnapshotRevision) == []
    assert w.weights() == {2: 100}  # never routed before it is Available
    started = s.timeline[-1]
    assert started.type == "RestoreStarted" and started.revision == 1
    assert f"the spec equals r1's (spec {spec_hash(make_spec('1.0.0'))}" in started.message
    assert "within rollbackWindow.revisions 3" in started.message
    assert "is scaled to zero" in started.message
    w.run(20)
    assert w.phase() == Phase.PROGRESSING and w.weights() == {2: 100}
    d = w.step(10)
    assert routes_of(d) == [SetRoutes({1: 100}, None, 0)]  # one route write
    s = w.status
    assert s.phase == Phase.PROMOTED and not s.restoring
    assert (s.stable_revision, s.candidate_revision, s.current_revision) == (1, 0, 1)
    assert [e.reason for e in events(d)] == ["Restored"]
    assert s.timeline[-1].message.startswith("r1 restored: serving 100% of traffic")
    assert w.outcome(1) == "Promoted" and s.history[0].promoted_at == w.now
    assert promoted_before is not None and promoted_before < w.now
    assert "restored" in s.history[0].reason
    assert s.history[1].reason == "replaced by r1 (restored)"
    assert w.condition("Ready")[0] == "True"
    assert "RevisionCreated" not in [e.type for e in s.timeline if e.revision == 3]
    w.run(120)
    assert w.outcome(2) == "Retired" and w.replicas(2) == 0  # kept warm, then retired


def test_a_restore_is_promoted_only_once_all_traffic_is_read_back() -> None:
    w = promoted_world(releases=2)  # r1 still warm: the restore moves traffic at once
    w.follow_route_writes = False
    d = w.release(make_spec("1.0.0"))
    assert routes_of(d) == [SetRoutes({1: 100}, None, 0)]
    assert w.phase() == Phase.PROMOTING and w.status.restoring
    assert "restoring r1: waiting for 100% to take effect" in w.status.message
    d = w.step()
    assert w.phase() == Phase.PROMOTED and w.status.stable_revision == 1
    assert routes_of(d) == [SetRoutes({1: 100}, None, 0)]  # level-based, nothing new


def test_a_restore_never_routes_to_a_revision_that_is_not_available() -> None:
    w = promoted_world(make_policy(keep_previous_warm="1m", progress_deadline="2m"), releases=2)
    w.run(120)
    w.broken.add(1)  # its pods never become ready
    w.release(make_spec("1.0.0"))
    w.run(110)
    assert w.phase() == Phase.PROGRESSING and w.weights() == {2: 100}
    w.run(10)
    s = w.status
    assert s.phase == Phase.FAILED and w.weights() == {2: 100} and s.stable_revision == 2
    assert w.outcome(1) == "Failed" and "could not be restored" in s.history[0].reason
    assert w.replicas(1) == 0
    # Retry releases it again, now through the plan (its restore failed).
    w.broken.clear()
    w.act("retry", user="oncall")
    assert w.status.candidate_revision == 1 and not w.status.restoring
    w.settle()
    assert w.status.stable_revision == 1 and w.phase() == Phase.PROMOTED


def test_a_revert_to_the_stable_mid_canary_stops_the_candidate_and_keeps_the_stable() -> None:
    w = promoted_world()
    w.release(make_spec("2.0.0"))
    at_step(w, 1)
    assert w.weights() == {1: 90, 2: 10}
    d = w.release(make_spec("1.0.0"))
    s = w.status
    assert s.phase == Phase.PROMOTED and w.weights() == {1: 100}
    assert (s.stable_revision, s.candidate_revision, s.current_revision) == (1, 0, 1)
    assert [e.revision for e in s.history] == [1, 2] and w.outcome(2) == "Superseded"
    assert ScaleRevision(2, 0) in d.actions
    assert [e.reason for e in events(d)] == ["Superseded", "RestoreStarted", "Restored"]
    assert w.condition("Ready")[0] == "True"


def test_a_revert_after_a_failed_canary_makes_git_and_the_cluster_agree_again() -> None:
    w = promoted_world()
    w.release(make_spec("2.0.0"))
    at_step(w, 1)
    w.verdicts = lambda _r, _n: FAIL
    w.step(10)
    assert w.phase() == Phase.ROLLED_BACK
    assert "spec still describes r2" in w.condition("Stalled")[2]
    w.verdicts = lambda _r, _n: PASS
    w.release(make_spec("1.0.0"))
    s = w.status
    assert s.phase == Phase.PROMOTED and s.current_revision == 1 and w.weights() == {1: 100}
    assert w.condition("Stalled")[0] == "False" and w.condition("Ready")[0] == "True"
    assert w.outcome(2) == "RolledBack"


def test_a_revert_while_a_break_glass_restores_the_same_revision_just_finishes() -> None:
    w = promoted_world(make_policy(keep_previous_warm="1m"), releases=2, ready_after=30)
    w.run(120)
    w.act("rollback", value="bad answers", user="oncall")
    assert w.phase() == Phase.ROLLING_BACK
    w.release(make_spec("1.0.0"))  # the team reverts the commit in Git
    s = w.status
    assert s.phase == Phase.ROLLING_BACK and len(s.history) == 2
    assert "the spec is r1's again" in s.message
    w.run(30)
    s = w.status
    assert s.phase == Phase.PROMOTED and s.current_revision == 1 and w.weights() == {1: 100}
    assert [e.type for e in s.timeline[-3:]] == ["RolledBack", "RestoreStarted", "Restored"]
    assert w.condition("Ready")[0] == "True"


def test_outside_the_window_the_normal_plan_runs() -> None:
    w = promoted_world(make_policy(rollback_window=2), releases=4)
    d = w.release(make_spec("1.0.0"))  # promotions: r4 (stable), r3, r2 in the window
    s = w.status
    assert s.candidate_revision == 5 and not s.restoring
    assert SnapshotRevision(5, spec_hash(make_spec("1.0.0"))) in d.actions
    w.release(make_spec("2.0.0"))  # r2 is within the window: restored (at once: warm)
    s = w.status
    assert s.stable_revision == 2 and s.phase == Phase.PROMOTED and s.current_revision == 2
    assert s.history[-1].revision == 5 and w.outcome(5) == "Superseded"


def test_a_revision_rolled_back_since_its_promotion_is_never_restored() -> None:
    w = promoted_world(releases=2)
    w.act("rollback", value="r2 bad", user="oncall")
    w.release(make_spec("3.0.0"))
    w.settle()
    assert w.status.stable_revision == 3
    w.release(make_spec("2.0.0"))  # r2 was promoted once, then rolled back: not known-good
    assert w.status.candidate_revision == 4 and not w.status.restoring


def test_after_a_restore_break_glass_goes_back_to_the_revision_it_replaced() -> None:
    w = promoted_world(releases=2)
    w.release(make_spec("1.0.0"))
    assert w.status.stable_revision == 1
    w.act("rollback", value="still bad", user="oncall")
    assert w.status.stable_revision == 2 and w.phase() == Phase.ROLLED_BACK


def test_a_restore_interrupted_by_a_new_spec_leaves_the_revision_known_good() -> None:
    w = promoted_world(make_policy(keep_previous_warm="1m"), releases=2, ready_after=60)
    w.run(120)
    w.release(make_spec("1.0.0"))
    assert w.status.restoring
    w.release(make_spec("3.0.0"))
    s = w.status
    assert s.candidate_revision == 3 and not s.restoring and w.outcome(1) == "Retired"
    w.settle()
    w.release(make_spec("1.0.0"))  # r1 is still in the window and known-good
    assert w.status.restoring and w.status.candidate_revision == 1


def test_break_glass_during_a_restore_returns_to_the_stable() -> None:
    w = promoted_world(make_policy(keep_previous_warm="1m"), releases=2, ready_after=60)
    w.run(120)
    w.release(make_spec("1.0.0"))
    w.act("rollback", value="not now", user="oncall", advance=10)
    s = w.status
    assert s.stable_revision == 2 and w.weights() == {2: 100} and not s.restoring
    assert s.phase == Phase.FAILED  # r1 never had traffic in this restore


def test_restored_revisions_count_towards_the_window_by_promotion_time() -> None:
    w = promoted_world(make_policy(rollback_window=1), releases=3)
    w.release(make_spec("2.0.0"))  # r2: the most recent promotion before r3
    assert w.status.stable_revision == 2 and w.phase() == Phase.PROMOTED
    w.release(make_spec("3.0.0"))  # r3 was promoted just before r2's restore
    assert w.status.stable_revision == 3 and w.phase() == Phase.PROMOTED
    w.release(make_spec("1.0.0"))  # r1: two promotions ago, outside a window of 1
    assert w.status.candidate_revision == 4
