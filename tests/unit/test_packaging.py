"""The operator image's Python layer, checked without Docker (none runs where this project is
built): the lock is complete and matches pyproject.toml, the venv the tests run in holds the
locked versions, and the Dockerfile's install steps, replayed in a fresh virtualenv, give a
working `rewind-operator` and nothing else: not the demo and its stand-ins (the `rewind_demo`
package of demo/, a distribution of its own), which the operator package never imports. The
image's base and user are not exercised here."""

from __future__ import annotations

import ast
import json
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
OPERATOR_PACKAGE = ROOT / "operator" / "rewind"
DEMO_PACKAGE = ROOT / "demo" / "rewind_demo"
DEMO = "rewind_demo"


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


# Run by the image's python: what it can import and what its site-packages hold.
IMAGE_INVENTORY = """
import importlib, importlib.metadata, importlib.util, json, pkgutil, sysconfig
from pathlib import Path
import rewind
modules = sorted(m.name for m in pkgutil.walk_packages(rewind.__path__, "rewind."))
for name in modules:
    importlib.import_module(name)
site = Path(sysconfig.get_paths()["purelib"])
print(json.dumps({
    "modules": modules,
    "found": {n: None if (s := importlib.util.find_spec(n)) is None else str(s.origin)
              for n in ("rewind_demo", "rewind.demo", "rewind.sim")},
    "distributions": sorted({d.metadata["Name"] for d in importlib.metadata.distributions()}),
    "operator_files": [str(f) for f in importlib.metadata.files("rewind-operator")],
    "top_level": sorted(p.name for p in site.iterdir()),
}))
"""


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
    # Every module of the operator imports with only the locked set present, and the demo
    # and its stand-ins are nowhere: no module, no distribution, no file.
    shipped = json.loads(run(str(venv / "bin" / "python"), "-c", IMAGE_INVENTORY))
    assert shipped["modules"] == operator_modules()
    assert shipped["found"] == {DEMO: None, "rewind.demo": None, "rewind.sim": None}
    distributions = {canonicalize_name(name) for name in shipped["distributions"]}
    assert "rewind-demo" not in distributions
    assert distributions <= set(locked()) | {"rewind-operator", "pip", "setuptools"}, (
        distributions - set(locked()))
    demo_files = {path.name for path in DEMO_PACKAGE.glob("*.py")} - {"__init__.py"}
    assert demo_files, "the demo package moved: update DEMO_PACKAGE"
    assert not [f for f in shipped["operator_files"]
                if Path(f).name in demo_files or DEMO in Path(f).parts], shipped["operator_files"]
    assert not [name for name in shipped["top_level"] if DEMO in name], shipped["top_level"]


def operator_modules() -> list[str]:
    """Every module of the operator package, as its source tree holds them."""
    names = []
    for path in sorted(OPERATOR_PACKAGE.rglob("*.py")):
        parts = path.relative_to(OPERATOR_PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if len(parts) > 1:
            names.append(".".join(parts))
    return sorted(names)


def test_the_operator_never_imports_the_demo_package() -> None:
    """No import statement in `rewind` names `rewind_demo`, nor any string that could be
    handed to importlib or `python -m` (the image does not ship it)."""
    offenders = []
    for path in sorted(OPERATOR_PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level == 0 else []
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names = [node.value]
            else:
                continue
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno}: {name}" for name in names
                          if name == DEMO or name.startswith(f"{DEMO}.")]
    assert not offenders


def test_every_operator_module_imports_with_the_demo_package_blocked() -> None:
    """In a fresh interpreter where `rewind_demo` cannot be imported, every module of
    `rewind` still imports (a lazy import inside a function is caught by the scan above)."""
    blocked = f"""
import importlib, importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == {DEMO!r} or name.startswith({DEMO!r} + "."):
            raise ImportError(f"the operator imported {{name}}")
        return None
sys.meta_path.insert(0, Block())
for name in {operator_modules()!r}:
    importlib.import_module(name)
assert not [m for m in sys.modules if m.split(".")[0] == {DEMO!r}]
"""
    result = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True,
                            timeout=120, cwd=ROOT / "operator")
    assert result.returncode == 0, result.stderr
