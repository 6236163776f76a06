# syntax=docker/dockerfile:1
# The `gpu` overlay's (and Compose's) Triton: NVIDIA's image plus what the python-backend text
# tokenizer (<model>_tokenizer, export/python_backend/tokenizer.py, the first step of the
# <model>_text ensemble) imports: `tokenizers`, pinned as the local runtime
# (requirements/triton-runtime.txt). numpy is NVIDIA's; the encoder runs on the native
# onnxruntime_onnx backend, so no ONNX Runtime wheel.
#   docker build -f deploy/docker/triton.Dockerfile -t "$REGISTRY/triton:24.10-py3" .
FROM nvcr.io/nvidia/tritonserver:24.10-py3
RUN pip install --no-cache-dir "tokenizers==0.23.3"
