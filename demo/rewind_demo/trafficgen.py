"""A stand-in for Istio's data plane: routes a request stream by the live VirtualService
(or the live HTTPRoute, standing in for a Gateway API gateway).

The sandbox has the Istio CRDs but no Envoy, so nothing would honour the weights and mirror
the operator writes. This generator reads the VirtualService (every ~1 s), sends requests to
127.0.0.1 model servers split by the route weights, mirrors ``mirrorPercentage`` of them to the
``mirror`` destination (fire-and-forget, never the user's answer), and reports each request,
mirrored ones included, as Istio's standard metrics (``istio_requests_total``,
``istio_request_duration_milliseconds``), so policies run the same PromQL as on a real mesh:
``reporter="source"`` for every request (the caller's sidecar, which also sees connection
failures and timeouts), ``reporter="destination"`` for those the model server answered (its
own sidecar).

On Gateway API the same generator follows the release's HTTPRoute instead: the weights of
the catch-all rule's ``backendRefs`` and its ``RequestMirror`` filter (``percent`` or
``fraction``). It then also plays the gateway controller the sandbox lacks: it accepts each
generation of the route it follows (``status.parents``, ``Accepted`` and ``ResolvedRefs``,
controller ``rewind.dev/demo-trafficgen``), as a gateway that routes it would.

The VirtualService reader and the subset -> backend mapping are plain callables/mappings, so
unit tests feed dicts and the demo plugs in the Kubernetes client.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import sys
import threading
import time
from collections import Counter as CountMap
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import FrameType
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from rewind_demo._http import LOOPBACK, BackgroundServer, request, split_loopback_url

ISTIO_GROUP = "networking.istio.io"
ISTIO_VERSION = "v1"
GATEWAY_GROUP = "gateway.networking.k8s.io"
GATEWAY_VERSION = "v1"
#: The controllerName this stand-in writes in the status of HTTPRoutes it routes.
GATEWAY_CONTROLLER = "rewind.dev/demo-trafficgen"
REVISION_LABEL = "rewind.dev/revision"

#: Envoy's default histogram buckets, which Istio uses for request duration (milliseconds).
# fmt: off
ISTIO_DURATION_BUCKETS_MS: tuple[float, ...] = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
    300000, 600000, 1800000, 3600000,
)
# fmt: on
#: The labels of Istio's standard request metrics that this simulator fills in.
ISTIO_LABELS: tuple[str, ...] = (
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_app",
    "destination_workload",
    "destination_workload_namespace",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "request_protocol",
    "response_code",
    "response_flags",
    "connection_security_policy",
)
UNKNOWN = "unknown"

VirtualService = Mapping[str, Any]
RouteSource = Callable[[], VirtualService | None]
BackendSource = Callable[[], Mapping[str, "Backend"]]


@dataclass(frozen=True)
class Destination:
    """An Istio route destination: service host, optional subset and port."""

    host: str
    subset: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, obj: Mapping[str, Any]) -> Destination:
        """From a VirtualService ``destination``/``mirror`` object."""
        host = obj.get("host")
        if not isinstance(host, str) or not host:
            raise ValueError(f"destination without host: {obj!r}")
        subset = obj.get("subset") or None
        port_obj = obj.get("port") or {}
        number = port_obj.get("number") if isinstance(port_obj, Mapping) else None
        return cls(host, str(subset) if subset else None, int(number) if number else None)


@dataclass(frozen=True)
class WeightedRoute:
    """One ``route[]`` entry."""

    destination: Destination
    weight: int


@dataclass(frozen=True)
class MirrorPolicy:
    """A mirror destination and the percentage of requests copied to it."""

    destination: Destination
    percent: float


@dataclass(frozen=True)
class Plan:
    """Where one request goes: its primary destination (None = no route) and its mirrors."""

    primary: Destination | None
    mirrors: tuple[Destination, ...] = ()


@dataclass(frozen=True)
class RouteTable:
    """The routing-relevant part of a VirtualService's first http route."""

    routes: tuple[WeightedRoute, ...] = ()
    mirrors: tuple[MirrorPolicy, ...] = ()

    @property
    def total_weight(self) -> int:
        """Sum of the route weights (Istio requires 100; we only need > 0)."""
        return sum(r.weight for r in self.routes)

    def choose(self, rng: random.Random) -> Plan:
        """Pick a destination by weight and decide each mirror; one draw per route and mirror.

        Draws happen even when the outcome is certain, so a seed gives the same sequence of
        random numbers whatever the weights are.
        """
        u = rng.random()
        mirrored = tuple(m.destination for m in self.mirrors if rng.random() * 100.0 < m.percent)
        total = self.total_weight
        if total <= 0:
            return Plan(None, mirrored)
        point = u * total
        acc = 0
        for route in self.routes:
            acc += route.weight
            if route.weight > 0 and point < acc:
                return Plan(route.destination, mirrored)
        last = next(r for r in reversed(self.routes) if r.weight > 0)
        return Plan(last.destination, mirrored)


def _percent(obj: Any, default: float) -> float:
    """Istio's ``Percent`` message ({value: float}); absent means default."""
    if obj is None:
        return default
    value = obj.get("value", 0.0) if isinstance(obj, Mapping) else obj
    pct = float(value)
    if not 0.0 <= pct <= 100.0:
        raise ValueError(f"mirror percentage must be in [0, 100], got {pct}")
    return pct


def parse_virtual_service(vs: VirtualService, host: str | None = None) -> RouteTable:
    """Extract weights and mirrors from the first route of a VirtualService dict that has
    no ``match``: the generated requests carry no header a match could select (Rewind's
    header routes, for A/B testing, come first), so in Istio that route answers them.

    Follows Istio's defaults: a single route without weight gets 100, a ``mirror`` without
    ``mirrorPercentage`` mirrors 100%. The newer ``mirrors[]`` list is honoured too.
    """
    spec = vs.get("spec") or {}
    if host is not None and host not in (spec.get("hosts") or []):
        raise ValueError(f"VirtualService does not serve host {host!r}")
    http = spec.get("http") or []
    if not http:
        return RouteTable()
    rule = next((r for r in http if not r.get("match")), None)
    if rule is None:
        return RouteTable()
    raw_routes = rule.get("route") or []
    routes: list[WeightedRoute] = []
    for raw in raw_routes:
        weight = raw.get("weight")
        if weight is None:
            weight = 100 if len(raw_routes) == 1 else 0
        if int(weight) < 0:
            raise ValueError(f"negative route weight: {raw!r}")
        routes.append(WeightedRoute(Destination.parse(raw.get("destination") or {}), int(weight)))
    mirrors: list[MirrorPolicy] = []
    if rule.get("mirror"):
        mirrors.append(
            MirrorPolicy(
                Destination.parse(rule["mirror"]), _percent(rule.get("mirrorPercentage"), 100.0)
            )
        )
    for raw in rule.get("mirrors") or []:
        mirrors.append(
            MirrorPolicy(
                Destination.parse(raw.get("destination") or {}),
                _percent(raw.get("percentage"), 100.0),
            )
        )
    return RouteTable(tuple(routes), tuple(mirrors))


def _backend_destination(ref: Mapping[str, Any]) -> Destination:
    """A Gateway API backendRef as a destination: the Service (or pool) name as the host,
    ``r<N>`` as the subset when it is a revision's (``<release>-r<N>``)."""
    name = ref.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"backendRef without name: {ref!r}")
    n = revision_number(name) if re.search(r"-r\d+$", name) else None
    port = ref.get("port")
    return Destination(name, f"r{n}" if n is not None else None, int(port) if port else None)


def _is_catch_all(match: Any) -> bool:
    if not isinstance(match, Mapping):
        return False
    path = match.get("path") or {}
    return (path.get("type", "PathPrefix") == "PathPrefix" and path.get("value", "/") == "/"
            and not match.get("headers") and not match.get("queryParams")
            and not match.get("method"))


def parse_http_route(route: Mapping[str, Any], host: str | None = None) -> RouteTable:
    """Extract weights and mirrors from the HTTPRoute rule that answers the generated
    requests (no header: the first rule with a catch-all match, or with none).

    Follows Gateway API's defaults: a backendRef without weight gets 1 (weights are
    proportional), a ``RequestMirror`` without ``percent`` or ``fraction`` mirrors 100%.
    """
    spec = route.get("spec") or {}
    names = spec.get("hostnames") or []
    if host is not None and names and host not in names:
        raise ValueError(f"HTTPRoute does not serve host {host!r}")
    rule = next(
        (r for r in spec.get("rules") or [] if isinstance(r, Mapping)
         and (not r.get("matches") or any(_is_catch_all(m) for m in r["matches"]))),
        None,
    )
    if rule is None:
        return RouteTable()
    routes: list[WeightedRoute] = []
    for ref in rule.get("backendRefs") or []:
        weight = int(ref.get("weight", 1))
        if weight < 0:
            raise ValueError(f"negative backendRef weight: {ref!r}")
        routes.append(WeightedRoute(_backend_destination(ref), weight))
    mirrors: list[MirrorPolicy] = []
    for f in rule.get("filters") or []:
        if f.get("type") != "RequestMirror":
            continue
        mirror = f.get("requestMirror") or {}
        if "percent" in mirror:
            percent = float(mirror["percent"])
        elif "fraction" in mirror:
            fraction = mirror["fraction"] or {}
            percent = 100.0 * int(fraction.get("numerator", 0)) / (
                int(fraction.get("denominator", 100)) or 100)
        else:
            percent = 100.0
        mirrors.append(MirrorPolicy(_backend_destination(mirror.get("backendRef") or {}),
                                    _percent(percent, 100.0)))
    return RouteTable(tuple(routes), tuple(mirrors))


def parse_routes(obj: Mapping[str, Any], host: str | None = None) -> RouteTable:
    """A VirtualService or an HTTPRoute, by its kind."""
    if obj.get("kind") == "HTTPRoute":
        return parse_http_route(obj, host)
    return parse_virtual_service(obj, host)


def accept_http_route(api: Any, route: Mapping[str, Any],
                      controller: str = GATEWAY_CONTROLLER) -> bool:
    """Write ``status.parents`` as a gateway controller that routes ``route`` would:
    ``Accepted`` and ``ResolvedRefs`` true for its current generation, for each parentRef.
    Returns False when the status already says so (nothing written)."""
    meta = route.get("metadata") or {}
    generation = int(meta.get("generation") or 0)
    refs = (route.get("spec") or {}).get("parentRefs") or []
    current = [p for p in (route.get("status") or {}).get("parents") or []
               if p.get("controllerName") == controller]
    if len(current) == len(refs) and all(
        c.get("observedGeneration") == generation and c.get("status") == "True"
        for p in current for c in p.get("conditions") or []
    ):
        return False
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    conditions = [
        {"type": kind, "status": "True", "reason": kind, "observedGeneration": generation,
         "lastTransitionTime": now,
         "message": "routed by the demo's traffic generator (a stand-in for a gateway)"}
        for kind in ("Accepted", "ResolvedRefs")
    ]
    others = [p for p in (route.get("status") or {}).get("parents") or []
              if p.get("controllerName") != controller]
    parents = others + [{"parentRef": ref, "controllerName": controller,
                         "conditions": conditions} for ref in refs]
    api.patch_namespaced_custom_object_status(
        GATEWAY_GROUP, GATEWAY_VERSION, meta.get("namespace"), "httproutes", meta.get("name"),
        {"status": {"parents": parents}},
    )
    return True


@dataclass(frozen=True)
class Backend:
    """A model-server address and the Istio destination labels of the revision behind it."""

    url: str
    workload: str
    namespace: str = "default"
    service: str | None = None
    app: str = UNKNOWN
    version: str = UNKNOWN

    def __post_init__(self) -> None:
        split_loopback_url(self.url)  # refuse anything but http://127.0.0.1:PORT
        if not self.workload:
            raise ValueError("backend workload must not be empty")

    @property
    def service_name(self) -> str:
        """Service name label: the revision's own Service, named like its Deployment."""
        return self.service or self.workload

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], namespace: str = "default") -> Backend:
        """From ``{"url", "workload", "namespace"?, "service"?, "app"?, "version"?}``."""
        return cls(
            url=str(obj["url"]),
            workload=str(obj["workload"]),
            namespace=str(obj.get("namespace") or namespace),
            service=obj.get("service"),
            app=str(obj.get("app") or UNKNOWN),
            version=str(obj.get("version") or UNKNOWN),
        )


_REVISION_RE = re.compile(r"^(?:.*-)?r?(\d+)$")


def revision_number(value: str) -> int | None:
    """Revision number from a label or subset value: ``3``, ``r3`` or ``fraud-r3``."""
    m = _REVISION_RE.match(value.strip())
    return int(m.group(1)) if m else None


def backends_from_destination_rule(
    dr: Mapping[str, Any],
    *,
    release: str,
    namespace: str,
    urls: Mapping[str, str],
) -> dict[str, Backend]:
    """Map each DestinationRule subset to a Backend.

    The subset's ``rewind.dev/revision`` label (else its name) gives the revision N, the
    workload is ``<release>-r<N>`` and ``urls`` maps workload names to model-server URLs.
    Subsets without a URL are left out (requests to them count as 503 ``UH``).
    """
    out: dict[str, Backend] = {}
    for subset in (dr.get("spec") or {}).get("subsets") or []:
        name = str(subset.get("name") or "")
        labels = subset.get("labels") or {}
        n = revision_number(str(labels.get(REVISION_LABEL, ""))) or revision_number(name)
        if not name or n is None:
            continue
        workload = f"{release}-r{n}"
        if workload not in urls:
            continue
        version = labels.get("version") or labels.get("app.kubernetes.io/version") or UNKNOWN
        out[name] = Backend(
            url=urls[workload],
            workload=workload,
            namespace=namespace,
            app=release,
            version=str(version),
        )
    return out


def static_route_source(vs: VirtualService | None) -> RouteSource:
    """A route source that always returns the same VirtualService (tests)."""
    return lambda: vs


def file_route_source(path: str | Path) -> RouteSource:
    """A route source re-reading a VirtualService JSON file on each poll (manual runs)."""
    p = Path(path)

    def read() -> VirtualService | None:
        if not p.exists():
            return None
        obj = json.loads(p.read_text())
        if not isinstance(obj, dict):
            raise ValueError(f"{p}: not a JSON object")
        return obj

    return read


def kube_route_source(
    namespace: str,
    *,
    host: str | None = None,
    name: str | None = None,
    api: Any = None,
    request_timeout: float = 5.0,
    kind: str = "VirtualService",
    accept: bool = True,
) -> RouteSource:
    """A route source reading the live VirtualService (or, with ``kind="HTTPRoute"``, the
    live HTTPRoute) through CustomObjectsApi.

    By ``name``, or else the first object (by name) whose ``spec.hosts`` (``hostnames``)
    has ``host``. ``api`` defaults to ``kubernetes.client.CustomObjectsApi()`` (config must
    be loaded); pass a fake with the same methods in tests. A missing object yields None.
    An HTTPRoute read is accepted in its status (see :func:`accept_http_route`) unless
    ``accept`` is False.
    """
    if kind not in ("VirtualService", "HTTPRoute"):
        raise ValueError(f"kind must be VirtualService or HTTPRoute, got {kind!r}")
    group, version, plural, hosts_key = (
        (ISTIO_GROUP, ISTIO_VERSION, "virtualservices", "hosts") if kind == "VirtualService"
        else (GATEWAY_GROUP, GATEWAY_VERSION, "httproutes", "hostnames"))
    if (host is None) == (name is None):
        raise ValueError("give exactly one of host or name")
    if api is None:
        from kubernetes import client

        api = client.CustomObjectsApi()

    def found(obj: Mapping[str, Any]) -> VirtualService:
        out = {"kind": kind, **dict(obj)}
        if kind == "HTTPRoute" and accept:
            accept_http_route(api, out)
        return out

    def read() -> VirtualService | None:
        if name is not None:
            try:
                obj = api.get_namespaced_custom_object(
                    group,
                    version,
                    namespace,
                    plural,
                    name,
                    _request_timeout=request_timeout,
                )
            except Exception as exc:
                if getattr(exc, "status", None) == 404:
                    return None
                raise
            return found(obj)
        listing = api.list_namespaced_custom_object(
            group,
            version,
            namespace,
            plural,
            _request_timeout=request_timeout,
        )
        items = sorted(listing.get("items") or [], key=lambda o: o["metadata"]["name"])
        for item in items:
            if host in ((item.get("spec") or {}).get(hosts_key) or []):
                return found(item)
        return None

    return read


def kube_backends_source(
    namespace: str,
    *,
    release: str,
    urls: Mapping[str, str] | Callable[[], Mapping[str, str]],
    name: str | None = None,
    service_host: str | None = None,
    api: Any = None,
    request_timeout: float = 5.0,
) -> BackendSource:
    """Backends from the live DestinationRule (by name, or by ``spec.host``), read per poll.

    ``urls`` maps workload names (``<release>-r<N>``) to model-server URLs; a callable is
    re-evaluated each poll, so model servers started later are picked up.
    """
    if (name is None) == (service_host is None):
        raise ValueError("give exactly one of name or service_host")
    if api is None:
        from kubernetes import client

        api = client.CustomObjectsApi()

    def read() -> Mapping[str, Backend]:
        current = urls() if callable(urls) else urls
        listing = api.list_namespaced_custom_object(
            ISTIO_GROUP,
            ISTIO_VERSION,
            namespace,
            "destinationrules",
            _request_timeout=request_timeout,
        )
        for item in sorted(listing.get("items") or [], key=lambda o: o["metadata"]["name"]):
            spec = item.get("spec") or {}
            if item["metadata"]["name"] == name or (
                name is None and spec.get("host") == service_host
            ):
                return backends_from_destination_rule(
                    item, release=release, namespace=namespace, urls=current
                )
        return {}

    return read


def backends_file_source(path: str | Path, namespace: str = "default") -> BackendSource:
    """Backends from a JSON file ``{subset: {url, workload, ...}}``, re-read when it changes.

    Lets the demo add a revision's model server while the generator runs (write the file
    atomically). A missing file means no backends yet.
    """
    p = Path(path)
    cache: dict[str, Any] = {"key": None, "value": {}}

    def read() -> Mapping[str, Backend]:
        try:
            st = p.stat()
        except FileNotFoundError:
            return {}
        key = (st.st_mtime_ns, st.st_size)
        if key != cache["key"]:
            raw = json.loads(p.read_text())
            cache["value"] = {str(k): Backend.from_json(v, namespace) for k, v in dict(raw).items()}
            cache["key"] = key
        value: Mapping[str, Backend] = cache["value"]
        return value

    return read


@dataclass(frozen=True)
class Response:
    """What one (primary or mirrored) request got back."""

    workload: str
    code: int
    flags: str
    duration_ms: float
    body: Any = None


@dataclass
class TrafficStats:
    """Thread-safe tallies: user-facing answers apart from mirrored ones."""

    user: CountMap[tuple[str, int]] = field(default_factory=CountMap)
    mirror: CountMap[tuple[str, int]] = field(default_factory=CountMap)
    unrouted: int = 0
    dropped: int = 0
    refresh_errors: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, kind: str, workload: str, code: int) -> None:
        """Count one finished request (kind is ``user`` or ``mirror``)."""
        with self._lock:
            (self.user if kind == "user" else self.mirror)[(workload, code)] += 1

    def bump(self, name: str) -> None:
        """Increment one of the scalar counters."""
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def snapshot(self) -> dict[str, Any]:
        """A JSON-friendly copy."""
        with self._lock:
            return {
                "user": {f"{w} {c}": n for (w, c), n in sorted(self.user.items())},
                "mirror": {f"{w} {c}": n for (w, c), n in sorted(self.mirror.items())},
                "userTotal": sum(self.user.values()),
                "mirrorTotal": sum(self.mirror.values()),
                "unrouted": self.unrouted,
                "dropped": self.dropped,
                "refreshErrors": self.refresh_errors,
            }

    def user_total(self, workload: str | None = None) -> int:
        """User-facing responses, optionally for one workload."""
        with self._lock:
            return sum(n for (w, _), n in self.user.items() if workload in (None, w))

    def mirror_total(self, workload: str | None = None) -> int:
        """Mirrored responses, optionally for one workload."""
        with self._lock:
            return sum(n for (w, _), n in self.mirror.items() if workload in (None, w))


class TrafficGenerator:
    """Sends a paced, bounded request stream routed by the current VirtualService."""

    def __init__(
        self,
        routes: RouteSource,
        backends: Mapping[str, Backend] | BackendSource,
        *,
        rate: float = 20.0,
        seed: int | None = None,
        poll_interval: float = 1.0,
        timeout: float = 5.0,
        max_inflight: int = 64,
        namespace: str = "default",
        source_workload: str = "trafficgen",
        path: str = "/predict",
        host: str | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        if poll_interval <= 0 or timeout <= 0 or max_inflight < 1:
            raise ValueError("poll_interval and timeout must be > 0, max_inflight >= 1")
        self._routes = routes
        if callable(backends):
            self._backends: BackendSource = backends
        else:
            fixed = dict(backends)
            self._backends = lambda: fixed
        self.rate = rate
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.namespace = namespace
        self.source_workload = source_workload
        self.path = path
        self.host = host
        self.stats = TrafficStats()
        self.table = RouteTable()
        self.current_backends: Mapping[str, Backend] = {}
        self._rng = random.Random(seed)
        self._seq = 0
        self._stop = threading.Event()
        self._slots = threading.BoundedSemaphore(max_inflight)
        self._max_inflight = max_inflight
        self._pool = ThreadPoolExecutor(max_workers=max_inflight, thread_name_prefix="trafficgen")
        self.registry = registry or CollectorRegistry()
        self._requests = Counter(
            "istio_requests",
            "Requests, as Istio's source proxy would report them.",
            ISTIO_LABELS,
            registry=self.registry,
        )
        self._duration = Histogram(
            "istio_request_duration_milliseconds",
            "Request duration in milliseconds.",
            ISTIO_LABELS,
            buckets=ISTIO_DURATION_BUCKETS_MS,
            registry=self.registry,
        )
        self._sent = Counter(
            "trafficgen_requests_sent",
            "Requests started by the generator.",
            ("kind",),
            registry=self.registry,
        )
        self._unrouted = Counter(
            "trafficgen_unrouted",
            "Requests not sent: no VirtualService route.",
            registry=self.registry,
        )
        self._dropped = Counter(
            "trafficgen_dropped",
            "Requests not sent: too many in flight.",
            registry=self.registry,
        )
        self._refresh_errors = Counter(
            "trafficgen_route_refresh_errors",
            "Failed VirtualService/backend reads.",
            registry=self.registry,
        )

    # -- routing --------------------------------------------------------------------------

    def refresh(self) -> RouteTable:
        """Re-read the VirtualService and backends; on error keep the last good ones."""
        try:
            vs = self._routes()
            self.table = RouteTable() if vs is None else parse_routes(vs, self.host)
            self.current_backends = dict(self._backends())
        except Exception as exc:
            self.stats.bump("refresh_errors")
            self._refresh_errors.inc()
            print(f"trafficgen: refresh failed: {exc!r}", file=sys.stderr)
        return self.table

    def plan(self) -> Plan:
        """Route the next request with the seeded generator (pure apart from the RNG)."""
        return self.table.choose(self._rng)

    def resolve(self, dest: Destination) -> Backend | None:
        """Backend for a destination: by subset, or by host when the route has no subset;
        a revision's own Service (``<release>-r<N>[.<ns>.svc...]``, where Rewind routes)
        is the backend of subset ``r<N>``, any other Service (a circuit breaker's
        fallback, ``<name>.<ns>.svc...``) the backend listed under its name."""
        found = self.current_backends.get(dest.subset or dest.host)
        if found is None and dest.subset is None:
            name = dest.host.split(".", 1)[0]
            revision = revision_number(name) if "-r" in name else None
            if revision is not None:
                found = self.current_backends.get(f"r{revision}")
            else:
                found = self.current_backends.get(name)
        return found

    # -- sending --------------------------------------------------------------------------

    def _labels(
        self, dest: Destination, backend: Backend | None, code: int, flags: str
    ) -> dict[str, str]:
        """Istio's standard labels for one request (unknown destinations as Istio shows them)."""
        if backend is None:
            workload, ns, svc, app, version = UNKNOWN, UNKNOWN, dest.host, UNKNOWN, UNKNOWN
            svc_ns = UNKNOWN
        else:
            workload, ns, svc = backend.workload, backend.namespace, backend.service_name
            app, version, svc_ns = backend.app, backend.version, backend.namespace
        return {
            "reporter": "source",
            "source_workload": self.source_workload,
            "source_workload_namespace": self.namespace,
            "source_app": self.source_workload,
            "destination_workload": workload,
            "destination_workload_namespace": ns,
            "destination_app": app,
            "destination_version": version,
            "destination_service": f"{svc}.{svc_ns}.svc.cluster.local" if backend else svc,
            "destination_service_name": svc,
            "destination_service_namespace": svc_ns,
            "request_protocol": "http",
            "response_code": str(code),
            "response_flags": flags,
            "connection_security_policy": UNKNOWN,
        }

    def send(self, dest: Destination, request_id: int, *, kind: str = "user") -> Response:
        """Send one request to dest synchronously and record it like Envoy would.

        Unresolvable subsets count as 503 ``UH`` (no healthy upstream), connection failures
        as 503 ``UF``, timeouts as 504 ``UT``.
        """
        backend = self.resolve(dest)
        started = time.monotonic()
        body: Any = None
        if backend is None:
            code, flags = 503, "UH"
        else:
            payload = json.dumps({"id": request_id, "mirror": kind == "mirror"}).encode()
            try:
                code, raw = request(
                    "POST", backend.url.rstrip("/") + self.path, payload, timeout=self.timeout
                )
                flags = "-"
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode(errors="replace")
            except TimeoutError:
                code, flags = 504, "UT"
            except OSError:
                code, flags = 503, "UF"
        duration_ms = (time.monotonic() - started) * 1000.0
        labels = self._labels(dest, backend, code, flags)
        self._requests.labels(**labels).inc()
        self._duration.labels(**labels).observe(duration_ms)
        if flags == "-":
            # The server's own sidecar reports what reached it (not UH/UF/UT failures).
            labels["reporter"] = "destination"
            self._requests.labels(**labels).inc()
            self._duration.labels(**labels).observe(duration_ms)
        workload = backend.workload if backend else UNKNOWN
        self.stats.add(kind, workload, code)
        return Response(workload, code, flags, duration_ms, body)

    def _submit(self, dest: Destination, request_id: int, kind: str) -> bool:
        """Run send() on the pool if a slot is free; count a drop otherwise."""
        if not self._slots.acquire(blocking=False):
            self.stats.bump("dropped")
            self._dropped.inc()
            return False
        self._sent.labels(kind).inc()

        def task() -> None:
            try:
                self.send(dest, request_id, kind=kind)
            finally:
                self._slots.release()

        self._pool.submit(task)
        return True

    def handle(self, plan: Plan | None = None) -> Response | None:
        """Serve one user request: mirrors fire-and-forget, the primary answers the caller.

        Returns None when there is no route (counted as unrouted).
        """
        plan = self.plan() if plan is None else plan
        self._seq += 1
        rid = self._seq
        for mirror in plan.mirrors:
            self._submit(mirror, rid, "mirror")
        if plan.primary is None:
            self.stats.bump("unrouted")
            self._unrouted.inc()
            return None
        self._sent.labels("user").inc()
        return self.send(plan.primary, rid, kind="user")

    def step(self) -> None:
        """Dispatch one planned request (primary and mirrors) to the pool without waiting."""
        plan = self.plan()
        self._seq += 1
        rid = self._seq
        for mirror in plan.mirrors:
            self._submit(mirror, rid, "mirror")
        if plan.primary is None:
            self.stats.bump("unrouted")
            self._unrouted.inc()
        else:
            self._submit(plan.primary, rid, "user")

    def run(self, duration: float, max_requests: int | None = None) -> dict[str, Any]:
        """Send at ``rate`` req/s for at most ``duration`` s (and max_requests), then drain.

        Always bounded: the loop ends at the deadline, on stop(), or after max_requests.
        """
        if not 0 < duration < float("inf"):
            raise ValueError("duration must be a finite number of seconds > 0")
        start = time.monotonic()
        deadline = start + duration
        next_poll = start
        sent = 0
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= deadline or (max_requests is not None and sent >= max_requests):
                break
            if now >= next_poll:
                self.refresh()
                next_poll = now + self.poll_interval
            next_send = start + sent / self.rate
            if now >= next_send:
                self.step()
                sent += 1
                continue
            self._stop.wait(min(next_send, next_poll, deadline) - now)
        self.drain(self.timeout + 1.0)
        return self.stats.snapshot()

    def drain(self, timeout: float) -> bool:
        """Wait (bounded) until no request is in flight; True if all finished."""
        deadline = time.monotonic() + timeout
        taken = 0
        try:
            while taken < self._max_inflight:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._slots.acquire(timeout=remaining):
                    return False
                taken += 1
            return True
        finally:
            for _ in range(taken):
                self._slots.release()

    def stop(self) -> None:
        """Ask run() to finish early (safe from signal handlers and other threads)."""
        self._stop.set()

    def close(self) -> None:
        """Stop and release the worker threads (waits for in-flight requests)."""
        self.stop()
        self._pool.shutdown(wait=True)

    # -- metrics --------------------------------------------------------------------------

    def metrics_text(self) -> bytes:
        """Prometheus text exposition of the Istio-style and generator metrics."""
        return generate_latest(self.registry)

    def serve_metrics(self, port: int = 0) -> BackgroundServer:
        """Serve /metrics (and /healthz) on 127.0.0.1:port in a background thread."""
        gen = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body, ctype, status = gen.metrics_text(), CONTENT_TYPE_LATEST, 200
                elif path == "/healthz":
                    body, ctype, status = b"ok\n", "text/plain", 200
                else:
                    body, ctype, status = b"not found\n", "text/plain", 404
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return BackgroundServer.start(Handler, port)


def parse_backend_flag(value: str, *, release: str | None, namespace: str) -> tuple[str, Backend]:
    """Parse ``SUBSET=[WORKLOAD@]URL``; without WORKLOAD it is ``<release>-r<N>`` from SUBSET."""
    subset, sep, rest = value.partition("=")
    if not sep or not subset or not rest:
        raise ValueError(f"--backend wants SUBSET=[WORKLOAD@]URL, got {value!r}")
    workload, at, url = rest.rpartition("@")
    if not at:
        n = revision_number(subset)
        if release is None or n is None:
            raise ValueError(f"{value!r}: give WORKLOAD@URL, or --release and a subset like r3")
        workload = f"{release}-r{n}"
    app = release or UNKNOWN
    return subset, Backend(url=url, workload=workload, namespace=namespace, app=app)


def build_parser() -> argparse.ArgumentParser:
    """CLI flags of ``python -m rewind_demo.trafficgen``."""
    p = argparse.ArgumentParser(
        prog="python -m rewind_demo.trafficgen",
        description="Stand-in for Istio's data plane: weighted + mirrored traffic to 127.0.0.1.",
    )
    p.add_argument("--namespace", default="default", help="namespace of the VirtualService")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--host", help="read the VirtualService serving this host (Kubernetes)")
    src.add_argument("--virtual-service", help="read this VirtualService by name (Kubernetes)")
    src.add_argument("--http-route", help="read this HTTPRoute by name (Kubernetes), and "
                     "accept it in its status as a gateway would")
    src.add_argument("--vs-file", help="read the VirtualService from this JSON file instead")
    p.add_argument(
        "--backend",
        action="append",
        default=[],
        help="SUBSET=[WORKLOAD@]URL, repeatable (URL must be http://127.0.0.1:PORT)",
    )
    p.add_argument(
        "--backends-file", help="JSON {subset: {url, workload, ...}}, re-read when it changes"
    )
    p.add_argument("--release", help="release name, to derive WORKLOAD from subsets r<N>")
    p.add_argument("--rate", type=float, default=20.0, help="requests per second")
    p.add_argument("--duration", type=float, default=600.0, help="stop after this many seconds")
    p.add_argument("--max-requests", type=int, help="stop after this many user requests")
    p.add_argument("--seed", type=int, help="routing seed")
    p.add_argument("--poll-interval", type=float, default=1.0, help="VirtualService poll period")
    p.add_argument("--timeout", type=float, default=5.0, help="per-request timeout, seconds")
    p.add_argument("--max-inflight", type=int, default=64, help="concurrent requests at most")
    p.add_argument("--metrics-port", type=int, default=0, help="port of /metrics; 0 = free port")
    p.add_argument("--path", default="/predict", help="request path on the model servers")
    return p


def _load_kube_config() -> None:
    """In-cluster config if there, else the kubeconfig (KUBECONFIG or ~/.kube/config)."""
    from kubernetes import config

    # Typed aliases: the kubernetes client ships no type hints.
    incluster: Callable[[], None] = config.load_incluster_config
    kubeconfig: Callable[[], None] = config.load_kube_config
    try:
        incluster()
    except config.ConfigException:
        kubeconfig()


def _merged_backends(
    static: Mapping[str, Backend], sources: Iterable[BackendSource]
) -> BackendSource:
    srcs = list(sources)

    def read() -> Mapping[str, Backend]:
        merged: dict[str, Backend] = {}
        for s in srcs:
            merged.update(s())
        merged.update(static)
        return merged

    return read


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; first stdout line is JSON with the metrics port, last is a summary."""
    args = build_parser().parse_args(argv)
    static = dict(
        parse_backend_flag(b, release=args.release, namespace=args.namespace) for b in args.backend
    )
    file_sources = (
        [backends_file_source(args.backends_file, args.namespace)] if args.backends_file else []
    )
    if args.vs_file:
        routes = file_route_source(args.vs_file)
    else:
        _load_kube_config()
        if args.http_route:
            routes = kube_route_source(args.namespace, name=args.http_route, kind="HTTPRoute")
        else:
            routes = kube_route_source(args.namespace, host=args.host,
                                       name=args.virtual_service)
    gen = TrafficGenerator(
        routes,
        _merged_backends(static, file_sources),
        rate=args.rate,
        seed=args.seed,
        poll_interval=args.poll_interval,
        timeout=args.timeout,
        max_inflight=args.max_inflight,
        namespace=args.namespace,
        path=args.path,
        host=args.host,
    )

    def on_signal(signum: int, frame: FrameType | None) -> None:
        gen.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = gen.serve_metrics(args.metrics_port)
    print(
        json.dumps(
            {
                "event": "listening",
                "host": LOOPBACK,
                "port": server.port,
                "url": server.url,
                "pid": os.getpid(),
            }
        ),
        flush=True,
    )
    try:
        summary = gen.run(args.duration, args.max_requests)
    finally:
        gen.close()
        server.stop()
    print(json.dumps({"event": "done", **summary}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
