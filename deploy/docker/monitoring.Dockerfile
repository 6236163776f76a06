# syntax=docker/dockerfile:1
# The monitoring image: the capture sink (`python -m monitoring capture`: the gateway's Redis
# Stream -> Parquet) and the monitor (`python -m monitoring monitor`: drift and live-accuracy
# gauges), one image, two containers of deploy/k8s/components/capture. No torch, no export code,
# no web stack: monitoring/, the gateway's record format (gateway/capture.py) and the features/
# modules live accuracy reuses. References are built where the training data is
# (`tritonstack monitor reference`), not in this image.
# Build from the repository root (the context must be the root):
#   docker build -f deploy/docker/monitoring.Dockerfile -t "$REGISTRY/tritonstack-monitoring:$TAG" .
FROM python:3.11.9-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
COPY deploy/docker/monitoring-requirements.txt /tmp/requirements.txt
RUN /opt/venv/bin/pip install -r /tmp/requirements.txt

FROM python:3.11.9-slim-bookworm
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    DO_NOT_TRACK=1 \
    CAPTURE_METRICS_HOST=0.0.0.0 \
    MONITOR_METRICS_HOST=0.0.0.0
RUN groupadd --system --gid 10001 monitoring \
    && useradd --system --uid 10001 --gid monitoring --no-create-home --shell /usr/sbin/nologin monitoring
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY --chown=root:root monitoring/ /app/monitoring/
COPY --chown=root:root gateway/__init__.py gateway/capture.py /app/gateway/
COPY --chown=root:root features/__init__.py features/schema.py features/settings.py \
     features/errors.py features/repo.py features/train.py /app/features/
USER 10001:10001
EXPOSE 9103 9104
# Exec form: SIGTERM reaches Python, which finishes the batch (or evaluation) in hand.
ENTRYPOINT ["python", "-m", "monitoring"]
CMD ["capture"]
