"""An action annotation kept in Git (issue 11, item 6): Argo CD's self-heal puts it back each
time the operator removes it. A value that acted never acts again on what it acted on (a
reason never acts twice), a value that comes back and does not act is left on the object,
and nothing loops; a human acting afresh still works."""

from __future__ import annotations

from typing import Any

from rewind.api import Phase
from rewind.engine import ANNOTATION_OF, REMOVAL_PATIENCE, ActionKind, RemoveAnnotation
from rewind.handlers import _removal_done
from tests.unit.test_engine_kit import (
    FAIL,
    PASS,
    World,
    actions_of,
    at_step,
    make_policy,
    make_spec,
    promoted_world,
)

ARGOCD = "system:serviceaccount:argocd:argocd-application-controller"
APPROVAL = {"requiredApprovers": 1, "timeout": "15m", "onTimeout": "Rollback"}


class SelfHeal:
    """Argo CD with selfHeal: the manifest in Git carries ``kind: value``; whenever the
    annotation is gone from the live object, Argo CD applies it again (stamped with its own
    ServiceAccount). ``seen_first``: the operator reconciles (and sees it gone) before the
    re-apply, as it does when its own removal pokes it; False: the re-apply comes first."""

    def __init__(
        self, w: World, kind: ActionKind, value: str, *, seen_first: bool = True
    ) -> None:
        self.w, self.kind, self.value, self.seen_first = w, kind, value, seen_first
        self.key = ANNOTATION_OF[kind]
        self.removals = 0  # writes by the operator to the object's annotations
        self.applies = 0  # writes by Argo CD

    def apply(self) -> None:
        if self.key not in self.w.annotations:
            self.w.annotate(self.kind, self.value, ARGOCD)
            self.applies += 1

    def step(self, advance: float = 0.0) -> None:
        d = self.w.step(advance)
        self.removals += len(
            [a for a in actions_of(d, RemoveAnnotation) if a.key == self.key]
        ) if self.key not in self.w.annotations else 0
        if self.seen_first and self.key not in self.w.annotations:
            self.w.step()  # the operator sees it gone
        self.apply()

    def run(self, seconds: float, dt: float = 10.0) -> None:
        for _ in range(round(seconds / dt)):
            self.step(dt)

    def run_until(self, done: Any, limit: int = 300) -> None:
        for _ in range(limit):
            if done(self.w):
                return
            self.step(10)
        raise AssertionError(f"not reached: {self.w.status.phase} {self.w.status.message}")


def rolled_back_by_git(*, seen_first: bool = True) -> tuple[World, SelfHeal]:
    """The issue's input: r2 Promoted; the team commits rewind.dev/rollback to Git."""
    w = promoted_world(releases=2)
    git = SelfHeal(w, "rollback", "bad answers", seen_first=seen_first)
    # Without a look right after its own writes, the operator may never see it gone.
    w.follow_route_writes = seen_first
    git.apply()
    git.step()
    if not seen_first:
        git.step()  # the rollback's routes are read back
    assert w.phase() == Phase.ROLLED_BACK and w.status.stable_revision == 1
    return w, git


def test_a_break_glass_kept_in_git_never_rolls_back_the_next_release() -> None:
    w, git = rolled_back_by_git()
    git.run(60)
    assert git.removals == 1 and git.applies == 2  # removed once, put back once: no loop
    entry = next(c for c in w.status.consumed_actions if c.gone_at is None)
    assert entry.keep and entry.value == "bad answers" and entry.user == ARGOCD
    notes = [e for e in w.status.timeline if e.type == "ActionIgnored"]
    assert len(notes) == 1 and "a reason acts once" in notes[0].message
    assert "left on the object" in notes[0].message
    # The team commits the fix; the annotation is still in Git.
    w.spec, w.generation = make_spec("3.0.0"), w.generation + 1
    git.step()
    assert w.status.candidate_revision == 3
    git.run_until(lambda x: x.status.phase not in (Phase.PROGRESSING, Phase.PAUSED,
                                                    Phase.PROMOTING))
    assert w.phase() == Phase.PROMOTED and w.status.stable_revision == 3
    assert w.weights() == {3: 100}
    assert w.timeline_types().count("BreakGlassRollback") == 1
    assert git.removals == 1 and git.applies == 2
    assert w.annotations[ANNOTATION_OF["rollback"]].value == "bad answers"  # Git is in sync


def test_put_back_before_the_operator_sees_it_gone_it_still_acts_once_and_stops() -> None:
    w, git = rolled_back_by_git(seen_first=False)
    git.run(REMOVAL_PATIENCE + 60)
    # Taken for the same annotation whose removal failed: removed again, but only for
    # REMOVAL_PATIENCE, then left where it is.
    assert 3 <= git.removals <= REMOVAL_PATIENCE / 10 + 2
    assert git.applies == git.removals + 1
    before = (git.removals, git.applies)
    w.spec, w.generation = make_spec("3.0.0"), w.generation + 1
    git.run_until(lambda x: x.status.phase == Phase.PROMOTED)
    assert w.status.stable_revision == 3 and (git.removals, git.applies) == before
    assert w.timeline_types().count("BreakGlassRollback") == 1


def test_a_new_reason_is_a_new_break_glass() -> None:
    w, git = rolled_back_by_git()
    git.run(30)
    w.release(make_spec("3.0.0"))
    w.settle()
    assert w.status.stable_revision == 3
    w.act("rollback", value="bad answers again, INC-7", user="oncall")
    assert w.phase() == Phase.ROLLED_BACK and w.status.stable_revision == 1


def test_the_same_reason_set_again_by_hand_acts_once() -> None:
    """A reason belongs to what it rolled back: a person acting again uses a new reason."""
    w = promoted_world(releases=2)
    w.act("rollback", value="bad answers", user="oncall")
    w.release(make_spec("3.0.0"))
    w.settle()
    d = w.act("rollback", value="bad answers", user="oncall")
    assert w.phase() == Phase.PROMOTED and w.status.stable_revision == 3
    assert RemoveAnnotation("rewind.dev/rollback") not in d.actions
    note = w.status.timeline[-1].message
    assert "the same reason already acted on r2" in note
    assert "rewind.dev/rollback='<a new reason>'" in note


def awaiting_approval(w: World, version: str) -> None:
    w.verdicts = lambda _r, _n: FAIL
    w.release(make_spec(version))
    w.run_until(lambda x: x.status.phase == Phase.AWAITING_APPROVAL)


def test_an_approval_kept_in_git_never_approves_the_next_decision() -> None:
    w = promoted_world(make_policy(approval=APPROVAL))
    awaiting_approval(w, "2.0.0")
    git = SelfHeal(w, "approve-rollback", "true")
    git.apply()  # the team commits the approval to Git
    git.step()
    assert w.phase() == Phase.ROLLED_BACK
    git.run(60)
    assert git.removals == 1 and git.applies == 2
    # The next release fails its analysis too: the approval in Git does not approve it.
    w.verdicts = lambda _r, _n: FAIL
    w.spec, w.generation = make_spec("3.0.0"), w.generation + 1
    git.run_until(lambda x: x.status.phase == Phase.AWAITING_APPROVAL)
    git.run(120)
    pd = w.status.pending_decision
    assert w.phase() == Phase.AWAITING_APPROVAL and pd is not None and pd.approvals == []
    assert git.removals == 1
    # A human approves with a new value (the annotation holds "true" already).
    w.annotate("approve-rollback", "true-2", "alice")
    git.step()
    assert w.phase() == Phase.ROLLED_BACK and w.status.stable_revision == 1
    approved = [e for e in w.status.timeline if e.type == "Approved"]
    assert [e.user for e in approved] == [ARGOCD, "alice"]
    # Argo CD puts "true" back: left there, never acting, never removed again.
    git.run(60)
    assert w.annotations[ANNOTATION_OF["approve-rollback"]].value == "true"
    assert git.removals == 2 and w.phase() == Phase.ROLLED_BACK


def test_approve_true_set_afresh_by_a_human_works_for_the_next_decision() -> None:
    w = promoted_world(make_policy(approval=APPROVAL))
    awaiting_approval(w, "2.0.0")
    w.act("approve-rollback", user="alice")
    assert w.phase() == Phase.ROLLED_BACK
    w.step(5)  # removed, seen gone
    w.verdicts = lambda _r, _n: PASS
    w.release(make_spec("3.0.0"))
    w.settle()
    awaiting_approval(w, "4.0.0")
    d = w.act("approve-rollback", user="alice")  # the same value, for a new decision
    assert w.phase() == Phase.ROLLED_BACK and w.status.stable_revision == 3
    assert RemoveAnnotation("rewind.dev/approve-rollback") in d.actions


def test_a_promote_kept_in_git_passes_no_gate_even_after_a_human_overwrites_it() -> None:
    steps = {"canary": {"steps": [{"weight": 10, "pause": {"manual": True}},
                                  {"weight": 30, "pause": {"manual": True}},
                                  {"weight": 60}]}}
    w = promoted_world(make_policy(steps, metrics=()))
    git = SelfHeal(w, "promote", "true")
    git.apply()  # in Git from now on; nothing to promote: ignored, removed, put back
    git.run(30)
    assert git.removals == 1 and git.applies == 2
    w.spec, w.generation = make_spec("2.0.0"), w.generation + 1
    git.run(120)
    assert w.phase() == Phase.PAUSED and w.weights() == {1: 90, 2: 10}  # held at gate 1
    # A human passes gate 1 with a new value; Argo CD puts "true" back at gate 2.
    w.annotate("promote", "true-1", "alice")
    git.step()
    assert w.weights() == {1: 70, 2: 30} and w.phase() == Phase.PAUSED
    git.run(120)
    assert w.weights() == {1: 70, 2: 30} and w.phase() == Phase.PAUSED  # gate 2 holds
    assert w.annotations[ANNOTATION_OF["promote"]].value == "true"
    assert "was left on the object during r2" in w.status.timeline[-1].message


def test_a_promote_passes_one_gate_and_the_same_value_the_next_one() -> None:
    """Without Git, "true" is reusable: a promote belongs to the gate it passed."""
    w = promoted_world(make_policy(
        {"canary": {"steps": [{"weight": 10, "pause": {"manual": True}},
                              {"weight": 30, "pause": {"manual": True}}]}}, metrics=()))
    w.release(make_spec("2.0.0"))
    at_step(w, 1)
    w.act("promote", user="alice")
    assert w.weights() == {1: 70, 2: 30}
    w.act("promote", user="alice")
    w.settle()
    assert w.phase() == Phase.PROMOTED and w.status.stable_revision == 2


def test_a_retry_kept_in_git_restarts_one_attempt_only() -> None:
    w = promoted_world(make_policy(progress_deadline="1m"))
    w.broken.add(2)
    w.release(make_spec("2.0.0"))
    w.run(60)
    assert w.phase() == Phase.FAILED
    git = SelfHeal(w, "retry", "true")
    git.apply()
    git.step()  # retried; r2 stays broken, so it fails again
    git.run(120)
    assert w.phase() == Phase.FAILED and w.timeline_types().count("Retry") == 1
    assert git.removals == 1 and git.applies == 2


def test_unique_true_variants_are_accepted_and_other_values_refused() -> None:
    w = promoted_world(make_policy(approval=APPROVAL))
    awaiting_approval(w, "2.0.0")
    w.act("approve-rollback", value="trueish", user="alice")
    assert w.phase() == Phase.AWAITING_APPROVAL
    assert 'the value is "trueish", not "true"' in w.status.timeline[-1].message
    w.act("approve-rollback", value="TRUE-1718000000", user="alice")
    assert w.phase() == Phase.ROLLED_BACK


def test_the_ledger_remembers_values_bounded_and_never_forgets_one_still_there() -> None:
    w = promoted_world(make_policy(approval=APPROVAL))
    git = SelfHeal(w, "rollback", "kept in git")
    git.apply()
    git.run(20)  # ignored (nothing to roll back to), removed, put back: kept
    for i in range(30):
        w.act("retry", value=f"true-{i}", user="bob")  # nothing to retry: each ignored
    w.step()
    ledger = w.status.consumed_actions
    assert len(ledger) == 20
    kept = [c for c in ledger if c.gone_at is None]
    assert [(c.value, c.keep) for c in kept] == [("kept in git", True)]


def test_the_removal_of_a_consumed_annotation_wakes_the_release_at_once() -> None:
    """So the operator sees it gone before a GitOps tool can put it back."""
    pending = {"key": "rewind.dev/rollback", "value": "x", "at": "2026-01-05T03:00:00Z"}

    def obj(annotations: dict[str, str], *ledger: dict[str, Any]) -> dict[str, Any]:
        return {"metadata": {"annotations": annotations},
                "status": {"consumedActions": list(ledger)}}

    assert _removal_done(obj({}, pending))
    assert not _removal_done(obj({"rewind.dev/rollback": "x"}, pending))  # not removed yet
    assert not _removal_done(obj({}, {**pending, "goneAt": "2026-01-05T03:00:01Z"}))
    assert not _removal_done(obj({}, {**pending, "keep": True}))  # never removed
    assert not _removal_done({"metadata": {}})
