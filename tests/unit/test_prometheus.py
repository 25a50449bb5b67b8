"""The Prometheus provider against a real HTTP server that speaks /api/v1/query.

No mocks of the client library: the server returns the bodies Prometheus returns (vector,
scalar, empty, errors, garbage), a closed port stands in for an outage and a slow handler
for a hung Prometheus, so the error kinds are what the operator will really see.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import socket
import threading
import time
import typing
import urllib.parse
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from rewind.adapters.base import MetricErrorKind, MetricQueryError
from rewind.adapters.prometheus import PrometheusProvider, extract_value, judge
from rewind.api import AnalysisSpec, MetricSpec, QueryErrorKind, Verdict, query_variables


def sync(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test on a fresh event loop (no pytest-asyncio in this project)."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))

    return run


NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def vector(*values: str) -> dict[str, Any]:
    return {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [
                {"metric": {"pod": f"p{i}"}, "value": [1735787045.0, v]}
                for i, v in enumerate(values)
            ],
        },
    }


def error(error_type: str, message: str) -> dict[str, Any]:
    return {"status": "error", "errorType": error_type, "error": message}


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    delay: float = 0.0


@dataclass
class FakePrometheus:
    """Answers each PromQL text with a canned Reply and remembers what it was asked."""

    url: str
    replies: dict[str, Reply] = field(default_factory=dict)
    seen: list[dict[str, str]] = field(default_factory=list)


@pytest.fixture()
def prom() -> Iterator[FakePrometheus]:
    fake = FakePrometheus(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parsed = urllib.parse.urlparse(self.path)
            params = dict(urllib.parse.parse_qsl(parsed.query))
            fake.seen.append({"path": parsed.path, **params})
            reply = fake.replies.get(params.get("query", ""), Reply(body=vector()))
            if reply.delay:
                time.sleep(reply.delay)
            raw = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)
            except OSError:
                pass  # the client gave up (timeout test)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.block_on_close = False
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield fake
    server.shutdown()
    server.server_close()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def query(prom: FakePrometheus, reply: Reply, timeout: float = 2.0) -> float | None:
    prom.replies["q"] = reply
    return await PrometheusProvider(prom.url).query("q", timeout=timeout)


async def query_error(prom: FakePrometheus, reply: Reply, timeout: float = 2.0) -> MetricQueryError:
    with pytest.raises(MetricQueryError) as caught:
        await query(prom, reply, timeout)
    return caught.value


# -- query: values ---------------------------------------------------------------------


@sync
async def test_one_series_is_its_value(prom: FakePrometheus) -> None:
    assert await query(prom, Reply(body=vector("0.12"))) == pytest.approx(0.12)
    assert prom.seen[-1]["path"] == "/api/v1/query"
    assert prom.seen[-1]["query"] == "q"
    assert prom.seen[-1]["timeout"] == "2000ms"  # Prometheus stops evaluating too


@sync
async def test_empty_vector_is_no_data_not_an_error(prom: FakePrometheus) -> None:
    assert await query(prom, Reply(body=vector())) is None


@sync
async def test_nan_is_no_data(prom: FakePrometheus) -> None:
    # 0/0 with no traffic is NaN: that is missing data, not a failing canary.
    assert await query(prom, Reply(body=vector("NaN"))) is None


@pytest.mark.parametrize(("raw", "value"), [("+Inf", math.inf), ("-Inf", -math.inf)])
@sync
async def test_infinities_are_numbers_not_no_data(
    prom: FakePrometheus, raw: str, value: float
) -> None:
    # errors/0 with errors > 0 is +Inf: the worst candidate there is, not a missing value.
    assert await query(prom, Reply(body=vector(raw))) == value
    scalar = {"status": "success", "data": {"resultType": "scalar", "result": [1.0, raw]}}
    assert await query(prom, Reply(body=scalar)) == value


@sync
async def test_scalar_result_is_accepted(prom: FakePrometheus) -> None:
    body = {"status": "success", "data": {"resultType": "scalar", "result": [1.0, "3.5"]}}
    assert await query(prom, Reply(body=body)) == 3.5


# -- query: errors, each with its kind ---------------------------------------------------


@sync
async def test_several_series_are_ambiguous(prom: FakePrometheus) -> None:
    err = await query_error(prom, Reply(body=vector("0.1", "0.2")))
    assert err.kind == "bad_result"
    assert "2 series" in err.reason and "sum(" in err.reason


@sync
async def test_range_vector_is_not_an_instant_value(prom: FakePrometheus) -> None:
    body = {
        "status": "success",
        "data": {"resultType": "matrix", "result": [{"metric": {}, "values": [[1, "1"]]}]},
    }
    assert (await query_error(prom, Reply(body=body))).kind == "bad_result"


@sync
async def test_non_numeric_sample_is_a_bad_result(prom: FakePrometheus) -> None:
    assert (await query_error(prom, Reply(body=vector("lots")))).kind == "bad_result"


@pytest.mark.parametrize("body", [b"<html>proxy error</html>", {"status": "success"}])
@sync
async def test_malformed_body_is_a_bad_result(prom: FakePrometheus, body: Any) -> None:
    assert (await query_error(prom, Reply(body=body))).kind == "bad_result"


@sync
async def test_unparseable_promql_is_a_bad_query_with_prometheus_reason(
    prom: FakePrometheus,
) -> None:
    reply = Reply(400, error("bad_data", '1:5: parse error: unexpected "}"'))
    err = await query_error(prom, reply)
    assert err.kind == "bad_query"
    assert "HTTP 400" in err.reason and "parse error" in err.reason


@sync
async def test_execution_error_is_a_bad_query(prom: FakePrometheus) -> None:
    reply = Reply(422, error("execution", "many-to-many matching not allowed"))
    err = await query_error(prom, reply)
    assert err.kind == "bad_query" and "many-to-many" in err.reason


@sync
async def test_server_side_timeout_is_a_timeout(prom: FakePrometheus) -> None:
    reply = Reply(503, error("timeout", "query timed out in expression evaluation"))
    assert (await query_error(prom, reply)).kind == "timeout"


@pytest.mark.parametrize("status", [500, 502, 404])
@sync
async def test_server_errors_mean_no_working_prometheus(prom: FakePrometheus, status: int) -> None:
    err = await query_error(prom, Reply(status, error("internal", "boom")))
    assert err.kind == "unreachable" and f"HTTP {status}" in err.reason


@sync
async def test_the_proxy_environment_is_honoured(prom: FakePrometheus,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment is read once per query thread, not per query, with the same result:
    HTTP_PROXY carries the query, NO_PROXY bypasses it."""
    for name in ("HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", prom.url)  # the fake answers as a proxy would
    prom.replies["up"] = Reply(body=vector("1"))
    unresolvable = "http://prometheus.invalid:9090"
    assert await PrometheusProvider(unresolvable).query("up", timeout=5) == 1.0
    assert prom.seen[-1]["path"] == "/api/v1/query"
    monkeypatch.setenv("NO_PROXY", "prometheus.invalid")
    with pytest.raises(MetricQueryError) as caught:
        await PrometheusProvider(unresolvable).query("up", timeout=5)
    assert caught.value.kind == "unreachable"


def test_the_ca_bundle_environment_and_disable_ssl_are_honoured(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    assert PrometheusProvider("https://prom.example:9090")._session().verify == str(bundle)
    assert PrometheusProvider("https://prom.example:9090",
                              disable_ssl=True)._session().verify is False
    session = PrometheusProvider("https://prom.example:9090")._session()
    assert session.trust_env is False  # read once here, not again per query


@sync
async def test_closed_port_is_unreachable_with_a_readable_reason() -> None:
    url = closed_port_url()
    with pytest.raises(MetricQueryError) as caught:
        await PrometheusProvider(url).query('sum(rate(x{a="b"}[1m]))', timeout=5)
    assert caught.value.kind == "unreachable"
    # The cause, not requests' retry banner with the URL-encoded query in it.
    assert caught.value.reason == f"{url}: Connection refused"


@sync
async def test_slow_prometheus_times_out_within_the_budget(prom: FakePrometheus) -> None:
    started = time.monotonic()
    err = await query_error(prom, Reply(body=vector("1"), delay=1.5), timeout=0.3)
    assert err.kind == "timeout"
    assert time.monotonic() - started < 1.0


@sync
async def test_a_slow_query_does_not_block_the_event_loop(prom: FakePrometheus) -> None:
    prom.replies["slow"] = Reply(body=vector("1"), delay=0.5)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.02)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        assert await PrometheusProvider(prom.url).query("slow", timeout=2) == 1.0
    finally:
        task.cancel()
    assert ticks >= 10


@sync
async def test_concurrent_queries_each_get_their_own_answer(prom: FakePrometheus) -> None:
    provider = PrometheusProvider(prom.url)
    for i in range(8):
        prom.replies[f"q{i}"] = Reply(body=vector(str(i)), delay=0.05)
    values = await asyncio.gather(*(provider.query(f"q{i}", timeout=2) for i in range(8)))
    assert values == [float(i) for i in range(8)]


# -- measure: template + query + thresholds + policy -------------------------------------

ERROR_RATE = MetricSpec(
    name="error-rate",
    query='sum(rate(errors{workload="{{candidateWorkload}}",ns="{{namespace}}"}[{{interval}}]))',
    thresholds={"max": 0.05},
)
VARIABLES = query_variables(
    namespace="shop", release="fraud", candidate=3, stable=2, interval="30s"
)
RENDERED = 'sum(rate(errors{workload="fraud-r3",ns="shop"}[30s]))'


@sync
async def test_measure_renders_the_template_and_fails_above_max(prom: FakePrometheus) -> None:
    prom.replies[RENDERED] = Reply(body=vector("0.12"))
    m = await PrometheusProvider(prom.url).measure(ERROR_RATE, VARIABLES, AnalysisSpec(), NOW)
    assert prom.seen[-1]["query"] == RENDERED
    assert m.verdict == Verdict.FAIL
    assert m.message == "error-rate 0.12 > max 0.05"
    assert (m.metric, m.value, m.min, m.max, m.at, m.revision) == (
        "error-rate",
        0.12,
        None,
        0.05,
        NOW,
        3,
    )


@sync
async def test_measure_passes_within_threshold(prom: FakePrometheus) -> None:
    prom.replies[RENDERED] = Reply(body=vector("0.01"))
    m = await PrometheusProvider(prom.url).measure(ERROR_RATE, VARIABLES, AnalysisSpec(), NOW)
    assert (m.verdict, m.value, m.message) == (Verdict.PASS, 0.01, "error-rate 0.01 <= max 0.05")


@pytest.mark.parametrize("policy", ["Inconclusive", "Fail", "Pass"])
@sync
async def test_no_data_follows_the_policy(prom: FakePrometheus, policy: str) -> None:
    prom.replies[RENDERED] = Reply(body=vector())
    analysis = AnalysisSpec.model_validate({"noData": policy})
    m = await PrometheusProvider(prom.url).measure(ERROR_RATE, VARIABLES, analysis, NOW)
    assert m.verdict == Verdict(policy)
    assert m.value is None and "no data" in m.message


@pytest.mark.parametrize("policy", ["Inconclusive", "Fail"])
@sync
async def test_outage_follows_the_query_error_policy_not_a_hardcoded_fail(policy: str) -> None:
    analysis = AnalysisSpec.model_validate({"queryError": policy})
    m = await PrometheusProvider(closed_port_url()).measure(ERROR_RATE, VARIABLES, analysis, NOW)
    assert m.verdict == Verdict(policy)
    assert m.value is None and "unreachable" in m.message


@sync
async def test_bad_query_is_reported_as_such(prom: FakePrometheus) -> None:
    prom.replies[RENDERED] = Reply(400, error("bad_data", "parse error"))
    m = await PrometheusProvider(prom.url).measure(ERROR_RATE, VARIABLES, AnalysisSpec(), NOW)
    assert m.verdict == Verdict.INCONCLUSIVE
    assert "bad_query" in m.message and "parse error" in m.message


@sync
async def test_missing_template_variable_never_reaches_prometheus(prom: FakePrometheus) -> None:
    partial = {k: v for k, v in VARIABLES.items() if k != "namespace"}
    analysis = AnalysisSpec.model_validate({"queryError": "Fail"})
    m = await PrometheusProvider(prom.url).measure(ERROR_RATE, partial, analysis, NOW, revision=7)
    assert prom.seen == []
    assert (m.verdict, m.revision) == (Verdict.FAIL, 7)
    assert "bad_query" in m.message and "namespace" in m.message


# -- judge: the verdict rules, pure ------------------------------------------------------


def metric(**thresholds: float) -> MetricSpec:
    return MetricSpec(name="latency", query="up", thresholds=thresholds)


@pytest.mark.parametrize(
    ("thresholds", "value", "verdict", "message"),
    [
        ({"max": 0.05}, 0.05, "Pass", "latency 0.05 <= max 0.05"),  # bounds are inclusive
        ({"min": 0.9}, 0.9, "Pass", "latency 0.9 >= min 0.9"),
        ({"min": 0.9}, 0.5, "Fail", "latency 0.5 < min 0.9"),
        ({"min": 1, "max": 2}, 1.5, "Pass", "latency 1.5 within [1, 2]"),
        ({"min": 1, "max": 2}, 2.5, "Fail", "latency 2.5 > max 2"),
        ({"max": 100}, 123456789.0, "Fail", "latency 1.235e+08 > max 100"),
    ],
)
def test_thresholds(thresholds: dict[str, float], value: float, verdict: str, message: str) -> None:
    m = judge(metric(**thresholds), AnalysisSpec(), NOW, 3, value=value)
    assert (m.verdict, m.message) == (Verdict(verdict), message)
    assert (m.min, m.max) == (thresholds.get("min"), thresholds.get("max"))


@pytest.mark.parametrize("no_data", ["Inconclusive", "Fail", "Pass"])
@pytest.mark.parametrize(
    ("thresholds", "value", "verdict", "message"),
    [
        ({"max": 2}, math.inf, "Fail", "latency +Inf > max 2"),
        ({"min": 0.5, "max": 2}, math.inf, "Fail", "latency +Inf > max 2"),
        ({"min": 0.5}, math.inf, "Pass", "latency +Inf >= min 0.5"),
        ({"min": 0.5}, -math.inf, "Fail", "latency -Inf < min 0.5"),
        ({"min": 0.5, "max": 2}, -math.inf, "Fail", "latency -Inf < min 0.5"),
        ({"max": 2}, -math.inf, "Pass", "latency -Inf <= max 2"),
    ],
)
def test_infinities_are_judged_by_the_thresholds_whatever_no_data_says(
    no_data: str, thresholds: dict[str, float], value: float, verdict: str, message: str
) -> None:
    analysis = AnalysisSpec.model_validate({"noData": no_data})
    m = judge(metric(**thresholds), analysis, NOW, 3, value=value)
    assert (m.verdict, m.message) == (Verdict(verdict), message)
    # Stored as the schema allows (value is a JSON number), shown as Prometheus shows it.
    assert (m.value, m.value_text, m.shown, m.error_kind) == (None, message.split()[1],
                                                             message.split()[1], "")


@pytest.mark.parametrize("no_data", ["Inconclusive", "Fail", "Pass"])
def test_nan_given_to_judge_is_no_data_never_a_pass(no_data: str) -> None:
    analysis = AnalysisSpec.model_validate({"noData": no_data})
    m = judge(metric(max=2), analysis, NOW, 3, value=math.nan)
    assert m.verdict == Verdict(no_data)
    assert (m.value, m.shown) == (None, "no data") and "no data" in m.message


@pytest.mark.parametrize("no_data", ["Inconclusive", "Fail", "Pass"])
@sync
async def test_measure_an_infinite_ratio_fails_its_max(prom: FakePrometheus, no_data: str) -> None:
    """candidate errors / stable errors with a flawless stable: +Inf, a failure, shown as such
    (the old provider called it no data: Pass with noData: Pass, a hold forever otherwise)."""
    prom.replies[RENDERED] = Reply(body=vector("+Inf"))
    analysis = AnalysisSpec.model_validate({"noData": no_data})
    m = await PrometheusProvider(prom.url).measure(ERROR_RATE, VARIABLES, analysis, NOW)
    assert (m.verdict, m.message, m.value_text) == (
        Verdict.FAIL, "error-rate +Inf > max 0.05", "+Inf")


def test_long_error_reasons_are_truncated_for_status() -> None:
    err = MetricQueryError("bad_query", "x" * 5000)
    m = judge(metric(max=1), AnalysisSpec(), NOW, 3, error=err)
    assert len(m.message) <= 512 and m.message.endswith("...")


def test_extract_value_rejects_non_lists() -> None:
    with pytest.raises(MetricQueryError, match="bad_result"):
        extract_value({"resultType": "vector"})


# -- threads: queries have their own, and the timeout starts when the query is sent ------


@sync
async def test_time_waiting_for_a_thread_does_not_count_against_the_timeout(
    prom: FakePrometheus,
) -> None:
    provider = PrometheusProvider(prom.url, max_concurrent=1)
    prom.replies["first"] = Reply(body=vector("1"), delay=0.7)
    prom.replies["second"] = Reply(body=vector("2"), delay=0.5)
    # The second query waits ~0.7 s for the only thread, then takes 0.5 s: 1.2 s in all,
    # over its 1 s timeout, yet well inside it once sent.
    values = await asyncio.gather(provider.query("first", timeout=1.0),
                                  provider.query("second", timeout=1.0))
    assert list(values) == [1.0, 2.0]


async def saturate(provider: PrometheusProvider, prom: FakePrometheus,
                   delay: float = 1.0) -> list[asyncio.Task[float | None]]:
    """Occupy every query thread of ``provider`` with a slow query; returns their tasks once
    each of them is on the wire (the server has seen it)."""
    prom.replies["hog"] = Reply(body=vector("1"), delay=delay)
    before = len(prom.seen)
    hogs = [asyncio.create_task(provider.query("hog", timeout=delay + 2))
            for _ in range(provider.max_concurrent)]
    deadline = time.monotonic() + 5
    while len(prom.seen) < before + provider.max_concurrent:
        assert time.monotonic() < deadline, "the slow queries never reached the server"
        await asyncio.sleep(0.01)
    return hogs


@sync
async def test_a_query_that_never_gets_a_thread_says_the_operator_is_overloaded(
    prom: FakePrometheus,
) -> None:
    provider = PrometheusProvider(prom.url, max_concurrent=1)
    hogs = await saturate(provider, prom)
    with pytest.raises(MetricQueryError) as caught:
        await provider.query("starved", timeout=0.3)
    assert caught.value.kind == "overloaded"
    assert "all 1 analysis threads were busy" in caught.value.reason
    assert "starved" not in [q.get("query") for q in prom.seen]  # never sent
    assert await asyncio.gather(*hogs) == [1.0]


@sync
async def test_overload_is_inconclusive_even_with_query_error_fail_other_errors_still_fail(
    prom: FakePrometheus,
) -> None:
    """The operator's saturation must never roll back a model: queryError: Fail applies to
    Prometheus' errors, not to a query the operator had no thread to send."""
    provider = PrometheusProvider(prom.url, max_concurrent=2, default_timeout=0.3)
    analysis = AnalysisSpec.model_validate({"queryError": "Fail"})
    prom.replies[RENDERED] = Reply(body=vector("0.01"))  # a healthy candidate
    hogs = await saturate(provider, prom)
    m = await provider.measure(ERROR_RATE, VARIABLES, analysis, NOW)
    assert (m.verdict, m.error_kind, m.value, m.value_text) == (
        Verdict.INCONCLUSIVE, "overloaded", None, "")
    assert "overloaded" in m.message and "queryError" in m.message
    await asyncio.gather(*hogs)
    # A free thread, and a Prometheus slower than the timeout: that is Prometheus' error.
    prom.replies[RENDERED] = Reply(body=vector("0.01"), delay=1.0)
    m = await provider.measure(ERROR_RATE, VARIABLES, analysis, NOW)
    assert (m.verdict, m.error_kind) == (Verdict.FAIL, "timeout")


@sync
async def test_overload_is_logged_once_per_interval_with_what_to_do(
    prom: FakePrometheus, caplog: pytest.LogCaptureFixture
) -> None:
    provider = PrometheusProvider(prom.url, max_concurrent=1)
    hogs = await saturate(provider, prom, delay=1.5)
    with caplog.at_level(logging.WARNING, logger="rewind.adapters.prometheus"):
        for _ in range(3):
            with pytest.raises(MetricQueryError):
                await provider.query("starved", timeout=0.1)
        provider.overload_reports.interval = 0.0  # the interval is over: the next one reports
        with pytest.raises(MetricQueryError):
            await provider.query("starved", timeout=0.1)
    await asyncio.gather(*hogs)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert "1 analysis query not sent" in warnings[0]
    assert "3 analysis queries not sent" in warnings[1]  # the two held back, and this one
    for advice in ("--analysis-threads", "analysis.interval", "fewer metrics", "--namespace",
                   "replicas of this operator do not help"):
        assert advice in warnings[0]


def test_error_kinds_of_the_adapter_and_the_api_agree() -> None:
    assert set(typing.get_args(MetricErrorKind)) == {k.value for k in QueryErrorKind}


@pytest.mark.parametrize("kwargs", [{"default_timeout": 0}, {"max_concurrent": 0}])
def test_provider_refuses_a_zero_timeout_or_no_threads(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        PrometheusProvider("http://127.0.0.1:1", **kwargs)  # type: ignore[arg-type]


# -- timeouts: the operator's default and a metric's own --------------------------------


@sync
async def test_a_metric_timeout_lets_a_slow_healthy_prometheus_answer(
    prom: FakePrometheus,
) -> None:
    """Thanos answering in 1.5 s: a timeout under the operator's 1 s default, a Pass with
    `timeout: 3s` on the metric, which both Prometheus and the HTTP client are given."""
    provider = PrometheusProvider(prom.url, default_timeout=1.0)
    prom.replies[RENDERED] = Reply(body=vector("0.01"), delay=1.5)
    analysis = AnalysisSpec.model_validate({"queryError": "Fail"})
    m = await provider.measure(ERROR_RATE, VARIABLES, analysis, NOW)
    # The HTTP client gave up at 1 s: had it waited for the answer (1.5 s, within the
    # provider's own 1 s + 1 s margin), this would be a Pass.
    assert (m.verdict, m.error_kind) == (Verdict.FAIL, "timeout")
    assert "no answer within 1s" in m.message
    assert prom.seen[-1]["timeout"] == "1000ms"
    patient = ERROR_RATE.model_copy(update={"timeout": "3s"})
    m = await provider.measure(patient, VARIABLES, analysis, NOW)
    assert (m.verdict, m.value, m.error_kind) == (Verdict.PASS, 0.01, "")
    assert prom.seen[-1]["timeout"] == "3000ms"
    assert provider.timeout_for(patient) == 3.0 and provider.timeout_for(ERROR_RATE) == 1.0


@sync
async def test_queries_do_not_wait_behind_kubernetes_calls(prom: FakePrometheus) -> None:
    """Kubernetes calls run on the loop's default executor; saturate it."""
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=1))
    blocker = asyncio.create_task(asyncio.to_thread(time.sleep, 1.5))
    await asyncio.sleep(0.05)
    prom.replies["q"] = Reply(body=vector("3"))
    started = time.monotonic()
    assert await PrometheusProvider(prom.url).query("q", timeout=1.0) == 3.0
    assert time.monotonic() - started < 1.0
    await blocker
