"""One reconcile of one ModelRelease: load, observe, decide, apply, write status.

The engine decides; this module only does I/O around it, in an order that makes a crash
at any line harmless:

1. everything is read fresh from the API server (no in-memory state survives a restart),
   but the RolloutPolicy, which the policy watch keeps true (:mod:`rewind.policycache`);
2. the engine's actions are applied before the status that depends on them is written
   (snapshot before the revision is recorded, routes before the weights are reported), and
   every action is idempotent, so a crash before the status write just repeats them;
3. history records (on the snapshots, :mod:`rewind.adapters.archive`) are written only
   after the status holding them, so a record never claims more than a status did; a
   crash in between leaves a record behind, written again by the next reconcile;
4. human annotations are removed only after the status recording their effect is stored,
   and only if they still hold the value that was acted on.

A status without history is that of a new object: the records of its namespace/name (a
ModelRelease of that name deleted and applied again) are claimed and handed to the
engine, which adopts them (``Inputs.archive``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from pydantic import ValidationError

from rewind import API_GROUP, API_VERSION
from rewind.adapters import _kube
from rewind.adapters.archive import (
    FORGET_HISTORY_ANNOTATION,
    KubeArchive,
    LegacySnapshotError,
    archive_entries,
    describe_source,
    encode_record,
    parse_stored,
)
from rewind.adapters.artifacts import ArtifactVerifier
from rewind.adapters.base import (
    DEFAULT_CLUSTER_DOMAIN,
    AdapterError,
    MetricProvider,
    Notifier,
    OwnerRef,
    OwnershipConflictError,
    RegistryObservation,
    RevisionObservation,
    RouteObservation,
    RouteProblem,
    Router,
    RouteRefusedError,
    RouteState,
    SnapshotConflictError,
    SnapshotCorruptError,
    SnapshotNotFoundError,
    Workloads,
)
from rewind.adapters.quarantine import QuarantineCache, QuarantineReadError
from rewind.adapters.registry import RegistrySync, SyncRequest
from rewind.adapters.webhooks import Deliveries
from rewind.adapters.workloads import proxy_expectation
from rewind.api import (
    MODELRELEASE_PLURAL,
    ROLLOUTPOLICY_PLURAL,
    AnalysisSpec,
    Measurement,
    ModelReleaseSpec,
    ModelReleaseStatus,
    NotificationState,
    Outcome,
    RolloutPolicySpec,
    SidecarMode,
    parse_duration,
    release_host_errors,
    spec_hash,
    workload_name,
)
from rewind.engine import (
    ACTOR_SUFFIX,
    ANNOTATION_OF,
    Action,
    ActorStamp,
    Archive,
    Decision,
    EmitEvent,
    EnsureRevision,
    HumanAction,
    Inputs,
    QuarantineRule,
    RemoveAnnotation,
    RevisionState,
    ScaleRevision,
    SetRoutes,
    SnapshotCheck,
    SnapshotRevision,
    SyncRegistryAlias,
    VerifyArtifact,
    analysis_due,
    analysis_metrics,
    analysis_targets,
    breaker_due,
    breaker_variables_targets,
    decide,
    drill_analysis_due,
    drill_snapshot_due,
    next_analysis_at,
)
from rewind.metrics import OperatorMetrics
from rewind.notifications import ReleaseRef, build_message, outbox, targets_for
from rewind.podtemplate import WorkloadRefError, resolve_workload_ref
from rewind.policycache import PolicyCache
from rewind.throttle import Throttle
from rewind.verifications import Verifications

log = logging.getLogger(__name__)

#: Stalled reason of an action that could not be applied (the engine never sets it).
RECONCILE_ERROR = "ReconcileError"
#: Back-off after an adapter failure, so a broken object never spins the loop.
ERROR_REQUEUE = 5.0
#: Workloads and routes are re-applied this often even when they look in place.
RESYNC = 300.0
#: After a route write, look again this soon (seconds, by how many reconciles in a row
#: wrote routes): the engine starts a step, promotes or finishes a rollback only once it
#: reads the routes back, so the first look is at once; a route that something keeps
#: reverting is written again with a growing pause instead of in a hot loop.
ROUTE_RECHECK = (0.0, 0.5, 1.0, 2.0, 5.0)
#: Seconds between two warnings that analysis rounds start late (the count covers the gap).
LATE_LOG_INTERVAL = 60.0
#: A refused route write is reported by the engine from the next reconcile: that soon.
REFUSED_RECHECK = 1.0


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class ReconcileResult:
    """What one reconcile did; the daemon sleeps ``requeue_after`` unless poked."""

    requeue_after: float | None
    decision: Decision | None = None
    gone: bool = False  # the release no longer exists (or is being deleted)
    error: str | None = None
    applied: list[Action] = field(default_factory=list)


def human_actions(annotations: Mapping[str, str], trust_actor: bool) -> list[HumanAction]:
    """The rewind.dev/ action annotations present, with who set them.

    `<key>-by` is only believed when the admission policies that stamp it (and refuse
    forged ones) are installed, which the operator is told by `--trust-actor-annotations`;
    otherwise anyone able to patch the object could name any approver.
    """
    out: list[HumanAction] = []
    for kind, key in ANNOTATION_OF.items():
        if key in annotations:
            user = annotations.get(key + ACTOR_SUFFIX, "") if trust_actor else ""
            out.append(HumanAction(kind=kind, value=annotations[key], user=user))  # type: ignore[arg-type]
    return out


def revision_states(
    observed: Mapping[int, RevisionObservation],
    mesh: Mapping[int, tuple[int, tuple[str, ...]]] | None = None,
) -> dict[int, RevisionState]:
    """What the engine sees of each revision: its Deployment, and (when Istio's proxy is
    expected) its running pods and those without the proxy."""
    mesh = mesh or {}
    return {
        rev: RevisionState(
            revision=rev,
            available=o.available,
            replicas=o.replicas,
            exists=True,
            min_available=o.min_available,
            ready_replicas=o.ready_replicas,
            name=o.name,
            running_pods=mesh.get(rev, (0, ()))[0],
            unmeshed_pods=mesh.get(rev, (0, ()))[1],
        )
        for rev, o in observed.items()
    }


def may_start(status: ModelReleaseStatus, digest: str) -> bool:
    """A revision of this spec may start now or on a retry: no revision has this spec, or
    the newest that has it failed. (Then its Deployment is dry-run first.)"""
    same = [h for h in status.history if h.spec_hash == digest]
    return not same or max(same, key=lambda h: h.revision).outcome == Outcome.FAILED


def with_refusal(
    routes: RouteObservation, refused: tuple[RouteState, str] | None
) -> RouteObservation:
    """The observation plus the refusal of the last route write, which only the writer
    knows (the API server keeps no record of a refused request)."""
    if refused is None:
        return routes
    wanted, message = refused
    problem = RouteProblem("Refused", message, wanted)
    return dataclasses.replace(routes, problems=(*routes.problems, problem))


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
        trust_actor_annotations: bool = False,
        actor_stamp: ActorStamp = "server",
        archive: KubeArchive | None = None,
        cluster_domain: str = DEFAULT_CLUSTER_DOMAIN,
        deliveries: Deliveries | None = None,
        notify_defaults: Sequence[str] = (),
        argocd_url: str = "",
        policies: PolicyCache | None = None,
        quarantines: QuarantineCache | None = None,
        verifications: Verifications | None = None,
        registry: RegistrySync | None = None,
    ) -> None:
        self._custom = client.CustomObjectsApi(api_client)
        #: The cluster's DNS domain: the in-cluster name Rewind routes ends in svc.<it>.
        self.cluster_domain = cluster_domain
        self.archive = archive or KubeArchive(api_client, request_timeout=request_timeout)
        #: Per release: the uid and the records (revision -> record) known to be stored.
        self._records: dict[tuple[str, str], tuple[str, dict[int, str]]] = {}
        self._apps = client.AppsV1Api(api_client)
        self._last_resync: dict[tuple[str, str], float] = {}
        #: The last refused route write per release: what was asked and the API's answer.
        self._refused: dict[tuple[str, str], tuple[RouteState, str]] = {}
        #: Reconciles in a row that wrote routes, per release (see ROUTE_RECHECK).
        self._route_streak: dict[tuple[str, str], int] = {}
        #: The Deployment each release's serving.workloadRef names (watch events of it wake
        #: the release), and the generation of each found running replicas of its own.
        self._workload_refs: dict[tuple[str, str], tuple[str, str]] = {}
        self._warned_running: dict[tuple[str, str], int] = {}
        #: Per release and annotation key: the value and ``-by`` removed, and when this
        #: process first sent that removal and got an answer (``Inputs.removals_sent``).
        self._removals_sent: dict[tuple[str, str], dict[str, tuple[str, str, datetime]]] = {}
        self.trust_actor_annotations = trust_actor_annotations
        self.actor_stamp: ActorStamp = actor_stamp
        #: RolloutPolicies as last read; ``handlers.policy_event`` invalidates them.
        self.policies = policies if policies is not None else PolicyCache()
        #: Quarantine entries per namespace; ``handlers.quarantine_event`` invalidates them.
        self.quarantines = quarantines or QuarantineCache(
            api_client, request_timeout=request_timeout
        )
        #: Artifact verifications running in the background, and their latest results.
        self.verifications = verifications or Verifications(
            ArtifactVerifier(api_client, timeout=request_timeout).verify_model
        )
        #: The MLflow aliases of releases with spec.model.registry (background reads/moves).
        self.registry = registry or RegistrySync()
        self.router = router
        self.workloads = workloads
        self.metrics = metrics
        self.notifier = notifier
        #: Notifier targets beside Events (webhooks, Slack); None: no outbox at all.
        self.deliveries = deliveries
        self.notify_defaults = tuple(notify_defaults)
        self.argocd_url = argocd_url
        self.operator_metrics = operator_metrics or OperatorMetrics()
        self.clock = clock
        self._timeout = request_timeout
        #: Warnings that analysis rounds start late, once per LATE_LOG_INTERVAL.
        self.late_reports = Throttle(LATE_LOG_INTERVAL)

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
        """The release's policy, from the cache the policy watch keeps true
        (:mod:`rewind.policycache`), else read and parsed."""

        async def read() -> tuple[tuple[RolloutPolicySpec | None, str | None], bool]:
            body = await self._get(ROLLOUTPOLICY_PLURAL, namespace, name)
            if body is None:
                return (None, (
                    f"RolloutPolicy {name!r} not found in namespace {namespace!r}: create it "
                    "or fix spec.policyRef.name"
                )), False
            try:
                return (RolloutPolicySpec.model_validate(body.get("spec") or {}), None), True
            except ValidationError as err:
                return (None, f"RolloutPolicy {name!r} is invalid: {_first_error(err)}"), True

        return await self.policies.load(namespace, name, read)

    async def _measure(
        self,
        namespace: str,
        release: str,
        status: ModelReleaseStatus,
        policy: RolloutPolicySpec,
        now: datetime,
    ) -> list[Measurement] | None:
        drill = drill_analysis_due(status, policy, now)
        if drill is not None:
            # A rollback drill's round: the policy's metrics on the target's mirrored traffic.
            candidate, stable = drill
            variables = analysis_variables(
                namespace, release, candidate, stable, policy.analysis.interval
            )
            return list(await asyncio.gather(*(
                self.metrics.measure(metric, variables, policy.analysis, now, candidate)
                for metric in policy.analysis.metrics
            )))
        if not policy.analysis.metrics or not analysis_due(status, policy, now):
            return None
        targets = analysis_targets(status)
        if targets is None:
            return None
        due = next_analysis_at(status, policy)
        if due is not None:
            self._note_lag(namespace, release, (now - due).total_seconds(),
                           parse_duration(policy.analysis.interval))
        candidate, stable = targets
        variables = analysis_variables(
            namespace, release, candidate, stable, policy.analysis.interval
        )
        results = await asyncio.gather(
            *(
                self.metrics.measure(metric, variables, policy.analysis, now, candidate)
                for metric in analysis_metrics(status, policy)
            )
        )
        return list(results)

    def _note_lag(self, namespace: str, release: str, lag: float, interval: float) -> None:
        """Record how late a round starts (``rewind_analysis_lag_seconds``) and say, at most
        once per LATE_LOG_INTERVAL, that rounds start more than half an interval late: the
        operator (or its API server) is the slow part, and what to do about it."""
        self.operator_metrics.analysis_lag.observe(max(0.0, lag))
        if lag <= max(1.0, interval / 2):
            return
        count = self.late_reports.hit()
        if count is None:
            return
        log.warning(
            "analysis is running late: %d round(s) started over half an interval after they "
            "were due since the last report (latest %s/%s, %.1fs late, interval %gs). The "
            "operator or its API server is overloaded, not the models: give them more CPU, "
            "lengthen analysis intervals, use fewer metrics, or shard releases across "
            "operators by namespace (see rewind_analysis_lag_seconds)",
            count, namespace, release, lag, interval,
        )

    async def _read_breaker(
        self,
        namespace: str,
        release: str,
        spec: ModelReleaseSpec,
        status: ModelReleaseStatus,
        policy: RolloutPolicySpec,
        now: datetime,
    ) -> Measurement | None:
        """One reading of the circuit breaker's signal (every reconcile while it is armed:
        the engine requeues every ``breaker.interval``). No data and query errors are
        Inconclusive: they never trip it, nor count as healthy."""
        breaker = policy.breaker
        if breaker is None or not breaker_due(status, policy, spec):
            return None
        candidate, stable = breaker_variables_targets(status)
        variables = analysis_variables(namespace, release, candidate, stable, breaker.interval)
        judging = AnalysisSpec(interval=breaker.interval)
        return await self.metrics.measure(breaker.metric(), variables, judging, now, candidate)

    async def _check_drill_snapshot(
        self, namespace: str, release: str, status: ModelReleaseStatus
    ) -> SnapshotCheck | None:
        """A rollback drill's first step: could its target be re-created from its snapshot
        now (present, and its data still hashes to the hash recorded when it was saved)?"""
        target = drill_snapshot_due(status)
        if target is None:
            return None
        try:
            await self.workloads.load_snapshot(release, namespace, target)
        except SnapshotNotFoundError as err:
            return SnapshotCheck(target, "missing", str(err))
        except SnapshotCorruptError as err:
            return SnapshotCheck(target, "corrupt", str(err))
        return SnapshotCheck(target)

    # -- the loop body ---------------------------------------------------------------

    async def reconcile(self, namespace: str, name: str) -> ReconcileResult:
        # The decision's clock starts when the loop woke, not after the reads: deadlines
        # are computed from it, so read latency would otherwise add to every interval.
        now = self.clock()
        body = await self._get(MODELRELEASE_PLURAL, namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return ReconcileResult(requeue_after=None, gone=True)
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
        host_errors = release_host_errors(
            name, namespace, spec.traffic.hosts, self.cluster_domain
        )
        if host_errors:
            # Istio would refuse the routes: hold everything as it is (the routes written
            # for the previous spec keep serving) until the spec is fixed.
            message = f"spec.traffic.hosts: {'; '.join(host_errors)}"
            await self._write_stalled(namespace, name, old_status_doc, meta, message)
            return ReconcileResult(requeue_after=None, error=message)

        annotations: dict[str, str] = dict(meta.get("annotations") or {})
        try:
            (policy, policy_error), observed, routes, (spec, spec_error), quarantine = (
                await asyncio.gather(
                    self._load_policy(namespace, spec.policy_ref.name),
                    self.workloads.observe_revisions(name, namespace),
                    self.router.observe_routes(name, namespace, owner, spec.traffic),
                    self._resolve(namespace, name, owner, spec),
                    self.quarantines.entries(namespace),
                )
            )
        except QuarantineReadError as err:
            # Deciding as if nothing were quarantined would lift every mark: hold instead.
            message = str(err)
            log.warning("%s/%s: %s", namespace, name, message)
            await self._write_stalled(namespace, name, old_status_doc, meta, message)
            return ReconcileResult(requeue_after=ERROR_REQUEUE, error=message)
        digest = spec_hash(spec)
        proxy_expected, mesh = await self._observe_mesh(namespace, name, spec, policy)
        # A Deployment still owned by a deleted object of the same name (the garbage
        # collector has yet to delete it) is not this release's.
        observed = {
            rev: o for rev, o in observed.items() if not o.owner_uids or owner.uid in o.owner_uids
        }
        archive = Archive()
        # Recorded history is adopted against the spec a revision runs: not before the
        # referenced Deployment gives it (the records wait; the sweep keeps them meanwhile).
        if not status.history and spec_error is None:
            try:
                archive = await self._read_archive(namespace, name, owner, annotations)
            except (AdapterError, client.ApiException) as err:
                message = f"could not read the recorded history: {_describe_error(err)}"
                log.warning("%s/%s: %s", namespace, name, message)
                await self._write_stalled(namespace, name, old_status_doc, meta, message)
                return ReconcileResult(requeue_after=ERROR_REQUEUE, error=message)
        key = (namespace, name)
        template_error: str | None = None
        if spec_error is None and policy is not None and may_start(status, digest):
            template_error = await self._dry_run(namespace, name, owner, spec, status, archive)
        routes = with_refusal(routes, self._refused.get(key))
        measurements, breaker_reading = (
            await asyncio.gather(
                self._measure(namespace, name, status, policy, now),
                self._read_breaker(namespace, name, spec, status, policy, now),
            )
            if policy else (None, None)
        )
        inputs = Inputs(
            spec=spec,
            spec_hash=digest,
            generation=int(meta.get("generation") or 0),
            policy=policy,
            policy_error=policy_error,
            status=status,
            revisions=revision_states(observed, mesh),
            measurements=measurements,
            actions=human_actions(annotations, self.trust_actor_annotations),
            now=now,
            name=name,
            namespace=namespace,
            actor_stamp=self.actor_stamp,
            routes=routes,
            archive=archive,
            breaker_reading=breaker_reading,
            drill_snapshot=await self._check_drill_snapshot(namespace, name, status),
            quarantine=tuple(QuarantineRule(ref, entry) for ref, entry in quarantine),
            template_error=template_error,
            spec_error=spec_error,
            proxy_expected=proxy_expected,
            removals_sent=self._sent_removals(key, annotations),
            cluster_domain=self.cluster_domain,
            integrity=self.verifications.results(namespace, name),
            verifying=self.verifications.running(namespace, name),
            registry=self._registry_seen(namespace, name, spec),
        )
        decision = decide(inputs)
        result = ReconcileResult(requeue_after=decision.requeue_after, decision=decision)
        snapshots = [a for a in decision.actions if isinstance(a, SnapshotRevision)]
        events = [a for a in decision.actions if isinstance(a, EmitEvent)]
        removals = [a for a in decision.actions if isinstance(a, RemoveAnnotation)]
        converging = [
            a for a in decision.actions
            if not isinstance(a, SnapshotRevision | EmitEvent | RemoveAnnotation)
        ]
        # Order, so that dying at any line is harmless: (1) snapshots, which the status
        # about to name must be able to restore; (2) the status, the decision itself,
        # guarded by the object's uid and resourceVersion so a concurrent writer makes it
        # re-decide instead of being overwritten; (3) the level-based actions (workloads,
        # routes, scale-downs), which the engine re-emits from that status until they hold;
        # (4) the history records of that status, on the snapshots; (5) Events, once per
        # decision; (6) annotation removals, last.
        delivered = (
            self.deliveries.finished(namespace, name) if self.deliveries is not None else {}
        )
        if self.deliveries is not None:
            # The outbox is stored with the status that holds the entries it reports.
            records, dropped = outbox(
                status, decision.status, uid=owner.uid,
                targets=targets_for(policy, self.notify_defaults), delivered=delivered,
            )
            for record in dropped:
                log.warning("%s/%s: notification %s (%s r%d) to %s dropped undelivered: "
                            "more than the outbox holds are pending", namespace, name,
                            record.id, record.type, record.revision, record.target)
            decision.status.notifications = records
        new_status_doc = status_document(decision.status)
        engine_stalled = _keep_reconcile_error(old_status_doc, new_status_doc)
        stored_meta: Mapping[str, Any] = meta
        action: Action | None = None
        what = "status"
        try:
            for action in snapshots:
                await self._apply(action, name, namespace, owner, spec, decision, observed, status)
            if new_status_doc != old_status_doc:
                try:
                    stored_meta = await self._write_status(namespace, name, new_status_doc, meta)
                except client.ApiException as err:
                    if err.status in (409, 422):  # changed meanwhile: decide again, now
                        result.requeue_after = 0.0
                        return result
                    raise
            if self.deliveries is not None:
                # Stored: the outcomes are recorded, the Pending records may go out.
                self.deliveries.acknowledge(namespace, name, set(delivered))
                self._send_notifications(namespace, name, meta, decision.status, policy)
            force = self._resync_due(namespace, name)
            for action in converging:
                if isinstance(action, VerifyArtifact):
                    await self._start_verification(
                        namespace, name, spec, decision.status, policy, action.revision
                    )
                    continue
                if isinstance(action, SetRoutes):
                    if await self._set_routes(action, name, namespace, owner, spec, routes, force):
                        result.applied.append(action)
                    continue
                if await self._apply(
                    action, name, namespace, owner, spec, decision, observed, status, force
                ):
                    result.applied.append(action)
            action, what = None, "the history records"
            await self._sync_records(namespace, name, owner, spec, decision.status, force)
        except (AdapterError, client.ApiException) as err:
            failed = type(action).__name__ if action is not None else what
            message = f"could not apply {failed}: {_describe_error(err)}"
            log.warning("%s/%s: %s", namespace, name, message)
            base = new_status_doc if stored_meta is not meta else old_status_doc
            if await self._write_stalled(namespace, name, base, stored_meta, message):
                # Once per distinct failure, not once per retry (every ERROR_REQUEUE).
                await self.notifier.post(owner, namespace, "Warning", "ApplyFailed", message)
            result.requeue_after, result.error = ERROR_REQUEUE, message
            return result
        wrote_routes = any(isinstance(a, SetRoutes) for a in result.applied)
        streak = self._route_streak.get(key, 0) + 1 if wrote_routes else 0
        self._route_streak[key] = streak
        if streak:
            recheck = ROUTE_RECHECK[min(streak, len(ROUTE_RECHECK)) - 1]
            result.requeue_after = _sooner(result.requeue_after, recheck)
        if key in self._refused and not wrote_routes:
            # Refused now (or earlier, for routes still wanted): the engine reports it next.
            result.requeue_after = _sooner(result.requeue_after, REFUSED_RECHECK)
        if engine_stalled is not None:
            # Everything applied: the kept ReconcileError is over; store the engine's own.
            cleared = _with_condition(new_status_doc, engine_stalled)
            try:
                stored_meta = await self._write_status(namespace, name, cleared, stored_meta)
            except client.ApiException as err:
                log.warning("%s/%s: could not clear Stalled: %s", namespace, name,
                            _describe_error(err))
                result.requeue_after = 0.0 if err.status in (409, 422) else ERROR_REQUEUE
        for event in events:
            await self._apply(event, name, namespace, owner, spec, decision, observed, status)
        self.operator_metrics.observe(
            namespace, name, status, decision.status, measurements, self.clock()
        )
        if (decision.status.phase, decision.status.message) != (status.phase, status.message):
            log.info("%s/%s: %s: %s", namespace, name, decision.status.phase.value,
                     decision.status.message)
        for removal in removals:
            await self._remove_annotation(namespace, name, removal.key, annotations)
        return result

    def _send_notifications(
        self,
        namespace: str,
        name: str,
        meta: Mapping[str, Any],
        status: ModelReleaseStatus,
        policy: RolloutPolicySpec | None,
    ) -> None:
        """Hand every stored Pending record to the deliverer (no-op for those in flight).
        Only after the status holding them is stored: a message never goes out for an
        entry a crash could still take back."""
        assert self.deliveries is not None
        pending = [r for r in status.notifications if r.state == NotificationState.PENDING]
        if not pending:
            return
        release = ReleaseRef(
            namespace=namespace, name=name, uid=str(meta.get("uid") or ""),
            labels=dict(meta.get("labels") or {}),
            annotations=dict(meta.get("annotations") or {}),
        )
        for record in pending:
            message = build_message(record, release, status, policy, argocd_url=self.argocd_url)
            self.deliveries.submit(namespace, name, record, message)

    def _resync_due(self, namespace: str, name: str) -> bool:
        """Re-apply even what looks in place every RESYNC seconds: a deleted Service or an
        edited DestinationRule is only found by writing the whole desired state again."""
        now = time.monotonic()
        key = (namespace, name)
        if key not in self._last_resync:
            # A random phase, so releases created together don't all re-apply together.
            self._last_resync[key] = now - random.uniform(0, RESYNC)
            return True
        if now - self._last_resync[key] < RESYNC:
            return False
        self._last_resync[key] = now
        return True

    # -- the pod template and the mesh ---------------------------------------------------

    async def _resolve(
        self, namespace: str, name: str, owner: OwnerRef, spec: ModelReleaseSpec
    ) -> tuple[ModelReleaseSpec, str | None]:
        """The spec a revision runs: with ``serving.workloadRef``, the referenced
        Deployment's pod template copied in (it is part of the revision: a change to it is
        a new revision). Returns the spec as written and why, when it cannot be resolved
        now (the engine then holds the release, Stalled WorkloadRefError)."""
        ref = spec.serving.workload_ref
        if ref is None:
            self._workload_refs.pop((namespace, name), None)
            return spec, None
        self._workload_refs[(namespace, name)] = (namespace, ref.name)
        deployment = await self.workloads.read_deployment(namespace, ref.name)
        if deployment is None:
            return spec, (
                f"Deployment {ref.name} (serving.workloadRef) not found in namespace "
                f"{namespace}: create it or fix spec.serving.workloadRef.name"
            )
        try:
            resolved = resolve_workload_ref(spec, deployment)
        except WorkloadRefError as err:
            return spec, str(err)
        replicas = int((deployment.get("spec") or {}).get("replicas", 1) or 0)
        generation = int((deployment.get("metadata") or {}).get("generation") or 0)
        if replicas > 0 and self._warned_running.get((namespace, ref.name)) != generation:
            self._warned_running[(namespace, ref.name)] = generation
            await self.notifier.post(
                owner, namespace, "Warning", "WorkloadRefRunning",
                f"Deployment {ref.name} (serving.workloadRef) runs {replicas} replica(s) of its "
                "own beside the release's revisions, which Rewind does not route to and never "
                "scales (its owner, Helm or Argo CD, would scale it back): set its replicas to "
                "0 in its chart",
            )
        return resolved, None

    def releases_using(self, namespace: str, deployment: str) -> list[str]:
        """The releases whose serving.workloadRef names this Deployment."""
        return sorted(
            release for (ns, release), ref in self._workload_refs.items()
            if ref == (namespace, deployment) and ns == namespace
        )

    async def _dry_run(
        self,
        namespace: str,
        name: str,
        owner: OwnerRef,
        spec: ModelReleaseSpec,
        status: ModelReleaseStatus,
        archive: Archive,
    ) -> str | None:
        """The API server's refusal of the Deployment a new revision of this spec would
        run (None: accepted, or the dry run could not be made: the rollout then finds out)."""
        digest = spec_hash(spec)
        same = [h.revision for h in status.history if h.spec_hash == digest]
        known = [h.revision for h in status.history] + [e.revision for e in archive.entries]
        revision = max(same) if same else max(known, default=0) + 1
        try:
            return await self.workloads.dry_run_revision(name, namespace, owner, revision, spec)
        except (AdapterError, client.ApiException) as err:
            log.warning("%s/%s: could not dry-run r%d's Deployment: %s", namespace, name,
                        revision, _describe_error(err))
            return None

    async def _observe_mesh(
        self, namespace: str, name: str, spec: ModelReleaseSpec,
        policy: RolloutPolicySpec | None,
    ) -> tuple[str, dict[int, tuple[int, tuple[str, ...]]]]:
        """Why Istio's proxy is expected on the pods ("" if not: also because of the
        policy's Istio metrics) and, if it is, each revision's running pods and those
        without it."""
        labels: Mapping[str, str] = {}
        if spec.traffic.sidecar == SidecarMode.AUTO:
            try:
                labels = await self.workloads.namespace_labels(namespace) or {}
            except client.ApiException as err:
                log.warning("%s/%s: could not read the namespace's labels: %s", namespace,
                            name, _describe_error(err))
        expected = proxy_expectation(spec, namespace, labels, policy, name)
        if not expected:
            return "", {}
        try:
            return expected, await self.workloads.observe_mesh(name, namespace)
        except client.ApiException as err:
            log.warning("%s/%s: could not list the pods to see their Istio proxy: %s",
                        namespace, name, _describe_error(err))
            return "", {}

    def _sent_removals(
        self, key: tuple[str, str], annotations: Mapping[str, str]
    ) -> dict[str, datetime]:
        """When this process first sent the removal of each action annotation still on the
        object with the same value and ``-by``; a value seen gone (or changed) is forgotten,
        so one set again later starts afresh."""
        sent = self._removals_sent.get(key)
        if not sent:
            return {}
        for annotation, (value, user, _) in list(sent.items()):
            if (annotations.get(annotation), annotations.get(annotation + ACTOR_SUFFIX, "")) != (
                value, user
            ):
                del sent[annotation]
        return {annotation: at for annotation, (_, _, at) in sent.items()}

    async def _start_verification(
        self,
        namespace: str,
        name: str,
        spec: ModelReleaseSpec,
        status: ModelReleaseStatus,
        policy: RolloutPolicySpec | None,
        revision: int,
    ) -> None:
        """Start verifying ``revision``'s artifact in the background: the spec's model for
        the current revision, its snapshot's for any other (an unreadable snapshot is a
        failed verification naming it)."""
        if policy is None or policy.integrity is None:
            return
        if revision in self.verifications.running(namespace, name):
            return
        entry = next((e for e in status.history if e.revision == revision), None)
        want = entry.model_digest if entry is not None else ""
        if revision == status.current_revision:
            model = spec.model
        else:
            try:
                model = (await self.workloads.load_snapshot(name, namespace, revision)).model
            except (SnapshotNotFoundError, SnapshotCorruptError) as err:
                self.verifications.fail(namespace, name, revision, want,
                                        f"cannot read which artifact r{revision} runs: {err}")
                return
        self.verifications.start(namespace, name, revision, model, policy.integrity)

    def _registry_seen(
        self, namespace: str, name: str, spec: ModelReleaseSpec
    ) -> RegistryObservation | None:
        """The MLflow alias of spec.model.registry as last read (None: not yet, or none)."""
        registry = spec.model.registry
        if registry is None:
            return None
        return self.registry.observed(
            namespace, name, registry.tracking_uri or "", registry.name, registry.alias
        )

    def forget(self, namespace: str, name: str) -> None:
        self.verifications.forget(namespace, name)
        self.registry.forget(namespace, name)
        self.router.forget(namespace, name)
        self._workload_refs.pop((namespace, name), None)
        self._removals_sent.pop((namespace, name), None)
        self._records.pop((namespace, name), None)
        self._last_resync.pop((namespace, name), None)
        self._refused.pop((namespace, name), None)
        self._route_streak.pop((namespace, name), None)

    # -- recorded history ---------------------------------------------------------------

    async def _read_archive(
        self, namespace: str, name: str, owner: OwnerRef, annotations: Mapping[str, str]
    ) -> Archive:
        """The recorded revisions of ``namespace/name``, claimed for this object (its uid,
        no orphan mark) before the engine adopts them, so a retention sweep that listed
        them earlier cannot delete them any more. With ``rewind.dev/forget-history=true``
        they are deleted instead. A record that changes meanwhile (a sweep marked it) is
        read again; one deleted meanwhile is not adopted."""
        forget = annotations.get(FORGET_HISTORY_ANNOTATION, "").strip().lower() == "true"
        forgotten = 0
        for _ in range(3):
            stored = await self.archive.read(name, namespace)
            if forget:
                results = [await self.archive.delete(s) for s in stored]
                forgotten += sum(results)
                if all(results):
                    source = f"{FORGET_HISTORY_ANNOTATION}=true"
                    return Archive((), source=source, forgotten=forgotten)
                continue
            recorded = [s for s in stored if s.entry is not None]
            stale = [s for s in recorded if s.release_uid != owner.uid or s.orphaned_at]
            if all([await self.archive.claim(s, owner.uid) for s in stale]):
                if not recorded:
                    return Archive()
                if stale:
                    log.info("%s/%s: adopting %d recorded revision(s)", namespace, name,
                             len(recorded))
                return Archive(
                    archive_entries(recorded), source=describe_source(name, namespace, stored)
                )
        raise AdapterError(
            f"the recorded revisions of {namespace}/{name} kept changing while being read"
        )

    async def _sync_records(
        self,
        namespace: str,
        name: str,
        owner: OwnerRef,
        spec: ModelReleaseSpec,
        status: ModelReleaseStatus,
        force: bool,
    ) -> None:
        """Make each revision's record say what the stored status says of it.

        Called after that status was stored, so a record never claims more than a status
        did. Reads the snapshots only when the history differs from what this process
        last recorded (or at a resync, or after a restart). A revision without a snapshot
        (a tag-only image failed before one was saved) gets one when the spec is still
        that revision's, so its number is never reused; otherwise it stays unrecorded."""
        key = (namespace, name)
        wanted = {e.revision: encode_record(e) for e in status.history}
        cached = self._records.get(key)
        if not force and cached is not None and cached[0] == owner.uid and all(
            cached[1].get(rev) == text for rev, text in wanted.items()
        ):
            return
        stored = {s.revision: s for s in await self.archive.read(name, namespace)}
        now = self.clock()
        current = spec_hash(spec)
        done: dict[int, str] = {}
        for entry in status.history:
            snapshot = stored.get(entry.revision)
            if snapshot is not None and snapshot.spec_hash != entry.spec_hash:
                log.warning("%s/%s: snapshot %s holds spec %s, not r%d's %s: not recorded",
                            namespace, name, snapshot.name, snapshot.spec_hash,
                            entry.revision, entry.spec_hash)
            elif snapshot is not None and snapshot.up_to_date(entry, owner.uid):
                pass
            elif snapshot is not None or entry.spec_hash == current:
                if snapshot is None:
                    await self.workloads.save_snapshot(name, namespace, owner, entry.revision,
                                                       spec)
                try:
                    await self.archive.record(
                        namespace, workload_name(name, entry.revision), entry, owner.uid, now,
                        drop_owners=snapshot is not None and snapshot.owned,
                    )
                except LegacySnapshotError as err:
                    log.warning("%s/%s: r%d not recorded: %s", namespace, name,
                                entry.revision, err)
            else:
                log.warning("%s/%s: r%d has no snapshot to record its history on",
                            namespace, name, entry.revision)
            done[entry.revision] = wanted[entry.revision]
        self._records[key] = (owner.uid, done)

    async def _set_routes(
        self,
        action: SetRoutes,
        name: str,
        namespace: str,
        owner: OwnerRef,
        spec: ModelReleaseSpec,
        seen: RouteObservation,
        force: bool,
    ) -> bool:
        """Write the routes unless the router already reports exactly them with nothing
        amiss that a write repairs (``force``: write anyway, the periodic resync); False
        when no write was needed. A conflict with another VirtualService is not repaired
        by writing ours again, so it alone causes no write. A refusal by the API server is
        remembered for the engine to report (it holds the release until the routes are in
        effect) instead of failing the reconcile: the rest of the actions still apply."""
        key = (namespace, name)
        wanted = RouteState(
            dict(action.weights), action.mirror_revision, action.mirror_percent,
            action.header_revision, action.primary_revision, action.fallback,
        )
        in_place = (
            seen.exists
            and not seen.untidy
            and all(p.kind == "Conflict" or not p.fixed_by_write for p in seen.problems)
            and dict(seen.weights) == dict(action.weights)
            and (seen.mirror_revision, seen.mirror_percent)
            == (action.mirror_revision, action.mirror_percent)
            and seen.header_revision == action.header_revision
            and seen.fallback == action.fallback
            and seen.primary_revision == action.primary_revision
        )
        if in_place and not force:
            self._refused.pop(key, None)
            return False
        try:
            await self.router.set_routes(
                name,
                namespace,
                owner,
                spec.traffic,
                action.weights,
                action.mirror_revision,
                action.mirror_percent,
                action.header_revision,
                action.primary_revision,
                action.fallback,
            )
        except (RouteRefusedError, OwnershipConflictError) as err:
            if isinstance(err, OwnershipConflictError) and any(
                p.kind == "Conflict" for p in seen.problems
            ):
                # The router already reports the object of Rewind's name that belongs to
                # someone else (a Conflict): a refusal would only say it twice.
                self._refused.pop(key, None)
                return False
            if self._refused.get(key) != (wanted, str(err)):
                log.warning("%s/%s: route write refused: %s", namespace, name, err)
            self._refused[key] = (wanted, str(err))
            return False
        self._refused.pop(key, None)
        return True

    async def _apply(
        self,
        action: Action,
        name: str,
        namespace: str,
        owner: OwnerRef,
        spec: ModelReleaseSpec,
        decision: Decision,
        observed: Mapping[int, RevisionObservation],
        stored: ModelReleaseStatus,
        force: bool = False,
    ) -> bool:
        """Carry out one action; False when it was already true (no write needed).

        ``force`` writes workloads and routes even when they look in place (resync)."""
        if isinstance(action, SnapshotRevision):
            try:
                await self.workloads.save_snapshot(name, namespace, owner, action.revision, spec)
            except SnapshotConflictError:
                if _recorded(stored, action.revision):
                    raise  # a revision the status knows never changes
                await self._replace_orphan_snapshot(name, namespace, owner, action.revision)
                await self.workloads.save_snapshot(name, namespace, owner, action.revision, spec)
            return True
        if isinstance(action, EnsureRevision):
            if not force and _already_running(action, observed, decision.status):
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
        if isinstance(action, EmitEvent):
            await self.notifier.post(owner, namespace, action.type, action.reason, action.message)
            return True
        if isinstance(action, SyncRegistryAlias):
            # In the background, after the routes: MLflow never holds up a reconcile.
            return self.registry.submit(namespace, name, SyncRequest(
                self.registry.resolve(action.tracking_uri), action.name, action.alias,
                action.version, action.revision, action.why, f"{namespace}/{name}",
            ))
        raise TypeError(f"unknown action {action!r}")

    # -- writes ----------------------------------------------------------------------

    async def _replace_orphan_snapshot(
        self, name: str, namespace: str, owner: OwnerRef, revision: int
    ) -> None:
        """Delete the snapshot of a revision the stored status does not know.

        A reconcile saves the snapshot first and records the revision in status last; killed
        in between, it leaves a snapshot nothing refers to (its Deployment, if any, carries
        no traffic: a new revision starts at weight 0). When the spec changes before the
        next reconcile, the engine numbers the new spec's revision the same, and the stale
        snapshot would block the release forever as an immutable-revision conflict. Such a
        snapshot has no history record (records follow the status); one with a record is
        never replaced.
        """
        snapshot = workload_name(name, revision)
        existing = await _kube.get_or_none(
            self._apps.read_namespaced_controller_revision,
            snapshot,
            namespace,
            timeout=self._timeout,
        )
        if existing is None:
            return
        stored = parse_stored(existing)
        if stored is None or stored.release != name:
            raise OwnershipConflictError(
                f"ControllerRevision {snapshot} is not a Rewind snapshot of ModelRelease "
                f"{name}; refusing to replace it"
            )
        if stored.entry is not None:
            raise SnapshotConflictError(
                f"r{revision} of {namespace}/{name} is recorded ({stored.entry.outcome.value}, "
                f"spec {stored.spec_hash}) in ControllerRevision {snapshot}, which this "
                f"release's status does not hold; a recorded revision never changes. Delete "
                f"that ControllerRevision to forget it"
            )
        meta = existing["metadata"]
        preconditions = {"uid": meta["uid"], "resourceVersion": meta["resourceVersion"]}
        await _kube.call(
            self._apps.delete_namespaced_controller_revision,
            snapshot,
            namespace,
            body={"preconditions": preconditions},
            timeout=self._timeout,
        )
        message = (
            f"replaced snapshot {snapshot}: it was saved by a reconcile that never recorded "
            f"r{revision} in status (operator restarted), and the spec changed since"
        )
        log.warning("%s/%s: %s", namespace, name, message)
        await self.notifier.post(owner, namespace, "Warning", "OrphanSnapshotReplaced", message)

    async def _write_status(
        self,
        namespace: str,
        name: str,
        status: dict[str, Any],
        meta: Mapping[str, Any],
    ) -> Mapping[str, Any]:
        """Replace the whole status if the object is still the one (uid) and the version
        (resourceVersion) the decision was made from; returns the stored metadata.

        "add" replaces the whole status: fields the engine dropped (a cleared
        pendingDecision) disappear instead of lingering as with a merge patch. A failed
        test (a spec edit, an annotation, another writer) is a 422: decide again.
        """
        patch = [
            {"op": "test", "path": "/metadata/uid", "value": meta["uid"]},
            {"op": "test", "path": "/metadata/resourceVersion", "value": meta["resourceVersion"]},
            {"op": "add", "path": "/status", "value": status},
        ]
        stored = await _kube.call(
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
        stored_meta: Mapping[str, Any] = stored.get("metadata") or meta
        return stored_meta

    async def _write_stalled(
        self,
        namespace: str,
        name: str,
        old_status: Mapping[str, Any],
        meta: Mapping[str, Any],
        message: str,
    ) -> bool:
        """Keep every stored field, only raise Stalled: nothing is lost on a bad input.

        Returns True when the condition is new (it was not already Stalled saying this)."""
        status = json.loads(json.dumps(old_status)) if old_status else {}
        conditions = [c for c in status.get("conditions", []) if c.get("type") != "Stalled"]
        previous: dict[str, Any] = next(
            (c for c in status.get("conditions", []) if c.get("type") == "Stalled"), {}
        )
        since = self.clock().isoformat().replace("+00:00", "Z")
        repeated = previous.get("status") == "True" and previous.get("message") == message[:1000]
        if repeated:
            since = previous.get("lastTransitionTime", since)
        conditions.append(
            {
                "type": "Stalled",
                "status": "True",
                "reason": RECONCILE_ERROR,
                "message": message[:1000],
                "lastTransitionTime": since,
                "observedGeneration": int(meta.get("generation") or 0),
            }
        )
        status["conditions"] = conditions
        with contextlib.suppress(client.ApiException):
            await self._write_status(namespace, name, status, meta)
        return not repeated

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
            self._sent_removal(namespace, name, key, seen)  # answered, with an error
            if err.status not in (404, 409, 422):  # gone, or changed meanwhile: keep it
                raise
        else:
            self._sent_removal(namespace, name, key, seen)

    def _sent_removal(
        self, namespace: str, name: str, key: str, seen: Mapping[str, str]
    ) -> None:
        """Remember the first answered removal of this value: the engine's patience with an
        annotation that stays counts from it (a removal decided and never sent, because the
        operator died first, proves nothing)."""
        sent = self._removals_sent.setdefault((namespace, name), {})
        value, user = seen[key], seen.get(key + ACTOR_SUFFIX, "")
        if sent.get(key, ("", "", None))[:2] != (value, user):
            sent[key] = (value, user, self.clock())


def _keep_reconcile_error(old: Mapping[str, Any], new: dict[str, Any]) -> dict[str, Any] | None:
    """Carry a stored ``Stalled=True/ReconcileError`` (an action that failed to apply) into
    the new status, in place of the engine's Stalled condition, which cannot know about it.

    Otherwise every retry would store Stalled=False, fail again and raise it again: a
    flapping condition and one more ApplyFailed Event every few seconds. Returns the
    engine's condition, to store once every action applied (None: nothing was carried).
    """
    stored = next(
        (c for c in old.get("conditions") or [] if c.get("type") == "Stalled"), None
    )
    if stored is None or stored.get("status") != "True":
        return None
    if stored.get("reason") != RECONCILE_ERROR:
        return None
    conditions: list[dict[str, Any]] = list(new.get("conditions") or [])
    for i, condition in enumerate(conditions):
        if condition.get("type") == "Stalled":
            if condition.get("status") == "True":
                return None  # the engine's own stall (policy, rollback target) says more
            conditions[i] = dict(stored)
            new["conditions"] = conditions
            return dict(condition)
    return None


def _sooner(current: float | None, other: float) -> float:
    """The earlier of two requeue delays (None: nothing scheduled)."""
    return other if current is None else min(current, other)


def _with_condition(status: Mapping[str, Any], condition: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``status`` with the condition of the same type replaced."""
    out = dict(status)
    out["conditions"] = [
        dict(condition) if c.get("type") == condition.get("type") else c
        for c in status.get("conditions") or []
    ]
    return out


def _recorded(status: ModelReleaseStatus, revision: int) -> bool:
    """The stored status refers to the revision (so its snapshot is authoritative)."""
    return revision in {
        status.stable_revision,
        status.candidate_revision,
        status.current_revision,
        *(h.revision for h in status.history),
    }


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
    return ", ".join(f"{m.metric}={m.shown} {m.verdict}" for m in measurements)
