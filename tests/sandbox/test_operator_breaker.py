"""The circuit breaker (issue 14), against the real API server and Prometheus.

A test gauge is the breaker's fast signal. Breaching it sends every user to the fallback
with one VirtualService write (``rewind-breaker`` route), reported Tripped only once read
back; it is never a rollback and never changes revisions. Healthy again for ``healthyFor``
it resets by itself; with ``reset.mode: Manual`` only ``rewind.dev/reset-breaker`` resets
it. During a canary the rollout holds while users are on the fallback, and continues after.
The operator's own /metrics count trips and resets and show the state.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import wait_for
from tests.sandbox.operator_helpers import (
    Rewind,
    assert_holds,
    canary,
    condition,
    has_annotation,
    policy_manifest,
    release_manifest,
    timeline,
)

pytestmark = pytest.mark.sandbox

SIGNAL = "rewind_test_breaker_errors"
RESET = "rewind.dev/reset-breaker"


def breaker_policy(
    name: str,
    strategy: dict[str, Any] | None = None,
    *,
    mode: str = "Automatic",
    fallback: dict[str, Any] | None = None,
) -> dict[str, Any]:
    policy = policy_manifest(name, strategy)
    policy["spec"]["breaker"] = {
        "query": f'max({SIGNAL}{{namespace="{{{{namespace}}}}", release="{{{{release}}}}"}})',
        "thresholds": {"max": 0.05},
        "interval": "1s",
        "holdFor": "0s",
        "fallback": fallback or {"service": {"name": "rules", "port": 8080}},
        "reset": {"mode": mode, "healthyFor": "2s"},
    }
    return policy


def set_signal(rw: Rewind, release: str, value: float) -> None:
    """Set the breaker's gauge and wait until Prometheus answers with it."""
    labels = {"namespace": rw.namespace, "release": release}
    rw.endpoint.set(SIGNAL, value, **labels)
    promql = f'max({SIGNAL}{{namespace="{rw.namespace}", release="{release}"}})'
    wait_for(f"Prometheus to scrape {promql} == {value}",
             lambda: rw.prometheus_value(promql) == value, timeout=20)


def http_routes(rw: Rewind, name: str) -> list[dict[str, Any]]:
    vs = rw.get("virtualservice", name)
    routes: list[dict[str, Any]] = vs["spec"]["http"]
    return routes


def on_fallback(rw: Rewind, name: str) -> dict[str, Any] | None:
    """The fallback route when it is the VirtualService's only route (None otherwise)."""
    routes = http_routes(rw, name)
    if len(routes) == 1 and routes[0].get("name") == "rewind-breaker":
        return routes[0]
    return None


def breaker_state(status: dict[str, Any]) -> str:
    return str((status.get("breaker") or {}).get("state", ""))


def printed_breaker(rw: Rewind, name: str) -> str:
    """The Breaker column of ``kubectl get mr``."""
    out = rw.kubectl("get", "mr", name, "-n", rw.namespace).stdout.splitlines()
    header, row = out[0].split(), out[1].split()
    return row[header.index("BREAKER")]


def breaker_metrics(rw: Rewind, port: int, **want: float) -> dict[str, float]:
    """Wait until the operator's /metrics show ``want`` (``name{labels}`` -> value, as
    ``Rewind.operator_metrics`` keys them); returns every sample of the namespace."""
    wait_for(f"operator metrics {want}", lambda: all(
        rw.operator_metrics(port).get(k) == v for k, v in want.items()), timeout=20)
    return rw.operator_metrics(port)


def test_trip_sends_users_to_the_fallback_and_resets_by_itself(rw: Rewind) -> None:
    port = rw.restart_operator_with_metrics()
    rw.apply(breaker_policy("p"))
    set_signal(rw, "fraud", 0.0)
    rw.promote_first_revision("fraud", "p")
    assert breaker_state(rw.status("fraud")) == "Closed"

    set_signal(rw, "fraud", 0.5)
    tripped = rw.wait_status("fraud", "breaker Tripped",
                             lambda s: breaker_state(s) == "Tripped", timeout=20)
    route = on_fallback(rw, "fraud")
    assert route is not None, http_routes(rw, "fraud")
    assert route["route"] == [{"destination": {"host": f"rules.{rw.namespace}.svc.cluster.local",
                                               "port": {"number": 8080}}}]
    # Observed: the status says users are on the fallback only once it read them back.
    assert tripped["routes"]["fallback"].startswith("Service rules.")
    assert tripped["routes"]["inEffect"] is True
    # Not a rollback; revisions unchanged: the in-cluster name (umbrella Service) still
    # selects the stable, as read back.
    assert tripped["phase"] == "Promoted" and tripped["stableRevision"] == 1
    assert tripped["routes"]["primaryRevision"] == 1
    umbrella = rw.get("service", "fraud")
    assert umbrella["spec"]["selector"]["rewind.dev/revision"] == "1"
    assert not timeline(tripped, "RollbackStarted")
    assert [e["type"] for e in timeline(tripped) if e["type"].startswith(("Breaker", "Fallback"))
            ] == ["BreakerTripped", "FallbackInEffect"]
    assert condition(tripped, "Ready")["status"] == "False"
    assert condition(tripped, "Degraded")["reason"] == "BreakerTripped"
    assert printed_breaker(rw, "fraud") == "Tripped"
    rw.event("fraud", type="Warning", reason="BreakerTripped", contains="not a rollback")
    release = 'release="fraud"'
    metrics = breaker_metrics(rw, port, **{
        f"rewind_breaker_trips_total{{{release}}}": 1,
        f'rewind_breaker_state{{{release},state="Tripped"}}': 1,
        f'rewind_breaker_state{{{release},state="Closed"}}': 0,
        f"rewind_breaker_trip_to_fallback_seconds_count{{{release}}}": 1,
    })
    assert not any(k.startswith("rewind_rollbacks_total") and v for k, v in metrics.items())

    set_signal(rw, "fraud", 0.0)
    closed = rw.wait_status("fraud", "breaker Closed",
                            lambda s: breaker_state(s) == "Closed", timeout=20)
    rw.wait_routes("fraud", {1: 100})
    assert closed["breaker"]["trips"] == 1
    assert condition(closed, "Ready")["status"] == "True"
    types = [e["type"] for e in timeline(closed)]
    assert types[-2:] == ["BreakerReset", "BreakerClosed"]
    reset = timeline(closed, "BreakerReset")[-1]
    assert "the signal passed" in reset["message"]
    assert printed_breaker(rw, "fraud") == "Closed"
    breaker_metrics(rw, port, **{
        f'rewind_breaker_resets_total{{how="automatic",{release}}}': 1,
        f'rewind_breaker_state{{{release},state="Closed"}}': 1,
        f'rewind_breaker_state{{{release},state="Tripped"}}': 0,
        f"rewind_breaker_trips_total{{{release}}}": 1,
    })


def test_manual_reset_waits_for_a_human(rw: Rewind) -> None:
    rw.apply(breaker_policy(
        "p", mode="Manual", fallback={"directResponse": {"status": 503, "body": "later"}}))
    set_signal(rw, "fraud", 0.0)
    rw.promote_first_revision("fraud", "p")
    set_signal(rw, "fraud", 0.5)
    rw.wait_status("fraud", "breaker Tripped", lambda s: breaker_state(s) == "Tripped",
                   timeout=20)
    route = on_fallback(rw, "fraud")
    assert route is not None
    assert route["directResponse"] == {"status": 503, "body": {"string": "later"}}

    set_signal(rw, "fraud", 0.0)
    assert_holds("the breaker stays Tripped while healthy (Manual)",
                 lambda: breaker_state(rw.status("fraud")) == "Tripped"
                 and on_fallback(rw, "fraud") is not None, seconds=5)
    stalled = condition(rw.status("fraud"), "Stalled")
    assert stalled["status"] == "True" and RESET in stalled["message"]

    rw.annotate("fraud", RESET, "true")
    closed = rw.wait_status("fraud", "breaker Closed",
                            lambda s: breaker_state(s) == "Closed", timeout=20)
    rw.wait_routes("fraud", {1: 100})
    reset = timeline(closed, "BreakerReset")[-1]
    assert "reset by" in reset["message"]
    wait_for("the reset annotation removed",
             lambda: not has_annotation(rw.release("fraud"), RESET), timeout=20)
    assert rw.status("fraud")["phase"] == "Promoted"


def test_breaker_during_a_canary_holds_the_rollout_then_it_continues(rw: Rewind) -> None:
    rw.apply(breaker_policy("p", canary((20, "3s"))))
    set_signal(rw, "fraud", 0.0)
    rw.set_error_rate("fraud", 2, 0.0)
    rw.promote_first_revision("fraud", "p")
    rw.apply(release_manifest("fraud", "p", version=2))
    rw.wait_routes("fraud", {1: 80, 2: 20})

    set_signal(rw, "fraud", 0.5)
    rw.wait_status("fraud", "breaker Tripped", lambda s: breaker_state(s) == "Tripped",
                   timeout=20)
    assert on_fallback(rw, "fraud") is not None

    def held() -> bool:
        s = rw.status("fraud")
        return (s["phase"] in ("Progressing", "Paused") and s["candidateRevision"] == 2
                and s["stableRevision"] == 1 and on_fallback(rw, "fraud") is not None
                # The in-cluster name stays on the stable, never the candidate.
                and rw.get("service", "fraud")["spec"]["selector"]["rewind.dev/revision"] == "1")

    assert_holds("the canary holds on the fallback beyond its 3s pause", held, seconds=6)
    status = rw.status("fraud")
    assert "circuit breaker is tripped" in status["message"]
    assert not timeline(status, "RollbackStarted")

    set_signal(rw, "fraud", 0.0)
    done = rw.wait_phase("fraud", "Promoted", stable=2, timeout=40)
    assert breaker_state(done) == "Closed"
    assert not timeline(done, "RollbackStarted")
    # The stage started again after the reset (a fresh clock for its pause and analysis).
    started = [e["at"] for e in timeline(done, "StepStarted") if e["revision"] == 2]
    closed = timeline(done, "BreakerClosed")[-1]["at"]
    assert any(at >= closed for at in started), (started, closed)
    rw.wait_routes("fraud", {2: 100})
