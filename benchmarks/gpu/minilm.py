"""The carried MiniLM: all of all-MiniLM-L6-v2 that fits the device tool's 64 MiB, exactly.

The weights are 91 MB in fp32, so they cannot travel whole beside Triton. What travels:

- every weight in **fp16** (what ``model.half()`` makes, bit for bit): the fp16 model on the
  GPU is the real fp16 model; the fp32 model there is the same numbers upcast, so its kernels
  and timings are fp32's while its answers are those of fp16-rounded weights;
- of the 30,522-row word-embedding table, only the **rows of the token ids the check sends**
  (a seeded sample of ordinary word pieces, the benchmark sentences' tokens and the special
  tokens); the other rows are zero on the GPU, the table keeps its full size, and every input
  is checked to use carried ids only;
- the references, computed here on the CPU: PyTorch fp32 with the real weights (what the fp16
  answers owe, under the export's fp16 budget) and with the fp16-rounded weights (what the GPU
  fp32 answers owe, under the fp32 budget).

Imported by the GPU check, by the Triton model it serves (``triton_model.py``) and by the
staging (``stage.py``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from benchmarks.gpu.carry import WEIGHTS
from export.models.minilm import SentenceEmbedder
from export.verify import ReferenceCase

EMBEDDING = "embeddings.word_embeddings.weight"
WORD_IDS = "carried.word_ids"
WORD_ROWS = "carried.word_rows"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
CLS, SEP = 101, 102
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


class CarriedWeightsError(ValueError):
    """The carried weights do not fit the model built from the carried config."""


def save_carried(encoder: torch.nn.Module, word_ids: np.ndarray, path: Path) -> Path:
    """Write ``encoder``'s weights in fp16 with only the ``word_ids`` rows of the word table."""
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in encoder.state_dict().items()}
    table = state.pop(EMBEDDING)
    ids = torch.as_tensor(np.unique(word_ids), dtype=torch.int64)
    state[WORD_IDS] = ids
    state[WORD_ROWS] = table[ids].contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"dtype": "float16", "vocab_rows": str(len(ids))})
    return path


def rounded(encoder: torch.nn.Module) -> None:
    """Round ``encoder``'s weights to fp16 and back, in place: the numbers that travel."""
    with torch.no_grad():
        for tensor in encoder.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(tensor.to(torch.float16).to(tensor.dtype))


def load_carried(
    model_dir: Path, *, dtype: str, device: torch.device | str, attention: str = "sdpa"
) -> tuple[SentenceEmbedder, np.ndarray]:
    """The carried MiniLM as ``dtype`` (fp32 | fp16) on ``device``, and the carried word ids."""
    if not (model_dir / WEIGHTS).is_file():
        raise CarriedWeightsError(f"no carried weights at {model_dir / WEIGHTS}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoConfig, AutoModel  # heavy: only where a model is built

    config = AutoConfig.from_pretrained(str(model_dir))
    encoder = AutoModel.from_config(config, attn_implementation=attention)
    state = load_file(str(model_dir / WEIGHTS))
    ids, rows = state.pop(WORD_IDS), state.pop(WORD_ROWS)
    table = torch.zeros(config.vocab_size, config.hidden_size, dtype=rows.dtype)
    table[ids] = rows
    state[EMBEDDING] = table
    missing, unexpected = encoder.load_state_dict(
        {k: v.to(torch.float32) for k, v in state.items()}, strict=False
    )
    if missing or unexpected:
        raise CarriedWeightsError(
            f"carried weights do not match the model transformers built from {model_dir}: "
            f"missing {sorted(missing)}, unexpected {sorted(unexpected)}"
        )
    module = SentenceEmbedder(encoder).eval().to(device=device, dtype=DTYPES[dtype])
    return module, ids.numpy()


def carried_word_ids(model_dir: Path) -> np.ndarray:
    """The token ids whose embedding rows travelled (without building the model)."""
    with safe_open(str(model_dir / WEIGHTS), framework="pt") as fh:
        return np.asarray(fh.get_tensor(WORD_IDS).numpy())


def random_ids(rng: np.random.Generator, pool: np.ndarray, batch: int, seq: int) -> np.ndarray:
    """``[batch, seq]`` ids drawn from ``pool`` (carried, ordinary), framed by [CLS] ... [SEP]."""
    ids = rng.choice(pool, size=(batch, seq))
    ids[:, 0], ids[:, -1] = CLS, SEP
    return ids.astype(np.int64)


def ordinary(word_ids: np.ndarray) -> np.ndarray:
    """The carried ids that are ordinary word pieces (not [PAD], [UNK], [CLS], ...)."""
    return word_ids[word_ids >= 1000]


def uncarried(inputs: dict[str, np.ndarray], word_ids: np.ndarray) -> list[int]:
    """Token ids in ``inputs`` whose rows did not travel (their vectors would be zeros)."""
    used = np.unique(inputs["input_ids"])
    return [int(i) for i in used[~np.isin(used, word_ids)]]


# -- references -----------------------------------------------------------------------------
def save_references(
    path: Path, true: list[ReferenceCase], rounded_weights: list[ReferenceCase]
) -> list[str]:
    """Write both references of the same inputs to ``path`` (npz); returns the case labels."""
    arrays: dict[str, Any] = {}  # Any: numpy's stubs type savez's **kwds as its flags
    for i, (t, r) in enumerate(zip(true, rounded_weights, strict=True)):
        for name in INPUTS:
            arrays[f"{i}.{name}"] = t.inputs[name]
        arrays[f"{i}.fp32"] = t.outputs[0]
        arrays[f"{i}.fp32_rounded"] = r.outputs[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        np.savez(fh, **arrays)
    labels = [c.label for c in true]
    path.with_suffix(".json").write_text(json.dumps(labels) + "\n")
    return labels


def load_references(path: Path) -> tuple[list[ReferenceCase], list[ReferenceCase]]:
    """(real-weights fp32 reference, fp16-rounded-weights fp32 reference) of the same inputs."""
    labels = json.loads(path.with_suffix(".json").read_text())
    with np.load(path) as data:
        true, rounded_weights = [], []
        for i, label in enumerate(labels):
            inputs = {name: data[f"{i}.{name}"] for name in INPUTS}
            true.append(ReferenceCase(label, inputs, [data[f"{i}.fp32"]]))
            rounded_weights.append(ReferenceCase(label, inputs, [data[f"{i}.fp32_rounded"]]))
    return true, rounded_weights
