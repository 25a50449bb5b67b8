"""Artifact digests and signatures against real servers (issue 13, item 1): Versity S3 Gateway
started by `hack/s3-server` on loopback (it checks every request's SigV4 signature, made by
boto3), a real HTTP file server (`python -m http.server` in its own process), and the
sandbox's API server holding the S3 credentials (a Secret) and the signatures' trust roots
(a Secret and a ConfigMap). A tampered object and a tampered shard are named; wrong or missing
credentials say why; a signature by another key, or under another CA, is refused."""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rewind.adapters.artifacts import MANIFEST_NAME, ArtifactVerifier, S3Settings, manifest
from rewind.api import IntegritySpec, ModelSpec
from tests.conftest import Kubectl, wait_for
from tests.sandbox.s3_helpers import ACCESS, SECRET, S3Server, free_port
from tests.signers import certificate_signer, key_signer

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

SHARDS = {"model-00001-of-00002.safetensors": b"one" * 4096,
          "model-00002-of-00002.safetensors": b"two" * 4096,
          "config.json": b"{}"}


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_model(root: Path) -> str:
    """The shards and their SHA256SUMS under ``root``; the release's digest."""
    text = manifest({k: hashlib.sha256(v).hexdigest() for k, v in SHARDS.items()})
    for key, body in {**SHARDS, MANIFEST_NAME: text.encode()}.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(body)
    return sha(text.encode())


def model(uri: str, digest: str, signature: str | None = None) -> ModelSpec:
    spec: dict[str, Any] = {"name": "llm", "version": "7b", "artifactURI": uri,
                            "artifactDigest": digest}
    if signature is not None:
        spec["signatureRef"] = {"uri": signature}
    return ModelSpec.model_validate(spec)


def integrity(s3: S3Server | None = None, secret: str | None = None,
              **signature: Any) -> IntegritySpec:
    spec: dict[str, Any] = {"timeout": "60s"}
    if s3 is not None:
        spec["s3"] = {"endpoint": s3.endpoint, "region": "us-east-1"}
        if secret is not None:
            spec["s3"]["credentialsSecretRef"] = {"name": secret}
    if signature:
        spec["signature"] = signature
    return IntegritySpec.model_validate(spec)


def secret(kubectl: Kubectl, namespace: str, name: str, **data: str) -> None:
    kubectl("create", "secret", "generic", name, "-n", namespace,
            *(f"--from-literal={k}={v}" for k, v in data.items()))


@pytest.fixture()
def no_aws_identity(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """boto3's default chain finds nothing: no AWS variables, files or instance metadata."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_PROFILE", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture()
def http_server(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A real HTTP file server (its own process) on loopback serving ``tmp_path/www``."""
    root, port = tmp_path / "www", free_port()
    root.mkdir()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(root),
         str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        def up() -> bool:
            assert server.poll() is None, "http.server exited"
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_for("the HTTP file server to listen", up, timeout=30)
        yield root, f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_an_object_and_a_tampered_object(s3_server: S3Server) -> None:
    s3_server.put("fraud/2.1.0/model.onnx", b"weights")
    uri = "s3://models/fraud/2.1.0/model.onnx"
    v = ArtifactVerifier(timeout=10)
    assert v.verify(uri, sha(b"weights"), s3_server.settings).ok
    s3_server.put("fraud/2.1.0/model.onnx", b"weights+backdoor")
    verdict = v.verify(uri, sha(b"weights"), s3_server.settings)
    assert not verdict.ok
    assert verdict.message == f"{uri} has digest {sha(b'weights+backdoor')}, want {sha(b'weights')}"


def test_a_prefix_of_shards_and_a_tampered_shard(s3_server: S3Server) -> None:
    want = write_model(s3_server.bucket / "llm" / "7b")
    v = ArtifactVerifier(timeout=10)
    verdict = v.verify("s3://models/llm/7b/", want, s3_server.settings)
    assert verdict.ok and verdict.files == 3, verdict
    s3_server.put("llm/7b/model-00002-of-00002.safetensors", b"poisoned")
    verdict = v.verify("s3://models/llm/7b/", want, s3_server.settings)
    assert not verdict.ok
    assert "s3://models/llm/7b/model-00002-of-00002.safetensors: sha256 " in verdict.message
    assert "model-00001" not in verdict.message


def test_wrong_credentials_say_why(s3_server: S3Server) -> None:
    s3_server.put("m.onnx", b"w")
    wrong = S3Settings(endpoint_url=s3_server.endpoint, region="us-east-1",
                       access_key_id=ACCESS, secret_access_key="not-the-secret")
    verdict = ArtifactVerifier(timeout=10).verify("s3://models/m.onnx", sha(b"w"), wrong)
    assert verdict.message.startswith(
        "could not read the artifact: s3://models/m.onnx: HTTP 403 SignatureDoesNotMatch")
    assert ArtifactVerifier(timeout=10).verify("s3://models/m.onnx", sha(b"w"),
                                               s3_server.settings).ok


def test_credentials_from_a_secret_and_what_a_missing_wrong_or_absent_one_says(
    s3_server: S3Server, kubectl: Kubectl, namespace: str, api_client: Any,
    no_aws_identity: None, monkeypatch: pytest.MonkeyPatch,
) -> None:
    s3_server.put("fraud/model.onnx", b"weights")
    uri, want = "s3://models/fraud/model.onnx", sha(b"weights")
    v = ArtifactVerifier(api_client, timeout=10)
    secret(kubectl, namespace, "s3-creds", AWS_ACCESS_KEY_ID=ACCESS,
           AWS_SECRET_ACCESS_KEY=SECRET)
    verdict = v.verify_model(namespace, model(uri, want), integrity(s3_server, "s3-creds"))
    assert verdict.ok and verdict.digest == want, verdict
    # The object replaced in the store after its release.
    s3_server.put("fraud/model.onnx", b"weights+backdoor")
    verdict = v.verify_model(namespace, model(uri, want), integrity(s3_server, "s3-creds"))
    assert verdict.message == f"{uri} has digest {sha(b'weights+backdoor')}, want {want}"
    s3_server.put("fraud/model.onnx", b"weights")

    verdict = v.verify_model(namespace, model(uri, want), integrity(s3_server, "nope"))
    assert verdict.message == f"Secret {namespace}/nope: not found"
    secret(kubectl, namespace, "half", AWS_ACCESS_KEY_ID=ACCESS)
    verdict = v.verify_model(namespace, model(uri, want), integrity(s3_server, "half"))
    assert verdict.message == (f"Secret {namespace}/half (integrity.s3.credentialsSecretRef) "
                               "has no key AWS_SECRET_ACCESS_KEY")
    secret(kubectl, namespace, "stale", AWS_ACCESS_KEY_ID=ACCESS,
           AWS_SECRET_ACCESS_KEY="rotated-away")
    verdict = v.verify_model(namespace, model(uri, want), integrity(s3_server, "stale"))
    assert not verdict.ok
    assert f"{uri}: HTTP 403 SignatureDoesNotMatch" in verdict.message

    # No Secret and no identity anywhere: anonymous requests, which a private bucket refuses.
    verdict = v.verify_model(namespace, model(uri, want), integrity(s3_server))
    assert verdict.message.startswith(f"could not read the artifact: {uri}: HTTP 403 "
                                      "AccessDenied"), verdict.message
    # The operator's own identity through boto3's default chain (here its environment; in a
    # cluster, workload identity).
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    assert v.verify_model(namespace, model(uri, want), integrity(s3_server)).ok


def test_signatures_from_s3_with_trust_roots_from_a_secret_and_a_configmap(
    s3_server: S3Server, kubectl: Kubectl, namespace: str, api_client: Any, tmp_path: Path,
) -> None:
    want = write_model(s3_server.bucket / "llm" / "7b")
    signer = key_signer(tmp_path / "keys")
    signer.sign(s3_server.bucket / "llm" / "7b", s3_server.bucket / "llm" / "7b.sig")
    kubectl("create", "secret", "generic", "model-keys", "-n", namespace,
            f"--from-literal=key.pub={signer.public_pem.decode()}")
    secret(kubectl, namespace, "s3-creds", AWS_ACCESS_KEY_ID=ACCESS,
           AWS_SECRET_ACCESS_KEY=SECRET)
    by_key = integrity(s3_server, "s3-creds",
                       publicKey={"secretKeyRef": {"name": "model-keys", "key": "key.pub"}})
    signed = model("s3://models/llm/7b/", want, "s3://models/llm/7b.sig")
    v = ArtifactVerifier(api_client, timeout=10)
    verdict = v.verify_model(namespace, signed, by_key)
    assert verdict.ok and verdict.files == 3, verdict
    assert verdict.message.endswith(
        "; signature s3://models/llm/7b.sig verified with Secret model-keys key key.pub")

    # A bad signature: made by a key the policy does not trust.
    key_signer(tmp_path / "other", "other").sign(s3_server.bucket / "llm" / "7b",
                                                 s3_server.bucket / "llm" / "7b.sig")
    verdict = v.verify_model(namespace, signed, by_key)
    assert verdict.message.startswith(
        "signature s3://models/llm/7b.sig does not verify s3://models/llm/7b/ with Secret "
        "model-keys key key.pub: Key mismatch"), verdict.message

    # A certificate chain from a ConfigMap; a signature under another CA is refused.
    pki, ca_pem = certificate_signer(tmp_path / "pki")
    (tmp_path / "ca.crt").write_bytes(ca_pem)
    kubectl("create", "configmap", "model-ca", "-n", namespace,
            f"--from-file=ca.crt={tmp_path / 'ca.crt'}")
    by_chain = integrity(s3_server, "s3-creds",
                         certificateChain={"configMapKeyRef": {"name": "model-ca",
                                                               "key": "ca.crt"}})
    pki.sign(s3_server.bucket / "llm" / "7b", s3_server.bucket / "llm" / "7b.sig")
    verdict = v.verify_model(namespace, signed, by_chain)
    assert verdict.ok, verdict
    rogue, _ = certificate_signer(tmp_path / "rogue", "Rogue CA")
    rogue.sign(s3_server.bucket / "llm" / "7b", s3_server.bucket / "llm" / "7b.sig")
    verdict = v.verify_model(namespace, signed, by_chain)
    assert not verdict.ok and "self-signed certificate in certificate chain" in verdict.message

    # A tampered shard: named by the digest check, before any signature is read.
    pki.sign(s3_server.bucket / "llm" / "7b", s3_server.bucket / "llm" / "7b.sig")
    s3_server.put("llm/7b/config.json", b'{"backdoor": 1}')
    verdict = v.verify_model(namespace, signed, by_chain)
    assert verdict.message.startswith("s3://models/llm/7b/config.json: sha256 "), verdict
    # A missing trust root names the ConfigMap and key.
    kubectl("delete", "configmap", "model-ca", "-n", namespace)
    verdict = v.verify_model(namespace, signed, by_chain)
    assert verdict.message == f"ConfigMap {namespace}/model-ca: not found"


def test_signatures_over_a_real_http_file_server(
    http_server: tuple[Path, str], kubectl: Kubectl, namespace: str, api_client: Any,
    tmp_path: Path,
) -> None:
    root, base = http_server
    want = write_model(root / "llm")
    signer = key_signer(tmp_path / "keys")
    signer.sign(root / "llm", root / "llm.sig")
    (tmp_path / "key.pub").write_bytes(signer.public_pem)
    kubectl("create", "configmap", "model-keys", "-n", namespace,
            f"--from-file=key.pub={tmp_path / 'key.pub'}")
    policy = integrity(publicKey={"configMapKeyRef": {"name": "model-keys", "key": "key.pub"}})
    v = ArtifactVerifier(api_client, timeout=10)
    signed = model(f"{base}/llm/", want, f"{base}/llm.sig")
    verdict = v.verify_model(namespace, signed, policy)
    assert verdict.ok and verdict.files == 3, verdict
    assert verdict.message.endswith(
        f"; signature {base}/llm.sig verified with ConfigMap model-keys key key.pub")

    key_signer(tmp_path / "other", "other").sign(root / "llm", root / "llm.sig")
    verdict = v.verify_model(namespace, signed, policy)
    assert verdict.message.startswith(f"signature {base}/llm.sig does not verify {base}/llm/ "
                                      "with ConfigMap model-keys key key.pub: Key mismatch")

    signer.sign(root / "llm", root / "llm.sig")
    assert v.verify_model(namespace, signed, policy).ok
    (root / "llm" / "model-00001-of-00002.safetensors").write_bytes(b"poisoned")
    verdict = v.verify_model(namespace, signed, policy)
    assert verdict.message.startswith(
        f"{base}/llm/model-00001-of-00002.safetensors: sha256 "), verdict
    shutil.rmtree(root / "llm")
    verdict = v.verify_model(namespace, signed, policy)
    assert verdict.message.startswith(
        f"could not read the artifact: {base}/llm/{MANIFEST_NAME}: HTTP Error 404")
