"""How late analysis rounds start (``rewind_analysis_lag_seconds``) and the warning that
says the operator, not the model, is the slow part (issue 11: the operator's saturation is
never judged as the model's failure, and says what to do)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from kubernetes import client

from rewind.adapters.base import MetricProvider, Notifier, Router, Workloads
from rewind.api import ModelReleaseStatus, Phase
from rewind.controller import ReleaseController
from rewind.metrics import OperatorMetrics
from tests.unit.test_engine_kit import PASS, make_policy, meas

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Measured:
    """A metric provider whose every measurement passes."""

    def __init__(self) -> None:
        self.rounds: list[datetime] = []

    async def measure(self, metric: Any, variables: Any, analysis: Any, now: datetime,
                      revision: int) -> Any:
        self.rounds.append(now)
        return meas(PASS, metric.name)


def controller(provider: Measured, metrics: OperatorMetrics) -> ReleaseController:
    return ReleaseController(
        client.ApiClient(),
        router=cast(Router, None),
        workloads=cast(Workloads, None),
        metrics=cast(MetricProvider, provider),
        notifier=cast(Notifier, None),
        operator_metrics=metrics,
    )


def lag(metrics: OperatorMetrics) -> tuple[float, float]:
    """(rounds observed, seconds of lag summed)."""
    count = metrics.registry.get_sample_value("rewind_analysis_lag_seconds_count") or 0.0
    total = metrics.registry.get_sample_value("rewind_analysis_lag_seconds_sum") or 0.0
    return count, total


def test_a_round_started_late_is_measured_and_reported_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics, provider = OperatorMetrics(), Measured()
    c = controller(provider, metrics)
    policy = make_policy(interval="10s")
    # The kit's canary: stage 1 is its first step at 10 %, analysed.
    status = ModelReleaseStatus(
        phase=Phase.PROGRESSING, stable_revision=1, candidate_revision=2, current_step=1,
        step_started_at=T0,
    )
    with caplog.at_level(logging.WARNING, logger="rewind.controller"):
        # Due at T0 + 10 s; the operator only got to it 16 s later.
        found = asyncio.run(
            c._measure("shop", "fraud", status, policy, T0 + timedelta(seconds=26))
        )
        assert found is not None and provider.rounds == [T0 + timedelta(seconds=26)]
        assert lag(metrics) == (1.0, 16.0)
        late = [r.getMessage() for r in caplog.records
                if "analysis is running late" in r.getMessage()]
        assert len(late) == 1
        assert "shop/fraud, 16.0s late, interval 10s" in late[0]
        assert "not the models" in late[0] and "lengthen analysis intervals" in late[0]
        # A second late round within the minute is counted, not logged again.
        asyncio.run(c._measure("shop", "other", status, policy, T0 + timedelta(seconds=30)))
        assert lag(metrics) == (2.0, 36.0)
        assert sum("analysis is running late" in r.getMessage() for r in caplog.records) == 1
        # On time (within half an interval): measured, never a warning.
        c.late_reports.interval = 0.0  # a report would be due: on time is still none
        asyncio.run(c._measure("shop", "fraud", status, policy, T0 + timedelta(seconds=12)))
        assert lag(metrics) == (3.0, 38.0)
        assert sum("analysis is running late" in r.getMessage() for r in caplog.records) == 1


def test_a_round_not_due_is_not_measured_and_records_no_lag() -> None:
    metrics, provider = OperatorMetrics(), Measured()
    c = controller(provider, metrics)
    status = ModelReleaseStatus(
        phase=Phase.PROGRESSING, stable_revision=1, candidate_revision=2, current_step=1,
        step_started_at=T0,
    )
    assert asyncio.run(c._measure("shop", "fraud", status, make_policy(interval="10s"),
                                  T0 + timedelta(seconds=9))) is None
    assert provider.rounds == [] and lag(metrics) == (0.0, 0.0)
