"""Tests of file_sd registration and the bounded wait for a scrape, against a fake Prometheus."""

from __future__ import annotations

import json
import os
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from rewind_demo._http import BackgroundServer
from rewind_demo.targets import (
    TARGETS_DIR_ENV,
    list_targets,
    query,
    register_target,
    targets_dir,
    unregister_target,
    wait_for_query,
    wait_scraped,
)


def test_register_writes_file_sd_group(tmp_path: Path) -> None:
    path = register_target("fraud-r1", 40123, {"job": "sim", "role": "model"}, directory=tmp_path)
    assert path == tmp_path / "fraud-r1.json"
    assert json.loads(path.read_text()) == [
        {"targets": ["127.0.0.1:40123"], "labels": {"job": "sim", "role": "model"}}
    ]
    register_target("fraud-r1", "127.0.0.1:40124", directory=tmp_path)  # replace in place
    assert list_targets(tmp_path) == {"fraud-r1": [{"targets": ["127.0.0.1:40124"], "labels": {}}]}
    assert sorted(os.listdir(tmp_path)) == ["fraud-r1.json"]  # no temp files left


def test_register_is_atomic_when_the_write_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = register_target("tg", 1000, directory=tmp_path)
    before = path.read_text()

    def broken_replace(src: Any, dst: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        register_target("tg", 2000, directory=tmp_path)
    assert path.read_text() == before  # Prometheus still sees the old, whole file
    assert os.listdir(tmp_path) == ["tg.json"]  # and the temp file is gone


def test_unregister_is_idempotent(tmp_path: Path) -> None:
    register_target("a", 1, directory=tmp_path)
    assert unregister_target("a", directory=tmp_path) is True
    assert unregister_target("a", directory=tmp_path) is False
    assert list_targets(tmp_path) == {}


@pytest.mark.parametrize(
    ("name", "target", "labels"),
    [
        ("../evil", 1, {}),
        ("a/b", 1, {}),
        (".hidden", 1, {}),
        ("ok", "10.0.0.1:80", {}),
        ("ok", "localhost:80", {}),
        ("ok", 0, {}),
        ("ok", 70000, {}),
        ("ok", 1, {"bad-label": "x"}),
    ],
)
def test_register_rejects_bad_input(
    tmp_path: Path, name: str, target: int | str, labels: dict[str, str]
) -> None:
    with pytest.raises(ValueError):
        register_target(name, target, labels, directory=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_targets_dir_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TARGETS_DIR_ENV, str(tmp_path / "sd"))
    assert targets_dir() == tmp_path / "sd"
    assert register_target("x", 9) == tmp_path / "sd" / "x.json"
    monkeypatch.delenv(TARGETS_DIR_ENV)
    with pytest.raises(RuntimeError):
        targets_dir()


class FakePrometheus:
    """Answers /api/v1/targets and /api/v1/query; the target turns up after `down_polls`."""

    def __init__(self, down_polls: int) -> None:
        self.down_polls = down_polls
        self.polls = 0

    def handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                fake.polls += 1
                up = fake.polls > fake.down_polls
                labels = {"job": "sim", "instance": "127.0.0.1:40123"}
                data: Any
                if url.path == "/api/v1/targets":
                    data = {
                        "activeTargets": [
                            {"labels": {"job": "sim", "instance": "127.0.0.1:1"}, "health": "up"},
                            {
                                "labels": labels,
                                "health": "up" if up else "unknown",
                                "lastError": "",
                            },
                        ]
                    }
                elif url.path == "/api/v1/query":
                    q = urllib.parse.parse_qs(url.query)["query"][0]
                    result = [
                        {
                            "metric": dict(labels, __name__="up"),
                            "value": [time.time(), "1" if up else "0"],
                        }
                    ]
                    data = {"resultType": "vector", "result": result if "up{" in q else []}
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                body = json.dumps({"status": "success", "data": data}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler


@pytest.fixture
def prom() -> Iterator[tuple[FakePrometheus, str]]:
    fake = FakePrometheus(down_polls=2)
    with BackgroundServer.start(fake.handler()) as srv:
        yield fake, srv.url


def test_wait_scraped_by_labels(prom: tuple[FakePrometheus, str]) -> None:
    fake, url = prom
    target = wait_scraped(url, {"instance": "127.0.0.1:40123"}, timeout=5, poll_interval=0.02)
    assert target["health"] == "up" and fake.polls == 3


def test_wait_scraped_by_up_query(prom: tuple[FakePrometheus, str]) -> None:
    fake, url = prom
    sample = wait_scraped(
        url, 'job="sim", instance="127.0.0.1:40123"', timeout=5, poll_interval=0.02
    )
    assert sample["value"][1] == "1" and fake.polls == 3


def test_wait_scraped_times_out(prom: tuple[FakePrometheus, str]) -> None:
    fake, url = prom
    fake.down_polls = 10**9
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="unknown"):
        wait_scraped(url, {"instance": "127.0.0.1:40123"}, timeout=0.3, poll_interval=0.05)
    assert time.monotonic() - started < 2.0


def test_wait_scraped_survives_unreachable_prometheus() -> None:
    srv = BackgroundServer.start(FakePrometheus(0).handler())
    url = srv.url
    srv.stop()
    with pytest.raises(TimeoutError, match="error"):
        wait_scraped(url, {"job": "sim"}, timeout=0.3, poll_interval=0.05)


def test_query_helpers(prom: tuple[FakePrometheus, str]) -> None:
    _, url = prom
    assert query(url, "nothing") == []
    assert wait_for_query(url, 'up{job="sim"}', timeout=2, poll_interval=0.02)
    with pytest.raises(TimeoutError):
        wait_for_query(url, "nothing", timeout=0.2, poll_interval=0.05)
