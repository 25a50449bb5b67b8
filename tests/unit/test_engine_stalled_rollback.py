"""A rollback that cannot finish (issue 11, item 4): its target never becomes Available (a
ResourceQuota, a lost node pool). It never blocks a roll-forward, and it says the ways out."""

from __future__ import annotations

from rewind.api import Phase
from rewind.engine import ScaleRevision, SetRoutes
from tests.unit.test_engine_kit import (
    FAIL,
    PASS,
    World,
    actions_of,
    at_step,
    make_policy,
    make_spec,
    promoted_world,
    routes_of,
)


def stalled(releases: int = 2) -> World:
    """The issue's input: r<releases> Promoted, the older ones retired (scaled to zero), and
    nothing can bring them back; break glass, then the progress deadline passes."""
    w = promoted_world(
        make_policy(keep_previous_warm="1m", progress_deadline="2m"), releases=releases
    )
    w.run(120)
    top = releases
    assert all(w.outcome(r) == "Retired" and w.replicas(r) == 0 for r in range(1, top))
    w.broken.update(range(1, top))  # the quota: their pods are never created
    w.act("rollback", value="bad answers", user="oncall")
    assert w.phase() == Phase.ROLLING_BACK and w.status.stable_revision == top - 1
    w.run(130)
    assert w.phase() == Phase.ROLLING_BACK and w.weights() == {top: 100}
    assert w.condition("Stalled")[:2] == ("True", "RollbackStalled")
    return w


def test_a_new_spec_supersedes_a_stalled_rollback_and_traffic_stays_where_it_serves() -> None:
    w = stalled()
    d = w.release(make_spec("3.0.0"))  # the fix
    s = w.status
    assert s.phase == Phase.PROGRESSING
    assert (s.stable_revision, s.candidate_revision, s.current_revision) == (2, 3, 3)
    assert w.weights() == {2: 100}  # users stay on what serves until r3 is ready
    # The rollback target goes back to being retired (it still is known-good) and down.
    assert w.outcome(1) == "Retired" and "could not be restored" in s.history[0].reason
    assert ScaleRevision(1, 0) in d.actions
    assert w.outcome(2) == "RolledBack"  # what the human said stays on record
    types = [e.type for e in s.timeline[-2:]]
    assert types == ["RollbackAbandoned", "RevisionCreated"]
    assert "r2, which serves users but is not known-good" in s.timeline[-1].message
    assert w.condition("Stalled")[0] == "False"
    w.settle()
    assert w.phase() == Phase.PROMOTED and w.weights() == {3: 100}
    assert w.status.stable_revision == 3
    # A later break glass goes back to the known-good r1, never to r2.
    w.broken.clear()
    w.act("rollback", value="r3 bad too", user="oncall")
    w.run_until(lambda x: x.status.phase == Phase.ROLLED_BACK)
    assert w.status.stable_revision == 1 and w.weights() == {1: 100}


def test_a_spec_applied_before_the_deadline_waits_then_supersedes_the_stalled_rollback() -> None:
    w = promoted_world(make_policy(keep_previous_warm="1m", progress_deadline="2m"), releases=2)
    w.run(120)
    w.broken.add(1)
    w.act("rollback", value="bad answers", user="oncall")
    w.release(make_spec("3.0.0"))
    s = w.status
    assert s.phase == Phase.ROLLING_BACK and s.candidate_revision == 2
    assert "its new revision starts once the rollback is done" in s.message
    assert "against r2 if r1 is not Available by then" in s.message
    w.run_until(lambda x: x.status.candidate_revision == 3, limit=20)
    assert w.status.stable_revision == 2 and w.weights() == {2: 100}
    w.settle()
    assert w.status.stable_revision == 3


def test_a_stalled_rollback_says_its_ways_out_in_the_condition_and_the_message() -> None:
    w = stalled()
    stalled_message = w.condition("Stalled")[2]
    for text in (w.status.message, stalled_message):
        assert "Ways out: fix what keeps r1 from becoming Available" in text
        assert "apply a new spec: it supersedes this rollback and is released against r2" in text
        assert "break glass again" not in text  # there is nothing older than r1
    assert "Deployment risk/fraud-r1 has 0/2 ready replicas" in stalled_message
    # Fixing what kept r1 down is a way out too: the rollback then completes by itself.
    w.broken.clear()
    w.run(30)
    assert w.phase() == Phase.ROLLED_BACK and w.weights() == {1: 100}


def test_a_second_break_glass_rolls_back_to_the_next_older_known_good_revision() -> None:
    w = stalled(releases=3)  # rolling back from r3 to r2; r1 is older and known-good
    assert "break glass again with a new reason to roll back to r1" in w.condition("Stalled")[2]
    w.broken.discard(1)  # r1 can come back (say it needs less memory than r2)
    d = w.act("rollback", value="r2 cannot come back", user="oncall")
    s = w.status
    assert s.phase == Phase.ROLLING_BACK and (s.stable_revision, s.candidate_revision) == (1, 3)
    assert w.outcome(2) == "Retired" and "could not be restored" in s.history[1].reason
    assert ScaleRevision(2, 0) in actions_of(d, ScaleRevision)
    assert s.timeline[-2].type == "BreakGlassRollback" and "r3 -> r1" in s.timeline[-2].message
    w.run(30)
    assert w.phase() == Phase.ROLLED_BACK and w.weights() == {1: 100}


def test_with_nothing_older_a_second_break_glass_names_the_ways_out() -> None:
    w = stalled()
    w.act("rollback", value="still bad", user="oncall")
    note = w.status.timeline[-1]
    assert note.type == "ActionIgnored" and "no known-good revision older than r1" in note.message
    assert "apply a new spec" in note.message
    assert w.phase() == Phase.ROLLING_BACK and w.weights() == {2: 100}


def test_retry_and_promote_cannot_end_a_stalled_rollback_and_say_what_can() -> None:
    w = stalled()
    for kind in ("retry", "promote"):
        w.act(kind, user="oncall")
        note = w.status.timeline[-1]
        assert note.type == "ActionIgnored" and "phase is RollingBack" in note.message
        assert "Ways out: fix what keeps r1 from becoming Available" in note.message
    assert w.phase() == Phase.ROLLING_BACK and w.weights() == {2: 100}


def test_before_the_deadline_a_second_break_glass_changes_nothing() -> None:
    w = promoted_world(make_policy(keep_previous_warm="1m", progress_deadline="2m"), releases=3)
    w.run(120)
    w.broken.update({1, 2})
    w.act("rollback", value="bad answers", user="oncall")
    w.act("rollback", value="hurry", user="oncall", advance=30)
    assert w.status.stable_revision == 2 and w.phase() == Phase.ROLLING_BACK
    assert "already rolling back to r2" in w.status.timeline[-1].message


def test_a_roll_forward_from_a_stalled_rollback_that_fails_goes_back_to_what_served() -> None:
    w = stalled()
    w.verdicts = lambda _r, _n: FAIL
    w.release(make_spec("3.0.0"))
    w.settle()
    s = w.status
    assert s.phase == Phase.ROLLED_BACK and s.stable_revision == 2 and w.weights() == {2: 100}
    # r2 serves but is not known-good: break glass now goes on to r1 (once it can run).
    w.verdicts = lambda _r, _n: PASS
    w.broken.clear()
    w.act("rollback", value="r2 answers badly", user="oncall")
    w.run_until(lambda x: x.status.phase == Phase.ROLLED_BACK)
    assert w.status.stable_revision == 1 and w.weights() == {1: 100}


def test_a_stalled_rollback_from_a_canary_whose_stable_lost_its_pods() -> None:
    """Break glass mid-canary while the stable has no pod left: the roll-forward goes
    against the candidate, the only revision that still answers."""
    w = promoted_world(make_policy(progress_deadline="2m"))
    w.release(make_spec("2.0.0"))
    at_step(w, 1)
    assert w.weights() == {1: 90, 2: 10}
    w.broken.add(1)
    w.act("rollback", value="bad answers", user="oncall")
    w.run(130)
    assert w.phase() == Phase.ROLLING_BACK and w.condition("Stalled")[1] == "RollbackStalled"
    d = w.release(make_spec("3.0.0"))
    assert w.status.stable_revision == 2 and w.status.candidate_revision == 3
    # Users on r1 (no pod answers) go to r2 first; r3 takes its canary share once ready.
    assert routes_of(d)[0] == SetRoutes({2: 100}, None, 0)
    assert w.weights() == {2: 90, 3: 10}
