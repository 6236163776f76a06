"""Helpers of the rollout tests: candidate versions made from a served one, and a bounded load
of sticky callers through several gateways that records who got which version."""

from __future__ import annotations

import asyncio
import json
import os
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

# A candidate that fails every real request (the warm-up's zeros still pass, so it loads), and
# one that answers, slowly: python-backend model.py files written beside the real runner.
_WRAPPER = '''"""A rollout test's candidate: the real runner (real.py) with a fault."""
import importlib.util
import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils

_spec = importlib.util.spec_from_file_location(
    "real_runner", os.path.join(os.path.dirname(__file__), "real.py")
)
_real = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_real)


def _real_traffic(request):
    ids = pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy()
    return bool(np.any(ids))  # the warm-up sends zeros


class TritonPythonModel(_real.TritonPythonModel):
    def execute(self, requests):
        if not any(_real_traffic(r) for r in requests):
            return super().execute(requests)
        FAULT
'''
_FAULTS = {
    "errors": "return [pb_utils.InferenceResponse(error=pb_utils.TritonError("
    '"this candidate is broken")) for _ in requests]',
    "slow": "time.sleep(DELAY)\n        return super().execute(requests)",
}


def copy_version(model_dir: Path, source: int, target: int) -> Path:
    """``model_dir/target`` holding hard links to ``source``'s files (MiniLM is 90 MB)."""
    made = model_dir / str(target)
    made.mkdir()
    for item in (model_dir / str(source)).iterdir():
        if item.is_file():
            os.link(item, made / item.name)
    report = json.loads((made / "report.json").read_text())
    report["version"] = target
    report.pop("rollouts", None)
    (made / "report.json").unlink()  # its own file: rollouts are recorded per version
    (made / "report.json").write_text(json.dumps(report, indent=2))
    return made


def perturb_weights(version_dir: Path, scale: float = 0.05, seed: int = 0) -> None:
    """Add noise to MiniLM's word embeddings after export (the report still claims fp32)."""
    import onnx  # deferred on purpose: only this test writes an ONNX file
    from onnx import numpy_helper

    path = version_dir / "model.onnx"
    model = onnx.load(str(path))
    rng = np.random.default_rng(seed)
    for tensor in model.graph.initializer:
        if "word_embeddings" in tensor.name:
            weights = numpy_helper.to_array(tensor)
            noisy = weights + rng.normal(0, scale * float(weights.std()), weights.shape)
            tensor.CopyFrom(numpy_helper.from_array(noisy.astype(weights.dtype), tensor.name))
            break
    else:
        raise AssertionError("no word embeddings in the exported graph")
    path.unlink()  # a hard link: write a file of its own
    onnx.save(model, str(path))


def break_version(version_dir: Path, fault: str, delay_s: float = 1.0) -> None:
    """Make ``version_dir``'s model fail (``errors``) or answer after ``delay_s`` (``slow``)."""
    runner = version_dir / "model.py"
    os.link(runner, version_dir / "real.py")
    runner.unlink()
    code = _WRAPPER.replace("FAULT", _FAULTS[fault]).replace("DELAY", str(delay_s))
    runner.write_text(code)


@dataclass
class Answer:
    at: float  # time.time() when the answer came
    key: str
    status: int
    version: str  # X-Model-Version ("" when absent)
    route: str


@dataclass
class Load:
    """``concurrency`` callers in a closed loop over ``urls``, each with its own routing keys,
    half on ``/v2/models/minilm/infer`` (token ids), half on ``/v1/embeddings`` (text)."""

    urls: list[str]
    api_key: str
    concurrency: int = 16
    keys_per_caller: int = 100  # 1,600 callers: a split within a point or two of its weight
    max_seconds: float = 120.0
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Load:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=60)

    def wait_for(self, count: int, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.answers) < count and time.monotonic() < deadline:
            time.sleep(0.05)

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=self.concurrency * 2)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            await asyncio.gather(*(self._caller(client, i) for i in range(self.concurrency)))

    async def _caller(self, client: httpx.AsyncClient, index: int) -> None:
        rng = random.Random(index)
        keys = [f"caller{index}-user{k}" for k in range(self.keys_per_caller)]
        url = self.urls[index % len(self.urls)]
        headers = {"Authorization": f"Bearer {self.api_key}", "Cache-Control": "no-cache"}
        deadline = time.monotonic() + self.max_seconds
        turn = 0
        while not self._stop.is_set() and time.monotonic() < deadline:
            key = keys[turn % len(keys)]
            turn += 1
            words = " ".join(rng.choice(("alpha", "beta", "gamma", "delta")) for _ in range(6))
            body: dict[str, object]
            if turn % 2:
                ids = [101, *(rng.randrange(1000, 29000) for _ in range(10)), 102]
                body = {"inputs": [
                    {"name": n, "datatype": "INT64", "shape": [1, len(ids)], "data": d}
                    for n, d in (("input_ids", ids), ("attention_mask", [1] * len(ids)),
                                 ("token_type_ids", [0] * len(ids)))
                ]}  # fmt: skip
                route = "v2"
                path = "/v2/models/minilm/infer"
            else:
                body, route, path = {"model": "minilm", "input": words}, "openai", "/v1/embeddings"
            try:
                answer = await client.post(
                    url + path, json=body, headers={**headers, "X-Routing-Key": key}
                )
                status, version = answer.status_code, answer.headers.get("x-model-version", "")
            except httpx.HTTPError:
                status, version = 0, ""
            self.answers.append(Answer(time.time(), key, status, version, route))

    def between(self, start: float, end: float) -> list[Answer]:
        return [a for a in self.answers if start <= a.at <= end]
