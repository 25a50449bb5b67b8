"""Artifact digests and signatures (issue 13, item 1): the rewind-manifest-v1 standard,
checked by the verifier against local files and a real HTTP server on loopback, and by
standard tools; model-signing signatures made with its own signing API (a generated key, a
generated CA and signing certificate), verified offline, and refused when signed by another
key, after a file was tampered with, or under another CA."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rewind.adapters.artifacts import (
    MANIFEST_NAME,
    ArtifactVerifier,
    Verdict,
    digest_of,
    manifest,
)
from rewind.api import IntegritySpec, ModelSpec, SignatureRef
from tests.signers import certificate_signer, key_signer


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    """A model of safetensors shards, with its manifest published beside them."""
    root = tmp_path / "model"
    (root / "sub").mkdir(parents=True)
    for name, data in {
        "model-00001-of-00002.safetensors": b"shard one" * 1000,
        "model-00002-of-00002.safetensors": b"shard two" * 1000,
        "config.json": b'{"layers": 2}',
        "sub/tokenizer.json": b"{}",
    }.items():
        (root / name).write_bytes(data)
    sums = {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*") if p.is_file()
    }
    (root / MANIFEST_NAME).write_text(manifest(sums))
    return root


def directory_digest_by_shell(root: Path) -> str:
    """What the documented pipeline of standard tools prints."""
    if shutil.which("find") is None or shutil.which("sha256sum") is None:
        pytest.skip("GNU find / sha256sum missing")
    out = subprocess.run(
        f"find . -type f ! -path ./{MANIFEST_NAME} -printf '%P\\0' | LC_ALL=C sort -z "
        "| xargs -0 sha256sum | sha256sum",
        shell=True, cwd=root, capture_output=True, text=True, check=True,
    ).stdout
    return "sha256:" + out.split()[0]


def test_a_directory_digest_is_what_standard_tools_compute(model_dir: Path) -> None:
    want = directory_digest_by_shell(model_dir)
    assert want == digest_of((model_dir / MANIFEST_NAME).read_text())
    verdict = ArtifactVerifier().verify(str(model_dir), want)
    assert verdict.ok and verdict.files == 4, verdict
    assert ArtifactVerifier().verify(model_dir.as_uri() + "/", want).ok


def test_a_tampered_shard_is_named(model_dir: Path) -> None:
    want = directory_digest_by_shell(model_dir)
    (model_dir / "model-00002-of-00002.safetensors").write_bytes(b"poisoned")
    verdict = ArtifactVerifier().verify(str(model_dir), want)
    assert not verdict.ok
    assert "model-00002-of-00002.safetensors: sha256 " in verdict.message
    assert "model-00001" not in verdict.message


def test_an_added_file_is_named_and_without_a_manifest_the_digests_are_given(
    model_dir: Path,
) -> None:
    want = directory_digest_by_shell(model_dir)
    (model_dir / "extra.bin").write_bytes(b"x")
    verdict = ArtifactVerifier().verify(str(model_dir), want)
    assert not verdict.ok and "extra.bin: not in the release" in verdict.message
    (model_dir / MANIFEST_NAME).unlink()
    verdict = ArtifactVerifier().verify(str(model_dir), want)
    assert not verdict.ok and f"want {want}" in verdict.message
    assert "publish SHA256SUMS" in verdict.message


def test_one_file(tmp_path: Path) -> None:
    f = tmp_path / "model.onnx"
    f.write_bytes(b"weights")
    assert ArtifactVerifier().verify(f.as_uri(), sha(b"weights")).ok
    f.write_bytes(b"weightz")
    verdict = ArtifactVerifier().verify(str(f), sha(b"weights"))
    assert not verdict.ok
    assert verdict.message == f"{f} has digest {sha(b'weightz')}, want {sha(b'weights')}"


def test_what_cannot_be_read_fails_with_why(tmp_path: Path) -> None:
    v = ArtifactVerifier()
    assert "no such file" in v.verify(str(tmp_path / "nope"), sha(b"")).message
    assert "unsupported store 'gs'" in v.verify("gs://b/k", sha(b"")).message
    (tmp_path / "empty").mkdir()
    assert "no files" in v.verify(str(tmp_path / "empty"), sha(b"")).message


@pytest.fixture()
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A real HTTP file server on loopback serving ``tmp_path/www``."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_over_http_a_file_and_a_directory_through_its_manifest(
    http_root: tuple[Path, str], model_dir: Path
) -> None:
    root, base = http_root
    (root / "model.onnx").write_bytes(b"weights")
    v = ArtifactVerifier(timeout=5)
    assert v.verify(f"{base}/model.onnx", sha(b"weights")).ok
    (root / "model.onnx").write_bytes(b"tampered")
    assert "has digest" in v.verify(f"{base}/model.onnx", sha(b"weights")).message
    assert "404" in v.verify(f"{base}/missing.onnx", sha(b"weights")).message
    shutil.copytree(model_dir, root / "llm")
    want = directory_digest_by_shell(model_dir)
    assert v.verify(f"{base}/llm/", want).ok
    (root / "llm" / "config.json").write_bytes(b'{"layers": 3}')
    verdict = v.verify(f"{base}/llm/", want)
    assert not verdict.ok and f"{base}/llm/config.json: sha256 " in verdict.message


# -- signatures (model-signing, offline) ---------------------------------------------------


def test_a_model_signed_with_a_key_verifies_and_another_key_does_not(
    model_dir: Path, tmp_path: Path
) -> None:
    signer = key_signer(tmp_path / "keys")
    signature = tmp_path / "fraud-2.1.0.sig"
    signer.sign(model_dir, signature)
    want = directory_digest_by_shell(model_dir)
    v = ArtifactVerifier()
    verdict = v.verify_signed(str(model_dir), want, str(signature), signer.public_pem,
                              trust_name="Secret keys key key.pub")
    assert verdict.ok and verdict.files == 4, verdict
    assert verdict.message.endswith(
        f"; signature {signature} verified with Secret keys key key.pub")
    other = key_signer(tmp_path / "other", "other")
    verdict = v.verify_signed(str(model_dir), want, str(signature), other.public_pem)
    assert not verdict.ok and verdict.digest == want
    assert verdict.message.startswith(
        f"signature {signature} does not verify {model_dir} with the trust root: Key mismatch")


def test_a_signature_by_another_key_fails_on_the_signature_itself(
    model_dir: Path, tmp_path: Path
) -> None:
    """Signed by a key whose public half is not trusted, with a public key hint forged to be
    the trusted one: the signature check (not the hint) refuses it."""
    trusted = key_signer(tmp_path / "trusted")
    forger = key_signer(tmp_path / "forger", "forger")
    signature = tmp_path / "model.sig"
    forger.sign(model_dir, signature)
    bundle = json.loads(signature.read_text())
    bundle["verificationMaterial"]["publicKey"]["hint"] = hashlib.sha256(
        trusted.public_pem).hexdigest()
    signature.write_text(json.dumps(bundle))
    verdict = ArtifactVerifier().verify_signed(
        str(model_dir), directory_digest_by_shell(model_dir), str(signature),
        trusted.public_pem)
    assert not verdict.ok
    assert verdict.message.startswith(f"signature {signature} does not verify {model_dir}")
    assert "InvalidSignature" in verdict.message


def test_a_file_tampered_after_signing(model_dir: Path, tmp_path: Path) -> None:
    signer = key_signer(tmp_path / "keys")
    signature = tmp_path / "model.sig"
    signer.sign(model_dir, signature)
    want = directory_digest_by_shell(model_dir)
    (model_dir / "sub" / "tokenizer.json").write_bytes(b'{"evil": true}')
    v = ArtifactVerifier()
    # The release's digest already names the file...
    verdict = v.verify_signed(str(model_dir), want, str(signature), signer.public_pem)
    assert not verdict.ok and "sub/tokenizer.json: sha256 " in verdict.message
    # ...and a digest taken after the tampering (a release of the tampered bytes) is refused
    # by the signature, which names the file.
    (model_dir / MANIFEST_NAME).unlink()
    verdict = v.verify_signed(str(model_dir), directory_digest_by_shell(model_dir),
                              str(signature), signer.public_pem)
    assert not verdict.ok
    assert verdict.message.startswith(f"signature {signature} does not verify {model_dir}")
    assert "Hash mismatch for 'sub/tokenizer.json'" in verdict.message
    assert "Missing files" in verdict.message and MANIFEST_NAME in verdict.message


def test_a_certificate_chain(model_dir: Path, tmp_path: Path) -> None:
    signer, ca_pem = certificate_signer(tmp_path / "pki")
    signature = tmp_path / "model.sig"
    signer.sign(model_dir, signature)
    want = directory_digest_by_shell(model_dir)
    v = ArtifactVerifier()
    verdict = v.verify_signed(str(model_dir), want, str(signature), ca_pem,
                              certificate_chain=True)
    assert verdict.ok, verdict
    _, other_ca = certificate_signer(tmp_path / "other-pki", "Someone else's CA")
    verdict = v.verify_signed(str(model_dir), want, str(signature), other_ca,
                              certificate_chain=True)
    assert not verdict.ok
    assert "self-signed certificate in certificate chain" in verdict.message, verdict.message


def test_over_http_the_artifact_and_its_signature_are_read_once(
    http_root: tuple[Path, str], model_dir: Path, tmp_path: Path
) -> None:
    root, base = http_root
    signer = key_signer(tmp_path / "keys")
    shutil.copytree(model_dir, root / "llm")
    signer.sign(root / "llm", root / "llm.sig")
    (root / "model.onnx").write_bytes(b"weights")
    signer.sign(root / "model.onnx", root / "model.onnx.sig")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    v = ArtifactVerifier(timeout=5, scratch_dir=scratch)
    want = directory_digest_by_shell(model_dir)
    verdict = v.verify_signed(f"{base}/llm/", want, f"{base}/llm.sig", signer.public_pem)
    assert verdict.ok and verdict.files == 4, verdict
    assert list(scratch.iterdir()) == []  # the copy is gone
    verdict = v.verify_signed(f"{base}/model.onnx", sha(b"weights"), f"{base}/model.onnx.sig",
                              signer.public_pem)
    assert verdict.ok, verdict
    verdict = v.verify_signed(f"{base}/model.onnx", sha(b"weights"), f"{base}/llm.sig",
                              signer.public_pem)
    assert not verdict.ok and "does not verify" in verdict.message
    verdict = v.verify_signed(f"{base}/model.onnx", sha(b"weights"), f"{base}/nope.sig",
                              signer.public_pem)
    assert not verdict.ok
    assert verdict.message.startswith(f"could not read the signature: {base}/nope.sig: ")
    assert "404" in verdict.message
    assert list(scratch.iterdir()) == []


def policy(**signature: Any) -> IntegritySpec:
    return IntegritySpec.model_validate({"timeout": "30s", "signature": signature})


def test_verify_model_needs_a_signature_when_the_policy_requires_one(tmp_path: Path) -> None:
    f = tmp_path / "model.onnx"
    f.write_bytes(b"weights")
    model = ModelSpec.model_validate({"name": "fraud", "version": "2.1.0",
                                      "artifactURI": f.as_uri(),
                                      "artifactDigest": sha(b"weights")})
    trust = {"publicKey": {"secretKeyRef": {"name": "model-keys", "key": "key.pub"}}}
    v = ArtifactVerifier()
    verdict = v.verify_model("ml", model, policy(**trust), policy="strict")
    assert verdict == Verdict(False, "model.signatureRef is required by policy strict "
                                     "(integrity.signature.required)")
    verdict = v.verify_model("ml", model, policy(required=False, **trust))
    assert verdict.ok and verdict.message.endswith("; no signature (not required)")
    signed = model.model_copy(update={"signature_ref": SignatureRef(uri=f.as_uri() + ".sig")})
    verdict = v.verify_model("ml", signed, policy(**trust))
    assert verdict == Verdict(False, "Secret ml/model-keys: no Kubernetes client to read it with")


def test_the_budget_bounds_the_reading(tmp_path: Path) -> None:
    big = tmp_path / "model.bin"
    big.write_bytes(b"\0" * (3 << 20))
    verdict = ArtifactVerifier().verify(str(big), sha(b""), budget=1e-9)
    assert verdict.message == (f"could not read the artifact: {big}: timed out "
                               "(integrity.timeout 1e-09s)")
    assert ArtifactVerifier().verify(str(big), sha(b"\0" * (3 << 20)), budget=60).ok
