"""Someone else's hands on the routes (issue 10, item 4), end to end.

Git owns the route options (``spec.traffic``): an edit of the release's VirtualService by
hand is reported as drift and undone; options put in the ModelRelease reach the
VirtualService and stay; header routes send their callers to the candidate only while it
is being released. Another VirtualService that routes the release's host on the same
gateway (or on the mesh) makes Istio pick one silently: the rollout holds, says which one,
and goes on once it is gone.

On the operator before this work (git 05a4a79) the hand edit is undone silently at the
next resync (no RouteDrift Event), spec.traffic has no timeout/retries/headerRoutes, and a
conflicting VirtualService never holds anything: every test here fails there.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Kubectl, wait_for
from tests.sandbox.operator_helpers import (
    HEALTHY,
    Rewind,
    assert_holds,
    canary,
    condition,
    policy_manifest,
    release_manifest,
    revision_of,
    timeline,
)

pytestmark = pytest.mark.sandbox

GATEWAY = "istio-system/public"
HEADER_ROUTES = [{"name": "beta", "headers": [{"name": "x-group", "exact": "beta"}]}]


def release_with(name: str, policy: str, *, version: int = 1, **traffic: Any) -> dict[str, Any]:
    """A release whose spec.traffic also has ``traffic`` (timeout, retries, gateways...)."""
    manifest = release_manifest(name, policy, version=version)
    manifest["spec"]["traffic"].update(traffic)
    return manifest


def http(rw: Rewind, name: str) -> list[dict[str, Any]]:
    routes: list[dict[str, Any]] = rw.get("virtualservice", name)["spec"]["http"]
    return routes


def weights(rw: Rewind, name: str) -> dict[int, int]:
    routes = rw.routes(name)
    assert routes is not None, f"no VirtualService {name}"
    return routes.weights


def ready(status: dict[str, Any]) -> bool:
    return condition(status, "Ready").get("status") == "True"


def foreign_virtual_service(
    name: str, namespace: str, hosts: list[str], gateways: list[str] | None = None,
    export_to: list[str] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "hosts": hosts,
        "http": [{"route": [{"destination": {"host": f"legacy.{namespace}.svc.cluster.local"}}]}],
    }
    if gateways:
        spec["gateways"] = gateways
    if export_to:
        spec["exportTo"] = export_to
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def apply(kubectl: Kubectl, obj: dict[str, Any]) -> None:
    kubectl("apply", "-f", "-", input=json.dumps(obj))


@pytest.fixture()
def other_namespace(kubectl: Kubectl, namespace: str) -> Iterator[str]:
    """A second namespace, for another team's VirtualService."""
    name = f"{namespace[:50]}-o{uuid.uuid4().hex[:4]}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


# -- (a) an edit by hand is drift: reported and undone ------------------------------------


def test_route_options_added_by_hand_are_reported_as_drift_and_removed(rw: Rewind) -> None:
    """The issue's input: r1 is Promoted; someone adds ``timeout: 120s`` and ``retries:
    {attempts: 0}`` to the VirtualService with kubectl patch. Git owns route options: the
    operator names the object and what changed in a RouteDrift Event, removes them, and
    Ready is True again."""
    rw.apply(policy_manifest("quick", canary((50, "2s"))))
    rw.promote_first_revision("chat", "quick")
    rw.wait_status("chat", "Ready", ready)

    patch = [
        {"op": "add", "path": "/spec/http/0/timeout", "value": "120s"},
        {"op": "add", "path": "/spec/http/0/retries", "value": {"attempts": 0}},
    ]
    rw.kubectl("patch", "virtualservice", "chat", "-n", rw.namespace, "--type=json",
               "-p", json.dumps(patch))

    event = rw.event("chat", type="Warning", reason="RouteDrift",
                     contains=f"VirtualService {rw.namespace}/chat was edited outside Rewind")
    assert "by kubectl-patch" in event["message"]
    assert 'spec.http[0].timeout added: "120s"' in event["message"]
    assert 'spec.http[0].retries added: {"attempts":0}' in event["message"]
    wait_for("the hand-added options to be removed", lambda: not any(
        key in route for route in http(rw, "chat") for key in ("timeout", "retries")
    ), timeout=20)
    status = rw.wait_status("chat", "Ready again", ready, timeout=20)
    assert status["phase"] == "Promoted" and status["stableRevision"] == 1
    assert [e["message"] for e in timeline(status, "RouteDrift")] == [event["message"]]
    # Restored once, reported once: no fight, no second Event.
    assert_holds("the VirtualService to stay as Rewind wrote it",
                 lambda: "timeout" not in http(rw, "chat")[0], seconds=3)
    drift = [e for e in rw.events("chat") if e["reason"] == "RouteDrift"]
    assert len(drift) == 1, [e["message"] for e in drift]


# -- (b) the same options in Git reach the VirtualService and stay ------------------------


def test_route_options_in_the_release_reach_the_virtual_service_and_stay(rw: Rewind) -> None:
    rw.apply(policy_manifest("quick", canary((50, "2s"))))
    rw.apply(release_with("chat", "quick", timeout="120s", retries={"attempts": 0}))
    rw.wait_phase("chat", "Promoted", stable=1, timeout=40)

    def options() -> tuple[Any, Any]:
        route = http(rw, "chat")[-1]
        return route.get("timeout"), route.get("retries")

    wait_for("timeout 120s and no retries on the route",
             lambda: options() == ("120s", {"attempts": 0}), timeout=20)
    rw.wait_status("chat", "Ready", ready)
    assert_holds("the options to stay", lambda: options() == ("120s", {"attempts": 0}),
                 seconds=3)

    # A change in Git is a new revision; the VirtualService follows it, and it is no drift.
    rw.set_error_rate("chat", 2, HEALTHY)
    rw.apply(release_with("chat", "quick", timeout="60s", retries={"attempts": 2}))
    status = rw.wait_phase("chat", "Promoted", stable=2, timeout=60)
    wait_for("timeout 60s and 2 retries", lambda: options() == ("60s", {"attempts": 2}),
             timeout=20)
    assert timeline(rw.status("chat"), "RouteDrift") == [], status["timeline"]
    assert [e for e in rw.events("chat") if e["reason"] == "RouteDrift"] == []


# -- (c) header routes: the candidate's callers, only while it is released -----------------


def test_header_routes_reach_the_candidate_during_the_canary_and_go_with_it(rw: Rewind) -> None:
    rw.apply(policy_manifest("gated", canary((50, None))))
    rw.apply(release_with("chat", "gated", headerRoutes=HEADER_ROUTES))
    rw.wait_phase("chat", "Promoted", stable=1, timeout=40)
    assert [r["name"] for r in http(rw, "chat")] == ["rewind"]  # no candidate, no A/B

    rw.apply(release_with("chat", "gated", version=2, headerRoutes=HEADER_ROUTES))
    rw.wait_status("chat", "step 1 at 50% in effect (manual gate)",
                   lambda s: s.get("phase") == "Paused" and s.get("routes", {}).get("inEffect"),
                   timeout=40)
    first, rest = http(rw, "chat")[0], http(rw, "chat")[1:]
    assert first["name"] == "rewind-headers"
    assert first["match"] == [{"name": "beta", "headers": {"x-group": {"exact": "beta"}}}]
    assert [revision_of(d["destination"]) for d in first["route"]] == [2]
    assert [r["name"] for r in rest] == ["rewind"]
    assert weights(rw, "chat") == {1: 50, 2: 50}

    rw.annotate("chat", "rewind.dev/promote", "true")
    rw.wait_phase("chat", "Promoted", stable=2, timeout=40)
    wait_for("the header route to be gone",
             lambda: [r["name"] for r in http(rw, "chat")] == ["rewind"], timeout=20)
    rw.wait_routes("chat", {2: 100})


# -- (d) another VirtualService on the same host and gateway -------------------------------


def hold_while_conflicting(rw: Rewind, kubectl: Kubectl, foreign: dict[str, Any],
                           host: str, where: str) -> None:
    """r2 starts its first step; then ``foreign`` is applied: the rollout holds at that
    step (its pause runs out meanwhile) with Stalled RouteConflict naming it and one
    Warning Event; once it is deleted the rollout completes."""
    meta = foreign["metadata"]
    ref = f"{meta['namespace']}/{meta['name']}"
    rw.wait_status("chat", "r2's first step in effect",
                   lambda s: s.get("currentStep") == 1 and bool(s.get("stepStartedAt")),
                   timeout=40)
    apply(kubectl, foreign)

    status = rw.wait_status(
        "chat", f"Stalled RouteConflict naming {ref}",
        lambda s: condition(s, "Stalled").get("reason") == "RouteConflict", timeout=20,
    )
    stalled = condition(status, "Stalled")
    assert stalled["status"] == "True"
    assert f"VirtualService {ref} ({host} on {where})" in stalled["message"], stalled
    assert not ready(status)
    event = rw.event("chat", type="Warning", reason="RouteConflict", contains=ref)
    assert host in event["message"] and where in event["message"]
    # The step's 4s pause runs out meanwhile: the traffic does not move. (Under load the
    # pause may run out before the conflict is seen: the next step is then wanted but not
    # in effect, and the status must say so.)
    def holding() -> bool:
        s = rw.status("chat")
        routes = s.get("routes") or {}
        return (
            s.get("phase") == "Progressing" and s.get("currentStep") in (1, 2)
            and weights(rw, "chat") == {1: 80, 2: 20}
            and (s.get("currentStep") == 1 or routes.get("inEffect") is False)
        )
    assert_holds("the rollout to hold at 20 %", holding, seconds=6)
    conflicts = [e for e in rw.events("chat") if e["reason"] == "RouteConflict"]
    assert len(conflicts) == 1, [e["message"] for e in conflicts]

    kubectl("delete", "virtualservice", meta["name"], "-n", meta["namespace"])
    status = rw.wait_phase("chat", "Promoted", stable=2, timeout=40)
    rw.wait_routes("chat", {2: 100})
    status = rw.wait_status("chat", "Ready, not Stalled", ready, timeout=20)
    assert condition(status, "Stalled")["status"] == "False"


def test_a_virtual_service_of_another_team_on_the_same_gateway_holds_the_rollout(
    rw: Rewind, kubectl: Kubectl, other_namespace: str
) -> None:
    """The other VirtualService lives in another namespace (both watched) and binds the
    release's host to the shared gateway. One that is exported only to its own namespace
    and routes the host for the mesh is no conflict: our callers never see it."""
    rw.operator.stop()
    rw.operator.namespaces.append(other_namespace)
    rw.operator.start()
    host = f"chat-{rw.namespace[-5:]}.example.com"
    rw.apply(policy_manifest("quick", canary((20, "4s"), (50, "2s"))))
    rw.apply(release_with("chat", "quick", hosts=[host], gateways=[GATEWAY]))
    rw.wait_phase("chat", "Promoted", stable=1, timeout=40)
    apply(kubectl, foreign_virtual_service("private", other_namespace, [host], export_to=["."]))

    rw.set_error_rate("chat", 2, HEALTHY)
    rw.apply(release_with("chat", "quick", version=2, hosts=[host], gateways=[GATEWAY]))
    hold_while_conflicting(
        rw, kubectl,
        foreign_virtual_service("catch-all", other_namespace, [host], [GATEWAY]),
        host, f"gateway {GATEWAY}",
    )


def test_a_short_name_for_the_release_on_the_mesh_holds_the_rollout(
    rw: Rewind, kubectl: Kubectl
) -> None:
    """Neither VirtualService names a gateway (both are mesh routes); the other one names
    the release's Service by its short name, which Istio resolves in its namespace to
    the same host as Rewind's chat.<namespace>.svc.cluster.local."""
    rw.apply(policy_manifest("quick", canary((20, "4s"), (50, "2s"))))
    rw.promote_first_revision("chat", "quick")
    rw.set_error_rate("chat", 2, HEALTHY)
    rw.apply(release_manifest("chat", "quick", version=2))
    hold_while_conflicting(
        rw, kubectl, foreign_virtual_service("legacy", rw.namespace, ["chat"]),
        f"chat.{rw.namespace}.svc.cluster.local", "mesh",
    )


def test_another_cluster_domain_names_every_in_cluster_host_and_a_wildcard_over_it_stalls(
    rw: Rewind,
) -> None:
    """Issue 12: the cluster domain was hard-coded (svc.cluster.local), so on a cluster with
    another domain the routes named hosts that match nothing. With --cluster-domain the
    in-cluster name and each revision's Service are in that domain. A wildcard over the
    release's own in-cluster name in that domain (admission cannot see it: it does not know
    the domain) stalls the release before any route is written: Istio would refuse the
    VirtualService as having duplicate hosts."""
    ns = rw.namespace
    rw.operator.stop()
    rw.operator.start("--cluster-domain=corp.internal")
    rw.apply(policy_manifest("quick", canary((50, "2s"))))
    rw.apply(release_manifest("fraud", "quick"))
    rw.wait_phase("fraud", "Promoted", stable=1, timeout=40)
    vs = rw.get("virtualservice", "fraud")["spec"]
    assert vs["hosts"] == ["fraud.example.com", f"fraud.{ns}.svc.corp.internal"]
    assert [r["destination"] for r in vs["http"][-1]["route"]] == [
        {"host": f"fraud-r1.{ns}.svc.corp.internal"}]

    rw.apply(release_with("wild", "quick", hosts=["*.corp.internal"]))
    status = rw.wait_status(
        "wild", "Stalled on its hosts",
        lambda s: condition(s, "Stalled").get("status") == "True", timeout=30,
    )
    message = condition(status, "Stalled")["message"]
    assert f"*.corp.internal covers wild.{ns}.svc.corp.internal" in message, message
    assert rw.routes("wild") is None
    assert rw.kubectl("get", "deployments", "-n", ns, "-l", "rewind.dev/release=wild",
                      "-o", "name").stdout == ""
