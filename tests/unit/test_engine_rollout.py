"""The happy paths and their timing: first release, canary, blue-green, shadow, spec changes."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from rewind.api import Outcome, Phase, StrategyType, spec_hash
from rewind.engine import (
    EnsureRevision,
    RemoveAnnotation,
    ScaleRevision,
    SetRoutes,
    SnapshotRevision,
    analysis_due,
    analysis_targets,
    decide,
    plan_for,
)
from rewind.engine_plan import Finish, StageKind, build_plan
from tests.unit.test_engine_kit import (
    BLUE_GREEN,
    BLUE_GREEN_MANUAL,
    CANARY,
    CANARY_MANUAL,
    FAIL,
    PASS,
    SHADOW_BLUE_GREEN,
    SHADOW_CANARY,
    SHADOW_STOP,
    World,
    actions_of,
    at_step,
    events,
    make_policy,
    make_spec,
    promoted_world,
    routes_of,
)

# --------------------------------------------------------------------------------------
# First release
# --------------------------------------------------------------------------------------


def test_first_sight_creates_revision_1_snapshot_before_workload_and_no_traffic_yet() -> None:
    w = World(make_policy())
    d = w.step()
    s = d.status
    assert s.phase == Phase.PROGRESSING
    assert (s.current_revision, s.candidate_revision, s.stable_revision) == (1, 1, 0)
    assert [e.revision for e in s.history] == [1]
    entry = s.history[0]
    assert entry.outcome == Outcome.PROGRESSING
    assert entry.spec_hash == spec_hash(w.spec)
    assert entry.model_version == "1.0.0" and entry.data_version == "data-1.0.0"
    assert entry.model_digest == w.spec.model.artifact_digest
    assert entry.image_digest == "sha256:" + "c" * 64
    assert d.actions[0] == SnapshotRevision(1, spec_hash(w.spec))
    assert d.actions[1] == EnsureRevision(1, 2)
    assert actions_of(d, SetRoutes) == []  # nothing is Available: nothing to route to
    assert s.timeline[-1].type == "RevisionCreated"
    assert [e.reason for e in events(d)] == ["RevisionCreated"]
    assert w.condition("Progressing")[0] == "True"
    assert w.condition("Ready")[0] == "False"
    assert d.requeue_after == 300.0  # the progress deadline is the only timer


def test_first_release_is_promoted_directly_once_available_without_analysis() -> None:
    w = World(make_policy(), ready_after=25)
    w.step()
    w.run(20)
    assert w.phase() == Phase.PROGRESSING and w.routes is None
    w.step(10)
    s = w.status
    assert s.phase == Phase.PROMOTED
    assert (s.stable_revision, s.candidate_revision) == (1, 0)
    assert w.weights() == {1: 100}
    assert w.outcome(1) == "Promoted" and s.history[0].promoted_at == w.now
    assert s.analysis.last_run_at is None  # no stable to compare against: no analysis
    assert w.condition("Ready") == ("True", "Promoted", s.message)
    assert w.condition("Progressing")[0] == "False"


def test_progress_deadline_fails_first_release_and_scales_it_down() -> None:
    w = World(make_policy(progress_deadline="2m"), broken={1})
    w.step()
    w.run(110)
    assert w.phase() == Phase.PROGRESSING
    d = w.step(10)
    s = d.status
    assert s.phase == Phase.FAILED
    assert w.outcome(1) == "Failed"
    assert "progressDeadline 2m" in s.history[0].reason
    assert ScaleRevision(1, 0) in d.actions and w.replicas(1) == 0
    assert w.condition("Stalled")[0] == "True"
    assert w.condition("Degraded")[0] == "True"
    assert [e.type for e in events(d, "Warning")] == ["Warning"]
    # A failed revision is never retried by itself.
    w.broken.clear()
    w.run(600)
    assert w.phase() == Phase.FAILED and w.replicas(1) == 0


def test_progress_deadline_mid_release_keeps_stable_at_100() -> None:
    w = promoted_world(make_policy(progress_deadline="1m"))
    w.broken.add(2)
    w.release(make_spec("2.0.0"))
    assert w.weights() == {1: 100}
    w.run(60)
    s = w.status
    assert s.phase == Phase.FAILED and w.outcome(2) == "Failed"
    assert w.weights() == {1: 100} and w.replicas(2) == 0 and w.replicas(1) == 2
    assert s.stable_revision == 1
    stalled = w.condition("Stalled")
    assert stalled[0] == "True" and "rewind.dev/retry=true" in stalled[2]


# --------------------------------------------------------------------------------------
# Canary
# --------------------------------------------------------------------------------------


def test_canary_waits_for_available_before_any_traffic() -> None:
    w = promoted_world(ready_after=45)
    w.release(make_spec("2.0.0"))
    w.run(40)
    assert w.weights() == {1: 100}
    assert w.status.current_step == 0 and "waiting to become Available" in w.status.message
    assert not analysis_due(w.status, w.policy, w.now)
    w.step(10)
    assert w.weights() == {1: 90, 2: 10}
    assert w.status.current_step == 1 and w.status.strategy == StrategyType.CANARY


def test_canary_walks_steps_then_promotes_and_retires_previous_after_keep_warm() -> None:
    w = promoted_world(make_policy(keep_previous_warm="3m"))
    w.release(make_spec("2.0.0"))
    seen: list[dict[int, int]] = []
    w.run_until(lambda x: x.status.phase == Phase.PROMOTED and x.status.stable_revision == 2)
    for d in w.decisions:
        for r in actions_of(d, SetRoutes):
            if not seen or seen[-1] != dict(r.weights):
                seen.append(dict(r.weights))
    assert seen == [{1: 100}, {1: 90, 2: 10}, {1: 50, 2: 50}, {2: 100}]
    s = w.status
    assert w.outcome(2) == "Promoted" and w.outcome(1) == "Promoted"  # r1 still warm
    assert w.replicas(1) == 2
    assert s.history[0].finished_at == w.now and s.history[0].reason == "replaced by r2"
    assert "r1 stays warm for 3m" in s.message
    promoted_at = w.now
    w.run(170)
    assert w.replicas(1) == 2
    w.run(10)
    assert w.now == promoted_at + timedelta(minutes=3)
    assert w.outcome(1) == "Retired" and w.replicas(1) == 0
    assert w.status.timeline[-1].type == "Retired"
    assert w.status.history[0].revision == 1  # the record stays for rollbacks


def test_each_step_needs_its_duration_and_a_passing_round_after_it_began() -> None:
    w = promoted_world()
    w.release(make_spec("2.0.0"))
    at_step(w, 1)
    started = w.status.step_started_at
    assert started is not None
    # Step 1 lasts 1m; the first round comes one interval after the step began.
    w.run(50)
    assert w.status.current_step == 1
    w.step(10)
    assert w.status.current_step == 2
    assert w.now - started == timedelta(minutes=1)


def test_step_does_not_advance_while_the_last_round_failed_below_the_limit() -> None:
    w = promoted_world(make_policy(failure_limit=3))
    w.release(make_spec("2.0.0"))
    at_step(w, 1)
    start = w.status.step_started_at
    assert start is not None
    fail_from = start + timedelta(seconds=50)
    w.verdicts = lambda _r, now: FAIL if now >= fail_from else PASS
    w.run(60)  # duration elapsed, but the last round failed (2 failures < 3)
    assert w.status.current_step == 1 and w.status.analysis.failures == 2
    assert w.status.analysis.consecutive_failures == 2
    assert "the last one failed" in w.status.message
    w.verdicts = lambda _r, _n: PASS
    w.step(10)
    assert w.status.current_step == 2
    assert w.status.analysis.consecutive_failures == 0  # a pass resets them
    assert w.status.analysis.failures == 2  # total stays


def test_step_without_pause_moves_on_after_one_interval_with_a_pass() -> None:
    w = promoted_world(make_policy(SHADOW_CANARY, interval="15s"))
    w.release(make_spec("2.0.0"))
    at_step(w, 2)  # the canary step after the shadow stage
    started = w.status.step_started_at
    assert started is not None
    assert w.weights() == {1: 80, 2: 20}
    w.run_until(lambda x: x.status.phase == Phase.PROMOTED, dt=5)
    assert w.now - started == timedelta(seconds=15)


def test_without_metrics_steps_advance_on_time_alone() -> None:
    w = promoted_world(make_policy(metrics=()))
    w.release(make_spec("2.0.0"))
    at_step(w, 1)
    assert not analysis_due(w.status, w.policy, w.now + timedelta(hours=1))
    started = w.status.step_started_at
    assert started is not None
    w.run_until(lambda x: x.status.current_step == 2)
    assert w.now - started == timedelta(minutes=1)
    w.settle()
    assert w.phase() == Phase.PROMOTED and w.status.analysis.measurements == []


def test_manual_canary_pause_waits_for_promote_and_consumes_the_annotation() -> None:
    w = promoted_world(make_policy(CANARY_MANUAL))
    w.release(make_spec("2.0.0"))
    at_step(w, 2)
    assert w.phase() == Phase.PAUSED and w.weights() == {1: 50, 2: 50}
    assert "rewind.dev/promote=true" in w.status.message
    assert "kubectl annotate modelrelease/fraud -n risk rewind.dev/promote=true" in (
        w.status.timeline[-1].message
    )
    w.run(3600, dt=60)
    assert w.phase() == Phase.PAUSED and w.weights() == {1: 50, 2: 50}
    assert w.status.analysis.last_run_at is not None  # analysis keeps running while paused
    d = w.act("promote", user="carol")
    assert RemoveAnnotation("rewind.dev/promote") in d.actions
    assert w.phase() == Phase.PROMOTED and w.weights() == {2: 100}
    assert [e.type for e in w.status.timeline[-2:]] == ["PromoteRequested", "Promoted"]
    assert w.status.timeline[-2].user == "carol"


def test_promote_outside_a_manual_gate_is_ignored_with_a_note() -> None:
    w = promoted_world()
    w.release(make_spec("2.0.0"))
    at_step(w, 1)
    d = w.act("promote", user="dave")
    assert RemoveAnnotation("rewind.dev/promote") in d.actions
    assert w.status.current_step == 1 and w.weights() == {1: 90, 2: 10}
    assert w.status.timeline[-1].type == "ActionIgnored"
    assert "not a manual gate" in w.status.timeline[-1].message


def test_candidate_losing_availability_holds_the_step() -> None:
    w = promoted_world()
    w.release(make_spec("2.0.0"))
    at_step(w, 1)
    w.degraded.add(2)  # some pods still answer: a hold, not a rollback
    w.run(120)
    assert w.status.current_step == 1 and w.weights() == {1: 90, 2: 10}
    assert "r2 is not Available" in w.status.message
    w.degraded.clear()
    w.run(10)
    assert w.status.current_step == 2


# --------------------------------------------------------------------------------------
# Blue-green
# --------------------------------------------------------------------------------------


def test_blue_green_previews_at_zero_then_switches_at_once_then_keeps_old_colour() -> None:
    w = promoted_world(make_policy(BLUE_GREEN))
    w.release(make_spec("2.0.0"))
    at_step(w, 1)
    assert w.weights() == {1: 100} and w.status.strategy == StrategyType.BLUE_GREEN
    assert analysis_targets(w.status) == (2, 1)
    w.run_until(lambda x: x.weights() != {1: 100})
    assert w.weights() == {2: 100} and w.phase() == Phase.PROGRESSING  # post-switch
    assert w.replicas(1) == 2  # old colour still up for an instant switch-back
    w.run_until(lambda x: x.status.phase == Phase.PROMOTED)
    switched = w.now
    w.run(290)
    assert w.replicas(1) == 2
    w.run(10)
    assert w.now - switched == timedelta(minutes=5)  # keepOldColour, not keepPreviousWarm
    assert w.replicas(1) == 0 and w.outcome(1) == "Retired"
    weights = [dict(r.weights) for d in w.decisions for r in actions_of(d, SetRoutes)]
    assert all(x in ({1: 100}, {2: 100}) for x in weights)  # never a split


def test_blue_green_manual_switch_waits_for_promote_after_a_passing_preview() -> None:
    w = promoted_world(make_policy(BLUE_GREEN_MANUAL))
    w.release(make_spec("2.0.0"))
    at_step(w, 2)
    assert w.phase() == Phase.PAUSED and w.weights() == {1: 100}
    w.run(600)
    assert w.weights() == {1: 100}
    w.act("promote", user="erin")
    assert w.weights() == {2: 100} and w.phase() == Phase.PROGRESSING
    w.settle()
    assert w.phase() == Phase.PROMOTED


def test_blue_green_post_switch_failure_switches_straight_back() -> None:
    w = promoted_world(make_policy(BLUE_GREEN))
    w.release(make_spec("2.0.0"))
    w.run_until(lambda x: x.weights() == {2: 100})
    w.verdicts = lambda _r, _n: FAIL
    w.run_until(lambda x: x.status.phase != Phase.PROGRESSING)
    d = w.decisions[-1]
    assert w.phase() == Phase.ROLLED_BACK and w.outcome(2) == "RolledBack"
    assert w.weights() == {1: 100}
    assert actions_of(d, EnsureRevision) == [EnsureRevision(1, 2)]  # it was warm: no wait


# --------------------------------------------------------------------------------------
# Shadow
# --------------------------------------------------------------------------------------


def test_shadow_mirrors_without_live_weight_then_stop_retires_the_candidate() -> None:
    w = promoted_world(make_policy(SHADOW_STOP))
    w.release(make_spec("2.0.0"))
    at_step(w, 1)
    assert w.weights() == {1: 100} and w.mirror() == (2, 50)
    assert w.status.mirror_percent == 50 and w.status.strategy == StrategyType.SHADOW
    w.run_until(lambda x: x.status.phase == Phase.PROMOTED)
    s = w.status
    assert w.mirror() == (None, 0) and w.weights() == {1: 100}
    assert s.stable_revision == 1 and s.current_revision == 2 and s.candidate_revision == 0
    assert w.outcome(2) == "Retired" and "shadow analysis passed" in s.history[-1].reason
    assert s.history[-1].promoted_at is None
    assert w.replicas(2) == 0
    assert s.timeline[-1].type == "ShadowPassed"
    assert w.condition("Ready")[0] == "True"
    # The same spec does not start again.
    w.run(600)
    assert len(w.status.history) == 2


@pytest.mark.parametrize(
    ("strategy", "next_weights"),
    [(SHADOW_CANARY, {1: 80, 2: 20}), (SHADOW_BLUE_GREEN, {2: 100})],
)
def test_shadow_on_success_continues_with_the_configured_strategy(
    strategy: dict[str, object], next_weights: dict[int, int]
) -> None:
    w = promoted_world(make_policy(strategy))
    w.release(make_spec("2.0.0"))
    at_step(w, 1)
    assert w.mirror() == (2, 100)
    w.run_until(lambda x: x.status.current_step == 2)
    assert w.mirror() == (None, 0)
    w.run_until(lambda x: x.weights() not in ({1: 100},))
    assert w.weights() == next_weights
    w.settle()
    assert w.phase() == Phase.PROMOTED and w.status.stable_revision == 2


def test_shadow_failure_removes_mirror_and_fails_the_revision() -> None:
    w = promoted_world(make_policy(SHADOW_STOP))
    w.release(make_spec("2.0.0"))
    at_step(w, 1)
    w.verdicts = lambda _r, _n: FAIL
    w.run_until(lambda x: x.status.phase != Phase.PROGRESSING)
    s = w.status
    # Users never received its answers: Failed, not RolledBack (see engine docstring).
    assert s.phase == Phase.FAILED and w.outcome(2) == "Failed"
    assert w.mirror() == (None, 0) and w.weights() == {1: 100}
    assert "error-rate 0.12 > max 0.05" in s.history[-1].reason


# --------------------------------------------------------------------------------------
# Spec changes
# --------------------------------------------------------------------------------------


def test_spec_change_mid_rollout_supersedes_candidate_against_the_same_stable() -> None:
    w = promoted_world()
    w.release(make_spec("2.0.0"))
    at_step(w, 2)
    assert w.weights() == {1: 50, 2: 50}
    w.ready_after = 5.0  # r3 is not Available in this call
    d = w.release(make_spec("3.0.0"))
    s = d.status
    assert w.outcome(2) == "Superseded" and "superseded by r3" in s.history[1].reason
    assert (s.stable_revision, s.candidate_revision, s.current_revision) == (1, 3, 3)
    assert s.current_step == 0 and s.phase == Phase.PROGRESSING
    assert w.weights() == {1: 100}  # the superseded candidate lost its traffic at once
    assert ScaleRevision(2, 0) in d.actions and w.replicas(2) == 0
    assert SnapshotRevision(3, spec_hash(make_spec("3.0.0"))) in d.actions
    assert s.analysis.failures == 0 and s.analysis.measurements == []
    w.settle()
    assert w.status.stable_revision == 3


def test_spec_change_while_promoted_starts_a_new_revision() -> None:
    w = promoted_world(releases=2)
    d = w.release(make_spec("3.0.0"))
    assert d.status.candidate_revision == 3 and d.status.stable_revision == 2


def test_with_the_rollback_window_off_a_reverted_spec_is_a_new_revision_number() -> None:
    """rollbackWindow.revisions 0: a revert is released like any new spec (issue 11 item 5:
    the restore of a known-good revision is tests/unit/test_engine_restore.py)."""
    w = promoted_world(make_policy(rollback_window=0), releases=2)
    old_hash = w.status.history[0].spec_hash
    d = w.release(make_spec("1.0.0"))  # git revert
    assert d.status.candidate_revision == 3
    assert d.status.history[-1].spec_hash == old_hash
    assert [e.revision for e in d.status.history] == [1, 2, 3]
    assert SnapshotRevision(3, old_hash) in d.actions
    w.settle()
    assert w.status.stable_revision == 3 and w.snapshots[1] == w.snapshots[3]


def test_same_spec_reapplied_with_a_new_generation_is_not_a_new_revision() -> None:
    w = promoted_world()
    w.generation += 1
    d = w.step()
    assert len(d.status.history) == 1 and d.status.observed_generation == w.generation


def test_tag_only_image_without_policy_permission_fails_with_a_clear_message() -> None:
    w = promoted_world()
    tagged = make_spec("2.0.0", image="registry.example.com/fraud:2.0.0", allow_tag_image=True)
    d = w.release(tagged)
    s = d.status
    assert s.phase == Phase.FAILED and w.outcome(2) == "Failed"
    assert "allowTagImages" in s.message and "not pinned by digest" in s.message
    assert actions_of(d, SnapshotRevision) == [] and 2 not in w.deployments
    assert w.weights() == {1: 100}
    w.run(60)
    assert len(w.status.history) == 2  # not re-created on every call


def test_tag_only_image_allowed_by_policy_is_released() -> None:
    w = promoted_world(make_policy(allow_tag_images=True))
    w.release(make_spec("2.0.0", image="registry.example.com/fraud:2.0.0", allow_tag_image=True))
    w.settle()
    assert w.phase() == Phase.PROMOTED and w.status.history[-1].image_digest == ""


def test_replica_change_is_a_new_revision_and_stable_keeps_its_own_scale() -> None:
    w = promoted_world()
    d = w.release(make_spec("1.0.0", replicas=5))
    assert EnsureRevision(1, 2) in d.actions and EnsureRevision(2, 5) in d.actions


# --------------------------------------------------------------------------------------
# Plans, analysis scheduling
# --------------------------------------------------------------------------------------


def test_plans_of_every_strategy() -> None:
    def kinds(strategy: dict[str, object]) -> list[tuple[str, int, int, bool]]:
        plan = build_plan(make_policy(strategy), first_release=False)
        return [(s.kind.value, s.weight, s.mirror, s.manual) for s in plan.stages]

    assert kinds(CANARY) == [
        ("Ready", 0, 0, False),
        ("Canary", 10, 0, False),
        ("Canary", 50, 0, False),
    ]
    assert kinds(CANARY_MANUAL)[-1] == ("Canary", 50, 0, True)
    assert kinds(BLUE_GREEN) == [
        ("Ready", 0, 0, False),
        ("Preview", 0, 0, False),
        ("PostSwitch", 100, 0, False),
    ]
    assert [k[0] for k in kinds(BLUE_GREEN_MANUAL)] == ["Ready", "Preview", "Switch", "PostSwitch"]
    assert kinds(SHADOW_STOP) == [("Ready", 0, 0, False), ("Shadow", 0, 50, False)]
    assert build_plan(make_policy(SHADOW_STOP), first_release=False).finish == Finish.STOP
    assert [k[0] for k in kinds(SHADOW_CANARY)] == ["Ready", "Shadow", "Canary"]
    assert [k[0] for k in kinds(SHADOW_BLUE_GREEN)] == ["Ready", "Shadow", "Preview", "PostSwitch"]
    first = build_plan(make_policy(SHADOW_STOP), first_release=True)
    assert [s.kind for s in first.stages] == [StageKind.READY] and first.finish == Finish.PROMOTE
    assert build_plan(make_policy(BLUE_GREEN), first_release=False).warm_for == 300
    assert build_plan(make_policy(SHADOW_BLUE_GREEN), first_release=False).warm_for == 600
    assert build_plan(make_policy(CANARY), first_release=False).warm_for == 600


def test_policy_edited_to_fewer_steps_mid_rollout_holds_its_weight_then_finishes() -> None:
    """Weights only change at stage transitions: an edited policy never makes traffic jump;
    a currentStep beyond the new plan is treated as its last stage (gate, then promote)."""
    w = promoted_world(
        make_policy(
            {
                "canary": {
                    "steps": [
                        {"weight": 10, "pause": {"duration": "1m"}},
                        {"weight": 30, "pause": {"duration": "1m"}},
                        {"weight": 60, "pause": {"duration": "1m"}},
                    ]
                }
            }
        )
    )
    w.release(make_spec("2.0.0"))
    at_step(w, 3)
    w.policy = make_policy({"canary": {"steps": [{"weight": 25, "pause": {"duration": "1m"}}]}})
    assert plan_for(w.status, w.policy).stage(3).weight == 25
    w.step(10)
    assert w.phase() == Phase.PROGRESSING and w.weights() == {1: 40, 2: 60}
    w.settle()
    assert w.phase() == Phase.PROMOTED and w.weights() == {2: 100}
    assert {1: 75, 2: 25} not in [
        dict(r.weights) for d in w.decisions for r in actions_of(d, SetRoutes)
    ]


def test_analysis_due_and_targets_follow_the_stage() -> None:
    w = promoted_world()
    assert analysis_targets(w.status) is None
    assert not analysis_due(w.status, w.policy, w.now)
    w.release(make_spec("2.0.0"))
    assert not analysis_due(w.status, w.policy, w.now + timedelta(hours=1))  # stage Ready
    at_step(w, 1)
    start = w.status.step_started_at
    assert start is not None
    assert analysis_targets(w.status) == (2, 1)
    assert not analysis_due(w.status, w.policy, start + timedelta(seconds=9))
    assert analysis_due(w.status, w.policy, start + timedelta(seconds=10))
    assert not analysis_due(w.status, None, start + timedelta(seconds=10))
    w.step(10)
    last = w.status.analysis.last_run_at
    assert last == start + timedelta(seconds=10)
    assert not analysis_due(w.status, w.policy, last + timedelta(seconds=9))
    assert analysis_due(w.status, w.policy, last + timedelta(seconds=10))


def test_requeue_points_at_the_next_timer() -> None:
    w = promoted_world()
    d = w.release(make_spec("2.0.0"))
    assert d.requeue_after == 300.0  # progress deadline of stage Ready
    d = w.step(10)
    assert w.status.current_step == 1
    assert d.requeue_after == 10.0  # next analysis round (before the 1m step end)


def test_same_inputs_give_equal_decisions() -> None:
    w = promoted_world()
    w.release(make_spec("2.0.0"))
    at_step(w, 1)
    inp = w.inputs(w.round())
    assert decide(inp) == decide(inp)


def test_blue_green_preview_failure_fails_the_candidate_without_touching_users() -> None:
    w = promoted_world(make_policy(BLUE_GREEN, scale_down_delay="20s"))
    w.release(make_spec("2.0.0"))
    at_step(w, 1)
    w.verdicts = lambda _r, _n: FAIL
    w.step(10)
    s = w.status
    assert s.phase == Phase.FAILED and w.outcome(2) == "Failed"  # it never had users
    assert w.weights() == {1: 100} and w.replicas(2) == 2
    assert "stopped before serving users" in s.message
    w.run(20)
    assert w.replicas(2) == 0


def test_spec_change_during_blue_green_post_switch_sends_users_back_to_stable() -> None:
    w = promoted_world(make_policy(BLUE_GREEN))
    w.release(make_spec("2.0.0"))
    w.run_until(lambda x: x.weights() == {2: 100})
    d = w.release(make_spec("3.0.0"))
    assert routes_of(d) == [SetRoutes({1: 100}, None, 0)]
    assert ScaleRevision(2, 0) in d.actions and w.outcome(2) == "Superseded"


def test_promote_while_the_candidate_is_unavailable_waits_on_the_object() -> None:
    w = promoted_world(make_policy(CANARY_MANUAL))
    w.release(make_spec("2.0.0"))
    at_step(w, 2)
    w.degraded.add(2)
    d = w.act("promote", user="carol", advance=10)
    assert actions_of(d, RemoveAnnotation) == []
    assert "rewind.dev/promote" in w.annotations
    assert w.phase() == Phase.PAUSED and w.weights() == {1: 50, 2: 50}
    assert w.status.timeline[-1].type == "PromoteWaiting"
    w.run(30)
    assert w.timeline_types().count("PromoteWaiting") == 1
    w.degraded.clear()
    d = w.step(10)
    assert RemoveAnnotation("rewind.dev/promote") in d.actions
    assert w.phase() == Phase.PROMOTED and w.weights() == {2: 100}


# --------------------------------------------------------------------------------------
# The in-cluster name (umbrella Service) stays on the stable revision (issue 12)
# --------------------------------------------------------------------------------------


def primaries(w: World) -> list[int | None]:
    return [r.primary_revision for d in w.decisions for r in actions_of(d, SetRoutes)]


@pytest.mark.parametrize("policy", [CANARY, BLUE_GREEN, SHADOW_STOP])
def test_callers_that_bypass_the_routes_reach_the_stable_until_the_promotion(
    policy: dict[str, Any],
) -> None:
    """Every route write names the revision the umbrella Service selects: the stable one
    through the canary steps, the blue-green preview and switch and the shadow, the
    candidate only from the promotion on (Promoted only once that is read back)."""
    w = promoted_world(make_policy(policy))
    first = len(w.decisions)
    w.release(make_spec("2.0.0"))
    w.run_until(lambda x: x.status.phase == Phase.PROMOTED)
    writes = [r for d in w.decisions[first:] for r in actions_of(d, SetRoutes)]
    promoted_from = next(
        (i for i, r in enumerate(writes) if r.primary_revision == 2), len(writes)
    )
    assert all(r.primary_revision == 1 for r in writes[:promoted_from])
    assert all(r.primary_revision == 2 for r in writes[promoted_from:])
    final = 1 if policy == SHADOW_STOP else 2
    assert w.routes is not None and w.routes.primary_revision == final
    assert w.status.routes.primary_revision == final and w.status.routes.in_effect


def test_a_promotion_waits_until_the_umbrella_service_is_read_back_on_the_candidate() -> None:
    w = promoted_world(make_policy(BLUE_GREEN))
    w.follow_route_writes = False
    w.release(make_spec("2.0.0"))
    w.run_until(lambda x: x.status.phase == Phase.PROMOTING)
    # The router reports the VirtualService at 100% on r2 but the umbrella still on r1.
    w.routes = SetRoutes({2: 100}, None, 0, None, 1)
    d = w.step(0)
    assert w.phase() == Phase.PROMOTING
    assert [r.primary_revision for r in actions_of(d, SetRoutes)] == [2]
    assert "in-cluster name to r1" in w.status.routes.message


def test_a_rollback_moves_the_umbrella_service_back_with_the_weights() -> None:
    w = promoted_world(make_policy(BLUE_GREEN))
    w.release(make_spec("2.0.0"))
    w.run_until(lambda x: x.weights() == {2: 100})
    assert w.routes is not None and w.routes.primary_revision == 1  # switched, not promoted
    w.verdicts = lambda _r, _n: FAIL
    w.run_until(lambda x: x.status.phase != Phase.PROGRESSING)
    assert w.phase() == Phase.ROLLED_BACK
    assert w.routes is not None and w.routes.primary_revision == 1
