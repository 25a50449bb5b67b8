"""Artifact integrity (issue 13, item 1), end to end: the real `rewind-operator` process
verifies each revision's model artifact (files on this machine, the store of the sandbox)
before the revision gets any traffic, as a candidate and again as a rollback target.

- a verified candidate is released, its history records the verdict;
- a candidate whose bytes do not match its digest is refused before any traffic, with a
  Warning Event naming the file;
- a cold rollback target whose artifact was replaced in the store after its release is
  verified again as it comes back from zero (however fresh its verdict), passed over for the
  next known-good revision, and never routed to;
- a rollback to a warm, freshly verified revision is not verified again (its verdict is
  unchanged by the rollback);
- signed models on a real S3-compatible server (credentials and trust root in Secrets): a
  candidate signed by a key the policy does not trust is refused before any traffic.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.sandbox.operator_helpers import (
    HEALTHY,
    Recorder,
    Rewind,
    Routes,
    assert_holds,
    canary,
    history,
    policy_manifest,
    release_manifest,
    timeline,
)
from tests.sandbox.s3_helpers import ACCESS, SECRET, S3Server
from tests.signers import Signer, key_signer

pytestmark = pytest.mark.sandbox

NAME = "fraud"
POLICY = "fraud-canary"


def with_integrity(policy: dict[str, Any], reverify_after: str = "1h") -> dict[str, Any]:
    policy["spec"]["integrity"] = {"reverifyAfter": reverify_after, "timeout": "1m"}
    return policy


def artifact(store: Path, version: int) -> tuple[Path, str]:
    """A model file for ``version`` in the store, and its digest."""
    path = store / f"{version}.0.0" / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(f"weights of fraud {version}.0.0\n".encode() * 1000)
    return path, "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def release_of(store: Path, version: int, *, digest: str | None = None) -> dict[str, Any]:
    path, real = artifact(store, version)
    body = release_manifest(NAME, POLICY, version=version)
    body["spec"]["model"]["artifactURI"] = path.as_uri()
    body["spec"]["model"]["artifactDigest"] = digest or real
    return body


def promote(rw: Rewind, store: Path, version: int) -> dict[str, Any]:
    rw.set_error_rate(NAME, version, HEALTHY)
    rw.apply(release_of(store, version))
    status = rw.wait_phase(NAME, "Promoted", stable=version, timeout=60)
    rw.wait_routes(NAME, {version: 100})
    return status


def test_a_candidate_is_verified_before_traffic_and_a_tampered_one_is_refused(
    rw: Rewind, tmp_path: Path
) -> None:
    rw.apply(with_integrity(policy_manifest(POLICY, canary((50, "1s")))))
    status = promote(rw, tmp_path, 1)
    verdict = history(status, 1)["integrity"]
    assert verdict["verdict"] == "Verified" and verdict["digest"].startswith("sha256:")
    assert timeline(status, "ArtifactVerified")
    # r2's bytes are not the bytes released: refused before any traffic.
    rw.set_error_rate(NAME, 2, HEALTHY)
    with Recorder(rw.sandbox, rw.namespace, kinds=("virtualservices",)) as seen:
        rw.apply(release_of(tmp_path, 2, digest="sha256:" + "0" * 64))
        failed = rw.wait_phase(NAME, "Failed", stable=1, timeout=60)
    assert all(2 not in routes.weights for _, routes in seen.routes(NAME))
    reason = history(failed, 2)["reason"]
    assert "artifact failed verification" in reason and "model.onnx has digest" in reason
    assert history(failed, 2)["integrity"]["verdict"] == "Failed"
    event = rw.event(NAME, type="Warning", reason="ArtifactVerificationFailed",
                     contains="2.0.0/model.onnx has digest")
    assert "want sha256:" + "0" * 64 in event["message"]


def test_a_tampered_rollback_target_is_passed_over_for_the_next_known_good(
    rw: Rewind, tmp_path: Path
) -> None:
    # Replaced stables are scaled down at once: the rollback brings r2 back from zero, and
    # its new pods would read the store again, so it is verified again however fresh its
    # verdict (a warm target's running pods read the bytes that were verified).
    rw.apply(with_integrity(
        policy_manifest(POLICY, canary((50, "1s")), keep_previous_warm="1s")
    ))
    for version in (1, 2, 3):
        promote(rw, tmp_path, version)
    rw.wait_replicas(NAME, 2, 0)
    # r2's object is replaced in the store after its release.
    (tmp_path / "2.0.0" / "model.onnx").write_bytes(b"poisoned weights\n")
    with Recorder(rw.sandbox, rw.namespace, kinds=("virtualservices",)) as seen:
        rw.annotate(NAME, "rewind.dev/rollback", "drift on the fraud model")
        rolled = rw.wait_phase(NAME, "RolledBack", stable=1, timeout=90)
        rw.wait_routes(NAME, {1: 100})
    assert all(2 not in routes.weights for _, routes in seen.routes(NAME))
    decided = timeline(rolled, "RollbackDecided")
    assert decided and "rollback target r2's artifact failed verification" in (
        decided[-1]["message"]
    )
    assert "to r1 instead" in decided[-1]["message"]
    assert "2.0.0/model.onnx has digest" in decided[-1]["message"]
    rw.event(NAME, type="Warning", reason="ArtifactVerificationFailed", contains="r2")
    assert history(rolled, 2)["integrity"]["verdict"] == "Failed"


def test_a_rollback_to_a_warm_verified_target_is_not_verified_again(
    rw: Rewind, tmp_path: Path
) -> None:
    rw.apply(with_integrity(
        policy_manifest(POLICY, canary((50, "1s")), keep_previous_warm="5m")
    ))
    promote(rw, tmp_path, 1)
    status = promote(rw, tmp_path, 2)
    # r1 is warm and its verdict (from its own release) is fresh.
    before = history(status, 1)["integrity"]
    assert before["verdict"] == "Verified"
    assert rw.replicas(NAME, 1)
    rw.annotate(NAME, "rewind.dev/rollback", "drift")
    rolled = rw.wait_phase(NAME, "RolledBack", stable=1, timeout=30)
    assert history(rolled, 1)["integrity"] == before
    assert_holds("users stay on r1", lambda: rw.routes(NAME) == Routes({1: 100}), seconds=2)
    wait_for("r2's verdict to stay recorded",
             lambda: history(rw.status(NAME), 2).get("integrity"), timeout=5)


def test_signed_models_from_s3_a_bad_signature_is_refused_before_any_traffic(
    rw: Rewind, s3_server: S3Server, tmp_path: Path
) -> None:
    """The artifact and its signature on a real S3-compatible server, read with credentials
    from a Secret; the trust root (a public key) in another Secret."""
    signer = key_signer(tmp_path / "keys")
    rw.kubectl("create", "secret", "generic", "model-keys", "-n", rw.namespace,
               f"--from-literal=key.pub={signer.public_pem.decode()}")
    rw.kubectl("create", "secret", "generic", "model-store", "-n", rw.namespace,
               f"--from-literal=AWS_ACCESS_KEY_ID={ACCESS}",
               f"--from-literal=AWS_SECRET_ACCESS_KEY={SECRET}")
    policy = with_integrity(policy_manifest(POLICY, canary((50, "1s"))))
    policy["spec"]["integrity"] |= {
        "s3": {"endpoint": s3_server.endpoint, "region": "us-east-1",
               "credentialsSecretRef": {"name": "model-store"}},
        "signature": {"publicKey": {"secretKeyRef": {"name": "model-keys", "key": "key.pub"}}},
    }
    rw.apply(policy)

    def signed(version: int, by: Signer) -> dict[str, Any]:
        key = f"fraud/{version}.0.0/model.onnx"
        body = f"weights of fraud {version}.0.0\n".encode() * 1000
        s3_server.put(key, body)
        by.sign(s3_server.bucket / key, s3_server.bucket / f"{key}.sig")
        manifest = release_manifest(NAME, POLICY, version=version)
        manifest["spec"]["model"] |= {
            "artifactURI": f"s3://models/{key}",
            "artifactDigest": "sha256:" + hashlib.sha256(body).hexdigest(),
            "signatureRef": {"uri": f"s3://models/{key}.sig"},
        }
        return manifest

    rw.set_error_rate(NAME, 1, HEALTHY)
    rw.apply(signed(1, signer))
    status = rw.wait_phase(NAME, "Promoted", stable=1, timeout=90)
    verdict = history(status, 1)["integrity"]
    assert verdict["verdict"] == "Verified"
    assert "signature s3://models/fraud/1.0.0/model.onnx.sig verified" in verdict["message"]
    # r2 is signed by a key the policy does not trust.
    rw.set_error_rate(NAME, 2, HEALTHY)
    with Recorder(rw.sandbox, rw.namespace, kinds=("virtualservices",)) as seen:
        rw.apply(signed(2, key_signer(tmp_path / "other", "other")))
        failed = rw.wait_phase(NAME, "Failed", stable=1, timeout=90)
    assert all(2 not in routes.weights for _, routes in seen.routes(NAME))
    assert "Key mismatch" in history(failed, 2)["integrity"]["message"]
    rw.event(NAME, type="Warning", reason="ArtifactVerificationFailed",
             contains="signature s3://models/fraud/2.0.0/model.onnx.sig does not verify")


def test_a_drill_fails_when_the_targets_artifact_no_longer_verifies(
    rw: Rewind, tmp_path: Path
) -> None:
    """What a real rollback would hit: the target (cold) comes back from zero, its artifact
    is verified again and fails; the drill says so, and users stay on the stable."""
    rw.apply(with_integrity(
        policy_manifest(POLICY, canary((50, "1s")), keep_previous_warm="1s")
    ))
    promote(rw, tmp_path, 1)
    promote(rw, tmp_path, 2)
    rw.wait_replicas(NAME, 1, 0)
    (tmp_path / "1.0.0" / "model.onnx").write_bytes(b"replaced after release\n")
    rw.annotate(NAME, "rewind.dev/drill", "true")
    status = rw.wait_status(
        NAME, "the drill to end",
        lambda s: not s.get("drill") and (s.get("lastDrill") or {}).get("verdict") == "Failed",
        timeout=60,
    )
    last = status["lastDrill"]
    assert last["failure"] == "ArtifactUnverifiable" and last["target"] == 1
    assert "1.0.0/model.onnx has digest" in last["message"]
    assert "a rollback would pass it over" in last["message"]
    assert rw.routes(NAME) == Routes({2: 100})
    rw.wait_replicas(NAME, 1, 0)  # scaled back to where it was
