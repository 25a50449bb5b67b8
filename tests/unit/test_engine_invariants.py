"""Properties that hold in every state: weights, idempotency, restart safety, bounded lists,
conditions, and behaviour without a usable policy."""

from __future__ import annotations

import functools
import random
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from rewind.api import ModelReleaseStatus, Phase, spec_hash
from rewind.engine import (
    ActionKind,
    EmitEvent,
    EnsureRevision,
    Inputs,
    RemoveAnnotation,
    SetRoutes,
    SnapshotRevision,
    decide,
)
from tests.unit.test_engine_kit import (
    FAIL,
    INCONCLUSIVE,
    PASS,
    STRATEGIES,
    World,
    actions_of,
    at_step,
    make_policy,
    make_spec,
    promoted_world,
)

# --------------------------------------------------------------------------------------
# Random walks
# --------------------------------------------------------------------------------------

KINDS: tuple[ActionKind, ...] = (
    "approve-rollback",
    "reject-rollback",
    "rollback",
    "promote",
    "retry",
)
USERS = ("alice", "bob", "carol", "", "x" * 300)
#: Values a human might set: valid ones, refused ones, and one far beyond the status bounds.
VALUES = ("true", "why", "TRUE ", "false", "", "y" * 300)


def random_policy(rng: random.Random) -> Any:
    strategy = STRATEGIES[rng.choice(sorted(STRATEGIES))]
    approval = None
    if rng.random() < 0.4:
        approval = {
            "requiredApprovers": rng.choice([1, 2, 3]),
            "timeout": rng.choice(["1m", "5m"]),
            "onTimeout": rng.choice(["Rollback", "Resume"]),
        }
    return make_policy(
        strategy,
        metrics=rng.choice([(), ("error-rate",), ("error-rate", "latency")]),
        failure_limit=rng.choice([1, 2, 3]),
        consecutive_failure_limit=rng.choice([0, 0, 2]),
        approval=approval,
        scale_down_delay=rng.choice(["0s", "30s"]),
        rollback_window=rng.choice([None, 0, 1]),
        first_release=rng.choice([None, "Promote"]),
        progress_deadline=rng.choice(["1m", "3m"]),
        keep_previous_warm=rng.choice(["0s", "2m"]),
    )


@functools.cache
def random_walk(seed: int, steps: int = 160) -> World:
    rng = random.Random(seed)
    policy = random_policy(rng)
    w = World(policy, ready_after=rng.choice([0, 15, 40]))
    fail_rate = rng.choice([0.0, 0.1, 0.3])
    w.verdicts = lambda _r, _n: rng.choices(
        [PASS, FAIL, INCONCLUSIVE], [1 - fail_rate - 0.1, fail_rate, 0.1]
    )[0]
    version = 1
    for _ in range(steps):
        roll = rng.random()
        if roll < 0.05:
            if version > 1 and rng.random() < 0.3:  # git revert: maybe a restore
                w.spec = make_spec(f"{rng.randrange(1, version)}.0.0")
            else:
                version += 1
                w.spec = make_spec(f"{version}.0.0")
            w.generation += 1
        elif roll < 0.15:
            w.annotate(rng.choice(KINDS), value=rng.choice(VALUES), user=rng.choice(USERS))
        elif roll < 0.17:
            w.lose_removals = not w.lose_removals  # annotations delivered again and again
        elif roll < 0.20 and w.deployments:
            w.broken ^= {rng.choice(sorted(w.deployments))}
        elif roll < 0.22 and w.deployments:
            del w.deployments[rng.choice(sorted(w.deployments))]  # someone deleted it
        elif roll < 0.25:
            w.policy = None if w.policy is not None else policy
            w.policy_error = None if w.policy is not None else "RolloutPolicy 'p' not found"
        before_weights = w.weights()
        before_phase = w.status.phase
        w.now += timedelta(seconds=rng.choice([1, 5, 10, 10, 30, 60, 300]))
        observed = w.observe()  # what this decision sees
        d = w.step()
        # A route write is read back at once (World.step), by a reconcile that may see a
        # revision Available that the first one did not (re-created, ready at once).
        observed = {**observed, **{r: o for r, o in w.observe().items() if o.available}}
        check_walk_step(w, d.status, before_phase, before_weights, observed)
    return w


def check_walk_step(
    w: World,
    s: ModelReleaseStatus,
    before_phase: Phase,
    before_weights: dict[int, int],
    observed: dict[int, Any],
) -> None:
    revisions = [e.revision for e in s.history]
    assert revisions == sorted(set(revisions)), "revision numbers only grow and never repeat"
    if w.routes is not None:
        assert sum(w.routes.weights.values()) == 100
    if s.phase in (Phase.PROMOTED, Phase.ROLLED_BACK) and s.stable_revision:
        assert w.weights() == {s.stable_revision: 100}
        assert w.mirror() == (None, 0)
    if s.phase == Phase.PROMOTED:
        assert s.candidate_revision == 0
    if before_phase == Phase.AWAITING_APPROVAL and s.phase == Phase.AWAITING_APPROVAL:
        assert w.weights() == before_weights, "traffic holds while humans decide"
    # Live traffic only moves onto a revision that is Available (the stable excepted:
    # it is where traffic goes back to whatever happens).
    for rev, weight in w.weights().items():
        if weight > before_weights.get(rev, 0) and rev != s.stable_revision:
            assert rev in observed and observed[rev].available, (rev, s.phase, s.message)


@pytest.mark.parametrize("seed", range(60))
def test_random_walks_keep_every_invariant(seed: int) -> None:
    # World.step checks, after every decision: weights sum to 100, idempotency (decide
    # again changes nothing), status schema round trip, bounded lists, action ordering,
    # snapshot-before-record, nothing scaled down while it serves, conditions.
    random_walk(seed)


def test_random_walks_visit_every_phase() -> None:
    """Guards the property test above against only ever exercising the happy path."""
    seen: set[Phase] = set()
    for seed in range(60):
        w = random_walk(seed)  # cached: the same walks as above
        seen |= {d.status.phase for d in w.decisions}
    assert seen == set(Phase)


# --------------------------------------------------------------------------------------
# Idempotency and restart safety
# --------------------------------------------------------------------------------------


def test_decide_twice_on_every_step_of_a_full_release_changes_nothing() -> None:
    # World.step asserts idempotency; this run passes through every canary transition.
    w = promoted_world(make_policy(failure_limit=2))
    w.release(make_spec("2.0.0"))
    w.settle()
    assert w.phase() == Phase.PROMOTED
    assert len(w.decisions) > 10


def test_repeated_call_emits_no_event_and_no_second_revision() -> None:
    w = World(make_policy())
    inp = w.inputs()
    first = decide(inp)
    again = decide(replace(inp, status=first.status))
    assert actions_of(again, EmitEvent) == [] and actions_of(again, SnapshotRevision) == []
    assert again.status == first.status
    assert actions_of(again, EnsureRevision) == actions_of(first, EnsureRevision)


def test_crash_after_status_write_before_actions_converges_on_the_next_call() -> None:
    """Actions are level-based: the desired workloads and routes are re-emitted each call,
    so a status written without its actions being applied still converges."""
    w = promoted_world()
    w.release(make_spec("2.0.0"))
    at_step(w, 1)
    assert w.weights() == {1: 90, 2: 10}
    # The router write and the candidate's Deployment were lost.
    w.routes = SetRoutes({1: 100}, None, 0)
    del w.deployments[2]
    again = w.step(1, measurements=None)
    assert EnsureRevision(2, 2) in again.actions
    # Users are moved onto r2 only once it is Available again: the next call.
    assert not actions_of(again, SetRoutes) or w.weights() == {1: 90, 2: 10}
    assert w.status.timeline[-1].type == "RouteDrift"  # the routes in effect were changed
    w.step(1, measurements=None)
    assert w.weights() == {1: 90, 2: 10} and w.replicas(2) == 2
    assert w.status.routes.in_effect


def test_crash_after_actions_before_status_write_repeats_the_same_transition() -> None:
    w = promoted_world()
    w.spec = make_spec("2.0.0")
    inp = w.inputs()
    first = decide(inp)
    w.apply(first)  # snapshot written, Deployment created ... then the status write is lost
    second = decide(inp)
    assert second == first  # same revision number, same snapshot hash: safe to re-apply
    w.apply(second)
    assert w.snapshots[2] == spec_hash(w.spec)


def test_status_from_the_api_server_json_round_trips_into_the_same_decision() -> None:
    w = promoted_world()
    w.release(make_spec("2.0.0"))
    at_step(w, 2)
    raw = w.status.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert "stableRevision" in raw and "stepStartedAt" in raw
    parsed = ModelReleaseStatus.model_validate(raw)
    inp = w.inputs()
    assert decide(replace(inp, status=parsed)) == decide(inp)


def test_same_observations_same_decision_regardless_of_action_order() -> None:
    w = promoted_world()
    w.release(make_spec("2.0.0"))
    at_step(w, 1)
    w.annotate("promote", user="a")
    w.annotate("rollback", value="x", user="b")
    acts = list(w.annotations.values())
    one = decide(w.inputs(actions=acts))
    two = decide(w.inputs(actions=list(reversed(acts))))
    assert one == two and one.status.phase == Phase.ROLLING_BACK


# --------------------------------------------------------------------------------------
# Bounded lists
# --------------------------------------------------------------------------------------


def test_history_and_timeline_stay_bounded_and_keep_the_known_good_records() -> None:
    w = promoted_world(make_policy(metrics=()))
    w.release(make_spec("2.0.0"))
    w.settle()
    # 25 failing releases in a row: the stable's record must survive the trimming.
    w.policy = make_policy(metrics=(), progress_deadline="1m")
    for n in range(3, 28):
        w.broken.add(n)
        w.release(make_spec(f"{n}.0.0"))
        w.settle()
        assert w.phase() == Phase.FAILED
    s = w.status
    assert len(s.history) == 20 and len(s.timeline) == 50
    kept = [e.revision for e in s.history]
    assert 2 in kept and 1 in kept  # stable and the previous known-good (break-glass target)
    assert kept[-1] == 27
    assert s.timeline[-1].revision == 27


# --------------------------------------------------------------------------------------
# Conditions (kstatus)
# --------------------------------------------------------------------------------------


def conditions(w: World) -> dict[str, str]:
    return {c.type: c.status.value for c in w.status.conditions}


def test_condition_matrix_per_phase() -> None:
    w = promoted_world()
    assert conditions(w) == {
        "Ready": "True",
        "Reconciling": "False",
        "Progressing": "False",
        "Degraded": "False",
        "Stalled": "False",
    }
    w.release(make_spec("2.0.0"))
    at_step(w, 1)
    assert conditions(w) == {
        "Ready": "False",
        "Reconciling": "True",
        "Progressing": "True",
        "Degraded": "False",
        "Stalled": "False",
    }
    w.verdicts = lambda _r, _n: FAIL
    w.step(10)
    assert w.phase() == Phase.ROLLED_BACK
    assert conditions(w) == {
        "Ready": "False",
        "Reconciling": "False",
        "Progressing": "False",
        "Degraded": "True",
        "Stalled": "True",
    }


def test_condition_transition_time_only_moves_on_change() -> None:
    w = promoted_world()
    ready = next(c for c in w.status.conditions if c.type == "Ready")
    t = ready.last_transition_time
    w.run(300)
    ready = next(c for c in w.status.conditions if c.type == "Ready")
    assert ready.last_transition_time == t


# --------------------------------------------------------------------------------------
# No usable policy
# --------------------------------------------------------------------------------------


def test_missing_policy_on_first_sight_is_pending_and_stalled_without_crashing() -> None:
    w = World(None, policy_error="RolloutPolicy 'p' not found")
    w.annotate("promote", user="x")
    d = w.step()
    s = d.status
    assert s.phase == Phase.PENDING and s.history == []
    assert "RolloutPolicy 'p' not found" in s.message
    stalled = w.condition("Stalled")
    assert stalled == ("True", "PolicyError", "RolloutPolicy 'p' not found")
    assert actions_of(d, RemoveAnnotation) == [] and "rewind.dev/promote" in w.annotations
    assert d.requeue_after is None
    w.policy, w.policy_error = make_policy(), None
    w.step(10)
    assert w.phase() == Phase.PROGRESSING and w.condition("Stalled")[0] == "False"


def test_policy_none_without_error_text_gets_a_default_message() -> None:
    w = World(None)
    w.step()
    assert w.condition("Stalled")[2] == "RolloutPolicy 'p' not found"


def test_policy_disappearing_mid_rollout_holds_everything_but_break_glass() -> None:
    w = promoted_world()
    w.release(make_spec("2.0.0"))
    at_step(w, 1)
    policy = w.policy
    w.policy, w.policy_error = None, "RolloutPolicy 'p' not found"
    w.run(3600, dt=60)
    assert w.phase() == Phase.PROGRESSING and w.status.current_step == 1
    assert w.weights() == {1: 90, 2: 10}
    assert w.condition("Stalled")[:2] == ("True", "PolicyError")
    w.release(make_spec("3.0.0"))  # a new spec cannot be released without a policy
    assert w.status.candidate_revision == 2
    w.annotate("promote", user="x")
    d = w.act("rollback", value="stop it", user="oncall")
    assert w.phase() == Phase.ROLLED_BACK and w.weights() == {1: 100}
    assert actions_of(d, RemoveAnnotation) == [RemoveAnnotation("rewind.dev/rollback")]
    w.policy, w.policy_error = policy, None
    w.step(10)
    assert w.status.candidate_revision == 3  # the pending spec change now proceeds
    assert "rewind.dev/promote" not in w.annotations  # consumed (and ignored) now


def test_policy_error_with_a_policy_object_still_counts_as_unusable() -> None:
    w = World(make_policy(), policy_error="RolloutPolicy 'p': spec.strategy: set exactly one")
    d = w.step()
    assert d.status.phase == Phase.PENDING and d.status.history == []
    assert "set exactly one" in w.condition("Stalled")[2]


def test_inputs_are_not_mutated() -> None:
    w = promoted_world()
    w.release(make_spec("2.0.0"))
    at_step(w, 1)
    inp: Inputs = w.inputs(w.round())
    snapshot = inp.status.model_dump()
    decide(inp)
    assert inp.status.model_dump() == snapshot
