"""Rewind: progressive delivery and trustworthy rollback for ML models on Kubernetes."""

API_GROUP = "rewind.dev"
API_VERSION = "v1alpha1"
