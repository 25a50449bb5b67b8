"""The Prometheus provider against the sandbox's real Prometheus: what PromQL really answers
for x/0, and how it is judged."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from rewind.adapters.prometheus import PrometheusProvider
from rewind.api import AnalysisSpec, MetricSpec, Verdict

pytestmark = pytest.mark.sandbox

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize("no_data", ["Inconclusive", "Pass"])
@pytest.mark.parametrize(
    ("query", "thresholds", "verdict", "shown", "message"),
    [
        # A candidate with errors over a flawless stable: Prometheus says +Inf.
        ("vector(1) / vector(0)", {"max": 2}, "Fail", "+Inf", "ratio +Inf > max 2"),
        ("vector(-1) / vector(0)", {"min": 0}, "Fail", "-Inf", "ratio -Inf < min 0"),
        ("vector(1) / vector(0)", {"min": 0}, "Pass", "+Inf", "ratio +Inf >= min 0"),
    ],
)
def test_real_prometheus_infinities_are_judged_against_the_thresholds(
    prometheus_url: str, no_data: str, query: str, thresholds: dict[str, float], verdict: str,
    shown: str, message: str,
) -> None:
    metric = MetricSpec(name="ratio", query=query, thresholds=thresholds)
    analysis = AnalysisSpec.model_validate({"noData": no_data})
    m = asyncio.run(PrometheusProvider(prometheus_url).measure(metric, {}, analysis, NOW, 3))
    assert (m.verdict, m.value, m.value_text, m.shown, m.message, m.error_kind) == (
        Verdict(verdict), None, shown, shown, message, "")


@pytest.mark.parametrize("no_data", ["Inconclusive", "Fail", "Pass"])
def test_real_prometheus_nan_is_no_data(prometheus_url: str, no_data: str) -> None:
    """0/0 (no traffic at all) is NaN: no data, judged by noData."""
    metric = MetricSpec(name="ratio", query="vector(0) / vector(0)", thresholds={"max": 2})
    analysis = AnalysisSpec.model_validate({"noData": no_data})
    m = asyncio.run(PrometheusProvider(prometheus_url).measure(metric, {}, analysis, NOW, 3))
    assert (m.verdict, m.value, m.shown) == (Verdict(no_data), None, "no data")
    assert m.message == f"ratio: no data (noData: {no_data})"
