"""Route conflicts: Istio's host, gateway and exportTo rules, and the index that finds them
without listing VirtualServices."""

from __future__ import annotations

import random
from typing import Any

import pytest

from rewind.adapters.route_index import (
    MESH,
    Overlap,
    RouteClaim,
    VirtualServiceIndex,
    conflict_message,
    hosts_overlap,
    overlaps,
    resolve_gateway,
    resolve_host,
    visible_to,
)

NS = "shop"
FRAUD_UID = "0b7c6a2e-1111-2222-3333-444455556666"


def vs(
    name: str,
    namespace: str,
    hosts: list[str],
    gateways: list[str] | None = None,
    export_to: list[str] | None = None,
    *,
    release: str | None = None,
    managers: tuple[str, ...] = (),
    version: str = "1",
) -> dict[str, Any]:
    """A VirtualService as the watch delivers it; ``release`` makes it Rewind's."""
    spec: dict[str, Any] = {"hosts": hosts, "http": [{"route": [{"destination": {"host": "x"}}]}]}
    if gateways is not None:
        spec["gateways"] = gateways
    if export_to is not None:
        spec["exportTo"] = export_to
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "resourceVersion": version}
    if release is not None:
        meta["labels"] = {"app.kubernetes.io/managed-by": "rewind", "rewind.dev/release": release}
        meta["ownerReferences"] = [{"apiVersion": "rewind.dev/v1alpha1", "kind": "ModelRelease",
                                    "name": release, "uid": FRAUD_UID, "controller": True}]
    meta["managedFields"] = [
        {"manager": m, "operation": "Update", "fieldsV1": {"f:spec": {"f:http": {}}}}
        for m in ("rewind-operator", *managers)
    ]
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": meta, "spec": spec}


def fraud(gateways: list[str] | None = None, hosts: list[str] | None = None) -> RouteClaim:
    """The release fraud's own claim, as its VirtualService is written."""
    gws = [*(gateways or []), MESH] if gateways else []
    return RouteClaim.wanted("fraud", NS, [*(hosts or ["fraud.example.com"]),
                                           f"fraud.{NS}.svc.cluster.local"], gws)


# -- Istio's resolution rules -------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "resolved"),
    [
        ("fraud", "fraud.shop.svc.cluster.local"),  # short name: the VS's namespace
        ("fraud.shop", "fraud.shop"),  # a dot: taken as written, as istiod does
        ("fraud.example.com", "fraud.example.com"),
        ("*.example.com", "*.example.com"),
        ("*", "*"),
        ("10.0.0.7", "10.0.0.7"),
        ("Fraud.Example.com", "fraud.example.com"),
    ],
)
def test_hosts_resolve_as_istiod_reads_them(host: str, resolved: str) -> None:
    assert resolve_host(host, NS) == resolved


@pytest.mark.parametrize(
    ("gateway", "resolved"),
    [
        ("istio-system/public", "istio-system/public"),
        ("./public", "shop/public"),
        ("public", "shop/public"),  # no namespace: the VirtualService's
        ("public.istio-system.svc.cluster.local", "istio-system/public"),  # legacy FQDN
        ("public.istio-system", "istio-system/public"),
        ("mesh", "mesh"),
    ],
)
def test_gateways_resolve_as_istiod_reads_them(gateway: str, resolved: str) -> None:
    assert resolve_gateway(gateway, NS) == resolved


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        # Istio's own examples for host.Name.Matches
        ("foo.com", "foo.com", True),
        ("foo.com", "bar.com", False),
        ("*.com", "foo.com", True),
        ("bar.com", "*.com", True),
        ("*.foo.com", "foo.com", False),
        ("*", "foo.com", True),
        ("*", "*.com", True),
        ("*.com", "*.foo.com", True),
        ("foo.com", "*.bar.com", False),
        # deeper names and look-alikes
        ("*.example.com", "a.b.example.com", True),
        ("*.example.com", "fraudexample.com", False),
        ("*.a.example.com", "*.b.example.com", False),
    ],
)
def test_hosts_overlap_like_istios_host_matching(a: str, b: str, overlap: bool) -> None:
    assert hosts_overlap(a, b) is overlap
    assert hosts_overlap(b, a) is overlap


@pytest.mark.parametrize(
    ("export_to", "viewer", "visible"),
    [
        ([], "shop", True),  # the default: everywhere
        (["*"], "shop", True),
        (["."], "team-b", True),  # its own namespace
        (["."], "shop", False),
        (["shop"], "shop", True),
        (["team-c", "shop"], "shop", True),
        (["team-c"], "shop", False),
        (["~"], "team-b", False),
    ],
)
def test_export_to_decides_who_sees_a_virtual_service(
    export_to: list[str], viewer: str, visible: bool
) -> None:
    assert visible_to(export_to, "team-b", viewer) is visible


def test_a_claim_resolves_hosts_and_gateways_and_no_gateways_means_mesh() -> None:
    claim = RouteClaim.of(vs("legacy", "team-b", ["fraud", "*.example.com"]))
    assert claim.hosts == ("*.example.com", "fraud.team-b.svc.cluster.local")
    assert claim.gateways == (MESH,)
    assert claim.release is None
    bound = RouteClaim.of(vs("edge", "team-b", ["a.example.com"], ["public", "mesh"]))
    assert bound.gateways == ("mesh", "team-b/public")


def test_only_rewinds_own_virtual_services_name_their_release() -> None:
    assert RouteClaim.of(vs("fraud", NS, ["x.example.com"], release="fraud")).release == "fraud"
    labelled_only = vs("fraud", NS, ["x.example.com"], release="fraud")
    del labelled_only["metadata"]["ownerReferences"]
    assert RouteClaim.of(labelled_only).release is None
    renamed = vs("copy", NS, ["x.example.com"], release="fraud")  # a copy of our object
    assert RouteClaim.of(renamed).release is None


# -- what conflicts with a release --------------------------------------------------------


def test_same_host_on_the_same_gateway_in_another_namespace_conflicts() -> None:
    other = RouteClaim.of(vs("catch-all", "team-b", ["fraud.example.com"],
                             ["istio-system/public"]))
    assert overlaps(fraud(["istio-system/public"]), other) == [
        Overlap("team-b/catch-all", "fraud.example.com", "istio-system/public",
                "fraud.example.com")
    ]


def test_another_gateway_does_not_conflict() -> None:
    other = RouteClaim.of(vs("internal", "team-b", ["fraud.example.com"],
                             ["istio-system/internal"]))
    assert overlaps(fraud(["istio-system/public"]), other) == []


def test_no_gateways_is_mesh_which_rewind_always_routes_too() -> None:
    other = RouteClaim.of(vs("legacy", "team-b", ["fraud.example.com"]))
    found = overlaps(fraud(["istio-system/public"]), other)
    assert [(o.host, o.gateway) for o in found] == [("fraud.example.com", MESH)]
    assert overlaps(fraud(), other)[0].gateway == MESH


def test_a_short_name_conflicts_in_the_release_namespace_only() -> None:
    here = RouteClaim.of(vs("legacy", NS, ["fraud"]))
    assert [o.host for o in overlaps(fraud(), here)] == ["fraud.shop.svc.cluster.local"]
    elsewhere = RouteClaim.of(vs("legacy", "team-b", ["fraud"]))  # fraud.team-b...
    assert overlaps(fraud(), elsewhere) == []


@pytest.mark.parametrize(
    ("theirs", "ours"),
    [("*.example.com", "fraud.example.com"), ("api.fraud.example.com", "*.fraud.example.com"),
     ("*", "fraud.example.com")],
)
def test_wildcards_overlap_in_both_directions(theirs: str, ours: str) -> None:
    other = RouteClaim.of(vs("wild", "team-b", [theirs], ["istio-system/public"]))
    found = overlaps(fraud(["istio-system/public"], hosts=[ours]), other)
    assert (ours, theirs) in [(o.host, o.their_host) for o in found]


def test_export_to_dot_in_another_namespace_does_not_touch_our_mesh_traffic() -> None:
    private = RouteClaim.of(vs("local-override", "team-b", ["fraud.shop.svc.cluster.local"],
                               export_to=["."]))
    assert overlaps(fraud(), private) == []
    exported_here = RouteClaim.of(vs("x", "team-b", ["fraud.shop.svc.cluster.local"],
                                     export_to=["shop"]))
    assert len(overlaps(fraud(), exported_here)) == 1
    same_namespace = RouteClaim.of(vs("y", NS, ["fraud"], export_to=["."]))
    assert len(overlaps(fraud(), same_namespace)) == 1


def test_on_a_gateway_export_to_is_judged_from_the_gateways_namespace() -> None:
    # exportTo "." in the gateway's own namespace: its pods see it.
    ingress = RouteClaim.of(vs("edge", "istio-system", ["fraud.example.com"],
                               ["public"], export_to=["."]))
    found = overlaps(fraud(["istio-system/public"]), ingress)
    assert [o.gateway for o in found] == ["istio-system/public"]
    # exportTo "." elsewhere: the gateway never applies it.
    hidden = RouteClaim.of(vs("edge", "team-b", ["fraud.example.com"],
                              ["istio-system/public"], export_to=["."]))
    assert overlaps(fraud(["istio-system/public"]), hidden) == []


def test_the_releases_own_virtual_service_is_never_a_conflict() -> None:
    own = RouteClaim.of(vs("fraud", NS, ["fraud.example.com", "fraud.shop.svc.cluster.local"],
                           release="fraud"))
    assert overlaps(fraud(), own) == []


def test_another_releases_virtual_service_is_a_conflict() -> None:
    other = RouteClaim.of(vs("fraud-v2", NS, ["fraud.example.com"], release="fraud-v2"))
    assert [o.other for o in overlaps(fraud(), other)] == ["shop/fraud-v2"]


def test_the_message_names_each_virtual_service_host_and_gateway() -> None:
    message = conflict_message([
        Overlap("team-b/catch-all", "fraud.example.com", "istio-system/public", "*.example.com"),
        Overlap("team-b/catch-all", "fraud.example.com", MESH, "*.example.com"),
        Overlap("team-c/legacy", f"fraud.{NS}.svc.cluster.local", MESH,
                f"fraud.{NS}.svc.cluster.local"),
    ])
    assert message.startswith(
        "VirtualServices team-b/catch-all (fraud.example.com (as *.example.com) on gateway "
        "istio-system/public, fraud.example.com (as *.example.com) on mesh), team-c/legacy "
        "(fraud.shop.svc.cluster.local on mesh) also route this release's hosts"
    )
    single = conflict_message([Overlap("a/b", "h.example.com", MESH, "h.example.com")])
    assert single.startswith("VirtualService a/b (h.example.com on mesh) also routes")


# -- the index ----------------------------------------------------------------------------


def test_the_index_finds_conflicts_and_forgets_deleted_virtual_services() -> None:
    index = VirtualServiceIndex()
    index.apply(None, vs("fraud", NS, ["fraud.example.com"], release="fraud"))
    index.apply(None, vs("catch-all", "team-b", ["*.example.com"]))
    index.apply(None, vs("unrelated", "team-b", ["shop.example.org"]))
    assert [c.ref for c in index.candidates(fraud())] == ["team-b/catch-all"]
    index.apply("DELETED", vs("catch-all", "team-b", ["*.example.com"]))
    assert index.candidates(fraud()) == []
    assert len(index) == 2


def test_an_update_moves_a_virtual_service_off_the_hosts_it_no_longer_names() -> None:
    index = VirtualServiceIndex()
    index.apply("ADDED", vs("legacy", "team-b", ["fraud.example.com"]))
    assert len(index.candidates(fraud())) == 1
    index.apply("MODIFIED", vs("legacy", "team-b", ["old.example.com"], version="2"))
    assert index.candidates(fraud()) == []


def test_discard_keeps_a_newer_version_the_watch_brought() -> None:
    index = VirtualServiceIndex()
    index.apply(None, vs("legacy", "team-b", ["fraud.example.com"], version="7"))
    index.discard("team-b", "legacy", "6")  # read back as gone, but the watch has v7
    assert len(index.candidates(fraud())) == 1
    index.discard("team-b", "legacy", "7")
    assert index.candidates(fraud()) == []


def test_a_change_wakes_the_releases_it_concerns() -> None:
    index = VirtualServiceIndex()
    own = vs("fraud", NS, ["fraud.example.com", "fraud.shop.svc.cluster.local"],
             ["istio-system/public", "mesh"], release="fraud")
    assert index.apply(None, own) == set()
    assert index.apply(None, vs("speech", NS, ["speech.example.com"], release="speech")) == set()
    foreign = vs("catch-all", "team-b", ["*.example.com"], ["istio-system/public"])
    # speech routes only mesh, which the foreign VirtualService does not name. A release
    # named catch-all in team-b would be held by it (it has Rewind's name): woken too.
    catch_all = ("team-b", "catch-all")
    assert index.apply("ADDED", foreign) == {(NS, "fraud"), catch_all}
    moved = vs("catch-all", "team-b", ["*.example.org"], ["istio-system/public"], version="2")
    assert index.apply("MODIFIED", moved) == {(NS, "fraud"), catch_all}  # it was there before
    assert index.apply("MODIFIED", moved) == {catch_all}
    assert index.apply("DELETED", moved) == {catch_all}


def test_an_edit_or_deletion_of_rewinds_own_virtual_service_wakes_its_release() -> None:
    index = VirtualServiceIndex()
    own = vs("fraud", NS, ["fraud.example.com"], release="fraud")
    assert index.apply(None, own) == set()  # Rewind's own write: nothing to do
    edited = vs("fraud", NS, ["fraud.example.com"], release="fraud", managers=("kubectl-patch",))
    assert index.apply("MODIFIED", edited) == {(NS, "fraud")}
    assert index.apply("MODIFIED", own) == set()  # restored
    assert index.apply("DELETED", own) == {(NS, "fraud")}


HOSTS = [
    "a.example.com", "b.example.com", "x.a.example.com", "*.example.com", "*.a.example.com",
    "*.com", "*", "example.com", "a.example.org", "*.example.org", "fraud", "web",
]
GATEWAYS = [[], ["mesh"], ["istio-system/public"], ["public"], ["istio-system/public", "mesh"]]
EXPORTS = [None, ["*"], ["."], ["shop"], ["team-c"]]


def test_the_index_answers_exactly_what_comparing_with_every_virtual_service_would() -> None:
    rng = random.Random(7)
    for _ in range(30):
        index = VirtualServiceIndex()
        objects = []
        for i in range(40):
            namespace = rng.choice([NS, "team-b", "istio-system"])
            obj = vs(f"vs{i}", namespace, rng.sample(HOSTS, rng.randint(1, 3)),
                     rng.choice(GATEWAYS) or None, rng.choice(EXPORTS))
            objects.append(obj)
            index.apply("ADDED", obj)
        for obj in rng.sample(objects, 10):
            index.apply("DELETED", obj)
            objects.remove(obj)
        for _ in range(10):
            mine = fraud(rng.choice([[], ["istio-system/public"], ["public"]]),
                         hosts=rng.sample([h for h in HOSTS if h != "*"], 2))
            brute = sorted(c.ref for c in map(RouteClaim.of, objects) if overlaps(mine, c))
            assert [c.ref for c in index.candidates(mine)] == brute
