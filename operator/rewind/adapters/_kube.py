"""Thin helpers over the blocking kubernetes client, shared by the adapters.

Every call runs in a worker thread (a blocking call in an async handler freezes Kopf) and
returns plain JSON dicts, so adapters do not depend on the generated model classes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from kubernetes.client.exceptions import ApiException

APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"


def _decode(response: Any) -> dict[str, Any]:
    """Decode an un-preloaded urllib3 response body as JSON."""
    raw = response.data
    if not raw:
        return {}
    decoded = json.loads(raw)
    if not isinstance(decoded, dict):
        raise ValueError(f"expected a JSON object from the API server, got {type(decoded)}")
    return decoded


def _request(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The request, its body read and decoded: all of it in the worker thread, so the event
    loop never waits on the socket for a body (a list of Deployments, a full ModelRelease)
    nor spends its time decoding one."""
    return _decode(fn(*args, **kwargs))


async def call(
    fn: Callable[..., Any], /, *args: Any, timeout: float, **kwargs: Any
) -> dict[str, Any]:
    """Run one client method in a thread and return the response body as a dict."""
    options = {**kwargs, "_preload_content": False, "_request_timeout": timeout}
    decoded: dict[str, Any] = await asyncio.to_thread(_request, fn, args, options)
    return decoded


async def get_or_none(
    fn: Callable[..., Any], /, *args: Any, timeout: float, **kwargs: Any
) -> dict[str, Any] | None:
    """Like :func:`call` for reads, with 404 mapped to None."""
    try:
        return await call(fn, *args, timeout=timeout, **kwargs)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def canonical_json(obj: Any) -> str:
    """JSON the API server stores byte for byte and re-serializes to the same bytes: keys
    sorted, no blanks, ASCII only, and ``<``, ``>``, ``&`` escaped as Go escapes them.

    A ControllerRevision's ``data`` is kept as the raw bytes the client sent, and any
    later patch of the object (even of its labels alone) re-serializes it that way and
    compares: different bytes are refused as ``data: field is immutable``."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _create_exact(
    api_client: Any, resource_path: str, namespace: str, text: str, field_manager: str,
    timeout: float,
) -> dict[str, Any]:
    # Sent as YAML (JSON is YAML): the client sends a str body of that type as it is,
    # where it would serialize a JSON body itself, with blanks.
    method, url, headers, body, post = api_client.param_serialize(
        method="POST",
        resource_path=resource_path,
        path_params={"namespace": namespace},
        query_params=[("fieldManager", field_manager)],
        header_params={"Accept": "application/json", "Content-Type": "application/yaml"},
        body=text,
        auth_settings=["BearerToken"],
    )
    response = api_client.call_api(method, url, headers, body, post, _request_timeout=timeout)
    response.read()
    if not 200 <= int(response.status) <= 299:
        raise ApiException(http_resp=response)
    return _decode(response)


async def create_exact(
    api_client: Any, resource_path: str, namespace: str, obj: Any, *, field_manager: str,
    timeout: float,
) -> dict[str, Any]:
    """Create ``obj`` from its :func:`canonical_json` bytes (``resource_path`` with a
    ``{namespace}`` placeholder), in a thread like :func:`call`."""
    text = canonical_json(obj)
    return await asyncio.to_thread(
        _create_exact, api_client, resource_path, namespace, text, field_manager, timeout
    )


def status_of(exc: BaseException) -> int | None:
    """HTTP status of a kubernetes client error, if it is one."""
    if isinstance(exc, ApiException):
        return int(exc.status) if exc.status is not None else None
    return None


def api_message(exc: ApiException) -> str:
    """The API server's own message in an error response (admission denials quote the
    policy's message), or the HTTP reason when the body is not a Status."""
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        return f"HTTP {exc.status} {exc.reason}"
    message = body.get("message") if isinstance(body, dict) else None
    return str(message or exc.reason or f"HTTP {exc.status}")
