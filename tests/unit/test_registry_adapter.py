"""The registry adapter's pure parts: which credentials, to which server. (Its HTTP calls
are tested against a real MLflow server: tests/sandbox/test_operator_registry.py.)"""

from __future__ import annotations

from rewind.adapters.registry import RegistrySync, auth_headers


def test_credentials_come_from_mlflows_own_variables() -> None:
    assert auth_headers({"MLFLOW_TRACKING_TOKEN": "t0k"}) == {"Authorization": "Bearer t0k"}
    assert auth_headers({"MLFLOW_TRACKING_USERNAME": "u", "MLFLOW_TRACKING_PASSWORD": "p"}) == {
        "Authorization": "Basic dTpw"
    }
    assert auth_headers({}) == {}


def test_credentials_go_only_to_the_operators_default_server() -> None:
    sync = RegistrySync(default_uri="http://mlflow.mlops:5000/",
                        headers={"Authorization": "Bearer t0k"})
    assert sync.resolve("") == "http://mlflow.mlops:5000"
    assert sync.headers_for(sync.resolve("")) == {"Authorization": "Bearer t0k"}
    assert sync.headers_for(sync.resolve("http://mlflow.mlops:5000")) == {
        "Authorization": "Bearer t0k"
    }
    assert sync.headers_for(sync.resolve("http://attacker.example:5000")) == {}


def test_without_a_default_server_no_credentials_go_anywhere() -> None:
    sync = RegistrySync(default_uri="", headers={"Authorization": "Bearer t0k"})
    assert sync.resolve("") == ""
    assert sync.headers_for("") == {}
    assert sync.headers_for("http://mlflow.test:5000") == {}
