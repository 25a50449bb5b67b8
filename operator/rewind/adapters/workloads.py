"""Revision workloads: one Deployment + Service per revision, and revision snapshots.

The routes send users to each revision's own Service ``<release>-r<N>``; the umbrella
Service ``<release>`` (the in-cluster name) is built here but written by the router, which
points it at the revision serving users.

A revision is immutable. Its full ModelReleaseSpec is snapshotted once in an apps/v1
ControllerRevision ``<release>-r<N>`` (never overwritten), and its Deployment is always
built from that snapshot, never from the live spec, so rolling back to revision N
re-creates exactly the image, model digest and data version N ran with. Deployments and
Services are owned by the ModelRelease, so deleting it garbage-collects them; snapshots
are not: they keep the revision's history record and outlive the object, so a release
deleted and applied again restores its last known-good revision from them (see
:mod:`rewind.adapters.archive`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from kubernetes import client

from rewind.adapters import _kube
from rewind.adapters.archive import RELEASE_UID_ANNOTATION
from rewind.adapters.base import (
    DATA_VERSION_ANNOTATION,
    FIELD_MANAGER,
    IMAGE_ANNOTATION,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    MODEL_DIGEST_ANNOTATION,
    MODEL_VERSION_ANNOTATION,
    NAME_LABEL,
    NO_REVISION,
    RELEASE_LABEL,
    REVISION_LABEL,
    SPEC_HASH_ANNOTATION,
    AdapterError,
    OwnerRef,
    OwnershipConflictError,
    RevisionObservation,
    RouteProblem,
    RouteRefusedError,
    SnapshotConflictError,
    SnapshotCorruptError,
    SnapshotNotFoundError,
    release_labels,
    release_selector,
)
from rewind.api import (
    MODEL_SERVER_CONTAINER,
    SERVING_PORT_NAME,
    ModelReleaseSpec,
    RolloutPolicySpec,
    ServingProtocol,
    SidecarMode,
    model_server_index,
    spec_hash,
    workload_name,
)
from rewind.templates import istio_metric_names, query_variables, render_query

CONTAINER_NAME = MODEL_SERVER_CONTAINER
SNAPSHOTS_PATH = "/apis/apps/v1/namespaces/{namespace}/controllerrevisions"
#: The model server's port, by name in the container and as targetPort in the Services.
PORT_NAME = SERVING_PORT_NAME
VERSION_LABEL = "app.kubernetes.io/version"

log = logging.getLogger(__name__)

#: Istio's injector marks an injected pod with this annotation; istio-cni marks a pod whose
#: traffic ambient mode redirects to ztunnel with the other; the proxy container's name.
ISTIO_SIDECAR_STATUS = "sidecar.istio.io/status"
ISTIO_AMBIENT_REDIRECTION = "ambient.istio.io/redirection"
ISTIO_PROXY_CONTAINER = "istio-proxy"
ISTIO_INJECT_LABEL = "sidecar.istio.io/inject"
#: How long a namespace's labels are believed (they are read for the sidecar check only).
NAMESPACE_LABELS_TTL = 30.0


def _check_revision(revision: int) -> None:
    if isinstance(revision, bool) or not isinstance(revision, int) or revision < 1:
        raise ValueError(f"revision must be a positive int, got {revision!r}")


def revision_labels(release: str, revision: int) -> dict[str, str]:
    """Labels of a revision's objects; its own Service selects its pods by them."""
    return {**release_labels(release), REVISION_LABEL: str(revision)}


def pod_labels(release: str, revision: int) -> dict[str, str]:
    """Pod labels: revision labels plus the names Istio telemetry reports (app, version)."""
    return {
        **revision_labels(release, revision),
        NAME_LABEL: release,
        VERSION_LABEL: f"r{revision}",
    }


def revision_annotations(spec: ModelReleaseSpec, digest_of_spec: str) -> dict[str, str]:
    """Digests and versions: too long or too free-form for labels."""
    return {
        MODEL_DIGEST_ANNOTATION: spec.model.artifact_digest,
        MODEL_VERSION_ANNOTATION: spec.model.version,
        DATA_VERSION_ANNOTATION: spec.data.version if spec.data else "",
        IMAGE_ANNOTATION: spec.code.image,
        SPEC_HASH_ANNOTATION: digest_of_spec,
    }


def _metadata(
    name: str,
    namespace: str,
    owner: OwnerRef | None,
    labels: Mapping[str, str],
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Object metadata; ``owner`` None: no ownerReference (outlives the release)."""
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": dict(labels),
    }
    if owner is not None:
        meta["ownerReferences"] = [owner.to_k8s()]
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def container_env(release: str, revision: int, spec: ModelReleaseSpec) -> list[dict[str, str]]:
    """User env (literal values) followed by the injected provenance variables."""
    injected = {
        "REWIND_RELEASE": release,
        "REWIND_REVISION": str(revision),
        "MODEL_URI": spec.model.artifact_uri,
        "MODEL_DIGEST": spec.model.artifact_digest,
        "MODEL_VERSION": spec.model.version,
        "DATA_VERSION": spec.data.version if spec.data else "",
    }
    env = [{"name": e.name, "value": e.value} for e in spec.code.env if e.name not in injected]
    env.extend({"name": name, "value": value} for name, value in injected.items())
    return env


def _probe(path: str) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": PORT_NAME}, "periodSeconds": 5}


def _readiness_probe(spec: ModelReleaseSpec) -> dict[str, Any]:
    """The model server's default readiness probe, by protocol: an HTTP GET of
    readinessPath; the gRPC health service (grpc.health.v1) on port; for http2 a TCP
    connect, since the kubelet's HTTP probes speak HTTP/1.1 only."""
    serving = spec.serving
    if serving.protocol == ServingProtocol.GRPC:
        return {"grpc": {"port": serving.port}, "periodSeconds": 5}
    if serving.protocol == ServingProtocol.HTTP2:
        return {"tcpSocket": {"port": PORT_NAME}, "periodSeconds": 5}
    return _probe(serving.readiness_path)


def _model_server(release: str, revision: int, spec: ModelReleaseSpec) -> dict[str, Any]:
    """The model-server container from the short fields (code and serving)."""
    serving = spec.serving
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": spec.code.image,
        "env": container_env(release, revision, spec),
        "ports": [{"name": PORT_NAME, "containerPort": serving.port, "protocol": "TCP"}],
        "readinessProbe": _readiness_probe(spec),
    }
    if spec.code.args:
        container["args"] = list(spec.code.args)
    resources = {
        key: {name: str(quantity) for name, quantity in values.items()}
        for key, values in (
            ("requests", serving.resources.requests),
            ("limits", serving.resources.limits),
        )
        if values
    }
    if resources:
        container["resources"] = resources
    if serving.liveness_path:
        container["livenessProbe"] = _probe(serving.liveness_path)
    return container


def build_pod_template(
    release: str, revision: int, spec: ModelReleaseSpec, annotations: Mapping[str, str]
) -> dict[str, Any]:
    """The revision's pod template: the spec's template (if any) with Rewind's part in it.

    Without a template: one container from the short fields. With one: the template as
    written, whose model-server container (named model-server, else the first) runs
    code.image on serving.port (port ``http``), with the template's env followed by
    code.env and the revision's own variables (MODEL_URI, MODEL_DIGEST, ...: they describe
    the snapshot, so they win); code.args, serving.resources, the readiness probe of
    serving.protocol and livenessPath fill what its container leaves unset (admission
    refuses a field set in both places). Rewind's labels and annotations win over the
    template's (the Deployment selects its pods by them, Istio names them by them)."""
    short = _model_server(release, revision, spec)
    labels = pod_labels(release, revision)
    template = spec.serving.template
    if template is None:
        return {
            "metadata": {"labels": labels, "annotations": dict(annotations)},
            "spec": {"containers": [short]},
        }
    doc = template.model_dump(mode="json", by_alias=True, exclude_none=True)
    meta = doc.get("metadata") or {}
    pod: dict[str, Any] = doc["spec"]
    index = model_server_index(template)
    written: dict[str, Any] = pod["containers"][index]
    server = {**written, "name": written["name"], "image": spec.code.image}
    own = {e["name"] for e in short["env"]}
    server["env"] = [e for e in written.get("env") or [] if e["name"] not in own]
    server["env"] += short["env"]
    server["ports"] = [*short["ports"], *(written.get("ports") or [])]
    for key in ("args", "resources", "readinessProbe", "livenessProbe"):
        if key not in written and key in short:
            server[key] = short[key]
    pod["containers"][index] = server
    return {
        "metadata": {
            "labels": {**(meta.get("labels") or {}), **labels},
            "annotations": {**(meta.get("annotations") or {}), **annotations},
        },
        "spec": pod,
    }


def build_deployment(
    release: str,
    namespace: str,
    owner: OwnerRef,
    revision: int,
    spec: ModelReleaseSpec,
    replicas: int,
) -> dict[str, Any]:
    """The revision's Deployment ``<release>-r<N>``, built from its snapshot spec."""
    _check_revision(revision)
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
        raise ValueError(f"replicas must be an int >= 0, got {replicas!r}")
    annotations = revision_annotations(spec, spec_hash(spec))
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(
            workload_name(release, revision),
            namespace,
            owner,
            pod_labels(release, revision),
            annotations,
        ),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {RELEASE_LABEL: release, REVISION_LABEL: str(revision)}},
            "template": build_pod_template(release, revision, spec, annotations),
        },
    }


def _service(
    name: str,
    namespace: str,
    owner: OwnerRef,
    labels: Mapping[str, str],
    selector: Mapping[str, str],
    port: int,
    protocol: str,
) -> dict[str, Any]:
    # Istio reads the protocol from appProtocol (then from the port name's prefix): grpc
    # gets gRPC status codes in its telemetry and HTTP/2 to the pods.
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(name, namespace, owner, labels),
        "spec": {
            "selector": dict(selector),
            "ports": [
                {
                    "name": protocol,
                    "appProtocol": protocol,
                    "port": port,
                    # By name: each revision's pods may listen on a different port.
                    "targetPort": PORT_NAME,
                    "protocol": "TCP",
                }
            ],
        },
    }


def build_revision_service(
    release: str, namespace: str, owner: OwnerRef, revision: int, spec: ModelReleaseSpec
) -> dict[str, Any]:
    """Service ``<release>-r<N>``: reach one revision directly (smoke tests, debugging)."""
    _check_revision(revision)
    return _service(
        workload_name(release, revision),
        namespace,
        owner,
        revision_labels(release, revision),
        {RELEASE_LABEL: release, REVISION_LABEL: str(revision)},
        spec.traffic.port,
        spec.serving.protocol.value,
    )


def build_umbrella_service(
    release: str,
    namespace: str,
    owner: OwnerRef,
    port: int,
    revision: int | None,
    protocol: str = "http",
) -> dict[str, Any]:
    """Service ``<release>``, the in-cluster name: it selects the pods of ``revision`` only
    (None: no pod), so a caller that bypasses the routes (no sidecar, a NodePort, a route of
    its own to this name) reaches the revision serving users, never a candidate in preview
    or shadow. The router writes it with the routes (``primary_revision``); ``protocol``
    (``serving.protocol``: http, http2, grpc) is that revision's, as its own Service says."""
    if revision is not None:
        _check_revision(revision)
    value = NO_REVISION if revision is None else str(revision)
    return _service(
        release,
        namespace,
        owner,
        release_labels(release),
        {RELEASE_LABEL: release, REVISION_LABEL: value},
        port,
        protocol,
    )


def service_protocol(service: Mapping[str, Any] | None) -> str:
    """The appProtocol of a Service's first port (``http`` when unknown)."""
    ports = ((service or {}).get("spec") or {}).get("ports") or [{}]
    return str(ports[0].get("appProtocol") or "http")


def umbrella_revision(service: Mapping[str, Any], release: str) -> int | None:
    """The revision an umbrella Service selects; None when it selects none or more than one
    (a Service written before per-revision routing selected every revision)."""
    selector = (service.get("spec") or {}).get("selector") or {}
    if selector.get(RELEASE_LABEL) != release:
        return None
    try:
        revision = int(str(selector.get(REVISION_LABEL, "")))
    except ValueError:
        return None
    return revision if revision > 0 else None


def primary_of(weights: Mapping[int, int], primary_revision: int | None) -> int | None:
    """The revision the umbrella Service selects: ``primary_revision`` when given, else the
    revision with all the weight, else the lowest-numbered live one (None: no live one)."""
    if primary_revision is not None:
        return primary_revision
    live = sorted(r for r, w in weights.items() if w > 0)
    full = [r for r in live if weights[r] == 100]
    return full[0] if full else (live[0] if live else None)


def umbrella_target(
    release: str,
    weights: Mapping[int, int],
    primary_revision: int | None,
    fallback: bool,
    current: Mapping[str, Any] | None,
) -> int | None:
    """The revision a route write points the umbrella Service at: :func:`primary_of`, except
    that routes to a circuit breaker's fallback (``fallback``; no weights) with no
    ``primary_revision`` leave it on the revision ``current`` selects: a fallback changes no
    revision, and callers that bypass the routes keep reaching the stable."""
    if fallback and primary_revision is None:
        return umbrella_revision(current, release) if current is not None else None
    return primary_of(weights, primary_revision)


def umbrella_conflict(
    release: str, namespace: str, owner: OwnerRef, umbrella: Mapping[str, Any] | None
) -> list[RouteProblem]:
    """A Service of the release's name that belongs to someone else: Rewind will not move
    its selector (so it does not report one)."""
    if umbrella is None or owner.owns(umbrella):
        return []
    return [RouteProblem(
        "Conflict",
        f"Service {namespace}/{release} exists and is not owned by ModelRelease {owner.name}: "
        "Rewind will not point the release's in-cluster name at a revision; delete it or "
        "rename the release",
    )]


class UmbrellaService:
    """Reads the umbrella Service ``<release>`` and points it at one revision.

    Whichever router writes a release's routes (Istio or Gateway API) points it with them,
    and reads it back as ``RouteObservation.primary_revision``: a caller that bypasses the
    routes reaches the revision serving users whatever routes them."""

    def __init__(
        self,
        api_client: client.ApiClient,
        *,
        field_manager: str = FIELD_MANAGER,
        request_timeout: float = 30.0,
    ) -> None:
        self._core = client.CoreV1Api(api_client)
        self._field_manager = field_manager
        self._timeout = request_timeout

    async def get(self, name: str, namespace: str) -> dict[str, Any] | None:
        """The Service ``name`` (``<release>``, or a revision's) as the API server has it
        (None: there is none)."""
        return await _kube.get_or_none(
            self._core.read_namespaced_service, name, namespace, timeout=self._timeout
        )

    async def point(
        self,
        release: str,
        namespace: str,
        owner: OwnerRef,
        port: int,
        revision: int | None,
        current: Mapping[str, Any] | None,
    ) -> None:
        """Apply the umbrella Service selecting ``revision`` (None: no pod). ``current`` is
        the Service as read before the route write.

        Raises OwnershipConflictError when ``current`` is someone else's, and
        RouteRefusedError when the API server refuses the apply (4xx other than 408/429);
        other API failures propagate and are retried as any."""
        if current is not None and not owner.owns(current):
            raise OwnershipConflictError(
                f"Service {namespace}/{release} exists and is not owned by ModelRelease "
                f"{owner.name} (uid {owner.uid}); refusing to overwrite it"
            )
        protocol = "http"
        if revision is not None:
            # The selected revision's own Service exists before it is routed to (make
            # before break) and carries its serving.protocol.
            protocol = service_protocol(await self.get(workload_name(release, revision),
                                                       namespace))
        body = build_umbrella_service(release, namespace, owner, port, revision, protocol)
        try:
            await _kube.call(
                self._core.patch_namespaced_service,
                release,
                namespace,
                body,
                field_manager=self._field_manager,
                force=True,
                field_validation="Strict",
                _content_type=_kube.APPLY_PATCH,
                timeout=self._timeout,
            )
        except client.ApiException as err:
            if err.status is None or not 400 <= err.status < 500 or err.status in (408, 429):
                raise  # unreachable, overloaded: retried as any API failure
            raise RouteRefusedError(
                f"Service {namespace}/{release} was refused by the API server "
                f"(HTTP {err.status}): {_kube.api_message(err)}"
            ) from err


def build_snapshot(
    release: str, namespace: str, owner: OwnerRef, revision: int, spec: ModelReleaseSpec
) -> dict[str, Any]:
    """The ControllerRevision that stores revision N's full spec and its hash. It has no
    ownerReference (deleting the release must not collect it); the uid of the release
    that saved it is an annotation. Its history record is added once the status records
    the revision (:mod:`rewind.adapters.archive`)."""
    _check_revision(revision)
    return {
        "apiVersion": "apps/v1",
        "kind": "ControllerRevision",
        "metadata": _metadata(
            workload_name(release, revision),
            namespace,
            None,
            revision_labels(release, revision),
            {SPEC_HASH_ANNOTATION: spec_hash(spec), RELEASE_UID_ANNOTATION: owner.uid},
        ),
        "data": spec.model_dump(mode="json", by_alias=True),
        "revision": revision,
    }


def spec_from_snapshot(snapshot: Mapping[str, Any]) -> ModelReleaseSpec:
    """Parse a snapshot and check it still hashes to the hash recorded when it was saved.

    A rollback target that cannot be verified is not a rollback target.
    """
    meta = snapshot.get("metadata", {})
    name = meta.get("name", "?")
    recorded = (meta.get("annotations") or {}).get(SPEC_HASH_ANNOTATION)
    try:
        spec = ModelReleaseSpec.model_validate(snapshot.get("data") or {})
    except ValueError as exc:
        raise SnapshotCorruptError(f"snapshot {name} does not hold a valid spec: {exc}") from exc
    actual = spec_hash(spec)
    if recorded != actual:
        raise SnapshotCorruptError(
            f"snapshot {name} hashes to {actual} but was saved as {recorded}"
        )
    return spec


def is_snapshot_of(obj: Mapping[str, Any], release: str) -> bool:
    """A ControllerRevision Rewind saved for ``release`` (by its labels: snapshots carry no
    ownerReference, and belong to the namespace/name, whichever object saved them)."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return labels.get(MANAGED_BY_LABEL) == MANAGED_BY_VALUE and labels.get(RELEASE_LABEL) == release


def _condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), {})


def observe_deployment(deployment: Mapping[str, Any]) -> RevisionObservation | None:
    """What a revision Deployment says, or None when it is not a revision Deployment.

    Available means able to take traffic now: at least one replica wanted, the controller
    has seen the latest spec, the Available condition is True and every wanted replica is
    updated and ready. A revision scaled to zero is therefore not available.
    ``min_available`` is looser: the Deployment's own Available condition (its minimum of
    replicas answer, as maxUnavailable allows) with at least one pod ready; a revision that
    serves users with less than that is unavailable to them.
    """
    meta = deployment.get("metadata", {})
    try:
        revision = int((meta.get("labels") or {}).get(REVISION_LABEL, ""))
    except ValueError:
        return None
    spec = deployment.get("spec", {})
    status = deployment.get("status") or {}
    replicas = int(spec.get("replicas", 1))
    ready = int(status.get("readyReplicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    current = int(status.get("observedGeneration") or 0) >= int(meta.get("generation") or 0)
    available_condition = _condition(status, "Available").get("status") == "True"
    progressing = _condition(status, "Progressing")
    deadline_exceeded = (
        progressing.get("status") == "False"
        and progressing.get("reason") == "ProgressDeadlineExceeded"
    )
    available = (
        replicas > 0
        and current
        and available_condition
        and ready >= replicas
        and updated >= replicas
    )
    template = spec.get("template", {})
    annotations = (template.get("metadata") or {}).get("annotations") or {}
    containers = (template.get("spec") or {}).get("containers") or [{}]
    names = [c.get("name") for c in containers]
    server = containers[names.index(CONTAINER_NAME) if CONTAINER_NAME in names else 0]
    if deadline_exceeded:
        message = str(progressing.get("message", "progress deadline exceeded"))
    else:
        message = f"{ready}/{replicas} ready"
    return RevisionObservation(
        revision=revision,
        replicas=replicas,
        ready_replicas=ready,
        available=available,
        min_available=replicas > 0 and current and available_condition and ready > 0,
        available_replicas=int(status.get("availableReplicas") or 0),
        name=f"{meta.get('namespace', '')}/{meta.get('name', '')}",
        image=str(server.get("image", "")),
        model_digest=str(annotations.get(MODEL_DIGEST_ANNOTATION, "")),
        spec_hash=str(annotations.get(SPEC_HASH_ANNOTATION, "")),
        progress_deadline_exceeded=deadline_exceeded,
        message=message,
        owner_uids=tuple(str(ref.get("uid", "")) for ref in meta.get("ownerReferences") or []),
    )


class KubeWorkloads:
    """Creates, scales and observes revision workloads through the Kubernetes API."""

    def __init__(
        self,
        api_client: client.ApiClient,
        *,
        field_manager: str = FIELD_MANAGER,
        request_timeout: float = 30.0,
    ) -> None:
        self._apps = client.AppsV1Api(api_client)
        self._core = client.CoreV1Api(api_client)
        self._field_manager = field_manager
        self._timeout = request_timeout
        #: namespace -> (read at, labels; None: not readable)
        self._namespaces: dict[str, tuple[float, dict[str, str] | None]] = {}

    # -- snapshots -------------------------------------------------------------------

    async def save_snapshot(
        self, release: str, namespace: str, owner: OwnerRef, revision: int, spec: ModelReleaseSpec
    ) -> str:
        """Store revision N's spec once and return its hash.

        Saving the same spec again is a no-op; a different spec under the same revision
        raises SnapshotConflictError: a revision never changes after it was recorded.
        """
        body = build_snapshot(release, namespace, owner, revision, spec)
        digest: str = body["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
        try:
            # Canonical bytes: its history record is patched into its metadata later, and
            # the API server refuses any patch of a ControllerRevision whose data it would
            # re-serialize differently.
            await _kube.create_exact(
                self._apps.api_client,
                SNAPSHOTS_PATH,
                namespace,
                body,
                field_manager=self._field_manager,
                timeout=self._timeout,
            )
            return digest
        except client.ApiException as exc:
            if exc.status != 409:
                raise
        existing = await self._get_snapshot(release, namespace, revision)
        recorded = (existing.get("metadata", {}).get("annotations") or {}).get(SPEC_HASH_ANNOTATION)
        if recorded != digest:
            raise SnapshotConflictError(
                f"revision {revision} of {namespace}/{release} is recorded with spec hash "
                f"{recorded}, not {digest}; revisions are immutable"
            )
        if not is_snapshot_of(existing, release):
            raise OwnershipConflictError(
                f"ControllerRevision {workload_name(release, revision)} is not a Rewind "
                f"snapshot of ModelRelease {release} (labels {MANAGED_BY_LABEL}="
                f"{MANAGED_BY_VALUE}, {RELEASE_LABEL}={release})"
            )
        return digest

    async def _get_snapshot(self, release: str, namespace: str, revision: int) -> dict[str, Any]:
        name = workload_name(release, revision)
        snapshot = await _kube.get_or_none(
            self._apps.read_namespaced_controller_revision, name, namespace, timeout=self._timeout
        )
        if snapshot is None:
            raise SnapshotNotFoundError(
                f"ControllerRevision {namespace}/{name}, the verified snapshot of revision "
                f"{revision}, is gone: Rewind will not rebuild r{revision} from a spec it cannot "
                f"verify. Restore that ControllerRevision from a backup, or roll forward by "
                f"applying a new spec version"
            )
        return snapshot

    async def load_snapshot(self, release: str, namespace: str, revision: int) -> ModelReleaseSpec:
        """Revision N's spec, verified against its recorded hash."""
        return spec_from_snapshot(await self._get_snapshot(release, namespace, revision))

    # -- workloads -------------------------------------------------------------------

    async def _apply(self, body: dict[str, Any]) -> dict[str, Any]:
        meta = body["metadata"]
        method = (
            self._apps.patch_namespaced_deployment
            if body["kind"] == "Deployment"
            else self._core.patch_namespaced_service
        )
        return await _kube.call(
            method,
            meta["name"],
            meta["namespace"],
            body,
            field_manager=self._field_manager,
            force=True,
            field_validation="Strict",
            _content_type=_kube.APPLY_PATCH,
            timeout=self._timeout,
        )

    async def _check_owned(self, owner: OwnerRef, bodies: list[dict[str, Any]]) -> None:
        """Refuse to take over a same-named object someone else created."""

        async def read(body: dict[str, Any]) -> dict[str, Any] | None:
            meta = body["metadata"]
            method = (
                self._apps.read_namespaced_deployment
                if body["kind"] == "Deployment"
                else self._core.read_namespaced_service
            )
            return await _kube.get_or_none(
                method, meta["name"], meta["namespace"], timeout=self._timeout
            )

        existing = await asyncio.gather(*(read(body) for body in bodies))
        for body, current in zip(bodies, existing, strict=True):
            if current is not None and not owner.owns(current):
                refs = current.get("metadata", {}).get("ownerReferences") or []
                previous = any(
                    ref.get("kind") == owner.kind and ref.get("name") == owner.name
                    for ref in refs
                )
                why = (
                    "it belongs to a deleted ModelRelease of the same name, which the "
                    "garbage collector deletes shortly"
                    if previous
                    else "refusing to overwrite it"
                )
                raise OwnershipConflictError(
                    f"{body['kind']} {namespace_name(body)} exists and is not owned by "
                    f"ModelRelease {owner.name} (uid {owner.uid}); {why}"
                )

    async def ensure_revision(
        self, release: str, namespace: str, owner: OwnerRef, revision: int, replicas: int
    ) -> None:
        """Create or update revision N's Deployment and its own Service from its snapshot
        (the umbrella Service, the in-cluster name, is the router's: it moves with the
        routes).

        Idempotent (server-side apply of the same object is a no-op) and exact: after a
        scale to zero or a deletion it restores the same image and model digest.
        """
        spec = await self.load_snapshot(release, namespace, revision)
        bodies = [
            build_revision_service(release, namespace, owner, revision, spec),
            build_deployment(release, namespace, owner, revision, spec, replicas),
        ]
        await self._check_owned(owner, bodies)
        for body in bodies:
            await self._apply(body)

    async def scale_revision(
        self, release: str, namespace: str, revision: int, replicas: int
    ) -> None:
        """Set revision N's replicas through the scale subresource (nothing else changes).

        Scaling a revision that has no Deployment to zero is a no-op; to more than zero it
        is an error, because only ensure_revision knows how to build one.
        """
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
            raise ValueError(f"replicas must be an int >= 0, got {replicas!r}")
        name = workload_name(release, revision)
        try:
            await _kube.call(
                self._apps.patch_namespaced_deployment_scale,
                name,
                namespace,
                {"spec": {"replicas": replicas}},
                field_manager=self._field_manager,
                _content_type=_kube.MERGE_PATCH,
                timeout=self._timeout,
            )
        except client.ApiException as exc:
            if exc.status != 404:
                raise
            if replicas > 0:
                raise AdapterError(
                    f"cannot scale {namespace}/{name} to {replicas}: it does not exist"
                ) from exc

    async def read_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        """Any Deployment (serving.workloadRef), None when there is none."""
        return await _kube.get_or_none(
            self._apps.read_namespaced_deployment, name, namespace, timeout=self._timeout
        )

    async def dry_run_revision(
        self, release: str, namespace: str, owner: OwnerRef, revision: int, spec: ModelReleaseSpec
    ) -> str | None:
        """Ask the API server whether it would accept revision N's Deployment, without
        writing it (server-side apply, dryRun=All, strict field validation: a typo in the
        template is an unknown field), through its admission policies and webhooks too.
        Returns its refusal, None when it would accept it. Other errors (unreachable,
        forbidden to the operator) raise: they say nothing about the template."""
        body = build_deployment(release, namespace, owner, revision, spec, spec.serving.replicas)
        try:
            await _kube.call(
                self._apps.patch_namespaced_deployment,
                body["metadata"]["name"],
                namespace,
                body,
                field_manager=self._field_manager,
                force=True,
                field_validation="Strict",
                dry_run="All",
                _content_type=_kube.APPLY_PATCH,
                timeout=self._timeout,
            )
        except client.ApiException as exc:
            message = _kube.api_message(exc)
            admission = exc.status == 403 and "admission" in message.lower()
            # A field the Deployment schema does not have (a typo in the template) fails
            # server-side apply's typed conversion, before validation, as a 500.
            untyped = exc.status == 500 and "failed to create typed patch object" in message
            if exc.status in (400, 422) or admission or untyped:
                return f"the API server refuses the Deployment of r{revision}: {message}"
            raise
        return None

    async def namespace_labels(self, namespace: str) -> dict[str, str] | None:
        """The namespace's labels (Istio's injection and ambient labels), read at most every
        NAMESPACE_LABELS_TTL seconds; None when the operator may not read namespaces."""
        now = time.monotonic()
        cached = self._namespaces.get(namespace)
        if cached is not None and now - cached[0] < NAMESPACE_LABELS_TTL:
            return cached[1]
        labels: dict[str, str] | None
        try:
            ns = await _kube.get_or_none(
                self._core.read_namespace, namespace, timeout=self._timeout
            )
            labels = dict(((ns or {}).get("metadata") or {}).get("labels") or {})
        except client.ApiException as exc:
            if exc.status != 403:
                raise
            if cached is None or cached[1] is not None:
                log.warning("cannot read namespace %s (%s): the sidecar check only follows "
                            "spec.traffic.sidecar: Required", namespace, _kube.api_message(exc))
            labels = None
        self._namespaces[namespace] = (now, labels)
        return labels

    async def observe_mesh(
        self, release: str, namespace: str
    ) -> dict[int, tuple[int, tuple[str, ...]]]:
        """Per revision: its running pods, and the names of those without Istio's proxy."""
        listing = await _kube.call(
            self._core.list_namespaced_pod,
            namespace,
            label_selector=release_selector(release),
            timeout=self._timeout,
        )
        running: dict[int, int] = {}
        unmeshed: dict[int, list[str]] = {}
        for pod in listing.get("items") or []:
            meta = pod.get("metadata") or {}
            if meta.get("deletionTimestamp") or (pod.get("status") or {}).get("phase") != (
                "Running"
            ):
                continue
            try:
                revision = int((meta.get("labels") or {}).get(REVISION_LABEL, ""))
            except ValueError:
                continue
            running[revision] = running.get(revision, 0) + 1
            if not has_mesh_proxy(pod):
                unmeshed.setdefault(revision, []).append(str(meta.get("name", "")))
        return {
            revision: (count, tuple(sorted(unmeshed.get(revision, []))))
            for revision, count in running.items()
        }

    async def observe_revisions(
        self, release: str, namespace: str
    ) -> dict[int, RevisionObservation]:
        """Every revision Deployment of the release (by label), keyed by revision."""
        listing = await _kube.call(
            self._apps.list_namespaced_deployment,
            namespace,
            label_selector=release_selector(release),
            timeout=self._timeout,
        )
        observed: dict[int, RevisionObservation] = {}
        for item in listing.get("items") or []:
            observation = observe_deployment(item)
            if observation is not None:
                observed[observation.revision] = observation
        return observed


def has_mesh_proxy(pod: Mapping[str, Any]) -> bool:
    """The pod has Istio's proxy: injected (the injector's status annotation, or an
    istio-proxy container, also as a native sidecar among the init containers), or its
    traffic is redirected to ambient mode's ztunnel."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    if ISTIO_SIDECAR_STATUS in annotations:
        return True
    if annotations.get(ISTIO_AMBIENT_REDIRECTION) == "enabled":
        return True
    spec = pod.get("spec") or {}
    containers = [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]
    return any(c.get("name") == ISTIO_PROXY_CONTAINER for c in containers)


def istio_metric_reads(
    policy: RolloutPolicySpec, namespace: str, release: str
) -> list[tuple[str, list[str]]]:
    """Which of the policy's queries read Istio's standard metrics, and which: ("metric
    error-rate", ["istio_requests_total"]), then ("breaker query", [...]), in the policy's
    order; each query rendered for the release first (revisions 2 and 1: the names a query
    reads do not depend on them). A query that does not render is left out (admission
    refuses it; analysis reports it)."""
    queries = [
        (f"metric {m.name}", m.query, policy.analysis.interval) for m in policy.analysis.metrics
    ]
    if policy.breaker is not None:
        queries.append(("breaker query", policy.breaker.query, policy.breaker.interval))
    reads: list[tuple[str, list[str]]] = []
    for what, query, interval in queries:
        variables = query_variables(
            namespace=namespace, release=release, candidate=2, stable=1, interval=interval
        )
        try:
            names = istio_metric_names(render_query(query, variables))
        except ValueError:
            continue
        if names:
            reads.append((what, names))
    return reads


def proxy_expectation(
    spec: ModelReleaseSpec,
    namespace: str,
    namespace_labels: Mapping[str, str],
    policy: RolloutPolicySpec | None = None,
    release: str = "",
) -> str:
    """Why each revision's pods should have Istio's proxy ("" when they need not):
    ``spec.traffic.sidecar`` Required; Auto: the namespace labelled for injection or ambient
    mode, or the pod template labelled ``sidecar.istio.io/inject: "true"`` (``"false"``
    opts out), or the release routed by Istio (not Gateway API) with a ``policy`` (None:
    unknown) whose metrics or breaker query read Istio's standard metrics (``istio_*``),
    which only its proxy reports; Ignore: never. ``release`` is the ModelRelease's name."""
    mode = spec.traffic.sidecar
    if mode == SidecarMode.IGNORE:
        return ""
    if mode == SidecarMode.REQUIRED:
        return "spec.traffic.sidecar is Required"
    template = spec.serving.template
    pod_labels = (template.metadata.labels or {}) if template and template.metadata else {}
    inject = pod_labels.get(ISTIO_INJECT_LABEL)
    if inject == "false":
        return ""
    if inject == "true":
        return f"the pod template is labelled {ISTIO_INJECT_LABEL}=true"
    if namespace_labels.get("istio-injection") == "enabled":
        return f"namespace {namespace} is labelled istio-injection=enabled"
    if namespace_labels.get("istio-injection") != "disabled" and namespace_labels.get(
        "istio.io/rev"
    ):
        return f"namespace {namespace} is labelled istio.io/rev={namespace_labels['istio.io/rev']}"
    if namespace_labels.get("istio.io/dataplane-mode") == "ambient":
        return f"namespace {namespace} is in ambient mode (istio.io/dataplane-mode=ambient)"
    # Istio routing and Istio's metrics, without the labels that would inject the proxy: a
    # namespace nobody labelled, where every query would find no data and say nothing why.
    if policy is not None and spec.traffic.gateway_api is None:
        reads = istio_metric_reads(policy, namespace, release or "release")
        if reads:
            (what, names), others = reads[0], [f"the {w}" for w, _ in reads[1:]]
            also = ""
            if others:
                listed = ", ".join(others[:-1]) + (" and " if others[:-1] else "") + others[-1]
                also = f" (as do {listed})"
            return (
                f"the policy's {what} reads {' and '.join(names)}{also}, which only Istio's "
                "proxy reports"
            )
    return ""


def namespace_name(body: Mapping[str, Any]) -> str:
    """``namespace/name`` of an object, for messages."""
    meta = body.get("metadata", {})
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


if TYPE_CHECKING:
    from rewind.adapters.base import Workloads

    _conforms: type[Workloads] = KubeWorkloads
