"""What a revision's pod template reads that its snapshot cannot pin, and a Deployment's pod
template turned into a revision's (``serving.workloadRef``).

Pure functions over the API models (no I/O): the engine names a new revision's unpinned
references in its history entry, and the controller resolves a workloadRef before it hashes
the spec, so the template a revision copied is part of what the revision is.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from rewind.api import (
    INJECTED_ENV,
    MAX_HUMAN_TEXT,
    MAX_UNPINNED,
    MODEL_SERVER_CONTAINER,
    SERVING_PORT_NAME,
    ModelReleaseSpec,
    PodTemplate,
    clip,
    image_digest,
)

__all__ = [
    "TEMPLATE_FROM_ANNOTATION",
    "WorkloadRefError",
    "resolve_workload_ref",
    "unpinned_references",
]

#: On a template copied from a Deployment (serving.workloadRef): where it came from.
TEMPLATE_FROM_ANNOTATION = "rewind.dev/template-from"

#: Volume sources whose contents the pod itself makes (nothing read from elsewhere).
_SELF_CONTAINED_VOLUMES = {"emptyDir", "downwardAPI", "ephemeral"}


def unpinned_references(spec: ModelReleaseSpec) -> list[str]:
    """What the revision's pods read at run time that its snapshot cannot pin, e.g.
    ``["ConfigMap triton-config", "PersistentVolumeClaim weights", "Secret hf-token",
    "ServiceAccount llm-reader"]``: the Secrets and ConfigMaps behind env vars, envFrom and
    volumes, the claims and other volumes that hold data (hostPath, nfs, csi...), an image
    volume not pinned by digest, and the service account the template names or whose token it
    projects. Sorted, at most ``MAX_UNPINNED`` (the last one then says how many more)."""
    template = spec.serving.template
    if template is None:
        return []
    refs: set[str] = set()
    pod = template.spec
    for container in [*pod.containers, *(pod.init_containers or [])]:
        for env in container.env or []:
            source = env.value_from
            if source is None:
                continue
            if source.secret_key_ref is not None:
                refs.add(f"Secret {source.secret_key_ref.name or '?'}")
            if source.config_map_key_ref is not None:
                refs.add(f"ConfigMap {source.config_map_key_ref.name or '?'}")
        for env_from in container.env_from or []:
            if env_from.secret_ref is not None:
                refs.add(f"Secret {env_from.secret_ref.name or '?'}")
            if env_from.config_map_ref is not None:
                refs.add(f"ConfigMap {env_from.config_map_ref.name or '?'}")
    account = pod.service_account_name
    if account:
        refs.add(f"ServiceAccount {account}")
    for volume in pod.volumes or []:
        refs.update(_volume_references(volume.model_dump(by_alias=True, exclude_none=True),
                                       account or "default"))
    out = sorted(refs)
    if len(out) > MAX_UNPINNED:
        out = [*out[: MAX_UNPINNED - 1], f"and {len(out) - MAX_UNPINNED + 1} more"]
    return [clip(ref, MAX_HUMAN_TEXT) for ref in out]


def _volume_references(volume: Mapping[str, Any], account: str) -> set[str]:
    name = volume.get("name", "?")
    sources = {k: v for k, v in volume.items() if k != "name"}
    refs: set[str] = set()
    for kind, source in sources.items():
        source = source if isinstance(source, Mapping) else {}
        if kind in _SELF_CONTAINED_VOLUMES:
            continue
        if kind == "secret":
            refs.add(f"Secret {source.get('secretName') or '?'}")
        elif kind == "configMap":
            refs.add(f"ConfigMap {source.get('name') or '?'}")
        elif kind == "persistentVolumeClaim":
            refs.add(f"PersistentVolumeClaim {source.get('claimName') or '?'}")
        elif kind == "image" and image_digest(str(source.get("reference", ""))):
            continue  # an OCI image volume pinned by digest is as pinned as an image
        elif kind == "projected":
            for projection in source.get("sources") or []:
                if not isinstance(projection, Mapping):
                    continue
                if "secret" in projection:
                    refs.add(f"Secret {(projection['secret'] or {}).get('name') or '?'}")
                if "configMap" in projection:
                    refs.add(f"ConfigMap {(projection['configMap'] or {}).get('name') or '?'}")
                if "serviceAccountToken" in projection:
                    refs.add(f"ServiceAccount {account} token")
                if "clusterTrustBundle" in projection:
                    refs.add(f"Volume {name} (clusterTrustBundle)")
        else:
            refs.add(f"Volume {name} ({kind})")
    return refs


class WorkloadRefError(ValueError):
    """The Deployment named by serving.workloadRef cannot give a revision its template."""


#: Pod template metadata fields kept from a Deployment (the rest is the API server's).
_KEPT_METADATA = ("labels", "annotations")


def resolve_workload_ref(spec: ModelReleaseSpec, deployment: Mapping[str, Any]) -> ModelReleaseSpec:
    """The spec with ``serving.workloadRef`` replaced by the Deployment's pod template, as
    a revision runs it and its snapshot records it.

    What the ModelRelease sets wins over the Deployment's: the model-server container (named
    model-server, else the first) loses its image (code.image), its args when code.args is
    set, its resources when serving.resources is, its liveness probe when livenessPath is,
    the port serving.port (or named http) and the env Rewind sets (MODEL_URI...). The
    template is annotated with where it came from (``rewind.dev/template-from``). The
    Deployment's replicas, selector and strategy are not part of it."""
    ref = spec.serving.workload_ref
    if ref is None:
        return spec
    where = f"Deployment {ref.name} (serving.workloadRef)"
    raw = (deployment.get("spec") or {}).get("template")
    if not isinstance(raw, Mapping) or not (raw.get("spec") or {}).get("containers"):
        raise WorkloadRefError(f"{where} has no pod template with containers")
    template: dict[str, Any] = copy.deepcopy(dict(raw))
    meta = {k: v for k, v in (template.get("metadata") or {}).items() if k in _KEPT_METADATA and v}
    meta["annotations"] = {**(meta.get("annotations") or {}),
                           TEMPLATE_FROM_ANNOTATION: f"Deployment/{ref.name}"}
    template["metadata"] = meta
    containers: list[dict[str, Any]] = template["spec"]["containers"]
    names = [c.get("name") for c in containers]
    server = containers[
        names.index(MODEL_SERVER_CONTAINER) if MODEL_SERVER_CONTAINER in names else 0
    ]
    serving = spec.serving
    server.pop("image", None)
    if spec.code.args:
        server.pop("args", None)
    if serving.resources.requests or serving.resources.limits:
        server.pop("resources", None)
    if serving.liveness_path is not None:
        server.pop("livenessProbe", None)
    ports = [
        p for p in server.get("ports") or []
        if p.get("name") != SERVING_PORT_NAME and p.get("containerPort") != serving.port
    ]
    env = [e for e in server.get("env") or [] if e.get("name") not in INJECTED_ENV]
    for key, value in (("ports", ports), ("env", env)):
        if value:
            server[key] = value
        else:
            server.pop(key, None)
    try:
        parsed = PodTemplate.model_validate(template)
        resolved = serving.model_copy(update={"template": parsed, "workload_ref": None})
        out = spec.model_copy(update={"serving": resolved})
        # Validated whole, as a spec written with this template would be.
        return ModelReleaseSpec.model_validate(out.model_dump(mode="json", by_alias=True))
    except ValidationError as err:
        raise WorkloadRefError(
            f"the pod template of {where} cannot be used: {describe_errors(err)}"
        ) from err


def describe_errors(err: ValidationError) -> str:
    """A pydantic error in one line, as a status message shows it."""
    parts = []
    for e in err.errors():
        where = ".".join(str(p) for p in e.get("loc", ()))
        msg = str(e.get("msg", "")).removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)
