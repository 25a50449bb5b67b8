"""The Helm chart: lint, server-side dry run, install, and how narrow the operator's RBAC is.

Tests that need helm (a sandbox tool) or the API server are marked `sandbox`; the CRD copy
check needs neither.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, Kubectl, OperatorProcess, Sandbox, wait_for
from tests.sandbox.chart_helpers import (
    ALL_ON_VALUES,
    CHART,
    CHART_CRDS,
    ChartRelease,
    apply_chart_crds,
    can_i,
    helm,
    installed_chart,
    kubectl_as,
    render,
    render_docs,
    rewind_chart_fixture,  # noqa: F401  (the rewind_chart fixture)
    workload_ready,
)
from tests.sandbox.operator_helpers import Replica

sandbox_test = pytest.mark.sandbox
# Installs put cluster-wide objects in place (admission policies that change every
# annotate, ClusterRoles) and some start operators watching every namespace: nothing else
# may run meanwhile. Rendering and server-side dry runs leave nothing behind.
exclusive = pytest.mark.exclusive

VALUES = {"default": [], "all-on": [ALL_ON_VALUES]}
RBAC_KINDS = ("ClusterRole", "Role")


# --------------------------------------------------------------------------------------
# The chart's copy of the CRDs
# --------------------------------------------------------------------------------------


def test_chart_crds_are_identical_to_the_generated_crds() -> None:
    """crds/ is generated from the models; the chart ships an exact copy.

    Refresh it with: cp crds/*.yaml charts/rewind/crds/
    """
    generated = {p.name: p.read_bytes() for p in (ROOT / "crds").glob("*.yaml")}
    assert generated, "crds/ is empty"
    shipped = {
        p.name: p.read_bytes()
        for p in CHART_CRDS.glob("*.yaml")
        if yaml.safe_load(p.read_text())["spec"]["group"] == "rewind.dev"
    }
    stale = sorted(name for name in generated if shipped.get(name) != generated[name])
    extra = sorted(set(shipped) - set(generated))
    assert not stale and not extra, (
        f"charts/rewind/crds differs from crds/ (stale: {stale}, not generated: {extra}); "
        "run: cp crds/*.yaml charts/rewind/crds/"
    )


def test_chart_ships_kopf_peering_crds() -> None:
    kinds = {
        (doc["spec"]["group"], doc["spec"]["names"]["kind"], doc["spec"]["scope"])
        for doc in (yaml.safe_load(p.read_text()) for p in CHART_CRDS.glob("*.yaml"))
    }
    assert ("kopf.dev", "ClusterKopfPeering", "Cluster") in kinds
    assert ("kopf.dev", "KopfPeering", "Namespaced") in kinds


# --------------------------------------------------------------------------------------
# Lint and render
# --------------------------------------------------------------------------------------


@sandbox_test
@pytest.mark.parametrize("values", VALUES, ids=list(VALUES))
def test_helm_lint_passes(sandbox: Sandbox, values: str) -> None:
    args = [a for path in VALUES[values] for a in ("-f", str(path))]
    result = helm(sandbox, "lint", "--strict", str(CHART), *args)
    assert "0 chart(s) failed" in result.stdout


@sandbox_test
@pytest.mark.parametrize(
    ("set_value", "complaint"),
    [
        ("logFormat=xml", "at '/logFormat'"),
        ("logLevel=trace", "at '/logLevel'"),
        ("prometheus.url=prometheus:9090", "at '/prometheus/url'"),
        ("prometheus.timeout=10", "at '/prometheus/timeout'"),
        ("analysis.threads=0", "at '/analysis/threads'"),
        ("history.retention=30d", "at '/history/retention'"),
        ("image.digest=sha256:abc", "at '/image/digest'"),
        ("watchNamespaces={Bad_Namespace}", "at '/watchNamespaces/0'"),
        ("replicas=2", "replicas > 1 needs peering.enabled=true"),
        ("prometheusRule.awaitingApproval.for=five-minutes",
         "at '/prometheusRule/awaitingApproval/for'"),
        ("clusterDomain=cluster.local.", "at '/clusterDomain'"),
        ("unknownOption=true", "additional properties 'unknownOption' not allowed"),
        ("notifications.targets[0].name=pager,notifications.targets[0].type=teams,"
         "notifications.targets[0].urlSecret.name=s,notifications.targets[0].urlSecret.key=k",
         "at '/notifications/targets/0/type'"),
        ("notifications.defaultTargets={pager}",
         'notifications.defaultTargets names "pager", which is not in notifications.targets'),
        ("notifications.argocdURL=argocd.example.com", "at '/notifications/argocdURL'"),
    ],
)
def test_chart_rejects_bad_values(
    sandbox: Sandbox, kubectl: Kubectl, set_value: str, complaint: str
) -> None:
    # values.schema.json and the templates' `fail` both stop `helm template/install`.
    # (`helm lint` only reports a template `fail` as INFO, so it is not the check here.)
    result = render(sandbox, kubectl, "rewind-system", set_values=[set_value], check=False)
    assert result.returncode != 0
    assert complaint in result.stderr
    assert not result.stdout.strip()


@sandbox_test
def test_both_prometheus_auth_methods_at_once_are_refused(
    sandbox: Sandbox, kubectl: Kubectl
) -> None:
    result = render(
        sandbox, kubectl, "rewind-system",
        set_values=["prometheus.auth.bearerToken.secretName=a",
                    "prometheus.auth.basicAuth.secretName=b"],
        check=False,
    )
    assert result.returncode != 0
    assert "at most one of prometheus.auth" in result.stderr


def _pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    assert len(workloads) == 1, [d["kind"] for d in workloads]
    spec: dict[str, Any] = workloads[0]["spec"]["template"]["spec"]
    return spec


SECRET_VALUES = {"prom-token/jwt": "t0ken", "prom-basic/username": "alice",
                 "prom-basic/password": "pa55", "mlf-token/token": "m1f",
                 "mlf-basic/username": "bob", "mlf-basic/password": "s3cr3t"}
AUTH = {
    "bearer": ["prometheus.auth.bearerToken.secretName=prom-token",
               "prometheus.auth.bearerToken.key=jwt"],
    "basic": ["prometheus.auth.basicAuth.secretName=prom-basic"],
    "mlflow-token": ["mlflow.trackingURI=http://mlflow.mlops:5000",
                     "mlflow.auth.token.secretName=mlf-token"],
    "mlflow-basic": ["mlflow.trackingURI=http://mlflow.mlops:5000",
                     "mlflow.auth.basicAuth.secretName=mlf-basic"],
}


def _secret_env(sandbox: Sandbox, kubectl: Kubectl, auth: str) -> dict[str, str]:
    """The container's env vars that come from Secrets, resolved with SECRET_VALUES."""
    pod = _pod_spec(render_docs(sandbox, kubectl, "rewind-system", set_values=AUTH[auth]))
    out = {}
    for env in pod["containers"][0]["env"]:
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            out[env["name"]] = SECRET_VALUES[f"{ref['name']}/{ref['key']}"]
    assert not any(v.get("secret") for v in pod.get("volumes", []))
    return out


@sandbox_test
def test_prometheus_credentials_come_from_the_secret(
    sandbox: Sandbox, kubectl: Kubectl
) -> None:
    assert _secret_env(sandbox, kubectl, "bearer") == {"PROMETHEUS_BEARER_TOKEN": "t0ken"}
    assert _secret_env(sandbox, kubectl, "basic") == {
        "PROMETHEUS_BASIC_AUTH_USERNAME": "alice", "PROMETHEUS_BASIC_AUTH_PASSWORD": "pa55"}
    default = _pod_spec(render_docs(sandbox, kubectl, "rewind-system"))["containers"][0]["env"]
    assert not [e for e in default if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]]


@sandbox_test
@pytest.mark.parametrize(
    "auth",
    [
        "bearer",
        "basic",
    ],
)
def test_the_operator_reads_the_credentials_the_chart_passes(
    sandbox: Sandbox, kubectl: Kubectl, monkeypatch: pytest.MonkeyPatch, auth: str
) -> None:
    from rewind.handlers import RuntimeConfig

    env = _secret_env(sandbox, kubectl, auth)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = RuntimeConfig()
    read = {config.prometheus_token, config.prometheus_username, config.prometheus_password}
    assert set(env.values()) <= read, (env, read)
    secrets = {v for k, v in env.items() if k.endswith(("TOKEN", "PASSWORD"))}
    assert secrets and not any(value in repr(config) for value in secrets), "secrets in repr"


@sandbox_test
@pytest.mark.parametrize(
    ("auth", "header"),
    [("mlflow-token", "Bearer m1f"), ("mlflow-basic", "Basic Ym9iOnMzY3IzdA==")],
)
def test_mlflow_credentials_reach_the_default_server_only(
    sandbox: Sandbox, kubectl: Kubectl, monkeypatch: pytest.MonkeyPatch, auth: str, header: str
) -> None:
    from rewind.adapters.registry import RegistrySync

    env = _secret_env(sandbox, kubectl, auth)
    pod = _pod_spec(render_docs(sandbox, kubectl, "rewind-system", set_values=AUTH[auth]))
    plain = {e["name"]: e["value"] for e in pod["containers"][0]["env"] if "value" in e}
    assert plain["MLFLOW_TRACKING_URI"] == "http://mlflow.mlops:5000"
    for name, value in {**env, "MLFLOW_TRACKING_URI": plain["MLFLOW_TRACKING_URI"]}.items():
        monkeypatch.setenv(name, value)
    sync = RegistrySync()
    assert sync.headers_for(sync.resolve("")) == {"Authorization": header}
    assert sync.headers_for(sync.resolve("http://elsewhere.example:5000")) == {}


@sandbox_test
def test_both_mlflow_auth_methods_at_once_are_refused(sandbox: Sandbox, kubectl: Kubectl) -> None:
    result = render(
        sandbox, kubectl, "rewind-system",
        set_values=["mlflow.auth.token.secretName=a", "mlflow.auth.basicAuth.secretName=b"],
        check=False,
    )
    assert result.returncode != 0
    assert "at most one of mlflow.auth" in result.stderr


@sandbox_test
def test_operator_arguments_follow_the_values(sandbox: Sandbox, kubectl: Kubectl) -> None:
    default = _pod_spec(render_docs(sandbox, kubectl, "rewind-system"))["containers"][0]["args"]
    assert "--all-namespaces" in default
    assert "--liveness=http://0.0.0.0:8080/healthz" in default
    # Standalone: rewind-operator runs without Kopf peering unless given --peering.
    assert not any(a.startswith(("--namespace", "--peering", "--priority", "--verbose"))
                   for a in default)

    docs = render_docs(sandbox, kubectl, "rewind-system", values_files=[ALL_ON_VALUES])
    args = _pod_spec(docs)["containers"][0]["args"]
    assert [a for a in args if a.startswith("--namespace=")] == [
        "--namespace=rewind-demo", "--namespace=rewind-system"]
    assert "--all-namespaces" not in args
    assert {"--log-format=json", "--verbose", "--metrics-port=9200",
            "--peering=rewind-ci", "--priority=$(POD_INDEX)", "--peering-lifetime=20",
            "--prometheus-timeout=25s", "--analysis-threads=48"} <= set(args)
    assert [d["kind"] for d in docs if d["kind"] in ("Deployment", "StatefulSet")] == [
        "StatefulSet"]


@sandbox_test
def test_notifier_targets_come_from_secrets_and_the_dashboard_from_a_configmap(
    sandbox: Sandbox, kubectl: Kubectl
) -> None:
    default = render_docs(sandbox, kubectl, "rewind-system")
    container = _pod_spec(default)["containers"][0]
    assert not any(a.startswith(("--notifier", "--notify", "--argocd")) for a in container["args"])
    assert not [d for d in default if d["kind"] == "ConfigMap"]

    docs = render_docs(sandbox, kubectl, "rewind-system", values_files=[ALL_ON_VALUES])
    container = _pod_spec(docs)["containers"][0]
    args = container["args"]
    assert [a for a in args if a.startswith(("--notifier", "--notify", "--argocd"))] == [
        "--notifier=oncall-slack=slack", "--notifier=audit=webhook",
        "--notify-default=oncall-slack", "--notify-max-backoff=2m", "--notify-give-up=6h",
        "--argocd-url=https://argocd.example.com"]
    env = {e["name"]: e.get("valueFrom") for e in container["env"]}
    assert env["REWIND_NOTIFIER_URL_ONCALL_SLACK"] == {
        "secretKeyRef": {"name": "rewind-notifiers", "key": "oncall-slack"}}
    assert env["REWIND_NOTIFIER_URL_AUDIT"] == {
        "secretKeyRef": {"name": "rewind-notifiers", "key": "audit"}}
    from rewind.adapters.webhooks import url_env
    from rewind.main import parse_args

    assert url_env("oncall-slack") in env
    parsed = parse_args([a.replace("$(POD_INDEX)", "1") for a in args])
    assert parsed.notifier == ["oncall-slack=slack", "audit=webhook"]
    assert (parsed.notify_max_backoff, parsed.notify_give_up) == (120.0, 6 * 3600.0)

    [dashboard] = [d for d in docs if d["kind"] == "ConfigMap"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "Rewind"}
    assert json.loads(dashboard["data"]["rewind.json"]) == json.loads(
        (CHART / "files" / "grafana-dashboard.json").read_text())


@sandbox_test
@pytest.mark.parametrize(
    "values",
    [
        pytest.param([], id="default"),
        pytest.param(["watchNamespaces={a,b}", "logFormat=json", "logLevel=debug"],
                     id="namespaces"),
        pytest.param(["peering.enabled=true", "replicas=2"], id="peering"),
        pytest.param(["prometheus.timeout=1m30s", "analysis.threads=64"], id="analysis"),
        pytest.param(["history.retention=48h"], id="history"),
        pytest.param(["clusterDomain=corp.internal"], id="cluster-domain"),
    ],
)
def test_rewind_operator_accepts_the_arguments(
    sandbox: Sandbox, kubectl: Kubectl, values: list[str]
) -> None:
    """The chart's command line parses with the real entry point's parser."""
    from rewind.main import parse_args

    container = _pod_spec(render_docs(sandbox, kubectl, "ops", set_values=values))["containers"][0]
    assert "command" not in container  # the image's ENTRYPOINT is rewind-operator
    args = [a.replace("$(POD_INDEX)", "1") for a in container["args"]]
    parsed = parse_args(args)
    assert parsed.liveness == "http://0.0.0.0:8080/healthz"
    assert parsed.metrics_port == 9102
    assert parsed.prometheus_url == "http://prometheus-operated.monitoring.svc:9090"
    tuned = "analysis.threads=64" in values
    assert (parsed.prometheus_timeout, parsed.analysis_threads) == (
        (90.0, 64) if tuned else (10.0, 16))
    assert parsed.history_retention == (
        48 * 3600.0 if "history.retention=48h" in values else 30 * 24 * 3600.0)
    assert parsed.cluster_domain == (
        "corp.internal" if "clusterDomain=corp.internal" in values else "cluster.local")


@sandbox_test
@pytest.mark.parametrize("values", VALUES, ids=list(VALUES))
def test_rbac_uses_no_wildcards(sandbox: Sandbox, kubectl: Kubectl, values: str) -> None:
    docs = render_docs(sandbox, kubectl, "rewind-system", values_files=VALUES[values])
    rules = [rule for d in docs if d["kind"] in RBAC_KINDS for rule in d["rules"]]
    assert rules
    for rule in rules:
        for key in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule.get(key, []), rule
        assert "nonResourceURLs" not in rule, rule


@sandbox_test
def test_watch_namespaces_turns_the_cluster_role_into_roles(
    sandbox: Sandbox, kubectl: Kubectl
) -> None:
    docs = render_docs(sandbox, kubectl, "ops", set_values=["watchNamespaces={team-a,team-b}"])
    roles = {d["metadata"]["namespace"] for d in docs if d["kind"] == "Role"}
    bindings = {d["metadata"]["namespace"] for d in docs if d["kind"] == "RoleBinding"}
    assert roles == bindings == {"team-a", "team-b"}
    (cluster_role,) = [d for d in docs if d["kind"] == "ClusterRole"
                       and d["metadata"]["labels"].get("app.kubernetes.io/instance") == "rewind"]
    cluster_resources = {r for rule in cluster_role["rules"] for r in rule["resources"]}
    assert cluster_resources == {"customresourcedefinitions", "namespaces"}


@sandbox_test
def test_secrets_are_readable_only_when_integrity_asks(sandbox: Sandbox, kubectl: Kubectl) -> None:
    """ConfigMaps (a signature's trust root) are read by name; Secrets (S3 credentials, a
    trust root kept in a Secret) only with integrity.readSecrets, and never listed."""

    def core_rules(*set_values: str) -> dict[str, set[str]]:
        docs = render_docs(sandbox, kubectl, "rewind-system", set_values=list(set_values))
        out: dict[str, set[str]] = {}
        for d in docs:
            if d["kind"] in RBAC_KINDS:
                for rule in d["rules"]:
                    if rule.get("apiGroups") == [""]:
                        for resource in rule["resources"]:
                            out.setdefault(resource, set()).update(rule["verbs"])
        return out

    default = core_rules()
    assert default["configmaps"] == {"get"} and "secrets" not in default
    allowed = core_rules("integrity.readSecrets=true")
    assert allowed["secrets"] == {"get"} and allowed["configmaps"] == {"get"}


MAP_V1 = "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy"
MAP_V1BETA1 = "admissionregistration.k8s.io/v1beta1/MutatingAdmissionPolicy"


def _shipped(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((CHART / "files" / name).read_text()) if d]


@sandbox_test
@pytest.mark.parametrize(
    ("api_versions", "set_value", "stamp", "mutating_api"),
    [
        # Offline, Helm knows group versions but no kinds: no MutatingAdmissionPolicy.
        pytest.param((), None, "client", None, id="auto-without-the-api"),
        pytest.param((MAP_V1,), None, "server", "admissionregistration.k8s.io/v1",
                     id="auto-with-v1"),
        pytest.param((MAP_V1BETA1,), None, "server", "admissionregistration.k8s.io/v1beta1",
                     id="auto-with-v1beta1"),
        pytest.param((MAP_V1, MAP_V1BETA1), None, "server", "admissionregistration.k8s.io/v1",
                     id="auto-prefers-v1"),
        pytest.param((), "server", "server", "admissionregistration.k8s.io/v1",
                     id="forced-server"),
        pytest.param((MAP_V1,), "client", "client", None, id="forced-client"),
    ],
)
def test_human_actions_policies_follow_the_cluster_or_the_value(
    sandbox: Sandbox, kubectl: Kubectl, api_versions: tuple[str, ...], set_value: str | None,
    stamp: str, mutating_api: str | None,
) -> None:
    validating, stamping = _shipped("human-actions.yaml"), _shipped("human-actions-stamp.yaml")
    assert {d["kind"] for d in validating} >= {"ValidatingAdmissionPolicy", "ClusterRole"}
    assert {d["kind"] for d in stamping} == {"MutatingAdmissionPolicy",
                                             "MutatingAdmissionPolicyBinding"}
    names = {(d["kind"], d["metadata"]["name"]) for d in validating + stamping}
    values = [f"humanActions.stamp={set_value}"] if set_value else []
    docs = render_docs(sandbox, kubectl, "rewind-system", set_values=values,
                       api_versions=api_versions)
    rendered = [d for d in docs if (d["kind"], d["metadata"]["name"]) in names]
    expected = validating + [{**d, "apiVersion": mutating_api} for d in stamping
                             if mutating_api]

    def key(doc: dict[str, Any]) -> str:
        return json.dumps(doc, sort_keys=True)

    assert sorted(rendered, key=key) == sorted(expected, key=key)  # Helm orders by kind
    args = _pod_spec(docs)["containers"][0]["args"]
    assert {"--trust-actor-annotations", f"--actor-stamp={stamp}"} <= set(args)


@sandbox_test
@pytest.mark.parametrize("stamp", ["server", "client"])
def test_the_install_notes_name_the_stamp_and_its_commands(
    sandbox: Sandbox, stamp: str
) -> None:
    """What `helm install` prints (a client-side dry run; the version tests check the notes
    of real installs with humanActions.stamp auto)."""
    # A client-side dry run still checks that it could adopt the cluster-wide objects it
    # finds, and test_human_actions leaves the policies and ClusterRoles in the sandbox:
    # --take-ownership skips that check (a dry run changes nothing).
    out = helm(sandbox, "install", "rewind", str(CHART), "--dry-run=client", "--take-ownership",
               "--namespace", "rewind-system", "--set", f"humanActions.stamp={stamp}").stdout
    notes = out[out.index("NOTES:"):]
    assert f"Approver stamps: {stamp} (humanActions.stamp={stamp})." in notes
    approve = next(line.strip() for line in notes.splitlines()
                   if "rewind.dev/approve-rollback=true" in line)
    if stamp == "client":
        assert "ME=\"$(kubectl auth whoami -o jsonpath='{.status.userInfo.username}')\"" in notes
        assert approve == ('kubectl annotate mr <name> rewind.dev/approve-rollback=true '
                           'rewind.dev/approve-rollback-by="$ME"')
    else:
        assert "whoami" not in notes
        assert approve.startswith("kubectl annotate mr <name> rewind.dev/approve-rollback=true ")
        assert "-by" not in approve


@sandbox_test
def test_human_actions_can_be_left_out(sandbox: Sandbox, kubectl: Kubectl) -> None:
    docs = render_docs(sandbox, kubectl, "rewind-system", set_values=["humanActions.enabled=false"],
                       api_versions=(MAP_V1,))
    assert not [d for d in docs if "AdmissionPolicy" in d["kind"]]
    assert not [d for d in docs if d["metadata"]["name"].startswith("rewind-approver")]
    args = _pod_spec(docs)["containers"][0]["args"]
    assert not [a for a in args if a.startswith(("--trust-actor", "--actor-stamp"))]


@sandbox_test
def test_the_chart_refuses_kubernetes_older_than_1_30(sandbox: Sandbox, kubectl: Kubectl) -> None:
    """ValidatingAdmissionPolicy is GA (admissionregistration.k8s.io/v1) from 1.30."""
    old = render(sandbox, kubectl, "rewind-system", kube_version="v1.29.15", check=False)
    assert old.returncode != 0 and "chart requires kubeVersion: >=1.30.0-0" in old.stderr
    render(sandbox, kubectl, "rewind-system", kube_version="v1.30.0")


# --------------------------------------------------------------------------------------
# The API server accepts what the chart renders
# --------------------------------------------------------------------------------------

_SCHEMA_STRING = {"type": "string"}
_STRING_MAP = {"type": "object", "additionalProperties": _SCHEMA_STRING}


def _monitoring_crd(kind: str, plural: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A cut-down prometheus-operator CRD: the fields the chart uses, typed as upstream."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com",
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower(),
                      "listKind": f"{kind}List"},
            "versions": [{
                "name": "v1", "served": True, "storage": True,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {"spec": {"type": "object", "properties": spec}},
                }},
            }],
        },
    }


_SERVICE_MONITOR_SPEC: dict[str, Any] = {
    "jobLabel": _SCHEMA_STRING,
    "selector": {"type": "object", "properties": {"matchLabels": _STRING_MAP}},
    "namespaceSelector": {"type": "object", "properties": {
        "any": {"type": "boolean"}, "matchNames": {"type": "array", "items": _SCHEMA_STRING}}},
    "endpoints": {"type": "array", "items": {"type": "object", "properties": {
        "port": _SCHEMA_STRING, "path": _SCHEMA_STRING, "scheme": _SCHEMA_STRING,
        "interval": {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?"
                     "(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
        "scrapeTimeout": {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?"
                          "(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
        "honorLabels": {"type": "boolean"},
    }}},
}
_PROMETHEUS_RULE_SPEC: dict[str, Any] = {
    "groups": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string", "minLength": 1},
        "interval": _SCHEMA_STRING,
        "rules": {"type": "array", "items": {"type": "object", "required": ["expr"],
                                             "properties": {
            "alert": _SCHEMA_STRING,
            "record": _SCHEMA_STRING,
            "expr": {"anyOf": [{"type": "integer"}, {"type": "string"}],
                     "x-kubernetes-int-or-string": True},
            "for": {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?"
                    "(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
            "labels": _STRING_MAP,
            "annotations": _STRING_MAP,
        }}},
    }}},
}


@pytest.fixture(scope="module")
def monitoring_crds(kubectl: Kubectl) -> Iterator[None]:
    """ServiceMonitor and PrometheusRule kinds, created only if the cluster lacks them."""
    created = []
    for kind, plural, spec in [("ServiceMonitor", "servicemonitors", _SERVICE_MONITOR_SPEC),
                               ("PrometheusRule", "prometheusrules", _PROMETHEUS_RULE_SPEC)]:
        name = f"{plural}.monitoring.coreos.com"
        if kubectl("get", "crd", name, check=False).returncode != 0:
            kubectl("create", "-f", "-", input=json.dumps(_monitoring_crd(kind, plural, spec)))
            created.append(name)
        kubectl("wait", "--for=condition=Established", "--timeout=30s", f"crd/{name}")
    yield
    for name in created:
        kubectl("delete", "crd", name, "--wait=false", check=False)


@pytest.fixture()
def second_namespace(kubectl: Kubectl) -> Iterator[str]:
    name = f"t-chart-watched-{uuid.uuid4().hex[:5]}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def _dry_run(kubectl: Kubectl, manifest: str) -> list[str]:
    result = kubectl("apply", "--dry-run=server", "-f", "-", input=manifest, check=False)
    assert result.returncode == 0, f"the API server refused the chart:\n{result.stderr}"
    return [line for line in result.stdout.splitlines() if line.strip()]


@sandbox_test
@exclusive  # monitoring_crds creates and deletes cluster-wide CRDs around the module
@pytest.mark.parametrize("values", VALUES, ids=list(VALUES))
def test_api_server_accepts_the_rendered_chart(
    sandbox: Sandbox, kubectl: Kubectl, namespace: str, second_namespace: str,
    monitoring_crds: None, istio_crds: None, values: str,
) -> None:
    apply_chart_crds(kubectl)
    watched = f"watchNamespaces={{{namespace},{second_namespace}}}"
    rendered = render(sandbox, kubectl, namespace, values_files=VALUES[values],
                      set_values=[watched] if values == "all-on" else []).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    applied = _dry_run(kubectl, rendered)
    assert len(applied) == len(docs), applied
    assert all(line.endswith("(server dry run)") for line in applied), applied
    kinds = {d["kind"] for d in docs}
    if values == "all-on":
        assert {"ServiceMonitor", "PrometheusRule", "StatefulSet", "KopfPeering", "Role",
                "RoleBinding"} <= kinds
    else:
        assert {"Deployment", "ClusterRole", "ClusterRoleBinding", "ServiceAccount",
                "Service"} <= kinds


@sandbox_test
def test_api_server_rejects_a_bad_rendering(
    sandbox: Sandbox, kubectl: Kubectl, namespace: str
) -> None:
    """The dry run is a real check: a mistyped field in the chart output is refused."""
    rendered = render(sandbox, kubectl, namespace).stdout
    broken = rendered.replace("readOnlyRootFilesystem: true", "readOnlyRootFilesystem: yes-ish")
    assert broken != rendered
    result = kubectl("apply", "--dry-run=server", "-f", "-", input=broken, check=False)
    assert result.returncode != 0
    assert "readOnlyRootFilesystem" in result.stderr


# --------------------------------------------------------------------------------------
# The alerts fire as documented (promtool unit tests over the rendered PrometheusRule)
# --------------------------------------------------------------------------------------


@sandbox_test
def test_alerts_fire_as_documented(sandbox: Sandbox, kubectl: Kubectl, tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian package prometheus, installed by `make deps`) is missing")
    docs = render_docs(sandbox, kubectl, "monitoring", set_values=["prometheusRule.enabled=true"])
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    tests = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    # One rollback at minute 3 (the counter also resets at minute 20: restart).
                    {"series": 'rewind_rollbacks_total{namespace="fraud",release="fraud-detector"}',
                     "values": "0 0 0 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0"},  # noqa: E501
                    # AwaitingApproval from minute 0 to 7, then decided.
                    {"series": 'rewind_release_phase{namespace="chat",release="support-chatbot",'
                               'phase="AwaitingApproval"}',
                     "values": "1 1 1 1 1 1 1 1 0 0 0 0"},
                    # Another release waits only 3 minutes: no alert.
                    {"series": 'rewind_release_phase{namespace="rec",release="recommender",'
                               'phase="AwaitingApproval"}',
                     "values": "1 1 1 0 0 0 0 0 0 0 0 0"},
                    # A quarantined revision serves with nothing clean to go to, minutes 2-4.
                    {"series": 'rewind_release_quarantine_hold{namespace="fraud",'
                               'release="fraud-detector"}',
                     "values": "0 0 1 1 1 0 0 0 0 0 0 0"},
                    # Two replicas (peering): both on standby from minute 4 to 8.
                    {"series": 'rewind_operator_active{pod="rewind-0"}',
                     "values": "1 1 1 1 0 0 0 0 0 0 0 0"},
                    {"series": 'rewind_operator_active{pod="rewind-1"}',
                     "values": "0 0 0 0 0 0 0 0 0 1 1 1"},
                ],
                "alert_rule_test": [
                    {"eval_time": "2m", "alertname": "RewindRollbackHappened", "exp_alerts": []},
                    {"eval_time": "5m", "alertname": "RewindRollbackHappened", "exp_alerts": [{
                        "exp_labels": {"severity": "warning", "namespace": "fraud",
                                       "release": "fraud-detector"},
                        "exp_annotations": {
                            "summary": "Rewind rolled back a model release",
                            "description": (
                                "ModelRelease fraud/fraud-detector was rolled back 1 time(s) "
                                "in the last 15m. See `kubectl describe mr -n fraud "
                                "fraud-detector` (status.timeline says why)."),
                        },
                    }]},
                    # 15m window: quiet again once the rollback is older than the window.
                    {"eval_time": "19m", "alertname": "RewindRollbackHappened", "exp_alerts": []},
                    {"eval_time": "25m", "alertname": "RewindRollbackHappened", "exp_alerts": []},
                    {"eval_time": "4m", "alertname": "RewindAwaitingApproval", "exp_alerts": []},
                    {"eval_time": "6m", "alertname": "RewindAwaitingApproval", "exp_alerts": [{
                        "exp_labels": {"severity": "warning", "namespace": "chat",
                                       "release": "support-chatbot",
                                       "phase": "AwaitingApproval"},
                        "exp_annotations": {
                            "summary": "A Rewind rollback decision is waiting for a human",
                            "description": (
                                "ModelRelease chat/support-chatbot has been AwaitingApproval "
                                "for more than 5m. Approve with `kubectl annotate mr -n chat "
                                "support-chatbot rewind.dev/approve-rollback=true` or reject "
                                "with rewind.dev/reject-rollback=<reason>."),
                        },
                    }]},
                    {"eval_time": "9m", "alertname": "RewindAwaitingApproval", "exp_alerts": []},
                    {"eval_time": "1m", "alertname": "RewindQuarantineHold", "exp_alerts": []},
                    {"eval_time": "3m", "alertname": "RewindQuarantineHold", "exp_alerts": [{
                        "exp_labels": {"severity": "critical", "namespace": "fraud",
                                       "release": "fraud-detector"},
                        "exp_annotations": {
                            "summary": "A quarantined model revision serves and no clean "
                                       "revision exists",
                            "description": (
                                "ModelRelease fraud/fraud-detector serves (or was rolling back "
                                "to) a revision a Quarantine entry matches, and no known-good "
                                "revision is clean: it holds where it is. Release a clean "
                                "revision; the Stalled condition of `kubectl describe mr -n "
                                "fraud fraud-detector` names the entry."),
                        },
                    }]},
                    {"eval_time": "6m", "alertname": "RewindQuarantineHold", "exp_alerts": []},
                    {"eval_time": "3m", "alertname": "RewindNoActiveReplica", "exp_alerts": []},
                    {"eval_time": "5m", "alertname": "RewindNoActiveReplica", "exp_alerts": []},
                    {"eval_time": "7m", "alertname": "RewindNoActiveReplica", "exp_alerts": [{
                        "exp_labels": {"severity": "critical"},
                        "exp_annotations": {
                            "summary": "No Rewind operator replica is running rollouts",
                            "description": (
                                "Every Rewind replica has been on standby for 2m: rollouts, "
                                "analyses and rollbacks are not progressing. Look for \"same "
                                "priority\" or \"keep-alive\" in the operator logs (Kopf "
                                "peering)."),
                        },
                    }]},
                    {"eval_time": "10m", "alertname": "RewindNoActiveReplica", "exp_alerts": []},
                ],
            },
            {
                # Rollback drills: eight days of minutes, to reach the 7-day threshold.
                "interval": "1m",
                "input_series": [
                    # Never drilled successfully (0 since the start of time).
                    {"series": 'rewind_drill_last_success_timestamp_seconds{namespace="fraud",'
                               'release="fraud-detector"}', "values": "0x12000"},
                    # Passed a drill at day 5: quiet at day 8.
                    {"series": 'rewind_drill_last_success_timestamp_seconds{namespace="rec",'
                               'release="recommender"}', "values": "432000x12000"},
                    # The last drill failed from minute 2 to minute 4.
                    {"series": 'rewind_drill_last_failed{namespace="fraud",'
                               'release="fraud-detector"}', "values": "0 0 1 1 1 0 0 0"},
                ],
                "alert_rule_test": [
                    {"eval_time": "6d", "alertname": "RewindNoSuccessfulDrill", "exp_alerts": []},
                    {"eval_time": "8d", "alertname": "RewindNoSuccessfulDrill", "exp_alerts": [{
                        "exp_labels": {"severity": "warning", "namespace": "fraud",
                                       "release": "fraud-detector"},
                        "exp_annotations": {
                            "summary": "A Rewind rollback path has not been exercised recently",
                            "description": (
                                "ModelRelease fraud/fraud-detector has had no successful "
                                "rollback drill in 7 days: nobody knows whether its rollback "
                                "works. Run one with `kubectl annotate mr -n fraud "
                                "fraud-detector rewind.dev/drill=true` or set spec.drill.every "
                                "in its RolloutPolicy."),
                        },
                    }]},
                    {"eval_time": "1m", "alertname": "RewindLastDrillFailed", "exp_alerts": []},
                    {"eval_time": "3m", "alertname": "RewindLastDrillFailed", "exp_alerts": [{
                        "exp_labels": {"severity": "warning", "namespace": "fraud",
                                       "release": "fraud-detector"},
                        "exp_annotations": {
                            "summary": "A Rewind rollback drill failed",
                            "description": (
                                "The last rollback drill of ModelRelease fraud/fraud-detector "
                                "failed: a real rollback would fail the same way. "
                                "status.lastDrill names what failed (SnapshotMissing, "
                                "SnapshotCorrupt, PodsNeverReady, AnalysisFailing, NoTarget)."),
                        },
                    }]},
                    {"eval_time": "6m", "alertname": "RewindLastDrillFailed", "exp_alerts": []},
                ],
            },
        ],
    }
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    result = subprocess.run([promtool, "test", "rules", "tests.yaml"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------------------
# Installed: the pod is hardened and the operator's identity is narrow
# --------------------------------------------------------------------------------------


@sandbox_test
@exclusive
def test_chart_installs_a_hardened_operator(
    kubectl: Kubectl, rewind_chart: ChartRelease
) -> None:
    ns = rewind_chart.namespace
    # helm --wait returned; the namespace enforces the "restricted" Pod Security Standard,
    # so the pod exists only because it was admitted under it.
    kubectl("wait", "--for=condition=Available", "--timeout=60s", "-n", ns,
            f"deployment/{rewind_chart.name}")
    pods = json.loads(kubectl("get", "pods", "-n", ns, "-l",
                              "app.kubernetes.io/component=operator", "-o", "json").stdout)
    (pod,) = pods["items"]
    assert pod["spec"]["serviceAccountName"] == rewind_chart.service_account
    container = pod["spec"]["containers"][0]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["spec"]["securityContext"]["runAsUser"] == 65532
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
    assert "emptyDir" in next(v for v in pod["spec"]["volumes"] if v["name"] == tmp["name"])
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"] == "/healthz"
    assert set(container["resources"]) == {"requests", "limits"}
    service = json.loads(kubectl("get", "service", f"{rewind_chart.name}-metrics", "-n", ns,
                                 "-o", "json").stdout)
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"


@sandbox_test
def test_restricted_pod_security_refuses_a_weakened_pod(
    sandbox: Sandbox, kubectl: Kubectl, namespace: str
) -> None:
    """The counter-test of the above: the same namespace label does refuse a weak pod."""
    kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    rendered = render(sandbox, kubectl, namespace,
                      set_values=["securityContext.allowPrivilegeEscalation=true"]).stdout
    deployment = next(d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Deployment")
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "weak", "namespace": namespace},
           "spec": {**deployment["spec"]["template"]["spec"], "serviceAccountName": "default"}}
    result = kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False)
    assert result.returncode != 0
    assert "allowPrivilegeEscalation" in result.stderr


#: What the operator must be able to do in any namespace (adapters + Kopf).
ALLOWED_NAMESPACED = [
    ("get", "modelreleases.rewind.dev"),
    ("watch", "modelreleases.rewind.dev"),
    ("patch", "modelreleases.rewind.dev"),
    ("patch", "modelreleases.rewind.dev", "--subresource=status"),
    ("update", "modelreleases.rewind.dev", "--subresource=finalizers"),
    ("list", "rolloutpolicies.rewind.dev"),
    ("patch", "rolloutpolicies.rewind.dev", "--subresource=status"),
    ("create", "virtualservices.networking.istio.io"),
    ("patch", "virtualservices.networking.istio.io"),
    ("list", "virtualservices.networking.istio.io"),  # the route conflict index
    ("watch", "virtualservices.networking.istio.io"),
    ("patch", "destinationrules.networking.istio.io"),
    ("patch", "httproutes.gateway.networking.k8s.io"),
    ("list", "httproutes.gateway.networking.k8s.io"),  # the HTTPRoute conflict index
    ("watch", "httproutes.gateway.networking.k8s.io"),
    ("delete", "httproutes.gateway.networking.k8s.io"),  # a release that left Gateway API
    ("patch", "inferencepools.inference.networking.k8s.io"),
    ("patch", "deployments.apps"),
    ("patch", "deployments.apps", "--subresource=scale"),
    ("list", "deployments.apps"),
    ("patch", "services"),
    ("get", "services"),
    ("create", "controllerrevisions.apps"),
    ("get", "controllerrevisions.apps"),
    ("list", "controllerrevisions.apps"),
    ("patch", "controllerrevisions.apps"),  # history records on the snapshots
    ("delete", "controllerrevisions.apps"),  # the retention sweep, forget-history
    ("create", "events"),
    ("create", "events.events.k8s.io"),
    ("list", "pods"),  # Istio's proxy on a revision's pods (spec.traffic.sidecar)
    ("get", "deployments.apps"),  # serving.workloadRef
]
#: What it must not be able to do.
DENIED_NAMESPACED = [
    ("get", "secrets"),
    ("create", "pods"),
    ("create", "pods", "--subresource=exec"),
    ("create", "serviceaccounts", "--subresource=token"),
    ("delete", "modelreleases.rewind.dev"),
    ("create", "modelreleases.rewind.dev"),
    ("patch", "rolloutpolicies.rewind.dev"),
    ("delete", "rolloutpolicies.rewind.dev"),
    ("patch", "deployments.apps", "--subresource=status"),
    ("create", "rolebindings.rbac.authorization.k8s.io"),
    ("update", "configmaps"),
    ("create", "gateways.networking.istio.io"),
    ("create", "gateways.gateway.networking.k8s.io"),
    ("patch", "httproutes.gateway.networking.k8s.io", "--subresource=status"),
]


@sandbox_test
@exclusive
def test_operator_identity_is_narrow(
    sandbox: Sandbox, kubectl: Kubectl, rewind_chart: ChartRelease
) -> None:
    config = rewind_chart.kubeconfig
    # The kubeconfig really is the ServiceAccount (so "no" below is RBAC, not a bad login).
    who = kubectl_as(sandbox, config, "auth", "whoami", "-o", "json")
    assert who.returncode == 0, who.stderr
    assert json.loads(who.stdout)["status"]["userInfo"]["username"] == rewind_chart.username

    # The brief's three musts and three must-nots, cluster-wide where it matters.
    assert can_i(sandbox, config, "patch", "modelreleases.rewind.dev", "--subresource=status",
                 "--all-namespaces")
    assert can_i(sandbox, config, "create", "virtualservices.networking.istio.io", "-n",
                 "rewind-demo")
    assert not can_i(sandbox, config, "list", "secrets", "--all-namespaces")
    assert not can_i(sandbox, config, "delete", "namespaces")
    assert not can_i(sandbox, config, "create", "clusterroles.rbac.authorization.k8s.io")

    for check in ALLOWED_NAMESPACED:
        assert can_i(sandbox, config, *check, "-n", "rewind-demo"), check
    for check in DENIED_NAMESPACED:
        assert not can_i(sandbox, config, *check, "-n", "rewind-demo"), check
    # What Kopf needs cluster-wide, and nothing it does not.
    assert can_i(sandbox, config, "watch", "customresourcedefinitions.apiextensions.k8s.io")
    assert not can_i(sandbox, config, "create", "customresourcedefinitions.apiextensions.k8s.io")
    assert not can_i(sandbox, config, "list", "namespaces")  # Kopf skips it cluster-wide
    assert can_i(sandbox, config, "get", "namespaces")  # Istio's injection labels
    assert not can_i(sandbox, config, "patch", "clusterkopfpeerings.kopf.dev")  # standalone
    assert not can_i(sandbox, config, "impersonate", "users")
    assert not can_i(sandbox, config, "escalate", "clusterroles.rbac.authorization.k8s.io")
    assert not can_i(sandbox, config, "bind", "clusterroles.rbac.authorization.k8s.io")

    # And real requests agree with the access reviews.
    denied = kubectl_as(sandbox, config, "get", "secrets", "--all-namespaces")
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower()
    vs = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
          "metadata": {"name": "probe", "namespace": rewind_chart.namespace},
          "spec": {"hosts": ["probe.example.com"],
                   "http": [{"route": [{"destination": {"host": "probe"}, "weight": 100}]}]}}
    created = kubectl_as(sandbox, config, "create", "-f", "-", input=json.dumps(vs))
    assert created.returncode == 0, created.stderr


@sandbox_test
@exclusive
def test_watch_namespaces_confines_the_operator(
    sandbox: Sandbox, kubectl: Kubectl, namespace: str, second_namespace: str, tmp_path: Path
) -> None:
    with installed_chart(sandbox, kubectl, namespace, tmp_path,
                         set_values=[f"watchNamespaces={{{second_namespace}}}",
                                     "peering.enabled=true"]) as release:
        config = release.kubeconfig
        for check in ALLOWED_NAMESPACED:
            assert can_i(sandbox, config, *check, "-n", second_namespace), check
            assert not can_i(sandbox, config, *check, "-n", "rewind-demo"), check
        assert not can_i(sandbox, config, "list", "modelreleases.rewind.dev", "--all-namespaces")
        # Route conflicts are looked for in the watched namespaces only (docs: the limit).
        assert not can_i(sandbox, config, "watch", "virtualservices.networking.istio.io",
                         "--all-namespaces")
        assert not can_i(sandbox, config, "patch", "modelreleases.rewind.dev",
                         "--subresource=status", "--all-namespaces")
        # Kopf's cluster-wide needs when restricted to namespaces.
        assert can_i(sandbox, config, "watch", "customresourcedefinitions.apiextensions.k8s.io")
        assert can_i(sandbox, config, "watch", "namespaces")
        assert can_i(sandbox, config, "get", "namespaces")  # Istio's injection labels
        assert not can_i(sandbox, config, "delete", "namespaces")
        assert not can_i(sandbox, config, "get", "secrets", "-n", second_namespace)
        assert not can_i(sandbox, config, "list", "secrets", "--all-namespaces")
        # Peering restricted to namespaces: a KopfPeering in each, and rights on it only.
        kubectl("get", "kopfpeering/rewind", "-n", second_namespace)
        assert can_i(sandbox, config, "patch", "kopfpeerings.kopf.dev/rewind", "-n",
                     second_namespace)
        assert can_i(sandbox, config, "watch", "kopfpeerings.kopf.dev", "-n", second_namespace)
        assert not can_i(sandbox, config, "patch", "kopfpeerings.kopf.dev/other", "-n",
                         second_namespace)
        assert not can_i(sandbox, config, "watch", "clusterkopfpeerings.kopf.dev")


@sandbox_test
@exclusive
def test_peering_runs_replicas_with_distinct_priorities(
    sandbox: Sandbox, kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    peering = f"rewind-{uuid.uuid4().hex[:6]}"
    with installed_chart(sandbox, kubectl, namespace, tmp_path,
                         set_values=["replicas=2", "peering.enabled=true",
                                     f"peering.name={peering}"]) as release:
        wait_for("2 ready operator replicas",
                 lambda: workload_ready(kubectl, namespace, "statefulset", release.name, 2),
                 timeout=60)
        pods = json.loads(kubectl("get", "pods", "-n", namespace, "-l",
                                  "app.kubernetes.io/component=operator", "-o",
                                  "json").stdout)["items"]
        # The env var POD_INDEX (-> --priority) reads this label: it must be distinct.
        indexes = sorted(p["metadata"]["labels"]["apps.kubernetes.io/pod-index"]
                         for p in pods)
        assert indexes == ["0", "1"]
        kubectl("get", f"clusterkopfpeering/{peering}")
        config = release.kubeconfig
        assert can_i(sandbox, config, "patch", f"clusterkopfpeerings.kopf.dev/{peering}")
        assert can_i(sandbox, config, "watch", "clusterkopfpeerings.kopf.dev")
        assert not can_i(sandbox, config, "patch", "clusterkopfpeerings.kopf.dev/other")
        assert not can_i(sandbox, config, "delete", f"clusterkopfpeerings.kopf.dev/{peering}")

        # The chart's RBAC carries HA: two operators as its ServiceAccount keep their
        # keep-alives in the chart's peering object, and exactly one runs the loops. (The
        # sandbox's pods are kwok's and run nothing, so they hold no keep-alive.)
        replicas = [Replica(OperatorProcess(sandbox, [], tmp_path / f"op-{priority}.log",
                                            kubeconfig=str(config)),
                            peering, priority=priority) for priority in (7, 3)]
        try:
            for replica in replicas:
                replica.start()
            wait_for("replica 7 active, replica 3 on standby",
                     lambda: [r.active() for r in replicas] == [1, 0], timeout=45)

            def priorities() -> list[int]:
                peers = json.loads(kubectl("get", f"clusterkopfpeering/{peering}", "-o",
                                           "json").stdout).get("status") or {}
                return sorted(int(p["priority"]) for p in peers.values())

            # A replica stands by from its start, before Kopf writes its keep-alive (after
            # the startup handlers): replica 3's standby does not mean its entry is there.
            wait_for("both keep-alives in the peering object",
                     lambda: priorities() == [3, 7], timeout=20)
        finally:
            for replica in replicas:
                replica.process.stop()
            logs = "".join(r.process.logs() for r in replicas)
        assert "Forbidden" not in logs, logs[-5000:]
    # Uninstalled with the release.
    wait_for(f"clusterkopfpeering/{peering} to go",
             lambda: kubectl("get", f"clusterkopfpeering/{peering}", check=False).returncode != 0)
