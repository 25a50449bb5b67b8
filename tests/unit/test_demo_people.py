"""The demo's people: certificates the sandbox CA signs, one context each, and RBAC that
grants the approval verbs to the approvers only."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from rewind_demo import people
from tests.conftest import ROOT

HUMAN_ACTIONS = ROOT / "charts" / "rewind" / "files" / "human-actions.yaml"


def _ca(directory: Path) -> Path:
    directory.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=test-ca"],
                   cwd=directory, check=True, capture_output=True)
    return directory


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_each_person_gets_a_client_certificate_signed_by_the_ca_and_a_context(
    tmp_path: Path,
) -> None:
    ca = _ca(tmp_path / "pki")
    (ca / "ca.srl").write_text("01\n")
    admin = tmp_path / "admin.kubeconfig"
    admin.write_text(yaml.safe_dump({
        "clusters": [{"name": "sandbox", "cluster": {"server": "https://127.0.0.1:6443",
                                                     "certificate-authority": str(ca / "ca.crt")}}],
    }))
    path = people.write_people_kubeconfig(admin, ca, tmp_path / "people")

    config = yaml.safe_load(path.read_text())
    assert [c["name"] for c in config["contexts"]] == ["alice", "bob", "dana"]
    assert config["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:6443"
    assert path.stat().st_mode & 0o077 == 0  # private keys are referenced: owner only
    users = {u["name"]: u["user"] for u in config["users"]}
    for person in people.PEOPLE:
        crt = users[person.name]["client-certificate"]
        verified = subprocess.run(["openssl", "verify", "-CAfile", str(ca / "ca.crt"), crt],
                                  capture_output=True, text=True)
        assert verified.returncode == 0, verified.stderr
        subject = subprocess.run(["openssl", "x509", "-noout", "-subject", "-in", crt],
                                 capture_output=True, text=True, check=True).stdout
        assert f"CN = {person.name}" in subject and f"O = {person.group}" in subject
        assert Path(users[person.name]["client-key"]).exists()
    # The CA's serial file is the sandbox's: minting leaves it alone.
    assert (ca / "ca.srl").read_text() == "01\n"


def test_without_a_ca_the_error_says_so(tmp_path: Path) -> None:
    with pytest.raises(people.IdentityError, match="no sandbox CA"):
        people.mint_certificate(people.EDITOR, tmp_path, tmp_path / "out")


def test_only_the_approvers_are_bound_to_the_approver_role_which_the_chart_defines() -> None:
    manifests = people.rbac_manifests("demo", {"rewind.dev/demo": "true"})
    roles = {d["metadata"]["name"]: d for d in yaml.safe_load_all(HUMAN_ACTIONS.read_text())
             if d and d["kind"] == "ClusterRole"}
    approve_verbs = {"approve-rollback", "reject-rollback"}
    assert approve_verbs <= set(roles[people.APPROVER_ROLE]["rules"][0]["verbs"])

    bound: dict[str, set[str]] = {}
    local = {d["metadata"]["name"]: d for d in manifests if d["kind"] == "Role"}
    for binding in (d for d in manifests if d["kind"] == "RoleBinding"):
        ref = binding["roleRef"]
        rules = (roles[ref["name"]]["rules"] if ref["kind"] == "ClusterRole"
                 and ref["name"] in roles else local.get(ref["name"], {}).get("rules", []))
        verbs = {v for r in rules for v in r["verbs"]}
        for subject in binding["subjects"]:
            bound.setdefault(subject["name"], set()).update(verbs)
    assert all(d["metadata"]["namespace"] == "demo" for d in manifests)
    assert all(approve_verbs <= bound[p.name] for p in people.APPROVERS)
    # dana may patch the release: only the admission policy stands in her way.
    assert "patch" in bound[people.EDITOR.name]
    assert not approve_verbs & bound[people.EDITOR.name]
