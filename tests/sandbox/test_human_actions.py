"""Who may approve, and who did: admission stamps the approver, RBAC verbs decide who may.

These run the real admission chain of the sandbox API server (MutatingAdmissionPolicy and
ValidatingAdmissionPolicy from charts/rewind/files/human-actions.yaml) and, for N-of-M
approval, the real operator.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import ROOT, Kubectl, MetricsEndpoint, OperatorProcess, Sandbox, wait_for
from tests.sandbox.operator_helpers import (
    METRIC,
    canary,
    policy_manifest,
    release_manifest,
    revision_of,
)

# Cluster-wide admission policies change every annotate: nothing else may run meanwhile.
pytestmark = [pytest.mark.sandbox, pytest.mark.exclusive]

POLICY_FILE = ROOT / "charts" / "rewind" / "files" / "human-actions.yaml"


@pytest.fixture(scope="session")
def human_actions(kubectl: Kubectl, crds_installed: None) -> Iterator[None]:
    """The admission policies, installed and in force (a new policy takes a moment to be
    enforced after it is created: probe it with a server-side dry run until it stamps)."""
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(POLICY_FILE))
    probe = {**_release(1), "metadata": {"name": "admission-probe", "namespace": "default"}}
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


def _policy(required: int) -> dict[str, Any]:
    return policy_manifest("two-approvers", canary((50, "1h")), mode="approval",
                           approval_timeout="1h", required_approvers=required)


def _release(version: int) -> dict[str, Any]:
    return release_manifest("chatbot", "two-approvers", version=version)


def _apply(kubectl: Kubectl, namespace: str, obj: dict[str, Any]) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(obj))


def _get(kubectl: Kubectl, namespace: str) -> dict[str, Any]:
    out = kubectl("get", "modelrelease/chatbot", "-n", namespace, "-o", "json").stdout
    return dict(json.loads(out))


def _bind(kubectl: Kubectl, namespace: str, role: str, user: str) -> None:
    kubectl("create", "rolebinding", f"{role}-{user}", f"--clusterrole={role}",
            f"--user={user}", "-n", namespace)


def test_approval_is_stamped_with_the_real_user_and_cannot_be_forged(
    kubectl: Kubectl, namespace: str, human_actions: None, sandbox: Sandbox
) -> None:
    _apply(kubectl, namespace, _policy(1))
    _apply(kubectl, namespace, _release(1))
    kubectl("annotate", "-n", namespace, "modelrelease/chatbot",
            "rewind.dev/approve-rollback=true")
    annotations = _get(kubectl, namespace)["metadata"]["annotations"]
    assert annotations["rewind.dev/approve-rollback-by"] == "rewind-admin"

    forged = kubectl("annotate", "-n", namespace, "modelrelease/chatbot", "--overwrite",
                     "rewind.dev/approve-rollback-by=someone-else", check=False)
    assert forged.returncode != 0
    assert "may not set them by hand" in forged.stderr


def test_only_users_granted_the_verb_may_approve(
    kubectl: Kubectl, namespace: str, human_actions: None, sandbox: Sandbox
) -> None:
    user = sandbox.env["SANDBOX_DEV_USER"]
    _apply(kubectl, namespace, _policy(1))
    _apply(kubectl, namespace, _release(1))
    # May edit the object, but holds no approve-rollback verb.
    kubectl("create", "role", "mr-editor", "--verb=get,list,patch",
            "--resource=modelreleases.rewind.dev", "-n", namespace)
    kubectl("create", "rolebinding", "mr-editor", "--role=mr-editor", f"--user={user}",
            "-n", namespace)
    denied = kubectl("annotate", "-n", namespace, "modelrelease/chatbot",
                     "rewind.dev/approve-rollback=true", dev=True, check=False)
    assert denied.returncode != 0
    assert f"user {user} may not approve-rollback on modelrelease/chatbot" in denied.stderr
    # Other annotations are still the editor's to set.
    kubectl("annotate", "-n", namespace, "modelrelease/chatbot", "team=chat", dev=True)

    _bind(kubectl, namespace, "rewind-approver", user)
    wait_for("the approver role to take effect", lambda: kubectl(
        "auth", "can-i", "approve-rollback", "modelreleases.rewind.dev", "-n", namespace,
        dev=True, check=False).stdout.strip() == "yes")
    kubectl("annotate", "-n", namespace, "modelrelease/chatbot",
            "rewind.dev/approve-rollback=true", dev=True)
    annotations = _get(kubectl, namespace)["metadata"]["annotations"]
    assert annotations["rewind.dev/approve-rollback-by"] == user
    # An approver is not on call: break glass needs the rollback verb.
    glass = kubectl("annotate", "-n", namespace, "modelrelease/chatbot",
                    "rewind.dev/rollback=panic", dev=True, check=False)
    assert glass.returncode != 0 and "may not rollback" in glass.stderr


def test_two_distinct_approvers_are_needed(
    kubectl: Kubectl,
    namespace: str,
    human_actions: None,
    sandbox: Sandbox,
    operator: OperatorProcess,
    metrics_endpoint: MetricsEndpoint,
) -> None:
    user = sandbox.env["SANDBOX_DEV_USER"]
    # The policies are installed: the operator may believe the -by stamps.
    operator.stop()
    operator.start("--trust-actor-annotations")
    _bind(kubectl, namespace, "rewind-approver", user)
    _apply(kubectl, namespace, _policy(2))
    _apply(kubectl, namespace, _release(1))
    wait_for("r1 promoted", lambda: _get(kubectl, namespace).get("status", {})
             .get("stableRevision") == 1, 60)
    metrics_endpoint.set(METRIC, 0.4, namespace=namespace, workload="chatbot-r2")
    _apply(kubectl, namespace, _release(2))
    wait_for("the rollback decision", lambda: _get(kubectl, namespace).get("status", {})
             .get("phase") == "AwaitingApproval", 60)

    def approve(dev: bool) -> None:
        kubectl("annotate", "-n", namespace, "modelrelease/chatbot",
                "rewind.dev/approve-rollback=true", dev=dev)

    approve(dev=False)
    wait_for("the first approval recorded", lambda: [
        a["user"] for a in _get(kubectl, namespace)["status"]["pendingDecision"]["approvals"]
    ] == ["rewind-admin"], 30)
    # The same person approving again does not count twice. The same value came back after
    # its removal, so it is left on the object (a GitOps tool would put it back forever).
    wait_for("the first approval's removal seen", lambda: all(
        c.get("goneAt") for c in _get(kubectl, namespace)["status"].get("consumedActions", [])
    ), 30)
    approve(dev=False)
    wait_for("the repeated approval noted", lambda: any(
        "duplicate approval by rewind-admin counts once" in e["message"]
        for e in _get(kubectl, namespace)["status"]["timeline"]), 30)
    release = _get(kubectl, namespace)
    status = release["status"]
    assert status["phase"] == "AwaitingApproval"
    assert len(status["pendingDecision"]["approvals"]) == 1
    assert release["metadata"]["annotations"]["rewind.dev/approve-rollback"] == "true"

    # The second approver sets a new value over it (plain "true" would change nothing).
    kubectl("annotate", "-n", namespace, "modelrelease/chatbot", "--overwrite",
            "rewind.dev/approve-rollback=true-2", dev=True)
    wait_for("the rollback", lambda: _get(kubectl, namespace)["status"]["phase"] == "RolledBack",
             30)
    status = _get(kubectl, namespace)["status"]
    assert status["stableRevision"] == 1
    approvers = {e["user"] for e in status["timeline"] if e["type"] == "Approved"}
    assert approvers == {"rewind-admin", user}
    vs = json.loads(kubectl("get", "virtualservice/chatbot", "-n", namespace, "-o",
                            "json").stdout)
    routes = vs["spec"]["http"][0]["route"]
    assert [(revision_of(r["destination"]), r.get("weight", 100)) for r in routes] == [(1, 100)]


def test_the_stamp_of_a_pending_action_cannot_be_removed(
    kubectl: Kubectl, namespace: str, human_actions: None
) -> None:
    """Removing -by while the action stays would turn one approver into two (one of them
    anonymous); only consuming both together (what the operator does) is allowed."""
    _apply(kubectl, namespace, _policy(2))
    _apply(kubectl, namespace, {**_release(1), "metadata": {
        "name": "chatbot", "annotations": {"rewind.dev/approve-rollback": "true"}}})
    assert _get(kubectl, namespace)["metadata"]["annotations"][
        "rewind.dev/approve-rollback-by"] == "rewind-admin"
    stripped = kubectl("annotate", "-n", namespace, "modelrelease/chatbot",
                       "rewind.dev/approve-rollback-by-", check=False)
    assert stripped.returncode != 0
    assert "may not remove it" in stripped.stderr
    kubectl("annotate", "-n", namespace, "modelrelease/chatbot",
            "rewind.dev/approve-rollback-", "rewind.dev/approve-rollback-by-")
    assert "rewind.dev/approve-rollback-by" not in _get(kubectl, namespace)["metadata"].get(
        "annotations", {})


def test_without_trust_the_stamps_are_not_believed(
    kubectl: Kubectl,
    namespace: str,
    human_actions: None,
    operator: OperatorProcess,
    metrics_endpoint: MetricsEndpoint,
) -> None:
    """An operator not told the policies are installed records every approver as
    anonymous: one approval in total, whatever the -by annotations say."""
    _apply(kubectl, namespace, _policy(2))
    _apply(kubectl, namespace, _release(1))
    wait_for("r1 promoted", lambda: _get(kubectl, namespace).get("status", {})
             .get("stableRevision") == 1, 60)
    metrics_endpoint.set(METRIC, 0.4, namespace=namespace, workload="chatbot-r2")
    _apply(kubectl, namespace, _release(2))
    wait_for("the rollback decision", lambda: _get(kubectl, namespace).get("status", {})
             .get("phase") == "AwaitingApproval", 60)
    kubectl("annotate", "-n", namespace, "modelrelease/chatbot",
            "rewind.dev/approve-rollback=true")
    wait_for("the approval recorded", lambda: _get(kubectl, namespace)["status"]
             .get("pendingDecision", {}).get("approvals"), 30)
    approvals = _get(kubectl, namespace)["status"]["pendingDecision"]["approvals"]
    assert [a.get("user", "") for a in approvals] == [""]
