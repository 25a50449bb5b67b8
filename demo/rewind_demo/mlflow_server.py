"""A real MLflow tracking server on loopback, for the demo's poisoned-data act and the
registry tests: started with ``hack/mlflow-server`` (which installs MLflow on first use, in
a cache outside the clone), its store (SQLite) and log in one directory, spoken to over its
REST API (``/api/2.0/mlflow``). stop() then start() keeps the store.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Any

from rewind_demo._http import request


class MLflowError(RuntimeError):
    """MLflow answered a REST call with an error status; ``text`` is its answer."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"MLflow answered {status}: {text[:500]}")
        self.status = status
        self.text = text


class MLflowServer:
    """One ``mlflow server`` on a free loopback port; ``directory`` must exist."""

    def __init__(self, root: Path, directory: Path) -> None:
        self.root = root
        self.directory = directory
        self.log = directory / "mlflow.log"
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port: int = sock.getsockname()[1]
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 180.0) -> None:
        """Start it and wait until /health answers (its first start creates the SQLite
        schema, and the first use installs MLflow: give it minutes). Raises RuntimeError,
        with the end of its log, when it exits or does not answer within ``timeout`` s."""
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [str(self.root / "hack" / "mlflow-server"), "run", str(self.directory),
                 str(self.port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # its uvicorn workers are stopped with it
            )
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {self._log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server not up after {timeout:.0f}s: "
                                   f"{self._log_tail()}")
            time.sleep(0.5)

    def healthy(self) -> bool:
        try:
            return request("GET", f"{self.uri}/health", timeout=2)[0] == 200
        except OSError:
            return False

    def listening(self) -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server and its workers (its own process group, signalled whole), and
        wait until its port is closed, so a start() after it finds the port free."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout)
        self.process = None
        deadline = time.monotonic() + timeout
        while self.listening() and time.monotonic() < deadline:
            time.sleep(0.2)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One REST call (``path`` under /api/2.0/mlflow/); GET sends ``body`` as the query.
        Raises MLflowError on an error status, OSError when it does not answer."""
        url = f"{self.uri}/api/2.0/mlflow/{path}"
        data = None
        if method == "GET" and body:
            url += "?" + urllib.parse.urlencode(body)
        elif body is not None:
            data = json.dumps(body).encode()
        status, answer = request(method, url, data, timeout=10)
        if status >= 400:
            raise MLflowError(status, answer.decode(errors="replace"))
        return json.loads(answer or b"{}")

    def register(self, model: str, sources: list[str]) -> None:
        """Create the registered model and one version per source (versions 1, 2, ...).
        MLflow refuses a local path as a source; the source is only recorded."""
        self.call("POST", "registered-models/create", {"name": model})
        for source in sources:
            self.call("POST", "model-versions/create", {"name": model, "source": source})

    def alias(self, model: str, alias: str = "production") -> str:
        """The version ``alias`` names ("" when unset)."""
        try:
            got = self.call("GET", "registered-models/alias", {"name": model, "alias": alias})
        except MLflowError as err:
            if "not found" in err.text:
                return ""
            raise
        return str(got["model_version"]["version"])

    def tags(self, model: str, version: str) -> dict[str, str]:
        got = self.call("GET", "model-versions/get", {"name": model, "version": version})
        return {t["key"]: t["value"] for t in got["model_version"].get("tags") or []}

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return f"no log at {self.log}"
