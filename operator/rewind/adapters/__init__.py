"""Adapters: the operator's only contact with Istio, Prometheus and the Kubernetes API.

Each adapter sits behind a small Protocol from :mod:`rewind.adapters.base` (Router,
MetricProvider, Workloads, Notifier), one file per implementation, so handlers can be
tested with fakes. Importing this package does not import any client library.
"""

from rewind.adapters.base import (
    AdapterError,
    MetricProvider,
    MetricQueryError,
    Notifier,
    OwnerRef,
    OwnershipConflictError,
    RevisionObservation,
    Router,
    RouteState,
    SnapshotConflictError,
    SnapshotCorruptError,
    SnapshotNotFoundError,
    Workloads,
)

__all__ = [
    "AdapterError",
    "MetricProvider",
    "MetricQueryError",
    "Notifier",
    "OwnerRef",
    "OwnershipConflictError",
    "RevisionObservation",
    "RouteState",
    "Router",
    "SnapshotConflictError",
    "SnapshotCorruptError",
    "SnapshotNotFoundError",
    "Workloads",
]
