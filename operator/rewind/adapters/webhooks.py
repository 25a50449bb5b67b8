"""Notifier targets beside Events: a generic JSON webhook and Slack-compatible incoming
webhooks, delivered in the background with retries and backoff.

The outbox lives in the release's status (``status.notifications``, see
:mod:`rewind.notifications`); this module only delivers what the controller hands it and
reports how each delivery ended. It never blocks a reconcile: :meth:`Deliveries.submit`
starts a task and returns. A delivery is retried with exponential backoff and jitter
(tenacity) while the receiver is unreachable, times out, or answers 408, 425, 429 or 5xx;
any other answer is final (a 404 or 400 does not heal by retrying: the record is Failed with
the receiver's answer, for a human to see in the status). One that is still undelivered
``give_up_after`` after its entry happened is Failed too.

Every request carries the message id as ``Idempotency-Key`` (and in the JSON body), the same
after a restart, so a receiver can drop the one copy the outbox allows (a crash between the
receiver's answer and the status write that records it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import aiohttp
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)

from rewind.adapters._aiohttp import LazySession
from rewind.api import NotificationRecord, NotificationState
from rewind.notifications import Delivery, Message, slack_body, webhook_body

log = logging.getLogger(__name__)

TargetKind = Literal["webhook", "slack"]
KINDS: tuple[TargetKind, ...] = ("webhook", "slack")
#: Statuses worth another try: the receiver is busy or broken for now.
RETRIED_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
USER_AGENT = "rewind-operator (notifications)"
NAME_PATTERN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def url_env(name: str) -> str:
    """The environment variable that holds a target's URL (``oncall-slack`` ->
    ``REWIND_NOTIFIER_URL_ONCALL_SLACK``): URLs of incoming webhooks are secrets, so they
    never appear in arguments; the chart fills the variable from a Secret."""
    return "REWIND_NOTIFIER_URL_" + re.sub(r"[^A-Z0-9]", "_", name.upper())


@dataclass(frozen=True)
class Target:
    """A configured receiver."""

    name: str
    kind: TargetKind
    url: str = field(repr=False)

    def body(self, message: Message) -> dict[str, Any]:
        return slack_body(message) if self.kind == "slack" else webhook_body(message)


def parse_target(spec: str, environ: Mapping[str, str] | None = None) -> Target:
    """``NAME=KIND`` (``--notifier oncall-slack=slack``), the URL from :func:`url_env`."""
    env = os.environ if environ is None else environ
    name, sep, kind = spec.partition("=")
    name, kind = name.strip(), kind.strip()
    if not sep or not NAME_PATTERN.match(name) or len(name) > 63:
        raise ValueError(f"notifier {spec!r}: expected NAME=KIND, NAME a DNS label "
                         f"(e.g. oncall-slack=slack)")
    if kind not in KINDS:
        raise ValueError(f"notifier {name}: kind {kind!r} is not one of {', '.join(KINDS)}")
    url = env.get(url_env(name), "").strip()
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"notifier {name}: set its URL (http:// or https://) in the "
                         f"environment variable {url_env(name)}")
    return Target(name, kind, url)


class DeliveryError(Exception):
    """One attempt failed; ``final`` when another attempt cannot help."""

    def __init__(self, message: str, *, final: bool = False) -> None:
        super().__init__(message)
        self.final = final


class RetryableError(DeliveryError):
    """An attempt worth repeating."""


Key = tuple[str, str]


class Deliveries:
    """Background delivery of outbox records; how each ended is kept until acknowledged.

    ``on_done(namespace, name)`` is called when a delivery ends, so the release's loop
    wakes and stores the outcome at once (the shorter that gap, the smaller the window in
    which a crash makes a receiver see a message twice)."""

    def __init__(
        self,
        targets: Mapping[str, Target],
        *,
        timeout: float = 10.0,
        first_backoff: float = 1.0,
        max_backoff: float = 300.0,
        give_up_after: float = 86400.0,
        on_done: Callable[[str, str], None] | None = None,
        on_result: Callable[[str, str, str, str], None] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.targets = dict(targets)
        self.timeout = timeout
        self.first_backoff = first_backoff
        self.max_backoff = max_backoff
        self.give_up_after = give_up_after
        self.on_done = on_done
        self.on_result = on_result  # (namespace, release, target, result) for metrics
        self.clock = clock
        self._tasks: dict[Key, dict[str, asyncio.Task[None]]] = {}
        self._finished: dict[Key, dict[str, Delivery]] = {}
        self._http = LazySession(USER_AGENT, timeout)

    # -- what the controller calls ------------------------------------------------------

    def finished(self, namespace: str, name: str) -> dict[str, Delivery]:
        """Deliveries that ended and are not yet stored in the status."""
        return dict(self._finished.get((namespace, name), {}))

    def acknowledge(self, namespace: str, name: str, ids: set[str] | frozenset[str]) -> None:
        """The status now records these outcomes: forget them."""
        done = self._finished.get((namespace, name))
        if done is None:
            return
        for ident in ids:
            done.pop(ident, None)
        if not done:
            del self._finished[(namespace, name)]

    def in_flight(self, namespace: str, name: str) -> set[str]:
        return {i for i, t in self._tasks.get((namespace, name), {}).items() if not t.done()}

    def submit(
        self, namespace: str, name: str, record: NotificationRecord, message: Message
    ) -> bool:
        """Start delivering a Pending record unless it is in flight or its outcome is
        waiting to be stored; never blocks. True when a delivery started."""
        key = (namespace, name)
        if record.id in self.in_flight(namespace, name) or record.id in self._finished.get(
            key, {}
        ):
            return False
        target = self.targets.get(record.target)
        if target is None:
            configured = ", ".join(sorted(self.targets)) or "none"
            self._finish(key, record, NotificationState.FAILED,
                         f"no notifier target named {record.target!r} is configured in the "
                         f"operator (configured: {configured})")
            return False
        task = asyncio.get_running_loop().create_task(
            self._deliver(key, record, target, message),
            name=f"rewind-notify:{namespace}/{name}:{record.id}",
        )
        self._tasks.setdefault(key, {})[record.id] = task
        task.add_done_callback(lambda _t: self._forget_task(key, record.id, task))
        return True

    async def cancel(self, namespace: str, name: str) -> None:
        """Stop the release's deliveries (it is gone, or this replica stood by): whoever
        runs it next finds them Pending in the status."""
        key = (namespace, name)
        tasks = list(self._tasks.pop(key, {}).values())
        self._finished.pop(key, None)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def cancel_all(self) -> None:
        for namespace, name in list({*self._tasks, *self._finished}):
            await self.cancel(namespace, name)

    async def close(self) -> None:
        await self.cancel_all()
        await self._http.close()

    # -- delivery -------------------------------------------------------------------------

    def _forget_task(self, key: Key, ident: str, task: asyncio.Task[None]) -> None:
        tasks = self._tasks.get(key)
        if tasks is not None and tasks.get(ident) is task:
            del tasks[ident]
            if not tasks:
                del self._tasks[key]

    def _finish(
        self, key: Key, record: NotificationRecord, state: NotificationState, error: str = ""
    ) -> None:
        self._finished.setdefault(key, {})[record.id] = Delivery(state, self.clock(), error)
        if self.on_result is not None:
            self.on_result(key[0], key[1], record.target,
                           "sent" if state == NotificationState.SENT else "failed")
        if self.on_done is not None:
            self.on_done(*key)

    def _budget(self, record: NotificationRecord) -> float:
        """Seconds left before giving up on the record."""
        if record.at is None:
            return self.give_up_after
        age = (self.clock() - record.at).total_seconds()
        return self.give_up_after - max(0.0, age)

    async def _deliver(
        self, key: Key, record: NotificationRecord, target: Target, message: Message
    ) -> None:
        payload = json.dumps(target.body(message), separators=(",", ":")).encode()
        attempts = 0

        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome is not None else None
            wait = state.next_action.sleep if state.next_action is not None else 0.0
            log.info("%s/%s: notification %s to %s not delivered (attempt %d: %s); "
                     "again in %.1fs", key[0], key[1], record.id, target.name,
                     state.attempt_number, error, wait)

        budget = self._budget(record)
        if budget <= 0:
            self._finish(key, record, NotificationState.FAILED,
                         f"not delivered within {self.give_up_after:g}s of its event")
            return
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(RetryableError),
                wait=wait_exponential_jitter(multiplier=self.first_backoff, max=self.max_backoff,
                                             jitter=self.first_backoff),
                stop=stop_after_delay(budget),
                before_sleep=before_sleep,
                reraise=True,
            ):
                with attempt:
                    attempts += 1
                    await self._post(target, record.id, payload)
        except DeliveryError as err:
            final = "refused" if err.final else f"gave up after {attempts} attempt(s)"
            message_text = f"{final}: {err}"
            log.warning("%s/%s: notification %s to %s failed: %s", key[0], key[1],
                        record.id, target.name, message_text)
            self._finish(key, record, NotificationState.FAILED, message_text)
            return
        log.info("%s/%s: notification %s (%s r%d) delivered to %s after %d attempt(s)",
                 key[0], key[1], record.id, record.type, record.revision, target.name, attempts)
        self._finish(key, record, NotificationState.SENT)

    async def _post(self, target: Target, ident: str, payload: bytes) -> None:
        headers = {"Content-Type": "application/json", "Idempotency-Key": ident}
        try:
            async with self._http.get().post(target.url, data=payload, headers=headers) as resp:
                if 200 <= resp.status < 300:
                    return
                text = (await resp.text(errors="replace"))[:200].strip()
                detail = f"HTTP {resp.status}" + (f": {text}" if text else "")
                if resp.status in RETRIED_STATUSES:
                    raise RetryableError(detail)
                raise DeliveryError(detail, final=True)
        except DeliveryError:
            raise
        except TimeoutError as err:
            raise RetryableError(f"no answer within {self.timeout:g}s") from err
        except aiohttp.ClientError as err:
            raise RetryableError(f"{type(err).__name__}: {err}") from err
