"""ModelRelease objects for checking the Argo CD health check, actions and kstatus together.

Plain JSON-like dicts (not the pydantic models), so a status can carry what the models do not
know yet (the Promoting phase, the Reconciling condition) and statuses produced elsewhere can
be fed in as they are:

    objects = manifests([s.model_dump(mode="json", by_alias=True, exclude_none=True)
                         for s in engine_statuses])
    assert disagreements(objects) == []        # tests/go_tools.py: Argo CD health vs kstatus

``operator_status(phase)`` is a status as the operator writes it under the health contract
(charts/rewind/argocd/health.lua says it; kstatus reads the same conditions), and ``CASES``
is every hand-built object the tests run: each phase as the operator writes it, and the edge
cases (generation ahead, Stalled, missing status or conditions, odd phases).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tests.api_cases import example

API_VERSION = "rewind.dev/v1alpha1"
NAME = "fraud-detector"
NAMESPACE = "risk"
AT = "2026-01-05T03:00:00Z"

#: Every phase, including Promoting (traffic moving to 100 % of the candidate).
PHASES = (
    "Pending",
    "Progressing",
    "Paused",
    "AwaitingApproval",
    "Promoting",
    "Promoted",
    "RollingBack",
    "RolledBack",
    "Failed",
)

#: Argo CD health of each phase as the operator writes it (up to date, nothing Stalled but
#: what the phase itself implies).
HEALTH_OF_PHASE = {
    "Pending": "Progressing",
    "Progressing": "Progressing",
    "Paused": "Suspended",
    "AwaitingApproval": "Suspended",
    "Promoting": "Progressing",
    "Promoted": "Healthy",
    "RollingBack": "Progressing",
    "RolledBack": "Degraded",
    "Failed": "Degraded",
}

#: What the operator says in status.message in each phase.
MESSAGES = {
    "Pending": "waiting for r1 to become Available",
    "Progressing": "canary step 1/2 at 20% (stable r1 80%)",
    "Paused": "canary step 2/2 at 50%: waiting for rewind.dev/promote",
    "AwaitingApproval": (
        "rollback of r2 to r1 proposed: error-rate 0.12 > max 0.05; waiting for 1 approver(s)"
    ),
    "Promoting": "r2 passed analysis; moving traffic to 100%",
    "Promoted": "r2 promoted: serving 100% of traffic",
    "RollingBack": "rolling back r2 to r1: waiting for r1 to become Available",
    "RolledBack": "r2 rolled back; r1 serves 100%: error-rate 0.12 > max 0.05",
    "Failed": "r1 failed: not Available within progressDeadline 10m",
}


def condition(
    type_: str, status: bool | str, reason: str = "", message: str = "", generation: int = 1
) -> dict[str, Any]:
    """A status condition as the operator writes it."""
    value = status if isinstance(status, str) else ("True" if status else "False")
    return {
        "type": type_,
        "status": value,
        "reason": reason or ("AsExpected" if value == "False" else type_),
        "message": message,
        "lastTransitionTime": AT,
        "observedGeneration": generation,
    }


def _history(phase: str) -> list[dict[str, Any]]:
    r1 = {"revision": 1, "specHash": "9a1c0d3e5f7b2a41", "modelVersion": "1.0.0",
          "outcome": "Promoted", "createdAt": AT, "promotedAt": AT}
    if phase == "Pending":
        return [{**r1, "outcome": "Progressing", "promotedAt": None}]
    if phase == "Failed":
        return [{**r1, "outcome": "Failed", "promotedAt": None, "finishedAt": AT,
                 "reason": MESSAGES["Failed"]}]
    outcome = {"Promoted": "Promoted", "RolledBack": "RolledBack"}.get(phase, "Progressing")
    r2 = {"revision": 2, "specHash": "d00a57fee40b0d57", "modelVersion": "2.0.0",
          "outcome": outcome, "createdAt": AT}
    if phase == "Promoted":
        r1["outcome"] = "Retired"
        r2["promotedAt"] = AT
    return [r1, r2]


def operator_status(
    phase: str,
    *,
    generation: int = 1,
    message: str | None = None,
    stalled: tuple[str, str] | None = None,
    reconciling: bool | None = None,
) -> dict[str, Any]:
    """A status as the operator writes it in ``phase`` under the health contract.

    Conditions: Ready (True only when Promoted), Reconciling (True while the operator is
    moving things on its own), Stalled (True in RolledBack and Failed, or as ``stalled`` =
    (reason, message) says), and the legacy Progressing and Degraded.
    """
    msg = MESSAGES.get(phase, phase) if message is None else message
    waiting = phase in ("Paused", "AwaitingApproval")
    final = phase in ("Promoted", "RolledBack", "Failed")
    if reconciling is None:
        reconciling = not waiting and not final and stalled is None
    first_release = phase in ("Pending", "Failed")
    current = 1 if first_release else 2
    if stalled is None and phase in ("RolledBack", "Failed"):
        stalled = (phase, f"{msg}; the spec still describes r{current}: annotate "
                          "rewind.dev/retry=true to try it again or change the spec")
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "phase": phase,
        "message": msg,
        "strategy": "canary",
        "stableRevision": 0 if first_release else 1,
        "candidateRevision": 0 if phase in ("Promoted", "RolledBack") else current,
        "currentRevision": current,
        "weights": {"stable": 100, "candidate": 0},
        "mirrorPercent": 0,
        "currentStep": 1,
        "history": [{k: v for k, v in e.items() if v is not None} for e in _history(phase)],
        "timeline": [{"at": AT, "type": "RevisionCreated", "revision": 2, "message": "r2"}],
        "conditions": [
            condition("Ready", phase == "Promoted", phase, msg, generation),
            condition("Reconciling", reconciling, phase, msg if reconciling else "", generation),
            condition("Stalled", stalled is not None, *(stalled or ("AsExpected", "")),
                      generation=generation),
            condition("Progressing", not final and not waiting, phase, msg, generation),
            condition("Degraded", phase in ("AwaitingApproval", "RollingBack", "RolledBack",
                                            "Failed"), phase, msg, generation),
        ],
    }
    if phase == "Promoted":
        status["stableRevision"] = 2
    if phase in ("Progressing", "Paused", "Promoting"):
        status["weights"] = {"stable": 80, "candidate": 20}
    if phase == "AwaitingApproval":
        status["pendingDecision"] = {
            "action": "Rollback", "reason": "error-rate 0.12 > max 0.05", "decidedAt": AT,
            "expiresAt": "2026-01-05T03:15:00Z", "requiredApprovers": 1, "approvals": [],
            "evidence": [{"metric": "error-rate", "value": 0.12, "max": 0.05,
                          "verdict": "Fail", "at": AT, "revision": 2, "message": ""}],
        }
    if phase in ("AwaitingApproval", "Promoting", "Progressing"):
        status["analysis"] = {
            "lastRunAt": AT, "failures": 1, "consecutiveFailures": 1, "inconclusive": 0,
            "measurements": [{"metric": "error-rate", "value": 0.12, "max": 0.05,
                              "verdict": "Fail", "at": AT, "revision": 2, "message": ""}],
        }
    return status


def manifest(
    status: Mapping[str, Any] | None,
    *,
    generation: int | None = None,
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A ModelRelease as the API server returns it, with ``status`` (None: no status yet).

    ``generation`` defaults to the status' observedGeneration (the operator is up to date).
    """
    if generation is None:
        generation = int(status.get("observedGeneration", 1)) if status else 1
    example_release = example("fraud-detection-canary.yaml", "ModelRelease")
    metadata: dict[str, Any] = {
        "name": NAME,
        "namespace": NAMESPACE,
        "uid": "5f0c7a52-2b7e-4d1c-9a57-3c3f0d1b2e4f",
        "resourceVersion": "4711",
        "generation": generation,
        "creationTimestamp": AT,
        "labels": dict(example_release["metadata"].get("labels", {})),
    }
    if annotations is not None:
        metadata["annotations"] = dict(annotations)
    obj: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "ModelRelease",
        "metadata": metadata,
        "spec": example_release["spec"],
    }
    if status is not None:
        obj["status"] = copy.deepcopy(dict(status))
    return obj


def manifests(
    statuses: Iterable[Mapping[str, Any] | None], *, generation: int | None = None
) -> list[dict[str, Any]]:
    """One ModelRelease per status (for statuses made elsewhere, e.g. by the engine)."""
    return [manifest(s, generation=generation) for s in statuses]


@dataclass(frozen=True)
class Case:
    """A hand-built ModelRelease and the Argo CD health it must get."""

    id: str
    obj: dict[str, Any]
    health: str
    #: The actions discovery must offer.
    actions: frozenset[str]
    #: Text the health message must contain.
    says: str = ""
    #: Whether kstatus must agree: False for objects whose conditions the operator never
    #: writes that way; ``kstatus`` then says what kstatus makes of them instead.
    operator_written: bool = True
    kstatus: str = ""


#: The actions discovery offers in each phase of ``operator_status`` (today's semantics:
#: only what the operator would act on there).
ACTIONS_OF_PHASE: dict[str, frozenset[str]] = {
    "Pending": frozenset(),
    "Progressing": frozenset({"rollback"}),
    "Paused": frozenset({"promote", "rollback"}),
    "AwaitingApproval": frozenset({"approve-rollback", "reject-rollback", "rollback"}),
    "Promoting": frozenset({"rollback"}),
    # r1 was promoted before r2: there is a way back (and a drill of it)
    "Promoted": frozenset({"rollback", "drill"}),
    "RollingBack": frozenset(),
    "RolledBack": frozenset({"retry"}),
    "Failed": frozenset({"retry"}),
}


def _without_conditions(phase: str) -> dict[str, Any]:
    status = operator_status(phase)
    del status["conditions"]
    return status


def _cases() -> list[Case]:
    cases: list[Case] = []
    for phase in PHASES:
        acts = ACTIONS_OF_PHASE[phase]
        cases.append(Case(f"{phase}", manifest(operator_status(phase)), HEALTH_OF_PHASE[phase],
                          acts, says=MESSAGES[phase]))
        cases.append(Case(
            f"{phase}-generation-ahead",
            manifest(operator_status(phase, generation=2), generation=3),
            "Progressing", acts, says="generation 3 (last acted on 2)"))
        cases.append(Case(
            f"{phase}-stalled",
            manifest(operator_status(phase, stalled=(
                "ReconcileError", "VirtualService risk/fraud-detector is owned by someone else"))),
            "Degraded", acts, says="ReconcileError: VirtualService risk/fraud-detector"))
        # Conditions missing altogether: only the phase speaks. kstatus sees no condition at
        # all and calls it Current; the operator always writes its conditions.
        cases.append(Case(
            f"{phase}-no-conditions", manifest(_without_conditions(phase)),
            {"Paused": "Suspended", "AwaitingApproval": "Suspended", "RolledBack": "Degraded",
             "Failed": "Degraded"}.get(phase, "Progressing"),
            acts, says=MESSAGES[phase], operator_written=False, kstatus="Current"))

    promoted_unavailable = operator_status(
        "Promoted", stalled=("StableUnavailable", "r2 has no Available pod (0/3 ready)"))
    promoted_unavailable["conditions"][0] = condition(
        "Ready", False, "StableUnavailable", "r2 has no Available pod (0/3 ready)")
    cases.append(Case("Promoted-stable-lost-its-pods", manifest(promoted_unavailable),
                      "Degraded", ACTIONS_OF_PHASE["Promoted"],
                      says="StableUnavailable: r2 has no Available pod"))

    promoted_not_ready = operator_status("Promoted")
    promoted_not_ready["conditions"][0] = condition("Ready", False, "Promoted", "0/3 ready")
    cases.append(Case("Promoted-not-ready-yet", manifest(promoted_not_ready), "Progressing",
                      ACTIONS_OF_PHASE["Promoted"], says=MESSAGES["Promoted"]))

    cases.append(Case("Promoted-reconciling", manifest(operator_status(
        "Promoted", reconciling=True)), "Progressing", ACTIONS_OF_PHASE["Promoted"]))

    # The issue's input: the operator has not acted on the latest spec yet.
    issue = {"observedGeneration": 2, "phase": "Promoted", "message": "r2 promoted"}
    cases.append(Case("issue-generation-3-observed-2", manifest(issue, generation=3),
                      "Progressing", frozenset({"drill"}), says="generation 3 (last acted on 2)",
                      operator_written=True))

    cases.append(Case("no-status", manifest(None), "Progressing", frozenset(),
                      says="Waiting for the Rewind operator", operator_written=False,
                      kstatus="Current"))
    cases.append(Case("empty-status", manifest({}), "Progressing", frozenset(),
                      says="Waiting for the Rewind operator", operator_written=False,
                      kstatus="Current"))

    for phase in ("RolledBack", "Failed"):
        unstalled = operator_status(phase)
        unstalled["conditions"][2] = condition("Stalled", False)
        cases.append(Case(f"{phase}-without-stalled", manifest(unstalled), "Degraded",
                          ACTIONS_OF_PHASE[phase], says=MESSAGES[phase],
                          operator_written=False, kstatus="InProgress"))

    silent = operator_status("Progressing", message="")
    cases.append(Case("empty-message", manifest(silent), "Progressing",
                      ACTIONS_OF_PHASE["Progressing"]))
    silent_stall = operator_status("Paused", message="", stalled=("PolicyError", ""))
    cases.append(Case("stalled-without-message", manifest(silent_stall), "Degraded",
                      ACTIONS_OF_PHASE["Paused"], says="PolicyError"))

    for ready in (True, False):
        odd = operator_status("Promoted" if ready else "Progressing")
        odd["phase"] = "Hibernating"
        cases.append(Case(f"unknown-phase-ready-{ready}", manifest(odd),
                          "Healthy" if ready else "Progressing", frozenset()))

    first = operator_status("Promoted")
    first["history"] = first["history"][1:]  # only r2: nothing to go back to
    first["stableRevision"] = 2
    # A drill is offered (it reports NoTarget: the rollback button leads nowhere).
    cases.append(Case("Promoted-first-release", manifest(first), "Healthy",
                      frozenset({"drill"})))

    existing = manifest(operator_status("Paused"), annotations={"team": "risk"})
    cases.append(Case("Paused-with-annotations", existing, "Suspended",
                      ACTIONS_OF_PHASE["Paused"]))
    return cases


CASES: list[Case] = _cases()
