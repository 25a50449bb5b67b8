"""A throwaway API server of another Kubernetes version, for the version tests.

etcd and kube-apiserver on free loopback ports in a temporary directory, with the sandbox's
PKI (its CA, serving certificate and service-account keys), so the sandbox's identities work
against it: ``rewind-admin`` (system:masters) and ``dev-user`` (rewind:developers). No
controller-manager, scheduler or nodes: enough to install the chart and run its admission
policies, which is all the version tests need. Everything is stopped on exit.

    with started_apiserver(sandbox, "v1.30.14", tmp_path) as api:
        api.kubectl("get", "namespaces")

kube-apiserver comes from ``hack/build-tools.sh --apiserver VERSION`` (cached under its own
key; the first call on a cold machine builds it), or is the sandbox's own when VERSION is the
sandbox's; etcd is always the sandbox's.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, Sandbox

HACK = ROOT / "hack"


def _env_file(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            out[key] = value
    return out


#: The sandbox's Kubernetes version (hack/versions.env).
SANDBOX_VERSION = _env_file(HACK / "versions.env")["KUBERNETES_VERSION"]
#: The other versions the chart is proven on (hack/kube-versions.env).
OTHER_VERSIONS = _env_file(HACK / "kube-versions.env")
OLDEST_VERSION = OTHER_VERSIONS["OLDEST_KUBERNETES_VERSION"]
MIDDLE_VERSION = OTHER_VERSIONS["MIDDLE_KUBERNETES_VERSION"]


def apiserver_binary(sandbox: Sandbox, version: str) -> Path:
    """kube-apiserver at ``version``: the sandbox's, or built (once) by hack/build-tools.sh."""
    if version == SANDBOX_VERSION:
        return sandbox.bin_dir / "kube-apiserver"
    out = subprocess.run([str(HACK / "build-tools.sh"), "--apiserver", version],
                         stdout=subprocess.PIPE, text=True, check=False)
    if out.returncode != 0:
        pytest.fail(f"hack/build-tools.sh --apiserver {version} failed (its messages are above)")
    return Path(out.stdout.strip().splitlines()[-1]) / "kube-apiserver"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class ApiServer:
    """A running throwaway API server and how to reach it as the sandbox's two users."""

    version: str
    url: str
    kubeconfig: Path  # rewind-admin, system:masters
    kubeconfig_dev: Path  # dev-user, rewind:developers (no rights until bound)
    kubectl_path: str
    log: Path

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, dev: bool = False
    ) -> subprocess.CompletedProcess[str]:
        config = self.kubeconfig_dev if dev else self.kubeconfig
        result = subprocess.run([self.kubectl_path, f"--kubeconfig={config}", *args],
                                input=input, capture_output=True, text=True, timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} on {self.version} exited {result.returncode}:\n"
                f"{result.stderr}"
            )
        return result


class _Process:
    def __init__(self, name: str, argv: Sequence[str], workdir: Path) -> None:
        self.name = name
        self.log = workdir / f"{name}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=workdir,
                                         start_new_session=True)

    def tail(self, lines: int = 20) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, check: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.name} exited during start-up:\n{self.tail()}")
            with contextlib.suppress(OSError, ValueError):
                if check():
                    return
            time.sleep(0.5)
        pytest.fail(f"{self.name} not ready after {timeout:.0f}s:\n{self.tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def _kubeconfig(path: Path, pki: Path, server: str, user: str, cert: str) -> Path:
    path.write_text(json.dumps({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "other", "cluster": {
            "server": server, "certificate-authority": str(pki / "ca.crt")}}],
        "users": [{"name": user, "user": {
            "client-certificate": str(pki / f"{cert}.crt"),
            "client-key": str(pki / f"{cert}.key")}}],
        "contexts": [{"name": user, "context": {"cluster": "other", "user": user}}],
        "current-context": user,
    }, indent=2))
    return path


@contextlib.contextmanager
def started_apiserver(
    sandbox: Sandbox, version: str, workdir: Path, extra_args: Sequence[str] = ()
) -> Iterator[ApiServer]:
    """etcd + kube-apiserver ``version`` until the block ends (``extra_args`` go to the API
    server, e.g. a feature gate)."""
    apiserver = apiserver_binary(sandbox, version)
    pki = Path(sandbox.env["SANDBOX_DIR"]) / "pki"
    workdir.mkdir(parents=True, exist_ok=True)
    etcd_port, peer_port, api_port = _free_port(), _free_port(), _free_port()
    started: list[_Process] = []
    try:
        etcd = _Process("etcd", [
            str(sandbox.bin_dir / "etcd"), "--name=other", f"--data-dir={workdir / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
            f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-cluster=other=http://127.0.0.1:{peer_port}",
            "--listen-metrics-urls=", "--unsafe-no-fsync=true", "--log-level=warn",
        ], workdir)
        started.append(etcd)

        def etcd_healthy() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{etcd_port}/health", timeout=2) as r:
                return b'"health":"true"' in r.read()

        etcd.wait_ready(etcd_healthy, 60)
        # The sandbox's flags (hack/sandbox), which every supported version accepts.
        server = _Process("kube-apiserver", [
            str(apiserver), f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={api_port}", f"--cert-dir={workdir / 'certs'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}", "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-cluster-ip-range=10.96.0.0/16", "--profiling=false", "--v=0",
            *extra_args,
        ], workdir)
        started.append(server)
        tls = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        tls.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        url = f"https://127.0.0.1:{api_port}"

        def ready() -> bool:
            with urllib.request.urlopen(f"{url}/readyz", timeout=5, context=tls) as r:
                return bool(r.status == 200)

        server.wait_ready(ready, 180)
        yield ApiServer(
            version=version,
            url=url,
            kubeconfig=_kubeconfig(workdir / "kubeconfig", pki, url, "rewind-admin", "admin"),
            kubeconfig_dev=_kubeconfig(workdir / "kubeconfig-dev", pki, url, "dev-user", "dev"),
            kubectl_path=sandbox.kubectl_path,
            log=server.log,
        )
    finally:
        for process in reversed(started):
            process.stop()
