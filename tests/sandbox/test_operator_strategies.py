"""The operator end to end, blue-green and shadow: what the VirtualService does at every
moment (watched, not sampled), and how a failure is undone."""

from __future__ import annotations

import pytest

from tests.conftest import wait_for
from tests.sandbox.operator_helpers import (
    BROKEN,
    HEALTHY,
    Recorder,
    Rewind,
    blue_green,
    condition,
    history,
    outcomes,
    policy_manifest,
    release_manifest,
    shadow,
    timeline,
)

pytestmark = pytest.mark.sandbox

NAME = "assistant"


def test_blue_green_previews_at_zero_switches_at_once_and_switches_back(rw: Rewind) -> None:
    policy = "assistant-bg"
    rw.apply(policy_manifest(policy, blue_green(preview="2s", post_switch="60s"),
                             scale_down_delay="3s"))
    rw.promote_first_revision(NAME, policy)
    rw.set_error_rate(NAME, 2, HEALTHY)

    with Recorder(rw.sandbox, rw.namespace) as rec:
        rw.apply(release_manifest(NAME, policy, version=2))
        # Preview: the new colour runs (Available) while users all stay on the old one.
        preview = rw.wait_status(
            NAME, "blue-green preview",
            lambda s: s.get("candidateRevision") == 2 and "preview" in s.get("message", ""),
        )
        assert preview["strategy"] == "blueGreen"
        assert preview["weights"] == {"stable": 100, "candidate": 0}
        routes = rw.routes(NAME)
        assert routes is not None and routes.weights == {1: 100}
        rw.wait_replicas(NAME, 2, 1)
        # The preview answers only through its own Service: a caller that bypasses the
        # routes (no sidecar, a NodePort) reaches the in-cluster name, still r1 alone.
        wait_for("r2's pod behind its own Service",
                 lambda: rw.behind(NAME, f"{NAME}-r2") == {2}, timeout=30)
        assert rw.behind(NAME) == {1}

        # Switch: all traffic at once, old colour kept warm.
        rw.wait_routes(NAME, {2: 100}, timeout=30)
        # The status reports the switch only once it has read the routes back, one
        # observation after the write: wait for it rather than read it straight away.
        switched = rw.wait_status(
            NAME, "the switch read back",
            lambda s: s.get("weights") == {"stable": 0, "candidate": 100}, timeout=15,
        )
        assert switched["phase"] == "Progressing"
        assert rw.replicas(NAME, 1) == 1

        # The post-switch analysis fails: straight back to the old colour.
        rw.set_error_rate(NAME, 2, BROKEN)
        status = rw.wait_phase(NAME, "RolledBack", stable=1, timeout=30)
        rw.wait_routes(NAME, {1: 100})

    assert [r.weights for _, r in rec.routes(NAME)] == [{1: 100}, {2: 100}, {1: 100}]
    # The in-cluster name never left r1: r2 was never promoted.
    assert rec.in_cluster_revisions(NAME) == [1]
    # The old colour never went down, so switching back did not wait for it: one route
    # write, and RolledBack is stored only once that write is read back.
    assert rec.phases(NAME)[-2:] == ["RollingBack", "RolledBack"], rec.phases(NAME)
    back = rec.routes(NAME)[-1][0]
    done = next(rv for rv, s in rec.statuses(NAME) if s.get("phase") == "RolledBack")
    assert done > back
    r1_replicas = [
        s.obj["spec"]["replicas"] for s in rec.versions("deployments", f"{NAME}-r1")
    ]
    assert r1_replicas and set(r1_replicas) == {1}, r1_replicas
    assert outcomes(status) == {1: "Promoted", 2: "RolledBack"}
    assert "error-rate 0.5 > max 0.05" in history(status, 2)["reason"]
    steps = [e["message"] for e in timeline(status, "StepStarted") if e["revision"] == 2]
    assert len(steps) == 2 and "preview" in steps[0] and "post-switch" in steps[1], steps
    assert condition(status, "Degraded")["status"] == "True"
    rw.event(NAME, type="Warning", reason="RolledBack", contains="r2 rolled back")
    rw.wait_replicas(NAME, 2, 0, timeout=20)


def test_shadow_mirrors_without_live_weight_and_a_failing_shadow_is_rejected(
    rw: Rewind,
) -> None:
    policy = "assistant-shadow"
    rw.apply(policy_manifest(policy, shadow(mirror_percent=30, duration="3s"),
                             scale_down_delay="2s"))
    rw.promote_first_revision(NAME, policy)

    with Recorder(rw.sandbox, rw.namespace) as rec:
        # A passing shadow (onSuccess: Stop) validates r2 without ever serving users.
        rw.set_error_rate(NAME, 2, HEALTHY)
        rw.apply(release_manifest(NAME, policy, version=2))
        passed = rw.wait_status(
            NAME, "r2 shadow passed",
            lambda s: s.get("phase") == "Promoted" and history(s, 2)["outcome"] == "Retired",
            timeout=40,
        )
        assert passed["stableRevision"] == 1
        assert timeline(passed, "ShadowPassed")
        rw.wait_replicas(NAME, 2, 0)

        # A failing shadow is rejected: mirror removed, revision Failed, users unaffected.
        rw.set_error_rate(NAME, 3, HEALTHY)
        rw.apply(release_manifest(NAME, policy, version=3))
        rw.wait_status(NAME, "r3 mirrored", lambda s: s.get("mirrorPercent") == 30
                       and s.get("candidateRevision") == 3)
        rw.set_error_rate(NAME, 3, BROKEN)
        status = rw.wait_phase(NAME, "Failed", stable=1, timeout=30)
        final = rw.wait_routes(NAME, {1: 100})
        assert final.mirror is None

    routes = [r for _, r in rec.routes(NAME)]
    # Users only ever reached r1; r2 then r3 got a 30% mirror, each removed again.
    assert all(r.weights == {1: 100} for r in routes), routes
    mirrors = [(r.mirror, r.mirror_percent) for r in routes]
    assert mirrors == [(None, 0.0), (2, 30.0), (None, 0.0), (3, 30.0), (None, 0.0)], mirrors
    # Nor did the status ever report a live weight for a shadow candidate.
    assert all(s.get("weights", {}).get("candidate", 0) == 0 for _, s in rec.statuses(NAME))

    assert outcomes(status) == {1: "Promoted", 2: "Retired", 3: "Failed"}
    assert "error-rate 0.5 > max 0.05" in history(status, 3)["reason"]
    assert status["mirrorPercent"] == 0
    # The shadows got copies only: the in-cluster name, which callers that bypass the
    # routes reach, never selected them.
    assert rec.in_cluster_revisions(NAME) == [1]
    assert rw.destination_rules() == []
    assert status["weights"] == {"stable": 100, "candidate": 0}
    assert timeline(status, "Failed")
    rw.event(NAME, type="Warning", reason="Failed", contains="r3 stopped before serving users")
    rw.wait_replicas(NAME, 3, 0, timeout=20)
    assert rw.replicas(NAME, 1) == 1
