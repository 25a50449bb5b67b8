"""The operator's Prometheus credentials: what the chart passes becomes the right header."""

from __future__ import annotations

import base64

from rewind.handlers import RuntimeConfig


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
