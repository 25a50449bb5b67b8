"""The operator's runtime settings: what the chart passes becomes the right header, the
Prometheus provider's timeout and threads."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from kubernetes import client
from kubernetes.config import kube_config

from rewind.handlers import RuntimeConfig, _api_client
from rewind.main import main, parse_args


def test_bearer_token_becomes_an_authorization_header() -> None:
    config = RuntimeConfig(prometheus_token="t0ken", prometheus_username=None)
    assert config.prometheus_headers() == {"Authorization": "Bearer t0ken"}


def test_basic_auth_is_encoded() -> None:
    config = RuntimeConfig(prometheus_token=None, prometheus_username="alice",
                           prometheus_password="pa55")
    header = config.prometheus_headers()
    assert header is not None
    scheme, encoded = header["Authorization"].split(" ")
    assert scheme == "Basic"
    assert base64.b64decode(encoded).decode() == "alice:pa55"


def test_no_credentials_no_header() -> None:
    config = RuntimeConfig(prometheus_token=None, prometheus_username=None)
    assert config.prometheus_headers() is None


def test_the_kubernetes_connection_pool_is_as_large_as_the_thread_pool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A smaller pool makes busy threads discard connections and redo TLS handshakes
    (bench_scale: p99 gap between analyses 21.5 s instead of 10.25 s)."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
    }))
    # The client reads $KUBECONFIG once, at import.
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    threads = RuntimeConfig().worker_threads
    default = client.Configuration.get_default_copy()
    try:
        api = _api_client(threads)
    finally:
        client.Configuration.set_default(default)  # loading set this process's default
    assert api.configuration.connection_pool_maxsize == threads
    assert api.rest_client.pool_manager.connection_pool_kw["maxsize"] == threads


# -- analysis queries: timeout and threads ---------------------------------------------


@pytest.fixture()
def no_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv("PROMETHEUS_TIMEOUT", raising=False)
    monkeypatch.delenv("REWIND_ANALYSIS_THREADS", raising=False)
    return monkeypatch


def test_query_timeout_and_threads_default_to_10s_and_16(no_env: pytest.MonkeyPatch) -> None:
    args = parse_args([])
    assert (args.prometheus_timeout, args.analysis_threads) == (10.0, 16)
    provider = RuntimeConfig().prometheus_provider()
    assert (provider.default_timeout, provider.max_concurrent) == (10.0, 16)


def test_query_timeout_and_threads_from_flags_then_env(no_env: pytest.MonkeyPatch) -> None:
    args = parse_args(["--prometheus-timeout", "1m30s", "--analysis-threads", "64"])
    assert (args.prometheus_timeout, args.analysis_threads) == (90.0, 64)
    no_env.setenv("PROMETHEUS_TIMEOUT", "45s")
    no_env.setenv("REWIND_ANALYSIS_THREADS", "8")
    assert (parse_args([]).prometheus_timeout, parse_args([]).analysis_threads) == (45.0, 8)
    assert parse_args(["--prometheus-timeout", "500ms"]).prometheus_timeout == 0.5
    provider = RuntimeConfig().prometheus_provider()  # `kopf run` reads the same env
    assert (provider.default_timeout, provider.max_concurrent) == (45.0, 8)


@pytest.mark.parametrize(
    ("flag", "value", "why"),
    [
        ("--prometheus-timeout", "0s", "must be more than 0s"),
        ("--prometheus-timeout", "10", "invalid duration"),
        ("--analysis-threads", "0", "not between 1 and 1024"),
        ("--analysis-threads", "many", "not a whole number"),
    ],
)
def test_bad_timeout_or_thread_count_is_refused_with_the_reason(
    no_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], flag: str, value: str,
    why: str,
) -> None:
    with pytest.raises(SystemExit):
        parse_args([flag, value])
    err = capsys.readouterr().err
    assert flag in err and why in err


def test_the_operator_gives_its_provider_the_flags(no_env: pytest.MonkeyPatch) -> None:
    started: dict[str, Any] = {}
    no_env.setattr(kopf, "configure", lambda **_: None)
    no_env.setattr(kopf, "run", lambda **kwargs: started.update(kwargs))
    assert main(["--prometheus-url", "http://thanos:9090", "--prometheus-timeout", "25s",
                 "--analysis-threads", "48"]) == 0
    memo = started["memo"]
    assert isinstance(memo, kopf.Memo)
    provider = memo["config"].prometheus_provider()
    assert (provider.url, provider.default_timeout, provider.max_concurrent) == (
        "http://thanos:9090", 25.0, 48)


# -- revision records: retention -------------------------------------------------------


def test_history_retention_defaults_to_30_days_then_flag_then_env(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("REWIND_HISTORY_RETENTION", raising=False)
    assert parse_args([]).history_retention == 30 * 24 * 3600.0
    assert RuntimeConfig().history_retention == 30 * 24 * 3600.0
    assert parse_args(["--history-retention", "90m"]).history_retention == 5400.0
    monkeypatch.setenv("REWIND_HISTORY_RETENTION", "48h")
    assert parse_args([]).history_retention == 48 * 3600.0
    assert RuntimeConfig().history_retention == 48 * 3600.0  # `kopf run` reads the env


@pytest.mark.parametrize(("value", "why"), [("0s", "must be more than 0s"),
                                            ("30d", "invalid duration")])
def test_a_bad_history_retention_is_refused_with_the_reason(
    capsys: pytest.CaptureFixture[str], value: str, why: str
) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--history-retention", value])
    err = capsys.readouterr().err
    assert "--history-retention" in err and why in err


def test_the_operator_gets_the_history_retention(no_env: pytest.MonkeyPatch) -> None:
    started: dict[str, Any] = {}
    no_env.setattr(kopf, "configure", lambda **_: None)
    no_env.setattr(kopf, "run", lambda **kwargs: started.update(kwargs))
    assert main(["--history-retention", "2h"]) == 0
    assert started["memo"]["config"].history_retention == 7200.0


def test_the_sweep_runs_a_tenth_of_the_retention_between_1s_and_10min() -> None:
    from rewind.handlers import sweep_interval

    assert sweep_interval(3.0) == 1.0
    assert sweep_interval(300.0) == 30.0
    assert sweep_interval(30 * 24 * 3600.0) == 600.0
