"""Scrape-target registration for the sandbox's Prometheus (file_sd) and a bounded wait.

The sandbox Prometheus discovers targets from ``$SANDBOX_TARGETS_DIR/*.json``. Each simulator
registers one file named after it; files are written to a hidden temp name and renamed, so
Prometheus never reads half a file. ``wait_scraped`` polls Prometheus (bounded, no fixed
sleeps) until a target is up, so a test can rely on its metrics being collected.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rewind_demo._http import LOOPBACK

TARGETS_DIR_ENV = "SANDBOX_TARGETS_DIR"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,200}$")
_LABEL_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Proxies from the environment must never see sandbox traffic.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def targets_dir(directory: str | Path | None = None) -> Path:
    """The file_sd folder: directory if given, else ``$SANDBOX_TARGETS_DIR``."""
    if directory is not None:
        return Path(directory)
    env = os.environ.get(TARGETS_DIR_ENV)
    if not env:
        raise RuntimeError(f"{TARGETS_DIR_ENV} is not set (is the sandbox up?)")
    return Path(env)


def _address(target: int | str) -> str:
    """Normalise a port or ``127.0.0.1:PORT`` to an address; anything else is refused."""
    if isinstance(target, int):
        port = target
    else:
        host, sep, port_s = target.rpartition(":")
        if not sep or host != LOOPBACK or not port_s.isdigit():
            raise ValueError(f"scrape targets must be {LOOPBACK}:PORT, got {target!r}")
        port = int(port_s)
    if not 0 < port < 65536:
        raise ValueError(f"bad port {port}")
    return f"{LOOPBACK}:{port}"


def target_path(name: str, directory: str | Path | None = None) -> Path:
    """Where the file of target name lives; name must be a plain file-name-safe token."""
    if not _NAME_RE.match(name):
        raise ValueError(f"bad target name {name!r}: use letters, digits, '.', '_', '-'")
    return targets_dir(directory) / f"{name}.json"


def register_target(
    name: str,
    target: int | str,
    labels: Mapping[str, str] | None = None,
    *,
    directory: str | Path | None = None,
) -> Path:
    """Write (or replace) ``<name>.json`` with one file_sd group for target, atomically.

    Avoid target labels that the scraped metrics carry themselves (e.g. ``namespace``,
    ``revision``): Prometheus would rename the scraped ones to ``exported_*``.
    """
    path = target_path(name, directory)
    clean_labels: dict[str, str] = {}
    for key, value in (labels or {}).items():
        if not _LABEL_RE.match(key):
            raise ValueError(f"bad label name {key!r}")
        clean_labels[key] = str(value)
    content = json.dumps([{"targets": [_address(target)], "labels": clean_labels}], indent=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Hidden name with a non-.json suffix: Prometheus' *.json glob never matches it.
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(content + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def unregister_target(name: str, *, directory: str | Path | None = None) -> bool:
    """Remove the target's file; False if it was not there (idempotent)."""
    try:
        target_path(name, directory).unlink()
    except FileNotFoundError:
        return False
    return True


def list_targets(directory: str | Path | None = None) -> dict[str, list[dict[str, Any]]]:
    """The registered file_sd groups by target name (what Prometheus will read)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for p in sorted(targets_dir(directory).glob("*.json")):
        out[p.stem] = json.loads(p.read_text())
    return out


def _get_json(url: str, timeout: float) -> dict[str, Any]:
    """GET url and decode a Prometheus API envelope; raises on transport or API errors."""
    with _OPENER.open(url, timeout=timeout) as resp:
        obj = json.loads(resp.read())
    if not isinstance(obj, dict) or obj.get("status") != "success":
        raise RuntimeError(f"Prometheus API error from {url}: {obj!r}")
    data = obj.get("data")
    return data if isinstance(data, dict) else {"result": data}


def _api(prometheus_url: str, path: str, params: Mapping[str, str]) -> str:
    base = prometheus_url.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise ValueError(f"prometheus_url must be http(s)://..., got {prometheus_url!r}")
    return f"{base}{path}?{urllib.parse.urlencode(params)}"


def query(prometheus_url: str, promql: str, *, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Instant query; returns the ``result`` vector (list of {metric, value})."""
    data = _get_json(_api(prometheus_url, "/api/v1/query", {"query": promql}), timeout)
    result = data.get("result") or []
    return list(result) if isinstance(result, list) else [data]


def _matching_up_target(
    prometheus_url: str, selector: Mapping[str, str], timeout: float
) -> tuple[dict[str, Any] | None, str]:
    """An active target whose labels include selector and is up; plus a state summary."""
    data = _get_json(_api(prometheus_url, "/api/v1/targets", {"state": "active"}), timeout)
    seen: list[str] = []
    for t in data.get("activeTargets") or []:
        labels = t.get("labels") or {}
        if all(labels.get(k) == v for k, v in selector.items()):
            if t.get("health") == "up":
                return t, ""
            seen.append(f"{labels.get('instance')}: {t.get('health')} {t.get('lastError', '')}")
    return None, "; ".join(seen) or "no matching target"


def wait_scraped(
    prometheus_url: str,
    selector: Mapping[str, str] | str,
    timeout: float = 30.0,
    *,
    poll_interval: float = 0.25,
) -> dict[str, Any]:
    """Poll Prometheus until a matching target has been scraped successfully.

    ``selector`` is either a label map matched against ``/api/v1/targets`` (e.g.
    ``{"instance": "127.0.0.1:40123"}``), returning that target, or PromQL matchers for
    ``up{...}`` (e.g. ``'job="sim", instance="127.0.0.1:40123"'``), returning the sample.
    Raises TimeoutError (with the last state seen) when timeout passes.
    """
    if timeout <= 0:
        raise ValueError("timeout must be > 0")
    deadline = time.monotonic() + timeout
    last = "not polled yet"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"target {selector!r} not up after {timeout}s: {last}")
        try:
            if isinstance(selector, str):
                samples = query(prometheus_url, f"up{{{selector}}}", timeout=min(5.0, remaining))
                ups = [s for s in samples if str((s.get("value") or [0, "0"])[1]) == "1"]
                if ups:
                    return ups[0]
                last = f"up samples: {samples!r}"
            else:
                found, last = _matching_up_target(prometheus_url, selector, min(5.0, remaining))
                if found is not None:
                    return found
        except (OSError, ValueError, RuntimeError) as exc:
            last = f"error: {exc!r}"
        remaining = deadline - time.monotonic()
        if remaining > 0:
            time.sleep(min(poll_interval, remaining))


def wait_for_query(
    prometheus_url: str,
    promql: str,
    timeout: float = 30.0,
    *,
    poll_interval: float = 0.25,
) -> list[dict[str, Any]]:
    """Poll an instant query until it returns a non-empty result (bounded by timeout)."""
    deadline = time.monotonic() + timeout
    last = "not polled yet"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"{promql!r} still empty after {timeout}s: {last}")
        try:
            result = query(prometheus_url, promql, timeout=min(5.0, remaining))
            if result:
                return result
            last = "empty result"
        except (OSError, ValueError, RuntimeError) as exc:
            last = f"error: {exc!r}"
        remaining = deadline - time.monotonic()
        if remaining > 0:
            time.sleep(min(poll_interval, remaining))
