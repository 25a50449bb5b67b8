"""Releases on Gateway API (issue 12, section 3), end to end through the real operator.

The sandbox has Gateway API's standard CRDs and the v1 InferencePool CRD, but no gateway
controller: :class:`FakeGateway` plays one, as a controller does it. It watches the
namespace's HTTPRoutes and writes ``status.parents`` for each parentRef with its own
``controllerName``: ``Accepted`` and ``ResolvedRefs`` for the route's current generation
(or a refusal, or nothing at all). So these tests show that a step starts, a promotion
completes and a rollback ends only once the gateway has accepted the route that carries
them, and what the release says when a gateway refuses the route or never answers.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from kubernetes import client, config

from tests.conftest import Kubectl, Sandbox, wait_for
from tests.sandbox.operator_helpers import (
    BROKEN,
    HEALTHY,
    Rewind,
    assert_holds,
    canary,
    condition,
    history,
    outcomes,
    policy_manifest,
    release_manifest,
    shadow,
    timeline,
)

pytestmark = [pytest.mark.sandbox, pytest.mark.usefixtures("gateway_api_crds")]

NAME = "chat"
GROUP, VERSION, PLURAL = "gateway.networking.k8s.io", "v1", "httproutes"
CONTROLLER = "example.com/rewind-test-gateway"
PARENT = {"group": GROUP, "kind": "Gateway", "name": "public"}


@pytest.fixture(scope="session")
def gateway_api_crds(kubectl: Kubectl) -> None:
    """hack/sandbox installs them from their modules; fail loudly if they went missing."""
    kubectl("wait", "--for=condition=Established", "--timeout=30s",
            f"crd/httproutes.{GROUP}", "crd/inferencepools.inference.networking.k8s.io")


class FakeGateway:
    """A gateway controller for the namespace's HTTPRoutes, in a thread.

    ``mode``: ``accept`` (Accepted and ResolvedRefs True for the generation it sees),
    ``refuse`` (Accepted=False NotAllowedByListeners), ``silent`` (writes nothing). It
    answers each generation once, like a controller that reconciles on change."""

    def __init__(self, sandbox: Sandbox, namespace: str, mode: str = "accept") -> None:
        self.api = config.new_client_from_config(config_file=sandbox.kubeconfig)
        self.custom = client.CustomObjectsApi(self.api)
        self.namespace = namespace
        self.mode = mode
        self.answered: dict[str, tuple[int, str]] = {}
        self.accepted_generations: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> FakeGateway:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.api.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                listing = cast(dict[str, Any], self.custom.list_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL))
                for route in listing.get("items", []):
                    self._answer(route)
            except client.ApiException:
                pass
            self._stop.wait(0.2)

    def _answer(self, route: dict[str, Any]) -> None:
        meta = route["metadata"]
        generation = int(meta["generation"])
        if self.mode == "silent" or self.answered.get(meta["name"]) == (generation, self.mode):
            return
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if self.mode == "accept":
            accepted = ("True", "Accepted", "Accepted by the test gateway")
        else:
            accepted = ("False", "NotAllowedByListeners",
                        "no listener of Gateway public allows routes from this namespace")
        conditions = [
            {"type": "Accepted", "status": accepted[0], "reason": accepted[1],
             "message": accepted[2], "observedGeneration": generation,
             "lastTransitionTime": now},
            {"type": "ResolvedRefs", "status": "True", "reason": "ResolvedRefs",
             "message": "", "observedGeneration": generation, "lastTransitionTime": now},
        ]
        parents = [{"parentRef": ref, "controllerName": CONTROLLER, "conditions": conditions}
                   for ref in route["spec"].get("parentRefs") or []]
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, self.namespace, PLURAL, meta["name"],
            {"status": {"parents": parents}},
        )
        self.answered[meta["name"]] = (generation, self.mode)
        if self.mode == "accept":
            self.accepted_generations.append(generation)


@pytest.fixture()
def gateway(sandbox: Sandbox, namespace: str) -> Iterator[FakeGateway]:
    with FakeGateway(sandbox, namespace, mode="silent") as gw:
        yield gw


def gateway_release(name: str, policy: str, *, version: int = 1, **gateway_api: Any
                    ) -> dict[str, Any]:
    manifest = release_manifest(name, policy, version=version)
    manifest["spec"]["traffic"]["gatewayAPI"] = {
        "parentRefs": [{"name": "public"}], **gateway_api}
    return manifest


def http_route(rw: Rewind, name: str = NAME) -> dict[str, Any] | None:
    result = rw.kubectl("get", "httproute", name, "-n", rw.namespace, "-o", "json", check=False)
    if result.returncode != 0:
        assert "NotFound" in result.stderr, result.stderr
        return None
    route: dict[str, Any] = json.loads(result.stdout)
    return route


def route_weights(route: dict[str, Any] | None) -> dict[int, int]:
    """The catch-all rule's weights by revision, read independently of the operator."""
    if route is None:
        return {}
    rule = next(r for r in route["spec"]["rules"] if r.get("name") == "rewind")
    return {int(b["name"].rsplit("-r", 1)[1]): int(b.get("weight", 1))
            for b in rule["backendRefs"] if int(b.get("weight", 1)) > 0}


def mirror_of(route: dict[str, Any] | None) -> tuple[str, int] | None:
    if route is None:
        return None
    rule = next(r for r in route["spec"]["rules"] if r.get("name") == "rewind")
    for f in rule.get("filters") or []:
        if f["type"] == "RequestMirror":
            return f["requestMirror"]["backendRef"]["name"], int(f["requestMirror"]["percent"])
    return None


def in_effect(status: dict[str, Any]) -> bool:
    return bool((status.get("routes") or {}).get("inEffect"))


def ready(status: dict[str, Any]) -> bool:
    return condition(status, "Ready").get("status") == "True"


def promote_first(rw: Rewind, gw: FakeGateway, policy: str, **gateway_api: Any
                  ) -> dict[str, Any]:
    rw.apply(gateway_release(NAME, policy, **gateway_api))
    gw.mode = "accept"
    status = rw.wait_phase(NAME, "Promoted", stable=1, timeout=40)
    assert route_weights(http_route(rw)) == {1: 100}
    return status


# -- holds until accepted, then a canary and a rollback ----------------------------------


def test_a_canary_on_gateway_api_moves_only_as_the_gateway_accepts_each_step(
    rw: Rewind, gateway: FakeGateway
) -> None:
    rw.apply(policy_manifest("quick", canary((20, "2s"), (50, "2s"))))
    rw.apply(gateway_release(NAME, "quick", version=1))

    # No gateway has answered: the route is written, the release holds at Promoting.
    route = wait_for("the HTTPRoute", lambda: http_route(rw), timeout=30)
    assert route["spec"]["parentRefs"] == [PARENT]
    assert route["spec"]["hostnames"] == [f"{NAME}.example.com"]
    assert route_weights(route) == {1: 100}
    status = rw.wait_status(NAME, "waiting for the gateway", lambda s: "is not accepted yet"
                            in (s.get("routes") or {}).get("message", ""))
    assert status["phase"] == "Promoting" and not in_effect(status)
    assert f"HTTPRoute {rw.namespace}/{NAME} is not accepted yet: Gateway " in (
        status["routes"]["message"])
    assert_holds("the release to hold until the gateway accepts",
                 lambda: rw.status(NAME).get("phase") == "Promoting", seconds=3)
    assert condition(rw.status(NAME), "Ready").get("status") == "False"

    gateway.mode = "accept"
    rw.wait_phase(NAME, "Promoted", stable=1, timeout=30)
    rw.wait_status(NAME, "Ready", ready, timeout=20)

    # A canary: every step is a new generation of the route, accepted before it counts.
    rw.set_error_rate(NAME, 2, HEALTHY)
    rw.apply(gateway_release(NAME, "quick", version=2))
    rw.wait_status(NAME, "r2's first step in effect",
                   lambda s: s.get("currentStep") == 1 and in_effect(s), timeout=60)
    assert rw.in_cluster_revision(NAME) == 1  # the stable, while r2 takes 20 %
    status = rw.wait_phase(NAME, "Promoted", stable=2, timeout=60)
    assert rw.in_cluster_revision(NAME) == 2
    steps = [e["message"] for e in timeline(status, "StepStarted")
             if e.get("revision") == 2]
    assert any("20%" in m for m in steps) and any("50%" in m for m in steps), steps
    final = http_route(rw)
    assert route_weights(final) == {2: 100}
    assert final is not None
    generation = final["metadata"]["generation"]
    wait_for("the gateway to accept the final generation",
             lambda: generation in gateway.accepted_generations, timeout=10)
    # Each route write was a generation the gateway accepted (1 route, 3 weights at least).
    assert len(set(gateway.accepted_generations)) >= 4, gateway.accepted_generations
    assert outcomes(status) == {1: "Retired", 2: "Promoted"} or outcomes(status)[2] == (
        "Promoted")

    # A broken revision is rolled back, and the route goes back to r2.
    rw.set_error_rate(NAME, 3, BROKEN)
    rw.apply(gateway_release(NAME, "quick", version=3))
    status = rw.wait_phase(NAME, "RolledBack", stable=2, timeout=60)
    assert route_weights(http_route(rw)) == {2: 100}
    assert history(status, 3)["outcome"] == "RolledBack"
    assert in_effect(status)


# -- shadow: the RequestMirror filter with percent -----------------------------------------


def test_a_shadow_on_gateway_api_mirrors_a_percent_and_never_serves_users(
    rw: Rewind, gateway: FakeGateway
) -> None:
    rw.apply(policy_manifest("mirror", shadow(mirror_percent=30, duration="3s"),
                             scale_down_delay="2s"))
    promote_first(rw, gateway, "mirror")
    rw.set_error_rate(NAME, 2, HEALTHY)
    rw.apply(gateway_release(NAME, "mirror", version=2))
    status = rw.wait_status(NAME, "r2 mirrored", lambda s: s.get("mirrorPercent") == 30
                            and s.get("candidateRevision") == 2 and in_effect(s))
    route = http_route(rw)
    assert route_weights(route) == {1: 100}
    assert mirror_of(route) == (f"{NAME}-r2", 30)
    assert status["weights"] == {"stable": 100, "candidate": 0}
    # A caller that bypasses the HTTPRoute (the in-cluster name) reaches r1 only, never
    # the shadow candidate, on Gateway API as on Istio.
    assert rw.in_cluster_revision(NAME) == 1
    passed = rw.wait_status(
        NAME, "r2 shadow passed",
        lambda s: s.get("phase") == "Promoted" and history(s, 2)["outcome"] == "Retired",
        timeout=40,
    )
    assert passed["stableRevision"] == 1
    wait_for("the mirror to be removed", lambda: mirror_of(http_route(rw)) is None, timeout=20)


# -- drift, refusal, a gateway that never answers -------------------------------------------


def test_a_hand_edit_of_the_http_route_is_drift_and_restored(
    rw: Rewind, gateway: FakeGateway
) -> None:
    rw.apply(policy_manifest("quick", canary((50, "2s"))))
    promote_first(rw, gateway, "quick")
    rw.wait_status(NAME, "Ready", ready, timeout=20)
    patch = [{"op": "add", "path": "/spec/rules/0/timeouts", "value": {"request": "5s"}}]
    rw.kubectl("patch", "httproute", NAME, "-n", rw.namespace, "--type=json",
               "-p", json.dumps(patch))
    event = rw.event(NAME, type="Warning", reason="RouteDrift",
                     contains=f"HTTPRoute {rw.namespace}/{NAME} was edited outside Rewind")
    assert "by kubectl-patch" in event["message"]
    assert 'spec.rules[0].timeouts added: {"request":"5s"}' in event["message"]
    wait_for("the hand-added timeout to be removed", lambda: "timeouts" not in (
        (http_route(rw) or {"spec": {"rules": [{}]}})["spec"]["rules"][0]), timeout=20)
    status = rw.wait_status(NAME, "Ready again", ready, timeout=20)
    assert status["phase"] == "Promoted"


def test_a_gateway_that_refuses_the_route_holds_the_release_with_its_reason(
    rw: Rewind, gateway: FakeGateway
) -> None:
    rw.apply(policy_manifest("quick", canary((50, "2s"))))
    promote_first(rw, gateway, "quick")
    gateway.mode = "refuse"
    rw.set_error_rate(NAME, 2, HEALTHY)
    rw.apply(gateway_release(NAME, "quick", version=2))
    status = rw.wait_status(
        NAME, "r2 Stalled by the gateway's refusal",
        # The refusal also concerns r1's route, which may be reported before r2 is seen.
        lambda s: s.get("currentRevision") == 2
        and condition(s, "Stalled").get("reason") == "RouteConflict", timeout=40)
    stalled = condition(status, "Stalled")["message"]
    assert f"{CONTROLLER} says Accepted=False, NotAllowedByListeners: no listener" in stalled
    event = rw.event(NAME, type="Warning", reason="RouteConflict", contains="NotAllowedByListeners")
    assert "Gateway" in event["message"]
    assert status["phase"] in ("Progressing", "Pending")
    assert_holds("no step to count while refused",
                 lambda: not timeline(rw.status(NAME), "Promoted")
                 or all(e.get("revision") != 2 for e in timeline(rw.status(NAME), "Promoted")),
                 seconds=3)
    gateway.mode = "accept"
    rw.wait_phase(NAME, "Promoted", stable=2, timeout=60)


def test_a_parent_that_never_accepts_stalls_after_the_progress_deadline(
    rw: Rewind, gateway: FakeGateway
) -> None:
    rw.apply(policy_manifest("quick", canary((50, "2s")), progress_deadline="6s"))
    rw.apply(gateway_release(NAME, "quick", version=1))
    status = rw.wait_status(
        NAME, "Stalled: routes not in effect",
        lambda s: condition(s, "Stalled").get("reason") == "RoutesNotInEffect", timeout=40)
    assert status["phase"] == "Promoting" and status.get("stableRevision", 0) == 0
    message = condition(status, "Stalled")["message"]
    assert "the routes are not in effect after 6s" in message
    assert "no status from its gateway controller yet" in message
    assert condition(status, "Ready")["status"] == "False"


# -- InferencePools per revision ------------------------------------------------------------


def pool(rw: Rewind, revision: int) -> dict[str, Any] | None:
    result = rw.kubectl("get", "inferencepool", f"{NAME}-r{revision}", "-n", rw.namespace,
                        "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def test_inference_pools_are_each_revisions_backend(rw: Rewind, gateway: FakeGateway) -> None:
    rw.apply(policy_manifest("quick", canary((50, "2s"))))
    picker = {"endpointPickerRef": {"name": "chat-epp", "port": 9002, "perRevision": True}}
    promote_first(rw, gateway, "quick", inferencePool=picker)
    first = pool(rw, 1)
    assert first is not None
    assert first["spec"] == {
        "selector": {"matchLabels": {"rewind.dev/release": NAME, "rewind.dev/revision": "1"}},
        "targetPorts": [{"number": 8080}],
        "endpointPickerRef": {"group": "", "kind": "Service", "name": "chat-epp-r1",
                              "port": {"number": 9002}, "failureMode": "FailClose"},
    }
    assert first["metadata"]["ownerReferences"][0]["kind"] == "ModelRelease"
    rule = (http_route(rw) or {})["spec"]["rules"][0]
    assert rule["backendRefs"] == [{"group": "inference.networking.k8s.io",
                                    "kind": "InferencePool", "name": f"{NAME}-r1",
                                    "weight": 100}]

    rw.set_error_rate(NAME, 2, HEALTHY)
    rw.apply(gateway_release(NAME, "quick", version=2, inferencePool=picker))
    rw.wait_phase(NAME, "Promoted", stable=2, timeout=60)
    assert pool(rw, 2) is not None
    assert route_weights(http_route(rw)) == {2: 100}

    # A pool deleted by hand is a backend gone: restored.
    rw.kubectl("delete", "inferencepool", f"{NAME}-r2", "-n", rw.namespace)
    rw.kubectl("annotate", "modelrelease", NAME, "-n", rw.namespace, "poke=1", "--overwrite")
    wait_for("the pool to be restored", lambda: pool(rw, 2) is not None, timeout=30)


# -- another HTTPRoute that takes the release's requests -------------------------------------


def test_an_older_catch_all_route_on_the_same_host_holds_the_rollout(
    rw: Rewind, gateway: FakeGateway, kubectl: Kubectl
) -> None:
    rw.apply(policy_manifest("quick", canary((50, "2s"))))
    legacy = {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "HTTPRoute",
        "metadata": {"name": "legacy", "namespace": rw.namespace},
        "spec": {"parentRefs": [{"name": "public"}], "hostnames": [f"{NAME}.example.com"],
                 "rules": [{"backendRefs": [{"name": "legacy", "port": 80}]}]},
    }
    kubectl("apply", "-f", "-", input=json.dumps(legacy))
    time.sleep(1)  # strictly older, at the API server's one-second resolution
    gateway.mode = "accept"
    rw.apply(gateway_release(NAME, "quick", version=1))
    status = rw.wait_status(
        NAME, "Available, and held by the other route",
        lambda s: condition(s, "Stalled").get("reason") == "RouteConflict"
        and s.get("phase") == "Promoting", timeout=40)
    assert f"HTTPRoute {rw.namespace}/legacy ({NAME}.example.com on Gateway " in (
        condition(status, "Stalled")["message"])
    assert_holds("the release to hold while the other route takes its host",
                 lambda: rw.status(NAME).get("phase") == "Promoting", seconds=3)
    kubectl("delete", "httproute", "legacy", "-n", rw.namespace)
    rw.wait_phase(NAME, "Promoted", stable=1, timeout=30)


# -- moving a release from Istio to Gateway API ----------------------------------------------


def test_moving_a_release_to_gateway_api_retires_its_virtual_service(
    rw: Rewind, gateway: FakeGateway
) -> None:
    rw.apply(policy_manifest("quick", canary((50, "2s"))))
    rw.promote_first_revision(NAME, "quick")  # on Istio
    istio = rw.routes(NAME)
    assert istio is not None and istio.weights == {1: 100}
    gateway.mode = "accept"
    rw.set_error_rate(NAME, 2, HEALTHY)
    rw.apply(gateway_release(NAME, "quick", version=2))  # a new revision, on Gateway API
    status = rw.wait_phase(NAME, "Promoted", stable=2, timeout=60)
    assert route_weights(http_route(rw)) == {2: 100}
    assert status["routes"]["inEffect"]
    wait_for("the VirtualService to be deleted", lambda: rw.routes(NAME) is None, timeout=20)


# -- the circuit breaker (issue 14) is Istio's only ------------------------------------------


def test_a_breaker_on_a_gateway_api_release_is_not_armed_and_says_why(
    rw: Rewind, gateway: FakeGateway
) -> None:
    """A RolloutPolicy serves many releases, so admission cannot see that this one is routed
    by Gateway API: the operator refuses the breaker before any reading or route write,
    and says so (Degraded BreakerUnsupported, an Event); the release serves users as ever."""
    policy = policy_manifest("guarded")
    policy["spec"]["breaker"] = {
        # Breaching from the first reading, were one taken: 1 > 0.05.
        "query": "vector(1)", "thresholds": {"max": 0.05}, "interval": "1s",
        "fallback": {"directResponse": {"status": 503}},
    }
    rw.apply(policy)
    promote_first(rw, gateway, "guarded")
    status = rw.wait_status(NAME, "Degraded BreakerUnsupported", lambda s: condition(
        s, "Degraded").get("reason") == "BreakerUnsupported", timeout=20)
    message = condition(status, "Degraded")["message"]
    assert "spec.traffic.gatewayAPI" in message and "spec.breaker" in message
    rw.event(NAME, type="Warning", reason="BreakerUnsupported", contains="not armed")
    assert_holds("no trip, the route on the model", lambda: (
        not rw.status(NAME).get("breaker")
        and route_weights(http_route(rw)) == {1: 100}
        and [r["name"] for r in (http_route(rw) or {})["spec"]["rules"]] == ["rewind"]
    ), seconds=4)
    assert rw.status(NAME)["phase"] == "Promoted" and ready(rw.status(NAME))
