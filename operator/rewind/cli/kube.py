"""The Kubernetes side of ``kubectl rewind``: kubeconfig, reads, who am I, annotations.

Kubeconfig is handled as kubectl does: ``--kubeconfig``, else ``$KUBECONFIG`` (several
files, ``:``-separated, merged), else ``~/.kube/config``, else the in-cluster service
account; ``--context`` picks a context; ``-n`` a namespace, else the context's, else
``default``. kubectl passes a plugin every argument untouched, so these flags are the
plugin's own.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client, config

from rewind import API_GROUP, API_VERSION
from rewind.adapters.base import MANAGED_BY_LABEL, MANAGED_BY_VALUE, RELEASE_LABEL
from rewind.api import MODELRELEASE_PLURAL, ROLLOUTPOLICY_PLURAL, workload_name

IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class CliError(Exception):
    """A failure with its exit code and a message for humans."""

    def __init__(self, message: str, code: int, hint: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.hint = hint


# Exit codes (also in `kubectl rewind --help`).
EXIT_OK = 0
EXIT_ERROR = 1  # the API server could not be reached, or answered unexpectedly
EXIT_USAGE = 2  # bad arguments (click's own code)
EXIT_NOT_FOUND = 3  # no such release or revision
EXIT_REFUSED = 4  # RBAC or the admission policy refused the action
EXIT_NOT_ACTED = 5  # the operator did not act on it (nothing to act on), with why
EXIT_TIMEOUT = 6  # the operator did not answer in time (is it running?)


def api_message(err: client.ApiException) -> str:
    """The API server's own words."""
    try:
        body = json.loads(err.body or "{}")
    except ValueError:
        return f"HTTP {err.status} {err.reason}"
    return str(body.get("message") or f"HTTP {err.status} {err.reason}")


@dataclass(frozen=True)
class Identity:
    username: str
    groups: tuple[str, ...] = ()
    source: str = "SelfSubjectReview"


class Cluster:
    """One API client for the chosen kubeconfig, context and namespace."""

    def __init__(self, kubeconfig: str | None, context: str | None,
                 namespace: str | None) -> None:
        self.context = context
        self.api: client.ApiClient
        default_ns = "default"
        try:
            if kubeconfig is None and not os.environ.get("KUBECONFIG") and not Path(
                "~/.kube/config").expanduser().exists() and IN_CLUSTER_NAMESPACE.exists():
                config.load_incluster_config()  # type: ignore[no-untyped-call]
                self.api = client.ApiClient()
                default_ns = IN_CLUSTER_NAMESPACE.read_text().strip() or "default"
            else:
                contexts, active = config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
                    config_file=kubeconfig)
                chosen = active
                if context is not None:
                    chosen = next((c for c in contexts if c.get("name") == context), None)
                    if chosen is None:
                        raise CliError(f"context {context!r} not found in the kubeconfig",
                                       EXIT_USAGE)
                self.context = (chosen or {}).get("name")
                default_ns = ((chosen or {}).get("context") or {}).get("namespace") or "default"
                self.api = config.new_client_from_config(  # type: ignore[no-untyped-call]
                    config_file=kubeconfig, context=self.context)
        except config.ConfigException as err:
            raise CliError(f"no usable kubeconfig: {err}", EXIT_ERROR,
                           "set KUBECONFIG, pass --kubeconfig, or run in a cluster") from err
        self.namespace = namespace or default_ns
        self.custom = client.CustomObjectsApi(self.api)
        self.apps = client.AppsV1Api(self.api)

    # -- reads ---------------------------------------------------------------------------

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, _request_timeout=30, **kwargs)
        except client.ApiException as err:
            if err.status == 404:
                raise CliError(f"{what} not found in namespace {self.namespace}",
                               EXIT_NOT_FOUND) from err
            if err.status in (401, 403):
                raise CliError(f"{what}: {api_message(err)}", EXIT_REFUSED) from err
            raise CliError(f"{what}: {api_message(err)}", EXIT_ERROR) from err
        except OSError as err:  # urllib3 connection errors are OSErrors too
            raise CliError(f"cannot reach the API server: {err}", EXIT_ERROR) from err
        except Exception as err:
            if type(err).__module__.startswith("urllib3"):
                raise CliError(f"cannot reach the API server: {err}", EXIT_ERROR) from err
            raise

    def release(self, name: str) -> dict[str, Any]:
        body: dict[str, Any] = self._call(
            f"ModelRelease {name}", self.custom.get_namespaced_custom_object,
            API_GROUP, API_VERSION, self.namespace, MODELRELEASE_PLURAL, name)
        return body

    def policy(self, name: str) -> dict[str, Any] | None:
        """The RolloutPolicy, or None when it is missing or unreadable (the view says so)."""
        if not name:
            return None
        try:
            body: dict[str, Any] = self._call(
                f"RolloutPolicy {name}", self.custom.get_namespaced_custom_object,
                API_GROUP, API_VERSION, self.namespace, ROLLOUTPOLICY_PLURAL, name)
        except CliError:
            return None
        return body

    def deployments(self, release: str) -> list[dict[str, Any]]:
        """The revision Deployments (empty when the user may not list them)."""
        selector = f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE},{RELEASE_LABEL}={release}"
        try:
            found = self._call("Deployments", self.apps.list_namespaced_deployment,
                               self.namespace, label_selector=selector)
        except CliError:
            return []
        return list(self._plain(found).get("items") or [])

    def snapshots(self, release: str) -> list[dict[str, Any]]:
        selector = f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE},{RELEASE_LABEL}={release}"
        found = self._call("ControllerRevisions", self.apps.list_namespaced_controller_revision,
                           self.namespace, label_selector=selector)
        return list(self._plain(found).get("items") or [])

    def snapshot(self, release: str, revision: int) -> dict[str, Any]:
        name = workload_name(release, revision)
        found = self._call(f"ControllerRevision {name} (the snapshot of r{revision})",
                           self.apps.read_namespaced_controller_revision, name, self.namespace)
        return self._plain(found)

    def events(self, release: str) -> list[dict[str, Any]]:
        core = client.CoreV1Api(self.api)
        try:
            found = self._call("Events", core.list_namespaced_event, self.namespace,
                               field_selector=f"involvedObject.name={release},"
                                              "involvedObject.kind=ModelRelease")
        except CliError:
            return []
        return list(self._plain(found).get("items") or [])

    def _plain(self, obj: Any) -> dict[str, Any]:
        """A client model as the JSON the API server sent (camelCase keys)."""
        plain: dict[str, Any] = self.api.sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
        return plain

    # -- who am I, and acting ------------------------------------------------------------

    def whoami(self) -> Identity | None:
        """Who the API server takes us for (SelfSubjectReview, as `kubectl auth whoami`):
        the name its admission policy stamps as the actor. None if it will not say."""
        auth = client.AuthenticationV1Api(self.api)
        try:
            review = auth.create_self_subject_review(
                client.V1SelfSubjectReview(api_version="authentication.k8s.io/v1",
                                           kind="SelfSubjectReview"),
                _request_timeout=30)
        except (client.ApiException, OSError):
            return None
        info = review.status.user_info if review.status is not None else None
        if info is None or not info.username:
            return None
        return Identity(info.username, tuple(info.groups or ()))

    def annotate(self, name: str, annotations: Mapping[str, str | None]) -> dict[str, Any]:
        """A merge patch of annotations; RBAC and admission refusals become EXIT_REFUSED."""
        try:
            body = self.custom.patch_namespaced_custom_object(
                API_GROUP, API_VERSION, self.namespace, MODELRELEASE_PLURAL, name,
                {"metadata": {"annotations": dict(annotations)}}, _request_timeout=30)
        except client.ApiException as err:
            message = api_message(err)
            if err.status == 404:
                raise CliError(f"ModelRelease {name} not found in namespace {self.namespace}",
                               EXIT_NOT_FOUND) from err
            if err.status in (401, 403) or (err.status == 422 and "denied" in message):
                raise CliError(f"refused by the API server: {message}", EXIT_REFUSED) from err
            raise CliError(f"the API server did not accept the annotation: {message}",
                           EXIT_ERROR) from err
        except OSError as err:
            raise CliError(f"cannot reach the API server: {err}", EXIT_ERROR) from err
        return dict(body) if isinstance(body, dict) else {}
