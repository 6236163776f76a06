"""Export: PyTorch -> ONNX (parity-checked) -> a Triton model repository entry.

One module per conversion step (``torch2onnx``, ``verify``), each returning a
:class:`~export.status.StepResult` and writing what it measured beside its artefact.
"""

from export.errors import ExportError, ModelConfigError, ParityError
from export.status import Status, StepResult

__all__ = ["ExportError", "ModelConfigError", "ParityError", "Status", "StepResult"]
