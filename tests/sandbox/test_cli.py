"""`kubectl rewind` against the real API server, its admission chain and the operator, as
both sandbox identities: the admin (rewind-admin, every verb) and dev-user (bound to
rewind-approver here: may approve and reject, may not break glass, promote or retry).

Every action goes through the plugin as kubectl runs it (`kubectl rewind ...`, found on
PATH) or as `kubectl-rewind`; what it prints, its exit code and what the API server holds
afterwards are checked."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Kubectl, OperatorProcess, Sandbox, wait_for
from tests.sandbox.operator_helpers import (
    BROKEN,
    HEALTHY,
    Rewind,
    canary,
    policy_manifest,
    release_manifest,
    timeline,
)

# The admission policies are cluster-wide: nothing else may run meanwhile.
pytestmark = [pytest.mark.sandbox, pytest.mark.exclusive]

PLUGIN = ROOT / ".venv" / "bin" / "kubectl-rewind"
NAME = "chatbot"


class Plugin:
    """Runs the plugin as one identity and keeps every output (printed on failure)."""

    def __init__(self, sandbox: Sandbox, namespace: str, log: Path) -> None:
        self.sandbox = sandbox
        self.namespace = namespace
        self.log = log

    def __call__(self, *args: str, dev: bool = False, via_kubectl: bool = False,
                 timeout: float = 60) -> subprocess.CompletedProcess[str]:
        kubeconfig = self.sandbox.kubeconfig_dev if dev else self.sandbox.kubeconfig
        env = {**os.environ, "KUBECONFIG": kubeconfig, "NO_COLOR": "1", "COLUMNS": "160",
               "PATH": f"{PLUGIN.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        if via_kubectl:  # kubectl finds kubectl-rewind on PATH and passes the arguments
            cmd = [self.sandbox.kubectl_path, "rewind", *args, "-n", self.namespace]
        else:
            cmd = [str(PLUGIN), *args, "-n", self.namespace]
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
        with self.log.open("a") as log:
            who = "dev-user" if dev else "rewind-admin"
            log.write(f"$ [{who}] {' '.join(cmd[1:] if not via_kubectl else cmd)}\n"
                      f"{result.stdout}{result.stderr}[exit {result.returncode}]\n\n")
        return result


@pytest.fixture()
def plugin(sandbox: Sandbox, namespace: str, tmp_path: Path,
           request: pytest.FixtureRequest) -> Any:
    runner = Plugin(sandbox, namespace, tmp_path / "plugin.log")
    yield runner
    report = getattr(request.node, "rep_call", None)
    if (report is not None and report.failed) or os.environ.get("REWIND_SHOW_PLUGIN"):
        print(f"--- plugin runs ---\n{runner.log.read_text() if runner.log.exists() else ''}")


def _record(rw: Rewind, kubectl: Kubectl, name: str) -> None:
    """With REWIND_RECORD_CLI=<dir>: keep what the plugin read at this point, for the unit
    tests of its rendering (tests/unit/data/cli/)."""
    directory = os.environ.get("REWIND_RECORD_CLI")
    if not directory:
        return
    release = rw.release(NAME)
    policy = rw.get("rolloutpolicy", release["spec"]["policyRef"]["name"])
    selector = f"rewind.dev/release={NAME}"
    recorded = {
        "release": release,
        "policy": policy,
        "deployments": rw.get("deployments", "-l", selector)["items"],
        "snapshots": rw.get("controllerrevisions", "-l", selector)["items"],
    }
    for obj in (release, policy, *recorded["deployments"], *recorded["snapshots"]):
        obj["metadata"].pop("managedFields", None)
    Path(directory, f"{name}.json").write_text(json.dumps(recorded, indent=1, sort_keys=True))


def _setup(rw: Rewind, kubectl: Kubectl, operator: OperatorProcess, sandbox: Sandbox) -> None:
    operator.stop()
    operator.start("--trust-actor-annotations")
    kubectl("create", "rolebinding", "approvers", "--clusterrole=rewind-approver",
            f"--user={sandbox.env['SANDBOX_DEV_USER']}", "-n", rw.namespace)
    wait_for("the approver role in force", lambda: kubectl(
        "auth", "can-i", "approve-rollback", "modelreleases.rewind.dev", "-n", rw.namespace,
        dev=True, check=False).stdout.strip() == "yes")
    rw.apply(policy_manifest("gated", canary((30, None)), mode="approval",
                             approval_timeout="10m", required_approvers=2))


def test_every_action_through_the_plugin_as_both_identities(
    rw: Rewind, kubectl: Kubectl, operator: OperatorProcess, sandbox: Sandbox,
    human_actions: None, plugin: Plugin,
) -> None:
    dev_user = sandbox.env["SANDBOX_DEV_USER"]
    _setup(rw, kubectl, operator, sandbox)
    rw.apply(release_manifest(NAME, "gated", version=1))
    rw.wait_phase(NAME, "Promoted", stable=1, timeout=60)

    # r2 stops at its manual gate at 30 %.
    rw.set_error_rate(NAME, 2, HEALTHY)
    rw.apply(release_manifest(NAME, "gated", version=2))
    rw.wait_status(NAME, "r2 at its gate, in effect",
                   lambda s: s.get("phase") == "Paused" and bool(s.get("stepStartedAt")), 60)
    _record(rw, kubectl, "paused-at-gate")
    shown = plugin("get", NAME, via_kubectl=True)
    assert shown.returncode == 0, shown.stderr
    assert "Paused" in shown.stdout and "Step 1/1" in shown.stdout
    assert "manual gate" in shown.stdout and f"kubectl rewind promote {NAME}" in shown.stdout
    assert "r2 candidate current" in shown.stdout and "weight 30%" in shown.stdout

    # dev-user may approve, not promote: the admission policy refuses, the plugin says why.
    refused = plugin("promote", NAME, dev=True)
    assert refused.returncode == 4, refused.stdout + refused.stderr
    assert "Acting as dev-user" in refused.stdout
    assert f"user {dev_user} may not promote on modelrelease/{NAME}" in refused.stderr
    assert "--clusterrole=rewind-oncall" in refused.stderr
    promoted = plugin("promote", NAME)
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    assert "The API server recorded the actor: rewind-admin" in promoted.stdout
    assert "PromoteRequested" in promoted.stdout and "rewind-admin passed the manual gate" in (
        promoted.stdout)
    rw.wait_phase(NAME, "Promoted", stable=2, timeout=30)

    # r3 is broken: the rollback waits for two approvers.
    rw.set_error_rate(NAME, 3, BROKEN)
    rw.apply(release_manifest(NAME, "gated", version=3))
    rw.wait_phase(NAME, "AwaitingApproval", candidate=3, timeout=60)
    _record(rw, kubectl, "awaiting-approval")
    as_json = plugin("get", NAME, "-o", "json", dev=True)
    view = json.loads(as_json.stdout)
    assert view["pendingDecision"]["requiredApprovers"] == 2
    assert view["pendingDecision"]["evidence"][0]["verdict"] == "Fail"
    assert view["pendingDecision"]["commands"]["approve"] == (
        f"kubectl rewind approve {NAME} -n {rw.namespace}")
    tree = plugin("get", NAME, dev=True).stdout
    assert "Decision pending" in tree and "approvals 0/2" in tree and "evidence" in tree

    glass = plugin("rollback", NAME, "--reason", "looks bad", dev=True)
    assert glass.returncode == 4 and "may not rollback" in glass.stderr
    first = plugin("approve", NAME)
    assert first.returncode == 0, first.stdout + first.stderr
    _record(rw, kubectl, "one-of-two-approvals")
    assert "rollback of r3 approved by rewind-admin (1/2)" in first.stdout
    again = plugin("approve", NAME)
    assert again.returncode == 5
    assert "rewind-admin already approved this decision (1/2)" in again.stderr
    second = plugin("approve", NAME, "-o", "json", dev=True)
    assert second.returncode == 0, second.stdout + second.stderr
    outcome = json.loads(second.stdout)
    assert outcome["actor"] == dev_user and outcome["recordedActor"] == dev_user
    assert outcome["outcome"] == "acted" and outcome["phase"] == "RolledBack"
    assert outcome["value"].startswith("true-")
    types = [e["type"] for e in outcome["entries"]]
    assert types[:2] == ["Approved", "RollbackStarted"] and "RolledBack" in types
    status = rw.status(NAME)
    assert [e["user"] for e in timeline(status, "Approved")] == ["rewind-admin", dev_user]

    # Nothing pending: the plugin writes nothing and says so.
    idle = plugin("approve", NAME, dev=True)
    assert idle.returncode == 5 and "no rollback decision is pending" in idle.stderr
    denied_retry = plugin("retry", NAME, dev=True)
    assert denied_retry.returncode == 4 and "may not retry" in denied_retry.stderr

    # Retry r3 (admin); it fails again; dev-user rejects (the rollout resumes); it fails
    # once more and the admin breaks glass.
    retried = plugin("retry", NAME)
    assert retried.returncode == 0 and "Retry" in retried.stdout, retried.stdout
    rw.wait_phase(NAME, "AwaitingApproval", candidate=3, timeout=60)
    rejected = plugin("reject", NAME, "--reason", "a load test, not users", dev=True)
    assert rejected.returncode == 0, rejected.stdout + rejected.stderr
    assert f"rejected by {dev_user}: a load test, not users (ref " in rejected.stdout
    rw.wait_phase(NAME, "AwaitingApproval", candidate=3, timeout=60)
    broken = plugin("rollback", NAME, "--reason", "PII in outputs, INC-4411", via_kubectl=True)
    assert broken.returncode == 0, broken.stdout + broken.stderr
    assert "BreakGlassRollback" in broken.stdout and "Now RolledBack" in broken.stdout
    # The same reason in a later incident acts again: each value is unique.
    assert rw.status(NAME)["consumedActions"][-1]["value"].startswith(
        "PII in outputs, INC-4411 (ref ")

    # r1 stays warm for the policy's scaleDownDelay after r2's promotion: on a quick run the
    # steps above take less, so wait for it to be retired rather than race it.
    rw.wait_status(NAME, "r1 retired", lambda s: any(
        h.get("revision") == 1 and h.get("outcome") == "Retired" for h in s.get("history", [])
    ), timeout=60)
    _record(rw, kubectl, "rolled-back")
    # Reading is everyone's (view): history, diff and the post-mortem.
    hist = plugin("history", NAME, "-o", "json", dev=True)
    rows = {r["revision"]: r for r in json.loads(hist.stdout)}
    assert [rows[r]["outcome"] for r in (1, 2, 3)] == ["Retired", "Promoted", "RolledBack"]
    table = plugin("history", NAME, dev=True).stdout
    assert "r3 (candidate, current)" in table or "r3 (current" in table, table
    diff = json.loads(plugin("diff", NAME, "r2", "r3", "-o", "json", dev=True).stdout)
    paths = {c["path"]: (c["from"], c["to"]) for c in diff["changes"]}
    assert paths["model.version"] == ("2.0.0", "3.0.0")
    assert paths["data.version"] == ("d2", "d3")
    assert "code.image" not in paths and "serving" in diff["unchanged"]
    post = plugin("report", NAME, dev=True)
    assert post.returncode == 0, post.stderr
    text = post.stdout
    assert text.startswith(f"# Post-mortem: {rw.namespace}/{NAME} r3 (RolledBack)")
    assert "## Durations" in text and "rollback decided -> traffic reverted" in text
    assert "**BreakGlassRollback** by `rewind-admin`" in text
    assert f"**Rejected** by `{dev_user}`" in text
    assert "| `model.version` | 2.0.0 | 3.0.0 |" in text

    # Errors scripts can tell apart.
    missing = plugin("get", "no-such-release")
    assert missing.returncode == 3 and "ModelRelease no-such-release not found" in missing.stderr
    operator.stop()
    rw.apply(release_manifest(NAME, "gated", version=4))
    late = plugin("promote", NAME, "--timeout", "2")
    assert late.returncode == 6 and "has not acted on rewind.dev/promote within 2s" in (
        late.stderr)
    assert "kubectl annotate modelrelease/chatbot" in late.stderr
