"""Prometheus metric provider: one instant query -> one number -> one verdict.

Two lessons shape it. Flagger counts "no data" and "Prometheus down" as failed checks, so
an outage rolls back a healthy canary: here both are reported as what they are (None, or a
MetricQueryError with a kind) and the policy's noData / queryError settings decide the
verdict. And prometheus-api-client is blocking, so every query runs in a worker thread
with a hard timeout; Kopf's event loop never waits on the network. The threads are the
provider's own: queries never wait behind Kubernetes calls, and a query's timeout starts
when it is sent, not while it waits for a thread.

Only NaN (0/0: no traffic) is no data. +Inf and -Inf are numbers: a ratio against a stable
revision with no errors is +Inf as soon as the candidate has one, and must fail a max.

A query that waited its whole timeout for a thread was never sent: that is the operator's
overload, never the model's failure, so it is the ``overloaded`` kind, always Inconclusive,
and a rate-limited warning says how to give the operator room.
"""

from __future__ import annotations

import ast
import asyncio
import json
import logging
import math
import re
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

import requests
from prometheus_api_client.exceptions import PrometheusApiClientException
from prometheus_api_client.prometheus_connect import PrometheusConnect
from urllib3.exceptions import ReadTimeoutError
from urllib3.util.retry import Retry

from rewind.adapters.base import MetricQueryError
from rewind.api import (
    AnalysisSpec,
    Measurement,
    MetricSpec,
    QueryErrorKind,
    Verdict,
    format_value,
    parse_duration,
    render_query,
)
from rewind.throttle import Throttle

log = logging.getLogger(__name__)

#: Longest message kept in a Measurement (it lands in status and Events).
MAX_MESSAGE = 512
#: Seconds between two warnings that the operator is overloaded (the count covers the gap).
OVERLOAD_LOG_INTERVAL = 60.0

_STATUS = re.compile(r"HTTP Status Code (\d+) \((.*)\)\s*$", re.DOTALL)


def _error_detail(raw: str) -> str:
    """Prometheus' ``error`` field from the client's "HTTP Status Code N (b'...')" text."""
    try:
        body = ast.literal_eval(raw)
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    except (ValueError, SyntaxError):
        text = raw
    try:
        decoded = json.loads(text)
    except ValueError:
        return text.strip()[:MAX_MESSAGE]
    if isinstance(decoded, dict) and decoded.get("error"):
        kind = decoded.get("errorType")
        return f"{kind}: {decoded['error']}" if kind else str(decoded["error"])
    return text.strip()[:MAX_MESSAGE]


def classify_http_error(exc: PrometheusApiClientException) -> MetricQueryError:
    """Map a non-200 answer to an error kind.

    400 (bad_data) and 422 (execution) are the query's fault; 503 with errorType timeout or
    canceled is a server-side timeout; anything else means we cannot reach a working
    Prometheus (wrong URL, auth, 5xx).
    """
    match = _STATUS.match(str(exc))
    if match is None:
        return MetricQueryError("unreachable", str(exc)[:MAX_MESSAGE])
    status = int(match.group(1))
    detail = _error_detail(match.group(2))
    reason = f"HTTP {status}: {detail}"
    if status in (400, 422):
        return MetricQueryError("bad_query", reason)
    if status == 503 and detail.startswith(("timeout", "canceled")):
        return MetricQueryError("timeout", reason)
    return MetricQueryError("unreachable", reason)


def _root_cause(exc: BaseException) -> str:
    """The reason a request failed, without the URL-encoded query requests puts in it."""
    errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", str(exc))
    if errno:
        return errno.group(1).strip()
    return type(exc).__name__


def _read_timed_out(exc: BaseException) -> bool:
    """With retries off, urllib3 reports a read timeout as MaxRetryError(reason=...), which
    requests raises as a ConnectionError: find the timeout inside."""
    seen: set[int] = set()
    pending: list[object] = [exc]
    while pending:
        item = pending.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, ReadTimeoutError):
            return True
        pending.extend([*item.args, getattr(item, "reason", None), item.__cause__,
                        item.__context__])
    return False


def _consume(future: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned query's outcome, so asyncio does not log it as never retrieved."""
    if not future.cancelled():
        future.exception()


def _number(raw: Any) -> float | None:
    """Float of a sample value. NaN (e.g. 0/0 with no traffic) is no data: None. +Inf and
    -Inf are returned as they are, to be judged like any number (x/0 with x > 0 is +Inf)."""
    try:
        value = float(raw)
    except (TypeError, ValueError) as exc:
        raise MetricQueryError("bad_result", f"sample value {raw!r} is not a number") from exc
    return None if math.isnan(value) else value


def extract_value(result: Any) -> float | None:
    """One number from the ``data.result`` of an instant query.

    A vector with no series is no data; with several series it is ambiguous (an error, not
    a guess at which one to judge); a range vector is not an instant value. A scalar
    (``[time, "value"]``) is accepted as is. A NaN sample is no data (None); +Inf and -Inf
    come back as ``math.inf`` and ``-math.inf``.
    """
    if not isinstance(result, list):
        raise MetricQueryError("bad_result", f"unexpected result {type(result).__name__}")
    if len(result) == 2 and not isinstance(result[0], (dict, list)):
        return _number(result[1])
    if not result:
        return None
    if len(result) > 1:
        series = ", ".join(json.dumps(r.get("metric", {}), sort_keys=True) for r in result[:3])
        raise MetricQueryError(
            "bad_result",
            f"query returned {len(result)} series, expected one (aggregate it, e.g. sum(...)): "
            f"{series}{', ...' if len(result) > 3 else ''}",
        )
    sample = result[0]
    if not isinstance(sample, dict):
        raise MetricQueryError("bad_result", f"unexpected sample {sample!r}"[:MAX_MESSAGE])
    if "value" not in sample:
        raise MetricQueryError("bad_result", "query returned a range vector; use an instant query")
    value = sample["value"]
    if not isinstance(value, list) or len(value) != 2:
        raise MetricQueryError("bad_result", f"unexpected sample value {value!r}"[:MAX_MESSAGE])
    return _number(value[1])


def _truncate(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."


def judge(
    metric: MetricSpec,
    analysis: AnalysisSpec,
    now: datetime,
    revision: int,
    value: float | None = None,
    error: MetricQueryError | None = None,
) -> Measurement:
    """Turn a query outcome into a Measurement, applying thresholds and the policy.

    ``value`` may be +-inf: it is compared with the bounds like any number and shown as
    ``+Inf``/``-Inf`` (the Measurement keeps it in ``valueText``). None is no data
    (``analysis.noData`` decides). An ``error`` follows ``analysis.queryError``, except the
    ``overloaded`` kind, which is always Inconclusive; its kind lands in ``errorKind``.
    Kept pure so the verdict rules can be tested (and reused) without any HTTP.
    """
    thresholds = metric.thresholds
    if value is not None and math.isnan(value):
        value = None  # NaN compares false with every bound: it would pass any threshold
    if error is not None and error.kind == QueryErrorKind.OVERLOADED.value:
        # The operator's saturation says nothing about the model: never a failure.
        verdict = Verdict.INCONCLUSIVE
        message = (f"{metric.name}: query error ({error.kind}): {error.reason}; "
                   "Inconclusive whatever queryError says")
    elif error is not None:
        verdict = Verdict(analysis.query_error.value)
        message = f"{metric.name}: query error ({error.kind}): {error.reason}"
    elif value is None:
        verdict = Verdict(analysis.no_data.value)
        message = f"{metric.name}: no data (noData: {verdict.value})"
    else:
        verdict = thresholds.verdict(value)
        fmt = format_value  # +Inf / -Inf, never "inf" or "no data"
        name, shown = metric.name, fmt(value)
        if thresholds.min is not None and value < thresholds.min:
            message = f"{name} {shown} < min {fmt(thresholds.min)}"
        elif thresholds.max is not None and value > thresholds.max:
            message = f"{name} {shown} > max {fmt(thresholds.max)}"
        elif thresholds.min is not None and thresholds.max is not None:
            message = f"{name} {shown} within [{fmt(thresholds.min)}, {fmt(thresholds.max)}]"
        elif thresholds.max is not None:
            message = f"{name} {shown} <= max {fmt(thresholds.max)}"
        else:
            message = f"{name} {shown} >= min {fmt(cast(float, thresholds.min))}"
    return Measurement(
        metric=metric.name,
        value=value if error is None else None,
        min=thresholds.min,
        max=thresholds.max,
        verdict=verdict,
        at=now,
        revision=revision,
        message=_truncate(message),
        error_kind=error.kind if error is not None else "",
    )


#: Defaults of `rewind-operator --prometheus-timeout` and `--analysis-threads`.
DEFAULT_TIMEOUT = 10.0
DEFAULT_THREADS = 16


class PrometheusProvider:
    """Instant PromQL queries against one Prometheus, off the event loop.

    ``default_timeout`` (seconds) bounds a query whose metric sets no ``timeout``;
    ``max_concurrent`` is the number of query threads (queries in flight at once).
    """

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        disable_ssl: bool = False,
        default_timeout: float = DEFAULT_TIMEOUT,
        max_concurrent: int = DEFAULT_THREADS,
    ) -> None:
        if default_timeout <= 0:
            raise ValueError(f"default_timeout must be positive, got {default_timeout}")
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1, got {max_concurrent}")
        self.url = url.rstrip("/")
        self.max_concurrent = max_concurrent
        self._executor = ThreadPoolExecutor(max_workers=max_concurrent,
                                            thread_name_prefix="rewind-prometheus")
        self._headers = dict(headers) if headers else None
        self._disable_ssl = disable_ssl
        self.default_timeout = default_timeout
        # requests.Session is not thread-safe: one client per worker thread.
        self._local = threading.local()
        #: Overload warnings: queries not sent, reported once per OVERLOAD_LOG_INTERVAL.
        self.overload_reports = Throttle(OVERLOAD_LOG_INTERVAL)

    def _session(self) -> requests.Session:
        """A session whose proxy and CA settings are read from the environment once.

        requests reads them again on every request otherwise (HTTP(S)_PROXY, NO_PROXY,
        REQUESTS_CA_BUNDLE...: about a third of its CPU per query); they cannot change while
        the operator runs, so the answer is the same, fixed here for Prometheus' URL.
        """
        session = requests.Session()
        settings = session.merge_environment_settings(self.url, {}, None, None, None)
        session.trust_env = False
        session.proxies = dict(settings["proxies"])
        session.verify = False if self._disable_ssl else settings["verify"]
        return session

    def _client(self) -> PrometheusConnect:
        client: PrometheusConnect | None = getattr(self._local, "client", None)
        if client is None:
            client = PrometheusConnect(
                url=self.url,
                headers=cast(dict[str, str], self._headers),
                disable_ssl=self._disable_ssl,
                # No retries: the analysis interval is the retry, and the timeout must hold.
                retry=Retry(total=0, raise_on_status=False),
                session=self._session(),
            )
            self._local.client = client
        return client

    def _query_blocking(self, promql: str, timeout: float) -> float | None:
        params = {"timeout": f"{max(1, int(timeout * 1000))}ms"}
        try:
            # The client annotates timeout as int; requests takes float seconds.
            result = self._client().custom_query(promql, params=params, timeout=cast(int, timeout))
        except requests.exceptions.JSONDecodeError as exc:  # also a RequestException
            raise MetricQueryError("bad_result", f"response is not JSON: {exc}") from exc
        except requests.exceptions.ConnectTimeout as exc:
            raise MetricQueryError("unreachable", f"connect timeout: {exc}") from exc
        except requests.exceptions.Timeout as exc:
            raise MetricQueryError("timeout", f"no answer within {timeout:g}s") from exc
        except requests.exceptions.RequestException as exc:
            if _read_timed_out(exc):
                raise MetricQueryError("timeout", f"no answer within {timeout:g}s") from exc
            raise MetricQueryError("unreachable", f"{self.url}: {_root_cause(exc)}") from exc
        except PrometheusApiClientException as exc:
            raise classify_http_error(exc) from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise MetricQueryError(
                "bad_result", f"malformed response: {exc!r}"[:MAX_MESSAGE]
            ) from exc
        return extract_value(result)

    async def query(self, query: str, timeout: float | None = None) -> float | None:
        """Run an instant query: a number (+-inf included), None for no data (an empty
        vector or NaN). ``timeout`` (seconds, default ``default_timeout``) bounds the wait
        for a thread, and then the query on the wire (also sent to Prometheus as its own
        ``timeout``). Raises MetricQueryError; kind ``overloaded`` when no thread was free
        within ``timeout``."""
        limit = self.default_timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        sent: asyncio.Future[None] = loop.create_future()

        def mark_sent() -> None:
            if not sent.done():
                sent.set_result(None)

        def run() -> float | None:
            loop.call_soon_threadsafe(mark_sent)
            return self._query_blocking(query, limit)

        answer = loop.run_in_executor(self._executor, run)
        try:
            return await self._await_answer(sent, answer, limit)
        finally:
            if not answer.done():
                # Cancelled (say, the replica stood down) or timed out: a query still queued
                # never runs; one on the wire ends by its own timeout and nobody waits for it.
                answer.cancel()
                answer.add_done_callback(_consume)

    async def _await_answer(
        self, sent: asyncio.Future[None], answer: asyncio.Future[float | None], limit: float
    ) -> float | None:
        """At most `limit` to get a thread, then `limit` (+1 s) on the wire: 2 x limit + 1 in
        the worst case."""
        try:
            # Waiting for a free thread gets its own budget: a queue that long means the
            # operator is overloaded, which is not the query's (or Prometheus') fault.
            await asyncio.wait_for(asyncio.shield(sent), timeout=limit)
        except TimeoutError as exc:
            self._warn_overloaded(limit)
            raise MetricQueryError(
                "overloaded", f"not sent within {limit:g}s: all {self.max_concurrent} analysis "
                "threads were busy (the operator is overloaded, not the model)") from exc
        try:
            # requests enforces the limit on the wire; the margin covers a thread that
            # overruns it.
            return await asyncio.wait_for(answer, timeout=limit + 1.0)
        except TimeoutError as exc:
            raise MetricQueryError("timeout", f"no answer within {limit:g}s") from exc

    def _warn_overloaded(self, limit: float) -> None:
        """Say (at most once per ``overload_log_interval``) that queries were not sent, and
        what helps. Called on the event loop only."""
        count = self.overload_reports.hit()
        if count is None:
            return
        log.warning(
            "operator overloaded: %d analysis %s not sent since the last report (none of the "
            "%d query threads came free within the query's timeout, %gs); such measurements "
            "are Inconclusive, never failures. Raise --analysis-threads (chart: "
            "analysis.threads), lengthen analysis.interval, use fewer metrics, or shard "
            "releases across operators by namespace (--namespace). More replicas of this "
            "operator do not help: only one is active.",
            count, "query" if count == 1 else "queries", self.max_concurrent, limit,
        )

    def timeout_for(self, metric: MetricSpec) -> float:
        """The metric's query timeout in seconds: its ``timeout``, else ``default_timeout``."""
        return parse_duration(metric.timeout) if metric.timeout else self.default_timeout

    async def measure(
        self,
        metric: MetricSpec,
        variables: Mapping[str, object],
        analysis: AnalysisSpec,
        now: datetime,
        revision: int | None = None,
        timeout: float | None = None,
    ) -> Measurement:
        """Render the metric's template, query it and judge the result.

        Never raises for a failed query: the error becomes a Measurement whose verdict
        follows ``analysis.queryError`` (``overloaded``: always Inconclusive).
        ``revision`` defaults to ``variables["candidate"]``. ``timeout`` (seconds) overrides
        :meth:`timeout_for` (the metric's ``timeout``, else ``default_timeout``).
        """
        if revision is None:
            try:
                revision = int(str(variables.get("candidate", 0)))
            except ValueError:
                revision = 0
        try:
            promql = render_query(metric.query, variables)
        except ValueError as exc:
            error = MetricQueryError("bad_query", f"template: {exc}")
            return judge(metric, analysis, now, revision, error=error)
        try:
            value = await self.query(promql, self.timeout_for(metric) if timeout is None
                                     else timeout)
        except MetricQueryError as exc:
            return judge(metric, analysis, now, revision, error=exc)
        return judge(metric, analysis, now, revision, value=value)


if TYPE_CHECKING:
    from rewind.adapters.base import MetricProvider

    _conforms: type[MetricProvider] = PrometheusProvider
