"""Artifact digests against a real S3-compatible server (issue 13, item 1): Versity S3
Gateway started by `hack/s3-server` on loopback, its posix backend serving the files the
test writes (a bucket is a directory, an object a file); the verifier signs its requests
(SigV4), which the server checks. A tampered object and a tampered shard are named; wrong
credentials say why."""

from __future__ import annotations

import hashlib
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from rewind.adapters.artifacts import MANIFEST_NAME, ArtifactVerifier, S3Settings, manifest
from tests.conftest import wait_for

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
ACCESS, SECRET = "rewind-test", "rewind-test-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture()
def s3(tmp_path: Path) -> Iterator[tuple[S3Settings, Path]]:
    """The server's settings and the directory of its bucket ``models``."""
    subprocess.run([str(ROOT / "hack" / "s3-server"), "bin"], check=True, timeout=1800,
                   capture_output=True)
    root, port = tmp_path / "s3", free_port()
    (root / "models").mkdir(parents=True)
    log = (tmp_path / "s3.log").open("w")
    server = subprocess.Popen(
        [str(ROOT / "hack" / "s3-server"), "run", str(root), str(port), ACCESS, SECRET],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        def up() -> bool:
            assert server.poll() is None, (tmp_path / "s3.log").read_text()
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_for("the S3 server to listen", up, timeout=30)
        yield S3Settings(endpoint_url=f"http://127.0.0.1:{port}", region="us-east-1",
                         access_key_id=ACCESS, secret_access_key=SECRET), root / "models"
    finally:
        server.terminate()
        server.wait(timeout=10)
        log.close()


def put(bucket: Path, key: str, body: bytes) -> None:
    path = bucket / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_an_object_and_a_tampered_object(s3: tuple[S3Settings, Path]) -> None:
    settings, bucket = s3
    put(bucket, "fraud/2.1.0/model.onnx", b"weights")
    uri = "s3://models/fraud/2.1.0/model.onnx"
    v = ArtifactVerifier(timeout=10)
    assert v.verify(uri, sha(b"weights"), settings).ok
    put(bucket, "fraud/2.1.0/model.onnx", b"weights+backdoor")
    verdict = v.verify(uri, sha(b"weights"), settings)
    assert not verdict.ok
    assert verdict.message == f"{uri} has digest {sha(b'weights+backdoor')}, want {sha(b'weights')}"


def test_a_prefix_of_shards_and_a_tampered_shard(s3: tuple[S3Settings, Path]) -> None:
    settings, bucket = s3
    shards = {"model-00001-of-00002.safetensors": b"one" * 4096,
              "model-00002-of-00002.safetensors": b"two" * 4096,
              "config.json": b"{}"}
    sums = {k: hashlib.sha256(v).hexdigest() for k, v in shards.items()}
    text = manifest(sums)
    for key, body in {**shards, MANIFEST_NAME: text.encode()}.items():
        put(bucket, f"llm/7b/{key}", body)
    want = sha(text.encode())
    v = ArtifactVerifier(timeout=10)
    verdict = v.verify("s3://models/llm/7b/", want, settings)
    assert verdict.ok and verdict.files == 3, verdict
    put(bucket, "llm/7b/model-00002-of-00002.safetensors", b"poisoned")
    verdict = v.verify("s3://models/llm/7b/", want, settings)
    assert not verdict.ok
    assert "s3://models/llm/7b/model-00002-of-00002.safetensors: sha256 " in verdict.message
    assert "model-00001" not in verdict.message


def test_wrong_credentials_say_why(s3: tuple[S3Settings, Path]) -> None:
    settings, bucket = s3
    put(bucket, "m.onnx", b"w")
    wrong = S3Settings(endpoint_url=settings.endpoint_url, region="us-east-1",
                       access_key_id=ACCESS, secret_access_key="not-the-secret")
    verdict = ArtifactVerifier(timeout=10).verify("s3://models/m.onnx", sha(b"w"), wrong)
    assert verdict.message.startswith("could not read the artifact: s3://models/m.onnx: HTTP 403")
    assert ArtifactVerifier(timeout=10).verify("s3://models/m.onnx", sha(b"w"), settings).ok
