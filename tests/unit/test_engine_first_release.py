"""A first release with gates (issue 11, item 7, second half): with no stable revision, the
first revision runs the policy's gates at 0% of user traffic (a preview reachable at its own
Service, analysed with the metrics that need no stable, a manual gate) before it takes all
traffic, unless the policy says ``firstRelease: Promote``. It is never routed before it is
Available."""

from __future__ import annotations

from typing import Any

from rewind.api import Phase, RolloutPolicySpec
from rewind.engine import SetRoutes, analysis_metrics, analysis_targets, plan_for
from rewind.engine_plan import StageKind
from tests.unit.test_engine_kit import (
    BLUE_GREEN,
    CANARY_MANUAL,
    FAIL,
    INCONCLUSIVE,
    SHADOW_STOP,
    World,
    actions_of,
    make_policy,
)


def gated(strategy: dict[str, Any] | None = None, **kwargs: Any) -> RolloutPolicySpec:
    """A policy that says nothing of the first release: the API's default applies."""
    return make_policy(strategy, first_release=None, **kwargs)


def route_writes(w: World) -> list[SetRoutes]:
    """The distinct routes asked for, in order (every call asks for them again)."""
    out: list[SetRoutes] = []
    for d in w.decisions:
        for a in actions_of(d, SetRoutes):
            if a not in out:
                out.append(a)
    return out


def test_a_first_release_runs_its_gates_before_it_takes_traffic() -> None:
    """The issue's input: the first release under a policy with analysis was promoted as
    soon as it was Available, skipping the analysis."""
    w = World(gated(), ready_after=20)
    w.step()
    w.run(20)
    s = w.status
    assert s.phase == Phase.PROGRESSING and s.current_step == 1 and w.routes is None
    stage = plan_for(s, gated()).stage(1)
    assert stage.kind == StageKind.FIRST_PREVIEW and stage.weight == 0 and stage.analysed
    assert analysis_targets(s) == (1, 0)
    w.run(50)
    assert w.phase() == Phase.PROGRESSING and w.routes is None  # the canary's 1m window
    assert w.status.analysis.last_run_at is not None  # measured meanwhile
    w.run_until(lambda x: x.status.phase == Phase.PROMOTED, limit=5)
    s = w.status
    assert s.stable_revision == 1 and w.weights() == {1: 100}
    assert route_writes(w) == [SetRoutes({1: 100}, None, 0)]  # no traffic before that
    types = w.timeline_types()
    assert types.index("StepStarted") < types.index("Promoted")


def test_with_no_data_the_first_release_holds_and_says_how_to_move_on() -> None:
    w = World(gated())
    w.verdicts = lambda _r, _n: INCONCLUSIVE  # no smoke tests: nothing reaches it at 0%
    w.step()
    w.run(600)
    s = w.status
    assert s.phase == Phase.PROGRESSING and w.routes is None
    assert "send smoke tests to Service fraud-r1" in s.message
    assert "kubectl annotate modelrelease/fraud -n risk rewind.dev/promote=true" in s.message
    degraded = w.condition("Degraded")
    assert degraded[:2] == ("True", "AnalysisInconclusive")
    assert "firstRelease: Promote" in degraded[2]
    w.act("promote", user="alice")  # a human vouches for it
    w.settle()
    s = w.status
    assert s.phase == Phase.PROMOTED and w.weights() == {1: 100}
    vouched = [e for e in s.timeline if e.type == "PromoteRequested"]
    assert vouched[-1].user == "alice" and "vouching for it" in vouched[-1].message


def test_a_first_release_failing_its_preview_never_serves_anyone() -> None:
    w = World(gated())
    w.verdicts = lambda _r, _n: FAIL  # the smoke tests get errors
    w.step()
    w.settle()
    s = w.status
    assert s.phase == Phase.FAILED and w.outcome(1) == "Failed" and w.routes is None
    assert "error-rate" in s.history[0].reason
    assert w.replicas(1) == 0
    assert w.timeline_types().count("RollbackStarted") == 0  # nothing to roll back to


def test_a_manual_gate_holds_the_first_release_at_zero_percent() -> None:
    w = World(gated(CANARY_MANUAL))
    w.step()
    w.run_until(lambda x: x.status.phase == Phase.PAUSED)
    s = w.status
    assert w.routes is None and plan_for(s, gated(CANARY_MANUAL)).stage(
        s.current_step).kind == StageKind.FIRST_GATE
    assert "rewind.dev/promote=true" in s.message
    w.run(3600, dt=60)
    assert w.phase() == Phase.PAUSED and w.routes is None
    w.act("promote", user="alice")
    w.settle()
    assert w.phase() == Phase.PROMOTED and w.weights() == {1: 100}


def test_blue_green_and_shadow_first_releases_preview_then_take_all_traffic() -> None:
    for strategy, window in ((BLUE_GREEN, 60), (SHADOW_STOP, 120)):
        w = World(gated(strategy))
        w.step()
        w.run(window - 10)
        assert w.phase() == Phase.PROGRESSING and w.routes is None, strategy
        assert w.mirror() == (None, 0)  # nothing to mirror from yet
        w.run_until(lambda x: x.status.phase == Phase.PROMOTED, limit=5)
        # Even a shadow with onSuccess: Stop: nothing else would serve users.
        assert w.status.stable_revision == 1 and w.weights() == {1: 100}, strategy


def test_metrics_that_compare_with_the_stable_are_left_out_of_a_first_release() -> None:
    policy = gated(metrics=("error-rate",))
    policy.analysis.metrics[0].query = "x{w='{{candidateWorkload}}'} / x{w='{{stableWorkload}}'}"
    w = World(policy)
    assert analysis_metrics(w.status, policy) == []
    w.step()
    assert not plan_for(w.status, policy).stage(1).analysed
    w.run(60)
    assert w.status.analysis.last_run_at is None  # nothing to compare with: not queried
    w.run_until(lambda x: x.status.phase == Phase.PROMOTED, limit=5)
    # Later releases measure every metric.
    assert [m.name for m in analysis_metrics(w.status, policy)] == ["error-rate"]


def test_first_release_promote_takes_all_traffic_once_available() -> None:
    w = World(make_policy(first_release="Promote"), ready_after=25)
    w.step()
    w.run(20)
    assert w.routes is None
    w.step(10)
    assert w.phase() == Phase.PROMOTED and w.status.analysis.last_run_at is None


def test_never_routed_before_it_is_available() -> None:
    w = World(gated(CANARY_MANUAL, progress_deadline="30m"), ready_after=600)
    w.step()
    w.act("promote", user="alice", advance=10)  # too early: not at a gate yet
    w.run(500)
    assert w.routes is None and w.phase() == Phase.PROGRESSING
    w.run_until(lambda x: x.status.phase == Phase.PAUSED)
    w.degraded.add(1)  # loses a pod at the gate
    w.act("promote", user="alice", advance=10)
    assert w.phase() == Phase.PAUSED and w.routes is None  # waits for it
    w.degraded.clear()
    w.settle()
    assert w.phase() == Phase.PROMOTED and route_writes(w) == [SetRoutes({1: 100}, None, 0)]
