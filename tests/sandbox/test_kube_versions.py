"""The chart on the Kubernetes versions it supports, measured on real API servers.

For the oldest supported minor, one in between (hack/kube-versions.env) and the sandbox's own
version, each test starts a throwaway etcd + kube-apiserver of that version
(tests/sandbox/apiserver_helpers.py), `helm install`s the chart with default values, checks
which way its admission policies stamp the approver (humanActions.stamp auto: "server" where
the API server serves the MutatingAdmissionPolicy API, else "client"), and runs an approval
through them as two identities, with the commands the install notes and the operator print:

* dev-user may patch the release but holds no approve-rollback verb: refused;
* a stamp naming someone else is refused, set alone or with the action;
* rewind-admin approves: accepted, stamped rewind-admin;
* the stamp of a pending approval cannot be removed;
* dev-user, once bound to rewind-approver, approves: accepted, stamped dev-user.

The middle version runs twice: as shipped (MutatingAdmissionPolicy beta off) and with the
beta API enabled, where the chart renders it at admissionregistration.k8s.io/v1beta1.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from rewind.engine import annotate_command
from tests.conftest import Sandbox, wait_for
from tests.sandbox.apiserver_helpers import (
    MIDDLE_VERSION,
    OLDEST_VERSION,
    SANDBOX_VERSION,
    ApiServer,
    started_apiserver,
)
from tests.sandbox.chart_helpers import CHART
from tests.sandbox.operator_helpers import canary, policy_manifest, release_manifest

# Not for the shared sandbox's sake (they never touch it): each starts a whole API server,
# which on a 2-core machine would starve the timers of tests running beside it.
pytestmark = [pytest.mark.sandbox, pytest.mark.exclusive]

MAP_BETA = ("--feature-gates=MutatingAdmissionPolicy=true",
            "--runtime-config=admissionregistration.k8s.io/v1beta1=true")
APPROVE = "rewind.dev/approve-rollback"
NAMESPACE = "team"
ADMIN, DEV = "rewind-admin", "dev-user"


def _minor(version: str) -> str:
    return ".".join(version.lstrip("v").split(".")[:2])


CASES = [
    pytest.param(OLDEST_VERSION, (), "client", None, id=_minor(OLDEST_VERSION)),
    pytest.param(MIDDLE_VERSION, (), "client", None, id=_minor(MIDDLE_VERSION)),
    pytest.param(MIDDLE_VERSION, MAP_BETA, "server", "admissionregistration.k8s.io/v1beta1",
                 id=f"{_minor(MIDDLE_VERSION)}-mutating-beta"),
    pytest.param(SANDBOX_VERSION, (), "server", "admissionregistration.k8s.io/v1",
                 id=_minor(SANDBOX_VERSION)),
]


def _helm(sandbox: Sandbox, api: ApiServer, *args: str) -> str:
    result = subprocess.run([sandbox.env["HELM"], f"--kubeconfig={api.kubeconfig}", *args],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stderr}"
    return result.stdout


def _shell(sandbox: Sandbox, api: ApiServer, script: str, *, dev: bool
           ) -> subprocess.CompletedProcess[str]:
    """Runs a command as a user types it (bash, the sandbox's kubectl on PATH)."""
    env = {**os.environ, "KUBECONFIG": str(api.kubeconfig_dev if dev else api.kubeconfig),
           "PATH": f"{sandbox.bin_dir}:{os.environ['PATH']}"}
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=env,
                          capture_output=True, text=True, timeout=60)


def _annotations(api: ApiServer) -> dict[str, str]:
    out = api.kubectl("get", "mr/chatbot", "-n", NAMESPACE, "-o", "json").stdout
    return dict(json.loads(out)["metadata"].get("annotations") or {})


def _notes_commands(notes: str) -> tuple[str, str]:
    """The notes' set-up line (client stamps: `ME=...`, else "") and approve command, for
    release chatbot in NAMESPACE."""
    lines = [line.strip() for line in notes.splitlines()]
    setup = next((line for line in lines if line.startswith("ME=")), "")
    approve = next(line for line in lines if line.startswith("kubectl annotate mr <name> "
                                                              f"{APPROVE}=true"))
    approve = approve.split("#")[0].strip().replace("<name>", f"chatbot -n {NAMESPACE}")
    return setup, approve


@pytest.mark.parametrize(("version", "extra_args", "stamp", "mutating_api"), CASES)
def test_chart_installs_and_approvals_are_attributed_on_each_supported_version(
    sandbox: Sandbox, tmp_path: Path, version: str, extra_args: tuple[str, ...], stamp: str,
    mutating_api: str | None,
) -> None:
    with started_apiserver(sandbox, version, tmp_path / "apiserver", extra_args) as api:
        served = json.loads(api.kubectl("version", "-o", "json").stdout)["serverVersion"]
        assert served["gitVersion"] == version

        # -- the chart, with default values: the install picks the stamp from the server
        _helm(sandbox, api, "install", "rewind", str(CHART), "--namespace", "rewind-system",
              "--create-namespace")
        manifest = _helm(sandbox, api, "get", "manifest", "rewind", "-n", "rewind-system")
        docs: list[dict[str, Any]] = [d for d in yaml.safe_load_all(manifest) if d]
        mutating = [d["apiVersion"] for d in docs if d["kind"] == "MutatingAdmissionPolicy"]
        assert mutating == ([mutating_api] if mutating_api else [])
        assert [d["kind"] for d in docs if d["kind"].startswith("ValidatingAdmissionPolicy")
                ] == ["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]
        (operator,) = [d for d in docs if d["kind"] == "Deployment"]
        args = operator["spec"]["template"]["spec"]["containers"][0]["args"]
        assert {"--trust-actor-annotations", f"--actor-stamp={stamp}"} <= set(args)
        notes = _helm(sandbox, api, "get", "notes", "rewind", "-n", "rewind-system")
        assert f"Approver stamps: {stamp} (humanActions.stamp=auto: this cluster serves " in notes
        setup, approve = _notes_commands(notes)
        assert bool(setup) == (stamp == "client")

        # -- a release, admitted by the CRDs' own rules on this version
        for kind in ("modelreleases.rewind.dev", "rolloutpolicies.rewind.dev"):
            api.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{kind}")
        api.kubectl("create", "namespace", NAMESPACE)
        policy = policy_manifest("two-approvers", canary((50, "1h")), mode="approval",
                                 approval_timeout="1h", required_approvers=2)
        wait_for("the Rewind kinds to be served", lambda: api.kubectl(
            "apply", "-n", NAMESPACE, "-f", "-", input=json.dumps(policy), check=False
        ).returncode == 0, 60)
        api.kubectl("apply", "-n", NAMESPACE, "-f", "-",
                    input=json.dumps(release_manifest("chatbot", "two-approvers")))

        def annotate(*pairs: str, dev: bool = False) -> subprocess.CompletedProcess[str]:
            return api.kubectl("annotate", "-n", NAMESPACE, "mr/chatbot", "--overwrite",
                               *pairs, dev=dev, check=False)

        # A new policy is enforced a moment after it is created: a hand-written stamp
        # naming someone else is refused (in both modes) once the validating one is.
        wait_for("the admission policies to be enforced", lambda: api.kubectl(
            "annotate", "-n", NAMESPACE, "mr/chatbot", f"{APPROVE}-by=someone-else",
            "--dry-run=server", check=False).returncode != 0, 60)
        if stamp == "server":
            wait_for("the stamping policy to be enforced", lambda: json.loads(api.kubectl(
                "annotate", "-n", NAMESPACE, "mr/chatbot", f"{APPROVE}=probe",
                "--dry-run=server", "-o", "json").stdout)["metadata"]["annotations"].get(
                f"{APPROVE}-by") == ADMIN, 60)

        # -- dev-user may edit the release but may not approve
        api.kubectl("create", "role", "mr-editor", "--verb=get,list,patch",
                    "--resource=modelreleases.rewind.dev", "-n", NAMESPACE)
        api.kubectl("create", "rolebinding", "mr-editor", "--role=mr-editor", f"--user={DEV}",
                    "-n", NAMESPACE)
        refused = _shell(sandbox, api, f"{setup}\n{approve}", dev=True)
        assert refused.returncode != 0
        assert f"user {DEV} may not approve-rollback on modelrelease/chatbot" in refused.stderr
        forged = annotate(f"{APPROVE}-by={ADMIN}", dev=True)
        assert forged.returncode != 0 and "may not set them to anyone else" in forged.stderr

        # -- rewind-admin may; a stamp naming someone else never sticks
        with_forged = annotate(f"{APPROVE}=true", f"{APPROVE}-by={DEV}")
        if stamp == "client":
            assert with_forged.returncode != 0
            assert "may not set them to anyone else" in with_forged.stderr
            unstamped = annotate(f"{APPROVE}=true")
            assert unstamped.returncode != 0
            assert f"{APPROVE} must name who sets it" in unstamped.stderr
        else:  # the API server writes the stamp over it
            assert with_forged.returncode == 0, with_forged.stderr
            assert _annotations(api)[f"{APPROVE}-by"] == ADMIN
            api.kubectl("annotate", "-n", NAMESPACE, "mr/chatbot", f"{APPROVE}-",
                        f"{APPROVE}-by-")
        approved = _shell(sandbox, api, f"{setup}\n{approve}", dev=False)
        assert approved.returncode == 0, approved.stderr
        assert _annotations(api)[f"{APPROVE}-by"] == ADMIN
        stripped = api.kubectl("annotate", "-n", NAMESPACE, "mr/chatbot", f"{APPROVE}-by-",
                               check=False)
        assert stripped.returncode != 0 and "may not remove it" in stripped.stderr
        claimed = annotate(f"{APPROVE}-by={DEV}", dev=True)
        assert claimed.returncode != 0
        assert "may not put their name on an action someone else set" in claimed.stderr
        # The operator consumes both (here: the admin, as it would).
        api.kubectl("annotate", "-n", NAMESPACE, "mr/chatbot", f"{APPROVE}-", f"{APPROVE}-by-")

        # -- dev-user, once an approver, approves with the command the operator prints
        api.kubectl("create", "rolebinding", "approvers", "--clusterrole=rewind-approver",
                    f"--user={DEV}", "-n", NAMESPACE)
        wait_for("the approver role to take effect", lambda: api.kubectl(
            "auth", "can-i", "approve-rollback", "modelreleases.rewind.dev/chatbot", "-n",
            NAMESPACE, dev=True, check=False).stdout.strip() == "yes")
        printed = annotate_command("chatbot", NAMESPACE, APPROVE, "true",
                                   actor_stamp="client" if stamp == "client" else "server")
        by_dev = _shell(sandbox, api, printed, dev=True)
        assert by_dev.returncode == 0, by_dev.stderr
        assert _annotations(api)[f"{APPROVE}-by"] == DEV
