# syntax=docker/dockerfile:1
# The Rewind operator image. Build from the repository root:
#   docker build -t rewind-operator:dev .
# Runtime dependencies come only from operator/requirements.lock (pinned); the operator itself
# is installed with --no-deps, so the image holds exactly the locked set. Only the `rewind`
# package is copied: the demo and its stand-ins (demo/, a distribution of their own) are not.
# The root filesystem can be mounted read-only (the chart does): bytecode is compiled at build
# time and HOME is /tmp, where the chart mounts an emptyDir.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/rewind
COPY operator/requirements.lock /tmp/requirements.lock
RUN /opt/rewind/bin/pip install --require-virtualenv -r /tmp/requirements.lock
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/rewind/ operator/rewind/
RUN /opt/rewind/bin/pip install --require-virtualenv --no-deps . \
 && /opt/rewind/bin/pip check \
 && /opt/rewind/bin/pip uninstall --yes pip setuptools

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="rewind-operator" \
      org.opencontainers.image.description="Progressive delivery and trustworthy rollback for ML models on Kubernetes" \
      org.opencontainers.image.licenses="Apache-2.0"
# The chart runs the pod as 65532:65532; a passwd entry keeps getpass/getpwuid working.
RUN groupadd --system --gid 65532 rewind \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin rewind
COPY --from=build /opt/rewind /opt/rewind
ENV PATH=/opt/rewind/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
USER 65532:65532
# 8080: Kopf liveness/readiness (/healthz); 9102: Prometheus metrics (chart defaults).
EXPOSE 8080 9102
ENTRYPOINT ["rewind-operator"]
