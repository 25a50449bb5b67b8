"""Fixtures shared by the operator's end-to-end tests."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.conftest import ROOT, Kubectl, MetricsEndpoint, OperatorProcess, Sandbox, wait_for
from tests.sandbox.operator_helpers import Rewind, release_manifest
from tests.sandbox.s3_helpers import s3_server  # noqa: F401  (the fixture, for every sandbox test)


@pytest.fixture()
def rw(
    kubectl: Kubectl,
    namespace: str,
    operator: OperatorProcess,
    metrics_endpoint: MetricsEndpoint,
    sandbox: Sandbox,
) -> Rewind:
    """The test's namespace with its own operator and settable metrics."""
    return Rewind(kubectl, namespace, operator, metrics_endpoint, sandbox)


POLICY_FILE = ROOT / "charts" / "rewind" / "files" / "human-actions.yaml"
STAMP_FILE = ROOT / "charts" / "rewind" / "files" / "human-actions-stamp.yaml"


@pytest.fixture(scope="session")
def human_actions(kubectl: Kubectl, crds_installed: None) -> Iterator[None]:
    """The admission policies, installed and in force (a new policy takes a moment to be
    enforced after it is created: probe it with a server-side dry run until it stamps)."""
    for policies in (POLICY_FILE, STAMP_FILE):
        kubectl("apply", "--server-side", "--force-conflicts", "-f", str(policies))
    probe = {**release_manifest("chatbot", "two-approvers"),
             "metadata": {"name": "admission-probe", "namespace": "default"}}
    kubectl("apply", "-f", "-", input=json.dumps(probe))

    def enforced() -> bool:
        out = kubectl("annotate", "-n", "default", "modelrelease/admission-probe",
                      "rewind.dev/promote=true", "--dry-run=server", "-o", "json").stdout
        annotations = json.loads(out)["metadata"].get("annotations", {})
        forged = kubectl("annotate", "-n", "default", "modelrelease/admission-probe",
                         "rewind.dev/promote-by=someone-else", "--dry-run=server",
                         check=False)
        # Both policies must be in force: the stamp (mutating) and the refusal (validating).
        return annotations.get("rewind.dev/promote-by") == "rewind-admin" and (
            forged.returncode != 0)

    wait_for("the human-actions admission policies to be enforced", enforced, 60)
    yield
    kubectl("delete", "modelrelease/admission-probe", "-n", "default", check=False)
