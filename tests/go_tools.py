"""Runs the Go test tools of hack/tools: argocd-lua (Argo CD's Lua runtime) and kstatus.

`make tools` (or `hack/build-tools.sh --test-tools`) builds them into
~/.cache/rewind/test-tools/<hash of hack/tools>/bin; `hack/build-tools.sh --test-tools-dir`
prints that directory without building, and REWIND_TEST_TOOLS overrides it. A missing tool
fails the test, naming `make tools`: it is never a skip.

Each call runs one process over a whole batch of objects.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARGOCD = ROOT / "charts" / "rewind" / "argocd"
HEALTH_LUA = ARGOCD / "health.lua"
DISCOVERY_LUA = ARGOCD / "discovery.lua"
ACTIONS = (
    "approve-rollback", "reject-rollback", "promote", "retry", "rollback", "reset-breaker", "drill"
)


def action_lua(name: str) -> Path:
    return ARGOCD / "actions" / f"{name}.lua"


def tools_dir() -> Path:
    override = os.environ.get("REWIND_TEST_TOOLS")
    if override:
        return Path(override)
    out = subprocess.run(
        [str(ROOT / "hack" / "build-tools.sh"), "--test-tools-dir"],
        capture_output=True, text=True, check=True,
    )
    return Path(out.stdout.strip())


def tool(name: str) -> Path:
    path = tools_dir() / name
    if not os.access(path, os.X_OK):
        pytest.fail(
            f"the Go test tool {name} is not built ({path} is missing): run `make tools` "
            "(or hack/build-tools.sh --test-tools)",
            pytrace=False,
        )
    return path


def run(name: str, batch: Sequence[Any]) -> list[dict[str, Any]]:
    """One run of tool ``name`` over ``batch``; one result per item, in order."""
    proc = subprocess.run(
        [str(tool(name))], input=json.dumps(list(batch)), capture_output=True, text=True,
        timeout=120, check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"{name} failed (exit {proc.returncode}): {proc.stderr.strip()}")
    results: list[dict[str, Any]] = json.loads(proc.stdout)
    assert len(results) == len(batch)
    return results


def job(kind: str, script: Path | str, obj: dict[str, Any], *, open_libs: bool = False
        ) -> dict[str, Any]:
    """An argocd-lua job: ``script`` is a .lua file or Lua source."""
    source = {"scriptFile": str(script)} if isinstance(script, Path) else {"script": script}
    return {"kind": kind, **source, "obj": obj, "useOpenLibs": open_libs}


def argocd_lua(jobs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return run("argocd-lua", jobs)


def health(objects: Sequence[dict[str, Any]], script: Path | str = HEALTH_LUA
           ) -> list[dict[str, Any]]:
    """What Argo CD shows for each object: {"health": {"status", "message"}, "error"?}."""
    return argocd_lua([job("health", script, o) for o in objects])


def kstatus(objects: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """kstatus of each object: {"status", "message"} or {"error"}."""
    return run("kstatus", objects)


KSTATUS_OF_HEALTH = {
    "Healthy": "Current",
    "Progressing": "InProgress",
    "Suspended": "InProgress",
    "Degraded": "Failed",
}


def disagreements(objects: Iterable[dict[str, Any]]) -> list[str]:
    """Objects on which Argo CD's health (health.lua) and kstatus disagree, described.

    Agreement: Healthy is Current, Progressing and Suspended are InProgress, Degraded is
    Failed. A health script error counts as a disagreement.
    """
    objs = list(objects)
    out: list[str] = []
    for obj, hs, ks in zip(objs, health(objs), kstatus(objs), strict=True):
        argo = hs["health"].get("status", "")
        status = obj.get("status") or {}
        where = (f"phase {status.get('phase')!r}, generation {obj['metadata'].get('generation')}"
                 f"/{status.get('observedGeneration')}")
        if "error" in hs or KSTATUS_OF_HEALTH.get(argo) != ks.get("status"):
            out.append(f"{where}: Argo CD {argo} ({hs['health'].get('message')!r}), "
                       f"kstatus {ks.get('status')} ({ks.get('message') or ks.get('error')!r})")
    return out
