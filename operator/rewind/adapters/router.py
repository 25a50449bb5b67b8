"""Istio router: one VirtualService + one DestinationRule per ModelRelease.

The release owns both objects (ownerReferences), like Flagger, so nothing else has to be
told to ignore them, and weights plus mirror change in a single server-side apply of the
VirtualService (Argo Rollouts' whole-object updates fight GitOps tools; an apply with our
own field manager only claims the fields we set).

Topology: one umbrella Service ``<release>`` selects every revision's pods; the
DestinationRule splits it into subsets ``r<N>`` by the ``rewind.dev/revision`` label;
the VirtualService's route ``rewind`` weights those subsets.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from kubernetes import client

from rewind.adapters import _kube
from rewind.adapters.base import (
    FIELD_MANAGER,
    REVISION_LABEL,
    OwnerRef,
    OwnershipConflictError,
    RouteState,
    release_labels,
    service_host,
    subset_name,
)

if TYPE_CHECKING:
    from rewind.api import TrafficSpec

ISTIO_GROUP = "networking.istio.io"
ISTIO_VERSION = "v1"
ROUTE_NAME = "rewind"
MESH_GATEWAY = "mesh"

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


def _destination(release_name: str, namespace: str, revision: int) -> dict[str, Any]:
    # No port: the umbrella Service has exactly one, so the route never disagrees with it.
    return {"host": service_host(release_name, namespace), "subset": subset_name(revision)}


def build_virtual_service(
    release_name: str,
    namespace: str,
    owner_ref: OwnerRef,
    traffic: TrafficSpec,
    weights: Mapping[int, int],
    mirror_revision: int | None = None,
    mirror_percent: int = 0,
) -> dict[str, Any]:
    """The VirtualService that splits ``traffic.hosts`` (and in-mesh calls) by ``weights``.

    Only revisions with weight > 0 get a route entry. With gateways, ``mesh`` is added so
    in-mesh callers get the same split as external ones.
    """
    checked = validate_weights(weights)
    mirror = _validate_mirror(mirror_revision, mirror_percent)
    umbrella = service_host(release_name, namespace)
    hosts = list(dict.fromkeys([*traffic.hosts, umbrella]))
    route: dict[str, Any] = {
        "name": ROUTE_NAME,
        "route": [
            {"destination": _destination(release_name, namespace, revision), "weight": weight}
            for revision, weight in sorted(checked.items())
            if weight > 0
        ],
    }
    if mirror is not None:
        route["mirror"] = _destination(release_name, namespace, mirror)
        route["mirrorPercentage"] = {"value": float(mirror_percent)}
    spec: dict[str, Any] = {"hosts": hosts}
    gateways = list(traffic.gateways or [])
    if gateways:
        spec["gateways"] = list(dict.fromkeys([*gateways, MESH_GATEWAY]))
    spec["http"] = [route]
    return {
        "apiVersion": f"{ISTIO_GROUP}/{ISTIO_VERSION}",
        "kind": "VirtualService",
        "metadata": _metadata(release_name, namespace, owner_ref),
        "spec": spec,
    }


def build_destination_rule(
    release_name: str, namespace: str, owner_ref: OwnerRef, revisions: Iterable[int]
) -> dict[str, Any]:
    """The DestinationRule with one subset ``r<N>`` per revision, picked by pod label."""
    unique = sorted(set(revisions))
    for revision in unique:
        if isinstance(revision, bool) or not isinstance(revision, int) or revision < 1:
            raise ValueError(f"revision must be a positive int, got {revision!r}")
    return {
        "apiVersion": f"{ISTIO_GROUP}/{ISTIO_VERSION}",
        "kind": "DestinationRule",
        "metadata": _metadata(release_name, namespace, owner_ref),
        "spec": {
            "host": service_host(release_name, namespace),
            "subsets": [
                {"name": subset_name(revision), "labels": {REVISION_LABEL: str(revision)}}
                for revision in unique
            ],
        },
    }


def _revision_of(destination: Mapping[str, Any]) -> int | None:
    match = _SUBSET.match(str(destination.get("subset", "")))
    return int(match.group(1)) if match else None


def parse_routes(virtual_service: Mapping[str, Any]) -> RouteState:
    """Read weights and mirror back from a VirtualService written by this module.

    Destinations that are not ``r<N>`` subsets are ignored; a lone destination without a
    weight gets 100 and a mirror without a percentage 100, as Istio does.
    """
    http = virtual_service.get("spec", {}).get("http") or []
    route = next((r for r in http if r.get("name") == ROUTE_NAME), http[0] if http else {})
    entries = route.get("route") or []
    weights: dict[int, int] = {}
    for entry in entries:
        revision = _revision_of(entry.get("destination") or {})
        if revision is None:
            continue
        default = 100 if len(entries) == 1 else 0
        weights[revision] = weights.get(revision, 0) + int(entry.get("weight", default))
    mirror_revision: int | None = None
    mirror_percent = 0
    if route.get("mirror"):
        mirror_revision = _revision_of(route["mirror"])
        if mirror_revision is not None:
            percentage = (route.get("mirrorPercentage") or {}).get("value", 100.0)
            mirror_percent = round(float(percentage))
    return RouteState(weights, mirror_revision, mirror_percent)


class IstioRouter:
    """Writes and reads the release's VirtualService and DestinationRule."""

    def __init__(
        self,
        api_client: client.ApiClient,
        *,
        field_manager: str = FIELD_MANAGER,
        request_timeout: float = 30.0,
    ) -> None:
        self._api = client.CustomObjectsApi(api_client)
        self._field_manager = field_manager
        self._timeout = request_timeout

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

    async def _apply(self, plural: str, body: dict[str, Any]) -> dict[str, Any]:
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
    ) -> None:
        """Route ``weights`` and the mirror with one VirtualService apply.

        Make-before-break: the DestinationRule is applied first and keeps the subsets the
        current VirtualService still routes to, so no request hits an unknown subset
        (a 503) while Envoy catches up; subsets no longer used go at the next call.
        """
        virtual_service = build_virtual_service(
            release, namespace, owner, traffic, weights, mirror_revision, mirror_percent
        )
        current_vs = await self._get("virtualservices", release, namespace)
        self._check_owner(current_vs, owner)
        self._check_owner(await self._get("destinationrules", release, namespace), owner)
        revisions = set(weights)
        if mirror_percent > 0 and mirror_revision is not None:
            revisions.add(mirror_revision)
        if current_vs is not None:
            current = parse_routes(current_vs)
            revisions.update(r for r, w in current.weights.items() if w > 0)
            if current.mirror_revision is not None:
                revisions.add(current.mirror_revision)
        rule = build_destination_rule(release, namespace, owner, revisions)
        await self._apply("destinationrules", rule)
        await self._apply("virtualservices", virtual_service)

    async def get_routes(self, release: str, namespace: str) -> RouteState | None:
        """What the VirtualService says now; None when there is none."""
        virtual_service = await self._get("virtualservices", release, namespace)
        return None if virtual_service is None else parse_routes(virtual_service)


if TYPE_CHECKING:
    from rewind.adapters.base import Router

    _conforms: type[Router] = IstioRouter
