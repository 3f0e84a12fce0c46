# syntax=docker/dockerfile:1
# The one bnsweep image: the MLflow tracking server, the Ray head and workers, the sweep driver and the
# analysis all run it, so every container has the same Python and exactly the same packages (Ray requires the
# same Ray and Python version on every node and driver). See docs/deployment.md.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ARG BNSWEEP_UID=1000
ARG BNSWEEP_GID=1000

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=true

# Real Fashion-MNIST from Debian: pipeline.data finds it in /usr/share/datasets/fashion-mnist, so a sweep needs
# no download.
RUN apt-get update \
    && apt-get install -y --no-install-recommends dataset-fashion-mnist \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --gid "${BNSWEEP_GID}" bnsweep \
    && useradd --uid "${BNSWEEP_UID}" --gid bnsweep --create-home --home-dir /home/bnsweep \
        --shell /usr/sbin/nologin bnsweep

WORKDIR /opt/bnsweep
# Exact versions first (a layer that changes only with the lock), then the project itself without resolving.
COPY requirements.lock ./
RUN pip install --no-compile -r requirements.lock
COPY pyproject.toml README.md ./
COPY model ./model
COPY pipeline ./pipeline
COPY analysis ./analysis
COPY tracking ./tracking
RUN pip install --no-compile --no-deps . \
    && pip check \
    && rm -rf build *.egg-info
COPY docker/ray-driver.sh /usr/local/bin/ray-driver
COPY docker/mlflow-server.sh /usr/local/bin/mlflow-server

# Writable places of the non-root user: the served MLflow artifacts (a named volume takes this ownership) and
# the analysis output.
RUN mkdir -p /mlartifacts /home/bnsweep/analysis-out /home/bnsweep/.cache \
    && chown -R bnsweep:bnsweep /mlartifacts /home/bnsweep

USER bnsweep
WORKDIR /home/bnsweep
CMD ["python", "-m", "pipeline.sweep", "--help"]
