"""The circuit breaker (issue 14): trip and reset decided from readings and time, in every
phase; a trip is one route write to the fallback, Tripped only once read back; never a
rollback, never a revision change."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

import pytest

from rewind.adapters.base import Fallback
from rewind.api import (
    BreakerState,
    ModelReleaseSpec,
    Phase,
    RolloutPolicySpec,
    TrafficSpec,
    Verdict,
)
from rewind.engine import SetRoutes
from tests.unit.test_engine_kit import (
    CANARY,
    FAIL,
    INCONCLUSIVE,
    NAMESPACE,
    PASS,
    World,
    at_step,
    events,
    make_policy,
    make_spec,
    new_timeline,
    promoted_world,
    routes_of,
)

FALLBACK_SVC = Fallback(service=f"rules.{NAMESPACE}.svc.cluster.local", port=8080)
#: Every user to the fallback; the in-cluster name stays on the stable, r1.
TO_FALLBACK = SetRoutes({}, None, 0, None, 1, FALLBACK_SVC)


def with_breaker(
    policy: RolloutPolicySpec | None = None,
    *,
    hold_for: str = "0s",
    interval: str = "2s",
    mode: str = "Automatic",
    healthy_for: str = "10s",
    fallback: dict[str, Any] | None = None,
) -> RolloutPolicySpec:
    base = (policy or make_policy()).model_dump(by_alias=True, exclude_none=True)
    base["breaker"] = {
        "query": "sum(rate(errors{release='{{release}}'}[{{interval}}]))",
        "thresholds": {"max": 0.05},
        "interval": interval,
        "holdFor": hold_for,
        "fallback": fallback or {"service": {"name": "rules", "port": 8080}},
        "reset": {"mode": mode, "healthyFor": healthy_for},
    }
    return RolloutPolicySpec.model_validate(base)


class Signal:
    """The breaker signal, switched by the test."""

    def __init__(self) -> None:
        self.verdict = PASS

    def __call__(self, _now: datetime) -> Verdict:
        return self.verdict


def breaker_world(policy: RolloutPolicySpec | None = None, **kwargs: Any) -> tuple[World, Signal]:
    signal = Signal()
    w = promoted_world(policy or with_breaker(), signal=signal, **kwargs)
    return w, signal


def state(w: World) -> BreakerState:
    assert w.status.breaker is not None
    return w.status.breaker.state


def types_since(w: World, index: int) -> list[str]:
    return [e.type for e in w.status.timeline[index:]]


# --------------------------------------------------------------------------------------
# Promoted: trip, read back, reset
# --------------------------------------------------------------------------------------


def test_promoted_trip_is_one_route_write_and_tripped_only_once_read_back() -> None:
    w, signal = breaker_world()
    assert state(w) == BreakerState.CLOSED and w.weights() == {1: 100}
    signal.verdict = FAIL
    w.follow_route_writes = False
    d = w.step(2)
    assert state(w) == BreakerState.TRIPPING  # asked for, not read back yet
    assert routes_of(d) == [TO_FALLBACK]
    assert [e.reason for e in events(d, "Warning")] == ["BreakerTripped"]
    assert "rules.risk.svc.cluster.local:8080" in events(d, "Warning")[0].message
    assert w.status.routes.in_effect is False
    d = w.step(0)  # the handler looks again: the router reports the fallback
    assert state(w) == BreakerState.TRIPPED
    assert [e.reason for e in events(d)] == ["FallbackInEffect"]
    assert w.status.routes.fallback == FALLBACK_SVC.describe() and w.status.routes.in_effect
    # Never a rollback and never a revision change.
    assert w.status.phase == Phase.PROMOTED and w.status.stable_revision == 1
    assert "RollbackStarted" not in w.timeline_types()
    assert w.status.breaker is not None and w.status.breaker.trips == 1
    assert w.condition("Ready")[0] == "False"
    assert w.condition("Reconciling")[:2] == ("True", "BreakerTripped")
    assert w.condition("Degraded")[:2] == ("True", "BreakerTripped")


def test_automatic_reset_after_healthy_for_then_closed_once_model_routes_read_back() -> None:
    w, signal = breaker_world(with_breaker(healthy_for="10s"))
    signal.verdict = FAIL
    w.step(2)
    assert state(w) == BreakerState.TRIPPED
    signal.verdict = PASS
    w.step(2)  # healthy run starts
    w.step(6)
    assert state(w) == BreakerState.TRIPPED  # 6 s healthy < 10 s
    signal.verdict = INCONCLUSIVE
    w.step(2)  # no data breaks the healthy run
    signal.verdict = PASS
    w.step(2)
    w.step(8)
    assert state(w) == BreakerState.TRIPPED  # 8 s since the run restarted
    w.follow_route_writes = False
    mark = len(w.status.timeline)
    d = w.step(2)
    assert state(w) == BreakerState.RESETTING
    assert routes_of(d) == [SetRoutes({1: 100}, None, 0)]
    d = w.step(0)
    assert state(w) == BreakerState.CLOSED
    assert types_since(w, mark) == ["BreakerReset", "BreakerClosed"]
    assert w.weights() == {1: 100} and w.condition("Ready")[0] == "True"
    assert w.condition("Degraded")[0] == "False"


def test_hold_for_needs_an_unbroken_run_of_breaching_readings() -> None:
    w, signal = breaker_world(with_breaker(hold_for="4s"))
    signal.verdict = FAIL
    w.step(2)
    w.step(2)
    assert state(w) == BreakerState.CLOSED  # breaching for 2 s
    signal.verdict = PASS
    w.step(2)  # the run is broken
    signal.verdict = FAIL
    w.step(2)
    w.step(2)
    assert state(w) == BreakerState.CLOSED
    signal.verdict = INCONCLUSIVE
    w.step(1)  # no data neither breaks nor trips
    assert state(w) == BreakerState.CLOSED
    signal.verdict = FAIL
    w.step(1)
    assert state(w) == BreakerState.TRIPPED  # 4 s since the run began
    b = w.status.breaker
    assert b is not None and "holdFor 4s" in b.reason


def test_inconclusive_never_trips() -> None:
    w, signal = breaker_world()
    signal.verdict = INCONCLUSIVE
    w.run(60, dt=2)
    assert state(w) == BreakerState.CLOSED and w.weights() == {1: 100}


def test_the_engine_asks_to_be_woken_every_breaker_interval() -> None:
    w, _ = breaker_world(with_breaker(interval="3s"))
    d = w.step(1)
    assert d.requeue_after == pytest.approx(3.0)


def test_direct_response_fallback() -> None:
    policy = with_breaker(fallback={"directResponse": {"status": 503, "body": "busy"}})
    w, signal = breaker_world(policy)
    signal.verdict = FAIL
    d = w.step(2)
    assert routes_of(d) == [SetRoutes({}, None, 0, None, 1, Fallback(status=503, body="busy"))]
    assert state(w) == BreakerState.TRIPPED
    assert "direct response 503" in w.status.routes.fallback


def test_a_refused_fallback_write_stays_tripping() -> None:
    w, signal = breaker_world()
    w.refuse_routes = "frozen"
    signal.verdict = FAIL
    w.step(2)
    w.step(2)
    assert state(w) == BreakerState.TRIPPING
    assert w.weights() == {1: 100}
    assert "Tripped" not in w.condition("Ready")[2]
    w.refuse_routes = None
    w.refused = None
    w.step(2)
    assert state(w) == BreakerState.TRIPPED


# --------------------------------------------------------------------------------------
# Manual reset
# --------------------------------------------------------------------------------------


def test_manual_mode_waits_for_a_human_and_says_how() -> None:
    w, signal = breaker_world(with_breaker(mode="Manual"))
    signal.verdict = FAIL
    w.step(2)
    signal.verdict = PASS
    w.run(120, dt=2)
    assert state(w) == BreakerState.TRIPPED
    stalled = w.condition("Stalled")
    assert stalled[:2] == ("True", "BreakerTripped")
    assert "rewind.dev/reset-breaker=true" in stalled[2]
    mark = len(w.status.timeline)
    w.act("reset-breaker", user="alice")
    assert state(w) == BreakerState.CLOSED and w.weights() == {1: 100}
    reset = next(e for e in w.status.timeline[mark:] if e.type == "BreakerReset")
    assert reset.user == "alice" and "reset by alice" in reset.message
    assert w.status.breaker is not None and w.status.breaker.trips == 1


def test_manual_reset_works_in_automatic_mode_too_and_is_ignored_when_closed() -> None:
    w, signal = breaker_world()
    w.act("reset-breaker", value="true-1")
    assert w.status.timeline[-1].type == "ActionIgnored"
    assert "not tripped" in w.status.timeline[-1].message
    signal.verdict = FAIL
    w.step(2)
    assert state(w) == BreakerState.TRIPPED
    signal.verdict = PASS
    w.act("reset-breaker", value="true-2", user="bob")
    assert state(w) == BreakerState.CLOSED


def test_a_reset_value_that_comes_back_is_left_on_the_object_and_never_resets_a_trip() -> None:
    """A GitOps tool re-applying rewind.dev/reset-breaker=true: it acted once; put back while
    the breaker is closed it does not act, is left on the object, and a later trip stays
    tripped."""
    w, signal = breaker_world(with_breaker(mode="Manual"))
    signal.verdict = FAIL
    w.step(2)
    signal.verdict = PASS
    w.act("reset-breaker", user="alice")
    assert state(w) == BreakerState.CLOSED
    w.step(2)  # the removal is seen
    w.act("reset-breaker", user="alice")  # the same value is put back
    assert w.status.timeline[-1].type == "ActionIgnored"
    assert "left on the object" in w.status.timeline[-1].message
    signal.verdict = FAIL
    w.run(20, dt=2)
    assert state(w) == BreakerState.TRIPPED
    assert w.status.breaker is not None and w.status.breaker.trips == 2


# --------------------------------------------------------------------------------------
# Other phases
# --------------------------------------------------------------------------------------


def test_breaker_during_a_canary_holds_the_rollout_and_restarts_its_stage() -> None:
    w, signal = breaker_world(with_breaker(make_policy(CANARY)))
    w.release(make_spec("2.0.0"))
    at_step(w, 1)
    w.run_until(lambda x: x.status.step_started_at is not None, dt=2)
    assert w.weights() == {1: 90, 2: 10}
    signal.verdict = FAIL
    mark = len(w.status.timeline)
    w.step(2)
    assert state(w) == BreakerState.TRIPPED and w.routes == TO_FALLBACK
    assert "holds" in w.status.timeline[mark].message
    rounds = w.status.analysis.last_run_at
    w.run(300, dt=5)  # far beyond the step's pause and several analysis intervals
    assert w.status.phase == Phase.PROGRESSING and w.status.current_step == 1
    assert w.status.analysis.last_run_at == rounds  # no analysis while users are away
    assert w.status.step_started_at is None
    assert w.status.candidate_revision == 2 and w.status.stable_revision == 1
    assert "RollbackStarted" not in types_since(w, mark)
    signal.verdict = PASS
    w.run_until(lambda x: state(x) == BreakerState.CLOSED, dt=5)
    assert w.weights() == {1: 90, 2: 10}
    assert "StepStarted" in types_since(w, mark)  # the stage starts again, fresh clock
    w.settle()
    assert w.phase() == Phase.PROMOTED and w.status.stable_revision == 2


def test_breaker_trips_while_rolling_back_to_a_cold_target() -> None:
    w, signal = breaker_world(with_breaker(make_policy(CANARY)), ready_after=30.0)
    w.release(make_spec("2.0.0"))
    w.settle()
    assert w.status.stable_revision == 2
    w.run(700, dt=50)  # r1 retired (scaled to zero)
    assert w.replicas(1) == 0
    w.act("rollback", value="r2 is wrong")
    assert w.status.phase == Phase.ROLLING_BACK
    signal.verdict = FAIL
    w.step(2)
    # The in-cluster name holds on r2 while r1 is cold (as the rollback would, unbroken).
    assert state(w) == BreakerState.TRIPPED
    assert w.routes == dataclasses.replace(TO_FALLBACK, primary_revision=2)
    w.run(60, dt=5)  # r1 is Available now, but users stay on the fallback
    assert w.status.phase == Phase.ROLLING_BACK and w.routes == TO_FALLBACK
    assert w.status.routes.primary_revision == 1  # the rollback's stable, as without it
    signal.verdict = PASS
    w.run_until(lambda x: x.status.phase == Phase.ROLLED_BACK, dt=5)
    assert state(w) == BreakerState.CLOSED and w.weights() == {1: 100}
    started = [e for e in w.status.timeline if e.type == "RollbackStarted"]
    assert len(started) == 1  # the break glass only: the trip is not a rollback


def test_not_armed_before_anything_serves_users() -> None:
    signal = Signal()
    signal.verdict = FAIL
    w = World(with_breaker(make_policy(CANARY, first_release=None)), signal=signal)
    w.step()
    w.run(20, dt=2)
    assert w.status.stable_revision == 0
    assert w.status.breaker is not None and w.status.breaker.state == BreakerState.CLOSED
    assert all(r.fallback is None for d in w.decisions for r in routes_of(d))


def test_removing_the_breaker_from_the_policy_resets_it() -> None:
    w, signal = breaker_world()
    signal.verdict = FAIL
    w.step(2)
    assert state(w) == BreakerState.TRIPPED
    w.policy = make_policy()
    w.step(2)
    assert w.status.breaker is None and w.weights() == {1: 100}
    assert w.timeline_types()[-2:] == ["BreakerReset", "BreakerClosed"]


def test_an_unusable_policy_holds_the_fallback() -> None:
    w, signal = breaker_world()
    signal.verdict = FAIL
    w.step(2)
    policy = w.policy
    w.policy, w.policy_error = None, "RolloutPolicy 'p' is invalid"
    d = w.step(2)
    assert routes_of(d) == [] and w.routes == TO_FALLBACK
    w.policy, w.policy_error = policy, None
    w.step(2)
    assert state(w) == BreakerState.TRIPPED


def test_trip_timeline_reads_as_a_story() -> None:
    w, signal = breaker_world()
    signal.verdict = FAIL
    before = w.status
    w.step(2)
    added = new_timeline(before, w.status)
    assert [e.type for e in added] == ["BreakerTripped", "FallbackInEffect"]
    assert "not a rollback" in added[0].message
    assert added[0].at == added[1].at  # the handler looked again at once


# --------------------------------------------------------------------------------------
# Gateway API releases: the breaker is refused before any reading or route write
# --------------------------------------------------------------------------------------


def gateway_api_spec(version: str = "1.0.0") -> ModelReleaseSpec:
    return make_spec(version).model_copy(update={"traffic": TrafficSpec.model_validate({
        "hosts": ["fraud.example.com"],
        "gatewayAPI": {"parentRefs": [{"name": "public", "namespace": "infra"}]},
    })})


def test_a_gateway_api_release_never_arms_the_breaker_and_says_why() -> None:
    readings: list[datetime] = []

    def signal(now: datetime) -> Verdict:
        readings.append(now)
        return FAIL

    w = World(with_breaker(), spec=gateway_api_spec(), signal=signal)
    w.step()
    w.settle()
    assert w.status.phase == Phase.PROMOTED
    w.run(60, dt=2)
    assert readings == []  # no reading taken, so nothing can trip
    assert w.status.breaker is None and w.weights() == {1: 100}
    assert w.routes is not None and w.routes.fallback is None
    status, reason, message = w.condition("Degraded")
    assert (status, reason) == ("True", "BreakerUnsupported")
    assert "spec.traffic.gatewayAPI" in message and "Istio" in message
    assert w.timeline_types().count("BreakerUnsupported") == 1  # one Event, not one a call
    assert w.condition("Ready")[0] == "True"  # it serves users: only unprotected


def test_a_release_moving_to_istio_arms_the_breaker() -> None:
    w = World(with_breaker(), spec=gateway_api_spec())
    w.step()
    w.settle()
    assert w.condition("Degraded")[1] == "BreakerUnsupported"
    w.release(make_spec("2.0.0"))
    w.settle()
    assert w.status.phase == Phase.PROMOTED and w.status.breaker is not None
    assert w.condition("Degraded")[0] == "False"
