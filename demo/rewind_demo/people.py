"""The demo's people: real identities on the sandbox API server, and what each may do.

Each person is a client certificate signed by the sandbox's own CA (``.sandbox/pki``), so
the API server authenticates them as it would any user: the admission policies of
``charts/rewind/files/human-actions.yaml`` and ``human-actions-stamp.yaml`` stamp their names
on the actions they take, and RBAC decides what they may do. Nothing is impersonated.

* ``alice`` and ``bob``: on call, bound to the chart's ``rewind-approver`` ClusterRole in the
  demo's namespace (they may approve and reject rollbacks);
* ``dana``: on the ML team, may edit ModelReleases (``get``, ``patch``) but holds no
  approval verb, so Rewind's admission policy refuses her approval although RBAC alone
  would let the patch through.

One kubeconfig holds a context per person (``--context alice``), next to the demo's state.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class Person:
    name: str
    group: str
    role: str  # what the demo says about them


APPROVERS: tuple[Person, ...] = (
    Person("alice", "rewind:oncall", "on call, rewind-approver"),
    Person("bob", "rewind:oncall", "on call, rewind-approver"),
)
EDITOR = Person("dana", "rewind:ml-team", "ML team, may edit releases, not approve")
PEOPLE: tuple[Person, ...] = (*APPROVERS, EDITOR)
#: The chart's ClusterRole for people who decide on a pending rollback.
APPROVER_ROLE = "rewind-approver"
EDITOR_ROLE = "rewind-demo-release-editor"


class IdentityError(RuntimeError):
    """A certificate could not be made (openssl missing or failing, no sandbox CA)."""


def _openssl(cwd: Path, *args: str) -> None:
    try:
        done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True,
                              timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise IdentityError(f"openssl {args[0]}: {exc}") from exc
    if done.returncode != 0:
        raise IdentityError(f"openssl {args[0]} failed: {done.stderr.strip()}")


def mint_certificate(person: Person, ca_dir: Path, out_dir: Path) -> tuple[Path, Path]:
    """A client certificate for ``person`` (CN = name, O = group) signed by
    ``ca_dir/ca.{crt,key}``; returns (certificate, key) under ``out_dir``. A random serial,
    so the CA's own serial file is never written."""
    ca_crt, ca_key = ca_dir / "ca.crt", ca_dir / "ca.key"
    if not (ca_crt.exists() and ca_key.exists()):
        raise IdentityError(f"no sandbox CA in {ca_dir} (is the sandbox up?)")
    out_dir.mkdir(parents=True, exist_ok=True)
    ext = out_dir / "client.ext"
    ext.write_text("extendedKeyUsage=clientAuth\n")
    key, csr, crt = (out_dir / f"{person.name}.{s}" for s in ("key", "csr", "crt"))
    _openssl(out_dir, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
             str(csr), "-subj", f"/O={person.group}/CN={person.name}")
    _openssl(out_dir, "x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey",
             str(ca_key), "-set_serial", str(secrets.randbits(63)), "-out", str(crt),
             "-days", "30", "-extfile", str(ext))
    csr.unlink(missing_ok=True)
    return crt, key


def people_kubeconfig(admin_kubeconfig: Mapping[str, Any],
                      credentials: Mapping[str, tuple[Path, Path]]) -> dict[str, Any]:
    """A kubeconfig with the admin's cluster (server, CA) and one context per person
    (named after them, the first one current). ``credentials``: name -> (cert, key)."""
    clusters = admin_kubeconfig.get("clusters") or []
    if not clusters:
        raise IdentityError("the admin kubeconfig names no cluster")
    cluster = clusters[0]
    names = list(credentials)
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": n, "user": {"client-certificate": str(crt),
                                       "client-key": str(key)}}
                  for n, (crt, key) in credentials.items()],
        "contexts": [{"name": n, "context": {"cluster": cluster["name"], "user": n}}
                     for n in names],
        "current-context": names[0] if names else "",
    }


def write_people_kubeconfig(admin_kubeconfig: Path, ca_dir: Path, out_dir: Path) -> Path:
    """Mint every person's certificate and write ``out_dir/kubeconfig``; returns its path."""
    admin = yaml.safe_load(admin_kubeconfig.read_text()) or {}
    creds = {p.name: mint_certificate(p, ca_dir, out_dir) for p in PEOPLE}
    path = out_dir / "kubeconfig"
    path.write_text(yaml.safe_dump(people_kubeconfig(admin, creds), sort_keys=False))
    path.chmod(0o600)
    return path


def rbac_manifests(namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
    """What each person may do in ``namespace``: everyone the built-in ``view``; the
    approvers the chart's rewind-approver ClusterRole; the editor a Role to patch
    ModelReleases."""
    meta = {"namespace": namespace, "labels": dict(labels)}
    rbac = "rbac.authorization.k8s.io"
    return [
        # Everyone reads what runs (Deployments, Events: pods ready in `kubectl rewind get`).
        {"apiVersion": f"{rbac}/v1", "kind": "RoleBinding",
         "metadata": {"name": "rewind-demo-view", **meta},
         "roleRef": {"apiGroup": rbac, "kind": "ClusterRole", "name": "view"},
         "subjects": [{"apiGroup": rbac, "kind": "User", "name": p.name} for p in PEOPLE]},
        {"apiVersion": f"{rbac}/v1", "kind": "RoleBinding",
         "metadata": {"name": "rewind-demo-approvers", **meta},
         "roleRef": {"apiGroup": rbac, "kind": "ClusterRole", "name": APPROVER_ROLE},
         "subjects": [{"apiGroup": rbac, "kind": "User", "name": p.name} for p in APPROVERS]},
        {"apiVersion": f"{rbac}/v1", "kind": "Role",
         "metadata": {"name": EDITOR_ROLE, **meta},
         "rules": [{"apiGroups": ["rewind.dev"], "resources": ["modelreleases"],
                    "verbs": ["get", "list", "watch", "patch"]},
                   {"apiGroups": ["rewind.dev"], "resources": ["rolloutpolicies"],
                    "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": f"{rbac}/v1", "kind": "RoleBinding",
         "metadata": {"name": EDITOR_ROLE, **meta},
         "roleRef": {"apiGroup": rbac, "kind": "Role", "name": EDITOR_ROLE},
         "subjects": [{"apiGroup": rbac, "kind": "User", "name": EDITOR.name}]},
    ]
