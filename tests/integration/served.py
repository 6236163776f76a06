"""Helpers of the served-accuracy tests: the batch-invariance check run against a real Triton.

The same probes as the export's check (``export.invariance``), but the contexts are made by
the server: concurrent one-row requests that Triton's dynamic batcher merges (the python
backend pads them to the longest, mask 0), one request carrying companions, one padded request.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from export import rows as R
from export.models import minilm
from export.spec import Row

RAGGED = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT = "sentence_embedding"


def corpus_probes(tokenizer_json: Path) -> tuple[list[Row], list[Row]]:
    """Four sentences of the evaluation corpus as probes, 36 more as companions."""
    rows = minilm.corpus_set(tokenizer_json, 40).rows
    return rows[:4], rows[4:]


def infer(client: grpcclient.InferenceServerClient, model: str, batch: dict[str, np.ndarray]):
    tensors = []
    for name, array in batch.items():
        tensor = grpcclient.InferInput(name, list(array.shape), "INT64")
        tensor.set_data_from_numpy(np.ascontiguousarray(array))
        tensors.append(tensor)
    return client.infer(model, tensors, client_timeout=60).as_numpy(OUTPUT)


def _moved(alone: np.ndarray, got: np.ndarray) -> float:
    want = alone.astype(np.float64)
    return float(np.linalg.norm(got.astype(np.float64) - want) / np.linalg.norm(want))


@dataclass
class Served:
    worst: float  # max relative L2 movement of a probe's answer against the probe alone
    context: str
    inferences: int  # requests Triton ran during the concurrent contexts
    executions: int  # model executions for them (fewer: requests were merged)


def served_invariance(
    url: str, model: str, probes: list[Row], companions: list[Row], *, rounds: int = 3
) -> Served:
    """Each probe alone, then among concurrent companions, in one request with them, padded."""
    client = grpcclient.InferenceServerClient(url)
    worst, where = 0.0, ""
    merged_inferences = merged_executions = 0
    try:
        rng = np.random.default_rng(0)
        for p, probe in enumerate(probes):
            alone = infer(client, model, R.stack([probe], RAGGED))[0]
            answers: list[tuple[str, np.ndarray]] = []
            before = client.get_inference_statistics(model).model_stats[0]
            for r in range(rounds):  # 8 one-row requests at once: the batcher merges them
                others = [companions[i] for i in rng.choice(len(companions), 7, replace=False)]
                got = _concurrent(url, model, [probe, *others])
                answers.append((f"concurrent with 7 other requests (round {r})", got))
            after = client.get_inference_statistics(model).model_stats[0]
            merged_inferences += after.inference_count - before.inference_count
            merged_executions += after.execution_count - before.execution_count
            others = [companions[i] for i in rng.choice(len(companions), 7, replace=False)]
            batch = R.stack([*others[:3], probe, *others[3:]], RAGGED)
            answers.append(("row 3 of one request of 8", infer(client, model, batch)[3]))
            padded = R.stack([probe], RAGGED, pad_to=R.length(probe, RAGGED) + 40)
            answers.append(("padded by 40 (mask 0)", infer(client, model, padded)[0]))
            for context, got in answers:
                moved = _moved(alone, got)
                if moved >= worst:
                    worst, where = moved, f"probe {p}: {context}"
    finally:
        client.close()
    return Served(worst, where, merged_inferences, merged_executions)


def _concurrent(url: str, model: str, rows: list[Row]) -> np.ndarray:
    """Send each row as its own request, all released at once; the first row's answer."""
    gate = threading.Barrier(len(rows))
    answers: dict[int, np.ndarray] = {}
    failures: list[BaseException] = []

    def send(i: int) -> None:
        client = grpcclient.InferenceServerClient(url)
        try:
            batch = R.stack([rows[i]], RAGGED)
            gate.wait(timeout=30)
            answers[i] = infer(client, model, batch)[0]
        except BaseException as exc:  # reported by the caller
            failures.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(rows))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    if failures:
        raise failures[0]
    return answers[0]
