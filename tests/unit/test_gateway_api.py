"""The Gateway API router: the HTTPRoute it writes, reads back and judges, without a cluster."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from typing import Any

import pytest
from kubernetes import client

from rewind.adapters.base import (
    Fallback,
    OwnerRef,
    RouteObservation,
    RouteProblem,
    RouteRefusedError,
    RouteState,
)
from rewind.adapters.gateway_api import (
    GatewayAPIRouter,
    build_http_route,
    build_inference_pool,
    gateway_duration,
    parse_http_route,
    percentages,
    pool_problems,
    route_problems,
)
from rewind.adapters.httproute_index import HTTPRouteIndex, RouteClaim, beats, overlaps
from rewind.adapters.routers import TrafficRouter
from rewind.adapters.workloads import UmbrellaService, build_umbrella_service, umbrella_revision
from rewind.api import TrafficSpec

OWNER = OwnerRef(name="chat", uid="0b7c6a2e-1111-2222-3333-444455556666")
PARENT = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public",
          "namespace": "infra"}


def traffic(**extra: Any) -> TrafficSpec:
    gateway = {"parentRefs": [{"name": "public", "namespace": "infra"}],
               **extra.pop("gatewayAPI", {})}
    return TrafficSpec.model_validate(
        {"hosts": ["chat.example.com"], "gatewayAPI": gateway, **extra}
    )


TRAFFIC = traffic()
POOLS = traffic(gatewayAPI={"inferencePool": {"endpointPickerRef": {"name": "chat-epp",
                                                                    "port": 9002}}})


def route(weights: dict[int, int], t: TrafficSpec = TRAFFIC, **kw: Any) -> dict[str, Any]:
    return build_http_route("chat", "shop", OWNER, t, weights, **kw)


def svc(revision: int, weight: int, port: int = 80) -> dict[str, Any]:
    return {"group": "", "kind": "Service", "name": f"chat-r{revision}", "port": port,
            "weight": weight}


# --- the route written -----------------------------------------------------------------


def test_canary_split_weights_each_revision_service_on_the_parents_and_hosts() -> None:
    body = route({2: 90, 3: 10})
    assert body["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert body["kind"] == "HTTPRoute"
    assert body["metadata"]["ownerReferences"] == [OWNER.to_k8s()]
    assert body["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "rewind",
                                          "rewind.dev/release": "chat"}
    spec = body["spec"]
    assert spec["parentRefs"] == [PARENT]
    assert spec["hostnames"] == ["chat.example.com"]
    assert spec["rules"] == [{
        "name": "rewind",
        "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
        "backendRefs": [svc(2, 90), svc(3, 10)],
    }]


def test_zero_weights_get_no_backend_and_bad_weights_are_refused() -> None:
    assert route({2: 0, 3: 100})["spec"]["rules"][0]["backendRefs"] == [svc(3, 100)]
    with pytest.raises(ValueError, match="sum to 100"):
        route({2: 90, 3: 20})
    with pytest.raises(ValueError, match="no mirror_revision"):
        route({2: 100}, mirror_percent=10)


def test_shadow_mirrors_a_percent_to_the_candidate_service() -> None:
    rule = route({2: 100}, mirror_revision=3, mirror_percent=25)["spec"]["rules"][0]
    assert rule["filters"] == [{
        "type": "RequestMirror",
        "requestMirror": {"backendRef": {"group": "", "kind": "Service", "name": "chat-r3",
                                         "port": 80},
                          "percent": 25},
    }]
    assert "filters" not in route({2: 100}, mirror_revision=3, mirror_percent=0)["spec"][
        "rules"][0]


def test_each_revision_service_port_comes_from_its_own_snapshot() -> None:
    rule = route({1: 50, 2: 50}, ports={1: 8080})["spec"]["rules"][0]
    assert [b["port"] for b in rule["backendRefs"]] == [8080, 80]


@pytest.mark.parametrize(
    ("duration", "written"),
    [("90s", "1m30s"), ("1500ms", "1s500ms"), ("2h", "2h"), ("1m30s", "1m30s"),
     ("300s", "5m"), ("99999h", "99999h"), ("1ms", "1ms")],
)
def test_durations_are_written_in_gateway_api_form(duration: str, written: str) -> None:
    assert gateway_duration(duration) == written


def test_a_duration_gateway_api_cannot_hold_is_refused() -> None:
    with pytest.raises(ValueError, match="99999h"):
        gateway_duration("100000h")


def test_timeouts_and_header_routes_go_on_both_rules() -> None:
    t = traffic(timeout="120s", gatewayAPI={"backendRequestTimeout": "90s"}, headerRoutes=[
        {"name": "beta", "headers": [{"name": "x-group", "exact": "beta"},
                                     {"name": "x-user", "prefix": "qa.team+"}]},
        {"name": "staff", "headers": [{"name": "x-staff", "regex": "yes|true"}]},
    ])
    header, main = route({1: 90, 2: 10}, t, header_revision=2)["spec"]["rules"]
    timeouts = {"request": "2m", "backendRequest": "1m30s"}
    assert main["timeouts"] == timeouts and header["timeouts"] == timeouts
    assert header["name"] == "rewind-headers"
    assert header["backendRefs"] == [svc(2, 1)]
    assert header["matches"] == [
        {"headers": [{"name": "x-group", "type": "Exact", "value": "beta"},
                     {"name": "x-user", "type": "RegularExpression", "value": r"^qa\.team\+.*"}],
         "path": {"type": "PathPrefix", "value": "/"}},
        {"headers": [{"name": "x-staff", "type": "RegularExpression", "value": "yes|true"}],
         "path": {"type": "PathPrefix", "value": "/"}},
    ]
    # No header revision (promoted, rolled back, a shadow): no header rule.
    assert [r["name"] for r in route({1: 100}, t)["spec"]["rules"]] == ["rewind"]


def test_inference_pools_are_the_backends_and_the_mirror_stays_a_service() -> None:
    rule = route({1: 80, 2: 20}, POOLS, mirror_revision=2, mirror_percent=5)["spec"]["rules"][0]
    assert rule["backendRefs"] == [
        {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": "chat-r1",
         "weight": 80},
        {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": "chat-r2",
         "weight": 20},
    ]
    assert rule["filters"][0]["requestMirror"]["backendRef"]["kind"] == "Service"


def test_an_inference_pool_selects_its_revisions_pods_on_their_port() -> None:
    pool = build_inference_pool("chat", "shop", OWNER, POOLS, 3, 8000)
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
    assert pool["metadata"]["name"] == "chat-r3"
    assert pool["metadata"]["ownerReferences"] == [OWNER.to_k8s()]
    assert pool["spec"] == {
        "selector": {"matchLabels": {"rewind.dev/release": "chat", "rewind.dev/revision": "3"}},
        "targetPorts": [{"number": 8000}],
        "endpointPickerRef": {"group": "", "kind": "Service", "name": "chat-epp",
                              "failureMode": "FailClose", "port": {"number": 9002}},
    }
    per = traffic(gatewayAPI={"inferencePool": {"endpointPickerRef": {
        "name": "chat-epp", "port": 9002, "perRevision": True}}})
    assert build_inference_pool("chat", "shop", OWNER, per, 3, 8000)["spec"][
        "endpointPickerRef"]["name"] == "chat-epp-r3"


def test_an_istio_traffic_spec_is_not_routed_here() -> None:
    with pytest.raises(ValueError, match="no gatewayAPI"):
        route({1: 100}, TrafficSpec(hosts=["chat.example.com"]))


# --- read back -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("weights", "mirror", "header"),
    [({1: 100}, (None, 0), None), ({1: 90, 2: 10}, (None, 0), 2), ({1: 100}, (2, 30), None)],
)
def test_what_the_builder_writes_reads_back_the_same(
    weights: dict[int, int], mirror: tuple[int | None, int], header: int | None
) -> None:
    t = traffic(headerRoutes=[{"name": "beta", "headers": [{"name": "x", "exact": "1"}]}])
    body = route(weights, t, mirror_revision=mirror[0], mirror_percent=mirror[1],
                 header_revision=header)
    assert parse_http_route("chat", body) == RouteState(weights, *mirror, header)


def test_proportional_weights_read_back_as_the_percentages_users_get() -> None:
    assert percentages({1: 1, 2: 3}) == {1: 25, 2: 75}
    assert percentages({1: 1, 2: 1, 3: 1}) == {1: 34, 2: 33, 3: 33}
    assert sum(percentages({1: 7, 2: 13, 3: 29}).values()) == 100
    assert percentages({1: 0}) == {}
    body = route({1: 50, 2: 50})
    for ref in body["spec"]["rules"][0]["backendRefs"]:
        ref["weight"] = 1 if ref["name"] == "chat-r1" else 3
    assert parse_http_route("chat", body).weights == {1: 25, 2: 75}


def test_read_back_follows_gateway_api_defaults_and_ignores_other_backends() -> None:
    body: dict[str, Any] = {"spec": {"rules": [{"backendRefs": [
        {"name": "chat-r1", "port": 80},                      # weight defaults to 1
        {"name": "chat-r2", "port": 80},
        {"name": "other-r3", "port": 80},                     # another release
        {"name": "chat-r4", "namespace": "elsewhere", "port": 80},
        {"group": "example.com", "kind": "Thing", "name": "chat-r5"},
    ], "filters": [{"type": "RequestMirror",
                    "requestMirror": {"backendRef": {"name": "chat-r2", "port": 80},
                                      "fraction": {"numerator": 1, "denominator": 4}}}]}]}}
    assert parse_http_route("chat", body) == RouteState({1: 50, 2: 50}, 2, 25, None)
    no_percent = copy.deepcopy(body)
    del no_percent["spec"]["rules"][0]["filters"][0]["requestMirror"]["fraction"]
    assert parse_http_route("chat", no_percent).mirror_percent == 100
    assert parse_http_route("chat", {}) == RouteState({}, None, 0, None)


# --- problems --------------------------------------------------------------------------


def accepted(body: dict[str, Any], generation: int = 1, controller: str = "example.com/gw",
             **conditions: tuple[str, str]) -> dict[str, Any]:
    out = copy.deepcopy(body)
    out["metadata"]["generation"] = generation
    status = {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs"),
              **conditions}
    out["status"] = {"parents": [{
        "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public",
                      "namespace": "infra"},
        "controllerName": controller,
        "conditions": [
            {"type": kind, "status": s, "reason": reason, "message": f"{reason} here",
             "observedGeneration": generation, "lastTransitionTime": "2025-01-01T00:00:00Z"}
            for kind, (s, reason) in status.items()
        ],
    }]}
    return out


def managed(body: dict[str, Any], manager: str) -> dict[str, Any]:
    out = copy.deepcopy(body)
    out["metadata"]["managedFields"] = [
        {"manager": "rewind-operator", "operation": "Apply", "fieldsV1": {"f:spec": {}}},
        {"manager": manager, "operation": "Update", "fieldsV1": {"f:spec": {"f:rules": {}}}},
    ]
    return out


def problems(body: dict[str, Any], t: TrafficSpec = TRAFFIC) -> list[RouteProblem]:
    return route_problems("chat", "shop", OWNER, t, body)


def test_an_accepted_route_as_rewind_wrote_it_has_no_problem() -> None:
    assert problems(accepted(route({1: 90, 2: 10}))) == []


def test_a_route_no_gateway_has_answered_for_is_not_accepted_yet() -> None:
    [problem] = problems(route({1: 100}))
    assert problem.kind == "NotAccepted" and not problem.fixed_by_write
    assert problem.message == (
        "HTTPRoute shop/chat is not accepted yet: Gateway infra/public: no status from its "
        "gateway controller yet"
    )


def test_a_status_for_an_older_generation_is_not_acceptance() -> None:
    stale = accepted(route({1: 100}), generation=1)
    stale["metadata"]["generation"] = 2
    [problem] = problems(stale)
    assert problem.kind == "NotAccepted"
    assert "example.com/gw has not seen generation 2 yet (Accepted is for generation 1)" in (
        problem.message
    )


def test_a_gateway_that_refuses_the_route_is_a_conflict_quoting_it() -> None:
    refused = accepted(route({1: 100}), Accepted=("False", "NotAllowedByListeners"))
    [problem] = problems(refused)
    assert problem.kind == "Conflict"
    assert problem.message.startswith(
        "HTTPRoute shop/chat is not accepted: Gateway infra/public: example.com/gw says "
        "Accepted=False, NotAllowedByListeners: NotAllowedByListeners here."
    )


@pytest.mark.parametrize(
    ("conditions", "kind"),
    [({"Accepted": ("False", "Pending")}, "NotAccepted"),
     ({"ResolvedRefs": ("False", "BackendNotFound")}, "NotAccepted"),
     ({"ResolvedRefs": ("False", "InvalidKind")}, "Conflict"),
     ({"ResolvedRefs": ("False", "RefNotPermitted")}, "Conflict"),
     ({"Accepted": ("Unknown", "Pending")}, "NotAccepted")],
)
def test_what_only_needs_time_waits_and_what_needs_a_human_holds(
    conditions: dict[str, tuple[str, str]], kind: str
) -> None:
    [problem] = problems(accepted(route({1: 100}), **conditions))  # type: ignore[arg-type]
    assert problem.kind == kind


def test_every_parent_must_accept_and_other_parents_statuses_do_not_count() -> None:
    t = traffic(gatewayAPI={"parentRefs": [{"name": "public", "namespace": "infra"},
                                           {"name": "internal"}]})
    body = accepted(route({1: 100}, t))
    [problem] = problems(body, t)
    assert problem.kind == "NotAccepted"
    assert "Gateway shop/internal: no status from its gateway controller yet" in problem.message
    assert "infra/public" not in problem.message
    # A status for a parent the route does not name says nothing about the route.
    body["status"]["parents"][0]["parentRef"]["name"] = "elsewhere"
    assert "Gateway infra/public: no status" in problems(body, t)[0].message


def test_hand_edits_are_drift_naming_who_and_what() -> None:
    edited = accepted(route({1: 100}))
    edited["spec"]["rules"][0]["timeouts"] = {"request": "5s"}
    [problem] = problems(managed(edited, "kubectl-edit"))
    assert problem.kind == "Drift"
    assert problem.message == (
        "HTTPRoute shop/chat was edited outside Rewind by kubectl-edit (spec.rules[0].timeouts "
        'added: {"request":"5s"}); Rewind restores it: put route options in spec.traffic '
        "(timeout, headerRoutes, gatewayAPI)"
    )


def test_a_gateways_status_writes_are_not_edits() -> None:
    body = accepted(route({1: 100}))
    body["metadata"]["managedFields"] = [
        {"manager": "rewind-operator", "operation": "Apply", "fieldsV1": {"f:spec": {}}},
        {"manager": "gateway", "operation": "Update", "subresource": "status",
         "fieldsV1": {"f:status": {}}},
    ]
    assert problems(body) == []


def test_routes_for_an_earlier_spec_are_rewritten_not_drift() -> None:
    old = accepted(route({1: 100}, traffic(timeout="60s")))
    [problem] = problems(old)
    assert problem.kind == "NotAccepted" and problem.fixed_by_write
    assert "written for an earlier spec.traffic" in problem.message


def test_proportional_weights_set_by_hand_are_drift() -> None:
    body = accepted(route({1: 50, 2: 50}))
    for ref in body["spec"]["rules"][0]["backendRefs"]:
        ref["weight"] = 1
    [problem] = problems(managed(body, "kubectl-patch"))
    assert problem.kind == "Drift" and "spec.rules[0].backendRefs" in problem.message


def test_a_route_of_rewinds_name_owned_by_someone_else_is_a_conflict() -> None:
    foreign = route({1: 100})
    foreign["metadata"]["ownerReferences"] = []
    assert [p.kind for p in problems(foreign)] == ["Conflict"]


def test_pools_missing_foreign_or_edited_are_reported() -> None:
    pool = build_inference_pool("chat", "shop", OWNER, POOLS, 1, 8000)
    foreign = copy.deepcopy(pool)
    foreign["metadata"]["ownerReferences"] = []
    edited = managed(pool, "kubectl-edit")
    edited["spec"]["targetPorts"] = [{"number": 9000}]
    found = pool_problems("chat", "shop", OWNER, POOLS,
                          {1: pool, 2: None, 3: foreign, 4: edited},
                          {1: 8000, 2: 8000, 3: 8000, 4: 8000})
    assert [p.kind for p in found] == ["Drift", "Conflict", "Drift"]
    assert "InferencePool shop/chat-r2, a backend of the route, is missing" in found[0].message
    assert "edited outside Rewind by kubectl-edit" in found[2].message


# --- the router against a fake API -----------------------------------------------------


class FakeGatewayRouter(GatewayAPIRouter):
    """Reads answered from a dict, applies recorded; snapshots give each revision's ports."""

    def __init__(self, objects: dict[tuple[str, str, str], dict[str, Any]],
                 ports: dict[int, tuple[int, int]] | None = None,
                 index: HTTPRouteIndex | None = None) -> None:
        super().__init__(client.ApiClient(), index=index)
        self.objects = objects
        self.snapshot_ports = ports or {}
        self.applied: list[dict[str, Any]] = []
        self._umbrella = FakeUmbrella(self)

    async def _get(self, group: str, version: str, plural: str, name: str,
                   namespace: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.objects.get((plural, namespace, name)))

    async def _revision_ports(self, release: str, namespace: str, owner: OwnerRef,
                              revision: int, traffic: TrafficSpec) -> tuple[int, int] | None:
        return self.snapshot_ports.get(revision)

    async def _apply(self, group: str, version: str, plural: str,
                     body: dict[str, Any]) -> dict[str, Any]:
        self.applied.append(body)
        meta = body["metadata"]
        self.objects[(plural, meta["namespace"], meta["name"])] = copy.deepcopy(body)
        return body


class FakeUmbrella(UmbrellaService):
    """The umbrella Service read from, and applied to, the FakeGatewayRouter's dict."""

    def __init__(self, router: FakeGatewayRouter) -> None:
        super().__init__(client.ApiClient())
        self.router = router

    async def get(self, release: str, namespace: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.router.objects.get(("services", namespace, release)))

    async def point(self, release: str, namespace: str, owner: OwnerRef, port: int,
                    revision: int | None, current: Mapping[str, Any] | None) -> None:
        body = build_umbrella_service(release, namespace, owner, port, revision)
        self.router.applied.append(body)
        self.router.objects[("services", namespace, release)] = body


def test_pools_are_written_before_the_route_make_before_break() -> None:
    current = route({1: 100}, POOLS)
    router = FakeGatewayRouter({("httproutes", "shop", "chat"): current},
                               {1: (80, 8000), 2: (80, 8001)})
    asyncio.run(router.set_routes("chat", "shop", OWNER, POOLS, {2: 100}))
    assert [(b["kind"], b["metadata"]["name"]) for b in router.applied] == [
        ("InferencePool", "chat-r1"), ("InferencePool", "chat-r2"), ("HTTPRoute", "chat"),
        ("Service", "chat")]
    assert umbrella_revision(router.applied[-1], "chat") == 2
    assert router.applied[1]["spec"]["targetPorts"] == [{"number": 8001}]


def test_a_pool_without_a_readable_snapshot_is_not_guessed() -> None:
    router = FakeGatewayRouter({}, {})
    with pytest.raises(Exception, match="snapshot of r1"):
        asyncio.run(router.set_routes("chat", "shop", OWNER, POOLS, {1: 100}))
    assert router.applied == []


def test_observe_reports_the_route_its_pools_and_acceptance() -> None:
    objects = {("httproutes", "shop", "chat"): accepted(route({1: 100}, POOLS))}
    router = FakeGatewayRouter(objects, {1: (80, 8000)})
    seen = asyncio.run(router.observe_routes("chat", "shop", OWNER, POOLS))
    assert seen.exists and dict(seen.weights) == {1: 100}
    assert seen.source == "HTTPRoute shop/chat"
    assert [p.kind for p in seen.problems] == ["Drift"]  # its pool is missing
    objects[("inferencepools", "shop", "chat-r1")] = build_inference_pool(
        "chat", "shop", OWNER, POOLS, 1, 8000)
    seen = asyncio.run(router.observe_routes("chat", "shop", OWNER, POOLS))
    assert seen.problems == () and seen.primary_revision is None  # no umbrella Service yet
    objects[("services", "shop", "chat")] = build_umbrella_service("chat", "shop", OWNER, 80, 1)
    assert asyncio.run(router.observe_routes("chat", "shop", OWNER, POOLS)).primary_revision == 1
    # Someone else's Service of the release's name: a conflict, and no primary reported.
    foreign = build_umbrella_service("chat", "shop", OWNER, 80, 1)
    foreign["metadata"].pop("ownerReferences")
    objects[("services", "shop", "chat")] = foreign
    seen = asyncio.run(router.observe_routes("chat", "shop", OWNER, POOLS))
    assert [p.kind for p in seen.problems] == ["Conflict"] and seen.primary_revision is None


# --- conflicts with other HTTPRoutes ---------------------------------------------------


def other_route(hostnames: list[str], *, created: str = "2020-01-01T00:00:00Z",
                name: str = "legacy", matches: list[Any] | None = None,
                section: str | None = None, version: str = "1") -> dict[str, Any]:
    parent = {"name": "public", "namespace": "infra"}
    if section:
        parent["sectionName"] = section
    rule: dict[str, Any] = {"backendRefs": [{"name": "legacy", "port": 80}]}
    if matches is not None:
        rule["matches"] = matches
    return {"metadata": {"name": name, "namespace": "team-b", "creationTimestamp": created,
                         "resourceVersion": version},
            "spec": {"parentRefs": [parent], "hostnames": hostnames, "rules": [rule]}}


def mine(hosts: list[str], created: str = "") -> RouteClaim:
    claim = RouteClaim.wanted("chat", "shop", traffic(hosts=hosts))
    return RouteClaim(claim.namespace, claim.name, claim.parents, claim.hostnames, True,
                      created, "chat")


@pytest.mark.parametrize(
    ("theirs", "mine_", "verdict"),
    [("a.example.com", "a.example.com", None), ("a.example.com", "*.example.com", True),
     ("*.example.com", "a.example.com", False), ("*.a.example.com", "*.example.com", True),
     ("*.example.com", "*.a.example.com", False), ("b.example.com", "a.example.com", False),
     ("example.com", "*.example.com", False)],
)
def test_hostname_precedence(theirs: str, mine_: str, verdict: bool | None) -> None:
    assert beats(theirs, mine_) is verdict


def test_an_older_catch_all_on_the_same_host_and_parent_is_a_conflict() -> None:
    other = RouteClaim.of(other_route(["chat.example.com"]))
    [overlap] = overlaps(mine(["chat.example.com"], "2024-01-01T00:00:00Z"), other)
    assert overlap.other == "team-b/legacy" and overlap.parent == "Gateway infra/public"
    assert "older" in overlap.why
    # Newer than the release's route: the release's route wins the tie.
    assert overlaps(mine(["chat.example.com"], "2019-01-01T00:00:00Z"), other) == []
    # Not created yet: every existing route is older.
    assert overlaps(mine(["chat.example.com"]), other)


def test_routes_that_compose_with_the_release_are_not_conflicts() -> None:
    me = mine(["chat.example.com"], "2024-01-01T00:00:00Z")
    for other in (
        other_route(["chat.example.com"], matches=[{"path": {"type": "PathPrefix",
                                                             "value": "/admin"}}]),
        other_route(["chat.example.com"], matches=[{"headers": [{"name": "x", "value": "1"}]}]),
        other_route(["*.example.com"]),                   # less specific than the release's
        other_route(["other.example.com"]),
        other_route([]),                                  # no hostnames: never wins
    ):
        assert overlaps(me, RouteClaim.of(other)) == [], other


def test_listeners_of_a_shared_parent_meet_unless_both_name_different_ones() -> None:
    other = RouteClaim.of(other_route(["chat.example.com"], section="http"))
    assert overlaps(mine(["chat.example.com"], "2024-01-01T00:00:00Z"), other)
    https = traffic(gatewayAPI={"parentRefs": [
        {"name": "public", "namespace": "infra", "sectionName": "https"}]})
    assert overlaps(RouteClaim.wanted("chat", "shop", https), other) == []


def test_the_index_finds_suspects_reads_them_back_and_forgets_deleted_ones() -> None:
    index = HTTPRouteIndex()
    index.apply("ADDED", other_route(["chat.example.com"]))
    index.apply("ADDED", other_route(["x.example.org"], name="unrelated"))
    objects: dict[tuple[str, str, str], dict[str, Any]] = {
        ("httproutes", "team-b", "legacy"): other_route(["chat.example.com"]),
    }
    router = FakeGatewayRouter(objects, index=index)

    def observe() -> RouteObservation:
        return asyncio.run(router.observe_routes("chat", "shop", OWNER, TRAFFIC))

    seen = observe()
    assert not seen.exists and [p.kind for p in seen.problems] == ["Conflict"]
    assert seen.problems[0].message.startswith(
        "HTTPRoute team-b/legacy (chat.example.com on Gateway infra/public: the same hostname "
        "and match, and it is older) takes every request of this release's hosts"
    )
    objects[("httproutes", "team-b", "legacy")] = other_route(["other.example.com"],
                                                               version="2")
    assert observe().problems == ()
    del objects[("httproutes", "team-b", "legacy")]
    assert observe().problems == ()
    assert index.get("team-b", "legacy") is None


def test_the_index_wakes_the_owner_on_a_new_gateway_status_or_an_edit() -> None:
    index = HTTPRouteIndex()
    body = route({1: 100})
    body["metadata"].update(resourceVersion="1", creationTimestamp="2024-01-01T00:00:00Z")
    assert index.apply("ADDED", body) == {("shop", "chat")}
    assert index.apply("MODIFIED", body) == set()  # its own write, nothing new
    assert index.apply("MODIFIED", accepted(body)) == {("shop", "chat")}
    assert index.apply("MODIFIED", managed(accepted(body), "kubectl-edit")) == {("shop", "chat")}
    # Another catch-all on its host wakes it, as does the route's deletion.
    assert ("shop", "chat") in index.apply("ADDED", other_route(["chat.example.com"]))
    assert index.apply("DELETED", body) == {("shop", "chat")}


# --- picking the router ----------------------------------------------------------------


class Recorder:
    def __init__(self, name: str) -> None:
        self.name = name
        self.calls: list[str] = []

    async def set_routes(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append("set")

    async def get_routes(self, release: str, namespace: str) -> RouteState | None:
        return RouteState({1: 100}, None, 0) if self.name == "istio" else None

    async def observe_routes(self, *args: Any) -> RouteObservation:
        self.calls.append("observe")
        return RouteObservation(source=self.name)

    def forget(self, namespace: str, release: str) -> None:
        self.calls.append("forget")


def test_each_release_goes_to_the_router_its_traffic_names() -> None:
    istio, gateway = Recorder("istio"), Recorder("gatewayAPI")
    router = TrafficRouter(client.ApiClient(), istio=istio, gateway_api=gateway)
    retired: list[str] = []

    async def retire(release: str, namespace: str, owner: OwnerRef, keep: str) -> bool:
        retired.append(keep)
        return True

    router._retire = retire  # type: ignore[method-assign]
    seen = asyncio.run(router.observe_routes("chat", "shop", OWNER, TRAFFIC))
    assert seen.source == "gatewayAPI"
    asyncio.run(router.set_routes("chat", "shop", OWNER, TRAFFIC, {1: 100}))
    asyncio.run(router.set_routes("chat", "shop", OWNER, TRAFFIC, {1: 100}))
    istio_traffic = TrafficSpec(hosts=["chat.example.com"])
    asyncio.run(router.set_routes("chat", "shop", OWNER, istio_traffic, {1: 100}))
    assert gateway.calls == ["observe", "set", "set"] and istio.calls == ["set"]
    # The other router's objects are looked for once per change of router.
    assert retired == ["gatewayAPI", "istio"]
    assert asyncio.run(router.get_routes("chat", "shop")) == RouteState({1: 100}, None, 0)


# --- the circuit breaker's fallback ------------------------------------------------------


def test_a_fallback_is_refused_before_anything_is_written() -> None:
    """The engine never arms a breaker on a Gateway API release; should a fallback reach
    this router all the same, it is refused, naming the fix, and nothing is applied."""
    router = FakeGatewayRouter({("httproutes", "shop", "chat"): route({1: 100})},
                               {1: (80, 8000)})
    with pytest.raises(RouteRefusedError, match=r"spec\.traffic\.gatewayAPI.*spec\.breaker"):
        asyncio.run(router.set_routes("chat", "shop", OWNER, TRAFFIC, {}, primary_revision=1,
                                      fallback=Fallback(status=503)))
    assert router.applied == []


def test_the_traffic_router_hands_primary_and_fallback_to_the_router_it_picks() -> None:
    class Capture(Recorder):
        async def set_routes(self, *args: Any, **kwargs: Any) -> None:
            self.calls.append(repr((args[-2:], kwargs)))

    istio, gateway = Capture("istio"), Capture("gatewayAPI")
    router = TrafficRouter(client.ApiClient(), istio=istio, gateway_api=gateway)

    async def retire(release: str, namespace: str, owner: OwnerRef, keep: str) -> bool:
        return True

    router._retire = retire  # type: ignore[method-assign]
    fallback = Fallback(service="rules.shop.svc.cluster.local", port=8080)
    asyncio.run(router.set_routes("chat", "shop", OWNER, TrafficSpec(hosts=["chat.example.com"]),
                                  {}, None, 0, None, primary_revision=1, fallback=fallback))
    assert istio.calls == [repr(((1, fallback), {}))] and gateway.calls == []
