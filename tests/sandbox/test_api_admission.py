"""The generated CRDs on a real API server: admission, defaults, status, columns, explain."""

from __future__ import annotations

import json
import math
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml

from rewind import api
from tests.api_cases import (
    DELETE,
    EXAMPLES,
    FRAUD_MR,
    FRAUD_RP,
    INVALID,
    LLM_MR,
    LLM_RP,
    VALID_VARIANTS,
    Case,
    example,
    mutate,
)
from tests.conftest import Kubectl, wait_for

pytestmark = [pytest.mark.sandbox, pytest.mark.usefixtures("crds_installed")]

EXAMPLE_FILES = sorted(p.name for p in EXAMPLES.glob("*.yaml"))


@pytest.fixture(scope="module")
def dry_run_ns(kubectl: Kubectl) -> Iterator[str]:
    """One namespace for all server-side dry runs: nothing is persisted in it."""
    name = f"t-api-admission-{uuid.uuid4().hex[:5]}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def dry_run(kubectl: Kubectl, namespace: str, text: str) -> subprocess.CompletedProcess[str]:
    return kubectl(
        "apply",
        "--dry-run=server",
        "--validate=strict",
        "-n",
        namespace,
        "-f",
        "-",
        input=text,
        check=False,
    )


@pytest.mark.parametrize("file", EXAMPLE_FILES)
def test_example_accepted(kubectl: Kubectl, dry_run_ns: str, file: str) -> None:
    result = dry_run(kubectl, dry_run_ns, (EXAMPLES / file).read_text())
    assert result.returncode == 0, result.stderr
    assert "created (server dry run)" in result.stdout


@pytest.mark.parametrize(
    ("name", "base", "changes"), VALID_VARIANTS, ids=[v[0] for v in VALID_VARIANTS]
)
def test_valid_variant_accepted(
    kubectl: Kubectl,
    dry_run_ns: str,
    name: str,
    base: tuple[str, str],
    changes: tuple[tuple[str, Any], ...],
) -> None:
    doc = example(*base)
    for path, value in changes:
        doc = mutate(doc, path, value)
    result = dry_run(kubectl, dry_run_ns, json.dumps(doc))
    assert result.returncode == 0, f"{name}: {result.stderr}"


@pytest.mark.parametrize("case", INVALID, ids=lambda c: c.id)
def test_invalid_rejected(kubectl: Kubectl, dry_run_ns: str, case: Case) -> None:
    result = dry_run(kubectl, dry_run_ns, json.dumps(case.manifest()))
    assert result.returncode != 0, f"{case.id} was accepted"
    assert case.path in result.stderr, f"{case.id}: field path not named:\n{result.stderr}"
    assert case.reason in result.stderr, f"{case.id}: reason not given:\n{result.stderr}"


def _full_status() -> api.ModelReleaseStatus:
    at = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    fail = api.Measurement(
        metric="error-rate",
        value=0.12,
        max=0.05,
        verdict=api.Verdict.FAIL,
        at=at,
        revision=3,
        message="error-rate 0.12 > max 0.05",
    )
    # An infinite ratio (stored as valueText) and a round the operator was too busy to run.
    infinite = api.Measurement(
        metric="error-ratio", value=math.inf, max=2.0, verdict=api.Verdict.FAIL, at=at,
        revision=3, message="error-ratio +Inf > max 2",
    )
    overloaded = api.Measurement(
        metric="latency", verdict=api.Verdict.INCONCLUSIVE, at=at, revision=3,
        error_kind=api.QueryErrorKind.OVERLOADED.value,
        message="latency: query error (overloaded): every analysis thread was busy",
    )
    return api.ModelReleaseStatus(
        observed_generation=1,
        phase=api.Phase.AWAITING_APPROVAL,
        message="canary step 2/3 at 25%",
        strategy=api.StrategyType.CANARY,
        stable_revision=2,
        candidate_revision=3,
        current_revision=3,
        weights=api.Weights(stable=75, candidate=25),
        mirror_percent=0,
        current_step=1,
        step_started_at=at,
        analysis=api.AnalysisStatus(
            last_run_at=at, failures=1, consecutive_failures=1, inconclusive=2,
            measurements=[fail, infinite, overloaded],
        ),
        pending_decision=api.PendingDecision(
            reason="error-rate 0.12 > max 0.05",
            decided_at=at,
            expires_at=at,
            required_approvers=2,
            approvals=[api.ApprovalRecord(user="alice", at=at)],
            evidence=[fail],
        ),
        history=[
            api.HistoryEntry(
                revision=2,
                spec_hash="9a1c0b2d3e4f5a6b",
                model_version="2.0.0",
                model_digest="sha256:" + "a" * 64,
                image_digest="sha256:" + "b" * 64,
                data_version="3f9c2d1",
                outcome=api.Outcome.PROMOTED,
                created_at=at,
                promoted_at=at,
            ),
            api.HistoryEntry(revision=3, outcome=api.Outcome.PROGRESSING, created_at=at),
        ],
        timeline=[
            api.TimelineEntry(
                at=at,
                type=api.TimelineType.ROLLBACK_DECIDED,
                revision=3,
                message="error-rate 0.12 > max 0.05",
            )
        ],
        conditions=[
            api.Condition(
                type=api.ConditionType.PROGRESSING,
                status=api.ConditionStatus.TRUE,
                reason="AwaitingApproval",
                message="waiting for 2 approvers",
                last_transition_time=at,
                observed_generation=1,
            )
        ],
    )


def _dump(status: api.StatusModel) -> dict[str, Any]:
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)


def _patch_status(kubectl: Kubectl, namespace: str, resource: str, status: dict[str, Any]) -> None:
    kubectl(
        "patch",
        resource,
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )


def _table(text: str) -> list[list[str]]:
    return [line.split() for line in text.strip().splitlines()]


def test_status_round_trips_and_columns_show_it(kubectl: Kubectl, namespace: str) -> None:
    kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / "fraud-detection-canary.yaml"))
    status = _full_status()
    _patch_status(kubectl, namespace, "mr/fraud-detector", _dump(status))

    stored = json.loads(
        kubectl("get", "mr", "fraud-detector", "-n", namespace, "-o", "json").stdout
    )
    # Nothing pruned: every field the operator writes is declared in the status schema.
    assert stored["status"] == _dump(status)
    assert api.ModelReleaseStatus.model_validate(stored["status"]) == status

    rows = _table(kubectl("get", "mr", "-n", namespace).stdout)
    assert rows[0] == ["NAME", "PHASE", "STRATEGY", "STABLE", "CANDIDATE", "WEIGHT", "BREAKER",
                       "QUARANTINED", "AGE"]
    assert rows[1][:6] == ["fraud-detector", "AwaitingApproval", "canary", "2", "3", "25"]

    wide = _table(kubectl("get", "modelreleases", "-n", namespace, "-o", "wide").stdout)
    assert wide[0][-3:] == ["MODEL", "MESSAGE", "AGE"]

    listed = kubectl("get", "rewind", "-n", namespace, "-o", "name").stdout.split()
    assert sorted(listed) == [
        "modelrelease.rewind.dev/fraud-detector",
        "rolloutpolicy.rewind.dev/fraud-canary",
    ]


def test_status_lists_are_bounded(kubectl: Kubectl, namespace: str) -> None:
    kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / "fraud-detection-canary.yaml"))
    entry = _dump(api.TimelineEntry(type="StepStarted", revision=1, message="x"))
    status: dict[str, Any] = {"timeline": [entry] * (api.MAX_TIMELINE + 1)}
    result = kubectl(
        "patch",
        "mr/fraud-detector",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
        check=False,
    )
    assert result.returncode != 0
    assert "status.timeline" in result.stderr
    assert f"must have at most {api.MAX_TIMELINE} items" in result.stderr
    status["timeline"] = status["timeline"][: api.MAX_TIMELINE]
    _patch_status(kubectl, namespace, "mr/fraud-detector", status)


def test_status_rejects_unknown_phase(kubectl: Kubectl, namespace: str) -> None:
    kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / "fraud-detection-canary.yaml"))
    result = kubectl(
        "patch",
        "mr/fraud-detector",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"phase": "Exploded"}}),
        check=False,
    )
    assert result.returncode != 0
    assert "status.phase" in result.stderr
    assert "Unsupported value" in result.stderr


def test_server_defaults_match_models_and_hash(kubectl: Kubectl, namespace: str) -> None:
    release = mutate(example(*FRAUD_MR), "spec.serving", {"replicas": 2})
    policy = mutate(example(*FRAUD_RP), "spec.analysis", {"metrics": []})
    policy = mutate(policy, "spec.rollback", DELETE)  # the server fills in the defaults
    text = yaml.safe_dump_all([policy, release])
    kubectl("apply", "-n", namespace, "-f", "-", input=text)

    stored_mr = json.loads(
        kubectl("get", "mr", "fraud-detector", "-n", namespace, "-o", "json").stdout
    )
    serving = stored_mr["spec"]["serving"]
    assert serving == {
        "replicas": 2, "port": 8080, "protocol": "http", "readinessPath": "/healthz",
        "resources": {},
    }
    assert stored_mr["spec"]["code"]["allowTagImage"] is False
    # The operator hashes what the API server stored; it must equal the user's spec hash.
    assert api.spec_hash(stored_mr["spec"]) == api.spec_hash(release["spec"])

    stored_rp = json.loads(
        kubectl("get", "rp", "fraud-canary", "-n", namespace, "-o", "json").stdout
    )
    parsed = api.RolloutPolicySpec.model_validate(stored_rp["spec"])
    local = api.RolloutPolicySpec.model_validate(policy["spec"])
    assert parsed == local
    assert stored_rp["spec"]["rollback"]["mode"] == "automatic"
    assert stored_rp["spec"]["rollback"]["scaleDownDelay"] == api.RollbackSpec().scale_down_delay
    assert stored_rp["spec"]["analysis"]["interval"] == api.AnalysisSpec().interval
    assert stored_rp["spec"]["analysis"]["noData"] == "Inconclusive"

    _patch_status(kubectl, namespace, "rp/fraud-canary", {"strategy": "canary"})
    rows = _table(kubectl("get", "rp", "-n", namespace).stdout)
    assert rows[0] == ["NAME", "STRATEGY", "MODE", "AGE"]
    assert rows[1][:3] == ["fraud-canary", "canary", "automatic"]


def test_pod_template_is_stored_as_written(kubectl: Kubectl, namespace: str) -> None:
    """The template is kept as written: nothing pruned (fields Rewind does not declare, e.g.
    tolerations, volumeMounts, startupProbe), nothing defaulted inside it, so the hash the
    operator computes from the stored object is the user's."""
    release = example(*LLM_MR)
    policy = example(*LLM_RP)
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all([policy, release]))
    stored = json.loads(kubectl("get", "mr", "llama-chat", "-n", namespace, "-o", "json").stdout)
    assert stored["spec"]["serving"]["template"] == release["spec"]["serving"]["template"]
    assert stored["spec"]["traffic"]["sidecar"] == "Auto"
    assert api.spec_hash(stored["spec"]) == api.spec_hash(release["spec"])


def _normal(text: str) -> str:
    return " ".join(text.split())


def test_explain_shows_descriptions(kubectl: Kubectl) -> None:
    model_field = api.ModelReleaseSpec.model_fields["model"].description
    digest_field = api.ModelSpec.model_fields["artifact_digest"].description
    assert model_field
    assert digest_field

    def explained() -> str | None:
        result = kubectl("explain", "modelrelease.spec.model", check=False)
        return result.stdout if result.returncode == 0 else None

    out = _normal(wait_for("kubectl explain modelrelease.spec.model", explained, timeout=60))
    assert _normal(model_field) in out
    assert "artifactDigest" in out
    assert _normal(digest_field) in out

    policy = kubectl("explain", "rolloutpolicy.spec.strategy.canary.steps").stdout
    steps_field = api.CanaryStrategy.model_fields["steps"].description
    assert steps_field
    assert _normal(steps_field) in _normal(policy)
