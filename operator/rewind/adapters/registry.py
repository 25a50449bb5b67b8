"""The MLflow model registry: read an alias, move it, tag the version it was moved to.

Through MLflow's REST API 2.0 with aiohttp (already a dependency, through Kopf), not
``mlflow-skinny``'s MlflowClient: that client is synchronous (a thread per call) and would
add dozens of packages (protobuf, OpenTelemetry, the Databricks SDK...) to the operator
image for three HTTP calls:

* ``GET  /api/2.0/mlflow/registered-models/alias?name=&alias=`` (the alias's version;
  RESOURCE_DOES_NOT_EXIST: unset),
* ``POST /api/2.0/mlflow/registered-models/alias`` (set it),
* ``POST /api/2.0/mlflow/model-versions/set-tag`` (record the move on the version).

:class:`RegistrySync` runs one sync per release at a time in the background and keeps what
it last read (:class:`~rewind.adapters.base.RegistryObservation`) for the engine; it never
blocks a reconcile, so an MLflow that is down, or hangs, never delays a rollback. A failed
attempt is retried with exponential backoff (the engine asks again every few seconds; the
adapter starts no attempt before the backoff is over). Credentials (the operator's
``MLFLOW_TRACKING_TOKEN``, or ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``) go
only to the operator's default server (``MLFLOW_TRACKING_URI``), never to a URI a
ModelRelease names.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import aiohttp

from rewind.adapters._aiohttp import LazySession
from rewind.adapters.base import (
    AdapterError,
    RegistryMove,
    RegistryObservation,
    registry_tag,
)

log = logging.getLogger(__name__)

USER_AGENT = "rewind-operator (model registry)"
#: An alias in sync is read again this often (s): a hand-made move is seen and undone.
RESYNC = 60.0


class RegistryError(AdapterError):
    """The tracking server refused a request (``code``: MLflow's error_code, ``message``
    its message), or could not be reached."""

    def __init__(self, text: str, code: str = "", message: str = "") -> None:
        super().__init__(text)
        self.code, self.message = code, message


def auth_headers(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The operator's MLflow credentials as headers (MLflow's own variable names)."""
    env = os.environ if environ is None else environ
    token = env.get("MLFLOW_TRACKING_TOKEN", "")
    if token:
        return {"Authorization": f"Bearer {token}"}
    user = env.get("MLFLOW_TRACKING_USERNAME", "")
    if user:
        pair = f"{user}:{env.get('MLFLOW_TRACKING_PASSWORD', '')}"
        return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}
    return {}


@dataclass(frozen=True)
class SyncRequest:
    """What the engine asked for (``engine.SyncRegistryAlias``), the URI resolved."""

    tracking_uri: str
    name: str
    alias: str
    version: str  # "": only read
    revision: int
    why: str
    release: str  # namespace/name, for the tag


@dataclass
class _State:
    target: tuple[str, str, str]  # (tracking URI, model, alias)
    observation: RegistryObservation
    task: asyncio.Task[None] | None = None
    failures: int = 0
    not_before: float = 0.0  # monotonic: no attempt before (backoff)
    last_read: float = -1e9  # monotonic
    #: A tag still to write: (version, key, value) of a move whose tag failed.
    pending_tag: tuple[str, str, str] | None = None
    #: A move made and not yet read back.
    unreported: RegistryMove | None = None


class RegistrySync:
    """Background reads and moves of each release's MLflow alias.

    ``on_change(namespace, name)`` is called when what was read (or the error) changes, so
    the release's loop wakes and records it."""

    def __init__(
        self,
        *,
        default_uri: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
        resync: float = RESYNC,
        first_backoff: float = 1.0,
        max_backoff: float = 30.0,
        on_change: Callable[[str, str], None] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        env_uri = os.environ.get("MLFLOW_TRACKING_URI", "")
        self.default_uri = (default_uri if default_uri is not None else env_uri).rstrip("/")
        self.headers = dict(auth_headers() if headers is None else headers)
        self.timeout = timeout
        self.resync = resync
        self.first_backoff = first_backoff
        self.max_backoff = max_backoff
        self.on_change = on_change
        self.clock = clock
        self._states: dict[tuple[str, str], _State] = {}
        self._http = LazySession(USER_AGENT, timeout)

    # -- what the controller calls ------------------------------------------------------

    def resolve(self, tracking_uri: str) -> str:
        """The server a release's ``trackingURI`` names ("": the operator's default)."""
        return (tracking_uri or self.default_uri).rstrip("/")

    def headers_for(self, uri: str) -> dict[str, str]:
        """The operator's credentials, for its default server only: a URI written in a
        ModelRelease could be anyone's, and must not collect them."""
        return dict(self.headers) if self.default_uri and uri == self.default_uri else {}

    def observed(
        self, namespace: str, name: str, tracking_uri: str, model: str, alias: str
    ) -> RegistryObservation | None:
        """What was last read of this alias for the release (None: nothing yet)."""
        state = self._states.get((namespace, name))
        if state is None or state.target != (self.resolve(tracking_uri), model, alias):
            return None
        return state.observation

    def submit(self, namespace: str, name: str, request: SyncRequest) -> bool:
        """Start a read (and a move when the alias is elsewhere) unless one is running, the
        backoff of a failure is not over, or the alias was read in sync recently; never
        blocks. True when an attempt started."""
        key = (namespace, name)
        target = (request.tracking_uri, request.name, request.alias)
        state = self._states.get(key)
        if state is None or state.target != target:
            if state is not None and state.task is not None:
                state.task.cancel()
            state = _State(target, RegistryObservation(tracking_uri=request.tracking_uri))
            self._states[key] = state
        if not request.tracking_uri:
            self._observe(key, state, replace(
                state.observation, error="no tracking server: set model.registry.trackingURI "
                "or the operator's MLFLOW_TRACKING_URI",
            ))
            return False
        if state.task is not None and not state.task.done():
            return False
        now = time.monotonic()
        if now < state.not_before:
            return False
        seen = state.observation
        fresh = now - state.last_read < self.resync and not seen.error
        if fresh and state.pending_tag is None and (
            not request.version or seen.version == request.version
        ):
            return False
        state.task = asyncio.get_running_loop().create_task(
            self._sync(key, state, request), name=f"rewind-registry:{namespace}/{name}"
        )
        return True

    def forget(self, namespace: str, name: str) -> None:
        state = self._states.pop((namespace, name), None)
        if state is not None and state.task is not None:
            state.task.cancel()

    async def close(self) -> None:
        tasks = [s.task for s in self._states.values() if s.task is not None]
        self._states.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._http.close()

    # -- one attempt ----------------------------------------------------------------------

    async def _sync(self, key: tuple[str, str], state: _State, request: SyncRequest) -> None:
        seen = state.observation
        try:
            if state.pending_tag is not None:
                await self._set_tag(request.tracking_uri, request.name, *state.pending_tag)
                state.pending_tag = None
            current = await self.get_alias(request.tracking_uri, request.name, request.alias)
            moved = seen.moved
            if request.version and current != request.version:
                await self.set_alias(
                    request.tracking_uri, request.name, request.alias, request.version
                )
                at = self.clock()
                # Remembered at once: a read-back that fails now still reports (and tags)
                # the move once a later read sees it.
                state.unreported = RegistryMove(current, request.version, request.revision,
                                                request.why, at)
                state.pending_tag = (request.version, registry_tag(request.alias),
                                     _tag_value(request, current, at))
                log.info("%s/%s: MLflow alias %s of %s moved from %s to %s (%s)", *key,
                         request.alias, request.name, current or "(unset)",
                         request.version, request.why)
                current = await self.get_alias(request.tracking_uri, request.name,
                                               request.alias)
            if state.unreported is not None and current == state.unreported.to_version:
                moved, state.unreported = state.unreported, None
            tag_error, tagging = "", state.pending_tag
            if tagging is not None:
                # Before the move is reported, so the report says whether the tag is there.
                try:
                    await self._set_tag(request.tracking_uri, request.name, *tagging)
                    state.pending_tag = None
                except (RegistryError, aiohttp.ClientError, TimeoutError) as err:
                    tag_error = _describe(err, self.timeout)
            if moved is not None and moved is not seen.moved:
                moved = replace(moved, tag_error=tag_error)
            read = replace(seen, version=current, read_at=self.clock(), error="", moved=moved)
            if tag_error:
                # The move is read back and reported; the tag alone is retried.
                self._observe(key, state, read)
                version = tagging[0] if tagging is not None else "?"
                raise RegistryError(f"could not tag version {version} with the move: {tag_error}")
            self._observe(key, state, read)
        except asyncio.CancelledError:
            raise
        except (RegistryError, aiohttp.ClientError, TimeoutError) as err:
            state.failures += 1
            delay = min(self.max_backoff, self.first_backoff * 2 ** (state.failures - 1))
            state.not_before = time.monotonic() + delay
            text = _describe(err, self.timeout)
            log.warning("%s/%s: MLflow %s: %s (again in %.0fs)", *key, request.tracking_uri,
                        text, delay)
            self._observe(key, state, replace(state.observation, error=text))
            return
        state.failures = 0
        state.not_before = 0.0
        state.last_read = time.monotonic()

    def _observe(self, key: tuple[str, str], state: _State, new: RegistryObservation) -> None:
        old = state.observation
        state.observation = new
        if (old.version, old.error, old.moved, old.read_at is None) != (
            new.version, new.error, new.moved, new.read_at is None
        ) and self.on_change is not None:
            self.on_change(*key)

    # -- the REST API ---------------------------------------------------------------------

    async def get_alias(self, uri: str, model: str, alias: str) -> str:
        """The version ``alias`` of ``model`` names ("" when the alias is not set)."""
        try:
            body = await self._call(uri, "GET", "registered-models/alias",
                                    params={"name": model, "alias": alias})
        except RegistryError as err:
            # An unset alias: "Registered model alias production not found." (MLflow 3:
            # INVALID_PARAMETER_VALUE; 2.x: RESOURCE_DOES_NOT_EXIST). A missing model says
            # "Registered Model with name=... not found" and stays an error.
            if _UNSET_ALIAS.search(err.message):
                return ""
            raise
        return str((body.get("model_version") or {}).get("version") or "")

    async def set_alias(self, uri: str, model: str, alias: str, version: str) -> None:
        await self._call(uri, "POST", "registered-models/alias",
                         json_body={"name": model, "alias": alias, "version": version})

    async def _set_tag(self, uri: str, model: str, version: str, key: str, value: str) -> None:
        await self._call(uri, "POST", "model-versions/set-tag",
                         json_body={"name": model, "version": version, "key": key,
                                    "value": value})

    async def _call(
        self,
        uri: str,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        url = f"{uri}/api/2.0/mlflow/{path}"
        headers = self.headers_for(uri)
        async with self._http.get().request(
            method, url, params=params, json=json_body, headers=headers
        ) as resp:
            text = await resp.text(errors="replace")
            try:
                body: dict[str, Any] = json.loads(text) if text.strip() else {}
            except ValueError:
                body = {}
            if 200 <= resp.status < 300:
                return body
            code = str(body.get("error_code") or "")
            message = str(body.get("message") or text[:200]).strip()
            detail = f"{method} {path}: HTTP {resp.status}" + (
                f" {code}" if code else "") + (f": {message}" if message else "")
            raise RegistryError(detail, code, message)


_UNSET_ALIAS = re.compile(r"alias \S+ not found", re.IGNORECASE)


def _tag_value(request: SyncRequest, from_version: str, at: datetime) -> str:
    """The tag's value: JSON naming the release, the revision, the version the alias left,
    when and why (e.g. "r2 promoted", "rolled back to r1")."""
    return json.dumps({
        "release": request.release,
        "revision": request.revision,
        "from": from_version,
        "at": at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "why": request.why,
    }, separators=(",", ":"))


def _describe(err: BaseException, timeout: float) -> str:
    if isinstance(err, TimeoutError):
        return f"no answer within {timeout:g}s"
    if isinstance(err, RegistryError):
        return str(err)
    return f"{type(err).__name__}: {err}"
