"""The FastAPI gateway in front of Triton (auth, rate limits, cache, features, gRPC to Triton).

Built in its own issue; it learns model signatures from Triton's metadata, never from export/.
"""
