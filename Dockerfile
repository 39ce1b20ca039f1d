# syntax=docker/dockerfile:1
# The tagger worker image: docker build -t customer-tagger:0.1.0 .
#
# Stage 1 builds a virtualenv with the project and its dependencies (compilers are
# here only, for any dependency without a wheel for the platform). Stage 2 copies
# that virtualenv onto the same slim base: no compiler, no pip cache, no sources
# besides the installed packages, and a non-root user. The base is pinned to an exact
# Python patch release and Debian release (pin it by digest in your registry mirror:
# python:3.11.14-slim-bookworm@sha256:...).

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential=12.9 \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/tagger
WORKDIR /src
# Dependencies first (a layer reused while only the code changes), then the project.
COPY pyproject.toml README.md ./
COPY stream ./stream
COPY agents ./agents
COPY rules ./rules
RUN /opt/tagger/bin/pip install --no-compile . \
    && /opt/tagger/bin/python -c "import faust, rocksdict, confluent_kafka, agents.cli.main" \
    && /opt/tagger/bin/python -m compileall -q /opt/tagger/lib

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="customer-tagger" \
      org.opencontainers.image.description="Real-time customer tags, tiers and churn alerts on Kafka (Faust worker)" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed uid/gid so volume ownership (RocksDB state) is predictable across hosts and Kubernetes.
RUN groupadd --system --gid 10001 tagger \
    && useradd --system --uid 10001 --gid tagger --home-dir /var/lib/tagger --shell /usr/sbin/nologin tagger \
    && install -d -o tagger -g tagger -m 0750 /var/lib/tagger
COPY --from=build /opt/tagger /opt/tagger
ENV PATH=/opt/tagger/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TAGGER_STORE=rocksdb:// \
    TAGGER_DATADIR=/var/lib/tagger \
    TAGGER_WEB_BIND=0.0.0.0 \
    TAGGER_WEB_PORT=6066
WORKDIR /var/lib/tagger
VOLUME ["/var/lib/tagger"]
USER 10001:10001
EXPOSE 6066
# Liveness only: /readyz (partitions assigned, recovery finished, Redis up) is for orchestrators.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('TAGGER_WEB_PORT', '6066') + '/healthz', timeout=3)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["tagger"]
CMD ["worker"]
