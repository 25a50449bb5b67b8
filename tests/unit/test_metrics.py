"""Operator metrics are derived from what the status says happened."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from rewind.api import Measurement, ModelReleaseStatus, Phase, TimelineEntry, TimelineType, Verdict
from rewind.metrics import OperatorMetrics

T0 = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)
IDS = {"namespace": "ml", "release": "chatbot"}


def entry(kind: TimelineType, seconds: float, user: str = "") -> TimelineEntry:
    return TimelineEntry(at=T0 + timedelta(seconds=seconds), type=kind.value, revision=2,
                         user=user)


def status(*entries: TimelineEntry, phase: Phase = Phase.PROGRESSING) -> ModelReleaseStatus:
    return ModelReleaseStatus(phase=phase, timeline=list(entries))


def value(metrics: OperatorMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, {**IDS, **labels})


def test_one_of_two_approvals_is_not_a_rollback() -> None:
    metrics = OperatorMetrics()
    asked = entry(TimelineType.APPROVAL_REQUESTED, 0)
    first = entry(TimelineType.APPROVED, 5, "alice")
    metrics.observe("ml", "chatbot", status(asked), status(asked, first), None, T0)
    assert value(metrics, "rewind_rollbacks_total", reason="approved") is None


def test_a_rollback_counts_once_with_its_trigger_and_times_the_revert() -> None:
    metrics = OperatorMetrics()
    before = status(entry(TimelineType.APPROVED, 5, "alice"))
    after = status(
        *before.timeline,
        entry(TimelineType.APPROVED, 9, "bob"),
        entry(TimelineType.ROLLBACK_STARTED, 9),
        entry(TimelineType.ROLLED_BACK, 9),
        phase=Phase.ROLLED_BACK,
    )
    applied = T0 + timedelta(seconds=9.25)
    metrics.observe("ml", "chatbot", before, after, None, applied)
    assert value(metrics, "rewind_rollbacks_total", reason="approved") == 1
    assert value(metrics, "rewind_rollouts_finished_total", outcome="RolledBack") == 1
    assert value(metrics, "rewind_decision_to_revert_seconds_sum") == 0.25
    # The same status seen again counts nothing new.
    metrics.observe("ml", "chatbot", after, after, None, applied)
    assert value(metrics, "rewind_rollbacks_total", reason="approved") == 1


def test_overloaded_measurements_are_counted_apart_from_other_errors() -> None:
    metrics = OperatorMetrics()
    round_ = [
        Measurement(metric="error-rate", verdict=Verdict.INCONCLUSIVE, error_kind="overloaded"),
        Measurement(metric="latency", verdict=Verdict.INCONCLUSIVE, error_kind="overloaded"),
        Measurement(metric="psi", verdict=Verdict.FAIL, error_kind="timeout"),
        Measurement(metric="ratio", value=float("inf"), verdict=Verdict.FAIL),
    ]
    metrics.observe("ml", "chatbot", status(), status(), round_, T0)
    assert value(metrics, "rewind_analysis_overloaded_total") == 2
    assert value(metrics, "rewind_analysis_measurements_total", metric="error-rate",
                 verdict="Inconclusive") == 1
    metrics.observe("ml", "chatbot", status(), status(), round_[2:], T0)
    assert value(metrics, "rewind_analysis_overloaded_total") == 2
    metrics.forget("ml", "chatbot")
    assert value(metrics, "rewind_analysis_overloaded_total") is None


def test_a_timeout_that_resumes_is_not_a_rollback() -> None:
    metrics = OperatorMetrics()
    after = status(entry(TimelineType.APPROVAL_TIMED_OUT, 60))
    metrics.observe("ml", "chatbot", status(), after, None, T0)
    assert value(metrics, "rewind_rollbacks_total", reason="approval-timeout") is None


def test_phase_gauge_and_forget() -> None:
    metrics = OperatorMetrics()
    metrics.observe("ml", "chatbot", status(), status(phase=Phase.AWAITING_APPROVAL), None, T0)
    assert value(metrics, "rewind_release_phase", phase="AwaitingApproval") == 1
    assert value(metrics, "rewind_release_phase", phase="Promoted") == 0
    metrics.forget("ml", "chatbot")
    assert value(metrics, "rewind_release_phase", phase="AwaitingApproval") is None
    assert value(metrics, "rewind_release_candidate_weight") is None


def test_conditions_and_routes_in_effect_are_gauges() -> None:
    from tests.unit.test_engine_kit import promoted_world

    w = promoted_world(releases=2)
    metrics = OperatorMetrics()
    metrics.observe("ml", "chatbot", w.status, w.status, None, T0)
    assert value(metrics, "rewind_release_condition", type="Ready") == 1
    assert value(metrics, "rewind_release_routes_in_effect") == 1
    before = w.status
    w.broken.add(2)  # the promoted revision lost its pods
    w.step(2)
    metrics.observe("ml", "chatbot", before, w.status, None, T0)
    assert value(metrics, "rewind_release_condition", type="Ready") == 0
    assert value(metrics, "rewind_release_condition", type="Stalled") == 1
    assert value(metrics, "rewind_release_condition", type="Degraded") == 1
    metrics.forget("ml", "chatbot")
    assert value(metrics, "rewind_release_condition", type="Ready") is None


def test_a_waiting_approval_is_exported_with_its_times_and_how_long_it_waited() -> None:
    from rewind.api import ApprovalRecord, PendingDecision

    metrics = OperatorMetrics()
    asked = entry(TimelineType.APPROVAL_REQUESTED, 0)
    decision = PendingDecision(decided_at=T0, expires_at=T0 + timedelta(minutes=15),
                               required_approvers=2,
                               approvals=[ApprovalRecord(user="alice", at=T0)])
    waiting = ModelReleaseStatus(phase=Phase.AWAITING_APPROVAL, timeline=[asked],
                                 pending_decision=decision)
    metrics.observe("ml", "chatbot", status(), waiting, None, T0)
    assert value(metrics, "rewind_release_approval_requested_timestamp_seconds") == (
        T0.timestamp())
    assert value(metrics, "rewind_release_approval_deadline_timestamp_seconds") == (
        T0.timestamp() + 900)
    assert value(metrics, "rewind_release_approvals", state="received") == 1
    assert value(metrics, "rewind_release_approvals", state="required") == 2

    done = ModelReleaseStatus(
        phase=Phase.ROLLED_BACK,
        timeline=[asked, entry(TimelineType.APPROVED, 42, "bob"),
                  entry(TimelineType.ROLLBACK_STARTED, 42), entry(TimelineType.ROLLED_BACK, 42)])
    metrics.observe("ml", "chatbot", waiting, done, None, T0 + timedelta(seconds=42))
    assert value(metrics, "rewind_release_approval_requested_timestamp_seconds") is None
    assert value(metrics, "rewind_release_approvals", state="required") is None
    assert value(metrics, "rewind_approval_wait_seconds_sum", outcome="approved") == 42
    assert value(metrics, "rewind_approval_wait_seconds_count", outcome="approved") == 1


def test_a_rejected_or_timed_out_decision_is_timed_under_its_outcome() -> None:
    from rewind.api import PendingDecision

    for kind, outcome in ((TimelineType.REJECTED, "rejected"),
                          (TimelineType.APPROVAL_TIMED_OUT, "timeout")):
        metrics = OperatorMetrics()
        waiting = ModelReleaseStatus(phase=Phase.AWAITING_APPROVAL,
                                     pending_decision=PendingDecision(decided_at=T0))
        after = status(entry(kind, 60))
        metrics.observe("ml", "chatbot", waiting, after, None, T0 + timedelta(seconds=60))
        assert value(metrics, "rewind_approval_wait_seconds_sum", outcome=outcome) == 60


def test_notifications_pending_and_delivered_are_counted() -> None:
    from rewind.api import NotificationRecord, NotificationState

    metrics = OperatorMetrics()
    outbox = ModelReleaseStatus(notifications=[
        NotificationRecord(id="a"), NotificationRecord(id="b", state=NotificationState.SENT)])
    metrics.observe("ml", "chatbot", status(), outbox, None, T0)
    assert value(metrics, "rewind_notifications_pending") == 1
    metrics.notification_result("ml", "chatbot", "oncall", "sent")
    assert value(metrics, "rewind_notifications_total", target="oncall", result="sent") == 1
    metrics.forget("ml", "chatbot")
    assert value(metrics, "rewind_notifications_total", target="oncall", result="sent") is None
