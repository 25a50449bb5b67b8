"""Istio router: one VirtualService per ModelRelease, routing to per-revision Services.

The release owns its routes (ownerReferences), like Flagger, so nothing else has to be
told to ignore them, and weights plus mirror change in a single server-side apply of the
VirtualService (Argo Rollouts' whole-object updates fight GitOps tools; an apply with our
own field manager only claims the fields we set).

Topology: each revision N has its own Service ``<release>-r<N>`` selecting its pods only
(workloads adapter); the VirtualService ``<release>`` (hosts: the spec's plus the in-cluster
name ``<release>.<ns>.svc.<cluster domain>``) weights those Services' hosts. The umbrella
Service ``<release>``, the in-cluster name, selects the pods of one revision only, the one
serving users (``primary_revision``): a caller that bypasses the VirtualService (its own
route to the in-cluster name, no sidecar, a NodePort) reaches that revision, never a candidate
in preview or shadow, and never a share of a canary set by replica counts. So the only path
to a candidate is the VirtualService Rewind writes. No DestinationRule is needed: routes
written before this (subsets ``r<N>`` of the umbrella host) are read back, rewritten, and
their DestinationRule deleted at the next write once the new routes are read back
(make-before-break: every revision's Service exists before it is routed to).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from kubernetes import client

from rewind.adapters import _kube
from rewind.adapters.base import (
    DEFAULT_CLUSTER_DOMAIN,
    FIELD_MANAGER,
    MAX_DIFFERENCES,
    Fallback,
    OwnerRef,
    OwnershipConflictError,
    RouteObservation,
    RouteProblem,
    RouteRefusedError,
    RouteState,
    release_labels,
    revision_host,
    service_host,
)
from rewind.adapters.base import describe_change as _change
from rewind.adapters.base import show_value as _show
from rewind.adapters.route_index import (
    MESH,
    RouteClaim,
    VirtualServiceIndex,
    conflict_message,
    other_spec_managers,
    overlaps,
)
from rewind.adapters.workloads import (
    UmbrellaService,
    umbrella_conflict,
    umbrella_revision,
    umbrella_target,
)
from rewind.api import parse_duration

if TYPE_CHECKING:
    from rewind.api import TrafficSpec

ISTIO_GROUP = "networking.istio.io"
ISTIO_VERSION = "v1"
ROUTE_NAME = "rewind"
#: The route of the spec's header routes (A/B), first in the list so it wins.
HEADER_ROUTE_NAME = "rewind-headers"
#: The only route while a circuit breaker is tripped: every user to its fallback.
FALLBACK_ROUTE_NAME = "rewind-breaker"
MESH_GATEWAY = MESH

_SUBSET = re.compile(r"^r([1-9][0-9]*)$")


def validate_weights(weights: Mapping[int, int]) -> dict[int, int]:
    """Return the weights as a plain dict, or raise ValueError.

    Revisions are positive ints, weights ints in 0..100 summing to exactly 100: a split
    that does not add up would make Istio normalise it silently.
    """
    checked: dict[int, int] = {}
    for revision, weight in weights.items():
        if isinstance(revision, bool) or not isinstance(revision, int) or revision < 1:
            raise ValueError(f"revision must be a positive int, got {revision!r}")
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
            raise ValueError(
                f"weight of revision {revision} must be an int in 0..100, got {weight!r}"
            )
        checked[revision] = weight
    total = sum(checked.values())
    if total != 100:
        raise ValueError(f"weights must sum to 100, got {total} ({checked})")
    return checked


def _validate_mirror(mirror_revision: int | None, mirror_percent: int) -> int | None:
    """Return the revision to mirror to, or None when there is no mirror."""
    if isinstance(mirror_percent, bool) or not isinstance(mirror_percent, int):
        raise ValueError(f"mirror_percent must be an int, got {mirror_percent!r}")
    if not 0 <= mirror_percent <= 100:
        raise ValueError(f"mirror_percent must be in 0..100, got {mirror_percent}")
    if mirror_percent == 0:
        return None
    if mirror_revision is None:
        raise ValueError(f"mirror_percent is {mirror_percent} but no mirror_revision is given")
    if (
        isinstance(mirror_revision, bool)
        or not isinstance(mirror_revision, int)
        or mirror_revision < 1
    ):
        raise ValueError(f"mirror_revision must be a positive int, got {mirror_revision!r}")
    return mirror_revision


def _metadata(release_name: str, namespace: str, owner_ref: OwnerRef) -> dict[str, Any]:
    return {
        "name": release_name,
        "namespace": namespace,
        "labels": release_labels(release_name),
        "ownerReferences": [owner_ref.to_k8s()],
    }


def _destination(
    release_name: str, namespace: str, revision: int, cluster_domain: str
) -> dict[str, Any]:
    # No port: the revision's Service has exactly one, so the route never disagrees with it.
    return {"host": revision_host(release_name, namespace, revision, cluster_domain)}


def _istio_duration(duration: str) -> str:
    """Istio reads durations as protobuf JSON (seconds with an ``s``): ``1m30s`` -> ``90s``,
    ``1500ms`` -> ``1.5s``, ``1000h`` -> ``3600000s`` (never an exponent)."""
    millis = round(parse_duration(duration) * 1000)
    seconds, rest = divmod(millis, 1000)
    return f"{seconds}s" if not rest else f"{seconds}.{rest:03d}".rstrip("0") + "s"


def _route_options(traffic: TrafficSpec) -> dict[str, Any]:
    """Timeout and retries of spec.traffic, in Istio's HTTPRoute fields."""
    options: dict[str, Any] = {}
    if traffic.timeout is not None:
        options["timeout"] = _istio_duration(traffic.timeout)
    if traffic.retries is not None:
        retries: dict[str, Any] = {"attempts": traffic.retries.attempts}
        if traffic.retries.per_try_timeout is not None:
            retries["perTryTimeout"] = _istio_duration(traffic.retries.per_try_timeout)
        if traffic.retries.retry_on is not None:
            retries["retryOn"] = traffic.retries.retry_on
        options["retries"] = retries
    return options


def _header_matches(traffic: TrafficSpec) -> list[dict[str, Any]]:
    """One Istio match per header route (matches are ORed, headers within one ANDed)."""
    matches: list[dict[str, Any]] = []
    for group in traffic.header_routes:
        headers: dict[str, dict[str, str]] = {}
        for header in group.headers:
            kind, value = next(
                (k, v)
                for k, v in (("exact", header.exact), ("prefix", header.prefix),
                             ("regex", header.regex))
                if v is not None
            )
            headers[header.name] = {kind: value}
        matches.append({"name": group.name, "headers": headers})
    return matches


def route_bindings(
    release_name: str,
    namespace: str,
    traffic: TrafficSpec,
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN,
) -> tuple[list[str], list[str]]:
    """The VirtualService's ``hosts`` (the spec's plus the umbrella Service's in-mesh name)
    and ``gateways``: the spec's, plus ``mesh`` when ``traffic.meshRouting`` (in-mesh callers
    get the same split, without passing through the gateways); none when the spec names no
    gateway, which Istio reads as ``mesh`` alone."""
    hosts = list(
        dict.fromkeys([*traffic.hosts, service_host(release_name, namespace, cluster_domain)])
    )
    gateways = list(traffic.gateways or [])
    if gateways and traffic.mesh_routing:
        gateways = list(dict.fromkeys([*gateways, MESH_GATEWAY]))
    return hosts, gateways


def release_claim(
    release_name: str,
    namespace: str,
    traffic: TrafficSpec,
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN,
) -> RouteClaim:
    """The hosts and gateways the release's VirtualService routes, resolved as Istio does."""
    hosts, gateways = route_bindings(release_name, namespace, traffic, cluster_domain)
    return RouteClaim.wanted(release_name, namespace, hosts, gateways, cluster_domain)



def build_virtual_service(
    release_name: str,
    namespace: str,
    owner_ref: OwnerRef,
    traffic: TrafficSpec,
    weights: Mapping[int, int],
    mirror_revision: int | None = None,
    mirror_percent: int = 0,
    header_revision: int | None = None,
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN,
    fallback: Fallback | None = None,
) -> dict[str, Any]:
    """The VirtualService that splits ``traffic.hosts`` (and in-mesh calls) by ``weights``,
    sending each share to the revision's own Service.

    Only revisions with weight > 0 get a route entry. With gateways and
    ``traffic.meshRouting``, ``mesh`` is added so in-mesh callers get the same split as
    external ones. With ``header_revision`` and ``traffic.headerRoutes``, a first route
    sends the matching callers to that revision. Timeout and retries of ``traffic`` apply
    to both routes.
    With ``fallback`` (a tripped circuit breaker; ``weights`` empty) the one route
    ``rewind-breaker`` sends everyone there (see :func:`fallback_route`).
    """
    if fallback is not None:
        if weights or mirror_percent or header_revision is not None:
            raise ValueError("a fallback route carries no weights, mirror or header routes")
        hosts, gateways = route_bindings(release_name, namespace, traffic, cluster_domain)
        fallback_spec: dict[str, Any] = {"hosts": hosts}
        if gateways:
            fallback_spec["gateways"] = gateways
        fallback_spec["http"] = [fallback_route(fallback, traffic)]
        return {
            "apiVersion": f"{ISTIO_GROUP}/{ISTIO_VERSION}",
            "kind": "VirtualService",
            "metadata": _metadata(release_name, namespace, owner_ref),
            "spec": fallback_spec,
        }
    checked = validate_weights(weights)
    mirror = _validate_mirror(mirror_revision, mirror_percent)
    hosts, gateways = route_bindings(release_name, namespace, traffic, cluster_domain)
    options = _route_options(traffic)

    def to(revision: int) -> dict[str, Any]:
        return _destination(release_name, namespace, revision, cluster_domain)

    route: dict[str, Any] = {
        "name": ROUTE_NAME,
        "route": [
            {"destination": to(revision), "weight": weight}
            for revision, weight in sorted(checked.items())
            if weight > 0
        ],
        **options,
    }
    if mirror is not None:
        route["mirror"] = to(mirror)
        route["mirrorPercentage"] = {"value": float(mirror_percent)}
    spec: dict[str, Any] = {"hosts": hosts}
    if gateways:
        spec["gateways"] = gateways
    http: list[dict[str, Any]] = []
    if header_revision is not None and traffic.header_routes:
        http.append(
            {
                "name": HEADER_ROUTE_NAME,
                "match": _header_matches(traffic),
                "route": [{"destination": to(header_revision)}],
                **options,
            }
        )
    http.append(route)
    spec["http"] = http
    return {
        "apiVersion": f"{ISTIO_GROUP}/{ISTIO_VERSION}",
        "kind": "VirtualService",
        "metadata": _metadata(release_name, namespace, owner_ref),
        "spec": spec,
    }


def fallback_route(fallback: Fallback, traffic: TrafficSpec) -> dict[str, Any]:
    """The HTTPRoute of a tripped breaker: to the fallback Service (with the spec's timeout
    and retries), or Istio's ``directResponse`` (``status``, ``body.string``), which
    takes no ``route``, timeout or retries."""
    if fallback.service:
        destination: dict[str, Any] = {"host": fallback.service}
        if fallback.port:
            destination["port"] = {"number": fallback.port}
        return {
            "name": FALLBACK_ROUTE_NAME,
            "route": [{"destination": destination}],
            **_route_options(traffic),
        }
    direct: dict[str, Any] = {"status": fallback.status}
    if fallback.body:
        direct["body"] = {"string": fallback.body}
    return {"name": FALLBACK_ROUTE_NAME, "directResponse": direct}


def parse_fallback(route: Mapping[str, Any]) -> Fallback | None:
    """The fallback a ``rewind-breaker`` route sends users to (None: not one)."""
    if route.get("name") != FALLBACK_ROUTE_NAME:
        return None
    direct = route.get("directResponse")
    if isinstance(direct, Mapping):
        body = direct.get("body") or {}
        return Fallback(status=int(direct.get("status") or 0),
                        body=str(body.get("string", "")) if isinstance(body, Mapping) else "")
    targets = route.get("route") or []
    if len(targets) != 1:
        return None
    destination = targets[0].get("destination") or {}
    port = (destination.get("port") or {}).get("number") or 0
    return Fallback(service=str(destination.get("host", "")), port=int(port))


def _revision_of(destination: Mapping[str, Any], release: str | None) -> int | None:
    """The revision a destination sends to: the host of its own Service ``<release>-r<N>``
    (short or fully qualified), or a subset ``r<N>`` of routes written before per-revision
    Services (``release`` None: any ``<name>-r<N>``)."""
    match = _SUBSET.match(str(destination.get("subset", "")))
    if match:
        return int(match.group(1))
    if destination.get("subset"):
        return None
    name = str(destination.get("host", "")).split(".", 1)[0]
    prefix, sep, number = name.rpartition("-r")
    if not sep or (release is not None and prefix != release):
        return None
    return int(number) if number.isdigit() and not number.startswith("0") else None


def parse_routes(virtual_service: Mapping[str, Any], release: str | None = None) -> RouteState:
    """Read weights and mirror back from a VirtualService written by this module.

    Destinations that are not revisions of ``release`` are ignored; a lone destination
    without a weight gets 100 and a mirror without a percentage 100, as Istio does. The
    header route (A/B) names the revision its callers go to. Routes written before
    per-revision Services (subsets ``r<N>``) are read too.
    """
    http = virtual_service.get("spec", {}).get("http") or []
    route = next((r for r in http if r.get("name") == ROUTE_NAME), http[-1] if http else {})
    fallback = parse_fallback(route)
    if fallback is not None:
        return RouteState({}, None, 0, None, fallback=fallback)
    header_revision: int | None = None
    for candidate in http:
        if candidate.get("name") == HEADER_ROUTE_NAME:
            targets = candidate.get("route") or []
            if len(targets) == 1:
                header_revision = _revision_of(targets[0].get("destination") or {}, release)
    entries = route.get("route") or []
    weights: dict[int, int] = {}
    for entry in entries:
        revision = _revision_of(entry.get("destination") or {}, release)
        if revision is None:
            continue
        default = 100 if len(entries) == 1 else 0
        weights[revision] = weights.get(revision, 0) + int(entry.get("weight", default))
    mirror_revision: int | None = None
    mirror_percent = 0
    if route.get("mirror"):
        mirror_revision = _revision_of(route["mirror"], release)
        if mirror_revision is not None:
            percentage = (route.get("mirrorPercentage") or {}).get("value", 100.0)
            mirror_percent = round(float(percentage))
    return RouteState(weights, mirror_revision, mirror_percent, header_revision)


def uses_subsets(virtual_service: Mapping[str, Any] | None) -> bool:
    """Whether a VirtualService still routes to DestinationRule subsets (written before
    per-revision Services)."""
    if virtual_service is None:
        return False
    for route in (virtual_service.get("spec") or {}).get("http") or []:
        for entry in route.get("route") or []:
            if (entry.get("destination") or {}).get("subset"):
                return True
        if (route.get("mirror") or {}).get("subset"):
            return True
    return False


class IstioRouter:
    """Writes and reads the release's VirtualService and its umbrella Service.

    With an ``index`` (fed by a watch of VirtualServices), :meth:`observe_routes` also
    reports the other VirtualServices that route the release's hosts on its gateways.
    ``cluster_domain`` is the cluster's DNS domain (``--cluster-domain``): the in-cluster
    names Rewind routes and routes to end in ``svc.<cluster_domain>``."""

    def __init__(
        self,
        api_client: client.ApiClient,
        *,
        field_manager: str = FIELD_MANAGER,
        request_timeout: float = 30.0,
        index: VirtualServiceIndex | None = None,
        cluster_domain: str = DEFAULT_CLUSTER_DOMAIN,
    ) -> None:
        self._api = client.CustomObjectsApi(api_client)
        self._umbrella = UmbrellaService(
            api_client, field_manager=field_manager, request_timeout=request_timeout
        )
        self._field_manager = field_manager
        self._timeout = request_timeout
        self.index = index
        self.cluster_domain = cluster_domain
        #: Releases whose DestinationRule was found absent (or deleted): only an older
        #: Rewind wrote one, so once gone it stays gone, and is not asked for every round.
        self._no_legacy_rule: set[tuple[str, str]] = set()

    def forget(self, namespace: str, release: str) -> None:
        self._no_legacy_rule.discard((namespace, release))

    async def _legacy_rule(self, release: str, namespace: str) -> dict[str, Any] | None:
        """The DestinationRule ``<release>`` left by routes to subsets (Rewind before
        per-revision Services), or None; read until it is seen absent."""
        key = (namespace, release)
        if key in self._no_legacy_rule:
            return None
        rule = await self._get("destinationrules", release, namespace)
        if rule is None:
            self._no_legacy_rule.add(key)
        return rule

    async def _get(self, plural: str, name: str, namespace: str) -> dict[str, Any] | None:
        return await _kube.get_or_none(
            self._api.get_namespaced_custom_object,
            ISTIO_GROUP,
            ISTIO_VERSION,
            namespace,
            plural,
            name,
            timeout=self._timeout,
        )

    @staticmethod
    def _refused(body: Mapping[str, Any], err: client.ApiException) -> RouteRefusedError:
        meta = body["metadata"]
        return RouteRefusedError(
            f"{body['kind']} {meta['namespace']}/{meta['name']} was refused by the API "
            f"server (HTTP {err.status}): {_kube.api_message(err)}"
        )

    @staticmethod
    def _is_refusal(err: client.ApiException) -> bool:
        # Unreachable, overloaded: retried as any API failure; else the API server refused.
        return err.status is not None and 400 <= err.status < 500 and err.status not in (
            408, 429
        )

    async def _apply(self, plural: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return await self._apply_raw(plural, body)
        except client.ApiException as err:
            if not self._is_refusal(err):
                raise
            raise self._refused(body, err) from err

    async def _apply_raw(self, plural: str, body: dict[str, Any]) -> dict[str, Any]:
        meta = body["metadata"]
        return await _kube.call(
            self._api.patch_namespaced_custom_object,
            ISTIO_GROUP,
            ISTIO_VERSION,
            meta["namespace"],
            plural,
            meta["name"],
            body,
            field_manager=self._field_manager,
            force=True,
            field_validation="Strict",
            _content_type=_kube.APPLY_PATCH,
            timeout=self._timeout,
        )

    @staticmethod
    def _check_owner(obj: Mapping[str, Any] | None, owner: OwnerRef) -> None:
        if obj is not None and not owner.owns(obj):
            kind = obj.get("kind", "object")
            name = obj.get("metadata", {}).get("name")
            raise OwnershipConflictError(
                f"{kind} {name} exists and is not owned by ModelRelease {owner.name} "
                f"(uid {owner.uid}); refusing to overwrite it"
            )

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
        """Route ``weights``, the mirror and the header routes with one VirtualService
        apply (with ``fallback``: every user to the circuit breaker's fallback instead),
        then point the umbrella Service at ``primary_revision`` (see :func:`primary_of`;
        with ``fallback`` and no ``primary_revision``, it stays where it is: a fallback
        changes no revision).

        Make-before-break: the routes name each revision's own Service, which exists before
        the revision is routed to. A DestinationRule left by routes written before
        per-revision Services is deleted only by a later write, once the VirtualService
        read before it routes to no subset (the release is reconciled again at once after a
        write: observe_routes reports the leftover as untidy).
        """
        virtual_service = build_virtual_service(
            release, namespace, owner, traffic, weights, mirror_revision, mirror_percent,
            header_revision, self.cluster_domain, fallback,
        )
        current_vs, legacy_rule, current_umbrella = await asyncio.gather(
            self._get("virtualservices", release, namespace),
            self._legacy_rule(release, namespace),
            self._umbrella.get(release, namespace),
        )
        self._check_owner(current_vs, owner)
        self._check_owner(current_umbrella, owner)
        stored = await self._apply("virtualservices", virtual_service)
        await self._drop_foreign_fields("virtualservices", virtual_service, stored)
        await self._umbrella.point(
            release, namespace, owner, traffic.port,
            umbrella_target(
                release, weights, primary_revision, fallback is not None, current_umbrella
            ),
            current_umbrella,
        )
        if legacy_rule is not None and owner.owns(legacy_rule) and not uses_subsets(current_vs):
            await self._delete_legacy_rule(release, namespace)
            self._no_legacy_rule.add((namespace, release))

    async def _delete_legacy_rule(self, release: str, namespace: str) -> None:
        try:
            await _kube.call(
                self._api.delete_namespaced_custom_object,
                ISTIO_GROUP,
                ISTIO_VERSION,
                namespace,
                "destinationrules",
                release,
                timeout=self._timeout,
            )
        except client.ApiException as err:
            if err.status != 404:
                raise

    async def _drop_foreign_fields(
        self, plural: str, body: Mapping[str, Any], stored: Mapping[str, Any]
    ) -> None:
        """Remove top-level spec fields Rewind does not write (say ``exportTo`` or ``tcp``
        added by hand): an apply only replaces the fields it sets (``http``, ``hosts`` and
        ``gateways`` are atomic lists, so an edit inside them is already undone), and an
        edit outside Rewind is restored, not kept."""
        extra = sorted(set(stored.get("spec") or {}) - set(body["spec"]))
        if not extra:
            return
        meta = body["metadata"]
        try:
            await _kube.call(
                self._api.patch_namespaced_custom_object,
                ISTIO_GROUP,
                ISTIO_VERSION,
                meta["namespace"],
                plural,
                meta["name"],
                {"spec": dict.fromkeys(extra)},
                field_manager=self._field_manager,
                _content_type=_kube.MERGE_PATCH,
                timeout=self._timeout,
            )
        except client.ApiException as err:
            if not self._is_refusal(err):
                raise
            raise RouteRefusedError(
                f"{body['kind']} {meta['namespace']}/{meta['name']}: removing "
                f"{', '.join('spec.' + k for k in extra)} was refused by the API server "
                f"(HTTP {err.status}): {_kube.api_message(err)}"
            ) from err

    async def get_routes(self, release: str, namespace: str) -> RouteState | None:
        """What the VirtualService (and the umbrella Service) say now; None when there is
        no VirtualService."""
        virtual_service, umbrella = await asyncio.gather(
            self._get("virtualservices", release, namespace),
            self._umbrella.get(release, namespace),
        )
        if virtual_service is None:
            return None
        routes = parse_routes(virtual_service, release)
        primary = None if umbrella is None else umbrella_revision(umbrella, release)
        return routes._replace(primary_revision=primary)

    async def _conflicts(
        self, release: str, namespace: str, traffic: TrafficSpec
    ) -> list[RouteProblem]:
        """Other VirtualServices routing the release's hosts on its gateways: found in the
        index, then read back, because the watch may lag or have missed a deletion (a
        VirtualService the API server no longer has is dropped from the index)."""
        if self.index is None:
            return []
        mine = release_claim(release, namespace, traffic, self.cluster_domain)
        suspects = self.index.candidates(mine)
        if not suspects:
            return []
        current = await asyncio.gather(
            *(self._get("virtualservices", s.name, s.namespace) for s in suspects)
        )
        found = []
        for suspect, obj in zip(suspects, current, strict=True):
            if obj is None:
                self.index.discard(suspect.namespace, suspect.name, suspect.version)
                continue
            found += overlaps(mine, RouteClaim.of(obj, self.cluster_domain))
        return [RouteProblem("Conflict", conflict_message(found))] if found else []

    async def observe_routes(
        self, release: str, namespace: str, owner: OwnerRef, traffic: TrafficSpec
    ) -> RouteObservation:
        """The routes in effect: the VirtualService as the API server has it, checked
        against what Rewind would write for those same routes (anything else is an edit
        outside Rewind, or routes written for an older spec.traffic or by an older Rewind),
        and the revision the umbrella Service selects."""
        virtual_service, umbrella, legacy_rule, conflicts = await asyncio.gather(
            self._get("virtualservices", release, namespace),
            self._umbrella.get(release, namespace),
            self._legacy_rule(release, namespace),
            self._conflicts(release, namespace, traffic),
        )
        source = f"VirtualService {namespace}/{release}"
        umbrella_problems = umbrella_conflict(release, namespace, owner, umbrella)
        primary = (
            umbrella_revision(umbrella, release)
            if umbrella is not None and not umbrella_problems
            else None
        )
        if virtual_service is None:
            return RouteObservation(
                exists=False, primary_revision=primary,
                problems=(*umbrella_problems, *conflicts), source=source,
            )
        routes = parse_routes(virtual_service, release)
        problems = route_problems(
            release, namespace, owner, traffic, virtual_service, self.cluster_domain
        )
        problems += umbrella_problems + conflicts
        untidy = ""
        if legacy_rule is not None and owner.owns(legacy_rule):
            untidy = (
                f"DestinationRule {namespace}/{release} is left from routes to subsets; "
                "the routes now name each revision's Service"
            )
        return RouteObservation(
            exists=True,
            weights={r: w for r, w in routes.weights.items() if w > 0},
            mirror_revision=routes.mirror_revision if routes.mirror_percent else None,
            mirror_percent=routes.mirror_percent if routes.mirror_revision else 0,
            header_revision=routes.header_revision,
            primary_revision=primary,
            fallback=routes.fallback,
            problems=tuple(problems),
            source=source,
            untidy=untidy,
        )



def route_problems(
    release: str,
    namespace: str,
    owner: OwnerRef,
    traffic: TrafficSpec,
    virtual_service: Mapping[str, Any],
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN,
) -> list[RouteProblem]:
    """What makes a read-back VirtualService untrue (see :class:`RouteProblem`)."""
    name = f"{namespace}/{release}"
    if not owner.owns(virtual_service):
        return [RouteProblem(
            "Conflict",
            f"VirtualService {name} exists and is not owned by ModelRelease {owner.name}: "
            "Rewind will not overwrite it; delete it or rename the release",
        )]
    problems: list[RouteProblem] = []
    routes = parse_routes(virtual_service, release)
    try:
        expected = build_virtual_service(
            release, namespace, owner, traffic, routes.weights,
            routes.mirror_revision if routes.mirror_percent else None,
            routes.mirror_percent if routes.mirror_revision else 0,
            routes.header_revision, cluster_domain, routes.fallback,
        )["spec"]
    except ValueError as err:
        expected = None
        detail = str(err)
    else:
        detail = _spec_difference(expected, virtual_service.get("spec") or {})
    if expected is None or detail:
        others = other_spec_managers(virtual_service)
        if others or expected is None:
            by = f" by {', '.join(others)}" if others else ""
            problems.append(RouteProblem(
                "Drift",
                f"VirtualService {name} was edited outside Rewind{by} ({detail}); Rewind "
                "restores it: put route options in spec.traffic (timeout, retries, "
                "headerRoutes)",
            ))
        elif uses_subsets(virtual_service):
            problems.append(RouteProblem(
                "NotAccepted",
                f"VirtualService {name} routes to DestinationRule subsets, as Rewind wrote "
                "routes before per-revision Services; rewriting it to each revision's "
                "Service",
            ))
        else:
            problems.append(RouteProblem(
                "NotAccepted",
                f"VirtualService {name} was written for an earlier spec.traffic ({detail}); "
                "updating it",
            ))
    return problems


def _spec_difference(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> str:
    """Every spec field (top level, or in an http route) that differs from what Rewind
    writes, with the value found: empty when there is none. At most MAX_DIFFERENCES are
    named; the rest are counted."""
    changes: list[str] = []
    for key in sorted(set(expected) | set(actual)):
        if key != "http" and expected.get(key) != actual.get(key):
            changes.append(_change(f"spec.{key}", expected, actual, key))
    want, got = list(expected.get("http") or []), list(actual.get("http") or [])
    if len(want) != len(got):
        names = [str(r.get("name", "?")) if isinstance(r, Mapping) else "?" for r in got]
        changes.append(
            f"spec.http has {len(got)} routes ({', '.join(names)}), Rewind writes {len(want)}"
        )
    else:
        for index, (a, b) in enumerate(zip(want, got, strict=True)):
            if not isinstance(b, Mapping):
                changes.append(f"spec.http[{index}] is {_show(b)}")
                continue
            for key in sorted(set(a) | set(b)):
                if a.get(key) != b.get(key):
                    changes.append(_change(f"spec.http[{index}].{key}", a, b, key))
    if len(changes) > MAX_DIFFERENCES:
        changes[MAX_DIFFERENCES:] = [f"{len(changes) - MAX_DIFFERENCES} more"]
    return "; ".join(changes)

if TYPE_CHECKING:
    from rewind.adapters.base import Router

    _conforms: type[Router] = IstioRouter
