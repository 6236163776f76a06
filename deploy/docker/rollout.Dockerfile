# syntax=docker/dockerfile:1
# The rollout image: `python -m rollout` (the rollout controller), configured by ROLLOUT_*
# variables; run as a Kubernetes Job beside an overlay (deploy/k8s/jobs/rollout). No torch, no
# gateway server: rollout/, the route-table and figures modules it shares with the gateway,
# and export's repository reader and writer (export reports, model configs).
# Build from the repository root (the context must be the root):
#   docker build -f deploy/docker/rollout.Dockerfile -t "$REGISTRY/tritonstack-rollout:$TAG" .
FROM python:3.11.9-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
COPY deploy/docker/rollout-requirements.txt /tmp/requirements.txt
RUN /opt/venv/bin/pip install -r /tmp/requirements.txt

FROM python:3.11.9-slim-bookworm
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 rollout \
    && useradd --system --uid 10001 --gid rollout --no-create-home --shell /usr/sbin/nologin rollout
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY --chown=root:root rollout/ /app/rollout/
COPY --chown=root:root gateway/__init__.py gateway/traffic.py gateway/traffic_store.py \
     gateway/rollout_stats.py gateway/agreement.py /app/gateway/
COPY --chown=root:root export/__init__.py export/errors.py export/status.py \
     export/model_config.py export/reader.py export/repository.py /app/export/
USER 10001:10001
# Exec form: the controller gets SIGTERM itself (its state stays in Redis; a new pod resumes).
ENTRYPOINT ["python", "-m", "rollout"]
