"""Install the Helm chart into the sandbox and act as the operator's ServiceAccount.

Reusable by any sandbox test that needs the operator's real identity, e.g. to run the
operator with exactly the permissions the chart grants::

    from tests.sandbox.chart_helpers import rewind_chart_fixture  # noqa: F401  (fixture)

    def test_something(rewind_chart: ChartRelease) -> None:
        env = {**os.environ, "KUBECONFIG": str(rewind_chart.kubeconfig)}
        ...  # run rewind-operator with env: it is system:serviceaccount:<ns>:<sa>

or, for other values, ``with installed_chart(sandbox, kubectl, namespace, tmp_path,
set_values=["watchNamespaces={a,b}"]) as release: ...``.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, Kubectl, Sandbox, wait_for

CHART = ROOT / "charts" / "rewind"
CHART_CRDS = CHART / "crds"
ALL_ON_VALUES = CHART / "ci" / "all-on-values.yaml"
RELEASE = "rewind"


@dataclass(frozen=True)
class ChartRelease:
    """An installed chart and a kubeconfig that authenticates as its ServiceAccount."""

    name: str
    namespace: str
    service_account: str
    kubeconfig: Path

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"


def helm(
    sandbox: Sandbox, *args: str, check: bool = True, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """Runs the sandbox's helm against the sandbox as the admin."""
    result = subprocess.run(
        [sandbox.env["HELM"], f"--kubeconfig={sandbox.kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


def server_version(kubectl: Kubectl) -> str:
    """The API server's version, for `helm template --kube-version` (as Argo CD passes it)."""
    return str(json.loads(kubectl("version", "-o", "json").stdout)["serverVersion"]["gitVersion"])


def value_args(values_files: Sequence[Path] = (), set_values: Sequence[str] = ()) -> list[str]:
    args: list[str] = []
    for path in values_files:
        args += ["-f", str(path)]
    for item in set_values:
        args += ["--set", item]
    return args


def render(
    sandbox: Sandbox,
    kubectl: Kubectl,
    namespace: str,
    *,
    release: str = RELEASE,
    values_files: Sequence[Path] = (),
    set_values: Sequence[str] = (),
    api_versions: Sequence[str] = (),
    kube_version: str | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """`helm template` of the chart (without CRDs) for the given namespace and values.

    Like Argo CD, it passes the server's version; ``api_versions`` add to Helm's built-in
    group versions (`--api-versions`, e.g. ``admissionregistration.k8s.io/v1/
    MutatingAdmissionPolicy``: offline, Helm knows no kinds).
    """
    return helm(
        sandbox,
        "template",
        release,
        str(CHART),
        "--namespace",
        namespace,
        "--kube-version",
        kube_version or server_version(kubectl),
        *[a for version in api_versions for a in ("--api-versions", version)],
        *value_args(values_files, set_values),
        check=check,
    )


def render_docs(
    sandbox: Sandbox, kubectl: Kubectl, namespace: str, **kwargs: Any
) -> list[dict[str, Any]]:
    """The rendered manifests as objects."""
    text = render(sandbox, kubectl, namespace, **kwargs).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


def apply_chart_crds(kubectl: Kubectl) -> None:
    """Applies the chart's crds/ server-side (Rewind's and Kopf's peering kinds).

    The same CRDs may already exist (other tests apply crds/), so installs then use
    `--skip-crds` instead of letting Helm trip over objects it does not own.
    """
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART_CRDS))
    names = [yaml.safe_load(p.read_text())["metadata"]["name"] for p in CHART_CRDS.glob("*.yaml")]
    kubectl("wait", "--for=condition=Established", "--timeout=30s",
            *[f"crd/{name}" for name in sorted(names)])


def service_account_kubeconfig(
    sandbox: Sandbox,
    kubectl: Kubectl,
    namespace: str,
    service_account: str,
    path: Path,
    duration: str = "2h",
) -> Path:
    """A kubeconfig that authenticates with a TokenRequest token of the ServiceAccount.

    Server and CA come from the admin kubeconfig; only the credentials differ.
    """
    token = kubectl(
        "create", "token", service_account, "-n", namespace, f"--duration={duration}"
    ).stdout.strip()
    admin_path = Path(sandbox.kubeconfig)
    admin = yaml.safe_load(admin_path.read_text())
    context_name = admin.get("current-context") or admin["contexts"][0]["name"]
    context = next(c["context"] for c in admin["contexts"] if c["name"] == context_name)
    cluster = next(c["cluster"] for c in admin["clusters"] if c["name"] == context["cluster"])
    ca_data = cluster.get("certificate-authority-data")
    if not ca_data:
        ca_path = Path(cluster["certificate-authority"])
        if not ca_path.is_absolute():
            ca_path = admin_path.parent / ca_path
        ca_data = base64.b64encode(ca_path.read_bytes()).decode()
    user = f"{namespace}-{service_account}"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "sandbox",
             "cluster": {"server": cluster["server"], "certificate-authority-data": ca_data}}
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [
            {"name": user, "context": {"cluster": "sandbox", "user": user, "namespace": namespace}}
        ],
        "current-context": user,
    }
    path.write_text(json.dumps(config, indent=2))
    path.chmod(0o600)
    return path


def kubectl_as(
    sandbox: Sandbox, kubeconfig: Path, *args: str, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs kubectl with another kubeconfig (e.g. the ServiceAccount's); never raises."""
    return subprocess.run(
        [sandbox.kubectl_path, f"--kubeconfig={kubeconfig}", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=60,
    )


def can_i(sandbox: Sandbox, kubeconfig: Path, *args: str) -> bool:
    """`kubectl auth can-i ARGS` as the kubeconfig's identity (a SelfSubjectAccessReview)."""
    result = kubectl_as(sandbox, kubeconfig, "auth", "can-i", *args)
    answer = result.stdout.strip()
    if answer not in ("yes", "no"):
        raise AssertionError(f"kubectl auth can-i {' '.join(args)}: {result.stderr or answer}")
    return answer == "yes"


def workload_ready(kubectl: Kubectl, namespace: str, kind: str, name: str, replicas: int) -> bool:
    obj = json.loads(kubectl("get", f"{kind}/{name}", "-n", namespace, "-o", "json").stdout)
    return int(obj.get("status", {}).get("readyReplicas") or 0) == replicas


@contextmanager
def installed_chart(
    sandbox: Sandbox,
    kubectl: Kubectl,
    namespace: str,
    workdir: Path,
    *,
    release: str = RELEASE,
    values_files: Sequence[Path] = (),
    set_values: Sequence[str] = (),
    pod_security: str | None = "restricted",
    human_actions: bool = False,
) -> Iterator[ChartRelease]:
    """`helm install` into ``namespace`` and yield the release with its SA kubeconfig.

    The namespace is first labelled to enforce the ``pod_security`` Pod Security Standard,
    so the install only becomes ready if the operator pod is admitted under it. Uninstalls
    on exit (the ClusterRole and its binding are cluster-scoped and would outlive the
    namespace).

    ``human_actions`` stays off by default: the admission policies and ClusterRoles it
    installs are cluster-wide singletons that tests/sandbox/test_human_actions.py applies
    itself (Helm would refuse to adopt them, and uninstalling would delete them).
    """
    apply_chart_crds(kubectl)
    if pod_security:
        kubectl("label", "namespace", namespace, "--overwrite",
                f"pod-security.kubernetes.io/enforce={pod_security}",
                f"pod-security.kubernetes.io/warn={pod_security}")
    install = helm(
        sandbox,
        "install",
        release,
        str(CHART),
        "--namespace",
        namespace,
        "--skip-crds",
        "--wait",
        "--timeout=120s",
        "--set", f"humanActions.enabled={str(human_actions).lower()}",
        *value_args(values_files, set_values),
        check=False,
    )
    try:
        if install.returncode != 0:
            events = kubectl("get", "events", "-n", namespace, check=False).stdout
            raise AssertionError(
                f"helm install failed:\n{install.stderr}\nevents in {namespace}:\n{events}"
            )
        manifest = helm(sandbox, "get", "manifest", release, "--namespace", namespace).stdout
        docs = [d for d in yaml.safe_load_all(manifest) if d]
        account = next(
            (d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"), None
        )
        if account is None:  # serviceAccount.create=false: the pod template names it
            pod_spec = next(
                d["spec"]["template"]["spec"] for d in docs
                if d["kind"] in ("Deployment", "StatefulSet")
            )
            account = pod_spec["serviceAccountName"]
        wait_for(
            f"ServiceAccount {namespace}/{account}",
            lambda: kubectl("get", "serviceaccount", account, "-n", namespace,
                            check=False).returncode == 0,
        )
        kubeconfig = service_account_kubeconfig(
            sandbox, kubectl, namespace, account, workdir / f"{release}-{namespace}.kubeconfig"
        )
        yield ChartRelease(release, namespace, account, kubeconfig)
    finally:
        helm(sandbox, "uninstall", release, "--namespace", namespace, check=False)


@pytest.fixture(name="rewind_chart")
def rewind_chart_fixture(
    sandbox: Sandbox, kubectl: Kubectl, namespace: str, tmp_path: Path
) -> Iterator[ChartRelease]:
    """The chart installed with default values (all namespaces, standalone) into a fresh
    namespace, except humanActions (see installed_chart)."""
    with installed_chart(sandbox, kubectl, namespace, tmp_path) as release:
        yield release
