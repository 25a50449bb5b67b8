"""Fixtures shared by the operator's end-to-end tests."""

from __future__ import annotations

import pytest

from tests.conftest import Kubectl, MetricsEndpoint, OperatorProcess, Sandbox
from tests.sandbox.operator_helpers import Rewind


@pytest.fixture()
def rw(
    kubectl: Kubectl,
    namespace: str,
    operator: OperatorProcess,
    metrics_endpoint: MetricsEndpoint,
    sandbox: Sandbox,
) -> Rewind:
    """The test's namespace with its own operator and settable metrics."""
    return Rewind(kubectl, namespace, operator, metrics_endpoint, sandbox)
