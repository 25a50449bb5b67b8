"""A real S3-compatible server for tests: Versity S3 Gateway started by `hack/s3-server` on
loopback, its posix backend serving what a test writes (a bucket is a directory, an object a
file), with one access key it checks every request's signature against."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rewind.adapters.artifacts import S3Settings
from tests.conftest import ROOT, wait_for

ACCESS, SECRET = "rewind-test", "rewind-test-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class S3Server:
    """``settings``: its endpoint, region and access key; ``bucket``: the directory of its
    bucket ``models``."""

    settings: S3Settings
    bucket: Path

    @property
    def endpoint(self) -> str:
        return self.settings.endpoint_url or ""

    def put(self, key: str, body: bytes) -> None:
        """Writes (or overwrites: tampers with) the object ``s3://models/<key>``."""
        path = self.bucket / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)


@pytest.fixture()
def s3_server(tmp_path: Path) -> Iterator[S3Server]:
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
        yield S3Server(S3Settings(endpoint_url=f"http://127.0.0.1:{port}", region="us-east-1",
                                  access_key_id=ACCESS, secret_access_key=SECRET),
                       root / "models")
    finally:
        server.terminate()
        server.wait(timeout=10)
        log.close()
