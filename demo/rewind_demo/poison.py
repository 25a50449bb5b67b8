"""The demo's poisoning act (issue 13): a rollback target you can trust.

The credit-scoring model has four revisions, each promoted in turn: r1 and r2 were trained
on data exported before November, r3 and r4 on November's export. Its RolloutPolicy
verifies every artifact (``integrity``): the models are real files in a local store, each
released with the sha256 of its bytes. Then two things are found out at 03:00:

- November's export was poisoned (label flips injected upstream): a Quarantine lists every
  version of the dataset made since November 1st;
- r2's file in the store was replaced after its release (a tampered artifact).

Rewind rolls back from r4 past r3 (known-good, but quarantined) and past r2 (clean data, but
its artifact no longer verifies) to r1, and the timeline says why each was skipped. Each
revision is a version of the registered model in a real MLflow server (``hack/mlflow-server``,
SQLite, on loopback): its ``production`` alias follows the routes, promotion after promotion,
and back to version 1 after the rollback, each move tagged on the version.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rewind import API_GROUP, API_VERSION
from rewind.api import (
    MODELRELEASE_KIND,
    MODELRELEASE_PLURAL,
    QUARANTINE_PLURAL,
    ROLLOUTPOLICY_KIND,
    ROLLOUTPOLICY_PLURAL,
    ModelReleaseSpec,
    RolloutPolicySpec,
)
from rewind_demo.mlflow_server import MLflowServer

if TYPE_CHECKING:
    from rewind_demo.demo import Demo

RELEASE = "credit"
POLICY = "credit-canary"
DATASET = "s3://datasets/credit/applications"
POISONED_SINCE = "2026-11-01T00:00:00Z"
IMAGE = "registry.example.com/credit-scorer@sha256:" + "7" * 64
#: revision -> (model version, data version, when the data was exported)
VERSIONS = {
    1: ("1.0.0", "2026-09-30", "2026-09-30T23:00:00Z"),
    2: ("1.1.0", "2026-10-31", "2026-10-31T23:00:00Z"),
    3: ("1.2.0", "2026-11-15", "2026-11-15T23:00:00Z"),
    4: ("1.3.0", "2026-11-27", "2026-11-27T23:00:00Z"),
}
LABELS = {"rewind.dev/demo": "true"}
MODEL = "credit-scorer"
ALIAS = "production"


def policy_body(namespace: str) -> dict[str, Any]:
    """A short canary (no analysis: the act is about where a rollback goes), every artifact
    verified, and verdicts kept fresh for 20s so a target is verified again when it is one."""
    spec = RolloutPolicySpec.model_validate({
        "strategy": {"canary": {"steps": [{"weight": 50, "pause": {"duration": "2s"}}]}},
        "analysis": {"interval": "5s", "metrics": []},
        "rollback": {"mode": "automatic", "scaleDownDelay": "2s"},
        # Replaced stables are scaled down at once: a rollback brings them back cold, and
        # their new pods read the store again, so they are verified again first.
        "keepPreviousWarm": "1s",
        "firstRelease": "Promote",
        "integrity": {"reverifyAfter": "20s", "timeout": "1m"},
    })
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": ROLLOUTPOLICY_KIND,
        "metadata": {"name": POLICY, "namespace": namespace, "labels": LABELS},
        "spec": spec.model_dump(mode="json", by_alias=True, exclude_defaults=True),
    }


def write_artifact(store: Path, revision: int) -> tuple[Path, str]:
    """The model file of ``revision`` in the local store, and the sha256 of its bytes."""
    version = VERSIONS[revision][0]
    path = store / "credit-scorer" / version / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(f"credit-scorer {version} weights\n".encode() * 4096)
    return path, "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def release_body(
    namespace: str, store: Path, revision: int, tracking_uri: str | None = None
) -> dict[str, Any]:
    version, data_version, exported = VERSIONS[revision]
    path, digest = write_artifact(store, revision)
    registry = (
        {"registry": {"trackingURI": tracking_uri, "name": MODEL, "version": str(revision)}}
        if tracking_uri else {}
    )
    spec = ModelReleaseSpec.model_validate({
        "policyRef": {"name": POLICY},
        "model": {"name": MODEL, "version": version, "artifactURI": path.as_uri(),
                  "artifactDigest": digest, "format": "onnx", **registry},
        "code": {"image": IMAGE},
        "data": {"datasetRef": DATASET, "version": data_version, "createdAt": exported},
        "serving": {"replicas": 1, "port": 8080},
        "traffic": {"hosts": ["credit.demo.example.com"]},
    })
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": MODELRELEASE_KIND,
        "metadata": {"name": RELEASE, "namespace": namespace, "labels": LABELS},
        "spec": spec.model_dump(mode="json", by_alias=True, exclude_defaults=True),
    }


def quarantine_body(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "Quarantine",
        "metadata": {"name": "poison-nov", "namespace": namespace, "labels": LABELS},
        "spec": {"entries": [{
            "name": "nov-export", "datasetRef": DATASET, "suspectAfter": POISONED_SINCE,
            "reason": "label flips injected upstream (INC-5120)", "addedBy": "alice",
        }]},
    }


def _history(body: Mapping[str, Any], revision: int) -> Mapping[str, Any]:
    for e in (body.get("status") or {}).get("history") or []:
        if int(e.get("revision") or 0) == revision:
            return e  # type: ignore[no-any-return]
    return {}


def act(demo: Demo) -> None:
    """Play the act (see the module docstring); raises StoryError if Rewind does not."""
    from rewind_demo.demo import StoryError, tidy

    c, ns = demo.c, demo.ns
    store = demo.state / "store"
    c.say("")
    demo._act("03:00 again. credit-scorer's training data was poisoned; a rollback target "
              "must be trustworthy.")
    c.say(f"  The artifacts are files in a local store ({store}); the policy verifies each "
          "one's sha256 before it gets traffic, as a candidate and as a rollback target.")
    demo.extra_releases.append(RELEASE)
    from rewind_demo.demo import ROOT

    # Each run starts from an empty registry, as it starts from an empty namespace.
    directory = demo.state / "mlflow"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    mlflow = MLflowServer(ROOT, directory)
    demo.mlflow = mlflow
    try:
        mlflow.start(timeout=600)  # the first run installs it (a few minutes)
    except RuntimeError as exc:
        raise StoryError(str(exc)) from exc
    mlflow.register(MODEL, [f"s3://models/{MODEL}/{version}/model.onnx"
                            for version, _, _ in VERSIONS.values()])
    c.say(f"  MLflow tracking server up at {mlflow.uri} (SQLite): registered model {MODEL}, "
          f"versions 1-4; each release names its version (spec.model.registry), and Rewind "
          f"moves the '{ALIAS}' alias to what the routes serve.")
    demo.k.apply(ROLLOUTPOLICY_PLURAL, policy_body(ns))
    for revision, (version, data_version, _) in VERSIONS.items():
        c.say(f"  kubectl apply: credit-scorer {version}, trained on the {data_version} export")
        demo.k.apply(MODELRELEASE_PLURAL, release_body(ns, store, revision, mlflow.uri))
        demo.wait_release(RELEASE, f"credit r{revision} to be promoted",
                          demo._phase_is("Promoted", revision), timeout=120,
                          bad=demo._unexpected(revision, "Failed", "RolledBack"))
    demo.wait_release(RELEASE, f"MLflow's {ALIAS} alias on version 4",
                      lambda _b: mlflow.alias(MODEL, ALIAS) == "4", timeout=60)
    c.say(f"  r4 serves; r1..r3 are known-good, each verified when it was released; MLflow's "
          f"{ALIAS} alias names version {mlflow.alias(MODEL, ALIAS)}.")
    tampered = store / "credit-scorer" / VERSIONS[2][0] / "model.onnx"
    tampered.write_bytes(b"weights replaced in the store after release\n")
    c.say(f"  Someone replaces r2's file in the store ({tampered.name} of "
          f"{VERSIONS[2][0]}): its bytes no longer match the digest it was released with.")
    c.say(f"  alice finds that November's export was poisoned and quarantines every "
          f"version of {DATASET} made since {POISONED_SINCE[:10]}:")
    demo.k.apply(QUARANTINE_PLURAL, quarantine_body(ns))
    final = demo.wait_release(RELEASE, "credit to roll back to a clean, verified revision",
                              demo._phase_is("RolledBack", 1), timeout=120,
                              bad=demo._unexpected(4, "Failed"))
    st = final.get("status") or {}
    for e in st.get("timeline") or []:
        if e.get("type") in ("RollbackDecided", "ArtifactVerificationFailed", "RolledBack"):
            c.say(f"  {e.get('type')}: {tidy(str(e.get('message')))}")
    r2 = (_history(final, 2).get("integrity") or {})
    if r2.get("verdict") != "Failed":
        raise StoryError(f"r2's artifact was not refused: {r2}")
    c.say(f"  credit r1 serves 100%: r4 and r3 are quarantined ({st.get('quarantined')}), "
          "r2's artifact failed verification; nobody routed a user to either.")
    demo.wait_release(RELEASE, f"MLflow's {ALIAS} alias back on version 1",
                      lambda _b: mlflow.alias(MODEL, ALIAS) == "1", timeout=60)
    tag = mlflow.tags(MODEL, "1").get(f"rewind.dev/alias-{ALIAS}-moved", "")
    now = mlflow.alias(MODEL, ALIAS)
    c.say(f"  MLflow: {ALIAS} -> version {now} (routes first, registry after); "
          f"the move is tagged on version 1: {tag[:160]}")


def checks(demo: Demo) -> list[tuple[str, bool, str]]:
    """What the act must have left in the cluster, read back from the API server."""
    body = demo.k.get_release(demo.ns, RELEASE) or {}
    st = body.get("status") or {}
    routes, _, _ = demo._routes_of(RELEASE, "VirtualService")
    r2 = _history(body, 2).get("integrity") or {}
    decided = [e for e in st.get("timeline") or [] if e.get("type") == "RollbackDecided"]
    why = " ".join(str(e.get("message")) for e in decided)
    mlflow: MLflowServer | None = getattr(demo, "mlflow", None)
    alias = mlflow.alias(MODEL, ALIAS) if mlflow is not None else "-"
    return [
        (f"credit: MLflow's {ALIAS} alias names version 1 again", alias == "1", alias),
        ("credit rolled back to r1, which serves 100%",
         st.get("phase") == "RolledBack" and int(st.get("stableRevision") or 0) == 1
         and routes == {1: 100}, f"{st.get('phase')} r{st.get('stableRevision')} {routes}"),
        ("credit r4 and r3 are quarantined", st.get("quarantined") == "r4,r3",
         str(st.get("quarantined"))),
        ("credit r2's tampered artifact was refused as a rollback target",
         r2.get("verdict") == "Failed" and "r2's artifact failed verification" in why,
         str(r2.get("message"))),
        ("credit's timeline says why r3 was skipped", "r3 skipped: quarantined" in why, why[:200]),
    ]
