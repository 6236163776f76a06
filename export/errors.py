"""Errors of the export pipeline.

ExportError
 ├── ParityError        an exported artefact misses its accuracy budget against PyTorch
 └── ModelConfigError   a Triton model configuration is malformed or inconsistent
"""


class ExportError(Exception):
    """Root of every error raised by ``export``."""


class ParityError(ExportError):
    """The exported model's outputs differ from PyTorch's by more than the budget."""


class ModelConfigError(ExportError):
    """A ``config.pbtxt`` cannot be parsed or breaks a rule Triton would reject it for."""
