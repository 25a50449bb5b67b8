"""Quarantine (issue 13, item 2), end to end: real API server, the real `rewind-operator`
process, a Quarantine object created with kubectl.

- the serving revision's training data is found to be poisoned (every version of the
  dataset made since r2): Rewind rolls back past r2, the newest known-good revision, which
  was trained on it too, to r1;
- nothing clean to go to: the release holds where it is, Stalled (QuarantineHold) with an
  Event naming the entry, and recovers when the entry is lifted;
- a new revision whose data is quarantined is refused before it gets a Deployment.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import wait_for
from tests.sandbox.operator_helpers import (
    HEALTHY,
    Rewind,
    Routes,
    assert_holds,
    canary,
    condition,
    digest,
    history,
    outcomes,
    policy_manifest,
    release_manifest,
    timeline,
    workload,
)

pytestmark = pytest.mark.sandbox

NAME = "fraud"
POLICY = "fraud-canary"


def quarantine(name: str, *entries: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "rewind.dev/v1alpha1",
        "kind": "Quarantine",
        "metadata": {"name": name},
        "spec": {
            "entries": [
                {"reason": "label flips injected upstream", "addedBy": "alice"} | e
                for e in entries
            ]
        },
    }


def release(rw: Rewind, version: int) -> dict[str, Any]:
    rw.set_error_rate(NAME, version, HEALTHY)
    rw.apply(release_manifest(NAME, POLICY, version=version))
    status = rw.wait_phase(NAME, "Promoted", stable=version, timeout=60)
    rw.wait_routes(NAME, {version: 100})
    return status


def test_a_poisoned_dataset_rolls_back_past_the_newest_known_good_to_a_clean_one(
    rw: Rewind,
) -> None:
    rw.apply(policy_manifest(POLICY, canary((50, "1s")), keep_previous_warm="5m"))
    rw.promote_first_revision(NAME, POLICY)
    release(rw, 2)
    status = release(rw, 3)
    # Poisoned from the moment r2 was first seen: r2 and r3 were trained on it, r1 not.
    since = history(status, 2)["createdAt"]
    assert history(status, 1)["createdAt"] < since
    rw.apply(quarantine("poison", {
        "name": "nov-export", "datasetRef": f"s3://datasets/{NAME}", "suspectAfter": since,
    }))
    rolled = rw.wait_phase(NAME, "RolledBack", stable=1, timeout=60)
    rw.wait_routes(NAME, {1: 100})
    assert outcomes(rolled)[3] == "RolledBack"
    assert rolled["quarantined"] == "r3,r2"
    for rev in (2, 3):
        mark = history(rolled, rev)["quarantine"]
        assert mark["entry"] == f"{rw.namespace}/poison#nov-export"
        assert mark["addedBy"] == "alice" and mark["reason"] == "label flips injected upstream"
    assert "quarantine" not in history(rolled, 1)
    (decided,) = [e for e in timeline(rolled, "RollbackDecided")]
    assert "rolling back r3 to r1, the newest clean known-good revision" in decided["message"]
    assert f"r2 skipped: quarantined by {rw.namespace}/poison#nov-export" in decided["message"]
    assert f"Quarantine {rw.namespace}/poison entry nov-export" in decided["message"]
    rw.event(NAME, type="Warning", reason="RollbackDecided", contains="r2 skipped")
    rw.event(NAME, type="Warning", reason="Quarantined", contains="entry nov-export")
    # kubectl get mr shows which revisions are quarantined.
    table = rw.kubectl("get", "mr", NAME, "-n", rw.namespace).stdout
    assert "QUARANTINED" in table.splitlines()[0] and "r3,r2" in table, table
    # The marks are recorded on the snapshots too: history keeps them.
    record = wait_for(
        "r2's record to carry its quarantine mark",
        lambda: (r := rw.kubectl(
            "get", "controllerrevision", workload(NAME, 2), "-n", rw.namespace,
            "-o", "jsonpath={.metadata.annotations.rewind\\.dev/record}",
        ).stdout) and "nov-export" in r and r,
        timeout=20,
    )
    assert "poison#nov-export" in record


def test_no_clean_target_holds_pages_and_recovers_when_the_entry_is_lifted(rw: Rewind) -> None:
    rw.apply(policy_manifest(POLICY, canary((50, "1s"))))
    rw.promote_first_revision(NAME, POLICY)
    rw.apply(quarantine("bad-artifact", {"name": "r1-model", "modelDigest": digest(1)}))
    held = rw.wait_status(
        NAME, "Stalled QuarantineHold",
        lambda s: condition(s, "Stalled").get("reason") == "QuarantineHold", timeout=30,
    )
    assert held["phase"] == "Promoted" and held["quarantined"] == "r1"
    assert f"{rw.namespace}/bad-artifact entry r1-model" in condition(held, "Stalled")["message"]
    assert condition(held, "Ready")["status"] == "False"
    rw.event(NAME, type="Normal", reason="QuarantineHold", contains="entry r1-model")
    assert_holds("all users stay on r1 (nothing clean to go to)",
                 lambda: rw.routes(NAME) == Routes({1: 100}), seconds=3)
    # Lifting the entry (deleting the Quarantine) wakes the release through the watch.
    rw.kubectl("delete", "quarantine", "bad-artifact", "-n", rw.namespace)
    ready = rw.wait_status(
        NAME, "Ready again", lambda s: condition(s, "Ready").get("status") == "True",
        timeout=30,
    )
    assert ready.get("quarantined", "") == "" and timeline(ready, "QuarantineLifted")


def test_a_candidate_whose_data_is_quarantined_never_gets_a_deployment(rw: Rewind) -> None:
    rw.apply(policy_manifest(POLICY, canary((50, "1s"))))
    rw.promote_first_revision(NAME, POLICY)
    rw.apply(quarantine("poison", {"name": "d2", "dataVersion": "d2"}))
    rw.apply(release_manifest(NAME, POLICY, version=2))
    failed = rw.wait_phase(NAME, "Failed", stable=1, timeout=30)
    assert "refused before any traffic: quarantined by Quarantine" in history(failed, 2)["reason"]
    assert_holds("r2 never gets a Deployment, users stay on r1",
                 lambda: rw.replicas(NAME, 2) is None and rw.routes(NAME) == Routes({1: 100}),
                 seconds=3)
