# Rewind: two commands do all set-up on a fresh machine and are safe to re-run.
#   make demo   the 3 AM incident on the local sandbox
#   make test   the whole test suite (unit + against the real sandbox)

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: help deps venv tools test-tools apiservers sandbox-up sandbox-down sandbox-status test test-unit lint crds crds-check run demo demo-down bench clean

help:
	@echo "make demo          run the 3 AM incident on the local sandbox"
	@echo "make test          lint + unit tests + tests against the real sandbox"
	@echo "make sandbox-up    start (or reuse) the local control plane, Prometheus, Istio and Gateway API CRDs"
	@echo "make sandbox-down  stop it and delete its state"
	@echo "make run           run the operator against the sandbox"
	@echo "make crds          regenerate crds/ from the pydantic models"
	@echo "make bench         run the benchmarks under bench/"

# The virtualenv is rebuilt only when pyproject.toml changes; pip's own cache lives outside
# the clone, so a fresh clone on a warm machine installs in seconds.
# Runtime dependencies are held at the versions of operator/requirements.lock (what the image
# ships), so tests run what users run and pip resolves nothing new between two clean runs.
# The demo and its stand-ins are a second distribution (demo/pyproject.toml, package
# rewind_demo), installed here and never in the image.
$(VENV)/.installed: pyproject.toml demo/pyproject.toml operator/requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c operator/requirements.lock -e '.[test]' -e ./demo
	@touch $@

venv: $(VENV)/.installed

# System packages: Prometheus (Debian) and openssl for the sandbox's certificates.
deps: venv
	@command -v prometheus >/dev/null && command -v openssl >/dev/null || { \
	  echo "[deps] apt-get install prometheus openssl"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus openssl; }

# Go builds of etcd, kube-*, kwok and helm, cached in ~/.cache/rewind/<versions hash>/, and
# of the test tools of hack/tools (argocd-lua, kstatus), cached under their own key in
# ~/.cache/rewind/test-tools/<hash of hack/tools>/ (`hack/build-tools.sh --test-tools-dir`).
tools:
	@hack/build-tools.sh >/dev/null

# Only the test tools: what the unit tests need (a minute or two on a cold machine).
test-tools:
	@hack/build-tools.sh --test-tools >/dev/null

# kube-apiserver alone at the other Kubernetes versions the version tests install the chart on
# (hack/kube-versions.env: the oldest supported minor and one in between), each cached under
# its own key in ~/.cache/rewind/apiserver/<hash>/ (a few minutes each on a cold machine).
apiservers:
	@source hack/kube-versions.env && for v in $$OLDEST_KUBERNETES_VERSION $$MIDDLE_KUBERNETES_VERSION; do \
	  hack/build-tools.sh --apiserver $$v >/dev/null || exit 1; done

sandbox-up: deps tools
	@hack/sandbox up

sandbox-down:
	@hack/sandbox down

sandbox-status:
	@hack/sandbox status

# mypy's cache lives outside the clone, so a fresh CI clone on a warm machine reuses it.
lint: venv
	$(VENV)/bin/ruff check operator demo tests bench
	MYPY_CACHE_DIR=$${XDG_CACHE_HOME:-$$HOME/.cache}/rewind/mypy $(VENV)/bin/mypy

# crds/ is generated from operator/rewind/api.py; the chart ships a copy (a test compares).
# The chart's Argo CD customizations and Grafana dashboard are generated too.
crds: venv
	$(PY) -m rewind.crdgen
	cp crds/*.yaml charts/rewind/crds/
	$(PY) charts/rewind/argocd/generate.py
	$(PY) charts/rewind/grafana/generate.py

crds-check: venv
	$(PY) -m rewind.crdgen --check
	$(PY) charts/rewind/argocd/generate.py --check
	$(PY) charts/rewind/grafana/generate.py --check

test-unit: venv test-tools
	$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

# Unit tests beside the sandbox suite; exclusive sandbox tests alone, then the rest on
# SANDBOX_WORKERS processes (default 3; hack/test.sh says why).
test: sandbox-up lint apiservers
	hack/test.sh $(PYTEST_ARGS)

# The 3 AM incident: operator, model servers and a stand-in for Istio's data plane, on
# the sandbox; exits non-zero unless every outcome checks out in the API server.
demo: sandbox-up
	$(PY) -m rewind_demo.demo

demo-down: venv
	$(PY) -m rewind_demo.demo --down

run: sandbox-up
	source .sandbox/env && $(VENV)/bin/rewind-operator

bench: sandbox-up
	@for b in bench/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info demo/build demo/*.egg-info
