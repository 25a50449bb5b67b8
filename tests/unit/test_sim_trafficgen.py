"""Tests of the Istio data-plane stand-in: VS parsing, weighted routing, mirroring, metrics."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rewind_demo._http import request
from rewind_demo.modelserver import ModelServerConfig, RunningModelServer, start_modelserver
from rewind_demo.trafficgen import (
    GATEWAY_CONTROLLER,
    ISTIO_DURATION_BUCKETS_MS,
    ISTIO_LABELS,
    Backend,
    Destination,
    Plan,
    RouteTable,
    TrafficGenerator,
    backends_file_source,
    backends_from_destination_rule,
    kube_backends_source,
    kube_route_source,
    parse_backend_flag,
    parse_routes,
    parse_virtual_service,
    static_route_source,
)

NS = "ml"
HOST = "fraud.example.com"


def vs(
    weights: dict[str, int], mirror: str | None = None, pct: float | None = None
) -> dict[str, Any]:
    """A VirtualService shaped like the router adapter's."""
    rule: dict[str, Any] = {
        "route": [
            {"destination": {"host": "fraud", "subset": s, "port": {"number": 80}}, "weight": w}
            for s, w in weights.items()
        ]
    }
    if mirror is not None:
        rule["mirror"] = {"host": "fraud", "subset": mirror, "port": {"number": 80}}
        if pct is not None:
            rule["mirrorPercentage"] = {"value": pct}
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "fraud", "namespace": NS},
        "spec": {"hosts": [HOST], "http": [rule]},
    }


@pytest.fixture
def servers() -> Iterator[dict[str, RunningModelServer]]:
    """Stable r1 (healthy) and candidate r2 (always failing) model servers."""
    r1 = start_modelserver(ModelServerConfig(revision="fraud-r1", namespace=NS, seed=1))
    r2 = start_modelserver(
        ModelServerConfig(revision="fraud-r2", namespace=NS, error_rate=1.0, seed=2)
    )
    try:
        yield {"r1": r1, "r2": r2}
    finally:
        r1.stop()
        r2.stop()


def backends(servers: dict[str, RunningModelServer]) -> dict[str, Backend]:
    return {
        s: Backend(url=srv.url, workload=f"fraud-{s}", namespace=NS, app="fraud")
        for s, srv in servers.items()
    }


def test_parse_virtual_service_routes_and_mirror() -> None:
    table = parse_virtual_service(vs({"r1": 90, "r2": 10}, mirror="r3", pct=12.5), HOST)
    assert [(r.destination.subset, r.weight) for r in table.routes] == [("r1", 90), ("r2", 10)]
    assert table.routes[0].destination == Destination("fraud", "r1", 80)
    assert [(m.destination.subset, m.percent) for m in table.mirrors] == [("r3", 12.5)]
    with pytest.raises(ValueError):
        parse_virtual_service(vs({"r1": 100}), "other.example.com")


def test_parse_virtual_service_istio_defaults() -> None:
    one = vs({"r1": 100})
    del one["spec"]["http"][0]["route"][0]["weight"]
    assert parse_virtual_service(one).routes[0].weight == 100
    # mirror without mirrorPercentage mirrors everything, as in Istio
    assert parse_virtual_service(vs({"r1": 100}, mirror="r2")).mirrors[0].percent == 100.0
    newer = vs({"r1": 100})
    newer["spec"]["http"][0]["mirrors"] = [
        {"destination": {"host": "fraud", "subset": "r2"}, "percentage": {"value": 5}}
    ]
    assert parse_virtual_service(newer).mirrors[0].percent == 5.0
    assert parse_virtual_service({"spec": {"hosts": [HOST]}}) == RouteTable()
    with pytest.raises(ValueError):
        parse_virtual_service(vs({"r1": 100}, mirror="r2", pct=150))


def test_header_routes_before_the_weights_take_none_of_the_generated_requests() -> None:
    """Rewind's A/B route matches callers by header; the generator sends no such header."""
    table = vs({"r1": 80, "r2": 20})
    header_route = {"name": "rewind-headers",
                    "match": [{"name": "beta", "headers": {"x-group": {"exact": "beta"}}}],
                    "route": [{"destination": {"host": "fraud", "subset": "r2"}}]}
    table["spec"]["http"].insert(0, header_route)
    parsed = parse_virtual_service(table, HOST)
    assert [(r.destination.subset, r.weight) for r in parsed.routes] == [("r1", 80), ("r2", 20)]
    only_matches = vs({"r1": 100})
    only_matches["spec"]["http"] = [header_route]
    assert parse_virtual_service(only_matches) == RouteTable()  # Istio: no route, a 404


@pytest.mark.parametrize(
    "weights",
    [{"r1": 90, "r2": 10}, {"r1": 50, "r2": 50}, {"r1": 0, "r2": 100}, {"r1": 1, "r2": 99}],
)
def test_weighted_routing_converges(weights: dict[str, int]) -> None:
    table = parse_virtual_service(vs(weights))
    rng = random.Random(1234)
    n = 20000
    picks = [table.choose(rng).primary for _ in range(n)]
    for subset, weight in weights.items():
        share = sum(p is not None and p.subset == subset for p in picks) / n
        assert abs(share - weight / 100) < 0.01, (subset, share)
    if 0 in weights.values():
        zero = next(s for s, w in weights.items() if w == 0)
        assert all(p is not None and p.subset != zero for p in picks)


def test_mirror_share_and_determinism() -> None:
    table = parse_virtual_service(vs({"r1": 100}, mirror="r2", pct=25))
    rng_a, rng_b = random.Random(7), random.Random(7)
    plans = [table.choose(rng_a) for _ in range(20000)]
    assert plans == [table.choose(rng_b) for _ in range(20000)]
    share = sum(bool(p.mirrors) for p in plans) / len(plans)
    assert abs(share - 0.25) < 0.01
    assert all(p.primary == Destination("fraud", "r1", 80) for p in plans)


def test_no_weight_means_unrouted() -> None:
    assert RouteTable().choose(random.Random(1)) == Plan(None, ())


def test_mirror_never_changes_user_response(servers: dict[str, RunningModelServer]) -> None:
    gen = TrafficGenerator(
        static_route_source(vs({"r1": 100, "r2": 0}, mirror="r2", pct=50)),
        backends(servers),
        seed=3,
        namespace=NS,
    )
    try:
        gen.refresh()
        answers = [gen.handle() for _ in range(200)]
        assert gen.drain(5.0)
    finally:
        gen.close()
    assert all(a is not None and a.code == 200 and a.workload == "fraud-r1" for a in answers)
    assert all(a is not None and a.body["revision"] == "fraud-r1" for a in answers)
    assert gen.stats.user_total() == 200 and gen.stats.user_total("fraud-r2") == 0
    mirrored = gen.stats.mirror_total("fraud-r2")
    assert 80 <= mirrored <= 120
    assert gen.stats.mirror[("fraud-r2", 500)] == mirrored  # shadow errors are measurable
    # the shadow's server really got exactly the mirrored requests
    fams = {
        f.name: f for f in text_string_to_metric_families(servers["r2"].sim.metrics_text().decode())
    }
    served = sum(
        s.value for s in fams["model_predictions"].samples if s.name == "model_predictions_total"
    )
    assert served == mirrored


def _istio_samples(gen: TrafficGenerator) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(gen.metrics_text().decode()):
        for s in fam.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def test_istio_metric_names_and_labels(servers: dict[str, RunningModelServer]) -> None:
    gen = TrafficGenerator(
        static_route_source(vs({"r1": 100}, mirror="r2", pct=100)),
        backends(servers),
        seed=1,
        namespace=NS,
    )
    try:
        gen.refresh()
        for _ in range(10):
            gen.handle()
        assert gen.drain(5.0)
    finally:
        gen.close()
    samples = _istio_samples(gen)
    every = samples["istio_requests_total"]
    for labels, _ in every:
        assert set(labels) == set(ISTIO_LABELS)
        assert labels["source_workload"] == "trafficgen"
    for reporter in ("source", "destination"):  # both sidecars saw every answered request
        seen = {(lbl["destination_workload"], lbl["response_code"]): v
                for lbl, v in every if lbl["reporter"] == reporter}
        assert seen == {("fraud-r1", "200"): 10.0, ("fraud-r2", "500"): 10.0}, reporter
    totals = [(lbl, v) for lbl, v in every if lbl["reporter"] == "source"]
    r2 = next(lbl for lbl, _ in totals if lbl["destination_workload"] == "fraud-r2")
    assert r2["destination_service_name"] == "fraud-r2"
    assert r2["destination_workload_namespace"] == NS
    assert r2["destination_service"] == f"fraud-r2.{NS}.svc.cluster.local"
    r1_buckets = [
        float(lbl["le"])
        for lbl, _ in samples["istio_request_duration_milliseconds_bucket"]
        if lbl["destination_workload"] == "fraud-r1" and lbl["reporter"] == "source"
    ]
    assert r1_buckets == [*ISTIO_DURATION_BUCKETS_MS, float("inf")]
    counts = {
        lbl["destination_workload"]: v
        for lbl, v in samples["istio_request_duration_milliseconds_count"]
        if lbl["reporter"] == "source"
    }
    assert counts == {"fraud-r1": 10.0, "fraud-r2": 10.0}


def test_unresolved_subset_and_dead_backend_look_like_envoy(tmp_path: Path) -> None:
    dead = start_modelserver(ModelServerConfig(revision="gone"))
    url = dead.url
    dead.stop()  # nothing listens there any more
    gen = TrafficGenerator(
        static_route_source(vs({"r1": 50, "r9": 50})),
        {"r1": Backend(url=url, workload="fraud-r1", namespace=NS)},
        seed=4,
        timeout=1.0,
    )
    try:
        gen.refresh()
        answers = [gen.handle() for _ in range(40)]
    finally:
        gen.close()
    flags = {(a.workload, a.code, a.flags) for a in answers if a is not None}
    assert flags == {("fraud-r1", 503, "UF"), ("unknown", 503, "UH")}
    labels = [lbl for lbl, _ in _istio_samples(gen)["istio_requests_total"]]
    assert {lbl["destination_workload"] for lbl in labels} == {"fraud-r1", "unknown"}
    # No server answered, so no server-side sidecar reported anything.
    assert {lbl["reporter"] for lbl in labels} == {"source"}


def test_a_breaker_fallback_service_is_answered_by_the_backend_of_its_name(
    servers: dict[str, RunningModelServer],
) -> None:
    # The route of a tripped circuit breaker, as the router adapter writes it.
    fallback = {
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "fraud", "namespace": NS},
        "spec": {"hosts": [HOST], "http": [{"name": "rewind-breaker", "route": [
            {"destination": {"host": f"fraud-rules.{NS}.svc.cluster.local",
                             "port": {"number": 8080}}}]}]},
    }
    rules = Backend(url=servers["r1"].url, workload="fraud-rules", namespace=NS)
    gen = TrafficGenerator(static_route_source(fallback),
                           {**backends(servers), "fraud-rules": rules}, seed=1)
    try:
        gen.refresh()
        answers = [gen.handle() for _ in range(5)]
    finally:
        gen.close()
    assert {(a.workload, a.code) for a in answers if a is not None} == {("fraud-rules", 200)}
    assert gen.stats.user_total("fraud-rules") == 5 and gen.stats.user_total("fraud-r1") == 0


def test_run_is_paced_bounded_and_follows_vs_changes(
    servers: dict[str, RunningModelServer],
) -> None:
    current = {"vs": vs({"r1": 100, "r2": 0})}
    gen = TrafficGenerator(
        lambda: current["vs"], backends(servers), rate=200, seed=5, poll_interval=0.05, namespace=NS
    )
    try:
        started = time.monotonic()
        summary = gen.run(duration=0.25)
        elapsed = time.monotonic() - started
        assert elapsed < 2.0
        assert 10 <= summary["userTotal"] <= 51  # paced: never more than rate * duration + 1
        assert gen.stats.user_total("fraud-r2") == 0
        current["vs"] = vs({"r1": 0, "r2": 100})  # the operator shifted all traffic
        summary = gen.run(duration=5.0, max_requests=40)
    finally:
        gen.close()
    assert gen.stats.user_total("fraud-r2") == 40
    assert summary["dropped"] == 0


def test_refresh_errors_keep_last_good_table(servers: dict[str, RunningModelServer]) -> None:
    calls = {"n": 0}

    def flaky() -> dict[str, Any]:
        calls["n"] += 1
        if calls["n"] > 1:
            raise ConnectionError("API server down")
        return vs({"r1": 100})

    gen = TrafficGenerator(flaky, backends(servers), seed=1)
    try:
        first = gen.refresh()
        assert gen.refresh() == first
        assert gen.stats.refresh_errors == 1
        assert gen.handle() is not None
    finally:
        gen.close()


class FakeCustomObjects:
    """Just the two CustomObjectsApi calls the route source makes."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items
        self.calls: list[tuple[Any, ...]] = []

    def list_namespaced_custom_object(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(args)
        return {"items": self.items}

    def get_namespaced_custom_object(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(args)
        for item in self.items:
            if item["metadata"]["name"] == args[4]:
                return item
        err = RuntimeError("not found")
        err.status = 404  # type: ignore[attr-defined]
        raise err


def test_kube_route_source_by_host_and_name() -> None:
    other = vs({"r1": 100})
    other["metadata"]["name"] = "aaa-other"
    other["spec"]["hosts"] = ["other.example.com"]
    api = FakeCustomObjects([other, vs({"r1": 30, "r2": 70})])
    got = kube_route_source(NS, host=HOST, api=api)()
    assert got is not None and got["metadata"]["name"] == "fraud"
    assert api.calls[0] == ("networking.istio.io", "v1", NS, "virtualservices")
    assert kube_route_source(NS, name="fraud", api=api)() is not None
    assert kube_route_source(NS, name="missing", api=api)() is None
    assert kube_route_source(NS, host="none.example.com", api=api)() is None


def test_backends_only_to_loopback() -> None:
    for url in (
        "http://10.0.0.1:80",
        "http://localhost:80",
        "https://127.0.0.1:1",
        "http://127.0.0.1",
    ):
        with pytest.raises(ValueError):
            Backend(url=url, workload="w")


def test_backends_from_destination_rule() -> None:
    dr = {
        "spec": {
            "host": "fraud",
            "subsets": [
                {"name": "r1", "labels": {"rewind.dev/revision": "1"}},
                {"name": "r2", "labels": {"rewind.dev/revision": "fraud-r2", "version": "2.1.0"}},
                {"name": "r3", "labels": {"rewind.dev/revision": "3"}},
            ],
        }
    }
    urls = {"fraud-r1": "http://127.0.0.1:1001", "fraud-r2": "http://127.0.0.1:1002"}
    got = backends_from_destination_rule(dr, release="fraud", namespace=NS, urls=urls)
    assert set(got) == {"r1", "r2"}
    assert got["r2"] == Backend(
        url="http://127.0.0.1:1002", workload="fraud-r2", namespace=NS, app="fraud", version="2.1.0"
    )
    assert got["r1"].service_name == "fraud-r1"


def test_backend_flag_and_file(tmp_path: Path) -> None:
    subset, b = parse_backend_flag("r3=http://127.0.0.1:5000", release="fraud", namespace=NS)
    assert (subset, b.workload, b.namespace) == ("r3", "fraud-r3", NS)
    subset, b = parse_backend_flag("blue=svc-b@http://127.0.0.1:5001", release=None, namespace=NS)
    assert (subset, b.workload) == ("blue", "svc-b")
    with pytest.raises(ValueError):
        parse_backend_flag("r3=http://127.0.0.1:5000", release=None, namespace=NS)
    path = tmp_path / "backends.json"
    source = backends_file_source(path, NS)
    assert source() == {}
    path.write_text(json.dumps({"r1": {"url": "http://127.0.0.1:5002", "workload": "fraud-r1"}}))
    assert source()["r1"].workload == "fraud-r1"


def test_metrics_endpoint_serves_istio_metrics(servers: dict[str, RunningModelServer]) -> None:
    gen = TrafficGenerator(static_route_source(vs({"r1": 100})), backends(servers), seed=1)
    try:
        gen.refresh()
        gen.handle()
        with gen.serve_metrics() as srv:
            status, body = request("GET", srv.url + "/metrics")
            assert request("GET", srv.url + "/healthz")[0] == 200
    finally:
        gen.close()
    assert status == 200
    assert b"istio_requests_total{" in body and b'destination_workload="fraud-r1"' in body
    assert b"istio_request_duration_milliseconds_bucket{" in body


def test_kube_backends_source_reads_destination_rule() -> None:
    dr = {
        "metadata": {"name": "fraud"},
        "spec": {
            "host": "fraud",
            "subsets": [
                {"name": "r1", "labels": {"rewind.dev/revision": "1"}},
                {"name": "r2", "labels": {"rewind.dev/revision": "2"}},
            ],
        },
    }
    api = FakeCustomObjects([dr])
    urls = {"fraud-r1": "http://127.0.0.1:1001"}
    source = kube_backends_source(
        NS, release="fraud", urls=lambda: urls, service_host="fraud", api=api
    )
    assert set(source()) == {"r1"}
    assert api.calls[0] == ("networking.istio.io", "v1", NS, "destinationrules")
    urls["fraud-r2"] = "http://127.0.0.1:1002"  # a new revision's server came up
    assert set(source()) == {"r1", "r2"}
    assert kube_backends_source(NS, release="fraud", urls=urls, name="other", api=api)() == {}


# -- Gateway API: the same generator following an HTTPRoute --------------------------------


def http_route(weights: dict[int, int], mirror: int | None = None, pct: int = 0,
               header: int | None = None) -> dict[str, Any]:
    """An HTTPRoute as the operator's Gateway API router writes it."""
    from rewind.adapters.base import OwnerRef
    from rewind.adapters.gateway_api import build_http_route
    from rewind.api import TrafficSpec

    traffic = TrafficSpec.model_validate({
        "hosts": [HOST], "gatewayAPI": {"parentRefs": [{"name": "public"}]},
        "headerRoutes": [{"name": "beta", "headers": [{"name": "x-group", "exact": "beta"}]}],
    })
    body = build_http_route("fraud", NS, OwnerRef("fraud", "uid-1"), traffic, weights,
                            mirror, pct, header)
    body["metadata"]["generation"] = 3
    return body


def test_parse_http_route_weights_mirror_and_the_header_rule_taking_nothing() -> None:
    table = parse_routes(http_route({1: 80, 2: 20}, mirror=2, pct=25, header=2), HOST)
    assert [(r.destination.subset, r.weight) for r in table.routes] == [("r1", 80), ("r2", 20)]
    assert table.routes[0].destination == Destination("fraud-r1", "r1", 80)
    assert [(m.destination.subset, m.percent) for m in table.mirrors] == [("r2", 25.0)]
    with pytest.raises(ValueError, match="does not serve host"):
        parse_routes(http_route({1: 100}), "other.example.com")


def test_parse_http_route_follows_gateway_api_defaults() -> None:
    route = {"kind": "HTTPRoute", "spec": {"rules": [{"backendRefs": [
        {"name": "fraud-r1", "port": 80}, {"name": "fraud-r2", "port": 80}],
        "filters": [{"type": "RequestMirror", "requestMirror": {
            "backendRef": {"name": "fraud-r2", "port": 80},
            "fraction": {"numerator": 1, "denominator": 8}}}]}]}}
    table = parse_routes(route)
    assert [r.weight for r in table.routes] == [1, 1]  # proportional, default 1
    assert table.mirrors[0].percent == 12.5
    rng = random.Random(7)
    picks = [table.choose(rng).primary for _ in range(2000)]
    share = sum(1 for p in picks if p is not None and p.subset == "r2") / len(picks)
    assert 0.45 < share < 0.55


class FakeGatewayObjects(FakeCustomObjects):
    """Plus the status patch a gateway controller makes."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        super().__init__(items)
        self.patches: list[tuple[Any, ...]] = []

    def patch_namespaced_custom_object_status(self, *args: Any) -> None:
        self.patches.append(args)
        for item in self.items:
            if item["metadata"]["name"] == args[4]:
                item["status"] = args[5]["status"]


def test_following_an_http_route_accepts_each_generation_as_a_gateway_would() -> None:
    route = http_route({1: 100})
    api = FakeGatewayObjects([route])
    source = kube_route_source(NS, name="fraud", api=api, kind="HTTPRoute")
    got = source()
    assert got is not None and got["kind"] == "HTTPRoute"
    assert api.calls[0][:4] == ("gateway.networking.k8s.io", "v1", NS, "httproutes")
    [patch] = api.patches
    parents = patch[5]["status"]["parents"]
    assert [p["parentRef"]["name"] for p in parents] == ["public"]
    assert parents[0]["controllerName"] == GATEWAY_CONTROLLER
    assert {(c["type"], c["status"], c["observedGeneration"])
            for c in parents[0]["conditions"]} == {("Accepted", "True", 3),
                                                   ("ResolvedRefs", "True", 3)}
    # The operator's router reads that as accepted.
    from rewind.adapters.gateway_api import acceptance_problems

    assert acceptance_problems(route) == []
    source()
    assert len(api.patches) == 1  # the same generation is not accepted twice
    route["metadata"]["generation"] = 4
    source()
    assert len(api.patches) == 2
    assert kube_route_source(NS, name="fraud", api=FakeGatewayObjects([http_route({1: 100})]),
                             kind="HTTPRoute", accept=False)() is not None
