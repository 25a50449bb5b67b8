"""Kubernetes Events about a ModelRelease: the notifier humans see in ``kubectl describe``.

Kopf's ``kopf.event`` covers the object a handler is handling; this recorder also works
outside a handler (timers, the demo). Events are best effort: a failure to record one is
logged, never allowed to fail the rollout or rollback it describes.
"""

from __future__ import annotations

import logging
import socket
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from kubernetes import client

from rewind.adapters import _kube
from rewind.adapters.base import COMPONENT, EventType, OwnerRef

log = logging.getLogger(__name__)

#: API limits (events.k8s.io validation): note 1 KiB, reason 128 characters.
MAX_MESSAGE_BYTES = 1024
MAX_REASON = 128
MAX_INSTANCE = 128
_ELLIPSIS = "..."


def truncate_message(message: str, limit: int = MAX_MESSAGE_BYTES) -> str:
    """Cut ``message`` to ``limit`` UTF-8 bytes without splitting a character."""
    encoded = message.encode("utf-8")
    if len(encoded) <= limit:
        return message
    head = encoded[: limit - len(_ELLIPSIS)].decode("utf-8", "ignore")
    return head + _ELLIPSIS


def build_event(
    owner: OwnerRef,
    namespace: str,
    type: EventType,
    reason: str,
    message: str,
    now: datetime,
    component: str = COMPONENT,
    instance: str = "",
) -> dict[str, Any]:
    """A core/v1 Event involving the ModelRelease.

    Legacy style (no eventTime) so the API server does not require an ``action``, and so
    ``kubectl describe`` and Kopf-posted events look alike.
    """
    if type not in ("Normal", "Warning"):
        raise ValueError(f"event type must be Normal or Warning, got {type!r}")
    stamp = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{owner.name}.", "namespace": namespace},
        "involvedObject": {
            "apiVersion": owner.api_version,
            "kind": owner.kind,
            "name": owner.name,
            "namespace": namespace,
            "uid": owner.uid,
        },
        "type": type,
        "reason": reason[:MAX_REASON],
        "message": truncate_message(message),
        "source": {"component": component},
        "reportingComponent": component,
        "reportingInstance": instance[:MAX_INSTANCE],
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


class EventRecorder:
    """Posts Events about ModelReleases; never raises."""

    def __init__(
        self,
        api_client: client.ApiClient,
        *,
        component: str = COMPONENT,
        instance: str | None = None,
        request_timeout: float = 10.0,
    ) -> None:
        self._core = client.CoreV1Api(api_client)
        self._component = component
        self._instance = instance if instance is not None else socket.gethostname()
        self._timeout = request_timeout

    async def post(
        self, owner: OwnerRef, namespace: str, type: EventType, reason: str, message: str
    ) -> None:
        """Record one event; delivery failures are logged and swallowed."""
        body = build_event(
            owner,
            namespace,
            type,
            reason,
            message,
            datetime.now(UTC),
            self._component,
            self._instance,
        )
        try:
            await _kube.call(
                self._core.create_namespaced_event, namespace, body, timeout=self._timeout
            )
        except Exception:  # best effort by design: see module docstring
            log.warning(
                "could not record event %s for %s/%s", reason, namespace, owner.name, exc_info=True
            )


if TYPE_CHECKING:
    from rewind.adapters.base import Notifier

    _conforms: type[Notifier] = EventRecorder
