"""Who may approve, and who did: admission stamps the approver, RBAC verbs decide who may.

These run the real admission chain of the sandbox API server (the ValidatingAdmissionPolicy of
charts/rewind/files/human-actions.yaml, and the MutatingAdmissionPolicy of
human-actions-stamp.yaml) and, for N-of-M approval, the real operator. Each runs in both of
the chart's modes (humanActions.stamp): "server", where the MutatingAdmissionPolicy writes
rewind.dev/<action>-by, and "client", validation only, as on Kubernetes 1.30-1.35, where the
approver's command sets it and admission refuses any name but the requester's.
tests/sandbox/test_kube_versions.py runs the chart's install and an approval on those versions.
"""

from __future__ import annotations

import json
import os
import subprocess
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
STAMP_FILE = ROOT / "charts" / "rewind" / "files" / "human-actions-stamp.yaml"
ADMIN = "rewind-admin"


def _probe(kubectl: Kubectl, *pairs: str) -> subprocess.CompletedProcess[str]:
    return kubectl("annotate", "-n", "default", "modelrelease/admission-probe", "--overwrite",
                   *pairs, "--dry-run=server", "-o", "json", check=False)


def _stamps(kubectl: Kubectl) -> bool:
    """Whether the API server writes the -by stamp (the mutating policy is in force)."""
    out = _probe(kubectl, "rewind.dev/promote=probe")
    return out.returncode == 0 and json.loads(out.stdout)["metadata"].get(
        "annotations", {}).get("rewind.dev/promote-by") == ADMIN


def _install_stamping(kubectl: Kubectl) -> None:
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(STAMP_FILE))
    wait_for("the stamping policy to be enforced", lambda: _stamps(kubectl), 60)


@pytest.fixture(scope="module", params=["server", "client"])
def stamp(request: pytest.FixtureRequest) -> str:
    """Who writes rewind.dev/<action>-by: the API server, or the approver's command."""
    return str(request.param)


# Module scope: the client-mode teardown (the stamping policy back) runs as this module ends,
# before any other module's test annotates a release without a stamp.
@pytest.fixture(scope="module")
def human_actions(kubectl: Kubectl, crds_installed: None, stamp: str) -> Iterator[str]:
    """The admission policies of mode ``stamp``, installed and in force (a new policy takes
    a moment to be enforced after it is created: probe it with server-side dry runs).
    Afterwards the sandbox has both, as before: other tests annotate without stamps."""
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(POLICY_FILE))
    probe = {**_release(1), "metadata": {"name": "admission-probe", "namespace": "default"}}
    kubectl("apply", "-f", "-", input=json.dumps(probe))
    # The validating policy is in force when a hand-written stamp naming someone else is refused.
    wait_for("the validating policy to be enforced", lambda: _probe(
        kubectl, "rewind.dev/promote-by=someone-else").returncode != 0, 60)
    if stamp == "server":
        _install_stamping(kubectl)
    else:
        kubectl("delete", "-f", str(STAMP_FILE), "--ignore-not-found")
        # Without it, an unstamped action is refused and a stamped one accepted as sent.
        wait_for("validation only", lambda: not _stamps(kubectl) and _probe(
            kubectl, "rewind.dev/promote=probe", f"rewind.dev/promote-by={ADMIN}"
        ).returncode == 0, 60)
    yield stamp
    kubectl("delete", "modelrelease/admission-probe", "-n", "default", check=False)
    if stamp == "client":
        kubectl("apply", "-f", "-", input=json.dumps(probe))
        _install_stamping(kubectl)
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


def _act(
    kubectl: Kubectl, namespace: str, stamp: str, annotation: str, value: str, *,
    user: str = ADMIN, dev: bool = False, overwrite: bool = False, check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Sets an action annotation as ``user`` would in mode ``stamp``: with client stamps
    the command names its user in <annotation>-by too."""
    pairs = [f"{annotation}={value}"]
    if stamp == "client":
        pairs.append(f"{annotation}-by={user}")
    return kubectl("annotate", "-n", namespace, "modelrelease/chatbot",
                   *(["--overwrite"] if overwrite else []), *pairs, dev=dev, check=check)


def test_approval_is_stamped_with_the_real_user_and_cannot_be_forged(
    kubectl: Kubectl, namespace: str, human_actions: str, sandbox: Sandbox
) -> None:
    _apply(kubectl, namespace, _policy(1))
    _apply(kubectl, namespace, _release(1))
    # A stamp sent with the action naming someone else: refused (client), or written over
    # with the real user (server).
    forged_with = kubectl("annotate", "-n", namespace, "modelrelease/chatbot",
                          "rewind.dev/approve-rollback=true",
                          "rewind.dev/approve-rollback-by=someone-else", check=False)
    if human_actions == "client":
        assert forged_with.returncode != 0
        assert "may not set them to anyone else" in forged_with.stderr
        unstamped = kubectl("annotate", "-n", namespace, "modelrelease/chatbot",
                            "rewind.dev/approve-rollback=true", check=False)
        assert unstamped.returncode != 0
        assert ("rewind.dev/approve-rollback must name who sets it in the same request: add "
                "rewind.dev/approve-rollback-by=rewind-admin") in unstamped.stderr
        _act(kubectl, namespace, human_actions, "rewind.dev/approve-rollback", "true")
    else:
        assert forged_with.returncode == 0, forged_with.stderr
    annotations = _get(kubectl, namespace)["metadata"]["annotations"]
    assert annotations["rewind.dev/approve-rollback-by"] == "rewind-admin"

    forged = kubectl("annotate", "-n", namespace, "modelrelease/chatbot", "--overwrite",
                     "rewind.dev/approve-rollback-by=someone-else", check=False)
    assert forged.returncode != 0
    assert "may not set them to anyone else" in forged.stderr


def test_only_users_granted_the_verb_may_approve(
    kubectl: Kubectl, namespace: str, human_actions: str, sandbox: Sandbox
) -> None:
    user = sandbox.env["SANDBOX_DEV_USER"]
    _apply(kubectl, namespace, _policy(1))
    _apply(kubectl, namespace, _release(1))
    # May edit the object, but holds no approve-rollback verb.
    kubectl("create", "role", "mr-editor", "--verb=get,list,patch",
            "--resource=modelreleases.rewind.dev", "-n", namespace)
    kubectl("create", "rolebinding", "mr-editor", "--role=mr-editor", f"--user={user}",
            "-n", namespace)
    denied = _act(kubectl, namespace, human_actions, "rewind.dev/approve-rollback", "true",
                  user=user, dev=True, check=False)
    assert denied.returncode != 0
    assert f"user {user} may not approve-rollback on modelrelease/chatbot" in denied.stderr
    # Other annotations are still the editor's to set.
    kubectl("annotate", "-n", namespace, "modelrelease/chatbot", "team=chat", dev=True)

    _bind(kubectl, namespace, "rewind-approver", user)
    wait_for("the approver role to take effect", lambda: kubectl(
        "auth", "can-i", "approve-rollback", "modelreleases.rewind.dev", "-n", namespace,
        dev=True, check=False).stdout.strip() == "yes")
    _act(kubectl, namespace, human_actions, "rewind.dev/approve-rollback", "true", user=user,
         dev=True)
    annotations = _get(kubectl, namespace)["metadata"]["annotations"]
    assert annotations["rewind.dev/approve-rollback-by"] == user
    # An approver is not on call: break glass needs the rollback verb.
    glass = _act(kubectl, namespace, human_actions, "rewind.dev/rollback", "panic", user=user,
                 dev=True, check=False)
    assert glass.returncode != 0 and "may not rollback" in glass.stderr


def test_nobody_puts_their_name_on_an_action_someone_else_set(
    kubectl: Kubectl, namespace: str, human_actions: str, sandbox: Sandbox
) -> None:
    """An approval pending on the object stays its approver's: another user (here one who may
    patch the release but not approve) cannot make it theirs by rewriting its -by."""
    user = sandbox.env["SANDBOX_DEV_USER"]
    _apply(kubectl, namespace, _policy(2))
    _apply(kubectl, namespace, _release(1))
    kubectl("create", "role", "mr-editor", "--verb=get,list,patch",
            "--resource=modelreleases.rewind.dev", "-n", namespace)
    kubectl("create", "rolebinding", "mr-editor", "--role=mr-editor", f"--user={user}",
            "-n", namespace)
    _act(kubectl, namespace, human_actions, "rewind.dev/approve-rollback", "true")
    claimed = kubectl("annotate", "-n", namespace, "modelrelease/chatbot", "--overwrite",
                      f"rewind.dev/approve-rollback-by={user}", dev=True, check=False)
    assert claimed.returncode != 0
    assert f"{user} may not put their name on an action someone else set" in claimed.stderr
    annotations = _get(kubectl, namespace)["metadata"]["annotations"]
    assert annotations["rewind.dev/approve-rollback-by"] == ADMIN


def _run_printed(sandbox: Sandbox, command: str) -> None:
    """Runs a command the operator printed, as a user pastes it into bash (as the admin)."""
    env = {**os.environ, "KUBECONFIG": sandbox.kubeconfig,
           "PATH": f"{sandbox.bin_dir}:{os.environ['PATH']}"}
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", command], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"{command}\n{out.stderr}"


def test_two_distinct_approvers_are_needed(
    kubectl: Kubectl,
    namespace: str,
    human_actions: str,
    sandbox: Sandbox,
    operator: OperatorProcess,
    metrics_endpoint: MetricsEndpoint,
) -> None:
    user = sandbox.env["SANDBOX_DEV_USER"]
    # The policies are installed: the operator may believe the -by stamps; with client
    # stamps, the commands it prints set them.
    operator.stop()
    operator.start("--trust-actor-annotations", f"--actor-stamp={human_actions}")
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
        _act(kubectl, namespace, human_actions, "rewind.dev/approve-rollback", "true",
             user=user if dev else ADMIN, dev=dev)

    # The first approval: the command the operator printed, as it is.
    (asked,) = [e["message"] for e in _get(kubectl, namespace)["status"]["timeline"]
                if e["type"] == "ApprovalRequested"]
    printed = asked.split("Approve: ", 1)[1].split(" ; reject: ", 1)[0]
    assert ("auth whoami" in printed) == (human_actions == "client"), printed
    _run_printed(sandbox, printed)
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
    _act(kubectl, namespace, human_actions, "rewind.dev/approve-rollback", "true-2",
         user=user, dev=True, overwrite=True)
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
    kubectl: Kubectl, namespace: str, human_actions: str
) -> None:
    """Removing -by while the action stays would turn one approver into two (one of them
    anonymous); only consuming both together (what the operator does) is allowed."""
    _apply(kubectl, namespace, _policy(2))
    stamp = {"rewind.dev/approve-rollback-by": ADMIN} if human_actions == "client" else {}
    _apply(kubectl, namespace, {**_release(1), "metadata": {
        "name": "chatbot", "annotations": {"rewind.dev/approve-rollback": "true", **stamp}}})
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
    human_actions: str,
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
    _act(kubectl, namespace, human_actions, "rewind.dev/approve-rollback", "true")
    wait_for("the approval recorded", lambda: _get(kubectl, namespace)["status"]
             .get("pendingDecision", {}).get("approvals"), 30)
    approvals = _get(kubectl, namespace)["status"]["pendingDecision"]["approvals"]
    assert [a.get("user", "") for a in approvals] == [""]
