# syntax=docker/dockerfile:1
# The model repository as an image: an init container copies /models into the Triton pod, so a
# model rollout is an image tag, like code. It holds what `tritonstack export` wrote: the
# encoder (minilm/) and its text pipeline (minilm_tokenizer/ with the model's tokenizer.json,
# the minilm_text ensemble), all loaded by Triton (--load-model=*); the gateway needs none of it.
# Export first, then build from the repository root, e.g. for the GPU overlay:
#   .venv/bin/tritonstack export --target gpu --repository deploy/triton/model_repository_gpu
#   docker build -f deploy/docker/models.Dockerfile \
#     --build-arg REPOSITORY=deploy/triton/model_repository_gpu \
#     -t "$REGISTRY/tritonstack-models:$TAG" .
FROM busybox:1.36.1
ARG REPOSITORY=deploy/triton/model_repository_gpu
COPY ${REPOSITORY}/ /models/
RUN test -n "$(ls /models/*/[0-9]*/model.* 2>/dev/null)" \
      || { echo "no exported model version under /models: run tritonstack export first" >&2; exit 1; }
USER 65532:65532
