"""The operator end to end with bad input: a missing RolloutPolicy, a PromQL query that does
not parse. Each is reported where a human looks, and never stops other releases."""

from __future__ import annotations

import pytest

from tests.sandbox.operator_helpers import (
    ERROR_RATE_QUERY,
    HEALTHY,
    METRIC,
    Rewind,
    Routes,
    assert_holds,
    canary,
    condition,
    outcomes,
    policy_manifest,
    release_manifest,
)

pytestmark = pytest.mark.sandbox


def test_missing_policy_stalls_with_its_name_until_it_is_created(rw: Rewind) -> None:
    rw.apply(release_manifest("vision", "vision-policy"))
    status = rw.wait_status(
        "vision", "Stalled naming the missing policy",
        lambda s: condition(s, "Stalled").get("status") == "True",
    )
    stalled = condition(status, "Stalled")
    assert "vision-policy" in stalled["message"] and "not found" in stalled["message"], stalled
    assert stalled["reason"] == "PolicyError"
    assert status.get("phase", "Pending") == "Pending"
    assert "vision-policy" in status.get("message", "")
    # Nothing was deployed or routed for a release that has no policy.
    assert rw.replicas("vision", 1) is None
    assert rw.routes("vision") is None

    rw.apply(policy_manifest("vision-policy", canary((50, "2s"))))
    status = rw.wait_phase("vision", "Promoted", stable=1, timeout=40)
    rw.wait_routes("vision", {1: 100})
    assert condition(status, "Stalled")["status"] == "False"
    assert condition(status, "Ready")["status"] == "True"
    assert outcomes(status) == {1: "Promoted"}


def test_unparsable_promql_is_reported_and_other_releases_keep_working(rw: Rewind) -> None:
    # The good query without its closing parenthesis.
    broken_query = ERROR_RATE_QUERY[:-1]
    assert broken_query.startswith(f"max({METRIC}{{") and broken_query.endswith("}")
    rw.apply(
        policy_manifest("typo", canary((20, "2s"), (50, "2s")), query=broken_query),
        policy_manifest("good", canary((20, "2s"), (50, "2s"))),
    )
    rw.promote_first_revision("vision", "typo")
    rw.promote_first_revision("speech", "good")
    rw.set_error_rate("vision", 2, HEALTHY)
    rw.set_error_rate("speech", 2, HEALTHY)

    rw.apply(
        release_manifest("vision", "typo", version=2),
        release_manifest("speech", "good", version=2),
    )
    status = rw.wait_status(
        "vision", "a bad_query measurement and Degraded",
        lambda s: condition(s, "Degraded").get("reason") == "AnalysisInconclusive"
        and any("bad_query" in m.get("message", "") for m in s["analysis"]["measurements"]),
        timeout=40,
    )
    last = status["analysis"]["measurements"][-1]
    assert last["verdict"] == "Inconclusive"
    # Names the metric, the kind of error and Prometheus' own parse error.
    assert last["message"].startswith("error-rate: query error (bad_query): HTTP 400"), last
    assert "parse error" in last["message"], last
    degraded = condition(status, "Degraded")
    assert degraded["status"] == "True" and "bad_query" in degraded["message"], degraded
    assert status["phase"] == "Progressing"

    # The other release in the namespace is promoted meanwhile...
    other = rw.wait_phase("speech", "Promoted", stable=2, timeout=40)
    rw.wait_routes("speech", {2: 100})
    assert outcomes(other) == {1: "Promoted", 2: "Promoted"}
    # ...while the broken one holds at its first step: no traffic increase, no rollback.
    assert_holds(
        "vision holding at 80/20",
        lambda: rw.routes("vision") == Routes({1: 80, 2: 20})
        and rw.status("vision")["phase"] == "Progressing",
        seconds=3,
    )
    assert rw.status("vision")["analysis"].get("failures", 0) == 0


def test_a_foreign_virtual_service_is_never_taken_over(rw: Rewind) -> None:
    """Someone else's VirtualService with the release's name: the operator refuses to
    overwrite it, says so once (Stalled RouteConflict + one Warning Event, not one per
    retry), and proceeds once it is gone."""
    foreign = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "vision"},
        "spec": {
            "hosts": ["vision.example.com"],
            "http": [{"route": [{"destination": {"host": "legacy-vision"}}]}],
        },
    }
    rw.apply(foreign, policy_manifest("good", canary((50, "2s"))))
    rw.apply(release_manifest("vision", "good"), release_manifest("speech", "good"))
    status = rw.wait_status(
        "vision", "Stalled: VirtualService not owned",
        lambda s: "not owned" in condition(s, "Stalled").get("message", ""),
        timeout=40,
    )
    assert condition(status, "Stalled")["status"] == "True"
    assert condition(status, "Stalled")["reason"] == "RouteConflict"
    # The other release is unaffected.
    rw.wait_phase("speech", "Promoted", stable=1, timeout=40)
    # Retried (every 5s) without touching the foreign object or repeating the Event.
    assert_holds(
        "foreign VirtualService untouched",
        lambda: rw.get("virtualservice", "vision")["spec"] == foreign["spec"],
        seconds=6,
    )
    # The Event goes out after the status that says Stalled (at the end of that reconcile,
    # after its other writes): wait for it, then check it is the only one.
    rw.event("vision", type="Warning", reason="RouteConflict",
             contains="not owned by ModelRelease vision")
    warnings = [e for e in rw.events("vision") if e["type"] == "Warning"]
    assert [e["reason"] for e in warnings] == ["RouteConflict"], [e["message"] for e in warnings]
    assert "not owned by ModelRelease vision" in warnings[0]["message"]

    rw.kubectl("delete", "virtualservice", "vision", "-n", rw.namespace)
    rw.wait_routes("vision", {1: 100}, timeout=30)
    # Routes written is not yet routes in effect: the release passes through Promoting
    # (Reconciling) before the read-back makes it Promoted.
    status = rw.wait_status(
        "vision", "Promoted with Stalled cleared",
        lambda s: s.get("phase") == "Promoted"
        and condition(s, "Stalled").get("status") == "False",
    )
    assert status["stableRevision"] == 1
    assert condition(status, "Ready")["status"] == "True"


def test_an_edited_policy_is_used_at_once_not_when_its_cached_copy_expires(rw: Rewind) -> None:
    """The operator keeps RolloutPolicies parsed (rewind.policycache); the policy watch drops
    the copy before it wakes the releases, so an edit acts within seconds, well inside the
    copy's 30 s bound."""
    rw.apply(policy_manifest("held", canary((50, "1h"))))
    rw.promote_first_revision("vision", "held")
    rw.set_error_rate("vision", 2, HEALTHY)
    rw.apply(release_manifest("vision", "held", version=2))
    rw.wait_status("vision", "r2 held at 50%", lambda s: s.get("candidateRevision") == 2
                   and s.get("stepStartedAt") is not None
                   and (s.get("weights") or {}).get("candidate") == 50, timeout=40)
    assert_holds("r2 held at its 1 h step",
                 lambda: rw.status("vision").get("phase") == "Progressing", 3)
    rw.apply(policy_manifest("held", canary((50, "1s"))))  # the step now lasts a second
    status = rw.wait_phase("vision", "Promoted", stable=2, timeout=10)
    assert outcomes(status) == {1: "Promoted", 2: "Promoted"}
