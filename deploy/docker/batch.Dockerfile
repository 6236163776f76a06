# syntax=docker/dockerfile:1
# The batch image: `tritonstack batch` (python -m tritonstack.batch_cli), configured by BATCH_*
# variables and per-run arguments; run as a Kubernetes Indexed Job (deploy/k8s/jobs/batch).
# No torch, no export or gateway code: batch/, the CLI module, and the features/ modules whose
# feature order and serving rules batch reuses. Feature-backed runs (--entities) also need
# Feast and a Feast repository the pod can read: not in this image (deploy/README.md).
# Build from the repository root (the context must be the root):
#   docker build -f deploy/docker/batch.Dockerfile -t "$REGISTRY/tritonstack-batch:$TAG" .
FROM python:3.11.9-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
COPY deploy/docker/batch-requirements.txt /tmp/requirements.txt
RUN /opt/venv/bin/pip install -r /tmp/requirements.txt

FROM python:3.11.9-slim-bookworm
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 batch \
    && useradd --system --uid 10001 --gid batch --no-create-home --shell /usr/sbin/nologin batch
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY --chown=root:root batch/ /app/batch/
COPY --chown=root:root export/__init__.py export/errors.py export/status.py export/naming.py \
     /app/export/
COPY --chown=root:root tritonstack/__init__.py tritonstack/batch_cli.py tritonstack/batch_view.py \
     tritonstack/console.py /app/tritonstack/
COPY --chown=root:root features/__init__.py features/schema.py features/settings.py \
     features/errors.py features/repo.py /app/features/
USER 10001:10001
# Exec form: the CLI gets SIGTERM itself; a stopped pod's finished shards stay recorded.
ENTRYPOINT ["python", "-m", "tritonstack.batch_cli"]
