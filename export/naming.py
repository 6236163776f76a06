"""Names of a text encoder's pipeline models in the repository: the one definition.

Light on purpose (no torch, ONNX or protobuf): ``batch/`` imports it in an image that has
none of them.
"""

from __future__ import annotations


def tokenizer_name(encoder: str) -> str:
    """The python-backend tokenizer model of encoder ``encoder``."""
    return f"{encoder}_tokenizer"


def text_model_name(encoder: str) -> str:
    """The ensemble clients send strings to (the gateway's default pipeline uses the same name)."""
    return f"{encoder}_text"
