"""The operator image's Python layer, checked without Docker (none runs where this project is
built): the lock is complete and matches pyproject.toml, the venv the tests run in holds the
locked versions, and the Dockerfile's install steps, replayed in a fresh virtualenv, give a
working `rewind-operator`. The image's base and user are not exercised here."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import ROOT

LOCK = ROOT / "operator" / "requirements.lock"
DOCKERFILE = ROOT / "Dockerfile"


def locked() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in LOCK.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, version = line.partition("==")
        assert version, f"{LOCK.name}: {line!r} is not pinned with =="
        pins[canonicalize_name(name)] = version
    return pins


def test_the_lock_satisfies_every_runtime_dependency() -> None:
    pins = locked()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for raw in project["dependencies"]:
        requirement = Requirement(raw)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is a dependency but not in {LOCK.name}"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{LOCK.name} pins {name}=={pins[name]}, outside {requirement}"
        )


def test_the_tests_run_the_locked_versions() -> None:
    """`make venv` installs with the lock as constraints: what the tests exercise is what the
    image ships."""
    mismatched = {}
    for name, version in locked().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = "missing"
        if installed != version:
            mismatched[name] = (version, installed)
    assert not mismatched, f"(locked, installed): {mismatched}; run `make venv`"


def build_stage() -> list[str]:
    """The Dockerfile's first stage, one instruction per line (continuations joined)."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and not line.strip().startswith("#")]
    froms = [i for i, line in enumerate(lines) if line.startswith("FROM ")]
    assert len(froms) == 2, "expected a build stage and a runtime stage"
    return lines[froms[0] + 1:froms[1]]


def test_the_dockerfile_installs_only_the_lock_and_the_operator_without_deps() -> None:
    runs = [line for line in build_stage() if line.startswith("RUN ")]
    installs = [line for line in runs if re.search(r"\bpip install\b", line)]
    assert len(installs) == 2, installs
    assert any("-r /tmp/requirements.lock" in line for line in installs), installs
    assert all("-r /tmp/requirements.lock" in line or "--no-deps" in line
               for line in installs), installs
    assert any("pip check" in line for line in runs)


@pytest.mark.timeout(600)
def test_the_dockerfile_install_steps_give_a_working_operator(tmp_path: Path) -> None:
    """Replays the build stage's COPY and pip steps in a fresh virtualenv."""
    source = tmp_path / "src"
    for line in build_stage():
        if not line.startswith("COPY ") or "--from" in line:
            continue
        *sources, _destination = line.split()[1:]
        for item in sources:
            origin = ROOT / item
            if item == "operator/requirements.lock":
                continue  # installed from LOCK below, as the Dockerfile does
            target = source / item
            target.parent.mkdir(parents=True, exist_ok=True)
            if origin.is_dir():
                shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(origin, target)
    venv = tmp_path / "image"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]

    def run(*args: str) -> str:
        result = subprocess.run(args, capture_output=True, text=True, timeout=480)
        assert result.returncode == 0, f"{' '.join(args)}:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    run(*pip, "install", "-q", "--require-virtualenv", "-r", str(LOCK))
    run(*pip, "install", "-q", "--require-virtualenv", "--no-deps", str(source))
    run(*pip, "check")
    usage = run(str(venv / "bin" / "rewind-operator"), "--help")
    assert "--peering" in usage and "--prometheus-url" in usage
    # Every module the operator loads imports with only the locked set present.
    run(str(venv / "bin" / "python"), "-c",
        "import rewind.handlers, rewind.main, rewind.peering")
