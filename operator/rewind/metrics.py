"""The operator's own Prometheus metrics, derived from status transitions.

Deriving them from what the engine wrote (new timeline entries, phase, weights) rather
than sprinkling counters through the handlers keeps one source of truth: whatever the
status says happened is what the metrics count.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from rewind.api import (
    BreakerState,
    DrillVerdict,
    Measurement,
    ModelReleaseStatus,
    NotificationState,
    Phase,
    QueryErrorKind,
    TimelineEntry,
    TimelineType,
)

#: Timeline entries that decide a rollback, and the `reason` label it counts under.
ROLLBACK_TRIGGERS: Mapping[str, str] = {
    TimelineType.ROLLBACK_DECIDED.value: "analysis",
    TimelineType.APPROVED.value: "approved",
    TimelineType.APPROVAL_TIMED_OUT.value: "approval-timeout",
    TimelineType.BREAK_GLASS.value: "break-glass",
}
#: How a decision awaiting approval ended, by the timeline entry that ended it (first wins).
APPROVAL_ENDS: tuple[tuple[str, str], ...] = (
    (TimelineType.BREAK_GLASS.value, "break-glass"),
    (TimelineType.APPROVAL_TIMED_OUT.value, "timeout"),
    (TimelineType.REJECTED.value, "rejected"),
    (TimelineType.ROLLBACK_STARTED.value, "approved"),
)
FINISHED: Mapping[str, str] = {
    TimelineType.PROMOTED.value: "Promoted",
    TimelineType.ROLLED_BACK.value: "RolledBack",
    TimelineType.FAILED.value: "Failed",
}


#: Timeline entries that end a rollback drill (its result is status.lastDrill).
DRILL_ENDS = frozenset({TimelineType.DRILL_PASSED.value, TimelineType.DRILL_FAILED.value,
                        TimelineType.DRILL_CANCELLED.value})


def _key(entry: TimelineEntry) -> tuple[object, ...]:
    return (entry.at, entry.type, entry.revision, entry.message, entry.user)


def new_entries(old: ModelReleaseStatus, new: ModelReleaseStatus) -> list[TimelineEntry]:
    """Timeline entries the latest decision appended (the timeline only grows at the end)."""
    seen = {_key(e) for e in old.timeline}
    return [e for e in new.timeline if _key(e) not in seen]


class OperatorMetrics:
    """Counters, gauges and the decision-to-revert histogram, in their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        labels = ["namespace", "release"]
        self.rollouts_started = Counter(
            "rewind_rollouts_started_total",
            "Revisions that started rolling out.",
            [*labels, "strategy"],
            registry=self.registry,
        )
        self.rollouts_finished = Counter(
            "rewind_rollouts_finished_total",
            "Rollouts that ended, by outcome (Promoted, RolledBack, Failed).",
            [*labels, "outcome"],
            registry=self.registry,
        )
        self.rollbacks = Counter(
            "rewind_rollbacks_total",
            "Rollbacks started, by what triggered them.",
            [*labels, "reason"],
            registry=self.registry,
        )
        self.measurements = Counter(
            "rewind_analysis_measurements_total",
            "Analysis measurements, by metric and verdict.",
            [*labels, "metric", "verdict"],
            registry=self.registry,
        )
        self.overloaded = Counter(
            "rewind_analysis_overloaded_total",
            "Analysis queries never sent because every query thread stayed busy for the "
            "query's timeout (measurement Inconclusive, errorKind overloaded): the operator, "
            "not the model, is the bottleneck. Raise --analysis-threads, lengthen intervals, "
            "use fewer metrics or shard releases across operators by namespace.",
            labels,
            registry=self.registry,
        )
        #: Over all releases, unlabelled: a series per release would multiply its buckets.
        self.analysis_lag = Histogram(
            "rewind_analysis_lag_seconds",
            "How late analysis rounds started after they were due, in seconds, over all "
            "releases: the operator's own delay, not the model's. A lag near the analysis "
            "interval means the operator or its API server is overloaded: give them more CPU, "
            "lengthen intervals, use fewer metrics or shard releases across operators by "
            "namespace.",
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120),
            registry=self.registry,
        )
        self.weight = Gauge(
            "rewind_release_candidate_weight",
            "Percent of user traffic on the candidate revision, as the router reports it.",
            labels,
            registry=self.registry,
        )
        self.mirror = Gauge(
            "rewind_release_mirror_percent",
            "Percent of traffic mirrored to the candidate revision.",
            labels,
            registry=self.registry,
        )
        self.phase = Gauge(
            "rewind_release_phase",
            "1 for the release's current phase, 0 for the others.",
            [*labels, "phase"],
            registry=self.registry,
        )
        self.decision_to_revert = Histogram(
            "rewind_decision_to_revert_seconds",
            "From the rollback decision (or approval) to traffic back on stable.",
            labels,
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900),
            registry=self.registry,
        )
        self.condition = Gauge(
            "rewind_release_condition",
            "1 while the release's condition of this type (Ready, Reconciling, Stalled, "
            "Degraded) is True, else 0; alert on Ready == 0 for a promoted release.",
            [*labels, "type"],
            registry=self.registry,
        )
        self.routes_in_effect = Gauge(
            "rewind_release_routes_in_effect",
            "1 when the routes read back from the router are the ones the release needs.",
            labels,
            registry=self.registry,
        )
        self.breaker_trips = Counter(
            "rewind_breaker_trips_total",
            "Circuit-breaker trips (users sent to the fallback; never a rollback).",
            labels,
            registry=self.registry,
        )
        self.breaker_resets = Counter(
            "rewind_breaker_resets_total",
            "Circuit-breaker resets, by how (automatic: the signal was healthy for "
            "healthyFor; manual: rewind.dev/reset-breaker; policy: the breaker was removed).",
            [*labels, "how"],
            registry=self.registry,
        )
        self.breaker_state = Gauge(
            "rewind_breaker_state",
            "1 for the breaker's current state (Closed, Tripping, Tripped, Resetting), 0 for "
            "the others; Tripped means the fallback was read back in effect.",
            [*labels, "state"],
            registry=self.registry,
        )
        self.breaker_trip_to_fallback = Histogram(
            "rewind_breaker_trip_to_fallback_seconds",
            "From the trip decision to the fallback read back in effect.",
            labels,
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
            registry=self.registry,
        )
        self.drills = Counter(
            "rewind_drills_total",
            "Rollback drills that ended, by verdict (Passed, Failed, Cancelled) and failure "
            "(NoTarget, SnapshotMissing, SnapshotCorrupt, PodsNeverReady, AnalysisFailing).",
            [*labels, "verdict", "failure"],
            registry=self.registry,
        )
        self.drill_last_success = Gauge(
            "rewind_drill_last_success_timestamp_seconds",
            "When the release's last passing rollback drill ended (Unix time; 0: never).",
            labels,
            registry=self.registry,
        )
        self.drill_last_failed = Gauge(
            "rewind_drill_last_failed",
            "1 when the release's last rollback drill failed, else 0.",
            labels,
            registry=self.registry,
        )
        self.drill_time_to_ready = Gauge(
            "rewind_drill_time_to_ready_seconds",
            "Last drill: from its start to the rollback target Available (from its snapshot).",
            labels,
            registry=self.registry,
        )
        self.drill_time_to_passing = Gauge(
            "rewind_drill_time_to_passing_analysis_seconds",
            "Last drill with a mirror: from its start to a passing analysis of the target.",
            labels,
            registry=self.registry,
        )
        self.quarantine_hold = Gauge(
            "rewind_release_quarantine_hold",
            "1 while the release holds because a quarantined revision serves (or is its "
            "rollback target) and no known-good revision is clean (Stalled, reason "
            "QuarantineHold), else 0.",
            labels,
            registry=self.registry,
        )
        self.approval_requested = Gauge(
            "rewind_release_approval_requested_timestamp_seconds",
            "While a rollback decision awaits approval: when it was proposed (Unix time); "
            "no series otherwise. time() - this = how long it has waited.",
            labels,
            registry=self.registry,
        )
        self.approval_deadline = Gauge(
            "rewind_release_approval_deadline_timestamp_seconds",
            "While a rollback decision awaits approval: when it times out (Unix time; the "
            "policy's onTimeout applies then).",
            labels,
            registry=self.registry,
        )
        self.approvals = Gauge(
            "rewind_release_approvals",
            "While a rollback decision awaits approval: approvals received and required.",
            [*labels, "state"],
            registry=self.registry,
        )
        self.approval_wait = Histogram(
            "rewind_approval_wait_seconds",
            "From a rollback proposed for approval to its end, by how it ended (approved, "
            "rejected, timeout, break-glass, superseded).",
            [*labels, "outcome"],
            buckets=(5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600),
            registry=self.registry,
        )
        self.notifications = Counter(
            "rewind_notifications_total",
            "Notifications to webhook/Slack targets whose delivery ended, by result (sent, "
            "failed: refused by the receiver or undeliverable for too long).",
            [*labels, "target", "result"],
            registry=self.registry,
        )
        self.notifications_pending = Gauge(
            "rewind_notifications_pending",
            "Notifications in the release's outbox not delivered yet (retried with backoff).",
            labels,
            registry=self.registry,
        )
        self.active = Gauge(
            "rewind_operator_active",
            "1 while this replica runs reconcile loops, 0 while it stands by (Kopf peering).",
            registry=self.registry,
        )
        self.active.set(1)
        self._families: dict[int, Any] = {}
        self._children: dict[tuple[str, str], set[tuple[int, tuple[str, ...]]]] = {}

    def observe(
        self,
        namespace: str,
        release: str,
        old: ModelReleaseStatus,
        new: ModelReleaseStatus,
        measurements: Sequence[Measurement] | None,
        applied_at: datetime,
    ) -> None:
        """Count what this reconcile changed; ``applied_at`` is when its writes landed."""
        ids = {"namespace": namespace, "release": release}
        for m in measurements or ():
            self._child(self.measurements, ids, metric=m.metric, verdict=m.verdict.value).inc()
            if m.error_kind == QueryErrorKind.OVERLOADED.value:
                self._child(self.overloaded, ids).inc()
        self._child(self.weight, ids).set(new.weights.candidate)
        self._child(self.routes_in_effect, ids).set(1 if new.routes.in_effect else 0)
        hold = 0
        for condition in new.conditions:
            if condition.type in ("Ready", "Reconciling", "Stalled", "Degraded"):
                on = 1 if condition.status.value == "True" else 0
                self._child(self.condition, ids, type=condition.type).set(on)
            if condition.type == "Stalled" and condition.status.value == "True":
                hold = int(condition.reason == TimelineType.QUARANTINE_HOLD.value)
        self._child(self.quarantine_hold, ids).set(hold)
        self._child(self.mirror, ids).set(new.mirror_percent)
        for phase in Phase:
            self._child(self.phase, ids, phase=phase.value).set(1 if new.phase == phase else 0)
        if new.breaker is not None:
            for state in BreakerState:
                on = 1 if new.breaker.state == state else 0
                self._child(self.breaker_state, ids, state=state.value).set(on)
        self._observe_drills(ids, new)
        self._approval(ids, old, new, applied_at)
        pending = sum(1 for n in new.notifications if n.state == NotificationState.PENDING)
        self._child(self.notifications_pending, ids).set(pending)
        trigger: TimelineEntry | None = None
        for entry in new_entries(old, new):
            if entry.type in DRILL_ENDS and new.last_drill is not None:
                last = new.last_drill
                verdict = last.verdict.value if last.verdict is not None else ""
                self._child(self.drills, ids, verdict=verdict,
                            failure=last.failure.value).inc()
            if entry.type == TimelineType.BREAKER_TRIPPED.value:
                self._child(self.breaker_trips, ids).inc()
            elif entry.type == TimelineType.BREAKER_RESET.value:
                how = "manual" if entry.user or "reset by" in entry.message else (
                    "policy" if "no longer defines" in entry.message else "automatic"
                )
                self._child(self.breaker_resets, ids, how=how).inc()
            elif entry.type == TimelineType.FALLBACK_IN_EFFECT.value and new.breaker is not None:
                tripped = new.breaker.tripped_at
                if tripped is not None:
                    elapsed = (applied_at - tripped).total_seconds()
                    self._child(self.breaker_trip_to_fallback, ids).observe(max(0.0, elapsed))
            if entry.type in ROLLBACK_TRIGGERS:
                trigger = entry
            elif entry.type == TimelineType.REVISION_CREATED.value:
                strategy = new.strategy.value if new.strategy else "none"
                self._child(self.rollouts_started, ids, strategy=strategy).inc()
            elif entry.type == TimelineType.ROLLBACK_STARTED.value:
                # Counted where a rollback begins: an approval that is one of N, or a
                # timeout that resumes, is not a rollback.
                reason = ROLLBACK_TRIGGERS[trigger.type] if trigger else "other"
                self._child(self.rollbacks, ids, reason=reason).inc()
            if entry.type in FINISHED:
                self._child(self.rollouts_finished, ids, outcome=FINISHED[entry.type]).inc()
            if entry.type == TimelineType.ROLLED_BACK.value:
                decided = self._decided_at(new.timeline, entry)
                if decided is not None:
                    elapsed = (applied_at - decided).total_seconds()
                    self._child(self.decision_to_revert, ids).observe(max(0.0, elapsed))

    def _observe_drills(self, ids: Mapping[str, str], new: ModelReleaseStatus) -> None:
        """Drill gauges from status (so they survive a restart); a release never drilled
        exports last-success 0, which the chart's RewindNoSuccessfulDrill alert counts."""
        success = new.last_successful_drill_at
        self._child(self.drill_last_success, ids).set(success.timestamp() if success else 0)
        last = new.last_drill
        failed = last is not None and last.verdict == DrillVerdict.FAILED
        self._child(self.drill_last_failed, ids).set(1 if failed else 0)
        if last is not None and last.time_to_ready_seconds is not None:
            self._child(self.drill_time_to_ready, ids).set(last.time_to_ready_seconds)
        if last is not None and last.time_to_passing_analysis_seconds is not None:
            self._child(self.drill_time_to_passing, ids).set(
                last.time_to_passing_analysis_seconds)

    def notification_result(self, namespace: str, release: str, target: str, result: str) -> None:
        """A delivery ended (called by the deliverer)."""
        ids = {"namespace": namespace, "release": release}
        self._child(self.notifications, ids, target=target, result=result).inc()

    def _approval(
        self,
        ids: Mapping[str, str],
        old: ModelReleaseStatus,
        new: ModelReleaseStatus,
        applied_at: datetime,
    ) -> None:
        """Approvals waiting (gauges) and, when a decision ends, how long it waited."""
        pd = new.pending_decision if new.phase == Phase.AWAITING_APPROVAL else None
        if pd is not None and pd.decided_at is not None:
            self._child(self.approval_requested, ids).set(pd.decided_at.timestamp())
            if pd.expires_at is not None:
                self._child(self.approval_deadline, ids).set(pd.expires_at.timestamp())
            self._child(self.approvals, ids, state="received").set(len(pd.approvals))
            self._child(self.approvals, ids, state="required").set(pd.required_approvers)
        else:
            for family in (self.approval_requested, self.approval_deadline):
                with contextlib.suppress(KeyError):
                    family.remove(ids["namespace"], ids["release"])
            for state in ("received", "required"):
                with contextlib.suppress(KeyError):
                    self.approvals.remove(ids["namespace"], ids["release"], state)
        before = old.pending_decision if old.phase == Phase.AWAITING_APPROVAL else None
        if before is None or before.decided_at is None:
            return
        if pd is not None and pd.decided_at == before.decided_at:
            return  # still the same decision
        types = {e.type for e in new_entries(old, new)}
        outcome = next(
            (label for kind, label in APPROVAL_ENDS if kind in types), "superseded"
        )
        waited = max(0.0, (applied_at - before.decided_at).total_seconds())
        self._child(self.approval_wait, ids, outcome=outcome).observe(waited)

    @staticmethod
    def _decided_at(timeline: Sequence[TimelineEntry], reverted: TimelineEntry) -> datetime | None:
        """When the decision behind a rollback was taken (the latest trigger before it)."""
        decided: datetime | None = None
        for entry in timeline:
            if entry is reverted:
                return decided
            if entry.type in ROLLBACK_TRIGGERS and entry.at is not None:
                decided = entry.at
        return decided

    def _child(self, family: Any, ids: Mapping[str, str], **labels: str) -> Any:
        """A labelled child, remembered per release so `forget` can remove it."""
        values = (ids["namespace"], ids["release"], *labels.values())
        self._children.setdefault((ids["namespace"], ids["release"]), set()).add(
            (id(family), values)
        )
        self._families[id(family)] = family
        return family.labels(*values)

    def forget(self, namespace: str, release: str) -> None:
        """Drop a deleted release's series so dashboards show no ghosts and memory stays flat."""
        for family_id, values in self._children.pop((namespace, release), set()):
            with contextlib.suppress(KeyError):
                self._families[family_id].remove(*values)
