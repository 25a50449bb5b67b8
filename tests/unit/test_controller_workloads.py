"""The controller's part in pod templates: when a new revision's Deployment is dry-run, and
what the engine is told of each revision's pods."""

from __future__ import annotations

from rewind.adapters.base import RevisionObservation
from rewind.api import HistoryEntry, ModelReleaseStatus, Outcome
from rewind.controller import may_start, revision_states


def status(*entries: tuple[int, str, Outcome]) -> ModelReleaseStatus:
    return ModelReleaseStatus(history=[
        HistoryEntry(revision=r, spec_hash=h, outcome=o) for r, h, o in entries
    ])


def test_a_new_spec_or_a_failed_one_is_dry_run_others_are_not() -> None:
    assert may_start(ModelReleaseStatus(), "aaaa")  # a first release
    s = status((1, "aaaa", Outcome.PROMOTED), (2, "bbbb", Outcome.FAILED))
    assert may_start(s, "cccc")  # a new spec
    assert may_start(s, "bbbb")  # a retry of the failed revision
    assert not may_start(s, "aaaa")  # the stable, or a revert to it: nothing new runs
    # A spec released again later (outside the rollback window): its newest revision counts.
    again = status((1, "aaaa", Outcome.FAILED), (2, "bbbb", Outcome.PROMOTED),
                   (3, "aaaa", Outcome.PROMOTED))
    assert not may_start(again, "aaaa")


def test_pods_without_the_proxy_reach_the_engine_per_revision() -> None:
    observed = {
        1: RevisionObservation(revision=1, replicas=2, ready_replicas=2, available=True),
        2: RevisionObservation(revision=2, replicas=1, ready_replicas=1, available=True),
    }
    states = revision_states(observed, {1: (2, ("fraud-r1-a", "fraud-r1-b")), 2: (1, ())})
    assert (states[1].running_pods, states[1].unmeshed_pods) == (2, ("fraud-r1-a", "fraud-r1-b"))
    assert (states[2].running_pods, states[2].unmeshed_pods) == (1, ())
    plain = revision_states(observed)
    assert plain[1].unmeshed_pods == () and plain[1].running_pods == 0
