"""Analysis rounds: counting, inconclusive holds, automatic rollback and its timing."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import timedelta

import pytest

from rewind.adapters.prometheus import extract_value, judge
from rewind.api import Measurement, NoDataPolicy, Phase, Verdict
from rewind.engine import EnsureRevision, ScaleRevision, SetRoutes, decide
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
    meas,
    promoted_world,
    routes_of,
)


def canary_at_step_1(**policy: object) -> World:
    w = promoted_world(make_policy(**policy))  # type: ignore[arg-type]
    w.release(make_spec("2.0.0"))
    at_step(w, 1)
    return w


def test_a_failed_round_at_the_limit_rolls_back_at_once_to_the_warm_stable() -> None:
    w = canary_at_step_1()
    w.verdicts = lambda _r, _n: FAIL
    d = w.step(10)
    s = d.status
    assert s.phase == Phase.ROLLED_BACK
    assert w.weights() == {1: 100} and w.mirror() == (None, 0)
    assert routes_of(d) == [SetRoutes({1: 100}, None, 0)]
    assert w.outcome(2) == "RolledBack"
    reason = s.history[-1].reason
    # metric, value, threshold, time
    assert "error-rate 0.12 > max 0.05 at 2025-03-01T12:" in reason
    assert "failures 1/1" in reason
    assert s.history[-1].finished_at == w.now
    types = [e.type for e in s.timeline[-4:]]
    assert types == ["AnalysisFailed", "RollbackDecided", "RollbackStarted", "RolledBack"]
    assert {e.type for e in events(d)} == {"Warning"}
    assert w.condition("Degraded")[:2] == ("True", "RolledBack")
    assert w.condition("Stalled")[0] == "True"
    assert w.condition("Ready")[0] == "False"


def test_failed_candidate_is_scaled_down_only_after_scale_down_delay() -> None:
    w = canary_at_step_1(scale_down_delay="45s")
    w.verdicts = lambda _r, _n: FAIL
    d = w.step(10)
    rolled_back_at = w.now
    assert actions_of(d, ScaleRevision) == [] and w.replicas(2) == 2
    assert d.requeue_after == 45.0
    w.run(40)
    assert w.replicas(2) == 2
    d = w.step(5)
    assert w.now - rolled_back_at == timedelta(seconds=45)
    assert ScaleRevision(2, 0) in d.actions and w.replicas(2) == 0
    assert w.outcome(2) == "RolledBack"  # the record stays
    d = w.step(10)
    assert actions_of(d, ScaleRevision) == [] and d.requeue_after is None


def test_failures_count_in_total_across_steps() -> None:
    w = canary_at_step_1(failure_limit=2)
    w.verdicts = lambda _r, _n: FAIL
    w.step(10)
    assert w.status.analysis.failures == 1 and w.phase() == Phase.PROGRESSING
    w.verdicts = lambda _r, _n: PASS
    w.run_until(lambda x: x.status.current_step == 2)
    assert w.status.analysis.failures == 1 and w.status.analysis.consecutive_failures == 0
    w.verdicts = lambda _r, _n: FAIL
    w.run_until(lambda x: x.status.phase != Phase.PROGRESSING)
    assert w.phase() == Phase.ROLLED_BACK and w.status.analysis.failures == 2


def test_consecutive_failure_limit_triggers_before_the_total_limit() -> None:
    w = canary_at_step_1(failure_limit=10, consecutive_failure_limit=3)
    pattern = iter([FAIL, PASS, FAIL, FAIL, FAIL])
    w.verdicts = lambda _r, _n: next(pattern)
    w.step(10)
    w.step(10)
    assert w.status.analysis.consecutive_failures == 0  # the pass reset them
    w.step(10)
    w.step(10)
    assert w.phase() == Phase.PROGRESSING
    assert w.status.analysis.consecutive_failures == 2
    w.step(10)
    assert w.phase() == Phase.ROLLED_BACK
    assert "consecutive 3/3" in w.status.history[-1].reason
    assert w.status.analysis.failures == 4


def test_a_round_fails_if_any_metric_fails_and_counts_each_failed_measurement() -> None:
    w = promoted_world(make_policy(metrics=("error-rate", "latency-p99"), failure_limit=3))
    w.release(make_spec("2.0.0"))
    at_step(w, 1)
    w.verdicts = lambda _r, _n: [PASS, FAIL]
    w.step(10)
    a = w.status.analysis
    assert (a.failures, a.consecutive_failures) == (1, 1)
    w.verdicts = lambda _r, _n: [FAIL, FAIL]
    w.step(10)
    assert w.phase() == Phase.ROLLED_BACK
    assert "latency-p99" in w.status.history[-1].reason
    assert "error-rate" in w.status.history[-1].reason


def test_inconclusive_for_hours_holds_without_rollback_or_traffic_increase() -> None:
    w = canary_at_step_1()
    w.verdicts = lambda _r, _n: INCONCLUSIVE
    w.step(10)
    since = w.now
    w.run(4 * 3600, dt=60)
    s = w.status
    assert s.phase == Phase.PROGRESSING and s.current_step == 1
    assert w.weights() == {1: 90, 2: 10}
    assert s.analysis.failures == 0 and s.analysis.inconclusive > 200
    degraded = w.condition("Degraded")
    assert degraded[:2] == ("True", "AnalysisInconclusive")
    assert f"analysis inconclusive since {since:%Y-%m-%dT%H:%M:%SZ}" in degraded[2]
    assert "no data" in degraded[2]
    assert "inconclusive since" in w.condition("Progressing")[2]
    assert "analysis inconclusive: holding" in s.message
    # Announced once when the streak began, not every round.
    assert w.timeline_types().count("AnalysisInconclusive") == 1
    # Data comes back: the step resumes and the condition clears.
    w.verdicts = lambda _r, _n: PASS
    w.step(60)
    assert w.status.current_step == 2
    assert w.condition("Degraded")[0] == "False"


def test_a_pass_then_inconclusive_does_not_advance_the_step() -> None:
    w = canary_at_step_1()
    start = w.status.step_started_at
    assert start is not None
    w.verdicts = lambda _r, now: PASS if now < start + timedelta(seconds=50) else INCONCLUSIVE
    w.run(120)
    assert w.status.current_step == 1


def test_inconclusive_never_rolls_back_even_past_the_failure_limit_count() -> None:
    w = canary_at_step_1(failure_limit=1, consecutive_failure_limit=1)
    w.verdicts = lambda _r, _n: [INCONCLUSIVE, PASS]
    w.run(600)
    assert w.phase() == Phase.PROGRESSING and w.status.analysis.failures == 0


@pytest.mark.parametrize("no_data", [NoDataPolicy.INCONCLUSIVE, NoDataPolicy.PASS])
def test_an_infinite_ratio_from_prometheus_rolls_the_candidate_back(
    no_data: NoDataPolicy,
) -> None:
    """A candidate's error ratio against a flawless stable is +Inf. Once taken for no data,
    it held the rollout forever (noData: Inconclusive) or passed it (noData: Pass)."""
    w = canary_at_step_1()
    assert w.policy is not None
    analysis = w.policy.analysis.model_copy(update={"no_data": no_data})
    w.policy = w.policy.model_copy(update={"analysis": analysis})
    error_rate = analysis.metrics[0]  # max 0.05
    answer = [{"metric": {}, "value": [1740830400.0, "+Inf"]}]  # Prometheus' data.result
    w.now += timedelta(seconds=10)
    m = judge(error_rate, analysis, w.now, w.status.candidate_revision,
              value=extract_value(answer))
    d = w.step(measurements=[m])
    assert w.phase() == Phase.ROLLED_BACK and w.weights() == {1: 100}
    assert "error-rate +Inf > max 0.05 at " in w.status.history[-1].reason
    for text in [e.message for e in events(d)] + [w.status.history[-1].reason]:
        assert "no data" not in text and "None" not in text and "inf " not in text
    stored = w.status.analysis.measurements[-1]
    assert (stored.value, stored.value_text, stored.verdict) == (None, "+Inf", Verdict.FAIL)


def test_a_measurement_without_a_message_is_described_with_its_infinite_value() -> None:
    """A status written without messages (an older operator) still shows +Inf, not no data."""
    w = canary_at_step_1()
    bare = Measurement(metric="error-rate", value=math.inf, max=0.05, verdict=Verdict.FAIL)
    w.step(10, measurements=[bare])
    assert w.phase() == Phase.ROLLED_BACK
    assert "error-rate +Inf (thresholds max 0.05) at " in w.status.history[-1].reason


def test_the_same_round_delivered_twice_is_counted_once() -> None:
    w = canary_at_step_1(failure_limit=2)
    w.now += timedelta(seconds=10)
    round_ = [meas(FAIL)]
    inp = w.inputs(round_)
    first = decide(inp)
    again = decide(replace(inp, status=first.status))
    assert first.status.analysis.failures == 1
    assert again.status == first.status
    # Even a later call that carries a round stamped before lastRunAt is ignored.
    later = replace(inp, status=first.status, now=inp.now - timedelta(seconds=1))
    assert decide(later).status.analysis.failures == 1


def test_measurements_of_another_revision_are_ignored() -> None:
    w = canary_at_step_1()
    stale = Measurement(
        metric="error-rate",
        value=0.9,
        max=0.05,
        verdict=Verdict.FAIL,
        revision=1,
        message="error-rate 0.9 > max 0.05",
    )
    w.step(10, measurements=[stale])
    assert w.phase() == Phase.PROGRESSING and w.status.analysis.failures == 0
    assert w.status.analysis.last_run_at is None


def test_measurements_outside_an_analysed_stage_are_ignored() -> None:
    w = promoted_world()
    d = w.step(10, measurements=[meas(FAIL)])
    assert d.status.analysis.measurements == [] and d.status.phase == Phase.PROMOTED
    w.release(make_spec("2.0.0"))  # stage Ready is not analysed
    assert w.status.current_step == 0
    d = w.step(1, measurements=[meas(FAIL)])
    assert d.status.analysis.failures == 0


def test_recorded_measurements_are_stamped_and_bounded() -> None:
    w = promoted_world(make_policy(metrics=("a", "b", "c"), failure_limit=1000))
    w.release(make_spec("2.0.0"))
    at_step(w, 1)
    w.verdicts = lambda _r, _n: [PASS, PASS, PASS]
    w.run(60)
    ms = w.status.analysis.measurements
    assert len(ms) == 18
    w.verdicts = lambda _r, _n: [PASS, PASS, PASS]
    w.run(30)
    ms = w.status.analysis.measurements
    assert len(ms) == 20
    assert ms[-1].at == w.status.analysis.last_run_at and ms[-1].revision == 2
    assert [m.metric for m in ms[-3:]] == ["a", "b", "c"]


def test_rollback_keeps_the_stable_workload_and_does_not_touch_its_scale() -> None:
    w = canary_at_step_1()
    w.verdicts = lambda _r, _n: FAIL
    d = w.step(10)
    assert EnsureRevision(1, 2) in d.actions
    assert all(a.revision != 1 for a in actions_of(d, ScaleRevision))
