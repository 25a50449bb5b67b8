"""Human action annotations: each acted on at most once (the consumedActions ledger), values
checked, and what humans wrote kept within the status bounds."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from rewind.api import (
    MAX_CONSUMED_ACTIONS,
    MAX_HUMAN_TEXT,
    MAX_MESSAGE,
    ModelReleaseStatus,
    Phase,
)
from rewind.engine import (
    CONSUMED_RECHECK,
    REMOVAL_PATIENCE,
    ActionKind,
    EmitEvent,
    HumanAction,
    RemoveAnnotation,
    SetRoutes,
    decide,
)
from tests.unit.test_engine_kit import (
    FAIL,
    PASS,
    World,
    actions_of,
    at_step,
    make_policy,
    make_spec,
    promoted_world,
    status_strings,
)

TWO_GATES: dict[str, Any] = {
    "canary": {
        "steps": [
            {"weight": 10, "pause": {"manual": True}},
            {"weight": 30, "pause": {"manual": True}},
            {"weight": 60},
        ]
    }
}


def at_first_gate() -> World:
    w = promoted_world(make_policy(TWO_GATES, metrics=()))
    w.release(make_spec("2.0.0"))
    at_step(w, 1)
    assert w.phase() == Phase.PAUSED and w.weights() == {1: 90, 2: 10}
    return w


def awaiting(required: int = 1) -> World:
    approval = {"requiredApprovers": required, "timeout": "15m", "onTimeout": "Rollback"}
    w = promoted_world(make_policy(approval=approval))
    w.release(make_spec("2.0.0"))
    at_step(w, 1)
    w.verdicts = lambda _r, _n: FAIL
    w.step(10)
    assert w.phase() == Phase.AWAITING_APPROVAL
    w.verdicts = lambda _r, _n: PASS
    return w


def rolled_back() -> World:
    w = promoted_world()
    w.release(make_spec("2.0.0"))
    at_step(w, 1)
    w.verdicts = lambda _r, _n: FAIL
    w.step(10)
    assert w.phase() == Phase.ROLLED_BACK
    w.verdicts = lambda _r, _n: PASS
    return w


def mid_canary() -> World:
    w = promoted_world()
    w.release(make_spec("2.0.0"))
    at_step(w, 1)
    return w


# --------------------------------------------------------------------------------------
# The ledger: a re-delivered annotation is never acted on twice
# --------------------------------------------------------------------------------------


def test_one_promote_passes_one_manual_gate_even_when_its_removal_is_lost() -> None:
    """[10 manual, 30 manual, 60]: the status is written, the removal is lost, the next
    reconcile sees the same promote again: it must not pass the second gate too."""
    w = at_first_gate()
    w.lose_removals = True
    d = w.act("promote", user="alice")
    assert w.phase() == Phase.PAUSED and w.weights() == {1: 70, 2: 30}
    assert RemoveAnnotation("rewind.dev/promote") in d.actions
    entry = w.status.consumed_actions[-1]
    assert (entry.key, entry.value, entry.user, entry.at) == (
        "rewind.dev/promote",
        "true",
        "alice",
        w.now,
    )
    timeline = list(w.status.timeline)
    for _ in range(5):  # delivered again and again while the removal keeps failing
        d = w.step(10)
        assert w.phase() == Phase.PAUSED and w.weights() == {1: 70, 2: 30}
        assert actions_of(d, RemoveAnnotation) == [RemoveAnnotation("rewind.dev/promote")]
        assert actions_of(d, EmitEvent) == []
        assert w.status.timeline == timeline
    w.lose_removals = False
    w.step(10)  # removed at last
    assert "rewind.dev/promote" not in w.annotations
    w.step(1)  # the operator sees it gone: the ledger remembers what it acted on
    [entry] = w.status.consumed_actions
    assert entry.gone_at == w.now and entry.target.startswith("r2 canary step 1/3 at 10%")
    w.act("promote", user="alice")  # the same value again passes another gate
    w.settle()
    assert w.phase() == Phase.PROMOTED and w.status.stable_revision == 2


def test_an_operator_down_for_minutes_after_consuming_an_annotation_still_removes_it() -> None:
    """Killed after storing the decision and before removing the annotation, then down (or
    crash-looping) longer than REMOVAL_PATIENCE: back, it removes the annotation. The time
    it was down proves nothing about anyone putting the annotation back (found by the crash
    soak: the promote was left on the object with a false note, and never removed)."""
    w = at_first_gate()
    w.unsent_removals = True
    w.act("promote", user="alice")
    assert w.phase() == Phase.PAUSED and w.weights() == {1: 70, 2: 30}
    assert "rewind.dev/promote" in w.annotations
    for _ in range(3):  # restarts that die again before sending anything
        w.now += timedelta(seconds=REMOVAL_PATIENCE)
        w.restart()
        w.step()
        assert "rewind.dev/promote" in w.annotations
    timeline = list(w.status.timeline)
    w.now += timedelta(seconds=REMOVAL_PATIENCE)
    w.restart()
    w.unsent_removals = False
    d = w.step()
    assert actions_of(d, RemoveAnnotation) == [RemoveAnnotation("rewind.dev/promote")]
    assert "rewind.dev/promote" not in w.annotations
    [entry] = w.status.consumed_actions
    assert not entry.keep and w.status.timeline == timeline  # no "left on the object" note
    w.step(1)  # the operator sees it gone
    [entry] = w.status.consumed_actions
    assert entry.gone_at == w.now and not entry.keep


def test_a_removal_sent_and_undone_for_its_patience_is_left_on_the_object() -> None:
    """The patience counts from the first removal sent: sent and lost (something puts the
    annotation back at once) for REMOVAL_PATIENCE, it is left there, with one note."""
    w = at_first_gate()
    w.lose_removals = True
    w.act("promote", user="alice")
    first_sent = w.now
    w.run(REMOVAL_PATIENCE, dt=10)
    assert not w.status.consumed_actions[-1].keep  # not yet: exactly the patience
    w.step(10)
    assert w.now > first_sent + timedelta(seconds=REMOVAL_PATIENCE)
    assert w.status.consumed_actions[-1].keep
    assert w.timeline_types().count("ActionIgnored") == 1
    d = w.step(10)
    assert actions_of(d, RemoveAnnotation) == []


def test_consuming_an_annotation_asks_for_a_prompt_look_to_see_it_removed() -> None:
    w = at_first_gate()
    w.follow_route_writes = False  # this one decision, before the look at its routes
    w.annotate("promote", user="alice")
    d = w.step()
    assert d.status.consumed_actions and d.requeue_after == CONSUMED_RECHECK
    d = w.step(CONSUMED_RECHECK)
    [entry] = d.status.consumed_actions  # remembered, seen gone
    assert entry.gone_at == w.now and d.requeue_after != CONSUMED_RECHECK
    assert actions_of(d, RemoveAnnotation) == []
    # Nothing about the annotation; only the next step, now read back in effect.
    assert [e.reason for e in actions_of(d, EmitEvent)] == ["StepStarted", "Paused"]


def test_a_changed_value_is_a_new_action_even_before_the_old_one_is_seen_removed() -> None:
    w = at_first_gate()
    w.lose_removals = True
    w.act("promote", value="true", user="alice")
    assert w.status.current_step == 2
    w.annotate("promote", value="TRUE", user="alice")  # overwritten: a new annotation
    w.step(10)
    assert w.status.current_step == 3
    ledger = [(c.value, c.user, c.gone_at is None) for c in w.status.consumed_actions]
    assert ledger == [("true", "alice", False), ("TRUE", "alice", True)]


def test_another_user_setting_the_same_value_is_a_new_action() -> None:
    w = at_first_gate()
    w.lose_removals = True
    w.act("promote", user="alice")
    w.annotate("promote", user="bob")
    w.step(10)
    assert w.status.current_step == 3


def _scenario(kind: ActionKind) -> tuple[World, str]:
    value = "a reason" if kind in ("reject-rollback", "rollback") else "true"
    if kind in ("approve-rollback", "reject-rollback"):
        return awaiting(required=2), value
    if kind == "retry":
        return rolled_back(), value
    if kind == "promote":
        return at_first_gate(), value
    return mid_canary(), value


@pytest.mark.parametrize(
    "kind", ["approve-rollback", "reject-rollback", "rollback", "promote", "retry"]
)
def test_every_action_redelivered_is_only_removed_again(kind: ActionKind) -> None:
    w, value = _scenario(kind)
    w.lose_removals = True
    first = w.act(kind, value=value, user="alice")
    assert [e for e in w.status.timeline if e.user == "alice"]  # acted on (or noted)
    after = w.status
    for _ in range(3):
        inp = w.inputs(actions=list(w.annotations.values()))
        again = decide(inp)
        assert set(actions_of(again, RemoveAnnotation)) == set(
            actions_of(first, RemoveAnnotation)
        )
        assert actions_of(again, EmitEvent) == []
        assert again.status.timeline == after.timeline
        assert again.status.phase == after.phase
        assert again.status.pending_decision == after.pending_decision
        w.step(1, measurements=None)


def test_ignored_actions_are_recorded_in_the_ledger_too() -> None:
    w = promoted_world()
    w.lose_removals = True
    w.act("retry", user="bob")  # nothing to retry: ignored with a note
    assert w.status.timeline[-1].type == "ActionIgnored"
    assert [c.key for c in w.status.consumed_actions] == ["rewind.dev/retry"]
    n = len(w.status.timeline)
    d = w.step(10)
    assert len(w.status.timeline) == n and actions_of(d, EmitEvent) == []


def test_an_annotation_left_for_later_is_not_in_the_ledger() -> None:
    """A promote waiting for its candidate to be Available stays on the object, unrecorded."""
    w = at_first_gate()
    w.degraded.add(2)
    d = w.act("promote", user="alice")
    assert w.status.consumed_actions == [] and actions_of(d, RemoveAnnotation) == []
    assert w.status.timeline[-1].type == "PromoteWaiting"
    w.degraded.clear()
    w.step(10)
    assert w.status.current_step == 2 and "rewind.dev/promote" not in w.annotations


def test_a_promote_left_for_later_is_ignored_at_once_when_the_spec_change_moves_on() -> None:
    """Judged again after the machine settled: deciding again changes nothing."""
    w = at_first_gate()
    w.degraded.add(2)
    w.annotate("promote", user="alice")
    w.spec = make_spec("3.0.0")
    w.generation += 1
    d = w.step(10)  # World.step checks deciding again (same annotations) is a no-op
    assert d.status.candidate_revision == 3
    assert RemoveAnnotation("rewind.dev/promote") in d.actions
    assert "promote by alice ignored" in d.status.timeline[-1].message


def test_the_ledger_is_bounded() -> None:
    w = awaiting(required=3)
    many = MAX_CONSUMED_ACTIONS + 5
    acts = [HumanAction("approve-rollback", "true", f"user-{i:02}") for i in range(many)]
    d = decide(w.inputs(actions=acts))
    assert d.status.phase == Phase.ROLLING_BACK  # RolledBack once its routes are read back
    assert len(d.status.consumed_actions) == MAX_CONSUMED_ACTIONS
    ModelReleaseStatus.model_validate(d.status.model_dump(mode="json", by_alias=True))


# --------------------------------------------------------------------------------------
# Values: "true" means true; reasons must be given
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "value", "build"),
    [
        ("approve-rollback", "false", awaiting),
        ("approve-rollback", "", awaiting),
        ("approve-rollback", "yes", awaiting),
        ("promote", "false", at_first_gate),
        ("promote", "0", at_first_gate),
        ("retry", "no", rolled_back),
    ],
)
def test_a_value_other_than_true_is_ignored_with_a_note_saying_how(
    kind: ActionKind, value: str, build: Callable[[], World]
) -> None:
    w = build()
    before = w.status.model_copy(deep=True)
    routes = w.weights()
    d = w.act(kind, value=value, user="alice")
    s = w.status
    assert s.phase == before.phase and s.current_step == before.current_step
    assert s.pending_decision == before.pending_decision and w.weights() == routes
    assert RemoveAnnotation(f"rewind.dev/{kind}") in d.actions
    note = s.timeline[-1]
    assert note.type == "ActionIgnored" and note.user == "alice"
    assert f'the value is "{value}", not "true"' in note.message
    assert f"kubectl annotate modelrelease/fraud -n risk rewind.dev/{kind}=true" in note.message
    assert [e.reason for e in actions_of(d, EmitEvent)] == ["ActionIgnored"]


@pytest.mark.parametrize("value", ["true", "TRUE", " True ", "true\n"])
def test_true_is_case_insensitive_and_stripped(value: str) -> None:
    w = at_first_gate()
    w.act("promote", value=value, user="alice")
    assert w.status.current_step == 2 and w.weights() == {1: 70, 2: 30}


def test_approve_false_does_not_approve() -> None:
    w = awaiting(required=1)
    w.act("approve-rollback", value="false", user="alice")
    pd = w.status.pending_decision
    assert w.phase() == Phase.AWAITING_APPROVAL and pd is not None and pd.approvals == []
    w.act("approve-rollback", value="true", user="alice")
    assert w.phase() == Phase.ROLLED_BACK


@pytest.mark.parametrize("value", ["", "   "])
def test_a_rejection_without_a_reason_is_ignored(value: str) -> None:
    w = awaiting()
    d = w.act("reject-rollback", value=value, user="erin")
    assert w.phase() == Phase.AWAITING_APPROVAL and w.status.pending_decision is not None
    assert RemoveAnnotation("rewind.dev/reject-rollback") in d.actions
    note = w.status.timeline[-1]
    assert note.type == "ActionIgnored" and "no reason given" in note.message
    assert "rewind.dev/reject-rollback='<reason>'" in note.message


def test_break_glass_without_a_reason_is_ignored() -> None:
    w = mid_canary()
    d = w.act("rollback", value="", user="oncall")
    assert w.phase() == Phase.PROGRESSING and w.weights() == {1: 90, 2: 10}
    assert RemoveAnnotation("rewind.dev/rollback") in d.actions
    note = w.status.timeline[-1].message
    assert "break glass by oncall ignored: no reason given" in note
    assert "rewind.dev/rollback='<reason>'" in note


def test_any_reason_is_accepted_for_free_text_actions() -> None:
    w = mid_canary()
    w.act("rollback", value="false", user="oncall")  # a reason, however odd
    assert w.phase() == Phase.ROLLED_BACK
    assert w.status.history[-1].reason == "break glass by oncall: false"


def test_a_refused_value_is_ignored_even_without_a_usable_policy() -> None:
    w = at_first_gate()
    w.policy, w.policy_error = None, "RolloutPolicy 'p' not found"
    d = w.act("promote", value="false", user="alice")
    assert RemoveAnnotation("rewind.dev/promote") in d.actions
    assert w.status.timeline[-1].type == "ActionIgnored"


# --------------------------------------------------------------------------------------
# Bounds: what humans write never makes a status the API server refuses
# --------------------------------------------------------------------------------------


def _assert_bounded(s: ModelReleaseStatus) -> None:
    doc = s.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert len(json.dumps(doc)) < 64_000
    for path, text in status_strings(doc):
        assert len(text) <= MAX_MESSAGE, path
    for e in s.timeline:
        assert len(e.user) <= MAX_HUMAN_TEXT
    again = ModelReleaseStatus.model_validate(doc)  # the schema's bounds hold
    assert again.model_dump(mode="json", by_alias=True, exclude_none=True) == doc


def test_a_huge_break_glass_reason_and_user_are_clipped_everywhere() -> None:
    w = mid_canary()
    reason, user = "r" * 200_000, "u" * 10_000
    w.lose_removals = True
    d = w.act("rollback", value=reason, user=user)
    s = w.status
    assert s.phase == Phase.ROLLED_BACK and w.weights() == {1: 100}
    _assert_bounded(s)
    glass = next(e for e in s.timeline if e.type == "BreakGlassRollback")
    assert glass.user == "u" * (MAX_HUMAN_TEXT - 1) + "\u2026"
    assert glass.message.endswith("\u2026") and len(glass.message) <= MAX_MESSAGE
    assert s.history[-1].reason.startswith("break glass by uuu")
    entry = s.consumed_actions[-1]
    assert len(entry.value) == len(entry.user) == MAX_HUMAN_TEXT
    assert all(len(e.message) <= MAX_MESSAGE for e in actions_of(d, EmitEvent))
    # Re-delivered: recognised by its clipped value, never acted on twice.
    timeline = list(s.timeline)
    d = w.step(10)
    assert w.status.timeline == timeline and actions_of(d, EmitEvent) == []


def test_huge_values_of_ignored_actions_are_clipped() -> None:
    w = at_first_gate()
    w.act("promote", value="no" * 100_000, user="x" * 5_000)
    _assert_bounded(w.status)
    assert w.status.current_step == 1
    assert w.status.timeline[-1].type == "ActionIgnored"


def test_a_huge_rejection_reason_is_clipped() -> None:
    w = awaiting()
    w.act("reject-rollback", value="why " * 50_000, user="erin")
    assert w.phase() == Phase.PROGRESSING
    _assert_bounded(w.status)


def test_many_long_approver_names_stay_within_the_message_bound() -> None:
    w = awaiting(required=8)
    for i in range(8):
        w.act("approve-rollback", user=f"{i}" + "a" * 400)
    s = w.status
    assert s.phase == Phase.ROLLED_BACK and w.weights() == {1: 100}
    _assert_bounded(s)
    assert "rollback approved by 0aaa" in s.history[-1].reason
    assert actions_of(w.decisions[-1], SetRoutes) == [SetRoutes({1: 100}, None, 0)]
