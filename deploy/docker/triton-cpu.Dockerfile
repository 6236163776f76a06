# syntax=docker/dockerfile:1
# NVIDIA's Triton image plus what the `cpu` target's python-backend models import: ONNX Runtime
# and numpy<2 for the encoder's model.py, `tokenizers` for the text tokenizer (<model>_tokenizer,
# pinned as the local runtime: requirements/triton-runtime.txt). For clusters without GPUs (the
# `cpu` overlay); the `gpu` overlay's image is deploy/docker/triton.Dockerfile.
# onnxruntime 1.23.2: the newest with wheels for this image's Python 3.10, and >= 1.22, the
# first with x86 kernels for 8-bit MatMulNBits (the export's int8_blockwise variant). The
# export's checks ran under requirements/triton-runtime.txt's version: see README, known limits.
#   docker build -f deploy/docker/triton-cpu.Dockerfile -t "$REGISTRY/triton-cpu:24.10-py3" .
FROM nvcr.io/nvidia/tritonserver:24.10-py3
RUN pip install --no-cache-dir "numpy<2" "onnxruntime==1.23.2" "tokenizers==0.23.3"
