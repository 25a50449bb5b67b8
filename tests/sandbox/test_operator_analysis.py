"""The operator end to end on analysis outcomes that once misled it: a relative metric that
is +Inf. Real API server, real Prometheus, the real `rewind-operator` process."""

from __future__ import annotations

import pytest

from tests.sandbox.operator_helpers import (
    BROKEN,
    ERROR_RATE_QUERY,
    HEALTHY,
    Rewind,
    canary,
    history,
    policy_manifest,
    release_manifest,
    timeline,
)

pytestmark = pytest.mark.sandbox

NAME = "fraud"
POLICY = "fraud-ratio"
#: The candidate's error rate relative to the stable revision's (max 0.05 in the policy).
RATIO_QUERY = (
    f"{ERROR_RATE_QUERY} / {ERROR_RATE_QUERY.replace('candidateWorkload', 'stableWorkload')}"
)


def test_an_infinite_error_ratio_against_a_flawless_stable_rolls_back(rw: Rewind) -> None:
    """0.5 / 0 is +Inf in PromQL. Taken for no data, it held the rollout forever under
    noData: Inconclusive (the policy's setting here); it must fail the max and show +Inf."""
    rw.apply(policy_manifest(POLICY, canary((20, "2s"), (50, "2s")), query=RATIO_QUERY))
    rw.set_error_rate(NAME, 1, HEALTHY)
    rw.promote_first_revision(NAME, POLICY)
    rw.set_error_rate(NAME, 2, BROKEN)
    rw.apply(release_manifest(NAME, POLICY, version=2))
    status = rw.wait_phase(NAME, "RolledBack", stable=1, timeout=40)
    rw.wait_routes(NAME, {1: 100})
    failed = [m for m in status["analysis"]["measurements"] if m["verdict"] == "Fail"]
    assert failed, status["analysis"]
    assert "value" not in failed[-1] and failed[-1]["valueText"] == "+Inf", failed[-1]
    assert failed[-1]["message"] == "error-rate +Inf > max 0.05"
    reason = history(status, 2)["reason"]
    assert "error-rate +Inf > max 0.05 at " in reason, reason
    decided = timeline(status, "RollbackDecided")
    assert decided and "+Inf" in decided[-1]["message"]
    event = rw.event(NAME, type="Warning", reason="RollbackDecided",
                     contains="error-rate +Inf > max 0.05")
    assert "no data" not in event["message"] and "None" not in event["message"]
