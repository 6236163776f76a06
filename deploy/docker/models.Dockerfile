# syntax=docker/dockerfile:1
# The model repository as an image: an init container copies /models into the Triton pod (and
# the tokenizer into the gateway pod), so a model rollout is an image tag, like code.
# Export first, then build from the repository root, e.g. for the GPU overlay:
#   .venv/bin/tritonstack export --target gpu --repository deploy/triton/model_repository_gpu
#   docker build -f deploy/docker/models.Dockerfile \
#     --build-arg REPOSITORY=deploy/triton/model_repository_gpu \
#     -t "$REGISTRY/tritonstack-models:$TAG" .
FROM busybox:1.36.1
ARG REPOSITORY=deploy/triton/model_repository_gpu
COPY ${REPOSITORY}/ /models/
# /tokenizers/<model>/tokenizer.json: the tokenizer of each model's newest version, at a path
# that does not change with the version number (GATEWAY_EMBEDDINGS_TOKENIZER points at it).
RUN set -e; for model in /models/*/; do \
      name=$(basename "$model"); \
      latest=$(ls -d "$model"[0-9]* 2>/dev/null | sort -t/ -k4 -n | tail -n 1); \
      if [ -n "$latest" ] && [ -f "$latest/tokenizer.json" ]; then \
        mkdir -p "/tokenizers/$name" && cp "$latest/tokenizer.json" "/tokenizers/$name/"; \
      fi; \
    done; \
    test -n "$(ls /models/*/[0-9]*/model.* 2>/dev/null)" \
      || { echo "no exported model version under /models: run tritonstack export first" >&2; exit 1; }
USER 65532:65532
