"""A ModelRelease deleted and applied again adopts its recorded history (project issue 11,
item 7): snapshots and history records outlive the object, the controller hands them to
the engine while the status has no history (``Inputs.archive``), and the engine adopts
them instead of starting a "first release" that would go to 100% without analysis.

``recreate`` plays the deletion: the Deployments and routes go with the object (garbage
collection), the snapshots and records stay, the new object has an empty status.
"""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import timedelta
from typing import Any

from rewind.api import HistoryEntry, ModelReleaseSpec, ModelReleaseStatus, Outcome, Phase
from rewind.engine import Archive, EnsureRevision, SetRoutes, SnapshotRevision, decide
from tests.unit.test_engine_kit import (
    FAIL,
    PASS,
    T0,
    World,
    actions_of,
    make_policy,
    make_spec,
    promoted_world,
)

SOURCE = "2 ControllerRevisions labelled rewind.dev/release=fraud in risk"


def fails(*bad: int) -> Any:
    """Analysis verdicts: the listed revisions fail, every other passes."""
    return lambda rev, _now: FAIL if rev in bad else PASS


def rolled_back_world(**kwargs: Any) -> World:
    """r1 Promoted, r2 failed its analysis and was rolled back; the spec still says r2."""
    w = promoted_world(make_policy(), verdicts=fails(2), **kwargs)
    w.release(make_spec("2.0.0"))
    w.settle()
    assert w.phase() == Phase.ROLLED_BACK and w.status.stable_revision == 1
    return w


def recreate(
    old: World, spec: ModelReleaseSpec | None = None, *, ready_after: float = 5.0, **kw: Any
) -> World:
    """Delete the ModelRelease and apply it again: Deployments and routes are gone (they
    were owned by the old object), snapshots and history records survive."""
    return World(
        old.policy,
        spec=spec or old.spec,
        now=old.now + timedelta(minutes=5),
        snapshots=dict(old.snapshots),
        archive=Archive(tuple(old.status.history), source=SOURCE),
        verdicts=old.verdicts,
        ready_after=ready_after,
        **kw,
    )


def route_writes(w: World) -> list[dict[int, int]]:
    """The routes each decision asked for, repeats (level-based re-emits) left out."""
    out: list[dict[int, int]] = []
    for d in w.decisions:
        for a in actions_of(d, SetRoutes):
            if not out or out[-1] != dict(a.weights):
                out.append(dict(a.weights))
    return out


def first_route_write(w: World) -> int:
    """Index of the first decision that wrote routes."""
    return next(i for i, d in enumerate(w.decisions) if actions_of(d, SetRoutes))


def ensured(w: World) -> set[int]:
    return {a.revision for d in w.decisions for a in actions_of(d, EnsureRevision)}


# --------------------------------------------------------------------------------------
# The issue: r1 Promoted, r2 RolledBack, Git still says r2
# --------------------------------------------------------------------------------------


def test_a_recreated_release_comes_back_rolled_back_with_r1_serving() -> None:
    w = recreate(rolled_back_world())
    first = w.step()
    # Adopted at once: r2 is known to have failed, r1 is the last known-good.
    assert w.phase() == Phase.PENDING
    assert (w.status.stable_revision, w.status.current_revision) == (1, 2)
    assert w.status.candidate_revision == 0
    assert {e.revision: e.outcome for e in w.status.history} == {
        1: Outcome.PROMOTED, 2: Outcome.ROLLED_BACK,
    }
    # r1 is re-created from its snapshot; no route is written before it is Available.
    assert actions_of(first, EnsureRevision) == [EnsureRevision(1, 2)]
    assert not actions_of(first, SetRoutes) and not actions_of(first, SnapshotRevision)
    assert "restoring the last known-good r1" in w.status.message
    adopted = [e for e in w.status.timeline if e.type == "HistoryAdopted"]
    assert len(adopted) == 1
    assert adopted[0].message.startswith(f"adopted 2 recorded revision(s) from {SOURCE}")
    assert "r1 Promoted, r2 RolledBack; last known-good r1; the spec is r2" in adopted[0].message
    assert any(e.reason == "HistoryAdopted" for e in w.events)
    ready = w.condition("Ready")
    assert ready[0] == "False" and w.condition("Reconciling")[0] == "True"

    w.step(2)
    assert w.phase() == Phase.PENDING and w.routes is None  # r1 not Available yet
    w.step(3)  # r1 Available: routes written, read back, then the recorded phase
    assert w.weights() == {1: 100}
    assert w.phase() == Phase.ROLLED_BACK
    assert w.status.routes.in_effect
    assert w.status.message.startswith("r2 rolled back; r1 serves 100%: ")
    assert "error-rate" in w.status.message  # the recorded reason
    assert w.timeline_types().count("Restored") == 1
    # Not a rollback: nothing for the metrics to count, r2 never ran nor got users.
    assert "RollbackStarted" not in w.timeline_types()
    assert route_writes(w) == [{1: 100}]
    assert ensured(w) == {1}
    stalled = w.condition("Stalled")
    assert stalled[0] == "True" and stalled[1] == "RolledBack"
    assert "rewind.dev/retry=true" in stalled[2]

    # Nothing more happens on its own.
    w.run(600)
    assert w.phase() == Phase.ROLLED_BACK and w.weights() == {1: 100}
    assert 2 not in w.deployments


def test_retry_after_recreation_runs_r2_through_the_normal_analysis() -> None:
    w = recreate(rolled_back_world())
    w.run_until(lambda x: x.phase() == Phase.ROLLED_BACK)
    w.verdicts = fails()  # the cause was fixed outside the spec
    w.act("retry")
    assert w.phase() == Phase.PROGRESSING and w.status.candidate_revision == 2
    w.settle()
    assert w.phase() == Phase.PROMOTED and w.status.stable_revision == 2
    assert route_writes(w) == [{1: 100}, {1: 90, 2: 10}, {1: 50, 2: 50}, {2: 100}]
    assert [e.revision for e in w.status.history] == [1, 2]  # no new revision number
    measured = {m.revision for m in w.status.analysis.measurements}
    assert measured == {2}


def test_retry_after_recreation_rolls_back_again_when_r2_still_fails() -> None:
    w = recreate(rolled_back_world())
    w.run_until(lambda x: x.phase() == Phase.ROLLED_BACK)
    w.act("retry")
    w.settle()
    assert w.phase() == Phase.ROLLED_BACK and w.weights() == {1: 100}
    assert route_writes(w) == [{1: 100}, {1: 90, 2: 10}, {1: 100}]
    assert w.timeline_types().count("RollbackStarted") == 1


def test_a_new_spec_after_recreation_is_the_next_revision_against_the_known_good() -> None:
    old = rolled_back_world()
    w = recreate(old, make_spec("3.0.0"))
    w.step()
    # r3, never r1 again nor r2's number: against stable r1, through the canary.
    assert w.phase() == Phase.PROGRESSING
    assert (w.status.candidate_revision, w.status.stable_revision) == (3, 1)
    created = [e for e in w.status.timeline if e.type == "RevisionCreated"]
    assert len(created) == 1 and "r3 (against stable r1)" in created[0].message
    assert "the spec is new: it becomes r3" in w.status.timeline[0].message
    assert w.snapshots[3] != w.snapshots[1]
    w.settle()
    assert w.phase() == Phase.PROMOTED and w.status.stable_revision == 3
    # r1 got users only once it was Available (its Deployment, re-created together with
    # r3's, was ready 5 s later: by then r3 had passed stage Ready); r2 never.
    writes = route_writes(w)
    assert writes == [{1: 90, 3: 10}, {1: 50, 3: 50}, {3: 100}], writes
    assert w.decided_at[first_route_write(w)] >= w.decided_at[0] + timedelta(seconds=5)
    assert 2 not in ensured(w)
    assert {e.revision: e.outcome for e in w.status.history} == {
        1: Outcome.PROMOTED, 2: Outcome.ROLLED_BACK, 3: Outcome.PROMOTED,
    }


def test_a_canary_step_waits_for_the_restored_stable_to_be_available() -> None:
    """r3's candidate is up before r1 is: the first step's routes wait for r1 too."""
    old = rolled_back_world()
    w = recreate(old, make_spec("3.0.0"), ready_after=0.0)
    w.broken.add(1)
    w.run(60, dt=10)
    assert w.routes is None
    assert w.status.current_step == 1 and w.status.step_started_at is None
    assert "waiting for its routes to take effect" in w.status.message
    w.broken.discard(1)
    w.run_until(lambda x: x.routes is not None)
    assert w.weights() == {1: 90, 3: 10}


def test_revision_numbers_never_repeat_across_recreation() -> None:
    w = promoted_world(make_policy(), releases=4)
    w = recreate(w, make_spec("9.0.0"))
    w.step()
    assert w.status.candidate_revision == 5
    assert [e.revision for e in w.status.history] == [1, 2, 3, 4, 5]


# --------------------------------------------------------------------------------------
# Other recorded states
# --------------------------------------------------------------------------------------


def test_a_recreated_promoted_release_is_promoted_once_its_routes_are_read_back() -> None:
    old = promoted_world(make_policy(), releases=2)
    w = recreate(old)
    w.step()
    assert w.phase() == Phase.PENDING and w.status.stable_revision == 2
    # The previous stable was kept warm: its Deployment went with the object: Retired.
    assert {e.revision: e.outcome for e in w.status.history} == {
        1: Outcome.RETIRED, 2: Outcome.PROMOTED,
    }
    w.run_until(lambda x: x.phase() == Phase.PROMOTED, dt=1)
    assert w.weights() == {2: 100} and w.status.routes.in_effect
    assert w.condition("Ready")[0] == "True"
    assert w.status.message == "r2 promoted: serving 100% of traffic"
    assert ensured(w) == {2}
    # Break glass still finds the previous known-good revision in the adopted history.
    w.act("rollback", "bad outputs")
    w.settle()
    assert w.phase() == Phase.ROLLED_BACK and w.status.stable_revision == 1
    assert w.weights() == {1: 100}


def test_a_rollout_interrupted_by_the_deletion_starts_again() -> None:
    w = promoted_world(make_policy())
    w.release(make_spec("2.0.0"))
    w.run_until(lambda x: x.status.current_step == 2 and x.status.step_started_at is not None)
    assert w.weights() == {1: 50, 2: 50}
    w = recreate(w)
    w.step()
    assert w.phase() == Phase.PROGRESSING
    assert (w.status.candidate_revision, w.status.stable_revision) == (2, 1)
    assert w.status.current_step == 0  # from the beginning: the analysis starts over
    restarted = [e for e in w.status.timeline if e.type == "RolloutRestarted"]
    assert len(restarted) == 1 and "against stable r1" in restarted[0].message
    w.settle()
    assert w.phase() == Phase.PROMOTED and w.status.stable_revision == 2
    assert route_writes(w) == [{1: 90, 2: 10}, {1: 50, 2: 50}, {2: 100}]
    assert w.decided_at[first_route_write(w)] >= w.decided_at[0] + timedelta(seconds=5)


def test_a_current_revision_recorded_as_superseded_is_released_again() -> None:
    """Its successor's record was lost (a crash before the record write, then the deletion)
    and Git went back to it: never judged, so through the analysis again, never promoted
    as it is."""
    w = promoted_world(make_policy())
    w.release(make_spec("2.0.0"))
    w.step(10)
    w.release(make_spec("3.0.0"))
    assert w.outcome(2) == "Superseded"
    entries = tuple(e for e in w.status.history if e.revision != 3)
    w = recreate(w, make_spec("2.0.0"))
    w.archive = replace(w.archive, entries=entries)
    w.step()
    assert w.phase() == Phase.PROGRESSING
    assert (w.status.candidate_revision, w.status.stable_revision) == (2, 1)
    assert "RolloutRestarted" in w.timeline_types()
    w.settle()
    assert w.phase() == Phase.PROMOTED and w.status.stable_revision == 2
    assert {1: 90, 2: 10} in route_writes(w)


def test_an_interrupted_rollout_is_superseded_when_the_spec_moved_on() -> None:
    w = promoted_world(make_policy())
    w.release(make_spec("2.0.0"))
    w.step(10)
    assert w.status.candidate_revision == 2
    w = recreate(w, make_spec("3.0.0"))
    w.step()
    r2 = next(e for e in w.status.history if e.revision == 2)
    assert r2.outcome == Outcome.SUPERSEDED and "interrupted" in r2.reason
    assert w.status.candidate_revision == 3 and w.status.stable_revision == 1


def test_a_first_release_that_failed_comes_back_failed_without_routes() -> None:
    w = World(make_policy(progress_deadline="30s"), broken={1})
    w.step()
    w.run_until(lambda x: x.phase() == Phase.FAILED)
    assert w.status.stable_revision == 0
    w = recreate(w)
    w.step()
    assert w.phase() == Phase.FAILED and w.status.current_revision == 1
    assert w.routes is None and not ensured(w)
    assert "HistoryAdopted" in w.timeline_types() and "Restored" in w.timeline_types()
    w.act("retry")
    w.settle()
    assert w.phase() == Phase.PROMOTED and w.weights() == {1: 100}


def test_a_restored_stable_that_never_becomes_available_stalls() -> None:
    w = recreate(rolled_back_world())
    w.broken.add(1)
    w.run(5 * 60 + 10, dt=10)
    assert w.phase() == Phase.PENDING and w.routes is None
    stalled = w.condition("Stalled")
    assert stalled[0] == "True" and "restored r1 is not Available" in stalled[2]
    assert 2 not in w.deployments


def test_forgotten_history_starts_afresh_as_r1() -> None:
    w = World(make_policy(), archive=Archive((), source="ControllerRevisions", forgotten=2))
    w.step()
    notes = [e for e in w.status.timeline if e.type == "HistoryForgotten"]
    assert len(notes) == 1 and "forgot 2 recorded revision(s)" in notes[0].message
    w.settle()
    assert w.phase() == Phase.PROMOTED and w.status.stable_revision == 1


def test_the_archive_is_ignored_once_the_status_has_history() -> None:
    old = rolled_back_world()
    inp = old.inputs()
    assert old.status.history
    other = HistoryEntry(revision=9, spec_hash="f" * 16, outcome=Outcome.PROMOTED,
                         promoted_at=T0)
    with_archive = replace(inp, archive=Archive((other,), source=SOURCE))
    assert decide(with_archive) == decide(inp)


def test_adoption_does_not_depend_on_the_order_records_were_read() -> None:
    old = promoted_world(make_policy(), releases=3, verdicts=fails())
    old.release(make_spec("4.0.0"))
    old.verdicts = fails(4)
    old.settle()
    entries = list(old.status.history)
    results = []
    for seed in range(4):
        random.Random(seed).shuffle(entries)
        inp = recreate(old).inputs()
        results.append(decide(replace(inp, archive=Archive(tuple(entries), source=SOURCE))))
    assert all(r == results[0] for r in results)
    assert results[0].status.stable_revision == 3


def test_more_records_than_the_history_holds_keep_the_known_good_and_the_newest() -> None:
    entries = [
        HistoryEntry(revision=n, spec_hash=f"{n:016x}", outcome=Outcome.ROLLED_BACK,
                     created_at=T0, finished_at=T0, reason="bad")
        for n in range(1, 31)
    ]
    entries[2] = entries[2].model_copy(
        update={"outcome": Outcome.PROMOTED, "promoted_at": T0, "finished_at": None}
    )
    w = World(make_policy(), archive=Archive(tuple(entries), source=SOURCE))
    w.snapshots = {n: f"{n:016x}" for n in range(1, 31)}
    w.step()
    revisions = [e.revision for e in w.status.history]
    assert len(revisions) == 20 and 3 in revisions and revisions[-1] == 31
    assert w.status.stable_revision == 3 and w.status.candidate_revision == 31


def test_status_without_history_and_no_records_is_a_first_release() -> None:
    w = World(make_policy(), archive=Archive())
    w.step()
    assert w.status.candidate_revision == 1 and "HistoryAdopted" not in w.timeline_types()
    assert ModelReleaseStatus().history == []
