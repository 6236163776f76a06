"""The export leaves the CLI's logging as it found it: ONNX Runtime's blockwise quantizer calls
``logging.basicConfig(level=INFO)`` on import, which printed every later library's INFO lines
(Feast's registry, httpx's requests) into `make demo`."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import logging
from export import quantize
with quantize._quiet():
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
root = logging.getLogger()
print(root.level, len(root.handlers))
"""


def test_the_blockwise_quantizer_import_leaves_the_root_logger_alone() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(30), "0"], out  # WARNING, no handler: as Python starts
