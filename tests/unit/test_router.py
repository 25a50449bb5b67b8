"""The Istio builders: what the mesh is told, checked without a cluster."""

from __future__ import annotations

from typing import Any

import pytest

from rewind.adapters.base import OwnerRef, RouteState
from rewind.adapters.router import (
    build_destination_rule,
    build_virtual_service,
    parse_routes,
    validate_weights,
)
from rewind.api import TrafficSpec

OWNER = OwnerRef(name="fraud", uid="0b7c6a2e-1111-2222-3333-444455556666")
HOST = "fraud.shop.svc.cluster.local"


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


def test_canary_split_routes_each_revision_to_its_subset_of_the_umbrella_service() -> None:
    route = vs({2: 90, 3: 10})["spec"]["http"][0]
    assert route["name"] == "rewind"
    assert route["route"] == [
        {"destination": {"host": HOST, "subset": "r2"}, "weight": 90},
        {"destination": {"host": HOST, "subset": "r3"}, "weight": 10},
    ]
    assert "mirror" not in route and "mirrorPercentage" not in route


def test_zero_weight_revisions_get_no_route_entry() -> None:
    route = vs({2: 0, 3: 100})["spec"]["http"][0]
    assert route["route"] == [{"destination": {"host": HOST, "subset": "r3"}, "weight": 100}]


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
    assert route["mirror"] == {"host": HOST, "subset": "r3"}
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


def test_mesh_is_not_duplicated_and_hosts_are_not_duplicated() -> None:
    traffic = TrafficSpec(hosts=[HOST, "fraud.example.com"], gateways=["mesh", "gw"])
    spec = build_virtual_service("fraud", "shop", OWNER, traffic, {1: 100})["spec"]
    assert spec["hosts"] == [HOST, "fraud.example.com"]
    assert spec["gateways"] == ["mesh", "gw"]


@pytest.mark.parametrize("kind", ["VirtualService", "DestinationRule"])
def test_both_objects_are_named_labelled_and_owned_by_the_release(kind: str) -> None:
    obj = (
        vs({1: 100})
        if kind == "VirtualService"
        else build_destination_rule("fraud", "shop", OWNER, [1])
    )
    assert obj["apiVersion"] == "networking.istio.io/v1"
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


def test_destination_rule_has_one_subset_per_revision_selected_by_label() -> None:
    rule = build_destination_rule("fraud", "shop", OWNER, [3, 1, 3])
    assert rule["spec"] == {
        "host": HOST,
        "subsets": [
            {"name": "r1", "labels": {"rewind.dev/revision": "1"}},
            {"name": "r3", "labels": {"rewind.dev/revision": "3"}},
        ],
    }


def test_destination_rule_rejects_non_revisions() -> None:
    with pytest.raises(ValueError, match="positive"):
        build_destination_rule("fraud", "shop", OWNER, [0])


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
                    "route": [{"destination": {"host": HOST, "subset": "r4"}}],
                    "mirror": {"host": HOST, "subset": "r5"},
                },
            ]
        }
    }
    state = parse_routes(hand_edited)
    assert state.weights == {4: 100}
    assert (state.mirror_revision, state.mirror_percent) == (5, 100)


def test_parse_routes_of_an_empty_object_is_empty() -> None:
    assert parse_routes({}) == RouteState({}, None, 0, None)
