# syntax=docker/dockerfile:1
# The gateway image: `python -m gateway` (FastAPI on uvicorn), configured by GATEWAY_* variables.
# No torch, no export code: only gateway/ and the feature-store readers it imports.
# Build from the repository root (the context must be the root):
#   docker build -f deploy/docker/gateway.Dockerfile -t "$REGISTRY/tritonstack-gateway:$TAG" .
FROM python:3.11.9-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
COPY deploy/docker/gateway-requirements.txt /tmp/requirements.txt
RUN /opt/venv/bin/pip install -r /tmp/requirements.txt

FROM python:3.11.9-slim-bookworm
# One uvicorn process per container: scale with replicas (metrics are per process).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8080 \
    GATEWAY_ENVIRONMENT=production
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --no-create-home --shell /usr/sbin/nologin gateway
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY --chown=root:root gateway/ /app/gateway/
COPY --chown=root:root features/__init__.py features/schema.py features/settings.py \
     features/errors.py features/online.py features/redis_layout.py /app/features/
USER 10001:10001
EXPOSE 8080
# Exec form: uvicorn gets SIGTERM itself and drains for GATEWAY_DRAIN_TIMEOUT_S.
ENTRYPOINT ["python", "-m", "gateway"]
