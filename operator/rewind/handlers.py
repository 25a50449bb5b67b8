"""Thin Kopf wiring: one reconcile loop per ModelRelease, poked by watch events.

Kopf is edge-triggered; rollouts are level-based and time-driven. So each ModelRelease gets
a loop (an asyncio task) that reconciles, then sleeps until the engine's next deadline (a
step's pause, the next analysis, an approval timeout) or until something pokes it: a spec
change, a human's `rewind.dev/` annotation, its Deployment becoming Available, or its
RolloutPolicy changing. One loop per release serialises every write to it; a poke makes
`kubectl annotate` act within one API round-trip instead of at the next tick.

The loops are plain tasks started from the watch, not Kopf daemons: Kopf puts a finalizer
on every object with a daemon, so a ModelRelease (and its namespace) could not be deleted
while the operator is down. Owned objects are garbage-collected through ownerReferences;
revision snapshots and their history records are not owned: they outlive the object, and a
sweep deletes them after the retention (``sweep_records``).

Nothing lives only in memory: the loop re-reads the release on every pass, so the operator
can be killed at any line and resumes from what the API server holds.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes import client, config
from prometheus_client import start_http_server

from rewind import API_GROUP, API_VERSION
from rewind.adapters import _kube
from rewind.adapters.archive import KubeArchive
from rewind.adapters.base import (
    DEFAULT_CLUSTER_DOMAIN,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    RELEASE_LABEL,
)
from rewind.adapters.events import EventRecorder
from rewind.adapters.gateway_api import (
    GATEWAY_GROUP,
    GATEWAY_VERSION,
    HTTPROUTES,
    GatewayAPIRouter,
)
from rewind.adapters.httproute_index import HTTPRouteIndex
from rewind.adapters.prometheus import DEFAULT_THREADS, PrometheusProvider
from rewind.adapters.registry import RegistrySync
from rewind.adapters.route_index import VirtualServiceIndex
from rewind.adapters.router import ISTIO_GROUP, ISTIO_VERSION, IstioRouter
from rewind.adapters.routers import TrafficRouter
from rewind.adapters.webhooks import Deliveries, Target
from rewind.adapters.workloads import KubeWorkloads
from rewind.api import (
    MODELRELEASE_PLURAL,
    QUARANTINE_PLURAL,
    ROLLOUTPOLICY_PLURAL,
    RolloutPolicySpec,
    parse_duration,
)
from rewind.controller import ERROR_REQUEUE, ReleaseController
from rewind.engine import ANNOTATION_OF, ActorStamp
from rewind.metrics import OperatorMetrics
from rewind.peering import PeeringGate, PeeringVerdict

log = logging.getLogger(__name__)

#: A release with nothing scheduled is still re-read this often (drift repair).
IDLE_RESYNC = 60.0
#: Revision records outlive their ModelRelease this long by default (30 days).
DEFAULT_HISTORY_RETENTION = "720h"


def sweep_interval(retention: float) -> float:
    """How often the retention sweep runs: a tenth of the retention, 1 s to 10 min."""
    return min(600.0, max(1.0, retention / 10))


@dataclass
class RuntimeConfig:
    """What `rewind-operator` was started with (env vars when run through `kopf run`)."""

    prometheus_url: str = field(
        default_factory=lambda: os.environ.get("PROMETHEUS_URL", "http://prometheus:9090")
    )
    prometheus_token: str | None = field(
        default_factory=lambda: os.environ.get("PROMETHEUS_BEARER_TOKEN") or None, repr=False
    )
    prometheus_username: str | None = field(
        default_factory=lambda: os.environ.get("PROMETHEUS_BASIC_AUTH_USERNAME") or None
    )
    prometheus_password: str | None = field(
        default_factory=lambda: os.environ.get("PROMETHEUS_BASIC_AUTH_PASSWORD") or None,
        repr=False,
    )

    def prometheus_headers(self) -> dict[str, str] | None:
        """Bearer token or basic auth for Prometheus (the chart refuses both at once)."""
        if self.prometheus_token:
            return {"Authorization": f"Bearer {self.prometheus_token}"}
        if self.prometheus_username is not None:
            pair = f"{self.prometheus_username}:{self.prometheus_password or ''}"
            return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}
        return None

    metrics_port: int = field(
        default_factory=lambda: int(os.environ.get("REWIND_METRICS_PORT", "0"))
    )
    trust_actor_annotations: bool = field(
        default_factory=lambda: os.environ.get("REWIND_TRUST_ACTOR_ANNOTATIONS", "") == "true"
    )
    #: Who writes rewind.dev/<action>-by: "client" makes the commands in messages set it.
    actor_stamp: ActorStamp = field(
        default_factory=lambda: "client"
        if os.environ.get("REWIND_ACTOR_STAMP", "") == "client"
        else "server"
    )
    #: Seconds an analysis query may run when its metric sets no timeout.
    prometheus_timeout: float = field(
        default_factory=lambda: parse_duration(os.environ.get("PROMETHEUS_TIMEOUT", "10s"))
    )
    #: Analysis queries in flight at once (the Prometheus provider's own threads).
    analysis_threads: int = field(
        default_factory=lambda: int(os.environ.get("REWIND_ANALYSIS_THREADS",
                                                   str(DEFAULT_THREADS)))
    )
    worker_threads: int = 32
    #: Seconds revision records of a deleted ModelRelease (and records a live release no
    #: longer refers to) are kept before the sweep deletes them.
    history_retention: float = field(
        default_factory=lambda: parse_duration(
            os.environ.get("REWIND_HISTORY_RETENTION", DEFAULT_HISTORY_RETENTION)
        )
    )
    #: Kopf peering (HA): the peering object's name, None when standalone.
    peering_name: str | None = None
    peering_priority: int = 0
    #: Seconds a keep-alive entry lives; a standby takes over this long after a crash.
    peering_lifetime: int = 30
    #: Kopf's identity of this replica (the name of its keep-alive entry).
    identity: str = ""
    #: Watched namespaces; None for all (then the peering object is cluster-wide).
    namespaces: list[str] | None = None
    #: The cluster's DNS domain (Kubernetes' default cluster.local): in-cluster names end in
    #: svc.<it>, in the routes Rewind writes and in the conflicts it looks for.
    cluster_domain: str = field(
        default_factory=lambda: os.environ.get("REWIND_CLUSTER_DOMAIN", DEFAULT_CLUSTER_DOMAIN)
    )
    #: Notifier targets beside Events (``--notifier NAME=KIND``), by name.
    notifier_targets: dict[str, Target] = field(default_factory=dict)
    #: Targets of releases whose RolloutPolicy names none (``--notify-default``).
    notify_defaults: list[str] = field(default_factory=list)
    #: Argo CD's URL, for a link to the release's Application in messages ("": none).
    argocd_url: str = field(default_factory=lambda: os.environ.get("REWIND_ARGOCD_URL", ""))
    #: Longest pause between two delivery attempts, and when to give up on a message.
    notify_max_backoff: float = 300.0
    notify_give_up: float = 86400.0

    def deliveries(self, on_done: Callable[[str, str], None],
                   on_result: Callable[[str, str, str, str], None]) -> Deliveries:
        """The background deliverer of the notification outbox."""
        return Deliveries(self.notifier_targets, max_backoff=self.notify_max_backoff,
                          first_backoff=min(1.0, self.notify_max_backoff),
                          give_up_after=self.notify_give_up, on_done=on_done,
                          on_result=on_result)

    def prometheus_provider(self) -> PrometheusProvider:
        """The analysis queries' provider: URL, credentials, timeout and threads."""
        return PrometheusProvider(self.prometheus_url, headers=self.prometheus_headers(),
                                  default_timeout=self.prometheus_timeout,
                                  max_concurrent=self.analysis_threads)


class ReleaseLoops:
    """The reconcile loop of every ModelRelease seen, and the events that wake them.

    Loops are keyed by name but belong to one object (uid): a release deleted and created
    again under the same name gets a new loop, and a late DELETED of the old object (Kopf
    handles events per uid, so it can arrive after the new ADDED) stops nothing.
    """

    def __init__(self, controller: ReleaseController, *, active: bool = True) -> None:
        self.controller = controller
        #: False on a standby replica (Kopf peering): releases are remembered, not run.
        self.active = active
        self._known: dict[tuple[str, str], str] = {}
        self._tasks: dict[tuple[str, str], tuple[str, asyncio.Task[None]]] = {}
        self._wake: dict[tuple[str, str], asyncio.Event] = {}
        self._generations: dict[tuple[str, str], int] = {}

    def ensure(self, namespace: str, name: str, uid: str) -> bool:
        """Start the object's loop unless it runs; True when it was started now."""
        key = (namespace, name)
        self._known[key] = uid
        if not self.active:
            return False
        current = self._tasks.get(key)
        if current is not None:
            current_uid, task = current
            if current_uid == uid and not task.done():
                return False
            task.cancel()  # the previous object of that name is gone
        self._wake[key] = asyncio.Event()
        self._tasks[key] = (
            uid,
            asyncio.create_task(
                self._run(namespace, name, uid), name=f"rewind:{namespace}/{name}"
            ),
        )
        return True

    def poke(self, namespace: str, name: str) -> None:
        event = self._wake.get((namespace, name))
        if event is not None:
            event.set()

    def poke_namespace(self, namespace: str) -> None:
        for (ns, _), event in self._wake.items():
            if ns == namespace:
                event.set()

    def generation_changed(self, namespace: str, name: str, generation: int) -> bool:
        previous = self._generations.get((namespace, name))
        self._generations[(namespace, name)] = generation
        return previous != generation

    def running(self) -> list[tuple[str, str]]:
        return sorted(key for key, (_, task) in self._tasks.items() if not task.done())

    async def activate(self) -> None:
        """This replica became the active one: run every release it knows of."""
        self.active = True
        self.controller.operator_metrics.active.set(1)
        # Policies may have changed while Kopf was paused on this replica.
        self.controller.policies.clear()
        self.controller.quarantines.clear()
        for (namespace, name), uid in list(self._known.items()):
            self.ensure(namespace, name, uid)

    async def stand_by(self) -> None:
        """Another replica is active: stop every loop mid-flight (restart-safe by design),
        remember the releases for when this replica is active again."""
        self.active = False
        self.controller.operator_metrics.active.set(0)
        self.controller.policies.clear()
        self.controller.quarantines.clear()
        for namespace, name in list(self._tasks):
            await self.stop(namespace, name)
            # The active replica writes meanwhile: re-apply everything when active again.
            self.controller.forget(namespace, name)

    async def stop(self, namespace: str, name: str, uid: str | None = None) -> None:
        """Stop the loop; with a uid, only if the loop belongs to that object."""
        key = (namespace, name)
        if uid is not None and self._known.get(key) == uid:
            del self._known[key]
        current = self._tasks.get(key)
        if current is None or (uid is not None and current[0] != uid):
            return
        del self._tasks[key]
        self._wake.pop(key, None)
        self._generations.pop(key, None)
        task = current[1]
        if task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.controller.deliveries is not None:
            # Undelivered messages stay Pending in the status for whoever runs it next.
            await self.controller.deliveries.cancel(namespace, name)
        self.controller.operator_metrics.forget(namespace, name)

    async def stop_all(self) -> None:
        for namespace, name in list(self._tasks):
            await self.stop(namespace, name)

    async def _run(self, namespace: str, name: str, uid: str) -> None:
        """Reconcile, sleep until the next deadline or a poke; never raises.

        Ends by itself once the release is gone, also when the watch never delivered its
        DELETED (a re-list after the watch expired does not replay deletions)."""
        wake = self._wake[(namespace, name)]
        loop = asyncio.get_running_loop()
        while True:
            wake.clear()
            started = loop.time()
            try:
                result = await self.controller.reconcile(namespace, name)
                if result.gone:
                    self.controller.forget(namespace, name)
                    await self.stop(namespace, name, uid)
                    return
                delay = result.requeue_after if result.requeue_after is not None else IDLE_RESYNC
            except Exception:  # one release's bug must not stop its loop or others
                log.exception("reconcile of %s/%s failed; retrying", namespace, name)
                delay = ERROR_REQUEUE
            # The engine's deadline is relative to the start of the reconcile: subtract the
            # time the reconcile itself took, or every analysis interval drifts by it.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), max(0.0, delay - (loop.time() - started)))


def _api_client(pool_size: int) -> client.ApiClient:
    """One client for every thread. Its connection pool is as large as the thread pool: the
    default (5 per core) makes busy threads discard connections and pay a new TLS handshake
    per request, which stretched analysis intervals with 200 releases."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = pool_size
    return client.ApiClient(configuration)


class UnusedDiffBase(kopf.AnnotationsDiffBaseStorage):
    """Kopf's diff base, never built: Rewind has no change handlers to read it.

    Kopf builds a diff base for every watch event, a deep copy of the whole object (status
    and managedFields included), though only change handlers (``on.create``, ``on.update``,
    ``on.resume``...) use it. Rewind registers event handlers only, and every status write
    comes back as an event, so that copy was about half of Kopf's CPU per event for nothing.
    ``tests/unit/test_handlers.py`` fails if a change handler is ever registered.
    """

    def build(
        self, *, body: kopf.Body, extra_fields: Any = None
    ) -> kopf.BodyEssence:
        return kopf.BodyEssence()


class _QuietSuccess(logging.Filter):
    """Drops Kopf's "Handler 'release_event' succeeded." line: logged for every watch event
    (each status write is one), it said nothing and cost a formatted write each time.
    Failures are still logged (at ERROR)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.INFO
                    and str(record.msg).startswith("Handler ")
                    and str(record.msg).endswith(" succeeded."))


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Kopf's own bookkeeping goes to annotations: the status schema is Rewind's and
    # structural schemas would prune a `status.kopf` anyway.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    settings.persistence.diffbase_storage = UnusedDiffBase(
        prefix=API_GROUP, key="last-handled-configuration"
    )
    if not logging.getLogger("kopf.objects").isEnabledFor(logging.DEBUG):
        logging.getLogger("kopf.objects").addFilter(_QuietSuccess())
    # Rewind posts its own Events with reasons people can filter on.
    settings.posting.enabled = False
    # Watches can stall silently behind proxies; re-list regularly.
    settings.watching.server_timeout = 120
    settings.watching.client_timeout = 150
    settings.watching.connect_timeout = 10

    runtime: RuntimeConfig = memo.get("config") or RuntimeConfig()
    # Every Kubernetes and Prometheus call runs in a thread; the default pool (cores + 4)
    # is too small for hundreds of releases analysing at once.
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=runtime.worker_threads, thread_name_prefix="rewind-io")
    )
    api_client = _api_client(runtime.worker_threads)
    operator_metrics = OperatorMetrics()
    memo.api_client = api_client
    # Filled by route_event from the VirtualService watch; read by the router.
    memo.route_index = VirtualServiceIndex(runtime.cluster_domain)
    # Filled by http_route_event from the HTTPRoute watch; read by the Gateway API router.
    memo.http_route_index = HTTPRouteIndex()

    def delivered(namespace: str, name: str) -> None:
        # A delivery ended: store its outcome now (the loop writes the status).
        loops: ReleaseLoops | None = memo.get("loops")
        if loops is not None:
            loops.poke(namespace, name)

    deliveries = runtime.deliveries(delivered, operator_metrics.notification_result)
    memo.controller = ReleaseController(
        api_client,
        router=TrafficRouter(
            api_client,
            istio=IstioRouter(
                api_client, index=memo.route_index, cluster_domain=runtime.cluster_domain
            ),
            gateway_api=GatewayAPIRouter(api_client, index=memo.http_route_index),
        ),
        workloads=KubeWorkloads(api_client),
        metrics=runtime.prometheus_provider(),
        notifier=EventRecorder(api_client),
        operator_metrics=operator_metrics,
        trust_actor_annotations=runtime.trust_actor_annotations,
        cluster_domain=runtime.cluster_domain,
        actor_stamp=runtime.actor_stamp,
        deliveries=deliveries,
        # MLflow's URI and credentials: the operator's MLFLOW_TRACKING_* variables.
        registry=RegistrySync(on_change=delivered),
        notify_defaults=runtime.notify_defaults,
        argocd_url=runtime.argocd_url,
    )
    memo.loops = ReleaseLoops(memo.controller, active=runtime.peering_name is None)
    # A finished artifact verification is decided on at once.
    memo.controller.verifications.wake = memo.loops.poke
    if runtime.peering_name is not None:
        # Kopf reads this when its keep-alive starts, after the startup handlers.
        settings.peering.lifetime = runtime.peering_lifetime
        operator_metrics.active.set(0)
        loops: ReleaseLoops = memo.loops

        async def follow(verdict: PeeringVerdict) -> None:
            await (loops.activate() if verdict.active else loops.stand_by())

        gate = PeeringGate(
            api_client, name=runtime.peering_name, namespaces=runtime.namespaces,
            identity=runtime.identity, priority=runtime.peering_priority, on_change=follow,
            poll_interval=min(1.0, runtime.peering_lifetime / 10),
        )
        memo.peering_task = asyncio.create_task(gate.run(), name="rewind:peering")
        log.info("peering %s as %r, priority %d: standing by until active",
                 runtime.peering_name, runtime.identity, runtime.peering_priority)
    memo.sweep_task = asyncio.create_task(
        sweep_records(memo.controller.archive, memo.loops, runtime.namespaces,
                      runtime.history_retention),
        name="rewind:history-retention",
    )
    if runtime.metrics_port:
        start_http_server(runtime.metrics_port, registry=operator_metrics.registry)
        log.info("operator metrics on :%d/metrics", runtime.metrics_port)
    log.info("analysis queries go to %s (timeout %gs unless a metric sets one, %d threads)",
             runtime.prometheus_url, runtime.prometheus_timeout, runtime.analysis_threads)
    log.info("revision records of deleted releases are kept %gs", runtime.history_retention)
    if runtime.notifier_targets:
        log.info("notifier targets: %s (default: %s)%s",
                 ", ".join(f"{t.name} ({t.kind})" for t in runtime.notifier_targets.values()),
                 ", ".join(runtime.notify_defaults) or "none",
                 f"; Argo CD links to {runtime.argocd_url}" if runtime.argocd_url else "")


async def sweep_records(
    archive: KubeArchive,
    loops: ReleaseLoops,
    namespaces: list[str] | None,
    retention: float,
) -> None:
    """The one rule that deletes revision records (docs/design.md): on the active replica
    only, every ``sweep_interval``, mark the snapshots of releases that no longer exist
    and delete those past the retention. Never raises: a failed sweep is tried again."""
    while True:
        if loops.active:
            try:
                for step in await archive.sweep(namespaces, retention, datetime.now(UTC)):
                    verb = "deleted" if step.kind == "delete" else "marked orphaned"
                    log.info("ControllerRevision %s/%s %s: %s", step.stored.namespace,
                             step.stored.name, verb, step.why)
            except Exception:  # the API may be away; the next sweep tries again
                log.exception("history retention sweep failed; trying again")
        await asyncio.sleep(sweep_interval(retention))


def _has_action(annotations: Mapping[str, str]) -> bool:
    return any(key in annotations for key in ANNOTATION_OF.values())


def _removal_done(obj: Mapping[str, Any]) -> bool:
    """An annotation the operator removes (status.consumedActions, not seen gone yet) is
    gone: look at once, so the engine sees it gone before a GitOps tool can put it back
    (which then counts as the same value coming back, not as a removal that failed)."""
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    ledger = (obj.get("status") or {}).get("consumedActions") or []
    return any(
        isinstance(c, Mapping) and not c.get("goneAt") and not c.get("keep")
        and c.get("key") not in annotations
        for c in ledger
    )


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    for name in ("peering_task", "sweep_task"):
        task: asyncio.Task[None] | None = memo.get(name)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    loops: ReleaseLoops | None = memo.get("loops")
    if loops is not None:
        await loops.stop_all()
        loops.controller.verifications.shutdown()
        if loops.controller.deliveries is not None:
            await loops.controller.deliveries.close()
        await loops.controller.registry.close()


@kopf.on.event(API_GROUP, API_VERSION, MODELRELEASE_PLURAL)
async def release_event(
    event: kopf.RawEvent, name: str, namespace: str | None, memo: kopf.Memo, **_: Any
) -> None:
    """Start the release's loop on first sight (also after a restart: the watch lists every
    object), stop it on deletion, wake it for a spec change, a human action or the removal
    of one it consumed; our own status writes change neither generation nor action
    annotations, so they wake nothing."""
    assert namespace is not None
    loops: ReleaseLoops = memo.loops
    obj: Mapping[str, Any] = event.get("object") or {}
    meta = obj.get("metadata") or {}
    uid = str(meta.get("uid") or "")
    if event.get("type") == "DELETED":
        await loops.stop(namespace, name, uid)
        return
    generation_changed = loops.generation_changed(
        namespace, name, int(meta.get("generation") or 0)
    )
    if loops.ensure(namespace, name, uid):
        return
    if generation_changed or _has_action(meta.get("annotations") or {}) or _removal_done(obj):
        loops.poke(namespace, name)


@kopf.on.event("apps", "v1", "deployments", labels={MANAGED_BY_LABEL: MANAGED_BY_VALUE})
async def revision_event(
    labels: Mapping[str, str], namespace: str | None, memo: kopf.Memo, **_: Any
) -> None:
    """A revision's Deployment changed (became Available, lost pods): re-decide now."""
    release = labels.get(RELEASE_LABEL)
    if release and namespace:
        memo.loops.poke(namespace, release)


@kopf.on.event("apps", "v1", "deployments", labels={MANAGED_BY_LABEL: kopf.ABSENT})
async def template_event(
    name: str, namespace: str | None, memo: kopf.Memo, **_: Any
) -> None:
    """A Deployment that is not Rewind's changed: the releases whose serving.workloadRef
    names it re-decide now (a new pod template is a new revision)."""
    if namespace:
        for release in memo.controller.releases_using(namespace, name):
            memo.loops.poke(namespace, release)


@kopf.on.event(ISTIO_GROUP, ISTIO_VERSION, "virtualservices")
async def route_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """Keep the VirtualService index current (route conflicts are looked up in it, never
    listed per reconcile) and wake the releases a change concerns: those whose hosts
    another VirtualService now claims or no longer claims, and the owner of a Rewind
    VirtualService edited by someone else or deleted, so drift is restored at once.

    The watch covers the namespaces the operator watches (all, by default); Kopf lists
    them when it starts, so the index fills itself after a restart. Nothing is written."""
    obj: Mapping[str, Any] = event.get("object") or {}
    index: VirtualServiceIndex = memo.route_index
    for namespace, release in sorted(index.apply(event.get("type"), obj)):
        memo.loops.poke(namespace, release)


@kopf.on.event(API_GROUP, API_VERSION, QUARANTINE_PLURAL)
async def quarantine_event(
    event: kopf.RawEvent, namespace: str | None, memo: kopf.Memo, **_: Any
) -> None:
    """A Quarantine changed: every release of its namespace re-decides (its entries may
    match a revision, or no longer do). The cached list goes first, so the releases woken
    here list the Quarantines afresh."""
    assert namespace is not None
    memo.controller.quarantines.invalidate(namespace)
    memo.loops.poke_namespace(namespace)


@kopf.on.event(GATEWAY_GROUP, GATEWAY_VERSION, HTTPROUTES)
async def http_route_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """Keep the HTTPRoute index current (Gateway API route conflicts are looked up in it)
    and wake the releases a change concerns: those whose hosts another route now takes or
    no longer takes, and the owner of a Rewind HTTPRoute that was edited by someone else,
    deleted, or accepted or refused by a gateway (a new ``status.parents``), so a step
    starts as soon as the gateway accepts its routes. Nothing is written."""
    obj: Mapping[str, Any] = event.get("object") or {}
    index: HTTPRouteIndex = memo.http_route_index
    for namespace, release in sorted(index.apply(event.get("type"), obj)):
        memo.loops.poke(namespace, release)


@kopf.on.event(API_GROUP, API_VERSION, ROLLOUTPOLICY_PLURAL)
async def policy_event(
    event: kopf.RawEvent, name: str, namespace: str | None, memo: kopf.Memo, **_: Any
) -> None:
    """A policy changed: its releases re-decide, and `kubectl get rp` shows its strategy.

    The cached copy goes first, so the releases woken here read the policy afresh."""
    assert namespace is not None
    memo.controller.policies.invalidate(namespace, name)
    memo.loops.poke_namespace(namespace)
    obj: Mapping[str, Any] = event.get("object") or {}
    if event.get("type") == "DELETED" or not obj:
        return
    generation = int(obj.get("metadata", {}).get("generation") or 0)
    status = obj.get("status") or {}
    if status.get("observedGeneration") == generation:
        return
    try:
        strategy = RolloutPolicySpec.model_validate(obj.get("spec") or {}).strategy.kind
        condition = {"type": "Ready", "status": "True", "reason": "Valid", "message": ""}
        new_status: dict[str, Any] = {"strategy": strategy.value}
    except ValueError as err:
        condition = {"type": "Ready", "status": "False", "reason": "Invalid",
                     "message": str(err)[:1000]}
        new_status = {}
    new_status.update(observedGeneration=generation, conditions=[condition])
    custom = client.CustomObjectsApi(memo.api_client)
    await _kube.call(
        custom.patch_namespaced_custom_object_status,
        API_GROUP,
        API_VERSION,
        namespace,
        ROLLOUTPOLICY_PLURAL,
        name,
        {"status": new_status},
        _content_type=_kube.MERGE_PATCH,
        timeout=30.0,
    )
