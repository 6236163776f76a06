# syntax=docker/dockerfile:1
# NVIDIA's Triton image plus what the `cpu` target's python-backend model.py imports (ONNX
# Runtime, numpy<2): for clusters without GPUs (the `cpu` overlay). The `gpu` overlay uses
# NVIDIA's image unchanged (native onnxruntime_onnx backend).
#   docker build -f deploy/docker/triton-cpu.Dockerfile -t "$REGISTRY/tritonstack-triton-cpu:$TAG" .
FROM nvcr.io/nvidia/tritonserver:24.10-py3
RUN pip install --no-cache-dir "numpy<2" "onnxruntime==1.19.2"
