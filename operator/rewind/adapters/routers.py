"""The router each release names: Istio's VirtualService by default, Gateway API's HTTPRoute
with ``spec.traffic.gatewayAPI``.

:class:`TrafficRouter` is a :class:`~rewind.adapters.base.Router` that hands every call to
the router of the release's ``spec.traffic``. Changing router is a change of
``spec.traffic``, so a new revision: its first route write goes through the new router, and
the old router's objects of the release (which would keep routing by stale weights) are
deleted right after it, if they are the release's own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from kubernetes import client

from rewind.adapters import _kube
from rewind.adapters.base import Fallback, OwnerRef, RouteObservation, Router, RouteState
from rewind.adapters.gateway_api import GATEWAY_GROUP, GATEWAY_VERSION, HTTPROUTES

if TYPE_CHECKING:
    from rewind.api import TrafficSpec

ISTIO_GROUP = "networking.istio.io"
ISTIO_VERSION = "v1"
#: The route objects each router writes for a release (group, version, plural), by router.
ROUTE_OBJECTS: Mapping[str, tuple[tuple[str, str, str], ...]] = {
    "istio": ((ISTIO_GROUP, ISTIO_VERSION, "virtualservices"),
              (ISTIO_GROUP, ISTIO_VERSION, "destinationrules")),
    "gatewayAPI": ((GATEWAY_GROUP, GATEWAY_VERSION, HTTPROUTES),),
}


class TrafficRouter:
    """Picks the router of each release's ``spec.traffic`` (see the module)."""

    def __init__(
        self,
        api_client: client.ApiClient,
        *,
        istio: Router,
        gateway_api: Router,
        request_timeout: float = 30.0,
    ) -> None:
        self.routers: dict[str, Router] = {"istio": istio, "gatewayAPI": gateway_api}
        self._api = client.CustomObjectsApi(api_client)
        self._timeout = request_timeout
        #: The router each release's routes were last written with, by (namespace, uid):
        #: the other router's objects were looked for then, and are not looked for again
        #: until the release changes router.
        self._written_with: dict[tuple[str, str], str] = {}

    def pick(self, traffic: TrafficSpec) -> Router:
        return self.routers[traffic.router]

    def forget(self, namespace: str, release: str) -> None:
        for router in self.routers.values():
            router.forget(namespace, release)

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
        await self.pick(traffic).set_routes(
            release, namespace, owner, traffic, weights, mirror_revision, mirror_percent,
            header_revision, primary_revision, fallback,
        )
        key = (namespace, owner.uid)
        if self._written_with.get(key) != traffic.router and await self._retire(
            release, namespace, owner, keep=traffic.router
        ):
            self._written_with[key] = traffic.router

    async def _retire(self, release: str, namespace: str, owner: OwnerRef, keep: str) -> bool:
        """Delete the release's own route objects of the routers it no longer uses (never
        someone else's object of the same name); False when one changed meanwhile (looked
        at again with the next write)."""
        done = True
        for router, objects in ROUTE_OBJECTS.items():
            if router == keep:
                continue
            for group, version, plural in objects:
                obj = await _kube.get_or_none(
                    self._api.get_namespaced_custom_object, group, version, namespace, plural,
                    release, timeout=self._timeout,
                )
                if obj is None or not owner.owns(obj):
                    continue
                meta: Mapping[str, Any] = obj.get("metadata") or {}
                try:
                    await _kube.call(
                        self._api.delete_namespaced_custom_object, group, version, namespace,
                        plural, release,
                        body={"preconditions": {"uid": meta.get("uid"),
                                                "resourceVersion": meta.get("resourceVersion")}},
                        timeout=self._timeout,
                    )
                except client.ApiException as err:
                    if err.status == 409:  # changed since it was read: next time
                        done = False
                    elif err.status != 404:
                        raise
        return done

    async def get_routes(self, release: str, namespace: str) -> RouteState | None:
        """What the release's routes say: its HTTPRoute's if it has one, else its
        VirtualService's."""
        for name in ("gatewayAPI", "istio"):
            found = await self.routers[name].get_routes(release, namespace)
            if found is not None:
                return found
        return None

    async def observe_routes(
        self, release: str, namespace: str, owner: OwnerRef, traffic: TrafficSpec
    ) -> RouteObservation:
        return await self.pick(traffic).observe_routes(release, namespace, owner, traffic)


if TYPE_CHECKING:
    _conforms: type[Router] = TrafficRouter
