"""Export: PyTorch -> ONNX (parity-checked) -> a Triton model repository entry.

One module per conversion step (``torch2onnx``, ``optimize``, ``quantize``, ``tensorrt``) and
per check (``verify``: parity with PyTorch; ``invariance``: the same answer whatever the batch;
``task_metrics``: the task's own terms against fp32), each returning a
:class:`~export.status.StepResult` and writing what it measured beside its artefact;
``pipeline`` strings them together.
"""

from export.errors import ExportError, ModelConfigError, ParityError
from export.status import Status, StepResult

__all__ = ["ExportError", "ModelConfigError", "ParityError", "Status", "StepResult"]
