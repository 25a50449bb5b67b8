"""The Istio builders: what the mesh is told, checked without a cluster."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
from kubernetes import client

from rewind.adapters.base import OwnerRef, RouteObservation, RouteProblem, RouteState
from rewind.adapters.route_index import VirtualServiceIndex
from rewind.adapters.router import (
    IstioRouter,
    _spec_difference,
    build_virtual_service,
    parse_routes,
    release_claim,
    route_problems,
    uses_subsets,
    validate_weights,
)
from rewind.adapters.workloads import (
    UmbrellaService,
    build_umbrella_service,
    primary_of,
    umbrella_revision,
)
from rewind.api import TrafficSpec

OWNER = OwnerRef(name="fraud", uid="0b7c6a2e-1111-2222-3333-444455556666")
HOST = "fraud.shop.svc.cluster.local"


def rev(n: int, domain: str = "cluster.local") -> str:
    """The host of revision n's own Service."""
    return f"fraud-r{n}.shop.svc.{domain}"


def vs(
    weights: dict[int, int],
    mirror_revision: int | None = None,
    mirror_percent: int = 0,
    gateways: list[str] | None = None,
) -> dict[str, Any]:
    traffic = TrafficSpec(hosts=["fraud.example.com"], gateways=gateways or [])
    return build_virtual_service(
        "fraud", "shop", OWNER, traffic, weights, mirror_revision, mirror_percent
    )


def test_canary_split_routes_each_revision_to_its_own_service() -> None:
    """Issue 12: the routes name each revision's own Service (which selects its release and
    revision), never a subset of the umbrella Service: no DestinationRule subset selects by
    revision label alone (Istio's check for subsets without pods matched other releases'
    pods), and the umbrella can select the stable revision only."""
    route = vs({2: 90, 3: 10})["spec"]["http"][0]
    assert route["name"] == "rewind"
    assert route["route"] == [
        {"destination": {"host": rev(2)}, "weight": 90},
        {"destination": {"host": rev(3)}, "weight": 10},
    ]
    assert "mirror" not in route and "mirrorPercentage" not in route
    assert not uses_subsets(vs({2: 90, 3: 10}))


def test_zero_weight_revisions_get_no_route_entry() -> None:
    route = vs({2: 0, 3: 100})["spec"]["http"][0]
    assert route["route"] == [{"destination": {"host": rev(3)}, "weight": 100}]


def test_another_cluster_domain_is_used_for_every_in_cluster_name() -> None:
    """Issue 12: svc.cluster.local was hard-coded; a cluster with another domain got hosts
    that match nothing."""
    traffic = TrafficSpec(hosts=["fraud.example.com"])
    spec = build_virtual_service(
        "fraud", "shop", OWNER, traffic, {1: 90, 2: 10}, 2, 10, cluster_domain="corp.internal"
    )["spec"]
    assert spec["hosts"] == ["fraud.example.com", "fraud.shop.svc.corp.internal"]
    route = spec["http"][0]
    assert [d["destination"]["host"] for d in route["route"]] == [
        rev(1, "corp.internal"), rev(2, "corp.internal")]
    assert route["mirror"] == {"host": rev(2, "corp.internal")}
    claim = release_claim("fraud", "shop", TrafficSpec(hosts=["fraud"]), "corp.internal")
    assert claim.hosts == ("fraud.shop.svc.corp.internal",)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({2: 90, 3: 20}, "sum to 100"),
        ({2: 50}, "sum to 100"),
        ({}, "sum to 100"),
        ({2: 110, 3: -10}, "0..100"),
        ({0: 100}, "positive"),
        ({2: 99.5, 3: 0.5}, "int"),
        ({2: True, 3: 99}, "int"),
    ],
)
def test_weights_that_do_not_add_up_are_rejected_before_any_write(
    weights: dict[Any, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        vs(weights)


def test_validate_weights_returns_a_plain_copy() -> None:
    weights = {1: 40, 2: 60}
    checked = validate_weights(weights)
    assert checked == weights and checked is not weights


def test_mirror_copies_a_percentage_to_the_candidate_subset() -> None:
    route = vs({2: 100}, mirror_revision=3, mirror_percent=25)["spec"]["http"][0]
    assert route["mirror"] == {"host": rev(3)}
    assert route["mirrorPercentage"] == {"value": 25.0}


def test_mirror_percent_zero_means_no_mirror_even_with_a_revision() -> None:
    route = vs({2: 100}, mirror_revision=3, mirror_percent=0)["spec"]["http"][0]
    assert "mirror" not in route


@pytest.mark.parametrize(
    ("revision", "percent", "message"),
    [(None, 50, "no mirror_revision"), (3, 101, "0..100"), (3, -1, "0..100"), (0, 10, "positive")],
)
def test_bad_mirror_settings_are_rejected(revision: int | None, percent: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        vs({2: 100}, mirror_revision=revision, mirror_percent=percent)


def test_hosts_are_the_users_hosts_plus_the_in_mesh_name_and_no_gateways_means_mesh() -> None:
    spec = vs({1: 100})["spec"]
    assert spec["hosts"] == ["fraud.example.com", HOST]
    assert "gateways" not in spec


def test_gateways_get_mesh_added_so_in_mesh_callers_see_the_same_split() -> None:
    spec = vs({1: 100}, gateways=["istio-system/public"])["spec"]
    assert spec["gateways"] == ["istio-system/public", "mesh"]


def test_mesh_routing_is_the_specs_choice() -> None:
    """Issue 12: mesh was added whenever gateways were set, so in-mesh callers skipped the
    gateway's authentication and rate limits; now traffic.meshRouting says so."""
    gateway_only = TrafficSpec(hosts=["fraud.example.com"], gateways=["istio-system/public"],
                               mesh_routing=False)
    spec = build_virtual_service("fraud", "shop", OWNER, gateway_only, {1: 100})["spec"]
    assert spec["gateways"] == ["istio-system/public"]
    assert release_claim("fraud", "shop", gateway_only).gateways == ("istio-system/public",)
    assert TrafficSpec(hosts=["a.example.com"]).mesh_routing  # the default: as before


def test_hosts_are_not_duplicated() -> None:
    traffic = TrafficSpec(hosts=[HOST, "fraud.example.com"], gateways=["gw"])
    spec = build_virtual_service("fraud", "shop", OWNER, traffic, {1: 100})["spec"]
    assert spec["hosts"] == [HOST, "fraud.example.com"]
    assert spec["gateways"] == ["gw", "mesh"]


@pytest.mark.parametrize("kind", ["VirtualService", "Service"])
def test_both_objects_are_named_labelled_and_owned_by_the_release(kind: str) -> None:
    obj = (
        vs({1: 100})
        if kind == "VirtualService"
        else build_umbrella_service("fraud", "shop", OWNER, 80, 1)
    )
    assert obj["apiVersion"] == ("networking.istio.io/v1" if kind == "VirtualService" else "v1")
    assert obj["kind"] == kind
    meta = obj["metadata"]
    assert (meta["name"], meta["namespace"]) == ("fraud", "shop")
    assert meta["labels"] == {
        "app.kubernetes.io/managed-by": "rewind",
        "rewind.dev/release": "fraud",
    }
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "rewind.dev/v1alpha1",
            "kind": "ModelRelease",
            "name": "fraud",
            "uid": OWNER.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def test_the_umbrella_service_selects_the_primary_revision_only() -> None:
    """Issue 12: callers that bypass the VirtualService (their own route to the in-cluster
    name, no sidecar, a NodePort) hit the umbrella Service, which selected every revision's
    pods: a shadow or preview candidate answered users, a 10 % canary with equal replicas
    got half of that traffic. It now selects one revision, or none."""
    service = build_umbrella_service("fraud", "shop", OWNER, 80, 2)
    assert service["spec"]["selector"] == {"rewind.dev/release": "fraud",
                                           "rewind.dev/revision": "2"}
    assert service["spec"]["ports"][0]["port"] == 80
    assert umbrella_revision(service, "fraud") == 2
    nobody = build_umbrella_service("fraud", "shop", OWNER, 80, None)
    assert nobody["spec"]["selector"]["rewind.dev/revision"] == "none"
    assert umbrella_revision(nobody, "fraud") is None
    legacy = {"spec": {"selector": {"rewind.dev/release": "fraud"}}}
    assert umbrella_revision(legacy, "fraud") is None
    assert umbrella_revision(service, "other") is None


@pytest.mark.parametrize(
    ("weights", "given", "primary"),
    [({1: 100}, None, 1), ({1: 90, 2: 10}, None, 1), ({1: 90, 2: 10}, 2, 2), ({3: 100}, 1, 1),
     ({}, None, None)],
)
def test_primary_is_the_given_revision_else_the_one_with_all_the_weight(
    weights: dict[int, int], given: int | None, primary: int | None
) -> None:
    assert primary_of(weights, given) == primary


@pytest.mark.parametrize(
    ("weights", "mirror", "percent"),
    [({2: 90, 3: 10}, None, 0), ({2: 100}, 3, 40), ({3: 100}, None, 0), ({1: 1, 2: 99}, 2, 100)],
)
def test_parse_routes_reads_back_what_the_builder_wrote(
    weights: dict[int, int], mirror: int | None, percent: int
) -> None:
    state = parse_routes(vs(weights, mirror, percent))
    assert state.weights == {r: w for r, w in weights.items() if w > 0}
    assert (state.mirror_revision, state.mirror_percent) == (mirror, percent)


def test_parse_routes_follows_istio_defaults_for_hand_edited_objects() -> None:
    hand_edited = {
        "spec": {
            "http": [
                {"name": "other", "route": [{"destination": {"host": "x"}}]},
                {
                    "name": "rewind",
                    "route": [{"destination": {"host": "fraud-r4"}}],
                    "mirror": {"host": rev(5)},
                },
            ]
        }
    }
    state = parse_routes(hand_edited, "fraud")
    assert state.weights == {4: 100}
    assert (state.mirror_revision, state.mirror_percent) == (5, 100)


def test_parse_routes_reads_routes_to_subsets_written_before_per_revision_services() -> None:
    legacy = {"spec": {"http": [{
        "name": "rewind",
        "route": [{"destination": {"host": HOST, "subset": "r1"}, "weight": 80},
                  {"destination": {"host": HOST, "subset": "r2"}, "weight": 20}],
        "mirror": {"host": HOST, "subset": "r3"}, "mirrorPercentage": {"value": 5.0},
    }]}}
    assert parse_routes(legacy, "fraud") == RouteState({1: 80, 2: 20}, 3, 5, None)
    assert uses_subsets(legacy)


def test_parse_routes_ignores_other_releases_and_non_revision_hosts() -> None:
    other = {"spec": {"http": [{"name": "rewind", "route": [
        {"destination": {"host": "chat-r1.shop.svc.cluster.local"}, "weight": 50},
        {"destination": {"host": "fraud-r01"}, "weight": 25},
        {"destination": {"host": rev(2)}, "weight": 25}]}]}}
    assert parse_routes(other, "fraud").weights == {2: 25}


def test_parse_routes_of_an_empty_object_is_empty() -> None:
    assert parse_routes({}) == RouteState({}, None, 0, None)


# -- route options, header routes ---------------------------------------------------------


def traffic_with(**extra: Any) -> TrafficSpec:
    return TrafficSpec.model_validate({"hosts": ["fraud.example.com"], **extra})


@pytest.mark.parametrize(
    ("duration", "istio"),
    [("120s", "120s"), ("1m30s", "90s"), ("1500ms", "1.5s"), ("1ms", "0.001s"),
     ("1000h", "3600000s"), ("2h", "7200s"), ("10ms", "0.01s")],
)
def test_durations_are_written_as_istio_reads_them_never_with_an_exponent(
    duration: str, istio: str
) -> None:
    route = build_virtual_service(
        "fraud", "shop", OWNER, traffic_with(timeout=duration), {1: 100}
    )["spec"]["http"][0]
    assert route["timeout"] == istio


def test_timeout_and_retries_go_on_every_route_and_header_routes_come_first() -> None:
    traffic = traffic_with(
        timeout="120s",
        retries={"attempts": 0},
        headerRoutes=[{"name": "beta", "headers": [
            {"name": "x-group", "exact": "beta"}, {"name": "x-tier", "prefix": "gold"}]},
            {"name": "staff", "headers": [{"name": "x-user", "regex": ".*@example.com"}]}],
    )
    http = build_virtual_service("fraud", "shop", OWNER, traffic, {1: 80, 2: 20},
                                 header_revision=2)["spec"]["http"]
    assert [r["name"] for r in http] == ["rewind-headers", "rewind"]
    assert http[0]["match"] == [
        {"name": "beta", "headers": {"x-group": {"exact": "beta"}, "x-tier": {"prefix": "gold"}}},
        {"name": "staff", "headers": {"x-user": {"regex": ".*@example.com"}}},
    ]
    assert http[0]["route"] == [{"destination": {"host": rev(2)}}]
    for route in http:
        assert (route["timeout"], route["retries"]) == ("120s", {"attempts": 0})
    assert parse_routes({"spec": {"http": http}}).header_revision == 2
    without = build_virtual_service("fraud", "shop", OWNER, traffic, {1: 100})["spec"]["http"]
    assert [r["name"] for r in without] == ["rewind"]  # no candidate: no header route


def test_retries_carry_per_try_timeout_and_retry_on_when_given() -> None:
    traffic = traffic_with(retries={"attempts": 3, "perTryTimeout": "2s",
                                    "retryOn": "connect-failure,503"})
    route = build_virtual_service("fraud", "shop", OWNER, traffic, {1: 100})["spec"]["http"][0]
    assert route["retries"] == {"attempts": 3, "perTryTimeout": "2s",
                                "retryOn": "connect-failure,503"}
    assert "timeout" not in route


def test_the_release_claims_its_hosts_and_gateways_resolved_plus_mesh() -> None:
    claim = release_claim("fraud", "shop", TrafficSpec(hosts=["fraud.example.com"],
                                                       gateways=["public"]))
    assert claim.hosts == ("fraud.example.com", HOST)
    assert claim.gateways == ("mesh", "shop/public")
    assert release_claim("fraud", "shop", TrafficSpec(hosts=["fraud"])).gateways == ("mesh",)


# -- what the router reads back: route_problems -------------------------------------------


def managed(obj: dict[str, Any], *managers: str) -> dict[str, Any]:
    """``obj`` with managedFields: Rewind's apply plus an update of spec by each manager."""
    out = copy.deepcopy(obj)
    out["metadata"]["managedFields"] = [
        {"manager": "rewind-operator", "operation": "Apply", "fieldsV1": {"f:spec": {}}},
        *({"manager": m, "operation": "Update", "fieldsV1": {"f:spec": {"f:http": {}}}}
          for m in managers),
    ]
    return out


TRAFFIC = TrafficSpec(hosts=["fraud.example.com"], gateways=["istio-system/public"])


def written(weights: dict[int, int], traffic: TrafficSpec = TRAFFIC) -> dict[str, Any]:
    return managed(build_virtual_service("fraud", "shop", OWNER, traffic, weights))


def problems(virtual_service: dict[str, Any], traffic: TrafficSpec = TRAFFIC
             ) -> list[RouteProblem]:
    return route_problems("fraud", "shop", OWNER, traffic, virtual_service)


def test_routes_as_rewind_wrote_them_have_no_problem() -> None:
    assert problems(written({1: 90, 2: 10})) == []


def test_options_added_by_hand_are_drift_naming_who_and_every_field() -> None:
    edited = written({1: 100})
    edited["spec"]["http"][0]["timeout"] = "120s"
    edited["spec"]["http"][0]["retries"] = {"attempts": 0}
    [problem] = problems(managed(edited, "kubectl-patch"))
    assert problem.kind == "Drift"
    assert problem.message == (
        "VirtualService shop/fraud was edited outside Rewind by kubectl-patch "
        '(spec.http[0].retries added: {"attempts":0}; spec.http[0].timeout added: "120s"); '
        "Rewind restores it: put route options in spec.traffic (timeout, retries, "
        "headerRoutes)"
    )


def test_a_difference_nobody_else_wrote_is_routes_for_an_earlier_spec() -> None:
    old = written({1: 100}, TrafficSpec(hosts=["fraud.example.com"],
                                        gateways=["istio-system/public"], timeout="60s"))
    [problem] = problems(old)
    assert problem.kind == "NotAccepted"
    assert "written for an earlier spec.traffic" in problem.message
    assert 'spec.http[0].timeout removed (Rewind writes "60s")' not in problem.message
    assert 'spec.http[0].timeout added: "60s"' in problem.message


def test_a_top_level_field_added_by_hand_is_drift_too() -> None:
    edited = written({1: 100})
    edited["spec"]["exportTo"] = ["."]
    [problem] = problems(managed(edited, "kubectl-edit"))
    assert problem.kind == "Drift" and 'spec.exportTo added: ["."]' in problem.message


def test_routes_to_subsets_rewind_wrote_before_are_rewritten_not_drift() -> None:
    legacy = written({1: 100})
    legacy["spec"]["http"][0]["route"] = [{"destination": {"host": HOST, "subset": "r1"}}]
    [problem] = problems(legacy)
    assert problem.kind == "NotAccepted"
    assert "routes to DestinationRule subsets" in problem.message


def test_objects_of_rewinds_name_owned_by_someone_else_are_a_conflict() -> None:
    foreign = written({1: 100})
    foreign["metadata"]["ownerReferences"] = []
    found = problems(foreign)
    assert [p.kind for p in found] == ["Conflict"]
    assert "VirtualService shop/fraud exists and is not owned" in found[0].message


def test_spec_difference_names_every_change_with_its_value() -> None:
    want = {"hosts": ["a"], "http": [{"name": "rewind", "route": [1], "timeout": "5s"}]}
    got = {"hosts": ["a", "b"], "exportTo": ["."],
           "http": [{"name": "rewind", "route": [1], "retries": {"attempts": 0}}]}
    assert _spec_difference(want, got) == (
        'spec.exportTo added: ["."]; spec.hosts is ["a","b"] (Rewind writes ["a"]); '
        'spec.http[0].retries added: {"attempts":0}; '
        'spec.http[0].timeout removed (Rewind writes "5s")'
    )
    assert _spec_difference(want, want) == ""


def test_spec_difference_counts_what_it_does_not_name_and_clips_long_values() -> None:
    want: dict[str, Any] = {"http": [{}]}
    got: dict[str, Any] = {"http": [{f"k{i}": "v" * 200 for i in range(9)}]}
    text = _spec_difference(want, got)
    assert text.count("added") == 6 and text.endswith("; 3 more")
    assert max(len(part) for part in text.split("; ")) < 130
    extra = {"http": [{"name": "mine"}, {"name": "rewind"}]}
    assert _spec_difference({"http": [{"name": "rewind"}]}, extra) == (
        "spec.http has 2 routes (mine, rewind), Rewind writes 1"
    )


# -- conflicts read back through the index -------------------------------------------------


def foreign_vs(hosts: list[str], version: str = "1") -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "catch-all", "namespace": "team-b", "resourceVersion": version},
        "spec": {"hosts": hosts, "gateways": ["istio-system/public"],
                 "http": [{"route": [{"destination": {"host": "legacy"}}]}]},
    }


class FakeRouter(IstioRouter):
    """The router with its reads answered from a dict (no API server)."""

    def __init__(self, objects: dict[tuple[str, str, str], dict[str, Any]],
                 index: VirtualServiceIndex) -> None:
        super().__init__(client.ApiClient(), index=index)
        self.objects = objects
        self.reads: list[tuple[str, str, str]] = []
        self._umbrella = FakeUmbrella(self)

    async def _get(self, plural: str, name: str, namespace: str) -> dict[str, Any] | None:
        self.reads.append((plural, namespace, name))
        return copy.deepcopy(self.objects.get((plural, namespace, name)))


class FakeUmbrella(UmbrellaService):
    """The umbrella Service read from the FakeRouter's dict."""

    def __init__(self, router: FakeRouter) -> None:
        super().__init__(client.ApiClient())
        self.router = router

    async def get(self, release: str, namespace: str) -> dict[str, Any] | None:
        return await self.router._get("services", release, namespace)


def observe(router: IstioRouter) -> RouteObservation:
    return asyncio.run(router.observe_routes("fraud", "shop", OWNER, TRAFFIC))


def test_a_conflicting_virtual_service_is_read_back_before_it_is_reported() -> None:
    index = VirtualServiceIndex()
    index.apply("ADDED", foreign_vs(["fraud.example.com"]))
    objects = {
        ("virtualservices", "shop", "fraud"): written({1: 100}),
        ("services", "shop", "fraud"): build_umbrella_service("fraud", "shop", OWNER, 80, 1),
        ("virtualservices", "team-b", "catch-all"): foreign_vs(["fraud.example.com"]),
    }
    router = FakeRouter(objects, index)
    seen = observe(router)
    assert [p.kind for p in seen.problems] == ["Conflict"]
    assert seen.problems[0].message.startswith(
        "VirtualService team-b/catch-all (fraud.example.com on gateway istio-system/public) "
        "also routes this release's hosts"
    )
    # Changed meanwhile (the watch has not said so yet): judged on what it is now.
    objects[("virtualservices", "team-b", "catch-all")] = foreign_vs(["other.example.com"], "2")
    assert observe(router).problems == ()
    # Gone, and the watch missed it: no conflict, and the index forgets it.
    del objects[("virtualservices", "team-b", "catch-all")]
    assert observe(router).problems == ()
    assert index.get("team-b", "catch-all") is None


def test_a_conflict_is_reported_before_rewinds_virtual_service_exists() -> None:
    index = VirtualServiceIndex()
    index.apply("ADDED", foreign_vs(["*.example.com"]))
    router = FakeRouter({("virtualservices", "team-b", "catch-all"):
                         foreign_vs(["*.example.com"])}, index)
    seen = observe(router)
    assert not seen.exists and [p.kind for p in seen.problems] == ["Conflict"]
    assert "fraud.example.com (as *.example.com) on gateway istio-system/public" in (
        seen.problems[0].message
    )


def test_without_suspects_the_router_reads_nothing_more() -> None:
    index = VirtualServiceIndex()
    index.apply("ADDED", foreign_vs(["unrelated.example.org"]))
    router = FakeRouter({}, index)
    observe(router)
    assert sorted(r[0] for r in router.reads) == [
        "destinationrules", "services", "virtualservices"]


def test_observe_reports_the_umbrella_revision_and_a_leftover_destination_rule() -> None:
    legacy_rule = {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                   "metadata": {"name": "fraud", "namespace": "shop",
                                "ownerReferences": [OWNER.to_k8s()]}}
    objects = {
        ("virtualservices", "shop", "fraud"): written({1: 90, 2: 10}),
        ("services", "shop", "fraud"): build_umbrella_service("fraud", "shop", OWNER, 80, 1),
        ("destinationrules", "shop", "fraud"): legacy_rule,
    }
    router = FakeRouter(objects, VirtualServiceIndex())
    seen = observe(router)
    assert (dict(seen.weights), seen.primary_revision, seen.problems) == ({1: 90, 2: 10}, 1, ())
    assert "DestinationRule shop/fraud is left" in seen.untidy
    del objects[("destinationrules", "shop", "fraud")]
    foreign = build_umbrella_service("fraud", "shop", OWNER, 80, 1)
    foreign["metadata"]["ownerReferences"] = []
    objects[("services", "shop", "fraud")] = foreign
    seen = observe(router)
    assert seen.untidy == "" and seen.primary_revision is None
    assert [p.kind for p in seen.problems] == ["Conflict"]
    assert "Service shop/fraud exists and is not owned" in seen.problems[0].message
