"""Tests of the simulated model server: config, seeded behaviour, HTTP surface, CLI."""

from __future__ import annotations

import json
import statistics
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rewind_demo._http import request
from rewind_demo.modelserver import (
    SCORE_BUCKETS,
    ModelServerConfig,
    ModelSim,
    config_from_env,
    env_list_to_dict,
    parse_listening_line,
    spawn_modelserver,
    start_modelserver,
)


def test_config_from_env_reads_sim_vars_and_ignores_others() -> None:
    env = {
        "SIM_REVISION": "fraud-r3",
        "SIM_NAMESPACE": "ml",
        "SIM_ERROR_RATE": "0.02",
        "SIM_LATENCY_MS": "40",
        "SIM_LATENCY_JITTER_MS": "10",
        "SIM_SCORE_MEAN": "0.3",
        "SIM_SCORE_STDDEV": "0.1",
        "SIM_SEED": "7",
        "LOG_LEVEL": "info",
    }
    cfg = config_from_env(env)
    assert cfg == ModelServerConfig(
        revision="fraud-r3",
        namespace="ml",
        error_rate=0.02,
        latency_ms=40.0,
        latency_jitter_ms=10.0,
        score_mean=0.3,
        score_stddev=0.1,
        seed=7,
    )
    assert config_from_env(cfg.to_env()) == cfg
    assert config_from_env(env, error_rate=0.5).error_rate == 0.5


def test_env_list_to_dict_accepts_kubernetes_env() -> None:
    env = env_list_to_dict([{"name": "SIM_ERROR_RATE", "value": "0.1"}, {"name": "X"}])
    assert env == {"SIM_ERROR_RATE": "0.1", "X": ""}
    assert config_from_env(env).error_rate == 0.1


@pytest.mark.parametrize(
    "env",
    [
        {"SIM_ERROR_RATE": "1.5"},
        {"SIM_ERROR_RATE": "abc"},
        {"SIM_LATENCY_MS": "-1"},
        {"SIM_SCORE_MEAN": "2"},
        {"SIM_SCORE_STDDEV": "-0.1"},
        {"SIM_REVISION": ""},
    ],
)
def test_invalid_config_is_rejected(env: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        config_from_env(env)


def test_same_seed_same_sequence() -> None:
    cfg = ModelServerConfig(revision="a", error_rate=0.3, seed=42)
    sim1, sim2 = ModelSim(cfg), ModelSim(cfg)
    a = [sim1.decide(i).body for i in range(200)]
    b = [sim2.decide(i).body for i in range(200)]
    assert a == b
    other = ModelSim(ModelServerConfig(revision="a", error_rate=0.3, seed=43))
    assert [other.decide(i).body for i in range(200)] != a


def test_error_rate_and_score_distribution_honour_config() -> None:
    sim = ModelSim(
        ModelServerConfig(revision="r", error_rate=0.2, score_mean=0.3, score_stddev=0.1, seed=1)
    )
    outcomes = [sim.predict(i, sleep=False) for i in range(5000)]
    errors = sum(p.status == 500 for p in outcomes)
    assert abs(errors / len(outcomes) - 0.2) < 0.02
    scores = [p.body["score"] for p in outcomes if p.status == 200]
    assert abs(statistics.fmean(scores) - 0.3) < 0.01
    assert abs(statistics.pstdev(scores) - 0.1) < 0.01
    assert all(0.0 <= s <= 1.0 for s in scores)


@pytest.mark.parametrize(("rate", "expected"), [(0.0, 0), (1.0, 100)])
def test_error_rate_extremes(rate: float, expected: int) -> None:
    sim = ModelSim(ModelServerConfig(revision="r", error_rate=rate, seed=3))
    assert sum(sim.predict(sleep=False).status == 500 for _ in range(100)) == expected


def test_latency_draws_stay_within_jitter() -> None:
    sim = ModelSim(ModelServerConfig(revision="r", latency_ms=40, latency_jitter_ms=10, seed=5))
    delays = [sim.decide().delay_s for _ in range(1000)]
    assert min(delays) >= 0.030 and max(delays) <= 0.050
    assert abs(statistics.fmean(delays) - 0.040) < 0.002


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def test_http_predict_healthz_metrics() -> None:
    cfg = ModelServerConfig(
        revision="fraud-r3", namespace="ml", model_version="2.1.0", score_mean=0.3, seed=9
    )
    with start_modelserver(cfg) as srv:
        status, body = request("GET", srv.url + "/healthz")
        assert (status, body) == (200, b"ok\n")
        for i in range(20):
            status, body = request("POST", srv.url + "/predict", json.dumps({"id": i}).encode())
            assert status == 200
            answer = json.loads(body)
            assert answer["revision"] == "fraud-r3" and answer["id"] == i
            assert 0.0 <= answer["score"] <= 1.0 and answer["label"] in (0, 1)
        assert request("POST", srv.url + "/predict", b"{not json")[0] == 400
        assert request("GET", srv.url + "/nope")[0] == 404
        status, metrics = request("GET", srv.url + "/metrics")
    assert status == 200
    samples = _samples(metrics.decode())
    rev = {"revision": "fraud-r3", "namespace": "ml"}
    assert (dict(rev, code="200"), 20.0) in samples["model_predictions_total"]
    buckets = {
        lbl["le"]: v
        for lbl, v in samples["model_prediction_score_bucket"]
        if {k: lbl[k] for k in rev} == rev
    }
    assert list(buckets) == [*(str(b) for b in SCORE_BUCKETS), "+Inf"]
    assert buckets["+Inf"] == 20.0
    assert (dict(rev), 20.0) in samples["model_prediction_latency_seconds_count"]
    assert (dict(rev, model_version="2.1.0"), 1.0) in samples["model_info"]


def test_http_latency_and_errors_honour_config() -> None:
    cfg = ModelServerConfig(
        revision="slow", error_rate=1.0, latency_ms=60, latency_jitter_ms=10, seed=2
    )
    with start_modelserver(cfg) as srv:
        for _ in range(3):
            started = time.monotonic()
            status, body = request("POST", srv.url + "/predict", b"{}")
            elapsed = time.monotonic() - started
            assert status == 500 and json.loads(body)["error"]
            assert 0.048 <= elapsed < 1.0  # 50 ms minimum draw, small timer slack
        metrics = _samples(request("GET", srv.url + "/metrics")[1].decode())
    errors = [v for lbl, v in metrics["model_predictions_total"] if lbl["code"] == "500"]
    assert errors == [3.0]
    assert [v for _, v in metrics["model_prediction_score_count"]] == [0.0]


def _dependency_up(srv_url: str) -> float:
    samples = _samples(request("GET", srv_url + "/metrics")[1].decode())
    [(labels, value)] = samples["model_dependency_up"]
    assert labels["dependency"] == "feature-store"
    return value


def test_dependency_outage_fails_every_prediction_until_it_ends() -> None:
    with start_modelserver(ModelServerConfig(revision="fraud-r2", seed=4)) as srv:
        assert request("POST", srv.url + "/predict", b"{}")[0] == 200
        assert _dependency_up(srv.url) == 1.0
        status, body = request("POST", srv.url + "/admin/dependency", b'{"up": false}')
        assert (status, json.loads(body)) == (200, {"dependency": "feature-store", "up": False})
        answers = [request("POST", srv.url + "/predict", b"{}") for _ in range(5)]
        assert {s for s, _ in answers} == {500}
        assert json.loads(answers[0][1])["error"] == "feature-store unavailable"
        assert _dependency_up(srv.url) == 0.0
        assert request("POST", srv.url + "/admin/dependency", b'{"up": true}')[0] == 200
        assert request("POST", srv.url + "/predict", b"{}")[0] == 200
        assert _dependency_up(srv.url) == 1.0
        # Refused: not a boolean, a non-positive duration.
        for bad in (b'{"up": "no"}', b'{"up": false, "seconds": 0}', b"[]", b"{nope"):
            assert request("POST", srv.url + "/admin/dependency", bad)[0] == 400, bad
        assert _dependency_up(srv.url) == 1.0


def test_a_timed_outage_ends_by_itself_and_the_gauge_says_so_without_requests() -> None:
    gauge = b'model_dependency_up{dependency="feature-store",namespace="default",revision="r"}'
    sim = ModelSim(ModelServerConfig(revision="r", seed=1))
    started = time.monotonic()
    sim.set_dependency(False, seconds=0.2)
    assert sim.predict(sleep=False).status == 500
    assert gauge + b" 0.0" in sim.metrics_text()
    while gauge + b" 1.0" not in sim.metrics_text():  # bounded: the outage lasts 0.2 s
        assert time.monotonic() - started < 5.0
        time.sleep(0.02)
    assert time.monotonic() - started >= 0.2
    assert sim.predict(sleep=False).status == 200
    with pytest.raises(ValueError):
        sim.set_dependency(False, seconds=-1)


def test_cli_prints_port_first_and_serves() -> None:
    cfg = ModelServerConfig(revision="fraud-r1", error_rate=0.0, seed=1)
    with spawn_modelserver(cfg, startup_timeout=15) as proc:
        assert proc.info["config"]["revision"] == "fraud-r1"
        assert proc.port > 0
        assert request("GET", proc.url + "/healthz")[0] == 200
        status, body = request("POST", proc.url + "/predict", b"{}")
        assert status == 200 and json.loads(body)["revision"] == "fraud-r1"
    assert proc.proc.returncode == 0


def test_parse_listening_line_rejects_other_output() -> None:
    assert parse_listening_line(b'{"event": "listening", "port": 5}\n')["port"] == 5
    for bad in ("hello", '{"event": "done"}', "[1]"):
        with pytest.raises(ValueError):
            parse_listening_line(bad)
