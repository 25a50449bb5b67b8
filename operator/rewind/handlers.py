"""Thin Kopf wiring: one reconcile loop (a daemon) per ModelRelease, poked by events.

Kopf is edge-triggered; rollouts are level-based and time-driven. So each ModelRelease gets
a daemon that reconciles, then sleeps until the engine's next deadline (a step's pause, the
next analysis, an approval timeout) or until something pokes it: a spec change, a human's
`rewind.dev/` annotation, its Deployment becoming Available, or its RolloutPolicy changing.
One loop per release serialises every write to it; a poke makes `kubectl annotate` act
within one API round-trip instead of at the next tick.

Nothing lives only in memory: the loop re-reads the release on every pass, so the operator
can be killed at any line and resumes from what the API server holds.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import defaultdict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import kopf
from kubernetes import client, config
from prometheus_client import start_http_server

from rewind import API_GROUP, API_VERSION
from rewind.adapters import _kube
from rewind.adapters.base import MANAGED_BY_LABEL, MANAGED_BY_VALUE, RELEASE_LABEL
from rewind.adapters.events import EventRecorder
from rewind.adapters.prometheus import PrometheusProvider
from rewind.adapters.router import IstioRouter
from rewind.adapters.workloads import KubeWorkloads
from rewind.api import MODELRELEASE_PLURAL, ROLLOUTPOLICY_PLURAL, RolloutPolicySpec
from rewind.controller import ERROR_REQUEUE, ReleaseController
from rewind.engine import ANNOTATION_OF
from rewind.metrics import OperatorMetrics

log = logging.getLogger(__name__)

#: A release with nothing scheduled is still re-read this often (drift repair).
IDLE_RESYNC = 60.0


@dataclass
class RuntimeConfig:
    """What `rewind-operator` was started with (env vars when run through `kopf run`)."""

    prometheus_url: str = field(
        default_factory=lambda: os.environ.get("PROMETHEUS_URL", "http://prometheus:9090")
    )
    prometheus_token: str | None = field(
        default_factory=lambda: os.environ.get("PROMETHEUS_BEARER_TOKEN") or None
    )
    metrics_port: int = field(
        default_factory=lambda: int(os.environ.get("REWIND_METRICS_PORT", "0"))
    )
    worker_threads: int = 32


class Wakeups:
    """One asyncio.Event per release: set it to make that release's loop run now."""

    def __init__(self) -> None:
        self._events: dict[tuple[str, str], asyncio.Event] = defaultdict(asyncio.Event)
        self._generations: dict[tuple[str, str], int] = {}

    def event(self, namespace: str, name: str) -> asyncio.Event:
        return self._events[(namespace, name)]

    def poke(self, namespace: str, name: str) -> None:
        if (namespace, name) in self._events:
            self._events[(namespace, name)].set()

    def poke_namespace(self, namespace: str) -> None:
        for (ns, _), event in self._events.items():
            if ns == namespace:
                event.set()

    def generation_changed(self, namespace: str, name: str, generation: int) -> bool:
        previous = self._generations.get((namespace, name))
        self._generations[(namespace, name)] = generation
        return previous != generation

    def forget(self, namespace: str, name: str) -> None:
        self._events.pop((namespace, name), None)
        self._generations.pop((namespace, name), None)


def _api_client() -> client.ApiClient:
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    return client.ApiClient()


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Kopf's own bookkeeping goes to annotations: the status schema is Rewind's and
    # structural schemas would prune a `status.kopf` anyway.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=API_GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{API_GROUP}/operator"
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
    api_client = _api_client()
    headers = (
        {"Authorization": f"Bearer {runtime.prometheus_token}"}
        if runtime.prometheus_token
        else None
    )
    operator_metrics = OperatorMetrics()
    memo.api_client = api_client
    memo.controller = ReleaseController(
        api_client,
        router=IstioRouter(api_client),
        workloads=KubeWorkloads(api_client),
        metrics=PrometheusProvider(runtime.prometheus_url, headers=headers),
        notifier=EventRecorder(api_client),
        operator_metrics=operator_metrics,
    )
    memo.wakeups = Wakeups()
    if runtime.metrics_port:
        start_http_server(runtime.metrics_port, registry=operator_metrics.registry)
        log.info("operator metrics on :%d/metrics", runtime.metrics_port)
    log.info("analysis queries go to %s", runtime.prometheus_url)


async def _sleep_until_poked(
    wake: asyncio.Event, stopped: kopf.DaemonStopped, timeout: float
) -> None:
    waiters = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stopped.wait())]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


@kopf.daemon(API_GROUP, API_VERSION, MODELRELEASE_PLURAL, cancellation_timeout=10.0)
async def release_loop(
    name: str, namespace: str | None, stopped: kopf.DaemonStopped, memo: kopf.Memo, **_: Any
) -> None:
    """The reconcile loop of one ModelRelease; never raises, so it never crash-loops."""
    assert namespace is not None  # ModelRelease is namespaced
    controller: ReleaseController = memo.controller
    wakeups: Wakeups = memo.wakeups
    wake = wakeups.event(namespace, name)
    try:
        while not stopped:
            wake.clear()
            try:
                result = await controller.reconcile(namespace, name)
                delay = result.requeue_after if result.requeue_after is not None else IDLE_RESYNC
            except Exception:  # one release's bug must not stop its loop or others
                log.exception("reconcile of %s/%s failed; retrying", namespace, name)
                delay = ERROR_REQUEUE
            await _sleep_until_poked(wake, stopped, delay)
    finally:
        wakeups.forget(namespace, name)
        controller.operator_metrics.forget(namespace, name)


def _has_action(annotations: Mapping[str, str]) -> bool:
    return any(key in annotations for key in ANNOTATION_OF.values())


@kopf.on.event(API_GROUP, API_VERSION, MODELRELEASE_PLURAL)
async def release_event(
    event: kopf.RawEvent, name: str, namespace: str | None, memo: kopf.Memo, **_: Any
) -> None:
    """Wake the loop for a spec change or a human action; ignore our own status writes."""
    assert namespace is not None
    obj: Mapping[str, Any] = event.get("object") or {}
    meta = obj.get("metadata") or {}
    wakeups: Wakeups = memo.wakeups
    generation_changed = wakeups.generation_changed(
        namespace, name, int(meta.get("generation") or 0)
    )
    if generation_changed or _has_action(meta.get("annotations") or {}):
        wakeups.poke(namespace, name)


@kopf.on.event("apps", "v1", "deployments", labels={MANAGED_BY_LABEL: MANAGED_BY_VALUE})
async def revision_event(
    labels: Mapping[str, str], namespace: str | None, memo: kopf.Memo, **_: Any
) -> None:
    """A revision's Deployment changed (became Available, lost pods): re-decide now."""
    release = labels.get(RELEASE_LABEL)
    if release and namespace:
        memo.wakeups.poke(namespace, release)


@kopf.on.event(API_GROUP, API_VERSION, ROLLOUTPOLICY_PLURAL)
async def policy_event(
    event: kopf.RawEvent, name: str, namespace: str | None, memo: kopf.Memo, **_: Any
) -> None:
    """A policy changed: its releases re-decide, and `kubectl get rp` shows its strategy."""
    assert namespace is not None
    memo.wakeups.poke_namespace(namespace)
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
