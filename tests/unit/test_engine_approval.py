"""rollback.mode: approval — pending decisions, N-of-M approvals, rejects and timeouts."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from rewind.api import Phase
from rewind.engine import (
    HumanAction,
    RemoveAnnotation,
    SetRoutes,
    analysis_due,
    annotate_command,
    decide,
)
from tests.unit.test_engine_kit import (
    FAIL,
    INCONCLUSIVE,
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


def awaiting(
    required: int = 1, timeout: str = "15m", on_timeout: str = "Rollback", **policy: Any
) -> World:
    """A canary at 10% whose first failed round asked humans for a rollback."""
    approval = {"requiredApprovers": required, "timeout": timeout, "onTimeout": on_timeout}
    w = promoted_world(make_policy(approval=approval, **policy))
    w.release(make_spec("2.0.0"))
    at_step(w, 1)
    w.verdicts = lambda _r, _n: FAIL
    w.step(10)
    assert w.phase() == Phase.AWAITING_APPROVAL
    w.verdicts = lambda _r, _n: PASS
    return w


def test_failed_analysis_in_approval_mode_asks_humans_and_holds_traffic() -> None:
    w = awaiting(required=2)
    d = w.decisions[-1]
    s = w.status
    pd = s.pending_decision
    assert pd is not None
    assert pd.required_approvers == 2 and pd.approvals == []
    assert pd.decided_at == w.now and pd.expires_at == w.now + timedelta(minutes=15)
    assert "error-rate 0.12 > max 0.05" in pd.reason
    assert [m.verdict.value for m in pd.evidence][-1] == "Fail"
    assert w.weights() == {1: 90, 2: 10}
    warning = [e for e in events(d, "Warning") if e.reason == "ApprovalRequested"]
    assert len(warning) == 1
    assert (
        "kubectl annotate modelrelease/fraud -n risk rewind.dev/approve-rollback=true"
        in warning[0].message
    )
    assert "rewind.dev/reject-rollback=" in warning[0].message
    assert w.condition("Degraded")[:2] == ("True", "AnalysisFailed")
    assert w.condition("Progressing")[0] == "True"
    # Traffic holds for as long as nobody decides; no analysis runs meanwhile.
    assert not analysis_due(w.status, w.policy, w.now + timedelta(minutes=5))
    w.run(14 * 60)
    assert w.phase() == Phase.AWAITING_APPROVAL and w.weights() == {1: 90, 2: 10}
    assert d.requeue_after == 15 * 60


def test_with_client_stamps_the_printed_commands_name_their_user() -> None:
    """Validation-only admission (the chart's humanActions.stamp client): the approver's
    command must set rewind.dev/<action>-by to their own name, so the one printed does."""
    whoami = "$(kubectl auth whoami -o jsonpath='{.status.userInfo.username}')"
    w = promoted_world(make_policy(approval={"requiredApprovers": 1, "timeout": "15m"}))
    w.actor_stamp = "client"
    w.release(make_spec("2.0.0"))
    at_step(w, 1)
    w.verdicts = lambda _r, _n: FAIL
    d = w.step(10)
    (warning,) = [e for e in events(d, "Warning") if e.reason == "ApprovalRequested"]
    assert (
        "kubectl annotate modelrelease/fraud -n risk rewind.dev/approve-rollback=true "
        f'rewind.dev/approve-rollback-by="{whoami}" ;' in warning.message
    )
    assert (
        "rewind.dev/reject-rollback=<reason> "
        f'rewind.dev/reject-rollback-by="{whoami}"' in warning.message
    )
    assert annotate_command("fraud", "risk", "rewind.dev/promote", "true") == (
        "kubectl annotate modelrelease/fraud -n risk rewind.dev/promote=true"
    )
    assert annotate_command("", "", "rewind.dev/retry", "true", actor_stamp="client") == (
        "kubectl annotate modelrelease/<name> -n <namespace> rewind.dev/retry=true "
        f'rewind.dev/retry-by="{whoami}"'
    )


def test_one_approval_rolls_back_at_once_and_records_who() -> None:
    w = awaiting(required=1)
    d = w.act("approve-rollback", user="alice", advance=30)
    s = w.status
    assert s.phase == Phase.ROLLED_BACK and w.weights() == {1: 100}
    assert RemoveAnnotation("rewind.dev/approve-rollback") in d.actions
    assert s.pending_decision is None
    approved = [e for e in s.timeline if e.type == "Approved"]
    assert approved[-1].user == "alice" and "(1/1)" in approved[-1].message
    assert "approved by alice" in s.history[-1].reason


def test_n_of_m_needs_distinct_users_and_duplicates_count_once() -> None:
    w = awaiting(required=3)
    w.act("approve-rollback", user="alice")
    d = w.act("approve-rollback", user="alice", advance=5)
    pd = w.status.pending_decision
    assert pd is not None and [a.user for a in pd.approvals] == ["alice"]
    notes = [e for e in w.status.timeline[-2:] if e.type == "ActionIgnored"]
    assert "duplicate approval by alice counts once (1/3)" in notes[0].message
    # The same value came back: it is left on the object (it may be a GitOps tool's copy).
    assert RemoveAnnotation("rewind.dev/approve-rollback") not in d.actions
    assert "left on the object" in notes[1].message
    w.act("approve-rollback", user="bob", advance=5)
    assert w.phase() == Phase.AWAITING_APPROVAL and w.weights() == {1: 90, 2: 10}
    w.act("approve-rollback", user="carol", advance=5)
    s = w.status
    assert s.phase == Phase.ROLLED_BACK and w.weights() == {1: 100}
    assert "approved by alice, bob, carol" in s.history[-1].reason


def test_unknown_user_counts_as_one_anonymous_approver() -> None:
    w = awaiting(required=2)
    w.act("approve-rollback", user="")
    w.act("approve-rollback", user="", advance=5)
    pd = w.status.pending_decision
    assert pd is not None and [a.user for a in pd.approvals] == [""]
    assert w.phase() == Phase.AWAITING_APPROVAL
    w.act("approve-rollback", user="dave", advance=5)
    assert w.phase() == Phase.ROLLED_BACK
    assert "approved by anonymous, dave" in w.status.history[-1].reason


def test_reject_resumes_the_rollout_with_counters_reset() -> None:
    w = awaiting(failure_limit=1)
    d = w.act("reject-rollback", value="known noisy metric", user="erin", advance=10)
    s = w.status
    assert s.phase == Phase.PROGRESSING and s.pending_decision is None
    assert (s.analysis.failures, s.analysis.consecutive_failures) == (0, 0)
    assert RemoveAnnotation("rewind.dev/reject-rollback") in d.actions
    rejected = s.timeline[-1]
    assert rejected.type == "Rejected" and rejected.user == "erin"
    assert "known noisy metric" in rejected.message
    assert w.weights() == {1: 90, 2: 10}
    # It needs a fresh passing round before moving on, then completes normally.
    w.settle()
    assert w.phase() == Phase.PROMOTED and w.status.stable_revision == 2


def test_after_a_reject_a_new_failure_asks_again() -> None:
    w = awaiting()
    w.act("reject-rollback", value="flaky", user="erin")
    w.verdicts = lambda _r, _n: FAIL
    w.step(10)
    assert w.phase() == Phase.AWAITING_APPROVAL
    assert w.timeline_types().count("ApprovalRequested") == 2


def test_timeout_with_on_timeout_rollback_rolls_back() -> None:
    w = awaiting(timeout="10m", on_timeout="Rollback")
    decided = w.now
    w.run(590)
    assert w.phase() == Phase.AWAITING_APPROVAL
    w.step(10)
    s = w.status
    assert w.now - decided == timedelta(minutes=10)
    assert s.phase == Phase.ROLLED_BACK and w.weights() == {1: 100}
    assert "ApprovalTimedOut" in w.timeline_types()
    assert "approval timed out" in s.history[-1].reason


def test_timeout_with_on_timeout_resume_continues_the_rollout() -> None:
    w = awaiting(timeout="10m", on_timeout="Resume")
    w.run(600)
    s = w.status
    assert s.phase == Phase.PROGRESSING and s.pending_decision is None
    assert s.analysis.failures == 0
    assert "onTimeout Resume" in s.timeline[-1].message
    w.settle()
    assert w.phase() == Phase.PROMOTED


def test_approval_after_the_timeout_was_acted_upon_is_ignored_with_a_note() -> None:
    w = awaiting(timeout="10m", on_timeout="Resume")
    w.run(600)
    assert w.phase() == Phase.PROGRESSING
    w.verdicts = lambda _r, _n: INCONCLUSIVE  # keep the step where it is
    d = w.act("approve-rollback", user="alice", advance=1)
    s = w.status
    assert s.phase == Phase.PROGRESSING and w.weights() == {1: 90, 2: 10}
    assert RemoveAnnotation("rewind.dev/approve-rollback") in d.actions
    note = s.timeline[-1]
    assert note.type == "ActionIgnored" and note.user == "alice"
    assert "no rollback decision is pending" in note.message
    assert "timed out at" in note.message and "acted upon" in note.message


def test_approval_seen_in_the_same_call_as_the_expiry_is_late() -> None:
    """Timers that fell due before this call are applied before the annotations it sees."""
    w = awaiting(timeout="10m", on_timeout="Resume")
    w.run(590)
    w.annotate("approve-rollback", user="alice")
    w.step(10)
    s = w.status
    assert s.phase == Phase.PROGRESSING and w.weights() == {1: 90, 2: 10}
    assert [e.type for e in s.timeline[-2:]] == ["ApprovalTimedOut", "ActionIgnored"]


def test_reject_when_nothing_is_pending_is_ignored() -> None:
    w = promoted_world()
    d = w.act("reject-rollback", value="x", user="bob")
    assert w.phase() == Phase.PROMOTED
    assert w.status.timeline[-1].type == "ActionIgnored"
    assert RemoveAnnotation("rewind.dev/reject-rollback") in d.actions


def test_break_glass_while_awaiting_approval_rolls_back_at_once() -> None:
    w = awaiting(required=3)
    w.act("rollback", value="pager went off", user="oncall")
    s = w.status
    assert s.phase == Phase.ROLLED_BACK and s.pending_decision is None
    assert w.weights() == {1: 100}
    assert "break glass by oncall: pager went off" in s.history[-1].reason


def test_spec_change_while_awaiting_approval_supersedes_and_clears_the_decision() -> None:
    w = awaiting()
    d = w.release(make_spec("3.0.0"))
    s = d.status
    assert s.pending_decision is None and s.phase == Phase.PROGRESSING
    assert w.outcome(2) == "Superseded" and s.candidate_revision == 3
    assert routes_of(d)[0] == SetRoutes({1: 100}, None, 0)  # then r3 starts its canary


def test_promote_while_awaiting_approval_is_ignored() -> None:
    w = awaiting()
    w.act("promote", user="mallory")
    assert w.phase() == Phase.AWAITING_APPROVAL and w.weights() == {1: 90, 2: 10}
    assert "ignored" in w.status.timeline[-1].message


def test_approvals_after_the_rollback_do_not_count_again() -> None:
    w = awaiting(required=1)
    w.act("approve-rollback", user="alice")
    assert w.phase() == Phase.ROLLED_BACK
    d = w.act("approve-rollback", user="bob")
    assert w.phase() == Phase.ROLLED_BACK
    # Bob's approval is his own (not alice's coming back): one note, and it is removed.
    assert "no rollback decision is pending" in w.status.timeline[-1].message
    assert w.status.timeline[-2].type != "ActionIgnored"
    assert RemoveAnnotation("rewind.dev/approve-rollback") in d.actions


def test_approvals_from_several_users_in_one_call_are_counted_together() -> None:
    w = awaiting(required=2)
    acts = [
        HumanAction("approve-rollback", "true", "alice"),
        HumanAction("approve-rollback", "true", "bob"),
    ]
    d = decide(w.inputs(actions=acts))
    assert d.status.phase == Phase.ROLLING_BACK  # RolledBack once the routes are read back
    assert actions_of(d, SetRoutes) == [SetRoutes({1: 100}, None, 0)]
    assert actions_of(d, RemoveAnnotation) == [RemoveAnnotation("rewind.dev/approve-rollback")]


def test_approve_and_reject_in_the_same_call_the_rollback_wins() -> None:
    w = awaiting(required=1)
    acts = [
        HumanAction("reject-rollback", "looks fine", "bob"),
        HumanAction("approve-rollback", "true", "alice"),
    ]
    d = decide(w.inputs(actions=acts))
    assert d.status.phase == Phase.ROLLING_BACK
    notes = [e.message for e in d.status.timeline if e.type == "ActionIgnored"]
    assert len(notes) == 1 and "rejection by bob ignored" in notes[0]



@pytest.mark.parametrize("killed", [False, True])
def test_a_duplicate_approval_is_removed_even_when_another_approver_used_its_value_before(
    killed: bool,
) -> None:
    """The soak's finding (bench_soak, approval-approve): an approver repeats their approval
    with another spelling (``True``); an earlier decision saw another approver do the same.
    The same value by another user is another action (approvals are per user): the repeat
    counts once, with one note, and is removed like any duplicate, not left on the object
    as if a GitOps tool had put the other approver's annotation back. ``killed``: the
    operator dies after storing the status that consumed it, before removing it."""
    w = awaiting(required=2)
    w.act("approve-rollback", "true", user="u1")
    w.act("approve-rollback", "True", user="u1")  # counts once
    w.act("approve-rollback", "true", user="u2")
    assert w.phase() == Phase.ROLLED_BACK and w.status.stable_revision == 1
    w.step(5)  # the last removal is seen
    assert ("True", "u1") in [(c.value, c.user) for c in w.status.consumed_actions]
    # The next release fails its analysis and asks again: the same flow, new approvers.
    w.verdicts = lambda _r, _n: PASS
    w.release(make_spec("3.0.0"))
    w.settle()
    w.verdicts = lambda _r, _n: FAIL
    w.release(make_spec("4.0.0"))
    w.run_until(lambda x: x.status.phase == Phase.AWAITING_APPROVAL)
    w.act("approve-rollback", "true", user="u3")
    w.step(1)  # its removal is seen
    before = len(w.status.timeline)
    w.unsent_removals = killed
    d = w.act("approve-rollback", "True", user="u3")
    if killed:
        assert w.annotations  # consumed, stored, never removed: the operator restarts
        w.restart()
        w.unsent_removals = False
        d = w.step(3)
    new = w.status.timeline[before:]
    assert [(e.type, e.user) for e in new] == [("ActionIgnored", "u3")]
    assert "duplicate approval by u3 counts once (1/2)" in new[0].message
    assert RemoveAnnotation("rewind.dev/approve-rollback") in d.actions
    w.step(1)
    assert not w.annotations
    assert not any(c.keep for c in w.status.consumed_actions)
    w.act("approve-rollback", "true", user="u4")
    assert w.phase() == Phase.ROLLED_BACK and w.status.stable_revision == 3
    assert "approved by u3, u4" in w.status.history[-1].reason
