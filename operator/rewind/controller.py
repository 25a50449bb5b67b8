"""One reconcile of one ModelRelease: load, observe, decide, apply, write status.

The engine decides; this module only does I/O around it, in an order that makes a crash
at any line harmless:

1. everything is read fresh from the API server (no in-memory state survives a restart);
2. the engine's actions are applied before the status that depends on them is written
   (snapshot before the revision is recorded, routes before the weights are reported), and
   every action is idempotent, so a crash before the status write just repeats them;
3. human annotations are removed only after the status recording their effect is stored,
   and only if they still hold the value that was acted on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from pydantic import ValidationError

from rewind import API_GROUP, API_VERSION
from rewind.adapters import _kube
from rewind.adapters.base import (
    AdapterError,
    MetricProvider,
    Notifier,
    OwnerRef,
    RevisionObservation,
    Router,
    Workloads,
)
from rewind.api import (
    MODELRELEASE_PLURAL,
    ROLLOUTPOLICY_PLURAL,
    Measurement,
    ModelReleaseSpec,
    ModelReleaseStatus,
    RolloutPolicySpec,
    spec_hash,
    workload_name,
)
from rewind.engine import (
    ANNOTATION_OF,
    Action,
    Decision,
    EmitEvent,
    EnsureRevision,
    HumanAction,
    Inputs,
    RecordMetric,
    RemoveAnnotation,
    RevisionState,
    ScaleRevision,
    SetRoutes,
    SnapshotRevision,
    analysis_due,
    analysis_targets,
    decide,
)
from rewind.metrics import OperatorMetrics

log = logging.getLogger(__name__)

#: The admission policy in charts/rewind stamps who set an action annotation here.
ACTOR_SUFFIX = "-by"
#: Back-off after an adapter failure, so a broken object never spins the loop.
ERROR_REQUEUE = 5.0


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class ReconcileResult:
    """What one reconcile did; the daemon sleeps ``requeue_after`` unless poked."""

    requeue_after: float | None
    decision: Decision | None = None
    error: str | None = None
    applied: list[Action] = field(default_factory=list)


def human_actions(annotations: Mapping[str, str]) -> list[HumanAction]:
    """The rewind.dev/ action annotations present, with who set them when known."""
    out: list[HumanAction] = []
    for kind, key in ANNOTATION_OF.items():
        if key in annotations:
            user = annotations.get(key + ACTOR_SUFFIX, "")
            out.append(HumanAction(kind=kind, value=annotations[key], user=user))  # type: ignore[arg-type]
    return out


def revision_states(observed: Mapping[int, RevisionObservation]) -> dict[int, RevisionState]:
    return {
        rev: RevisionState(revision=rev, available=o.available, replicas=o.replicas, exists=True)
        for rev, o in observed.items()
    }


def analysis_variables(
    namespace: str, release: str, candidate: int, stable: int, interval: str
) -> dict[str, object]:
    """The PromQL template variables (docs/design.md)."""
    return {
        "namespace": namespace,
        "release": release,
        "candidate": candidate,
        "stable": stable,
        "candidateWorkload": workload_name(release, candidate),
        "stableWorkload": workload_name(release, stable),
        "interval": interval,
    }


def status_document(status: ModelReleaseStatus) -> dict[str, Any]:
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)


class ReleaseController:
    """Reconciles ModelReleases with the adapters it is given (real ones or fakes)."""

    def __init__(
        self,
        api_client: client.ApiClient,
        *,
        router: Router,
        workloads: Workloads,
        metrics: MetricProvider,
        notifier: Notifier,
        operator_metrics: OperatorMetrics | None = None,
        clock: Callable[[], datetime] = utcnow,
        request_timeout: float = 30.0,
    ) -> None:
        self._custom = client.CustomObjectsApi(api_client)
        self.router = router
        self.workloads = workloads
        self.metrics = metrics
        self.notifier = notifier
        self.operator_metrics = operator_metrics or OperatorMetrics()
        self.clock = clock
        self._timeout = request_timeout

    # -- reads -----------------------------------------------------------------------

    async def _get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        return await _kube.get_or_none(
            self._custom.get_namespaced_custom_object,
            API_GROUP,
            API_VERSION,
            namespace,
            plural,
            name,
            timeout=self._timeout,
        )

    async def _load_policy(
        self, namespace: str, name: str
    ) -> tuple[RolloutPolicySpec | None, str | None]:
        body = await self._get(ROLLOUTPOLICY_PLURAL, namespace, name)
        if body is None:
            return None, (
                f"RolloutPolicy {name!r} not found in namespace {namespace!r}: create it or "
                "fix spec.policyRef.name"
            )
        try:
            return RolloutPolicySpec.model_validate(body.get("spec") or {}), None
        except ValidationError as err:
            return None, f"RolloutPolicy {name!r} is invalid: {_first_error(err)}"

    async def _measure(
        self,
        namespace: str,
        release: str,
        status: ModelReleaseStatus,
        policy: RolloutPolicySpec,
        now: datetime,
    ) -> list[Measurement] | None:
        if not policy.analysis.metrics or not analysis_due(status, policy, now):
            return None
        targets = analysis_targets(status)
        if targets is None:
            return None
        candidate, stable = targets
        variables = analysis_variables(
            namespace, release, candidate, stable, policy.analysis.interval
        )
        results = await asyncio.gather(
            *(
                self.metrics.measure(metric, variables, policy.analysis, now, candidate)
                for metric in policy.analysis.metrics
            )
        )
        return list(results)

    # -- the loop body ---------------------------------------------------------------

    async def reconcile(self, namespace: str, name: str) -> ReconcileResult:
        body = await self._get(MODELRELEASE_PLURAL, namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return ReconcileResult(requeue_after=None)
        meta = body["metadata"]
        owner = OwnerRef.from_body(body)
        old_status_doc: dict[str, Any] = body.get("status") or {}
        try:
            spec = ModelReleaseSpec.model_validate(body.get("spec") or {})
            status = ModelReleaseStatus.model_validate(old_status_doc)
        except ValidationError as err:
            # The CRD schema should have refused this; say so instead of crash-looping.
            message = f"spec or status does not match the API: {_first_error(err)}"
            await self._write_stalled(namespace, name, old_status_doc, meta, message)
            return ReconcileResult(requeue_after=None, error=message)

        policy, policy_error = await self._load_policy(namespace, spec.policy_ref.name)
        now = self.clock()
        observed = await self.workloads.observe_revisions(name, namespace)
        measurements = (
            await self._measure(namespace, name, status, policy, now) if policy else None
        )
        annotations: dict[str, str] = dict(meta.get("annotations") or {})
        inputs = Inputs(
            spec=spec,
            spec_hash=spec_hash(spec),
            generation=int(meta.get("generation") or 0),
            policy=policy,
            policy_error=policy_error,
            status=status,
            revisions=revision_states(observed),
            measurements=measurements,
            actions=human_actions(annotations),
            now=now,
            name=name,
            namespace=namespace,
        )
        decision = decide(inputs)
        result = ReconcileResult(requeue_after=decision.requeue_after, decision=decision)
        removals: list[RemoveAnnotation] = []
        try:
            for action in decision.actions:
                if isinstance(action, RemoveAnnotation):
                    removals.append(action)
                    continue
                if await self._apply(action, name, namespace, owner, spec, decision, observed):
                    result.applied.append(action)
        except (AdapterError, client.ApiException) as err:
            message = f"could not apply {type(action).__name__}: {_describe_error(err)}"
            log.warning("%s/%s: %s", namespace, name, message)
            await self._write_stalled(namespace, name, old_status_doc, meta, message)
            await self.notifier.post(owner, namespace, "Warning", "ApplyFailed", message)
            result.requeue_after, result.error = ERROR_REQUEUE, message
            return result

        new_status_doc = status_document(decision.status)
        if new_status_doc != old_status_doc:
            await self._write_status(namespace, name, new_status_doc)
        self.operator_metrics.observe(namespace, name, status, decision.status, measurements, now)
        for removal in removals:
            await self._remove_annotation(namespace, name, removal.key, annotations)
        return result

    async def _apply(
        self,
        action: Action,
        name: str,
        namespace: str,
        owner: OwnerRef,
        spec: ModelReleaseSpec,
        decision: Decision,
        observed: Mapping[int, RevisionObservation],
    ) -> bool:
        """Carry out one action; False when it was already true (no write needed)."""
        if isinstance(action, SnapshotRevision):
            await self.workloads.save_snapshot(name, namespace, owner, action.revision, spec)
            return True
        if isinstance(action, EnsureRevision):
            if _already_running(action, observed, decision.status):
                return False
            await self.workloads.ensure_revision(
                name, namespace, owner, action.revision, action.replicas
            )
            return True
        if isinstance(action, ScaleRevision):
            current = observed.get(action.revision)
            if current is None or current.replicas == action.replicas:
                return False
            await self.workloads.scale_revision(name, namespace, action.revision, action.replicas)
            return True
        if isinstance(action, SetRoutes):
            current_routes = await self.router.get_routes(name, namespace)
            wanted = (dict(action.weights), action.mirror_revision, action.mirror_percent)
            if current_routes is not None and (
                {r: w for r, w in current_routes.weights.items() if w > 0},
                current_routes.mirror_revision,
                current_routes.mirror_percent,
            ) == wanted:
                return False
            await self.router.set_routes(
                name,
                namespace,
                owner,
                spec.traffic,
                action.weights,
                action.mirror_revision,
                action.mirror_percent,
            )
            return True
        if isinstance(action, EmitEvent):
            await self.notifier.post(owner, namespace, action.type, action.reason, action.message)
            return True
        if isinstance(action, RecordMetric):
            self.operator_metrics.record(action.name, action.labels, action.value)
            return True
        raise TypeError(f"unknown action {action!r}")

    # -- writes ----------------------------------------------------------------------

    async def _write_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        # "add" replaces the whole status: fields the engine dropped (a cleared
        # pendingDecision) disappear instead of lingering as with a merge patch.
        patch = [{"op": "add", "path": "/status", "value": status}]
        await _kube.call(
            self._custom.patch_namespaced_custom_object_status,
            API_GROUP,
            API_VERSION,
            namespace,
            MODELRELEASE_PLURAL,
            name,
            patch,
            _content_type="application/json-patch+json",
            timeout=self._timeout,
        )

    async def _write_stalled(
        self,
        namespace: str,
        name: str,
        old_status: Mapping[str, Any],
        meta: Mapping[str, Any],
        message: str,
    ) -> None:
        """Keep every stored field, only raise Stalled: nothing is lost on a bad input."""
        status = json.loads(json.dumps(old_status)) if old_status else {}
        conditions = [c for c in status.get("conditions", []) if c.get("type") != "Stalled"]
        previous: dict[str, Any] = next(
            (c for c in status.get("conditions", []) if c.get("type") == "Stalled"), {}
        )
        since = self.clock().isoformat().replace("+00:00", "Z")
        if previous.get("status") == "True" and previous.get("message") == message:
            since = previous.get("lastTransitionTime", since)
        conditions.append(
            {
                "type": "Stalled",
                "status": "True",
                "reason": "ReconcileError",
                "message": message[:1000],
                "lastTransitionTime": since,
                "observedGeneration": int(meta.get("generation") or 0),
            }
        )
        status["conditions"] = conditions
        with contextlib.suppress(client.ApiException):
            await self._write_status(namespace, name, status)

    async def _remove_annotation(
        self, namespace: str, name: str, key: str, seen: Mapping[str, str]
    ) -> None:
        """Remove an acted-on annotation only if it still holds the value acted on: a new
        value set meanwhile (a second approver) must survive for the next reconcile."""
        if key not in seen:
            return
        escaped = key.replace("~", "~0").replace("/", "~1")
        patch: list[dict[str, Any]] = [
            {"op": "test", "path": f"/metadata/annotations/{escaped}", "value": seen[key]},
            {"op": "remove", "path": f"/metadata/annotations/{escaped}"},
        ]
        actor = key + ACTOR_SUFFIX
        if actor in seen:
            actor_path = f"/metadata/annotations/{actor.replace('/', '~1')}"
            patch += [
                {"op": "test", "path": actor_path, "value": seen[actor]},
                {"op": "remove", "path": actor_path},
            ]
        try:
            await _kube.call(
                self._custom.patch_namespaced_custom_object,
                API_GROUP,
                API_VERSION,
                namespace,
                MODELRELEASE_PLURAL,
                name,
                patch,
                _content_type="application/json-patch+json",
                timeout=self._timeout,
            )
        except client.ApiException as err:
            if err.status not in (404, 409, 422):  # gone, or changed meanwhile: keep it
                raise


def _already_running(
    action: EnsureRevision,
    observed: Mapping[int, RevisionObservation],
    status: ModelReleaseStatus,
) -> bool:
    """The revision's Deployment exists at the wanted scale from the recorded snapshot."""
    current = observed.get(action.revision)
    if current is None or current.replicas != action.replicas:
        return False
    recorded = next((h.spec_hash for h in status.history if h.revision == action.revision), "")
    return bool(recorded) and current.spec_hash == recorded


def _first_error(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    return f"{where}: {first.get('msg', '')}" if where else str(first.get("msg", ""))


def _describe_error(err: BaseException) -> str:
    if isinstance(err, client.ApiException):
        try:
            return str(json.loads(err.body or "{}").get("message") or err.reason)
        except ValueError:
            return f"HTTP {err.status} {err.reason}"
    return str(err)


def measurement_summary(measurements: Sequence[Measurement] | None) -> str:
    """For the log line of a reconcile."""
    if not measurements:
        return ""
    return ", ".join(f"{m.metric}={m.value} {m.verdict}" for m in measurements)
