"""High availability end to end: two operator processes in one Kopf peering. Only the
active replica runs reconcile loops; when it is SIGKILLed the standby takes over the
rollout where it stood, and when a higher-priority replica returns the standby stands down.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Kubectl, MetricsEndpoint, OperatorProcess, Sandbox, wait_for
from tests.sandbox.chart_helpers import apply_chart_crds
from tests.sandbox.operator_helpers import (
    HEALTHY,
    Replica,
    Rewind,
    Routes,
    assert_holds,
    canary,
    policy_manifest,
    release_manifest,
    timeline,
)

pytestmark = pytest.mark.sandbox

NAME = "fraud"
POLICY = "fraud-canary"
PEERING = "rewind-ha"
LIFETIME = 10  # seconds: the failover time under test


@pytest.fixture()
def replicas(
    sandbox: Sandbox, kubectl: Kubectl, namespace: str, crds_installed: None,
    istio_crds: None, tmp_path: Path, request: pytest.FixtureRequest,
) -> Iterator[tuple[Replica, Replica]]:
    apply_chart_crds(kubectl)  # Kopf's peering kinds
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(
        {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": PEERING}}))
    high = Replica(OperatorProcess(sandbox, [namespace], tmp_path / "high.log"), PEERING,
                   priority=2, lifetime=LIFETIME)
    low = Replica(OperatorProcess(sandbox, [namespace], tmp_path / "low.log"), PEERING,
                  priority=1, lifetime=LIFETIME)
    yield high, low
    for replica in (high, low):
        replica.process.stop()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for label, replica in (("high", high), ("low", low)):
            print(f"--- {label} operator log ---\n{replica.process.logs()[-15000:]}")


def test_only_the_active_replica_acts_and_a_standby_takes_over(
    replicas: tuple[Replica, Replica], kubectl: Kubectl, namespace: str,
    metrics_endpoint: MetricsEndpoint, sandbox: Sandbox,
) -> None:
    high, low = replicas
    rw = Rewind(kubectl, namespace, high.process, metrics_endpoint, sandbox)

    def runs_release(replica: Replica) -> bool:
        return any(key.startswith("rewind_release_phase{")
                   for key in rw.operator_metrics(replica.port))

    # The low-priority replica starts alone: it is active and runs the release.
    low.start()
    wait_for("the low-priority replica active while alone", lambda: low.active() == 1,
             timeout=30)
    rw.apply(policy_manifest(POLICY, canary((20, None), (50, "2s"))))
    rw.promote_first_revision(NAME, POLICY)
    assert runs_release(low)

    # A higher-priority replica joins: the running loops stop, the newcomer takes over.
    high.start()
    wait_for("the high-priority replica active", lambda: high.active() == 1, timeout=30)
    wait_for("the low-priority replica on standby", lambda: low.active() == 0, timeout=10)
    wait_for("the standby's loops stopped", lambda: not runs_release(low), timeout=10)
    rw.set_error_rate(NAME, 2, HEALTHY)
    rw.apply(release_manifest(NAME, POLICY, version=2))
    rw.wait_phase(NAME, "Paused", candidate=2, timeout=40)
    assert runs_release(high)
    assert_holds("the standby running no release loop",
                 lambda: low.active() == 0 and not runs_release(low), seconds=3)

    # The active replica dies; the standby takes over once its keep-alive has expired.
    high.process.kill()
    killed = time.monotonic()
    wait_for("the standby to become active", lambda: low.active() == 1,
             timeout=LIFETIME + 15)
    takeover = time.monotonic() - killed
    print(f"takeover after SIGKILL: {takeover:.1f}s (keep-alive lifetime {LIFETIME}s)")
    assert takeover <= LIFETIME + 6, f"takeover took {takeover:.1f}s"
    # It runs the release it only remembered, from where the rollout stood.
    wait_for("the new active replica to reconcile the release", lambda: runs_release(low),
             timeout=15)
    assert rw.routes(NAME) == Routes({1: 80, 2: 20})
    rw.annotate(NAME, "rewind.dev/promote", "true")
    status = rw.wait_phase(NAME, "Promoted", stable=2, timeout=30)
    rw.wait_routes(NAME, {2: 100})
    assert timeline(status, "PromoteRequested")

    # The higher-priority replica returns: the other one stands down, it takes over.
    high.start()
    wait_for("the returning replica active", lambda: high.active() == 1, timeout=30)
    wait_for("the other replica back on standby", lambda: low.active() == 0, timeout=10)
    wait_for("the standby to drop its release series", lambda: not runs_release(low),
             timeout=10)
    wait_for("the returning replica to run the release", lambda: runs_release(high),
             timeout=15)


def test_equal_priorities_run_nothing_like_kopf(replicas: tuple[Replica, Replica]) -> None:
    """Kopf pauses every peer when two share a priority; the loops must pause as well, and
    the log must say how to fix it."""
    first, second = replicas
    second.priority = first.priority
    first.start()
    wait_for("the first replica active alone", lambda: first.active() == 1, timeout=30)
    second.start()
    wait_for("both replicas on standby",
             lambda: first.active() == 0 and second.active() == 0, timeout=30)
    assert "give each replica its own priority" in first.process.logs()
