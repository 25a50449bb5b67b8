"""Small interfaces between the Kopf handlers and the outside world.

One Protocol per concern (routing, metrics, workloads, notifications) so the handlers can be
tested against fakes and a new mesh or metric backend is one new file, not a refactor.
The shared naming and labelling rules live here so every adapter agrees on them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol

from rewind import API_GROUP, API_VERSION

if TYPE_CHECKING:
    from rewind.api import AnalysisSpec, Measurement, MetricSpec, ModelReleaseSpec, TrafficSpec

#: Server-side-apply field manager and Event reporting component of the operator.
FIELD_MANAGER = "rewind-operator"
COMPONENT = "rewind-operator"

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "rewind"
NAME_LABEL = "app.kubernetes.io/name"
RELEASE_LABEL = f"{API_GROUP}/release"
REVISION_LABEL = f"{API_GROUP}/revision"
# Digests and versions exceed the 63-character label limit, so they are annotations.
MODEL_DIGEST_ANNOTATION = f"{API_GROUP}/model-digest"
MODEL_VERSION_ANNOTATION = f"{API_GROUP}/model-version"
DATA_VERSION_ANNOTATION = f"{API_GROUP}/data-version"
IMAGE_ANNOTATION = f"{API_GROUP}/image"
SPEC_HASH_ANNOTATION = f"{API_GROUP}/spec-hash"


#: Kubernetes' default cluster domain; the operator's ``--cluster-domain`` changes it.
DEFAULT_CLUSTER_DOMAIN = "cluster.local"
#: The umbrella Service's selector value while no revision is promoted: it selects no pod.
NO_REVISION = "none"


def subset_name(revision: int) -> str:
    """Name a revision goes by in routes and messages: ``r<N>`` (the DestinationRule subset
    of routes written before per-revision hosts)."""
    return f"r{revision}"


def service_host(
    release: str, namespace: str, cluster_domain: str = DEFAULT_CLUSTER_DOMAIN
) -> str:
    """In-mesh FQDN of the umbrella Service ``<release>``: the in-cluster name callers use.
    It selects the pods of one revision only, the one serving users (see the router)."""
    return f"{release}.{namespace}.svc.{cluster_domain}"


def revision_host(
    release: str, namespace: str, revision: int, cluster_domain: str = DEFAULT_CLUSTER_DOMAIN
) -> str:
    """In-mesh FQDN of revision N's own Service ``<release>-r<N>``: where routes send users."""
    return f"{release}-r{revision}.{namespace}.svc.{cluster_domain}"


def release_labels(release: str) -> dict[str, str]:
    """Labels on every object Rewind creates for a release (selectable, and kstatus-friendly)."""
    return {MANAGED_BY_LABEL: MANAGED_BY_VALUE, RELEASE_LABEL: release}


def release_selector(release: str) -> str:
    """Label selector for every object Rewind created for one release."""
    return ",".join(f"{k}={v}" for k, v in release_labels(release).items())


@dataclass(frozen=True)
class OwnerRef:
    """The ModelRelease that owns an object, so deleting the release garbage-collects it."""

    name: str
    uid: str
    api_version: str = f"{API_GROUP}/{API_VERSION}"
    kind: str = "ModelRelease"

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> OwnerRef:
        """Build from a ModelRelease body as Kopf hands it to a handler."""
        meta = body["metadata"]
        return cls(
            name=str(meta["name"]),
            uid=str(meta["uid"]),
            api_version=str(body.get("apiVersion", f"{API_GROUP}/{API_VERSION}")),
            kind=str(body.get("kind", "ModelRelease")),
        )

    def to_k8s(self) -> dict[str, Any]:
        """The ``metadata.ownerReferences`` entry (controller: only one owner reconciles it)."""
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }

    def owns(self, obj: Mapping[str, Any]) -> bool:
        """True when ``obj`` lists this release (by uid) among its owners."""
        refs = obj.get("metadata", {}).get("ownerReferences") or []
        return any(ref.get("uid") == self.uid for ref in refs)


class AdapterError(Exception):
    """Base of the errors adapters raise for conditions a handler should report, not crash on."""


class OwnershipConflictError(AdapterError):
    """An object Rewind would write exists but belongs to someone else: never clobber it."""


class SnapshotConflictError(AdapterError):
    """A revision snapshot exists with a different spec hash: revisions are immutable."""


class SnapshotNotFoundError(AdapterError):
    """No snapshot for the revision: it cannot be (re)created exactly."""


class SnapshotCorruptError(AdapterError):
    """A snapshot's data no longer hashes to the hash recorded when it was saved."""


class RouteRefusedError(AdapterError):
    """The API server refused a route write (admission, validation): the message names the
    object and quotes the API server."""


#: The values of ``api.QueryErrorKind`` (a test keeps the two in step).
MetricErrorKind = Literal["unreachable", "timeout", "bad_query", "bad_result", "overloaded"]


class MetricQueryError(AdapterError):
    """A metric query failed; ``kind`` tells an outage from a broken query.

    ``unreachable``: no answer from the backend (connection refused, DNS, HTTP 5xx).
    ``timeout``: no answer in time. ``bad_query``: the backend rejected the query (PromQL
    does not parse or cannot execute). ``bad_result``: an answer that is not one number.
    ``overloaded``: never sent, because the operator had no free thread for it in time: the
    operator's fault, so the measurement is Inconclusive whatever ``queryError`` says.
    """

    def __init__(self, kind: MetricErrorKind, reason: str) -> None:
        super().__init__(f"{kind}: {reason}")
        self.kind: MetricErrorKind = kind
        self.reason = reason


@dataclass(frozen=True)
class Fallback:
    """Where a tripped circuit breaker sends every user instead of the model: a Service
    (``service``: its in-mesh host, ``port``: 0 for its only port) or a fixed answer from
    the mesh (``status``, ``body``: Istio's ``directResponse``)."""

    service: str = ""
    port: int = 0
    status: int = 0
    body: str = ""

    def describe(self) -> str:
        """``Service fallback.shop.svc.cluster.local:8080`` or ``direct response 503``."""
        if self.service:
            return f"Service {self.service}" + (f":{self.port}" if self.port else "")
        return f"direct response {self.status}" + (" with a body" if self.body else "")


class RouteState(NamedTuple):
    """What the mesh is told to do now: weights per revision, the mirror and the revision
    the header routes (A/B) go to, if any; or, with ``fallback``, no weights: every user
    goes to the circuit breaker's fallback."""

    weights: dict[int, int]
    mirror_revision: int | None
    mirror_percent: int
    header_revision: int | None = None
    #: The revision the in-cluster name's Service ``<release>`` selects: where callers that
    #: bypass the routes go (None: no revision, it selects no pod).
    primary_revision: int | None = None
    fallback: Fallback | None = None


RouteProblemKind = Literal["Refused", "Conflict", "Drift", "NotAccepted"]


@dataclass(frozen=True)
class RouteProblem:
    """Why the routes read back may not be what users get.

    ``Refused``: the API server refused the last write (admission, validation, ownership);
    ``Conflict``: another route object claims the same hosts on the same gateway (or an
    object of Rewind's name belongs to someone else), so the mesh picks one silently;
    ``Drift``: a route Rewind owns was edited outside Rewind (it is restored by the next
    write); ``NotAccepted``: the mesh or gateway has not accepted the route (yet), or it
    was written for an older ``spec.traffic`` and is being updated. ``message`` names the
    object and says why, for humans.
    """

    kind: RouteProblemKind
    message: str
    #: For ``Refused``: the routes whose write was refused (the problem concerns only a
    #: wish for those same routes; a different wish is written and judged afresh).
    wanted: RouteState | None = None
    #: Whether writing the routes again may resolve it; False for what only someone else
    #: can change (a gateway that has not accepted the route yet).
    fixed_by_write: bool = True


@dataclass(frozen=True)
class RouteObservation:
    """The routes in effect, read back from the router (Flagger's GetRoutes), plus what
    may make them untrue. ``weights`` holds only revisions with weight > 0."""

    exists: bool = False
    weights: Mapping[int, int] = field(default_factory=dict)
    mirror_revision: int | None = None
    mirror_percent: int = 0
    header_revision: int | None = None
    #: The revision the umbrella Service ``<release>`` selects (None: none, or no Service).
    primary_revision: int | None = None
    #: The circuit breaker's fallback every user is sent to (then ``weights`` is empty).
    fallback: Fallback | None = None
    problems: tuple[RouteProblem, ...] = ()
    #: What to call the routes in messages, e.g. "VirtualService risk/fraud".
    source: str = ""
    #: Housekeeping the router wants from the next write although the routes are right
    #: (e.g. a DestinationRule left by routes to subsets, kept make-before-break); "" if none.
    untidy: str = ""


@dataclass(frozen=True)
class RevisionObservation:
    """What the cluster says about one revision's Deployment."""

    revision: int
    replicas: int
    ready_replicas: int
    available: bool
    #: The Deployment's Available condition: at least the minimum of its replicas answer.
    min_available: bool = False
    available_replicas: int = 0
    name: str = ""  # namespace/name of the Deployment, for messages
    image: str = ""
    model_digest: str = ""
    spec_hash: str = ""
    progress_deadline_exceeded: bool = False
    message: str = ""
    #: uids of its ownerReferences (a ModelRelease's; another uid: a deleted object's).
    owner_uids: tuple[str, ...] = ()


def registry_tag(alias: str) -> str:
    """The MLflow model-version tag recording the latest move of ``alias`` to that version
    (MLflow keeps no history of an alias): ``rewind.dev/alias-production-moved``."""
    return f"rewind.dev/alias-{alias}-moved"


@dataclass(frozen=True)
class RegistryMove:
    """A move of an MLflow alias that the registry adapter made and read back."""

    from_version: str  # "" when the alias was unset
    to_version: str
    revision: int  # the release's revision the version is
    why: str  # e.g. "r2 promoted"
    at: datetime
    #: Why the tag recording it on the version could not be written ("": it was).
    tag_error: str = ""


@dataclass(frozen=True)
class RegistryObservation:
    """An MLflow alias as the registry adapter last read it (model registry sync).

    ``version`` is what the alias pointed at when last read ("" unset), at ``read_at``
    (None: never read); ``error`` why the latest read or write failed ("" it worked);
    ``moved`` the latest move this process made and read back."""

    tracking_uri: str  # the server, as resolved (the operator's default when unset)
    version: str = ""
    read_at: datetime | None = None
    error: str = ""
    moved: RegistryMove | None = None


class Router(Protocol):
    """Sends user traffic to revisions (weights) and copies of it to one (mirror)."""

    async def set_routes(
        self,
        release: str,
        namespace: str,
        owner: OwnerRef,
        traffic: TrafficSpec,
        weights: Mapping[int, int],
        mirror_revision: int | None = None,
        mirror_percent: int = 0,
        header_revision: int | None = None,
        primary_revision: int | None = None,
        fallback: Fallback | None = None,
    ) -> None:
        """Make the mesh route ``weights`` (summing to 100), the mirror and the header
        routes of ``traffic`` (to ``header_revision``; None: no header routes), in one
        write of the route object, to each revision's own Service ``<release>-r<N>``; and
        point the umbrella Service ``<release>`` (the in-cluster name, which callers that
        bypass the routes reach directly) at ``primary_revision`` only (None: the revision
        with all the weight, if one has it, else the lowest-numbered live one).

        With ``fallback`` (a tripped circuit breaker) every user of the routes goes there
        instead: ``weights`` is empty, no mirror, no header routes; the umbrella Service
        still selects ``primary_revision`` (the stable: a fallback changes no revision), which
        the caller must then pass. Raises RouteRefusedError where the router cannot express the
        fallback."""
        ...

    async def get_routes(self, release: str, namespace: str) -> RouteState | None:
        """Read back what the mesh is told; None when no routes exist yet."""
        ...

    async def observe_routes(
        self, release: str, namespace: str, owner: OwnerRef, traffic: TrafficSpec
    ) -> RouteObservation:
        """The routes in effect and any problem that makes them untrue (conflicting
        routes, edits outside Rewind, a route the mesh has not accepted)."""
        ...

    def forget(self, namespace: str, release: str) -> None:
        """Drop what is remembered of a release (it was deleted, or another replica runs it)."""
        ...


class MetricProvider(Protocol):
    """Answers PromQL-like queries with one number and turns it into a verdict."""

    async def query(self, query: str, timeout: float | None = None) -> float | None:
        """One number (possibly +-inf), None for no data; raises MetricQueryError."""
        ...

    async def measure(
        self,
        metric: MetricSpec,
        variables: Mapping[str, object],
        analysis: AnalysisSpec,
        now: datetime,
        revision: int | None = None,
    ) -> Measurement:
        """Render, query and judge one metric; never raises for query failures."""
        ...


class Workloads(Protocol):
    """Revision snapshots and the Deployments/Services that serve them."""

    async def save_snapshot(
        self, release: str, namespace: str, owner: OwnerRef, revision: int, spec: ModelReleaseSpec
    ) -> str:
        """Store the revision's full spec once; returns its hash."""
        ...

    async def load_snapshot(self, release: str, namespace: str, revision: int) -> ModelReleaseSpec:
        """Load and verify a revision's spec."""
        ...

    async def ensure_revision(
        self, release: str, namespace: str, owner: OwnerRef, revision: int, replicas: int
    ) -> None:
        """Create or update the revision's Deployment and Services from its snapshot."""
        ...

    async def scale_revision(
        self, release: str, namespace: str, revision: int, replicas: int
    ) -> None:
        """Change the revision's replica count only."""
        ...

    async def observe_revisions(
        self, release: str, namespace: str
    ) -> dict[int, RevisionObservation]:
        """Every revision Deployment of the release, by revision number."""
        ...

    async def read_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A Deployment by name (serving.workloadRef's), None when there is none."""
        ...

    async def dry_run_revision(
        self, release: str, namespace: str, owner: OwnerRef, revision: int, spec: ModelReleaseSpec
    ) -> str | None:
        """The API server's refusal of the revision's Deployment (a dry run), or None."""
        ...

    async def namespace_labels(self, namespace: str) -> dict[str, str] | None:
        """The namespace's labels; None when they cannot be read."""
        ...

    async def observe_mesh(
        self, release: str, namespace: str
    ) -> dict[int, tuple[int, tuple[str, ...]]]:
        """Per revision: running pods, and the names of those without Istio's proxy."""
        ...


EventType = Literal["Normal", "Warning"]


class Notifier(Protocol):
    """Tells humans what happened and why (Kubernetes Events, later chat hooks)."""

    async def post(
        self, owner: OwnerRef, namespace: str, type: EventType, reason: str, message: str
    ) -> None:
        """Record one event about the release; must not raise on delivery failure."""
        ...


#: Differences named in a drift message (a route read back unlike what Rewind writes);
#: more are counted.
MAX_DIFFERENCES = 6
#: Characters of a value shown in a drift message.
MAX_SHOWN = 80


def show_value(value: Any) -> str:
    """``value`` as compact JSON, cut to MAX_SHOWN characters (with an ellipsis)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 1] + "\u2026"


def describe_change(path: str, want: Mapping[str, Any], got: Mapping[str, Any], key: str) -> str:
    """How field ``key`` (at ``path``) of a routing object read back differs from what
    Rewind writes: added, removed, or another value (used by every router's drift check)."""
    if key not in want:
        return f"{path} added: {show_value(got[key])}"
    if key not in got:
        return f"{path} removed (Rewind writes {show_value(want[key])})"
    return f"{path} is {show_value(got[key])} (Rewind writes {show_value(want[key])})"
