"""What clients get is what the export checked: batch invariance through the real Triton, and
the parity set through Triton (gRPC) and the gateway equal to the served artefact in-process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from deploy.local.gateway import GatewayProcess
from deploy.local.triton import TritonServer
from export.invariance import TOLERANCE
from export.pipeline import ExportResult
from export.spec import ModelSpec, Row
from export.torch2onnx import sha256
from export.verify import parity_inputs, session
from tests.fixtures_gateway import AUTH
from tests.integration.served import OUTPUT, corpus_probes, infer, served_invariance

pytestmark = pytest.mark.integration

# the served answers are the in-process ones: same ONNX Runtime, same artefact; only thread
# scheduling differs, which moves fp32 sums by ~1e-8 at most on these unit vectors
FLOAT_TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def probes(tokenizer_json: Path) -> tuple[list[Row], list[Row]]:
    return corpus_probes(tokenizer_json)


def test_served_model_is_batch_invariant_through_triton(
    triton: TritonServer, probes: tuple[list[Row], list[Row]]
) -> None:
    served = served_invariance(triton.grpc_url, "minilm", *probes)
    assert served.worst <= TOLERANCE, served
    # the concurrent contexts really were batches: Triton merged requests
    assert served.executions < served.inferences, served


def test_parity_set_through_triton_and_gateway_equals_the_exported_artefact(
    triton: TritonServer,
    gateway: GatewayProcess,
    minilm_export: ExportResult,
    minilm_spec: ModelSpec,
) -> None:
    """Nothing between the export and the client changes the numbers."""
    version_dir = minilm_export.version_dir
    assert version_dir is not None
    report = json.loads((version_dir / "report.json").read_text())
    artefact = version_dir / "model.onnx"
    assert sha256(artefact) == report["served"]["sha256"]  # what the report describes
    runner = session(artefact)
    direct = grpcclient.InferenceServerClient(triton.grpc_url)
    front = httpclient.InferenceServerClient(gateway.url.removeprefix("http://"))
    worst = {"grpc": 0.0, "gateway": 0.0}
    try:
        for label, inputs in parity_inputs(minilm_spec, seed=report["seed"]):
            want = runner.run([OUTPUT], inputs)[0]
            got = {
                "grpc": infer(direct, "minilm", inputs),
                "gateway": _http(front, inputs, {**AUTH, "Cache-Control": "no-cache"}),
            }
            for path, answer in got.items():
                assert answer.shape == want.shape, (label, path)
                worst[path] = max(worst[path], float(np.max(np.abs(answer - want))))
    finally:
        direct.close()
        front.close()
    assert max(worst.values()) <= FLOAT_TOLERANCE, worst


def _http(
    client: httpclient.InferenceServerClient, inputs: dict[str, np.ndarray], headers: dict
) -> np.ndarray:
    tensors = []
    for name, array in inputs.items():
        tensor = httpclient.InferInput(name, list(array.shape), "INT64")
        tensor.set_data_from_numpy(array)  # binary tensors: the floats travel as bytes
        tensors.append(tensor)
    out = [httpclient.InferRequestedOutput(OUTPUT, binary_data=True)]
    return client.infer("minilm", tensors, outputs=out, headers=dict(headers)).as_numpy(OUTPUT)
